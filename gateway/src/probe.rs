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

/// The peers to probe, from one routing snapshot: every peer gateway once (with a backend it
/// serves, for the pool's identity check), and each peer cluster's gateways. Built in one pass
/// when the snapshot changes, not on every probe round.
#[derive(Default)]
struct Peers {
    version: u64,
    gateways: HashMap<Arc<str>, (Backend, PeerGateway)>,
    clusters: HashMap<Arc<str>, Vec<PeerGateway>>,
}

impl Peers {
    fn of(snap: &Snapshot) -> Self {
        let mut out = Peers {
            version: snap.version,
            ..Peers::default()
        };
        for import in snap.imports.values() {
            for b in import.backends.iter().filter(|b| b.cluster != snap.cluster) {
                let known = out.clusters.entry(b.cluster.clone()).or_default();
                for g in &b.gateways {
                    if !known.iter().any(|k| k.address == g.address) {
                        known.push(g.clone());
                    }
                    out.gateways
                        .entry(g.address.clone())
                        .or_insert_with(|| (b.clone(), g.clone()));
                }
            }
        }
        out
    }
}

async fn probe(pool: &PeerPool, backend: &Backend, gateway: &PeerGateway, health: &Health) -> bool {
    let attempt = async {
        // Past the pool's backoff: the first probe after a heal reconnects for everyone.
        let mut sender = pool.get_for_probe(backend, gateway).await.ok()?;
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
    let mut peers = Peers::default();
    loop {
        tick.tick().await;
        let snap = table.borrow().clone();
        if snap.version != peers.version {
            peers = Peers::of(&snap);
            health.retain_gateways(|a| peers.gateways.contains_key(a));
        }
        let probes = peers.gateways.iter().map(|(address, (backend, gateway))| {
            let (pool, health) = (pool.clone(), health.clone());
            async move {
                let ok = probe(&pool, backend, gateway, &health).await;
                health.probed(address, ok);
            }
        });
        futures_util::future::join_all(probes).await;
        // Cluster-level recovery (for slow start across gateway restarts).
        for (cluster, gateways) in &peers.clusters {
            health.cluster_observed(cluster, health.any_gateway_up(gateways));
        }
        metrics
            .peer_gateways_down
            .set(health.down_gateways().len() as i64);
        metrics
            .peer_connections
            .set(i64::try_from(pool.open_connections()).unwrap_or(i64::MAX));
    }
}
