//! A catalog file edited over time, read by one `CatalogParser` (which reuses the entries whose
//! text did not change since the last version). The input is a first document, then edits
//! separated by 0xFF (a byte that never occurs in UTF-8): each edit is a 2-byte offset, a 1-byte
//! length to delete there, and the text to insert.
//!
//! Asserts: after every edit the parser gives exactly what `parse_catalog` gives for the whole
//! text (same catalog, or the same error message) — whatever it reused.

#![no_main]

use isthmus_federation::catalog::file::parse_catalog;
use isthmus_federation::catalog::incremental::CatalogParser;
use libfuzzer_sys::fuzz_target;

fn floor_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0xFF);
    let Some(Ok(first)) = parts.next().map(std::str::from_utf8) else {
        return;
    };
    let mut text = first.to_owned();
    let mut parser = CatalogParser::default();
    let mut check = |text: &str| {
        let whole = parse_catalog(text);
        let incremental = parser.parse(text);
        match (&whole, &incremental) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "the incremental parser read another catalog"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("parsers disagree on {text:?}: {whole:?} vs {incremental:?}"),
        }
    };
    check(&text);
    for edit in parts.take(16) {
        let [hi, lo, delete, insert @ ..] = edit else {
            continue;
        };
        let Ok(insert) = std::str::from_utf8(insert) else {
            continue;
        };
        let start = floor_boundary(&text, usize::from(u16::from_be_bytes([*hi, *lo])));
        let end = floor_boundary(&text, start + usize::from(*delete));
        text.replace_range(start..end, insert);
        check(&text);
    }
});
