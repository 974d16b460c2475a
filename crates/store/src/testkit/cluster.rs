//! `ClusterStore`'s contract: nodes' heartbeats and singleton leases with a fencing epoch.

use crate::{ClusterStore, NodeRecord};

fn node(id: &str, last_seen_ms: i64) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        address: format!("http://{id}:9700"),
        started_at_ms: 100,
        last_seen_ms,
    }
}

/// A heartbeat registers a node or refreshes it (never back in time); nodes not seen since
/// a bound are forgotten.
pub async fn heartbeats_register_refresh_and_age_out_nodes(store: &dyn ClusterStore) {
    store.heartbeat(&node("b", 1_000)).await.unwrap();
    store.heartbeat(&node("a", 1_000)).await.unwrap();
    store.heartbeat(&node("a", 2_000)).await.unwrap();
    // A late heartbeat (sent before the last one) does not make the node look older.
    store.heartbeat(&node("a", 1_500)).await.unwrap();
    let restarted = NodeRecord {
        address: "http://a:9800".into(),
        started_at_ms: 1_900,
        ..node("a", 2_100)
    };
    store.heartbeat(&restarted).await.unwrap();
    assert_eq!(
        store.list_nodes().await.unwrap(),
        [restarted, node("b", 1_000)]
    );
    assert_eq!(store.forget_nodes(2_000).await.unwrap(), 1);
    let ids: Vec<String> = store
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert_eq!(ids, ["a"]);
}

/// One holder at a time: renewals keep the epoch, a takeover after expiry raises it, the
/// old holder cannot renew a lease it lost, and a release frees it at once.
pub async fn a_lease_has_one_holder_and_its_epoch_fences_the_next(store: &dyn ClusterStore) {
    assert_eq!(
        store.acquire_lease("sweep", "n1", 0, 1_000).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store
            .acquire_lease("sweep", "n2", 500, 1_500)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .acquire_lease("sweep", "n1", 900, 1_900)
            .await
            .unwrap(),
        Some(1),
        "a renewal keeps the epoch"
    );
    // n1 stops renewing: once its time is out, n2 takes over under a new epoch.
    assert_eq!(
        store
            .acquire_lease("sweep", "n2", 1_900, 2_900)
            .await
            .unwrap(),
        Some(2)
    );
    assert_eq!(
        store
            .acquire_lease("sweep", "n1", 2_000, 3_000)
            .await
            .unwrap(),
        None,
        "a holder that lost its lease does not get it back while the new one holds"
    );
    // Another name is another lease.
    assert_eq!(
        store.acquire_lease("gc", "n1", 2_000, 3_000).await.unwrap(),
        Some(1)
    );
    // Only the holder releases; then anyone takes it at once, under a new epoch.
    store.release_lease("sweep", "n1").await.unwrap();
    assert_eq!(
        store
            .acquire_lease("sweep", "n3", 2_100, 3_100)
            .await
            .unwrap(),
        None
    );
    store.release_lease("sweep", "n2").await.unwrap();
    assert_eq!(
        store
            .acquire_lease("sweep", "n3", 2_100, 3_100)
            .await
            .unwrap(),
        Some(3)
    );
}

/// Nodes racing for a free lease: exactly one gets it.
pub async fn racing_nodes_get_one_lease(store: &dyn ClusterStore) {
    let names: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
    let racing = names
        .iter()
        .map(|n| store.acquire_lease("singleton", n, 0, 10_000));
    let got = futures_util::future::join_all(racing).await;
    let winners: Vec<u64> = got.into_iter().filter_map(|r| r.unwrap()).collect();
    assert_eq!(winners, [1]);
}

/// The first node's secret is the cluster's: later candidates, racing or not, get it.
pub async fn the_first_secret_stored_is_everyones(store: &dyn ClusterStore) {
    let racing = (0..8).map(|i| format!("token-{i}")).collect::<Vec<_>>();
    let got = futures_util::future::join_all(
        racing.iter().map(|c| store.shared_secret("admin_token", c)),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect::<Vec<_>>();
    assert!(racing.contains(&got[0]));
    assert!(got.iter().all(|g| g == &got[0]), "{got:?}");
    assert_eq!(
        store.shared_secret("admin_token", "later").await.unwrap(),
        got[0]
    );
    assert_eq!(
        store.shared_secret("other", "x").await.unwrap(),
        "x",
        "another name is another secret"
    );
}
