//! Mesh view -> gateway config messages. Pure: a snapshot of one view, or the delta between two
//! views (routes and exports compared by pointer, then value).

use crate::mesh::changed_keys;
use crate::mesh::{MeshView, Route};
use crate::model::service::{key_to_proto, port_to_proto};
use crate::model::{ExportedService, ServiceKey};
use crate::proto;

fn route_to_proto(r: &Route) -> proto::ImportedRoute {
    proto::ImportedRoute {
        key: Some(key_to_proto(&r.key)),
        vips: r.vips.addrs().map(|a| a.to_string()).collect(),
        cluster_vips: r
            .cluster_vips
            .iter()
            .filter_map(|(c, a)| a.addrs().next().map(|ip| (c.to_string(), ip.to_string())))
            .collect(),
        ports: r.ports.iter().map(port_to_proto).collect(),
        clusters: r
            .clusters
            .iter()
            .map(|c| proto::ClusterBackend {
                cluster: c.place.cluster.to_string(),
                trust_domain: c.place.trust_domain.to_string(),
                region: c.place.region.to_string(),
                zone: c.place.zone_text(),
                gateways: c.gateways.iter().map(|g| g.to_proto()).collect(),
                summary: Some(c.summary.to_proto()),
                age_ms: u64::try_from(crate::node::now_ms().saturating_sub(c.confirmed_at_ms))
                    .unwrap_or(0),
                stale: c.stale,
            })
            .collect(),
        target_ports: target_ports_to_proto(r),
    }
}

/// The route's target ports on Kubernetes (none elsewhere).
fn target_ports_to_proto(r: &Route) -> Vec<proto::TargetPort> {
    let Some(k) = &r.kube else {
        return Vec::new();
    };
    let any = k
        .target_ports
        .iter()
        .map(|(port, target)| proto::TargetPort {
            port: u32::from(*port),
            target_port: u32::from(*target),
            cluster: String::new(),
        });
    let pinned = k
        .cluster_target_ports
        .iter()
        .map(|(c, port, target)| proto::TargetPort {
            port: u32::from(*port),
            target_port: u32::from(*target),
            cluster: c.to_string(),
        });
    any.chain(pinned).collect()
}

fn export_to_proto(e: &ExportedService) -> proto::LocalExport {
    proto::LocalExport {
        key: Some(key_to_proto(&e.key)),
        ports: e.ports.iter().map(port_to_proto).collect(),
        endpoints: e
            .endpoints
            .iter()
            .map(|ep| proto::Endpoint {
                address: ep.address.to_string(),
                ready: ep.ready,
                zone: ep
                    .zone
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                weight: ep.weight,
            })
            .collect(),
        allowed_peers: e
            .export_to
            .iter()
            .flatten()
            .map(ToString::to_string)
            .collect(),
    }
}

fn header(view: &MeshView, snapshot: bool) -> proto::GatewayConfig {
    proto::GatewayConfig {
        version: view.version,
        snapshot,
        cluster: view.me.cluster.to_string(),
        trust_domain: view.me.trust_domain.to_string(),
        region: view.me.region.to_string(),
        zone: view.me.zone_text(),
        bundles: view.bundles.iter().map(|b| b.to_proto()).collect(),
        peers: view
            .peers
            .iter()
            .map(|p| proto::PeerInfo {
                cluster: p.place.cluster.to_string(),
                trust_domain: p.place.trust_domain.to_string(),
                region: p.place.region.to_string(),
                zone: p.place.zone_text(),
            })
            .collect(),
        policies: view
            .policies
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// Routes (and exports) per message: keeps each message, and the memory to build and encode
/// it, small. A view of 100,000 routes is never one message, neither as a snapshot nor as the
/// delta that follows a peer's first snapshot.
pub const ROUTES_PER_MESSAGE: usize = 2_000;

/// What one config message carries besides its header: keys of a view, in the order parts are
/// filled (removals first, so a part never installs what a later part of the same version
/// removes — keys are disjoint anyway).
struct Items<'a> {
    view: &'a MeshView,
    removed_exports: Vec<ServiceKey>,
    exports: Vec<&'a ExportedService>,
    removed_routes: Vec<ServiceKey>,
    routes: Vec<&'a Route>,
}

impl Items<'_> {
    fn len(&self) -> usize {
        self.removed_exports.len()
            + self.exports.len()
            + self.removed_routes.len()
            + self.routes.len()
    }

    /// Part `i` of `parts`: items `[i * N, (i + 1) * N)` of the concatenated lists; the first part
    /// carries `first` (the header), the others only the version.
    fn part(
        &self,
        i: usize,
        parts: usize,
        first: impl FnOnce() -> proto::GatewayConfig,
        snapshot: bool,
    ) -> proto::GatewayConfig {
        let mut c = if i == 0 {
            first()
        } else {
            proto::GatewayConfig {
                version: self.view.version,
                snapshot,
                ..Default::default()
            }
        };
        let (lo, hi) = (i * ROUTES_PER_MESSAGE, (i + 1) * ROUTES_PER_MESSAGE);
        let mut at = 0;
        let mut take = |len: usize| {
            let range = lo.clamp(at, at + len) - at..hi.clamp(at, at + len) - at;
            at += len;
            range
        };
        c.removed_exports = self.removed_exports[take(self.removed_exports.len())]
            .iter()
            .map(key_to_proto)
            .collect();
        c.exports = self.exports[take(self.exports.len())]
            .iter()
            .map(|e| export_to_proto(e))
            .collect();
        c.removed_imports = self.removed_routes[take(self.removed_routes.len())]
            .iter()
            .map(key_to_proto)
            .collect();
        c.imports = self.routes[take(self.routes.len())]
            .iter()
            .map(|r| route_to_proto(r))
            .collect();
        c.more = i + 1 < parts;
        c
    }

    fn parts(&self) -> usize {
        self.len().div_ceil(ROUTES_PER_MESSAGE).max(1)
    }
}

