//! Traffic between this cluster and its peers as this cluster's own gateways count it, kept for
//! the dashboard: each gateway sends, every few seconds, what it carried to or from each peer
//! cluster since its last report (`ReportTraffic`: requests, errors, a latency histogram in the
//! fixed buckets below); the federation keeps a short ring of those intervals per gateway and
//! sums them into one edge per (calling cluster, serving cluster).
//!
//! A gateway sees only the exchanges it carries, so first-hand edges all touch this cluster;
//! edges between two other clusters come from peers ([`peers`]: each federation sends its own
//! edges with its heartbeats). The numbers are for display; nothing routes on them.
//!
//! This module must not do I/O: the gateway API hands reports in, the dashboard reads edges out.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::model::ClusterName;
use crate::proto;

pub mod peers;

/// Upper bounds (ms) of the latency buckets; one more bucket counts everything slower.
pub const LATENCY_BOUNDS_MS: [u32; 14] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];
/// Buckets in a report: one per bound plus the overflow bucket.
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;
/// How far back intervals are kept (the dashboard's graph spans this).
pub const KEEP: Duration = Duration::from_secs(300);
/// The window the dashboard's rates, ratios and quantiles are computed over.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The graph's resolution: one point per this much time.
pub const STEP: Duration = Duration::from_secs(10);
/// More pairs than this in one report is refused (a cluster has far fewer peers).
pub const MAX_SAMPLES_PER_REPORT: usize = 2_048;
/// Gateways whose reports are kept; a report from one more is refused until one goes quiet.
pub const MAX_GATEWAYS: usize = 1_024;
/// A report covering more than this is refused (the gateway reports every few seconds).
const MAX_INTERVAL_MS: u32 = 600_000;

/// The bucket a latency falls in.
pub fn bucket_of(latency: Duration) -> usize {
    let ms = latency.as_secs_f64() * 1e3;
    LATENCY_BOUNDS_MS
        .iter()
        .position(|b| ms <= f64::from(*b))
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// The `q` quantile (0..=1) of a histogram, interpolated linearly inside its bucket; `None`
/// when it is empty. The overflow bucket answers its lower bound.
pub fn quantile(buckets: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let lower = if i == 0 {
                0.0
            } else {
                f64::from(LATENCY_BOUNDS_MS[i - 1])
            };
            let Some(upper) = LATENCY_BOUNDS_MS.get(i).map(|b| f64::from(*b)) else {
                return Some(lower);
            };
            let within = (rank - seen as f64) / *n as f64;
            return Some(lower + (upper - lower) * within);
        }
        seen += n;
    }
    None
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrafficError {
    #[error("a traffic report holds {0} samples, more than {MAX_SAMPLES_PER_REPORT}")]
    TooManySamples(usize),
    #[error("a traffic report's interval of {0} ms is not between 1 and {MAX_INTERVAL_MS}")]
    Interval(u32),
    #[error("traffic sample for {peer:?}: {reason}")]
    Sample { peer: String, reason: String },
    #[error(
        "traffic reports are kept for {MAX_GATEWAYS} gateways already; this one's are refused until one stops reporting"
    )]
    TooManyGateways,
}

/// What one gateway carried to or from one peer in one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairCount {
    pub peer: ClusterName,
    /// This cluster called the peer (else the peer called this cluster).
    pub outbound: bool,
    pub requests: u64,
    pub errors: u64,
    pub buckets: [u64; BUCKETS],
}

impl PairCount {
    /// Checks a wire sample: a valid peer name, errors within requests, the bucket count, and
    /// no more latency samples than requests.
    pub fn from_proto(s: &proto::TrafficSample) -> Result<Self, TrafficError> {
        let bad = |reason: String| TrafficError::Sample {
            peer: s.peer_cluster.clone(),
            reason,
        };
        let peer = ClusterName::new(s.peer_cluster.as_str()).map_err(|e| bad(e.to_string()))?;
        if s.errors > s.requests {
            return Err(bad(format!(
                "{} errors among {} requests",
                s.errors, s.requests
            )));
        }
        let buckets: [u64; BUCKETS] = s.latency_buckets.as_slice().try_into().map_err(|_| {
            bad(format!(
                "{} latency buckets, expected {BUCKETS}",
                s.latency_buckets.len()
            ))
        })?;
        let timed = buckets.iter().try_fold(0u64, |a, b| a.checked_add(*b));
        if timed.is_none_or(|t| t > s.requests) {
            return Err(bad("more latency samples than requests".into()));
        }
        Ok(Self {
            peer,
            outbound: s.outbound,
            requests: s.requests,
            errors: s.errors,
            buckets,
        })
    }
}

/// One report as kept: when it arrived, how long it covers, its pairs.
#[derive(Debug, Clone)]
struct Interval {
    at_ms: i64,
    interval_ms: u32,
    pairs: Vec<PairCount>,
}

#[derive(Debug, Default)]
struct GatewayRing {
    intervals: VecDeque<Interval>,
}

/// The kept intervals of every gateway of this cluster. Cheap to share: one short lock per
/// report and per dashboard read.
#[derive(Debug, Default)]
pub struct TrafficLog {
    gateways: Mutex<BTreeMap<String, GatewayRing>>,
    /// Edges between other clusters, as peers report them.
    pub peers: peers::PeerEdges,
}

/// Traffic from one cluster to another over [`WINDOW`], and its graph over [`KEEP`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    pub from: ClusterName,
    pub to: ClusterName,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    /// Errors / requests; 0 without requests.
    pub error_ratio: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests per second in each [`STEP`] of the last [`KEEP`], oldest first.
    pub series: Vec<f64>,
}

