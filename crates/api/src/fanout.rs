//! Telemetry queries across a cluster: the node a client asks answers from its own store
//! and asks every other live node the same query scoped to that node alone
//! (`x-nimbus-scope: node`), then merges the answers.
//!
//! Telemetry stays where it was recorded, in each node's own store (`store::telemetry`):
//! the node that ran a call has its record and its logs. So logs, lifecycle events,
//! invocation records, statistics, usage and an invocation by its request id are read from
//! every node. A peer gets `PEER_TIMEOUT` to answer at most `PEER_ANSWER_BYTES_MAX` bytes;
//! one that fails is named in the answer's `unreachable_nodes`, and the answer is still
//! what the others said. On a node without live peers nothing is asked.
//!
//! Pages go on across nodes with a cursor (`c1.` and base64 of each node's position in
//! its own newest-first order, `Cursor`): a page is a k-way merge of the nodes' pages that
//! takes a prefix of each node's rows, so the next page asks every node from where its
//! rows stopped and no row is shown twice or skipped.
//!
//! Invariant: a node-scoped query never fans out. Only a query without the scope header
//! asks other nodes, and it asks them with it; so nodes whose views of the cluster differ
//! can never pass a query around in a loop.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use model::limits;
use serde::de::DeserializeOwned;
use store::NodeRecord;
use store::telemetry::{StatsBucket, UsageRow};

use crate::ApiError;

/// The header that scopes a query to the node that receives it.
pub const SCOPE: &str = "x-nimbus-scope";

/// How long a peer has to answer a query, connection included: a dead node is counted
/// dead only after `NODE_DEAD_AFTER_MS`, and a query should not wait for it until then.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// The most a peer's answer may hold. A page is at most 1,000 lines, records or events;
/// log lines are the large ones (a call keeps at most 256 KB of them), so a page of lines
/// of few calls fits, and a peer answering more is counted unreachable, not buffered.
pub const PEER_ANSWER_BYTES_MAX: usize = 32 << 20;

/// After a node failed to answer (no connection, or nothing within `PEER_TIMEOUT`),
/// queries count it unreachable without asking it for this long: membership counts a dead
/// node dead only after `NODE_DEAD_AFTER_MS`, and each query should not wait for it till
/// then.
pub const PEER_SKIPPED_FOR: Duration = Duration::from_secs(2);

/// What a cursor across nodes starts with: its format's version.
const CURSOR_PREFIX: &str = "c1.";

/// Whether a request is scoped to the node that receives it.
pub fn node_scoped(headers: &HeaderMap) -> bool {
    headers.get(SCOPE).is_some_and(|v| v == "node")
}

/// Whether the node key opens `method path` (a path under `/v1`, with or without that
/// prefix): the node-scoped reads other nodes fan out, and nothing else.
pub(crate) fn node_readable(method: &Method, path: &str) -> bool {
    if method != Method::GET {
        return false;
    }
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        segments[..],
        ["events"]
            | ["usage"]
            | ["invocations", _]
            | ["functions", _, "logs" | "invocations" | "stats"]
    )
}

/// Where one node's rows of a paged query go on from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// Its newest rows.
    Start,
    /// Its rows older than this cursor of its own (a `seq`).
    Before(i64),
    /// It has nothing more.
    Done,
}

/// Each node's position: the `next_cursor` of a page merged from several nodes. A node it
/// does not name starts from its newest rows (one that joined since the first page).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<String, Option<i64>>);

impl Cursor {
    pub fn position(&self, node: &str) -> Position {
        match self.0.get(node) {
            None => Position::Start,
            Some(Some(seq)) => Position::Before(*seq),
            Some(None) => Position::Done,
        }
    }

    fn set(&mut self, node: &str, position: Position) {
        match position {
            Position::Start => self.0.remove(node),
            Position::Before(seq) => self.0.insert(node.to_string(), Some(seq)),
            Position::Done => self.0.insert(node.to_string(), None),
        };
    }

