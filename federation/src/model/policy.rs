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
use super::hedge::RawHedge;

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

/// A refused document: which one, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {document}: field `{field}`: {reason}")]
pub struct PolicyError {
    pub document: String,
    pub field: String,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    services: Vec<String>,
    #[serde(default)]
    failover: Option<RawFailover>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    hedge: Option<RawHedge>,
    #[serde(default)]
    circuit_breaker: Option<RawCircuitBreaker>,
    #[serde(default)]
    split: Option<RawSplit>,
    #[serde(default)]
    shadow: Option<RawShadow>,
    #[serde(default)]
    authorization: Option<RawAuthorization>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    fault: Option<RawFault>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    threshold: Option<f64>,
    fence_regions: Option<Vec<String>>,
    slow_start: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    retries: Option<u32>,
    per_try_timeout: Option<String>,
    budget_percent: Option<u32>,
    grpc_statuses: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCircuitBreaker {
    max_requests: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSplit {
    #[serde(default)]
    weights: std::collections::BTreeMap<String, u32>,
    #[serde(default)]
    cluster_header: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    cluster: String,
    percent: f64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    clusters: Vec<String>,
    #[serde(default)]
    trust_domains: Vec<String>,
    #[serde(default)]
    identities: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthorization {
    default: Option<Action>,
    #[serde(default)]
    allow: Vec<RawMatch>,
    #[serde(default)]
    deny: Vec<RawMatch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    requests_per_second: Option<f64>,
    burst: Option<f64>,
    #[serde(default)]
    per_source_cluster: std::collections::BTreeMap<String, f64>,
    max_concurrent: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbort {
    percent: f64,
    #[serde(default = "default_abort_status")]
    status: u16,
}

fn default_abort_status() -> u16 {
    503
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelay {
    percent: f64,
    duration: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    #[serde(default)]
    from: Vec<String>,
    abort: Option<RawAbort>,
    delay: Option<RawDelay>,
    expires_at: Option<String>,
}

/// gRPC status code by its lowercase name (the ones worth retrying on another cluster).
pub fn grpc_code(name: &str) -> Option<u32> {
    Some(match name.to_ascii_lowercase().as_str() {
        "cancelled" => 1,
        "unknown" => 2,
        "deadline_exceeded" => 4,
        "resource_exhausted" => 8,
        "aborted" => 10,
        "internal" => 13,
        "unavailable" => 14,
        _ => return None,
    })
}

/// The longest injected delay: a drill slows calls, it does not park them.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Parses and validates one document.
pub fn parse(name: &str, json: &serde_json::Value) -> Result<Document, PolicyError> {
    let bad = |field: &str, reason: String| PolicyError {
        document: name.to_string(),
        field: field.to_string(),
        reason,
    };
    let raw: RawDocument = serde_json::from_value(json.clone()).map_err(|e| {
        // serde names an unknown field in its message; point at the document otherwise.
        let text = e.to_string();
        let field = text
            .split('`')
            .nth(1)
            .filter(|_| text.starts_with("unknown field"))
            .unwrap_or("(document)");
        bad(field, text.clone())
    })?;
    if raw.services.is_empty() {
        return Err(bad(
            "services",
            "name at least one service (\"<ns>/<name>\" or \"*\")".into(),
        ));
    }
    for s in &raw.services {
        let ok = s == "*"
            || s.split_once('/').is_some_and(|(ns, n)| {
                !ns.is_empty()
                    && !n.is_empty()
                    && !n.contains('/')
                    && !s.contains(char::is_whitespace)
            });
        if !ok {
            return Err(bad(
                "services",
                format!("{s:?} is not \"<ns>/<name>\" or \"*\""),
            ));
        }
    }
    let duration =
        |field: &str, text: &str| crate::duration::parse(text).map_err(|reason| bad(field, reason));
    let percent = |field: &str, p: f64| {
        if (0.0..=100.0).contains(&p) {
            Ok(p)
        } else {
            Err(bad(field, "between 0 and 100".into()))
        }
    };
    let cluster_name = |field: &str, c: &str| -> Result<Arc<str>, PolicyError> {
        crate::model::ClusterName::new(c)
            .map(|_| Arc::from(c))
            .map_err(|e| bad(field, e.to_string()))
    };
    let mut s = Sections::default();
    if let Some(f) = raw.failover {
        if let Some(t) = f.threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(bad("failover.threshold", "between 0 and 1".into()));
            }
            s.threshold = Some(t);
        }
        if let Some(regions) = f.fence_regions {
            if regions.is_empty() {
                return Err(bad(
                    "failover.fence_regions",
                    "name at least one region or leave it out".into(),
                ));
            }
            s.fence_regions = Some(regions.iter().map(|r| r.as_str().into()).collect());
        }
        if let Some(t) = f.slow_start {
            s.slow_start = Some(duration("failover.slow_start", &t)?);
        }
    }
    if let Some(r) = raw.retry {
        if let Some(n) = r.retries {
            if n > 5 {
                return Err(bad("retry.retries", "at most 5".into()));
            }
            s.retries = Some(n);
        }
        if let Some(t) = r.per_try_timeout {
            let t = duration("retry.per_try_timeout", &t)?;
            if t.is_zero() {
                return Err(bad("retry.per_try_timeout", "must be above zero".into()));
            }
            s.per_try_timeout = Some(t);
        }
        if let Some(b) = r.budget_percent {
            if b > 100 {
                return Err(bad("retry.budget_percent", "at most 100".into()));
            }
            s.budget_percent = Some(b);
        }
        if let Some(statuses) = r.grpc_statuses {
            let mut codes = Vec::new();
            for st in &statuses {
                codes.push(grpc_code(st).ok_or_else(|| {
                    bad("retry.grpc_statuses", format!("unknown gRPC status {st:?}"))
                })?);
            }
            s.grpc_statuses = Some(codes);
        }
    }
    if let Some(h) = raw.hedge {
        s.hedge = Some(super::hedge::validate(h).map_err(|(field, reason)| bad(field, reason))?);
    }
    if let Some(c) = raw.circuit_breaker
        && let Some(m) = c.max_requests
    {
        if m == 0 {
            return Err(bad("circuit_breaker.max_requests", "at least 1".into()));
        }
        s.max_requests = Some(m);
    }
    if let Some(split) = raw.split {
        let mut weights = Vec::new();
        for (cluster, w) in &split.weights {
            let field = format!("split.weights.{cluster}");
            let cluster = cluster_name(&field, cluster)?;
            if *w > 1_000_000 {
                return Err(bad(&field, "at most 1000000".into()));
            }
            weights.push((cluster, *w));
        }
        if !weights.is_empty() && weights.iter().all(|(_, w)| *w == 0) {
            return Err(bad(
                "split.weights",
                "at least one cluster needs a weight above 0".into(),
            ));
        }
        if weights.is_empty() && !split.cluster_header {
            return Err(bad(
                "split",
                "set `weights`, `cluster_header`, or leave the section out".into(),
            ));
        }
        s.split = Some(Split {
            weights,
            cluster_header: split.cluster_header,
        });
    }
    if let Some(sh) = raw.shadow {
        s.shadow = Some(Shadow {
            cluster: cluster_name("shadow.cluster", &sh.cluster)?,
            percent: percent("shadow.percent", sh.percent)?,
        });
    }
    if let Some(a) = raw.authorization {
        let rules = |list: Vec<RawMatch>, kind: &str| -> Result<Vec<Match>, PolicyError> {
            list.into_iter()
                .enumerate()
                .map(|(i, m)| {
                    let field = format!("authorization.{kind}[{i}]");
                    if m.clusters.is_empty() && m.trust_domains.is_empty() && m.identities.is_empty()
                    {
                        return Err(bad(
                            &field,
                            "name at least one of clusters, trust_domains, identities".into(),
                        ));
                    }
                    let clusters = m
                        .clusters
                        .iter()
                        .map(|c| cluster_name(&format!("{field}.clusters"), c))
                        .collect::<Result<_, _>>()?;
                    let trust_domains = m
                        .trust_domains
                        .iter()
                        .map(|t| {
                            crate::identity::TrustDomain::new(t)
                                .map(|_| Arc::from(t.as_str()))
                                .map_err(|e| bad(&format!("{field}.trust_domains"), e.to_string()))
                        })
                        .collect::<Result<_, _>>()?;
                    let identities = m
                        .identities
                        .iter()
                        .map(|id| {
                            let exact = id.strip_suffix('*').is_none();
                            let valid = if exact {
                                crate::identity::SpiffeId::parse(id).is_ok()
                            } else {
                                id.starts_with("spiffe://") && id.len() > "spiffe://".len() + 1
                            };
                            if valid {
                                Ok(Arc::from(id.as_str()))
                            } else {
                                Err(bad(
                                    &format!("{field}.identities"),
                                    format!(
                                        "{id:?} is not a SPIFFE ID (spiffe://<trust-domain>/...) or a prefix of one ending in *"
                                    ),
                                ))
                            }
                        })
                        .collect::<Result<_, _>>()?;
                    Ok(Match {
                        clusters,
                        trust_domains,
                        identities,
                    })
                })
                .collect()
        };
        let allow = rules(a.allow, "allow")?;
        let deny = rules(a.deny, "deny")?;
        let default = a.default.unwrap_or(if allow.is_empty() {
            Action::Allow
        } else {
            Action::Deny
        });
        s.authorization = Some(Authorization {
            default,
            allow,
            deny,
        });
    }
    if let Some(r) = raw.rate_limit {
        let rate = |field: &str, per_second: f64, burst: Option<f64>| {
            if !(per_second > 0.0 && per_second <= 10_000_000.0) {
                return Err(bad(field, "above 0 and at most 10000000".into()));
            }
            let burst = burst.unwrap_or(per_second.max(1.0));
            if !(1.0..=10_000_000.0).contains(&burst) {
                return Err(bad(
                    "rate_limit.burst",
                    "at least 1 and at most 10000000".into(),
                ));
            }
            Ok(Rate { per_second, burst })
        };
        let mut limit = RateLimit::default();
        match r.requests_per_second {
            Some(rps) => {
                limit.service = Some(rate("rate_limit.requests_per_second", rps, r.burst)?)
            }
            None if r.burst.is_some() => {
                return Err(bad(
                    "rate_limit.burst",
                    "needs rate_limit.requests_per_second".into(),
                ));
            }
            None => {}
        }
        for (cluster, rps) in &r.per_source_cluster {
            let field = format!("rate_limit.per_source_cluster.{cluster}");
            let name = if cluster == "*" {
                Arc::from("*")
            } else {
                cluster_name(&field, cluster)?
            };
            limit
                .per_source_cluster
                .push((name, rate(&field, *rps, None)?));
        }
        if let Some(m) = r.max_concurrent {
            if m == 0 {
                return Err(bad("rate_limit.max_concurrent", "at least 1".into()));
            }
            limit.max_concurrent = Some(m);
        }
        if limit.service.is_none()
            && limit.per_source_cluster.is_empty()
            && limit.max_concurrent.is_none()
        {
            return Err(bad(
                "rate_limit",
                "set requests_per_second, per_source_cluster or max_concurrent".into(),
            ));
        }
        s.rate_limit = Some(limit);
    }
    if let Some(f) = raw.fault {
        let from = f
            .from
            .iter()
            .map(|c| cluster_name("fault.from", c))
            .collect::<Result<_, _>>()?;
        let abort = match f.abort {
            Some(a) => {
                if !(400..=599).contains(&a.status) {
                    return Err(bad(
                        "fault.abort.status",
                        "an HTTP status from 400 to 599".into(),
                    ));
                }
                Some((percent("fault.abort.percent", a.percent)?, a.status))
            }
            None => None,
        };
        let delay = match f.delay {
            Some(d) => {
                let t = duration("fault.delay.duration", &d.duration)?;
                if t.is_zero() || t > MAX_DELAY {
                    return Err(bad(
                        "fault.delay.duration",
                        "above 0 and at most 60s".into(),
                    ));
                }
                Some((percent("fault.delay.percent", d.percent)?, t))
            }
            None => None,
        };
        if abort.is_none() && delay.is_none() {
            return Err(bad("fault", "set abort, delay or both".into()));
        }
        let text = f.expires_at.ok_or_else(|| {
            bad(
                "fault.expires_at",
                "required (RFC 3339, e.g. 2026-12-01T10:00:00Z): a fault always ends".into(),
            )
        })?;
        let expires_at = parse_rfc3339(&text).map_err(|r| bad("fault.expires_at", r))?;
        s.fault = Some(Fault {
            from,
            abort,
            delay,
            expires_at,
        });
    }
    Ok(Document {
        name: name.into(),
        services: raw.services,
        sections: s,
    })
}

/// Parses every document; the first bad one is the error.
pub fn parse_all<'a>(
    docs: impl IntoIterator<Item = (&'a String, &'a serde_json::Value)>,
) -> Result<Vec<Document>, PolicyError> {
    docs.into_iter().map(|(n, v)| parse(n, v)).collect()
}

/// RFC 3339 time (`2026-12-01T10:00:00Z`, offsets allowed) as a system time.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!("{text:?} is not an RFC 3339 time (e.g. 2026-12-01T10:00:00Z): {e}")
        })?;
    Ok(SystemTime::from(t))
}

