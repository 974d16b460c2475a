//! The scheduler, black-box: instance caps, queueing and throttling, per-instance
//! concurrency, provisioned instances and scale-down, crashes, hooks, timings.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, header, project};

/// A function that records when it ran and in which process; hooks count and mark.
const CODE: &str = r#"
import os, time
INITS = {"n": 0}

def init(context):
    INITS["n"] += 1
    marker = os.environ.get("INIT_MARKER")
    if marker and not os.path.exists(marker):
        open(marker, "w").write("failed once")
        raise RuntimeError("first initializer fails")

def handler(event, context):
    start = time.time()
    if event.get("pidfile"):
        with open(event["pidfile"], "w") as f:
            f.write(str(os.getpid()))
    time.sleep(event.get("sleep", 0.2))
    return {"pid": os.getpid(), "start": start, "end": time.time(), "inits": INITS["n"]}

def stop(context):
    with open(os.environ["STOP_MARKER"], "a") as f:
        f.write(str(os.getpid()) + "\n")
"#;

fn deploy_dir(root: &Path, name: &str, settings: &str) -> std::path::PathBuf {
    let manifest = format!(
        "functions:\n  {name}:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 10000\n{settings}"
    );
    project(root, name, &manifest, &[("main.py", CODE)])
}

/// Calls `name` `n` times at once with `event`; answers in call order.
async fn parallel(server: &Server, name: &str, n: usize, event: Value) -> Vec<reqwest::Response> {
    server.invoke_all(name, vec![event; n]).await
}

/// The most calls that ran at the same moment, from their [start, end] intervals.
fn max_overlap(intervals: &[(f64, f64)]) -> usize {
    let mut points: Vec<(f64, i32)> = intervals
        .iter()
        .flat_map(|(s, e)| [(*s, 1), (*e, -1)])
        .collect();
    points.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in points {
        now += d;
        max = max.max(now);
    }
    max as usize
}

async fn events(server: &Server, function: &str) -> Vec<Value> {
    let list: Value = server
        .req(
            Method::GET,
            &format!("/v1/events?function={function}&limit=1000"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["events"].as_array().unwrap().clone()
}

/// The processes the calls ran in and their [start, end] intervals; every call must succeed.
async fn runs(
    answers: Vec<reqwest::Response>,
) -> (std::collections::HashSet<i64>, Vec<(f64, f64)>) {
    let mut pids = std::collections::HashSet::new();
    let mut intervals = Vec::new();
    for res in answers {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "x-nimbus-error-type"), "");
        let body: Value = res.json().await.unwrap();
        pids.insert(body["pid"].as_i64().unwrap());
        intervals.push((
            body["start"].as_f64().unwrap(),
            body["end"].as_f64().unwrap(),
        ));
    }
    (pids, intervals)
}

fn count(events: &[Value], event: &str, reason_part: &str) -> usize {
    events
        .iter()
        .filter(|e| e["event"] == event && e["reason"].as_str().unwrap().contains(reason_part))
        .count()
}

#[tokio::test]
async fn max_instances_bounds_parallelism_and_every_call_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    server
        .deploy(&deploy_dir(
            tmp.path(),
            "capped",
            "    max_instances: 4\n    queue_timeout_ms: 20000\n",
        ))
        .await;
    let (pids, intervals) =
        runs(parallel(&server, "capped", 20, json!({"sleep": 0.2})).await).await;
    assert!(pids.len() <= 4, "{} instances ran", pids.len());
    assert!(
        max_overlap(&intervals) <= 4,
        "{} calls overlapped",
        max_overlap(&intervals)
    );
}

