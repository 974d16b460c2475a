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
//!
//! The decisions themselves are plain functions in `decide`, over the state this lock
//! guards, with the time passed in; this module applies them: it turns reservations into
//! slots, starts instances through the `Executor`, and stops what leaves the pool after
//! the lock is released. It knows no process: pids, stems and the fork server are the
//! process executor's.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use model::limits;
use tokio::sync::{Notify, mpsc};

use crate::executor::process::ProcessExecutor;
use crate::executor::{Executor, Handle, Reply, StartError, Stopper, StreamEvent};
use crate::isolation::Isolation;
use crate::logs::now_ms;
use crate::pool::decide::{Capacity, Leaving, Liveness, Reservation};
use crate::protocol::Kind;
use crate::{
    ContentType, FunctionError, InstanceConfig, Invocation, LifecycleEvent, Logs, Outcome,
    Runtimes, SandboxError, Timings,
};

mod decide;
#[cfg(test)]
mod seam_tests;

/// The time the pool's decisions are made at: tokio's clock, which is the system's
/// monotonic clock except in tests that pause it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What a handler's context carries besides its request id.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// Which delivery of an asynchronous event this is (1 for a synchronous call).
    pub attempt: u32,
    /// The W3C `traceparent` of the call.
    pub traceparent: Option<String>,
    /// The function's ARN as the call named it (with its qualifier), for the context.
    pub invoked_function_arn: Option<String>,
    /// The caller's client context, JSON text (Lambda's `X-Amz-Client-Context`).
    pub client_context: Option<String>,
    /// Hops of the chain of calls this one continues (a function's write to a bucket
    /// that calls a function...): the shims put it in `_X_AMZN_TRACE_ID` as `Lineage`,
    /// which the AWS SDKs send back on their requests to the object store.
    pub lineage: u32,
}

impl Default for CallContext {
    fn default() -> Self {
        CallContext {
            attempt: 1,
            traceparent: None,
            invoked_function_arn: None,
            client_context: None,
            lineage: 0,
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
    /// Whether instances are frozen while idle (with no call in flight for
    /// `FREEZE_AFTER`), so that what a function leaves running after a call takes no CPU;
    /// thawed before their next use. On by default.
    pub freeze_idle: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            instances_max: 64,
            memory_max_mb: 16 * 1024,
            prewarm: 2,
            fork_server: true,
            isolation: None,
            freeze_idle: true,
        }
    }
}

/// How long an instance is idle (no call in flight) before it is frozen. Not at once:
/// back-to-back calls would pay a freeze and a thaw each (a stop and a wake-up of every
/// thread of the runtime), so only gaps longer than this do, once.
pub(crate) const FREEZE_AFTER: Duration = Duration::from_millis(100);

/// How often idle instances are looked at for freezing; an instance is frozen between
/// `FREEZE_AFTER` and `FREEZE_AFTER + FREEZE_SWEEP` after its last call.
const FREEZE_SWEEP: Duration = Duration::from_millis(100);

/// How often instances are reaped past their keep-alive and `min_instances` started.
const MAINTENANCE: Duration = Duration::from_millis(500);

/// A live instance with its share of the node's capacity. When the last reference goes
/// (the pool's and every lease's), the instance is stopped (a process is killed), the
/// capacity freed, and the stop recorded with the reason last given.
struct Member {
    instance: Handle,
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

/// One instance's share of the node (`decide::State::live` and `memory_mb`), released on drop.
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
            state.sched.live -= 1;
            state.sched.memory_mb -= self.memory_mb;
            state.stoppers.remove(&self.instance_id);
        }
        self.shared.freed.notify_waiters();
    }
}

impl Liveness for Arc<Member> {
    fn is_dead(&self) -> bool {
        self.instance.is_dead()
    }
}

/// An instance in a function's pool.
type Entry = decide::Entry<Arc<Member>>;

