//! The OpenAPI document is true to the server: schemathesis (the real tool, from PyPI) runs
//! every check on every operation of the control API and finds nothing.

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, header, python_project, test_python};

/// Makes what the operations of `schemathesis.toml` work on, then runs schemathesis with
/// all checks and a fixed seed, so a failure reproduces.
#[tokio::test]
async fn schemathesis_finds_nothing() {
    let python = test_python();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let echo = "def handler(event, context):\n    return event\n";
    for name in ["st", "doomed"] {
        server
            .deploy(&python_project(tmp.path(), name, 3000, echo))
            .await;
    }
    let publish = |description: &str| {
        server
            .req(Method::POST, "/v1/functions/st/versions")
            .json(&json!({ "description": description }))
            .send()
    };
    assert_eq!(publish("one").await.unwrap().status(), StatusCode::CREATED);
    // A second version needs a change: another timeout, and a timer for the trigger
    // operations (yearly: it does not fire during the run).
    let again = crate::harness::project(
        tmp.path(),
        "st",
        "functions:\n  st:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 4000\n    triggers:\n      - timer: {name: yearly, cron: \"0 0 1 1 *\"}\n",
        &[("main.py", echo)],
    );
    server.deploy(&again).await;
    assert_eq!(publish("two").await.unwrap().status(), StatusCode::CREATED);
    for alias in ["live", "doomed"] {
        let res = server
            .req(Method::PUT, &format!("/v1/functions/st/aliases/{alias}"))
            .json(&json!({ "version": 1 }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let call = server.invoke("st", "{}").await;
    assert_eq!(call.status(), StatusCode::OK);
    let request_id = header(&call, "x-nimbus-request-id").to_string();
    let st = server.get_json("/v1/functions/st").await;
    let sha256 = st["code_sha256"].as_str().unwrap().to_string();
    let key: Value = server
        .req(Method::POST, "/v1/keys")
        .json(&json!({ "name": "doomed" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key_id = key["id"].as_str().unwrap().to_string();

    for bucket in ["st-site", "st-doomed"] {
        let res = server
            .req(Method::POST, "/v1/buckets")
            .json(&json!({ "name": bucket }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    // An object, so that a listing has something to answer and the forced delete something
    // to delete.
    for bucket in ["st-site", "st-doomed"] {
        let mut put = std::process::Command::new(&python);
        put.args([
            "-m",
            "awscli",
            "s3",
            "cp",
            "-",
            &format!("s3://{bucket}/a/b.txt"),
        ])
        .args([
            "--endpoint-url",
            &server.s3_endpoint,
            "--region",
            "us-east-1",
        ])
        .stdin(std::process::Stdio::piped());
        crate::harness::aws_env(&mut put, &server.data_dir);
        let mut child = put.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"hello").unwrap();
        assert!(child.wait().unwrap().success(), "aws s3 cp to {bucket}");
    }

    // Flows: `st` ends at once (starts, also synchronous ones, finish within the run),
    // `st-doomed` is for the DELETE, and an execution of `st-wait` waits a year, for the
    // operations on one execution.
    let pass = json!({"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}});
    let wait = json!({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 31_536_000, "End": true}}});
    for (flow, definition) in [("st", &pass), ("st-doomed", &pass), ("st-wait", &wait)] {
        let res = server
            .req(Method::PUT, &format!("/v1/flows/{flow}"))
            .json(&json!({ "definition": definition }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let execution: Value = server
        .req(Method::POST, "/v1/flows/st-wait/executions")
        .json(&json!({ "input": {} }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let execution_id = execution["id"].as_str().unwrap().to_string();

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/schemathesis");
    // Through the interpreter: the venv's `schemathesis` script names, in its first line, the
    // staging directory the venv was built in.
    let out = tokio::process::Command::new(&python)
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
        ])
        .arg("--config-file")
        .arg(config.join("schemathesis.toml"))
        .args([
            "--no-color",
            "run",
            "--checks",
            "all",
            "--max-examples",
            "30",
        ])
        .args(["--seed", "1"])
        .arg(server.url("/v1/openapi.json"))
        .env("ST_HOOKS", config.join("hooks.py"))
        .env("ST_TOKEN", &server.token)
        .env("ST_SHA256", &sha256)
        .env("ST_REQUEST_ID", &request_id)
        .env("ST_KEY_ID", &key_id)
        .env("ST_EXECUTION_ID", &execution_id)
        .current_dir(tmp.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found something:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
