//! Parsing and validating one policy document: the raw shape (read by
//! [`crate::model::field_path`], so every error names its full path), then one function per
//! section for what serde cannot check.
//!
//! Must not: apply documents to services (the parent module does).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::super::hedge::RawHedge;

use super::{
    Action, Authorization, Document, Fault, Match, Rate, RateLimit, Sections, Shadow, Split,
};

/// A refused document: which one, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {document}: {}{reason}", field_prefix(.field))]
pub struct PolicyError {
    pub document: String,
    /// The full path inside the document (`split.weights.east`, `authorization.allow[0]`);
    /// empty when the document as a whole is wrong (not a mapping).
    pub field: String,
    pub reason: String,
}

impl PolicyError {
    /// Where the error is in a catalog: `policies.<document>.<field>` (or
    /// `policies.<document>` when the document as a whole is wrong).
    pub fn catalog_path(&self) -> String {
        if self.field.is_empty() {
            format!("policies.{}", self.document)
        } else {
            format!("policies.{}.{}", self.document, self.field)
        }
    }
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("field `{field}`: ")
    }
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a policy document: a mapping with `services` and the sections to set"
)]
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
    let ck = Check { document: name };
    // The error's path is where the deserializer stood: `split.weights.east`,
    // `authorization.allow[1].clusters[0]`, `split.cluster_heder` (empty: the document itself).
    let raw: RawDocument = crate::model::field_path::from_value(json)
        .map_err(|e| ck.bad(&e.path(), e.reason().to_owned()))?;
    if raw.services.is_empty() {
        return Err(ck.bad(
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
            return Err(ck.bad("services", format!("{s:?} is not \"<ns>/<name>\" or \"*\"")));
        }
    }
    let mut s = Sections::default();
    if let Some(section) = raw.failover {
        failover(&ck, section, &mut s)?;
    }
    if let Some(section) = raw.retry {
        retry(&ck, section, &mut s)?;
    }
    if let Some(h) = raw.hedge {
        s.hedge = Some(
            super::super::hedge::validate(h).map_err(|(field, reason)| ck.bad(field, reason))?,
        );
    }
    if let Some(section) = raw.circuit_breaker {
        circuit_breaker(&ck, section, &mut s)?;
    }
    if let Some(section) = raw.split {
        split(&ck, section, &mut s)?;
    }
    if let Some(section) = raw.shadow {
        shadow(&ck, section, &mut s)?;
    }
    if let Some(section) = raw.authorization {
        authorization(&ck, section, &mut s)?;
    }
    if let Some(section) = raw.rate_limit {
        rate_limit(&ck, section, &mut s)?;
    }
    if let Some(section) = raw.fault {
        fault(&ck, section, &mut s)?;
    }
    Ok(Document {
        name: name.into(),
        services: raw.services,
        sections: s,
    })
}

/// Builds a document's errors and checks the values several sections share.
struct Check<'a> {
    document: &'a str,
}

impl Check<'_> {
    fn bad(&self, field: &str, reason: String) -> PolicyError {
        PolicyError {
            document: self.document.to_string(),
            field: field.to_string(),
            reason,
        }
    }

    fn duration(&self, field: &str, text: &str) -> Result<Duration, PolicyError> {
        crate::duration::parse(text).map_err(|reason| self.bad(field, reason))
    }

    fn percent(&self, field: &str, p: f64) -> Result<f64, PolicyError> {
        if (0.0..=100.0).contains(&p) {
            Ok(p)
        } else {
            Err(self.bad(field, "between 0 and 100".into()))
        }
    }

    fn cluster_name(&self, field: &str, c: &str) -> Result<Arc<str>, PolicyError> {
        crate::model::ClusterName::new(c)
            .map(|_| Arc::from(c))
            .map_err(|e| self.bad(field, e.to_string()))
    }
}

