//! `AsyncQueue` on PostgreSQL: nodes claim due invocations with `FOR UPDATE SKIP LOCKED`,
//! so two nodes claiming at once take different rows instead of waiting on each other.

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Row;
use sqlx::postgres::PgRow;
use store::{Accepted, AsyncQueue, AsyncRecord, AsyncStatus, Finish, Lease, NewEvent, StoreError};

use crate::PgStore;

/// The columns of an `AsyncRecord`, as a literal so queries stay static strings.
macro_rules! columns {
    () => {
        "id, function, payload, status, attempts, function_errors, enqueued_at_ms, \
         next_attempt_at_ms, updated_at_ms, result, version, traceparent, source, lineage"
    };
}

fn row_to_record(r: &PgRow) -> Result<AsyncRecord, StoreError> {
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

#[async_trait]
impl AsyncQueue for PgStore {
    async fn enqueue(&self, events: &[NewEvent]) -> Result<Vec<Accepted>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            // A repeated key meets the unique index (a concurrent insert of the same key
            // waits for the other's commit) and reads the earlier id.
            let inserted = sqlx::query(
                "INSERT INTO async_invocations (id, function, payload, status, attempts,
                    function_errors, enqueued_at_ms, next_attempt_at_ms, updated_at_ms,
                    idempotency_key, traceparent, source, lineage, owner, lease_until_ms)
                 VALUES ($1, $2, $3, $4, $5, 0, $6, $6, $6, $7, $8, $9, $10, $11, $12)
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
                "SELECT id FROM async_invocations WHERE function = $1 AND idempotency_key = $2",
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
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::new();
        for (target, limit) in wants {
            let rows = sqlx::query(concat!(
                "UPDATE async_invocations
                 SET status = 'running', attempts = attempts + 1, updated_at_ms = $1,
                     owner = $2, lease_until_ms = $3
                 WHERE id IN (
                    SELECT id FROM async_invocations
                    WHERE function = $4 AND status IN ('queued', 'retrying')
                      AND next_attempt_at_ms <= $1
                    ORDER BY enqueued_at_ms, seq LIMIT $5
                    FOR UPDATE SKIP LOCKED)
                 RETURNING ",
                columns!()
            ))
            .bind(now_ms)
            .bind(&lease.node)
            .bind(lease.until_ms)
            .bind(target)
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
        // In id order: two nodes finishing overlapping sets lock rows in the same order.
        let mut sorted: Vec<&(String, Finish)> = ends.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tx = self.pool.begin().await?;
        for (id, how) in sorted {
            match how {
                Finish::Done {
                    status,
                    result,
                    version,
                    function_error,
                } => {
                    sqlx::query(
                        "UPDATE async_invocations
                         SET status = $1, result = $2, version = $3, updated_at_ms = $4,
                             function_errors = function_errors + $5, owner = NULL
                         WHERE id = $6 AND (status <> 'running' OR owner = $7)",
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
                         SET status = 'retrying', next_attempt_at_ms = $1, result = $2,
                             function_errors = function_errors + $3, updated_at_ms = $4,
                             owner = NULL
                         WHERE id = $5 AND (status <> 'running' OR owner = $6)",
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
        }
        tx.commit().await?;
        Ok(())
    }

    async fn renew(&self, lease: &Lease) -> Result<u64, StoreError> {
        // Rows another transaction holds are skipped: they are being ended (by this node's
        // `finish_many`) or taken over (by a node's `requeue_expired`), and renewing them
        // would wait on that transaction in an order of its own (a deadlock with a batch of
        // ends, seen under load). A skipped row still running is renewed next time, a third
        // of the lease later.
        let done = sqlx::query(
            "UPDATE async_invocations SET lease_until_ms = $1
             WHERE id IN (
                SELECT id FROM async_invocations WHERE status = 'running' AND owner = $2
                FOR UPDATE SKIP LOCKED)
               AND status = 'running' AND owner = $2",
        )
        .bind(lease.until_ms)
        .bind(&lease.node)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn release(&self, node: &str, now_ms: i64) -> Result<u64, StoreError> {
        // Locked in id order, as `finish_many` locks its rows, so the two never deadlock.
        let done = sqlx::query(
            "UPDATE async_invocations SET status = 'queued', owner = NULL,
                next_attempt_at_ms = $1, updated_at_ms = $1
             WHERE id IN (
                SELECT id FROM async_invocations WHERE status = 'running' AND owner = $2
                ORDER BY id FOR UPDATE)
               AND status = 'running' AND owner = $2",
        )
        .bind(now_ms)
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn requeue_expired(&self, now_ms: i64) -> Result<Vec<(String, usize)>, StoreError> {
        // Rows another transaction holds are skipped: their node is ending them after all,
        // or another node is requeueing them now; waiting on either could deadlock.
        let rows = sqlx::query(
            "UPDATE async_invocations SET status = 'queued', owner = NULL,
                next_attempt_at_ms = $1, updated_at_ms = $1
             WHERE id IN (
                SELECT id FROM async_invocations WHERE status = 'running' AND lease_until_ms < $1
                FOR UPDATE SKIP LOCKED)
               AND status = 'running' AND lease_until_ms < $1
             RETURNING function",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
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
            " FROM async_invocations WHERE id = $1"
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
             WHERE status = $1 AND ($2::TEXT IS NULL OR function = $2 OR function LIKE $2 || ':%')
             ORDER BY seq LIMIT $3"
        ))
        .bind(status.as_str())
        .bind(function)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_record).collect()
    }

    async fn redrive(&self, ids: &[String], now_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE async_invocations
             SET status = 'queued', attempts = 0, function_errors = 0, result = NULL,
                 enqueued_at_ms = $1, next_attempt_at_ms = $1, updated_at_ms = $1
             WHERE id = ANY($2) AND status = 'dead_lettered'",
        )
        .bind(now_ms)
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
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
        // The partial index `async_waiting` holds exactly these rows.
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
             WHERE status NOT IN ('queued', 'running', 'retrying') AND updated_at_ms < $1",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    //! The contract every `AsyncQueue` keeps (`store::testkit::queue`), on PostgreSQL.

    crate::testing::contract!(
        queue;
        claims_in_arrival_order_and_survives_a_crash,
        a_claimed_submission_is_running_at_once_and_a_restart_queues_it_again,
        leases_hold_running_invocations_and_any_node_requeues_expired_ones,
        renewing_finishing_and_requeueing_at_once_never_deadlock,
    );
}
