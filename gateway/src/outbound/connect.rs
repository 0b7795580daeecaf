//! A local client's `CONNECT` (HTTP/1.1 or HTTP/2, on the proxy port, a VIP listener, or inside
//! a tunnel): what it becomes.
//!
//! - To a `tcp` port: a byte tunnel to the service (an HTTP/2 CONNECT stream through a peer
//!   gateway, or a TCP connection to a local endpoint).
//! - To an HTTP port (`http`, `http2`, `grpc`): never a byte tunnel, which would carry whatever
//!   the client wrote — `x-forwarded-client-cert`, `x-isthmus-source-cluster` included — to the
//!   service in another cluster unread. The gateway answers 200 and serves HTTP itself inside
//!   the tunnel (HTTP/1.1, or HTTP/2 with prior knowledge, told apart by the preface as on a VIP
//!   listener), and every request in it takes the normal outbound path bound to that service and
//!   port ([`Origin::Tunnel`]): header hygiene, identity, policy, retries and the access log
//!   apply to each. gRPC clients behind an HTTP proxy (`grpc.http_proxy`) work this way.
//! - A VIP listener, or a tunnel, stands for one service and port: a CONNECT naming anything
//!   else is refused (403, with the reason in the body and the access log); the proxy port
//!   takes CONNECT to any imported service. Inside a tunnel served as HTTP, a CONNECT is
//!   refused even to the tunnel's own service: tunnels never nest.
//!
//! Must not: open a byte tunnel to an HTTP port.

use std::net::IpAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{LocalClient, Origin, Outbound, Resolved, TunnelTarget, split_authority};
use crate::accesslog::Entry;
use crate::body::{self, Body};
use crate::serve::{Hold, http_builder};
use crate::table::{Snapshot, Target};

/// Where a CONNECT arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// The proxy port: CONNECT to any imported service.
    Proxy,
    /// A VIP or target-port listener: it stands for one service and port.
    Vip,
    /// Inside a tunnel served as HTTP: bound like a VIP, and never a tunnel again.
    Tunnel,
}

impl Arrival {
    pub(super) fn of(origin: &Origin) -> Self {
        match origin {
            Origin::Proxy => Arrival::Proxy,
            Origin::Tunnel(_) => Arrival::Tunnel,
            Origin::Vip(..) | Origin::TargetPort(_) => Arrival::Vip,
        }
    }
}

/// What a CONNECT becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tunnel {
    /// A `tcp` port: bytes both ways, untouched.
    Bytes,
    /// An HTTP port: the gateway serves HTTP inside the tunnel, request by request.
    Http,
}

/// Decides a CONNECT to `authority`, already resolved to `resolved`. `bound`: it arrived on a
/// connection that stands for `resolved`'s service and port (a VIP listener, a tunnel), and must
/// name that service (its name, with or without the zone, the per-cluster name when pinned, or
/// a VIP of it) and that port. Refused: (status, reason).
pub(super) fn decide(
    snap: &Snapshot,
    bound: bool,
    resolved: &Resolved,
    authority: Option<&str>,
) -> Result<Tunnel, (StatusCode, String)> {
    let import = &resolved.target.import;
    if bound {
        let own = match &resolved.target.pinned {
            Some(cluster) => format!("{cluster}.{}:{}", import.name, resolved.port),
            None => format!("{}:{}", import.name, resolved.port),
        };
        match authority {
            Some(a) if names(snap, &resolved.target, resolved.port, a) => {}
            Some(a) => {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!(
                        "CONNECT {a} refused: this address serves {own} only (send CONNECT for \
                         other services to the gateway's proxy port)"
                    ),
                ));
            }
            None => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("a CONNECT needs an authority (host:port): this address serves {own}"),
                ));
            }
        }
    }
    let port = import.port(resolved.port).ok_or_else(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} has no port {} any more", import.name, resolved.port),
        )
    })?;
    Ok(if port.protocol.is_http() {
        Tunnel::Http
    } else {
        Tunnel::Bytes
    })
}

/// Whether `authority` (`host:port`) names `target` on `port`.
fn names(snap: &Snapshot, target: &Target, port: u16, authority: &str) -> bool {
    let (host, asked) = split_authority(authority);
    if asked != Some(port) {
        return false;
    }
    let named = match host.parse::<IpAddr>() {
        Ok(ip) => snap.vips.get(&ip).cloned(),
        Err(_) => snap.resolve_host(host),
    };
    named.is_some_and(|t| t.import.name == target.import.name && t.pinned == target.pinned)
}