fn failover(ck: &Check<'_>, f: RawFailover, s: &mut Sections) -> Result<(), PolicyError> {
    if let Some(t) = f.threshold {
        if !(0.0..=1.0).contains(&t) {
            return Err(ck.bad("failover.threshold", "between 0 and 1".into()));
        }
        s.threshold = Some(t);
    }
    if let Some(regions) = f.fence_regions {
        if regions.is_empty() {
            return Err(ck.bad(
                "failover.fence_regions",
                "name at least one region or leave it out".into(),
            ));
        }
        s.fence_regions = Some(regions.iter().map(|r| r.as_str().into()).collect());
    }
    if let Some(t) = f.slow_start {
        s.slow_start = Some(ck.duration("failover.slow_start", &t)?);
    }
    Ok(())
}

fn retry(ck: &Check<'_>, r: RawRetry, s: &mut Sections) -> Result<(), PolicyError> {
    if let Some(n) = r.retries {
        if n > 5 {
            return Err(ck.bad("retry.retries", "at most 5".into()));
        }
        s.retries = Some(n);
    }
    if let Some(t) = r.per_try_timeout {
        let t = ck.duration("retry.per_try_timeout", &t)?;
        if t.is_zero() {
            return Err(ck.bad("retry.per_try_timeout", "must be above zero".into()));
        }
        s.per_try_timeout = Some(t);
    }
    if let Some(b) = r.budget_percent {
        if b > 100 {
            return Err(ck.bad("retry.budget_percent", "at most 100".into()));
        }
        s.budget_percent = Some(b);
    }
    if let Some(statuses) = r.grpc_statuses {
        let mut codes = Vec::new();
        for st in &statuses {
            codes.push(grpc_code(st).ok_or_else(|| {
                ck.bad("retry.grpc_statuses", format!("unknown gRPC status {st:?}"))
            })?);
        }
        s.grpc_statuses = Some(codes);
    }
    Ok(())
}

fn circuit_breaker(
    ck: &Check<'_>,
    cb: RawCircuitBreaker,
    s: &mut Sections,
) -> Result<(), PolicyError> {
    let Some(m) = cb.max_requests else {
        return Ok(());
    };
    if m == 0 {
        return Err(ck.bad("circuit_breaker.max_requests", "at least 1".into()));
    }
    s.max_requests = Some(m);
    Ok(())
}

fn split(ck: &Check<'_>, split: RawSplit, s: &mut Sections) -> Result<(), PolicyError> {
    let mut weights = Vec::new();
    for (cluster, w) in &split.weights {
        let field = format!("split.weights.{cluster}");
        let cluster = ck.cluster_name(&field, cluster)?;
        if *w > 1_000_000 {
            return Err(ck.bad(&field, "at most 1000000".into()));
        }
        weights.push((cluster, *w));
    }
    if !weights.is_empty() && weights.iter().all(|(_, w)| *w == 0) {
        return Err(ck.bad(
            "split.weights",
            "at least one cluster needs a weight above 0".into(),
        ));
    }
    if weights.is_empty() && !split.cluster_header {
        return Err(ck.bad(
            "split",
            "set `weights`, `cluster_header`, or leave the section out".into(),
        ));
    }
    s.split = Some(Split {
        weights,
        cluster_header: split.cluster_header,
    });
    Ok(())
}

fn shadow(ck: &Check<'_>, sh: RawShadow, s: &mut Sections) -> Result<(), PolicyError> {
    s.shadow = Some(Shadow {
        cluster: ck.cluster_name("shadow.cluster", &sh.cluster)?,
        percent: ck.percent("shadow.percent", sh.percent)?,
    });
    Ok(())
}

