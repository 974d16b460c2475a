//! The stores' contracts as tests: every backend (SQLite here, PostgreSQL in
//! `store-postgres`) runs the same functions against a fresh store of its own, so the
//! backends cannot drift apart in what they promise. Built for this crate's tests and, with
//! the `testkit` feature, for another backend's.

pub mod cluster;
pub mod flows;
pub mod meta;
pub mod objects;
pub mod queue;
