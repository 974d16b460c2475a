//! HTTP handlers of the control API, each documented for the OpenAPI document.

use axum::Json;
use axum::body::Body;
use axum::extract::State;

use crate::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use model::{ErrorCode, limits};
use sandbox::{ContentType, Outcome};
use serde::de::DeserializeOwned;
use store::{PutMode, PutOutcome};

use crate::wire::*;
use crate::{ApiError, AppState, ErrorBody};

/// Header names of the invoke API.
pub mod headers {
    pub const REQUEST_ID: &str = "x-nimbus-request-id";
    pub const COLD_START: &str = "x-nimbus-cold-start";
    pub const DURATION_MS: &str = "x-nimbus-duration-ms";
    pub const INIT_DURATION_MS: &str = "x-nimbus-init-duration-ms";
    pub const ERROR_TYPE: &str = "x-nimbus-error-type";
    pub const LOG_TYPE: &str = "x-nimbus-log-type";
    pub const LOG_RESULT: &str = "x-nimbus-log-result";
    /// The version that ran: `$LATEST` or a number.
    pub const VERSION: &str = "x-nimbus-version";
    /// A caller's key: through an alias with a canary, the same key keeps getting the same
    /// version while the weights stay.
    pub const AFFINITY: &str = "x-nimbus-affinity";
    /// `async` (or Lambda's `Event`): answer 202 once the event is stored, run it later.
    pub const INVOCATION_TYPE: &str = "x-nimbus-invocation-type";
    /// Repeated asynchronous submissions with the same key (within the retention) run once.
    pub const IDEMPOTENCY_KEY: &str = "x-nimbus-idempotency-key";
}

/// How much of an invocation's log tail `x-nimbus-log-type: tail` returns (as on Lambda).
const LOG_TAIL_BYTES_MAX: usize = 4 * 1024;

/// Reads a request body of at most `limit` bytes, answering 413 past it.
pub(crate) async fn read_body(body: Body, limit: usize, what: &str) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the {what} is larger than the limit of {limit} bytes"),
            )
        } else if let Some(e) = crate::listener::BodyError::api_error(&e) {
            // Too slow, or the node's buffer budget is spent: not the body's size.
            e
        } else {
            ApiError::invalid(format!("reading the {what}: {e}"))
        }
    })
}

/// Parses a request body that is a JSON object. An array is refused here: serde would
/// otherwise fill a struct from one, field by field in order (`[]` would be a valid
/// `PublishInput`), which no client means and the schema does not allow.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.trim_ascii_start().starts_with(b"[") {
        return Err(ApiError::invalid(
            "invalid JSON body: an array where an object is expected",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// Liveness check; needs no token.
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses((status = 200, body = Health)), security(()))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Uploads a code archive (zip). It is unpacked and checked before it is stored; the answer
/// names it by sha256 for use in a function's `code_sha256`.
#[utoipa::path(post, path = "/v1/code", tag = "code",
    request_body(content = Vec<u8>, content_type = "application/zip"),
    responses(
        (status = 201, body = CodeView),
        (status = 400, body = ErrorBody, description = "invalid_archive: unsafe or malformed archive"),
        (status = 413, body = ErrorBody, description = "payload_too_large"),
    ))]
pub async fn upload_code(
    State(s): State<AppState>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let zip = read_body(body, limits::ARCHIVE_BYTES_MAX, "code archive").await?;
    let size = zip.len() as u64;
    let (sha, info) = s.platform.upload_code(zip.to_vec()).await?;
    Ok((
        StatusCode::CREATED,
        Json(CodeView {
            code_sha256: sha,
            size_bytes: size,
            files: info.files as u64,
            unpacked_bytes: info.unpacked_bytes,
        }),
    ))
}

