//! Every service's traffic policy, built from the documents the federation distributes (JSON
//! text of the catalog's `policies:` section; schema and validation in
//! [`isthmus_federation::model::policy`]). The `"*"` documents apply first, then the others in
//! name order, each replacing only the sections it sets. A document that does not parse is
//! refused whole with the field named (shown in /config_dump) and changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

pub use isthmus_federation::model::policy::{
    Action, Authorization, Caller, Decision, Fault, RateLimit, ServicePolicy, Shadow, Split,
};
use isthmus_federation::model::policy::{Document, parse};

use crate::table::ServiceName;

#[derive(Debug, Default)]
pub struct Policies {
    by_service: HashMap<ServiceName, Arc<ServicePolicy>>,
    fallback: Arc<ServicePolicy>,
    /// The documents that parsed, by name (for /config_dump and explain).
    pub documents: Vec<Document>,
    /// Documents refused, with the reason (shown in /config_dump and logged once).
    pub refused: Vec<String>,
}

impl Policies {
    /// Builds from `name -> JSON document`, every service starting from the built-in defaults.
    pub fn build<'a>(docs: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        Self::build_on(&ServicePolicy::default(), docs)
    }

    /// Builds from `name -> JSON document`, every service starting from `defaults` (the
    /// gateway config's) before the documents apply.
    pub fn build_on<'a>(
        defaults: &ServicePolicy,
        docs: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Self {
        let mut out = Policies::default();
        for (name, json) in docs {
            let parsed = serde_json::from_str::<serde_json::Value>(json)
                .map_err(|e| format!("policy {name}: {e}"))
                .and_then(|v| parse(name, &v).map_err(|e| e.to_string()));
            match parsed {
                Ok(doc) => out.documents.push(doc),
                Err(reason) => {
                    // Fail closed: a document this gateway cannot read (a newer federation's,
                    // say) may have been a lockdown. The services it names — every service when
                    // even that is unreadable — are denied to all callers until it parses.
                    out.documents.extend(deny_all(name, json));
                    out.refused.push(reason);
                }
            }
        }
        let mut fallback = defaults.clone();
        for doc in out.documents.iter().filter(|d| d.is_wildcard()) {
            doc.apply_to(&mut fallback);
        }
        let mut by_service: HashMap<ServiceName, ServicePolicy> = HashMap::new();
        for doc in &out.documents {
            for key in doc.service_keys().filter(|k| k != "*") {
                doc.apply_to(
                    by_service
                        .entry(key.into())
                        .or_insert_with(|| fallback.clone()),
                );
            }
        }
        out.by_service = by_service
            .into_iter()
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        out.fallback = Arc::new(fallback);
        out
    }

    pub fn for_service(&self, service: &str) -> &Arc<ServicePolicy> {
        self.by_service.get(service).unwrap_or(&self.fallback)
    }
}

/// An authorization that denies every caller, for the services a refused document names.
fn deny_all(name: &str, json: &str) -> Option<Document> {
    let deny = |services: serde_json::Value| {
        parse(
            name,
            &serde_json::json!({ "services": services, "authorization": { "default": "deny" } }),
        )
    };
    let named = serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("services").cloned())
        .filter(|s| s.as_array().is_some_and(|a| !a.is_empty()));
    named
        .and_then(|s| deny(s).ok())
        .or_else(|| deny(serde_json::json!(["*"])).ok())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

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
            r#"{"services":["demo/echo"],"failover":{"threshold":0.5,"slow_start":"30s"},"circuit_breaker":{"max_requests":7}}"#,
        )]);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        let e = p.for_service("echo.demo");
        assert_eq!(e.threshold, 0.5);
        assert_eq!(e.slow_start, Duration::from_secs(30));
        assert_eq!(e.max_requests, 7);
        assert_eq!(**p.for_service("other.demo"), ServicePolicy::default());
    }

    /// The gateway config's defaults are what a service gets unless its documents say more.
    #[test]
    fn the_gateways_defaults_apply_where_documents_are_silent() {
        let defaults = ServicePolicy {
            per_try_timeout: Duration::from_secs(2),
            slow_start: Duration::from_secs(3),
            ..ServicePolicy::default()
        };
        let map: BTreeMap<String, String> = [(
            "a".to_string(),
            r#"{"services":["demo/echo"],"retry":{"per_try_timeout":"500ms"}}"#.to_string(),
        )]
        .into_iter()
        .collect();
        let p = Policies::build_on(&defaults, &map);
        let e = p.for_service("echo.demo");
        assert_eq!(e.per_try_timeout, Duration::from_millis(500));
        assert_eq!(e.slow_start, Duration::from_secs(3));
        assert_eq!(**p.for_service("other.demo"), defaults);
    }

    #[test]
    fn a_bad_document_is_refused_whole_with_the_field_named() {
        let p = build(&[
            (
                "bad",
                r#"{"services":["a/b"],"failover":{"threshold":1.5}}"#,
            ),
            ("worse", "not json"),
        ]);
        assert_eq!(p.refused.len(), 2);
        assert!(
            p.refused[0].contains("failover.threshold"),
            "{:?}",
            p.refused
        );
        assert!(p.refused[1].contains("policy worse"), "{:?}", p.refused);
        // Nothing of a refused document applies, except that it fails closed: its services
        // (every service, when not even those can be read) deny every caller.
        let b = p.for_service("b.a");
        assert_eq!(b.threshold, ServicePolicy::default().threshold);
        assert_eq!(
            b.authorization.as_ref().map(|a| (a.default, a.allow.len())),
            Some((Action::Deny, 0))
        );
        let other = p.for_service("other.ns");
        assert_eq!(
            other.authorization.as_ref().map(|a| a.default),
            Some(Action::Deny),
            "\"worse\" names no readable service: it stands for all of them"
        );
    }

    #[test]
    fn wildcard_documents_underlie_every_service() {
        let p = build(&[
            (
                "all",
                r#"{"services":["*"],"retry":{"retries":0},"authorization":{"default":"deny"}}"#,
            ),
            ("one", r#"{"services":["demo/echo"],"retry":{"retries":3}}"#),
        ]);
        assert_eq!(p.for_service("x.y").retries, 0);
        assert_eq!(p.for_service("echo.demo").retries, 3);
        assert_eq!(
            p.for_service("echo.demo")
                .authorization
                .as_ref()
                .map(|a| a.default),
            Some(Action::Deny),
            "a service's own document keeps the wildcard's other sections"
        );
    }
}
