//! The federation process: composes the store, the CA, the mesh state, peering, the gateway API,
//! the registry and the admin plane, and runs them until shutdown.
//!
//! Threading model: every listener is a tokio task; all state changes go through one async lock
//! ([`state::MeshState`]) and are persisted before they are visible; readers (gateway streams,
//! DNS, status) only ever see the immutable [`MeshView`] published on a watch channel.

pub mod admin_ops;
pub mod admission;
pub mod apply;
pub mod ca;
#[cfg(feature = "kubernetes")]
pub mod clusterset;
pub mod dashboard;
pub mod gateways;
pub mod keys;
pub mod peer_update;
pub mod run;
pub mod state;
#[cfg(test)]
mod state_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{Mutex, watch};

use crate::config::FederationConfig;
use crate::identity::{CertStore, SpiffeId, TrustBundle, TrustDomain, TrustStore};
use crate::mesh::{ClusterPlace, MeshView, PeerStatus};
use crate::metrics::Metrics;
use crate::model::{ClusterName, ServiceKey};
use crate::peering::update::PeerUpdate;
use crate::store::AnyStore;

use self::ca::CaRuntime;
use self::state::{MeshState, StateError};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Live status of the peering stream with one peer (not persisted).
#[derive(Debug, Clone, Default)]
pub struct LinkInfo {
    pub connected: bool,
    pub last_seen_ms: i64,
    pub connected_since_ms: i64,
    /// Highest version of our catalog the peer ACKed, and the bundle sequence it carried.
    pub acked_version: u64,
    pub acked_bundle_sequence: u64,
    pub sent_version: u64,
    pub last_error: Option<String>,
}

/// A gateway of this cluster, as registered and as it ACKed config.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GatewayInfo {
    /// Registered now (its lease is live).
    pub registered: bool,
    /// The address peers are given; `None` while it is not advertised.
    pub address: Option<String>,
    /// Registered but not advertised to peers: why (e.g. its LoadBalancer has no address yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_advertised: Option<String>,
    pub zone: Option<String>,
    pub acked_version: u64,
    pub acked_bundle_sequence: u64,
    pub health: BTreeMap<String, bool>,
    /// Why a verdict in `health` is what it is, when the gateway said (same keys).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub health_reasons: BTreeMap<String, String>,
    /// Whether it listens on VIPs (`listen.vips`), as its last health report said.
    pub vip_listeners: bool,
    /// VIP addresses it could not bind, as its last health report said.
    pub unbound_vips: BTreeMap<std::net::IpAddr, UnboundVip>,
}

/// A VIP address a gateway could not bind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnboundVip {
    pub service: ServiceKey,
    /// The bind error the gateway saw.
    pub reason: String,
}

/// The VIP addresses no gateway of this cluster serves: reported unbound by every gateway that
/// listens on VIPs (and by at least one). DNS leaves them out; `status` lists them. A gateway
/// that does not listen on VIPs, or has not reported, neither withholds nor vouches for one.
pub fn unserved_vips(
    gateways: &BTreeMap<String, GatewayInfo>,
) -> BTreeMap<std::net::IpAddr, UnboundVip> {
    let mut listening = gateways.values().filter(|g| g.vip_listeners).peekable();
    let Some(first) = listening.next() else {
        return BTreeMap::new();
    };
    let rest: Vec<&GatewayInfo> = listening.collect();
    first
        .unbound_vips
        .iter()
        .filter(|(ip, _)| rest.iter().all(|g| g.unbound_vips.contains_key(ip)))
        .map(|(ip, u)| (*ip, u.clone()))
        .collect()
}

