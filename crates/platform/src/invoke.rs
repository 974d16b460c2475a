//! The one invoke path: every call — the invoke API, a route, a web function's request, an
//! asynchronous event's attempt, and every trigger to come — goes through `Platform::begin`.
//!
//! `begin` resolves the qualifier (an alias picks its version), takes a slot on an instance
//! (warm, or started for the call), and hands back a `Session`. The session is finished
//! exactly once, by `finish` or `discard`, which take it by value: the call is recorded
//! once, a guarded canary's outcome is counted once, and an instance cannot be used after
//! it was discarded because nothing is left to use it through. A session dropped without
//! either (its task was cancelled) is recorded as abandoned.
//!
//! `Platform::invoke` is `begin` plus one event frame: what a caller that wants a value uses.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use model::{ErrorCode, TriggerKind, limits};
use sandbox::{FunctionError, Lease, Logs, Outcome, Timings};

use crate::trace::Span;
use crate::{Error, Platform, Resolved, now_ms};

/// A call to be made: what it targets and where it comes from.
#[derive(Clone, Debug)]
pub struct Call {
    /// `fn` ($LATEST), `fn:3` or `fn:alias`.
    pub target: String,
    pub request_id: String,
    /// Through an alias with a canary, the same key keeps choosing the same version.
    pub affinity: Option<String>,
    pub trigger: TriggerKind,
    /// The trigger that made the call, by name (`timer:nightly`), when there is one; the
    /// record names it instead of the kind.
    pub source: Option<String>,
    /// Which delivery of an asynchronous event this is (1 for every other call).
    pub attempt: u32,
    /// The call's span: in the caller's trace when there is one.
    pub trace: Span,
    /// The caller's client context (JSON text), as Lambda's `X-Amz-Client-Context` gives
    /// it to `context.client_context`.
    pub client_context: Option<String>,
    /// Hops of the chain of calls this one continues (0: none); see `CallContext::lineage`.
    pub lineage: u32,
}

impl Call {
    /// A first attempt of `target` from `trigger`, with a new request id.
    pub fn new(target: impl Into<String>, trigger: TriggerKind, trace: Span) -> Call {
        Call {
            target: target.into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            affinity: None,
            trigger,
            source: None,
            attempt: 1,
            trace,
            client_context: None,
            lineage: 0,
        }
    }
}

/// A call through an alias whose canary has a guard: its outcome counts towards rollback.
pub(crate) struct GuardedCall {
    pub function: String,
    pub alias: String,
    pub guard: model::Guard,
    pub canary_version: u32,
}

/// One finished invocation, kept in memory for `GET /v1/invocations/{id}` and handed to
/// the recorder. It holds no result body: results go to the caller and are not retained.
pub struct InvocationRecord {
    pub request_id: String,
    pub function: String,
    /// What started the call.
    pub trigger: TriggerKind,
    /// The trigger by name (`timer:nightly`), when a named trigger made the call.
    pub source: Option<String>,
    /// Which delivery of an asynchronous event this was (1 for every other call).
    pub attempt: u32,
    /// The function's memory setting, for metering.
    pub memory_mb: u32,
    /// `$LATEST` or the number of the version that ran.
    pub version: String,
    pub started_at_ms: i64,
    pub cold_start: bool,
    pub init_ms: Option<f64>,
    pub duration_ms: f64,
    pub instance_id: u64,
    pub error: Option<FunctionError>,
    pub logs: Logs,
    pub timings: Timings,
    /// The call's span.
    pub trace: Span,
}

/// The most recent invocations of this node, oldest dropped first.
#[derive(Default)]
pub(crate) struct Recent {
    order: VecDeque<String>,
    by_id: HashMap<String, Arc<InvocationRecord>>,
}

/// What `begin` gives: a session on an instance, or the recorded failure of a new
/// instance that could not load the function or run its initializer.
// Unboxed on purpose: a `Begun` lives only until its caller matches on it, and a box
// would cost every call an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Begun {
    Ready(Session),
    /// The recorded call, and the version it was to run.
    Failed(Arc<InvocationRecord>, Arc<Resolved>),
}

