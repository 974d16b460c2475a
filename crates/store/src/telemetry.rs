//! What happened, kept for later: invocation records, function log lines, lifecycle events
//! and per-minute instance samples, written in batches, queried for logs, statistics and
//! usage, and pruned by age, by a per-function size cap and by a cap on the database's size. The `TelemetryStore` trait has
//! the SQLite implementation here, in a database file of its own.

use std::path::Path;

use async_trait::async_trait;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use crate::StoreError;

/// One finished call (or attempt), or one throttled call.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordRow {
    pub seq: i64,
    pub request_id: String,
    pub function: String,
    pub version: String,
    /// `api`, `http`, `async`, ...
    pub trigger: String,
    pub attempt: u32,
    pub started_at_ms: i64,
    pub queue_ms: f64,
    /// Starting the instance, loading the code and the initializer; 0 when warm.
    pub init_ms: f64,
    pub handler_ms: f64,
    /// The whole call as the platform saw it.
    pub duration_ms: f64,
    pub cold: bool,
    /// `succeeded`, `failed` or `throttled`.
    pub status: String,
    pub error_type: Option<String>,
    pub billed_ms: i64,
    pub memory_mb: u32,
    pub instance_id: u64,
    /// The call's W3C `traceparent`.
    pub traceparent: Option<String>,
}

/// The lines one call wrote, stored together.
#[derive(Clone, Debug, PartialEq)]
pub struct LogChunk {
    pub function: String,
    pub version: String,
    pub request_id: String,
    pub instance_id: u64,
    pub lines: Vec<ChunkLine>,
}

/// One line of a chunk.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkLine {
    pub time_ms: i64,
    pub severity: i32,
    pub level: String,
    pub message: String,
}

/// Lines per chunk at most: a line's cursor is `chunk seq × LINES_PER_CHUNK_MAX + index`.
/// (A call keeps at most 256 KB of lines, so at most ~43,000 of them.)
pub const LINES_PER_CHUNK_MAX: i64 = 65_536;

/// Chunks one query reads at most before it answers with what it found and a cursor:
/// a filter that matches nothing must not scan a function's whole history in one go.
const CHUNKS_PER_QUERY_MAX: i64 = 20_000;

/// One line a function wrote, as queries return it.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRow {
    /// The line's cursor: newer lines have larger ones (0 for a live, unstored line).
    pub seq: i64,
    pub time_ms: i64,
    pub function: String,
    pub version: String,
    pub request_id: String,
    pub instance_id: u64,
    /// The level as a number (see `severity_of`), for "this level and above".
    pub severity: i32,
    pub level: String,
    pub message: String,
}

/// One lifecycle event: an instance started or stopped, a throttle, a function deployed.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    pub seq: i64,
    pub time_ms: i64,
    pub function: String,
    pub instance_id: u64,
    pub event: String,
    pub reason: String,
}

/// One function's instances during one minute: the most seen at once, and the provisioned
/// (`min_instances`) time, in instance-ms and in MB-ms, accumulated.
#[derive(Clone, Debug, PartialEq)]
pub struct MinuteSample {
    pub function: String,
    pub minute_ms: i64,
    pub instances_max: u32,
    pub provisioned_instance_ms: i64,
    pub provisioned_mb_ms: i64,
}

/// What one transaction writes.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<RecordRow>,
    pub logs: Vec<LogChunk>,
    pub events: Vec<EventRow>,
    pub minutes: Vec<MinuteSample>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.logs.is_empty()
            && self.events.is_empty()
            && self.minutes.is_empty()
    }
}

/// A filter on log lines; newest first, `limit` at most, older than `before_seq` when set.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    pub function: Option<String>,
    pub min_severity: i32,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Substring of the message (case-sensitive).
    pub contains: Option<String>,
    /// Regular expression on the message.
    pub regex: Option<regex::Regex>,
    pub request_id: Option<String>,
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// A filter on lifecycle events; newest first.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub function: Option<String>,
    pub event: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub contains: Option<String>,
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// A filter on invocation records; newest first.
#[derive(Clone, Debug, Default)]
pub struct RecordQuery {
    pub function: Option<String>,
    pub request_id: Option<String>,
    /// Only calls of this trace (32 lowercase hex digits).
    pub trace_id: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// One step of a function's statistics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsBucket {
    pub start_ms: i64,
    /// Calls that ran (throttled ones are not among them).
    pub invocations: u64,
    pub errors: u64,
    pub throttles: u64,
    /// Attempts after the first of asynchronous events.
    pub retries: u64,
    pub cold_starts: u64,
    /// Σ handler milliseconds.
    pub duration_sum_ms: f64,
    /// (bucket of the handler's duration, calls): see `duration_bucket`.
    pub histogram: Vec<(i64, u64)>,
    pub instances_max: u32,
}

/// How usage is grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageBy {
    Function,
    /// UTC days; the key is the day's first millisecond.
    Day,
}

/// Metered usage of one group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageRow {
    /// The function's name, or the day's first Unix millisecond.
    pub key: String,
    pub requests: u64,
    pub billed_ms: i64,
    /// Σ billed_ms × memory_mb: GB-seconds × 1024 × 1000.
    pub mb_ms: i64,
    pub provisioned_instance_ms: i64,
    pub provisioned_mb_ms: i64,
}

/// How long and how much is kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub records_max_age_ms: i64,
    pub logs_max_age_ms: i64,
    /// Message bytes kept per function; the oldest lines go first past it.
    pub log_bytes_per_function_max: i64,
    /// The database's size in use (its pages less its free pages) at most: past it, the
    /// oldest records, log chunks and events go first, down to 90% of it. `i64::MAX` for
    /// no bound but age. (Checked when pruning, so it can be passed by what is written
    /// between two prunes.)
    pub telemetry_max_bytes: i64,
}

/// What one pruning pass removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub records_expired: u64,
    pub logs_expired: u64,
    /// Lines removed because their function was over its cap, per function.
    pub logs_dropped: Vec<(String, u64)>,
    pub events_expired: u64,
    /// Records removed before their age because the database was over its size.
    pub records_dropped_for_size: u64,
    /// Log lines removed so (also counted in their functions' dropped lines).
    pub log_lines_dropped_for_size: u64,
    /// Lifecycle events removed so.
    pub events_dropped_for_size: u64,
    /// The database's size in use after pruning, in bytes.
    pub used_bytes: i64,
}