/// Whether a code archive is already stored (lets clients skip an upload).
#[utoipa::path(head, path = "/v1/code/{sha256}", tag = "code",
    params(("sha256" = String, Path, pattern = "^[0-9a-f]{64}$", description = "sha256 of the archive")),
    responses((status = 200, description = "stored"), (status = 404, description = "not stored")))]
pub async fn code_exists(
    State(s): State<AppState>,
    Path(sha): Path<String>,
) -> Result<StatusCode, ApiError> {
    Ok(if s.platform.code_exists(&sha).await? {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

/// Lists functions.
#[utoipa::path(get, path = "/v1/functions", tag = "functions",
    responses((status = 200, body = FunctionList)))]
pub async fn list_functions(State(s): State<AppState>) -> Result<Json<FunctionList>, ApiError> {
    let functions = s.platform.list_functions().await?;
    Ok(Json(FunctionList {
        functions: functions.into_iter().map(Into::into).collect(),
    }))
}

/// Creates a function; fails with 409 if it exists.
#[utoipa::path(post, path = "/v1/functions", tag = "functions",
    params(DeployQuery),
    request_body = FunctionInput,
    responses(
        (status = 201, body = FunctionView),
        (status = 400, body = ErrorBody, description = "invalid_request or code_not_found"),
        (status = 409, body = ErrorBody, description = "function_exists"),
        (status = 422, body = ErrorBody, description = "build_failed or handler_failed"),
    ))]
pub async fn create_function(
    State(s): State<AppState>,
    crate::extract::Query(q): crate::extract::Query<DeployQuery>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let input: FunctionInput = parse_json(&read_body(body, 64 * 1024, "function").await?)?;
    let spec = input.into_spec(None)?;
    let (function, _) = s.platform.deploy(spec, PutMode::Create, q.check).await?;
    Ok((StatusCode::CREATED, Json(FunctionView::from(function))))
}

/// Creates or replaces a function. 201 when created, 200 when it existed.
#[utoipa::path(put, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$"), DeployQuery),
    request_body = FunctionInput,
    responses(
        (status = 200, body = FunctionView, description = "updated (or unchanged)"),
        (status = 201, body = FunctionView, description = "created"),
        (status = 400, body = ErrorBody, description = "invalid_request or code_not_found"),
        (status = 422, body = ErrorBody, description = "build_failed or handler_failed"),
    ))]
pub async fn put_function(
    State(s): State<AppState>,
    Path(name): Path<String>,
    crate::extract::Query(q): crate::extract::Query<DeployQuery>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let input: FunctionInput = parse_json(&read_body(body, 64 * 1024, "function").await?)?;
    let spec = input.into_spec(Some(&name))?;
    let (function, outcome) = s.platform.deploy(spec, PutMode::Upsert, q.check).await?;
    let status = if outcome == PutOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let change = match outcome {
        PutOutcome::Created => "created",
        PutOutcome::Updated => "updated",
        PutOutcome::Unchanged => "unchanged",
    };
    Ok((
        status,
        [("x-nimbus-change", change)],
        Json(FunctionView::from(function)),
    ))
}

/// Describes a function.
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")),
    responses((status = 200, body = FunctionView), (status = 404, body = ErrorBody)))]
