//! Commits on etcd: one transaction per commit, safe to send more than once, publishing large
//! values' chunks, and deleting the chunks of the values it replaces.
//!
//! **Why a commit may be sent again.** A member can fail a transaction after taking it (its
//! leader died with the proposal in flight, the connection broke before the answer): the outcome
//! is unknown, and sending it again could apply it twice (a guard like "absent" then fails on
//! the write's own result, a replaced chunk generation would be our own). So every transaction
//! also writes a fresh *marker* key and is guarded by "the marker does not exist": however many
//! copies are sent, at most one applies, and the marker tells whether one did. Markers live in
//! `<prefix>\0txn/`, outside every user range, on a lease that expires them minutes later.
//!
//! **Large values** are written as chunks first (invisible), then published by the transaction,
//! which also checks the first chunk still exists (a sweep only deletes generations older than
//! their publishing window, which the writer checks it is still in). A commit that definitely
//! failed deletes its chunks; one whose outcome stays unknown leaves them to the sweep.
//!
//! **Replaced chunks**: puts and deletes return the previous values; for `DeletePrefix` the
//! prefix is read first and the transaction checks nothing under it changed since (or reads and
//! tries again). Generations those values named are deleted after the transaction.
//!
//! Must not: decide what keys mean, or hold chunks of a published value back from readers.

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::value;
use super::{EtcdStore, READ_ATTEMPTS, header_revision, is_compacted, is_lease_not_found, kv};
use crate::store::blob::{self, BlobPointer};
use crate::store::{Guard, LARGE_VALUE_BYTES, Op, Revision, StoreError};

const MARKER_AREA: &str = "\0txn/";
/// A marker lease lives this long; markers must outlive every repeat of their transaction.
const MARKER_TTL_S: i64 = 300;
/// A marker lease is replaced after this long, so a marker has at least 4 minutes to live.
const MARKER_LEASE_ROTATE: std::time::Duration = std::time::Duration::from_secs(60);

/// The lease markers are attached to, replaced every minute.
#[derive(Default)]
pub(super) struct MarkerLease(Mutex<Option<(i64, Instant)>>);

/// Chunks written before a transaction: of large values (in op order) or of a blob.
pub(super) struct Fresh {
    /// (user key, pointer) per generation written.
    pub(super) values: Vec<(String, BlobPointer)>,
    pub(super) started: Instant,
}

impl Fresh {
    pub(super) fn new() -> Self {
        Fresh {
            values: Vec::new(),
            started: Instant::now(),
        }
    }

    fn owns(&self, generation: &str) -> bool {
        self.values.iter().any(|(_, p)| p.generation == generation)
    }
}

/// How one transaction attempt ended.
enum Attempt {
    Applied(Revision),
    /// Nothing applied and trying again may succeed: something under a deleted prefix changed
    /// after it was read, or the marker lease was gone.
    TryAgain,
}

impl EtcdStore {
    /// A commit whose new chunks (large values, a blob) are already written, as `fresh` says.
    pub(super) async fn commit_with(
        &self,
        guards: Vec<Guard>,
        ops: Vec<Op>,
        fresh: Fresh,
    ) -> Result<Revision, StoreError> {
        for _ in 0..READ_ATTEMPTS {
            if fresh.started.elapsed() > blob::CHUNK_GRACE / 2 {
                self.discard(&fresh).await;
                return Err(self.unavailable(
                    "writing the chunks took longer than their publishing window; nothing was \
                     applied",
                ));
            }
            match self.commit_once(&guards, &ops, &fresh).await {
                Ok(Attempt::Applied(revision)) => return Ok(revision),
                Ok(Attempt::TryAgain) => continue,
                Err(e) if e.is_retryable() => {
                    // Unknown outcome after every member and attempt failed: the chunks stay
                    // in case it applied; the sweep deletes them if it did not.
                    if !fresh.values.is_empty() {
                        tracing::info!(error = %e, "a commit with new chunks has an unknown \
                            outcome; they stay until the leaked-chunk sweep sees them unused");
                    }
                    return Err(e);
                }
                Err(e) => {
                    self.discard(&fresh).await;
                    return Err(e);
                }
            }
        }
        self.discard(&fresh).await;
        Err(self.unavailable(&format!(
            "keys under a deleted prefix kept changing during {READ_ATTEMPTS} attempts; nothing \
             was applied"
        )))
    }

