//! The verb handlers fed garbage.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;

use super::super::Shared;
use super::super::request::{self, Target};
use super::super::rest::{self, Call};
use super::super::store::Store;
use super::svc;

fn shared() -> Shared {
    let (expire, _) = tokio::sync::watch::channel(0);
    let (generation, _) = tokio::sync::watch::channel(0);
    Shared {
        store: Mutex::new(Store::new()),
        token: "t".into(),
        user: "u".into(),
        revoked: Mutex::new(HashSet::new()),
        counts: Mutex::new(BTreeMap::new()),
        bookmark_every: Mutex::new(Duration::from_secs(1)),
        expire,
        generation,
        address: Mutex::new(String::new()),
    }
}

fn call<'a>(
    target: &'a Target,
    verb: &'static str,
    q: &'a HashMap<String, String>,
    ct: &'a str,
    body: &'a [u8],
) -> Call<'a> {
    Call {
        target,
        verb,
        q,
        accept: "application/json",
        content_type: ct,
        body,
    }
}

/// Garbage bodies, content types and query strings get a 4xx Status, never a panic or a 5xx.
#[test]
fn garbage_never_panics() {
    let shared = shared();
    let seed_body = svc("web", json!([{"port": 80}])).to_string();
    rest::handle(
        &shared,
        call(
            &request::target("/api/v1/namespaces/default/services").unwrap(),
            "create",
            &HashMap::new(),
            "application/json",
            seed_body.as_bytes(),
        ),
    )
    .unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let samples: Vec<Vec<u8>> = vec![
        b"".to_vec(), b"{".to_vec(), b"null".to_vec(), b"[]".to_vec(), b"42".to_vec(), b"\"s\"".to_vec(),
        br#"{"apiVersion":"v1","kind":"Service","metadata":"x"}"#.to_vec(),
        br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":7,"labels":[1]},"spec":{"ports":"x"}}"#.to_vec(),
        br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},"spec":{"ports":[{"port":-1},7,{"port":1e99}],"type":5,"clusterIP":"::1"}}"#.to_vec(),
        br#"[{"op":"move","from":"/spec","path":"/spec/x"}]"#.to_vec(),
        br#"{"spec":{"ports":[{"$patch":"delete"}],"$setElementOrder/ports":7,"$retainKeys":"x"},"metadata":null}"#.to_vec(),
        br#"{"metadata":{"$patch":"bogus"}}"#.to_vec(),
        "- a: [\n  : {".as_bytes().to_vec(),
    ];
    let mut bodies = samples.clone();
    for _ in 0..300 {
        let base = &samples[(next() % samples.len() as u64) as usize];
        let mut b = base.clone();
        for _ in 0..(next() % 4) {
            if b.is_empty() {
                break;
            }
            let i = (next() % b.len() as u64) as usize;
            b[i] = (next() & 0xff) as u8;
        }
        bodies.push(b);
    }
    let paths = [
        "/api/v1/namespaces/default/services",
        "/api/v1/namespaces/default/services/web",
        "/api/v1/namespaces/default/services/web/status",
        "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/default/serviceexports/web",
    ];
    let verbs: [(&str, &[&str]); 4] = [
        (
            "create",
            &["application/json", "application/yaml", "text/plain"],
        ),
        ("update", &["application/json", "application/yaml"]),
        (
            "patch",
            &[
                "application/merge-patch+json",
                "application/json-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
                "x/y",
            ],
        ),
        ("delete", &["application/json"]),
    ];
    let queries = [
        HashMap::new(),
        request::query(Some("labelSelector=%28%28&limit=x")),
        request::query(Some("continue=@@&limit=1")),
        request::query(Some("dryRun=All")),
    ];
    let mut answered = 0;
    for (n, body) in bodies.iter().enumerate() {
        let path = paths[n % paths.len()];
        let target = request::target(path).unwrap();
        let (verb, types) = verbs[n % verbs.len()];
        let verb = if target.name.is_none() {
            "create"
        } else {
            verb
        };
        for ct in types {
            for q in &queries {
                let result = rest::handle(&shared, call(&target, verb, q, ct, body));
                if let Err(e) = result {
                    assert!((400..500).contains(&e.code), "{verb} {path} {ct}: {e:?}");
                    assert_eq!(e.to_status()["kind"], "Status");
                }
                answered += 1;
            }
        }
        let list = request::target("/api/v1/services").unwrap();
        for q in &queries {
            if let Err(e) = rest::handle(&shared, call(&list, "list", q, "", b"")) {
                assert!((400..500).contains(&e.code), "list: {e:?}");
            }
        }
    }
    assert!(answered > 1000);
}
