//! Store: the one persistence interface of the federation, with two backends.
//!
//! - [`EmbeddedStore`] (the default): redb in a single file under a data directory, in process.
//! - [`EtcdStore`] (crate feature `etcd`): a shared etcd 3.4+ cluster, for HA replicas.
//!
//! Everything above this module holds an [`AnyStore`] and codes against the [`Store`] trait; it
//! never knows which backend it has. This module owns keys, values, revisions, leases, watches
//! and blobs; it must not know what the keys mean (the model and peering own that).
//!
//! # Contract (both backends, proven by `tests/store_contract.rs`)
//! - **Keys** are non-empty UTF-8 strings of at most [`MAX_KEY_BYTES`] bytes without NUL. They
//!   sort by their bytes. A *prefix* is a plain string prefix: `"a/b"` is under `"a/"` and under
//!   `"a/b"`, but not under `"a/bc"`; the empty prefix selects every key. End prefixes with `/`
//!   when you mean "directory".
//! - **Revisions** grow with every commit that changes something; all events of one commit carry
//!   the same revision. They are opaque and may jump (etcd shares its counter with other users
//!   of the cluster).
//! - **Commits** are atomic, durable once acknowledged, and bounded by [`MAX_OPS_PER_COMMIT`]
//!   ops (and as many guards, counting one per large value and per `DeletePrefix`, which etcd
//!   guards itself) and [`MAX_COMMIT_BYTES`]. A key may be written at most once per commit and
//!   not also deleted by the same commit (etcd refuses that too).
//! - **Large values**: an `Op::Put` value larger than [`LARGE_VALUE_BYTES`] (up to
//!   [`MAX_VALUE_BYTES`]) counts as a small pointer towards the commit's bytes; etcd stores it as
//!   chunks published by the commit itself, the embedded store inline. `get`, `list` and watches
//!   return the whole value, never a part, on both; a commit that fails leaves no part visible.
//! - **Blobs** hold values of any size: chunks under a fresh generation, then one pointer swap.
//!   The pointer is an ordinary value at the blob's key (so it is listed and watched); remove
//!   blobs with [`Store::delete_blob`]. Chunks that no pointer references any more (a writer
//!   that died between its chunks and its pointer) are removed by a sweep at open and every
//!   few minutes ([`Store::sweep_chunks`]).
//! - **Leases** delete their keys when not kept alive within their TTL.
//! - **Watches** deliver every change in revision order, or a [`WatchEvent::Reset`] when history
//!   is gone; a consumer that applies them in order always converges to the store's state.

mod blob;
mod config;
pub mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub use config::{EtcdTls, StoreConfig};
pub use embedded::EmbeddedStore;
#[cfg(feature = "etcd")]
pub use etcd::EtcdStore;

/// A store revision: grows with every commit that changes something.
pub type Revision = u64;

/// A lease: keys attached to it are deleted when it is not kept alive within its TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LeaseId(pub i64);

/// One write inside a [`Store::commit`].
#[derive(Debug, Clone)]
pub enum Op {
    /// Write `value` at `key`; detaches the key from any lease. `value` may be large (see
    /// [`LARGE_VALUE_BYTES`]).
    Put { key: String, value: Vec<u8> },
    /// Write `value` at `key` and attach it to `lease` (fails with
    /// [`StoreError::LeaseNotFound`] when the lease is gone). `value` must fit in a commit
    /// (leased values are never large: etcd would drop the pointer and not the chunks).
    PutLeased {
        key: String,
        value: Vec<u8>,
        lease: LeaseId,
    },
    /// Delete `key` (no error when absent).
    Delete { key: String },
    /// Delete every key under `prefix` (plain string prefix; must not be empty).
    DeletePrefix { prefix: String },
}

/// A condition the whole commit depends on (e.g. "my leader key still holds my id").
#[derive(Debug, Clone)]
pub enum Guard {
    /// `key` exists and holds exactly `value`.
    ValueEquals { key: String, value: Vec<u8> },
    /// `key` does not exist.
    Absent { key: String },
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    Put {
        key: String,
        value: Vec<u8>,
        revision: Revision,
    },
    Delete {
        key: String,
        revision: Revision,
    },
    /// History before `revision` is gone (compaction / bounded history / reconnect gap): here is
    /// the full current state under the watched prefix; events continue after `revision`.
    Reset {
        items: Vec<(String, Vec<u8>)>,
        revision: Revision,
    },
}

