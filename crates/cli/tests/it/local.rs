//! `nimbus local invoke`: a function of a project run with no server, as a server runs it.

use std::path::Path;

use crate::harness::{NIMBUS, Run, project};

async fn local(dir: &Path, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(NIMBUS)
        .args(["local", "invoke"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        // No server anywhere: these must not be needed.
        .env_remove("NIMBUS_ENDPOINT")
        .env_remove("NIMBUS_TOKEN")
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A handler gets the event and context as on a server and its logs come back; a route
/// request becomes the payload 2.0 event (with path parameters) through the same gateway;
/// a failure exits non-zero with the error; the project's dependencies are built for it.
#[tokio::test]
async fn local_invoke_runs_a_handler_and_a_route_with_no_server() {
    let tmp = tempfile::tempdir().unwrap();
    let code = "import logging\nimport six\n\
def handler(event, context):\n    print('event', event)\n    \
logging.getLogger().warning('careful')\n    \
if event.get('fail'):\n        raise ValueError('asked to fail')\n    \
if 'rawPath' in event:\n        \
return {'statusCode': 201, 'body': event['rawPath'] + ' ' + event['pathParameters']['id']}\n    \
return {'got': event, 'name': context.function_name, 'py3': six.PY3}\n";
    let dir = project(
        tmp.path(),
        "proj",
        "functions:\n  hello:\n    runtime: python3\n    handler: main.handler\n    \
         triggers:\n      - http: {path: \"/items/{id}\", methods: [GET], auth: anonymous}\n",
        &[("main.py", code), ("requirements.txt", "six==1.16.0\n")],
    );
    let run = local(&dir, &["hello", "--data", r#"{"a": 1}"#]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"got": {"a": 1}, "name": "hello", "py3": true})
    );
    assert!(
        run.stderr.contains("stdout event {'a': 1}"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("WARNING careful"), "{}", run.stderr);
    assert!(
        run.stderr.contains("Successfully installed six"),
        "{}",
        run.stderr
    );

    let run = local(&dir, &["hello", "--route", "GET /items/7"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stdout.trim(), "/items/7 7");
    assert!(run.stderr.contains("HTTP 201"), "{}", run.stderr);
    // Built once: the second run installs nothing.
    assert!(!run.stderr.contains("Collecting"), "{}", run.stderr);

    let run = local(&dir, &["hello", "--data", r#"{"fail": true}"#]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("error: function hello failed: ValueError: asked to fail"),
        "{}",
        run.stderr
    );
    let run = local(&dir, &["nope"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no function `nope`"), "{}", run.stderr);
    assert!(run.stderr.contains("it has hello"), "{}", run.stderr);
}
