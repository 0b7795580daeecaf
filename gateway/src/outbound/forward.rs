//! Carrying a resolved call to a peer cluster: HTTP requests as HTTP/2 streams, TCP as HTTP/2
//! CONNECT tunnels, WebSocket as extended CONNECT (RFC 8441). A cluster whose gateway cannot be
//! reached (or whose connection refuses the stream before it is sent) is skipped for the next
//! in [`cluster_order`]; a request already sent is never replayed here.

use std::sync::Arc;

use base64::Engine as _;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Outbound, Resolved};
use crate::accesslog::{Direction, Entry};
use crate::body::{self, Body, BodyEnd, Counted};
use crate::headers::{CALLER, TARGET, strip_hop_by_hop, strip_identity};
use crate::live::{Ending, Registration};
use crate::retry::{self, BreakerGuard};
use crate::serve::Hold;
use crate::table::ServiceName;
use crate::table::Snapshot;
use crate::tunnel::pipe;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub(crate) fn websocket_accept(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

fn target_value(resolved: &Resolved) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{}:{}",
        resolved.target.import.name, resolved.port
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// What a request to a peer gateway carries besides the client's own headers: HTTP/2, the
/// target, and the calling workload when this gateway knows it.
fn peer_headers(parts: &mut http::request::Parts, resolved: &Resolved, caller: Option<&str>) {
    parts.version = Version::HTTP_2;
    parts.headers.insert(TARGET, target_value(resolved));
    if let Some(v) = caller.and_then(|c| HeaderValue::from_str(c).ok()) {
        parts.headers.insert(CALLER, v);
    }
}

impl Outbound {
    /// Finishes the log entry and metrics when `response`'s body ends; the call counts against
    /// its cluster's circuit breaker (`in_flight`) until then.
    fn respond(
        &self,
        response: Response<Incoming>,
        in_flight: BreakerGuard,
        mut entry: Entry,
    ) -> Response<Body> {
        // From a peer gateway: HTTP/2, no connection-specific headers.
        let (parts, incoming) = response.into_parts();
        entry.status = parts.status.as_u16();
        self.metrics.request(entry.side, parts.status.as_u16());
        let counter = entry.tally(Direction::Out);
        let (metrics, health) = (self.metrics.clone(), self.health.clone());
        let counted = Counted::new(incoming, counter).on_end(move |end| {
            drop(in_flight);
            if let BodyEnd::Failed(why) = end {
                // The peer (or the service behind it) died mid-response: hyper resets the
                // client's stream or closes its HTTP/1.1 connection, so the client sees a
                // failure, never a short body that looks whole. A link-level failure also
                // counts against the cluster for this service.
                metrics.response_cut(entry.side);
                entry.cut(&format!("the peer gateway's stream failed: {why}"));
                if let (Some(service), Some(cluster)) = (&entry.service, &entry.dst_cluster) {
                    health.outcome(service, cluster, false);
                }
            }
            entry.finish();
        });
        Response::from_parts(parts, body::boxed(counted))
    }

    pub(super) async fn forward(
        &self,
        snap: &Snapshot,
        resolved: Resolved,
        req: Request<Incoming>,
        mut entry: Entry,
    ) -> Response<Body> {
        let (mut parts, incoming) = req.into_parts();
        if parts.version < Version::HTTP_2 {
            strip_hop_by_hop(&mut parts.headers);
        }
        strip_identity(&mut parts.headers);
        parts.headers.remove(header::HOST);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = match build_uri(&resolved.authority, &path) {
            Ok(u) => u,
            Err(reason) => return self.refuse(&mut entry, StatusCode::BAD_REQUEST, reason),
        };
        let counted =
            Counted::new(incoming, entry.tally(Direction::In)).filter_trailers(strip_identity);
        let (order, policy) = self.plan(snap, &resolved);
        let local = order
            .first()
            .filter(|b| b.cluster == snap.cluster)
            .and_then(|_| snap.exports.get(&resolved.target.import.name))
            .and_then(|e| Some((e, e.port(resolved.port)?)));
        if local.is_none() {
            peer_headers(&mut parts, &resolved, entry.caller.as_deref());
        }
        let may_retry = local.is_none()
            && policy.retries > 0
            && (retry::idempotent(&parts.method) || retry::is_grpc(&parts.headers));
        let shadow = self.shadow_copy(snap, &resolved, &policy);
        // The replay buffer serves retries and shadow copies alike.
        let req = Request::from_parts(parts, counted);
        let (req, replay) = if may_retry || shadow.is_some() {
            match retry::prepare(req) {
                Ok(replay) => (replay.request(), Some(replay)),
                Err(streaming) => (*streaming, None),
            }
        } else {
            let (parts, counted) = req.into_parts();
            (Request::from_parts(parts, body::boxed(counted)), None)
        };
        if let Some(copy) = shadow {
            match &replay {
                Some(r) => {
                    let (mut parts, body) = r.request().into_parts();
                    peer_headers(&mut parts, &resolved, entry.caller.as_deref());
                    let req = Request::from_parts(parts, body);
                    self.send_shadow(snap, copy, req, entry.span.as_deref());
                }
                None => {
                    tracing::debug!(service = %resolved.target.import.name, "shadow copy skipped: the body is larger than the replay buffer or still streaming");
                    self.metrics.shadow(&resolved.target.import.name, "skipped");
                }
            }
        }
        let replay = replay.filter(|_| may_retry);
        if let Some((export, port)) = local {
            let Some((endpoint, in_flight)) = self.local.balancer.pick(&export.endpoints) else {
                let reason = format!("{} has no ready endpoint in this cluster", export.name);
                let r = self.refuse(&mut entry, StatusCode::SERVICE_UNAVAILABLE, reason);
                entry.finish();
                return r;
            };
            entry.dst_cluster = Some(snap.cluster.clone());
            entry.note(|e| e.upstream = Some(endpoint.address.to_string()));
            let mut req = req;
            if let Some(span) = &entry.span {
                crate::trace::inject(span, req.headers_mut());
            }
            // Boxed: calls that cross clusters need not carry this path's state.
            let response = Box::pin(self.local.forward_http(
                req,
                endpoint,
                port,
                in_flight,
                entry,
                &self.metrics,
            ))
            .await;
            let failed =
                retry::failed_attempt(response.status(), response.headers(), &policy.grpc_statuses);
            self.health
                .outcome(&resolved.target.import.name, &snap.cluster, !failed);
            return response;
        }
        match self
            .send(
                snap,
                &resolved,
                &order,
                &policy,
                req,
                replay.as_ref(),
                &mut entry,
            )
            .await
        {
            Ok((response, in_flight)) => self.respond(response, in_flight, entry),
            Err(refused) => {
                entry.finish();
                refused
            }
        }
    }

    /// Opens a byte stream to the service: on this cluster when it serves it (a TCP
    /// connection, or a WebSocket handshake with the endpoint), else an HTTP/2 CONNECT (with
    /// `protocol`, an extended CONNECT) stream through a peer cluster's gateway.
    async fn open_stream(
        &self,
        snap: &Snapshot,
        resolved: &Resolved,
        protocol: Option<&'static str>,
        path: &str,
        extra: http::HeaderMap,
        entry: &mut Entry,
    ) -> Result<Upstream, Response<Body>> {
        let (order, policy) = self.plan(snap, resolved);
        let local = order
            .first()
            .filter(|b| b.cluster == snap.cluster)
            .and_then(|_| snap.exports.get(&resolved.target.import.name))
            .filter(|e| e.port(resolved.port).is_some());
        if let Some(export) = local {
            let Some((endpoint, _in_flight)) = self.local.balancer.pick(&export.endpoints) else {
                let reason = format!("{} has no ready endpoint in this cluster", export.name);
                return Err(self.refuse(entry, StatusCode::SERVICE_UNAVAILABLE, reason));
            };
            entry.dst_cluster = Some(snap.cluster.clone());
            entry.note(|e| e.upstream = Some(endpoint.address.to_string()));
            let opened = match protocol {
                None => self
                    .local
                    .connect_tcp(endpoint.address)
                    .await
                    .map(Upstream::Tcp),
                Some(_) => self
                    .local
                    .websocket_handshake(endpoint.address, path, Some(&resolved.authority), extra)
                    .await
                    .map(Upstream::Upgrade),
            };
            return opened.map_err(|(status, reason)| self.refuse(entry, status, reason));
        }
        let uri = match protocol {
            Some(_) => build_uri(&resolved.authority, path),
            None => Uri::builder()
                .authority(format!("{}:{}", resolved.target.import.name, resolved.port))
                .build()
                .map_err(|e| e.to_string()),
        };
        let uri = match uri {
            Ok(u) => u,
            Err(reason) => return Err(self.refuse(entry, StatusCode::BAD_REQUEST, reason)),
        };
        let mut req = Request::new(body::empty());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = extra;
        req.headers_mut().insert(TARGET, target_value(resolved));
        if let Some(v) = entry
            .caller
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            req.headers_mut().insert(CALLER, v);
        }
        if let Some(p) = protocol {
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static(p));
        }
        // A tunnel counts against the circuit breaker while it is opened, not while it lives:
        // long-lived tunnels would otherwise hold back every call to the cluster.
        let (response, _opened) = self
            .send(snap, resolved, &order, &policy, req, None, entry)
            .await?;
        if response.status() != StatusCode::OK {
            // The peer refused (not exported, no endpoint, ...): pass its answer on.
            let (mut parts, incoming) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            entry.status = parts.status.as_u16();
            entry.reason = parts
                .headers
                .get(body::ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            self.metrics.request(entry.side, entry.status);
            return Err(Response::from_parts(parts, body::boxed(incoming)));
        }
        Ok(Upstream::Upgrade(response))
    }

    pub(super) async fn proxy_connect(
        &self,
        snap: &Snapshot,
        resolved: Resolved,
        mut req: Request<Incoming>,
        mut entry: Entry,
    ) -> Response<Body> {
        let hold = Hold::take(&mut req);
        let client = hyper::upgrade::on(&mut req);
        let upstream = match self
            .open_stream(
                snap,
                &resolved,
                None,
                "/",
                http::HeaderMap::new(),
                &mut entry,
            )
            .await
        {
            Ok(r) => r,
            Err(refused) => {
                entry.finish();
                return refused;
            }
        };
        entry.status = 200;
        self.metrics.request(entry.side, 200);
        let idle = self.limits.idle_timeout;
        let live = self
            .live
            .register(resolved.target.import.name.clone(), snap);
        tokio::spawn(upstream.splice_when_upgraded(client, idle, entry, (hold, live)));
        Response::new(body::empty())
    }

    /// A raw TCP connection to a service VIP or target port: tunnelled whole; refused with a
    /// reset when no cluster can take it.
    pub async fn tcp(self: Arc<Self>, stream: TcpStream, origin: super::Origin) {
        let snap = self.snapshot();
        let mut entry = Entry::new(
            self.access_log,
            crate::accesslog::Side::Outbound,
            "tcp",
            snap.cluster.clone(),
        );
        entry.count_traffic(&self.metrics.traffic);
        let Some((target, port)) = super::listener_target(&snap, &origin) else {
            reset(stream);
            return;
        };
        entry.service = Some(target.import.name.clone());
        let resolved = Resolved {
            authority: format!("{}:{port}", target.import.name),
            target,
            port,
        };
        let upstream = match self
            .open_stream(
                &snap,
                &resolved,
                None,
                "/",
                http::HeaderMap::new(),
                &mut entry,
            )
            .await
        {
            Ok(r) => r,
            Err(_) => {
                reset(stream);
                entry.finish();
                return;
            }
        };
        entry.status = 200;
        self.metrics.request(entry.side, 200);
        let live = self
            .live
            .register(resolved.target.import.name.clone(), &snap);
        let spliced = upstream
            .splice(stream, self.limits.idle_timeout, &entry, live.ending())
            .await;
        if let Some(closed) = live.ending().closed() {
            entry.reason = Some(closed.to_string());
        } else if let Err(reason) = spliced {
            entry.reason = Some(reason);
        }
        entry.finish();
    }

    /// WebSocket: the client's HTTP/1.1 Upgrade (or HTTP/2 extended CONNECT) becomes an
    /// extended CONNECT to the peer gateway; each hop does its own handshake (the key/accept
    /// pair is per hop, RFC 8441 §5), and frames pass through untouched.
    pub(super) async fn websocket(
        &self,
        snap: &Snapshot,
        resolved: Resolved,
        mut req: Request<Incoming>,
        mut entry: Entry,
    ) -> Response<Body> {
        let h1 = req.version() <= Version::HTTP_11;
        let key = req.headers().get("sec-websocket-key").cloned();
        if h1 && key.is_none() {
            return self.refuse(
                &mut entry,
                StatusCode::BAD_REQUEST,
                "WebSocket upgrade without Sec-WebSocket-Key".into(),
            );
        }
        let hold = Hold::take(&mut req);
        let client = hyper::upgrade::on(&mut req);
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut extra = req.headers().clone();
        strip_hop_by_hop(&mut extra);
        strip_identity(&mut extra);
        for h in [
            header::HOST,
            header::SEC_WEBSOCKET_KEY,
            header::SEC_WEBSOCKET_ACCEPT,
        ] {
            extra.remove(h);
        }
        let upstream = match self
            .open_stream(snap, &resolved, Some("websocket"), &path, extra, &mut entry)
            .await
        {
            Ok(r) => r,
            Err(refused) => {
                entry.finish();
                return refused;
            }
        };
        let mut response = Response::new(body::empty());
        for h in [
            header::SEC_WEBSOCKET_PROTOCOL,
            header::SEC_WEBSOCKET_EXTENSIONS,
        ] {
            if let Some(v) = upstream.headers().and_then(|hs| hs.get(&h)) {
                response.headers_mut().insert(h, v.clone());
            }
        }
        if let Some(key) = key.filter(|_| h1) {
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = response.headers_mut();
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            if let Ok(v) = HeaderValue::from_str(&websocket_accept(key.as_bytes())) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
        }
        entry.status = response.status().as_u16();
        self.metrics.request(entry.side, entry.status);
        let idle = self.limits.idle_timeout;
        let live = self
            .live
            .register(resolved.target.import.name.clone(), snap);
        tokio::spawn(upstream.splice_when_upgraded(client, idle, entry, (hold, live)));
        response
    }
}