/// Where telemetry is kept. The cluster mode puts PostgreSQL behind the same trait.
#[async_trait]
pub trait TelemetryStore: Send + Sync {
    /// Writes everything in `batch` in one transaction.
    async fn write(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Removes what is past `retention` at `now_ms`: by age, by each function's log cap, and
    /// oldest first past the database's size cap.
    async fn prune(&self, now_ms: i64, retention: &Retention) -> Result<PruneReport, StoreError>;
    /// Lines matching `q`, newest first, and the cursor to pass as `before_seq` for more
    /// (`None` when there are no more).
    async fn logs(&self, q: &LogQuery) -> Result<(Vec<LogRow>, Option<i64>), StoreError>;
    /// Log lines of `function` dropped so far to keep under its cap or the database's.
    async fn logs_dropped(&self, function: &str) -> Result<u64, StoreError>;
    async fn events(&self, q: &EventQuery) -> Result<Vec<EventRow>, StoreError>;
    async fn records(&self, q: &RecordQuery) -> Result<Vec<RecordRow>, StoreError>;
    /// `function`'s statistics from `since_ms` (inclusive) to `until_ms` (exclusive) in
    /// steps of `step_ms`; only steps with something in them are returned.
    async fn stats(
        &self,
        function: &str,
        since_ms: i64,
        until_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<StatsBucket>, StoreError>;
    async fn usage(
        &self,
        since_ms: i64,
        until_ms: i64,
        by: UsageBy,
    ) -> Result<Vec<UsageRow>, StoreError>;
}

/// The number a level is stored as: stdout counts as INFO and stderr as ERROR (as Cloud
/// Logging does), logger levels as Python's `logging` numbers them.
pub fn severity_of(level: &str) -> i32 {
    match level.to_ascii_uppercase().as_str() {
        "TRACE" => 5,
        "DEBUG" => 10,
        "INFO" | "STDOUT" | "LOG" => 20,
        "WARN" | "WARNING" => 30,
        "ERROR" | "STDERR" => 40,
        "FATAL" | "CRITICAL" => 50,
        _ => 20,
    }
}

/// Duration buckets grow by 5%: a percentile read off them is within 5% of the truth.
const BUCKET_GROWTH: f64 = 1.05;

/// The log-scale bucket of a duration: bucket `b` holds (1.05^(b-1), 1.05^b] µs.
pub fn duration_bucket(ms: f64) -> i64 {
    let us = (ms * 1000.0).max(1.0);
    (us.ln() / BUCKET_GROWTH.ln()).ceil() as i64
}

/// The upper bound of bucket `b`, in milliseconds.
pub fn bucket_upper_ms(b: i64) -> f64 {
    BUCKET_GROWTH.powi(b as i32) / 1000.0
}

/// The `q` quantile (0..=1) of a histogram of (bucket, count), as the bucket's upper bound.
pub fn quantile_ms(histogram: &[(i64, u64)], q: f64) -> Option<f64> {
    let mut sorted = histogram.to_vec();
    sorted.sort_unstable();
    let total: u64 = sorted.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (bucket, count) in sorted {
        seen += count;
        if seen >= rank {
            return Some(bucket_upper_ms(bucket));
        }
    }
    None
}

/// Telemetry in its own SQLite database (WAL).
pub struct SqliteTelemetry {
    pool: SqlitePool,
}

impl SqliteTelemetry {
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let pool = crate::meta::open_wal(path, false, true, 4).await?;
        sqlx::migrate!("./migrations/telemetry").run(&pool).await?;
        Ok(SqliteTelemetry { pool })
    }
}

fn record_from(r: &sqlx::sqlite::SqliteRow) -> Result<RecordRow, sqlx::Error> {
    Ok(RecordRow {
        seq: r.try_get("seq")?,
        request_id: r.try_get("request_id")?,
        function: r.try_get("function")?,
        version: r.try_get("version")?,
        trigger: r.try_get("trigger")?,
        attempt: r.try_get::<i64, _>("attempt")? as u32,
        started_at_ms: r.try_get("started_at_ms")?,
        queue_ms: r.try_get("queue_ms")?,
        init_ms: r.try_get("init_ms")?,
        handler_ms: r.try_get("handler_ms")?,
        duration_ms: r.try_get("duration_ms")?,
        cold: r.try_get::<i64, _>("cold")? != 0,
        status: r.try_get("status")?,
        error_type: r.try_get("error_type")?,
        billed_ms: r.try_get("billed_ms")?,
        memory_mb: r.try_get::<i64, _>("memory_mb")? as u32,
        instance_id: r.try_get::<i64, _>("instance_id")? as u64,
        traceparent: r.try_get("traceparent")?,
    })
}

/// Appends `AND column op value` for each filter that is set.
fn push_time_filters(
    b: &mut QueryBuilder<Sqlite>,
    column: &str,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
) {
    if let Some(since) = since_ms {
        b.push(format!(" AND {column} >= ")).push_bind(since);
    }
    if let Some(until) = until_ms {
        b.push(format!(" AND {column} < ")).push_bind(until);
    }
}

/// What `expire_before` removed.
#[derive(Debug, Default)]
struct Expired {
    records: u64,
    log_lines: u64,
    events: u64,
    /// Log lines removed, per function.
    lines_per_function: Vec<(String, u64)>,
}

/// Removes records and instance samples before `records_cutoff_ms`, and log chunks and
/// lifecycle events before `logs_cutoff_ms`, inside the caller's transaction, keeping each
/// function's count of stored log bytes right.
async fn expire_before(
    conn: &mut sqlx::SqliteConnection,
    records_cutoff_ms: i64,
    logs_cutoff_ms: i64,
) -> Result<Expired, StoreError> {
    let records = sqlx::query("DELETE FROM invocation_records WHERE started_at_ms < ?")
        .bind(records_cutoff_ms)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let mut out = Expired {
        records,
        ..Default::default()
    };
    sqlx::query("DELETE FROM instance_minutes WHERE minute_ms < ?")
        .bind(records_cutoff_ms)
        .execute(&mut *conn)
        .await?;
    // Rows arrive about in time order: everything before the first row that is young
    // enough goes (found by walking the rowid from the oldest, a short walk when pruning
    // runs every minute).
    let first_young_event: Option<i64> = sqlx::query_scalar(
        "SELECT seq FROM lifecycle_events WHERE time_ms >= ? ORDER BY seq LIMIT 1",
    )
    .bind(logs_cutoff_ms)
    .fetch_optional(&mut *conn)
    .await?;
    out.events = sqlx::query("DELETE FROM lifecycle_events WHERE seq < ?")
        .bind(first_young_event.unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let first_young_chunk: i64 = sqlx::query_scalar::<_, i64>(
        "SELECT seq FROM log_chunks WHERE last_ms >= ? ORDER BY seq LIMIT 1",
    )
    .bind(logs_cutoff_ms)
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or(i64::MAX);
    let expired = sqlx::query(
        "SELECT function, sum(line_count) AS n, sum(bytes) AS bytes \
             FROM log_chunks WHERE seq < ? GROUP BY function",
    )
    .bind(first_young_chunk)
    .fetch_all(&mut *conn)
    .await?;
    if !expired.is_empty() {
        sqlx::query("DELETE FROM log_chunks WHERE seq < ?")
            .bind(first_young_chunk)
            .execute(&mut *conn)
            .await?;
    }
    for row in &expired {
        let function: String = row.try_get("function")?;
        let n: i64 = row.try_get("n")?;
        let bytes: i64 = row.try_get("bytes")?;
        sqlx::query("UPDATE log_accounts SET bytes = max(bytes - ?, 0) WHERE function = ?")
            .bind(bytes)
            .bind(&function)
            .execute(&mut *conn)
            .await?;
        out.log_lines += n as u64;
        out.lines_per_function.push((function, n as u64));
    }
    Ok(out)
}

/// The bytes of the database's pages in use: its pages less the free ones, read from the
/// header through the connection's own view (so a transaction sees its own deletes).
async fn used_bytes(conn: &mut sqlx::SqliteConnection) -> Result<i64, StoreError> {
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut *conn)
        .await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut *conn)
        .await?;
    let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(&mut *conn)
        .await?;
    Ok((pages - free) * page_size)
}

