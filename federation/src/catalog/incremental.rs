//! [`CatalogParser`]: parses successive versions of one catalog document, reusing every export
//! entry whose text did not change since the last parse.
//!
//! A generated catalog of 10,000 exports is about 1.2 MB of JSON; an edit usually touches a few
//! entries. Deserializing and validating every entry again costs ~20 ms per edit; finding the
//! entries' boundaries and comparing their text with the last version costs ~2 ms. Only JSON
//! documents take this path (YAML ones are small and hand-edited): the parser splits the top-level
//! object into members and the `exports` array into entries with a small scanner, deserializes
//! and validates only entries whose exact text is new, and checks duplicates across all of them.
//!
//! The result is always the one [`parse_catalog`] gives for the same text: anything the scanner
//! does not understand, and every error, goes through [`parse_catalog`] itself (so errors read
//! the same too).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::Arc;

use super::file::{
    CatalogError, CatalogFile, ExportSpec, JsonCatalog, Located, check_document, parse_catalog,
};

/// Parses a catalog document, remembering the last JSON one's entries.
#[derive(Debug, Default)]
pub struct CatalogParser {
    last: Option<Last>,
}

/// The last JSON document parsed, and its exports by the hash of their text.
#[derive(Debug)]
struct Last {
    text: String,
    entries: HashMap<u64, (Range<usize>, Arc<ExportSpec>), BuildHasherDefault<PassThrough>>,
}

impl CatalogParser {
    /// Parses and validates `text` exactly like [`parse_catalog`] does.
    pub fn parse(&mut self, text: &str) -> Result<CatalogFile, CatalogError> {
        let Some(members) = split_document(text) else {
            self.last = None;
            return parse_catalog(text);
        };
        let file = match self.reuse(text, &members) {
            Some(file) => file,
            None => parse_catalog(text)?,
        };
        self.remember(text, &members, &file);
        Ok(file)
    }

    /// The fast path: `None` when anything is off (the caller then parses the whole text).
    fn reuse(&self, text: &str, members: &Members) -> Option<CatalogFile> {
        // Everything but the exports, as a document of its own (small: rules and policies).
        let mut rest = String::from("{");
        for (i, m) in members.others.iter().enumerate() {
            if i > 0 {
                rest.push(',');
            }
            rest.push_str(&text[m.clone()]);
        }
        rest.push('}');
        let rest: JsonCatalog = serde_json::from_str(&rest).ok()?;
        let mut exports = Vec::with_capacity(members.exports.len());
        for (span, h) in members.exports.iter().zip(&members.hashes) {
            let entry = &text[span.clone()];
            let known = self.last.as_ref().and_then(|last| {
                let (range, spec) = last.entries.get(h)?;
                (last.text.get(range.clone())? == entry).then(|| spec.clone())
            });
            exports.push(match known {
                Some(spec) => (0, spec, true),
                None => (0, Arc::new(serde_json::from_str(entry).ok()?), false),
            });
        }
        check_document(Located {
            exports,
            imports: rest
                .imports
                .unwrap_or_default()
                .into_iter()
                .map(|r| (0, r))
                .collect(),
            policies: rest.policies.unwrap_or_default(),
        })
        .ok()
    }

    fn remember(&mut self, text: &str, members: &Members, file: &CatalogFile) {
        if members.exports.len() != file.exports.len() {
            self.last = None;
            return;
        }
        let mut entries =
            HashMap::with_capacity_and_hasher(members.exports.len(), Default::default());
        for ((span, h), spec) in members
            .exports
            .iter()
            .zip(&members.hashes)
            .zip(&file.exports)
        {
            entries.insert(*h, (span.clone(), spec.clone()));
        }
        self.last = Some(Last {
            text: text.to_owned(),
            entries,
        });
    }
}

/// A 64-bit hash of an entry's text. Not cryptographic: a match is confirmed by comparing the
/// text, so a collision costs a re-parse, never a wrong entry.
fn hash(text: &str) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = text.len() as u64;
    let mut chunks = text.as_bytes().chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    for b in chunks.remainder() {
        h = (h.rotate_left(5) ^ u64::from(*b)).wrapping_mul(K);
    }
    h ^ (h >> 32)
}

/// The keys of [`Last::entries`] are hashes already.
#[derive(Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A JSON document split at its top level.
#[derive(Debug, PartialEq)]
struct Members {
    /// Each element of the `exports` array, and the [`hash`] of its text.
    exports: Vec<Range<usize>>,
    hashes: Vec<u64>,
    /// Every other member (`"key": value`), whole.
    others: Vec<Range<usize>>,
}

