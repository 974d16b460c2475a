//! The sandbox against adversarial functions: each test runs a server that refuses to start
//! without every protection (CI runs as root), and checks afterwards that no process or
//! cgroup of it is left.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, header, project};
use crate::{assert_no_runtime_processes, runtime_processes};

fn sandboxed(data: &std::path::Path) -> Server {
    Server::start_with(data, &["--require-sandbox"], &[])
}

/// Stops the server and checks that nothing of it is left.
fn stop_clean(server: Server) {
    let (data, pid) = (server.data_dir.clone(), server.child.id());
    assert!(server.stop().success());
    assert_no_runtime_processes(&data, pid);
}

async fn call(server: &Server, name: &str, event: Value) -> (String, Value) {
    let res = server.invoke(name, &event.to_string()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let error_type = header(&res, "x-nimbus-error-type").to_string();
    // A handler's string comes back as text, anything else as JSON.
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (error_type, body)
}

const SPY: &str = r#"
import os, json
def attempt(f):
    try:
        return "allowed: %r" % (f(),)
    except Exception as e:
        return "denied: %s" % type(e).__name__
def handler(event, context):
    data = event["data"]
    out = {
        "uid": os.getuid(),
        "token": attempt(lambda: open(os.path.join(data, "admin.token")).read()),
        "db": attempt(lambda: open(os.path.join(data, "nimbus.db"), "rb").read(16)),
        "code": attempt(lambda: os.listdir(os.path.join(data, "code"))),
        "environ": attempt(lambda: open("/proc/%d/environ" % event["victim_pid"], "rb").read()),
        "signal": attempt(lambda: os.kill(event["victim_pid"], 0)),
        "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "victim_tmp": attempt(lambda: open("/tmp/victim-secret").read()),
        "write_code": attempt(lambda: open("/var/task/new.py", "w").write("x")),
        "stem_code": attempt(lambda: os.listdir("/.nimbus-code")),
        "task": sorted(os.listdir("/var/task")),
        "root": sorted(os.listdir("/")),
    }
    return out
"#;

const VICTIM: &str = r#"
import os
def handler(event, context):
    with open("/tmp/victim-secret", "w") as f:
        f.write(os.environ["SECRET"])
    return {"uid": os.getuid()}
"#;

/// The host pid of a process running as `uid`.
fn pid_of_uid(uid: u64) -> i32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            let real: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            (real == uid).then_some(pid)
        })
        .expect("the victim's process")
}

#[tokio::test]
async fn a_function_cannot_reach_the_platform_or_another_function() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = sandboxed(&data);
    let dir = project(
        tmp.path(),
        "two",
        "functions:\n  spy:\n    runtime: python3\n    handler: spy.handler\n  victim:\n    runtime: python3\n    handler: victim.handler\n    env: {SECRET: hunter2}\n",
        &[("spy.py", SPY), ("victim.py", VICTIM)],
    );
    server.deploy(&dir).await;
    let (e, victim) = call(&server, "victim", json!({})).await;
    assert_eq!(e, "", "{victim}");
    let victim_uid = victim["uid"].as_u64().unwrap();
    let victim_pid = pid_of_uid(victim_uid);
    let (e, spy) = call(
        &server,
        "spy",
        json!({"data": data, "victim_pid": victim_pid}),
    )
    .await;
    assert_eq!(e, "", "{spy}");
    // Two functions, two unprivileged identities.
    let spy_uid = spy["uid"].as_u64().unwrap();
    assert!(spy_uid >= 100_000 && victim_uid >= 100_000, "{spy}");
    assert_ne!(spy_uid, victim_uid);
    for key in [
        "token",
        "db",
        "code",
        "environ",
        "signal",
        "victim_tmp",
        "write_code",
        "stem_code",
    ] {
        assert!(
            spy[key].as_str().unwrap().starts_with("denied"),
            "{key}: {}",
            spy[key]
        );
    }
    // Its code is all it has of the code cache.
    assert_eq!(
        spy["task"],
        json!(["nimbus.yaml", "spy.py", "victim.py"]),
        "{spy}"
    );
    // Its own pid namespace: it is pid 1 and sees nothing else.
    assert_eq!(spy["procs"], json!([1]), "{spy}");
    // Its root holds the system directories, its code, the runtime, /tmp, /dev and /proc.
    let root: Vec<&str> = spy["root"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // (`/opt` is there, as on Lambda: a function's layers are shown at it.)
    for absent in ["root", "home", "work", "srv", "data"] {
        assert!(!root.contains(&absent), "{root:?}");
    }
    // Both came from jailed prewarmed processes (a failed specialization would fall back
    // to spawning, so say which path ran).
    let events = server.get_json("/v1/events").await;
    let starts: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "started")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(starts.len(), 2, "{events}");
    assert!(
        starts
            .iter()
            .all(|r| r.contains("from a prewarmed process")),
        "{events}"
    );
    // The host still sees the victim's secret in its /tmp-less view: it never left the jail.
    assert!(!std::path::Path::new("/tmp/victim-secret").exists());
    stop_clean(server);
}

