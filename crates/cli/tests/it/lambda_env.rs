//! What Lambda code expects of its environment and context: the region (boto3 with no
//! region argument), the execution environment, log names, the call's X-Ray trace id, the
//! ARN as the call named the function.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, project};

const PROBE: &str = r#"import os, re, boto3
def handler(event, context):
    s3 = boto3.client("s3")
    keys = ["AWS_REGION", "AWS_DEFAULT_REGION", "TZ", "AWS_EXECUTION_ENV",
            "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_INITIALIZATION_TYPE"]
    return {
        "region": s3.meta.region_name,
        "env": {k: os.environ.get(k) for k in keys},
        "stream": os.environ["AWS_LAMBDA_LOG_STREAM_NAME"],
        "trace": os.environ["_X_AMZN_TRACE_ID"],
        "arn": context.invoked_function_arn,
        "group": context.log_group_name,
    }
"#;

#[tokio::test]
async fn lambda_code_finds_its_region_trace_and_arn() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &tmp.path().join("data"),
        &["--region", "eu-central-1", "--account-id", "123456789012"],
        &[],
    );
    let dir = project(
        tmp.path(),
        "probe",
        "functions:\n  probe:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 10000\n",
        &[("main.py", PROBE), ("requirements.txt", "boto3\n")],
    );
    server.deploy(&dir).await;
    let res = server
        .req(Method::POST, "/v1/functions/probe/invocations")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["region"], "eu-central-1", "{v}");
    let python = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&python.stdout).trim().to_string();
    assert_eq!(
        v["env"],
        json!({
            "AWS_REGION": "eu-central-1",
            "AWS_DEFAULT_REGION": "eu-central-1",
            "TZ": ":UTC",
            "AWS_EXECUTION_ENV": format!("AWS_Lambda_python{version}"),
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/probe",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        })
    );
    assert_eq!(v["group"], "/aws/lambda/probe");
    assert_eq!(
        v["arn"],
        "arn:aws:lambda:eu-central-1:123456789012:function:probe"
    );
    let stream = v["stream"].as_str().unwrap();
    assert!(is_stream_name(stream), "{stream}");
    // The call's trace, in the caller's trace, in X-Ray's form.
    let trace = v["trace"].as_str().unwrap();
    assert!(
        trace.starts_with("Root=1-0af76519-16cd43dd8448eb211c80319c;Parent="),
        "{trace}"
    );
    assert!(trace.ends_with(";Sampled=1"), "{trace}");

    // Called through an alias, the ARN carries the qualifier.
    let res = server
        .req(Method::POST, "/v1/functions/probe/versions")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = server
        .req(Method::PUT, "/v1/functions/probe/aliases/live")
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = server.invoke("probe:live", "{}").await;
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v["arn"],
        "arn:aws:lambda:eu-central-1:123456789012:function:probe:live"
    );
}

/// Whether `s` is a log stream name as Lambda's: `YYYY/MM/DD/[$LATEST]probe-N`.
fn is_stream_name(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(4, '/').collect();
    parts.len() == 4
        && parts[..3]
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_digit()))
        && parts[3].starts_with("[$LATEST]probe-")
        && parts[3]["[$LATEST]probe-".len()..]
            .chars()
            .all(|c| c.is_ascii_digit())
}

/// Node ES modules load as on Lambda: `index.mjs` with `export const handler`, one with
/// top-level await (which only `import()` loads), and `index.js` under
/// `"type": "module"`; a missing import is the same typed error as in CommonJS.
#[tokio::test]
async fn node_es_modules_load_as_on_lambda() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let manifest = "functions:\n  mjs:\n    runtime: nodejs\n    handler: index.handler\n    code: mjs\n  \
tla:\n    runtime: nodejs\n    handler: index.handler\n    code: tla\n  \
typed:\n    runtime: nodejs\n    handler: app.handler\n    code: typed\n  \
broken:\n    runtime: nodejs\n    handler: index.handler\n    code: broken\n";
    let dir = project(
        tmp.path(),
        "esm",
        manifest,
        &[
            (
                "mjs/index.mjs",
                "import { basename } from 'node:path';\n\
                 export const handler = async (event) => ({ esm: basename('/a/b.mjs'), got: event.n });\n",
            ),
            (
                "tla/index.mjs",
                "const ready = await Promise.resolve('awaited');\n\
                 export const handler = async () => ready;\n",
            ),
            ("typed/package.json", r#"{"type": "module"}"#),
            (
                "typed/app.js",
                "export async function handler() { return 'typed module'; }\n",
            ),
            (
                "broken/index.mjs",
                "import missing from 'nimbus-no-such-package';\nexport const handler = async () => missing;\n",
            ),
        ],
    );
    server.deploy_unchecked(&dir).await;
    let res = server.invoke("mjs", r#"{"n": 7}"#).await;
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"esm": "b.mjs", "got": 7})
    );
    assert_eq!(
        server.invoke("tla", "{}").await.text().await.unwrap(),
        "awaited"
    );
    assert_eq!(
        server.invoke("typed", "{}").await.text().await.unwrap(),
        "typed module"
    );
    let res = server.invoke("broken", "{}").await;
    assert_eq!(
        crate::harness::header(&res, "x-nimbus-error-type"),
        "Runtime.ImportModuleError"
    );
    let body: Value = res.json().await.unwrap();
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("nimbus-no-such-package"),
        "{body}"
    );
}

