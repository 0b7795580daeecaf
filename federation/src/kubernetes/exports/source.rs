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

/// A rebuild waits for this long without a change...
pub const QUIET: Duration = Duration::from_millis(150);
/// ...but no longer than this after the first change it carries.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

pub struct KubeExportSource {
    /// The current set; unsynced (and empty) until every watch has listed its objects.
    pub exports: watch::Receiver<Arc<KubeExportSet>>,
    pub watched: Watched,
}

impl KubeExportSource {
    /// Starts the watches in `namespaces` (all when empty) and the rebuild loop.
    pub fn start(client: &kube::Client, namespaces: &[String], metrics: ExportMetrics) -> Self {
        let watched = start_watches(client, namespaces, metrics.clone());
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
            r = w.changed.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
        }
        let first = Instant::now();
        loop {
            let deadline = (Instant::now() + QUIET).min(first + MAX_DELAY);
            tokio::select! {
                r = w.changed.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => break,
            }
            if Instant::now() >= first + MAX_DELAY {
                break;
            }
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
