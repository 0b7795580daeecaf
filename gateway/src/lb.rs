//! Choosing where a request goes. Outbound: which peer cluster (and which of its gateways) serves
//! a service, in tiers — the pinned cluster only, else the same region first, then the others,
//! each tier weighted by the exporters' weights. Inbound: which local endpoint, by
//! power-of-two-choices over weighted samples, scored by latency (EWMA) times load.
//! The choices are pure functions of their inputs and a random source, table-tested.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::table::{Backend, LocalEndpoint, Target};

/// A cheap per-thread random source (xorshift64*), seeded from the OS-randomised hasher keys.
pub fn random() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::hash::RandomState::new().build_hasher();
            h.write_u64(0x9e37_79b9_7f4a_7c15);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Index drawn with probability proportional to `weight(i)`; `None` for an empty or all-zero set.
fn weighted_index(weights: impl Iterator<Item = u64> + Clone, r: u64) -> Option<usize> {
    let total: u64 = weights.clone().sum();
    if total == 0 {
        return None;
    }
    let mut point = r % total;
    for (i, w) in weights.enumerate() {
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

/// Whether a cluster can be tried at all: it has a gateway and its exporter reports a healthy
/// endpoint.
fn usable(b: &Backend, my_cluster: &str) -> bool {
    (!b.gateways.is_empty() || &*b.cluster == my_cluster) && b.healthy > 0
}

/// The clusters to try for `target`, best first: a pinned target gets only its cluster; else
/// this cluster itself when it serves the service, then fresh clusters in the caller's region,
/// then fresh ones elsewhere, then stale ones. Within a tier the first pick is weighted by the
/// exporters' weights, the rest follow in weighted order.
pub fn cluster_order<'a>(
    target: &'a Target,
    my_cluster: &str,
    my_region: &str,
    mut rand: impl FnMut() -> u64,
) -> Vec<&'a Backend> {
    let backends = &target.import.backends;
    if let Some(pinned) = &target.pinned {
        return backends
            .iter()
            .filter(|b| &b.cluster == pinned && usable(b, my_cluster))
            .collect();
    }
    let tier = |b: &Backend| match (b.stale, &*b.cluster == my_cluster, &*b.region == my_region) {
        (false, true, _) => 0,
        (false, false, true) => 1,
        (false, false, false) => 2,
        (true, _, _) => 3,
    };
    let mut out = Vec::with_capacity(backends.len());
    for t in 0..4 {
        let mut pool: Vec<&Backend> = backends
            .iter()
            .filter(|b| usable(b, my_cluster) && tier(b) == t)
            .collect();
        while !pool.is_empty() {
            let i = weighted_index(pool.iter().map(|b| u64::from(b.weight)), rand()).unwrap_or(0);
            out.push(pool.swap_remove(i));
        }
    }
    out
}

/// Latency and load of one local endpoint.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// EWMA of response latency, nanoseconds (0 = no sample yet).
    ewma_ns: AtomicU64,
    in_flight: AtomicU32,
}

/// Weight of a new latency sample in the EWMA, out of 16.
const EWMA_NEW_SIXTEENTHS: u64 = 4;

impl EndpointStats {
    pub fn observe(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        // A lost race only drops one sample; the average stays an average.
        let old = self.ewma_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * (16 - EWMA_NEW_SIXTEENTHS) + sample * EWMA_NEW_SIXTEENTHS) / 16
        };
        self.ewma_ns.store(new, Ordering::Relaxed);
    }

    /// Lower is better: expected latency times the requests already waiting.
    fn score(&self, weight: u32) -> u128 {
        let ewma = u128::from(self.ewma_ns.load(Ordering::Relaxed).max(1));
        let load = u128::from(self.in_flight.load(Ordering::Relaxed)) + 1;
        ewma * load * 1000 / u128::from(weight.max(1))
    }
}

/// Counts a request in flight on an endpoint until dropped.
pub struct InFlight(Arc<EndpointStats>);

