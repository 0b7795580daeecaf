//! DNS metrics: plain atomics bumped on the query path (no lock, no label lookup per query),
//! encoded at scrape time by a prometheus-client [`Collector`] registered on the federation's
//! registry (`/metrics` on its admin port). Names below are as Prometheus stores them
//! (docs/metrics.md lists every metric of the project).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `isthmus_dns_queries_total` | counter | `qtype` (A, AAAA, SRV, SOA, NS, ANY, other), `rcode` (NOERROR, NODATA, NXDOMAIN, REFUSED, FORMERR, NOTIMP, BADVERS) |
//! | `isthmus_dns_truncated_total` | counter | `transport` (udp): responses sent with TC=1 |
//! | `isthmus_dns_rate_limited_total` | counter | `action` (dropped, slipped) |
//! | `isthmus_dns_dropped_total` | counter | packets not answered (not a query) |
//! | `isthmus_dns_query_duration_seconds` | histogram | | from receipt to response handed to the socket |
//! | `isthmus_dns_snapshot_age_seconds` | gauge | | since the served zone was built |
//! | `isthmus_dns_snapshot_names`, `_view_version`, `_serial` | gauge | | the served zone |
//! | `isthmus_dns_snapshot_build_seconds` | gauge | | how long the last rebuild took |
//! | `isthmus_dns_snapshot_replanned_routes` | gauge | | routes the last rebuild re-planned (all of them on the first) |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::answer::Outcome;
use crate::packet::{TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_NS, TYPE_SOA, TYPE_SRV};

const QTYPES: [&str; 7] = ["A", "AAAA", "SRV", "SOA", "NS", "ANY", "other"];
const RCODES: [&str; 7] = [
    "NOERROR", "NODATA", "NXDOMAIN", "REFUSED", "FORMERR", "NOTIMP", "BADVERS",
];
/// Latency bucket upper bounds, in microseconds.
const BUCKETS_US: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 10_000, 50_000, 250_000,
];

fn qtype_index(t: u16) -> usize {
    match t {
        TYPE_A => 0,
        TYPE_AAAA => 1,
        TYPE_SRV => 2,
        TYPE_SOA => 3,
        TYPE_NS => 4,
        TYPE_ANY => 5,
        _ => 6,
    }
}

fn rcode_index(o: &Outcome) -> usize {
    match o.rcode {
        Some(0) if o.nodata => 1,
        Some(0) => 0,
        Some(3) => 2,
        Some(5) => 3,
        Some(1) => 4,
        Some(4) => 5,
        _ => 6,
    }
}

#[derive(Debug, Default)]
struct Inner {
    queries: [[AtomicU64; 7]; 7],
    truncated: AtomicU64,
    rrl_dropped: AtomicU64,
    rrl_slipped: AtomicU64,
    dropped: AtomicU64,
    latency: [AtomicU64; BUCKETS_US.len() + 1],
    latency_sum_ns: AtomicU64,
    snapshot_built_ms: AtomicU64,
    snapshot_names: AtomicU64,
    snapshot_view_version: AtomicU64,
    snapshot_serial: AtomicU64,
    snapshot_build_us: AtomicU64,
    snapshot_replanned: AtomicU64,
}

/// Cheap to clone; every clone counts into the same atomics.
#[derive(Debug, Clone, Default)]
pub struct DnsMetrics(Arc<Inner>);

impl DnsMetrics {
    /// Registers the collector on `registry` (names are prefixed `isthmus_dns_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    pub fn record(&self, o: &Outcome, elapsed: Duration) {
        let m = &self.0;
        if o.rcode.is_none() {
            m.dropped.fetch_add(1, Relaxed);
            return;
        }
        m.queries[qtype_index(o.qtype)][rcode_index(o)].fetch_add(1, Relaxed);
        if o.truncated {
            m.truncated.fetch_add(1, Relaxed);
        }
        let us = elapsed.as_micros() as u64;
        let b = BUCKETS_US
            .iter()
            .position(|&ub| us <= ub)
            .unwrap_or(BUCKETS_US.len());
        m.latency[b].fetch_add(1, Relaxed);
        m.latency_sum_ns
            .fetch_add(elapsed.as_nanos() as u64, Relaxed);
    }

    pub fn rate_limited(&self, slipped: bool) {
        if slipped {
            self.0.rrl_slipped.fetch_add(1, Relaxed);
        } else {
            self.0.rrl_dropped.fetch_add(1, Relaxed);
        }
    }

    pub fn snapshot(
        &self,
        names: usize,
        view_version: u64,
        serial: u32,
        replanned: usize,
        build: Duration,
    ) {
        let m = &self.0;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        m.snapshot_built_ms.store(now, Relaxed);
        m.snapshot_names.store(names as u64, Relaxed);
        m.snapshot_view_version.store(view_version, Relaxed);
        m.snapshot_serial.store(u64::from(serial), Relaxed);
        m.snapshot_build_us.store(build.as_micros() as u64, Relaxed);
        m.snapshot_replanned.store(replanned as u64, Relaxed);
    }

    /// Total answered queries (tests).
    pub fn answered(&self) -> u64 {
        self.0
            .queries
            .iter()
            .flatten()
            .map(|c| c.load(Relaxed))
            .sum()
    }
}

