//! Function instances: starting runtime processes, talking to them, keeping them warm.
//!
//! This crate is the only one that starts processes. `Pool` is its front door: given the
//! resolved configuration of a function and an event, it finds a warm instance or starts
//! one, runs the invocation, and reports the outcome with its timings and logs. A function's
//! failure (exception, timeout, crash, bad code) is an `Outcome::Error`, never a
//! `SandboxError`; the latter means the platform could not run the function at all.

#![deny(unsafe_code)]

pub mod build;
mod cgroup;
mod executor;
mod freeze;
mod instance;
mod isolation;
pub mod jail;
mod keepalive;
mod logs;
mod owner;
mod pool;
pub mod protocol;
mod runtimes;
mod seccomp;
mod sys;
pub mod web;
mod zygote;

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use model::{FunctionType, Runtime};
use serde::{Deserialize, Serialize};

pub use build::{BuildJob, BuildReport, BuildStatus, Builder, tree_size};
pub use executor::StreamEvent;
pub use isolation::{Isolation, IsolationConfig, Protection};
pub use logs::{LogLine, Logs};
pub use owner::CGROUP_RECORDS;
pub use pool::{Acquired, CallContext, EventSink, Lease, Occupancy, Pool, PoolConfig, WebReply};
pub use runtimes::Runtimes;

/// Everything needed to start an instance, resolved from the stored function. Two
/// configurations that differ in any field never share instances.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct InstanceConfig {
    pub function: String,
    /// `$LATEST` or a published version's number: instances of two versions never mix.
    pub version: String,
    pub runtime: Runtime,
    pub handler: String,
    /// The unpacked, read-only code tree.
    pub code_dir: PathBuf,
    /// The tree of the function's layers, shown at `/opt` (sandboxed) or named by
    /// `NIMBUS_OPT_DIR`; none without layers.
    pub opt_dir: Option<PathBuf>,
    /// Lambda's handler conventions or Function Compute's.
    pub conventions: model::Conventions,
    pub env: BTreeMap<String, String>,
    pub memory_mb: u32,
    pub timeout_ms: u32,
    pub kind: FunctionType,
    /// A custom runtime's command.
    pub command: Vec<String>,
    /// Calls one instance takes at once.
    pub concurrency: u32,
    /// `module.function` run once per instance before its first call; empty for none.
    pub initializer: String,
    pub initializer_timeout_ms: u32,
    /// `module.function` run before an instance is stopped; empty for none.
    pub pre_stop: String,
    pub pre_stop_timeout_ms: u32,
    pub network: model::Network,
    pub ephemeral_storage_mb: u32,
    pub cpu_millicores: u32,
    /// How many instances; not part of what an instance is.
    pub policy: Policy,
}

impl InstanceConfig {
    /// The pool its instances belong to: the function's name for `$LATEST`, `name:N` for a
    /// published version, so versions keep their own instances and limits.
    pub fn pool_id(&self) -> std::borrow::Cow<'_, str> {
        if self.version == "$LATEST" {
            std::borrow::Cow::Borrowed(&self.function)
        } else {
            std::borrow::Cow::Owned(format!("{}:{}", self.function, self.version))
        }
    }
}

#[cfg(test)]
impl InstanceConfig {
    /// A handler function `function` for tests: 128 MB, 1 s timeout, concurrency 1, no
    /// hooks, default policy; tests change what they need with `..`.
    pub(crate) fn for_test(
        function: &str,
        runtime: Runtime,
        handler: &str,
        code_dir: impl Into<PathBuf>,
    ) -> InstanceConfig {
        InstanceConfig {
            function: function.into(),
            version: "$LATEST".into(),
            runtime,
            handler: handler.into(),
            code_dir: code_dir.into(),
            opt_dir: None,
            conventions: model::Conventions::Lambda,
            env: Default::default(),
            memory_mb: 128,
            timeout_ms: 1000,
            kind: FunctionType::Handler,
            command: Vec::new(),
            concurrency: 1,
            initializer: String::new(),
            initializer_timeout_ms: 1000,
            pre_stop: String::new(),
            pre_stop_timeout_ms: 1000,
            network: model::Network::Outbound,
            ephemeral_storage_mb: 64,
            cpu_millicores: 0,
            policy: Policy::default(),
        }
    }
}

