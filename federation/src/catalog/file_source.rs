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
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ring::digest::{Digest, SHA256, digest};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::file::{CatalogError, CatalogFile};
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

/// A running catalog file watcher.
#[derive(Debug)]
pub struct FileSource {
    /// The current catalog. The watcher stops when every clone of this receiver is dropped.
    pub catalog: watch::Receiver<Arc<CatalogFile>>,
    pub stats: Arc<FileSourceStats>,
    pub task: JoinHandle<()>,
}

impl FileSource {
    /// Loads `path` and starts polling it every `poll`.
    ///
    /// A missing file is an empty catalog (with a warning) that fills in once the file appears;
    /// an unreadable, oversized or malformed file is an error.
    pub async fn start(path: PathBuf, poll: Duration) -> Result<FileSource, CatalogError> {
        let mut poller = Poller {
            path,
            seen: None,
            current: Arc::default(),
            problem: None,
            parser: CatalogParser::default(),
        };
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
        let stats = Arc::new(FileSourceStats::default());
        let task = tokio::spawn(run(
            poller,
            tx,
            poll.max(Duration::from_millis(10)),
            stats.clone(),
        ));
        Ok(FileSource {
            catalog,
            stats,
            task,
        })
    }
}

async fn run(
    mut poller: Poller,
    tx: watch::Sender<Arc<CatalogFile>>,
    poll: Duration,
    stats: Arc<FileSourceStats>,
) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
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
                stats.reloads.fetch_add(1, Ordering::Relaxed);
                tx.send_replace(catalog);
            }
            Ok(None) => {}
            Err(problem) => {
                // Logged and counted once per distinct problem, not at every poll.
                if poller.problem.as_ref() != Some(&problem) {
                    tracing::warn!(
                        path = %poller.path.display(),
                        error = %problem,
                        "catalog file not reloaded; keeping the last good catalog"
                    );
                    stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                    poller.problem = Some(problem);
                }
            }
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
    problem: Option<String>,
    /// Remembers the last document, so an edit re-parses only the entries it changed.
    parser: CatalogParser,
}

impl Poller {
    /// One poll: `Ok(Some)` = publish this new catalog; `Err` = a problem to report.
    async fn poll(&mut self) -> Result<Option<Arc<CatalogFile>>, String> {
        let started = std::time::Instant::now();
        let read = self.read().await.map_err(|e| e.to_string())?;
        let (seen, text) = match read {
            Read::Unchanged => return Ok(None),
            Read::Missing => {
                let was = self.seen.replace(Seen::Missing);
                if matches!(was, Some(Seen::Content { .. })) {
                    return Err(format!(
                        "catalog file {} disappeared; to withdraw every export, leave the file \
                         empty instead of deleting it",
                        self.path.display()
                    ));
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
            let again = self.read().await.map_err(|e| e.to_string())?;
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
            .map_err(|e| e.with_path(&self.path).to_string())?;
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
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Instant;

    const POLL: Duration = Duration::from_millis(50);
    const DEADLINE: Duration = Duration::from_secs(5);

    fn catalog_with(names: &[&str]) -> String {
        let mut text = String::from("exports:\n");
        for name in names {
            text.push_str(&format!(
                "  - namespace: shop\n    name: {name}\n    ports: [{{port: 80, protocol: http}}]\n"
            ));
        }
        text
    }

    fn names(catalog: &CatalogFile) -> Vec<String> {
        catalog.exports.iter().map(|e| e.name.to_string()).collect()
    }

    /// Writes like an editor that replaces the file: write a temp file, rename over.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write temp");
        std::fs::rename(&tmp, path).expect("rename");
    }

    async fn wait_for(
        rx: &mut watch::Receiver<Arc<CatalogFile>>,
        want: &[&str],
    ) -> Arc<CatalogFile> {
        let started = Instant::now();
        let got = tokio::time::timeout(DEADLINE, rx.wait_for(|c| names(c) == want))
            .await
            .unwrap_or_else(|_| panic!("catalog {want:?} not published within {DEADLINE:?}"))
            .expect("watcher alive")
            .clone();
        assert!(started.elapsed() < DEADLINE);
        got
    }

    #[tokio::test]
    async fn a_half_written_file_is_never_published() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.yaml");
        std::fs::write(&path, catalog_with(&["a0", "b", "c"])).expect("write");
        let source = FileSource::start(path.clone(), Duration::from_millis(5))
            .await
            .expect("start");
        let mut rx = source.catalog.clone();
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let collected = sizes.clone();
        let collector = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let n = rx.borrow_and_update().exports.len();
                collected.lock().expect("lock").push(n);
            }
        });
        // Rewrite in place with a visible gap: truncate, pause, write. A poller that trusts
        // one read publishes the empty file as "export nothing".
        for i in 1..=8 {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&path)
                .expect("open");
            tokio::time::sleep(Duration::from_millis(20)).await;
            f.write_all(catalog_with(&[&format!("a{i}"), "b", "c"]).as_bytes())
                .expect("write");
            drop(f);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let mut rx = source.catalog.clone();
        let last = tokio::time::timeout(
            DEADLINE,
            rx.wait_for(|c| names(c).contains(&"a8".to_string())),
        )
        .await
        .expect("the last edit is published")
        .expect("watcher alive")
        .clone();
        assert_eq!(last.exports.len(), 3);
        collector.abort();
        let sizes = sizes.lock().expect("lock").clone();
        assert!(!sizes.is_empty(), "no edit was published at all");
        assert!(
            sizes.iter().all(|n| *n == 3),
            "a half-written catalog was published: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn edits_publish_broken_edits_keep_the_last_good_catalog() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.yaml");
        std::fs::write(&path, catalog_with(&["cart"])).expect("write");
        let mut source = FileSource::start(path.clone(), POLL).await.expect("start");
        assert_eq!(names(&source.catalog.borrow()), ["cart"]);

