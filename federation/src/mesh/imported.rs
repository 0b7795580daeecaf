//! What one peer exported to us, as last durably stored: its catalog epoch and version, its
//! service summaries and its gateways. Applying an update is pure; storing it is the caller's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{ServiceKey, ServiceSummary};
use crate::peering::update::{GatewayAddr, PeerUpdate};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerCatalog {
    pub epoch: String,
    pub version: u64,
    /// Shared with the routes built from them.
    pub services: BTreeMap<ServiceKey, Arc<ServiceSummary>>,
    pub gateways: Vec<GatewayAddr>,
    /// When the last update was stored (unix ms).
    pub stored_at_ms: i64,
}

/// A delta as stored in the delta log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDelta {
    pub epoch: String,
    pub version: u64,
    pub upserts: Vec<ServiceSummary>,
    pub removals: Vec<ServiceKey>,
    pub gateways: Option<Vec<GatewayAddr>>,
    pub stored_at_ms: i64,
}

impl StoredDelta {
    pub fn of(update: &PeerUpdate, now_ms: i64) -> Self {
        Self {
            epoch: update.epoch.clone(),
            version: update.version,
            upserts: update.upserts.clone(),
            removals: update.removals.clone(),
            gateways: update.gateways.clone(),
            stored_at_ms: now_ms,
        }
    }
}

impl PeerCatalog {
    /// Whether a delta can apply on top of this catalog (same epoch, newer version).
    pub fn accepts_delta(&self, epoch: &str, version: u64) -> bool {
        self.epoch == epoch && version > self.version
    }

    /// Applies a checked update (consumed: its summaries move in, uncopied); returns the keys
    /// whose entry changed.
    pub fn apply(&mut self, update: PeerUpdate, now_ms: i64) -> BTreeSet<ServiceKey> {
        let mut touched = BTreeSet::new();
        if update.snapshot {
            // Unchanged entries keep their `Arc`, so routes built from them stay shared.
            let mut next: BTreeMap<ServiceKey, Arc<ServiceSummary>> = BTreeMap::new();
            for s in update.upserts {
                let entry = match self.services.get(&s.key) {
                    Some(old) if **old == s => old.clone(),
                    _ => {
                        touched.insert(s.key.clone());
                        Arc::new(s)
                    }
                };
                next.insert(entry.key.clone(), entry);
            }
            touched.extend(
                self.services
                    .keys()
                    .filter(|k| !next.contains_key(*k))
                    .cloned(),
            );
            self.services = next;
        } else {
            for s in update.upserts {
                if self.services.get(&s.key).is_none_or(|old| **old != s) {
                    touched.insert(s.key.clone());
                    self.services.insert(s.key.clone(), Arc::new(s));
                }
            }
            for k in &update.removals {
                if self.services.remove(k).is_some() {
                    touched.insert(k.clone());
                }
            }
        }
        if let Some(g) = update.gateways
            && g != self.gateways
        {
            self.gateways = g;
            // Every route through this peer carries its gateway addresses.
            touched.extend(self.services.keys().cloned());
        }
        self.epoch = update.epoch;
        self.version = update.version;
        self.stored_at_ms = now_ms;
        touched
    }

    /// Replays a stored delta during recovery.
    pub fn replay(&mut self, d: &StoredDelta) {
        if !self.accepts_delta(&d.epoch, d.version) {
            return;
        }
        for s in &d.upserts {
            self.services.insert(s.key.clone(), Arc::new(s.clone()));
        }
        for k in &d.removals {
            self.services.remove(k);
        }
        if let Some(g) = &d.gateways {
            self.gateways = g.clone();
        }
        self.version = d.version;
        self.stored_at_ms = d.stored_at_ms;
    }
}
