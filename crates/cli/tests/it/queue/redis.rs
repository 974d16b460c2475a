//! Queue triggers on Redis streams end to end: entries added with redis-py reach the
//! function through a consumer group (body, headers and the stream's fields), partial and
//! whole failures are retried then dead-lettered and acknowledged, a batch in flight when
//! the server is killed comes back after its restart, a restarted broker is reconnected
//! to, a paused trigger leaves entries in the stream, a single instance gets a thousand
//! entries without loss, `ordered` keeps the stream's order through retries, and entries
//! a dead consumer left pending are claimed.
//!
//! Every test uses streams of its own (`unique`) in the machine's Redis, except the broker
//! restart, which runs a private `redis-server` on a free port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{
    bodies, dead_letters, free_port, project, python, received, unique, wait_connection,
    wait_dead_letters, wait_port, wait_received,
};
use crate::harness::Server;

/// The machine's Redis, shared by every test.
const URL: &str = "redis://127.0.0.1:6379";

/// Runs `script` with `r`, a redis-py client of `url` that answers text.
fn redis_py(url: &str, script: &str) -> String {
    python(&format!(
        "import redis\nr = redis.Redis.from_url('{url}', decode_responses=True)\n{script}"
    ))
}

/// Adds one entry per body (its field `body`) to `stream`, in order, in one round trip.
fn publish(url: &str, stream: &str, bodies: &[&str]) {
    let list = serde_json::to_string(bodies).unwrap();
    redis_py(
        url,
        &format!(
            "p = r.pipeline(transaction=False)\nfor b in {list}:\n    p.xadd('{stream}', {{'body': b}})\np.execute()\n"
        ),
    );
}

/// Entries of `group` delivered and not acknowledged (`XPENDING`).
fn pending(url: &str, stream: &str, group: &str) -> u64 {
    redis_py(
        url,
        &format!("print(r.xpending('{stream}', '{group}')['pending'])\n"),
    )
    .trim()
    .parse()
    .unwrap()
}

/// Waits (bounded) until `group` has no pending entry; returns the last count.
async fn wait_no_pending(url: &str, stream: &str, group: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = pending(url, stream, group);
        if n == 0 || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How often `body` was delivered in `records`.
fn count(records: &[Value], body: &str) -> usize {
    records.iter().filter(|r| r["body"] == body).count()
}

/// The trigger spec for `stream` in the machine's Redis, with more settings (`, k: v`).
fn spec(stream: &str, more: &str) -> String {
    format!("{{redis: {{url: \"{URL}\", stream: {stream}}}{more}}}")
}

/// A server with one function `name` (the test handler) on `trigger`, its trigger running.
async fn deployed(tmp: &std::path::Path, name: &str, trigger: &str, extra: &str) -> Server {
    let server = Server::start(&tmp.join("data"));
    server.deploy(&project(tmp, name, trigger, extra)).await;
    let t = wait_connection(&server, name, "redis", "running", Duration::from_secs(30)).await;
    assert_eq!(t["connection"], "running", "{t}");
    server
}

#[tokio::test]
async fn entries_reach_the_function_with_body_headers_and_stream_fields_in_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = unique("rs-fields-");
    let server = deployed(
        tmp.path(),
        "rfields",
        &spec(&stream, ", batch_size: 5, batch_window_ms: 3000"),
        "",
    )
    .await;
    redis_py(
        URL,
        &format!(
            "p = r.pipeline(transaction=False)\n\
             p.xadd('{stream}', {{'body': 'hello', 'kind': 'greeting', 'trace': 't1'}})\n\
             p.xadd('{stream}', {{'temp': '21', 'room': 'kitchen'}})\n\
             for b in ['b3', 'b4', 'b5']:\n    p.xadd('{stream}', {{'body': b}})\n\
             p.execute()\n"
        ),
    );
    let got = wait_received(&server, "rfields", 5, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 5, "{got:?}");
    let hello = got.iter().find(|r| r["body"] == "hello").expect("hello");
    assert_eq!(hello["eventSource"], "nimbus:redis");
    assert_eq!(hello["headers"]["kind"], "greeting");
    assert_eq!(hello["headers"]["trace"], "t1");
    assert!(hello["headers"].get("body").is_none(), "{hello}");
    let id = hello["messageId"].as_str().unwrap();
    let (ms, seq) = id.split_once('-').expect("an entry id");
    assert!(
        ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok(),
        "{id}"
    );
    assert_eq!(hello["redis"]["id"], id);
    assert_eq!(hello["redis"]["stream"], stream.as_str());
    assert_eq!(hello["redis"]["group"], "nimbus-rfields-redis");
    assert!(hello["publishedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(hello["attempt"], 1);
    // An entry without a body field is its own body: a JSON object of its fields.
    let whole = got
        .iter()
        .find(|r| r["body"].as_str().unwrap().starts_with('{'))
        .expect("the entry without a body field");
    let fields: Value = serde_json::from_str(whole["body"].as_str().unwrap()).unwrap();
    assert_eq!(fields, serde_json::json!({"temp": "21", "room": "kitchen"}));
    assert_eq!(whole["headers"], serde_json::json!({}));
    // The window gathered the five entries into one call (its log has the five lines).
    let calls = crate::harness::delivered(&server, "rfields", "queue:redis").await;
    let sizes: Vec<usize> = calls
        .iter()
        .map(|c| {
            c["logs"].as_array().map_or(0, |lines| {
                lines
                    .iter()
                    .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("GOT ")))
                    .count()
            })
        })
        .collect();
    assert_eq!(sizes, [5], "{calls:?}");
    assert_eq!(
        wait_no_pending(URL, &stream, "nimbus-rfields-redis").await,
        0
    );
}

