//! `FlowStore` on PostgreSQL: workflows' flows, executions, histories and the outbox of
//! effects (`flow_work`), shared by every node of a cluster.
//!
//! The embedded backend gets its guarantees from SQLite's single writer; here several
//! nodes write at once under READ COMMITTED, so each write that depends on what it read
//! locks the row it depends on first:
//!
//! - `put_flow` and `create_execution` lock the flow's row, so revision numbers are given
//!   once and `running_max` holds when nodes start executions of one flow together;
//! - `step` and `step_batch` lock the executions' rows before anything else, so two nodes
//!   stepping one execution take turns, and the second reads what the first wrote (a
//!   consumed item the first deleted is `AlreadyApplied` to the second);
//! - `claim_work` takes due items `FOR UPDATE SKIP LOCKED`: two nodes claiming at once take
//!   different items and never wait on each other.
//!
//! Locks are taken in one order, so two transactions do not wait on each other in a cycle:
//! an execution's row before its work rows (a step writes only work of executions it has
//! locked), several executions by id, and the work rows of `renew_work` and
//! `release_work`, which may wait, by execution and key; claims never wait. Statements of
//! many rows bind arrays (`unnest`) rather than VALUES lists: their text is the same
//! whatever the count, so they are prepared once, and no batch meets PostgreSQL's 65,535
//! parameters.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use store::flows::StepRequest;
use store::{
    Created, DatabaseFault, ExecutionRecord, FlowRecord, FlowStore, PutOutcome, StepCommit,
    Stepped, StoreError, WorkItem,
};

use crate::PgStore;

/// The summary columns of `flow_executions` (a macro, so queries stay static strings).
macro_rules! execution_columns {
    () => {
        "id, flow, revision, name, status, input, output, error, cause, started_at_ms, \
         stopped_at_ms, transitions"
    };
}

/// Times `put_flow` looks for the flow's row again after another node made it first. Once
/// is enough unless the flow is deleted and made again in between, over and over.
const PUT_ATTEMPTS: usize = 4;

/// A `LIMIT` from a count: a count past `i64` is no limit (as SQLite reads `-1`, which a
/// plain cast would give and PostgreSQL refuses).
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn execution_row(row: &PgRow, with_snapshot: bool) -> Result<ExecutionRecord, StoreError> {
    Ok(ExecutionRecord {
        id: row.try_get("id")?,
        flow: row.try_get("flow")?,
        revision: row.try_get("revision")?,
        name: row.try_get("name")?,
        status: row.try_get("status")?,
        input: row.try_get("input")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        cause: row.try_get("cause")?,
        started_at_ms: row.try_get("started_at_ms")?,
        stopped_at_ms: row.try_get("stopped_at_ms")?,
        transitions: row.try_get("transitions")?,
        snapshot: if with_snapshot {
            row.try_get("snapshot")?
        } else {
            String::new()
        },
    })
}

fn work_row(row: &PgRow) -> Result<WorkItem, StoreError> {
    Ok(WorkItem {
        execution: row.try_get("execution")?,
        key: row.try_get("key")?,
        kind: row.try_get("kind")?,
        due_ms: row.try_get("due_ms")?,
        body: row.try_get("body")?,
        owner: row.try_get("owner")?,
        lease_until_ms: row.try_get("lease_until_ms")?,
    })
}

