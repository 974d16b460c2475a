//! One queue trigger's loop: connect (again, with backoff, after any failure), take from
//! the broker what the function's free slots can run, form batches, call the function,
//! and settle each message (acknowledge, retry later, or bury).
//!
//! Three tasks share the work. The fetcher owns the broker's consumer and asks it for
//! messages while fewer than the trigger's limit are outstanding (taken and not yet
//! settled). The loop (`serve`) holds the messages waiting for a batch or a retry and
//! starts a batch whenever a slot is free (`pick`, a plain function of the held messages
//! and the time). Each batch runs in a task of its own that calls the function, reads the
//! answer and settles its messages, handing back those to retry.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::queue::QueueTrigger;
use model::{ErrorCode, TriggerKind, limits};
use sandbox::Outcome;
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::batch::{self, Answer, Item, Origin};
use super::source::{Connector, Consumer, Message, SourceError, Subscription};
use crate::async_invoke::{DeadLetter, retry_delay_ms};
use crate::trigger::RuntimeStatus;
use crate::{Call, Error, Invoked, Platform, now_ms};

/// The longest the fetcher waits on the broker before it looks at pauses and stops again.
const FETCH_WAIT: Duration = Duration::from_millis(500);

/// Messages asked for in one fetch at most.
const FETCH_MAX: usize = 1_000;

/// How often the loop looks again with nothing else to do: pauses, capacity changes.
const TICK: Duration = Duration::from_millis(250);

/// How often messages held for a retry, or in a running batch, are touched (a broker that
/// redelivers unacknowledged messages after a while is told they are in progress). Well
/// under JetStream's smallest ack wait the spec allows (1 s is its floor; its default is
/// 30 s).
const TOUCH_EVERY: Duration = Duration::from_secs(5);

/// Reconnection backoff: from the first to the longest delay, doubling.
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// A connection attempt that takes longer than this failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the broker is asked for the lag.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// What `QueueTriggers` starts a runner with.
pub(super) struct Setup {
    pub platform: Arc<Platform>,
    pub connector: Arc<dyn Connector>,
    pub function: String,
    pub spec: QueueTrigger,
    pub node_id: String,
}

/// A running trigger, as `QueueTriggers` keeps it.
pub(super) struct Handle {
    /// The spec it runs: a changed spec restarts the runner.
    pub spec: QueueTrigger,
    pub status: Arc<Mutex<RuntimeStatus>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// What the loop and its batches share.
struct Ctx {
    platform: Arc<Platform>,
    connector: Arc<dyn Connector>,
    function: String,
    /// What calls go to: the function, or `function:qualifier`.
    target: String,
    name: String,
    /// `queue:NAME`, the records' trigger.
    source: String,
    kind: &'static str,
    /// The broker's URL, secrets redacted (CloudEvents' `source`).
    url: String,
    spec: QueueTrigger,
    group: String,
    member: String,
    status: Arc<Mutex<RuntimeStatus>>,
    /// Batches running.
    inflight: AtomicUsize,
    /// Messages taken from the broker and not settled yet (held, in flight, or in the
    /// fetcher's hands).
    outstanding: AtomicUsize,
    /// Messages outstanding at most: the batches the function can run at once, full.
    limit: AtomicUsize,
    /// Wakes the fetcher when messages were settled.
    settled: Notify,
    delivered: AtomicU64,
    buried: AtomicU64,
    throttled: AtomicU64,
}

impl Ctx {
    fn set_state(&self, state: &'static str) {
        self.status.lock().unwrap().state = state;
    }

    fn paused(&self) -> bool {
        self.platform.trigger_paused(&self.function, &self.name)
    }

    /// Batches in flight at most now: the spec's bound within the function's capacity.
    async fn concurrency(&self) -> usize {
        let capacity = self.platform.capacity(&self.target).await.unwrap_or(1);
        self.spec.concurrency(capacity) as usize
    }

    fn publish_counts(&self) {
        let mut s = self.status.lock().unwrap();
        s.delivered = self.delivered.load(Ordering::Relaxed);
        s.buried = self.buried.load(Ordering::Relaxed);
        s.throttled = self.throttled.load(Ordering::Relaxed);
        s.held = self.outstanding.load(Ordering::Relaxed) as u64;
    }

