//! Durable asynchronous invocation against the real server: accepted means done, at
//! least once, with retries, the dead-letter queue, destinations and idempotency.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, project};

const FAST_RETRIES: [&str; 2] = ["--async-retry-base-ms", "100"];

fn server(data: &std::path::Path) -> Server {
    Server::start_with(data, &FAST_RETRIES, &[])
}

/// A project of several Python functions: (name, settings, code).
fn functions(root: &std::path::Path, dir: &str, fns: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let mut manifest = String::from("functions:\n");
    let mut files = Vec::new();
    for (name, settings, code) in fns {
        manifest.push_str(&format!(
            "  {name}:\n    runtime: python3\n    handler: {name}.handler\n{settings}"
        ));
        files.push((format!("{name}.py"), code.to_string()));
    }
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(f, c)| (f.as_str(), c.as_str()))
        .collect();
    project(root, dir, &manifest, &files)
}

async fn submit(server: &Server, target: &str, event: Value, key: Option<&str>) -> (String, bool) {
    let mut req = server
        .req(Method::POST, &format!("/v1/functions/{target}/invocations"))
        .header("x-nimbus-invocation-type", "async")
        .body(event.to_string());
    if let Some(key) = key {
        req = req.header("x-nimbus-idempotency-key", key);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    (
        body["request_id"].as_str().unwrap().to_string(),
        body["duplicate"].as_bool().unwrap(),
    )
}

#[tokio::test]
async fn ten_thousand_events_each_run_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp.path().join("data"));
    let dir = functions(
        tmp.path(),
        "fast",
        &[(
            "fast",
            "    max_instances: 4\n",
            "def handler(event, context):\n    return {'n': event['n'], 'attempt': context.attempt}\n",
        )],
    );
    server.deploy(&dir).await;
    let server = std::sync::Arc::new(server);
    let mut ids = Vec::with_capacity(10_000);
    let started = Instant::now();
    for chunk in 0..50 {
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let s = server.clone();
                tokio::spawn(async move {
                    submit(&s, "fast", json!({"n": chunk * 200 + i}), None)
                        .await
                        .0
                })
            })
            .collect();
        for c in calls {
            ids.push(c.await.unwrap());
        }
    }
    println!("accepted 10,000 events in {:?}", started.elapsed());
    for id in &ids {
        let v = server.settled(id, Duration::from_secs(120)).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        // Once each: one attempt, and the handler saw attempt 1.
        assert_eq!(v["attempts"], 1, "{v}");
        assert_eq!(v["result"]["attempt"], 1, "{v}");
    }
    println!("all done after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_function_failing_twice_succeeds_on_the_third_attempt_after_backoff() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp.path().join("data"));
    let dir = functions(
        tmp.path(),
        "flaky",
        &[(
            "flaky",
            "",
            "def handler(event, context):\n    if context.attempt < 3:\n        raise RuntimeError('attempt %d failed' % context.attempt)\n    return 'third time'\n",
        )],
    );
    server.deploy(&dir).await;
    let (id, _) = submit(&server, "flaky", json!({}), None).await;
    let v = server.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        (v["attempts"].as_u64(), v["function_errors"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(v["result"], "third time");
    // Two retries: 100 ms and 200 ms (±20%) apart at least.
    let took = v["updated_at_ms"].as_i64().unwrap() - v["enqueued_at_ms"].as_i64().unwrap();
    assert!(took >= 240, "three attempts within {took} ms");
}

#[tokio::test]
async fn failures_end_in_the_dead_letter_queue_and_are_redriven_once_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp.path().join("data"));
    let broken = "def handler(event, context):\n    raise ValueError('not yet')\n";
    server
        .deploy(&functions(
            tmp.path(),
            "broken",
            &[("job", "    max_retries: 1\n", broken)],
        ))
        .await;
    let (id, _) = submit(&server, "job", json!({"order": 7}), None).await;
    let v = server.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "dead_lettered", "{v}");
    assert_eq!(v["attempts"], 2);
    assert_eq!(v["error"]["errorType"], "ValueError");
    let listed = server.cli(&["dlq", "ls", "job"]).await;
    assert!(listed.stdout.contains(&id), "{}", listed.stdout);

    let fixed = "def handler(event, context):\n    return {'order': event['order'], 'ok': True}\n";
    server
        .deploy(&functions(
            tmp.path(),
            "fixed",
            &[("job", "    max_retries: 1\n", fixed)],
        ))
        .await;
    let run = server.cli(&["dlq", "redrive", &id]).await;
    assert_eq!(run.stdout.trim(), "redrove 1", "{}", run.stderr);
    let v = server.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["result"], json!({"order": 7, "ok": true}));
    let listed: Value = server.get_json("/v1/dlq?function=job").await;
    assert_eq!(listed, json!([]));
}

/// A sink that fails on purpose, so each record it receives waits in the dead-letter queue
/// where the test can read it.
const SINK: &str = "def handler(event, context):\n    raise RuntimeError('kept for inspection')\n";

