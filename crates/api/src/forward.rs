//! Calls between the nodes of a cluster: `HttpForwarder`, the platform's `Forwarder` over
//! HTTP, and the endpoint it calls on a function's home node,
//! `POST /v1/internal/invoke/{target}`.
//!
//! The request is the event, raw, with the call's fields in headers; the answer is the
//! outcome's body, raw, with the invocation record's fields in headers, so the node that
//! forwarded the call answers its client exactly as if it had run it. A home with no room
//! for the call now answers 503 with `x-nimbus-placement: full` at once, and the sender
//! runs the call itself.
//!
//! The endpoint is internal: it is not in the OpenAPI document and takes no admin token,
//! only the node key (`node_key`), derived from the admin token every node of a cluster
//! shares, and good for nothing else.
//!
//! A call runs once: only a request that was never sent (no connection) or that the home
//! refused (full, or a key it does not know) falls back to running here. Anything else
//! after the request left (a reset, a timeout) is an error: the call may have run.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use model::{ErrorCode, TriggerKind, limits};
use platform::forward::{Forwarded, Forwarder, Remote, Served};
use platform::trace::Span;
use platform::{Call, Error};
use sandbox::{ContentType, FunctionError, Logs, Outcome, Timings};
use serde::{Deserialize, Serialize};
use store::NodeRecord;

use crate::routes::headers as public;
use crate::{ApiError, AppState};

/// Where a home serves forwarded calls.
pub const PATH: &str = "/v1/internal/invoke/{target}";

/// Headers of the internal endpoint beyond the invoke API's own (`x-nimbus-request-id`,
/// `-version`, `-cold-start`, `-duration-ms`, `-init-duration-ms`, `-error-type`,
/// `traceparent`). Free text (request ids, affinities, sources, client contexts) is
/// base64, so any value a call can hold crosses.
pub mod headers {
    /// The node key.
    pub const KEY: &str = "x-nimbus-node-key";
    pub const TRIGGER: &str = "x-nimbus-trigger";
    pub const SOURCE: &str = "x-nimbus-source";
    pub const ATTEMPT: &str = "x-nimbus-attempt";
    pub const CLIENT_CONTEXT: &str = "x-nimbus-client-context";
    pub const LINEAGE: &str = "x-nimbus-lineage";
    /// The span the call's span continues (its `traceparent` is the call's own span).
    pub const PARENT_SPAN: &str = "x-nimbus-parent-span";
    pub const STARTED_AT_MS: &str = "x-nimbus-started-at-ms";
    pub const INSTANCE_ID: &str = "x-nimbus-instance-id";
    /// queue, sandbox, code, initializer and handler milliseconds, comma-separated.
    pub const TIMINGS: &str = "x-nimbus-timings";
    /// The last lines of the call's log (enough for a 4 KB tail), base64 of JSON
    /// `[[time_ms, stream, message], …]`.
    pub const LOGS: &str = "x-nimbus-logs";
    /// `full` on the 503 of a home without room for the call now.
    pub const PLACEMENT: &str = "x-nimbus-placement";
}

/// The log bytes a forwarded answer carries: the longest tail a front door returns (the
/// invoke API's and Lambda's `Tail` are both 4 KB).
const LOG_TAIL_BYTES: usize = 4 * 1024;

/// An answer's body is an outcome (at most the payload limit, to the byte) or a function's
/// error as JSON (its message and stack bounded by the shim's frame); anything past this is
/// no answer of a home's.
const ANSWER_BYTES_MAX: usize = limits::PAYLOAD_BYTES_MAX + (1 << 20);

/// After a connection to a node failed, calls whose home it is run where they are, without
/// trying it again, for this long: a node that died is dead to membership only after
/// `NODE_DEAD_AFTER_MS`, and its calls should not each wait for a connect timeout till then.
const UNREACHABLE_FOR: Duration = Duration::from_secs(2);

/// The key nodes present to each other's internal endpoint: derived from the admin token,
/// which every node of a cluster shares, so none stores it; good only for forwarded calls.
pub fn node_key(token: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "nnk_{}",
        hex::encode(Sha256::digest(format!("nimbus-node\n{token}").as_bytes()))
    )
}

/// Lets a request through only with the node key.
pub(crate) async fn require_node_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(headers::KEY)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if crate::auth::constant_time_eq(presented, node_key(&state.token).as_bytes()) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the internal endpoint takes calls from the nodes of this cluster only",
        ))
    }
}

