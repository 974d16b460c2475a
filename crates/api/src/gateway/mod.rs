//! The HTTP gateway: every path outside `/v1` is routed to a function.
//!
//! A request is matched against the route table, checked by the route's guard (client
//! network, CORS preflight, invoke key, rate limit, body limit), and then served in one of
//! three ways, by the function's type:
//! - `handler`: the request becomes an API Gateway payload 2.0 event, the return value the
//!   response (`event`);
//! - `wsgi` / `asgi`: the request goes to the Python app over the instance channel and the
//!   response streams back frame by frame (`web`);
//! - `http`: the request is proxied to the instance's own HTTP server (`proxy`).

pub mod event;
pub mod guard;
mod proxy;
pub mod table;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use model::{ErrorCode, FunctionType};
use sandbox::Outcome;
use serde_json::json;

use crate::platform::{InvocationRecord, Platform, now_ms};
use crate::routes::headers;
use crate::{ApiError, AppState};
use table::Route;

/// Headers that carry an invoke key (`x-api-key` as API Gateway clients send it).
const KEY_HEADERS: [&str; 2] = ["x-nimbus-key", "x-api-key"];

/// A request header that asks for a `server-timing` breakdown.
pub(crate) const DEBUG_HEADER: &str = "x-nimbus-debug";

/// What a routed request carries to the part that serves it.
pub(crate) struct Routed {
    pub request_id: String,
    pub function: String,
    pub method: Method,
    /// The path as the function sees it (a function URL's prefix removed).
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub peer: Option<SocketAddr>,
    pub route_key: String,
    pub path_params: Vec<(String, String)>,
    pub routed_ms: f64,
    /// The call's span: in the caller's trace when it sent a `traceparent`.
    pub trace: crate::trace::Span,
}

/// Timings of a gateway request, for `server-timing`.
#[derive(Default)]
pub(crate) struct Timing {
    pub routing_ms: f64,
    pub cold_start: bool,
    pub timings: sandbox::Timings,
}

impl Timing {
    fn header(&self) -> HeaderValue {
        server_timing(Some(self.routing_ms), self.cold_start, &self.timings)
    }
}

/// A `server-timing` header: where a call's time went. The start-up parts appear only on
/// a cold start.
pub(crate) fn server_timing(
    routing_ms: Option<f64>,
    cold_start: bool,
    t: &sandbox::Timings,
) -> HeaderValue {
    let mut parts = Vec::new();
    if let Some(r) = routing_ms {
        parts.push(format!("routing;dur={r:.3}"));
    }
    parts.push(format!("queue;dur={:.3}", t.queue_ms));
    if cold_start {
        parts.push(format!("sandbox;dur={:.3}", t.sandbox_ms));
        parts.push(format!("code;dur={:.3}", t.code_ms));
        parts.push(format!("init;dur={:.3}", t.initializer_ms));
    }
    parts.push(format!("handler;dur={:.3}", t.handler_ms));
    HeaderValue::from_str(&parts.join(", ")).expect("timings are ascii")
}

/// The gateway's entry point, installed as the router's fallback.
pub async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let debug = request.headers().contains_key(DEBUG_HEADER);
    let mut response = match serve(&state.platform, request, request_id.clone()).await {
        Ok((response, timing)) => {
            let mut response = response;
            if debug {
                response
                    .headers_mut()
                    .insert("server-timing", timing.header());
            }
            response
        }
        Err(e) => e.into_response(),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(headers::REQUEST_ID, v);
    }
    response
}

/// A gateway refusal that needs a header besides the error body.
fn refusal(error: ApiError, name: header::HeaderName, value: String) -> Response {
    let mut r = error.into_response();
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(name, v);
    }
    r
}

