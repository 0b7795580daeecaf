//! File source tests: a real file in a temp dir, edited the ways operators and tools do.

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

async fn wait_for(rx: &mut watch::Receiver<Arc<CatalogFile>>, want: &[&str]) -> Arc<CatalogFile> {
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
    // The refusal is published when it happens, and stays while the file is broken.
    let refusal = source.refusal.borrow().clone().expect("refusal published");
    assert!(refusal.message.contains("nmae"), "{refusal:?}");
    assert!(refusal.at_ms > 0);

    // A second, different problem replaces it (with its field).
    replace(
        &path,
        &format!("{}    weight: 4000000000\n", catalog_with(&["cart"])),
    );
    let started = Instant::now();
    while source.stats.reload_failures.load(Ordering::Relaxed) < 2 {
        assert!(
            started.elapsed() < DEADLINE,
            "second broken edit not noticed"
        );
        tokio::time::sleep(POLL).await;
    }
    let refusal = source.refusal.borrow().clone().expect("refusal published");
    assert_eq!(
        refusal.field.as_deref(),
        Some("exports[0] (shop/cart).weight"),
        "{refusal:?}"
    );
    assert_eq!(refusal.line, Some(2), "{refusal:?}");

    // Fixed again: published, and the refusal is gone.
    replace(&path, &catalog_with(&["stock"]));
    wait_for(&mut source.catalog, &["stock"]).await;
    tokio::time::timeout(DEADLINE, source.refusal.wait_for(Option::is_none))
        .await
        .expect("the refusal is cleared by a good edit")
        .expect("alive");

    // Deleted: the last good catalog stays, the problem is counted.
    std::fs::remove_file(&path).expect("remove");
    let started = Instant::now();
    while source.stats.reload_failures.load(Ordering::Relaxed) < 3 {
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

/// A good edit back to the catalog in force (nothing new to publish) still clears the
/// refusal.
#[tokio::test]
async fn reverting_a_broken_edit_clears_the_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("catalog.yaml");
    std::fs::write(&path, catalog_with(&["cart"])).expect("write");
    let mut source = FileSource::start(path.clone(), POLL).await.expect("start");
    replace(&path, "exports: [\n");
    tokio::time::timeout(DEADLINE, source.refusal.wait_for(Option::is_some))
        .await
        .expect("refused")
        .expect("alive");
    replace(&path, &catalog_with(&["cart"]));
    tokio::time::timeout(DEADLINE, source.refusal.wait_for(Option::is_none))
        .await
        .expect("cleared")
        .expect("alive");
    assert_eq!(source.stats.reloads.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn check_file_is_the_federations_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("catalog.yaml");
    std::fs::write(&path, catalog_with(&["cart", "stock"])).expect("write");
    assert_eq!(check_file(&path).await.expect("good").exports.len(), 2);
    std::fs::write(
        &path,
        format!("{}    weight: 4000000000\n", catalog_with(&["cart"])),
    )
    .expect("write");
    let errors = check_file(&path).await.expect_err("bad");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].field(), Some("exports[0] (shop/cart).weight"));
    assert!(!errors[0].is_unreadable());
    assert!(errors[0].to_string().contains(&path.display().to_string()));
    let errors = check_file(&dir.path().join("none.yaml"))
        .await
        .expect_err("missing");
    assert!(errors[0].is_unreadable(), "{errors:?}");
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
