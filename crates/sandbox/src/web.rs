//! Web functions (WSGI/ASGI apps, HTTP servers) invoked with an event, as AWS's Lambda Web
//! Adapter does, and the HTTP client of HTTP instances.
//!
//! A web function serves requests, but timers, queues, the asynchronous queue and the
//! invoke API deliver events. The adapter turns an event of the API Gateway shape (payload
//! 2.0, or the REST API's 1.0) into that HTTP request, and any other payload into a
//! `POST /` with the payload as its body; the app's answer comes back as a payload 2.0
//! response (`statusCode`, `headers`, `cookies`, `body`, `isBase64Encoded`). The adapter
//! runs here, beside the instance, like the Lambda Web Adapter runs inside the function's
//! environment: the platform's core stays free of HTTP.
//!
//! Function Compute's custom runtimes (`conventions: fc`) are called in FC's event mode
//! instead (`FcClient`): `POST /invoke` with FC's headers, `POST /initialize`.
//!
//! Boundary: this is an HTTP *client* of the instance's own loopback port; the only HTTP
//! servers of Nimbus are the API crate's and the Runtime API endpoints of `provided`
//! instances (`executor::runtime_api`).

use std::time::Instant;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};

use crate::executor::StreamEvent;
use crate::logs::now_ms;
use crate::pool::{CallContext, Lease, WebReply};
use crate::{ContentType, FunctionError, Logs, Outcome};

/// A kept-alive connection to an HTTP instance's server. It lives with the instance (a
/// lease attachment) between calls.
pub type HttpConnection = SendRequest<Full<Bytes>>;

/// The HTTP request an event stands for.
#[derive(Debug, PartialEq, Eq)]
pub struct AdaptedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The HTTP request of an event: an API Gateway event (payload 2.0 or 1.0) is that
/// request; anything else is `POST /` with the event as body.
pub fn request_of_event(event: &[u8]) -> AdaptedRequest {
    let parsed: Option<Map<String, Value>> = serde_json::from_slice(event).ok();
    if let Some(e) = parsed.as_ref()
        && let Some(r) = api_gateway_request(e)
    {
        return r;
    }
    let content_type = if parsed.is_some() || serde_json::from_slice::<Value>(event).is_ok() {
        "application/json"
    } else {
        "application/octet-stream"
    };
    AdaptedRequest {
        method: "POST".into(),
        path: "/".into(),
        query: String::new(),
        headers: vec![("content-type".into(), content_type.into())],
        body: Bytes::copy_from_slice(event),
    }
}

/// The request of an API Gateway event, when `e` is one: payload 2.0 (`version` "2.0" and
/// `requestContext.http`) or 1.0 (`httpMethod` and `path`).
fn api_gateway_request(e: &Map<String, Value>) -> Option<AdaptedRequest> {
    let str_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let http = e
        .get("requestContext")
        .and_then(|c| c.get("http"))
        .filter(|_| e.get("version").and_then(Value::as_str) == Some("2.0"));
    let (method, path, query) = if let Some(http) = http {
        let method = str_of(http.get("method")).unwrap_or_else(|| "GET".into());
        let path = str_of(e.get("rawPath"))
            .or_else(|| str_of(http.get("path")))
            .unwrap_or_else(|| "/".into());
        let query = str_of(e.get("rawQueryString")).unwrap_or_default();
        (method, path, query)
    } else {
        let method = str_of(e.get("httpMethod"))?;
        let path = str_of(e.get("path"))?;
        (method, path, query_of_v1(e))
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(Value::Object(multi)) = e.get("multiValueHeaders") {
        for (name, values) in multi {
            for v in values
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                headers.push((name.to_ascii_lowercase(), v.to_string()));
            }
        }
    }
    if headers.is_empty()
        && let Some(Value::Object(single)) = e.get("headers")
    {
        for (name, v) in single {
            if let Some(v) = v.as_str() {
                headers.push((name.to_ascii_lowercase(), v.to_string()));
            }
        }
    }
    // Payload 2.0 carries cookies apart from the headers.
    if let Some(Value::Array(cookies)) = e.get("cookies") {
        let joined: Vec<&str> = cookies.iter().filter_map(Value::as_str).collect();
        if !joined.is_empty() {
            headers.retain(|(n, _)| n != "cookie");
            headers.push(("cookie".into(), joined.join("; ")));
        }
    }
    let body = match e.get("body") {
        Some(Value::String(b)) if e.get("isBase64Encoded") == Some(&Value::Bool(true)) => {
            Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .unwrap_or_else(|_| b.clone().into_bytes()),
            )
        }
        Some(Value::String(b)) => Bytes::from(b.clone()),
        _ => Bytes::new(),
    };
    Some(AdaptedRequest {
        method: method.to_ascii_uppercase(),
        path,
        query,
        headers,
        body,
    })
}

