//! Target ports (Kubernetes mode): the port the federation allocated for each imported
//! (service, port) — and for each (cluster, service, port) of the per-cluster names — which the
//! gateway listens on, on its pod IP, instead of VIPs. The derived Services' EndpointSlices point
//! there, so a client's `ClusterIP:port` arrives on the target port. Pure: wire -> table.
//!
//! Must not: bind anything (the listeners are [`crate::outbound::target_ports`]).

use std::collections::HashMap;
use std::sync::Arc;

use isthmus_federation::proto;

use super::{Import, Port, Target};

/// What one target port carries: a service (or one cluster's name of it) and one of its ports.
#[derive(Debug, Clone)]
pub struct TargetPortRoute {
    pub target: Target,
    /// The service port (and its protocol) the target port stands for.
    pub port: Port,
}

impl TargetPortRoute {
    /// `<svc>.<ns>:<port>`, or `<cluster>.<svc>.<ns>:<port>` for a per-cluster name.
    pub fn describe(&self) -> String {
        match &self.target.pinned {
            Some(c) => format!("{c}.{}:{}", self.target.import.name, self.port.port),
            None => format!("{}:{}", self.target.import.name, self.port.port),
        }
    }
}

/// One route's target ports as `(target port, pinned cluster, service port)`. Entries that
/// cannot be served are left out: a port 0 or above 65535, a service port the route does not
/// have, a cluster that does not serve it.
pub(super) fn of_route(
    import: &Import,
    wire: &[proto::TargetPort],
) -> Vec<(u16, Option<Arc<str>>, Port)> {
    wire.iter()
        .filter_map(|t| {
            let target = u16::try_from(t.target_port).ok().filter(|p| *p != 0)?;
            let port = import.port(u16::try_from(t.port).ok()?)?;
            let pinned = if t.cluster.is_empty() {
                None
            } else {
                let b = import.backends.iter().find(|b| *b.cluster == *t.cluster)?;
                Some(b.cluster.clone())
            };
            Some((target, pinned, port))
        })
        .collect()
}

/// Adds one route's target ports to `table`. The federation gives each port to one (name, port)
/// only; should two routes claim one anyway (a half-applied change), the lower service name keeps
/// it, whatever order the routes come in.
pub(super) fn insert(
    table: &mut HashMap<u16, TargetPortRoute>,
    import: &Arc<Import>,
    ports: &[(u16, Option<Arc<str>>, Port)],
) {
    for (target, pinned, port) in ports {
        let route = TargetPortRoute {
            target: Target {
                import: import.clone(),
                pinned: pinned.clone(),
            },
            port: *port,
        };
        match table.get(target) {
            Some(held) if held.target.import.name <= import.name => {}
            _ => {
                table.insert(*target, route);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PortProtocol, TableBuilder};
    use isthmus_federation::proto::{self, Protocol};

    fn tp(port: u32, target: u32, cluster: &str) -> proto::TargetPort {
        proto::TargetPort {
            port,
            target_port: target,
            cluster: cluster.into(),
        }
    }

    fn route(name: &str, targets: Vec<proto::TargetPort>) -> proto::ImportedRoute {
        let backend = |c: &str| proto::ClusterBackend {
            cluster: c.into(),
            trust_domain: format!("{c}.mesh"),
            ..Default::default()
        };
        proto::ImportedRoute {
            key: Some(proto::ServiceKey {
                namespace: "shop".into(),
                name: name.into(),
            }),
            ports: vec![
                proto::ServicePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: Protocol::Http as i32,
                },
                proto::ServicePort {
                    name: "db".into(),
                    port: 5432,
                    protocol: Protocol::Tcp as i32,
                },
            ],
            clusters: vec![backend("west"), backend("south")],
            target_ports: targets,
            ..Default::default()
        }
    }

    fn msg(version: u64, imports: Vec<proto::ImportedRoute>) -> proto::GatewayConfig {
        proto::GatewayConfig {
            version,
            snapshot: true,
            cluster: "east".into(),
            imports,
            ..Default::default()
        }
    }

    /// (target port, what it carries) for every target port of `snap`, sorted.
    fn table(snap: &super::super::Snapshot) -> Vec<(u16, String, PortProtocol)> {
        let mut out: Vec<_> = snap
            .target_ports
            .iter()
            .map(|(t, r)| (*t, r.describe(), r.port.protocol))
            .collect();
        out.sort_by_key(|e| e.0);
        out
    }

    #[test]
    fn each_target_port_carries_its_service_port_or_one_clusters_name() {
        let snap = TableBuilder::default()
            .apply(msg(
                1,
                vec![route(
                    "cart",
                    vec![
                        tp(8080, 15100, ""),
                        tp(5432, 15101, ""),
                        tp(8080, 15102, "west"),
                        tp(5432, 15103, "south"),
                    ],
                )],
            ))
            .expect("complete");
        assert_eq!(
            table(&snap),
            [
                (15100, "cart.shop:8080".into(), PortProtocol::Http),
                (15101, "cart.shop:5432".into(), PortProtocol::Tcp),
                (15102, "west.cart.shop:8080".into(), PortProtocol::Http),
                (15103, "south.cart.shop:5432".into(), PortProtocol::Tcp),
            ]
        );
        let west = &snap.target_ports[&15102];
        assert_eq!(west.target.pinned.as_deref(), Some("west"));
        assert!(snap.target_ports[&15100].target.pinned.is_none());
    }

    #[test]
    fn entries_that_cannot_be_served_are_left_out() {
        let snap = TableBuilder::default()
            .apply(msg(
                1,
                vec![route(
                    "cart",
                    vec![
                        tp(8080, 0, ""),          // no port
                        tp(8080, 70_000, ""),     // not a port
                        tp(9999, 15100, ""),      // the service has no port 9999
                        tp(8080, 15101, "north"), // north does not serve it
                        tp(5432, 15102, ""),
                    ],
                )],
            ))
            .expect("complete");
        assert_eq!(
            table(&snap),
            [(15102, "cart.shop:5432".into(), PortProtocol::Tcp)]
        );
    }

    #[test]
    fn ports_follow_deltas_and_a_doubly_claimed_port_goes_to_the_lower_name() {
        let mut b = TableBuilder::default();
        b.apply(msg(
            1,
            vec![
                route("cart", vec![tp(8080, 15100, "")]),
                route("pay", vec![tp(8080, 15101, "")]),
            ],
        ))
        .expect("snapshot");
        // pay's port moves, cart's import ends.
        let snap = b
            .apply(proto::GatewayConfig {
                version: 2,
                cluster: "east".into(),
                imports: vec![route("pay", vec![tp(8080, 15105, "")])],
                removed_imports: vec![proto::ServiceKey {
                    namespace: "shop".into(),
                    name: "cart".into(),
                }],
                ..Default::default()
            })
            .expect("delta");
        assert_eq!(
            table(&snap),
            [(15105, "pay.shop:8080".into(), PortProtocol::Http)]
        );
        // Two routes claim 15100: whatever the map's order, cart keeps it.
        for _ in 0..8 {
            let snap = TableBuilder::default()
                .apply(msg(
                    1,
                    vec![
                        route("pay", vec![tp(8080, 15100, "")]),
                        route("cart", vec![tp(5432, 15100, "")]),
                    ],
                ))
                .expect("snapshot");
            assert_eq!(
                table(&snap),
                [(15100, "cart.shop:5432".into(), PortProtocol::Tcp)]
            );
        }
    }
}
