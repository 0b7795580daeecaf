//! Step c of the export scenario: a rolling restart of cart's 20 pods (zone-a -> zone-b), four
//! EndpointSlices edited in parallel, two edits per pod (the old pod terminating while its
//! replacement starts, then the replacement ready and the old one gone). Every pod is a real
//! HTTP backend on a loopback address, and a client calls cart through east's gateway (and so
//! west's) without pause the whole time: no request may fail, the edits are batched into far
//! fewer updates to east than edits, east never sees cart dark, and afterwards the requests
//! reach the new pods. An old pod exits [`GRACE`] after the edit that removed it, as a pod
//! with a preStop delay does (Kubernetes removes an endpoint and stops the pod concurrently;
//! the grace is what lets every proxy learn first).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::operator::{Ep, Kubectl, slice_on};
use super::traffic::{Client, Pod};
use super::{CART, REACH, until_east, zones};
use crate::harness::gateway::Gateway;
use crate::harness::{Federation, healthy};

/// How long an old pod keeps serving after the edit that removed it.
const GRACE: Duration = Duration::from_secs(3);
const HOST: &str = "cart.shop.svc.clusterset.local:80";

/// Pod `i` (1..=5) of slice `s` (0..4): old ones on 127.0.152.100-119, new on .120-139.
fn pod_ip(s: u8, i: u8, new: bool) -> IpAddr {
    let base = if new { 120 } else { 100 };
    IpAddr::V4(Ipv4Addr::new(127, 0, 152, base + 5 * s + i - 1))
}

async fn sent(f: &Federation) -> f64 {
    f.metric("isthmus_federation_peer_updates_sent", &["peer=\"east\""])
        .await
}

async fn events(f: &Federation) -> f64 {
    f.metric(
        "isthmus_federation_kubernetes_watch_events_total",
        &["resource=\"endpointslices\""],
    )
    .await
}

/// Slice `s` during the roll: pods before `step` replaced, pod `step` terminating (its
/// replacement starting) or replaced when `done`, the rest old.
fn edit(s: u8, step: u8, done: bool, port: u16) -> Value {
    let mut eps = Vec::new();
    for i in 1..=5u8 {
        let (old, new) = (
            pod_ip(s, i, false).to_string(),
            pod_ip(s, i, true).to_string(),
        );
        if i < step || (i == step && done) {
            eps.push(Ep(new, true, false, "zone-b"));
        } else if i == step {
            eps.push(Ep(old, false, true, "zone-a"));
            eps.push(Ep(new, false, false, "zone-b"));
        } else {
            eps.push(Ep(old, true, false, "zone-a"));
        }
    }
    slice_on("shop", "cart", &format!("cart-{s}"), port, &eps)
}

pub async fn rolling_restart(k: &Kubectl, west: &Federation, east: &Federation) {
    // The 20 running pods, on one free port, replace the fake addresses of steps a and b.
    let first = std::net::TcpListener::bind((pod_ip(0, 1, false), 0)).expect("free port");
    let port = first.local_addr().expect("addr").port();
    drop(first);
    let mut old = Vec::new();
    for s in 0..4u8 {
        for i in 1..=5u8 {
            old.push(Pod::start(SocketAddr::new(pod_ip(s, i, false), port)).await);
        }
    }
    let _wgw = Gateway::start(west, "wgw", json!({})).await;
    let egw = Gateway::start(east, "egw", json!({})).await;
    k.apply(
        &(0..4u8)
            .map(|s| edit(s, 0, false, port))
            .collect::<Vec<_>>(),
    )
    .await;
    until_east(
        east,
        "20 real pods in zone-a",
        crate::harness::CONVERGE,
        |c| zones(c) == Some(json!({"zone-a": 20})),
    )
    .await;
    let client = Client::start(egw.proxy, HOST);
    let warm = Instant::now();
    while !client.snapshot().iter().any(|(_, r)| r.is_ok()) {
        if warm.elapsed() > crate::harness::CONVERGE {
            egw.fail(&format!(
                "no request reached cart: {:?}",
                client.snapshot().last()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Count from the first answer on: the roll starts with traffic flowing.
    let served_from = client.snapshot().len() - 1;

    let (sent0, events0) = (sent(west).await, events(west).await);
    let started = Instant::now();
    let watcher = async {
        // East never sees cart without a healthy endpoint in west while pods roll.
        let mut lowest = u64::MAX;
        while started.elapsed() < Duration::from_secs(60) {
            let c = east.catalog().await;
            lowest = lowest.min(healthy(&c, CART, "west").unwrap_or(0));
            if zones(&c) == Some(json!({"zone-b": 20})) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lowest
    };
    let old = &old;
    let rollers = futures_util::future::join_all((0..4u8).map(|s| async move {
        let mut new = Vec::new();
        let mut exits = Vec::new();
        for step in 1..=5u8 {
            new.push(Pod::start(SocketAddr::new(pod_ip(s, step, true), port)).await);
            k.apply(&[edit(s, step, false, port)]).await;
            k.apply(&[edit(s, step, true, port)]).await;
            let pod = &old[usize::from(s * 5 + step - 1)];
            exits.push(async move {
                tokio::time::sleep(GRACE).await;
                pod.stop();
            });
        }
        futures_util::future::join_all(exits).await;
        new
    }));
    let (new, lowest) = tokio::join!(rollers, watcher);
    let edits_done = started.elapsed();
    let took = until_east(east, "all 20 replacements healthy in zone-b", REACH, |c| {
        zones(c) == Some(json!({"zone-b": 20}))
    })
    .await;
    // Every old pod has exited; let the client run on the new ones for a moment.
    let rolled = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let outcomes = client.snapshot()[served_from..].to_vec();
    drop(client);
    let updates = sent(west).await - sent0;
    let seen = events(west).await - events0;

    let failed: Vec<&String> = outcomes
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    let new_ips: BTreeSet<String> = new
        .iter()
        .flatten()
        .map(|p| p.addr.ip().to_string())
        .collect();
    let after: Vec<&String> = outcomes
        .iter()
        .filter(|(at, _)| *at >= rolled)
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let reached_new: BTreeSet<&String> = outcomes
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .filter(|ip| new_ips.contains(*ip))
        .collect();
    eprintln!(
        "c. rolling restart: 40 EndpointSlice edits in {edits_done:?}, {seen} watch events at west, \
         {updates} catalog updates sent to east; last change at east {took:?} after the last edit; \
         lowest healthy count east saw: {lowest}; {} requests through the gateways, {} failed, \
         {} new pods answered, {} requests after the roll",
        outcomes.len(),
        failed.len(),
        reached_new.len(),
        after.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the roll, e.g. {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        !after.is_empty() && after.iter().all(|ip| new_ips.contains(*ip)),
        "after the roll requests must reach the new pods only: {after:?}"
    );
    assert!(
        seen >= 40.0,
        "west saw {seen} EndpointSlice events for 40 edits"
    );
    assert!(
        lowest > 0,
        "east saw cart with no healthy endpoint in west during the restart"
    );
    assert!(
        updates >= 1.0 && updates * 2.0 <= 40.0,
        "40 edits became {updates} updates to east: not batched"
    );
}
