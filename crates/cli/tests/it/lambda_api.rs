//! The Lambda API with the real AWS clients from PyPI: boto3 through a whole life cycle
//! (`lambda_api/boto3_scenario.py`), the AWS CLI, SigV4 failures, keys of scope invoke.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, test_python};

fn scenario() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/lambda_api/boto3_scenario.py")
}

/// The environment the AWS tools get: the server's credentials file and nothing of the
/// machine's own AWS configuration.
fn aws_env(cmd: &mut Command, data_dir: &Path) {
    cmd.env(
        "AWS_SHARED_CREDENTIALS_FILE",
        data_dir.join("aws.credentials"),
    )
    .env("AWS_CONFIG_FILE", "/dev/null")
    .env_remove("AWS_ACCESS_KEY_ID")
    .env_remove("AWS_SECRET_ACCESS_KEY")
    .env_remove("AWS_PROFILE")
    .env("AWS_EC2_METADATA_DISABLED", "true");
}

#[tokio::test]
async fn boto3_and_the_aws_cli_manage_and_invoke_functions() {
    let python = test_python();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);

    // The admin's key is in the shared credentials format, readable by the owner only.
    let creds = std::fs::read_to_string(data.join("aws.credentials")).unwrap();
    assert!(
        creds.contains("[default]\naws_access_key_id = NKIA"),
        "{creds}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("aws.credentials"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A key that may only invoke, from the CLI.
    let made = server
        .cli(&[
            "-o", "json", "keys", "create", "app", "--aws", "--scope", "invoke",
        ])
        .await;
    assert_eq!(made.code, 0, "{}", made.stderr);
    let key: Value = serde_json::from_str(&made.stdout).unwrap();
    assert_eq!(key["kind"], "aws");
    assert_eq!(key["scope"], "invoke");

    let mut cmd = Command::new(&python);
    cmd.arg(scenario()).arg(&server.endpoint);
    aws_env(&mut cmd, &data);
    cmd.env("INVOKE_KEY_ID", key["access_key_id"].as_str().unwrap())
        .env("INVOKE_SECRET", key["secret_access_key"].as_str().unwrap());
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the boto3 scenario failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    // The Event invocation went through the durable queue and ran.
    let settled = server
        .settled(seen["async_id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    assert_eq!(settled["status"], "succeeded", "{settled}");

    // The AWS CLI (version 1, the one on PyPI: it sends `--payload` as it is), with its
    // own argument handling and output.
    let out_file = tmp.path().join("out.json");
    let mut cli = Command::new(&python);
    cli.args([
        "-m",
        "awscli",
        "lambda",
        "invoke",
        "--function-name",
        "lapi",
    ])
    .args(["--payload", r#"{"from": "cli"}"#])
    .args(["--endpoint-url", &server.endpoint, "--region", "us-east-1"])
    .arg(&out_file);
    aws_env(&mut cli, &data);
    let out = cli.output().unwrap();
    assert!(
        out.status.success(),
        "aws lambda invoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["StatusCode"], 200, "{meta}");
    let body: Value = serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert_eq!(body["echo"]["from"], "cli", "{body}");

    let mut missing = Command::new(&python);
    missing
        .args([
            "-m",
            "awscli",
            "lambda",
            "get-function",
            "--function-name",
            "nope",
        ])
        .args(["--endpoint-url", &server.endpoint, "--region", "us-east-1"]);
    aws_env(&mut missing, &data);
    let out = missing.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ResourceNotFoundException"), "{err}");

    // The admin's key is listed and cannot be deleted; the invoke key can, and is then
    // refused at once.
    let listed = server.get_json("/v1/keys").await;
    let aws: Vec<&Value> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kind"] == "aws")
        .collect();
    assert_eq!(aws.len(), 2, "{listed}");
    let admin_id = aws.iter().find(|k| k["name"] == "admin").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = server.cli(&["keys", "rm", &admin_id]).await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("admin's access key"),
        "{}",
        refused.stderr
    );
    let removed = server
        .cli(&["keys", "rm", key["access_key_id"].as_str().unwrap()])
        .await;
    assert_eq!(removed.code, 0, "{}", removed.stderr);
}

#[tokio::test]
async fn unsigned_and_unknown_requests_get_aws_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    // No signature at all: 403 in Lambda's error shape.
    let res = server
        .http
        .get(server.url("/2015-03-31/functions/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(
        res.headers()["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );
    let v: Value = res.json().await.unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("aws.credentials"),
        "{v}"
    );
    // A route may not take the Lambda API's paths.
    let dir = crate::harness::project(
        tmp.path(),
        "squat",
        "functions:\n  squat:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - http: {path: /2015-03-31/functions/x, methods: [GET]}\n",
        &[("main.py", "def handler(e, c):\n    return 1\n")],
    );
    let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("reserves"), "{}", run.stderr);
}
