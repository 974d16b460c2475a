//! The timer trigger: functions called (and flows started) on a schedule (`triggers:
//! [{timer: …}]`), each scheduled time at most once, through the durable queue (so retries,
//! event age, destinations and the dead-letter queue apply, and a queued fire is never
//! lost).
//!
//! Every node runs the same loop over the catalog. A fire is claimed in the queue itself:
//! its idempotency key is the timer and the scheduled time, so whichever node queues it
//! first wins and the others get the same invocation back; `timer_state` in the store
//! records how far each schedule got (for catch-up after downtime) and whether the timer is
//! paused. The loop reads the clock once per tick and hands it to `due`, a pure function.
//!
//! Nothing on a fire's way to the queue waits for its own store round trip: whether the
//! timer is paused comes from the node's view (`Platform::trigger_paused`, refreshed from
//! the store every second), the last fire's invocation from memory, and the progress
//! records are written in batches behind the fires. A progress record lost in a crash
//! costs nothing: the catch-up after the restart replays that time, and the queue's
//! idempotency key answers it with the invocation already queued.

mod schedule;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use model::timer::{CatchUp, Overlap, TimerTrigger};
use model::{TriggerKind, limits};
use platform::{Catalog, Changes, Error, Owner, Platform, Trigger};
use store::{MetaStore, TimerProgress};
use tokio::sync::{Semaphore, mpsc, watch};

pub use schedule::Schedule;

/// Fires under way at once at most; the others wait their turn. A fire in flight is a
/// task waiting for the queue's batched commit, so this bounds memory, not writes: the
/// thousand timers of one second go into one or two commits.
const FIRES_IN_FLIGHT_MAX: usize = 2_048;

/// The longest the loop sleeps without looking again.
const TICK_MAX: Duration = Duration::from_secs(1);

/// How often the node's view of paused timers and last fires is read from the store (a
/// pause through another node takes effect here within this).
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// Progress records waiting for the writer; past this, fires wait (backpressure).
const PROGRESS_BUFFER: usize = 4_096;

/// Progress records written in one transaction at most.
const PROGRESS_BATCH_MAX: usize = 1_024;

/// A timer: (its owner's target — a function's name or `flow/NAME` — and its name).
type Key = (String, String);

/// One timer of one function, as the loop follows it.
struct Entry {
    /// The owner's target: what its fires are submitted to.
    function: String,
    spec: TimerTrigger,
    schedule: Schedule,
    /// The next scheduled time to fire.
    next_ms: Option<i64>,
}

/// The last fire of a timer that this node knows of.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LastFire {
    scheduled_ms: i64,
    request_id: String,
}

/// The timer trigger.
pub struct Timers {
    meta: Arc<dyn MetaStore>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Each timer's last queued fire (`overlap: skip` asks whether it still runs): this
    /// node's fires, and other nodes' as the refresh reads them.
    last: Mutex<HashMap<Key, LastFire>>,
    /// To the progress writer.
    progress: mpsc::Sender<TimerProgress>,
    progress_rx: Mutex<Option<mpsc::Receiver<TimerProgress>>>,
}

impl Timers {
    pub fn new(meta: Arc<dyn MetaStore>) -> Arc<Timers> {
        let (progress, progress_rx) = mpsc::channel(PROGRESS_BUFFER);
        Arc::new(Timers {
            meta,
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
            last: Mutex::new(HashMap::new()),
            progress,
            progress_rx: Mutex::new(Some(progress_rx)),
        })
    }

    /// Takes a fire this node or another made as the timer's last, unless a later one is
    /// known.
    fn note_fire(&self, key: Key, fire: LastFire) {
        let mut last = self.last.lock().unwrap();
        match last.get(&key) {
            Some(known) if known.scheduled_ms >= fire.scheduled_ms => {}
            _ => {
                last.insert(key, fire);
            }
        }
    }

    /// Reads what every node recorded (pauses, last fires) into this node's view.
    async fn refresh(&self, platform: &Platform) -> Result<Vec<store::TimerState>, Error> {
        let epoch = platform.paused_epoch();
        let states = self.meta.timer_states(None).await?;
        let paused: HashSet<Key> = states
            .iter()
            .filter(|s| s.paused)
            .map(|s| (s.function.clone(), s.timer.clone()))
            .collect();
        platform.refresh_paused(paused, epoch);
        for s in &states {
            if let (Some(scheduled_ms), Some(id)) = (s.last_scheduled_ms, &s.last_request_id) {
                self.note_fire(
                    (s.function.clone(), s.timer.clone()),
                    LastFire {
                        scheduled_ms,
                        request_id: id.clone(),
                    },
                );
            }
        }
        Ok(states)
    }
}

