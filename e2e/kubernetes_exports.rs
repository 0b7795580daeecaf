//! Kubernetes as an export source, end to end: west is a federation process watching its own
//! API server stand-in (`kubernetes:` in its config, a kubeconfig from the stand-in), east a
//! federation importing the usual way. The operator acts with the real `kubectl`; every
//! deadline is measured from east's side, after kubectl returned.

pub mod operator;
mod roll;
mod traffic;

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::{Federation, IMPORT_ALL, Spec, catalog, healthy, peer_via_cli, route};
use operator::{Ep, Kubectl, condition, namespace, ready, service, service_export, slice};

/// Behavioural deadline for a change in west's cluster to show at east (issue 24: 2 s).
const REACH: Duration = Duration::from_secs(2);
const CART: &str = "shop/cart";

/// Polls east's catalog every 50 ms until `check` holds; returns how long it took, failing the
/// test past `deadline`.
async fn until_east(
    east: &Federation,
    what: &str,
    deadline: Duration,
    check: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(c) = east.try_admin("catalog", Value::Null).await
            && check(&c)
        {
            return start.elapsed();
        }
        if start.elapsed() > deadline {
            let c = east.try_admin("catalog", Value::Null).await.ok();
            east.fail(&format!(
                "not within {deadline:?}: {what}; east's catalog: {c:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// West's healthy endpoints of cart per zone, as east sees them.
fn zones(c: &Value) -> Option<Value> {
    let clusters = route(c, CART)?["clusters"].as_array()?;
    let west = clusters.iter().find(|x| x["place"]["cluster"] == "west")?;
    Some(west["summary"]["zones"].clone())
}

/// Waits until a ServiceExport's condition reads `(status, reason)`; returns its message.
async fn until_condition(
    k: &Kubectl,
    west: &Federation,
    name: &str,
    type_: &str,
    want: (&str, &str),
) -> String {
    let start = Instant::now();
    loop {
        let se = k
            .get("serviceexports.multicluster.x-k8s.io", "shop", name)
            .await;
        if let Some(c) = se.as_ref().and_then(|se| condition(se, type_))
            && (c.0.as_str(), c.1.as_str()) == want
        {
            return c.2;
        }
        if start.elapsed() > crate::harness::CONVERGE {
            west.fail(&format!(
                "ServiceExport shop/{name}: {type_} is not {want:?}: {se:#?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Four slices of five ready endpoints each (cart-0..3), in `zone`, addresses 10.<net+s>.0.i.
fn slices(net: u8, zone: &str) -> Vec<Value> {
    (0..4u8)
        .map(|s| {
            slice(
                "shop",
                "cart",
                &format!("cart-{s}"),
                &ready(net + s, 5, zone),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_exports_follow_the_api_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut api = isthmus_federation::testing::kubeapi::KubeApi::start(dir.path()).await;
    let k = Kubectl::new(api.kubeconfig(), dir.path());
    let west = Federation::start(
        Spec::new("west", 152)
            .catalog(&catalog(&[], IMPORT_ALL))
            .extra(json!({
        "kubernetes": {"kubeconfig": api.kubeconfig(), "imports": false}})),
    )
    .await;
    let east = Federation::start(Spec::new("east", 153).catalog(&catalog(&[], IMPORT_ALL))).await;
    // South exports shop/cart from its catalog file with other ports, from the start (so its
    // export is the oldest); it peers with west only at g.
    let south_cart =
        "  - namespace: shop\n    name: cart\n    ports: [{port: 81, protocol: tcp}]\n".to_string();
    let south =
        Federation::start(Spec::new("south", 154).catalog(&catalog(&[south_cart], ""))).await;
    peer_via_cli(&east, &west).await;
    east.wait_connected(&["west"]).await;
    west.wait_connected(&["east"]).await;

    // a. The operator exports a Service: east has it, with west healthy, within 2 s.
    let mut objects = vec![namespace("shop"), service("shop", "cart", 80)];
    objects.extend(slices(20, "zone-a"));
    k.apply(&objects).await;
    k.apply(&[service_export("shop", "cart")]).await;
    let took = until_east(&east, "cart exported by west with 20 healthy", REACH, |c| {
        healthy(c, CART, "west") == Some(20)
    })
    .await;
    eprintln!("a. export reached east in {took:?}");
    let c = east.catalog().await;
    let ports = &route(&c, CART).expect("route")["ports"];
    assert_eq!(
        ports,
        &json!([{"name": "http", "port": 80, "protocol": "http"}]),
        "{c}"
    );
    let msg = until_condition(&k, &west, "cart", "Valid", ("True", "Exported")).await;
    assert!(msg.contains("every peer"), "{msg}");
    until_condition(&k, &west, "cart", "Conflict", ("False", "NoConflicts")).await;

    // b. Zero ready endpoints, and back: east's verdict follows.
    let none: Vec<Value> = (0..4u8)
        .map(|s| {
            let eps: Vec<Ep<'_>> = (1..=5)
                .map(|i| Ep(format!("10.{}.0.{i}", 20 + s), false, false, "zone-a"))
                .collect();
            slice("shop", "cart", &format!("cart-{s}"), &eps)
        })
        .collect();
    k.apply(&none).await;
    let took = until_east(&east, "west serves cart with 0 healthy", REACH, |c| {
        healthy(c, CART, "west") == Some(0)
    })
    .await;
    eprintln!("b. scale to zero reached east in {took:?}");
    k.apply(&slices(20, "zone-a")).await;
    let took = until_east(
        &east,
        "west serves cart with 20 healthy again",
        REACH,
        |c| healthy(c, CART, "west") == Some(20),
    )
    .await;
    eprintln!("b. scale back reached east in {took:?}");

    // c. A rolling restart of the 20 endpoints (zone-a -> zone-b), four slices edited in
    // parallel, two edits per pod, under real traffic through both gateways: no failed
    // request, batched into far fewer updates than edits, never dark.
    roll::rolling_restart(&k, &west, &east).await;

    // d. Deleting the ServiceExport withdraws it from east within 2 s.
    k.delete("serviceexports.multicluster.x-k8s.io", "shop", "cart")
        .await;
    let took = until_east(&east, "cart is gone", REACH, |c| route(c, CART).is_none()).await;
    eprintln!("d. withdrawal reached east in {took:?}");

    // e. A ServiceExport without a Service: Valid=False, ServiceNotFound.
    k.apply(&[service_export("shop", "ghost")]).await;
    let msg = until_condition(&k, &west, "ghost", "Valid", ("False", "ServiceNotFound")).await;
    assert!(msg.contains("shop/ghost"), "{msg}");
    assert!(route(&east.catalog().await, "shop/ghost").is_none());

    // f. The API server restarts, forgets its history (410), and refuses a verb.
    k.apply(&[service_export("shop", "cart")]).await;
    until_east(&east, "cart exported again", REACH, |c| {
        healthy(c, CART, "west") == Some(20)
    })
    .await;
    api_faults(&mut api, &k, &west, &east).await;

    // g. Conflicts. The catalog file exports cart with other ports: the file wins, the
    // ServiceExport says so; then agreement again.
    west.write_catalog(&catalog(
        &[crate::harness::export("shop", "cart", 9, None)],
        IMPORT_ALL,
    ));
    let msg = until_condition(&k, &west, "cart", "Valid", ("False", "CatalogFileConflict")).await;
    assert!(msg.contains("catalog file wins"), "{msg}");
    until_condition(
        &k,
        &west,
        "cart",
        "Conflict",
        ("True", "CatalogFileConflict"),
    )
    .await;
    until_east(&east, "east sees the file's cart (port 9)", REACH, |c| {
        route(c, CART).is_some_and(|r| r["ports"][0]["port"] == 9)
    })
    .await;
    west.write_catalog(&catalog(&[], IMPORT_ALL));
    until_condition(&k, &west, "cart", "Valid", ("True", "Exported")).await;
    // A peer that exported cart first, with other ports: west's ServiceExport is the later one
    // and names south as the winner.
    peer_via_cli(&west, &south).await;
    west.wait_connected(&["east", "south"]).await;
    let msg = until_condition(&k, &west, "cart", "Conflict", ("True", "PortConflict")).await;
    assert!(msg.contains("exported first by south"), "{msg}");
    until_condition(&k, &west, "cart", "Valid", ("True", "Exported")).await;

    for f in [&west, &east, &south] {
        f.assert_no_refused_updates();
    }
}

async fn api_faults(
    api: &mut isthmus_federation::testing::kubeapi::KubeApi,
    k: &Kubectl,
    west: &Federation,
    east: &Federation,
) {
    let zone_at_east = |zone: &'static str| move |c: &Value| zones(c) == Some(json!({ zone: 20 }));
    // Restart: the watches reconnect, and a change made after it still reaches east.
    api.restart().await;
    k.apply(&slices(30, "zone-c")).await;
    until_east(
        east,
        "zone-c after an API server restart",
        crate::harness::CONVERGE,
        zone_at_east("zone-c"),
    )
    .await;
    // Compaction: watches resuming from an old resourceVersion get 410 and relist.
    api.compact();
    api.expire_watches();
    k.apply(&slices(30, "zone-d")).await;
    until_east(
        east,
        "zone-d after a compaction",
        crate::harness::CONVERGE,
        zone_at_east("zone-d"),
    )
    .await;
    // Nothing duplicated or lost: one export, once.
    let exported = west
        .metric("isthmus_federation_exported_services", &[])
        .await;
    assert_eq!(
        exported, 1.0,
        "west exports {exported} services after relisting"
    );
    let c = east.catalog().await;
    let clusters = route(&c, CART).expect("cart")["clusters"]
        .as_array()
        .expect("clusters")
        .len();
    assert_eq!(clusters, 1, "{c}");

    // A revoked verb: a clear error naming it, counted; no crash; recovery after `allow`.
    let errors0 = west
        .metric(
            "isthmus_federation_kubernetes_watch_errors_total",
            &["resource=\"endpointslices\""],
        )
        .await;
    api.revoke("list", "discovery.k8s.io", "endpointslices");
    api.revoke("watch", "discovery.k8s.io", "endpointslices");
    api.expire_watches();
    let start = Instant::now();
    loop {
        let errors = west
            .metric(
                "isthmus_federation_kubernetes_watch_errors_total",
                &["resource=\"endpointslices\""],
            )
            .await;
        let log = west.log_tail(400);
        if errors > errors0 && log.contains("endpointslices") && log.contains("forbidden") {
            break;
        }
        if start.elapsed() > crate::harness::CONVERGE {
            west.fail(&format!(
                "no forbidden error for endpointslices (errors {errors0} -> {errors})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still serving: east keeps the last good state, west answers.
    assert_eq!(zones(&east.catalog().await), Some(json!({"zone-d": 20})));
    west.catalog().await;
    api.allow("list", "discovery.k8s.io", "endpointslices");
    api.allow("watch", "discovery.k8s.io", "endpointslices");
    k.apply(&slices(30, "zone-e")).await;
    until_east(
        east,
        "zone-e after the verbs are allowed again",
        crate::harness::CONVERGE,
        zone_at_east("zone-e"),
    )
    .await;
}
