//! What starts invocations: the kinds of trigger, as every invocation record names them.
//!
//! The typed specs a function declares (`triggers:` in `nimbus.yaml`) are the closed enum
//! `http::Trigger`; each spec has a kind, and so does every call, including the calls no
//! spec declares (the invoke API, an asynchronous event's attempt).

use serde::{Deserialize, Serialize};

/// The source of a call. New event sources add a variant here and a `Trigger`
/// implementation in the core; records store `as_str`, so names never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerKind {
    /// `POST /v1/functions/{name}/invocations` (and the CLI's `nimbus invoke`).
    Api,
    /// A route of the HTTP gateway, or a function URL.
    Http,
    /// An attempt of an asynchronous event from the durable queue.
    Async,
    /// A fire of a timer (an attempt of the asynchronous event it queued).
    Timer,
    /// A delivery of a bus event to a matching rule (an attempt of its queued event).
    Event,
    /// A bucket's change delivered to a matching rule (an attempt of its queued event).
    Object,
    /// A batch of messages from a broker (NATS, MQTT, AMQP, Redis streams).
    Queue,
    /// A Task state of a workflow execution.
    Flow,
}

impl TriggerKind {
    /// The stable name stored in records and shown by `nimbus invocation ls`.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Api => "api",
            TriggerKind::Http => "http",
            TriggerKind::Async => "async",
            TriggerKind::Timer => "timer",
            TriggerKind::Event => "event",
            TriggerKind::Object => "object",
            TriggerKind::Queue => "queue",
            TriggerKind::Flow => "flow",
        }
    }
}

impl std::fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first part of an event target that starts a workflow instead of calling a function
/// (`flow/order`). A function's name holds no `/` (nor does `name:qualifier`), so no
/// function target can be read as a flow's.
pub const FLOW_TARGET_PREFIX: &str = "flow/";

/// The event target of flow `name`: what its triggers submit to.
pub fn flow_target(name: &str) -> String {
    format!("{FLOW_TARGET_PREFIX}{name}")
}

/// The flow an event target starts, if it names one.
pub fn target_flow(target: &str) -> Option<&str> {
    target.strip_prefix(FLOW_TARGET_PREFIX)
}

impl crate::http::Trigger {
    /// The kind of calls this spec starts.
    pub fn kind(&self) -> TriggerKind {
        match self {
            crate::http::Trigger::Http(_) => TriggerKind::Http,
            crate::http::Trigger::Timer(_) => TriggerKind::Timer,
            crate::http::Trigger::Event(_) => TriggerKind::Event,
            crate::http::Trigger::Object(_) => TriggerKind::Object,
            crate::http::Trigger::Queue(_) => TriggerKind::Queue,
        }
    }

    /// The name it is paused, resumed and listed by: a timer's, rule's or queue trigger's
    /// name, or a route's path.
    pub fn name(&self) -> &str {
        match self {
            crate::http::Trigger::Timer(t) => t.name.as_str(),
            crate::http::Trigger::Event(e) => e.name.as_str(),
            crate::http::Trigger::Object(o) => o.name(),
            crate::http::Trigger::Queue(q) => q.name(),
            crate::http::Trigger::Http(h) => h.path.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_targets_never_read_as_function_targets() {
        assert_eq!(target_flow(&flow_target("order")), Some("order"));
        assert_eq!(target_flow("order"), None);
        // A function called `flow` with an alias is a function target.
        assert_eq!(target_flow("flow:live"), None);
        assert!(crate::validate_name("flow/order").is_err());
    }
}