    /// The nodes it names.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// `c1.` and the URL-safe base64 of `{"node": seq or null}`.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(&self.0).expect("a map of numbers serializes");
        format!(
            "{CURSOR_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let b64 = text.strip_prefix(CURSOR_PREFIX)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .ok()?;
        serde_json::from_slice(&json).ok().map(Cursor)
    }
}

/// A query's `before`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Before {
    /// The newest rows.
    Latest,
    /// A number: a cursor of the node asked, read on that node alone (as before clusters).
    Seq(i64),
    /// A cursor across nodes.
    Cursor(Cursor),
}

pub fn parse_before(value: Option<&str>) -> Result<Before, ApiError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(Before::Latest);
    };
    if let Ok(seq) = v.parse::<i64>() {
        return Ok(Before::Seq(seq));
    }
    Cursor::decode(v).map(Before::Cursor).ok_or_else(|| {
        ApiError::invalid(format!(
            "`before`: `{v}` is not a cursor; pass a page's `next_cursor` (or a number)"
        ))
    })
}

/// Who answers a paged query.
pub(crate) enum Scope {
    /// This node alone (node-scoped, a single node, or a numeric `before`), from `before`.
    Node { before: Option<i64> },
    /// Every live node, merged.
    Cluster(Cluster),
}

/// The nodes a query across the cluster reads, and where each goes on from.
pub(crate) struct Cluster {
    pub this: String,
    /// The other live nodes.
    pub others: Vec<NodeRecord>,
    pub cursor: Cursor,
}

/// Decides who answers a paged query with `before` received with `headers`.
pub(crate) fn scope(
    view: Option<platform::membership::NodeView>,
    headers: &HeaderMap,
    before: Option<&str>,
) -> Result<Scope, ApiError> {
    let before = parse_before(before)?;
    if node_scoped(headers) {
        return match before {
            Before::Latest => Ok(Scope::Node { before: None }),
            Before::Seq(seq) => Ok(Scope::Node { before: Some(seq) }),
            Before::Cursor(_) => Err(ApiError::invalid(
                "`before`: a node-scoped query takes the node's own cursor, a number",
            )),
        };
    }
    match (before, view) {
        (Before::Seq(seq), _) => Ok(Scope::Node { before: Some(seq) }),
        (Before::Latest, None) => Ok(Scope::Node { before: None }),
        (Before::Latest, Some(v)) if v.others.is_empty() => Ok(Scope::Node { before: None }),
        // A cursor from a node without membership (tests, `nimbus local`) names only ''.
        (Before::Cursor(cursor), None) => Ok(Scope::Cluster(Cluster {
            this: String::new(),
            others: Vec::new(),
            cursor,
        })),
        (Before::Latest, Some(v)) => Ok(Scope::Cluster(Cluster {
            this: v.this,
            others: v.others,
            cursor: Cursor::default(),
        })),
        (Before::Cursor(cursor), Some(v)) => Ok(Scope::Cluster(Cluster {
            this: v.this,
            others: v.others,
            cursor,
        })),
    }
}

/// A row of a paged query, as merging needs it.
pub trait Row {
    /// When it happened: pages are newest first by it.
    fn time_ms(&self) -> i64;
    /// Its cursor on the node that has it.
    fn seq(&self) -> i64;
    /// Names the node that recorded it.
    fn set_node(&mut self, node: &str);
}

/// One node's page of a paged query.
#[derive(Debug)]
pub struct NodePage<R> {
    pub node: String,
    /// Where it was asked from.
    pub from: Position,
    /// Newest first, in the node's own order.
    pub rows: Vec<R>,
    /// Its cursor for more, `None` when it has no more.
    pub next: Option<i64>,
}

/// A page merged from several nodes.
#[derive(Debug)]
pub struct Merged<R> {
    pub rows: Vec<R>,
    /// Where each node goes on from; `None` when no node has more.
    pub cursor: Option<Cursor>,
}

