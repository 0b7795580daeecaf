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

use crate::health::Verdict;
use crate::policy::ServicePolicy;
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

/// The failover tier of a cluster: this cluster, the caller's region, other regions.
fn tier(b: &Backend, my_cluster: &str, my_region: &str) -> usize {
    if &*b.cluster == my_cluster {
        0
    } else if &*b.region == my_region {
        1
    } else {
        2
    }
}

/// The share of traffic each tier takes, tier 0 first (pure; Envoy's priority load with an
/// explicit threshold). A tier whose healthy share (slow-start factors count fractionally) is
/// at least `threshold` takes everything still unassigned; below it, it takes
/// `share / threshold` of what is left and the rest spills to the next tier. When even the
/// last tier cannot take it all, the loads are scaled up to sum to 1 over the healthy tiers.
pub fn tier_loads(shares: &[f64], threshold: f64) -> Vec<f64> {
    let mut loads = Vec::with_capacity(shares.len());
    let mut left = 1.0;
    for &share in shares {
        let take = if threshold <= 0.0 || share >= threshold {
            1.0
        } else {
            share / threshold
        };
        let load = left * take;
        loads.push(load);
        left -= load;
    }
    let total: f64 = loads.iter().sum();
    if total > 0.0 && total < 1.0 {
        for l in &mut loads {
            *l /= total;
        }
    }
    loads
}

