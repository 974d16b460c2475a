//! One running instance: a process, the channel to it, and the tasks that watch it.
//!
//! Shim-based instances (Python, Node.js) get one end of a Unix socket pair as their stdin
//! (the shim moves it off fd 0) and speak frames over it. A reader task owns the socket's
//! read half and routes each frame to the call it names, so several calls can share one
//! instance. HTTP instances (custom runtimes, Node HTTP functions) serve HTTP on a loopback
//! port that the gateway connects to; custom runtimes have no channel at all and are ready
//! when the port accepts connections. Every instance has stdout/stderr pipes whose lines are
//! attributed to the one call in flight. When the process dies, every call still waiting
//! learns it, with the exit status and the tail of stderr.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model::{FunctionType, Runtime, limits};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};

use crate::cgroup::InstanceCgroup;
use crate::executor::runtime_api::RuntimeApi;
use crate::executor::{Reply, StartError, StreamEvent};
use crate::freeze::Freezer;
use crate::isolation::Isolation;
use crate::protocol::{self, Frame, FrameReader, Kind};
use crate::runtimes::Launch;
use crate::zygote::{Forked, Zygote};
use crate::{FunctionError, InstanceConfig, Logs, SandboxError};

/// Lines of stderr kept per instance to explain a crash.
const STDERR_TAIL_LINES: usize = 20;

/// How long to wait for an exited process's status and last stderr before reporting it.
const EXIT_REPORT_WAIT: Duration = Duration::from_millis(500);

/// Body chunks buffered between an instance and a slow HTTP client; past this the instance
/// waits (backpressure) instead of the server buffering without bound.
const STREAM_CHUNKS_BUFFERED: usize = 16;

enum Waiter {
    /// A call that answers once (an invocation).
    Once(oneshot::Sender<(Reply, Logs)>),
    /// A call answered by a head and a stream of chunks (a web request).
    Stream {
        head: Option<oneshot::Sender<(Reply, Logs)>>,
        body: mpsc::Sender<StreamEvent>,
    },
    /// A call whose HTTP exchange happens outside the channel; only its logs are kept here.
    External,
    /// A `barrier`'s ping; not a call, so output is never attributed to it.
    Barrier(oneshot::Sender<(Reply, Logs)>),
}

struct Pending {
    waiter: Waiter,
    logs: Logs,
}

/// State shared between the instance handle and its background tasks.
struct Shared {
    pending: Mutex<HashMap<u32, Pending>>,
    dead: AtomicBool,
    stderr_tail: Mutex<VecDeque<String>>,
}

