//! The Kubernetes export source's metrics, registered next to the federation's
//! (`isthmus_federation_kubernetes_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// `serviceexports`, `services`, `endpointslices`.
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Default)]
pub struct ExportMetrics {
    /// Failed list or watch calls (403, API server down, 410 Gone...), each retried with backoff.
    pub watch_errors: Family<ResourceLabels, Counter>,
    /// Object changes the watches delivered.
    pub watch_events: Family<ResourceLabels, Counter>,
    /// 1 once every watch has listed its objects (until then nothing is exported from
    /// Kubernetes).
    pub synced: Gauge,
    /// Rebuilds of the export set (each batches every change since the previous one).
    pub rebuilds: Counter,
    /// Export sets published because something changed.
    pub publishes: Counter,
    /// ServiceExports exported, and refused (`Valid=False`).
    pub exported: Gauge,
    pub refused: Gauge,
    /// Conflicts between a ServiceExport and the catalog file (each counted when it appears).
    pub source_conflicts: Counter,
    pub source_conflicts_now: Gauge,
    /// ServiceExport status writes, by result (`ok`, `conflict` (409: re-read), `error`).
    pub status_writes: Family<ResultLabels, Counter>,
}

impl ExportMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("isthmus_federation_kubernetes");
        r.register(
            "watch_errors",
            "Failed Kubernetes list/watch calls, by resource (retried with backoff)",
            self.watch_errors.clone(),
        );
        r.register(
            "watch_events",
            "Kubernetes object changes received, by resource",
            self.watch_events.clone(),
        );
        r.register(
            "synced",
            "1 once every Kubernetes watch has listed its objects",
            self.synced.clone(),
        );
        r.register(
            "export_rebuilds",
            "Rebuilds of the Kubernetes export set (each batches the changes since the last)",
            self.rebuilds.clone(),
        );
        r.register(
            "export_publishes",
            "Kubernetes export sets published because something changed",
            self.publishes.clone(),
        );
        r.register(
            "exports_valid",
            "ServiceExports exported",
            self.exported.clone(),
        );
        r.register(
            "exports_invalid",
            "ServiceExports refused (Valid=False)",
            self.refused.clone(),
        );
        r.register(
            "source_conflicts",
            "ServiceExports found conflicting with the catalog file (the file wins)",
            self.source_conflicts.clone(),
        );
        r.register(
            "source_conflicts_current",
            "ServiceExports conflicting with the catalog file now",
            self.source_conflicts_now.clone(),
        );
        r.register(
            "status_writes",
            "ServiceExport status writes, by result",
            self.status_writes.clone(),
        );
    }

    pub fn watch_error(&self, resource: &str) {
        self.watch_errors
            .get_or_create(&ResourceLabels {
                resource: resource.into(),
            })
            .inc();
    }

    pub fn status_write(&self, result: &str) {
        self.status_writes
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }
}
