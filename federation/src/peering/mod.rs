//! Peering: how federations meet (tokens, `Establish`) and the one long-lived mTLS stream between
//! two peers (`Sync`: hello, full snapshot or resumed deltas, ACK after durable storage, NACK
//! keeps the last good state, heartbeats).

pub mod dialer;
pub mod server;
pub mod session;
pub mod token;
pub mod update;

use serde::{Deserialize, Serialize};

use crate::identity::TrustDomain;
use crate::model::{ClusterName, Region, Zone};

/// The protocol version this build speaks on the `Sync` stream.
pub const PROTOCOL_VERSION: u32 = 1;

/// A peer as persisted: who it is, where to dial it (if we dial), and its trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    pub region: Region,
    #[serde(default)]
    pub zone: Option<Zone>,
    /// Set when this side dials the peer (the side that ran `establish`).
    #[serde(default)]
    pub dial_address: Option<String>,
    /// The peer's trust bundle, SPIFFE JSON, and its sequence.
    pub bundle: String,
    pub bundle_sequence: u64,
    pub established_at_ms: i64,
}
