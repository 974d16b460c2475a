//! The durable queue of asynchronous invocations: the `AsyncQueue` trait (the cluster mode
//! will put NATS JetStream behind it) and its SQLite implementation, a table in the same
//! database as the functions.

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Row;

use crate::{SqliteStore, StoreError};

/// An event submitted for asynchronous invocation.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub id: String,
    /// The target: `name` or `name:qualifier`.
    pub function: String,
    pub payload: Bytes,
    pub idempotency_key: Option<String>,
    /// The submission's W3C `traceparent`; attempts continue its trace.
    pub traceparent: Option<String>,
    /// What submitted it when not a client (`timer:nightly`); its attempts are named so.
    pub source: Option<String>,
    pub now_ms: i64,
    /// Stored as claimed by its submitter under this lease, its first attempt started
    /// (`running`, one attempt): the node runs it the moment it is committed, with no claim
    /// round. A crash leaves it `running` until the lease is released or runs out.
    pub claimed: Option<Lease>,
    /// Hops of the chain of calls its attempts continue (loop protection; 0: none).
    pub lineage: u32,
}

/// A node's hold on the invocations it runs: theirs until `until_ms`, renewed while they
/// run. The same shape for every claim, so renewing is one statement per node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub node: String,
    pub until_ms: i64,
}

/// What became of a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Accepted {
    New,
    /// The same idempotency key was submitted before: the earlier invocation's id.
    Duplicate(String),
}

/// Where an asynchronous invocation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsyncStatus {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Failed,
    Expired,
    DeadLettered,
}

impl AsyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AsyncStatus::Queued => "queued",
            AsyncStatus::Running => "running",
            AsyncStatus::Retrying => "retrying",
            AsyncStatus::Succeeded => "succeeded",
            AsyncStatus::Failed => "failed",
            AsyncStatus::Expired => "expired",
            AsyncStatus::DeadLettered => "dead_lettered",
        }
    }

    /// The status `as_str` names; a name no status has is a corrupt record.
    pub fn parse(s: &str) -> Result<AsyncStatus, StoreError> {
        Ok(match s {
            "queued" => AsyncStatus::Queued,
            "running" => AsyncStatus::Running,
            "retrying" => AsyncStatus::Retrying,
            "succeeded" => AsyncStatus::Succeeded,
            "failed" => AsyncStatus::Failed,
            "expired" => AsyncStatus::Expired,
            "dead_lettered" => AsyncStatus::DeadLettered,
            other => return Err(StoreError::Corrupt(format!("invocation status `{other}`"))),
        })
    }

    /// Whether the invocation is done (no attempt is coming).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            AsyncStatus::Queued | AsyncStatus::Running | AsyncStatus::Retrying
        )
    }
}

/// One stored asynchronous invocation.
#[derive(Clone, Debug)]
pub struct AsyncRecord {
    pub id: String,
    pub function: String,
    pub payload: Bytes,
    pub status: AsyncStatus,
    /// Attempts started; a re-delivered attempt (after a crash) counts again.
    pub attempts: u32,
    /// Attempts in which the function failed.
    pub function_errors: u32,
    pub enqueued_at_ms: i64,
    pub next_attempt_at_ms: i64,
    pub updated_at_ms: i64,
    /// The result of a success, or the error (JSON) of the last failure.
    pub result: Option<Vec<u8>>,
    pub version: Option<String>,
    /// The submission's W3C `traceparent`.
    pub traceparent: Option<String>,
    /// What submitted it when not a client (`timer:nightly`).
    pub source: Option<String>,
    /// Hops of the chain of calls its attempts continue.
    pub lineage: u32,
}

/// How an attempt ended.
#[derive(Clone, Debug)]
pub enum Finish {
    /// For good: succeeded, failed, expired or dead-lettered.
    Done {
        status: AsyncStatus,
        result: Option<Vec<u8>>,
        version: Option<String>,
        /// The last attempt was a function error.
        function_error: bool,
    },
    /// Another attempt at `at_ms`; `function_error` counts it against `max_retries`.
    Retry {
        at_ms: i64,
        function_error: bool,
        result: Option<Vec<u8>>,
    },
}

