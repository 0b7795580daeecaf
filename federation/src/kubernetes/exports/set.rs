//! The whole Kubernetes export set, built from the watched objects: one [`Verdict`] per
//! ServiceExport, and the exported specs. Pure; unchanged specs keep their `Arc` from the
//! previous set, so the local catalog recognizes them by address and a rebuild that changes
//! nothing changes nothing downstream.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::build::{Verdict, build};
use crate::catalog::ExportSpec;
use crate::kubernetes::mcs::ServiceExport;

/// The label EndpointSlices carry with the name of their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A namespaced object's `(namespace, name)`.
pub type ObjectKey = (String, String);

pub fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// What the Kubernetes source publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeExportSet {
    /// Every watch has listed its objects once: until then the set is empty and says nothing.
    pub synced: bool,
    /// The exported specs, by namespace and name.
    pub exports: Vec<Arc<ExportSpec>>,
    /// Every ServiceExport's outcome, by namespace and name.
    pub verdicts: BTreeMap<ObjectKey, Verdict>,
}

impl KubeExportSet {
    /// Whether `other` exports the same specs (by address: the builder keeps unchanged ones) and
    /// has the same verdicts.
    pub fn same_as(&self, other: &KubeExportSet) -> bool {
        self.synced == other.synced
            && self.exports.len() == other.exports.len()
            && self
                .exports
                .iter()
                .zip(&other.exports)
                .all(|(a, b)| Arc::ptr_eq(a, b))
            && self.verdicts == other.verdicts
    }
}

/// Builds the set from the objects the watches hold, reusing `previous`'s unchanged specs.
pub fn build_set(
    exports: &[Arc<ServiceExport>],
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    previous: &KubeExportSet,
) -> KubeExportSet {
    let services: HashMap<ObjectKey, &Service> = services
        .iter()
        .map(|s| (key_of(&s.metadata), &**s))
        .collect();
    let mut by_service: HashMap<ObjectKey, Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let Some(owner) = owner {
            let ns = slice.metadata.namespace.clone().unwrap_or_default();
            by_service
                .entry((ns, owner.clone()))
                .or_default()
                .push(slice);
        }
    }
    let mut verdicts = BTreeMap::new();
    for se in exports {
        let key = key_of(&se.metadata);
        let slices = by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
        let mut verdict = build(se, services.get(&key).copied(), slices);
        if let (Verdict::Exported { spec, .. }, Some(Verdict::Exported { spec: old, .. })) =
            (&mut verdict, previous.verdicts.get(&key))
            && **old == **spec
        {
            *spec = old.clone();
        }
        verdicts.insert(key, verdict);
    }
    let exports = verdicts
        .values()
        .filter_map(|v| match v {
            Verdict::Exported { spec, .. } => Some(spec.clone()),
            Verdict::Refused { .. } => None,
        })
        .collect();
    KubeExportSet {
        synced: true,
        exports,
        verdicts,
    }
}
