//! Applying the local catalog sources (the catalog file, the VM registry) to the state, until it
//! succeeds: an edit is admitted or refused whole (see [`super::admission`]); an edit the store
//! could not take is retried with capped exponential backoff, without waiting for another edit
//! (a newer edit arriving meanwhile is simply folded in). The pending apply shows in
//! `isthmus status` (`catalog_apply`) and in `isthmus_federation_catalog_apply_pending`.
//!
//! Must not: decide what an edit means (the state does) or read the sources itself.

use crate::telemetry::KeyValue;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::catalog::{CatalogFile, FileSourceStats, Refusal, RegisteredEndpoints};
use crate::model::ServiceKey;
use crate::node::state::StateError;
use crate::node::{Node, now_ms};

/// First wait before retrying a failed apply; doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(200);
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// What `isthmus status` shows about applying the catalog.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyStatus {
    /// Unix ms since which a change waits to be applied (the store failed); `None` when applied.
    pub pending_since_ms: Option<i64>,
    /// Failed attempts at the pending change.
    pub attempts: u64,
    pub last_error: Option<String>,
    /// The edit on disk, when it was refused whole (the catalog applied before it stays), and
    /// since when.
    pub last_refused: Option<String>,
    pub last_refused_at_ms: Option<i64>,
    /// The catalog file edit on disk that could not be read (malformed, unreadable, deleted),
    /// until a good edit replaces it; `isthmus status` shows it as `catalog_file.last_refused`.
    #[serde(skip)]
    pub file_refused: Option<Arc<Refusal>>,
}

/// The catalog file source, for [`follow_sources`]: its counters and its refusals.
pub struct FileWatch {
    pub stats: Arc<FileSourceStats>,
    pub refusal: watch::Receiver<Option<Arc<Refusal>>>,
}

/// Routes still to recompute after a failed attempt (the local part of a change may be stored
/// and sent while its routes are not).
#[derive(Debug, Default)]
struct Unrouted {
    all: bool,
    keys: BTreeSet<ServiceKey>,
}

/// Follows the catalog file and registry into the local catalog; retries failed applies.
pub async fn follow_sources(
    node: Arc<Node>,
    mut file: watch::Receiver<Arc<CatalogFile>>,
    mut registered: watch::Receiver<Arc<RegisteredEndpoints>>,
    source: Option<FileWatch>,
) {
    let (stats, mut refusals) = match source {
        Some(FileWatch { stats, refusal }) => (Some(stats), refusal),
        // No file: a channel that never changes.
        None => (None, watch::channel(None).1),
    };
    let mut stop = node.shutdown.clone();
    let mut unrouted = Unrouted::default();
    let mut backoff = RETRY_MIN;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut refused: Option<Arc<CatalogFile>> = None;
    let mut refused_edits: u64 = 0;
    loop {
        let wake = retry_at.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            r = file.changed() => if r.is_err() { return },
            r = registered.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(wake), if retry_at.is_some() => {}
            _ = stop.changed() => return,
            // A malformed edit publishes no catalog: it is shown and counted when it happens.
            r = refusals.changed() => {
                if r.is_err() {
                    return;
                }
                let refused = refusals.borrow_and_update().clone();
                node.apply_status().file_refused = refused;
                count_reload_failures(&node, stats.as_deref(), refused_edits);
                continue;
            }
        }

        let next = file.borrow_and_update().clone();
        let reg = registered.borrow_and_update().clone();
        match apply_sources(&node, next.clone(), reg, &mut unrouted).await {
            Ok(refusal) => {
                if retry_at.take().is_some() {
                    tracing::info!("the pending catalog change is applied");
                }
                backoff = RETRY_MIN;
                node.metrics.catalog_apply_pending.set(0);
                let mut status = node.apply_status();
                status.pending_since_ms = None;
                status.attempts = 0;
                status.last_error = None;
                match refusal {
                    // The file on disk is applied: an earlier refusal is behind us.
                    None => {
                        status.last_refused = None;
                        status.last_refused_at_ms = None;
                        refused = None;
                    }
                    // Once per refused edit, even when a retry meets it again.
                    Some(e) if !refused.as_ref().is_some_and(|r| Arc::ptr_eq(r, &next)) => {
                        note_refusal(&node, &mut status, &e);
                        refused = Some(next);
                        refused_edits += 1;
                    }
                    Some(_) => {}
                }
            }
            Err(e) => {
                retry_at = Some(tokio::time::Instant::now() + backoff);
                note_failure(&node, &e, backoff);
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
        count_reload_failures(&node, stats.as_deref(), refused_edits);
    }
}

/// Malformed edits (counted by the file source) and edits refused for what they need, alike.
fn count_reload_failures(node: &Node, stats: Option<&FileSourceStats>, refused_edits: u64) {
    let malformed = stats.map_or(0, |s| s.reload_failures.load(Ordering::Relaxed));
    node.metrics
        .catalog_reload_failures
        .set(i64::try_from(malformed.saturating_add(refused_edits)).unwrap_or(i64::MAX));
}

/// Logs, counts and shows an edit refused whole.
fn note_refusal(node: &Node, status: &mut ApplyStatus, e: &StateError) {
    tracing::warn!(error = %e, "catalog edit refused whole; the catalog applied before it stays");
    let reason = match e {
        StateError::OverQuota { .. } => "peer_vip_quota",
        _ => "vips_exhausted",
    };
    node.metrics
        .catalog_edits_refused
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: reason.into(),
        })
        .inc();
    status.last_refused = Some(e.to_string());
    status.last_refused_at_ms = Some(now_ms());
}

