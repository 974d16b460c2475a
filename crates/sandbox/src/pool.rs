//! The scheduler and warm pool of a node.
//!
//! A call takes a free slot on a warm instance (each takes up to `concurrency` calls at
//! once); otherwise a new instance is started if the function is below `max_instances`
//! and the node has room (idle instances of other functions are stopped to make it);
//! otherwise the call waits, in a bounded queue for at most `queue_timeout_ms`, for a slot
//! to free; otherwise it is throttled. Instances idle longer than `idle_timeout_ms` are
//! stopped down to `min_instances`, which are started ahead of traffic. Every decision
//! happens under one short lock that is never held across an await, and every start and
//! stop is recorded as a lifecycle event with its reason.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use model::limits;
use tokio::sync::{Notify, mpsc};

use crate::instance::{Instance, Reply, StartError, Stem, StreamEvent, kill_group};
use crate::isolation::Isolation;
use crate::logs::now_ms;
use crate::protocol::Kind;
use crate::zygote::Zygote;
use crate::{
    ContentType, FunctionError, InstanceConfig, Invocation, LifecycleEvent, Logs, Outcome,
    Runtimes, SandboxError, Timings,
};
use model::{Network, Runtime};

/// What a handler's context carries besides its request id.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// Which delivery of an asynchronous event this is (1 for a synchronous call).
    pub attempt: u32,
    /// The W3C `traceparent` of the call.
    pub traceparent: Option<String>,
}

impl Default for CallContext {
    fn default() -> Self {
        CallContext {
            attempt: 1,
            traceparent: None,
        }
    }
}

/// Bounds of the node.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Most instances alive on this node at once, busy or idle.
    pub instances_max: usize,
    /// Most memory (sum of the instances' `memory_mb`) on this node at once.
    pub memory_max_mb: u64,
    /// Prewarmed runtime processes ("stem cells") kept per runtime; 0 turns them off.
    pub prewarm: usize,
    /// Whether Python instances are forked from a fork server ("zygote") instead of
    /// spawned; off only to measure what it saves.
    pub fork_server: bool,
    /// The sandbox of every instance; none runs instances as plain processes.
    pub isolation: Option<Arc<Isolation>>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            instances_max: 64,
            memory_max_mb: 16 * 1024,
            prewarm: 2,
            fork_server: true,
            isolation: None,
        }
    }
}

/// A live instance with its share of the node's capacity. When the last reference goes
/// (the pool's and every lease's), the process is killed, the capacity freed, and the stop
/// recorded with the reason last given.
struct Member {
    instance: Instance,
    function: String,
    /// `$LATEST` or the version number the instance runs.
    version: String,
    /// What callers keep with the instance between calls (the gateway's connections),
    /// at most one per concurrent call.
    attachments: Mutex<Vec<Box<dyn Any + Send>>>,
    /// The pre-stop hook and its time limit.
    pre_stop: Option<(String, Duration)>,
    /// Why the instance is being stopped, for its lifecycle event.
    stop_reason: Mutex<Option<String>>,
    _slot: Slot,
}

impl Member {
    fn stopping(&self, reason: impl Into<String>) {
        let mut r = self.stop_reason.lock().unwrap();
        if r.is_none() {
            *r = Some(reason.into());
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // A poisoned lock (a panic elsewhere) must not turn this drop into a second panic,
        // which would abort the server: the data is a reason string either way.
        let reason = self
            .stop_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .unwrap_or_else(|| {
                if self.instance.is_dead() {
                    "its process exited".into()
                } else {
                    "released".into()
                }
            });
        self._slot
            .shared
            .record(&self.function, self.instance.id, "stopped", reason);
    }
}

/// One instance's share of `State::live` and `State::memory_mb`, released on drop.
struct Slot {
    shared: Arc<Shared>,
    instance_id: u64,
    memory_mb: u64,
    /// The epoch of the function pool whose `starting` counts this instance.
    epoch: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            // Not a second panic on a poisoned lock (that would abort the server): this
            // slot's share is given back whatever panicked while holding it.
            let mut state = self
                .shared
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.live -= 1;
            state.memory_mb -= self.memory_mb;
            state.pids.remove(&self.instance_id);
        }
        self.shared.freed.notify_waiters();
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
    /// Which pool of this name this is: a function deleted and deployed again gets a new
    /// pool, and a start or a wait counted in the old one must not be taken off the new.
    epoch: u64,
    /// Hash of the `InstanceConfig` the instances were started with.
    config_key: u64,
    /// The latest configuration, for starting provisioned instances.
    config: InstanceConfig,
    entries: Vec<Entry>,
    /// Instances being started, counted against `max_instances`.
    starting: usize,
    /// Calls waiting for a slot.
    waiting: usize,
    /// The idle gaps between calls, for adaptive keep-alive.
    gaps: crate::keepalive::IdleGaps,
}

impl FunctionPool {
    fn instances(&self) -> usize {
        self.entries.len() + self.starting
    }
}

#[derive(Default)]
struct State {
    functions: HashMap<String, FunctionPool>,
    /// Instances alive (busy, idle, or starting), counted against `instances_max`.
    live: usize,
    memory_mb: u64,
    /// Process ids of every live instance, so shutdown can kill what is busy too.
    pids: HashMap<u64, i32>,
    closed: bool,
    /// The next `FunctionPool::epoch`.
    next_epoch: u64,
}

