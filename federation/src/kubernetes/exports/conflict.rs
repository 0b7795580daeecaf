//! MCS conflicts across the clusterset (KEP-1645): when clusters export the same service with
//! different ports or protocols (or one headless, one not), the oldest export wins, ties broken
//! by cluster name — the rule the mesh merge routes by ([`crate::model::merge`]). Peers carry
//! each export's first-export time in their summaries, so every cluster reaches the same
//! verdict. Pure.

use std::collections::BTreeMap;

use super::compose::ports_text;
use crate::model::{ClusterName, ServiceKey, ServicePort};

/// One cluster's export of a service, as far as conflicts go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportShape {
    pub cluster: ClusterName,
    pub ports: Vec<ServicePort>,
    pub headless: bool,
    /// When that cluster first exported it (unix ms).
    pub exported_at_ms: i64,
}

/// For every service this cluster exports: this cluster's shape, then each peer's that exports
/// it to us.
pub type ClustersetExports = BTreeMap<ServiceKey, Vec<ExportShape>>;

/// A `Conflict=True` condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClustersetConflict {
    /// `PortConflict` or `TypeConflict` (headless against not).
    pub reason: &'static str,
    pub message: String,
    pub winner: ClusterName,
}

fn sorted(p: &[ServicePort]) -> Vec<ServicePort> {
    let mut v = p.to_vec();
    v.sort();
    v
}

fn since(ms: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{ms} ms"))
}

/// The conflict `me` is part of for `key`, if any.
pub fn clusterset_conflict(
    me: &ClusterName,
    key: &ServiceKey,
    shapes: &[ExportShape],
) -> Option<ClustersetConflict> {
    let winner = shapes
        .iter()
        .min_by(|a, b| (a.exported_at_ms, &a.cluster).cmp(&(b.exported_at_ms, &b.cluster)))?;
    let ports = sorted(&winner.ports);
    let losers: Vec<&ExportShape> = shapes
        .iter()
        .filter(|s| sorted(&s.ports) != ports || s.headless != winner.headless)
        .collect();
    if losers.is_empty() {
        return None;
    }
    let mine = shapes.iter().find(|s| &s.cluster == me)?;
    let reason = if losers.iter().any(|s| s.headless != winner.headless) {
        "TypeConflict"
    } else {
        "PortConflict"
    };
    let message = if &winner.cluster == me {
        let names: Vec<String> = losers
            .iter()
            .map(|s| format!("{} ({})", s.cluster, ports_text(&s.ports)))
            .collect();
        format!(
            "{key} is exported with other ports by {}; this cluster ({me}) exported it first \
             (since {}) and wins (KEP-1645: the oldest export wins), so the others are not \
             routed to",
            names.join(", "),
            since(winner.exported_at_ms)
        )
    } else if losers.iter().any(|s| &s.cluster == me) {
        format!(
            "{key} was exported first by {} (since {}, ports {}) which wins (KEP-1645: the \
             oldest export wins, ties broken by cluster name); this cluster's ports {} conflict, \
             so clusters importing it do not route here: align the ports",
            winner.cluster,
            since(winner.exported_at_ms),
            ports_text(&winner.ports),
            ports_text(&mine.ports)
        )
    } else {
        // We agree with the winner; others conflict with both of us.
        return None;
    };
    Some(ClustersetConflict {
        reason,
        message,
        winner: winner.cluster.clone(),
    })
}
