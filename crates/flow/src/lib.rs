//! Workflows in Amazon States Language: definitions, paths, and the pure engine.

pub mod choice;
pub mod definition;
pub mod engine;
pub mod failure;
pub mod intrinsic;
pub mod path;
pub mod rng;
pub mod template;
pub mod time;

pub use definition::{Definition, DefinitionError};
pub use failure::Failure;
