//! Scenario (etcd): a catalog edit made while the store is down is not lost. The federation
//! retries the apply with backoff, shows it pending in `isthmus status` and in
//! `isthmus_federation_catalog_apply_pending`, and once etcd is back the edit reaches the peer
//! without any further edit; an import-rules edit likewise takes effect once etcd is back.

use std::time::Duration;

use isthmus_federation::testing::EtcdServer;
use serde_json::Value;

use crate::harness::{
    Backend, CONVERGE, Federation, IMPORT_ALL, Spec, catalog, export, has_route, peer_via_cli,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_made_while_etcd_is_down_is_applied_once_it_is_back() {
    let mut etcd = EtcdServer::start().await;
    let backend = Backend::Etcd(etcd.endpoint());
    let a = export("shop", "a", 8080, None);
    let east = Federation::start(
        Spec::new("east", 27)
            .backend(&backend)
            .catalog(&catalog(std::slice::from_ref(&a), IMPORT_ALL)),
    )
    .await;
    let west = Federation::start(
        Spec::new("west", 28)
            .backend(&backend)
            .catalog(&catalog(&[], IMPORT_ALL)),
    )
    .await;
    peer_via_cli(&east, &west).await;
    west.wait_catalog("west has shop/a", |c| has_route(c, "shop/a"))
        .await;

    // All of etcd is down while an export is added.
    etcd.kill();
    let b = export("shop", "b", 8081, None);
    east.write_catalog(&catalog(&[a.clone(), b], IMPORT_ALL));
    east.wait_until(
        "east shows the edit pending (status and metric)",
        CONVERGE,
        || async {
            let status = match east.try_admin("status", Value::Null).await {
                Ok(s) => s,
                Err(e) => return (false, format!("admin error: {e:#}")),
            };
            let apply = &status["catalog_apply"];
            let pending = east
                .metric("isthmus_federation_catalog_apply_pending", &[])
                .await;
            let ok = apply["pending_since_ms"].as_i64().is_some()
                && apply["attempts"].as_u64().is_some_and(|n| n >= 2)
                && apply["last_error"].as_str().is_some_and(|e| !e.is_empty())
                && pending == 1.0;
            (ok, format!("catalog_apply={apply} pending={pending}"))
        },
    )
    .await;
    assert!(
        east.metric("isthmus_federation_catalog_apply_failures", &[])
            .await
            >= 2.0
    );
    // Still down for a while, with more edits: shop/c added, then shop/a withdrawn. The
    // retries go on; etcd stays down for over 10 s in all.
    let down_since = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = export("shop", "b", 8081, None);
    let c = export("shop", "c", 8082, None);
    east.write_catalog(&catalog(&[a.clone(), b.clone(), c.clone()], IMPORT_ALL));
    tokio::time::sleep(Duration::from_secs(3)).await;
    east.write_catalog(&catalog(&[b, c], IMPORT_ALL));
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down_since.elapsed())).await;

    etcd.restart().await;
    // No further edit: the retry alone brings the last edit to west (shop/b and shop/c, no
    // longer shop/a), as it brings it to east's own routes.
    let last_edit =
        |c: &Value| has_route(c, "shop/b") && has_route(c, "shop/c") && !has_route(c, "shop/a");
    west.wait_catalog("west has the last edit after etcd is back", last_edit)
        .await;
    east.wait_catalog("east routes the last edit", last_edit)
        .await;
    east.wait_until("east's apply is no longer pending", CONVERGE, || async {
        let status = east.admin("status", Value::Null).await;
        let pending = east
            .metric("isthmus_federation_catalog_apply_pending", &[])
            .await;
        (
            status["catalog_apply"]["pending_since_ms"].is_null() && pending == 0.0,
            format!("{} pending={pending}", status["catalog_apply"]),
        )
    })
    .await;

    // The same for an import-rules edit (every route is recomputed): west stops importing shop
    // while etcd is down; once it is back, shop's routes go without another edit.
    etcd.kill();
    west.write_catalog("exports: []\nimports:\n  - peer: east\n    namespaces: [other]\n");
    west.wait_until("west shows the rules edit pending", CONVERGE, || async {
        let status = west.admin("status", Value::Null).await;
        let apply = &status["catalog_apply"];
        (
            apply["attempts"].as_u64().is_some_and(|n| n >= 2),
            apply.to_string(),
        )
    })
    .await;
    etcd.restart().await;
    west.wait_catalog("west drops shop after etcd is back", |c| {
        ["shop/a", "shop/b", "shop/c"]
            .iter()
            .all(|k| !has_route(c, k))
    })
    .await;
}
