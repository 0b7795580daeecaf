//! Kubernetes as a catalog source: MCS `ServiceExport`s (with their `Service` and
//! `EndpointSlice`s) become exports, merged with the catalog file's, and each ServiceExport
//! gets the MCS conditions `Valid` and `Conflict` on its status.
//!
//! - [`build`] (with [`ports`] and [`endpoints`]): the pure builder, one ServiceExport to an
//!   [`ExportSpec`](crate::catalog::ExportSpec) or the reason it is refused.
//! - [`set`]: every ServiceExport's verdict and the exported specs, from the watched objects.
//! - [`watch`]: kube-rs watchers and reflector stores, errors logged, counted and retried.
//! - [`source`]: the batched rebuild loop publishing a [`KubeExportSet`] on a `watch` channel.
//! - [`compose`]: the merge with the catalog file (the file wins a conflict).
//! - [`conflict`], [`conditions`], [`status`]: MCS conflicts with peers, the conditions, and
//!   writing them to the status subresource.
//!
//! Must not: talk to peers, allocate addresses, or write anything but ServiceExport status.

pub mod build;
pub mod compose;
pub mod conditions;
pub mod conflict;
pub mod endpoints;
pub mod metrics;
pub mod ports;
pub mod set;
pub mod source;
pub mod status;
pub mod watch;

#[cfg(test)]
mod build_tests;
#[cfg(test)]
mod compose_tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch as channel;

pub use build::{EXPORT_TO, Refusal, Verdict};
pub use conflict::{ClustersetExports, ExportShape};
pub use metrics::ExportMetrics;
pub use set::KubeExportSet;
pub use source::KubeExportSource;

use super::client::{ClientError, client};
use super::config::KubernetesConfig;
use super::report::KubeReport;
use crate::catalog::CatalogFile;
use crate::model::ClusterName;
use compose::{SourceConflicts, spawn_composer};
use status::{StatusInputs, run_status_writer};

/// How long the federation waits at start for the first list of every watch, so that a restart
/// does not withdraw and re-add every Kubernetes export; past it, it starts without them (they
/// appear once the watches sync).
pub const INITIAL_SYNC_WAIT: Duration = Duration::from_secs(3);

/// The running source, composed with the catalog file.
pub struct KubeExports {
    /// The catalog file with the Kubernetes exports merged in: what the federation applies.
    pub catalog: channel::Receiver<Arc<CatalogFile>>,
    pub metrics: ExportMetrics,
    client: kube::Client,
    source: KubeExportSource,
    conflicts: channel::Receiver<Arc<SourceConflicts>>,
}

impl KubeExports {
    /// Starts the watches and the merge with `file`. Waits up to [`INITIAL_SYNC_WAIT`] for the
    /// first lists; an API server that does not answer does not stop the federation (its
    /// watches retry, and nothing is exported from Kubernetes until they sync).
    pub async fn start(
        cfg: &KubernetesConfig,
        file: channel::Receiver<Arc<CatalogFile>>,
        report: KubeReport,
    ) -> Result<KubeExports, ClientError> {
        let client = client(cfg).await?;
        let metrics = ExportMetrics::default();
        let source = KubeExportSource::start(&client, &cfg.namespaces, metrics.clone(), report);
        let mut first = source.exports.clone();
        if tokio::time::timeout(INITIAL_SYNC_WAIT, first.wait_for(|s| s.synced))
            .await
            .is_err()
        {
            tracing::warn!(
                wait_ms = INITIAL_SYNC_WAIT.as_millis() as u64,
                "kubernetes: the watches have not listed their objects yet; starting without \
                 Kubernetes exports until they do"
            );
        }
        let (catalog, conflicts) = spawn_composer(file, source.exports.clone(), metrics.clone());
        Ok(KubeExports {
            catalog,
            metrics,
            client,
            source,
            conflicts,
        })
    }

    /// Writes the ServiceExports' conditions until the source stops. `clusterset`: what every
    /// cluster exports of the services this one exports (for `Conflict`).
    pub async fn write_status(
        self,
        me: ClusterName,
        clusterset: channel::Receiver<Arc<ClustersetExports>>,
    ) {
        run_status_writer(StatusInputs {
            client: self.client,
            watched: self.source.watched.clone(),
            exports: self.source.exports.clone(),
            source_conflicts: self.conflicts,
            clusterset,
            me,
            metrics: self.metrics,
        })
        .await;
    }
}
