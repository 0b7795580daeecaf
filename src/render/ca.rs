//! `isthmus ca status | rotate | retire` in words.

use serde_json::Value;

use super::{fields, text};

/// What a rotation state means for the operator.
fn rotation(state: &str) -> String {
    let next = match state {
        "Idle" => "one root; `isthmus ca rotate` starts a rotation",
        "NewRootPublished" => {
            "new root published beside the old; signing switches once every peer and gateway \
             acked it"
        }
        "NewRootSigning" => {
            "signing with the new root; `isthmus ca retire` removes the old one after the \
             longest leaf lifetime"
        }
        _ => "",
    };
    if next.is_empty() {
        state.to_string()
    } else {
        format!("{state} ({next})")
    }
}

pub fn status(v: &Value) -> String {
    fields(&[
        ("trust domain", text(&v["trust_domain"])),
        ("roots", text(&v["roots"])),
        ("bundle sequence", text(&v["bundle_sequence"])),
        ("rotation", rotation(&text(&v["rotation"]))),
        ("leaf lifetime", text(&v["leaf_lifetime"])),
    ])
}

/// One line for `isthmus status`.
pub fn summary(v: &Value) -> String {
    let roots = v["roots"].as_u64().unwrap_or(0);
    format!(
        "{roots} root{}, bundle sequence {}, rotation {}, leaf lifetime {}",
        if roots == 1 { "" } else { "s" },
        text(&v["bundle_sequence"]),
        text(&v["rotation"]),
        text(&v["leaf_lifetime"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_names_the_next_step() {
        let v = json!({"trust_domain": "east.mesh", "bundle_sequence": 3, "roots": 2,
                       "rotation": "NewRootSigning", "leaf_lifetime": "1h"});
        let text = status(&v);
        assert!(text.contains("roots            2"), "{text}");
        assert!(text.contains("isthmus ca retire"), "{text}");
        assert_eq!(
            summary(&v),
            "2 roots, bundle sequence 3, rotation NewRootSigning, leaf lifetime 1h"
        );
    }
}