pub struct Node {
    pub cfg: FederationConfig,
    pub me: ClusterPlace,
    pub td: TrustDomain,
    pub id: SpiffeId,
    /// What peers dial: the configured advertised address, else the bound one.
    pub advertised_peering: String,
    pub store: AnyStore,
    /// Our bundle and every peer's, for the verifiers.
    pub trust: TrustStore,
    /// This federation's own certificate (server and client).
    pub certs: CertStore,
    pub ca: Mutex<CaRuntime>,
    pub state: Mutex<MeshState>,
    /// Our catalog version: peer sessions wake on it.
    pub local_version: watch::Sender<u64>,
    pub view: watch::Sender<Arc<MeshView>>,
    pub links: StdMutex<BTreeMap<ClusterName, LinkInfo>>,
    pub gateways: StdMutex<BTreeMap<String, GatewayInfo>>,
    /// Bumped whenever a gateway's health verdicts change (`ReportHealth`): what reads
    /// `gateways[..].health` wakes on it instead of polling.
    pub verdicts: watch::Sender<u64>,
    pub sessions: StdMutex<BTreeMap<ClusterName, tokio::task::AbortHandle>>,
    pub metrics: Metrics,
    pub shutdown: watch::Receiver<bool>,
    /// Whether the local catalog sources are applied (see [`apply`]).
    pub apply: StdMutex<apply::ApplyStatus>,
    /// What this cluster's gateways report carrying to and from peers, for the dashboard.
    pub traffic: crate::traffic::TrafficLog,
    /// The Kubernetes side's current problems (`status`); empty without a `kubernetes:` section.
    pub kube: crate::kubernetes::KubeReport,
    /// Spans of control-plane work: sync rounds, catalog applies, config pushes.
    pub tracing: crate::telemetry::Tracing,
}

impl Node {
    pub fn config(&self) -> &FederationConfig {
        &self.cfg
    }

