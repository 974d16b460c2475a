//! Nodes and singleton leases: the `ClusterStore` trait and its SQLite backend.
//!
//! Every node heartbeats its row (id, address, when it started, when it was last seen); a
//! node not seen for a bound is dead to the others. Work that one node at a time must do
//! takes a lease row: held until a time, renewed by its holder, taken over by another node
//! once it ran out. Each change of holder raises the lease's epoch, the fencing token a
//! holder's writes can carry so a holder that lost its lease (paused, cut off) cannot write
//! over its successor's. Rows, never session advisory locks: those leak or vanish behind
//! connection poolers and reconnects.

use async_trait::async_trait;
use sqlx::Row;

use crate::{SqliteStore, StoreError};

/// A node as it last reported itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: String,
    /// Where the others reach its API (`http://10.0.0.5:9700`).
    pub address: String,
    pub started_at_ms: i64,
    pub last_seen_ms: i64,
}

/// Node membership and singleton leases, shared by every node.
#[async_trait]
pub trait ClusterStore: Send + Sync + 'static {
    /// Registers the node or refreshes its row (address, start, `last_seen_ms`).
    async fn heartbeat(&self, node: &NodeRecord) -> Result<(), StoreError>;
    /// Every registered node, by id.
    async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Forgets nodes last seen before `before_ms`; how many.
    async fn forget_nodes(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Takes lease `name` for `node` until `until_ms` when nobody holds it, its holder's
    /// time ran out by `now_ms`, or `node` holds it already (a renewal): its epoch, which
    /// grows whenever the holder changes. `None` while another node holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        node: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<u64>, StoreError>;
    /// Gives lease `name` up if `node` holds it, so another node need not wait it out.
    async fn release_lease(&self, name: &str, node: &str) -> Result<(), StoreError>;
}

#[async_trait]
impl ClusterStore for SqliteStore {
    async fn heartbeat(&self, node: &NodeRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO nodes (id, address, started_at_ms, last_seen_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET address = ?2, started_at_ms = ?3,
                last_seen_ms = MAX(nodes.last_seen_ms, ?4)",
        )
        .bind(&node.id)
        .bind(&node.address)
        .bind(node.started_at_ms)
        .bind(node.last_seen_ms)
        .execute(&self.writer)
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
        let done = sqlx::query("DELETE FROM nodes WHERE last_seen_ms < ?")
            .bind(before_ms)
            .execute(&self.writer)
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
        // One statement: free or expired or ours becomes ours (a new holder raises the
        // epoch); another's live lease is left alone and nothing comes back.
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, epoch, until_ms) VALUES (?1, ?2, 1, ?4)
             ON CONFLICT (name) DO UPDATE SET
                epoch = CASE WHEN leases.holder = ?2 THEN leases.epoch ELSE leases.epoch + 1 END,
                holder = ?2, until_ms = ?4
             WHERE leases.holder = ?2 OR leases.holder IS NULL OR leases.until_ms <= ?3
             RETURNING epoch",
        )
        .bind(name)
        .bind(node)
        .bind(now_ms)
        .bind(until_ms)
        // All rows: a write's commit error comes back only once its statement has run out.
        .fetch_all(&self.writer)
        .await?;
        row.first()
            .map(|r| Ok(r.try_get::<i64, _>("epoch")? as u64))
            .transpose()
    }

    async fn release_lease(&self, name: &str, node: &str) -> Result<(), StoreError> {
        // The row stays (its epoch must keep growing); only its holder goes.
        sqlx::query("UPDATE leases SET holder = NULL WHERE name = ? AND holder = ?")
            .bind(name)
            .bind(node)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    macro_rules! contract {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test]
            async fn $name() {
                let tmp = tempfile::tempdir().unwrap();
                let store = crate::SqliteStore::open(&tmp.path().join("c.db")).await.unwrap();
                crate::testkit::cluster::$name(&store).await;
            }
        )*};
    }

    contract!(
        heartbeats_register_refresh_and_age_out_nodes,
        a_lease_has_one_holder_and_its_epoch_fences_the_next,
        racing_nodes_get_one_lease,
    );
}
