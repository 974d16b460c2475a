//! lapin's runtime on the server's tokio: lapin reaches its executor, timers and sockets
//! through `async_rs`, whose own tokio binding would add a crate (`async-compat`) the
//! workspace does not otherwise need, so this small kit does the same with tokio directly.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_rs::traits::{Executor, Reactor, RuntimeKit};
use async_rs::util::{Task, TaskImpl};
use futures_util::Stream;
use futures_util::io::{AsyncRead, AsyncWrite};
use tokio::io::ReadBuf;
use tokio::runtime::Handle;

/// The tokio runtime the server runs on, as lapin's `RuntimeKit`.
#[derive(Clone, Debug)]
pub(crate) struct TokioKit {
    handle: Handle,
}

impl TokioKit {
    /// The kit of the runtime of the calling task.
    pub(crate) fn current() -> async_rs::Runtime<TokioKit> {
        async_rs::Runtime::new(TokioKit {
            handle: Handle::current(),
        })
    }
}

impl RuntimeKit for TokioKit {}

impl Executor for TokioKit {
    type Task<T: Send + 'static> = Join<T>;

    // lapin's I/O loop runs on a thread of its own and drives its futures with this.
    fn block_on<T, F: Future<Output = T>>(&self, f: F) -> T {
        self.handle.block_on(f)
    }

    fn spawn<T: Send + 'static, F: Future<Output = T> + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Join<T>> {
        Join(Some(self.handle.spawn(f))).into()
    }

    fn spawn_blocking<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
        &self,
        f: F,
    ) -> Task<Join<T>> {
        Join(Some(self.handle.spawn_blocking(f))).into()
    }
}

impl Reactor for TokioKit {
    type TcpStream = Tcp;
    type Sleep = tokio::time::Sleep;

    // lapin connects through `tcp_connect_addr`; registering a foreign socket is never
    // asked of this kit.
    fn register<H: Read + Write + AsFd + AsRawFd + Send + 'static>(
        &self,
        _socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        Err::<Tcp, _>(io::Error::other(
            "registering a socket is not supported by this runtime",
        ))
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        let _in = self.handle.enter();
        tokio::time::sleep(dur)
    }

    fn interval(&self, dur: Duration) -> impl Stream<Item = Instant> + Send + 'static {
        let _in = self.handle.enter();
        let interval = tokio::time::interval(dur);
        futures_util::stream::unfold(interval, |mut i| async move {
            let at = i.tick().await;
            Some((at.into_std(), i))
        })
    }

    fn tcp_connect_addr(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::TcpStream>> + Send + 'static {
        // Spawned, so that the connect runs within the runtime whoever polls it (lapin's
        // I/O thread is no tokio thread).
        let connecting = self.handle.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Tcp(stream))
        });
        async move { connecting.await.map_err(io::Error::other)? }
    }
}

/// A spawned task, as `async_rs` awaits it.
#[derive(Debug)]
pub(crate) struct Join<T>(Option<tokio::task::JoinHandle<T>>);

#[async_trait::async_trait]
impl<T: Send + 'static> TaskImpl for Join<T> {
    async fn cancel(&mut self) -> Option<T> {
        let task = self.0.take()?;
        task.abort();
        task.await.ok()
    }
}

impl<T: Send + 'static> Future for Join<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(task) = self.0.as_mut() else {
            // As `async_rs` does: a task has one output, taken once.
            panic!("a task was polled after it completed or was canceled");
        };
        let done = match Pin::new(task).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(done) => done,
        };
        self.0 = None;
        match done {
            Ok(v) => Poll::Ready(v),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a task did not complete: {e}"),
        }
    }
}

/// A tokio TCP stream with the `futures` I/O traits lapin reads and writes through. Its
/// readiness is tokio's reactor's, so it may be polled from any thread (lapin's I/O loop).
#[derive(Debug)]
pub(crate) struct Tcp(tokio::net::TcpStream);

impl AsyncRead for Tcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut read = ReadBuf::new(buf);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, &mut read) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
    }
}
