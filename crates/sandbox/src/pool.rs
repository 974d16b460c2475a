//! The warm pool: hands out instances with a free slot, starts new ones within a node-wide
//! cap, retires instances that crashed, timed out, went stale or sat idle too long.
//!
//! An instance takes up to `concurrency` calls at once (the function's setting; 1 by
//! default, as on Lambda). All pool decisions happen under one short lock that is never
//! held across an await. The queueing and throttling scheduler comes with issue 4.

use std::any::Any;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::instance::{Instance, Reply, StartError, StreamEvent, kill_group};
use crate::logs::now_ms;
use crate::{
    ContentType, FunctionError, InstanceConfig, Invocation, Logs, Outcome, Runtimes, SandboxError,
};

/// Bounds of the pool.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Most instances alive on this node at once, busy or idle.
    pub instances_max: usize,
    /// An instance idle this long is stopped (scale to zero).
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            instances_max: 64,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// A live instance with its slot of the node-wide cap. When the last reference goes (the
/// pool's and every lease's), the process is killed and the slot freed.
struct Member {
    instance: Instance,
    /// What callers keep with the instance between calls (the gateway's connections),
    /// at most one per concurrent call.
    attachments: Mutex<Vec<Box<dyn Any + Send>>>,
    _slot: Slot,
}

/// One unit of `State::live`, released on drop.
struct Slot {
    state: Arc<Mutex<State>>,
    instance_id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap();
        state.live -= 1;
        state.pids.remove(&self.instance_id);
    }
}

struct Entry {
    member: Arc<Member>,
    /// Calls running on the instance now.
    in_flight: usize,
    /// When `in_flight` last dropped to zero.
    idle_since: Instant,
}

struct FunctionPool {
    /// Hash of the `InstanceConfig` the instances were started with.
    config_key: u64,
    entries: Vec<Entry>,
}

#[derive(Default)]
struct State {
    functions: HashMap<String, FunctionPool>,
    /// Instances alive (busy, idle, or starting), counted against `instances_max`.
    live: usize,
    /// Process ids of every live instance, so shutdown can kill what is busy too.
    pids: HashMap<u64, i32>,
    closed: bool,
}

/// Runs invocations on warm or new instances.
pub struct Pool {
    runtimes: Runtimes,
    config: PoolConfig,
    state: Arc<Mutex<State>>,
    next_instance: AtomicU64,
}

