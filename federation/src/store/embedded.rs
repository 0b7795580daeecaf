//! The embedded backend: redb in one file, `<data_dir>/isthmus.redb`, inside this process.
//!
//! Guarantees:
//! - Every write (commit, blob, lease grant/keep-alive/revoke, lease expiry) is one redb write
//!   transaction with `Durability::Immediate`: when the call returns Ok the data is fsynced and
//!   survives `kill -9` or power loss. A failed call applies nothing.
//! - One process (one store) per data dir: redb's file lock refuses a second opener, reported
//!   as [`StoreError::Locked`].
//! - Revisions are persisted and keep growing across restarts.
//! - Leases carry a wall-clock deadline (unix ms) and their keys; a sweeper (every 250 ms, and
//!   once at open) deletes expired leases' keys with ordinary Delete events. A lease that
//!   expired while the process was down is swept at open. Clock jumps move deadlines.
//! - Watches replay from an in-memory history of the last [`HISTORY_EVENTS`] events; older
//!   `after` revisions (and every `after` older than the open, since history starts empty) get
//!   a Reset. A consumer that falls behind by more than the history gets a Reset, too.
//! - Large values (see [`super::LARGE_VALUE_BYTES`]) are stored inline: one redb transaction is
//!   atomic at any size, so the limits checked are only those etcd needs, for parity.
//! - Overwriting or deleting a blob pointer deletes its chunks in the same transaction; chunks
//!   no pointer references (only a bug or an older version could leave them) are swept at open
//!   and every [`blob::SWEEP_EVERY`].
//! - redb calls run on the blocking pool; no lock is held across an `.await`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc};

use super::blob::{self, BlobPointer};
use super::{
    Guard, LeaseId, Op, Revision, Store, StoreError, WATCH_CHANNEL, WatchEvent, WatchStream,
    check_commit, check_key, check_prefix,
};

const KV: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("kv");
/// key -> lease it is attached to.
const KV_LEASE: TableDefinition<'static, &str, i64> = TableDefinition::new("kv_lease");
/// lease -> (ttl ms, deadline unix ms).
const LEASES: TableDefinition<'static, i64, (u64, u64)> = TableDefinition::new("leases");
/// (lease, key) -> ().
const LEASE_KEYS: TableDefinition<'static, (i64, &str), ()> = TableDefinition::new("lease_keys");
/// "<generation>/<index>" -> chunk bytes.
const CHUNKS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("blob_chunks");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");

const META_SCHEMA: &str = "schema";
const META_REVISION: &str = "revision";
const META_NEXT_LEASE: &str = "next_lease";
const SCHEMA: u64 = 1;

/// File name inside the data dir.
/// redb's page cache (reads and the write buffer together). Its default (1 GiB) would let the
/// cache grow past everything else the federation holds; the working set here (catalogs, VIPs,
/// leases) is read mostly at start and pages the cache misses come from the OS page cache, so a
/// small cache costs nothing measurable (32 MiB cost 22 MiB more resident memory than this with
/// 100,000 imported services, for no measurable gain in convergence).
const CACHE_BYTES: usize = 8 * 1024 * 1024;

pub const FILE_NAME: &str = "isthmus.redb";
/// Events kept in memory for watches that resume from a recent revision.
pub const HISTORY_EVENTS: usize = 4096;
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// A store dropped in this process may still be closing on the blocking pool: wait this long
/// for its file lock before reporting the data dir as taken.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The embedded store. Cheap to clone; the file closes when the last clone is dropped.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Chunk generations deleted by the leaked-chunk sweep.
    swept: prometheus_client::metrics::counter::Counter,
    /// Held across "write transaction + publish", so watchers see commits in order and
    /// `watch` can take a consistent cut.
    hub: Mutex<Hub>,
}

struct Hub {
    revision: Revision,
    /// Every event with revision > `history_start` is in `history`.
    history: VecDeque<Arc<Committed>>,
    history_events: usize,
    history_start: Revision,
    tx: broadcast::Sender<Arc<Committed>>,
}

struct Committed {
    revision: Revision,
    events: Vec<WatchEvent>,
}

