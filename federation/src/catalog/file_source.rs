//! [`FileSource`]: keeps a [`CatalogFile`] on a `watch` channel in step with the file on disk.
//!
//! The file is polled (mtime, size, then a SHA-256 of the content) instead of watched with
//! inotify on purpose: polling works on every file system (NFS, overlayfs, ConfigMap volumes that
//! swap a symlink) and with editors that replace the file instead of writing it in place.
//!
//! Fails closed: a malformed file at start is an error (the federation refuses to start); a
//! malformed edit while running is logged at WARN, counted in [`FileSourceStats`], and the last
//! good catalog stays published. A broken catalog is never published. A file that disappears
//! while running also keeps the last good catalog (editors may delete before they write); to
//! withdraw every export, empty the file instead.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ring::digest::{Digest, SHA256, digest};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::file::{CatalogError, CatalogFile, parse_catalog_listing_all};
use super::incremental::CatalogParser;

/// How often the file is checked unless configured otherwise.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// A catalog larger than this is refused: it is almost certainly the wrong file.
pub const MAX_CATALOG_BYTES: u64 = 16 * 1024 * 1024;
/// A file modified this recently is re-read even when its mtime and size look unchanged:
/// some file systems keep mtimes in whole (or even two) seconds.
const MTIME_GRANULARITY: Duration = Duration::from_secs(2);

/// A file rewritten in place (truncate, then write) can be read half-written — even empty, which
/// would parse as "export nothing". Content changed in place is accepted only when a second read
/// this much later sees the same bytes. A file replaced atomically (written elsewhere, then
/// renamed over the path: a new inode) is complete by construction and accepted at once.
const SETTLE: Duration = Duration::from_millis(50);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct FileSourceStats {
    /// New catalogs published after the initial load.
    pub reloads: AtomicU64,
    /// Changes that could not be applied (malformed, unreadable, missing); the last good catalog
    /// was kept each time. Each distinct problem is counted once, not once per poll.
    pub reload_failures: AtomicU64,
}

/// The edit on disk that was refused (malformed, unreadable, deleted), while it is the file's
/// latest state: published when it is refused, cleared when a good edit replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// When it was refused (Unix ms).
    pub at_ms: i64,
    /// The field path of the problem (`exports[2] (shop/cart).ports`,
    /// `policies.canary.split.weights.east`), when the problem is in one field.
    pub field: Option<String>,
    /// The line it starts on, when known (YAML).
    pub line: Option<u64>,
    /// What is wrong with `field`, when there is one.
    pub reason: Option<String>,
    /// The whole error (file, line, field, reason), saying what to fix.
    pub message: String,
}

impl Refusal {
    fn new(problem: &Problem) -> Self {
        let at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Refusal {
            at_ms,
            field: problem.field.clone(),
            line: problem.line,
            reason: problem.reason.clone(),
            message: problem.message.clone(),
        }
    }
}

/// A running catalog file watcher.
#[derive(Debug)]
pub struct FileSource {
    /// The current catalog. The watcher stops when every clone of this receiver is dropped.
    pub catalog: watch::Receiver<Arc<CatalogFile>>,
    /// The refused edit now on disk, if any (see [`Refusal`]).
    pub refusal: watch::Receiver<Option<Arc<Refusal>>>,
    pub stats: Arc<FileSourceStats>,
    pub task: JoinHandle<()>,
}

/// Reads, parses and validates a catalog file as the federation does at start and on every edit
/// (the same size limit, UTF-8 check, reading and checks; it accepts exactly what the federation
/// accepts), listing every problem found: `isthmus catalog check`. A missing file is an error
/// here (the federation would start with an empty catalog).
pub async fn check_file(path: &Path) -> Result<CatalogFile, Vec<CatalogError>> {
    let poller = Poller::new(path.to_owned());
    match poller.read().await.map_err(|e| vec![e])? {
        Read::Content(_, text) => parse_catalog_listing_all(&text)
            .map_err(|errors| errors.into_iter().map(|e| e.with_path(path)).collect()),
        // `Unchanged` needs an earlier read, and this poller has none.
        Read::Missing | Read::Unchanged => Err(vec![CatalogError::Read {
            path: path.to_owned(),
            source: std::io::Error::new(ErrorKind::NotFound, "no such file"),
        }]),
    }
}

