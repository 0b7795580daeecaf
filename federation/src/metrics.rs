//! The federation's Prometheus metrics, registered once at start and served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerResultLabels {
    pub peer: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Default)]
pub struct Metrics {
    pub peers: Gauge,
    pub peers_connected: Gauge,
    pub imported_services: Gauge,
    pub exported_services: Gauge,
    /// Catalog updates received from peers, by result (acked, nacked_invalid, nacked_exhausted,
    /// nacked_store).
    pub peer_updates: Family<PeerResultLabels, Counter>,
    /// Updates sent to peers.
    pub peer_updates_sent: Family<PeerLabels, Counter>,
    /// Peering streams refused or torn down, by reason.
    pub peering_refused: Family<ReasonLabels, Counter>,
    pub peer_connects: Family<PeerLabels, Counter>,
    pub certificates_issued: Family<ReasonLabels, Counter>,
    pub catalog_reload_failures: Gauge,
    pub gateways_subscribed: Gauge,
    /// Updates refused because the peer's services would exceed its VIP quota, by peer.
    pub peer_vip_quota_refusals: Family<PeerLabels, Counter>,
    /// 1 while a catalog change could not be applied (store failing) and is being retried.
    pub catalog_apply_pending: Gauge,
    /// Failed attempts at applying a catalog change (each is retried with backoff).
    pub catalog_apply_failures: Counter,
    /// Catalog edits refused whole because of what they need (VIPs, a peer's quota), by reason.
    pub catalog_edits_refused: Family<ReasonLabels, Counter>,
    /// Routes not served because they could not get VIPs when the state was loaded at start.
    pub routes_unaddressed: Gauge,
    /// Finished trace spans not exported: the export queue was full or the collector failed.
    pub trace_spans_dropped: Counter,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("isthmus_federation");
        r.register("peers", "Peers this federation has", self.peers.clone());
        r.register(
            "peers_connected",
            "Peers with a live peering stream",
            self.peers_connected.clone(),
        );
        r.register(
            "imported_services",
            "Clusterset services in the mesh view",
            self.imported_services.clone(),
        );
        r.register(
            "exported_services",
            "Services this cluster exports",
            self.exported_services.clone(),
        );
        r.register(
            "peer_updates",
            "Catalog updates received from peers, by result",
            self.peer_updates.clone(),
        );
        r.register(
            "peer_updates_sent",
            "Catalog updates sent to peers",
            self.peer_updates_sent.clone(),
        );
        r.register(
            "peering_refused",
            "Peering calls refused, by reason",
            self.peering_refused.clone(),
        );
        r.register(
            "peer_connects",
            "Peering streams established",
            self.peer_connects.clone(),
        );
        r.register(
            "certificates_issued",
            "Leaf certificates issued, by kind",
            self.certificates_issued.clone(),
        );
        r.register(
            "catalog_reload_failures",
            "Catalog file edits refused, as malformed or for needing more VIPs than are free (the \
             last good catalog stays in force)",
            self.catalog_reload_failures.clone(),
        );
        r.register(
            "peer_vip_quota_refusals",
            "Peer updates refused whole because the peer's services would exceed its VIP quota \
             (vips.max_per_peer)",
            self.peer_vip_quota_refusals.clone(),
        );
        r.register(
            "catalog_apply_pending",
            "1 while a catalog change is not applied yet because the store failed; it is retried \
             with backoff (see isthmus status)",
            self.catalog_apply_pending.clone(),
        );
        r.register(
            "catalog_apply_failures",
            "Failed attempts at applying a catalog change to the store (each is retried)",
            self.catalog_apply_failures.clone(),
        );
        r.register(
            "catalog_edits_refused",
            "Catalog edits refused whole for what they need (the last applied catalog stays), \
             by reason",
            self.catalog_edits_refused.clone(),
        );
        r.register(
            "trace_spans_dropped",
            "Finished trace spans dropped because the export queue was full or the collector \
             did not take them (nothing waits for it)",
            self.trace_spans_dropped.clone(),
        );
        r.register(
            "routes_unaddressed",
            "Routes not served because they could not get VIPs when the stored state was loaded \
             (degraded start; see isthmus status)",
            self.routes_unaddressed.clone(),
        );
        r.register(
            "gateways_subscribed",
            "Gateways with an open config stream",
            self.gateways_subscribed.clone(),
        );
    }

    pub fn update(&self, peer: &str, result: &str) {
        self.peer_updates
            .get_or_create(&PeerResultLabels {
                peer: peer.into(),
                result: result.into(),
            })
            .inc();
    }

    pub fn quota_refused(&self, peer: &str) {
        self.peer_vip_quota_refusals
            .get_or_create(&PeerLabels { peer: peer.into() })
            .inc();
    }

    pub fn refused(&self, reason: &str) {
        self.peering_refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }
}
