//! The S3 listener's accept loop, and the collector of bytes nothing refers to.
//!
//! The S3 API has a listener of its own rather than the control API's (`api::listener`):
//! its bodies are streamed to disk, not buffered, so that listener's node-wide budget of
//! buffered bytes (which reserves a request's declared length, and would refuse a 5 GiB
//! PUT) does not apply; the connection cap and the header timeout do, here.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The listener's bounds.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Connections open at once; past it new ones are closed at once.
    pub connections_max: usize,
    /// Time for a request's header to arrive, and for the next on a kept-alive connection.
    pub header_read_timeout_ms: u64,
}

/// Serves `service` on `listener` until `shutdown` resolves; connections in progress then
/// finish on their own (the process's exit ends them).
pub async fn serve(
    listener: TcpListener,
    service: s3s::service::S3Service,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(config.connections_max));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_read_timeout_ms))
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let (socket, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait a moment rather than spin.
                tracing::warn!("S3 listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                "S3 listener: {} connections open, its limit; one refused",
                config.connections_max
            );
            continue;
        };
        let _ = socket.set_nodelay(true);
        let service = service.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                // An answer given before the body was read (a refused precondition, a bad
                // signature) leaves the body's bytes, or a client still deciding whether to
                // send them after `Expect: 100-continue`, on the connection: what comes next on
                // it cannot be trusted to start at a request. Such a connection is closed
                // after the answer, as other servers do; the client opens another.
                let body = req.headers().contains_key(hyper::header::TRANSFER_ENCODING)
                    || req
                        .headers()
                        .get(hyper::header::CONTENT_LENGTH)
                        .is_some_and(|v| v.as_bytes() != b"0");
                let answer = hyper::service::Service::call(&service, req);
                async move {
                    let mut res = answer.await?;
                    if body && (res.status().is_client_error() || res.status().is_server_error()) {
                        res.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                    }
                    Ok::<_, s3s::HttpError>(res)
                }
            });
        let conn = http.serve_connection(TokioIo::new(socket), service);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
}

/// Removes object bytes that no object or part refers to, older than `grace_ms`: a blob
/// written by an upload that failed or crashed before its commit, or one whose removal was
/// interrupted. Answers how many went.
pub async fn collect_garbage(
    meta: &dyn store::ObjectMeta,
    files: &dyn store::ObjectBytes,
    grace_ms: i64,
) -> Result<u64, store::ObjectError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    files.collect(meta, now_ms, grace_ms).await
}