#[tokio::test]
async fn calls_past_the_cap_and_the_queue_wait_are_throttled() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    server
        .deploy(&deploy_dir(
            tmp.path(),
            "tight",
            "    max_instances: 2\n    queue_timeout_ms: 100\n",
        ))
        .await;
    let answers = parallel(&server, "tight", 6, json!({"sleep": 1.0})).await;
    let mut ok = 0;
    for res in answers {
        match res.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(header(&res, "x-nimbus-error-type"), "Throttled");
                assert_eq!(header(&res, "retry-after"), "1");
                let body: Value = res.json().await.unwrap();
                assert_eq!(body["code"], "throttled");
                assert!(
                    body["message"].as_str().unwrap().contains("max_instances"),
                    "{body}"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(
        count(
            &events(&server, "tight").await,
            "throttled",
            "all 2 instances busy"
        ),
        4
    );
}

#[tokio::test]
async fn one_instance_takes_ten_calls_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    server
        .deploy(&deploy_dir(
            tmp.path(),
            "wide",
            "    concurrency: 10\n    max_instances: 1\n",
        ))
        .await;
    // Warm it first so all ten calls find the instance.
    server.invoke("wide", r#"{"sleep": 0}"#).await;
    let started = Instant::now();
    let (pids, intervals) = runs(parallel(&server, "wide", 10, json!({"sleep": 0.5})).await).await;
    assert_eq!(pids.len(), 1);
    assert_eq!(max_overlap(&intervals), 10, "the calls did not run at once");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn min_instances_stay_ready_and_extra_ones_are_stopped_when_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    server
        .deploy(&deploy_dir(
            tmp.path(),
            "steady",
            "    min_instances: 2\n    max_instances: 4\n    idle_timeout_ms: 1000\n",
        ))
        .await;
    // Without any traffic, two instances are started.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&events(&server, "steady").await, "started", "min_instances") < 2 {
        assert!(Instant::now() < deadline, "min_instances were not started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Four calls at once need two more; once idle they are stopped, back to two.
    for res in parallel(&server, "steady", 4, json!({"sleep": 0.3})).await {
        assert_eq!(res.status(), StatusCode::OK);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = events(&server, "steady").await;
        let (started, stopped) = (
            count(&ev, "started", ""),
            count(&ev, "stopped", "idle for 1000 ms"),
        );
        if started == 4 && stopped == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "started {started}, stopped idle {stopped}: {ev:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The provisioned ones answer warm.
    let res = server.invoke("steady", r#"{"sleep": 0}"#).await;
    assert_eq!(header(&res, "x-nimbus-cold-start"), "false");
}

#[tokio::test]
async fn a_killed_instance_fails_only_its_own_call() {
    let tmp = tempfile::tempdir().unwrap();
    // The function reports through files on the host, which its sandbox would hide.
    let server = Server::start_with(&tmp.path().join("data"), &["--no-sandbox"], &[]);
    server
        .deploy(&deploy_dir(tmp.path(), "victim", "    max_instances: 2\n"))
        .await;
    let pidfile = tmp.path().join("victim.pid");
    let doomed = server
        .req(Method::POST, "/v1/functions/victim/invocations")
        .body(json!({"sleep": 3, "pidfile": pidfile}).to_string())
        .send();
    let doomed = tokio::spawn(doomed);
    let bystander = tokio::spawn(
        server
            .req(Method::POST, "/v1/functions/victim/invocations")
            .body(r#"{"sleep": 1}"#)
            .send(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Ok(text) = std::fs::read_to_string(&pidfile)
            && let Ok(pid) = text.trim().parse::<i32>()
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the call never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let doomed = doomed.await.unwrap().unwrap();
    assert_eq!(header(&doomed, "x-nimbus-error-type"), "Runtime.ExitError");
    let bystander = bystander.await.unwrap().unwrap();
    assert_eq!(header(&bystander, "x-nimbus-error-type"), "");
    let next = server.invoke("victim", r#"{"sleep": 0}"#).await;
    assert_eq!(header(&next, "x-nimbus-error-type"), "");
}

#[tokio::test]
async fn the_initializer_runs_once_per_instance_and_a_failure_is_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("init-marker");
    // The function reports through files on the host, which its sandbox would hide.
    let server = Server::start_with(&tmp.path().join("data"), &["--no-sandbox"], &[]);
    let settings = format!(
        "    initializer: main.init\n    env: {{INIT_MARKER: \"{}\"}}\n",
        marker.display()
    );
    server
        .deploy(&deploy_dir(tmp.path(), "initd", &settings))
        .await;
    let first = server.invoke("initd", r#"{"sleep": 0}"#).await;
    assert_eq!(header(&first, "x-nimbus-error-type"), "InitializationError");
    let body: Value = first.json().await.unwrap();
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("first initializer fails"),
        "{body}"
    );
    for _ in 0..3 {
        let res = server.invoke("initd", r#"{"sleep": 0}"#).await;
        assert_eq!(header(&res, "x-nimbus-error-type"), "");
        assert_eq!(res.json::<Value>().await.unwrap()["inits"], 1);
    }
    assert_eq!(
        count(
            &events(&server, "initd").await,
            "stopped",
            "its initializer failed"
        ),
        1
    );
}

#[tokio::test]
async fn cold_start_breakdown_and_pre_stop_on_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let stop_marker = tmp.path().join("stopped");
    // The function reports through files on the host, which its sandbox would hide.
    let server = Server::start_with(&tmp.path().join("data"), &["--no-sandbox"], &[]);
    let settings = format!(
        "    pre_stop: main.stop\n    env: {{STOP_MARKER: \"{}\"}}\n",
        stop_marker.display()
    );
    server
        .deploy(&deploy_dir(tmp.path(), "timed", &settings))
        .await;
    let cold = server
        .req(Method::POST, "/v1/functions/timed/invocations")
        .header("x-nimbus-debug", "1")
        .body(r#"{"sleep": 0}"#)
        .send()
        .await
        .unwrap();
    let timing = header(&cold, "server-timing").to_string();
    for part in [
        "queue;dur=",
        "sandbox;dur=",
        "code;dur=",
        "init;dur=",
        "handler;dur=",
    ] {
        assert!(timing.contains(part), "{timing}");
    }
    let request_id = header(&cold, "x-nimbus-request-id").to_string();
    let pid = cold.json::<Value>().await.unwrap()["pid"].as_i64().unwrap();
    let record: Value = server
        .get_json(&format!("/v1/invocations/{request_id}"))
        .await;
    assert!(
        record["timings"]["sandbox_ms"].as_f64().unwrap() > 0.0,
        "{record}"
    );
    let warm = server
        .req(Method::POST, "/v1/functions/timed/invocations")
        .header("x-nimbus-debug", "1")
        .body(r#"{"sleep": 0}"#)
        .send()
        .await
        .unwrap();
    assert!(
        !header(&warm, "server-timing").contains("sandbox"),
        "a warm call has no start-up"
    );

    assert!(server.stop().success());
    let stopped = std::fs::read_to_string(&stop_marker).unwrap_or_default();
    assert_eq!(
        stopped.trim(),
        pid.to_string(),
        "the pre-stop hook did not run before the stop"
    );
}