#[tokio::test]
async fn network_none_cannot_connect_and_outbound_can() {
    let tmp = tempfile::tempdir().unwrap();
    let server = sandboxed(&tmp.path().join("data"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = "import socket\ndef handler(event, context):\n    try:\n        socket.create_connection(('127.0.0.1', event['port']), timeout=2).close()\n        return 'connected'\n    except OSError as e:\n        return 'refused: %s' % e\n";
    let dir = project(
        tmp.path(),
        "net",
        "functions:\n  offline:\n    runtime: python3\n    handler: main.handler\n    network: none\n  online:\n    runtime: python3\n    handler: main.handler\n",
        &[("main.py", code)],
    );
    server.deploy(&dir).await;
    let (_, offline) = call(&server, "offline", json!({"port": port})).await;
    assert!(
        offline.as_str().unwrap().starts_with("refused"),
        "{offline}"
    );
    let (_, online) = call(&server, "online", json!({"port": port})).await;
    assert_eq!(online, "connected");
    stop_clean(server);
}

#[tokio::test]
async fn a_memory_hog_runs_out_of_memory_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let server = sandboxed(&tmp.path().join("data"));
    let code = "import time\ndef handler(event, context):\n    if event.get('hog'):\n        time.sleep(0.2)\n        blocks = []\n        while True:\n            blocks.append(bytearray(16 * 1024 * 1024))\n    if event.get('sleep'):\n        time.sleep(event['sleep'])\n    return 'fine'\n";
    let dir = project(
        tmp.path(),
        "mem",
        "functions:\n  hog:\n    runtime: python3\n    handler: main.handler\n    memory_mb: 96\n    timeout_ms: 10000\n  neighbour:\n    runtime: python3\n    handler: main.handler\n    memory_mb: 96\n    timeout_ms: 10000\n",
        &[("main.py", code)],
    );
    server.deploy(&dir).await;
    // The neighbour is busy while the hog grows.
    let neighbour = tokio::spawn(
        server
            .req(reqwest::Method::POST, "/v1/functions/neighbour/invocations")
            .body(r#"{"sleep": 1}"#)
            .send(),
    );
    let (e, body) = call(&server, "hog", json!({"hog": true})).await;
    assert_eq!(e, "FunctionOutOfMemory", "{body}");
    assert!(
        body["errorMessage"].as_str().unwrap().contains("96 MB"),
        "{body}"
    );
    let neighbour = neighbour.await.unwrap().unwrap();
    assert_eq!(header(&neighbour, "x-nimbus-error-type"), "");
    assert_eq!(neighbour.text().await.unwrap(), "fine");
    // The hog's instance was replaced; its next call works.
    let (e, body) = call(&server, "hog", json!({})).await;
    assert_eq!((e.as_str(), body), ("", json!("fine")));
    stop_clean(server);
}

#[tokio::test]
async fn a_fork_bomb_is_contained() {
    let tmp = tempfile::tempdir().unwrap();
    let server = sandboxed(&tmp.path().join("data"));
    let bomb = "import os\ndef handler(event, context):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n";
    let dir = project(
        tmp.path(),
        "bomb",
        "functions:\n  bomb:\n    runtime: python3\n    handler: bomb.handler\n    timeout_ms: 3000\n    memory_mb: 256\n  calm:\n    runtime: python3\n    handler: calm.handler\n",
        &[
            ("bomb.py", bomb),
            (
                "calm.py",
                "def handler(event, context):\n    return 'calm'\n",
            ),
        ],
    );
    server.deploy(&dir).await;
    let (e, _) = call(&server, "calm", json!({})).await;
    assert_eq!(e, "");
    let bombing = tokio::spawn(
        server
            .req(reqwest::Method::POST, "/v1/functions/bomb/invocations")
            .body("{}")
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The server and the neighbour keep answering while the bomb goes off.
    for _ in 0..5 {
        let t = Instant::now();
        let (e, body) = call(&server, "calm", json!({})).await;
        assert_eq!((e.as_str(), body), ("", json!("calm")));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    // At most pids.max processes ever existed for it.
    let bombers = runtime_processes(&server.data_dir, server.child.id()).len();
    assert!(bombers <= 2 + 512 + 8, "{bombers} processes");
    let res = bombing.await.unwrap().unwrap();
    let error_type = header(&res, "x-nimbus-error-type").to_string();
    assert!(
        ["FunctionTimeout", "FunctionOutOfMemory"].contains(&error_type.as_str()),
        "{error_type}"
    );
    // The whole tree went with the instance.
    let (e, _) = call(&server, "calm", json!({})).await;
    assert_eq!(e, "");
    stop_clean(server);
}

#[tokio::test]
async fn tmp_is_private_and_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let server = sandboxed(&tmp.path().join("data"));
    let code = "def handler(event, context):\n    chunk = b'x' * (1024 * 1024)\n    written = 0\n    try:\n        with open('/tmp/big', 'wb') as f:\n            for _ in range(1024):\n                f.write(chunk)\n                written += 1\n    except OSError as e:\n        return {'written_mb': written, 'error': str(e)}\n    return {'written_mb': written}\n";
    let dir = project(
        tmp.path(),
        "tmpfill",
        "functions:\n  filler:\n    runtime: python3\n    handler: main.handler\n    memory_mb: 256\n    ephemeral_storage_mb: 32\n    timeout_ms: 10000\n",
        &[("main.py", code)],
    );
    server.deploy(&dir).await;
    let (e, body) = call(&server, "filler", json!({})).await;
    assert_eq!(e, "", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("No space left on device"),
        "{body}"
    );
    assert!(body["written_mb"].as_u64().unwrap() <= 32, "{body}");
    stop_clean(server);
}

#[tokio::test]
async fn a_cpu_limit_holds_and_a_spinner_leaves_its_neighbour_responsive() {
    let tmp = tempfile::tempdir().unwrap();
    let server = sandboxed(&tmp.path().join("data"));
    let code = "import time\ndef handler(event, context):\n    if 'spin' in event:\n        end = time.monotonic() + event['spin']\n        while time.monotonic() < end:\n            pass\n        return {'cpu_s': time.process_time()}\n    return 'pong'\n";
    let dir = project(
        tmp.path(),
        "cpu",
        "functions:\n  capped:\n    runtime: python3\n    handler: main.handler\n    cpu_millicores: 200\n    timeout_ms: 10000\n  spinner:\n    runtime: python3\n    handler: main.handler\n    max_instances: 2\n    timeout_ms: 10000\n  pinger:\n    runtime: python3\n    handler: main.handler\n",
        &[("main.py", code)],
    );
    server.deploy(&dir).await;
    // A fifth of a core for one second of wall time: about 0.2 s of CPU, not 1 s.
    let (e, body) = call(&server, "capped", json!({"spin": 1.0})).await;
    assert_eq!(e, "", "{body}");
    let cpu_s = body["cpu_s"].as_f64().unwrap();
    assert!(
        cpu_s < 0.45,
        "a 200-millicore instance used {cpu_s} s of CPU in 1 s"
    );

    // Two spinners take both cores; the neighbour's calls stay quick.
    let (e, _) = call(&server, "pinger", json!({})).await;
    assert_eq!(e, "");
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(
                server
                    .req(reqwest::Method::POST, "/v1/functions/spinner/invocations")
                    .body(r#"{"spin": 3}"#)
                    .send(),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let (e, _) = call(&server, "pinger", json!({})).await;
        assert_eq!(e, "");
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    println!(
        "pinger next to two spinners: p50 {:?}, p99 {:?}",
        latencies[25], p99
    );
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    for s in spinners {
        s.await.unwrap().unwrap();
    }
    stop_clean(server);
}

#[tokio::test]
async fn without_root_a_user_namespace_still_jails_the_function() {
    let tmp = tempfile::tempdir().unwrap();
    // The server runs as nobody, in a data dir it owns.
    const NOBODY: u32 = 65534;
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let nobody = Some(rustix::process::Uid::from_raw(NOBODY));
    rustix::fs::chown(&data, nobody, Some(rustix::process::Gid::from_raw(NOBODY))).unwrap();
    let server = Server::start_through(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &data,
        &[],
        &[],
    );
    let dir = project(
        tmp.path(),
        "spy",
        "functions:\n  spy:\n    runtime: python3\n    handler: spy.handler\n",
        &[("spy.py", SPY)],
    );
    server.deploy(&dir).await;
    let (e, spy) = call(&server, "spy", json!({"data": data, "victim_pid": 1})).await;
    assert_eq!(e, "", "{spy}");
    // Its own uid outside is the server's; inside, a user namespace maps only that one.
    assert_eq!(spy["uid"], NOBODY);
    for key in ["token", "db", "code", "write_code"] {
        assert!(
            spy[key].as_str().unwrap().starts_with("denied"),
            "{key}: {}",
            spy[key]
        );
    }
    // The stem's view of the code cache is gone (the empty mount point is its own here).
    assert_eq!(spy["stem_code"], "allowed: []");
    assert_eq!(spy["procs"], json!([1]), "{spy}");
    let events = server.get_json("/v1/events?function=spy").await;
    assert!(
        events["events"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("from a prewarmed process"),
        "{events}"
    );
    stop_clean(server);
}

#[test]
fn require_sandbox_refuses_to_start_without_every_protection() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let nobody = Some(rustix::process::Uid::from_raw(65534));
    rustix::fs::chown(&data, nobody, Some(rustix::process::Gid::from_raw(65534))).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(crate::harness::NIMBUS)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--s3-listen",
            "127.0.0.1:0",
            "--require-sandbox",
            "--data-dir",
        ])
        .arg(&data)
        .env("NIMBUS_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--require-sandbox: not every protection is available: identity")
            && stderr.contains("resources"),
        "{stderr}"
    );
}
