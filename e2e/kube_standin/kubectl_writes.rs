//! `kubectl` writes against the stand-in: apply (create, configure, idempotent, custom
//! resources), patch (merge, JSON, strategic), replace with a stale resourceVersion, delete, a
//! revoked verb (403) and a wrong token (401).

use isthmus_federation::testing::kubeapi::KubeApi;
use serde_json::json;

use super::kubectl::{EXPORT, Kubectl, NAMESPACE, service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_creates_merges_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path()).await;
    let k = Kubectl::new(&api, dir.path());
    let ns = k.file("ns.yaml", NAMESPACE);
    k.ok(&["apply", "-f", &ns]).await;
    let v1 = k.file("v1.yaml", &service(8080, false));
    assert!(
        k.ok(&["apply", "-f", &v1])
            .await
            .contains("service/web created")
    );
    let first = api.get("", "v1", "services", Some("team"), "web").unwrap();
    let applied =
        first["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap();
    assert!(applied.contains("\"targetPort\":8080"), "{applied}");

    let out = k.ok(&["apply", "-f", &v1]).await;
    assert!(out.contains("service/web unchanged"), "{out}");
    let same = api.get("", "v1", "services", Some("team"), "web").unwrap();
    assert_eq!(
        same["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );

    // A field kubectl does not own survives its strategic merge (three-way patch).
    api.put(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "team",
        "labels": {"app": "web", "added-by": "controller"}, "annotations": first["metadata"]["annotations"]},
        "spec": first["spec"]})).unwrap();
    let v2 = k.file("v2.yaml", &service(8081, true));
    let out = k.ok(&["apply", "-f", &v2]).await;
    assert!(out.contains("service/web configured"), "{out}");
    let svc = api.get("", "v1", "services", Some("team"), "web").unwrap();
    let ports: Vec<(u64, u64)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["targetPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [(80, 8081), (443, 8443)]);
    assert_eq!(
        svc["spec"]["clusterIP"], first["spec"]["clusterIP"],
        "the ClusterIP stays"
    );
    assert_eq!(svc["metadata"]["labels"]["added-by"], "controller");
    let applied =
        svc["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap();
    assert!(applied.contains("\"port\":443"), "{applied}");
    let out = k.ok(&["apply", "-f", &v2]).await;
    assert!(out.contains("service/web unchanged"), "{out}");

    // Back to one port: kubectl's patch deletes 443 by its merge key.
    k.ok(&["apply", "-f", &v1]).await;
    let svc = api.get("", "v1", "services", Some("team"), "web").unwrap();
    assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 1, "{svc}");

    // Custom resources take kubectl's JSON merge patch path.
    let export = k.file("export.yaml", EXPORT);
    assert!(k.ok(&["apply", "-f", &export]).await.contains("created"));
    assert!(k.ok(&["apply", "-f", &export]).await.contains("unchanged"));
    let labelled = k.file(
        "export2.yaml",
        &format!("{EXPORT}  labels:\n    tier: gold\n"),
    );
    assert!(
        k.ok(&["apply", "-f", &labelled])
            .await
            .contains("configured")
    );
    let export = api
        .get(
            "multicluster.x-k8s.io",
            "v1alpha1",
            "serviceexports",
            Some("team"),
            "web",
        )
        .unwrap();
    assert_eq!(export["metadata"]["labels"]["tier"], "gold");
    assert!(api.requests().count("patch", "serviceexports") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_patch_replace_delete_and_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path()).await;
    let k = Kubectl::new(&api, dir.path());
    k.ok(&["create", "-f", &k.file("ns.yaml", NAMESPACE)]).await;
    k.ok(&["create", "-f", &k.file("svc.yaml", &service(8080, true))])
        .await;
    let stale = k
        .ok(&["get", "svc", "web", "-n", "team", "-o", "yaml"])
        .await;

    k.ok(&[
        "patch",
        "svc",
        "web",
        "-n",
        "team",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":"gold"}}}"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "svc",
        "web",
        "-n",
        "team",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/ports/0/targetPort","value":9000}]"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "svc",
        "web",
        "-n",
        "team",
        "-p",
        r#"{"spec":{"ports":[{"port":443,"targetPort":9443}]}}"#,
    ])
    .await;
    let svc = api.get("", "v1", "services", Some("team"), "web").unwrap();
    assert_eq!(svc["metadata"]["labels"]["tier"], "gold");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 9000);
    assert_eq!(
        svc["spec"]["ports"][1]["targetPort"], 9443,
        "strategic merge by port: {svc}"
    );
    let bad = k
        .run(&[
            "patch",
            "svc",
            "web",
            "-n",
            "team",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/spec/nope"}]"#,
        ])
        .await;
    assert_eq!(bad.code, 1, "{}", bad.err);

    let stale = k.file("stale.yaml", &stale);
    let conflict = k.run(&["replace", "-f", &stale]).await;
    assert_eq!(conflict.code, 1);
    assert!(
        conflict.err.contains("the object has been modified"),
        "{}",
        conflict.err
    );

    api.revoke("delete", "", "services");
    let denied = k.run(&["delete", "svc", "web", "-n", "team"]).await;
    assert_eq!(denied.code, 1);
    assert!(
        denied.err.contains("Forbidden")
            && denied.err.contains("cannot delete resource \"services\""),
        "{}",
        denied.err
    );
    assert!(api.get("", "v1", "services", Some("team"), "web").is_some());
    api.allow("delete", "", "services");
    let out = k.ok(&["delete", "svc", "web", "-n", "team"]).await;
    assert!(out.contains("service \"web\" deleted"), "{out}");
    assert!(api.get("", "v1", "services", Some("team"), "web").is_none());

    let mut wrong = std::fs::read_to_string(api.kubeconfig()).unwrap();
    wrong = wrong.replace(api.token(), "not-the-token");
    let wrong_path = dir.path().join("wrong-kubeconfig");
    std::fs::write(&wrong_path, wrong).unwrap();
    let k2 = Kubectl {
        kubeconfig: wrong_path,
        cache: dir.path().join("cache2"),
        dir: dir.path().to_path_buf(),
    };
    let unauthorized = k2.run(&["get", "svc"]).await;
    assert_eq!(unauthorized.code, 1);
    assert!(
        unauthorized.err.contains("Unauthorized") || unauthorized.err.contains("must be logged in"),
        "{}",
        unauthorized.err
    );
}
