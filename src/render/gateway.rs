//! `isthmus gateway list | revoke` in words.

use serde_json::Value;

use super::{Table, text};

/// One line per registered gateway (`gateways`: name -> record).
pub fn list(gateways: &Value) -> String {
    let Some(map) = gateways.as_object().filter(|m| !m.is_empty()) else {
        return "no gateways yet: `isthmus gateway bootstrap --name gw-1 --out gw-1.json`, then \
                `isthmus gateway run --config gateway.yaml` with that file\n"
            .to_string();
    };
    let mut t = Table::new(&[
        "GATEWAY",
        "ADDRESS",
        "ZONE",
        "CONFIG",
        "BUNDLE",
        "HEALTH VERDICTS",
    ])
    .right(&[3, 4]);
    for (name, g) in map {
        let verdicts = g["health"].as_object();
        let healthy = verdicts.map_or(0, |h| h.values().filter(|v| **v == true).count());
        let down = verdicts.map_or(0, |h| h.len()) - healthy;
        let address = match (&g["address"], g["not_advertised"].as_str()) {
            (Value::Null, Some(why)) => format!("(not advertised: {why})"),
            (Value::Null, None) => "(not registered)".to_string(),
            (a, _) => text(a),
        };
        t.row(vec![
            name.clone(),
            address,
            text(&g["zone"]),
            text(&g["acked_version"]),
            text(&g["acked_bundle_sequence"]),
            format!("{healthy} healthy, {down} down"),
        ]);
    }
    t.render()
}

pub fn revoked(v: &Value) -> String {
    format!(
        "revoked gateway {}: its bootstrap token and registration are gone\n",
        text(&v["revoked"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gateways_are_listed_with_their_verdicts() {
        let v = json!({
            "gw-1": {"address": "127.0.0.1:15008", "zone": "a", "acked_version": 12,
                     "acked_bundle_sequence": 1, "health": {"shop/cart@west": true, "shop/a@south": false}},
            "gw-2": {"address": null, "zone": null, "acked_version": 0, "acked_bundle_sequence": 0, "health": {}},
            "gw-3": {"registered": true, "address": null, "not_advertised": "Service isthmus-gateway has no load-balancer address yet",
                     "zone": null, "acked_version": 0, "acked_bundle_sequence": 0, "health": {}}
        });
        let text = list(&v);
        assert!(text.contains("1 healthy, 1 down"), "{text}");
        assert!(text.contains("(not registered)"), "{text}");
        assert!(
            text.contains("(not advertised: Service isthmus-gateway has no load-balancer"),
            "{text}"
        );
        assert!(list(&json!({})).contains("isthmus gateway bootstrap"));
    }
}
