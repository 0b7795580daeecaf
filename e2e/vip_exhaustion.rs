//! Scenario: changes that need more VIPs than the importer has, from the outside. A local catalog
//! edit that does not fit is refused whole (never sent to peers, never half-applied) and a
//! federation restarted with it on disk starts degraded instead of not at all; a peer's snapshot
//! past its quota or past the free range is NACKed (RESOURCE_EXHAUSTED) and changes nothing,
//! while other peers' and local services keep their addresses.

use serde_json::{Value, json};

use crate::harness::fake_peer::{FakeCluster, Verdict, bundle_of, leaf, open_sync};
use crate::harness::{Federation, IMPORT_ALL, Spec, catalog, export, has_route, peer_via_cli};

/// Exports `shop/s0` .. `shop/s{n-1}`.
fn exports(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| export("shop", &format!("s{i}"), 8000 + i as u16, None))
        .collect()
}

/// Every route's VIPs, by key.
fn vips(c: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(routes) = c["routes"].as_object() {
        for (k, r) in routes {
            out.insert(k.clone(), json!([r["vips"], r["cluster_vips"]]));
        }
    }
    Value::Object(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_edit_past_the_vip_range_is_refused_whole_and_restart_works() {
    // Fourteen addresses: seven local services (two names each).
    let mut east = Federation::start(
        Spec::new("east", 24)
            .extra(json!({ "vips": { "ipv4": "127.124.0.0/28", "max_per_peer": 6 } }))
            .catalog(&catalog(&exports(3), IMPORT_ALL)),
    )
    .await;
    let west = Federation::start(Spec::new("west", 25).catalog(&catalog(&[], IMPORT_ALL))).await;
    peer_via_cli(&east, &west).await;
    west.wait_catalog("west imports east's three services", |c| {
        has_route(c, "shop/s2")
    })
    .await;
    let before = vips(&east.catalog().await);

    // Ten services need twenty names: refused whole, with the reason.
    east.write_catalog(&catalog(&exports(10), IMPORT_ALL));
    east.wait_until(
        "east refuses the edit",
        crate::harness::CONVERGE,
        || async {
            let n = east
                .metric(
                    "isthmus_federation_catalog_edits_refused",
                    &["reason=\"vips_exhausted\""],
                )
                .await;
            (n == 1.0, format!("refused edits: {n}"))
        },
    )
    .await;
    assert_eq!(
        east.metric("isthmus_federation_catalog_reload_failures", &[])
            .await,
        1.0,
        "a refused edit counts like a malformed one"
    );
    let status = east.admin("status", Value::Null).await;
    let refused = status["catalog_apply"]["last_refused"]
        .as_str()
        .unwrap_or_default();
    assert!(
        refused.contains("IPv4 VIPs") && refused.contains("127.124.0.0/28"),
        "status does not say why the edit was refused: {status}"
    );
    // Nothing of it anywhere: east's own view, its VIPs, and what west got.
    let after = east.catalog().await;
    assert_eq!(vips(&after), before, "east's routes or VIPs changed");
    assert_eq!(after["exports"].as_object().map(|e| e.len()), Some(3));
    let (ok, out, _) = west.cli(&["catalog", "--json"]).await;
    assert!(ok);
    assert!(
        out.contains("shop/s2") && !out.contains("shop/s3"),
        "west received part of a refused edit: {out}"
    );

    // An edit that fits is applied and reaches west.
    east.write_catalog(&catalog(&exports(4), IMPORT_ALL));
    west.wait_catalog("west imports shop/s3", |c| has_route(c, "shop/s3"))
        .await;
    let status = east.admin("status", Value::Null).await;
    assert!(
        status["catalog_apply"]["last_refused"].is_null(),
        "the refusal outlived the edit that replaced it: {status}"
    );

    // Restarted with an over-large catalog on disk: starts degraded, serves what fits, says why.
    east.sigterm().await;
    east.write_catalog(&catalog(&exports(10), IMPORT_ALL));
    east.restart().await;
    let status = east.admin("status", Value::Null).await;
    let degraded = &status["degraded"];
    assert!(
        degraded["reason"]
            .as_str()
            .is_some_and(|r| r.contains("have no VIPs")),
        "no degraded reason in status: {status}"
    );
    assert_eq!(degraded["services_without_vips"], 3, "{status}");
    assert_eq!(
        east.metric("isthmus_federation_routes_unaddressed", &[])
            .await,
        3.0
    );
    let c = east.catalog().await;
    for (k, v) in before.as_object().into_iter().flatten() {
        assert_eq!(&vips(&c)[k], v, "{k} lost its VIPs across the restart");
    }
    assert!(has_route(&c, "shop/s6") && !has_route(&c, "shop/s7"), "{c}");
    // Back within the range: no longer degraded, without a restart.
    east.write_catalog(&catalog(&exports(5), IMPORT_ALL));
    east.wait_until(
        "east is no longer degraded",
        crate::harness::CONVERGE,
        || async {
            let s = east.admin("status", Value::Null).await;
            (s["degraded"].is_null(), s["degraded"].to_string())
        },
    )
    .await;
    west.wait_catalog("west follows east's restart", |c| {
        has_route(c, "shop/s4") && !has_route(c, "shop/s5")
    })
    .await;
}

/// `n` services in namespace `ns` (`svc0` ..).
fn services(ns: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (ns.to_string(), format!("svc{i}")))
        .collect()
}

fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// What `fed` holds for `peer`: (services, catalog version).
async fn held(fed: &Federation, peer: &str) -> (u64, u64) {
    let p = fed.admin("peering.show", json!({ "peer": peer })).await;
    (
        p["their_catalog"]["services"].as_u64().unwrap_or(u64::MAX),
        p["their_catalog"]["version"].as_u64().unwrap_or(u64::MAX),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_past_its_quota_or_the_range_is_nacked_and_changes_nothing() {
    // Thirty addresses; a peer may hold twenty names (ten services).
    let mut east = Federation::start(
        Spec::new("east", 26)
            .extra(json!({ "vips": { "ipv4": "127.126.0.0/27", "max_per_peer": 20 } }))
            .catalog(&catalog(&exports(1), IMPORT_ALL)),
    )
    .await;
    let east_bundle = bundle_of(&east).await;
    let mut streams = Vec::new();
    let mut peers = Vec::new();
    for (name, td) in [("south", "south.mesh"), ("mallory", "mallory.mesh")] {
        let fake = FakeCluster::new(name, td);
        fake.establish(&east).await.expect("establish");
        let certs = leaf(&fake.ca, &fake.id());
        let mut s = open_sync(&east, &east_bundle, Some(&certs), fake.hello())
            .await
            .expect("connect")
            .unwrap_or_else(|s| east.fail(&format!("{name}'s Sync refused: {s:?}")));
        s.expect_hello().await;
        streams.push(s);
        peers.push(fake);
    }
    let [south_s, mallory_s] = &mut streams[..] else {
        unreachable!()
    };
    let (south, mallory) = (&peers[0], &peers[1]);
    let south_svcs = services("web", 5);
    match south_s
        .send(vec![south.snapshot(1, &refs(&south_svcs))], &[1])
        .await
    {
        Verdict::Ack => {}
        v => east.fail(&format!("south's snapshot: {v:?}")),
    }
    east.wait_catalog("east imports south", |c| has_route(c, "web/svc4"))
        .await;
    let before = vips(&east.catalog().await);

    // Eleven services from mallory: 22 names, past its quota of 20.
    let big = services("shop", 11);
    match mallory_s
        .send(vec![mallory.snapshot(1, &refs(&big))], &[1])
        .await
    {
        Verdict::Nack { code: 8, reason } => assert!(
            reason.contains("quota") && reason.contains("vips.max_per_peer"),
            "{reason}"
        ),
        v => east.fail(&format!("a snapshot past the quota: {v:?}")),
    }
    assert_eq!(
        held(&east, "mallory").await,
        (0, 0),
        "mallory's refused snapshot was kept"
    );
    assert_eq!(vips(&east.catalog().await), before);
    assert_eq!(
        east.metric(
            "isthmus_federation_peer_vip_quota_refusals",
            &["peer=\"mallory\""]
        )
        .await,
        1.0
    );

    // Ten fit its quota but not the range (2 local + 10 south + 20 > 30): NACKed as well.
    let ten = services("shop", 10);
    match mallory_s
        .send(vec![mallory.snapshot(2, &refs(&ten))], &[2])
        .await
    {
        Verdict::Nack { code: 8, reason } => {
            assert!(reason.contains("IPv4 VIPs"), "{reason}")
        }
        v => east.fail(&format!("a snapshot past the free range: {v:?}")),
    }
    assert_eq!(held(&east, "mallory").await, (0, 0));
    assert_eq!(vips(&east.catalog().await), before);
    assert_eq!(
        east.metric(
            "isthmus_federation_peer_updates",
            &["peer=\"mallory\"", "result=\"nacked_exhausted\""]
        )
        .await,
        2.0
    );

    // What fits is taken; everyone keeps their addresses across a restart.
    let five = services("shop", 5);
    match mallory_s
        .send(vec![mallory.snapshot(3, &refs(&five))], &[3])
        .await
    {
        Verdict::Ack => {}
        v => east.fail(&format!("a snapshot that fits: {v:?}")),
    }
    east.wait_catalog("east imports mallory's five", |c| has_route(c, "shop/svc4"))
        .await;
    let all = vips(&east.catalog().await);
    drop(streams);
    east.sigterm().await;
    east.restart().await;
    let status = east.admin("status", Value::Null).await;
    assert!(status["degraded"].is_null(), "{status}");
    assert_eq!(vips(&east.catalog().await), all);
}