/// The receiving end of a watch. Items arrive in revision order. An `Err` item is terminal (the
/// stream ends right after it): watch again from the last revision you applied. The stream also
/// ends (`None`) when the store is dropped. Dropping the receiver cancels the watch.
pub type WatchStream = tokio::sync::mpsc::Receiver<Result<WatchEvent, StoreError>>;

/// etcd 3.4 refuses transactions with more than 128 operations (or compares); the etcd backend
/// adds one of each to every commit (its marker, which makes a commit safe to send again).
pub const MAX_OPS_PER_COMMIT: usize = 127;
/// Stays below etcd's default 1.5 MiB request limit, with room for framing.
pub const MAX_COMMIT_BYTES: usize = 1024 * 1024;
/// An `Op::Put` value larger than this is a *large value*: stored in chunks on etcd, and counted
/// as [`LARGE_VALUE_STUB_BYTES`] towards [`MAX_COMMIT_BYTES`]. Small enough that a commit's
/// previous values (etcd returns them to clean up replaced chunks) stay well below etcd's limits.
pub const LARGE_VALUE_BYTES: usize = 256 * 1024;
/// Largest value a commit accepts (use blobs beyond).
pub const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;
/// What a large value counts towards [`MAX_COMMIT_BYTES`]: the size of its pointer.
pub const LARGE_VALUE_STUB_BYTES: usize = 256;
/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 4096;