impl Pool {
    pub fn new(runtimes: Runtimes, config: PoolConfig) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            runtimes,
            config,
            state: Arc::new(Mutex::new(State::default())),
            next_instance: AtomicU64::new(1),
        });
        tokio::spawn(reap_idle(Arc::downgrade(&pool)));
        pool
    }

    pub fn runtimes(&self) -> &Runtimes {
        &self.runtimes
    }

    /// Runs one invocation of `config` with `event`.
    pub async fn invoke(
        self: &Arc<Self>,
        config: &InstanceConfig,
        request_id: &str,
        event: &[u8],
    ) -> Result<Invocation, SandboxError> {
        let lease = match self.acquire(config).await? {
            Acquired::Ready(lease) => lease,
            Acquired::Failed(error) => {
                return Ok(Invocation {
                    outcome: Outcome::Error(error),
                    cold_start: true,
                    init_ms: None,
                    duration_ms: 0.0,
                    instance_id: 0,
                    logs: Default::default(),
                });
            }
        };
        let (outcome, logs, duration_ms) = lease.invoke(request_id, event).await;
        Ok(Invocation {
            outcome,
            cold_start: lease.cold_start,
            init_ms: lease.init_ms(),
            duration_ms,
            instance_id: lease.instance_id(),
            logs,
        })
    }

    /// Takes a slot on a warm instance of `config` or starts one. The slot is the caller's
    /// until the lease is dropped.
    pub async fn acquire(
        self: &Arc<Self>,
        config: &InstanceConfig,
    ) -> Result<Acquired, SandboxError> {
        let key = config_key(config);
        let (member, cold_start) = match self.checkout(config, key)? {
            Some(member) => (member, false),
            None => match self.start(config, key).await? {
                Ok(member) => (member, true),
                Err(error) => return Ok(Acquired::Failed(error)),
            },
        };
        Ok(Acquired::Ready(Lease {
            pool: self.clone(),
            function: config.function.clone(),
            key,
            concurrency: config.concurrency.max(1) as usize,
            member: Some(member),
            cold_start,
            timeout: Duration::from_millis(config.timeout_ms as u64),
            busy: AtomicBool::new(false),
        }))
    }

    /// Stops the instances of `function` once their calls finish, e.g. after it was
    /// updated or deleted.
    pub fn evict(&self, function: &str) {
        let removed = self.state.lock().unwrap().functions.remove(function);
        // Idle instances die here; busy ones when their last lease is dropped.
        drop(removed);
    }

    /// Refuses new invocations and kills every instance, busy or idle.
    pub fn shutdown(&self) {
        let (entries, pids) = {
            let mut state = self.state.lock().unwrap();
            state.closed = true;
            let entries: Vec<Entry> = state
                .functions
                .drain()
                .flat_map(|(_, p)| p.entries)
                .collect();
            (entries, state.pids.values().copied().collect::<Vec<_>>())
        };
        for pid in pids {
            kill_group(pid);
        }
        drop(entries);
    }

    /// Number of live instances (for tests and, later, metrics).
    pub fn live_instances(&self) -> usize {
        self.state.lock().unwrap().live
    }

    /// A slot on a warm instance with room, the most recently used first: it is the
    /// likeliest to be hot in caches, and it lets the others age out.
    fn checkout(
        &self,
        config: &InstanceConfig,
        key: u64,
    ) -> Result<Option<Arc<Member>>, SandboxError> {
        let concurrency = config.concurrency.max(1) as usize;
        // Entries leaving the pool are dropped after the lock is released: dropping the
        // last reference to an instance takes the lock again (to free its slot).
        let mut gone = Vec::new();
        let found = {
            let mut state = self.state.lock().unwrap();
            if state.closed {
                return Err(SandboxError::ShuttingDown);
            }
            let pool = state
                .functions
                .entry(config.function.clone())
                .or_insert(FunctionPool {
                    config_key: key,
                    entries: Vec::new(),
                });
            if pool.config_key != key {
                // The function changed: its instances run old code or config.
                pool.config_key = key;
                gone.append(&mut pool.entries);
            }
            let (dead, alive): (Vec<Entry>, Vec<Entry>) = pool
                .entries
                .drain(..)
                .partition(|e| e.member.instance.is_dead());
            pool.entries = alive;
            gone.extend(dead);
            let entry = pool
                .entries
                .iter_mut()
                .rev()
                .find(|e| e.in_flight < concurrency);
            entry.map(|e| {
                e.in_flight += 1;
                e.member.clone()
            })
        };
        drop(gone);
        Ok(found)
    }

    /// Gives a slot back. `retire` takes the instance out of the pool: it died, timed out,
    /// or was left mid-call with no room for another.
    fn checkin(&self, function: &str, key: u64, member: Arc<Member>, retire: bool) {
        let gone = {
            let mut state = self.state.lock().unwrap();
            let Some(pool) = state.functions.get_mut(function) else {
                return;
            };
            let Some(i) = pool
                .entries
                .iter()
                .position(|e| Arc::ptr_eq(&e.member, &member))
            else {
                return;
            };
            let entry = &mut pool.entries[i];
            entry.in_flight -= 1;
            if entry.in_flight == 0 {
                entry.idle_since = Instant::now();
            }
            (retire || pool.config_key != key || member.instance.is_dead())
                .then(|| pool.entries.remove(i))
        };
        drop(gone);
        drop(member);
    }

    /// Starts an instance, holding a slot of the node-wide cap while it lives, and adds it
    /// to the pool with this caller's call in flight.
    async fn start(
        &self,
        config: &InstanceConfig,
        key: u64,
    ) -> Result<Result<Arc<Member>, FunctionError>, SandboxError> {
        let launch = self
            .runtimes
            .launch(config)
            .ok_or(SandboxError::RuntimeUnavailable(config.runtime))?;
        let id = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let slot = {
            let mut state = self.state.lock().unwrap();
            if state.live >= self.config.instances_max {
                return Err(SandboxError::CapacityExhausted(self.config.instances_max));
            }
            state.live += 1;
            Slot {
                state: self.state.clone(),
                instance_id: id,
            }
        };
        // On a start failure `slot` is dropped here and the reservation released.
        let instance = match Instance::start(id, launch, config).await {
            Ok(instance) => instance,
            Err(StartError::Platform(e)) => return Err(e),
            Err(StartError::Function(e)) => return Ok(Err(e)),
        };
        let member = Arc::new(Member {
            instance,
            attachments: Mutex::new(Vec::new()),
            _slot: slot,
        });
        let mut state = self.state.lock().unwrap();
        state.pids.insert(id, member.instance.pid);
        if state.closed {
            return Err(SandboxError::ShuttingDown);
        }
        let pool = state
            .functions
            .entry(config.function.clone())
            .or_insert(FunctionPool {
                config_key: key,
                entries: Vec::new(),
            });
        if pool.config_key == key {
            pool.entries.push(Entry {
                member: member.clone(),
                in_flight: 1,
                idle_since: Instant::now(),
            });
        }
        tracing::debug!(function = %config.function, instance = id, init_ms = member.instance.init.as_millis() as u64, "instance started");
        Ok(Ok(member))
    }
}

