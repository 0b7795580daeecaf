//! Validation of catalog updates received from a peer. Pure: a [`proto::CatalogUpdate`] (already
//! reassembled from its parts) either becomes a [`PeerUpdate`] whose every field is checked, or is
//! rejected whole with a reason — nothing of a rejected update is ever stored.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::identity::{TrustBundle, TrustDomain};
use crate::model::service::key_from_proto;
use crate::model::{ClusterName, ServiceKey, ServiceSummary, Zone};
use crate::proto;

/// The most services one peer may export to us.
pub const MAX_SERVICES_PER_PEER: usize = 200_000;
/// The most gateways one peer may advertise.
pub const MAX_GATEWAYS: usize = 64;
/// Services per message when sending (keeps messages around a megabyte).
pub const SERVICES_PER_MESSAGE: usize = 2_000;

/// An address a peer's gateway advertises.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GatewayAddr {
    pub name: String,
    pub address: SocketAddr,
    pub zone: Option<Zone>,
}

impl GatewayAddr {
    pub fn to_proto(&self) -> proto::GatewayAddress {
        proto::GatewayAddress {
            name: self.name.clone(),
            address: self.address.to_string(),
            zone: self
                .zone
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }
    }

    pub fn from_proto(g: &proto::GatewayAddress) -> Result<Self, String> {
        crate::model::names::check_label("gateway name", &g.name).map_err(|e| e.to_string())?;
        let address: SocketAddr = g
            .address
            .parse()
            .map_err(|_| format!("gateway {}: address {:?} is not ip:port", g.name, g.address))?;
        if address.port() == 0 {
            return Err(format!("gateway {}: port 0", g.name));
        }
        let zone = if g.zone.is_empty() {
            None
        } else {
            Some(
                g.zone
                    .parse()
                    .map_err(|e: crate::model::NameError| e.to_string())?,
            )
        };
        Ok(Self {
            name: g.name.clone(),
            address,
            zone,
        })
    }
}

/// A checked update.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerUpdate {
    pub version: u64,
    pub epoch: String,
    pub snapshot: bool,
    pub upserts: Vec<ServiceSummary>,
    pub removals: Vec<ServiceKey>,
    pub bundle: Option<TrustBundle>,
    pub gateways: Option<Vec<GatewayAddr>>,
}

/// Why an update was refused (sent back in the NACK, logged and counted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid catalog update from {peer}: {reason}")]
pub struct UpdateError {
    pub peer: ClusterName,
    pub reason: String,
}

/// Checks an update from `peer` (whose trust domain is `peer_td`).
pub fn validate(
    update: &proto::CatalogUpdate,
    peer: &ClusterName,
    peer_td: &TrustDomain,
) -> Result<PeerUpdate, UpdateError> {
    let fail = |reason: String| UpdateError {
        peer: peer.clone(),
        reason,
    };
    if update.cluster != peer.as_str() {
        return Err(fail(format!(
            "it carries the catalog of cluster {:?}: a peer may publish only its own cluster's services",
            update.cluster
        )));
    }
    if update.version == 0 {
        return Err(fail("version 0 is not a valid catalog version".into()));
    }
    if update.epoch.is_empty() || update.epoch.len() > 64 {
        return Err(fail("epoch must be 1-64 characters".into()));
    }
    if update.upserts.len() > MAX_SERVICES_PER_PEER || update.removals.len() > MAX_SERVICES_PER_PEER
    {
        return Err(fail(format!(
            "more than {MAX_SERVICES_PER_PEER} services in one update"
        )));
    }
    let mut seen = BTreeSet::new();
    let mut upserts = Vec::with_capacity(update.upserts.len());
    for s in &update.upserts {
        let summary = ServiceSummary::from_proto(s).map_err(|e| fail(e.to_string()))?;
        if !seen.insert(summary.key.clone()) {
            return Err(fail(format!("service {} appears twice", summary.key)));
        }
        upserts.push(summary);
    }
    let mut removals = Vec::with_capacity(update.removals.len());
    for k in &update.removals {
        let key = key_from_proto(Some(k)).map_err(|e| fail(e.to_string()))?;
        if !seen.insert(key.clone()) {
            return Err(fail(format!("service {key} appears twice")));
        }
        removals.push(key);
    }
    if update.snapshot && !removals.is_empty() {
        return Err(fail("a snapshot carries no removals".into()));
    }
    let bundle = match &update.bundle {
        None => None,
        Some(b) => {
            if b.trust_domain != peer_td.as_str() {
                return Err(fail(format!(
                    "it carries a bundle for trust domain {:?}: a peer may publish only its own trust domain's bundle ({peer_td})",
                    b.trust_domain
                )));
            }
            Some(TrustBundle::from_proto(b).map_err(|e| fail(format!("bundle: {e}")))?)
        }
    };
    let gateways = match &update.gateways {
        None => None,
        Some(set) => {
            if set.gateways.len() > MAX_GATEWAYS {
                return Err(fail(format!("more than {MAX_GATEWAYS} gateways")));
            }
            let mut list = set
                .gateways
                .iter()
                .map(GatewayAddr::from_proto)
                .collect::<Result<Vec<_>, _>>()
                .map_err(fail)?;
            list.sort();
            Some(list)
        }
    };
    if update.snapshot && (bundle.is_none() || gateways.is_none()) {
        return Err(fail(
            "a snapshot must carry the bundle and the gateway set".into(),
        ));
    }
    Ok(PeerUpdate {
        version: update.version,
        epoch: update.epoch.clone(),
        snapshot: update.snapshot,
        upserts,
        removals,
        bundle,
        gateways,
    })
}

