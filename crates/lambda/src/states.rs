//! Step Functions' own API over the workflows (`platform::flows`): AWS JSON 1.0 as boto3's
//! `stepfunctions` client and `aws stepfunctions` speak it — `POST /` with
//! `X-Amz-Target: AWSStepFunctions.<Operation>`, SigV4 for service `states`, JSON in and
//! out, errors as HTTP 400 with `{"__type", "message"}`.
//!
//! A state machine is a flow (`arn:aws:states:{region}:{account}:stateMachine:{flow}`), an
//! execution is named by its id (`…:execution:{flow}:{id}`). Times are epoch seconds, as
//! the SDKs parse a `timestamp`. Admin keys may do everything; invoke keys and functions'
//! own keys only run flows: start them, read one execution, answer task tokens.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use model::{ErrorCode, limits};
use platform::AwsScope;
use platform::flows::{Flows, TokenAnswer};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use store::{ExecutionRecord, FlowRecord};

use crate::Ctx;

/// The target prefix of every Step Functions operation (botocore's `targetPrefix`).
const TARGET_PREFIX: &str = "AWSStepFunctions.";
/// The largest request: a definition of the largest size as a JSON string (escaping can
/// double it) and room for the rest.
const BODY_BYTES_MAX: usize = limits::FLOW_DEFINITION_BYTES_MAX * 2 + 64 * 1024;
/// Items a listing answers when the request names no `maxResults`, and at most.
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;
/// Executions read beyond a page to step over those of the page boundary's millisecond
/// already answered (the store pages by start time only).
const PAGE_TIES_MAX: usize = 64;
/// The role a state machine is described with (Nimbus has no IAM; SDK code reads it).
const ROLE_NAME: &str = "nimbus-flow";
/// The JSON 1.0 protocol's content type, which the SDKs send and expect back.
const CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// A Step Functions error: its exception name (botocore's error shape) and message.
#[derive(Debug)]
pub(crate) struct StatesError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl StatesError {
    fn new(kind: &'static str, message: impl Into<String>) -> StatesError {
        StatesError {
            status: StatusCode::BAD_REQUEST,
            kind,
            message: message.into(),
        }
    }

    fn validation(message: impl Into<String>) -> StatesError {
        StatesError::new("ValidationException", message)
    }
}

/// The platform's error codes as Step Functions' exceptions.
impl From<platform::Error> for StatesError {
    fn from(e: platform::Error) -> StatesError {
        let kind = match e.code {
            ErrorCode::FlowNotFound => "StateMachineDoesNotExist",
            ErrorCode::ExecutionNotFound => "ExecutionDoesNotExist",
            ErrorCode::ExecutionExists => "ExecutionAlreadyExists",
            ErrorCode::InvalidDefinition => "InvalidDefinition",
            ErrorCode::InvalidToken => "InvalidToken",
            // AWS answers a token whose task was answered, timed out or ended so.
            ErrorCode::TaskNotFound => "TaskTimedOut",
            ErrorCode::ExecutionLimitExceeded => "ExecutionLimitExceeded",
            ErrorCode::InvalidRequest | ErrorCode::PayloadTooLarge => "ValidationException",
            ErrorCode::Throttled | ErrorCode::RateLimited | ErrorCode::QueueFull => {
                "ThrottlingException"
            }
            _ => {
                return StatesError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    kind: "InternalFailure",
                    message: e.message,
                };
            }
        };
        StatesError::new(kind, e.message)
    }
}

impl IntoResponse for StatesError {
    fn into_response(self) -> Response {
        let body = json!({"__type": self.kind, "message": self.message}).to_string();
        let mut r = answer(self.status, body);
        r.headers_mut()
            .insert("x-amzn-errortype", HeaderValue::from_static(self.kind));
        r
    }
}

fn answer(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let headers = r.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-amzn-requestid", id);
    }
    r
}

/// Takes `POST /` with an `AWSStepFunctions.*` target; hands every other request on.
pub(crate) async fn intercept(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let operation = (req.method() == Method::POST && req.uri().path() == "/")
        .then(|| req.headers().get("x-amz-target"))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .map(str::to_string);
    match operation {
        Some(op) => match serve(&ctx, &op, req).await {
            Ok(v) => answer(StatusCode::OK, v.to_string()),
            Err(e) => e.into_response(),
        },
        None => next.run(req).await,
    }
}

