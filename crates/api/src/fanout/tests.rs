//! Merging without nodes: pages, cursors, statistics and usage as plain values.

use super::*;
use store::telemetry::{duration_bucket, quantile_ms};

#[derive(Clone, Debug, PartialEq)]
struct R {
    time: i64,
    seq: i64,
    node: String,
}

impl Row for R {
    fn time_ms(&self) -> i64 {
        self.time
    }
    fn seq(&self) -> i64 {
        self.seq
    }
    fn set_node(&mut self, node: &str) {
        self.node = node.into();
    }
}

/// A node's rows from `(time, seq)` pairs, newest first as a store answers.
fn page(node: &str, from: Position, rows: &[(i64, i64)], next: Option<i64>) -> NodePage<R> {
    NodePage {
        node: node.into(),
        from,
        rows: rows
            .iter()
            .map(|&(time, seq)| R {
                time,
                seq,
                node: String::new(),
            })
            .collect(),
        next,
    }
}

fn shown(m: &Merged<R>) -> Vec<(i64, &str, i64)> {
    m.rows
        .iter()
        .map(|r| (r.time, r.node.as_str(), r.seq))
        .collect()
}

#[test]
fn rows_are_newest_first_by_time_then_node_then_seq_and_limited() {
    let m = merge_pages(
        vec![
            page("b", Position::Start, &[(30, 9), (20, 8), (10, 7)], None),
            page("a", Position::Start, &[(20, 5), (20, 4), (5, 3)], None),
        ],
        &[],
        4,
    );
    assert_eq!(
        shown(&m),
        [(30, "b", 9), (20, "a", 5), (20, "a", 4), (20, "b", 8)]
    );
    let cursor = m.cursor.expect("more");
    assert_eq!(cursor.position("a"), Position::Before(4));
    assert_eq!(cursor.position("b"), Position::Before(8));
}

