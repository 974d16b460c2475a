//! Nimbus's core: the platform's operations and its one invoke path, with no HTTP in it.
//!
//! `Platform` deploys code, manages functions, versions, aliases and keys, and runs every
//! call through one entry (`invoke`, or `begin` for a call that streams): the `/v1` API,
//! the HTTP gateway, the asynchronous queue and every trigger to come are front doors over
//! it. It keeps an in-memory cache of resolved functions so the invoke path reads no
//! database: a function is loaded from the store once, its code unpacked once, and the
//! cache is updated by every write that goes through this node.
//!
//! Boundary: this crate has no HTTP server and no HTTP types (Cargo enforces it: axum and
//! hyper are not among its dependencies). Its errors carry an `ErrorCode`; a front door
//! decides what that looks like on its wire.

pub mod async_invoke;
pub mod build;
pub mod bus;
mod changes;
mod error;
pub mod flows;
pub mod forward;
mod invoke;
mod keys;
pub mod membership;
pub mod metrics;
pub mod otlp;
pub mod placement;
pub mod queue;
pub mod recorder;
pub mod trace;
pub mod trigger;
pub mod webhook;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use model::{ErrorCode, Function, FunctionSpec, Qualifier, limits};
use sandbox::{InstanceConfig, Pool};
use store::{ArchiveInfo, BlobStore, CodeCache, KeyRecord, MetaStore, PutMode, PutOutcome};
use tokio::sync::watch;

pub use build::{BuildConfig, DepsOutcome};
pub use error::Error;
pub use invoke::{Begun, Call, InvocationRecord, Invoked, Session};
use invoke::{GuardedCall, Recent};
pub use keys::{AwsKey, AwsScope, FunctionKey};
pub use trigger::{Catalog, Changes, FlowTriggers, Owner, RuntimeStatus, Trigger, TriggerStatus};

/// A function ready to invoke: its record and the instance configuration derived from it.
pub struct Resolved {
    pub function: Function,
    pub instance: InstanceConfig,
}

/// Outcomes of guarded canaries in their window: (time, succeeded), oldest first.
type CanaryOutcomes = HashMap<(String, String), VecDeque<(i64, bool)>>;

/// Outcomes kept per guarded canary at most, whatever its window.
const CANARY_OUTCOMES_MAX: usize = 100_000;

/// Node-wide platform state and operations.
pub struct Platform {
    meta: Arc<dyn MetaStore>,
    blobs: Arc<dyn BlobStore>,
    code: CodeCache,
    pool: Arc<Pool>,
    functions: RwLock<HashMap<String, Arc<Resolved>>>,
    /// Bumped by every write; a cache fill that raced with a write is discarded.
    epoch: AtomicU64,
    recent: Mutex<Recent>,
    /// Every function as stored, republished after each write: the triggers' change feed.
    catalog: watch::Sender<Arc<Catalog>>,
    /// The event sources: they check their specs at deploy and follow `catalog`.
    triggers: RwLock<Vec<Arc<dyn Trigger>>>,
    /// sha256 (hex) of every invoke key, for the gateway's key check.
    keys: RwLock<HashSet<String>>,
    /// Serializes function writes, so a route conflict check and the write it guards are
    /// not interleaved with another deploy.
    writes: tokio::sync::Mutex<()>,
    /// Aliases per function, filled from the store on a miss, dropped on every alias write.
    aliases: RwLock<HashMap<String, Arc<Vec<model::Alias>>>>,
    canaries: Mutex<CanaryOutcomes>,
    /// Asynchronous invocation, once `enable_async` has started it.
    asynq: std::sync::OnceLock<Arc<crate::async_invoke::AsyncInvoker>>,
    /// Workflows, once `enable_flows` has set them up.
    flows: std::sync::OnceLock<Arc<crate::flows::Flows>>,
    /// This node among the nodes sharing the store, once `enable_membership` registered it.
    membership: std::sync::OnceLock<Arc<crate::membership::Membership>>,
    /// What carries calls to their home nodes, once `set_forwarder` set it (a cluster).
    forwarder: std::sync::OnceLock<Arc<dyn crate::forward::Forwarder>>,
    /// The versions whose home said lately that it had no room.
    full_homes: crate::forward::FullHomes,
    /// Records, logs, events and metrics, once `enable_telemetry` has started them.
    recorder: std::sync::OnceLock<Arc<crate::recorder::Recorder>>,
    /// Dependency builds at deploy, once `enable_builds` has set them up.
    builds: std::sync::OnceLock<crate::build::Builds>,
    /// What runs builds and knows the interpreters' versions.
    builder: sandbox::Builder,
    /// Where functions are told they run, in AWS's terms.
    aws: RwLock<AwsIdentity>,
    /// Access keys of the AWS-compatible APIs by id, secrets included (SigV4 needs them).
    aws_keys: RwLock<keys::AwsKeys>,
    /// Paused named triggers (function, name), loaded at start, kept by this node's
    /// pauses and refreshed from the store by the timer loop (other nodes' pauses); the bus
    /// and the timers read it per event, so a pause costs no query per delivery or fire.
    paused: RwLock<HashSet<(String, String)>>,
    /// Counts pauses and resumes through this node, so a refresh read before one of them
    /// does not undo it (`refresh_paused`).
    paused_epoch: std::sync::atomic::AtomicU64,
    /// Where functions publish to the bus and the key they publish with
    /// (`NIMBUS_EVENTS_URL`, `NIMBUS_EVENTS_KEY`).
    bus_endpoint: RwLock<Option<(String, String)>>,
    /// The object store's and Step Functions' endpoints and the access key functions use
    /// there (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL_SFN`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`).
    function_key: RwLock<Option<keys::FunctionKey>>,
}

/// The region and account functions are told they run in (`AWS_REGION`, ARNs), so code
/// and SDKs written for Lambda find what they expect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsIdentity {
    pub region: String,
    pub account_id: String,
}

impl Default for AwsIdentity {
    fn default() -> Self {
        AwsIdentity {
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
        }
    }
}

impl Platform {
    pub fn new(
        meta: Arc<dyn MetaStore>,
        blobs: Arc<dyn BlobStore>,
        code: CodeCache,
        pool: Arc<Pool>,
    ) -> Platform {
        let pool_builder = pool.builder();
        Platform {
            meta,
            blobs,
            code,
            pool,
            functions: RwLock::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            recent: Mutex::new(Recent::default()),
            catalog: watch::Sender::new(Arc::new(Catalog::default())),
            triggers: RwLock::new(Vec::new()),
            keys: RwLock::new(HashSet::new()),
            writes: tokio::sync::Mutex::new(()),
            builds: std::sync::OnceLock::new(),
            builder: pool_builder,
            aws: RwLock::new(AwsIdentity::default()),
            aws_keys: RwLock::new(Default::default()),
            paused: RwLock::new(HashSet::new()),
            paused_epoch: std::sync::atomic::AtomicU64::new(0),
            bus_endpoint: RwLock::new(None),
            function_key: RwLock::new(None),
            aliases: RwLock::new(HashMap::new()),
            canaries: Mutex::new(HashMap::new()),
            asynq: std::sync::OnceLock::new(),
            flows: std::sync::OnceLock::new(),
            membership: std::sync::OnceLock::new(),
            forwarder: std::sync::OnceLock::new(),
            full_homes: Default::default(),
            recorder: std::sync::OnceLock::new(),
        }
    }

