//! A catalog document as an operator writes it (YAML) or a generator does (JSON):
//! `parse_catalog`.
//!
//! Asserts: the incremental parser gives the same result as `parse_catalog` (same catalog, or
//! the same error message); an accepted catalog serialized as JSON parses back to itself, both
//! as JSON and through the YAML path (JSON is YAML).

#![no_main]

use isthmus_federation::catalog::file::parse_catalog;
use isthmus_federation::catalog::incremental::CatalogParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_catalog(text);
    let incremental = CatalogParser::default().parse(text);
    match (&parsed, &incremental) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the incremental parser read another catalog"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("parsers disagree: {parsed:?} vs {incremental:?}"),
    }
    let Ok(catalog) = parsed else {
        return;
    };
    let json = serde_json::to_string(&catalog).expect("a catalog serializes");
    let again =
        parse_catalog(&json).unwrap_or_else(|e| panic!("its own JSON is refused: {e}\n{json}"));
    assert_eq!(again, catalog, "JSON round trip changed the catalog");
    let yaml = format!("---\n{json}\n");
    let again = parse_catalog(&yaml)
        .unwrap_or_else(|e| panic!("its own JSON read as YAML is refused: {e}\n{json}"));
    assert_eq!(again, catalog, "JSON read as YAML changed the catalog");
});
