//! The Lambda Runtime API (version 2018-06-01) of one `provided` instance: an HTTP server
//! of the Nimbus process on a loopback port of its own, which the instance's `bootstrap`
//! finds at `$AWS_LAMBDA_RUNTIME_API`.
//!
//! The protocol is AWS's: the runtime long-polls `GET …/invocation/next` for an event,
//! answers it with `POST …/invocation/{id}/response` or `…/{id}/error`, and reports a
//! failed start with `POST …/init/error`. Its first `/next` ends its init. A call (`call`)
//! hands its event to the one waiting `/next` and waits for the answer; the process
//! executor wraps that with the call's timeout and the process's exit, as it does the
//! shims' channel. Everything is bounded: one call at a time, `PAYLOAD_BYTES_MAX` per body
//! (413 past it, and the call fails), a time to send a body, a few connections.
//!
//! Boundary: this serves only the instance it belongs to. When instances are jailed (one
//! uid per function), a connection is accepted only from a socket of the instance's uid,
//! because instances with `network: outbound` share the host's loopback and another
//! function could otherwise take this one's events or answer for it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use model::limits;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::{Reply, StartError};
use crate::FunctionError;

/// Where every path of the API starts.
const PREFIX: &str = "/2018-06-01/runtime/";

/// How far the runtime got in starting.
#[derive(Clone, Debug)]
pub(crate) enum Init {
    Starting,
    /// Its first `/next` came: it is initialized and waits for calls.
    Ready,
    /// It reported `POST /runtime/init/error`.
    Failed(FunctionError),
}

/// An invocation on its way to the runtime's next `/next`.
struct Call {
    request_id: String,
    /// The `Lambda-Runtime-*` headers of the event.
    headers: Vec<(&'static str, String)>,
    event: Bytes,
    answer: oneshot::Sender<Reply>,
}

/// What the server's connections share.
struct Shared {
    /// Calls from `call`; the channel holds one, since the instance takes one at a time.
    calls: tokio::sync::Mutex<mpsc::Receiver<Call>>,
    /// The call the runtime is working on: its id and where its answer goes.
    current: Mutex<Option<(String, oneshot::Sender<Reply>)>>,
    init: watch::Sender<Init>,
    /// The only uid whose sockets may connect (jailed instances); `None`: any.
    uid: Option<u32>,
    connections: Arc<Semaphore>,
}

/// The endpoint of one instance. Dropping it stops the server; a `/next` still waiting
/// then ends.
pub(crate) struct RuntimeApi {
    addr: SocketAddr,
    calls: mpsc::Sender<Call>,
    init: watch::Receiver<Init>,
    /// The ARN of a call that did not name one (`arn:aws:lambda:region:account:function:name`).
    default_arn: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl RuntimeApi {
    /// Binds a loopback port and serves the API on it. With `uid`, only sockets of that
    /// uid may connect. Must be called on the tokio runtime.
    pub fn bind(uid: Option<u32>, default_arn: String) -> std::io::Result<RuntimeApi> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let (calls, calls_rx) = mpsc::channel(1);
        let (init_tx, init) = watch::channel(Init::Starting);
        let shared = Arc::new(Shared {
            calls: tokio::sync::Mutex::new(calls_rx),
            current: Mutex::new(None),
            init: init_tx,
            uid,
            connections: Arc::new(Semaphore::new(limits::RUNTIME_API_CONNECTIONS_MAX)),
        });
        let server = tokio::spawn(serve(listener, shared));
        Ok(RuntimeApi {
            addr,
            calls,
            init,
            default_arn,
            server,
        })
    }

    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The variables that point the runtime at this endpoint: `AWS_LAMBDA_RUNTIME_API`, and
    /// `LAMBDA_RUNTIME_DIR`, which is the code (`code_dir` as the instance sees it), since
    /// the runtime is the function's own.
    pub fn env(&self, code_dir: &std::path::Path) -> Vec<(String, String)> {
        vec![
            ("AWS_LAMBDA_RUNTIME_API".into(), self.address()),
            ("LAMBDA_RUNTIME_DIR".into(), code_dir.display().to_string()),
        ]
    }