    /// Starts recording every call, log line and lifecycle event in `store`.
    pub fn enable_telemetry(
        &self,
        store: Arc<dyn store::TelemetryStore>,
        config: crate::recorder::RecorderConfig,
        otlp: Option<crate::otlp::OtlpConfig>,
    ) {
        let recorder = crate::recorder::Recorder::start(store, self.pool.clone(), config, otlp);
        // Weak: the pool outlives nothing it would keep alive this way.
        let weak = Arc::downgrade(&recorder);
        self.pool.set_event_sink(Box::new(move |e| {
            if let Some(r) = weak.upgrade() {
                r.event(e);
            }
        }));
        let _ = self.recorder.set(recorder);
    }

    /// The recorder, or `telemetry_off` when the server runs without one.
    pub fn recorder(&self) -> Result<&Arc<crate::recorder::Recorder>, Error> {
        self.recorder.get().ok_or_else(|| {
            Error::new(
                ErrorCode::TelemetryOff,
                "this server runs without telemetry (--no-telemetry); restart it without that flag",
            )
        })
    }

    /// Writes what the recorder holds; called at shutdown, after the last call finished.
    pub async fn flush_telemetry(&self) {
        if let Some(r) = self.recorder.get() {
            r.flush().await;
        }
    }

    /// The Prometheus metrics, with gauges read now.
    pub async fn metrics(&self) -> Result<(String, Vec<u8>), Error> {
        let recorder = self.recorder()?;
        recorder.metrics.set_instances(&self.pool.occupancy());
        if let Some(asynq) = self.asynq.get() {
            let pending = asynq.queue.pending().await?;
            recorder.metrics.set_queue_depth(&pending);
        }
        Ok(recorder.metrics.render())
    }

    /// Opens asynchronous invocation on `queue`: recovers what a previous run left and
    /// accepts submissions from now on. The queue is a trigger: it dispatches once
    /// `start_triggers` starts it.
    pub async fn enable_async(
        &self,
        queue: Arc<dyn store::AsyncQueue>,
        config: crate::async_invoke::AsyncConfig,
    ) -> Result<(), Error> {
        let invoker = crate::async_invoke::AsyncInvoker::open(queue, config).await?;
        if self.asynq.set(invoker.clone()).is_ok() {
            self.add_trigger(invoker);
        }
        Ok(())
    }

    /// Sets up workflows over `store`; they start with the triggers.
    pub fn enable_flows(&self, store: Arc<dyn store::FlowStore>, node_id: &str) {
        let flows = crate::flows::Flows::new(store, node_id);
        if self.flows.set(flows.clone()).is_ok() {
            self.add_trigger(flows);
        }
    }

    /// Registers this node (`id`, reached at `address`) among the nodes sharing `store`
    /// and keeps its heartbeat until `stop_membership`.
    pub async fn enable_membership(
        &self,
        store: Arc<dyn store::ClusterStore>,
        id: &str,
        address: &str,
    ) -> Result<(), Error> {
        let m = crate::membership::Membership::start(store, id, address).await?;
        if let Err(m) = self.membership.set(m) {
            m.stop().await;
        }
        Ok(())
    }

    /// The nodes sharing the store, this one among them.
    /// How many nodes this node sees alive, itself included (1 without membership).
    pub(crate) fn live_nodes(&self) -> usize {
        self.membership.get().map_or(1, |m| {
            let now = now_ms();
            m.peers()
                .iter()
                .filter(|n| crate::membership::alive(n, now))
                .count()
                .max(1)
        })
    }

    pub async fn nodes(&self) -> Result<Vec<crate::membership::NodeStatus>, Error> {
        match self.membership.get() {
            Some(m) => m.nodes().await,
            None => Err(Error::new(
                ErrorCode::Internal,
                "this server keeps no node membership",
            )),
        }
    }

    /// This node's id and the other live nodes with the addresses they advertise, for the
    /// queries that ask every node; `None` without membership (`nimbus local`, tests).
    pub fn node_view(&self) -> Option<crate::membership::NodeView> {
        self.membership.get().map(|m| m.view(now_ms()))
    }

    /// Stops this node's heartbeat (at shutdown).
    pub async fn stop_membership(&self) {
        if let Some(m) = self.membership.get() {
            m.stop().await;
        }
    }

    /// Workflows, when enabled.
    pub fn flows(&self) -> Result<&Arc<crate::flows::Flows>, Error> {
        self.flows
            .get()
            .ok_or_else(|| Error::new(ErrorCode::Internal, "this server runs without workflows"))
    }

    fn asynq(&self) -> Result<&Arc<crate::async_invoke::AsyncInvoker>, Error> {
        self.asynq.get().ok_or_else(|| {
            Error::new(
                ErrorCode::Internal,
                "asynchronous invocation is not enabled on this server",
            )
        })
    }

    /// Accepts an event for asynchronous invocation of `target` once it is stored: its
    /// request id, and whether an earlier submission with the same key is the answer. The
    /// attempts run in the trace of `traceparent`, the submission's span.
    pub async fn submit_async(
        &self,
        target: &str,
        payload: Bytes,
        idempotency_key: Option<String>,
        traceparent: String,
    ) -> Result<(String, bool), Error> {
        // Callers name functions here; only a trigger (`submit_from`) starts a flow.
        if let Some(flow) = model::trigger::target_flow(target) {
            return Err(Error::new(
                ErrorCode::FunctionNotFound,
                format!(
                    "`{target}` is not a function; start flow `{flow}` with POST /v1/flows/{flow}/executions"
                ),
            ));
        }
        self.submit_from(target, payload, idempotency_key, traceparent, None)
            .await
    }

    /// Whether `target` (`name`, `name:3`, `name:alias`) names a function that can be
    /// called: `function_not_found` and the like otherwise.
    pub async fn check_target(&self, target: &str) -> Result<(), Error> {
        self.resolve(target).await.map(|_| ())
    }

    /// As `submit_async`, for a trigger: `source` (`timer:nightly`) names the attempts'
    /// trigger in their records.
    pub async fn submit_from(
        &self,
        target: &str,
        payload: Bytes,
        idempotency_key: Option<String>,
        traceparent: String,
        source: Option<String>,
    ) -> Result<(String, bool), Error> {
        self.submit_with_lineage(target, payload, idempotency_key, traceparent, source, 0)
            .await
    }

