//! The internal endpoint through the router without sockets, and the HTTP forwarder against
//! it on a socket: what a home answers, and what the sender makes of it.

use std::sync::Arc;

use axum::http::Request;
use tower::ServiceExt;

use super::*;
use crate::tests::{Harness, TOKEN, harness};

/// Prints 3,000 bytes and a line, so the log is longer than a tail; sleeps and fails on
/// request; answers the request id it was given.
const CODE: &str = "import time\n\ndef handler(event, context):\n    if event.get('fail'):\n        raise ValueError('bad input')\n    print('x' * 3000)\n    print('y' * 3000)\n    print('hello from the home')\n    return {'ok': True, 'request': context.aws_request_id}\n";

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// `f` deployed: one instance at most, whose calls would queue 10 s for it.
async fn with_f() -> Harness {
    let h = harness().await;
    let sha = h.upload(&[("main.py", CODE)]).await;
    let f = serde_json::json!({"name": "f", "runtime": "python3", "handler": "main.handler",
        "code_sha256": sha, "max_instances": 1, "queue_timeout_ms": 10_000});
    let (status, body) = h.call("POST", "/v1/functions", f.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    h
}

/// A forwarded call's request, as `HttpForwarder` sends it.
fn internal(target: &str, key: Option<&str>, request_id: &str, event: &str) -> Request<Body> {
    let mut req = Request::post(format!("/v1/internal/invoke/{target}"))
        .header(public::REQUEST_ID, b64(request_id))
        .header(headers::TRIGGER, "async")
        .header(headers::ATTEMPT, "2")
        .header(headers::SOURCE, b64("timer:nightly"))
        .header(crate::trace::TRACEPARENT, TRACEPARENT)
        .header(headers::PARENT_SPAN, "1111111111111111");
    if let Some(key) = key {
        req = req.header(headers::KEY, key);
    }
    req.body(Body::from(event.to_string())).unwrap()
}

async fn send(h: &Harness, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let res = h.app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// Holds `f`'s one instance busy until the session is finished.
async fn hold_f(h: &Harness) -> platform::Session {
    let call = Call::new("f", TriggerKind::Api, platform::trace::child_of(None));
    match h.platform.begin(call).await.unwrap() {
        platform::Begun::Ready(s) => s,
        platform::Begun::Failed(r, _) => panic!("{:?}", r.error),
    }
}

#[tokio::test]
async fn the_internal_endpoint_takes_the_node_key_and_nothing_else() {
    let h = with_f().await;
    let admin = Request::post("/v1/internal/invoke/f")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from("{}"))
        .unwrap();
    let wrong = node_key("another cluster's token");
    for req in [
        internal("f", None, "r1", "{}"),
        internal("f", Some(&wrong), "r1", "{}"),
        admin,
    ] {
        let (status, _, body) = send(&h, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body:?}");
    }
    assert!(h.platform.recent_invocation("r1").is_none(), "nothing ran");
    // With the key, the call is checked as any other.
    let key = node_key(TOKEN);
    let (status, _, body) = send(&h, internal("nope", Some(&key), "r2", "{}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body:?}");
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("function_not_found")
    );
    // And it is no public operation.
    let (_, doc) = h.call("GET", "/v1/openapi.json", Body::empty()).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.keys().all(|p| !p.contains("internal")), "{paths:?}");
}

