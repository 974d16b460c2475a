//! One running instance: an interpreter process running a shim, and the channel to it.
//!
//! The process gets one end of a Unix socket pair as its stdin (the shim moves it off fd 0)
//! and pipes for stdout/stderr. A reader task owns the socket's read half and routes each
//! frame to the invocation it names, so several invocations can share one instance. When
//! the channel closes, every invocation still waiting learns that the instance died, with
//! its exit status and the tail of its stderr.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{oneshot, watch};

use crate::protocol::{self, Frame, FrameReader, Kind};
use crate::runtimes::Launch;
use crate::{FunctionError, InstanceConfig, Logs, SandboxError};
use model::limits;

/// Lines of stderr kept per instance to explain a crash.
const STDERR_TAIL_LINES: usize = 20;

/// How long to wait for an exited process's status and last stderr before reporting it.
const EXIT_REPORT_WAIT: Duration = Duration::from_millis(500);

/// What came back for one call.
pub(crate) enum Reply {
    Result {
        content_type: Bytes,
        body: Bytes,
    },
    Error(FunctionError),
    /// The instance died before answering.
    Crashed(String),
    Timeout,
}

struct Pending {
    reply: oneshot::Sender<(Reply, Logs)>,
    logs: Logs,
}

/// State shared between the instance handle and its background tasks.
struct Shared {
    pending: Mutex<HashMap<u32, Pending>>,
    dead: AtomicBool,
    stderr_tail: Mutex<VecDeque<String>>,
}

impl Shared {
    /// Attributes a line to the one invocation in flight; with none or several in flight the
    /// line cannot be attributed and is logged as the instance's own.
    fn attribute(&self, id: u32, stream: &str, line: &[u8]) {
        let mut pending = self.pending.lock().unwrap();
        let target = if id != 0 {
            pending.get_mut(&id)
        } else if pending.len() == 1 {
            pending.values_mut().next()
        } else {
            None
        };
        match target {
            Some(p) => p.logs.push(stream, line),
            None => {
                tracing::debug!(stream, line = %String::from_utf8_lossy(line), "instance output")
            }
        }
    }
}

/// A started instance. Dropping it kills the process group.
pub(crate) struct Instance {
    pub id: u64,
    pub pid: i32,
    /// Time from spawn to the shim's ready frame: process start plus code load.
    pub init: Duration,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    shared: Arc<Shared>,
    next_call: AtomicU32,
}

/// Why an instance did not become ready.
pub(crate) enum StartError {
    /// The platform could not start it (no interpreter, spawn failed).
    Platform(SandboxError),
    /// The function's code failed to load: an invocation outcome.
    Function(FunctionError),
}

