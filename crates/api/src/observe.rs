//! Handlers that show what happened: function logs (queried and followed live over
//! server-sent events), lifecycle events, invocation records, statistics, usage with an
//! estimated cost, and the Prometheus metrics.
//!
//! Each query first waits for the recorder to write what is queued, so a caller sees the
//! calls it made just before. In a cluster every query but a followed log asks the other
//! live nodes too and merges their answers (`crate::fanout`); rows name their `node`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;

use crate::extract::{Path, Query};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use model::limits;
use serde::{Deserialize, Serialize};
use store::telemetry::{self, EventQuery, LogQuery, LogRow, RecordQuery, UsageBy};
use utoipa::{IntoParams, ToSchema};

use crate::fanout::{self, Row, Scope};
use crate::{ApiError, AppState};
use platform::now_ms;

/// Prices of the usage estimate, per unit, in any one currency.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct Prices {
    pub per_million_requests: f64,
    pub per_gb_second: f64,
    pub per_provisioned_gb_second: f64,
}

impl Default for Prices {
    /// AWS Lambda's list prices (x86, us-east-1), so estimates compare with a known bill.
    fn default() -> Self {
        Prices {
            per_million_requests: 0.20,
            per_gb_second: 0.000_016_666_7,
            per_provisioned_gb_second: 0.000_004_166_7,
        }
    }
}

/// A time in a query: Unix milliseconds, an RFC 3339 time, or a duration before now (`15m`,
/// `2h`, `7d`).
fn parse_time(field: &str, value: &str, now: i64) -> Result<i64, ApiError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(d) = humantime::parse_duration(value) {
        return Ok(now - d.as_millis() as i64);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(value) {
        let ms = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        return Ok(ms);
    }
    Err(ApiError::invalid(format!(
        "`{field}`: `{value}` is not a time; give a duration before now (15m, 2h, 7d), an \
         RFC 3339 time (2026-12-01T10:00:00Z) or Unix milliseconds"
    )))
}

/// The `since` and `until` of a query, as Unix milliseconds.
fn time_range(
    since: Option<&str>,
    until: Option<&str>,
) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let now = now_ms();
    // `?until=` (empty) is the same as leaving it out, as forms and scripts send it.
    fn given(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    let since = given(since)
        .map(|v| parse_time("since", v, now))
        .transpose()?;
    let until = given(until)
        .map(|v| parse_time("until", v, now))
        .transpose()?;
    Ok((since, until))
}

/// The cursor of the next page: the last row's, when the page is full.
fn next_cursor(seqs: impl ExactSizeIterator<Item = i64>, limit: u32) -> Option<i64> {
    let full = seqs.len() as u32 == limit;
    seqs.last().filter(|_| full)
}

fn parse_duration_ms(field: &str, value: &str) -> Result<i64, ApiError> {
    humantime::parse_duration(value)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| {
            ApiError::invalid(format!(
                "`{field}`: `{value}` is not a duration; use e.g. 30s, 1m, 1h"
            ))
        })
}

fn parse_level(level: Option<&str>) -> Result<i32, ApiError> {
    match level.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") => Ok(0),
        Some(
            l @ ("trace" | "debug" | "info" | "warn" | "warning" | "error" | "fatal" | "critical"
            | "stdout" | "stderr"),
        ) => Ok(telemetry::severity_of(l)),
        Some(other) => Err(ApiError::invalid(format!(
            "`level`: `{other}` is not a level; use debug, info, warn, error or fatal"
        ))),
    }
}

fn check_regex(regex: Option<&str>) -> Result<Option<regex::Regex>, ApiError> {
    let Some(r) = regex else { return Ok(None) };
    if r.len() > limits::LOG_REGEX_BYTES_MAX {
        return Err(ApiError::invalid(format!(
            "`regex` is {} bytes; the limit is {}",
            r.len(),
            limits::LOG_REGEX_BYTES_MAX
        )));
    }
    regex::Regex::new(r)
        .map(Some)
        .map_err(|e| ApiError::invalid(format!("`regex` is not a valid regular expression: {e}")))
}

fn page_limit(limit: Option<u32>) -> u32 {
    limit.unwrap_or(100).clamp(1, limits::TELEMETRY_PAGE_MAX)
}

#[derive(Clone, Debug, Deserialize, Serialize, IntoParams)]
pub struct LogsQuery {
    /// From this time: `15m` (before now), RFC 3339, or Unix ms.
    pub since: Option<String>,
    /// Before this time, in the same forms.
    pub until: Option<String>,
    /// This level and above: debug, info, warn, error, fatal (stdout counts as info,
    /// stderr as error).
    pub level: Option<String>,
    /// Lines containing this text (case-sensitive).
    pub q: Option<String>,
    /// Lines matching this regular expression (Rust regex syntax; `(?i)` for any case).
    pub regex: Option<String>,
    pub request_id: Option<String>,
    /// At most this many, newest first (default 100, at most 1,000).
    /// Clamped to 1 to 1,000; the schema bound is the integer type's.
    #[param(value_type = Option<u64>, maximum = 4294967295_u64)]
    pub limit: Option<u32>,
    /// Lines older than this cursor: the previous page's `next_cursor` (a number, an older
    /// page's `next_before`, reads only the node asked).
    pub before: Option<String>,
    /// Stream new lines as server-sent events instead of answering a page (this node's
    /// lines only, also in a cluster).
    #[serde(default)]
    pub follow: bool,
}