/// The persistence interface. See the module docs for the contract both backends keep.
pub trait Store: Send + Sync + 'static {
    /// The value at `key`, if any.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// All keys under `prefix`, sorted by key. Paginated internally (etcd responses must stay
    /// small); the result is one consistent snapshot.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;
    /// Atomic and durable when it returns Ok (acknowledged = survives kill -9 / etcd restart).
    /// Fails with StoreError::GuardFailed if a guard does not hold (nothing applied), with
    /// StoreError::TooLarge beyond MAX_OPS_PER_COMMIT ops or MAX_COMMIT_BYTES (use blobs).
    /// Returns the store revision after the commit. `Unavailable` means the outcome is unknown:
    /// re-read before deciding to retry. Overwriting or deleting a large value or a blob pointer
    /// also deletes the chunks it named.
    fn commit(
        &self,
        guards: Vec<Guard>,
        ops: Vec<Op>,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;
    /// Any size. Readers see either the old or the new blob, never a mix: chunks are written
    /// first under a fresh generation, then a pointer at `key` is swapped in one commit
    /// (guarded by `guards`), then the previous generation's chunks are deleted.
    fn put_blob(
        &self,
        key: &str,
        bytes: &[u8],
        guards: Vec<Guard>,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;
    /// The whole blob at `key`, verified against the length and SHA-256 in its pointer.
    fn get_blob(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Deletes the pointer at `key` and the chunks it points to (no error when absent).
    fn delete_blob(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A new lease; etcd rounds the TTL up to whole seconds (and to its minimum, 2 s by default).
    fn grant_lease(
        &self,
        ttl: Duration,
    ) -> impl Future<Output = Result<LeaseId, StoreError>> + Send;
    /// Ok(false) when the lease already expired (its keys are gone; re-register).
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Deletes the lease and its keys now. Revoking an unknown or expired lease is Ok.
    fn revoke_lease(&self, lease: LeaseId) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Events for keys under `prefix` with revision > `after`. If `after` is older than the
    /// retained history, the stream starts with a Reset. The stream survives backend restarts
    /// (etcd: reconnect with backoff, resume from the last seen revision, Reset on compaction).
    fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> impl Future<Output = Result<WatchStream, StoreError>> + Send;
    /// The current store revision.
    fn revision(&self) -> impl Future<Output = Result<Revision, StoreError>> + Send;
    /// Deletes chunk generations that no pointer (blob or large value) references and that are
    /// older than their writer's publishing window, i.e. chunks a writer left behind when it
    /// died or lost the store between its chunks and its pointer. Returns how many generations
    /// it deleted (also counted in [`AnyStore::leaked_generations_swept`]). Both backends run it
    /// at open and periodically; safe to run concurrently with writers and other sweeps.
    fn sweep_chunks(&self) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

/// Why a store call failed, who is to blame, and what the operator should do. `Clone + Eq` so
/// callers can fan errors out and compare them in tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend cannot be reached or did not answer in time. Retry later.
    #[error(
        "{backend} store unavailable ({detail}); is {backend} reachable at {target}? \
         the federation keeps serving its last state and retries"
    )]
    Unavailable {
        backend: &'static str,
        target: String,
        detail: String,
    },
    /// A guard did not hold; nothing was applied. Someone else changed the guarded key.
    #[error(
        "commit not applied: a guard no longer holds (another writer changed the guarded key, \
         e.g. leadership moved); re-read the state and retry, or step down"
    )]
    GuardFailed,
    /// The commit exceeds the limits every backend must honour.
    #[error(
        "commit too large: {ops} ops, {guards} guards, {bytes} bytes (limits: \
         {MAX_OPS_PER_COMMIT} ops and guards, {MAX_COMMIT_BYTES} bytes, where a value over \
         {LARGE_VALUE_BYTES} bytes counts {LARGE_VALUE_STUB_BYTES} unless leased, and values up \
         to {MAX_VALUE_BYTES} bytes); split it into several commits or store very large values \
         with put_blob"
    )]
    TooLarge {
        ops: usize,
        guards: usize,
        bytes: usize,
    },
    /// The lease expired or was revoked; its keys are gone.
    #[error("lease {} not found or expired; grant a new lease and re-register its keys", lease.0)]
    LeaseNotFound { lease: LeaseId },
    /// The caller passed an invalid key, prefix or commit: a bug in Isthmus.
    #[error("invalid store request: {detail}; this is a bug in Isthmus, please report it")]
    Invalid { detail: String },
    /// Stored bytes do not have the expected shape.
    #[error(
        "stored data at {key:?} is corrupt: {detail}; restore the store from a backup or delete \
         the key so the federation rebuilds it"
    )]
    Corrupt { key: String, detail: String },
    /// The backend understood the request and refused it (auth, permissions, quota).
    #[error(
        "the {backend} store refused the request: {detail}; check the credentials, the \
         permissions on the key prefix and the backend's space quota"
    )]
    Rejected {
        backend: &'static str,
        detail: String,
    },
    /// A local file or directory could not be used.
    #[error(
        "{}: {detail}; check that the path exists, is writable by this user and the disk is not \
         full", path.display()
    )]
    Io {
        path: PathBuf,
        kind: std::io::ErrorKind,
        detail: String,
    },
    /// The embedded database is held by another process (or another store in this process).
    #[error(
        "another federation already uses data dir {}; stop it, or give this one its own data \
         dir", path.display()
    )]
    Locked { path: PathBuf },
    /// The embedded database failed below the file system level.
    #[error(
        "embedded database {}: {detail}; check the disk, then restore from a backup if it \
         keeps failing", path.display()
    )]
    Database { path: PathBuf, detail: String },
    /// The store configuration cannot work.
    #[error("invalid store config: {0}")]
    Config(String),
    /// The store was dropped while a call or watch was in flight.
    #[error("the store was closed; the federation is shutting down")]
    Closed,
}

impl StoreError {
    /// An [`StoreError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: &std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            kind: source.kind(),
            detail: source.to_string(),
        }
    }

    /// Whether retrying the same call later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// What everything above the trait holds. Cheap to clone.
#[derive(Clone)]
pub enum AnyStore {
    Embedded(EmbeddedStore),
    #[cfg(feature = "etcd")]
    Etcd(EtcdStore),
}

impl std::fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AnyStore").field(&self.backend()).finish()
    }
}

