//! `GET /explain?service=<svc>.<ns>` on the admin port (and `isthmus explain`): where the next
//! request for a service goes from this gateway, and why — the policy that applies, every
//! cluster that serves it with its tier, health verdict, weights and circuit breaker, and the
//! exact probability that it is the next first pick.
//!
//! The probabilities come from [`crate::lb::first_pick_shares`], the same choice the request
//! path draws from, with the same verdicts, so an explanation agrees with traffic by
//! construction. Pure over (snapshot, health, breakers): it reads state, changes none.

use std::collections::BTreeMap;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::health::Health;
use crate::latency::Latencies;
use crate::lb;
use crate::outbound::listeners::UnboundVips;
use crate::outbound::verdicts;
use crate::policy::ServicePolicy;
use crate::retry::Breakers;
use crate::table::{Backend, CLUSTERSET_ZONE, Snapshot, Target};

/// The answer of `/explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// `<svc>.<ns>`.
    pub service: String,
    pub from: FromCluster,
    pub policy: PolicyView,
    /// Every cluster that serves the service, in the catalog's order.
    pub clusters: Vec<ClusterView>,
    pub decision: Decision,
    /// The same in a few sentences.
    pub summary: String,
    /// Addresses of the service this gateway could not listen on (its DNS answers leave them
    /// out while no gateway of the cluster has bound them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unbound_vips: Vec<UnboundVipView>,
}

/// A VIP address of the service that this gateway could not bind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnboundVipView {
    pub address: String,
    pub reason: String,
}

impl Explanation {
    /// Adds the service's VIP addresses in `unbound`, and a sentence saying what follows.
    pub fn with_unbound(mut self, unbound: &UnboundVips) -> Self {
        for (ip, (service, reason)) in unbound {
            if *service == self.service {
                self.unbound_vips.push(UnboundVipView {
                    address: ip.to_string(),
                    reason: reason.clone(),
                });
            }
        }
        if !self.unbound_vips.is_empty() {
            let list: Vec<String> = self
                .unbound_vips
                .iter()
                .map(|u| format!("{} ({})", u.address, u.reason))
                .collect();
            self.summary.push_str(&format!(
                " This gateway cannot listen on {}: the federation's DNS does not answer \
                 those addresses while no gateway of this cluster has bound them; clients use the \
                 service's other addresses, or the proxy port.",
                list.join(", ")
            ));
        }
        self
    }
}

/// The gateway that explains: its cluster and region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FromCluster {
    pub cluster: String,
    pub region: String,
}

/// The calling-side policy of the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyView {
    /// The policy documents that apply, in the order they applied.
    pub documents: Vec<String>,
    pub split: Option<SplitView>,
    pub shadow: Option<ShadowView>,
    pub threshold: f64,
    pub fence_regions: Option<Vec<String>>,
    pub slow_start: String,
    pub retries: u32,
    pub per_try_timeout: String,
    pub hedge: HedgeView,
    pub max_requests: u32,
}

/// The policy's hedge settings (each cluster's delay is in its [`ClusterView`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HedgeView {
    pub enabled: bool,
    pub multiplier: f64,
    pub min: String,
    pub max: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitView {
    pub weights: BTreeMap<String, u32>,
    pub cluster_header: bool,
    /// The document that set the split.
    pub document: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowView {
    pub cluster: String,
    pub percent: f64,
}

/// One cluster that serves the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub cluster: String,
    pub region: String,
    /// 0 this cluster, 1 the same region, 2 another region.
    pub tier: usize,
    pub tier_name: String,
    /// Healthy endpoints, as the exporter reports them.
    pub healthy_endpoints: u32,
    pub export_weight: u32,
    /// Its weight in the policy's split, when it has one.
    pub split_weight: Option<u32>,
    pub verdict: VerdictView,
    /// Requests in flight to it now, and the circuit breaker's bound.
    pub in_flight: u32,
    pub max_requests: u32,
    /// It has a gateway (or is this cluster) and a healthy endpoint.
    pub usable: bool,
    /// It is outside the policy's `fence_regions`: never chosen.
    pub fenced: bool,
    /// The probability that the next request's first pick is this cluster.
    pub share: f64,
    /// The p99 of its recent successful tries from this gateway (ms), when enough are known.
    pub p99_ms: Option<f64>,
    /// With hedging on: how long a try here waits before its hedge (ms).
    pub hedge_after_ms: Option<f64>,
}