impl FileSource {
    /// Loads `path` and starts polling it every `poll`.
    ///
    /// A missing file is an empty catalog (with a warning) that fills in once the file appears;
    /// an unreadable, oversized or malformed file is an error.
    pub async fn start(path: PathBuf, poll: Duration) -> Result<FileSource, CatalogError> {
        let mut poller = Poller::new(path);
        match poller.read().await? {
            Read::Missing => {
                tracing::warn!(
                    path = %poller.path.display(),
                    "catalog file does not exist: nothing is exported or imported until it is \
                     created"
                );
                poller.seen = Some(Seen::Missing);
            }
            Read::Content(seen, text) => {
                poller.current = Arc::new(
                    poller
                        .parser
                        .parse(&text)
                        .map_err(|e| e.with_path(&poller.path))?,
                );
                poller.seen = Some(seen);
                tracing::info!(
                    path = %poller.path.display(),
                    exports = poller.current.exports.len(),
                    imports = poller.current.imports.len(),
                    "catalog file loaded"
                );
            }
            Read::Unchanged => {}
        }
        let (tx, catalog) = watch::channel(poller.current.clone());
        let (refusal_tx, refusal) = watch::channel(None);
        let stats = Arc::new(FileSourceStats::default());
        let task = tokio::spawn(run(
            poller,
            Outputs {
                catalog: tx,
                refusal: refusal_tx,
                stats: stats.clone(),
            },
            poll.max(Duration::from_millis(10)),
        ));
        Ok(FileSource {
            catalog,
            refusal,
            stats,
            task,
        })
    }
}

/// Where the watcher publishes.
struct Outputs {
    catalog: watch::Sender<Arc<CatalogFile>>,
    refusal: watch::Sender<Option<Arc<Refusal>>>,
    stats: Arc<FileSourceStats>,
}

async fn run(mut poller: Poller, out: Outputs, poll: Duration) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = out.catalog.closed() => return,
            _ = interval.tick() => {}
        }
        match poller.poll().await {
            Ok(Some(catalog)) => {
                tracing::info!(
                    path = %poller.path.display(),
                    exports = catalog.exports.len(),
                    imports = catalog.imports.len(),
                    "catalog file changed; new catalog published"
                );
                out.stats.reloads.fetch_add(1, Ordering::Relaxed);
                out.catalog.send_replace(catalog);
            }
            Ok(None) => {}
            Err(problem) => {
                // Logged, counted and published once per distinct problem, not at every poll:
                // when it happens, not at the next good edit.
                if poller.problem.as_ref() != Some(&problem) {
                    tracing::warn!(
                        path = %poller.path.display(),
                        error = %problem.message,
                        "catalog file not reloaded; keeping the last good catalog"
                    );
                    out.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                    out.refusal
                        .send_replace(Some(Arc::new(Refusal::new(&problem))));
                    poller.problem = Some(problem);
                }
            }
        }
        // A good edit (even one back to the catalog in force) replaces the refusal.
        if poller.problem.is_none() {
            out.refusal.send_if_modified(|r| r.take().is_some());
        }
    }
}

/// Why the file on disk is not the catalog in force.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    field: Option<String>,
    line: Option<u64>,
    reason: Option<String>,
    message: String,
}

impl Problem {
    fn of(e: &CatalogError) -> Self {
        Problem {
            field: e.field().map(str::to_owned),
            line: e.line(),
            reason: e.reason().map(str::to_owned),
            message: e.to_string(),
        }
    }

    fn message(message: String) -> Self {
        Problem {
            field: None,
            line: None,
            reason: None,
            message,
        }
    }
}

/// What was last seen on disk.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Missing,
    Content {
        modified: Option<SystemTime>,
        size: u64,
        read_at: SystemTime,
        digest: [u8; 32],
        /// The file's inode: a new one means the file was replaced (rename), not rewritten.
        inode: u64,
    },
}

enum Read {
    Missing,
    /// mtime and size unchanged and old enough to trust.
    Unchanged,
    Content(Seen, String),
}

struct Poller {
    path: PathBuf,
    seen: Option<Seen>,
    current: Arc<CatalogFile>,
    /// The problem last reported, so it is reported once.
    problem: Option<Problem>,
    /// Remembers the last document, so an edit re-parses only the entries it changed.
    parser: CatalogParser,
}