/// The far side of a tunnel.
enum Upstream {
    /// A CONNECT stream through a peer gateway, or a local endpoint's WebSocket 101: upgrade it.
    Upgrade(Response<Incoming>),
    /// A local endpoint.
    Tcp(TcpStream),
}

impl Upstream {
    fn headers(&self) -> Option<&http::HeaderMap> {
        match self {
            Self::Upgrade(r) => Some(r.headers()),
            Self::Tcp(_) => None,
        }
    }

    /// Once the client's side of the exchange is upgraded, splices it to this upstream; the
    /// access-log line is written when the tunnel ends.
    async fn splice_when_upgraded(
        self,
        client: hyper::upgrade::OnUpgrade,
        idle: std::time::Duration,
        mut entry: Entry,
        (hold, live): (Option<Hold>, Registration<ServiceName>),
    ) {
        let spliced = match client.await {
            Ok(c) => {
                self.splice(TokioIo::new(c), idle, &entry, live.ending())
                    .await
            }
            Err(e) => Err(format!("client upgrade failed: {e}")),
        };
        if let Some(closed) = live.ending().closed() {
            entry.reason = Some(closed.to_string());
        } else if let Err(reason) = spliced {
            entry.reason = Some(reason);
        }
        drop((hold, live));
        entry.finish();
    }

    /// Copies bytes between `client` and this upstream until both finish or go idle.
    async fn splice<C>(
        self,
        client: C,
        idle: std::time::Duration,
        entry: &Entry,
        ending: &Ending,
    ) -> Result<(), String>
    where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match self {
            Self::Tcp(stream) => {
                pipe(client, stream, idle, &entry.counters, Some(ending)).await;
            }
            Self::Upgrade(response) => {
                let up = hyper::upgrade::on(response)
                    .await
                    .map_err(|e| format!("upstream upgrade failed: {e}"))?;
                let up = TokioIo::new(up);
                pipe(client, up, idle, &entry.counters, Some(ending)).await;
            }
        }
        Ok(())
    }
}

fn build_uri(authority: &str, path: &str) -> Result<Uri, String> {
    let authority: Authority = authority
        .parse()
        .map_err(|e| format!("bad authority {authority:?}: {e}"))?;
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| format!("bad request target: {e}"))
}

/// Closes a TCP connection with RST: the client learns at once that nobody serves it.
fn reset(stream: TcpStream) {
    // SO_LINGER blocks on drop only with a non-zero timeout; zero means "send RST now".
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc_6455_example() {
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