/// What the pool and every instance's slot share.
struct Shared {
    state: Mutex<State>,
    /// Woken whenever a slot or capacity frees, so waiting calls look again.
    freed: Notify,
    events: Mutex<VecDeque<LifecycleEvent>>,
    /// Where events go besides the in-memory list: the platform's recorder.
    sink: std::sync::OnceLock<EventSink>,
}

/// Receives every lifecycle event as it happens; it must not block.
pub type EventSink = Box<dyn Fn(&LifecycleEvent) + Send + Sync>;

impl Shared {
    fn record(&self, function: &str, instance_id: u64, event: &'static str, reason: String) {
        tracing::debug!(function, instance = instance_id, event, %reason, "lifecycle");
        let e = LifecycleEvent {
            time_ms: now_ms(),
            function: function.to_string(),
            instance_id,
            event,
            reason,
        };
        if let Some(sink) = self.sink.get() {
            sink(&e);
        }
        // Called from drops: a poisoned lock must not make a second panic.
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if events.len() >= limits::EVENTS_MAX {
            events.pop_front();
        }
        events.push_back(e);
    }
}

/// One function's instances on this node, for statistics and metering.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub function: String,
    pub instances: u32,
    /// `min_instances` of its pools (one per version with instances kept).
    pub provisioned: u32,
    pub provisioned_mb: u64,
}

/// What a look at the pool decided for one call.
enum Decision {
    /// A slot on a warm instance.
    Warm(Arc<Member>),
    /// Start an instance: the function's count and the node's capacity are reserved.
    Start(Slot),
    /// An idle instance of another function was stopped for room: look again.
    Evict,
    /// Nothing free: wait for a slot, or give up at the deadline with this error.
    Wait(SandboxError),
}

/// Runs invocations on warm or new instances.
pub struct Pool {
    runtimes: Runtimes,
    config: PoolConfig,
    shared: Arc<Shared>,
    next_instance: AtomicU64,
    /// Prewarmed runtime processes, per runtime, taken by cold starts and refilled.
    stems: Mutex<HashMap<(Runtime, Network), Vec<Stem>>>,
    /// The Python fork server and when it was started; replaced when it dies, at most once
    /// per `ZYGOTE_RESTART_INTERVAL`.
    zygote: Mutex<Option<(Zygote, Instant)>>,
}

/// How often a dying fork server is restarted at most; in between, instances are spawned.
const ZYGOTE_RESTART_INTERVAL: Duration = Duration::from_secs(1);

