//! `isthmus peering list | show | establish | remove` in words.

use serde_json::Value;

use super::{Table, ago_ms, fields, text};

/// Milliseconds ago from a field that is -1 when it never happened.
fn ms_ago(v: &Value) -> String {
    v.as_i64().map_or("-".to_string(), ago_ms)
}

/// One line per peer.
pub fn list(peers: &[Value]) -> String {
    if peers.is_empty() {
        return "no peers yet: `isthmus peering token --peer <name>` here, then `isthmus peering \
                establish <token>` on the other cluster\n"
            .to_string();
    }
    let mut t = Table::new(&[
        "PEER",
        "TRUST DOMAIN",
        "REGION",
        "STATE",
        "OFFERED",
        "IMPORTED",
        "CATALOG AGE",
        "LAST SEEN",
        "LAG",
    ])
    .right(&[4, 5, 8]);
    for p in peers {
        t.row(vec![
            text(&p["cluster"]),
            text(&p["trust_domain"]),
            text(&p["region"]),
            text(&p["state"]),
            text(&p["their_catalog"]["services"]),
            text(&p["their_catalog"]["imported"]),
            ms_ago(&p["their_catalog"]["age_ms"]),
            ms_ago(&p["last_seen_ms_ago"]),
            text(&p["our_catalog"]["lag"]),
        ]);
    }
    t.render()
}

/// One peer in detail.
pub fn show(p: &Value) -> String {
    let theirs = &p["their_catalog"];
    let ours = &p["our_catalog"];
    let zone = match &p["zone"] {
        Value::Null => String::new(),
        z => format!(", zone {}", text(z)),
    };
    let mut pairs = vec![
        ("peer", text(&p["cluster"])),
        ("trust domain", text(&p["trust_domain"])),
        ("region", format!("{}{zone}", text(&p["region"]))),
        ("dials", text(&p["dials"])),
        ("state", text(&p["state"])),
        ("last seen", ms_ago(&p["last_seen_ms_ago"])),
    ];
    if !p["last_error"].is_null() {
        pairs.push(("last error", text(&p["last_error"])));
    }
    pairs.extend([
        (
            "their catalog",
            format!(
                "{} services offered, {} imported here; version {} (epoch {}), stored {}",
                text(&theirs["services"]),
                text(&theirs["imported"]),
                text(&theirs["version"]),
                text(&theirs["epoch"]),
                ms_ago(&theirs["age_ms"]),
            ),
        ),
        (
            "our catalog",
            format!(
                "version {}: sent {}, acked {} (lag {})",
                text(&ours["version"]),
                text(&ours["sent"]),
                text(&ours["acked"]),
                text(&ours["lag"]),
            ),
        ),
        (
            "trust bundle",
            format!(
                "theirs at sequence {}; they acked ours at {}",
                text(&p["bundle_sequence"]),
                text(&p["acked_our_bundle_sequence"]),
            ),
        ),
    ]);
    fields(&pairs)
}

/// What `establish` and `remove` did.
pub fn done(op: &str, v: &Value) -> String {
    match op {
        "peering.establish" => format!(
            "peered with {} (trust domain {}); `isthmus peering show {}` follows the link\n",
            text(&v["peer"]),
            text(&v["trust_domain"]),
            text(&v["peer"])
        ),
        _ => format!(
            "removed peer {}: its catalog, imports and trust bundle are gone\n",
            text(&v["removed"])
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn peer(name: &str, td: &str, age: i64) -> Value {
        json!({"cluster": name, "trust_domain": td, "region": "eu", "zone": null,
               "dials": "127.0.0.1:1", "state": "connected", "last_error": null,
               "their_catalog": {"epoch": 1, "version": 12, "services": 3, "imported": 2, "age_ms": age},
               "last_seen_ms_ago": 900, "our_catalog": {"version": 4, "sent": 4, "acked": 4, "lag": 0},
               "bundle_sequence": 1, "acked_our_bundle_sequence": 1})
    }

    #[test]
    fn the_list_is_aligned_under_its_header() {
        let text = list(&[
            peer("west", "west.mesh", 2_500),
            peer("a-long-peer-name", "long.example.mesh", -1),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for column in ["STATE", "CATALOG AGE"] {
            let at = lines[0].find(column).expect(column);
            for line in &lines[1..] {
                assert!(
                    line[at..].starts_with("connected")
                        || line[at..].starts_with("2s ago")
                        || line[at..].starts_with("never"),
                    "{column} misaligned:\n{text}"
                );
            }
        }
        assert!(
            lines[1].contains("2s ago") && lines[2].contains("never"),
            "{text}"
        );
    }

    #[test]
    fn show_says_what_each_number_is() {
        let text = show(&peer("west", "west.mesh", 61_000));
        assert!(
            text.contains("3 services offered, 2 imported here"),
            "{text}"
        );
        assert!(text.contains("stored 61s ago"), "{text}");
        assert!(text.contains("last seen      just now"), "{text}");
    }
}
