//! Access logs: one JSON line per request or TCP stream, on both sides, written to stdout when
//! the exchange ends (so bytes and duration are final). Off with `access_log: false`. Lines go
//! through [`crate::linewriter`], so a stuck stdout drops lines (counted) instead of stalling
//! the runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Outbound,
    Inbound,
}

/// One exchange in progress. Fill the fields as they become known; [`Entry::finish`] writes the
/// line (the response body or the tunnel calls it when the exchange ends).
#[derive(Debug, Serialize)]
pub struct Entry {
    #[serde(skip)]
    enabled: bool,
    /// When the exchange started; read only when the line will be written.
    #[serde(skip)]
    started: Option<Instant>,
    pub ts_ms: u64,
    pub side: Side,
    pub protocol: &'static str,
    pub src_cluster: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_cluster: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP status (or 200 for a completed tunnel, 502/503 for a refused one).
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The exchange failed after its status went to the client: the response body was cut
    /// (the client's connection or stream was reset). `status` is what the client was told
    /// first; `reason` says what happened.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    /// Why the gateway answered itself, failed over, or refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Earlier clusters tried for this request, when it failed over.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_over_from: Vec<Arc<str>>,
    /// The calling workload's SPIFFE ID, when its gateway knew it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// A shadow copy (its response is discarded).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// A hedged try was sent (the first try ran past its hedge delay).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hedged: bool,
    /// Of a hedged request: the cluster whose answer went to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winner: Option<Arc<str>>,
    #[serde(skip)]
    pub counters: Arc<Counters>,
    /// Where the exchange is counted for the federation's dashboard, when it is.
    #[serde(skip)]
    traffic: Option<Arc<crate::traffic::TrafficBook>>,
    /// The exchange's span, when tracing sampled it; ended with the line ([`Entry::finish`]).
    #[serde(skip)]
    pub span: Option<Box<isthmus_federation::telemetry::TraceSpan>>,
}

/// Bytes counted by the body and tunnel wrappers while the exchange runs (one allocation per
/// exchange, shared by both directions' counters).
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// Which of an exchange's [`Counters`] a body adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client towards the service.
    In,
    /// From the service back to the client.
    Out,
}

/// A body's handle on one direction of its exchange's counters.
#[derive(Debug, Clone)]
pub struct Tally {
    counters: Arc<Counters>,
    direction: Direction,
}

impl Tally {
    pub fn add(&self, bytes: u64) {
        let counter = match self.direction {
            Direction::In => &self.counters.bytes_in,
            Direction::Out => &self.counters.bytes_out,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Entry {
    pub fn new(enabled: bool, side: Side, protocol: &'static str, src_cluster: Arc<str>) -> Self {
        // Two clock reads per request saved when nobody reads the line.
        let ts_ms = if enabled {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        } else {
            0
        };
        Self {
            enabled,
            started: enabled.then(Instant::now),
            ts_ms,
            side,
            protocol,
            src_cluster,
            dst_cluster: None,
            service: None,
            method: None,
            path: None,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0.0,
            peer: None,
            upstream: None,
            failed: false,
            reason: None,
            failed_over_from: Vec::new(),
            caller: None,
            shadow: false,
            hedged: false,
            winner: None,
            counters: Arc::default(),
            traffic: None,
            span: None,
        }
    }

    /// Counts this exchange in `book` when it ends (by peer cluster and direction; see
    /// [`crate::traffic`]).
    pub fn count_traffic(&mut self, book: &Arc<crate::traffic::TrafficBook>) {
        self.traffic = Some(book.clone());
        self.started.get_or_insert_with(Instant::now);
    }

    /// Adds the finished exchange to its traffic book: against the cluster that answered it
    /// (outbound: else the last cluster tried) or that called (inbound). Exchanges served in
    /// this cluster, or not attributable to a peer, are not counted.
    fn count_in_book(&self, book: &crate::traffic::TrafficBook) {
        let (outbound, peer, own) = match self.side {
            Side::Outbound => (
                true,
                self.dst_cluster.as_ref().or(self.failed_over_from.last()),
                Some(&self.src_cluster),
            ),
            Side::Inbound => (false, Some(&self.src_cluster), self.dst_cluster.as_ref()),
        };
        let Some(peer) = peer.filter(|p| !p.is_empty() && Some(*p) != own) else {
            return;
        };
        let error = self.failed || self.status >= 500;
        let latency = (self.protocol == "http")
            .then(|| self.started.map(|s| s.elapsed()))
            .flatten();
        book.record(outbound, peer, error, latency);
    }

    /// Fills in details that cost an allocation, only when the line will be written.
    pub fn note(&mut self, fill: impl FnOnce(&mut Self)) {
        if self.enabled {
            fill(self);
        }
    }

    /// The counter of `direction`, for a body or tunnel of this exchange.
    pub fn tally(&self, direction: Direction) -> Tally {
        Tally {
            counters: self.counters.clone(),
            direction,
        }
    }

    /// Records that the response was cut after its headers were sent, and why.
    pub fn cut(&mut self, why: &str) {
        self.failed = true;
        let cut = format!("the response was cut after its headers were sent: {why}");
        self.reason = Some(match self.reason.take() {
            Some(earlier) => format!("{earlier}; then {cut}"),
            None => cut,
        });
    }

    /// Writes the line now.
    pub fn finish(mut self) {
        if let Some(book) = self.traffic.take() {
            self.count_in_book(&book);
        }
        if let Some(span) = self.span.take() {
            crate::trace::finish(*span, &self);
        }
        if !self.enabled {
            return;
        }
        self.bytes_in = self.counters.bytes_in.load(Ordering::Relaxed);
        self.bytes_out = self.counters.bytes_out.load(Ordering::Relaxed);
        let elapsed = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        self.duration_ms = (elapsed * 1e6).round() / 1e3;
        if let Ok(mut line) = serde_json::to_vec(&self) {
            line.push(b'\n');
            crate::linewriter::stdout().write(line);
        }
    }
}
