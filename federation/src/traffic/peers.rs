//! Edges between two other clusters, as a peer reports them: each federation sends, with its
//! heartbeat ACKs on the peering stream, the edges that touch its own cluster (what its
//! gateways counted). The receiver keeps, per peer, the last list for [`PEER_EDGES_TTL`] and
//! shows the edges that do not touch itself (those it counts first-hand).
//!
//! A peer may report only edges that touch it: it cannot speak for traffic between two others.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{Edge, TrafficError};
use crate::model::ClusterName;
use crate::proto;

/// Edges one peer may report (far more than it has peers, times two directions).
pub const MAX_EDGES_PER_PEER: usize = 512;
/// A peer's list is dropped this long after it was received (heartbeats come every few s).
pub const PEER_EDGES_TTL: Duration = Duration::from_secs(30);
/// Points in a reported series, at most.
const MAX_SERIES: usize = 64;

/// The wire form of this cluster's edges, for a heartbeat ACK.
pub fn to_proto(edges: &[Edge]) -> Vec<proto::EdgeSummary> {
    edges
        .iter()
        .take(MAX_EDGES_PER_PEER)
        .map(|e| proto::EdgeSummary {
            from_cluster: e.from.to_string(),
            to_cluster: e.to.to_string(),
            requests: e.requests,
            errors: e.errors,
            requests_per_s: e.requests_per_s,
            p50_ms: e.p50_ms,
            p99_ms: e.p99_ms,
            series: e.series.clone(),
        })
        .collect()
}

fn number(v: f64, what: &str) -> Result<f64, String> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{what} is {v}"))
    }
}