impl Pool {
    pub fn new(runtimes: Runtimes, config: PoolConfig) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            runtimes,
            config,
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                freed: Notify::new(),
                events: Mutex::new(VecDeque::new()),
                sink: std::sync::OnceLock::new(),
            }),
            next_instance: AtomicU64::new(1),
            stems: Mutex::new(HashMap::new()),
            zygote: Mutex::new(None),
        });
        for runtime in [Runtime::Python3, Runtime::Nodejs] {
            pool.refill_stems(runtime, Network::Outbound);
        }
        tokio::spawn(maintain(Arc::downgrade(&pool)));
        pool
    }

    /// A stem forked by the Python fork server, which is started or restarted as needed;
    /// none when the fork server is off or cannot be had right now.
    fn fork_stem(&self) -> Option<Stem> {
        if !self.config.fork_server {
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
        self.config.isolation.as_ref().is_some_and(|i| i.jails())
    }

    /// Starts stems of `runtime` with `network` up to the configured number.
    fn refill_stems(&self, runtime: Runtime, network: Network) {
        let Some(launch) = self.runtimes.interpreter_launch(runtime) else {
            return;
        };
        let mut stems = self.stems.lock().unwrap();
        if self.shared.state.lock().unwrap().closed {
            return;
        }
        let list = stems.entry((runtime, network)).or_default();
        while list.len() < self.config.prewarm {
            let jail = self.config.isolation.as_deref().filter(|i| i.jails());
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
        self.invoke_with(config, request_id, event, &CallContext::default())
            .await
    }

    /// As `invoke`, with what the handler's context says beyond the request id: which
    /// delivery of an asynchronous event this is, and the trace it belongs to.
    pub async fn invoke_with(
        self: &Arc<Self>,
        config: &InstanceConfig,
        request_id: &str,
        event: &[u8],
        call: &CallContext,
    ) -> Result<Invocation, SandboxError> {
        let lease = match self.acquire(config).await? {
            Acquired::Ready(lease) => lease,
            Acquired::Failed(error, timings) => {
                return Ok(Invocation {
                    outcome: Outcome::Error(error),
                    cold_start: true,
                    init_ms: None,
                    duration_ms: 0.0,
                    instance_id: 0,
                    logs: Default::default(),
                    timings,
                });
            }
        };
        let (outcome, logs, duration_ms) = lease.invoke_with(request_id, event, call).await;
        Ok(Invocation {
            outcome,
            cold_start: lease.cold_start,
            init_ms: lease.init_ms(),
            duration_ms,
            instance_id: lease.instance_id(),
            logs,
            timings: Timings {
                handler_ms: duration_ms,
                ..lease.timings
            },
        })
    }

    /// Takes a slot on a warm instance of `config`, or starts one, or waits for one; the
    /// slot is the caller's until the lease is dropped.
    pub async fn acquire(
        self: &Arc<Self>,
        config: &InstanceConfig,
    ) -> Result<Acquired, SandboxError> {
        let key = config_key(config);
        let queued = Instant::now();
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(config.policy.queue_timeout_ms as u64);
        // The epoch of the pool whose `waiting` counts this call.
        let mut waiting = None;
        // The queue wait ends when a slot is found or a start begins.
        let mut queue_ms = 0.0;
        let outcome = loop {
            // Registered before looking, so a slot freed in between is not missed.
            let freed = self.shared.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.decide(config, key, &mut waiting) {
                Ok(Decision::Warm(member)) => {
                    queue_ms = queued.elapsed().as_secs_f64() * 1000.0;
                    break Ok(Ok((member, false, Timings::default())));
                }
                Ok(Decision::Start(slot)) => {
                    queue_ms = queued.elapsed().as_secs_f64() * 1000.0;
                    let started = self
                        .start(config, key, slot, "a call found no free instance".into(), 1)
                        .await;
                    break started.map(|r| r.map(|(m, t)| (m, true, t)));
                }
                Ok(Decision::Evict) => continue,
                Ok(Decision::Wait(give_up)) => {
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        if let SandboxError::Throttled { .. } = &give_up {
                            self.shared.record(
                                &config.function,
                                0,
                                "throttled",
                                give_up.to_string(),
                            );
                        }
                        break Err(give_up);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if let Some(epoch) = waiting {
            self.with_function(&config.pool_id(), epoch, |f| f.waiting -= 1);
        }
        if queue_ms == 0.0 {
            queue_ms = queued.elapsed().as_secs_f64() * 1000.0;
        }
        match outcome? {
            Ok((member, cold_start, timings)) => Ok(Acquired::Ready(Lease {
                pool: self.clone(),
                function: config.pool_id().into_owned(),
                key,
                concurrency: config.concurrency.max(1) as usize,
                memory_mb: config.memory_mb,
                member: Some(member),
                cold_start,
                timeout: Duration::from_millis(config.timeout_ms as u64),
                busy: AtomicBool::new(false),
                timings: Timings {
                    queue_ms,
                    ..timings
                },
            })),
            Err(error) => Ok(Acquired::Failed(
                error,
                Timings {
                    queue_ms,
                    ..Timings::default()
                },
            )),
        }
    }

    /// One look at the pool for a call of `config`.
    fn decide(
        &self,
        config: &InstanceConfig,
        key: u64,
        waiting: &mut Option<u64>,
    ) -> Result<Decision, SandboxError> {
        // Instances leaving the pool are dropped after the lock is released: dropping the
        // last reference to one takes the lock again (to free its capacity).
        let mut gone = Vec::new();
        let decision = self.decide_locked(config, key, waiting, &mut gone);
        drop(gone);
        decision
    }

    fn decide_locked(
        &self,
        config: &InstanceConfig,
        key: u64,
        waiting: &mut Option<u64>,
        gone: &mut Vec<Entry>,
    ) -> Result<Decision, SandboxError> {
        let concurrency = config.concurrency.max(1) as usize;
        let mut state = self.shared.state.lock().unwrap();
        if state.closed {
            return Err(SandboxError::ShuttingDown);
        }
        let (live, memory_mb) = (state.live, state.memory_mb);
        let fp = function_pool(&mut state, config, key);
        // Idle gaps are only tracked for functions that adapt their keep-alive.
        if config.policy.keep_alive_max_ms > 0 && fp.gaps.is_idle() {
            fp.gaps.call_arrived(Instant::now());
        }
        if fp.config_key != key {
            // The function changed: its instances run old code or config.
            fp.config_key = key;
            for e in &fp.entries {
                e.member.stopping("the function was updated");
            }
            gone.append(&mut fp.entries);
        }
        fp.config = config.clone();
        let (dead, alive): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut fp.entries)
            .into_iter()
            .partition(|e| e.member.instance.is_dead());
        fp.entries = alive;
        gone.extend(dead);
        if let Some(e) = fp
            .entries
            .iter_mut()
            .rev()
            .find(|e| e.in_flight < concurrency)
        {
            e.in_flight += 1;
            return Ok(Decision::Warm(e.member.clone()));
        }
        let max = config.policy.max_instances.max(1) as usize;
        let throttled = || SandboxError::Throttled {
            function: config.function.clone(),
            max_instances: config.policy.max_instances,
            waited_ms: config.policy.queue_timeout_ms as u64,
            retry_after_s: (config.policy.queue_timeout_ms as u64)
                .div_ceil(1000)
                .max(1),
        };
        if fp.instances() < max {
            if let Some(slot) = self.reserve(&mut state, config) {
                return Ok(Decision::Start(slot));
            }
            // The node is full: stop the longest-idle instance of another function that
            // is above its minimum, if there is one.
            let victim = state
                .functions
                .iter_mut()
                .filter(|(name, p)| {
                    **name != config.pool_id()
                        && p.entries.len() > p.config.policy.min_instances as usize
                })
                .flat_map(|(name, p)| {
                    p.entries
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.in_flight == 0)
                        .map(move |(i, e)| (name.clone(), i, e.idle_since))
                })
                .min_by_key(|(_, _, since)| *since);
            if let Some((name, i, _)) = victim {
                let entry = state
                    .functions
                    .get_mut(&name)
                    .expect("found above")
                    .entries
                    .remove(i);
                entry.member.stopping("evicted to make room on the node");
                gone.push(entry);
                return Ok(Decision::Evict);
            }
        }
        let fp = state
            .functions
            .get_mut(config.pool_id().as_ref())
            .expect("made above");
        if *waiting != Some(fp.epoch) {
            if fp.waiting >= limits::QUEUE_LENGTH_MAX || config.policy.queue_timeout_ms == 0 {
                drop(state);
                let e = throttled();
                self.shared
                    .record(&config.function, 0, "throttled", e.to_string());
                return Err(e);
            }
            fp.waiting += 1;
            *waiting = Some(fp.epoch);
        }
        let give_up = if fp.instances() < max {
            SandboxError::NodeFull {
                live,
                instances_max: self.config.instances_max,
                memory_mb,
                memory_max_mb: self.config.memory_max_mb,
                waited_ms: config.policy.queue_timeout_ms as u64,
            }
        } else {
            throttled()
        };
        Ok(Decision::Wait(give_up))
    }

    /// Reserves node capacity and the function's count for a new instance, if there is room.
    fn reserve(&self, state: &mut State, config: &InstanceConfig) -> Option<Slot> {
        let memory_mb = config.memory_mb as u64;
        if state.live >= self.config.instances_max
            || state.memory_mb + memory_mb > self.config.memory_max_mb
        {
            return None;
        }
        let fp = state.functions.get_mut(config.pool_id().as_ref())?;
        fp.starting += 1;
        let epoch = fp.epoch;
        state.live += 1;
        state.memory_mb += memory_mb;
        let instance_id = self.next_instance.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            shared: self.shared.clone(),
            instance_id,
            memory_mb,
            epoch,
        })
    }

    /// Runs `f` on the pool of `function` if it is still the one of `epoch`.
    fn with_function(&self, function: &str, epoch: u64, f: impl FnOnce(&mut FunctionPool)) {
        if let Some(fp) = self
            .shared
            .state
            .lock()
            .unwrap()
            .functions
            .get_mut(function)
            .filter(|fp| fp.epoch == epoch)
        {
            f(fp);
        }
    }

    /// Stops the instances of `function` once their calls finish: after an update those of
    /// `$LATEST` (published versions never change), after a delete (`forget`) all of them,
    /// and what the pool knows of it (its minimum).
    pub fn evict(&self, function: &str, forget: bool) {
        let gone: Vec<Entry> = {
            let mut state = self.shared.state.lock().unwrap();
            if forget {
                // A deleted function's versions go too (their pools are `function:N`).
                let prefix = format!("{function}:");
                let ids: Vec<String> = state
                    .functions
                    .keys()
                    .filter(|k| *k == function || k.starts_with(&prefix))
                    .cloned()
                    .collect();
                ids.iter()
                    .filter_map(|id| state.functions.remove(id))
                    .flat_map(|f| f.entries)
                    .collect()
            } else {
                state
                    .functions
                    .get_mut(function)
                    .map(|f| std::mem::take(&mut f.entries))
                    .unwrap_or_default()
            }
        };
        for e in &gone {
            e.member.stopping(if forget {
                "the function was deleted"
            } else {
                "the function was updated"
            });
        }
        self.stop_gracefully(gone);
    }

    /// Keeps `config.policy.min_instances` instances of the function started (0 to stop).
    pub fn provision(&self, config: &InstanceConfig) {
        let mut state = self.shared.state.lock().unwrap();
        let key = config_key(config);
        let fp = function_pool(&mut state, config, key);
        fp.config = config.clone();
    }

    /// Refuses new calls, lets idle instances run their pre-stop hook (bounded), then kills
    /// every instance, busy or idle.
    pub async fn shutdown(&self) {
        let (entries, pids) = {
            let mut state = self.shared.state.lock().unwrap();
            state.closed = true;
            let entries: Vec<Entry> = state
                .functions
                .drain()
                .flat_map(|(_, p)| p.entries)
                .collect();
            (entries, state.pids.values().copied().collect::<Vec<_>>())
        };
        let mut hooks = tokio::task::JoinSet::new();
        for e in &entries {
            e.member.stopping("the server stopped");
            if e.in_flight == 0 {
                hooks.spawn(run_pre_stop(e.member.clone()));
            }
        }
        hooks.join_all().await;
        for pid in pids {
            kill_group(pid);
        }
        drop(entries);
        self.stems.lock().unwrap().clear();
        self.zygote.lock().unwrap().take();
    }

    /// Number of live instances.
    pub fn live_instances(&self) -> usize {
        self.shared.state.lock().unwrap().live
    }

    /// Live instances of one function (started or starting).
    pub fn instances_of(&self, function: &str) -> usize {
        self.shared
            .state
            .lock()
            .unwrap()
            .functions
            .get(function)
            .map_or(0, |f| f.instances())
    }

    /// Records a lifecycle event that is not an instance's (a version published, an alias
    /// moved, a canary rolled back), next to the instances' own.
    pub fn record_event(&self, function: &str, event: &'static str, reason: String) {
        self.shared.record(function, 0, event, reason);
    }

    /// Sends every lifecycle event from now on to `sink` as well; only the first call counts.
    pub fn set_event_sink(&self, sink: EventSink) {
        let _ = self.shared.sink.set(sink);
    }

    /// Per function (all its versions together): the instances alive or starting, and the
    /// provisioned minimum with the memory of one such instance, summed as MB.
    pub fn occupancy(&self) -> Vec<Occupancy> {
        let state = self.shared.state.lock().unwrap();
        let mut by: HashMap<&str, Occupancy> = HashMap::new();
        for fp in state.functions.values() {
            let o = by
                .entry(fp.config.function.as_str())
                .or_insert_with(|| Occupancy {
                    function: fp.config.function.clone(),
                    ..Default::default()
                });
            o.instances += fp.instances() as u32;
            o.provisioned += fp.config.policy.min_instances;
            o.provisioned_mb += fp.config.policy.min_instances as u64 * fp.config.memory_mb as u64;
        }
        by.into_values().collect()
    }

    /// Recent lifecycle events, newest first, optionally of one function.
    pub fn events(&self, function: Option<&str>, limit: usize) -> Vec<LifecycleEvent> {
        let events = self.shared.events.lock().unwrap();
        events
            .iter()
            .rev()
            .filter(|e| function.is_none_or(|f| e.function == f))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Gives a slot back. `retire` takes the instance out of the pool: it died, timed out,
    /// or was left mid-call with no room for another.
    fn checkin(&self, function: &str, key: u64, member: Arc<Member>, retire: bool) {
        let gone = {
            let mut state = self.shared.state.lock().unwrap();
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
                if pool.config.policy.keep_alive_max_ms > 0
                    && pool.starting == 0
                    && pool.entries.iter().all(|e| e.in_flight == 0)
                {
                    pool.gaps.went_idle(Instant::now());
                }
            }
            (retire || pool.config_key != key || member.instance.is_dead())
                .then(|| pool.entries.remove(i))
        };
        // Dropped after the lock: dropping the last reference takes it again.
        drop(gone);
        drop(member);
        self.shared.freed.notify_waiters();
    }

    /// Starts an instance into a reserved slot, runs its initializer, and adds it to the
    /// pool with `in_flight` calls (1 for the caller that started it, 0 when provisioned).
    async fn start(
        &self,
        config: &InstanceConfig,
        key: u64,
        slot: Slot,
        reason: String,
        in_flight: usize,
    ) -> Result<Result<(Arc<Member>, Timings), FunctionError>, SandboxError> {
        let epoch = slot.epoch;
        let started = self.start_instance(config, slot, reason).await;
        let (member, timings) = match started {
            Ok(Ok(started)) => started,
            other => {
                self.with_function(&config.pool_id(), epoch, |fp| fp.starting -= 1);
                self.shared.freed.notify_waiters();
                return other;
            }
        };
        let stopped = {
            let mut state = self.shared.state.lock().unwrap();
            state.pids.insert(member.instance.id, member.instance.pid);
            let closed = state.closed;
            // The function may have been deleted while the instance started: then it
            // joins no pool, serves the call that started it (accepted before the
            // delete), and goes when that call is done.
            match state
                .functions
                .get_mut(config.pool_id().as_ref())
                .filter(|fp| fp.epoch == epoch)
            {
                Some(fp) => {
                    fp.starting -= 1;
                    if !closed && fp.config_key == key {
                        fp.entries.push(Entry {
                            member: member.clone(),
                            in_flight,
                            idle_since: Instant::now(),
                        });
                    }
                }
                None => member.stopping("the function was deleted"),
            }
            closed
        };
        self.shared.freed.notify_waiters();
        if stopped {
            member.stopping("the server stopped");
            return Err(SandboxError::ShuttingDown);
        }
        Ok(Ok((member, timings)))
    }

    /// Spawns the process and runs the initializer. A failure kills the instance.
    async fn start_instance(
        &self,
        config: &InstanceConfig,
        slot: Slot,
        reason: String,
    ) -> Result<Result<(Arc<Member>, Timings), FunctionError>, SandboxError> {
        let launch = self
            .runtimes
            .launch(config)
            .ok_or(SandboxError::RuntimeUnavailable(config.runtime))?;
        let id = slot.instance_id;
        // On a start failure `slot` is dropped here and the reservation released.
        // A prewarmed process of the runtime, when there is one, skips the interpreter start.
        let stem = if config.runtime == Runtime::Custom {
            None
        } else {
            self.take_stem(config.runtime, config.network)
        };
        let mut from = if stem.is_some() {
            "from a prewarmed process"
        } else {
            "spawned"
        };
        let isolation = self.config.isolation.as_deref();
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
        let instance = match started {
            Ok(instance) => instance,
            Err(StartError::Platform(e)) => return Err(e),
            Err(StartError::Function(e)) => return Ok(Err(e)),
        };
        let init_ms = instance.init.as_secs_f64() * 1000.0;
        let mut timings = Timings {
            sandbox_ms: (init_ms - instance.code_ms).max(0.0),
            code_ms: instance.code_ms,
            ..Timings::default()
        };
        self.shared.record(
            &config.function,
            id,
            "started",
            format!("{reason}; {from}, ready in {init_ms:.1} ms"),
        );
        let member = Arc::new(Member {
            instance,
            function: config.function.clone(),
            version: config.version.clone(),
            attachments: Mutex::new(Vec::new()),
            pre_stop: (!config.pre_stop.is_empty()).then(|| {
                (
                    config.pre_stop.clone(),
                    Duration::from_millis(config.pre_stop_timeout_ms as u64),
                )
            }),
            stop_reason: Mutex::new(None),
            _slot: slot,
        });
        if !config.initializer.is_empty() {
            let timeout = Duration::from_millis(config.initializer_timeout_ms as u64);
            match member
                .instance
                .hook(Kind::Initialize, &config.initializer, timeout)
                .await
            {
                Ok(ms) => timings.initializer_ms = ms,
                Err(e) => {
                    // The next call starts a fresh instance and tries again.
                    member.stopping("its initializer failed");
                    member.instance.kill();
                    return Ok(Err(FunctionError::new(
                        "InitializationError",
                        format!(
                            "initializer `{}` failed: {}: {}",
                            config.initializer, e.error_type, e.error_message
                        ),
                    )));
                }
            }
        }
        Ok(Ok((member, timings)))
    }

    /// Runs the pre-stop hooks of idle instances leaving the pool, then lets them go.
    fn stop_gracefully(&self, entries: Vec<Entry>) {
        for e in entries {
            if e.in_flight == 0 {
                tokio::spawn(run_pre_stop(e.member));
            }
        }
    }
}