/// The time of the oldest row that `expire_before` could remove: the least of the oldest
/// record's start, the oldest chunk's last line, the oldest event and the oldest minute.
/// Removing before any later time removes at least that row, so every round makes progress.
async fn oldest_ms(conn: &mut sqlx::SqliteConnection) -> Result<Option<i64>, StoreError> {
    let mut oldest: Option<i64> = None;
    for sql in [
        "SELECT min(started_at_ms) FROM invocation_records",
        "SELECT last_ms FROM log_chunks ORDER BY seq LIMIT 1",
        "SELECT time_ms FROM lifecycle_events ORDER BY seq LIMIT 1",
        "SELECT min(minute_ms) FROM instance_minutes",
    ] {
        let t: Option<i64> = sqlx::query_scalar(sql)
            .fetch_optional(&mut *conn)
            .await?
            .flatten();
        oldest = match (oldest, t) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(oldest)
}

/// Past `max_bytes` in use, removes the oldest telemetry (records, log chunks, events, all
/// before one time) until the database is down to 90% of it, so the next writes do not each
/// start another pass. Each round moves the time from the oldest row towards now by the
/// share of the data that is over, as if the data were spread evenly in time; data that is
/// not (a burst) takes a few more rounds, each removing at least the oldest row.
async fn shrink_to(
    conn: &mut sqlx::SqliteConnection,
    now_ms: i64,
    max_bytes: i64,
) -> Result<Expired, StoreError> {
    let mut total = Expired::default();
    if used_bytes(conn).await? <= max_bytes {
        return Ok(total);
    }
    let target_bytes = max_bytes / 10 * 9;
    for _ in 0..64 {
        let used = used_bytes(conn).await?;
        if used <= target_bytes {
            break;
        }
        let Some(oldest) = oldest_ms(conn).await? else {
            break;
        };
        let share = ((used - target_bytes) as f64 / used as f64).max(1.0 / 64.0);
        let newest = now_ms.max(oldest);
        let cutoff = (oldest + ((newest - oldest) as f64 * share) as i64).max(oldest + 1);
        let expired = expire_before(conn, cutoff, cutoff).await?;
        total.records += expired.records;
        total.log_lines += expired.log_lines;
        total.events += expired.events;
        // Lines lost to the size cap count as dropped for their function, as those lost to
        // its own cap do: they went before their time.
        for (function, n) in expired.lines_per_function {
            sqlx::query(
                "UPDATE log_accounts SET dropped_lines = dropped_lines + ? WHERE function = ?",
            )
            .bind(n as i64)
            .bind(&function)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(total)
}

/// Gives free pages beyond a tenth of `max_bytes` (at most 64 MB: the room the next writes
/// fill again) back to the filesystem, when the database was created with incremental
/// vacuum; otherwise they stay free and the next writes reuse them, which bounds the file
/// as well. Returns the bytes in use.
async fn give_back_free_pages(pool: &SqlitePool, max_bytes: i64) -> Result<i64, StoreError> {
    let mut conn = pool.acquire().await?;
    // 2 is INCREMENTAL.
    let auto_vacuum: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
        .fetch_one(&mut *conn)
        .await?;
    if auto_vacuum == 2 {
        let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut *conn)
            .await?;
        let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(&mut *conn)
            .await?;
        let keep = (max_bytes / 10).min(64 * 1024 * 1024) / page_size;
        if free > keep {
            // A number, not input: formatted into the pragma, which takes no parameters.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "PRAGMA incremental_vacuum({})",
                free - keep
            )))
            .execute(&mut *conn)
            .await?;
        }
    }
    used_bytes(&mut conn).await
}

