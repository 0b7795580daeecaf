//! Who may reach what on the inbound side, decided when a stream starts and again on every
//! config snapshot while it lives. The rules are functions the request path calls itself —
//! [`peer`] (a gateway of a peered cluster), [`exported`] (a service exported to that cluster, on
//! a port it exports), [`super::tunnel_fits`] (a byte tunnel only to a `tcp` port, a WebSocket
//! only to an HTTP one) and [`super::guard::authorization`] (the service's authorization
//! policy) —, and [`judge`] runs the same functions over what an open exchange was admitted as
//! (its [`Grant`]): there is no second copy of the rules to drift.
//!
//! What is registered for re-checking ([`crate::live`]): every peer mTLS connection (closed
//! whole when its cluster is no longer a peer), every tunnel (TCP CONNECT, WebSocket), and every
//! HTTP exchange one of whose bodies may stream ([`may_stream`]: no declared length, or more
//! than [`SMALL_BODY`]) — gRPC, server-sent events, chunked or large downloads and uploads. An
//! exchange is registered at admission, before the backend call, when its request body may
//! stream, else once the response headers show that the response may; a closed one has its
//! request body fail (aborting the backend call) and its stream task ended
//! ([`crate::cancel`]), whether or not the caller still reads. A plain request (no body or a
//! small declared one) with a small declared response is not tracked: it reaches its response
//! headers within the request timeout and then has at most [`SMALL_BODY`] left each way, and
//! tracking it would put a lock and an allocation on every plain request. Pure except for the
//! metrics the caller counts.

use std::sync::Arc;

use http::StatusCode;
use isthmus_federation::identity::{IdKind, SpiffeId};

use super::{Caller, PeerConn, tunnel_fits};
use crate::live::Closed;
use crate::table::{Export, Port, ServiceName, Snapshot};

/// The most a body declared up front may hold and still not make its exchange long-lived: it
/// fits in the smallest HTTP/2 stream window the configuration allows.
pub const SMALL_BODY: u64 = 64 * 1024;

/// Whether a body of size `hint` may stream for long: no declared length, or a large one.
pub fn may_stream(hint: &hyper::body::SizeHint) -> bool {
    hint.exact().is_none_or(|n| n > SMALL_BODY)
}

/// What an open exchange was admitted as.
pub struct Grant {
    kind: Kind,
}

enum Kind {
    /// A peer gateway's mTLS connection.
    Connection(Arc<PeerConn>),
    /// A stream on it to an exported service.
    Stream(Stream),
}

/// What kind of stream a grant admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// An HTTP request (its response may stream).
    Http,
    /// A byte tunnel (CONNECT).
    Tunnel,
    /// A WebSocket (extended CONNECT).
    WebSocket,
}

struct Stream {
    conn: Arc<PeerConn>,
    service: ServiceName,
    port: u16,
    exchange: Exchange,
    /// The calling workload its gateway vouched for.
    workload: Option<SpiffeId>,
}

impl Grant {
    pub(super) fn connection(conn: Arc<PeerConn>) -> Self {
        Self {
            kind: Kind::Connection(conn),
        }
    }

    pub(super) fn stream(
        conn: Arc<PeerConn>,
        service: ServiceName,
        port: u16,
        exchange: Exchange,
        workload: Option<SpiffeId>,
    ) -> Self {
        Self {
            kind: Kind::Stream(Stream {
                conn,
                service,
                port,
                exchange,
                workload,
            }),
        }
    }
}

/// The peered cluster whose gateway presented `id`, or why it is not one.
pub(super) fn peer<'a>(snap: &Snapshot, id: Option<&'a SpiffeId>) -> Result<Caller<'a>, String> {
    let id =
        id.ok_or("no client certificate: peer gateways must present their SPIFFE certificate")?;
    let cluster = snap
        .peer_cluster(id.trust_domain().as_str())
        .ok_or_else(|| {
            format!(
                "trust domain {} is not a peer of this cluster",
                id.trust_domain()
            )
        })?;
    if !matches!(id.kind(), IdKind::Gateway { .. }) {
        return Err(format!("{id} is not a gateway identity"));
    }
    Ok(Caller {
        cluster: cluster.clone(),
        gateway: id,
    })
}

/// The export and port `cluster` asks for, if this cluster exports them to it.
pub(super) fn exported(
    snap: &Snapshot,
    cluster: &str,
    service: &str,
    port: u16,
) -> Result<(Arc<Export>, Port), (StatusCode, String)> {
    let refused = || {
        (
            StatusCode::FORBIDDEN,
            format!("{service} is not exported to {cluster}"),
        )
    };
    let export = snap.exports.get(service).ok_or_else(refused)?;
    if !export.allows(cluster) {
        return Err(refused());
    }
    let port = export.port(port).ok_or_else(|| {
        (
            StatusCode::FORBIDDEN,
            format!("{service} does not export port {port}"),
        )
    })?;
    Ok((export.clone(), port))
}

