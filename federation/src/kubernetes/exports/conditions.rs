//! The MCS conditions of a ServiceExport (`Valid`, `Conflict`), from what became of it. Pure:
//! the caller passes the time, and gets a new condition list only when something changed
//! (`lastTransitionTime` moves only when a condition's status does).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::build::Verdict;
use super::conflict::ClustersetConflict;

pub const VALID: &str = "Valid";
pub const CONFLICT: &str = "Conflict";

/// One condition as we want it: type, status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

fn wanted(type_: &'static str, status: bool, reason: &str, message: String) -> Wanted {
    Wanted {
        type_,
        status,
        reason: reason.to_owned(),
        message,
    }
}

/// The `Valid` and `Conflict` conditions for a ServiceExport of `key` (`ns/name`).
/// `source_conflict`: the catalog file exports it with other ports (the file wins);
/// `clusterset`: a peer exports it with other ports.
pub fn wanted_conditions(
    key: &str,
    verdict: &Verdict,
    source_conflict: Option<&str>,
    clusterset: Option<&ClustersetConflict>,
) -> [Wanted; 2] {
    match (verdict, source_conflict) {
        (Verdict::Refused { reason, message }, _) => [
            wanted(VALID, false, reason.as_str(), message.clone()),
            wanted(
                CONFLICT,
                false,
                "NoConflicts",
                format!("{key} is not exported"),
            ),
        ],
        (Verdict::Exported { .. }, Some(m)) => [
            wanted(VALID, false, "CatalogFileConflict", m.to_owned()),
            wanted(CONFLICT, true, "CatalogFileConflict", m.to_owned()),
        ],
        (Verdict::Exported { spec, notes }, None) => {
            let mut message = match &spec.export_to {
                None => format!("{key} is exported to every peer"),
                Some(to) => {
                    let to: Vec<&str> = to.iter().map(|c| c.as_str()).collect();
                    format!("{key} is exported to {}", to.join(", "))
                }
            };
            for n in notes.iter().take(5) {
                message.push_str("; ");
                message.push_str(n);
            }
            if notes.len() > 5 {
                message.push_str(&format!("; and {} more", notes.len() - 5));
            }
            let conflict = match clusterset {
                Some(c) => wanted(CONFLICT, true, c.reason, c.message.clone()),
                None => wanted(
                    CONFLICT,
                    false,
                    "NoConflicts",
                    format!("no other cluster exports {key} with other ports"),
                ),
            };
            [wanted(VALID, true, "Exported", message), conflict]
        }
    }
}

/// `existing` with `wanted` applied, or `None` when nothing would change. Conditions of other
/// types are kept as they are.
pub fn apply_conditions(
    existing: &[Condition],
    wanted: &[Wanted],
    generation: Option<i64>,
    now: &Time,
) -> Option<Vec<Condition>> {
    let mut out: Vec<Condition> = existing.to_vec();
    let mut changed = false;
    for w in wanted {
        let status = if w.status { "True" } else { "False" };
        match out.iter_mut().find(|c| c.type_ == w.type_) {
            Some(c) => {
                if c.status == status
                    && c.reason == w.reason
                    && c.message == w.message
                    && c.observed_generation == generation
                {
                    continue;
                }
                if c.status != status {
                    c.last_transition_time = now.clone();
                    c.status = status.to_owned();
                }
                c.reason = w.reason.clone();
                c.message = w.message.clone();
                c.observed_generation = generation;
                changed = true;
            }
            None => {
                out.push(Condition {
                    type_: w.type_.to_owned(),
                    status: status.to_owned(),
                    reason: w.reason.clone(),
                    message: w.message.clone(),
                    observed_generation: generation,
                    last_transition_time: now.clone(),
                });
                changed = true;
            }
        }
    }
    changed.then_some(out)
}