/// The node's interpreter versions, as AWS's runtime ids: (`python3.11`, `nodejs20.x`).
fn local_runtime_ids() -> (String, String) {
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let python = run(
        "/usr/bin/python3",
        &["-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
    );
    let node = run("node", &["-p", "process.versions.node.split('.')[0]"]);
    (format!("python{python}"), format!("nodejs{node}.x"))
}

/// AWS's versioned runtime ids deploy when the node has that version, and are refused
/// with what it has otherwise.
#[tokio::test]
async fn versioned_runtime_ids_match_the_nodes_interpreters() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let (python, node) = local_runtime_ids();
    let deploy = |name: &str, runtime: &str, file: &str, code: &str| {
        let dir = project(
            tmp.path(),
            name,
            &format!(
                "functions:\n  {name}:\n    runtime: {runtime}\n    handler: {}.handler\n",
                file.split('.').next().unwrap()
            ),
            &[(file, code)],
        );
        let server = &server;
        async move { server.cli(&["deploy", dir.to_str().unwrap()]).await }
    };
    let run = deploy(
        "pyv",
        &python,
        "main.py",
        "def handler(e, c):\n    return 'py'\n",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(server.invoke("pyv", "{}").await.text().await.unwrap(), "py");
    let run = deploy(
        "nodev",
        &node,
        "index.js",
        "exports.handler = async () => 'node';\n",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        server.invoke("nodev", "{}").await.text().await.unwrap(),
        "node"
    );

    // One minor version up: not on this node.
    let minor: u32 = python.rsplit('.').next().unwrap().parse().unwrap();
    let other = format!("python3.{}", minor + 1);
    let run = deploy(
        "pyother",
        &other,
        "main.py",
        "def handler(e, c):\n    return 1\n",
    )
    .await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains(&format!(
            "runtime {other}: this node's python3 interpreter is {python}"
        )),
        "{}",
        run.stderr
    );
    let run = deploy("bad", "ruby3.3", "main.py", "").await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("unknown runtime `ruby3.3`"),
        "{}",
        run.stderr
    );
}

/// A route with `payload_format_version: "1.0"` gives a REST API handler its event
/// (`httpMethod`, `resource`, single and multi-value parameters, the caller's identity),
/// and its 1.0 answer (`multiValueHeaders`) becomes the response.
#[tokio::test]
async fn a_payload_1_0_route_gets_the_rest_api_event() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let code = r#"import json
def handler(event, context):
    seen = {k: event[k] for k in ["resource", "path", "httpMethod", "queryStringParameters",
            "multiValueQueryStringParameters", "pathParameters", "body", "isBase64Encoded"]}
    seen["header"] = event["headers"]["x-h"]
    seen["multi_header"] = event["multiValueHeaders"]["x-h"]
    seen["source_ip"] = event["requestContext"]["identity"]["sourceIp"]
    return {"statusCode": 201, "multiValueHeaders": {"set-cookie": ["a=1", "b=2"]},
            "body": json.dumps(seen)}
"#;
    let dir = project(
        tmp.path(),
        "rest",
        "functions:\n  rest:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      \
         - http: {path: \"/legacy/{id}\", methods: [POST], auth: anonymous, payload_format_version: \"1.0\"}\n",
        &[("main.py", code)],
    );
    server.deploy(&dir).await;
    let res = reqwest::Client::new()
        .post(server.url("/legacy/7?a=1&a=2"))
        .header("x-h", "v")
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let cookies: Vec<&str> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v,
        json!({
            "resource": "/legacy/{id}", "path": "/legacy/7", "httpMethod": "POST",
            "queryStringParameters": {"a": "2"},
            "multiValueQueryStringParameters": {"a": ["1", "2"]},
            "pathParameters": {"id": "7"}, "body": "hi", "isBase64Encoded": false,
            "header": "v", "multi_header": ["v"], "source_ip": "127.0.0.1",
        })
    );
    // Anything but 1.0 and 2.0 is refused at deploy.
    std::fs::write(
        dir.join("nimbus.yaml"),
        "functions:\n  rest:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      \
         - http: {path: /x, payload_format_version: \"3.0\"}\n",
    )
    .unwrap();
    let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("`3.0` is not a payload format"),
        "{}",
        run.stderr
    );
}