/// This gateway's own health verdict of the cluster for the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictView {
    pub healthy: bool,
    pub dropped: bool,
    pub slow_start_factor: f64,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The cluster with the largest share, if any may be chosen.
    pub cluster: Option<String>,
    pub shares: BTreeMap<String, f64>,
    /// A representative order of tries: the likeliest first pick, then the retry candidates.
    pub order: Vec<String>,
}

/// Why there is no explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("say which service: /explain?service=<svc>.<ns> (or <ns>/<svc>)")]
    NoService,
    #[error(
        "{service} is not a service this cluster imports (imports: {known}); check the name and `isthmus catalog`"
    )]
    Unknown { service: String, known: String },
}

/// `<svc>.<ns>` from `<svc>.<ns>`, `<ns>/<svc>` or `<svc>.<ns>.svc.clusterset.local`.
pub fn service_key(input: &str) -> String {
    let s = input.trim().trim_end_matches('.').to_ascii_lowercase();
    if let Some((ns, svc)) = s.split_once('/') {
        return format!("{svc}.{ns}");
    }
    match s.strip_suffix(CLUSTERSET_ZONE) {
        Some(short) => short.trim_end_matches('.').to_string(),
        None => s,
    }
}

/// The admin route: the query string in, a status and JSON out.
pub fn route(
    snap: &Snapshot,
    health: &Health,
    breakers: &Breakers,
    unbound: &UnboundVips,
    latencies: &Latencies,
    query: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let answer = query_param(query.unwrap_or(""), "service")
        .filter(|s| !s.trim().is_empty())
        .ok_or(ExplainError::NoService)
        .and_then(|s| explain(snap, health, breakers, latencies, &s))
        .map(|e| e.with_unbound(unbound));
    match answer {
        Ok(e) => (StatusCode::OK, serde_json::to_value(e).unwrap_or_default()),
        Err(e) => {
            let status = match e {
                ExplainError::NoService => StatusCode::BAD_REQUEST,
                ExplainError::Unknown { .. } => StatusCode::NOT_FOUND,
            };
            (status, serde_json::json!({ "error": e.to_string() }))
        }
    }
}

/// Explains where the next request for `service` goes from this gateway.
pub fn explain(
    snap: &Snapshot,
    health: &Health,
    breakers: &Breakers,
    latencies: &Latencies,
    service: &str,
) -> Result<Explanation, ExplainError> {
    let key = service_key(service);
    let Some(import) = snap.imports.get(key.as_str()) else {
        let mut known: Vec<&str> = snap.imports.keys().map(|k| &**k).collect();
        known.sort_unstable();
        return Err(ExplainError::Unknown {
            service: key,
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        });
    };
    let target = Target {
        import: import.clone(),
        pinned: None,
    };
    let policy = snap.traffic.for_service(&import.name).clone();
    let verdict = verdicts(health, snap, &import.name, &policy);
    let (me, region) = (&*snap.cluster, &*snap.region);
    let shares = lb::first_pick_shares(&target, me, region, &policy, &verdict);
    let share_of = |b: &Backend| {
        shares
            .iter()
            .find(|(s, _)| s.cluster == b.cluster)
            .map_or(0.0, |(_, share)| *share)
    };
    let clusters: Vec<ClusterView> = import
        .backends
        .iter()
        .map(|b| {
            let v = verdict(b);
            let p99 = latencies.p99(&import.name, &b.cluster);
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            let tier = lb::tier(b, me, region);
            ClusterView {
                cluster: b.cluster.to_string(),
                region: b.region.to_string(),
                tier,
                tier_name: TIER_NAMES[tier].to_string(),
                healthy_endpoints: b.healthy,
                export_weight: b.weight,
                split_weight: policy.split.as_ref().and_then(|s| s.weight(&b.cluster)),
                verdict: VerdictView {
                    healthy: v.healthy,
                    dropped: v.dropped,
                    slow_start_factor: v.factor,
                    reason: v.reason.map(str::to_string),
                },
                in_flight: breakers.in_flight(&import.name, &b.cluster),
                max_requests: policy.max_requests,
                usable: lb::usable(b, me),
                fenced: policy.fences_out(&b.region),
                share: share_of(b),
                p99_ms: p99.map(ms),
                hedge_after_ms: policy.hedge.delay(p99).map(ms),
            }
        })
        .collect();
    let order: Vec<String> = lb::likely_order(&target, me, region, &policy, &verdict)
        .iter()
        .map(|b| b.cluster.to_string())
        .collect();
    let top = clusters
        .iter()
        .filter(|c| c.share > 0.0)
        .reduce(|a, b| if b.share > a.share { b } else { a })
        .map(|c| c.cluster.clone());
    let policy_view = policy_view(snap, &policy);
    let decision = Decision {
        cluster: top,
        shares: clusters
            .iter()
            .map(|c| (c.cluster.clone(), c.share))
            .collect(),
        order,
    };
    let from = FromCluster {
        cluster: me.to_string(),
        region: region.to_string(),
    };
    let summary = summary(&import.name, &from, &policy_view, &clusters, &decision);
    Ok(Explanation {
        service: import.name.to_string(),
        from,
        policy: policy_view,
        clusters,
        decision,
        summary,
        unbound_vips: Vec::new(),
    })
}

