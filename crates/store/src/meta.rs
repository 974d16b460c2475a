//! Function metadata: the `MetaStore` trait and its SQLite backend.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use model::{Alias, Function, FunctionSpec, Version};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row, SqlitePool};

use crate::StoreError;

/// How `put_function` treats an existing function of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Fail with `Conflict` if it exists.
    Create,
    /// Create it, or replace its spec.
    Upsert,
}

/// What `put_function` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Updated,
    /// The stored spec was identical; the revision did not move, so warm instances stay.
    Unchanged,
}

/// Function metadata, shared by all nodes of a deployment.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    async fn get_function(&self, name: &str) -> Result<Function, StoreError>;
    /// All functions, ordered by name.
    async fn list_functions(&self) -> Result<Vec<Function>, StoreError>;
    async fn put_function(
        &self,
        spec: &FunctionSpec,
        mode: PutMode,
        now_ms: i64,
    ) -> Result<(Function, PutOutcome), StoreError>;
    async fn delete_function(&self, name: &str) -> Result<(), StoreError>;
    /// Stores an invoke key by its hash.
    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// All invoke keys, oldest first.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Deletes a key; `KeyNotFound` if there is none with that id.
    async fn delete_key(&self, id: &str) -> Result<(), StoreError>;
    /// Stores an access key. With `builtin` set and a builtin key there already, stores
    /// nothing and returns the one there (nodes starting together make one admin key).
    async fn create_aws_key(&self, key: &AwsKeyRecord) -> Result<AwsKeyRecord, StoreError>;
    /// All access keys, oldest first.
    async fn list_aws_keys(&self) -> Result<Vec<AwsKeyRecord>, StoreError>;
    /// Deletes an access key that is not the builtin one; `KeyNotFound` if there is none.
    async fn delete_aws_key(&self, access_key_id: &str) -> Result<(), StoreError>;
    /// The progress and pause state of timers: of one function, or of all.
    async fn timer_states(&self, function: Option<&str>) -> Result<Vec<TimerState>, StoreError>;
    /// Records, in one transaction, that each timer's `scheduled_ms` was dealt with:
    /// queued as `request_id`, skipped (`overlap: skip`), or failed to queue (`error`).
    /// A schedule's progress only moves forward, whichever node records and in whatever
    /// order.
    async fn timer_progress(&self, progress: &[TimerProgress]) -> Result<(), StoreError>;
    /// Pauses or resumes a timer. A resumed timer goes on from `now_ms`: what it would
    /// have fired while paused does not fire.
    async fn set_timer_paused(
        &self,
        function: &str,
        timer: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// Snapshots the function's current spec as its next version; when the newest version
    /// already has that spec, returns it instead (`false`).
    async fn publish_version(
        &self,
        function: &str,
        description: &str,
        now_ms: i64,
    ) -> Result<(Version, bool), StoreError>;
    /// A function's versions, oldest first.
    async fn list_versions(&self, function: &str) -> Result<Vec<Version>, StoreError>;
    async fn get_version(&self, function: &str, version: u32) -> Result<Version, StoreError>;
    /// Deletes a version no alias points at (`VersionInUse` names the one that does).
    async fn delete_version(&self, function: &str, version: u32) -> Result<(), StoreError>;
    /// Creates or moves an alias; its versions must exist.
    async fn put_alias(&self, function: &str, alias: &Alias) -> Result<(), StoreError>;
    async fn list_aliases(&self, function: &str) -> Result<Vec<Alias>, StoreError>;
    async fn delete_alias(&self, function: &str, alias: &str) -> Result<(), StoreError>;
    /// Every code sha256 a function or a published version refers to: the code the garbage
    /// collector must keep.
    async fn referenced_code(&self) -> Result<BTreeSet<String>, StoreError>;

    /// Claims the build of `key` for `node` until `lease_until_ms`, unless it is done (then
    /// its archive) or another node's claim still holds.
    async fn claim_build(
        &self,
        key: &str,
        node: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<BuildClaim, StoreError>;

    /// Ends `node`'s claim on `key`: done with the archive `deps_sha256`, or (`None`)
    /// failed, which forgets the build so the next deploy tries again.
    async fn finish_build(
        &self,
        key: &str,
        node: &str,
        deps_sha256: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Forgets a done build whose archive is gone (collected), so it is built again.
    async fn forget_build(&self, key: &str) -> Result<(), StoreError>;
}

/// What `claim_build` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildClaim {
    /// Built before: its archive.
    Done { deps_sha256: String },
    /// The caller now builds it.
    Claimed,
    /// Another node builds it now.
    Running { node: String },
}

/// A stored invoke key: never the key itself, only its sha256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub sha256: String,
    pub created_at_ms: i64,
}