/// A finished call with its value or failure.
pub struct Invoked {
    pub record: Arc<InvocationRecord>,
    pub outcome: Outcome,
    /// The version that ran, as resolved (its retry policy and destinations apply).
    pub resolved: Arc<Resolved>,
}

/// One call on one instance, from `begin` until `finish` or `discard`.
pub struct Session {
    platform: Arc<Platform>,
    /// `None` only once finished (or while being dropped).
    lease: Option<Lease>,
    resolved: Arc<Resolved>,
    guarded: Option<GuardedCall>,
    call: Call,
    started_at_ms: i64,
    /// When the handler's part began; the record's duration is measured from here.
    begun: Instant,
}

impl Session {
    /// The instance slot: what a front door talks to the instance through.
    pub fn lease(&self) -> &Lease {
        self.lease
            .as_ref()
            .expect("a session holds its lease until finished")
    }

    pub fn request_id(&self) -> &str {
        &self.call.request_id
    }

    /// The call's span.
    pub fn trace(&self) -> &Span {
        &self.call.trace
    }

    /// `$LATEST` or the number of the version that runs the call.
    pub fn version(&self) -> &str {
        &self.resolved.instance.version
    }

    /// Whether the instance was started for this call.
    pub fn cold_start(&self) -> bool {
        self.lease().cold_start
    }

    /// The queue wait and, when cold, the start-up phases so far.
    pub fn timings(&self) -> Timings {
        self.lease().timings
    }

    /// Milliseconds since the call reached its instance.
    pub fn elapsed_ms(&self) -> f64 {
        self.begun.elapsed().as_secs_f64() * 1000.0
    }

    /// Ends the call: records it (with `error` when the function failed) and gives the
    /// slot back. The instance stays for the next call.
    pub fn finish(mut self, error: Option<FunctionError>, logs: Logs) -> Arc<InvocationRecord> {
        let lease = self.lease.take().expect("finished once");
        self.end(&lease, error, logs)
    }

    /// Ends the call and stops its instance (whatever state it is in, it is not trusted
    /// again), recording `error`.
    pub fn discard(
        mut self,
        reason: &str,
        error: FunctionError,
        logs: Logs,
    ) -> Arc<InvocationRecord> {
        let mut lease = self.lease.take().expect("finished once");
        let record = self.end(&lease, Some(error), logs);
        lease.discard(reason);
        record
    }

    fn end(
        &mut self,
        lease: &Lease,
        error: Option<FunctionError>,
        logs: Logs,
    ) -> Arc<InvocationRecord> {
        let handler_ms = self.elapsed_ms();
        if let Some(guarded) = self.guarded.take() {
            self.platform.count_canary_call(guarded, error.is_none());
        }
        let timings = Timings {
            handler_ms,
            ..lease.timings
        };
        let record = InvocationRecord {
            request_id: self.call.request_id.clone(),
            function: self.resolved.function.spec.name.clone(),
            trigger: self.call.trigger,
            source: self.call.source.clone(),
            attempt: self.call.attempt,
            memory_mb: self.resolved.instance.memory_mb,
            version: self.resolved.instance.version.clone(),
            started_at_ms: self.started_at_ms,
            cold_start: lease.cold_start,
            init_ms: lease.init_ms(),
            duration_ms: handler_ms,
            instance_id: lease.instance_id(),
            logs: with_error_line(logs, error.as_ref()),
            error,
            timings,
            trace: std::mem::take(&mut self.call.trace),
        };
        self.platform.remember(record)
    }
}

impl Drop for Session {
    /// A session dropped unfinished (its task was cancelled, or a front door forgot it) is
    /// still recorded, once, as abandoned; the lease's own drop retires a busy instance.
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let error = FunctionError::new(
                "Runtime.Abandoned",
                "the call was abandoned before it ended (its caller went away)",
            );
            self.end(&lease, Some(error), Logs::default());
        }
    }
}

