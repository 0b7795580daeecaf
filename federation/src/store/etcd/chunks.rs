//! Chunk I/O of the etcd backend (blobs and large values share it), paged range reads, and the
//! leaked-chunk sweep.
//!
//! Chunks live at `<prefix>\0blob/<generation>/<index>` and are immutable once written: a
//! chunk put or a generation delete may be repeated safely after any failure. The sweep deletes
//! generations no pointer references and whose publishing window is over (see
//! [`blob::abandoned`]), i.e. chunks of writers that died or lost etcd mid-write.
//!
//! Must not: publish or replace pointers (commits do).

use std::collections::BTreeSet;
use std::sync::Weak;

use etcd_client::{DeleteOptions, GetOptions};

use super::{
    CHUNK_AREA, EtcdStore, Inner, LIST_PAGE, header_revision, is_compacted, is_too_big, kv,
    prefix_end,
};
use crate::store::StoreError;
use crate::store::blob::{self, BlobPointer};

/// A paged read's items: raw keys and values.
pub(super) type RawItems = Vec<(Vec<u8>, Vec<u8>)>;

impl EtcdStore {
    pub(super) fn chunk_key(&self, generation: &str, index: u32) -> Vec<u8> {
        self.full(&format!(
            "{CHUNK_AREA}{}",
            blob::chunk_name(generation, index)
        ))
    }

    /// Every key in `[start, end)` (values too, unless `keys_only`), read page by page at the
    /// revision of the first page; `None` when that revision was compacted meanwhile.
    pub(super) async fn range_at(
        &self,
        start: &[u8],
        end: &[u8],
        keys_only: bool,
    ) -> Result<Option<(RawItems, i64)>, StoreError> {
        let mut limit = LIST_PAGE;
        let mut items = Vec::new();
        let mut from = start.to_vec();
        let mut at: Option<i64> = None;
        loop {
            let mut options = GetOptions::new().with_range(end.to_vec()).with_limit(limit);
            if keys_only {
                options = options.with_keys_only();
            }
            if let Some(at) = at {
                options = options.with_revision(at);
            }
            let result = self
                .call(|c| {
                    let (from, options) = (from.clone(), options.clone());
                    async move { kv(c).get(from, Some(options)).await }
                })
                .await;
            let response = match result {
                Ok(response) => response,
                Err(e) if is_compacted(&e) => return Ok(None),
                Err(e) if is_too_big(&e) && limit > 1 => {
                    limit /= 2;
                    continue;
                }
                Err(e) => return Err(self.err(e)),
            };
            let revision = *at.get_or_insert(header_revision(response.header()));
            for item in response.kvs() {
                items.push((item.key().to_vec(), item.value().to_vec()));
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(Some((items, revision))),
            }
        }
    }

