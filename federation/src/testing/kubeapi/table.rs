//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for (Accept
//! `application/json;as=Table;v=v1;g=meta.k8s.io`), for lists, single objects and watch events.
//!
//! Must not: change objects. Columns are the real server's for Services and Namespaces, NAME
//! and AGE for the rest.

use serde_json::{Value, json};

use super::resources::ResourceDef;

/// Whether the client asked for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .any(|a| a.contains("as=Table") && a.contains("g=meta.k8s.io"))
}

fn column(name: &str, kind: &str, format: &str) -> Value {
    json!({"name": name, "type": kind, "format": format, "description": name, "priority": 0})
}

fn columns(def: &ResourceDef) -> Vec<Value> {
    let mut cols = vec![column("Name", "string", "name")];
    match def.resource {
        "services" => {
            for c in ["Type", "Cluster-IP", "External-IP", "Port(s)"] {
                cols.push(column(c, "string", ""));
            }
        }
        "namespaces" => cols.push(column("Status", "string", "")),
        _ => {}
    }
    cols.push(column("Age", "string", ""));
    cols
}

/// `5s`, `3m`, `4h`, `2d` since `creationTimestamp`.
fn age(obj: &Value) -> String {
    let created = obj["metadata"]["creationTimestamp"].as_str().and_then(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    });
    let Some(created) = created else {
        return "<unknown>".to_string();
    };
    let secs = (time::OffsetDateTime::now_utc() - created)
        .whole_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn cells(def: &ResourceDef, obj: &Value) -> Vec<Value> {
    let mut cells = vec![obj["metadata"]["name"].clone()];
    match def.resource {
        "services" => {
            let spec = &obj["spec"];
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let node = p["nodePort"]
                                .as_u64()
                                .map(|n| format!(":{n}"))
                                .unwrap_or_default();
                            format!(
                                "{}{node}/{}",
                                p["port"],
                                p["protocol"].as_str().unwrap_or("TCP")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            cells.push(spec["type"].clone());
            cells.push(json!(spec["clusterIP"].as_str().unwrap_or("<none>")));
            cells.push(json!("<none>"));
            cells.push(json!(if ports.is_empty() {
                "<none>".to_string()
            } else {
                ports.join(",")
            }));
        }
        "namespaces" => cells.push(obj["status"]["phase"].clone()),
        _ => {}
    }
    cells.push(json!(age(obj)));
    cells
}

/// One row; `include` is the `includeObject` parameter (`None`, `Object`, default
/// `PartialObjectMetadata`).
fn row(def: &ResourceDef, obj: &Value, include: &str) -> Value {
    let object = match include {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }),
    };
    json!({"cells": cells(def, obj), "object": object})
}

/// A Table of `objects` at `rv` (plus the continue token of a paged list).
pub fn table(
    def: &ResourceDef,
    objects: &[Value],
    rv: &str,
    cont: Option<&str>,
    include: &str,
) -> Value {
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(def),
        "rows": objects.iter().map(|o| row(def, o, include)).collect::<Vec<_>>(),
    })
}