/// The pool of `config`'s function, made if new.
fn function_pool<'a>(
    state: &'a mut State,
    config: &InstanceConfig,
    key: u64,
) -> &'a mut FunctionPool {
    let id = config.pool_id();
    if !state.functions.contains_key(id.as_ref()) {
        state.next_epoch += 1;
        state.functions.insert(
            id.clone().into_owned(),
            FunctionPool {
                epoch: state.next_epoch,
                config_key: key,
                config: config.clone(),
                entries: Vec::new(),
                starting: 0,
                waiting: 0,
                gaps: Default::default(),
            },
        );
    }
    state
        .functions
        .get_mut(id.as_ref())
        .expect("inserted above")
}

async fn run_pre_stop(member: Arc<Member>) {
    if let Some((handler, timeout)) = &member.pre_stop
        && let Err(e) = member.instance.hook(Kind::PreStop, handler, *timeout).await
    {
        tracing::warn!(function = %member.function, error = %e.error_message, "pre-stop hook failed");
    }
    drop(member);
}

/// Every half second: stops instances idle past their function's `idle_timeout_ms` (down
/// to `min_instances`) and starts instances up to `min_instances`. Holds only a weak
/// reference so the pool can be dropped.
async fn maintain(pool: std::sync::Weak<Pool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let mut expired = Vec::new();
        let mut to_start = Vec::new();
        {
            let mut state = pool.shared.state.lock().unwrap();
            let closed = state.closed;
            let names: Vec<String> = state.functions.keys().cloned().collect();
            for name in names {
                let fp = state.functions.get_mut(&name).expect("listed above");
                let min = fp.config.policy.min_instances as usize;
                let policy = &fp.config.policy;
                let idle_timeout = Duration::from_millis(
                    fp.gaps
                        .keep_alive_ms(policy.idle_timeout_ms, policy.keep_alive_max_ms),
                );
                let adapted = idle_timeout.as_millis() > policy.idle_timeout_ms as u128;
                // The longest idle first, down to the minimum.
                while fp.entries.len() > min {
                    let oldest = fp
                        .entries
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.in_flight == 0 && e.idle_since.elapsed() >= idle_timeout)
                        .min_by_key(|(_, e)| e.idle_since)
                        .map(|(i, _)| i);
                    let Some(i) = oldest else { break };
                    let e = fp.entries.remove(i);
                    e.member.stopping(if adapted {
                        format!(
                            "idle for {} ms (adaptive keep-alive past idle_timeout_ms {})",
                            idle_timeout.as_millis(),
                            fp.config.policy.idle_timeout_ms
                        )
                    } else {
                        format!("idle for {} ms", idle_timeout.as_millis())
                    });
                    expired.push(e);
                }
                let missing = min.saturating_sub(fp.instances());
                let config = fp.config.clone();
                if closed {
                    continue;
                }
                for _ in 0..missing {
                    match pool.reserve(&mut state, &config) {
                        Some(slot) => to_start.push((config.clone(), slot)),
                        None => break,
                    }
                }
            }
        }
        pool.stop_gracefully(expired);
        for (config, slot) in to_start {
            let pool = pool.clone();
            tokio::spawn(async move {
                let key = config_key(&config);
                match pool
                    .start(&config, key, slot, "min_instances".into(), 0)
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(function = %config.function, error = %e.error_message, "a provisioned instance failed to start")
                    }
                    Err(e) => {
                        tracing::warn!(function = %config.function, error = %e, "a provisioned instance failed to start")
                    }
                }
            });
        }
    }
}

