//! `/v1/flows`, `/v1/executions` and `/v1/tasks`: workflows over HTTP — definitions put,
//! listed and deleted; executions started (also synchronously), listed, described, stopped,
//! and their histories; task tokens answered. The operations are `platform::flows`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use model::http::Trigger;
use model::limits;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use store::{ExecutionRecord, FlowRecord, PutOutcome};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{Path, Query};
use crate::routes::{parse_json, read_body};
use crate::{ApiError, AppState, ErrorBody};
use platform::flows::{Flows, TokenAnswer};

/// A definition's JSON and a little more.
const DEFINITION_BODY_BYTES_MAX: usize = limits::FLOW_DEFINITION_BYTES_MAX + 64 * 1024;
/// An execution's input or a task's output, and a little more.
const DATA_BODY_BYTES_MAX: usize = limits::FLOW_DATA_BYTES_MAX + 16 * 1024;
/// Executions a listing answers when the request names no limit.
const LIST_LIMIT_DEFAULT: usize = 100;
/// History events one page answers at most.
const HISTORY_PAGE_MAX: usize = 1000;
/// How long a synchronous start waits when the request names no bound.
const SYNC_WAIT_MS_DEFAULT: u64 = 60_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct FlowView {
    pub name: String,
    pub revision: i64,
    pub description: String,
    /// The definition (Amazon States Language), absent in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub definition: Option<Value>,
    /// The functions its tasks call by name, absent in lists (which do not read definitions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub functions: Option<Vec<String>>,
    /// The triggers that start its executions (timers, bucket, bus and queue rules), absent
    /// in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub triggers: Option<Vec<Trigger>>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FlowList {
    pub flows: Vec<FlowView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowInput {
    /// An Amazon States Language definition (JSONPath).
    #[schema(value_type = Object)]
    pub definition: Value,
    #[serde(default)]
    pub description: String,
    /// What starts its executions: `[{"timer": {"name": "nightly", "cron": "0 3 * * *"}}]`,
    /// `object`, `event` and `queue` as a function's triggers (no `http`).
    #[serde(default)]
    #[schema(value_type = Vec<Object>, max_items = 16)]
    pub triggers: Vec<Trigger>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionView {
    pub id: String,
    pub flow: String,
    pub name: String,
    pub revision: i64,
    /// RUNNING, SUCCEEDED, FAILED, TIMED_OUT or ABORTED.
    pub status: String,
    /// Any JSON value.
    pub input: Value,
    /// Any JSON value, once the execution succeeded.
    pub output: Option<Value>,
    pub error: Option<String>,
    pub cause: Option<String>,
    pub started_at: String,
    pub stopped_at: Option<String>,
    /// States entered so far.
    pub transitions: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionList {
    pub executions: Vec<ExecutionView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartInput {
    /// The execution's input, any JSON value (default `{}`).
    #[serde(default)]
    pub input: Option<Value>,
    /// Makes the start idempotent: the same name and input again is the same execution.
    pub name: Option<String>,
    /// Wait for the execution to end (at most `wait_ms`) and answer with its outcome.
    #[serde(default)]
    pub sync: bool,
    /// How long a synchronous start waits, up to 300000 ms (default 60000).
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopInput {
    pub error: Option<String>,
    pub cause: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ExecutionsQuery {
    /// Only executions in this status.
    pub status: Option<String>,
    /// Only executions started before this time (ms since the epoch): the next page.
    pub before_ms: Option<i64>,
    /// At most this many, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// Events after this id only (the last id of the previous page).
    pub after: Option<i64>,
    /// At most this many, 1 to 1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    /// Step Functions' GetExecutionHistory events.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSuccessInput {
    pub task_token: String,
    /// The task's result, any JSON value.
    #[serde(default)]
    pub output: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskFailureInput {
    pub task_token: String,
    pub error: Option<String>,
    pub cause: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskHeartbeatInput {
    pub task_token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Empty {}

fn flows_of(s: &AppState) -> Result<&Arc<Flows>, ApiError> {
    Ok(s.platform.flows()?)
}

fn flow_view(r: FlowRecord, with_definition: bool) -> FlowView {
    // Lists carry no definitions (the store does not read them): no functions either.
    let definition: Option<Value> = if with_definition {
        serde_json::from_str(&r.definition).ok()
    } else {
        None
    };
    let functions = definition
        .as_ref()
        .and_then(|d| flow::Definition::parse(d).ok())
        .map(|d| d.functions().into_iter().collect());
    // Secrets in broker URLs are never shown.
    let triggers = with_definition.then(|| {
        serde_json::from_str::<Vec<Trigger>>(&r.triggers)
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.redacted())
            .collect()
    });
    FlowView {
        name: r.name,
        revision: r.revision,
        description: r.description,
        definition,
        functions,
        triggers,
        created_at: model::civil::rfc3339_ms(r.created_at_ms),
        updated_at: model::civil::rfc3339_ms(r.updated_at_ms),
    }
}

pub(crate) fn execution_view(r: ExecutionRecord) -> ExecutionView {
    let json = |t: &str| serde_json::from_str(t).unwrap_or(Value::Null);
    ExecutionView {
        input: json(&r.input),
        output: r.output.as_deref().map(json),
        id: r.id,
        flow: r.flow,
        name: r.name,
        revision: r.revision,
        status: r.status,
        error: r.error,
        cause: r.cause,
        started_at: model::civil::rfc3339_ms(r.started_at_ms),
        stopped_at: r.stopped_at_ms.map(model::civil::rfc3339_ms),
        transitions: r.transitions,
    }
}

/// Every flow.
#[utoipa::path(get, path = "/v1/flows", tag = "flows", responses((status = 200, body = FlowList)))]
pub async fn list(State(s): State<AppState>) -> Result<Json<FlowList>, ApiError> {
    let flows = flows_of(&s)?.list_flows().await?;
    Ok(Json(FlowList {
        flows: flows.into_iter().map(|f| flow_view(f, false)).collect(),
    }))
}

/// Creates or replaces a flow; its definition is checked first.
#[utoipa::path(put, path = "/v1/flows/{name}", tag = "flows", request_body = FlowInput,
    params(("name" = String, Path, description = "The flow's name")),
    responses((status = 200, body = FlowView, description = "updated or unchanged"),
        (status = 201, body = FlowView, description = "created"),
        (status = 400, body = ErrorBody, description = "invalid_definition: names the state and field")))]
pub async fn put(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let input: FlowInput =
        parse_json(&read_body(body, DEFINITION_BODY_BYTES_MAX, "definition").await?)?;
    let (record, outcome) = flows_of(&s)?
        .put_flow(
            &name,
            &input.definition,
            &input.description,
            &input.triggers,
        )
        .await?;
    let status = if outcome == PutOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(flow_view(record, true))))
}

/// A flow with its definition.
#[utoipa::path(get, path = "/v1/flows/{name}", tag = "flows",
    params(("name" = String, Path, description = "The flow's name")),
    responses((status = 200, body = FlowView), (status = 404, body = ErrorBody, description = "flow_not_found")))]
pub async fn get(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<FlowView>, ApiError> {
    Ok(Json(flow_view(flows_of(&s)?.get_flow(&name).await?, true)))
}

/// Deletes a flow; its running executions go on.
#[utoipa::path(delete, path = "/v1/flows/{name}", tag = "flows",
    params(("name" = String, Path, description = "The flow's name")),
    responses((status = 204), (status = 404, body = ErrorBody, description = "flow_not_found")))]
pub async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    flows_of(&s)?.delete_flow(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Starts an execution; with `sync`, waits for its end.
#[utoipa::path(post, path = "/v1/flows/{name}/executions", tag = "flows", request_body = StartInput,
    params(("name" = String, Path, description = "The flow's name")),
    responses((status = 201, body = ExecutionView, description = "started"),
        (status = 200, body = ExecutionView, description = "an execution of that name and input exists"),
        (status = 404, body = ErrorBody, description = "flow_not_found"),
        (status = 409, body = ErrorBody, description = "execution_exists: that name with another input"),
        (status = 429, body = ErrorBody, description = "execution_limit_exceeded")))]
