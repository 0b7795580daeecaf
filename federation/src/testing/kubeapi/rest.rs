//! The resource verbs: get, list (selectors, `limit`/`continue` on a consistent snapshot,
//! Tables for kubectl), create, update, patch (merge, JSON, strategic), delete (propagation
//! policies, preconditions) and deletecollection. Watches are in [`super::watch`].
//!
//! Must not: hold the store lock beyond one verb, or block.

use std::collections::HashMap;

use base64::Engine;
use http::Response;
use serde_json::{Value, json};

use super::objects::Part;
use super::request::Target;
use super::selector::Selector;
use super::server::{Body, json as respond};
use super::status::ApiError;
use super::store::Propagation;
use super::{Shared, lock, patch, strategic, table};

/// One resource request, read and authorized.
pub struct Call<'a> {
    pub target: &'a Target,
    pub verb: &'static str,
    pub q: &'a HashMap<String, String>,
    pub accept: &'a str,
    pub content_type: &'a str,
    pub body: &'a [u8],
}

fn media(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// A JSON or YAML request body.
fn parse_body(call: &Call<'_>) -> Result<Value, ApiError> {
    let media = media(call.content_type);
    match media {
        "" | "application/json" | "*/*" => serde_json::from_slice(call.body)
            .map_err(|e| ApiError::bad_request(format!("couldn't decode the JSON body: {e}"))),
        "application/yaml" => {
            let text = std::str::from_utf8(call.body)
                .map_err(|_| ApiError::bad_request("the YAML body is not UTF-8"))?;
            serde_saphyr::from_str::<Value>(text)
                .map_err(|e| ApiError::bad_request(format!("couldn't decode the YAML body: {e}")))
        }
        other => Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({other}) - accepted media types \
             include: application/json, application/yaml"
        ))),
    }
}

fn parse_selector(q: &HashMap<String, String>) -> Result<Selector, ApiError> {
    Selector::parse(
        q.get("labelSelector").map(String::as_str),
        q.get("fieldSelector").map(String::as_str),
    )
    .map_err(ApiError::bad_request)
}

fn refuse_dry_run(q: &HashMap<String, String>) -> Result<(), ApiError> {
    if q.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by this test API server",
        ));
    }
    Ok(())
}

/// Serves one non-watch resource request.
pub fn handle(shared: &Shared, call: Call<'_>) -> Result<Response<Body>, ApiError> {
    let t = call.target;
    let ns = t.namespace.as_deref();
    let name = t.name.as_deref().unwrap_or("");
    let part = if t.sub.is_some() {
        Part::Status
    } else {
        Part::Main
    };
    match call.verb {
        "get" => {
            let store = lock(&shared.store);
            let obj = store
                .get(t.def, ns, name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(t.def, name))?;
            if table::wants_table(call.accept) {
                let rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
                let include = call.q.get("includeObject").map_or("", String::as_str);
                return Ok(respond(
                    200,
                    &table::table(t.def, std::slice::from_ref(&obj), rv, None, include),
                ));
            }
            Ok(respond(200, &obj))
        }
        "list" => list(shared, &call),
        "create" => {
            refuse_dry_run(call.q)?;
            let obj = parse_body(&call)?;
            let created = lock(&shared.store).create(t.def, ns, obj)?;
            Ok(respond(201, &created))
        }
        "update" => {
            refuse_dry_run(call.q)?;
            let obj = parse_body(&call)?;
            let updated = lock(&shared.store).update(t.def, ns, name, obj, part)?;
            Ok(respond(200, &updated))
        }
        "patch" => {
            refuse_dry_run(call.q)?;
            let mut store = lock(&shared.store);
            let current = store
                .get(t.def, ns, name)
                .cloned()
                .ok_or_else(|| ApiError::not_found(t.def, name))?;
            let patched = apply_patch(&call, &current)?;
            let updated = store.update(t.def, ns, name, patched, part)?;
            Ok(respond(200, &updated))
        }
        "delete" => {
            refuse_dry_run(call.q)?;
            let opts = delete_options(&call)?;
            let (obj, gone) = lock(&shared.store).delete(t.def, ns, name, opts.0, &opts.1)?;
            if !gone {
                return Ok(respond(202, &obj));
            }
            Ok(respond(
                200,
                &json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": name,
                        "group": t.def.group,
                        "kind": t.def.resource,
                        "uid": obj["metadata"]["uid"],
                    },
                }),
            ))
        }
        "deletecollection" => {
            refuse_dry_run(call.q)?;
            let selector = parse_selector(call.q)?;
            let opts = delete_options(&call)?;
            let mut store = lock(&shared.store);
            let victims: Vec<Value> = store
                .list(t.def, ns)
                .into_iter()
                .filter(|o| selector.matches(o))
                .collect();
            let mut deleted = Vec::new();
            for victim in victims {
                let vns = victim["metadata"]["namespace"].as_str();
                let vname = victim["metadata"]["name"].as_str().unwrap_or("");
                if let Ok((obj, _)) = store.delete(t.def, vns, vname, opts.0, &Value::Null) {
                    deleted.push(obj);
                }
            }
            let rv = store.rv().to_string();
            Ok(respond(200, &list_doc(t, deleted, &rv, None, None)))
        }
        other => Err(ApiError::method_not_allowed(format!(
            "unsupported verb {other}"
        ))),
    }
}

