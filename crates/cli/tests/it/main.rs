//! End-to-end tests: the real `nimbus server` on a free port, driven over HTTP and through
//! the CLI, running real Python and Node.js instances.

mod asynq;
mod bucket_events;
mod build;
mod bus;
mod cli;
mod cluster;
mod dev;
mod flow_triggers;
mod flows;
mod flows_sfn;
mod gateway;
mod harness;
mod init;
mod invoke_path;
mod lambda_api;
mod lambda_env;
mod limits;
mod listener;
mod local;
mod node_errors;
mod observe;
mod openapi;
mod pid1;
mod queue;
mod releases;
mod runtime_api;
mod s3;
mod sandbox;
mod scheduler;
mod storage;
mod timers;
mod website;

use std::io::Write;

use harness::{Server, examples, header, project, python_project};
use reqwest::{Method, StatusCode};
use serde_json::Value;

#[tokio::test]
async fn deploy_and_invoke_both_examples_with_warm_reuse() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    server.deploy(&examples().join("hello-python")).await;
    server.deploy(&examples().join("hello-node")).await;

    for name in ["hello", "hello-node"] {
        let run = server
            .cli(&["invoke", name, "--data", r#"{"name":"Ada"}"#])
            .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let first: Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(first["message"], "Hello, Ada!", "{name}");
        assert_eq!(first["invocations"], 1, "{name}");

        // The second call reuses the instance: module state survives and it is not cold.
        let res = server.invoke(name, r#"{"name":"Bo"}"#).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "x-nimbus-cold-start"), "false", "{name}");
        assert_eq!(header(&res, "content-type"), "application/json");
        let duration: f64 = header(&res, "x-nimbus-duration-ms").parse().unwrap();
        assert!(duration > 0.0 && duration < 1000.0, "{duration}");
        let request_id = header(&res, "x-nimbus-request-id").to_string();
        let second: Value = res.json().await.unwrap();
        assert_eq!(second["invocations"], 2, "{name}");
        let id_key = if name == "hello" {
            "request_id"
        } else {
            "requestId"
        };
        assert_eq!(second[id_key], request_id.as_str());

        // The call's own output is attributed to its request id.
        let record: Value = server
            .get_json(&format!("/v1/invocations/{request_id}"))
            .await;
        assert_eq!(record["status"], "succeeded");
        assert_eq!(record["cold_start"], false);
        let lines: Vec<&str> = record["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["message"].as_str().unwrap())
            .collect();
        assert_eq!(lines, ["greeting Bo (call 2 of this instance)"], "{name}");
    }

    let ls = server.cli(&["ls", "--output", "json"]).await;
    let list: Value = serde_json::from_str(&ls.stdout).unwrap();
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello", "hello-node"]);
    let describe = server.cli(&["describe", "hello"]).await;
    // The variable's name, never its value.
    assert!(
        describe.stdout.contains("main.handler")
            && describe.stdout.contains("GREETING")
            && !describe.stdout.contains("Hello"),
        "{}",
        describe.stdout
    );
    // Redeploying unchanged code changes nothing and keeps the warm instance.
    let again = server
        .cli(&["deploy", examples().join("hello-python").to_str().unwrap()])
        .await;
    assert!(again.stdout.contains("unchanged hello"), "{}", again.stdout);
    assert_eq!(
        header(&server.invoke("hello", "{}").await, "x-nimbus-cold-start"),
        "false"
    );
}

#[tokio::test]
async fn handler_exception_is_a_lambda_shaped_error() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "failing",
        "functions:\n  pyfail:\n    runtime: python3\n    handler: main.handler\n  jsfail:\n    runtime: nodejs\n    handler: index.handler\n",
        &[
            (
                "main.py",
                "def handler(event, context):\n    raise KeyError('missing thing')\n",
            ),
            (
                "index.js",
                "exports.handler = async () => { throw new RangeError('too far'); };\n",
            ),
        ],
    );
    server.deploy(&dir).await;
    for (name, error_type, message) in [
        ("pyfail", "KeyError", "'missing thing'"),
        ("jsfail", "RangeError", "too far"),
    ] {
        let res = server.invoke(name, "{}").await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "x-nimbus-error-type"), error_type);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["errorType"], error_type);
        assert_eq!(body["errorMessage"], message);
        assert!(!body["stackTrace"].as_array().unwrap().is_empty(), "{body}");

        let run = server.cli(&["invoke", name]).await;
        assert_eq!(run.code, 1);
        assert!(
            run.stderr.contains(&format!("{error_type}: {message}")),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty());
    }
}

