//! The HTTP gateway, black-box: routes, event shapes, web frameworks, custom runtimes and
//! route protections, against the real server over real sockets.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, examples, header, project};

/// A client that does not follow redirects, so they can be checked.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn api_gateway_handler_routes_params_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    server.deploy(&examples().join("http-api")).await;

    // A path parameter, and the handler's plain return value as a 200 JSON body.
    let res = server.get("/catalog/42").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!header(&res, "x-nimbus-request-id").is_empty());
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"id": "42", "name": "teapot"})
    );
    // The handler's own statusCode.
    assert_eq!(
        server.get("/catalog/7").send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // A greedy path parameter takes the rest of the path.
    let res = server
        .get("/static/css/site/main.css")
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "static file css/site/main.css");
    // The same function on its function URL.
    let res = server
        .get("/fn/catalog/anything?page=2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // No route: 404; a route without the method: 405 naming the allowed ones.
    let res = server.get("/nowhere").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "route_not_found"
    );
    let res = server
        .http
        .delete(server.url("/catalog/42"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&res, "allow"), "GET");

    // Key auth: missing, wrong, right.
    let post = |key: Option<&str>| {
        let mut req = server
            .http
            .post(server.url("/catalog?src=test"))
            .body(r#"{"name":"lamp"}"#);
        if let Some(k) = key {
            req = req.header("x-nimbus-key", k);
        }
        req
    };
    let res = post(None).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "key_required");
    let res = post(Some("nk_wrong")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "key_invalid");
    let created = server.cli(&["keys", "create", "tests"]).await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let key = created.stdout.trim().to_string();
    let res = post(Some(&key)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(header(&res, "location"), "/catalog/41");
    assert_eq!(header(&res, "set-cookie"), "last_created=41; Path=/");
    let listed = server.cli(&["keys", "ls", "--output", "json"]).await;
    let keys: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(keys["keys"][0]["name"], "tests");
    assert!(
        !listed.stdout.contains(&key),
        "a listed key must not reveal the key"
    );
    let id = keys["keys"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(server.cli(&["keys", "rm", &id]).await.code, 0);
    assert_eq!(
        post(Some(&key)).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn the_event_has_the_payload_2_shape_and_errors_give_502() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let dir = project(
        tmp.path(),
        "echo",
        "functions:\n  echo:\n    runtime: python3\n    handler: main.handler\n    timeout_ms: 1000\n    triggers:\n      - http: {path: \"/echo/{a}/{rest+}\", auth: anonymous}\n",
        &[(
            "main.py",
            "import time\ndef handler(event, context):\n    if event['rawQueryString'] == 'fail=1':\n        raise RuntimeError('secret detail')\n    if event['rawQueryString'] == 'slow=1':\n        time.sleep(5)\n    return event\n",
        )],
    );
    server.deploy(&dir).await;
    let res = server
        .http
        .put(server.url("/echo/x%20y/deep/er?k=1&k=2&z=%2F"))
        .header("cookie", "c1=v1; c2=v2")
        .header("x-custom", "one")
        .header("content-type", "application/octet-stream")
        .body(vec![0u8, 159, 146, 150])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let e: Value = res.json().await.unwrap();
    assert_eq!(e["version"], "2.0");
    assert_eq!(e["routeKey"], "ANY /echo/{a}/{rest+}");
    assert_eq!(e["rawPath"], "/echo/x%20y/deep/er");
    assert_eq!(e["rawQueryString"], "k=1&k=2&z=%2F");
    assert_eq!(e["queryStringParameters"], json!({"k": "1,2", "z": "/"}));
    assert_eq!(e["pathParameters"], json!({"a": "x y", "rest": "deep/er"}));
    assert_eq!(e["cookies"], json!(["c1=v1", "c2=v2"]));
    assert_eq!(e["headers"]["x-custom"], "one");
    assert_eq!(e["requestContext"]["http"]["method"], "PUT");
    assert_eq!(e["requestContext"]["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(e["isBase64Encoded"], true);
    assert_eq!(e["body"], "AJ+Slg==");

    let res = server.get("/echo/a/b?fail=1").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(header(&res, "x-nimbus-error-type"), "RuntimeError");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "function_failed");
    assert!(
        !body.to_string().contains("secret detail"),
        "a public route must not leak the exception text"
    );
    let res = server.get("/echo/a/b?slow=1").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "function_timeout"
    );
}

#[tokio::test]
async fn route_conflicts_are_refused_naming_both_functions() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    server.deploy(&examples().join("http-api")).await;
    let dir = project(
        tmp.path(),
        "thief",
        "functions:\n  thief:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - http: {path: \"/catalog/{item}\", methods: [GET, DELETE], auth: anonymous}\n",
        &[("main.py", "def handler(e, c):\n    return 1\n")],
    );
    let run = server.cli(&["deploy", dir.to_str().unwrap()]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("route `GET,DELETE /catalog/{item}` of function `thief` conflicts with route `GET /catalog/{id}` of function `catalog`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("(route_conflict)"), "{}", run.stderr);
    // The conflicting function was not stored; the original route still answers.
    assert_eq!(server.cli(&["describe", "thief"]).await.code, 1);
    assert_eq!(
        server.get("/catalog/42").send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn flask_and_fastapi_apps_run_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    // The system's Python, with nothing installed for the apps: their requirements.txt
    // is built at deploy.
    let server = Server::start(tmp.path());
    server.deploy(&examples().join("flask-app")).await;
    server.deploy(&examples().join("fastapi-app")).await;
    let client = raw_client();

    // Flask: JSON, cookies both ways, redirects, binary download, 5 MB upload, streaming.
    let res = client
        .get(server.url("/fn/flask-app/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"hello": "flask", "path": "/"})
    );
    let res = client.get(server.url("/hello/ada")).send().await.unwrap();
    assert_eq!(res.text().await.unwrap(), "Hello, ada!");
    let res = client
        .get(server.url("/fn/flask-app/login"))
        .send()
        .await
        .unwrap();
    let cookies: Vec<&str> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        ["session=abc123; HttpOnly; Path=/", "theme=dark; Path=/"]
    );
    let res = client
        .get(server.url("/fn/flask-app/whoami"))
        .header("cookie", "session=abc123; theme=dark")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"session": "abc123", "theme": "dark"})
    );
    let res = client
        .get(server.url("/fn/flask-app/old"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(header(&res, "location"), "/hello/redirected");
    let res = client
        .get(server.url("/fn/flask-app/blob/3000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, "content-type"), "application/octet-stream");
    let blob = res.bytes().await.unwrap();
    assert_eq!(blob.len(), 3_000_000);
    assert!(blob.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8));
    let upload: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let res = client
        .post(server.url("/fn/flask-app/upload"))
        .body(upload)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"size": 5 * 1024 * 1024, "first": "00", "last": format!("{:02x}", (5 * 1024 * 1024 - 1) % 251)})
    );
    let res = client
        .get(server.url("/fn/flask-app/stream/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "chunk 0\nchunk 1\nchunk 2\n");

    // FastAPI: path/query parameters, lifespan startup, JSON body, cookie, redirect, stream.
    let res = client
        .get(server.url("/fn/fastapi-app/items/5?q=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"item_id": 5, "q": "x", "started": true})
    );
    let res = client
        .post(server.url("/fn/fastapi-app/items"))
        .header("user-agent", "nimbus-test")
        .json(&json!({"name": "n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(header(&res, "set-cookie").starts_with("created=n"));
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"created": {"name": "n"}, "agent": "nimbus-test"})
    );
    let res = client
        .get(server.url("/fn/fastapi-app/go"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (res.status(), header(&res, "location")),
        (StatusCode::TEMPORARY_REDIRECT, "/items/7")
    );
    let res = client
        .get(server.url("/fn/fastapi-app/numbers/4"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.text().await.unwrap(), "0\n1\n2\n3\n");
    let res = client
        .get(server.url("/fn/fastapi-app/items/notanumber"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn node_http_handler_and_java_custom_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    server.deploy(&examples().join("node-http")).await;
    server.deploy(&examples().join("custom-java")).await;

    for expected_hits in 1..=2 {
        let res = server
            .http
            .post(server.url("/fn/node-http/path?x=1"))
            .body("hello")
            .send()
            .await
            .unwrap();
        let cookies: Vec<&str> = res
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
        let request_id = header(&res, "x-nimbus-request-id").to_string();
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body,
            json!({"method": "POST", "url": "/path?x=1", "hits": expected_hits, "received": 5})
        );
        // The handler's console output is attributed to the request.
        let record: Value = server
            .get_json(&format!("/v1/invocations/{request_id}"))
            .await;
        assert_eq!(
            record["logs"][0]["message"], "POST /path?x=1 (5 bytes)",
            "{record}"
        );
        assert!(
            record["timings"]["handler_ms"].as_f64().unwrap() > 0.0,
            "{record}"
        );
    }

    for (path, seen, hits) in [("/java/a/b", "/java/a/b", 1), ("/fn/java-hello/x", "/x", 2)] {
        let res = server
            .http
            .post(server.url(path))
            .body("abc")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body,
            json!({"runtime": "java", "method": "POST", "path": seen, "received": 3, "hits": hits})
        );
    }
}

#[tokio::test]
async fn route_protections_cidr_body_limit_cors_and_rate_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let manifest = r#"functions:
  guarded:
    runtime: python3
    handler: main.handler
    triggers:
      - http: {path: /denied, auth: anonymous, deny: [127.0.0.0/8]}
      - http: {path: /allowed, auth: anonymous, allow: [127.0.0.1/32, "10.0.0.0/8"]}
      - http: {path: /small, methods: [POST], auth: anonymous, body_limit_bytes: 1000}
      - http:
          path: /cors
          methods: [GET, PUT]
          auth: key
          cors: {allow_origins: ["https://app.example"], allow_headers: [content-type, x-nimbus-key], expose_headers: [x-total], max_age_s: 600}
      - http: {path: /limited, auth: anonymous, rate_limit: {requests_per_second: 1, burst: 2}}
"#;
    let dir = project(
        tmp.path(),
        "guarded",
        manifest,
        &[("main.py", "def handler(e, c):\n    return {'ok': True}\n")],
    );
    server.deploy(&dir).await;

    let res = server.get("/denied").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "ip_denied");
    assert_eq!(
        server.get("/allowed").send().await.unwrap().status(),
        StatusCode::OK
    );

    let res = server
        .http
        .post(server.url("/small"))
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        res.json::<Value>().await.unwrap()["code"],
        "payload_too_large"
    );
    assert_eq!(
        server
            .http
            .post(server.url("/small"))
            .body(vec![b'x'; 1000])
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // A preflight is answered without a key and without invoking the function.
    let res = server
        .http
        .request(Method::OPTIONS, server.url("/cors"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&res, "access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(header(&res, "access-control-allow-methods"), "GET, PUT");
    assert_eq!(
        header(&res, "access-control-allow-headers"),
        "content-type, x-nimbus-key"
    );
    assert_eq!(header(&res, "access-control-max-age"), "600");
    let res = server
        .http
        .request(Method::OPTIONS, server.url("/cors"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&res, "access-control-allow-origin"),
        "",
        "an unlisted origin gets no grant"
    );
    let key = server
        .cli(&["keys", "create"])
        .await
        .stdout
        .trim()
        .to_string();
    let res = server
        .get("/cors")
        .header("origin", "https://app.example")
        .header("x-nimbus-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "access-control-allow-origin"),
        "https://app.example"
    );
    assert_eq!(header(&res, "access-control-expose-headers"), "x-total");

    let mut statuses = Vec::new();
    let mut retry_after = String::new();
    for _ in 0..3 {
        let res = server.get("/limited").send().await.unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = header(&res, "retry-after").to_string();
            assert_eq!(res.json::<Value>().await.unwrap()["code"], "rate_limited");
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(retry_after, "1");
}

#[tokio::test]
async fn debug_header_adds_server_timing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path());
    server.deploy(&examples().join("http-api")).await;
    let res = server
        .get("/catalog/42")
        .header("x-nimbus-debug", "1")
        .send()
        .await
        .unwrap();
    let timing = header(&res, "server-timing").to_string();
    for part in ["routing;dur=", "queue;dur=", "init;dur=", "handler;dur="] {
        assert!(timing.contains(part), "{timing}");
    }
    let warm = server
        .get("/catalog/42")
        .header("x-nimbus-debug", "1")
        .send()
        .await
        .unwrap();
    assert!(
        !header(&warm, "server-timing").contains("init;"),
        "a warm call has no init time"
    );
    assert_eq!(
        header(
            &server.get("/catalog/42").send().await.unwrap(),
            "server-timing"
        ),
        ""
    );
}