impl Shared {
    /// Attributes a line to its call, or, from a pipe (id 0), to the one call in flight;
    /// with none or several in flight the line is logged as the instance's own.
    fn attribute(&self, id: u32, stream: &str, line: &[u8]) {
        let mut pending = self.pending.lock().unwrap();
        let target = if id != 0 {
            pending.get_mut(&id)
        } else {
            let mut calls = pending
                .values_mut()
                .filter(|p| !matches!(p.waiter, Waiter::Barrier(_)));
            match (calls.next(), calls.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
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
    /// Time from spawn to ready: process start plus code load.
    pub init: Duration,
    /// The part of `init` the runtime spent loading the function's code (as it reports).
    pub code_ms: f64,
    /// The loopback port of an HTTP instance.
    pub port: Option<u16>,
    pub memory_mb: u32,
    writer: Option<tokio::sync::Mutex<OwnedWriteHalf>>,
    shared: Arc<Shared>,
    exit: watch::Receiver<Option<String>>,
    stderr_done: Mutex<Option<tokio::task::JoinHandle<()>>>,
    next_call: AtomicU32,
    /// The channel's read half until the reader task takes it.
    reader: Mutex<Option<FrameReader<tokio::net::unix::OwnedReadHalf>>>,
    /// The instance's cgroups when sandboxed; dropped after the process group is killed.
    cgroup: Option<InstanceCgroup>,
    /// Freezes the instance between calls; shared with its stopper, which thaws it after
    /// the kill.
    pub freezer: Arc<Freezer>,
    /// The Lambda Runtime API endpoint of a `provided` instance, which its calls go
    /// through instead of a channel.
    api: Option<RuntimeApi>,
    /// Function Compute's protocol to a custom runtime's server (`conventions: fc`), which
    /// its event calls and hooks go through.
    fc: Option<crate::web::FcClient>,
}

fn platform(e: impl std::fmt::Display) -> StartError {
    StartError::Platform(SandboxError::Spawn(e.to_string()))
}

/// A runtime process started ahead of need ("stem cell"): the interpreter has booted and
/// loaded the shim, and waits on its channel for the function it is to become. Taking one
/// replaces an interpreter start (tens of milliseconds) with one frame. A stem is spawned,
/// or forked by the Python fork server (`zygote`); dropping it closes its channel, on which
/// an unspecialized stem exits by itself.
pub(crate) struct Stem {
    origin: Option<Origin>,
    host: Option<std::os::unix::net::UnixStream>,
    /// A jailed stem's helper, which mounts the function's code when told (see `jail`).
    warden: Option<OwnedFd>,
    /// A jailed stem's cgroups, which get the function's limits when it is specialized.
    cgroup: Option<InstanceCgroup>,
}

enum Origin {
    Spawned(tokio::process::Child),
    Forked(Forked),
}

impl Stem {
    /// Starts a stem of the runtime `launch` runs, in `dir`, with only the base environment.
    pub fn spawn(launch: &Launch, dir: &std::path::Path) -> std::io::Result<Stem> {
        let (host, guest) = std::os::unix::net::UnixStream::pair()?;
        let child = tokio::process::Command::new(&launch.program)
            .args(&launch.args)
            .env_clear()
            .envs(BASE_ENV.iter().copied())
            .env("NIMBUS_STEM", "1")
            .current_dir(dir)
            .stdin(Stdio::from(OwnedFd::from(guest)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Stem {
            origin: Some(Origin::Spawned(child)),
            host: Some(host),
            warden: None,
            cgroup: None,
        })
    }

    /// Starts a stem in a jail of `isolation` with `network`; it has no code and runs as
    /// root inside the jail until it is specialized.
    pub fn spawn_jailed(
        launch: &Launch,
        isolation: &Isolation,
        network: model::Network,
    ) -> std::io::Result<Stem> {
        let cgroup = isolation.stem_cgroup()?;
        let wrapped = isolation.wrap_stem(launch, network, cgroup.as_ref());
        let (host, guest) = std::os::unix::net::UnixStream::pair()?;
        let (warden, warden_guest) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::SEQPACKET,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        let child = tokio::process::Command::new(&wrapped.program)
            .args(&wrapped.args)
            .env_clear()
            .envs(BASE_ENV.iter().copied())
            .env("NIMBUS_STEM", "1")
            .current_dir("/")
            .stdin(Stdio::from(warden_guest))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        // The helper passes the runtime's channel on as the runtime's stdin.
        crate::zygote::send_with_fds(&warden, b"channel", &[guest.as_fd()])?;
        Ok(Stem {
            origin: Some(Origin::Spawned(child)),
            host: Some(host),
            warden: Some(warden),
            cgroup,
        })
    }

    /// Asks the fork server for a stem.
    pub fn fork(zygote: &Zygote) -> std::io::Result<Stem> {
        let (host, forked) = zygote.fork()?;
        Ok(Stem {
            origin: Some(Origin::Forked(forked)),
            host: Some(host),
            warden: None,
            cgroup: None,
        })
    }

    /// Whether the process is still there to be specialized.
    pub fn alive(&mut self) -> bool {
        match &mut self.origin {
            Some(Origin::Spawned(child)) => matches!(child.try_wait(), Ok(None)),
            Some(Origin::Forked(forked)) => matches!(
                forked.status.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            ),
            None => false,
        }
    }

    /// The process as an instance runs it (for a forked stem, once the zygote said its
    /// pid), its channel, and a jailed stem's warden.
    #[allow(clippy::type_complexity)]
    async fn launched(
        mut self,
    ) -> Result<
        (
            Launched,
            std::os::unix::net::UnixStream,
            Option<(OwnedFd, Option<InstanceCgroup>)>,
        ),
        StartError,
    > {
        let host = self.host.take().expect("a stem owns its channel");
        let launched = match self.origin.take().expect("a stem owns its process") {
            Origin::Spawned(child) => Launched::spawned(child),
            Origin::Forked(forked) => Launched::forked(forked).await?,
        };
        let warden = self.warden.take().map(|w| (w, self.cgroup.take()));
        Ok((launched, host, warden))
    }
}

impl Drop for Stem {
    fn drop(&mut self) {
        match &mut self.origin {
            Some(Origin::Spawned(child)) => {
                if let Some(pid) = child.id() {
                    kill_group(pid as i32);
                }
            }
            Some(Origin::Forked(forked)) => {
                if let Ok(pid) = forked.pid.try_recv() {
                    kill_group(pid);
                }
            }
            None => {}
        }
    }
}

/// Sends a jailed stem's helper its specialization and waits (bounded) for its answer.
async fn tell_warden(
    warden: OwnedFd,
    spec: &crate::jail::Specialization,
) -> Result<(), StartError> {
    let message = serde_json::to_vec(spec).expect("a specialization serializes");
    let answer = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        rustix::net::sockopt::set_socket_timeout(
            &warden,
            rustix::net::sockopt::Timeout::Recv,
            Some(Duration::from_millis(limits::INSTANCE_START_MS_MAX)),
        )?;
        // A signal for the server (SIGCHLD of any instance) interrupts these; retry.
        loop {
            match rustix::net::send(&warden, &message, rustix::net::SendFlags::NOSIGNAL) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other.map(drop)?,
            };
        }
        let mut buf = [0u8; 1024];
        let n = loop {
            match rustix::net::recv(&warden, &mut buf[..], rustix::net::RecvFlags::empty()) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other?.0,
            }
        };
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .await
    .map_err(platform)?
    .map_err(platform)?;
    if answer == "ok" {
        Ok(())
    } else {
        Err(platform(format!(
            "specializing a jailed stem failed: {answer}"
        )))
    }
}

/// A started process as an instance sees it: its pid, its output pipes, and how it learns
/// of its exit (a spawned process is the server's child; a forked one is the zygote's).
struct Launched {
    pid: i32,
    stdout: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    stderr: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    exit: std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>,
}

impl Launched {
    fn spawned(mut child: tokio::process::Child) -> Launched {
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        Launched {
            pid,
            stdout: Box::new(stdout),
            stderr: Box::new(stderr),
            exit: Box::pin(async move {
                match child.wait().await {
                    Ok(s) => describe_exit(s),
                    Err(e) => format!("Runtime exited; its status is unknown: {e}"),
                }
            }),
        }
    }

    async fn forked(forked: Forked) -> Result<Launched, StartError> {
        let limit = Duration::from_millis(limits::INSTANCE_START_MS_MAX);
        let pid = match tokio::time::timeout(limit, forked.pid).await {
            Ok(Ok(pid)) => pid,
            _ => return Err(platform("the Python fork server did not fork an instance")),
        };
        let pipe = |fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(platform);
        let stdout = pipe(forked.stdout)?;
        let stderr = pipe(forked.stderr)?;
        let status = forked.status;
        Ok(Launched {
            pid,
            stdout: Box::new(stdout),
            stderr: Box::new(stderr),
            exit: Box::pin(async move {
                use std::os::unix::process::ExitStatusExt;
                match status.await {
                    Ok(raw) => describe_exit(std::process::ExitStatus::from_raw(raw)),
                    Err(_) => {
                        crate::zygote::orphan_exit(pid).await;
                        "Runtime exited; its status is unknown (its fork server had exited)".into()
                    }
                }
            }),
        })
    }
}

/// The environment every instance starts from; the function's own variables are added.
pub(crate) const BASE_ENV: [(&str, &str); 3] = [
    ("PATH", "/usr/local/bin:/usr/bin:/bin"),
    ("HOME", "/tmp"),
    ("LANG", "C.UTF-8"),
];

impl Instance {
    /// Starts an instance of `config`: from `stem` when one is given (a prewarmed runtime
    /// process), else by spawning the runtime.
    pub async fn start(
        id: u64,
        launch: Launch,
        config: &InstanceConfig,
        stem: Option<Stem>,
        isolation: Option<&Isolation>,
    ) -> Result<Instance, StartError> {
        let started = Instant::now();
        let serves_http = config.kind == FunctionType::Http;
        let port = if serves_http {
            Some(free_port().map_err(platform)?)
        } else {
            None
        };
        if let Some(stem) = stem {
            let (launched, host, warden) = stem.launched().await?;
            let mut instance = Instance::attach(id, launched, Some(host), port)?;
            instance.memory_mb = config.memory_mb;
            let mut code_dir = config.code_dir.clone();
            let mut uid = None;
            let mut opt_seen = config.opt_dir.clone();
            if let Some((warden, cgroup)) = warden {
                // A jailed stem: its cgroups get the function's limits and its helper
                // mounts the code, before the runtime loads any of it.
                let iso = isolation.ok_or_else(|| platform("a jailed stem without a sandbox"))?;
                if let Some(cgroup) = &cgroup {
                    cgroup
                        .limit(&crate::isolation::limits_of(config))
                        .map_err(platform)?;
                }
                let (spec, function_uid) = iso
                    .specialization(config)
                    .ok_or_else(|| platform("the code is not in the code cache"))?;
                tell_warden(warden, &spec).await?;
                instance.cgroup = cgroup;
                code_dir = PathBuf::from(crate::jail::TASK_ROOT);
                // Jailed, the layers are at /opt; else where they are on the host.
                opt_seen = opt_seen.map(|_| PathBuf::from(crate::jail::OPT_ROOT));
                uid = function_uid;
            }
            let env: Vec<(String, String)> =
                instance_env(id, config, &code_dir, opt_seen.as_deref(), port);
            let meta = serde_json::to_vec(&serde_json::json!({
                "env": env,
                "cwd": code_dir,
                "uid": uid,
                "gid": uid,
            }))
            .expect("specialization serializes");
            instance.send(Kind::Specialize, 0, &meta, b"").await;
            instance.finish_start(started).await?;
            return Ok(instance);
        }
        let channel = config.runtime.has_shim();
        let (host, guest) = if channel {
            let (h, g) = std::os::unix::net::UnixStream::pair().map_err(platform)?;
            (Some(h), Some(OwnedFd::from(g)))
        } else {
            (None, None)
        };
        // Sandboxed, the helper starts the runtime in its jail, where the code is at
        // /var/task, and puts it in cgroups made here.
        let jail = isolation.filter(|i| i.jails());
        let cgroup = match jail {
            Some(iso) => iso.cgroup(config).map_err(platform)?,
            None => None,
        };
        // A `provided` runtime's endpoint, open before the process can look for it; its
        // bootstrap is checked first, so a missing one is the function's error, not a
        // failed spawn.
        let api = if config.runtime == Runtime::Provided {
            crate::executor::runtime_api::check_bootstrap(config, &launch.program)?;
            // Without root, every function runs as the server's uid: none to tell them by.
            let uid = jail.and_then(|iso| iso.uid_of(&config.function));
            let arn = crate::executor::runtime_api::default_arn(config);
            Some(RuntimeApi::bind(uid, arn).map_err(platform)?)
        } else {
            None
        };
        let (launch, code_dir_seen, opt_seen) = match jail {
            Some(iso) => (
                iso.wrap(&launch, config, cgroup.as_ref()),
                PathBuf::from(crate::jail::TASK_ROOT),
                config
                    .opt_dir
                    .as_ref()
                    .map(|_| PathBuf::from(crate::jail::OPT_ROOT)),
            ),
            None => (launch, config.code_dir.clone(), config.opt_dir.clone()),
        };
        let mut cmd = tokio::process::Command::new(&launch.program);
        let port_text = port.map(|p| p.to_string()).unwrap_or_default();
        cmd.args(launch.args.iter().map(|a| {
            // `$PORT` in a custom runtime's command becomes the port it must serve on.
            match a.to_str() {
                Some(s) if s.contains("$PORT") => s.replace("$PORT", &port_text).into(),
                _ => a.clone(),
            }
        }))
        .env_clear()
        .envs(instance_env(
            id,
            config,
            &code_dir_seen,
            opt_seen.as_deref(),
            port,
        ))
        .envs(
            api.as_ref()
                .map_or_else(Vec::new, |api| api.env(&code_dir_seen)),
        )
        .current_dir(if jail.is_some() {
            std::path::Path::new("/")
        } else {
            &config.code_dir
        })
        .stdin(match guest {
            Some(fd) => Stdio::from(fd),
            None => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so killing the instance kills everything it forked.
        .process_group(0)
        .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| {
            StartError::Platform(SandboxError::Spawn(format!(
                "{}: {e}",
                launch.program.display()
            )))
        })?;
        // The command holds the instance's end of the channel; with it closed here, a
        // runtime that dies before it is ready is seen at once, not at the start timeout.
        drop(cmd);
        let mut instance = Instance::attach(id, Launched::spawned(child), host, port)?;
        instance.api = api;
        if config.conventions == model::Conventions::Fc && config.runtime == Runtime::Custom {
            instance.fc = port.map(|port| crate::web::FcClient::new(config, port));
        }
        instance.cgroup = cgroup;
        instance.memory_mb = config.memory_mb;
        instance.finish_start(started).await?;
        Ok(instance)
    }

    /// Wraps a running process: output pumps, exit watcher, channel halves.
    fn attach(
        id: u64,
        launched: Launched,
        host: Option<std::os::unix::net::UnixStream>,
        port: Option<u16>,
    ) -> Result<Instance, StartError> {
        let Launched {
            pid,
            stdout,
            stderr,
            exit,
        } = launched;
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
            stderr_tail: Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)),
        });
        let (exit_tx, exit_rx) = watch::channel::<Option<String>>(None);
        tokio::spawn(pump_output(stdout, "stdout", shared.clone()));
        let stderr_done = tokio::spawn(pump_output(stderr, "stderr", shared.clone()));
        tokio::spawn(async move {
            let _ = exit_tx.send(Some(exit.await));
        });

