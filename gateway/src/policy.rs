//! Traffic policy documents, as the federation distributes them (opaque JSON from the catalog's
//! `policies:` section), parsed into what the request path needs: failover tiers, threshold,
//! fences and slow start; retries and their budget; circuit-breaker limits. Pure: parsing and
//! every decision are functions with table tests. A document that does not parse is refused as a
//! whole with the field named, and the service keeps the defaults.
//!
//! ```yaml
//! policies:
//!   echo-resilience:
//!     services: [demo/echo]          # "<ns>/<name>", or "*" for every service
//!     failover:
//!       threshold: 0.7               # spill to the next tier when < 70 % of a tier is healthy
//!       fence_regions: [us-east]     # never send to clusters outside these regions
//!       slow_start: 10s              # a recovered cluster's share ramps up over this long
//!     retry:
//!       retries: 2                   # extra tries, each on another cluster when possible
//!       per_try_timeout: 2s          # default 15s (the overall limit is limits.request_timeout)
//!       budget_percent: 20           # retries may add at most 20 % load (+ 10/s minimum)
//!       grpc_statuses: [unavailable]
//!     circuit_breaker:
//!       max_requests: 1024           # in flight per cluster
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::table::ServiceName;

/// What the request path applies to one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePolicy {
    pub threshold: f64,
    /// When set, clusters outside these regions are never chosen.
    pub fence_regions: Option<Vec<Arc<str>>>,
    pub slow_start: Duration,
    pub retries: u32,
    pub per_try_timeout: Duration,
    pub budget_percent: u32,
    /// gRPC status codes worth another try on another cluster.
    pub grpc_statuses: Vec<u32>,
    pub max_requests: u32,
}