/// A gateway that reported traffic: when it last did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reporter {
    pub gateway: String,
    pub last_report_ms_ago: i64,
}

impl TrafficLog {
    /// Keeps a checked report from `gateway` (the name its certificate proves), received at
    /// `now_ms`. A report that does not check out changes nothing.
    pub fn record(
        &self,
        gateway: &str,
        report: &proto::TrafficReport,
        now_ms: i64,
    ) -> Result<(), TrafficError> {
        if report.samples.len() > MAX_SAMPLES_PER_REPORT {
            return Err(TrafficError::TooManySamples(report.samples.len()));
        }
        if report.interval_ms == 0 || report.interval_ms > MAX_INTERVAL_MS {
            return Err(TrafficError::Interval(report.interval_ms));
        }
        let pairs = report
            .samples
            .iter()
            .map(PairCount::from_proto)
            .collect::<Result<Vec<_>, _>>()?;
        let mut gateways = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut gateways, now_ms);
        if !gateways.contains_key(gateway) && gateways.len() >= MAX_GATEWAYS {
            return Err(TrafficError::TooManyGateways);
        }
        gateways
            .entry(gateway.to_string())
            .or_default()
            .intervals
            .push_back(Interval {
                at_ms: now_ms,
                interval_ms: report.interval_ms,
                pairs,
            });
        Ok(())
    }

    /// The gateways that reported within [`KEEP`], and how long ago they last did.
    pub fn reporters(&self, now_ms: i64) -> Vec<Reporter> {
        let mut gateways = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut gateways, now_ms);
        gateways
            .iter()
            .filter_map(|(name, ring)| {
                Some(Reporter {
                    gateway: name.clone(),
                    last_report_ms_ago: now_ms - ring.intervals.back()?.at_ms,
                })
            })
            .collect()
    }

    /// Every edge touching `me` with traffic in the last [`KEEP`], by (from, to).
    pub fn edges(&self, me: &ClusterName, now_ms: i64) -> Vec<Edge> {
        let mut gateways = self.gateways.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut gateways, now_ms);
        edges_of(gateways.values(), me, now_ms)
    }
}

/// Drops intervals older than [`KEEP`], and gateways left with none.
fn prune(gateways: &mut BTreeMap<String, GatewayRing>, now_ms: i64) {
    let oldest = now_ms - duration_ms(KEEP);
    for ring in gateways.values_mut() {
        while ring.intervals.front().is_some_and(|i| i.at_ms < oldest) {
            ring.intervals.pop_front();
        }
    }
    gateways.retain(|_, ring| !ring.intervals.is_empty());
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[derive(Default)]
struct Sum {
    requests: u64,
    errors: u64,
    buckets: [u64; BUCKETS],
    /// The sum of each gateway's rate on the edge.
    rates: f64,
    series: Vec<f64>,
}

fn edges_of<'a>(
    rings: impl Iterator<Item = &'a GatewayRing>,
    me: &ClusterName,
    now_ms: i64,
) -> Vec<Edge> {
    let window_start = now_ms - duration_ms(WINDOW);
    let step = duration_ms(STEP);
    let points = usize::try_from(duration_ms(KEEP) / step).unwrap_or(0);
    let keep_start = now_ms - step * i64::try_from(points).unwrap_or(0);
    let mut sums: BTreeMap<(ClusterName, ClusterName), Sum> = BTreeMap::new();
    for ring in rings {
        // This gateway's rate on an edge is its requests there over the time its intervals in
        // the window cover (it reports every interval, with or without traffic); the edge's
        // rate is the sum over gateways.
        let covered_ms: i64 = ring
            .intervals
            .iter()
            .filter(|i| i.at_ms > window_start)
            .map(|i| i64::from(i.interval_ms))
            .sum();
        let mut mine: BTreeMap<(ClusterName, ClusterName), u64> = BTreeMap::new();
        for interval in &ring.intervals {
            let in_window = interval.at_ms > window_start;
            let point = usize::try_from((interval.at_ms - keep_start - 1).max(0) / step).ok();
            for p in &interval.pairs {
                let key = if p.outbound {
                    (me.clone(), p.peer.clone())
                } else {
                    (p.peer.clone(), me.clone())
                };
                let sum = sums.entry(key.clone()).or_default();
                if sum.series.is_empty() {
                    sum.series = vec![0.0; points];
                }
                if let Some(slot) = point.and_then(|i| sum.series.get_mut(i)) {
                    *slot += p.requests as f64 / STEP.as_secs_f64();
                }
                if !in_window {
                    continue;
                }
                sum.requests += p.requests;
                sum.errors += p.errors;
                for (total, n) in sum.buckets.iter_mut().zip(p.buckets) {
                    *total += n;
                }
                *mine.entry(key).or_default() += p.requests;
            }
        }
        if covered_ms > 0 {
            for (key, requests) in mine {
                if let Some(sum) = sums.get_mut(&key) {
                    sum.rates += requests as f64 * 1e3 / covered_ms as f64;
                }
            }
        }
    }
    sums.into_iter()
        .map(|((from, to), s)| Edge {
            from,
            to,
            requests: s.requests,
            errors: s.errors,
            requests_per_s: s.rates,
            error_ratio: if s.requests == 0 {
                0.0
            } else {
                s.errors as f64 / s.requests as f64
            },
            p50_ms: quantile(&s.buckets, 0.5),
            p99_ms: quantile(&s.buckets, 0.99),
            series: s.series,
        })
        .collect()
}

#[cfg(test)]
mod tests;
