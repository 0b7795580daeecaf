//! Parsing a query off the wire: header, the one question, and the additional section (EDNS OPT
//! with its Client Subnet option). Hand-written and bounds-checked on every byte, because it runs
//! on every UDP packet anyone sends: no allocation, no recursion, no pointer chasing (a question
//! name may not be compressed, and names in the additional section are skipped, not followed).
//!
//! Anything that is not a well-formed query becomes [`Parsed::Drop`] (too short to answer, or a
//! response: never answer those, it makes reflection loops), [`Parsed::FormErr`] or
//! [`Parsed::NotImp`].

use std::net::IpAddr;

use crate::name::MAX_NAME;

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_IXFR: u16 = 251;
pub const TYPE_AXFR: u16 = 252;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
/// EDNS option code of Client Subnet (RFC 7871).
pub const OPT_ECS: u16 = 8;

/// EDNS Client Subnet as the query carried it (echoed in the response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSubnet {
    pub source_prefix: u8,
    /// The address, host bits zero.
    pub addr: IpAddr,
}

impl ClientSubnet {
    pub fn family(&self) -> u16 {
        if self.addr.is_ipv4() { 1 } else { 2 }
    }

    /// Address bytes on the wire: just enough for the source prefix.
    pub fn addr_len(&self) -> usize {
        usize::from(self.source_prefix).div_ceil(8)
    }

    pub fn addr_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        match self.addr {
            IpAddr::V4(v) => b[..4].copy_from_slice(&v.octets()),
            IpAddr::V6(v) => b.copy_from_slice(&v.octets()),
        }
        b
    }
}

/// The query's OPT record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// Requestor's UDP payload size (values under 512 count as 512).
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
    pub client_subnet: Option<ClientSubnet>,
}

/// A well-formed query.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub id: u16,
    /// The query's flag bits (RD and CD are copied into the response).
    pub flags: u16,
    /// The question exactly as sent (name in the client's spelling, type, class), echoed back.
    pub question: &'a [u8],
    /// The question name, lowercase wire form (a prefix of the caller's buffer).
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

#[derive(Debug, Clone, Copy)]
pub enum Parsed<'a> {
    Query(Query<'a>),
    /// Answer FORMERR; the question is echoed when it could be read.
    FormErr {
        id: u16,
        flags: u16,
        question: Option<&'a [u8]>,
    },
    /// An opcode other than QUERY.
    NotImp {
        id: u16,
        flags: u16,
    },
    /// Not worth (or not safe) answering.
    Drop,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.buf.get(self.pos..self.pos + 2)?;
        self.pos += 2;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.buf.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(b)
    }

    /// Skips a name that may end in a compression pointer (never followed: only its two bytes
    /// are checked to point backwards, inside the message).
    fn skip_name(&mut self) -> Option<()> {
        let mut total = 0usize;
        loop {
            let len = self.u8()?;
            match len & 0xC0 {
                0x00 if len == 0 => return Some(()),
                0x00 => {
                    total += usize::from(len) + 1;
                    if total > MAX_NAME {
                        return None;
                    }
                    self.take(usize::from(len))?;
                }
                0xC0 => {
                    let lo = self.u8()?;
                    let target = (usize::from(len & 0x3F) << 8) | usize::from(lo);
                    // A pointer must point backwards, to a name that started before it.
                    if target >= self.pos - 2 {
                        return None;
                    }
                    return Some(());
                }
                // 0x40 / 0x80: extended label types (obsolete); refuse.
                _ => return None,
            }
        }
    }
}