/// The function's failure as a log line at level `error`, under the call's request id, as
/// Lambda writes it to the function's log stream: `nimbus logs FN --level error` finds
/// exceptions, timeouts, crashes and import errors without `nimbus invocation show`.
fn with_error_line(mut logs: Logs, error: Option<&FunctionError>) -> Logs {
    if let Some(e) = error {
        let mut text = format!("[ERROR] {}: {}", e.error_type, e.error_message);
        for frame in &e.stack_trace {
            text.push('\n');
            text.push_str(frame.trim_end());
        }
        logs.push_always("ERROR", &text);
    }
    logs
}

impl Platform {
    /// Starts `call`: resolves its target, takes an instance slot (a warm one, or a new
    /// instance), and returns the session the caller finishes. `Err` means the platform
    /// could not run the call (unknown function, throttled, no capacity); a new instance
    /// that could not load the function is a finished, recorded call (`Begun::Failed`).
    pub async fn begin(self: &Arc<Self>, call: Call) -> Result<Begun, Error> {
        Ok(self
            .begin_or(call, true)
            .await?
            .expect("a call that may wait gets a slot or an error"))
    }

    /// As `begin`; a call that may not wait gets `None` at once when no slot is free and
    /// none can start now (the home of a forwarded call answers so).
    async fn begin_or(
        self: &Arc<Self>,
        mut call: Call,
        may_wait: bool,
    ) -> Result<Option<Begun>, Error> {
        let (resolved, guarded) = self
            .resolve_call(&call.target, call.affinity.as_deref(), &call.request_id)
            .await?;
        let started_at_ms = now_ms();
        let acquired = if may_wait {
            self.pool.acquire(&resolved.instance).await?
        } else {
            match self.pool.acquire_now(&resolved.instance).await? {
                Some(acquired) => acquired,
                None => return Ok(None),
            }
        };
        Ok(Some(match acquired {
            sandbox::Acquired::Ready(lease) => Begun::Ready(Session {
                platform: self.clone(),
                lease: Some(lease),
                resolved,
                guarded,
                call,
                started_at_ms,
                begun: Instant::now(),
            }),
            sandbox::Acquired::Failed(error, timings) => {
                if let Some(g) = guarded {
                    self.count_canary_call(g, false);
                }
                let record = InvocationRecord {
                    request_id: call.request_id.clone(),
                    function: resolved.function.spec.name.clone(),
                    trigger: call.trigger,
                    source: call.source.clone(),
                    attempt: call.attempt,
                    memory_mb: resolved.instance.memory_mb,
                    version: resolved.instance.version.clone(),
                    started_at_ms,
                    cold_start: true,
                    init_ms: None,
                    duration_ms: 0.0,
                    instance_id: 0,
                    logs: with_error_line(Logs::default(), Some(&error)),
                    error: Some(error),
                    timings,
                    trace: std::mem::take(&mut call.trace),
                };
                Begun::Failed(self.remember(record), resolved)
            }
        }))
    }

    /// Invokes `call` with `event` and waits for its value. A function failure is in the
    /// outcome (and the record); `Err` means the platform could not run it. Web functions
    /// (WSGI, ASGI, HTTP servers) take the event through the sandbox's adapter: an API
    /// Gateway payload 2.0 event becomes that request, anything else a `POST /`.
    ///
    /// In a cluster the call runs on its home node when that is another one and has room
    /// (`forward`); else here.
    pub async fn invoke(self: &Arc<Self>, call: Call, event: Bytes) -> Result<Invoked, Error> {
        self.check_event(&event)?;
        if let Some(invoked) = self.forward(&call, &event).await? {
            return Ok(invoked);
        }
        Ok(self
            .run_here(call, event, true)
            .await?
            .expect("a call that may wait runs or fails"))
    }

