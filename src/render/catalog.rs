//! `isthmus catalog` in words: every clusterset service, one line per cluster serving it, with
//! the service's VIP and each cluster's own (`<cluster>.<svc>.<ns>`) VIP.

use serde_json::Value;

use super::{Table, ago_at, text};

/// The VIPs of an assignment, v4 then v6 (`-` when none; `released` while the name is gone).
fn vips(v: &Value) -> String {
    let mut out: Vec<String> = ["v4", "v6"]
        .iter()
        .filter_map(|k| v[*k].as_str().map(str::to_string))
        .collect();
    if !v["released_at_ms"].is_null() {
        out.push("(released)".into());
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(" ")
    }
}

/// `8080/http,9090/grpc`.
fn ports(v: &Value) -> String {
    v.as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| format!("{}/{}", text(&p["port"]), text(&p["protocol"])))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "-".into())
}

/// Healthy endpoints across zones.
fn endpoints(summary: &Value) -> u64 {
    summary["zones"]
        .as_object()
        .map_or(0, |z| z.values().filter_map(Value::as_u64).sum())
}

pub fn render(view: &Value, now_ms: i64) -> String {
    let routes = view["routes"].as_object();
    let count = routes.map_or(0, |r| r.len());
    let mut out = format!(
        "cluster {}, mesh view version {}: {count} clusterset service{}\n",
        text(&view["me"]["cluster"]),
        text(&view["version"]),
        if count == 1 { "" } else { "s" },
    );
    let Some(routes) = routes.filter(|r| !r.is_empty()) else {
        out.push_str(
            "nothing exported here or imported from peers yet: export services in the catalog \
             file (exports:) and import peers' services (imports:)\n",
        );
        return out;
    };
    out.push('\n');
    let mut t = Table::new(&[
        "SERVICE",
        "VIP",
        "PORTS",
        "CLUSTER",
        "REGION",
        "ENDPOINTS",
        "CLUSTER VIP",
        "CATALOG",
    ])
    .right(&[5]);
    let mut conflicts = Vec::new();
    for (key, route) in routes {
        let cluster_vips = route["cluster_vips"].as_array();
        let clusters = route["clusters"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (i, c) in clusters.iter().enumerate() {
            let name = text(&c["place"]["cluster"]);
            let own_vip = cluster_vips
                .and_then(|all| all.iter().find(|pair| pair[0] == c["place"]["cluster"]))
                .map_or("-".to_string(), |pair| vips(&pair[1]));
            let catalog = if c["local"] == true {
                "local".to_string()
            } else if c["stale"] == true {
                format!("STALE, confirmed {}", ago_at(&c["confirmed_at_ms"], now_ms))
            } else {
                "live".to_string()
            };
            let first = i == 0;
            t.row(vec![
                if first { key.clone() } else { String::new() },
                if first {
                    vips(&route["vips"])
                } else {
                    String::new()
                },
                if first {
                    ports(&route["ports"])
                } else {
                    String::new()
                },
                name,
                text(&c["place"]["region"]),
                endpoints(&c["summary"]).to_string(),
                own_vip,
                catalog,
            ]);
        }
        if let Some(list) = route["conflicts"].as_array().filter(|l| !l.is_empty()) {
            let names: Vec<String> = list.iter().map(text).collect();
            conflicts.push(format!(
                "{key}: {} export it with other ports or properties; {}'s export (the oldest) wins",
                names.join(", "),
                text(&route["defined_by"])
            ));
        }
    }
    out.push_str(&t.render());
    if !conflicts.is_empty() {
        out.push_str("\nCONFLICTS\n");
        for c in conflicts {
            out.push_str(&c);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(name: &str, local: bool, stale: bool, healthy: u64) -> Value {
        json!({"place": {"cluster": name, "trust_domain": format!("{name}.mesh"), "region": "eu", "zone": null},
               "local": local, "gateways": [], "stale": stale, "confirmed_at_ms": 1_000,
               "summary": {"key": "demo/echo", "ports": [], "zones": {"a": healthy}, "weight": 100,
                           "metadata": {}, "headless": false, "exported_at_ms": 1}})
    }

    #[test]
    fn one_line_per_cluster_with_both_vips() {
        let view = json!({
            "version": 7, "me": {"cluster": "east"}, "exports": {}, "peers": [], "policies": {},
            "routes": {"demo/echo": {
                "key": "demo/echo", "defined_by": "west", "headless": false,
                "ports": [{"port": 8080, "protocol": "http"}, {"name": "grpc", "port": 9090, "protocol": "grpc"}],
                "clusters": [cluster("east", true, false, 1), cluster("west", false, true, 3)],
                "conflicts": ["south"],
                "vips": {"v4": "127.101.0.1"},
                "cluster_vips": [["east", {"v4": "127.101.0.2"}], ["west", {"v4": "127.101.0.3"}]],
            }},
        });
        let text = render(&view, 61_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "cluster east, mesh view version 7: 1 clusterset service"
        );
        let header = lines[2];
        let at = |col: &str| header.find(col).expect(col);
        assert_eq!(&lines[3][at("SERVICE")..at("VIP")].trim_end(), &"demo/echo");
        assert!(
            lines[3][at("CLUSTER VIP")..].starts_with("127.101.0.2"),
            "{text}"
        );
        assert!(lines[4][at("CLUSTER")..].starts_with("west"), "{text}");
        assert!(
            lines[4][at("CATALOG")..].starts_with("STALE, confirmed 60s ago"),
            "{text}"
        );
        assert!(lines[3].contains("8080/http,9090/grpc"), "{text}");
        assert!(text.contains("demo/echo: south export it"), "{text}");
    }

    #[test]
    fn an_empty_view_says_how_to_fill_it() {
        let text = render(
            &json!({"version": 0, "me": {"cluster": "east"}, "routes": {}}),
            0,
        );
        assert!(text.contains("0 clusterset services"), "{text}");
        assert!(text.contains("exports:"), "{text}");
    }
}
