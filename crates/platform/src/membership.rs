//! This node among the nodes that share the store: its heartbeat, and who is alive.
//!
//! Each node writes its row every `NODE_HEARTBEAT_MS` and counts a node dead once its row
//! is older than `NODE_DEAD_AFTER_MS`; rows older than `NODE_FORGET_AFTER_MS` are dropped
//! by whichever node notices. On the embedded backend the list is this node alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::limits;
use store::{ClusterStore, NodeRecord};
use tokio::sync::watch;

use crate::{Error, now_ms};

/// A node as `nimbus nodes ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: NodeRecord,
    /// Seen within `NODE_DEAD_AFTER_MS`.
    pub alive: bool,
    /// The node answering.
    pub this: bool,
}

/// This node's membership.
pub struct Membership {
    store: Arc<dyn ClusterStore>,
    me: NodeRecord,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Membership {
    /// Registers this node (the first heartbeat, so it is listed before the server
    /// answers) and keeps its row fresh until `stop`.
    pub async fn start(
        store: Arc<dyn ClusterStore>,
        id: &str,
        address: &str,
    ) -> Result<Arc<Membership>, Error> {
        let now = now_ms();
        let me = NodeRecord {
            id: id.to_string(),
            address: address.to_string(),
            started_at_ms: now,
            last_seen_ms: now,
        };
        store.heartbeat(&me).await?;
        let membership = Arc::new(Membership {
            store,
            me,
            stop: watch::channel(false).0,
            task: Mutex::new(None),
        });
        let beat = membership.clone();
        *membership.task.lock().unwrap() = Some(tokio::spawn(async move { beat.run().await }));
        Ok(membership)
    }

    async fn run(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(limits::NODE_HEARTBEAT_MS)) => {}
                _ = stop.changed() => return,
            }
            let now = now_ms();
            let me = NodeRecord {
                last_seen_ms: now,
                ..self.me.clone()
            };
            if let Err(e) = self.store.heartbeat(&me).await {
                // The next beat tries again; ten missed ones make the others count this
                // node dead, which is what it is to them while the store is out of reach.
                tracing::warn!(error = %e, "writing this node's heartbeat failed");
            }
        }
    }

    /// Every node the store knows, alive or not yet forgotten; forgets the long dead.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, Error> {
        let now = now_ms();
        self.store
            .forget_nodes(now - limits::NODE_FORGET_AFTER_MS as i64)
            .await?;
        Ok(self
            .store
            .list_nodes()
            .await?
            .into_iter()
            .map(|node| NodeStatus {
                alive: now - node.last_seen_ms <= limits::NODE_DEAD_AFTER_MS as i64,
                this: node.id == self.me.id,
                node,
            })
            .collect())
    }

    /// Stops the heartbeat (the row stays: the node looks dead once it is old).
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_node_lists_itself_alive_and_a_silent_one_dead() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn ClusterStore> = Arc::new(
            store::SqliteStore::open(&tmp.path().join("db"))
                .await
                .unwrap(),
        );
        let old = now_ms() - limits::NODE_DEAD_AFTER_MS as i64 - 1;
        store
            .heartbeat(&NodeRecord {
                id: "gone".into(),
                address: "http://10.0.0.9:9700".into(),
                started_at_ms: old,
                last_seen_ms: old,
            })
            .await
            .unwrap();
        let ancient = now_ms() - limits::NODE_FORGET_AFTER_MS as i64 - 1;
        store
            .heartbeat(&NodeRecord {
                id: "ancient".into(),
                address: "http://10.0.0.8:9700".into(),
                started_at_ms: ancient,
                last_seen_ms: ancient,
            })
            .await
            .unwrap();
        let m = Membership::start(store, "me", "http://127.0.0.1:9700")
            .await
            .unwrap();
        let nodes = m.nodes().await.unwrap();
        let seen: Vec<(&str, bool, bool)> = nodes
            .iter()
            .map(|n| (n.node.id.as_str(), n.alive, n.this))
            .collect();
        assert_eq!(seen, [("gone", false, false), ("me", true, true)]);
        // The heartbeat keeps the row fresh.
        let first = nodes[1].node.last_seen_ms;
        tokio::time::sleep(Duration::from_millis(limits::NODE_HEARTBEAT_MS + 300)).await;
        let later = m.nodes().await.unwrap()[1].node.last_seen_ms;
        assert!(later > first, "{later} > {first}");
        m.stop().await;
    }
}
