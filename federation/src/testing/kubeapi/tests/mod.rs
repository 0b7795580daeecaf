//! Unit tests of the stand-in's semantics, below HTTP: the store, patches, selectors and the
//! verb handlers (fed garbage too). The wire protocol end to end is in e2e/kube_standin/.

mod handlers;
mod history;
mod parsing;
mod writes;

use serde_json::{Value, json};

use super::resources::{ResourceDef, find};

pub(super) fn svc(name: &str, ports: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
           "spec": {"ports": ports}})
}

pub(super) fn services() -> &'static ResourceDef {
    find("", "v1", "services").unwrap()
}

pub(super) fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}
