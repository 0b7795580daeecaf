//! The serving side of a service's traffic policy, applied to every request and tunnel a peer
//! gateway sends (shadow copies included) before an endpoint is picked: authorization, then
//! fault injection, then rate and concurrency limits. A service whose policy sets none of these
//! sections costs three `Option` checks. This module decides and counts; the caller answers
//! (and logs) a [`Refusal`].

use std::sync::Arc;
use std::time::SystemTime;

use http::StatusCode;
use tokio::time::Instant;

use super::limit::{Limit, Limiters, Slot};
use crate::lb::random;
use crate::metrics::{AuthzLabels, FaultLabels, Metrics, RateLimitLabels};
use crate::policy::{Caller, Policies, ServicePolicy};
use crate::table::ServiceName;

/// Why the gateway answers a request itself instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status (gRPC callers get it mapped to a `grpc-status`).
    pub status: StatusCode,
    pub reason: String,
    /// `retry-after`, in whole seconds.
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: String) -> Self {
        Self {
            status,
            reason,
            retry_after: None,
        }
    }
}

/// One request as the serving-side policy sees it.
pub struct Admission<'a> {
    pub policy: &'a ServicePolicy,
    /// Every policy document (to name the one a fault comes from).
    pub policies: &'a Policies,
    pub service: &'a ServiceName,
    /// The calling cluster (as an `Arc` to key buckets and label metrics without copying).
    pub cluster: &'a Arc<str>,
    pub caller: Caller<'a>,
    pub metrics: &'a Metrics,
    /// A shadow copy: limited to spare capacity.
    pub shadow: bool,
}

impl Admission<'_> {
    /// Authorization, then faults (which may delay), then limits. `Ok` holds the concurrency slot
    /// to keep until the exchange ends, when the service's concurrency is bounded.
    pub async fn run(&self, limiters: &Limiters) -> Result<Option<Slot>, Refusal> {
        self.authorize()?;
        self.inject_fault().await?;
        self.limit(limiters, Instant::now())
    }

    fn authorize(&self) -> Result<(), Refusal> {
        let Some(decided) = authorization(self.policy, &self.caller) else {
            return Ok(());
        };
        self.metrics
            .authz_decisions
            .get_or_create(&AuthzLabels {
                service: self.service.clone(),
                source_cluster: self.cluster.clone(),
                decision: if decided.is_ok() { "allow" } else { "deny" },
            })
            .inc();
        decided.map_err(|reason| Refusal::new(StatusCode::FORBIDDEN, reason))
    }

    async fn inject_fault(&self) -> Result<(), Refusal> {
        let Some(fault) = &self.policy.fault else {
            return Ok(());
        };
        if !fault.applies_to(self.cluster, SystemTime::now()) {
            return Ok(());
        }
        if let Some((percent, delay)) = fault.delay
            && chance(percent)
        {
            self.count_fault("delay");
            tokio::time::sleep(delay).await;
        }
        if let Some((percent, status)) = fault.abort
            && chance(percent)
        {
            self.count_fault("abort");
            return Err(Refusal::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                format!("fault injected by policy {}", self.fault_document()),
            ));
        }
        Ok(())
    }

    fn count_fault(&self, kind: &'static str) {
        self.metrics
            .faults_injected
            .get_or_create(&FaultLabels {
                service: self.service.clone(),
                kind,
            })
            .inc();
    }

    /// The document whose `fault` section is in force: the last one applied that sets one.
    fn fault_document(&self) -> String {
        let sets_fault = |name: &Arc<str>| {
            self.policies
                .documents
                .iter()
                .any(|d| d.name == *name && d.fault().is_some())
        };
        match self.policy.documents.iter().rev().find(|n| sets_fault(n)) {
            Some(name) => name.to_string(),
            None => self.policy.documents.join(", "),
        }
    }

    fn limit(&self, limiters: &Limiters, now: Instant) -> Result<Option<Slot>, Refusal> {
        let Some(limit) = &self.policy.rate_limit else {
            return Ok(None);
        };
        let limiter = limiters.get(self.service, limit, now);
        let admitted = if self.shadow {
            limiter.admit_spare(self.cluster, now)
        } else {
            limiter.admit(self.cluster, now)
        };
        admitted.map_err(|e| {
            self.metrics
                .rate_limited
                .get_or_create(&RateLimitLabels {
                    service: self.service.clone(),
                    source_cluster: self.cluster.clone(),
                    limit: e.limit.label(),
                })
                .inc();
            // A full service is worth another cluster (503 fails the attempt over); a caller
            // over its rate is told to slow down (429 is not retried elsewhere).
            let status = match e.limit {
                Limit::Concurrency => StatusCode::SERVICE_UNAVAILABLE,
                Limit::Service | Limit::SourceCluster => StatusCode::TOO_MANY_REQUESTS,
            };
            Refusal {
                status,
                reason: e.reason,
                retry_after: Some(e.retry_after),
            }
        })
    }
}