/// One stored log line.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogEntryView {
    /// A cursor: lines are newest first by it (0 for a followed line).
    pub seq: i64,
    pub time_ms: i64,
    pub function: String,
    pub version: String,
    pub request_id: String,
    pub instance_id: u64,
    /// The logger's level, or `stdout` / `stderr`.
    pub level: String,
    pub message: String,
    /// The node that recorded it (absent without cluster membership).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Row for LogEntryView {
    fn time_ms(&self) -> i64 {
        self.time_ms
    }
    fn seq(&self) -> i64 {
        self.seq
    }
    fn set_node(&mut self, node: &str) {
        self.node = node_name(node);
    }
}

/// A row's `node`: none for a node without membership, which has no id.
fn node_name(node: &str) -> Option<String> {
    Some(node.to_string()).filter(|n| !n.is_empty())
}

impl From<&LogRow> for LogEntryView {
    fn from(l: &LogRow) -> Self {
        LogEntryView {
            seq: l.seq,
            time_ms: l.time_ms,
            function: l.function.clone(),
            version: l.version.clone(),
            request_id: l.request_id.clone(),
            instance_id: l.instance_id,
            level: l.level.clone(),
            message: l.message.clone(),
            node: None,
        }
    }
}

/// A page of log lines.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub lines: Vec<LogEntryView>,
    /// Pass as `before` for the next (older) page; absent on the last page. A page can
    /// hold fewer lines than asked, even none, when a filter matched little of a long
    /// history: the cursor then says where to go on.
    #[serde(default)]
    pub next_cursor: Option<String>,
    /// This node's own cursor (a page of this node alone): `next_cursor` as a number.
    /// Absent from a page merged from several nodes.
    #[serde(default)]
    pub next_before: Option<i64>,
    /// Lines of this function dropped so far to keep it under its log cap (on every node
    /// that answered).
    pub dropped_lines: u64,
    /// Nodes that did not answer in time: their lines are missing from the page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_nodes: Vec<String>,
}

/// A function's log lines, newest first, filtered; or, with `follow=true`, a stream of new
/// lines (`text/event-stream`, one JSON `LogEntryView` per `data:`).
#[utoipa::path(get, path = "/v1/functions/{name}/logs", tag = "observe",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$"), LogsQuery),
    responses((status = 200, content((LogPage = "application/json"),
            (String = "text/event-stream"))),
        (status = 400, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)))]
pub async fn logs(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let recorder = s.platform.recorder()?.clone();
    s.platform.get_function(&name).await?;
    let (since_ms, until_ms) = time_range(q.since.as_deref(), q.until.as_deref())?;
    let min_severity = parse_level(q.level.as_deref())?;
    let regex = check_regex(q.regex.as_deref())?;
    if q.follow {
        let filter = Follow {
            function: name,
            min_severity,
            contains: q.q,
            regex,
            request_id: q.request_id,
        };
        return Ok(follow(recorder.follow(), filter).into_response());
    }
    let view = s.platform.node_view();
    let this = view.as_ref().map(|v| v.this.clone());
    let scope = fanout::scope(view, &headers, q.before.as_deref())?;
    recorder.flush().await;
    let limit = page_limit(q.limit);
    let query = LogQuery {
        function: Some(name.clone()),
        min_severity,
        since_ms,
        until_ms,
        contains: q.q.clone(),
        regex,
        request_id: q.request_id.clone(),
        before_seq: None,
        limit,
    };
    let local = |before_seq: Option<i64>| {
        let store = recorder.store.clone();
        let query = LogQuery {
            before_seq,
            ..query.clone()
        };
        let this = this.clone();
        async move {
            let (rows, next) = store.logs(&query).await?;
            let lines = rows
                .iter()
                .map(|r| LogEntryView {
                    node: this.clone(),
                    ..LogEntryView::from(r)
                })
                .collect();
            Ok::<_, ApiError>((lines, next))
        }
    };
    let dropped_here = recorder.store.logs_dropped(&name).await?;
    let cluster = match scope {
        Scope::Node { before } => {
            let (lines, next_before) = local(before).await?;
            return Ok(Json(LogPage {
                lines,
                next_cursor: next_before.map(|b| b.to_string()),
                next_before,
                dropped_lines: dropped_here,
                unreachable_nodes: Vec::new(),
            })
            .into_response());
        }
        Scope::Cluster(cluster) => cluster,
    };
    // Every node reads the same instants: `15m` would be another window on each.
    let peer_query = LogsQuery {
        since: since_ms.map(|v| v.to_string()),
        until: until_ms.map(|v| v.to_string()),
        limit: Some(limit),
        before: None,
        follow: false,
        ..q
    };
    let path = format!("/v1/functions/{name}/logs");
    let mut dropped_lines = dropped_here;
    let (merged, unreachable_nodes) = fanout::page(
        &s.fanout,
        &cluster,
        limit,
        local,
        |before| {
            let q = LogsQuery {
                before: before.map(|b| b.to_string()),
                ..peer_query.clone()
            };
            fanout::uri(&path, &q)
        },
        |p: LogPage| {
            dropped_lines += p.dropped_lines;
            (p.lines, p.next_before)
        },
    )
    .await?;
    Ok(Json(LogPage {
        lines: merged.rows,
        next_cursor: merged.cursor.map(|c| c.encode()),
        next_before: None,
        dropped_lines,
        unreachable_nodes,
    })
    .into_response())
}

