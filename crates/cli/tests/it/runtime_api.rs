//! `runtime: provided` through the real server: a bootstrap speaking the Lambda Runtime
//! API (a small Python script, and AWS's own `awslambdaric` from PyPI), its answers,
//! errors, init errors, timeouts and crashes; and Function Compute's custom runtime
//! protocol (`conventions: fc`, `POST /invoke`, `POST /initialize`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, header, project};

/// A bootstrap that speaks the Runtime API with nothing but the standard library (curl
/// is not in the jail). `MODE=init_error` reports a failed init instead of polling.
const BOOTSTRAP: &str = r#"#!/usr/bin/python3
import http.client, json, os, sys, time

HOST, PORT = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
conn = http.client.HTTPConnection(HOST, int(PORT))

def call(method, path, body=None, headers={}):
    global conn
    for attempt in (0, 1):
        try:
            conn.request(method, "/2018-06-01/runtime/" + path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, r, r.read()
        except (http.client.HTTPException, OSError):
            # A kept-alive connection closed while the instance was frozen: once more.
            conn.close()
            conn = http.client.HTTPConnection(HOST, int(PORT))
            if attempt:
                raise

if os.environ.get("MODE") == "init_error":
    call("POST", "init/error",
         json.dumps({"errorMessage": "cannot start", "errorType": "Custom.InitFailed"}),
         {"Lambda-Runtime-Function-Error-Type": "Custom.InitFailed"})
    sys.exit(1)

calls = 0
while True:
    status, r, body = call("GET", "invocation/next")
    rid = r.getheader("Lambda-Runtime-Aws-Request-Id")
    event = json.loads(body or b"{}")
    calls += 1
    do = event.get("do")
    if do == "fail":
        s, _, answer = call("POST", "invocation/%s/error" % rid,
             json.dumps({"errorMessage": "it failed", "errorType": "ValueError",
                         "stackTrace": ["bootstrap, line 1"]}),
             {"Lambda-Runtime-Function-Error-Type": "Unhandled"})
        continue
    if do == "sleep":
        time.sleep(30)
    if do == "crash":
        print("crashing now", file=sys.stderr, flush=True)
        os._exit(3)
    if do == "stale":
        s, _, answer = call("POST", "invocation/not-%s/response" % rid, b"1")
        event["stale"] = [s, json.loads(answer)]
    if do == "big":
        s, _, answer = call("POST", "invocation/%s/response" % rid, b"x" * (6 * 1024 * 1024 + 1))
        continue
    print("serving", rid, flush=True)
    call("POST", "invocation/%s/response" % rid, json.dumps({
        "event": event,
        "calls": calls,
        "request_id": rid,
        "left_ms": int(r.getheader("Lambda-Runtime-Deadline-Ms")) - int(time.time() * 1000),
        "arn": r.getheader("Lambda-Runtime-Invoked-Function-Arn"),
        "trace": r.getheader("Lambda-Runtime-Trace-Id"),
        "handler": os.environ.get("_HANDLER"),
        "task_root": os.environ.get("LAMBDA_TASK_ROOT"),
        "runtime_dir": os.environ.get("LAMBDA_RUNTIME_DIR"),
        "function": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
    }))
"#;

/// Writes `text` to `dir/name` as an executable.
fn executable(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

async fn invoke_json(server: &Server, name: &str, event: Value) -> (String, Value) {
    let res = server.invoke(name, &event.to_string()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let error_type = header(&res, "x-nimbus-error-type").to_string();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (error_type, body)
}

#[tokio::test]
async fn a_bootstrap_speaks_the_runtime_api() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "rapi",
        "functions:\n  echo:\n    runtime: provided.al2023\n    handler: my.handler\n    timeout_ms: 1500\n",
        &[],
    );
    executable(&dir, "bootstrap", BOOTSTRAP);
    server.deploy(&dir).await;

    let res = server
        .req(Method::POST, "/v1/functions/echo/invocations")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(r#"{"hello": "world"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, "x-nimbus-error-type"), "");
    let request_id = header(&res, "x-nimbus-request-id").to_string();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["event"], json!({"hello": "world"}));
    assert_eq!(v["request_id"], request_id.as_str());
    assert_eq!(v["handler"], "my.handler");
    assert_eq!(v["task_root"], "/var/task");
    assert_eq!(v["runtime_dir"], "/var/task");
    assert_eq!(v["function"], "echo");
    assert!(
        v["arn"].as_str().unwrap().ends_with(":function:echo"),
        "{v}"
    );
    // The caller's trace, under the call's own span, in X-Ray's form.
    let trace = v["trace"].as_str().unwrap();
    assert!(
        trace.starts_with("Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=")
            && trace.ends_with(";Sampled=1"),
        "{trace}"
    );
    let left = v["left_ms"].as_i64().unwrap();
    assert!((1..=1500).contains(&left), "{left}");

    // Warm: the same process takes the next call.
    let (error, v) = invoke_json(&server, "echo", json!({})).await;
    assert_eq!(error, "");
    assert_eq!(v["calls"], 2, "{v}");

    // An unknown id is refused as Lambda refuses it, and the call goes on.
    let (error, v) = invoke_json(&server, "echo", json!({"do": "stale"})).await;
    assert_eq!(error, "");
    assert_eq!(
        v["event"]["stale"],
        json!([400, {"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"}])
    );

    // `/error` is the call's function error.
    let (error, v) = invoke_json(&server, "echo", json!({"do": "fail"})).await;
    assert_eq!(error, "ValueError");
    assert_eq!(v["errorMessage"], "it failed");
    assert_eq!(v["stackTrace"], json!(["bootstrap, line 1"]));

    // A response past the payload limit fails the call.
    let (error, _) = invoke_json(&server, "echo", json!({"do": "big"})).await;
    assert_eq!(error, "Function.ResponseSizeTooLarge");

    // A timeout kills the instance; the next call starts a new one.
    let (error, v) = invoke_json(&server, "echo", json!({"do": "sleep"})).await;
    assert_eq!(error, "FunctionTimeout", "{v}");
    let res = server.invoke("echo", "{}").await;
    assert_eq!(header(&res, "x-nimbus-cold-start"), "true");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["calls"], 1);

    // A crash mid-call is reported with its exit status and stderr.
    let (error, v) = invoke_json(&server, "echo", json!({"do": "crash"})).await;
    assert_eq!(error, "Runtime.ExitError");
    let message = v["errorMessage"].as_str().unwrap();
    assert!(message.contains("status 3"), "{message}");
    assert!(message.contains("crashing now"), "{message}");
    let (error, _) = invoke_json(&server, "echo", json!({})).await;
    assert_eq!(error, "");

    // The call's output is its log.
    let run = server.cli(&["logs", "echo"]).await;
    assert!(
        run.stdout.contains("serving"),
        "{}{}",
        run.stdout,
        run.stderr
    );
}