impl InFlight {
    pub fn stats(&self) -> &EndpointStats {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-endpoint statistics shared by every connection of the inbound side.
#[derive(Debug, Default)]
pub struct Balancer {
    stats: RwLock<HashMap<SocketAddr, Arc<EndpointStats>>>,
}

impl Balancer {
    fn stats(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        if let Some(s) = self.stats.read().ok().and_then(|m| m.get(&addr).cloned()) {
            return s;
        }
        let mut map = match self.stats.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Endpoints come and go with the catalog; keep the table bounded.
        if map.len() > 65_536 {
            map.clear();
        }
        map.entry(addr).or_default().clone()
    }

    /// Power of two choices: two weighted samples, the lower score wins.
    pub fn pick<'a>(
        &self,
        endpoints: &'a [LocalEndpoint],
    ) -> Option<(&'a LocalEndpoint, InFlight)> {
        let weights = endpoints.iter().map(|e| u64::from(e.weight));
        let a = weighted_index(weights.clone(), random())?;
        let b = weighted_index(weights, random())?;
        let (ea, eb) = (&endpoints[a], &endpoints[b]);
        let (sa, sb) = (self.stats(ea.address), self.stats(eb.address));
        let (endpoint, stats) = if a == b || sa.score(ea.weight) <= sb.score(eb.weight) {
            (ea, sa)
        } else {
            (eb, sb)
        };
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((endpoint, InFlight(stats)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::table::{Import, PeerGateway};

    fn backend(cluster: &str, region: &str, weight: u32, healthy: u32, stale: bool) -> Backend {
        Backend {
            cluster: cluster.into(),
            trust_domain: format!("{cluster}.mesh").into(),
            region: region.into(),
            zone: "".into(),
            gateways: vec![PeerGateway {
                name: "gw".into(),
                address: "127.0.0.1:1".into(),
                zone: "".into(),
            }],
            healthy,
            weight,
            stale,
        }
    }

    fn target(backends: Vec<Backend>, pinned: Option<&str>) -> Target {
        Target {
            import: Arc::new(Import::new("cart.shop".into(), vec![], backends)),
            pinned: pinned.map(Into::into),
        }
    }

    fn order(t: &Target, region: &str) -> Vec<String> {
        let mut n = 0u64;
        cluster_order(t, "here", region, || {
            n += 1;
            n
        })
        .iter()
        .map(|b| b.cluster.to_string())
        .collect()
    }

    #[test]
    fn tiers_same_region_then_others_then_stale_and_unusable_never() {
        let mut no_gateway = backend("north", "eu", 1, 3, false);
        no_gateway.gateways.clear();
        type Case<'a> = (Vec<Backend>, Option<&'a str>, &'a str, Vec<&'a str>);
        let cases: Vec<Case<'_>> = vec![
            (
                vec![
                    backend("west", "us", 1, 1, false),
                    backend("south", "sa", 1, 1, false),
                    backend("east", "eu", 1, 1, false),
                ],
                None,
                "eu",
                vec!["east", "*", "*"],
            ),
            (
                vec![
                    backend("west", "us", 1, 1, true),
                    backend("south", "sa", 1, 1, false),
                ],
                None,
                "us",
                vec!["south", "west"],
            ),
            (
                vec![backend("west", "us", 1, 0, false), no_gateway],
                None,
                "us",
                vec![],
            ),
            (
                vec![
                    backend("west", "us", 1, 1, false),
                    backend("south", "sa", 1, 1, false),
                ],
                Some("south"),
                "us",
                vec!["south"],
            ),
            (
                vec![backend("west", "us", 1, 0, false)],
                Some("west"),
                "us",
                vec![],
            ),
            (
                vec![
                    backend("west", "us", 1, 1, false),
                    backend("here", "eu", 1, 1, false),
                ],
                None,
                "us",
                vec!["here", "west"],
            ),
        ];
        for (backends, pinned, region, want) in cases {
            let t = target(backends, pinned);
            let got = order(&t, region);
            assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
            for (g, w) in got.iter().zip(&want) {
                assert!(*w == "*" || g == w, "{got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn weights_split_the_first_pick() {
        let t = target(
            vec![
                backend("west", "us", 3, 1, false),
                backend("south", "us", 1, 1, false),
            ],
            None,
        );
        let mut west = 0;
        for r in 0..4000u64 {
            let first = cluster_order(&t, "here", "us", || r)[0].cluster.clone();
            if &*first == "west" {
                west += 1;
            }
        }
        assert_eq!(west, 3000, "weights 3:1 over a uniform sweep");
    }

    fn ep(port: u16, weight: u32) -> LocalEndpoint {
        LocalEndpoint::new(SocketAddr::from(([10, 0, 0, 1], port)), "".into(), weight)
            .expect("endpoint")
    }

    #[test]
    fn p2c_prefers_the_faster_endpoint_and_honours_weights() {
        let lb = Balancer::default();
        let eps = [ep(1, 1), ep(2, 1)];
        lb.stats(eps[0].address).observe(Duration::from_millis(50));
        lb.stats(eps[1].address).observe(Duration::from_millis(1));
        let mut fast = 0;
        for _ in 0..1000 {
            let (ep, _guard) = lb.pick(&eps).expect("pick");
            if ep.address == eps[1].address {
                fast += 1;
            }
        }
        // Two samples are the same endpoint half the time; otherwise the fast one wins.
        assert!(fast > 650, "fast endpoint chosen {fast}/1000");

        let lb = Balancer::default();
        let eps = [ep(1, 9), ep(2, 1)];
        let mut heavy = 0;
        for _ in 0..1000 {
            let (ep, guard) = lb.pick(&eps).expect("pick");
            let addr = ep.address;
            guard.stats().observe(Duration::from_millis(1));
            drop(guard);
            if addr == eps[0].address {
                heavy += 1;
            }
        }
        assert!(heavy > 800, "weight 9 endpoint chosen {heavy}/1000");
        assert!(lb.pick(&[]).is_none());
    }

    #[test]
    fn in_flight_requests_count_against_an_endpoint() {
        let lb = Balancer::default();
        let eps = [ep(1, 1), ep(2, 1)];
        for e in &eps {
            lb.stats(e.address).observe(Duration::from_millis(1));
        }
        let held: Vec<_> = (0..20).map(|_| lb.pick(&eps[..1]).expect("pick")).collect();
        let mut second = 0;
        for _ in 0..200 {
            if lb.pick(&eps).expect("pick").0.address == eps[1].address {
                second += 1;
            }
        }
        assert!(second > 130, "the loaded endpoint is avoided: {second}/200");
        drop(held);
    }
}
