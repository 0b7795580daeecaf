//! The federation's mutable state behind one async lock, and the operations that change it.
//! Every operation persists before anything it changed is visible (published, sent or ACKed), so
//! a crash never leaves what others saw ahead of the store and an ACK to a peer always means
//! "durable". Most persist first and change memory after; a peer's update changes memory first,
//! undoably and hidden by the lock (see [`super::peer_update`]), and every change is checked for
//! the VIPs it needs before its first write (see [`super::admission`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::catalog::CatalogFile;
use crate::mesh::{
    ClusterPlace, KubeAddrs, LocalCatalog, LocalSide, MeshView, PeerCatalog, PeerSide, PeerStatus,
    Route, RouteMap, StoredDelta, merge_key,
};
use crate::model::{ClusterName, Endpoint, ServiceKey};
use crate::node::admission::QuotaUse;
use crate::node::keys::{self, LocalMeta};
use crate::peering::PeerRecord;
use crate::store::{AnyStore, Op, Store, StoreError, commit_in_chunks};
use crate::vip::{VipError, VipTable, cluster_vip_name, service_vip_name};

/// Keys whose routes (and VIPs) are computed, persisted and installed together.
pub const RECOMPUTE_BATCH: usize = 2_000;

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
    /// Shared with the published view (a recompute copies only the shards it changes).
    pub routes: RouteMap,
    pub view_version: u64,
    /// VIP names one peer's services may hold (`vips.max_per_peer`).
    pub vip_quota: u64,
    /// Each peer's count against its quota, for the catalog it was computed for.
    pub quota_uses: BTreeMap<ClusterName, QuotaUse>,
    /// Keys left without a route because their VIPs did not fit when the state was loaded.
    pub unaddressed: BTreeSet<ServiceKey>,
    /// Why the federation runs degraded (some stored state could not be installed), if it does.
    pub degraded: Option<String>,
    /// On Kubernetes: each route's local face, kept by the import writer
    /// ([`crate::kubernetes`]) and copied into the route whenever it is recomputed.
    pub kube_addrs: BTreeMap<ServiceKey, Arc<KubeAddrs>>,
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
    /// The change needs more VIPs than the ranges have free; refused whole.
    #[error("refused, nothing of it was stored: {0}")]
    NoRoom(#[source] VipError),
    #[error(
        "refused, nothing of it was stored: {peer}'s services would hold {names} VIP names here, \
         over its quota of {quota} (vips.max_per_peer; each imported service takes two names): \
         the peer must export fewer services to this cluster, or raise the quota"
    )]
    OverQuota {
        peer: ClusterName,
        names: u64,
        quota: u64,
    },
}