fn authorization(ck: &Check<'_>, a: RawAuthorization, s: &mut Sections) -> Result<(), PolicyError> {
    let rules = |list: Vec<RawMatch>, kind: &str| -> Result<Vec<Match>, PolicyError> {
        list.into_iter()
            .enumerate()
            .map(|(i, m)| {
                let field = format!("authorization.{kind}[{i}]");
                if m.clusters.is_empty() && m.trust_domains.is_empty() && m.identities.is_empty()
                {
                    return Err(ck.bad(
                        &field,
                        "name at least one of clusters, trust_domains, identities".into(),
                    ));
                }
                let clusters = m
                    .clusters
                    .iter()
                    .map(|c| ck.cluster_name(&format!("{field}.clusters"), c))
                    .collect::<Result<_, _>>()?;
                let trust_domains = m
                    .trust_domains
                    .iter()
                    .map(|t| {
                        crate::identity::TrustDomain::new(t)
                            .map(|_| Arc::from(t.as_str()))
                            .map_err(|e| ck.bad(&format!("{field}.trust_domains"), e.to_string()))
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
                            Err(ck.bad(
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
    Ok(())
}

fn rate_limit(ck: &Check<'_>, r: RawRateLimit, s: &mut Sections) -> Result<(), PolicyError> {
    let rate = |field: &str, per_second: f64, burst: Option<f64>| {
        if !(per_second > 0.0 && per_second <= 10_000_000.0) {
            return Err(ck.bad(field, "above 0 and at most 10000000".into()));
        }
        let burst = burst.unwrap_or(per_second.max(1.0));
        if !(1.0..=10_000_000.0).contains(&burst) {
            return Err(ck.bad("rate_limit.burst", "at least 1 and at most 10000000".into()));
        }
        Ok(Rate { per_second, burst })
    };
    let mut limit = RateLimit::default();
    match r.requests_per_second {
        Some(rps) => limit.service = Some(rate("rate_limit.requests_per_second", rps, r.burst)?),
        None if r.burst.is_some() => {
            return Err(ck.bad(
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
            ck.cluster_name(&field, cluster)?
        };
        limit
            .per_source_cluster
            .push((name, rate(&field, *rps, None)?));
    }
    if let Some(m) = r.max_concurrent {
        if m == 0 {
            return Err(ck.bad("rate_limit.max_concurrent", "at least 1".into()));
        }
        limit.max_concurrent = Some(m);
    }
    if limit.service.is_none()
        && limit.per_source_cluster.is_empty()
        && limit.max_concurrent.is_none()
    {
        return Err(ck.bad(
            "rate_limit",
            "set requests_per_second, per_source_cluster or max_concurrent".into(),
        ));
    }
    s.rate_limit = Some(limit);
    Ok(())
}

fn fault(ck: &Check<'_>, f: RawFault, s: &mut Sections) -> Result<(), PolicyError> {
    let from = f
        .from
        .iter()
        .map(|c| ck.cluster_name("fault.from", c))
        .collect::<Result<_, _>>()?;
    let abort = match f.abort {
        Some(a) => {
            if !(400..=599).contains(&a.status) {
                return Err(ck.bad(
                    "fault.abort.status",
                    "an HTTP status from 400 to 599".into(),
                ));
            }
            Some((ck.percent("fault.abort.percent", a.percent)?, a.status))
        }
        None => None,
    };
    let delay = match f.delay {
        Some(d) => {
            let t = ck.duration("fault.delay.duration", &d.duration)?;
            if t.is_zero() || t > MAX_DELAY {
                return Err(ck.bad("fault.delay.duration", "above 0 and at most 60s".into()));
            }
            Some((ck.percent("fault.delay.percent", d.percent)?, t))
        }
        None => None,
    };
    if abort.is_none() && delay.is_none() {
        return Err(ck.bad("fault", "set abort, delay or both".into()));
    }
    let text = f.expires_at.ok_or_else(|| {
        ck.bad(
            "fault.expires_at",
            "required (RFC 3339, e.g. 2026-12-01T10:00:00Z): a fault always ends".into(),
        )
    })?;
    let expires_at = parse_rfc3339(&text).map_err(|r| ck.bad("fault.expires_at", r))?;
    s.fault = Some(Fault {
        from,
        abort,
        delay,
        expires_at,
    });
    Ok(())
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