pub async fn start(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let input: StartInput =
        parse_json(&read_body(body, DATA_BODY_BYTES_MAX, "start request").await?)?;
    if let Some(w) = input.wait_ms
        && w > limits::FLOW_SYNC_WAIT_MS_MAX
    {
        return Err(ApiError::invalid(format!(
            "wait_ms must be at most {}",
            limits::FLOW_SYNC_WAIT_MS_MAX
        )));
    }
    let flows = flows_of(&s)?;
    let started = flows
        .start(
            &name,
            input.name.as_deref(),
            input
                .input
                .unwrap_or_else(|| Value::Object(Default::default())),
        )
        .await?;
    let status = if started.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut execution = started.execution;
    if input.sync {
        execution = flows
            .wait(&execution.id, input.wait_ms.unwrap_or(SYNC_WAIT_MS_DEFAULT))
            .await?;
    }
    Ok((status, Json(execution_view(execution))))
}

/// A flow's executions, newest first.
#[utoipa::path(get, path = "/v1/flows/{name}/executions", tag = "flows",
    params(("name" = String, Path, description = "The flow's name"), ExecutionsQuery),
    responses((status = 200, body = ExecutionList), (status = 404, body = ErrorBody, description = "flow_not_found")))]
pub async fn executions(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ExecutionsQuery>,
) -> Result<Json<ExecutionList>, ApiError> {
    let limit = q.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be from 1 to 1000"));
    }
    let list = flows_of(&s)?
        .list(&name, q.status.as_deref(), q.before_ms, limit)
        .await?;
    Ok(Json(ExecutionList {
        executions: list.into_iter().map(execution_view).collect(),
    }))
}

