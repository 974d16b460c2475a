//! The Lambda API with the real AWS clients from PyPI: boto3 through a whole life cycle
//! (`lambda_api/boto3_scenario.py`), the AWS CLI, SigV4 failures, keys of scope invoke.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, aws_env, test_python};

fn scenario() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/lambda_api/boto3_scenario.py")
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

/// Sends a request to the Lambda API signed with the admin's key from `aws.credentials`,
/// as an SDK would; answers the status, the exception name and the body.
async fn signed(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Value) {
    let creds = std::fs::read_to_string(server.data_dir.join("aws.credentials")).unwrap();
    let field = |name: &str| {
        creds
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches([' ', '=']).trim().to_string())
            .unwrap()
    };
    let host = server.endpoint.trim_start_matches("http://").to_string();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let date = lambda::sigv4::amz_date(now_ms);
    let mut all: Vec<(String, String)> =
        vec![("host".into(), host), ("x-amz-date".into(), date.clone())];
    all.extend(headers.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    let (path_only, query) = path.split_once('?').unwrap_or((path, ""));
    let request = lambda::sigv4::Signed {
        method,
        path: path_only,
        query,
        headers: &all,
        body: body.as_bytes(),
    };
    let credential = lambda::sigv4::Credential {
        access_key_id: field("aws_access_key_id"),
        date: date[..8].to_string(),
        region: "us-east-1".into(),
        service: "lambda".into(),
    };
    let authorization =
        lambda::sigv4::authorization(&request, &credential, &field("aws_secret_access_key"));
    let mut req = server
        .http
        .request(method.parse().unwrap(), server.url(path))
        .header("authorization", authorization);
    for (n, v) in &all[1..] {
        req = req.header(n.as_str(), v.as_str());
    }
    let res = req.body(body.to_string()).send().await.unwrap();
    let status = res.status().as_u16();
    let kind = res
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = res.text().await.unwrap();
    (
        status,
        kind,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// A request and what it must be answered: (method, path, headers, body, status,
/// exception, words of the message).
type Case<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    String,
    u16,
    &'a str,
    &'a str,
);

/// Each refusal of the Lambda API names what is wrong, as the exception the SDKs know.
#[tokio::test]
async fn bad_lambda_requests_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let echo = "def handler(event, context):\n    return event\n";
    server
        .deploy(&crate::harness::python_project(tmp.path(), "f", 3000, echo))
        .await;
    const F: &str = "/2015-03-31/functions";
    let create = |code: &str| {
        format!(
            r#"{{"FunctionName": "g", "Runtime": "python3", "Role": "r", "Handler": "m.h", "Code": {code}}}"#
        )
    };
    let cases: Vec<Case> = vec![
        ("POST", F.into(), vec![], "not json".into(), 400, "InvalidRequestContentException", "parse"),
        ("POST", F.into(), vec![], create(r#"{"ZipFile": "%%%"}"#), 400, "InvalidParameterValueException", "not base64"),
        ("POST", F.into(), vec![], create(r#"{"S3Bucket": "b", "S3Key": "k"}"#), 400, "InvalidParameterValueException", "Code.S3Bucket"),
        ("POST", F.into(), vec![], create("{}"), 400, "InvalidParameterValueException", "Code.ZipFile is required"),
        (
            "POST",
            F.into(),
            vec![],
            r#"{"FunctionName": "g", "Runtime": "python3", "Handler": "m.h", "Code": {"ZipFile": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}, "Layers": ["arn:aws:lambda:us-east-1:0:layer:x:1"]}"#.into(),
            400,
            "InvalidParameterValueException",
            "Layers",
        ),
        ("POST", F.into(), vec![], r#"{"FunctionName": "g", "Code": {}}"#.into(), 400, "InvalidParameterValueException", "Runtime and Handler"),
        ("PUT", "/2017-10-31/functions/f/concurrency".into(), vec![], r#"{"ReservedConcurrentExecutions": 0}"#.into(), 400, "InvalidParameterValueException", "not supported"),
        ("POST", format!("{F}/f/invocations"), vec![("x-amz-log-type", "Bogus")], "{}".into(), 400, "InvalidParameterValueException", "X-Amz-Log-Type"),
        ("POST", format!("{F}/f/invocations"), vec![("x-amz-invocation-type", "Later")], "{}".into(), 400, "InvalidParameterValueException", "X-Amz-Invocation-Type"),
        ("POST", format!("{F}/f/invocations"), vec![("x-amz-client-context", "***")], "{}".into(), 400, "InvalidParameterValueException", "Client context"),
        ("POST", format!("{F}/f:1/invocations?Qualifier=2"), vec![], "{}".into(), 400, "InvalidParameterValueException", "qualifier"),
        ("GET", "/2019-09-30/functions/f/provisioned-concurrency?Qualifier=live".into(), vec![], String::new(), 404, "ProvisionedConcurrencyConfigNotFoundException", "Provisioned"),
        ("PUT", "/2019-09-25/functions/f/event-invoke-config?Qualifier=3".into(), vec![], "{}".into(), 400, "InvalidParameterValueException", "version's settings are fixed"),
        ("POST", format!("{F}/f/aliases"), vec![], r#"{"Name": "a", "FunctionVersion": "$LATEST"}"#.into(), 400, "InvalidParameterValueException", "published version"),
        ("GET", "/2015-03-31/tags/arn".into(), vec![], String::new(), 404, "UnknownOperationException", "no such operation"),
    ];
    for (method, path, headers, body, status, kind, words) in cases {
        let (got, got_kind, v) = signed(&server, method, &path, &headers, &body).await;
        assert_eq!(
            (got, got_kind.as_str()),
            (status, kind),
            "{method} {path}: {v}"
        );
        let message = v["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{method} {path}: {message}");
    }
}
