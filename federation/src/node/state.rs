//! The federation's mutable state behind one async lock, and the operations that change it.
//! Every operation persists first and changes memory only after the store acknowledged, so a
//! crash never leaves memory ahead of the store and an ACK to a peer always means "durable".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::catalog::CatalogFile;
use crate::mesh::{
    ClusterPlace, LocalCatalog, LocalSide, MeshView, PeerCatalog, PeerSide, PeerStatus, Route,
    StoredDelta, merge_key,
};
use crate::model::{ClusterName, Endpoint, ServiceKey};
use crate::node::keys::{self, LocalMeta};
use crate::peering::PeerRecord;
use crate::peering::update::PeerUpdate;
use crate::store::{AnyStore, MAX_OPS_PER_COMMIT, Op, Store, StoreError};
use crate::vip::{VipError, VipTable, cluster_vip_name, service_vip_name};

/// Deltas kept in a peer's delta log before it is folded into a new catalog blob.
const COMPACT_AFTER: usize = 256;

/// One peer: its record and the catalog it sent us.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub record: PeerRecord,
    pub place: Arc<ClusterPlace>,
    pub catalog: PeerCatalog,
    pub deltas: usize,
}

pub struct MeshState {
    pub me: Arc<ClusterPlace>,
    pub local: LocalCatalog,
    pub file: Arc<CatalogFile>,
    pub registered: Arc<BTreeMap<ServiceKey, Vec<Endpoint>>>,
    /// The sources the local exports were last built from (see [`LocalCatalog::changes`]).
    pub applied_file: Arc<CatalogFile>,
    pub applied_registered: Arc<BTreeMap<ServiceKey, Vec<Endpoint>>>,
    pub peers: BTreeMap<ClusterName, PeerEntry>,
    pub vips: VipTable,
    pub routes: BTreeMap<ServiceKey, Arc<Route>>,
    pub view_version: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vip(#[from] VipError),
    #[error("cannot encode state for the store: {0}")]
    Encode(String),
    #[error("{0}")]
    Rejected(String),
}

pub fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(v).map_err(|e| StateError::Encode(e.to_string()))
}

pub fn place_of(record: &PeerRecord) -> Arc<ClusterPlace> {
    Arc::new(ClusterPlace {
        cluster: record.cluster.clone(),
        trust_domain: record.trust_domain.clone(),
        region: record.region.clone(),
        zone: record.zone.clone(),
    })
}

/// Commits ops in chunks the store accepts.
pub async fn commit_chunked(store: &AnyStore, ops: Vec<Op>) -> Result<(), StoreError> {
    for chunk in ops.chunks(MAX_OPS_PER_COMMIT) {
        store.commit(Vec::new(), chunk.to_vec()).await?;
    }
    Ok(())
}

/// Loads one peer's catalog: the blob, then the deltas after it.
pub async fn load_peer_catalog(
    store: &AnyStore,
    peer: &ClusterName,
) -> Result<(PeerCatalog, usize), StateError> {
    let mut catalog: PeerCatalog = match store.get_blob(&keys::peer_catalog(peer)).await? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| StateError::Encode(format!("catalog of {peer}: {e}")))?,
        None => PeerCatalog::default(),
    };
    let deltas = store.list(&keys::peer_deltas(peer)).await?;
    let n = deltas.len();
    for (_, value) in deltas {
        let d: StoredDelta = serde_json::from_slice(&value)
            .map_err(|e| StateError::Encode(format!("delta of {peer}: {e}")))?;
        catalog.replay(&d);
    }
    Ok((catalog, n))
}

