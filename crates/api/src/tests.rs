//! Router tests without sockets: real store, real pool, requests through `oneshot`.

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use platform::Platform;

use crate::{AppState, Gateway, router};

pub(crate) const TOKEN: &str = "test-token";

pub(crate) struct Harness {
    _tmp: tempfile::TempDir,
    pub(crate) app: axum::Router,
    pub(crate) platform: Arc<Platform>,
    objects: Arc<crate::buckets::Objects>,
}

pub(crate) async fn harness() -> Harness {
    let tmp = tempfile::tempdir().unwrap();
    let meta = Arc::new(
        store::SqliteStore::open(&tmp.path().join("db"))
            .await
            .unwrap(),
    );
    let objects_meta: Arc<dyn store::ObjectMeta> = meta.clone();
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
    let objects = Arc::new(crate::buckets::Objects {
        meta: objects_meta,
        files: Arc::new(store::ObjectFiles::open(tmp.path().join("objects")).unwrap()),
        website_domain: "localhost".into(),
    });
    let app = router(AppState {
        platform: platform.clone(),
        gateway,
        bus: platform::bus::EventBus::new(),
        bus_limits: Default::default(),
        token: TOKEN.into(),
        prices: Default::default(),
        objects: Some(objects.clone()),
        fanout: Arc::new(crate::fanout::Fanout::new(TOKEN)),
    });
    Harness {
        _tmp: tmp,
        app,
        platform,
        objects,
    }
}