const TIER_NAMES: [&str; 3] = ["this cluster", "same region", "other region"];

fn policy_view(snap: &Snapshot, policy: &ServicePolicy) -> PolicyView {
    use isthmus_federation::duration::format;
    // The last applied document that sets a split is the one in force.
    let split_document = policy
        .documents
        .iter()
        .rev()
        .find(|name| {
            snap.traffic
                .documents
                .iter()
                .any(|d| d.name == **name && d.section_names().contains(&"split"))
        })
        .map(|d| d.to_string());
    PolicyView {
        documents: policy.documents.iter().map(|d| d.to_string()).collect(),
        split: policy.split.as_ref().map(|s| SplitView {
            weights: s.weights.iter().map(|(c, w)| (c.to_string(), *w)).collect(),
            cluster_header: s.cluster_header,
            document: split_document,
        }),
        shadow: policy.shadow.as_ref().map(|s| ShadowView {
            cluster: s.cluster.to_string(),
            percent: s.percent,
        }),
        threshold: policy.threshold,
        fence_regions: policy
            .fence_regions
            .as_ref()
            .map(|r| r.iter().map(|x| x.to_string()).collect()),
        slow_start: format(policy.slow_start),
        retries: policy.retries,
        per_try_timeout: format(policy.per_try_timeout),
        hedge: HedgeView {
            enabled: policy.hedge.enabled,
            multiplier: policy.hedge.multiplier,
            min: format(policy.hedge.min),
            max: format(policy.hedge.max),
        },
        max_requests: policy.max_requests,
    }
}

/// A share as a percentage for people: whole numbers when whole, else one decimal.
pub fn percent(share: f64) -> String {
    let p = share * 100.0;
    if (p - p.round()).abs() < 0.05 {
        format!("{} %", p.round())
    } else {
        format!("{p:.1} %")
    }
}

