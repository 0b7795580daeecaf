//! The e2e harness: federation processes ([`federation`]), reading their JSON views, a fake
//! peer that speaks the peering protocol with its own CA ([`fake_peer`]), clusters in network
//! namespaces ([`netns`]) and a real Prometheus scraping them ([`prometheus`]).

pub mod fake_peer;
pub mod federation;
pub mod gateway;
pub mod netns;
pub mod prometheus;

use std::time::Duration;

use serde_json::Value;

pub use federation::{Backend, Federation, Spec};

/// Convergence and lease-expiry deadlines (a loaded 2-core machine: generous).
pub const CONVERGE: Duration = Duration::from_secs(20);

/// The route for `ns/name` in a `catalog` dump.
pub fn route<'a>(catalog: &'a Value, key: &str) -> Option<&'a Value> {
    catalog["routes"].get(key)
}

pub fn has_route(catalog: &Value, key: &str) -> bool {
    route(catalog, key).is_some()
}

/// Healthy endpoints of `key` served by `cluster` in a `catalog` dump; `None` when `cluster`
/// does not serve it.
pub fn healthy(catalog: &Value, key: &str, cluster: &str) -> Option<u64> {
    let clusters = route(catalog, key)?["clusters"].as_array()?;
    let c = clusters
        .iter()
        .find(|c| c["place"]["cluster"].as_str() == Some(cluster))?;
    Some(
        c["summary"]["zones"]
            .as_object()
            .map(|z| z.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0),
    )
}

/// One line per route: key, VIP, and serving clusters with healthy counts.
pub fn summarize(catalog: &Value) -> String {
    let mut out = String::new();
    if let Some(routes) = catalog["routes"].as_object() {
        for (k, r) in routes {
            let clusters: Vec<String> = r["clusters"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            format!(
                                "{}({})",
                                c["place"]["cluster"].as_str().unwrap_or("?"),
                                c["summary"]["zones"]
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "  {k} vip={} served_by={}\n",
                r["vips"]["v4"],
                clusters.join(",")
            ));
        }
    }
    if out.is_empty() {
        out = format!("  (no routes) {catalog}");
    }
    out
}

/// The state of `peer` in a `peering.list` answer (`"absent"` when not listed).
pub fn peer_state(list: &Value, peer: &str) -> String {
    list["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["cluster"].as_str() == Some(peer)))
        .and_then(|p| p["state"].as_str())
        .unwrap_or("absent")
        .to_string()
}

/// Peers `b` with `a` the way an operator does: a token from `a`'s CLI, established with `b`'s.
pub async fn peer_via_cli(a: &Federation, b: &Federation) {
    let token = a.cli_ok(&["peering", "token", "--peer", b.name]).await;
    let token = token.trim();
    assert!(
        token.starts_with("isthmus-peering-v2."),
        "unexpected token output {token:?}"
    );
    b.cli_ok(&["peering", "establish", token]).await;
}

/// A catalog file with the given exports (YAML list items) and import rules.
pub fn catalog(exports: &[String], imports: &str) -> String {
    let mut s = String::from("exports:\n");
    if exports.is_empty() {
        s = String::from("exports: []\n");
    }
    for e in exports {
        s.push_str(e);
    }
    s.push_str(imports);
    s
}

/// One export item of a catalog file (static endpoint; optional `export_to`).
pub fn export(ns: &str, name: &str, port: u16, export_to: Option<&[&str]>) -> String {
    let mut s = format!(
        "  - namespace: {ns}\n    name: {name}\n    ports: [{{port: {port}, protocol: tcp}}]\n    endpoints: [{{address: \"10.1.2.3:{port}\"}}]\n"
    );
    if let Some(to) = export_to {
        s.push_str(&format!("    export_to: [{}]\n", to.join(", ")));
    }
    s
}

/// Imports every namespace from every peer.
pub const IMPORT_ALL: &str = "imports:\n  - peer: \"*\"\n    namespaces: [\"*\"]\n";

/// Merges `extra` into a generated config: top-level keys replace, except that two objects under
/// the same key are merged one level deep (so `{"limits": {..}}` adds to the defaults' keys).
pub fn merge(base: &mut Value, extra: &Value) {
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            match (b.get_mut(k), v) {
                (Some(Value::Object(bo)), Value::Object(eo)) => {
                    for (k2, v2) in eo {
                        bo.insert(k2.clone(), v2.clone());
                    }
                }
                _ => {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

/// Writes a secret (a KEK) readable by its owner only.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("open a private file");
    f.write_all(bytes).expect("write a private file");
}

/// Sum of the Prometheus samples in `body` named `name` (or starting with it) that carry every
/// label in `labels` (`key="value"`); 0 when absent.
pub fn sum_metric(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The A records `dig` gets for `name` from the DNS server at `server` (`+short`), one per line.
pub async fn dig_a(server: std::net::SocketAddr, name: &str) -> Vec<String> {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            "+time=2",
            "+tries=2",
            "+short",
        ])
        .args([name, "A"])
        .output()
        .await
        .expect("run dig (Debian: apt-get install dnsutils)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}