/// What a follower wants to see.
struct Follow {
    function: String,
    min_severity: i32,
    contains: Option<String>,
    regex: Option<regex::Regex>,
    request_id: Option<String>,
}

impl Follow {
    fn wants(&self, l: &LogRow) -> bool {
        l.function == self.function
            && l.severity >= self.min_severity
            && self.request_id.as_ref().is_none_or(|r| *r == l.request_id)
            && self.contains.as_ref().is_none_or(|c| l.message.contains(c))
            && self.regex.as_ref().is_none_or(|r| r.is_match(&l.message))
    }
}

fn follow(
    rx: tokio::sync::broadcast::Receiver<Arc<LogRow>>,
    filter: Follow,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold((rx, filter), |(mut rx, filter)| async move {
        loop {
            match rx.recv().await {
                Ok(line) if filter.wants(&line) => {
                    let json = serde_json::to_string(&LogEntryView::from(line.as_ref()))
                        .unwrap_or_default();
                    return Some((Ok(Event::default().data(json)), (rx, filter)));
                }
                Ok(_) => continue,
                // A follower that fell behind is told how many lines it missed.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let event = Event::default().event("missed").data(n.to_string());
                    return Some((Ok(event), (rx, filter)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[derive(Clone, Debug, Deserialize, Serialize, IntoParams)]
pub struct EventsQuery {
    /// Only this function's events.
    pub function: Option<String>,
    /// Only this kind: started, stopped, throttled, created, updated, deleted, published,
    /// alias_moved, rolled_back.
    pub event: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    /// Events whose reason contains this text.
    pub q: Option<String>,
    /// At most this many, newest first (default 100, at most 1,000).
    /// Clamped to 1 to 1,000; the schema bound is the integer type's.
    #[param(value_type = Option<u64>, maximum = 4294967295_u64)]
    pub limit: Option<u32>,
    /// Events older than this cursor: the previous page's `next_cursor` (a number reads
    /// only the node asked).
    pub before: Option<String>,
}

/// One lifecycle event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    pub seq: i64,
    pub time_ms: i64,
    pub function: String,
    /// 0 for events that are not an instance's.
    pub instance_id: u64,
    pub event: String,
    pub reason: String,
    /// The node that recorded it (absent without cluster membership).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Row for EventView {
    fn time_ms(&self) -> i64 {
        self.time_ms
    }
    fn seq(&self) -> i64 {
        self.seq
    }
    fn set_node(&mut self, node: &str) {
        self.node = node_name(node);
    }
}

impl From<telemetry::EventRow> for EventView {
    fn from(e: telemetry::EventRow) -> Self {
        EventView {
            seq: e.seq,
            time_ms: e.time_ms,
            function: e.function,
            instance_id: e.instance_id,
            event: e.event,
            reason: e.reason,
            node: None,
        }
    }
}

/// `GET /v1/events`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventView>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
    /// This node's own cursor (a page of this node alone): `next_cursor` as a number.
    /// Absent from a page merged from several nodes.
    #[serde(default)]
    pub next_before: Option<i64>,
    /// Nodes that did not answer in time: their events are missing from the page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_nodes: Vec<String>,
}

/// Lifecycle events, newest first: instances started and stopped (with why), throttles,
/// functions created, updated, deleted and published, aliases moved, canaries rolled back.
#[utoipa::path(get, path = "/v1/events", tag = "observe",
    params(EventsQuery),
    responses((status = 200, body = EventList), (status = 400, body = crate::ErrorBody)))]
pub async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventList>, ApiError> {
    let limit = page_limit(q.limit);
    let view = s.platform.node_view();
    let this = view.as_ref().map(|v| v.this.clone());
    let Ok(recorder) = s.platform.recorder() else {
        // Without telemetry, the node's in-memory list is all there is.
        let events = s
            .platform
            .recent_events(q.function.as_deref(), limit as usize);
        return Ok(Json(EventList {
            events: events
                .into_iter()
                .filter(|e| q.event.as_deref().is_none_or(|k| k == e.event))
                .map(|e| EventView {
                    node: this.clone(),
                    ..EventView::from(platform::recorder::event_row(e))
                })
                .collect(),
            next_cursor: None,
            next_before: None,
            unreachable_nodes: Vec::new(),
        }));
    };
    let scope = fanout::scope(view, &headers, q.before.as_deref())?;
    let (since_ms, until_ms) = time_range(q.since.as_deref(), q.until.as_deref())?;
    let query = EventQuery {
        function: q.function.clone(),
        event: q.event.clone(),
        since_ms,
        until_ms,
        contains: q.q.clone(),
        before_seq: None,
        limit,
    };
    recorder.flush().await;
    let local = |before_seq: Option<i64>| {
        let store = recorder.store.clone();
        let query = EventQuery {
            before_seq,
            ..query.clone()
        };
        let this = this.clone();
        async move {
            let rows = store.events(&query).await?;
            let next = next_cursor(rows.iter().map(|r| r.seq), limit);
            let events = rows
                .into_iter()
                .map(|r| EventView {
                    node: this.clone(),
                    ..EventView::from(r)
                })
                .collect();
            Ok::<_, ApiError>((events, next))
        }
    };
    let cluster = match scope {
        Scope::Node { before } => {
            let (events, next_before) = local(before).await?;
            return Ok(Json(EventList {
                events,
                next_cursor: next_before.map(|b| b.to_string()),
                next_before,
                unreachable_nodes: Vec::new(),
            }));
        }
        Scope::Cluster(cluster) => cluster,
    };
    let peer_query = EventsQuery {
        since: since_ms.map(|v| v.to_string()),
        until: until_ms.map(|v| v.to_string()),
        limit: Some(limit),
        before: None,
        ..q
    };
    let (merged, unreachable_nodes) = fanout::page(
        &s.fanout,
        &cluster,
        limit,
        local,
        |before| {
            let q = EventsQuery {
                before: before.map(|b| b.to_string()),
                ..peer_query.clone()
            };
            fanout::uri("/v1/events", &q)
        },
        |p: EventList| (p.events, p.next_before),
    )
    .await?;
    Ok(Json(EventList {
        events: merged.rows,
        next_cursor: merged.cursor.map(|c| c.encode()),
        next_before: None,
        unreachable_nodes,
    }))
}

#[derive(Clone, Debug, Deserialize, Serialize, IntoParams)]
pub struct RecordsQuery {
    pub since: Option<String>,
    pub until: Option<String>,
    pub request_id: Option<String>,
    /// Only the calls of this W3C trace (32 hex digits).
    pub trace_id: Option<String>,
    /// At most this many, newest first (default 100, at most 1,000).
    /// Clamped to 1 to 1,000; the schema bound is the integer type's.
    #[param(value_type = Option<u64>, maximum = 4294967295_u64)]
    pub limit: Option<u32>,
    /// Records older than this cursor: the previous page's `next_cursor` (a number reads
    /// only the node asked).
    pub before: Option<String>,
}

/// One invocation record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordView {
    pub seq: i64,
    pub request_id: String,
    pub function: String,
    pub version: String,
    /// `api`, `http` or `async`.
    pub trigger: String,
    pub attempt: u32,
    pub started_at_ms: i64,
    pub queue_ms: f64,
    /// Sandbox start, code load and initializer; 0 when warm.
    pub init_ms: f64,
    pub handler_ms: f64,
    pub duration_ms: f64,
    pub cold_start: bool,
    /// `succeeded` or `failed`.
    pub status: String,
    pub error_type: Option<String>,
    pub billed_ms: i64,
    pub memory_mb: u32,
    pub instance_id: u64,
    /// The call's W3C `traceparent`.
    pub traceparent: Option<String>,
    /// The node that ran it (absent without cluster membership).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Row for RecordView {
    fn time_ms(&self) -> i64 {
        self.started_at_ms
    }
    fn seq(&self) -> i64 {
        self.seq
    }
    fn set_node(&mut self, node: &str) {
        self.node = node_name(node);
    }
}

impl From<telemetry::RecordRow> for RecordView {
    fn from(r: telemetry::RecordRow) -> Self {
        RecordView {
            seq: r.seq,
            request_id: r.request_id,
            function: r.function,
            version: r.version,
            trigger: r.trigger,
            attempt: r.attempt,
            started_at_ms: r.started_at_ms,
            queue_ms: r.queue_ms,
            init_ms: r.init_ms,
            handler_ms: r.handler_ms,
            duration_ms: r.duration_ms,
            cold_start: r.cold,
            status: r.status,
            error_type: r.error_type,
            billed_ms: r.billed_ms,
            memory_mb: r.memory_mb,
            instance_id: r.instance_id,
            traceparent: r.traceparent,
            node: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordList {
    pub invocations: Vec<RecordView>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
    /// This node's own cursor (a page of this node alone): `next_cursor` as a number.
    /// Absent from a page merged from several nodes.
    #[serde(default)]
    pub next_before: Option<i64>,
    /// Nodes that did not answer in time: their records are missing from the page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable_nodes: Vec<String>,
}

/// A function's invocation records, newest first.
#[utoipa::path(get, path = "/v1/functions/{name}/invocations", tag = "observe",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$"), RecordsQuery),
    responses((status = 200, body = RecordList), (status = 404, body = crate::ErrorBody)))]
pub async fn records(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<RecordsQuery>,
) -> Result<Json<RecordList>, ApiError> {
    let recorder = s.platform.recorder()?;
    s.platform.get_function(&name).await?;
    let limit = page_limit(q.limit);
    let (since_ms, until_ms) = time_range(q.since.as_deref(), q.until.as_deref())?;
    let trace_id = match &q.trace_id {
        Some(t) => Some(platform::trace::trace_id(t).ok_or_else(|| {
            ApiError::invalid(format!(
                "trace_id {t:?} is not a trace id (32 hex digits, as in a traceparent)"
            ))
        })?),
        None => None,
    };
    let view = s.platform.node_view();
    let this = view.as_ref().map(|v| v.this.clone());
    let scope = fanout::scope(view, &headers, q.before.as_deref())?;
    let query = RecordQuery {
        function: Some(name.clone()),
        request_id: q.request_id.clone(),
        trace_id,
        since_ms,
        until_ms,
        before_seq: None,
        limit,
    };
    recorder.flush().await;
    let local = |before_seq: Option<i64>| {
        let store = recorder.store.clone();
        let query = RecordQuery {
            before_seq,
            ..query.clone()
        };
        let this = this.clone();
        async move {
            let rows = store.records(&query).await?;
            let next = next_cursor(rows.iter().map(|r| r.seq), limit);
            let records = rows
                .into_iter()
                .map(|r| RecordView {
                    node: this.clone(),
                    ..RecordView::from(r)
                })
                .collect();
            Ok::<_, ApiError>((records, next))
        }
    };
    let cluster = match scope {
        Scope::Node { before } => {
            let (invocations, next_before) = local(before).await?;
            return Ok(Json(RecordList {
                invocations,
                next_cursor: next_before.map(|b| b.to_string()),
                next_before,
                unreachable_nodes: Vec::new(),
            }));
        }
        Scope::Cluster(cluster) => cluster,
    };
    let peer_query = RecordsQuery {
        since: since_ms.map(|v| v.to_string()),
        until: until_ms.map(|v| v.to_string()),
        limit: Some(limit),
        before: None,
        ..q
    };
    let path = format!("/v1/functions/{name}/invocations");
    let (merged, unreachable_nodes) = fanout::page(
        &s.fanout,
        &cluster,
        limit,
        local,
        |before| {
            let q = RecordsQuery {
                before: before.map(|b| b.to_string()),
                ..peer_query.clone()
            };
            fanout::uri(&path, &q)
        },
        |p: RecordList| (p.invocations, p.next_before),
    )
    .await?;
    Ok(Json(RecordList {
        invocations: merged.rows,
        next_cursor: merged.cursor.map(|c| c.encode()),
        next_before: None,
        unreachable_nodes,
    }))
}

#[derive(Clone, Debug, Deserialize, Serialize, IntoParams)]
pub struct StatsQuery {
    /// How far back: `1h` by default, at most 31 days.
    pub window: Option<String>,
    /// The series' step: `1m` by default; at most 1,440 steps per window.
    pub step: Option<String>,
    /// The window ends with the step that holds this time (default now): Unix ms, RFC
    /// 3339, or a duration before now (`1h`).
    pub until: Option<String>,
}

/// Statistics of a set of calls.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct StatsFigures {
    pub invocations: u64,
    pub errors: u64,
    pub throttles: u64,
    pub retries: u64,
    pub cold_starts: u64,
    /// Handler durations; absent without calls. Percentiles are within 5%.
    pub duration_avg_ms: Option<f64>,
    pub duration_p50_ms: Option<f64>,
    pub duration_p95_ms: Option<f64>,
    pub duration_p99_ms: Option<f64>,
    /// The most instances alive at once (sampled each second).
    pub instances_max: u32,
}

impl StatsFigures {
    fn of(buckets: &[&telemetry::StatsBucket]) -> StatsFigures {
        let mut f = StatsFigures::default();
        let mut histogram = Vec::new();
        let mut sum = 0.0;
        for b in buckets {
            f.invocations += b.invocations;
            f.errors += b.errors;
            f.throttles += b.throttles;
            f.retries += b.retries;
            f.cold_starts += b.cold_starts;
            f.instances_max = f.instances_max.max(b.instances_max);
            sum += b.duration_sum_ms;
            histogram.extend_from_slice(&b.histogram);
        }
        if f.invocations > 0 {
            f.duration_avg_ms = Some(sum / f.invocations as f64);
            f.duration_p50_ms = telemetry::quantile_ms(&histogram, 0.50);
            f.duration_p95_ms = telemetry::quantile_ms(&histogram, 0.95);
            f.duration_p99_ms = telemetry::quantile_ms(&histogram, 0.99);
        }
        f
    }
}

/// One step of the series.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsPoint {
    pub start_ms: i64,
    #[serde(flatten)]
    pub figures: StatsFigures,
}

/// `GET /v1/functions/{name}/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsView {
    pub function: String,
    pub since_ms: i64,
    pub until_ms: i64,
    pub step_ms: i64,
    /// In a cluster, `instances_max` adds the nodes' peaks in each step: an upper bound of
    /// the instances alive at once across the cluster.
    pub totals: StatsFigures,
    /// Every step of the window, oldest first, empty ones included.
    pub series: Vec<StatsPoint>,
    /// Only in a node-scoped answer (`x-nimbus-scope: node`, one node asking another):
    /// the node's steps with calls as stored, duration histograms included, which the
    /// asking node adds to its own so that percentiles are those of all the calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StatsStep>>,
    /// Nodes that did not answer in time: their calls are missing from the figures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreachable_nodes: Vec<String>,
}

