//! Every store key the federation writes, in one place. Layout:
//!
//! | key | value |
//! |---|---|
//! | `ca/state` | [`crate::identity::CaState`] JSON (private keys sealed) |
//! | `local/meta` | [`LocalMeta`]: catalog epoch and version |
//! | `local/exported_at/<ns>/<name>` | first export time, unix ms |
//! | `peers/<cluster>/record` | [`crate::peering::PeerRecord`] |
//! | `peers/<cluster>/catalog` | blob: [`crate::mesh::PeerCatalog`] at some version |
//! | `peers/<cluster>/delta/<version:020>` | [`crate::mesh::StoredDelta`] after that version |
//! | `tokens/<id>` | [`crate::peering::token::TokenRecord`] |
//! | `gwtokens/<gateway>` | gateway bootstrap token record |
//! | `gateways/<gateway>` | leased gateway registration |
//! | `registry/...` | leased workload endpoints (owned by [`crate::catalog`]) |
//! | `vips/<name>` | VIP assignments (owned by [`crate::vip`]) |

use serde::{Deserialize, Serialize};

use crate::model::{ClusterName, ServiceKey};

pub const CA_STATE: &str = "ca/state";
pub const LOCAL_META: &str = "local/meta";
pub const EXPORTED_AT: &str = "local/exported_at/";
pub const PEERS: &str = "peers/";
pub const TOKENS: &str = "tokens/";
pub const GW_TOKENS: &str = "gwtokens/";
pub const GATEWAYS: &str = "gateways/";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalMeta {
    pub epoch: String,
    pub version: u64,
}

pub fn exported_at(key: &ServiceKey) -> String {
    format!("{EXPORTED_AT}{}", key.path())
}

pub fn peer_record(peer: &ClusterName) -> String {
    format!("{PEERS}{peer}/record")
}

pub fn peer_catalog(peer: &ClusterName) -> String {
    format!("{PEERS}{peer}/catalog")
}

pub fn peer_deltas(peer: &ClusterName) -> String {
    format!("{PEERS}{peer}/delta/")
}

pub fn peer_delta(peer: &ClusterName, version: u64) -> String {
    format!("{PEERS}{peer}/delta/{version:020}")
}

pub fn peer_prefix(peer: &ClusterName) -> String {
    format!("{PEERS}{peer}/")
}

pub fn token(id: &str) -> String {
    format!("{TOKENS}{id}")
}

pub fn gw_token(gateway: &str) -> String {
    format!("{GW_TOKENS}{gateway}")
}

pub fn gateway(gateway: &str) -> String {
    format!("{GATEWAYS}{gateway}")
}

/// One instance of a gateway that registered its own (pod) address: the replicas sharing one
/// name (one bootstrap Secret) each hold a registration.
pub fn gateway_instance(gateway: &str, local: std::net::IpAddr) -> String {
    format!("{GATEWAYS}{gateway}/{local}")
}

/// The prefix of every [`gateway_instance`] of `gateway`.
pub fn gateway_instances(gateway: &str) -> String {
    format!("{GATEWAYS}{gateway}/")
}