#[tokio::test]
async fn init_errors_and_missing_bootstraps_fail_the_deploy_or_the_call() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "initfail",
        "functions:\n  initfail:\n    runtime: provided\n    handler: x\n    env: {MODE: init_error}\n",
        &[],
    );
    executable(&dir, "bootstrap", BOOTSTRAP);
    // The deploy's check starts an instance, which reports its init error.
    let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("Custom.InitFailed: cannot start"),
        "{}",
        run.stderr
    );
    server.deploy_unchecked(&dir).await;
    let (error, v) = invoke_json(&server, "initfail", json!({})).await;
    assert_eq!(error, "Custom.InitFailed");
    assert_eq!(v["errorMessage"], "cannot start");

    // No bootstrap, or one that cannot run: Lambda's `Runtime.InvalidEntrypoint`.
    let dir = project(
        tmp.path(),
        "nobootstrap",
        "functions:\n  nobootstrap:\n    runtime: provided\n    handler: x\n",
        &[("README", "no bootstrap here\n")],
    );
    let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("Runtime.InvalidEntrypoint")
            && run.stderr.contains("/var/task/bootstrap"),
        "{}",
        run.stderr
    );
    std::fs::write(dir.join("bootstrap"), BOOTSTRAP).unwrap();
    let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("not executable"), "{}", run.stderr);

    // The rules a provided function must keep are named when it breaks them.
    let dir = project(
        tmp.path(),
        "rules",
        "functions:\n  rules:\n    runtime: provided\n    handler: x\n    concurrency: 4\n    network: none\n",
        &[],
    );
    executable(&dir, "bootstrap", BOOTSTRAP);
    let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("concurrency") && run.stderr.contains("one call at a time"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("loopback"), "{}", run.stderr);
}

/// AWS's Python runtime interface client, installed by the server's build from
/// `requirements.txt`, behind `runtime: provided`.
const RIC_APP: &str = r#"
import os
started = os.getpid()