#[tokio::test]
async fn a_forwarded_call_runs_here_and_is_answered_with_its_record() {
    let h = with_f().await;
    let key = node_key(TOKEN);
    let (status, headers, body) = send(&h, internal("f", Some(&key), "req-1", "{}")).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value, serde_json::json!({"ok": true, "request": "req-1"}));
    let remote = ran(&headers, body).expect("a well-formed answer");
    assert_eq!(
        (remote.request_id.as_str(), remote.version.as_str()),
        ("req-1", "$LATEST")
    );
    assert!(remote.cold_start && remote.init_ms.is_some(), "{remote:?}");
    assert!(
        remote.duration_ms > 0.0 && remote.instance_id > 0,
        "{remote:?}"
    );
    assert!(matches!(
        remote.outcome,
        Outcome::Success {
            content_type: ContentType::Json,
            ..
        }
    ));
    // The log's tail, not the whole log: the last line, and enough before it for 4 KB.
    let lines = &remote.logs.lines;
    assert_eq!(lines.last().unwrap().message, "hello from the home");
    let carried: usize = lines.iter().map(|l| l.message.len() + 1).sum();
    assert!((LOG_TAIL_BYTES..6_000).contains(&carried), "{carried}");
    // The home recorded the call as the sender made it.
    let record = h
        .platform
        .recent_invocation("req-1")
        .expect("recorded here");
    assert_eq!(
        (record.trigger, record.attempt, record.source.as_deref()),
        (TriggerKind::Async, 2, Some("timer:nightly"))
    );
    assert_eq!(record.trace.traceparent, TRACEPARENT);
    assert_eq!(
        record.trace.parent_span_id.as_deref(),
        Some("1111111111111111")
    );
    // A function's failure is an outcome, with its type marked and its error the body.
    let (status, headers, body) =
        send(&h, internal("f", Some(&key), "req-2", r#"{"fail": true}"#)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[public::ERROR_TYPE], "ValueError");
    assert_eq!(headers[public::COLD_START], "false");
    let Outcome::Error(e) = ran(&headers, body).unwrap().outcome else {
        panic!("a failure");
    };
    assert_eq!(e.error_message, "bad input");
}

#[tokio::test]
async fn a_home_without_room_answers_full_at_once() {
    let h = with_f().await;
    let held = hold_f(&h).await;
    let asked = Instant::now();
    let (status, headers, body) =
        send(&h, internal("f", Some(&node_key(TOKEN)), "req-3", "{}")).await;
    // Not after `f`'s 10 s queue timeout: the sender runs it itself instead.
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    assert_eq!(headers[headers::PLACEMENT], "full");
    assert!(matches!(
        read_answer("home", status, &headers, body),
        Ok(Forwarded::NotThere(_))
    ));
    assert!(
        h.platform.recent_invocation("req-3").is_none(),
        "it did not run"
    );
    held.finish(None, Logs::default());
}

/// Serves `h`'s router on a free port: a node at that address.
async fn serve(h: &Harness) -> NodeRecord {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = h.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    node(&format!("http://{addr}"))
}

fn node(address: &str) -> NodeRecord {
    NodeRecord {
        id: address.into(),
        address: address.into(),
        started_at_ms: 0,
        last_seen_ms: 0,
    }
}

fn call(target: &str) -> Call {
    let mut call = Call::new(target, TriggerKind::Api, platform::trace::child_of(None));
    call.client_context = Some(r#"{"custom": {"é": 1}}"#.into());
    call.affinity = Some("user 42 ✓".into());
    call
}

const A_WHILE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_http_forwarder_brings_back_the_answer_or_says_the_call_is_not_there() {
    let h = with_f().await;
    let home = serve(&h).await;
    let forwarder = HttpForwarder::new(TOKEN);
    let c = call("f");
    let Forwarded::Ran(remote) = forwarder
        .forward(&home, &c, Bytes::from_static(b"{}"), A_WHILE)
        .await
        .unwrap()
    else {
        panic!("it ran there");
    };
    assert_eq!(remote.request_id, c.request_id);
    let Outcome::Success { body, .. } = &remote.outcome else {
        panic!("{:?}", remote.outcome);
    };
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(value["request"], c.request_id.as_str());
    let record = h.platform.recent_invocation(&c.request_id).unwrap();
    assert_eq!(record.trace, c.trace, "the sender's span, as it is");
    // The home's refusals are the caller's errors, as if it had refused them itself.
    let e = forwarder
        .forward(&home, &call("nope"), Bytes::new(), A_WHILE)
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code, ErrorCode::FunctionNotFound);
    // A busy home, a home of another cluster: the call did not start, it runs here.
    let held = hold_f(&h).await;
    let answer = forwarder
        .forward(&home, &call("f"), Bytes::from_static(b"{}"), A_WHILE)
        .await;
    assert!(matches!(answer, Ok(Forwarded::NotThere(_))));
    held.finish(None, Logs::default());
    let stranger = HttpForwarder::new("another cluster's token");
    let answer = stranger
        .forward(&home, &call("f"), Bytes::from_static(b"{}"), A_WHILE)
        .await;
    assert!(matches!(answer, Ok(Forwarded::NotThere(_))));
}

#[tokio::test]
async fn a_home_out_of_reach_is_not_there_and_one_that_drops_the_call_is_an_error() {
    let forwarder = HttpForwarder::new(TOKEN);
    // Nothing listens: refused before anything was sent.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let gone = node(&format!("http://{addr}"));
    let answer = forwarder
        .forward(&gone, &call("f"), Bytes::new(), A_WHILE)
        .await;
    assert!(matches!(answer, Ok(Forwarded::NotThere(_))));
    // For a moment it is not tried again.
    let Ok(Forwarded::NotThere(why)) = forwarder
        .forward(&gone, &call("f"), Bytes::new(), A_WHILE)
        .await
    else {
        panic!("not there");
    };
    assert!(why.contains("a moment ago"), "{why}");
    // A home that took the request and closed without an answer may have run the call.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = socket.read(&mut buf).await;
    });
    let e = forwarder
        .forward(
            &node(&format!("http://{addr}")),
            &call("f"),
            Bytes::new(),
            A_WHILE,
        )
        .await
        .err()
        .expect("an error, not a fallback");
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("may have run there"), "{}", e.message);
    // So is a home that does not answer in time.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        tokio::time::sleep(A_WHILE).await;
        drop(socket);
    });
    let e = forwarder
        .forward(
            &node(&format!("http://{addr}")),
            &call("f"),
            Bytes::new(),
            Duration::from_millis(300),
        )
        .await
        .err()
        .expect("an error, not a fallback");
    assert!(
        e.message.contains("no answer within 300 ms"),
        "{}",
        e.message
    );
}