/// `POST /v1/internal/invoke/{target}`: runs a call another node forwarded here, its home.
pub(crate) async fn serve(
    State(s): State<AppState>,
    Path(target): Path<String>,
    req_headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let event = crate::routes::read_body(body, limits::PAYLOAD_BYTES_MAX, "event").await?;
    let call = call_of(target, &req_headers)?;
    match s.platform.invoke_forwarded(call, event).await? {
        Served::Ran(invoked) => Ok(answer(&invoked.record, invoked.outcome)),
        Served::Full(why) => {
            let mut r = ApiError::new(ErrorCode::CapacityExhausted, why).into_response();
            r.headers_mut()
                .insert(headers::PLACEMENT, HeaderValue::from_static("full"));
            Ok(r)
        }
    }
}

/// The call the headers describe.
fn call_of(target: String, h: &HeaderMap) -> Result<Call, ApiError> {
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        h.get(name)
            .map(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| ApiError::invalid(format!("{name}: not base64 of UTF-8")))
            })
            .transpose()
    };
    let plain = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    let number = |name: &str, default: u32| -> Result<u32, ApiError> {
        plain(name).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| ApiError::invalid(format!("{name}: `{v}` is not a count")))
        })
    };
    let trigger = plain(headers::TRIGGER).unwrap_or("api");
    let trigger = trigger_kind(trigger)
        .ok_or_else(|| ApiError::invalid(format!("{}: `{trigger}`", headers::TRIGGER)))?;
    Ok(Call {
        target,
        request_id: text(public::REQUEST_ID)?
            .ok_or_else(|| ApiError::invalid("a forwarded call names its request id"))?,
        affinity: text(public::AFFINITY)?,
        trigger,
        source: text(headers::SOURCE)?,
        attempt: number(headers::ATTEMPT, 1)?,
        // The sender's span, as it is: the record here is the call's only one.
        trace: Span {
            traceparent: plain(crate::trace::TRACEPARENT)
                .ok_or_else(|| ApiError::invalid("a forwarded call carries its traceparent"))?
                .to_string(),
            parent_span_id: plain(headers::PARENT_SPAN).map(String::from),
        },
        client_context: text(headers::CLIENT_CONTEXT)?,
        lineage: number(headers::LINEAGE, 0)?,
    })
}

fn trigger_kind(s: &str) -> Option<TriggerKind> {
    [
        TriggerKind::Api,
        TriggerKind::Http,
        TriggerKind::Async,
        TriggerKind::Timer,
        TriggerKind::Event,
        TriggerKind::Object,
        TriggerKind::Queue,
        TriggerKind::Flow,
    ]
    .into_iter()
    .find(|k| k.as_str() == s)
}

/// The home's answer: the outcome's body with the record's fields in headers.
fn answer(record: &platform::InvocationRecord, outcome: Outcome) -> Response {
    let mut r = match outcome {
        Outcome::Success { content_type, body } => {
            let mut r = Response::new(Body::from(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type_of(content_type)),
            );
            r
        }
        Outcome::Error(e) => {
            let mut r = Response::new(Body::from(
                serde_json::to_vec(&e).expect("an error serializes"),
            ));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            // A marker: the error itself is the body.
            r.headers_mut().insert(
                public::ERROR_TYPE,
                HeaderValue::from_str(&e.error_type)
                    .unwrap_or(HeaderValue::from_static("Function.Error")),
            );
            r
        }
    };
    let h = r.headers_mut();
    put(h, public::REQUEST_ID, b64(&record.request_id));
    put(h, public::VERSION, record.version.clone());
    put(h, public::COLD_START, record.cold_start.to_string());
    put(h, public::DURATION_MS, record.duration_ms.to_string());
    if let Some(init) = record.init_ms {
        put(h, public::INIT_DURATION_MS, init.to_string());
    }
    put(h, headers::STARTED_AT_MS, record.started_at_ms.to_string());
    put(h, headers::INSTANCE_ID, record.instance_id.to_string());
    let t = &record.timings;
    put(
        h,
        headers::TIMINGS,
        format!(
            "{},{},{},{},{}",
            t.queue_ms, t.sandbox_ms, t.code_ms, t.initializer_ms, t.handler_ms
        ),
    );
    put(h, headers::LOGS, b64(&log_tail_json(&record.logs)));
    r
}

fn content_type_of(c: ContentType) -> &'static str {
    match c {
        ContentType::Json => "application/json",
        ContentType::Text => "text/plain; charset=utf-8",
        ContentType::Bytes => "application/octet-stream",
    }
}

/// A log line as it crosses: `[time_ms, stream, message]`.
#[derive(Serialize, Deserialize)]
struct Line(i64, String, String);

