//! HTTP functions (custom runtimes, Node HTTP handlers): the request is proxied to the
//! instance's own server on its loopback port, over a kept-alive connection that lives with
//! the instance, and the response streams back as it comes.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sandbox::Lease;

use super::{CallMeta, Routed, Timing, function_failed, lease_for, record};
use crate::ApiError;
use crate::platform::Platform;

type Sender = SendRequest<Full<Bytes>>;

/// Hop-by-hop headers: they describe one connection and are not forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn forwardable(name: &HeaderName) -> bool {
    !HOP_BY_HOP.contains(&name.as_str())
}

pub(crate) async fn serve(
    platform: &Arc<Platform>,
    r: Routed,
) -> Result<(Response<Body>, Timing), ApiError> {
    let mut lease = match lease_for(platform, &r).await? {
        Ok(lease) => lease,
        Err(failed) => return Ok(failed),
    };
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + lease.timeout();
    let call = lease.begin_external();
    let request = upstream_request(&r)?;
    let reused = lease.take_attachment::<Sender>();
    let exchange = async {
        let mut sender = match reused {
            Some(s) if !s.is_closed() => s,
            _ => connect(lease.port().expect("an HTTP instance has a port")).await?,
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((sender, response))
    };
    let result = tokio::time::timeout_at(deadline, exchange).await;
    let handler_ms = started.elapsed().as_secs_f64() * 1000.0;
    let timing = Timing {
        routing_ms: r.routed_ms,
        cold_start: lease.cold_start,
        timings: sandbox::Timings {
            handler_ms,
            ..lease.timings
        },
    };
    let (sender, upstream) = match result {
        Ok(Ok(ok)) => ok,
        failed => {
            let error = match failed {
                Err(_) => lease.timed_out(),
                Ok(Err(e)) => {
                    let why = format!("the function's server did not answer: {e}");
                    let report = if lease.is_dead() {
                        lease.crash_report(&why).await
                    } else {
                        why
                    };
                    sandbox::FunctionError::new("Runtime.ExitError", report)
                }
                Ok(Ok(_)) => unreachable!(),
            };
            let logs = lease.end_external(call);
            // Whatever state its server is in, this instance is not trusted again.
            lease.discard("its HTTP server failed");
            let response = function_failed(&error, &r.request_id);
            record(
                platform,
                r.request_id,
                r.function,
                CallMeta::of(&lease, handler_ms),
                Some(error),
                logs,
                r.trace.clone(),
            );
            return Ok((response, timing));
        }
    };
    let (parts, body) = upstream.into_parts();
    let mut response = Response::new(Body::empty());
    *response.status_mut() = parts.status;
    for (name, value) in &parts.headers {
        if forwardable(name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    super::version_header(&mut response, lease.version());
    super::traceparent_header(&mut response, &r.trace);
    let stream = Proxied {
        body: Some(body),
        sender: Some(sender),
        lease: Some(lease),
        call,
        platform: platform.clone(),
        request_id: r.request_id,
        function: r.function,
        trace: r.trace,
        deadline,
        started,
    };
    *response.body_mut() = Body::from_stream(futures_util::stream::unfold(stream, Proxied::next));
    Ok((response, timing))
}

fn upstream_request(r: &Routed) -> Result<Request<Full<Bytes>>, ApiError> {
    let uri = if r.query.is_empty() {
        r.path.clone()
    } else {
        format!("{}?{}", r.path, r.query)
    };
    let mut request = Request::builder()
        .method(r.method.clone())
        .uri(uri)
        .body(Full::new(r.body.clone()))
        .map_err(|e| ApiError::invalid(format!("the request cannot be forwarded: {e}")))?;
    let headers: &mut HeaderMap = request.headers_mut();
    for (name, value) in &r.headers {
        if forwardable(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(peer) = r.peer
        && let Ok(v) = HeaderValue::from_str(&peer.ip().to_string())
    {
        headers.append("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    // The app sees the call's own span, a child of the caller's.
    if let Ok(v) = HeaderValue::from_str(&r.trace.traceparent) {
        headers.insert(crate::trace::TRACEPARENT, v);
    }
    if let Ok(v) = HeaderValue::from_str(&r.request_id) {
        headers.insert(crate::routes::headers::REQUEST_ID, v);
    }
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, HeaderValue::from_static("localhost"));
    }
    Ok(request)
}

async fn connect(port: u16) -> Result<Sender, String> {
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

/// The body of a proxied response; it holds the lease until the upstream body ends.
struct Proxied {
    /// `None` only once handed to the background drain.
    body: Option<hyper::body::Incoming>,
    /// The connection, kept with the instance for the next call once this body is read.
    sender: Option<Sender>,
    lease: Option<Lease>,
    call: u32,
    platform: Arc<Platform>,
    request_id: String,
    function: String,
    trace: crate::trace::Span,
    deadline: tokio::time::Instant,
    started: Instant,
}

impl Proxied {
    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, Proxied)> {
        self.lease.as_ref()?;
        loop {
            let body = self.body.as_mut()?;
            let frame = tokio::time::timeout_at(self.deadline, body.frame()).await;
            let failure = match frame {
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        // The server may stop polling once it sent the announced length;
                        // finish now so the instance is returned, not found busy.
                        if self
                            .body
                            .as_ref()
                            .is_some_and(hyper::body::Body::is_end_stream)
                        {
                            self.finish(None, false).await;
                        }
                        return Some((Ok(data), self));
                    }
                    Err(_) => continue, // trailers are not forwarded
                },
                Ok(None) => {
                    self.finish(None, false).await;
                    return None;
                }
                Ok(Some(Err(e))) => {
                    sandbox::FunctionError::new("Runtime.ResponseAborted", e.to_string())
                }
                Err(_) => self.lease.as_ref().expect("checked above").timed_out(),
            };
            let message = format!("{}: {}", failure.error_type, failure.error_message);
            self.finish(Some(failure), true).await;
            return Some((Err(std::io::Error::other(message)), self));
        }
    }

    async fn drain(self) {
        let mut rest = self;
        while let Some((_, next)) = rest.next().await {
            rest = next;
        }
    }

    async fn finish(&mut self, error: Option<sandbox::FunctionError>, discard: bool) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        if !discard {
            lease.barrier().await;
        }
        let logs = lease.end_external(self.call);
        if let Some(sender) = self.sender.take()
            && !discard
        {
            lease.put_attachment(sender);
        }
        let meta = CallMeta::of(&lease, self.started.elapsed().as_secs_f64() * 1000.0);
        if discard {
            lease.discard("its HTTP response broke off");
        }
        record(
            &self.platform,
            self.request_id.clone(),
            self.function.clone(),
            meta,
            error,
            logs,
            std::mem::take(&mut self.trace),
        );
    }
}

impl Drop for Proxied {
    /// The client stopped reading before the end: read the rest in the background (bounded
    /// by the deadline) so the connection and the instance can be reused.
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let rest = Proxied {
            body: self.body.take(),
            sender: self.sender.take(),
            lease: Some(lease),
            call: self.call,
            platform: self.platform.clone(),
            request_id: std::mem::take(&mut self.request_id),
            function: std::mem::take(&mut self.function),
            trace: std::mem::take(&mut self.trace),
            deadline: self.deadline,
            started: self.started,
        };
        tokio::spawn(rest.drain());
    }
}
