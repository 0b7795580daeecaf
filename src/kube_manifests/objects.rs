//! What kustomize does to each object of the base for an overlay: namespace, labels, ConfigMap
//! names, images, output order. Only what the Isthmus base and overlays use; plain
//! `serde_json::Value` edits.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Kinds that are not namespaced among those the base holds.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
];

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or("")
}

fn metadata(object: &mut Value) -> Option<&mut Map<String, Value>> {
    object.get_mut("metadata")?.as_object_mut()
}

/// The namespace transformer: namespaced objects get `namespace`, the Namespace object becomes
/// it, and ServiceAccount subjects of bindings follow.
pub fn set_namespace(object: &mut Value, namespace: &str) {
    let k = kind(object).to_string();
    if let Some(meta) = metadata(object) {
        if k == "Namespace" {
            meta.insert("name".into(), namespace.into());
        } else if !CLUSTER_SCOPED.contains(&k.as_str()) {
            meta.insert("namespace".into(), namespace.into());
        }
    }
    if k.ends_with("RoleBinding")
        && let Some(subjects) = object.get_mut("subjects").and_then(Value::as_array_mut)
    {
        for s in subjects {
            if s["kind"] == "ServiceAccount" {
                s["namespace"] = namespace.into();
            }
        }
    }
}

/// The `labels:` transformer without selectors or templates: `metadata.labels` only.
pub fn add_label(object: &mut Value, key: &str, value: &str) {
    if let Some(meta) = metadata(object) {
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(key.into(), value.into());
        }
    }
}

fn pod_spec(object: &mut Value) -> Option<&mut Value> {
    object.get_mut("spec")?.get_mut("template")?.get_mut("spec")
}

/// Generated ConfigMaps carry a hash suffix: volumes that mount them follow.
pub fn rename_config_maps(object: &mut Value, renamed: &BTreeMap<String, String>) {
    let Some(volumes) = pod_spec(object)
        .and_then(|s| s.get_mut("volumes"))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for volume in volumes {
        if let Some(name) = volume.pointer_mut("/configMap/name")
            && let Some(new) = name.as_str().and_then(|n| renamed.get(n))
        {
            *name = new.clone().into();
        }
    }
}

/// The `images:` transformer: every container running `from` runs `to`.
pub fn set_image(object: &mut Value, from: &str, to: &str) {
    let Some(spec) = pod_spec(object) else {
        return;
    };
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if c["image"] == from {
                c["image"] = to.into();
            }
        }
    }
}

/// Kustomize's legacy output order: these kinds first, in this order; then the rest by
/// apiVersion and kind; webhooks last. Within a kind, by namespace and name.
const ORDER_FIRST: &[&str] = &[
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
];
const ORDER_LAST: &[&str] = &[
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

pub fn sort(all: &mut [Value]) {
    let rank = |o: &Value| {
        let k = kind(o);
        if let Some(i) = ORDER_FIRST.iter().position(|x| *x == k) {
            (0, i, String::new())
        } else if let Some(i) = ORDER_LAST.iter().position(|x| *x == k) {
            (2, i, String::new())
        } else {
            let api = o["apiVersion"].as_str().unwrap_or("");
            (1, 0, format!("{api}/{k}"))
        }
    };
    all.sort_by(|a, b| {
        let key = |o: &Value| {
            let meta = &o["metadata"];
            (
                rank(o),
                meta["namespace"].as_str().unwrap_or("").to_string(),
                meta["name"].as_str().unwrap_or("").to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
}
