//! The nodes sharing a store: a server registers itself, heartbeats, and after a restart
//! is the same node again (its id is its data dir's), started anew.

use std::time::Duration;

use serde_json::Value;

use crate::harness::Server;

async fn nodes(server: &Server) -> Vec<Value> {
    let run = server.cli(&["nodes", "ls", "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list: Value = serde_json::from_str(&run.stdout).unwrap();
    list["nodes"].as_array().cloned().unwrap()
}

#[tokio::test]
async fn a_server_lists_itself_alive_and_is_the_same_node_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let listed = nodes(&server).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let me = &listed[0];
    assert_eq!((&me["state"], &me["this"]), (&"alive".into(), &true.into()));
    assert_eq!(me["address"], server.endpoint, "{me}");
    // Heartbeats move `last_seen` on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = &nodes(&server).await[0];
    assert!(
        later["last_seen"].as_str() > me["last_seen"].as_str(),
        "{later}"
    );
    let table = server.cli(&["nodes", "ls"]).await;
    assert!(table.stdout.contains("alive"), "{}", table.stdout);

    server.kill();
    let again = Server::start(&tmp.path().join("data"));
    let listed = nodes(&again).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], me["id"]);
    assert!(listed[0]["started_at"].as_str() > me["started_at"].as_str());
}

/// A PostgreSQL database and a place in the test S3 store of one test's own, which its
/// nodes share: the cluster's two settings.
pub struct Shared {
    db_url: String,
    db_name: String,
    blobs: String,
}

