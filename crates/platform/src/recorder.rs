//! The recorder: takes every finished call's record with its log lines, and every lifecycle
//! event, off the invocation path; writes them to the telemetry store in batches; feeds
//! live log followers and the Prometheus metrics; samples instances per minute for
//! statistics and provisioned-time metering; and prunes by age and size.
//!
//! A call costs the hot path one `try_send` on a bounded channel. Everything else happens
//! on the writer task, whose one transaction per batch keeps up with tens of thousands of
//! records a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use model::limits;
use store::TelemetryStore;
use store::telemetry::{
    Batch, ChunkLine, EventRow, LogChunk, LogRow, MinuteSample, RecordRow, Retention,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::metrics::Metrics;
use crate::{InvocationRecord, now_ms};

/// How the recorder meters and how long it keeps things.
#[derive(Clone, Copy, Debug)]
pub struct RecorderConfig {
    /// Billed duration is rounded up to a multiple of this (1 ms as on Lambda today;
    /// 100 ms as Lambda billed until 2020 and Function Compute still can).
    pub billing_granularity_ms: u32,
    pub retention: Retention,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            billing_granularity_ms: 1,
            retention: Retention {
                records_max_age_ms: 7 * 24 * 3_600_000,
                logs_max_age_ms: 7 * 24 * 3_600_000,
                log_bytes_per_function_max: 64 * 1024 * 1024,
                telemetry_max_bytes: limits::TELEMETRY_MAX_MB_DEFAULT as i64 * 1024 * 1024,
            },
        }
    }
}

/// What the writer task receives.
enum Item {
    Call(Arc<InvocationRecord>),
    Event(sandbox::LifecycleEvent),
    /// A span that is no call's (an accepted asynchronous event), for the OTLP exporter.
    Span(crate::otlp::ExportSpan),
    /// Answered once everything sent before it is written.
    Flush(oneshot::Sender<()>),
}

/// The front of the recorder, shared by the platform and the API.
pub struct Recorder {
    tx: mpsc::Sender<Item>,
    follow: broadcast::Sender<Arc<LogRow>>,
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn TelemetryStore>,
    pub config: RecorderConfig,
    /// Whether spans are exported (an OTLP endpoint is set).
    exporting: bool,
}

impl Recorder {
    /// Starts the writer task on the current runtime. `pool` is sampled for instances;
    /// with `otlp`, calls' spans are exported too.
    pub fn start(
        store: Arc<dyn TelemetryStore>,
        pool: Arc<sandbox::Pool>,
        config: RecorderConfig,
        otlp: Option<crate::otlp::OtlpConfig>,
    ) -> Arc<Recorder> {
        let (tx, rx) = mpsc::channel(limits::TELEMETRY_QUEUE_MAX);
        let (follow, _) = broadcast::channel(limits::FOLLOW_BUFFER_LINES);
        let metrics = Arc::new(Metrics::new());
        let exporting = otlp.is_some();
        let writer = Writer {
            exporter: otlp.map(|c| crate::otlp::Exporter::start(c, metrics.clone())),
            store: store.clone(),
            pool,
            follow: follow.clone(),
            metrics: metrics.clone(),
            config,
            minutes: HashMap::new(),
            written_since_prune: HashMap::new(),
        };
        tokio::spawn(writer.run(rx));
        Arc::new(Recorder {
            tx,
            follow,
            metrics,
            store,
            config,
            exporting,
        })
    }

    /// Queues a span for export, when spans are exported; never waits.
    pub(crate) fn span(&self, make: impl FnOnce() -> crate::otlp::ExportSpan) {
        if self.exporting {
            self.send(Item::Span(make()));
        }
    }

    /// Queues a finished call for recording; never waits.
    pub fn call(&self, record: Arc<InvocationRecord>) {
        self.send(Item::Call(record));
    }

    /// Queues a lifecycle event; never waits (it is called under the pool's locks).
    pub fn event(&self, event: &sandbox::LifecycleEvent) {
        self.send(Item::Event(event.clone()));
    }

