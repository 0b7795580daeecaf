//! Scenario 1 (both stores): three federations, full-mesh peered with the CLI; exports, scoped
//! exports, import rules and removals propagate; VIPs survive a restart.

use serde_json::Value;

use crate::harness::{
    Backend, Federation, IMPORT_ALL, Spec, catalog, export, has_route, peer_via_cli, route,
};

const SHOP_ONLY: &str = "imports:\n  - peer: \"*\"\n    namespaces: [shop]\n";

async fn scenario(backend: Backend, base: u8) {
    let mut east = Federation::start(
        Spec::new("east", base + 1)
            .backend(&backend)
            .catalog(&catalog(&[], IMPORT_ALL)),
    )
    .await;
    let mut west = Federation::start(
        Spec::new("west", base + 2)
            .backend(&backend)
            .catalog(&catalog(&[], IMPORT_ALL)),
    )
    .await;
    let south = Federation::start(
        Spec::new("south", base + 3)
            .backend(&backend)
            .catalog(&catalog(&[], SHOP_ONLY)),
    )
    .await;
    peer_via_cli(&east, &west).await;
    peer_via_cli(&east, &south).await;
    peer_via_cli(&west, &south).await;
    east.wait_connected(&["west", "south"]).await;
    west.wait_connected(&["east", "south"]).await;
    south.wait_connected(&["east", "west"]).await;

    // An export added to east's file reaches both peers.
    let cart = export("shop", "cart", 8080, None);
    east.write_catalog(&catalog(std::slice::from_ref(&cart), IMPORT_ALL));
    for f in [&west, &south] {
        f.wait_catalog("shop/cart is imported from east", |c| {
            has_route(c, "shop/cart")
        })
        .await;
    }

    // A scoped export reaches west and never south: `marker` is in the same catalog version, so
    // once south has `marker` it has seen the version that carries `scoped`.
    let scoped = export("shop", "scoped", 8081, Some(&["west"]));
    let marker = export("shop", "marker", 8082, None);
    east.write_catalog(&catalog(
        &[cart.clone(), scoped.clone(), marker.clone()],
        IMPORT_ALL,
    ));
    west.wait_catalog("west has shop/scoped and shop/marker", |c| {
        has_route(c, "shop/scoped") && has_route(c, "shop/marker")
    })
    .await;
    south
        .wait_catalog("south has shop/marker", |c| has_route(c, "shop/marker"))
        .await;
    let s = south.catalog().await;
    assert!(
        !has_route(&s, "shop/scoped"),
        "south imported shop/scoped, which east exports only to west: {s}"
    );

    // South imports only namespace shop: east's other/x stays out (marker2 proves south has
    // the version carrying it).
    let other = export("other", "x", 8083, None);
    let marker2 = export("shop", "marker2", 8084, None);
    let all = vec![
        cart.clone(),
        scoped.clone(),
        marker.clone(),
        other.clone(),
        marker2.clone(),
    ];
    east.write_catalog(&catalog(&all, IMPORT_ALL));
    west.wait_catalog("west has other/x", |c| has_route(c, "other/x"))
        .await;
    south
        .wait_catalog("south has shop/marker2", |c| has_route(c, "shop/marker2"))
        .await;
    let s = south.catalog().await;
    assert!(
        !has_route(&s, "other/x"),
        "south imported other/x despite importing only namespace shop: {s}"
    );

    // Removing an export from the file removes it everywhere.
    let without_cart: Vec<String> = all.iter().skip(1).cloned().collect();
    east.write_catalog(&catalog(&without_cart, IMPORT_ALL));
    for f in [&east, &west, &south] {
        f.wait_catalog("shop/cart is gone", |c| {
            !has_route(c, "shop/cart") && has_route(c, "shop/marker")
        })
        .await;
    }

    // VIPs at west survive a graceful restart (same data dir).
    let before = west.catalog().await;
    let vips = |c: &Value| -> Vec<(String, Value)> {
        ["shop/marker", "shop/marker2", "shop/scoped", "other/x"]
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    route(c, k)
                        .map(|r| r["vips"].clone())
                        .unwrap_or(Value::Null),
                )
            })
            .collect()
    };
    let vips_before = vips(&before);
    assert!(
        vips_before.iter().all(|(_, v)| v["v4"].is_string()),
        "every route at west has a v4 VIP: {vips_before:?}"
    );
    west.sigterm().await;
    west.restart().await;
    // Served from the store right away, with the same VIPs.
    let after = west.catalog().await;
    assert_eq!(
        vips(&after),
        vips_before,
        "VIPs changed across a restart of west"
    );
    west.wait_connected(&["east", "south"]).await;
    // And it still follows east after the restart.
    let after_restart = export("shop", "after-restart", 8085, None);
    let mut all2 = without_cart.clone();
    all2.push(after_restart);
    east.write_catalog(&catalog(&all2, IMPORT_ALL));
    west.wait_catalog("west has shop/after-restart", |c| {
        has_route(c, "shop/after-restart")
    })
    .await;
    assert_eq!(vips(&west.catalog().await), vips_before);
    for f in [&east, &west, &south] {
        f.assert_no_refused_updates();
    }
    drop(south);
    east.sigterm().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_sync_embedded() {
    scenario(Backend::Embedded, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_sync_etcd() {
    let etcd = isthmus_federation::testing::EtcdServer::start().await;
    scenario(Backend::Etcd(etcd.endpoint()), 20).await;
    drop(etcd);
}