async fn sink_records(server: &Server, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let listed: Value = server.get_json("/v1/dlq?function=sink").await;
        let records: Vec<Value> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["payload"].clone())
            .collect();
        if !records.is_empty() || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_success_destination_receives_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp.path().join("data"));
    let dir = functions(
        tmp.path(),
        "dest",
        &[
            (
                "maker",
                "    on_success: {function: sink}\n",
                "def handler(event, context):\n    return {'made': event['what']}\n",
            ),
            ("sink", "    max_retries: 0\n", SINK),
        ],
    );
    server.deploy(&dir).await;
    let (id, _) = submit(&server, "maker", json!({"what": "cake"}), None).await;
    assert_eq!(
        server.settled(&id, Duration::from_secs(20)).await["status"],
        "succeeded"
    );
    let records = sink_records(&server, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["requestContext"]["requestId"], id.as_str());
    assert_eq!(r["requestContext"]["condition"], "Success");
    assert_eq!(r["requestPayload"], json!({"what": "cake"}));
    assert_eq!(r["responsePayload"], json!({"made": "cake"}));
}

#[tokio::test]
async fn an_event_past_its_age_goes_to_the_failure_destination() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp.path().join("data"));
    let dir = functions(
        tmp.path(),
        "age",
        &[
            (
                "stale",
                "    max_retries: 8\n    max_event_age_ms: 1000\n    on_failure: {function: sink}\n",
                "def handler(event, context):\n    raise RuntimeError('down')\n",
            ),
            ("sink", "    max_retries: 0\n", SINK),
        ],
    );
    server.deploy(&dir).await;
    let (id, _) = submit(&server, "stale", json!({"late": true}), None).await;
    let v = server.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "expired", "{v}");
    let records = sink_records(&server, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0]["requestContext"]["condition"],
        "EventAgeExceeded"
    );
    // Given up before its next attempt, or right after its last one.
    let error_type = records[0]["responsePayload"]["errorType"].as_str().unwrap();
    assert!(
        ["EventAgeExceeded", "RuntimeError"].contains(&error_type),
        "{records:?}"
    );
}

#[tokio::test]
async fn an_idempotency_key_runs_an_event_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp.path().join("data"));
    let dir = functions(
        tmp.path(),
        "idem",
        &[(
            "pay",
            "",
            "def handler(event, context):\n    return 'paid'\n",
        )],
    );
    server.deploy(&dir).await;
    let (first, dup) = submit(&server, "pay", json!({"amount": 5}), Some("order-1")).await;
    assert!(!dup);
    let (second, dup) = submit(&server, "pay", json!({"amount": 5}), Some("order-1")).await;
    assert!(dup);
    assert_eq!(first, second);
    let (other, dup) = submit(&server, "pay", json!({"amount": 5}), Some("order-2")).await;
    assert!(!dup && other != first);
    let v = server.settled(&first, Duration::from_secs(20)).await;
    assert_eq!(
        (v["status"].as_str(), v["attempts"].as_u64()),
        (Some("succeeded"), Some(1))
    );
    // The CLI submits too, and says when a key was seen before.
    let run = server
        .cli(&["invoke", "pay", "--async", "--idempotency-key", "order-1"])
        .await;
    assert_eq!(
        run.stdout.trim(),
        format!("{first} (already submitted with this idempotency key)")
    );
    // Oversized and unknown targets are refused before anything is stored.
    let res = server
        .req(Method::POST, "/v1/functions/pay/invocations")
        .header("x-nimbus-invocation-type", "async")
        .body(vec![b'x'; 300 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let res = server
        .req(Method::POST, "/v1/functions/nope/invocations")
        .header("x-nimbus-invocation-type", "async")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_killed_server_loses_no_accepted_event() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = server(&data);
    let dir = functions(
        tmp.path(),
        "slow",
        &[(
            "slow",
            "    max_instances: 4\n",
            "import time\ndef handler(event, context):\n    time.sleep(0.02)\n    return {'n': event['n'], 'attempt': context.attempt}\n",
        )],
    );
    server.deploy(&dir).await;
    let mut ids = Vec::new();
    for n in 0..1000 {
        ids.push(submit(&server, "slow", json!({"n": n}), None).await.0);
    }
    // Some are done, some running, most queued: SIGKILL, no goodbye.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    let server = Server::start_with(&data, &FAST_RETRIES, &[]);
    let mut redelivered = 0;
    for id in &ids {
        let v = server.settled(id, Duration::from_secs(120)).await;
        assert_eq!(v["status"], "succeeded", "{v}");
        let attempts = v["attempts"].as_u64().unwrap();
        assert!((1..=2).contains(&attempts), "{v}");
        if attempts == 2 {
            // Delivered again after the crash, and the handler knew.
            assert_eq!(v["result"]["attempt"], 2, "{v}");
            redelivered += 1;
        }
    }
    println!("all 1,000 accounted for; {redelivered} delivered again after the crash");
}

#[tokio::test]
async fn one_functions_backlog_does_not_hold_up_another() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp.path().join("data"));
    let dir = functions(
        tmp.path(),
        "fair",
        &[
            (
                "hog",
                "    max_instances: 1\n",
                "import time\ndef handler(event, context):\n    time.sleep(0.05)\n",
            ),
            (
                "quick",
                "",
                "def handler(event, context):\n    return 'quick'\n",
            ),
        ],
    );
    server.deploy(&dir).await;
    // 200 events of 50 ms on one instance: 10 s of backlog, submitted first.
    let mut hogs = Vec::new();
    for _ in 0..200 {
        hogs.push(submit(&server, "hog", json!({}), None).await.0);
    }
    let started = Instant::now();
    let mut quick = Vec::new();
    for _ in 0..5 {
        quick.push(submit(&server, "quick", json!({}), None).await.0);
    }
    for id in &quick {
        assert_eq!(
            server.settled(id, Duration::from_secs(30)).await["status"],
            "succeeded"
        );
    }
    println!(
        "quick done {:?} after the hog's backlog was queued",
        started.elapsed()
    );
    // The hog is still working through its backlog, one at a time.
    let last: Value = server
        .get_json(&format!("/v1/invocations/{}", hogs[199]))
        .await;
    assert_eq!(last["status"], "queued", "{last}");
}

