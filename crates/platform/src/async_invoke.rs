//! Durable asynchronous invocation: an accepted event is committed to the queue before the
//! 202 answer, dispatched within each function's capacity, retried with backoff, and
//! finished at its destination. Nothing accepted is lost: after a crash, attempts that were
//! running are delivered again (at least once), with the attempt number in the context.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use model::{Destination, ErrorCode, limits};
use sandbox::Outcome;
use serde_json::json;
use store::{Accepted, AsyncQueue, AsyncRecord, AsyncStatus, Finish, Lease, NewEvent, StoreError};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::trigger::{Changes, Trigger};
use crate::{Call, Error, Invoked, Platform, now_ms};

/// Settings of the node's asynchronous invocation.
#[derive(Clone, Debug)]
pub struct AsyncConfig {
    pub payload_max_bytes: usize,
    /// How long finished invocations (results, dead letters) and idempotency keys are kept.
    pub retention_ms: u64,
    /// The first retry's delay; each further one doubles it (with ±20% jitter).
    pub retry_base_ms: u64,
    pub queue_per_function_max: usize,
    pub queue_per_node_max: usize,
    /// Whether webhook destinations may be loopback, private or link-local addresses
    /// (`--allow-private-webhooks`); off, a tenant cannot aim the server at the operator's
    /// network.
    pub allow_private_webhooks: bool,
    /// This node's id: its claims on running invocations carry it.
    pub node_id: String,
    /// How long its claims hold without renewal (renewed every third of it).
    pub lease_ms: u64,
    /// Whether other nodes share the queue: then what they accept is read from the store
    /// every `shared_queue_poll`, since only its own submissions wake this node.
    pub shared: bool,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        AsyncConfig {
            payload_max_bytes: limits::ASYNC_PAYLOAD_BYTES_DEFAULT,
            retention_ms: 24 * 3600 * 1000,
            retry_base_ms: 1_000,
            queue_per_function_max: limits::ASYNC_QUEUE_PER_FUNCTION_MAX,
            queue_per_node_max: limits::ASYNC_QUEUE_PER_NODE_MAX,
            allow_private_webhooks: false,
            node_id: "local".into(),
            lease_ms: limits::ASYNC_LEASE_MS,
            shared: false,
        }
    }
}

/// How often a node sharing the queue reads what every node left waiting (the events other
/// nodes accepted, or a dead node's that came back): the bound on how long such an event
/// waits for an idle node.
const SHARED_QUEUE_POLL: Duration = Duration::from_millis(500);

/// How often the cluster as a whole reads the shared queue's counts at most: each read
/// counts every waiting row (30 ms of the database's time with 100,000 waiting), so with
/// many nodes each reads less often and the database's load stays that of a few nodes.
const SHARED_QUEUE_READS_PER_SECOND_MAX: usize = 8;

/// How long a node waits between reads of the shared queue's counts when `live_nodes`
/// nodes read them: `SHARED_QUEUE_POLL`, or longer once the cluster would read more than
/// `SHARED_QUEUE_READS_PER_SECOND_MAX` times a second.
fn shared_queue_poll(live_nodes: usize) -> Duration {
    SHARED_QUEUE_POLL.max(Duration::from_millis(
        (1_000 * live_nodes / SHARED_QUEUE_READS_PER_SECOND_MAX) as u64,
    ))
}

/// Submissions are committed in batches of at most this many (one transaction each).
const COMMIT_BATCH_MAX: usize = 512;
/// Submissions waiting for the writer; past this, submitters wait (backpressure).
const SUBMIT_BUFFER: usize = 4_096;
/// Due invocations started per target and dispatch round at most.
const DISPATCH_WINDOW: usize = 256;
/// How long the dispatcher lets finished attempts gather before the next round.
const DISPATCH_COALESCE: Duration = Duration::from_millis(1);
/// The longest a retry waits, whatever the attempt.
const RETRY_DELAY_MAX_MS: u64 = 300_000;
/// Result bytes kept with a finished invocation.
const RESULT_BYTES_MAX: usize = 256 * 1024;

type Submission = (NewEvent, oneshot::Sender<Result<Accepted, WriteError>>);
type Ending = ((String, Finish), oneshot::Sender<Result<(), WriteError>>);

/// Why a batch was not written, as every request in it is told.
#[derive(Clone, Debug)]
struct WriteError {
    /// The disk is full: the submitter is told 507, not blamed.
    storage_full: bool,
    message: String,
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        WriteError {
            storage_full: e.is_storage_full(),
            message: e.to_string(),
        }
    }
}

