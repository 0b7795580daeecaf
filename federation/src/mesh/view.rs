//! The merged mesh view: for every clusterset service, which clusters serve it (with their
//! gateways, region/zone and summary), its stable VIPs, plus our own exports with endpoints.
//! It is what gateways subscribe to and what DNS answers from.
//!
//! Immutable once published (`Arc<MeshView>` on a watch channel). Its route and export maps are
//! [`ShardedMap`]s shared with the state: publishing copies no map, and a subscriber diffs two
//! views shard by shard (skipping shared shards), then by pointer (routes that did not change
//! keep the same `Arc`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::identity::{TrustBundle, TrustDomain};
use crate::mesh::sharded::ShardedMap;
use crate::model::{
    ClusterExport, ClusterName, ExportedService, ImportRule, Region, ServiceKey, ServicePort,
    ServiceSummary, Zone, import_allowed, merge,
};
use crate::peering::update::GatewayAddr;
use crate::vip::VipAssignment;

/// Where a cluster is and how to reach its gateways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterPlace {
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    pub region: Region,
    pub zone: Option<Zone>,
}

impl ClusterPlace {
    /// The zone as the wire carries it (empty when unset).
    pub fn zone_text(&self) -> String {
        self.zone
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

/// One cluster serving a route. Placement, gateway list and summary are shared with the peer's
/// catalog (and between routes), not copied per route: a federation may hold 100,000 routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterRoute {
    pub place: Arc<ClusterPlace>,
    pub local: bool,
    pub gateways: Arc<[GatewayAddr]>,
    pub summary: Arc<ServiceSummary>,
    /// Our peering stream to that cluster is down (its catalog is last-known, not live).
    pub stale: bool,
    /// When its catalog was last confirmed (unix ms).
    pub confirmed_at_ms: i64,
}

/// One clusterset service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub key: ServiceKey,
    pub defined_by: ClusterName,
    pub ports: Vec<ServicePort>,
    pub headless: bool,
    pub clusters: Vec<ClusterRoute>,
    pub conflicts: Vec<ClusterName>,
    pub vips: VipAssignment,
    /// The VIP of each `<cluster>.<svc>.<ns>` name, in `clusters` order (a small vector, not a
    /// map: most services are served by a handful of clusters).
    pub cluster_vips: Vec<(ClusterName, VipAssignment)>,
    /// On Kubernetes with imports on: the local face the import writer gave this route (its
    /// target ports and the ClusterIPs of its derived Services). `None` elsewhere, and until
    /// the writer has allocated its target ports.
    pub kube: Option<Arc<KubeAddrs>>,
}

/// A route's local face on Kubernetes: the target port of each (name, service port) the
/// gateways serve it on, and the ClusterIP of each derived Service (which DNS answers instead
/// of the VIP).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KubeAddrs {
    /// `(service port, target port)` for `<svc>.<ns>`, in the route's port order.
    pub target_ports: Vec<(u16, u16)>,
    /// `(cluster, service port, target port)` for `<cluster>.<svc>.<ns>`.
    pub cluster_target_ports: Vec<(ClusterName, u16, u16)>,
    /// The ClusterIP of the derived Service of `<svc>.<ns>`, once the API server gave one.
    pub cluster_ip: Option<std::net::IpAddr>,
    /// The ClusterIP of the derived Service of each `<cluster>.<svc>.<ns>`.
    pub cluster_ips: Vec<(ClusterName, std::net::IpAddr)>,
}

/// What the merge needs to know about a peer.
#[derive(Debug, Clone)]
pub struct PeerSide<'a> {
    pub place: &'a Arc<ClusterPlace>,
    pub services: &'a BTreeMap<ServiceKey, Arc<ServiceSummary>>,
    pub gateways: Arc<[GatewayAddr]>,
    pub stale: bool,
    pub confirmed_at_ms: i64,
}

/// What the merge needs to know about this cluster.
#[derive(Debug, Clone)]
pub struct LocalSide<'a> {
    pub me: &'a Arc<ClusterPlace>,
    pub exports: &'a ExportMap,
    pub zone: &'a Zone,
    pub gateways: Arc<[GatewayAddr]>,
}

/// Merges one key across our exports and the imports the rules allow. `None`: nobody (allowed)
/// serves it. VIPs are filled in by the caller.
pub fn merge_key(
    key: &ServiceKey,
    local: &LocalSide<'_>,
    peers: &[PeerSide<'_>],
    rules: &[ImportRule],
    now_ms: i64,
) -> Option<Route> {
    let mut sides: Vec<ClusterRoute> = Vec::new();
    if let Some(export) = local.exports.get(key) {
        sides.push(ClusterRoute {
            place: local.me.clone(),
            local: true,
            gateways: local.gateways.clone(),
            summary: Arc::new(export.summary(local.zone)),
            stale: false,
            confirmed_at_ms: now_ms,
        });
    }
    for p in peers {
        let Some(summary) = p.services.get(key) else {
            continue;
        };
        if !import_allowed(rules, &p.place.cluster, key) {
            continue;
        }
        sides.push(ClusterRoute {
            place: p.place.clone(),
            local: false,
            gateways: p.gateways.clone(),
            summary: summary.clone(),
            stale: p.stale,
            confirmed_at_ms: p.confirmed_at_ms,
        });
    }
    let exports: Vec<ClusterExport<'_>> = sides
        .iter()
        .map(|r| ClusterExport {
            cluster: &r.place.cluster,
            summary: &r.summary,
        })
        .collect();
    let merged = merge(key, &exports)?;
    let spec = sides
        .iter()
        .find(|r| r.place.cluster == merged.defined_by)
        .map(|r| r.summary.clone())?;
    // Exactly as long as needed (a filtered `collect` reserves room for four): a federation may
    // hold 100,000 routes.
    let mut clusters = sides;
    clusters.retain(|r| !merged.conflicts.contains(&r.place.cluster));
    clusters.shrink_to_fit();
    Some(Route {
        key: key.clone(),
        defined_by: merged.defined_by,
        ports: spec.ports.clone(),
        headless: spec.headless,
        clusters,
        conflicts: merged.conflicts,
        vips: VipAssignment::default(),
        cluster_vips: Vec::new(),
        kube: None,
    })
}

/// A peer as gateways and status see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub place: ClusterPlace,
    pub connected: bool,
    pub catalog_version: u64,
    pub services: usize,
    pub last_stored_ms: i64,
    pub last_seen_ms: i64,
}

/// Every route, by key.
pub type RouteMap = ShardedMap<ServiceKey, Arc<Route>>;
/// Every local export, by key.
pub type ExportMap = ShardedMap<ServiceKey, Arc<ExportedService>>;

/// The published, immutable view. Its maps are shared with the state they were built from (not
/// copied per view): the state copies a shard only when it changes it while a view holds it.
#[derive(Debug, Clone, Serialize)]
pub struct MeshView {
    pub version: u64,
    pub me: ClusterPlace,
    pub routes: RouteMap,
    pub exports: ExportMap,
    #[serde(skip)]
    pub bundles: Vec<TrustBundle>,
    pub peers: Vec<PeerStatus>,
    pub policies: BTreeMap<String, serde_json::Value>,
}

impl MeshView {
    pub fn empty(me: ClusterPlace) -> Self {
        Self {
            version: 0,
            me,
            routes: RouteMap::default(),
            exports: ExportMap::default(),
            bundles: Vec::new(),
            peers: Vec::new(),
            policies: BTreeMap::new(),
        }
    }
}