        let (reader, writer) = match host {
            Some(host) => {
                host.set_nonblocking(true).map_err(platform)?;
                let host = tokio::net::UnixStream::from_std(host).map_err(platform)?;
                let (r, w) = host.into_split();
                (Some(FrameReader::new(r)), Some(tokio::sync::Mutex::new(w)))
            }
            None => (None, None),
        };
        Ok(Instance {
            id,
            pid,
            init: Duration::ZERO,
            code_ms: 0.0,
            port,
            writer,
            shared: shared.clone(),
            exit: exit_rx,
            stderr_done: Mutex::new(Some(stderr_done)),
            next_call: AtomicU32::new(1),
            reader: Mutex::new(reader),
            cgroup: None,
            freezer: Arc::new(Freezer::new(pid, None)),
            memory_mb: 0,
            api: None,
            fc: None,
        })
    }

    /// Waits until the instance is ready (its ready frame, or its port), then hands the
    /// channel to the reader task.
    async fn finish_start(&mut self, started: Instant) -> Result<(), StartError> {
        // Its cgroups are known now (a stem's came with it, a spawned instance's were made
        // for it), and with them whether it freezes through a cgroup or by signal.
        let cgroup_freezer = self.cgroup.as_ref().and_then(InstanceCgroup::freezer);
        self.freezer = Arc::new(Freezer::new(self.pid, cgroup_freezer));
        let reader = self.reader.lock().unwrap().take();
        match reader {
            Some(mut reader) => {
                self.code_ms = self.await_ready_frame(&mut reader).await?;
                let exit = self.exit.clone();
                let stderr_done = self.stderr_done.lock().unwrap().take();
                tokio::spawn(read_frames(reader, self.shared.clone(), exit, stderr_done));
            }
            None if self.api.is_some() => self.await_initialized().await?,
            None => self.await_port().await?,
        }
        self.init = started.elapsed();
        Ok(())
    }

    /// Waits for the shim's first frame: ready, or the reason it could not load the code.
    async fn await_ready_frame(
        &self,
        reader: &mut FrameReader<tokio::net::unix::OwnedReadHalf>,
    ) -> Result<f64, StartError> {
        let first = tokio::time::timeout(
            Duration::from_millis(limits::INSTANCE_START_MS_MAX),
            reader.next(),
        )
        .await;
        let why = match first {
            Ok(Ok(Some(Frame {
                kind: Kind::Ready,
                meta,
                ..
            }))) => {
                let init_ms = serde_json::from_slice::<serde_json::Value>(&meta)
                    .ok()
                    .and_then(|m| m["init_ms"].as_f64())
                    .unwrap_or(0.0);
                return Ok(init_ms);
            }
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
            Ok(Ok(Some(_))) => "Runtime sent an unexpected frame before it was ready".to_string(),
            Ok(Ok(None)) => String::new(),
            Ok(Err(e)) => format!("Runtime broke the instance protocol: {e}"),
        };
        self.kill();
        Err(StartError::Function(FunctionError::new(
            "Runtime.ExitError",
            self.crash_report(why).await,
        )))
    }

    /// Waits until a `provided` runtime asks for its first event (the end of its init),
    /// reports an init error, exits, or runs out of start-up time.
    async fn await_initialized(&self) -> Result<(), StartError> {
        let api = self
            .api
            .as_ref()
            .expect("a provided instance has its endpoint");
        let mut exit = self.exit.clone();
        let limit = Duration::from_millis(limits::INSTANCE_START_MS_MAX);
        let waited = tokio::time::timeout(limit, async {
            tokio::select! {
                init = api.initialized() => Some(init),
                _ = exit.wait_for(|s| s.is_some()) => None,
            }
        })
        .await;
        let error = match waited {
            Ok(Some(Ok(()))) => return Ok(()),
            Ok(Some(Err(e))) => e,
            Ok(None) => FunctionError::new(
                "Runtime.ExitError",
                self.crash_report("Runtime exited before it asked for an event".into())
                    .await,
            ),
            Err(_) => FunctionError::new(
                "Runtime.InitTimeout",
                format!(
                    "the runtime did not ask for an event (GET /2018-06-01/runtime/invocation/next) within {} ms",
                    limits::INSTANCE_START_MS_MAX
                ),
            ),
        };
        self.kill();
        Err(StartError::Function(error))
    }

    /// Waits until a custom runtime accepts connections on its port (bounded).
    async fn await_port(&self) -> Result<(), StartError> {
        let port = self.port.expect("custom runtimes serve HTTP");
        let deadline = Instant::now() + Duration::from_millis(limits::HTTP_READY_MS_MAX);
        loop {
            if self.exit.borrow().is_some() {
                let report = self
                    .crash_report("Runtime exited before it accepted connections".into())
                    .await;
                return Err(StartError::Function(FunctionError::new(
                    "Runtime.ExitError",
                    report,
                )));
            }
            if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                drop(s);
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(StartError::Function(FunctionError::new(
                    "Runtime.InitTimeout",
                    format!(
                        "the runtime did not accept connections on $PORT ({port}) within {} ms",
                        limits::HTTP_READY_MS_MAX
                    ),
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Acquire) || self.exit.borrow().is_some()
    }

    fn next_id(&self) -> u32 {
        // Ids wrap after four billion calls; 0 is reserved for the instance itself.
        self.next_call.fetch_add(1, Ordering::Relaxed).max(1)
    }

    async fn send(&self, kind: Kind, id: u32, meta: &[u8], body: &[u8]) {
        let Some(writer) = &self.writer else { return };
        let header = protocol::header(kind, id, meta.len(), body.len());
        let mut w = writer.lock().await;
        // A write error means the instance is gone; the reader task reports why.
        let _ = async {
            w.write_all(&header).await?;
            w.write_all(meta).await?;
            w.write_all(body).await
        }
        .await;
    }

    /// Runs one invocation. The instance stays usable after `Result` and `Error`; after
    /// `Crashed` it is dead, and after `Timeout` the caller must kill it.
    pub async fn call(&self, meta: &[u8], event: &[u8], timeout: Duration) -> (Reply, Logs) {
        if let Some(api) = &self.api {
            return self.call_runtime_api(api, meta, event, timeout).await;
        }
        if let Some(fc) = &self.fc {
            return self.call_fc(fc, meta, event, timeout).await;
        }
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.register(id, Waiter::Once(tx));
        self.exchange(Kind::Invoke, id, meta, event, timeout, rx)
            .await
    }

    /// A call of a `provided` instance: its event goes out on the runtime's `/next`, its
    /// answer comes back on `/response` or `/error`; the process dying first is a crash.
    async fn call_runtime_api(
        &self,
        api: &RuntimeApi,
        meta: &[u8],
        event: &[u8],
        timeout: Duration,
    ) -> (Reply, Logs) {
        // Output is the call's while it is the only one in flight (it always is).
        let id = self.begin_external();
        let mut exit = self.exit.clone();
        let answered = tokio::time::timeout(timeout, async {
            tokio::select! {
                reply = api.call(meta, event) => Some(reply),
                _ = exit.wait_for(|s| s.is_some()) => None,
            }
        })
        .await;
        let reply = match answered {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                self.shared.dead.store(true, Ordering::Release);
                Reply::Crashed(
                    self.crash_report("Runtime exited during the call".into())
                        .await,
                )
            }
            Err(_) => Reply::Timeout,
        };
        (reply, self.end_external(id))
    }

    /// An event call of a Function Compute custom runtime: `POST /invoke` to its server.
    async fn call_fc(
        &self,
        fc: &crate::web::FcClient,
        meta: &[u8],
        event: &[u8],
        timeout: Duration,
    ) -> (Reply, Logs) {
        let meta: serde_json::Value = serde_json::from_slice(meta).unwrap_or_default();
        let request_id = meta["request_id"].as_str().unwrap_or_default();
        let traceparent = meta["traceparent"].as_str();
        let id = self.begin_external();
        let mut exit = self.exit.clone();
        let answered = tokio::time::timeout(timeout, async {
            let event = bytes::Bytes::copy_from_slice(event);
            tokio::select! {
                answer = fc.send("POST", "/invoke", request_id, traceparent, event) => Some(answer),
                _ = exit.wait_for(|s| s.is_some()) => None,
            }
        })
        .await;
        let reply = match answered {
            Ok(Some(Ok(Ok(body)))) => {
                let json = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
                Reply::Result {
                    content_type: bytes::Bytes::from_static(if json { b"json" } else { b"bytes" }),
                    body,
                }
            }
            Ok(Some(Ok(Err(e)))) => Reply::Error(e),
            Ok(Some(Err(why))) if !self.is_dead() => {
                // Whatever state its server is in, the instance is not trusted again.
                self.kill();
                Reply::Crashed(format!("the function's server did not answer: {why}"))
            }
            Ok(_) => {
                self.shared.dead.store(true, Ordering::Release);
                Reply::Crashed(
                    self.crash_report("Runtime exited during the call".into())
                        .await,
                )
            }
            Err(_) => Reply::Timeout,
        };
        (reply, self.end_external(id))
    }

    /// Sends a web request; answers with its head, after which the body arrives on the
    /// returned receiver.
    pub async fn request(
        &self,
        meta: &[u8],
        body: &[u8],
        timeout: Duration,
    ) -> (Reply, Logs, mpsc::Receiver<StreamEvent>) {
        let id = self.next_id();
        let (head_tx, head_rx) = oneshot::channel();
        let (body_tx, body_rx) = mpsc::channel(STREAM_CHUNKS_BUFFERED);
        self.register(
            id,
            Waiter::Stream {
                head: Some(head_tx),
                body: body_tx,
            },
        );
        let (reply, logs) = self
            .exchange(Kind::Request, id, meta, body, timeout, head_rx)
            .await;
        (reply, logs, body_rx)
    }

    fn register(&self, id: u32, waiter: Waiter) {
        self.shared.pending.lock().unwrap().insert(
            id,
            Pending {
                waiter,
                logs: Logs::default(),
            },
        );
    }

    async fn exchange(
        &self,
        kind: Kind,
        id: u32,
        meta: &[u8],
        body: &[u8],
        timeout: Duration,
        rx: oneshot::Receiver<(Reply, Logs)>,
    ) -> (Reply, Logs) {
        let outcome = tokio::time::timeout(timeout, async {
            self.send(kind, id, meta, body).await;
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

    /// Runs a lifecycle hook (`Kind::Initialize` or `Kind::PreStop`) named `handler`;
    /// `Ok` carries its duration in milliseconds.
    pub async fn hook(
        &self,
        kind: Kind,
        handler: &str,
        timeout: Duration,
    ) -> Result<f64, FunctionError> {
        if let Some(fc) = &self.fc {
            return fc.hook(kind == Kind::Initialize, self.id, timeout).await;
        }
        if self.writer.is_none() {
            return Ok(0.0);
        }
        let meta = serde_json::to_vec(&serde_json::json!({
            "handler": handler,
            "request_id": format!("{}-{}", if kind == Kind::Initialize { "init" } else { "pre-stop" }, self.id),
            "deadline_ms": crate::logs::now_ms() + timeout.as_millis() as i64,
        }))
        .expect("meta serializes");
        let started = Instant::now();
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.register(id, Waiter::Once(tx));
        let (reply, logs) = self.exchange(kind, id, &meta, b"", timeout, rx).await;
        for line in &logs.lines {
            tracing::debug!(instance = self.id, stream = %line.stream, message = %line.message, "hook output");
        }
        match reply {
            Reply::Result { .. } => Ok(started.elapsed().as_secs_f64() * 1000.0),
            Reply::Error(e) => Err(e),
            Reply::Timeout => Err(FunctionError::new(
                "Timeout",
                format!(
                    "`{handler}` did not finish within {} ms",
                    timeout.as_millis()
                ),
            )),
            Reply::Crashed(report) => Err(FunctionError::new("Runtime.ExitError", report)),
            Reply::Head(_) => Err(FunctionError::new(
                "Runtime.InvalidResponse",
                "a hook answered with a web response",
            )),
        }
    }

    /// Waits until every frame the instance sent so far has been read (bounded): log lines
    /// written during an HTTP call travel on the channel, its response on TCP, and this
    /// puts them back in order.
    pub async fn barrier(&self) {
        if self.writer.is_none() {
            return;
        }
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.register(id, Waiter::Barrier(tx));
        let _ = self
            .exchange(Kind::Ping, id, b"", b"", Duration::from_secs(1), rx)
            .await;
    }

    /// Starts attributing output to a call that happens over HTTP (custom runtimes).
    pub fn begin_external(&self) -> u32 {
        let id = self.next_id();
        self.register(id, Waiter::External);
        id
    }

    /// Ends an external call and returns its logs.
    pub fn end_external(&self, id: u32) -> Logs {
        self.shared
            .pending
            .lock()
            .unwrap()
            .remove(&id)
            .map(|p| p.logs)
            .unwrap_or_default()
    }

    /// Whether the kernel stopped a process of this instance for exceeding its memory.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.as_ref().is_some_and(InstanceCgroup::oom_killed)
    }

    /// Kills the whole process group now, and thaws it if it was frozen: a process frozen
    /// by its cgroup acts on SIGKILL only once thawed, and runs no code of its own between
    /// the two.
    pub fn kill(&self) {
        self.shared.dead.store(true, Ordering::Release);
        kill_group(self.pid);
        self.freezer.thaw();
    }

    /// Why the instance died: exit status or signal, and the tail of its stderr.
    pub async fn crash_report(&self, why: String) -> String {
        let stderr_done = self.stderr_done.lock().unwrap().take();
        exit_report(self.exit.clone(), stderr_done, &self.shared, why).await
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

/// A loopback port that was free a moment ago. Another process could take it before the
/// instance binds it; the instance then fails to start and the next call retries.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The environment of an instance: the function's own variables plus the documented
/// runtime ones. Nothing of the server's environment leaks in.
fn instance_env(
    id: u64,
    c: &InstanceConfig,
    code_dir: &std::path::Path,
    opt_dir: Option<&std::path::Path>,
    port: Option<u16>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> =
        c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let code_dir = code_dir.display().to_string();
    env.extend(BASE_ENV.iter().map(|(k, v)| match (*k, opt_dir) {
        // Layers' programs come first on PATH, as on Lambda.
        ("PATH", Some(opt)) => (k.to_string(), format!("{}/bin:{v}", opt.display())),
        _ => (k.to_string(), v.to_string()),
    }));
    if let Some(opt) = opt_dir {
        env.push(("NIMBUS_OPT_DIR".into(), opt.display().to_string()));
        env.push(("LD_LIBRARY_PATH".into(), format!("{}/lib", opt.display())));
    }
    env.extend([
        ("NIMBUS_FUNCTION_NAME".into(), c.function.clone()),
        ("NIMBUS_HANDLER".into(), c.handler.clone()),
        ("NIMBUS_TYPE".into(), c.kind.as_str().into()),
        ("NIMBUS_CONVENTIONS".into(), c.conventions.as_str().into()),
        ("NIMBUS_CODE_DIR".into(), code_dir.clone()),
        ("NIMBUS_INSTANCE_ID".into(), format!("{}-{id}", c.function)),
        ("NIMBUS_MEMORY_MB".into(), c.memory_mb.to_string()),
        ("NIMBUS_TIMEOUT_MS".into(), c.timeout_ms.to_string()),
        (
            "NIMBUS_CONCURRENCY".into(),
            c.concurrency.max(1).to_string(),
        ),
        ("AWS_LAMBDA_FUNCTION_NAME".into(), c.function.clone()),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".into(),
            c.memory_mb.to_string(),
        ),
        ("AWS_LAMBDA_FUNCTION_VERSION".into(), c.version.clone()),
        ("NIMBUS_FUNCTION_VERSION".into(), c.version.clone()),
        ("LAMBDA_TASK_ROOT".into(), code_dir),
        ("_HANDLER".into(), c.handler.clone()),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME".into(),
            format!("/aws/lambda/{}", c.function),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME".into(),
            format!("{}/[{}]{}-{id}", utc_date(), c.version, c.function),
        ),
        (
            "AWS_LAMBDA_INITIALIZATION_TYPE".into(),
            if c.policy.min_instances > 0 {
                "provisioned-concurrency"
            } else {
                "on-demand"
            }
            .into(),
        ),
    ]);
    if let Some(port) = port {
        env.push(("PORT".into(), port.to_string()));
        // Function Compute's custom runtimes listen where `FC_SERVER_PORT` says (9000
        // there by default, `FC_CUSTOM_LISTEN_PORT` its setting): here, the instance's port.
        if c.conventions == model::Conventions::Fc {
            env.push(("FC_SERVER_PORT".into(), port.to_string()));
            env.push(("FC_CUSTOM_LISTEN_PORT".into(), port.to_string()));
        }
    }
    env
}

/// Today's date in UTC as `YYYY/MM/DD`, as Lambda's log stream names start.
fn utc_date() -> String {
    utc_date_of(crate::logs::now_ms())
}

/// The UTC date of Unix milliseconds `ms` as `YYYY/MM/DD`.
fn utc_date_of(ms: i64) -> String {
    let (year, month, day) = model::civil::from_days(ms.div_euclid(86_400_000));
    format!("{year:04}/{month:02}/{day:02}")
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
    stderr_done: Option<tokio::task::JoinHandle<()>>,
) {
    let why = loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break String::new(),
            Err(e) => break format!("Runtime broke the instance protocol: {e}"),
        };
        match frame.kind {
            Kind::Log => {
                let stream = String::from_utf8_lossy(&frame.meta);
                shared.attribute(frame.id, &stream, &frame.body);
            }
            Kind::Result | Kind::Error | Kind::ResponseHead => {
                let reply = match frame.kind {
                    Kind::Result => Reply::Result {
                        content_type: frame.meta,
                        body: frame.body,
                    },
                    Kind::ResponseHead => Reply::Head(frame.meta),
                    _ => Reply::Error(FunctionError::from_body(&frame.body)),
                };
                answer(&shared, frame.id, reply).await;
            }
            Kind::ResponseChunk => {
                let body = stream_of(&shared, frame.id);
                if let Some(body) = body {
                    // Waits while the client is slow: backpressure reaches the instance.
                    let _ = body.send(StreamEvent::Chunk(frame.body)).await;
                }
            }
            Kind::ResponseEnd => {
                let done = shared.pending.lock().unwrap().remove(&frame.id);
                if let Some(Pending {
                    waiter: Waiter::Stream { body, .. },
                    logs,
                }) = done
                {
                    let _ = body.send(StreamEvent::End(logs)).await;
                }
            }
            _ => break format!("Runtime sent an unexpected {:?} frame", frame.kind),
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
        match p.waiter {
            Waiter::Once(tx) | Waiter::Barrier(tx) => {
                let _ = tx.send((Reply::Crashed(report.clone()), p.logs));
            }
            Waiter::Stream { head: Some(tx), .. } => {
                let _ = tx.send((Reply::Crashed(report.clone()), p.logs));
            }
            Waiter::Stream { head: None, body } => {
                let _ = body.send(StreamEvent::Abort(report.clone())).await;
            }
            Waiter::External => {}
        }
    }
}

/// Delivers the first answer of a call. An error after a streamed head cuts the stream.
async fn answer(shared: &Shared, id: u32, reply: Reply) {
    let abort = {
        let mut pending = shared.pending.lock().unwrap();
        match pending.get_mut(&id) {
            Some(Pending {
                waiter: Waiter::Stream { head, body },
                logs,
            }) => match head.take() {
                Some(tx) => {
                    let logs = if matches!(reply, Reply::Head(_)) {
                        Logs::default()
                    } else {
                        std::mem::take(logs)
                    };
                    let is_head = matches!(reply, Reply::Head(_));
                    let _ = tx.send((reply, logs));
                    if !is_head {
                        pending.remove(&id);
                    }
                    None
                }
                None => {
                    let body = body.clone();
                    pending.remove(&id);
                    let why = match reply {
                        Reply::Error(e) => format!("{}: {}", e.error_type, e.error_message),
                        _ => "the runtime answered twice".into(),
                    };
                    Some((body, why))
                }
            },
            Some(Pending {
                waiter: Waiter::Once(_) | Waiter::Barrier(_),
                ..
            }) => {
                if let Some(Pending {
                    waiter: Waiter::Once(tx) | Waiter::Barrier(tx),
                    logs,
                }) = pending.remove(&id)
                {
                    let _ = tx.send((reply, logs));
                }
                None
            }
            _ => None,
        }
    };
    if let Some((body, why)) = abort {
        let _ = body.send(StreamEvent::Abort(why)).await;
    }
}

fn stream_of(shared: &Shared, id: u32) -> Option<mpsc::Sender<StreamEvent>> {
    match shared.pending.lock().unwrap().get(&id) {
        Some(Pending {
            waiter: Waiter::Stream { body, .. },
            ..
        }) => Some(body.clone()),
        _ => None,
    }
}

async fn exit_report(
    mut exit_rx: watch::Receiver<Option<String>>,
    stderr_done: Option<tokio::task::JoinHandle<()>>,
    shared: &Shared,
    why: String,
) -> String {
    let status = tokio::time::timeout(EXIT_REPORT_WAIT, exit_rx.wait_for(|s| s.is_some()))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|s| s.clone()));
    // Let the last stderr lines (a traceback, a fatal error) arrive, but do not wait on a
    // grandchild that keeps the pipe open.
    if let Some(done) = stderr_done {
        let _ = tokio::time::timeout(EXIT_REPORT_WAIT, done).await;
    }
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

/// Resolves a custom runtime's program: a path with a `/` is relative to the code; a bare
/// name is looked up on the instance's PATH.
pub(crate) fn resolve_program(code_dir: &std::path::Path, program: &str) -> PathBuf {
    if program.contains('/') {
        code_dir.join(program)
    } else {
        ["/usr/local/bin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(program))
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from(program))
    }
}

#[cfg(test)]
mod date_tests {
    #[test]
    fn dates_are_the_calendars() {
        for (ms, date) in [
            (0, "1970/01/01"),
            (1_796_559_556_416, "2026-12-06"),
            (951_782_400_000, "2000-02-29"),
            (4_107_542_400_000, "2100-03-01"),
        ] {
            assert_eq!(super::utc_date_of(ms), date.replace('-', "/"));
        }
    }
}