    /// Refuses an event over the payload limit before it goes anywhere.
    pub(crate) fn check_event(&self, event: &Bytes) -> Result<(), Error> {
        if event.len() > limits::PAYLOAD_BYTES_MAX {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the event is {} bytes; the limit is {}",
                    event.len(),
                    limits::PAYLOAD_BYTES_MAX
                ),
            ));
        }
        Ok(())
    }

    /// Runs `call` on this node. `None` only for a call that may not wait, when no slot is
    /// free now and none can start.
    pub(crate) async fn run_here(
        self: &Arc<Self>,
        call: Call,
        event: Bytes,
        may_wait: bool,
    ) -> Result<Option<Invoked>, Error> {
        // The invocation runs in its own task: a caller that disconnects does not cancel a
        // function midway (it completes, as on Lambda), and its instance stays warm.
        let platform = self.clone();
        tokio::spawn(async move {
            let context = sandbox::CallContext {
                attempt: call.attempt,
                traceparent: Some(call.trace.traceparent.clone()),
                invoked_function_arn: Some(platform.function_arn(&call.target)),
                client_context: call.client_context.clone(),
                lineage: call.lineage,
            };
            let request_id = call.request_id.clone();
            let session = match platform.begin_or(call, may_wait).await? {
                None => return Ok(None),
                Some(Begun::Ready(session)) => session,
                Some(Begun::Failed(record, resolved)) => {
                    let error = record.error.clone().expect("a failed start has its error");
                    return Ok(Some(Invoked {
                        record,
                        outcome: Outcome::Error(error),
                        resolved,
                    }));
                }
            };
            let (outcome, logs, _) = session
                .lease()
                .invoke_with(&request_id, &event, &context)
                .await;
            let resolved = session.resolved.clone();
            let error = match &outcome {
                Outcome::Error(e) => Some(e.clone()),
                Outcome::Success { .. } => None,
            };
            let record = session.finish(error, logs);
            Ok(Some(Invoked {
                record,
                outcome,
                resolved,
            }))
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "invocation task failed");
            Error::new(
                ErrorCode::Internal,
                "the invocation task failed; the server log has details",
            )
        })?
    }

    /// Exports the span of an accepted asynchronous event (started at `started_at_ms`), the
    /// parent of its attempts' spans, when spans are exported.
    pub fn record_accept(&self, target: &str, request_id: &str, started_at_ms: i64, trace: Span) {
        if let Some(recorder) = self.recorder.get() {
            recorder.span(|| {
                crate::otlp::accept_span(target, request_id, started_at_ms, now_ms(), &trace)
            });
        }
    }

    /// A recent invocation of this node.
    pub fn recent_invocation(&self, request_id: &str) -> Option<Arc<InvocationRecord>> {
        self.recent.lock().unwrap().by_id.get(request_id).cloned()
    }

    /// Keeps a finished call among the recent ones and hands it to the recorder.
    fn remember(&self, record: InvocationRecord) -> Arc<InvocationRecord> {
        let record = Arc::new(record);
        if let Some(recorder) = self.recorder.get() {
            recorder.call(record.clone());
        }
        let mut recent = self.recent.lock().unwrap();
        if recent.order.len() >= limits::RECENT_INVOCATIONS_MAX
            && let Some(old) = recent.order.pop_front()
        {
            recent.by_id.remove(&old);
        }
        recent.order.push_back(record.request_id.clone());
        recent
            .by_id
            .insert(record.request_id.clone(), record.clone());
        record
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use model::{FunctionSpec, Runtime};

    use super::*;

    const CODE: &str = "def handler(event, context):\n    if event.get('fail'):\n        raise ValueError('bad input')\n    return {'ok': True}\n";

    /// A platform on real stores and a real pool, with Python function `f` deployed.
    async fn platform() -> (tempfile::TempDir, Arc<Platform>) {
        let tmp = tempfile::tempdir().unwrap();
        let meta = Arc::new(
            store::SqliteStore::open(&tmp.path().join("db"))
                .await
                .unwrap(),
        );
        let blobs: Arc<dyn store::BlobStore> =
            Arc::new(store::FsBlobStore::new(tmp.path().join("blobs")));
        let code = store::CodeCache::new(tmp.path().join("code"), blobs.clone(), 1 << 20);
        let runtimes = sandbox::Runtimes::install(&tmp.path().join("rt"), None, None).unwrap();
        let pool = sandbox::Pool::new(runtimes, Default::default());
        let platform = Arc::new(Platform::new(meta, blobs, code, pool));
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("main.py", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(CODE.as_bytes()).unwrap();
        let archive = zip.finish().unwrap().into_inner();
        let (sha, _) = platform.upload_code(archive).await.unwrap();
        let spec = FunctionSpec::new("f", Runtime::Python3, "main.handler", &sha);
        platform
            .put_function(spec, store::PutMode::Create)
            .await
            .unwrap();
        (tmp, platform)
    }

    fn call() -> Call {
        Call::new("f", TriggerKind::Api, crate::trace::child_of(None))
    }

    async fn session(platform: &Arc<Platform>) -> Session {
        match platform.begin(call()).await.unwrap() {
            Begun::Ready(s) => s,
            Begun::Failed(r, _) => panic!("the start failed: {:?}", r.error),
        }
    }

    #[tokio::test]
    async fn a_session_dropped_unfinished_is_recorded_once_as_abandoned() {
        let (_tmp, platform) = platform().await;
        let s = session(&platform).await;
        let id = s.request_id().to_string();
        drop(s);
        let record = platform.recent_invocation(&id).expect("recorded");
        let error = record.error.as_ref().expect("abandoned is a failure");
        assert_eq!(error.error_type, "Runtime.Abandoned");
        assert_eq!(record.trigger, TriggerKind::Api);
    }

    #[tokio::test]
    async fn a_discarded_instance_is_replaced_and_a_finished_one_reused() {
        let (_tmp, platform) = platform().await;
        let s = session(&platform).await;
        assert!(s.cold_start());
        let first = s.lease().instance_id();
        s.finish(None, Logs::default());
        let s = session(&platform).await;
        assert_eq!(
            s.lease().instance_id(),
            first,
            "a finished call keeps its instance"
        );
        assert!(!s.cold_start());
        let record = s.discard(
            "its server failed",
            FunctionError::new("Runtime.ExitError", "gone"),
            Logs::default(),
        );
        assert_eq!(record.instance_id, first);
        let s = session(&platform).await;
        assert_ne!(
            s.lease().instance_id(),
            first,
            "a discarded instance is not used again"
        );
        assert!(s.cold_start());
        s.finish(None, Logs::default());
    }

    #[tokio::test]
    async fn a_failure_is_an_outcome_and_an_error_line_of_the_call() {
        let (_tmp, platform) = platform().await;
        let invoked = platform
            .invoke(call(), Bytes::from_static(br#"{"fail": true}"#))
            .await
            .unwrap();
        let Outcome::Error(e) = &invoked.outcome else {
            panic!("the handler raised");
        };
        assert_eq!(e.error_type, "ValueError");
        let last = invoked.record.logs.lines.last().expect("an error line");
        assert_eq!(last.stream, "ERROR");
        assert!(
            last.message.starts_with("[ERROR] ValueError: bad input\n"),
            "{}",
            last.message
        );
        assert!(last.message.contains("main.py"), "{}", last.message);
        let ok = platform
            .invoke(call(), Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert!(matches!(ok.outcome, Outcome::Success { .. }));
        assert!(ok.record.logs.lines.is_empty());
        // Over the limit, the platform refuses the call before it reaches an instance.
        let big = Bytes::from(vec![b' '; limits::PAYLOAD_BYTES_MAX + 1]);
        let refused = platform.invoke(call(), big).await.err().expect("refused");
        assert_eq!(refused.code, ErrorCode::PayloadTooLarge);
    }
}
