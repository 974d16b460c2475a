//! The HTTP listener every front door is served on, with a bound on everything a client
//! can hold: connections, the time to send a header, the rate of a body, and the request
//! bytes buffered in memory across the node.
//!
//! - **Connections** are capped below the process's file limit. At the cap, the connection
//!   that has been idle longest (no request in flight: a kept-alive connection between
//!   requests, or one whose header is still arriving) is closed to admit the new one, as
//!   nginx reuses idle connections; so a flood of idle sockets cannot lock a client out.
//!   Only when every connection is busy is a new one refused.
//! - **Headers** must arrive within `header_read_timeout_ms`, which hyper also applies to
//!   the wait for the next request on a kept-alive connection (the idle timeout): a client
//!   trickling a header line every few seconds is cut off.
//! - **Bodies** must keep coming: no gap longer than `body_grace_ms` between chunks, and
//!   after that grace a minimum average rate (`body_min_rate_bytes_per_s`), so a slow but
//!   steady upload passes while a stalled one, or a byte every few seconds, is cut off.
//! - **Buffered bytes** come from one node-wide budget: a request's declared length is
//!   reserved before its body is read (refused with 503 when the budget is short), and the
//!   chunks of a body without a length as they arrive; the reservation is released when
//!   the response has been sent. So stalled large uploads cannot pile up in memory.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use model::ErrorCode;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, watch};

use crate::ApiError;

/// The listener's bounds.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Connections open at once; keep it below the process's file limit, which the
    /// instances' pipes and sockets share.
    pub connections_max: usize,
    /// Time for a request's header to arrive, and for the next request on an idle
    /// kept-alive connection.
    pub header_read_timeout_ms: u64,
    /// The slowest body accepted once `body_grace_ms` has passed.
    pub body_min_rate_bytes_per_s: u64,
    /// How long a body may take before the minimum rate applies.
    pub body_grace_ms: u64,
    /// Request body bytes buffered at once across the node.
    pub body_budget_bytes: u64,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            connections_max: 4_096,
            header_read_timeout_ms: 15_000,
            body_min_rate_bytes_per_s: 1_024,
            body_grace_ms: 10_000,
            body_budget_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The budget's unit: permits are KiB, so a `Semaphore` can count hundreds of GB.
const BUDGET_UNIT_BYTES: u64 = 1024;

fn units(bytes: u64) -> u32 {
    bytes.div_ceil(BUDGET_UNIT_BYTES).min(u32::MAX as u64) as u32
}

/// One open connection, as the registry sees it.
struct Conn {
    /// Requests whose response has not been sent yet.
    in_flight: AtomicUsize,
    /// When it last finished a request or was opened (ms since the listener started):
    /// the longest idle is closed first.
    last_active_ms: AtomicU64,
    /// Closes the connection at once (its task drops it).
    close: Notify,
}

/// What every connection of a listener shares.
struct Shared {
    config: ListenerConfig,
    conns: Mutex<std::collections::HashMap<u64, Arc<Conn>>>,
    budget: Arc<Semaphore>,
    started: Instant,
    /// Connections closed to admit others, and connections refused: for the logs.
    evicted: AtomicU64,
    refused: AtomicU64,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Makes room for one more connection: closes the longest-idle one when at the cap.
    /// False when every connection is busy.
    fn admit(&self) -> bool {
        let conns = self.conns.lock().unwrap();
        if conns.len() < self.config.connections_max {
            return true;
        }
        let victim = conns
            .values()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|c| c.last_active_ms.load(Ordering::Relaxed));
        match victim {
            Some(c) => {
                c.close.notify_one();
                self.evicted.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets every
/// connection finish its request (idle ones close at once), and returns when all have.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ListenerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        budget: Arc::new(Semaphore::new(
            units(config.body_budget_bytes).min(Semaphore::MAX_PERMITS as u32) as usize,
        )),
        config,
        conns: Mutex::new(Default::default()),
        started: Instant::now(),
        evicted: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let (stopping_tx, stopping) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        // Reap finished connection tasks as we go, so the set stays the live ones.
        while tasks.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors (or a transient network error): free an idle
                // connection and retry shortly, instead of spinning on accept.
                tracing::warn!(error = %e, "accepting a connection failed");
                shared.admit();
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if !shared.admit() {
            // Every connection is busy: this one is closed unanswered.
            drop(tcp);
            continue;
        }
        // Small request/response pairs must not wait on Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        next_id += 1;
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(shared.now_ms()),
            close: Notify::new(),
        });
        shared.conns.lock().unwrap().insert(next_id, conn.clone());
        tasks.spawn(connection(
            shared.clone(),
            next_id,
            conn,
            tcp,
            peer,
            app.clone(),
            stopping.clone(),
        ));
    }
    let _ = stopping_tx.send(true);
    drop(listener);
    while tasks.join_next().await.is_some() {}
    let (evicted, refused) = (
        shared.evicted.load(Ordering::Relaxed),
        shared.refused.load(Ordering::Relaxed),
    );
    if evicted + refused > 0 {
        tracing::info!(
            evicted,
            refused,
            "connections closed at the cap (idle ones evicted, or refused when all were busy)"
        );
    }
    Ok(())
}