    fn origin(&self) -> Origin<'_> {
        Origin {
            kind: self.kind,
            trigger: &self.name,
            url: &self.url,
        }
    }
}

/// A message the trigger holds.
struct Held {
    message: Message,
    /// When the trigger took it: its age (`max_record_age_ms`) counts from here.
    received_ms: i64,
    /// When it came (for the batch window).
    arrived: Instant,
    /// Not before then (a retry's backoff).
    due: Instant,
    /// Calls that failed with it.
    failures: u32,
    /// Calls of it the platform could not start.
    throttles: u32,
}

pub(super) fn start(setup: Setup) -> Handle {
    let source = setup
        .spec
        .source()
        .expect("a validated queue spec names its broker");
    let name = setup.spec.name().to_string();
    // A flow's target (`flow/NAME`) has a `/`, which NATS consumer and MQTT shared
    // subscription names cannot hold; `:` is in no function name, so no two owners meet.
    let group = format!("nimbus-{}-{name}", setup.function.replace('/', ":"));
    let status = Arc::new(Mutex::new(RuntimeStatus {
        state: "connecting",
        ..Default::default()
    }));
    let ctx = Arc::new(Ctx {
        target: match &setup.spec.qualifier {
            Some(q) => format!("{}:{q}", setup.function),
            None => setup.function.clone(),
        },
        source: format!("queue:{name}"),
        kind: source.kind(),
        url: model::queue::redact_url(source.url()),
        member: format!("{group}-{}", setup.node_id),
        group,
        name,
        platform: setup.platform,
        connector: setup.connector,
        function: setup.function,
        spec: setup.spec.clone(),
        status: status.clone(),
        inflight: AtomicUsize::new(0),
        outstanding: AtomicUsize::new(0),
        limit: AtomicUsize::new(0),
        settled: Notify::new(),
        delivered: AtomicU64::new(0),
        buried: AtomicU64::new(0),
        throttled: AtomicU64::new(0),
    });
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(ctx, stop_rx));
    Handle {
        spec: setup.spec,
        status,
        stop,
        task,
    }
}

/// How a subscription ended without a broker error.
enum Ended {
    Stopped,
    Paused,
}

