//! `ClusterStore` on PostgreSQL: nodes' heartbeats and singleton leases.

use async_trait::async_trait;
use sqlx::Row;
use store::{ClusterStore, NodeRecord, StoreError};

use crate::PgStore;

#[async_trait]
impl ClusterStore for PgStore {
    async fn heartbeat(&self, node: &NodeRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO nodes (id, address, started_at_ms, last_seen_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET address = $2, started_at_ms = $3,
                last_seen_ms = GREATEST(nodes.last_seen_ms, $4)",
        )
        .bind(&node.id)
        .bind(&node.address)
        .bind(node.started_at_ms)
        .bind(node.last_seen_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, address, started_at_ms, last_seen_ms FROM nodes ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeRecord {
                    id: r.try_get("id")?,
                    address: r.try_get("address")?,
                    started_at_ms: r.try_get("started_at_ms")?,
                    last_seen_ms: r.try_get("last_seen_ms")?,
                })
            })
            .collect()
    }

    async fn forget_nodes(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM nodes WHERE last_seen_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn acquire_lease(
        &self,
        name: &str,
        node: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        // One statement, atomic under concurrency: two nodes inserting the free lease at
        // once meet in the unique index, and the second's update sees the first's row.
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, epoch, until_ms) VALUES ($1, $2, 1, $4)
             ON CONFLICT (name) DO UPDATE SET
                epoch = CASE WHEN leases.holder = $2 THEN leases.epoch ELSE leases.epoch + 1 END,
                holder = $2, until_ms = $4
             WHERE leases.holder = $2 OR leases.holder IS NULL OR leases.until_ms <= $3
             RETURNING epoch",
        )
        .bind(name)
        .bind(node)
        .bind(now_ms)
        .bind(until_ms)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(r.try_get::<i64, _>("epoch")? as u64))
            .transpose()
    }

    async fn release_lease(&self, name: &str, node: &str) -> Result<(), StoreError> {
        // The row stays (its epoch must keep growing); only its holder goes.
        sqlx::query("UPDATE leases SET holder = NULL WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        // A no-op update on conflict makes RETURNING answer the stored value; a racing
        // insert of the same name waits for the first one's commit and then conflicts.
        let row = sqlx::query(
            "INSERT INTO cluster_secrets (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = cluster_secrets.value
             RETURNING value",
        )
        .bind(name)
        .bind(candidate)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("value")?)
    }
}

#[cfg(test)]
mod tests {
    //! The contract every `ClusterStore` keeps (`store::testkit::cluster`), on PostgreSQL.

    crate::testing::contract!(
        cluster;
        heartbeats_register_refresh_and_age_out_nodes,
        a_lease_has_one_holder_and_its_epoch_fences_the_next,
        racing_nodes_get_one_lease,
        the_first_secret_stored_is_everyones,
    );
}