/// Operations a key of scope invoke, or a function's own, may call: running flows, not
/// changing or listing them. A task token is itself the secret that answers its task, and
/// an execution's id (in its ARN) is known only to who started it or was handed it.
fn runs_flows(operation: &str) -> bool {
    matches!(
        operation,
        "StartExecution"
            | "StartSyncExecution"
            | "DescribeExecution"
            | "SendTaskSuccess"
            | "SendTaskFailure"
            | "SendTaskHeartbeat"
    )
}

async fn serve(ctx: &Ctx, operation: &str, req: Request) -> Result<Value, StatesError> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, BODY_BYTES_MAX)
        .await
        .map_err(|_| {
            StatesError::validation(format!("the request is larger than {BODY_BYTES_MAX} bytes"))
        })?;
    let scope = ctx
        .check_signature(&parts, &body, "states")
        .map_err(auth_error)?;
    if scope != AwsScope::Admin && !runs_flows(operation) {
        return Err(StatesError::new(
            "AccessDeniedException",
            format!(
                "this access key (scope {}) may start executions, describe them and answer task tokens, not call {operation}; use an admin key",
                scope.as_str()
            ),
        ));
    }
    let flows = ctx.platform.flows()?;
    let s = Sfn { ctx, flows };
    let body = &body[..];
    match operation {
        "CreateStateMachine" => s.create(parse(body)?).await,
        "UpdateStateMachine" => s.update(parse(body)?).await,
        "DescribeStateMachine" => s.describe_machine(parse(body)?).await,
        "ListStateMachines" => s.list_machines(parse(body)?).await,
        "DeleteStateMachine" => s.delete_machine(parse(body)?).await,
        "StartExecution" => s.start(parse(body)?, false).await,
        "StartSyncExecution" => s.start(parse(body)?, true).await,
        "DescribeExecution" => s.describe_execution(parse(body)?).await,
        "StopExecution" => s.stop(parse(body)?).await,
        "ListExecutions" => s.list_executions(parse(body)?).await,
        "GetExecutionHistory" => s.history(parse(body)?).await,
        "SendTaskSuccess" => s.task_success(parse(body)?).await,
        "SendTaskFailure" => s.task_failure(parse(body)?).await,
        "SendTaskHeartbeat" => s.task_heartbeat(parse(body)?).await,
        other => Err(StatesError::new(
            "UnknownOperationException",
            format!(
                "Nimbus's Step Functions API has no operation {other}; the README's Workflows section lists the ones it has"
            ),
        )),
    }
}

fn auth_error(e: crate::sigv4::AuthError) -> StatesError {
    use crate::sigv4::AuthError::*;
    match e {
        Missing => StatesError::new(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token: sign requests with SigV4 using an access key from `nimbus keys create --aws` or <data-dir>/aws.credentials",
        ),
        Malformed(m) => StatesError::new("IncompleteSignatureException", m),
        UnknownKey(id) => StatesError::new(
            "UnrecognizedClientException",
            format!(
                "The security token included in the request is invalid: access key `{id}` is not one this server issued"
            ),
        ),
        Mismatch(m) => StatesError::new("InvalidSignatureException", m),
    }
}

/// A request body as `T`; an empty body is `{}` (the CLI sends one for no arguments).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, StatesError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| StatesError::validation(format!("the request is not valid: {e}")))
}

/// Epoch seconds, as botocore reads a `timestamp` member of the JSON protocol.
fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// A JSON document given as a string (`definition`, `input`, `output`).
fn json_text(text: &str, what: &str, kind: &'static str) -> Result<Value, StatesError> {
    serde_json::from_str(text)
        .map_err(|e| StatesError::new(kind, format!("{what} is not valid JSON: {e}")))
}