    /// Clusters whose stream is down: their catalog is last-known.
    pub fn stale_peers(&self) -> BTreeSet<ClusterName> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .iter()
            .filter(|(_, l)| !l.connected)
            .map(|(c, _)| c.clone())
            .collect()
    }

    pub fn link_update(&self, peer: &ClusterName, f: impl FnOnce(&mut LinkInfo)) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        f(links.entry(peer.clone()).or_default());
        self.count_connected(&links);
    }

    /// Forgets a removed peer's link.
    pub fn link_forget(&self, peer: &ClusterName) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.remove(peer);
        self.count_connected(&links);
    }

    /// Link state changes only through `link_update` and `link_forget`: the gauge is kept there.
    fn count_connected(&self, links: &BTreeMap<ClusterName, LinkInfo>) {
        let up = links.values().filter(|l| l.connected).count();
        self.metrics
            .peers_connected
            .set(i64::try_from(up).unwrap_or(i64::MAX));
    }

    pub fn link(&self, peer: &ClusterName) -> LinkInfo {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links.get(peer).cloned().unwrap_or_default()
    }

    fn peer_statuses(&self, state: &MeshState) -> Vec<PeerStatus> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        state
            .peers
            .values()
            .map(|p| {
                let l = links.get(&p.place.cluster).cloned().unwrap_or_default();
                PeerStatus {
                    place: (*p.place).clone(),
                    connected: l.connected,
                    catalog_version: p.catalog.version,
                    services: p.catalog.services.len(),
                    last_stored_ms: p.catalog.stored_at_ms,
                    last_seen_ms: l.last_seen_ms,
                }
            })
            .collect()
    }

    pub fn bundles(&self) -> Vec<TrustBundle> {
        self.trust.snapshot().into_values().collect()
    }

    /// Publishes a new view from the state (caller holds the lock).
    pub fn publish(&self, state: &mut MeshState) {
        let peers = self.peer_statuses(state);
        let view = state.view(self.bundles(), peers);
        self.metrics.imported_services.set(view.routes.len() as i64);
        self.metrics.peers.set(state.peers.len() as i64);
        self.metrics
            .routes_unaddressed
            .set(state.unaddressed.len() as i64);
        self.view.send_replace(view);
    }

    /// Stores and installs a checked update from a peer, then republishes.
    pub async fn receive_update(
        &self,
        peer: &ClusterName,
        update: PeerUpdate,
    ) -> Result<(), StateError> {
        let (version, bundle) = (update.version, update.bundle.clone());
        let started = std::time::Instant::now();
        let mut state = self.state.lock().await;
        let locked = started.elapsed();
        let stale = self.stale_peers();
        let n = state
            .receive_peer_update(&self.store, peer, update, &stale, now_ms())
            .await?;
        let stored = started.elapsed();
        if let Some(bundle) = bundle {
            self.trust.set(bundle);
        }
        self.publish(&mut state);
        tracing::debug!(peer.cluster = %peer, version, services = n,
            lock_us = locked.as_micros() as u64, store_us = (stored - locked).as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "peer update applied");
        Ok(())
    }

    /// Something about us that peers must learn changed (bundle, gateways): bump the catalog
    /// version so every session sends an update.
    pub async fn bump_local(
        &self,
        f: impl FnOnce(&mut MeshState) -> bool,
    ) -> Result<(), StateError> {
        let mut state = self.state.lock().await;
        if !f(&mut state) {
            return Ok(());
        }
        state.persist_local_meta(&self.store).await?;
        let stale = self.stale_peers();
        // Gateways of ours appear in local routes.
        let local_keys: BTreeSet<ServiceKey> = state.local.exports.keys().cloned().collect();
        state.recompute(Some(local_keys), &stale, now_ms()).await?;
        self.local_version.send_replace(state.local.version);
        self.publish(&mut state);
        Ok(())
    }

    /// A peer's link went up or down: routes through it change staleness.
    pub async fn link_changed(&self, peer: &ClusterName) {
        let mut state = self.state.lock().await;
        let keys: BTreeSet<ServiceKey> = match state.peers.get(peer) {
            Some(p) => p.catalog.services.keys().cloned().collect(),
            None => return,
        };
        let stale = self.stale_peers();
        if let Err(e) = state.recompute(Some(keys), &stale, now_ms()).await {
            tracing::warn!(peer.cluster = %peer, error = %e, "recomputing routes after a link change failed");
        }
        self.publish(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(listens: bool, unbound: &[&str]) -> GatewayInfo {
        GatewayInfo {
            vip_listeners: listens,
            unbound_vips: unbound
                .iter()
                .map(|a| {
                    let service = ServiceKey::parse("shop/cart").expect("key");
                    let reason = "Cannot assign requested address".to_string();
                    (a.parse().expect("ip"), UnboundVip { service, reason })
                })
                .collect(),
            ..GatewayInfo::default()
        }
    }

    /// An address is unserved only while every gateway that listens on VIPs reports it unbound.
    #[test]
    fn a_vip_is_unserved_only_when_no_listening_gateway_bound_it() {
        // (each gateway: listens on VIPs, its unbound addresses) -> the unserved addresses
        type Gateways<'a> = &'a [(bool, &'a [&'a str])];
        let cases: [(Gateways<'_>, &[&str]); 6] = [
            (&[], &[]),
            (&[(true, &["fd77::1"])], &["fd77::1"]),
            (
                &[(true, &["fd77::1", "fd77::2"]), (true, &["fd77::2"])],
                &["fd77::2"],
            ),
            (&[(true, &["fd77::1"]), (true, &[])], &[]),
            // A gateway without VIP listeners neither withholds nor vouches.
            (&[(true, &["fd77::1"]), (false, &[])], &["fd77::1"]),
            (&[(false, &["fd77::1"])], &[]),
        ];
        for (gws, want) in cases {
            let map: BTreeMap<String, GatewayInfo> = gws
                .iter()
                .enumerate()
                .map(|(i, (l, u))| (format!("gw-{i}"), gateway(*l, u)))
                .collect();
            let got: Vec<String> = unserved_vips(&map)
                .keys()
                .map(|ip| ip.to_string())
                .collect();
            assert_eq!(got, want, "{gws:?}");
        }
    }
}