/// A REST API event's query string, from its (multi-value) parameters.
fn query_of_v1(e: &Map<String, Value>) -> String {
    let mut pairs = Vec::new();
    if let Some(Value::Object(multi)) = e.get("multiValueQueryStringParameters") {
        for (k, vs) in multi {
            for v in vs
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                pairs.push(format!("{}={}", encode(k), encode(v)));
            }
        }
    } else if let Some(Value::Object(single)) = e.get("queryStringParameters") {
        for (k, v) in single {
            if let Some(v) = v.as_str() {
                pairs.push(format!("{}={}", encode(k), encode(v)));
            }
        }
    }
    pairs.join("&")
}

/// Percent-encodes a query component (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The payload 2.0 response of an app's answer. A body that is not UTF-8 text is base64'd;
/// `set-cookie` headers become `cookies`; repeated headers are joined with commas.
pub fn response_json(status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut map = Map::new();
    let mut cookies = Vec::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(value).into_owned();
        if name == "set-cookie" {
            cookies.push(Value::String(value));
            continue;
        }
        match map.get_mut(&name) {
            Some(Value::String(v)) => {
                v.push_str(", ");
                v.push_str(&value);
            }
            _ => {
                map.insert(name, Value::String(value));
            }
        }
    }
    let (body, base64) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), true),
    };
    let mut out = json!({
        "statusCode": status,
        "headers": map,
        "body": body,
        "isBase64Encoded": base64,
    });
    if !cookies.is_empty() {
        out["cookies"] = Value::Array(cookies);
    }
    serde_json::to_vec(&out).expect("a response serializes")
}

/// Connects to an HTTP instance's server on its loopback port.
pub async fn connect(port: u16) -> Result<HttpConnection, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connecting to its port {port}: {e}"))?;
    // Small request/response pairs must not wait on Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

impl Lease {
    /// A connection to this HTTP instance's server: the one a previous call kept with the
    /// instance, or a new one.
    pub async fn connection(&self) -> Result<HttpConnection, String> {
        match self.take_attachment::<HttpConnection>() {
            Some(s) if !s.is_closed() => Ok(s),
            _ => {
                let port = self
                    .port()
                    .ok_or("the instance serves no HTTP port (it is not an HTTP function)")?;
                connect(port).await
            }
        }
    }

    /// Invokes a web function with an event through the adapter. The answer is the
    /// payload 2.0 response as JSON; a failure is the function's, as for any call.
    pub(crate) async fn invoke_web(
        &self,
        request_id: &str,
        event: &[u8],
        call: &CallContext,
        http: bool,
    ) -> (Outcome, Logs, f64) {
        let request = request_of_event(event);
        let started = Instant::now();
        let (result, logs) = if http {
            self.adapt_http(request_id, request, call).await
        } else {
            self.adapt_channel(request_id, request, call).await
        };
        let outcome = match result {
            Ok(body) => Outcome::Success {
                content_type: ContentType::Json,
                body: Bytes::from(body),
            },
            Err(e) => Outcome::Error(e),
        };
        (outcome, logs, started.elapsed().as_secs_f64() * 1000.0)
    }