impl WriteError {
    fn stopped() -> WriteError {
        WriteError {
            storage_full: false,
            message: "the writer stopped".into(),
        }
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The node's asynchronous invoker.
pub(crate) struct AsyncInvoker {
    pub(crate) queue: Arc<dyn AsyncQueue>,
    pub(crate) config: AsyncConfig,
    submit: mpsc::Sender<Submission>,
    /// Attempts' ends, recorded in batches like submissions.
    finish: mpsc::Sender<Ending>,
    /// Unfinished invocations per function name (all its versions), for the queue limits.
    pending: Mutex<HashMap<String, usize>>,
    pending_total: AtomicUsize,
    /// Unfinished invocations per target (`name`, `name:qualifier`): the targets the
    /// dispatcher looks at.
    waiting: Mutex<HashMap<String, usize>>,
    /// Attempts running per target.
    running: Mutex<HashMap<String, usize>>,
    wake: Notify,
    /// Set by `Trigger::stop`: the dispatcher claims no more events.
    stopped: AtomicBool,
    /// The platform attempts run on, once the dispatcher has started (hand-offs wait
    /// for it).
    platform: std::sync::OnceLock<Weak<Platform>>,
}

impl AsyncInvoker {
    /// Recovers what a previous run left running, then starts the writers and the
    /// retention sweeper; the dispatcher starts with the trigger.
    pub(crate) async fn open(
        queue: Arc<dyn AsyncQueue>,
        config: AsyncConfig,
    ) -> Result<Arc<AsyncInvoker>, StoreError> {
        // What this node ran before it stopped is due again at once; what other nodes
        // left behind when they died, once their leases ran out (the lease loop).
        let recovered = queue.release(&config.node_id, now_ms()).await?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "asynchronous attempts that were running when the server stopped are delivered again"
            );
        }
        queue.requeue_expired(now_ms()).await?;
        let mut pending = HashMap::new();
        let mut waiting = HashMap::new();
        let mut total = 0;
        for (target, n) in queue.pending().await? {
            *pending.entry(function_of(&target).to_string()).or_insert(0) += n;
            waiting.insert(target, n);
            total += n;
        }
        let (submit, rx) = mpsc::channel(SUBMIT_BUFFER);
        let (finish, finishes) = mpsc::channel(SUBMIT_BUFFER);
        let invoker = Arc::new(AsyncInvoker {
            queue,
            config,
            submit,
            finish,
            pending: Mutex::new(pending),
            pending_total: AtomicUsize::new(total),
            waiting: Mutex::new(waiting),
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            platform: std::sync::OnceLock::new(),
        });
        tokio::spawn(write_batches(Arc::downgrade(&invoker), rx));
        tokio::spawn(write_finishes(Arc::downgrade(&invoker), finishes));
        tokio::spawn(sweep(Arc::downgrade(&invoker)));
        tokio::spawn(keep_leases(Arc::downgrade(&invoker)));
        if invoker.config.shared {
            tokio::spawn(follow_others(Arc::downgrade(&invoker)));
        }
        Ok(invoker)
    }

    /// This node's hold on what it claims now.
    fn lease(&self) -> Lease {
        Lease {
            node: self.config.node_id.clone(),
            until_ms: now_ms() + self.config.lease_ms as i64,
        }
    }

    /// Keeps what a trigger gave up on (a queue message whose retries or age ran out) as a
    /// finished invocation of `target`: sent to the function's failure destination, else
    /// dead-lettered, where `nimbus dlq` lists and redrives it. Stored under
    /// `idempotency_key`, so giving up on the same message again (redelivered after a
    /// crash) keeps one. Returns once stored: only then may the broker forget the message.
    pub(crate) async fn bury(
        self: &Arc<Self>,
        platform: &Arc<Platform>,
        dead: DeadLetter,
    ) -> Result<(), Error> {
        let now = now_ms();
        let id = uuid::Uuid::new_v4().to_string();
        let event = NewEvent {
            id: id.clone(),
            function: dead.target.clone(),
            payload: dead.payload.clone(),
            idempotency_key: Some(dead.idempotency_key),
            traceparent: None,
            source: Some(dead.source.clone()),
            now_ms: now,
            // Stored as started, so no node runs it before its end is recorded below; a
            // crash between the two leaves it running until its lease is released.
            claimed: Some(self.lease()),
            lineage: 0,
        };
        match self
            .queue
            .enqueue(std::slice::from_ref(&event))
            .await?
            .first()
        {
            Some(store::Accepted::New) => {}
            // Buried before (the broker delivered the message again after a crash).
            _ => return Ok(()),
        }
        let record = AsyncRecord {
            id: id.clone(),
            function: dead.target,
            payload: dead.payload,
            status: AsyncStatus::Running,
            attempts: dead.attempts,
            function_errors: dead.attempts,
            enqueued_at_ms: dead.enqueued_at_ms,
            next_attempt_at_ms: now,
            updated_at_ms: now,
            result: None,
            version: None,
            traceparent: None,
            source: Some(dead.source),
            lineage: 0,
        };
        let on_failure = platform
            .resolve(&record.function)
            .await
            .ok()
            .and_then(|r| r.function.spec.on_failure.clone());
        let status = fail(
            platform,
            self,
            on_failure.as_ref(),
            &record,
            dead.condition,
            &dead.error,
            &dead.version,
        )
        .await;
        let finish = Finish::Done {
            status,
            result: Some(dead.error),
            version: (!dead.version.is_empty()).then_some(dead.version),
            function_error: true,
        };
        self.queue
            .finish(&id, &finish, &self.config.node_id, now_ms())
            .await?;
        Ok(())
    }

