//! The process executor: each instance is a runtime process (an interpreter running the
//! shim, or a custom runtime), started from a prewarmed stem when one is ready, forked by
//! the Python fork server when the stems ran out, or spawned; in a jail when the node has
//! isolation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model::{Network, Runtime};
use tokio::sync::mpsc;

use super::{BoxFuture, Executor, Reply, Running, StartError, Started, Stopper, StreamEvent};
use crate::instance::{Instance, Stem, kill_group};
use crate::isolation::Isolation;
use crate::protocol::Kind;
use crate::zygote::Zygote;
use crate::{FunctionError, InstanceConfig, Logs, PoolConfig, Runtimes, SandboxError};

/// How often a dying fork server is restarted at most; in between, instances are spawned.
pub(crate) const ZYGOTE_RESTART_INTERVAL: Duration = Duration::from_secs(1);

/// Starts instances as runtime processes.
pub(crate) struct ProcessExecutor {
    runtimes: Runtimes,
    /// Prewarmed processes kept per runtime and network mode.
    prewarm: usize,
    /// Whether Python instances may be forked from the fork server.
    fork_server: bool,
    isolation: Option<Arc<Isolation>>,
    /// Set at shutdown: no more stems are made.
    closed: AtomicBool,
    /// Prewarmed runtime processes, per runtime, taken by cold starts and refilled.
    stems: Mutex<HashMap<(Runtime, Network), Vec<Stem>>>,
    /// The Python fork server and when it was started; replaced when it dies, at most once
    /// per `ZYGOTE_RESTART_INTERVAL`.
    zygote: Mutex<Option<(Zygote, Instant)>>,
}

impl ProcessExecutor {
    /// An executor with the node's interpreters and protections, which starts its
    /// prewarmed processes at once.
    pub fn new(runtimes: Runtimes, config: &PoolConfig) -> ProcessExecutor {
        let executor = ProcessExecutor {
            runtimes,
            prewarm: config.prewarm,
            fork_server: config.fork_server,
            isolation: config.isolation.clone(),
            closed: AtomicBool::new(false),
            stems: Mutex::new(HashMap::new()),
            zygote: Mutex::new(None),
        };
        for runtime in [Runtime::Python3, Runtime::Nodejs] {
            executor.refill_stems(runtime, Network::Outbound);
        }
        executor
    }

