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
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
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
