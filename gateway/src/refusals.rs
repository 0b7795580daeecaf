//! Connections a listener refuses (or closes to make room) for lack of slots: each one counted in
//! `isthmus_gateway_connections_refused_total{listener,reason}`, and at most one WARN line per
//! listener per [`LOG_INTERVAL`] summing up those since the last line. A flood of connections
//! then costs a counter increment each, not a log line each.
//!
//! Must not: log once per refused connection, or hold its lock while logging.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::{Metrics, RefusalLabels};

/// At most one refusal line per listener this often.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a connection was refused or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its source already holds `limits.max_connections_per_source` connections.
    SourceLimit,
    /// Every slot is taken, and no source holds more than this one.
    ListenerFull,
    /// Closed (the oldest of the source holding the most) to make room for a source holding
    /// fewer.
    Evicted,
}

impl Reason {
    const ALL: [Reason; 3] = [Reason::SourceLimit, Reason::ListenerFull, Reason::Evicted];

    pub fn label(self) -> &'static str {
        match self {
            Reason::SourceLimit => "source_limit",
            Reason::ListenerFull => "listener_full",
            Reason::Evicted => "evicted",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counts and logs refusals. Cheap to clone; clones share the log's intervals.
#[derive(Clone)]
pub struct RefusalLog {
    counts: Family<RefusalLabels, Counter>,
    windows: Arc<Mutex<HashMap<&'static str, Window>>>,
}

/// Refusals of one listener since its last line.
#[derive(Default)]
struct Window {
    last_line: Option<Instant>,
    counts: [u64; 3],
}

impl RefusalLog {
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            counts: metrics.connections_refused.clone(),
            windows: Arc::default(),
        }
    }

    /// Counts one refusal on `listener` of a connection from `source` (for an eviction: the
    /// source that lost one). Returns whether a line was written for it.
    pub fn refused(&self, listener: &'static str, reason: Reason, source: IpAddr) -> bool {
        self.counts
            .get_or_create(&RefusalLabels {
                listener,
                reason: reason.label(),
            })
            .inc();
        let now = Instant::now();
        let counts = {
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            let w = windows.entry(listener).or_default();
            w.counts[reason.index()] += 1;
            if w.last_line
                .is_some_and(|t| now.duration_since(t) < LOG_INTERVAL)
            {
                return false;
            }
            w.last_line = Some(now);
            std::mem::take(&mut w.counts)
        };
        let [source_limit, listener_full, evicted] = Reason::ALL.map(|r| counts[r.index()]);
        tracing::warn!(
            listener,
            last_source = %source,
            source_limit,
            listener_full,
            evicted,
            interval_s = LOG_INTERVAL.as_secs(),
            "connections refused for lack of slots (counted in isthmus_gateway_connections_refused_total; at most one such line per interval): raise limits.max_connections or limits.max_connections_per_source if these are real clients"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_refusals_is_counted_each_and_logged_once_an_interval() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let log = RefusalLog::new(&metrics);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let lines = (0..1000)
            .filter(|_| log.refused("vip", Reason::SourceLimit, ip))
            .count();
        assert_eq!(
            lines, 1,
            "one line for the first refusal, none for the rest"
        );
        assert!(
            log.refused("proxy", Reason::ListenerFull, ip),
            "per listener"
        );
        tokio::time::advance(LOG_INTERVAL).await;
        assert!(
            log.refused("vip", Reason::Evicted, ip),
            "a line once the interval passed"
        );
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        for (series, n) in [
            ("listener=\"vip\",reason=\"source_limit\"", "1000"),
            ("listener=\"proxy\",reason=\"listener_full\"", "1"),
            ("listener=\"vip\",reason=\"evicted\"", "1"),
        ] {
            let line = format!("isthmus_gateway_connections_refused_total{{{series}}} {n}");
            assert!(text.contains(&line), "no {line} in\n{text}");
        }
        assert!(text.contains("# HELP isthmus_gateway_connections_refused"));
    }
}
