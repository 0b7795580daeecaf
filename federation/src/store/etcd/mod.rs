//! The etcd backend (crate feature `etcd`): a shared etcd 3.4+ cluster, for HA replicas.
//!
//! Layout: user key `k` lives at `<prefix>k`; blob chunks live at
//! `<prefix>\0blob/<generation>/<index>`. User keys never contain NUL, so listing, watching and
//! deleting user prefixes never touches chunks (the empty prefix ranges from `<prefix>\x01`).
//!
//! Guarantees:
//! - A commit is one etcd transaction (guards are its compares), so it is atomic and, once
//!   acknowledged, durable as etcd is (raft quorum + fsync). `Unavailable` from a commit means
//!   the outcome is unknown.
//! - `list` pages through the range (adaptive page size, responses stay small) at the revision
//!   of its first page, so the result is one consistent snapshot.
//! - `get_blob` reads the pointer and every chunk at one revision (etcd MVCC), so it never mixes
//!   generations even while a writer swaps and deletes chunks.
//! - Leases are etcd leases: etcd rounds TTLs up to whole seconds (minimum 2 s by default) and
//!   deletes the keys itself; `keep_alive` sends one request on a keep-alive stream.
//! - Watches start at `after + 1`, ask for progress notifications, and on a broken stream
//!   (etcd restart, network) reconnect with capped exponential backoff from the last revision
//!   they delivered; when that revision was compacted they re-list the prefix and send a Reset.
//! - Every unary call is bounded by `request_timeout_ms` and reported as `Unavailable` when etcd
//!   does not answer; the client reconnects by itself when etcd comes back.
//! - etcd 3.4 has no ranged streaming reads: `get_stream` is never used.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KvClient,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;
use tonic::Code;

use super::blob::{self, BlobPointer};
use super::{
    Guard, LeaseId, Op, Revision, Store, StoreConfig, StoreError, WATCH_CHANNEL, WatchEvent,
    WatchStream, check_commit, check_key, check_prefix,
};

const BACKEND: &str = "etcd";
/// First page size of a list; halved while a page is too large to decode.
const LIST_PAGE: i64 = 256;
/// Decoding limit for list pages and watch batches (etcd batches up to 1000 revisions).
const MAX_DECODE: usize = 64 * 1024 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Attempts at a consistent multi-request read before giving up on a fast-compacting etcd.
const READ_ATTEMPTS: usize = 5;
const CHUNK_AREA: &str = "\0blob/";

/// The etcd store. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    kv: KvClient,
    prefix: String,
    /// The endpoints, for error messages.
    target: String,
    request_timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.target)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