/// What the pool's lock guards: the scheduler's state, and how to stop every live
/// instance, busy or idle, so shutdown can kill what is busy too.
#[derive(Default)]
struct Locked {
    sched: decide::State<Arc<Member>>,
    stoppers: HashMap<u64, Stopper>,
}

/// What the pool and every instance's slot share.
struct Shared {
    state: Mutex<Locked>,
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

/// What a look at the pool decided for one call (`decide::Decision` with its reservation
/// made a slot).
enum Look {
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
    /// What starts instances: runtime processes, for now the only kind.
    executor: Arc<dyn Executor>,
}

impl Pool {
    pub fn new(runtimes: Runtimes, config: PoolConfig) -> Arc<Pool> {
        let executor = Arc::new(ProcessExecutor::new(runtimes.clone(), &config));
        Pool::with_executor(runtimes, config, executor)
    }

    /// What runs dependency builds with this pool's runtimes and sandbox.
    pub fn builder(&self) -> crate::Builder {
        crate::Builder::new(self.runtimes.clone(), self.config.isolation.clone())
    }

    /// A pool whose instances `executor` starts.
    pub(crate) fn with_executor(
        runtimes: Runtimes,
        config: PoolConfig,
        executor: Arc<dyn Executor>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            runtimes,
            config,
            executor,
            shared: Arc::new(Shared {
                state: Mutex::new(Locked::default()),
                freed: Notify::new(),
                events: Mutex::new(VecDeque::new()),
                sink: std::sync::OnceLock::new(),
            }),
        });
        tokio::spawn(maintain(Arc::downgrade(&pool)));
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
        Ok(self
            .acquire_or(config, true)
            .await?
            .expect("a call that may wait gets a slot or an error"))
    }

    /// As `acquire`, but never waits: `None` when the call would have to (every instance
    /// busy and no room to start another now, or the function's queue full). Nothing is
    /// recorded for such a call, not even a throttle: its caller takes it elsewhere (a
    /// call forwarded to its home node runs on the node that forwarded it).
    pub async fn acquire_now(
        self: &Arc<Self>,
        config: &InstanceConfig,
    ) -> Result<Option<Acquired>, SandboxError> {
        self.acquire_or(config, false).await
    }

    async fn acquire_or(
        self: &Arc<Self>,
        config: &InstanceConfig,
        may_wait: bool,
    ) -> Result<Option<Acquired>, SandboxError> {
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
            match self.decide(config, key, &mut waiting, may_wait) {
                Ok(Look::Warm(member)) => {
                    // Before the lease exists, so every use of it finds the instance
                    // running; a warm instance that was not frozen costs an atomic swap.
                    member.instance.thaw();
                    queue_ms = queued.elapsed().as_secs_f64() * 1000.0;
                    break Ok(Ok((member, false, Timings::default())));
                }
                Ok(Look::Start(slot)) => {
                    queue_ms = queued.elapsed().as_secs_f64() * 1000.0;
                    let started = self
                        .start(config, key, slot, "a call found no free instance".into(), 1)
                        .await;
                    break started.map(|r| r.map(|(m, t)| (m, true, t))).map_err(Some);
                }
                Ok(Look::Evict) => continue,
                Ok(Look::Wait(_)) if !may_wait => break Err(None),
                Ok(Look::Wait(give_up)) => {
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        if let SandboxError::Throttled { .. } = &give_up {
                            self.shared.record(
                                &config.function,
                                0,
                                "throttled",
                                give_up.to_string(),
                            );
                        }
                        break Err(Some(give_up));
                    }
                }
                Err(SandboxError::Throttled { .. }) if !may_wait => break Err(None),
                Err(e) => break Err(Some(e)),
            }
        };
        if let Some(epoch) = waiting {
            self.with_function(&config.pool_id(), epoch, |f| f.waiting -= 1);
        }
        if queue_ms == 0.0 {
            queue_ms = queued.elapsed().as_secs_f64() * 1000.0;
        }
        let outcome = match outcome {
            Ok(started) => started,
            Err(Some(e)) => return Err(e),
            Err(None) => return Ok(None),
        };
        Ok(Some(match outcome {
            Ok((member, cold_start, timings)) => Acquired::Ready(Lease {
                pool: self.clone(),
                function: config.pool_id().into_owned(),
                key,
                concurrency: config.concurrency.max(1) as usize,
                memory_mb: config.memory_mb,
                kind: config.kind,
                fc_events: config.conventions == model::Conventions::Fc
                    && config.runtime == model::Runtime::Custom,
                member: Some(member),
                cold_start,
                timeout: Duration::from_millis(config.timeout_ms as u64),
                busy: AtomicBool::new(false),
                timings: Timings {
                    queue_ms,
                    ..timings
                },
            }),
            Err(error) => Acquired::Failed(
                error,
                Timings {
                    queue_ms,
                    ..Timings::default()
                },
            ),
        }))
    }

    /// One look at the pool for a call of `config`.
    fn decide(
        &self,
        config: &InstanceConfig,
        key: u64,
        waiting: &mut Option<u64>,
        may_wait: bool,
    ) -> Result<Look, SandboxError> {
        let mut gone = Vec::new();
        let decided = {
            let mut state = self.shared.state.lock().unwrap();
            decide::admit(
                &mut state.sched,
                self.capacity(),
                config,
                key,
                waiting,
                now(),
                &mut gone,
            )
            .map(|decision| match decision {
                decide::Decision::Warm(member) => Look::Warm(member),
                decide::Decision::Start(r) => Look::Start(self.slot(r)),
                decide::Decision::Evict => Look::Evict,
                decide::Decision::Wait(give_up) => Look::Wait(give_up),
            })
        };
        // A call that may not wait is not throttled here: it goes to another node.
        if let Err(e @ SandboxError::Throttled { .. }) = &decided
            && may_wait
        {
            self.shared
                .record(&config.function, 0, "throttled", e.to_string());
        }
        // Instances leaving the pool are dropped after the lock is released: dropping the
        // last reference to one takes the lock again (to free its capacity).
        drop(stopping(gone));
        decided
    }

    /// The node's bounds, for the decisions.
    fn capacity(&self) -> Capacity {
        Capacity {
            instances_max: self.config.instances_max,
            memory_max_mb: self.config.memory_max_mb,
        }
    }

    /// The slot that owns a reservation from now on: its drop gives the room back.
    fn slot(&self, r: Reservation) -> Slot {
        Slot {
            shared: self.shared.clone(),
            instance_id: r.instance_id,
            memory_mb: r.memory_mb,
            epoch: r.epoch,
        }
    }

    /// Runs `f` on the pool of `function` if it is still the one of `epoch`.
    fn with_function(
        &self,
        function: &str,
        epoch: u64,
        f: impl FnOnce(&mut decide::FunctionPool<Arc<Member>>),
    ) {
        if let Some(fp) = self
            .shared
            .state
            .lock()
            .unwrap()
            .sched
            .function_of(function, epoch)
        {
            f(fp);
        }
    }

    /// Stops the instances of `function` once their calls finish: after an update those of
    /// `$LATEST` (published versions never change), after a delete (`forget`) all of them,
    /// and what the pool knows of it (its minimum).
    pub fn evict(&self, function: &str, forget: bool) {
        let gone = decide::remove(
            &mut self.shared.state.lock().unwrap().sched,
            function,
            forget,
        );
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
        let fp = state.sched.function_pool(config, key);
        fp.config = config.clone();
    }

    /// Refuses new calls, lets idle instances run their pre-stop hook (bounded), then kills
    /// every instance, busy or idle.
    pub async fn shutdown(&self) {
        let (entries, stoppers) = {
            let mut state = self.shared.state.lock().unwrap();
            state.sched.closed = true;
            let entries: Vec<Entry> = state
                .sched
                .functions
                .drain()
                .flat_map(|(_, p)| p.entries)
                .collect();
            (
                entries,
                state.stoppers.values().cloned().collect::<Vec<_>>(),
            )
        };
        let mut hooks = tokio::task::JoinSet::new();
        for e in &entries {
            e.member.stopping("the server stopped");
            if e.in_flight == 0 {
                hooks.spawn(run_pre_stop(e.member.clone()));
            }
        }
        hooks.join_all().await;
        for stop in stoppers {
            stop();
        }
        drop(entries);
        self.executor.shutdown();
    }

    /// Number of live instances.
    pub fn live_instances(&self) -> usize {
        self.shared.state.lock().unwrap().sched.live
    }

    /// Live instances of one function (started or starting).
    pub fn instances_of(&self, function: &str) -> usize {
        self.shared
            .state
            .lock()
            .unwrap()
            .sched
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
        for fp in state.sched.functions.values() {
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
        let gone = decide::checkin(
            &mut self.shared.state.lock().unwrap().sched,
            function,
            key,
            |m| Arc::ptr_eq(m, &member),
            retire,
            now(),
        );
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
        let arrival = {
            let mut state = self.shared.state.lock().unwrap();
            state
                .stoppers
                .insert(member.instance.id, member.instance.stopper());
            // The clone may be dropped under the lock (the instance joins no pool); that
            // is not the last reference, so no drop takes the lock again.
            decide::arrived(
                &mut state.sched,
                config,
                key,
                epoch,
                member.clone(),
                in_flight,
                now(),
            )
        };
        if arrival.deleted {
            member.stopping("the function was deleted");
        }
        let stopped = arrival.closed;
        self.shared.freed.notify_waiters();
        if stopped {
            member.stopping("the server stopped");
            return Err(SandboxError::ShuttingDown);
        }
        Ok(Ok((member, timings)))
    }

    /// Starts one instance of `config` outside its function's pool, to see whether its
    /// handler loads, and stops it at once: `Some` is the load error the first call would
    /// have got (a missing module or handler, a syntax error). It counts against the node's
    /// instances and memory while it runs, takes no slot of the function, runs no
    /// initializer (that is a call's work) and records no lifecycle event.
    pub async fn check_load(
        &self,
        config: &InstanceConfig,
    ) -> Result<Option<FunctionError>, SandboxError> {
        let reservation = {
            let mut state = self.shared.state.lock().unwrap();
            if state.sched.closed {
                return Err(SandboxError::ShuttingDown);
            }
            let capacity = self.capacity();
            let memory_mb = config.memory_mb as u64;
            if state.sched.live >= capacity.instances_max
                || state.sched.memory_mb + memory_mb > capacity.memory_max_mb
            {
                return Err(SandboxError::NodeFull {
                    live: state.sched.live,
                    instances_max: capacity.instances_max,
                    memory_mb: state.sched.memory_mb,
                    memory_max_mb: capacity.memory_max_mb,
                    waited_ms: 0,
                });
            }
            state.sched.live += 1;
            state.sched.memory_mb += memory_mb;
            let instance_id = state.sched.next_instance;
            state.sched.next_instance += 1;
            Reservation {
                instance_id,
                memory_mb,
                epoch: u64::MAX,
            }
        };
        let _slot = self.slot(reservation);
        let started = match self.executor.start(_slot.instance_id, config).await {
            Ok(started) => started,
            Err(StartError::Platform(e)) => return Err(e),
            Err(StartError::Function(e)) => return Ok(Some(e)),
        };
        started.instance.kill();
        Ok(None)
    }

    /// Starts an instance through the executor and runs its initializer. A failure kills
    /// the instance.
    async fn start_instance(
        &self,
        config: &InstanceConfig,
        slot: Slot,
        reason: String,
    ) -> Result<Result<(Arc<Member>, Timings), FunctionError>, SandboxError> {
        let id = slot.instance_id;
        // On a start failure `slot` is dropped here and the reservation released.
        let started = match self.executor.start(id, config).await {
            Ok(started) => started,
            Err(StartError::Platform(e)) => return Err(e),
            Err(StartError::Function(e)) => return Ok(Err(e)),
        };
        let init_ms = started.init.as_secs_f64() * 1000.0;
        let mut timings = Timings {
            sandbox_ms: (init_ms - started.code_ms).max(0.0),
            code_ms: started.code_ms,
            ..Timings::default()
        };
        self.shared.record(
            &config.function,
            id,
            "started",
            format!("{reason}; {}, ready in {init_ms:.1} ms", started.how),
        );
        let member = Arc::new(Member {
            instance: Handle {
                id,
                port: started.port,
                memory_mb: config.memory_mb,
                running: started.instance,
            },
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

    /// Freezes the instances idle for `FREEZE_AFTER`. Under the lock: a call takes an
    /// instance under it too, so none can take one between the look and its freeze, and a
    /// call that takes it afterwards thaws it first.
    fn freeze_idle(&self) {
        let state = self.shared.state.lock().unwrap();
        for member in decide::to_freeze(&state.sched, now(), FREEZE_AFTER) {
            // A dead instance's process group id may already be another's.
            if !member.instance.is_dead() {
                member.instance.freeze();
            }
        }
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

/// Gives each instance leaving the pool its reason to stop, and hands them on to be
/// stopped (after the pool's lock is released).
fn stopping(gone: Vec<Leaving<Arc<Member>>>) -> Vec<Entry> {
    gone.into_iter()
        .map(|l| {
            if let Some(reason) = l.reason {
                l.entry.member.stopping(reason);
            }
            l.entry
        })
        .collect()
}

async fn run_pre_stop(member: Arc<Member>) {
    // An idle instance leaving the pool may be frozen; its hook must run.
    member.instance.thaw();
    if let Some((handler, timeout)) = &member.pre_stop
        && let Err(e) = member.instance.hook(Kind::PreStop, handler, *timeout).await
    {
        tracing::warn!(function = %member.function, error = %e.error_message, "pre-stop hook failed");
    }
    drop(member);
}

/// Every half second: stops instances idle past their function's `idle_timeout_ms` (down
/// to `min_instances`) and starts instances up to `min_instances`; with `freeze_idle`,
/// every `FREEZE_SWEEP` in between, freezes instances idle for `FREEZE_AFTER`. Holds only
/// a weak reference so the pool can be dropped.
async fn maintain(pool: std::sync::Weak<Pool>) {
    let freezing = pool.upgrade().is_some_and(|p| p.config.freeze_idle);
    let period = if freezing { FREEZE_SWEEP } else { MAINTENANCE };
    let mut tick = tokio::time::interval(period);
    let every = (MAINTENANCE.as_millis() / period.as_millis()) as u64;
    for round in 0u64.. {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        if freezing {
            pool.freeze_idle();
        }
        if round % every != 0 {
            continue;
        }
        let decided = decide::tick(
            &mut pool.shared.state.lock().unwrap().sched,
            pool.capacity(),
            now(),
        );
        let expired = stopping(decided.expired);
        let to_start: Vec<(InstanceConfig, Slot)> = decided
            .to_start
            .into_iter()
            .map(|(config, r)| (config, pool.slot(r)))
            .collect();
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
    /// How the function takes calls: a web function takes events through the adapter.
    kind: model::FunctionType,
    /// A Function Compute custom runtime, whose server takes events itself (`POST
    /// /invoke`) rather than through the adapter.
    fc_events: bool,
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
        match self.kind {
            model::FunctionType::Handler => {}
            model::FunctionType::Wsgi | model::FunctionType::Asgi => {
                return self.invoke_web(request_id, event, call, false).await;
            }
            model::FunctionType::Http if self.fc_events => {}
            model::FunctionType::Http => {
                return self.invoke_web(request_id, event, call, true).await;
            }
        }
        let instance = &self.member().instance;
        let meta = serde_json::to_vec(&serde_json::json!({
            "request_id": request_id,
            "deadline_ms": now_ms() + self.timeout.as_millis() as i64,
            "attempt": call.attempt,
            "traceparent": call.traceparent,
            "invoked_function_arn": call.invoked_function_arn,
            "client_context": call.client_context,
            "lineage": call.lineage,
        }))
        .expect("meta serializes");
        let started = Instant::now();
        self.set_busy(true);
        let (reply, logs) = instance.call(&meta, event, self.timeout).await;
        self.set_busy(false);
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let outcome = match reply {
            // The shims refuse a larger result themselves; this holds for any runtime.
            Reply::Result { body, .. } if body.len() > model::limits::PAYLOAD_BYTES_MAX => {
                Outcome::Error(FunctionError::new(
                    "Function.ResponseSizeTooLarge",
                    format!(
                        "Response payload size ({} bytes) exceeded maximum allowed payload size ({} bytes).",
                        body.len(),
                        model::limits::PAYLOAD_BYTES_MAX
                    ),
                ))
            }
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

    /// Kills the instance after a failure that leaves it in an unknown state; the lease
    /// stays for the call's bookkeeping, and the pool drops the dead instance.
    pub(crate) fn kill_after_failure(&self, reason: &str) {
        self.member().stopping(reason.to_string());
        self.member().instance.kill();
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
    use crate::executor::process::ZYGOTE_RESTART_INTERVAL;
    use crate::freeze::tests::cpu_seconds;
    use crate::instance::kill_group;
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
            timeout_ms,
            ..InstanceConfig::for_test("f", runtime, handler, tmp.path().join("code"))
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

    /// A handler that leaves a thread spinning and returns its pid.
    const SPIN: &str = "import os, threading\n\
started = False\n\
def spin():\n    n = 0\n    while True:\n        n += 1\n\
def handler(event, context):\n    global started\n    \
if not started:\n        started = True\n        \
threading.Thread(target=spin, daemon=True).start()\n    \
return os.getpid()\n";

    /// A thread a handler left spinning takes no CPU once its idle instance is frozen; the
    /// next call thaws it and is served warm. With `freeze_idle` off it keeps spinning.
    #[tokio::test]
    async fn frozen_instances_take_no_cpu_between_calls() {
        for freeze_idle in [true, false] {
            let (tmp, pool) = setup_with(
                &[("main.py", SPIN)],
                PoolConfig {
                    freeze_idle,
                    ..PoolConfig::default()
                },
            );
            let c = config(&tmp, Runtime::Python3, "main.handler", 5000);
            let first = pool.invoke(&c, "r1", b"{}").await.unwrap();
            let pid: i32 = body(&first).parse().unwrap();
            // Frozen within FREEZE_AFTER + FREEZE_SWEEP of the call; the rest is margin.
            tokio::time::sleep(FREEZE_AFTER + FREEZE_SWEEP + Duration::from_millis(200)).await;
            let before = cpu_seconds(pid);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let used = cpu_seconds(pid) - before;
            if freeze_idle {
                assert!(used <= 0.02, "frozen, yet used {used} s of CPU in 1 s");
            } else {
                assert!(
                    used >= 0.2,
                    "not frozen, yet used only {used} s of CPU in 1 s"
                );
            }
            for i in 0..2 {
                let again = pool.invoke(&c, "r2", b"{}").await.unwrap();
                assert_eq!(body(&again), pid.to_string());
                assert!(!again.cold_start);
                if freeze_idle && i == 0 {
                    // Thawed: the spinning thread runs again until the next freeze.
                    let before = cpu_seconds(pid);
                    tokio::time::sleep(Duration::from_millis(80)).await;
                    assert!(cpu_seconds(pid) > before, "not thawed");
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
            }
            pool.shutdown().await;
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
