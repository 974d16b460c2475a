//! Workflows' state: flows and their revisions, executions (summary and the engine's
//! snapshot), their histories, and the outbox of effects (`flow_work`) — the `FlowStore`
//! trait and its SQLite implementation.
//!
//! The store knows nothing of the language: snapshots, history events and work bodies are
//! JSON text the engine's driver reads and writes. What it guarantees is the transaction:
//! `step` loads an execution, lets the caller compute the change, and commits the new
//! snapshot, history events, new work and consumed work together — or nothing.
//! `step_batch` does the same for the steps of many executions in one transaction, with a
//! few multi-row statements for all of them: every statement is a round trip to the
//! database's thread, and those round trips, not the SQL, are what a step costs.

use async_trait::async_trait;
use sqlx::Row;

use crate::{PutOutcome, SqliteStore, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub name: String,
    pub revision: i64,
    pub description: String,
    /// The definition's JSON text.
    pub definition: String,
    /// The triggers' JSON text (a list of `model::http::Trigger`; `[]` for none).
    pub triggers: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// An execution's row. `snapshot` is empty in lists (they do not read it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionRecord {
    pub id: String,
    pub flow: String,
    pub revision: i64,
    pub name: String,
    pub status: String,
    pub input: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub cause: Option<String>,
    pub started_at_ms: i64,
    pub stopped_at_ms: Option<i64>,
    pub transitions: i64,
    pub snapshot: String,
}

/// One effect waiting to be carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkItem {
    pub execution: String,
    pub key: String,
    /// `invoke` or `timer`.
    pub kind: String,
    pub due_ms: i64,
    pub body: String,
    /// Written already claimed by this node (it carries the effect out at once), or free.
    pub owner: Option<String>,
    pub lease_until_ms: i64,
}

/// The change one step makes to an execution.
#[derive(Clone, Debug, Default)]
pub struct StepCommit {
    pub status: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub cause: Option<String>,
    pub stopped_at_ms: Option<i64>,
    pub transitions: i64,
    pub snapshot: String,
    /// `(event id, JSON)`.
    pub history: Vec<(i64, String)>,
    pub add: Vec<WorkItem>,
    /// Keys of this execution's work that is no longer wanted (cancelled timers).
    pub remove: Vec<String>,
    /// Drop all of the execution's work (it ended).
    pub clear: bool,
}

/// What `step` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stepped {
    Committed,
    /// The execution does not exist.
    Missing,
    /// The consumed work item is gone: its answer was applied before (or the execution
    /// ended). Nothing was written.
    AlreadyApplied,
    /// The caller decided there was nothing to write.
    Unchanged,
}

/// A step's computation of its change from the execution as it stands (`StepRequest`).
pub type StepChange<'a> =
    Box<dyn for<'r> FnMut(&'r ExecutionRecord) -> Option<StepCommit> + Send + 'a>;

/// One step of a batch (`FlowStore::step_batch`): what `step` takes.
pub struct StepRequest<'a> {
    pub execution: &'a str,
    pub consumes: Option<&'a str>,
    /// Computes the change from the execution as the batch's earlier steps left it. It may
    /// be called a second time, with the record read again, when the batch falls back to
    /// single steps: it must not use up its input on the first call.
    pub change: StepChange<'a>,
}

/// What `create_execution` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    New,
    /// An execution of that flow and name exists: it is returned (the caller compares
    /// inputs: the same start again is the same execution, another is a conflict).
    Existing(Box<ExecutionRecord>),
    /// The flow has as many running executions as allowed.
    TooMany,
    /// No flow of that name.
    NoFlow,
}

