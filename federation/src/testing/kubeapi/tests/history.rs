//! History and deletion: watch resume and 410, consistent snapshots, garbage collection,
//! finalizers, namespace deletion.

use serde_json::{Value, json};

use super::super::objects::Part;
use super::super::resources::find;
use super::super::store::{EventKind, Propagation, Store};
use super::{rv, services, svc};

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
