//! Unit tests of the stand-in's semantics, below HTTP: the store, patches, selectors and the
//! verb handlers (fed garbage too). The wire protocol end to end is in e2e/kube_standin.rs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use super::objects::Part;
use super::request::{self, Target};
use super::resources::find;
use super::rest::{self, Call};
use super::selector::Selector;
use super::store::{EventKind, Propagation, Store};
use super::{Shared, patch, strategic};

fn svc(name: &str, ports: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
           "spec": {"ports": ports}})
}

fn services() -> &'static super::resources::ResourceDef {
    find("", "v1", "services").unwrap()
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn create_fills_metadata_and_allocates_a_cluster_ip() {
    let mut store = Store::new();
    let created = store
        .create(
            services(),
            Some("default"),
            svc("web", json!([{"port": 80}])),
        )
        .unwrap();
    let meta = &created["metadata"];
    assert_eq!(meta["uid"].as_str().unwrap().len(), 36);
    assert!(meta["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(rv(&created), store.rv());
    let ip = created["spec"]["clusterIP"].as_str().unwrap();
    assert!(ip.starts_with("10.96."), "{ip}");
    assert_eq!(created["spec"]["clusterIPs"], json!([ip]));
    assert_eq!(created["spec"]["ports"][0]["targetPort"], 80);
    assert_eq!(created["spec"]["ports"][0]["protocol"], "TCP");

    let other = store
        .create(
            services(),
            Some("default"),
            svc("api", json!([{"port": 80}])),
        )
        .unwrap();
    assert_ne!(other["spec"]["clusterIP"], created["spec"]["clusterIP"]);
    let dup = store
        .create(
            services(),
            Some("default"),
            svc("web", json!([{"port": 80}])),
        )
        .unwrap_err();
    assert_eq!((dup.code, dup.reason), (409, "AlreadyExists"));
    let taken = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                       "spec": {"clusterIP": ip, "ports": [{"port": 1}]}});
    let err = store
        .create(services(), Some("default"), taken)
        .unwrap_err();
    assert_eq!(err.code, 422, "{err:?}");
    assert!(err.message.contains("already allocated"), "{}", err.message);
    let headless = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "h"},
                          "spec": {"clusterIP": "None"}});
    let headless = store.create(services(), Some("default"), headless).unwrap();
    assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
}

#[test]
fn create_refuses_missing_namespace_names_and_wrong_kinds() {
    let mut store = Store::new();
    let err = store
        .create(
            services(),
            Some("nowhere"),
            svc("web", json!([{"port": 80}])),
        )
        .unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (404, "namespaces \"nowhere\" not found")
    );
    let unnamed = json!({"apiVersion": "v1", "kind": "Service", "metadata": {}, "spec": {"ports": [{"port": 1}]}});
    let err = store
        .create(services(), Some("default"), unnamed)
        .unwrap_err();
    assert_eq!(err.code, 422);
    assert_eq!(
        err.details.as_ref().unwrap()["causes"][0]["field"],
        "metadata.name"
    );
    let mut wrong = svc("web", json!([{"port": 80}]));
    wrong["apiVersion"] = json!("v2");
    assert_eq!(
        store
            .create(services(), Some("default"), wrong)
            .unwrap_err()
            .code,
        400
    );
    let bad_name = svc("Web_1", json!([{"port": 80}]));
    assert_eq!(
        store
            .create(services(), Some("default"), bad_name)
            .unwrap_err()
            .code,
        422
    );
    let generated =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "cfg-"}});
    let created = store
        .create(
            find("", "v1", "configmaps").unwrap(),
            Some("default"),
            generated,
        )
        .unwrap();
    let name = created["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("cfg-") && name.len() == 9, "{name}");
}

