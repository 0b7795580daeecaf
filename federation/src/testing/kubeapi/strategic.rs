//! Strategic merge patch (`application/strategic-merge-patch+json`) for the built-in types,
//! enough for `kubectl apply` and `kubectl patch`: lists merge by their Kubernetes merge key
//! (Service `spec.ports` by `port`, containers/volumes/env by `name`, container ports by
//! `containerPort`, volumeMounts by `mountPath`, ownerReferences by `uid`), `finalizers` merge
//! as a set, every other list is replaced; directives `$patch: replace|delete|merge`,
//! `$retainKeys`, `$setElementOrder/<key>` and `$deleteFromPrimitiveList/<key>`.
//!
//! Must not: panic on any input. Known gap: elements the patch does not list keep their place
//! after the listed ones (the real server interleaves them by their original positions).

use serde_json::{Map, Value};

/// How the list at a path merges.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ListKind {
    Replace,
    MergeKey(&'static str),
    PrimitiveSet,
}

/// The merge strategy of the list at `path` (object keys from the root; list positions are
/// not part of the path).
fn list_kind(path: &[String]) -> ListKind {
    let last = path.last().map(String::as_str).unwrap_or("");
    let prev = path
        .len()
        .checked_sub(2)
        .and_then(|i| path.get(i))
        .map(String::as_str)
        .unwrap_or("");
    match (prev, last) {
        ("metadata", "ownerReferences") => ListKind::MergeKey("uid"),
        ("metadata", "finalizers") => ListKind::PrimitiveSet,
        ("containers" | "initContainers" | "ephemeralContainers", "ports") => {
            ListKind::MergeKey("containerPort")
        }
        ("spec", "ports") if path.len() == 2 => ListKind::MergeKey("port"),
        (
            _,
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "env"
            | "imagePullSecrets",
        ) => ListKind::MergeKey("name"),
        (_, "volumeMounts") => ListKind::MergeKey("mountPath"),
        (_, "volumeDevices") => ListKind::MergeKey("devicePath"),
        _ => ListKind::Replace,
    }
}

/// Applies `patch` to `original`; the error text is for a 422 Status.
pub fn strategic_merge(original: &Value, patch: &Value) -> Result<Value, String> {
    let patch = patch
        .as_object()
        .ok_or_else(|| "a strategic merge patch must be a JSON object".to_string())?;
    let empty = Map::new();
    let original = original.as_object().unwrap_or(&empty);
    let merged = merge_map(original, patch, &mut Vec::new())?;
    Ok(Value::Object(merged.unwrap_or_default()))
}

fn strings(v: &Value, what: &str) -> Result<Vec<Value>, String> {
    v.as_array()
        .cloned()
        .ok_or_else(|| format!("{what} must be a list"))
}

/// Merges one map; `None` means the patch deleted the map (`$patch: delete`).
fn merge_map(
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<Option<Map<String, Value>>, String> {
    match patch.get("$patch").map(|v| v.as_str()) {
        None | Some(Some("merge")) => {}
        Some(Some("replace")) => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            return merge_map(&Map::new(), &replaced, path);
        }
        Some(Some("delete")) => return Ok(None),
        Some(other) => return Err(format!("unknown patch directive $patch: {other:?}")),
    }
    let mut out = original.clone();
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    let mut deletions: Vec<(String, Vec<Value>)> = Vec::new();
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if let Some(list) = key.strip_prefix("$setElementOrder/") {
            orders.push((list.to_string(), strings(value, key)?));
            continue;
        }
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            deletions.push((list.to_string(), strings(value, key)?));
            continue;
        }
        if key.starts_with('$') {
            return Err(format!("unknown patch directive {key:?}"));
        }
        path.push(key.clone());
        let merged = merge_value(original.get(key), value, path);
        path.pop();
        match merged? {
            Some(v) => {
                out.insert(key.clone(), v);
            }
            None => {
                out.remove(key);
            }
        }
    }
    for (key, remove) in deletions {
        if let Some(Value::Array(list)) = out.get_mut(&key) {
            list.retain(|v| !remove.contains(v));
        }
    }
    for (key, order) in orders {
        path.push(key.clone());
        let kind = list_kind(path);
        path.pop();
        if let Some(Value::Array(list)) = out.get_mut(&key) {
            reorder(list, &order, kind);
        }
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let retain = strings(retain, "$retainKeys")?;
        out.retain(|k, _| retain.iter().any(|r| r.as_str() == Some(k)));
    }
    Ok(Some(out))
}

/// Merges one value at `path`; `None` deletes the key.
fn merge_value(
    original: Option<&Value>,
    patch: &Value,
    path: &mut Vec<String>,
) -> Result<Option<Value>, String> {
    match patch {
        Value::Null => Ok(None),
        Value::Object(p) => {
            let empty = Map::new();
            let o = original.and_then(Value::as_object).unwrap_or(&empty);
            Ok(merge_map(o, p, path)?.map(Value::Object))
        }
        Value::Array(p) => {
            let empty = Vec::new();
            let o = original.and_then(Value::as_array).unwrap_or(&empty);
            merge_list(o, p, path).map(|l| Some(Value::Array(l)))
        }
        scalar => Ok(Some(scalar.clone())),
    }
}

fn merge_list(
    original: &[Value],
    patch: &[Value],
    path: &mut Vec<String>,
) -> Result<Vec<Value>, String> {
    let kind = list_kind(path);
    match kind {
        ListKind::Replace => patch
            .iter()
            .map(|item| merge_value(None, item, path).map(|v| v.unwrap_or(Value::Null)))
            .collect(),
        ListKind::PrimitiveSet => {
            let mut out = original.to_vec();
            for item in patch {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(out)
        }
        ListKind::MergeKey(key) => {
            let replace = patch
                .iter()
                .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"));
            let mut out: Vec<Value> = if replace {
                Vec::new()
            } else {
                original.to_vec()
            };
            for item in patch {
                let Some(fields) = item.as_object() else {
                    return Err(format!("{}: list items must be objects", path.join(".")));
                };
                let directive = fields.get("$patch").and_then(Value::as_str);
                if directive == Some("replace") {
                    continue;
                }
                let id = fields.get(key).ok_or_else(|| {
                    format!(
                        "{}: an item does not contain declared merge key: {key}",
                        path.join(".")
                    )
                })?;
                let at = out.iter().position(|o| o.get(key) == Some(id));
                if directive == Some("delete") {
                    out.retain(|o| o.get(key) != Some(id));
                    continue;
                }
                let empty = Map::new();
                let base = at
                    .and_then(|i| out.get(i))
                    .and_then(Value::as_object)
                    .unwrap_or(&empty);
                let merged = merge_map(base, fields, path)?.map(Value::Object);
                match (at, merged) {
                    (Some(i), Some(v)) => out[i] = v,
                    (Some(i), None) => {
                        out.remove(i);
                    }
                    (None, Some(v)) => out.push(v),
                    (None, None) => {}
                }
            }
            Ok(out)
        }
    }
}

/// Puts the elements named in `order` first, in that order; the rest keep their relative order.
fn reorder(list: &mut [Value], order: &[Value], kind: ListKind) {
    let rank = |v: &Value| -> usize {
        let found = match kind {
            ListKind::MergeKey(key) => order
                .iter()
                .position(|o| o.get(key).is_some() && o.get(key) == v.get(key)),
            _ => order.iter().position(|o| o == v),
        };
        found.unwrap_or(usize::MAX)
    };
    list.sort_by_key(rank);
}
