//! Timer triggers against the real server: fires on schedule with the scheduled time in
//! the event, named `timer:NAME` in records, once per scheduled time across a restart,
//! catch-up after downtime, pause and resume across a restart, `overlap: skip`, a timer
//! that wakes a function with no instance, and bad specs refused at deploy.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Server, project};

/// The events of `function`'s timer fires that have run, by scheduled time (ms).
async fn fired(server: &Server, function: &str, timer: &str) -> Vec<(i64, Value)> {
    let records = server
        .get_json(&format!("/v1/functions/{function}/invocations?limit=1000"))
        .await;
    let mut out = Vec::new();
    for r in records["invocations"].as_array().into_iter().flatten() {
        if r["trigger"] != format!("timer:{timer}") {
            continue;
        }
        let id = r["request_id"].as_str().unwrap();
        let a = server.get_json(&format!("/v1/invocations/{id}")).await;
        let event = a["payload"].clone();
        let time = event["time"].as_str().unwrap_or_default();
        let ms = chrono_free_ms(time);
        out.push((ms, event));
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

/// `2026-12-06T15:00:01Z` in Unix ms (tests have no date crate; the format is fixed).
fn chrono_free_ms(t: &str) -> i64 {
    if t.len() != 20 {
        return 0;
    }
    let n = |a: usize, b: usize| t[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000 + n(17, 19) * 1000
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

const ECHO: &str = "def handler(event, context):\n    return event\n";

fn timer_project(root: &Path, name: &str, timer: &str, extra: &str) -> std::path::PathBuf {
    project(
        root,
        name,
        &format!(
            "functions:\n  {name}:\n    runtime: python3\n    handler: main.handler\n{extra}    triggers:\n      - timer: {timer}\n"
        ),
        &[("main.py", ECHO)],
    )
}

/// Waits (bounded) until `n` fires have run.
async fn wait_fires(server: &Server, function: &str, timer: &str, n: usize) -> Vec<(i64, Value)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let f = fired(server, function, timer).await;
        if f.len() >= n || std::time::Instant::now() > deadline {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_rate_fires_each_second_once_with_its_scheduled_time_and_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let dir = project(
        tmp.path(),
        "tick",
        "functions:\n  tick:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - timer: {name: sec, every: 1s}\n  tock:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - timer: {name: sec, every: 1s, catch_up: none}\n  all:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - timer: {name: sec, every: 1s, catch_up: all}\n",
        &[("main.py", ECHO)],
    );
    server.deploy(&dir).await;
    let fires = wait_fires(&server, "tick", "sec", 3).await;
    assert!(fires.len() >= 3, "{fires:?}");
    for (ms, event) in &fires {
        // An EventBridge Scheduled Event whose time is a whole second of the schedule.
        assert_eq!(ms % 1000, 0);
        assert_eq!(event["detail-type"], "Scheduled Event");
        assert_eq!(event["source"], "aws.events");
        assert_eq!(
            event["resources"][0],
            "arn:aws:events:us-east-1:000000000000:rule/tick-sec"
        );
    }
    let listed = server.get_json("/v1/triggers?function=tick").await;
    let t = &listed["triggers"][0];
    assert_eq!(
        (t["kind"].as_str(), t["name"].as_str(), t["state"].as_str()),
        (Some("timer"), Some("sec"), Some("active"))
    );
    assert!(
        t["next_fire_ms"].as_i64().unwrap() > t["last_scheduled_ms"].as_i64().unwrap(),
        "{t}"
    );

    // Down for ~3.5 s. What each catch-up mode does with the seconds it missed.
    server.stop();
    let stopped_ms = now_ms();
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let started_ms = now_ms();
    let server = Server::start(&data);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let missed = |times: &[i64]| -> usize {
        times
            .iter()
            .filter(|t| **t > stopped_ms && **t < started_ms)
            .count()
    };
    for (function, lo, hi) in [("tick", 1, 1), ("tock", 0, 0), ("all", 3, 4)] {
        let times: Vec<i64> = fired(&server, function, "sec")
            .await
            .iter()
            .map(|(t, _)| *t)
            .collect();
        let mut unique = times.clone();
        unique.dedup();
        assert_eq!(
            times, unique,
            "{function}: a scheduled time fired twice: {times:?}"
        );
        let n = missed(&times);
        assert!(
            (lo..=hi).contains(&n),
            "{function} fired {n} of the seconds it missed ({stopped_ms}..{started_ms}): {times:?}"
        );
        // And it goes on after the restart.
        assert!(
            times.iter().any(|t| *t > started_ms),
            "{function}: {times:?}"
        );
    }
}

#[tokio::test]
async fn pause_holds_across_a_restart_and_resume_goes_on_from_now() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let dir = timer_project(
        tmp.path(),
        "paused",
        "{name: beat, cron: \"* * * * * *\", payload: {hello: timer}}",
        "",
    );
    server.deploy(&dir).await;
    let fires = wait_fires(&server, "paused", "beat", 1).await;
    assert_eq!(fires[0].1, json!({"hello": "timer"}));
    let run = server.cli(&["triggers", "pause", "paused", "beat"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // A pause lands between two fires; let the one in flight settle.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = fired(&server, "paused", "beat").await.len();
    server.stop();
    let server = Server::start(&data);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        fired(&server, "paused", "beat").await.len(),
        before,
        "a paused timer fired"
    );
    let ls = server.cli(&["triggers", "ls", "paused"]).await;
    assert!(ls.stdout.contains("paused"), "{}", ls.stdout);
    let run = server.cli(&["triggers", "resume", "paused", "beat"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let after = wait_fires(&server, "paused", "beat", before + 2).await;
    // Nothing piled up: the fires after resuming are all after it.
    assert!(
        after.len() >= before + 2 && after.len() <= before + 4,
        "{} then {}",
        before,
        after.len()
    );
    let missing = server.cli(&["triggers", "pause", "paused", "nope"]).await;
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("trigger_not_found") || missing.stderr.contains("no timer"),
        "{}",
        missing.stderr
    );
}

#[tokio::test]
async fn a_paused_route_answers_503_across_a_restart_until_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let dir = project(
        tmp.path(),
        "door",
        "functions:\n  door:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - http: {path: /door, methods: [GET], auth: anonymous}\n      - http: {path: /open, auth: anonymous}\n",
        &[(
            "main.py",
            "def handler(event, context):\n    return {'statusCode': 200, 'body': 'open'}\n",
        )],
    );
    server.deploy(&dir).await;
    assert_eq!(server.get("/door").send().await.unwrap().status(), 200);
    let run = server.cli(&["triggers", "pause", "door", "/door"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let paused = server.get("/door").send().await.unwrap();
    assert_eq!(paused.status(), 503);
    let body: Value = paused.json().await.unwrap();
    assert_eq!(body["code"], "trigger_paused", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nimbus triggers resume door /door"),
        "{body}"
    );
    // The function's other route still serves.
    assert_eq!(server.get("/open").send().await.unwrap().status(), 200);
    server.stop();
    let server = Server::start(&data);
    assert_eq!(server.get("/door").send().await.unwrap().status(), 503);
    let ls = server.cli(&["triggers", "ls", "door"]).await;
    assert!(
        ls.stdout
            .lines()
            .any(|l| l.contains("/door") && l.contains("paused")),
        "{}",
        ls.stdout
    );
    let run = server.cli(&["triggers", "resume", "door", "/door"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(server.get("/door").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn overlap_skip_skips_while_the_last_fire_runs_and_a_timer_wakes_a_stopped_function() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "slow",
        "functions:\n  slow:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 10000\n    triggers:\n      - timer: {name: s, every: 1s, overlap: skip}\n  sleepy:\n    runtime: python3\n    handler: main.quick\n    idle_timeout_ms: 1000\n    triggers:\n      - timer: {name: q, every: 3s}\n",
        &[(
            "main.py",
            "import time\ndef handler(event, context):\n    time.sleep(2.5)\n    return 1\ndef quick(event, context):\n    return 1\n",
        )],
    );
    server.deploy(&dir).await;
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    let listed = server.get_json("/v1/triggers?function=slow").await;
    let skipped = listed["triggers"][0]["skipped"].as_u64().unwrap();
    assert!(skipped >= 2, "{listed}");
    // Each of sleepy's fires found no instance (it stops after 1 s idle) and started one.
    let records = server
        .get_json("/v1/functions/sleepy/invocations?limit=100")
        .await;
    let cold: Vec<bool> = records["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cold_start"].as_bool().unwrap())
        .collect();
    assert!(cold.len() >= 2 && cold.iter().all(|c| *c), "{records}");
}

#[tokio::test]
async fn bad_timer_specs_are_refused_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    for (timer, expected) in [
        ("{name: t, cron: \"61 * * * *\"}", "triggers[0].timer.cron"),
        (
            "{name: t, cron: \"0 * * * *\", timezone: Mars/Base}",
            "triggers[0].timer.timezone",
        ),
        ("{name: t, every: 500ms}", "triggers[0].timer.every"),
        ("{name: t, at: tomorrow}", "triggers[0].timer.at"),
        (
            "{name: t, every: 1s, cron: \"* * * * *\"}",
            "exactly one of cron, every and at",
        ),
    ] {
        let dir = timer_project(tmp.path(), "bad", timer, "");
        let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
        assert_ne!(run.code, 0, "{timer} was accepted");
        assert!(run.stderr.contains(expected), "{timer}: {}", run.stderr);
    }
    assert_eq!(
        server.get_json("/v1/functions").await["functions"],
        json!([])
    );
}
