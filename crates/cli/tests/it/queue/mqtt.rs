//! Queue triggers on mqtt end to end (being written).
