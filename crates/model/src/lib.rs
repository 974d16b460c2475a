//! The vocabulary of Nimbus: functions and their validation, limits, and error codes.
//!
//! This crate does no IO. Everything that crosses a boundary (the API, the store, the
//! sandbox) is described here once, so that the rules for what is a valid function live in
//! one place and every layer enforces the same ones.

pub mod bucket;
pub mod civil;
mod error;
mod function;
pub mod hash;
pub mod http;
pub mod limits;
pub mod object;
pub mod queue;
pub mod timer;
pub mod trigger;

pub use error::ErrorCode;
pub use trigger::TriggerKind;
pub mod version;

pub use function::{
    Conventions, Destination, FieldError, Function, FunctionSpec, FunctionType, Layer, Network,
    Runtime, is_reserved_env, validate_name, validate_triggers,
};
pub use version::{Alias, Canary, Guard, Qualifier, Version};
