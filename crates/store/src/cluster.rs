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
    /// The cluster's secret `name` (the admin token): `candidate` if none was stored,
    /// else the one stored first. Nodes starting together agree on one.
    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, StoreError>;
}

/// A committed change of something nodes keep in memory (a function, its versions or
/// aliases, keys, a flow, a pause), numbered in commit order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    /// `function`, `version`, `alias`, `key`, `aws_key`, `pause` or `flow`.
    pub kind: String,
    /// The function's or flow's name; a key's id.
    pub name: String,
}

/// What `ChangeFeed::changes_after` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangesAfter {
    /// The changes after the asked one, in commit order (empty: none).
    Changes(Vec<Change>),
    /// Changes after the asked one were purged before this node read them: it must load
    /// everything again, then follow from `latest`.
    Gap { latest: i64 },
}

/// How nodes sharing a store learn of each other's writes. The store numbers every change
/// in commit order, so a node that missed a wake-up (a notification lost while its
/// listening connection was down) finds what it missed by asking for what came after the
/// last one it saw. Only shared backends have one: on the embedded store one node makes
/// every write and republishes as it writes.
#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// The newest change's number (0 when none): where a node that has just loaded
    /// everything starts following.
    async fn latest_change(&self) -> Result<i64, StoreError>;
    /// The changes after `after`, at most `limit`.
    async fn changes_after(&self, after: i64, limit: usize) -> Result<ChangesAfter, StoreError>;
    /// Returns when a change may have been committed since the last return: a notification
    /// came, or the listening connection was made again (notifications sent meanwhile are
    /// lost). Callers read `changes_after` then, and also now and then without a wake-up.
    async fn changed(&self);
    /// Forgets changes committed before `before_ms`; how many.
    async fn purge_changes(&self, before_ms: i64) -> Result<u64, StoreError>;
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

    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        let row = sqlx::query(
            "INSERT INTO cluster_secrets (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = cluster_secrets.value
             RETURNING value",
        )
        .bind(name)
        .bind(candidate)
        .fetch_one(&self.writer)
        .await?;
        Ok(row.try_get("value")?)
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
        the_first_secret_stored_is_everyones,
    );
}