    /// Writes the chunks of `bytes` under `generation`.
    pub(super) async fn write_chunks(
        &self,
        generation: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        for (index, chunk) in (0u32..).zip(blob::chunks(bytes)) {
            let chunk_key = self.chunk_key(generation, index);
            // Safe to repeat: the same bytes at a key only this writer uses.
            self.call(|c| {
                let (chunk_key, chunk) = (chunk_key.clone(), chunk.to_vec());
                async move { c.kv_client().put(chunk_key, chunk, None).await }
            })
            .await
            .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// The bytes `pointer` names, read at revision `at` and verified; `None` when `at` was
    /// compacted meanwhile (read the pointer again).
    pub(super) async fn read_chunks(
        &self,
        key: &str,
        pointer: &BlobPointer,
        at: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut bytes = Vec::with_capacity(usize::try_from(pointer.len).unwrap_or(0));
        for index in 0..pointer.chunks {
            let chunk_key = self.chunk_key(&pointer.generation, index);
            let options = GetOptions::new().with_revision(at);
            let result = self
                .call(|c| {
                    let (chunk_key, options) = (chunk_key.clone(), options.clone());
                    async move { kv(c).get(chunk_key, Some(options)).await }
                })
                .await;
            let chunk = match result {
                Ok(chunk) => chunk,
                Err(e) if is_compacted(&e) => return Ok(None),
                Err(e) => return Err(self.err(e)),
            };
            let Some(chunk) = chunk.kvs().first() else {
                return Err(StoreError::Corrupt {
                    key: key.to_owned(),
                    detail: format!(
                        "chunk {} is missing",
                        blob::chunk_name(&pointer.generation, index)
                    ),
                });
            };
            bytes.extend_from_slice(chunk.value());
        }
        pointer.verify(key, &bytes)?;
        Ok(Some(bytes))
    }

    /// Deletes every chunk of `generation`.
    async fn delete_generation(&self, generation: &str) -> Result<(), StoreError> {
        let start = self.full(&format!("{CHUNK_AREA}{generation}/"));
        let end = prefix_end(&start);
        // Safe to repeat: deleting deleted chunks deletes nothing.
        self.call(|c| {
            let (start, end) = (start.clone(), end.clone());
            async move {
                c.kv_client()
                    .delete(start, Some(DeleteOptions::new().with_range(end)))
                    .await
            }
        })
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Deletes the chunks of a generation nobody published (the write failed before).
    pub(super) async fn discard_generation(&self, generation: &str) {
        if let Err(e) = self.delete_generation(generation).await {
            tracing::info!(generation, error = %e,
                "could not delete unpublished chunks now; the leaked-chunk sweep removes them");
        }
    }

    /// Deletes the chunks of a commit's large values (the commit did not apply).
    pub(super) async fn discard(&self, fresh: &super::Fresh) {
        for (_, pointer) in &fresh.values {
            self.discard_generation(&pointer.generation).await;
        }
    }

    /// Deletes generations a commit replaced or deleted.
    pub(super) async fn drop_generations(&self, generations: Vec<String>) {
        for generation in generations {
            if let Err(e) = self.delete_generation(&generation).await {
                tracing::warn!(%generation, error = %e,
                    "could not delete the chunks of a replaced value now; the leaked-chunk \
                     sweep removes them");
            }
        }
    }

    /// See [`crate::store::Store::sweep_chunks`].
    pub(super) async fn sweep(&self) -> Result<usize, StoreError> {
        let now = blob::now_ms();
        // Chunks first, pointers after: a generation published in between is seen referenced.
        // One published later is younger than the grace and kept anyway.
        let area = self.full(CHUNK_AREA);
        let Some((chunks, _)) = self.range_at(&area, &prefix_end(&area), true).await? else {
            return Ok(0); // compacted under the read: the next sweep tries again
        };
        let mut candidates = BTreeSet::new();
        for (raw, _) in &chunks {
            let name = String::from_utf8_lossy(&raw[area.len().min(raw.len())..]).into_owned();
            let generation = blob::generation_of(&name);
            if blob::abandoned(generation, now) {
                candidates.insert(generation.to_owned());
            }
        }
        if candidates.is_empty() {
            return Ok(0);
        }
        let (start, end) = self.range("");
        let Some((values, _)) = self.range_at(&start, &end, false).await? else {
            return Ok(0);
        };
        for (raw_key, raw_value) in &values {
            let key = String::from_utf8_lossy(raw_key);
            if let Some(generation) = super::value::generation(&key, raw_value) {
                candidates.remove(&generation);
            }
        }
        let mut swept = 0;
        for generation in candidates {
            self.delete_generation(&generation).await?;
            swept += 1;
            self.inner.swept.inc();
        }
        if swept > 0 {
            tracing::info!(
                generations = swept,
                "deleted leaked chunks no pointer referenced"
            );
        }
        Ok(swept)
    }
}

/// Sweeps now, then every [`blob::SWEEP_EVERY`], while the store lives.
pub(super) fn spawn_sweeper(weak: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(blob::SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let store = EtcdStore { inner };
            if let Err(e) = store.sweep().await {
                tracing::debug!(error = %e, "sweeping leaked chunks failed; retrying later");
            }
        }
    });
}
