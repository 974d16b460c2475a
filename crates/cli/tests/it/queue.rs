//! Queue triggers end to end, one module per broker, each publishing with the broker's own
//! Python client from PyPI into the machine's broker (or a private one a test starts, where
//! it must restart it) and watching what the function got.
//!
//! The function (`HANDLER`) prints each record it gets as a `GOT {json}` log line, so a
//! test reads every delivery, duplicates included, from the function's logs. A body tells
//! it what to do: `bad...` is reported in `batchItemFailures`, `fail...` raises (the whole
//! batch fails), `slow...` sleeps ten seconds first (a batch in flight to kill a server
//! under: its log lines are recorded only when the call ends, so `wait_held` tells when it
//! is in flight). Anything else succeeds.

#![allow(dead_code)] // Until the brokers' tests use every helper (issue 18 under way).

mod amqp;
mod mqtt;
mod nats;
mod redis;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Server, test_python};

/// The test function: logs every record, fails as its body says.
pub const HANDLER: &str = concat!(
    "import json, time\n",
    "def handler(event, context):\n",
    "    records = event['Records'] if isinstance(event, dict) else event\n",
    "    failures = []\n",
    "    for r in records:\n",
    "        print('GOT ' + json.dumps(r))\n",
    "        body = r.get('body') if isinstance(r, dict) and 'body' in r else json.dumps(r.get('data'))\n",
    "        if body.startswith('slow'):\n",
    "            time.sleep(10)\n",
    "        if body.startswith('fail'):\n",
    "            raise RuntimeError('told to fail: ' + body)\n",
    "        if body.startswith('bad'):\n",
    "            failures.append({'itemIdentifier': r.get('messageId', r.get('id'))})\n",
    "    return {'batchItemFailures': failures}\n",
);

/// A project of one function `name` (the test handler) with `trigger` (YAML flow mapping
/// of the queue trigger: `{nats: {...}, batch_size: 10}`) and extra function settings
/// (YAML lines at the function's indentation, such as `    max_instances: 1\n`).
pub fn project(
    root: &std::path::Path,
    name: &str,
    trigger: &str,
    extra: &str,
) -> std::path::PathBuf {
    crate::harness::project(
        root,
        name,
        &format!(
            "functions:\n  {name}:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 30000\n{extra}    triggers:\n      - queue: {trigger}\n"
        ),
        &[("main.py", HANDLER)],
    )
}