#[async_trait]
impl TelemetryStore for SqliteTelemetry {
    async fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Rows go in as one JSON array per table, unpacked by `jsonb_each`: one statement text
        // whatever the batch size, so it is prepared once and stays in the cache.
        let records = serde_json::to_string(
            &batch
                .records
                .iter()
                .map(|r| {
                    serde_json::json!([
                        r.request_id,
                        r.function,
                        r.version,
                        r.trigger,
                        r.attempt,
                        r.started_at_ms,
                        r.queue_ms,
                        r.init_ms,
                        r.handler_ms,
                        r.duration_ms,
                        r.cold as i64,
                        r.status,
                        r.error_type,
                        r.billed_ms,
                        r.memory_mb,
                        r.instance_id,
                        duration_bucket(r.handler_ms),
                        r.traceparent,
                    ])
                })
                .collect::<Vec<_>>(),
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let logs = serde_json::to_string(
            &batch
                .logs
                .iter()
                .filter(|c| !c.lines.is_empty())
                .map(|c| {
                    let lines: Vec<_> = c
                        .lines
                        .iter()
                        .take(LINES_PER_CHUNK_MAX as usize)
                        .map(|l| (l.time_ms, l.severity, &l.level, &l.message))
                        .collect();
                    let first = c.lines.iter().map(|l| l.time_ms).min().unwrap_or(0);
                    let last = c.lines.iter().map(|l| l.time_ms).max().unwrap_or(0);
                    let severity = c.lines.iter().map(|l| l.severity).max().unwrap_or(0);
                    let bytes: usize = c.lines.iter().map(|l| l.message.len()).sum();
                    serde_json::json!([
                        c.function,
                        c.version,
                        c.request_id,
                        c.instance_id,
                        first,
                        last,
                        severity,
                        lines.len(),
                        bytes,
                        lines,
                    ])
                })
                .collect::<Vec<_>>(),
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let events = serde_json::to_string(
            &batch
                .events
                .iter()
                .map(|e| (e.time_ms, &e.function, e.instance_id, &e.event, &e.reason))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut bytes: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
        for c in &batch.logs {
            let n: usize = c.lines.iter().map(|l| l.message.len()).sum();
            *bytes.entry(&c.function).or_default() += n as i64;
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if !batch.records.is_empty() {
            sqlx::query(
                "INSERT INTO invocation_records (request_id, function, version, trigger, \
                 attempt, started_at_ms, queue_ms, init_ms, handler_ms, duration_ms, cold, \
                 status, error_type, billed_ms, memory_mb, instance_id, duration_bucket, \
                 traceparent) \
                 SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, \
                 value->>6, value->>7, value->>8, value->>9, value->>10, value->>11, \
                 value->>12, value->>13, value->>14, value->>15, value->>16, value->>17 \
                 FROM jsonb_each(?)",
            )
            .bind(&records)
            .execute(&mut *tx)
            .await?;
        }
        if batch.logs.iter().any(|c| !c.lines.is_empty()) {
            sqlx::query(
                "INSERT INTO log_chunks (function, version, request_id, instance_id, \
                 first_ms, last_ms, max_severity, line_count, bytes, lines) \
                 SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, \
                 value->>6, value->>7, value->>8, json(value->9) FROM jsonb_each(?)",
            )
            .bind(&logs)
            .execute(&mut *tx)
            .await?;
        }
        for (function, n) in bytes {
            sqlx::query(
                "INSERT INTO log_accounts (function, bytes, dropped_lines) VALUES (?, ?, 0) \
                 ON CONFLICT (function) DO UPDATE SET bytes = bytes + excluded.bytes",
            )
            .bind(function)
            .bind(n)
            .execute(&mut *tx)
            .await?;
        }
        if !batch.events.is_empty() {
            sqlx::query(
                "INSERT INTO lifecycle_events (time_ms, function, instance_id, event, reason) \
                 SELECT value->>0, value->>1, value->>2, value->>3, value->>4 \
                 FROM jsonb_each(?)",
            )
            .bind(&events)
            .execute(&mut *tx)
            .await?;
        }
        for m in &batch.minutes {
            sqlx::query(
                "INSERT INTO instance_minutes (function, minute_ms, instances_max, \
                 provisioned_instance_ms, provisioned_mb_ms) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (function, minute_ms) DO UPDATE SET \
                 instances_max = max(instances_max, excluded.instances_max), \
                 provisioned_instance_ms = provisioned_instance_ms + excluded.provisioned_instance_ms, \
                 provisioned_mb_ms = provisioned_mb_ms + excluded.provisioned_mb_ms",
            )
            .bind(&m.function)
            .bind(m.minute_ms)
            .bind(m.instances_max as i64)
            .bind(m.provisioned_instance_ms)
            .bind(m.provisioned_mb_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn prune(&self, now_ms: i64, retention: &Retention) -> Result<PruneReport, StoreError> {
        let mut report = PruneReport::default();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let expired = expire_before(
            &mut tx,
            now_ms - retention.records_max_age_ms,
            now_ms - retention.logs_max_age_ms,
        )
        .await?;
        report.records_expired = expired.records;
        report.logs_expired = expired.log_lines;
        report.events_expired = expired.events;
        // Functions over their cap lose their oldest calls' lines down to 90% of it, so the next
        // few writes do not each trigger another pass.
        let over = sqlx::query("SELECT function, bytes FROM log_accounts WHERE bytes > ?")
            .bind(retention.log_bytes_per_function_max)
            .fetch_all(&mut *tx)
            .await?;
        for row in &over {
            let function: String = row.try_get("function")?;
            let bytes: i64 = row.try_get("bytes")?;
            let to_free = bytes - retention.log_bytes_per_function_max * 9 / 10;
            let (mut freed, mut lines, mut last_seq) = (0i64, 0u64, None);
            while freed < to_free {
                let oldest = sqlx::query(
                    "SELECT seq, bytes AS n, line_count FROM log_chunks \
                     WHERE function = ? AND seq > ? ORDER BY seq LIMIT 1000",
                )
                .bind(&function)
                .bind(last_seq.unwrap_or(i64::MIN))
                .fetch_all(&mut *tx)
                .await?;
                if oldest.is_empty() {
                    break;
                }
                for r in &oldest {
                    last_seq = Some(r.try_get::<i64, _>("seq")?);
                    freed += r.try_get::<i64, _>("n")?;
                    lines += r.try_get::<i64, _>("line_count")? as u64;
                    if freed >= to_free {
                        break;
                    }
                }
            }
            if let Some(last) = last_seq {
                sqlx::query("DELETE FROM log_chunks WHERE function = ? AND seq <= ?")
                    .bind(&function)
                    .bind(last)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "UPDATE log_accounts SET bytes = max(bytes - ?, 0), \
                 dropped_lines = dropped_lines + ? WHERE function = ?",
            )
            .bind(freed)
            .bind(lines as i64)
            .bind(&function)
            .execute(&mut *tx)
            .await?;
            report.logs_dropped.push((function, lines));
        }
        let size = shrink_to(&mut tx, now_ms, retention.telemetry_max_bytes).await?;
        report.records_dropped_for_size = size.records;
        report.log_lines_dropped_for_size = size.log_lines;
        report.events_dropped_for_size = size.events;
        tx.commit().await?;
        report.used_bytes = give_back_free_pages(&self.pool, retention.telemetry_max_bytes).await?;
        Ok(report)
    }

    async fn logs(&self, q: &LogQuery) -> Result<(Vec<LogRow>, Option<i64>), StoreError> {
        let limit = q.limit.max(1) as usize;
        let mut out = Vec::with_capacity(limit);
        // The cursor names a line: its chunk, and the lines of that chunk before it.
        let mut before = q.before_seq.unwrap_or(i64::MAX);
        let mut scanned = 0;
        loop {
            let chunk_before = before / LINES_PER_CHUNK_MAX
                + i64::from(before % LINES_PER_CHUNK_MAX != 0 || before == i64::MAX);
            let mut b = QueryBuilder::<Sqlite>::new(
                "SELECT seq, function, version, request_id, instance_id, lines FROM log_chunks \
                 WHERE max_severity >= ",
            );
            b.push_bind(q.min_severity);
            if let Some(f) = &q.function {
                b.push(" AND function = ").push_bind(f);
            }
            if let Some(id) = &q.request_id {
                b.push(" AND request_id = ").push_bind(id);
            }
            if let Some(since) = q.since_ms {
                b.push(" AND last_ms >= ").push_bind(since);
            }
            if let Some(until) = q.until_ms {
                b.push(" AND first_ms < ").push_bind(until);
            }
            let page = 200;
            b.push(" AND seq < ").push_bind(chunk_before);
            b.push(" ORDER BY seq DESC LIMIT ").push_bind(page);
            let chunks = b.build().fetch_all(&self.pool).await?;
            for c in &chunks {
                let seq: i64 = c.try_get("seq")?;
                scanned += 1;
                let lines: String = c.try_get("lines")?;
                let lines: Vec<(i64, i32, String, String)> = serde_json::from_str(&lines)
                    .map_err(|e| StoreError::Corrupt(format!("log chunk {seq}: {e}")))?;
                for (index, (time_ms, severity, level, message)) in
                    lines.into_iter().enumerate().rev()
                {
                    let cursor = seq * LINES_PER_CHUNK_MAX + index as i64;
                    if cursor >= before
                        || severity < q.min_severity
                        || q.since_ms.is_some_and(|s| time_ms < s)
                        || q.until_ms.is_some_and(|u| time_ms >= u)
                        || q.contains.as_ref().is_some_and(|c| !message.contains(c))
                        || q.regex.as_ref().is_some_and(|r| !r.is_match(&message))
                    {
                        continue;
                    }
                    out.push(LogRow {
                        seq: cursor,
                        time_ms,
                        function: c.try_get("function")?,
                        version: c.try_get("version")?,
                        request_id: c.try_get("request_id")?,
                        instance_id: c.try_get::<i64, _>("instance_id")? as u64,
                        severity,
                        level,
                        message,
                    });
                    if out.len() == limit {
                        return Ok((out, Some(cursor)));
                    }
                }
                before = seq * LINES_PER_CHUNK_MAX;
            }
            if (chunks.len() as i64) < page {
                return Ok((out, None));
            }
            if scanned >= CHUNKS_PER_QUERY_MAX {
                // Enough read for one answer; the caller continues from here.
                return Ok((out, Some(before)));
            }
        }
    }

    async fn logs_dropped(&self, function: &str) -> Result<u64, StoreError> {
        let n: Option<i64> =
            sqlx::query_scalar("SELECT dropped_lines FROM log_accounts WHERE function = ?")
                .bind(function)
                .fetch_optional(&self.pool)
                .await?;
        Ok(n.unwrap_or(0) as u64)
    }

    async fn events(&self, q: &EventQuery) -> Result<Vec<EventRow>, StoreError> {
        let mut b = QueryBuilder::<Sqlite>::new(
            "SELECT seq, time_ms, function, instance_id, event, reason FROM lifecycle_events \
             WHERE 1 = 1",
        );
        if let Some(f) = &q.function {
            b.push(" AND function = ").push_bind(f);
        }
        if let Some(e) = &q.event {
            b.push(" AND event = ").push_bind(e);
        }
        push_time_filters(&mut b, "time_ms", q.since_ms, q.until_ms);
        if let Some(s) = &q.contains {
            b.push(" AND instr(reason, ").push_bind(s).push(") > 0");
        }
        if let Some(before) = q.before_seq {
            b.push(" AND seq < ").push_bind(before);
        }
        b.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(q.limit as i64);
        let rows = b.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(EventRow {
                    seq: r.try_get("seq")?,
                    time_ms: r.try_get("time_ms")?,
                    function: r.try_get("function")?,
                    instance_id: r.try_get::<i64, _>("instance_id")? as u64,
                    event: r.try_get("event")?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn records(&self, q: &RecordQuery) -> Result<Vec<RecordRow>, StoreError> {
        let mut b = QueryBuilder::<Sqlite>::new("SELECT * FROM invocation_records WHERE 1 = 1");
        if let Some(f) = &q.function {
            b.push(" AND function = ").push_bind(f);
        }
        if let Some(id) = &q.request_id {
            b.push(" AND request_id = ").push_bind(id);
        }
        if let Some(trace) = &q.trace_id {
            // A traceparent is `00-<trace id>-<span id>-<flags>`.
            b.push(" AND substr(traceparent, 4, 32) = ")
                .push_bind(trace);
        }
        push_time_filters(&mut b, "started_at_ms", q.since_ms, q.until_ms);
        if let Some(before) = q.before_seq {
            b.push(" AND seq < ").push_bind(before);
        }
        b.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(q.limit as i64);
        let rows = b.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(record_from)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    async fn stats(
        &self,
        function: &str,
        since_ms: i64,
        until_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<StatsBucket>, StoreError> {
        let step_ms = step_ms.max(1);
        let mut buckets: std::collections::BTreeMap<i64, StatsBucket> = Default::default();
        let counts = sqlx::query(
            "SELECT (started_at_ms - ?1) / ?2 AS b, count(*) AS n, \
             sum(status = 'failed') AS errors, sum(attempt > 1) AS retries, \
             sum(cold) AS cold, sum(handler_ms) AS duration \
             FROM invocation_records WHERE function = ?3 AND started_at_ms >= ?1 \
             AND started_at_ms < ?4 AND status != 'throttled' GROUP BY b",
        )
        .bind(since_ms)
        .bind(step_ms)
        .bind(function)
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await?;
        let start = |b: i64| since_ms + b * step_ms;
        for r in &counts {
            let b: i64 = r.try_get("b")?;
            let e = buckets.entry(b).or_default();
            e.start_ms = start(b);
            e.invocations = r.try_get::<i64, _>("n")? as u64;
            e.errors = r.try_get::<i64, _>("errors")? as u64;
            e.retries = r.try_get::<i64, _>("retries")? as u64;
            e.cold_starts = r.try_get::<i64, _>("cold")? as u64;
            e.duration_sum_ms = r.try_get("duration")?;
        }
        let histogram = sqlx::query(
            "SELECT (started_at_ms - ?1) / ?2 AS b, duration_bucket AS d, count(*) AS n \
             FROM invocation_records WHERE function = ?3 AND started_at_ms >= ?1 \
             AND started_at_ms < ?4 AND status != 'throttled' GROUP BY b, d",
        )
        .bind(since_ms)
        .bind(step_ms)
        .bind(function)
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await?;
        for r in &histogram {
            let b: i64 = r.try_get("b")?;
            let e = buckets.entry(b).or_default();
            e.histogram
                .push((r.try_get("d")?, r.try_get::<i64, _>("n")? as u64));
        }
        // Throttled calls never reach an instance: their lifecycle events count them.
        let throttles = sqlx::query(
            "SELECT (time_ms - ?1) / ?2 AS b, count(*) AS n FROM lifecycle_events \
             WHERE function = ?3 AND event = 'throttled' AND time_ms >= ?1 AND time_ms < ?4 \
             GROUP BY b",
        )
        .bind(since_ms)
        .bind(step_ms)
        .bind(function)
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await?;
        for r in &throttles {
            let b: i64 = r.try_get("b")?;
            let e = buckets.entry(b).or_default();
            e.start_ms = start(b);
            e.throttles = r.try_get::<i64, _>("n")? as u64;
        }
        // Instances are sampled per minute: a minute counts in the step it starts in.
        let instances = sqlx::query(
            "SELECT (minute_ms - ?1) / ?2 AS b, max(instances_max) AS n FROM instance_minutes \
             WHERE function = ?3 AND minute_ms >= ?1 AND minute_ms < ?4 GROUP BY b",
        )
        .bind(since_ms - since_ms.rem_euclid(60_000))
        .bind(step_ms)
        .bind(function)
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await?;
        for r in &instances {
            let b: i64 = r.try_get::<i64, _>("b")?.max(0);
            let e = buckets.entry(b).or_default();
            e.start_ms = start(b);
            e.instances_max = e.instances_max.max(r.try_get::<i64, _>("n")? as u32);
        }
        for (b, e) in buckets.iter_mut() {
            e.start_ms = start(*b);
        }
        Ok(buckets.into_values().collect())
    }

    async fn usage(
        &self,
        since_ms: i64,
        until_ms: i64,
        by: UsageBy,
    ) -> Result<Vec<UsageRow>, StoreError> {
        let (key, minute_key) = match by {
            UsageBy::Function => ("function", "function"),
            UsageBy::Day => (
                "CAST((started_at_ms / 86400000) * 86400000 AS TEXT)",
                "CAST((minute_ms / 86400000) * 86400000 AS TEXT)",
            ),
        };
        let mut rows: std::collections::BTreeMap<String, UsageRow> = Default::default();
        // `key` is one of two constant expressions above, never input.
        let calls = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {key} AS k, count(*) AS n, sum(billed_ms) AS billed, \
             sum(billed_ms * memory_mb) AS mb_ms FROM invocation_records \
             WHERE started_at_ms >= ? AND started_at_ms < ? AND status != 'throttled' \
             GROUP BY k"
        )))
        .bind(since_ms)
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await?;
        for r in &calls {
            let k: String = r.try_get("k")?;
            let e = rows.entry(k.clone()).or_default();
            e.key = k;
            e.requests = r.try_get::<i64, _>("n")? as u64;
            e.billed_ms = r.try_get("billed")?;
            e.mb_ms = r.try_get("mb_ms")?;
        }
        let provisioned = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {minute_key} AS k, sum(provisioned_instance_ms) AS i, \
             sum(provisioned_mb_ms) AS m FROM instance_minutes \
             WHERE minute_ms >= ? AND minute_ms < ? AND provisioned_instance_ms > 0 GROUP BY k"
        )))
        .bind(since_ms - since_ms.rem_euclid(60_000))
        .bind(until_ms)
        .fetch_all(&self.pool)
        .await?;
        for r in &provisioned {
            let k: String = r.try_get("k")?;
            let e = rows.entry(k.clone()).or_default();
            e.key = k;
            e.provisioned_instance_ms = r.try_get("i")?;
            e.provisioned_mb_ms = r.try_get("m")?;
        }
        Ok(rows.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(function: &str, at: i64, ms: f64, status: &str, attempt: u32) -> RecordRow {
        RecordRow {
            seq: 0,
            request_id: format!("r{at}"),
            function: function.into(),
            version: "$LATEST".into(),
            trigger: "api".into(),
            attempt,
            started_at_ms: at,
            queue_ms: 0.0,
            init_ms: 0.0,
            handler_ms: ms,
            duration_ms: ms,
            cold: attempt == 1 && at == 0,
            status: status.into(),
            error_type: (status == "failed").then(|| "Error".into()),
            billed_ms: ms.ceil() as i64,
            memory_mb: 512,
            instance_id: 1,
            traceparent: None,
        }
    }

    /// A call that wrote one line.
    fn line(function: &str, seq_hint: i64, level: &str, message: &str) -> LogChunk {
        LogChunk {
            function: function.into(),
            version: "$LATEST".into(),
            request_id: format!("req-{}", seq_hint % 3),
            instance_id: 7,
            lines: vec![ChunkLine {
                time_ms: 1_000 + seq_hint,
                severity: severity_of(level),
                level: level.into(),
                message: message.into(),
            }],
        }
    }

    async fn open() -> (tempfile::TempDir, SqliteTelemetry) {
        let dir = tempfile::tempdir().unwrap();
        let t = SqliteTelemetry::open(&dir.path().join("telemetry.sqlite"))
            .await
            .unwrap();
        (dir, t)
    }

    #[test]
    fn percentiles_are_within_five_percent() {
        let histogram: Vec<(i64, u64)> = (1..=100)
            .map(|ms| (duration_bucket(ms as f64), 1))
            .collect();
        let p50 = quantile_ms(&histogram, 0.5).unwrap();
        let p99 = quantile_ms(&histogram, 0.99).unwrap();
        assert!((50.0..=52.5).contains(&p50), "{p50}");
        assert!((99.0..=104.0).contains(&p99), "{p99}");
        assert_eq!(quantile_ms(&[], 0.5), None);
    }

    #[tokio::test]
    async fn logs_filter_by_level_time_text_regex_and_request() {
        let (_dir, t) = open().await;
        let mut batch = Batch::default();
        for i in 0..30 {
            let level = ["DEBUG", "INFO", "ERROR"][i as usize % 3];
            batch
                .logs
                .push(line("f", i, level, &format!("line {i} order-{}", i * 7)));
        }
        batch.logs.push(line("g", 0, "ERROR", "other function"));
        t.write(&batch).await.unwrap();
        let q = |f: &dyn Fn(&mut LogQuery)| {
            let mut q = LogQuery {
                function: Some("f".into()),
                limit: 100,
                ..Default::default()
            };
            f(&mut q);
            q
        };
        let all = t.logs(&q(&|_| {})).await.unwrap().0;
        assert_eq!(all.len(), 30);
        assert!(all.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
        let errors = t.logs(&q(&|q| q.min_severity = 40)).await.unwrap().0;
        assert_eq!(errors.len(), 10);
        let info_up = t.logs(&q(&|q| q.min_severity = 20)).await.unwrap().0;
        assert_eq!(info_up.len(), 20);
        let late = t.logs(&q(&|q| q.since_ms = Some(1_020))).await.unwrap().0;
        assert_eq!(late.len(), 10);
        let window = t
            .logs(&q(&|q| {
                q.since_ms = Some(1_005);
                q.until_ms = Some(1_010)
            }))
            .await
            .unwrap()
            .0;
        assert_eq!(window.len(), 5);
        let text = t
            .logs(&q(&|q| q.contains = Some("line 1".into())))
            .await
            .unwrap()
            .0;
        assert_eq!(text.len(), 11, "line 1 and line 10-19");
        let re = t
            .logs(&q(&|q| {
                q.regex = Some(regex::Regex::new(r"order-\d{3}$").unwrap())
            }))
            .await
            .unwrap()
            .0;
        assert_eq!(re.len(), 15, "i*7 >= 100 from i = 15");
        let req = t
            .logs(&q(&|q| q.request_id = Some("req-1".into())))
            .await
            .unwrap()
            .0;
        assert_eq!(req.len(), 10);
        let page = t
            .logs(&q(&|q| {
                q.limit = 4;
                q.before_seq = Some(all[3].seq)
            }))
            .await
            .unwrap();
        assert_eq!(page.0, all[4..8].to_vec());
        assert_eq!(page.1, Some(all[7].seq), "a cursor for the next page");
        let last = t
            .logs(&q(&|q| q.before_seq = Some(all[27].seq)))
            .await
            .unwrap();
        assert_eq!(
            (last.0.len(), last.1),
            (2, None),
            "the last page has no cursor"
        );
    }

    #[tokio::test]
    async fn the_log_cap_drops_the_oldest_lines_and_counts_them() {
        let (_dir, t) = open().await;
        let mut batch = Batch::default();
        batch.logs.push(line("g", 0, "INFO", "0123456789"));
        for i in 0..100 {
            batch.logs.push(line("f", i, "INFO", &format!("{i:0>10}")));
        }
        t.write(&batch).await.unwrap();
        let retention = Retention {
            records_max_age_ms: i64::MAX / 2,
            logs_max_age_ms: i64::MAX / 2,
            log_bytes_per_function_max: 500,
            telemetry_max_bytes: i64::MAX,
        };
        let report = t.prune(10_000, &retention).await.unwrap();
        // 1,000 bytes in, the cap is 500: down to 450, so the 55 oldest lines go.
        assert_eq!(report.logs_dropped, vec![("f".to_string(), 55)]);
        let left = t
            .logs(&LogQuery {
                function: Some("f".into()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .0;
        assert_eq!(left.len(), 45);
        assert_eq!(left.last().unwrap().message, "0000000055");
        assert_eq!(t.logs_dropped("f").await.unwrap(), 55);
        assert_eq!(t.logs_dropped("g").await.unwrap(), 0);
        // Age: everything before 1,050 goes, without counting as dropped.
        let report = t
            .prune(
                2_050,
                &Retention {
                    logs_max_age_ms: 1_000,
                    ..retention
                },
            )
            .await
            .unwrap();
        assert_eq!(report.logs_expired, 1, "g's one line at 1,000");
        assert_eq!(t.logs_dropped("f").await.unwrap(), 55);
    }

    #[tokio::test]
    async fn stats_and_usage_add_up() {
        let (_dir, t) = open().await;
        let mut batch = Batch::default();
        for i in 0..10 {
            batch
                .records
                .push(record("f", i * 1_000, 10.0, "succeeded", 1));
        }
        batch.records.push(record("f", 65_000, 100.0, "failed", 2));
        batch.records.push(record("g", 1_000, 3.0, "succeeded", 1));
        batch.events.push(EventRow {
            seq: 0,
            time_ms: 61_000,
            function: "f".into(),
            instance_id: 0,
            event: "throttled".into(),
            reason: "max_instances".into(),
        });
        batch.minutes.push(MinuteSample {
            function: "f".into(),
            minute_ms: 60_000,
            instances_max: 3,
            provisioned_instance_ms: 60_000,
            provisioned_mb_ms: 60_000 * 512,
        });
        t.write(&batch).await.unwrap();
        let stats = t.stats("f", 0, 120_000, 60_000).await.unwrap();
        assert_eq!(stats.len(), 2);
        assert_eq!(
            (stats[0].start_ms, stats[0].invocations, stats[0].errors),
            (0, 10, 0)
        );
        assert_eq!(stats[0].cold_starts, 1);
        assert_eq!(
            (
                stats[1].invocations,
                stats[1].errors,
                stats[1].retries,
                stats[1].throttles,
                stats[1].instances_max
            ),
            (1, 1, 1, 1, 3)
        );
        let p50 = quantile_ms(&stats[0].histogram, 0.5).unwrap();
        assert!((10.0..10.5).contains(&p50), "{p50}");
        let usage = t.usage(0, 120_000, UsageBy::Function).await.unwrap();
        assert_eq!(usage.len(), 2);
        assert_eq!(usage[0].key, "f");
        assert_eq!(usage[0].requests, 11);
        assert_eq!(usage[0].billed_ms, 200);
        assert_eq!(usage[0].mb_ms, 200 * 512);
        assert_eq!(usage[0].provisioned_mb_ms, 60_000 * 512);
        let days = t.usage(0, 120_000, UsageBy::Day).await.unwrap();
        assert_eq!(days.len(), 1);
        assert_eq!((days[0].key.as_str(), days[0].requests), ("0", 12));
    }

    /// A batch of `n` calls that each wrote one line of `bytes` bytes.
    fn big_batch(n: usize, bytes: usize, at: i64) -> Batch {
        let mut batch = Batch::default();
        for i in 0..n {
            let mut chunk = line("f", at + i as i64, "INFO", &"x".repeat(bytes));
            chunk.lines[0].time_ms = at + i as i64;
            batch.logs.push(chunk);
            batch
                .records
                .push(record("f", at + i as i64, 1.0, "succeeded", 2));
        }
        batch
    }

    #[tokio::test]
    async fn writes_work_again_once_a_full_disk_has_room() {
        let disk = crate::testfs::SmallDisk::mount(2048);
        let ballast = disk.ballast(1024 * 1024);
        let t = std::sync::Arc::new(
            SqliteTelemetry::open(&disk.path().join("telemetry.db"))
                .await
                .unwrap(),
        );
        let mut full = None;
        for i in 0..200 {
            if let Err(e) = t.write(&big_batch(20, 4096, i * 100)).await {
                full = Some(e);
                break;
            }
        }
        let full = full.expect("a 2 MB disk fills up");
        assert!(crate::testfs::is_full(&full), "{full}");
        std::fs::remove_file(ballast).unwrap();
        // Every connection of the pool must work again: writes one after another, and as
        // many at once as the pool has connections and more.
        for i in 0..6 {
            t.write(&big_batch(2, 100, 1_000_000 + i)).await.unwrap();
        }
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let t = t.clone();
                tokio::spawn(async move { t.write(&big_batch(2, 100, 2_000_000 + i)).await })
            })
            .collect();
        for w in writers {
            w.await.unwrap().unwrap();
        }
        let newest = t
            .records(&RecordQuery {
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(newest[0].started_at_ms >= 2_000_000);
    }

    /// The database's pages (in use or free), in bytes: how big its file is once the WAL is
    /// checkpointed.
    async fn file_bytes(t: &SqliteTelemetry) -> i64 {
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&t.pool)
            .await
            .unwrap();
        let size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&t.pool)
            .await
            .unwrap();
        pages * size
    }

    #[tokio::test]
    async fn the_size_cap_drops_the_oldest_first_counts_them_and_bounds_the_file() {
        let (_dir, t) = open().await;
        let unbounded = Retention {
            records_max_age_ms: i64::MAX / 2,
            logs_max_age_ms: i64::MAX / 2,
            log_bytes_per_function_max: i64::MAX,
            telemetry_max_bytes: i64::MAX,
        };
        // 2,000 calls, one a millisecond, each with a record and a 400-byte line.
        /// Writes 2,000 calls from `at` on, returning the time after them.
        async fn write_calls(t: &SqliteTelemetry, mut at: i64) -> i64 {
            for _ in 0..10 {
                t.write(&big_batch(200, 400, at)).await.unwrap();
                at += 200;
            }
            at
        }
        let mut at = write_calls(&t, 0).await;
        let before = t.prune(at, &unbounded).await.unwrap();
        assert_eq!(before.records_dropped_for_size, 0);
        let max_bytes = before.used_bytes / 2;
        let capped = Retention {
            telemetry_max_bytes: max_bytes,
            ..unbounded
        };
        let report = t.prune(at, &capped).await.unwrap();
        assert!(
            report.used_bytes <= max_bytes,
            "{report:?}, cap {max_bytes}"
        );
        assert!(
            report.used_bytes > max_bytes / 2,
            "not much more than needed: {report:?}"
        );
        let left = t
            .records(&RecordQuery {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(report.records_dropped_for_size, 2_000 - left.len() as u64);
        // The oldest went: what is left is the newest, without a gap.
        assert_eq!(
            left.last().unwrap().started_at_ms,
            2_000 - left.len() as i64
        );
        let lines_left = t
            .logs(&LogQuery {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .0;
        assert_eq!(
            report.log_lines_dropped_for_size,
            2_000 - lines_left.len() as u64
        );
        assert_eq!(
            t.logs_dropped("f").await.unwrap(),
            report.log_lines_dropped_for_size
        );
        assert_eq!((report.records_expired, report.logs_expired), (0, 0));
        // Writing as much again and pruning, over and over, the file stays within the cap
        // and the free room kept for the next writes.
        for _ in 0..3 {
            at = write_calls(&t, at).await;
            let report = t.prune(at, &capped).await.unwrap();
            assert!(report.used_bytes <= max_bytes, "{report:?}");
            assert!(report.records_dropped_for_size > 0, "{report:?}");
            let file = file_bytes(&t).await;
            assert!(
                file <= max_bytes + max_bytes / 10 + 8192,
                "{file} > {max_bytes}"
            );
        }
    }
}
