//! Observability, black-box: per-request logs under concurrency, log filters and live
//! follow, statistics of a scripted mix, Prometheus metrics checked by promtool, usage
//! against the records, and the per-function log cap.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, header, project};

/// Logs through `context.logger` and `print`, optionally sleeps, fails on request.
const CODE: &str = r#"
import time

def handler(event, context):
    n = event.get("n", 0)
    context.logger.info("start %s" % n)
    print("print %s" % n)
    time.sleep(event.get("sleep", 0))
    for i in range(event.get("lines", 0)):
        print("line %s-%04d %s" % (n, i, "x" * event.get("width", 0)))
    if event.get("fail"):
        raise ValueError("failing on purpose %s" % n)
    context.logger.warning("end %s" % n)
    return {"n": n}
"#;

fn deploy_dir(root: &Path, name: &str, settings: &str) -> std::path::PathBuf {
    let manifest = format!(
        "functions:\n  {name}:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 10000\n{settings}"
    );
    project(root, name, &manifest, &[("main.py", CODE)])
}

async fn call(server: &Server, name: &str, event: Value) -> reqwest::Response {
    server
        .req(Method::POST, &format!("/v1/functions/{name}/invocations"))
        .body(event.to_string())
        .send()
        .await
        .unwrap()
}

/// The messages of a function's stored lines matching `query`, oldest first.
async fn messages(server: &Server, name: &str, query: &str) -> Vec<String> {
    let page = server
        .get_json(&format!("/v1/functions/{name}/logs?limit=1000&{query}"))
        .await;
    let mut lines: Vec<String> = page["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    lines.reverse();
    lines
}

/// Each call's lines, fetched by its request id, are exactly its own.
async fn check_attribution(server: &Server, name: &str, answers: Vec<reqwest::Response>) {
    for (n, res) in answers.into_iter().enumerate() {
        assert_eq!(res.status(), StatusCode::OK);
        let id = header(&res, "x-nimbus-request-id").to_string();
        let got: BTreeSet<String> = messages(server, name, &format!("request_id={id}"))
            .await
            .into_iter()
            .collect();
        let want: BTreeSet<String> = [
            format!("start {n}"),
            format!("print {n}"),
            format!("end {n}"),
        ]
        .into();
        assert_eq!(got, want, "call {n} ({id})");
    }
}

#[tokio::test]
async fn logs_belong_to_their_request_and_filter_by_level_time_and_text() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    // Ten calls at once on one instance (threads) and on one instance each.
    server
        .deploy(&deploy_dir(
            tmp.path(),
            "shared",
            "    concurrency: 10\n    max_instances: 1\n",
        ))
        .await;
    server
        .deploy(&deploy_dir(
            tmp.path(),
            "single",
            "    concurrency: 1\n    max_instances: 10\n",
        ))
        .await;
    let before_ms = now_ms();
    for name in ["shared", "single"] {
        let events = (0..10).map(|n| json!({"n": n, "sleep": 0.2})).collect();
        let answers = server.invoke_all(name, events).await;
        check_attribution(&server, name, answers).await;
    }
    let shared = |q: &'static str| messages(&server, "shared", q);
    // Level and above: the logger's warnings only; stdout counts as INFO.
    let warn: BTreeSet<String> = shared("level=warn").await.into_iter().collect();
    assert_eq!(warn, (0..10).map(|n| format!("end {n}")).collect());
    assert_eq!(shared("level=info").await.len(), 30);
    assert_eq!(shared("level=error").await.len(), 0);
    // Text and regular expressions.
    assert_eq!(shared("q=print%207").await, vec!["print 7"]);
    let re: BTreeSet<String> = shared("regex=%5Estart%20%5B0-4%5D%24")
        .await
        .into_iter()
        .collect();
    assert_eq!(re, (0..5).map(|n| format!("start {n}")).collect());
    // Time: everything is after `before_ms`, nothing before it.
    assert_eq!(
        messages(&server, "shared", &format!("since={before_ms}"))
            .await
            .len(),
        30
    );
    assert_eq!(
        messages(&server, "shared", &format!("until={before_ms}"))
            .await
            .len(),
        0
    );
    assert_eq!(shared("since=5m").await.len(), 30);
    // Paging: newest first, with a cursor for the next page.
    let page = server.get_json("/v1/functions/shared/logs?limit=20").await;
    let next = page["next_before"].as_i64().expect("a second page");
    let rest = server
        .get_json(&format!("/v1/functions/shared/logs?limit=20&before={next}"))
        .await;
    assert_eq!(rest["lines"].as_array().unwrap().len(), 10);
    assert!(rest["next_before"].is_null());
    // The CLI prints the same filtered lines, one per row, oldest first.
    let run = server
        .cli(&["logs", "shared", "--level", "warn", "--grep", "end 3"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(rows.len(), 1, "{}", run.stdout);
    assert!(
        rows[0].contains("WARN") && rows[0].ends_with("end 3"),
        "{}",
        rows[0]
    );
    let run = server
        .cli(&["logs", "shared", "--since", "yesterday"])
        .await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("is not a time"), "{}", run.stderr);
}

#[tokio::test]
async fn a_follower_sees_a_new_line_within_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    server.deploy(&deploy_dir(tmp.path(), "tail", "")).await;
    assert_eq!(
        call(&server, "tail", json!({"n": 0})).await.status(),
        StatusCode::OK
    );
    // The handler subscribes before it answers: once the headers are here, nothing is
    // missed.
    let res = server
        .req(
            Method::GET,
            "/v1/functions/tail/logs?follow=true&level=warn",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "content-type"), "text/event-stream");
    let mut stream = res.bytes_stream();
    // The CLI follows too.
    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_nimbus"))
        .args(["logs", "tail", "--follow"])
        .env("NIMBUS_ENDPOINT", &server.endpoint)
        .env("NIMBUS_TOKEN", &server.token)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    assert_eq!(
        call(&server, "tail", json!({"n": 42})).await.status(),
        StatusCode::OK
    );
    let mut seen = String::new();
    let arrived = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("end 42") {
                return;
            }
        }
    })
    .await;
    assert!(arrived.is_ok(), "no line within 1 s of the call: {seen:?}");
    // Filtered: the INFO lines of the call did not come.
    assert!(!seen.contains("start 42"), "{seen}");
    println!(
        "followed line arrived {:?} after the call was sent",
        sent.elapsed()
    );
    let stdout = cli.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    // Lines are sent to followers when they are stored, so a line of the call before the
    // CLI connected may come first under load; this call's line must come.
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.ends_with("start 42") {
                return line;
            }
        }
        panic!("the CLI's follow ended");
    })
    .await
    .expect("the CLI printed the followed line");
    assert!(found.contains("INFO"), "{found}");
}

