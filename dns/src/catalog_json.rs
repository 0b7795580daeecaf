//! A mesh view read back from its JSON form (what `isthmus catalog --json` prints and the admin
//! socket's `catalog` operation returns), so that `isthmus dns` can serve on its own: from a
//! running federation's admin socket, or from a saved snapshot file.
//!
//! Only what DNS reads is restored (routes: key, ports, serving clusters with place, summary and
//! `stale`, VIPs); everything a hostile file could carry is validated by the model's own types.
//! Parsed straight into typed structs (never a `serde_json::Value` of the whole file: for
//! 100,000 services that is most of a gigabyte), and cluster places are shared between routes.

use std::collections::HashMap;
use std::sync::Arc;

use isthmus_federation::mesh::{ClusterPlace, ClusterRoute, MeshView, Route};
use isthmus_federation::model::{ClusterName, Region, ServiceKey, ServicePort, ServiceSummary};
use isthmus_federation::vip::VipAssignment;
use serde::Deserialize;

#[derive(Deserialize)]
struct PlaceJson {
    cluster: ClusterName,
    trust_domain: String,
    region: Region,
    #[serde(default)]
    zone: Option<String>,
}

#[derive(Deserialize)]
struct ClusterJson {
    place: PlaceJson,
    #[serde(default)]
    local: bool,
    #[serde(default)]
    stale: bool,
    #[serde(default)]
    confirmed_at_ms: i64,
    summary: ServiceSummary,
}

#[derive(Deserialize)]
struct RouteJson {
    defined_by: ClusterName,
    ports: Vec<ServicePort>,
    #[serde(default)]
    headless: bool,
    #[serde(default)]
    clusters: Vec<ClusterJson>,
    #[serde(default)]
    vips: VipAssignment,
    #[serde(default)]
    cluster_vips: Vec<(ClusterName, VipAssignment)>,
}

#[derive(Deserialize)]
struct ViewJson {
    #[serde(default)]
    version: u64,
    me: PlaceJson,
    routes: HashMap<String, RouteJson>,
}

fn place(p: PlaceJson) -> Result<ClusterPlace, String> {
    let what = format!("cluster {}", p.cluster);
    Ok(ClusterPlace {
        trust_domain: p.trust_domain.parse().map_err(|e| format!("{what}: {e}"))?,
        zone: match p.zone.as_deref() {
            Some(z) if !z.is_empty() => Some(z.parse().map_err(|e| format!("{what}: {e}"))?),
            _ => None,
        },
        cluster: p.cluster,
        region: p.region,
    })
}

fn into_view(v: ViewJson) -> Result<MeshView, String> {
    let mut view = MeshView::empty(place(v.me)?);
    view.version = v.version;
    let mut places: HashMap<ClusterName, Arc<ClusterPlace>> = HashMap::new();
    let mut routes = Vec::with_capacity(v.routes.len());
    for (k, r) in v.routes {
        let key = ServiceKey::parse(&k).map_err(|e| e.to_string())?;
        let mut clusters = Vec::with_capacity(r.clusters.len());
        for c in r.clusters {
            let p = match places.get(&c.place.cluster) {
                Some(p) => p.clone(),
                None => {
                    let p = Arc::new(place(c.place)?);
                    places.insert(p.cluster.clone(), p.clone());
                    p
                }
            };
            clusters.push(ClusterRoute {
                place: p,
                local: c.local,
                gateways: Arc::from(Vec::new()),
                summary: Arc::new(c.summary),
                stale: c.stale,
                confirmed_at_ms: c.confirmed_at_ms,
            });
        }
        let route = Route {
            key: key.clone(),
            defined_by: r.defined_by,
            ports: r.ports,
            headless: r.headless,
            clusters,
            conflicts: Vec::new(),
            vips: r.vips,
            cluster_vips: r.cluster_vips,
            kube: None,
        };
        routes.push((key, Arc::new(route)));
    }
    view.routes = routes.into_iter().collect();
    Ok(view)
}

const EXPECTED: &str = "expected the output of `isthmus catalog --json`";

/// Reads a mesh view from its JSON form.
pub fn view_from_json(v: &serde_json::Value) -> Result<MeshView, String> {
    into_view(ViewJson::deserialize(v).map_err(|e| format!("{e} ({EXPECTED})"))?)
}

/// Reads a mesh view from JSON text (a saved `isthmus catalog --json`).
pub fn view_from_json_bytes(bytes: &[u8]) -> Result<MeshView, String> {
    into_view(serde_json::from_slice(bytes).map_err(|e| format!("{e} ({EXPECTED})"))?)
}
