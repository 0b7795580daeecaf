//! What the apiserver does to an object before storing it: body checks (kind, apiVersion,
//! namespace, name), metadata on create (name from generateName, uid, creationTimestamp,
//! generation) and on update (immutable fields kept, generation bumped on spec changes,
//! `.status` split off for types with the status subresource), and per-kind defaults
//! ([`super::service`] for Services, namespaces' finalizer and phase).
//!
//! Must not: store anything or assign resourceVersions ([`super::store`] does).

use serde_json::{Map, Value, json};

use super::resources::ResourceDef;
use super::service::{self, Allocations};
use super::status::{ApiError, Cause, invalid_value, required};

/// Which part of an object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: everything but `.status` (when the type has the subresource).
    Main,
    /// The `status` subresource: only `.status`.
    Status,
}

/// `2026-12-07T14:52:52Z`.
pub fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    // The system RNG does not fail on Linux; a zeroed buffer would still be a valid (if
    // less unique) uid, so the error is not worth failing a request for.
    let _ = ring::rand::SystemRandom::new().fill(&mut out);
    out
}

/// A random (version 4) UUID.
pub fn uid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The 5-character suffix of `generateName` (the real server's alphabet: no vowels).
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>()
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

fn dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The name rule of the type: Services and Namespaces are DNS labels, the rest DNS subdomains.
fn name_problem(def: &ResourceDef, name: &str) -> Option<String> {
    let label_only = matches!(def.resource, "services" | "namespaces");
    if label_only {
        let first_alpha =
            def.resource != "services" || name.starts_with(|c: char| c.is_ascii_lowercase());
        if dns_label(name, 63) && first_alpha {
            return None;
        }
        return Some(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character"
                .to_string(),
        );
    }
    if name.len() <= 253 && name.split('.').all(|part| dns_label(part, 63)) {
        return None;
    }
    Some(
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
         or '.', and must start and end with an alphanumeric character"
            .to_string(),
    )
}

/// Checks what the path fixes: the body is an object of this kind and apiVersion, in this
/// namespace, with this name (update). Mirrors the real server's 400s.
pub fn check_body(
    def: &ResourceDef,
    namespace: Option<&str>,
    name: Option<&str>,
    obj: &Value,
) -> Result<(), ApiError> {
    let Some(fields) = obj.as_object() else {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON or YAML object",
        ));
    };
    let api_version = fields
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = fields.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Object 'Kind' is missing in '{}'",
            truncate(&obj.to_string())
        )));
    }
    if api_version != def.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API \
             version ({})",
            def.api_version()
        )));
    }
    if kind != def.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            def.kind
        )));
    }
    if !obj["metadata"].is_null() && !obj["metadata"].is_object() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    if let (Some(ns), Some(given)) = (namespace, obj["metadata"]["namespace"].as_str())
        && !given.is_empty()
        && given != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the \
             request",
        ));
    }
    if let (Some(name), Some(given)) = (name, obj["metadata"]["name"].as_str())
        && given != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Field-level checks shared by create and update; every problem becomes one cause of a 422.
fn validate(def: &ResourceDef, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let meta = &obj["metadata"];
    if let Some(name) = meta["name"].as_str()
        && let Some(why) = name_problem(def, name)
    {
        causes.push(invalid_value("metadata.name", &json!(name), &why));
    }
    for (field, map) in [
        ("metadata.labels", &meta["labels"]),
        ("metadata.annotations", &meta["annotations"]),
    ] {
        if map.is_null() {
            continue;
        }
        let Some(map) = map.as_object() else {
            causes.push(invalid_value(field, map, "must be a map of strings"));
            continue;
        };
        for (k, v) in map {
            if !v.is_string() {
                causes.push(invalid_value(
                    &format!("{field}.{k}"),
                    v,
                    "must be a string",
                ));
            } else if field == "metadata.labels"
                && super::selector::Selector::parse(
                    Some(&format!("{k}={}", v.as_str().unwrap_or(""))),
                    None,
                )
                .is_err()
            {
                causes.push(invalid_value(field, v, &format!("invalid label {k:?}")));
            }
        }
    }
    match def.resource {
        "services" => causes.extend(service::validate(obj)),
        "endpointslices" => {
            let family = obj["addressType"].as_str();
            if family.is_none() {
                causes.push(required("addressType"));
            } else if !matches!(family, Some("IPv4" | "IPv6" | "FQDN")) {
                causes.push(invalid_value(
                    "addressType",
                    &obj["addressType"],
                    "supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
                ));
            }
        }
        _ => {}
    }
    causes
}

fn name_of(obj: &Value) -> String {
    obj["metadata"]["name"].as_str().unwrap_or("").to_string()
}