impl AnyStore {
    /// Validates `config` and opens the backend it names. The etcd backend connects lazily: an
    /// unreachable etcd shows up as [`StoreError::Unavailable`] on the first call.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        config.validate()?;
        match config {
            StoreConfig::Embedded { data_dir } => {
                Ok(AnyStore::Embedded(EmbeddedStore::open(data_dir).await?))
            }
            #[cfg(feature = "etcd")]
            StoreConfig::Etcd { .. } => Ok(AnyStore::Etcd(EtcdStore::connect(config).await?)),
            #[cfg(not(feature = "etcd"))]
            StoreConfig::Etcd { .. } => Err(StoreError::Config(
                "this build has no etcd support; use backend: embedded".into(),
            )),
        }
    }

    /// Registers the store's metrics (leaked chunk generations swept) on `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "isthmus_store_leaked_chunk_generations_swept",
            "Chunk generations no pointer referenced (left by a writer that died or lost the \
             store mid-write), deleted by the sweep",
            self.leaked_generations_swept(),
        );
    }

    /// Chunk generations deleted by [`Store::sweep_chunks`] since open.
    pub fn leaked_generations_swept(&self) -> prometheus_client::metrics::counter::Counter {
        match self {
            AnyStore::Embedded(s) => s.swept_counter(),
            #[cfg(feature = "etcd")]
            AnyStore::Etcd(s) => s.swept_counter(),
        }
    }

    /// `"embedded"` or `"etcd"`, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            AnyStore::Embedded(_) => "embedded",
            #[cfg(feature = "etcd")]
            AnyStore::Etcd(_) => "etcd",
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Embedded($s) => $call.await,
            #[cfg(feature = "etcd")]
            AnyStore::Etcd($s) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        delegate!(self, s => s.get(key))
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        delegate!(self, s => s.list(prefix))
    }
    async fn commit(&self, guards: Vec<Guard>, ops: Vec<Op>) -> Result<Revision, StoreError> {
        delegate!(self, s => s.commit(guards, ops))
    }
    async fn put_blob(
        &self,
        key: &str,
        bytes: &[u8],
        guards: Vec<Guard>,
    ) -> Result<Revision, StoreError> {
        delegate!(self, s => s.put_blob(key, bytes, guards))
    }
    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        delegate!(self, s => s.get_blob(key))
    }
    async fn delete_blob(&self, key: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.delete_blob(key))
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        delegate!(self, s => s.grant_lease(ttl))
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        delegate!(self, s => s.keep_alive(lease))
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        delegate!(self, s => s.revoke_lease(lease))
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        delegate!(self, s => s.watch(prefix, after))
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        delegate!(self, s => s.revision())
    }
    async fn sweep_chunks(&self) -> Result<usize, StoreError> {
        delegate!(self, s => s.sweep_chunks())
    }
}

// ---- shared validation -------------------------------------------------------------------

/// Capacity of every watch channel: a consumer that falls this far behind slows its watch down
/// (etcd) or gets a Reset (embedded).
pub(crate) const WATCH_CHANNEL: usize = 1024;

pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(invalid("empty key".to_owned()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "key of {} bytes is longer than {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(invalid(format!("key {key:?} contains NUL")));
    }
    Ok(())
}

pub(crate) fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "prefix of {} bytes is longer than {MAX_KEY_BYTES}",
            prefix.len()
        )));
    }
    if prefix.contains('\0') {
        return Err(invalid(format!("prefix {prefix:?} contains NUL")));
    }
    Ok(())
}

fn invalid(detail: String) -> StoreError {
    StoreError::Invalid { detail }
}

impl Op {
    /// The key or prefix this op touches.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::PutLeased { key, .. } | Op::Delete { key } => key,
            Op::DeletePrefix { prefix } => prefix,
        }
    }

    /// Whether this op writes a large value (see [`LARGE_VALUE_BYTES`]).
    pub fn is_large(&self) -> bool {
        matches!(self, Op::Put { value, .. } if value.len() > LARGE_VALUE_BYTES)
    }

    /// What the op counts towards [`MAX_COMMIT_BYTES`].
    fn bytes(&self) -> usize {
        match self {
            Op::Put { key, .. } if self.is_large() => key.len() + LARGE_VALUE_STUB_BYTES,
            Op::Put { key, value } | Op::PutLeased { key, value, .. } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
            Op::DeletePrefix { prefix } => prefix.len(),
        }
    }
}