pub async fn get_function(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<FunctionView>, ApiError> {
    Ok(Json(s.platform.get_function(&name).await?.into()))
}

/// Deletes a function and stops its instances.
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_function(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.platform.delete_function(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Invokes a function synchronously. The request body is the event; the response body is
/// the function's result. When the function fails (exception, timeout, crash) the status
/// is still 200, as on Lambda, with `x-nimbus-error-type` set and a JSON body
/// `{errorType, errorMessage, stackTrace}`. Platform failures are 4xx/5xx with `{code, message}`.
#[utoipa::path(post, path = "/v1/functions/{name}/invocations", tag = "invoke",
    params(
        ("name" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}(:([$]LATEST|[1-9][0-9]{0,8}|[A-Za-z][A-Za-z0-9_-]{0,63}))?$", description = "`name`, or `name:qualifier` (a version, an alias or `$LATEST`)"),
        ("x-nimbus-log-type" = Option<String>, Header, description = "`tail`: return the last 4 KB of logs, base64, in x-nimbus-log-result"),
    ),
    request_body(description = "the event; JSON is decoded for the handler, anything else arrives as bytes",
        content((AnyJson = "application/json"), (EventBytes = "application/octet-stream"))),
    responses(
        (status = 200, description = "the function ran; see x-nimbus-error-type for its failure", headers(
            ("x-nimbus-request-id" = String),
            ("x-nimbus-cold-start" = bool),
            ("x-nimbus-duration-ms" = f64),
            ("x-nimbus-error-type" = String, description = "set when the function failed"),
        )),
        (status = 404, body = ErrorBody, description = "function_not_found"),
        (status = 413, body = ErrorBody, description = "payload_too_large"),
        (status = 503, body = ErrorBody, description = "capacity_exhausted or runtime_unavailable"),
    ))]
pub async fn invoke(
    State(s): State<AppState>,
    Path(name): Path<String>,
    req_headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let is_async = match req_headers.get(headers::INVOCATION_TYPE) {
        None => false,
        Some(v) => invocation_type_is_async(v.as_bytes())?,
    };
    let event = read_body(body, limits::PAYLOAD_BYTES_MAX, "event").await?;
    if is_async {
        let key = req_headers
            .get(headers::IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let trace = crate::trace::for_call(&req_headers);
        let started_at_ms = platform::now_ms();
        let (id, duplicate) = s
            .platform
            .submit_async(&name, event, key, trace.traceparent.clone())
            .await?;
        s.platform
            .record_accept(&name, &id, started_at_ms, trace.clone());
        let mut r = (
            StatusCode::ACCEPTED,
            Json(Submitted {
                request_id: id.clone(),
                duplicate,
            }),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&id) {
            r.headers_mut().insert(headers::REQUEST_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&trace.traceparent) {
            r.headers_mut().insert(crate::trace::TRACEPARENT, v);
        }
        return Ok(r);
    }
    let mut call = platform::Call::new(
        name,
        model::TriggerKind::Api,
        crate::trace::for_call(&req_headers),
    );
    call.affinity = req_headers
        .get(headers::AFFINITY)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let platform::Invoked {
        record, outcome, ..
    } = s.platform.invoke(call, event).await?;
    let mut response = match outcome {
        Outcome::Success { content_type, body } => {
            let ct = match content_type {
                ContentType::Json => "application/json",
                ContentType::Text => "text/plain; charset=utf-8",
                ContentType::Bytes => "application/octet-stream",
            };
            let mut r = Response::new(Body::from(body));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            r
        }
        Outcome::Error(e) => {
            let mut r = Json(FunctionErrorView {
                error_type: e.error_type.clone(),
                error_message: e.error_message,
                stack_trace: e.stack_trace,
            })
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&e.error_type) {
                r.headers_mut().insert(headers::ERROR_TYPE, v);
            }
            r
        }
    };
    let h = response.headers_mut();
    h.insert(
        headers::REQUEST_ID,
        HeaderValue::from_str(&record.request_id).expect("uuid is ascii"),
    );
    h.insert(
        headers::COLD_START,
        HeaderValue::from_static(if record.cold_start { "true" } else { "false" }),
    );
    h.insert(headers::DURATION_MS, num(record.duration_ms));
    if let Ok(v) = HeaderValue::from_str(&record.version) {
        h.insert(headers::VERSION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&record.trace.traceparent) {
        h.insert(crate::trace::TRACEPARENT, v);
    }
    if let Some(init) = record.init_ms {
        h.insert(headers::INIT_DURATION_MS, num(init));
    }
    if req_headers.contains_key(crate::gateway::DEBUG_HEADER) {
        h.insert(
            "server-timing",
            crate::gateway::server_timing(None, record.cold_start, &record.timings),
        );
    }
    let wants_tail = req_headers
        .get(headers::LOG_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"tail"));
    if wants_tail {
        h.insert(headers::LOG_RESULT, log_tail(&record));
    }
    Ok(response)
}

/// Whether an `x-nimbus-invocation-type` asks for an asynchronous call: `async` or
/// Lambda's `Event`; `sync` or `RequestResponse` run now. Anything else is refused rather
/// than run synchronously against the caller's intent.
fn invocation_type_is_async(value: &[u8]) -> Result<bool, ApiError> {
    let is = |name: &str| value.eq_ignore_ascii_case(name.as_bytes());
    if is("async") || is("event") {
        Ok(true)
    } else if is("sync") || is("requestresponse") {
        Ok(false)
    } else {
        Err(ApiError::invalid(format!(
            "{}: `{}` is not an invocation type; use `sync` (RequestResponse) or `async` (Event)",
            headers::INVOCATION_TYPE,
            String::from_utf8_lossy(value)
        )))
    }
}

fn num(ms: f64) -> HeaderValue {
    HeaderValue::from_str(&format!("{ms:.3}")).expect("a number is a valid header")
}

fn log_tail(record: &platform::InvocationRecord) -> HeaderValue {
    let mut text = String::new();
    for line in &record.logs.lines {
        text.push_str(&line.message);
        text.push('\n');
    }
    let mut start = text.len().saturating_sub(LOG_TAIL_BYTES_MAX);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(&text[start..]);
    HeaderValue::from_str(&encoded).expect("base64 is a valid header")
}

/// An invocation: an asynchronous one with its status, attempts and result or error (and
/// its last attempt if it ran on this node), or a recent synchronous one with its logs. In
/// a cluster, one this node does not know is asked of the other nodes (each keeps its own
/// recent calls); the first that knows it answers.
#[utoipa::path(get, path = "/v1/invocations/{request_id}", tag = "invoke",
    params(("request_id" = String, Path)),
    responses((status = 200, body = InvocationAnswer),
        (status = 404, body = ErrorBody, description = "invocation_not_found")))]
