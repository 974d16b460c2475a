//! The endpoint against a client on this process: the protocol's paths, stale ids,
//! oversize bodies, init errors and the uid check.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::*;
use crate::web::{HttpConnection, connect};

/// An answer's status, headers and body.
struct Answered {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Answered {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn send(
    conn: &mut HttpConnection,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answered {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1");
    for (n, v) in headers {
        request = request.header(*n, *v);
    }
    conn.ready().await.unwrap();
    let response = conn
        .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Answered {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn meta(request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "request_id": request_id,
        "deadline_ms": 1_700_000_000_000_i64,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }))
    .unwrap()
}

const NEXT: &str = "/2018-06-01/runtime/invocation/next";

fn port_of(api: &RuntimeApi) -> u16 {
    api.addr.port()
}

#[tokio::test]
async fn events_go_out_on_next_and_answers_come_back() {
    let api = Arc::new(RuntimeApi::bind(None, "arn:aws:lambda:r:1:function:f".into()).unwrap());
    let mut conn = connect(port_of(&api)).await.unwrap();
    let calling = {
        let api = api.clone();
        tokio::spawn(async move { api.call(&meta("req-1"), br#"{"n": 1}"#).await })
    };
    let next = send(&mut conn, "GET", NEXT, &[], vec![]).await;
    assert_eq!(next.status, 200);
    assert_eq!(&next.body[..], br#"{"n": 1}"#);
    let h = |name: &str| next.headers[name].to_str().unwrap().to_string();
    assert_eq!(h("lambda-runtime-aws-request-id"), "req-1");
    assert_eq!(h("lambda-runtime-deadline-ms"), "1700000000000");
    assert_eq!(
        h("lambda-runtime-invoked-function-arn"),
        "arn:aws:lambda:r:1:function:f"
    );
    assert_eq!(
        h("lambda-runtime-trace-id"),
        "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1"
    );
    assert!(next.headers.get("lambda-runtime-client-context").is_none());
    api.initialized().await.unwrap();

    // A stale id (no call has it) is refused as Lambda refuses it; the call goes on.
    let stale = send(
        &mut conn,
        "POST",
        "/2018-06-01/runtime/invocation/req-0/response",
        &[],
        b"1".to_vec(),
    )
    .await;
    assert_eq!(stale.status, 400);
    assert_eq!(
        stale.json(),
        json!({"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"})
    );
    let ok = send(
        &mut conn,
        "POST",
        "/2018-06-01/runtime/invocation/req-1/response",
        &[],
        br#"{"ok": true}"#.to_vec(),
    )
    .await;
    assert_eq!(ok.status, 202);
    match calling.await.unwrap() {
        Reply::Result { content_type, body } => {
            assert_eq!(&content_type[..], b"json");
            assert_eq!(&body[..], br#"{"ok": true}"#);
        }
        _ => panic!("expected a result"),
    }
    // Answered once: a second answer is stale.
    let again = send(
        &mut conn,
        "POST",
        "/2018-06-01/runtime/invocation/req-1/response",
        &[],
        b"2".to_vec(),
    )
    .await;
    assert_eq!(again.status, 400);

    // An error report becomes the call's function error, typed by its body or header.
    let calling = {
        let api = api.clone();
        tokio::spawn(async move { api.call(&meta("req-2"), b"{}").await })
    };
    let next = send(&mut conn, "GET", NEXT, &[], vec![]).await;
    assert_eq!(next.headers["lambda-runtime-aws-request-id"], "req-2");
    let err = send(
        &mut conn,
        "POST",
        "/2018-06-01/runtime/invocation/req-2/error",
        &[("lambda-runtime-function-error-type", "Custom.Header")],
        br#"{"errorMessage": "no", "stackTrace": ["a", "b"]}"#.to_vec(),
    )
    .await;
    assert_eq!(err.status, 202);
    match calling.await.unwrap() {
        Reply::Error(e) => {
            assert_eq!(e.error_type, "Custom.Header");
            assert_eq!(e.error_message, "no");
            assert_eq!(e.stack_trace, ["a", "b"]);
        }
        _ => panic!("expected an error"),
    }

    let unknown = send(&mut conn, "GET", "/2018-06-01/runtime/nope", &[], vec![]).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["errorType"], "NotFound");
}

#[tokio::test]
async fn a_response_past_the_payload_limit_is_413_and_fails_the_call() {
    let api = Arc::new(RuntimeApi::bind(None, String::new()).unwrap());
    let mut conn = connect(port_of(&api)).await.unwrap();
    let calling = {
        let api = api.clone();
        tokio::spawn(async move { api.call(&meta("big"), b"{}").await })
    };
    send(&mut conn, "GET", NEXT, &[], vec![]).await;
    let big = vec![b'x'; model::limits::PAYLOAD_BYTES_MAX + 1];
    let answer = send(
        &mut conn,
        "POST",
        "/2018-06-01/runtime/invocation/big/response",
        &[],
        big,
    )
    .await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.json()["errorType"], "RequestEntityTooLarge");
    match calling.await.unwrap() {
        Reply::Error(e) => assert_eq!(e.error_type, "Function.ResponseSizeTooLarge"),
        _ => panic!("expected an error"),
    }

    // Exactly the limit is a result, on the same connection: the 413 left it open.
    let calling = {
        let api = api.clone();
        tokio::spawn(async move { api.call(&meta("fits"), b"{}").await })
    };
    send(&mut conn, "GET", NEXT, &[], vec![]).await;
    let fits = vec![b'x'; model::limits::PAYLOAD_BYTES_MAX];
    let answer = send(
        &mut conn,
        "POST",
        "/2018-06-01/runtime/invocation/fits/response",
        &[],
        fits,
    )
    .await;
    assert_eq!(answer.status, 202);
    match calling.await.unwrap() {
        Reply::Result { content_type, body } => {
            assert_eq!(&content_type[..], b"bytes");
            assert_eq!(body.len(), model::limits::PAYLOAD_BYTES_MAX);
        }
        _ => panic!("expected a result"),
    }
}

#[tokio::test]
async fn an_init_error_fails_the_start() {
    let api = RuntimeApi::bind(None, String::new()).unwrap();
    let mut conn = connect(port_of(&api)).await.unwrap();
    let answer = send(
        &mut conn,
        "POST",
        "/2018-06-01/runtime/init/error",
        &[(
            "lambda-runtime-function-error-type",
            "Runtime.ImportModuleError",
        )],
        br#"{"errorMessage": "No module named 'app'"}"#.to_vec(),
    )
    .await;
    assert_eq!(answer.status, 202);
    let e = api.initialized().await.unwrap_err();
    assert_eq!(e.error_type, "Runtime.ImportModuleError");
    assert_eq!(e.error_message, "No module named 'app'");
}

#[tokio::test]
async fn sockets_of_another_uid_are_refused() {
    let me = rustix::process::geteuid().as_raw();
    let other = RuntimeApi::bind(Some(me.wrapping_add(4242)), String::new()).unwrap();
    let refused = match connect(port_of(&other)).await {
        Err(_) => true,
        Ok(mut conn) => {
            let request = hyper::Request::builder()
                .uri(NEXT)
                .header("host", "x")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let sent = async {
                conn.ready().await?;
                conn.send_request(request).await
            };
            match tokio::time::timeout(Duration::from_secs(5), sent).await {
                Ok(result) => result.is_err(),
                Err(_) => panic!("a refused connection must be closed, not left hanging"),
            }
        }
    };
    assert!(refused, "a socket of another uid got an answer");

    // Its own uid is served.
    let own = Arc::new(RuntimeApi::bind(Some(me), String::new()).unwrap());
    let mut conn = connect(port_of(&own)).await.unwrap();
    let calling = {
        let own = own.clone();
        tokio::spawn(async move { own.call(&meta("mine"), b"1").await })
    };
    let next = send(&mut conn, "GET", NEXT, &[], vec![]).await;
    assert_eq!(next.status, 200);
    send(
        &mut conn,
        "POST",
        "/2018-06-01/runtime/invocation/mine/response",
        &[],
        b"2".to_vec(),
    )
    .await;
    assert!(matches!(calling.await.unwrap(), Reply::Result { .. }));
}

#[test]
fn the_socket_table_names_the_peers_uid() {
    let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A5E1 0100007F:8F2B 01 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:8F2B 0100007F:A5E1 01 00000000:00000000 00:00000000 00000000  1234        0 2 1
";
    let peer: SocketAddr = "127.0.0.1:36651".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:42465".parse().unwrap();
    assert_eq!(uid_in_table(table, peer, local), Some(1234));
    assert_eq!(uid_in_table(table, local, peer), Some(0));
    let stranger: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert_eq!(uid_in_table(table, stranger, local), None);
}

#[test]
fn trace_ids_are_xrays_form_of_the_traceparent() {
    assert_eq!(
        xray_trace_id(Some(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        )),
        "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=0"
    );
    let fresh = xray_trace_id(None);
    assert!(
        fresh.starts_with("Root=1-") && fresh.ends_with(";Sampled=0"),
        "{fresh}"
    );
    assert_eq!(fresh.len(), xray_trace_id(Some("garbage")).len());
}