impl Collector for DnsMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        {
            let mut e = encoder.encode_descriptor(
                "isthmus_dns_queries",
                "DNS queries answered, by query type and response code (NODATA = NOERROR without records)",
                None,
                MetricType::Counter,
            )?;
            for (ti, t) in QTYPES.iter().enumerate() {
                for (ri, r) in RCODES.iter().enumerate() {
                    let labels = [("qtype", *t), ("rcode", *r)];
                    let v = m.queries[ti][ri].load(Relaxed);
                    ConstCounter::new(v).encode(e.encode_family(&labels)?)?;
                }
            }
        }
        for (name, help, v) in [
            (
                "isthmus_dns_truncated",
                "UDP responses sent truncated (TC=1) for their size",
                &m.truncated,
            ),
            (
                "isthmus_dns_dropped",
                "Packets not answered (too short, or not a query)",
                &m.dropped,
            ),
        ] {
            let e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v.load(Relaxed)).encode(e)?;
        }
        {
            let mut e = encoder.encode_descriptor(
                "isthmus_dns_rate_limited",
                "UDP responses over the per-client rate limit, by action",
                None,
                MetricType::Counter,
            )?;
            for (action, v) in [("dropped", &m.rrl_dropped), ("slipped", &m.rrl_slipped)] {
                let labels = [("action", action)];
                ConstCounter::new(v.load(Relaxed)).encode(e.encode_family(&labels)?)?;
            }
        }
        {
            let mut buckets: Vec<(f64, u64)> = BUCKETS_US
                .iter()
                .zip(&m.latency)
                .map(|(ub, c)| (*ub as f64 / 1e6, c.load(Relaxed)))
                .collect();
            buckets.push((f64::INFINITY, m.latency[BUCKETS_US.len()].load(Relaxed)));
            let count: u64 = buckets.iter().map(|b| b.1).sum();
            let sum = m.latency_sum_ns.load(Relaxed) as f64 / 1e9;
            let mut e = encoder.encode_descriptor(
                "isthmus_dns_query_duration_seconds",
                "Time from receiving a query to handing its response to the socket",
                None,
                MetricType::Histogram,
            )?;
            e.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let built = m.snapshot_built_ms.load(Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let age = if built == 0 {
            0.0
        } else {
            now.saturating_sub(built) as f64 / 1e3
        };
        for (name, help, v) in [
            (
                "isthmus_dns_snapshot_age_seconds",
                "Seconds since the served zone snapshot was built",
                age,
            ),
            (
                "isthmus_dns_snapshot_names",
                "Names in the served zone snapshot",
                m.snapshot_names.load(Relaxed) as f64,
            ),
            (
                "isthmus_dns_snapshot_view_version",
                "Mesh view version the served snapshot was built from",
                m.snapshot_view_version.load(Relaxed) as f64,
            ),
            (
                "isthmus_dns_snapshot_serial",
                "SOA serial of the served snapshot",
                m.snapshot_serial.load(Relaxed) as f64,
            ),
            (
                "isthmus_dns_snapshot_build_seconds",
                "Time the last snapshot rebuild took",
                m.snapshot_build_us.load(Relaxed) as f64 / 1e6,
            ),
            (
                "isthmus_dns_snapshot_replanned_routes",
                "Routes the last snapshot rebuild re-planned (the others kept their encoded names)",
                m.snapshot_replanned.load(Relaxed) as f64,
            ),
        ] {
            let e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v).encode(e)?;
        }
        Ok(())
    }
}
