//! The hop from the inbound side to a local endpoint (plaintext by default): pooled HTTP/1.1 or
//! HTTP/2 (prior knowledge, for `http2` and `grpc` ports) clients, TCP for CONNECT tunnels, and
//! an HTTP/1.1 WebSocket handshake for extended CONNECT. The state that outlives config snapshots
//! lives here too: the endpoints' statistics (in the balancer) and the services' limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::grant::Grant;
use super::limit::{Limiters, Slot};
use crate::accesslog::{Direction, Entry};
use crate::body::{self, Body, Counted, Revocable};
use crate::config::Limits;
use crate::headers::strip_hop_by_hop;
use crate::lb::{Balancer, InFlight, random};
use crate::live::{Closed, LiveSet, Registration};
use crate::metrics::Metrics;
use crate::table::Snapshot;
use crate::table::{LocalEndpoint, Port};

/// Clients to local endpoints, the balancer that picks among them, and the rate and concurrency
/// limits in front of them.
pub struct Backends {
    h1: H1Pool,
    h2: Client<HttpConnector, Body>,
    limits: Limits,
    pub balancer: Balancer,
    pub limiters: Limiters,
}

/// What an exchange with a local endpoint holds until it ends (the response body, or the
/// tunnel): the endpoint's in-flight count, one of the service's slots when it bounds its
/// concurrency, and (inbound) what to register for re-checking when the exchange turns out
/// long-lived.
pub struct Held {
    pub endpoint: InFlight,
    pub slot: Option<Slot>,
    pub track: Option<Track>,
    pub live: Option<Registration<Grant>>,
}

impl Held {
    /// Registers the exchange for re-checking (when it carries a grant).
    pub fn register(&mut self) {
        if let Some(track) = self.track.take() {
            self.live = Some(track.set.register(track.grant, &track.admitted));
        }
    }

    /// Why a new config closed the exchange, once it did.
    pub fn closed(&self) -> Option<&Closed> {
        self.live.as_ref().and_then(|r| r.ending().closed())
    }
}

/// An exchange to register for re-checking if it turns out long-lived: its grant, the set, and
/// the snapshot it was admitted against. Building one moves what the request path already
/// holds (no allocation).
pub struct Track {
    pub set: Arc<LiveSet<Grant>>,
    pub grant: Grant,
    pub admitted: Arc<Snapshot>,
}

impl From<InFlight> for Held {
    fn from(endpoint: InFlight) -> Self {
        Self {
            endpoint,
            slot: None,
            track: None,
            live: None,
        }
    }
}