fn summary(
    service: &str,
    from: &FromCluster,
    policy: &PolicyView,
    clusters: &[ClusterView],
    decision: &Decision,
) -> String {
    let mut out = Vec::new();
    let top = decision
        .cluster
        .as_deref()
        .and_then(|t| clusters.iter().find(|c| c.cluster == t));
    match top {
        None => out.push(format!(
            "A request for {service} from {} fails now with 503: no cluster can take it.",
            from.cluster
        )),
        Some(top) => {
            let split = policy.split.as_ref();
            let basis = if !top.verdict.healthy {
                "in panic mode: no cluster is healthy, so unhealthy ones are tried".to_string()
            } else if split.is_some_and(|_| top.split_weight.is_some_and(|w| w > 0)) {
                match split.and_then(|s| s.document.as_deref()) {
                    Some(doc) => format!("by split {doc}"),
                    None => "by the policy's split".to_string(),
                }
            } else {
                "by failover tiers".to_string()
            };
            let others: Vec<String> = clusters
                .iter()
                .filter(|c| c.share > 0.0 && c.cluster != top.cluster)
                .map(|c| format!("{} {}", c.cluster, percent(c.share)))
                .collect();
            let here = if top.tier == 0 { " (this cluster)" } else { "" };
            out.push(format!(
                "A request for {service} from {} goes to {}{here} now ({} {basis}{}).",
                from.cluster,
                top.cluster,
                percent(top.share),
                if others.is_empty() {
                    String::new()
                } else {
                    format!("; {}", others.join(", "))
                }
            ));
        }
    }
    for c in clusters {
        out.extend(cluster_note(c, policy));
    }
    let retries: Vec<&str> = decision.order.iter().skip(1).map(String::as_str).collect();
    if top.is_some() {
        if policy.retries == 0 {
            out.push("A failed try is not retried (retries: 0).".into());
        } else if !retries.is_empty() {
            out.push(format!(
                "A failed try moves on to {} (at most {} {} of a replayable request).",
                retries.join(", then "),
                policy.retries,
                if policy.retries == 1 {
                    "retry"
                } else {
                    "retries"
                }
            ));
        }
    }
    if let Some(s) = &policy.shadow {
        out.push(format!(
            "{} of requests are also copied to {} (responses discarded).",
            percent(s.percent / 100.0),
            s.cluster
        ));
    }
    if policy.split.as_ref().is_some_and(|s| s.cluster_header) {
        out.push("A client may pick the cluster with x-isthmus-cluster.".into());
    }
    out.join(" ")
}

/// What to say about one cluster, when something needs saying.
fn cluster_note(c: &ClusterView, policy: &PolicyView) -> Option<String> {
    let name = &c.cluster;
    let reason = c.verdict.reason.as_deref();
    let mut note = if !c.usable {
        Some(if c.healthy_endpoints == 0 {
            format!("{name} reports no healthy endpoint, so it is not used.")
        } else {
            format!("{name} has no registered gateway, so it is not used.")
        })
    } else if c.fenced {
        let regions = policy
            .fence_regions
            .as_deref()
            .unwrap_or_default()
            .join(", ");
        Some(format!(
            "{name} ({}) is outside the fence ({regions}): never chosen.",
            c.region
        ))
    } else if c.verdict.dropped {
        Some(format!(
            "{name} is dropped ({}): not even a last resort.",
            reason.unwrap_or("out of touch")
        ))
    } else if !c.verdict.healthy {
        Some(format!(
            "{name} is unhealthy ({}): tried only when nothing healthy is left.",
            reason.unwrap_or("failing checks")
        ))
    } else if c.share == 0.0 {
        Some(match &policy.split {
            Some(_) if c.split_weight.is_none_or(|w| w == 0) => {
                format!("{name} is not in the split: a retry candidate only.")
            }
            _ => format!(
                "{name} ({}) is a retry candidate: an earlier tier takes the first tries.",
                c.tier_name
            ),
        })
    } else if c.verdict.slow_start_factor < 1.0 {
        Some(format!(
            "{name} is back from a failure and in slow start at {} of its weight.",
            percent(c.verdict.slow_start_factor)
        ))
    } else {
        None
    };
    if c.usable && c.in_flight >= c.max_requests {
        let open = format!(
            "{name}'s circuit is open: {} requests in flight (max {}).",
            c.in_flight, c.max_requests
        );
        note = Some(match note {
            Some(n) => format!("{n} {open}"),
            None => open,
        });
    }
    note
}