    async fn commit_once(
        &self,
        guards: &[Guard],
        ops: &[Op],
        fresh: &Fresh,
    ) -> Result<Attempt, StoreError> {
        // Chunks named under each deleted prefix, read at one revision.
        let mut doomed: Vec<String> = Vec::new();
        let mut prefixes: Vec<(Vec<u8>, Vec<u8>, i64)> = Vec::new();
        for op in ops {
            let Op::DeletePrefix { prefix } = op else {
                continue;
            };
            let (start, end) = self.range(prefix);
            let Some((items, at)) = self.range_at(&start, &end, false).await? else {
                return Ok(Attempt::TryAgain);
            };
            doomed.extend(
                items
                    .iter()
                    .filter_map(|(k, v)| value::generation(&String::from_utf8_lossy(k), v)),
            );
            prefixes.push((start, end, at));
        }
        let marker = self.full(&format!("{MARKER_AREA}{}", blob::new_generation()));
        let lease = self.marker_lease().await?;
        let mut compares = vec![Compare::version(marker.clone(), CompareOp::Equal, 0)];
        compares.extend(self.compares(guards));
        compares.extend(
            fresh
                .values
                .iter()
                .filter(|(_, p)| p.chunks > 0)
                .map(|(_, p)| {
                    Compare::version(self.chunk_key(&p.generation, 0), CompareOp::Greater, 0)
                }),
        );
        compares.extend(prefixes.iter().map(|(start, end, at)| {
            Compare::mod_revision(start.clone(), CompareOp::Less, at.saturating_add(1))
                .with_range(end.clone())
        }));
        let mut txn_ops = self.txn_ops(ops.to_vec(), fresh);
        txn_ops.push(TxnOp::put(
            marker.clone(),
            Vec::new(),
            Some(PutOptions::new().with_lease(lease)),
        ));
        let txn = Txn::new().when(compares).and_then(txn_ops);
        let user_lease = ops.iter().find_map(|op| match op {
            Op::PutLeased { lease, .. } => Some(*lease),
            _ => None,
        });
        // Safe to send again: the marker guard lets at most one copy apply.
        let result = self
            .call(|c| {
                let txn = txn.clone();
                async move { kv(c).txn(txn).await }
            })
            .await;
        let response = match result {
            Ok(response) => response,
            Err(e) if is_lease_not_found(&e) => {
                let Some(lease) = user_lease else {
                    // The marker lease is gone (revoked by someone else): take a new one.
                    *self.inner.marker_lease.0.lock().await = None;
                    return Ok(Attempt::TryAgain);
                };
                return Err(StoreError::LeaseNotFound { lease });
            }
            Err(e) => return Err(self.err(e)),
        };
        if response.succeeded() {
            doomed.extend(replaced_generations(&response));
            doomed.retain(|g| !fresh.owns(g));
            self.drop_generations(doomed).await;
            return Ok(Attempt::Applied(
                header_revision(response.header()).max(0) as Revision
            ));
        }
        // Failed: applied by an earlier copy (the marker exists), a guard, a changed prefix, or
        // (rarely) chunks swept before a too slow commit published them.
        if let Some(revision) = self.marker_revision(&marker).await? {
            // The answer of the copy that applied was lost, and with it the previous values:
            // read them just before it.
            let mut replaced = self.previous_generations(ops, revision).await;
            replaced.extend(doomed);
            replaced.retain(|g| !fresh.owns(g));
            self.drop_generations(replaced).await;
            return Ok(Attempt::Applied(revision));
        }
        for (start, end, at) in &prefixes {
            if self.changed_since(start, end, *at).await? {
                return Ok(Attempt::TryAgain);
            }
        }
        Err(self.guard_failed(fresh).await)
    }

    /// The etcd operations of `ops`; large values become pointers to the chunks in `fresh`.
    /// Puts and deletes return the previous value, so replaced chunks can be deleted.
    fn txn_ops(&self, ops: Vec<Op>, fresh: &Fresh) -> Vec<TxnOp> {
        let mut large = fresh.values.iter();
        let prev = || Some(PutOptions::new().with_prev_key());
        ops.into_iter()
            .map(|op| match op {
                Op::Put { key, value } if value.len() > LARGE_VALUE_BYTES => {
                    let stored = match large.next() {
                        Some((_, pointer)) => value::chunked(pointer),
                        // Unreachable: `commit` writes one pointer per large value, in order.
                        None => value::inline(value),
                    };
                    TxnOp::put(self.full(&key), stored, prev())
                }
                Op::Put { key, value } => TxnOp::put(self.full(&key), value::inline(value), prev()),
                Op::PutLeased { key, value, lease } => TxnOp::put(
                    self.full(&key),
                    value::inline(value),
                    Some(PutOptions::new().with_lease(lease.0).with_prev_key()),
                ),
                Op::Delete { key } => {
                    TxnOp::delete(self.full(&key), Some(DeleteOptions::new().with_prev_key()))
                }
                Op::DeletePrefix { prefix } => {
                    let (start, end) = self.range(&prefix);
                    TxnOp::delete(start, Some(DeleteOptions::new().with_range(end)))
                }
            })
            .collect()
    }

