//! One query in, one response out: the whole authoritative logic, shared by the UDP fast path
//! and the TCP adapter. Writes the response into a caller-owned buffer (reused across queries):
//! header with the query's ID and RD/CD bits, the question echoed byte for byte (so the client's
//! spelling of the name comes back, and the pre-encoded answers' compression pointers land on
//! it), the pre-encoded sections, then an OPT record when the query had one.
//!
//! | query | response |
//! |---|---|
//! | name in a zone, type present | NOERROR, AA, the RRset (+ additional addresses) |
//! | name exists, type absent (incl. empty non-terminals) | NOERROR, AA, no answer, SOA in authority (NODATA) |
//! | name absent in a zone | NXDOMAIN, AA, SOA in authority |
//! | ANY | one RRset (RFC 8482), else NODATA |
//! | name outside every zone, class not IN, AXFR/IXFR | REFUSED (no recursion, no amplification) |
//! | EDNS version > 0 | BADVERS |
//! | malformed | FORMERR, or nothing when it is not even a query |
//! | over the UDP size (512, or the client's EDNS size capped at `udp_payload`) | additional section dropped; then TC=1 with no records |

use std::net::IpAddr;

use crate::name::MAX_NAME;
use crate::packet::{
    self, CLASS_IN, ClientSubnet, Edns, OPT_ECS, Parsed, Query, TYPE_ANY, TYPE_AXFR, TYPE_IXFR,
    TYPE_OPT,
};
use crate::snapshot::{Answer, Body, Snapshot};

pub const NOERROR: u8 = 0;
pub const FORMERR: u8 = 1;
pub const NXDOMAIN: u8 = 3;
pub const NOTIMP: u8 = 4;
pub const REFUSED: u8 = 5;
/// Extended RCODE (EDNS): 16.
pub const BADVERS: u16 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What happened, for metrics (and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// `None`: nothing was written (drop).
    pub rcode: Option<u16>,
    pub qtype: u16,
    pub truncated: bool,
    /// The answer is a NODATA (NOERROR without records).
    pub nodata: bool,
}

impl Outcome {
    const DROP: Outcome = Outcome {
        rcode: None,
        qtype: 0,
        truncated: false,
        nodata: false,
    };
}

const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const CD: u16 = 0x0010;

struct Sections<'a> {
    body: &'a [u8],
    main_len: usize,
    answers: u16,
    additionals: u16,
    /// Negative answer: SOA owner pointer offset (into the echoed question) and SOA tail.
    soa: Option<(u16, &'a [u8])>,
}

const EMPTY: Sections<'static> = Sections {
    body: &[],
    main_len: 0,
    answers: 0,
    additionals: 0,
    soa: None,
};

fn header(out: &mut Vec<u8>, id: u16, flags: u16, counts: [u16; 4]) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

/// The response OPT: our payload size, extended RCODE, version 0, DO copied (RFC 3225), and the
/// Client Subnet option echoed with `scope` (RFC 7871 §7.2.1).
fn opt(out: &mut Vec<u8>, payload: u16, rcode: u16, edns: &Edns, scope: u8) {
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&payload.to_be_bytes());
    out.push((rcode >> 4) as u8);
    out.push(0);
    out.extend_from_slice(&(if edns.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
    match &edns.client_subnet {
        Some(cs) => {
            let alen = cs.addr_len();
            out.extend_from_slice(&((8 + alen) as u16).to_be_bytes());
            out.extend_from_slice(&OPT_ECS.to_be_bytes());
            out.extend_from_slice(&((4 + alen) as u16).to_be_bytes());
            out.extend_from_slice(&cs.family().to_be_bytes());
            out.push(cs.source_prefix);
            out.push(scope);
            out.extend_from_slice(&cs.addr_bytes()[..alen]);
        }
        None => out.extend_from_slice(&0u16.to_be_bytes()),
    }
}

/// Answers `packet` from `snap` into `out` (cleared first). `client` is the source address
/// (GSLB region when the query carries no Client Subnet).
pub fn respond(
    snap: &Snapshot,
    packet: &[u8],
    client: IpAddr,
    transport: Transport,
    out: &mut Vec<u8>,
) -> Outcome {
    out.clear();
    let mut qname_buf = [0u8; MAX_NAME];
    let q = match packet::parse(packet, &mut qname_buf) {
        Parsed::Query(q) => q,
        Parsed::Drop => return Outcome::DROP,
        Parsed::FormErr {
            id,
            flags,
            question,
        } => {
            let qd = u16::from(question.is_some());
            header(
                out,
                id,
                QR | (flags & RD) | u16::from(FORMERR),
                [qd, 0, 0, 0],
            );
            out.extend_from_slice(question.unwrap_or_default());
            return Outcome {
                rcode: Some(u16::from(FORMERR)),
                ..Outcome::DROP
            };
        }
        Parsed::NotImp { id, flags } => {
            header(
                out,
                id,
                QR | (flags & (0x7800 | RD)) | u16::from(NOTIMP),
                [0; 4],
            );
            return Outcome {
                rcode: Some(u16::from(NOTIMP)),
                ..Outcome::DROP
            };
        }
    };
    let limit = match (transport, &q.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => 512,
        (Transport::Udp, Some(e)) => usize::from(e.payload.min(snap.udp_payload).max(512)),
    };
    if let Some(e) = &q.edns
        && e.version != 0
    {
        write(out, &q, snap, 0, BADVERS, EMPTY, 0, limit);
        return outcome(&q, BADVERS, false, false);
    }
    if q.qtype == TYPE_OPT {
        write(out, &q, snap, 0, u16::from(FORMERR), EMPTY, 0, limit);
        return outcome(&q, u16::from(FORMERR), false, false);
    }
    let zone = if q.qclass == CLASS_IN && q.qtype != TYPE_AXFR && q.qtype != TYPE_IXFR {
        snap.zone_of(q.qname)
    } else {
        None
    };
    let Some(zone_idx) = zone else {
        write(out, &q, snap, 0, u16::from(REFUSED), EMPTY, 0, limit);
        return outcome(&q, u16::from(REFUSED), false, false);
    };
    let z = &snap.zones[zone_idx];
    let negative = |soa_tail| Sections {
        soa: Some((12 + (q.qname.len() - z.apex.len()) as u16, soa_tail)),
        ..EMPTY
    };
    let Some(node) = snap.nodes.get(q.qname) else {
        let t = write(
            out,
            &q,
            snap,
            AA,
            u16::from(NXDOMAIN),
            negative(&z.soa_tail),
            0,
            limit,
        );
        return outcome(&q, u16::from(NXDOMAIN), t, false);
    };
    let answer = if q.qtype == TYPE_ANY {
        node.any
            .and_then(|i| node.answers.get(usize::from(i)))
            .map(|(_, a)| a)
    } else {
        node.answer(q.qtype)
    };
    let (body, scope) = match answer {
        Some(Answer::Fixed(b)) => (Some(b), 0),
        Some(Answer::ByGroup(bodies)) => {
            let (group, scope) = region_group(snap, &q, client);
            (bodies.get(group).filter(|b| b.answers > 0), scope)
        }
        None => (None, 0),
    };
    match body {
        Some(b) => {
            let t = write(
                out,
                &q,
                snap,
                AA,
                u16::from(NOERROR),
                sections(b),
                scope,
                limit,
            );
            outcome(&q, u16::from(NOERROR), t, false)
        }
        None => {
            let t = write(
                out,
                &q,
                snap,
                AA,
                u16::from(NOERROR),
                negative(&z.soa_tail),
                scope,
                limit,
            );
            outcome(&q, u16::from(NOERROR), t, true)
        }
    }
}

fn sections(b: &Body) -> Sections<'_> {
    Sections {
        body: &b.bytes,
        main_len: b.main_len,
        answers: b.answers,
        additionals: b.additionals,
        soa: None,
    }
}