pub(crate) fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, text) in files {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(text.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

impl Harness {
    pub(crate) async fn call(
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

    pub(crate) async fn upload(&self, files: &[(&str, &str)]) -> String {
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

impl Harness {
    /// Stores an object as the S3 API would: the bytes durable first, then the row.
    async fn put_object(&self, bucket: &str, key: &str, bytes: &[u8], content_type: &str) {
        let mut sink = self.objects.files.create().unwrap();
        sink.write(bytes).unwrap();
        let blob_id = sink.finish().unwrap();
        let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(bytes));
        let record = store::objects::ObjectRecord {
            bucket: bucket.into(),
            key: key.into(),
            blob_id,
            size_bytes: bytes.len() as u64,
            etag: hex::encode(&digest[..16]),
            modified_ms: 1_700_000_000_000,
            attrs: store::objects::ObjectAttrs {
                content_type: Some(content_type.into()),
                ..Default::default()
            },
        };
        self.objects
            .meta
            .commit_object(store::objects::ObjectChange::Put(Box::new(record)), &[])
            .await
            .unwrap();
    }

    /// A request to the website of `host`, as a browser sends it.
    async fn site(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = self
            .app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes().to_vec();
        (parts.status, parts.headers, bytes)
    }
}

#[tokio::test]
async fn buckets_are_made_listed_paged_and_removed_with_stable_errors() {
    let h = harness().await;
    let (status, body) = h.call("GET", "/v1/buckets", Body::empty()).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!({"buckets": []}))
    );

    let (status, body) = h.call("POST", "/v1/buckets", r#"{"name":"photos"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], "photos");
    for (input, status, code) in [
        (
            r#"{"name":"photos"}"#,
            StatusCode::CONFLICT,
            "bucket_exists",
        ),
        (
            r#"{"name":"Bad_Name"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            r#"{"name":"ab"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (r#"{"nom":"x"}"#, StatusCode::BAD_REQUEST, "invalid_request"),
        ("not json", StatusCode::BAD_REQUEST, "invalid_request"),
    ] {
        let (got, body) = h.call("POST", "/v1/buckets", input).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{input}: {body}"
        );
    }

    for key in ["a/1.txt", "a/2.txt", "b.txt"] {
        h.put_object("photos", key, b"hello", "text/plain").await;
    }
    let (status, body) = h
        .call(
            "GET",
            "/v1/buckets/photos/objects?prefix=a/&limit=1",
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["objects"][0]["key"], "a/1.txt");
    assert_eq!(body["objects"][0]["size_bytes"], 5);
    assert_eq!(body["objects"][0]["content_type"], "text/plain");
    assert_eq!(body["next_after"], "a/1.txt");
    let (_, body) = h
        .call(
            "GET",
            "/v1/buckets/photos/objects?prefix=a/&after=a/1.txt",
            Body::empty(),
        )
        .await;
    assert_eq!(body["objects"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["objects"][0]["key"], "a/2.txt");
    assert!(body.get("next_after").is_none(), "{body}");
    for (uri, status, code) in [
        (
            "/v1/buckets/nope/objects",
            StatusCode::NOT_FOUND,
            "bucket_not_found",
        ),
        (
            "/v1/buckets/photos/objects?limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/buckets/photos/objects?limit=1001",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/buckets/photos/objects?limit=x",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let (got, body) = h.call("GET", uri, Body::empty()).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{uri}: {body}"
        );
    }

    // Not empty: refused, unless forced; the files go with the rows.
    let (status, body) = h.call("DELETE", "/v1/buckets/photos", Body::empty()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("bucket_not_empty"))
    );
    let (status, _) = h
        .call("DELETE", "/v1/buckets/photos?force=true", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let blobs = h._tmp.path().join("objects/blobs");
    let files = walk(&blobs);
    assert!(files.is_empty(), "left behind: {files:?}");
    let (status, body) = h.call("DELETE", "/v1/buckets/photos", Body::empty()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("bucket_not_found"))
    );
    let (status, body) = h
        .call("DELETE", "/v1/buckets/photos?force=maybe", Body::empty())
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (_, body) = h.call("GET", "/v1/buckets", Body::empty()).await;
    assert_eq!(body, serde_json::json!({"buckets": []}));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_website_is_set_listed_checked_and_removed() {
    let h = harness().await;
    h.call("POST", "/v1/buckets", r#"{"name":"site"}"#).await;
    let site = r#"{"index_document":"index.html","error_document":"404.html"}"#;
    let (status, body) = h.call("PUT", "/v1/buckets/site/website", site).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["error_document"], "404.html");
    let (_, body) = h.call("GET", "/v1/buckets", Body::empty()).await;
    assert_eq!(
        body["buckets"][0]["website"]["index_document"], "index.html",
        "{body}"
    );
    for (uri, input, status, code) in [
        (
            "/v1/buckets/nope/website",
            site,
            StatusCode::NOT_FOUND,
            "bucket_not_found",
        ),
        (
            "/v1/buckets/site/website",
            r#"{"index_document":"a/b.html"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/buckets/site/website",
            r#"{"index_document":""}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/buckets/site/website",
            r#"{"error_document":"e.html"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/buckets/site/website",
            r#"{"index_document":"i","extra":1}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let (got, body) = h.call("PUT", uri, input).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{input}: {body}"
        );
    }
    let (status, _) = h
        .call("DELETE", "/v1/buckets/site/website", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, body) = h.call("GET", "/v1/buckets", Body::empty()).await;
    assert!(body["buckets"][0].get("website").is_none(), "{body}");
    // Twice is fine, as on S3; an unknown bucket is not.
    let (status, _) = h
        .call("DELETE", "/v1/buckets/site/website", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = h
        .call("DELETE", "/v1/buckets/nope/website", Body::empty())
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("bucket_not_found"))
    );
}

#[tokio::test]
async fn bucket_operations_need_the_token() {
    let h = harness().await;
    let res = h
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri("/v1/buckets")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_gateway_serves_a_website_by_host() {
    let h = harness().await;
    h.call("POST", "/v1/buckets", r#"{"name":"site"}"#).await;
    h.call("POST", "/v1/buckets", r#"{"name":"plain"}"#).await;
    h.put_object("site", "index.html", b"<h1>home</h1>", "text/html")
        .await;
    h.put_object("site", "docs/index.html", b"docs home", "text/html")
        .await;
    h.put_object("site", "app.css", b"0123456789", "text/css")
        .await;
    h.put_object("site", "404.html", b"lost", "text/html").await;
    let host = "site.localhost:7700";

    // No website yet: S3's page, in HTML.
    let (status, headers, body) = h.site("GET", host, "/", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(String::from_utf8_lossy(&body).contains("NoSuchWebsiteConfiguration"));
    // Without an error document, a missing key is S3's NoSuchKey page.
    h.call(
        "PUT",
        "/v1/buckets/site/website",
        r#"{"index_document":"index.html"}"#,
    )
    .await;
    let (status, _, body) = h.site("GET", host, "/missing", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("NoSuchKey"));
    h.call(
        "PUT",
        "/v1/buckets/site/website",
        r#"{"index_document":"index.html","error_document":"404.html"}"#,
    )
    .await;

    let (status, headers, body) = h.site("GET", host, "/", &[]).await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, &b"<h1>home</h1>"[..])
    );
    assert_eq!(headers["content-type"], "text/html");
    let etag = headers["etag"].to_str().unwrap().to_string();
    assert!(headers.contains_key("last-modified"));
    assert!(headers.contains_key("x-nimbus-request-id"));
    let (status, _, body) = h.site("GET", host, "/docs/", &[]).await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, &b"docs home"[..])
    );
    let (status, headers, body) = h.site("GET", host, "/docs", &[]).await;
    assert_eq!(
        (status, headers["location"].to_str().unwrap()),
        (StatusCode::FOUND, "/docs/")
    );
    assert!(body.is_empty());
    let (status, headers, body) = h.site("GET", host, "/nothing/here", &[]).await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::NOT_FOUND, &b"lost"[..])
    );
    assert_eq!(headers["content-type"], "text/html");

    // Conditions and ranges.
    let (status, headers, body) = h.site("GET", host, "/", &[("if-none-match", &etag)]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(headers["etag"].to_str().unwrap(), etag);
    assert!(body.is_empty());
    let (status, _, _) = h
        .site("GET", host, "/", &[("if-none-match", "\"other\"")])
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = h.site("GET", host, "/", &[("if-match", "\"other\"")]).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, _, _) = h
        .site(
            "GET",
            host,
            "/",
            &[("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    let (status, headers, body) = h
        .site("GET", host, "/app.css", &[("range", "bytes=2-5")])
        .await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &b"2345"[..])
    );
    assert_eq!(headers["content-range"], "bytes 2-5/10");
    assert_eq!(headers["content-length"], "4");
    let (status, headers, _) = h
        .site("GET", host, "/app.css", &[("range", "bytes=10-")])
        .await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers["content-range"], "bytes */10");

    // HEAD has the headers and no body; other methods are refused.
    let (status, headers, body) = h.site("HEAD", host, "/app.css", &[]).await;
    assert_eq!(
        (status, headers["content-length"].to_str().unwrap()),
        (StatusCode::OK, "10")
    );
    assert!(body.is_empty());
    let (status, headers, _) = h.site("POST", host, "/", &[]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, HEAD");

    // Another bucket's host, or none: S3's pages; the routes are not reached.
    let (status, _, body) = h.site("GET", "plain.localhost", "/", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("NoSuchWebsiteConfiguration"));
    let (status, _, body) = h.site("GET", "ghost.localhost", "/", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("NoSuchBucket"));
    let (status, _, body) = h.site("GET", "localhost:7700", "/", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        String::from_utf8_lossy(&body).contains("route_not_found"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}