fn flow_row(row: &PgRow, definition: String) -> Result<FlowRecord, StoreError> {
    Ok(FlowRecord {
        name: row.try_get("name")?,
        revision: row.try_get("revision")?,
        description: row.try_get("description")?,
        definition,
        triggers: row.try_get("triggers")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

/// Writes history events `(execution, id, event)`; an id written before is kept, as on
/// SQLite (`INSERT OR IGNORE`), so a replayed step does not rewrite its events.
async fn insert_history(
    conn: &mut PgConnection,
    events: &[(&str, i64, &str)],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let executions: Vec<&str> = events.iter().map(|e| e.0).collect();
    let ids: Vec<i64> = events.iter().map(|e| e.1).collect();
    let bodies: Vec<&str> = events.iter().map(|e| e.2).collect();
    sqlx::query(
        "INSERT INTO flow_history (execution, id, event)
         SELECT * FROM unnest($1::TEXT[], $2::BIGINT[], $3::TEXT[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&executions)
    .bind(&ids)
    .bind(&bodies)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes work rows, new or replacing those of the same key (SQLite's `INSERT OR
/// REPLACE`): where a key comes twice the last one is written, and rows go in key order.
async fn insert_work(conn: &mut PgConnection, items: &[&WorkItem]) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    // PostgreSQL refuses a statement that changes one row twice: one item per key.
    let by_key: BTreeMap<(&str, &str), &WorkItem> = items
        .iter()
        .map(|w| ((w.execution.as_str(), w.key.as_str()), *w))
        .collect();
    let items: Vec<&WorkItem> = by_key.into_values().collect();
    let executions: Vec<&str> = items.iter().map(|w| w.execution.as_str()).collect();
    let keys: Vec<&str> = items.iter().map(|w| w.key.as_str()).collect();
    let kinds: Vec<&str> = items.iter().map(|w| w.kind.as_str()).collect();
    let due: Vec<i64> = items.iter().map(|w| w.due_ms).collect();
    let bodies: Vec<&str> = items.iter().map(|w| w.body.as_str()).collect();
    let owners: Vec<Option<&str>> = items.iter().map(|w| w.owner.as_deref()).collect();
    let leases: Vec<i64> = items.iter().map(|w| w.lease_until_ms).collect();
    sqlx::query(
        "INSERT INTO flow_work (execution, key, kind, due_ms, body, owner, lease_until_ms)
         SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[],
                              $6::TEXT[], $7::BIGINT[])
         ON CONFLICT (execution, key) DO UPDATE SET kind = EXCLUDED.kind,
            due_ms = EXCLUDED.due_ms, body = EXCLUDED.body, owner = EXCLUDED.owner,
            lease_until_ms = EXCLUDED.lease_until_ms",
    )
    .bind(&executions)
    .bind(&keys)
    .bind(&kinds)
    .bind(&due)
    .bind(&bodies)
    .bind(&owners)
    .bind(&leases)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes a step's history and its changes to the execution's work (the execution's row
/// is written by the caller, and locked by it).
async fn write_effects(
    conn: &mut PgConnection,
    execution: &str,
    commit: &StepCommit,
) -> Result<(), StoreError> {
    let events: Vec<(&str, i64, &str)> = commit
        .history
        .iter()
        .map(|(id, event)| (execution, *id, event.as_str()))
        .collect();
    insert_history(&mut *conn, &events).await?;
    if commit.clear {
        // A clear ends the step's work changes, as on SQLite.
        sqlx::query("DELETE FROM flow_work WHERE execution = $1")
            .bind(execution)
            .execute(&mut *conn)
            .await?;
        return Ok(());
    }
    if !commit.remove.is_empty() {
        sqlx::query("DELETE FROM flow_work WHERE execution = $1 AND key = ANY($2)")
            .bind(execution)
            .bind(&commit.remove)
            .execute(&mut *conn)
            .await?;
    }
    let added: Vec<&WorkItem> = commit.add.iter().collect();
    insert_work(conn, &added).await
}

/// The steps of a batch in one transaction (`FlowStore::step_batch`); any error leaves the
/// transaction rolled back (on drop) and nothing written.
///
/// As on SQLite: the executions are read (here locked, in id order) and the consumed rows
/// deleted first; the callers' changes run in order against records kept in memory; what
/// they made is written at the end, one statement per kind. The work table's end state is
/// computed in memory from the steps' effects in order (`delta`, `cleared`), so additions,
/// removals and clears of the same keys within one batch come out as they would one step at
/// a time.
async fn step_together(
    store: &PgStore,
    steps: &mut [StepRequest<'_>],
) -> Result<Vec<Stepped>, StoreError> {
    let mut tx = store.pool.begin().await?;
    let mut ids: Vec<&str> = steps.iter().map(|s| s.execution).collect();
    ids.sort_unstable();
    ids.dedup();
    // Locked in id order (the sort is below the lock), as every batch and purge locks them.
    let rows = sqlx::query(concat!(
        "SELECT ",
        execution_columns!(),
        ", snapshot FROM flow_executions WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut records: HashMap<String, ExecutionRecord> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let record = execution_row(row, true)?;
        records.insert(record.id.clone(), record);
    }
    // The consumed rows that existed: each is applied once, by the first step naming it.
    let mut consumed: Vec<(&str, &str)> = steps
        .iter()
        .filter_map(|s| s.consumes.map(|k| (s.execution, k)))
        .collect();
    consumed.sort_unstable();
    consumed.dedup();
    let mut present: HashSet<(String, String)> = HashSet::new();
    if !consumed.is_empty() {
        let executions: Vec<&str> = consumed.iter().map(|c| c.0).collect();
        let keys: Vec<&str> = consumed.iter().map(|c| c.1).collect();
        let rows = sqlx::query(
            "DELETE FROM flow_work WHERE (execution, key) IN (
                SELECT * FROM unnest($1::TEXT[], $2::TEXT[]))
             RETURNING execution, key",
        )
        .bind(&executions)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            present.insert((row.try_get("execution")?, row.try_get("key")?));
        }
    }

    // The batch's effects on `flow_work`, in order: per key, its last write (`None` for
    // deleted); and the executions whose rows a step cleared (before those writes).
    let mut delta: HashMap<(String, String), Option<WorkItem>> = HashMap::new();
    let mut cleared: HashSet<String> = HashSet::new();
    let mut changed: HashSet<String> = HashSet::new();
    let mut history: Vec<(String, i64, String)> = Vec::new();
    let mut out = Vec::with_capacity(steps.len());
    for step in steps.iter_mut() {
        let execution = step.execution;
        if let Some(key) = step.consumes {
            let at = (execution.to_string(), key.to_string());
            let exists = match delta.get(&at) {
                Some(write) => write.is_some(),
                None => !cleared.contains(execution) && present.contains(&at),
            };
            if !exists {
                out.push(Stepped::AlreadyApplied);
                continue;
            }
            delta.insert(at, None);
        }
        let Some(record) = records.get_mut(execution) else {
            out.push(Stepped::Missing);
            continue;
        };
        let Some(commit) = (step.change)(record) else {
            // The consumed item stays deleted, as in `step`.
            out.push(Stepped::Unchanged);
            continue;
        };
        record.status = commit.status;
        record.output = commit.output;
        record.error = commit.error;
        record.cause = commit.cause;
        record.stopped_at_ms = commit.stopped_at_ms;
        record.transitions = commit.transitions;
        record.snapshot = commit.snapshot;
        changed.insert(execution.to_string());
        history.extend(
            commit
                .history
                .into_iter()
                .map(|(id, event)| (execution.to_string(), id, event)),
        );
        if commit.clear {
            // As in `write_effects`: a clear ends the step's work changes.
            delta.retain(|(e, _), _| e != execution);
            cleared.insert(execution.to_string());
        } else {
            for key in commit.remove {
                delta.insert((execution.to_string(), key), None);
            }
            for item in commit.add {
                delta.insert((item.execution.clone(), item.key.clone()), Some(item));
            }
        }
        out.push(Stepped::Committed);
    }

    if !changed.is_empty() {
        let changed: Vec<&ExecutionRecord> = changed.iter().map(|id| &records[id]).collect();
        let ids: Vec<&str> = changed.iter().map(|r| r.id.as_str()).collect();
        let statuses: Vec<&str> = changed.iter().map(|r| r.status.as_str()).collect();
        let outputs: Vec<Option<&str>> = changed.iter().map(|r| r.output.as_deref()).collect();
        let errors: Vec<Option<&str>> = changed.iter().map(|r| r.error.as_deref()).collect();
        let causes: Vec<Option<&str>> = changed.iter().map(|r| r.cause.as_deref()).collect();
        let stopped: Vec<Option<i64>> = changed.iter().map(|r| r.stopped_at_ms).collect();
        let transitions: Vec<i64> = changed.iter().map(|r| r.transitions).collect();
        let snapshots: Vec<&str> = changed.iter().map(|r| r.snapshot.as_str()).collect();
        sqlx::query(
            "UPDATE flow_executions e SET status = v.status, output = v.output,
                error = v.error, cause = v.cause, stopped_at_ms = v.stopped_at_ms,
                transitions = v.transitions, snapshot = v.snapshot
             FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
                         $6::BIGINT[], $7::BIGINT[], $8::TEXT[])
                AS v(id, status, output, error, cause, stopped_at_ms, transitions, snapshot)
             WHERE e.id = v.id",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&outputs)
        .bind(&errors)
        .bind(&causes)
        .bind(&stopped)
        .bind(&transitions)
        .bind(&snapshots)
        .execute(&mut *tx)
        .await?;
    }
    let events: Vec<(&str, i64, &str)> = history
        .iter()
        .map(|(execution, id, event)| (execution.as_str(), *id, event.as_str()))
        .collect();
    insert_history(&mut tx, &events).await?;
    if !cleared.is_empty() {
        let cleared: Vec<&str> = cleared.iter().map(String::as_str).collect();
        sqlx::query("DELETE FROM flow_work WHERE execution = ANY($1)")
            .bind(&cleared)
            .execute(&mut *tx)
            .await?;
    }
    // Removals of rows that may exist: not those the first statement deleted, nor those of
    // cleared executions (deleted just above).
    let mut removed: Vec<(&str, &str)> = delta
        .iter()
        .filter(|(at, write)| write.is_none() && !present.contains(*at) && !cleared.contains(&at.0))
        .map(|((execution, key), _)| (execution.as_str(), key.as_str()))
        .collect();
    if !removed.is_empty() {
        removed.sort_unstable();
        let executions: Vec<&str> = removed.iter().map(|r| r.0).collect();
        let keys: Vec<&str> = removed.iter().map(|r| r.1).collect();
        sqlx::query(
            "DELETE FROM flow_work WHERE (execution, key) IN (
                SELECT * FROM unnest($1::TEXT[], $2::TEXT[]))",
        )
        .bind(&executions)
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
    }
    let added: Vec<&WorkItem> = delta.values().flatten().collect();
    insert_work(&mut tx, &added).await?;
    tx.commit().await?;
    Ok(out)
}

#[async_trait]
impl FlowStore for PgStore {
    async fn put_flow(
        &self,
        name: &str,
        definition: &str,
        description: &str,
        triggers: &str,
        now_ms: i64,
    ) -> Result<(FlowRecord, PutOutcome), StoreError> {
        let record = |revision, created_at_ms, updated_at_ms| FlowRecord {
            name: name.to_string(),
            revision,
            description: description.to_string(),
            definition: definition.to_string(),
            triggers: triggers.to_string(),
            created_at_ms,
            updated_at_ms,
        };
        let mut tx = self.pool.begin().await?;
        for _ in 0..PUT_ATTEMPTS {
            // The flow's row alone is locked: read together with its revision in one
            // statement, a revision committed while this one waited for the lock would not
            // be seen (the statement's snapshot predates it).
            let current = sqlx::query(
                "SELECT revision, description, triggers, created_at_ms, updated_at_ms
                 FROM flows WHERE name = $1 FOR UPDATE",
            )
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
            let (record, outcome) = match current {
                Some(row) => {
                    let revision: i64 = row.try_get("revision")?;
                    let old_definition: String = sqlx::query_scalar(
                        "SELECT definition FROM flow_revisions WHERE flow = $1 AND revision = $2",
                    )
                    .bind(name)
                    .bind(revision)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("flow `{name}` has no revision {revision}"))
                    })?;
                    let old_description: String = row.try_get("description")?;
                    let old_triggers: String = row.try_get("triggers")?;
                    let created_at_ms: i64 = row.try_get("created_at_ms")?;
                    let same_revision =
                        old_definition == definition && old_description == description;
                    if same_revision && old_triggers == triggers {
                        let updated_at_ms = row.try_get("updated_at_ms")?;
                        tx.commit().await?;
                        return Ok((
                            record(revision, created_at_ms, updated_at_ms),
                            PutOutcome::Unchanged,
                        ));
                    }
                    let revision = if same_revision {
                        revision
                    } else {
                        revision + 1
                    };
                    sqlx::query(
                        "UPDATE flows SET revision = $1, description = $2, triggers = $3,
                            updated_at_ms = $4
                         WHERE name = $5",
                    )
                    .bind(revision)
                    .bind(description)
                    .bind(triggers)
                    .bind(now_ms)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                    (record(revision, created_at_ms, now_ms), PutOutcome::Updated)
                }
                None => {
                    // A flow deleted and made again continues its revision numbers, so an
                    // old execution's revision never names a new definition. Every writer
                    // of revisions holds or inserts the flow's row, so none is in flight.
                    let last: Option<i64> = sqlx::query_scalar(
                        "SELECT MAX(revision) FROM flow_revisions WHERE flow = $1",
                    )
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?;
                    let revision = last.unwrap_or(0) + 1;
                    // Another node making the same flow now: this waits for its commit and
                    // inserts nothing; the loop then locks the row it made.
                    let inserted = sqlx::query(
                        "INSERT INTO flows (name, revision, description, triggers,
                            created_at_ms, updated_at_ms)
                         VALUES ($1, $2, $3, $4, $5, $5)
                         ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(name)
                    .bind(revision)
                    .bind(description)
                    .bind(triggers)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if inserted == 0 {
                        continue;
                    }
                    (record(revision, now_ms, now_ms), PutOutcome::Created)
                }
            };
            sqlx::query(
                "INSERT INTO flow_revisions (flow, revision, definition) VALUES ($1, $2, $3)
                 ON CONFLICT (flow, revision) DO UPDATE SET definition = EXCLUDED.definition",
            )
            .bind(name)
            .bind(record.revision)
            .bind(definition)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok((record, outcome));
        }
        Err(StoreError::Database {
            fault: DatabaseFault::Busy,
            message: format!("flow `{name}` kept being made and deleted by others meanwhile"),
        })
    }

    async fn get_flow(&self, name: &str) -> Result<Option<FlowRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT f.name, f.revision, f.description, f.triggers, f.created_at_ms,
                f.updated_at_ms, r.definition
             FROM flows f JOIN flow_revisions r ON r.flow = f.name AND r.revision = f.revision
             WHERE f.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| flow_row(&row, row.try_get("definition")?))
            .transpose()
    }

    async fn list_flows(&self) -> Result<Vec<FlowRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, revision, description, triggers, created_at_ms, updated_at_ms
             FROM flows ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| flow_row(row, String::new()))
            .collect()
    }

    async fn delete_flow(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM flows WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn flow_revision(&self, flow: &str, revision: i64) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT definition FROM flow_revisions WHERE flow = $1 AND revision = $2",
        )
        .bind(flow)
        .bind(revision)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn create_execution(
        &self,
        record: &ExecutionRecord,
        commit: &StepCommit,
        running_max: usize,
    ) -> Result<Created, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Starts of one flow take turns from here, so the count of running executions below
        // stays true until this one is inserted (a step only ever lowers it meanwhile).
        let revision: Option<i64> =
            sqlx::query_scalar("SELECT revision FROM flows WHERE name = $1 FOR UPDATE")
                .bind(&record.flow)
                .fetch_optional(&mut *tx)
                .await?;
        let existing = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM flow_executions WHERE flow = $1 AND name = $2"
        ))
        .bind(&record.flow)
        .bind(&record.name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            let found = execution_row(&row, false)?;
            tx.commit().await?;
            return Ok(Created::Existing(Box::new(found)));
        }
        if revision != Some(record.revision) {
            tx.commit().await?;
            return Ok(Created::NoFlow);
        }
        let running: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM flow_executions WHERE flow = $1 AND status = 'RUNNING'",
        )
        .bind(&record.flow)
        .fetch_one(&mut *tx)
        .await?;
        if running as usize >= running_max {
            tx.commit().await?;
            return Ok(Created::TooMany);
        }
        // The row as SQLite's insert and then its first step's update leave it, in one
        // statement: the summary columns and the snapshot are the commit's.
        sqlx::query(
            "INSERT INTO flow_executions (id, flow, revision, name, status, input, output, error,
                cause, started_at_ms, stopped_at_ms, transitions, snapshot)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&record.id)
        .bind(&record.flow)
        .bind(record.revision)
        .bind(&record.name)
        .bind(&commit.status)
        .bind(&record.input)
        .bind(&commit.output)
        .bind(&commit.error)
        .bind(&commit.cause)
        .bind(record.started_at_ms)
        .bind(commit.stopped_at_ms)
        .bind(commit.transitions)
        .bind(&commit.snapshot)
        .execute(&mut *tx)
        .await?;
        write_effects(&mut tx, &record.id, commit).await?;
        tx.commit().await?;
        Ok(Created::New)
    }

    async fn get_execution(&self, id: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            ", snapshot FROM flow_executions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| execution_row(&r, true)).transpose()
    }

    async fn list_executions(
        &self,
        flow: &str,
        status: Option<&str>,
        before_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ExecutionRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM flow_executions
             WHERE flow = $1 AND ($2::TEXT IS NULL OR status = $2) AND started_at_ms < $3
             ORDER BY started_at_ms DESC, id LIMIT $4"
        ))
        .bind(flow)
        .bind(status)
        .bind(before_ms.unwrap_or(i64::MAX))
        .bind(sql_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| execution_row(r, false)).collect()
    }

    async fn history(
        &self,
        execution: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT event FROM flow_history WHERE execution = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(execution)
        .bind(after_id)
        .bind(sql_limit(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn step(
        &self,
        execution: &str,
        consumes: Option<&str>,
        change: &mut (dyn for<'r> FnMut(&'r ExecutionRecord) -> Option<StepCommit> + Send),
    ) -> Result<Stepped, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The execution first (before its work row, the order every writer keeps): a node
        // stepping it meanwhile is waited for, and what it wrote is what this step reads.
        let row = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            ", snapshot FROM flow_executions WHERE id = $1 FOR UPDATE"
        ))
        .bind(execution)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(key) = consumes {
            let gone = sqlx::query("DELETE FROM flow_work WHERE execution = $1 AND key = $2")
                .bind(execution)
                .bind(key)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 0;
            if gone {
                tx.rollback().await?;
                return Ok(Stepped::AlreadyApplied);
            }
        }
        let Some(row) = row else {
            tx.commit().await?;
            return Ok(Stepped::Missing);
        };
        let record = execution_row(&row, true)?;
        let Some(commit) = change(&record) else {
            // The consumed item is still deleted: its answer changed nothing and will not.
            tx.commit().await?;
            return Ok(Stepped::Unchanged);
        };
        sqlx::query(
            "UPDATE flow_executions SET status = $1, output = $2, error = $3, cause = $4,
                stopped_at_ms = $5, transitions = $6, snapshot = $7
             WHERE id = $8",
        )
        .bind(&commit.status)
        .bind(&commit.output)
        .bind(&commit.error)
        .bind(&commit.cause)
        .bind(commit.stopped_at_ms)
        .bind(commit.transitions)
        .bind(&commit.snapshot)
        .bind(execution)
        .execute(&mut *tx)
        .await?;
        write_effects(&mut tx, execution, &commit).await?;
        tx.commit().await?;
        Ok(Stepped::Committed)
    }

    async fn step_batch(&self, steps: &mut [StepRequest<'_>]) -> Vec<Result<Stepped, StoreError>> {
        // One step alone takes `step`'s fewer statements.
        if steps.len() > 1 {
            match step_together(self, steps).await {
                Ok(done) => return done.into_iter().map(Ok).collect(),
                Err(e) => tracing::warn!(
                    steps = steps.len(),
                    "flows: a batch of steps failed ({e}); committing them one by one"
                ),
            }
        }
        let mut out = Vec::with_capacity(steps.len());
        for step in steps.iter_mut() {
            out.push(
                self.step(step.execution, step.consumes, &mut *step.change)
                    .await,
            );
        }
        out
    }

    async fn claim_work(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<WorkItem>, StoreError> {
        // MATERIALIZED: the locking query runs once, so exactly the rows it locked are
        // claimed. A row another node claimed and committed since this statement began is
        // checked again as it now stands, and left out (its lease is in the future).
        let rows = sqlx::query(
            "WITH due AS MATERIALIZED (
                SELECT execution, key FROM flow_work
                WHERE due_ms <= $3 AND (owner IS NULL OR lease_until_ms <= $3)
                ORDER BY due_ms, execution, key LIMIT $4
                FOR UPDATE SKIP LOCKED)
             UPDATE flow_work w SET owner = $1, lease_until_ms = $2
             FROM due WHERE w.execution = due.execution AND w.key = due.key
             RETURNING w.execution, w.key, w.kind, w.due_ms, w.body, w.owner,
                w.lease_until_ms",
        )
        .bind(owner)
        .bind(lease_until_ms)
        .bind(now_ms)
        .bind(sql_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<WorkItem> = rows.iter().map(work_row).collect::<Result<_, _>>()?;
        // RETURNING gives no order; due order is what the caller starts them in.
        out.sort_by(|a, b| (a.due_ms, &a.execution, &a.key).cmp(&(b.due_ms, &b.execution, &b.key)));
        Ok(out)
    }

    async fn renew_work(
        &self,
        owner: &str,
        keys: &[(String, String)],
        lease_until_ms: i64,
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let executions: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let keys: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        // Rows locked in key order, as every statement of many work rows locks them.
        sqlx::query(
            "WITH mine AS MATERIALIZED (
                SELECT execution, key FROM flow_work
                WHERE (execution, key) IN (SELECT * FROM unnest($2::TEXT[], $3::TEXT[]))
                  AND owner = $4
                ORDER BY execution, key FOR UPDATE)
             UPDATE flow_work w SET lease_until_ms = $1
             FROM mine WHERE w.execution = mine.execution AND w.key = mine.key",
        )
        .bind(lease_until_ms)
        .bind(&executions)
        .bind(&keys)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release_work(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "WITH mine AS MATERIALIZED (
                SELECT execution, key FROM flow_work WHERE owner = $1
                ORDER BY execution, key FOR UPDATE)
             UPDATE flow_work w SET owner = NULL, lease_until_ms = 0
             FROM mine WHERE w.execution = mine.execution AND w.key = mine.key",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn next_due(&self, now_ms: i64) -> Result<Option<i64>, StoreError> {
        // As on SQLite: free work by its due time, and claimed work by when its claim runs
        // out (claims already run out are what `claim_work` just took); one round trip.
        let row = sqlx::query(
            "SELECT (SELECT MIN(due_ms) FROM flow_work WHERE owner IS NULL) AS free,
                    (SELECT MIN(GREATEST(due_ms, lease_until_ms)) FROM flow_work
                     WHERE owner IS NOT NULL AND lease_until_ms > $1) AS expiring",
        )
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?;
        let free: Option<i64> = row.try_get("free")?;
        let expiring: Option<i64> = row.try_get("expiring")?;
        Ok(match (free, expiring) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn purge_executions(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Locked in id order, as batches of steps lock them: a step of one of these waits,
        // then finds it gone (`Missing`), and writes no history for a deleted execution.
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM flow_executions
             WHERE stopped_at_ms IS NOT NULL AND stopped_at_ms < $1
             ORDER BY id LIMIT 1000 FOR UPDATE",
        )
        .bind(before_ms)
        .fetch_all(&mut *tx)
        .await?;
        if !ids.is_empty() {
            for sql in [
                "DELETE FROM flow_history WHERE execution = ANY($1)",
                "DELETE FROM flow_work WHERE execution = ANY($1)",
                "DELETE FROM flow_executions WHERE id = ANY($1)",
            ] {
                sqlx::query(sql).bind(&ids).execute(&mut *tx).await?;
            }
        }
        // A revision becomes the flow's, or an execution's, only under the flow's lock and
        // while the flow's row names it, so one this statement sees unused stays unused.
        sqlx::query(
            "DELETE FROM flow_revisions r
             WHERE NOT EXISTS (
                SELECT 1 FROM flows f WHERE f.name = r.flow AND f.revision = r.revision)
               AND NOT EXISTS (
                SELECT 1 FROM flow_executions e WHERE e.flow = r.flow AND e.revision = r.revision)",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    //! The contract every `FlowStore` keeps (`store::testkit::flows`), on PostgreSQL.

    use store::flows::StepRequest;
    use store::testkit::flows;
    use store::{ExecutionRecord, FlowStore, StepCommit, Stepped};

    use crate::testing::fresh;

    crate::testing::contract!(
        flows;
        flows_keep_revisions_and_a_rewrite_of_the_same_is_unchanged,
        flows_list_by_name_as_bytes,
        an_execution_is_made_once_per_name_within_the_running_limit,
        executions_list_newest_first_and_history_pages_by_id,
        a_consumed_item_is_applied_once,
        a_step_removes_replaces_and_keeps_work,
        work_is_claimed_when_due_once_until_its_lease_runs_out,
        next_due_is_the_earliest_free_or_expiring_work,
        purge_removes_old_stopped_executions_and_unused_revisions,
        a_batch_commits_each_step_as_it_would_alone,
        large_steps_and_batches_write_every_row,
    );

    /// Nodes racing: two stores (two pools) on one schema.
    macro_rules! racing {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $name() {
                let mut db = fresh().await;
                let other = db.another().await;
                flows::$name(&db.store, &other).await;
                db.drop_now().await;
            }
        )*};
    }

    racing!(
        racing_nodes_claim_each_item_once,
        racing_starts_stay_within_the_running_limit,
        racing_steps_of_one_execution_take_turns,
        racing_puts_number_each_revision_once,
    );

    #[tokio::test]
    async fn a_failing_step_fails_alone_and_the_rest_of_its_batch_commits() {
        let db = fresh().await;
        // A statement that fails for one step's rows: the batch's history insert fails.
        for sql in [
            "CREATE FUNCTION no_boom() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                IF NEW.event = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF;
                RETURN NEW;
             END $$",
            "CREATE TRIGGER no_boom BEFORE INSERT ON flow_history
             FOR EACH ROW EXECUTE FUNCTION no_boom()",
        ] {
            sqlx::query(sql).execute(&db.store.pool).await.unwrap();
        }
        flows::a_failing_step_fails_alone_and_the_rest_of_its_batch_commits(&db.store).await;
        db.drop_now().await;
    }

    /// A batch is written in one transaction, not by the fallback to single steps (which
    /// answers the same, only slower, so the contract cannot tell): every kind of write of
    /// a batch, through `step_together` itself.
    #[tokio::test]
    async fn a_batch_is_written_in_one_transaction() {
        let db = fresh().await;
        let s = &db.store;
        flows::executions_with_work(s, &["e1", "e2"], &["t1", "t2", "t3"]).await;
        let mut steps = vec![
            StepRequest {
                execution: "e1",
                consumes: Some("t1"),
                change: Box::new(|_: &ExecutionRecord| {
                    Some(StepCommit {
                        status: "RUNNING".into(),
                        snapshot: "{\"e1\":1}".into(),
                        history: vec![(1, "{}".into())],
                        remove: vec!["t2".into()],
                        add: vec![flows::work("e1", "t4", 9)],
                        ..Default::default()
                    })
                }),
            },
            StepRequest {
                execution: "e2",
                consumes: Some("t1"),
                change: Box::new(|_: &ExecutionRecord| {
                    Some(StepCommit {
                        status: "SUCCEEDED".into(),
                        stopped_at_ms: Some(5),
                        snapshot: "{\"e2\":1}".into(),
                        history: vec![(1, "{}".into())],
                        clear: true,
                        ..Default::default()
                    })
                }),
            },
            StepRequest {
                execution: "nope",
                consumes: None,
                change: Box::new(|_: &ExecutionRecord| panic!("a missing execution is stepped")),
            },
        ];
        let got = super::step_together(s, &mut steps).await.unwrap();
        assert_eq!(
            got,
            [Stepped::Committed, Stepped::Committed, Stepped::Missing]
        );
        assert_eq!(flows::work_keys(s, "e1").await, ["t3", "t4"]);
        assert!(flows::work_keys(s, "e2").await.is_empty());
        let e2 = s.get_execution("e2").await.unwrap().unwrap();
        assert_eq!(
            (e2.status.as_str(), e2.stopped_at_ms),
            ("SUCCEEDED", Some(5))
        );
        assert_eq!(s.history("e2", 0, 10).await.unwrap(), ["{}"]);
        db.drop_now().await;
    }
}