/// The service's authorization decision for `caller`: `None` when its policy has no
/// `authorization` section, else allowed, or denied with the documents and the rule named. The
/// request path and the re-check of open exchanges ([`super::grant::judge`]) both decide here.
pub fn authorization(policy: &ServicePolicy, caller: &Caller<'_>) -> Option<Result<(), String>> {
    let authz = policy.authorization.as_ref()?;
    let decision = authz.decide(caller);
    if decision.allowed {
        return Some(Ok(()));
    }
    Some(Err(format!(
        "denied by policy {}: {}",
        policy.documents.join(", "),
        decision.reason
    )))
}

/// True with probability `percent` / 100.
fn chance(percent: f64) -> bool {
    crate::lb::chance(percent, random())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;

    fn policies(docs: &[(&str, &str)]) -> Policies {
        let map: BTreeMap<String, String> = docs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let p = Policies::build(&map);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        p
    }

    fn exposition(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).expect("encode");
        out
    }

    struct Case {
        policies: Policies,
        service: ServiceName,
        cluster: Arc<str>,
        metrics: Metrics,
        limiters: Limiters,
    }

    impl Case {
        fn new(docs: &[(&str, &str)], cluster: &str) -> Self {
            Self {
                policies: policies(docs),
                service: "echo.demo".into(),
                cluster: cluster.into(),
                metrics: Metrics::default(),
                limiters: Limiters::default(),
            }
        }

        async fn run(&self, identity: Option<&str>) -> Result<Option<Slot>, Refusal> {
            Admission {
                policy: self.policies.for_service(&self.service),
                policies: &self.policies,
                service: &self.service,
                cluster: &self.cluster,
                caller: Caller {
                    cluster: &self.cluster,
                    trust_domain: &format!("{}.mesh", self.cluster),
                    identity,
                },
                metrics: &self.metrics,
                shadow: false,
            }
            .run(&self.limiters)
            .await
        }
    }

    #[tokio::test]
    async fn a_service_without_serving_policy_admits_everyone() {
        let c = Case::new(
            &[("p", r#"{"services":["demo/echo"],"retry":{"retries":1}}"#)],
            "west",
        );
        assert!(matches!(c.run(None).await, Ok(None)));
        let out = exposition(&c.metrics);
        assert!(
            !out.contains("isthmus_gateway_authz_decisions_total{"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn authorization_denies_with_the_documents_and_the_reason_and_counts() {
        let c = Case::new(
            &[
                ("all", r#"{"services":["*"],"retry":{"retries":1}}"#),
                (
                    "shop-only",
                    r#"{"services":["demo/echo"],"authorization":{"allow":[{"identities":["spiffe://west.mesh/ns/shop/*"]}]}}"#,
                ),
            ],
            "west",
        );
        assert!(
            c.run(Some("spiffe://west.mesh/ns/shop/sa/cart"))
                .await
                .is_ok()
        );
        let refusal = c
            .run(Some("spiffe://west.mesh/ns/other/sa/x"))
            .await
            .expect_err("denied");
        assert_eq!(refusal.status, StatusCode::FORBIDDEN);
        assert_eq!(
            refusal.reason,
            "denied by policy all, shop-only: west (west.mesh, spiffe://west.mesh/ns/other/sa/x) \
             matches no rule: default deny"
        );
        assert!(c.run(None).await.is_err(), "no identity, no match");
        let out = exposition(&c.metrics);
        for line in [
            r#"isthmus_gateway_authz_decisions_total{service="echo.demo",source_cluster="west",decision="allow"} 1"#,
            r#"isthmus_gateway_authz_decisions_total{service="echo.demo",source_cluster="west",decision="deny"} 2"#,
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
    }

    const FUTURE: &str = "2999-01-01T00:00:00Z";

    #[tokio::test]
    async fn an_abort_answers_with_its_status_and_names_the_document() {
        let c = Case::new(
            &[
                (
                    "drill",
                    &format!(
                        r#"{{"services":["demo/echo"],"fault":{{"from":["west"],"abort":{{"percent":100,"status":504}},"expires_at":"{FUTURE}"}}}}"#
                    ),
                ),
                (
                    "later",
                    r#"{"services":["demo/echo"],"retry":{"retries":1}}"#,
                ),
            ],
            "west",
        );
        let refusal = c.run(None).await.expect_err("aborted");
        assert_eq!(refusal.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(refusal.reason, "fault injected by policy drill");
        let out = exposition(&c.metrics);
        assert!(
            out.contains(
                r#"isthmus_gateway_faults_injected_total{service="echo.demo",kind="abort"} 1"#
            ),
            "{out}"
        );
        let south = Case::new(
            &[(
                "drill",
                &format!(
                    r#"{{"services":["demo/echo"],"fault":{{"from":["west"],"abort":{{"percent":100}},"expires_at":"{FUTURE}"}}}}"#
                ),
            )],
            "south",
        );
        assert!(south.run(None).await.is_ok(), "other callers are untouched");
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_waits_then_forwards() {
        let c = Case::new(
            &[(
                "slow",
                &format!(
                    r#"{{"services":["demo/echo"],"fault":{{"delay":{{"percent":100,"duration":"2s"}},"expires_at":"{FUTURE}"}}}}"#
                ),
            )],
            "west",
        );
        let started = Instant::now();
        assert!(c.run(None).await.is_ok());
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(exposition(&c.metrics).contains(r#"kind="delay"} 1"#));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_fault_does_nothing() {
        let c = Case::new(
            &[(
                "old",
                r#"{"services":["demo/echo"],"fault":{"abort":{"percent":100},"delay":{"percent":100,"duration":"5s"},"expires_at":"2020-01-01T00:00:00Z"}}"#,
            )],
            "west",
        );
        let started = Instant::now();
        assert!(c.run(None).await.is_ok());
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(!exposition(&c.metrics).contains("isthmus_gateway_faults_injected_total{"));
    }

    #[tokio::test]
    async fn limits_answer_429_or_503_with_retry_after_and_count() {
        let c = Case::new(
            &[(
                "limits",
                r#"{"services":["demo/echo"],"rate_limit":{"per_source_cluster":{"west":1},"max_concurrent":1}}"#,
            )],
            "west",
        );
        let held = c.run(None).await.expect("admitted").expect("a slot");
        let full = c.run(None).await.expect_err("concurrency");
        assert_eq!(
            (full.status, full.retry_after),
            (StatusCode::SERVICE_UNAVAILABLE, Some(1))
        );
        assert!(full.reason.contains("concurrency limit"), "{}", full.reason);
        drop(held);
        let over = c.run(None).await.expect_err("rate");
        assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(over.retry_after, Some(1));
        assert!(
            over.reason
                .starts_with("rate limit of echo.demo for cluster west"),
            "{}",
            over.reason
        );
        let out = exposition(&c.metrics);
        for limit in ["concurrency", "source_cluster"] {
            let line = format!(
                r#"isthmus_gateway_rate_limited_total{{service="echo.demo",source_cluster="west",limit="{limit}"}} 1"#
            );
            assert!(out.contains(&line), "{line} missing from\n{out}");
        }
    }

    #[test]
    fn chance_is_never_at_0_and_always_at_100() {
        assert!((0..10_000).all(|_| !chance(0.0)));
        assert!((0..10_000).all(|_| chance(100.0)));
        let hits = (0..100_000).filter(|_| chance(10.0)).count();
        assert!((8_000..12_000).contains(&hits), "{hits}");
    }
}
