//! The gateway's Prometheus metrics, registered once at start and served on `/metrics`.
//! Request counters keep low-cardinality labels (side, status code class): per-request detail
//! lives in the access log. Policy counters carry `service` and `source_cluster`, bounded by the
//! services that have such a policy and the peered clusters.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::accesslog::Side;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub side: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Serving-side policy labels. `service` and `source_cluster` come from the config (exported
/// services with a policy section, peered clusters), so they stay bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub service: Arc<str>,
    pub source_cluster: Arc<str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    pub service: Arc<str>,
    /// `abort` or `delay`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub service: Arc<str>,
    pub source_cluster: Arc<str>,
    /// `service`, `source_cluster` or `concurrency`.
    pub limit: &'static str,
}

/// An open exchange closed because a new config no longer allows it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub side: &'static str,
    /// The rule that failed: `peer`, `export`, `port`, `authorization` or `import`.
    pub reason: &'static str,
}

/// An `x-isthmus-cluster` header: its service, and whether the policy honoured it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterHeaderLabels {
    pub service: Arc<str>,
    pub honoured: bool,
}

/// A shadow copy: its service and what became of it (`sent`, `failed`, `skipped`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub service: Arc<str>,
    pub outcome: &'static str,
}

/// A connection a listener refused or closed for lack of slots.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `proxy`, `vip` or `inbound`.
    pub listener: &'static str,
    /// `source_limit`, `listener_full` or `evicted`.
    pub reason: &'static str,
}

/// Requests and tunnels by side and status class: the family that is exposed, and each of its
/// ten counters resolved once, so counting a request takes no lock and no label hashing.
#[derive(Clone)]
pub struct RequestCounters {
    family: Family<RequestLabels, Counter>,
    /// Indexed by side (outbound, inbound), then status class (1xx to 5xx).
    by_class: [[Counter; 5]; 2],
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Default for RequestCounters {
    fn default() -> Self {
        let family = Family::<RequestLabels, Counter>::default();
        let by_class = [Side::Outbound, Side::Inbound].map(|side| {
            CLASSES.map(|code| {
                family
                    .get_or_create(&RequestLabels {
                        side: side_label(side),
                        code,
                    })
                    .clone()
            })
        });
        Self { family, by_class }
    }
}

fn side_label(side: Side) -> &'static str {
    match side {
        Side::Outbound => "outbound",
        Side::Inbound => "inbound",
    }
}

