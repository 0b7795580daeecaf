//! The outbound side: local clients connect to a service's VIP on the service's own port (HTTP,
//! h2c, gRPC, WebSocket or raw TCP), or use the proxy port (absolute-form requests and CONNECT).
//! The gateway picks a cluster that serves the service and carries the call there over the
//! pooled mTLS HTTP/2 connection to that cluster's gateway.
//!
//! It never reads endpoint addresses of other clusters (it has none); it routes to gateways.
//! Before a client's routing and identity headers are stripped, [`client`] reads what they may
//! ask (a cluster, where policy allows; the calling workload, from a trusted local source);
//! [`shadow`] copies a share of requests to another cluster where policy asks; [`connect`]
//! decides what a client's CONNECT becomes (a byte tunnel only to `tcp` ports; HTTP served by
//! the gateway itself inside a tunnel to an HTTP port), so no client byte reaches a service
//! without the header hygiene of the request path.
//!
//! Tunnels (raw TCP on a VIP, CONNECT, WebSocket) are registered for re-checking
//! ([`crate::live`]): one whose service is no longer imported is closed when the config that
//! removed it arrives. HTTP requests are not: each resolves its service in the snapshot of its
//! own time, and a request served inside a CONNECT tunnel to an HTTP port is refused (503) once
//! the import is gone.

mod client;
mod connect;
mod forward;
mod hedge;
#[cfg(test)]
mod hedge_tests;
mod send;
#[cfg(test)]
mod send_tests;
mod shadow;
pub(crate) use forward::websocket_accept;
pub mod listeners;
pub mod target_ports;
#[cfg(test)]
mod target_ports_tests;

pub use client::LocalClient;
pub use shadow::ShadowSlots;

use std::net::IpAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::accesslog::{Entry, Side};
use crate::body::{self, Body};
use crate::config::{Limits, SourceRange};
use crate::health::{Health, Verdict};
use crate::live::{Closed, LiveSet};
use crate::metrics::Metrics;
use crate::policy::ServicePolicy;
use crate::pool::PeerPool;
use crate::table::{Backend, ServiceName, Snapshot, Target};

/// Where a local connection arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A service VIP and port.
    Vip(IpAddr, u16),
    /// A target port on the pod IP (Kubernetes mode): it stands for one service (or per-cluster
    /// name) and port, looked up in the snapshot of the connection's own time.
    TargetPort(u16),
    /// The HTTP proxy port.
    Proxy,
    /// Inside a CONNECT tunnel to an HTTP port, which the gateway serves as HTTP itself: every
    /// request goes to the service and port the CONNECT named.
    Tunnel(Arc<TunnelTarget>),
}

/// The service and port a CONNECT tunnel served as HTTP is bound to.
#[derive(Debug, PartialEq, Eq)]
pub struct TunnelTarget {
    pub service: ServiceName,
    /// A per-cluster name (`<cluster>.<svc>.<ns>`) pins every request to that cluster.
    pub pinned: Option<Arc<str>>,
    pub port: u16,
    /// The CONNECT's authority: the Host of requests that name none.
    pub authority: String,
}

/// Everything the outbound request path reads.
pub struct Outbound {
    pub table: watch::Receiver<Arc<Snapshot>>,
    pub pool: Arc<PeerPool>,
    /// Local endpoints, for services this cluster serves itself.
    pub local: Arc<crate::inbound::Backends>,
    pub limits: Limits,
    pub access_log: bool,
    pub metrics: Arc<Metrics>,
    pub health: Arc<crate::health::Health>,
    pub budget: crate::retry::Budget,
    /// What each cluster's successful tries took, per service (for hedging and explain).
    pub latencies: Arc<crate::latency::Latencies>,
    pub breakers: crate::retry::Breakers,
    /// Local peers whose `x-forwarded-client-cert` names the calling workload.
    pub trusted_sources: Vec<SourceRange>,
    /// Shadow copies in flight, bounded.
    pub shadows: ShadowSlots,
    /// Connections served inside CONNECT tunnels drain with the listeners.
    pub drain: crate::serve::Drain,
    /// Open tunnels by the imported service they reach, judged again on every snapshot.
    pub live: Arc<LiveSet<ServiceName>>,
    /// Spans of sampled exchanges (off: one branch per request).
    pub tracing: isthmus_federation::telemetry::Tracing,
}