fn page_size(max_results: Option<usize>) -> Result<usize, StatesError> {
    match max_results {
        None | Some(0) => Ok(PAGE_DEFAULT),
        Some(n) if n <= PAGE_MAX => Ok(n),
        Some(n) => Err(StatesError::validation(format!(
            "maxResults {n} is more than {PAGE_MAX}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateInput {
    name: String,
    definition: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateInput {
    state_machine_arn: String,
    definition: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MachineInput {
    state_machine_arn: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMachinesInput {
    max_results: Option<usize>,
    next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartInput {
    state_machine_arn: String,
    name: Option<String>,
    input: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecutionInput {
    execution_arn: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StopInput {
    execution_arn: String,
    error: Option<String>,
    cause: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListExecutionsInput {
    state_machine_arn: String,
    status_filter: Option<String>,
    max_results: Option<usize>,
    next_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryInput {
    execution_arn: String,
    max_results: Option<usize>,
    #[serde(default)]
    reverse_order: bool,
    next_token: Option<String>,
    include_execution_data: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskSuccessInput {
    task_token: String,
    output: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskFailureInput {
    task_token: String,
    error: Option<String>,
    cause: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskHeartbeatInput {
    task_token: String,
}

/// One request's view of the platform.
struct Sfn<'a> {
    ctx: &'a Ctx,
    flows: &'a Arc<Flows>,
}

impl Sfn<'_> {
    /// `arn:aws:states:{region}:{account}:` for this server.
    fn arn_prefix(&self) -> String {
        let aws = self.ctx.platform.aws_identity();
        format!("arn:aws:states:{}:{}:", aws.region, aws.account_id)
    }

    fn machine_arn(&self, flow: &str) -> String {
        format!("{}stateMachine:{flow}", self.arn_prefix())
    }

    fn execution_arn(&self, flow: &str, id: &str) -> String {
        format!("{}execution:{flow}:{id}", self.arn_prefix())
    }

    fn definition(&self, text: &str) -> Result<Value, StatesError> {
        json_text(text, "the definition", "InvalidDefinition")
    }

    fn machine(&self, r: &FlowRecord) -> Value {
        json!({
            "stateMachineArn": self.machine_arn(&r.name),
            "name": r.name,
            "type": "STANDARD",
            "creationDate": seconds(r.created_at_ms),
        })
    }

    /// An execution as DescribeExecution and StartSyncExecution answer it.
    fn execution(&self, r: &ExecutionRecord) -> Value {
        let mut v = json!({
            "executionArn": self.execution_arn(&r.flow, &r.id),
            "stateMachineArn": self.machine_arn(&r.flow),
            "name": r.name,
            "status": r.status,
            "startDate": seconds(r.started_at_ms),
            "input": r.input,
            "inputDetails": {"included": true},
        });
        if let Some(stopped) = r.stopped_at_ms {
            v["stopDate"] = json!(seconds(stopped));
        }
        if let Some(output) = &r.output {
            v["output"] = json!(output);
            v["outputDetails"] = json!({"included": true});
        }
        if let Some(error) = &r.error {
            v["error"] = json!(error);
        }
        if let Some(cause) = &r.cause {
            v["cause"] = json!(cause);
        }
        v
    }

    /// The execution an ARN names, which must be of the flow it names.
    async fn find_execution(&self, arn: &str) -> Result<ExecutionRecord, StatesError> {
        let (flow, id) = execution_of(arn)?;
        let record = self.flows.describe(id).await?;
        if record.flow != flow {
            return Err(StatesError::new(
                "ExecutionDoesNotExist",
                format!("execution `{id}` is not one of state machine `{flow}`"),
            ));
        }
        Ok(record)
    }

    async fn create(&self, input: CreateInput) -> Result<Value, StatesError> {
        if let Some(kind) = input.kind.as_deref()
            && kind != "STANDARD"
            && kind != "EXPRESS"
        {
            return Err(StatesError::validation(format!(
                "type `{kind}` is not STANDARD or EXPRESS"
            )));
        }
        let definition = self.definition(&input.definition)?;
        // As on AWS, creating what exists with the same definition answers it unchanged;
        // another definition is refused (UpdateStateMachine changes it).
        if let Ok(existing) = self.flows.get_flow(&input.name).await {
            let same =
                serde_json::from_str::<Value>(&existing.definition).is_ok_and(|d| d == definition);
            if !same {
                return Err(StatesError::new(
                    "StateMachineAlreadyExists",
                    format!(
                        "state machine `{}` exists with another definition; use UpdateStateMachine",
                        input.name
                    ),
                ));
            }
            return Ok(json!({
                "stateMachineArn": self.machine_arn(&existing.name),
                "creationDate": seconds(existing.created_at_ms),
            }));
        }
        let (record, _) = self
            .flows
            .put_flow(&input.name, &definition, "", &[])
            .await
            .map_err(|e| match e.code {
                ErrorCode::InvalidRequest => StatesError::new("InvalidName", e.message),
                _ => e.into(),
            })?;
        Ok(json!({
            "stateMachineArn": self.machine_arn(&record.name),
            "creationDate": seconds(record.created_at_ms),
        }))
    }

    async fn update(&self, input: UpdateInput) -> Result<Value, StatesError> {
        let flow = machine_of(&input.state_machine_arn)?;
        let existing = self.flows.get_flow(flow).await?;
        let Some(text) = input.definition else {
            // Only the role or logging would change, which Nimbus has not.
            return Ok(json!({"updateDate": seconds(existing.updated_at_ms)}));
        };
        let definition = self.definition(&text)?;
        // Step Functions has no triggers of its own: the flow keeps those it has.
        let triggers = platform::flows::parse_triggers(flow, &existing.triggers)?;
        let (record, _) = self
            .flows
            .put_flow(flow, &definition, &existing.description, &triggers)
            .await?;
        Ok(json!({"updateDate": seconds(record.updated_at_ms)}))
    }

    async fn describe_machine(&self, input: MachineInput) -> Result<Value, StatesError> {
        let flow = machine_of(&input.state_machine_arn)?;
        let r = self.flows.get_flow(flow).await?;
        let account = self.ctx.platform.aws_identity().account_id;
        let mut v = self.machine(&r);
        v["status"] = json!("ACTIVE");
        v["definition"] = json!(r.definition);
        v["roleArn"] = json!(format!("arn:aws:iam::{account}:role/{ROLE_NAME}"));
        v["revisionId"] = json!(r.revision.to_string());
        if !r.description.is_empty() {
            v["description"] = json!(r.description);
        }
        Ok(v)
    }

    async fn list_machines(&self, input: ListMachinesInput) -> Result<Value, StatesError> {
        let limit = page_size(input.max_results)?;
        let mut all = self.flows.list_flows().await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        // The token is the last name answered.
        let rest: Vec<&FlowRecord> = all
            .iter()
            .filter(|f| input.next_token.as_ref().is_none_or(|t| f.name > *t))
            .collect();
        let page: Vec<Value> = rest.iter().take(limit).map(|f| self.machine(f)).collect();
        let mut v = json!({"stateMachines": page});
        if rest.len() > limit {
            v["nextToken"] = json!(rest[limit - 1].name);
        }
        Ok(v)
    }

    async fn delete_machine(&self, input: MachineInput) -> Result<Value, StatesError> {
        let flow = machine_of(&input.state_machine_arn)?;
        // Deleting is idempotent on AWS: a state machine already gone is not an error.
        match self.flows.delete_flow(flow).await {
            Err(e) if e.code != ErrorCode::FlowNotFound => Err(e.into()),
            _ => Ok(json!({})),
        }
    }

    async fn start(&self, input: StartInput, sync: bool) -> Result<Value, StatesError> {
        let flow = machine_of(&input.state_machine_arn)?;
        let data = match input.input.as_deref() {
            Some(text) => json_text(text, "input", "InvalidExecutionInput")?,
            None => json!({}),
        };
        let started = self
            .flows
            .start(flow, input.name.as_deref(), data)
            .await
            .map_err(|e| match e.code {
                ErrorCode::InvalidRequest => StatesError::new("InvalidName", e.message),
                ErrorCode::PayloadTooLarge => StatesError::new("InvalidExecutionInput", e.message),
                _ => e.into(),
            })?;
        let record = started.execution;
        if !sync {
            return Ok(json!({
                "executionArn": self.execution_arn(&record.flow, &record.id),
                "startDate": seconds(record.started_at_ms),
            }));
        }
        // As an Express workflow's synchronous start: the answer is the outcome, within
        // the longest wait the platform allows (an execution still running then is
        // answered as RUNNING, and goes on).
        let record = self
            .flows
            .wait(&record.id, limits::FLOW_SYNC_WAIT_MS_MAX)
            .await?;
        Ok(self.execution(&record))
    }

    async fn describe_execution(&self, input: ExecutionInput) -> Result<Value, StatesError> {
        let record = self.find_execution(&input.execution_arn).await?;
        Ok(self.execution(&record))
    }

    async fn stop(&self, input: StopInput) -> Result<Value, StatesError> {
        let record = self.find_execution(&input.execution_arn).await?;
        let record = self
            .flows
            .stop(&record.id, input.error, input.cause)
            .await?;
        let stopped = record.stopped_at_ms.unwrap_or_else(platform::now_ms);
        Ok(json!({"stopDate": seconds(stopped)}))
    }

    async fn list_executions(&self, input: ListExecutionsInput) -> Result<Value, StatesError> {
        let flow = machine_of(&input.state_machine_arn)?;
        let limit = page_size(input.max_results)?;
        // The token is the start time and id of the last execution answered; the store
        // pages by start time, so those of the same millisecond already answered are read
        // again and skipped.
        let after = match input.next_token.as_deref() {
            None => None,
            Some(t) => Some(
                t.split_once('.')
                    .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_string())))
                    .ok_or_else(|| {
                        StatesError::new("InvalidToken", format!("nextToken `{t}` is not valid"))
                    })?,
            ),
        };
        let rows = self
            .flows
            .list(
                flow,
                input.status_filter.as_deref(),
                after.as_ref().map(|(ms, _)| ms + 1),
                limit + 1 + PAGE_TIES_MAX,
            )
            .await?;
        let rows: Vec<&ExecutionRecord> = rows
            .iter()
            .filter(|r| {
                after
                    .as_ref()
                    .is_none_or(|(ms, id)| r.started_at_ms < *ms || r.id.as_str() > id.as_str())
            })
            .collect();
        let page: Vec<Value> = rows
            .iter()
            .take(limit)
            .map(|r| {
                let mut v = json!({
                    "executionArn": self.execution_arn(&r.flow, &r.id),
                    "stateMachineArn": self.machine_arn(&r.flow),
                    "name": r.name,
                    "status": r.status,
                    "startDate": seconds(r.started_at_ms),
                });
                if let Some(stopped) = r.stopped_at_ms {
                    v["stopDate"] = json!(seconds(stopped));
                }
                v
            })
            .collect();
        let mut v = json!({"executions": page});
        if rows.len() > limit {
            let last = rows[limit - 1];
            v["nextToken"] = json!(format!("{}.{}", last.started_at_ms, last.id));
        }
        Ok(v)
    }

    async fn history(&self, input: HistoryInput) -> Result<Value, StatesError> {
        let record = self.find_execution(&input.execution_arn).await?;
        let limit = page_size(input.max_results)?;
        let token = match input.next_token.as_deref() {
            None => None,
            Some(t) => Some(t.parse::<i64>().map_err(|_| {
                StatesError::new("InvalidToken", format!("nextToken `{t}` is not valid"))
            })?),
        };
        let mut events = if input.reverse_order {
            // Newest first: the whole history (at most its limit of events) read in pages,
            // then the events before the token.
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                let page = self.flows.history(&record.id, after, PAGE_MAX).await?;
                let full = page.len() == PAGE_MAX;
                after = page.last().and_then(event_id).unwrap_or(after);
                all.extend(page);
                if !full || all.len() as u64 >= limits::FLOW_HISTORY_EVENTS_MAX {
                    break;
                }
            }
            all.reverse();
            all.retain(|e| token.is_none_or(|t| event_id(e).is_some_and(|id| id < t)));
            all.truncate(limit + 1);
            all
        } else {
            self.flows
                .history(&record.id, token.unwrap_or(0).max(0), limit + 1)
                .await?
        };
        let more = events.len() > limit;
        events.truncate(limit);
        let include_data = input.include_execution_data.unwrap_or(true);
        for e in &mut events {
            shape_event(e, include_data);
        }
        let mut v = json!({"events": events});
        if more && let Some(id) = events.last().and_then(event_id) {
            v["nextToken"] = json!(id.to_string());
        }
        Ok(v)
    }

    async fn task_success(&self, input: TaskSuccessInput) -> Result<Value, StatesError> {
        let output = json_text(&input.output, "output", "InvalidOutput")?;
        self.flows
            .answer_token(&input.task_token, TokenAnswer::Success(output))
            .await
            .map_err(|e| match e.code {
                ErrorCode::PayloadTooLarge => StatesError::new("InvalidOutput", e.message),
                _ => e.into(),
            })?;
        Ok(json!({}))
    }

    async fn task_failure(&self, input: TaskFailureInput) -> Result<Value, StatesError> {
        self.flows
            .answer_token(
                &input.task_token,
                TokenAnswer::Failure {
                    error: input.error,
                    cause: input.cause,
                },
            )
            .await?;
        Ok(json!({}))
    }

    async fn task_heartbeat(&self, input: TaskHeartbeatInput) -> Result<Value, StatesError> {
        self.flows
            .answer_token(&input.task_token, TokenAnswer::Heartbeat)
            .await?;
        Ok(json!({}))
    }
}

fn event_id(e: &Value) -> Option<i64> {
    e["id"].as_i64()
}

/// A stored history event as the SDKs parse it: its RFC 3339 `timestamp` as epoch
/// seconds; without `includeExecutionData`, inputs and outputs left out as AWS does.
fn shape_event(e: &mut Value, include_data: bool) {
    if let Some(ms) = e["timestamp"].as_str().and_then(flow::time::parse_ms) {
        e["timestamp"] = json!(seconds(ms));
    }
    if !include_data && let Some(fields) = e.as_object_mut() {
        for (key, details) in fields.iter_mut() {
            if key.ends_with("EventDetails")
                && let Some(d) = details.as_object_mut()
            {
                d.remove("input");
                d.remove("output");
            }
        }
    }
}

/// The parts of a Step Functions ARN after `arn:aws:states:{region}:{account}:`; the
/// region and account are not compared (a client configured for another region still
/// names the same state machine).
fn arn_rest<'a>(arn: &'a str, what: &str) -> Result<Vec<&'a str>, StatesError> {
    let invalid = || StatesError::new("InvalidArn", format!("`{arn}` is not a {what} ARN"));
    let rest = arn.strip_prefix("arn:aws:states:").ok_or_else(invalid)?;
    let parts: Vec<&str> = rest.splitn(3, ':').collect();
    if parts.len() != 3 {
        return Err(invalid());
    }
    Ok(parts[2].split(':').collect())
}

/// The flow of `arn:aws:states:…:stateMachine:{flow}`.
fn machine_of(arn: &str) -> Result<&str, StatesError> {
    match arn_rest(arn, "state machine")?.as_slice() {
        ["stateMachine", flow] if !flow.is_empty() => Ok(flow),
        ["stateMachine", _, _] => Err(StatesError::new(
            "InvalidArn",
            format!(
                "`{arn}` names a version or alias of a state machine; Nimbus's flows have neither"
            ),
        )),
        _ => Err(StatesError::new(
            "InvalidArn",
            format!(
                "`{arn}` is not a state machine ARN (arn:aws:states:REGION:ACCOUNT:stateMachine:NAME)"
            ),
        )),
    }
}

/// The flow and execution id of `arn:aws:states:…:execution:{flow}:{id}`.
fn execution_of(arn: &str) -> Result<(&str, &str), StatesError> {
    match arn_rest(arn, "execution")?.as_slice() {
        ["execution", flow, id] if !flow.is_empty() && !id.is_empty() => Ok((flow, id)),
        _ => Err(StatesError::new(
            "InvalidArn",
            format!(
                "`{arn}` is not an execution ARN (arn:aws:states:REGION:ACCOUNT:execution:STATE_MACHINE:ID)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_name_flows_and_executions() {
        assert_eq!(
            machine_of("arn:aws:states:us-east-1:000000000000:stateMachine:orders").unwrap(),
            "orders"
        );
        assert_eq!(
            execution_of("arn:aws:states:eu-west-1:1:execution:orders:abc123").unwrap(),
            ("orders", "abc123")
        );
        for bad in [
            "orders",
            "arn:aws:lambda:us-east-1:0:function:f",
            "arn:aws:states:us-east-1:0:execution:orders:abc",
            "arn:aws:states:us-east-1:0:stateMachine:",
        ] {
            assert_eq!(machine_of(bad).unwrap_err().kind, "InvalidArn", "{bad}");
        }
        assert!(machine_of("arn:aws:states:us-east-1:0:stateMachine:o:1").is_err());
        assert!(execution_of("arn:aws:states:us-east-1:0:stateMachine:o").is_err());
        assert!(execution_of("arn:aws:states:us-east-1:0:execution:o:").is_err());
    }

    #[test]
    fn history_events_carry_epoch_seconds_and_may_leave_data_out() {
        let mut e = json!({
            "id": 2, "timestamp": "1970-01-01T00:00:01.250Z", "type": "PassStateExited",
            "stateExitedEventDetails": {"name": "P", "output": "{}"}
        });
        shape_event(&mut e, false);
        assert_eq!(e["timestamp"], json!(1.25));
        assert_eq!(e["stateExitedEventDetails"], json!({"name": "P"}));
    }

    #[test]
    fn errors_take_step_functions_names() {
        let e: StatesError = platform::Error::new(ErrorCode::TaskNotFound, "gone").into();
        assert_eq!(
            (e.status, e.kind),
            (StatusCode::BAD_REQUEST, "TaskTimedOut")
        );
        let e: StatesError = platform::Error::new(ErrorCode::FlowNotFound, "x").into();
        assert_eq!(e.kind, "StateMachineDoesNotExist");
        let r = StatesError::new("InvalidToken", "bad").into_response();
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["x-amzn-errortype"], "InvalidToken");
        assert_eq!(r.headers()["content-type"], CONTENT_TYPE);
        assert!(runs_flows("SendTaskSuccess") && !runs_flows("CreateStateMachine"));
    }
}
