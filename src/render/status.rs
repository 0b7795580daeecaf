//! `isthmus status` in words: who this federation is, what is wrong (a refused catalog edit, a
//! pending apply, a degraded start) first, then peers, gateways and policies as tables.

use serde_json::Value;

use super::{Table, ago_at, fields, text};

pub fn render(v: &Value, now_ms: i64) -> String {
    let zone = match &v["zone"] {
        Value::Null => String::new(),
        z => format!(", zone {}", text(z)),
    };
    let listen = &v["listen"];
    let mut pairs = vec![
        (
            "cluster",
            format!(
                "{} (trust domain {}, region {}{zone})",
                text(&v["cluster"]),
                text(&v["trust_domain"]),
                text(&v["region"]),
            ),
        ),
        ("store", text(&v["store"])),
        (
            "listening",
            format!(
                "peering {}, gateway API {}, admin {}",
                text(&listen["peering"]),
                text(&listen["api"]),
                text(&listen["admin"]),
            ),
        ),
        (
            "mesh view",
            format!(
                "version {}: {} clusterset services, {} exported from here",
                text(&v["view_version"]),
                text(&v["services"]),
                text(&v["exports"]),
            ),
        ),
        ("CA", super::ca::summary(&v["ca"])),
        ("catalog file", catalog_file(&v["catalog_file"], now_ms)),
        ("catalog apply", catalog_apply(&v["catalog_apply"], now_ms)),
    ];
    if !v["kubernetes"].is_null() {
        pairs.push(("kubernetes", kubernetes(&v["kubernetes"], now_ms)));
    }
    if let Some(d) = v["degraded"].as_object() {
        pairs.push((
            "degraded",
            format!(
                "{} ({} services without VIPs)",
                text(&d["reason"]),
                text(&d["services_without_vips"])
            ),
        ));
    }
    let mut out = fields(&pairs);

    out.push_str("\nPEERS\n");
    out.push_str(&super::peering::list(
        v["peers"].as_array().map(Vec::as_slice).unwrap_or_default(),
    ));
    out.push_str("\nGATEWAYS\n");
    out.push_str(&super::gateway::list(&v["gateways"]));
    if let Some(policies) = v["policies"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("\nPOLICIES\n");
        out.push_str(&self::policies(policies));
    }
    out
}

/// The catalog file, and its refused edit while there is one.
fn catalog_file(f: &Value, now_ms: i64) -> String {
    let path = match &f["path"] {
        Value::Null => return "none (nothing exported from a file)".to_string(),
        p => text(p),
    };
    let r = &f["last_refused"];
    if r.is_null() {
        return format!("{path}: in force");
    }
    let at = match (&r["field"], &r["line"]) {
        (Value::Null, _) => String::new(),
        (field, Value::Null) => format!(" at {}", text(field)),
        (field, line) => format!(" at {} (line {})", text(field), text(line)),
    };
    // What is wrong with the field, else the message's first line (a YAML error's snippet
    // follows it); the full text is in --json and the log.
    let why = match &r["reason"] {
        Value::String(reason) => reason.clone(),
        _ => text(&r["message"])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    };
    format!(
        "{path}: EDIT REFUSED {}{at}: {why} (the last good catalog stays in force)",
        ago_at(&r["at_ms"], now_ms)
    )
}

/// A change waiting for the store, or an edit refused for what it needs.
fn catalog_apply(a: &Value, now_ms: i64) -> String {
    let mut parts = Vec::new();
    if !a["pending_since_ms"].is_null() {
        parts.push(format!(
            "PENDING since {} ({} attempts; last error: {})",
            ago_at(&a["pending_since_ms"], now_ms),
            text(&a["attempts"]),
            text(&a["last_error"]),
        ));
    }
    if !a["last_refused"].is_null() {
        parts.push(format!(
            "EDIT REFUSED {}: {}",
            ago_at(&a["last_refused_at_ms"], now_ms),
            text(&a["last_refused"]),
        ));
    }
    if parts.is_empty() {
        "applied".to_string()
    } else {
        parts.join("; ")
    }
}

