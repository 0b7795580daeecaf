//! The import writer follows, within 2 s and seen with `kubectl get -o json`: west's healthy
//! endpoints going to zero and back (`status.clusters`), east's gateway judging west's gateway
//! down and up again (a verdict alone, with no change in the mesh view: west's gateway
//! registers with a long lease), and east's own gateway leaving (its lease ends) and coming
//! back (the EndpointSlice's endpoints).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{DEADLINE, Kubectl, POD_IP, POD_IP_B};
use crate::harness::gateway::Gateway;
use crate::harness::{CONVERGE, Federation, healthy};

/// East's gateway's registration TTL (the harness's `registration_ttl`).
const GATEWAY_TTL: Duration = Duration::from_secs(3);

/// Polls (every 50 ms) until `check` holds for what kubectl shows, failing past `deadline`;
/// returns how long it took.
async fn until_kubectl(
    east: &Federation,
    k: &Kubectl,
    what: &str,
    deadline: Duration,
    args: &[&str],
    check: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let seen = k.get(args).await.unwrap_or(Value::Null);
        if check(&seen) {
            return start.elapsed();
        }
        if start.elapsed() > deadline {
            east.fail(&format!(
                "not within {deadline:?}: {what}; kubectl get {args:?}: {seen}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `status.clusters` (absent when empty: the writer leaves an empty list out).
fn clusters_are(want: Value) -> impl Fn(&Value) -> bool {
    move |si: &Value| {
        si.is_object()
            && match &si["status"]["clusters"] {
                Value::Null => want == json!([]),
                c => *c == want,
            }
    }
}

async fn clusters_follow(east: &Federation, k: &Kubectl, what: &str, want: Value) -> Duration {
    until_kubectl(
        east,
        k,
        what,
        DEADLINE,
        &["serviceimport", "cart", "-n", "shop"],
        clusters_are(want),
    )
    .await
}

/// The addresses of a slice's ready endpoints.
fn addresses(slice: &Value) -> Vec<String> {
    slice["endpoints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|e| e["conditions"]["ready"] == true)
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// East's gateway's verdict on west for shop/cart, from east's `status`.
async fn verdict(east: &Federation) -> Option<bool> {
    let s = east.try_admin("status", Value::Null).await.ok()?;
    s["gateways"]["gw1"]["health"]["west:shop/cart"].as_bool()
}

async fn wait_verdict(east: &Federation, want: bool) {
    east.wait_until(
        &format!("east's gateway judges west {want} for cart"),
        CONVERGE,
        || async move {
            let v = verdict(east).await;
            (v == Some(want), format!("{v:?}"))
        },
    )
    .await;
}

/// Runs the three checks. `west_catalog(false)` is west's catalog with cart's endpoints gone;
/// `east_gw` (one of east's two replicas) is killed and started again.
pub async fn writer_follows_verdicts_and_leases(
    west: &Federation,
    east: &Federation,
    k: &Kubectl,
    west_catalog: &dyn Fn(bool) -> String,
    west_gw: Gateway,
    east_gw: &mut Gateway,
) {
    let west_only = json!([{ "cluster": "west" }]);
    clusters_follow(east, k, "west serves cart", west_only.clone()).await;

    // West's endpoints go to zero, then come back: measured from east's catalog showing it.
    west.write_catalog(&west_catalog(false));
    east.wait_catalog("west has no healthy cart", |c| {
        healthy(c, "shop/cart", "west") == Some(0)
    })
    .await;
    let took = clusters_follow(east, k, "west drops out of status.clusters", json!([])).await;
    eprintln!("endpoints to zero: status.clusters followed in {took:?}");
    west.write_catalog(&west_catalog(true));
    east.wait_catalog("west has a healthy cart again", |c| {
        healthy(c, "shop/cart", "west") == Some(1)
    })
    .await;
    let took = clusters_follow(
        east,
        k,
        "west is back in status.clusters",
        west_only.clone(),
    )
    .await;
    eprintln!("endpoints back: status.clusters followed in {took:?}");

    // West's gateway dies (its 60 s lease outlives this step, so west still advertises it and
    // east's mesh view does not change): only east's gateway's verdict says west is down.
    drop(west_gw);
    wait_verdict(east, false).await;
    let took = clusters_follow(east, k, "a verdict takes west out", json!([])).await;
    eprintln!("verdict down: status.clusters followed in {took:?}");
    let west_gw = Gateway::start(west, "wgw", json!({ "registration_ttl": "60s" })).await;
    wait_verdict(east, true).await;
    let took = clusters_follow(east, k, "a verdict brings west back", west_only).await;
    eprintln!("verdict up: status.clusters followed in {took:?}");
    drop(west_gw);

    // One of east's gateway replicas stops: once its lease ends (TTL after the kill), the slice
    // loses it and keeps the other.
    let slice = ["endpointslice", "isthmus-cart", "-n", "shop"];
    east_gw.kill9().await;
    let took = until_kubectl(
        east,
        k,
        "the stopped replica leaves the slice",
        GATEWAY_TTL + DEADLINE,
        &slice,
        |s| addresses(s) == [POD_IP_B],
    )
    .await;
    eprintln!("replica stopped: slice lost it {took:?} after the kill (lease TTL {GATEWAY_TTL:?})");
    // Back: within 2 s of the restarted process being ready (it registers as it starts).
    east_gw.restart().await;
    let took = until_kubectl(
        east,
        k,
        "the restarted replica is back in the slice",
        DEADLINE,
        &slice,
        |s| addresses(s) == [POD_IP, POD_IP_B],
    )
    .await;
    eprintln!("replica back: slice followed in {took:?}");
}