/// The whole view as a snapshot, in parts: the first carries the header; every part but the
/// last has `more = true`. Parts are built one at a time, as the caller asks for them.
pub fn snapshot_parts(view: &MeshView) -> impl Iterator<Item = proto::GatewayConfig> + '_ {
    let items = Items {
        view,
        removed_exports: Vec::new(),
        exports: view.exports.values().map(|e| &**e).collect(),
        removed_routes: Vec::new(),
        routes: view.routes.values().map(|r| &**r).collect(),
    };
    let parts = items.parts();
    (0..parts).map(move |i| items.part(i, parts, || header(view, true), true))
}

/// The change from `old` to `new` as delta parts (the first carries the header; every part but
/// the last has `more = true`), built one at a time. `None` when nothing a gateway sees changed.
pub fn delta_parts<'a>(
    old: &MeshView,
    new: &'a MeshView,
) -> Option<impl Iterator<Item = proto::GatewayConfig> + 'a> {
    let (routes, removed_routes) = changed_keys(&old.routes, &new.routes);
    let (exports, removed_exports) = changed_keys(&old.exports, &new.exports);
    let bundles_changed = old.bundles != new.bundles;
    let peers_changed = old
        .peers
        .iter()
        .map(|p| &p.place)
        .ne(new.peers.iter().map(|p| &p.place));
    let policies_changed = old.policies != new.policies;
    if routes.is_empty()
        && removed_routes.is_empty()
        && exports.is_empty()
        && removed_exports.is_empty()
        && !bundles_changed
        && !peers_changed
        && !policies_changed
    {
        return None;
    }
    let items = Items {
        view: new,
        removed_exports,
        exports: exports
            .iter()
            .filter_map(|k| new.exports.get(k))
            .map(|e| &**e)
            .collect(),
        removed_routes,
        routes: routes
            .iter()
            .filter_map(|k| new.routes.get(k))
            .map(|r| &**r)
            .collect(),
    };
    let parts = items.parts();
    Some((0..parts).map(move |i| items.part(i, parts, || header(new, false), false)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mesh::ClusterPlace;
    use crate::model::{ClusterName, ServiceKey};

    fn view(routes: usize) -> MeshView {
        let me = ClusterPlace {
            cluster: ClusterName::new("east").expect("c"),
            trust_domain: "east.mesh".parse().expect("td"),
            region: "r1".parse().expect("region"),
            zone: None,
        };
        let mut v = MeshView::empty(me.clone());
        v.version = 9;
        v.routes = (0..routes)
            .map(|i| {
                let key = ServiceKey::parse(&format!("ns/s{i}")).expect("key");
                let route = Route {
                    key: key.clone(),
                    defined_by: me.cluster.clone(),
                    ports: vec![],
                    headless: false,
                    clusters: vec![],
                    conflicts: vec![],
                    vips: Default::default(),
                    cluster_vips: vec![],
                    kube: None,
                };
                (key, Arc::new(route))
            })
            .collect();
        v
    }

    #[test]
    fn snapshots_come_in_bounded_parts() {
        let v = view(2 * ROUTES_PER_MESSAGE + 500);
        let parts: Vec<_> = snapshot_parts(&v).collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts.iter().map(|p| p.more).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert!(parts.iter().all(|p| p.snapshot && p.version == 9));
        assert!(parts.iter().all(|p| p.imports.len() <= ROUTES_PER_MESSAGE));
        assert_eq!(parts[0].cluster, "east");
        assert!(parts[1].cluster.is_empty(), "the header travels once");
        let mut names: Vec<String> = parts
            .iter()
            .flat_map(|p| p.imports.iter())
            .filter_map(|r| r.key.as_ref().map(|k| k.name.clone()))
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            2 * ROUTES_PER_MESSAGE + 500,
            "every route exactly once"
        );
        // An empty view is still one (complete) snapshot message.
        let empty: Vec<_> = snapshot_parts(&view(0)).collect();
        assert_eq!(empty.len(), 1);
        assert!(!empty[0].more && empty[0].snapshot);
    }

    #[test]
    fn large_deltas_come_in_bounded_parts() {
        let old = view(10);
        let mut new = view(3 * ROUTES_PER_MESSAGE + 7);
        new.version = 10;
        // Routes 0-9 stay (same value), 3 are removed, the rest are new.
        for i in 0..3 {
            new.routes
                .remove(&ServiceKey::parse(&format!("ns/s{i}")).expect("key"));
        }
        let parts: Vec<_> = delta_parts(&old, &new).expect("a change").collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts.iter().map(|p| p.more).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert!(parts.iter().all(|p| !p.snapshot && p.version == 10));
        assert!(
            parts
                .iter()
                .all(|p| p.imports.len() + p.removed_imports.len() <= ROUTES_PER_MESSAGE)
        );
        assert_eq!(parts[0].cluster, "east");
        assert!(parts[1].cluster.is_empty(), "the header travels once");
        let mut removed: Vec<String> = parts
            .iter()
            .flat_map(|p| p.removed_imports.iter())
            .map(|k| k.name.clone())
            .collect();
        removed.sort();
        assert_eq!(removed, ["s0", "s1", "s2"]);
        let installed = parts.iter().map(|p| p.imports.len()).sum::<usize>();
        assert_eq!(installed, 3 * ROUTES_PER_MESSAGE + 7 - 10);
        // Nothing changed: no message at all.
        assert!(delta_parts(&new, &new).is_none());
    }
}
