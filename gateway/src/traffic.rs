//! What this gateway carried to and from each peer cluster, for the federation's dashboard:
//! per (direction, peer) a request counter, an error counter and a latency histogram in the
//! buckets of [`isthmus_federation::traffic`], filled when each exchange ends
//! ([`crate::accesslog::Entry::finish`]) and sent to the federation every [`REPORT_EVERY`] as
//! the counts since the last report (`ReportTraffic`).
//!
//! Recording takes a shared read lock for one map lookup and a few relaxed atomic adds; a pair
//! seen for the first time takes the write lock once. Peers come from the routing snapshot and
//! from verified callers, so the map stays as small as the set of peered clusters. This module
//! must not decide anything about requests: it only counts them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use isthmus_federation::proto::{TrafficReport, TrafficSample};
use isthmus_federation::traffic::{BUCKETS, bucket_of};

use crate::control::ControlClient;

/// How often the counts go to the federation.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// Pairs kept at most (far more than any cluster has peers, times two directions).
const MAX_PAIRS: usize = 4_096;

#[derive(Debug, Default)]
struct PairCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// (outbound, peer cluster): this cluster called the peer, or the peer called this cluster.
type PairKey = (bool, Arc<str>);

/// The counts since the last report, by pair.
#[derive(Debug, Default)]
pub struct TrafficBook {
    pairs: RwLock<HashMap<PairKey, Arc<PairCounters>>>,
}

impl TrafficBook {
    /// Counts one finished exchange with `peer`: `outbound` when this cluster called it.
    /// `latency` is given for HTTP exchanges only (a tunnel's lifetime is not a latency).
    pub fn record(&self, outbound: bool, peer: &Arc<str>, error: bool, latency: Option<Duration>) {
        let key = (outbound, peer.clone());
        let found = self
            .pairs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let counters = match found {
            Some(c) => c,
            None => {
                let mut pairs = self.pairs.write().unwrap_or_else(|p| p.into_inner());
                if pairs.len() >= MAX_PAIRS && !pairs.contains_key(&key) {
                    return;
                }
                pairs.entry(key).or_default().clone()
            }
        };
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(l) = latency {
            counters.buckets[bucket_of(l)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the counts since the last call (leaving zero), one sample per pair that carried
    /// anything. A count recorded while this runs lands in this report or the next, never lost,
    /// and no sample holds more latencies than requests (the federation refuses that).
    pub fn take(&self) -> Vec<TrafficSample> {
        let pairs = self.pairs.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for ((outbound, peer), c) in pairs.iter() {
            // Buckets first: `record` counts a request before its latency, so this report never
            // holds a latency whose request it lacks.
            let mut latency_buckets: Vec<u64> = c
                .buckets
                .iter()
                .map(|b| b.swap(0, Ordering::Relaxed))
                .collect();
            let requests = c.requests.swap(0, Ordering::Relaxed);
            let errors = c.errors.swap(0, Ordering::Relaxed).min(requests);
            // A latency recorded just after the last report took its request comes here: keep
            // at most one latency per request now, and the rest for the next report.
            let mut excess = latency_buckets.iter().sum::<u64>().saturating_sub(requests);
            for (b, n) in c.buckets.iter().zip(latency_buckets.iter_mut()).rev() {
                let back = excess.min(*n);
                if back > 0 {
                    *n -= back;
                    excess -= back;
                    b.fetch_add(back, Ordering::Relaxed);
                }
            }
            if requests == 0 {
                continue;
            }
            out.push(TrafficSample {
                peer_cluster: peer.to_string(),
                outbound: *outbound,
                requests,
                errors,
                latency_buckets,
            });
        }
        out.sort_by(|a, b| (&a.peer_cluster, a.outbound).cmp(&(&b.peer_cluster, b.outbound)));
        out
    }

    /// Adds samples back (a report the federation did not take), so the next report has them.
    pub fn restore(&self, samples: &[TrafficSample]) {
        for s in samples {
            let key = (s.outbound, Arc::<str>::from(s.peer_cluster.as_str()));
            let mut pairs = self.pairs.write().unwrap_or_else(|p| p.into_inner());
            if pairs.len() >= MAX_PAIRS && !pairs.contains_key(&key) {
                continue;
            }
            let c = pairs.entry(key).or_default();
            c.requests.fetch_add(s.requests, Ordering::Relaxed);
            c.errors.fetch_add(s.errors, Ordering::Relaxed);
            for (b, n) in c.buckets.iter().zip(&s.latency_buckets) {
                b.fetch_add(*n, Ordering::Relaxed);
            }
        }
    }
}

/// Sends the counts to the federation every [`REPORT_EVERY`], with or without traffic (an
/// empty report still says the gateway is there). Counts the federation did not take are kept
/// for the next report; a refused report (a bug: the federation says why) is dropped.
pub async fn report(client: Arc<ControlClient>, book: Arc<TrafficBook>) {
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(REPORT_EVERY).await;
        let now = tokio::time::Instant::now();
        let interval_ms = u32::try_from(now.duration_since(last).as_millis()).unwrap_or(u32::MAX);
        let samples = book.take();
        let report = TrafficReport {
            gateway: client.gateway.clone(),
            interval_ms: interval_ms.max(1),
            samples,
        };
        match client.client().report_traffic(report.clone()).await {
            Ok(_) => last = now,
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                tracing::warn!(error = %s.message(), "the federation refused a traffic report; dropping it");
                last = now;
            }
            Err(s) => {
                tracing::debug!(error = %s.message(), "traffic report not delivered; keeping its counts for the next");
                book.restore(&report.samples);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_taken_once_per_pair_and_direction() {
        let book = TrafficBook::default();
        let (west, south): (Arc<str>, Arc<str>) = ("west".into(), "south".into());
        for i in 0..10 {
            book.record(true, &west, i == 0, Some(Duration::from_millis(3)));
        }
        book.record(true, &south, false, None);
        book.record(false, &west, true, Some(Duration::from_secs(40)));
        let taken = book.take();
        let summary: Vec<(&str, bool, u64, u64, u64)> = taken
            .iter()
            .map(|s| {
                let timed = s.latency_buckets.iter().sum();
                (
                    s.peer_cluster.as_str(),
                    s.outbound,
                    s.requests,
                    s.errors,
                    timed,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("south", true, 1, 0, 0),
                ("west", false, 1, 1, 1),
                ("west", true, 10, 1, 10)
            ]
        );
        assert!(taken.iter().all(|s| s.latency_buckets.len() == BUCKETS));
        assert_eq!(
            taken[2].latency_buckets[bucket_of(Duration::from_millis(3))],
            10
        );
        assert_eq!(taken[1].latency_buckets[BUCKETS - 1], 1, "overflow bucket");
        assert!(book.take().is_empty(), "taken counts are gone");

        // A report the federation did not take comes back in the next one.
        book.restore(&taken);
        book.record(true, &west, false, None);
        let again = book.take();
        assert_eq!(again.len(), 3);
        assert_eq!(again[2].requests, 11);
    }

    /// The federation checks every report with `PairCount::from_proto`: what `take` builds
    /// always passes it.
    #[test]
    fn what_is_taken_passes_the_federations_checks() {
        let book = TrafficBook::default();
        let peer: Arc<str> = "west".into();
        for ms in [0, 1, 7, 90, 2_000, 50_000] {
            book.record(true, &peer, ms > 1_000, Some(Duration::from_millis(ms)));
        }
        for s in book.take() {
            isthmus_federation::traffic::PairCount::from_proto(&s).expect("valid sample");
        }
    }
}