/// The Kubernetes side: the export watches' sync, then every problem holding now.
fn kubernetes(k: &Value, now_ms: i64) -> String {
    let mut parts = Vec::new();
    match &k["exports"]["synced"] {
        Value::Bool(true) => parts.push("exports synced".to_string()),
        Value::Bool(false) => parts.push(
            "exports NOT SYNCED (nothing exported from Kubernetes until every watch lists)"
                .to_string(),
        ),
        _ => {}
    }
    if k["imports"] == true {
        parts.push("imports written".to_string());
    }
    let problems = k["problems"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if problems.is_empty() {
        parts.push("no problem".to_string());
    }
    for p in problems {
        parts.push(format!(
            "PROBLEM since {} ({}): {}",
            ago_at(&p["since_ms"], now_ms),
            text(&p["area"]),
            text(&p["problem"]),
        ));
    }
    parts.join("; ")
}

fn policies(list: &[Value]) -> String {
    let mut t = Table::new(&["POLICY", "SERVICES", "SECTIONS", "FAULT"]);
    for p in list {
        let join = |v: &Value| {
            v.as_array()
                .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
                .unwrap_or_else(|| "-".to_string())
        };
        if !p["error"].is_null() {
            t.row(vec![
                text(&p["name"]),
                "-".into(),
                "-".into(),
                format!("invalid: {}", text(&p["error"])),
            ]);
            continue;
        }
        let fault = match &p["fault"] {
            Value::Null => "-".to_string(),
            f if f["active"] == true => format!("active, ends in {}s", text(&f["expires_in_s"])),
            f => format!("ended {}", text(&f["expires_at"])),
        };
        t.row(vec![
            text(&p["name"]),
            join(&p["services"]),
            join(&p["sections"]),
            fault,
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(catalog_file: Value, catalog_apply: Value) -> Value {
        json!({
            "cluster": "east", "trust_domain": "east.mesh", "region": "us-east", "zone": null,
            "store": "embedded",
            "listen": {"peering": "127.0.0.1:1", "api": "127.0.0.1:2", "admin": "127.0.0.1:3", "admin_socket": "/x"},
            "exports": 1, "services": 2, "peers": [], "gateways": {},
            "ca": {"trust_domain": "east.mesh", "bundle_sequence": 1, "roots": 1, "rotation": "Idle", "leaf_lifetime": "1h"},
            "policies": [{"name": "p", "services": ["demo/echo"], "sections": ["split"], "fault": null}],
            "view_version": 9,
            "catalog_apply": catalog_apply,
            "catalog_file": catalog_file,
            "degraded": null,
        })
    }

    fn applied() -> Value {
        json!({"pending_since_ms": null, "attempts": 0, "last_error": null,
               "last_refused": null, "last_refused_at_ms": null})
    }

    #[test]
    fn a_healthy_federation_reads_in_a_few_lines() {
        let v = status(
            json!({"path": "/etc/isthmus/catalog.yaml", "last_refused": null}),
            applied(),
        );
        let text = render(&v, 0);
        assert!(
            text.starts_with("cluster        east (trust domain east.mesh, region us-east)\n"),
            "{text}"
        );
        assert!(
            text.contains("catalog file   /etc/isthmus/catalog.yaml: in force\n"),
            "{text}"
        );
        assert!(text.contains("catalog apply  applied\n"), "{text}");
        assert!(!text.contains("kubernetes"), "{text}");
        assert!(text.contains("no peers yet"), "{text}");
        assert!(
            text.contains(
                "POLICIES\nPOLICY  SERVICES   SECTIONS  FAULT\np       demo/echo  split     -\n"
            ),
            "{text}"
        );
        assert!(!text.contains('{'), "no JSON: {text}");
    }

    #[test]
    fn kubernetes_problems_are_shown_while_they_hold() {
        let mut v = status(json!({"path": null, "last_refused": null}), applied());
        v["kubernetes"] = json!({"exports": {"synced": false}, "imports": true, "problems": [
            {"area": "imports: api", "since_ms": 1_000,
             "problem": "error trying to connect: Connection refused"}]});
        let text = render(&v, 31_000);
        let line = text
            .lines()
            .find(|l| l.starts_with("kubernetes"))
            .expect("kubernetes line");
        assert!(line.contains("exports NOT SYNCED"), "{line}");
        assert!(
            line.contains(
                "PROBLEM since 30s ago (imports: api): error trying to connect: Connection refused"
            ),
            "{line}"
        );
        v["kubernetes"] = json!({"exports": {"synced": true}, "imports": true, "problems": []});
        let text = render(&v, 31_000);
        assert!(
            text.contains("kubernetes     exports synced; imports written; no problem\n"),
            "{text}"
        );
    }

    #[test]
    fn a_refused_edit_is_shown_with_its_field_and_age() {
        let v = status(
            json!({"path": "/c.yaml", "last_refused": {"at_ms": 10_000, "field": "policies.x.split.weights.east",
                   "line": null, "reason": "invalid type: string \"half\", expected u32",
                   "message": "catalog file /c.yaml: policies.x.split.weights.east: invalid type: string \"half\", expected u32; fix it"}}),
            applied(),
        );
        let text = render(&v, 13_500);
        let line = text
            .lines()
            .find(|l| l.starts_with("catalog file"))
            .expect("catalog file line");
        assert!(
            line.contains(
                "EDIT REFUSED 3s ago at policies.x.split.weights.east: invalid type: string \"half\", expected u32 ("
            ),
            "{line}"
        );
        assert!(
            line.ends_with("(the last good catalog stays in force)"),
            "{line}"
        );
        // Without a field (a YAML syntax error): the message's first line.
        let v = status(
            json!({"path": "/c.yaml", "last_refused": {"at_ms": 10_000, "field": null, "line": null,
                   "reason": null, "message": "catalog file /c.yaml: line 1 column 3: bad\n --> snippet"}}),
            applied(),
        );
        let text = render(&v, 13_500);
        assert!(
            text.contains(
                "EDIT REFUSED 3s ago: catalog file /c.yaml: line 1 column 3: bad (the last"
            ),
            "{text}"
        );
        let mut pending = applied();
        pending["pending_since_ms"] = json!(1_000);
        pending["attempts"] = json!(4);
        pending["last_error"] = json!("etcd unavailable");
        let text = render(
            &status(json!({"path": null, "last_refused": null}), pending),
            121_000,
        );
        assert!(
            text.contains(
                "catalog apply  PENDING since 2m ago (4 attempts; last error: etcd unavailable)"
            ),
            "{text}"
        );
    }
}