    /// As `submit_from`, for an event a function's call chain caused: its attempts run at
    /// hop `lineage` of that chain (loop protection).
    pub async fn submit_with_lineage(
        &self,
        target: &str,
        payload: Bytes,
        idempotency_key: Option<String>,
        traceparent: String,
        source: Option<String>,
        lineage: u32,
    ) -> Result<(String, bool), Error> {
        // An unknown function, qualifier or flow is refused now, not after the 202.
        let capacity = self.capacity(target).await? as usize;
        self.asynq()?
            .submit(
                target,
                payload,
                idempotency_key,
                Some(traceparent),
                source,
                capacity,
                lineage,
            )
            .await
    }

    /// A stored asynchronous invocation.
    pub async fn async_invocation(&self, id: &str) -> Result<Option<store::AsyncRecord>, Error> {
        match self.asynq.get() {
            Some(a) => Ok(a.queue.get(id).await?),
            None => Ok(None),
        }
    }

    /// Dead-lettered invocations, oldest first.
    pub async fn dead_letters(
        &self,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<store::AsyncRecord>, Error> {
        Ok(self
            .asynq()?
            .queue
            .list(store::AsyncStatus::DeadLettered, function, limit)
            .await?)
    }

    /// Queues dead letters again; how many were.
    pub async fn redrive(&self, ids: &[String]) -> Result<u64, Error> {
        self.asynq()?.redrive(ids).await
    }

    /// Loads what the triggers and the gateway need from the store: the catalog of
    /// functions and the invoke keys, and keeps `min_instances` ready. Called once at start;
    /// writes through this node keep both current afterwards.
    pub async fn load(&self) -> Result<(), Error> {
        self.publish_catalog().await?;
        for f in self.meta.list_functions().await? {
            if f.spec.min_instances > 0 {
                self.provision(&f.spec.name).await?;
            }
        }
        let keys = self.meta.list_keys().await?;
        *self.keys.write().unwrap() = keys.into_iter().map(|k| k.sha256).collect();
        *self.paused.write().unwrap() = self
            .meta
            .timer_states(None)
            .await?
            .into_iter()
            .filter(|s| s.paused)
            .map(|s| (s.function, s.timer))
            .collect();
        self.load_aws_keys().await
    }

    /// Republishes every function and flow trigger as stored, as the next revision of the
    /// change feed.
    pub(crate) async fn publish_catalog(&self) -> Result<(), Error> {
        let functions = self.meta.list_functions().await?;
        let flows = self.flow_triggers().await?;
        self.catalog.send_modify(|c| {
            *c = Arc::new(Catalog {
                revision: c.revision + 1,
                functions,
                flows,
            })
        });
        Ok(())
    }

    /// Checks every trigger kind's specs as they would be with `functions` and `flows`
    /// (a write replaces its own entry in one of them before asking).
    pub(crate) fn validate_triggers(
        &self,
        functions: Vec<Function>,
        flows: Vec<trigger::FlowTriggers>,
    ) -> Result<(), Error> {
        let after = Catalog {
            revision: 0,
            functions,
            flows,
        };
        let triggers: Vec<Arc<dyn Trigger>> = self.triggers.read().unwrap().clone();
        for t in triggers {
            t.validate(&after)?;
        }
        Ok(())
    }

    /// The functions as last published: what triggers derive their state from.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.borrow().clone()
    }