#[tokio::test]
async fn a_full_queue_answers_429() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &tmp.path().join("data"),
        &["--async-queue-per-function-max", "3"],
        &[],
    );
    let dir = functions(
        tmp.path(),
        "full",
        &[(
            "slow",
            "    max_instances: 1\n",
            "import time\ndef handler(event, context):\n    time.sleep(1)\n",
        )],
    );
    server.deploy(&dir).await;
    for _ in 0..3 {
        submit(&server, "slow", json!({}), None).await;
    }
    let res = server
        .req(Method::POST, "/v1/functions/slow/invocations")
        .header("x-nimbus-invocation-type", "async")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "queue_full", "{body}");
}

#[tokio::test]
async fn a_failure_webhook_receives_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    // Without the flag a loopback webhook is refused at deploy.
    let refusing = server(&tmp.path().join("refusing"));
    let hooked = functions(
        tmp.path(),
        "refused",
        &[(
            "refused",
            "    on_failure: {webhook: \"http://127.0.0.1:9/hook\"}\n",
            "def handler(event, context):\n    return 1\n",
        )],
    );
    let run = refusing.cli(&["deploy", hooked.to_str().unwrap()]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("--allow-private-webhooks"),
        "{}",
        run.stderr
    );
    drop(refusing);
    let server = Server::start_with(
        &tmp.path().join("data"),
        &[FAST_RETRIES.as_slice(), &["--allow-private-webhooks"]].concat(),
        &[],
    );
    // A one-shot HTTP endpoint: it answers 204 and hands over the body it got.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = conn.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    conn.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    return serde_json::from_str::<Value>(body).unwrap();
                }
            }
        }
    });
    let settings = format!(
        "    max_retries: 0\n    on_failure: {{webhook: \"http://127.0.0.1:{port}/hook\"}}\n"
    );
    let dir = functions(
        tmp.path(),
        "hooked",
        &[(
            "hooked",
            &settings,
            "def handler(event, context):\n    raise KeyError('missing')\n",
        )],
    );
    server.deploy(&dir).await;
    let (id, _) = submit(&server, "hooked", json!({"k": 1}), None).await;
    let v = server.settled(&id, Duration::from_secs(20)).await;
    assert_eq!(v["status"], "failed", "{v}");
    let record = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record["requestContext"]["requestId"], id.as_str());
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestPayload"], json!({"k": 1}));
    assert_eq!(record["responseContext"]["functionError"], "Unhandled");
    assert_eq!(record["responsePayload"]["errorType"], "KeyError");
}

/// An asynchronous call is traced like a synchronous one: the 202 answers the submission's
/// span in the caller's trace, and every attempt runs as a new span of that trace.
#[tokio::test]
async fn attempts_continue_the_submitters_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let server = server(&tmp.path().join("data"));
    let dir = functions(
        tmp.path(),
        "traced",
        &[(
            "traced",
            "",
            "def handler(event, context):\n    if context.attempt == 1:\n        raise RuntimeError('once')\n    return context.traceparent\n",
        )],
    );
    server.deploy(&dir).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let res = server
        .req(Method::POST, "/v1/functions/traced/invocations")
        .header("x-nimbus-invocation-type", "async")
        .header("traceparent", &incoming)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let accepted = crate::harness::header(&res, "traceparent").to_string();
    let body: Value = res.json().await.unwrap();
    let v = server
        .settled(
            body["request_id"].as_str().unwrap(),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["attempts"], 2, "{v}");
    let seen = v["result"].as_str().unwrap();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(parts[1], trace_id, "{seen}");
    // A span of its own: neither the caller's nor the submission's.
    assert!(
        accepted.starts_with(&format!("00-{trace_id}-")),
        "{accepted}"
    );
    assert_ne!(seen, incoming);
    assert_ne!(seen, accepted);
}
