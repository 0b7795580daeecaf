//! Isthmus control plane: the mesh model, the wire API, identity and the cluster CA, the store
//! (embedded or etcd), peering between federations, catalog sources, and the config/certificate
//! API its gateways subscribe to.
//!
//! The data plane (`isthmus-gateway`) and DNS (`isthmus-dns`) depend on this crate with default
//! features off: they use the model, the wire API and the verifiers, never the etcd backend.

pub mod admin;
pub mod catalog;
pub mod changelog;
pub mod config;
pub mod duration;
pub mod gwapi;
pub mod identity;
pub mod kubernetes;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod node;
pub mod peering;
pub mod store;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod traffic;
pub mod vip;

/// Generated wire API (`proto/isthmus.proto`).
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
    tonic::include_proto!("isthmus.v1");
}