/// Connects, serves, and connects again after a failure, until stopped.
async fn run(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let mut backoff = RECONNECT_FIRST;
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        if ctx.paused() {
            ctx.set_state("paused");
            if sleep_or_stop(TICK, &mut stop).await {
                return;
            }
            continue;
        }
        ctx.set_state(if failures == 0 {
            "connecting"
        } else {
            "reconnecting"
        });
        let concurrency = ctx.concurrency().await;
        let limit = (concurrency * ctx.spec.batch_size as usize).min(limits::QUEUE_HELD_MAX);
        ctx.limit.store(limit, Ordering::Release);
        let sub = Subscription {
            spec: &ctx.spec,
            group: ctx.group.clone(),
            member: ctx.member.clone(),
            prefetch: limit,
        };
        let connected =
            match tokio::time::timeout(CONNECT_TIMEOUT, ctx.connector.connect(&sub)).await {
                Ok(r) => r,
                Err(_) => Err(SourceError::new(format!(
                    "no answer from {} within {} s",
                    ctx.url,
                    CONNECT_TIMEOUT.as_secs()
                ))),
            };
        let ended = match connected {
            Ok(consumer) => {
                if failures > 0 {
                    ctx.platform.record_event(
                        &ctx.function,
                        "trigger_connected",
                        format!("queue trigger {} connected to {} again", ctx.name, ctx.url),
                    );
                    tracing::info!(function = %ctx.function, trigger = %ctx.name, "queue trigger connected again");
                }
                failures = 0;
                backoff = RECONNECT_FIRST;
                {
                    let mut s = ctx.status.lock().unwrap();
                    s.state = "running";
                    s.last_error = None;
                }
                serve(&ctx, consumer, &mut stop).await
            }
            Err(e) => Err(e),
        };
        match ended {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Paused) => continue,
            Err(e) => {
                failures += 1;
                {
                    let mut s = ctx.status.lock().unwrap();
                    s.state = "reconnecting";
                    s.last_error = Some(e.0.clone());
                }
                if failures == 1 {
                    tracing::warn!(function = %ctx.function, trigger = %ctx.name, error = %e, "queue trigger lost its broker; connecting again with backoff");
                    ctx.platform.record_event(
                        &ctx.function,
                        "trigger_disconnected",
                        format!(
                            "queue trigger {} lost {}: {e}; connecting again with backoff",
                            ctx.name, ctx.url
                        ),
                    );
                }
                if sleep_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Sleeps; true when stopped meanwhile.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// A batch's end: the messages to try again, and the key it held (ordered delivery).
struct Done {
    key: Option<String>,
    retry: Vec<Held>,
}

/// Serves one subscription until it fails, the trigger is paused (once the batches in
/// flight are done) or stopped. Messages held and not settled are dropped with it: the
/// broker delivers what was never acknowledged again.
async fn serve(
    ctx: &Arc<Ctx>,
    consumer: Box<dyn Consumer>,
    stop: &mut watch::Receiver<bool>,
) -> Result<Ended, SourceError> {
    let mut held: VecDeque<Held> = VecDeque::new();
    let (msg_tx, mut msg_rx) = mpsc::channel(4);
    let (fetch_stop, fetch_stop_rx) = watch::channel(false);
    let fetcher = tokio::spawn(fetch(ctx.clone(), consumer, msg_tx, fetch_stop_rx));
    let ended = subscription(ctx, stop, &mut msg_rx, &mut held).await;
    // The fetcher (and with it the connection) ends with the subscription; what it took and
    // nobody settled goes back to the broker (at once where the broker can take it back,
    // else when its redelivery timer runs out) and no longer counts against the limit.
    let _ = fetch_stop.send(true);
    msg_rx.close();
    while let Some(m) = msg_rx.recv().await {
        if let Ok(messages) = m {
            ctx.outstanding.fetch_sub(messages.len(), Ordering::AcqRel);
            futures_util::future::join_all(messages.iter().map(|m| m.ack.release())).await;
        }
    }
    if matches!(ended, Ok(Ended::Paused)) {
        futures_util::future::join_all(held.iter().map(|h| h.message.ack.release())).await;
    }
    ctx.outstanding.fetch_sub(held.len(), Ordering::AcqRel);
    ctx.settled.notify_one();
    // Not awaited: it returns within a fetch's wait, and a new subscription need not wait.
    drop(fetcher);
    ended
}

/// `serve`'s loop; `held` is left with what was never settled.
async fn subscription(
    ctx: &Arc<Ctx>,
    stop: &mut watch::Receiver<bool>,
    msg_rx: &mut mpsc::Receiver<Result<Vec<Message>, SourceError>>,
    held: &mut VecDeque<Held>,
) -> Result<Ended, SourceError> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut busy: HashSet<String> = HashSet::new();
    let mut concurrency = ctx.concurrency().await;
    let mut look_again = Instant::now() + Duration::from_secs(1);
    let mut touch_at = Instant::now() + TOUCH_EVERY;
    let batch_size = ctx.spec.batch_size as usize;
    let window = Duration::from_millis(ctx.spec.batch_window_ms as u64);
    loop {
        let now = Instant::now();
        if now >= look_again {
            concurrency = ctx.concurrency().await;
            ctx.limit.store(
                (concurrency * batch_size).min(limits::QUEUE_HELD_MAX),
                Ordering::Release,
            );
            look_again = now + Duration::from_secs(1);
        }
        let paused = ctx.paused();
        let mut wake = now + TICK;
        if paused {
            ctx.set_state("paused");
            if ctx.inflight.load(Ordering::Acquire) == 0 {
                return Ok(Ended::Paused);
            }
        } else {
            // What the fetcher can still bring: a window is worth waiting for only then.
            let room = ctx.outstanding.load(Ordering::Acquire) < ctx.limit.load(Ordering::Acquire);
            while ctx.inflight.load(Ordering::Acquire) < concurrency {
                match pick(held, &busy, ctx.spec.ordered, batch_size, window, room, now) {
                    Pick::Batch(batch) => {
                        let key = ctx.spec.ordered.then(|| batch[0].message.key.clone());
                        if let Some(k) = &key {
                            busy.insert(k.clone());
                        }
                        ctx.inflight.fetch_add(1, Ordering::AcqRel);
                        let (ctx, done) = (ctx.clone(), done_tx.clone());
                        tokio::spawn(async move {
                            let retry = run_batch(&ctx, batch).await;
                            ctx.inflight.fetch_sub(1, Ordering::AcqRel);
                            // A subscription that ended drops the retries: they were never
                            // acknowledged, so the broker delivers them again.
                            if let Err(lost) = done.send(Done { key, retry }) {
                                ctx.outstanding
                                    .fetch_sub(lost.0.retry.len(), Ordering::AcqRel);
                                ctx.settled.notify_one();
                            }
                        });
                    }
                    Pick::Wait(at) => {
                        if let Some(at) = at {
                            wake = wake.min(at);
                        }
                        break;
                    }
                }
            }
        }
        if now >= touch_at {
            futures_util::future::join_all(held.iter().map(|h| h.message.ack.touch())).await;
            touch_at = now + TOUCH_EVERY;
        }
        ctx.publish_counts();
        tokio::select! {
            _ = stop.changed() => return Ok(Ended::Stopped),
            Some(done) = done_rx.recv() => {
                if let Some(k) = done.key {
                    busy.remove(&k);
                }
                // Retries go first: in a key's order they come before anything held.
                for h in done.retry.into_iter().rev() {
                    held.push_front(h);
                }
            }
            m = msg_rx.recv() => match m {
                Some(Ok(messages)) => {
                    let (now, received_ms) = (Instant::now(), now_ms());
                    held.extend(messages.into_iter().map(|message| Held {
                        message,
                        received_ms,
                        arrived: now,
                        due: now,
                        failures: 0,
                        throttles: 0,
                    }));
                }
                Some(Err(e)) => return Err(e),
                None => return Err(SourceError::new("the broker's consumer ended")),
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Takes messages from the broker while fewer than the limit are outstanding.
async fn fetch(
    ctx: Arc<Ctx>,
    mut consumer: Box<dyn Consumer>,
    tx: mpsc::Sender<Result<Vec<Message>, SourceError>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut lag_at = Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        if ctx.paused() {
            if sleep_or_stop(TICK, &mut stop).await {
                return;
            }
            continue;
        }
        let want = ctx
            .limit
            .load(Ordering::Acquire)
            .saturating_sub(ctx.outstanding.load(Ordering::Acquire));
        if want == 0 {
            tokio::select! {
                _ = ctx.settled.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        match consumer.fetch(want.min(FETCH_MAX), FETCH_WAIT).await {
            Ok(messages) if messages.is_empty() => {}
            Ok(messages) => {
                let n = messages.len();
                ctx.outstanding.fetch_add(n, Ordering::AcqRel);
                if let Err(mpsc::error::SendError(Ok(messages))) = tx.send(Ok(messages)).await {
                    // The subscription ended meanwhile (a pause, a stop): these go back to
                    // the broker now, not when its redelivery timer runs out, and no longer
                    // count against the limit.
                    futures_util::future::join_all(messages.iter().map(|m| m.ack.release())).await;
                    ctx.outstanding.fetch_sub(n, Ordering::AcqRel);
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        if Instant::now() >= lag_at {
            let lag = consumer.lag().await;
            ctx.status.lock().unwrap().lag = lag;
            lag_at = Instant::now() + LAG_EVERY;
        }
    }
}

/// What `pick` found.
enum Pick {
    Batch(Vec<Held>),
    /// Nothing to start now; look again by then (`None`: when something comes).
    Wait(Option<Instant>),
}

/// The next batch to start from `held` (in arrival order, retries first), or when to look
/// again. A batch takes due messages, up to `batch_size`; it waits for more until its
/// oldest message has waited `window`, while the fetcher may still bring some (`room`).
/// Ordered, a batch takes one key's messages, never a key in flight (`busy`), and never a
/// message past one of its key that is not due.
fn pick(
    held: &mut VecDeque<Held>,
    busy: &HashSet<String>,
    ordered: bool,
    batch_size: usize,
    window: Duration,
    room: bool,
    now: Instant,
) -> Pick {
    let mut wake: Option<Instant> = None;
    let soonest = |at: Instant, wake: &mut Option<Instant>| {
        *wake = Some(wake.map_or(at, |w| w.min(at)));
    };
    // The chosen messages' places in `held`.
    let mut chosen: Vec<usize> = Vec::new();
    if ordered {
        // Keys seen that cannot go now (busy, or their first message not due, or waiting
        // for their window).
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut i = 0;
        while i < held.len() {
            let h = &held[i];
            let key = h.message.key.as_str();
            if busy.contains(key) || blocked.contains(key) {
                i += 1;
                continue;
            }
            if h.due > now {
                soonest(h.due, &mut wake);
                blocked.insert(key);
                i += 1;
                continue;
            }
            let mut same: Vec<usize> = Vec::new();
            for (j, other) in held.iter().enumerate().skip(i) {
                if same.len() == batch_size {
                    break;
                }
                if other.message.key == key {
                    if other.due > now {
                        break;
                    }
                    same.push(j);
                }
            }
            let full = same.len() == batch_size;
            let waited = h.arrived + window;
            if !full && room && waited > now {
                soonest(waited, &mut wake);
                blocked.insert(key);
                i += 1;
                continue;
            }
            chosen = same;
            break;
        }
    } else {
        let mut first_arrived: Option<Instant> = None;
        for (i, h) in held.iter().enumerate() {
            if h.due > now {
                soonest(h.due, &mut wake);
                continue;
            }
            if chosen.len() < batch_size {
                first_arrived.get_or_insert(h.arrived);
                chosen.push(i);
            }
        }
        if let Some(first) = first_arrived {
            let waited = first + window;
            if chosen.len() < batch_size && room && waited > now {
                soonest(waited, &mut wake);
                chosen.clear();
            }
        }
    }
    if chosen.is_empty() {
        return Pick::Wait(wake);
    }
    let mut batch = Vec::with_capacity(chosen.len());
    let mut rest = VecDeque::with_capacity(held.len() - chosen.len());
    let mut next = chosen.iter().peekable();
    for (i, h) in held.drain(..).enumerate() {
        if next.peek() == Some(&&i) {
            next.next();
            batch.push(h);
        } else {
            rest.push_back(h);
        }
    }
    *held = rest;
    Pick::Batch(batch)
}

/// How a batch's call ended, for its messages.
enum Called {
    /// The platform could not start it (throttled, no capacity): not an attempt.
    NotRun(String),
    /// These messages (by place in the batch) failed, with this error (JSON); the rest
    /// succeeded. `version` is the version that ran.
    Ran {
        failed: Vec<bool>,
        error: Vec<u8>,
        version: String,
    },
}

/// Calls the function with one batch and settles its messages: acknowledges those done,
/// buries those out of retries or too old (then acknowledges them), and hands back those
/// to try again.
async fn run_batch(ctx: &Arc<Ctx>, mut batch: Vec<Held>) -> Vec<Held> {
    let called = call(ctx, &batch).await;
    let now = Instant::now();
    let wall = now_ms();
    let mut settle: Vec<Held> = Vec::new();
    let mut bury: Vec<(Held, &'static str, Vec<u8>, String)> = Vec::new();
    let mut retry: Vec<Held> = Vec::new();
    match called {
        Called::NotRun(message) => {
            ctx.throttled.fetch_add(1, Ordering::Relaxed);
            let error =
                serde_json::to_vec(&json!({"errorType": "Platform", "errorMessage": message}))
                    .expect("an error serializes");
            for mut h in batch {
                if wall - h.received_ms > ctx.spec.max_record_age_ms as i64 {
                    bury.push((h, "EventAgeExceeded", error.clone(), String::new()));
                    continue;
                }
                h.throttles += 1;
                // 50 ms, doubling to 1.6 s: the function's slots free up on their own.
                h.due = now + Duration::from_millis(50 << h.throttles.min(5));
                retry.push(h);
            }
        }
        Called::Ran {
            failed,
            error,
            version,
        } => {
            // Ordered, nothing after a key's first failure may be settled before it: those
            // messages are tried again (not counted as their failures) after it.
            let first_failure = failed.iter().position(|f| *f);
            for (i, mut h) in batch.drain(..).enumerate() {
                if !failed[i] {
                    if ctx.spec.ordered && first_failure.is_some_and(|f| i > f) {
                        retry.push(h);
                    } else {
                        settle.push(h);
                    }
                    continue;
                }
                h.failures += 1;
                let too_old = wall - h.received_ms > ctx.spec.max_record_age_ms as i64;
                if too_old || h.failures > ctx.spec.max_retries {
                    let condition = if too_old {
                        "EventAgeExceeded"
                    } else {
                        "RetriesExhausted"
                    };
                    bury.push((h, condition, error.clone(), version.clone()));
                } else {
                    h.due = now
                        + Duration::from_millis(retry_delay_ms(
                            ctx.spec.retry_delay_ms as u64,
                            h.failures,
                            &h.message.id,
                        ));
                    retry.push(h);
                }
            }
            // Ordered: a retried key's later messages wait behind its failed one, due
            // no earlier.
            if ctx.spec.ordered
                && let Some(due) = retry.iter().filter(|h| h.failures > 0).map(|h| h.due).min()
            {
                for h in &mut retry {
                    h.due = h.due.max(due);
                }
            }
        }
    }
    let delivered = settle.len() as u64;
    for (h, condition, error, version) in bury {
        let item = Item {
            message: &h.message,
            attempt: h.failures.max(1),
            received_ms: h.received_ms,
        };
        let dead = DeadLetter {
            target: ctx.target.clone(),
            payload: batch::event(&ctx.origin(), ctx.spec.format, &[item]),
            source: ctx.source.clone(),
            idempotency_key: dead_letter_key(ctx, &h.message.id),
            attempts: h.failures,
            condition,
            error,
            version,
            enqueued_at_ms: h.received_ms,
        };
        match ctx.platform.bury(dead).await {
            Ok(()) => {
                ctx.buried.fetch_add(1, Ordering::Relaxed);
                settle.push(h);
            }
            Err(e) => {
                // Never acknowledged before it is kept somewhere: try again later.
                tracing::error!(function = %ctx.function, trigger = %ctx.name, error = %e, "a queue message could not be dead-lettered; it is kept and tried again");
                let mut h = h;
                h.due = now + Duration::from_secs(1);
                retry.push(h);
            }
        }
    }
    let settled = settle.len();
    let acks = futures_util::future::join_all(settle.iter().map(|h| h.message.ack.ack())).await;
    for e in acks.into_iter().filter_map(Result::err) {
        // The broker delivers it again: at least once.
        tracing::warn!(function = %ctx.function, trigger = %ctx.name, error = %e, "acknowledging a queue message failed");
    }
    ctx.delivered.fetch_add(delivered, Ordering::Relaxed);
    ctx.outstanding.fetch_sub(settled, Ordering::AcqRel);
    ctx.settled.notify_one();
    retry
}

/// The dead-letter queue's key of a message: one row per message and trigger, however
/// often the broker delivers it.
fn dead_letter_key(ctx: &Ctx, id: &str) -> String {
    let key = format!("queue:{}:{}:{id}", ctx.function, ctx.name);
    if key.len() <= 200 {
        key
    } else {
        format!(
            "queue:{}:{:016x}",
            ctx.name,
            model::hash::stable_hash(&[key.as_bytes()])
        )
    }
}

/// Calls the function with the batch, touching its messages while the call runs.
async fn call(ctx: &Arc<Ctx>, batch: &[Held]) -> Called {
    let items: Vec<Item> = batch
        .iter()
        .map(|h| Item {
            message: &h.message,
            attempt: h.failures + 1,
            received_ms: h.received_ms,
        })
        .collect();
    let event = batch::event(&ctx.origin(), ctx.spec.format, &items);
    if let Some(flow) = model::trigger::target_flow(&ctx.target) {
        return start_flow(ctx, flow, batch, &event).await;
    }
    let call = Call {
        target: ctx.target.clone(),
        request_id: uuid::Uuid::new_v4().to_string(),
        affinity: None,
        trigger: TriggerKind::Queue,
        source: Some(ctx.source.clone()),
        attempt: batch.iter().map(|h| h.failures + 1).max().unwrap_or(1),
        trace: crate::trace::child_of(None),
        client_context: None,
        lineage: 0,
    };
    let invoke = ctx.platform.invoke(call, event);
    tokio::pin!(invoke);
    let invoked = loop {
        tokio::select! {
            r = &mut invoke => break r,
            _ = tokio::time::sleep(TOUCH_EVERY) => {
                futures_util::future::join_all(batch.iter().map(|h| h.message.ack.touch())).await;
            }
        }
    };
    match invoked {
        Err(e) => Called::NotRun(e.message),
        Ok(Invoked {
            record,
            outcome: Outcome::Success { body, .. },
            ..
        }) => {
            let ids: HashSet<&str> = batch.iter().map(|h| h.message.id.as_str()).collect();
            match batch::read_answer(&body, &ids) {
                Answer::AllDone => Called::Ran {
                    failed: vec![false; batch.len()],
                    error: Vec::new(),
                    version: record.version.clone(),
                },
                Answer::Failed(failed) => Called::Ran {
                    failed: batch
                        .iter()
                        .map(|h| failed.contains(&h.message.id))
                        .collect(),
                    error: serde_json::to_vec(&json!({
                        "errorType": "BatchItemFailure",
                        "errorMessage": "the function reported this message in batchItemFailures",
                    }))
                    .expect("an error serializes"),
                    version: record.version.clone(),
                },
                Answer::Malformed(why) => Called::Ran {
                    failed: vec![true; batch.len()],
                    error: serde_json::to_vec(&json!({
                        "errorType": "InvalidBatchResponse",
                        "errorMessage": why,
                    }))
                    .expect("an error serializes"),
                    version: record.version.clone(),
                },
            }
        }
        Ok(Invoked {
            record,
            outcome: Outcome::Error(e),
            ..
        }) => Called::Ran {
            failed: vec![true; batch.len()],
            error: serde_json::to_vec(&json!({
                "errorType": e.error_type,
                "errorMessage": e.error_message,
                "stackTrace": e.stack_trace,
            }))
            .expect("an error serializes"),
            version: record.version.clone(),
        },
    }
}

/// Starts one execution of `flow` with the batch's event as its input. Its name is derived
/// from the trigger and the messages' ids, so a batch the broker delivers again (its
/// acknowledgement lost in a crash) finds the execution it started rather than starting
/// another. A start that says "later" (a store or the running limit) is not the messages'
/// fault, so it does not count as a failure; one that cannot succeed (the flow is gone,
/// the input too large) fails the batch towards its retries and the dead-letter queue.
async fn start_flow(ctx: &Arc<Ctx>, flow: &str, batch: &[Held], event: &[u8]) -> Called {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(ctx.name.as_bytes());
    for h in batch {
        hash.update([0]);
        hash.update(h.message.id.as_bytes());
    }
    let name = format!("queue-{}", &hex::encode(hash.finalize())[..32]);
    let started = match (
        serde_json::from_slice::<serde_json::Value>(event),
        ctx.platform.flows(),
    ) {
        (Ok(input), Ok(flows)) => flows.start(flow, Some(&name), input).await,
        (Err(e), _) => Err(Error::invalid(format!(
            "the batch's event is not JSON: {e}"
        ))),
        (_, Err(e)) => Err(e),
    };
    match started {
        Ok(_) => Called::Ran {
            failed: vec![false; batch.len()],
            error: Vec::new(),
            version: String::new(),
        },
        // Another input under this name: these messages started it before (their
        // receipt times differ after a redelivery); done.
        Err(e) if e.code == ErrorCode::ExecutionExists => Called::Ran {
            failed: vec![false; batch.len()],
            error: Vec::new(),
            version: String::new(),
        },
        Err(e)
            if matches!(
                e.code,
                ErrorCode::ExecutionLimitExceeded
                    | ErrorCode::Internal
                    | ErrorCode::StorageError
                    | ErrorCode::StorageFull
            ) =>
        {
            Called::NotRun(e.message)
        }
        Err(e) => Called::Ran {
            failed: vec![true; batch.len()],
            error: serde_json::to_vec(&json!({
                "errorType": e.code.as_str(),
                "errorMessage": e.message,
            }))
            .expect("an error serializes"),
            version: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::queue::source::NoAck;

    fn message(id: &str, key: &str, at: Instant) -> Held {
        Held {
            message: Message {
                id: id.into(),
                key: key.into(),
                body: Bytes::new(),
                headers: Vec::new(),
                fields: Default::default(),
                published_ms: None,
                ack: Box::new(NoAck),
            },
            received_ms: 0,
            arrived: at,
            due: at,
            failures: 0,
            throttles: 0,
        }
    }

    fn ids(p: Pick) -> Vec<String> {
        match p {
            Pick::Batch(b) => b.into_iter().map(|h| h.message.id).collect(),
            Pick::Wait(_) => Vec::new(),
        }
    }

    #[test]
    fn batches_fill_up_to_their_size_in_order() {
        let t = Instant::now();
        let mut held: VecDeque<Held> = (0..5).map(|i| message(&i.to_string(), "k", t)).collect();
        let none = HashSet::new();
        let p = pick(&mut held, &none, false, 3, Duration::ZERO, true, t);
        assert_eq!(ids(p), ["0", "1", "2"]);
        assert_eq!(
            ids(pick(&mut held, &none, false, 3, Duration::ZERO, true, t)),
            ["3", "4"]
        );
        assert!(matches!(
            pick(&mut held, &none, false, 3, Duration::ZERO, true, t),
            Pick::Wait(None)
        ));
    }

    #[test]
    fn a_window_waits_for_a_full_batch_while_more_can_come() {
        let t = Instant::now();
        let w = Duration::from_millis(200);
        let none = HashSet::new();
        let mut held: VecDeque<Held> = (0..2).map(|i| message(&i.to_string(), "k", t)).collect();
        match pick(&mut held, &none, false, 3, w, true, t) {
            Pick::Wait(Some(at)) => assert_eq!(at, t + w),
            _ => panic!("a batch that is not full waits for its window"),
        }
        // Nothing more can come (the limit is reached): no reason to wait.
        assert_eq!(
            ids(pick(&mut held, &none, false, 3, w, false, t)),
            ["0", "1"]
        );
        let mut held: VecDeque<Held> = (0..2).map(|i| message(&i.to_string(), "k", t)).collect();
        assert_eq!(
            ids(pick(&mut held, &none, false, 3, w, true, t + w)),
            ["0", "1"]
        );
    }

    #[test]
    fn retries_wait_for_their_time() {
        let t = Instant::now();
        let none = HashSet::new();
        let mut later = message("r", "k", t);
        later.due = t + Duration::from_secs(1);
        let mut held: VecDeque<Held> = [later, message("n", "k", t)].into_iter().collect();
        assert_eq!(
            ids(pick(&mut held, &none, false, 10, Duration::ZERO, true, t)),
            ["n"]
        );
        match pick(&mut held, &none, false, 10, Duration::ZERO, true, t) {
            Pick::Wait(Some(at)) => assert_eq!(at, t + Duration::from_secs(1)),
            _ => panic!("the retry is not due"),
        }
    }

    #[test]
    fn ordered_batches_take_one_key_and_never_pass_a_waiting_retry() {
        let t = Instant::now();
        let mut retry = message("a1", "a", t);
        retry.due = t + Duration::from_secs(1);
        let mut held: VecDeque<Held> = [
            retry,
            message("b1", "b", t),
            message("a2", "a", t),
            message("b2", "b", t),
            message("c1", "c", t),
        ]
        .into_iter()
        .collect();
        let mut busy = HashSet::new();
        // Key a waits for its retry; b goes, both of its messages, in order.
        assert_eq!(
            ids(pick(&mut held, &busy, true, 10, Duration::ZERO, true, t)),
            ["b1", "b2"]
        );
        busy.insert("b".to_string());
        busy.insert("c".to_string());
        assert!(matches!(
            pick(&mut held, &busy, true, 10, Duration::ZERO, true, t),
            Pick::Wait(Some(_))
        ));
        let later = t + Duration::from_secs(1);
        assert_eq!(
            ids(pick(
                &mut held,
                &busy,
                true,
                10,
                Duration::ZERO,
                true,
                later
            )),
            ["a1", "a2"]
        );
    }
}
