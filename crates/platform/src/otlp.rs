//! OTLP export of call spans: every invocation (and every accepted asynchronous event)
//! becomes a span in its W3C trace, sent in batches as OTLP/HTTP JSON to a collector
//! (Jaeger, Tempo, the OpenTelemetry Collector all take it on port 4318).
//!
//! Written by hand over the HTTP client the server already has: the JSON encoding is a few
//! fields per span, and the opentelemetry SDK would add a second batching pipeline (and
//! tonic/prost for its gRPC transport) next to the recorder that already batches calls off
//! the hot path. Export never slows a call: the recorder hands over a batch with one
//! `try_send`, and what a slow or absent collector cannot take is dropped and counted.

use std::sync::Arc;
use std::time::Duration;

use model::limits;
use tokio::sync::mpsc;

use crate::InvocationRecord;
use crate::metrics::Metrics;
use crate::trace::Span;

/// How long a collector may take to take a batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A failing collector is reported at most this often in the server log.
const WARN_INTERVAL: Duration = Duration::from_secs(60);
/// Spans per request (about 600 bytes each): collectors limit request bodies (the
/// OpenTelemetry Collector to 20 MB, many proxies to 1-2 MB), and a recorder batch at full
/// speed holds thousands of calls.
const SPANS_PER_REQUEST_MAX: usize = 1_000;

/// Where spans go.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans are POSTed to
    /// `<endpoint>/v1/traces`, as `OTEL_EXPORTER_OTLP_ENDPOINT` means.
    pub endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl OtlpConfig {
    /// Checks the endpoint: an http or https URL.
    pub fn new(endpoint: &str, service_name: &str) -> Result<OtlpConfig, String> {
        let url = reqwest::Url::parse(endpoint)
            .map_err(|e| format!("the OTLP endpoint {endpoint:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "the OTLP endpoint {endpoint:?} must be an http:// or https:// URL (OTLP/HTTP)"
            ));
        }
        Ok(OtlpConfig {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            service_name: service_name.to_string(),
        })
    }
}

/// An attribute value, as OTLP types it.
#[derive(Clone, Debug)]
pub enum Attr {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// A finished span to export.
#[derive(Clone, Debug)]
pub struct ExportSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    /// OTLP's SpanKind: 1 internal, 2 server.
    pub kind: u8,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<(&'static str, Attr)>,
    /// Set when the call failed: its error type.
    pub error: Option<String>,
}

const KIND_INTERNAL: u8 = 1;
const KIND_SERVER: u8 = 2;

fn ms_to_ns(ms: f64) -> u64 {
    (ms.max(0.0) * 1_000_000.0) as u64
}

/// A span id for a phase span: random, like the call's own.
fn new_span_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..16].to_string()
}

/// A warm call that waited less than this in the queue is exported as one span: its phases
/// would only repeat it (the handler's time is the call's), at three times the cost.
const QUEUE_SPAN_MIN_MS: f64 = 1.0;