/// The timers of a function or flow with their place in `triggers`.
fn timers_of<'a>(owner: &Owner<'a>) -> impl Iterator<Item = (usize, &'a TimerTrigger)> + 'a {
    owner
        .triggers
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.timer().map(|t| (i, t)))
}

#[async_trait::async_trait]
impl Trigger for Timers {
    fn kind(&self) -> TriggerKind {
        TriggerKind::Timer
    }

    fn validate(&self, catalog: &Catalog) -> Result<(), Error> {
        for owner in catalog.owners() {
            for (i, t) in timers_of(&owner) {
                Schedule::parse(t).map_err(|e| {
                    Error::invalid(format!("{}: triggers[{i}].timer.{e}", owner.describe()))
                })?;
            }
        }
        Ok(())
    }

    async fn start(
        self: Arc<Self>,
        platform: Arc<Platform>,
        changes: Changes,
    ) -> Result<(), Error> {
        let rx = self.progress_rx.lock().unwrap().take();
        let mut tasks = self.tasks.lock().unwrap();
        if let Some(rx) = rx {
            tasks.push(tokio::spawn(write_progress(
                self.meta.clone(),
                rx,
                self.stop.subscribe(),
            )));
        }
        let me = self.clone();
        let p = platform.clone();
        tasks.push(tokio::spawn(async move { me.run(p, changes).await }));
        let me = self.clone();
        tasks.push(tokio::spawn(async move { me.keep_fresh(platform).await }));
        Ok(())
    }

    fn next_fire_ms(&self, trigger: &model::http::Trigger, after_ms: i64) -> Option<i64> {
        Schedule::parse(trigger.timer()?).ok()?.next_after(after_ms)
    }

    async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// The scheduled times due at `now_ms`: for each timer whose next time has come, that
/// time (a loop that woke late fires the latest due time once, not every one it slept
/// through).
fn due(entries: &HashMap<(String, String), Entry>, now_ms: i64) -> Vec<((String, String), i64)> {
    let mut out: Vec<_> = entries
        .iter()
        .filter_map(|(k, e)| match e.next_ms {
            Some(t) if t <= now_ms => {
                let latest = e
                    .schedule
                    .between(t, now_ms, 1)
                    .last()
                    .copied()
                    .unwrap_or(t);
                Some((k.clone(), latest))
            }
            _ => None,
        })
        .collect();
    out.sort_by(|(ka, ta), (kb, tb)| ta.cmp(tb).then_with(|| ka.cmp(kb)));
    out
}

impl Timers {
    async fn run(self: Arc<Self>, platform: Arc<Platform>, mut changes: Changes) {
        let mut stop = self.stop.subscribe();
        let mut entries: HashMap<(String, String), Entry> = HashMap::new();
        let mut revision = None;
        let fires = Arc::new(Semaphore::new(FIRES_IN_FLIGHT_MAX));
        loop {
            let catalog = changes.borrow_and_update().clone();
            if revision != Some(catalog.revision) {
                revision = Some(catalog.revision);
                self.follow(&platform, &catalog, &mut entries, &fires).await;
            }
            let now = platform::now_ms();
            for (key, scheduled) in due(&entries, now) {
                let entry = entries.get_mut(&key).expect("due names an entry");
                entry.next_ms = entry.schedule.next_after(now.max(scheduled));
                self.spawn_fire(&platform, &fires, &entry.function, &entry.spec, scheduled)
                    .await;
            }
            let next = entries.values().filter_map(|e| e.next_ms).min();
            let sleep = match next {
                Some(t) => {
                    Duration::from_millis((t - platform::now_ms()).max(0) as u64).min(TICK_MAX)
                }
                None => TICK_MAX,
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }

    /// Brings the entries in line with the catalog (functions' timers and flows'): new
    /// timers start from now, after catching up on what they missed since their last
    /// recorded fire; changed ones start over; removed ones go.
    async fn follow(
        self: &Arc<Self>,
        platform: &Arc<Platform>,
        catalog: &Catalog,
        entries: &mut HashMap<(String, String), Entry>,
        fires: &Arc<Semaphore>,
    ) {
        let states: HashMap<(String, String), store::TimerState> = match self
            .refresh(platform)
            .await
        {
            Ok(s) => s
                .into_iter()
                .map(|s| ((s.function.clone(), s.timer.clone()), s))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e.message, "reading the timers' state failed; no catch-up this time");
                HashMap::new()
            }
        };
        let mut seen = std::collections::HashSet::new();
        let now = platform::now_ms();
        for owner in catalog.owners() {
            for (_, t) in timers_of(&owner) {
                let key = (owner.target.to_string(), t.name.clone());
                seen.insert(key.clone());
                if entries.get(&key).is_some_and(|e| e.spec == *t) {
                    continue;
                }
                let Ok(schedule) = Schedule::parse(t) else {
                    // Refused at deploy; a spec stored before that check is skipped.
                    continue;
                };
                // What was missed since the last fire, but nothing from before the
                // function's last change (an edited schedule's past is not its own).
                let missed = match states.get(&key) {
                    Some(s) if !s.paused => match s.last_scheduled_ms {
                        Some(last) => schedule.between(
                            last.max(owner.updated_at_ms),
                            now,
                            limits::TIMER_CATCH_UP_MAX,
                        ),
                        None => Vec::new(),
                    },
                    _ => Vec::new(),
                };
                let replay: &[i64] = match t.catch_up {
                    CatchUp::None => &[],
                    CatchUp::Last => missed.last().map(std::slice::from_ref).unwrap_or(&[]),
                    CatchUp::All => &missed,
                };
                for scheduled in replay {
                    self.spawn_fire(platform, fires, owner.target, t, *scheduled)
                        .await;
                }
                entries.insert(
                    key,
                    Entry {
                        function: owner.target.to_string(),
                        spec: t.clone(),
                        next_ms: schedule.next_after(now),
                        schedule,
                    },
                );
            }
        }
        entries.retain(|k, _| seen.contains(k));
    }

