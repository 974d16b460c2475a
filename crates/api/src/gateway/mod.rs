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
//!
//! Every call goes through the core's one invoke path (`Platform::invoke`, or
//! `Platform::begin` and a `Session` for a streamed response), which records it once. The
//! gateway is the HTTP trigger: its route table is derived from the platform's catalog of
//! functions, and it refuses a deploy whose routes conflict.
//!
//! A request whose host is `{bucket}.{--website-domain}` is not routed: `website` serves
//! that bucket's static website from the object store.

pub mod event;
pub mod guard;
mod proxy;
pub mod table;
mod web;
pub mod website;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use model::{ErrorCode, FunctionType};
use sandbox::Outcome;
use serde_json::json;

use platform::{Begun, Call, Platform, Session, now_ms};
use table::{Route, RouteTable};

use crate::routes::headers;
use crate::{ApiError, AppState};

/// The HTTP trigger: the route table, rebuilt from the platform's catalog whenever its
/// revision moved on. The check is made per request, so a route is served as soon as the
/// deploy that made it has answered.
#[derive(Default)]
pub struct Gateway {
    /// The table and the catalog revision it was built from.
    table: RwLock<(u64, Arc<RouteTable>)>,
}

impl Gateway {
    pub fn new() -> Arc<Gateway> {
        Arc::new(Gateway::default())
    }

    /// The routes of the platform's current catalog.
    pub fn routes(&self, platform: &Platform) -> Arc<RouteTable> {
        let catalog = platform.catalog();
        {
            let table = self.table.read().unwrap();
            if table.0 == catalog.revision {
                return table.1.clone();
            }
        }
        let built = RouteTable::build(&catalog.functions).unwrap_or_else(|e| {
            // Deploys refuse conflicts, so this only happens to data written around them.
            tracing::error!(error = %e, "stored routes conflict; the gateway serves none of them");
            RouteTable::default()
        });
        let mut table = self.table.write().unwrap();
        if table.0 < catalog.revision {
            *table = (catalog.revision, Arc::new(built));
        }
        table.1.clone()
    }
}

#[async_trait::async_trait]
impl platform::Trigger for Gateway {
    fn kind(&self) -> model::TriggerKind {
        model::TriggerKind::Http
    }

    /// Two routes that would match the same request conflict; the deploy is refused.
    /// Routes are functions' only (a flow declares none).
    fn validate(&self, catalog: &platform::Catalog) -> Result<(), platform::Error> {
        RouteTable::build(&catalog.functions)
            .map(|_| ())
            .map_err(|conflict| platform::Error::new(ErrorCode::RouteConflict, conflict))
    }

    /// The server's listener is already taking requests; routes follow the catalog.
    async fn start(
        self: Arc<Self>,
        _: Arc<Platform>,
        _: platform::Changes,
    ) -> Result<(), platform::Error> {
        Ok(())
    }

    async fn stop(&self) {}
}

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
    /// The event a handler gets.
    pub payload: event::Payload,
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
    // A host under the website domain names a bucket: the website, not the routes.
    if let Some(objects) = &state.objects
        && let Some(bucket) =
            website::bucket_of(request.headers(), request.uri(), &objects.website_domain)
    {
        let mut response = website::serve(objects, &bucket, request, &request_id).await;
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(headers::REQUEST_ID, v);
        }
        return response;
    }
    let mut response = match serve(&state, request, request_id.clone()).await {
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
    state: &AppState,
    request: Request,
    request_id: String,
) -> Result<(Response, Timing), Response> {
    let platform = &state.platform;
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let table = state.gateway.routes(platform);
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
    if let Some((function, path)) = &route.paused_as
        && platform.trigger_paused(function, path)
    {
        return Err(ApiError::new(
            ErrorCode::TriggerPaused,
            format!(
                "the route {} of `{function}` is paused; `nimbus triggers resume {function} {path}` serves it again",
                route.route_key
            ),
        )
        .into_response());
    }
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
    let body = crate::routes::read_body(body, limit, "request body")
        .await
        .map_err(IntoResponse::into_response)?;

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
        payload: route.payload,
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
    let call = call_of(&r);
    let event = if r.payload == event::Payload::Cloud {
        let pairs: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let mut events = platform::bus::CloudEvent::from_http(&pairs, &r.body)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        if events.len() != 1 {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "this route takes one CloudEvent per request, not a batch of {}",
                    events.len()
                ),
            ));
        }
        events.pop().expect("one event").to_structured()
    } else {
        r.payload.builder()(&event::RequestFacts {
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
            account_id: &platform.aws_identity().account_id,
        })
    };
    let platform::Invoked {
        record, outcome, ..
    } = platform.invoke(call, Bytes::from(event)).await?;
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

/// The core's call for a routed request.
fn call_of(r: &Routed) -> Call {
    Call {
        target: r.function.clone(),
        request_id: r.request_id.clone(),
        affinity: r
            .headers
            .get(crate::routes::headers::AFFINITY)
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        trigger: model::TriggerKind::Http,
        source: None,
        attempt: 1,
        trace: r.trace.clone(),
        client_context: None,
        lineage: 0,
    }
}

/// A session on an instance of the routed function, or, when a new instance could not
/// load the function, the finished 502 answer (the core recorded the call).
pub(crate) async fn begin(
    platform: &Arc<Platform>,
    r: &Routed,
) -> Result<Result<Session, (Response, Timing)>, ApiError> {
    match platform.begin(call_of(r)).await? {
        Begun::Ready(session) => Ok(Ok(session)),
        Begun::Failed(record, _) => {
            let error = record.error.as_ref().expect("a failed start has its error");
            let mut response = function_failed(error, &r.request_id);
            version_header(&mut response, &record.version);
            Ok(Err((
                response,
                Timing {
                    routing_ms: r.routed_ms,
                    cold_start: true,
                    timings: record.timings,
                },
            )))
        }
    }
}
