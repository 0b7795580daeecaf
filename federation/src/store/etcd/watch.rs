//! Watches of the etcd backend: an etcd watch stream, re-created after failures (on whichever
//! member answers), resumed from the last revision delivered, and a Reset after compaction.
//!
//! Watches start at `after + 1` and ask for progress notifications. On a broken stream (a member
//! died or lost its leader, etcd restarted, the network) they reconnect with capped exponential
//! backoff from the last revision they delivered; when that revision was compacted they re-list
//! the prefix and send a Reset. A large value in an event is read at the event's revision, so a
//! watch delivers it whole.
//!
//! Must not: write anything.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;

use super::value::{self, Stored};
use super::{EtcdStore, MAX_DECODE, header_revision};
use crate::store::{Revision, StoreError, WatchEvent};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One watch: an etcd watch stream, re-created after failures, plus Resets after compaction.
pub(super) struct Watcher {
    store: EtcdStore,
    prefix: String,
    start: Vec<u8>,
    end: Vec<u8>,
    /// Every event up to this revision has been sent (or covered by a Reset).
    served: Revision,
    backoff: Duration,
    tx: mpsc::Sender<Result<WatchEvent, StoreError>>,
}

enum Stop {
    ConsumerGone,
    Compacted(i64),
    Broken(String),
    Failed(StoreError),
}

impl Watcher {
    pub(super) fn new(
        store: EtcdStore,
        prefix: &str,
        start: Vec<u8>,
        end: Vec<u8>,
        after: Revision,
        tx: mpsc::Sender<Result<WatchEvent, StoreError>>,
    ) -> Self {
        Watcher {
            store,
            prefix: prefix.to_owned(),
            start,
            end,
            served: after,
            backoff: BACKOFF_MIN,
            tx,
        }
    }

    pub(super) async fn open(&mut self) -> Result<etcd_client::WatchStream, StoreError> {
        let from = i64::try_from(self.served.saturating_add(1)).unwrap_or(i64::MAX);
        let options = WatchOptions::new()
            .with_range(self.end.clone())
            .with_start_revision(from)
            .with_progress_notify();
        let start = self.start.clone();
        // Safe to repeat: opening a watch changes nothing.
        self.store
            .call(|c| {
                let (start, options) = (start.clone(), options.clone());
                async move {
                    c.watch_client()
                        .max_decoding_message_size(MAX_DECODE)
                        .watch(start, Some(options))
                        .await
                }
            })
            .await
            .map_err(|e| self.store.err(e))
    }

    pub(super) async fn run(mut self, first: etcd_client::WatchStream) {
        let mut stream = Some(first);
        let mut reset_needed = false;
        loop {
            if reset_needed {
                match self.store.list_at(&self.prefix).await {
                    Ok((items, revision)) => {
                        tracing::info!(prefix = %self.prefix, revision, "watch reset after compaction");
                        if !self.send(WatchEvent::Reset { items, revision }).await {
                            return;
                        }
                        self.served = revision;
                        reset_needed = false;
                    }
                    Err(e) if e.is_retryable() => {
                        if !self.pause().await {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        let _ = self.tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            let mut current = match stream.take() {
                Some(current) => current,
                None => match self.open().await {
                    Ok(current) => current,
                    Err(e) if e.is_retryable() => {
                        tracing::debug!(prefix = %self.prefix, error = %e, "watch reconnect failed");
                        if !self.pause().await {
                            return;
                        }
                        continue;
                    }
                    Err(e) => {
                        let _ = self.tx.send(Err(e)).await;
                        return;
                    }
                },
            };
            match self.pump(&mut current).await {
                Stop::ConsumerGone => return,
                Stop::Compacted(compacted) => {
                    tracing::warn!(prefix = %self.prefix, served = self.served, compacted,
                        "watch resumed behind etcd's compaction; re-listing");
                    reset_needed = true;
                }
                Stop::Broken(detail) => {
                    tracing::warn!(prefix = %self.prefix, served = self.served, detail = %detail,
                        "etcd watch broken; reconnecting");
                    if !self.pause().await {
                        return;
                    }
                }
                Stop::Failed(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }

    /// Forwards events until the stream stops.
    async fn pump(&mut self, stream: &mut etcd_client::WatchStream) -> Stop {
        loop {
            let message = tokio::select! {
                () = self.tx.closed() => return Stop::ConsumerGone,
                m = stream.message() => m,
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => return Stop::Broken("etcd closed the watch stream".into()),
                Err(e) => return Stop::Broken(e.to_string()),
            };
            self.backoff = BACKOFF_MIN;
            if response.compact_revision() != 0 {
                return Stop::Compacted(response.compact_revision());
            }
            if response.canceled() {
                return Stop::Broken(format!("watch canceled: {}", response.cancel_reason()));
            }
            if response.created() {
                continue;
            }
            if response.events().is_empty() {
                // Progress notification: everything up to the header revision was delivered.
                let revision = header_revision(response.header()).max(0) as Revision;
                self.served = self.served.max(revision);
                continue;
            }
            let before = self.served;
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision().max(0) as Revision;
                if revision <= before {
                    continue;
                }
                let key = match self.store.strip(kv.key()) {
                    Ok(key) => key,
                    Err(e) => return Stop::Failed(e),
                };
                let event = match event.event_type() {
                    EventType::Put => {
                        let value = match self.value(&key, kv.value(), revision).await {
                            Ok(value) => value,
                            Err(stop) => return stop,
                        };
                        WatchEvent::Put {
                            key,
                            value,
                            revision,
                        }
                    }
                    EventType::Delete => WatchEvent::Delete { key, revision },
                };
                if !self.send(event).await {
                    return Stop::ConsumerGone;
                }
                self.served = self.served.max(revision);
            }
        }
    }

    /// The user's value of a put event: inline, or a large value's chunks read at the event's
    /// revision. Events not yet sent are delivered again after a reconnect or a Reset.
    async fn value(&self, key: &str, raw: &[u8], revision: Revision) -> Result<Vec<u8>, Stop> {
        let pointer = match value::decode(key, raw) {
            Ok(Stored::Inline(value)) => return Ok(value),
            Ok(Stored::Chunked(pointer)) => pointer,
            Err(e) => return Err(Stop::Failed(e)),
        };
        let at = i64::try_from(revision).unwrap_or(i64::MAX);
        match self.store.read_chunks(key, &pointer, at).await {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(Stop::Compacted(at)),
            Err(e) if e.is_retryable() => Err(Stop::Broken(e.to_string())),
            Err(e) => Err(Stop::Failed(e)),
        }
    }

    async fn send(&self, event: WatchEvent) -> bool {
        self.tx.send(Ok(event)).await.is_ok()
    }

    /// Sleeps for the current backoff and doubles it; false when the consumer is gone.
    async fn pause(&mut self) -> bool {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            () = self.tx.closed() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}