    /// Queues the fire of `scheduled_ms` in a task of its own (bounded by `fires`).
    async fn spawn_fire(
        self: &Arc<Self>,
        platform: &Arc<Platform>,
        fires: &Arc<Semaphore>,
        function: &str,
        spec: &TimerTrigger,
        scheduled_ms: i64,
    ) {
        let Ok(permit) = fires.clone().acquire_owned().await else {
            return;
        };
        let (me, platform) = (self.clone(), platform.clone());
        let (function, spec) = (function.to_string(), spec.clone());
        tokio::spawn(async move {
            me.fire(&platform, &function, &spec, scheduled_ms).await;
            drop(permit);
        });
    }

    /// Refreshes the node's view every `REFRESH_EVERY` until stopped.
    async fn keep_fresh(self: Arc<Self>, platform: Arc<Platform>) {
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.refresh(&platform).await {
                tracing::warn!(error = %e.message, "reading the timers' state failed; pauses through other nodes wait for the next read");
            }
        }
    }

    /// Fires `scheduled_ms` of a timer unless it is paused, or (`overlap: skip`) its last
    /// fire is still queued or running; records what happened.
    async fn fire(
        &self,
        platform: &Arc<Platform>,
        function: &str,
        spec: &TimerTrigger,
        scheduled_ms: i64,
    ) {
        if platform.trigger_paused(function, &spec.name) {
            return;
        }
        let key = (function.to_string(), spec.name.clone());
        let mut progress = TimerProgress {
            function: function.to_string(),
            timer: spec.name.clone(),
            scheduled_ms,
            now_ms: platform::now_ms(),
            request_id: None,
            error: None,
            skipped: false,
        };
        let last = (spec.overlap == Overlap::Skip)
            .then(|| self.last.lock().unwrap().get(&key).cloned())
            .flatten();
        if let Some(last) = last
            && still_running(platform, &last.request_id).await
        {
            progress.skipped = true;
        } else {
            let idempotency = format!("timer:{}:{scheduled_ms}", spec.name);
            let trace = platform::trace::child_of(None);
            match platform
                .submit_from(
                    function,
                    Bytes::from(event(platform, function, spec, scheduled_ms)),
                    Some(idempotency),
                    trace.traceparent,
                    Some(format!("timer:{}", spec.name)),
                )
                .await
            {
                Ok((id, _)) => {
                    self.note_fire(
                        key,
                        LastFire {
                            scheduled_ms,
                            request_id: id.clone(),
                        },
                    );
                    progress.request_id = Some(id);
                }
                Err(e) => {
                    tracing::warn!(function, timer = %spec.name, error = %e.message, "a timer's fire was not queued");
                    progress.error = Some(e.message);
                }
            }
        }
        // Behind the fire: the writer batches these (see the module's note on a lost one).
        if self.progress.send(progress).await.is_err() {
            tracing::warn!(function, timer = %spec.name, "the timers have stopped; this fire's progress is not recorded");
        }
    }
}