    /// A WSGI/ASGI app: the request as one frame, the streamed answer gathered.
    async fn adapt_channel(
        &self,
        request_id: &str,
        r: AdaptedRequest,
        call: &CallContext,
    ) -> (Result<Vec<u8>, FunctionError>, Logs) {
        let deadline = tokio::time::Instant::now() + self.timeout();
        let mut headers = r.headers;
        if let Some(tp) = &call.traceparent {
            headers.retain(|(n, _)| n != "traceparent");
            headers.push(("traceparent".into(), tp.clone()));
        }
        let host = headers
            .iter()
            .find(|(n, _)| n == "host")
            .map_or("localhost", |(_, v)| v.as_str());
        let (server_name, server_port) = match host.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>().unwrap_or(80)),
            _ => (host, 80),
        };
        let meta = serde_json::to_vec(&json!({
            "request_id": request_id,
            "deadline_ms": now_ms() + self.timeout().as_millis() as i64,
            "method": r.method,
            "path": r.path,
            "query": r.query,
            "headers": headers,
            "remote_addr": "",
            "remote_port": 0,
            "server_name": server_name,
            "server_port": server_port,
            "scheme": "http",
        }))
        .expect("request meta serializes");
        let (head, mut stream) = match self.web_request(&meta, &r.body).await {
            WebReply::Head { head, body } => (head, body),
            WebReply::Error(e, logs) => return (Err(e), logs),
        };
        let head: WebHead = match serde_json::from_slice(&head) {
            Ok(h) => h,
            Err(e) => {
                return (
                    Err(FunctionError::new(
                        "Runtime.InvalidResponse",
                        format!("unreadable response head: {e}"),
                    )),
                    Logs::default(),
                );
            }
        };
        let mut body = BytesMut::new();
        loop {
            match tokio::time::timeout_at(deadline, stream.recv()).await {
                Ok(Some(StreamEvent::Chunk(bytes))) => {
                    if body.len() + bytes.len() > model::limits::PAYLOAD_BYTES_MAX {
                        // The lease's drop retires the instance still writing.
                        return (Err(too_large()), Logs::default());
                    }
                    body.extend_from_slice(&bytes);
                }
                Ok(Some(StreamEvent::End(logs))) => {
                    self.finish_stream();
                    let headers: Vec<(String, Vec<u8>)> = head
                        .headers
                        .into_iter()
                        .map(|(n, v)| (n, latin1(&v)))
                        .collect();
                    return (Ok(response_json(head.status, &headers, &body)), logs);
                }
                Ok(Some(StreamEvent::Abort(why))) => {
                    return (
                        Err(FunctionError::new("Runtime.ResponseAborted", why)),
                        Logs::default(),
                    );
                }
                Ok(None) => {
                    return (
                        Err(FunctionError::new(
                            "Runtime.ExitError",
                            "the instance went away mid-response",
                        )),
                        Logs::default(),
                    );
                }
                Err(_) => return (Err(self.timed_out()), Logs::default()),
            }
        }
    }

    /// An HTTP server (custom runtime, Node HTTP handler): the request over the kept-alive
    /// connection, the answer read whole.
    async fn adapt_http(
        &self,
        request_id: &str,
        r: AdaptedRequest,
        call: &CallContext,
    ) -> (Result<Vec<u8>, FunctionError>, Logs) {
        let uri = if r.query.is_empty() {
            r.path.clone()
        } else {
            format!("{}?{}", r.path, r.query)
        };
        let mut builder = hyper::Request::builder().method(r.method.as_str()).uri(uri);
        let mut has_host = false;
        for (name, value) in &r.headers {
            has_host |= name == "host";
            if !HOP_BY_HOP.contains(&name.as_str()) && name != "traceparent" {
                builder = builder.header(name.as_str(), value.as_str());
            }
        }
        if !has_host {
            builder = builder.header("host", "localhost");
        }
        if let Some(tp) = &call.traceparent {
            builder = builder.header("traceparent", tp.as_str());
        }
        builder = builder.header("x-nimbus-request-id", request_id);
        let request = match builder.body(Full::new(r.body)) {
            Ok(request) => request,
            Err(e) => {
                return (
                    Err(FunctionError::new(
                        "Runtime.InvalidEvent",
                        format!("the event does not make an HTTP request: {e}"),
                    )),
                    Logs::default(),
                );
            }
        };
        let id = self.begin_external();
        let exchange = async {
            let mut sender = self.connection().await?;
            sender.ready().await.map_err(|e| e.to_string())?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let limited = http_body_util::Limited::new(body, model::limits::PAYLOAD_BYTES_MAX);
            let bytes = limited
                .collect()
                .await
                .map_err(|e| format!("reading its response: {e}"))?
                .to_bytes();
            Ok::<_, String>((sender, parts, bytes))
        };
        let result = tokio::time::timeout(self.timeout(), exchange).await;
        match result {
            Ok(Ok((sender, parts, bytes))) => {
                self.barrier().await;
                let logs = self.end_external(id);
                self.put_attachment(sender);
                let headers: Vec<(String, Vec<u8>)> = parts
                    .headers
                    .iter()
                    .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()))
                    .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect();
                (
                    Ok(response_json(parts.status.as_u16(), &headers, &bytes)),
                    logs,
                )
            }
            Ok(Err(why)) => {
                let why = format!("the function's server did not answer: {why}");
                let report = if self.is_dead() {
                    self.crash_report(&why).await
                } else {
                    // Whatever state its server is in, the instance is not trusted again.
                    self.kill_after_failure("its HTTP server failed");
                    why
                };
                let logs = self.end_external(id);
                (Err(FunctionError::new("Runtime.ExitError", report)), logs)
            }
            Err(_) => {
                let error = self.timed_out();
                (Err(error), self.end_external(id))
            }
        }
    }
}