/// One step of one node's statistics, as stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsStep {
    pub start_ms: i64,
    pub invocations: u64,
    pub errors: u64,
    pub throttles: u64,
    pub retries: u64,
    pub cold_starts: u64,
    pub duration_sum_ms: f64,
    /// Handler durations: `[bucket, calls]` pairs, bucket `b` holding (1.05^(b-1),
    /// 1.05^b] microseconds.
    pub histogram: Vec<[i64; 2]>,
    pub instances_max: u32,
}

impl From<&telemetry::StatsBucket> for StatsStep {
    fn from(b: &telemetry::StatsBucket) -> Self {
        StatsStep {
            start_ms: b.start_ms,
            invocations: b.invocations,
            errors: b.errors,
            throttles: b.throttles,
            retries: b.retries,
            cold_starts: b.cold_starts,
            duration_sum_ms: b.duration_sum_ms,
            histogram: b.histogram.iter().map(|&(b, n)| [b, n as i64]).collect(),
            instances_max: b.instances_max,
        }
    }
}

impl From<StatsStep> for telemetry::StatsBucket {
    fn from(s: StatsStep) -> Self {
        telemetry::StatsBucket {
            start_ms: s.start_ms,
            invocations: s.invocations,
            errors: s.errors,
            throttles: s.throttles,
            retries: s.retries,
            cold_starts: s.cold_starts,
            duration_sum_ms: s.duration_sum_ms,
            histogram: s
                .histogram
                .into_iter()
                .map(|[b, n]| (b, n.max(0) as u64))
                .collect(),
            instances_max: s.instances_max,
        }
    }
}

