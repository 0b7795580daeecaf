//! `GET /ui/api/state`: what the built-in dashboard (`/ui`, assets in [`crate::admin::ui`])
//! shows, as one JSON document — the cluster set (this cluster and every peer: link state, sync
//! lag, last error, trust bundles, the CA's rotation state), the services (serving clusters,
//! healthy endpoints, this cluster's gateway verdicts with their reasons, policies and drills),
//! and the traffic on every edge touching this cluster ([`crate::traffic`]).
//!
//! Read-only: it takes no async lock (the admin port answers inline), reading the published
//! view, the link table, the gateway table and the traffic log; the CA is read when its lock is
//! free, else its last reading is shown. It must not change anything.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::mesh::{MeshView, Route};
use crate::model::{ClusterName, ServiceKey};
use crate::node::{GatewayInfo, Node, now_ms};

/// Services listed at most (the page is for people; `isthmus catalog --json` has them all).
pub const MAX_SERVICES: usize = 500;

/// The state route's handler: the node, and the CA's last reading.
pub struct Dashboard {
    node: Arc<Node>,
    last_ca: Mutex<Value>,
}

impl Dashboard {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            last_ca: Mutex::new(Value::Null),
        }
    }

    /// The whole document, now.
    pub fn state(&self) -> Value {
        let node = &self.node;
        let now = now_ms();
        let view = node.view.borrow().clone();
        let gateways = node
            .gateways
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let edges = edges(node, now);
        json!({
            "cluster": node.me.cluster,
            "region": node.me.region,
            "trust_domain": node.td,
            "generated_at_ms": now,
            "view_version": view.version,
            "ca": self.ca(),
            "clusters": self.clusters(&view, &gateways, now),
            "gateways": gateways_of(node, &gateways, now),
            "services": services(&view, &gateways),
            "services_total": view.routes.len(),
            "policies": super::admin_ops::policies_status(&view.policies, SystemTime::now()),
            "traffic": {
                "scope": format!(
                    "edges touching {} as its gateways count them; other edges as the peers at their ends report them with each heartbeat",
                    node.me.cluster
                ),
                "window_s": crate::traffic::WINDOW.as_secs(),
                "step_s": crate::traffic::STEP.as_secs(),
                "edges": edges,
            },
        })
    }

    /// The CA's rotation state; its last reading while something else holds the CA's lock.
    fn ca(&self) -> Value {
        let mut last = self.last_ca.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(ca) = self.node.ca.try_lock() {
            let bundle = ca.bundle();
            *last = json!({
                "bundle_sequence": bundle.sequence(),
                "roots": bundle.roots().len(),
                "rotation": format!("{:?}", ca.rotation()),
                "leaf_lifetime": crate::duration::format(ca.leaf_lifetime()),
            });
        }
        last.clone()
    }

    /// This cluster first, then every peer with its link.
    fn clusters(
        &self,
        view: &MeshView,
        gateways: &BTreeMap<String, GatewayInfo>,
        now: i64,
    ) -> Vec<Value> {
        let node = &self.node;
        let our_version = *node.local_version.borrow();
        let own_sequence = node.trust.get(&node.td).map(|b| b.sequence());
        let mut out = vec![json!({
            "name": node.me.cluster,
            "self": true,
            "region": node.me.region,
            "zone": node.me.zone,
            "trust_domain": node.td,
            "link": "self",
            "bundle_sequence": own_sequence,
            "gateways": gateways.values().filter(|g| g.address.is_some()).count(),
            "catalog_version": our_version,
        })];
        let links = node.links.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Each peer's gateway count, from the first route it serves (one pass over the routes,
        // stopping once every peer is known).
        let mut peer_gateways: BTreeMap<&ClusterName, usize> = BTreeMap::new();
        for c in view.routes.values().flat_map(|r| r.clusters.iter()) {
            if peer_gateways.len() == view.peers.len() {
                break;
            }
            if c.local {
                continue;
            }
            peer_gateways
                .entry(&c.place.cluster)
                .or_insert(c.gateways.len());
        }
        for p in &view.peers {
            let l = links.get(&p.place.cluster).cloned().unwrap_or_default();
            let bundle = node.trust.get(&p.place.trust_domain);
            let gateways = peer_gateways.get(&p.place.cluster).copied();
            out.push(json!({
                "name": p.place.cluster,
                "self": false,
                "region": p.place.region,
                "zone": p.place.zone,
                "trust_domain": p.place.trust_domain,
                "link": if l.connected { "connected" } else { "disconnected" },
                "connected_for_ms": (l.connected && l.connected_since_ms > 0).then(|| now - l.connected_since_ms),
                "last_seen_ms_ago": (l.last_seen_ms > 0).then(|| now - l.last_seen_ms),
                "last_error": l.last_error,
                // How many of our catalog versions the peer has not ACKed yet.
                "sync_lag": our_version.saturating_sub(l.acked_version),
                "their_catalog_version": p.catalog_version,
                "their_catalog_age_ms": (p.last_stored_ms > 0).then(|| now - p.last_stored_ms),
                "services": p.services,
                "gateways": gateways,
                "bundle_sequence": bundle.as_ref().map(|b| b.sequence()),
                "bundle_roots": bundle.as_ref().map(|b| b.roots().len()),
                "acked_our_bundle_sequence": l.acked_bundle_sequence,
            }));
        }
        out
    }
}