impl Default for ServicePolicy {
    fn default() -> Self {
        Self {
            threshold: 0.7,
            fence_regions: None,
            slow_start: Duration::from_secs(10),
            retries: 2,
            per_try_timeout: Duration::from_secs(15),
            budget_percent: 20,
            grpc_statuses: vec![14],
            max_requests: 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    services: Vec<String>,
    #[serde(default)]
    failover: Option<Failover>,
    #[serde(default)]
    retry: Option<Retry>,
    #[serde(default)]
    circuit_breaker: Option<CircuitBreaker>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Failover {
    threshold: Option<f64>,
    fence_regions: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_duration")]
    slow_start: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Retry {
    retries: Option<u32>,
    #[serde(default, deserialize_with = "opt_duration")]
    per_try_timeout: Option<Duration>,
    budget_percent: Option<u32>,
    grpc_statuses: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CircuitBreaker {
    max_requests: Option<u32>,
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    isthmus_federation::duration::deserialize(d).map(Some)
}

fn grpc_code(name: &str) -> Option<u32> {
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

/// Parses one document: the services it names and the policy, or the bad field and why.
fn parse(name: &str, json: &str) -> Result<(Vec<String>, ServicePolicy), String> {
    let doc: Document = serde_json::from_str(json).map_err(|e| format!("policy {name}: {e}"))?;
    let bad = |field: &str, why: &str| Err(format!("policy {name}: field `{field}`: {why}"));
    if doc.services.is_empty() {
        return bad(
            "services",
            "name at least one service (\"<ns>/<name>\" or \"*\")",
        );
    }
    let mut p = ServicePolicy::default();
    if let Some(f) = doc.failover {
        if let Some(t) = f.threshold {
            if !(0.0..=1.0).contains(&t) {
                return bad("failover.threshold", "between 0 and 1");
            }
            p.threshold = t;
        }
        if let Some(regions) = f.fence_regions {
            if regions.is_empty() {
                return bad(
                    "failover.fence_regions",
                    "name at least one region or leave it out",
                );
            }
            p.fence_regions = Some(regions.iter().map(|r| r.as_str().into()).collect());
        }
        if let Some(s) = f.slow_start {
            p.slow_start = s;
        }
    }
    if let Some(r) = doc.retry {
        if let Some(n) = r.retries {
            if n > 5 {
                return bad("retry.retries", "at most 5");
            }
            p.retries = n;
        }
        if let Some(t) = r.per_try_timeout {
            if t.is_zero() {
                return bad("retry.per_try_timeout", "must be above zero");
            }
            p.per_try_timeout = t;
        }
        if let Some(b) = r.budget_percent {
            if b > 100 {
                return bad("retry.budget_percent", "at most 100");
            }
            p.budget_percent = b;
        }
        if let Some(statuses) = r.grpc_statuses {
            let mut codes = Vec::new();
            for s in &statuses {
                match grpc_code(s) {
                    Some(c) => codes.push(c),
                    None => {
                        return bad("retry.grpc_statuses", &format!("unknown gRPC status {s:?}"));
                    }
                }
            }
            p.grpc_statuses = codes;
        }
    }
    if let Some(c) = doc.circuit_breaker
        && let Some(m) = c.max_requests
    {
        if m == 0 {
            return bad("circuit_breaker.max_requests", "at least 1");
        }
        p.max_requests = m;
    }
    Ok((doc.services, p))
}

/// Every service's policy, built from the distributed documents.
#[derive(Debug, Default)]
pub struct Policies {
    by_service: HashMap<ServiceName, Arc<ServicePolicy>>,
    fallback: Arc<ServicePolicy>,
    /// Documents refused, with the reason (shown in /config_dump and logged once).
    pub refused: Vec<String>,
}

impl Policies {
    /// Builds from `name -> JSON document`. Documents apply in name order; a later document
    /// naming the same service wins.
    pub fn build<'a>(docs: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let mut out = Policies {
            fallback: Arc::new(ServicePolicy::default()),
            ..Default::default()
        };
        for (name, json) in docs {
            match parse(name, json) {
                Ok((services, policy)) => {
                    let policy = Arc::new(policy);
                    for s in services {
                        if s == "*" {
                            out.fallback = policy.clone();
                            continue;
                        }
                        // "<ns>/<name>" names the service; the table keys it "<name>.<ns>".
                        let key = match s.split_once('/') {
                            Some((ns, n)) => format!("{n}.{ns}").to_ascii_lowercase(),
                            None => s.to_ascii_lowercase(),
                        };
                        out.by_service.insert(key.into(), policy.clone());
                    }
                }
                Err(reason) => out.refused.push(reason),
            }
        }
        out
    }

    pub fn for_service(&self, service: &str) -> &Arc<ServicePolicy> {
        self.by_service.get(service).unwrap_or(&self.fallback)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn build(docs: &[(&str, &str)]) -> Policies {
        let map: BTreeMap<String, String> = docs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Policies::build(&map)
    }

    #[test]
    fn documents_apply_to_their_services_and_the_rest_keep_defaults() {
        let p = build(&[(
            "a",
            r#"{"services":["demo/echo"],"failover":{"threshold":0.5,"fence_regions":["eu"],"slow_start":"30s"},"retry":{"retries":1,"per_try_timeout":"500ms","grpc_statuses":["unavailable","resource_exhausted"]},"circuit_breaker":{"max_requests":7}}"#,
        )]);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        let e = p.for_service("echo.demo");
        assert_eq!(e.threshold, 0.5);
        assert_eq!(e.fence_regions.as_deref().map(|r| &*r[0]), Some("eu"));
        assert_eq!(e.slow_start, Duration::from_secs(30));
        assert_eq!(e.retries, 1);
        assert_eq!(e.per_try_timeout, Duration::from_millis(500));
        assert_eq!(e.grpc_statuses, vec![14, 8]);
        assert_eq!(e.max_requests, 7);
        assert_eq!(**p.for_service("other.demo"), ServicePolicy::default());
    }

    #[test]
    fn a_bad_document_is_refused_whole_with_the_field_named() {
        let cases = [
            (r#"{"services":[]}"#, "services"),
            (
                r#"{"services":["a/b"],"failover":{"threshold":1.5}}"#,
                "failover.threshold",
            ),
            (
                r#"{"services":["a/b"],"retry":{"retries":9}}"#,
                "retry.retries",
            ),
            (
                r#"{"services":["a/b"],"retry":{"grpc_statuses":["nope"]}}"#,
                "retry.grpc_statuses",
            ),
            (
                r#"{"services":["a/b"],"retry":{"per_try_timeout":"0s"}}"#,
                "retry.per_try_timeout",
            ),
            (r#"{"services":["a/b"],"colour":1}"#, "colour"),
            (
                r#"{"services":["a/b"],"circuit_breaker":{"max_requests":0}}"#,
                "circuit_breaker.max_requests",
            ),
            ("not json", "policy bad"),
        ];
        for (doc, field) in cases {
            let p = build(&[("bad", doc)]);
            assert_eq!(p.refused.len(), 1, "{doc}");
            assert!(p.refused[0].contains(field), "{doc}: {}", p.refused[0]);
            assert_eq!(**p.for_service("b.a"), ServicePolicy::default(), "{doc}");
        }
    }

    #[test]
    fn a_wildcard_document_is_the_fallback() {
        let p = build(&[
            ("all", r#"{"services":["*"],"retry":{"retries":0}}"#),
            ("one", r#"{"services":["demo/echo"],"retry":{"retries":3}}"#),
        ]);
        assert_eq!(p.for_service("x.y").retries, 0);
        assert_eq!(p.for_service("echo.demo").retries, 3);
    }
}