/// What a node-scoped stats answer is read for.
#[derive(Deserialize)]
struct NodeStats {
    steps: Vec<StatsStep>,
}

/// A function's statistics over a window: totals and a time series.
#[utoipa::path(get, path = "/v1/functions/{name}/stats", tag = "observe",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$"), StatsQuery),
    responses((status = 200, body = StatsView), (status = 400, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody)))]
pub async fn stats(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<StatsQuery>,
) -> Result<Json<StatsView>, ApiError> {
    let recorder = s.platform.recorder()?;
    s.platform.get_function(&name).await?;
    let window_ms = parse_duration_ms("window", q.window.as_deref().unwrap_or("1h"))?;
    let step_ms = parse_duration_ms("step", q.step.as_deref().unwrap_or("1m"))?;
    if !(1_000..=limits::STATS_WINDOW_MAX_MS).contains(&window_ms) {
        return Err(ApiError::invalid("`window` must be between 1s and 31d"));
    }
    if step_ms < 1_000 || window_ms / step_ms > limits::STATS_POINTS_MAX {
        return Err(ApiError::invalid(format!(
            "`step` must be at least 1s and give at most {} points over the window",
            limits::STATS_POINTS_MAX
        )));
    }
    // Steps are aligned to multiples of the step, so a series is stable between calls.
    let (_, until) = time_range(None, q.until.as_deref())?;
    let end = until.unwrap_or_else(now_ms);
    let until_ms = end - end.rem_euclid(step_ms) + step_ms;
    let since_ms = until_ms - (window_ms + step_ms - 1) / step_ms * step_ms;
    let scoped = fanout::node_scoped(&headers);
    let others = match s.platform.node_view() {
        Some(v) if !scoped => v.others,
        _ => Vec::new(),
    };
    // The other nodes read the same steps: the last one is the step that holds
    // `until_ms - 1`, whatever their clocks say now.
    let peer_query = StatsQuery {
        until: Some((until_ms - 1).to_string()),
        ..q
    };
    let path = fanout::uri(&format!("/v1/functions/{name}/stats"), &peer_query);
    let asks = others.into_iter().map(|n| (n, path.clone())).collect();
    let local = async {
        recorder.flush().await;
        recorder
            .store
            .stats(&name, since_ms, until_ms, step_ms)
            .await
    };
    let (buckets, (answers, unreachable_nodes)) =
        tokio::join!(local, s.fanout.gather::<NodeStats>(asks));
    let mut buckets = buckets?;
    let steps = scoped.then(|| buckets.iter().map(StatsStep::from).collect());
    if !answers.is_empty() {
        let mut nodes = vec![buckets];
        nodes.extend(answers.into_iter().map(|(_, a)| {
            a.steps
                .into_iter()
                .map(telemetry::StatsBucket::from)
                .collect()
        }));
        buckets = fanout::merge_stats(nodes);
    }
    let all: Vec<&telemetry::StatsBucket> = buckets.iter().collect();
    let totals = StatsFigures::of(&all);
    let mut series = Vec::new();
    let mut it = buckets.iter().peekable();
    let mut start = since_ms;
    while start < until_ms {
        let figures = match it.peek() {
            Some(b) if b.start_ms == start => StatsFigures::of(&[it.next().expect("peeked")]),
            _ => StatsFigures::default(),
        };
        series.push(StatsPoint {
            start_ms: start,
            figures,
        });
        start += step_ms;
    }
    Ok(Json(StatsView {
        function: name,
        since_ms,
        until_ms,
        step_ms,
        totals,
        series,
        steps,
        unreachable_nodes,
    }))
}

