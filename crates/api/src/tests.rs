//! Router tests without sockets: real store, real pool, requests through `oneshot`.

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use platform::Platform;

use crate::{AppState, Gateway, router};

const TOKEN: &str = "test-token";

struct Harness {
    _tmp: tempfile::TempDir,
    app: axum::Router,
}

async fn harness() -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let meta = Arc::new(
        store::SqliteStore::open(&tmp.path().join("db"))
            .await
            .unwrap(),
    );
    let blobs: Arc<dyn store::BlobStore> =
        Arc::new(store::FsBlobStore::new(tmp.path().join("blobs")));
    let code = store::CodeCache::new(tmp.path().join("code"), blobs.clone(), 1 << 20);
    let runtimes = sandbox::Runtimes::install(&tmp.path().join("rt"), None, None).unwrap();
    let pool = sandbox::Pool::new(runtimes, Default::default());
    let queue: Arc<dyn store::AsyncQueue> = meta.clone();
    let platform = Arc::new(Platform::new(meta, blobs, code, pool));
    platform
        .enable_async(queue, Default::default())
        .await
        .unwrap();
    let telemetry = store::SqliteTelemetry::open(&tmp.path().join("telemetry"))
        .await
        .unwrap();
    platform.enable_telemetry(Arc::new(telemetry), Default::default(), None);
    let gateway = Gateway::new();
    platform.add_trigger(gateway.clone());
    platform.load().await.unwrap();
    platform.start_triggers().await.unwrap();
    let app = router(AppState {
        platform,
        gateway,
        bus: platform::bus::EventBus::new(),
        bus_limits: Default::default(),
        token: TOKEN.into(),
        prices: Default::default(),
    });
    Harness { _tmp: tmp, app }
}

fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(text.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(body.into())
            .unwrap();
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    async fn upload(&self, files: &[(&str, &str)]) -> String {
        let (status, body) = self.call("POST", "/v1/code", zip_of(files)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["code_sha256"].as_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn requires_the_token_except_for_openapi_and_health() {
    let h = harness().await;
    for (auth, expect) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Bearer nope"), StatusCode::UNAUTHORIZED),
        (Some("Bearer test-token"), StatusCode::OK),
    ] {
        let mut req = Request::builder().uri("/v1/functions");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let res = h
            .app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), expect, "{auth:?}");
    }
    let res = h
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "/metrics");
    for open in ["/v1/openapi.json", "/healthz"] {
        let res = h
            .app
            .clone()
            .oneshot(Request::builder().uri(open).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{open}");
    }
}

