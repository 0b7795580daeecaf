//! The immutable, query-ready form of a zone: a [`NameTable`] from lowercase wire name to node,
//! and for every (node, type) the answer already encoded as response bytes (answer and
//! additional sections) whose names point into the echoed question. Answering a hit is one hash
//! lookup and a copy; NXDOMAIN and NODATA are one lookup (plus a few byte compares to find the
//! zone) and a copy of the zone's pre-encoded SOA. Nothing here is allocated per query.
//!
//! [`compile`] encodes a whole [`Plan`]; [`crate::rebuild`] encodes only the names that changed
//! into a copy of the previous table (sharing the rest), with the same [`encode_node`].
//! Snapshots are swapped whole (`arc-swap`); a query never sees a half-built zone.

use std::net::IpAddr;
use std::time::SystemTime;

use crate::name;
use crate::packet::{TYPE_A, TYPE_AAAA, TYPE_NS, TYPE_SOA, TYPE_SRV};
use crate::settings::{Gslb, SOA_EXPIRE, SOA_REFRESH, SOA_RETRY, Settings};
use crate::table::NameTable;
use crate::zone::{NodePlan, Plan, Rdata};

const CLASS_IN: u16 = 1;

/// Pre-encoded sections of one answer: `bytes[..main_len]` is the answer section,
/// `bytes[main_len..]` the additional section (dropped first when the response must shrink).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    pub bytes: Box<[u8]>,
    pub main_len: usize,
    pub answers: u16,
    pub additionals: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Fixed(Body),
    /// GSLB: one body per client region group.
    ByGroup(Box<[Body]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub zone: u16,
    /// `(qtype, answer)`; at most a handful.
    pub answers: Box<[(u16, Answer)]>,
    /// What an ANY query gets (RFC 8482: one RRset): index into `answers`.
    pub any: Option<u8>,
}

impl Node {
    pub fn answer(&self, qtype: u16) -> Option<&Answer> {
        self.answers
            .iter()
            .find(|(t, _)| *t == qtype)
            .map(|(_, a)| a)
    }
}

/// A zone's authority data for negative answers.
#[derive(Debug, Clone)]
pub struct ZoneAuth {
    pub apex: Box<[u8]>,
    /// The SOA record after its owner name: type, class, TTL, rdata.
    pub soa_tail: Box<[u8]>,
}

pub struct Snapshot {
    pub zones: Vec<ZoneAuth>,
    pub nodes: NameTable,
    pub gslb: Option<Gslb>,
    pub udp_payload: u16,
    /// The mesh view it was built from.
    pub view_version: u64,
    pub serial: u32,
    pub built_at: SystemTime,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("names", &self.nodes.len())
            .field("view_version", &self.view_version)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// The zone `qname` falls in (index into `zones`).
    pub fn zone_of(&self, qname: &[u8]) -> Option<usize> {
        self.zones
            .iter()
            .position(|z| name::in_zone(qname, &z.apex))
    }

    /// Puts the parts together.
    pub fn new(
        zones: Vec<ZoneAuth>,
        nodes: NameTable,
        settings: &Settings,
        serial: u32,
        view_version: u64,
    ) -> Self {
        Snapshot {
            zones,
            nodes,
            gslb: settings.gslb.clone(),
            udp_payload: settings.udp_payload,
            view_version,
            serial,
            built_at: SystemTime::now(),
        }
    }
}

fn rr_header(out: &mut Vec<u8>, owner: &[u8], qname: &[u8], rtype: u16, ttl: u32) {
    name::write_compressed(out, owner, qname);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
}

fn rdata_bytes(r: &Rdata, serial: u32, ttl: u32) -> Vec<u8> {
    let mut d = Vec::new();
    match r {
        Rdata::Addr(IpAddr::V4(v)) => d.extend_from_slice(&v.octets()),
        Rdata::Addr(IpAddr::V6(v)) => d.extend_from_slice(&v.octets()),
        // RFC 2782: the SRV target is never compressed.
        Rdata::Srv { port, target } => {
            d.extend_from_slice(&0u16.to_be_bytes());
            d.extend_from_slice(&100u16.to_be_bytes());
            d.extend_from_slice(&port.to_be_bytes());
            d.extend_from_slice(target);
        }
        Rdata::Ns(n) => d.extend_from_slice(n),
        Rdata::Soa { mname, rname } => {
            d.extend_from_slice(mname);
            d.extend_from_slice(rname);
            for v in [serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, ttl] {
                d.extend_from_slice(&v.to_be_bytes());
            }
        }
    }
    d
}

fn rtype_of(r: &Rdata) -> u16 {
    match r {
        Rdata::Addr(IpAddr::V4(_)) => TYPE_A,
        Rdata::Addr(IpAddr::V6(_)) => TYPE_AAAA,
        Rdata::Srv { .. } => TYPE_SRV,
        Rdata::Ns(_) => TYPE_NS,
        Rdata::Soa { .. } => TYPE_SOA,
    }
}

/// Encodes records of one owner (`qname`) plus additional address records.
fn body(
    qname: &[u8],
    answers: &[&Rdata],
    additional: &[(&[u8], IpAddr)],
    serial: u32,
    ttl: u32,
) -> Body {
    let mut out = Vec::with_capacity(answers.len() * 16 + additional.len() * 16);
    for r in answers {
        rr_header(&mut out, qname, qname, rtype_of(r), ttl);
        let d = rdata_bytes(r, serial, ttl);
        out.extend_from_slice(&(d.len() as u16).to_be_bytes());
        out.extend_from_slice(&d);
    }
    let main_len = out.len();
    for (owner, ip) in additional {
        let r = Rdata::Addr(*ip);
        rr_header(&mut out, owner, qname, rtype_of(&r), ttl);
        let d = rdata_bytes(&r, serial, ttl);
        out.extend_from_slice(&(d.len() as u16).to_be_bytes());
        out.extend_from_slice(&d);
    }
    Body {
        bytes: out.into_boxed_slice(),
        main_len,
        answers: answers.len() as u16,
        additionals: additional.len() as u16,
    }
}