async fn serve(
    platform: &Arc<Platform>,
    request: Request,
    request_id: String,
) -> Result<(Response, Timing), Response> {
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let table = platform.routes();
    let path = parts.uri.path();
    let Some(found) = table.find(path) else {
        return Err(ApiError::new(
            ErrorCode::RouteNotFound,
            format!(
                "no route matches {path}; `nimbus describe FUNCTION` shows a function's routes"
            ),
        )
        .into_response());
    };

    // A CORS preflight is answered by the gateway; browsers send no credentials with it.
    let preflight = parts.method == Method::OPTIONS
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight && let Some(route) = found.routes.iter().find(|r| r.guard.cors.is_some()) {
        check_network(route, peer).map_err(IntoResponse::into_response)?;
        let mut r = StatusCode::NO_CONTENT.into_response();
        if let Some(h) = route.guard.preflight(&parts.headers) {
            r.headers_mut().extend(h);
        }
        return Ok((r, Timing::default()));
    }

    let Some(route) = found
        .routes
        .iter()
        .find(|r| r.allows(parts.method.as_str()))
    else {
        let mut allowed: Vec<&str> = found
            .routes
            .iter()
            .flat_map(|r| r.methods.iter().map(String::as_str))
            .collect();
        allowed.sort_unstable();
        allowed.dedup();
        return Err(refusal(
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!(
                    "{} is not allowed on {path}; allowed: {}",
                    parts.method,
                    allowed.join(", ")
                ),
            ),
            header::ALLOW,
            allowed.join(", "),
        ));
    };
    check_network(route, peer).map_err(IntoResponse::into_response)?;
    check_key(platform, route, &parts.headers).map_err(IntoResponse::into_response)?;
    if let Err(retry_after_s) = route.guard.take_token() {
        return Err(refusal(
            ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "the rate limit of {} is exhausted; retry in {retry_after_s} s",
                    route.route_key
                ),
            ),
            header::RETRY_AFTER,
            retry_after_s.to_string(),
        ));
    }
    let limit = route.guard.body_limit_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(limit))?;

    let path_params: Vec<(String, String)> = route
        .params
        .iter()
        .cloned()
        .zip(found.values.iter().map(|v| event::percent_decode_path(v)))
        .collect();
    let fn_path = match &route.strip_prefix {
        Some(prefix) => {
            let rest = &path[prefix.len().min(path.len())..];
            if rest.is_empty() {
                "/".to_string()
            } else {
                rest.to_string()
            }
        }
        None => path.to_string(),
    };
    let routed = Routed {
        request_id,
        function: route.function.clone(),
        method: parts.method.clone(),
        path: fn_path,
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers.clone(),
        body,
        peer,
        route_key: route.route_key.clone(),
        path_params,
        routed_ms: received.elapsed().as_secs_f64() * 1000.0,
        trace: crate::trace::for_call(&parts.headers),
    };
    let (mut response, timing) = match route.kind {
        FunctionType::Handler => invoke_handler(platform, routed).await,
        FunctionType::Wsgi | FunctionType::Asgi => web::serve(platform, routed).await,
        FunctionType::Http => proxy::serve(platform, routed).await,
    }
    .map_err(IntoResponse::into_response)?;
    route.guard.decorate(&parts.headers, response.headers_mut());
    Ok((response, timing))
}

fn too_large(limit: usize) -> Response {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than this route's limit of {limit} bytes"),
    )
    .into_response()
}

fn check_network(route: &Route, peer: Option<SocketAddr>) -> Result<(), ApiError> {
    match peer {
        Some(p) if !route.guard.admits(p.ip()) => Err(ApiError::new(
            ErrorCode::IpDenied,
            format!("requests from {} are not allowed on this route", p.ip()),
        )),
        _ => Ok(()),
    }
}

fn check_key(platform: &Platform, route: &Route, headers: &HeaderMap) -> Result<(), ApiError> {
    if route.guard.auth == model::http::Auth::Anonymous {
        return Ok(());
    }
    let presented = KEY_HEADERS
        .iter()
        .find_map(|h| headers.get(*h))
        .and_then(|v| v.to_str().ok());
    match presented {
        None => Err(ApiError::new(
            ErrorCode::KeyRequired,
            "this route needs an invoke key in the x-nimbus-key header; create one with `nimbus keys create`",
        )),
        Some(key) if platform.key_is_valid(key) => Ok(()),
        Some(_) => Err(ApiError::new(
            ErrorCode::KeyInvalid,
            "the invoke key is not valid",
        )),
    }
}

/// A handler-style function behind a route: payload 2.0 event in, response out.
async fn invoke_handler(
    platform: &Arc<Platform>,
    r: Routed,
) -> Result<(Response, Timing), ApiError> {
    let event = event::build(&event::RequestFacts {
        method: &r.method,
        path: &r.path,
        query: &r.query,
        headers: &r.headers,
        body: &r.body,
        peer: r.peer,
        request_id: &r.request_id,
        route_key: &r.route_key,
        path_params: r.path_params,
        now_ms: now_ms(),
    });
    let affinity = r
        .headers
        .get(crate::routes::headers::AFFINITY)
        .and_then(|v| v.to_str().ok());
    let (record, outcome) = platform
        .invoke(
            &r.function,
            Bytes::from(event),
            r.request_id.clone(),
            affinity,
            r.trace,
        )
        .await?;
    let timing = Timing {
        routing_ms: r.routed_ms,
        cold_start: record.cold_start,
        timings: record.timings,
    };
    let mut response = match outcome {
        Outcome::Success { content_type, body } => event::response(content_type, body),
        Outcome::Error(e) => function_failed(&e, &record.request_id),
    };
    version_header(&mut response, &record.version);
    traceparent_header(&mut response, &record.trace);
    Ok((response, timing))
}

/// Answers the call's `traceparent`, as the invoke API does, unless the app set its own.
pub(crate) fn traceparent_header(response: &mut Response, trace: &crate::trace::Span) {
    if !response.headers().contains_key(crate::trace::TRACEPARENT)
        && let Ok(v) = HeaderValue::from_str(&trace.traceparent)
    {
        response.headers_mut().insert(crate::trace::TRACEPARENT, v);
    }
}

