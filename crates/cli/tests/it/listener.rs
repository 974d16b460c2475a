//! The listener under abuse, black-box: idle floods, slowloris clients and stalled bodies
//! against the real server, while a normal client keeps getting answers.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Server, python_project};

/// Raises this test process's file limit to its hard limit: thousands of sockets.
fn raise_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).expect("raising the file limit");
}

fn addr(server: &Server) -> String {
    server.endpoint.trim_start_matches("http://").to_string()
}

/// `GET /healthz` on a new connection; its status and how long it took.
async fn health(server: &Server) -> (StatusCode, Duration) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    let status = client
        .get(server.url("/healthz"))
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (status, started.elapsed())
}

/// Whether the server closed `stream` (a read ends or fails) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A response (408, say) before the close is fine: read on.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn idle_floods_and_slowloris_clients_do_not_lock_out_a_client() {
    raise_file_limit();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        tmp.path(),
        &[
            "--connections-max",
            "1000",
            "--header-read-timeout-ms",
            "3000",
        ],
        &[],
    );
    let addr = addr(&server);

    // A slowloris client: a header line every 400 ms, never the end of the header.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            if slow
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return (true, i);
            }
        }
        let closed = closed_within(&mut slow, Duration::from_secs(2)).await;
        (closed, 20)
    });

    // 5,000 idle connections, five times the cap: the oldest idle ones make room.
    let mut idle = Vec::with_capacity(5_000);
    for _ in 0..5_000 {
        match TcpStream::connect(&addr).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connecting an idle socket: {e}"),
        }
    }
    // A normal client is answered promptly, on a new connection each time.
    for _ in 0..20 {
        let (status, took) = health(&server).await;
        assert_eq!(status, StatusCode::OK);
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
    // Most of the idle flood was closed by the server to admit newer connections.
    let mut closed = 0;
    for s in idle.iter_mut().take(3_000) {
        if closed_within(s, Duration::from_millis(1)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 2_500,
        "{closed} of the oldest 3,000 idle sockets closed"
    );

    // The slowloris header was cut off at the header timeout, not held for minutes.
    let (cut, lines) = trickle.await.unwrap();
    assert!(
        cut,
        "the trickled header was still open after {lines} lines"
    );
    assert!(
        lines < 10,
        "cut after {lines} lines (0.4 s each), not about 5"
    );
    drop(idle);
    let (status, _) = health(&server).await;
    assert_eq!(status, StatusCode::OK);
}

/// The server's resident memory in KB.
fn rss_kb(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn stalled_large_bodies_are_bounded_and_slow_bodies_cut_off() {
    raise_file_limit();
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &tmp.path().join("data"),
        &[
            "--body-budget-mb",
            "16",
            "--body-grace-ms",
            "1000",
            "--body-min-rate-bytes-per-s",
            "10000",
        ],
        &[],
    );
    let dir = python_project(
        tmp.path(),
        "sink",
        3000,
        "def handler(event, context):\n    return {'size': len(event.get('body') or '')}\n",
    );
    std::fs::write(
        dir.join("nimbus.yaml"),
        "functions:\n  sink:\n    runtime: python3\n    handler: main.handler\n    triggers:\n      - http: {path: /sink, methods: [POST], auth: anonymous}\n",
    )
    .unwrap();
    server.deploy(&dir).await;
    let addr = addr(&server);
    let before_kb = rss_kb(&server);

    // 150 uploads that announce 6 MB, send 1 MB and stall.
    let chunk = vec![b'a'; 1024 * 1024];
    let mut stalled = Vec::new();
    let mut refused = 0;
    for _ in 0..150 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: 6291456\r\n\r\n")
            .await
            .unwrap();
        // A refusal comes at once: the budget is checked before the body is read.
        let _ = tokio::time::timeout(Duration::from_millis(200), s.write_all(&chunk)).await;
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await
            && String::from_utf8_lossy(&buf[..n]).contains(" 503 ")
        {
            refused += 1;
        }
        stalled.push(s);
    }
    let during_kb = rss_kb(&server);
    assert!(
        refused >= 140,
        "{refused} of 150 stalled uploads refused at once"
    );
    assert!(
        during_kb < before_kb + 64 * 1024,
        "RSS grew from {before_kb} KB to {during_kb} KB"
    );
    // Requests without a body are still answered; a body is told to come back.
    let (status, _) = health(&server).await;
    assert_eq!(status, StatusCode::OK);

    // The stalled bodies fall below the minimum rate and are cut off (their budget
    // returns); then uploads are taken again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let res = server
        .http
        .post(server.url("/sink"))
        .body(vec![b'b'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(stalled);

    // A body trickled a byte at a time is answered 408 once past the grace.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    for _ in 0..40 {
        if s.write_all(b"z").await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
        {
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || !answer.is_empty() {
                break;
            }
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains(" 408 "), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
}
