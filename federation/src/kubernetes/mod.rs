//! Kubernetes: the MCS API (KEP-1645) as a catalog source and as the local face of imports.
//!
//! - [`config`]: the `kubernetes:` config section (always compiled).
//! - [`client`]: a `kube::Client` from a kubeconfig file or the pod's service account.
//! - [`imports`]: ServiceImports, derived Services and EndpointSlices for what we import.
//! - [`mcs`]: the `multicluster.x-k8s.io/v1alpha1` types `ServiceExport` and `ServiceImport`.
//! - [`exports`]: ServiceExports as a catalog source, and their MCS conditions.
//! - [`gateway_service`]: the gateways' LoadBalancer Service, whose address is advertised for
//!   gateways that configure none.
//! - [`report`]: the current problems of both, for `isthmus status` (always compiled).
//!
//! What this module must not do: decide routing or talk to peers. The export source produces
//! export sets like the catalog file does (DESIGN: Kubernetes); the import writer turns what the
//! federation imports into Kubernetes objects and never touches an object without Isthmus's
//! managed-by label.

#[cfg(feature = "kubernetes")]
pub mod client;
pub mod config;
#[cfg(feature = "kubernetes")]
pub mod exports;
#[cfg(feature = "kubernetes")]
pub mod gateway_service;
#[cfg(feature = "kubernetes")]
pub mod imports;
#[cfg(feature = "kubernetes")]
pub mod mcs;
pub mod report;

pub use report::KubeReport;

/// The value of `endpointslice.kubernetes.io/managed-by` and of `app.kubernetes.io/managed-by`
/// on every object Isthmus writes; objects without it are never modified or deleted. A label
/// value: no `/` (the API server refuses one), like `endpointslice-controller.k8s.io`.
pub const MANAGED_BY: &str = "federation.isthmus.io";