#[tokio::test]
async fn a_reported_failure_redelivers_only_that_entry_then_dead_letters_it() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = unique("rs-bad-");
    let server = deployed(
        tmp.path(),
        "rbad",
        &spec(
            &stream,
            ", batch_size: 10, batch_window_ms: 1000, max_retries: 2, retry_delay_ms: 50",
        ),
        "",
    )
    .await;
    publish(URL, &stream, &["ok1", "bad1", "ok2"]);
    let dead = wait_dead_letters(&server, "rbad", 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["payload"]["Records"][0]["body"], "bad1");
    let got = wait_received(&server, "rbad", 5, Duration::from_secs(30)).await;
    assert_eq!(count(&got, "bad1"), 3, "{:?}", bodies(&got));
    assert_eq!(count(&got, "ok1"), 1, "{:?}", bodies(&got));
    assert_eq!(count(&got, "ok2"), 1, "{:?}", bodies(&got));
    let attempts: Vec<&Value> = got
        .iter()
        .filter(|r| r["body"] == "bad1")
        .map(|r| &r["attempt"])
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(wait_no_pending(URL, &stream, "nimbus-rbad-redis").await, 0);
}

/// Logs each record, and answers a malformed `batchItemFailures` on a record's first
/// attempt (an identifier of no message of the batch): the whole batch fails.
const MALFORMED: &str = concat!(
    "import json\n",
    "def handler(event, context):\n",
    "    for r in event['Records']:\n",
    "        print('GOT ' + json.dumps(r))\n",
    "    if any(r['attempt'] == 1 for r in event['Records']):\n",
    "        return {'batchItemFailures': [{'itemIdentifier': 'no-such-id'}]}\n",
    "    return {}\n",
);

#[tokio::test]
async fn a_malformed_answer_fails_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = unique("rs-malformed-");
    let server = Server::start(&tmp.path().join("data"));
    let dir = crate::harness::project(
        tmp.path(),
        "rmal",
        &format!(
            "functions:\n  rmal:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - queue: {}\n",
            spec(
                &stream,
                ", batch_size: 10, batch_window_ms: 1000, retry_delay_ms: 50"
            )
        ),
        &[("main.py", MALFORMED)],
    );
    server.deploy(&dir).await;
    let t = wait_connection(&server, "rmal", "redis", "running", Duration::from_secs(30)).await;
    assert_eq!(t["connection"], "running", "{t}");
    publish(URL, &stream, &["m1", "m2"]);
    let got = wait_received(&server, "rmal", 4, Duration::from_secs(60)).await;
    assert_eq!(count(&got, "m1"), 2, "{:?}", bodies(&got));
    assert_eq!(count(&got, "m2"), 2, "{:?}", bodies(&got));
    assert_eq!(wait_no_pending(URL, &stream, "nimbus-rmal-redis").await, 0);
    assert!(dead_letters(&server, "rmal").await.is_empty());
}

#[tokio::test]
async fn a_failing_function_dead_letters_its_entries_and_acknowledges_them() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = unique("rs-fail-");
    let server = deployed(
        tmp.path(),
        "rfail",
        &spec(&stream, ", max_retries: 2, retry_delay_ms: 50"),
        "",
    )
    .await;
    publish(URL, &stream, &["fail1", "fail2"]);
    let dead = wait_dead_letters(&server, "rfail", 2).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    let mut buried: Vec<&str> = dead
        .iter()
        .map(|d| d["payload"]["Records"][0]["body"].as_str().unwrap())
        .collect();
    buried.sort();
    assert_eq!(buried, ["fail1", "fail2"]);
    assert_eq!(wait_no_pending(URL, &stream, "nimbus-rfail-redis").await, 0);
    // A call's log lines are recorded in the recorder's next batch, so the last attempt's
    // may come a moment after its dead letter: wait for all six (bounded).
    let got = wait_received(&server, "rfail", 6, Duration::from_secs(10)).await;
    assert_eq!(count(&got, "fail1"), 3, "{:?}", bodies(&got));
    assert_eq!(count(&got, "fail2"), 3, "{:?}", bodies(&got));
}