#[derive(Clone, Debug, Deserialize, Serialize, IntoParams)]
pub struct UsageQuery {
    /// From this time (default `30d`): a duration before now, RFC 3339, or Unix ms.
    pub since: Option<String>,
    pub until: Option<String>,
    /// `function` (default) or `day` (UTC).
    #[param(pattern = "^(function|day)?$")]
    pub by: Option<String>,
}

/// Metered usage and its estimated cost.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct UsageFigures {
    pub requests: u64,
    pub billed_ms: i64,
    pub gb_seconds: f64,
    pub provisioned_instance_seconds: f64,
    pub provisioned_gb_seconds: f64,
    pub cost_requests: f64,
    pub cost_compute: f64,
    pub cost_provisioned: f64,
    pub cost_total: f64,
}

impl UsageFigures {
    fn add(&mut self, r: &telemetry::UsageRow, prices: &Prices) {
        self.requests += r.requests;
        self.billed_ms += r.billed_ms;
        self.gb_seconds += r.mb_ms as f64 / 1024.0 / 1000.0;
        self.provisioned_instance_seconds += r.provisioned_instance_ms as f64 / 1000.0;
        self.provisioned_gb_seconds += r.provisioned_mb_ms as f64 / 1024.0 / 1000.0;
        self.cost_requests = self.requests as f64 / 1e6 * prices.per_million_requests;
        self.cost_compute = self.gb_seconds * prices.per_gb_second;
        self.cost_provisioned = self.provisioned_gb_seconds * prices.per_provisioned_gb_second;
        self.cost_total = self.cost_requests + self.cost_compute + self.cost_provisioned;
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageLine {
    /// The function, or the UTC day (`2026-12-01`).
    pub key: String,
    #[serde(flatten)]
    pub figures: UsageFigures,
}

/// `GET /v1/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub since_ms: i64,
    pub until_ms: i64,
    pub by: String,
    /// Billed durations are rounded up to a multiple of this.
    pub billing_granularity_ms: u32,
    pub prices: Prices,
    pub rows: Vec<UsageLine>,
    pub total: UsageFigures,
    /// Only in a node-scoped answer (`x-nimbus-scope: node`, one node asking another): the
    /// node's metered figures as stored, which the asking node adds to its own exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metered: Option<Vec<UsageMetered>>,
    /// Nodes that did not answer in time: their usage is missing from the figures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreachable_nodes: Vec<String>,
}

/// One group's metered usage on one node, in the units it is stored in.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageMetered {
    /// The function, or the UTC day's first Unix millisecond.
    pub key: String,
    pub requests: u64,
    pub billed_ms: i64,
    /// Σ billed milliseconds × memory MB.
    pub mb_ms: i64,
    pub provisioned_instance_ms: i64,
    pub provisioned_mb_ms: i64,
}