fn config_key(config: &InstanceConfig) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    config.hash(&mut h);
    h.finish()
}

/// The outcome of `Pool::acquire`.
pub enum Acquired {
    Ready(Lease),
    /// A new instance could not load the function's code or run its initializer: an
    /// invocation outcome.
    Failed(FunctionError, Timings),
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
    /// The function's memory setting, for metering.
    pub memory_mb: u32,
    member: Option<Arc<Member>>,
    /// Whether the instance was started for this lease.
    pub cold_start: bool,
    timeout: Duration,
    /// Set while a call is unfinished. A lease dropped then (its caller went away) on an
    /// instance of concurrency 1 retires the instance: a busy instance must never be
    /// handed to the next caller.
    busy: AtomicBool,
    /// Queue wait and, when cold, the start-up parts; the caller adds the handler time.
    pub timings: Timings,
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

    /// `$LATEST` or the number of the version the instance runs.
    pub fn version(&self) -> &str {
        &self.member().version
    }

    /// The loopback port of an HTTP instance.
    pub fn port(&self) -> Option<u16> {
        self.member().instance.port
    }

    /// Milliseconds the instance took to start (and initialize), when this lease started it.
    pub fn init_ms(&self) -> Option<f64> {
        let t = &self.timings;
        self.cold_start
            .then_some(t.sandbox_ms + t.code_ms + t.initializer_ms)
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
        self.invoke_with(request_id, event, &CallContext::default())
            .await
    }