/// Commits `ops` in order, in as few commits as the limits allow (at most
/// [`MAX_OPS_PER_COMMIT`] ops and [`MAX_COMMIT_BYTES`] bytes each; an op too large on its own
/// goes alone and is refused). Not atomic as a whole: `committed` counts the ops durable so far,
/// so a caller whose first ops must be durable knows whether they are when a later commit fails.
pub async fn commit_in_chunks<S: Store>(
    store: &S,
    ops: Vec<Op>,
    committed: &mut usize,
) -> Result<(), StoreError> {
    let mut chunk: Vec<Op> = Vec::new();
    let mut bytes = 0;
    let mut ops = ops.into_iter().peekable();
    while let Some(op) = ops.next() {
        bytes += op.bytes();
        chunk.push(op);
        let full = chunk.len() == MAX_OPS_PER_COMMIT
            || ops
                .peek()
                .is_none_or(|next| bytes + next.bytes() > MAX_COMMIT_BYTES);
        if full {
            let n = chunk.len();
            store.commit(Vec::new(), std::mem::take(&mut chunk)).await?;
            *committed += n;
            bytes = 0;
        }
    }
    Ok(())
}

/// Every record under `prefix` decoded from JSON, with its name (the key without the prefix).
/// A record that does not decode comes back as `Err(why)`, for the caller to name its table.
pub async fn list_json<T: serde::de::DeserializeOwned, S: Store>(
    store: &S,
    prefix: &str,
) -> Result<Vec<(String, Result<T, String>)>, StoreError> {
    Ok(store
        .list(prefix)
        .await?
        .into_iter()
        .map(|(key, value)| {
            let name = key.trim_start_matches(prefix).to_string();
            (
                name,
                serde_json::from_slice(&value).map_err(|e| e.to_string()),
            )
        })
        .collect())
}

impl Guard {
    /// The guarded key.
    pub fn key(&self) -> &str {
        match self {
            Guard::ValueEquals { key, .. } | Guard::Absent { key } => key,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Guard::ValueEquals { key, value } => key.len() + value.len(),
            Guard::Absent { key } => key.len(),
        }
    }
}

/// Checks limits, keys and conflicts before a commit reaches any backend, so both refuse the
/// same commits with the same errors. Counts the guards etcd adds itself: one per large value
/// (its chunks still exist) and one per `DeletePrefix` (nothing under the prefix changed since
/// the backend read which chunks it must delete with it).
pub(crate) fn check_commit(guards: &[Guard], ops: &[Op]) -> Result<(), StoreError> {
    let bytes =
        guards.iter().map(Guard::bytes).sum::<usize>() + ops.iter().map(Op::bytes).sum::<usize>();
    let extra_guards = ops
        .iter()
        .filter(|op| op.is_large() || matches!(op, Op::DeletePrefix { .. }))
        .count();
    let guard_count = guards.len() + extra_guards;
    let oversized = ops.iter().any(|op| match op {
        Op::Put { value, .. } => value.len() > MAX_VALUE_BYTES,
        _ => false,
    });
    if ops.len() > MAX_OPS_PER_COMMIT
        || guard_count > MAX_OPS_PER_COMMIT
        || bytes > MAX_COMMIT_BYTES
        || oversized
    {
        return Err(StoreError::TooLarge {
            ops: ops.len(),
            guards: guard_count,
            bytes,
        });
    }
    for guard in guards {
        check_key(guard.key())?;
        if let Guard::ValueEquals { value, .. } = guard
            && value.len() > LARGE_VALUE_BYTES
        {
            return Err(invalid(format!(
                "a guard on {:?} compares {} bytes; guards compare values up to \
                 {LARGE_VALUE_BYTES} bytes",
                guard.key(),
                value.len()
            )));
        }
    }
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::DeletePrefix { prefix } => {
                if prefix.is_empty() {
                    return Err(invalid(
                        "DeletePrefix with an empty prefix would delete everything".into(),
                    ));
                }
                check_prefix(prefix)?;
            }
            _ => check_key(op.key())?,
        }
        let writes = matches!(op, Op::Put { .. } | Op::PutLeased { .. });
        for other in &ops[..i] {
            let other_writes = matches!(other, Op::Put { .. } | Op::PutLeased { .. });
            if !writes && !other_writes {
                continue; // deletes may overlap each other
            }
            if touches(op, other.key()) || touches(other, op.key()) {
                return Err(invalid(format!(
                    "one commit writes {:?} and also writes or deletes {:?}; write each key at \
                     most once per commit",
                    op.key(),
                    other.key()
                )));
            }
        }
    }
    Ok(())
}

