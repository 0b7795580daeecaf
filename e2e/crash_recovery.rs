//! Scenario 2 (etcd): `kill -9` of a federation and of etcd itself. A restarted federation
//! serves its last view from the store at once, then converges again; federations outlive an
//! etcd outage with their last view and catch up once it is back.

use std::time::Duration;

use isthmus_federation::testing::EtcdServer;
use serde_json::json;

use crate::harness::{
    Backend, Federation, IMPORT_ALL, Spec, catalog, export, has_route, peer_via_cli,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_federation_and_etcd() {
    let mut etcd = EtcdServer::start().await;
    let backend = Backend::Etcd(etcd.endpoint());
    let a = export("shop", "a", 8080, None);
    let mut east = Federation::start(
        Spec::new("east", 31)
            .backend(&backend)
            .catalog(&catalog(std::slice::from_ref(&a), IMPORT_ALL)),
    )
    .await;
    let mut west = Federation::start(
        Spec::new("west", 32)
            .backend(&backend)
            .catalog(&catalog(&[], IMPORT_ALL)),
    )
    .await;
    peer_via_cli(&east, &west).await;
    west.wait_catalog("west has shop/a", |c| has_route(c, "shop/a"))
        .await;

    // kill -9 west. East goes down too (kill -9 as well), so whatever west shows after its
    // restart can only come from its store.
    let before = west.catalog().await;
    west.kill9().await;
    east.kill9().await;
    west.restart().await;
    let first = west.catalog().await;
    assert!(
        has_route(&first, "shop/a"),
        "west lost shop/a across kill -9 (its last view must be served from the store): {first}"
    );
    assert_eq!(
        first["routes"]["shop/a"]["vips"], before["routes"]["shop/a"]["vips"],
        "VIP of shop/a changed across kill -9"
    );
    let p = west.admin("peering.show", json!({ "peer": "east" })).await;
    assert_eq!(p["state"], "disconnected", "east is down: {p}");
    // East comes back on the same ports; they converge again.
    east.restart().await;
    west.wait_connected(&["east"]).await;
    east.wait_connected(&["west"]).await;
    let b = export("shop", "b", 8081, None);
    east.write_catalog(&catalog(&[a.clone(), b.clone()], IMPORT_ALL));
    west.wait_catalog("west has shop/b after its kill -9", |c| {
        has_route(c, "shop/b")
    })
    .await;

    // etcd dies: both keep serving their last view.
    etcd.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for f in [&east, &west] {
        let c = f.catalog().await;
        assert!(
            has_route(&c, "shop/a") && has_route(&c, "shop/b"),
            "{} dropped its view while etcd was down: {c}",
            f.name
        );
    }
    etcd.restart().await;
    // After etcd is back, a change at east still reaches west.
    let c_svc = export("shop", "c", 8082, None);
    east.write_catalog(&catalog(&[a, b, c_svc], IMPORT_ALL));
    west.wait_catalog("west has shop/c after the etcd outage", |c| {
        has_route(c, "shop/c")
    })
    .await;
    east.wait_catalog("east exports shop/c", |c| has_route(c, "shop/c"))
        .await;
    east.assert_no_refused_updates();
    west.assert_no_refused_updates();
}