/// The last lines of `logs` that make up at least `LOG_TAIL_BYTES` (a line and its
/// newline), the first of them cut at its start to fit: the tail computed from them is the
/// tail of all the lines.
fn log_tail_json(logs: &Logs) -> String {
    let mut lines = Vec::new();
    let mut bytes = 0;
    for line in logs.lines.iter().rev() {
        if bytes >= LOG_TAIL_BYTES {
            break;
        }
        let room = LOG_TAIL_BYTES - bytes;
        let mut start = line.message.len().saturating_sub(room);
        while !line.message.is_char_boundary(start) {
            start -= 1;
        }
        let message = &line.message[start..];
        bytes += message.len() + 1;
        lines.push(Line(line.time_ms, line.stream.clone(), message.to_string()));
    }
    lines.reverse();
    serde_json::to_string(&lines).expect("lines serialize")
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn put(h: &mut HeaderMap, name: &'static str, value: String) {
    h.insert(
        HeaderName::from_static(name),
        HeaderValue::try_from(value).expect("numbers and base64 are valid header values"),
    );
}

/// The platform's `Forwarder` over HTTP: one pool of kept-alive connections to every node.
pub struct HttpForwarder {
    client: Client<HttpConnector, Full<Bytes>>,
    key: HeaderValue,
    /// Nodes a connection failed to, and until when they are not tried again.
    unreachable: Mutex<HashMap<String, Instant>>,
}

impl HttpForwarder {
    /// A forwarder presenting the node key of the cluster whose admin token is `token`.
    pub fn new(token: &str) -> HttpForwarder {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(
            limits::FORWARD_CONNECT_TIMEOUT_MS,
        )));
        connector.set_nodelay(true);
        // A request on a kept-alive connection the home closed meanwhile is sent again on
        // a new one (hyper does so only when nothing of it was written).
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        HttpForwarder {
            client,
            key: HeaderValue::try_from(node_key(token)).expect("hex is a valid header value"),
            unreachable: Mutex::new(HashMap::new()),
        }
    }

    fn request(
        &self,
        node: &NodeRecord,
        call: &Call,
        event: Bytes,
    ) -> Result<hyper::Request<Full<Bytes>>, Error> {
        let uri = format!(
            "{}{}",
            node.address.trim_end_matches('/'),
            PATH.replace("{target}", &path_segment(&call.target))
        );
        let mut req = hyper::Request::post(uri)
            .body(Full::new(event))
            .map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("node {} has an address that is not a URL: {e}", node.id),
                )
            })?;
        let h = req.headers_mut();
        h.insert(headers::KEY, self.key.clone());
        put(h, public::REQUEST_ID, b64(&call.request_id));
        put(h, headers::TRIGGER, call.trigger.as_str().to_string());
        put(h, headers::ATTEMPT, call.attempt.to_string());
        put(h, headers::LINEAGE, call.lineage.to_string());
        if let Ok(v) = HeaderValue::from_str(&call.trace.traceparent) {
            h.insert(crate::trace::TRACEPARENT, v);
        }
        if let Some(p) = call
            .trace
            .parent_span_id
            .as_deref()
            .and_then(|p| HeaderValue::from_str(p).ok())
        {
            h.insert(headers::PARENT_SPAN, p);
        }
        for (name, value) in [
            (public::AFFINITY, &call.affinity),
            (headers::SOURCE, &call.source),
            (headers::CLIENT_CONTEXT, &call.client_context),
        ] {
            if let Some(v) = value {
                put(h, name, b64(v));
            }
        }
        Ok(req)
    }

    fn is_unreachable(&self, node: &str) -> bool {
        let mut down = self.unreachable.lock().unwrap();
        match down.get(node) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                down.remove(node);
                false
            }
            None => false,
        }
    }
}