/// A timer's progress and pause state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimerState {
    pub function: String,
    pub timer: String,
    pub paused: bool,
    /// The latest scheduled time dealt with (fired, skipped, or failed to queue).
    pub last_scheduled_ms: Option<i64>,
    pub last_fire_ms: Option<i64>,
    pub last_request_id: Option<String>,
    pub last_error: Option<String>,
    pub skipped: u64,
    pub updated_at_ms: i64,
}

/// One scheduled time dealt with.
#[derive(Clone, Debug)]
pub struct TimerProgress {
    pub function: String,
    pub timer: String,
    pub scheduled_ms: i64,
    pub now_ms: i64,
    /// The fire's asynchronous invocation, when it was queued.
    pub request_id: Option<String>,
    pub error: Option<String>,
    pub skipped: bool,
}

/// An access key for the AWS-compatible APIs, SigV4-signed. Unlike invoke keys the
/// secret itself is stored: verifying a signature needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsKeyRecord {
    pub access_key_id: String,
    pub name: String,
    pub secret: String,
    /// `admin` (every operation) or `invoke` (invocations only).
    pub scope: String,
    /// The admin's key that the server made and wrote to `aws.credentials`.
    pub builtin: bool,
    pub created_at_ms: i64,
}

/// The embedded backend: one SQLite file in WAL mode. Transactions that write begin
/// `IMMEDIATE`: a deferred one that reads first cannot take the write lock once another
/// connection has committed (SQLITE_BUSY_SNAPSHOT, which the busy timeout does not cover).
pub struct SqliteStore {
    /// Readers: WAL lets them run beside the writer.
    pub(crate) pool: SqlitePool,
    /// The one writing connection. SQLite takes one writer at a time anyway; with several
    /// writing connections the losers wait in SQLite's busy handler, which sleeps in steps
    /// of up to 100 ms and serves no one in order, so a burst of writes (a thousand timers
    /// on one second) saw waits of hundreds of milliseconds. Queued on this pool instead,
    /// writers wait their turn in order and start the moment the previous commit ends.
    pub(crate) writer: SqlitePool,
}

const NAMESPACE: &str = "default";

/// Reading connections of the embedded store.
const READERS_MAX: u32 = 4;

