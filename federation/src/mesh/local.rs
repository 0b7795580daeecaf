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

/// One export's change: the new export, or `None` when it is no longer exported.
pub type ExportChange = (ServiceKey, Option<ExportedService>);

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

    /// The changes the sources imply, given the sources the current exports were last built
    /// from (`applied_*`). Only exports whose spec or registered endpoints differ are rebuilt,
    /// so a one-line edit of a 10,000-service catalog costs a comparison pass, not a rebuild.
    pub fn changes(
        &self,
        applied_file: &CatalogFile,
        applied_registered: &BTreeMap<ServiceKey, Vec<Endpoint>>,
        file: &CatalogFile,
        registered: &BTreeMap<ServiceKey, Vec<Endpoint>>,
        now_ms: i64,
    ) -> (Vec<ExportChange>, BTreeMap<ServiceKey, i64>) {
        use std::collections::{HashMap, HashSet};
        let before: HashMap<(&str, &str), &crate::catalog::ExportSpec> = applied_file
            .exports
            .iter()
            .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
            .collect();
        let registry_moved = applied_registered != registered;
        let mut present: HashSet<(&str, &str)> = HashSet::with_capacity(file.exports.len());
        let mut changes = Vec::new();
        let mut fresh = BTreeMap::new();
        for spec in &file.exports {
            let id = (spec.namespace.as_str(), spec.name.as_str());
            present.insert(id);
            let same_spec = before.get(&id).is_some_and(|old| *old == spec);
            if same_spec && !registry_moved {
                continue;
            }
            let key = spec.key();
            if same_spec && applied_registered.get(&key) == registered.get(&key) {
                continue;
            }
            let at = match self.exported_at.get(&key) {
                Some(at) => *at,
                None => {
                    fresh.insert(key.clone(), now_ms);
                    now_ms
                }
            };
            let extra = registered.get(&key).map(Vec::as_slice).unwrap_or_default();
            let svc = spec.to_service(extra, at);
            if self.exports.get(&key).is_none_or(|old| **old != svc) {
                changes.push((key, Some(svc)));
            }
        }
        for key in self.exports.keys() {
            if !present.contains(&(key.namespace.as_str(), key.name.as_str())) {
                changes.push((key.clone(), None));
            }
        }
        (changes, fresh)
    }

    /// Applies a diff (after the caller persisted it): bumps the version once and logs each key.
    pub fn apply(
        &mut self,
        changes: Vec<ExportChange>,
        fresh: BTreeMap<ServiceKey, i64>,
    ) -> Vec<ServiceKey> {
        self.exported_at.extend(fresh);
        if changes.is_empty() {
            return Vec::new();
        }
        self.version += 1;
        let mut keys = Vec::with_capacity(changes.len());
        for (key, svc) in changes {
            match svc {
                Some(svc) => {
                    self.exports.insert(key.clone(), Arc::new(svc));
                }
                None => {
                    self.exports.remove(&key);
                    self.exported_at.remove(&key);
                }
            }
            self.log.record(self.version, Some(key.clone()));
            keys.push(key);
        }
        keys
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::parse_catalog;

    fn file(text: &str) -> CatalogFile {
        parse_catalog(text).expect("catalog")
    }

    const A: &str = "exports:\n  - {namespace: s, name: a, ports: [{port: 80, protocol: http}]}\n  - {namespace: s, name: b, ports: [{port: 80, protocol: http}]}\n";

    #[test]
    fn only_changed_exports_are_rebuilt() {
        let zone = Zone::new("z").expect("zone");
        let mut local = LocalCatalog::new("e".into(), 1, BTreeMap::new(), zone);
        let none = BTreeMap::new();
        let empty = CatalogFile::default();
        let first = file(A);
        let (changes, fresh) = local.changes(&empty, &none, &first, &none, 7);
        assert_eq!(changes.len(), 2);
        assert_eq!(fresh.values().copied().collect::<Vec<_>>(), [7, 7]);
        assert_eq!(local.apply(changes, fresh).len(), 2);
        assert_eq!(local.version, 2);

        // Same file: nothing. One spec edited, one removed, one added: exactly those.
        assert!(local.changes(&first, &none, &first, &none, 8).0.is_empty());
        let second = file(
            "exports:\n  - {namespace: s, name: a, ports: [{port: 81, protocol: http}]}\n  - {namespace: s, name: c, ports: [{port: 80, protocol: http}]}\n",
        );
        let (changes, fresh) = local.changes(&first, &none, &second, &none, 9);
        let summary: Vec<(String, bool)> = changes
            .iter()
            .map(|(k, s)| (k.to_string(), s.is_some()))
            .collect();
        assert_eq!(
            summary,
            [
                ("s/a".to_string(), true),
                ("s/c".to_string(), true),
                ("s/b".to_string(), false)
            ]
        );
        assert_eq!(
            fresh.keys().map(ToString::to_string).collect::<Vec<_>>(),
            ["s/c"]
        );
        local.apply(changes, fresh);
        // The first-export time of a kept service does not move.
        assert_eq!(
            local
                .exported_at
                .get(&ServiceKey::parse("s/a").expect("key")),
            Some(&7)
        );
        assert!(
            !local
                .exported_at
                .contains_key(&ServiceKey::parse("s/b").expect("key"))
        );

        // A registered endpoint for one service rebuilds only that service.
        let mut reg = BTreeMap::new();
        reg.insert(
            ServiceKey::parse("s/c").expect("key"),
            vec![Endpoint {
                address: "10.0.0.9:80".parse().expect("addr"),
                ready: true,
                zone: None,
                weight: 1,
            }],
        );
        let (changes, _) = local.changes(&second, &none, &second, &reg, 10);
        assert_eq!(
            changes
                .iter()
                .map(|(k, _)| k.to_string())
                .collect::<Vec<_>>(),
            ["s/c"]
        );
    }
}
