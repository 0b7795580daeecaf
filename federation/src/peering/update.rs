//! Validation of catalog updates received from a peer. Pure: a [`proto::CatalogUpdate`] either
//! becomes a [`PeerUpdate`] whose every field is checked, or is rejected whole with a reason —
//! nothing of a rejected update is ever stored. A multi-part update is checked part by part as it
//! arrives ([`Reassembly`]), so only its checked form is ever held whole.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::identity::{TrustBundle, TrustDomain};
use crate::model::service::key_from_proto;
use crate::model::{ClusterName, NameCache, ServiceKey, ServiceSummary, Zone};
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
    /// What gateways dial: `ip:port`, or `dns-name:port` (a load balancer known by name).
    pub address: String,
    pub zone: Option<Zone>,
}

impl GatewayAddr {
    pub fn to_proto(&self) -> proto::GatewayAddress {
        proto::GatewayAddress {
            name: self.name.clone(),
            address: self.address.clone(),
            zone: self
                .zone
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }
    }

    pub fn from_proto(g: &proto::GatewayAddress) -> Result<Self, String> {
        crate::model::names::check_label("gateway name", &g.name).map_err(|e| e.to_string())?;
        let address = match g.address.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => return Err(format!("gateway {}: port 0", g.name)),
            Ok(a) => a.to_string(),
            Err(_) => match crate::config::advertise_problem(&g.address) {
                None => g.address.to_ascii_lowercase(),
                Some(problem) => {
                    return Err(format!(
                        "gateway {}: address {:?} {problem}",
                        g.name, g.address
                    ));
                }
            },
        };
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
    let mut checked = Checked::start(update, peer, peer_td)?;
    checked.add(update)?;
    checked.finish()
}

/// An update being checked part by part: what has been checked so far, already converted. Parts
/// are checked as they arrive, so a 100,000-service snapshot never exists twice (as wire
/// messages and as checked summaries) — only the checked form is kept.
#[derive(Debug)]
struct Checked {
    peer: ClusterName,
    peer_td: TrustDomain,
    update: PeerUpdate,
    /// Every key seen in this update (upserts and removals), to refuse duplicates.
    seen: HashSet<ServiceKey>,
    names: NameCache,
}

impl Checked {
    fn fail(&self, reason: String) -> UpdateError {
        UpdateError {
            peer: self.peer.clone(),
            reason,
        }
    }

    /// Checks what the first part says about the whole update.
    fn start(
        first: &proto::CatalogUpdate,
        peer: &ClusterName,
        peer_td: &TrustDomain,
    ) -> Result<Self, UpdateError> {
        let checked = Self {
            peer: peer.clone(),
            peer_td: peer_td.clone(),
            update: PeerUpdate {
                version: first.version,
                epoch: first.epoch.clone(),
                snapshot: first.snapshot,
                upserts: Vec::new(),
                removals: Vec::new(),
                bundle: None,
                gateways: None,
            },
            seen: HashSet::new(),
            names: NameCache::default(),
        };
        if first.version == 0 {
            return Err(checked.fail("version 0 is not a valid catalog version".into()));
        }
        if first.epoch.is_empty() || first.epoch.len() > 64 {
            return Err(checked.fail("epoch must be 1-64 characters".into()));
        }
        Ok(checked)
    }