impl From<&telemetry::UsageRow> for UsageMetered {
    fn from(r: &telemetry::UsageRow) -> Self {
        UsageMetered {
            key: r.key.clone(),
            requests: r.requests,
            billed_ms: r.billed_ms,
            mb_ms: r.mb_ms,
            provisioned_instance_ms: r.provisioned_instance_ms,
            provisioned_mb_ms: r.provisioned_mb_ms,
        }
    }
}

impl From<UsageMetered> for telemetry::UsageRow {
    fn from(m: UsageMetered) -> Self {
        telemetry::UsageRow {
            key: m.key,
            requests: m.requests,
            billed_ms: m.billed_ms,
            mb_ms: m.mb_ms,
            provisioned_instance_ms: m.provisioned_instance_ms,
            provisioned_mb_ms: m.provisioned_mb_ms,
        }
    }
}

/// What a node-scoped usage answer is read for.
#[derive(Deserialize)]
struct NodeUsage {
    metered: Vec<UsageMetered>,
}

/// Metered usage (requests, GB-seconds, provisioned time) and an estimated cost from the
/// server's price table, by function or by day.
#[utoipa::path(get, path = "/v1/usage", tag = "observe",
    params(UsageQuery),
    responses((status = 200, body = UsageView), (status = 400, body = crate::ErrorBody)))]