/// Serves one connection until it ends, is evicted, or the listener stops.
async fn connection(
    shared: Arc<Shared>,
    id: u64,
    conn: Arc<Conn>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    mut stopping: watch::Receiver<bool>,
) {
    let service = {
        let (shared, conn) = (shared.clone(), conn.clone());
        hyper::service::service_fn(move |request| {
            handle(shared.clone(), conn.clone(), peer, app.clone(), request)
        })
    };
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(shared.config.header_read_timeout_ms))
        .serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(served);
    let mut draining = false;
    loop {
        tokio::select! {
            _ = served.as_mut() => break,
            // Evicted to admit another connection: it had no request in flight.
            _ = conn.close.notified() => break,
            changed = stopping.changed(), if !draining => {
                draining = true;
                if changed.is_ok() {
                    served.as_mut().graceful_shutdown();
                }
            }
        }
    }
    shared.conns.lock().unwrap().remove(&id);
}

/// One request: reserves its declared length from the budget, meters its body, and keeps
/// the connection busy until the response has been sent.
async fn handle(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    peer: SocketAddr,
    app: Router,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<axum::body::Body>, Infallible> {
    let busy = Busy::new(shared.clone(), conn);
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared
        && length > 0
        && !busy.reserve(length)
    {
        let refused = ApiError::new(
            ErrorCode::CapacityExhausted,
            "the server is buffering as many request bytes as it may; retry shortly",
        );
        let mut response = refused.into_response();
        response
            .headers_mut()
            .insert(hyper::header::RETRY_AFTER, 1.into());
        return Ok(response);
    }
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(axum::extract::ConnectInfo(peer));
    let metered = Metered {
        inner: body,
        reserved: declared.is_some(),
        busy: busy.clone(),
        received_bytes: 0,
        started: tokio::time::Instant::now(),
        last_chunk: tokio::time::Instant::now(),
        deadline: None,
    };
    let request = hyper::Request::from_parts(parts, axum::body::Body::new(metered));
    let response = tower::ServiceExt::oneshot(app, request)
        .await
        .unwrap_or_else(|never| match never {});
    Ok(response.map(|body| {
        axum::body::Body::new(Sent {
            inner: body,
            busy: Some(busy),
        })
    }))
}

/// Marks a connection busy for the life of one request and holds the request's share of
/// the byte budget; both are given back when the last clone goes (the response sent).
#[derive(Clone)]
struct Busy(Arc<BusyInner>);

struct BusyInner {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    /// Budget units held.
    held: AtomicU64,
}

impl Busy {
    fn new(shared: Arc<Shared>, conn: Arc<Conn>) -> Busy {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::new(BusyInner {
            shared,
            conn,
            held: AtomicU64::new(0),
        }))
    }

    /// Takes `bytes` from the node's budget, if it has them.
    fn reserve(&self, bytes: u64) -> bool {
        let n = units(bytes);
        match self.0.shared.budget.try_acquire_many(n) {
            Ok(permit) => {
                permit.forget();
                self.0.held.fetch_add(n as u64, Ordering::AcqRel);
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for BusyInner {
    fn drop(&mut self) {
        let held = *self.held.get_mut();
        if held > 0 {
            self.shared.budget.add_permits(held as usize);
        }
        self.conn
            .last_active_ms
            .store(self.shared.now_ms(), Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body arrived slower than {0} bytes/s; send it faster or in one piece")]
    TooSlow(u64),
    #[error("the server is buffering as many request bytes as it may; retry shortly")]
    BudgetExhausted,
    #[error("reading the request body: {0}")]
    Read(#[from] hyper::Error),
}

impl BodyError {
    /// The API error of a body that failed with `e` (a source of an axum body error).
    pub fn api_error(e: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
        let mut source = Some(e);
        while let Some(s) = source {
            if let Some(b) = s.downcast_ref::<BodyError>() {
                return Some(match b {
                    BodyError::TooSlow(_) => {
                        ApiError::new(ErrorCode::RequestTimeout, b.to_string())
                    }
                    BodyError::BudgetExhausted => {
                        ApiError::new(ErrorCode::CapacityExhausted, b.to_string())
                    }
                    BodyError::Read(_) => ApiError::invalid(b.to_string()),
                });
            }
            source = s.source();
        }
        None
    }
}

/// A request body with a minimum rate, drawing on the budget for what it buffers.
struct Metered {
    inner: Incoming,
    /// Whether its declared length was reserved already.
    reserved: bool,
    busy: Busy,
    received_bytes: u64,
    started: tokio::time::Instant,
    /// When the last chunk came (or the body began).
    last_chunk: tokio::time::Instant,
    /// When the next chunk must have come by, moved out by every byte received.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Metered {
    /// The time by which the next chunk must have come: within `body_grace_ms` of the
    /// last one (a stalled body is cut off however much it sent before), and, once the
    /// grace has passed, at the minimum average rate since the body began.
    fn next_deadline(&self) -> tokio::time::Instant {
        let config = &self.busy.0.shared.config;
        let rate = config.body_min_rate_bytes_per_s.max(1);
        let grace = Duration::from_millis(config.body_grace_ms);
        let by_rate = self.started
            + grace
            + Duration::from_millis(self.received_bytes.saturating_mul(1000) / rate);
        by_rate.min(self.last_chunk + grace)
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.received_bytes += n;
                    this.last_chunk = tokio::time::Instant::now();
                    if !this.reserved && !this.busy.reserve(n) {
                        return Poll::Ready(Some(Err(BodyError::BudgetExhausted)));
                    }
                    let next = this.next_deadline();
                    if let Some(d) = this.deadline.as_mut() {
                        d.as_mut().reset(next);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Read(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let next = this.next_deadline();
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::TooSlow(
                        this.busy.0.shared.config.body_min_rate_bytes_per_s,
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request's connection busy until it has been sent.
struct Sent {
    inner: axum::body::Body,
    busy: Option<Busy>,
}

impl Body for Sent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