/// The server PostgreSQL the tests use (`.ci/run` starts it); a database is made per test.
fn postgres_base() -> String {
    std::env::var("NIMBUS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn psql(sql: &str) {
    let out = std::process::Command::new("psql")
        .arg(postgres_base())
        .args(["-qXc", sql])
        .output()
        .expect("psql (PostgreSQL's client)");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Shared {
    pub fn new() -> Shared {
        let tag = format!("{:016x}", rand::random::<u64>());
        let db_name = format!("nimbus_e2e_{tag}");
        psql(&format!("CREATE DATABASE {db_name}"));
        let base = postgres_base();
        let db_url = format!("{}/{db_name}", &base[..base.rfind('/').unwrap()]);
        // The bucket `.ci/run` makes, under a prefix of this test's own.
        let endpoint =
            std::env::var("NIMBUS_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:8333".into());
        let bucket =
            std::env::var("NIMBUS_TEST_S3_BUCKET").unwrap_or_else(|_| "nimbus-test".into());
        let blobs = format!(
            "s3://{bucket}/e2e-{tag}?endpoint={endpoint}&region=us-east-1&access_key_id=nimbus-test&secret_access_key=nimbus-test-secret"
        );
        Shared {
            db_url,
            db_name,
            blobs,
        }
    }

    /// A node of the cluster: a server with its own data dir on the shared stores.
    pub fn node(&self, data_dir: &std::path::Path, extra: &[&str]) -> Server {
        let args = [&["--db", &self.db_url, "--blobs", &self.blobs], extra].concat();
        Server::start_with(data_dir, &args, &[])
    }
}

impl Shared {
    /// Three nodes, data dirs `a`, `b` and `c` under `root`.
    pub fn three(&self, root: &std::path::Path, extra: &[&str]) -> [Server; 3] {
        ["a", "b", "c"].map(|n| self.node(&root.join(n), extra))
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Nodes still connected keep the database; WITH (FORCE) ends their sessions.
        let _ = std::process::Command::new("psql")
            .arg(postgres_base())
            .args([
                "-qXc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name),
            ])
            .output();
    }
}

/// A server given cluster settings it cannot use stops at once with a message naming the
/// setting and the problem, and no secret of the settings in it.
#[test]
fn bad_cluster_settings_stop_the_server_with_the_setting_named() {
    let shared = Shared::new();
    let missing = format!("{}_missing", shared.db_url);
    let cases: [(&[&str], &str); 6] = [
        (
            &["--db", "mysql://root@127.0.0.1/test"],
            "--db: `mysql://root@127.0.0.1/test` is not a postgres:// URL",
        ),
        // Said at once, not after the pool's wait for a connection.
        (
            &["--db", "postgres://nimbus:SECRET@127.0.0.1:1/none"],
            "Connection refused",
        ),
        (&["--db", &missing], "does not exist"),
        (
            &["--db", &shared.db_url, "--db-connections-max", "1"],
            "--db-connections-max",
        ),
        (
            &["--db", &shared.db_url, "--blobs", "ftp://somewhere/bucket"],
            "--blobs",
        ),
        (
            &[
                "--db",
                &shared.db_url,
                "--blobs",
                &shared.blobs.replace("nimbus-test-secret", "wrong-secret"),
            ],
            "--blobs",
        ),
    ];
    for (args, expected) in cases {
        let started = std::time::Instant::now();
        let tmp = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(crate::harness::NIMBUS)
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--s3-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(tmp.path())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{args:?}: slow to say"
        );
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        // A password in a URL is never printed.
        assert!(!stderr.contains("SECRET"), "{args:?}: {stderr}");
        assert!(!stderr.contains("wrong-secret"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Waits until every one of `servers` lists them all alive, then a while more: each node's
/// view of the others is read after its heartbeats, and once all have read it they agree
/// on every version's home.
async fn all_see_each_other(servers: &[&Server]) {
    eventually(
        Duration::from_secs(10),
        "every node sees the others",
        || async {
            let mut all = true;
            for node in servers {
                all &= nodes(node)
                    .await
                    .iter()
                    .filter(|n| n["state"] == "alive")
                    .count()
                    == servers.len();
            }
            all
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// Waits (bounded) until `check` holds, polling.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

const ECHO_VERSION: &str =
    "VERSION = 1\ndef handler(event, context):\n    return {'version': VERSION, 'event': event}\n";

#[tokio::test]
async fn three_nodes_share_functions_updates_and_the_admin_token_and_a_restarted_node_rejoins() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = Shared::new();
    let [a, b, c] = shared.three(tmp.path(), &[]);
    // One token for the cluster: the first node's.
    assert_eq!(a.token, b.token);
    assert_eq!(a.token, c.token);
    let listed = nodes(&b).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.iter().all(|n| n["state"] == "alive"), "{listed:?}");

    // Deployed through A, invoked through B and C: the code comes from the shared store.
    a.deploy(&crate::harness::python_project(
        tmp.path(),
        "echo",
        3000,
        ECHO_VERSION,
    ))
    .await;
    for node in [&b, &c] {
        let res = node.invoke("echo", r#"{"n":1}"#).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["version"], 1, "{body}");
    }
    // An update through B is what A runs within a second.
    let v2 = ECHO_VERSION.replace("VERSION = 1", "VERSION = 2");
    let dir = tmp.path().join("echo2");
    std::fs::create_dir_all(&dir).unwrap();
    let project = crate::harness::python_project(&dir, "echo", 3000, &v2);
    b.deploy(&project).await;
    let updated = std::time::Instant::now();
    eventually(Duration::from_secs(1), "A runs B's update", || async {
        let body: Value = a.invoke("echo", "{}").await.json().await.unwrap();
        body["version"] == 2
    })
    .await;
    let seen_after = updated.elapsed();
    assert!(seen_after < Duration::from_secs(1), "{seen_after:?}");
    // A delete through C is seen by A too.
    let run = c.cli(&["rm", "echo"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    eventually(
        Duration::from_secs(1),
        "A forgets the deleted function",
        || async { a.invoke("echo", "{}").await.status() == 404 },
    )
    .await;

    // C is killed: the others count it dead; restarted on its data dir it is the same node
    // again, alive.
    let c_id = nodes(&c)
        .await
        .into_iter()
        .find(|n| n["this"] == true)
        .unwrap()["id"]
        .clone();
    c.kill();
    eventually(Duration::from_secs(20), "C is counted dead", || async {
        nodes(&a)
            .await
            .iter()
            .any(|n| n["id"] == c_id && n["state"] == "dead")
    })
    .await;
    let c = shared.node(&tmp.path().join("c"), &[]);
    let listed = nodes(&c).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed
            .iter()
            .any(|n| n["id"] == c_id && n["state"] == "alive" && n["this"] == true),
        "{listed:?}"
    );
    drop((a, b, c));
}

/// A Python module whose `handler` counts its calls in Redis under `{prefix}:{item}`
/// (the count must outlive the node that made the call), sleeping `sleep` seconds first.
/// A timer's event has no prefix or item: the function's `PREFIX` and the event's
/// scheduled `time` stand in.
const COUNTER: &str = concat!(
    "import os, socket, time\n",
    "def incr(key):\n",
    "    s = socket.create_connection(('127.0.0.1', 6379))\n",
    "    s.sendall(('INCR %s\\r\\n' % key).encode())\n",
    "    s.recv(64)\n",
    "    s.close()\n",
    "def handler(event, ctx):\n",
    "    time.sleep(event.get('sleep', 0))\n",
    "    item = event.get('item') or event.get('time')\n",
    "    incr('%s:%s' % (event.get('prefix') or os.environ['PREFIX'], item))\n",
    "    return {'item': item}\n",
);

/// The counts of Redis keys matching `pattern`, by key.
fn redis_counts(pattern: &str) -> std::collections::BTreeMap<String, i64> {
    use std::io::{BufRead, BufReader, Write};
    let mut s =
        std::net::TcpStream::connect("127.0.0.1:6379").expect("Redis on 6379 (.ci/run starts it)");
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    let mut read_line = |reader: &mut BufReader<std::net::TcpStream>| {
        line.clear();
        reader.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    };
    s.write_all(format!("KEYS {pattern}\r\n").as_bytes())
        .unwrap();
    let n: usize = read_line(&mut reader)[1..].parse().unwrap();
    let mut keys = Vec::new();
    for _ in 0..n {
        read_line(&mut reader); // $len
        keys.push(read_line(&mut reader));
    }
    let mut out = std::collections::BTreeMap::new();
    for key in keys {
        s.write_all(format!("GET {key}\r\n").as_bytes()).unwrap();
        read_line(&mut reader);
        let value = read_line(&mut reader).parse().unwrap_or(0);
        out.insert(key, value);
    }
    out
}

fn unique(what: &str) -> String {
    format!("nimbus-cluster-test:{what}:{:016x}", rand::random::<u64>())
}

fn counter_project(root: &std::path::Path, name: &str, yaml_extra: &str) -> std::path::PathBuf {
    crate::harness::project(
        root,
        name,
        &format!(
            "functions:\n  count:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 10000\n    max_instances: 8\n{yaml_extra}"
        ),
        &[("main.py", COUNTER)],
    )
}

#[tokio::test]
async fn a_thousand_events_accepted_by_a_killed_node_are_all_run_by_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = Shared::new();
    // Short leases, so what the killed node held comes back in seconds.
    let lease = ["--async-lease-ms", "3000"];
    let [a, b, c] = shared.three(tmp.path(), &lease);
    a.deploy(&counter_project(tmp.path(), "count", "")).await;
    let prefix = unique("async");
    let accepted: Vec<String> = futures_util::future::join_all((0..1000).map(|i| {
        let (a, prefix) = (&a, &prefix);
        async move {
            let res = a
                .req(reqwest::Method::POST, "/v1/functions/count/invocations")
                .header("x-nimbus-invocation-type", "Event")
                .json(&serde_json::json!({"prefix": prefix, "item": i, "sleep": 0.05}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
            let v: Value = res.json().await.unwrap();
            v["request_id"].as_str().unwrap().to_string()
        }
    }))
    .await;
    assert_eq!(accepted.len(), 1000);
    // A dies with most of them waiting and some running under its lease.
    a.kill();
    eventually(
        Duration::from_secs(120),
        "all 1,000 events ran on B and C",
        || async { redis_counts(&format!("{prefix}:*")).len() == 1000 },
    )
    .await;
    // Each one's invocation is final and succeeded, as B and C both say.
    for (i, id) in accepted.iter().enumerate() {
        let node = if i % 2 == 0 { &b } else { &c };
        let v = node.settled(id, Duration::from_secs(60)).await;
        assert_eq!(v["status"], "succeeded", "{v}");
    }
    // At least once: a call cut off by the kill may have run twice, nothing else did.
    let counts = redis_counts(&format!("{prefix}:*"));
    let twice = counts.values().filter(|n| **n > 1).count();
    assert!(twice <= 16, "{twice} events ran more than once");
    drop((b, c));
}

#[tokio::test]
async fn a_seconds_timer_on_three_nodes_fires_each_point_once() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = Shared::new();
    let [a, b, c] = shared.three(tmp.path(), &[]);
    let prefix = unique("timer");
    // The timer's event carries its scheduled time; the counter counts per time.
    let project = crate::harness::project(
        tmp.path(),
        "tick",
        &format!(
            "functions:\n  tick:\n    runtime: python3\n    handler: main.handler\n    env: {{PREFIX: '{prefix}'}}\n    triggers:\n      - timer: {{name: sec, every: 1s, catch_up: none}}\n"
        ),
        &[("main.py", COUNTER)],
    );
    b.deploy(&project).await;
    eventually(
        Duration::from_secs(90),
        "60 scheduled points fired",
        || async { redis_counts(&format!("{prefix}:*")).len() >= 61 },
    )
    .await;
    let run = b.cli(&["rm", "tick"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // In flight when the function went: let them land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = redis_counts(&format!("{prefix}:*"));
    let more = counts.iter().filter(|(_, n)| **n != 1).collect::<Vec<_>>();
    assert!(more.is_empty(), "points fired more than once: {more:?}");
    drop((a, b, c));
}

#[tokio::test]
async fn an_object_put_through_one_node_is_read_through_another_and_its_event_runs_once() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = Shared::new();
    let [a, b, c] = shared.three(tmp.path(), &[]);
    let prefix = unique("objects");
    let handler = format!(
        "{}\ndef on_upload(event, ctx):\n    for r in event['Records']:\n        incr('{prefix}:' + r['s3']['object']['key'])\n",
        COUNTER
    );
    c.deploy(&crate::harness::project(
        tmp.path(),
        "uploads",
        "functions:\n  uploaded:\n    runtime: python3\n    handler: main.on_upload\n    triggers:\n      - object: {bucket: photos, prefix: in/}\n",
        &[("main.py", &handler)],
    ))
    .await;
    let script = "import boto3, os, sys\n\
        a = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1')\n\
        c = boto3.client('s3', endpoint_url=sys.argv[2], region_name='us-east-1')\n\
        a.create_bucket(Bucket='photos')\n\
        body = os.urandom(3 * 1024 * 1024 + 7)\n\
        a.put_object(Bucket='photos', Key='in/cat.jpg', Body=body)\n\
        got = c.get_object(Bucket='photos', Key='in/cat.jpg')['Body'].read()\n\
        assert got == body, 'C read other bytes than A stored'\n\
        part = c.get_object(Bucket='photos', Key='in/cat.jpg', Range='bytes=5-9')['Body'].read()\n\
        assert part == body[5:10]\n\
        assert [o['Key'] for o in c.list_objects_v2(Bucket='photos')['Contents']] == ['in/cat.jpg']\n";
    let mut cmd = std::process::Command::new(crate::harness::test_python());
    cmd.args(["-c", script, &a.s3_endpoint, &c.s3_endpoint]);
    crate::harness::aws_env(&mut cmd, &a.data_dir);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = format!("{prefix}:in/cat.jpg");
    eventually(
        Duration::from_secs(30),
        "the upload's event ran",
        || async { redis_counts(&key).get(&key) == Some(&1) },
    )
    .await;
    // Every node looks at the outbox; the event still runs once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(redis_counts(&key).get(&key), Some(&1));
    drop((a, b, c));
}

#[tokio::test]
async fn a_workflow_started_on_a_killed_node_finishes_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = Shared::new();
    let a = shared.node(&tmp.path().join("a"), &[]);
    let b = shared.node(&tmp.path().join("b"), &[]);
    let prefix = unique("flow");
    let definition = serde_json::json!({
        "StartAt": "Before",
        "States": {
            "Before": {"Type": "Task", "Resource": "nimbus:function:count", "Parameters": {"prefix.$": "$.prefix", "item": "before"}, "ResultPath": null, "Next": "Pause"},
            "Pause": {"Type": "Wait", "Seconds": 3, "Next": "After"},
            "After": {"Type": "Task", "Resource": "nimbus:function:count", "Parameters": {"prefix.$": "$.prefix", "item": "after"}, "End": true}
        }
    });
    let dir = crate::harness::project(
        tmp.path(),
        "flow",
        "functions:\n  count:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 10000\nflows:\n  - name: f\n    definition: f.asl.json\n",
        &[
            ("main.py", COUNTER),
            ("f.asl.json", &definition.to_string()),
        ],
    );
    a.deploy(&dir).await;
    let res = a
        .req(reqwest::Method::POST, "/v1/flows/f/executions")
        .json(&serde_json::json!({"input": {"prefix": prefix}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(Duration::from_secs(20), "the Wait is entered", || async {
        let h = a.get_json(&format!("/v1/executions/{id}/history")).await;
        h["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["type"] == "WaitStateEntered"))
    })
    .await;
    a.kill();
    eventually(
        Duration::from_secs(30),
        "B finishes the execution",
        || async { b.get_json(&format!("/v1/executions/{id}")).await["status"] == "SUCCEEDED" },
    )
    .await;
    let e = b.get_json(&format!("/v1/executions/{id}")).await;
    assert_eq!(e["output"], serde_json::json!({"item": "after"}), "{e}");
    let counts = redis_counts(&format!("{prefix}:*"));
    assert_eq!(
        counts.get(&format!("{prefix}:before")),
        Some(&1),
        "{counts:?}"
    );
    assert_eq!(
        counts.get(&format!("{prefix}:after")),
        Some(&1),
        "{counts:?}"
    );
    drop(b);
}

#[tokio::test]
async fn calls_through_every_node_run_warm_at_the_functions_home() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = Shared::new();
    let [a, b, c] = shared.three(tmp.path(), &[]);
    a.deploy(&crate::harness::python_project(
        tmp.path(),
        "echo",
        3000,
        ECHO_VERSION,
    ))
    .await;
    all_see_each_other(&[&a, &b, &c]).await;
    let mut cold = 0;
    for round in 0..10 {
        for node in [&a, &b, &c] {
            let res = node
                .invoke("echo", &format!(r#"{{"round":{round}}}"#))
                .await;
            assert_eq!(res.status(), 200);
            if crate::harness::header(&res, "x-nimbus-cold-start") == "true" {
                cold += 1;
            }
        }
    }
    // One instance, at the home, whichever node the calls came through.
    assert_eq!(cold, 1, "cold starts over 30 calls through three nodes");
    drop((a, b, c));
}

/// Logs a line per call, with the version that ran it.
fn versioned(v: u32) -> String {
    format!(
        "V = {v}\ndef handler(event, context):\n    print('call', V, event['n'])\n    return event\n"
    )
}

#[tokio::test]
async fn telemetry_through_one_node_shows_the_calls_every_node_ran() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = Shared::new();
    let [a, b, c] = shared.three(tmp.path(), &[]);
    all_see_each_other(&[&a, &b, &c]).await;
    // Node ids by server.
    let listed = nodes(&a).await;
    let id_of = |s: &Server| -> String {
        listed
            .iter()
            .find(|n| n["address"] == s.endpoint.as_str())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ids: Vec<String> = [&a, &b, &c].map(id_of).to_vec();
    // A call runs at its version's home, so versions are published until every node is
    // the home of one: then calls of those versions run on all three.
    let mut homes: std::collections::BTreeMap<String, u32> = Default::default();
    for v in 1..=30 {
        let dir = crate::harness::python_project(
            &tmp.path().join(format!("v{v}")),
            "f",
            3000,
            &versioned(v),
        );
        let run = a.cli(&["deploy", "--publish", dir.to_str().unwrap()]).await;
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        let key = platform::placement::key("f", &v.to_string(), 0);
        let home = platform::placement::home(&key, ids.iter(), |n| n.as_str()).unwrap();
        homes.entry(home.clone()).or_insert(v);
        if homes.len() == 3 {
            break;
        }
    }
    assert_eq!(homes.len(), 3, "{homes:?}");
    // Each of those versions called through each node: nine calls, three on each node.
    let mut n = 0;
    for v in homes.values() {
        for node in [&a, &b, &c] {
            let res = node
                .invoke(&format!("f:{v}"), &format!(r#"{{"n":{n}}}"#))
                .await;
            assert_eq!(res.status(), 200);
            n += 1;
        }
    }
    let all: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    let nodes_of = |rows: &Value| -> std::collections::BTreeSet<String> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["node"].as_str().unwrap().to_string())
            .collect()
    };

    // Through A alone: every line, record, figure.
    let logs = a.get_json("/v1/functions/f/logs?q=call").await;
    assert_eq!(logs["lines"].as_array().unwrap().len(), 9, "{logs}");
    assert_eq!(nodes_of(&logs["lines"]), all, "{logs}");
    assert!(logs.get("unreachable_nodes").is_none(), "{logs}");
    let records = a.get_json("/v1/functions/f/invocations").await;
    assert_eq!(
        records["invocations"].as_array().unwrap().len(),
        9,
        "{records}"
    );
    assert_eq!(nodes_of(&records["invocations"]), all);
    // Pages of four through the cursor: each call once.
    let mut seen = std::collections::BTreeSet::new();
    let mut path = "/v1/functions/f/invocations?limit=4".to_string();
    for _ in 0..10 {
        let page = a.get_json(&path).await;
        for r in page["invocations"].as_array().unwrap() {
            assert!(
                seen.insert(r["request_id"].as_str().unwrap().to_string()),
                "{page}"
            );
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/functions/f/invocations?limit=4&before={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 9);
    let stats = a.get_json("/v1/functions/f/stats?window=1h").await;
    assert_eq!(stats["totals"]["invocations"], 9, "{stats}");
    assert_eq!(stats["totals"]["cold_starts"], 3, "{stats}");
    let usage = a.get_json("/v1/usage").await;
    let f = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "f")
        .unwrap();
    assert_eq!(f["requests"], 9, "{usage}");
    // An invocation another node ran, by its id.
    let theirs = records["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] != ids[0].as_str())
        .unwrap();
    let id = theirs["request_id"].as_str().unwrap();
    let found = a.get_json(&format!("/v1/invocations/{id}")).await;
    assert_eq!(found["request_id"], id, "{found}");
    // The CLI prints them all, with the node of each line.
    let run = a.cli(&["logs", "f", "--grep", "call"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 9, "{}", run.stdout);
    for id in &ids {
        let short = id.split('-').next().unwrap();
        assert!(
            run.stdout.contains(&format!(" {short} ")),
            "{short}: {}",
            run.stdout
        );
    }
    let run = a.cli(&["invocation", "ls", "f", "--limit", "4"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("--before c1."), "{}", run.stderr);

    // C dies: A still answers, with what A and B have and C named.
    let c_id = ids[2].clone();
    c.kill();
    let logs = a.get_json("/v1/functions/f/logs?q=call").await;
    assert_eq!(
        logs["unreachable_nodes"],
        serde_json::json!([c_id]),
        "{logs}"
    );
    assert!(!nodes_of(&logs["lines"]).contains(&c_id), "{logs}");
    assert_eq!(logs["lines"].as_array().unwrap().len(), 6, "{logs}");
    let res = a
        .req(reqwest::Method::GET, "/v1/functions/f/stats")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let stats: Value = res.json().await.unwrap();
    assert_eq!(stats["totals"]["invocations"], 6, "{stats}");
    assert_eq!(stats["unreachable_nodes"], serde_json::json!([c_id]));
    drop((a, b));
}