pub async fn usage(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<UsageQuery>,
) -> Result<Json<UsageView>, ApiError> {
    let recorder = s.platform.recorder()?;
    let (since_ms, until_ms) = time_range(
        Some(q.since.as_deref().unwrap_or("30d")),
        q.until.as_deref(),
    )?;
    let (since_ms, until_ms) = (since_ms.unwrap_or(0), until_ms.unwrap_or(now_ms() + 1));
    let by = match q
        .by
        .as_deref()
        .filter(|b| !b.is_empty())
        .unwrap_or("function")
    {
        "function" => UsageBy::Function,
        "day" => UsageBy::Day,
        other => {
            return Err(ApiError::invalid(format!(
                "`by`: `{other}` is not a grouping; use function or day"
            )));
        }
    };
    let scoped = fanout::node_scoped(&headers);
    let others = match s.platform.node_view() {
        Some(v) if !scoped => v.others,
        _ => Vec::new(),
    };
    // Every node reads the same instants: `30d` would be another window on each.
    let peer_query = UsageQuery {
        since: Some(since_ms.to_string()),
        until: Some(until_ms.to_string()),
        ..q
    };
    let path = fanout::uri("/v1/usage", &peer_query);
    let asks = others.into_iter().map(|n| (n, path.clone())).collect();
    let local = async {
        recorder.flush().await;
        recorder.store.usage(since_ms, until_ms, by).await
    };
    let (rows, (answers, unreachable_nodes)) =
        tokio::join!(local, s.fanout.gather::<NodeUsage>(asks));
    let mut rows = rows?;
    let metered = scoped.then(|| rows.iter().map(UsageMetered::from).collect());
    if !answers.is_empty() {
        let mut nodes = vec![rows];
        nodes.extend(answers.into_iter().map(|(_, a)| {
            a.metered
                .into_iter()
                .map(telemetry::UsageRow::from)
                .collect()
        }));
        rows = fanout::merge_usage(nodes);
    }
    let prices = s.prices;
    let mut total = UsageFigures::default();
    let rows = rows
        .iter()
        .map(|r| {
            total.add(r, &prices);
            let mut figures = UsageFigures::default();
            figures.add(r, &prices);
            let key = match by {
                UsageBy::Function => r.key.clone(),
                UsageBy::Day => day_of(r.key.parse().unwrap_or(0)),
            };
            UsageLine { key, figures }
        })
        .collect();
    Ok(Json(UsageView {
        since_ms,
        until_ms,
        by: match by {
            UsageBy::Function => "function",
            UsageBy::Day => "day",
        }
        .into(),
        billing_granularity_ms: recorder.config.billing_granularity_ms,
        prices,
        rows,
        total,
        metered,
        unreachable_nodes,
    }))
}

/// `YYYY-MM-DD` of a Unix millisecond (UTC).
fn day_of(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

/// The node's Prometheus metrics (text format 0.0.4), behind the admin token like the API.
pub async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let (content_type, body) = s.platform.metrics().await?;
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_three_forms() {
        let now = 1_000_000_000;
        assert_eq!(parse_time("since", "15m", now).unwrap(), now - 900_000);
        assert_eq!(parse_time("since", "1234", now).unwrap(), 1234);
        assert_eq!(
            parse_time("since", "1970-01-01T00:00:02Z", now).unwrap(),
            2_000
        );
        let e = parse_time("since", "yesterday", now).unwrap_err();
        assert!(e.to_string().contains("15m"), "{e}");
    }

    #[test]
    fn levels_and_regexes_are_checked() {
        assert_eq!(parse_level(Some("WARN")).unwrap(), 30);
        assert_eq!(parse_level(None).unwrap(), 0);
        assert!(parse_level(Some("loud")).is_err());
        assert!(check_regex(Some("(")).is_err());
        assert!(check_regex(Some(&"a".repeat(2_000))).is_err());
        assert!(check_regex(Some(r"^\d+$")).unwrap().is_some());
    }

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(86_400_000 * 365), "1971-01-01");
    }
}