    /// Waits until the runtime is initialized (its first `/next`) or reports that it
    /// failed to; the caller bounds the wait and watches the process.
    pub async fn initialized(&self) -> Result<(), FunctionError> {
        let mut init = self.init.clone();
        let state = match init.wait_for(|s| !matches!(s, Init::Starting)).await {
            Ok(s) => s.clone(),
            // The server is gone, so the instance is too.
            Err(_) => Init::Starting,
        };
        match state {
            Init::Failed(e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Hands one invocation to the runtime and waits for its answer. `meta` is the call's
    /// context as the shims get it (`request_id`, `deadline_ms`, `traceparent`,
    /// `invoked_function_arn`); the caller bounds the wait with the call's timeout.
    pub async fn call(&self, meta: &[u8], event: &[u8]) -> Reply {
        let meta: Value = serde_json::from_slice(meta).unwrap_or(Value::Null);
        let text = |key: &str| meta[key].as_str().filter(|s| !s.is_empty());
        let request_id = text("request_id").unwrap_or("unknown").to_string();
        let deadline_ms = meta["deadline_ms"].as_i64().unwrap_or(0);
        let mut headers = vec![
            ("lambda-runtime-aws-request-id", request_id.clone()),
            ("lambda-runtime-deadline-ms", deadline_ms.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                text("invoked_function_arn")
                    .unwrap_or(&self.default_arn)
                    .to_string(),
            ),
            (
                "lambda-runtime-trace-id",
                with_lineage(
                    xray_trace_id(text("traceparent")),
                    meta["lineage"].as_u64().unwrap_or(0),
                ),
            ),
        ];
        // Lambda sends these only when the caller gave them (a mobile SDK's context).
        for (key, header) in [
            ("client_context", "lambda-runtime-client-context"),
            ("cognito_identity", "lambda-runtime-cognito-identity"),
        ] {
            if let Some(v) = text(key) {
                headers.push((header, v.to_string()));
            }
        }
        let (answer, answered) = oneshot::channel();
        let call = Call {
            request_id,
            headers,
            event: Bytes::copy_from_slice(event),
            answer,
        };
        if self.calls.send(call).await.is_err() {
            return Reply::Crashed("the Runtime API endpoint of the instance is gone".into());
        }
        match answered.await {
            Ok(reply) => reply,
            // The runtime asked for another event (or went away) without answering.
            Err(_) => Reply::Error(FunctionError::new(
                "Runtime.NoResponse",
                "the runtime asked for its next event without answering this one",
            )),
        }
    }
}

/// The accept loop: refuses sockets of other uids, and connections past the cap.
async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: try again shortly rather than spin.
                tracing::debug!(error = %e, "Runtime API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Unjailed instances run as the server's own user, with no isolation between
        // functions at all, so there is no uid to check them by; any local socket is let in.
        if let (Some(uid), Some(local)) = (shared.uid, local) {
            let owner = socket_uid(peer, local);
            if owner != Some(uid) {
                tracing::warn!(%peer, ?owner, expected = uid, "Runtime API: refused a connection from another uid");
                continue;
            }
        }
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "Runtime API: too many connections; refused one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            // No header timeout: between calls the instance may be frozen with its
            // kept-alive connection idle for as long as it stays warm, and a closed one
            // would fail its next `/next`. The cap above bounds what idle connections
            // cost, and only the instance itself can open them when jailed.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

type Answer = Response<Full<Bytes>>;

async fn handle(shared: &Shared, request: Request<Incoming>) -> Answer {
    let path = request.uri().path().to_string();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such Runtime API path",
        );
    };
    match (request.method(), rest) {
        (&Method::GET, "invocation/next") => next(shared).await,
        (&Method::POST, "init/error") => init_error(shared, request).await,
        (&Method::POST, rest) => match rest
            .strip_prefix("invocation/")
            .and_then(|r| r.rsplit_once('/'))
        {
            Some((id, "response")) => {
                let id = id.to_string();
                answer(shared, &id, request, false).await
            }
            Some((id, "error")) => {
                let id = id.to_string();
                answer(shared, &id, request, true).await
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "no such Runtime API path",
            ),
        },
        _ => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no such Runtime API path or method",
        ),
    }
}

/// `GET /runtime/invocation/next`: the first one ends init; each waits for a call.
async fn next(shared: &Shared) -> Answer {
    shared.init.send_if_modified(|s| {
        let first = matches!(s, Init::Starting);
        if first {
            *s = Init::Ready;
        }
        first
    });
    // One poller takes calls at a time; a second `/next` waits behind it.
    let call = shared.calls.lock().await.recv().await;
    let Some(call) = call else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Runtime.Gone",
            "the instance is stopping",
        );
    };
    // A call still unanswered is dropped here, and fails as answered by none.
    *shared.current.lock().unwrap() = Some((call.request_id, call.answer));
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json");
    for (name, value) in &call.headers {
        response = response.header(*name, value.as_str());
    }
    response.body(Full::new(call.event)).unwrap_or_else(|_| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Runtime.InvalidHeader",
            "an event header is not valid HTTP",
        )
    })
}

