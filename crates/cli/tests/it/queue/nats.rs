//! Queue triggers on nats end to end (being written).