    /// Accepts an event for `target` once it is durably stored; answers its id and whether
    /// it repeats an earlier submission with the same idempotency key. `traceparent` is the
    /// submission's span: every attempt runs as a child of it.
    /// `capacity` is the target's slots (`max_instances × concurrency`): with one free and
    /// nothing queued before it, the event is handed off: stored as running and started
    /// at once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn submit(
        self: &Arc<Self>,
        target: &str,
        payload: Bytes,
        idempotency_key: Option<String>,
        traceparent: Option<String>,
        source: Option<String>,
        capacity: usize,
        lineage: u32,
    ) -> Result<(String, bool), Error> {
        if payload.len() > self.config.payload_max_bytes {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the event is {} bytes; asynchronous events are limited to {}",
                    payload.len(),
                    self.config.payload_max_bytes
                ),
            ));
        }
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            return Err(Error::invalid("an idempotency key is 1 to 256 bytes"));
        }
        let function = function_of(target).to_string();
        {
            // Reserve the place before the write, so concurrent submissions cannot overshoot.
            let mut pending = self.pending.lock().unwrap();
            let mine = pending.entry(function.clone()).or_insert(0);
            if *mine >= self.config.queue_per_function_max {
                return Err(queue_full(format!(
                    "`{function}` has {} asynchronous events waiting, its limit",
                    *mine
                )));
            }
            if self.pending_total.load(Ordering::Acquire) >= self.config.queue_per_node_max {
                return Err(queue_full(format!(
                    "this node has {} asynchronous events waiting, its limit",
                    self.config.queue_per_node_max
                )));
            }
            *mine += 1;
            self.pending_total.fetch_add(1, Ordering::AcqRel);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let handoff = self.reserve_handoff(target, capacity);
        let event = NewEvent {
            id: id.clone(),
            function: target.to_string(),
            payload,
            idempotency_key,
            traceparent,
            source,
            now_ms: now_ms(),
            claimed: handoff.as_ref().map(|_| self.lease()),
            lineage,
        };
        // What the first attempt needs, should the event be handed off.
        let record = handoff.as_ref().map(|_| AsyncRecord {
            id: id.clone(),
            function: event.function.clone(),
            payload: event.payload.clone(),
            status: AsyncStatus::Running,
            attempts: 1,
            function_errors: 0,
            enqueued_at_ms: event.now_ms,
            next_attempt_at_ms: event.now_ms,
            updated_at_ms: event.now_ms,
            result: None,
            version: None,
            traceparent: event.traceparent.clone(),
            source: event.source.clone(),
            lineage,
        });
        let (tx, rx) = oneshot::channel();
        let stored = match self.submit.send((event, tx)).await {
            Ok(()) => rx.await.unwrap_or_else(|_| Err(WriteError::stopped())),
            Err(_) => Err(WriteError::stopped()),
        };
        let accepted = match stored {
            Ok(a) => a,
            Err(e) => {
                if let Some(slot) = handoff {
                    slot.unreserve();
                }
                self.release(&function);
                tracing::error!(error = %e, "storing an asynchronous event failed");
                if e.storage_full {
                    return Err(Error::new(
                        ErrorCode::StorageFull,
                        "the server's disk is full: the event was not accepted; retry once space is freed",
                    ));
                }
                return Err(Error::new(
                    ErrorCode::StorageError,
                    "the event could not be stored; it was not accepted",
                ));
            }
        };
        match (accepted, handoff, record) {
            (Accepted::New, Some(slot), Some(record)) => {
                // Stored as running: its first attempt starts now, no claim round between.
                match self.platform.get().and_then(Weak::upgrade) {
                    Some(platform) => start_attempt(platform, record, slot),
                    // Shutting down: the row stays running and the next start queues it.
                    None => drop(slot),
                }
                Ok((id, false))
            }
            (Accepted::New, _, _) => {
                *self
                    .waiting
                    .lock()
                    .unwrap()
                    .entry(target.to_string())
                    .or_insert(0) += 1;
                self.wake.notify_one();
                Ok((id, false))
            }
            (Accepted::Duplicate(earlier), handoff, _) => {
                if let Some(slot) = handoff {
                    slot.unreserve();
                }
                self.release(&function);
                Ok((earlier, true))
            }
        }
    }

    /// A running slot for a new event of `target`, when it can skip the queue: the
    /// dispatcher is up, the target has nothing waiting that is not running (no one is
    /// overtaken), and it has a free slot of its `capacity`. The event then counts as
    /// waiting and running from now; `Slot::unreserve` takes both back if it is not stored.
    fn reserve_handoff(self: &Arc<Self>, target: &str, capacity: usize) -> Option<Slot> {
        if self.platform.get().is_none() || self.stopped.load(Ordering::Acquire) {
            return None;
        }
        // Lock order: waiting, then running (nowhere else holds both).
        let mut waiting = self.waiting.lock().unwrap();
        let mut running = self.running.lock().unwrap();
        let w = waiting.get(target).copied().unwrap_or(0);
        let r = running.get(target).copied().unwrap_or(0);
        if w > r || r >= capacity {
            return None;
        }
        *waiting.entry(target.to_string()).or_insert(0) += 1;
        *running.entry(target.to_string()).or_insert(0) += 1;
        Some(Slot {
            inv: self.clone(),
            target: target.to_string(),
        })
    }

    /// An invocation of `target` finished for good.
    fn finished(&self, target: &str) {
        let mut waiting = self.waiting.lock().unwrap();
        if let Some(n) = waiting.get_mut(target) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                waiting.remove(target);
            }
        }
        drop(waiting);
        self.release(function_of(target));
    }

    /// Gives back the place of an invocation that finished (or was never stored).
    fn release(&self, function: &str) {
        let mut pending = self.pending.lock().unwrap();
        if let Some(n) = pending.get_mut(function) {
            *n = n.saturating_sub(1);
        }
        let _ = self
            .pending_total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Redrives dead letters: they count as waiting again.
    pub(crate) async fn redrive(&self, ids: &[String]) -> Result<u64, Error> {
        let mut targets = Vec::new();
        for id in ids {
            if let Some(r) = self.queue.get(id).await?
                && r.status == AsyncStatus::DeadLettered
            {
                targets.push(r.function);
            }
        }
        let n = self.queue.redrive(ids, now_ms()).await?;
        {
            let mut pending = self.pending.lock().unwrap();
            let mut waiting = self.waiting.lock().unwrap();
            for t in targets.iter().take(n as usize) {
                *pending.entry(function_of(t).to_string()).or_insert(0) += 1;
                *waiting.entry(t.clone()).or_insert(0) += 1;
                self.pending_total.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.wake.notify_one();
        Ok(n)
    }
}

/// What a trigger gave up on, for `AsyncInvoker::bury`.
pub(crate) struct DeadLetter {
    pub target: String,
    /// The event a redrive calls the function with.
    pub payload: Bytes,
    /// The trigger (`queue:orders`).
    pub source: String,
    pub idempotency_key: String,
    /// Calls the function failed.
    pub attempts: u32,
    /// `RetriesExhausted` or `EventAgeExceeded`, as Lambda's destination records say.
    pub condition: &'static str,
    /// The last error (JSON).
    pub error: Vec<u8>,
    /// The version that failed last, when one ran.
    pub version: String,
    pub enqueued_at_ms: i64,
}

fn queue_full(message: String) -> Error {
    Error::new(ErrorCode::QueueFull, format!("{message}; retry later"))
}

/// The function name of a target (`name:qualifier` -> `name`); a flow's target as it is.
fn function_of(target: &str) -> &str {
    if model::trigger::target_flow(target).is_some() {
        return target;
    }
    target.split_once(':').map_or(target, |(f, _)| f)
}

/// Commits submissions in batches.
async fn write_batches(invoker: Weak<AsyncInvoker>, rx: mpsc::Receiver<Submission>) {
    in_batches(rx, |events: Vec<NewEvent>| {
        let invoker = invoker.clone();
        async move {
            let inv = invoker.upgrade()?;
            let began = std::time::Instant::now();
            let done = inv.queue.enqueue(&events).await.map_err(WriteError::from);
            tracing::debug!(
                events = events.len(),
                commit_ms = began.elapsed().as_secs_f64() * 1e3,
                "submissions committed"
            );
            Some(done)
        }
    })
    .await
}

/// Records attempts' ends in batches.
async fn write_finishes(invoker: Weak<AsyncInvoker>, rx: mpsc::Receiver<Ending>) {
    in_batches(rx, |ends: Vec<(String, Finish)>| {
        let invoker = invoker.clone();
        async move {
            let inv = invoker.upgrade()?;
            let n = ends.len();
            let done = inv
                .queue
                .finish_many(&ends, &inv.config.node_id, now_ms())
                .await;
            Some(done.map(|()| vec![(); n]).map_err(WriteError::from))
        }
    })
    .await
}

/// Serves requests in batches: whatever arrived while the last batch was written goes into
/// the next (one transaction), so many concurrent requests share one commit. `write`
/// answers one result per request, or `None` once the invoker is gone.
async fn in_batches<T, R, F, Fut>(
    mut rx: mpsc::Receiver<(T, oneshot::Sender<Result<R, WriteError>>)>,
    write: F,
) where
    F: Fn(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Option<Result<Vec<R>, WriteError>>>,
{
    let mut items = Vec::with_capacity(COMMIT_BATCH_MAX);
    let mut replies = Vec::with_capacity(COMMIT_BATCH_MAX);
    while let Some((item, reply)) = rx.recv().await {
        items.push(item);
        replies.push(reply);
        while items.len() < COMMIT_BATCH_MAX {
            match rx.try_recv() {
                Ok((item, reply)) => {
                    items.push(item);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        let Some(result) = write(std::mem::take(&mut items)).await else {
            return;
        };
        match result {
            Ok(outcomes) => {
                for (reply, outcome) in replies.drain(..).zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The durable queue is the trigger of asynchronous calls: it dispatches due events.
#[async_trait::async_trait]
impl Trigger for AsyncInvoker {
    fn kind(&self) -> model::TriggerKind {
        model::TriggerKind::Async
    }

    async fn start(self: Arc<Self>, platform: Arc<Platform>, _: Changes) -> Result<(), Error> {
        let _ = self.platform.set(Arc::downgrade(&platform));
        // Targets are resolved per round, so function changes need no feed here.
        tokio::spawn(dispatch(Arc::downgrade(&platform), Arc::downgrade(&self)));
        Ok(())
    }

    async fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// Starts due invocations, fairly between functions and never more at once per target
/// than its instances can take.
async fn dispatch(platform: Weak<Platform>, invoker: Weak<AsyncInvoker>) {
    loop {
        let (Some(platform), Some(inv)) = (platform.upgrade(), invoker.upgrade()) else {
            return;
        };
        if inv.stopped.load(Ordering::Acquire) {
            return;
        }
        let started = match dispatch_round(&platform, &inv).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = ?e, "dispatching asynchronous invocations failed");
                0
            }
        };
        // Wait for news (a submission, a finished attempt) or the next retry's time. After a
        // wake-up, a moment more lets several attempts finish, so one round (two queries)
        // starts many instead of one.
        drop(platform);
        let woken = inv.wake.notified();
        if tokio::time::timeout(Duration::from_millis(100), woken)
            .await
            .is_ok()
            && started > 0
        {
            tokio::time::sleep(DISPATCH_COALESCE).await;
        }
    }
}

async fn dispatch_round(platform: &Arc<Platform>, inv: &Arc<AsyncInvoker>) -> Result<usize, Error> {
    // Only targets with events that are not running: the others have nothing to claim
    // (a round is a write transaction; ends of attempts wake the dispatcher often).
    let targets: Vec<String> = {
        let waiting = inv.waiting.lock().unwrap();
        let running = inv.running.lock().unwrap();
        waiting
            .iter()
            .filter(|(t, w)| **w > running.get(*t).copied().unwrap_or(0))
            .map(|(t, _)| t.clone())
            .collect()
    };
    // Each target is asked for as many due events as it has free slots: one function's
    // backlog never holds back another's, and none gets more at once than its instances
    // can take (`max_instances × concurrency`).
    let mut wants = Vec::new();
    for target in targets {
        let capacity = match platform.capacity(&target).await {
            Ok(c) => c as usize,
            // A target that no longer resolves still gets one attempt at a time, which
            // fails it properly.
            Err(_) => 1,
        };
        let running = inv
            .running
            .lock()
            .unwrap()
            .get(&target)
            .copied()
            .unwrap_or(0);
        let free = capacity.saturating_sub(running).min(DISPATCH_WINDOW);
        if free > 0 {
            wants.push((target, free));
        }
    }
    if wants.is_empty() {
        return Ok(0);
    }
    let (began, now) = (std::time::Instant::now(), now_ms());
    let records = inv.queue.claim(&wants, now, &inv.lease()).await?;
    let n = records.len();
    tracing::debug!(
        targets = wants.len(),
        claimed = n,
        claim_ms = began.elapsed().as_secs_f64() * 1e3,
        oldest_wait_ms = records.iter().map(|r| now - r.enqueued_at_ms).max(),
        "dispatch round"
    );
    for record in records {
        *inv.running
            .lock()
            .unwrap()
            .entry(record.function.clone())
            .or_insert(0) += 1;
        let (platform, inv) = (platform.clone(), inv.clone());
        let slot = Slot {
            inv: inv.clone(),
            target: record.function.clone(),
        };
        tokio::spawn(async move { attempt(&platform, &inv, record, slot).await });
    }
    Ok(n)
}

/// Runs an attempt in a task of its own. A plain function, not inline in `submit`: an
/// attempt may submit (to a destination), and the compiler proves the attempt's future
/// `Send` only with this step between the two.
fn start_attempt(platform: Arc<Platform>, record: AsyncRecord, slot: Slot) {
    let inv = slot.inv.clone();
    tokio::spawn(async move { attempt(&platform, &inv, record, slot).await });
}

/// A running attempt's place in its target's capacity; given back when dropped.
struct Slot {
    inv: Arc<AsyncInvoker>,
    target: String,
}

impl Slot {
    /// Gives back a hand-off reservation whose event was not stored as new: its running
    /// slot (on drop) and its place among the waiting.
    fn unreserve(self) {
        let mut waiting = self.inv.waiting.lock().unwrap();
        if let Some(n) = waiting.get_mut(&self.target) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                waiting.remove(&self.target);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(n) = self.inv.running.lock().unwrap().get_mut(&self.target) {
            *n = n.saturating_sub(1);
        }
        self.inv.wake.notify_one();
    }
}

/// Runs one attempt and records what became of it. The slot is given back as soon as the
/// function has answered: recording the end (a commit) need not hold up the next attempt,
/// since the row stays `running`, and so not due, until it is recorded.
async fn attempt(
    platform: &Arc<Platform>,
    inv: &Arc<AsyncInvoker>,
    record: AsyncRecord,
    slot: Slot,
) {
    let now = now_ms();
    if let Some(flow) = model::trigger::target_flow(&record.function) {
        let finish = start_flow(platform, inv, flow, &record, now).await;
        drop(slot);
        record_end(inv, &record, finish).await;
        return;
    }
    // An event that waited past its age is given up unrun (as Lambda does).
    if let Ok(resolved) = platform.resolve(&record.function).await {
        let spec = &resolved.function.spec;
        if now - record.enqueued_at_ms > spec.max_event_age_ms as i64 {
            drop(slot);
            let error = serde_json::to_vec(&json!({
                "errorType": "EventAgeExceeded",
                "errorMessage": format!("the event waited longer than max_event_age_ms ({})", spec.max_event_age_ms),
            }))
            .expect("an error serializes");
            let version = resolved.instance.version.clone();
            let status = fail(
                platform,
                inv,
                spec.on_failure.as_ref(),
                &record,
                "EventAgeExceeded",
                &error,
                &version,
            )
            .await;
            let finish = Finish::Done {
                status,
                result: Some(error),
                version: None,
                function_error: false,
            };
            record_end(inv, &record, finish).await;
            return;
        }
    }
    // An event a trigger queued (`timer:nightly`) runs as that trigger's call.
    let trigger = match record.source.as_deref() {
        Some(s) if s.starts_with("timer:") => model::TriggerKind::Timer,
        Some(s) if s.starts_with("event:") => model::TriggerKind::Event,
        Some(s) if s.starts_with("object:") => model::TriggerKind::Object,
        Some(s) if s.starts_with("queue:") => model::TriggerKind::Queue,
        _ => model::TriggerKind::Async,
    };
    let call = Call {
        target: record.function.clone(),
        request_id: record.id.clone(),
        affinity: None,
        trigger,
        source: record.source.clone(),
        attempt: record.attempts,
        trace: crate::trace::child_of(record.traceparent.as_deref()),
        client_context: None,
        lineage: record.lineage,
    };
    let outcome = platform.invoke(call, record.payload.clone()).await;
    drop(slot);
    let finish = match outcome {
        Ok(Invoked {
            record: rec,
            outcome: Outcome::Success { body, .. },
            resolved,
        }) => {
            let result = body[..body.len().min(RESULT_BYTES_MAX)].to_vec();
            let spec = &resolved.function.spec;
            if let Some(d) = &spec.on_success {
                deliver(
                    platform,
                    inv,
                    d,
                    &record,
                    "Success",
                    Ok(&result),
                    &rec.version,
                )
                .await;
            }
            Finish::Done {
                status: AsyncStatus::Succeeded,
                result: Some(result),
                version: Some(rec.version.clone()),
                function_error: false,
            }
        }
        Ok(Invoked {
            record: rec,
            outcome: Outcome::Error(e),
            resolved,
        }) => {
            let spec = &resolved.function.spec;
            let error = serde_json::to_vec(&json!({
                "errorType": e.error_type,
                "errorMessage": e.error_message,
                "stackTrace": e.stack_trace,
            }))
            .expect("an error serializes");
            let errors = record.function_errors + 1;
            let too_old = now - record.enqueued_at_ms > spec.max_event_age_ms as i64;
            if errors > spec.max_retries || too_old {
                let condition = if too_old {
                    "EventAgeExceeded"
                } else {
                    "RetriesExhausted"
                };
                let status = fail(
                    platform,
                    inv,
                    spec.on_failure.as_ref(),
                    &record,
                    condition,
                    &error,
                    &rec.version,
                )
                .await;
                Finish::Done {
                    status,
                    result: Some(error),
                    version: Some(rec.version.clone()),
                    function_error: true,
                }
            } else {
                Finish::Retry {
                    at_ms: now
                        + retry_delay_ms(inv.config.retry_base_ms, errors, &record.id) as i64,
                    function_error: true,
                    result: Some(error),
                }
            }
        }
        // The platform could not run it (throttled, no capacity, a start that failed):
        // not the function's fault, so it does not count; the event's age still bounds it.
        Err(e) => {
            let error =
                serde_json::to_vec(&json!({"errorType": "Platform", "errorMessage": e.message}))
                    .expect("an error serializes");
            let policy = platform.resolve(&record.function).await.ok();
            let max_age = policy
                .as_ref()
                .map_or(limits::MAX_EVENT_AGE_MS_DEFAULT, |r| {
                    r.function.spec.max_event_age_ms
                });
            if now - record.enqueued_at_ms > max_age as i64 || policy.is_none() {
                let on_failure = policy
                    .as_ref()
                    .and_then(|r| r.function.spec.on_failure.clone());
                let status = fail(
                    platform,
                    inv,
                    on_failure.as_ref(),
                    &record,
                    "EventAgeExceeded",
                    &error,
                    "",
                )
                .await;
                Finish::Done {
                    status,
                    result: Some(error),
                    version: None,
                    function_error: false,
                }
            } else {
                Finish::Retry {
                    at_ms: now
                        + retry_delay_ms(
                            inv.config.retry_base_ms,
                            record.attempts.min(8),
                            &record.id,
                        ) as i64,
                    function_error: false,
                    result: Some(error),
                }
            }
        }
    };
    record_end(inv, &record, finish).await;
}

/// An attempt of an event for a flow: starts the execution the event names. The execution's
/// name is the event's id, so an attempt made again (its node died before recording the
/// end) finds the execution the first one started: one execution per accepted event.
/// A flow's own failures are its executions' business; what can go wrong here is the
/// start: a flow since deleted or input it refuses (dead-lettered at once, as trying again
/// cannot help), or a store or limit that says "later" (retried within the default event
/// age).
async fn start_flow(
    platform: &Arc<Platform>,
    inv: &Arc<AsyncInvoker>,
    flow: &str,
    record: &AsyncRecord,
    now: i64,
) -> Finish {
    let error_of = |e: &Error| {
        serde_json::to_vec(&json!({"errorType": e.code.as_str(), "errorMessage": e.message}))
            .expect("an error serializes")
    };
    let started = match serde_json::from_slice::<serde_json::Value>(&record.payload) {
        Ok(input) => match platform.flows() {
            Ok(flows) => flows.start(flow, Some(&record.id), input).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(Error::invalid(format!(
            "the event is not JSON ({e}); an execution's input is a JSON value"
        ))),
    };
    match started {
        Ok(s) => Finish::Done {
            status: AsyncStatus::Succeeded,
            result: Some(
                serde_json::to_vec(&json!({
                    "executionId": s.execution.id,
                    "flow": s.execution.flow,
                    "name": s.execution.name,
                }))
                .expect("a result serializes"),
            ),
            version: None,
            function_error: false,
        },
        Err(e)
            if matches!(
                e.code,
                ErrorCode::ExecutionLimitExceeded
                    | ErrorCode::Internal
                    | ErrorCode::StorageError
                    | ErrorCode::StorageFull
            ) && now - record.enqueued_at_ms <= limits::MAX_EVENT_AGE_MS_DEFAULT as i64 =>
        {
            Finish::Retry {
                at_ms: now
                    + retry_delay_ms(inv.config.retry_base_ms, record.attempts.min(8), &record.id)
                        as i64,
                function_error: false,
                result: Some(error_of(&e)),
            }
        }
        Err(e) => {
            tracing::warn!(flow, event = %record.id, error = %e.message, "an event could not start its flow; it is dead-lettered");
            Finish::Done {
                status: AsyncStatus::DeadLettered,
                result: Some(error_of(&e)),
                version: None,
                function_error: false,
            }
        }
    }
}

/// Records an attempt's end (batched with others); a final end frees the event's place.
async fn record_end(inv: &Arc<AsyncInvoker>, record: &AsyncRecord, finish: Finish) {
    let final_status = matches!(finish, Finish::Done { .. });
    let (tx, rx) = oneshot::channel();
    let recorded = match inv
        .finish
        .send(((record.id.clone(), finish.clone()), tx))
        .await
    {
        Ok(()) => rx.await.unwrap_or_else(|_| Err(WriteError::stopped())),
        Err(_) => Err(WriteError::stopped()),
    };
    if let Err(e) = recorded {
        // The attempt stays `running` in the store and is delivered again after a restart.
        tracing::error!(error = %e, id = %record.id, "recording an asynchronous attempt failed");
        return;
    }
    if final_status {
        inv.finished(&record.function);
    }
}

/// A failed invocation's end: its failure destination, or the dead-letter queue.
async fn fail(
    platform: &Arc<Platform>,
    inv: &Arc<AsyncInvoker>,
    destination: Option<&Destination>,
    record: &AsyncRecord,
    condition: &str,
    error: &[u8],
    version: &str,
) -> AsyncStatus {
    match destination {
        None | Some(Destination::Dlq) => AsyncStatus::DeadLettered,
        Some(d) => {
            if deliver(platform, inv, d, record, condition, Err(error), version).await {
                if condition == "EventAgeExceeded" {
                    AsyncStatus::Expired
                } else {
                    AsyncStatus::Failed
                }
            } else {
                // A destination that cannot take it: keep it where it can be redriven.
                AsyncStatus::DeadLettered
            }
        }
    }
}

/// Sends the Lambda-shaped destination record; true when the destination took it.
async fn deliver(
    platform: &Arc<Platform>,
    inv: &Arc<AsyncInvoker>,
    destination: &Destination,
    record: &AsyncRecord,
    condition: &str,
    outcome: Result<&[u8], &[u8]>,
    version: &str,
) -> bool {
    let parse = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(b).into_owned()))
    };
    let (response, function_error) = match outcome {
        Ok(body) => (parse(body), None),
        Err(error) => (parse(error), Some("Unhandled")),
    };
    let body = json!({
        "version": "1.0",
        "timestamp": model::civil::rfc3339_ms(now_ms()),
        "requestContext": {
            "requestId": record.id,
            "functionArn": format!("arn:nimbus:function:default:{}", record.function),
            "condition": condition,
            "approximateInvokeCount": record.attempts,
        },
        "requestPayload": parse(&record.payload),
        "responseContext": {
            "statusCode": 200,
            "executedVersion": version,
            "functionError": function_error,
        },
        "responsePayload": response,
    });
    let body = serde_json::to_vec(&body).expect("a record serializes");
    match destination {
        Destination::Dlq => true,
        // The destination's call continues the event's trace.
        Destination::Function(target) => match inv
            .submit(
                target,
                Bytes::from(body),
                None,
                record.traceparent.clone(),
                None,
                // Queued, never handed off: a destination's record is in no hurry.
                0,
                record.lineage,
            )
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(destination = %target, error = ?e, "a destination function did not take the record");
                false
            }
        },
        Destination::Webhook(url) => {
            let _ = platform;
            match crate::webhook::post(url, body, inv.config.allow_private_webhooks).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(destination = %url, error = %e, "a webhook did not take the record");
                    false
                }
            }
        }
    }
}

/// The delay before retry `n` (1-based): base × 2^(n-1), capped, ±20% jitter derived from
/// the invocation id and `n` (spreads retries of a burst without a random source).
pub(crate) fn retry_delay_ms(base_ms: u64, n: u32, id: &str) -> u64 {
    let delay = base_ms
        .saturating_mul(1u64 << (n.saturating_sub(1)).min(20))
        .min(RETRY_DELAY_MAX_MS);
    let h = model::hash::stable_hash(&[id.as_bytes(), &n.to_le_bytes()]);
    let jitter = (h % 401) as i64 - 200; // -200..=200 per mille of 20%
    (delay as i64 + delay as i64 * jitter / 1000).max(1) as u64
}

/// Renews this node's leases on what it runs and queues again what other nodes' expired
/// leases left running, every third of a lease; what comes back is waiting here.
async fn keep_leases(invoker: Weak<AsyncInvoker>) {
    loop {
        let every = match invoker.upgrade() {
            Some(inv) => Duration::from_millis(inv.config.lease_ms / 3),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(inv) = invoker.upgrade() else { return };
        if inv.stopped.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = inv.queue.renew(&inv.lease()).await {
            // Two more tries before the lease runs out (a third of it each).
            tracing::warn!(error = %e, "renewing this node's asynchronous leases failed");
        }
        match inv.queue.requeue_expired(now_ms()).await {
            Ok(requeued) if !requeued.is_empty() => {
                let mut waiting = inv.waiting.lock().unwrap();
                for (target, n) in requeued {
                    tracing::warn!(%target, n, "asynchronous attempts whose node stopped renewing are delivered again");
                    *waiting.entry(target).or_insert(0) += n;
                }
                drop(waiting);
                inv.wake.notify_one();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "queueing expired asynchronous attempts again failed")
            }
        }
    }
}

/// Takes the store's counts as this node's view of what waits, every `shared_queue_poll`:
/// events any node accepted, plus what runs here. A count this node raised a moment ago
/// for a submission not yet committed may be lowered; the next read raises it again.
async fn follow_others(invoker: Weak<AsyncInvoker>) {
    let mut poll = SHARED_QUEUE_POLL;
    loop {
        tokio::time::sleep(poll).await;
        let Some(inv) = invoker.upgrade() else { return };
        if let Some(platform) = inv.platform.get().and_then(Weak::upgrade) {
            poll = shared_queue_poll(platform.live_nodes());
        }
        if inv.stopped.load(Ordering::Acquire) {
            return;
        }
        let (waiting, pending) = match (inv.queue.waiting().await, inv.queue.pending().await) {
            (Ok(w), Ok(p)) => (w, p),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "reading the shared asynchronous queue failed");
                continue;
            }
        };
        let news = {
            let mut w = inv.waiting.lock().unwrap();
            let running = inv.running.lock().unwrap();
            let mut next: HashMap<String, usize> = running
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(t, n)| (t.clone(), *n))
                .collect();
            for (target, n) in waiting {
                *next.entry(target).or_insert(0) += n;
            }
            let news = next
                .iter()
                .any(|(t, n)| *n > running.get(t).copied().unwrap_or(0) && w.get(t) != Some(n));
            *w = next;
            news
        };
        {
            let mut by_function: HashMap<String, usize> = HashMap::new();
            for (target, n) in pending {
                *by_function
                    .entry(function_of(&target).to_string())
                    .or_insert(0) += n;
            }
            inv.pending_total
                .store(by_function.values().sum(), Ordering::Release);
            *inv.pending.lock().unwrap() = by_function;
        }
        if news {
            inv.wake.notify_one();
        }
    }
}

