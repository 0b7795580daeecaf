//! The pure builder: one ServiceExport, its Service and its EndpointSlices in, an
//! [`ExportSpec`] or the reason it cannot be exported out. No I/O, no clock.
//!
//! Must not: talk to the API server or look at other sources' exports (see [`super::compose`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::endpoints::endpoints;
use super::ports::service_ports;
use crate::catalog::ExportSpec;
use crate::kubernetes::MANAGED_BY;
use crate::kubernetes::mcs::ServiceExport;
use crate::model::service::default_weight;
use crate::model::{ClusterName, Namespace, ServiceName};

/// The ServiceExport annotation naming the peers allowed to import the service
/// (`"east,south"`); absent = every peer.
pub const EXPORT_TO: &str = "isthmus.io/export-to";

/// Why a ServiceExport is not exported: the `reason` of its `Valid=False` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// No Service of the same name in the namespace.
    ServiceNotFound,
    /// `clusterIP: None`: Isthmus cannot import headless services yet.
    ServiceHeadless,
    ServiceTypeExternalName,
    /// A Service Isthmus derived for an import (re-exporting it would loop).
    ServiceManagedByIsthmus,
    /// A malformed `isthmus.io/export-to` annotation.
    InvalidAnnotation,
    /// No TCP port (gateways carry TCP only).
    UnsupportedProtocol,
    /// What [`ExportSpec::validate`] refuses (names, ports, sizes).
    InvalidExport,
    /// The catalog file exports the same service with other ports; the file wins.
    CatalogFileConflict,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ServiceNotFound => "ServiceNotFound",
            Refusal::ServiceHeadless => "ServiceHeadless",
            Refusal::ServiceTypeExternalName => "ServiceTypeExternalName",
            Refusal::ServiceManagedByIsthmus => "ServiceManagedByIsthmus",
            Refusal::InvalidAnnotation => "InvalidAnnotation",
            Refusal::UnsupportedProtocol => "UnsupportedProtocol",
            Refusal::InvalidExport => "InvalidExport",
            Refusal::CatalogFileConflict => "CatalogFileConflict",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of one ServiceExport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Exported; `notes` say what was left out (UDP ports, endpoints without the port...).
    Exported {
        spec: Arc<ExportSpec>,
        notes: Vec<String>,
    },
    Refused {
        reason: Refusal,
        message: String,
    },
}

impl Verdict {
    fn refused(reason: Refusal, message: impl Into<String>) -> Self {
        Verdict::Refused {
            reason,
            message: message.into(),
        }
    }
}

/// `isthmus.io/export-to`: comma-separated cluster names, at least one.
pub fn parse_export_to(value: &str) -> Result<BTreeSet<ClusterName>, String> {
    let mut set = BTreeSet::new();
    for item in value.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!(
                "{EXPORT_TO}: {value:?} has an empty item; write peer cluster names separated by \
                 commas (\"east,south\"), or remove the annotation to export to every peer"
            ));
        }
        let name = ClusterName::new(item).map_err(|e| {
            format!(
                "{EXPORT_TO}: {:?} is not a cluster name: {}",
                e.value, e.reason
            )
        })?;
        set.insert(name);
    }
    Ok(set)
}

/// Builds the export `export` describes. `service`: the Service of the same namespace and name,
/// if any; `slices`: the EndpointSlices labelled `kubernetes.io/service-name: <name>` in its
/// namespace.
pub fn build(
    export: &ServiceExport,
    service: Option<&Service>,
    slices: &[&EndpointSlice],
) -> Verdict {
    let ns = export.metadata.namespace.as_deref().unwrap_or_default();
    let name = export.metadata.name.as_deref().unwrap_or_default();
    let (namespace, svc_name) = match (Namespace::new(ns), ServiceName::new(name)) {
        (Ok(n), Ok(s)) => (n, s),
        (Err(e), _) | (_, Err(e)) => {
            return Verdict::refused(Refusal::InvalidExport, format!("{e:?}"));
        }
    };
    let Some(service) = service else {
        return Verdict::refused(
            Refusal::ServiceNotFound,
            format!("no Service {ns}/{name}: create it, or delete this ServiceExport"),
        );
    };
    let spec = service.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Verdict::refused(
            Refusal::ServiceTypeExternalName,
            format!(
                "Service {ns}/{name} is of type ExternalName, which has no endpoints to export"
            ),
        );
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        return Verdict::refused(
            Refusal::ServiceHeadless,
            format!(
                "Service {ns}/{name} is headless (clusterIP: None); Isthmus cannot import headless \
                 services yet: export a Service with a cluster IP"
            ),
        );
    }
    let labels = service.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.values().any(|v| v == MANAGED_BY)) {
        return Verdict::refused(
            Refusal::ServiceManagedByIsthmus,
            format!(
                "Service {ns}/{name} is derived by Isthmus for an imported service; exporting it \
                 would export the import back: delete this ServiceExport"
            ),
        );
    }
    let export_to = match export
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPORT_TO))
    {
        None => None,
        Some(v) => match parse_export_to(v) {
            Ok(set) => Some(set),
            Err(m) => return Verdict::refused(Refusal::InvalidAnnotation, m),
        },
    };
    let ports = service_ports(spec.ports.as_deref().unwrap_or_default());
    if ports.ports.is_empty() {
        let mut message = format!("Service {ns}/{name} has no TCP port");
        for s in &ports.skipped {
            message.push_str("; ");
            message.push_str(s);
        }
        return Verdict::refused(Refusal::UnsupportedProtocol, message);
    }
    let eps = endpoints(&ports.names, slices);
    let mut notes = ports.skipped;
    notes.extend(eps.notes);
    let spec = ExportSpec {
        namespace,
        name: svc_name,
        ports: ports.ports,
        endpoints: eps.list,
        export_to,
        weight: default_weight(),
        headless: false,
        metadata: BTreeMap::new(),
        registrants: None,
        exported_since_ms: export
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond()),
    };
    if let Err(e) = spec.validate() {
        return Verdict::refused(
            Refusal::InvalidExport,
            format!("Service {ns}/{name}: {e}; fix the Service"),
        );
    }
    Verdict::Exported {
        spec: Arc::new(spec),
        notes,
    }
}