fn outcome(q: &Query<'_>, rcode: u16, truncated: bool, nodata: bool) -> Outcome {
    Outcome {
        rcode: Some(rcode),
        qtype: q.qtype,
        truncated,
        nodata,
    }
}

/// The client's GSLB region group and the prefix length that decided it (the ECS scope).
fn region_group(snap: &Snapshot, q: &Query<'_>, client: IpAddr) -> (usize, u8) {
    let Some(g) = &snap.gslb else {
        return (0, 0);
    };
    let ecs: Option<&ClientSubnet> = q
        .edns
        .as_ref()
        .and_then(|e| e.client_subnet.as_ref())
        .filter(|cs| g.client_subnet && cs.source_prefix > 0);
    match ecs {
        Some(cs) => {
            let (group, prefix) = g.group_of(cs.addr);
            (group, prefix.min(cs.source_prefix))
        }
        None => (g.group_of(client).0, 0),
    }
}

/// Writes the response; returns whether it had to be truncated (TC=1).
#[allow(clippy::too_many_arguments)]
fn write(
    out: &mut Vec<u8>,
    q: &Query<'_>,
    snap: &Snapshot,
    aa: u16,
    rcode: u16,
    s: Sections<'_>,
    scope: u8,
    limit: usize,
) -> bool {
    let opt_len = q.edns.as_ref().map_or(0, |e| {
        11 + e.client_subnet.as_ref().map_or(0, |cs| 8 + cs.addr_len())
    });
    let soa_len = s.soa.map_or(0, |(_, tail)| 2 + tail.len());
    let fixed = 12 + q.question.len() + opt_len;
    let flags_base = QR | aa | (q.flags & (RD | CD)) | (rcode & 0xF);
    let (mut body_len, mut additionals) = (s.body.len(), s.additionals);
    let mut tc = 0;
    if fixed + body_len + soa_len > limit {
        // Drop the additional section first (no TC needed: RFC 2181 §9).
        body_len = s.main_len;
        additionals = 0;
        if fixed + body_len + soa_len > limit {
            tc = TC;
        }
    }
    let ar = additionals + u16::from(q.edns.is_some());
    if tc != 0 {
        header(
            out,
            q.id,
            flags_base | TC,
            [1, 0, 0, u16::from(q.edns.is_some())],
        );
        out.extend_from_slice(q.question);
    } else {
        let ns = u16::from(s.soa.is_some());
        header(out, q.id, flags_base, [1, s.answers, ns, ar]);
        out.extend_from_slice(q.question);
        out.extend_from_slice(&s.body[..s.main_len]);
        if let Some((ptr, tail)) = s.soa {
            out.extend_from_slice(&(0xC000 | ptr).to_be_bytes());
            out.extend_from_slice(tail);
        }
        out.extend_from_slice(&s.body[s.main_len..body_len]);
    }
    if let Some(e) = &q.edns {
        opt(out, snap.udp_payload, rcode, e, scope);
    }
    tc != 0
}