#[tokio::test]
async fn stats_count_a_scripted_mix_and_metrics_pass_promtool() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    server
        .deploy(&deploy_dir(
            tmp.path(),
            "mix",
            "    max_instances: 1\n    queue_timeout_ms: 0\n",
        ))
        .await;
    // One slow call holds the only instance while five more are throttled.
    let slow = tokio::spawn(
        server
            .req(Method::POST, "/v1/functions/mix/invocations")
            .body(json!({"n": -1, "sleep": 1.0}).to_string())
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let res = call(&server, "mix", json!({})).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
    for n in 0..99 {
        let res = call(&server, "mix", json!({"n": n, "sleep": 0.01})).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    for n in 0..10 {
        let res = call(&server, "mix", json!({"n": n, "fail": true})).await;
        assert_eq!(header(&res, "x-nimbus-error-type"), "ValueError");
    }
    let stats = server
        .get_json("/v1/functions/mix/stats?window=1h&step=1m")
        .await;
    let t = &stats["totals"];
    assert_eq!(t["invocations"], 110, "{t}");
    assert_eq!(t["errors"], 10, "{t}");
    assert_eq!(t["throttles"], 5, "{t}");
    assert_eq!(t["retries"], 0, "{t}");
    assert_eq!(t["cold_starts"], 1, "{t}");
    assert_eq!(t["instances_max"], 1, "{t}");
    let (p50, p95, p99) = (
        t["duration_p50_ms"].as_f64().unwrap(),
        t["duration_p95_ms"].as_f64().unwrap(),
        t["duration_p99_ms"].as_f64().unwrap(),
    );
    // 99 calls sleep 10 ms, 10 fail at once, one sleeps a second.
    assert!((10.0..200.0).contains(&p50), "{t}");
    assert!(p50 <= p95 && p95 <= p99 && p99 <= 1_200.0, "{t}");
    let series = stats["series"].as_array().unwrap();
    assert_eq!(series.len(), 60);
    let summed: u64 = series
        .iter()
        .map(|p| p["invocations"].as_u64().unwrap())
        .sum();
    assert_eq!(summed, 110);
    let run = server.cli(&["stats", "mix"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("invocations 110"), "{}", run.stdout);
    assert!(run.stdout.contains("throttles 5"), "{}", run.stdout);
    assert!(run.stdout.contains('█'), "a sparkline: {}", run.stdout);

    let text = metrics(&server).await;
    for expected in [
        "nimbus_invocations_total{function=\"mix\",status=\"succeeded\"} 100",
        "nimbus_invocations_total{function=\"mix\",status=\"failed\"} 10",
        "nimbus_throttles_total{function=\"mix\"} 5",
        "nimbus_invocation_duration_seconds_count{function=\"mix\"} 110",
        "nimbus_instances{function=\"mix\"} 1",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    let path = tmp.path().join("metrics.txt");
    std::fs::write(&path, &text).unwrap();
    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .expect("promtool is installed (Debian package `prometheus`)");
    assert!(
        check.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

#[tokio::test]
async fn usage_is_the_gb_seconds_of_the_records() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &tmp.path().join("data"),
        &["--billing-granularity-ms", "100"],
        &[],
    );
    server
        .deploy(&deploy_dir(tmp.path(), "meter", "    memory_mb: 256\n"))
        .await;
    server
        .deploy(&deploy_dir(
            tmp.path(),
            "kept",
            "    memory_mb: 128\n    min_instances: 1\n",
        ))
        .await;
    for n in 0..20 {
        let sleep = if n % 2 == 0 { 0.02 } else { 0.13 };
        let res = call(&server, "meter", json!({"n": n, "sleep": sleep})).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let records = server
        .get_json("/v1/functions/meter/invocations?limit=1000")
        .await;
    let records = records["invocations"].as_array().unwrap();
    assert_eq!(records.len(), 20);
    let mut gb_s = 0.0;
    for r in records {
        let billed = r["billed_ms"].as_i64().unwrap();
        let handler = r["handler_ms"].as_f64().unwrap();
        assert_eq!(billed % 100, 0, "{r}");
        assert!(billed as f64 >= handler && billed >= 100, "{r}");
        assert_eq!(r["memory_mb"], 256);
        assert_eq!(r["trigger"], "api");
        gb_s += 256.0 / 1024.0 * billed as f64 / 1000.0;
    }
    let usage = server.get_json("/v1/usage?since=1h").await;
    let rows = usage["rows"].as_array().unwrap();
    let meter = rows.iter().find(|r| r["key"] == "meter").expect("meter");
    assert!(
        (meter["gb_seconds"].as_f64().unwrap() - gb_s).abs() < 1e-9,
        "{meter} vs {gb_s}"
    );
    assert_eq!(meter["requests"], 20);
    let cost = 20.0 / 1e6 * 0.20 + gb_s * 0.000_016_666_7;
    assert!(
        (meter["cost_total"].as_f64().unwrap() - cost).abs() < 1e-12,
        "{meter}"
    );
    // The provisioned instance is metered separately, by the second.
    let kept = rows.iter().find(|r| r["key"] == "kept").expect("kept");
    let kept_s = kept["provisioned_instance_seconds"].as_f64().unwrap();
    assert!((1.0..30.0).contains(&kept_s), "{kept}");
    assert!(
        (kept["provisioned_gb_seconds"].as_f64().unwrap() - kept_s / 8.0).abs() < 1e-9,
        "{kept}"
    );
    assert_eq!(kept["requests"], 0);
    let run = server.cli(&["usage", "--by", "day"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("TOTAL"), "{}", run.stdout);
    let run = server
        .cli(&["invocation", "ls", "meter", "--limit", "5"])
        .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 6, "{}", run.stdout);
}

#[tokio::test]
async fn the_log_cap_drops_the_oldest_lines_first() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &tmp.path().join("data"),
        &["--logs-function-max-kb", "16"],
        &[],
    );
    server.deploy(&deploy_dir(tmp.path(), "loud", "")).await;
    server.deploy(&deploy_dir(tmp.path(), "quiet", "")).await;
    assert_eq!(
        call(&server, "quiet", json!({"n": 0})).await.status(),
        StatusCode::OK
    );
    // Five calls of 20 lines of ~500 bytes: 50 KB against a 16 KB cap.
    for n in 0..5 {
        let res = call(&server, "loud", json!({"n": n, "lines": 20, "width": 480})).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let page = server.get_json("/v1/functions/loud/logs?limit=1000").await;
    let kept: Vec<String> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap().to_string())
        .collect();
    let bytes: usize = kept.iter().map(String::len).sum();
    assert!(bytes <= 16 * 1024, "{bytes} bytes kept");
    let dropped = page["dropped_lines"].as_u64().unwrap();
    assert!(dropped > 0, "{page}");
    assert_eq!(
        kept.len() as u64 + dropped,
        5 * 23,
        "every line is kept or counted"
    );
    // The newest survive: the last call's end, not the first call's start.
    assert_eq!(kept[0], "end 4");
    assert!(!kept.contains(&"start 0".to_string()));
    // Another function's lines are untouched.
    assert_eq!(messages(&server, "quiet", "").await.len(), 3);
    let text = metrics(&server).await;
    assert!(
        text.contains(&format!(
            "nimbus_log_lines_dropped_total{{function=\"loud\"}} {dropped}"
        )),
        "{text}"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A stand-in OpenTelemetry collector: an HTTP server on a real socket that keeps every
/// span POSTed to /v1/traces.
async fn collector() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    tokio::task::JoinHandle<()>,
) {
    let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let kept = kept.clone();
            async move {
                assert_eq!(headers["content-type"], "application/json");
                let v: Value = serde_json::from_str(&body).unwrap();
                let resource = &v["resourceSpans"][0];
                assert_eq!(
                    resource["resource"]["attributes"][0],
                    json!({"key": "service.name", "value": {"stringValue": "nimbus-test"}})
                );
                for s in resource["scopeSpans"][0]["spans"].as_array().unwrap() {
                    kept.lock().unwrap().push(s.clone());
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, spans, task)
}

/// Waits (bounded) for a span matching `pred`.
async fn span_where(spans: &std::sync::Mutex<Vec<Value>>, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..250 {
        if let Some(s) = spans.lock().unwrap().iter().find(|s| pred(s)) {
            return s.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no such span among {:#?}", spans.lock().unwrap());
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map_or(&Value::Null, |a| &a["value"])
}

/// Spans go to an OTLP/HTTP collector: a sync call continues the caller's trace with its
/// phases below it, a failure has an error status, an async event's attempt is a child of
/// its accept span, a web function's app sees its call's span, and a collector that is gone
/// costs dropped spans, counted.
#[tokio::test]
async fn spans_are_exported_over_otlp() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, spans, receiver) = collector().await;
    let server = Server::start_with(
        &tmp.path().join("data"),
        &[
            "--otlp-endpoint",
            &url,
            "--otlp-service-name",
            "nimbus-test",
        ],
        &[],
    );
    server.deploy(&deploy_dir(tmp.path(), "traced", "")).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let res = server
        .req(Method::POST, "/v1/functions/traced/invocations")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body(json!({"n": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let request_id = header(&res, "x-nimbus-request-id").to_string();
    let span_id = header(&res, "traceparent")[36..52].to_string();
    let record = server
        .get_json(&format!("/v1/invocations/{request_id}"))
        .await;
    assert_eq!(
        record["traceparent"],
        header(&res, "traceparent"),
        "{record}"
    );

    let span = span_where(&spans, |s| s["spanId"] == span_id.as_str()).await;
    assert_eq!(span["traceId"], trace_id);
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(span["name"], "traced");
    assert_eq!(span["kind"], 2);
    assert_eq!(
        attr(&span, "faas.invocation_id")["stringValue"],
        request_id.as_str()
    );
    assert_eq!(attr(&span, "faas.coldstart")["boolValue"], true);
    assert!(span.get("status").is_none(), "{span}");
    let handler = span_where(&spans, |s| {
        s["parentSpanId"] == span_id.as_str() && s["name"] == "handler"
    })
    .await;
    let ns = |s: &Value, k: &str| s[k].as_str().unwrap().parse::<u64>().unwrap();
    assert!(ns(&handler, "startTimeUnixNano") >= ns(&span, "startTimeUnixNano"));
    assert!(ns(&handler, "endTimeUnixNano") <= ns(&span, "endTimeUnixNano"));
    span_where(&spans, |s| {
        s["parentSpanId"] == span_id.as_str() && s["name"] == "sandbox"
    })
    .await;

    // The stored records lead from the trace back to the call.
    let run = server
        .cli(&[
            "invocation",
            "ls",
            "traced",
            "--trace-id",
            trace_id,
            "--output",
            "json",
        ])
        .await;
    let listed: Value = serde_json::from_str(&run.stdout).unwrap();
    let listed = listed["invocations"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["request_id"], request_id.as_str());
    assert_eq!(listed[0]["traceparent"], record["traceparent"]);
    let run = server
        .cli(&["invocation", "ls", "traced", "--trace-id", "nope"])
        .await;
    assert!(
        run.stderr.contains("is not a trace id (32 hex digits"),
        "{}",
        run.stderr
    );

    // A failure, without a caller's trace: a root span with an error status.
    let res = call_json(&server, "traced", json!({"fail": true})).await;
    let failed_id = res[36..52].to_string();
    let failed = span_where(&spans, |s| s["spanId"] == failed_id.as_str()).await;
    assert!(failed.get("parentSpanId").is_none(), "{failed}");
    assert_eq!(
        failed["status"],
        json!({"code": 2, "message": "ValueError"})
    );

    // Asynchronous: the accept span, then the attempt below it.
    let res = server
        .req(Method::POST, "/v1/functions/traced/invocations")
        .header("x-nimbus-invocation-type", "async")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let accept_id = header(&res, "traceparent")[36..52].to_string();
    let accept = span_where(&spans, |s| s["spanId"] == accept_id.as_str()).await;
    assert_eq!(accept["name"], "traced accept");
    let attempt = span_where(&spans, |s| s["parentSpanId"] == accept_id.as_str()).await;
    assert_eq!(attempt["traceId"], accept["traceId"]);
    assert_eq!(attr(&attempt, "nimbus.trigger")["stringValue"], "async");

    // A web function (a Node.js HTTP server) sees the call's span as its request's
    // traceparent, and the call is exported like any other.
    let web = project(
        tmp.path(),
        "web",
        "functions:\n  web:\n    runtime: nodejs\n    type: http\n    handler: server.handler\n    url: {auth: anonymous}\n",
        &[(
            "server.js",
            "exports.handler = (req, res) => { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify({traceparent: req.headers.traceparent})); };\n",
        )],
    );
    server.deploy(&web).await;
    let res = server
        .http
        .get(server.url("/fn/web/"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let answered = header(&res, "traceparent").to_string();
    let seen: Value = res.json().await.unwrap();
    assert_eq!(seen["traceparent"], answered.as_str());
    assert!(
        answered.starts_with(&format!("00-{trace_id}-")),
        "{answered}"
    );
    let web_span = span_where(&spans, |s| s["spanId"] == answered[36..52]).await;
    assert_eq!(web_span["name"], "web");
    assert_eq!(web_span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(attr(&web_span, "nimbus.trigger")["stringValue"], "http");

    // The collector goes away: spans are dropped and counted, calls are not slowed.
    receiver.abort();
    let _ = receiver.await;
    let res = call(&server, "traced", json!({})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut dropped = 0.0;
    for _ in 0..250 {
        dropped = metrics(&server)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("nimbus_otlp_spans_dropped_total "))
            .map_or(0.0, |v| v.parse().unwrap());
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dropped > 0.0, "no span counted as dropped");
}

/// The server's Prometheus text.
async fn metrics(server: &Server) -> String {
    let res = server.req(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.text().await.unwrap()
}

/// Calls `name` and returns the answer's `traceparent`.
async fn call_json(server: &Server, name: &str, event: Value) -> String {
    let res = call(server, name, event).await;
    assert_eq!(res.status(), StatusCode::OK);
    header(&res, "traceparent").to_string()
}
