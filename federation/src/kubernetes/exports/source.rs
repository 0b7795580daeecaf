//! [`KubeExportSource`]: keeps a [`KubeExportSet`] on a `watch` channel in step with the
//! watched objects, the way the file source keeps the catalog file.
//!
//! Changes are batched: a rebuild waits until the objects have been quiet for [`QUIET`], but
//! never more than [`MAX_DELAY`] after the first change it carries, so a rolling restart of
//! twenty pods (dozens of EndpointSlice edits) becomes a few updates to peers, and a steady
//! stream of edits still publishes at least once a second.
//!
//! Fails closed: nothing is published before every watch has listed its objects once (the
//! channel holds an empty, unsynced set until then), so a federation that starts while the API
//! server is down exports nothing from Kubernetes instead of withdrawing everything and
//! re-adding it; after that, a failing watch keeps its store and the last set stays.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::build::Verdict;
use super::metrics::ExportMetrics;
use super::set::{KubeExportSet, build_set};
use super::watch::{Watched, start as start_watches};
use crate::kubernetes::report::KubeReport;

/// A rebuild waits for this long without a change...
pub const QUIET: Duration = Duration::from_millis(200);
/// ...but no longer than this after the first change it carries.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

pub struct KubeExportSource {
    /// The current set; unsynced (and empty) until every watch has listed its objects.
    pub exports: watch::Receiver<Arc<KubeExportSet>>,
    pub watched: Watched,
}

impl KubeExportSource {
    /// Starts the watches in `namespaces` (all when empty) and the rebuild loop.
    pub fn start(
        client: &kube::Client,
        namespaces: &[String],
        metrics: ExportMetrics,
        report: KubeReport,
    ) -> Self {
        let watched = start_watches(client, namespaces, metrics.clone(), report);
        let (tx, exports) = watch::channel(Arc::new(KubeExportSet::default()));
        tokio::spawn(run(watched.clone(), tx, metrics));
        KubeExportSource { exports, watched }
    }
}

async fn run(mut w: Watched, tx: watch::Sender<Arc<KubeExportSet>>, metrics: ExportMetrics) {
    tokio::select! {
        r = w.synced.wait_for(|s| *s) => if r.is_err() { return },
        _ = tx.closed() => return,
    }
    loop {
        w.changed.borrow_and_update();
        rebuild(&w, &tx, &metrics);
        tokio::select! {
            batch = next_batch(&mut w.changed) => if batch.is_none() { return },
            _ = tx.closed() => return,
        }
    }
}

/// Waits for the next batch of changes: the first one, then until [`QUIET`] passes without
/// another or [`MAX_DELAY`] has passed since the first. `None` when the channel closed.
pub async fn next_batch(changed: &mut watch::Receiver<()>) -> Option<()> {
    changed.changed().await.ok()?;
    let first = Instant::now();
    loop {
        let deadline = (Instant::now() + QUIET).min(first + MAX_DELAY);
        tokio::select! {
            r = changed.changed() => r.ok()?,
            _ = tokio::time::sleep_until(deadline) => return Some(()),
        }
        if Instant::now() >= first + MAX_DELAY {
            return Some(());
        }
    }
}

fn rebuild(w: &Watched, tx: &watch::Sender<Arc<KubeExportSet>>, metrics: &ExportMetrics) {
    let previous = tx.borrow().clone();
    let next = build_set(
        &w.export_objects(),
        &w.service_objects(),
        &w.slice_objects(),
        &previous,
    );
    metrics.rebuilds.inc();
    if next.same_as(&previous) {
        return;
    }
    let refused = next
        .verdicts
        .values()
        .filter(|v| matches!(v, Verdict::Refused { .. }))
        .count();
    metrics
        .exported
        .set(i64::try_from(next.exports.len()).unwrap_or(i64::MAX));
    metrics
        .refused
        .set(i64::try_from(refused).unwrap_or(i64::MAX));
    for (key, v) in &next.verdicts {
        if let Verdict::Refused { reason, message } = v
            && previous.verdicts.get(key) != Some(v)
        {
            tracing::warn!(service = %format!("{}/{}", key.0, key.1), %reason, %message,
                "ServiceExport not exported");
        }
    }
    tracing::debug!(
        exports = next.exports.len(),
        refused,
        "kubernetes export set published"
    );
    metrics.publishes.inc();
    tx.send_replace(Arc::new(next));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches ended by `next_batch` while `every` apart changes arrive for `for_ms`.
    async fn batches(every: Duration, for_ms: u64) -> Vec<u64> {
        let (tx, mut rx) = watch::channel(());
        let start = Instant::now();
        let sender = tokio::spawn(async move {
            while start.elapsed() < Duration::from_millis(for_ms) {
                tx.send_replace(());
                tokio::time::sleep(every).await;
            }
        });
        let mut ends = Vec::new();
        while next_batch(&mut rx).await.is_some() {
            ends.push(start.elapsed().as_millis() as u64);
        }
        sender.await.expect("sender");
        ends
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_is_published_once_a_second() {
        // 60 changes 50 ms apart: one batch a second, then the tail.
        let ends = batches(Duration::from_millis(50), 3_000).await;
        assert!((3..=4).contains(&ends.len()), "{ends:?}");
        assert!(ends[0] >= 1_000 && ends[0] < 1_100, "{ends:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn sparse_changes_go_out_after_the_quiet_window() {
        let ends = batches(Duration::from_millis(500), 1_900).await;
        assert_eq!(ends.len(), 4, "{ends:?}");
        let quiet = QUIET.as_millis() as u64;
        assert!(
            ends.iter()
                .all(|e| (e % 500) >= quiet && (e % 500) < quiet + 50),
            "{ends:?}"
        );
    }
}
