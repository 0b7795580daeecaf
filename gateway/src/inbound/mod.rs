//! The inbound side: the only port other clusters reach. mTLS is required and the caller's chain
//! is verified against the bundle of the trust domain in its own SPIFFE ID (inside the
//! verifier); the caller must be a gateway of a peered cluster; the target must be a service
//! this cluster exports to that peer. Calls go to local endpoints only — never on to a third
//! cluster — chosen by power-of-two-choices over latency and load, weights honoured.
//!
//! The destination service sees the caller's identity in `x-forwarded-client-cert` (the calling
//! gateway's ID; this gateway as `By`; the calling workload first when its gateway named one in
//! `isthmus-caller`), the calling cluster in `x-isthmus-source-cluster`, and `x-isthmus-shadow`
//! on shadow copies; whatever the caller sent under those names is dropped first. A byte tunnel
//! (CONNECT) reaches only `tcp` ports — on an HTTP port the caller's bytes would reach the
//! service as headers nobody judged — and a WebSocket (extended CONNECT) only HTTP ports.
//!
//! Before an endpoint is picked, the service's serving-side policy runs ([`guard`]):
//! authorization, fault injection, rate and concurrency limits.
//!
//! Admission is not once and for all: peer connections, tunnels and HTTP exchanges that may
//! stream (either way) are registered with what they were admitted as, and every new config snapshot judges them again
//! with the same rules ([`grant`], [`crate::live`]); those no longer allowed — a new deny rule,
//! an export withdrawn or narrowed, a cluster no longer peered — are closed, with the reason in
//! the access log.

mod backend;
mod caller;
mod grant;
mod guard;
mod limit;

use std::sync::Arc;

use futures_util::StreamExt as _;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use isthmus_federation::identity::SpiffeId;
use isthmus_federation::identity::transport::{PeerInfo, tls_incoming};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accesslog::{Direction, Entry, Side};
use crate::body::{self, Body, Counted, Revocable};
use crate::coalesce::Coalesced;
use crate::config::Limits;
use crate::headers::{
    FORWARDED_CLIENT_CERT, PROBE, SHADOW, SHADOW_MARK, SOURCE_CLUSTER, TARGET, strip_identity,
};
use crate::live::LiveSet;
use crate::metrics::Metrics;
use crate::refusals::{Reason, RefusalLog};
use crate::retry::is_grpc;
use crate::serve::{ConnLimit, Drain, Hold, http_builder, serve_connection};
use crate::table::{Export, LocalEndpoint, Port, Snapshot};
use crate::tunnel::pipe;
use hyper_util::rt::TokioIo;

pub use backend::Backends;
use backend::{Held, Track};
pub use grant::{Exchange, Grant, judge};
use guard::{Admission, Refusal};

/// Everything the inbound request path reads.
pub struct Inbound {
    pub table: watch::Receiver<Arc<Snapshot>>,
    pub backends: Arc<Backends>,
    pub limits: Limits,
    pub access_log: bool,
    pub metrics: Arc<Metrics>,
    /// This gateway's own SPIFFE ID (the `By` of forwarded client certs).
    pub own_id: SpiffeId,
    /// Open connections, tunnels and streaming responses, judged again on every snapshot.
    pub live: Arc<LiveSet<Grant>>,
    /// Spans of sampled exchanges (off: one branch per request).
    pub tracing: isthmus_federation::telemetry::Tracing,
}

/// The local side of a tunnel.
enum Local {
    Tcp(tokio::net::TcpStream),
    Upgrade(hyper::upgrade::OnUpgrade),
}

/// A verified caller: its peer cluster and its gateway's identity.
struct Caller<'a> {
    cluster: Arc<str>,
    gateway: &'a SpiffeId,
}

/// One connection from a peer gateway: who it is (from its verified certificate) and the
/// forwarded-client-cert value every request on it carries, built once.
struct PeerConn {
    info: PeerInfo,
    forwarded_client_cert: Option<HeaderValue>,
    /// The calling cluster's name as a header value, built on first use.
    source_cluster: std::sync::OnceLock<(Arc<str>, Option<HeaderValue>)>,
}

impl PeerConn {
    fn new(info: PeerInfo, own_id: &SpiffeId) -> Self {
        let forwarded_client_cert = info
            .id
            .as_ref()
            .and_then(|id| HeaderValue::from_str(&format!("By={own_id};URI={id}")).ok());
        Self {
            info,
            forwarded_client_cert,
            source_cluster: std::sync::OnceLock::new(),
        }
    }

    /// `x-isthmus-source-cluster` for `cluster` (a connection's caller maps to one cluster; a
    /// different name, after a peer's rename, is built afresh).
    fn source_cluster(&self, cluster: &Arc<str>) -> Option<HeaderValue> {
        let (name, value) = self
            .source_cluster
            .get_or_init(|| (cluster.clone(), HeaderValue::from_str(cluster).ok()));
        if name == cluster {
            value.clone()
        } else {
            HeaderValue::from_str(cluster).ok()
        }
    }
}