#[async_trait]
pub trait FlowStore: Send + Sync + 'static {
    /// Creates or replaces a flow; a changed definition or description is a new revision.
    /// Creates or replaces a flow. A new definition or description is a new revision; new
    /// `triggers` (JSON) alone are not (what executions run has not changed).
    async fn put_flow(
        &self,
        name: &str,
        definition: &str,
        description: &str,
        triggers: &str,
        now_ms: i64,
    ) -> Result<(FlowRecord, PutOutcome), StoreError>;
    async fn get_flow(&self, name: &str) -> Result<Option<FlowRecord>, StoreError>;
    /// All flows by name, without their definitions.
    async fn list_flows(&self) -> Result<Vec<FlowRecord>, StoreError>;
    /// Deletes a flow; its running executions go on with their revisions. False if none.
    async fn delete_flow(&self, name: &str) -> Result<bool, StoreError>;
    /// The definition of a flow's revision.
    async fn flow_revision(&self, flow: &str, revision: i64) -> Result<Option<String>, StoreError>;

    /// Creates an execution with its first step (`commit`), unless one of that flow and
    /// name exists or the flow has `running_max` running ones. The revision is the flow's
    /// current one, read in the same transaction; the caller's `record.revision` must match
    /// it, else `NoFlow`-like races are answered by the caller retrying.
    async fn create_execution(
        &self,
        record: &ExecutionRecord,
        commit: &StepCommit,
        running_max: usize,
    ) -> Result<Created, StoreError>;
    async fn get_execution(&self, id: &str) -> Result<Option<ExecutionRecord>, StoreError>;
    /// Executions, newest first, without snapshots; `before_ms` pages.
    async fn list_executions(
        &self,
        flow: &str,
        status: Option<&str>,
        before_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ExecutionRecord>, StoreError>;
    /// History events (JSON) with ids after `after_id`, in order.
    async fn history(
        &self,
        execution: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Loads the execution and commits what `change` makes of it, in one transaction. With
    /// `consumes`, the work item of that key must still exist (else `AlreadyApplied`) and
    /// is deleted with the commit.
    async fn step(
        &self,
        execution: &str,
        consumes: Option<&str>,
        change: &mut (dyn for<'r> FnMut(&'r ExecutionRecord) -> Option<StepCommit> + Send),
    ) -> Result<Stepped, StoreError>;

    /// Commits `steps` in order in one transaction, each exactly as `step` would alone (a
    /// later step of the same execution sees what the earlier ones made of it; a consumed
    /// item an earlier step removed is `AlreadyApplied`), and answers one result per step.
    /// When a statement fails, the whole batch is rolled back and every step is committed
    /// by itself, so a failure is its own step's and the other steps still commit.
    async fn step_batch(&self, steps: &mut [StepRequest<'_>]) -> Vec<Result<Stepped, StoreError>>;

    /// Claims up to `limit` work items due by `now_ms` that no one holds (or whose claim
    /// expired) for `owner` until `lease_until_ms`.
    async fn claim_work(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<WorkItem>, StoreError>;
    /// Extends `owner`'s claims on these items.
    async fn renew_work(
        &self,
        owner: &str,
        keys: &[(String, String)],
        lease_until_ms: i64,
    ) -> Result<(), StoreError>;
    /// Gives up every claim of `owner` (a node that starts again holds nothing).
    async fn release_work(&self, owner: &str) -> Result<u64, StoreError>;
    /// The earliest due time of unclaimed work (or work whose claim expires), if any.
    async fn next_due(&self, now_ms: i64) -> Result<Option<i64>, StoreError>;
    /// Deletes executions that stopped before `before_ms` with their histories, and
    /// revisions no flow or execution uses. Returns the executions deleted.
    async fn purge_executions(&self, before_ms: i64) -> Result<u64, StoreError>;
}

/// The summary columns of `flow_executions` (a macro, so queries stay static strings).
macro_rules! execution_columns {
    () => {
        "id, flow, revision, name, status, input, output, error, cause, started_at_ms, \
         stopped_at_ms, transitions"
    };
}

fn execution_row(
    row: &sqlx::sqlite::SqliteRow,
    with_snapshot: bool,
) -> Result<ExecutionRecord, StoreError> {
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

fn work_row(row: &sqlx::sqlite::SqliteRow) -> Result<WorkItem, StoreError> {
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

/// Rows per multi-row INSERT, within SQLite's 32,766 bound parameters.
const HISTORY_ROWS_PER_STATEMENT: usize = 5_000;
const WORK_ROWS_PER_STATEMENT: usize = 2_000;

/// Writes a step's history, work and summary (the execution row exists).
async fn write_commit(
    tx: &mut sqlx::SqliteConnection,
    execution: &str,
    commit: &StepCommit,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE flow_executions SET status = ?, output = ?, error = ?, cause = ?, stopped_at_ms = ?,
            transitions = ?, snapshot = ? WHERE id = ?",
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
    // One statement for all of a step's events (and one for its new work, below): each
    // statement is a round trip to the database's thread, and a step makes several.
    for chunk in commit.history.chunks(HISTORY_ROWS_PER_STATEMENT) {
        let mut b = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT OR IGNORE INTO flow_history (execution, id, event) ",
        );
        b.push_values(chunk, |mut row, (id, event)| {
            row.push_bind(execution).push_bind(id).push_bind(event);
        });
        b.build().execute(&mut *tx).await?;
    }
    if commit.clear {
        sqlx::query("DELETE FROM flow_work WHERE execution = ?")
            .bind(execution)
            .execute(&mut *tx)
            .await?;
        return Ok(());
    }
    for key in &commit.remove {
        sqlx::query("DELETE FROM flow_work WHERE execution = ? AND key = ?")
            .bind(execution)
            .bind(key)
            .execute(&mut *tx)
            .await?;
    }
    let added: Vec<&WorkItem> = commit.add.iter().collect();
    insert_work(&mut *tx, &added, true).await?;
    Ok(())
}

/// Work keys (two parameters each) per statement of a batch, within SQLite's 32,766 bound
/// parameters.
const KEYS_PER_STATEMENT: usize = 5_000;
/// Executions per `UPDATE` of a batch (eight parameters each).
const EXECUTIONS_PER_STATEMENT: usize = 2_000;

/// The steps of a batch in one transaction (`FlowStore::step_batch`); any error leaves the
/// transaction rolled back (on drop) and nothing written.
///
/// The rows the steps consume are deleted first and the snapshots read together; then the
/// callers' changes run in order against records kept in memory, and what they made is
/// written at the end, one statement per kind. The work table's end state is computed in
/// memory from the steps' effects in order (`delta`, `cleared`), so additions, removals
/// and clears of the same keys within one batch come out as they would one step at a time.
async fn step_together(
    writer: &sqlx::SqlitePool,
    steps: &mut [StepRequest<'_>],
) -> Result<Vec<Stepped>, StoreError> {
    use std::collections::{HashMap, HashSet};

    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    // The consumed rows that existed: each is applied once, by the first step naming it.
    let consumed: Vec<(&str, &str)> = steps
        .iter()
        .filter_map(|s| s.consumes.map(|k| (s.execution, k)))
        .collect();
    let mut present: HashSet<(String, String)> = HashSet::new();
    for chunk in consumed.chunks(KEYS_PER_STATEMENT) {
        // Row values against a subquery, which SQLite looks up in the primary key (a plain
        // `(a, b) IN (VALUES ...)` scans the table).
        let mut b = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "DELETE FROM flow_work WHERE (execution, key) IN (SELECT column1, column2 FROM (",
        );
        b.push_values(chunk, |mut row, (execution, key)| {
            row.push_bind(*execution).push_bind(*key);
        });
        b.push(")) RETURNING execution, key");
        for row in b.build().persistent(false).fetch_all(&mut *tx).await? {
            present.insert((row.try_get("execution")?, row.try_get("key")?));
        }
    }
    let mut ids: Vec<&str> = steps.iter().map(|s| s.execution).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut records: HashMap<String, ExecutionRecord> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(KEYS_PER_STATEMENT) {
        let mut b = sqlx::QueryBuilder::<sqlx::Sqlite>::new(concat!(
            "SELECT ",
            execution_columns!(),
            ", snapshot FROM flow_executions WHERE id IN ("
        ));
        let mut list = b.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        b.push(")");
        for row in b.build().persistent(false).fetch_all(&mut *tx).await? {
            let record = execution_row(&row, true)?;
            records.insert(record.id.clone(), record);
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
            // As in `write_commit`: a clear ends the step's work changes.
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

    let changed: Vec<&ExecutionRecord> = changed.iter().map(|id| &records[id]).collect();
    for chunk in changed.chunks(EXECUTIONS_PER_STATEMENT) {
        let mut b = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "UPDATE flow_executions SET status = v.column2, output = v.column3, error = v.column4,
                cause = v.column5, stopped_at_ms = v.column6, transitions = v.column7,
                snapshot = v.column8 FROM (",
        );
        b.push_values(chunk, |mut row, r| {
            row.push_bind(&r.id)
                .push_bind(&r.status)
                .push_bind(&r.output)
                .push_bind(&r.error)
                .push_bind(&r.cause)
                .push_bind(r.stopped_at_ms)
                .push_bind(r.transitions)
                .push_bind(&r.snapshot);
        });
        b.push(") AS v WHERE flow_executions.id = v.column1");
        b.build().persistent(false).execute(&mut *tx).await?;
    }
    for chunk in history.chunks(HISTORY_ROWS_PER_STATEMENT) {
        let mut b = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT OR IGNORE INTO flow_history (execution, id, event) ",
        );
        b.push_values(chunk, |mut row, (execution, id, event)| {
            row.push_bind(execution).push_bind(id).push_bind(event);
        });
        b.build().persistent(false).execute(&mut *tx).await?;
    }
    let cleared: Vec<&String> = cleared.iter().collect();
    for chunk in cleared.chunks(KEYS_PER_STATEMENT) {
        let mut b =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("DELETE FROM flow_work WHERE execution IN (");
        let mut list = b.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        b.push(")");
        b.build().persistent(false).execute(&mut *tx).await?;
    }
    // Removals of rows that may exist: not those the first statement deleted, nor those of
    // cleared executions (deleted just above).
    let removed: Vec<&(String, String)> = delta
        .iter()
        .filter(|(at, write)| {
            write.is_none() && !present.contains(*at) && !cleared.contains(&&at.0)
        })
        .map(|(at, _)| at)
        .collect();
    for chunk in removed.chunks(KEYS_PER_STATEMENT) {
        let mut b = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "DELETE FROM flow_work WHERE (execution, key) IN (SELECT column1, column2 FROM (",
        );
        b.push_values(chunk, |mut row, (execution, key)| {
            row.push_bind(execution).push_bind(key);
        });
        b.push("))");
        b.build().persistent(false).execute(&mut *tx).await?;
    }
    let added: Vec<&WorkItem> = delta.values().flatten().collect();
    // Its statements vary in size from batch to batch: not kept prepared.
    insert_work(&mut tx, &added, false).await?;
    tx.commit().await?;
    Ok(out)
}

/// Writes work rows (new or replacing ones of the same key), a bounded number per
/// statement; `persistent` keeps a statement prepared (worth it where its shape repeats).
async fn insert_work(
    conn: &mut sqlx::SqliteConnection,
    items: &[&WorkItem],
    persistent: bool,
) -> Result<(), StoreError> {
    for chunk in items.chunks(WORK_ROWS_PER_STATEMENT) {
        let mut b = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT OR REPLACE INTO flow_work (execution, key, kind, due_ms, body, owner, lease_until_ms) ",
        );
        b.push_values(chunk, |mut row, w| {
            row.push_bind(&w.execution)
                .push_bind(&w.key)
                .push_bind(&w.kind)
                .push_bind(w.due_ms)
                .push_bind(&w.body)
                .push_bind(&w.owner)
                .push_bind(w.lease_until_ms);
        });
        b.build().persistent(persistent).execute(&mut *conn).await?;
    }
    Ok(())
}

#[async_trait]
impl FlowStore for SqliteStore {
    async fn put_flow(
        &self,
        name: &str,
        definition: &str,
        description: &str,
        triggers: &str,
        now_ms: i64,
    ) -> Result<(FlowRecord, PutOutcome), StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let current = sqlx::query(
            "SELECT f.revision, f.description, f.triggers, f.created_at_ms, f.updated_at_ms, r.definition
             FROM flows f JOIN flow_revisions r ON r.flow = f.name AND r.revision = f.revision
             WHERE f.name = ?",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let record = |revision, created_at_ms, updated_at_ms| FlowRecord {
            name: name.to_string(),
            revision,
            description: description.to_string(),
            definition: definition.to_string(),
            triggers: triggers.to_string(),
            created_at_ms,
            updated_at_ms,
        };
        let (record, outcome) = match current {
            Some(row) => {
                let revision: i64 = row.try_get("revision")?;
                let old_definition: String = row.try_get("definition")?;
                let old_description: String = row.try_get("description")?;
                let old_triggers: String = row.try_get("triggers")?;
                let created_at_ms: i64 = row.try_get("created_at_ms")?;
                let same_revision = old_definition == definition && old_description == description;
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
                    "UPDATE flows SET revision = ?, description = ?, triggers = ?, updated_at_ms = ? WHERE name = ?",
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
                // A flow deleted and made again continues its revision numbers, so an old
                // execution's revision never names a new definition.
                let last: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(revision) FROM flow_revisions WHERE flow = ?")
                        .bind(name)
                        .fetch_one(&mut *tx)
                        .await?;
                let revision = last.unwrap_or(0) + 1;
                sqlx::query(
                    "INSERT INTO flows (name, revision, description, triggers, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(name)
                .bind(revision)
                .bind(description)
                .bind(triggers)
                .bind(now_ms)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                (record(revision, now_ms, now_ms), PutOutcome::Created)
            }
        };
        sqlx::query(
            "INSERT OR REPLACE INTO flow_revisions (flow, revision, definition) VALUES (?, ?, ?)",
        )
        .bind(name)
        .bind(record.revision)
        .bind(definition)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((record, outcome))
    }

    async fn get_flow(&self, name: &str) -> Result<Option<FlowRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT f.name, f.revision, f.description, f.triggers, f.created_at_ms, f.updated_at_ms, r.definition
             FROM flows f JOIN flow_revisions r ON r.flow = f.name AND r.revision = f.revision
             WHERE f.name = ?",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(FlowRecord {
                name: row.try_get("name")?,
                revision: row.try_get("revision")?,
                description: row.try_get("description")?,
                definition: row.try_get("definition")?,
                triggers: row.try_get("triggers")?,
                created_at_ms: row.try_get("created_at_ms")?,
                updated_at_ms: row.try_get("updated_at_ms")?,
            })
        })
        .transpose()
    }

    async fn list_flows(&self) -> Result<Vec<FlowRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, revision, description, triggers, created_at_ms, updated_at_ms FROM flows ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(FlowRecord {
                    name: row.try_get("name")?,
                    revision: row.try_get("revision")?,
                    description: row.try_get("description")?,
                    definition: String::new(),
                    triggers: row.try_get("triggers")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    updated_at_ms: row.try_get("updated_at_ms")?,
                })
            })
            .collect()
    }

    async fn delete_flow(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM flows WHERE name = ?")
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn flow_revision(&self, flow: &str, revision: i64) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT definition FROM flow_revisions WHERE flow = ? AND revision = ?",
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let existing = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            " FROM flow_executions WHERE flow = ? AND name = ?"
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
        let revision: Option<i64> = sqlx::query_scalar("SELECT revision FROM flows WHERE name = ?")
            .bind(&record.flow)
            .fetch_optional(&mut *tx)
            .await?;
        if revision != Some(record.revision) {
            tx.commit().await?;
            return Ok(Created::NoFlow);
        }
        let running: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM flow_executions WHERE flow = ? AND status = 'RUNNING'",
        )
        .bind(&record.flow)
        .fetch_one(&mut *tx)
        .await?;
        if running as usize >= running_max {
            tx.commit().await?;
            return Ok(Created::TooMany);
        }
        sqlx::query(
            "INSERT INTO flow_executions (id, flow, revision, name, status, input, started_at_ms, snapshot)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&record.id)
        .bind(&record.flow)
        .bind(record.revision)
        .bind(&record.name)
        .bind(&record.status)
        .bind(&record.input)
        .bind(record.started_at_ms)
        .bind(&record.snapshot)
        .execute(&mut *tx)
        .await?;
        write_commit(&mut tx, &record.id, commit).await?;
        tx.commit().await?;
        Ok(Created::New)
    }

    async fn get_execution(&self, id: &str) -> Result<Option<ExecutionRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            ", snapshot FROM flow_executions WHERE id = ?"
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
             WHERE flow = ?1 AND (?2 IS NULL OR status = ?2) AND started_at_ms < ?3
             ORDER BY started_at_ms DESC, id LIMIT ?4"
        ))
        .bind(flow)
        .bind(status)
        .bind(before_ms.unwrap_or(i64::MAX))
        .bind(limit as i64)
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
            "SELECT event FROM flow_history WHERE execution = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(execution)
        .bind(after_id)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn step(
        &self,
        execution: &str,
        consumes: Option<&str>,
        change: &mut (dyn for<'r> FnMut(&'r ExecutionRecord) -> Option<StepCommit> + Send),
    ) -> Result<Stepped, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        if let Some(key) = consumes {
            let gone = sqlx::query("DELETE FROM flow_work WHERE execution = ? AND key = ?")
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
        let row = sqlx::query(concat!(
            "SELECT ",
            execution_columns!(),
            ", snapshot FROM flow_executions WHERE id = ?"
        ))
        .bind(execution)
        .fetch_optional(&mut *tx)
        .await?;
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
        write_commit(&mut tx, execution, &commit).await?;
        tx.commit().await?;
        Ok(Stepped::Committed)
    }

    async fn step_batch(&self, steps: &mut [StepRequest<'_>]) -> Vec<Result<Stepped, StoreError>> {
        // One step alone takes `step`'s statements, which are fixed (prepared once).
        if steps.len() > 1 {
            match step_together(&self.writer, steps).await {
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
        let rows = sqlx::query(
            "UPDATE flow_work SET owner = ?, lease_until_ms = ?
             WHERE rowid IN (
                SELECT rowid FROM flow_work
                WHERE due_ms <= ? AND (owner IS NULL OR lease_until_ms <= ?)
                ORDER BY due_ms LIMIT ?)
             RETURNING execution, key, kind, due_ms, body, owner, lease_until_ms",
        )
        .bind(owner)
        .bind(lease_until_ms)
        .bind(now_ms)
        .bind(now_ms)
        .bind(limit as i64)
        .fetch_all(&self.writer)
        .await?;
        let mut out: Vec<WorkItem> = rows.iter().map(work_row).collect::<Result<_, _>>()?;
        out.sort_by_key(|w| w.due_ms);
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for (execution, key) in keys {
            sqlx::query("UPDATE flow_work SET lease_until_ms = ? WHERE execution = ? AND key = ? AND owner = ?")
                .bind(lease_until_ms)
                .bind(execution)
                .bind(key)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_work(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("UPDATE flow_work SET owner = NULL, lease_until_ms = 0 WHERE owner = ?")
                .bind(owner)
                .execute(&self.writer)
                .await?
                .rows_affected(),
        )
    }

    async fn next_due(&self, now_ms: i64) -> Result<Option<i64>, StoreError> {
        // Two probes on the due index rather than one scan: free work by its due time, and
        // claimed work by when its claim runs out.
        let free: Option<i64> =
            sqlx::query_scalar("SELECT MIN(due_ms) FROM flow_work WHERE owner IS NULL")
                .fetch_one(&self.pool)
                .await?;
        let expiring: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(MAX(due_ms, lease_until_ms)) FROM flow_work WHERE owner IS NOT NULL AND lease_until_ms > ?",
        )
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(match (free, expiring) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn purge_executions(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM flow_executions WHERE stopped_at_ms IS NOT NULL AND stopped_at_ms < ? LIMIT 1000",
        )
        .bind(before_ms)
        .fetch_all(&mut *tx)
        .await?;
        for id in &ids {
            sqlx::query("DELETE FROM flow_history WHERE execution = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM flow_work WHERE execution = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM flow_executions WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "DELETE FROM flow_revisions WHERE NOT EXISTS (
                SELECT 1 FROM flows f WHERE f.name = flow_revisions.flow AND f.revision = flow_revisions.revision)
              AND NOT EXISTS (
                SELECT 1 FROM flow_executions e WHERE e.flow = flow_revisions.flow AND e.revision = flow_revisions.revision)",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    //! The contract every `FlowStore` keeps (`testkit::flows`), on SQLite.

    use super::*;
    use crate::testkit::flows as contract;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("meta.db"))
            .await
            .unwrap();
        (dir, store)
    }

    macro_rules! contract {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $name() {
                let (_dir, s) = store().await;
                contract::$name(&s).await;
            }
        )*};
    }

    contract!(
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

    /// Nodes racing: two stores (two pools, two writers) on one database file.
    macro_rules! racing {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $name() {
                let (dir, a) = store().await;
                let b = SqliteStore::open(&dir.path().join("meta.db")).await.unwrap();
                contract::$name(&a, &b).await;
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
        let (_dir, s) = store().await;
        // A statement that fails for one step's rows: the batch's history insert fails.
        sqlx::query(
            "CREATE TRIGGER no_boom BEFORE INSERT ON flow_history WHEN NEW.event = 'boom'
             BEGIN SELECT RAISE(ABORT, 'boom refused'); END",
        )
        .execute(&s.writer)
        .await
        .unwrap();
        contract::a_failing_step_fails_alone_and_the_rest_of_its_batch_commits(&s).await;
    }
}