/// Splits a document that is one JSON object with an `exports` array. `None` for anything else
/// (YAML, no or repeated `exports`, escaped keys, malformed text): the caller parses it whole.
fn split_document(text: &str) -> Option<Members> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut members = Members {
        exports: Vec::new(),
        hashes: Vec::new(),
        others: Vec::new(),
    };
    let mut has_exports = false;
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let start = i;
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let key_end = skip_string(b, i)?;
            let key = &text[i + 1..key_end - 1];
            if key.contains('\\') {
                return None;
            }
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(b, i + 1);
            if key == "exports" {
                if has_exports || b.get(i) != Some(&b'[') {
                    return None;
                }
                has_exports = true;
                i = split_array(b, i, &mut members.exports)?;
            } else {
                i = skip_value(b, i)?;
                members.others.push(start..i);
            }
            i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if !has_exports || skip_ws(b, i) != b.len() {
        return None;
    }
    members.hashes = members
        .exports
        .iter()
        .map(|s| hash(&text[s.clone()]))
        .collect();
    Some(members)
}

/// Records the element spans of the array at `i`; returns the index after it.
fn split_array(b: &[u8], mut i: usize, out: &mut Vec<Range<usize>>) -> Option<usize> {
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b']') {
        return Some(i + 1);
    }
    loop {
        let end = skip_value(b, i)?;
        out.push(i..end);
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return Some(i + 1),
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index just after the JSON value starting at `i` (strings, nesting and scalars; scalars
/// are not checked: a bad one fails the entry's own parse).
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        b',' | b'}' | b']' | b':' => None,
        _ => {
            let mut j = i;
            while let Some(c) = b.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            Some(j)
        }
    }
}

/// The index just after the string starting (with its quote) at `i`.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(name: &str, port: u16) -> String {
        format!(
            r#"{{"namespace": "shop", "name": "{name}", "ports": [{{"port": {port}, "protocol": "http"}}], "metadata": {{"note": "a \"quoted\" [brace}} {name}"}}}}"#
        )
    }

    fn doc(exports: &[String]) -> String {
        format!(
            "{{\"imports\": [{{\"peer\": \"*\", \"namespaces\": [\"*\"]}}],\n \"exports\": [{}], \"policies\": {{\"p\": {{\"services\": [\"*\"], \"retry\": {{\"retries\": 1}}}}}}}}",
            exports.join(",\n  ")
        )
    }

    #[test]
    fn splits_members_and_entries() {
        let text = doc(&[export("a", 80), export("b", 81)]);
        let m = split_document(&text).expect("splits");
        assert_eq!(m.exports.len(), 2);
        assert_eq!(&text[m.exports[1].clone()], export("b", 81));
        assert_eq!(m.others.len(), 2);
        assert!(text[m.others[1].clone()].starts_with("\"policies\""));
        for not_split in [
            "exports: []\n",
            "{\"exports\": {}}",
            "{\"exports\": [], \"exports\": []}",
            "{\"expo\\u0072ts\": []}",
            "{\"imports\": []}",
            "{\"exports\": [1,]}",
            "{\"exports\": [] } x",
            "{\"exports\": [\"unterminated]}",
            "",
        ] {
            assert_eq!(split_document(not_split), None, "{not_split}");
        }
    }

    /// The parser gives exactly what `parse_catalog` gives, edit after edit, and reuses the
    /// entries that did not change.
    #[test]
    fn reparses_like_a_full_parse_and_reuses_unchanged_entries() {
        let mut parser = CatalogParser::default();
        let mut exports: Vec<String> = (0..50).map(|i| export(&format!("s{i}"), 80)).collect();
        let first = parser.parse(&doc(&exports)).expect("first");
        assert_eq!(first, parse_catalog(&doc(&exports)).expect("full"));

        exports[7] = export("s7", 81);
        exports.insert(3, export("new", 80));
        exports.remove(40);
        let text = doc(&exports);
        let second = parser.parse(&text).expect("second");
        assert_eq!(second, parse_catalog(&text).expect("full"));
        let reused = |name: &str| {
            let find = |f: &CatalogFile| {
                f.exports
                    .iter()
                    .find(|e| e.name.as_str() == name)
                    .cloned()
                    .expect("present")
            };
            Arc::ptr_eq(&find(&first), &find(&second))
        };
        assert!(
            reused("s0") && reused("s49"),
            "unchanged entries are shared"
        );
        assert!(!reused("s7"), "an edited entry is parsed again");

        // Errors are the full parser's, and a bad edit does not poison the next parse.
        let mut dup = exports.clone();
        dup.push(export("s0", 80));
        let err = parser.parse(&doc(&dup)).expect_err("duplicate").to_string();
        assert_eq!(
            err,
            parse_catalog(&doc(&dup)).expect_err("full").to_string()
        );
        assert!(err.contains("already exported"), "{err}");
        let mut bad = exports.clone();
        bad[0] = export("s0", 0);
        assert!(parser.parse(&doc(&bad)).is_err());
        let mut typo = exports.clone();
        typo[1] = typo[1].replace("\"ports\"", "\"prots\"");
        assert!(parser.parse(&doc(&typo)).is_err());
        assert_eq!(parser.parse(&text).expect("again"), second);

        // YAML, and JSON the scanner does not split, still parse.
        let yaml = "exports:\n  - {namespace: s, name: a, ports: [{port: 80, protocol: http}]}\n";
        assert_eq!(
            parser.parse(yaml).expect("yaml"),
            parse_catalog(yaml).expect("yaml")
        );
        assert_eq!(parser.parse("{}").expect("empty"), CatalogFile::default());
    }
}