/// Internal error: redb errors get the file path attached at the edge.
enum Fail {
    Redb(redb::Error),
    Store(StoreError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                Fail::Redb(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::DatabaseError
);

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

fn to_store_error(path: &Path, fail: Fail) -> StoreError {
    match fail {
        Fail::Store(e) => e,
        Fail::Redb(redb::Error::DatabaseAlreadyOpen) => StoreError::Locked {
            path: path.parent().unwrap_or(path).to_path_buf(),
        },
        Fail::Redb(redb::Error::Io(source)) => StoreError::io(path, &source),
        Fail::Redb(other) => StoreError::Database {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

fn under(event: &WatchEvent, prefix: &str) -> bool {
    match event {
        WatchEvent::Put { key, .. } | WatchEvent::Delete { key, .. } => key.starts_with(prefix),
        WatchEvent::Reset { .. } => true,
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store under `data_dir`, sweeps leases that expired while it was
    /// closed, and starts the lease sweeper. Must be called inside a tokio runtime.
    pub async fn open(data_dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = data_dir.as_ref().to_path_buf();
        let inner = tokio::task::spawn_blocking(move || Inner::open(&dir))
            .await
            .map_err(|e| StoreError::Database {
                path: data_dir.as_ref().to_path_buf(),
                detail: format!("opening failed: {e}"),
            })??;
        let store = EmbeddedStore {
            inner: Arc::new(inner),
        };
        store.sweep().await?;
        spawn_sweeper(Arc::downgrade(&store.inner));
        if let Err(e) = store.sweep_chunks().await {
            tracing::warn!(error = %e, "sweeping leaked blob chunks failed; retrying later");
        }
        spawn_chunk_sweeper(Arc::downgrade(&store.inner));
        tracing::info!(path = %store.inner.path.display(), "embedded store open");
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Chunk generations deleted by the leaked-chunk sweep since open.
    pub fn swept_counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.inner.swept.clone()
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, Fail> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner).map_err(|e| to_store_error(&inner.path, e)))
            .await
            .map_err(|e| StoreError::Database {
                path: self.inner.path.clone(),
                detail: format!("store worker failed: {e}"),
            })?
    }

    /// Deletes the keys of every expired lease in one commit.
    async fn sweep(&self) -> Result<(), StoreError> {
        self.blocking(|inner| {
            let now = now_ms();
            if inner.expired_leases(now)?.is_empty() {
                return Ok(());
            }
            inner.write(|t| {
                for lease in t.expired(now)? {
                    // Keys re-put under another lease since (a gateway re-registering after a
                    // restart) are no longer this lease's: they stay.
                    let keys = t.expire(lease)?;
                    tracing::info!(lease, keys, "lease expired; deleted the keys it still held");
                }
                Ok(())
            })?;
            Ok(())
        })
        .await
    }
}

fn spawn_sweeper(weak: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let store = EmbeddedStore { inner };
            if let Err(e) = store.sweep().await {
                tracing::warn!(error = %e, "lease sweep failed; retrying");
            }
        }
    });
}

fn spawn_chunk_sweeper(weak: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(blob::SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first sweep ran at open
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            let store = EmbeddedStore { inner };
            if let Err(e) = store.sweep_chunks().await {
                tracing::warn!(error = %e, "sweeping leaked blob chunks failed; retrying later");
            }
        }
    });
}