/// The durable queue of asynchronous invocations.
#[async_trait]
pub trait AsyncQueue: Send + Sync + 'static {
    /// Stores a batch of submissions in one transaction (one commit for many events).
    async fn enqueue(&self, events: &[NewEvent]) -> Result<Vec<Accepted>, StoreError>;
    /// Starts up to `limit` due invocations (queued, or retrying whose time has come) of
    /// each `(target, limit)` in arrival order: marks them running under `lease` and counts
    /// their attempt, in one transaction.
    async fn claim(
        &self,
        wants: &[(String, usize)],
        now_ms: i64,
        lease: &Lease,
    ) -> Result<Vec<AsyncRecord>, StoreError>;
    async fn finish(
        &self,
        id: &str,
        how: &Finish,
        node: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.finish_many(&[(id.to_string(), how.clone())], node, now_ms)
            .await
    }
    /// Records the ends of several of `node`'s attempts in one transaction. An attempt
    /// another node holds now (its lease ran out and it was taken again) is left to that
    /// node: its end is that attempt's to record.
    async fn finish_many(
        &self,
        ends: &[(String, Finish)],
        node: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Extends every running invocation `lease.node` holds to `lease.until_ms`; how many.
    async fn renew(&self, lease: &Lease) -> Result<u64, StoreError>;
    /// A node starting again: the attempts it held before are due again at once
    /// (at-least-once); how many.
    async fn release(&self, node: &str, now_ms: i64) -> Result<u64, StoreError>;
    /// Any node's running invocations whose lease ran out by `now_ms` are due again: their
    /// node died or stalled. How many, per target.
    async fn requeue_expired(&self, now_ms: i64) -> Result<Vec<(String, usize)>, StoreError>;
    async fn get(&self, id: &str) -> Result<Option<AsyncRecord>, StoreError>;
    /// Invocations with `status`, optionally of one function, oldest first.
    async fn list(
        &self,
        status: AsyncStatus,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AsyncRecord>, StoreError>;
    /// Queues dead-lettered invocations again, as new (attempts and errors reset).
    async fn redrive(&self, ids: &[String], now_ms: i64) -> Result<u64, StoreError>;
    /// Invocations not finished, per function target.
    async fn pending(&self) -> Result<Vec<(String, usize)>, StoreError>;
    /// Invocations waiting for an attempt (queued, or retrying later), per target: what
    /// any node may claim, the ones other nodes accepted included.
    async fn waiting(&self) -> Result<Vec<(String, usize)>, StoreError>;
    /// Deletes finished invocations last changed before `before_ms`.
    async fn purge(&self, before_ms: i64) -> Result<u64, StoreError>;
}

/// The columns of an `AsyncRecord`, as a literal so queries stay static strings.
macro_rules! columns {
    () => {
        "id, function, payload, status, attempts, function_errors, enqueued_at_ms, \
         next_attempt_at_ms, updated_at_ms, result, version, traceparent, source, lineage"
    };
}

fn row_to_record(r: &sqlx::sqlite::SqliteRow) -> Result<AsyncRecord, StoreError> {
    Ok(AsyncRecord {
        id: r.try_get("id")?,
        function: r.try_get("function")?,
        payload: Bytes::from(r.try_get::<Vec<u8>, _>("payload")?),
        status: AsyncStatus::parse(r.try_get("status")?)?,
        attempts: r.try_get::<i64, _>("attempts")? as u32,
        function_errors: r.try_get::<i64, _>("function_errors")? as u32,
        enqueued_at_ms: r.try_get("enqueued_at_ms")?,
        next_attempt_at_ms: r.try_get("next_attempt_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
        result: r.try_get("result")?,
        version: r.try_get("version")?,
        traceparent: r.try_get("traceparent")?,
        source: r.try_get("source")?,
        lineage: r.try_get::<i64, _>("lineage")? as u32,
    })
}

/// One attempt's end, inside a transaction.
async fn finish_in(
    tx: &mut sqlx::SqliteConnection,
    id: &str,
    how: &Finish,
    node: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    match how {
        Finish::Done {
            status,
            result,
            version,
            function_error,
        } => {
            sqlx::query(
                "UPDATE async_invocations
                     SET status = ?, result = ?, version = ?, updated_at_ms = ?,
                         function_errors = function_errors + ?, owner = NULL
                     WHERE id = ? AND (status <> 'running' OR owner = ?)",
            )
            .bind(status.as_str())
            .bind(result)
            .bind(version)
            .bind(now_ms)
            .bind(i64::from(*function_error))
            .bind(id)
            .bind(node)
            .execute(&mut *tx)
            .await?;
        }
        Finish::Retry {
            at_ms,
            function_error,
            result,
        } => {
            sqlx::query(
                "UPDATE async_invocations
                     SET status = 'retrying', next_attempt_at_ms = ?, result = ?,
                         function_errors = function_errors + ?, updated_at_ms = ?, owner = NULL
                     WHERE id = ? AND (status <> 'running' OR owner = ?)",
            )
            .bind(at_ms)
            .bind(result)
            .bind(i64::from(*function_error))
            .bind(now_ms)
            .bind(id)
            .bind(node)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

#[async_trait]
impl AsyncQueue for SqliteStore {
    async fn enqueue(&self, events: &[NewEvent]) -> Result<Vec<Accepted>, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            // One statement for a new event, keyed or not: the unique index on the key
            // decides, and only a repeat reads the earlier id (a read before every insert
            // was most of what an idempotency key cost).
            let inserted = sqlx::query(
                "INSERT INTO async_invocations (id, function, payload, status, attempts,
                    function_errors, enqueued_at_ms, next_attempt_at_ms, updated_at_ms,
                    idempotency_key, traceparent, source, lineage, owner, lease_until_ms)
                 VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (function, idempotency_key) WHERE idempotency_key IS NOT NULL
                    DO NOTHING",
            )
            .bind(&e.id)
            .bind(&e.function)
            .bind(&e.payload[..])
            .bind(if e.claimed.is_some() {
                "running"
            } else {
                "queued"
            })
            .bind(i64::from(e.claimed.is_some()))
            .bind(e.now_ms)
            .bind(e.now_ms)
            .bind(e.now_ms)
            .bind(&e.idempotency_key)
            .bind(&e.traceparent)
            .bind(&e.source)
            .bind(i64::from(e.lineage))
            .bind(e.claimed.as_ref().map(|l| &l.node))
            .bind(e.claimed.as_ref().map_or(0, |l| l.until_ms))
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 1 {
                out.push(Accepted::New);
                continue;
            }
            let earlier = sqlx::query(
                "SELECT id FROM async_invocations WHERE function = ? AND idempotency_key = ?",
            )
            .bind(&e.function)
            .bind(&e.idempotency_key)
            .fetch_one(&mut *tx)
            .await?;
            out.push(Accepted::Duplicate(earlier.try_get("id")?));
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn claim(
        &self,
        wants: &[(String, usize)],
        now_ms: i64,
        lease: &Lease,
    ) -> Result<Vec<AsyncRecord>, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut out = Vec::new();
        for (target, limit) in wants {
            let rows = sqlx::query(concat!(
                "UPDATE async_invocations
                 SET status = 'running', attempts = attempts + 1, updated_at_ms = ?,
                     owner = ?, lease_until_ms = ?
                 WHERE id IN (
                    SELECT id FROM async_invocations
                    WHERE function = ? AND status IN ('queued', 'retrying')
                      AND next_attempt_at_ms <= ?
                    ORDER BY enqueued_at_ms, rowid LIMIT ?)
                 RETURNING ",
                columns!()
            ))
            .bind(now_ms)
            .bind(&lease.node)
            .bind(lease.until_ms)
            .bind(target)
            .bind(now_ms)
            .bind(*limit as i64)
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                out.push(row_to_record(row)?);
            }
        }
        tx.commit().await?;
        // RETURNING gives no order; arrival order is what the dispatcher starts them in.
        out.sort_by_key(|r| r.enqueued_at_ms);
        Ok(out)
    }

    async fn finish_many(
        &self,
        ends: &[(String, Finish)],
        node: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for (id, how) in ends {
            finish_in(&mut tx, id, how, node, now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn renew(&self, lease: &Lease) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE async_invocations SET lease_until_ms = ?
             WHERE status = 'running' AND owner = ?",
        )
        .bind(lease.until_ms)
        .bind(&lease.node)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn release(&self, node: &str, now_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE async_invocations SET status = 'queued', owner = NULL,
                next_attempt_at_ms = ?1, updated_at_ms = ?1
             WHERE status = 'running' AND owner = ?2",
        )
        .bind(now_ms)
        .bind(node)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn requeue_expired(&self, now_ms: i64) -> Result<Vec<(String, usize)>, StoreError> {
        let rows = sqlx::query(
            "UPDATE async_invocations SET status = 'queued', owner = NULL,
                next_attempt_at_ms = ?1, updated_at_ms = ?1
             WHERE status = 'running' AND lease_until_ms < ?1
             RETURNING function",
        )
        .bind(now_ms)
        .fetch_all(&self.writer)
        .await?;
        let mut per_target = std::collections::BTreeMap::<String, usize>::new();
        for r in &rows {
            *per_target.entry(r.try_get("function")?).or_insert(0) += 1;
        }
        Ok(per_target.into_iter().collect())
    }

    async fn get(&self, id: &str) -> Result<Option<AsyncRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM async_invocations WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_to_record).transpose()
    }

    async fn list(
        &self,
        status: AsyncStatus,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AsyncRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM async_invocations
             WHERE status = ? AND (? IS NULL OR function = ? OR function LIKE ? || ':%')
             ORDER BY rowid LIMIT ?"
        ))
        .bind(status.as_str())
        .bind(function)
        .bind(function)
        .bind(function)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_record).collect()
    }

    async fn redrive(&self, ids: &[String], now_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut n = 0;
        for id in ids {
            let done = sqlx::query(
                "UPDATE async_invocations
                 SET status = 'queued', attempts = 0, function_errors = 0, result = NULL,
                     enqueued_at_ms = ?, next_attempt_at_ms = ?, updated_at_ms = ?
                 WHERE id = ? AND status = 'dead_lettered'",
            )
            .bind(now_ms)
            .bind(now_ms)
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            n += done.rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }

    async fn pending(&self) -> Result<Vec<(String, usize)>, StoreError> {
        let rows = sqlx::query(
            "SELECT function, COUNT(*) AS n FROM async_invocations
             WHERE status IN ('queued', 'running', 'retrying') GROUP BY function",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("function")?, r.try_get::<i64, _>("n")? as usize)))
            .collect()
    }

    async fn waiting(&self) -> Result<Vec<(String, usize)>, StoreError> {
        let rows = sqlx::query(
            "SELECT function, COUNT(*) AS n FROM async_invocations
             WHERE status IN ('queued', 'retrying') GROUP BY function",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("function")?, r.try_get::<i64, _>("n")? as usize)))
            .collect()
    }

    async fn purge(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM async_invocations
             WHERE status NOT IN ('queued', 'running', 'retrying') AND updated_at_ms < ?",
        )
        .bind(before_ms)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::queue::{event, lease};

    #[tokio::test]
    async fn claims_in_arrival_order_and_survives_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let q = SqliteStore::open(&tmp.path().join("q.db")).await.unwrap();
        crate::testkit::queue::claims_in_arrival_order_and_survives_a_crash(&q).await;
    }

    #[tokio::test]
    async fn a_claimed_submission_is_running_at_once_and_a_restart_queues_it_again() {
        let tmp = tempfile::tempdir().unwrap();
        let q = SqliteStore::open(&tmp.path().join("q.db")).await.unwrap();
        crate::testkit::queue::a_claimed_submission_is_running_at_once_and_a_restart_queues_it_again(&q).await;
    }

    #[tokio::test]
    async fn leases_hold_running_invocations_and_any_node_requeues_expired_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let q = SqliteStore::open(&tmp.path().join("q.db")).await.unwrap();
        crate::testkit::queue::leases_hold_running_invocations_and_any_node_requeues_expired_ones(
            &q,
        )
        .await;
    }

    #[tokio::test]
    async fn renewing_finishing_and_requeueing_at_once_never_deadlock() {
        let tmp = tempfile::tempdir().unwrap();
        let q = SqliteStore::open(&tmp.path().join("q.db")).await.unwrap();
        crate::testkit::queue::renewing_finishing_and_requeueing_at_once_never_deadlock(&q).await;
    }

    #[tokio::test]
    async fn submissions_work_again_once_a_full_disk_has_room() {
        let disk = crate::testfs::SmallDisk::mount(2048);
        let ballast = disk.ballast(1024 * 1024);
        let q = std::sync::Arc::new(SqliteStore::open(&disk.path().join("q.db")).await.unwrap());
        let big = |id: String| NewEvent {
            payload: Bytes::from(vec![b'x'; 32 * 1024]),
            ..event(&id, "f", None, 1)
        };
        let mut full = None;
        for i in 0..200 {
            let batch: Vec<_> = (0..4).map(|j| big(format!("e{i}-{j}"))).collect();
            if let Err(e) = q.enqueue(&batch).await {
                full = Some(e);
                break;
            }
        }
        let full = full.expect("a 2 MB disk fills up");
        assert!(crate::testfs::is_full(&full), "{full}");
        std::fs::remove_file(ballast).unwrap();
        for i in 0..6 {
            q.enqueue(&[event(&format!("a{i}"), "g", None, 2)])
                .await
                .unwrap();
        }
        let submitters: Vec<_> = (0..8)
            .map(|i| {
                let q = q.clone();
                tokio::spawn(async move {
                    q.enqueue(&[event(&format!("b{i}"), "g", Some(&format!("k{i}")), 3)])
                        .await
                })
            })
            .collect();
        for s in submitters {
            assert_eq!(s.await.unwrap().unwrap(), vec![Accepted::New]);
        }
        let claimed = q
            .claim(&[("g".into(), 100)], 10, &lease("n1", 1_000))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 14);
        let ends: Vec<_> = claimed
            .iter()
            .map(|r| {
                (
                    r.id.clone(),
                    Finish::Done {
                        status: AsyncStatus::Succeeded,
                        result: None,
                        version: None,
                        function_error: false,
                    },
                )
            })
            .collect();
        q.finish_many(&ends, "n1", 11).await.unwrap();
    }
}