#[tokio::test]
async fn observability_queries_check_their_arguments_and_see_lifecycle_events() {
    let h = harness().await;
    let sha = h
        .upload(&[("main.py", "def handler(e, c):\n    return 1\n")])
        .await;
    let f = serde_json::json!({"name": "f", "runtime": "python3", "handler": "main.handler", "code_sha256": sha});
    let (status, _) = h.call("POST", "/v1/functions", f.to_string()).await;
    assert_eq!(status, StatusCode::CREATED);
    let bad: &[(&str, &str)] = &[
        ("/v1/functions/f/logs?since=yesterday", "since"),
        ("/v1/functions/f/logs?level=loud", "level"),
        ("/v1/functions/f/logs?regex=(", "regex"),
        ("/v1/functions/f/stats?window=2y", "window"),
        ("/v1/functions/f/stats?window=1d&step=1s", "step"),
        ("/v1/usage?by=week", "by"),
    ];
    for (uri, field) in bad {
        let (status, json) = h.call("GET", uri, Body::empty()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {json}");
        assert_eq!(json["code"], "invalid_request");
        assert!(json["message"].as_str().unwrap().contains(field), "{json}");
    }
    let (status, json) = h
        .call("GET", "/v1/functions/nope/logs", Body::empty())
        .await;
    assert_eq!(
        (status, json["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("function_not_found"))
    );
    let (status, json) = h.call("GET", "/v1/functions/f/logs", Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["lines"], serde_json::json!([]));
    let (_, json) = h.call("GET", "/v1/events?function=f", Body::empty()).await;
    assert_eq!(json["events"][0]["event"], "created", "{json}");
    let (status, json) = h
        .call(
            "GET",
            "/v1/functions/f/stats?window=1h&step=1m",
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["series"].as_array().unwrap().len(), 60);
    assert_eq!(json["totals"]["invocations"], 0);
    let (status, json) = h.call("GET", "/v1/usage", Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["total"]["requests"], 0);
}

#[tokio::test]
async fn errors_have_stable_codes() {
    let h = harness().await;
    let sha = h
        .upload(&[("main.py", "def handler(e, c):\n    return 1\n")])
        .await;
    let good = serde_json::json!({"name": "f", "runtime": "python3", "handler": "main.handler", "code_sha256": sha});
    let cases: Vec<(&str, &str, String, StatusCode, &str)> = vec![
        ("GET", "/v1/functions/nope", String::new(), StatusCode::NOT_FOUND, "function_not_found"),
        ("POST", "/v1/functions/nope/invocations", String::new(), StatusCode::NOT_FOUND, "function_not_found"),
        ("GET", "/v1/nothing-here", String::new(), StatusCode::NOT_FOUND, "route_not_found"),
        ("PATCH", "/v1/functions", String::new(), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        ("POST", "/v1/functions", "{not json".into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("POST", "/v1/functions", r#"{"name":"f","runtime":"ruby","handler":"a.b","code_sha256":"x"}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("POST", "/v1/functions", r#"{"name":"f","runtme":"python3"}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("POST", "/v1/functions", serde_json::json!({"name": "f", "runtime": "python3", "handler": "main.handler", "code_sha256": "ab".repeat(32)}).to_string(), StatusCode::BAD_REQUEST, "code_not_found"),
        ("POST", "/v1/functions", good.to_string(), StatusCode::CREATED, ""),
        ("POST", "/v1/functions", good.to_string(), StatusCode::CONFLICT, "function_exists"),
        ("PUT", "/v1/functions/other", good.to_string(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("POST", "/v1/code", "garbage".into(), StatusCode::BAD_REQUEST, "invalid_archive"),
        ("GET", "/v1/invocations/unknown", String::new(), StatusCode::NOT_FOUND, "invocation_not_found"),
        ("DELETE", "/v1/functions/f", String::new(), StatusCode::NO_CONTENT, ""),
        ("DELETE", "/v1/functions/f", String::new(), StatusCode::NOT_FOUND, "function_not_found"),
    ];
    for (method, uri, body, status, code) in cases {
        let (got, json) = h.call(method, uri, body.clone()).await;
        assert_eq!(got, status, "{method} {uri} {body}: {json}");
        if !code.is_empty() {
            assert_eq!(json["code"], code, "{method} {uri}: {json}");
            assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
}

#[tokio::test]
async fn rejects_unsafe_archives_and_oversized_payloads() {
    let h = harness().await;
    let (status, json) = h
        .call("POST", "/v1/code", zip_of(&[("../evil.py", "x")]))
        .await;
    assert_eq!(
        (status, json["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_archive"))
    );
    assert!(
        json["message"].as_str().unwrap().contains("../evil.py"),
        "{json}"
    );
    let big = vec![b'x'; model::limits::PAYLOAD_BYTES_MAX + 1];
    let (status, json) = h.call("POST", "/v1/functions/f/invocations", big).await;
    assert_eq!(
        (status, json["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let h = harness().await;
    let (_, doc) = h.call("GET", "/v1/openapi.json", Body::empty()).await;
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/code", "post"),
        ("/v1/code/{sha256}", "head"),
        ("/v1/functions", "get"),
        ("/v1/functions", "post"),
        ("/v1/functions/{name}", "get"),
        ("/v1/functions/{name}", "put"),
        ("/v1/functions/{name}", "delete"),
        ("/v1/functions/{name}/invocations", "post"),
        ("/v1/invocations/{request_id}", "get"),
        ("/healthz", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} undocumented"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn malformed_queries_paths_and_invocation_types_are_json_400s() {
    let h = harness().await;
    let sha = h
        .upload(&[("main.py", "def handler(e, c):\n    return 1\n")])
        .await;
    let f = serde_json::json!({"name": "f", "runtime": "python3", "handler": "main.handler", "code_sha256": sha});
    let (status, _) = h.call("POST", "/v1/functions", f.to_string()).await;
    assert_eq!(status, StatusCode::CREATED);
    for uri in [
        "/v1/dlq?limit=lots",
        "/v1/functions/f/logs?limit=-1",
        "/v1/functions/f/versions/notanumber",
    ] {
        let (status, body) = h.call("GET", uri, Body::empty()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["code"], "invalid_request", "{uri}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{uri}"
        );
    }
    let req = Request::builder()
        .method("POST")
        .uri("/v1/functions/f/invocations")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("x-nimbus-invocation-type", "Later")
        .body(Body::from("{}"))
        .unwrap();
    let res = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("Later"),
        "{body}"
    );
    // The names Lambda clients send are taken.
    for (kind, status) in [
        ("RequestResponse", StatusCode::OK),
        ("Event", StatusCode::ACCEPTED),
    ] {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/functions/f/invocations")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("x-nimbus-invocation-type", kind)
            .body(Body::from("{}"))
            .unwrap();
        let res = h.app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), status, "{kind}");
    }
}

/// Bodies are checked as the document describes them: an array is not an object, a
/// redrive names a valid function, a publish without a description may send no body or
/// `null`, and `by=` is the default grouping.
#[tokio::test]
async fn bodies_are_checked_as_documented() {
    let h = harness().await;
    let sha = h
        .upload(&[("main.py", "def handler(e, c):\n    return 1\n")])
        .await;
    let f = serde_json::json!({"name": "f", "runtime": "python3", "handler": "main.handler", "code_sha256": sha});
    let (status, _) = h.call("POST", "/v1/functions", f.to_string()).await;
    assert_eq!(status, StatusCode::CREATED);
    for (uri, body) in [
        ("/v1/functions/f/versions", "[]"),
        ("/v1/keys", r#"["k"]"#),
        ("/v1/dlq/redrive", r#"{"function": ""}"#),
        ("/v1/dlq/redrive", r#"{"function": "f", "ids": []}"#),
    ] {
        let (status, json) = h.call("POST", uri, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {body}: {json}");
        assert_eq!(json["code"], "invalid_request", "{uri} {body}: {json}");
    }
    let (status, json) = h.call("POST", "/v1/functions/f/versions", "null").await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let (status, json) = h
        .call("POST", "/v1/functions/f/versions", Body::empty())
        .await;
    assert_eq!(status, StatusCode::OK, "unchanged: {json}");
    let (status, json) = h.call("GET", "/v1/usage?by=", Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{json}");
}

#[test]
fn every_operation_documents_the_errors_it_can_answer() {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(crate::ApiDoc::openapi()).unwrap();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            for status in ["400", "408", "500", "503", "507"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} does not document {status}"
                );
            }
            let open = path == "/healthz";
            assert_eq!(responses.contains_key("401"), !open, "{method} {path}");
        }
    }
    assert!(operations > 20, "{operations}");
}