    /// As `invoke`, with the rest of the handler's context.
    pub async fn invoke_with(
        &self,
        request_id: &str,
        event: &[u8],
        call: &CallContext,
    ) -> (Outcome, Logs, f64) {
        let instance = &self.member().instance;
        let meta = serde_json::to_vec(&serde_json::json!({
            "request_id": request_id,
            "deadline_ms": now_ms() + self.timeout.as_millis() as i64,
            "attempt": call.attempt,
            "traceparent": call.traceparent,
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
            Reply::Crashed(report) => Outcome::Error(self.crashed(report)),
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
            Reply::Crashed(report) => WebReply::Error(self.crashed(report), logs),
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
    /// The error of a call whose instance died: out of memory when the kernel says so,
    /// else the exit report.
    fn crashed(&self, report: String) -> FunctionError {
        let member = self.member();
        if member.instance.oom_killed() {
            member.stopping("it ran out of memory");
            return FunctionError::new(
                "FunctionOutOfMemory",
                format!(
                    "the function used more than its memory_mb ({} MB) and was stopped; raise memory_mb or use less",
                    member.instance.memory_mb
                ),
            );
        }
        member.stopping("it crashed during a call");
        FunctionError::new("Runtime.ExitError", report)
    }

    pub fn timed_out(&self) -> FunctionError {
        self.member().stopping(format!(
            "a call ran past its timeout of {} ms",
            self.timeout.as_millis()
        ));
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

    /// Waits until the instance's earlier frames (its log lines) have been read.
    pub async fn barrier(&self) {
        self.member().instance.barrier().await;
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
    pub fn discard(&mut self, reason: &str) {
        if let Some(member) = self.member.take() {
            member.stopping(reason.to_string());
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
                member.stopping("its caller left in the middle of a call");
                member.instance.kill();
            }
            self.pool.checkin(&self.function, self.key, member, retire);
        }
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
        setup_with(files, PoolConfig::default())
    }

    fn setup_with(
        files: &[(&str, &str)],
        pool_config: PoolConfig,
    ) -> (tempfile::TempDir, Arc<Pool>) {
        let tmp = tempfile::tempdir().unwrap();
        let code = tmp.path().join("code");
        std::fs::create_dir(&code).unwrap();
        for (name, text) in files {
            std::fs::write(code.join(name), text).unwrap();
        }
        let runtimes = Runtimes::install(&tmp.path().join("rt"), None, None).unwrap();
        (tmp, Pool::new(runtimes, pool_config))
    }

    fn config(
        tmp: &tempfile::TempDir,
        runtime: Runtime,
        handler: &str,
        timeout_ms: u32,
    ) -> InstanceConfig {
        InstanceConfig {
            function: "f".into(),
            version: "$LATEST".into(),
            runtime,
            handler: handler.into(),
            code_dir: tmp.path().join("code"),
            env: Default::default(),
            memory_mb: 128,
            timeout_ms,
            kind: model::FunctionType::Handler,
            command: Vec::new(),
            concurrency: 1,
            initializer: String::new(),
            initializer_timeout_ms: 1000,
            pre_stop: String::new(),
            pre_stop_timeout_ms: 1000,
            network: model::Network::Outbound,
            ephemeral_storage_mb: 64,
            cpu_millicores: 0,
            policy: crate::Policy::default(),
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
    async fn python_instances_are_forked_by_a_fork_server_that_comes_back() {
        const CODE: &str = "import os, random\n\
def handler(event, context):\n    \
if event.get('exit'):\n        os._exit(3)\n    \
return [os.getpid(), os.getppid(), os.getpgid(0), random.random()]\n";
        let no_stems = PoolConfig {
            prewarm: 0,
            ..PoolConfig::default()
        };
        let (tmp, pool) = setup_with(&[("main.py", CODE)], no_stems);
        let named = |name: &str| InstanceConfig {
            function: name.into(),
            ..config(&tmp, Runtime::Python3, "main.handler", 2000)
        };
        let run = |c: InstanceConfig| {
            let pool = pool.clone();
            async move {
                let inv = pool.invoke(&c, "r", b"{}").await.unwrap();
                let v: (i32, i32, i32, f64) = serde_json::from_str(&body(&inv)).unwrap();
                v
            }
        };
        let (pid_a, zygote, group_a, random_a) = run(named("a")).await;
        let (pid_b, zygote_b, _, random_b) = run(named("b")).await;
        // Both are children of one process that is not the server: the fork server.
        assert_ne!(zygote, std::process::id() as i32);
        assert_eq!(zygote, zygote_b);
        assert_ne!(pid_a, pid_b);
        // Each instance leads its own process group, so killing it kills only its tree.
        assert_eq!(group_a, pid_a);
        // Python reseeds `random` in a forked child; instances must not share a sequence.
        assert_ne!(random_a, random_b);

        // The zygote reports the exit status of a child that is not the server's.
        let x = pool
            .invoke(&named("a"), "r", br#"{"exit":1}"#)
            .await
            .unwrap();
        let x = error(&x);
        assert_eq!(x.error_type, "Runtime.ExitError");
        assert!(x.error_message.contains("status 3"), "{x:?}");

        // Without its fork server, instances still start (spawned), and after the restart
        // interval a new fork server forks them again.
        kill_group(zygote);
        let (_, parent, _, _) = run(named("c")).await;
        assert_ne!(parent, zygote);
        tokio::time::sleep(ZYGOTE_RESTART_INTERVAL + Duration::from_millis(100)).await;
        let (_, parent, _, _) = run(named("d")).await;
        assert!(parent != zygote && parent != std::process::id() as i32);
        // The surviving instance of the old fork server keeps answering.
        let (pid, _, _, _) = run(named("b")).await;
        assert_eq!(pid, pid_b);
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
        pool.shutdown().await;
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
        let (tmp, pool) = setup_with(
            &[("main.py", PY)],
            PoolConfig {
                instances_max: 1,
                ..PoolConfig::default()
            },
        );
        let mut c = config(&tmp, Runtime::Python3, "main.handler", 1000);
        c.policy.idle_timeout_ms = 300;
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

    /// A function deleted while one of its instances starts (its initializer runs) and a
    /// second call waits: both calls are served, the starting instance joins no pool and
    /// goes, and the counts stay right (they once went below zero and aborted the server).
    #[tokio::test]
    async fn a_function_deleted_while_it_starts_leaves_clean_counts() {
        const CODE: &str = "import time\n\
def init(context):\n    time.sleep(0.4)\n\
def handler(event, context):\n    return 'ok'\n";
        let (tmp, pool) = setup(&[("main.py", CODE)]);
        let mut c = config(&tmp, Runtime::Python3, "main.handler", 2000);
        c.initializer = "main.init".into();
        c.policy.max_instances = 1;
        c.policy.queue_timeout_ms = 5000;
        let calls: Vec<_> = (0..2)
            .map(|i| {
                let (pool, c) = (pool.clone(), c.clone());
                tokio::spawn(async move { pool.invoke(&c, &format!("r{i}"), b"{}").await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(pool.instances_of("f"), 1, "one instance starts");
        pool.evict("f", true);
        for call in calls {
            let inv = call.await.unwrap().unwrap();
            assert_eq!(body(&inv), "ok");
        }
        // The first instance served its call outside any pool and is gone; the waiting
        // call started one in the new pool. Every live instance is counted in a pool.
        for _ in 0..100 {
            if pool.live_instances() == pool.instances_of("f") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pool.live_instances(), pool.instances_of("f"));
        assert!(pool.instances_of("f") <= 1);
        let events = pool.events(Some("f"), 10);
        assert!(
            events
                .iter()
                .any(|e| e.event == "stopped" && e.reason == "the function was deleted"),
            "{events:?}"
        );
        // Later calls use one warm instance under the cap of one.
        pool.invoke(&c, "r3", b"{}").await.unwrap();
        assert!(!pool.invoke(&c, "r4", b"{}").await.unwrap().cold_start);
        assert_eq!(pool.instances_of("f"), 1);
    }

    /// Calls every 1.2 s against a 200 ms idle timeout: without adaptive keep-alive every
    /// call starts cold; with it, once four gaps are known, the instance is kept for the next.
    #[tokio::test]
    async fn adaptive_keep_alive_bridges_a_steady_rhythm() {
        let (tmp, pool) = setup(&[("main.py", PY)]);
        let run = |name: &str, keep_alive_max_ms: u32| {
            let pool = pool.clone();
            let mut c = config(&tmp, Runtime::Python3, "main.handler", 2000);
            c.function = name.into();
            c.policy.idle_timeout_ms = 200;
            c.policy.keep_alive_max_ms = keep_alive_max_ms;
            async move {
                let mut cold = Vec::new();
                for i in 0..7 {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(1200)).await;
                    }
                    cold.push(pool.invoke(&c, "r", b"{}").await.unwrap().cold_start);
                }
                cold
            }
        };
        let (fixed, adaptive) = tokio::join!(run("fixed", 0), run("adaptive", 5_000));
        assert_eq!(fixed, [true; 7], "reaped after 200 ms every time");
        // Calls 2-5 bring the four gaps; from the sixth on the instance waits for them.
        assert_eq!(adaptive[..5], [true; 5]);
        assert_eq!(adaptive[5..], [false, false], "{adaptive:?}");
        let events = pool.events(Some("adaptive"), 50);
        assert!(
            !events
                .iter()
                .any(|e| e.reason.contains("adaptive keep-alive")),
            "not reaped while the rhythm holds: {events:?}"
        );
    }

    #[tokio::test]
    async fn the_node_cap_refuses_clearly() {
        let (tmp, pool) = setup_with(
            &[("main.py", PY)],
            PoolConfig {
                instances_max: 1,
                ..PoolConfig::default()
            },
        );
        let mut c = config(&tmp, Runtime::Python3, "main.handler", 2000);
        c.policy.queue_timeout_ms = 100;
        let busy = {
            let pool = pool.clone();
            let c = c.clone();
            tokio::spawn(async move { pool.invoke(&c, "r1", br#"{"do":"sleep"}"#).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let err = pool.invoke(&c, "r2", b"{}").await.unwrap_err();
        assert!(
            matches!(
                err,
                SandboxError::NodeFull {
                    live: 1,
                    instances_max: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().starts_with(
                "this node has no room for another instance (1 of 1 instances, 128 of 16384 MB)"
            ),
            "{err}"
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
            pool.evict("f", true);
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
