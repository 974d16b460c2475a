//! The event bus's core: matching events against EventBridge patterns, and the CloudEvents
//! codec (structured, batch and binary modes; EventBridge PutEvents entries).
//!
//! `pattern` and `cloudevent` are pure code: no IO, no async, no HTTP. The front door
//! parses a request into events with `cloudevent`; `deliver` (the bus as a trigger)
//! compiles each function's pattern with `pattern` at deploy, holds them in one `Rules`,
//! matches every event against it once and queues a delivery per match.

pub mod cloudevent;
mod deliver;
pub mod pattern;

pub use deliver::{BusEvent, EventBus};

pub use cloudevent::{CloudEvent, Data, EventError, PutEventsEntry};
pub use pattern::{Pattern, PatternError, RuleId, Rules};