#[test]
fn a_log_crosses_as_its_tail() {
    let mut logs = Logs::default();
    for i in 0..100 {
        logs.push("stdout", format!("line {i} {}", "z".repeat(100)).as_bytes());
    }
    logs.push("stdout", "é".repeat(3000).as_bytes());
    let lines: Vec<Line> = serde_json::from_str(&log_tail_json(&logs)).unwrap();
    let text = |lines: &mut dyn Iterator<Item = &str>| {
        let mut t = String::new();
        for l in lines {
            t.push_str(l);
            t.push('\n');
        }
        t
    };
    let all = text(&mut logs.lines.iter().map(|l| l.message.as_str()));
    let carried = text(&mut lines.iter().map(|l| l.2.as_str()));
    assert!(carried.len() >= LOG_TAIL_BYTES && carried.len() < LOG_TAIL_BYTES + 8);
    assert!(all.ends_with(&carried));
    // A short log crosses whole.
    let mut short = Logs::default();
    short.push("INFO", b"one");
    let lines: Vec<Line> = serde_json::from_str(&log_tail_json(&short)).unwrap();
    assert_eq!((lines[0].1.as_str(), lines[0].2.as_str()), ("INFO", "one"));
}

/// A node of a two-node cluster in this process: its own stores, pool and router, served on
/// a socket, its membership in `cluster`, its calls forwarded over HTTP.
async fn member(id: &str, cluster: Arc<dyn store::ClusterStore>) -> (Harness, NodeRecord) {
    let h = with_f().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    h.platform
        .enable_membership(cluster, id, &address)
        .await
        .unwrap();
    h.platform
        .set_forwarder(Arc::new(HttpForwarder::new(TOKEN)));
    let app = h.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let node = NodeRecord {
        id: id.into(),
        address,
        started_at_ms: 0,
        last_seen_ms: 0,
    };
    (h, node)
}

/// The invoke API's answer on `h`: status, the headers a client reads, the body.
async fn invoke(h: &Harness) -> (StatusCode, HeaderMap, serde_json::Value) {
    let req = Request::post("/v1/functions/f/invocations")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from("{}"))
        .unwrap();
    let (status, headers, body) = send(h, req).await;
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or_default(),
    )
}

#[tokio::test]
async fn two_nodes_send_a_functions_calls_to_its_home_and_run_them_where_there_is_room() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster: Arc<dyn store::ClusterStore> = Arc::new(
        store::SqliteStore::open(&tmp.path().join("cluster"))
            .await
            .unwrap(),
    );
    let (a, a_node) = member("node-a", cluster.clone()).await;
    let (b, b_node) = member("node-b", cluster).await;
    // The second node joined after the first read the rows: wait for its next read.
    tokio::time::sleep(Duration::from_millis(limits::NODE_HEARTBEAT_MS + 500)).await;
    // `f` was deployed alike on both: one key, one home.
    let revision = a.platform.get_function("f").await.unwrap().revision;
    let key = platform::placement::key("f", "$LATEST", revision);
    let nodes = [a_node, b_node];
    let home_id = &platform::placement::home(&key, &nodes, |n| n.id.as_str())
        .unwrap()
        .id;
    let (home, other) = if *home_id == nodes[0].id {
        (&a, &b)
    } else {
        (&b, &a)
    };
    // A call to the other node runs on the home, and its client sees the home's record.
    let (status, headers, body) = invoke(other).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = headers[public::REQUEST_ID].to_str().unwrap().to_string();
    assert_eq!(body["request"], id.as_str());
    assert_eq!(headers[public::COLD_START], "true");
    assert!(headers.contains_key(public::INIT_DURATION_MS));
    assert_eq!(headers[public::VERSION], "$LATEST");
    assert!(
        home.platform.recent_invocation(&id).is_some(),
        "run on its home"
    );
    assert!(
        other.platform.recent_invocation(&id).is_none(),
        "counted once"
    );
    // The next finds the home's instance warm, wherever it arrives.
    for h in [other, home] {
        let (status, headers, _) = invoke(h).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[public::COLD_START], "false");
        let id = headers[public::REQUEST_ID].to_str().unwrap();
        assert!(home.platform.recent_invocation(id).is_some());
    }
    assert_eq!(other.platform.pool().instances_of("f"), 0);
    // With the home's one instance busy, the call runs where it arrived.
    let held = hold_f(home).await;
    let (status, headers, _) = invoke(other).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[public::COLD_START], "true");
    let id = headers[public::REQUEST_ID].to_str().unwrap();
    assert!(other.platform.recent_invocation(id).is_some(), "run here");
    held.finish(None, Logs::default());
}