impl Outbound {
    /// A local client's CONNECT (not an extended one): refused, a byte tunnel, or HTTP served
    /// inside the tunnel (see the module docs).
    pub(super) async fn connect(
        self: Arc<Self>,
        snap: &Snapshot,
        arrival: Arrival,
        client: LocalClient,
        resolved: Resolved,
        mut req: Request<Incoming>,
        mut entry: Entry,
    ) -> Response<Body> {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            });
        entry.note(|e| e.path = authority.clone());
        let bound = arrival != Arrival::Proxy;
        let tunnel = match decide(snap, bound, &resolved, authority.as_deref()) {
            Ok(t) => t,
            Err((status, reason)) => {
                entry.protocol = "tcp";
                let refused = self.refuse(&mut entry, status, reason);
                entry.finish();
                return refused;
            }
        };
        if tunnel == Tunnel::Bytes {
            entry.protocol = "tcp";
            return self.proxy_connect(snap, resolved, req, entry).await;
        }
        if arrival == Arrival::Tunnel {
            // Another HTTP server inside this one would serve nothing new, and tunnels nested
            // without end would multiply tasks and buffers behind one counted connection.
            let reason = format!(
                "CONNECT inside a tunnel refused: this tunnel already reaches {}:{}; send the \
                 requests themselves",
                resolved.target.import.name, resolved.port
            );
            let refused = self.refuse(&mut entry, StatusCode::FORBIDDEN, reason);
            entry.finish();
            return refused;
        }
        // HTTP served inside: this line records the tunnel; each request in it has its own.
        let target = TunnelTarget {
            service: resolved.target.import.name.clone(),
            pinned: resolved.target.pinned.clone(),
            port: resolved.port,
            authority: authority.unwrap_or_else(|| resolved.authority.clone()),
        };
        entry.reason = Some(format!(
            "{} port {} speaks HTTP: served as HTTP inside the tunnel, each request logged on its own",
            target.service, target.port
        ));
        entry.status = 200;
        self.metrics.request(entry.side, 200);
        let hold = Hold::take(&mut req);
        let upgrade = hyper::upgrade::on(&mut req);
        serve_inside(self.clone(), upgrade, Arc::new(target), client, entry, hold);
        Response::new(body::empty())
    }
}

