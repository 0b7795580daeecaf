//! Traffic policy documents: the catalog's `policies:` section, one named document each. The
//! federation validates them when the catalog loads (a bad document refuses the whole edit, the
//! error naming the document and the field) and distributes them to its gateways, which parse
//! them again with the same code. Pure: no I/O, table-tested.
//!
//! Where each section takes effect:
//! - on the **calling side** (the outbound gateway of the cluster whose catalog holds it):
//!   `failover`, `retry`, `hedge`, `circuit_breaker`, `split`, `shadow`;
//! - on the **serving side** (the inbound gateway of the exporting cluster): `authorization`,
//!   `rate_limit`, `fault`.
//!
//! ```yaml
//! policies:
//!   echo-canary:
//!     services: [demo/echo]            # "<ns>/<name>", or "*" for every service
//!     failover: {threshold: 0.7, fence_regions: [us-east], slow_start: 10s}
//!     retry: {retries: 2, per_try_timeout: 2s, budget_percent: 20, grpc_statuses: [unavailable]}
//!     hedge: {enabled: true, multiplier: 2, min: 50ms, max: 1s}   # see model::hedge
//!     circuit_breaker: {max_requests: 1024}
//!     split:
//!       weights: {east: 95, south: 5}  # shares across clusters, renormalised over healthy ones
//!       cluster_header: true           # honour `x-isthmus-cluster: <cluster>` (default false)
//!     shadow: {cluster: south, percent: 10}   # mirror 10 %: fire-and-forget, never retried
//!     authorization:
//!       default: deny                  # allow | deny (default: deny when `allow` has rules)
//!       allow:
//!         - clusters: [west]
//!           identities: ["spiffe://west.mesh/ns/shop/sa/*"]
//!       deny:
//!         - trust_domains: [south.mesh]
//!     rate_limit:
//!       requests_per_second: 200       # the whole service, every caller together
//!       burst: 200                     # default: one second's worth
//!       per_source_cluster: {"*": 50, west: 100}
//!       max_concurrent: 64             # requests in flight at once
//!     fault:
//!       from: [west]                   # calling clusters (default: every caller)
//!       abort: {percent: 100, status: 503}
//!       delay: {percent: 10, duration: 2s}
//!       expires_at: "2026-12-01T10:00:00Z"   # required: a drill always ends
//! ```
//!
//! Several documents may name one service: the `"*"` documents apply first, then the others in
//! name order, each replacing only the sections it sets.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

pub use super::hedge::Hedge;

/// What the gateways apply to one service. Every section has a default that changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePolicy {
    /// The documents that set a section of this service's policy, in the order they applied.
    pub documents: Vec<Arc<str>>,
    pub threshold: f64,
    /// When set, clusters outside these regions are never chosen.
    pub fence_regions: Option<Vec<Arc<str>>>,
    pub slow_start: Duration,
    pub retries: u32,
    pub per_try_timeout: Duration,
    pub budget_percent: u32,
    /// gRPC status codes worth another try on another cluster.
    pub grpc_statuses: Vec<u32>,
    pub hedge: Hedge,
    pub max_requests: u32,
    pub split: Option<Split>,
    pub shadow: Option<Shadow>,
    pub authorization: Option<Authorization>,
    pub rate_limit: Option<RateLimit>,
    pub fault: Option<Fault>,
}

impl Default for ServicePolicy {
    fn default() -> Self {
        Self {
            documents: Vec::new(),
            threshold: 0.7,
            fence_regions: None,
            slow_start: Duration::from_secs(10),
            retries: 2,
            per_try_timeout: Duration::from_secs(15),
            budget_percent: 20,
            grpc_statuses: vec![14],
            hedge: Hedge::default(),
            max_requests: 1024,
            split: None,
            shadow: None,
            authorization: None,
            rate_limit: None,
            fault: None,
        }
    }
}

impl ServicePolicy {
    /// Whether `region` lies outside the policy's fence (never chosen, never copied to).
    pub fn fences_out(&self, region: &str) -> bool {
        self.fence_regions
            .as_ref()
            .is_some_and(|regions| !regions.iter().any(|r| **r == *region))
    }
}

/// Shares of the first try across clusters.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// `(cluster, weight)`, weights > 0 for at least one cluster.
    pub weights: Vec<(Arc<str>, u32)>,
    /// Whether a caller may name the cluster in `x-isthmus-cluster`.
    pub cluster_header: bool,
}

impl Split {
    pub fn weight(&self, cluster: &str) -> Option<u32> {
        self.weights
            .iter()
            .find(|(c, _)| &**c == cluster)
            .map(|(_, w)| *w)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    pub cluster: Arc<str>,
    /// 0–100.
    pub percent: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// Who a rule matches: every field given must match (and any entry of a list).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Match {
    pub clusters: Vec<Arc<str>>,
    pub trust_domains: Vec<Arc<str>>,
    /// Exact SPIFFE IDs, or prefixes ending in `*`. Matches only when the caller's workload
    /// identity is known.
    pub identities: Vec<Arc<str>>,
}

/// The caller as the serving gateway knows it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub cluster: &'a str,
    pub trust_domain: &'a str,
    /// The calling workload's SPIFFE ID, when its gateway knew it (DESIGN: caller identity).
    pub identity: Option<&'a str>,
}