#[cfg(test)]
impl Outbound {
    /// An outbound side for unit tests: the table, this gateway's credential, its trust and
    /// retry budget as given; defaults elsewhere (no access log, tracing off).
    pub(crate) fn for_tests(
        table: watch::Receiver<Arc<Snapshot>>,
        certs: isthmus_federation::identity::CertStore,
        trust: isthmus_federation::identity::TrustStore,
        budget: crate::retry::Budget,
    ) -> Arc<Outbound> {
        let limits = Limits::default();
        Arc::new(Outbound {
            table: table.clone(),
            pool: Arc::new(PeerPool::new(certs, trust, limits.clone())),
            local: Arc::new(crate::inbound::Backends::new(limits.clone())),
            limits,
            access_log: false,
            metrics: Arc::new(Metrics::default()),
            health: Arc::new(Health::new(crate::health::HealthConfig::default())),
            budget,
            latencies: Arc::default(),
            breakers: crate::retry::Breakers::default(),
            trusted_sources: Vec::new(),
            shadows: ShadowSlots::default(),
            drain: crate::serve::Drain::new().1,
            live: Arc::new(LiveSet::new(table, crate::accesslog::Side::Outbound, judge)),
            tracing: Default::default(),
        })
    }
}

/// Whether `snap` still imports the service a tunnel reaches.
pub fn judge(snap: &Snapshot, service: &ServiceName) -> Result<(), Closed> {
    if snap.imports.contains_key(service) {
        return Ok(());
    }
    Err(Closed {
        cause: "import",
        reason: format!("{service} is no longer imported"),
    })
}

/// The verdict the outbound side acts on for each cluster of `service`; explain shows the same.
pub(crate) fn verdicts<'a>(
    health: &'a Health,
    snap: &'a Snapshot,
    service: &'a ServiceName,
    policy: &'a ServicePolicy,
) -> impl Fn(&Backend) -> Verdict + 'a {
    move |b| health.verdict(service, b, b.cluster == snap.cluster, policy.slow_start)
}

/// What a listener that stands for one service and port (a VIP's, a target port's) stands for
/// now: the target and the service port. `None` once its import is gone.
pub(crate) fn listener_target(snap: &Snapshot, origin: &Origin) -> Option<(Target, u16)> {
    match origin {
        &Origin::Vip(ip, port) => Some((snap.vips.get(&ip)?.clone(), port)),
        Origin::TargetPort(tp) => {
            let route = snap.target_ports.get(tp)?;
            Some((route.target.clone(), route.port.port))
        }
        Origin::Proxy | Origin::Tunnel(_) => None,
    }
}

/// What a request addressed, resolved against the table.
struct Resolved {
    target: Target,
    port: u16,
    /// The authority the client used (kept for the destination's Host header).
    authority: String,
}

impl Outbound {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.table.borrow().clone()
    }

    /// Handles one request from a local client.
    pub async fn handle(
        self: Arc<Self>,
        origin: Origin,
        client: LocalClient,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let snap = self.snapshot();
        let mut entry = Entry::new(
            self.access_log,
            Side::Outbound,
            "http",
            snap.cluster.clone(),
        );
        entry.count_traffic(&self.metrics.traffic);
        entry.span = crate::trace::exchange(&self.tracing, Side::Outbound, &req);
        entry.note(|e| {
            e.method = Some(req.method().to_string());
            e.path = req.uri().path_and_query().map(|p| p.as_str().to_string());
        });
        let mut resolved = match resolve(&snap, &origin, &req) {
            Ok(r) => r,
            Err((status, reason)) => {
                entry.status = status.as_u16();
                entry.reason = Some(reason.clone());
                self.metrics.request(Side::Outbound, status.as_u16());
                entry.finish();
                return body::error(status, &reason);
            }
        };
        let arrival = connect::Arrival::of(&origin);
        drop(origin);
        entry.service = Some(resolved.target.import.name.clone());
        let is_connect = req.method() == Method::CONNECT;
        let ext_connect = req.extensions().get::<hyper::ext::Protocol>().is_some();
        if is_connect && !ext_connect {
            // Tunnels and WebSockets are boxed: their state would otherwise size every
            // request's future, which is allocated and copied per call.
            return Box::pin(self.connect(&snap, arrival, client, resolved, req, entry)).await;
        }
        // HTTP and WebSocket: what the client's headers may ask, before they are stripped.
        if let Err((status, reason)) = self.pin_by_header(&snap, &mut resolved, req.headers()) {
            let refused = self.refuse(&mut entry, status, reason);
            entry.finish();
            return refused;
        }
        entry.caller = self.caller(&snap, client, req.headers());
        if ext_connect || is_websocket_upgrade(&req) {
            entry.protocol = "websocket";
            return Box::pin(self.websocket(&snap, resolved, req, entry)).await;
        }
        self.forward(&snap, resolved, req, entry).await
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `host[:port]` split; IPv6 literals keep their brackets off.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()),
        None => (authority, None),
    }
}