def handler(event, context):
    if event.get("fail"):
        raise ValueError("bad input: %s" % event["fail"])
    return {
        "echo": event,
        "request_id": context.aws_request_id,
        "arn": context.invoked_function_arn,
        "left_ms": context.get_remaining_time_in_millis(),
        "name": context.function_name,
        "pid": started,
    }
"#;

#[tokio::test]
async fn awslambdaric_from_pypi_runs_behind_provided() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "ric",
        "functions:\n  ric:\n    runtime: provided.al2\n    handler: app.handler\n    timeout_ms: 5000\n",
        &[
            ("app.py", RIC_APP),
            ("requirements.txt", "awslambdaric==4.2.2\n"),
        ],
    );
    executable(
        &dir,
        "bootstrap",
        "#!/bin/sh\nexec python3 -m awslambdaric \"$_HANDLER\"\n",
    );
    server.deploy(&dir).await;

    let res = server.invoke("ric", r#"{"n": 1}"#).await;
    assert_eq!(header(&res, "x-nimbus-error-type"), "");
    let request_id = header(&res, "x-nimbus-request-id").to_string();
    let first: Value = res.json().await.unwrap();
    assert_eq!(first["echo"], json!({"n": 1}), "{first}");
    assert_eq!(first["name"], "ric");
    assert!(!request_id.is_empty());
    assert_eq!(first["request_id"], request_id.as_str());
    assert!(
        first["arn"].as_str().unwrap().ends_with(":function:ric"),
        "{first}"
    );
    let left = first["left_ms"].as_i64().unwrap();
    assert!((1..=5000).contains(&left), "{left}");

    // Warm: the same process takes the next call.
    let (error, v) = invoke_json(&server, "ric", json!({})).await;
    assert_eq!(error, "");
    assert_eq!(v["pid"], first["pid"], "{v}");

    let (error, v) = invoke_json(&server, "ric", json!({"fail": "nope"})).await;
    assert_eq!(error, "ValueError", "{v}");
    assert_eq!(v["errorMessage"], "bad input: nope");
    assert!(!v["stackTrace"].as_array().unwrap().is_empty(), "{v}");

    // Still the same instance after the handler's exception.
    let (error, v) = invoke_json(&server, "ric", json!({})).await;
    assert_eq!(error, "");
    assert_eq!(v["pid"], first["pid"]);
}

/// A Function Compute custom runtime: a server on `FC_SERVER_PORT` that answers FC's
/// event paths.
const FC_SERVER: &str = r#"
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

inits = []