/// Deletes finished invocations past their retention, once a minute.
async fn sweep(invoker: Weak<AsyncInvoker>) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let Some(inv) = invoker.upgrade() else { return };
        let before = now_ms() - inv.config.retention_ms as i64;
        if let Err(e) = inv.queue.purge(before).await {
            tracing::warn!(error = %e, "purging old asynchronous invocations failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_reads_the_shared_queue_at_a_bounded_rate_whatever_its_size() {
        assert_eq!(shared_queue_poll(1), SHARED_QUEUE_POLL);
        assert_eq!(shared_queue_poll(3), SHARED_QUEUE_POLL);
        assert_eq!(shared_queue_poll(4), SHARED_QUEUE_POLL);
        assert_eq!(shared_queue_poll(100), Duration::from_millis(12_500));
        for nodes in [1, 2, 5, 16, 100, 1_000] {
            let reads = nodes as f64 / shared_queue_poll(nodes).as_secs_f64();
            assert!(
                reads <= SHARED_QUEUE_READS_PER_SECOND_MAX as f64,
                "{nodes} nodes: {reads}/s"
            );
        }
    }

    #[test]
    fn retries_back_off_with_bounded_jitter() {
        let d1 = retry_delay_ms(1000, 1, "a");
        let d2 = retry_delay_ms(1000, 2, "a");
        let d3 = retry_delay_ms(1000, 3, "a");
        assert!((800..=1200).contains(&d1), "{d1}");
        assert!((1600..=2400).contains(&d2), "{d2}");
        assert!((3200..=4800).contains(&d3), "{d3}");
        assert!(retry_delay_ms(1000, 30, "a") <= RETRY_DELAY_MAX_MS * 12 / 10);
    }

    /// A platform on real stores with the queue and workflows on, its triggers started,
    /// and flow `echo` (one Pass state).
    async fn with_flow() -> (tempfile::TempDir, Arc<Platform>) {
        with_flow_and(AsyncConfig::default()).await
    }

    async fn with_flow_and(config: AsyncConfig) -> (tempfile::TempDir, Arc<Platform>) {
        let tmp = tempfile::tempdir().unwrap();
        let db = Arc::new(
            store::SqliteStore::open(&tmp.path().join("db"))
                .await
                .unwrap(),
        );
        let blobs: Arc<dyn store::BlobStore> =
            Arc::new(store::FsBlobStore::new(tmp.path().join("blobs")));
        let code = store::CodeCache::new(tmp.path().join("code"), blobs.clone(), 1 << 20);
        let runtimes = sandbox::Runtimes::install(&tmp.path().join("rt"), None, None).unwrap();
        let pool = sandbox::Pool::new(runtimes, Default::default());
        let platform = Arc::new(Platform::new(db.clone(), blobs, code, pool));
        platform.enable_async(db.clone(), config).await.unwrap();
        platform.enable_flows(db, "node-a");
        platform.load().await.unwrap();
        platform.start_triggers().await.unwrap();
        let definition = json!({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}});
        platform
            .flows()
            .unwrap()
            .put_flow("echo", &definition, "", &[])
            .await
            .unwrap();
        (tmp, platform)
    }

    async fn settled(platform: &Platform, id: &str) -> AsyncRecord {
        for _ in 0..200 {
            let r = platform.async_invocation(id).await.unwrap().unwrap();
            if r.status.is_final() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("event {id} did not settle");
    }

    #[tokio::test]
    async fn an_event_for_a_flow_starts_one_execution_named_by_the_event() {
        let (_tmp, platform) = with_flow().await;
        let (id, _) = platform
            .submit_from(
                "flow/echo",
                Bytes::from_static(br#"{"n": 1}"#),
                Some("timer:t:1000".into()),
                crate::trace::child_of(None).traceparent,
                Some("timer:t".into()),
            )
            .await
            .unwrap();
        let r = settled(&platform, &id).await;
        assert_eq!(r.status, AsyncStatus::Succeeded);
        let result: serde_json::Value =
            serde_json::from_slice(r.result.as_deref().unwrap()).unwrap();
        let flows = platform.flows().unwrap();
        let execution = flows
            .describe(result["executionId"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(
            (execution.name.as_str(), execution.status.as_str()),
            (id.as_str(), "SUCCEEDED")
        );
        assert_eq!(execution.output.as_deref(), Some(r#"{"n":1}"#));
        // The same fire again is the same event; an attempt made again (its node died before
        // recording the end) finds the execution by name: one execution either way.
        let (again, _) = platform
            .submit_from(
                "flow/echo",
                Bytes::from_static(br#"{"n": 1}"#),
                Some("timer:t:1000".into()),
                crate::trace::child_of(None).traceparent,
                Some("timer:t".into()),
            )
            .await
            .unwrap();
        assert_eq!(again, id);
        let restarted = flows
            .start("echo", Some(&id), json!({"n": 1}))
            .await
            .unwrap();
        assert!(!restarted.created);
        assert_eq!(flows.list("echo", None, None, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_event_that_cannot_start_its_flow_is_dead_lettered_at_once_and_an_unknown_flow_refused()
     {
        let (_tmp, platform) = with_flow().await;
        // Not JSON: no retry can make it an execution's input.
        let (id, _) = platform
            .submit_from(
                "flow/echo",
                Bytes::from_static(b"not json"),
                None,
                crate::trace::child_of(None).traceparent,
                None,
            )
            .await
            .unwrap();
        let r = settled(&platform, &id).await;
        assert_eq!((r.status, r.attempts), (AsyncStatus::DeadLettered, 1));
        let error: serde_json::Value =
            serde_json::from_slice(r.result.as_deref().unwrap()).unwrap();
        assert_eq!(error["errorType"], "invalid_request", "{error}");
        // A flow that does not exist is refused when the event is offered, not after.
        let e = platform
            .submit_from(
                "flow/nope",
                Bytes::from_static(b"{}"),
                None,
                crate::trace::child_of(None).traceparent,
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::FlowNotFound);
        // The invoke APIs name functions: a flow's target is not one of them.
        let e = platform
            .submit_async(
                "flow/echo",
                Bytes::from_static(b"{}"),
                None,
                crate::trace::child_of(None).traceparent,
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::FunctionNotFound);
    }

    /// An event another node held when it died (its lease no longer renewed) is run by
    /// this one once the lease is out, while this one runs: not only at a restart.
    #[tokio::test]
    async fn a_dead_nodes_running_event_is_requeued_and_run_here() {
        let config = AsyncConfig {
            node_id: "n1".into(),
            lease_ms: 300,
            ..AsyncConfig::default()
        };
        let (_tmp, platform) = with_flow_and(config).await;
        let queue = platform.asynq().unwrap().queue.clone();
        queue
            .enqueue(&[NewEvent {
                id: "left-behind".into(),
                function: "flow/echo".into(),
                payload: Bytes::from_static(br#"{"n": 7}"#),
                idempotency_key: None,
                traceparent: None,
                source: None,
                now_ms: now_ms(),
                claimed: Some(Lease {
                    node: "n2".into(),
                    until_ms: now_ms() + 200,
                }),
                lineage: 0,
            }])
            .await
            .unwrap();
        let r = settled(&platform, "left-behind").await;
        assert_eq!((r.status, r.attempts), (AsyncStatus::Succeeded, 2));
    }
}