impl Inbound {
    /// Accepts peer gateways until draining starts.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<ServerConfig>,
        limit: ConnLimit,
        drain: Drain,
    ) {
        let builder = Arc::new(http_builder(&self.limits, true));
        let incoming = tls_incoming(listener, tls, self.limits.handshake_timeout);
        let refusals = RefusalLog::new(&self.metrics);
        tokio::pin!(incoming);
        loop {
            let next = tokio::select! {
                n = incoming.next() => n,
                () = drain.signaled() => return,
            };
            let stream = match next {
                Some(Ok(stream)) => stream,
                // Accept errors are retried inside the stream; it never ends on its own.
                Some(Err(_)) => continue,
                None => return,
            };
            let Some(permit) = limit.try_acquire() else {
                let source = stream.info().remote.ip();
                refusals.refused("inbound", Reason::ListenerFull, source);
                continue;
            };
            let conn = Arc::new(PeerConn::new(stream.info().clone(), &self.own_id));
            let current = self.table.borrow().clone();
            let live = self
                .live
                .register(Grant::connection(conn.clone()), &current);
            let (this, builder, drain) = (self.clone(), builder.clone(), drain.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let limits = this.limits.clone();
                let peer = conn.info.remote;
                let served = serve_connection(
                    Coalesced::new(stream),
                    &builder,
                    &limits,
                    &drain,
                    move |req| this.clone().handle(conn.clone(), req),
                );
                tokio::select! {
                    () = served => {}
                    closed = live.ending().wait() => {
                        // Dropping the connection resets every stream on it; its tunnels are
                        // closed through their own registrations.
                        tracing::info!(remote = %peer, %closed, "closing a peer gateway's connection");
                    }
                }
            });
        }
    }

    /// The exported service and port a stream asks for, if this caller may reach it.
    fn target(
        snap: &Snapshot,
        caller: &Caller<'_>,
        req: &Request<Incoming>,
    ) -> Result<(Arc<Export>, Port), (StatusCode, String)> {
        let raw = req
            .headers()
            .get(TARGET)
            .and_then(|v| v.to_str().ok())
            .ok_or((StatusCode::BAD_REQUEST, format!("missing {TARGET} header")))?;
        let (service, port) = raw
            .rsplit_once(':')
            .and_then(|(s, p)| Some((s, p.parse::<u16>().ok()?)))
            .ok_or((StatusCode::BAD_REQUEST, format!("bad {TARGET}: {raw:?}")))?;
        grant::exported(snap, &caller.cluster, service, port)
    }

    async fn handle(
        self: Arc<Self>,
        conn: Arc<PeerConn>,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let snap = self.table.borrow().clone();
        let mut entry = Entry::new(self.access_log, Side::Inbound, "http", "".into());
        entry.count_traffic(&self.metrics.traffic);
        entry.dst_cluster = Some(snap.cluster.clone());
        entry.note(|e| {
            e.method = Some(req.method().to_string());
            e.path = req.uri().path_and_query().map(|p| p.as_str().to_string());
        });
        entry.note(|e| e.peer = conn.info.id.as_ref().map(ToString::to_string));
        let caller = match grant::peer(&snap, conn.info.id.as_ref()) {
            Ok(c) => c,
            Err(reason) => return self.refuse(entry, StatusCode::FORBIDDEN, reason),
        };
        entry.src_cluster = caller.cluster.clone();
        if req.headers().contains_key(PROBE) {
            // A peer gateway's health probe: answered here, never logged per request.
            return crate::body::error(StatusCode::OK, "ok");
        }
        entry.span = crate::trace::exchange(&self.tracing, Side::Inbound, &req);
        let (export, port) = match Self::target(&snap, &caller, &req) {
            Ok(t) => t,
            Err((status, reason)) => return self.refuse(entry, status, reason),
        };
        entry.service = Some(export.name.clone());
        if req.method() == Method::CONNECT {
            let protocol = req.extensions().get::<hyper::ext::Protocol>();
            if let Err(reason) = tunnel_fits(&export.name, port, protocol.map(|p| p.as_str())) {
                return self.refuse(entry, StatusCode::FORBIDDEN, reason);
            }
        }
        // Read before the identity headers are stripped.
        let grpc = is_grpc(req.headers());
        entry.shadow = req.headers().contains_key(SHADOW);
        let workload = match caller::workload(req.headers(), caller.gateway, &caller.cluster) {
            Ok(w) => w,
            Err(reason) => {
                let refusal = Refusal::new(StatusCode::FORBIDDEN, reason);
                return self.refuse_with(entry, refusal, grpc);
            }
        };
        let identity = workload.as_ref().map(ToString::to_string);
        entry.note(|e| e.caller = identity.clone());
        let admission = Admission {
            policy: snap.traffic.for_service(&export.name),
            policies: &snap.traffic,
            service: &export.name,
            cluster: &caller.cluster,
            caller: crate::policy::Caller {
                cluster: &caller.cluster,
                trust_domain: caller.gateway.trust_domain().as_str(),
                identity: identity.as_deref(),
            },
            metrics: &self.metrics,
            shadow: entry.shadow,
        };
        let slot = match admission.run(&self.backends.limiters).await {
            Ok(slot) => slot,
            Err(refusal) => return self.refuse_with(entry, refusal, grpc),
        };
        let Some((endpoint, in_flight)) = self.backends.balancer.pick(&export.endpoints) else {
            let reason = format!("{} has no ready endpoint in {}", export.name, snap.cluster);
            return self.refuse(entry, StatusCode::SERVICE_UNAVAILABLE, reason);
        };
        let mut held = Held {
            endpoint: in_flight,
            slot,
            track: None,
            live: None,
        };
        entry.note(|e| e.upstream = Some(endpoint.address.to_string()));
        let (mut parts, incoming) = req.into_parts();
        // HTTP/2 has no connection-specific headers (h2 refuses them); identity claims are
        // dropped whatever the version.
        strip_identity(&mut parts.headers);
        if let Some(span) = &entry.span {
            // The service's parent is this span (an unsampled caller's value passes as it came).
            crate::trace::inject(span, &mut parts.headers);
        }
        let forwarded_client_cert = match &workload {
            Some(w) => caller::forwarded_client_cert(&self.own_id, caller.gateway, w),
            None => conn.forwarded_client_cert.clone(),
        };
        if let Some(v) = forwarded_client_cert {
            parts.headers.insert(FORWARDED_CLIENT_CERT, v);
        }
        if let Some(v) = conn.source_cluster(&caller.cluster) {
            parts.headers.insert(SOURCE_CLUSTER, v);
        }
        if entry.shadow {
            parts
                .headers
                .insert(SHADOW_MARK, HeaderValue::from_static("true"));
        }
        let exchange = if parts.method != Method::CONNECT {
            Exchange::Http
        } else if parts.extensions.get::<hyper::ext::Protocol>().is_some() {
            Exchange::WebSocket
        } else {
            Exchange::Tunnel
        };
        // Registered once the exchange may prove long-lived ([`grant`] says when).
        held.track = Some(Track {
            set: self.live.clone(),
            grant: Grant::stream(
                conn.clone(),
                export.name.clone(),
                port.port,
                exchange,
                workload,
            ),
            admitted: snap.clone(),
        });
        if exchange == Exchange::Http {
            // An upload that may stream is judged again from now on, before any response.
            if grant::may_stream(&hyper::body::Body::size_hint(&incoming)) {
                held.register();
            }
            let ending = held.live.as_ref().map(|r| r.ending().clone());
            if let Some(e) = &ending {
                crate::cancel::follow(e.clone());
            }
            let upload = Revocable::upload(incoming, ending);
            let counted =
                Counted::new(upload, entry.tally(Direction::In)).filter_trailers(strip_identity);
            let req = Request::from_parts(parts, body::boxed(counted));
            return self
                .backends
                .forward_http(req, endpoint, port, held, entry, &self.metrics)
                .await;
        }
        // Boxed: tunnels are rare next to requests, and their handshakes would otherwise size
        // every request's future, which is allocated and copied per call.
        Box::pin(self.tunnel(Request::from_parts(parts, incoming), endpoint, held, entry)).await
    }

    /// Answers a CONNECT (TCP) or extended CONNECT (WebSocket) stream: opens the local side,
    /// then splices the two in a task of their own once the peer's stream is upgraded.
    async fn tunnel(
        &self,
        mut req: Request<Incoming>,
        endpoint: &LocalEndpoint,
        mut held: Held,
        mut entry: Entry,
    ) -> Response<Body> {
        let protocol = req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .map(|p| p.as_str().to_string());
        let started = tokio::time::Instant::now();
        let hold = Hold::take(&mut req);
        let peer_side = hyper::upgrade::on(&mut req);
        let (mut response, local) = match protocol.as_deref() {
            None => {
                entry.protocol = "tcp";
                match self.backends.connect_tcp(endpoint.address).await {
                    Ok(stream) => (Response::new(body::empty()), Local::Tcp(stream)),
                    Err((status, reason)) => return self.refuse(entry, status, reason),
                }
            }
            Some("websocket") => {
                entry.protocol = "websocket";
                let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let authority = req.uri().authority().map(|a| a.as_str());
                let handshake = self
                    .backends
                    .websocket_handshake(endpoint.address, path, authority, req.headers().clone())
                    .await;
                match handshake {
                    Ok(mut upgraded) => {
                        let mut response = Response::new(body::empty());
                        for h in [
                            http::header::SEC_WEBSOCKET_PROTOCOL,
                            http::header::SEC_WEBSOCKET_EXTENSIONS,
                        ] {
                            if let Some(v) = upgraded.headers().get(&h) {
                                response.headers_mut().insert(h, v.clone());
                            }
                        }
                        (response, Local::Upgrade(hyper::upgrade::on(&mut upgraded)))
                    }
                    Err((status, reason)) => return self.refuse(entry, status, reason),
                }
            }
            Some(other) => {
                let reason = format!("unsupported CONNECT protocol {other:?}");
                return self.refuse(entry, StatusCode::BAD_REQUEST, reason);
            }
        };
        held.endpoint.stats().observe(started.elapsed());
        held.register();
        *response.status_mut() = StatusCode::OK;
        entry.status = 200;
        self.metrics.request(Side::Inbound, 200);
        let idle = self.limits.idle_timeout;
        tokio::spawn(async move {
            let ending = held.live.as_ref().map(|r| &**r.ending());
            match peer_side.await {
                Ok(peer) => match local {
                    Local::Tcp(stream) => {
                        pipe(TokioIo::new(peer), stream, idle, &entry.counters, ending).await;
                    }
                    Local::Upgrade(up) => match up.await {
                        Ok(up) => {
                            let up = TokioIo::new(up);
                            pipe(TokioIo::new(peer), up, idle, &entry.counters, ending).await;
                        }
                        Err(e) => entry.reason = Some(format!("endpoint upgrade failed: {e}")),
                    },
                },
                Err(e) => entry.reason = Some(format!("tunnel setup failed: {e}")),
            }
            if let Some(closed) = held.closed() {
                entry.reason = Some(closed.to_string());
            }
            drop((held, hold));
            entry.finish();
        });
        response
    }

    fn refuse(&self, entry: Entry, status: StatusCode, reason: String) -> Response<Body> {
        self.refuse_with(entry, Refusal::new(status, reason), false)
    }

    /// Answers a refused call (gRPC calls get a trailers-only response) and finishes its entry.
    /// The access log and the request metric record the refusal's HTTP status even when a gRPC
    /// caller receives it as a `grpc-status`.
    fn refuse_with(&self, mut entry: Entry, refusal: Refusal, grpc: bool) -> Response<Body> {
        let Refusal {
            status,
            reason,
            retry_after,
        } = refusal;
        tracing::debug!(peer = ?entry.peer, service = ?entry.service, %status, %reason, "inbound call refused");
        entry.status = status.as_u16();
        self.metrics.request(Side::Inbound, status.as_u16());
        let response = body::refusal(status, &reason, grpc, retry_after);
        entry.reason = Some(reason);
        entry.finish();
        response
    }
}

