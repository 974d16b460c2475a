//! The event bus's core: matching events against EventBridge patterns, and the CloudEvents
//! codec (structured, batch and binary modes; EventBridge PutEvents entries).
//!
//! Pure code: no IO, no async, no HTTP. The front door parses a request into events with
//! `cloudevent`, a trigger compiles each function's pattern with `pattern` at deploy and
//! holds them in one `Rules`, and every event is matched against it once.

pub mod cloudevent;
pub mod pattern;

pub use cloudevent::{CloudEvent, Data, EventError, PutEventsEntry};
pub use pattern::{Pattern, PatternError, RuleId, Rules};
