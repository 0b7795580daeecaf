//! Choosing where a request goes. Outbound ([`cluster`]): which peer cluster serves a service —
//! the pinned cluster only, else the policy's split, else failover tiers (the same region first,
//! then the others), each weighted. Inbound: which local endpoint, by power-of-two-choices over
//! weighted samples, scored by latency (EWMA) times load.
//! The choices are pure functions of their inputs and a random source, table-tested.

mod cluster;
pub use cluster::{cluster_order, first_pick_shares, likely_order, tier, tier_loads, usable};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::table::LocalEndpoint;

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

/// A random `u64` as a uniform draw from [0, 1) (its top 53 bits).
pub fn unit(r: u64) -> f64 {
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// True for `percent` % of the draws `r` (uniform `u64`s): never at 0, always at 100.
pub fn chance(percent: f64, r: u64) -> bool {
    unit(r) * 100.0 < percent
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
    use super::*;

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
