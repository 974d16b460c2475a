//! The nodes sharing a store: a server registers itself, heartbeats, and after a restart
//! is the same node again (its id is its data dir's), started anew.

use std::time::Duration;

use serde_json::Value;

use crate::harness::Server;

async fn nodes(server: &Server) -> Vec<Value> {
    let run = server.cli(&["nodes", "ls", "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list: Value = serde_json::from_str(&run.stdout).unwrap();
    list["nodes"].as_array().cloned().unwrap()
}

#[tokio::test]
async fn a_server_lists_itself_alive_and_is_the_same_node_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"));
    let listed = nodes(&server).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let me = &listed[0];
    assert_eq!((&me["state"], &me["this"]), (&"alive".into(), &true.into()));
    assert_eq!(me["address"], server.endpoint, "{me}");
    // Heartbeats move `last_seen` on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = &nodes(&server).await[0];
    assert!(
        later["last_seen"].as_str() > me["last_seen"].as_str(),
        "{later}"
    );
    let table = server.cli(&["nodes", "ls"]).await;
    assert!(table.stdout.contains("alive"), "{}", table.stdout);

    server.kill();
    let again = Server::start(&tmp.path().join("data"));
    let listed = nodes(&again).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], me["id"]);
    assert!(listed[0]["started_at"].as_str() > me["started_at"].as_str());
}