#[derive(Clone, Default)]
pub struct Metrics {
    /// Requests and tunnels by side and status class.
    pub requests: RequestCounters,
    /// Config versions applied from the federation.
    pub config_version: Gauge,
    pub imported_services: Gauge,
    pub exported_services: Gauge,
    pub vip_listeners: Gauge,
    pub vip_listeners_failed: Gauge,
    /// Kubernetes mode: open target-port listeners on the pod IP, and those that failed to bind.
    pub target_port_listeners: Gauge,
    pub target_port_listeners_failed: Gauge,
    /// Certificate renewals by result.
    pub renewals: Family<ResultLabels, Counter>,
    /// Seconds until the current certificate expires.
    pub certificate_expiry_seconds: Gauge,
    /// 1 while the config stream from the federation is up.
    pub control_connected: Gauge,
    /// Tries sent again, through another gateway or to another cluster.
    pub retries: Counter,
    /// Retries not sent because the retry budget was spent.
    pub retries_refused: Counter,
    /// Peer gateways failing their probes.
    pub peer_gateways_down: Gauge,
    /// Pooled mTLS connections open to peer gateways.
    pub peer_connections: Gauge,
    /// Inbound authorization decisions of services whose policy has an `authorization` section.
    pub authz_decisions: Family<AuthzLabels, Counter>,
    /// Faults injected by policy on the inbound side.
    pub faults_injected: Family<FaultLabels, Counter>,
    /// Inbound requests refused by a rate or concurrency limit.
    pub rate_limited: Family<RateLimitLabels, Counter>,
    /// `x-isthmus-cluster` headers from local clients, by service and whether honoured.
    pub cluster_header: Family<ClusterHeaderLabels, Counter>,
    /// Shadow copies by service and outcome.
    pub shadow_requests: Family<ShadowLabels, Counter>,
    /// Open connections, tunnels and streams closed because a new config no longer allows them.
    pub closed_by_policy: Family<ClosedLabels, Counter>,
    /// Connections refused or closed for lack of slots, by listener and reason.
    pub connections_refused: Family<RefusalLabels, Counter>,
    /// Tries in flight whose gateway or cluster was judged down while they waited, by what
    /// became of their request (`moved`: sent on at once; `failed`: not idempotent).
    pub tries_judged_down: Family<ResultLabels, Counter>,
    /// Hedged tries, by result (`sent`; `won`: its answer went to the client; `refused`: the
    /// retry budget had none, so no hedge was sent).
    pub hedges: Family<ResultLabels, Counter>,
    /// Responses whose body was cut after their headers went to the client, by side.
    pub responses_cut: Family<SideLabels, Counter>,
    /// Exchanges by peer cluster and direction, for the federation's dashboard (not exposed on
    /// `/metrics`: see [`crate::traffic`]).
    pub traffic: Arc<crate::traffic::TrafficBook>,
    /// Finished spans not exported: the export queue was full or the collector failed.
    pub trace_spans_dropped: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SideLabels {
    pub side: &'static str,
}

/// The index in [`CLASSES`] of a status code's class (anything outside 100..=599 counts as 5xx).
fn class(code: u16) -> usize {
    match code {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

impl Metrics {
    pub fn request(&self, side: Side, code: u16) {
        let side = match side {
            Side::Outbound => 0,
            Side::Inbound => 1,
        };
        self.requests.by_class[side][class(code)].inc();
    }

    pub fn cluster_header(&self, service: &Arc<str>, honoured: bool) {
        self.cluster_header
            .get_or_create(&ClusterHeaderLabels {
                service: service.clone(),
                honoured,
            })
            .inc();
    }

    pub fn shadow(&self, service: &Arc<str>, outcome: &'static str) {
        self.shadow_requests
            .get_or_create(&ShadowLabels {
                service: service.clone(),
                outcome,
            })
            .inc();
    }

    pub fn try_judged_down(&self, result: &'static str) {
        self.tries_judged_down
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn hedge(&self, result: &'static str) {
        self.hedges.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn response_cut(&self, side: Side) {
        self.responses_cut
            .get_or_create(&SideLabels {
                side: side_label(side),
            })
            .inc();
    }

    pub fn closed_by_policy(&self, side: Side, reason: &'static str) {
        self.closed_by_policy
            .get_or_create(&ClosedLabels {
                side: side_label(side),
                reason,
            })
            .inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("isthmus_gateway");
        r.register(
            "requests",
            "Requests and tunnels by side and status class",
            self.requests.family.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access-log lines dropped because stdout did not keep up (the request path never waits for it)",
            crate::linewriter::stdout().dropped().clone(),
        );
        r.register(
            "config_version",
            "The federation config version this gateway applied",
            self.config_version.clone(),
        );
        r.register(
            "imported_services",
            "Services this gateway routes to other clusters",
            self.imported_services.clone(),
        );
        r.register(
            "exported_services",
            "Local services this gateway serves to peers",
            self.exported_services.clone(),
        );
        r.register(
            "vip_listeners",
            "Open VIP:port listeners",
            self.vip_listeners.clone(),
        );
        r.register(
            "vip_listeners_failed",
            "VIP:port listeners that could not be opened",
            self.vip_listeners_failed.clone(),
        );
        r.register(
            "target_port_listeners",
            "Open target-port listeners on the pod IP (Kubernetes mode)",
            self.target_port_listeners.clone(),
        );
        r.register(
            "target_port_listeners_failed",
            "Target ports that could not be bound on the pod IP (retried every 2 s)",
            self.target_port_listeners_failed.clone(),
        );
        r.register(
            "certificate_renewals",
            "Certificate renewals by result",
            self.renewals.clone(),
        );
        r.register(
            "certificate_expiry_seconds",
            "Seconds until the gateway's certificate expires",
            self.certificate_expiry_seconds.clone(),
        );
        r.register(
            "retries",
            "Tries sent again, through another gateway or to another cluster",
            self.retries.clone(),
        );
        r.register(
            "retries_refused",
            "Retries not sent because the retry budget was spent",
            self.retries_refused.clone(),
        );
        r.register(
            "peer_gateways_down",
            "Peer gateways failing their probes",
            self.peer_gateways_down.clone(),
        );
        r.register(
            "peer_connections",
            "Pooled mTLS connections open to peer gateways",
            self.peer_connections.clone(),
        );
        r.register(
            "control_connected",
            "1 while the config stream from the federation is up",
            self.control_connected.clone(),
        );
        r.register(
            "cluster_header",
            "x-isthmus-cluster headers from local clients, by service and whether the policy honoured them",
            self.cluster_header.clone(),
        );
        r.register(
            "shadow_requests",
            "Shadow copies by service and outcome (sent, failed, skipped)",
            self.shadow_requests.clone(),
        );
        r.register(
            "authz_decisions",
            "Inbound authorization decisions by service, calling cluster and decision",
            self.authz_decisions.clone(),
        );
        r.register(
            "faults_injected",
            "Faults injected by policy by service and kind (abort, delay)",
            self.faults_injected.clone(),
        );
        r.register(
            "connections_closed_by_policy",
            "Open connections, tunnels and streams closed because a new config no longer allows them, by side and failed rule",
            self.closed_by_policy.clone(),
        );
        r.register(
            "connections_refused",
            "Connections a listener refused or closed for lack of slots, by listener (proxy, vip, inbound) and reason (source_limit: the source holds limits.max_connections_per_source; listener_full: every slot taken; evicted: the oldest connection of the source holding the most, closed to make room for another source)",
            self.connections_refused.clone(),
        );
        r.register(
            "tries_judged_down",
            "Tries in flight whose peer gateway or cluster was judged down while they waited, by result (moved: sent on at once; failed: not idempotent, answered 502)",
            self.tries_judged_down.clone(),
        );
        r.register(
            "trace_spans_dropped",
            "Finished trace spans dropped because the export queue was full or the collector did not take them (the request path never waits for it)",
            self.trace_spans_dropped.clone(),
        );
        r.register(
            "hedges",
            "Hedged tries to another cluster (or gateway) after a try ran past its hedge delay, by result (sent; won: its answer went to the client; refused: the retry budget had none)",
            self.hedges.clone(),
        );
        r.register(
            "responses_cut",
            "Responses whose body failed after their headers were sent to the client (the client's connection or stream is reset), by side",
            self.responses_cut.clone(),
        );
        r.register(
            "rate_limited",
            "Inbound requests refused by a limit, by service, calling cluster and limit",
            self.rate_limited.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::{Metrics, Side};

    #[test]
    fn requests_are_counted_by_side_and_status_class() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        for code in [200, 204, 503, 99, 404] {
            metrics.request(Side::Inbound, code);
        }
        metrics.request(Side::Outbound, 101);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        let count = |side: &str, code: &str| {
            let series =
                format!("isthmus_gateway_requests_total{{side=\"{side}\",code=\"{code}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
                .to_string()
        };
        assert_eq!(count("inbound", "2xx"), "2");
        assert_eq!(
            count("inbound", "5xx"),
            "2",
            "503, and 99 (not a status) as 5xx"
        );
        assert_eq!(count("inbound", "4xx"), "1");
        assert_eq!(count("outbound", "1xx"), "1");
        assert_eq!(
            count("outbound", "2xx"),
            "0",
            "every series exists from the start"
        );
    }
}
