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

/// What a delta replaced: see [`PeerCatalog::apply_delta`].
#[derive(Debug)]
pub struct DeltaUndo {
    services: Vec<(ServiceKey, Option<Arc<ServiceSummary>>)>,
    gateways: Option<Vec<GatewayAddr>>,
    epoch: String,
    version: u64,
    stored_at_ms: i64,
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
        if !update.snapshot {
            return self.apply_delta(update, now_ms).0;
        }
        let (next, touched) = self.after_snapshot(update, now_ms);
        *self = next;
        touched
    }

    /// The catalog a checked snapshot makes of this one (which is left as it is), and the keys
    /// whose entry changed. Unchanged entries keep their `Arc`, so the routes built from them
    /// stay shared instead of being duplicated by a resent snapshot.
    pub fn after_snapshot(
        &self,
        update: PeerUpdate,
        now_ms: i64,
    ) -> (PeerCatalog, BTreeSet<ServiceKey>) {
        let mut touched = BTreeSet::new();
        let mut services: BTreeMap<ServiceKey, Arc<ServiceSummary>> = BTreeMap::new();
        for s in update.upserts {
            let entry = match self.services.get(&s.key) {
                Some(old) if **old == s => old.clone(),
                _ => {
                    touched.insert(s.key.clone());
                    Arc::new(s)
                }
            };
            services.insert(entry.key.clone(), entry);
        }
        touched.extend(
            self.services
                .keys()
                .filter(|k| !services.contains_key(*k))
                .cloned(),
        );
        let mut gateways = self.gateways.clone();
        if let Some(g) = update.gateways
            && g != gateways
        {
            gateways = g;
            // Every route through this peer carries its gateway addresses.
            touched.extend(services.keys().cloned());
        }
        let next = PeerCatalog {
            epoch: update.epoch,
            version: update.version,
            services,
            gateways,
            stored_at_ms: now_ms,
        };
        (next, touched)
    }

    /// Applies a checked delta (not a snapshot) like [`PeerCatalog::apply`], and returns what it
    /// replaced, so that [`PeerCatalog::undo`] can put it back if storing the delta fails.
    pub fn apply_delta(
        &mut self,
        update: PeerUpdate,
        now_ms: i64,
    ) -> (BTreeSet<ServiceKey>, DeltaUndo) {
        let mut undo = DeltaUndo {
            services: Vec::new(),
            gateways: None,
            epoch: self.epoch.clone(),
            version: self.version,
            stored_at_ms: self.stored_at_ms,
        };
        let mut touched = BTreeSet::new();
        for s in update.upserts {
            if self.services.get(&s.key).is_none_or(|old| **old != s) {
                touched.insert(s.key.clone());
                let key = s.key.clone();
                let old = self.services.insert(key.clone(), Arc::new(s));
                undo.services.push((key, old));
            }
        }
        for k in update.removals {
            if let Some(old) = self.services.remove(&k) {
                touched.insert(k.clone());
                undo.services.push((k, Some(old)));
            }
        }
        if let Some(g) = update.gateways
            && g != self.gateways
        {
            undo.gateways = Some(std::mem::replace(&mut self.gateways, g));
            touched.extend(self.services.keys().cloned());
        }
        self.epoch = update.epoch;
        self.version = update.version;
        self.stored_at_ms = now_ms;
        (touched, undo)
    }

    /// Puts back what [`PeerCatalog::apply_delta`] changed.
    pub fn undo(&mut self, undo: DeltaUndo) {
        for (key, old) in undo.services.into_iter().rev() {
            match old {
                Some(old) => self.services.insert(key, old),
                None => self.services.remove(&key),
            };
        }
        if let Some(g) = undo.gateways {
            self.gateways = g;
        }
        self.epoch = undo.epoch;
        self.version = undo.version;
        self.stored_at_ms = undo.stored_at_ms;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServicePort};

    fn summary(name: &str, port: u16) -> ServiceSummary {
        ServiceSummary {
            key: ServiceKey::parse(&format!("shop/{name}")).expect("key"),
            ports: vec![ServicePort {
                name: None,
                port,
                protocol: Protocol::Http,
            }],
            zones: Default::default(),
            weight: 100,
            metadata: Default::default(),
            headless: false,
            exported_at_ms: 1,
        }
    }

    fn gateway(port: u16) -> GatewayAddr {
        GatewayAddr {
            name: "gw".into(),
            address: format!("127.0.0.1:{port}").parse().expect("addr"),
            zone: None,
        }
    }

    fn update(version: u64, snapshot: bool, upserts: Vec<ServiceSummary>) -> PeerUpdate {
        PeerUpdate {
            version,
            epoch: "e".into(),
            snapshot,
            upserts,
            removals: Vec::new(),
            bundle: None,
            gateways: Some(vec![gateway(1)]),
        }
    }

    #[test]
    fn an_undone_delta_leaves_the_catalog_as_it_was() {
        let mut c = PeerCatalog::default();
        c.apply(
            update(1, true, vec![summary("a", 80), summary("b", 80)]),
            10,
        );
        let before = c.clone();
        let mut d = update(2, false, vec![summary("a", 81), summary("c", 80)]);
        d.removals = vec![ServiceKey::parse("shop/b").expect("key")];
        d.gateways = Some(vec![gateway(2)]);
        let (touched, undo) = c.apply_delta(d, 20);
        assert_eq!(touched.len(), 3, "every key: the gateways moved");
        assert_eq!(c.version, 2);
        c.undo(undo);
        assert_eq!(c, before);
        assert!(Arc::ptr_eq(
            &c.services[&summary("a", 80).key],
            &before.services[&summary("a", 80).key]
        ));
    }

    #[test]
    fn snapshots_keep_unchanged_entries_and_see_gateway_moves() {
        let mut c = PeerCatalog::default();
        c.apply(
            update(1, true, vec![summary("a", 80), summary("b", 80)]),
            10,
        );
        let a = c.services[&summary("a", 80).key].clone();
        // The same services again: nothing touched, the entries stay shared.
        let (next, touched) = c.after_snapshot(
            update(2, true, vec![summary("a", 80), summary("b", 80)]),
            20,
        );
        assert!(touched.is_empty());
        assert!(Arc::ptr_eq(&next.services[&a.key], &a));
        // New gateways touch every route through the peer.
        let mut moved = update(3, true, vec![summary("a", 80), summary("b", 80)]);
        moved.gateways = Some(vec![gateway(2)]);
        let (_, touched) = c.after_snapshot(moved, 30);
        assert_eq!(touched.len(), 2);
    }
}