impl Match {
    pub fn matches(&self, caller: &Caller<'_>) -> bool {
        let any =
            |list: &[Arc<str>], value: &str| list.is_empty() || list.iter().any(|x| **x == *value);
        any(&self.clusters, caller.cluster)
            && any(&self.trust_domains, caller.trust_domain)
            && (self.identities.is_empty()
                || caller.identity.is_some_and(|id| {
                    self.identities.iter().any(|p| match p.strip_suffix('*') {
                        Some(prefix) => id.starts_with(prefix),
                        None => **p == *id,
                    })
                }))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Authorization {
    pub default: Action,
    pub allow: Vec<Match>,
    pub deny: Vec<Match>,
}

/// An authorization decision and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

impl Authorization {
    /// Deny rules first, then allow rules, then the default.
    pub fn decide(&self, caller: &Caller<'_>) -> Decision {
        let who = || {
            let id = caller.identity.unwrap_or("identity unknown");
            format!("{} ({}, {id})", caller.cluster, caller.trust_domain)
        };
        if let Some(i) = self.deny.iter().position(|m| m.matches(caller)) {
            return Decision {
                allowed: false,
                reason: format!("{} matches deny rule {}", who(), i + 1),
            };
        }
        if let Some(i) = self.allow.iter().position(|m| m.matches(caller)) {
            return Decision {
                allowed: true,
                reason: format!("{} matches allow rule {}", who(), i + 1),
            };
        }
        Decision {
            allowed: self.default == Action::Allow,
            reason: format!(
                "{} matches no rule: default {}",
                who(),
                if self.default == Action::Allow {
                    "allow"
                } else {
                    "deny"
                }
            ),
        }
    }
}

/// A token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimit {
    /// The whole service at one serving gateway.
    pub service: Option<Rate>,
    /// Each calling cluster's own bucket; `"*"` for clusters not named.
    pub per_source_cluster: Vec<(Arc<str>, Rate)>,
    pub max_concurrent: Option<u32>,
}

impl RateLimit {
    pub fn for_cluster(&self, cluster: &str) -> Option<Rate> {
        let find = |name: &str| {
            self.per_source_cluster
                .iter()
                .find(|(c, _)| &**c == name)
                .map(|(_, r)| *r)
        };
        find(cluster).or_else(|| find("*"))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Calling clusters the fault applies to; empty = every caller.
    pub from: Vec<Arc<str>>,
    /// `(percent, HTTP status)`.
    pub abort: Option<(f64, u16)>,
    /// `(percent, delay)`.
    pub delay: Option<(f64, Duration)>,
    pub expires_at: SystemTime,
}

impl Fault {
    pub fn active(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }

    pub fn applies_to(&self, cluster: &str, now: SystemTime) -> bool {
        self.active(now) && (self.from.is_empty() || self.from.iter().any(|c| **c == *cluster))
    }
}

/// A validated document: the services it names and the sections it sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub name: Arc<str>,
    pub services: Vec<String>,
    sections: Sections,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Sections {
    threshold: Option<f64>,
    fence_regions: Option<Vec<Arc<str>>>,
    slow_start: Option<Duration>,
    retries: Option<u32>,
    per_try_timeout: Option<Duration>,
    budget_percent: Option<u32>,
    grpc_statuses: Option<Vec<u32>>,
    hedge: Option<Hedge>,
    max_requests: Option<u32>,
    split: Option<Split>,
    shadow: Option<Shadow>,
    authorization: Option<Authorization>,
    rate_limit: Option<RateLimit>,
    fault: Option<Fault>,
}

impl Document {
    /// Whether this document names every service.
    pub fn is_wildcard(&self) -> bool {
        self.services.iter().any(|s| s == "*")
    }

    /// The service keys (`<name>.<ns>`, lowercase) this document names, `"*"` as is.
    pub fn service_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.services.iter().map(|s| match s.split_once('/') {
            Some((ns, n)) => format!("{n}.{ns}").to_ascii_lowercase(),
            None => s.to_ascii_lowercase(),
        })
    }

    pub fn fault(&self) -> Option<&Fault> {
        self.sections.fault.as_ref()
    }

    /// The sections this document sets, by their YAML names.
    pub fn section_names(&self) -> Vec<&'static str> {
        let s = &self.sections;
        let mut out = Vec::new();
        if s.threshold.is_some() || s.fence_regions.is_some() || s.slow_start.is_some() {
            out.push("failover");
        }
        if s.retries.is_some()
            || s.per_try_timeout.is_some()
            || s.budget_percent.is_some()
            || s.grpc_statuses.is_some()
        {
            out.push("retry");
        }
        for (set, name) in [
            (s.hedge.is_some(), "hedge"),
            (s.max_requests.is_some(), "circuit_breaker"),
            (s.split.is_some(), "split"),
            (s.shadow.is_some(), "shadow"),
            (s.authorization.is_some(), "authorization"),
            (s.rate_limit.is_some(), "rate_limit"),
            (s.fault.is_some(), "fault"),
        ] {
            if set {
                out.push(name);
            }
        }
        out
    }

    /// Applies the sections this document sets over `policy`.
    pub fn apply_to(&self, policy: &mut ServicePolicy) {
        let s = self.sections.clone();
        policy.documents.push(self.name.clone());
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = s.$field { policy.$field = v; } )* };
        }
        set!(
            threshold,
            slow_start,
            retries,
            per_try_timeout,
            budget_percent,
            grpc_statuses,
            hedge,
            max_requests
        );
        if s.fence_regions.is_some() {
            policy.fence_regions = s.fence_regions;
        }
        macro_rules! replace {
            ($($field:ident),*) => { $( if s.$field.is_some() { policy.$field = s.$field; } )* };
        }
        replace!(split, shadow, authorization, rate_limit, fault);
    }
}

#[path = "policy_parse.rs"]
mod parse;
pub use parse::{PolicyError, format_rfc3339, grpc_code, parse, parse_all, parse_rfc3339};

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
