//! Scenario 4: root rotation with 4 s leaves while a peer is connected. Signing switches only
//! after the peer ACKed the bundle with both roots; the peering stream never drops (same
//! connect count, connected at every 200 ms poll); retiring the old root keeps it up and the
//! catalog still flows through several leaf renewals.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Federation, IMPORT_ALL, Spec, catalog, export, has_route, peer_via_cli};

const CONNECTS: &str = "isthmus_federation_peer_connects";

/// Polls every 200 ms for `d`, failing at the first sign of a dropped link; stops early when
/// `until` holds for east's `ca.status`.
async fn watch_link(
    east: &Federation,
    west: &Federation,
    connects: f64,
    d: Duration,
    until: Option<&dyn Fn(&Value) -> bool>,
) -> Value {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let w = west.admin("peering.show", json!({ "peer": "east" })).await;
        if w["state"] != "connected" {
            west.fail(&format!("west's link to east dropped: {w}"));
        }
        let e = east.admin("peering.show", json!({ "peer": "west" })).await;
        if e["state"] != "connected" {
            east.fail(&format!("east's link to west dropped: {e}"));
        }
        let now = east.metric(CONNECTS, &["peer=\"west\""]).await;
        if now != connects {
            east.fail(&format!(
                "the peering stream reconnected: {CONNECTS} {connects} -> {now}"
            ));
        }
        let status = east.admin("ca.status", Value::Null).await;
        if let Some(f) = until
            && f(&status)
        {
            return status;
        }
        if tokio::time::Instant::now() > deadline {
            if until.is_some() {
                east.fail(&format!("timed out after {d:?}; ca.status {status}"));
            }
            return status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_keeps_the_link() {
    let a = export("shop", "a", 8080, None);
    let east = Federation::start(
        Spec::new("east", 51)
            .extra(json!({ "ca": { "leaf_lifetime": "4s" } }))
            .catalog(&catalog(std::slice::from_ref(&a), IMPORT_ALL)),
    )
    .await;
    let west = Federation::start(Spec::new("west", 52).catalog(&catalog(&[], IMPORT_ALL))).await;
    peer_via_cli(&east, &west).await;
    west.wait_catalog("west has shop/a", |c| has_route(c, "shop/a"))
        .await;
    east.wait_connected(&["west"]).await;
    // Let the link settle through one leaf renewal before taking the baseline.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let connects = east.metric(CONNECTS, &["peer=\"west\""]).await;
    assert!(connects >= 1.0, "no {CONNECTS} for west in /metrics");
    let seq_before = west.admin("peering.show", json!({ "peer": "east" })).await["bundle_sequence"]
        .as_u64()
        .expect("bundle_sequence");
    let status = east.admin("ca.status", Value::Null).await;
    assert_eq!(status["roots"], 1, "{status}");
    assert_eq!(status["rotation"], "Idle", "{status}");

    let out = east.cli_ok(&["ca", "rotate", "--json"]).await;
    let rotated: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(rotated["roots"], 2, "{rotated}");
    let new_root_seq = rotated["bundle_sequence"]
        .as_u64()
        .expect("bundle_sequence");
    let switched = watch_link(
        &east,
        &west,
        connects,
        crate::harness::CONVERGE,
        Some(&|s: &Value| s["rotation"] == "NewRootSigning"),
    )
    .await;
    assert_eq!(
        switched["roots"], 2,
        "both roots published during the overlap: {switched}"
    );
    let w = west.admin("peering.show", json!({ "peer": "east" })).await;
    assert!(
        w["bundle_sequence"].as_u64().unwrap_or(0) > seq_before,
        "west did not store east's new bundle (sequence {seq_before} before): {w}"
    );
    let e = east.admin("peering.show", json!({ "peer": "west" })).await;
    assert!(
        e["acked_our_bundle_sequence"].as_u64().unwrap_or(0) >= new_root_seq,
        "signing switched before west ACKed the bundle with the new root (sequence {new_root_seq}): {e}"
    );

    // Past the longest leaf lifetime since the switch, the old root can go.
    watch_link(&east, &west, connects, Duration::from_secs(5), None).await;
    let out = east.cli_ok(&["ca", "retire", "--json"]).await;
    assert!(out.contains("roots"), "ca retire printed {out}");
    let status = east.admin("ca.status", Value::Null).await;
    assert_eq!(status["roots"], 1, "{status}");

    // Several 4 s renewals later the link is up and catalog changes still flow.
    watch_link(&east, &west, connects, Duration::from_secs(10), None).await;
    let b = export("shop", "b", 8081, None);
    east.write_catalog(&catalog(&[a, b], IMPORT_ALL));
    west.wait_catalog("west has shop/b after the rotation", |c| {
        has_route(c, "shop/b")
    })
    .await;
    watch_link(&east, &west, connects, Duration::from_secs(1), None).await;
    east.assert_no_refused_updates();
    west.assert_no_refused_updates();
}