    /// Checks one part and adds it.
    fn add(&mut self, part: &proto::CatalogUpdate) -> Result<(), UpdateError> {
        if part.cluster != self.peer.as_str() {
            return Err(self.fail(format!(
                "it carries the catalog of cluster {:?}: a peer may publish only its own cluster's services",
                part.cluster
            )));
        }
        if part.version != self.update.version
            || part.epoch != self.update.epoch
            || part.snapshot != self.update.snapshot
        {
            return Err(self.fail(format!(
                "part of version {} arrived while version {} was incomplete",
                part.version, self.update.version
            )));
        }
        if self.update.upserts.len() + part.upserts.len() > MAX_SERVICES_PER_PEER
            || self.update.removals.len() + part.removals.len() > MAX_SERVICES_PER_PEER
        {
            return Err(self.fail(format!(
                "more than {MAX_SERVICES_PER_PEER} services in one update"
            )));
        }
        self.update.upserts.reserve_exact(part.upserts.len());
        for s in &part.upserts {
            let summary = ServiceSummary::from_proto_cached(s, &mut self.names)
                .map_err(|e| self.fail(e.to_string()))?;
            if !self.seen.insert(summary.key.clone()) {
                return Err(self.fail(format!("service {} appears twice", summary.key)));
            }
            self.update.upserts.push(summary);
        }
        for k in &part.removals {
            let key = key_from_proto(Some(k)).map_err(|e| self.fail(e.to_string()))?;
            if !self.seen.insert(key.clone()) {
                return Err(self.fail(format!("service {key} appears twice")));
            }
            self.update.removals.push(key);
        }
        if let Some(b) = &part.bundle {
            if b.trust_domain != self.peer_td.as_str() {
                return Err(self.fail(format!(
                    "it carries a bundle for trust domain {:?}: a peer may publish only its own trust domain's bundle ({})",
                    b.trust_domain, self.peer_td
                )));
            }
            let bundle =
                TrustBundle::from_proto(b).map_err(|e| self.fail(format!("bundle: {e}")))?;
            self.update.bundle = Some(bundle);
        }
        if let Some(set) = &part.gateways {
            if set.gateways.len() > MAX_GATEWAYS {
                return Err(self.fail(format!("more than {MAX_GATEWAYS} gateways")));
            }
            let mut list = set
                .gateways
                .iter()
                .map(GatewayAddr::from_proto)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.fail(e))?;
            list.sort();
            self.update.gateways = Some(list);
        }
        Ok(())
    }

    /// Checks what only the whole update can show.
    fn finish(self) -> Result<PeerUpdate, UpdateError> {
        if self.update.snapshot && !self.update.removals.is_empty() {
            return Err(self.fail("a snapshot carries no removals".into()));
        }
        if self.update.snapshot && (self.update.bundle.is_none() || self.update.gateways.is_none())
        {
            return Err(self.fail("a snapshot must carry the bundle and the gateway set".into()));
        }
        Ok(self.update)
    }
}

/// Reassembles and checks a multi-part update (`more = true` on all but the last part), one part
/// at a time. Bounded: a peer that sends too much is refused; an update refused part-way is
/// refused whole, and its remaining parts are dropped (never taken for the start of another
/// update).
#[derive(Debug, Default)]
pub struct Reassembly {
    pending: Option<Checked>,
    /// The update (epoch, version, snapshot) refused part-way whose last part has not arrived.
    refused: Option<(String, u64, bool)>,
}

impl Reassembly {
    /// Checks `part` of an update from `peer`; returns the whole checked update when `part`
    /// completes it. An `Err` refuses the update the part belongs to (NACK its version).
    pub fn push(
        &mut self,
        part: &proto::CatalogUpdate,
        peer: &ClusterName,
        peer_td: &TrustDomain,
    ) -> Result<Option<PeerUpdate>, UpdateError> {
        if let Some((epoch, version, snapshot)) = &self.refused {
            let same =
                *epoch == part.epoch && *version == part.version && *snapshot == part.snapshot;
            if same {
                if !part.more {
                    self.refused = None;
                }
                return Ok(None);
            }
            self.refused = None;
        }
        let result = self.check(part, peer, peer_td);
        if result.is_err() {
            self.pending = None;
            if part.more {
                self.refused = Some((part.epoch.clone(), part.version, part.snapshot));
            }
        }
        result
    }