impl MeshState {
    /// Persists and installs a peer's checked update. Returns the keys it changed.
    pub async fn apply_peer_update(
        &mut self,
        store: &AnyStore,
        peer: &ClusterName,
        update: PeerUpdate,
        now_ms: i64,
    ) -> Result<BTreeSet<ServiceKey>, StateError> {
        let entry = self
            .peers
            .get(peer)
            .ok_or_else(|| StateError::Rejected(format!("{peer} is not a peer")))?;
        if !update.snapshot && !entry.catalog.accepts_delta(&update.epoch, update.version) {
            if entry.catalog.epoch == update.epoch && update.version <= entry.catalog.version {
                // Already stored (a resend after a lost ACK): idempotent.
                return Ok(BTreeSet::new());
            }
            return Err(StateError::Rejected(format!(
                "delta {} of epoch {} does not follow stored version {} of epoch {}: send a snapshot",
                update.version, update.epoch, entry.catalog.version, entry.catalog.epoch
            )));
        }
        let mut record = entry.record.clone();
        let bundle_changed = match &update.bundle {
            Some(b) if b.sequence() > record.bundle_sequence => {
                record.bundle = b.to_spiffe_json();
                record.bundle_sequence = b.sequence();
                true
            }
            _ => false,
        };
        let record_op = if bundle_changed {
            Some(Op::Put {
                key: keys::peer_record(peer),
                value: json(&record)?,
            })
        } else {
            None
        };
        if update.snapshot {
            // A snapshot replaces everything: write it as the new blob, then drop the delta log.
            let mut next = PeerCatalog::default();
            let touched = {
                let old = &entry.catalog;
                next.apply(update, now_ms);
                let mut t: BTreeSet<ServiceKey> = next
                    .services
                    .iter()
                    .filter(|(k, v)| old.services.get(*k) != Some(*v))
                    .map(|(k, _)| k.clone())
                    .collect();
                t.extend(
                    old.services
                        .keys()
                        .filter(|k| !next.services.contains_key(*k))
                        .cloned(),
                );
                t
            };
            store
                .put_blob(&keys::peer_catalog(peer), &json(&next)?, Vec::new())
                .await?;
            let mut ops = vec![Op::DeletePrefix {
                prefix: keys::peer_deltas(peer),
            }];
            ops.extend(record_op);
            store.commit(Vec::new(), ops).await?;
            if let Some(e) = self.peers.get_mut(peer) {
                e.catalog = next;
                e.record = record;
                e.deltas = 0;
            }
            return Ok(touched);
        }
        // A delta: one small commit (the delta and, if it changed, the bundle), then memory.
        let mut ops = vec![Op::Put {
            key: keys::peer_delta(peer, update.version),
            value: json(&StoredDelta::of(&update, now_ms))?,
        }];
        ops.extend(record_op);
        store.commit(Vec::new(), ops).await?;
        let Some(e) = self.peers.get_mut(peer) else {
            return Ok(BTreeSet::new());
        };
        let touched = e.catalog.apply(update, now_ms);
        e.record = record;
        e.deltas += 1;
        if e.deltas > COMPACT_AFTER {
            // Fold the log into a fresh blob. Failing here loses nothing: the deltas stay.
            let folded = async {
                store
                    .put_blob(&keys::peer_catalog(peer), &json(&e.catalog)?, Vec::new())
                    .await?;
                store
                    .commit(
                        Vec::new(),
                        vec![Op::DeletePrefix {
                            prefix: keys::peer_deltas(peer),
                        }],
                    )
                    .await?;
                Ok::<_, StateError>(())
            };
            match folded.await {
                Ok(()) => e.deltas = 0,
                Err(err) => {
                    tracing::warn!(peer.cluster = %peer, error = %err, "compacting the delta log failed; retrying later")
                }
            }
        }
        Ok(touched)
    }

    /// Recomputes the exports from the sources; persists first-export times and the catalog
    /// version, then applies the change in memory. Returns the keys whose export changed.
    pub async fn refresh_local(
        &mut self,
        store: &AnyStore,
        now_ms: i64,
    ) -> Result<Vec<ServiceKey>, StateError> {
        let (changes, fresh) = self.local.changes(
            &self.applied_file,
            &self.applied_registered,
            &self.file,
            &self.registered,
            now_ms,
        );
        if changes.is_empty() {
            self.applied_file = self.file.clone();
            self.applied_registered = self.registered.clone();
            return Ok(Vec::new());
        }
        let mut ops: Vec<Op> = fresh
            .iter()
            .map(|(k, at)| {
                Ok(Op::Put {
                    key: keys::exported_at(k),
                    value: json(at)?,
                })
            })
            .collect::<Result<_, StateError>>()?;
        // A service no longer exported forgets its first-export time (a re-export is new).
        for (k, _) in changes.iter().filter(|(_, svc)| svc.is_none()) {
            ops.push(Op::Delete {
                key: keys::exported_at(k),
            });
        }
        let meta = LocalMeta {
            epoch: self.local.epoch.clone(),
            version: self.local.version + 1,
        };
        ops.push(Op::Put {
            key: keys::LOCAL_META.into(),
            value: json(&meta)?,
        });
        commit_chunked(store, ops).await?;
        self.applied_file = self.file.clone();
        self.applied_registered = self.registered.clone();
        Ok(self.local.apply(changes, fresh))
    }

