//! A federation whose Kubernetes API server is down when it starts (the stand-in stopped, its
//! objects kept): it starts, serves everything else (peering, its catalog file's exports, DNS),
//! says what is wrong in its log, `isthmus status` and metrics, retries with a bounded backoff
//! (no spinning), and once the API server is back converges on both sides: the ServiceExport
//! that was waiting reaches the peer, and the peer's service gets its ServiceImport.
//! Federation indexes 38 (west: Kubernetes exports and imports) and 39 (east) belong to this
//! file.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use isthmus_federation::testing::kubeapi::KubeApi;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::dig_a;
use crate::harness::{CONVERGE, Federation, IMPORT_ALL, Spec, catalog, export, healthy};
use crate::kubernetes_exports::operator::{
    Kubectl, namespace, ready, service, service_export, slice,
};

/// Rounds and relists while the API server is down, over [`WINDOW`]: the writer's backoff
/// (200 ms doubling to 5 s) and the watches' (200 ms doubling to 5 s) allow a handful; a spin
/// would make thousands.
const WINDOW: Duration = Duration::from_secs(8);
const MAX_FAILURES_IN_WINDOW: f64 = 12.0;

fn free_udp_tcp_port(ip: Ipv4Addr) -> u16 {
    loop {
        let t = std::net::TcpListener::bind((ip, 0)).expect("bind tcp");
        let port = t.local_addr().expect("addr").port();
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

async fn status(f: &Federation) -> Value {
    f.admin("status", Value::Null).await
}

async fn import_errors(f: &Federation) -> f64 {
    f.metric("isthmus_federation_kubernetes_imports_errors_total", &[])
        .await
}

async fn watch_errors(f: &Federation) -> f64 {
    f.metric("isthmus_federation_kubernetes_watch_errors_total", &[])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federation_starts_without_its_api_server_and_converges_when_it_comes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut api = KubeApi::start(dir.path()).await;
    // West's cluster already holds an exported Service when its API server goes down.
    let mut objects = vec![namespace("shop"), service("shop", "cart", 80)];
    objects.push(slice("shop", "cart", "cart-0", &ready(40, 3, "zone-a")));
    objects.push(service_export("shop", "cart"));
    for o in objects {
        api.put(o).expect("stand-in accepts the object");
    }
    api.stop().await;

    let ip = Ipv4Addr::new(127, 0, 38, 1);
    let dns = SocketAddr::from((ip, free_udp_tcp_port(ip)));
    let started = Instant::now();
    let west = Federation::start(
        Spec::new("west", 38)
            .catalog(&catalog(&[export("shop", "files", 7000, None)], IMPORT_ALL))
            .extra(json!({
                "dns": { "bind": dns.to_string(), "ttl": "1s" },
                "kubernetes": { "kubeconfig": api.kubeconfig(), "imports": true, "exports": true },
            })),
    )
    .await;
    eprintln!(
        "west ready {:?} after its start, API server down",
        started.elapsed()
    );
    let east = Federation::start(Spec::new("east", 39).catalog(&catalog(
        &[export("shop", "orders", 8080, None)],
        IMPORT_ALL,
    )))
    .await;
    crate::harness::peer_via_cli(&east, &west).await;
    east.wait_connected(&["west"]).await;

    // Everything else is served: the file's export reaches east, east's reaches west, and
    // west's DNS answers the imported name (its VIP: no ClusterIP without the API server).
    east.wait_catalog("west's file export", |c| {
        healthy(c, "shop/files", "west") == Some(1)
    })
    .await;
    west.wait_catalog("east's orders", |c| {
        healthy(c, "shop/orders", "east") == Some(1)
    })
    .await;
    let vip =
        crate::harness::route(&west.catalog().await, "shop/orders").expect("route")["vips"]["v4"]
            .as_str()
            .expect("vip")
            .to_string();
    west.wait_until("west's DNS answers orders", CONVERGE, || {
        let vip = vip.clone();
        async move {
            let a = dig_a(dns, "orders.shop.svc.clusterset.local").await;
            (a == [vip], format!("{a:?}"))
        }
    })
    .await;
    assert!(
        crate::harness::route(&east.catalog().await, "shop/cart").is_none(),
        "nothing from Kubernetes is exported before the watches list"
    );

    // It says what is wrong: status (JSON and words), log, metrics.
    west.wait_until("status names the API problems", CONVERGE, || async {
        let k = status(&west).await["kubernetes"].clone();
        let areas: Vec<String> = k["problems"]
            .as_array()
            .map(|p| {
                p.iter()
                    .map(|p| p["area"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let ok = k["exports"]["synced"] == false
            && areas.iter().any(|a| a == "imports: api")
            && areas
                .iter()
                .any(|a| a.starts_with("exports: serviceexports"));
        (ok, k.to_string())
    })
    .await;
    let words = west.cli_ok(&["status"]).await;
    eprintln!("isthmus status while the API server is down:\n{words}");
    let line = words
        .lines()
        .find(|l| l.starts_with("kubernetes"))
        .unwrap_or_else(|| west.fail(&format!("no kubernetes line in:\n{words}")));
    assert!(
        line.contains("exports NOT SYNCED") && line.contains("PROBLEM since"),
        "{line}"
    );
    // The cause itself, not only the layer that failed.
    assert!(line.contains("Connection refused"), "{line}");
    let log = west.log_tail(5_000);
    assert!(
        log.contains("is the API server reachable"),
        "no clear error in the log"
    );
    assert_eq!(
        west.metric("isthmus_federation_kubernetes_synced", &[])
            .await,
        0.0
    );

    // No spinning: a bounded number of failed rounds and relists over a window.
    let (i0, w0) = (import_errors(&west).await, watch_errors(&west).await);
    assert!(i0 >= 1.0 && w0 >= 1.0, "errors not counted: {i0} {w0}");
    tokio::time::sleep(WINDOW).await;
    let (i1, w1) = (import_errors(&west).await, watch_errors(&west).await);
    eprintln!(
        "over {WINDOW:?} with the API server down: {} failed writer rounds, {} failed lists \
         (3 watches)",
        i1 - i0,
        w1 - w0
    );
    assert!(
        i1 - i0 <= MAX_FAILURES_IN_WINDOW,
        "the writer spins: {i0} -> {i1}"
    );
    assert!(
        w1 - w0 <= 3.0 * MAX_FAILURES_IN_WINDOW,
        "the watches spin: {w0} -> {w1}"
    );

    // The API server comes up: both sides converge, and the problems clear.
    api.restart().await;
    let back = Instant::now();
    let k = Kubectl::new(api.kubeconfig(), dir.path());
    east.wait_catalog("west's ServiceExport reaches east", |c| {
        healthy(c, "shop/cart", "west") == Some(3)
    })
    .await;
    eprintln!(
        "export reached east {:?} after the API server came back",
        back.elapsed()
    );
    west.wait_until("orders' ServiceImport is written", CONVERGE, || async {
        let si = k
            .get("serviceimports.multicluster.x-k8s.io", "shop", "orders")
            .await;
        let ok = si.as_ref().is_some_and(|si| {
            si["spec"]["ips"]
                .as_array()
                .is_some_and(|ips| ips.len() == 1)
                && si["status"]["clusters"] == json!([{ "cluster": "east" }])
        });
        (ok, format!("{si:?}"))
    })
    .await;
    eprintln!(
        "import written {:?} after the API server came back",
        back.elapsed()
    );
    west.wait_until("the problems clear", CONVERGE, || async {
        let k = status(&west).await["kubernetes"].clone();
        let ok =
            k["exports"]["synced"] == true && k["problems"].as_array().is_some_and(Vec::is_empty);
        (ok, k.to_string())
    })
    .await;
    // Nothing exported twice, nothing lost: west's two exports, once each.
    let c = east.catalog().await;
    for key in ["shop/cart", "shop/files"] {
        let n = crate::harness::route(&c, key).expect("route")["clusters"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(n, 1, "{key}: {c}");
    }
    west.assert_no_refused_updates();
    east.assert_no_refused_updates();
}