/// `conventions: fc` runs Function Compute handlers unchanged: the event arrives as bytes
/// (`json.loads(event)`), the context has FC's `function`, `service`, `region`,
/// `credentials`, and the initializer gets that context too.
#[tokio::test]
async fn function_compute_handlers_run_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let py = r#"import json
started = None
def initializer(context):
    global started
    started = context.function.name
def handler(event, context):
    evt = json.loads(event)
    return json.dumps({"got": evt["a"], "name": context.function.name,
                       "memory": context.function.memory, "timeout": context.function.timeout,
                       "rid": bool(context.request_id), "init": started,
                       "service": context.service.name, "region": context.region,
                       "bytes": isinstance(event, bytes),
                       "key": context.credentials.access_key_id})
"#;
    let js = "exports.handler = (event, context, callback) => {\n  \
              const e = JSON.parse(event);\n  \
              callback(null, { got: e.a, name: context.function.name, buffer: Buffer.isBuffer(event) });\n};\n";
    let dir = project(
        tmp.path(),
        "fc",
        "functions:\n  fcpy:\n    runtime: python3\n    handler: index.handler\n    code: py\n    \
         conventions: fc\n    initializer: index.initializer\n    memory_mb: 256\n    timeout_ms: 5000\n  \
         fcjs:\n    runtime: nodejs\n    handler: index.handler\n    code: js\n    conventions: fc\n",
        &[("py/index.py", py), ("js/index.js", js)],
    );
    server.deploy(&dir).await;
    let res = server.invoke("fcpy", r#"{"a": 1}"#).await;
    assert_eq!(crate::harness::header(&res, "x-nimbus-error-type"), "");
    let text = res.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!({"got": 1, "name": "fcpy", "memory": 256, "timeout": 5, "rid": true,
               "init": "fcpy", "service": "default", "region": "us-east-1",
               "bytes": true, "key": null})
    );
    let res = server.invoke("fcjs", r#"{"a": 2}"#).await;
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"got": 2, "name": "fcjs", "buffer": true})
    );
}

/// A route to a function with `conventions: fc` gives the handler Function Compute's
/// HTTP-trigger event, and FC's response struct becomes the HTTP response.
#[tokio::test]
async fn function_compute_http_trigger_event() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let py = r#"import json
def handler(event, context):
    e = json.loads(event)
    return {"statusCode": 201, "headers": {"x-fc": "yes"}, "isBase64Encoded": False,
            "body": json.dumps({"version": e["version"], "path": e["rawPath"],
                                "method": e["requestContext"]["http"]["method"],
                                "q": e["queryParameters"], "ua": e["headers"].get("User-Agent"),
                                "body": e["body"], "b64": e["isBase64Encoded"],
                                "account": e["requestContext"]["accountId"]})}
"#;
    let dir = project(
        tmp.path(),
        "fchttp",
        "functions:\n  fchttp:\n    runtime: python3\n    handler: index.handler\n    conventions: fc\n    \
         triggers:\n      - http: {path: \"/fc/{id}\", methods: [POST], auth: anonymous}\n",
        &[("index.py", py)],
    );
    server.deploy(&dir).await;
    let res = server
        .http
        .post(server.url("/fc/7?a=1&a=2"))
        .header("user-agent", "probe/1")
        .header("content-type", "text/plain")
        .body("Hello FC!")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(crate::harness::header(&res, "x-fc"), "yes");
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v,
        json!({"version": "v1", "path": "/fc/7", "method": "POST", "q": {"a": "1,2"},
               "ua": "probe/1", "body": "Hello FC!", "b64": false, "account": "000000000000"})
    );
}

/// Powertools' Tracer (from PyPI, built at deploy) finds the call's trace where Lambda's
/// runtimes put it: the X-Ray SDK's segment carries the trace id of the caller's
/// `traceparent`.
#[tokio::test]
async fn powertools_tracer_sees_the_calls_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let py = r#"from aws_lambda_powertools import Tracer
from aws_xray_sdk.core import xray_recorder
tracer = Tracer(service="probe")

@tracer.capture_lambda_handler
def handler(event, context):
    segment = xray_recorder.current_segment()
    return {"trace_id": segment.trace_id, "disabled": tracer.disabled}
"#;
    let dir = project(
        tmp.path(),
        "traced",
        "functions:\n  traced:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 10000\n",
        &[
            ("main.py", py),
            (
                "requirements.txt",
                "aws-lambda-powertools[tracer]==3.37.0\n",
            ),
        ],
    );
    server.deploy(&dir).await;
    let res = server
        .req(Method::POST, "/v1/functions/traced/invocations")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(crate::harness::header(&res, "x-nimbus-error-type"), "");
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v,
        json!({"trace_id": "1-0af76519-16cd43dd8448eb211c80319c", "disabled": false})
    );
}