impl Inner {
    fn open(dir: &Path) -> Result<Inner, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::io(dir, &source))?;
        let path = dir.join(FILE_NAME);
        let started = std::time::Instant::now();
        let db = loop {
            match Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(&path)
            {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(to_store_error(&path, e.into())),
            }
        };
        let revision = Self::init(&db).map_err(|e| to_store_error(&path, e))?;
        let (tx, _) = broadcast::channel(256);
        Ok(Inner {
            db,
            path,
            swept: Default::default(),
            hub: Mutex::new(Hub {
                revision,
                history: VecDeque::new(),
                history_events: 0,
                history_start: revision,
                tx,
            }),
        })
    }

    /// Creates the tables and checks the schema; returns the persisted revision.
    fn init(db: &Database) -> Result<Revision, Fail> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let revision = {
            txn.open_table(KV)?;
            txn.open_table(KV_LEASE)?;
            txn.open_table(LEASES)?;
            txn.open_table(LEASE_KEYS)?;
            txn.open_table(CHUNKS)?;
            let mut meta = txn.open_table(META)?;
            let schema = meta.get(META_SCHEMA)?.map(|g| g.value());
            match schema {
                None => {
                    meta.insert(META_SCHEMA, SCHEMA)?;
                }
                Some(SCHEMA) => {}
                Some(other) => {
                    return Err(Fail::Redb(redb::Error::Corrupted(format!(
                        "written with store schema {other}, this build reads schema {SCHEMA}; \
                         run the Isthmus version that wrote it"
                    ))));
                }
            }
            meta.get(META_REVISION)?.map(|g| g.value()).unwrap_or(0)
        };
        txn.commit()?;
        Ok(revision)
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        // A panic while holding the lock leaves the hub as consistent as the last publish.
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` in one durable write transaction and publishes its events. Returns `f`'s
    /// result and the revision after the transaction.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, Fail>,
    ) -> Result<(T, Revision), Fail> {
        let mut hub = self.hub();
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let next = hub.revision + 1;
        let (out, events) = {
            let mut t = Tables::open(&txn, next)?;
            let out = f(&mut t)?;
            if !t.events.is_empty() {
                t.meta.insert(META_REVISION, next)?;
            }
            (out, std::mem::take(&mut t.events))
        };
        txn.commit()?;
        if events.is_empty() {
            return Ok((out, hub.revision));
        }
        hub.publish(next, events);
        Ok((out, next))
    }

    fn read(&self) -> Result<redb::ReadTransaction, Fail> {
        Ok(self.db.begin_read()?)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Fail> {
        let txn = self.read()?;
        let kv = txn.open_table(KV)?;
        let mut items = Vec::new();
        for item in kv.range(prefix..)? {
            let (k, v) = item?;
            if !k.value().starts_with(prefix) {
                break;
            }
            items.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(items)
    }

    fn expired_leases(&self, now: u64) -> Result<Vec<i64>, Fail> {
        let txn = self.read()?;
        let leases = txn.open_table(LEASES)?;
        let mut expired = Vec::new();
        for item in leases.iter()? {
            let (id, v) = item?;
            if v.value().1 <= now {
                expired.push(id.value());
            }
        }
        Ok(expired)
    }

    /// Under the hub lock: the events after `after` from history, or a Reset with the current
    /// state; plus the subscription for everything later and the revision served so far.
    #[allow(clippy::type_complexity)]
    fn subscribe(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<
        (
            Vec<WatchEvent>,
            Revision,
            broadcast::Receiver<Arc<Committed>>,
        ),
        Fail,
    > {
        let hub = self.hub();
        let rx = hub.tx.subscribe();
        if after >= hub.history_start {
            let events = hub
                .history
                .iter()
                .filter(|c| c.revision > after)
                .flat_map(|c| c.events.iter().filter(|e| under(e, prefix)).cloned())
                .collect();
            return Ok((events, after.max(hub.revision), rx));
        }
        // Writers wait for the hub lock, so this list is exactly the state at hub.revision.
        let items = self.list(prefix)?;
        let reset = WatchEvent::Reset {
            items,
            revision: hub.revision,
        };
        Ok((vec![reset], hub.revision, rx))
    }
}

impl Hub {
    fn publish(&mut self, revision: Revision, events: Vec<WatchEvent>) {
        let committed = Arc::new(Committed { revision, events });
        self.revision = revision;
        self.history_events += committed.events.len();
        self.history.push_back(committed.clone());
        while self.history_events > HISTORY_EVENTS && self.history.len() > 1 {
            if let Some(old) = self.history.pop_front() {
                self.history_events -= old.events.len();
                self.history_start = old.revision;
            }
        }
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(committed);
    }
}

/// All tables of one write transaction, plus the events it produces.
struct Tables<'txn> {
    kv: redb::Table<'txn, &'static str, &'static [u8]>,
    kv_lease: redb::Table<'txn, &'static str, i64>,
    leases: redb::Table<'txn, i64, (u64, u64)>,
    lease_keys: redb::Table<'txn, (i64, &'static str), ()>,
    chunks: redb::Table<'txn, &'static str, &'static [u8]>,
    meta: redb::Table<'txn, &'static str, u64>,
    revision: Revision,
    events: Vec<WatchEvent>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction, revision: Revision) -> Result<Self, Fail> {
        Ok(Tables {
            kv: txn.open_table(KV)?,
            kv_lease: txn.open_table(KV_LEASE)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
            chunks: txn.open_table(CHUNKS)?,
            meta: txn.open_table(META)?,
            revision,
            events: Vec::new(),
        })
    }

    fn check(&self, guards: &[Guard]) -> Result<(), Fail> {
        for guard in guards {
            let holds = match guard {
                Guard::ValueEquals { key, value } => self
                    .kv
                    .get(key.as_str())?
                    .is_some_and(|v| v.value() == value.as_slice()),
                Guard::Absent { key } => self.kv.get(key.as_str())?.is_none(),
            };
            if !holds {
                return Err(StoreError::GuardFailed.into());
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op, now: u64) -> Result<(), Fail> {
        match op {
            Op::Put { key, value } => self.put(key, value, None, now),
            Op::PutLeased { key, value, lease } => self.put(key, value, Some(*lease), now),
            Op::Delete { key } => self.delete(key),
            Op::DeletePrefix { prefix } => {
                let mut keys = Vec::new();
                for item in self.kv.range(prefix.as_str()..)? {
                    let (k, _) = item?;
                    if !k.value().starts_with(prefix.as_str()) {
                        break;
                    }
                    keys.push(k.value().to_owned());
                }
                for key in keys {
                    self.delete(&key)?;
                }
                Ok(())
            }
        }
    }

    fn put(
        &mut self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
        now: u64,
    ) -> Result<(), Fail> {
        if let Some(lease) = lease {
            let alive = self.leases.get(lease.0)?.is_some_and(|v| v.value().1 > now);
            if !alive {
                return Err(StoreError::LeaseNotFound { lease }.into());
            }
        }
        self.detach(key)?;
        if let Some(lease) = lease {
            self.kv_lease.insert(key, lease.0)?;
            self.lease_keys.insert((lease.0, key), ())?;
        }
        let replaced = self.pointer(key)?;
        self.kv.insert(key, value)?;
        if let Some(old) = replaced {
            let same = BlobPointer::decode(key, value)
                .ok()
                .flatten()
                .is_some_and(|new| new.generation == old.generation);
            if !same {
                self.delete_chunks(&old.generation)?;
            }
        }
        self.events.push(WatchEvent::Put {
            key: key.to_owned(),
            value: value.to_vec(),
            revision: self.revision,
        });
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<(), Fail> {
        let replaced = self.pointer(key)?;
        if self.kv.remove(key)?.is_none() {
            return Ok(());
        }
        if let Some(old) = replaced {
            self.delete_chunks(&old.generation)?;
        }
        self.detach(key)?;
        self.events.push(WatchEvent::Delete {
            key: key.to_owned(),
            revision: self.revision,
        });
        Ok(())
    }

    /// Detaches `key` from its lease, if any.
    fn detach(&mut self, key: &str) -> Result<(), Fail> {
        let old = self.kv_lease.remove(key)?.map(|g| g.value());
        if let Some(old) = old {
            self.lease_keys.remove((old, key))?;
        }
        Ok(())
    }

    fn expired(&self, now: u64) -> Result<Vec<i64>, Fail> {
        let mut expired = Vec::new();
        for item in self.leases.iter()? {
            let (id, v) = item?;
            if v.value().1 <= now {
                expired.push(id.value());
            }
        }
        Ok(expired)
    }

    /// Deletes `lease` and every key attached to it; how many keys that was.
    fn expire(&mut self, lease: i64) -> Result<usize, Fail> {
        let mut keys = Vec::new();
        for item in self.lease_keys.range((lease, "")..)? {
            let (k, _) = item?;
            let (id, key) = k.value();
            if id != lease {
                break;
            }
            keys.push(key.to_owned());
        }
        for key in &keys {
            self.delete(key)?;
        }
        self.leases.remove(lease)?;
        Ok(keys.len())
    }

    fn delete_chunks(&mut self, generation: &str) -> Result<(), Fail> {
        let start = format!("{generation}/");
        let mut names = Vec::new();
        for item in self.chunks.range(start.as_str()..)? {
            let (k, _) = item?;
            if !k.value().starts_with(start.as_str()) {
                break;
            }
            names.push(k.value().to_owned());
        }
        for name in names {
            self.chunks.remove(name.as_str())?;
        }
        Ok(())
    }

    /// The blob pointer at `key`, if the value there is one (a corrupt one is logged and
    /// treated as absent, so a new blob can replace it).
    fn pointer(&self, key: &str) -> Result<Option<BlobPointer>, Fail> {
        let Some(value) = self.kv.get(key)? else {
            return Ok(None);
        };
        Ok(BlobPointer::decode(key, value.value()).unwrap_or_else(|e| {
            tracing::warn!(key, error = %e, "replacing an unreadable blob pointer");
            None
        }))
    }
}

impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |inner| {
            let txn = inner.read()?;
            let kv = txn.open_table(KV)?;
            Ok(kv.get(key.as_str())?.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        check_prefix(prefix)?;
        let prefix = prefix.to_owned();
        self.blocking(move |inner| inner.list(&prefix)).await
    }

    async fn commit(&self, guards: Vec<Guard>, ops: Vec<Op>) -> Result<Revision, StoreError> {
        check_commit(&guards, &ops)?;
        self.blocking(move |inner| {
            let now = now_ms();
            let ((), revision) = inner.write(|t| {
                t.check(&guards)?;
                ops.iter().try_for_each(|op| t.apply(op, now))
            })?;
            Ok(revision)
        })
        .await
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
        let put = [Op::Put {
            key: key.to_owned(),
            value: encoded.clone(),
        }];
        check_commit(&guards, &put)?;
        let key = key.to_owned();
        let bytes = bytes.to_vec();
        self.blocking(move |inner| {
            let now = now_ms();
            let ((), revision) = inner.write(|t| {
                t.check(&guards)?;
                for (index, chunk) in (0u32..).zip(blob::chunks(&bytes)) {
                    let name = blob::chunk_name(&pointer.generation, index);
                    t.chunks.insert(name.as_str(), chunk)?;
                }
                // Replacing the pointer deletes the previous generation's chunks.
                t.put(&key, &encoded, None, now)?;
                Ok(())
            })?;
            Ok(revision)
        })
        .await
    }

    async fn get_blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |inner| {
            let txn = inner.read()?;
            let kv = txn.open_table(KV)?;
            let Some(value) = kv.get(key.as_str())?.map(|v| v.value().to_vec()) else {
                return Ok(None);
            };
            let pointer = BlobPointer::decode_required(&key, &value)?;
            let chunks = txn.open_table(CHUNKS)?;
            let mut bytes = Vec::with_capacity(usize::try_from(pointer.len).unwrap_or(0));
            for index in 0..pointer.chunks {
                let name = blob::chunk_name(&pointer.generation, index);
                let chunk = chunks
                    .get(name.as_str())?
                    .ok_or_else(|| StoreError::Corrupt {
                        key: key.clone(),
                        detail: format!("blob chunk {name} is missing"),
                    })?;
                bytes.extend_from_slice(chunk.value());
            }
            pointer.verify(&key, &bytes)?;
            Ok(Some(bytes))
        })
        .await
    }

    async fn delete_blob(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |inner| {
            // Deleting the pointer deletes its chunks.
            inner.write(|t| t.delete(&key))?;
            Ok(())
        })
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.blocking(move |inner| {
            let (id, _) = inner.write(|t| {
                let id = t.meta.get(META_NEXT_LEASE)?.map(|g| g.value()).unwrap_or(1);
                t.meta.insert(META_NEXT_LEASE, id + 1)?;
                let id = i64::try_from(id).map_err(|_| {
                    Fail::Redb(redb::Error::Corrupted("lease counter overflow".into()))
                })?;
                t.leases
                    .insert(id, (ttl_ms, now_ms().saturating_add(ttl_ms)))?;
                Ok(LeaseId(id))
            })?;
            Ok(id)
        })
        .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        self.blocking(move |inner| {
            let now = now_ms();
            let (alive, _) = inner.write(|t| {
                let Some((ttl, deadline)) = t.leases.get(lease.0)?.map(|v| v.value()) else {
                    return Ok(false);
                };
                if deadline <= now {
                    t.expire(lease.0)?;
                    return Ok(false);
                }
                t.leases.insert(lease.0, (ttl, now.saturating_add(ttl)))?;
                Ok(true)
            })?;
            Ok(alive)
        })
        .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.blocking(move |inner| {
            inner.write(|t| {
                if t.leases.get(lease.0)?.is_some() {
                    t.expire(lease.0)?;
                }
                Ok(())
            })?;
            Ok(())
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        check_prefix(prefix)?;
        let owned = prefix.to_owned();
        let (first, served, sub) = self
            .blocking(move |inner| inner.subscribe(&owned, after))
            .await?;
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let watcher = Watcher {
            store: Arc::downgrade(&self.inner),
            prefix: prefix.to_owned(),
            served,
            sub,
            tx,
        };
        tokio::spawn(watcher.run(first));
        Ok(rx)
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.hub().revision)
    }

    async fn sweep_chunks(&self) -> Result<usize, StoreError> {
        let swept = self
            .blocking(|inner| {
                let now = blob::now_ms();
                // One write transaction: no pointer can appear between the scan and the delete.
                let (swept, _) = inner.write(|t| {
                    let mut referenced = std::collections::BTreeSet::new();
                    for item in t.kv.iter()? {
                        let (k, v) = item?;
                        if let Ok(Some(p)) = BlobPointer::decode(k.value(), v.value()) {
                            referenced.insert(p.generation);
                        }
                    }
                    let mut orphans = std::collections::BTreeSet::new();
                    for item in t.chunks.iter()? {
                        let (name, _) = item?;
                        let generation = blob::generation_of(name.value());
                        if !referenced.contains(generation) && blob::abandoned(generation, now) {
                            orphans.insert(generation.to_owned());
                        }
                    }
                    for generation in &orphans {
                        t.delete_chunks(generation)?;
                    }
                    Ok(orphans.len())
                })?;
                Ok(swept)
            })
            .await?;
        if swept > 0 {
            tracing::info!(
                generations = swept,
                "deleted leaked blob chunks no pointer referenced"
            );
            self.inner.swept.inc_by(swept as u64);
        }
        Ok(swept)
    }
}

/// Forwards committed events under `prefix` to one watch stream.
struct Watcher {
    /// Weak: a watch must not keep the database open.
    store: Weak<Inner>,
    prefix: String,
    /// Every event up to this revision has been sent (or covered by a Reset).
    served: Revision,
    sub: broadcast::Receiver<Arc<Committed>>,
    tx: mpsc::Sender<Result<WatchEvent, StoreError>>,
}

impl Watcher {
    async fn run(mut self, first: Vec<WatchEvent>) {
        if !self.send_all(first).await {
            return;
        }
        loop {
            let received = tokio::select! {
                () = self.tx.closed() => return,
                r = self.sub.recv() => r,
            };
            match received {
                Ok(committed) => {
                    if committed.revision <= self.served {
                        continue;
                    }
                    self.served = committed.revision;
                    let events = committed
                        .events
                        .iter()
                        .filter(|e| under(e, &self.prefix))
                        .cloned()
                        .collect();
                    if !self.send_all(events).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind the broadcast: catch up from history, or Reset.
                    let Some(inner) = self.store.upgrade() else {
                        return;
                    };
                    let (prefix, served) = (self.prefix.clone(), self.served);
                    let resubscribed = tokio::task::spawn_blocking(move || {
                        inner
                            .subscribe(&prefix, served)
                            .map_err(|e| to_store_error(&inner.path, e))
                    })
                    .await;
                    match resubscribed {
                        Ok(Ok((events, served, sub))) => {
                            self.served = served;
                            self.sub = sub;
                            if !self.send_all(events).await {
                                return;
                            }
                        }
                        Ok(Err(e)) => {
                            let _ = self.tx.send(Err(e)).await;
                            return;
                        }
                        Err(_) => {
                            let _ = self.tx.send(Err(StoreError::Closed)).await;
                            return;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// False when the receiver is gone.
    async fn send_all(&self, events: Vec<WatchEvent>) -> bool {
        for event in events {
            if self.tx.send(Ok(event)).await.is_err() {
                return false;
            }
        }
        true
    }
}