/// Whether `snap` still allows what `grant` was admitted as: the request path's rules, in its
/// order.
pub fn judge(snap: &Snapshot, grant: &Grant) -> Result<(), Closed> {
    let closed = |cause, reason| Closed { cause, reason };
    let stream = match &grant.kind {
        Kind::Connection(conn) => {
            return peer(snap, conn.info.id.as_ref())
                .map(drop)
                .map_err(|r| closed("peer", r));
        }
        Kind::Stream(s) => s,
    };
    let caller = peer(snap, stream.conn.info.id.as_ref()).map_err(|r| closed("peer", r))?;
    let (export, port) = exported(snap, &caller.cluster, &stream.service, stream.port)
        .map_err(|(_, r)| closed("export", r))?;
    let protocol = match stream.exchange {
        Exchange::Http => None,
        Exchange::Tunnel => Some(None),
        Exchange::WebSocket => Some(Some("websocket")),
    };
    if let Some(protocol) = protocol {
        tunnel_fits(&export.name, port, protocol).map_err(|r| closed("port", r))?;
    }
    let identity = stream.workload.as_ref().map(ToString::to_string);
    let policy = snap.traffic.for_service(&export.name);
    let who = crate::policy::Caller {
        cluster: &caller.cluster,
        trust_domain: caller.gateway.trust_domain().as_str(),
        identity: identity.as_deref(),
    };
    match super::guard::authorization(policy, &who) {
        Some(Err(reason)) => Err(closed("authorization", reason)),
        None | Some(Ok(())) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use isthmus_federation::identity::transport::PeerInfo;

    use super::*;
    use crate::policy::Policies;
    use crate::table::PortProtocol;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("id")
    }

    #[test]
    fn bodies_without_a_length_or_with_a_large_one_may_stream() {
        use hyper::body::SizeHint;
        let mut unknown = SizeHint::new();
        unknown.set_lower(10);
        assert!(may_stream(&unknown), "chunked, gRPC, server-sent events");
        assert!(may_stream(&SizeHint::with_exact(SMALL_BODY + 1)));
        assert!(!may_stream(&SizeHint::with_exact(SMALL_BODY)));
        assert!(!may_stream(&SizeHint::with_exact(0)), "no body");
    }

    fn conn(gateway: &str) -> Arc<PeerConn> {
        let info = PeerInfo {
            remote: "127.0.0.1:1".parse().expect("addr"),
            id: Some(id(gateway)),
        };
        Arc::new(PeerConn::new(
            info,
            &id("spiffe://west.mesh/isthmus/gateway/gw-1"),
        ))
    }

    /// West: peered with east and south; exports `tcp-echo.demo` (tcp 9000, to every peer),
    /// `echo.demo` (http 8080, to `allowed`); with `policies`.
    fn west(
        peers: &[&str],
        allowed: &[&str],
        ports: &[(u16, PortProtocol)],
        policies: &[(&str, &str)],
    ) -> Snapshot {
        let export = |name: &str, ports: Vec<Port>, allowed: &[&str]| {
            Arc::new(Export {
                name: name.into(),
                ports,
                endpoints: Vec::new(),
                allowed_peers: allowed.iter().map(|p| (*p).into()).collect(),
            })
        };
        let ports: Vec<Port> = ports
            .iter()
            .map(|&(port, protocol)| Port { port, protocol })
            .collect();
        let mut exports = HashMap::new();
        exports.insert("tcp-echo.demo".into(), export("tcp-echo.demo", ports, &[]));
        exports.insert(
            "echo.demo".into(),
            export(
                "echo.demo",
                vec![Port {
                    port: 8080,
                    protocol: PortProtocol::Http,
                }],
                allowed,
            ),
        );
        let docs: BTreeMap<String, String> = policies
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Snapshot {
            cluster: "west".into(),
            exports,
            peers: peers
                .iter()
                .map(|p| (format!("{p}.mesh").into(), (*p).into()))
                .collect(),
            traffic: Policies::build(&docs),
            ..Snapshot::default()
        }
    }

    const TCP: &[(u16, PortProtocol)] = &[(9000, PortProtocol::Tcp)];
    const EAST_GW: &str = "spiffe://east.mesh/isthmus/gateway/gw-1";

    fn tunnel(service: &str, port: u16, exchange: Exchange, workload: Option<&str>) -> Grant {
        Grant::stream(
            conn(EAST_GW),
            service.into(),
            port,
            exchange,
            workload.map(id),
        )
    }

    fn cause(snap: &Snapshot, grant: &Grant) -> Option<&'static str> {
        judge(snap, grant).err().map(|c| c.cause)
    }

    #[test]
    fn an_unchanged_snapshot_keeps_every_exchange() {
        let snap = west(&["east", "south"], &[], TCP, &[]);
        assert_eq!(
            cause(
                &snap,
                &tunnel("tcp-echo.demo", 9000, Exchange::Tunnel, None)
            ),
            None
        );
        assert_eq!(
            cause(&snap, &tunnel("echo.demo", 8080, Exchange::WebSocket, None)),
            None
        );
        assert_eq!(
            cause(&snap, &tunnel("echo.demo", 8080, Exchange::Http, None)),
            None
        );
        assert_eq!(cause(&snap, &Grant::connection(conn(EAST_GW))), None);
    }

    #[test]
    fn a_deny_rule_closes_what_it_matches_and_nothing_else() {
        let deny_east = r#"{"services":["demo/tcp-echo","demo/echo"],"authorization":{"deny":[{"clusters":["east"]}]}}"#;
        let snap = west(&["east", "south"], &[], TCP, &[("deny-east", deny_east)]);
        let closed = judge(
            &snap,
            &tunnel("tcp-echo.demo", 9000, Exchange::Tunnel, None),
        )
        .expect_err("denied");
        assert_eq!(closed.cause, "authorization");
        assert!(
            closed.reason.starts_with("denied by policy deny-east:"),
            "the request path's own reason: {}",
            closed.reason
        );
        assert_eq!(
            cause(&snap, &tunnel("echo.demo", 8080, Exchange::WebSocket, None)),
            Some("authorization")
        );
        let south = Grant::stream(
            conn("spiffe://south.mesh/isthmus/gateway/gw-1"),
            "tcp-echo.demo".into(),
            9000,
            Exchange::Tunnel,
            None,
        );
        assert_eq!(cause(&snap, &south), None, "south is not denied");
        assert_eq!(
            cause(&snap, &Grant::connection(conn(EAST_GW))),
            None,
            "a deny closes streams, not east's connection"
        );
    }

    #[test]
    fn identity_rules_see_the_workload_the_stream_was_admitted_for() {
        let only_cart = r#"{"services":["demo/tcp-echo"],"authorization":{"default":"deny","allow":[{"identities":["spiffe://east.mesh/ns/shop/sa/cart"]}]}}"#;
        let snap = west(&["east"], &[], TCP, &[("cart", only_cart)]);
        let cart = tunnel(
            "tcp-echo.demo",
            9000,
            Exchange::Tunnel,
            Some("spiffe://east.mesh/ns/shop/sa/cart"),
        );
        let other = tunnel(
            "tcp-echo.demo",
            9000,
            Exchange::Tunnel,
            Some("spiffe://east.mesh/ns/shop/sa/x"),
        );
        assert_eq!(cause(&snap, &cart), None);
        assert_eq!(cause(&snap, &other), Some("authorization"));
        assert_eq!(
            cause(
                &snap,
                &tunnel("tcp-echo.demo", 9000, Exchange::Tunnel, None)
            ),
            Some("authorization")
        );
    }

    #[test]
    fn a_removed_export_or_port_or_peer_scope_closes_its_streams() {
        let grant = tunnel("tcp-echo.demo", 9000, Exchange::Tunnel, None);
        let mut gone = west(&["east"], &[], TCP, &[]);
        gone.exports.remove("tcp-echo.demo");
        let closed = judge(&gone, &grant).expect_err("export gone");
        assert_eq!(
            (closed.cause, closed.reason.as_str()),
            ("export", "tcp-echo.demo is not exported to east")
        );
        let other_port = west(&["east"], &[], &[(9001, PortProtocol::Tcp)], &[]);
        assert_eq!(cause(&other_port, &grant), Some("export"));
        let now_http = west(&["east"], &[], &[(9000, PortProtocol::Http)], &[]);
        assert_eq!(
            cause(&now_http, &grant),
            Some("port"),
            "a byte tunnel to an HTTP port"
        );
        let south_only = west(&["east", "south"], &["south"], TCP, &[]);
        assert_eq!(
            cause(
                &south_only,
                &tunnel("echo.demo", 8080, Exchange::Http, None)
            ),
            Some("export")
        );
    }

    #[test]
    fn a_cluster_no_longer_peered_loses_its_connections_and_streams() {
        let snap = west(&["south"], &[], TCP, &[]);
        let closed = judge(&snap, &Grant::connection(conn(EAST_GW))).expect_err("not a peer");
        assert_eq!(
            (closed.cause, closed.reason.as_str()),
            (
                "peer",
                "trust domain east.mesh is not a peer of this cluster"
            )
        );
        assert_eq!(
            cause(
                &snap,
                &tunnel("tcp-echo.demo", 9000, Exchange::Tunnel, None)
            ),
            Some("peer")
        );
    }
}
