//! The command line itself: manifests found and checked as a user writes them, the
//! environment read as scripts set it, the server's log fit for a file, and one JSON
//! shape per command.

use std::io::Read;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::{NIMBUS, Server, project};

/// Every unknown key of a manifest is named at once, each with the key it most likely
/// meant, and nothing is deployed.
#[tokio::test]
async fn unknown_manifest_keys_are_all_named_with_suggestions() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "typos",
        "functions:\n  typos:\n    runtime: python3\n    handler: main.handler\n    \
         runtme: x\n    memroy_mb: 256\n    triggers:\n      - http: {path: /t, method: [GET]}\n",
        &[("main.py", "def handler(e, c):\n    return 1\n")],
    );
    let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(
            "functions.typos: unknown keys `runtme` (did you mean `runtime`?), \
             `memroy_mb` (did you mean `memory_mb`?)"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "functions.typos.triggers[0].http: unknown key `method` (did you mean `methods`?)"
        ),
        "{}",
        run.stderr
    );
    let f = server.get_json("/v1/functions/typos").await;
    assert_eq!(f["code"], "function_not_found", "{f}");
}

/// `nimbus.yml` is a manifest too, and `deploy` takes the manifest file itself.
#[tokio::test]
async fn deploy_takes_nimbus_yml_and_a_manifest_file() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = tmp.path().join("yml");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("nimbus.yml"),
        "functions:\n  yml:\n    runtime: python3\n    handler: main.handler\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("main.py"),
        "def handler(e, c):\n    return 'yml'\n",
    )
    .unwrap();
    server.deploy(&dir).await;
    let other = project(
        tmp.path(),
        "file",
        "functions:\n  file:\n    runtime: python3\n    handler: main.handler\n",
        &[("main.py", "def handler(e, c):\n    return 'file'\n")],
    );
    server.deploy(&other.join("nimbus.yaml")).await;
    for name in ["yml", "file"] {
        let res = server.invoke(name, "{}").await;
        assert_eq!(res.text().await.unwrap(), name);
    }
}

/// `NIMBUS_TOKEN=` means no token: the CLI reads the local server's admin token as if
/// the variable were unset.
#[tokio::test]
async fn an_empty_token_variable_counts_as_unset() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let out = tokio::process::Command::new(NIMBUS)
        .args(["ls", "-o", "json"])
        .env("NIMBUS_ENDPOINT", &server.endpoint)
        .env("NIMBUS_DATA_DIR", &server.data_dir)
        .env("NIMBUS_TOKEN", "")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["functions"].is_array(), "{v}");
}

/// A server whose stderr is not a terminal logs without colour codes.
#[test]
fn the_server_log_has_no_colour_codes_in_a_pipe() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(NIMBUS)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--s3-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(tmp.path())
        .env("NIMBUS_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("listening") {
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "the server exited before listening");
        seen.extend_from_slice(&buf[..n]);
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    child.wait().unwrap();
    assert!(log.contains("INFO"), "no log lines: {log}");
    assert!(!log.contains('\u{1b}'), "colour codes in {log:?}");
}

/// `deploy` and `publish` answer `-o json` with one object each; in text, `deploy` names
/// every route and the function URL with where to reach them.
#[tokio::test]
async fn deploy_and_publish_have_one_json_shape_and_deploy_prints_routes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "shape",
        "functions:\n  shape:\n    runtime: python3\n    handler: main.handler\n    \
         url: {auth: anonymous}\n    triggers:\n      - http: {path: /shape, methods: [GET], auth: anonymous}\n  \
         plain:\n    runtime: python3\n    handler: main.handler\n",
        &[("main.py", "def handler(e, c):\n    return 1\n")],
    );
    let dir_arg = dir.to_str().unwrap();
    let text = server.cli(&["deploy", dir_arg]).await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    let base = &server.endpoint;
    assert!(
        text.stdout
            .contains(&format!("  route GET /shape (anonymous): {base}/shape\n")),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains(&format!("  url   {base}/fn/shape/ (anonymous)\n")),
        "{}",
        text.stdout
    );

    let json = server.cli(&["deploy", dir_arg, "-o", "json"]).await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    let functions = v["functions"].as_array().unwrap();
    assert_eq!(functions.len(), 2, "{v}");
    let shape = functions.iter().find(|f| f["name"] == "shape").unwrap();
    assert_eq!(shape["change"], "unchanged", "{shape}");
    assert_eq!(shape["revision"], 1, "{shape}");
    assert_eq!(shape["runtime"], "python3", "{shape}");
    assert_eq!(shape["url"], format!("{base}/fn/shape/"), "{shape}");
    assert_eq!(
        shape["routes"],
        serde_json::json!([{"path": "/shape", "methods": ["GET"], "auth": "anonymous",
                            "url": format!("{base}/shape")}])
    );
    let plain = functions.iter().find(|f| f["name"] == "plain").unwrap();
    assert_eq!(plain["url"], Value::Null, "{plain}");
    assert_eq!(plain["routes"], serde_json::json!([]), "{plain}");

    let published = server.cli(&["publish", "shape", "-o", "json"]).await;
    assert_eq!(published.code, 0, "{}", published.stderr);
    let p: Value = serde_json::from_str(&published.stdout).unwrap();
    assert_eq!(
        (&p["function"], &p["version"], &p["created"]),
        (&"shape".into(), &1.into(), &true.into()),
        "{p}"
    );
    let again = server.cli(&["publish", "shape", "-o", "json"]).await;
    let p: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(
        (&p["version"], &p["created"]),
        (&1.into(), &false.into()),
        "{p}"
    );
    // Lists are objects too, never bare arrays.
    for args in [["versions", "shape"], ["alias", "ls"], ["dlq", "ls"]] {
        let mut args = args.to_vec();
        if args[0] == "alias" {
            args.push("shape");
        }
        args.extend(["-o", "json"]);
        let run = server.cli(&args).await;
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        let v: Value = serde_json::from_str(&run.stdout).unwrap();
        assert!(v.is_object(), "{args:?}: {v}");
    }
}

