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

use super::{Outbound, Resolved, verdicts};
use crate::accesslog::{Direction, Entry};
use crate::body::{self, Body, Counted};
use crate::headers::{CALLER, TARGET, strip_hop_by_hop, strip_identity};
use crate::lb::{cluster_order, random};
use crate::live::{Ending, Registration};
use crate::policy::ServicePolicy;
use crate::retry::{self, BreakerGuard, Replay};
use crate::serve::Hold;
use crate::table::ServiceName;
use crate::table::{Backend, Snapshot};
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
    /// The clusters to try, best first, and the service's policy.
    fn plan<'a>(
        &self,
        snap: &Snapshot,
        resolved: &'a Resolved,
    ) -> (Vec<&'a Backend>, Arc<ServicePolicy>) {
        let name = &resolved.target.import.name;
        let policy = snap.traffic.for_service(name).clone();
        let order = cluster_order(
            &resolved.target,
            &snap.cluster,
            &snap.region,
            &policy,
            verdicts(&self.health, snap, name, &policy),
            random,
        );
        (order, policy)
    }

    /// Sends `req` (or, when the first try fails, its replay) to the clusters of `order` until
    /// one answers. A request not yet sent (the connection was closing, the peer unreachable,
    /// the cluster's circuit open) always moves on; one that was sent moves on only when it can
    /// be replayed, within the retry budget and the policy's retries. When the link failed
    /// under a try (the connection closing before it was sent, or lost while it ran), the same
    /// cluster is tried once more through another of its gateways (or, with one, a new
    /// connection) before the next cluster: a gateway lost is not the cluster lost. On failure:
    /// the response to give the client (the last peer answer, or 502/503/504 with the reason).
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        snap: &Snapshot,
        resolved: &Resolved,
        order: &[&Backend],
        policy: &ServicePolicy,
        req: Request<Body>,
        replay: Option<&Replay>,
        entry: &mut Entry,
    ) -> Result<(Response<Incoming>, BreakerGuard), Response<Body>> {
        let name = &resolved.target.import.name;
        if order.is_empty() {
            let reason = match &resolved.target.pinned {
                Some(c) => format!("{c} does not serve {name} now"),
                None => format!("no healthy cluster serves {name}"),
            };
            return Err(self.refuse(entry, StatusCode::SERVICE_UNAVAILABLE, reason));
        }
        self.budget.deposit(policy.budget_percent);
        // Every try, and every dial before one, shares the gateway's request_timeout.
        let deadline = tokio::time::Instant::now() + self.limits.request_timeout;
        let timeout = retry::try_timeout(
            replay.is_some(),
            policy.per_try_timeout,
            self.limits.request_timeout,
        );
        // The request in hand, and whether it is a retry still to be paid for from the budget
        // (paid when sent: one that never leaves costs nothing).
        let mut pending = Some((req, false));
        let mut sent = 0u32;
        let mut last = String::new();
        let mut last_answer: Option<(Response<Incoming>, BreakerGuard)> = None;
        let mut out_of_time = false;
        let mut clusters = order.iter().copied();
        // The cluster to try again after its link failed, and the gateway that failed.
        let mut again: Option<(&Backend, Arc<str>)> = None;
        let mut retried_here = false;
        loop {
            let (backend, failed_gateway) = match again.take() {
                Some((b, g)) => (b, Some(g)),
                None => match clusters.next() {
                    Some(b) => (b, None),
                    None => break,
                },
            };
            if backend.cluster == snap.cluster {
                // Local delivery is decided before a request is built for a peer.
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                out_of_time = true;
                break;
            }
            let (req, owes) = match pending.take() {
                Some(p) => p,
                None => match replay {
                    Some(r) if sent <= policy.retries => (r.request(), true),
                    _ => break,
                },
            };
            if owes && !self.budget.has_one() {
                last = format!("{last}; retry budget exhausted");
                self.metrics.retries_refused.inc();
                break;
            }
            let Some(in_flight) = self
                .breakers
                .enter(name, &backend.cluster, policy.max_requests)
            else {
                last = format!(
                    "{} has {} requests in flight (circuit open)",
                    backend.cluster, policy.max_requests
                );
                entry.failed_over_from.push(backend.cluster.clone());
                pending = Some((req, owes));
                continue;
            };
            let (mut sender, gateway) = match self
                .pool
                .get_any(backend, &self.health, failed_gateway.as_deref())
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    self.health.outcome(name, &backend.cluster, false);
                    last = e.to_string();
                    entry.failed_over_from.push(backend.cluster.clone());
                    pending = Some((req, owes));
                    continue;
                }
            };
            // After the dial: what is left of the request's time, if anything.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                out_of_time = true;
                break;
            }
            if owes {
                if !self.budget.withdraw() {
                    last = format!("{last}; retry budget exhausted");
                    self.metrics.retries_refused.inc();
                    break;
                }
                self.metrics.retries.inc();
            }
            let try_timeout = timeout.min(left);
            entry.dst_cluster = Some(backend.cluster.clone());
            entry.note(|e| e.upstream = Some(gateway.address.to_string()));
            sent += 1;
            match tokio::time::timeout(try_timeout, sender.try_send_request(req)).await {
                Ok(Ok(response)) => {
                    let failed = retry::failed_attempt(
                        response.status(),
                        response.headers(),
                        &policy.grpc_statuses,
                    );
                    self.health.outcome(name, &backend.cluster, !failed);
                    if !failed {
                        if !entry.failed_over_from.is_empty() {
                            entry.reason = Some(format!("failed over: {last}"));
                        } else if retried_here {
                            entry.reason = Some(format!("retried on another connection: {last}"));
                        }
                        return Ok((response, in_flight));
                    }
                    last = format!(
                        "{} answered {}{}",
                        backend.cluster,
                        response.status(),
                        response
                            .headers()
                            .get(body::ERROR_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    );
                    entry.failed_over_from.push(backend.cluster.clone());
                    last_answer = Some((response, in_flight));
                }
                Ok(Err(mut e)) => {
                    last = format!(
                        "{} failed through {}: {}",
                        backend.cluster,
                        gateway.address,
                        e.error()
                    );
                    let unsent = e.take_message();
                    if unsent.is_none() {
                        self.health.outcome(name, &backend.cluster, false);
                        if replay.is_none() {
                            entry.failed_over_from.push(backend.cluster.clone());
                            return Err(self.refuse(entry, StatusCode::BAD_GATEWAY, last));
                        }
                    }
                    // Once per cluster: this gateway again over a new connection (it was
                    // closing), or another of the cluster's gateways (this one was lost).
                    if failed_gateway.is_none() && (unsent.is_some() || backend.gateways.len() > 1)
                    {
                        again = Some((backend, gateway.address.clone()));
                        retried_here = true;
                    } else {
                        entry.failed_over_from.push(backend.cluster.clone());
                    }
                    if let Some(back) = unsent {
                        sent -= 1;
                        // Paid for already, if it was a retry.
                        pending = Some((back, false));
                    }
                }
                Err(_) => {
                    self.health.outcome(name, &backend.cluster, false);
                    last = format!(
                        "{} did not answer within {} ms",
                        backend.cluster,
                        try_timeout.as_millis()
                    );
                    entry.failed_over_from.push(backend.cluster.clone());
                    if replay.is_none() {
                        return Err(self.refuse(entry, StatusCode::GATEWAY_TIMEOUT, last));
                    }
                    if try_timeout < timeout {
                        // Cut short by the request's deadline: nothing is left for another.
                        out_of_time = true;
                        break;
                    }
                }
            }
        }
        if let Some(answer) = last_answer {
            // Nothing better: the last cluster's own answer, as it was.
            entry.failed_over_from.pop();
            entry.reason = Some(format!("every try failed: {last}"));
            return Ok(answer);
        }
        entry.dst_cluster = None;
        if out_of_time {
            let reason = format!(
                "no answer for {name} within the request timeout of {} ms: {last}",
                self.limits.request_timeout.as_millis()
            );
            return Err(self.refuse(entry, StatusCode::GATEWAY_TIMEOUT, reason));
        }
        let reason = format!("no cluster serving {name} could take the request: {last}");
        Err(self.refuse(entry, StatusCode::SERVICE_UNAVAILABLE, reason))
    }

    pub(super) fn refuse(
        &self,
        entry: &mut Entry,
        status: StatusCode,
        reason: String,
    ) -> Response<Body> {
        tracing::debug!(service = ?entry.service, %status, %reason, "outbound call refused");
        entry.status = status.as_u16();
        entry.reason = Some(reason.clone());
        self.metrics.request(entry.side, status.as_u16());
        body::error(status, &reason)
    }

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
        let counted = Counted::new(incoming, counter).on_end(move || {
            drop(in_flight);
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
                    self.send_shadow(snap, copy, Request::from_parts(parts, body));
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

    /// A raw TCP connection to a service VIP: tunnelled whole; refused with a reset when no
    /// cluster can take it.
    pub async fn tcp(self: Arc<Self>, stream: TcpStream, resolved_port: (std::net::IpAddr, u16)) {
        let snap = self.snapshot();
        let (ip, port) = resolved_port;
        let mut entry = Entry::new(
            self.access_log,
            crate::accesslog::Side::Outbound,
            "tcp",
            snap.cluster.clone(),
        );
        let Some(target) = snap.vips.get(&ip).cloned() else {
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