impl Backends {
    pub fn new(limits: Limits) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(limits.connect_timeout));
        let h1 = H1Pool::new(limits.connect_timeout);
        let h2 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .http2_initial_stream_window_size(limits.stream_window)
            .http2_initial_connection_window_size(limits.connection_window)
            .build(connector);
        Self {
            h1,
            h2,
            limits,
            balancer: Balancer::default(),
            limiters: Limiters::default(),
        }
    }

    fn fail(
        entry: &mut Entry,
        metrics: &Metrics,
        status: StatusCode,
        reason: String,
    ) -> Response<Body> {
        tracing::debug!(service = ?entry.service, upstream = ?entry.upstream, %reason, "local endpoint failed");
        entry.status = status.as_u16();
        entry.reason = Some(reason.clone());
        metrics.request(entry.side, status.as_u16());
        body::error(status, &reason)
    }

    /// Forwards an HTTP request to `endpoint`, streaming both bodies; `held` (the endpoint's
    /// in-flight count, and a concurrency slot on the inbound side) is released when the
    /// response body ends.
    pub async fn forward_http(
        &self,
        req: Request<Body>,
        endpoint: &LocalEndpoint,
        port: Port,
        held: impl Into<Held>,
        mut entry: Entry,
        metrics: &std::sync::Arc<Metrics>,
    ) -> Response<Body> {
        let mut held = held.into();
        let (mut parts, incoming) = req.into_parts();
        let original = std::mem::take(&mut parts.uri).into_parts();
        let path = original
            .path_and_query
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let h2 = port.protocol.is_h2();
        if h2 {
            parts.version = Version::HTTP_2;
            // The multiplexed client picks its connection by the absolute URI.
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(http::uri::Scheme::HTTP);
            uri.authority = Some(endpoint.authority.clone());
            uri.path_and_query = Some(path);
            parts.uri = match Uri::from_parts(uri) {
                Ok(u) => u,
                Err(e) => {
                    let r = Self::fail(&mut entry, metrics, StatusCode::BAD_REQUEST, e.to_string());
                    entry.finish();
                    return r;
                }
            };
        } else {
            parts.version = Version::HTTP_11;
            if !parts.headers.contains_key(header::HOST) {
                // The caller's authority, else the endpoint's own.
                let host = original.authority.as_ref().unwrap_or(&endpoint.authority);
                if let Ok(v) = HeaderValue::from_str(host.as_str()) {
                    parts.headers.insert(header::HOST, v);
                }
            }
            // The pool's connections carry origin-form targets.
            parts.uri = Uri::from(path);
        }
        let endpoint = endpoint.address;
        let req = Request::from_parts(parts, incoming);
        let started = tokio::time::Instant::now();
        let exchange = async {
            if h2 {
                self.h2
                    .request(req)
                    .await
                    .map(|r| (r, None))
                    .map_err(|e| e.to_string())
            } else {
                self.h1.send(endpoint, req).await.map(|(r, c)| (r, Some(c)))
            }
        };
        let (response, connection) =
            match tokio::time::timeout(self.limits.request_timeout, exchange).await {
                Ok(Ok(r)) => r,
                // A config change that closed the exchange failed its upload: the caller is
                // told why, not that the endpoint failed.
                Ok(Err(_)) if held.closed().is_some() => {
                    let reason = held.closed().map(ToString::to_string).unwrap_or_default();
                    let r = Self::fail(&mut entry, metrics, StatusCode::FORBIDDEN, reason);
                    entry.finish();
                    return r;
                }
                Ok(Err(e)) => {
                    let reason = format!("local endpoint {endpoint} failed: {e}");
                    let r = Self::fail(&mut entry, metrics, StatusCode::BAD_GATEWAY, reason);
                    entry.finish();
                    return r;
                }
                Err(_) => {
                    let reason = format!(
                        "local endpoint {endpoint} did not answer within {} ms",
                        self.limits.request_timeout.as_millis()
                    );
                    let r = Self::fail(&mut entry, metrics, StatusCode::GATEWAY_TIMEOUT, reason);
                    entry.finish();
                    return r;
                }
            };
        held.endpoint.stats().observe(started.elapsed());
        let (mut parts, incoming) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        entry.status = parts.status.as_u16();
        metrics.request(entry.side, entry.status);
        // A response that may stream (no declared length, or a large one) is judged again on
        // every new config, unless its upload already was; a small one is not registered.
        if held.live.is_none() {
            if super::grant::may_stream(&hyper::body::Body::size_hint(&incoming)) {
                held.register();
            } else {
                held.track = None;
            }
        }
        let ending = held.live.as_ref().map(|r| r.ending().clone());
        if let Some(e) = &ending {
            crate::cancel::follow(e.clone());
        }
        let grpc = crate::retry::is_grpc(&parts.headers);
        let give_back = connection.map(|c| (self.h1.clone(), c));
        let revocable = Revocable::new(incoming, ending, grpc);
        let metrics = metrics.clone();
        let counted = Counted::new(revocable, entry.tally(Direction::Out)).on_end(move |end| {
            if let Some((pool, sender)) = give_back {
                pool.check_in(endpoint, sender);
            }
            if let Some(closed) = held.closed() {
                entry.reason = Some(closed.to_string());
            } else if let crate::body::BodyEnd::Failed(why) = end {
                metrics.response_cut(entry.side);
                entry.cut(&format!("the local endpoint's body failed: {why}"));
            }
            drop(held);
            entry.finish();
        });
        Response::from_parts(parts, body::boxed(counted))
    }

    /// A TCP connection to `endpoint` (for CONNECT tunnels and raw TCP), or the status and
    /// reason to refuse with.
    pub async fn connect_tcp(
        &self,
        endpoint: SocketAddr,
    ) -> Result<TcpStream, (StatusCode, String)> {
        match tokio::time::timeout(self.limits.connect_timeout, TcpStream::connect(endpoint)).await
        {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => Err((
                StatusCode::BAD_GATEWAY,
                format!("local endpoint {endpoint} refused: {e}"),
            )),
            Err(_) => Err((
                StatusCode::GATEWAY_TIMEOUT,
                format!("local endpoint {endpoint}: connect timed out"),
            )),
        }
    }

    /// An HTTP/1.1 WebSocket handshake with `endpoint` (this hop's own key), forwarding the
    /// end-to-end headers; returns the endpoint's 101 (upgrade it to get the stream).
    pub async fn websocket_handshake(
        &self,
        endpoint: SocketAddr,
        path: &str,
        authority: Option<&str>,
        mut headers: http::HeaderMap,
    ) -> Result<Response<Incoming>, (StatusCode, String)> {
        let handshake = async {
            let mut sender = dial_http1(endpoint).await?;
            let mut up = Request::new(body::empty());
            *up.uri_mut() = path
                .parse()
                .map_err(|e: http::uri::InvalidUri| e.to_string())?;
            strip_hop_by_hop(&mut headers);
            for h in [header::SEC_WEBSOCKET_KEY, header::SEC_WEBSOCKET_ACCEPT] {
                headers.remove(h);
            }
            *up.headers_mut() = headers;
            let h = up.headers_mut();
            if let Some(a) = authority.and_then(|a| HeaderValue::from_str(a).ok()) {
                h.insert(header::HOST, a);
            }
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            let key = base64::engine::general_purpose::STANDARD
                .encode([random().to_le_bytes(), random().to_le_bytes()].concat());
            h.insert(
                header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_str(&key).map_err(|e| e.to_string())?,
            );
            let response = sender.send_request(up).await.map_err(|e| e.to_string())?;
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                return Err(format!(
                    "endpoint answered {} to the WebSocket handshake",
                    response.status()
                ));
            }
            let expected = crate::outbound::websocket_accept(key.as_bytes());
            let accept = response
                .headers()
                .get(header::SEC_WEBSOCKET_ACCEPT)
                .and_then(|v| v.to_str().ok());
            if accept != Some(expected.as_str()) {
                return Err("endpoint's Sec-WebSocket-Accept does not match".to_string());
            }
            Ok::<_, String>(response)
        };
        match tokio::time::timeout(self.limits.connect_timeout, handshake).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(reason)) => Err((
                StatusCode::BAD_GATEWAY,
                format!("local endpoint {endpoint}: {reason}"),
            )),
            Err(_) => Err((
                StatusCode::GATEWAY_TIMEOUT,
                format!("local endpoint {endpoint}: WebSocket handshake timed out"),
            )),
        }
    }
}

