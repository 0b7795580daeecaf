//! The dashboard's state document (`GET /ui/api/state`) over the real admin port of in-process
//! federations: its shape, what a gateway's health and traffic reports become in it, that a
//! malformed traffic report is refused and changes nothing, and that the dashboard's routes are
//! read-only and serve the embedded page.

use isthmus_federation::proto::{
    HealthReport, HealthVerdict, ServiceKey, TrafficReport, TrafficSample,
};
use isthmus_federation::traffic::{BUCKETS, bucket_of};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

/// One HTTP/1.1 exchange: (status, lowercased head, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn traffic(requests: u64, errors: u64, latency_ms: u64) -> TrafficReport {
    let mut latency_buckets = vec![0; BUCKETS];
    latency_buckets[bucket_of(Duration::from_millis(latency_ms))] = requests;
    TrafficReport {
        gateway: "gw-1".into(),
        interval_ms: 2_000,
        samples: vec![TrafficSample {
            peer_cluster: "west".into(),
            outbound: true,
            requests,
            errors,
            latency_buckets,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_state_shows_clusters_services_verdicts_and_traffic() {
    use isthmus_gateway::control::ControlClient;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let (east_dir, west_dir) = (data_dir(&[]), data_dir(&["cart"]));
    let east = start(config(east_dir.path(), "east", 5))
        .await
        .expect("east");
    let west = start(config(west_dir.path(), "west", 6))
        .await
        .expect("west");
    peer(&east, &west, "west").await;
    wait_for("east imports west's cart", async || {
        has_route(&east, "shop/cart")
    })
    .await;

    // East's gateway reports a verdict on west's cart, with its reason, and its traffic.
    let file =
        serde_json::from_value(admin(&east, "gateway.bootstrap", json!({ "name": "gw-1" })).await)
            .expect("bootstrap file");
    let gw = ControlClient::bootstrap(&file).await.expect("bootstrap");
    let mut client = gw.client();
    let report = HealthReport {
        gateway: "gw-1".into(),
        verdicts: vec![HealthVerdict {
            cluster: "west".into(),
            service: Some(ServiceKey {
                namespace: "shop".into(),
                name: "cart".into(),
            }),
            healthy: false,
            reason: "no peer gateway answers probes".into(),
        }],
        vip_listeners: false,
        unbound_vips: vec![],
    };
    client
        .report_health(futures_util::stream::iter(vec![report]))
        .await
        .expect("health report");
    client
        .report_traffic(traffic(40, 2, 4))
        .await
        .expect("traffic report");
    // More errors than requests: refused whole, nothing kept.
    let refused = client
        .report_traffic(traffic(1, 5, 4))
        .await
        .expect_err("a malformed report");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("5 errors among 1"),
        "{refused:?}"
    );

    // West's gateway reports its calls to south: east learns that edge from west's heartbeats.
    let file =
        serde_json::from_value(admin(&west, "gateway.bootstrap", json!({ "name": "gw-w" })).await)
            .expect("bootstrap file");
    let west_gw = ControlClient::bootstrap(&file)
        .await
        .expect("bootstrap west's gateway");
    let mut to_south = traffic(30, 0, 40);
    to_south.samples[0].peer_cluster = "south".into();
    west_gw
        .client()
        .report_traffic(to_south)
        .await
        .expect("west's traffic report");
    let state = async || {
        let (status, _, body) = http(east.bound.admin, "GET", "/ui/api/state").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).expect("json")
    };
    wait_for("east to show west's edge to south", async || {
        state().await["traffic"]["edges"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["from"] == "west" && e["to"] == "south"))
    })
    .await;

    let (status, head, body) = http(east.bound.admin, "GET", "/ui/api/state").await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let s: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(s["cluster"], "east");
    assert_eq!(s["trust_domain"], "east.mesh");
    assert_eq!(s["ca"]["rotation"], "Idle", "{}", s["ca"]);
    assert!(s["ca"]["bundle_sequence"].as_u64().is_some());

    // The cluster set: east itself, then west with its link.
    let clusters = s["clusters"].as_array().expect("clusters");
    let names: Vec<(&str, &str)> = clusters
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or(""),
                c["link"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(names, [("east", "self"), ("west", "connected")]);
    let w = &clusters[1];
    assert_eq!(w["sync_lag"], 0, "{w}");
    assert_eq!(w["services"], 1, "{w}");
    assert_eq!(w["trust_domain"], "west.mesh");
    assert!(w["bundle_sequence"].as_u64().is_some(), "{w}");
    assert!(w["last_error"].is_null(), "{w}");

    // Services: west's cart, imported here, with the gateway's verdict and its reason.
    let services = s["services"].as_array().expect("services");
    assert_eq!(services.len(), 1, "{services:?}");
    let cart = &services[0];
    assert_eq!(cart["service"], "shop/cart");
    assert_eq!(
        (cart["imported"].as_bool(), cart["exported"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(
        cart["vip"]
            .as_str()
            .is_some_and(|v| v.starts_with("127.95.0.")),
        "{cart}"
    );
    let serving = &cart["clusters"][0];
    assert_eq!(serving["cluster"], "west");
    assert_eq!(
        serving["verdicts"],
        json!([{ "gateway": "gw-1", "healthy": false, "reason": "no peer gateway answers probes" }])
    );

    // Traffic: the one good report, as an edge east -> west counted here; west -> south as
    // west reported it.
    let edges = s["traffic"]["edges"].as_array().expect("edges");
    assert_eq!(edges.len(), 2, "{edges:?}");
    let e = &edges[0];
    assert_eq!(e["reported_by"], "east");
    let ws = &edges[1];
    assert_eq!(
        (ws["from"].as_str(), ws["to"].as_str()),
        (Some("west"), Some("south"))
    );
    assert_eq!(
        (ws["reported_by"].as_str(), ws["requests"].as_u64()),
        (Some("west"), Some(30))
    );
    assert_eq!(
        ws["requests_per_s"].as_f64(),
        Some(15.0),
        "30 requests in 2 s"
    );
    assert!(ws["p99_ms"].as_f64().is_some_and(|p| p > 25.0), "{ws}");
    assert_eq!(
        (e["from"].as_str(), e["to"].as_str()),
        (Some("east"), Some("west"))
    );
    assert_eq!(
        (e["requests"].as_u64(), e["errors"].as_u64()),
        (Some(40), Some(2))
    );
    assert_eq!(
        e["requests_per_s"].as_f64(),
        Some(20.0),
        "40 requests in 2 s"
    );
    assert_eq!(e["error_ratio"].as_f64(), Some(0.05));
    assert!(
        e["p50_ms"]
            .as_f64()
            .is_some_and(|p| (2.0..=5.0).contains(&p)),
        "{e}"
    );
    assert!(
        s["traffic"]["scope"]
            .as_str()
            .is_some_and(|t| t.contains("edges touching east"))
    );
    let gateways = s["gateways"].as_array().expect("gateways");
    assert_eq!(gateways[0]["name"], "gw-1");
    assert!(
        gateways[0]["last_traffic_report_ms_ago"].as_i64().is_some(),
        "{gateways:?}"
    );

    // Read-only, and the page is served from the binary with a same-origin policy.
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        assert_eq!(
            http(east.bound.admin, method, "/ui/api/state").await.0,
            405,
            "{method}"
        );
        assert_eq!(
            http(east.bound.admin, method, "/ui").await.0,
            405,
            "{method}"
        );
    }
    let (status, head, page) = http(east.bound.admin, "GET", "/ui").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(page.contains("<script src=\"/ui/app.js\""), "{page}");
    let (status, head, _) = http(east.bound.admin, "GET", "/ui/app.js").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");

    west.shutdown().await;
    east.shutdown().await;
}
