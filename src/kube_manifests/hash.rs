//! The name suffix kustomize gives a generated ConfigMap (`isthmus-federation-7kd9c7dhbc`), so
//! `isthmus kubernetes manifests` names its ConfigMaps exactly as `kubectl kustomize` does and a
//! config change rolls the pods that mount it either way.
//!
//! Kustomize hashes Go's `json.Marshal` of `{"data": ..., "kind": "ConfigMap", "name": ""}`
//! (keys sorted, `<`, `>`, `&` escaped as `\u003c`...) with SHA-256 and keeps the first ten hex
//! digits, with `0 1 3 a e` replaced by `g h k m t` so the suffix never reads as a number or a
//! word. The name is always empty: kustomize (v5.5) looks up `metadata/name` as one field name,
//! finds none and hashes `""`, so two generators with the same data get the same suffix.
//! Must not: know what the ConfigMap holds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The suffix for a generated ConfigMap holding `data`.
pub fn config_map_suffix(data: &BTreeMap<String, String>) -> String {
    // Go's encoding/json writes map keys sorted: "data" < "kind" < "name".
    let mut json = String::from("{\"data\":{");
    for (i, (key, value)) in data.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        go_json_string(&mut json, key);
        json.push(':');
        go_json_string(&mut json, value);
    }
    json.push_str("},\"kind\":\"ConfigMap\",\"name\":\"\"}");
    let digest = ring::digest::digest(&ring::digest::SHA256, json.as_bytes());
    digest.as_ref()[..5]
        .iter()
        .flat_map(|b| [b >> 4, b & 0x0f])
        .map(|nibble| match nibble {
            0x0 => 'g',
            0x1 => 'h',
            0x3 => 'k',
            0xa => 'm',
            0xe => 't',
            n => char::from_digit(u32::from(n), 16).unwrap_or('?'),
        })
        .collect()
}

/// A JSON string as Go's `json.Marshal` writes it (HTML-safe escaping).
fn go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_escaping() {
        let mut out = String::new();
        go_json_string(&mut out, "a<b>&\"\\\n\t\u{1}é");
        assert_eq!(out, r#""a\u003cb\u003e\u0026\"\\\n\t\u0001é""#);
    }

    /// Suffixes `kubectl kustomize` (kustomize v5.5.0) gave these literals.
    #[test]
    fn matches_kustomize() {
        let one = BTreeMap::from([("k".to_string(), "1".to_string())]);
        assert_eq!(config_map_suffix(&one), "bbd6m56k95");
        let html = BTreeMap::from([
            (
                "page".to_string(),
                "<a href=\"x\">&amp;</a>\nline2".to_string(),
            ),
            ("b.yaml".to_string(), "x: 1".to_string()),
        ]);
        assert_eq!(config_map_suffix(&html), "gfm6b86c87");
    }

    #[test]
    fn suffix_shape_and_sensitivity() {
        let data = |v: &str| BTreeMap::from([("k".to_string(), v.to_string())]);
        let a = config_map_suffix(&data("1"));
        assert_eq!(a.len(), 10);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert!(!a.contains(['0', '1', '3', 'a', 'e']), "{a}");
        assert_ne!(a, config_map_suffix(&data("2")), "data changes the suffix");
        let two = BTreeMap::from([("k".to_string(), "1".to_string()), ("l".into(), "".into())]);
        assert_ne!(a, config_map_suffix(&two), "a key changes the suffix");
    }
}
