//! Serving one accepted connection with the gateway's protections: header size and count
//! limits (431), a header-read timeout, an idle timeout, HTTP/2 stream and reset-flood limits,
//! bounded flow-control windows, a per-listener connection limit, and graceful drain (in-flight
//! requests finish; HTTP/2 peers get GOAWAY and go elsewhere).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use crate::body::Body;
use crate::cancel::StreamExecutor;
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

/// What a connection is doing, as the idle watch samples it: how many of its requests have
/// not finished (a request counts from its head until its response body ends, a tunnel until
/// it closes), whether one started or finished, whether bytes moved, and how many responses
/// wait for the client to take them. Each mark is a relaxed atomic (no clock read on the I/O
/// path); the watch samples every quarter of the timeout.
#[derive(Clone)]
pub struct Activity {
    inner: Arc<ActivityInner>,
}

#[derive(Default)]
struct ActivityInner {
    moved: AtomicBool,
    changed: AtomicBool,
    open: AtomicUsize,
    /// Response bodies the connection holds and has not asked for more of since: not started,
    /// or a frame handed over and not polled again. A body waiting on its upstream (polled,
    /// pending) is not counted.
    unread: AtomicUsize,
    /// A counted response body was polled again or let go.
    taken: AtomicBool,
    /// Woken when the last open request finishes.
    all_closed: tokio::sync::Notify,
}

/// Why the idle watch gave up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiet {
    /// No request open for the whole timeout. Keepalive PINGs and other bytes do not count:
    /// a client that only pings is idle.
    Idle,
    /// Requests open, and not a byte moved for the whole timeout: the client stopped reading
    /// (or the connection is dead without a reset).
    Stalled,
    /// A response waited the whole timeout for the client to take more of it while no other
    /// response moved: the client keeps the connection alive (it answers PINGs) but never
    /// opens its HTTP/2 flow-control window.
    Unread,
}

