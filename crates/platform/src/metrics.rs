//! Prometheus metrics of the node: per-function call counters and duration histograms,
//! instance gauges, the asynchronous queue's depth, telemetry drops, and the process's own
//! metrics, in the text exposition format `promtool check metrics` accepts.
//!
//! Counters are updated by the recorder's writer task, not by the calls themselves, so the
//! invocation path pays nothing for them; gauges are read from the pool when scraped.

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::InvocationRecord;

/// Handler durations from 1 ms to 15 minutes (the longest timeout).
const DURATION_BUCKETS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];

pub struct Metrics {
    registry: Registry,
    invocations: IntCounterVec,
    cold_starts: IntCounterVec,
    retries: IntCounterVec,
    throttles: IntCounterVec,
    loops_stopped: IntCounterVec,
    duration: HistogramVec,
    billed_byte_seconds: CounterVec,
    instances: IntGaugeVec,
    node_instances: IntGauge,
    async_queue_depth: IntGaugeVec,
    pub(crate) log_lines: IntCounterVec,
    pub(crate) log_lines_dropped: IntCounterVec,
    pub(crate) telemetry_dropped: IntCounter,
    /// Rows removed before their age to keep the telemetry database under its size cap.
    pub(crate) telemetry_pruned_for_size: IntCounterVec,
    pub(crate) telemetry_used_bytes: IntGauge,
    pub(crate) otlp_exported: IntCounter,
    pub(crate) otlp_dropped: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
            r.register(Box::new(m.clone()))
                .expect("metric names are unique and valid");
            m
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let metrics = Metrics {
            invocations: counter(
                "nimbus_invocations_total",
                "Calls that ran, by function and status (succeeded or failed).",
                &["function", "status"],
            ),
            cold_starts: counter(
                "nimbus_cold_starts_total",
                "Calls that started a new instance.",
                &["function"],
            ),
            retries: counter(
                "nimbus_retries_total",
                "Attempts after the first of asynchronous events.",
                &["function"],
            ),
            throttles: counter(
                "nimbus_throttles_total",
                "Calls refused for lack of capacity (429 Throttled).",
                &["function"],
            ),
            loops_stopped: counter(
                "nimbus_recursive_loops_stopped_total",
                "Bucket events not delivered because they would have started hop 17 of a chain of calls.",
                &["function"],
            ),
            duration: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "nimbus_invocation_duration_seconds",
                        "Time in the function's handler.",
                    )
                    .buckets(DURATION_BUCKETS_S.to_vec()),
                    &["function"],
                )
                .expect("valid metric"),
            ),
            billed_byte_seconds: register(
                &registry,
                CounterVec::new(
                    Opts::new(
                        "nimbus_billed_byte_seconds_total",
                        "Metered compute: memory in bytes times billed seconds (divide by \
                         2^30 for GB-seconds; Prometheus names carry base units).",
                    ),
                    &["function"],
                )
                .expect("valid metric"),
            ),
            instances: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new("nimbus_instances", "Instances alive or starting."),
                    &["function"],
                )
                .expect("valid metric"),
            ),
            node_instances: register(
                &registry,
                IntGauge::new("nimbus_node_instances", "Instances on this node.")
                    .expect("valid metric"),
            ),
            async_queue_depth: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "nimbus_async_queue_depth",
                        "Asynchronous events queued, running or waiting for a retry.",
                    ),
                    &["function"],
                )
                .expect("valid metric"),
            ),
            log_lines: counter(
                "nimbus_log_lines_total",
                "Log lines functions wrote.",
                &["function"],
            ),
            log_lines_dropped: counter(
                "nimbus_log_lines_dropped_total",
                "Stored log lines removed to keep a function under its log cap.",
                &["function"],
            ),
            telemetry_dropped: register(
                &registry,
                IntCounter::new(
                    "nimbus_telemetry_dropped_total",
                    "Records and events not stored because the writer fell behind.",
                )
                .expect("valid metric"),
            ),
            telemetry_pruned_for_size: counter(
                "nimbus_telemetry_pruned_for_size_total",
                "Telemetry removed before its age to keep the database under --telemetry-max-mb, by kind (records, log_lines, events).",
                &["kind"],
            ),
            telemetry_used_bytes: register(
                &registry,
                IntGauge::new(
                    "nimbus_telemetry_used_bytes",
                    "Bytes in use in the telemetry database after the last prune.",
                )
                .expect("valid metric"),
            ),
            otlp_exported: register(
                &registry,
                IntCounter::new(
                    "nimbus_otlp_spans_exported_total",
                    "Spans the OTLP collector took.",
                )
                .expect("valid metric"),
            ),
            otlp_dropped: register(
                &registry,
                IntCounter::new(
                    "nimbus_otlp_spans_dropped_total",
                    "Spans not exported: the collector failed, or fell behind.",
                )
                .expect("valid metric"),
            ),
            registry,
        };
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics register once");
        metrics
    }

    /// Counts a finished call.
    pub(crate) fn observe(&self, r: &InvocationRecord, billed_ms: i64) {
        let f = r.function.as_str();
        let status = if r.error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        self.invocations.with_label_values(&[f, status]).inc();
        if r.cold_start {
            self.cold_starts.with_label_values(&[f]).inc();
        }
        if r.attempt > 1 {
            self.retries.with_label_values(&[f]).inc();
        }
        self.duration
            .with_label_values(&[f])
            .observe(r.duration_ms / 1000.0);
        self.billed_byte_seconds
            .with_label_values(&[f])
            .inc_by(r.memory_mb as f64 * 1024.0 * 1024.0 * billed_ms as f64 / 1000.0);
    }

    /// Counts what a lifecycle event says: throttles, and a deleted function's series go.
    pub(crate) fn event(&self, e: &sandbox::LifecycleEvent) {
        match e.event {
            "throttled" => self.throttles.with_label_values(&[&e.function]).inc(),
            "loop_stopped" => self.loops_stopped.with_label_values(&[&e.function]).inc(),
            "deleted" => self.forget(&e.function),
            _ => {}
        }
    }

    /// Drops the series of a deleted function, so label sets stay bounded by the functions
    /// that exist.
    fn forget(&self, function: &str) {
        let one = [function];
        let _ = self.cold_starts.remove_label_values(&one);
        let _ = self.retries.remove_label_values(&one);
        let _ = self.throttles.remove_label_values(&one);
        let _ = self.loops_stopped.remove_label_values(&one);
        let _ = self.duration.remove_label_values(&one);
        let _ = self.billed_byte_seconds.remove_label_values(&one);
        let _ = self.log_lines.remove_label_values(&one);
        let _ = self.log_lines_dropped.remove_label_values(&one);
        for status in ["succeeded", "failed"] {
            let _ = self.invocations.remove_label_values(&[function, status]);
        }
    }

    pub(crate) fn set_instances(&self, occupancy: &[sandbox::Occupancy]) {
        self.instances.reset();
        let mut total = 0;
        for o in occupancy {
            self.instances
                .with_label_values(&[&o.function])
                .set(o.instances as i64);
            total += o.instances as i64;
        }
        self.node_instances.set(total);
    }

    pub(crate) fn set_queue_depth(&self, pending: &[(String, usize)]) {
        self.async_queue_depth.reset();
        for (function, n) in pending {
            self.async_queue_depth
                .with_label_values(&[function])
                .set(*n as i64);
        }
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> (String, Vec<u8>) {
        let encoder = TextEncoder::new();
        let mut out = Vec::new();
        encoder
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into memory cannot fail");
        (encoder.format_type().to_string(), out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
