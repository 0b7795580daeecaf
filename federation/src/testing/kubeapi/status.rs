//! API errors as the real apiserver writes them: a `Status` object (kind `Status`, apiVersion
//! `v1`, status `Failure`, message, reason, details, code) with the matching HTTP status.
//!
//! Must not: know about storage or HTTP plumbing beyond the status code.

use serde_json::{Value, json};

use super::resources::ResourceDef;

/// One failed request: what the client reads in the `Status` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// One `Status.details.causes` entry: (reason, field, message).
pub type Cause = (&'static str, String, String);

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> ApiError {
        self.details = Some(details);
        self
    }

    /// The `Status` object sent as body (and as the object of a watch `ERROR` event).
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// `<resource> is forbidden: User "<user>" cannot <verb> resource "<resource>" in API group
    /// "<group>" in the namespace "<ns>"` (or `at the cluster scope`).
    pub fn forbidden(
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> ApiError {
        let scope = match namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        let subject = match name {
            Some(name) => format!("{resource} \"{name}\""),
            None => resource.to_string(),
        };
        let message = format!(
            "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API \
             group \"{group}\" {scope}"
        );
        let (base, _) = resource.split_once('/').unwrap_or((resource, ""));
        let mut details = json!({"group": group, "kind": base});
        if let Some(name) = name {
            details["name"] = json!(name);
        }
        ApiError::new(403, "Forbidden", message).with_details(details)
    }

    /// `services "x" not found`.
    pub fn not_found(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", def.qualified()),
        )
        .with_details(json!({"name": name, "group": def.group, "kind": def.resource}))
    }

    /// A missing namespace on a namespaced create.
    pub fn namespace_not_found(namespace: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
        )
        .with_details(json!({"name": namespace, "kind": "namespaces"}))
    }

    /// Any other path.
    pub fn path_not_found() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    pub fn already_exists(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", def.qualified()),
        )
        .with_details(json!({"name": name, "group": def.group, "kind": def.resource}))
    }

    /// A stale `metadata.resourceVersion` (optimistic concurrency).
    pub fn conflict(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                def.qualified()
            ),
        )
        .with_details(json!({"name": name, "group": def.group, "kind": def.resource}))
    }

    /// `<Kind> "<name>" is invalid: <field>: <message>, ...` with one cause per problem.
    pub fn invalid(def: &ResourceDef, name: &str, causes: Vec<Cause>) -> ApiError {
        let summary: Vec<String> = causes
            .iter()
            .map(|(_, field, message)| format!("{field}: {message}"))
            .collect();
        let message = if summary.len() == 1 {
            format!("{} \"{name}\" is invalid: {}", def.kind, summary.join(""))
        } else {
            format!(
                "{} \"{name}\" is invalid: [{}]",
                def.kind,
                summary.join(", ")
            )
        };
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(reason, field, message)| {
                json!({"reason": reason, "message": message, "field": field})
            })
            .collect();
        ApiError::new(422, "Invalid", message).with_details(json!({
            "name": name,
            "group": def.group,
            "kind": def.kind,
            "causes": causes,
        }))
    }

    /// A watch (or continue token) from a resourceVersion older than the kept history.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(415, "UnsupportedMediaType", message)
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }

    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(504, "Timeout", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }
}

/// A cause for a required field that is missing.
pub fn required(field: &str) -> Cause {
    (
        "FieldValueRequired",
        field.to_string(),
        "Required value".to_string(),
    )
}

/// A cause for a field whose value is refused.
pub fn invalid_value(field: &str, value: &Value, why: &str) -> Cause {
    (
        "FieldValueInvalid",
        field.to_string(),
        format!("Invalid value: {value}: {why}"),
    )
}