/// A system time as RFC 3339 UTC.
pub fn format_rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: serde_json::Value) -> Result<Document, PolicyError> {
        parse("p", &v)
    }

    fn policy(docs: &[serde_json::Value]) -> ServicePolicy {
        let mut p = ServicePolicy::default();
        for d in docs {
            doc(d.clone()).unwrap().apply_to(&mut p);
        }
        p
    }

    #[test]
    fn every_section_parses_into_the_policy() {
        let p = policy(&[json!({
            "services": ["demo/echo"],
            "failover": {"threshold": 0.5, "fence_regions": ["eu"], "slow_start": "30s"},
            "retry": {"retries": 1, "per_try_timeout": "500ms", "grpc_statuses": ["unavailable", "resource_exhausted"]},
            "circuit_breaker": {"max_requests": 7},
            "split": {"weights": {"east": 95, "south": 5}, "cluster_header": true},
            "shadow": {"cluster": "south", "percent": 10},
            "authorization": {"allow": [{"clusters": ["west"], "identities": ["spiffe://west.mesh/ns/shop/*"]}]},
            "rate_limit": {"requests_per_second": 100, "per_source_cluster": {"*": 10, "west": 50}, "max_concurrent": 8},
            "fault": {"from": ["west"], "abort": {"percent": 100}, "delay": {"percent": 5, "duration": "1s"}, "expires_at": "2030-01-01T00:00:00Z"}
        })]);
        assert_eq!(p.threshold, 0.5);
        assert_eq!(p.fence_regions.as_deref().map(|r| &*r[0]), Some("eu"));
        assert!(p.fences_out("us") && !p.fences_out("eu"));
        assert!(
            !ServicePolicy::default().fences_out("us"),
            "no fence: every region"
        );
        assert_eq!(p.slow_start, Duration::from_secs(30));
        assert_eq!(
            (p.retries, p.per_try_timeout),
            (1, Duration::from_millis(500))
        );
        assert_eq!(p.grpc_statuses, vec![14, 8]);
        assert_eq!(p.max_requests, 7);
        let split = p.split.unwrap();
        assert_eq!(
            (split.weight("east"), split.weight("south")),
            (Some(95), Some(5))
        );
        assert!(split.cluster_header);
        assert_eq!(p.shadow.unwrap().percent, 10.0);
        let authz = p.authorization.unwrap();
        assert_eq!(
            authz.default,
            Action::Deny,
            "allow rules make the default deny"
        );
        let rl = p.rate_limit.unwrap();
        assert_eq!(rl.service.unwrap().burst, 100.0);
        assert_eq!(rl.for_cluster("west").unwrap().per_second, 50.0);
        assert_eq!(rl.for_cluster("south").unwrap().per_second, 10.0);
        assert_eq!(rl.max_concurrent, Some(8));
        let fault = p.fault.unwrap();
        assert_eq!(fault.abort, Some((100.0, 503)));
        assert!(fault.applies_to("west", SystemTime::now()));
        assert!(!fault.applies_to("south", SystemTime::now()));
        assert_eq!(format_rfc3339(fault.expires_at), "2030-01-01T00:00:00Z");
        assert_eq!(&*p.documents[0], "p");
    }

    #[test]
    fn later_documents_replace_only_the_sections_they_set() {
        let p = policy(&[
            json!({"services": ["*"], "authorization": {"default": "deny"}, "retry": {"retries": 0}}),
            json!({"services": ["demo/echo"], "split": {"weights": {"east": 1}}}),
        ]);
        assert_eq!(p.retries, 0);
        assert_eq!(p.authorization.unwrap().default, Action::Deny);
        assert!(p.split.is_some());
        assert_eq!(p.documents.len(), 2);
    }

    #[test]
    fn bad_documents_name_the_field() {
        let future = "2030-01-01T00:00:00Z";
        let cases = [
            (json!({"services": []}), "services"),
            (json!({"services": ["echo"]}), "services"),
            (json!({"services": ["a/b"], "colour": 1}), "colour"),
            (
                json!({"services": ["a/b"], "failover": {"threshold": 1.5}}),
                "failover.threshold",
            ),
            (
                json!({"services": ["a/b"], "retry": {"retries": 9}}),
                "retry.retries",
            ),
            (
                json!({"services": ["a/b"], "retry": {"grpc_statuses": ["nope"]}}),
                "retry.grpc_statuses",
            ),
            (
                json!({"services": ["a/b"], "retry": {"per_try_timeout": "0s"}}),
                "retry.per_try_timeout",
            ),
            (
                json!({"services": ["a/b"], "circuit_breaker": {"max_requests": 0}}),
                "circuit_breaker.max_requests",
            ),
            (
                json!({"services": ["a/b"], "split": {"weights": {"east": 0}}}),
                "split.weights",
            ),
            (
                json!({"services": ["a/b"], "split": {"weights": {"Bad Name": 1}}}),
                "split.weights.Bad Name",
            ),
            (json!({"services": ["a/b"], "split": {}}), "split"),
            (
                json!({"services": ["a/b"], "shadow": {"cluster": "s", "percent": 101}}),
                "shadow.percent",
            ),
            (
                json!({"services": ["a/b"], "authorization": {"allow": [{}]}}),
                "authorization.allow[0]",
            ),
            (
                json!({"services": ["a/b"], "authorization": {"deny": [{"identities": ["west/ns/a"]}]}}),
                "authorization.deny[0].identities",
            ),
            (
                json!({"services": ["a/b"], "authorization": {"default": "maybe"}}),
                "(document)",
            ),
            (
                json!({"services": ["a/b"], "rate_limit": {"requests_per_second": 0}}),
                "rate_limit.requests_per_second",
            ),
            (
                json!({"services": ["a/b"], "rate_limit": {"burst": 5}}),
                "rate_limit.burst",
            ),
            (
                json!({"services": ["a/b"], "rate_limit": {"per_source_cluster": {"west": -1}}}),
                "rate_limit.per_source_cluster.west",
            ),
            (json!({"services": ["a/b"], "rate_limit": {}}), "rate_limit"),
            (
                json!({"services": ["a/b"], "fault": {"abort": {"percent": 100}}}),
                "fault.expires_at",
            ),
            (
                json!({"services": ["a/b"], "fault": {"abort": {"percent": 100}, "expires_at": "tomorrow"}}),
                "fault.expires_at",
            ),
            (
                json!({"services": ["a/b"], "fault": {"abort": {"percent": 100, "status": 200}, "expires_at": future}}),
                "fault.abort.status",
            ),
            (
                json!({"services": ["a/b"], "fault": {"delay": {"percent": 1, "duration": "2h"}, "expires_at": future}}),
                "fault.delay.duration",
            ),
            (
                json!({"services": ["a/b"], "fault": {"expires_at": future}}),
                "fault",
            ),
        ];
        for (v, field) in cases {
            let err = doc(v.clone()).expect_err(&v.to_string());
            assert_eq!(err.field, field, "{v}: {err}");
            assert!(err.to_string().contains("policy p"), "{err}");
        }
    }

    #[test]
    fn authorization_decides_deny_first_then_allow_then_default() {
        let authz = doc(json!({"services": ["a/b"], "authorization": {
            "allow": [
                {"clusters": ["west"], "identities": ["spiffe://west.mesh/ns/shop/*"]},
                {"trust_domains": ["east.mesh"]}
            ],
            "deny": [{"identities": ["spiffe://west.mesh/ns/shop/sa/intruder"]}]
        }}))
        .unwrap();
        let mut p = ServicePolicy::default();
        authz.apply_to(&mut p);
        let a = p.authorization.unwrap();
        let caller = |cluster, td, id| Caller {
            cluster,
            trust_domain: td,
            identity: id,
        };
        let cases = [
            (
                caller(
                    "west",
                    "west.mesh",
                    Some("spiffe://west.mesh/ns/shop/sa/cart"),
                ),
                true,
                "allow rule 1",
            ),
            (
                caller(
                    "west",
                    "west.mesh",
                    Some("spiffe://west.mesh/ns/shop/sa/intruder"),
                ),
                false,
                "deny rule 1",
            ),
            (
                caller(
                    "west",
                    "west.mesh",
                    Some("spiffe://west.mesh/ns/other/sa/x"),
                ),
                false,
                "default deny",
            ),
            (caller("west", "west.mesh", None), false, "default deny"),
            (caller("east", "east.mesh", None), true, "allow rule 2"),
            (caller("south", "south.mesh", None), false, "default deny"),
        ];
        for (c, allowed, why) in cases {
            let d = a.decide(&c);
            assert_eq!(d.allowed, allowed, "{c:?}: {}", d.reason);
            assert!(d.reason.contains(why), "{c:?}: {}", d.reason);
        }
    }

    #[test]
    fn an_expired_fault_applies_to_nobody() {
        let d = doc(json!({"services": ["a/b"], "fault": {"abort": {"percent": 50}, "expires_at": "2020-01-01T00:00:00+02:00"}}))
            .unwrap();
        let f = d.fault().unwrap();
        assert!(!f.active(SystemTime::now()));
        assert!(!f.applies_to("west", SystemTime::now()));
        assert_eq!(format_rfc3339(f.expires_at), "2019-12-31T22:00:00Z");
    }
}