#[tokio::test]
async fn timeout_kills_the_instance_and_the_next_call_works() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let code = "import time\ndef handler(event, context):\n    if event.get('sleep'):\n        time.sleep(30)\n    return {'left_ms': context.get_remaining_time_in_millis()}\n";
    server
        .deploy(&python_project(tmp.path(), "slow", 500, code))
        .await;
    let started = std::time::Instant::now();
    let res = server.invoke("slow", r#"{"sleep": true}"#).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(header(&res, "x-nimbus-error-type"), "FunctionTimeout");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errorMessage"], "Task timed out after 0.50 seconds");

    let res = server.invoke("slow", "{}").await;
    assert_eq!(header(&res, "x-nimbus-error-type"), "");
    assert_eq!(
        header(&res, "x-nimbus-cold-start"),
        "true",
        "a new instance replaced the killed one"
    );
    let body: Value = res.json().await.unwrap();
    let left = body["left_ms"].as_i64().unwrap();
    assert!((1..=500).contains(&left), "{left}");
}

#[tokio::test]
async fn interpreter_crash_is_reported_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let code = r#"
import ctypes, os, sys
def handler(event, context):
    how = event.get("how")
    if how == "segfault":
        ctypes.string_at(0)
    if how == "exit":
        os._exit(7)
    if how == "sys_exit":
        sys.exit(5)
    return "alive"
"#;
    server
        .deploy(&python_project(tmp.path(), "crashy", 3000, code))
        .await;
    for (how, expect) in [
        ("segfault", "signal 11 (SIGSEGV)"),
        ("exit", "status 7"),
        ("sys_exit", "status 5"),
    ] {
        let res = server
            .invoke("crashy", &format!(r#"{{"how":"{how}"}}"#))
            .await;
        assert_eq!(res.status(), StatusCode::OK, "{how}");
        assert_eq!(
            header(&res, "x-nimbus-error-type"),
            "Runtime.ExitError",
            "{how}"
        );
        let body: Value = res.json().await.unwrap();
        let message = body["errorMessage"].as_str().unwrap();
        assert!(message.contains(expect), "{how}: {message}");
        if how == "segfault" {
            // faulthandler's traceback names the handler's line.
            assert!(message.contains("Fatal Python error"), "{message}");
        }
        let ok = server.invoke("crashy", "{}").await;
        assert_eq!(ok.text().await.unwrap(), "alive", "after {how}");
    }
}

#[tokio::test]
async fn unsafe_archives_are_rejected_with_400() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    for (name, data) in [("../escape.py", "x"), ("/etc/cron.d/evil", "x")] {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(data.as_bytes()).unwrap();
        let zip = w.finish().unwrap().into_inner();
        let res = server
            .req(Method::POST, "/v1/code")
            .body(zip)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{name}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "invalid_archive");
        assert!(body["message"].as_str().unwrap().contains(name), "{body}");
    }
    // Nothing of the refused archives reached the disk outside the data dir.
    assert!(!tmp.path().join("escape.py").exists());
    assert!(!tmp.path().join("code/escape.py").exists());
}

