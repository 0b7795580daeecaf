//! The federation's built-in dashboard (`/ui`) in a real browser: Debian's headless Chromium
//! loads east's page from its admin port (inside east's network namespace, [`Wan`] base 53) and
//! the test reads the DOM the page's own script built (`--dump-dom`).
//!
//! After traffic from east to `demo/echo` (served by west, the same region, and south), and from
//! south to west's copy of it (its per-cluster name), the page shows the three clusters with
//! their link states, `demo/echo` with its serving clusters, non-zero requests per second on the
//! east → west edge, counted by east's gateway and reported to east's federation (no Prometheus
//! involved), and on the south → west edge, which east learns from its peers' heartbeats. Then west's gateway is SIGKILLed: within 10 s,
//! measured from the test's side, the page shows west as down (east's gateway's verdict on west,
//! or west's link). One screenshot is kept as a test artefact (`dashboard.png` under
//! `ISTHMUS_E2E_ARTEFACTS`, else the test target's temporary directory).
//!
//! Needs root, iproute2, nftables and `chromium` (Debian: `apt-get install -y chromium`); it
//! fails saying so when one is missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::Command;

use crate::failover::clusters;
use crate::harness::netns::{FED_ADMIN, Wan};

const BASE: u8 = 53;
/// How long the page may run its script (virtual time: fetches still take real time).
const BUDGET_MS: u32 = 2_500;

/// The opening tags in `dom` that start with `<{tag} class="{class}"`, attributes included.
fn tags<'a>(dom: &'a str, tag: &str, class: &str) -> Vec<&'a str> {
    let open = format!("<{tag} class=\"{class}");
    dom.match_indices(&open)
        .map(|(i, _)| {
            let rest = &dom[i..];
            &rest[..rest.find('>').map_or(rest.len(), |e| e + 1)]
        })
        .collect()
}