/// Parses `packet`; the lowercase question name is written to `qname_buf`.
pub fn parse<'a>(packet: &'a [u8], qname_buf: &'a mut [u8; MAX_NAME]) -> Parsed<'a> {
    if packet.len() < 12 {
        return Parsed::Drop;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let flags = u16::from_be_bytes([packet[2], packet[3]]);
    if flags & 0x8000 != 0 {
        return Parsed::Drop;
    }
    let count = |i: usize| u16::from_be_bytes([packet[i], packet[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    let opcode = (flags >> 11) & 0xF;
    if opcode != 0 {
        return Parsed::NotImp { id, flags };
    }
    let formerr = |question| Parsed::FormErr {
        id,
        flags,
        question,
    };
    if qd != 1 {
        return formerr(None);
    }
    // The question name: plain labels only (a pointer at offset 12 could only point into the
    // header), lowercased into the caller's buffer.
    let mut r = Reader {
        buf: packet,
        pos: 12,
    };
    let mut n = 0usize;
    loop {
        let Some(len) = r.u8() else {
            return formerr(None);
        };
        if len == 0 {
            if n >= MAX_NAME {
                return formerr(None);
            }
            qname_buf[n] = 0;
            n += 1;
            break;
        }
        if len & 0xC0 != 0 {
            return formerr(None);
        }
        let len = usize::from(len);
        if n + 1 + len + 1 > MAX_NAME {
            return formerr(None);
        }
        let Some(label) = r.take(len) else {
            return formerr(None);
        };
        qname_buf[n] = len as u8;
        for (dst, src) in qname_buf[n + 1..n + 1 + len].iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        n += 1 + len;
    }
    let (Some(qtype), Some(qclass)) = (r.u16(), r.u16()) else {
        return formerr(None);
    };
    let question = &packet[12..r.pos];
    if an != 0 || ns != 0 {
        return formerr(Some(question));
    }
    let mut edns = None;
    for _ in 0..ar {
        match read_additional(&mut r) {
            Some(Some(opt)) if edns.is_none() => edns = Some(opt),
            // A second OPT (RFC 6891 §6.1.1) or a malformed record.
            Some(Some(_)) | None => return formerr(Some(question)),
            Some(None) => {}
        }
    }
    if r.pos != packet.len() {
        return formerr(Some(question));
    }
    Parsed::Query(Query {
        id,
        flags,
        question,
        qname: &qname_buf[..n],
        qtype,
        qclass,
        edns,
    })
}

/// One additional record: `Some(Some(edns))` for a valid OPT, `Some(None)` for another record
/// (skipped), `None` when malformed.
fn read_additional(r: &mut Reader<'_>) -> Option<Option<Edns>> {
    let name_start = r.pos;
    r.skip_name()?;
    let root_owner = r.pos == name_start + 1;
    let rtype = r.u16()?;
    let class = r.u16()?;
    let ttl = r.u32()?;
    let rdlen = usize::from(r.u16()?);
    let rdata = r.take(rdlen)?;
    if rtype != TYPE_OPT {
        return Some(None);
    }
    if !root_owner {
        return None;
    }
    let mut edns = Edns {
        payload: class.max(512),
        version: (ttl >> 16) as u8,
        dnssec_ok: ttl & 0x8000 != 0,
        client_subnet: None,
    };
    let mut o = Reader { buf: rdata, pos: 0 };
    while o.pos < rdata.len() {
        let code = o.u16()?;
        let len = usize::from(o.u16()?);
        let data = o.take(len)?;
        if code == OPT_ECS && edns.client_subnet.is_none() {
            edns.client_subnet = Some(read_client_subnet(data)?);
        }
    }
    Some(Some(edns))
}

/// RFC 7871 §6: family, source prefix, scope prefix (0 in queries), and exactly as many address
/// bytes as the source prefix needs, with the bits past it zero.
fn read_client_subnet(data: &[u8]) -> Option<ClientSubnet> {
    let family = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
    let source = *data.get(2)?;
    let scope = *data.get(3)?;
    let addr = data.get(4..)?;
    let max = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    if source > max || scope != 0 || addr.len() != usize::from(source).div_ceil(8) {
        return None;
    }
    if let Some(&last) = addr.last() {
        let used = source % 8;
        if used != 0 && last & (0xFFu8 >> used) != 0 {
            return None;
        }
    }
    let mut bytes = [0u8; 16];
    bytes[..addr.len()].copy_from_slice(addr);
    let addr = if family == 1 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(bytes)
    };
    Some(ClientSubnet {
        source_prefix: source,
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], qtype: u16, additional: &[u8], arcount: u16) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0];
        p.extend_from_slice(&arcount.to_be_bytes());
        p.extend_from_slice(name);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
        p.extend_from_slice(additional);
        p
    }

    fn opt(payload: u16, version: u8, options: &[u8]) -> Vec<u8> {
        let mut o = vec![0, 0, 41];
        o.extend_from_slice(&payload.to_be_bytes());
        o.extend_from_slice(&[0, version, 0x80, 0]);
        o.extend_from_slice(&(options.len() as u16).to_be_bytes());
        o.extend_from_slice(options);
        o
    }

    fn kind(p: &Parsed<'_>) -> &'static str {
        match p {
            Parsed::Query(_) => "query",
            Parsed::FormErr { .. } => "formerr",
            Parsed::NotImp { .. } => "notimp",
            Parsed::Drop => "drop",
        }
    }

    #[test]
    fn a_plain_query_and_its_lowercase_name() {
        let p = query(b"\x04Echo\x04DEMO\x00", TYPE_A, &[], 0);
        let mut buf = [0u8; MAX_NAME];
        let Parsed::Query(q) = parse(&p, &mut buf) else {
            panic!("not a query")
        };
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.qname, b"\x04echo\x04demo\x00");
        assert_eq!(q.question, &p[12..]);
        assert_eq!((q.qtype, q.qclass), (TYPE_A, CLASS_IN));
        assert!(q.edns.is_none());
    }

    #[test]
    fn edns_and_client_subnet() {
        // ECS: family 1, source 24, scope 0, 3 address bytes.
        let ecs = [0, 8, 0, 7, 0, 1, 24, 0, 10, 1, 2];
        let p = query(b"\x01a\x00", TYPE_A, &opt(4096, 0, &ecs), 1);
        let mut buf = [0u8; MAX_NAME];
        let Parsed::Query(q) = parse(&p, &mut buf) else {
            panic!("not a query")
        };
        let e = q.edns.expect("edns");
        assert_eq!((e.payload, e.version, e.dnssec_ok), (4096, 0, true));
        let cs = e.client_subnet.expect("ecs");
        assert_eq!(cs.addr.to_string(), "10.1.2.0");
        assert_eq!(cs.source_prefix, 24);
        let small = query(b"\x01a\x00", TYPE_A, &opt(100, 0, &[]), 1);
        let Parsed::Query(q) = parse(&small, &mut buf) else {
            panic!("not a query")
        };
        assert_eq!(q.edns.map(|e| e.payload), Some(512));
    }

    #[test]
    fn malformed_table() {
        let name = b"\x01a\x00";
        let mut long_label = vec![64u8];
        long_label.extend([b'x'; 64]);
        long_label.push(0);
        let mut long_name = Vec::new();
        for _ in 0..5 {
            long_name.push(63);
            long_name.extend([b'y'; 63]);
        }
        long_name.push(0);
        let bad_ecs_scope = [0, 8, 0, 7, 0, 1, 24, 8, 10, 1, 2];
        let bad_ecs_bits = [0, 8, 0, 7, 0, 1, 23, 0, 10, 1, 3];
        let bad_ecs_len = [0, 8, 0, 8, 0, 1, 24, 0, 10, 1, 2, 0];
        let mut two_opts = opt(1232, 0, &[]);
        two_opts.extend(opt(1232, 0, &[]));
        let mut response = query(name, TYPE_A, &[], 0);
        response[2] |= 0x80;
        let mut notify = query(name, TYPE_SOA, &[], 0);
        notify[2] = 4 << 3;
        let mut qd0 = query(name, TYPE_A, &[], 0);
        qd0[5] = 0;
        let mut qd_max = query(name, TYPE_A, &[], 0);
        qd_max[4] = 0xFF;
        qd_max[5] = 0xFF;
        let mut with_answer = query(name, TYPE_A, &[], 0);
        with_answer[7] = 1;
        let mut loop_ptr = query(name, TYPE_A, &[], 0);
        loop_ptr.truncate(12);
        loop_ptr.extend([0xC0, 12, 0, 1, 0, 1]);
        let mut opt_forward_ptr = query(name, TYPE_A, &[0xC0, 0xFF], 1);
        opt_forward_ptr.extend([0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "drop"),
            ("short header", vec![0; 11], "drop"),
            ("a response", response, "drop"),
            ("opcode NOTIFY", notify, "notimp"),
            ("qdcount 0", qd0, "formerr"),
            ("qdcount 65535", qd_max, "formerr"),
            ("answer in a query", with_answer, "formerr"),
            (
                "question cut",
                query(name, TYPE_A, &[], 0)[..15].to_vec(),
                "formerr",
            ),
            ("pointer in question", loop_ptr, "formerr"),
            (
                "label over 63",
                query(&long_label, TYPE_A, &[], 0),
                "formerr",
            ),
            (
                "name over 255",
                query(&long_name, TYPE_A, &[], 0),
                "formerr",
            ),
            (
                "arcount without record",
                query(name, TYPE_A, &[], 1),
                "formerr",
            ),
            ("two OPTs", query(name, TYPE_A, &two_opts, 2), "formerr"),
            (
                "OPT rdata short",
                query(name, TYPE_A, &opt(1232, 0, &[0, 8, 0, 9]), 1),
                "formerr",
            ),
            (
                "ECS scope",
                query(name, TYPE_A, &opt(1232, 0, &bad_ecs_scope), 1),
                "formerr",
            ),
            (
                "ECS host bits",
                query(name, TYPE_A, &opt(1232, 0, &bad_ecs_bits), 1),
                "formerr",
            ),
            (
                "ECS length",
                query(name, TYPE_A, &opt(1232, 0, &bad_ecs_len), 1),
                "formerr",
            ),
            ("forward pointer", opt_forward_ptr, "formerr"),
            ("trailing bytes", query(name, TYPE_A, &[0, 0], 0), "formerr"),
            ("good", query(name, TYPE_A, &opt(1232, 0, &[]), 1), "query"),
            (
                "unknown version parses",
                query(name, TYPE_A, &opt(1232, 1, &[]), 1),
                "query",
            ),
        ];
        for (what, packet, want) in cases {
            let mut buf = [0u8; MAX_NAME];
            assert_eq!(kind(&parse(&packet, &mut buf)), want, "{what}");
        }
    }
}
