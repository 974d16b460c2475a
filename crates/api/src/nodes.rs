//! `/v1/nodes`: the nodes sharing this server's store, as their heartbeats say.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::{ApiError, AppState};

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    pub id: String,
    /// Where the others reach its API.
    pub address: String,
    /// `alive` (seen within the last 10 s) or `dead`.
    pub state: &'static str,
    /// The node that answered.
    pub this: bool,
    pub started_at: String,
    pub last_seen: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

/// Every node: alive ones and those dead less than a day.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", responses((status = 200, body = NodeList)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<NodeList>, ApiError> {
    let nodes = s.platform.nodes().await?;
    Ok(Json(NodeList {
        nodes: nodes
            .into_iter()
            .map(|n| NodeView {
                id: n.node.id,
                address: n.node.address,
                state: if n.alive { "alive" } else { "dead" },
                this: n.this,
                started_at: model::civil::rfc3339_ms(n.node.started_at_ms),
                last_seen: model::civil::rfc3339_ms(n.node.last_seen_ms),
            })
            .collect(),
    }))
}
