//! The local catalog: the services this cluster exports (from the catalog file and the registry),
//! with a version that grows on every change and a change log, so each peer session can send
//! exactly what changed since the version that peer has stored.
//!
//! Pure state; persistence of the version/epoch and first-export times is done by the caller.

use std::collections::BTreeMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::catalog::{CatalogFile, ExportSpec};
use crate::changelog::{ChangeLog, Since};
use crate::mesh::ExportMap;
use crate::model::{ClusterName, Endpoint, ExportedService, ServiceKey, ServiceSummary, Zone};
use crate::peering::update::GatewayAddr;

/// The address of a shared entry: its identity across catalogs the file source produced.
fn addr(spec: &Arc<ExportSpec>) -> usize {
    Arc::as_ptr(spec) as usize
}

/// Hashes an address (its low bits are alignment zeros): multiply, then fold the high half in.
#[derive(Debug, Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = n as u64;
    }
}

/// One export's change: the new export, or `None` when it is no longer exported.
pub type ExportChange = (ServiceKey, Option<ExportedService>);

/// Changes kept for resuming peers without a snapshot.
const LOG_CAPACITY: usize = 100_000;

#[derive(Debug, Clone)]
pub struct LocalCatalog {
    /// Identifies this catalog's version history (a new epoch = versions restarted).
    pub epoch: String,
    pub version: u64,
    /// Shared with published views (the map's unchanged shards, and each unchanged export).
    pub exports: ExportMap,
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
            exports: ExportMap::default(),
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
        type Id<'a> = (&'a str, &'a str);
        fn id(s: &ExportSpec) -> Id<'_> {
            (s.namespace.as_str(), s.name.as_str())
        }
        let registry_moved = applied_registered != registered;
        // The file source hands back unchanged entries as the very `Arc`s the exports were built
        // from: those are recognized by address, without hashing or comparing their text.
        let old_ptrs: HashSet<usize, BuildHasherDefault<AddrHasher>> =
            applied_file.exports.iter().map(addr).collect();
        let new_ptrs: HashSet<usize, BuildHasherDefault<AddrHasher>> =
            file.exports.iter().map(addr).collect();
        // Built only when an entry is not shared (an edit, or a file parsed from scratch).
        let mut before: Option<HashMap<Id<'_>, &Arc<ExportSpec>>> = None;
        let mut new_ids: HashSet<Id<'_>> = HashSet::new();
        let mut changes = Vec::new();
        let mut fresh = BTreeMap::new();
        for spec in &file.exports {
            let shared = old_ptrs.contains(&addr(spec));
            if !shared {
                new_ids.insert(id(spec));
            }
            let same_spec = shared || {
                let before = before.get_or_insert_with(|| {
                    applied_file.exports.iter().map(|s| (id(s), s)).collect()
                });
                before.get(&id(spec)).is_some_and(|old| ***old == **spec)
            };
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
                    let at = spec.exported_since_ms.map_or(now_ms, |t| t.min(now_ms));
                    fresh.insert(key.clone(), at);
                    at
                }
            };
            let extra = registered.get(&key).map(Vec::as_slice).unwrap_or_default();
            let svc = spec.to_service(extra, at);
            if self.exports.get(&key).is_none_or(|old| **old != svc) {
                changes.push((key, Some(svc)));
            }
        }
        // Withdrawn: exports whose entry left the file. Only entries the new file does not share
        // can have left, unless its key came back in an entry that is not shared either.
        let mut removed: Vec<ServiceKey> = applied_file
            .exports
            .iter()
            .filter(|s| !new_ptrs.contains(&addr(s)) && !new_ids.contains(&id(s)))
            .map(|s| s.key())
            .filter(|k| self.exports.contains_key(k))
            .collect();
        let added = changes
            .iter()
            .filter(|(k, _)| !self.exports.contains_key(k))
            .count();
        if self.exports.len() + added - removed.len() != file.exports.len() {
            // The exports were not built from `applied_file` alone: compare every key.
            let present: HashSet<Id<'_>> = file.exports.iter().map(|s| id(s)).collect();
            removed = self
                .exports
                .keys()
                .filter(|k| !present.contains(&(k.namespace.as_str(), k.name.as_str())))
                .cloned()
                .collect();
        }
        changes.extend(removed.into_iter().map(|k| (k, None)));
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

    /// Entries the incremental parser shares are recognized by address; the diff is the same as
    /// between two catalogs parsed from scratch.
    #[test]
    fn shared_entries_give_the_same_diff() {
        let json = |names: &[(&str, u16)]| {
            let exports: Vec<String> = names
                .iter()
                .map(|(n, p)| format!(r#"{{"namespace": "s", "name": "{n}", "ports": [{{"port": {p}, "protocol": "http"}}]}}"#))
                .collect();
            format!(r#"{{"exports": [{}]}}"#, exports.join(", "))
        };
        let v1 = json(&[("a", 80), ("b", 80), ("c", 80), ("d", 80)]);
        let v2 = json(&[("a", 80), ("b", 81), ("d", 80), ("e", 80)]);
        let mut parser = crate::catalog::CatalogParser::default();
        let (f1, f2) = (
            parser.parse(&v1).expect("v1"),
            parser.parse(&v2).expect("v2"),
        );
        assert!(Arc::ptr_eq(&f1.exports[0], &f2.exports[0]));
        let zone = Zone::new("z").expect("zone");
        let mut local = LocalCatalog::new("e".into(), 1, BTreeMap::new(), zone);
        let none = BTreeMap::new();
        let (changes, fresh) = local.changes(&CatalogFile::default(), &none, &f1, &none, 1);
        local.apply(changes, fresh);
        let summary = |changes: &[ExportChange]| {
            let mut v: Vec<(String, bool)> = changes
                .iter()
                .map(|(k, s)| (k.to_string(), s.is_some()))
                .collect();
            v.sort();
            v
        };
        let shared = summary(&local.changes(&f1, &none, &f2, &none, 2).0);
        let scratch = summary(&local.changes(&file(&v1), &none, &file(&v2), &none, 2).0);
        assert_eq!(shared, scratch);
        assert_eq!(
            shared,
            [
                ("s/b".to_string(), true),
                ("s/c".to_string(), false),
                ("s/e".to_string(), true)
            ]
        );
    }

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