    /// Persists the catalog version after a non-service change (bundle, gateways).
    pub async fn persist_local_meta(&self, store: &AnyStore) -> Result<(), StateError> {
        let meta = LocalMeta {
            epoch: self.local.epoch.clone(),
            version: self.local.version,
        };
        store
            .commit(
                Vec::new(),
                vec![Op::Put {
                    key: keys::LOCAL_META.into(),
                    value: json(&meta)?,
                }],
            )
            .await?;
        Ok(())
    }

    /// Recomputes the routes of `keys` (all keys when `None`), assigns VIPs for every name that
    /// exists (persisted before use), and returns whether any route changed.
    pub async fn recompute(
        &mut self,
        keys: Option<BTreeSet<ServiceKey>>,
        stale: &BTreeSet<ClusterName>,
        now_ms: i64,
    ) -> Result<bool, StateError> {
        let keys: BTreeSet<ServiceKey> = match keys {
            Some(k) => k,
            None => {
                let mut all: BTreeSet<ServiceKey> = self.local.exports.keys().cloned().collect();
                for p in self.peers.values() {
                    all.extend(p.catalog.services.keys().cloned());
                }
                all.extend(self.routes.keys().cloned());
                all
            }
        };
        if keys.is_empty() {
            return Ok(false);
        }
        let sides: Vec<PeerSide<'_>> = self
            .peers
            .values()
            .map(|p| PeerSide {
                place: &p.place,
                services: &p.catalog.services,
                gateways: p.catalog.gateways.clone().into(),
                stale: stale.contains(&p.place.cluster),
                confirmed_at_ms: p.catalog.stored_at_ms,
            })
            .collect();
        let mut next_routes: BTreeMap<ServiceKey, Option<Route>> = BTreeMap::new();
        let local = LocalSide {
            me: &self.me,
            exports: &self.local.exports,
            zone: self.local.zone(),
            gateways: self.local.gateways.clone().into(),
        };
        for key in &keys {
            let route = merge_key(key, &local, &sides, &self.file.imports, now_ms);
            next_routes.insert(key.clone(), route);
        }
        drop(sides);
        // VIP names that appear and disappear with this change (each name belongs to one key).
        let mut added: Vec<String> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        for (key, route) in &next_routes {
            let before: BTreeSet<String> = self
                .routes
                .get(key)
                .map(|r| vip_names(r))
                .unwrap_or_default();
            let after: BTreeSet<String> = route.as_ref().map(vip_names).unwrap_or_default();
            added.extend(after.difference(&before).cloned());
            // Names already held stay assigned; `apply` skips them cheaply.
            added.extend(after.intersection(&before).cloned());
            removed.extend(before.difference(&after).cloned());
        }
        self.vips.apply(&added, &removed, now_ms).await?;
        let mut changed = false;
        for (key, route) in next_routes {
            match route {
                None => changed |= self.routes.remove(&key).is_some(),
                Some(mut route) => {
                    let pool = self.vips.pool();
                    route.vips = pool
                        .get(&service_vip_name(&key))
                        .cloned()
                        .unwrap_or_default();
                    route.cluster_vips = route
                        .clusters
                        .iter()
                        .filter_map(|c| {
                            let a = pool.get(&cluster_vip_name(&c.place.cluster, &key))?.clone();
                            Some((c.place.cluster.clone(), a))
                        })
                        .collect();
                    if self.routes.get(&key).map(|r| **r != route).unwrap_or(true) {
                        self.routes.insert(key, Arc::new(route));
                        changed = true;
                    }
                }
            }
        }
        Ok(changed)
    }

    /// Builds the immutable view to publish.
    pub fn view(
        &mut self,
        bundles: Vec<crate::identity::TrustBundle>,
        peers: Vec<PeerStatus>,
    ) -> Arc<MeshView> {
        self.view_version += 1;
        Arc::new(MeshView {
            version: self.view_version,
            me: (*self.me).clone(),
            routes: self.routes.clone(),
            exports: self.local.exports.clone(),
            bundles,
            peers,
            policies: self.file.policies.clone(),
        })
    }
}

fn vip_names(route: &Route) -> BTreeSet<String> {
    std::iter::once(service_vip_name(&route.key))
        .chain(
            route
                .clusters
                .iter()
                .map(|c| cluster_vip_name(&c.place.cluster, &route.key)),
        )
        .collect()
}
