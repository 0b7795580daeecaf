//! The API a cluster's gateways use (on the local API port): bootstrap and renew certificates,
//! register their advertised address under a lease, subscribe to the mesh config, ACK it, and
//! report health verdicts.

pub mod bootstrap;
pub mod config;
pub mod registration;
pub mod service;

pub use bootstrap::{BootstrapFile, GatewayToken};
pub use service::GatewayService;
