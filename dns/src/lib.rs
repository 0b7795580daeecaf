//! Isthmus global DNS: authoritative answers for mesh names (`<svc>.<ns>.svc.clusterset.local`,
//! `<cluster>.<svc>.<ns>.svc.clusterset.local`, SRV per port) and the GSLB zone (public ingress
//! of the nearest healthy cluster), from the federation's published mesh view.
//!
//! It owns: turning the view into a zone ([`zone`], pure), encoding that zone for the query path
//! ([`snapshot`], in a sharded [`table`]), keeping it up to date by re-planning only the routes a
//! new view or verdict changed ([`rebuild`]), parsing queries ([`packet`]), answering them
//! ([`answer`]), rate limiting ([`rrl`]), the UDP workers and the rebuild loop ([`server`]), TCP
//! ([`tcp`], the only file that names hickory types) and its metrics ([`metrics`]). It must not
//! touch federation state: it reads the immutable `MeshView` from a watch channel and never
//! writes anything back.
//!
//! It is not a recursor: names outside its zones are REFUSED.

pub mod answer;
pub mod catalog_json;
pub mod health;
pub mod metrics;
pub mod name;
pub mod packet;
pub mod rebuild;
pub mod rrl;
pub mod server;
pub mod settings;
pub mod snapshot;
pub mod table;
mod tcp;
pub mod zone;

pub use catalog_json::{view_from_json, view_from_json_bytes};
pub use health::Verdicts;
pub use metrics::DnsMetrics;
pub use server::{DnsError, DnsServer, Inputs};
pub use settings::Settings;

#[cfg(test)]
mod rebuild_tests;
#[cfg(test)]
mod tests;
