//! The OpenAPI v3 documents kubectl reads: `/openapi/v3` (one entry per group/version) and
//! `/openapi/v3/<api|apis/group>/<version>` with, per type, the PATCH operation tagged with
//! `x-kubernetes-group-version-kind` and the `fieldValidation` query parameter. That is what
//! kubectl's field-validation check looks for; finding it, kubectl sends
//! `fieldValidation=Strict` and skips client-side schema validation (which would need the
//! protobuf `/openapi/v2` document). No schemas are served, and the PATCH request bodies list
//! no strategic-merge content type, so `kubectl apply` computes strategic patches from its own
//! compiled-in types (built-ins) or falls back to JSON merge patches (custom resources).
//!
//! Must not: pretend to validate: `fieldValidation` is accepted and ignored (docs/testing-kubernetes.md).

use serde_json::{Map, Value, json};

use super::resources::{RESOURCES, group_versions};

fn prefix(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`.
pub fn root() -> Value {
    let mut paths = Map::new();
    for (group, version) in group_versions() {
        let p = prefix(group, version);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=0")}),
        );
    }
    json!({"paths": paths})
}

fn query(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": true})
}

/// `/openapi/v3/<prefix>` for a served group/version (the path after `/openapi/v3/`).
pub fn group_version(path: &str) -> Option<Value> {
    let (group, version) = group_versions()
        .into_iter()
        .find(|(g, v)| prefix(g, v) == path)?;
    let mut paths = Map::new();
    for def in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!({"group": def.group, "version": def.version, "kind": def.kind});
        let base = format!("/{}", prefix(group, version));
        let item = if def.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", def.resource)
        } else {
            format!("{base}/{}/{{name}}", def.resource)
        };
        let content = json!({
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/merge-patch+json": {"schema": {"type": "object"}},
        });
        let op = |action: &str| {
            json!({
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [query("dryRun"), query("fieldManager"), query("fieldValidation")],
                "responses": {"200": {"description": "OK"}},
            })
        };
        let mut patch = op("patch");
        patch["requestBody"] = json!({"content": content, "required": true});
        paths.insert(
            item,
            json!({"get": op("get"), "put": op("put"), "patch": patch, "delete": op("delete")}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