/// The spans of one call: the call itself (a server span named after the function, with
/// the FaaS semantic-convention attributes) and, for a cold start or a call that waited,
/// one span per phase that took time (queue, sandbox, code, initializer, handler) below
/// it, so a slow start shows where its time went.
pub fn call_spans(r: &InvocationRecord) -> Vec<ExportSpan> {
    let trace = &r.trace;
    let t = &r.timings;
    let start_ns = ms_to_ns(r.started_at_ms as f64);
    let phases = [
        ("queue", t.queue_ms),
        ("sandbox", t.sandbox_ms),
        ("code", t.code_ms),
        ("initializer", t.initializer_ms),
        ("handler", t.handler_ms),
    ];
    let total_ms: f64 = phases.iter().map(|(_, ms)| ms.max(0.0)).sum();
    let call_id = trace.span_id().to_string();
    let trace_id = trace.trace_id().to_string();
    let mut spans = Vec::with_capacity(phases.len() + 1);
    let mut at_ns = start_ns;
    let phased = r.cold_start || t.queue_ms >= QUEUE_SPAN_MIN_MS;
    for (name, ms) in phases {
        if !phased || ms <= 0.0 {
            continue;
        }
        let end_ns = at_ns + ms_to_ns(ms);
        spans.push(ExportSpan {
            name: name.to_string(),
            trace_id: trace_id.clone(),
            span_id: new_span_id(),
            parent_span_id: Some(call_id.clone()),
            kind: KIND_INTERNAL,
            start_unix_ns: at_ns,
            end_unix_ns: end_ns,
            attributes: Vec::new(),
            error: None,
        });
        at_ns = end_ns;
    }
    let faas_trigger = if r.trigger == model::TriggerKind::Async {
        "other"
    } else {
        "http"
    };
    spans.push(ExportSpan {
        name: r.function.clone(),
        trace_id,
        span_id: call_id,
        parent_span_id: trace.parent_span_id.clone(),
        kind: KIND_SERVER,
        start_unix_ns: start_ns,
        end_unix_ns: start_ns + ms_to_ns(total_ms),
        attributes: vec![
            ("faas.invoked_name", Attr::Str(r.function.clone())),
            ("faas.version", Attr::Str(r.version.clone())),
            ("faas.invocation_id", Attr::Str(r.request_id.clone())),
            ("faas.trigger", Attr::Str(faas_trigger.to_string())),
            ("faas.coldstart", Attr::Bool(r.cold_start)),
            (
                "faas.max_memory",
                Attr::Int(r.memory_mb as i64 * 1024 * 1024),
            ),
            ("nimbus.trigger", Attr::Str(r.trigger.to_string())),
            ("nimbus.attempt", Attr::Int(r.attempt as i64)),
            ("nimbus.instance_id", Attr::Int(r.instance_id as i64)),
        ],
        error: r.error.as_ref().map(|e| e.error_type.clone()),
    });
    spans
}

/// The span of an accepted asynchronous event: the submission its attempts continue.
pub fn accept_span(
    target: &str,
    request_id: &str,
    start_ms: i64,
    end_ms: i64,
    trace: &Span,
) -> ExportSpan {
    ExportSpan {
        name: format!("{target} accept"),
        trace_id: trace.trace_id().to_string(),
        span_id: trace.span_id().to_string(),
        parent_span_id: trace.parent_span_id.clone(),
        kind: KIND_SERVER,
        start_unix_ns: ms_to_ns(start_ms as f64),
        end_unix_ns: ms_to_ns(end_ms.max(start_ms) as f64),
        attributes: vec![
            ("faas.invoked_name", Attr::Str(target.to_string())),
            ("faas.invocation_id", Attr::Str(request_id.to_string())),
            ("nimbus.invocation_type", Attr::Str("async".to_string())),
        ],
        error: None,
    }
}