/// Merges the nodes' pages into one of at most `limit` rows, newest first (by time, then
/// node id, then the node's own cursor), each row named by its node. `unreachable` are the
/// nodes that did not answer, with the position they were asked from, which the cursor
/// keeps for them.
///
/// It is a k-way merge that takes a prefix of each node's rows, so the cursor can say
/// where each node stops. A node whose fetched rows are all taken but that has more (a
/// log query stops scanning after a bound, with fewer lines than asked) may hold the next
/// row: the page ends there, shorter than `limit`, as a node's own log page can.
pub fn merge_pages<R: Row>(
    mut pages: Vec<NodePage<R>>,
    unreachable: &[(String, Position)],
    limit: usize,
) -> Merged<R> {
    let mut taken = vec![0usize; pages.len()];
    let mut order = Vec::new();
    // Smaller is newer: later time, then the smaller node id, then the larger cursor.
    let key = |pages: &[NodePage<R>], taken: &[usize], i: usize| {
        let row = &pages[i].rows[taken[i]];
        (
            std::cmp::Reverse(row.time_ms()),
            pages[i].node.clone(),
            std::cmp::Reverse(row.seq()),
        )
    };
    while order.len() < limit {
        let mut best: Option<usize> = None;
        let mut blocked = false;
        for (i, page) in pages.iter().enumerate() {
            if taken[i] == page.rows.len() {
                blocked |= page.next.is_some();
                continue;
            }
            if best.is_none_or(|b| key(&pages, &taken, i) < key(&pages, &taken, b)) {
                best = Some(i);
            }
        }
        match best {
            Some(b) if !blocked => {
                order.push(b);
                taken[b] += 1;
            }
            _ => break,
        }
    }
    let mut cursor = Cursor::default();
    let mut more = false;
    for (i, page) in pages.iter().enumerate() {
        let position = if taken[i] == page.rows.len() {
            page.next.map_or(Position::Done, Position::Before)
        } else if taken[i] == 0 {
            page.from
        } else {
            Position::Before(page.rows[taken[i] - 1].seq())
        };
        more |= position != Position::Done;
        cursor.set(&page.node, position);
    }
    for (node, position) in unreachable {
        cursor.set(node, *position);
    }
    // Rows in merge order: each node's taken rows are a prefix of its page.
    let mut iters: Vec<_> = pages
        .iter_mut()
        .map(|p| std::mem::take(&mut p.rows).into_iter())
        .collect();
    let rows = order
        .into_iter()
        .map(|i| {
            let mut row = iters[i].next().expect("a taken row is there");
            row.set_node(&pages[i].node);
            row
        })
        .collect();
    Merged {
        rows,
        cursor: more.then_some(cursor),
    }
}

/// The statistics of several nodes as one node's would be: per step, counts and sums
/// add, duration histograms add bucket by bucket (so percentiles read off them are those
/// of all the calls), and the peaks of instances add (an upper bound of the cluster's
/// peak: the nodes' peaks need not have been at the same second).
pub fn merge_stats(nodes: Vec<Vec<StatsBucket>>) -> Vec<StatsBucket> {
    let mut steps: BTreeMap<i64, (StatsBucket, BTreeMap<i64, u64>)> = BTreeMap::new();
    for b in nodes.into_iter().flatten() {
        let (m, histogram) = steps.entry(b.start_ms).or_insert_with(|| {
            (
                StatsBucket {
                    start_ms: b.start_ms,
                    ..Default::default()
                },
                BTreeMap::new(),
            )
        });
        m.invocations += b.invocations;
        m.errors += b.errors;
        m.throttles += b.throttles;
        m.retries += b.retries;
        m.cold_starts += b.cold_starts;
        m.duration_sum_ms += b.duration_sum_ms;
        m.instances_max += b.instances_max;
        for (bucket, count) in b.histogram {
            *histogram.entry(bucket).or_default() += count;
        }
    }
    steps
        .into_values()
        .map(|(mut m, histogram)| {
            m.histogram = histogram.into_iter().collect();
            m
        })
        .collect()
}