#[test]
fn paging_with_the_cursor_shows_every_row_once() {
    // Three nodes' whole histories; each "node" answers a page from a position as a store
    // does: its rows older than the position, `limit` at most, a cursor when full.
    let histories: Vec<(&str, Vec<(i64, i64)>)> = vec![
        ("n1", (1..=23).rev().map(|i| (i * 3, i)).collect()),
        ("n2", (1..=7).rev().map(|i| (i * 10, i)).collect()),
        ("n3", (1..=15).rev().map(|i| (i * 4 + 1, i)).collect()),
    ];
    let answer = |node: &str, position: Position, limit: usize| {
        let rows: Vec<(i64, i64)> = histories
            .iter()
            .find(|(n, _)| *n == node)
            .unwrap()
            .1
            .iter()
            .copied()
            .filter(|(_, seq)| match position {
                Position::Start => true,
                Position::Before(b) => *seq < b,
                Position::Done => false,
            })
            .take(limit)
            .collect();
        let next = (rows.len() == limit).then(|| rows.last().unwrap().1);
        page(node, position, &rows, next)
    };
    let limit = 4;
    let mut cursor = Cursor::default();
    let mut seen = Vec::new();
    for _ in 0..100 {
        let pages = ["n1", "n2", "n3"]
            .iter()
            .map(|n| answer(n, cursor.position(n), limit))
            .collect();
        let m = merge_pages(pages, &[], limit);
        seen.extend(m.rows.iter().map(|r| (r.time, r.node.clone(), r.seq)));
        match m.cursor {
            // Through the wire and back.
            Some(c) => cursor = Cursor::decode(&c.encode()).unwrap(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 23 + 7 + 15, "every row once");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
    assert_eq!(seen, sorted, "newest first across pages");
}

#[test]
fn a_node_with_more_than_it_fetched_ends_the_page_early() {
    // `a` scanned its bound and found one line; its older lines may be newer than `b`'s.
    let m = merge_pages(
        vec![
            page("a", Position::Start, &[(50, 100)], Some(90)),
            page("b", Position::Start, &[(40, 9), (30, 8)], None),
        ],
        &[],
        10,
    );
    assert_eq!(shown(&m), [(50, "a", 100)]);
    let c = m.cursor.unwrap();
    assert_eq!(
        (c.position("a"), c.position("b")),
        (Position::Before(90), Position::Start)
    );
}

#[test]
fn done_nodes_stay_done_and_the_last_page_has_no_cursor() {
    let m = merge_pages(
        vec![
            page("a", Position::Done, &[], None),
            page("b", Position::Before(5), &[(3, 4)], None),
        ],
        &[],
        10,
    );
    assert_eq!(shown(&m), [(3, "b", 4)]);
    assert!(m.cursor.is_none());
}

#[test]
fn an_unreachable_node_keeps_its_position_in_the_cursor() {
    let m = merge_pages(
        vec![page("a", Position::Start, &[(3, 2), (2, 1)], Some(1))],
        &[("b".into(), Position::Before(77))],
        2,
    );
    let c = m.cursor.unwrap();
    assert_eq!(c.position("b"), Position::Before(77));
    assert_eq!(c.position("a"), Position::Before(1));
    // Nothing more from the nodes that answered: no cursor, even with one out of reach.
    let m = merge_pages(
        vec![page("a", Position::Start, &[(3, 2)], None)],
        &[("b".into(), Position::Start)],
        2,
    );
    assert!(m.cursor.is_none());
}

#[test]
fn cursors_round_trip_and_numbers_still_work() {
    let mut c = Cursor::default();
    c.set("node-1", Position::Before(42));
    c.set("node-2", Position::Done);
    c.set("node-3", Position::Start);
    let text = c.encode();
    assert!(text.starts_with("c1."), "{text}");
    assert_eq!(
        parse_before(Some(&text)).unwrap(),
        Before::Cursor(c.clone())
    );
    assert_eq!(c.position("node-3"), Position::Start);
    assert_eq!(parse_before(Some("123")).unwrap(), Before::Seq(123));
    assert_eq!(parse_before(None).unwrap(), Before::Latest);
    assert_eq!(parse_before(Some("")).unwrap(), Before::Latest);
    for bad in ["c1.!!", "c2.e30", "yesterday", "c1.W10"] {
        assert!(parse_before(Some(bad)).is_err(), "{bad}");
    }
}

fn bucket(start_ms: i64, durations: &[f64], instances: u32) -> StatsBucket {
    let mut histogram: BTreeMap<i64, u64> = BTreeMap::new();
    for d in durations {
        *histogram.entry(duration_bucket(*d)).or_default() += 1;
    }
    StatsBucket {
        start_ms,
        invocations: durations.len() as u64,
        errors: 1,
        throttles: 0,
        retries: 0,
        cold_starts: 1,
        duration_sum_ms: durations.iter().sum(),
        histogram: histogram.into_iter().collect(),
        instances_max: instances,
    }
}

#[test]
fn merged_histograms_give_the_percentiles_of_all_the_calls() {
    // Durations spread unevenly: one node slow, one fast, one mixed.
    let all: Vec<f64> = (1..=600)
        .map(|i| (i * i % 997) as f64 / 7.0 + 0.5)
        .collect();
    let nodes: Vec<Vec<f64>> = vec![
        all.iter().copied().filter(|d| *d > 100.0).collect(),
        all.iter().copied().filter(|d| *d <= 20.0).collect(),
        all.iter()
            .copied()
            .filter(|d| *d > 20.0 && *d <= 100.0)
            .collect(),
    ];
    let merged = merge_stats(
        nodes
            .iter()
            .enumerate()
            .map(|(i, d)| vec![bucket(60_000, d, i as u32 + 1)])
            .collect(),
    );
    let one = bucket(60_000, &all, 0);
    assert_eq!(merged.len(), 1);
    let m = &merged[0];
    for q in [0.5, 0.95, 0.99] {
        assert_eq!(
            quantile_ms(&m.histogram, q),
            quantile_ms(&one.histogram, q),
            "p{q}"
        );
    }
    assert_eq!(m.invocations, 600);
    assert_eq!((m.errors, m.cold_starts), (3, 3));
    assert!((m.duration_sum_ms - one.duration_sum_ms).abs() < 1e-6);
    assert_eq!(m.instances_max, 1 + 2 + 3, "the nodes' peaks add");
}

#[test]
fn stats_steps_merge_by_start() {
    let merged = merge_stats(vec![
        vec![bucket(0, &[1.0], 1), bucket(120_000, &[2.0], 1)],
        vec![bucket(60_000, &[3.0], 2), bucket(120_000, &[4.0], 2)],
    ]);
    let steps: Vec<(i64, u64, u32)> = merged
        .iter()
        .map(|b| (b.start_ms, b.invocations, b.instances_max))
        .collect();
    assert_eq!(steps, [(0, 1, 1), (60_000, 1, 2), (120_000, 2, 3)]);
}

#[test]
fn usage_sums_are_exact() {
    let row = |key: &str, n: u64| UsageRow {
        key: key.into(),
        requests: n,
        billed_ms: n as i64 * 10,
        mb_ms: n as i64 * 1280,
        provisioned_instance_ms: 7,
        provisioned_mb_ms: 896,
    };
    let merged = merge_usage(vec![
        vec![row("f", 3), row("g", 1)],
        vec![row("f", 4)],
        vec![],
        vec![row("a", 2)],
    ]);
    assert_eq!(
        merged,
        [
            row("a", 2),
            UsageRow {
                provisioned_instance_ms: 14,
                provisioned_mb_ms: 1792,
                ..row("f", 7)
            },
            row("g", 1),
        ]
    );
}

#[test]
fn only_the_fanned_out_reads_take_the_node_key() {
    for path in [
        "/v1/functions/f/logs",
        "/functions/f/invocations",
        "/v1/functions/f/stats",
        "/v1/events",
        "/v1/usage",
        "/v1/invocations/abc",
    ] {
        assert!(node_readable(&Method::GET, path), "{path}");
    }
    for (method, path) in [
        (Method::POST, "/v1/functions/f/invocations"),
        (Method::GET, "/v1/functions/f"),
        (Method::GET, "/v1/functions"),
        (Method::GET, "/v1/keys"),
        (Method::DELETE, "/v1/functions/f/logs"),
        (Method::GET, "/v1/functions/f/logs/x"),
    ] {
        assert!(!node_readable(&method, path), "{method} {path}");
    }
}

// Three nodes in this process, each its own platform, store and telemetry, served on a
// socket of its own and registered in one shared membership store, plus a node that is
// registered alive but does not listen.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::tests::{Harness, TOKEN, harness};

const CODE: &str =
    "def handler(event, context):\n    print('ran', event.get('n'))\n    return event\n";

/// A node: `f` deployed, served on a free port, and registered as `id`.
async fn node(cluster: &Arc<dyn store::ClusterStore>, id: &str) -> Harness {
    let h = harness().await;
    let sha = h.upload(&[("main.py", CODE)]).await;
    let f = json!({"name": "f", "runtime": "python3", "handler": "main.handler",
        "code_sha256": sha});
    let (status, body) = h.call("POST", "/v1/functions", f.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    h.platform
        .enable_membership(cluster.clone(), id, &format!("http://{addr}"))
        .await
        .unwrap();
    let app = h.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    h
}

/// Registers `id` alive for the next minute at an address nothing answers on (`refuse`) or
/// where a connection is taken and never answered.
async fn phantom(cluster: &Arc<dyn store::ClusterStore>, id: &str, refuse: bool) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    if refuse {
        drop(listener);
    } else {
        // Held for the test's life: the kernel completes connections, nobody answers.
        std::mem::forget(listener);
    }
    let now = platform::now_ms();
    cluster
        .heartbeat(&NodeRecord {
            id: id.into(),
            address: format!("http://{addr}"),
            started_at_ms: now,
            last_seen_ms: now + 60_000,
        })
        .await
        .unwrap();
}

async fn get(h: &Harness, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = h
        .app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn nodes_of(rows: &Value) -> std::collections::BTreeSet<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_query_through_one_node_sees_every_node_and_names_the_ones_out_of_reach() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster: Arc<dyn store::ClusterStore> = Arc::new(
        store::SqliteStore::open(&tmp.path().join("cluster"))
            .await
            .unwrap(),
    );
    let nodes = [
        node(&cluster, "n1").await,
        node(&cluster, "n2").await,
        node(&cluster, "n3").await,
    ];
    phantom(&cluster, "n4-down", true).await;
    // Two calls on each node.
    for (i, h) in nodes.iter().enumerate() {
        for k in 0..2 {
            let uri = "/v1/functions/f/invocations";
            let (status, body) = h
                .call("POST", uri, json!({"n": i * 10 + k}).to_string())
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    // Every node's view holds the others once a beat has read them.
    let n1 = &nodes[0];
    for _ in 0..50 {
        if n1.platform.node_view().unwrap().others.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(n1.platform.node_view().unwrap().others.len(), 3);
    let auth = format!("Bearer {TOKEN}");
    let admin = [("authorization", auth.as_str())];
    let all: std::collections::BTreeSet<String> =
        ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();

    let (status, logs) = get(n1, "/v1/functions/f/logs", &admin).await;
    assert_eq!(status, StatusCode::OK, "{logs}");
    assert_eq!(logs["lines"].as_array().unwrap().len(), 6, "{logs}");
    assert_eq!(nodes_of(&logs["lines"]), all);
    assert_eq!(logs["unreachable_nodes"], json!(["n4-down"]));
    assert!(logs["next_before"].is_null() && logs["next_cursor"].is_null());
    let times: Vec<i64> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["time_ms"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );

    // Records, two at a time with the cursor: every call once.
    let mut seen = Vec::new();
    let mut uri = "/v1/functions/f/invocations?limit=2".to_string();
    loop {
        let (status, page) = get(n1, &uri, &admin).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["unreachable_nodes"], json!(["n4-down"]));
        for r in page["invocations"].as_array().unwrap() {
            seen.push((
                r["request_id"].as_str().unwrap().to_string(),
                r["node"].as_str().unwrap().to_string(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/functions/f/invocations?limit=2&before={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    let ids: std::collections::BTreeSet<&str> = seen.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(ids.len(), 6, "each once: {seen:?}");

    // Statistics and usage add up; percentiles come from all six durations.
    let (status, stats) = get(n1, "/v1/functions/f/stats?window=1h", &admin).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["totals"]["invocations"], 6, "{stats}");
    assert_eq!(stats["totals"]["cold_starts"], 3, "{stats}");
    assert!(stats["totals"]["duration_p99_ms"].as_f64().is_some());
    assert!(
        stats.get("steps").is_none(),
        "only node-scoped answers carry steps"
    );
    assert_eq!(stats["unreachable_nodes"], json!(["n4-down"]));
    let (status, usage) = get(n1, "/v1/usage", &admin).await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(usage["total"]["requests"], 6, "{usage}");
    assert_eq!(usage["rows"][0]["key"], "f");

    // A call n1 never saw is found on the node that ran it.
    let (id, _) = seen.iter().find(|(_, n)| n == "n3").unwrap();
    let (status, found) = get(n1, &format!("/v1/invocations/{id}"), &admin).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["request_id"], id.as_str(), "{found}");
    let (status, _) = get(n1, "/v1/invocations/nobody-ran-this", &admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Node-scoped, with the node key: this node's rows alone, and no key, no answer.
    let key = crate::node_key(TOKEN);
    let scoped = [
        ("x-nimbus-scope", "node"),
        ("x-nimbus-node-key", key.as_str()),
    ];
    let (status, own) = get(&nodes[1], "/v1/functions/f/invocations", &scoped).await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(nodes_of(&own["invocations"]), ["n2".to_string()].into());
    let (status, own) = get(&nodes[1], "/v1/functions/f/stats", &scoped).await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(own["totals"]["invocations"], 2);
    assert!(
        own["steps"].as_array().is_some_and(|s| !s.is_empty()),
        "{own}"
    );
    let wrong = crate::node_key("another cluster");
    let (status, _) = get(
        &nodes[1],
        "/v1/functions/f/logs",
        &[("x-nimbus-scope", "node"), ("x-nimbus-node-key", &wrong)],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The node key opens nothing else.
    let (status, _) = get(&nodes[1], "/v1/functions", &scoped).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A number as `before` is a cursor of the node asked, read there alone.
    let first = own_seq(&nodes[2], &scoped).await;
    let (status, page) = get(
        &nodes[2],
        &format!("/v1/functions/f/invocations?before={first}"),
        &admin,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(nodes_of(&page["invocations"]), ["n3".to_string()].into());
    assert_eq!(page["invocations"].as_array().unwrap().len(), 1);

    // A node that takes the connection and never answers is waited for at most the bound.
    phantom(&cluster, "n5-silent", false).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let asked = std::time::Instant::now();
    let (status, events) = get(n1, "/v1/events?limit=1000", &admin).await;
    let took = asked.elapsed();
    assert_eq!(status, StatusCode::OK, "{events}");
    assert_eq!(events["unreachable_nodes"], json!(["n4-down", "n5-silent"]));
    assert!(
        took >= PEER_TIMEOUT && took < PEER_TIMEOUT + std::time::Duration::from_secs(2),
        "{took:?}"
    );
    assert!(nodes_of(&events["events"]).len() == 3, "{events}");
    // Right after, neither is asked again: the next query does not wait for the silent one.
    let asked = std::time::Instant::now();
    let (status, events) = get(n1, "/v1/events?limit=1000", &admin).await;
    assert_eq!(status, StatusCode::OK, "{events}");
    assert_eq!(events["unreachable_nodes"], json!(["n4-down", "n5-silent"]));
    assert!(asked.elapsed() < PEER_TIMEOUT / 2, "{:?}", asked.elapsed());
    // Once the while is over, it is asked (and waited for) again.
    tokio::time::sleep(PEER_SKIPPED_FOR).await;
    let asked = std::time::Instant::now();
    let (_, events) = get(n1, "/v1/events?limit=1000", &admin).await;
    assert_eq!(events["unreachable_nodes"], json!(["n4-down", "n5-silent"]));
    assert!(asked.elapsed() >= PEER_TIMEOUT, "{:?}", asked.elapsed());
}

/// The `seq` of the newest record on `h`, node-scoped.
async fn own_seq(h: &Harness, scoped: &[(&str, &str)]) -> i64 {
    let (_, page) = get(h, "/v1/functions/f/invocations", scoped).await;
    page["invocations"][0]["seq"].as_i64().unwrap()
}
