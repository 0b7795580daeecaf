//! A traffic-policy document (JSON, as carried in a catalog's `policies:`):
//! `model::policy::parse`, which both the catalog check and the gateways use.
//!
//! Asserts: parsing is deterministic; an accepted document keeps its name and the services it
//! names; a catalog carrying the document is accepted exactly when the document is, and its
//! error names the policy's field. Input that is not JSON is tried as an RFC 3339 time (the
//! policies' time fields): a time that parses formats to a time that parses back to it.

#![no_main]

use isthmus_federation::catalog::file::parse_catalog;
use isthmus_federation::model::policy::{format_rfc3339, parse, parse_rfc3339};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "fuzzed";

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        if let Ok(text) = std::str::from_utf8(data)
            && let Ok(t) = parse_rfc3339(text)
        {
            let shown = format_rfc3339(t);
            assert_eq!(
                parse_rfc3339(&shown),
                Ok(t),
                "{text:?} formats as {shown:?}"
            );
        }
        return;
    };
    let first = parse(NAME, &value);
    assert_eq!(first, parse(NAME, &value), "parsing is not deterministic");
    let catalog = serde_json::json!({ "policies": { NAME: value } }).to_string();
    let in_catalog = parse_catalog(&catalog);
    match &first {
        Ok(doc) => {
            assert_eq!(&*doc.name, NAME);
            let named: Vec<&str> = value["services"]
                .as_array()
                .expect("an accepted document lists services")
                .iter()
                .filter_map(|s| s.as_str())
                .collect();
            assert_eq!(doc.services, named);
            assert!(
                in_catalog.is_ok(),
                "catalog refused a valid policy: {in_catalog:?}"
            );
        }
        Err(e) => {
            assert_eq!(e.document, NAME);
            let err = in_catalog.expect_err("catalog accepted an invalid policy");
            // The field, not the reason: the catalog reads the document from JSON text again,
            // and serde_json's float parsing is not exact (a number in the reason may differ in
            // its last digit).
            let field = e.catalog_path();
            assert!(
                err.to_string().contains(&field),
                "catalog error {err} does not name {field}"
            );
        }
    }
});