/// The OTLP/HTTP JSON body for `spans` (trace and span ids in hex, times and 64-bit
/// integers as decimal strings, as the OTLP JSON mapping says). Written straight into
/// bytes: building a `serde_json::Value` tree first cost more than the rest of a call's
/// telemetry.
pub fn encode(service_name: &str, spans: &[ExportSpan]) -> Vec<u8> {
    use std::io::Write;
    // Strings go through serde_json for their escaping; writing to a Vec cannot fail.
    fn string(out: &mut Vec<u8>, s: &str) {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
    }
    let mut out = Vec::with_capacity(256 + spans.len() * 640);
    out.extend_from_slice(br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"#);
    string(&mut out, service_name);
    out.extend_from_slice(br#"}},{"key":"telemetry.sdk.name","value":{"stringValue":"nimbus"}}]},"scopeSpans":[{"scope":{"name":"nimbus","version":"#);
    string(&mut out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(br#"},"spans":["#);
    for (i, s) in spans.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Ids are hex digits (checked where they are made), so they need no escaping.
        let _ = write!(
            out,
            r#"{{"traceId":"{}","spanId":"{}","#,
            s.trace_id, s.span_id
        );
        if let Some(parent) = &s.parent_span_id {
            let _ = write!(out, r#""parentSpanId":"{parent}","#);
        }
        out.extend_from_slice(br#""name":"#);
        string(&mut out, &s.name);
        let _ = write!(
            out,
            r#","kind":{},"startTimeUnixNano":"{}","endTimeUnixNano":"{}","attributes":["#,
            s.kind, s.start_unix_ns, s.end_unix_ns
        );
        for (j, (key, value)) in s.attributes.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            let _ = write!(out, r#"{{"key":"{key}","value":{{"#);
            match value {
                Attr::Str(v) => {
                    out.extend_from_slice(br#""stringValue":"#);
                    string(&mut out, v);
                }
                Attr::Int(v) => {
                    let _ = write!(out, r#""intValue":"{v}""#);
                }
                Attr::Bool(v) => {
                    let _ = write!(out, r#""boolValue":{v}"#);
                }
            }
            out.extend_from_slice(b"}}");
        }
        out.push(b']');
        if let Some(error) = &s.error {
            // STATUS_CODE_ERROR; a success leaves the status unset, as the spec asks.
            out.extend_from_slice(br#","status":{"code":2,"message":"#);
            string(&mut out, error);
            out.push(b'}');
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}]}]}");
    out
}

/// The sending side: batches go to a task that POSTs them one at a time.
pub struct Exporter {
    tx: mpsc::Sender<Vec<ExportSpan>>,
    metrics: Arc<Metrics>,
}

impl Exporter {
    /// Starts the sending task on the current runtime.
    pub fn start(config: OtlpConfig, metrics: Arc<Metrics>) -> Exporter {
        let (tx, rx) = mpsc::channel(limits::OTLP_QUEUE_BATCHES_MAX);
        tokio::spawn(send_batches(config, rx, metrics.clone()));
        Exporter { tx, metrics }
    }

    /// Hands `spans` to the sender; a full queue (the collector is slow or down) drops them,
    /// counted.
    pub fn export(&self, spans: Vec<ExportSpan>) {
        if spans.is_empty() {
            return;
        }
        let n = spans.len() as u64;
        if self.tx.try_send(spans).is_err() {
            self.metrics.otlp_dropped.inc_by(n);
        }
    }
}

async fn send_batches(
    config: OtlpConfig,
    mut rx: mpsc::Receiver<Vec<ExportSpan>>,
    metrics: Arc<Metrics>,
) {
    let client = match reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot make the OTLP client; spans are not exported");
            return;
        }
    };
    let url = format!("{}/v1/traces", config.endpoint);
    let mut last_warning: Option<tokio::time::Instant> = None;
    while let Some(batch) = rx.recv().await {
        for spans in batch.chunks(SPANS_PER_REQUEST_MAX) {
            send(&client, &url, &config, spans, &metrics, &mut last_warning).await;
        }
    }
}

/// POSTs one request's worth of spans and counts the outcome.
async fn send(
    client: &reqwest::Client,
    url: &str,
    config: &OtlpConfig,
    spans: &[ExportSpan],
    metrics: &Metrics,
    last_warning: &mut Option<tokio::time::Instant>,
) {
    let body = bytes::Bytes::from(encode(&config.service_name, spans));
    let post = || {
        client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    // A kept-alive connection the collector closed meanwhile fails the first try.
    let sent = match post().await {
        Err(e) if e.is_request() || e.is_connect() => post().await,
        other => other,
    };
    let failure = match sent {
        Ok(res) if res.status().is_success() => None,
        Ok(res) => Some(format!("the collector answered {}", res.status())),
        Err(e) => {
            // reqwest's own message is generic; the cause is in its sources.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                why.push_str(": ");
                why.push_str(&cause.to_string());
                source = cause.source();
            }
            Some(why)
        }
    };
    let n = spans.len() as u64;
    match failure {
        None => metrics.otlp_exported.inc_by(n),
        Some(why) => {
            metrics.otlp_dropped.inc_by(n);
            if last_warning.is_none_or(|t| t.elapsed() >= WARN_INTERVAL) {
                *last_warning = Some(tokio::time::Instant::now());
                tracing::warn!(%url, error = %why, "exporting spans failed; they are dropped (counted in nimbus_otlp_spans_dropped_total)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn a_cold_call_is_a_server_span_with_its_phases_below_it() {
        let trace = crate::trace::child_of(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        let record = InvocationRecord {
            request_id: "r1".into(),
            function: "hello".into(),
            trigger: model::TriggerKind::Api,
            source: None,
            attempt: 1,
            memory_mb: 128,
            version: "$LATEST".into(),
            started_at_ms: 1_700_000_000_000,
            cold_start: true,
            init_ms: Some(5.0),
            duration_ms: 2.0,
            instance_id: 7,
            error: Some(sandbox::FunctionError {
                error_type: "ValueError".into(),
                error_message: "bad".into(),
                stack_trace: Vec::new(),
            }),
            logs: Default::default(),
            timings: sandbox::Timings {
                queue_ms: 0.0,
                sandbox_ms: 3.0,
                code_ms: 1.0,
                initializer_ms: 1.0,
                handler_ms: 2.0,
            },
            trace: trace.clone(),
        };
        let spans = call_spans(&record);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["sandbox", "code", "initializer", "handler", "hello"]
        );
        let call = spans.last().unwrap();
        assert_eq!(call.span_id, trace.span_id());
        assert_eq!(call.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(call.end_unix_ns - call.start_unix_ns, 7_000_000);
        // The phases tile the call.
        assert_eq!(spans[0].start_unix_ns, call.start_unix_ns);
        assert_eq!(spans[3].end_unix_ns, call.end_unix_ns);
        assert!(
            spans[..4]
                .iter()
                .all(|s| s.parent_span_id.as_deref() == Some(trace.span_id()))
        );

        let body: Value = serde_json::from_slice(&encode("nimbus \"test\"", &spans)).unwrap();
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "nimbus \"test\""
        );
        let json = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][4];
        assert_eq!(json["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(json["kind"], 2);
        assert_eq!(json["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(json["status"], json!({"code": 2, "message": "ValueError"}));
        let attrs = json["attributes"].as_array().unwrap();
        assert!(attrs.contains(&json!({"key": "faas.coldstart", "value": {"boolValue": true}})));
        assert!(
            attrs.contains(&json!({"key": "faas.max_memory", "value": {"intValue": "134217728"}}))
        );
        assert_eq!(
            body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["parentSpanId"],
            trace.span_id()
        );

        // Warm, without waiting: one span.
        let warm = InvocationRecord {
            cold_start: false,
            error: None,
            timings: sandbox::Timings {
                queue_ms: 0.1,
                handler_ms: 2.0,
                ..Default::default()
            },
            ..record
        };
        let spans = call_spans(&warm);
        assert_eq!(spans.len(), 1);
        let body: Value = serde_json::from_slice(&encode("nimbus", &spans)).unwrap();
        let json = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert!(json.get("status").is_none(), "{json}");
        assert_eq!(json["endTimeUnixNano"], "1700000000002100000");
    }

    #[test]
    fn the_endpoint_must_be_an_http_url() {
        assert!(OtlpConfig::new("http://collector:4318/", "nimbus").is_ok());
        assert_eq!(
            OtlpConfig::new("http://collector:4318/", "nimbus")
                .unwrap()
                .endpoint,
            "http://collector:4318"
        );
        let e = OtlpConfig::new("collector:4317", "nimbus").unwrap_err();
        assert!(e.contains("http:// or https://"), "{e}");
        assert!(OtlpConfig::new("not a url", "nimbus").is_err());
    }
}
