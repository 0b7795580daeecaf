//! The etcd backend (crate feature `etcd`): a shared etcd 3.4+ cluster, for HA replicas.
//!
//! Layout: user key `k` lives at `<prefix>k`; chunks of blobs and of large values live at
//! `<prefix>\0blob/<generation>/<index>`. User keys never contain NUL, so listing, watching and
//! deleting user prefixes never touches chunks (the empty prefix ranges from `<prefix>\x01`).
//! How a value is laid out (inline or chunked) is in [`value`]; chunk I/O and the leaked-chunk
//! sweep in [`chunks`]; failover between members in [`members`]; watches in [`watch`].
//!
//! Guarantees:
//! - A commit is one etcd transaction (guards are its compares), so it is atomic and, once
//!   acknowledged, durable as etcd is (raft quorum + fsync). A large value's chunks are written
//!   first and published by that transaction, which also checks they still exist; a commit that
//!   fails deletes them (or, when its outcome is unknown, leaves them to the sweep).
//!   `Unavailable` from a commit means the outcome is unknown.
//! - Values a commit replaces or deletes that named chunks (large values, blob pointers) have
//!   their chunks deleted after it: from the previous values etcd returns for puts and deletes,
//!   and for `DeletePrefix` from a read of the prefix the transaction checks is still current.
//! - `list` pages through the range (adaptive page size, responses stay small) at the revision
//!   of its first page, so the result is one consistent snapshot; large values in it, `get` and
//!   `get_blob` read their chunks at that same revision (etcd MVCC), so they never mix
//!   generations even while a writer swaps and deletes chunks.
//! - Every call goes to one member and fails over to the next ones when that member is down or
//!   has no leader (see [`members`] for which calls are repeated and why that is safe); each
//!   unary call is bounded by `request_timeout_ms` in all and reported as `Unavailable` when no
//!   member answers.
//! - Leases are etcd leases: etcd rounds TTLs up to whole seconds (minimum 2 s by default) and
//!   deletes the keys itself; `keep_alive` sends one request on a keep-alive stream.
//! - etcd 3.4 has no ranged streaming reads: `get_stream` is never used.

mod chunks;
mod commit;
mod members;
mod value;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient};
use tokio::sync::mpsc;
use tonic::Code;

use super::blob::BlobPointer;
use super::{
    Guard, LARGE_VALUE_BYTES, LeaseId, Op, Revision, Store, StoreConfig, StoreError, WATCH_CHANNEL,
    WatchStream, check_commit, check_key, check_prefix,
};
use commit::{Fresh, MarkerLease};
use members::Members;
use value::Stored;

const BACKEND: &str = "etcd";
/// First page size of a list; halved while a page is too large to decode.
const LIST_PAGE: i64 = 256;
/// Decoding limit for list pages and watch batches (etcd batches up to 1000 revisions).
const MAX_DECODE: usize = 64 * 1024 * 1024;
/// Attempts at a consistent multi-request read (or a prefix delete whose prefix keeps
/// changing) before giving up.
const READ_ATTEMPTS: usize = 5;
const CHUNK_AREA: &str = "\0blob/";

/// The etcd store. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    members: Members,
    prefix: String,
    /// The endpoints, for error messages.
    target: String,
    /// Chunk generations deleted by the leaked-chunk sweep.
    swept: prometheus_client::metrics::counter::Counter,
    marker_lease: MarkerLease,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.target)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

/// A KV client on `client` that accepts large list pages.
fn kv(client: Client) -> KvClient {
    client.kv_client().max_decoding_message_size(MAX_DECODE)
}