/// Several nodes' usage as one: every figure adds, group by group, ordered by key as one
/// node orders it.
pub fn merge_usage(nodes: Vec<Vec<UsageRow>>) -> Vec<UsageRow> {
    let mut groups: BTreeMap<String, UsageRow> = BTreeMap::new();
    for r in nodes.into_iter().flatten() {
        let m = groups.entry(r.key.clone()).or_insert_with(|| UsageRow {
            key: r.key.clone(),
            ..Default::default()
        });
        m.requests += r.requests;
        m.billed_ms += r.billed_ms;
        m.mb_ms += r.mb_ms;
        m.provisioned_instance_ms += r.provisioned_instance_ms;
        m.provisioned_mb_ms += r.provisioned_mb_ms;
    }
    groups.into_values().collect()
}

/// The client that asks other nodes: a pool of kept-alive connections, presenting the
/// node key.
pub struct Fanout {
    client: Client<HttpConnector, Empty<Bytes>>,
    key: HeaderValue,
    /// Nodes that failed to answer lately, and until when they are not asked.
    skipped: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// One node's answer: its status and body, or why there was none.
pub struct Reply {
    pub node: String,
    pub answer: Result<(StatusCode, Bytes), String>,
}

impl Fanout {
    /// A client presenting the node key of the cluster whose admin token is `token`.
    pub fn new(token: &str) -> Fanout {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(
            limits::FORWARD_CONNECT_TIMEOUT_MS,
        )));
        connector.set_nodelay(true);
        Fanout {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector),
            key: HeaderValue::try_from(crate::node_key(token))
                .expect("hex is a valid header value"),
            skipped: Default::default(),
        }
    }

    /// GETs each `(node, path and query)` node-scoped, all at once, each within
    /// `PEER_TIMEOUT`.
    pub async fn ask(&self, asks: Vec<(NodeRecord, String)>) -> Vec<Reply> {
        let asks = asks.into_iter().map(|(node, path)| async move {
            let now = std::time::Instant::now();
            let skipped = {
                let mut skipped = self.skipped.lock().unwrap();
                skipped.retain(|_, until| *until > now);
                skipped.contains_key(&node.id)
            };
            if skipped {
                return Reply {
                    node: node.id,
                    answer: Err(format!(
                        "it did not answer a query less than {} ms ago",
                        PEER_SKIPPED_FOR.as_millis()
                    )),
                };
            }
            let (answer, unreachable) =
                match tokio::time::timeout(PEER_TIMEOUT, self.get(&node, &path)).await {
                    Ok(Ok(answer)) => (Ok(answer), false),
                    Ok(Err((why, connect))) => (Err(why), connect),
                    Err(_) => (
                        Err(format!("no answer within {} ms", PEER_TIMEOUT.as_millis())),
                        true,
                    ),
                };
            if unreachable {
                self.skipped.lock().unwrap().insert(
                    node.id.clone(),
                    std::time::Instant::now() + PEER_SKIPPED_FOR,
                );
            }
            Reply {
                node: node.id,
                answer,
            }
        });
        futures_util::future::join_all(asks).await
    }

    /// The node's answer, or why there is none and whether no connection was made.
    async fn get(
        &self,
        node: &NodeRecord,
        path: &str,
    ) -> Result<(StatusCode, Bytes), (String, bool)> {
        let uri = format!("{}{path}", node.address.trim_end_matches('/'));
        let mut req = hyper::Request::get(uri)
            .body(Empty::new())
            .map_err(|e| (format!("its address is not a URL: {e}"), false))?;
        let h = req.headers_mut();
        h.insert(crate::forward::headers::KEY, self.key.clone());
        h.insert(SCOPE, HeaderValue::from_static("node"));
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| (e.to_string(), e.is_connect()))?;
        let (parts, body) = res.into_parts();
        let body = Limited::new(body, PEER_ANSWER_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| (format!("reading the answer: {e}"), false))?
            .to_bytes();
        Ok((parts.status, body))
    }

    /// Asks each node and reads its 200 as `T`; the nodes that gave none, each logged.
    pub async fn gather<T: DeserializeOwned>(
        &self,
        asks: Vec<(NodeRecord, String)>,
    ) -> (Vec<(String, T)>, Vec<String>) {
        let mut answers = Vec::new();
        let mut failed = Vec::new();
        for reply in self.ask(asks).await {
            match parse(reply.answer) {
                Ok(t) => answers.push((reply.node, t)),
                Err(why) => {
                    tracing::warn!(node = %reply.node, %why, "a node did not answer a telemetry query");
                    failed.push(reply.node);
                }
            }
        }
        (answers, failed)
    }
}

