//! A DNS query from the network: `packet::parse` and `answer::respond` against a small compiled
//! zone (mesh names and a GSLB zone). The first input byte picks the transport and the client
//! address; the rest is the packet.
//!
//! Asserts: a packet the parser drops gets no response; every response echoes the query's id,
//! has QR set, decodes with hickory (an independent parser), carries the rcode `respond`
//! reports, echoes the question of a parsed query, and fits the transport's size limit (512
//! bytes over UDP without EDNS, the negotiated payload with it).

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use hickory_server::proto::op::Message;
use isthmus_dns::answer::{Transport, respond};
use isthmus_dns::name::MAX_NAME;
use isthmus_dns::packet::{self, Parsed};
use isthmus_dns::snapshot::{Snapshot, compile};
use isthmus_dns::{Settings, Verdicts, view_from_json, zone};
use isthmus_federation::config::DnsConfig;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fn cluster(name: &str, region: &str, healthy: u32, key: &str) -> serde_json::Value {
    json!({
        "place": { "cluster": name, "trust_domain": format!("{name}.mesh"), "region": region },
        "local": false,
        "stale": false,
        "summary": {
            "key": key,
            "ports": [{ "name": "http", "port": 8080, "protocol": "http" }, { "port": 9090, "protocol": "grpc" }],
            "zones": { region: healthy }, "weight": 100, "metadata": {}, "headless": false,
            "exported_at_ms": 1,
        },
    })
}

static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    let cfg: DnsConfig = serde_json::from_value(json!({
        "bind": "127.0.0.1:5353",
        "gslb": {
            "zone": "mesh.example",
            "ingress": { "west": ["203.0.113.2"], "south": ["198.51.100.3", "2001:db8::3"] },
            "regions": [
                { "region": "us-west", "subnets": ["10.2.0.0/16"], "prefer": ["us-west", "sa-east"] },
                { "region": "sa-east", "subnets": ["10.3.0.0/16"], "prefer": ["sa-east", "us-west"] },
            ],
        },
    }))
    .expect("dns config");
    cfg.validate().expect("valid dns config");
    let settings = Settings::from_config(&cfg, None);
    let route = |key: &str, vip: &str| {
        json!({
            "key": key, "defined_by": "west",
            "ports": [{ "name": "http", "port": 8080, "protocol": "http" }, { "port": 9090, "protocol": "grpc" }],
            "headless": false,
            "clusters": [cluster("west", "us-west", 2, key), cluster("south", "sa-east", 0, key)],
            "conflicts": [], "vips": { "v4": vip },
            "cluster_vips": [["west", { "v4": "127.77.0.2" }], ["south", { "v4": "127.77.0.3" }]],
        })
    };
    let view = view_from_json(&json!({
        "version": 7,
        "me": { "cluster": "east", "trust_domain": "east.mesh", "region": "us-east" },
        "routes": { "demo/echo": route("demo/echo", "127.77.0.1"), "shop/cart": route("shop/cart", "127.77.0.10") },
    }))
    .expect("mesh view");
    let plan = zone::plan(&view, &settings, &Verdicts::default());
    compile(&plan, &settings, 42, view.version)
});

fuzz_target!(|data: &[u8]| {
    let Some((&pick, query)) = data.split_first() else {
        return;
    };
    let transport = if pick & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let client = match (pick >> 1) & 3 {
        0 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        1 => IpAddr::V4(Ipv4Addr::new(10, 2, 0, 7)),
        2 => IpAddr::V4(Ipv4Addr::new(10, 3, 9, 9)),
        _ => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    let snap = &*SNAPSHOT;

    let mut qname = [0u8; MAX_NAME];
    let parsed = packet::parse(query, &mut qname);
    let mut out = Vec::new();
    let outcome = respond(snap, query, client, transport, &mut out);

    if let Parsed::Drop = parsed {
        assert!(out.is_empty(), "a dropped packet got a response");
        assert_eq!(outcome.rcode, None);
        return;
    }
    assert!(out.len() >= 12, "response shorter than a header: {out:?}");
    assert_eq!(out[..2], query[..2], "id not echoed");
    assert_ne!(out[2] & 0x80, 0, "QR not set");
    let rcode = outcome.rcode.expect("a response without an rcode");
    assert_eq!(
        u16::from(out[3] & 0x0F),
        rcode & 0x0F,
        "header rcode differs"
    );
    let limit = match (transport, &parsed) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Parsed::Query(q)) => match &q.edns {
            None => 512,
            Some(e) => usize::from(e.payload.min(snap.udp_payload).max(512)),
        },
        (Transport::Udp, _) => 512,
    };
    assert!(
        out.len() <= limit,
        "{} bytes over a {limit}-byte limit",
        out.len()
    );
    let msg =
        Message::from_vec(&out).unwrap_or_else(|e| panic!("undecodable response: {e}: {out:?}"));
    if let Parsed::Query(q) = parsed {
        assert_eq!(msg.queries.len(), 1, "question not echoed");
        assert_eq!(
            &out[12..12 + q.question.len()],
            q.question,
            "question differs"
        );
    }
});