#[test]
fn stale_updates_conflict_and_cluster_ip_is_immutable() {
    let mut store = Store::new();
    let created = store
        .create(
            services(),
            Some("default"),
            svc("web", json!([{"port": 80}])),
        )
        .unwrap();
    let mut first = created.clone();
    first["spec"]["ports"][0]["port"] = json!(81);
    let updated = store
        .update(services(), Some("default"), "web", first, Part::Main)
        .unwrap();
    assert!(rv(&updated) > rv(&created));
    let mut stale = created.clone();
    stale["spec"]["ports"][0]["port"] = json!(82);
    let err = store
        .update(services(), Some("default"), "web", stale, Part::Main)
        .unwrap_err();
    assert_eq!((err.code, err.reason), (409, "Conflict"));
    assert!(
        err.message.contains("the object has been modified"),
        "{}",
        err.message
    );

    // Without clusterIP the allocated one is kept; a different one is refused.
    let mut omitted = updated.clone();
    omitted["spec"].as_object_mut().unwrap().remove("clusterIP");
    omitted["spec"]
        .as_object_mut()
        .unwrap()
        .remove("clusterIPs");
    omitted["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let kept = store
        .update(services(), Some("default"), "web", omitted, Part::Main)
        .unwrap();
    assert_eq!(kept["spec"]["clusterIP"], created["spec"]["clusterIP"]);
    assert_eq!(
        rv(&kept),
        rv(&updated),
        "a no-op update keeps the resourceVersion"
    );
    let mut moved = kept.clone();
    moved["spec"]["clusterIP"] = json!("10.96.200.200");
    let err = store
        .update(services(), Some("default"), "web", moved, Part::Main)
        .unwrap_err();
    assert_eq!(err.code, 422);
    assert!(
        err.message.contains("may not change once set"),
        "{}",
        err.message
    );
}

#[test]
fn status_subresource_splits_writes_and_generation_tracks_spec() {
    let mut store = Store::new();
    let exports = find("multicluster.x-k8s.io", "v1alpha1", "serviceexports").unwrap();
    let body = json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
                      "metadata": {"name": "web"}, "status": {"conditions": [{"type": "Valid"}]}});
    let created = store.create(exports, Some("default"), body).unwrap();
    assert!(
        created.get("status").is_none(),
        "status is dropped on create"
    );
    assert_eq!(created["metadata"]["generation"], 1);

    let mut with_status = created.clone();
    with_status["status"] = json!({"conditions": [{"type": "Valid", "status": "True"}]});
    with_status["spec"] = json!({"ignored": true});
    let after = store
        .update(
            exports,
            Some("default"),
            "web",
            with_status.clone(),
            Part::Status,
        )
        .unwrap();
    assert_eq!(after["status"]["conditions"][0]["status"], "True");
    assert!(
        after.get("spec").is_none(),
        "a status write changes only status"
    );
    assert_eq!(after["metadata"]["generation"], 1);

    let mut main = after.clone();
    main["status"] = json!({"conditions": []});
    main["metadata"]["labels"] = json!({"a": "b"});
    let main = store
        .update(exports, Some("default"), "web", main, Part::Main)
        .unwrap();
    assert_eq!(
        main["status"], after["status"],
        "a main write ignores status"
    );
    assert_eq!(
        main["metadata"]["generation"], 1,
        "metadata changes keep the generation"
    );
    let mut spec = main.clone();
    spec["spec"] = json!({"x": 1});
    let spec = store
        .update(exports, Some("default"), "web", spec, Part::Main)
        .unwrap();
    assert_eq!(spec["metadata"]["generation"], 2);

    let mut no_rv = spec.clone();
    no_rv["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    no_rv["spec"] = json!({"x": 2});
    let err = store
        .update(exports, Some("default"), "web", no_rv, Part::Main)
        .unwrap_err();
    assert_eq!(
        err.code, 422,
        "custom resources need a resourceVersion on update"
    );
}

