//! The mesh model: validated names, services and their summaries, import rules and the MCS merge.
//! Pure data and pure functions; no I/O.

pub mod field_path;
pub mod hedge;
pub mod merge;
pub mod names;
pub mod policy;
pub mod rules;
pub mod service;

pub use merge::{ClusterExport, MergedService, merge};
pub use names::{
    ClusterName, NameCache, NameError, Namespace, Region, ServiceKey, ServiceName, Zone,
};
pub use rules::{ImportRule, Selector, import_allowed};
pub use service::{
    Endpoint, ExportedService, ModelError, Protocol, ServicePort, ServiceSummary, ZoneCounts,
};