impl StateError {
    /// A refusal of the change itself (retrying the same change cannot succeed), as opposed to a
    /// failure of the store (worth retrying).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StateError::Rejected(_) | StateError::NoRoom(_) | StateError::OverQuota { .. }
        )
    }
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
    commit_in_chunks(store, ops, &mut 0).await
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
    ///
    /// Keys are handled in batches of [`RECOMPUTE_BATCH`]: a peer's 100,000-service snapshot
    /// never stages 100,000 routes and 200,000 VIP names at once. A store error stops at its
    /// batch; the routes of earlier batches stay installed (their VIPs are persisted) and are
    /// published with the next view.
    pub async fn recompute(
        &mut self,
        keys: Option<BTreeSet<ServiceKey>>,
        stale: &BTreeSet<ClusterName>,
        now_ms: i64,
    ) -> Result<bool, StateError> {
        self.recompute_with(keys, stale, now_ms, Vec::new(), &mut false)
            .await
    }

    /// [`MeshState::recompute`], committing `first` (writes the new routes depend on) together
    /// with the first batch's VIPs; `first_durable` tells, also on error, whether it was.
    pub(crate) async fn recompute_with(
        &mut self,
        keys: Option<BTreeSet<ServiceKey>>,
        stale: &BTreeSet<ClusterName>,
        now_ms: i64,
        mut first: Vec<Op>,
        first_durable: &mut bool,
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
            self.vips
                .apply_with(&[], &[], now_ms, first, first_durable)
                .await?;
            return Ok(false);
        }
        let sides: Vec<PeerSide<'_>> = peer_sides(&self.peers, stale);
        let local = LocalSide {
            me: &self.me,
            exports: &self.local.exports,
            zone: self.local.zone(),
            gateways: self.local.gateways.clone().into(),
        };
        let mut changed = false;
        let mut keys = keys.into_iter().peekable();
        while keys.peek().is_some() {
            let mut next_routes: Vec<(ServiceKey, Option<Route>)> =
                Vec::with_capacity(RECOMPUTE_BATCH);
            for key in keys.by_ref().take(RECOMPUTE_BATCH) {
                let route = if self.unaddressed.contains(&key) {
                    None
                } else {
                    merge_key(&key, &local, &sides, &self.file.imports, now_ms)
                };
                next_routes.push((key, route));
            }
            // VIP names that appear and disappear with this batch (each name belongs to one key).
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
            let first = std::mem::take(&mut first);
            self.vips
                .apply_with(&added, &removed, now_ms, first, first_durable)
                .await?;
            let pool = self.vips.pool();
            for (key, route) in next_routes {
                match route {
                    None => {
                        if self.routes.contains_key(&key) {
                            self.routes.remove(&key);
                            changed = true;
                        }
                    }
                    Some(mut route) => {
                        route.vips = pool
                            .get(&service_vip_name(&key))
                            .cloned()
                            .unwrap_or_default();
                        // Exactly as long as needed: a federation may hold 100,000 routes.
                        let mut cluster_vips = Vec::with_capacity(route.clusters.len());
                        cluster_vips.extend(route.clusters.iter().filter_map(|c| {
                            let a = pool.get(&cluster_vip_name(&c.place.cluster, &key))?.clone();
                            Some((c.place.cluster.clone(), a))
                        }));
                        route.cluster_vips = cluster_vips;
                        route.kube = self.kube_addrs.get(&key).cloned();
                        if self.routes.get(&key).is_none_or(|r| **r != route) {
                            self.routes.insert(key, Arc::new(route));
                            changed = true;
                        }
                    }
                }
            }
        }
        Ok(changed)
    }

    /// Sets (or, with `None`, clears) the local face of routes on Kubernetes and installs it in
    /// their routes at once (nothing else about them changes). Returns whether any route changed.
    pub fn set_kube_addrs(&mut self, changes: Vec<(ServiceKey, Option<Arc<KubeAddrs>>)>) -> bool {
        let mut changed = false;
        for (key, addrs) in changes {
            match &addrs {
                Some(a) => self.kube_addrs.insert(key.clone(), a.clone()),
                None => self.kube_addrs.remove(&key),
            };
            if let Some(route) = self.routes.get(&key)
                && route.kube != addrs
            {
                let mut route = (**route).clone();
                route.kube = addrs;
                self.routes.insert(key, Arc::new(route));
                changed = true;
            }
        }
        changed
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

/// Every peer's catalog as the merge sees it.
pub fn peer_sides<'a>(
    peers: &'a BTreeMap<ClusterName, PeerEntry>,
    stale: &BTreeSet<ClusterName>,
) -> Vec<PeerSide<'a>> {
    peers
        .values()
        .map(|p| PeerSide {
            place: &p.place,
            services: &p.catalog.services,
            gateways: p.catalog.gateways.clone().into(),
            stale: stale.contains(&p.place.cluster),
            confirmed_at_ms: p.catalog.stored_at_ms,
        })
        .collect()
}

/// The VIP names a route holds: its clusterset name and one per cluster serving it.
pub fn vip_names(route: &Route) -> BTreeSet<String> {
    std::iter::once(service_vip_name(&route.key))
        .chain(
            route
                .clusters
                .iter()
                .map(|c| cluster_vip_name(&c.place.cluster, &route.key)),
        )
        .collect()
}
