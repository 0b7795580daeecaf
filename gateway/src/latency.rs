//! What each cluster's successful tries of a service took, learned on the response path: a
//! ring of the last [`SAMPLES`] per (service, cluster), each slot one atomic word (when, how
//! long), so recording a sample takes no lock and allocates nothing (the ring itself is
//! allocated once, on the pair's first sample). The p99 reads the samples younger than
//! [`WINDOW`]: old ones decay out, so a cluster that became slow (or fast again) is learned
//! within a window, and a quiet pair falls back to "not known" rather than a stale figure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Samples kept per (service, cluster).
pub const SAMPLES: usize = 128;
/// Samples older than this are not counted.
pub const WINDOW: Duration = Duration::from_secs(30);
/// Fewer recent samples than this: the p99 is not known.
pub const MIN_SAMPLES: usize = 20;

/// The last [`SAMPLES`] of one (service, cluster). Each slot packs the sample's time (ms since
/// the learner started, plus one, so zero means empty) in the high 32 bits and its latency in
/// µs (saturating at ~71 minutes) in the low 32.
#[derive(Debug)]
pub struct Ring {
    slots: [AtomicU64; SAMPLES],
    next: AtomicUsize,
    epoch: Instant,
}

impl Ring {
    fn new(epoch: Instant) -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            next: AtomicUsize::new(0),
            epoch,
        }
    }

    /// Records one successful try's latency (no lock, no allocation).
    pub fn record(&self, took: Duration) {
        let at = self.now_ms().saturating_add(1);
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % SAMPLES;
        self.slots[slot].store((u64::from(at) << 32) | u64::from(micros), Ordering::Relaxed);
    }

    fn now_ms(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u32::MAX - 1)
    }

    /// The p99 of the samples younger than [`WINDOW`], or `None` with fewer than
    /// [`MIN_SAMPLES`] of them. Works on a copy on the stack.
    pub fn p99(&self) -> Option<Duration> {
        let now = u64::from(self.now_ms()) + 1;
        let window = u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX);
        let mut recent = [0u32; SAMPLES];
        let mut n = 0;
        for slot in &self.slots {
            let v = slot.load(Ordering::Relaxed);
            let at = v >> 32;
            if at != 0 && now.saturating_sub(at) <= window {
                recent[n] = (v & u64::from(u32::MAX)) as u32;
                n += 1;
            }
        }
        if n < MIN_SAMPLES {
            return None;
        }
        let recent = &mut recent[..n];
        recent.sort_unstable();
        // The nearest-rank p99: the smallest sample at or above 99 % of them.
        let rank = (n * 99).div_ceil(100);
        Some(Duration::from_micros(u64::from(recent[rank - 1])))
    }
}

/// Cluster → its ring.
type PerCluster = HashMap<Arc<str>, Arc<Ring>>;

/// Every (service, cluster) pair's ring. Looking one up takes a short lock; a try holds its
/// ring's `Arc` and records without one.
#[derive(Debug)]
pub struct Latencies {
    rings: Mutex<HashMap<Arc<str>, PerCluster>>,
    epoch: Instant,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            rings: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

impl Latencies {
    /// The ring of `service` on `cluster`, made on first use.
    pub fn ring(&self, service: &Arc<str>, cluster: &Arc<str>) -> Arc<Ring> {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let clusters = match rings.get_mut(&**service) {
            Some(c) => c,
            None => rings.entry(service.clone()).or_default(),
        };
        match clusters.get(&**cluster) {
            Some(r) => r.clone(),
            None => clusters
                .entry(cluster.clone())
                .or_insert_with(|| Arc::new(Ring::new(self.epoch)))
                .clone(),
        }
    }

    /// The learned p99 of `service` on `cluster` (for the hedge delay and explain).
    pub fn p99(&self, service: &str, cluster: &str) -> Option<Duration> {
        let ring = self
            .rings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .and_then(|c| c.get(cluster))
            .cloned();
        ring.and_then(|r| r.p99())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn the_p99_needs_enough_samples_and_reads_the_slow_tail() {
        let l = Latencies::default();
        let (svc, west): (Arc<str>, Arc<str>) = ("echo.demo".into(), "west".into());
        let ring = l.ring(&svc, &west);
        for i in 1..MIN_SAMPLES {
            ring.record(MS * i as u32);
        }
        assert_eq!(l.p99("echo.demo", "west"), None, "too few samples");
        assert_eq!(l.p99("echo.demo", "south"), None, "none at all");
        // 1..=100 ms: the p99 is 99 ms (nearest rank).
        for i in MIN_SAMPLES..=100 {
            ring.record(MS * i as u32);
        }
        assert_eq!(l.p99("echo.demo", "west"), Some(MS * 99));
        // 99 fast tries and one slow one: the slow one is the tail only past 1 %.
        let tail = Latencies::default();
        let r = tail.ring(&svc, &west);
        for _ in 0..99 {
            r.record(MS * 10);
        }
        r.record(Duration::from_secs(2));
        assert_eq!(tail.p99("echo.demo", "west"), Some(MS * 10));
        r.record(Duration::from_secs(2));
        assert_eq!(tail.p99("echo.demo", "west"), Some(Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn old_samples_decay_out_and_the_ring_keeps_the_last() {
        let l = Latencies::default();
        let (svc, west): (Arc<str>, Arc<str>) = ("echo.demo".into(), "west".into());
        let ring = l.ring(&svc, &west);
        for _ in 0..100 {
            ring.record(Duration::from_secs(1));
        }
        assert_eq!(l.p99("echo.demo", "west"), Some(Duration::from_secs(1)));
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        assert_eq!(l.p99("echo.demo", "west"), None, "a quiet pair forgets");
        for _ in 0..MIN_SAMPLES {
            ring.record(MS * 5);
        }
        assert_eq!(
            l.p99("echo.demo", "west"),
            Some(MS * 5),
            "only the recent samples count"
        );
        // More samples than the ring holds: the oldest are overwritten.
        for _ in 0..SAMPLES {
            ring.record(MS * 7);
        }
        assert_eq!(l.p99("echo.demo", "west"), Some(MS * 7));
        assert!(
            Arc::ptr_eq(&ring, &l.ring(&svc, &west)),
            "one ring per pair, made once"
        );
    }
}