/// Function Compute's custom runtime protocol (`conventions: fc`, `runtime: custom`): an
/// event is `POST /invoke` to the instance's own server, with the event as the body and
/// FC's common headers (`x-fc-request-id`, `x-fc-function-name`, …); the initializer is
/// `POST /initialize`, the pre-stop hook `GET /pre-stop`. The answer's body is the result;
/// a 404 or 5xx status, or an `x-fc-status` header other than 200, is the function's
/// failure. Requests through the gateway are proxied as they came, as FC does with its
/// HTTP functions.
pub(crate) struct FcClient {
    port: u16,
    /// The headers every request carries: the function as FC describes it.
    common: Vec<(&'static str, String)>,
    /// A kept-alive connection between calls (an instance takes one call at a time, or a
    /// new connection is made for the next).
    connection: tokio::sync::Mutex<Option<HttpConnection>>,
}

/// How an FC exchange went: the function's answer (its value or its failure), or why its
/// server gave none.
pub(crate) type FcAnswer = Result<Result<Bytes, FunctionError>, String>;

impl FcClient {
    pub fn new(config: &crate::InstanceConfig, port: u16) -> FcClient {
        let env = |k: &str| config.env.get(k).cloned().unwrap_or_default();
        // FC names the unpublished function `LATEST`; a published one by its version.
        let latest = config.version == "$LATEST";
        let common = vec![
            ("x-fc-function-name", config.function.clone()),
            ("x-fc-function-handler", config.handler.clone()),
            ("x-fc-function-memory", config.memory_mb.to_string()),
            (
                "x-fc-function-timeout",
                config.timeout_ms.div_ceil(1000).to_string(),
            ),
            ("x-fc-function-initializer", config.initializer.clone()),
            (
                "x-fc-initialization-timeout",
                config.initializer_timeout_ms.div_ceil(1000).to_string(),
            ),
            ("x-fc-region", env("AWS_REGION")),
            ("x-fc-account-id", env("NIMBUS_ACCOUNT_ID")),
            ("x-fc-service-name", "default".into()),
            (
                "x-fc-qualifier",
                if latest {
                    "LATEST".into()
                } else {
                    config.version.clone()
                },
            ),
            (
                "x-fc-version-id",
                if latest {
                    String::new()
                } else {
                    config.version.clone()
                },
            ),
        ];
        FcClient {
            port,
            common,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    /// One request to the instance's server: `path` (`/invoke`, `/initialize`,
    /// `/pre-stop`) with `body`. The caller bounds it with the call's timeout.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        request_id: &str,
        traceparent: Option<&str>,
        body: Bytes,
    ) -> FcAnswer {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/octet-stream")
            .header("x-fc-request-id", request_id)
            .header("x-fc-control-path", path);
        for (name, value) in &self.common {
            request = request.header(*name, value.as_str());
        }
        if let Some(tp) = traceparent {
            // The trace the call belongs to, as W3C and as FC's trace id (its trace part).
            request = request.header("traceparent", tp);
            if let Some(trace) = tp.split('-').nth(1) {
                request = request.header("x-fc-trace-id", trace);
            }
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| format!("building the request: {e}"))?;
        let mut slot = self.connection.lock().await;
        let mut sender = match slot.take() {
            Some(s) if !s.is_closed() => s,
            _ => connect(self.port).await?,
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let bytes = match http_body_util::Limited::new(body, model::limits::PAYLOAD_BYTES_MAX)
            .collect()
            .await
        {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                // The rest of that body is never read: the connection is not kept.
                return Ok(Err(FunctionError::new(
                    "Function.ResponseSizeTooLarge",
                    format!(
                        "Response payload size exceeded maximum allowed payload size ({} bytes).",
                        model::limits::PAYLOAD_BYTES_MAX
                    ),
                )));
            }
            Err(e) => return Err(format!("reading its response: {e}")),
        };
        *slot = Some(sender);
        let status = parts.status.as_u16();
        let fc_status = parts
            .headers
            .get("x-fc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u16>().ok());
        if status == 404 || status >= 500 || fc_status.is_some_and(|s| s != 200) {
            return Ok(Err(fc_error(method, path, status, fc_status, &bytes)));
        }
        Ok(Ok(bytes))
    }
}

impl FcClient {
    /// A hook: `POST /initialize` (`initialize`) or `GET /pre-stop`, bounded by `timeout`;
    /// `Ok` carries its duration in milliseconds.
    pub async fn hook(
        &self,
        initialize: bool,
        instance: u64,
        timeout: std::time::Duration,
    ) -> Result<f64, FunctionError> {
        let (method, path, prefix) = if initialize {
            ("POST", "/initialize", "init")
        } else {
            ("GET", "/pre-stop", "pre-stop")
        };
        let started = Instant::now();
        let request_id = format!("{prefix}-{instance}");
        let sent = tokio::time::timeout(
            timeout,
            self.send(method, path, &request_id, None, Bytes::new()),
        )
        .await;
        match sent {
            Ok(Ok(Ok(_))) => Ok(started.elapsed().as_secs_f64() * 1000.0),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(why)) => Err(FunctionError::new(
                "Runtime.ExitError",
                format!("the function's server did not answer {method} {path}: {why}"),
            )),
            Err(_) => Err(FunctionError::new(
                "Timeout",
                format!(
                    "{method} {path} did not finish within {} ms",
                    timeout.as_millis()
                ),
            )),
        }
    }
}

/// The failure an FC server reported: its body's `errorType`/`errorMessage` when it is
/// Lambda- or FC-shaped JSON, else its status and text.
fn fc_error(
    method: &str,
    path: &str,
    status: u16,
    fc_status: Option<u16>,
    body: &[u8],
) -> FunctionError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |key: &str| parsed[key].as_str().filter(|s| !s.is_empty());
    let error_type = text("errorType").unwrap_or("UnhandledInvocationError");
    let message = match text("errorMessage") {
        Some(m) => m.to_string(),
        None => {
            let shown = String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned();
            let fc = fc_status.map_or(String::new(), |s| format!(" (x-fc-status {s})"));
            format!("{method} {path} answered {status}{fc}: {shown}")
        }
    };
    let mut e = FunctionError::new(error_type, message);
    if let Value::Array(lines) = &parsed["stackTrace"] {
        e.stack_trace = lines
            .iter()
            .filter_map(|l| l.as_str().map(str::to_string))
            .collect();
    }
    e
}

/// The response head a web shim sends: `{status, headers: [[name, value], …]}`.
#[derive(serde::Deserialize)]
pub struct WebHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// Header bytes as WSGI/ASGI carry them: each char is one latin-1 byte.
pub fn latin1(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| if (c as u32) < 256 { c as u8 } else { b'?' })
        .collect()
}