    fn check(
        &mut self,
        part: &proto::CatalogUpdate,
        peer: &ClusterName,
        peer_td: &TrustDomain,
    ) -> Result<Option<PeerUpdate>, UpdateError> {
        let mut checked = match self.pending.take() {
            Some(pending) => pending,
            None => Checked::start(part, peer, peer_td)?,
        };
        checked.add(part)?;
        if part.more {
            self.pending = Some(checked);
            Ok(None)
        } else {
            checked.finish().map(Some)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Ca, Kek};

    fn peer() -> (ClusterName, TrustDomain, proto::TrustBundle) {
        let td: TrustDomain = "west.mesh".parse().expect("td");
        let kek = Kek::generate().expect("kek");
        let ca = Ca::generate(td.clone(), &kek, std::time::Duration::from_secs(3600)).expect("ca");
        (
            ClusterName::new("west").expect("name"),
            td,
            ca.bundle().to_proto(),
        )
    }

    fn summary(name: &str, port: u32) -> proto::ServiceSummary {
        proto::ServiceSummary {
            key: Some(proto::ServiceKey {
                namespace: "shop".into(),
                name: name.into(),
            }),
            ports: vec![proto::ServicePort {
                name: String::new(),
                port,
                protocol: proto::Protocol::Http as i32,
            }],
            weight: 100,
            ..Default::default()
        }
    }

    fn snapshot(bundle: &proto::TrustBundle) -> proto::CatalogUpdate {
        proto::CatalogUpdate {
            version: 5,
            epoch: "e1".into(),
            snapshot: true,
            upserts: vec![summary("cart", 80), summary("pay", 81)],
            removals: vec![],
            bundle: Some(bundle.clone()),
            gateways: Some(proto::GatewaySet {
                gateways: vec![proto::GatewayAddress {
                    name: "gw-1".into(),
                    address: "127.0.0.1:15443".into(),
                    zone: "a".into(),
                }],
            }),
            more: false,
            cluster: "west".into(),
        }
    }

    #[test]
    fn a_valid_snapshot_is_accepted() {
        let (name, td, bundle) = peer();
        let u = validate(&snapshot(&bundle), &name, &td).expect("valid");
        assert_eq!((u.version, u.upserts.len(), u.snapshot), (5, 2, true));
        assert_eq!(u.gateways.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn gateways_are_dialled_at_an_ip_or_a_dns_name_with_a_port() {
        let addr = |a: &str| {
            GatewayAddr::from_proto(&proto::GatewayAddress {
                name: "gw".into(),
                address: a.into(),
                zone: String::new(),
            })
            .map(|g| g.address)
        };
        assert_eq!(addr("192.0.2.1:15008"), Ok("192.0.2.1:15008".into()));
        assert_eq!(addr("[2001:db8::1]:443"), Ok("[2001:db8::1]:443".into()));
        assert_eq!(
            addr("A1B2.elb.Example.com:443"),
            Ok("a1b2.elb.example.com:443".into())
        );
        for bad in [
            "192.0.2.1",
            "192.0.2.1:0",
            "lb.example.com",
            "lb.example.com:0",
            "not a name:443",
            ":443",
        ] {
            assert!(addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_updates_are_refused_whole() {
        let (name, td, bundle) = peer();
        type Mutate = fn(&mut proto::CatalogUpdate);
        let cases: &[(&str, Mutate)] = &[
            ("another cluster's catalog", |u| u.cluster = "east".into()),
            ("no cluster", |u| u.cluster = String::new()),
            ("version 0", |u| u.version = 0),
            ("empty epoch", |u| u.epoch = String::new()),
            ("huge epoch", |u| u.epoch = "e".repeat(65)),
            ("the same key twice", |u| {
                u.upserts.push(summary("cart", 80))
            }),
            ("upsert and removal of one key", |u| {
                u.snapshot = false;
                u.removals.push(proto::ServiceKey {
                    namespace: "shop".into(),
                    name: "cart".into(),
                })
            }),
            ("a snapshot with removals", |u| {
                u.removals.push(proto::ServiceKey {
                    namespace: "shop".into(),
                    name: "gone".into(),
                })
            }),
            ("a snapshot without its bundle", |u| u.bundle = None),
            ("a snapshot without its gateways", |u| u.gateways = None),
            ("a bundle for another trust domain", |u| {
                if let Some(b) = u.bundle.as_mut() {
                    b.trust_domain = "east.mesh".into();
                }
            }),
            ("a corrupt bundle", |u| {
                if let Some(b) = u.bundle.as_mut() {
                    b.spiffe_json = "{not json".into();
                }
            }),
            ("an invalid service name", |u| {
                u.upserts[0] = summary("Cart!", 80)
            }),
            ("port 0", |u| u.upserts[0] = summary("cart", 0)),
            ("port 70000", |u| u.upserts[0] = summary("cart", 70_000)),
            ("a gateway without a port", |u| {
                if let Some(g) = u.gateways.as_mut() {
                    g.gateways[0].address = "127.0.0.1".into();
                }
            }),
            ("too many gateways", |u| {
                if let Some(g) = u.gateways.as_mut() {
                    let one = g.gateways[0].clone();
                    g.gateways = vec![one; MAX_GATEWAYS + 1];
                }
            }),
            ("too many services", |u| {
                u.upserts = (0..=MAX_SERVICES_PER_PEER)
                    .map(|i| summary(&format!("s{i}"), 80))
                    .collect()
            }),
        ];
        for (what, mutate) in cases {
            let mut u = snapshot(&bundle);
            mutate(&mut u);
            let err = validate(&u, &name, &td).expect_err(what);
            assert_eq!(err.peer, name, "{what}");
            assert!(!err.reason.is_empty(), "{what}");
        }
    }

    #[test]
    fn split_and_reassemble_round_trip() {
        let (name, td, bundle) = peer();
        let mut big = snapshot(&bundle);
        big.upserts = (0..(SERVICES_PER_MESSAGE * 2 + 7))
            .map(|i| summary(&format!("s{i}"), 80))
            .collect();
        let parts = split(big.clone());
        assert_eq!(parts.len(), 3);
        assert!(parts[..2].iter().all(|p| p.more) && !parts[2].more);
        assert!(parts[0].bundle.is_some() && parts[1].bundle.is_none());
        let mut r = Reassembly::default();
        let mut whole = None;
        for p in &parts {
            whole = r.push(p, &name, &td).expect("parts fit");
        }
        assert_eq!(
            whole.expect("complete"),
            validate(&big, &name, &td).expect("valid")
        );
        // Services of one update share their namespace text.
        let whole = validate(&big, &name, &td).expect("valid");
        assert_eq!(
            whole.upserts[0].key.namespace.as_str().as_ptr(),
            whole.upserts[1].key.namespace.as_str().as_ptr()
        );
    }

    #[test]
    fn truncated_and_oversized_multi_part_updates_are_refused() {
        let (name, td, bundle) = peer();
        // A part of another version while one is incomplete (the first was truncated).
        let mut r = Reassembly::default();
        let mut first = snapshot(&bundle);
        first.more = true;
        assert_eq!(r.push(&first, &name, &td).expect("first part"), None);
        let mut other = snapshot(&bundle);
        other.version = 6;
        assert!(r.push(&other, &name, &td).is_err());
        // Parts that add up to more than a peer may send.
        let mut r = Reassembly::default();
        let chunk: Vec<_> = (0..100_001)
            .map(|i| summary(&format!("s{i}"), 80))
            .collect();
        let mut a = snapshot(&bundle);
        a.upserts = chunk.clone();
        a.more = true;
        let mut b = a.clone();
        b.more = false;
        assert_eq!(r.push(&a, &name, &td).expect("first half"), None);
        assert!(
            r.push(&b, &name, &td).is_err(),
            "over MAX_SERVICES_PER_PEER in total"
        );
    }

    #[test]
    fn an_update_refused_part_way_is_refused_whole() {
        let (name, td, bundle) = peer();
        let mut big = snapshot(&bundle);
        big.snapshot = false;
        big.upserts = (0..(SERVICES_PER_MESSAGE * 3))
            .map(|i| summary(&format!("s{i}"), 80))
            .collect();
        // A bad service in the second of three parts.
        big.upserts[SERVICES_PER_MESSAGE + 1] = summary("Bad!", 80);
        let parts = split(big);
        let mut r = Reassembly::default();
        assert_eq!(r.push(&parts[0], &name, &td).expect("good part"), None);
        assert!(r.push(&parts[1], &name, &td).is_err(), "refused");
        // The rest of that update is dropped, not taken for an update of its own.
        assert_eq!(r.push(&parts[2], &name, &td).expect("dropped"), None);
        // The next update is checked normally.
        let next = snapshot(&bundle);
        assert!(r.push(&next, &name, &td).expect("valid").is_some());
    }
}