/// The outcome of `Pool::acquire`.
pub enum Acquired {
    Ready(Lease),
    /// A new instance could not load the function's code: an invocation outcome.
    Failed(FunctionError),
}

/// The first answer of a web app to a request.
pub enum WebReply {
    /// JSON `{status, headers}`; the body follows on `body`.
    Head {
        head: Bytes,
        body: mpsc::Receiver<StreamEvent>,
    },
    Error(FunctionError, Logs),
}

/// One call slot on one instance. Dropping the lease gives the slot back.
pub struct Lease {
    pool: Arc<Pool>,
    function: String,
    key: u64,
    concurrency: usize,
    member: Option<Arc<Member>>,
    /// Whether the instance was started for this lease.
    pub cold_start: bool,
    timeout: Duration,
    /// Set while a call is unfinished. A lease dropped then (its caller went away) on an
    /// instance of concurrency 1 retires the instance: a busy instance must never be
    /// handed to the next caller.
    busy: AtomicBool,
}

impl Lease {
    fn member(&self) -> &Member {
        self.member
            .as_ref()
            .expect("a lease holds its instance until dropped")
    }

    fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Release);
    }

    /// Marks a streamed web response as complete, so the slot can be reused.
    pub fn finish_stream(&self) {
        self.set_busy(false);
    }

    pub fn instance_id(&self) -> u64 {
        self.member().instance.id
    }

    /// The loopback port of an HTTP instance.
    pub fn port(&self) -> Option<u16> {
        self.member().instance.port
    }

    /// Milliseconds the instance took to start, when this lease started it.
    pub fn init_ms(&self) -> Option<f64> {
        self.cold_start
            .then_some(self.member().instance.init.as_secs_f64() * 1000.0)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the instance has died.
    pub fn is_dead(&self) -> bool {
        self.member().instance.is_dead()
    }

    /// Runs one event invocation: the outcome, its logs and its duration in milliseconds.
    pub async fn invoke(&self, request_id: &str, event: &[u8]) -> (Outcome, Logs, f64) {
        let instance = &self.member().instance;
        let meta = serde_json::to_vec(&serde_json::json!({
            "request_id": request_id,
            "deadline_ms": now_ms() + self.timeout.as_millis() as i64,
        }))
        .expect("meta serializes");
        let started = Instant::now();
        self.set_busy(true);
        let (reply, logs) = instance.call(&meta, event, self.timeout).await;
        self.set_busy(false);
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let outcome = match reply {
            Reply::Result { content_type, body } => Outcome::Success {
                content_type: match &content_type[..] {
                    b"json" => ContentType::Json,
                    b"text" => ContentType::Text,
                    _ => ContentType::Bytes,
                },
                body,
            },
            Reply::Head(_) => Outcome::Error(FunctionError::new(
                "Runtime.InvalidResponse",
                "the runtime answered an invocation with a web response",
            )),
            Reply::Error(e) => Outcome::Error(e),
            Reply::Crashed(report) => {
                Outcome::Error(FunctionError::new("Runtime.ExitError", report))
            }
            Reply::Timeout => Outcome::Error(self.timed_out()),
        };
        (outcome, logs, duration_ms)
    }

    /// Sends a web request (WSGI/ASGI functions). `meta` is the request's JSON description.
    pub async fn web_request(&self, meta: &[u8], body: &[u8]) -> WebReply {
        self.set_busy(true);
        let (reply, logs, stream) = self
            .member()
            .instance
            .request(meta, body, self.timeout)
            .await;
        // After a head the call is finished only when the body is (`finish_stream`).
        if !matches!(reply, Reply::Head(_)) {
            self.set_busy(false);
        }
        match reply {
            Reply::Head(head) => WebReply::Head { head, body: stream },
            Reply::Error(e) => WebReply::Error(e, logs),
            Reply::Crashed(report) => {
                WebReply::Error(FunctionError::new("Runtime.ExitError", report), logs)
            }
            Reply::Timeout => WebReply::Error(self.timed_out(), logs),
            Reply::Result { .. } => WebReply::Error(
                FunctionError::new(
                    "Runtime.InvalidResponse",
                    "the runtime answered a web request with a value",
                ),
                logs,
            ),
        }
    }

    /// The error of a call that ran past the timeout. The instance is killed, because the
    /// handler may be stuck anywhere and only that frees it; calls sharing the instance
    /// fail with it.
    pub fn timed_out(&self) -> FunctionError {
        self.member().instance.kill();
        FunctionError::new(
            "FunctionTimeout",
            format!(
                "Task timed out after {:.2} seconds",
                self.timeout.as_secs_f64()
            ),
        )
    }

    /// Starts a call made over HTTP (HTTP instances): the instance's output is attributed
    /// to it until `end_external` (exactly, while it is the only call in flight).
    pub fn begin_external(&self) -> u32 {
        self.set_busy(true);
        self.member().instance.begin_external()
    }

    /// Ends such a call and returns its logs.
    pub fn end_external(&self, id: u32) -> Logs {
        self.set_busy(false);
        self.member().instance.end_external(id)
    }

    /// Why the instance died, for an error message.
    pub async fn crash_report(&self, why: &str) -> String {
        self.member().instance.crash_report(why.to_string()).await
    }

    /// Takes the instance out of the pool and kills it now.
    pub fn discard(&mut self) {
        if let Some(member) = self.member.take() {
            member.instance.kill();
            self.pool.checkin(&self.function, self.key, member, true);
        }
    }

    /// Takes something a previous caller kept with this instance (a connection).
    pub fn take_attachment<T: Any + Send>(&self) -> Option<T> {
        let mut list = self.member().attachments.lock().unwrap();
        let i = list.iter().position(|a| a.is::<T>())?;
        list.swap_remove(i).downcast::<T>().ok().map(|b| *b)
    }

    /// Keeps something with this instance for a later caller; at most one per call slot.
    pub fn put_attachment<T: Any + Send>(&self, value: T) {
        let mut list = self.member().attachments.lock().unwrap();
        if list.len() < self.concurrency {
            list.push(Box::new(value));
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            let abandoned = self.busy.load(Ordering::Acquire);
            // With room for other calls, an abandoned call just finishes on its own.
            let retire = abandoned && self.concurrency == 1;
            if retire {
                member.instance.kill();
            }
            self.pool.checkin(&self.function, self.key, member, retire);
        }
    }
}

