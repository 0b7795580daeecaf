//! Benchmark, not a test and not run in CI (numbers in BENCHMARKS.md, "Global DNS"):
//! snapshot rebuild time for a one-service change, and name lookup cost, on the catalog
//! `e2e/bench/dns.sh` serves (N services in 100 namespaces, one cluster, one port).
//!
//! ```sh
//! cargo bench -p isthmus-dns --bench rebuild
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus_federation::config::DnsConfig;
use isthmus_federation::mesh::MeshView;
use isthmus_federation::model::{ServiceKey, ZoneCounts};
use serde_json::json;

use isthmus_dns::health::Verdicts;
use isthmus_dns::rebuild::Rebuilder;
use isthmus_dns::settings::Settings;
use isthmus_dns::snapshot::{Node, compile};
use isthmus_dns::{name, view_from_json_bytes, zone};

fn vip(i: usize, base: u8) -> String {
    format!("{base}.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
}

/// The catalog, with `ns-0/svc-0` at 0 endpoints unless `healthy0`.
fn catalog(n: usize, healthy0: bool) -> Vec<u8> {
    let mut routes = serde_json::Map::new();
    let ports = json!([{ "name": "http", "port": 8080, "protocol": "http" }]);
    for i in 0..n {
        let key = format!("ns-{}/svc-{i}", i % 100);
        let healthy = u32::from(i > 0 || healthy0);
        let summary = json!({ "key": key, "ports": ports, "zones": { "us-east": healthy },
            "weight": 100, "metadata": {}, "headless": false, "exported_at_ms": 1 });
        let place = json!({ "cluster": "east", "trust_domain": "east.mesh", "region": "us-east" });
        let route = json!({
            "key": key, "defined_by": "east", "ports": ports, "headless": false,
            "clusters": [{ "place": place, "local": true, "stale": false, "summary": summary }],
            "conflicts": [], "vips": { "v4": vip(i, 10) },
            "cluster_vips": [["east", { "v4": vip(i, 11) }]],
        });
        routes.insert(key, route);
    }
    let me = json!({ "cluster": "east", "trust_domain": "east.mesh", "region": "us-east" });
    serde_json::to_vec(&json!({ "version": 1, "me": me, "routes": routes })).expect("json")
}

/// `base` with `ns-0/svc-0`'s only cluster healthy or at 0 endpoints: the one route that
/// changes, in a copy sharing every other shard of the route map (as the federation publishes).
fn with_health(base: &MeshView, healthy: bool, version: u64) -> MeshView {
    let key = ServiceKey::parse("ns-0/svc-0").expect("key");
    let original = base.routes.get(&key).expect("svc-0");
    let mut route = (**original).clone();
    let mut summary = (*route.clusters[0].summary).clone();
    summary.zones = if healthy {
        original.clusters[0].summary.zones.clone()
    } else {
        ZoneCounts::default()
    };
    route.clusters[0].summary = Arc::new(summary);
    let mut v = base.clone();
    v.routes.insert(key, Arc::new(route));
    v.version = version;
    v
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// 100,000 existing and 100,000 absent names, in random order.
fn lookup_names(n: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let hits = (0..100_000)
        .map(|_| {
            let i = (next() % n as u64) as usize;
            name::wire(&format!("svc-{i}.ns-{}.svc.clusterset.local", i % 100))
        })
        .collect();
    let misses = (0..100_000)
        .map(|_| {
            let (i, ns) = (next() % 1_000_000_000, next() % 100);
            name::wire(&format!("nosuch-{i}.ns-{ns}.svc.clusterset.local"))
        })
        .collect();
    (hits, misses)
}

fn main() {
    let cfg: DnsConfig = serde_json::from_value(json!({ "bind": "127.0.0.1:5353" })).expect("cfg");
    let settings = Arc::new(Settings::from_config(&cfg, None));
    let verdicts = Arc::new(Verdicts::default());
    for n in [10_000usize, 100_000] {
        let files = [catalog(n, true), catalog(n, false)];
        let base = view_from_json_bytes(&files[0]).expect("view");
        let t = Instant::now();
        let scratch = compile(&zone::plan(&base, &settings, &verdicts), &settings, 1, 1);
        let from_scratch = t.elapsed();
        drop(scratch);
        let mut rebuilder = Rebuilder::new(settings.clone());
        let t = Instant::now();
        let mut snap = rebuilder
            .update(&Arc::new(base.clone()), &verdicts, 1)
            .snapshot;
        let first = t.elapsed();
        let mut times = Vec::new();
        for round in 0..9u64 {
            let view = Arc::new(with_health(&base, round % 2 == 1, round + 2));
            let t = Instant::now();
            let rebuilt = rebuilder.update(&view, &verdicts, 2 + round as u32);
            times.push(t.elapsed());
            assert_eq!(rebuilt.replanned, 1);
            snap = rebuilt.snapshot;
        }
        // The same change in a view read afresh (`isthmus dns --snapshot` re-reading its file):
        // no shard is shared, so every route is compared by value, and the old view is freed.
        let mut afresh = Vec::new();
        for round in 0..5u64 {
            let mut view = view_from_json_bytes(&files[(round as usize + 1) % 2]).expect("view");
            view.version = 20 + round;
            let view = Arc::new(view);
            let t = Instant::now();
            let rebuilt = rebuilder.update(&view, &verdicts, 20 + round as u32);
            afresh.push(t.elapsed());
            assert_eq!(rebuilt.replanned, 1);
            snap = rebuilt.snapshot;
        }
        let (hits, misses) = lookup_names(n);
        // Lookups: the snapshot's sharded table against one `std` `HashMap` holding the same
        // entries (what a snapshot held before), passes interleaved so that the machine's noise
        // falls on both; the fastest pass of each counts.
        let flat: HashMap<Box<[u8]>, Node> = snap
            .nodes
            .iter()
            .map(|(k, n)| (Box::from(k), n.clone()))
            .collect();
        let mut best = [[Duration::MAX; 2]; 2];
        for _ in 0..15 {
            for (i, names) in [&hits, &misses].into_iter().enumerate() {
                let t = Instant::now();
                let sharded = names.iter().filter(|q| snap.nodes.get(q).is_some()).count();
                best[0][i] = best[0][i].min(t.elapsed());
                let t = Instant::now();
                let one = names
                    .iter()
                    .filter(|q| flat.contains_key(q.as_slice()))
                    .count();
                best[1][i] = best[1][i].min(t.elapsed());
                assert_eq!(sharded, one);
                assert_eq!(sharded, if i == 0 { names.len() } else { 0 });
            }
        }
        let ns = |d: Duration| d.as_nanos() as f64 / hits.len() as f64;
        println!(
            "{n} services, {} names: from scratch {:.1} ms, first update {:.1} ms, \
             one-service change {:.3} ms (median of 9; view read afresh: {:.1} ms, median of 5); \
             lookup hit/miss: sharded table {:.1}/{:.1} ns, one HashMap {:.1}/{:.1} ns",
            snap.nodes.len(),
            ms(from_scratch),
            ms(first),
            ms(median(times)),
            ms(median(afresh)),
            ns(best[0][0]),
            ns(best[0][1]),
            ns(best[1][0]),
            ns(best[1][1]),
        );
    }
}
