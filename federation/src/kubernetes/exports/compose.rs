//! Merging the Kubernetes exports into the catalog file's, into the one export set the
//! federation applies (imports and policies come from the file alone).
//!
//! A service both sources export is merged when their ports agree (the file's settings, both
//! sources' endpoints) and refused on the Kubernetes side when they do not: the catalog file
//! wins, because an operator wrote it for this cluster on purpose, and the ServiceExport says
//! so in its conditions. Deterministic, whatever order the changes arrive in.
//!
//! Must not: read the sources itself or apply the result (the node does).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::watch;

use super::metrics::ExportMetrics;
use super::set::{KubeExportSet, ObjectKey};
use crate::catalog::{CatalogFile, ExportSpec};
use crate::model::ServicePort;

/// ServiceExports refused because the catalog file exports the same service with other ports:
/// the message for their conditions, by namespace and name.
pub type SourceConflicts = BTreeMap<ObjectKey, String>;

pub fn ports_text(ports: &[ServicePort]) -> String {
    let list: Vec<String> = ports
        .iter()
        .map(|p| match &p.name {
            Some(n) => format!("{n}:{}/{}", p.port, p.protocol),
            None => format!("{}/{}", p.port, p.protocol),
        })
        .collect();
    format!("[{}]", list.join(", "))
}

/// Same ports (names, numbers, protocols; in any order) and the same headless flag: the rule
/// peers apply between clusters, applied between this cluster's sources.
pub fn compatible(a: &ExportSpec, b: &ExportSpec) -> bool {
    let mut x = a.ports.clone();
    let mut y = b.ports.clone();
    x.sort();
    y.sort();
    x == y && a.headless == b.headless
}

/// The file's exports and the Kubernetes ones, merged; and the ServiceExports refused.
pub fn compose(file: &CatalogFile, kube: &KubeExportSet) -> (CatalogFile, SourceConflicts) {
    let mut conflicts = SourceConflicts::new();
    if kube.exports.is_empty() {
        return (file.clone(), conflicts);
    }
    let by_key: HashMap<(&str, &str), &Arc<ExportSpec>> = kube
        .exports
        .iter()
        .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
        .collect();
    let mut taken = std::collections::HashSet::new();
    let mut exports = Vec::with_capacity(file.exports.len() + kube.exports.len());
    for f in &file.exports {
        let id = (f.namespace.as_str(), f.name.as_str());
        let Some(k) = by_key.get(&id) else {
            exports.push(f.clone());
            continue;
        };
        taken.insert(id);
        if compatible(f, k) {
            let mut merged = (**f).clone();
            for ep in &k.endpoints {
                if !merged.endpoints.iter().any(|e| e.address == ep.address) {
                    merged.endpoints.push(ep.clone());
                }
            }
            merged.exported_since_ms = k.exported_since_ms;
            exports.push(Arc::new(merged));
        } else {
            exports.push(f.clone());
            conflicts.insert(
                (id.0.to_owned(), id.1.to_owned()),
                format!(
                    "the catalog file of this cluster exports {}/{} with ports {}, this \
                     Service has {}: the catalog file wins and this ServiceExport is not \
                     exported; make the ports agree or remove one of the two",
                    id.0,
                    id.1,
                    ports_text(&f.ports),
                    ports_text(&k.ports)
                ),
            );
        }
    }
    exports.extend(
        kube.exports
            .iter()
            .filter(|k| !taken.contains(&(k.namespace.as_str(), k.name.as_str())))
            .cloned(),
    );
    exports.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    (
        CatalogFile {
            exports,
            imports: file.imports.clone(),
            policies: file.policies.clone(),
        },
        conflicts,
    )
}

/// Follows both sources into the merged catalog (published at once with the current values)
/// and the conflicts between them. Stops when every receiver of the merged catalog is gone.
pub fn spawn_composer(
    mut file: watch::Receiver<Arc<CatalogFile>>,
    mut kube: watch::Receiver<Arc<KubeExportSet>>,
    metrics: ExportMetrics,
) -> (
    watch::Receiver<Arc<CatalogFile>>,
    watch::Receiver<Arc<SourceConflicts>>,
) {
    let (merged, conflicts) = compose(&file.borrow_and_update(), &kube.borrow_and_update());
    note_conflicts(&SourceConflicts::new(), &conflicts, &metrics);
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(merged));
    let (conflicts_tx, conflicts_rx) = watch::channel(Arc::new(conflicts));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = file.changed() => if r.is_err() { return },
                r = kube.changed() => if r.is_err() { return },
                _ = catalog_tx.closed() => return,
            }
            let (merged, now) = compose(&file.borrow_and_update(), &kube.borrow_and_update());
            note_conflicts(&conflicts_tx.borrow(), &now, &metrics);
            catalog_tx.send_replace(Arc::new(merged));
            if **conflicts_tx.borrow() != now {
                conflicts_tx.send_replace(Arc::new(now));
            }
        }
    });
    (catalog_rx, conflicts_rx)
}

/// Logs and counts each conflict once when it appears, and once when it ends.
fn note_conflicts(before: &SourceConflicts, now: &SourceConflicts, metrics: &ExportMetrics) {
    for (key, message) in now {
        if !before.contains_key(key) {
            metrics.source_conflicts.inc();
            tracing::warn!(service = %format!("{}/{}", key.0, key.1), %message,
                "a ServiceExport conflicts with the catalog file; the catalog file wins");
        }
    }
    for key in before.keys().filter(|k| !now.contains_key(*k)) {
        tracing::info!(service = %format!("{}/{}", key.0, key.1),
            "the conflict between a ServiceExport and the catalog file is over");
    }
    metrics
        .source_conflicts_now
        .set(i64::try_from(now.len()).unwrap_or(i64::MAX));
}
