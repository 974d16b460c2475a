//! HTTP functions (custom runtimes, Node HTTP handlers): the request is proxied to the
//! instance's own server on its loopback port, over a kept-alive connection that lives with
//! the instance, and the response streams back as it comes.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use platform::{Platform, Session};

use super::{Routed, Timing, function_failed};
use crate::ApiError;

type Sender = sandbox::web::HttpConnection;

fn forwardable(name: &HeaderName) -> bool {
    !sandbox::web::HOP_BY_HOP.contains(&name.as_str())
}

pub(crate) async fn serve(
    platform: &Arc<Platform>,
    r: Routed,
) -> Result<(Response<Body>, Timing), ApiError> {
    let session = match super::begin(platform, &r).await? {
        Ok(session) => session,
        Err(failed) => return Ok(failed),
    };
    let lease = session.lease();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + lease.timeout();
    let call = lease.begin_external();
    let request = upstream_request(&r)?;
    let exchange = async {
        let mut sender = lease.connection().await?;
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
        cold_start: session.cold_start(),
        timings: sandbox::Timings {
            handler_ms,
            ..session.timings()
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
            let response = function_failed(&error, &r.request_id);
            // Whatever state its server is in, this instance is not trusted again.
            session.discard("its HTTP server failed", error, logs);
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
    super::version_header(&mut response, session.version());
    super::traceparent_header(&mut response, &r.trace);
    let stream = Proxied {
        body: Some(body),
        sender: Some(sender),
        session: Some(session),
        call,
        deadline,
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
    // Headers the client named in `Connection` are hop-by-hop too (RFC 9110 7.6.1).
    let named: Vec<String> = r
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in &r.headers {
        if forwardable(name) && !named.iter().any(|n| n == name.as_str()) {
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

/// The body of a proxied response; it holds the lease until the upstream body ends.
struct Proxied {
    /// `None` only once handed to the background drain.
    body: Option<hyper::body::Incoming>,
    /// The connection, kept with the instance for the next call once this body is read.
    sender: Option<Sender>,
    /// `None` once finished.
    session: Option<Session>,
    call: u32,
    deadline: tokio::time::Instant,
}

impl Proxied {
    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, Proxied)> {
        self.session.as_ref()?;
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
                            self.finish(None).await;
                        }
                        return Some((Ok(data), self));
                    }
                    Err(_) => continue, // trailers are not forwarded
                },
                Ok(None) => {
                    self.finish(None).await;
                    return None;
                }
                Ok(Some(Err(e))) => {
                    sandbox::FunctionError::new("Runtime.ResponseAborted", e.to_string())
                }
                Err(_) => self
                    .session
                    .as_ref()
                    .expect("checked above")
                    .lease()
                    .timed_out(),
            };
            let message = format!("{}: {}", failure.error_type, failure.error_message);
            self.finish(Some(failure)).await;
            return Some((Err(std::io::Error::other(message)), self));
        }
    }

    async fn drain(self) {
        let mut rest = self;
        while let Some((_, next)) = rest.next().await {
            rest = next;
        }
    }

    /// Ends the call: a failure (`error`) discards the instance, whose connection is in an
    /// unknown state; a success keeps the connection with the instance for the next call.
    async fn finish(&mut self, error: Option<sandbox::FunctionError>) {
        let Some(session) = self.session.take() else {
            return;
        };
        let lease = session.lease();
        if error.is_none() {
            lease.barrier().await;
        }
        let logs = lease.end_external(self.call);
        match error {
            None => {
                if let Some(sender) = self.sender.take() {
                    lease.put_attachment(sender);
                }
                session.finish(None, logs);
            }
            Some(error) => {
                session.discard("its HTTP response broke off", error, logs);
            }
        }
    }
}

impl Drop for Proxied {
    /// The client stopped reading before the end: read the rest in the background (bounded
    /// by the deadline) so the connection and the instance can be reused.
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let rest = Proxied {
            body: self.body.take(),
            sender: self.sender.take(),
            session: Some(session),
            call: self.call,
            deadline: self.deadline,
        };
        tokio::spawn(rest.drain());
    }
}