/// A plaintext HTTP/1.1 connection to a local endpoint, its driver spawned (upgrades allowed,
/// for WebSocket).
async fn dial_http1(addr: SocketAddr) -> Result<http1::SendRequest<Body>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = http1::handshake::<_, Body>(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(endpoint = %addr, error = %e, "local connection ended");
        }
    });
    Ok(sender)
}

/// How long an HTTP/1.1 connection to a local endpoint may sit unused before it is closed.
const H1_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often every endpoint's idle list is swept of closed and timed-out connections.
const H1_SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Idle HTTP/1.1 connections kept per local endpoint; more are closed when they come back.
const H1_MAX_IDLE: usize = 512;

/// Keep-alive HTTP/1.1 connections to local endpoints, by address. The request path takes a
/// connection under a short lock and hands it back when the response body ends: no task per
/// request and no waiting on a connection that is still finishing its last response (one that
/// is not ready yet stays for a later request; a fresh connection is opened instead).
#[derive(Clone)]
struct H1Pool {
    inner: std::sync::Arc<H1PoolInner>,
}

struct H1PoolInner {
    /// Per endpoint, most recently returned last.
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    connect_timeout: Duration,
}

impl H1PoolInner {
    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Idle>>> {
        // A panic while holding the lock cannot leave the lists inconsistent: keep using them.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the connections idle past the timeout and forgets endpoints left with none.
    fn sweep(&self, now: Instant) {
        self.idle().retain(|_, l| {
            l.retain(|i| i.fresh(now));
            !l.is_empty()
        });
    }
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl Idle {
    fn fresh(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.saturating_duration_since(self.since) < H1_IDLE_TIMEOUT
    }
}

impl H1Pool {
    /// A pool, and (inside a runtime) the task that sweeps it until the pool is dropped.
    fn new(connect_timeout: Duration) -> Self {
        let pool = Self {
            inner: std::sync::Arc::new(H1PoolInner {
                idle: Mutex::new(HashMap::new()),
                connect_timeout,
            }),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = std::sync::Arc::downgrade(&pool.inner);
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(H1_SWEEP_EVERY).await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.sweep(Instant::now());
                }
            });
        }
        pool
    }

    /// The most recently returned ready connection to `addr`; closed and timed-out ones met on
    /// the way are dropped, busy ones left in place.
    fn check_out(&self, addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = self.inner.idle();
        let list = idle.get_mut(&addr)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            if !list[i].fresh(now) {
                list.swap_remove(i);
            } else if list[i].sender.is_ready() {
                return Some(list.swap_remove(i).sender);
            }
        }
        None
    }

    /// Returns a connection after its response ended.
    fn check_in(&self, addr: SocketAddr, sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.inner.idle();
        let list = idle.entry(addr).or_default();
        if list.len() >= H1_MAX_IDLE {
            list.retain(|i| i.fresh(now));
        }
        if list.len() < H1_MAX_IDLE {
            list.push(Idle { sender, since: now });
        }
    }

    #[cfg(test)]
    fn idle_count(&self, addr: SocketAddr) -> usize {
        self.inner.idle().get(&addr).map_or(0, Vec::len)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<http1::SendRequest<Body>, String> {
        let connect = async {
            let mut sender = dial_http1(addr).await?;
            sender.ready().await.map_err(|e| e.to_string())?;
            Ok(sender)
        };
        match tokio::time::timeout(self.inner.connect_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "connect timed out after {} ms",
                self.inner.connect_timeout.as_millis()
            )),
        }
    }

    /// Sends `req` on a pooled connection, or a new one. A pooled connection that closed before
    /// the request went out (the endpoint ended it while idle) gives the request back, and the
    /// next one is tried; a request that reached the wire is never sent twice.
    async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, http1::SendRequest<Body>), String> {
        loop {
            let (mut sender, fresh) = match self.check_out(addr) {
                Some(s) => (s, false),
                // Boxed, like the peer dial: a rare path kept out of every request's future.
                None => (Box::pin(self.connect(addr)).await?, true),
            };
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(e.into_error().to_string()),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::body::Frame;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::*;
    use crate::accesslog::Side;
    use crate::policy::RateLimit;
    use crate::table::PortProtocol;

    type Chunks = mpsc::Receiver<Result<Frame<Bytes>, Infallible>>;

    /// A local endpoint answering one request with a body the test streams.
    async fn endpoint(chunks: Chunks) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let chunks = Arc::new(Mutex::new(Some(chunks)));
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let service = hyper::service::service_fn(move |_req| {
                let rx = chunks.lock().expect("lock").take();
                async move {
                    let frames = futures_util::stream::unfold(rx, |rx| async move {
                        let mut rx = rx?;
                        rx.recv().await.map(|f| (f, Some(rx)))
                    });
                    Ok::<_, Infallible>(Response::new(StreamBody::new(Box::pin(frames))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        addr
    }

    #[tokio::test]
    async fn a_concurrency_slot_is_held_until_the_response_body_ends() {
        let (tx, rx) = mpsc::channel(4);
        let addr = endpoint(rx).await;
        let backends = Backends::new(Limits::default());
        let limit = RateLimit {
            max_concurrent: Some(1),
            ..RateLimit::default()
        };
        let limiter = backends
            .limiters
            .get(&"echo.demo".into(), &limit, Instant::now());
        let west: Arc<str> = "west".into();
        let slot = limiter.admit(&west, Instant::now()).expect("admitted");
        let endpoints = [LocalEndpoint::new(addr, "z".into(), 1).expect("endpoint")];
        let (endpoint, in_flight) = backends.balancer.pick(&endpoints).expect("picked");
        let port = Port {
            port: addr.port(),
            protocol: PortProtocol::Http,
        };
        let held = Held {
            endpoint: in_flight,
            slot,
            track: None,
            live: None,
        };
        let entry = Entry::new(false, Side::Inbound, "http", west.clone());
        let req = Request::get("/").body(body::empty()).expect("request");
        let metrics = Arc::new(Metrics::default());
        let response = backends
            .forward_http(req, endpoint, port, held, entry, &metrics)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            limiter.admit(&west, Instant::now()).is_err(),
            "the response body is still streaming: the slot is taken"
        );
        tx.send(Ok(Frame::data(Bytes::from_static(b"done"))))
            .await
            .expect("send");
        drop(tx);
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(&body.to_bytes()[..], b"done");
        assert!(
            limiter.admit(&west, Instant::now()).is_ok(),
            "the slot is released when the body ends"
        );
    }
    /// A raw HTTP/1.1 endpoint: counts its connections, answers every request on a connection
    /// with `hello` and keep-alive, and closes a connection after `per_conn` answers. Each
    /// answer carries the request's Host header and target.
    async fn counting_endpoint(
        per_conn: usize,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for _ in 0..per_conn {
                        let head = loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                                buf.drain(..end + 4);
                                break head;
                            }
                            let mut chunk = [0u8; 1024];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let target = head.split(' ').nth(1).unwrap_or("").to_string();
                        let host = head
                            .lines()
                            .find_map(|l| l.strip_prefix("host: "))
                            .unwrap_or("")
                            .to_string();
                        let body = format!("{host} {target}");
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    // Closes after the last answer, as an endpoint ending idle keep-alive does.
                });
            }
        });
        (addr, accepted)
    }

    async fn get(pool: &H1Pool, addr: SocketAddr, host: &str) -> String {
        let req = Request::get("/path?q=1")
            .header(header::HOST, host)
            .body(body::empty())
            .expect("request");
        let (response, sender) = pool.send(addr, req).await.expect("answered");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        pool.check_in(addr, sender);
        String::from_utf8_lossy(&body).to_string()
    }

    #[tokio::test]
    async fn http1_connections_are_reused() {
        let (addr, accepted) = counting_endpoint(usize::MAX).await;
        let pool = H1Pool::new(Duration::from_secs(2));
        for i in 0..20 {
            assert_eq!(
                get(&pool, addr, "svc.example").await,
                "svc.example /path?q=1",
                "request {i}"
            );
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "twenty sequential requests share one connection"
        );
        assert_eq!(pool.idle_count(addr), 1);
    }

    /// Makes every idle connection to `addr` look older than the idle timeout.
    fn age(pool: &H1Pool, addr: SocketAddr) {
        let long_ago = std::time::Instant::now()
            .checked_sub(H1_IDLE_TIMEOUT + Duration::from_secs(1))
            .expect("the clock is past the idle timeout");
        for i in pool.inner.idle().get_mut(&addr).expect("idle list") {
            i.since = long_ago;
        }
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_closed_not_reused() {
        let (addr, accepted) = counting_endpoint(usize::MAX).await;
        let pool = H1Pool::new(Duration::from_secs(2));
        assert_eq!(get(&pool, addr, "a").await, "a /path?q=1");
        age(&pool, addr);
        assert_eq!(get(&pool, addr, "a").await, "a /path?q=1");
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "the timed-out connection was not reused"
        );
        assert_eq!(pool.idle_count(addr), 1);
        age(&pool, addr);
        pool.inner.sweep(std::time::Instant::now());
        assert_eq!(pool.idle_count(addr), 0, "the sweep closed it");
        assert!(pool.inner.idle().is_empty(), "and forgot the endpoint");
    }

    #[tokio::test]
    async fn each_endpoint_keeps_its_own_connections() {
        let (a, accepted_a) = counting_endpoint(usize::MAX).await;
        let (b, accepted_b) = counting_endpoint(usize::MAX).await;
        let pool = H1Pool::new(Duration::from_secs(2));
        for _ in 0..10 {
            assert_eq!(get(&pool, a, "a").await, "a /path?q=1");
            assert_eq!(get(&pool, b, "b").await, "b /path?q=1");
        }
        assert_eq!(accepted_a.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(accepted_b.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!((pool.idle_count(a), pool.idle_count(b)), (1, 1));
    }

    #[tokio::test]
    async fn a_connection_the_endpoint_closed_while_idle_is_replaced_without_an_error() {
        let (addr, accepted) = counting_endpoint(1).await;
        let pool = H1Pool::new(Duration::from_secs(2));
        for i in 0..5 {
            assert_eq!(get(&pool, addr, "a").await, "a /path?q=1", "request {i}");
            // Let the closed connection be noticed, or not: either way the request succeeds.
            if i % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn an_endpoint_that_is_down_is_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let pool = H1Pool::new(Duration::from_secs(2));
        let req = Request::get("/").body(body::empty()).expect("request");
        let err = pool.send(addr, req).await.expect_err("nobody listens");
        assert!(err.starts_with("connect:"), "{err}");
    }
}