class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0 (http.server's default) closes the connection after each answer.
    protocol_version = os.environ.get("PROTOCOL", "HTTP/1.1")

    def log_message(self, *args):
        pass

    def answer(self, status, body, headers={}):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/initialize":
            inits.append(self.headers.get("x-fc-request-id"))
            return self.answer(200, b"")
        if self.path != "/invoke":
            return self.answer(404, b"no such path")
        event = json.loads(body or b"{}")
        if event.get("fail") == "status":
            return self.answer(200, json.dumps({"errorMessage": "bad event", "errorType": "BadEvent"}).encode(),
                               {"x-fc-status": "404"})
        if event.get("fail") == "500":
            return self.answer(500, b"boom")
        print("invoked", self.headers.get("x-fc-request-id"), flush=True)
        fc = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-fc-")}
        self.answer(200, json.dumps({
            "event": event, "headers": fc, "inits": inits,
            "content_type": self.headers.get("content-type"),
            "port": os.environ.get("FC_SERVER_PORT") == os.environ.get("PORT"),
        }).encode())

    def do_GET(self):
        self.answer(200, ("http " + self.path).encode())

ThreadingHTTPServer(("127.0.0.1", int(os.environ["FC_SERVER_PORT"])), Handler).serve_forever()
"#;

#[tokio::test]
async fn function_compute_custom_runtimes_take_events_on_post_invoke() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "fcrt",
        "functions:\n  fcrt:\n    runtime: custom\n    conventions: fc\n    handler: index.handler\n    command: [python3, server.py]\n    initializer: index.initializer\n    memory_mb: 256\n    timeout_ms: 3000\n    url: {auth: anonymous}\n  fc10:\n    runtime: custom\n    conventions: fc\n    command: [python3, server.py]\n    env: {PROTOCOL: HTTP/1.0}\n",
        &[("server.py", FC_SERVER)],
    );
    server.deploy(&dir).await;

    let res = server.invoke("fcrt", r#"{"a": 1}"#).await;
    assert_eq!(header(&res, "x-nimbus-error-type"), "");
    let request_id = header(&res, "x-nimbus-request-id").to_string();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["event"], json!({"a": 1}), "{v}");
    assert_eq!(v["content_type"], "application/octet-stream");
    assert_eq!(v["port"], true);
    let h = &v["headers"];
    assert_eq!(h["x-fc-request-id"], request_id.as_str(), "{v}");
    assert_eq!(h["x-fc-control-path"], "/invoke");
    assert_eq!(h["x-fc-function-name"], "fcrt");
    assert_eq!(h["x-fc-function-handler"], "index.handler");
    assert_eq!(h["x-fc-function-memory"], "256");
    assert_eq!(h["x-fc-function-timeout"], "3");
    assert_eq!(h["x-fc-function-initializer"], "index.initializer");
    assert_eq!(h["x-fc-qualifier"], "LATEST");
    assert!(
        h["x-fc-region"].as_str().is_some_and(|r| !r.is_empty()),
        "{v}"
    );
    // The initializer ran once, before the first call, with a request id of its own.
    assert_eq!(v["inits"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["inits"][0].as_str().unwrap().starts_with("init-"), "{v}");

    let (error, again) = invoke_json(&server, "fcrt", json!({"b": 2})).await;
    assert_eq!(error, "");
    assert_eq!(again["inits"], v["inits"], "once per instance");

    // An `x-fc-status: 404` answer and a 5xx are the call's failure.
    let (error, e) = invoke_json(&server, "fcrt", json!({"fail": "status"})).await;
    assert_eq!(error, "BadEvent", "{e}");
    assert_eq!(e["errorMessage"], "bad event");
    let (error, e) = invoke_json(&server, "fcrt", json!({"fail": "500"})).await;
    assert_eq!(error, "UnhandledInvocationError", "{e}");
    let message = e["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("500") && message.contains("boom"),
        "{message}"
    );

    // A request through its URL reaches the server as it came, not as an event.
    let res = server.get("/fn/fcrt/hello?x=1").send().await.unwrap();
    assert_eq!(res.text().await.unwrap(), "http /hello?x=1");

    // A server that closes its connection after each answer is called again and again.
    for n in 0..5 {
        let (error, v) = invoke_json(&server, "fc10", json!({"n": n})).await;
        assert_eq!(error, "", "{v}");
        assert_eq!(v["event"]["n"], n);
    }

    // The event call's output is its log.
    let run = server.cli(&["logs", "fcrt"]).await;
    assert!(
        run.stdout.contains(&format!("invoked {request_id}")),
        "{}{}",
        run.stdout,
        run.stderr
    );
}

/// AWS's Node.js runtime interface client, installed by the server's build from
/// `package.json` (its install compiles curl and aws-lambda-cpp: cmake, autotools and a
/// C++ compiler, which `.ci/run` installs), behind `runtime: provided`.
#[tokio::test]
async fn aws_lambda_ric_from_npm_runs_behind_provided() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "noderic",
        "functions:\n  noderic:\n    runtime: provided\n    handler: index.handler\n    timeout_ms: 5000\n",
        &[
            (
                "package.json",
                r#"{"name": "noderic", "version": "1.0.0", "dependencies": {"aws-lambda-ric": "3.3.0"}}"#,
            ),
            (
                "index.js",
                "exports.handler = async (event, context) => {\n  if (event.fail) throw new RangeError('too far: ' + event.fail);\n  return {echo: event, requestId: context.awsRequestId, arn: context.invokedFunctionArn, leftMs: context.getRemainingTimeInMillis()};\n};\n",
            ),
        ],
    );
    executable(
        &dir,
        "bootstrap",
        "#!/bin/sh\nexec node node_modules/aws-lambda-ric/bin/index.mjs \"$_HANDLER\"\n",
    );
    server.deploy(&dir).await;
    let res = server.invoke("noderic", r#"{"n": 1}"#).await;
    assert_eq!(header(&res, "x-nimbus-error-type"), "");
    let request_id = header(&res, "x-nimbus-request-id").to_string();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["echo"], json!({"n": 1}), "{v}");
    assert_eq!(v["requestId"], request_id.as_str());
    assert!(
        v["arn"].as_str().unwrap().ends_with(":function:noderic"),
        "{v}"
    );
    let left = v["leftMs"].as_i64().unwrap();
    assert!((1..=5000).contains(&left), "{left}");
    let (error, v) = invoke_json(&server, "noderic", json!({"fail": "x"})).await;
    assert_eq!(error, "RangeError", "{v}");
    assert_eq!(v["errorMessage"], "too far: x");
}