impl Instance {
    pub async fn start(
        id: u64,
        launch: Launch,
        config: &InstanceConfig,
    ) -> Result<Instance, StartError> {
        let started = Instant::now();
        let (host, guest) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| StartError::Platform(SandboxError::Spawn(e.to_string())))?;
        let guest: OwnedFd = guest.into();
        let mut cmd = tokio::process::Command::new(&launch.program);
        cmd.args(&launch.args)
            .env_clear()
            .envs(instance_env(id, config))
            .current_dir(&config.code_dir)
            .stdin(Stdio::from(guest))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so killing the instance kills everything it forked.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            StartError::Platform(SandboxError::Spawn(format!(
                "{}: {e}",
                launch.program.display()
            )))
        })?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        host.set_nonblocking(true)
            .map_err(|e| StartError::Platform(SandboxError::Spawn(e.to_string())))?;
        let host = tokio::net::UnixStream::from_std(host)
            .map_err(|e| StartError::Platform(SandboxError::Spawn(e.to_string())))?;
        let (read_half, write_half) = host.into_split();

        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
            stderr_tail: Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)),
        });
        let (exit_tx, exit_rx) = watch::channel::<Option<String>>(None);
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(pump_output(stdout, "stdout", shared.clone()));
        let stderr_done = tokio::spawn(pump_output(stderr, "stderr", shared.clone()));
        tokio::spawn(async move {
            let status = child.wait().await;
            let _ = exit_tx.send(Some(match status {
                Ok(s) => describe_exit(s),
                Err(e) => format!("Runtime exited; its status is unknown: {e}"),
            }));
        });

        let mut reader = FrameReader::new(read_half);
        let first = tokio::time::timeout(
            Duration::from_millis(limits::INSTANCE_START_MS_MAX),
            reader.next(),
        )
        .await;
        let instance = Instance {
            id,
            pid,
            init: started.elapsed(),
            writer: tokio::sync::Mutex::new(write_half),
            shared: shared.clone(),
            next_call: AtomicU32::new(1),
        };
        match first {
            Ok(Ok(Some(Frame {
                kind: Kind::Ready, ..
            }))) => {}
            Ok(Ok(Some(Frame {
                kind: Kind::InitError,
                body,
                ..
            }))) => {
                return Err(StartError::Function(FunctionError::from_body(&body)));
            }
            Err(_) => {
                return Err(StartError::Function(FunctionError::new(
                    "Runtime.InitTimeout",
                    format!(
                        "the runtime did not load the handler within {} ms",
                        limits::INSTANCE_START_MS_MAX
                    ),
                )));
            }
            Ok(other) => {
                // The process died (or spoke nonsense) before it was ready.
                drop(instance);
                let why = match other {
                    Ok(_) => "Runtime sent an unexpected frame before it was ready".to_string(),
                    Err(e) => format!("Runtime broke the instance protocol: {e}"),
                };
                let report = exit_report(exit_rx, stderr_done, &shared, why).await;
                return Err(StartError::Function(FunctionError::new(
                    "Runtime.ExitError",
                    report,
                )));
            }
        }
        tokio::spawn(read_frames(reader, shared, exit_rx, stderr_done));
        Ok(instance)
    }

    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire)
    }

    /// Runs one invocation. The instance stays usable after `Result` and `Error`; after
    /// `Crashed` it is dead, and after `Timeout` the caller must kill it.
    pub async fn call(&self, meta: &[u8], event: &[u8], timeout: Duration) -> (Reply, Logs) {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().unwrap().insert(
            id,
            Pending {
                reply: tx,
                logs: Logs::default(),
            },
        );
        let header = protocol::header(Kind::Invoke, id, meta.len(), event.len());
        let outcome = tokio::time::timeout(timeout, async {
            {
                let mut w = self.writer.lock().await;
                // A write error means the instance is gone; the reader task reports why.
                let _ = async {
                    w.write_all(&header).await?;
                    w.write_all(meta).await?;
                    w.write_all(event).await
                }
                .await;
            }
            rx.await
        })
        .await;
        match outcome {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => (Reply::Crashed("Runtime exited".into()), Logs::default()),
            // The entry is still in the table: take the logs gathered so far with it.
            Err(_) => {
                let logs = self
                    .shared
                    .pending
                    .lock()
                    .unwrap()
                    .remove(&id)
                    .map(|p| p.logs);
                (Reply::Timeout, logs.unwrap_or_default())
            }
        }
    }

    /// Kills the whole process group now.
    pub fn kill(&self) {
        self.shared.dead.store(true, Ordering::Release);
        kill_group(self.pid);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn kill_group(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        // ESRCH (already gone) is the expected case after a crash.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// The environment of an instance: the function's own variables plus the documented
/// runtime ones. Nothing of the server's environment leaks in.
fn instance_env(id: u64, c: &InstanceConfig) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> =
        c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let code_dir = c.code_dir.display().to_string();
    env.extend([
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), "/tmp".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("NIMBUS_FUNCTION_NAME".into(), c.function.clone()),
        ("NIMBUS_HANDLER".into(), c.handler.clone()),
        ("NIMBUS_CODE_DIR".into(), code_dir.clone()),
        ("NIMBUS_INSTANCE_ID".into(), format!("{}-{id}", c.function)),
        ("NIMBUS_MEMORY_MB".into(), c.memory_mb.to_string()),
        ("NIMBUS_TIMEOUT_MS".into(), c.timeout_ms.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME".into(), c.function.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
            c.memory_mb.to_string(),
        ),
        ("AWS_LAMBDA_FUNCTION_VERSION".into(), "$LATEST".into()),
        ("LAMBDA_TASK_ROOT".into(), code_dir),
        ("_HANDLER".into(), c.handler.clone()),
    ]);
    env
}