/// The zone (index into `zones`) a name falls in.
pub fn zone_index(zones: &[Vec<u8>], owner: &[u8]) -> Option<u16> {
    zones
        .iter()
        .position(|z| name::in_zone(owner, z))
        .map(|i| i as u16)
}

/// Every zone's authority data (negative answers), from the apexes' SOA in `plan`.
pub fn zone_auths(plan: &Plan, settings: &Settings, serial: u32) -> Vec<ZoneAuth> {
    let ttl = settings.ttl;
    settings
        .zones
        .iter()
        .map(|apex| {
            let soa = plan
                .names
                .get(apex)
                .and_then(|n| n.records.iter().find(|r| matches!(r, Rdata::Soa { .. })))
                .cloned()
                .unwrap_or(Rdata::Soa {
                    mname: name::under(&["ns"], apex),
                    rname: name::under(&["hostmaster"], apex),
                });
            let mut tail = Vec::new();
            tail.extend_from_slice(&TYPE_SOA.to_be_bytes());
            tail.extend_from_slice(&CLASS_IN.to_be_bytes());
            tail.extend_from_slice(&ttl.to_be_bytes());
            let d = rdata_bytes(&soa, serial, ttl);
            tail.extend_from_slice(&(d.len() as u16).to_be_bytes());
            tail.extend_from_slice(&d);
            ZoneAuth {
                apex: apex.clone().into_boxed_slice(),
                soa_tail: tail.into_boxed_slice(),
            }
        })
        .collect()
}

/// Encodes one name of zone `zone`. `addresses` gives the address records of another name of the
/// zone, for the additional section (SRV targets, in-zone name servers).
pub fn encode_node(
    owner: &[u8],
    np: &NodePlan,
    zone: u16,
    addresses: &dyn Fn(&[u8]) -> Vec<IpAddr>,
    serial: u32,
    ttl: u32,
) -> Node {
    let mut answers: Vec<(u16, Answer)> = Vec::new();
    for rtype in [TYPE_A, TYPE_AAAA, TYPE_SRV, TYPE_SOA, TYPE_NS] {
        let rs: Vec<&Rdata> = np.records.iter().filter(|r| rtype_of(r) == rtype).collect();
        if rs.is_empty() {
            continue;
        }
        let targets: Vec<&[u8]> = match rtype {
            TYPE_SRV => {
                let mut targets: Vec<&[u8]> = rs
                    .iter()
                    .filter_map(|r| match r {
                        Rdata::Srv { target, .. } => Some(target.as_slice()),
                        _ => None,
                    })
                    .collect();
                targets.dedup();
                targets
            }
            TYPE_NS => rs
                .iter()
                .filter_map(|r| match r {
                    Rdata::Ns(n) if name::in_zone(n, owner) => Some(n.as_slice()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let additional: Vec<(&[u8], IpAddr)> = targets
            .into_iter()
            .flat_map(|t| addresses(t).into_iter().map(move |ip| (t, ip)))
            .collect();
        answers.push((
            rtype,
            Answer::Fixed(body(owner, &rs, &additional, serial, ttl)),
        ));
    }
    if let Some(groups) = &np.by_group {
        for (rtype, v4) in [(TYPE_A, true), (TYPE_AAAA, false)] {
            if answers.iter().any(|(t, _)| *t == rtype) {
                continue;
            }
            let bodies: Vec<Body> = groups
                .iter()
                .map(|ips| {
                    let rs: Vec<Rdata> = ips
                        .iter()
                        .filter(|ip| ip.is_ipv4() == v4)
                        .map(|ip| Rdata::Addr(*ip))
                        .collect();
                    let refs: Vec<&Rdata> = rs.iter().collect();
                    body(owner, &refs, &[], serial, ttl)
                })
                .collect();
            if bodies.iter().any(|b| b.answers > 0) {
                answers.push((rtype, Answer::ByGroup(bodies.into_boxed_slice())));
            }
        }
    }
    // ANY: the apex answers its SOA; other names their first RRset (A, AAAA, SRV).
    let any = [TYPE_SOA, TYPE_A, TYPE_AAAA, TYPE_SRV]
        .iter()
        .find_map(|t| answers.iter().position(|(at, _)| at == t))
        .map(|i| i as u8);
    Node {
        zone,
        answers: answers.into_boxed_slice(),
        any,
    }
}

/// Encodes a whole plan (GSLB targets' addresses, which depend on the client, are left out of
/// additional sections). `serial` is the SOA serial; `view_version` is recorded for metrics.
pub fn compile(plan: &Plan, settings: &Settings, serial: u32, view_version: u64) -> Snapshot {
    let addresses = |target: &[u8]| -> Vec<IpAddr> {
        plan.names
            .get(target)
            .map(|n| n.addresses().collect())
            .unwrap_or_default()
    };
    let mut nodes = NameTable::new();
    for (owner, np) in &plan.names {
        let Some(zone) = zone_index(&settings.zones, owner) else {
            continue;
        };
        let node = encode_node(owner, np, zone, &addresses, serial, settings.ttl);
        nodes.insert(owner, node);
    }
    Snapshot::new(
        zone_auths(plan, settings, serial),
        nodes,
        settings,
        serial,
        view_version,
    )
}