    fn send(&self, item: Item) {
        if self.tx.try_send(item).is_err() {
            self.metrics.telemetry_dropped.inc();
        }
    }

    /// Waits (at most 5 s) until everything queued before this call is written, so a query
    /// that follows sees it.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        let flushed = async {
            if self.tx.send(Item::Flush(tx)).await.is_ok() {
                let _ = rx.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), flushed).await;
    }

    /// Live log lines from now on.
    pub fn follow(&self) -> broadcast::Receiver<Arc<LogRow>> {
        self.follow.subscribe()
    }
}

/// The billed milliseconds of a call: the function's own time (code load, initializer and
/// handler) rounded up to the granularity, at least one unit. Starting the sandbox is the
/// platform's time and is not billed.
pub(crate) fn billed_ms(r: &InvocationRecord, granularity_ms: u32) -> i64 {
    let g = granularity_ms.max(1) as f64;
    let t = &r.timings;
    let ms = if r.cold_start {
        t.code_ms + t.initializer_ms + r.duration_ms
    } else {
        r.duration_ms
    };
    ((ms / g).ceil().max(1.0) * g) as i64
}

/// The writer task's state.
struct Writer {
    store: Arc<dyn TelemetryStore>,
    pool: Arc<sandbox::Pool>,
    follow: broadcast::Sender<Arc<LogRow>>,
    metrics: Arc<Metrics>,
    config: RecorderConfig,
    /// Instance samples not yet written, per function and minute. Each write adds to the
    /// stored minute, so writing part of a minute early loses nothing.
    minutes: HashMap<(String, i64), MinuteSample>,
    /// Log bytes per function since the last prune: a function writing a tenth of its cap
    /// triggers one early.
    written_since_prune: HashMap<String, i64>,
    exporter: Option<crate::otlp::Exporter>,
}

/// How long the writer waits for more items after the first of a batch: at 1,000 calls/s
/// that is ~100 records per transaction instead of one. Each transaction has a fixed cost
/// of about 2 ms of CPU (measured: 20 ms of linger cost 128 µs per chatty call at 1,000/s,
/// 100 ms costs 59 µs); followers and flushes bound how long it may be.
const LINGER: Duration = Duration::from_millis(100);

/// Adds what arrived within `LINGER` to `items`, unless a query is waiting for a flush.
/// The writer sleeps through the linger instead of waking for each item: a wake-up per
/// call would cost more than the write itself.
async fn linger(rx: &mut mpsc::Receiver<Item>, items: &mut Vec<Item>) {
    if items.iter().any(|i| matches!(i, Item::Flush(_))) {
        return;
    }
    tokio::time::sleep(LINGER).await;
    while items.len() < limits::TELEMETRY_BATCH_MAX {
        match rx.try_recv() {
            Ok(item) => items.push(item),
            Err(_) => return,
        }
    }
}