/// Whether a tunnel may reach `port` of `service`: a byte tunnel (CONNECT) only a `tcp` port —
/// on an HTTP port the caller's bytes would reach the service as headers this gateway never
/// judged, identity included —, a WebSocket (extended CONNECT) only an HTTP one. Else why not.
fn tunnel_fits(service: &str, port: Port, protocol: Option<&str>) -> Result<(), String> {
    match protocol {
        None if port.protocol.is_http() => Err(format!(
            "{service} port {} speaks {}: a byte tunnel (CONNECT) reaches tcp ports only; \
             HTTP goes as requests (is the calling gateway older than this one?)",
            port.port,
            format!("{:?}", port.protocol).to_ascii_lowercase()
        )),
        Some(_) if !port.protocol.is_http() => Err(format!(
            "{service} port {} is tcp: a WebSocket (extended CONNECT) needs an HTTP port",
            port.port
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::PortProtocol;

    #[test]
    fn byte_tunnels_reach_tcp_ports_and_websockets_http_ports_only() {
        let port = |protocol| Port { port: 80, protocol };
        for (protocol, tunnel, websocket) in [
            (PortProtocol::Tcp, true, false),
            (PortProtocol::Http, false, true),
            (PortProtocol::Http2, false, true),
            (PortProtocol::Grpc, false, true),
        ] {
            assert_eq!(
                tunnel_fits("s.ns", port(protocol), None).is_ok(),
                tunnel,
                "{protocol:?}"
            );
            assert_eq!(
                tunnel_fits("s.ns", port(protocol), Some("websocket")).is_ok(),
                websocket,
                "{protocol:?}"
            );
        }
        let reason = tunnel_fits("echo.demo", port(PortProtocol::Http), None).expect_err("http");
        assert!(
            reason.starts_with("echo.demo port 80 speaks http:"),
            "{reason}"
        );
    }
}