/// Every record `function` logged (`GOT {json}`), oldest first, duplicates included.
pub async fn received(server: &Server, function: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut path = format!("/v1/functions/{function}/logs?q=GOT%20&limit=1000");
        if let Some(b) = before {
            path.push_str(&format!("&before={b}"));
        }
        let page = server.get_json(&path).await;
        for line in page["lines"].as_array().into_iter().flatten() {
            if let Some(json) = line["message"]
                .as_str()
                .and_then(|m| m.strip_prefix("GOT "))
            {
                out.push(serde_json::from_str(json.trim()).expect("a GOT line is JSON"));
            }
        }
        match page["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    // Pages are newest first.
    out.reverse();
    out
}

/// Waits until `function` logged at least `n` records (or `within` passed); returns them.
pub async fn wait_received(
    server: &Server,
    function: &str,
    n: usize,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let got = received(server, function).await;
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The bodies of `records`, in order.
pub fn bodies(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["body"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The dead-lettered invocations of `function` (`GET /v1/dlq`).
pub async fn dead_letters(server: &Server, function: &str) -> Vec<Value> {
    let page = server
        .get_json(&format!("/v1/dlq?function={function}&limit=1000"))
        .await;
    page.as_array().cloned().unwrap_or_default()
}

/// Waits until `function` has `n` dead letters (or a minute passed); returns them.
pub async fn wait_dead_letters(server: &Server, function: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = dead_letters(server, function).await;
        if d.len() >= n || Instant::now() > deadline {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The queue trigger `name` of `function` as `GET /v1/triggers` shows it.
pub async fn trigger(server: &Server, function: &str, name: &str) -> Value {
    let list = server
        .get_json(&format!("/v1/triggers?function={function}"))
        .await;
    list["triggers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until the trigger's connection is in `state` (`running`, `reconnecting`,
/// `paused`); returns the trigger's view.
pub async fn wait_connection(
    server: &Server,
    function: &str,
    name: &str,
    state: &str,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let t = trigger(server, function, name).await;
        if t["connection"] == state || Instant::now() > deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the trigger holds a message (taken from the broker, not yet settled): a
/// batch is in flight. A function's log lines are recorded when its call ends, so a `slow`
/// call cannot be seen in `received` while it runs.
pub async fn wait_held(server: &Server, function: &str, name: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let t = trigger(server, function, name).await;
        if t["held"].as_u64().is_some_and(|n| n > 0) {
            return;
        }
        assert!(Instant::now() < deadline, "the trigger took nothing: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a Python script with the test virtualenv (nats-py, paho-mqtt, pika, redis),
/// asserting success; returns its standard output.
pub fn python(script: &str) -> String {
    let out = std::process::Command::new(test_python())
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A name no other test (or earlier run against the same broker) uses: streams, queues,
/// topics and groups live in the machine's brokers, shared by every test.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 0xffff_ffff
    )
}

/// A free TCP port on loopback (for a private broker a test starts and restarts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something listens on `port`.
pub fn wait_port(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn bad_queue_specs_are_refused_at_deploy_with_the_field_named() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    for (trigger, expected) in [
        (
            "{mqtt: {url: \"mqtt://127.0.0.1:1883\", topic: \"devices/#/status\"}}",
            "triggers[0].queue.mqtt.topic",
        ),
        (
            "{amqp: {url: \"http://guest:s3cret@127.0.0.1:5672\", queue: q}}",
            "triggers[0].queue.amqp.url",
        ),
        (
            "{redis: {url: \"redis://127.0.0.1\", stream: s}, batch_size: 0}",
            "triggers[0].queue.batch_size",
        ),
        (
            "{nats: {url: \"nats://127.0.0.1\", subject: \"a.>.b\"}}",
            "triggers[0].queue.nats.subject",
        ),
        ("{batch_size: 5}", "exactly one of"),
    ] {
        let dir = project(tmp.path(), &unique("bad"), trigger, "");
        let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
        assert_ne!(run.code, 0, "{trigger} was accepted");
        assert!(run.stderr.contains(expected), "{trigger}: {}", run.stderr);
        assert!(!run.stderr.contains("s3cret"), "{}", run.stderr);
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    }
}

#[tokio::test]
async fn secrets_in_broker_urls_are_never_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    // A user and password the machine's NATS (no authentication) ignores, and a broker
    // that is not there, so that its error is shown too.
    let port = free_port();
    let dir = crate::harness::project(
        tmp.path(),
        "secretive",
        &format!(
            concat!(
                "functions:\n  secretive:\n    runtime: python3\n    handler: main.handler\n    triggers:\n",
                "      - queue: {{name: up, nats: {{url: \"nats://ada:s3cret@127.0.0.1:4222\", subject: {subject}}}}}\n",
                "      - queue: {{name: down, redis: {{url: \"redis://:s3cret@127.0.0.1:{port}/0\", stream: s}}}}\n",
            ),
            subject = unique("sec"),
            port = port
        ),
        &[("main.py", HANDLER)],
    );
    server.deploy(&dir).await;
    wait_connection(
        &server,
        "secretive",
        "up",
        "running",
        Duration::from_secs(30),
    )
    .await;
    let down = wait_connection(
        &server,
        "secretive",
        "down",
        "reconnecting",
        Duration::from_secs(30),
    )
    .await;
    assert!(down["error"].is_string(), "{down}");
    let shown = [
        server.get_json("/v1/functions/secretive").await.to_string(),
        server
            .get_json("/v1/triggers?function=secretive")
            .await
            .to_string(),
        server.cli(&["triggers", "ls", "secretive"]).await.stdout,
        server
            .cli(&["triggers", "ls", "--output", "json"])
            .await
            .stdout,
        server
            .get_json("/v1/events?function=secretive")
            .await
            .to_string(),
    ];
    for text in &shown {
        assert!(!text.contains("s3cret"), "{text}");
    }
    assert!(
        shown[0].contains("nats://ada:****@127.0.0.1:4222"),
        "{}",
        shown[0]
    );
    assert!(
        shown[2].contains("running, ") && shown[2].contains("delivered 0"),
        "{}",
        shown[2]
    );
    assert!(shown[2].contains("reconnecting"), "{}", shown[2]);
}