/// Whether the fire queued as `request_id` still runs: its event is not done, or (a flow's
/// fire, done once its execution started) the execution it started is still running.
async fn still_running(platform: &Platform, request_id: &str) -> bool {
    let Ok(Some(r)) = platform.async_invocation(request_id).await else {
        return false;
    };
    if !r.status.is_final() {
        return true;
    }
    if model::trigger::target_flow(&r.function).is_none() {
        return false;
    }
    let execution = r
        .result
        .as_deref()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v["executionId"].as_str().map(str::to_string));
    match (execution, platform.flows()) {
        (Some(id), Ok(flows)) => flows
            .describe(&id)
            .await
            .is_ok_and(|e| e.status == "RUNNING"),
        _ => false,
    }
}

/// Writes progress records in batches until stopped; then what has arrived.
async fn write_progress(
    meta: Arc<dyn MetaStore>,
    mut rx: mpsc::Receiver<TimerProgress>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(PROGRESS_BATCH_MAX);
    loop {
        let stopping = tokio::select! {
            first = rx.recv() => match first {
                Some(p) => {
                    batch.push(p);
                    false
                }
                None => true,
            },
            _ = stop.changed() => true,
        };
        while batch.len() < PROGRESS_BATCH_MAX
            && let Ok(p) = rx.try_recv()
        {
            batch.push(p);
        }
        if !batch.is_empty()
            && let Err(e) = meta.timer_progress(&batch).await
        {
            tracing::warn!(error = %e, fires = batch.len(), "recording timers' fires failed");
        }
        batch.clear();
        if stopping {
            return;
        }
    }
}

/// The event of a fire: the timer's payload, else an EventBridge "Scheduled Event" whose
/// `time` is the scheduled time. `target` is the owner's (a function's name, `flow/NAME`).
fn event(platform: &Platform, target: &str, spec: &TimerTrigger, scheduled_ms: i64) -> Vec<u8> {
    let function = model::trigger::target_flow(target).unwrap_or(target);
    let time = chrono::DateTime::from_timestamp_millis(scheduled_ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    if spec.format == model::timer::EventFormat::Cloudevent {
        // A structured CloudEvent: its time the scheduled time, its data the payload.
        let mut e = platform::bus::CloudEvent::new(
            uuid::Uuid::new_v4().to_string(),
            "nimbus.timer",
            "Scheduled Event",
        );
        e.subject = Some(format!("{function}/{}", spec.name));
        e.time = Some(time);
        e.datacontenttype = Some("application/json".into());
        e.data = Some(platform::bus::Data::Json(
            spec.payload
                .clone()
                .unwrap_or_else(|| serde_json::json!({})),
        ));
        return e.to_structured();
    }
    if let Some(p) = &spec.payload {
        return serde_json::to_vec(p).expect("a payload serializes");
    }
    let aws = platform.aws_identity();
    serde_json::to_vec(&serde_json::json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": aws.account_id,
        "time": time,
        "region": aws.region,
        "resources": [format!(
            "arn:aws:events:{}:{}:rule/{function}-{}",
            aws.region, aws.account_id, spec.name
        )],
        "detail": {},
    }))
    .expect("an event serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(every: &str, next_ms: Option<i64>) -> Entry {
        let spec: TimerTrigger =
            serde_json::from_value(serde_json::json!({"name": "t", "every": every})).unwrap();
        Entry {
            function: "f".into(),
            schedule: Schedule::parse(&spec).unwrap(),
            spec,
            next_ms,
        }
    }

    #[test]
    fn due_fires_the_latest_time_once_and_nothing_early() {
        let mut entries = HashMap::new();
        entries.insert(("f".into(), "a".into()), entry("1s", Some(10_000)));
        entries.insert(("f".into(), "b".into()), entry("1s", Some(12_000)));
        entries.insert(("f".into(), "c".into()), entry("1s", None));
        assert!(due(&entries, 9_999).is_empty());
        assert_eq!(
            due(&entries, 10_000),
            vec![(("f".into(), "a".into()), 10_000)]
        );
        // Woken late: each timer fires its latest due time, once.
        assert_eq!(
            due(&entries, 13_500),
            vec![
                (("f".into(), "a".into()), 13_000),
                (("f".into(), "b".into()), 13_000)
            ]
        );
    }
}
