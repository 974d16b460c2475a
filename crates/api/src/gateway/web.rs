//! WSGI and ASGI functions: the request goes over the instance channel as one frame, the
//! response comes back as a head and a stream of body chunks, passed on as they arrive.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Response, StatusCode};
use bytes::Bytes;
use platform::{Platform, Session, now_ms};
use sandbox::web::{WebHead, latin1};
use sandbox::{StreamEvent, WebReply};
use serde_json::json;
use tokio::sync::mpsc;

use super::{Routed, Timing, function_failed};
use crate::ApiError;

pub(crate) async fn serve(
    platform: &Arc<Platform>,
    r: Routed,
) -> Result<(Response<Body>, Timing), ApiError> {
    let session = match super::begin(platform, &r).await? {
        Ok(session) => session,
        Err(failed) => return Ok(failed),
    };
    let lease = session.lease();
    let host = r
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let (server_name, server_port) = match host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>().unwrap_or(80)),
        _ => (host, 80),
    };
    // The app sees the call's own span as `traceparent`, a child of the caller's.
    let headers: Vec<(&str, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| k.as_str() != crate::trace::TRACEPARENT)
        .map(|(k, v)| {
            (
                k.as_str(),
                v.as_bytes().iter().map(|&b| b as char).collect(),
            )
        })
        .chain([(crate::trace::TRACEPARENT, r.trace.traceparent.clone())])
        .collect();
    let meta = serde_json::to_vec(&json!({
        "request_id": r.request_id,
        "deadline_ms": now_ms() + lease.timeout().as_millis() as i64,
        "method": r.method.as_str(),
        "path": r.path,
        "query": r.query,
        "headers": headers,
        "remote_addr": r.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
        "remote_port": r.peer.map(|p| p.port()).unwrap_or(0),
        "server_name": server_name,
        "server_port": server_port,
        "scheme": "http",
    }))
    .expect("request meta serializes");
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + lease.timeout();
    let reply = lease.web_request(&meta, &r.body).await;
    let handler_ms = started.elapsed().as_secs_f64() * 1000.0;
    let timing = Timing {
        routing_ms: r.routed_ms,
        cold_start: session.cold_start(),
        timings: sandbox::Timings {
            handler_ms,
            ..session.timings()
        },
    };
    let (head, body) = match reply {
        WebReply::Head { head, body } => (head, body),
        WebReply::Error(e, logs) => {
            let response = function_failed(&e, &r.request_id);
            session.finish(Some(e), logs);
            return Ok((response, timing));
        }
    };
    let head: WebHead = match serde_json::from_slice(&head) {
        Ok(h) => h,
        Err(e) => {
            let error = sandbox::FunctionError::new(
                "Runtime.InvalidResponse",
                format!("unreadable response head: {e}"),
            );
            let response = function_failed(&error, &r.request_id);
            session.finish(Some(error), Default::default());
            return Ok((response, timing));
        }
    };
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in &head.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_bytes(&latin1(value)),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    super::version_header(&mut response, session.version());
    super::traceparent_header(&mut response, &r.trace);
    let stream = Streamed {
        rx: body,
        session: Some(session),
        deadline,
    };
    *response.body_mut() = Body::from_stream(futures_util::stream::unfold(stream, Streamed::next));
    Ok((response, timing))
}

/// The body of a streamed response. It holds the lease until the app has sent its last
/// chunk, so the instance is not reused while it still writes.
struct Streamed {
    rx: mpsc::Receiver<StreamEvent>,
    /// `None` once finished.
    session: Option<Session>,
    deadline: tokio::time::Instant,
}

impl Streamed {
    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, Streamed)> {
        let lease = self.session.as_ref()?.lease();
        let event = tokio::time::timeout_at(self.deadline, self.rx.recv()).await;
        let failure = match event {
            Ok(Some(StreamEvent::Chunk(bytes))) => return Some((Ok(bytes), self)),
            Ok(Some(StreamEvent::End(logs))) => {
                lease.finish_stream();
                self.finish(None, logs);
                return None;
            }
            Ok(Some(StreamEvent::Abort(why))) => {
                sandbox::FunctionError::new("Runtime.ResponseAborted", why)
            }
            Ok(None) => sandbox::FunctionError::new(
                "Runtime.ExitError",
                "the instance went away mid-response",
            ),
            Err(_) => lease.timed_out(),
        };
        let message = format!("{}: {}", failure.error_type, failure.error_message);
        self.finish(Some(failure), Default::default());
        // An error mid-body can only be signalled by cutting the response off.
        Some((Err(std::io::Error::other(message)), self))
    }

    /// Reads the rest of the response without a client, so the instance finishes its
    /// call and goes back to the pool warm.
    async fn drain(self) {
        let mut rest = self;
        while let Some((_, next)) = rest.next().await {
            rest = next;
        }
    }

    fn finish(&mut self, error: Option<sandbox::FunctionError>, logs: sandbox::Logs) {
        if let Some(session) = self.session.take() {
            session.finish(error, logs);
        }
    }
}

impl Drop for Streamed {
    /// The client stopped reading: it went away, or hyper had all the bytes the response's
    /// content-length announced before the app's end frame came. Either way the app is
    /// left to finish in the background (bounded by the deadline) instead of being killed.
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let rest = Streamed {
            rx: std::mem::replace(&mut self.rx, mpsc::channel(1).1),
            session: Some(session),
            deadline: self.deadline,
        };
        tokio::spawn(rest.drain());
    }
}