/// Serves HTTP on the client's side of an HTTP CONNECT once it is upgraded, with the same
/// protections as a local listener (the HTTP/1 smuggling guard and header-read timeout, every
/// limit, idle timeout and drain), in a task of its own; the tunnel's access-log line is written
/// when it ends. A plain function, not `async`: the task's future holds the request path's, which
/// holds this one's caller.
fn serve_inside(
    outbound: Arc<Outbound>,
    upgrade: hyper::upgrade::OnUpgrade,
    target: Arc<TunnelTarget>,
    client: LocalClient,
    mut entry: Entry,
    hold: Option<Hold>,
) {
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let builder = http_builder(&outbound.limits, false);
                let drain = outbound.drain.clone();
                super::listeners::serve_local(
                    outbound,
                    TokioIo::new(upgraded),
                    Origin::Tunnel(target),
                    client,
                    &builder,
                    &drain,
                )
                .await;
            }
            Err(e) => entry.reason = Some(format!("client upgrade failed: {e}")),
        }
        drop(hold);
        entry.finish();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Backend, Import, Port, PortProtocol};

    fn import(name: &str, ports: &[(u16, PortProtocol)]) -> Arc<Import> {
        let ports = ports
            .iter()
            .map(|&(port, protocol)| Port { port, protocol })
            .collect();
        let backends = ["west", "south"]
            .map(|c| Backend::for_test(c, "r", "10.0.0.1:15443", 1, 1, false))
            .into();
        Arc::new(Import::new(name.into(), ports, backends))
    }

    /// echo.demo (http 8080, grpc 50051) on 127.1.0.1 and, pinned to west, on 127.1.0.3;
    /// tcp-echo.demo (tcp 9000) on 127.1.0.2; each served by west and south.
    fn snapshot() -> Snapshot {
        let echo = import(
            "echo.demo",
            &[(8080, PortProtocol::Http), (50051, PortProtocol::Grpc)],
        );
        let tcp = import("tcp-echo.demo", &[(9000, PortProtocol::Tcp)]);
        let h2 = import("h2.demo", &[(80, PortProtocol::Http2)]);
        let mut snap = Snapshot::default();
        for (ip, i, pinned) in [
            ("127.1.0.1", &echo, None),
            ("127.1.0.2", &tcp, None),
            ("127.1.0.3", &echo, Some("west")),
        ] {
            snap.vips.insert(
                ip.parse().expect("ip"),
                Target {
                    import: i.clone(),
                    pinned: pinned.map(Into::into),
                },
            );
        }
        for i in [echo, tcp, h2] {
            snap.imports.insert(i.name.clone(), i);
        }
        snap
    }

    fn resolved(snap: &Snapshot, service: &str, port: u16) -> Resolved {
        Resolved {
            target: Target {
                import: snap.imports[service].clone(),
                pinned: None,
            },
            port,
            authority: String::new(),
        }
    }

    #[test]
    fn only_tcp_ports_become_byte_tunnels() {
        let snap = snapshot();
        for (service, port, want) in [
            ("echo.demo", 8080, Tunnel::Http),
            ("echo.demo", 50051, Tunnel::Http),
            ("h2.demo", 80, Tunnel::Http),
            ("tcp-echo.demo", 9000, Tunnel::Bytes),
        ] {
            let r = resolved(&snap, service, port);
            let authority = format!("{service}.svc.clusterset.local:{port}");
            // From the proxy port, and on the service's own VIP or tunnel.
            for bound in [false, true] {
                assert_eq!(
                    decide(&snap, bound, &r, Some(&authority)),
                    Ok(want),
                    "{service}:{port} bound={bound}"
                );
            }
        }
        let gone = resolved(&snap, "echo.demo", 9999);
        assert_eq!(
            decide(&snap, false, &gone, Some("echo.demo:9999"))
                .map_err(|e| e.0)
                .expect_err("no such port"),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn a_vip_or_tunnel_accepts_connect_only_to_its_own_service_and_port() {
        let snap = snapshot();
        let echo = resolved(&snap, "echo.demo", 8080);
        for own in [
            "echo.demo:8080",
            "echo.demo.svc.clusterset.local:8080",
            "ECHO.demo.svc.clusterset.local.:8080",
            "127.1.0.1:8080",
        ] {
            assert_eq!(
                decide(&snap, true, &echo, Some(own)),
                Ok(Tunnel::Http),
                "{own}"
            );
        }
        for foreign in [
            "tcp-echo.demo:9000",
            "tcp-echo.demo:8080",
            "echo.demo:50051",
            "echo.demo",
            "127.1.0.2:8080",
            "127.0.0.1:8080",
            "example.com:8080",
            "west.echo.demo:8080",
            "127.1.0.3:8080",
        ] {
            let (status, reason) = decide(&snap, true, &echo, Some(foreign)).expect_err(foreign);
            assert_eq!(status, StatusCode::FORBIDDEN, "{foreign}");
            assert!(
                reason.contains(foreign) && reason.contains("serves echo.demo:8080 only"),
                "{foreign}: {reason}"
            );
        }
        assert_eq!(
            decide(&snap, true, &echo, None).map_err(|e| e.0),
            Err(StatusCode::BAD_REQUEST)
        );
        // A per-cluster VIP stands for its per-cluster name only.
        let west = Resolved {
            target: Target {
                pinned: Some("west".into()),
                ..echo.target.clone()
            },
            ..resolved(&snap, "echo.demo", 8080)
        };
        for own in [
            "west.echo.demo:8080",
            "west.echo.demo.svc.clusterset.local:8080",
            "127.1.0.3:8080",
        ] {
            assert_eq!(
                decide(&snap, true, &west, Some(own)),
                Ok(Tunnel::Http),
                "{own}"
            );
        }
        for foreign in ["echo.demo:8080", "south.echo.demo:8080", "127.1.0.1:8080"] {
            let (status, reason) = decide(&snap, true, &west, Some(foreign)).expect_err(foreign);
            assert_eq!(status, StatusCode::FORBIDDEN, "{foreign}");
            assert!(
                reason.contains("serves west.echo.demo:8080 only"),
                "{foreign}: {reason}"
            );
        }
        // The proxy port stands for no one service: the CONNECT's own authority chose it.
        assert_eq!(
            decide(&snap, false, &echo, Some("anything:1")),
            Ok(Tunnel::Http)
        );
    }
}
