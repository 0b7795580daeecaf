//! The MCS CRDs' OpenAPI schemas (`deploy/kubernetes/base/crds/`), checked with a real JSON
//! Schema validator (`jsonschema`, which kubernetes-validate brings into the venv) against the
//! ServiceExports and ServiceImports the federation and operators write, and against objects
//! KEP-1645 rules out.

use std::process::Command;

use serde_json::Value;

use crate::kubernetes_manifests::{kubernetes_dir, venv_tool};

/// Validates `instance` against the CRD's OpenAPI v3 schema with the `jsonschema` package (it
/// comes with kubernetes-validate); the error messages, empty when valid.
fn schema_errors(crd: &str, instance: &Value) -> Vec<String> {
    const SCRIPT: &str = r#"
import json, sys
import jsonschema
job = json.load(sys.stdin)
validator = jsonschema.Draft7Validator(job["schema"])
print(json.dumps([f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(job["instance"])]))
"#;
    let text = std::fs::read_to_string(kubernetes_dir().join("base/crds").join(crd)).expect("read");
    let crd: Value = serde_saphyr::from_str(&text).expect("CRD YAML");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(
        version["subresources"]["status"],
        serde_json::json!({}),
        "{crd}: status subresource"
    );
    let job = serde_json::json!({
        "schema": version["schema"]["openAPIV3Schema"],
        "instance": instance,
    });
    let mut child = Command::new(venv_tool("python"))
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the venv's python");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        job.to_string().as_bytes(),
    )
    .expect("write");
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "jsonschema failed: is kubernetes-validate installed?"
    );
    serde_json::from_slice(&out.stdout).expect("a JSON list")
}

/// The MCS CRDs' schemas accept what the federation writes and what operators apply, and refuse
/// what KEP-1645 rules out.
#[test]
fn the_crd_schemas_accept_mcs_objects_and_refuse_bad_ones() {
    let export = serde_json::json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceExport",
        "metadata": {"name": "echo", "namespace": "demo"},
        "status": {"conditions": [
            {"type": "Valid", "status": "True", "reason": "ServiceFound", "message": "",
             "lastTransitionTime": "2026-12-07T12:00:00Z", "observedGeneration": 1},
            {"type": "Conflict", "status": "True", "reason": "PortConflict",
             "message": "west exports echo.demo since 2026-12-01 with port 8080/http",
             "lastTransitionTime": "2026-12-07T12:00:00Z"},
        ]},
    });
    assert_eq!(
        schema_errors("serviceexports.yaml", &export),
        Vec::<String>::new()
    );
    let import = serde_json::json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": {"name": "echo", "namespace": "demo"},
        "spec": {
            "type": "ClusterSetIP",
            "ips": ["10.96.12.7"],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}],
            "sessionAffinity": "None",
        },
        "status": {"clusters": [{"cluster": "west"}, {"cluster": "south"}]},
    });
    assert_eq!(
        schema_errors("serviceimports.yaml", &import),
        Vec::<String>::new()
    );

    let bad = |crd: &str, mut object: Value, pointer: &str, value: Value, field: &str| {
        *object.pointer_mut(pointer).expect(pointer) = value;
        let errors = schema_errors(crd, &object);
        assert!(
            errors.iter().any(|e| e.contains(field)),
            "{crd} {pointer}: {errors:?}"
        );
    };
    bad(
        "serviceimports.yaml",
        import.clone(),
        "/spec/type",
        "LoadBalancer".into(),
        "spec/type",
    );
    bad(
        "serviceimports.yaml",
        import.clone(),
        "/spec/ports/0/port",
        70000.into(),
        "port",
    );
    bad(
        "serviceimports.yaml",
        import.clone(),
        "/spec/ports/0/protocol",
        "HTTP".into(),
        "protocol",
    );
    bad(
        "serviceimports.yaml",
        import.clone(),
        "/status/clusters/0",
        serde_json::json!({}),
        "cluster",
    );
    let mut no_type = import.clone();
    no_type["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("type");
    assert!(
        !schema_errors("serviceimports.yaml", &no_type).is_empty(),
        "spec.type is required"
    );
    bad(
        "serviceexports.yaml",
        export.clone(),
        "/status/conditions/0/status",
        "Maybe".into(),
        "status",
    );
    bad(
        "serviceexports.yaml",
        export.clone(),
        "/status/conditions/0/reason",
        "no spaces".into(),
        "reason",
    );
    let mut no_reason = export;
    no_reason["status"]["conditions"][1]
        .as_object_mut()
        .expect("condition")
        .remove("reason");
    assert!(
        !schema_errors("serviceexports.yaml", &no_reason).is_empty(),
        "reason is required"
    );
}