/// Prepares a new object: name (from generateName), namespace, uid, creationTimestamp,
/// generation, defaults and allocations. `resourceVersion` is set by the store.
pub fn prepare_create(
    def: &ResourceDef,
    namespace: Option<&str>,
    mut obj: Value,
    alloc: &mut Allocations,
) -> Result<Value, ApiError> {
    check_body(def, namespace, None, &obj)?;
    if obj["metadata"].is_null() {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    let name = meta["name"].as_str().unwrap_or("").to_string();
    if name.is_empty() {
        match meta["generateName"].as_str() {
            Some(prefix) if !prefix.is_empty() => {
                meta["name"] = json!(format!("{prefix}{}", name_suffix()));
            }
            _ => {
                return Err(ApiError::invalid(
                    def,
                    "",
                    vec![(
                        "FieldValueRequired",
                        "metadata.name".to_string(),
                        "Required value: name or generateName is required".to_string(),
                    )],
                ));
            }
        }
    }
    match (def.namespaced, namespace) {
        (true, Some(ns)) => meta["namespace"] = json!(ns),
        _ => {
            if let Some(m) = meta.as_object_mut() {
                m.remove("namespace");
            }
        }
    }
    meta["uid"] = json!(uid());
    meta["creationTimestamp"] = json!(now());
    if let Some(m) = meta.as_object_mut() {
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(field);
        }
        if def.generation {
            m.insert("generation".to_string(), json!(1));
        } else {
            m.remove("generation");
        }
    }
    if def.status
        && let Some(m) = obj.as_object_mut()
    {
        m.remove("status");
    }
    let name = name_of(&obj);
    match def.resource {
        "namespaces" => {
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        "services" => {
            service::defaults(&mut obj);
            obj["status"] = json!({"loadBalancer": {}});
        }
        _ => {}
    }
    let causes = validate(def, &obj);
    if !causes.is_empty() {
        return Err(ApiError::invalid(def, &name, causes));
    }
    if def.resource == "services" {
        service::allocate(&mut obj, None, alloc)
            .map_err(|c| ApiError::invalid(def, &name, vec![c]))?;
    }
    Ok(obj)
}

/// `obj` without metadata (and without status when `skip_status`): what `generation` tracks.
fn spec_part(obj: &Value, skip_status: bool) -> Map<String, Value> {
    let mut rest = obj.as_object().cloned().unwrap_or_default();
    rest.remove("metadata");
    if skip_status {
        rest.remove("status");
    }
    rest
}

/// Prepares an update of `old` to `new` (body already checked against the path). Returns the
/// object to store; the store compares it with `old` to skip no-op writes.
pub fn prepare_update(
    def: &ResourceDef,
    old: &Value,
    new: Value,
    part: Part,
    alloc: &mut Allocations,
) -> Result<Value, ApiError> {
    let name = name_of(old);
    let given_rv = new["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if given_rv.is_empty() && def.needs_rv_on_update {
        return Err(ApiError::invalid(
            def,
            &name,
            vec![invalid_value(
                "metadata.resourceVersion",
                &json!("0x0"),
                "must be specified for an update",
            )],
        ));
    }
    if !given_rv.is_empty() && Some(given_rv) != old["metadata"]["resourceVersion"].as_str() {
        return Err(ApiError::conflict(def, &name));
    }
    if let Some(uid) = new["metadata"]["uid"].as_str()
        && !uid.is_empty()
        && Some(uid) != old["metadata"]["uid"].as_str()
    {
        return Err(ApiError::conflict(def, &name));
    }
    let mut out = match part {
        Part::Status => {
            let mut out = old.clone();
            match new.get("status") {
                Some(status) if !status.is_null() => out["status"] = status.clone(),
                _ => {
                    if let Some(m) = out.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            out
        }
        Part::Main => {
            let mut out = new;
            if !out["metadata"].is_object() {
                out["metadata"] = json!({});
            }
            for field in [
                "uid",
                "creationTimestamp",
                "namespace",
                "name",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old["metadata"].get(field) {
                    Some(v) => out["metadata"][field] = v.clone(),
                    None => {
                        if let Some(m) = out["metadata"].as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
            if def.status {
                match old.get("status") {
                    Some(s) => out["status"] = s.clone(),
                    None => {
                        if let Some(m) = out.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            if def.resource == "services" {
                service::defaults(&mut out);
            }
            if def.resource == "namespaces" && out["spec"].is_null() {
                out["spec"] = old["spec"].clone();
            }
            out
        }
    };
    if def.generation && spec_part(&out, def.status) != spec_part(old, def.status) {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        out["metadata"]["generation"] = json!(generation);
    }
    let causes = validate(def, &out);
    if !causes.is_empty() {
        return Err(ApiError::invalid(def, &name, causes));
    }
    if def.resource == "services" && part == Part::Main {
        service::allocate(&mut out, Some(old), alloc)
            .map_err(|c| ApiError::invalid(def, &name, vec![c]))?;
    }
    Ok(out)
}
