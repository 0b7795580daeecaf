//! Pure parts: strategic merge, merge and JSON patches, selectors, paths.

use serde_json::json;

use super::super::request;
use super::super::selector::Selector;
use super::super::{patch, strategic};

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
