//! The one invoke path, black-box: web functions behind routes and through the invoke API
//! are recorded, guarded and failed the same way as every other call.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, examples, header, project};

/// A custom runtime (a Python HTTP server on `$PORT`) that answers with the request
/// headers it received, as JSON, except on `/hang`, which never answers.
const ECHO_SERVER: &str = r#"
import sys, json, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        if self.path.startswith('/hang'):
            time.sleep(3600)
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

#[tokio::test]
async fn a_custom_server_that_hangs_gets_a_504_and_the_next_call_a_200() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "hang",
        "functions:\n  hang:\n    runtime: custom\n    command: [/usr/bin/python3, server.py, $PORT]\n    timeout_ms: 1000\n    url: {auth: anonymous}\n",
        &[("server.py", ECHO_SERVER)],
    );
    server.deploy(&dir).await;

    let res = server.get("/fn/hang/ok").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = server.get("/fn/hang/hang").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    let request_id = header(&res, "x-nimbus-request-id").to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "function_timeout", "{body}");
    assert_eq!(body["errorType"], "FunctionTimeout", "{body}");
    assert_eq!(body["requestId"], request_id.as_str(), "{body}");
    // The timed-out instance was replaced: the next call is served, by a new instance.
    let res = server.get("/fn/hang/ok").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let record: Value = server
        .get_json(&format!("/v1/invocations/{request_id}"))
        .await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["error"]["errorType"], "FunctionTimeout", "{record}");
}

/// A plain WSGI app (no framework): it fails when its environment says so.
const WSGI_APP: &str = r#"
import os, json
def app(environ, start_response):
    if os.environ.get('FAIL'):
        raise RuntimeError('broken release')
    body = json.dumps({
        'method': environ['REQUEST_METHOD'],
        'path': environ['PATH_INFO'],
        'query': environ['QUERY_STRING'],
        'scheme': environ['wsgi.url_scheme'],
        'body': environ['wsgi.input'].read().decode(),
    }).encode()
    start_response('201 Created', [('Content-Type', 'application/json'), ('Set-Cookie', 'k=v')])
    return [body]
"#;

fn wsgi_release(root: &std::path::Path, dir: &str, extra: &str) -> std::path::PathBuf {
    project(
        root,
        dir,
        &format!(
            "functions:\n  wapp:\n    runtime: python3\n    type: wsgi\n    handler: app:app\n{extra}"
        ),
        &[("app.py", WSGI_APP)],
    )
}

/// Publishes `$LATEST` of `wapp` as a new version.
async fn publish_wapp(server: &Server) {
    let res = server
        .req(Method::POST, "/v1/functions/wapp/versions")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

/// Points `wapp:prod` as `alias` says.
async fn set_prod(server: &Server, alias: Value) {
    let res = server
        .req(Method::PUT, "/v1/functions/wapp/aliases/prod")
        .json(&alias)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_guarded_canary_of_a_wsgi_function_is_rolled_back() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    server.deploy(&wsgi_release(tmp.path(), "good", "")).await;
    publish_wapp(&server).await;
    set_prod(&server, json!({"version": 1})).await;
    let routed = "    env: {FAIL: '1'}\n    triggers:\n      - http: {path: /shop, auth: anonymous, qualifier: prod}\n";
    server
        .deploy(&wsgi_release(tmp.path(), "bad", routed))
        .await;
    publish_wapp(&server).await;
    let res = server
        .req(Method::PUT, "/v1/functions/wapp/aliases/prod")
        .json(
            &json!({"version": 1, "canary": {"version": 2, "percent": 50,
            "guard": {"max_error_rate": 0.2, "min_calls": 5, "window_ms": 60000}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let mut failures = 0;
    for _ in 0..60 {
        let res = server.get("/shop").send().await.unwrap();
        if res.status() == StatusCode::BAD_GATEWAY {
            failures += 1;
        } else {
            assert_eq!(res.status(), StatusCode::CREATED);
        }
    }
    assert!((5..=15).contains(&failures), "{failures} failures");
    let alias: Value = server.get_json("/v1/functions/wapp/aliases/prod").await;
    assert_eq!(alias["canary"]["percent"], 0.0, "{alias}");
    for _ in 0..10 {
        let res = server.get("/shop").send().await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(header(&res, "x-nimbus-version"), "1");
    }
}

/// `nimbus invoke` output as JSON.
async fn invoke_json(server: &Server, name: &str, data: &Value) -> Value {
    let run = server
        .cli(&["invoke", name, "--data", &data.to_string()])
        .await;
    assert_eq!(run.code, 0, "{name}: {}{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{name}: {e}: {}", run.stdout))
}

#[tokio::test]
async fn invoking_web_functions_goes_through_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    server.deploy(&examples().join("node-http")).await;
    server.deploy(&examples().join("custom-java")).await;
    server.deploy(&wsgi_release(tmp.path(), "wsgi", "")).await;
    let event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/items/7",
        "rawQueryString": "x=1",
        "headers": {"content-type": "text/plain"},
        "requestContext": {"http": {"method": "PUT", "path": "/items/7"}},
        "body": "aGVsbG8=",
        "isBase64Encoded": true
    });

    // A payload 2.0 event is that request; the answer is a payload 2.0 response.
    let out = invoke_json(&server, "node-http", &event).await;
    assert_eq!(out["statusCode"], 200, "{out}");
    assert_eq!(
        out["cookies"],
        json!(["a=1; Path=/", "b=2; Path=/"]),
        "{out}"
    );
    let body: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"method": "PUT", "url": "/items/7?x=1", "hits": 1, "received": 5})
    );
    // Any other payload is a POST / with the payload as body.
    let out = invoke_json(&server, "node-http", &json!({"name": "Ada"})).await;
    let body: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"method": "POST", "url": "/", "hits": 2, "received": 14})
    );

    let out = invoke_json(&server, "java-hello", &event).await;
    assert_eq!(out["statusCode"], 200, "{out}");
    let body: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"runtime": "java", "method": "PUT", "path": "/items/7", "received": 5, "hits": 1})
    );

    let out = invoke_json(&server, "wapp", &event).await;
    assert_eq!(out["statusCode"], 201, "{out}");
    assert_eq!(out["cookies"], json!(["k=v"]), "{out}");
    assert_eq!(out["headers"]["content-type"], "application/json", "{out}");
    let body: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"method": "PUT", "path": "/items/7", "query": "x=1", "scheme": "http", "body": "hello"})
    );

    // Through the API, asynchronously too: the attempt runs through the same adapter.
    let res = server
        .req(Method::POST, "/v1/functions/wapp/invocations")
        .header("x-nimbus-invocation-type", "async")
        .body(r#"{"k": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let id = header(&res, "x-nimbus-request-id").to_string();
    let settled = server.settled(&id, std::time::Duration::from_secs(5)).await;
    assert_eq!(settled["status"], "succeeded", "{settled}");
}