#[async_trait::async_trait]
impl Forwarder for HttpForwarder {
    async fn forward(
        &self,
        node: &NodeRecord,
        call: &Call,
        event: Bytes,
        timeout: Duration,
    ) -> Result<Forwarded, Error> {
        if self.is_unreachable(&node.id) {
            return Ok(Forwarded::NotThere(format!(
                "node {} was out of reach a moment ago",
                node.id
            )));
        }
        let req = self.request(node, call, event)?;
        let lost = |why: String| {
            tracing::warn!(node = %node.id, request_id = %call.request_id, %why, "a forwarded call got no answer");
            Error::new(
                ErrorCode::Internal,
                format!(
                    "the call went to node {} (its function's home), which did not answer ({why}); it may have run there, so it was not run again",
                    node.id
                ),
            )
        };
        let exchange = async {
            let res = match self.client.request(req).await {
                Ok(res) => res,
                // Nothing was sent: the call is this node's to run.
                Err(e) if e.is_connect() => {
                    self.unreachable
                        .lock()
                        .unwrap()
                        .insert(node.id.clone(), Instant::now() + UNREACHABLE_FOR);
                    return Ok(Forwarded::NotThere(format!(
                        "node {} could not be reached: {e}",
                        node.id
                    )));
                }
                Err(e) => return Err(lost(e.to_string())),
            };
            let (parts, body) = res.into_parts();
            let body = Limited::new(body, ANSWER_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| lost(format!("reading the answer: {e}")))?
                .to_bytes();
            read_answer(&node.id, parts.status, &parts.headers, body).map_err(|e| match e {
                Answer::Refused(e) => e,
                Answer::Malformed(why) => lost(why),
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(lost(format!("no answer within {} ms", timeout.as_millis()))),
        }
    }
}

/// Why an answer gave no outcome.
enum Answer {
    /// The home refused the call as this node would have: the error to answer.
    Refused(Error),
    /// Not an answer the endpoint gives.
    Malformed(String),
}

/// What the home's answer says became of the call.
fn read_answer(
    node: &str,
    status: StatusCode,
    h: &HeaderMap,
    body: Bytes,
) -> Result<Forwarded, Answer> {
    if status == StatusCode::OK {
        return ran(h, body)
            .map(|r| Forwarded::Ran(Box::new(r)))
            .map_err(Answer::Malformed);
    }
    #[derive(Deserialize)]
    struct ErrorView {
        code: String,
        message: String,
    }
    let error = serde_json::from_slice::<ErrorView>(&body).ok();
    let code = error
        .as_ref()
        .and_then(|e| ErrorCode::ALL.into_iter().find(|c| c.as_str() == e.code));
    if h.get(headers::PLACEMENT).is_some_and(|v| v == "full")
        || code == Some(ErrorCode::CapacityExhausted)
    {
        return Ok(Forwarded::NotThere(format!("node {node} is full")));
    }
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        // Its admin token is not this node's (not one cluster), or it is a release without
        // the endpoint: either way the call did not start there.
        tracing::warn!(
            node,
            "a node refused a forwarded call's key: do all nodes share one admin token?"
        );
        return Ok(Forwarded::NotThere(format!("node {node} refused the key")));
    }
    match (error, code) {
        (Some(e), Some(code)) => Err(Answer::Refused(Error {
            retry_after_s: h
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            ..Error::new(code, e.message)
        })),
        _ => Err(Answer::Malformed(format!(
            "status {status} without an error"
        ))),
    }
}

/// The record's fields and the outcome of a 200.
fn ran(h: &HeaderMap, body: Bytes) -> Result<Remote, String> {
    let plain = |name: &str| -> Result<&str, String> {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("the answer lacks {name}"))
    };
    let text = |name: &str| -> Result<String, String> {
        base64::engine::general_purpose::STANDARD
            .decode(plain(name)?)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| format!("{name} is not base64 of UTF-8"))
    };
    fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
        v.parse()
            .map_err(|_| format!("{name}: `{v}` is not a number"))
    }
    let outcome = match h.get(public::ERROR_TYPE) {
        Some(_) => Outcome::Error(
            serde_json::from_slice::<FunctionError>(&body)
                .map_err(|e| format!("a function error that is not one: {e}"))?,
        ),
        None => Outcome::Success {
            content_type: match plain(header::CONTENT_TYPE.as_str())? {
                "application/json" => ContentType::Json,
                "application/octet-stream" => ContentType::Bytes,
                _ => ContentType::Text,
            },
            body,
        },
    };
    let timings: Vec<f64> = plain(headers::TIMINGS)?
        .split(',')
        .map(|v| number(headers::TIMINGS, v))
        .collect::<Result<_, _>>()?;
    let [queue_ms, sandbox_ms, code_ms, initializer_ms, handler_ms] = timings[..] else {
        return Err(format!("{}: five numbers", headers::TIMINGS));
    };
    let lines: Vec<Line> = serde_json::from_str(&text(headers::LOGS)?)
        .map_err(|e| format!("{}: {e}", headers::LOGS))?;
    let mut logs = Logs::default();
    logs.lines = lines
        .into_iter()
        .map(|Line(time_ms, stream, message)| sandbox::LogLine {
            time_ms,
            stream,
            message,
        })
        .collect();
    Ok(Remote {
        request_id: text(public::REQUEST_ID)?,
        version: plain(public::VERSION)?.to_string(),
        started_at_ms: number(headers::STARTED_AT_MS, plain(headers::STARTED_AT_MS)?)?,
        cold_start: number(public::COLD_START, plain(public::COLD_START)?)?,
        init_ms: h
            .get(public::INIT_DURATION_MS)
            .map(|v| number(public::INIT_DURATION_MS, v.to_str().unwrap_or("")))
            .transpose()?,
        duration_ms: number(public::DURATION_MS, plain(public::DURATION_MS)?)?,
        instance_id: number(headers::INSTANCE_ID, plain(headers::INSTANCE_ID)?)?,
        timings: Timings {
            queue_ms,
            sandbox_ms,
            code_ms,
            initializer_ms,
            handler_ms,
        },
        logs,
        outcome,
    })
}

/// `target` as one path segment: names and qualifiers are safe as they are; anything else
/// is percent-encoded.
pub(crate) fn path_segment(target: &str) -> String {
    let mut out = String::with_capacity(target.len());
    for b in target.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'$') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