pub async fn get_invocation(
    State(s): State<AppState>,
    Path(request_id): Path<String>,
    req_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let recent = s.platform.recent_invocation(&request_id);
    if let Some(a) = s.platform.async_invocation(&request_id).await? {
        let view = AsyncInvocationView::new(a, recent.as_deref().map(InvocationView::from));
        return Ok(Json(InvocationAnswer::Async(Box::new(view))).into_response());
    }
    if let Some(record) = recent {
        let view = InvocationView::from(record.as_ref());
        return Ok(Json(InvocationAnswer::Sync(Box::new(view))).into_response());
    }
    let others = match s.platform.node_view() {
        Some(v) if !crate::fanout::node_scoped(&req_headers) => v.others,
        _ => Vec::new(),
    };
    if others.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvocationNotFound,
            format!(
                "invocation `{request_id}` is not among the last {} on this node",
                limits::RECENT_INVOCATIONS_MAX
            ),
        ));
    }
    let path = format!(
        "/v1/invocations/{}",
        crate::forward::path_segment(&request_id)
    );
    let asks = others.into_iter().map(|n| (n, path.clone())).collect();
    let mut unreachable = Vec::new();
    for reply in s.fanout.ask(asks).await {
        match reply.answer {
            // The node that knows it answers as this one would have.
            Ok((StatusCode::OK, body)) => {
                return Ok((
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    body,
                )
                    .into_response());
            }
            Ok((StatusCode::NOT_FOUND, _)) => {}
            Ok((status, _)) => {
                tracing::warn!(node = %reply.node, %status, "a node did not answer an invocation query");
                unreachable.push(reply.node);
            }
            Err(why) => {
                tracing::warn!(node = %reply.node, %why, "a node did not answer an invocation query");
                unreachable.push(reply.node);
            }
        }
    }
    let missing = if unreachable.is_empty() {
        String::new()
    } else {
        format!(" that answered (no answer from {})", unreachable.join(", "))
    };
    Err(ApiError::new(
        ErrorCode::InvocationNotFound,
        format!(
            "invocation `{request_id}` is not among the last {} of any node{missing}",
            limits::RECENT_INVOCATIONS_MAX
        ),
    ))
}

