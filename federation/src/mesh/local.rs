//! The local catalog: the services this cluster exports (from the catalog file and the registry),
//! with a version that grows on every change and a change log, so each peer session can send
//! exactly what changed since the version that peer has stored.
//!
//! Pure state; persistence of the version/epoch and first-export times is done by the caller.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::catalog::CatalogFile;
use crate::changelog::{ChangeLog, Since};
use crate::model::{ClusterName, Endpoint, ExportedService, ServiceKey, ServiceSummary, Zone};
use crate::peering::update::GatewayAddr;

/// Changes kept for resuming peers without a snapshot.
const LOG_CAPACITY: usize = 100_000;

#[derive(Debug, Clone)]
pub struct LocalCatalog {
    /// Identifies this catalog's version history (a new epoch = versions restarted).
    pub epoch: String,
    pub version: u64,
    /// Shared with published views: an unchanged export keeps its `Arc`.
    pub exports: BTreeMap<ServiceKey, Arc<ExportedService>>,
    /// Our gateways' advertised addresses (sent to peers).
    pub gateways: Vec<GatewayAddr>,
    /// When each service was first exported (MCS conflict resolution), persisted by the caller.
    pub exported_at: BTreeMap<ServiceKey, i64>,
    log: ChangeLog<ServiceKey>,
    zone: Zone,
}

impl LocalCatalog {
    pub fn new(
        epoch: String,
        version: u64,
        exported_at: BTreeMap<ServiceKey, i64>,
        zone: Zone,
    ) -> Self {
        Self {
            epoch,
            version,
            exports: BTreeMap::new(),
            gateways: Vec::new(),
            exported_at,
            log: ChangeLog::new(version, LOG_CAPACITY),
            zone,
        }
    }

    /// The export set the sources describe now. Pure. New services get `now_ms` as their first
    /// export time (returned in the second map so the caller can persist it).
    pub fn desired(
        &self,
        file: &CatalogFile,
        registered: &BTreeMap<ServiceKey, Vec<Endpoint>>,
        now_ms: i64,
    ) -> (
        BTreeMap<ServiceKey, ExportedService>,
        BTreeMap<ServiceKey, i64>,
    ) {
        let mut fresh = BTreeMap::new();
        let exports = file
            .exports
            .iter()
            .map(|spec| {
                let key = spec.key();
                let at = match self.exported_at.get(&key) {
                    Some(at) => *at,
                    None => {
                        fresh.insert(key.clone(), now_ms);
                        now_ms
                    }
                };
                let extra = registered.get(&key).map(Vec::as_slice).unwrap_or_default();
                (key, spec.to_service(extra, at))
            })
            .collect();
        (exports, fresh)
    }

    /// Replaces the export set; returns the keys that changed (and bumps the version if any).
    pub fn set_exports(
        &mut self,
        exports: BTreeMap<ServiceKey, ExportedService>,
        fresh: BTreeMap<ServiceKey, i64>,
    ) -> Vec<ServiceKey> {
        self.exported_at.extend(fresh);
        let mut changed: Vec<ServiceKey> = Vec::new();
        let mut next = BTreeMap::new();
        for (key, svc) in exports {
            match self.exports.get(&key) {
                Some(old) if **old == svc => {
                    next.insert(key, old.clone());
                }
                _ => {
                    changed.push(key.clone());
                    next.insert(key, Arc::new(svc));
                }
            }
        }
        changed.extend(
            self.exports
                .keys()
                .filter(|k| !next.contains_key(*k))
                .cloned(),
        );
        if !changed.is_empty() {
            self.version += 1;
            for key in &changed {
                self.log.record(self.version, Some(key.clone()));
            }
            self.exports = next;
        }
        changed
    }

    pub fn zone(&self) -> &crate::model::Zone {
        &self.zone
    }

    /// Records a change that is not about one service (bundle rotation, gateway set).
    pub fn bump(&mut self) {
        self.version += 1;
        self.log.record(self.version, None);
    }

    pub fn set_gateways(&mut self, mut gateways: Vec<GatewayAddr>) -> bool {
        gateways.sort();
        if gateways == self.gateways {
            return false;
        }
        self.gateways = gateways;
        self.bump();
        true
    }

    /// What `peer` may see of `key` now.
    pub fn view_for(&self, peer: &ClusterName, key: &ServiceKey) -> Option<ServiceSummary> {
        self.exports
            .get(key)
            .filter(|s| s.visible_to(peer))
            .map(|s| s.summary(&self.zone))
    }

    /// Everything `peer` may see.
    pub fn snapshot_for(&self, peer: &ClusterName) -> Vec<ServiceSummary> {
        self.exports
            .values()
            .filter(|s| s.visible_to(peer))
            .map(|s| s.summary(&self.zone))
            .collect()
    }

    pub fn since(&self, version: u64) -> Since<ServiceKey> {
        self.log.since(version, self.version)
    }
}
