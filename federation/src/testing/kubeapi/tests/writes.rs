//! Create and update: metadata, defaults, allocation, validation, optimistic concurrency,
//! the status subresource and generation.

use serde_json::json;

use super::super::objects::Part;
use super::super::resources::find;
use super::super::store::Store;
use super::{rv, services, svc};

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
