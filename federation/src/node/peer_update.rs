//! Receiving a peer's checked catalog update into the state: admission (the peer's VIP quota and
//! the free addresses, see [`super::admission`]), the store, memory and the routes it touches.
//!
//! Either the whole update is in force (stored, installed, routed) and it is ACKed, or nothing of
//! it is — memory, stored blob, delta log and peer record — and it is NACKed:
//! - a delta changes memory first but undoably, hidden by the state lock; it and the VIPs of its
//!   routes are one commit, and if that commit fails the catalog is put back;
//! - a snapshot is checked with its catalog staged in memory, then stored as the new blob, then
//!   its routes are computed with the delta log's deletion in their first commit. If anything
//!   fails after the blob was written, the previous catalog goes back to memory and to the store
//!   (the blob, folded with its deltas, and the record), and the routes are recomputed from it.
//!
//! Must not: publish the view or touch the peering stream (the session ACKs or NACKs).

use std::collections::BTreeSet;

use crate::mesh::{PeerCatalog, StoredDelta};
use crate::model::{ClusterName, ServiceKey};
use crate::node::admission::{check_quota, peer_vip_names};
use crate::node::keys;
use crate::node::state::{MeshState, PeerEntry, StateError, json};
use crate::peering::PeerRecord;
use crate::peering::update::PeerUpdate;
use crate::store::{AnyStore, Op, Store};

/// Deltas kept in a peer's delta log before it is folded into a new catalog blob.
const COMPACT_AFTER: usize = 256;

impl MeshState {
    /// Stores and installs a peer's checked update and recomputes the routes it touches; returns
    /// how many keys it touched. On error nothing of the update is left (see the module docs).
    pub async fn receive_peer_update(
        &mut self,
        store: &AnyStore,
        peer: &ClusterName,
        update: PeerUpdate,
        stale: &BTreeSet<ClusterName>,
        now_ms: i64,
    ) -> Result<usize, StateError> {
        if update.snapshot {
            return self
                .receive_snapshot(store, peer, update, stale, now_ms)
                .await;
        }
        let Some((ops, record)) = self.delta_ops(peer, &update, now_ms)? else {
            return Ok(0);
        };
        let before = self.quota_use(peer);
        let file = self.file.clone();
        let Some(entry) = self.peers.get_mut(peer) else {
            return Ok(0);
        };
        let keys: Vec<ServiceKey> = update
            .upserts
            .iter()
            .map(|s| s.key.clone())
            .chain(update.removals.iter().cloned())
            .collect();
        let counted = |c: &PeerCatalog| {
            peer_vip_names(
                keys.iter().filter(|k| c.services.contains_key(*k)),
                &file.imports,
                peer,
            )
        };
        let held_before = counted(&entry.catalog);
        let (touched, undo) = entry.catalog.apply_delta(update, now_ms);
        let after = (before + counted(&entry.catalog)).saturating_sub(held_before);
        let n = touched.len();
        let admitted = check_quota(peer, before, after, self.vip_quota)
            .and_then(|()| self.check_vips(&touched, None, &file.imports, now_ms));
        if let Err(e) = admitted {
            if let Some(entry) = self.peers.get_mut(peer) {
                entry.catalog.undo(undo);
            }
            return Err(e);
        }
        let mut durable = false;
        let result = self
            .recompute_with(Some(touched), stale, now_ms, ops, &mut durable)
            .await;
        let Some(e) = self.peers.get_mut(peer) else {
            return result.map(|_| n);
        };
        if !durable {
            e.catalog.undo(undo);
            return result.map(|_| n);
        }
        e.record = record;
        e.deltas += 1;
        if e.deltas > COMPACT_AFTER {
            compact(store, peer, e).await;
        }
        self.remember_quota_use(peer, after);
        result.map(|_| n)
    }