/// The value of `name` in an opening tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// Runs headless Chromium in `ns` against east's dashboard; `extra` picks `--dump-dom` or
/// `--screenshot=…`. Returns stdout.
async fn chromium(ns: &str, profile: &Path, extra: &[&str]) -> String {
    let url = format!("http://127.0.0.1:{FED_ADMIN}/ui");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "chromium",
            "--headless",
            "--no-sandbox",
        ])
        .args(["--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={BUDGET_MS}"))
        .args(extra)
        .arg(&url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("chromium finishes within 60 s")
        .expect("run chromium (apt-get install -y chromium)");
    assert!(
        out.status.success(),
        "chromium {extra:?} {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the dashboard shows, read from its DOM.
#[derive(Debug, Default)]
struct Shown {
    loads: u32,
    /// (cluster, link) rows of the cluster set.
    clusters: Vec<(String, String)>,
    /// `demo/echo`'s serving clusters.
    echo_serving: Vec<String>,
    /// Requests per second on the east → west edge.
    east_west_rps: f64,
    /// Requests per second on the south → west edge, and who counted it.
    south_west: Option<(f64, String)>,
    /// Verdicts on west held by east's gateways: (healthy, text).
    west_verdicts: Vec<(bool, String)>,
}

fn read(dom: &str) -> Shown {
    let body = dom.find("<body").map_or("", |i| {
        let rest = &dom[i..];
        &rest[..rest.find('>').map_or(rest.len(), |e| e + 1)]
    });
    let mut shown = Shown {
        loads: attr(body, "data-loads")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        ..Shown::default()
    };
    for t in tags(dom, "tr", "cluster") {
        if let (Some(c), Some(l)) = (attr(t, "data-cluster"), attr(t, "data-link")) {
            shown.clusters.push((c.to_string(), l.to_string()));
        }
    }
    for t in tags(dom, "tr", "service") {
        if attr(t, "data-service") == Some("demo/echo") {
            shown.echo_serving = attr(t, "data-serving")
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
    }
    for t in tags(dom, "tr", "edge") {
        let rps = attr(t, "data-rps")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        match (attr(t, "data-from"), attr(t, "data-to")) {
            (Some("east"), Some("west")) => shown.east_west_rps = rps,
            (Some("south"), Some("west")) => {
                let by = attr(t, "data-reported-by").unwrap_or("").to_string();
                shown.south_west = Some((rps, by));
            }
            _ => {}
        }
    }
    for (i, _) in dom.match_indices("<span class=\"verdict ") {
        let tag = &dom[i..i + dom[i..].find('>').unwrap_or(0) + 1];
        if attr(tag, "data-cluster") == Some("west") {
            let text_end = dom[i..].find("</span>").map_or(i, |e| i + e);
            let text = dom[i + tag.len()..text_end].to_string();
            shown
                .west_verdicts
                .push((attr(tag, "data-healthy") == Some("true"), text));
        }
    }
    shown
}

fn artefact_dir() -> PathBuf {
    std::env::var_os("ISTHMUS_E2E_ARTEFACTS")
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_clusters_services_traffic_and_a_dead_gateway_in_chromium() {
    let mut wan = Wan::start("ui", BASE, &clusters(), json!({}), json!({})).await;
    let east_ns = wan.node("east").ns.clone();
    let profile = tempfile::tempdir().expect("chromium profile dir");

    // Traffic from east to demo/echo: west serves it (same region as east). South calls west's
    // copy by its per-cluster name's VIP.
    let vip = wan.node("east").vip("demo/echo").await;
    let south_catalog = wan.node("south").catalog().await;
    let south_to_west = crate::harness::route(&south_catalog, "demo/echo")
        .and_then(|r| r["cluster_vips"].as_array())
        .and_then(|v| v.iter().find(|p| p[0] == "west"))
        .and_then(|p| p[1]["v4"].as_str())
        .map(String::from)
        .unwrap_or_else(|| panic!("south has no VIP for west.echo.demo: {south_catalog}"));
    let load = wan
        .client("east", &format!("http://{vip}:8080/ui"), 20, 6, 5_000)
        .await;
    let south_load = wan
        .client(
            "south",
            &format!("http://{south_to_west}:8080/ui"),
            10,
            6,
            5_000,
        )
        .await;
    let south_ok = south_load.finish().await.iter().filter(|s| s.ok()).count();
    assert!(
        south_ok >= 50,
        "{south_ok} of south's calls to west succeeded"
    );
    let samples = load.finish().await;
    let ok = samples.iter().filter(|s| s.ok()).count();
    assert!(ok >= 100, "{ok} of {} calls succeeded", samples.len());
    assert!(
        samples
            .iter()
            .filter(|s| s.ok())
            .all(|s| s.cluster.as_deref() == Some("west")),
        "east's calls go to west, its own region"
    );

    // The page, as Chromium renders it, until the traffic report reached east's federation.
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let dom = chromium(&east_ns, profile.path(), &["--dump-dom"]).await;
        let shown = read(&dom);
        let south_seen = shown.south_west.as_ref().is_some_and(|s| s.0 > 0.0);
        if (shown.east_west_rps > 0.0 && south_seen) || Instant::now() > deadline {
            break shown;
        }
    };
    assert!(
        shown.loads >= 1,
        "the page never loaded its state: {shown:?}"
    );
    let mut clusters_shown = shown.clusters.clone();
    clusters_shown.sort();
    assert_eq!(
        clusters_shown,
        [
            ("east".to_string(), "self".to_string()),
            ("south".to_string(), "connected".to_string()),
            ("west".to_string(), "connected".to_string()),
        ],
        "{shown:?}"
    );
    let mut serving = shown.echo_serving.clone();
    serving.sort();
    assert_eq!(serving, ["south", "west"], "{shown:?}");
    assert!(
        shown.east_west_rps > 0.0,
        "no traffic shown from east to west: {shown:?}"
    );
    let (rps, by) = shown.south_west.clone().unwrap_or_default();
    assert!(
        rps > 0.0 && (by == "south" || by == "west"),
        "south -> west not shown as its ends counted it: {shown:?}"
    );
    assert!(
        !shown.west_verdicts.is_empty() && shown.west_verdicts.iter().all(|v| v.0),
        "east's gateway holds an 'up' verdict on west: {shown:?}"
    );

    // One screenshot, kept.
    let dir = artefact_dir();
    std::fs::create_dir_all(&dir).expect("artefact dir");
    let png = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        &east_ns,
        profile.path(),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,860",
            "--hide-scrollbars",
        ],
    )
    .await;
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{} is not a PNG of a drawn page ({} bytes)",
        png.display(),
        bytes.len()
    );
    eprintln!("dashboard screenshot: {}", png.display());

    // West's gateway dies: the page shows west down within 10 s.
    wan.node_mut("west").kill9_gateway().await;
    let killed = Instant::now();
    let shown = loop {
        let dom = chromium(&east_ns, profile.path(), &["--dump-dom"]).await;
        let shown = read(&dom);
        let link_down = shown
            .clusters
            .iter()
            .any(|(c, l)| c == "west" && l != "connected");
        let verdict_down = shown.west_verdicts.iter().any(|v| !v.0);
        if link_down || verdict_down || killed.elapsed() > Duration::from_secs(10) {
            break shown;
        }
    };
    let took = killed.elapsed();
    assert!(
        shown.west_verdicts.iter().any(|v| !v.0)
            || shown
                .clusters
                .iter()
                .any(|(c, l)| c == "west" && l != "connected"),
        "west still shown up {took:?} after its gateway was killed: {shown:?}"
    );
    assert!(
        took <= Duration::from_secs(10),
        "west shown down only after {took:?}"
    );
    eprintln!(
        "west shown down {took:?} after its gateway was killed: {:?}",
        shown.west_verdicts
    );
}