#[tokio::test]
async fn a_batch_in_flight_when_the_server_is_killed_is_delivered_after_its_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = unique("rs-kill-");
    let group = "nimbus-rslow-redis";
    let server = deployed(tmp.path(), "rslow", &spec(&stream, ""), "").await;
    publish(URL, &stream, &["slow1"]);
    // The trigger took the entry (it is pending under its consumer) and holds it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = super::trigger(&server, "rslow", "redis").await;
        if t["held"] == 1 && pending(URL, &stream, group) == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never took the entry: {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The function sleeps ten seconds with it: kill the server in the middle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.kill();
    assert_eq!(pending(URL, &stream, group), 1, "nothing acknowledged it");
    let server = Server::start(&tmp.path().join("data"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = super::trigger(&server, "rslow", "redis").await;
        if t["delivered"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered again: {t}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = received(&server, "rslow").await;
    assert!(count(&got, "slow1") >= 1, "{:?}", bodies(&got));
    assert_eq!(wait_no_pending(URL, &stream, group).await, 0);
}

/// A `redis-server` of the test's own on a free port, its entries kept in an append-only
/// file so that they survive its restart.
struct PrivateRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(dir: &std::path::Path) -> PrivateRedis {
        let mut r = PrivateRedis {
            port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        r.run();
        r
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(10));
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Shuts it down as an operator would (it writes its file and closes every client).
    fn shutdown(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .output();
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn a_restarted_broker_shows_reconnecting_then_delivers_again() {
    let tmp = tempfile::tempdir().unwrap();
    let broker_dir = tmp.path().join("redis");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let mut broker = PrivateRedis::start(&broker_dir);
    let url = broker.url();
    let stream = unique("rs-restart-");
    let server = Server::start(&tmp.path().join("data"));
    let trigger = format!("{{redis: {{url: \"{url}\", stream: {stream}}}}}");
    server
        .deploy(&project(tmp.path(), "rbroker", &trigger, ""))
        .await;
    let t = wait_connection(
        &server,
        "rbroker",
        "redis",
        "running",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(t["connection"], "running", "{t}");
    publish(&url, &stream, &["before"]);
    let got = wait_received(&server, "rbroker", 1, Duration::from_secs(30)).await;
    assert_eq!(bodies(&got), ["before"]);
    // Acknowledged before the broker goes (else it would rightly come again).
    assert_eq!(
        wait_no_pending(&url, &stream, "nimbus-rbroker-redis").await,
        0
    );

    broker.shutdown();
    let t = wait_connection(
        &server,
        "rbroker",
        "redis",
        "reconnecting",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(t["connection"], "reconnecting", "{t}");
    let error = t["error"].as_str().unwrap_or_default();
    assert!(error.contains("redis"), "{t}");

    broker.run();
    let t = wait_connection(
        &server,
        "rbroker",
        "redis",
        "running",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(t["connection"], "running", "{t}");
    publish(&url, &stream, &["after1", "after2"]);
    // At least once: an entry may come twice after a broker restart (an acknowledgement
    // the broker had not written yet), but each comes (in any order: unordered batches
    // run at once, and the log has them as they finish).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut firsts = Vec::new();
    while Instant::now() < deadline {
        firsts = bodies(&received(&server, "rbroker").await);
        let mut seen = std::collections::HashSet::new();
        firsts.retain(|b| seen.insert(b.clone()));
        if firsts.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    firsts.sort();
    assert_eq!(
        firsts,
        ["after1", "after2", "before"],
        "{:?}",
        bodies(&received(&server, "rbroker").await)
    );
    assert_eq!(
        wait_no_pending(&url, &stream, "nimbus-rbroker-redis").await,
        0
    );
}

#[tokio::test]
async fn a_paused_trigger_leaves_entries_in_the_stream_until_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = unique("rs-pause-");
    let group = "nimbus-rpause-redis";
    let server = deployed(tmp.path(), "rpause", &spec(&stream, ""), "").await;
    publish(URL, &stream, &["one"]);
    let got = wait_received(&server, "rpause", 1, Duration::from_secs(30)).await;
    assert_eq!(bodies(&got), ["one"]);

    let run = server.cli(&["triggers", "pause", "rpause", "redis"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = wait_connection(
        &server,
        "rpause",
        "redis",
        "paused",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(t["connection"], "paused", "{t}");
    // A read the trigger began before it saw the pause blocks for at most half a second
    // (the runner's fetch wait); what it took would rightly be pending, not in the stream.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(wait_no_pending(URL, &stream, group).await, 0);
    publish(URL, &stream, &["two", "three"]);
    // Nothing may come while paused: a while without any delivery shows it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(bodies(&received(&server, "rpause").await), ["one"]);
    // The entries wait in the stream, undelivered to the group.
    let lag = redis_py(
        URL,
        &format!(
            "print([g['lag'] for g in r.xinfo_groups('{stream}') if g['name'] == '{group}'][0])\n"
        ),
    );
    assert_eq!(lag.trim(), "2");
    assert_eq!(pending(URL, &stream, group), 0);

    let run = server.cli(&["triggers", "resume", "rpause", "redis"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let got = wait_received(&server, "rpause", 3, Duration::from_secs(30)).await;
    assert_eq!(bodies(&got), ["one", "two", "three"]);
}

#[tokio::test]
async fn a_thousand_entries_reach_a_single_instance_function_without_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = unique("rs-many-");
    let server = deployed(
        tmp.path(),
        "rmany",
        &spec(&stream, ", batch_size: 10"),
        "    max_instances: 1\n",
    )
    .await;
    let names: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    publish(URL, &stream, &refs);
    let got = wait_received(&server, "rmany", 1000, Duration::from_secs(180)).await;
    let mut seen = bodies(&got);
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        1000,
        "{} records, {} distinct",
        got.len(),
        seen.len()
    );
    assert!(dead_letters(&server, "rmany").await.is_empty());
    assert_eq!(wait_no_pending(URL, &stream, "nimbus-rmany-redis").await, 0);
}

#[tokio::test]
async fn ordered_entries_arrive_in_order_with_a_retried_one_in_the_middle() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = unique("rs-order-");
    let server = deployed(
        tmp.path(),
        "rorder",
        &spec(
            &stream,
            ", ordered: true, batch_size: 1, max_retries: 2, retry_delay_ms: 50",
        ),
        "",
    )
    .await;
    let sent = ["a0", "a1", "a2", "a3", "a4", "bad5", "a6", "a7", "a8", "a9"];
    publish(URL, &stream, &sent);
    let got = wait_received(&server, "rorder", 12, Duration::from_secs(60)).await;
    // The failed entry is retried (twice) before any entry after it is delivered.
    assert_eq!(
        bodies(&got),
        [
            "a0", "a1", "a2", "a3", "a4", "bad5", "bad5", "bad5", "a6", "a7", "a8", "a9"
        ]
    );
    let dead = wait_dead_letters(&server, "rorder", 1).await;
    assert_eq!(dead[0]["payload"]["Records"][0]["body"], "bad5");
}

#[tokio::test]
async fn entries_a_dead_consumer_left_pending_are_claimed_and_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let stream = unique("rs-claim-");
    let group = unique("claim");
    // Another node's consumer, `dead`, read three entries and died without acknowledging
    // them an hour ago (`IDLE` backdates them past the claim's minimum idle time).
    let out = redis_py(
        URL,
        &format!(
            "r.xgroup_create('{stream}', '{group}', id='0', mkstream=True)\n\
             for b in ['c1', 'c2', 'c3']:\n    r.xadd('{stream}', {{'body': b}})\n\
             got = r.xreadgroup('{group}', 'dead', {{'{stream}': '>'}})\n\
             ids = [i for i, _ in got[0][1]]\n\
             r.xclaim('{stream}', '{group}', 'dead', 0, ids, idle=3600000, justid=True)\n\
             print(r.xpending('{stream}', '{group}')['consumers'])\n"
        ),
    );
    assert!(
        out.contains("'dead'") && out.contains("'pending': 3"),
        "{out}"
    );
    let server = deployed(
        tmp.path(),
        "rclaim",
        &format!("{{redis: {{url: \"{URL}\", stream: {stream}, group: {group}}}}}"),
        "",
    )
    .await;
    let got = wait_received(&server, "rclaim", 3, Duration::from_secs(60)).await;
    let mut seen = bodies(&got);
    seen.sort();
    assert_eq!(seen, ["c1", "c2", "c3"]);
    assert_eq!(got[0]["redis"]["group"], group.as_str());
    // New entries go on reaching the trigger, and the dead consumer holds nothing more.
    publish(URL, &stream, &["c4"]);
    let got = wait_received(&server, "rclaim", 4, Duration::from_secs(30)).await;
    assert_eq!(count(&got, "c4"), 1, "{:?}", bodies(&got));
    assert_eq!(wait_no_pending(URL, &stream, &group).await, 0);
}
