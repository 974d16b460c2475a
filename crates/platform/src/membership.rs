//! This node among the nodes that share the store: its heartbeat, and who is alive.
//!
//! Each node writes its row every `NODE_HEARTBEAT_MS` and counts a node dead once its row
//! is older than `NODE_DEAD_AFTER_MS`; rows older than `NODE_FORGET_AFTER_MS` are dropped
//! by whichever node notices. On the embedded backend the list is this node alone.
//!
//! After each beat the node also reads every row into memory (`peers`): placement asks
//! that view per call, so the invoke path reads no store for it. It is at most a beat old;
//! a node that dies is left out once its row is older than the dead bound, read against
//! the clock at each call, so the view decays even while the store cannot be read.

use std::sync::{Arc, Mutex, RwLock};
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

/// This node and the other live nodes, as the queries that fan out to every node see the
/// cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// This node's id.
    pub this: String,
    /// The other nodes alive now (seen within `NODE_DEAD_AFTER_MS`), by id.
    pub others: Vec<NodeRecord>,
}

/// This node's membership.
pub struct Membership {
    store: Arc<dyn ClusterStore>,
    me: NodeRecord,
    /// Every node's row as last read, this one's among them.
    peers: RwLock<Arc<Vec<NodeRecord>>>,
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
            peers: RwLock::new(Arc::new(Vec::new())),
            stop: watch::channel(false).0,
            task: Mutex::new(None),
        });
        membership.read_peers().await;
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
            self.read_peers().await;
        }
    }

    /// Reads every node's row into the view placement uses.
    async fn read_peers(&self) {
        match self.store.list_nodes().await {
            Ok(rows) => *self.peers.write().unwrap() = Arc::new(rows),
            // The old view stays; its rows age out of `alive` on their own.
            Err(e) => tracing::warn!(error = %e, "reading the nodes' rows failed"),
        }
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.me.id
    }

    /// The nodes as last read (at most a heartbeat ago), dead ones included: filter them
    /// with `alive` at the time of use.
    pub fn peers(&self) -> Arc<Vec<NodeRecord>> {
        self.peers.read().unwrap().clone()
    }

    /// This node and the other nodes alive at `now_ms`, from the view read after the last
    /// beat (no store read).
    pub fn view(&self, now_ms: i64) -> NodeView {
        let mut others: Vec<NodeRecord> = self
            .peers()
            .iter()
            .filter(|n| n.id != self.me.id && alive(n, now_ms))
            .cloned()
            .collect();
        others.sort_by(|a, b| a.id.cmp(&b.id));
        NodeView {
            this: self.me.id.clone(),
            others,
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
                alive: alive(&node, now),
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

/// Whether `node` was seen within the dead bound at `now_ms`.
pub fn alive(node: &NodeRecord, now_ms: i64) -> bool {
    now_ms - node.last_seen_ms <= limits::NODE_DEAD_AFTER_MS as i64
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
        // The view placement reads has the same rows, read without a query.
        let peers = m.peers();
        let live: Vec<&str> = peers
            .iter()
            .filter(|n| alive(n, now_ms()))
            .map(|n| n.id.as_str())
            .collect();
        assert_eq!(live, ["me"]);
        assert_eq!(m.id(), "me");
        // The fan-out view: this node apart, the dead left out.
        let view = m.view(now_ms());
        assert_eq!((view.this.as_str(), view.others.len()), ("me", 0));
        let live = NodeRecord {
            id: "other".into(),
            address: "http://10.0.0.7:9700".into(),
            started_at_ms: now_ms(),
            last_seen_ms: now_ms(),
        };
        m.store.heartbeat(&live).await.unwrap();
        m.read_peers().await;
        assert_eq!(m.view(now_ms()).others, [live]);
        // The heartbeat keeps the row fresh.
        let first = nodes[1].node.last_seen_ms;
        tokio::time::sleep(Duration::from_millis(limits::NODE_HEARTBEAT_MS + 300)).await;
        let later = m.nodes().await.unwrap()[1].node.last_seen_ms;
        assert!(later > first, "{later} > {first}");
        m.stop().await;
    }
}
