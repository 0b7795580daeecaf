//! The resource types the stand-in serves, and the discovery documents built from them
//! (`/api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>`, `/version`).
//!
//! Must not: hold state. Adding a type is one [`ResourceDef`] line in [`RESOURCES`].

use serde_json::{Value, json};

/// One served resource type (one `group/version/resource`).
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group, `""` for core.
    pub group: &'static str,
    pub version: &'static str,
    /// Plural resource name as in URLs (`services`).
    pub resource: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Has a `status` subresource: writes to the main resource ignore `.status`, and
    /// `.../status` writes change only `.status`.
    pub status: bool,
    /// `metadata.generation` is kept (1 on create, +1 on every change outside metadata and status).
    pub generation: bool,
    /// Updates must carry `metadata.resourceVersion` (custom resources), else 422.
    pub needs_rv_on_update: bool,
    /// Accepts `application/strategic-merge-patch+json` (built-in types only, as the real server).
    pub strategic: bool,
}

impl ResourceDef {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services` or `serviceexports.multicluster.x-k8s.io` (for messages).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

const fn def(
    (group, version): (&'static str, &'static str),
    resource: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    flags: (bool, bool, bool, bool),
) -> ResourceDef {
    ResourceDef {
        group,
        version,
        resource,
        singular,
        kind,
        namespaced,
        short_names,
        status: flags.0,
        generation: flags.1,
        needs_rv_on_update: flags.2,
        strategic: flags.3,
    }
}

/// Every served type. Flags: (status subresource, generation, rv required on update,
/// strategic merge patch).
#[rustfmt::skip]
pub static RESOURCES: &[ResourceDef] = &[
    def(("", "v1"), "namespaces", "namespace", "Namespace", false, &["ns"], (true, false, false, true)),
    def(("", "v1"), "services", "service", "Service", true, &["svc"], (true, false, false, true)),
    def(("", "v1"), "secrets", "secret", "Secret", true, &[], (false, false, false, true)),
    def(("", "v1"), "configmaps", "configmap", "ConfigMap", true, &["cm"], (false, false, false, true)),
    def(("", "v1"), "events", "event", "Event", true, &["ev"], (false, false, false, true)),
    def(("discovery.k8s.io", "v1"), "endpointslices", "endpointslice", "EndpointSlice", true, &[], (false, true, false, true)),
    def(("multicluster.x-k8s.io", "v1alpha1"), "serviceexports", "serviceexport", "ServiceExport", true, &["svcex"], (true, true, true, false)),
    def(("multicluster.x-k8s.io", "v1alpha1"), "serviceimports", "serviceimport", "ServiceImport", true, &["svcim"], (true, true, true, false)),
    def(("coordination.k8s.io", "v1"), "leases", "lease", "Lease", true, &[], (false, false, false, true)),
    def(("apiextensions.k8s.io", "v1"), "customresourcedefinitions", "customresourcedefinition", "CustomResourceDefinition", false, &["crd", "crds"], (true, true, false, false)),
];

/// The type served at `group/version/resource`.
pub fn find(group: &str, version: &str, resource: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.resource == resource)
}

/// The type of kind `kind` in `apiVersion` (`v1`, `group/version`).
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static ResourceDef> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-isthmus-standin",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `/api` (APIVersions).
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    groups
}

/// One `APIGroup` (without kind when part of a list).
fn group_doc(group: &str) -> Option<Value> {
    let version = RESOURCES.iter().find(|r| r.group == group)?.version;
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    Some(json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv}))
}

/// `/apis` (APIGroupList).
pub fn group_list() -> Value {
    let groups: Vec<Value> = groups().into_iter().filter_map(group_doc).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>` (APIGroup).
pub fn group(group: &str) -> Option<Value> {
    let mut doc = group_doc(group)?;
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `/api/v1` or `/apis/<group>/<version>` (APIResourceList).
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in defs {
        let mut entry = json!({
            "name": r.resource,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        resources.push(entry);
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.resource),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// Every served `group/version` (`""` group for core), in discovery order.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}