/// One query parameter, percent-decoded (`+` is a space).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::table::Import;

    fn backend(cluster: &str, region: &str, gateway: &str) -> Backend {
        Backend::for_test(cluster, region, gateway, 1, 2, false)
    }

    fn snapshot(policy: &str) -> Snapshot {
        let import = Import::new(
            "echo.demo".into(),
            vec![],
            vec![
                backend("west", "us", "10.0.0.1:15443"),
                backend("south", "sa", "10.0.0.2:15443"),
                backend("north", "eu", "10.0.0.3:15443"),
            ],
        );
        let policies: BTreeMap<String, String> =
            [("echo-canary".to_string(), policy.to_string())].into();
        Snapshot {
            version: 1,
            cluster: "east".into(),
            region: "us".into(),
            imports: [("echo.demo".into(), Arc::new(import))].into(),
            traffic: crate::policy::Policies::build(&policies),
            ..Snapshot::default()
        }
    }

    const CANARY: &str = r#"{"services":["demo/echo"],"split":{"weights":{"west":95,"south":5},"cluster_header":true},"shadow":{"cluster":"north","percent":10},"failover":{"fence_regions":["us","sa"]}}"#;

    #[tokio::test]
    async fn the_split_decides_and_health_renormalises_it() {
        let snap = snapshot(CANARY);
        let health = Health::default();
        let breakers = Breakers::default();
        let e = explain(
            &snap,
            &health,
            &breakers,
            &Latencies::default(),
            "demo/echo",
        )
        .expect("known");
        assert_eq!(e.service, "echo.demo");
        assert_eq!(e.from.cluster, "east");
        assert_eq!(e.decision.cluster.as_deref(), Some("west"));
        assert!((e.decision.shares["west"] - 0.95).abs() < 1e-9, "{e:?}");
        assert!((e.decision.shares["south"] - 0.05).abs() < 1e-9, "{e:?}");
        assert_eq!(e.decision.shares["north"], 0.0);
        assert_eq!(e.decision.order, ["west", "south"], "north is fenced out");
        let north = &e.clusters[2];
        assert!(north.fenced && north.usable && north.split_weight.is_none());
        let west = &e.clusters[0];
        assert_eq!((west.tier, west.tier_name.as_str()), (1, "same region"));
        assert_eq!(west.split_weight, Some(95));
        assert_eq!(
            e.policy.split.as_ref().and_then(|s| s.document.as_deref()),
            Some("echo-canary")
        );
        assert!(
            e.summary.starts_with(
                "A request for echo.demo from east goes to west now (95 % by split echo-canary; south 5 %)."
            ),
            "{}",
            e.summary
        );
        assert!(
            e.summary.contains("north (eu) is outside the fence"),
            "{}",
            e.summary
        );
        assert!(
            e.summary
                .contains("10 % of requests are also copied to north"),
            "{}",
            e.summary
        );

        // West's gateway stops answering probes: south takes everything; a request in flight
        // to south shows on its breaker.
        for _ in 0..health.config.probe_failures {
            health.probed(&"10.0.0.1:15443".into(), false);
        }
        let _in_flight = breakers.enter(&"echo.demo".into(), &"south".into(), 1024);
        let e = explain(
            &snap,
            &health,
            &breakers,
            &Latencies::default(),
            "echo.demo.svc.clusterset.local.",
        )
        .expect("known");
        assert_eq!(e.decision.cluster.as_deref(), Some("south"));
        assert_eq!(e.decision.shares["south"], 1.0);
        assert_eq!(e.decision.order, ["south", "west"]);
        assert!(!e.clusters[0].verdict.healthy);
        assert_eq!(e.clusters[1].in_flight, 1);
        assert!(
            e.summary
                .contains("west is unhealthy (no peer gateway answers probes)"),
            "{}",
            e.summary
        );
    }

    #[tokio::test]
    async fn without_a_policy_the_tiers_decide() {
        let snap = snapshot(r#"{"services":["other/svc"],"retry":{"retries":0}}"#);
        let e = explain(
            &snap,
            &Health::default(),
            &Breakers::default(),
            &Latencies::default(),
            "echo.demo",
        )
        .expect("known");
        assert_eq!(e.decision.cluster.as_deref(), Some("west"));
        assert_eq!(e.decision.shares["west"], 1.0);
        assert_eq!(e.decision.order[0], "west");
        assert!(e.policy.split.is_none() && e.policy.documents.is_empty());
        assert!(
            e.summary.contains("(100 % by failover tiers)"),
            "{}",
            e.summary
        );
        assert!(
            e.summary
                .contains("south (other region) is a retry candidate"),
            "{}",
            e.summary
        );
    }

    #[tokio::test]
    async fn the_learned_p99_and_the_hedge_settings_are_shown() {
        let snap = snapshot(
            r#"{"services":["demo/echo"],"hedge":{"multiplier":3,"min":"10ms","max":"2s"}}"#,
        );
        let latencies = Latencies::default();
        let ring = latencies.ring(&"echo.demo".into(), &"west".into());
        for _ in 0..crate::latency::MIN_SAMPLES {
            ring.record(std::time::Duration::from_millis(40));
        }
        let e = explain(
            &snap,
            &Health::default(),
            &Breakers::default(),
            &latencies,
            "echo.demo",
        )
        .expect("known");
        let h = &e.policy.hedge;
        assert!(h.enabled);
        assert_eq!(
            (h.multiplier, h.min.as_str(), h.max.as_str()),
            (3.0, "10ms", "2s")
        );
        let west = e
            .clusters
            .iter()
            .find(|c| c.cluster == "west")
            .expect("west");
        assert_eq!(
            (west.p99_ms, west.hedge_after_ms),
            (Some(40.0), Some(120.0))
        );
        let south = e
            .clusters
            .iter()
            .find(|c| c.cluster == "south")
            .expect("south");
        assert_eq!(south.p99_ms, None, "nothing learned yet");
        assert_eq!(south.hedge_after_ms, Some(2000.0), "unknown p99: max");
    }

    #[tokio::test]
    async fn the_route_answers_json_and_refuses_unknown_services() {
        let snap = snapshot(CANARY);
        let (h, b) = (Health::default(), Breakers::default());
        let none = UnboundVips::new();
        let lat = Latencies::default();
        let (status, body) = route(&snap, &h, &b, &none, &lat, Some("service=demo%2Fecho"));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["decision"]["cluster"], "west");
        assert_eq!(body["clusters"][0]["verdict"]["healthy"], true);
        assert!(body.get("unbound_vips").is_none(), "{body}");
        // A VIP of the service this gateway could not bind is named, with why DNS skips it;
        // another service's is not.
        let unbound: UnboundVips = [
            (
                "fd77::1",
                "echo.demo",
                "Cannot assign requested address (os error 99)",
            ),
            ("fd77::9", "other.demo", "in use"),
        ]
        .into_iter()
        .map(|(ip, svc, why)| (ip.parse().expect("ip"), (svc.to_string(), why.to_string())))
        .collect();
        let (_, body) = route(&snap, &h, &b, &unbound, &lat, Some("service=demo%2Fecho"));
        assert_eq!(body["unbound_vips"][0]["address"], "fd77::1", "{body}");
        assert_eq!(
            body["unbound_vips"].as_array().map(Vec::len),
            Some(1),
            "{body}"
        );
        let summary = body["summary"].as_str().unwrap_or_default();
        assert!(
            summary.contains("cannot listen on fd77::1 (Cannot assign requested address")
                && summary.contains("DNS does not answer"),
            "{summary}"
        );
        let (status, body) = route(&snap, &h, &b, &none, &lat, Some("service=cart.shop"));
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("imports: echo.demo")),
            "{body}"
        );
        assert_eq!(
            route(&snap, &h, &b, &none, &lat, None).0,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn service_names_in_every_form() {
        for input in [
            "echo.demo",
            "demo/echo",
            "Echo.Demo.svc.clusterset.local",
            "echo.demo.svc.clusterset.local.",
        ] {
            assert_eq!(service_key(input), "echo.demo", "{input}");
        }
        assert_eq!(
            query_param("a=1&service=demo%2fecho+x", "service").as_deref(),
            Some("demo/echo x")
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent(0.05), "5 %");
        assert_eq!(percent(1.0 / 3.0), "33.3 %");
    }
}
