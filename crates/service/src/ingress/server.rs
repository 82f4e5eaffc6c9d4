//! The HTTP server: an accept loop over hyper's HTTP/1 connections, in place of
//! `axum::serve`, which has no timer. Without one, a client that sends a request head slowly
//! (or never finishes it) holds its connection forever, and enough of them exhaust the
//! process's file descriptors. Here:
//!
//! - a request head still incomplete `HEADER_READ_TIMEOUT_SECS` after it began (or, on a
//!   kept-alive connection, after the previous answer) closes the connection;
//! - at most `MAX_CONNECTIONS` connections are open at once. When all are taken, the loop
//!   stops accepting and new connections wait in the kernel's backlog until one closes (each
//!   idle one closes within the header timeout), rather than being refused: a delivery that
//!   waits a moment still arrives, one that is refused is lost (GitHub does not retry);
//! - on shutdown, accepting stops, idle connections close, and requests in flight finish
//!   (as `axum::serve`'s graceful shutdown did).
//!
//! Connection errors are counted by kind in `/metrics`; their warnings are rate-limited.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::throttle::WarnThrottle;
use crate::metrics::Metrics;

/// How the server protects itself from slow and numerous clients.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// `HEADER_READ_TIMEOUT_SECS`: longest time a request head may take to arrive.
    pub header_read_timeout: Duration,
    /// `MAX_CONNECTIONS`: connections open at once.
    pub max_connections: usize,
}

/// What the accept loop shares with each connection's task.
#[derive(Clone)]
pub struct ServerContext {
    pub metrics: Arc<Metrics>,
    pub warnings: Arc<WarnThrottle>,
}

/// How long accepting pauses after an error that is not the client's (e.g. no file
/// descriptor left), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `stop`, then waits for the connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    ctx: ServerContext,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let Some(slot) = take_slot(&slots, limits.max_connections, &ctx, &stop).await else {
            break;
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (stream, mid_request) = Watched::new(stream);
        // The peer's address, for routes that answer only on loopback (the status page).
        let service = router.clone().layer(axum::Extension(ConnectInfo(peer)));
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        let ctx = ctx.clone();
        ctx.metrics.connection_opened();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                connection_failed(&e, mid_request.load(Ordering::Relaxed), &ctx);
            }
            ctx.metrics.connection_closed();
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A free connection slot; when there is none, says so (once per interval) and waits for
/// one. `None` when the server stops meanwhile.
async fn take_slot(
    slots: &Arc<Semaphore>,
    max: usize,
    ctx: &ServerContext,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    ctx.metrics.connection_limit_reached();
    if let Some(held_back) = ctx.warnings.admit_now("connection limit") {
        tracing::warn!(
            max_connections = max,
            held_back,
            "connection limit MAX_CONNECTIONS={max} reached; new connections wait until one closes"
        );
    }
    tokio::select! {
        slot = slots.clone().acquire_owned() => slot.ok(),
        () = stop.cancelled() => None,
    }
}

/// A failed `accept`: the client's own problem is ignored; anything else (no file
/// descriptor left) is logged and accepting pauses briefly.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "could not accept a connection; pausing for a second");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// Counts a connection that ended in an error, and warns (rate-limited) when the client
/// was refused: its request head was too slow or not HTTP. A connection that timed out
/// with no request begun was merely idle (a client or proxy keeping it for later): closing
/// it is routine.
fn connection_failed(e: &hyper::Error, mid_request: bool, ctx: &ServerContext) {
    let kind = match (e.is_timeout(), mid_request) {
        (true, true) => "header timeout",
        (true, false) => "idle timeout",
        _ if e.is_parse() || e.is_parse_too_large() => "malformed request",
        _ => "aborted",
    };
    ctx.metrics.connection_error(kind);
    if matches!(kind, "aborted" | "idle timeout") {
        tracing::debug!(error = %e, "connection ended early");
    } else if let Some(held_back) = ctx.warnings.admit_now(kind) {
        tracing::warn!(reason = kind, error = %e, held_back, "connection refused");
    }
}

/// A connection's stream that notes whether bytes of a request arrived since the last
/// answer was written, so a header timeout can tell a slow request head from an idle
/// connection.
struct Watched {
    inner: TcpStream,
    mid_request: Arc<AtomicBool>,
}

impl Watched {
    fn new(inner: TcpStream) -> (Watched, Arc<AtomicBool>) {
        let mid_request = Arc::new(AtomicBool::new(false));
        (
            Watched {
                inner,
                mid_request: mid_request.clone(),
            },
            mid_request,
        )
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.mid_request.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.answered(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, data);
        self.answered(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Watched {
    /// An answer went out: whatever is read next begins a new request.
    fn answered(&self, polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.mid_request.store(false, Ordering::Relaxed);
        }
    }
}