fn parse<T: DeserializeOwned>(answer: Result<(StatusCode, Bytes), String>) -> Result<T, String> {
    let (status, body) = answer?;
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("status {status}: {text}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("an answer of another shape: {e}"))
}

/// `path` with `query` (any `Serialize` struct; `None`s are left out).
pub(crate) fn uri<Q: serde::Serialize>(path: &str, query: &Q) -> String {
    match serde_urlencoded::to_string(query) {
        Ok(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    }
}

/// Reads a paged query across `cluster`: this node's page (from `local`, given its
/// position) and each other node's (`peer_uri` of its position, its answer read by
/// `rows_of`), merged into at most `limit` rows. Nodes whose position is `Done` are not
/// asked. Answers the merged page and the nodes that did not answer.
pub(crate) async fn page<R, P, L, Fut>(
    fanout: &Fanout,
    cluster: &Cluster,
    limit: u32,
    local: L,
    peer_uri: impl Fn(Option<i64>) -> String,
    mut rows_of: impl FnMut(P) -> (Vec<R>, Option<i64>),
) -> Result<(Merged<R>, Vec<String>), ApiError>
where
    R: Row,
    P: DeserializeOwned,
    L: FnOnce(Option<i64>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<R>, Option<i64>), ApiError>>,
{
    let before = |p: Position| match p {
        Position::Before(seq) => Some(seq),
        _ => None,
    };
    let mut pages = Vec::new();
    let mut asks = Vec::new();
    let mut from = BTreeMap::new();
    for node in &cluster.others {
        let position = cluster.cursor.position(&node.id);
        from.insert(node.id.clone(), position);
        if position == Position::Done {
            pages.push(done_page(&node.id));
        } else {
            asks.push((node.clone(), peer_uri(before(position))));
        }
    }
    let mine = cluster.cursor.position(&cluster.this);
    let local = async {
        if mine == Position::Done {
            Ok((Vec::new(), None))
        } else {
            local(before(mine)).await
        }
    };
    let (local, (answers, failed)) = tokio::join!(local, fanout.gather::<P>(asks));
    let (rows, next) = local?;
    pages.push(NodePage {
        node: cluster.this.clone(),
        from: mine,
        rows,
        next,
    });
    for (node, answer) in answers {
        let (rows, next) = rows_of(answer);
        pages.push(NodePage {
            from: from[&node],
            node,
            rows,
            next,
        });
    }
    // Nodes the cursor names that are not alive now: their rows are out of reach too.
    let mut unreachable: Vec<(String, Position)> =
        failed.into_iter().map(|n| (n.clone(), from[&n])).collect();
    for node in cluster.cursor.nodes() {
        let known = node == cluster.this || from.contains_key(node);
        let position = cluster.cursor.position(node);
        if !known && position != Position::Done {
            unreachable.push((node.to_string(), position));
        }
    }
    let merged = merge_pages(pages, &unreachable, limit as usize);
    let mut names: Vec<String> = unreachable.into_iter().map(|(n, _)| n).collect();
    names.sort();
    Ok((merged, names))
}

fn done_page<R>(node: &str) -> NodePage<R> {
    NodePage {
        node: node.to_string(),
        from: Position::Done,
        rows: Vec::new(),
        next: None,
    }
}

#[cfg(test)]
mod tests;