/// Logs, counts and shows a failed attempt, retried after `retry_in`.
fn note_failure(node: &Node, e: &StateError, retry_in: Duration) {
    node.metrics.catalog_apply_failures.inc();
    node.metrics.catalog_apply_pending.set(1);
    let mut status = node.apply_status();
    status.pending_since_ms.get_or_insert_with(now_ms);
    status.attempts += 1;
    status.last_error = Some(e.to_string());
    tracing::error!(error = %e, attempts = status.attempts, retry_in_ms = retry_in.as_millis() as u64,
        "applying a catalog change failed; retrying");
}

/// One attempt: admits the edit (or keeps the catalog applied before it), stores and sends the
/// local change, recomputes the routes it and earlier failed attempts touched, publishes.
/// `Ok(Some(refusal))`: the file edit was refused whole, the rest (registry changes, earlier
/// pending work) applied.
async fn apply_sources(
    node: &Node,
    file: Arc<CatalogFile>,
    registered: Arc<RegisteredEndpoints>,
    unrouted: &mut Unrouted,
) -> Result<Option<StateError>, StateError> {
    let started = std::time::Instant::now();
    let mut span = node.tracing.root_span("catalog.apply", Vec::new());
    let applied = apply_traced(node, file, registered, unrouted, started).await;
    if let Some(span) = span.as_mut() {
        match &applied {
            Ok(None) => {}
            Ok(Some(refusal)) => {
                span.set(KeyValue::new(
                    "isthmus.catalog.refused",
                    refusal.to_string(),
                ));
            }
            Err(e) => span.fail(e.to_string()),
        }
        let version = node.local_version.borrow().to_owned();
        span.set(KeyValue::new("isthmus.catalog.version", version as i64));
    }
    applied
}

async fn apply_traced(
    node: &Node,
    file: Arc<CatalogFile>,
    registered: Arc<RegisteredEndpoints>,
    unrouted: &mut Unrouted,
    started: std::time::Instant,
) -> Result<Option<StateError>, StateError> {
    let refusal = {
        let mut state = node.state.lock().await;
        let mut refusal = None;
        if !Arc::ptr_eq(&file, &state.file) {
            match state.admit_file(&file, &registered, now_ms()) {
                Ok(()) => {
                    if file.imports != state.file.imports || file.policies != state.file.policies {
                        // Import rules decide which peers' services are installed, and policies
                        // travel in the view: every route is recomputed and the view published.
                        unrouted.all = true;
                    }
                    state.file = file;
                }
                Err(e) if e.is_refusal() => refusal = Some(e),
                Err(e) => return Err(e),
            }
        }
        state.registered = registered;
        let changed = state.refresh_local(&node.store, now_ms()).await?;
        if !changed.is_empty() {
            // Peers are told first: the sessions send the change while routes are recomputed.
            node.local_version.send_replace(state.local.version);
            node.metrics
                .exported_services
                .set(state.local.exports.len() as i64);
            unrouted.keys.extend(changed);
        }
        refusal
    };
    let refreshed = started.elapsed();
    if unrouted.all || !unrouted.keys.is_empty() {
        let mut state = node.state.lock().await;
        let stale = node.stale_peers();
        let keys = (!unrouted.all).then(|| unrouted.keys.clone());
        state.recompute(keys, &stale, now_ms()).await?;
        *unrouted = Unrouted::default();
        state.readdress(&stale, now_ms()).await?;
        node.publish(&mut state);
        tracing::debug!(
            version = state.local.version,
            refresh_us = refreshed.as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "local catalog change applied"
        );
    }
    Ok(refusal)
}

impl Node {
    /// The catalog apply status (a short lock; never held across `.await`).
    pub fn apply_status(&self) -> std::sync::MutexGuard<'_, ApplyStatus> {
        self.apply.lock().unwrap_or_else(|p| p.into_inner())
    }
}