#[test]
fn watch_history_resumes_and_expires_after_compaction() {
    let mut store = Store::new();
    let start = store.rv();
    store
        .create(services(), Some("default"), svc("a", json!([{"port": 1}])))
        .unwrap();
    let b = store
        .create(services(), Some("default"), svc("b", json!([{"port": 1}])))
        .unwrap();
    let (backlog, _rx) = store.subscribe(start).unwrap();
    let names: Vec<&str> = backlog
        .iter()
        .map(|e| e.object["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let (backlog, _rx) = store.subscribe(rv(&b)).unwrap();
    assert!(backlog.is_empty());

    store.compact();
    let err = store.subscribe(start).unwrap_err();
    assert_eq!((err.code, err.reason), (410, "Expired"));
    assert!(
        store.subscribe(store.rv()).is_ok(),
        "watching from now still works"
    );
    assert_eq!(
        store.list_at(services(), None, start).unwrap_err().code,
        410
    );
}

#[test]
fn list_at_reconstructs_an_older_snapshot() {
    let mut store = Store::new();
    let a = store
        .create(services(), Some("default"), svc("a", json!([{"port": 1}])))
        .unwrap();
    let at = store.rv();
    let mut changed = a.clone();
    changed["spec"]["ports"][0]["port"] = json!(2);
    store
        .update(services(), Some("default"), "a", changed, Part::Main)
        .unwrap();
    store
        .create(services(), Some("default"), svc("b", json!([{"port": 1}])))
        .unwrap();
    let then = store.list_at(services(), None, at).unwrap();
    assert_eq!(then.len(), 1);
    assert_eq!(then[0]["spec"]["ports"][0]["port"], 1);
    assert_eq!(store.list(services(), None).len(), 2);
}

#[test]
fn garbage_collection_follows_owner_references() {
    let mut store = Store::new();
    let imports = find("multicluster.x-k8s.io", "v1alpha1", "serviceimports").unwrap();
    let owner = store
        .create(
            imports,
            Some("default"),
            json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport", "metadata": {"name": "web"}, "spec": {"type": "ClusterSetIP"}}),
        )
        .unwrap();
    let other = store
        .create(
            imports,
            Some("default"),
            json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport", "metadata": {"name": "api"}, "spec": {"type": "ClusterSetIP"}}),
        )
        .unwrap();
    let reference = |o: &Value| {
        json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
        "name": o["metadata"]["name"], "uid": o["metadata"]["uid"]})
    };
    let mut owned = svc("derived", json!([{"port": 80}]));
    owned["metadata"]["ownerReferences"] = json!([reference(&owner)]);
    store.create(services(), Some("default"), owned).unwrap();
    let mut shared = svc("shared", json!([{"port": 80}]));
    shared["metadata"]["ownerReferences"] = json!([reference(&owner), reference(&other)]);
    store.create(services(), Some("default"), shared).unwrap();
    let before = store.rv();
    let (_, mut rx) = store.subscribe(before).unwrap();

    store
        .delete(
            imports,
            Some("default"),
            "web",
            Propagation::Background,
            &Value::Null,
        )
        .unwrap();
    assert!(
        store.get(services(), Some("default"), "derived").is_none(),
        "sole owner gone: collected"
    );
    let kept = store.get(services(), Some("default"), "shared").unwrap();
    assert_eq!(
        kept["metadata"]["ownerReferences"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "dangling reference removed"
    );
    let mut kinds = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        kinds.push((
            ev.kind,
            ev.object["metadata"]["name"].as_str().unwrap().to_string(),
        ));
    }
    assert!(
        kinds.contains(&(EventKind::Deleted, "derived".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&(EventKind::Modified, "shared".into())),
        "{kinds:?}"
    );

    let mut orphan = svc("orphan", json!([{"port": 80}]));
    orphan["metadata"]["ownerReferences"] = json!([reference(&other)]);
    store.create(services(), Some("default"), orphan).unwrap();
    store
        .delete(
            imports,
            Some("default"),
            "api",
            Propagation::Orphan,
            &Value::Null,
        )
        .unwrap();
    let orphan = store.get(services(), Some("default"), "orphan").unwrap();
    assert!(
        orphan["metadata"]["ownerReferences"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn finalizers_hold_deletion_until_removed() {
    let mut store = Store::new();
    let cms = find("", "v1", "configmaps").unwrap();
    store
        .create(
            cms,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "finalizers": ["example.com/hold"]}}),
        )
        .unwrap();
    let (obj, gone) = store
        .delete(
            cms,
            Some("default"),
            "c",
            Propagation::Background,
            &Value::Null,
        )
        .unwrap();
    assert!(!gone);
    assert!(obj["metadata"]["deletionTimestamp"].is_string());
    let mut release = obj.clone();
    release["metadata"]["finalizers"] = json!([]);
    store
        .update(cms, Some("default"), "c", release, Part::Main)
        .unwrap();
    assert!(store.get(cms, Some("default"), "c").is_none());
}

#[test]
fn namespace_deletion_removes_its_contents() {
    let mut store = Store::new();
    let ns = find("", "v1", "namespaces").unwrap();
    store
        .create(
            ns,
            None,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
        )
        .unwrap();
    let mut s = svc("web", json!([{"port": 80}]));
    s["metadata"]["namespace"] = json!("team");
    store.create(services(), Some("team"), s).unwrap();
    store
        .delete(ns, None, "team", Propagation::Background, &Value::Null)
        .unwrap();
    assert!(store.list(services(), Some("team")).is_empty());
    assert!(store.get(ns, None, "team").is_none());
}

#[test]
fn strategic_merge_merges_service_ports_by_port() {
    let current = json!({"spec": {"ports": [
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
        {"name": "metrics", "port": 9090, "protocol": "TCP", "targetPort": 9090}],
        "selector": {"app": "web"}}});
    // What `kubectl apply` sends when 80's target port changes and 443 is added.
    let patch = json!({"spec": {
        "$setElementOrder/ports": [{"port": 80}, {"port": 443}, {"port": 9090}],
        "ports": [{"port": 80, "targetPort": 8081}, {"name": "https", "port": 443, "targetPort": 8443}]}});
    let merged = strategic::strategic_merge(&current, &patch).unwrap();
    let ports = merged["spec"]["ports"].as_array().unwrap();
    let order: Vec<u64> = ports.iter().map(|p| p["port"].as_u64().unwrap()).collect();
    assert_eq!(order, [80, 443, 9090]);
    assert_eq!(ports[0]["targetPort"], 8081);
    assert_eq!(ports[0]["name"], "http", "fields not in the patch are kept");
    assert_eq!(merged["spec"]["selector"], json!({"app": "web"}));

    let delete = json!({"spec": {"ports": [{"$patch": "delete", "port": 9090}]}});
    let merged = strategic::strategic_merge(&current, &delete).unwrap();
    assert_eq!(merged["spec"]["ports"].as_array().unwrap().len(), 1);
    let replace = json!({"spec": {"ports": [{"$patch": "replace"}, {"port": 1}]}});
    let merged = strategic::strategic_merge(&current, &replace).unwrap();
    assert_eq!(merged["spec"]["ports"], json!([{"port": 1}]));
    let retain = json!({"spec": {"$retainKeys": ["ports"], "ports": [{"port": 80}]}});
    let merged = strategic::strategic_merge(&current, &retain).unwrap();
    assert!(merged["spec"].get("selector").is_none());
    let containers =
        json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
    let patch = json!({"spec": {"containers": [{"name": "b", "image": "z"}]}});
    let merged = strategic::strategic_merge(&containers, &patch).unwrap();
    assert_eq!(merged["spec"]["containers"][1]["image"], "z");
    assert_eq!(merged["spec"]["containers"][0]["image"], "x");
    let keyless = json!({"spec": {"ports": [{"targetPort": 1}]}});
    assert!(strategic::strategic_merge(&current, &keyless).is_err());
    let finalizers = json!({"metadata": {"finalizers": ["a"]}});
    let merged = strategic::strategic_merge(
        &finalizers,
        &json!({"metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]}}),
    )
    .unwrap();
    assert_eq!(merged["metadata"]["finalizers"], json!(["b"]));
}

#[test]
fn merge_and_json_patches() {
    let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
    patch::merge_patch(&mut doc, &json!({"a": {"b": null, "d": 3}, "l": [9]}));
    assert_eq!(doc, json!({"a": {"c": 2, "d": 3}, "l": [9]}));
    let ops = json!([{"op": "add", "path": "/l/-", "value": 10}, {"op": "replace", "path": "/a/c", "value": 5},
                     {"op": "remove", "path": "/a/d"}, {"op": "test", "path": "/l/0", "value": 9},
                     {"op": "copy", "from": "/a/c", "path": "/x"}, {"op": "move", "from": "/x", "path": "/y"}]);
    patch::json_patch(&mut doc, &ops).unwrap();
    assert_eq!(doc, json!({"a": {"c": 5}, "l": [9, 10], "y": 5}));
    let before = doc.clone();
    assert!(patch::json_patch(&mut doc, &json!([{"op": "add", "path": "/z", "value": 1}, {"op": "test", "path": "/l/0", "value": 0}])).is_err());
    assert_eq!(doc, before, "a failing patch changes nothing");
    for bad in [
        json!({}),
        json!([{"op": "remove", "path": "/l/7"}]),
        json!([{"op": "nope", "path": "/"}]),
        json!([{"op": "add", "path": "no-slash", "value": 1}]),
    ] {
        assert!(patch::json_patch(&mut doc, &bad).is_err(), "{bad}");
    }
}

#[test]
fn selectors() {
    let obj = json!({"metadata": {"name": "web", "namespace": "prod", "labels": {"app": "web", "tier": "front"}}});
    let cases = [
        ("app=web", None, true),
        ("app==web", None, true),
        ("app!=web", None, false),
        ("app", None, true),
        ("!app", None, false),
        ("missing", None, false),
        ("!missing", None, true),
        ("tier in (front,back)", None, true),
        ("tier notin (front)", None, false),
        ("missing notin (x)", None, true),
        ("app=web,tier=back", None, false),
        ("", Some("metadata.name=web"), true),
        ("", Some("metadata.namespace!=prod"), false),
        (
            "app=web",
            Some("metadata.name==web,metadata.namespace=prod"),
            true,
        ),
    ];
    for (labels, fields, want) in cases {
        let sel = Selector::parse(Some(labels), fields).unwrap();
        assert_eq!(sel.matches(&obj), want, "{labels} / {fields:?}");
    }
    for bad in ["app in (a", "=x", "a=b=c!", "tier in front"] {
        assert!(Selector::parse(Some(bad), None).is_err(), "{bad}");
    }
    assert!(Selector::parse(None, Some("spec.type=ClusterIP")).is_err());
}

#[test]
fn paths_map_to_targets_and_verbs() {
    let t = request::target("/api/v1/namespaces/default/services/web/status").unwrap();
    assert_eq!(
        (
            t.def.resource,
            t.namespace.as_deref(),
            t.name.as_deref(),
            t.sub.as_deref()
        ),
        ("services", Some("default"), Some("web"), Some("status"))
    );
    assert_eq!(t.rbac_resource(), "services/status");
    let ns = request::target("/api/v1/namespaces/default").unwrap();
    assert_eq!(
        (ns.def.resource, ns.name.as_deref()),
        ("namespaces", Some("default"))
    );
    let all = request::target("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
    assert!(all.namespace.is_none() && all.name.is_none());
    assert!(request::target("/api/v1/namespaces/default/pods").is_err());
    assert!(request::target("/api/v1/namespaces/default/configmaps/x/status").is_err());
    let q = request::query(Some("watch=1&labelSelector=app%3Dweb%2Ctier+in+(a)"));
    assert_eq!(q["labelSelector"], "app=web,tier in (a)");
    assert_eq!(request::verb(&http::Method::GET, &all, &q), "watch");
}

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
