//! Queue triggers on amqp end to end (being written).