        // An in-place edit of the same size within the same second is still seen (hash).
        std::fs::write(&path, catalog_with(&["cars"])).expect("write");
        wait_for(&mut source.catalog, &["cars"]).await;

        replace(&path, &catalog_with(&["cart", "stock"]));
        wait_for(&mut source.catalog, &["cart", "stock"]).await;
        let reloads = source.stats.reloads.load(Ordering::Relaxed);
        assert_eq!(reloads, 2);

        // Broken edit: counted once, last good catalog kept.
        replace(&path, "exports:\n  - namespace: shop\n    nmae: cart\n");
        let started = Instant::now();
        while source.stats.reload_failures.load(Ordering::Relaxed) == 0 {
            assert!(started.elapsed() < DEADLINE, "broken edit not noticed");
            tokio::time::sleep(POLL).await;
        }
        tokio::time::sleep(POLL * 5).await;
        assert_eq!(
            source.stats.reload_failures.load(Ordering::Relaxed),
            1,
            "counted once"
        );
        assert_eq!(names(&source.catalog.borrow()), ["cart", "stock"]);
        assert!(
            !source.catalog.has_changed().expect("alive"),
            "nothing published"
        );

        // Fixed again: published.
        replace(&path, &catalog_with(&["stock"]));
        wait_for(&mut source.catalog, &["stock"]).await;

        // Deleted: the last good catalog stays, the problem is counted.
        std::fs::remove_file(&path).expect("remove");
        let started = Instant::now();
        while source.stats.reload_failures.load(Ordering::Relaxed) < 2 {
            assert!(started.elapsed() < DEADLINE, "deletion not noticed");
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(names(&source.catalog.borrow()), ["stock"]);

        // Stops when the receiver is dropped.
        let task = source.task;
        drop(source.catalog);
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("stops")
            .expect("no panic");
    }

    #[tokio::test]
    async fn missing_file_is_empty_until_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.yaml");
        let mut source = FileSource::start(path.clone(), POLL).await.expect("start");
        assert_eq!(
            *source.catalog.borrow_and_update().clone(),
            CatalogFile::default()
        );
        replace(&path, &catalog_with(&["cart"]));
        wait_for(&mut source.catalog, &["cart"]).await;
        assert_eq!(source.stats.reload_failures.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn malformed_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.yaml");
        std::fs::write(&path, "exports: [\n").expect("write");
        let err = FileSource::start(path.clone(), POLL)
            .await
            .expect_err("must refuse");
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("line 1"),
            "{msg}"
        );

        std::fs::write(&path, [0xff, 0xfe, b'\n']).expect("write");
        let err = FileSource::start(path.clone(), POLL)
            .await
            .expect_err("not utf-8");
        assert!(err.to_string().contains("UTF-8"), "{err}");

        let err = FileSource::start(dir.path().to_owned(), POLL)
            .await
            .expect_err("a directory");
        assert!(matches!(err, CatalogError::Read { .. }), "{err}");
    }
}