fn config_key(config: &InstanceConfig) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    config.hash(&mut h);
    h.finish()
}

/// Stops instances idle longer than the idle timeout. Holds only a weak reference so the
/// pool can be dropped.
async fn reap_idle(pool: std::sync::Weak<Pool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let expired: Vec<Entry> = {
            let mut state = pool.state.lock().unwrap();
            let idle_timeout = pool.config.idle_timeout;
            let mut expired = Vec::new();
            for fp in state.functions.values_mut() {
                let (old, keep): (Vec<Entry>, Vec<Entry>) = fp
                    .entries
                    .drain(..)
                    .partition(|e| e.in_flight == 0 && e.idle_since.elapsed() >= idle_timeout);
                fp.entries = keep;
                expired.extend(old);
            }
            expired
        };
        // Dropped outside the lock: the last reference kills the process.
        drop(expired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use model::Runtime;

    const PY: &str = r#"
import os, time, logging
count = 0
def handler(event, context):
    global count
    if isinstance(event, bytes):
        return event
    count += 1
    what = event.get("do") if isinstance(event, dict) else None
    print("call", count, context.aws_request_id)
    logging.getLogger().warning("warned")
    if what == "raise":
        raise ValueError("bad input")
    if what == "sleep":
        time.sleep(5)
    if what == "exit":
        os._exit(3)
    if what == "bytes":
        return b"\x00\x01"
    return {"count": count, "event": event, "left": context.get_remaining_time_in_millis() > 0}
"#;

    const JS: &str = r#"
let count = 0;
exports.handler = async (event, context) => {
  count += 1;
  console.log('call', count, context.awsRequestId);
  if (event.do === 'raise') throw new TypeError('bad input');
  if (event.do === 'exit') process.exit(4);
  return { count, event };
};
exports.cb = (event, context, callback) => { setTimeout(() => callback(null, 'done'), 1); };
"#;

    fn setup(files: &[(&str, &str)]) -> (tempfile::TempDir, Arc<Pool>) {
        let tmp = tempfile::tempdir().unwrap();
        let code = tmp.path().join("code");
        std::fs::create_dir(&code).unwrap();
        for (name, text) in files {
            std::fs::write(code.join(name), text).unwrap();
        }
        let runtimes = Runtimes::install(&tmp.path().join("rt"), None, None).unwrap();
        (tmp, Pool::new(runtimes, PoolConfig::default()))
    }

    fn config(
        tmp: &tempfile::TempDir,
        runtime: Runtime,
        handler: &str,
        timeout_ms: u32,
    ) -> InstanceConfig {
        InstanceConfig {
            function: "f".into(),
            runtime,
            handler: handler.into(),
            code_dir: tmp.path().join("code"),
            env: Default::default(),
            memory_mb: 128,
            timeout_ms,
            kind: model::FunctionType::Handler,
            command: Vec::new(),
            concurrency: 1,
        }
    }

    fn body(inv: &Invocation) -> String {
        match &inv.outcome {
            Outcome::Success { body, .. } => String::from_utf8_lossy(body).into_owned(),
            Outcome::Error(e) => panic!("expected success, got {e:?}"),
        }
    }

    fn error(inv: &Invocation) -> &FunctionError {
        match &inv.outcome {
            Outcome::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn python_warm_reuse_errors_timeout_and_crash() {
        let (tmp, pool) = setup(&[("main.py", PY)]);
        let c = config(&tmp, Runtime::Python3, "main.handler", 1000);
        let first = pool.invoke(&c, "r1", br#"{"a":1}"#).await.unwrap();
        assert_eq!(body(&first), r#"{"count":1,"event":{"a":1},"left":true}"#);
        assert!(first.cold_start);
        let lines: Vec<_> = first
            .logs
            .lines
            .iter()
            .map(|l| (l.stream.as_str(), l.message.as_str()))
            .collect();
        assert_eq!(lines, [("stdout", "call 1 r1"), ("WARNING", "warned")]);

        let second = pool.invoke(&c, "r2", b"").await.unwrap();
        assert_eq!(body(&second), r#"{"count":2,"event":{},"left":true}"#);
        assert!(!second.cold_start);

        let e = pool.invoke(&c, "r3", br#"{"do":"raise"}"#).await.unwrap();
        let e = error(&e);
        assert_eq!(
            (e.error_type.as_str(), e.error_message.as_str()),
            ("ValueError", "bad input")
        );
        assert!(e.stack_trace.iter().any(|l| l.contains("main.py")), "{e:?}");

        let raw = pool.invoke(&c, "r4", b"not json").await.unwrap();
        assert_eq!(
            raw.outcome,
            Outcome::Success {
                content_type: ContentType::Bytes,
                body: Bytes::from_static(b"not json")
            }
        );

        let t = pool.invoke(&c, "r5", br#"{"do":"sleep"}"#).await.unwrap();
        assert_eq!(error(&t).error_type, "FunctionTimeout");
        let after = pool.invoke(&c, "r6", b"{}").await.unwrap();
        assert!(after.cold_start);
        assert_eq!(body(&after), r#"{"count":1,"event":{},"left":true}"#);

        let x = pool.invoke(&c, "r7", br#"{"do":"exit"}"#).await.unwrap();
        let x = error(&x);
        assert_eq!(x.error_type, "Runtime.ExitError");
        assert!(x.error_message.contains("status 3"), "{x:?}");
        assert!(pool.invoke(&c, "r8", b"{}").await.unwrap().cold_start);
        assert_eq!(pool.live_instances(), 1);
        pool.shutdown();
        assert_eq!(pool.live_instances(), 0);
    }

    #[tokio::test]
    async fn python_async_handlers_and_the_context_logger() {
        let code = "import asyncio\nasync def handler(event, context):\n    await asyncio.sleep(0.001)\n    context.logger.info('from %s', 'logger')\n    return 'async ' + context.function_name\n";
        let (tmp, pool) = setup(&[("main.py", code)]);
        let inv = pool
            .invoke(
                &config(&tmp, Runtime::Python3, "main.handler", 1000),
                "r1",
                b"{}",
            )
            .await
            .unwrap();
        assert_eq!(
            inv.outcome,
            Outcome::Success {
                content_type: ContentType::Text,
                body: Bytes::from_static(b"async f")
            }
        );
        let lines: Vec<_> = inv
            .logs
            .lines
            .iter()
            .map(|l| (l.stream.as_str(), l.message.as_str()))
            .collect();
        assert_eq!(lines, [("INFO", "from logger")]);
    }

    #[tokio::test]
    async fn idle_instances_are_stopped_and_changes_retire_old_ones() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("code")).unwrap();
        std::fs::write(tmp.path().join("code/main.py"), PY).unwrap();
        let runtimes = Runtimes::install(&tmp.path().join("rt"), None, None).unwrap();
        let pool = Pool::new(
            runtimes,
            PoolConfig {
                instances_max: 1,
                idle_timeout: Duration::from_millis(300),
            },
        );
        let mut c = config(&tmp, Runtime::Python3, "main.handler", 1000);
        pool.invoke(&c, "r1", b"{}").await.unwrap();
        assert_eq!(pool.live_instances(), 1);
        // A changed configuration never reuses the old instance, and the cap of one holds.
        c.env.insert("X".into(), "1".into());
        let changed = pool.invoke(&c, "r2", b"{}").await.unwrap();
        assert!(changed.cold_start);
        assert_eq!(pool.live_instances(), 1);
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(pool.live_instances(), 0, "the idle instance was not reaped");
    }

    #[tokio::test]
    async fn the_node_cap_refuses_clearly() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("code")).unwrap();
        std::fs::write(tmp.path().join("code/main.py"), PY).unwrap();
        let runtimes = Runtimes::install(&tmp.path().join("rt"), None, None).unwrap();
        let pool = Pool::new(
            runtimes,
            PoolConfig {
                instances_max: 1,
                idle_timeout: Duration::from_secs(60),
            },
        );
        let c = config(&tmp, Runtime::Python3, "main.handler", 2000);
        let busy = {
            let pool = pool.clone();
            let c = c.clone();
            tokio::spawn(async move { pool.invoke(&c, "r1", br#"{"do":"sleep"}"#).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let err = pool.invoke(&c, "r2", b"{}").await.unwrap_err();
        assert!(matches!(err, SandboxError::CapacityExhausted(1)), "{err}");
        assert_eq!(
            err.to_string(),
            "this node already runs its maximum of 1 instances"
        );
        // A cancelled invocation (a caller that went away) still frees its slot.
        busy.abort();
        let _ = busy.await;
        assert_eq!(pool.live_instances(), 0);
        assert!(pool.invoke(&c, "r3", b"{}").await.is_ok());
    }

    /// Four 300 ms calls on one instance of concurrency 4 overlap: they finish together,
    /// and each call's output stays its own.
    #[tokio::test]
    async fn concurrent_calls_share_one_instance() {
        let py = "import time, asyncio\ndef handler(event, context):\n    print('start', context.aws_request_id)\n    time.sleep(0.3)\n    print('end', context.aws_request_id)\n    return event\nasync def ahandler(event, context):\n    await asyncio.sleep(0.3)\n    print('async', context.aws_request_id)\n    return event\n";
        let js = "exports.handler = async (event, context) => { console.log('start', context.awsRequestId); await new Promise((r) => setTimeout(r, 300)); console.log('end', context.awsRequestId); return event; };\n";
        let (tmp, pool) = setup(&[("main.py", py), ("index.js", js)]);
        for (runtime, handler) in [
            (Runtime::Python3, "main.handler"),
            (Runtime::Python3, "main.ahandler"),
            (Runtime::Nodejs, "index.handler"),
        ] {
            let mut c = config(&tmp, runtime, handler, 5000);
            c.concurrency = 4;
            // Start the instance first, so the four calls find it warm.
            pool.invoke(&c, "warm", b"{}").await.unwrap();
            let started = Instant::now();
            let calls: Vec<_> = (0..4)
                .map(|i| {
                    let (pool, c) = (pool.clone(), c.clone());
                    tokio::spawn(async move {
                        pool.invoke(&c, &format!("r{i}"), format!("{{\"i\":{i}}}").as_bytes())
                            .await
                            .unwrap()
                    })
                })
                .collect();
            let mut instances = std::collections::HashSet::new();
            for (i, call) in calls.into_iter().enumerate() {
                let inv = call.await.unwrap();
                assert_eq!(body(&inv), format!("{{\"i\":{i}}}"), "{handler}");
                instances.insert(inv.instance_id);
                for line in &inv.logs.lines {
                    assert!(
                        line.message.ends_with(&format!("r{i}")),
                        "{handler}: {line:?} in r{i}"
                    );
                }
                assert!(!inv.logs.lines.is_empty(), "{handler}");
            }
            let elapsed = started.elapsed();
            assert_eq!(
                instances.len(),
                1,
                "{handler}: the calls spread over {instances:?}"
            );
            assert!(
                elapsed < Duration::from_millis(1000),
                "{handler}: {elapsed:?}: the calls ran one after another"
            );
            pool.evict("f");
        }
    }

    #[tokio::test]
    async fn python_load_errors_are_outcomes() {
        let (tmp, pool) = setup(&[("main.py", PY), ("broken.py", "def handler(:\n")]);
        let cases = [
            ("missing.handler", "Runtime.ImportModuleError"),
            ("broken.handler", "Runtime.UserCodeSyntaxError"),
            ("main.nothing", "Runtime.HandlerNotFound"),
        ];
        for (handler, expect) in cases {
            let inv = pool
                .invoke(&config(&tmp, Runtime::Python3, handler, 1000), "r", b"{}")
                .await
                .unwrap();
            assert_eq!(error(&inv).error_type, expect, "{handler}");
        }
        assert_eq!(pool.live_instances(), 0);
    }

    #[tokio::test]
    async fn node_async_callback_errors_and_crash() {
        let (tmp, pool) = setup(&[("index.js", JS)]);
        let c = config(&tmp, Runtime::Nodejs, "index.handler", 2000);
        let first = pool.invoke(&c, "r1", br#"{"a":1}"#).await.unwrap();
        assert_eq!(body(&first), r#"{"count":1,"event":{"a":1}}"#);
        assert_eq!(first.logs.lines[0].message, "call 1 r1");
        let second = pool.invoke(&c, "r2", b"{}").await.unwrap();
        assert!(!second.cold_start);
        assert_eq!(body(&second), r#"{"count":2,"event":{}}"#);
        let e = pool.invoke(&c, "r3", br#"{"do":"raise"}"#).await.unwrap();
        assert_eq!(error(&e).error_type, "TypeError");
        let x = pool.invoke(&c, "r4", br#"{"do":"exit"}"#).await.unwrap();
        assert!(
            error(&x).error_message.contains("status 4"),
            "{:?}",
            error(&x)
        );
        let cb = pool
            .invoke(
                &config(&tmp, Runtime::Nodejs, "index.cb", 2000),
                "r5",
                b"{}",
            )
            .await
            .unwrap();
        assert_eq!(body(&cb), "done");
        let missing = pool
            .invoke(
                &config(&tmp, Runtime::Nodejs, "nope.handler", 2000),
                "r6",
                b"{}",
            )
            .await
            .unwrap();
        assert_eq!(error(&missing).error_type, "Runtime.ImportModuleError");
    }
}