/// `POST /runtime/invocation/{id}/response` and `…/error`.
async fn answer(shared: &Shared, id: &str, request: Request<Incoming>, failed: bool) -> Answer {
    if !is_current(shared, id) {
        return invalid_request_id();
    }
    let error_type = request
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            // The call fails as a result past the limit fails on any runtime.
            if let Some(answer) = take_current(shared, id) {
                let _ = answer.send(Reply::Error(FunctionError::new(
                    "Function.ResponseSizeTooLarge",
                    format!(
                        "Response payload size exceeded maximum allowed payload size ({} bytes).",
                        limits::PAYLOAD_BYTES_MAX
                    ),
                )));
            }
            return too_large();
        }
        Err(BodyError::Unread(why)) => {
            return error(StatusCode::BAD_REQUEST, "InvalidRequest", &why);
        }
    };
    // Checked again: the call may have timed out, or been answered on another connection,
    // while the body came.
    let Some(answer) = take_current(shared, id) else {
        return invalid_request_id();
    };
    let reply = if failed {
        Reply::Error(function_error(&body, error_type))
    } else {
        // The invoke API says what the value is: JSON when it parses as JSON.
        let json = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
        Reply::Result {
            content_type: Bytes::from_static(if json { b"json" } else { b"bytes" }),
            body,
        }
    };
    let _ = answer.send(reply);
    accepted()
}

/// `POST /runtime/init/error`: the runtime could not initialize; the instance fails to
/// start with this error, which the call that started it gets.
async fn init_error(shared: &Shared, request: Request<Incoming>) -> Answer {
    if !matches!(*shared.init.borrow(), Init::Starting) {
        return error(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "init/error after the runtime asked for an event",
        );
    }
    let error_type = request
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Unread(why)) => {
            return error(StatusCode::BAD_REQUEST, "InvalidRequest", &why);
        }
    };
    let mut e = function_error(&body, error_type);
    if e.error_type == "Unhandled" {
        e.error_type = "Runtime.InitError".into();
    }
    shared.init.send_replace(Init::Failed(e));
    accepted()
}

fn is_current(shared: &Shared, id: &str) -> bool {
    shared
        .current
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|(current, _)| current == id)
}

fn take_current(shared: &Shared, id: &str) -> Option<oneshot::Sender<Reply>> {
    let mut current = shared.current.lock().unwrap();
    if current.as_ref().is_some_and(|(c, _)| c == id) {
        current.take().map(|(_, answer)| answer)
    } else {
        None
    }
}

enum BodyError {
    TooLarge,
    Unread(String),
}

