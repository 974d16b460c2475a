//! Workflows in Amazon States Language: definitions, paths, and the pure engine.

pub mod failure;
pub mod path;
pub mod rng;
pub mod time;

pub use failure::Failure;
