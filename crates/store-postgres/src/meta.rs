//! `MetaStore` on PostgreSQL: functions, versions, aliases, keys, builds, timers' progress.

use std::collections::BTreeSet;

use async_trait::async_trait;
use model::{Alias, Function, FunctionSpec, Version};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};
use store::{
    AwsKeyRecord, BuildClaim, KeyRecord, MetaStore, PutMode, PutOutcome, StoreError, TimerProgress,
    TimerState,
};

use crate::PgStore;

const NAMESPACE: &str = "default";

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn row_to_function(row: &PgRow) -> Result<Function, StoreError> {
    let spec: String = row.try_get("spec")?;
    Ok(Function {
        spec: serde_json::from_str(&spec).map_err(corrupt)?,
        revision: row.try_get::<i64, _>("revision")? as u64,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

fn row_to_version(function: &str, row: &PgRow) -> Result<Version, StoreError> {
    let spec: String = row.try_get("spec")?;
    Ok(Version {
        function: function.into(),
        version: row.try_get::<i64, _>("version")? as u32,
        spec: serde_json::from_str(&spec).map_err(corrupt)?,
        description: row.try_get("description")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// Locks a function's row for the rest of `tx`: writes that depend on what they read of
/// its versions and aliases take turns. False when there is no such function.
async fn lock_function(
    tx: &mut Transaction<'_, Postgres>,
    function: &str,
) -> Result<bool, StoreError> {
    Ok(
        sqlx::query("SELECT 1 FROM functions WHERE namespace = $1 AND name = $2 FOR UPDATE")
            .bind(NAMESPACE)
            .bind(function)
            .fetch_optional(&mut **tx)
            .await?
            .is_some(),
    )
}

async fn aliases_in(
    conn: &mut sqlx::PgConnection,
    function: &str,
) -> Result<Vec<Alias>, StoreError> {
    let rows = sqlx::query(
        "SELECT config FROM aliases WHERE namespace = $1 AND function = $2 ORDER BY name",
    )
    .bind(NAMESPACE)
    .bind(function)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| serde_json::from_str(&r.try_get::<String, _>("config")?).map_err(corrupt))
        .collect()
}

#[async_trait]
impl MetaStore for PgStore {
    async fn get_function(&self, name: &str) -> Result<Function, StoreError> {
        let row = sqlx::query(
            "SELECT spec, revision, created_at_ms, updated_at_ms FROM functions
             WHERE namespace = $1 AND name = $2",
        )
        .bind(NAMESPACE)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => row_to_function(&row),
            None => Err(StoreError::NotFound(name.into())),
        }
    }

    async fn list_functions(&self) -> Result<Vec<Function>, StoreError> {
        let rows = sqlx::query(
            "SELECT spec, revision, created_at_ms, updated_at_ms FROM functions
             WHERE namespace = $1 ORDER BY name",
        )
        .bind(NAMESPACE)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_function).collect()
    }

    async fn put_function(
        &self,
        spec: &FunctionSpec,
        mode: PutMode,
        now_ms: i64,
    ) -> Result<(Function, PutOutcome), StoreError> {
        let json = serde_json::to_string(spec).expect("a spec always serializes");
        // `xmax = 0` holds for a row this statement inserted, not for one it updated.
        let sql = match mode {
            PutMode::Create => {
                "INSERT INTO functions (namespace, name, spec, revision, created_at_ms, updated_at_ms)
                 VALUES ($1, $2, $3, 1, $4, $4)
                 RETURNING revision, created_at_ms, updated_at_ms, (xmax = 0) AS inserted"
            }
            // The WHERE clause leaves an identical spec untouched, so redeploying the same
            // thing neither bumps the revision nor recycles warm instances.
            PutMode::Upsert => {
                "INSERT INTO functions (namespace, name, spec, revision, created_at_ms, updated_at_ms)
                 VALUES ($1, $2, $3, 1, $4, $4)
                 ON CONFLICT (namespace, name) DO UPDATE
                    SET spec = excluded.spec, revision = functions.revision + 1,
                        updated_at_ms = excluded.updated_at_ms
                    WHERE functions.spec <> excluded.spec
                 RETURNING revision, created_at_ms, updated_at_ms, (xmax = 0) AS inserted"
            }
        };
        let row = match sqlx::query(sql)
            .bind(NAMESPACE)
            .bind(&spec.name)
            .bind(&json)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await
        {
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
        let outcome = if row.try_get::<bool, _>("inserted")? {
            PutOutcome::Created
        } else {
            PutOutcome::Updated
        };
        Ok((function, outcome))
    }

    async fn delete_function(&self, name: &str) -> Result<(), StoreError> {
        // Its versions, aliases and timers' progress go with it.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM functions WHERE namespace = $1 AND name = $2")
            .bind(NAMESPACE)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(name.into()));
        }
        for sql in [
            "DELETE FROM versions WHERE namespace = $1 AND function = $2",
            "DELETE FROM aliases WHERE namespace = $1 AND function = $2",
        ] {
            sqlx::query(sql)
                .bind(NAMESPACE)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM timer_state WHERE function = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO invoke_keys (id, name, sha256, created_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.sha256)
        .bind(key.created_at_ms)
        .execute(&self.pool)
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
        let done = sqlx::query("DELETE FROM invoke_keys WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::KeyNotFound(id.into()));
        }
        Ok(())
    }

    async fn create_aws_key(&self, key: &AwsKeyRecord) -> Result<AwsKeyRecord, StoreError> {
        // Any unique index that refuses the row (the one builtin key) leaves it unwritten.
        sqlx::query(
            "INSERT INTO aws_keys (access_key_id, name, secret, scope, builtin, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&key.access_key_id)
        .bind(&key.name)
        .bind(&key.secret)
        .bind(&key.scope)
        .bind(key.builtin)
        .bind(key.created_at_ms)
        .execute(&self.pool)
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
            "SELECT access_key_id, name, secret, scope, builtin, created_at_ms FROM aws_keys
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
                    builtin: r.try_get("builtin")?,
                    created_at_ms: r.try_get("created_at_ms")?,
                })
            })
            .collect()
    }

    async fn delete_aws_key(&self, access_key_id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM aws_keys WHERE access_key_id = $1 AND NOT builtin")
            .bind(access_key_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::KeyNotFound(access_key_id.into()));
        }
        Ok(())
    }

    async fn timer_states(&self, function: Option<&str>) -> Result<Vec<TimerState>, StoreError> {
        let rows = sqlx::query(
            "SELECT function, timer, paused, last_scheduled_ms, last_fire_ms, last_request_id,
                    last_error, skipped, updated_at_ms FROM timer_state
             WHERE $1::TEXT IS NULL OR function = $1 ORDER BY function, timer",
        )
        .bind(function)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TimerState {
                    function: r.try_get("function")?,
                    timer: r.try_get("timer")?,
                    paused: r.try_get("paused")?,
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
        // In key order: two nodes writing overlapping batches lock rows in the same order.
        let mut sorted: Vec<&TimerProgress> = progress.iter().collect();
        sorted.sort_by(|a, b| (&a.function, &a.timer).cmp(&(&b.function, &b.timer)));
        let mut tx = self.pool.begin().await?;
        for p in sorted {
            // A later scheduled time wins; an earlier one (another node's late write) only
            // leaves its skip count.
            sqlx::query(
                "INSERT INTO timer_state (function, timer, last_scheduled_ms, last_fire_ms,
                    last_request_id, last_error, skipped, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $4)
                 ON CONFLICT (function, timer) DO UPDATE SET
                    last_fire_ms = CASE WHEN $3 >= COALESCE(timer_state.last_scheduled_ms, $3)
                        AND $5::TEXT IS NOT NULL THEN $4 ELSE timer_state.last_fire_ms END,
                    last_request_id = CASE WHEN $3 >= COALESCE(timer_state.last_scheduled_ms, $3)
                        AND $5::TEXT IS NOT NULL THEN $5 ELSE timer_state.last_request_id END,
                    last_error = CASE WHEN $3 >= COALESCE(timer_state.last_scheduled_ms, $3)
                        THEN $6 ELSE timer_state.last_error END,
                    last_scheduled_ms = GREATEST(COALESCE(timer_state.last_scheduled_ms, $3), $3),
                    skipped = timer_state.skipped + $7,
                    updated_at_ms = $4",
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
            "INSERT INTO timer_state (function, timer, paused, last_scheduled_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (function, timer) DO UPDATE SET paused = $3, updated_at_ms = $4,
                last_scheduled_ms = CASE WHEN NOT $3 AND timer_state.paused
                    THEN GREATEST(COALESCE(timer_state.last_scheduled_ms, $4), $4)
                    ELSE timer_state.last_scheduled_ms END",
        )
        .bind(function)
        .bind(timer)
        .bind(paused)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn publish_version(
        &self,
        function: &str,
        description: &str,
        now_ms: i64,
    ) -> Result<(Version, bool), StoreError> {
        // The function's row locked: two publishes at once get two numbers or one version.
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT spec, last_version FROM functions WHERE namespace = $1 AND name = $2
             FOR UPDATE",
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
             WHERE namespace = $1 AND function = $2 ORDER BY version DESC LIMIT 1",
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
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(NAMESPACE)
        .bind(function)
        .bind(version)
        .bind(&spec)
        .bind(description)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE functions SET last_version = $1 WHERE namespace = $2 AND name = $3")
            .bind(version)
            .bind(NAMESPACE)
            .bind(function)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((
            Version {
                function: function.into(),
                version: version as u32,
                spec: serde_json::from_str(&spec).map_err(corrupt)?,
                description: description.into(),
                created_at_ms: now_ms,
            },
            true,
        ))
    }

    async fn list_versions(&self, function: &str) -> Result<Vec<Version>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, spec, description, created_at_ms FROM versions
             WHERE namespace = $1 AND function = $2 ORDER BY version",
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
             WHERE namespace = $1 AND function = $2 AND version = $3",
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
        let mut tx = self.pool.begin().await?;
        // Taking turns with `put_alias`: no alias can come to point at it meanwhile.
        lock_function(&mut tx, function).await?;
        for alias in aliases_in(&mut tx, function).await? {
            if alias.versions().any(|v| v == version) {
                return Err(StoreError::VersionInUse(
                    function.into(),
                    version,
                    format!("alias `{}`", alias.name),
                ));
            }
        }
        let done = sqlx::query(
            "DELETE FROM versions WHERE namespace = $1 AND function = $2 AND version = $3",
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
        let mut tx = self.pool.begin().await?;
        lock_function(&mut tx, function).await?;
        for v in alias.versions() {
            let exists = sqlx::query(
                "SELECT 1 FROM versions WHERE namespace = $1 AND function = $2 AND version = $3",
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
             VALUES ($1, $2, $3, $4, $5)
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
        aliases_in(&mut conn, function).await
    }

    async fn delete_alias(&self, function: &str, alias: &str) -> Result<(), StoreError> {
        let done =
            sqlx::query("DELETE FROM aliases WHERE namespace = $1 AND function = $2 AND name = $3")
                .bind(NAMESPACE)
                .bind(function)
                .bind(alias)
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AliasNotFound(function.into(), alias.into()));
        }
        Ok(())
    }

    async fn referenced_code(&self) -> Result<BTreeSet<String>, StoreError> {
        // Every namespace's: code is shared between them by content. The code, the
        // dependencies' archive and the tree of both, the layers' archives and their tree.
        let rows: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT spec::jsonb ->> 'code_sha256', spec::jsonb ->> 'deps_sha256',
                    spec::jsonb ->> 'layers' FROM functions
             UNION SELECT spec::jsonb ->> 'code_sha256', spec::jsonb ->> 'deps_sha256',
                    spec::jsonb ->> 'layers' FROM versions",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeSet::new();
        for (code, deps, layers) in rows {
            if let (Some(code), Some(deps)) = (&code, &deps)
                && !deps.is_empty()
            {
                out.insert(store::tree_id(code, deps));
            }
            out.extend(code);
            out.extend(deps.filter(|d| !d.is_empty()));
            let layers: Vec<model::Layer> = layers
                .and_then(|l| serde_json::from_str(&l).ok())
                .unwrap_or_default();
            let shas: Vec<&str> = layers.iter().map(|l| l.sha256.as_str()).collect();
            if shas.len() > 1 {
                out.insert(store::layers_id(&shas));
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
             VALUES ($1, 'running', $2, $3, $4)
             ON CONFLICT (key) DO UPDATE SET node = $2, lease_until_ms = $3, started_at_ms = $4
             WHERE builds.state = 'running' AND (builds.lease_until_ms < $4 OR builds.node = $2)
             RETURNING key",
        )
        .bind(key)
        .bind(node)
        .bind(lease_until_ms)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        if claimed.is_some() {
            return Ok(BuildClaim::Claimed);
        }
        let row = sqlx::query("SELECT state, deps_sha256, node FROM builds WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) if r.try_get::<String, _>(0)? == "done" => BuildClaim::Done {
                deps_sha256: r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
            },
            Some(r) => BuildClaim::Running {
                node: r.try_get(2)?,
            },
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
                    "UPDATE builds SET state = 'done', deps_sha256 = $3, finished_at_ms = $4,
                     duration_ms = $4 - started_at_ms WHERE key = $1 AND node = $2",
                )
                .bind(key)
                .bind(node)
                .bind(sha)
                .bind(now_ms)
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query(
                    "DELETE FROM builds WHERE key = $1 AND node = $2 AND state = 'running'",
                )
                .bind(key)
                .bind(node)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn forget_build(&self, key: &str) -> Result<(), StoreError> {
        // Only a done one: another node may have claimed it again meanwhile.
        sqlx::query("DELETE FROM builds WHERE key = $1 AND state = 'done'")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The contract every `MetaStore` keeps (`store::testkit::meta`), on PostgreSQL.

    crate::testing::contract!(
        meta;
        crud_and_revisions,
        builds_are_claimed_once_and_remembered_when_done,
        referenced_code_names_dependencies_and_merged_trees,
        versions_are_numbered_once_and_aliases_guard_them,
        timer_progress_only_moves_forward_and_a_resume_skips_the_pause,
        one_builtin_access_key_whoever_makes_it,
        keys_are_stored_by_hash,
        racing_publishes_number_each_version_once,
    );
}