/// A request's body, at most `PAYLOAD_BYTES_MAX`, sent within the body time bound. A
/// larger body is read to its end and dropped (up to a few times the limit), so the
/// runtime gets its 413 on a connection still open rather than a broken pipe mid-send.
async fn read_body(request: Request<Incoming>) -> Result<Bytes, BodyError> {
    let declared = request
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let drain_max = 4 * limits::PAYLOAD_BYTES_MAX;
    let mut body = request.into_body();
    let within = Duration::from_millis(limits::RUNTIME_API_BODY_READ_MS_MAX);
    let read = async {
        let mut kept = bytes::BytesMut::new();
        let mut seen = 0usize;
        if declared.is_some_and(|n| n > drain_max as u64) {
            return Err(BodyError::TooLarge);
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Unread(format!("reading the body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen += data.len();
            if seen > drain_max {
                return Err(BodyError::TooLarge);
            }
            if seen <= limits::PAYLOAD_BYTES_MAX {
                kept.extend_from_slice(&data);
            }
        }
        if seen > limits::PAYLOAD_BYTES_MAX {
            Err(BodyError::TooLarge)
        } else {
            Ok(kept.freeze())
        }
    };
    match tokio::time::timeout(within, read).await {
        Ok(result) => result,
        Err(_) => Err(BodyError::Unread(format!(
            "the body did not arrive within {} ms",
            limits::RUNTIME_API_BODY_READ_MS_MAX
        ))),
    }
}

/// The error a runtime reported: `{errorMessage, errorType, stackTrace}`, the type from
/// `Lambda-Runtime-Function-Error-Type` when the body has none, as Lambda reads it.
fn function_error(body: &[u8], header: Option<String>) -> FunctionError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error_type = parsed["errorType"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .or(header)
        .unwrap_or_else(|| "Unhandled".into());
    let error_message = match parsed["errorMessage"].as_str() {
        Some(m) => m.to_string(),
        None if parsed.is_null() => String::from_utf8_lossy(body).into_owned(),
        None => String::new(),
    };
    let stack_trace = match &parsed["stackTrace"] {
        Value::Array(lines) => lines
            .iter()
            .map(|l| match l {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Value::String(s) => s.lines().map(str::to_string).collect(),
        _ => Vec::new(),
    };
    FunctionError {
        error_type,
        error_message,
        stack_trace,
    }
}

/// Refuses to start a `provided` function whose program is missing or not executable, as
/// Lambda does (`Runtime.InvalidEntrypoint`). A command naming a program on `PATH` is
/// left to the spawn.
pub(crate) fn check_bootstrap(
    config: &crate::InstanceConfig,
    program: &std::path::Path,
) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    if !program.is_absolute() {
        return Ok(());
    }
    let shown = match program.strip_prefix(&config.code_dir) {
        Ok(rest) => std::path::Path::new(crate::jail::TASK_ROOT).join(rest),
        Err(_) => match config
            .opt_dir
            .as_ref()
            .and_then(|o| program.strip_prefix(o).ok())
        {
            Some(rest) => std::path::Path::new(crate::jail::OPT_ROOT).join(rest),
            None => program.to_path_buf(),
        },
    };
    let problem = match std::fs::metadata(program) {
        Err(_) if config.command.is_empty() => Some(format!(
            "Couldn't find valid bootstrap(s): [{}/bootstrap {}/bootstrap]; a `provided` function's code needs an executable `bootstrap` at its root (or a layer's), or a `command`",
            crate::jail::TASK_ROOT,
            crate::jail::OPT_ROOT
        )),
        Err(e) => Some(format!("{}: {e}", shown.display())),
        Ok(m) if !m.is_file() => Some(format!("{} is not a file", shown.display())),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Some(format!(
            "{} is not executable (chmod +x it before deploying)",
            shown.display()
        )),
        Ok(_) => None,
    };
    match problem {
        Some(message) => Err(StartError::Function(FunctionError::new(
            "Runtime.InvalidEntrypoint",
            message,
        ))),
        None => Ok(()),
    }
}

/// The function's ARN when a call named none, as the shims make it.
pub(crate) fn default_arn(c: &crate::InstanceConfig) -> String {
    let region = c.env.get("AWS_REGION").map_or("us-east-1", String::as_str);
    let account = c
        .env
        .get("NIMBUS_ACCOUNT_ID")
        .map_or("000000000000", String::as_str);
    format!("arn:aws:lambda:{region}:{account}:function:{}", c.function)
}

/// The trace id with the call's lineage (`;Lineage=nimbus:N`) when it continues a chain,
/// as the shims write `_X_AMZN_TRACE_ID`.
pub(crate) fn with_lineage(trace_id: String, lineage: u64) -> String {
    if lineage == 0 {
        trace_id
    } else {
        format!("{trace_id};Lineage=nimbus:{lineage}")
    }
}

/// `Root=1-{8 hex}-{24 hex};Parent={16 hex};Sampled={0|1}` of a W3C traceparent
/// (`00-{32 hex trace}-{16 hex span}-{flags}`), or of a fresh trace without one: the form
/// `Lambda-Runtime-Trace-Id` has, as the Python shim's `_xray_trace_id` makes it.
pub(crate) fn xray_trace_id(traceparent: Option<&str>) -> String {
    let parts: Vec<&str> = traceparent.unwrap_or("").split('-').collect();
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let (trace, span, sampled) = if parts.len() == 4
        && parts[1].len() == 32
        && parts[2].len() == 16
        && hex(parts[1])
        && hex(parts[2])
    {
        let flags = u8::from_str_radix(parts[3], 16).unwrap_or(0);
        (parts[1].to_string(), parts[2].to_string(), flags & 1)
    } else {
        (
            hex::encode(rand::random::<[u8; 16]>()),
            hex::encode(rand::random::<[u8; 8]>()),
            0,
        )
    };
    format!(
        "Root=1-{}-{};Parent={span};Sampled={sampled}",
        &trace[..8],
        &trace[8..]
    )
}

/// The uid owning the TCP socket at `peer` connected to `local`, from `/proc/net/tcp`
/// (its `uid` column, as the reader's user namespace sees it). TCP has no `SO_PEERCRED`;
/// both ends are in this network namespace, since a jailed instance that reaches the
/// loopback shares the host's.
fn socket_uid(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    uid_in_table(&table, peer, local)
}

/// The uid of the row of `table` (`/proc/net/tcp`'s format) whose local address is `peer`
/// and remote address is `local`.
fn uid_in_table(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let (want_local, want_remote) = (proc_addr(peer)?, proc_addr(local)?);
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.len() > 7 && cols[1] == want_local && cols[2] == want_remote)
            .then(|| cols[7].parse().ok())
            .flatten()
    })
}

/// An IPv4 address as `/proc/net/tcp` writes it: the address as a native-endian
/// (little-endian on every Linux machine Nimbus runs on) hex word, a colon, the port.
fn proc_addr(addr: SocketAddr) -> Option<String> {
    match addr {
        SocketAddr::V4(a) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        )),
        SocketAddr::V6(_) => None,
    }
}

fn json_response(status: StatusCode, body: Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, error_type: &str, message: &str) -> Answer {
    json_response(
        status,
        json!({"errorMessage": message, "errorType": error_type}),
    )
}

fn accepted() -> Answer {
    json_response(StatusCode::ACCEPTED, json!({"status": "OK"}))
}

/// As Lambda answers an id that names no call in flight (unknown, or already answered).
fn invalid_request_id() -> Answer {
    error(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        "Invalid request ID",
    )
}

fn too_large() -> Answer {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
        &format!(
            "Exceeded maximum allowed payload size ({} bytes).",
            limits::PAYLOAD_BYTES_MAX
        ),
    )
}

#[cfg(test)]
mod tests;
