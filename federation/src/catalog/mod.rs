//! Catalog sources: where this cluster's local exports (and its import rules) come from.
//!
//! A **catalog source** turns something an operator or a workload controls into export sets
//! published on a `tokio::sync::watch` channel. Consumers (peering, the gateway config server,
//! DNS) only ever hold the receiving end and react to `changed()`; they never know which source
//! produced a value. Every value published is complete and validated: a source keeps its last
//! good value rather than publish a broken one.
//!
//! Sources here:
//! - [`file`] + [`file_source`]: the catalog file (exports, imports, reserved policies), parsed by
//!   the pure [`parse_catalog`] and polled by [`FileSource`] into a
//!   `watch::Receiver<Arc<CatalogFile>>`. [`incremental`]'s [`CatalogParser`] re-reads an edited
//!   JSON catalog parsing only the entries whose text changed.
//! - [`registry`]: the gRPC `Registry` service where VM workloads register endpoints of an
//!   exported service under a lease, authorized by their workload certificate; its view
//!   ([`RegisteredEndpoints`], per service) is a `watch::Receiver<Arc<RegisteredEndpoints>>` kept
//!   in step with the store. The federation merges these endpoints into the file's exports with
//!   [`ExportSpec::to_service`]. Authorization is the pure [`registry::authorize`].
//!
//! **Kubernetes.** The Kubernetes source ([`crate::kubernetes::exports`]: MCS `ServiceExport` +
//! `Service` + `EndpointSlice`, watched with kube-rs) plugs in the same way: it builds
//! [`ExportSpec`]s, checks each with [`ExportSpec::validate`], and publishes its export set on
//! its own watch channel; it is merged with the file's exports into one `Arc<CatalogFile>`
//! channel before the federation applies it (imports and policies from the file alone), so
//! nothing downstream changes.
//!
//! What this module must not do: talk to peers, allocate VIPs, or decide routing. It produces
//! local exports and nothing else; the store is used only for the registry's leased records
//! under [`REGISTRY_PREFIX`].

pub mod file;
pub mod file_source;
pub mod incremental;
pub mod registry;
mod registry_view;

pub use file::{
    CatalogError, CatalogFile, ExportSpec, FieldError, parse_catalog, parse_catalog_listing_all,
};
pub use file_source::{DEFAULT_POLL, FileSource, FileSourceStats, Refusal, check_file};
pub use incremental::CatalogParser;
pub use registry::{Denied, RegistryConfig, RegistryError, RegistryService, RegistryStats};
pub use registry_view::{REGISTRY_PREFIX, RegisteredEndpoints, Registration};