fn too_large() -> FunctionError {
    FunctionError::new(
        "Runtime.ResponseTooLarge",
        format!(
            "the response is larger than {} bytes",
            model::limits::PAYLOAD_BYTES_MAX
        ),
    )
}

/// Hop-by-hop headers: they describe one connection and are not forwarded (RFC 9110 7.6.1).
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_2_0_events_become_their_request() {
        let event = json!({
            "version": "2.0",
            "routeKey": "POST /items",
            "rawPath": "/items/7",
            "rawQueryString": "a=1&b=two",
            "cookies": ["s=1", "t=2"],
            "headers": {"Content-Type": "application/json", "x-id": "9"},
            "requestContext": {"http": {"method": "post", "path": "/items/7"}},
            "body": "eyJrIjogMX0=",
            "isBase64Encoded": true
        });
        let r = request_of_event(&serde_json::to_vec(&event).unwrap());
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/items/7");
        assert_eq!(r.query, "a=1&b=two");
        assert_eq!(&r.body[..], br#"{"k": 1}"#);
        assert!(
            r.headers
                .contains(&("content-type".into(), "application/json".into()))
        );
        assert!(r.headers.contains(&("cookie".into(), "s=1; t=2".into())));
    }

    #[test]
    fn rest_api_events_and_plain_payloads() {
        let event = json!({
            "httpMethod": "GET",
            "path": "/hello",
            "queryStringParameters": {"name": "Ada Lovelace"},
            "headers": {"Accept": "text/plain"},
            "body": null
        });
        let r = request_of_event(&serde_json::to_vec(&event).unwrap());
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/hello"));
        assert_eq!(r.query, "name=Ada%20Lovelace");
        assert!(r.body.is_empty());

        let r = request_of_event(br#"{"name": "Ada"}"#);
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/"));
        assert_eq!(&r.body[..], br#"{"name": "Ada"}"#);
        assert_eq!(
            r.headers,
            [("content-type".into(), "application/json".into())]
        );
        let r = request_of_event(b"\x00\x01");
        assert_eq!(
            r.headers,
            [("content-type".into(), "application/octet-stream".into())]
        );
    }

    #[test]
    fn answers_are_payload_2_0_responses() {
        let headers = vec![
            ("Content-Type".to_string(), b"text/plain".to_vec()),
            ("set-cookie".to_string(), b"a=1".to_vec()),
            ("x-multi".to_string(), b"1".to_vec()),
            ("x-multi".to_string(), b"2".to_vec()),
        ];
        let out: Value = serde_json::from_slice(&response_json(201, &headers, b"hi")).unwrap();
        assert_eq!(
            out,
            json!({
                "statusCode": 201,
                "headers": {"content-type": "text/plain", "x-multi": "1, 2"},
                "cookies": ["a=1"],
                "body": "hi",
                "isBase64Encoded": false
            })
        );
        let out: Value = serde_json::from_slice(&response_json(200, &[], b"\xff\x00")).unwrap();
        assert_eq!(out["isBase64Encoded"], true);
        assert_eq!(out["body"], "/wA=");
    }
}
