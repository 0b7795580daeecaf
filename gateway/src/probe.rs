//! Active probes of every peer gateway in the routing table: a small HTTP/2 request over the
//! pooled connection (dialing it when needed) that the peer's inbound answers itself. Results
//! feed [`Health`]; a gateway that misses consecutive probes is down for every service.

use std::collections::HashMap;
use std::sync::Arc;

use http::{Method, Request, StatusCode, Version};
use tokio::sync::watch;

use crate::body;
use crate::headers::PROBE;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::pool::PeerPool;
use crate::table::{Backend, PeerGateway, Snapshot};

/// Every peer gateway once, with a backend it serves (for the pool's identity check).
fn peer_gateways(snap: &Snapshot) -> HashMap<Arc<str>, (Backend, PeerGateway)> {
    let mut out = HashMap::new();
    for import in snap.imports.values() {
        for b in &import.backends {
            if b.cluster == snap.cluster {
                continue;
            }
            for g in &b.gateways {
                out.entry(g.address.clone())
                    .or_insert_with(|| (b.clone(), g.clone()));
            }
        }
    }
    out
}

async fn probe(pool: &PeerPool, backend: &Backend, gateway: &PeerGateway, health: &Health) -> bool {
    let attempt = async {
        let mut sender = pool.get(backend, gateway).await.ok()?;
        let mut req = Request::new(body::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = format!("http://{}/", gateway.address).parse().ok()?;
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut()
            .insert(PROBE, http::HeaderValue::from_static("1"));
        let response = sender.send_request(req).await.ok()?;
        (response.status() == StatusCode::OK).then_some(())
    };
    tokio::time::timeout(health.config.probe_timeout, attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// Probes forever, every `health.config.probe_interval`.
pub async fn run(
    table: watch::Receiver<Arc<Snapshot>>,
    pool: Arc<PeerPool>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(health.config.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let snap = table.borrow().clone();
        let gateways = peer_gateways(&snap);
        health.retain_gateways(|a| gateways.contains_key(a));
        let probes = gateways.into_iter().map(|(address, (backend, gateway))| {
            let (pool, health) = (pool.clone(), health.clone());
            async move {
                let ok = probe(&pool, &backend, &gateway, &health).await;
                health.probed(&address, ok);
            }
        });
        futures_util::future::join_all(probes).await;
        // Cluster-level recovery (for slow start across gateway restarts).
        let mut clusters: HashMap<Arc<str>, bool> = HashMap::new();
        for import in snap.imports.values() {
            for b in &import.backends {
                if b.cluster == snap.cluster {
                    continue;
                }
                let up = health.any_gateway_up(&b.gateways);
                *clusters.entry(b.cluster.clone()).or_insert(false) |= up;
            }
        }
        for (cluster, up) in clusters {
            health.cluster_observed(&cluster, up);
        }
        metrics
            .peer_gateways_down
            .set(health.down_gateways().len() as i64);
    }
}