fn edge_from_proto(peer: &ClusterName, e: &proto::EdgeSummary) -> Result<Edge, String> {
    let from = ClusterName::new(e.from_cluster.as_str()).map_err(|x| x.to_string())?;
    let to = ClusterName::new(e.to_cluster.as_str()).map_err(|x| x.to_string())?;
    if from == to || (&from != peer && &to != peer) {
        return Err(format!(
            "{from} -> {to} does not join {peer} to another cluster"
        ));
    }
    if e.errors > e.requests {
        return Err(format!("{} errors among {} requests", e.errors, e.requests));
    }
    if e.series.len() > MAX_SERIES {
        return Err(format!("{} points in its series", e.series.len()));
    }
    let series = e
        .series
        .iter()
        .map(|v| number(*v, "a point of its series"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Edge {
        requests: e.requests,
        errors: e.errors,
        requests_per_s: number(e.requests_per_s, "requests_per_s")?,
        error_ratio: if e.requests == 0 {
            0.0
        } else {
            e.errors as f64 / e.requests as f64
        },
        p50_ms: e.p50_ms.map(|v| number(v, "p50_ms")).transpose()?,
        p99_ms: e.p99_ms.map(|v| number(v, "p99_ms")).transpose()?,
        series,
        from,
        to,
    })
}

/// The last edges each peer reported, with when.
#[derive(Debug, Default)]
pub struct PeerEdges {
    by_peer: Mutex<BTreeMap<ClusterName, (i64, Vec<Edge>)>>,
}

impl PeerEdges {
    /// Replaces `peer`'s edges with a checked list; a list that does not check out changes
    /// nothing. Edges touching `me` are left out: this cluster counts those itself.
    pub fn set(
        &self,
        peer: &ClusterName,
        me: &ClusterName,
        edges: &[proto::EdgeSummary],
        now_ms: i64,
    ) -> Result<(), TrafficError> {
        if edges.len() > MAX_EDGES_PER_PEER {
            return Err(TrafficError::Sample {
                peer: peer.to_string(),
                reason: format!("{} edges, more than {MAX_EDGES_PER_PEER}", edges.len()),
            });
        }
        let checked = edges
            .iter()
            .map(|e| edge_from_proto(peer, e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| TrafficError::Sample {
                peer: peer.to_string(),
                reason,
            })?;
        let others: Vec<Edge> = checked
            .into_iter()
            .filter(|e| &e.from != me && &e.to != me)
            .collect();
        self.by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer.clone(), (now_ms, others));
        Ok(())
    }

    /// The edges peers reported within [`PEER_EDGES_TTL`], each with the peer that reported
    /// it. An edge both its ends reported is shown once, as its calling side counted it.
    pub fn edges(&self, now_ms: i64) -> Vec<(ClusterName, Edge)> {
        let ttl = i64::try_from(PEER_EDGES_TTL.as_millis()).unwrap_or(i64::MAX);
        let mut by_peer = self.by_peer.lock().unwrap_or_else(|p| p.into_inner());
        by_peer.retain(|_, (at, _)| now_ms - *at <= ttl);
        let mut out: BTreeMap<(ClusterName, ClusterName), (ClusterName, Edge)> = BTreeMap::new();
        for (peer, (_, edges)) in by_peer.iter() {
            for e in edges {
                let key = (e.from.clone(), e.to.clone());
                let caller_side = &e.from == peer;
                match out.get(&key) {
                    Some((_, _)) if !caller_side => {}
                    _ => {
                        out.insert(key, (peer.clone(), e.clone()));
                    }
                }
            }
        }
        out.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ClusterName {
        ClusterName::new(s).expect("name")
    }

    fn edge(from: &str, to: &str, rps: f64) -> proto::EdgeSummary {
        proto::EdgeSummary {
            from_cluster: from.into(),
            to_cluster: to.into(),
            requests: 10,
            errors: 1,
            requests_per_s: rps,
            p50_ms: Some(3.0),
            p99_ms: None,
            series: vec![0.0, rps],
        }
    }

    #[test]
    fn peers_report_their_own_edges_only_and_they_expire() {
        let (east, west, south) = (name("east"), name("west"), name("south"));
        let edges = PeerEdges::default();
        // West reports west -> south (kept), west -> east (east counts that itself: left out).
        edges
            .set(
                &west,
                &east,
                &[edge("west", "south", 2.0), edge("west", "east", 9.0)],
                1_000,
            )
            .expect("west's edges");
        // South reports the same edge from its serving side, and one of its own.
        edges
            .set(
                &south,
                &east,
                &[edge("west", "south", 1.5), edge("south", "north", 4.0)],
                1_000,
            )
            .expect("south's edges");
        let got: Vec<(String, String, String, f64)> = edges
            .edges(2_000)
            .into_iter()
            .map(|(by, e)| {
                (
                    by.to_string(),
                    e.from.to_string(),
                    e.to.to_string(),
                    e.requests_per_s,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("south".into(), "south".into(), "north".into(), 4.0),
                ("west".into(), "west".into(), "south".into(), 2.0),
            ],
            "the calling side's count wins"
        );
        assert!(edges.edges(1_000 + 31_000).is_empty(), "expired");

        // Bad lists are refused whole and change nothing.
        let cases = [
            (edge("south", "north", 1.0), "does not join west"),
            (edge("west", "west", 1.0), "does not join"),
            (edge("west", "South!", 1.0), "South!"),
            (edge("west", "south", f64::NAN), "is NaN"),
            (edge("west", "south", -1.0), "is -1"),
            (
                proto::EdgeSummary {
                    errors: 11,
                    ..edge("west", "south", 1.0)
                },
                "11 errors among 10",
            ),
        ];
        edges
            .set(&west, &east, &[edge("west", "south", 2.0)], 50_000)
            .expect("good");
        for (bad, want) in cases {
            let e = edges
                .set(&west, &east, &[edge("west", "south", 7.0), bad], 50_000)
                .expect_err(want)
                .to_string();
            assert!(e.contains(want), "{e} should say {want}");
        }
        let kept = edges.edges(50_000);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].1.requests_per_s, 2.0, "the last good list stays");
    }
}