/// How often instances are sampled, and how often the samples are written.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const SAMPLES_WRITTEN_EVERY: u32 = 10;
const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Item>) {
        let mut items = Vec::with_capacity(limits::TELEMETRY_BATCH_MAX);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sample_ms = now_ms();
        let mut ticks = 0u32;
        let mut last_prune = tokio::time::Instant::now();
        loop {
            tokio::select! {
                n = rx.recv_many(&mut items, limits::TELEMETRY_BATCH_MAX) => {
                    if n == 0 {
                        break;
                    }
                    linger(&mut rx, &mut items).await;
                    let flushes = self.write(&mut items).await;
                    if self.prune_due(last_prune) {
                        self.prune().await;
                        last_prune = tokio::time::Instant::now();
                    }
                    // A flush is answered once the samples so far are stored and the caps
                    // applied, so a query after it sees the node as it is.
                    if !flushes.is_empty() {
                        self.write_samples().await;
                    }
                    for done in flushes {
                        let _ = done.send(());
                    }
                }
                _ = tick.tick() => {
                    let now = now_ms();
                    self.sample(now - last_sample_ms, now);
                    last_sample_ms = now;
                    ticks += 1;
                    if ticks.is_multiple_of(SAMPLES_WRITTEN_EVERY) {
                        self.write_samples().await;
                    }
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        self.prune().await;
                        last_prune = tokio::time::Instant::now();
                    }
                }
            }
        }
        self.write_samples().await;
    }

    fn prune_due(&self, last_prune: tokio::time::Instant) -> bool {
        let early = self.config.retention.log_bytes_per_function_max / 10;
        last_prune.elapsed() >= PRUNE_EVERY || self.written_since_prune.values().any(|b| *b > early)
    }

    /// Writes one batch; returns the flushes that were waiting for it.
    async fn write(&mut self, items: &mut Vec<Item>) -> Vec<oneshot::Sender<()>> {
        let mut batch = Batch::default();
        let mut flushes = Vec::new();
        let granularity = self.config.billing_granularity_ms;
        let mut spans = Vec::new();
        for item in items.drain(..) {
            match item {
                Item::Call(r) => {
                    if self.exporter.is_some() {
                        spans.extend(crate::otlp::call_spans(&r));
                    }
                    let billed = billed_ms(&r, granularity);
                    self.metrics.observe(&r, billed);
                    if !r.logs.lines.is_empty() {
                        let lines: Vec<ChunkLine> = r
                            .logs
                            .lines
                            .iter()
                            .map(|l| {
                                let level = level_name(&l.stream);
                                ChunkLine {
                                    time_ms: l.time_ms,
                                    severity: store::telemetry::severity_of(&level),
                                    level,
                                    message: l.message.clone(),
                                }
                            })
                            .collect();
                        let bytes: usize = lines.iter().map(|l| l.message.len()).sum();
                        *self
                            .written_since_prune
                            .entry(r.function.clone())
                            .or_default() += bytes as i64;
                        self.metrics
                            .log_lines
                            .with_label_values(&[&r.function])
                            .inc_by(lines.len() as u64);
                        batch.logs.push(LogChunk {
                            function: r.function.clone(),
                            version: r.version.clone(),
                            request_id: r.request_id.clone(),
                            instance_id: r.instance_id,
                            lines,
                        });
                    }
                    batch.records.push(record_row(&r, billed));
                }
                Item::Event(e) => {
                    self.metrics.event(&e);
                    batch.events.push(event_row(e));
                }
                Item::Span(s) => spans.push(s),
                Item::Flush(done) => flushes.push(done),
            }
        }
        if let Some(exporter) = &self.exporter {
            exporter.export(spans);
        }
        if let Err(e) = self.store.write(&batch).await {
            let lost = (batch.records.len() + batch.events.len()) as u64;
            self.metrics.telemetry_dropped.inc_by(lost);
            tracing::warn!(error = %e, lost, "writing telemetry failed; the batch is lost");
        }
        if self.follow.receiver_count() > 0 {
            for chunk in batch.logs {
                for l in chunk.lines {
                    let _ = self.follow.send(Arc::new(LogRow {
                        seq: 0,
                        time_ms: l.time_ms,
                        function: chunk.function.clone(),
                        version: chunk.version.clone(),
                        request_id: chunk.request_id.clone(),
                        instance_id: chunk.instance_id,
                        severity: l.severity,
                        level: l.level,
                        message: l.message,
                    }));
                }
            }
        }
        flushes
    }

    /// Adds `elapsed_ms` of the pool's present state to the current minute's samples.
    fn sample(&mut self, elapsed_ms: i64, now: i64) {
        let minute_ms = now - now.rem_euclid(60_000);
        let occupancy = self.pool.occupancy();
        self.metrics.set_instances(&occupancy);
        for o in occupancy {
            if o.instances == 0 && o.provisioned == 0 {
                continue;
            }
            let m = self
                .minutes
                .entry((o.function.clone(), minute_ms))
                .or_insert_with(|| MinuteSample {
                    function: o.function.clone(),
                    minute_ms,
                    instances_max: 0,
                    provisioned_instance_ms: 0,
                    provisioned_mb_ms: 0,
                });
            m.instances_max = m.instances_max.max(o.instances);
            m.provisioned_instance_ms += o.provisioned as i64 * elapsed_ms;
            m.provisioned_mb_ms += o.provisioned_mb as i64 * elapsed_ms;
        }
    }

    async fn write_samples(&mut self) {
        if self.minutes.is_empty() {
            return;
        }
        let batch = Batch {
            minutes: self.minutes.drain().map(|(_, m)| m).collect(),
            ..Default::default()
        };
        if let Err(e) = self.store.write(&batch).await {
            tracing::warn!(error = %e, "writing instance samples failed");
        }
    }

    async fn prune(&mut self) {
        self.written_since_prune.clear();
        match self.store.prune(now_ms(), &self.config.retention).await {
            Ok(report) => {
                for (kind, n) in [
                    ("records", report.records_dropped_for_size),
                    ("log_lines", report.log_lines_dropped_for_size),
                    ("events", report.events_dropped_for_size),
                ] {
                    if n > 0 {
                        self.metrics
                            .telemetry_pruned_for_size
                            .with_label_values(&[kind])
                            .inc_by(n);
                    }
                }
                if report.records_dropped_for_size + report.log_lines_dropped_for_size > 0 {
                    tracing::warn!(
                        records = report.records_dropped_for_size,
                        log_lines = report.log_lines_dropped_for_size,
                        "telemetry reached --telemetry-max-mb: the oldest was dropped before its age"
                    );
                }
                self.metrics.telemetry_used_bytes.set(report.used_bytes);
                for (function, lines) in &report.logs_dropped {
                    self.metrics
                        .log_lines_dropped
                        .with_label_values(&[function])
                        .inc_by(*lines);
                    tracing::info!(
                        function,
                        lines,
                        "log cap reached: the oldest lines were dropped"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning telemetry failed"),
        }
    }
}

/// The stored level of a line: the logger's level, or the stream it was written to.
fn level_name(stream: &str) -> String {
    match stream {
        "stdout" | "stderr" => stream.to_string(),
        "WARNING" | "warning" | "warn" => "WARN".into(),
        other => other.to_ascii_uppercase(),
    }
}

/// A lifecycle event as it is stored.
pub fn event_row(e: sandbox::LifecycleEvent) -> EventRow {
    EventRow {
        seq: 0,
        time_ms: e.time_ms,
        function: e.function,
        instance_id: e.instance_id,
        event: e.event.to_string(),
        reason: e.reason,
    }
}

fn record_row(r: &InvocationRecord, billed_ms: i64) -> RecordRow {
    let t = &r.timings;
    let init_ms = if r.cold_start {
        t.sandbox_ms + t.code_ms + t.initializer_ms
    } else {
        0.0
    };
    RecordRow {
        seq: 0,
        request_id: r.request_id.clone(),
        function: r.function.clone(),
        version: r.version.clone(),
        // A named trigger (`timer:nightly`) is what a reader looks for; the kind otherwise.
        trigger: r.source.clone().unwrap_or_else(|| r.trigger.to_string()),
        attempt: r.attempt,
        started_at_ms: r.started_at_ms,
        queue_ms: t.queue_ms,
        init_ms,
        handler_ms: r.duration_ms,
        duration_ms: t.queue_ms + init_ms + r.duration_ms,
        cold: r.cold_start,
        status: if r.error.is_some() {
            "failed"
        } else {
            "succeeded"
        }
        .into(),
        error_type: r.error.as_ref().map(|e| e.error_type.clone()),
        billed_ms,
        memory_mb: r.memory_mb,
        instance_id: r.instance_id,
        traceparent: Some(r.trace.traceparent.clone()),
    }
}