    /// A lease for markers, granted anew every minute.
    async fn marker_lease(&self) -> Result<i64, StoreError> {
        let mut current = self.inner.marker_lease.0.lock().await;
        if let Some((id, granted)) = *current
            && granted.elapsed() < MARKER_LEASE_ROTATE
        {
            return Ok(id);
        }
        // Safe to send again: a lease granted by a lost copy holds nothing and expires.
        let response = self
            .call(|c| async move { c.lease_client().grant(MARKER_TTL_S, None).await })
            .await
            .map_err(|e| self.err(e))?;
        *current = Some((response.id(), Instant::now()));
        Ok(response.id())
    }

    /// The revision that wrote `marker`, if it exists.
    async fn marker_revision(&self, marker: &[u8]) -> Result<Option<Revision>, StoreError> {
        let marker = marker.to_vec();
        // Safe to send again: a read.
        let response = self
            .call(|c| {
                let marker = marker.clone();
                async move { kv(c).get(marker, None).await }
            })
            .await
            .map_err(|e| self.err(e))?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| kv.mod_revision().max(0) as Revision))
    }

    /// Whether any key in `[start, end)` changed after revision `at`.
    async fn changed_since(&self, start: &[u8], end: &[u8], at: i64) -> Result<bool, StoreError> {
        let options = GetOptions::new()
            .with_range(end.to_vec())
            .with_keys_only()
            .with_sort(SortTarget::Mod, SortOrder::Descend)
            .with_limit(1);
        let start = start.to_vec();
        // Safe to send again: a read.
        let response = self
            .call(|c| {
                let (start, options) = (start.clone(), options.clone());
                async move { kv(c).get(start, Some(options)).await }
            })
            .await
            .map_err(|e| self.err(e))?;
        Ok(response
            .kvs()
            .first()
            .is_some_and(|kv| kv.mod_revision() > at))
    }

    /// Generations named by the values `ops` put or deleted replaced, read at the revision
    /// before `revision` (best effort: the sweep handles what this cannot read).
    async fn previous_generations(&self, ops: &[Op], revision: Revision) -> Vec<String> {
        let at = i64::try_from(revision)
            .unwrap_or(i64::MAX)
            .saturating_sub(1);
        let mut generations = Vec::new();
        for op in ops {
            let key = match op {
                Op::Put { key, .. } | Op::PutLeased { key, .. } | Op::Delete { key } => {
                    self.full(key)
                }
                Op::DeletePrefix { .. } => continue,
            };
            let options = GetOptions::new().with_revision(at);
            // Safe to send again: a read.
            let result = self
                .call(|c| {
                    let (key, options) = (key.clone(), options.clone());
                    async move { kv(c).get(key, Some(options)).await }
                })
                .await;
            match result {
                Ok(response) => generations.extend(response.kvs().iter().filter_map(|kv| {
                    value::generation(&String::from_utf8_lossy(kv.key()), kv.value())
                })),
                Err(e) if is_compacted(&e) => return generations,
                Err(_) => return generations,
            }
        }
        generations
    }

    /// Why a transaction's compares failed when its marker does not exist: a guard, or
    /// (rarely) a sweep that deleted the chunks of a commit too slow to publish them.
    async fn guard_failed(&self, fresh: &Fresh) -> StoreError {
        for (_, pointer) in fresh.values.iter().filter(|(_, p)| p.chunks > 0) {
            let first = self.chunk_key(&pointer.generation, 0);
            // Safe to send again: a read.
            let exists = self
                .call(|c| {
                    let first = first.clone();
                    async move { kv(c).get(first, None).await }
                })
                .await
                .map(|r| !r.kvs().is_empty());
            if let Ok(false) = exists {
                return self.unavailable(
                    "the new chunks were swept before the commit published them (the commit \
                     took too long); nothing was applied",
                );
            }
        }
        StoreError::GuardFailed
    }
}

/// Generations named by the previous values a transaction's puts and deletes returned.
fn replaced_generations(response: &TxnResponse) -> Vec<String> {
    let mut generations = Vec::new();
    for op in response.op_responses() {
        let previous: Vec<&etcd_client::KeyValue> = match &op {
            TxnOpResponse::Put(put) => put.prev_key().into_iter().collect(),
            TxnOpResponse::Delete(delete) => delete.prev_kvs().iter().collect(),
            _ => Vec::new(),
        };
        generations.extend(
            previous
                .into_iter()
                .filter_map(|kv| value::generation(&String::from_utf8_lossy(kv.key()), kv.value())),
        );
    }
    generations
}