/// Says which version answered (`x-nimbus-version`), as the invoke API does.
pub(crate) fn version_header(response: &mut Response, version: &str) {
    if let Ok(v) = HeaderValue::from_str(version) {
        response
            .headers_mut()
            .insert(crate::routes::headers::VERSION, v);
    }
}

/// The gateway's answer when the function failed: 502 (504 on timeout) with a JSON body
/// that names the failure but, unlike the invoke API, not its message or stack trace: a
/// route may be public, and an exception's text can carry internals.
pub(crate) fn function_failed(e: &sandbox::FunctionError, request_id: &str) -> Response {
    let (code, status) = if e.error_type == "FunctionTimeout" {
        (ErrorCode::FunctionTimedOut, StatusCode::GATEWAY_TIMEOUT)
    } else {
        (ErrorCode::FunctionFailed, StatusCode::BAD_GATEWAY)
    };
    let body = json!({
        "code": code.as_str(),
        "message": "the function failed; its logs have the details",
        "errorType": e.error_type,
        "requestId": request_id,
    });
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&e.error_type) {
        r.headers_mut().insert(headers::ERROR_TYPE, v);
    }
    r
}

/// A lease on an instance of the routed function, or, when a new instance could not load
/// the function, the finished 502 answer (recorded like any failed call).
pub(crate) async fn lease_for(
    platform: &Arc<Platform>,
    r: &Routed,
) -> Result<Result<sandbox::Lease, (Response, Timing)>, ApiError> {
    let affinity = r
        .headers
        .get(crate::routes::headers::AFFINITY)
        .and_then(|v| v.to_str().ok());
    let (resolved, _) = platform
        .resolve_call(&r.function, affinity, &r.request_id)
        .await?;
    match platform.pool().acquire(&resolved.instance).await? {
        sandbox::Acquired::Ready(lease) => Ok(Ok(lease)),
        sandbox::Acquired::Failed(e, timings) => {
            let response = function_failed(&e, &r.request_id);
            record(
                platform,
                r.request_id.clone(),
                r.function.clone(),
                CallMeta {
                    version: None,
                    memory_mb: resolved.instance.memory_mb,
                    cold_start: true,
                    init_ms: None,
                    duration_ms: 0.0,
                    instance_id: 0,
                    timings,
                },
                Some(e),
                Default::default(),
                r.trace.clone(),
            );
            Ok(Err((
                response,
                Timing {
                    routing_ms: r.routed_ms,
                    cold_start: true,
                    timings,
                },
            )))
        }
    }
}

/// What is recorded of a gateway call besides its outcome and logs.
pub(crate) struct CallMeta {
    /// The version that ran, when known (a start that failed has none).
    version: Option<String>,
    memory_mb: u32,
    cold_start: bool,
    init_ms: Option<f64>,
    duration_ms: f64,
    instance_id: u64,
    timings: sandbox::Timings,
}

impl CallMeta {
    /// A call on `lease` that took `duration_ms` in the function.
    pub(crate) fn of(lease: &sandbox::Lease, duration_ms: f64) -> CallMeta {
        CallMeta {
            version: Some(lease.version().to_string()),
            memory_mb: lease.memory_mb,
            cold_start: lease.cold_start,
            init_ms: lease.init_ms(),
            duration_ms,
            instance_id: lease.instance_id(),
            timings: sandbox::Timings {
                handler_ms: duration_ms,
                ..lease.timings
            },
        }
    }
}

/// The whole of a call's phases.
fn total_ms(t: &sandbox::Timings) -> f64 {
    t.queue_ms + t.sandbox_ms + t.code_ms + t.initializer_ms + t.handler_ms
}

/// Records a finished gateway request in the node's recent invocations.
pub(crate) fn record(
    platform: &Platform,
    request_id: String,
    function: String,
    meta: CallMeta,
    error: Option<sandbox::FunctionError>,
    logs: sandbox::Logs,
    trace: crate::trace::Span,
) {
    // A route to a version or alias names it after the function.
    let (function, qualifier) = match function.split_once(':') {
        Some((f, q)) => (f.to_string(), q.to_string()),
        None => (function, "$LATEST".to_string()),
    };
    let version = meta.version.unwrap_or(qualifier);
    platform.remember(Arc::new(InvocationRecord {
        request_id,
        function,
        trigger: "http",
        attempt: 1,
        memory_mb: meta.memory_mb,
        version,
        // The call began with its queue wait and (cold) start, before the handler ran.
        started_at_ms: now_ms() - total_ms(&meta.timings).max(meta.duration_ms) as i64,
        cold_start: meta.cold_start,
        init_ms: meta.init_ms,
        duration_ms: meta.duration_ms,
        instance_id: meta.instance_id,
        error,
        logs,
        timings: meta.timings,
        trace,
    }));
}
