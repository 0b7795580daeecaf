//! Reading a request: the resource path (`/api/v1/namespaces/<ns>/<resource>/<name>/<sub>`,
//! `/apis/<group>/<version>/...`), the query string, and which RBAC verb it is.
//!
//! Must not: touch the store.

use std::collections::HashMap;

use super::resources::{self, ResourceDef};

/// What a resource path names.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub def: &'static ResourceDef,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `status` (the only subresource served).
    pub sub: Option<String>,
}

impl Target {
    /// `services` or `services/status`: the RBAC resource.
    pub fn rbac_resource(&self) -> String {
        match &self.sub {
            Some(sub) => format!("{}/{sub}", self.def.resource),
            None => self.def.resource.to_string(),
        }
    }
}

/// A resource path that does not name a served type.
#[derive(Debug, PartialEq)]
pub enum PathError {
    /// Not a resource path at all (discovery and the like are handled before).
    NotResource,
    /// A served group/version without this resource, or a bad shape.
    NotFound,
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string as a map (last value wins, percent-decoded).
pub fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// `true`, `1` (as the server's boolean query parameters).
pub fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v == "true" || v == "1")
}

/// Parses a resource path.
pub fn target(path: &str) -> Result<Target, PathError> {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(PathError::NotResource),
    };
    if rest.is_empty() {
        return Err(PathError::NotResource);
    }
    let lookup =
        |resource: &str| resources::find(group, version, resource).ok_or(PathError::NotFound);
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..]
            if !tail.is_empty() && !matches!(tail, ["status"] | ["finalize"]) =>
        {
            (Some(ns.to_string()), tail)
        }
        _ => (None, rest),
    };
    let (def, name, sub) = match rest {
        [resource] => (lookup(resource)?, None, None),
        [resource, name] => (lookup(resource)?, Some(name.to_string()), None),
        [resource, name, sub] => (
            lookup(resource)?,
            Some(name.to_string()),
            Some(sub.to_string()),
        ),
        _ => return Err(PathError::NotFound),
    };
    if let Some(sub) = &sub
        && (sub != "status" || !def.status)
    {
        return Err(PathError::NotFound);
    }
    if namespace.is_some() && !def.namespaced {
        return Err(PathError::NotFound);
    }
    Ok(Target {
        def,
        namespace,
        name,
        sub,
    })
}

/// The RBAC verb of a request on `target`.
pub fn verb(method: &http::Method, target: &Target, q: &HashMap<String, String>) -> &'static str {
    match (method.as_str(), target.name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if flag(q, "watch") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}