/// Whether `op` touches `key`.
fn touches(op: &Op, key: &str) -> bool {
    match op {
        Op::DeletePrefix { prefix } => key.starts_with(prefix.as_str()),
        other => other.key() == key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: vec![1],
        }
    }

    #[test]
    fn commit_limits_and_conflicts() {
        let ops: Vec<Op> = (0..MAX_OPS_PER_COMMIT)
            .map(|i| put(&format!("k{i}")))
            .collect();
        assert!(check_commit(&[], &ops).is_ok());
        let ops: Vec<Op> = (0..=MAX_OPS_PER_COMMIT)
            .map(|i| put(&format!("k{i}")))
            .collect();
        assert!(matches!(
            check_commit(&[], &ops),
            Err(StoreError::TooLarge { ops: 128, .. })
        ));
        // A large value counts as its pointer; a leased one counts whole.
        let big = vec![Op::Put {
            key: "k".into(),
            value: vec![0; MAX_COMMIT_BYTES],
        }];
        assert!(check_commit(&[], &big).is_ok());
        let leased = vec![Op::PutLeased {
            key: "k".into(),
            value: vec![0; MAX_COMMIT_BYTES],
            lease: LeaseId(1),
        }];
        assert!(matches!(
            check_commit(&[], &leased),
            Err(StoreError::TooLarge { .. })
        ));
        let huge = vec![Op::Put {
            key: "k".into(),
            value: vec![0; MAX_VALUE_BYTES + 1],
        }];
        assert!(matches!(
            check_commit(&[], &huge),
            Err(StoreError::TooLarge { .. })
        ));
        // Each large value takes one of the guards.
        let many_large: Vec<Op> = (0..MAX_OPS_PER_COMMIT)
            .map(|i| Op::Put {
                key: format!("k{i}"),
                value: vec![0; LARGE_VALUE_BYTES + 1],
            })
            .collect();
        assert!(check_commit(&[], &many_large).is_ok());
        let guard = [Guard::Absent { key: "g".into() }];
        assert!(matches!(
            check_commit(&guard, &many_large),
            Err(StoreError::TooLarge { .. })
        ));
        assert!(check_commit(&[], &[put("a"), put("a")]).is_err());
        let prefix_and_put = [
            Op::DeletePrefix {
                prefix: "a/".into(),
            },
            put("a/b"),
        ];
        assert!(check_commit(&[], &prefix_and_put).is_err());
        let deletes = [
            Op::DeletePrefix {
                prefix: "a/".into(),
            },
            Op::Delete { key: "a/b".into() },
        ];
        assert!(check_commit(&[], &deletes).is_ok());
        assert!(check_commit(&[], &[put("")]).is_err());
        assert!(check_commit(&[], &[put("a\0b")]).is_err());
        let everything = [Op::DeletePrefix { prefix: "".into() }];
        assert!(check_commit(&[], &everything).is_err());
    }

    #[test]
    fn config_parses_and_rejects_unknown_fields() {
        let c: StoreConfig =
            serde_json::from_str(r#"{"backend":"embedded","data_dir":"/var/lib/isthmus"}"#)
                .expect("embedded config");
        assert_eq!(c, StoreConfig::embedded("/var/lib/isthmus"));
        let c: StoreConfig = serde_json::from_str(
            r#"{"backend":"etcd","endpoints":["http://127.0.0.1:2379"],"prefix":"/isthmus/"}"#,
        )
        .expect("etcd config");
        assert_eq!(
            c,
            StoreConfig::etcd(vec!["http://127.0.0.1:2379".into()], "/isthmus/")
        );
        let bad = r#"{"backend":"embedded","data_dir":"/x","colour":"red"}"#;
        assert!(serde_json::from_str::<StoreConfig>(bad).is_err());
        let bad = r#"{"backend":"etcd","endpoints":["http://a:1"],"tls":{"ca_file":"x","y":1}}"#;
        assert!(serde_json::from_str::<StoreConfig>(bad).is_err());
        let no_endpoints = StoreConfig::etcd(vec![], "");
        assert!(no_endpoints.validate().is_err());
        let https_without_tls = StoreConfig::etcd(vec!["https://a:2379".into()], "");
        assert!(https_without_tls.validate().is_err());
    }
}