    /// Collects code no function or version uses, every `every`: archives and unpacked
    /// trees unreferenced for `model::limits::CODE_GARBAGE_GRACE_MS` (an upload about to
    /// be deployed is younger than that, and code a deploy just left keeps serving the
    /// calls still on it).
    pub fn start_code_collection(self: &Arc<Self>, every: std::time::Duration) {
        let platform = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut collector = store::CodeCollector::new(limits::CODE_GARBAGE_GRACE_MS);
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(platform) = platform.upgrade() else {
                    return;
                };
                match platform.collect_code(&mut collector).await {
                    Ok(r) if r.blobs_removed + r.trees_removed > 0 => tracing::info!(
                        blobs = r.blobs_removed,
                        bytes = r.blob_bytes_removed,
                        trees = r.trees_removed,
                        "unreferenced code collected"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "collecting unreferenced code failed"),
                }
            }
        });
    }

    /// One round of code collection.
    async fn collect_code(
        &self,
        collector: &mut store::CodeCollector,
    ) -> Result<store::CollectReport, Error> {
        let mut referenced = self.meta.referenced_code().await?;
        // Resolutions cached on this node may still have instances on their code.
        referenced.extend(
            self.functions
                .read()
                .unwrap()
                .values()
                .map(|r| r.function.spec.code_sha256.clone()),
        );
        Ok(collector
            .collect(self.blobs.as_ref(), &self.code, &referenced, now_ms())
            .await?)
    }

    /// Adds an event source: from now on it checks every deploy's specs. It starts taking
    /// events with `start_triggers`.
    pub fn add_trigger(&self, trigger: Arc<dyn Trigger>) {
        self.triggers.write().unwrap().push(trigger);
    }

    /// Starts every trigger added so far, each with its own view of the change feed.
    pub async fn start_triggers(self: &Arc<Self>) -> Result<(), Error> {
        let triggers: Vec<Arc<dyn Trigger>> = self.triggers.read().unwrap().clone();
        for t in triggers {
            t.clone()
                .start(self.clone(), self.catalog.subscribe())
                .await?;
            tracing::debug!(kind = %t.kind(), "trigger started");
        }
        Ok(())
    }

    /// The triggers of one function or flow (`flow/NAME`), or of all, with each timer's
    /// state: paused, its last fire, its next.
    pub async fn triggers(&self, function: Option<&str>) -> Result<Vec<TriggerStatus>, Error> {
        let owners: Vec<(String, Vec<model::http::Trigger>)> = match function {
            Some(target) => vec![(target.to_string(), self.triggers_of(target).await?)],
            None => {
                let mut all: Vec<_> = self
                    .meta
                    .list_functions()
                    .await?
                    .into_iter()
                    .map(|f| (f.spec.name, f.spec.triggers))
                    .collect();
                all.extend(
                    self.flow_triggers()
                        .await?
                        .into_iter()
                        .map(|f| (f.target, f.triggers)),
                );
                all
            }
        };
        let states = self.meta.timer_states(function).await?;
        let handlers: Vec<Arc<dyn Trigger>> = self.triggers.read().unwrap().clone();
        let now = now_ms();
        let mut out = Vec::new();
        for (owner, triggers) in &owners {
            for t in triggers {
                let state = states
                    .iter()
                    .find(|s| s.function == *owner && s.timer == t.name());
                let name = match t {
                    model::http::Trigger::Http(h) => {
                        let methods = if h.methods.is_empty() {
                            "ANY".to_string()
                        } else {
                            h.methods.join(",").to_ascii_uppercase()
                        };
                        format!("{methods} {}", h.path)
                    }
                    other => other.name().to_string(),
                };
                let paused = state.is_some_and(|s| s.paused);
                let after = now.max(state.and_then(|s| s.last_scheduled_ms).unwrap_or(now));
                let next_fire_ms = if paused {
                    None
                } else {
                    handlers.iter().find_map(|h| {
                        (h.kind() == t.kind())
                            .then(|| h.next_fire_ms(t, after))
                            .flatten()
                    })
                };
                out.push(TriggerStatus {
                    function: owner.clone(),
                    kind: t.kind(),
                    name,
                    spec: t.clone(),
                    paused,
                    next_fire_ms,
                    last_scheduled_ms: state.and_then(|s| s.last_scheduled_ms),
                    last_fire_ms: state.and_then(|s| s.last_fire_ms),
                    last_request_id: state.and_then(|s| s.last_request_id.clone()),
                    last_error: state.and_then(|s| s.last_error.clone()),
                    skipped: state.map_or(0, |s| s.skipped),
                    runtime: handlers
                        .iter()
                        .find(|h| h.kind() == t.kind())
                        .and_then(|h| h.status(owner, t)),
                });
            }
        }
        Ok(out)
    }

    /// The trigger specs of a function, or of a flow (`flow/NAME`), as stored.
    async fn triggers_of(&self, target: &str) -> Result<Vec<model::http::Trigger>, Error> {
        match model::trigger::target_flow(target) {
            Some(flow) => {
                let record = self.flows()?.get_flow(flow).await?;
                crate::flows::parse_triggers(flow, &record.triggers)
            }
            None => Ok(self.meta.get_function(target).await?.spec.triggers),
        }
    }

    /// The triggers of every flow that declares some (none when workflows are off).
    async fn flow_triggers(&self) -> Result<Vec<trigger::FlowTriggers>, Error> {
        match self.flows.get() {
            Some(flows) => flows.flow_triggers().await,
            None => Ok(Vec::new()),
        }
    }

    /// Pauses or resumes a trigger of `function`: a timer or event rule by its name, a route
    /// by its path. A pause holds across restarts and on every node; a resumed timer goes on
    /// from now, firing nothing it would have while paused; a paused route answers 503
    /// `trigger_paused`.
    pub async fn set_trigger_paused(
        &self,
        function: &str,
        name: &str,
        paused: bool,
    ) -> Result<(), Error> {
        let triggers = self.triggers_of(function).await?;
        let named: Vec<&str> = triggers.iter().map(|t| t.name()).collect();
        if !named.contains(&name) {
            return Err(Error::new(
                ErrorCode::TriggerNotFound,
                format!(
                    "`{function}` has no timer, event rule, bucket rule, queue trigger or route `{name}` (it has: {}); `nimbus triggers ls {function}` lists them",
                    if named.is_empty() {
                        "none".to_string()
                    } else {
                        named.join(", ")
                    }
                ),
            ));
        }
        self.meta
            .set_timer_paused(function, name, paused, now_ms())
            .await?;
        {
            let mut set = self.paused.write().unwrap();
            let key = (function.to_string(), name.to_string());
            if paused {
                set.insert(key);
            } else {
                set.remove(&key);
            }
            self.paused_epoch
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        self.pool.record_event(
            function,
            if paused {
                "trigger_paused"
            } else {
                "trigger_resumed"
            },
            format!(
                "trigger {name} {}",
                if paused { "paused" } else { "resumed" }
            ),
        );
        Ok(())
    }

    /// A bucket event that would have started hop `hops + 1` of a chain of calls was not
    /// delivered: `function` writes into a bucket (`bucket`) that calls it again. Says so
    /// in the function's lifecycle events, the log and the metrics.
    pub fn record_loop_stopped(&self, function: &str, bucket: &str, key: &str, hops: u32) {
        tracing::warn!(
            function,
            bucket,
            key,
            hops,
            "a recursive loop was stopped: a bucket event was not delivered"
        );
        self.pool.record_event(
            function,
            "loop_stopped",
            format!(
                "recursive loop stopped: the event of {key} in bucket {bucket} would have been hop {} of a chain of calls (at most {})",
                hops + 1,
                model::limits::OBJECT_EVENT_HOPS_MAX
            ),
        );
    }

    /// Calls `target` can run at once: `max_instances × concurrency` of what it resolves to;
    /// for a flow's target (`flow/NAME`, which must exist), the starts a trigger makes at once.
    pub(crate) async fn capacity(&self, target: &str) -> Result<u32, Error> {
        if let Some(flow) = model::trigger::target_flow(target) {
            self.flows()?.get_flow(flow).await?;
            return Ok(model::limits::FLOW_TRIGGER_STARTS_AT_ONCE);
        }
        let r = self.resolve(target).await?;
        Ok(r.instance.policy.max_instances.max(1) * r.instance.concurrency.max(1))
    }

    /// Adds a lifecycle event of `function` (`nimbus events`), as a trigger reports one.
    pub(crate) fn record_event(&self, function: &str, event: &'static str, reason: String) {
        self.pool.record_event(function, event, reason);
    }

    /// Keeps a message a trigger gave up on: see `AsyncInvoker::bury`.
    pub(crate) async fn bury(
        self: &Arc<Self>,
        dead: crate::async_invoke::DeadLetter,
    ) -> Result<(), Error> {
        self.asynq()?.clone().bury(self, dead).await
    }

    /// Whether the named trigger (a timer or event rule) of `function` is paused.
    pub fn trigger_paused(&self, function: &str, name: &str) -> bool {
        let set = self.paused.read().unwrap();
        !set.is_empty() && set.contains(&(function.to_string(), name.to_string()))
    }

    /// Where this node's pauses and resumes stand; read it before reading the store for
    /// `refresh_paused`.
    pub fn paused_epoch(&self) -> u64 {
        self.paused_epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Takes the paused triggers as read from the store (what every node paused) when this
    /// node's pauses stood at `epoch`. A pause or resume through this node since then wins,
    /// since the read may predate its commit: the view stays as it is until the next
    /// refresh, and this answers false.
    pub fn refresh_paused(&self, paused: HashSet<(String, String)>, epoch: u64) -> bool {
        let mut set = self.paused.write().unwrap();
        if self.paused_epoch() != epoch {
            return false;
        }
        *set = paused;
        true
    }

    /// Stops every trigger: no new events are taken; calls under way finish.
    pub async fn stop_triggers(&self) {
        let triggers: Vec<Arc<dyn Trigger>> = self.triggers.read().unwrap().clone();
        for t in triggers {
            t.stop().await;
        }
    }

    /// Creates an invoke key. The key is returned once; only its hash is stored.
    pub async fn create_key(&self, name: &str) -> Result<(KeyRecord, String), Error> {
        if name.is_empty() || name.chars().count() > limits::NAME_LEN_MAX {
            return Err(Error::invalid(format!(
                "name: must be 1 to {} characters",
                limits::NAME_LEN_MAX
            )));
        }
        if self.keys.read().unwrap().len() >= limits::INVOKE_KEYS_MAX {
            return Err(Error::invalid(format!(
                "there are already {} invoke keys; delete unused ones first",
                limits::INVOKE_KEYS_MAX
            )));
        }
        let secret = format!(
            "nk_{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let record = KeyRecord {
            id: format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            name: name.to_string(),
            sha256: hash_key(&secret),
            created_at_ms: now_ms(),
        };
        self.meta.create_key(&record).await?;
        self.keys.write().unwrap().insert(record.sha256.clone());
        Ok((record, secret))
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, Error> {
        Ok(self.meta.list_keys().await?)
    }

    /// Deletes an invoke key by its id, or an access key by its access key id.
    pub async fn delete_key(&self, id: &str) -> Result<(), Error> {
        if self.aws_key(id).is_some() {
            return self.delete_aws_key(id).await;
        }
        let keys = self.meta.list_keys().await?;
        self.meta.delete_key(id).await.map_err(|e| match e {
            store::StoreError::KeyNotFound(id) => Error::new(
                ErrorCode::KeyNotFound,
                format!("invoke key `{id}` does not exist; `nimbus keys ls` lists them"),
            ),
            other => other.into(),
        })?;
        if let Some(k) = keys.iter().find(|k| k.id == id) {
            self.keys.write().unwrap().remove(&k.sha256);
        }
        Ok(())
    }

    /// Whether `key` is a valid invoke key.
    pub fn key_is_valid(&self, key: &str) -> bool {
        self.keys.read().unwrap().contains(&hash_key(key))
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Checks and stores an uploaded code archive.
    pub async fn upload_code(&self, zip: Vec<u8>) -> Result<(String, ArchiveInfo), Error> {
        Ok(self.code.accept(zip).await?)
    }

    /// The size of a stored code archive, `None` if there is none.
    pub async fn code_size(&self, sha256: &str) -> Result<Option<u64>, Error> {
        Ok(self.blobs.size(sha256).await?)
    }

    pub async fn code_exists(&self, sha256: &str) -> Result<bool, Error> {
        Ok(self.blobs.exists(sha256).await?)
    }

    /// Builds dependencies at deploy from now on, as `config` says.
    pub fn enable_builds(&self, config: BuildConfig) {
        let _ = self
            .builds
            .set(crate::build::Builds::new(config, self.builder.clone()));
    }

    /// Sets the region and account functions are told they run in.
    pub fn set_aws_identity(&self, identity: AwsIdentity) {
        *self.aws.write().unwrap() = identity;
    }

    /// Tells functions where to publish events (`url` + `/v1/events`) and with what key.
    pub fn set_bus_endpoint(&self, url: String, key: String) {
        *self.bus_endpoint.write().unwrap() = Some((url, key));
    }

    /// The region and account functions are told they run in.
    pub fn aws_identity(&self) -> AwsIdentity {
        self.aws.read().unwrap().clone()
    }

    /// The ARN of `target` (`name` or `name:qualifier`) as Lambda writes it.
    pub fn function_arn(&self, target: &str) -> String {
        let aws = self.aws.read().unwrap();
        format!(
            "arn:aws:lambda:{}:{}:function:{target}",
            aws.region, aws.account_id
        )
    }

    /// The environment Lambda gives besides the function's own: the region, the time
    /// zone, the execution environment (`AWS_Lambda_python3.11`, read off the node's
    /// interpreter). The function's own variables win.
    async fn lambda_env(&self, spec: &FunctionSpec) -> std::collections::BTreeMap<String, String> {
        let aws = self.aws.read().unwrap().clone();
        let mut env = spec.env.clone();
        let mut add = |k: &str, v: String| {
            env.entry(k.to_string()).or_insert(v);
        };
        add("AWS_REGION", aws.region.clone());
        add("AWS_DEFAULT_REGION", aws.region);
        add("NIMBUS_ACCOUNT_ID", aws.account_id);
        add("TZ", ":UTC".into());
        if let Some((url, key)) = self.bus_endpoint.read().unwrap().clone() {
            add("NIMBUS_EVENTS_URL", format!("{url}/v1/events"));
            add("NIMBUS_EVENTS_KEY", key);
        }
        if let Some(f) = self.function_key() {
            // botocore >= 1.31 and the AWS SDK for JavaScript v3 read the endpoints, by
            // service id (`SFN` is Step Functions').
            add("AWS_ENDPOINT_URL_S3", f.s3_endpoint);
            add("AWS_ENDPOINT_URL_SFN", f.api_endpoint);
            // The endpoints are addresses, where a host prefix (StartSyncExecution's
            // `sync-`) makes a name that does not resolve.
            add("AWS_DISABLE_HOST_PREFIX_INJECTION", "true".into());
            add("AWS_ACCESS_KEY_ID", f.key.access_key_id);
            add("AWS_SECRET_ACCESS_KEY", f.key.secret);
        }
        if let Ok(id) = self.builder.interpreter_id(spec.runtime).await
            && let Some(execution) = execution_env(spec.runtime, &id)
        {
            add("AWS_EXECUTION_ENV", execution);
        }
        env
    }

    /// Installs the dependencies `spec`'s code declares, or finds them built before, and
    /// fills in `spec.deps_sha256`. Nothing to do when builds are not enabled, the spec
    /// says `build: false`, or it names its dependencies already. `progress` gets the
    /// tool's output lines as they come.
    pub async fn prepare_deps(
        &self,
        spec: &mut FunctionSpec,
        progress: Option<tokio::sync::mpsc::Sender<String>>,
    ) -> Result<DepsOutcome, Error> {
        let Some(builds) = self.builds.get() else {
            return Ok(DepsOutcome::Nothing);
        };
        if !self.blobs.exists(&spec.code_sha256).await? {
            return Err(store::StoreError::BlobNotFound(spec.code_sha256.clone()).into());
        }
        let outcome = builds
            .prepare(&*self.meta, &*self.blobs, &self.code, spec, progress)
            .await?;
        if let Some(sha) = outcome.deps_sha256() {
            spec.deps_sha256 = sha.to_string();
        }
        Ok(outcome)
    }

    /// Deploys `spec`: installs its dependencies (see `prepare_deps`), then, when `check`
    /// and the function changes, loads its handler once in a fresh instance, so that a
    /// missing module or handler or a syntax error fails the deploy (`handler_failed`, with
    /// the error the first call would have given) instead of the first call; then stores
    /// it. A failure at any step leaves the function as it was.
    pub async fn deploy(
        &self,
        mut spec: FunctionSpec,
        mode: PutMode,
        check: bool,
    ) -> Result<(Function, PutOutcome), Error> {
        let errors = spec.validate();
        if !errors.is_empty() {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(Error::invalid(all.join("; ")));
        }
        self.check_runtime_version(&spec).await?;
        let stored = self.meta.get_function(&spec.name).await.ok();
        // A client that read the function and sent it back with new code (a read-modify-
        // write of the API) carries the old code's dependencies: they are the server's to
        // work out again (from the build cache when the dependency files did not change).
        if let Some(f) = &stored
            && spec.build
            && !spec.deps_sha256.is_empty()
            && spec.deps_sha256 == f.spec.deps_sha256
            && spec.code_sha256 != f.spec.code_sha256
        {
            spec.deps_sha256.clear();
        }
        self.prepare_deps(&mut spec, None).await?;
        let unchanged = stored.is_some_and(|f| f.spec == spec);
        if check && !unchanged {
            self.check_handler(&spec).await?;
        }
        self.put_function(spec, mode).await
    }

    /// Refuses a versioned runtime id (`python3.12`) that this node's interpreter is not:
    /// the function would run on another version than it was written for.
    async fn check_runtime_version(&self, spec: &FunctionSpec) -> Result<(), Error> {
        // `provided.al2023` names an OS, and this node's is what functions get.
        if spec.runtime_version.is_empty() || !spec.runtime.has_shim() {
            return Ok(());
        }
        let id = self.builder.interpreter_id(spec.runtime).await?;
        let have = execution_env(spec.runtime, &id).unwrap_or_default();
        let wanted = spec.runtime.id(&spec.runtime_version);
        if have == format!("AWS_Lambda_{wanted}") {
            return Ok(());
        }
        let have = have.trim_start_matches("AWS_Lambda_");
        Err(Error::invalid(format!(
            "runtime {wanted}: this node's {} interpreter is {have} ({}); deploy with runtime {have} or {}, or start the server with {} pointing at the version wanted",
            spec.runtime,
            id.split_whitespace().next().unwrap_or(""),
            spec.runtime,
            if spec.runtime == model::Runtime::Python3 {
                "--python3"
            } else {
                "--node"
            },
        )))
    }

    /// The tree of `spec`'s layers, made from their archives if needed.
    async fn layers_dir(&self, spec: &FunctionSpec) -> Result<Option<std::path::PathBuf>, Error> {
        let shas: Vec<&str> = spec.layers.iter().map(|l| l.sha256.as_str()).collect();
        Ok(self.code.layers(&shas).await?)
    }

    /// Starts one instance of `spec` outside the function's pool (its serving instances are
    /// not touched), which loads the handler, and stops it again.
    async fn check_handler(&self, spec: &FunctionSpec) -> Result<(), Error> {
        if !matches!(
            spec.runtime,
            model::Runtime::Python3 | model::Runtime::Nodejs | model::Runtime::Provided
        ) {
            return Ok(());
        }
        if !self.blobs.exists(&spec.code_sha256).await? {
            return Err(store::StoreError::BlobNotFound(spec.code_sha256.clone()).into());
        }
        let code_dir = self.code.tree(&spec.code_sha256, &spec.deps_sha256).await?;
        let opt_dir = self.layers_dir(spec).await?;
        let mut config = instance_config(spec, None, code_dir, opt_dir);
        config.env = self.lambda_env(spec).await;
        let loaded = match self.pool.check_load(&config).await {
            // A node busy to its bounds cannot spare an instance for the check; refusing
            // every deploy then would be worse than deploying unchecked.
            Err(e @ sandbox::SandboxError::NodeFull { .. }) => {
                tracing::warn!(function = %spec.name, "deploy check skipped: {e}");
                return Ok(());
            }
            other => other?,
        };
        match loaded {
            None => Ok(()),
            Some(e) => Err(Error::new(
                ErrorCode::HandlerFailed,
                format!(
                    "the handler does not load: {}: {}{} (deploy with --no-check to skip this check)",
                    e.error_type,
                    e.error_message,
                    // The user's own frames (a syntax error's line); the runtime's are noise.
                    e.stack_trace
                        .iter()
                        .filter(|l| !l.contains("/var/runtime/") && !l.contains("importlib"))
                        .map(|l| format!("\n  {}", l.trim_end()))
                        .collect::<String>()
                ),
            )),
        }
    }

    /// Creates or replaces a function after validating it against its code and the
    /// archives it names (`deploy` builds its dependencies and checks its handler first).
    pub async fn put_function(
        &self,
        spec: FunctionSpec,
        mode: PutMode,
    ) -> Result<(Function, PutOutcome), Error> {
        let errors = spec.validate();
        if !errors.is_empty() {
            let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(Error::invalid(all.join("; ")));
        }
        // A webhook destination is refused now rather than failing every delivery later.
        let allow_private = self
            .asynq
            .get()
            .is_some_and(|a| a.config.allow_private_webhooks);
        for destination in [&spec.on_success, &spec.on_failure].into_iter().flatten() {
            if let model::Destination::Webhook(url) = destination {
                crate::webhook::check_url(url, allow_private)
                    .map_err(|e| Error::invalid(format!("on_success/on_failure: {e}")))?;
            }
        }
        if !self.blobs.exists(&spec.code_sha256).await? {
            return Err(store::StoreError::BlobNotFound(spec.code_sha256.clone()).into());
        }
        let archives = std::iter::once(&spec.deps_sha256)
            .filter(|d| !d.is_empty())
            .chain(spec.layers.iter().map(|l| &l.sha256));
        for sha in archives {
            if !self.blobs.exists(sha).await? {
                return Err(store::StoreError::BlobNotFound(sha.clone()).into());
            }
        }
        let _write = self.writes.lock().await;
        // Every trigger's specs, as they would be after this write, must hold together
        // (two routes on one path conflict, for one).
        let mut functions = self.meta.list_functions().await?;
        functions.retain(|f| f.spec.name != spec.name);
        functions.push(Function {
            spec: spec.clone(),
            revision: 0,
            created_at_ms: 0,
            updated_at_ms: 0,
        });
        let flows = self.flow_triggers().await?;
        self.validate_triggers(functions, flows)?;
        let (function, outcome) = self.meta.put_function(&spec, mode, now_ms()).await?;
        if outcome != PutOutcome::Unchanged {
            let (event, what) = match outcome {
                PutOutcome::Created => ("created", "created"),
                _ => ("updated", "updated"),
            };
            self.pool.record_event(
                &spec.name,
                event,
                format!(
                    "function {what}, revision {}, code {}",
                    function.revision,
                    &spec.code_sha256[..12.min(spec.code_sha256.len())]
                ),
            );
            self.forget(&spec.name, false);
            self.publish_catalog().await?;
            self.provision(&spec.name).await?;
        }
        Ok((function, outcome))
    }

    pub async fn get_function(&self, name: &str) -> Result<Function, Error> {
        Ok(self.meta.get_function(name).await?)
    }

    pub async fn list_functions(&self) -> Result<Vec<Function>, Error> {
        Ok(self.meta.list_functions().await?)
    }

    pub async fn delete_function(&self, name: &str) -> Result<(), Error> {
        let _write = self.writes.lock().await;
        self.meta.delete_function(name).await?;
        self.pool
            .record_event(name, "deleted", "function deleted".into());
        self.forget(name, true);
        self.publish_catalog().await
    }

    /// Drops the cached resolution and the instances of `name` (as their calls finish);
    /// a deleted function's versions and aliases go too.
    fn forget(&self, name: &str, deleted: bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let prefix = format!("{name}:");
        self.functions
            .write()
            .unwrap()
            .retain(|k, _| k != name && !(deleted && k.starts_with(&prefix)));
        if deleted {
            self.aliases.write().unwrap().remove(name);
        }
        self.pool.evict(name, deleted);
    }

    /// Tells the pool a function's latest configuration, so it keeps `min_instances` ready.
    async fn provision(&self, name: &str) -> Result<(), Error> {
        let resolved = self.resolve(name).await?;
        self.pool.provision(&resolved.instance);
        Ok(())
    }

    /// Recent lifecycle events of this node's instances kept in memory, newest first: what
    /// a server without telemetry can still show.
    pub fn recent_events(
        &self,
        function: Option<&str>,
        limit: usize,
    ) -> Vec<sandbox::LifecycleEvent> {
        self.pool.events(function, limit)
    }

    /// Resolves `target` for one call: an alias picks its version here (by `affinity`, or
    /// at random by the request id), and a guarded canary's pick is returned for counting.
    pub(crate) async fn resolve_call(
        &self,
        target: &str,
        affinity: Option<&str>,
        request_id: &str,
    ) -> Result<(Arc<Resolved>, Option<GuardedCall>), Error> {
        let (name, qualifier) = Qualifier::split(target).map_err(Error::invalid)?;
        let alias = match qualifier {
            Qualifier::Latest => {
                return Ok((self.resolve_version_or_latest(name, None).await?, None));
            }
            Qualifier::Version(v) => return Ok((self.resolve_version(name, v).await?, None)),
            Qualifier::Alias(alias) => self.alias(name, &alias).await?,
        };
        // A point in 0..10000: the same key lands on the same point while weights stay.
        let point = model::hash::stable_hash(&[
            name.as_bytes(),
            alias.name.as_bytes(),
            affinity.unwrap_or(request_id).as_bytes(),
        ]);
        let version = alias.pick((point % 10_000) as u32);
        let guarded = alias.canary.as_ref().and_then(|c| {
            Some(GuardedCall {
                function: name.to_string(),
                alias: alias.name.clone(),
                guard: c
                    .guard
                    .clone()
                    .filter(|_| c.version == version && c.percent > 0.0)?,
                canary_version: c.version,
            })
        });
        Ok((self.resolve_version(name, version).await?, guarded))
    }

    /// `$LATEST` of `name`, or the version a qualified target names (an alias resolves to
    /// its main version here; calls pick between main and canary in `resolve_call`).
    pub(crate) async fn resolve(&self, target: &str) -> Result<Arc<Resolved>, Error> {
        if !target.contains(':') {
            return self.resolve_version_or_latest(target, None).await;
        }
        let (resolved, _) = self.resolve_call(target, None, "").await?;
        Ok(resolved)
    }

    async fn resolve_version(&self, name: &str, version: u32) -> Result<Arc<Resolved>, Error> {
        self.resolve_version_or_latest(name, Some(version)).await
    }

    async fn resolve_version_or_latest(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<Resolved>, Error> {
        let key = match version {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        };
        if let Some(r) = self.functions.read().unwrap().get(&key) {
            return Ok(r.clone());
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let function = match version {
            None => self.meta.get_function(name).await?,
            // A version is the function's record with the snapshot's spec.
            Some(v) => {
                let mut function = self.meta.get_function(name).await?;
                function.spec = self.meta.get_version(name, v).await?.spec;
                function
            }
        };
        let code_dir = self
            .code
            .tree(&function.spec.code_sha256, &function.spec.deps_sha256)
            .await?;
        let opt_dir = self.layers_dir(&function.spec).await?;
        let mut instance = instance_config(&function.spec, version, code_dir, opt_dir);
        instance.env = self.lambda_env(&function.spec).await;
        let resolved = Arc::new(Resolved { function, instance });
        let mut cache = self.functions.write().unwrap();
        // Only cache what no write has overtaken since it was read.
        if self.epoch.load(Ordering::Acquire) == epoch {
            cache.entry(key).or_insert_with(|| resolved.clone());
        }
        Ok(resolved)
    }

    /// One alias of a function, from the cache or the store.
    async fn alias(&self, function: &str, alias: &str) -> Result<model::Alias, Error> {
        let cached = self.aliases.read().unwrap().get(function).cloned();
        let all = match cached {
            Some(all) => all,
            None => {
                self.meta.get_function(function).await?;
                let all = Arc::new(self.meta.list_aliases(function).await?);
                self.aliases
                    .write()
                    .unwrap()
                    .insert(function.to_string(), all.clone());
                all
            }
        };
        all.iter()
            .find(|a| a.name == alias)
            .cloned()
            .ok_or_else(|| store::StoreError::AliasNotFound(function.into(), alias.into()).into())
    }

    /// Counts a guarded canary's call; past its error bound, rolls the canary back.
    /// The rollback (a store write) runs in a task of its own: the call that tripped the
    /// guard is not held up by it.
    pub(crate) fn count_canary_call(self: &Arc<Self>, call: GuardedCall, ok: bool) {
        let now = now_ms();
        let tripped = {
            let mut all = self.canaries.lock().unwrap();
            let key = (call.function.clone(), call.alias.clone());
            let outcomes = all.entry(key.clone()).or_default();
            outcomes.push_back((now, ok));
            while outcomes.len() > CANARY_OUTCOMES_MAX
                || outcomes
                    .front()
                    .is_some_and(|(t, _)| now - t > call.guard.window_ms as i64)
            {
                outcomes.pop_front();
            }
            let calls = outcomes.len();
            let errors = outcomes.iter().filter(|(_, ok)| !ok).count();
            let rate = errors as f64 / calls as f64;
            if calls >= call.guard.min_calls as usize && rate > call.guard.max_error_rate {
                all.remove(&key);
                Some(format!(
                    "canary version {} of alias `{}` rolled back: {errors} of its last {calls} calls failed ({:.0}% > {:.0}%)",
                    call.canary_version,
                    call.alias,
                    rate * 100.0,
                    call.guard.max_error_rate * 100.0
                ))
            } else {
                None
            }
        };
        if let Some(reason) = tripped {
            let platform = self.clone();
            tokio::spawn(async move {
                if let Err(e) = platform.roll_back(&call, &reason).await {
                    tracing::error!(error = ?e, "rolling back a canary failed");
                }
            });
        }
    }

    async fn roll_back(&self, call: &GuardedCall, reason: &str) -> Result<(), Error> {
        let _write = self.writes.lock().await;
        let mut alias = self.alias(&call.function, &call.alias).await?;
        let Some(canary) = alias.canary.as_mut() else {
            return Ok(());
        };
        if canary.version != call.canary_version || canary.percent == 0.0 {
            return Ok(());
        }
        canary.percent = 0.0;
        canary.rolled_back = Some(reason.to_string());
        alias.updated_at_ms = now_ms();
        self.meta.put_alias(&call.function, &alias).await?;
        self.aliases.write().unwrap().remove(&call.function);
        tracing::warn!(function = %call.function, "{reason}");
        self.pool
            .record_event(&call.function, "rolled_back", reason.to_string());
        Ok(())
    }

    /// Publishes `$LATEST` of `name` as a new version, or returns the newest version when
    /// nothing changed since (`false`).
    pub async fn publish(
        &self,
        name: &str,
        description: &str,
    ) -> Result<(model::Version, bool), Error> {
        if description.chars().count() > limits::DESCRIPTION_LEN_MAX {
            return Err(Error::invalid(format!(
                "description is longer than {} characters",
                limits::DESCRIPTION_LEN_MAX
            )));
        }
        let _write = self.writes.lock().await;
        let (version, created) = self
            .meta
            .publish_version(name, description, now_ms())
            .await?;
        if created {
            self.pool.record_event(
                name,
                "published",
                format!("version {} published", version.version),
            );
        }
        Ok((version, created))
    }

    pub async fn list_versions(&self, name: &str) -> Result<Vec<model::Version>, Error> {
        self.meta.get_function(name).await?;
        Ok(self.meta.list_versions(name).await?)
    }

    pub async fn get_version(&self, name: &str, version: u32) -> Result<model::Version, Error> {
        Ok(self.meta.get_version(name, version).await?)
    }

    /// Deletes a version no alias or trigger points at.
    pub async fn delete_version(&self, name: &str, version: u32) -> Result<(), Error> {
        let _write = self.writes.lock().await;
        self.refuse_if_routed(name, &version.to_string(), &format!("version {version}"))
            .await?;
        self.meta.delete_version(name, version).await?;
        self.functions
            .write()
            .unwrap()
            .remove(&format!("{name}:{version}"));
        Ok(())
    }

    /// Creates or moves an alias.
    pub async fn put_alias(&self, name: &str, mut alias: model::Alias) -> Result<(), Error> {
        alias.validate().map_err(Error::invalid)?;
        let _write = self.writes.lock().await;
        self.meta.get_function(name).await?;
        alias.updated_at_ms = now_ms();
        self.meta.put_alias(name, &alias).await?;
        self.aliases.write().unwrap().remove(name);
        self.canaries
            .lock()
            .unwrap()
            .remove(&(name.to_string(), alias.name.clone()));
        let canary = alias
            .canary
            .as_ref()
            .map(|c| format!(", canary version {} at {}%", c.version, c.percent))
            .unwrap_or_default();
        self.pool.record_event(
            name,
            "alias_moved",
            format!(
                "alias `{}` -> version {}{canary}",
                alias.name, alias.version
            ),
        );
        Ok(())
    }

    pub async fn list_aliases(&self, name: &str) -> Result<Vec<model::Alias>, Error> {
        self.meta.get_function(name).await?;
        Ok(self.meta.list_aliases(name).await?)
    }

    pub async fn get_alias(&self, name: &str, alias: &str) -> Result<model::Alias, Error> {
        self.alias(name, alias).await
    }

    /// Deletes an alias no trigger points at.
    pub async fn delete_alias(&self, name: &str, alias: &str) -> Result<(), Error> {
        let _write = self.writes.lock().await;
        self.refuse_if_routed(name, alias, &format!("alias `{alias}`"))
            .await?;
        self.meta.delete_alias(name, alias).await?;
        self.aliases.write().unwrap().remove(name);
        Ok(())
    }

    /// `in_use` when a route of `name` calls `qualifier` (called `what` in the message).
    async fn refuse_if_routed(&self, name: &str, qualifier: &str, what: &str) -> Result<(), Error> {
        let function = self.meta.get_function(name).await?;
        let routed = function
            .spec
            .triggers
            .iter()
            .filter_map(model::http::Trigger::http)
            .find(|t| t.qualifier.as_deref() == Some(qualifier));
        match routed {
            Some(route) => Err(Error::new(
                ErrorCode::InUse,
                format!(
                    "{what} of `{name}` is in use by the route {}; point it elsewhere first",
                    route.path
                ),
            )),
            None => Ok(()),
        }
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The stored form of an invoke key.
fn hash_key(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// The instance configuration of `spec` (of `version`, `$LATEST` when `None`), its code
/// at `code_dir`, its layers at `opt_dir`.
fn instance_config(
    spec: &FunctionSpec,
    version: Option<u32>,
    code_dir: std::path::PathBuf,
    opt_dir: Option<std::path::PathBuf>,
) -> InstanceConfig {
    InstanceConfig {
        opt_dir,
        conventions: spec.conventions,
        function: spec.name.clone(),
        version: version.map_or_else(|| "$LATEST".to_string(), |v| v.to_string()),
        runtime: spec.runtime,
        handler: spec.handler.clone(),
        code_dir,
        env: spec.env.clone(),
        memory_mb: spec.memory_mb,
        timeout_ms: spec.timeout_ms,
        kind: spec.kind,
        command: spec.command.clone(),
        concurrency: spec.concurrency,
        initializer: spec.initializer.clone(),
        initializer_timeout_ms: spec.initializer_timeout_ms,
        pre_stop: spec.pre_stop.clone(),
        pre_stop_timeout_ms: spec.pre_stop_timeout_ms,
        network: spec.network,
        ephemeral_storage_mb: spec.ephemeral_storage_mb,
        cpu_millicores: spec.cpu_millicores,
        policy: sandbox::Policy {
            min_instances: spec.min_instances,
            max_instances: spec.max_instances,
            idle_timeout_ms: spec.idle_timeout_ms,
            keep_alive_max_ms: spec.keep_alive_max_ms,
            queue_timeout_ms: spec.queue_timeout_ms,
        },
    }
}

/// `AWS_EXECUTION_ENV` for an interpreter that reports itself as `id` (`/usr/bin/python3
/// Python 3.11.2 …`, `/usr/bin/node v20.20.2`).
fn execution_env(runtime: model::Runtime, id: &str) -> Option<String> {
    let version = id.split_whitespace().find_map(|w| {
        let w = w.trim_start_matches('v');
        let mut parts = w.split('.');
        let (major, minor) = (parts.next()?, parts.next()?);
        (major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok())
            .then(|| (major.to_string(), minor.to_string()))
    })?;
    match runtime {
        model::Runtime::Python3 => Some(format!("AWS_Lambda_python{}.{}", version.0, version.1)),
        model::Runtime::Nodejs => Some(format!("AWS_Lambda_nodejs{}.x", version.0)),
        model::Runtime::Custom | model::Runtime::Provided => None,
    }
}

#[cfg(test)]
mod lambda_env_tests {
    #[test]
    fn execution_envs_name_the_interpreter() {
        use model::Runtime;
        assert_eq!(
            super::execution_env(
                Runtime::Python3,
                "/usr/bin/python3 Python 3.11.2 (main, Mar 13 2023)"
            )
            .as_deref(),
            Some("AWS_Lambda_python3.11")
        );
        assert_eq!(
            super::execution_env(Runtime::Nodejs, "/usr/bin/node v20.20.2").as_deref(),
            Some("AWS_Lambda_nodejs20.x")
        );
        assert_eq!(super::execution_env(Runtime::Custom, "x 1.2"), None);
    }
}
