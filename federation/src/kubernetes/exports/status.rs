//! Writes the MCS conditions onto each ServiceExport's status subresource (an update carrying
//! the object's `resourceVersion`: a stale copy gets 409 and is re-read from the watch), only
//! when they differ from what the object already says.
//!
//! Runs on every change of the watched objects, of the export set, of the conflicts with the
//! catalog file and of what peers export, batched like the source. A failed write (403 from a
//! revoked verb, the API server down) is logged once per distinct problem, counted in
//! `isthmus_federation_kubernetes_status_writes_total{result="error"}`, and retried with backoff.
//!
//! Must not: change anything but `status.conditions` of ServiceExports.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

use super::build::Verdict;
use super::compose::SourceConflicts;
use super::conditions::{apply_conditions, wanted_conditions};
use super::conflict::{ClustersetExports, clusterset_conflict};
use super::metrics::ExportMetrics;
use super::set::{KubeExportSet, ObjectKey, key_of};
use super::source::QUIET;
use super::watch::{RETRY_MAX, RETRY_MIN, Watched};
use crate::kubernetes::mcs::{ServiceExport, ServiceExportStatus};
use crate::model::{ClusterName, ServiceKey};

/// The conditions last written over each object's resourceVersion.
type Written = HashMap<ObjectKey, (String, Vec<Condition>)>;

/// What the writer follows.
pub struct StatusInputs {
    pub client: kube::Client,
    pub watched: Watched,
    pub exports: watch::Receiver<Arc<KubeExportSet>>,
    pub source_conflicts: watch::Receiver<Arc<SourceConflicts>>,
    pub clusterset: watch::Receiver<Arc<ClustersetExports>>,
    pub me: ClusterName,
    pub metrics: ExportMetrics,
}

/// Runs until one of its inputs closes.
pub async fn run_status_writer(mut i: StatusInputs) {
    // What we last wrote over each object's resourceVersion: skipped until the watch brings
    // the new version (else a pass in between would write the same thing again, and get 409).
    let mut written = Written::new();
    let mut problem: Option<String> = None;
    let mut backoff = RETRY_MIN;
    loop {
        let failed = pass(&i, &mut written, &mut problem).await;
        let retry_at = if failed {
            let at = Instant::now() + backoff;
            backoff = (backoff * 2).min(RETRY_MAX);
            Some(at)
        } else {
            backoff = RETRY_MIN;
            None
        };
        tokio::select! {
            r = i.watched.changed.changed() => if r.is_err() { return },
            r = i.exports.changed() => if r.is_err() { return },
            r = i.source_conflicts.changed() => if r.is_err() { return },
            r = i.clusterset.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
        }
        tokio::time::sleep(QUIET).await;
    }
}

/// One pass over every ServiceExport; returns whether a write failed (retry later).
async fn pass(i: &StatusInputs, written: &mut Written, problem: &mut Option<String>) -> bool {
    let set = i.exports.borrow().clone();
    if !set.synced {
        return false;
    }
    let conflicts = i.source_conflicts.borrow().clone();
    let clusterset = i.clusterset.borrow().clone();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut failed = false;
    let objects = i.watched.export_objects();
    written.retain(|k, _| objects.iter().any(|o| &key_of(&o.metadata) == k));
    for se in objects {
        let key = key_of(&se.metadata);
        let Some(verdict) = set.verdicts.get(&key) else {
            continue; // appeared after the last rebuild: the next one covers it
        };
        let text = format!("{}/{}", key.0, key.1);
        let peer = match verdict {
            Verdict::Exported { spec, .. } => {
                let skey = ServiceKey::new(spec.namespace.clone(), spec.name.clone());
                clusterset
                    .get(&skey)
                    .and_then(|shapes| clusterset_conflict(&i.me, &skey, shapes))
            }
            Verdict::Refused { .. } => None,
        };
        let wanted = wanted_conditions(
            &text,
            verdict,
            conflicts.get(&key).map(String::as_str),
            peer.as_ref(),
        );
        let existing = se
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        let Some(conditions) = apply_conditions(existing, &wanted, se.metadata.generation, &now)
        else {
            continue;
        };
        let rv = se.metadata.resource_version.clone().unwrap_or_default();
        if let Some((at, what)) = written.get(&key)
            && *at == rv
            && apply_conditions(what, &wanted, se.metadata.generation, &now).is_none()
        {
            continue;
        }
        let mut obj = (*se).clone();
        obj.metadata.managed_fields = None;
        obj.status = Some(ServiceExportStatus {
            conditions: conditions.clone(),
        });
        let api: Api<ServiceExport> = Api::namespaced(i.client.clone(), &key.0);
        match api
            .replace_status(&key.1, &PostParams::default(), &obj)
            .await
        {
            Ok(_) => {
                i.metrics.status_write("ok");
                written.insert(key, (rv, conditions));
                if let Some(p) = problem.take() {
                    tracing::info!(was = %p, "kubernetes: ServiceExport status writes work again");
                }
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // A newer version is on its way through the watch; the next pass uses it.
                i.metrics.status_write("conflict");
                failed = true;
            }
            Err(e) => {
                i.metrics.status_write("error");
                failed = true;
                let text = match &e {
                    kube::Error::Api(s) if s.code == 403 => format!(
                        "update serviceexports/status is forbidden (403: {}); grant the \
                         federation's service account the verb update on serviceexports/status \
                         (see docs/kubernetes.md, RBAC)",
                        s.message
                    ),
                    other => format!("update serviceexports/status failed: {other}"),
                };
                if problem.as_deref() != Some(text.as_str()) {
                    tracing::warn!(service = %text_key(&key), "kubernetes: {text}; retrying");
                    *problem = Some(text);
                }
            }
        }
    }
    failed
}

fn text_key(k: &ObjectKey) -> String {
    format!("{}/{}", k.0, k.1)
}