#[tokio::test]
async fn every_api_call_needs_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    let token_mode = std::fs::metadata(tmp.path().join("admin.token")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&token_mode.permissions()) & 0o777,
        0o600
    );
    for (method, path) in [
        (Method::GET, "/v1/functions"),
        (Method::POST, "/v1/functions/hello/invocations"),
        (Method::POST, "/v1/code"),
        (Method::DELETE, "/v1/functions/hello"),
    ] {
        let res = server
            .http
            .request(method.clone(), server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
    }
    let doc = server
        .http
        .get(server.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(doc.status(), StatusCode::OK);
    let doc: Value = doc.json().await.unwrap();
    assert!(doc["paths"]["/v1/functions/{name}/invocations"]["post"].is_object());
    // The CLI with a wrong token says so in one line and fails.
    let out = tokio::process::Command::new(harness::NIMBUS)
        .args(["ls", "--token", "wrong", "--endpoint", &server.endpoint])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: the bearer token is wrong (unauthorized)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn restart_keeps_functions_and_stop_leaves_no_instance_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let code = "import os\ndef handler(event, context):\n    return {'pid': os.getpid()}\n";
    {
        let server = Server::start(&data);
        server
            .deploy(&python_project(tmp.path(), "keeper", 3000, code))
            .await;
        let res = server.invoke("keeper", "{}").await;
        assert_eq!(res.status(), StatusCode::OK);
        let server_pid = server.child.id();
        // The check below can see runtime processes: here they are.
        assert!(!runtime_processes(&data, server_pid).is_empty());
        assert!(!server_cgroups(&data, server_pid).is_empty());
        let status = server.stop();
        assert!(status.success(), "{status:?}");
        // The graceful stop killed every runtime process: instances, prewarmed ones, the
        // Python fork server and what it forked.
        assert_no_runtime_processes(&data, server_pid);
    }

    let server = Server::start(&data);
    let res = server.invoke("keeper", "{}").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-nimbus-cold-start"), "true");
    let run = server.cli(&["ls"]).await;
    assert!(run.stdout.contains("keeper"), "{}", run.stdout);

    // A second server on the same data dir is refused while this one runs.
    let killed = server.child.id();
    let second = std::process::Command::new(crate::harness::NIMBUS)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--s3-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .env("NIMBUS_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "error: another nimbus server (pid {killed}) uses the data dir"
        )),
        "{stderr}"
    );

    // Killed, a server cannot clean up: the next one on its data dir removes its cgroups,
    // and so whatever still ran in them, even where the hierarchy is shared.
    let killed_cgroup = cgroup_name(&data, killed);
    assert!(!cgroups_named(&killed_cgroup).is_empty());
    server.kill();
    let server = Server::start(&data);
    let gone = (0..250).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        cgroups_named(&killed_cgroup).is_empty()
    });
    assert!(gone, "{:?}", cgroups_named(&killed_cgroup));
    assert!(!server_cgroups(&data, server.child.id()).is_empty());
    assert!(server.stop().success());
}

#[tokio::test]
async fn functions_see_only_their_own_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(&tmp.path().join("data"), &[("SERVER_SECRET", "s3cr3t")]);
    let dir = project(
        tmp.path(),
        "envy",
        "functions:\n  envy:\n    runtime: python3\n    handler: main.handler\n    memory_mb: 192\n    env: {COLOR: blue, PORT: 8080}\n",
        &[(
            "main.py",
            "import os\ndef handler(event, context):\n    return {'env': dict(os.environ), 'cwd': os.getcwd(), 'mem': context.memory_limit_in_mb, 'fn': context.function_name}\n",
        )],
    );
    server.deploy(&dir).await;
    let body: Value = server.invoke("envy", "").await.json().await.unwrap();
    let env = body["env"].as_object().unwrap();
    assert_eq!(env["COLOR"], "blue");
    assert_eq!(env["PORT"], "8080");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "envy");
    assert!(
        !env.contains_key("SERVER_SECRET"),
        "the server's environment leaked: {env:?}"
    );
    assert!(!env.contains_key("NODE_EXTRA_CA_CERTS"));
    // An instance from a prewarmed process shows nothing of that.
    assert!(!env.contains_key("NIMBUS_STEM"));
    // The code is where Lambda has it, in the jail.
    assert_eq!(body["cwd"], "/var/task");
    assert_eq!(body["cwd"], env["LAMBDA_TASK_ROOT"]);
    assert_eq!(body["mem"], "192");
    assert_eq!(body["fn"], "envy");
}

#[tokio::test]
async fn bad_manifests_and_unknown_functions_fail_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "bad",
        "functions:\n  hello:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 0\n",
        &[("main.py", "")],
    );
    let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("nimbus.yaml: functions.hello.timeout_ms: 0 is out of range"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);

    let run = server.cli(&["invoke", "ghost"]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("function `ghost` does not exist"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("(function_not_found)"),
        "{}",
        run.stderr
    );
}

/// Live (not zombie) runtime processes of the server `server_pid` with data dir `data`:
/// those whose command line names the data dir (the shims live there) or that are in the
/// server's instance cgroups (jailed runtimes see their shim at /var/runtime).
pub fn runtime_processes(data: &std::path::Path, server_pid: u32) -> Vec<String> {
    let needle = data.to_string_lossy().into_owned();
    let cgroup = format!("/{}/", cgroup_name(data, server_pid));
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Ended with a slash, a process in the server's directory matches as one in an
            // instance directory below it does.
            let groups = std::fs::read_to_string(e.path().join("cgroup"))
                .unwrap_or_default()
                .replace('\n', "/\n");
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let ours = cmdline.contains(&needle) || groups.contains(&cgroup);
            (ours && !stat.contains(") Z ")).then_some(cmdline)
        })
        .collect()
}