    /// The snapshot path of [`MeshState::receive_peer_update`].
    async fn receive_snapshot(
        &mut self,
        store: &AnyStore,
        peer: &ClusterName,
        update: PeerUpdate,
        stale: &BTreeSet<ClusterName>,
        now_ms: i64,
    ) -> Result<usize, StateError> {
        let entry = self
            .peers
            .get(peer)
            .ok_or_else(|| StateError::Rejected(format!("{peer} is not a peer")))?;
        let (record, record_op) = record_after(peer, &entry.record, &update)?;
        let before = self.quota_use(peer);
        let (next, touched) = entry.catalog.after_snapshot(update, now_ms);
        let after = peer_vip_names(next.services.keys(), &self.file.imports, peer);
        check_quota(peer, before, after, self.vip_quota)?;
        let blob = json(&next)?;
        let n = touched.len();
        // Staged: hidden by the state lock until this returns, put back on any error.
        let Some(old) = self
            .peers
            .get_mut(peer)
            .map(|e| std::mem::replace(&mut e.catalog, next))
        else {
            return Ok(0);
        };
        let file = self.file.clone();
        if let Err(e) = self.check_vips(&touched, None, &file.imports, now_ms) {
            self.put_back(peer, old);
            return Err(e);
        }
        if let Err(e) = store
            .put_blob(&keys::peer_catalog(peer), &blob, Vec::new())
            .await
        {
            // The pointer swap is one commit: either the old blob is still current, or the
            // outcome is unknown and the old one is written back below.
            self.put_back(peer, old.clone());
            restore_stored(store, peer, &old, None).await;
            return Err(e.into());
        }
        // A snapshot replaces everything: the delta log goes with the first commit of routes.
        let mut ops = vec![Op::DeletePrefix {
            prefix: keys::peer_deltas(peer),
        }];
        let record_moved = record_op.is_some();
        ops.extend(record_op);
        let mut durable = false;
        let result = self
            .recompute_with(Some(touched.clone()), stale, now_ms, ops, &mut durable)
            .await;
        if let Err(e) = result {
            let old_record = self.peers.get(peer).map(|e| e.record.clone());
            self.put_back(peer, old.clone());
            let record = old_record.as_ref().filter(|_| record_moved);
            restore_stored(store, peer, &old, record).await;
            if let Err(again) = self.recompute(Some(touched), stale, now_ms).await {
                tracing::warn!(peer.cluster = %peer, error = %again,
                    "putting back the routes of a refused snapshot failed; they follow the next change");
            }
            return Err(e);
        }
        if let Some(e) = self.peers.get_mut(peer) {
            e.record = record;
            e.deltas = 0;
        }
        self.remember_quota_use(peer, after);
        Ok(n)
    }

    /// Puts `peer`'s previous catalog back in memory.
    fn put_back(&mut self, peer: &ClusterName, old: PeerCatalog) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.catalog = old;
        }
    }

    /// The writes that store a delta from `peer` (the delta and, if its bundle moved, the
    /// record) and the record to install; `None` when it is already stored (a resend).
    fn delta_ops(
        &self,
        peer: &ClusterName,
        update: &PeerUpdate,
        now_ms: i64,
    ) -> Result<Option<(Vec<Op>, PeerRecord)>, StateError> {
        let entry = self
            .peers
            .get(peer)
            .ok_or_else(|| StateError::Rejected(format!("{peer} is not a peer")))?;
        if !entry.catalog.accepts_delta(&update.epoch, update.version) {
            if entry.catalog.epoch == update.epoch && update.version <= entry.catalog.version {
                // Already stored (a resend after a lost ACK): idempotent.
                return Ok(None);
            }
            return Err(StateError::Rejected(format!(
                "delta {} of epoch {} does not follow stored version {} of epoch {}: send a snapshot",
                update.version, update.epoch, entry.catalog.version, entry.catalog.epoch
            )));
        }
        let (record, record_op) = record_after(peer, &entry.record, update)?;
        let mut ops = vec![Op::Put {
            key: keys::peer_delta(peer, update.version),
            value: json(&StoredDelta::of(update, now_ms))?,
        }];
        ops.extend(record_op);
        Ok(Some((ops, record)))
    }
}

/// Writes `peer`'s previous catalog back as its blob (its delta log folded in: replaying a delta
/// the blob already holds changes nothing) and, when given, its previous record. Best effort: the
/// store just failed; what cannot be written back is logged.
async fn restore_stored(
    store: &AnyStore,
    peer: &ClusterName,
    old: &PeerCatalog,
    record: Option<&PeerRecord>,
) {
    let restored = async {
        store
            .put_blob(&keys::peer_catalog(peer), &json(old)?, Vec::new())
            .await?;
        if let Some(r) = record {
            let op = Op::Put {
                key: keys::peer_record(peer),
                value: json(r)?,
            };
            store.commit(Vec::new(), vec![op]).await?;
        }
        Ok::<_, StateError>(())
    };
    if let Err(e) = restored.await {
        tracing::warn!(peer.cluster = %peer, error = %e,
            "could not write back the previous catalog of a refused snapshot: a restart may load the refused one");
    }
}

/// The peer record after `update` (its bundle, when newer), and the write that stores it.
fn record_after(
    peer: &ClusterName,
    record: &PeerRecord,
    update: &PeerUpdate,
) -> Result<(PeerRecord, Option<Op>), StateError> {
    let mut record = record.clone();
    match &update.bundle {
        Some(b) if b.sequence() > record.bundle_sequence => {
            record.bundle = b.to_spiffe_json();
            record.bundle_sequence = b.sequence();
            let op = Op::Put {
                key: keys::peer_record(peer),
                value: json(&record)?,
            };
            Ok((record, Some(op)))
        }
        _ => Ok((record, None)),
    }
}

/// Folds a peer's delta log into a fresh catalog blob. Failing here loses nothing: the deltas
/// stay, and folding is retried after the next delta.
async fn compact(store: &AnyStore, peer: &ClusterName, e: &mut PeerEntry) {
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