/// The WAL file's size kept after a checkpoint (`journal_size_limit`).
const WAL_SIZE_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// A pool on the SQLite database at `path` (created if missing) in WAL mode. WAL with
/// NORMAL is durable across process crashes and loses at most the last transactions on
/// power loss; it keeps writes off fsync's critical path.
///
/// With `incremental_vacuum`, a database created now can give freed pages back to the
/// filesystem (`PRAGMA incremental_vacuum`); SQLite takes the setting only before the first
/// table is created, so a database made earlier keeps reusing its free pages instead, which
/// bounds its file as well.
pub(crate) async fn open_wal(
    path: &Path,
    foreign_keys: bool,
    incremental_vacuum: bool,
    connections_max: u32,
) -> Result<SqlitePool, StoreError> {
    let mut options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        // A checkpoint leaves the WAL file as long as its longest transaction made it (a big
        // prune); past this it is truncated, so the WAL does not keep that space for good.
        .pragma("journal_size_limit", WAL_SIZE_LIMIT_BYTES.to_string())
        .foreign_keys(foreign_keys);
    if incremental_vacuum {
        options = options.auto_vacuum(SqliteAutoVacuum::Incremental);
    }
    Ok(SqlitePoolOptions::new()
        .max_connections(connections_max)
        // A connection whose transaction failed half-way can come back to the pool still
        // counted as inside it: when SQLite has already rolled the transaction back itself
        // (it does on a full disk), the ROLLBACK that sqlx sends on drop fails and sqlx keeps
        // its depth above zero, so every later `begin_with` on that connection fails. Such a
        // connection is closed when it is next taken, and the pool opens a fresh one. The
        // pool's ping before this check runs after any queued rollback, so the depth read
        // here is settled.
        .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
        .connect_with(options)
        .await?)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let writer = open_wal(path, true, false, 1).await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let pool = open_wal(path, true, false, READERS_MAX).await?;
        Ok(SqliteStore { pool, writer })
    }

    /// A function's aliases, by name, read on `conn` (inside a transaction or not).
    async fn aliases_in(
        &self,
        conn: &mut sqlx::SqliteConnection,
        function: &str,
    ) -> Result<Vec<Alias>, StoreError> {
        let rows = sqlx::query(
            "SELECT config FROM aliases WHERE namespace = ? AND function = ? ORDER BY name",
        )
        .bind(NAMESPACE)
        .bind(function)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter()
            .map(|r| {
                let config: String = r.try_get("config")?;
                serde_json::from_str(&config).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    fn row_to_function(row: &sqlx::sqlite::SqliteRow) -> Result<Function, StoreError> {
        let spec: String = row.try_get("spec")?;
        let spec: FunctionSpec =
            serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Function {
            spec,
            revision: row.try_get::<i64, _>("revision")? as u64,
            created_at_ms: row.try_get("created_at_ms")?,
            updated_at_ms: row.try_get("updated_at_ms")?,
        })
    }
}

fn row_to_version(function: &str, row: &sqlx::sqlite::SqliteRow) -> Result<Version, StoreError> {
    let spec: String = row.try_get("spec")?;
    Ok(Version {
        function: function.into(),
        version: row.try_get::<i64, _>("version")? as u32,
        spec: serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        description: row.try_get("description")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

#[async_trait]
impl MetaStore for SqliteStore {
    async fn get_function(&self, name: &str) -> Result<Function, StoreError> {
        let row = sqlx::query(
            "SELECT spec, revision, created_at_ms, updated_at_ms FROM functions
             WHERE namespace = ? AND name = ?",
        )
        .bind(NAMESPACE)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Self::row_to_function(&row),
            None => Err(StoreError::NotFound(name.into())),
        }
    }

    async fn list_functions(&self) -> Result<Vec<Function>, StoreError> {
        let rows = sqlx::query(
            "SELECT spec, revision, created_at_ms, updated_at_ms FROM functions
             WHERE namespace = ? ORDER BY name",
        )
        .bind(NAMESPACE)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::row_to_function).collect()
    }

    async fn put_function(
        &self,
        spec: &FunctionSpec,
        mode: PutMode,
        now_ms: i64,
    ) -> Result<(Function, PutOutcome), StoreError> {
        let json = serde_json::to_string(spec).expect("a spec always serializes");
        let sql = match mode {
            PutMode::Create => {
                "INSERT INTO functions (namespace, name, spec, revision, created_at_ms, updated_at_ms)
                 VALUES (?, ?, ?, 1, ?, ?)
                 RETURNING revision, created_at_ms, updated_at_ms"
            }
            // The WHERE clause leaves an identical spec untouched, so redeploying the same
            // thing neither bumps the revision nor recycles warm instances.
            PutMode::Upsert => {
                "INSERT INTO functions (namespace, name, spec, revision, created_at_ms, updated_at_ms)
                 VALUES (?, ?, ?, 1, ?, ?)
                 ON CONFLICT (namespace, name) DO UPDATE
                    SET spec = excluded.spec, revision = functions.revision + 1,
                        updated_at_ms = excluded.updated_at_ms
                    WHERE functions.spec != excluded.spec
                 RETURNING revision, created_at_ms, updated_at_ms"
            }
        };
        let result = sqlx::query(sql)
            .bind(NAMESPACE)
            .bind(&spec.name)
            .bind(&json)
            .bind(now_ms)
            .bind(now_ms)
            // All rows, not the first: a write with RETURNING outside a transaction commits
            // when the statement runs to its end, and only then does a failed commit (a full
            // disk) come back as an error. `fetch_optional` stops at the row and drops the
            // statement, and the error of its commit with it: the write was lost silently.
            .fetch_all(&self.writer)
            .await
            .map(|rows| rows.into_iter().next());
        let row = match result {
            Ok(row) => row,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Conflict(spec.name.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        let Some(row) = row else {
            return Ok((self.get_function(&spec.name).await?, PutOutcome::Unchanged));
        };
        let function = Function {
            spec: spec.clone(),
            revision: row.try_get::<i64, _>("revision")? as u64,
            created_at_ms: row.try_get("created_at_ms")?,
            updated_at_ms: row.try_get("updated_at_ms")?,
        };
        let outcome = if function.created_at_ms == now_ms && function.revision == 1 {
            PutOutcome::Created
        } else {
            PutOutcome::Updated
        };
        Ok((function, outcome))
    }

    async fn delete_function(&self, name: &str) -> Result<(), StoreError> {
        // Its versions and aliases go with it.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query("DELETE FROM functions WHERE namespace = ? AND name = ?")
            .bind(NAMESPACE)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(name.into()));
        }
        for sql in [
            "DELETE FROM versions WHERE namespace = ? AND function = ?",
            "DELETE FROM aliases WHERE namespace = ? AND function = ?",
        ] {
            sqlx::query(sql)
                .bind(NAMESPACE)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM timer_state WHERE function = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn publish_version(
        &self,
        function: &str,
        description: &str,
        now_ms: i64,
    ) -> Result<(Version, bool), StoreError> {
        // One transaction: two publishes at once get two numbers or one shared version.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "SELECT spec, last_version FROM functions WHERE namespace = ? AND name = ?",
        )
        .bind(NAMESPACE)
        .bind(function)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(function.into()))?;
        let spec: String = row.try_get("spec")?;
        let last: i64 = row.try_get("last_version")?;
        let newest = sqlx::query(
            "SELECT version, spec, description, created_at_ms FROM versions
             WHERE namespace = ? AND function = ? ORDER BY version DESC LIMIT 1",
        )
        .bind(NAMESPACE)
        .bind(function)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(newest) = newest
            && newest.try_get::<String, _>("spec")? == spec
        {
            return Ok((row_to_version(function, &newest)?, false));
        }
        let version = last + 1;
        sqlx::query(
            "INSERT INTO versions (namespace, function, version, spec, description, created_at_ms)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(NAMESPACE)
        .bind(function)
        .bind(version)
        .bind(&spec)
        .bind(description)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE functions SET last_version = ? WHERE namespace = ? AND name = ?")
            .bind(version)
            .bind(NAMESPACE)
            .bind(function)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let spec = serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok((
            Version {
                function: function.into(),
                version: version as u32,
                spec,
                description: description.into(),
                created_at_ms: now_ms,
            },
            true,
        ))
    }

    async fn list_versions(&self, function: &str) -> Result<Vec<Version>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, spec, description, created_at_ms FROM versions
             WHERE namespace = ? AND function = ? ORDER BY version",
        )
        .bind(NAMESPACE)
        .bind(function)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| row_to_version(function, r)).collect()
    }

    async fn get_version(&self, function: &str, version: u32) -> Result<Version, StoreError> {
        let row = sqlx::query(
            "SELECT version, spec, description, created_at_ms FROM versions
             WHERE namespace = ? AND function = ? AND version = ?",
        )
        .bind(NAMESPACE)
        .bind(function)
        .bind(version as i64)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::VersionNotFound(function.into(), version))?;
        row_to_version(function, &row)
    }

    async fn delete_version(&self, function: &str, version: u32) -> Result<(), StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for alias in self.aliases_in(&mut tx, function).await? {
            if alias.versions().any(|v| v == version) {
                return Err(StoreError::VersionInUse(
                    function.into(),
                    version,
                    format!("alias `{}`", alias.name),
                ));
            }
        }
        let done = sqlx::query(
            "DELETE FROM versions WHERE namespace = ? AND function = ? AND version = ?",
        )
        .bind(NAMESPACE)
        .bind(function)
        .bind(version as i64)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::VersionNotFound(function.into(), version));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn put_alias(&self, function: &str, alias: &Alias) -> Result<(), StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for v in alias.versions() {
            let exists = sqlx::query(
                "SELECT 1 FROM versions WHERE namespace = ? AND function = ? AND version = ?",
            )
            .bind(NAMESPACE)
            .bind(function)
            .bind(v as i64)
            .fetch_optional(&mut *tx)
            .await?;
            if exists.is_none() {
                return Err(StoreError::VersionNotFound(function.into(), v));
            }
        }
        let json = serde_json::to_string(alias).expect("an alias always serializes");
        sqlx::query(
            "INSERT INTO aliases (namespace, function, name, config, updated_at_ms)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (namespace, function, name) DO UPDATE
                SET config = excluded.config, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(NAMESPACE)
        .bind(function)
        .bind(&alias.name)
        .bind(&json)
        .bind(alias.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_aliases(&self, function: &str) -> Result<Vec<Alias>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        self.aliases_in(&mut conn, function).await
    }

    async fn delete_alias(&self, function: &str, alias: &str) -> Result<(), StoreError> {
        let done =
            sqlx::query("DELETE FROM aliases WHERE namespace = ? AND function = ? AND name = ?")
                .bind(NAMESPACE)
                .bind(function)
                .bind(alias)
                .execute(&self.writer)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AliasNotFound(function.into(), alias.into()));
        }
        Ok(())
    }

    async fn referenced_code(&self) -> Result<BTreeSet<String>, StoreError> {
        // Every namespace's: code is shared between them by content.
        // The code, the dependencies' archive and the tree of both (see `CodeCache::tree`),
        // the layers' archives and the tree of them all.
        let rows: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT spec ->> '$.code_sha256', spec ->> '$.deps_sha256', spec ->> '$.layers'
             FROM functions
             UNION SELECT spec ->> '$.code_sha256', spec ->> '$.deps_sha256', spec ->> '$.layers'
             FROM versions",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeSet::new();
        for (code, deps, layers) in rows {
            if let (Some(code), Some(deps)) = (&code, &deps)
                && !deps.is_empty()
            {
                out.insert(crate::code_cache::tree_id(code, deps));
            }
            out.extend(code);
            out.extend(deps.filter(|d| !d.is_empty()));
            let layers: Vec<model::Layer> = layers
                .and_then(|l| serde_json::from_str(&l).ok())
                .unwrap_or_default();
            let shas: Vec<&str> = layers.iter().map(|l| l.sha256.as_str()).collect();
            if shas.len() > 1 {
                out.insert(crate::code_cache::layers_id(&shas));
            }
            out.extend(shas.iter().map(|s| s.to_string()));
        }
        Ok(out)
    }

    async fn claim_build(
        &self,
        key: &str,
        node: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<BuildClaim, StoreError> {
        // One statement: a row that is free (no row, or a claim whose lease ended) becomes
        // ours; a done row or a live claim is left as it is and read back.
        let claimed = sqlx::query(
            "INSERT INTO builds (key, state, node, lease_until_ms, started_at_ms)
             VALUES (?1, 'running', ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET node = ?2, lease_until_ms = ?3, started_at_ms = ?4
             WHERE builds.state = 'running' AND (builds.lease_until_ms < ?4 OR builds.node = ?2)
             RETURNING key",
        )
        .bind(key)
        .bind(node)
        .bind(lease_until_ms)
        .bind(now_ms)
        .fetch_all(&self.writer)
        .await?;
        if !claimed.is_empty() {
            return Ok(BuildClaim::Claimed);
        }
        let row = sqlx::query("SELECT state, deps_sha256, node FROM builds WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) if r.get::<String, _>(0) == "done" => BuildClaim::Done {
                deps_sha256: r.get::<Option<String>, _>(1).unwrap_or_default(),
            },
            Some(r) => BuildClaim::Running { node: r.get(2) },
            // Forgotten between the two statements: free again.
            None => BuildClaim::Running {
                node: String::new(),
            },
        })
    }

    async fn finish_build(
        &self,
        key: &str,
        node: &str,
        deps_sha256: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        match deps_sha256 {
            Some(sha) => {
                sqlx::query(
                    "UPDATE builds SET state = 'done', deps_sha256 = ?3, finished_at_ms = ?4,
                     duration_ms = ?4 - started_at_ms WHERE key = ?1 AND node = ?2",
                )
                .bind(key)
                .bind(node)
                .bind(sha)
                .bind(now_ms)
                .execute(&self.writer)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM builds WHERE key = ? AND node = ? AND state = 'running'")
                    .bind(key)
                    .bind(node)
                    .execute(&self.writer)
                    .await?;
            }
        }
        Ok(())
    }

    async fn forget_build(&self, key: &str) -> Result<(), StoreError> {
        // Only a done one: another node may have claimed it again meanwhile.
        sqlx::query("DELETE FROM builds WHERE key = ? AND state = 'done'")
            .bind(key)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO invoke_keys (id, name, sha256, created_at_ms) VALUES (?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.sha256)
        .bind(key.created_at_ms)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, sha256, created_at_ms FROM invoke_keys ORDER BY created_at_ms, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    sha256: r.try_get("sha256")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                })
            })
            .collect()
    }

    async fn delete_key(&self, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM invoke_keys WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::KeyNotFound(id.into()));
        }
        Ok(())
    }

    async fn timer_states(&self, function: Option<&str>) -> Result<Vec<TimerState>, StoreError> {
        let rows = sqlx::query(
            "SELECT function, timer, paused, last_scheduled_ms, last_fire_ms, last_request_id, \
             last_error, skipped, updated_at_ms FROM timer_state \
             WHERE ?1 IS NULL OR function = ?1 ORDER BY function, timer",
        )
        .bind(function)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TimerState {
                    function: r.try_get("function")?,
                    timer: r.try_get("timer")?,
                    paused: r.try_get::<i64, _>("paused")? != 0,
                    last_scheduled_ms: r.try_get("last_scheduled_ms")?,
                    last_fire_ms: r.try_get("last_fire_ms")?,
                    last_request_id: r.try_get("last_request_id")?,
                    last_error: r.try_get("last_error")?,
                    skipped: r.try_get::<i64, _>("skipped")? as u64,
                    updated_at_ms: r.try_get("updated_at_ms")?,
                })
            })
            .collect()
    }

    async fn timer_progress(&self, progress: &[TimerProgress]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for p in progress {
            // A later scheduled time wins; an earlier one (another node's late write) only
            // leaves its error or skip count.
            sqlx::query(
                "INSERT INTO timer_state (function, timer, last_scheduled_ms, last_fire_ms, \
                last_request_id, last_error, skipped, updated_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?4) \
             ON CONFLICT (function, timer) DO UPDATE SET \
                last_fire_ms = CASE WHEN ?3 >= COALESCE(last_scheduled_ms, ?3) \
                    AND ?5 IS NOT NULL THEN ?4 ELSE last_fire_ms END, \
                last_request_id = CASE WHEN ?3 >= COALESCE(last_scheduled_ms, ?3) \
                    AND ?5 IS NOT NULL THEN ?5 ELSE last_request_id END, \
                last_error = CASE WHEN ?3 >= COALESCE(last_scheduled_ms, ?3) THEN ?6 \
                    ELSE last_error END, \
                last_scheduled_ms = MAX(COALESCE(last_scheduled_ms, ?3), ?3), \
                skipped = skipped + ?7, \
                updated_at_ms = ?4",
            )
            .bind(&p.function)
            .bind(&p.timer)
            .bind(p.scheduled_ms)
            .bind(p.now_ms)
            .bind(&p.request_id)
            .bind(&p.error)
            .bind(p.skipped as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn set_timer_paused(
        &self,
        function: &str,
        timer: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO timer_state (function, timer, paused, last_scheduled_ms, updated_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT (function, timer) DO UPDATE SET paused = ?3, updated_at_ms = ?4, \
                last_scheduled_ms = CASE WHEN ?3 = 0 AND paused = 1 \
                    THEN MAX(COALESCE(last_scheduled_ms, ?4), ?4) ELSE last_scheduled_ms END",
        )
        .bind(function)
        .bind(timer)
        .bind(paused as i64)
        .bind(now_ms)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn create_aws_key(&self, key: &AwsKeyRecord) -> Result<AwsKeyRecord, StoreError> {
        sqlx::query(
            "INSERT INTO aws_keys (access_key_id, name, secret, scope, builtin, created_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&key.access_key_id)
        .bind(&key.name)
        .bind(&key.secret)
        .bind(&key.scope)
        .bind(key.builtin as i64)
        .bind(key.created_at_ms)
        .execute(&self.writer)
        .await?;
        let keys = self.list_aws_keys().await?;
        let stored = if key.builtin {
            keys.into_iter().find(|k| k.builtin)
        } else {
            keys.into_iter()
                .find(|k| k.access_key_id == key.access_key_id)
        };
        stored.ok_or_else(|| StoreError::Corrupt("an access key vanished as it was made".into()))
    }

    async fn list_aws_keys(&self) -> Result<Vec<AwsKeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT access_key_id, name, secret, scope, builtin, created_at_ms FROM aws_keys \
             ORDER BY created_at_ms, access_key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AwsKeyRecord {
                    access_key_id: r.try_get("access_key_id")?,
                    name: r.try_get("name")?,
                    secret: r.try_get("secret")?,
                    scope: r.try_get("scope")?,
                    builtin: r.try_get::<i64, _>("builtin")? != 0,
                    created_at_ms: r.try_get("created_at_ms")?,
                })
            })
            .collect()
    }

    async fn delete_aws_key(&self, access_key_id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM aws_keys WHERE access_key_id = ? AND builtin = 0")
            .bind(access_key_id)
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::KeyNotFound(access_key_id.into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::Runtime;

    fn spec(name: &str, handler: &str) -> FunctionSpec {
        let mut s = FunctionSpec::new(name, Runtime::Python3, handler, &"0".repeat(64));
        s.timeout_ms = 1000;
        s
    }

    #[tokio::test]
    async fn builds_are_claimed_once_and_remembered_when_done() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("m.db")).await.unwrap();
        crate::testkit::meta::builds_are_claimed_once_and_remembered_when_done(&store).await;
    }

    #[tokio::test]
    async fn referenced_code_names_dependencies_and_merged_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("m.db")).await.unwrap();
        crate::testkit::meta::referenced_code_names_dependencies_and_merged_trees(&store).await;
    }

    #[tokio::test]
    async fn versions_are_numbered_once_and_aliases_guard_them() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("m.db")).await.unwrap();
        crate::testkit::meta::versions_are_numbered_once_and_aliases_guard_them(&store).await;
    }

    #[tokio::test]
    async fn timer_progress_only_moves_forward_and_a_resume_skips_the_pause() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("m.db")).await.unwrap();
        crate::testkit::meta::timer_progress_only_moves_forward_and_a_resume_skips_the_pause(
            &store,
        )
        .await;
    }

    #[tokio::test]
    async fn one_builtin_access_key_whoever_makes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("m.db")).await.unwrap();
        crate::testkit::meta::one_builtin_access_key_whoever_makes_it(&store).await;
    }

    #[tokio::test]
    async fn keys_are_stored_by_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("m.db")).await.unwrap();
        crate::testkit::meta::keys_are_stored_by_hash(&store).await;
    }

    #[tokio::test]
    async fn racing_publishes_number_each_version_once() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("m.db")).await.unwrap();
        crate::testkit::meta::racing_publishes_number_each_version_once(&store).await;
    }

    #[tokio::test]
    async fn crud_and_revisions() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&tmp.path().join("m.db")).await.unwrap();
        crate::testkit::meta::crud_and_revisions(&store).await;
    }

    /// What was written is there when the file is opened again.
    #[tokio::test]
    async fn a_reopened_store_has_what_was_written() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("meta.db");
        {
            let store = SqliteStore::open(&db).await.unwrap();
            crate::testkit::meta::crud_and_revisions(&store).await;
        }
        let store = SqliteStore::open(&db).await.unwrap();
        let names: Vec<_> = store
            .list_functions()
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.spec.name)
            .collect();
        assert_eq!(names, ["a"]);
    }

    #[tokio::test]
    async fn transactions_work_again_once_a_full_disk_has_room() {
        let disk = crate::testfs::SmallDisk::mount(2048);
        let ballast = disk.ballast(1024 * 1024);
        let store =
            std::sync::Arc::new(SqliteStore::open(&disk.path().join("m.db")).await.unwrap());
        // Each round stores a 40 KB spec and publishes it as a version, in transactions.
        let big = |i: usize| {
            let mut s = spec("f", "main.h");
            s.env
                .insert("PAD".into(), format!("{i}{}", "x".repeat(40_000)));
            s
        };
        let mut full = None;
        for i in 0..200 {
            let round = async {
                store
                    .put_function(&big(i), PutMode::Upsert, i as i64)
                    .await?;
                store.publish_version("f", "", i as i64).await
            };
            if let Err(e) = round.await {
                full = Some(e);
                break;
            }
        }
        let full = full.expect("a 2 MB disk fills up");
        assert!(crate::testfs::is_full(&full), "{full}");
        std::fs::remove_file(ballast).unwrap();
        for i in 0..6 {
            store
                .put_function(&spec(&format!("g{i}"), "main.h"), PutMode::Create, 1)
                .await
                .unwrap();
            store
                .publish_version(&format!("g{i}"), "", 2)
                .await
                .unwrap();
            store.delete_function(&format!("g{i}")).await.unwrap();
        }
        let publishers: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let name = format!("h{i}");
                    store
                        .put_function(&spec(&name, "main.h"), PutMode::Create, 1)
                        .await?;
                    store.publish_version(&name, "", 2).await
                })
            })
            .collect();
        for p in publishers {
            p.await.unwrap().unwrap();
        }
        assert_eq!(store.list_versions("h7").await.unwrap().len(), 1);
    }
}