/// Scaling settings of a function: how many instances and how long calls wait, not what
/// an instance is. `Hash` and `Eq` ignore them, so changing them never restarts instances.
#[derive(Clone, Debug)]
pub struct Policy {
    pub min_instances: u32,
    pub max_instances: u32,
    pub idle_timeout_ms: u32,
    /// Adaptive keep-alive's bound; 0 is off (see `keepalive`).
    pub keep_alive_max_ms: u32,
    pub queue_timeout_ms: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_instances: 0,
            max_instances: model::limits::MAX_INSTANCES_DEFAULT,
            idle_timeout_ms: model::limits::IDLE_TIMEOUT_MS_DEFAULT,
            keep_alive_max_ms: 0,
            queue_timeout_ms: model::limits::QUEUE_TIMEOUT_MS_DEFAULT,
        }
    }
}

impl std::hash::Hash for Policy {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl PartialEq for Policy {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Policy {}

/// Where the time of an invocation went, in milliseconds. On a warm call only `queue_ms`
/// and `handler_ms` are non-zero.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Waiting for a free slot.
    pub queue_ms: f64,
    /// Starting the process and the runtime, up to loading the function's code.
    pub sandbox_ms: f64,
    /// Loading the function's code (imports), as the runtime measured it.
    pub code_ms: f64,
    /// The initializer hook.
    pub initializer_ms: f64,
    /// The handler itself.
    pub handler_ms: f64,
}

/// Something that happened to an instance, for `GET /v1/events`.
#[derive(Clone, Debug, Serialize)]
pub struct LifecycleEvent {
    pub time_ms: i64,
    pub function: String,
    pub instance_id: u64,
    /// `started`, `stopped` or `throttled`.
    pub event: &'static str,
    pub reason: String,
}

/// A function's own failure, in the shape Lambda uses so existing tooling understands it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionError {
    pub error_type: String,
    pub error_message: String,
    #[serde(default)]
    pub stack_trace: Vec<String>,
}

impl FunctionError {
    pub fn new(error_type: &str, message: impl Into<String>) -> Self {
        FunctionError {
            error_type: error_type.into(),
            error_message: message.into(),
            stack_trace: Vec::new(),
        }
    }

    /// Parses the error a shim sent; a body that does not parse is itself reported.
    pub(crate) fn from_body(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_else(|e| {
            FunctionError::new(
                "Runtime.InvalidError",
                format!("the runtime reported an error that could not be read: {e}"),
            )
        })
    }
}

/// How an invocation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The handler returned. `content_type` is `json`, `text` or `bytes`.
    Success {
        content_type: ContentType,
        body: Bytes,
    },
    /// The handler failed, timed out, crashed, or its code could not be loaded.
    Error(FunctionError),
}

/// What kind of value a handler returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    Json,
    Text,
    Bytes,
}

/// A finished invocation with what the platform observed about it.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub outcome: Outcome,
    /// Whether a new instance was started for this invocation.
    pub cold_start: bool,
    /// Milliseconds from process spawn to the handler being loaded, when cold.
    pub init_ms: Option<f64>,
    /// Milliseconds from sending the event to the instance until its answer.
    pub duration_ms: f64,
    pub instance_id: u64,
    pub logs: Logs,
    pub timings: Timings,
}

/// The platform could not run the invocation at all.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("runtime `{0}` is not available on this node: its interpreter was not found")]
    RuntimeUnavailable(Runtime),
    #[error("starting the instance failed: {0}")]
    Spawn(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(
        "function `{function}` has all {max_instances} instances busy and no slot freed within {waited_ms} ms; retry later or raise max_instances"
    )]
    Throttled {
        function: String,
        max_instances: u32,
        waited_ms: u64,
        retry_after_s: u64,
    },
    #[error(
        "this node has no room for another instance ({live} of {instances_max} instances, {memory_mb} of {memory_max_mb} MB) and none freed within {waited_ms} ms"
    )]
    NodeFull {
        live: usize,
        instances_max: usize,
        memory_mb: u64,
        memory_max_mb: u64,
        waited_ms: u64,
    },
}

/// The first argument that makes the `nimbus` binary the sandbox helper.
pub const JAIL_HELPER_ARG: &str = "__jail";