impl EtcdStore {
    /// Builds the clients for an `Etcd` config. Does not wait for etcd to answer (unless a user
    /// is configured: authenticating needs a member), so a federation can start while etcd is
    /// down. Starts the leaked-chunk sweep (now, then every few minutes).
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
            // A member cut off from its leader refuses at once ("no leader"), before proposing
            // anything, so the call moves on to a member that has one.
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
        let store = EtcdStore {
            inner: Arc::new(Inner {
                members: Members::new(endpoints, options, request_timeout),
                prefix: prefix.clone(),
                target: target.clone(),
                swept: Default::default(),
                marker_lease: MarkerLease::default(),
            }),
        };
        if user.is_some() {
            // Authenticate now with the first member that answers, so bad credentials fail
            // the start instead of every later call.
            store
                .call(|_client| async { Ok(()) })
                .await
                .map_err(|e| store.err(e))?;
        }
        chunks::spawn_sweeper(Arc::downgrade(&store.inner));
        tracing::info!(endpoints = %target, prefix = %prefix, "etcd store configured");
        Ok(store)
    }

    /// The key prefix every key is stored under.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The member calls go to now (the first endpoint until one fails).
    pub fn current_member(&self) -> &str {
        self.inner.members.current_url()
    }

    /// Chunk generations deleted by the leaked-chunk sweep since connect.
    pub fn swept_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.inner.swept.clone()
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

    fn err(&self, e: etcd_client::Error) -> StoreError {
        classify(&self.inner.target, e)
    }

    fn unavailable(&self, detail: &str) -> StoreError {
        unavailable(&self.inner.target, detail.to_owned())
    }

    /// Runs a call on the current member, sending it again to the next members when one
    /// fails, bounded by the request timeout. Only for calls that are safe to repeat.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.inner.members.call(call).await
    }

    /// A linearizable read of one key (safe to repeat: reads change nothing).
    async fn get_raw(&self, key: &str) -> Result<etcd_client::GetResponse, StoreError> {
        let full = self.full(key);
        self.call(|c| {
            let full = full.clone();
            async move { kv(c).get(full, None).await }
        })
        .await
        .map_err(|e| self.err(e))
    }

    /// The user's value for the bytes `raw` read at revision `at`: inline bytes, or a large
    /// value's chunks read at `at`. `None` when history at `at` was compacted meanwhile.
    async fn resolve(&self, key: &str, raw: &[u8], at: i64) -> Result<Option<Vec<u8>>, StoreError> {
        match value::decode(key, raw)? {
            Stored::Inline(value) => Ok(Some(value)),
            Stored::Chunked(pointer) => self.read_chunks(key, &pointer, at).await,
        }
    }

    /// Every key under `prefix` (values resolved) and the revision the listing is consistent at.
    async fn list_at(
        &self,
        prefix: &str,
    ) -> Result<(Vec<(String, Vec<u8>)>, Revision), StoreError> {
        check_prefix(prefix)?;
        let (start, end) = self.range(prefix);
        'attempt: for _ in 0..READ_ATTEMPTS {
            let Some((raw, at)) = self.range_at(&start, &end, false).await? else {
                continue;
            };
            let mut items = Vec::with_capacity(raw.len());
            for (raw_key, raw_value) in raw {
                let key = self.strip(&raw_key)?;
                let Some(value) = self.resolve(&key, &raw_value, at).await? else {
                    continue 'attempt;
                };
                items.push((key, value));
            }
            return Ok((items, at.max(0) as Revision));
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
                Guard::ValueEquals { key, value } => Compare::value(
                    self.full(key),
                    CompareOp::Equal,
                    value::inline(value.clone()),
                ),
                Guard::Absent { key } => Compare::version(self.full(key), CompareOp::Equal, 0),
            })
            .collect()
    }
}

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        for _ in 0..READ_ATTEMPTS {
            let response = self.get_raw(key).await?;
            let Some(item) = response.kvs().first() else {
                return Ok(None);
            };
            let at = header_revision(response.header());
            if let Some(value) = self.resolve(key, item.value(), at).await? {
                return Ok(Some(value));
            }
        }
        Err(unavailable(
            &self.inner.target,
            format!("history was compacted during {READ_ATTEMPTS} reads in a row"),
        ))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.list_at(prefix).await?.0)
    }

    async fn commit(&self, guards: Vec<Guard>, ops: Vec<Op>) -> Result<Revision, StoreError> {
        check_commit(&guards, &ops)?;
        // Large values: their chunks first, invisible until the transaction publishes them.
        let mut fresh = Fresh::new();
        for op in &ops {
            let Op::Put { key, value } = op else { continue };
            if value.len() <= LARGE_VALUE_BYTES {
                continue;
            }
            let pointer = BlobPointer::new(value)?;
            let written = self.write_chunks(&pointer.generation, value).await;
            fresh.values.push((key.clone(), pointer));
            if let Err(e) = written {
                self.discard(&fresh).await;
                return Err(e);
            }
        }
        self.commit_with(guards, ops, fresh).await
    }

    async fn put_blob(
        &self,
        key: &str,
        bytes: &[u8],
        guards: Vec<Guard>,
    ) -> Result<Revision, StoreError> {
        check_key(key)?;
        let pointer = BlobPointer::new(bytes)?;
        let swap = vec![Op::Put {
            key: key.to_owned(),
            value: pointer.encode(),
        }];
        check_commit(&guards, &swap)?;
        let mut fresh = Fresh::new();
        let written = self.write_chunks(&pointer.generation, bytes).await;
        fresh.values.push((key.to_owned(), pointer));
        if let Err(e) = written {
            self.discard(&fresh).await;
            return Err(e);
        }
        // The pointer is a small value: the swap is an ordinary commit, which also deletes the
        // previous generation's chunks.
        self.commit_with(guards, swap, fresh).await
    }

    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        for _ in 0..READ_ATTEMPTS {
            let response = self.get_raw(key).await?;
            let Some(item) = response.kvs().first() else {
                return Ok(None);
            };
            let at = header_revision(response.header());
            let pointer = match value::decode(key, item.value())? {
                Stored::Inline(value) => BlobPointer::decode_required(key, &value)?,
                Stored::Chunked(_) => {
                    return Err(StoreError::Corrupt {
                        key: key.to_owned(),
                        detail: "the value is not a blob pointer (it was written with commit(), \
                                 not put_blob())"
                            .into(),
                    });
                }
            };
            if let Some(bytes) = self.read_chunks(key, &pointer, at).await? {
                return Ok(Some(bytes));
            }
        }
        Err(unavailable(
            &self.inner.target,
            format!("history was compacted during {READ_ATTEMPTS} blob reads in a row"),
        ))
    }

    async fn delete_blob(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        // Deleting a pointer deletes the chunks it names.
        self.commit(
            Vec::new(),
            vec![Op::Delete {
                key: key.to_owned(),
            }],
        )
        .await?;
        Ok(())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        // Safe to repeat: a lease granted by a lost first attempt holds no keys and expires
        // after its TTL.
        let response = self
            .call(|c| async move { c.lease_client().grant(seconds, None).await })
            .await
            .map_err(|e| self.err(e))?;
        Ok(LeaseId(response.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        // Safe to repeat: a keep-alive only moves the lease's deadline to now + TTL.
        let result = self
            .call(|c| async move { c.lease_client().keep_alive(lease.0).await })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_lease_not_found(&e) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        // Safe to repeat: revoking a revoked lease is "not found", which is success here.
        let result = self
            .call(|c| async move { c.lease_client().revoke(lease.0).await })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        check_prefix(prefix)?;
        let (start, end) = self.range(prefix);
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let mut watcher = watch::Watcher::new(self.clone(), prefix, start, end, after, tx);
        // The first attempt is made here, so an unreachable etcd is reported to the caller.
        let stream = watcher.open().await?;
        tokio::spawn(watcher.run(stream));
        Ok(rx)
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let key = self.full(CHUNK_AREA);
        let options = GetOptions::new().with_count_only();
        let response = self
            .call(|c| {
                let (key, options) = (key.clone(), options.clone());
                async move { kv(c).get(key, Some(options)).await }
            })
            .await
            .map_err(|e| self.err(e))?;
        Ok(header_revision(response.header()).max(0) as Revision)
    }

    async fn sweep_chunks(&self) -> Result<usize, StoreError> {
        self.sweep().await
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
