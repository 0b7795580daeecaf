//! DNS names in wire form (length-prefixed labels, lowercase, ending with the root label), the
//! form every lookup key and every pre-encoded answer uses. Pure; no I/O, no hickory.

/// Longest name on the wire, root label included (RFC 1035 §2.3.4).
pub const MAX_NAME: usize = 255;

/// Wire form of a dotted name already validated by the config (`echo.demo.svc.clusterset.local`).
/// The empty string is the root.
pub fn wire(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    for label in text.split('.').filter(|l| !l.is_empty()) {
        // Labels are validated (1-63 bytes) before they get here; a longer one is cut rather
        // than emitting an invalid length byte.
        let label = &label.as_bytes()[..label.len().min(63)];
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// `labels` (leftmost first) prepended to the wire name `zone`.
pub fn under(labels: &[&str], zone: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(zone.len() + labels.iter().map(|l| l.len() + 1).sum::<usize>());
    for label in labels {
        let label = &label.as_bytes()[..label.len().min(63)];
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.extend_from_slice(zone);
    out
}

/// The name with its first label removed; `None` for the root.
pub fn parent(name: &[u8]) -> Option<&[u8]> {
    let len = usize::from(*name.first()?);
    if len == 0 {
        return None;
    }
    name.get(1 + len..)
}

/// Whether `name` is `zone` or below it (both wire form, lowercase).
pub fn in_zone(name: &[u8], zone: &[u8]) -> bool {
    if name.len() < zone.len() || !name.ends_with(zone) {
        return false;
    }
    is_boundary(name, name.len() - zone.len())
}

/// Whether `offset` starts a label of `name` (or its root label).
pub fn is_boundary(name: &[u8], offset: usize) -> bool {
    let mut i = 0;
    while i < offset {
        match name.get(i) {
            Some(&len) if len != 0 => i += 1 + usize::from(len),
            _ => return false,
        }
    }
    i == offset
}

/// Dotted text of a wire name (for logs and tests); the root is `.`.
pub fn text(name: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while let Some(&len) = name.get(i) {
        if len == 0 {
            break;
        }
        let label = name
            .get(i + 1..i + 1 + usize::from(len))
            .unwrap_or_default();
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(label));
        i += 1 + usize::from(len);
    }
    if out.is_empty() { ".".into() } else { out }
}

/// Writes `name` into a response whose question name (`qname`, wire form, lowercase) starts at
/// byte 12: the longest suffix `name` shares with `qname` becomes a compression pointer into the
/// echoed question, so pre-encoded answers stay valid for every spelling (case) of the query.
pub fn write_compressed(out: &mut Vec<u8>, name: &[u8], qname: &[u8]) {
    let mut i = 0;
    while let Some(&len) = name.get(i) {
        if len == 0 {
            break;
        }
        let suffix = &name[i..];
        if qname.len() >= suffix.len()
            && qname.ends_with(suffix)
            && is_boundary(qname, qname.len() - suffix.len())
        {
            out.extend_from_slice(&name[..i]);
            let ptr = 12 + (qname.len() - suffix.len()) as u16;
            out.extend_from_slice(&(0xC000 | ptr).to_be_bytes());
            return;
        }
        i += 1 + usize::from(len);
    }
    out.extend_from_slice(name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        assert_eq!(wire("a.bc"), b"\x01a\x02bc\x00");
        assert_eq!(wire(""), b"\x00");
        assert_eq!(wire("A.B"), b"\x01a\x01b\x00");
        let zone = wire("clusterset.local");
        let name = under(&["echo", "demo", "svc"], &zone);
        assert_eq!(text(&name), "echo.demo.svc.clusterset.local");
        assert_eq!(
            text(parent(&name).expect("parent")),
            "demo.svc.clusterset.local"
        );
        assert!(in_zone(&name, &zone));
        assert!(in_zone(&zone, &zone));
        assert!(!in_zone(&wire("xclusterset.local"), &zone));
        assert!(!in_zone(&wire("local"), &zone));
        assert_eq!(parent(b"\x00"), None);
        assert_eq!(text(b"\x00"), ".");
    }

    #[test]
    fn compression_points_into_the_question() {
        let q = wire("_http._tcp.echo.demo.svc.clusterset.local");
        let mut out = Vec::new();
        write_compressed(&mut out, &q, &q);
        assert_eq!(out, [0xC0, 12]);
        out.clear();
        let target = wire("echo.demo.svc.clusterset.local");
        write_compressed(&mut out, &target, &q);
        assert_eq!(out, [0xC0, 12 + 11]);
        out.clear();
        let ns = wire("ns.clusterset.local");
        write_compressed(&mut out, &ns, &q);
        let apex_at = 12 + (q.len() - wire("clusterset.local").len()) as u8;
        assert_eq!(out, [2, b'n', b's', 0xC0, apex_at]);
        out.clear();
        // Only label boundaries count: "b.c" is not a suffix of "ab.c" label-wise.
        write_compressed(&mut out, &wire("b.c"), &wire("ab.c"));
        assert_eq!(out, [1, b'b', 0xC0, 12 + 3]);
        out.clear();
        write_compressed(&mut out, &wire("x.org"), &wire("a.com"));
        assert_eq!(out, wire("x.org"));
    }
}