/// Waits (bounded) until no runtime process of the stopped server is left, and checks that
/// its cgroups are gone too.
pub fn assert_no_runtime_processes(data: &std::path::Path, server_pid: u32) {
    let clean = (0..100).any(|_| {
        let left = runtime_processes(data, server_pid);
        if !left.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        left.is_empty()
    });
    assert!(
        clean,
        "runtime processes outlived the server: {:?}",
        runtime_processes(data, server_pid)
    );
    let cgroups = server_cgroups(data, server_pid);
    let detail: Vec<String> = cgroups.iter().map(|c| describe_cgroup(c)).collect();
    assert!(
        cgroups.is_empty(),
        "cgroups outlived the server: {detail:#?}"
    );
}

/// A cgroup directory with its instance directories, their processes and those processes'
/// states: what a failure needs to tell why a cgroup stayed.
fn describe_cgroup(dir: &str) -> String {
    let mut out = String::from(dir);
    let mut dirs = vec![std::path::PathBuf::from(dir)];
    if let Ok(entries) = std::fs::read_dir(dir) {
        dirs.extend(
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    for d in dirs {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        let states: Vec<String> = procs
            .split_whitespace()
            .map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                format!("{pid}: {}", stat.chars().take(60).collect::<String>())
            })
            .collect();
        out.push_str(&format!("\n  {}: {states:?}", d.display()));
    }
    out
}

/// The name of the cgroup directories of the server `server_pid` on the data dir `data`,
/// the last server started on it: `nimbus-<node id>-<start token>`, from the data dir's
/// `server.lock` (the server's pid, then its start token, a line each), which still names
/// the server after it stopped.
pub fn cgroup_name(data: &std::path::Path, server_pid: u32) -> String {
    let lock = std::fs::read_to_string(data.join("server.lock")).unwrap();
    assert_eq!(
        lock.lines().next(),
        Some(server_pid.to_string().as_str()),
        "server.lock names another server"
    );
    last_cgroup_name(data)
}

/// The name of the cgroup directories of the server last started on `data`, whatever its
/// pid (a server that was pid 1 of its own namespace, say).
pub fn last_cgroup_name(data: &std::path::Path) -> String {
    let id = std::fs::read_to_string(data.join("node.id")).unwrap();
    let lock = std::fs::read_to_string(data.join("server.lock")).unwrap();
    let token = lock.lines().nth(1).expect("a start token in server.lock");
    format!("nimbus-{}-{token}", id.trim())
}

/// The cgroup directories the server `server_pid` on the data dir `data` made, in every
/// hierarchy.
pub fn server_cgroups(data: &std::path::Path, server_pid: u32) -> Vec<String> {
    cgroups_named(&cgroup_name(data, server_pid))
}

/// The cgroup directories named `name`, in every hierarchy, sorted.
pub fn cgroups_named(name: &str) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - cgroup"))
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .flat_map(|mount| walkdir_find(std::path::Path::new(&mount), name, 4))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Directories named `name` up to `depth` levels below `dir`.
fn walkdir_find(dir: &std::path::Path, name: &str, depth: usize) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if e.file_name().to_string_lossy() == name {
            found.push(e.path().display().to_string());
        } else if depth > 0 {
            found.extend(walkdir_find(&e.path(), name, depth - 1));
        }
    }
    found
}

#[tokio::test]
async fn a_callers_trace_continues_into_the_function() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "traced",
        "functions:\n  py:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - http: {path: /traced, methods: [GET], auth: anonymous}\n  js:\n    runtime: nodejs\n    handler: index.handler\n",
        &[
            (
                "main.py",
                "def handler(event, context):\n    return {'traceparent': context.traceparent}\n",
            ),
            (
                "index.js",
                "exports.handler = async (event, context) => ({ traceparent: context.traceparent });\n",
            ),
        ],
    );
    server.deploy(&dir).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for path in [
        "/v1/functions/py/invocations",
        "/v1/functions/js/invocations",
    ] {
        let res = server
            .req(Method::POST, path)
            .header("traceparent", incoming)
            .body("{}")
            .send()
            .await
            .unwrap();
        let answered = header(&res, "traceparent").to_string();
        let body: Value = res.json().await.unwrap();
        // The same trace, a span of its own, and the function saw what the answer says.
        assert!(
            answered.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{answered}"
        );
        assert_ne!(answered, incoming);
        assert_eq!(body["traceparent"], answered.as_str(), "{path}");
    }
    // Through a route, and without a trace: a new one starts.
    let res = server.get("/traced").send().await.unwrap();
    let answered = header(&res, "traceparent").to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(answered.len(), 55, "{answered}");
    assert_eq!(body["traceparent"], answered.as_str());
}