/// An execution.
#[utoipa::path(get, path = "/v1/executions/{id}", tag = "flows",
    params(("id" = String, Path, description = "The execution's id")),
    responses((status = 200, body = ExecutionView), (status = 404, body = ErrorBody, description = "execution_not_found")))]
pub async fn describe(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ExecutionView>, ApiError> {
    Ok(Json(execution_view(flows_of(&s)?.describe(&id).await?)))
}

/// An execution's history, in Step Functions' shape.
#[utoipa::path(get, path = "/v1/executions/{id}/history", tag = "flows",
    params(("id" = String, Path, description = "The execution's id"), HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = 404, body = ErrorBody, description = "execution_not_found")))]
pub async fn history(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let limit = q.limit.unwrap_or(HISTORY_PAGE_MAX);
    if !(1..=HISTORY_PAGE_MAX).contains(&limit) {
        return Err(ApiError::invalid("limit must be from 1 to 1000"));
    }
    let events = flows_of(&s)?
        .history(&id, q.after.unwrap_or(0).max(0), limit)
        .await?;
    Ok(Json(HistoryPage { events }))
}

/// Stops a running execution.
#[utoipa::path(post, path = "/v1/executions/{id}/stop", tag = "flows",
    request_body(content = Option<StopInput>, description = "optional: the error and cause to end with"),
    params(("id" = String, Path, description = "The execution's id")),
    responses((status = 200, body = ExecutionView), (status = 404, body = ErrorBody, description = "execution_not_found")))]
pub async fn stop(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<ExecutionView>, ApiError> {
    let bytes = read_body(body, 64 * 1024, "stop request").await?;
    // The body is optional: none, `null` and `{}` all stop without an error of its own.
    let input: Option<StopInput> = if bytes.is_empty() {
        None
    } else {
        parse_json(&bytes)?
    };
    let input = input.unwrap_or(StopInput {
        error: None,
        cause: None,
    });
    Ok(Json(execution_view(
        flows_of(&s)?.stop(&id, input.error, input.cause).await?,
    )))
}

/// `SendTaskSuccess`: the task of this token succeeds with `output`.
#[utoipa::path(post, path = "/v1/tasks/success", tag = "flows", request_body = TaskSuccessInput,
    responses((status = 200, body = Empty),
        (status = 400, body = ErrorBody, description = "invalid_token"),
        (status = 404, body = ErrorBody, description = "task_not_found: the task no longer waits")))]
pub async fn task_success(State(s): State<AppState>, body: Body) -> Result<Json<Empty>, ApiError> {
    let input: TaskSuccessInput =
        parse_json(&read_body(body, DATA_BODY_BYTES_MAX, "task output").await?)?;
    let output = input.output.unwrap_or(Value::Null);
    flows_of(&s)?
        .answer_token(&input.task_token, TokenAnswer::Success(output))
        .await?;
    Ok(Json(Empty {}))
}

/// `SendTaskFailure`: the task of this token fails with `error`.
#[utoipa::path(post, path = "/v1/tasks/failure", tag = "flows", request_body = TaskFailureInput,
    responses((status = 200, body = Empty),
        (status = 400, body = ErrorBody, description = "invalid_token"),
        (status = 404, body = ErrorBody, description = "task_not_found: the task no longer waits")))]
pub async fn task_failure(State(s): State<AppState>, body: Body) -> Result<Json<Empty>, ApiError> {
    let input: TaskFailureInput = parse_json(&read_body(body, 64 * 1024, "task failure").await?)?;
    flows_of(&s)?
        .answer_token(
            &input.task_token,
            TokenAnswer::Failure {
                error: input.error,
                cause: input.cause,
            },
        )
        .await?;
    Ok(Json(Empty {}))
}

/// `SendTaskHeartbeat`: the task of this token is still being worked on.
#[utoipa::path(post, path = "/v1/tasks/heartbeat", tag = "flows", request_body = TaskHeartbeatInput,
    responses((status = 200, body = Empty),
        (status = 400, body = ErrorBody, description = "invalid_token"),
        (status = 404, body = ErrorBody, description = "task_not_found: the task no longer waits")))]
pub async fn task_heartbeat(
    State(s): State<AppState>,
    body: Body,
) -> Result<Json<Empty>, ApiError> {
    let input: TaskHeartbeatInput = parse_json(&read_body(body, 8 * 1024, "heartbeat").await?)?;
    flows_of(&s)?
        .answer_token(&input.task_token, TokenAnswer::Heartbeat)
        .await?;
    Ok(Json(Empty {}))
}
