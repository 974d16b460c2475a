//! The seam between the scheduler and what runs a function's code.
//!
//! The pool decides when instances start and stop and which call goes where; an
//! `Executor` starts instances, and a `Running` instance takes calls and hooks. The first
//! executor runs each instance as a runtime process (`process`: interpreters, prewarmed
//! stems, the Python fork server, jails). A WebAssembly executor will run instances that
//! are not processes, so nothing here assumes a pid, a socket or a port: an instance's
//! port is there only for instances that serve HTTP themselves, and stopping one from
//! outside is a closure (`Stopper`), whatever it kills.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::protocol::Kind;
use crate::{FunctionError, InstanceConfig, Logs, SandboxError};

#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod process;
pub(crate) mod runtime_api;

/// The first answer to a call.
pub(crate) enum Reply {
    /// A handler's value. `content_type` is the shim's tag: json, text or bytes.
    Result {
        content_type: Bytes,
        body: Bytes,
    },
    /// A web app's response head (JSON `{status, headers}`); the body follows as a stream.
    Head(Bytes),
    Error(FunctionError),
    /// The instance died before answering.
    Crashed(String),
    Timeout,
}

/// What follows a `Reply::Head`.
pub enum StreamEvent {
    Chunk(Bytes),
    /// The response is complete; the call's logs come with it.
    End(Logs),
    /// The instance failed midway; the response must be cut off.
    Abort(String),
}

/// Why an instance did not become ready.
pub(crate) enum StartError {
    /// The platform could not start it (no interpreter, spawn failed).
    Platform(SandboxError),
    /// The function's code failed to load: an invocation outcome.
    Function(FunctionError),
}

/// A boxed future, so the traits here can be used as trait objects.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Starts instances of functions on this node.
pub(crate) trait Executor: Send + Sync {
    /// Starts instance `id` of `config` and loads the function's code; running the
    /// initializer is the pool's. `StartError::Function` is the function's own failure
    /// (its code did not load), an invocation outcome.
    fn start<'a>(
        &'a self,
        id: u64,
        config: &'a InstanceConfig,
    ) -> BoxFuture<'a, Result<Started, StartError>>;

    /// Lets go of what the executor keeps ahead of need (prewarmed instances, a fork
    /// server) and makes no more of it; called once, when the node shuts down. Instances
    /// already started are the pool's to stop.
    fn shutdown(&self);
}

/// An instance an executor started, with how it went.
pub(crate) struct Started {
    pub instance: Box<dyn Running>,
    /// The loopback port of an instance that serves HTTP itself.
    pub port: Option<u16>,
    /// How it was started, for its lifecycle event ("from a prewarmed process").
    pub how: &'static str,
    /// Time from the start to ready: the sandbox's start plus the code's load.
    pub init: Duration,
    /// The part of `init` spent loading the function's code (as the runtime reports it).
    pub code_ms: f64,
}

/// Stops an instance from outside, even while calls hold it (the node shutting down).
/// Calling it after the instance has gone must do no harm.
pub(crate) type Stopper = Arc<dyn Fn() + Send + Sync>;

/// A started instance as the pool and its leases use it. Dropping it stops the instance
/// and frees what it held.
pub(crate) trait Running: Send + Sync {
    /// Whether the instance has ended on its own (crashed, was killed).
    fn is_dead(&self) -> bool;
    /// Whether it ended for going past its memory limit.
    fn oom_killed(&self) -> bool;
    /// Stops it now; calls in flight fail with a crash report.
    fn kill(&self);
    /// Stops the instance from running at all while it has no call in flight, so nothing
    /// it left running after a call (a spinning thread) takes CPU; idempotent. The pool
    /// freezes an instance only with no call in flight, under its lock, so a freeze never
    /// races a call taking the instance.
    fn freeze(&self);
    /// Lets a frozen instance run again, and costs next to nothing when it is not frozen;
    /// the pool thaws an instance before anything else uses it (a call, a web request, a
    /// hook). Once it returns, what is sent to the instance is served. `kill` and the
    /// `Stopper` thaw by themselves, after their kill.
    fn thaw(&self);
    /// What stops it from outside while others hold it.
    fn stopper(&self) -> Stopper;
    /// Runs one invocation with the handler's context `meta`.
    fn call<'a>(
        &'a self,
        meta: &'a [u8],
        event: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, (Reply, Logs)>;
    /// Sends a web request; after a `Reply::Head` the body arrives on the receiver.
    fn request<'a>(
        &'a self,
        meta: &'a [u8],
        body: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, (Reply, Logs, mpsc::Receiver<StreamEvent>)>;
    /// Runs a lifecycle hook (`Kind::Initialize` or `Kind::PreStop`) named `handler`;
    /// `Ok` carries its duration in milliseconds.
    fn hook<'a>(
        &'a self,
        kind: Kind,
        handler: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<f64, FunctionError>>;
    /// Waits until the instance's earlier output (its log lines) has been read.
    fn barrier(&self) -> BoxFuture<'_, ()>;
    /// Starts a call that reaches the instance another way (HTTP instances): its output
    /// is attributed to the returned id until `end_external`.
    fn begin_external(&self) -> u32;
    /// Ends such a call and returns its logs.
    fn end_external(&self, id: u32) -> Logs;
    /// Why the instance died, for an error message.
    fn crash_report(&self, why: String) -> BoxFuture<'_, String>;
}

/// An instance as the pool holds it: what every instance has (its id, port and memory
/// setting) beside the executor's running instance, which it derefs to, so callers write
/// `instance.call(..)` whatever runs it.
pub(crate) struct Handle {
    pub id: u64,
    /// The loopback port of an instance that serves HTTP itself.
    pub port: Option<u16>,
    pub memory_mb: u32,
    pub running: Box<dyn Running>,
}

impl Deref for Handle {
    type Target = dyn Running;

    fn deref(&self) -> &Self::Target {
        &*self.running
    }
}
