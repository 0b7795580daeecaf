//! A real Prometheus (Debian's 2.42) scrapes every federation and gateway of a three-cluster run
//! in network namespaces ([`Wan`], base 57): every `/metrics` passes `promtool check metrics` and
//! matches `docs/metrics.md`; every recording rule and alert expression shipped in
//! `deploy/prometheus/` is evaluated through the HTTP API and returns the expected series; after
//! west's gateway is killed, the gateway-down and failover alerts' expressions name the right
//! clusters within a bound.
//!
//! Prometheus runs in the WAN router's namespace (it reaches every cluster's veth address; the
//! admin ports bind 0.0.0.0 inside their namespaces for this), with its own config and data dir,
//! on loopback there. Needs root, iproute2, nftables, curl, `prometheus` and `promtool` (Debian
//! `prometheus`); it fails with the reason when one is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::Command;

use crate::failover::clusters;
use crate::harness::netns::{FED_ADMIN, GW_ADMIN, Wan};
use crate::harness::prometheus::{Prometheus, clusters_of, value_of};
use crate::prometheus_rules::{self, Documented};

const BASE: u8 = 57;
const DNS_PORT: u16 = 15053;

async fn metrics_body(ns: &str, port: u16) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "5",
        ])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .await
        .expect("curl");
    assert!(
        out.status.success(),
        "GET /metrics on {ns}:{port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `promtool check metrics` on `body`: passes with nothing to say.
async fn promtool_check_metrics(what: &str, body: &str, dir: &Path) {
    let file = dir.join(format!("{what}.prom"));
    std::fs::write(&file, body).expect("write body");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("promtool check metrics < \"$0\"")
        .arg(&file)
        .output()
        .expect("run promtool: install it with `apt-get install -y prometheus`");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "`promtool check metrics` on {what}'s /metrics ({}):\n{said}",
        out.status
    );
}