/// `describe` in text shows settings in human units, routes and the function URL with
/// where to reach them, env variable names but never their values, and the versions and
/// aliases; with `-o json`, one object holding the API's answers.
#[tokio::test]
async fn describe_names_env_variables_without_values_and_shows_releases() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "desc",
        "functions:\n  desc:\n    runtime: python3\n    handler: main.handler\n    \
         memory_mb: 256\n    timeout_ms: 900000\n    concurrency: 4\n    max_instances: 7\n    \
         env: {GREETING: Bonjour, DB_PASSWORD: s3cret-value}\n    url: {auth: anonymous}\n    \
         triggers:\n      - http: {path: /desc, methods: [GET, POST], auth: key}\n",
        &[("main.py", "def handler(e, c):\n    return 1\n")],
    );
    server.deploy(&dir).await;
    let published = server
        .cli(&["publish", "desc", "--description", "first"])
        .await;
    assert_eq!(published.code, 0, "{}", published.stderr);
    let alias = server.cli(&["alias", "set", "desc", "prod", "1"]).await;
    assert_eq!(alias.code, 0, "{}", alias.stderr);

    let run = server.cli(&["describe", "desc"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = &run.stdout;
    let base = &server.endpoint;
    for want in [
        "name         desc\n".to_string(),
        "runtime      python3\n".into(),
        "type         handler\n".into(),
        "handler      main.handler\n".into(),
        "memory       256 MB\n".into(),
        "timeout      15 min\n".into(),
        "concurrency  4 calls per instance\n".into(),
        "instances    0 to 7 (".into(),
        format!("url          {base}/fn/desc/ (anonymous)\n"),
        format!("  route GET,POST /desc (key): {base}/desc\n"),
        "env          DB_PASSWORD, GREETING (values not shown".into(),
        "layers       none\n".into(),
        "dependencies none\n".into(),
        "revision     1\n".into(),
        "  prod -> version 1\n".into(),
    ] {
        assert!(t.contains(&want), "{want:?} not in\n{t}");
    }
    assert!(!t.contains("s3cret-value") && !t.contains("Bonjour"), "{t}");
    let f = server.get_json("/v1/functions/desc").await;
    let code = &f["code_sha256"].as_str().unwrap()[..12];
    assert!(t.contains(&format!("code         {code}\n")), "{t}");
    let version = t.lines().find(|l| l.starts_with("  1 ")).expect(t);
    assert!(
        version.contains(&format!("code {code}")) && version.ends_with("  first"),
        "{version}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("updated      ") && l.ends_with("(just now)")),
        "{t}"
    );

    let json = server.cli(&["describe", "desc", "-o", "json"]).await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["aliases", "function", "versions"], "{v}");
    // The function is the API's object, as `GET /v1/functions/desc` answers it.
    assert_eq!(v["function"], f);
    assert_eq!(v["function"]["env"]["DB_PASSWORD"], "s3cret-value");
    assert_eq!(v["versions"][0]["version"], 1, "{v}");
    assert_eq!(v["versions"][0]["description"], "first", "{v}");
    assert_eq!(v["aliases"][0]["name"], "prod", "{v}");
    assert_eq!(v["aliases"][0]["version"], 1, "{v}");

    let missing = server.cli(&["describe", "ghost"]).await;
    assert_eq!(missing.code, 1);
    assert_eq!(missing.stdout, "");
    assert_eq!(missing.stderr.lines().count(), 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("function_not_found"),
        "{}",
        missing.stderr
    );
}

/// The handler of the invoke tests: it logs, then answers JSON, text, or fails.
const SAYS: &str = "def handler(e, c):\n    print('said', e.get('n'))\n    \
    if e.get('fail'):\n        raise ValueError('bad n ' + str(e.get('n')))\n    \
    if e.get('text'):\n        return 'plain text'\n    return {'n': e.get('n')}\n";