/// The clusters to try for `target`, best first. A pinned target gets only its cluster. Else:
/// clusters outside the policy's fence are never chosen; the first pick follows the tier loads
/// (this cluster, the caller's region, other regions) and, within a tier, the exporters'
/// weights times the slow-start factor; the rest follow in tier order as retry candidates.
/// Unhealthy clusters come last — tried only when nothing healthy is left (panic mode), so a
/// mesh-wide false alarm never turns into a total outage.
pub fn cluster_order<'a>(
    target: &'a Target,
    my_cluster: &str,
    my_region: &str,
    policy: &ServicePolicy,
    verdict: impl Fn(&Backend) -> Verdict,
    mut rand: impl FnMut() -> u64,
) -> Vec<&'a Backend> {
    let backends = &target.import.backends;
    if let Some(pinned) = &target.pinned {
        return backends
            .iter()
            .filter(|b| &b.cluster == pinned && usable(b, my_cluster))
            .collect();
    }
    let fenced = |b: &Backend| {
        policy
            .fence_regions
            .as_ref()
            .is_none_or(|regions| regions.contains(&b.region))
    };
    let candidates: Vec<(&Backend, Verdict, usize)> = backends
        .iter()
        .filter(|b| usable(b, my_cluster) && fenced(b))
        .map(|b| (b, verdict(b), tier(b, my_cluster, my_region)))
        .filter(|(_, v, _)| !v.dropped)
        .collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    let mut shares = [0.0f64; 3];
    let mut sizes = [0usize; 3];
    for (_, v, t) in &candidates {
        sizes[*t] += 1;
        if v.healthy {
            shares[*t] += v.factor;
        }
    }
    let shares: Vec<f64> = (0..3)
        .map(|t| {
            if sizes[t] == 0 {
                0.0
            } else {
                shares[t] / sizes[t] as f64
            }
        })
        .collect();
    let loads = tier_loads(&shares, policy.threshold);
    let unit = |r: u64| (r >> 11) as f64 / (1u64 << 53) as f64;
    // The first tier, by load.
    let mut point = unit(rand());
    let mut first_tier = None;
    for (t, load) in loads.iter().enumerate() {
        if *load > 0.0 && point < *load {
            first_tier = Some(t);
            break;
        }
        point -= load;
    }
    let first_tier = first_tier.or_else(|| loads.iter().rposition(|l| *l > 0.0));
    let mut out = Vec::with_capacity(candidates.len());
    let mut order_tier = |t: usize, healthy: bool, out: &mut Vec<&'a Backend>| {
        let mut pool: Vec<(&'a Backend, f64)> = candidates
            .iter()
            .filter(|(_, v, ct)| *ct == t && v.healthy == healthy)
            .map(|(b, v, _)| (*b, if healthy { v.factor } else { 1.0 }))
            .collect();
        while !pool.is_empty() {
            let weights = pool
                .iter()
                .map(|(b, f)| ((f64::from(b.weight) * f * 1000.0) as u64).max(1));
            let i = weighted_index(weights, rand()).unwrap_or(0);
            out.push(pool.swap_remove(i).0);
        }
    };
    if let Some(t) = first_tier {
        order_tier(t, true, &mut out);
    }
    for t in 0..3 {
        if Some(t) != first_tier {
            order_tier(t, true, &mut out);
        }
    }
    for t in 0..3 {
        order_tier(t, false, &mut out);
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
            confirmed_at: tokio::time::Instant::now(),
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
        let policy = ServicePolicy::default();
        cluster_order(
            t,
            "here",
            region,
            &policy,
            |_| Verdict::HEALTHY,
            || {
                n += 1;
                n
            },
        )
        .iter()
        .map(|b| b.cluster.to_string())
        .collect()
    }

    #[test]
    fn tiers_this_cluster_then_same_region_then_others_and_unusable_never() {
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
                vec!["west", "south"],
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
            let policy = ServicePolicy::default();
            let first = cluster_order(&t, "here", "us", &policy, |_| Verdict::HEALTHY, || r)[0]
                .cluster
                .clone();
            if &*first == "west" {
                west += 1;
            }
        }
        assert_eq!(west, 3000, "weights 3:1 over a uniform sweep");
    }

    #[test]
    fn tier_loads_spill_below_the_threshold() {
        let cases: [(&[f64], f64, &[f64]); 6] = [
            (&[1.0, 1.0, 1.0], 0.7, &[1.0, 0.0, 0.0]),
            (&[0.7, 1.0, 1.0], 0.7, &[1.0, 0.0, 0.0]),
            (&[0.35, 1.0, 1.0], 0.7, &[0.5, 0.5, 0.0]),
            (&[0.0, 0.35, 1.0], 0.7, &[0.0, 0.5, 0.5]),
            (&[0.0, 0.0, 0.35], 0.7, &[0.0, 0.0, 1.0]),
            (&[0.0, 0.0, 0.0], 0.7, &[0.0, 0.0, 0.0]),
        ];
        for (shares, threshold, want) in cases {
            let got = tier_loads(shares, threshold);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-9, "{shares:?}: {got:?} vs {want:?}");
            }
        }
    }

    fn first_picks(
        t: &Target,
        policy: &ServicePolicy,
        verdict: impl Fn(&Backend) -> Verdict + Copy,
    ) -> std::collections::BTreeMap<String, u32> {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..2000 {
            let order = cluster_order(t, "here", "us", policy, verdict, random);
            *seen
                .entry(
                    order
                        .first()
                        .map_or("-".to_string(), |b| b.cluster.to_string()),
                )
                .or_insert(0) += 1;
        }
        seen
    }

    #[test]
    fn health_moves_traffic_and_panic_mode_keeps_a_last_resort() {
        let t = target(
            vec![
                backend("west", "us", 1, 1, false),
                backend("south", "sa", 1, 1, false),
            ],
            None,
        );
        let p = ServicePolicy::default();
        let down = |name: &'static str| {
            move |b: &Backend| {
                if &*b.cluster == name {
                    Verdict {
                        healthy: false,
                        factor: 0.0,
                        reason: None,
                        dropped: false,
                    }
                } else {
                    Verdict::HEALTHY
                }
            }
        };
        assert_eq!(first_picks(&t, &p, down("none"))["west"], 2000);
        assert_eq!(first_picks(&t, &p, down("west"))["south"], 2000);
        let order = cluster_order(&t, "here", "us", &p, down("west"), random);
        assert_eq!(
            order.len(),
            2,
            "the unhealthy cluster stays as a last resort"
        );
        assert_eq!(&*order[1].cluster, "west");
        let all_down = |_: &Backend| Verdict {
            healthy: false,
            factor: 0.0,
            reason: None,
            dropped: false,
        };
        let order = cluster_order(&t, "here", "us", &p, all_down, random);
        assert_eq!(
            &*order[0].cluster, "west",
            "panic mode keeps the tier order"
        );
    }

    #[test]
    fn dropped_clusters_are_not_even_a_last_resort() {
        let t = target(
            vec![
                backend("west", "us", 1, 1, true),
                backend("south", "sa", 1, 1, false),
            ],
            None,
        );
        let west_dropped = |b: &Backend| Verdict {
            healthy: &*b.cluster != "west",
            factor: 1.0,
            reason: None,
            dropped: &*b.cluster == "west",
        };
        let order = cluster_order(
            &t,
            "here",
            "us",
            &ServicePolicy::default(),
            west_dropped,
            random,
        );
        assert_eq!(order.len(), 1);
        assert_eq!(&*order[0].cluster, "south");
    }

    #[test]
    fn fences_and_slow_start_shape_the_first_pick() {
        let t = target(
            vec![
                backend("west", "us", 1, 1, false),
                backend("south", "sa", 1, 1, false),
            ],
            None,
        );
        let fenced = ServicePolicy {
            fence_regions: Some(vec!["us".into()]),
            ..ServicePolicy::default()
        };
        let west_down = |b: &Backend| Verdict {
            healthy: &*b.cluster != "west",
            factor: 1.0,
            reason: None,
            dropped: false,
        };
        let order = cluster_order(&t, "here", "us", &fenced, west_down, random);
        assert_eq!(
            order.len(),
            1,
            "never leave the fence, even when unhealthy inside it"
        );
        assert_eq!(&*order[0].cluster, "west");
        // West just came back: a fifth of its full share; the rest spills to south.
        let recovering = |b: &Backend| Verdict {
            healthy: true,
            factor: if &*b.cluster == "west" { 0.14 } else { 1.0 },
            reason: None,
            dropped: false,
        };
        let picks = first_picks(&t, &ServicePolicy::default(), recovering);
        let west = f64::from(picks["west"]) / 2000.0;
        assert!(
            (0.12..0.28).contains(&west),
            "west share while recovering: {west}"
        );
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