#[tokio::test]
async fn function_failures_are_error_lines_in_the_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "failing",
        "functions:\n  fails:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 500\n  noimport:\n    runtime: python3\n    handler: broken.handler\n",
        &[
            (
                "main.py",
                "import time\ndef handler(event, context):\n    print('about to', event['do'])\n    if event['do'] == 'raise':\n        raise ValueError('the answer is not 42')\n    time.sleep(5)\n",
            ),
            (
                "broken.py",
                "import no_such_module\ndef handler(event, context):\n    return 1\n",
            ),
        ],
    );
    server.deploy_unchecked(&dir).await;

    for (name, data, expect) in [
        (
            "fails",
            r#"{"do": "raise"}"#,
            "[ERROR] ValueError: the answer is not 42",
        ),
        (
            "fails",
            r#"{"do": "sleep"}"#,
            "[ERROR] FunctionTimeout: Task timed out",
        ),
        ("noimport", "{}", "[ERROR] Runtime.ImportModuleError"),
    ] {
        let run = server.cli(&["invoke", name, "--data", data]).await;
        assert_ne!(run.code, 0, "{name} {data}");
        let logs = server
            .cli(&["logs", name, "--level", "error", "--output", "json"])
            .await;
        assert_eq!(logs.code, 0, "{}", logs.stderr);
        assert!(
            logs.stdout.contains(expect),
            "{name} {data}: {}",
            logs.stdout
        );
    }
    // The exception's line carries its stack; the handler's own output stays at its level.
    let logs = server
        .cli(&["logs", "fails", "--level", "error", "--output", "json"])
        .await;
    assert!(logs.stdout.contains("main.py"), "{}", logs.stdout);
    assert!(!logs.stdout.contains("about to"), "{}", logs.stdout);
    let all = server.cli(&["logs", "fails"]).await;
    assert!(all.stdout.contains("about to raise"), "{}", all.stdout);
}

#[tokio::test]
async fn headers_named_in_connection_are_not_forwarded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "echo",
        "functions:\n  echo:\n    runtime: custom\n    command: [/usr/bin/python3, server.py, $PORT]\n    url: {auth: anonymous}\n",
        &[("server.py", ECHO_SERVER)],
    );
    server.deploy(&dir).await;
    let addr = server.endpoint.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"GET /fn/echo/ HTTP/1.1\r\nhost: x\r\nconnection: close, x-secret\r\nx-secret: 1\r\nx-kept: 2\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let seen: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(seen["x-kept"], "2", "{seen}");
    assert!(seen.get("x-secret").is_none(), "{seen}");
}