/// First-hand edges (reported by this cluster), then the peers' edges between other clusters,
/// each naming the cluster whose gateways counted it.
fn edges(node: &Node, now: i64) -> Vec<Value> {
    let own = node.traffic.edges(&node.me.cluster, now);
    let theirs = node.traffic.peers.edges(now);
    let mine = own.into_iter().map(|e| (node.me.cluster.clone(), e));
    mine.chain(theirs)
        .filter_map(|(by, e)| {
            let mut v = serde_json::to_value(e).ok()?;
            v["reported_by"] = json!(by);
            Some(v)
        })
        .collect()
}

/// This cluster's gateways: where they listen, what they applied, when they last reported
/// traffic.
fn gateways_of(node: &Node, gateways: &BTreeMap<String, GatewayInfo>, now: i64) -> Vec<Value> {
    let reporters = node.traffic.reporters(now);
    gateways
        .iter()
        .map(|(name, g)| {
            let reported = reporters.iter().find(|r| &r.gateway == name);
            json!({
                "name": name,
                "address": g.address,
                "registered": g.address.is_some(),
                "acked_version": g.acked_version,
                "unhealthy_verdicts": g.health.values().filter(|h| !**h).count(),
                "last_traffic_report_ms_ago": reported.map(|r| r.last_report_ms_ago),
            })
        })
        .collect()
}

/// Every service (up to [`MAX_SERVICES`]) with its serving clusters and the verdicts this
/// cluster's gateways hold on each.
fn services(view: &MeshView, gateways: &BTreeMap<String, GatewayInfo>) -> Vec<Value> {
    let policies = policies_by_service(view);
    let mut routes: Vec<(&ServiceKey, &Arc<Route>)> = view.routes.iter().collect();
    routes.sort_unstable_by(|a, b| a.0.cmp(b.0));
    routes.truncate(MAX_SERVICES);
    routes
        .into_iter()
        .map(|(key, route)| service(key, route, view, gateways, &policies))
        .collect()
}

fn service(
    key: &ServiceKey,
    route: &Route,
    view: &MeshView,
    gateways: &BTreeMap<String, GatewayInfo>,
    policies: &BTreeMap<String, Vec<String>>,
) -> Value {
    let name = key.to_string();
    let clusters: Vec<Value> = route
        .clusters
        .iter()
        .map(|c| {
            let verdict_key = format!("{}:{name}", c.place.cluster);
            let verdicts: Vec<Value> = gateways
                .iter()
                .filter_map(|(gw, g)| {
                    let healthy = g.health.get(&verdict_key)?;
                    Some(json!({
                        "gateway": gw,
                        "healthy": healthy,
                        "reason": g.health_reasons.get(&verdict_key),
                    }))
                })
                .collect();
            json!({
                "cluster": c.place.cluster,
                "local": c.local,
                "healthy_endpoints": c.summary.healthy_endpoints(),
                "stale": c.stale,
                "gateways": c.gateways.len(),
                "conflict": route.conflicts.contains(&c.place.cluster),
                "verdicts": verdicts,
            })
        })
        .collect();
    let applying: Vec<&String> = [policies.get(&name), policies.get("*")]
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    json!({
        "service": name,
        "exported": view.exports.get(key).is_some(),
        "imported": route.clusters.iter().any(|c| !c.local),
        "vip": route.vips.v4.map(|a| a.to_string()).or_else(|| route.vips.v6.map(|a| a.to_string())),
        "ports": route.ports,
        "clusters": clusters,
        "policies": applying,
    })
}

/// Policy document names by the services they name.
fn policies_by_service(view: &MeshView) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, doc) in &view.policies {
        if let Ok(d) = crate::model::policy::parse(name, doc) {
            for s in &d.services {
                out.entry(s.to_string()).or_default().push(name.clone());
            }
        }
    }
    out
}