impl Poller {
    fn new(path: PathBuf) -> Self {
        Poller {
            path,
            seen: None,
            current: Arc::default(),
            problem: None,
            parser: CatalogParser::default(),
        }
    }

    /// One poll: `Ok(Some)` = publish this new catalog; `Err` = a problem to report.
    async fn poll(&mut self) -> Result<Option<Arc<CatalogFile>>, Problem> {
        let started = std::time::Instant::now();
        let read = self.read().await.map_err(|e| Problem::of(&e))?;
        let (seen, text) = match read {
            Read::Unchanged => return Ok(None),
            Read::Missing => {
                let was = self.seen.replace(Seen::Missing);
                if matches!(was, Some(Seen::Content { .. })) {
                    return Err(Problem::message(format!(
                        "catalog file {} disappeared; to withdraw every export, leave the file \
                         empty instead of deleting it",
                        self.path.display()
                    )));
                }
                return Ok(None);
            }
            Read::Content(seen, text) => (seen, text),
        };
        let (same_content, same_inode) = match (&self.seen, &seen) {
            (
                Some(Seen::Content {
                    digest: a,
                    inode: i,
                    ..
                }),
                Seen::Content {
                    digest: b,
                    inode: j,
                    ..
                },
            ) => (a == b, i == j),
            _ => (false, false),
        };
        if !same_content && same_inode {
            tokio::time::sleep(SETTLE).await;
            let again = self.read().await.map_err(|e| Problem::of(&e))?;
            let settled = match (&again, &seen) {
                (
                    Read::Content(Seen::Content { digest: a, .. }, _),
                    Seen::Content { digest: b, .. },
                ) => a == b,
                _ => false,
            };
            if !settled {
                // Still being written: leave `seen` as it was, so the next poll reads it again.
                return Ok(None);
            }
        }
        self.seen = Some(seen);
        if same_content && self.problem.is_none() {
            return Ok(None);
        }
        let read_us = started.elapsed().as_micros() as u64;
        let parsed = self
            .parser
            .parse(&text)
            .map_err(|e| Problem::of(&e.with_path(&self.path)))?;
        self.problem = None;
        if parsed == *self.current {
            return Ok(None);
        }
        tracing::debug!(
            read_us,
            total_us = started.elapsed().as_micros() as u64,
            "catalog file read and parsed"
        );
        self.current = Arc::new(parsed);
        Ok(Some(self.current.clone()))
    }

    async fn read(&self) -> Result<Read, CatalogError> {
        let read_err = |source| CatalogError::Read {
            path: self.path.clone(),
            source,
        };
        let meta = match tokio::fs::metadata(&self.path).await {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Read::Missing),
            Err(e) => return Err(read_err(e)),
        };
        let size = meta.len();
        if size > MAX_CATALOG_BYTES {
            return Err(CatalogError::TooLarge {
                path: self.path.clone(),
                size,
                limit: MAX_CATALOG_BYTES,
            });
        }
        let modified = meta.modified().ok();
        if let Some(Seen::Content {
            modified: Some(m0),
            size: s0,
            read_at,
            ..
        }) = &self.seen
            && Some(*m0) == modified
            && *s0 == size
            && read_at
                .duration_since(*m0)
                .is_ok_and(|age| age > MTIME_GRANULARITY)
        {
            return Ok(Read::Unchanged);
        }
        let read_at = SystemTime::now();
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Read::Missing),
            Err(e) => return Err(read_err(e)),
        };
        if bytes.len() as u64 > MAX_CATALOG_BYTES {
            return Err(CatalogError::TooLarge {
                path: self.path.clone(),
                size: bytes.len() as u64,
                limit: MAX_CATALOG_BYTES,
            });
        }
        let digest = sha256(&bytes);
        let text = String::from_utf8(bytes).map_err(|_| CatalogError::Syntax {
            path: Some(self.path.clone()),
            detail: "the file is not UTF-8 text".to_owned(),
        })?;
        Ok(Read::Content(
            Seen::Content {
                modified,
                size,
                read_at,
                digest,
                inode: std::os::unix::fs::MetadataExt::ino(&meta),
            },
            text,
        ))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d: Digest = digest(&SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
#[path = "file_source_tests.rs"]
mod tests;