async fn pump_output<R: tokio::io::AsyncRead + Unpin>(
    pipe: R,
    stream: &'static str,
    shared: Arc<Shared>,
) {
    let mut lines = tokio::io::BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a line longer than the log limit is cut, never buffered whole.
        match (&mut lines)
            .take(limits::INVOCATION_LOG_BYTES_MAX as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if stream == "stderr" {
            let mut tail = shared.stderr_tail.lock().unwrap();
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(String::from_utf8_lossy(text).into_owned());
        }
        shared.attribute(0, stream, text);
    }
}

async fn read_frames(
    mut reader: FrameReader<tokio::net::unix::OwnedReadHalf>,
    shared: Arc<Shared>,
    exit_rx: watch::Receiver<Option<String>>,
    stderr_done: tokio::task::JoinHandle<()>,
) {
    let why = loop {
        match reader.next().await {
            Ok(Some(frame)) => match frame.kind {
                Kind::Log => {
                    let stream = String::from_utf8_lossy(&frame.meta);
                    shared.attribute(frame.id, &stream, &frame.body);
                }
                Kind::Result | Kind::Error => {
                    let pending = shared.pending.lock().unwrap().remove(&frame.id);
                    if let Some(Pending { reply, logs }) = pending {
                        let r = if frame.kind == Kind::Result {
                            Reply::Result {
                                content_type: frame.meta,
                                body: frame.body,
                            }
                        } else {
                            Reply::Error(FunctionError::from_body(&frame.body))
                        };
                        let _ = reply.send((r, logs));
                    }
                }
                _ => break format!("Runtime sent an unexpected {:?} frame", frame.kind),
            },
            Ok(None) => break String::new(),
            Err(e) => break format!("Runtime broke the instance protocol: {e}"),
        }
    };
    shared.dead.store(true, Ordering::Release);
    let report = exit_report(exit_rx, stderr_done, &shared, why).await;
    let pending: Vec<Pending> = shared
        .pending
        .lock()
        .unwrap()
        .drain()
        .map(|(_, p)| p)
        .collect();
    for p in pending {
        let _ = p.reply.send((Reply::Crashed(report.clone()), p.logs));
    }
}

async fn exit_report(
    mut exit_rx: watch::Receiver<Option<String>>,
    stderr_done: tokio::task::JoinHandle<()>,
    shared: &Shared,
    why: String,
) -> String {
    let status = tokio::time::timeout(EXIT_REPORT_WAIT, exit_rx.wait_for(|s| s.is_some()))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|s| s.clone()));
    // Let the last stderr lines (a traceback, a fatal error) arrive, but do not wait on a
    // grandchild that keeps the pipe open.
    let _ = tokio::time::timeout(EXIT_REPORT_WAIT, stderr_done).await;
    let mut report = status.unwrap_or_else(|| "Runtime closed its channel".into());
    if !why.is_empty() {
        report = format!("{why}; {report}");
    }
    let tail = shared.stderr_tail.lock().unwrap();
    if !tail.is_empty() {
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        report.push_str("; last stderr: ");
        report.push_str(&lines.join("\n"));
    }
    report
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("Runtime exited with status {code}"),
        (None, Some(sig)) => format!("Runtime exited with signal {sig} ({})", signal_name(sig)),
        _ => "Runtime exited".into(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "signal",
    }
}