impl EtcdStore {
    /// Builds the client for an `Etcd` config. Does not wait for etcd to answer (unless a user
    /// is configured: authenticating needs etcd), so a federation can start while etcd is down.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let StoreConfig::Etcd {
            endpoints,
            prefix,
            tls,
            user,
            password_file,
            connect_timeout_ms,
            request_timeout_ms,
        } = config
        else {
            return Err(StoreError::Config("not an etcd store config".into()));
        };
        config.validate()?;
        let request_timeout = Duration::from_millis(*request_timeout_ms);
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(*connect_timeout_ms))
            .with_timeout(request_timeout)
            // etcd refuses pings more often than every 5 s.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        if let Some(tls) = tls {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|source| StoreError::io(path, &source))
            };
            let mut tls_options = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca_file)?));
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                tls_options =
                    tls_options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls_options);
        }
        if let (Some(user), Some(password_file)) = (user, password_file) {
            let password = std::fs::read_to_string(password_file)
                .map_err(|source| StoreError::io(password_file, &source))?;
            options = options
                .with_user(user, password.trim_end_matches(['\r', '\n']))
                .with_auto_token_refresh(true);
        }
        let target = endpoints.join(",");
        let connecting = Client::connect(endpoints, Some(options));
        let client = match tokio::time::timeout(request_timeout * 2, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(classify(&target, e)),
            Err(_) => return Err(unavailable(&target, "connecting timed out".into())),
        };
        let kv = client.kv_client().max_decoding_message_size(MAX_DECODE);
        tracing::info!(endpoints = %target, prefix = %prefix, "etcd store configured");
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                client,
                kv,
                prefix: prefix.clone(),
                target,
                request_timeout,
            }),
        })
    }

    /// The key prefix every key is stored under.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    fn full(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.inner.prefix.len() + key.len());
        full.extend_from_slice(self.inner.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// `[start, end)` of the user keys under `prefix`.
    fn range(&self, prefix: &str) -> (Vec<u8>, Vec<u8>) {
        let mut start = self.full(prefix);
        let end = prefix_end(&start);
        if prefix.is_empty() {
            start.push(0x01); // skip the chunk area, "<prefix>\0..."
        }
        (start, end)
    }

    fn chunk_key(&self, generation: &str, index: u32) -> Vec<u8> {
        self.full(&format!(
            "{CHUNK_AREA}{}",
            blob::chunk_name(generation, index)
        ))
    }

    fn strip(&self, raw: &[u8]) -> Result<String, StoreError> {
        let corrupt = |detail: &str| StoreError::Corrupt {
            key: String::from_utf8_lossy(raw).into_owned(),
            detail: format!(
                "{detail}; something other than Isthmus writes under prefix {:?}: give Isthmus \
                 a prefix of its own",
                self.inner.prefix
            ),
        };
        let rest = raw
            .strip_prefix(self.inner.prefix.as_bytes())
            .ok_or_else(|| corrupt("key outside the prefix"))?;
        String::from_utf8(rest.to_vec()).map_err(|_| corrupt("key is not UTF-8"))
    }

    fn kv(&self) -> KvClient {
        self.inner.kv.clone()
    }

    fn err(&self, e: etcd_client::Error) -> StoreError {
        classify(&self.inner.target, e)
    }

    /// Bounds a unary call: a balanced channel with no live endpoint would otherwise wait.
    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, etcd_client::Error> {
        match tokio::time::timeout(self.inner.request_timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(etcd_client::Error::GRpcStatus(
                tonic::Status::deadline_exceeded(format!(
                    "no answer within {:?}",
                    self.inner.request_timeout
                )),
            )),
        }
    }

    /// Every key under `prefix` and the revision the listing is consistent at.
    async fn list_at(
        &self,
        prefix: &str,
    ) -> Result<(Vec<(String, Vec<u8>)>, Revision), StoreError> {
        check_prefix(prefix)?;
        let (start, end) = self.range(prefix);
        let mut kv = self.kv();
        let mut limit = LIST_PAGE;
        'attempt: for _ in 0..READ_ATTEMPTS {
            let mut items = Vec::new();
            let mut from = start.clone();
            let mut at: Option<i64> = None;
            loop {
                let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
                if let Some(at) = at {
                    options = options.with_revision(at);
                }
                let response = match self.call(kv.get(from.clone(), Some(options))).await {
                    Ok(response) => response,
                    Err(e) if is_compacted(&e) => continue 'attempt,
                    Err(e) if is_too_big(&e) && limit > 1 => {
                        limit /= 2;
                        continue;
                    }
                    Err(e) => return Err(self.err(e)),
                };
                let revision = *at.get_or_insert(header_revision(response.header()));
                for item in response.kvs() {
                    items.push((self.strip(item.key())?, item.value().to_vec()));
                }
                match response.kvs().last() {
                    Some(last) if response.more() => {
                        from = last.key().to_vec();
                        from.push(0);
                    }
                    _ => return Ok((items, revision.max(0) as Revision)),
                }
            }
        }
        Err(unavailable(
            &self.inner.target,
            format!("history was compacted during {READ_ATTEMPTS} listings in a row"),
        ))
    }

    fn compares(&self, guards: &[Guard]) -> Vec<Compare> {
        guards
            .iter()
            .map(|guard| match guard {
                Guard::ValueEquals { key, value } => {
                    Compare::value(self.full(key), CompareOp::Equal, value.clone())
                }
                Guard::Absent { key } => Compare::version(self.full(key), CompareOp::Equal, 0),
            })
            .collect()
    }

    fn txn_op(&self, op: Op) -> TxnOp {
        match op {
            Op::Put { key, value } => TxnOp::put(self.full(&key), value, None),
            Op::PutLeased { key, value, lease } => TxnOp::put(
                self.full(&key),
                value,
                Some(PutOptions::new().with_lease(lease.0)),
            ),
            Op::Delete { key } => TxnOp::delete(self.full(&key), None),
            Op::DeletePrefix { prefix } => {
                let (start, end) = self.range(&prefix);
                TxnOp::delete(start, Some(DeleteOptions::new().with_range(end)))
            }
        }
    }

    /// Deletes every chunk of `generation`.
    async fn delete_generation(&self, generation: &str) -> Result<(), StoreError> {
        let start = self.full(&format!("{CHUNK_AREA}{generation}/"));
        let end = prefix_end(&start);
        let mut kv = self.kv();
        self.call(kv.delete(start, Some(DeleteOptions::new().with_range(end))))
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Deletes the chunks of the blob pointer `previous` (if it was one); failures only leak
    /// chunks, so they are logged, not returned.
    async fn drop_previous(&self, key: &str, previous: Option<&[u8]>) {
        let Some(previous) = previous else { return };
        match BlobPointer::decode(key, previous) {
            Ok(Some(old)) => {
                if let Err(e) = self.delete_generation(&old.generation).await {
                    tracing::warn!(key, generation = %old.generation, error = %e,
                        "could not delete the previous blob generation; its chunks leak");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(key, error = %e, "previous blob pointer unreadable"),
        }
    }
}

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        let mut kv = self.kv();
        let response = self
            .call(kv.get(self.full(key), None))
            .await
            .map_err(|e| self.err(e))?;
        Ok(response.kvs().first().map(|item| item.value().to_vec()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.list_at(prefix).await?.0)
    }

    async fn commit(&self, guards: Vec<Guard>, ops: Vec<Op>) -> Result<Revision, StoreError> {
        check_commit(&guards, 0, &ops)?;
        let lease = ops.iter().find_map(|op| match op {
            Op::PutLeased { lease, .. } => Some(*lease),
            _ => None,
        });
        let txn = Txn::new().when(self.compares(&guards)).and_then(
            ops.into_iter()
                .map(|op| self.txn_op(op))
                .collect::<Vec<_>>(),
        );
        let mut kv = self.kv();
        let response = match self.call(kv.txn(txn)).await {
            Ok(response) => response,
            Err(e) if is_lease_not_found(&e) => {
                return Err(StoreError::LeaseNotFound {
                    lease: lease.unwrap_or(LeaseId(0)),
                });
            }
            Err(e) => return Err(self.err(e)),
        };
        if !response.succeeded() {
            return Err(StoreError::GuardFailed);
        }
        Ok(header_revision(response.header()).max(0) as Revision)
    }

    async fn put_blob(
        &self,
        key: &str,
        bytes: &[u8],
        guards: Vec<Guard>,
    ) -> Result<Revision, StoreError> {
        check_key(key)?;
        let pointer = BlobPointer::new(bytes)?;
        let encoded = pointer.encode();
        let swap = [Op::Put {
            key: key.to_owned(),
            value: encoded.clone(),
        }];
        check_commit(&guards, 0, &swap)?;
        let mut kv = self.kv();
        for (index, chunk) in (0u32..).zip(blob::chunks(bytes)) {
            let chunk_key = self.chunk_key(&pointer.generation, index);
            if let Err(e) = self.call(kv.put(chunk_key, chunk.to_vec(), None)).await {
                let _ = self.delete_generation(&pointer.generation).await;
                return Err(self.err(e));
            }
        }
        let txn = Txn::new()
            .when(self.compares(&guards))
            .and_then(vec![TxnOp::put(
                self.full(key),
                encoded,
                Some(PutOptions::new().with_prev_key()),
            )]);
        let response = match self.call(kv.txn(txn)).await {
            Ok(response) => response,
            Err(e) => {
                let e = self.err(e);
                if !e.is_retryable() {
                    // Definitely not applied: the new chunks are garbage.
                    let _ = self.delete_generation(&pointer.generation).await;
                }
                // Retryable: the swap may have happened, so the chunks must stay.
                return Err(e);
            }
        };
        if !response.succeeded() {
            let _ = self.delete_generation(&pointer.generation).await;
            return Err(StoreError::GuardFailed);
        }
        let previous = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Put(put) => put.prev_key().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        self.drop_previous(key, previous.as_deref()).await;
        Ok(header_revision(response.header()).max(0) as Revision)
    }

    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        let mut kv = self.kv();
        'attempt: for _ in 0..READ_ATTEMPTS {
            let response = self
                .call(kv.get(self.full(key), None))
                .await
                .map_err(|e| self.err(e))?;
            let Some(item) = response.kvs().first() else {
                return Ok(None);
            };
            let at = header_revision(response.header());
            let pointer = BlobPointer::decode_required(key, item.value())?;
            let mut bytes = Vec::with_capacity(usize::try_from(pointer.len).unwrap_or(0));
            for index in 0..pointer.chunks {
                let options = GetOptions::new().with_revision(at);
                let chunk_key = self.chunk_key(&pointer.generation, index);
                let chunk = match self.call(kv.get(chunk_key, Some(options))).await {
                    Ok(chunk) => chunk,
                    Err(e) if is_compacted(&e) => continue 'attempt,
                    Err(e) => return Err(self.err(e)),
                };
                let Some(chunk) = chunk.kvs().first() else {
                    return Err(StoreError::Corrupt {
                        key: key.to_owned(),
                        detail: format!(
                            "blob chunk {} is missing",
                            blob::chunk_name(&pointer.generation, index)
                        ),
                    });
                };
                bytes.extend_from_slice(chunk.value());
            }
            pointer.verify(key, &bytes)?;
            return Ok(Some(bytes));
        }
        Err(unavailable(
            &self.inner.target,
            format!("history was compacted during {READ_ATTEMPTS} blob reads in a row"),
        ))
    }

    async fn delete_blob(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let mut kv = self.kv();
        let options = DeleteOptions::new().with_prev_key();
        let response = self
            .call(kv.delete(self.full(key), Some(options)))
            .await
            .map_err(|e| self.err(e))?;
        let previous = response.prev_kvs().first().map(|kv| kv.value().to_vec());
        self.drop_previous(key, previous.as_deref()).await;
        Ok(())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        let mut lease = self.inner.client.lease_client();
        let response = self
            .call(lease.grant(seconds, None))
            .await
            .map_err(|e| self.err(e))?;
        Ok(LeaseId(response.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        let mut client = self.inner.client.lease_client();
        match self.call(client.keep_alive(lease.0)).await {
            Ok(_) => Ok(true),
            Err(e) if is_lease_not_found(&e) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut client = self.inner.client.lease_client();
        match self.call(client.revoke(lease.0)).await {
            Ok(_) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        check_prefix(prefix)?;
        let (start, end) = self.range(prefix);
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let mut watcher = Watcher {
            store: self.clone(),
            prefix: prefix.to_owned(),
            start,
            end,
            served: after,
            backoff: BACKOFF_MIN,
            tx,
        };
        // The first attempt is made here, so an unreachable etcd is reported to the caller.
        let stream = watcher.open().await?;
        tokio::spawn(watcher.run(stream));
        Ok(rx)
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let mut kv = self.kv();
        let options = GetOptions::new().with_count_only();
        let response = self
            .call(kv.get(self.full(CHUNK_AREA), Some(options)))
            .await
            .map_err(|e| self.err(e))?;
        Ok(header_revision(response.header()).max(0) as Revision)
    }
}

/// One watch: an etcd watch stream, re-created after failures, plus Resets after compaction.
struct Watcher {
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
    async fn open(&mut self) -> Result<etcd_client::WatchStream, StoreError> {
        let from = i64::try_from(self.served.saturating_add(1)).unwrap_or(i64::MAX);
        let options = WatchOptions::new()
            .with_range(self.end.clone())
            .with_start_revision(from)
            .with_progress_notify();
        let mut client = self
            .store
            .inner
            .client
            .watch_client()
            .max_decoding_message_size(MAX_DECODE);
        self.store
            .call(client.watch(self.start.clone(), Some(options)))
            .await
            .map_err(|e| self.store.err(e))
    }

    async fn run(mut self, first: etcd_client::WatchStream) {
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
                    EventType::Put => WatchEvent::Put {
                        key,
                        value: kv.value().to_vec(),
                        revision,
                    },
                    EventType::Delete => WatchEvent::Delete { key, revision },
                };
                if !self.send(event).await {
                    return Stop::ConsumerGone;
                }
                self.served = self.served.max(revision);
            }
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

/// The smallest key greater than every key starting with `key` (`[0]`: no upper bound).
fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map(|h| h.revision()).unwrap_or(0)
}

fn unavailable(target: &str, detail: String) -> StoreError {
    StoreError::Unavailable {
        backend: BACKEND,
        target: target.to_owned(),
        detail,
    }
}

fn status(e: &etcd_client::Error) -> Option<&tonic::Status> {
    match e {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        _ => None,
    }
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    status(e).is_some_and(|s| s.message().contains("required revision has been compacted"))
}

fn is_too_big(e: &etcd_client::Error) -> bool {
    status(e).is_some_and(|s| s.message().contains("message length too large"))
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        other => status(other).is_some_and(|s| s.message().contains("lease not found")),
    }
}

/// Who is to blame: etcd not answering (retry) or etcd refusing (operator action).
fn classify(target: &str, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => match status.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Unknown
            | Code::Internal => unavailable(target, status.message().to_owned()),
            code => StoreError::Rejected {
                backend: BACKEND,
                detail: format!("{code:?}: {}", status.message()),
            },
        },
        E::TransportError(e) => unavailable(target, format!("transport: {e}")),
        E::IoError(e) => unavailable(target, format!("io: {e}")),
        E::WatchError(m) | E::LeaseKeepAliveError(m) => unavailable(target, m),
        E::InvalidArgs(_) | E::InvalidUri(_) | E::EndpointError(_) => {
            StoreError::Config(format!("etcd endpoints {target}: {e}"))
        }
        other => StoreError::Rejected {
            backend: BACKEND,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
