//! The hop from the inbound side to a local endpoint (plaintext by default): pooled HTTP/1.1 or
//! HTTP/2 (prior knowledge, for `http2` and `grpc` ports) clients, TCP for CONNECT tunnels, and
//! an HTTP/1.1 WebSocket handshake for extended CONNECT. The state that outlives config snapshots
//! lives here too: the endpoints' statistics (in the balancer) and the services' limits.

use std::net::SocketAddr;

use base64::Engine as _;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::limit::{Limiters, Slot};
use crate::accesslog::Entry;
use crate::body::{self, Body, Counted};
use crate::config::Limits;
use crate::headers::strip_hop_by_hop;
use crate::lb::{Balancer, InFlight, random};
use crate::metrics::Metrics;
use crate::table::{LocalEndpoint, Port};

/// Clients to local endpoints, the balancer that picks among them, and the rate and concurrency
/// limits in front of them.
pub struct Backends {
    h1: Client<HttpConnector, Body>,
    h2: Client<HttpConnector, Body>,
    limits: Limits,
    pub balancer: Balancer,
    pub limiters: Limiters,
}

/// What an exchange with a local endpoint holds until it ends (the response body, or the
/// tunnel): the endpoint's in-flight count and, when the service bounds its concurrency, one of
/// its slots.
pub struct Held {
    pub endpoint: InFlight,
    pub slot: Option<Slot>,
}

impl From<InFlight> for Held {
    fn from(endpoint: InFlight) -> Self {
        Self {
            endpoint,
            slot: None,
        }
    }
}

impl Backends {
    pub fn new(limits: Limits) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(limits.connect_timeout));
        let h1 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build(connector.clone());
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
        let held = held.into();
        let (mut parts, incoming) = req.into_parts();
        let original = std::mem::take(&mut parts.uri).into_parts();
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(endpoint.authority.clone());
        uri.path_and_query = original
            .path_and_query
            .or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
        parts.uri = match Uri::from_parts(uri) {
            Ok(u) => u,
            Err(e) => {
                let r = Self::fail(&mut entry, metrics, StatusCode::BAD_REQUEST, e.to_string());
                entry.finish();
                return r;
            }
        };
        let endpoint = endpoint.address;
        let client = if port.protocol.is_h2() {
            parts.version = Version::HTTP_2;
            &self.h2
        } else {
            parts.version = Version::HTTP_11;
            if !parts.headers.contains_key(header::HOST)
                && let Some(a) = original.authority.and_then(|a| {
                    HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(
                        a.as_str().as_bytes(),
                    ))
                    .ok()
                })
            {
                parts.headers.insert(header::HOST, a);
            }
            &self.h1
        };
        let req = Request::from_parts(parts, incoming);
        let started = tokio::time::Instant::now();
        let response =
            match tokio::time::timeout(self.limits.request_timeout, client.request(req)).await {
                Ok(Ok(r)) => r,
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
        let counted = Counted::new(incoming, entry.counters.bytes_out.clone()).on_end(move || {
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
            let tcp = TcpStream::connect(endpoint)
                .await
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
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
}
