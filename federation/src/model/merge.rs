//! Merging exports of the same name from several clusters into one clusterset service, by the
//! Multi-Cluster Services rules: the oldest export defines the service's properties (ports,
//! headless); a cluster whose export disagrees is in conflict, reported, and not routed to.

use serde::Serialize;

use super::names::{ClusterName, ServiceKey};
use super::service::ServiceSummary;

/// One cluster's export of a service, as the merge sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterExport<'a> {
    pub cluster: &'a ClusterName,
    pub summary: &'a ServiceSummary,
}

/// The merged view of one clusterset service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MergedService {
    pub key: ServiceKey,
    /// The cluster whose (oldest) export defines the properties.
    pub defined_by: ClusterName,
    /// Clusters that serve it, in name order. The caller has their summaries: the merge names
    /// clusters and never copies a summary.
    pub clusters: Vec<ClusterName>,
    /// Clusters whose export conflicts with the winner (not routed to).
    pub conflicts: Vec<ClusterName>,
}

/// Merges the exports of one key. Returns `None` when nobody exports it.
/// Winner: smallest `exported_at_ms`, ties broken by cluster name (deterministic everywhere).
pub fn merge(key: &ServiceKey, exports: &[ClusterExport<'_>]) -> Option<MergedService> {
    let winner = exports.iter().min_by(|a, b| {
        (a.summary.exported_at_ms, a.cluster).cmp(&(b.summary.exported_at_ms, b.cluster))
    })?;
    let mut clusters = Vec::new();
    let mut conflicts = Vec::new();
    for e in exports {
        if e.summary.compatible_with(winner.summary) {
            clusters.push(e.cluster.clone());
        } else {
            conflicts.push(e.cluster.clone());
        }
    }
    clusters.sort();
    clusters.dedup();
    conflicts.sort();
    Some(MergedService {
        key: key.clone(),
        defined_by: winner.cluster.clone(),
        clusters,
        conflicts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::service::{Protocol, ServicePort};
    use std::collections::BTreeMap;

    fn summary(port: u16, at: i64) -> ServiceSummary {
        ServiceSummary {
            key: ServiceKey::parse("shop/cart").expect("key"),
            ports: vec![ServicePort {
                name: None,
                port,
                protocol: Protocol::Http,
            }],
            zones: Default::default(),
            weight: 100,
            metadata: BTreeMap::new(),
            headless: false,
            exported_at_ms: at,
        }
    }

    #[test]
    fn oldest_export_wins_and_conflicts_are_reported() {
        let key = ServiceKey::parse("shop/cart").expect("key");
        let (east, west, south) = (
            ClusterName::new("east").expect("c"),
            ClusterName::new("west").expect("c"),
            ClusterName::new("south").expect("c"),
        );
        let (a, b, c) = (summary(80, 30), summary(80, 20), summary(8080, 10));
        let exports = [
            ClusterExport {
                cluster: &east,
                summary: &a,
            },
            ClusterExport {
                cluster: &west,
                summary: &b,
            },
            ClusterExport {
                cluster: &south,
                summary: &c,
            },
        ];
        let m = merge(&key, &exports).expect("merged");
        // south exported first, with port 8080: it defines the service; east and west conflict.
        assert_eq!(m.defined_by, south);
        assert_eq!(m.conflicts, vec![east.clone(), west.clone()]);
        assert_eq!(m.clusters.len(), 1);

        let exports = [
            ClusterExport {
                cluster: &east,
                summary: &a,
            },
            ClusterExport {
                cluster: &west,
                summary: &b,
            },
        ];
        let m = merge(&key, &exports).expect("merged");
        assert_eq!(m.defined_by, west);
        assert!(m.conflicts.is_empty());
        assert_eq!(
            m.clusters.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            ["east", "west"]
        );
        assert!(merge(&key, &[]).is_none());
    }

    #[test]
    fn ties_break_by_cluster_name() {
        let key = ServiceKey::parse("shop/cart").expect("key");
        let (east, west) = (
            ClusterName::new("east").expect("c"),
            ClusterName::new("west").expect("c"),
        );
        let (a, b) = (summary(80, 10), summary(81, 10));
        let m = merge(
            &key,
            &[
                ClusterExport {
                    cluster: &west,
                    summary: &b,
                },
                ClusterExport {
                    cluster: &east,
                    summary: &a,
                },
            ],
        )
        .expect("merged");
        assert_eq!(m.defined_by, east);
        assert_eq!(m.conflicts, vec![west]);
    }
}
