//! Queue triggers on redis end to end (being written).
