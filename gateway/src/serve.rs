//! Serving one accepted connection with the gateway's protections: header size and count
//! limits (431), a header-read timeout, an idle timeout, HTTP/2 stream and reset-flood limits,
//! bounded flow-control windows, a per-listener connection limit, and graceful drain (in-flight
//! requests finish; HTTP/2 peers get GOAWAY and go elsewhere).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::body::Body;
use crate::config::Limits;

/// Tells every listener and connection to drain. Cheap to clone.
#[derive(Clone)]
pub struct Drain(watch::Receiver<bool>);

impl Drain {
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once draining starts (or the sender is gone).
    pub async fn signaled(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|d| *d).await;
    }
}

/// Open connections of one listener, bounded.
#[derive(Clone)]
pub struct ConnLimit {
    sem: Arc<Semaphore>,
    max: usize,
}

impl ConnLimit {
    pub fn new(max: usize) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A permit, or `None` when the listener is full (the caller closes the connection).
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().try_acquire_owned().ok()
    }

    pub fn open(&self) -> usize {
        self.max - self.sem.available_permits()
    }

    /// Waits until every connection closed or `deadline` passed.
    pub async fn drained(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        while self.open() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether bytes moved on a connection since the idle watch last looked. Marking it is a
/// relaxed flag store (no clock read on the I/O path); the watch samples it every quarter of the
/// timeout, so an idle connection is noticed between one and one and a quarter timeouts after
/// its last byte.
#[derive(Clone)]
pub struct Activity {
    moved: Arc<AtomicBool>,
}

impl Activity {
    pub fn new() -> Self {
        Self {
            moved: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn touch(&self) {
        // Read first: most touches find the flag already set and leave the cache line clean.
        if !self.moved.load(Ordering::Relaxed) {
            self.moved.store(true, Ordering::Relaxed);
        }
    }

    /// Resolves once nothing moved for `timeout` (counted from the call). One watcher per
    /// `Activity`: each sample clears the flag, so two watchers would hide bytes from each other.
    pub async fn idle_for(&self, timeout: Duration) {
        let step = (timeout / 4).max(Duration::from_millis(1));
        let mut quiet = Duration::ZERO;
        self.moved.store(false, Ordering::Relaxed);
        loop {
            tokio::time::sleep(step).await;
            if self.moved.swap(false, Ordering::Relaxed) {
                quiet = Duration::ZERO;
            } else {
                quiet += step;
                if quiet >= timeout {
                    return;
                }
            }
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// An IO that records activity on every read and write.
pub struct Tracked<T> {
    inner: T,
    activity: Activity,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The HTTP server settings both sides share.
pub fn http_builder(limits: &Limits, h2_only: bool) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // The smuggling guard runs the header-read clock from a head's first byte (hyper's would
        // also cut idle keep-alive connections).
        .header_read_timeout(None)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_stream_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_send_buf_size(usize::try_from(limits.stream_window).unwrap_or(1 << 20))
        // Rapid-reset and error floods: a connection that makes the server reset too many
        // streams is closed with GOAWAY.
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10))
        .enable_connect_protocol();
    if h2_only {
        b = b.http2_only();
    }
    b
}

/// An HTTP/1 request that may turn the connection into something else (Upgrade or CONNECT).
fn wants_protocol_switch<B>(req: &Request<B>) -> bool {
    req.version() <= http::Version::HTTP_11
        && (req.method() == http::Method::CONNECT
            || req.headers().contains_key(http::header::UPGRADE))
}

fn switched(status: http::StatusCode, connect: bool) -> bool {
    status == http::StatusCode::SWITCHING_PROTOCOLS || (connect && status.is_success())
}

/// Serves one connection until it closes, goes idle past `limits.idle_timeout`, or the drain
/// finishes it gracefully.
pub async fn serve_connection<IO, F, Fut>(
    io: IO,
    builder: &auto::Builder<TokioExecutor>,
    limits: &Limits,
    drain: &Drain,
    handler: F,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(Tracked::new(io, activity.clone()));
    let handler = Arc::new(handler);
    let max_headers = limits.max_headers;
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            // hyper counts headers on HTTP/1 only; HTTP/2 gets the same limit here.
            if req.headers().len() > max_headers {
                return Ok(crate::body::error(
                    http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    &format!("more than {max_headers} request headers"),
                ));
            }
            let switch = wants_protocol_switch(&req);
            let is_connect = req.method() == http::Method::CONNECT;
            // Boxed: HTTP/2 spawns this future as a task per stream, and the handler's state
            // machine is large; it is moved by pointer instead of by value.
            let mut response = Box::pin(handler(req)).await;
            if switch && !switched(response.status(), is_connect) {
                // The HTTP/1 smuggling guard stops judging framing once a connection may switch
                // protocols; when it did not, no further request may be read from it.
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.idle_for(limits.idle_timeout), if !draining => {
                tracing::debug!("closing an idle connection");
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = drain.signaled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::Activity;

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_idle_after_one_to_one_and_a_quarter_timeouts() {
        let activity = Activity::new();
        let started = Instant::now();
        activity.idle_for(Duration::from_secs(8)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(8) && took <= Duration::from_secs(10),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_moving_keep_a_connection_from_going_idle() {
        let activity = Activity::new();
        let mover = activity.clone();
        let started = Instant::now();
        let moving = tokio::spawn(async move {
            // Bytes every second for 20 s, then silence.
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                mover.touch();
            }
        });
        activity.idle_for(Duration::from_secs(4)).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(24) && took <= Duration::from_secs(26),
            "idle {took:?} after the start; the last byte moved at 20 s"
        );
        moving.await.expect("mover");
    }
}
