//! The store under the federation, end to end: the etcd leader of a three-member cluster is
//! killed (SIGKILL) while catalog edits stream in, and a peer's delta too large for one etcd
//! request (the ports of 10,000 services) is stored in parts. Checked from the outside: the
//! peer's catalog, metrics, logs, and what etcd holds.

use std::collections::BTreeMap;
use std::time::Duration;

use isthmus_federation::testing::{EtcdCluster, EtcdServer};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::{
    Backend, CONVERGE, Federation, IMPORT_ALL, Spec, catalog, export, has_route, peer_via_cli,
    route,
};

/// Edits in the stream, one every `EDIT_EVERY`; the leader dies after `KILL_AFTER` of them.
const EDITS: usize = 24;
const EDIT_EVERY: Duration = Duration::from_millis(300);
const KILL_AFTER: usize = 6;
/// "Within a few seconds": an etcd election takes ~1-2 s, the file poll 200 ms.
const ARRIVAL: Duration = Duration::from_secs(8);

fn edit(upto: usize) -> String {
    let exports: Vec<String> = (0..=upto)
        .map(|i| export("stream", &format!("svc-{i:02}"), 7000 + i as u16, None))
        .collect();
    catalog(&exports, IMPORT_ALL)
}

/// Polls `peer`'s catalog for `within`, noting when each `stream/svc-NN` first appears.
async fn watch_arrivals(peer: &Federation, within: Duration, seen: &mut BTreeMap<usize, Instant>) {
    let until = Instant::now() + within;
    while Instant::now() < until {
        let c = peer.catalog().await;
        for i in 0..EDITS {
            if has_route(&c, &format!("stream/svc-{i:02}")) {
                seen.entry(i).or_insert_with(Instant::now);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Log lines of `fed` containing any of `needles`.
fn log_lines(fed: &Federation, needles: &[&str]) -> Vec<String> {
    let log = std::fs::read_to_string(fed.dir.join("federation.log")).unwrap_or_default();
    log.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_killed_under_catalog_edits_loses_nothing() {
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.leader().await;
    let mut endpoints = cluster.endpoints();
    endpoints.rotate_left(leader); // east talks to the leader until it dies
    let backend = Backend::Etcd(endpoints.join(","));
    let mut east = Federation::start(
        Spec::new("east", 33)
            .backend(&backend)
            .catalog(&catalog(&[], IMPORT_ALL)),
    )
    .await;
    let west = Federation::start(Spec::new("west", 34).catalog(&catalog(&[], IMPORT_ALL))).await;
    peer_via_cli(&east, &west).await;
    east.wait_connected(&["west"]).await;
    west.wait_connected(&["east"]).await;

    let mut written: BTreeMap<usize, Instant> = BTreeMap::new();
    let mut seen: BTreeMap<usize, Instant> = BTreeMap::new();
    for i in 0..EDITS {
        if i == KILL_AFTER {
            cluster.kill(leader);
        }
        east.write_catalog(&edit(i));
        written.insert(i, Instant::now());
        watch_arrivals(&west, EDIT_EVERY, &mut seen).await;
    }
    let last = Instant::now();
    while seen.len() < EDITS && last.elapsed() < ARRIVAL + Duration::from_secs(2) {
        watch_arrivals(&west, Duration::from_millis(500), &mut seen).await;
    }
    for (i, at) in &written {
        match seen.get(i) {
            Some(arrived) => {
                let took = arrived.duration_since(*at);
                assert!(
                    took <= ARRIVAL,
                    "edit {i} reached west {took:?} after it was made (kill after edit \
                     {KILL_AFTER})"
                );
            }
            None => east.fail(&format!(
                "edit {i} never reached west (the etcd leader was killed after edit \
                 {KILL_AFTER}); west saw {:?}",
                seen.keys().collect::<Vec<_>>()
            )),
        }
    }
    // East's own catalog is complete, too.
    let own = east.catalog().await;
    for i in 0..EDITS {
        let key = format!("stream/svc-{i:02}");
        assert!(has_route(&own, &key), "east lacks its own export {key}");
    }
    // No update was refused, and nothing failed in east's store.
    assert_eq!(
        west.metric("isthmus_federation_peer_updates", &["result=\"nacked"])
            .await,
        0.0,
        "west NACKed an update from east"
    );
    assert!(
        west.metric("isthmus_federation_peer_updates", &["result=\"acked\""])
            .await
            >= 1.0
    );
    west.assert_no_refused_updates();
    let failures = log_lines(
        &east,
        &[
            "chunks leak",
            "could not delete",
            "store unavailable",
            "a snapshot follows",
            "failed; retrying",
        ],
    );
    assert!(
        failures.is_empty(),
        "east's store failed while a minority of etcd was down:\n{}",
        failures.join("\n")
    );
    east.sigterm().await;
}

/// Services in the bulk edit: each port change makes the delta ~160 bytes larger.
const BULK: usize = 10_000;

fn bulk(port: u16) -> String {
    let exports: Vec<String> = (0..BULK)
        .map(|i| export("bulk", &format!("svc-{i:05}"), port, None))
        .collect();
    catalog(&exports, IMPORT_ALL)
}

fn on_port(catalog: &Value, key: &str, port: u16) -> bool {
    route(catalog, key).is_some_and(|r| r.to_string().contains(&format!("\"port\":{port}")))
}

/// A VIP range for 20,000 names (each service takes two).
fn wide_vips(index: u8) -> Value {
    json!({ "vips": { "ipv4": format!("127.{}.0.0/16", 100 + u16::from(index)) } })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_service_delta_is_stored_in_parts() {
    let etcd = EtcdServer::start().await;
    let east = Federation::start(
        Spec::new("east", 35)
            .extra(wide_vips(143))
            .catalog(&catalog(&[], IMPORT_ALL)),
    )
    .await;
    let west = Federation::start(
        Spec::new("west", 36)
            .backend(&Backend::Etcd(etcd.endpoint()))
            .extra(wide_vips(144))
            .catalog(&catalog(&[], IMPORT_ALL)),
    )
    .await;
    peer_via_cli(&east, &west).await;
    east.wait_connected(&["west"]).await;
    west.wait_connected(&["east"]).await;

    east.write_catalog(&bulk(8080));
    let (first, last) = ("bulk/svc-00000", format!("bulk/svc-{:05}", BULK - 1));
    west.wait_until(
        "west imports all bulk services on 8080",
        CONVERGE * 6,
        || async {
            let c = west.catalog().await;
            let done = on_port(&c, first, 8080) && on_port(&c, &last, 8080);
            (done, format!("{:?}", route(&c, first)))
        },
    )
    .await;
    let acked_before = west
        .metric("isthmus_federation_peer_updates", &["result=\"acked\""])
        .await;

    // One edit changes every port: a delta of ~1.6 MB, more than one etcd request holds.
    east.write_catalog(&bulk(9090));
    west.wait_until(
        "west has every bulk service on 9090",
        CONVERGE * 6,
        || async {
            let c = west.catalog().await;
            let done = (0..BULK)
                .step_by(997)
                .chain([BULK - 1])
                .all(|i| on_port(&c, &format!("bulk/svc-{i:05}"), 9090));
            (done, format!("{:?}", route(&c, first)))
        },
    )
    .await;
    assert_eq!(
        west.metric("isthmus_federation_peer_updates", &["result=\"nacked"])
            .await,
        0.0,
        "west NACKed the bulk delta"
    );
    let acked = west
        .metric("isthmus_federation_peer_updates", &["result=\"acked\""])
        .await;
    assert!(acked > acked_before, "no update acked after the bulk edit");
    west.assert_no_refused_updates();
    let fallbacks = log_lines(&east, &["a snapshot follows"]);
    assert!(
        fallbacks.is_empty(),
        "east fell back to a snapshot:\n{}",
        fallbacks.join("\n")
    );
    // West stored it as a delta (not a snapshot, which would have emptied the delta log), in
    // parts: its delta log holds a chunked value.
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("etcd client");
    let deltas = client
        .get(
            "/isthmus/west/peers/east/delta/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("read west's delta log");
    let chunked = deltas
        .kvs()
        .iter()
        .filter(|kv| kv.value().starts_with(b"\0isthmus-chunked:"))
        .count();
    assert!(
        chunked >= 1,
        "west's delta log from east holds no delta stored in parts ({} entries)",
        deltas.kvs().len()
    );
    drop(west);
    drop(east);
}
