//! JSON merge patch (RFC 7386, `application/merge-patch+json`) and JSON patch (RFC 6902,
//! `application/json-patch+json`). Strategic merge patch lives in [`super::strategic`].
//!
//! Must not: panic on any input; every refusal is a message for a 422/400 Status.

use serde_json::{Map, Value};

/// RFC 7386: objects merge key by key, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(target) = target.as_object_mut() {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(k);
            } else {
                merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Unescapes one JSON pointer token (`~1` is `/`, `~0` is `~`).
fn token(t: &str) -> String {
    t.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}: must start with '/'"))?;
    Ok(rest.split('/').map(token).collect())
}

fn index(list: &[Value], t: &str, for_insert: bool) -> Result<usize, String> {
    if for_insert && t == "-" {
        return Ok(list.len());
    }
    let i: usize = t
        .parse()
        .map_err(|_| format!("invalid array index {t:?}"))?;
    let limit = if for_insert {
        list.len()
    } else {
        list.len().saturating_sub(1)
    };
    if i > limit || (!for_insert && list.is_empty()) {
        return Err(format!("array index {i} out of bounds"));
    }
    Ok(i)
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Result<&'a Value, String> {
    let mut at = doc;
    for t in path {
        at = match at {
            Value::Object(m) => m.get(t).ok_or_else(|| format!("missing key {t:?}"))?,
            Value::Array(l) => &l[index(l, t, false)?],
            _ => return Err(format!("cannot descend into a scalar at {t:?}")),
        };
    }
    Ok(at)
}

fn parent_mut<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, String> {
    let mut at = doc;
    for t in path {
        at = match at {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("missing key {t:?}"))?,
            Value::Array(l) => {
                let i = index(l, t, false)?;
                &mut l[i]
            }
            _ => return Err(format!("cannot descend into a scalar at {t:?}")),
        };
    }
    Ok(at)
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((last, parent)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parent)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(l) => {
            let i = index(l, last, true)?;
            l.insert(i, value);
        }
        _ => return Err(format!("cannot add {last:?} to a scalar")),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let (last, parent) = path
        .split_last()
        .ok_or_else(|| "cannot remove the whole document".to_string())?;
    match parent_mut(doc, parent)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("missing key {last:?}")),
        Value::Array(l) => {
            let i = index(l, last, false)?;
            Ok(l.remove(i))
        }
        _ => Err(format!("cannot remove {last:?} from a scalar")),
    }
}

/// RFC 6902: applies every operation in order; any failure leaves `doc` untouched.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch
        .as_array()
        .ok_or_else(|| "a JSON patch must be an array of operations".to_string())?;
    let mut work = doc.clone();
    for (n, op) in ops.iter().enumerate() {
        apply_op(&mut work, op).map_err(|e| format!("operation {n}: {e}"))?;
    }
    *doc = work;
    Ok(())
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let kind = op["op"]
        .as_str()
        .ok_or_else(|| "missing \"op\"".to_string())?;
    let path = split_pointer(
        op["path"]
            .as_str()
            .ok_or_else(|| "missing \"path\"".to_string())?,
    )?;
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| "missing \"value\"".to_string())
    };
    let from = || {
        op["from"]
            .as_str()
            .ok_or_else(|| "missing \"from\"".to_string())
            .and_then(split_pointer)
    };
    match kind {
        "add" => add(doc, &path, value()?),
        "remove" => remove(doc, &path).map(|_| ()),
        "replace" if path.is_empty() => {
            *doc = value()?;
            Ok(())
        }
        "replace" => {
            remove(doc, &path)?;
            add(doc, &path, value()?)
        }
        "move" => {
            let from = from()?;
            if path.starts_with(&from) && path.len() > from.len() {
                return Err("cannot move a value into itself".to_string());
            }
            let moved = remove(doc, &from)?;
            add(doc, &path, moved)
        }
        "copy" => {
            let copied = get(doc, &from()?)?.clone();
            add(doc, &path, copied)
        }
        "test" => {
            if *get(doc, &path)? == value()? {
                Ok(())
            } else {
                Err(format!("test failed at {:?}", op["path"]))
            }
        }
        other => Err(format!("unknown op {other:?}")),
    }
}
