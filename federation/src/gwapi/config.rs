//! Mesh view -> gateway config messages. Pure: a snapshot of one view, or the delta between two
//! views (routes and exports compared by pointer, then value).

use crate::mesh::view::changed_keys;
use crate::mesh::{MeshView, Route};
use crate::model::ExportedService;
use crate::model::service::{key_to_proto, port_to_proto};
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
    }
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

/// Routes per message of a snapshot: keeps each message (and the memory to build it) small.
pub const ROUTES_PER_MESSAGE: usize = 2_000;

/// The whole view as a snapshot, in parts: the first carries the header, the exports and the
/// first routes; every part but the last has `more = true`. Parts are built one at a time, as
/// the caller asks for them, so a 100,000-route view never exists as one message.
pub fn snapshot_parts(view: &MeshView) -> impl Iterator<Item = proto::GatewayConfig> + '_ {
    let routes: Vec<&std::sync::Arc<Route>> = view.routes.values().collect();
    let chunks = routes.len().div_ceil(ROUTES_PER_MESSAGE).max(1);
    (0..chunks).map(move |i| {
        let mut c = if i == 0 {
            let mut h = header(view, true);
            h.exports = view.exports.values().map(|e| export_to_proto(e)).collect();
            h
        } else {
            proto::GatewayConfig {
                version: view.version,
                snapshot: true,
                ..Default::default()
            }
        };
        let end = ((i + 1) * ROUTES_PER_MESSAGE).min(routes.len());
        c.imports = routes[i * ROUTES_PER_MESSAGE..end]
            .iter()
            .map(|r| route_to_proto(r))
            .collect();
        c.more = i + 1 < chunks;
        c
    })
}

/// `None` when nothing a gateway sees changed.
pub fn delta(old: &MeshView, new: &MeshView) -> Option<proto::GatewayConfig> {
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
    let mut c = header(new, false);
    c.imports = routes
        .iter()
        .filter_map(|k| new.routes.get(k))
        .map(|r| route_to_proto(r))
        .collect();
    c.removed_imports = removed_routes.iter().map(key_to_proto).collect();
    c.exports = exports
        .iter()
        .filter_map(|k| new.exports.get(k))
        .map(|e| export_to_proto(e))
        .collect();
    c.removed_exports = removed_exports.iter().map(key_to_proto).collect();
    Some(c)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
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
                };
                (key, Arc::new(route))
            })
            .collect::<BTreeMap<_, _>>();
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
}