/// Dead-lettered asynchronous invocations, oldest first.
#[utoipa::path(get, path = "/v1/dlq", tag = "invoke",
    params(DlqQuery),
    responses((status = 200, body = Vec<AsyncInvocationView>)))]
pub async fn list_dead_letters(
    State(s): State<AppState>,
    crate::extract::Query(q): crate::extract::Query<DlqQuery>,
) -> Result<Json<Vec<AsyncInvocationView>>, ApiError> {
    let limit = q.limit.unwrap_or(100).min(1_000) as usize;
    let letters = s
        .platform
        .dead_letters(q.function.as_deref(), limit)
        .await?;
    Ok(Json(
        letters
            .into_iter()
            .map(|a| AsyncInvocationView::new(a, None))
            .collect(),
    ))
}

/// Queues dead letters again: `{"ids": [...]}` or `{"function": "name"}` (all of its).
#[utoipa::path(post, path = "/v1/dlq/redrive", tag = "invoke", request_body = RedriveBody,
    responses((status = 200, body = RedriveResult), (status = 400, body = ErrorBody)))]
pub async fn redrive(
    State(s): State<AppState>,
    body: Body,
) -> Result<Json<RedriveResult>, ApiError> {
    let bytes = read_body(body, 1024 * 1024, "request").await?;
    let input: RedriveInput = parse_json(&bytes)?;
    let ids = match (input.ids, input.function) {
        (Some(ids), None) => ids,
        (None, Some(f)) => {
            model::validate_name(&f).map_err(|e| ApiError::invalid(format!("function: {e}")))?;
            s.platform
                .dead_letters(Some(&f), 10_000)
                .await?
                .into_iter()
                .map(|a| a.id)
                .collect()
        }
        _ => return Err(ApiError::invalid("give either `ids` or `function`")),
    };
    let redriven = s.platform.redrive(&ids).await?;
    Ok(Json(RedriveResult { redriven }))
}

/// Installs the dependencies an uploaded code archive declares (`requirements.txt`,
/// `pyproject.toml`, `package.json`), or finds them built before. A deploy does this by
/// itself; a client calls it first to show the build's progress (`?follow=true`).
#[utoipa::path(post, path = "/v1/builds", tag = "code", params(BuildQuery), request_body = BuildInput,
    responses((status = 200, content((BuildView = "application/json"), (String = "application/x-ndjson"))),
        (status = 400, body = ErrorBody, description = "invalid_request or code_not_found"),
        (status = 422, body = ErrorBody, description = "build_failed: pip's or npm's output is in the message")))]
