//! An executor for the pool's tests: instances that are not processes, echo each event
//! back, and start, die and stop as a test says, so the scheduler can be tested through
//! the seam with paused time.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{BoxFuture, Executor, Reply, Running, StartError, Started, Stopper, StreamEvent};
use crate::protocol::Kind;
use crate::{FunctionError, InstanceConfig, Logs};

/// Starts `FakeInstance`s and keeps a handle on each, so tests can see and kill them.
#[derive(Default)]
pub(crate) struct FakeExecutor {
    /// How long a start takes (in paused time, it costs nothing real).
    pub start_ms: u64,
    /// Whether every start fails as a function whose code does not load.
    pub broken: AtomicBool,
    /// The dead flag of every instance started, by id.
    pub started: Mutex<Vec<(u64, Arc<AtomicBool>)>>,
    /// Pre-stop hooks run.
    pub pre_stops: AtomicUsize,
    pub shut_down: AtomicBool,
    /// What happened to the instances, in order: `freeze 1`, `thaw 1` (changes of state
    /// only, as a real freezer makes them), `call 1`, `pre-stop 1`, `kill 1`; a call or
    /// hook on a frozen instance is logged as `... 1 while frozen`.
    pub log: Mutex<Vec<String>>,
}

impl FakeExecutor {
    /// The log so far, taken.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// Whether instance `id` was stopped (killed, or dropped by the pool).
    pub fn is_stopped(&self, id: u64) -> bool {
        self.started
            .lock()
            .unwrap()
            .iter()
            .any(|(i, dead)| *i == id && dead.load(Ordering::Acquire))
    }
}

impl Executor for Arc<FakeExecutor> {
    fn start<'a>(
        &'a self,
        id: u64,
        _config: &'a InstanceConfig,
    ) -> BoxFuture<'a, Result<Started, StartError>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(self.start_ms)).await;
            if self.broken.load(Ordering::Acquire) {
                return Err(StartError::Function(FunctionError::new(
                    "Runtime.ImportModuleError",
                    "no such module",
                )));
            }
            let dead = Arc::new(AtomicBool::new(false));
            self.started.lock().unwrap().push((id, dead.clone()));
            Ok(Started {
                instance: Box::new(FakeInstance {
                    id,
                    dead,
                    frozen: AtomicBool::new(false),
                    executor: self.clone(),
                }),
                port: None,
                how: "faked",
                init: Duration::from_millis(self.start_ms),
                code_ms: 0.0,
            })
        })
    }

    fn shutdown(&self) {
        self.shut_down.store(true, Ordering::Release);
    }
}

/// An instance that echoes events; dropping it marks it dead, as a killed process is.
pub(crate) struct FakeInstance {
    id: u64,
    dead: Arc<AtomicBool>,
    frozen: AtomicBool,
    executor: Arc<FakeExecutor>,
}

impl FakeInstance {
    /// Logs `what` happening to this instance, noting when it happened while frozen.
    fn log(&self, what: &str) {
        let frozen = if self.frozen.load(Ordering::Acquire) {
            " while frozen"
        } else {
            ""
        };
        let line = format!("{what} {}{frozen}", self.id);
        self.executor.log.lock().unwrap().push(line);
    }
}

impl Drop for FakeInstance {
    fn drop(&mut self) {
        self.dead.store(true, Ordering::Release);
    }
}

impl Running for FakeInstance {
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    fn oom_killed(&self) -> bool {
        false
    }

    fn kill(&self) {
        self.log("kill");
        self.dead.store(true, Ordering::Release);
        self.frozen.store(false, Ordering::Release);
    }

    fn freeze(&self) {
        if !self.frozen.swap(true, Ordering::AcqRel) {
            self.executor
                .log
                .lock()
                .unwrap()
                .push(format!("freeze {}", self.id));
        }
    }

    fn thaw(&self) {
        if self.frozen.swap(false, Ordering::AcqRel) {
            self.executor
                .log
                .lock()
                .unwrap()
                .push(format!("thaw {}", self.id));
        }
    }

    fn stopper(&self) -> Stopper {
        let dead = self.dead.clone();
        Arc::new(move || dead.store(true, Ordering::Release))
    }

    fn call<'a>(
        &'a self,
        _meta: &'a [u8],
        event: &'a [u8],
        _timeout: Duration,
    ) -> BoxFuture<'a, (Reply, Logs)> {
        self.log("call");
        Box::pin(async move {
            let reply = if self.is_dead() {
                Reply::Crashed("the fake instance was stopped".into())
            } else {
                Reply::Result {
                    content_type: Bytes::from_static(b"json"),
                    body: Bytes::copy_from_slice(event),
                }
            };
            (reply, Logs::default())
        })
    }

    fn request<'a>(
        &'a self,
        _meta: &'a [u8],
        _body: &'a [u8],
        _timeout: Duration,
    ) -> BoxFuture<'a, (Reply, Logs, mpsc::Receiver<StreamEvent>)> {
        let (_, rx) = mpsc::channel(1);
        Box::pin(async move {
            let e = FunctionError::new("Runtime.InvalidResponse", "a fake serves no web apps");
            (Reply::Error(e), Logs::default(), rx)
        })
    }

    fn hook<'a>(
        &'a self,
        kind: Kind,
        _handler: &'a str,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<f64, FunctionError>> {
        if kind == Kind::PreStop {
            self.log("pre-stop");
            self.executor.pre_stops.fetch_add(1, Ordering::AcqRel);
        }
        Box::pin(async { Ok(0.0) })
    }

    fn barrier(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn begin_external(&self) -> u32 {
        0
    }

    fn end_external(&self, _id: u32) -> Logs {
        Logs::default()
    }

    fn crash_report(&self, why: String) -> BoxFuture<'_, String> {
        Box::pin(async move { why })
    }
}
