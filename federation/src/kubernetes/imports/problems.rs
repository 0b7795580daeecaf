//! The import writer's metrics, and its problems said once each: an error is logged when it
//! first appears or changes, and when it clears, not on every retry; every occurrence is
//! counted.

use std::collections::BTreeMap;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::kubernetes::report::KubeReport;
use crate::metrics::ReasonLabels;

#[derive(Clone, Default)]
pub struct ImportMetrics {
    /// Failed rounds and allocations, by reason (`forbidden`, `unavailable`, `conflict`,
    /// `target_ports_exhausted`, `store`, `client`, `other`).
    pub errors: Family<ReasonLabels, Counter>,
    /// Names we need that someone else's object holds, now.
    pub names_taken: Gauge,
    /// ServiceImports written (desired) in the last successful round.
    pub service_imports: Gauge,
    /// Target ports free for new names (never used, or released and out of quarantine).
    pub target_ports_free: Gauge,
    /// Objects deleted because their import ended.
    pub deleted: Counter,
}

impl ImportMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("isthmus_federation_kubernetes_imports");
        r.register(
            "errors",
            "Failed import-writer rounds and target-port allocations, by reason",
            self.errors.clone(),
        );
        r.register(
            "names_taken",
            "Names the import writer needs that an object without its managed-by label holds",
            self.names_taken.clone(),
        );
        r.register(
            "service_imports",
            "ServiceImports the writer keeps",
            self.service_imports.clone(),
        );
        r.register(
            "target_ports_free",
            "Target ports free for new imports",
            self.target_ports_free.clone(),
        );
        r.register(
            "objects_deleted",
            "ServiceImports, derived Services and EndpointSlices deleted when imports ended",
            self.deleted.clone(),
        );
    }
}

/// The reason label of a Kubernetes API error.
pub fn reason_of(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.is_forbidden() => "forbidden",
        kube::Error::Api(s) if s.is_conflict() => "conflict",
        kube::Error::Api(s) if s.is_invalid() => "invalid",
        kube::Error::Api(_) => "api",
        _ => "unavailable",
    }
}

/// What to do next about an API error, for the operator.
pub fn hint(reason: &str) -> &'static str {
    match reason {
        "forbidden" => {
            "grant the federation's service account the RBAC verbs in docs/kubernetes.md (Imports)"
        }
        "unavailable" | "api" => "is the API server reachable? retrying with backoff",
        "conflict" => "another writer keeps changing the same object; retrying",
        "invalid" => "the API server refused an object; please report it",
        _ => "retrying with backoff",
    }
}

/// Problems currently known, by area; each is logged when it appears, changes or clears, and
/// shown in `isthmus status` while it holds.
#[derive(Default)]
pub struct Problems {
    current: BTreeMap<&'static str, String>,
    report: KubeReport,
}

impl Problems {
    pub fn new(report: KubeReport) -> Self {
        report.imports_running();
        Problems {
            current: BTreeMap::new(),
            report,
        }
    }

    /// Records a problem in `area`; logs only when it is new or different. Returns whether it
    /// was logged.
    pub fn report(&mut self, area: &'static str, text: String) -> bool {
        if self.current.get(area) == Some(&text) {
            return false;
        }
        tracing::warn!(area, problem = %text, "kubernetes imports");
        self.report.problem(&format!("imports: {area}"), &text);
        self.current.insert(area, text);
        true
    }

    /// `area` works again: says so once.
    pub fn clear(&mut self, area: &'static str) {
        if let Some(was) = self.current.remove(area) {
            tracing::info!(area, was = %was, "kubernetes imports: resolved");
            self.report.clear(&format!("imports: {area}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_said_once_until_it_changes_or_clears() {
        let mut p = Problems::default();
        assert!(p.report("api", "403 list services".into()));
        assert!(!p.report("api", "403 list services".into()));
        assert!(p.report("api", "connection refused".into()));
        p.clear("api");
        assert!(p.report("api", "connection refused".into()));
    }
}