pub async fn build(
    State(s): State<AppState>,
    crate::extract::Query(q): crate::extract::Query<BuildQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let input: BuildInput = parse_json(&read_body(body, 4096, "request").await?)?;
    let (runtime, _) = model::Runtime::parse_id(&input.runtime)
        .map_err(|e| ApiError::invalid(format!("runtime: {e}")))?;
    // The spec of a function that would use this code, as far as the build looks at it.
    let mut spec = model::FunctionSpec::new("build", runtime, "", &input.code_sha256);
    if spec.validate().iter().any(|e| e.field == "code_sha256") {
        return Err(ApiError::invalid(
            "code_sha256: must be 64 lowercase hex characters (the sha256 of an uploaded archive)",
        ));
    }
    if !q.follow {
        let outcome = s.platform.prepare_deps(&mut spec, None).await?;
        return Ok(Json(BuildView::from(outcome)).into_response());
    }
    // Lines as they come, then the result; the build goes on if the client leaves (its
    // result is kept for the deploy that follows).
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel::<String>(1024);
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let platform = s.platform.clone();
    tokio::spawn(async move {
        let build =
            tokio::spawn(async move { platform.prepare_deps(&mut spec, Some(lines_tx)).await });
        while let Some(line) = lines_rx.recv().await {
            let mut json =
                serde_json::to_vec(&serde_json::json!({ "line": line })).unwrap_or_default();
            json.push(b'\n');
            let _ = out_tx.send(Bytes::from(json)).await;
        }
        let last = match build.await {
            Ok(Ok(outcome)) => serde_json::to_value(BuildView::from(outcome)).unwrap_or_default(),
            Ok(Err(e)) => {
                let e = ApiError::from(e);
                serde_json::json!({ "code": e.code.as_str(), "message": e.message })
            }
            Err(_) => serde_json::json!({ "code": "internal", "message": "the build task failed" }),
        };
        let mut json = serde_json::to_vec(&last).unwrap_or_default();
        json.push(b'\n');
        let _ = out_tx.send(Bytes::from(json)).await;
    });
    let stream = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::RouteNotFound,
        "no such route; the API is described at /v1/openapi.json",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method; see /v1/openapi.json",
    )
}

/// Creates an invoke key for routes with `auth: key`, or (`aws: true`) an access key for
/// the Lambda API. The key or secret is in this answer only.
#[utoipa::path(post, path = "/v1/keys", tag = "keys",
    request_body = KeyInput,
    responses((status = 201, body = KeyCreated), (status = 400, body = ErrorBody)))]
pub async fn create_key(
    State(s): State<AppState>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let input: KeyInput = parse_json(&read_body(body, 4096, "key").await?)?;
    if input.aws {
        let scope: platform::AwsScope = input.scope.as_deref().unwrap_or("admin").parse()?;
        let record = s.platform.create_aws_key(&input.name, scope).await?;
        return Ok((
            StatusCode::CREATED,
            Json(KeyCreated {
                id: record.access_key_id.clone(),
                name: record.name,
                kind: "aws",
                created_at_ms: record.created_at_ms,
                key: None,
                access_key_id: Some(record.access_key_id),
                secret_access_key: Some(record.secret),
                scope: Some(record.scope),
            }),
        ));
    }
    if input.scope.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "scope: only access keys (aws: true) have a scope",
        ));
    }
    let (record, key) = s.platform.create_key(&input.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(KeyCreated {
            id: record.id,
            name: record.name,
            kind: "invoke",
            created_at_ms: record.created_at_ms,
            key: Some(key),
            access_key_id: None,
            secret_access_key: None,
            scope: None,
        }),
    ))
}

/// Lists invoke keys and access keys (never the keys or secrets themselves).
#[utoipa::path(get, path = "/v1/keys", tag = "keys", responses((status = 200, body = KeyList)))]
pub async fn list_keys(State(s): State<AppState>) -> Result<Json<KeyList>, ApiError> {
    let mut keys: Vec<KeyView> = s
        .platform
        .list_keys()
        .await?
        .into_iter()
        .map(|k| KeyView {
            id: k.id,
            name: k.name,
            kind: "invoke",
            scope: None,
            created_at_ms: k.created_at_ms,
        })
        .collect();
    keys.extend(
        s.platform
            .list_aws_keys()
            .await?
            .into_iter()
            .map(|k| KeyView {
                id: k.access_key_id,
                name: k.name,
                kind: "aws",
                scope: Some(k.scope),
                created_at_ms: k.created_at_ms,
            }),
    );
    Ok(Json(KeyList { keys }))
}

/// Deletes an invoke key or an access key; it is refused at once.
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody, description = "key_not_found")))]
pub async fn delete_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.platform.delete_key(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