/// One open request of a connection; dropping it finishes the request.
pub struct Open(Arc<ActivityInner>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.changed.store(true, Ordering::Relaxed);
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// A request's hold on its connection, in the request's extensions when it may become a
/// tunnel (CONNECT or Upgrade): whoever runs the tunnel keeps it until the tunnel ends, so a
/// connection carrying tunnels is not idle.
#[derive(Clone)]
pub struct Hold {
    _open: Arc<Open>,
}

impl Hold {
    pub fn take<B>(req: &mut Request<B>) -> Option<Hold> {
        req.extensions_mut().remove::<Hold>()
    }
}

impl Activity {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(ActivityInner::default()),
        }
    }

    pub fn touch(&self) {
        // Read first: most touches find the flag already set and leave the cache line clean.
        if !self.inner.moved.load(Ordering::Relaxed) {
            self.inner.moved.store(true, Ordering::Relaxed);
        }
    }

    /// Counts a request as open until the returned guard drops.
    pub fn open(&self) -> Open {
        self.inner.open.fetch_add(1, Ordering::Relaxed);
        self.inner.changed.store(true, Ordering::Relaxed);
        Open(self.inner.clone())
    }

    /// Resolves once no request is open: every response finished and every tunnel closed.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.inner.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once the connection was idle or stalled for `timeout` (counted from the call),
    /// saying which: noticed between one and one and a quarter timeouts after it began. One
    /// watcher per `Activity`: each sample clears the flags, so two would hide marks from each
    /// other.
    pub async fn quiet_for(&self, timeout: Duration) -> Quiet {
        let step = (timeout / 4).max(Duration::from_millis(1));
        let (mut idle, mut stalled, mut unread) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        self.inner.moved.store(false, Ordering::Relaxed);
        self.inner.changed.store(false, Ordering::Relaxed);
        self.inner.taken.store(false, Ordering::Relaxed);
        loop {
            tokio::time::sleep(step).await;
            let moved = self.inner.moved.swap(false, Ordering::Relaxed);
            let changed = self.inner.changed.swap(false, Ordering::Relaxed);
            let taken = self.inner.taken.swap(false, Ordering::Relaxed);
            let open = self.inner.open.load(Ordering::Relaxed);
            let waiting = self.inner.unread.load(Ordering::Relaxed) > 0;
            idle = if open == 0 && !changed {
                idle + step
            } else {
                Duration::ZERO
            };
            stalled = if open > 0 && !moved {
                stalled + step
            } else {
                Duration::ZERO
            };
            unread = if waiting && !taken {
                unread + step
            } else {
                Duration::ZERO
            };
            if idle >= timeout {
                return Quiet::Idle;
            }
            if stalled >= timeout {
                return Quiet::Stalled;
            }
            if unread >= timeout {
                return Quiet::Unread;
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
/// HTTP/2 stream tasks run where a closed exchange can end them ([`crate::cancel`]).
pub fn http_builder(limits: &Limits, h2_only: bool) -> auto::Builder<StreamExecutor> {
    let mut b = auto::Builder::new(StreamExecutor);
    b.http1()
        .timer(TokioTimer::new())
        // The smuggling guard runs the header-read clock from a head's first byte (hyper's would
        // also cut idle keep-alive connections).
        .header_read_timeout(None)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.h1_head_bytes());
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

/// A response body that keeps its request open on the connection until it ends, and counts
/// itself unread while the connection holds it without asking for more.
struct Finishing {
    body: Body,
    /// Counted in `unread`.
    waiting: bool,
    open: Open,
}

impl Finishing {
    /// Held by the connection from the start: not asked for yet.
    fn new(body: Body, open: Open) -> Self {
        let mut this = Self {
            body,
            waiting: false,
            open,
        };
        this.handed();
        this
    }

    /// Waiting for the connection (the client) to ask for more.
    fn handed(&mut self) {
        self.waiting = true;
        self.open.0.unread.fetch_add(1, Ordering::Relaxed);
    }

    /// Asked for again, or let go: no longer waiting.
    fn taken(&mut self) {
        if self.waiting {
            self.waiting = false;
            self.open.0.unread.fetch_sub(1, Ordering::Relaxed);
            if !self.open.0.taken.load(Ordering::Relaxed) {
                self.open.0.taken.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        self.taken();
    }
}

impl hyper::body::Body for Finishing {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        this.taken();
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(_))) = polled {
            this.handed();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// How long an idle connection told to close gets to say goodbye (HTTP/2 GOAWAY) before it is
/// dropped.
const IDLE_GOODBYE: Duration = Duration::from_secs(5);

/// Serves one connection until it closes, the drain finishes it gracefully, or it goes quiet
/// for `limits.idle_timeout`: idle (no request open; closed gracefully), stalled (requests
/// open and not a byte moving, as when a client stops reading a response) or unread (a
/// response waiting on the client, none moving, while the client still answers PINGs). Stalled
/// and unread connections are dropped, which resets their streams and frees what they held.
pub async fn serve_connection<IO, F, Fut>(
    io: IO,
    builder: &auto::Builder<StreamExecutor>,
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
    let requests = activity.clone();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let handler = handler.clone();
        let open = requests.open();
        let switch = wants_protocol_switch(&req);
        let is_connect = req.method() == http::Method::CONNECT;
        if switch || is_connect {
            req.extensions_mut().insert(Hold {
                _open: Arc::new(requests.open()),
            });
        }
        async move {
            // hyper counts headers on HTTP/1 only; HTTP/2 gets the same limit here.
            if req.headers().len() > max_headers {
                let refused = crate::body::error(
                    http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    &format!("more than {max_headers} request headers"),
                );
                return Ok(refused.map(|body| Finishing::new(body, open)));
            }
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
            Ok::<_, std::convert::Infallible>(response.map(|body| Finishing::new(body, open)))
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    let ended = {
        // Dropped at the end of this block: the connection owns its responses' bodies.
        tokio::pin!(conn);
        let mut draining = false;
        let mut goodbye = std::pin::pin!(tokio::time::sleep(Duration::MAX));
        let mut saying_goodbye = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    break true;
                }
                quiet = activity.quiet_for(limits.idle_timeout) => match quiet {
                    Quiet::Stalled => {
                        tracing::debug!("dropping a stalled connection (requests open, nothing moving)");
                        break false;
                    }
                    Quiet::Unread => {
                        tracing::debug!("dropping a connection whose client does not take its responses");
                        break false;
                    }
                    Quiet::Idle if !draining => {
                        tracing::debug!("closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        draining = true;
                        goodbye.as_mut().reset(Instant::now() + IDLE_GOODBYE);
                        saying_goodbye = true;
                    }
                    Quiet::Idle => {}
                },
                () = &mut goodbye, if saying_goodbye => {
                    tracing::debug!("dropping an idle connection that did not close");
                    break false;
                }
                () = drain.signaled(), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    };
    if ended {
        // An HTTP/1 connection that became a tunnel (CONNECT, Upgrade) ends here for hyper,
        // not for the listener: it counts against the connection limit (and the drain waits
        // for it, up to the drain's deadline) until the tunnel closes.
        activity.all_closed().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use super::{Activity, Drain, Quiet, http_builder, serve_connection};
    use crate::config::Limits;

    /// Marks bytes moving on `activity` every 500 ms, as keepalive PINGs do, until aborted.
    fn pinging(activity: &Activity) -> tokio::task::JoinHandle<()> {
        let pinger = activity.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                pinger.touch();
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_no_request_is_idle_after_one_to_one_and_a_quarter_timeouts() {
        let activity = Activity::new();
        // Bytes without requests (keepalive PINGs) do not keep it open.
        let pings = pinging(&activity);
        let started = Instant::now();
        assert_eq!(
            activity.quiet_for(Duration::from_secs(8)).await,
            Quiet::Idle
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(8) && took <= Duration::from_secs(10),
            "{took:?}"
        );
        pings.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_request_keeps_a_connection_until_its_bytes_stop_moving() {
        let activity = Activity::new();
        let mover = activity.clone();
        let open = activity.open();
        let started = Instant::now();
        let moving = tokio::spawn(async move {
            // Bytes every second for 20 s, then silence with the request still open.
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                mover.touch();
            }
        });
        assert_eq!(
            activity.quiet_for(Duration::from_secs(4)).await,
            Quiet::Stalled
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(24) && took <= Duration::from_secs(26),
            "stalled {took:?} after the start; the last byte moved at 20 s"
        );
        moving.await.expect("mover");
        // Once the request finishes, the connection is idle a timeout later.
        drop(open);
        let finished = Instant::now();
        assert_eq!(
            activity.quiet_for(Duration::from_secs(4)).await,
            Quiet::Idle
        );
        let took = finished.elapsed();
        assert!(
            took >= Duration::from_secs(4) && took <= Duration::from_secs(6),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_never_takes_is_noticed_while_pings_keep_the_link_busy() {
        let activity = Activity::new();
        let pings = pinging(&activity);
        let open = activity.open();
        let started = Instant::now();
        let mut body = super::Finishing::new(endless(), open);
        // A frame taken every second for 10 s (a client opening its window), then none.
        let taker = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let frame = http_body_util::BodyExt::frame(&mut body).await;
                assert!(matches!(frame, Some(Ok(_))), "a frame");
            }
            body
        });
        assert_eq!(
            activity.quiet_for(Duration::from_secs(4)).await,
            Quiet::Unread
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(14) && took <= Duration::from_secs(16),
            "unread {took:?} after the start; last taken at 10 s"
        );
        // Once the connection lets go of the response (it ended or was reset), the request is
        // finished and the connection merely idle.
        drop(taker.await.expect("taker"));
        assert_eq!(
            activity.quiet_for(Duration::from_secs(4)).await,
            Quiet::Idle
        );
        pings.abort();
    }

    fn short_idle() -> Limits {
        Limits {
            idle_timeout: Duration::from_millis(800),
            ..Limits::default()
        }
    }

    /// Serves one in-memory connection; resolves when `serve_connection` returns.
    fn serve(
        server: tokio::io::DuplexStream,
        body: fn() -> crate::body::Body,
    ) -> tokio::task::JoinHandle<()> {
        let limits = short_idle();
        let builder = http_builder(&limits, false);
        let (_tx, drain) = Drain::new();
        tokio::spawn(async move {
            let _keep_drain_open = _tx;
            serve_connection(server, &builder, &limits, &drain, move |_req| async move {
                http::Response::new(body())
            })
            .await;
        })
    }

    /// An HTTP/2 client that PINGs every 100 ms, idle or not; its connection runs in a task.
    async fn pinging_client(
        io: tokio::io::DuplexStream,
    ) -> (
        hyper::client::conn::http2::SendRequest<crate::body::Body>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ) {
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(100))
            .keep_alive_while_idle(true)
            .handshake::<_, crate::body::Body>(TokioIo::new(io))
            .await
            .expect("h2 handshake");
        (sender, tokio::spawn(conn))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_http2_client_that_only_pings_is_closed_as_idle() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let served = serve(server, crate::body::empty);
        let (mut sender, conn) = pinging_client(client).await;
        let response = sender
            .send_request(http::Request::new(crate::body::empty()))
            .await
            .expect("one request");
        assert_eq!(response.status(), 200);
        drop(response);
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("a connection that only pings is closed within the idle timeout")
            .expect("server task");
        assert!(
            started.elapsed() >= Duration::from_millis(700),
            "{:?}",
            started.elapsed()
        );
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    }

    /// A listener holds its connection-limit permit while `serve_connection` runs: an HTTP/1
    /// connection that became a tunnel must keep it running until the tunnel closes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_http1_connection_turned_tunnel_is_served_until_the_tunnel_closes() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let limits = short_idle();
        let builder = http_builder(&limits, false);
        let (_tx, drain) = Drain::new();
        let mut served = tokio::spawn(async move {
            serve_connection(server, &builder, &limits, &drain, |mut req| async move {
                let hold = super::Hold::take(&mut req);
                tokio::spawn(async move {
                    let _hold = hold;
                    if let Ok(upgraded) = hyper::upgrade::on(req).await {
                        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
                http::Response::new(crate::body::empty())
            })
            .await;
        });
        client
            .write_all(b"CONNECT x:1 HTTP/1.1\r\nHost: x:1\r\n\r\n")
            .await
            .expect("send CONNECT");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            client.read_exact(&mut byte).await.expect("response head");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
        client.write_all(b"ping").await.expect("tunnel write");
        let mut echo = [0u8; 4];
        client.read_exact(&mut echo).await.expect("tunnel echo");
        assert_eq!(&echo, b"ping");
        // Past the idle timeout too: a tunnel is an open request.
        let early = tokio::time::timeout(Duration::from_millis(1500), &mut served).await;
        assert!(
            early.is_err(),
            "the connection ended while its tunnel was open"
        );
        client.shutdown().await.expect("close the tunnel");
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the connection ends once its tunnel closed")
            .expect("server task");
    }

    fn endless() -> crate::body::Body {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let frames = futures_util::stream::repeat_with(move || {
            Ok::<_, crate::body::BoxError>(hyper::body::Frame::data(chunk.clone()))
        });
        crate::body::boxed(http_body_util::StreamBody::new(frames))
    }

    /// A slow-read client: it answers PINGs, so bytes keep moving, but never reads the
    /// response, so its stream window stays shut.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_http2_client_that_pings_but_never_reads_a_response_is_dropped() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let served = serve(server, endless);
        let (mut sender, conn) = pinging_client(client).await;
        let response = sender
            .send_request(http::Request::new(crate::body::empty()))
            .await
            .expect("the response head");
        assert_eq!(response.status(), 200);
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("a connection whose client never takes its response is dropped")
            .expect("server task");
        drop(response);
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_http1_client_that_stops_reading_a_response_is_dropped() {
        let (mut client, server) = tokio::io::duplex(16 * 1024);
        let served = serve(server, endless);
        client
            .write_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send the request");
        // Never read: the response fills the pipe and stops.
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("a connection whose client stopped reading is dropped, not kept forever")
            .expect("server task");
        drop(client);
    }
}
