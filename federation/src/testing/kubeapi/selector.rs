//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and field selectors
//! (`metadata.name`, `metadata.namespace` with `=`, `==`, `!=`), parsed once per request and
//! matched against stored objects.
//!
//! Must not: accept what the real server refuses silently: a malformed selector is an error.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector` plus `fieldSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<(String, bool, String)>,
}

impl Selector {
    /// Parses both query parameters; the error text is what the client reads.
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Selector, String> {
        let labels = match labels {
            Some(s) if !s.trim().is_empty() => parse_labels(s)?,
            _ => Vec::new(),
        };
        let fields = match fields {
            Some(s) if !s.trim().is_empty() => parse_fields(s)?,
            _ => Vec::new(),
        };
        Ok(Selector { labels, fields })
    }

    /// Whether `obj` passes both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        });
        labels_ok
            && self.fields.iter().all(|(field, equal, want)| {
                let have = match field.as_str() {
                    "metadata.name" => obj["metadata"]["name"].as_str().unwrap_or(""),
                    _ => obj["metadata"]["namespace"].as_str().unwrap_or(""),
                };
                (have == want) == *equal
            })
    }
}

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!(
                        "unable to parse requirement: unbalanced ')' in {s:?}"
                    ));
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!(
            "unable to parse requirement: unclosed '(' in {s:?}"
        ));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn valid_key(k: &str) -> bool {
    let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
    !name.is_empty()
        && name.len() <= 63
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && (v.is_empty()
            || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

fn key(k: &str) -> Result<String, String> {
    let k = k.trim();
    if valid_key(k) {
        Ok(k.to_string())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label key {k:?}"
        ))
    }
}

fn value(v: &str) -> Result<String, String> {
    let v = v.trim();
    if valid_value(v) {
        Ok(v.to_string())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label value {v:?}"
        ))
    }
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            format!("unable to parse requirement: expected '(values)', found {rest:?}")
        })?;
    inner.split(',').map(value).collect()
}

fn parse_labels(s: &str) -> Result<Vec<Requirement>, String> {
    let mut out = Vec::new();
    for part in split_top(s)? {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!(
                "unable to parse requirement: empty requirement in {s:?}"
            ));
        }
        let req = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(key(k)?, value(v)?)
        } else if let Some((k, v)) = part.split_once("==") {
            Requirement::Equals(key(k)?, value(v)?)
        } else if let Some((k, v)) = part.split_once('=') {
            Requirement::Equals(key(k)?, value(v)?)
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(key(k)?)
        } else if let Some((k, rest)) = part.split_once(" notin ") {
            Requirement::NotIn(key(k)?, parse_set(rest)?)
        } else if let Some((k, rest)) = part.split_once(" in ") {
            Requirement::In(key(k)?, parse_set(rest)?)
        } else {
            Requirement::Exists(key(part)?)
        };
        out.push(req);
    }
    Ok(out)
}

fn parse_fields(s: &str) -> Result<Vec<(String, bool, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (field, equal, want) = if let Some((f, v)) = part.split_once("!=") {
            (f, false, v)
        } else if let Some((f, v)) = part.split_once("==") {
            (f, true, v)
        } else if let Some((f, v)) = part.split_once('=') {
            (f, true, v)
        } else {
            return Err(format!(
                "invalid selector: '{part}'; can't understand '{part}'"
            ));
        };
        let field = field.trim();
        if field != "metadata.name" && field != "metadata.namespace" {
            return Err(format!("field label not supported: {field}"));
        }
        out.push((field.to_string(), equal, want.trim().to_string()));
    }
    Ok(out)
}