    /// A stem forked by the Python fork server, which is started or restarted as needed;
    /// none when the fork server is off or cannot be had right now.
    fn fork_stem(&self) -> Option<Stem> {
        if !self.fork_server {
            return None;
        }
        let mut zygote = self.zygote.lock().unwrap();
        let usable = zygote.as_ref().is_some_and(|(z, _)| z.alive());
        if !usable {
            if zygote
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() < ZYGOTE_RESTART_INTERVAL)
            {
                return None;
            }
            let launch = self.runtimes.interpreter_launch(Runtime::Python3)?;
            match Zygote::spawn(&launch) {
                Ok(z) => *zygote = Some((z, Instant::now())),
                Err(e) => {
                    tracing::warn!(error = %e, "starting the Python fork server failed");
                    return None;
                }
            }
        }
        let (z, _) = zygote.as_ref()?;
        match Stem::fork(z) {
            Ok(stem) => Some(stem),
            Err(e) => {
                tracing::warn!(error = %e, "the Python fork server did not take a request");
                None
            }
        }
    }

    /// Takes a prewarmed process of `runtime`, if one is alive, and starts its replacement.
    /// With none left, a Python instance is forked on the spot.
    fn take_stem(&self, runtime: Runtime, network: Network) -> Option<Stem> {
        // Unjailed, every process has the host's network: one kind of stem.
        let network = if self.jailed() {
            network
        } else {
            Network::Outbound
        };
        let stem = {
            let mut stems = self.stems.lock().unwrap();
            let list = stems.entry((runtime, network)).or_default();
            let mut found = None;
            while let Some(mut stem) = list.pop() {
                if stem.alive() {
                    found = Some(stem);
                    break;
                }
            }
            found
        };
        // Stems without network are made once a function asks for one.
        self.refill_stems(runtime, network);
        if stem.is_some() {
            return stem;
        }
        if runtime == Runtime::Python3 && !self.jailed() {
            return self.fork_stem();
        }
        None
    }

    /// Whether instances start in jails (and stems are jailed, without the fork server).
    fn jailed(&self) -> bool {
        self.isolation.as_ref().is_some_and(|i| i.jails())
    }

    /// Starts stems of `runtime` with `network` up to the configured number.
    fn refill_stems(&self, runtime: Runtime, network: Network) {
        let Some(launch) = self.runtimes.interpreter_launch(runtime) else {
            return;
        };
        let mut stems = self.stems.lock().unwrap();
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let list = stems.entry((runtime, network)).or_default();
        while list.len() < self.prewarm {
            let jail = self.isolation.as_deref().filter(|i| i.jails());
            let forked = match (runtime, jail) {
                (Runtime::Python3, None) => self.fork_stem(),
                _ => None,
            };
            if let Some(stem) = forked {
                list.push(stem);
                continue;
            }
            let started = match jail {
                Some(iso) => Stem::spawn_jailed(&launch, iso, network),
                None => Stem::spawn(&launch, std::path::Path::new("/")),
            };
            match started {
                Ok(stem) => list.push(stem),
                Err(e) => {
                    tracing::warn!(%runtime, error = %e, "starting a prewarmed runtime process failed");
                    return;
                }
            }
        }
    }

    /// Starts the process of instance `id` of `config` and waits until its code is loaded.
    async fn start_process(&self, id: u64, config: &InstanceConfig) -> Result<Started, StartError> {
        let launch = self.runtimes.launch(config).ok_or(StartError::Platform(
            SandboxError::RuntimeUnavailable(config.runtime),
        ))?;
        // A prewarmed process of the runtime, when there is one, skips the interpreter start.
        let stem = if !config.runtime.has_shim() {
            None
        } else {
            self.take_stem(config.runtime, config.network)
        };
        let mut from = if stem.is_some() {
            "from a prewarmed process"
        } else {
            "spawned"
        };
        let isolation = self.isolation.as_deref();
        let mut started = Instance::start(id, launch.clone(), config, stem, isolation).await;
        if from != "spawned"
            && let Err(StartError::Platform(e)) = &started
        {
            // The prewarmed process was lost (its fork server died before forking it, its
            // jail could not be specialized); that is no reason to fail the call.
            tracing::warn!(function = %config.function, error = %e, "a prewarmed process could not be used; spawning");
            from = "spawned (a prewarmed process failed)";
            started = Instance::start(id, launch, config, None, isolation).await;
        }
        let instance = started?;
        Ok(Started {
            port: instance.port,
            how: from,
            init: instance.init,
            code_ms: instance.code_ms,
            instance: Box::new(instance),
        })
    }
}

impl Executor for ProcessExecutor {
    fn start<'a>(
        &'a self,
        id: u64,
        config: &'a InstanceConfig,
    ) -> BoxFuture<'a, Result<Started, StartError>> {
        Box::pin(self.start_process(id, config))
    }

    fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        self.stems.lock().unwrap().clear();
        self.zygote.lock().unwrap().take();
    }
}

/// A process instance is what the pool runs calls on; these forward to its own methods.
impl Running for Instance {
    fn is_dead(&self) -> bool {
        Instance::is_dead(self)
    }

    fn oom_killed(&self) -> bool {
        Instance::oom_killed(self)
    }

    fn kill(&self) {
        Instance::kill(self)
    }

    fn freeze(&self) {
        self.freezer.freeze();
    }

    fn thaw(&self) {
        self.freezer.thaw();
    }

    fn stopper(&self) -> Stopper {
        // The whole process group: a runtime's children go with it; a frozen instance is
        // thawed after the kill, so its processes act on it.
        let pid = self.pid;
        let freezer = self.freezer.clone();
        Arc::new(move || {
            kill_group(pid);
            freezer.thaw();
        })
    }

    fn call<'a>(
        &'a self,
        meta: &'a [u8],
        event: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, (Reply, Logs)> {
        Box::pin(Instance::call(self, meta, event, timeout))
    }

    fn request<'a>(
        &'a self,
        meta: &'a [u8],
        body: &'a [u8],
        timeout: Duration,
    ) -> BoxFuture<'a, (Reply, Logs, mpsc::Receiver<StreamEvent>)> {
        Box::pin(Instance::request(self, meta, body, timeout))
    }

    fn hook<'a>(
        &'a self,
        kind: Kind,
        handler: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<f64, FunctionError>> {
        Box::pin(Instance::hook(self, kind, handler, timeout))
    }

    fn barrier(&self) -> BoxFuture<'_, ()> {
        Box::pin(Instance::barrier(self))
    }

    fn begin_external(&self) -> u32 {
        Instance::begin_external(self)
    }

    fn end_external(&self, id: u32) -> Logs {
        Instance::end_external(self, id)
    }

    fn crash_report(&self, why: String) -> BoxFuture<'_, String> {
        Box::pin(Instance::crash_report(self, why))
    }
}