/// `invoke -o json` answers one object whether the call succeeds or fails, and exits 1
/// when the function failed; `--async -o json` answers the submission.
#[tokio::test]
async fn invoke_answers_one_json_object_and_exits_one_on_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "says",
        "functions:\n  says:\n    runtime: python3\n    handler: main.handler\n",
        &[("main.py", SAYS)],
    );
    server.deploy(&dir).await;

    let ok = server
        .cli(&[
            "invoke",
            "says",
            "-d",
            r#"{"n": 7}"#,
            "--logs",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(ok.stderr, "", "logs belong in the object");
    let v: Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["result"], serde_json::json!({"n": 7}), "{v}");
    assert_eq!(v["error"], Value::Null, "{v}");
    assert_eq!(v["cold_start"], true, "{v}");
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0, "{v}");
    let id = v["request_id"].as_str().unwrap();
    assert_eq!(id.len(), 36, "{v}");
    let logs: Vec<&str> = v["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(logs.contains(&"said 7"), "{v}");
    // The request id is the call's: the server knows it.
    let record = server.get_json(&format!("/v1/invocations/{id}")).await;
    assert_eq!(record["status"], "succeeded", "{record}");

    let text = server
        .cli(&["invoke", "says", "-d", r#"{"text": true}"#, "-o", "json"])
        .await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    let v: Value = serde_json::from_str(&text.stdout).unwrap();
    assert_eq!(v["result"], "plain text", "{v}");
    assert_eq!(v["cold_start"], false, "{v}");
    assert!(v.get("logs").is_none(), "logs only with --logs: {v}");

    let failed = server
        .cli(&[
            "invoke",
            "says",
            "-d",
            r#"{"n": 3, "fail": true}"#,
            "-o",
            "json",
        ])
        .await;
    assert_eq!(failed.code, 1, "{}", failed.stdout);
    let v: Value = serde_json::from_str(&failed.stdout).unwrap();
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["result"], Value::Null, "{v}");
    assert_eq!(v["error"]["errorType"], "ValueError", "{v}");
    assert_eq!(v["error"]["errorMessage"], "bad n 3", "{v}");
    assert!(
        !v["error"]["stackTrace"].as_array().unwrap().is_empty(),
        "{v}"
    );
    assert_eq!(failed.stderr.lines().count(), 1, "{}", failed.stderr);
    assert_eq!(
        failed.stderr, "error: function says failed: ValueError: bad n 3\n",
        "{}",
        failed.stderr
    );
    // The text form fails the same way.
    let failed = server
        .cli(&["invoke", "says", "-d", r#"{"fail": true}"#])
        .await;
    assert_eq!(failed.code, 1);
    assert!(
        failed
            .stderr
            .contains("error: function says failed: ValueError")
    );

    let submit = |key: &'static str| {
        let server = &server;
        async move {
            let run = server
                .cli(&[
                    "invoke",
                    "says",
                    "--async",
                    "--idempotency-key",
                    key,
                    "-d",
                    "{}",
                    "-o",
                    "json",
                ])
                .await;
            assert_eq!(run.code, 0, "{}", run.stderr);
            serde_json::from_str::<Value>(&run.stdout).unwrap()
        }
    };
    let first = submit("k-1").await;
    let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["duplicate", "request_id"], "{first}");
    assert_eq!(first["duplicate"], false, "{first}");
    let again = submit("k-1").await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["request_id"], first["request_id"]);
}

/// `logs --follow -o json` prints each new line as one JSON object on a line of its own.
#[tokio::test]
async fn logs_follow_prints_one_json_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "says",
        "functions:\n  says:\n    runtime: python3\n    handler: main.handler\n",
        &[("main.py", SAYS)],
    );
    server.deploy(&dir).await;
    let mut follower = tokio::process::Command::new(NIMBUS)
        .args(["logs", "says", "--follow", "-o", "json"])
        .env("NIMBUS_ENDPOINT", &server.endpoint)
        .env("NIMBUS_TOKEN", &server.token)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    // The follower may connect after a call; calls go on until one of its lines comes.
    let calls = async {
        for n in 0.. {
            let res = server.invoke("says", &format!(r#"{{"n": {n}}}"#)).await;
            assert_eq!(res.status(), 200);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let first = async { lines.next_line().await.unwrap().expect("the follow ended") };
    let line = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::select! {
            line = first => line,
            _ = calls => unreachable!(),
        }
    })
    .await
    .expect("a followed line within 10 s");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert!(v.is_object(), "{line}");
    assert!(
        v["message"].as_str().unwrap().starts_with("said "),
        "{line}"
    );
    assert_eq!(v["function"], "says", "{line}");
    assert!(v["level"].is_string() && v["time_ms"].is_i64(), "{line}");
    assert_eq!(v["request_id"].as_str().unwrap().len(), 36, "{line}");
    // The next one is a line of its own too.
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let _ = server.invoke("says", r#"{"n": "last"}"#).await;
        lines.next_line().await.unwrap().unwrap()
    })
    .await
    .unwrap();
    let v: Value = serde_json::from_str(&next).unwrap();
    assert!(v["message"].is_string(), "{next}");
}
