//! `/v1/triggers` and pausing/resuming a function's timers.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::Path;
use crate::{ApiError, AppState, ErrorBody};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TriggersQuery {
    /// Only this function's triggers.
    pub function: Option<String>,
}

/// A trigger and its state.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerView {
    pub function: String,
    /// `http` or `timer`.
    pub kind: String,
    /// The timer's name, or the route (`GET /items/{id}`).
    pub name: String,
    /// The spec as deployed.
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
    /// `active` or `paused`.
    pub state: &'static str,
    /// When it next fires (Unix ms), for timers that are not paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_fire_ms: Option<i64>,
    /// The scheduled time of its last fire, and when that fire was queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_scheduled_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fire_ms: Option<i64>,
    /// The last fire's asynchronous invocation (`GET /v1/invocations/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_request_id: Option<String>,
    /// That invocation's status: queued, running, retrying, succeeded, failed, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// Why the last fire could not be queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Fires skipped by `overlap: skip`.
    pub skipped: u64,
    /// A queue trigger's connection on this node: `connecting`, `running`, `paused` or
    /// `reconnecting` (then `error` says why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<&'static str>,
    /// Messages waiting in the broker for a queue trigger, where the broker tells.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// A queue trigger's counts on this node since it started: messages delivered
    /// (succeeded), dead-lettered (or sent to the failure destination), batches throttled
    /// (not counted as attempts), and messages held now (taken, not yet settled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttled: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerList {
    pub triggers: Vec<TriggerView>,
}

/// Every trigger (or one function's), with each timer's state, last and next fire.
#[utoipa::path(get, path = "/v1/triggers", tag = "triggers", params(TriggersQuery),
    responses((status = 200, body = TriggerList), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    crate::extract::Query(q): crate::extract::Query<TriggersQuery>,
) -> Result<Json<TriggerList>, ApiError> {
    let mut triggers = Vec::new();
    for t in s.platform.triggers(q.function.as_deref()).await? {
        let last_result = match &t.last_request_id {
            Some(id) => s
                .platform
                .async_invocation(id)
                .await?
                .map(|r| r.status.as_str().to_string()),
            None => None,
        };
        triggers.push(TriggerView {
            function: t.function,
            kind: t.kind.as_str().to_string(),
            name: t.name,
            // Secrets in broker URLs are never shown.
            spec: serde_json::to_value(t.spec.redacted()).unwrap_or_default(),
            state: if t.paused { "paused" } else { "active" },
            next_fire_ms: t.next_fire_ms,
            last_scheduled_ms: t.last_scheduled_ms,
            last_fire_ms: t.last_fire_ms,
            last_request_id: t.last_request_id,
            last_result,
            error: t
                .runtime
                .as_ref()
                .and_then(|r| r.last_error.clone())
                .or(t.last_error),
            skipped: t.skipped,
            connection: t.runtime.as_ref().map(|r| r.state),
            lag: t.runtime.as_ref().and_then(|r| r.lag),
            delivered: t.runtime.as_ref().map(|r| r.delivered),
            dead_lettered: t.runtime.as_ref().map(|r| r.buried),
            throttled: t.runtime.as_ref().map(|r| r.throttled),
            held: t.runtime.as_ref().map(|r| r.held),
        });
    }
    Ok(Json(TriggerList { triggers }))
}

/// Pauses a timer or an event rule (by name) or a route (by its path, `%2F`-encoded): it
/// fires, takes or serves nothing until resumed, across restarts; a paused route answers
/// 503 `trigger_paused`.
#[utoipa::path(post, path = "/v1/functions/{name}/triggers/{trigger}/pause", tag = "triggers",
    params(("name" = String, Path), ("trigger" = String, Path, description = "the timer's or event rule's name, or the route's path")),
    responses((status = 204), (status = 404, body = ErrorBody, description = "function_not_found or trigger_not_found")))]
pub async fn pause(
    State(s): State<AppState>,
    Path((name, trigger)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.platform.set_trigger_paused(&name, &trigger, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resumes a timer, event rule or route (by its path) from now: what it would have fired
/// or taken while paused is not.
#[utoipa::path(post, path = "/v1/functions/{name}/triggers/{trigger}/resume", tag = "triggers",
    params(("name" = String, Path), ("trigger" = String, Path, description = "the timer's or event rule's name, or the route's path")),
    responses((status = 204), (status = 404, body = ErrorBody, description = "function_not_found or trigger_not_found")))]
pub async fn resume(
    State(s): State<AppState>,
    Path((name, trigger)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.platform
        .set_trigger_paused(&name, &trigger, false)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