/// Reassembles a multi-part update (`more = true` on all but the last part). Bounded: a peer
/// that never sends the last part, or sends too much, is refused.
#[derive(Debug, Default)]
pub struct Reassembly {
    pending: Option<proto::CatalogUpdate>,
}

impl Reassembly {
    /// Returns the whole update when `part` completes it.
    pub fn push(
        &mut self,
        part: proto::CatalogUpdate,
    ) -> Result<Option<proto::CatalogUpdate>, String> {
        let more = part.more;
        let whole = match self.pending.take() {
            None => part,
            Some(mut acc) => {
                if acc.version != part.version
                    || acc.epoch != part.epoch
                    || acc.snapshot != part.snapshot
                {
                    return Err(format!(
                        "part of version {} arrived while version {} was incomplete",
                        part.version, acc.version
                    ));
                }
                if acc.upserts.len() + part.upserts.len() > MAX_SERVICES_PER_PEER
                    || acc.removals.len() + part.removals.len() > MAX_SERVICES_PER_PEER
                {
                    return Err(format!(
                        "more than {MAX_SERVICES_PER_PEER} services in one update"
                    ));
                }
                acc.upserts.extend(part.upserts);
                acc.removals.extend(part.removals);
                if part.bundle.is_some() {
                    acc.bundle = part.bundle;
                }
                if part.gateways.is_some() {
                    acc.gateways = part.gateways;
                }
                acc.more = more;
                acc
            }
        };
        if more {
            self.pending = Some(whole);
            Ok(None)
        } else {
            Ok(Some(whole))
        }
    }
}

/// Splits an update into parts of at most [`SERVICES_PER_MESSAGE`] services each.
pub fn split(update: proto::CatalogUpdate) -> Vec<proto::CatalogUpdate> {
    let total = update.upserts.len() + update.removals.len();
    if total <= SERVICES_PER_MESSAGE {
        return vec![update];
    }
    let mut parts = Vec::new();
    let mut upserts = update.upserts.into_iter().peekable();
    let mut removals = update.removals.into_iter().peekable();
    let template = proto::CatalogUpdate {
        upserts: vec![],
        removals: vec![],
        bundle: None,
        gateways: None,
        more: true,
        ..update
    };
    let mut first = true;
    while upserts.peek().is_some() || removals.peek().is_some() {
        let mut part = template.clone();
        if first {
            part.bundle = update.bundle.clone();
            part.gateways = update.gateways.clone();
            first = false;
        }
        part.upserts = upserts.by_ref().take(SERVICES_PER_MESSAGE).collect();
        let room = SERVICES_PER_MESSAGE - part.upserts.len();
        part.removals = removals.by_ref().take(room).collect();
        parts.push(part);
    }
    if let Some(last) = parts.last_mut() {
        last.more = false;
    }
    parts
}