/// DeleteOptions from the body (if any) and the query.
fn delete_options(call: &Call<'_>) -> Result<(Propagation, Value), ApiError> {
    let body: Value = if call.body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(call.body)
            .map_err(|e| ApiError::bad_request(format!("couldn't decode DeleteOptions: {e}")))?
    };
    let policy = body["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| call.q.get("propagationPolicy").cloned());
    let orphan = body["orphanDependents"]
        .as_bool()
        .or_else(|| call.q.get("orphanDependents").map(|v| v == "true"));
    let propagation = match (policy.as_deref(), orphan) {
        (Some("Background"), _) | (None, None | Some(false)) => Propagation::Background,
        (Some("Foreground"), _) => Propagation::Foreground,
        (Some("Orphan"), _) | (None, Some(true)) => Propagation::Orphan,
        (Some(other), _) => {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \
                 \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
    };
    Ok((propagation, body["preconditions"].clone()))
}

/// The patched object, per Content-Type.
fn apply_patch(call: &Call<'_>, current: &Value) -> Result<Value, ApiError> {
    let def = call.target.def;
    let name = current["metadata"]["name"].as_str().unwrap_or("");
    let patch_doc = || -> Result<Value, ApiError> {
        serde_json::from_slice(call.body)
            .map_err(|e| ApiError::bad_request(format!("couldn't decode the patch: {e}")))
    };
    let invalid =
        |e: String| ApiError::invalid(def, name, vec![("FieldValueInvalid", String::new(), e)]);
    let mut out = current.clone();
    match media(call.content_type) {
        "application/merge-patch+json" => patch::merge_patch(&mut out, &patch_doc()?),
        "application/json-patch+json" => {
            patch::json_patch(&mut out, &patch_doc()?).map_err(invalid)?;
        }
        "application/strategic-merge-patch+json" if def.strategic => {
            out = strategic::strategic_merge(current, &patch_doc()?).map_err(invalid)?;
        }
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            return Err(ApiError::unsupported_media_type(
                "server-side apply (application/apply-patch+yaml) is not supported by this test \
                 API server: use a merge, JSON or strategic merge patch, or get + replace",
            ));
        }
        _ => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types \
                 include: application/json-patch+json, application/merge-patch+json{}",
                if def.strategic {
                    ", application/strategic-merge-patch+json"
                } else {
                    ""
                }
            )));
        }
    }
    if !out.is_object() {
        return Err(invalid(
            "the patched object is not a JSON object".to_string(),
        ));
    }
    Ok(out)
}

fn list_doc(
    t: &Target,
    items: Vec<Value>,
    rv: &str,
    cont: Option<String>,
    remaining: Option<usize>,
) -> Value {
    let mut meta = json!({"resourceVersion": rv});
    if let Some(cont) = cont {
        meta["continue"] = json!(cont);
    }
    if let Some(remaining) = remaining {
        meta["remainingItemCount"] = json!(remaining);
    }
    json!({
        "kind": format!("{}List", t.def.kind),
        "apiVersion": t.def.api_version(),
        "metadata": meta,
        "items": items,
    })
}

fn encode_continue(rv: u64, last: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{last}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = doc["rv"].as_u64().ok_or_else(bad)?;
    let start = doc["start"].as_str().ok_or_else(bad)?;
    Ok((rv, start.trim_end_matches('\u{0}').to_string()))
}

fn list_key(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn list(shared: &Shared, call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let t = call.target;
    let ns = t.namespace.as_deref();
    let selector = parse_selector(call.q)?;
    let limit = match call.q.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let store = lock(&shared.store);
    let (at, after, items) = match call.q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let (rv, after) = decode_continue(token)?;
            (rv, Some(after), store.list_at(t.def, ns, rv)?)
        }
        None => {
            let asked = call.q.get("resourceVersion").map_or("", String::as_str);
            let exact = call.q.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
            match asked.parse::<u64>() {
                Ok(rv) if rv > store.rv() => {
                    return Err(ApiError::timeout(format!(
                        "Too large resource version: {rv}, current: {}",
                        store.rv()
                    )));
                }
                Ok(rv) if exact && rv != 0 => (rv, None, store.list_at(t.def, ns, rv)?),
                Err(_) if !asked.is_empty() => {
                    return Err(ApiError::bad_request(format!(
                        "invalid resource version {asked:?}"
                    )));
                }
                _ => (store.rv(), None, store.list(t.def, ns)),
            }
        }
    };
    drop(store);
    let mut matching: Vec<Value> = items
        .into_iter()
        .filter(|o| {
            after
                .as_ref()
                .is_none_or(|a| list_key(o).as_str() > a.as_str())
        })
        .filter(|o| selector.matches(o))
        .collect();
    let mut cont = None;
    let mut remaining = None;
    if limit > 0 && matching.len() > limit {
        remaining = Some(matching.len() - limit);
        matching.truncate(limit);
        cont = matching
            .last()
            .map(|last| encode_continue(at, &list_key(last)));
    }
    let rv = at.to_string();
    if table::wants_table(call.accept) {
        let include = call.q.get("includeObject").map_or("", String::as_str);
        return Ok(respond(
            200,
            &table::table(t.def, &matching, &rv, cont.as_deref(), include),
        ));
    }
    Ok(respond(200, &list_doc(t, matching, &rv, cont, remaining)))
}