fn resolve<B>(
    snap: &Snapshot,
    origin: &Origin,
    req: &Request<B>,
) -> Result<Resolved, (StatusCode, String)> {
    let host_header = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let uri_authority = req.uri().authority().map(|a| a.as_str().to_string());
    match origin {
        Origin::Vip(..) | Origin::TargetPort(_) => {
            let (target, port) = listener_target(snap, origin).ok_or_else(|| {
                let what = match origin {
                    Origin::Vip(ip, _) => format!("{ip}"),
                    _ => "this target port".to_string(),
                };
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no service behind {what}: its import was removed"),
                )
            })?;
            let authority = host_header.or(uri_authority).unwrap_or_else(|| {
                let name = match &target.pinned {
                    Some(c) => format!("{c}.{}", target.import.name),
                    None => target.import.name.to_string(),
                };
                format!("{name}.{}:{port}", crate::table::CLUSTERSET_ZONE)
            });
            Ok(Resolved {
                target,
                port,
                authority,
            })
        }
        Origin::Tunnel(bound) => {
            let import = snap.imports.get(&bound.service).cloned().ok_or_else(|| {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{} is no longer imported: the tunnel's service is gone",
                        bound.service
                    ),
                )
            })?;
            Ok(Resolved {
                target: Target {
                    import,
                    pinned: bound.pinned.clone(),
                },
                port: bound.port,
                authority: host_header
                    .or(uri_authority)
                    .unwrap_or_else(|| bound.authority.clone()),
            })
        }
        Origin::Proxy => {
            let authority = uri_authority.or(host_header).ok_or_else(|| {
                (
                    StatusCode::BAD_REQUEST,
                    "a proxy request needs an absolute URI, a Host header or a CONNECT authority"
                        .to_string(),
                )
            })?;
            let (host, port) = split_authority(&authority);
            let target = snap.resolve_host(host).ok_or_else(|| {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no cluster serves {host}: it is not an imported service of this cluster"
                    ),
                )
            })?;
            let ports = &target.import.ports;
            let port = match port {
                Some(p) => p,
                // No port given: the service's only HTTP port, when it has exactly one.
                None => match ports
                    .iter()
                    .filter(|p| p.protocol.is_http())
                    .collect::<Vec<_>>()[..]
                {
                    [only] => only.port,
                    _ => 80,
                },
            };
            if target.import.port(port).is_none() {
                let known: Vec<String> = ports.iter().map(|p| p.port.to_string()).collect();
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{} has no port {port} (its ports: {})",
                        target.import.name,
                        known.join(", ")
                    ),
                ));
            }
            Ok(Resolved {
                target,
                port,
                authority,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_lasts_as_long_as_its_import() {
        let mut snap = Snapshot::default();
        let name: ServiceName = "tcp-echo.demo".into();
        snap.imports.insert(
            name.clone(),
            Arc::new(crate::table::Import::new(
                name.clone(),
                Vec::new(),
                Vec::new(),
            )),
        );
        assert_eq!(judge(&snap, &name), Ok(()));
        let closed = judge(&snap, &"other.demo".into()).expect_err("not imported");
        assert_eq!(
            (closed.cause, closed.reason.as_str()),
            ("import", "other.demo is no longer imported")
        );
    }

    #[test]
    fn authorities_split_with_and_without_ports() {
        assert_eq!(split_authority("a.b:80"), ("a.b", Some(80)));
        assert_eq!(split_authority("a.b"), ("a.b", None));
        assert_eq!(split_authority("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_authority("[::1]"), ("::1", None));
    }
}
