//! Operations plumbing: the read-only admin HTTP port and the local admin API.
//!
//! - [`http`]: `GET /healthz`, `/readyz`, `/metrics`, `/config_dump` on a TCP port (loopback by
//!   default). Read-only by construction: it has no route that changes state.
//! - [`socket`]: state-changing operations (`POST /v1/<op>`, JSON in and out) on a Unix socket
//!   with mode 0600, so only the federation's own user (and root) can reach them. They are never
//!   served on a TCP port.
//! - [`client`]: the CLI side of the local admin API.
//! - [`exposition`]: the text format `/metrics` answers in (OpenMetrics or Prometheus 0.0.4).
//! - [`ui`]: the dashboard's page, script and style sheet, embedded in the binary.
//!
//! This module owns transport only. It must not know any federation internals (store, peering,
//! identity...): callers plug state in through callbacks and the [`AdminHandler`] trait, so the
//! gateway can reuse it as is.

pub mod client;
pub mod exposition;
pub mod http;
pub mod socket;
pub mod ui;

pub use client::{AdminClientError, admin_call};
pub use http::{
    AdminHttpConfig, AdminHttpState, Asset, JsonRoute, JsonRouteFn, redact_secrets,
    serve_admin_http, serve_admin_http_routes, serve_admin_http_with,
};
pub use socket::{
    AdminError, AdminHandler, BoundAdminSocket, bind_admin_socket, serve_admin_socket,
};

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long in-flight requests may run after shutdown before their connections are dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A client that has not sent its request headers by then is disconnected (slowloris guard;
/// also keeps a drain from waiting on a half-open connection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

type AdminResponse = Response<Full<Bytes>>;

/// A listener the shared accept loop can drive (TCP or Unix).
trait Accept: Send + Sync {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&self) -> impl Future<Output = io::Result<Self::Io>> + Send + '_;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> io::Result<Self::Io> {
        self.accept().await.map(|(stream, _peer)| stream)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> io::Result<Self::Io> {
        self.accept().await.map(|(stream, _peer)| stream)
    }
}

/// Serves HTTP/1.1 on every accepted connection until `shutdown` resolves, then stops accepting,
/// lets in-flight requests finish (idle keep-alive connections close at once) and drops whatever
/// is still running after [`DRAIN_TIMEOUT`].
///
/// `admit` vets each new connection before any byte is read (the socket server checks the peer's
/// uid there); returning `false` drops it. `outlived` resolves once work that `handle` spawned
/// beyond its connection has finished; the drain waits for it too, within the same bound. It
/// must not depend on `handle` itself, which is dropped first.
async fn serve_http1<L, A, H, Fut>(
    listener: L,
    admit: A,
    handle: H,
    shutdown: impl Future<Output = ()> + Send,
    outlived: impl Future<Output = ()> + Send,
) where
    L: Accept,
    A: Fn(&L::Io) -> bool + Send + Sync,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = AdminResponse> + Send + 'static,
{
    let (stop_tx, _) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept_io() => match accepted {
                Ok(io) if admit(&io) => {
                    let handle = handle.clone();
                    let stop = stop_tx.subscribe();
                    conns.spawn(serve_conn(io, handle, stop));
                }
                Ok(_refused) => {}
                Err(error) => {
                    tracing::warn!(%error, "admin: accept failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    drop(handle);
    // `send_replace` stores the value even when no connection is subscribed.
    stop_tx.send_replace(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
        outlived.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = conns.len(),
            "admin: requests still running after the drain timeout; giving up on them"
        );
        conns.shutdown().await;
    }
}

async fn serve_conn<I, H, Fut>(io: I, handle: H, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = AdminResponse> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let fut = handle(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(io), service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        // The `Ref` that `wait_for` returns must not live across the drain below (not `Send`).
        () = async { drop(stop.wait_for(|stopping| *stopping).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "admin: connection ended with an error");
    }
}

/// Tracks work that outlives its connection (an admin operation whose client went away), so
/// the drain can wait for it: each task holds a clone; [`InFlightDone::wait`] resolves when
/// every clone is gone.
#[derive(Clone)]
struct InFlight {
    _held: tokio::sync::mpsc::Sender<()>,
}

struct InFlightDone(tokio::sync::mpsc::Receiver<()>);

fn in_flight() -> (InFlight, InFlightDone) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    (InFlight { _held: tx }, InFlightDone(rx))
}

impl InFlightDone {
    async fn wait(mut self) {
        // Nothing is ever sent: `recv` returns `None` once every sender is dropped.
        while self.0.recv().await.is_some() {}
    }
}

/// A complete response with a fixed body. `content_type` is a static, valid header value.
fn respond(status: hyper::StatusCode, content_type: &'static str, body: Bytes) -> AdminResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    // Admin answers describe the live process: never let anything cache them.
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}
