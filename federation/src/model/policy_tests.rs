//! Policy tests: every section parsed, bad documents named by their full field path, and the
//! authorization and fault decisions.

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
            "authorization.default",
        ),
        // Type and shape errors name the full path, however deep.
        (
            json!({"services": ["a/b"], "split": {"weights": {"east": "half"}}}),
            "split.weights.east",
        ),
        (
            json!({"services": ["a/b"], "split": {"weights": {"east": 1}, "cluster_heder": true}}),
            "split.cluster_heder",
        ),
        (json!({"split": {"weights": {"east": 1}}}), "services"),
        (
            json!({"services": ["a/b"], "shadow": {"cluster": "south"}}),
            "shadow.percent",
        ),
        (
            json!({"services": ["a/b"], "authorization": {"allow": [{"clusters": ["west"]}, {"clusters": ["south", 3]}]}}),
            "authorization.allow[1].clusters[1]",
        ),
        (
            json!({"services": ["a/b"], "retry": {"grpc_statuses": "unavailable"}}),
            "retry.grpc_statuses",
        ),
        (json!({"services": "a/b"}), "services"),
        (json!(["a/b"]), ""),
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