/// The families of a Prometheus-text body: name, type and the label names of their samples
/// (`le` aside).
fn families(body: &str) -> BTreeMap<String, Documented> {
    let mut out: BTreeMap<String, Documented> = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            out.insert(
                name.to_string(),
                Documented {
                    name: name.to_string(),
                    kind: kind.to_string(),
                    labels: Vec::new(),
                    conditional: false,
                },
            );
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| out.contains_key(*f)))
                .unwrap_or(name);
            let Some(f) = out.get_mut(family) else {
                panic!("sample {name} outside any family in\n{body}");
            };
            if let Some((_, labels)) = line.split_once('{') {
                let labels = labels.split('}').next().unwrap_or("");
                for pair in labels.split("\",") {
                    let key = pair.split('=').next().unwrap_or("").trim().to_string();
                    if !key.is_empty() && key != "le" && !f.labels.contains(&key) {
                        f.labels.push(key);
                        f.labels.sort();
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_every_cluster_and_evaluates_the_shipped_rules() {
    let fed_extra = json!({
        "listen": { "admin": format!("0.0.0.0:{FED_ADMIN}") },
        "dns": { "enabled": true, "bind": format!("127.0.0.1:{DNS_PORT}") },
    });
    let gw_extra = json!({ "listen": { "admin": format!("0.0.0.0:{GW_ADMIN}") } });
    let mut wan = Wan::start("pm", BASE, &clusters(), fed_extra, gw_extra).await;
    let prometheus = Prometheus::start(&wan).await;
    // Prometheus scrapes all six endpoints before any traffic, so that rates see it rise.
    prometheus
        .wait_for("all six targets up", "up == 1", |s| s.len() == 6)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Traffic from east to demo/echo (served by west and south), and DNS questions to east.
    let vip = wan.node("east").vip("demo/echo").await;
    let load = wan
        .client("east", &format!("http://{vip}:8080/prom"), 20, 8, 5_000)
        .await;
    let east_ns = wan.node("east").ns.clone();
    for name in [
        "echo.demo.svc.clusterset.local",
        "nothing.demo.svc.clusterset.local",
    ] {
        for _ in 0..5 {
            let out = Command::new("ip")
                .args([
                    "netns", "exec", &east_ns, "dig", "+short", "+time=2", "+tries=1",
                ])
                .args(["-p", &DNS_PORT.to_string(), "@127.0.0.1", name])
                .output()
                .await
                .expect("dig (apt-get install dnsutils)");
            assert!(out.status.success(), "dig {name}: {out:?}");
        }
    }
    let samples = load.finish().await;
    let ok = samples.iter().filter(|s| s.ok()).count();
    assert!(
        samples.len() >= 100 && ok * 100 >= samples.len() * 95,
        "{ok} of {} requests from east succeeded",
        samples.len()
    );

    // Every /metrics passes promtool and matches docs/metrics.md.
    let documented: BTreeMap<String, Documented> = prometheus_rules::documented_metrics()
        .into_iter()
        .map(|d| (d.name.clone(), d))
        .collect();
    let scratch = tempfile::tempdir().expect("temp dir");
    let mut exposed: BTreeMap<String, Documented> = BTreeMap::new();
    for node in &wan.nodes {
        for (what, port) in [("federation", FED_ADMIN), ("gateway", GW_ADMIN)] {
            let body = metrics_body(&node.ns, port).await;
            let label = format!("{}-{what}", node.name);
            promtool_check_metrics(&label, &body, scratch.path()).await;
            for (name, family) in families(&body) {
                let doc = documented.get(&name).unwrap_or_else(|| {
                    panic!("{label} exposes {name}, which docs/metrics.md does not list")
                });
                assert_eq!(doc.kind, family.kind, "{name}: type in docs/metrics.md");
                assert_eq!(
                    doc.labels, family.labels,
                    "{name}: labels in docs/metrics.md"
                );
                exposed.insert(name, family);
            }
        }
    }
    for doc in documented.values() {
        assert!(
            exposed.contains_key(&doc.name) || !doc.labels.is_empty() || doc.conditional,
            "docs/metrics.md lists {} (no labels, so always exposed), but no /metrics has it",
            doc.name
        );
    }

    // Every recording rule returns its series.
    let rules = prometheus_rules::rules();
    let record = |name: &str| {
        rules
            .iter()
            .find(|r| r.record.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no recording rule {name}"))
            .record
            .clone()
            .expect("record")
    };
    let all: BTreeSet<String> = ["east", "west", "south"].map(String::from).into();
    let requests = prometheus
        .wait_for(
            "requests between east and west",
            &record("cluster:isthmus_gateway_requests:rate1m"),
            |s| {
                value_of(
                    s,
                    &[("cluster", "east"), ("side", "outbound"), ("code", "2xx")],
                ) > 0.0
                    && value_of(
                        s,
                        &[("cluster", "west"), ("side", "inbound"), ("code", "2xx")],
                    ) > 0.0
            },
        )
        .await;
    assert_eq!(
        value_of(&requests, &[("cluster", "east"), ("code", "5xx")]),
        0.0,
        "{requests:?}"
    );
    let errors = prometheus
        .query(&record("cluster:isthmus_gateway_error_ratio:rate1m"))
        .await;
    assert_eq!(
        value_of(&errors, &[("cluster", "east"), ("side", "outbound")]),
        0.0,
        "east's outbound error ratio: {errors:?}"
    );
    let retries = prometheus
        .query(&record("cluster:isthmus_gateway_retries:rate1m"))
        .await;
    assert_eq!(clusters_of(&retries), all, "{retries:?}");
    let disconnected = prometheus
        .wait_for(
            "every peer link up",
            &record("cluster:isthmus_federation_peers_disconnected:count"),
            |s| clusters_of(s) == all && s.iter().all(|s| s.value == 0.0),
        )
        .await;
    assert_eq!(disconnected.len(), 3);
    prometheus
        .wait_for(
            "east's DNS answers",
            &record("cluster:isthmus_dns_queries:rate1m"),
            |s| {
                value_of(s, &[("cluster", "east"), ("rcode", "NOERROR")]) > 0.0
                    && value_of(s, &[("cluster", "east"), ("rcode", "NXDOMAIN")]) > 0.0
            },
        )
        .await;

    // Every alert expression evaluates; on a healthy set, none of them names a cluster.
    let alert = |name: &str| {
        rules
            .iter()
            .find(|r| r.alert.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no alert {name}"))
            .expr
            .clone()
    };
    for r in rules.iter().filter(|r| r.alert.is_some()) {
        let series = prometheus.query(&r.expr).await;
        let name = r.alert.as_deref().unwrap_or("");
        if name != "IsthmusFailoverHappening" {
            assert!(
                series.is_empty(),
                "{name} on a healthy cluster set: {series:?}"
            );
        }
    }

    // West's gateway dies under load: the gateway-down alert names west, the failover alert
    // east (whose gateway probes west's and sends the failed tries again to south).
    let load = wan
        .client(
            "east",
            &format!("http://{vip}:8080/prom-fault"),
            20,
            15,
            5_000,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = Instant::now();
    wan.node_mut("west").kill9_gateway().await;
    let down = prometheus
        .wait_for("west's gateway down", &alert("IsthmusGatewayDown"), |s| {
            !s.is_empty()
        })
        .await;
    let names: Vec<&str> = down.iter().map(|s| s.label("cluster")).collect();
    assert_eq!(names, ["west"], "{down:?}");
    prometheus
        .wait_for(
            "east failing over",
            &alert("IsthmusFailoverHappening"),
            |s| clusters_of(s).contains("east"),
        )
        .await;
    eprintln!(
        "gateway-down and failover expressions saw west's gateway die within {:?}",
        killed.elapsed()
    );
    let samples = load.finish().await;
    assert!(!samples.is_empty(), "the load during the fault ran");
}
