//! Table tests of the whole query path: a mesh view (in its JSON form) -> zone plan -> snapshot
//! -> `respond` on hand-built packets, with responses decoded by hickory-proto (an independent
//! parser) and checked record by record.

use std::net::IpAddr;

use hickory_server::proto::op::{Message, ResponseCode};
use isthmus_federation::config::DnsConfig;
use serde_json::{Value, json};

use crate::answer::{Transport, respond};
use crate::health::Verdicts;
use crate::settings::Settings;
use crate::snapshot::{Snapshot, compile};
use crate::{view_from_json, zone};

fn cluster(name: &str, region: &str, healthy: u32, stale: bool, ports: &Value, key: &str) -> Value {
    json!({
        "place": { "cluster": name, "trust_domain": format!("{name}.mesh"), "region": region },
        "local": false,
        "stale": stale,
        "summary": {
            "key": key, "ports": ports, "zones": { region: healthy }, "weight": 100,
            "metadata": {}, "headless": false, "exported_at_ms": 1,
        },
    })
}

fn route(key: &str, ports: Value, vip: &str, clusters: &[(&str, &str, u32, bool, &str)]) -> Value {
    json!({
        "key": key,
        "defined_by": clusters[0].0,
        "ports": ports,
        "headless": false,
        "clusters": clusters.iter().map(|c| cluster(c.0, c.1, c.2, c.3, &ports, key)).collect::<Vec<_>>(),
        "conflicts": [],
        "vips": { "v4": vip },
        "cluster_vips": clusters.iter().map(|c| json!([c.0, { "v4": c.4 }])).collect::<Vec<_>>(),
    })
}

fn view_json() -> Value {
    let many: Vec<Value> = (1..=64)
        .map(|i| json!({ "name": format!("port-{i}"), "port": 10_000 + i, "protocol": "tcp" }))
        .collect();
    json!({
        "version": 7,
        "me": { "cluster": "east", "trust_domain": "east.mesh", "region": "us-east" },
        "routes": {
            "demo/echo": route("demo/echo",
                json!([{ "name": "http", "port": 8080, "protocol": "http" }, { "port": 9090, "protocol": "grpc" }]),
                "127.77.0.1",
                &[("west", "us-west", 2, false, "127.77.0.2"), ("south", "sa-east", 0, false, "127.77.0.3")]),
            "demo/down": route("demo/down", json!([{ "port": 80, "protocol": "http" }]), "127.77.0.5",
                &[("west", "us-west", 0, false, "127.77.0.6")]),
            "demo/stale": route("demo/stale", json!([{ "port": 80, "protocol": "http" }]), "127.77.0.7",
                &[("west", "us-west", 3, true, "127.77.0.8"), ("south", "sa-east", 1, false, "127.77.0.9")]),
            "shop/cart": route("shop/cart", Value::Array(many), "127.77.0.10",
                &[("east", "us-east", 1, false, "127.77.0.11")]),
        },
    })
}

/// A valid DNS config with a GSLB zone (`extra`'s top-level keys replace the defaults).
pub(crate) fn dns_config(extra: Value) -> DnsConfig {
    let mut base = json!({
        "bind": "127.0.0.1:5353",
        "gslb": {
            "zone": "mesh.example",
            "ingress": { "west": ["203.0.113.2"], "south": ["198.51.100.3", "2001:db8::3"], "east": ["192.0.2.1"] },
            "regions": [
                { "region": "us-west", "subnets": ["10.2.0.0/16"], "prefer": ["us-west", "sa-east"] },
                { "region": "sa-east", "subnets": ["10.3.0.0/16"], "prefer": ["sa-east", "us-west"] },
            ],
        },
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let cfg: DnsConfig = serde_json::from_value(base).expect("dns config");
    cfg.validate().expect("valid");
    cfg
}

fn snapshot_with(extra: Value, verdicts: &Verdicts) -> (Snapshot, zone::Plan) {
    let cfg = dns_config(extra);
    let settings = Settings::from_config(&cfg, None);
    let view = view_from_json(&view_json()).expect("view");
    let plan = zone::plan(&view, &settings, verdicts);
    (compile(&plan, &settings, 42, view.version), plan)
}

fn snapshot() -> Snapshot {
    snapshot_with(json!({}), &Verdicts::default()).0
}

/// A query packet. `edns`: `(payload, version, options)`.
fn query(name: &str, qtype: u16, edns: Option<(u16, u8, Vec<u8>)>) -> Vec<u8> {
    let mut p = vec![
        0xAB,
        0xCD,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(edns.is_some()),
    ];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    if let Some((payload, version, options)) = edns {
        p.extend_from_slice(&[0, 0, 41]);
        p.extend_from_slice(&payload.to_be_bytes());
        p.extend_from_slice(&[0, version, 0, 0]);
        p.extend_from_slice(&(options.len() as u16).to_be_bytes());
        p.extend_from_slice(&options);
    }
    p
}

struct Reply {
    msg: Message,
    size: usize,
}

impl Reply {
    fn rcode(&self) -> ResponseCode {
        self.msg.metadata.response_code
    }
    fn answers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.msg.answers.iter().map(ToString::to_string).collect();
        v.sort();
        v
    }
    fn authority_types(&self) -> Vec<String> {
        self.msg
            .authorities
            .iter()
            .map(|r| r.record_type().to_string())
            .collect()
    }
}

fn ask_from(snap: &Snapshot, packet: &[u8], client: &str, transport: Transport) -> Reply {
    let mut out = Vec::new();
    let client: IpAddr = client.parse().expect("ip");
    respond(snap, packet, client, transport, &mut out);
    assert!(!out.is_empty(), "no response");
    assert_eq!(&out[..2], &packet[..2], "id echoed");
    Reply {
        msg: Message::from_vec(&out)
            .unwrap_or_else(|e| panic!("undecodable response: {e}: {out:?}")),
        size: out.len(),
    }
}

fn ask(snap: &Snapshot, name: &str, qtype: u16) -> Reply {
    ask_from(snap, &query(name, qtype, None), "127.0.0.1", Transport::Udp)
}

const A: u16 = 1;
const NS: u16 = 2;
const SOA: u16 = 6;
const MX: u16 = 15;
const AAAA: u16 = 28;
const SRV: u16 = 33;
const ANY: u16 = 255;

#[test]
fn record_kinds_nxdomain_nodata_refused() {
    let s = snapshot();
    let z = "svc.clusterset.local";
    // (name, type, rcode, answers (substring match, sorted), authority SOA?)
    let cases: Vec<(String, u16, ResponseCode, Vec<&str>, bool)> = vec![
        (
            format!("echo.demo.{z}"),
            A,
            ResponseCode::NoError,
            vec!["IN A 127.77.0.1"],
            false,
        ),
        (
            format!("ECHO.Demo.{z}"),
            A,
            ResponseCode::NoError,
            vec!["ECHO.Demo.svc.clusterset.local. 5 IN A 127.77.0.1"],
            false,
        ),
        (
            format!("echo.demo.{z}"),
            AAAA,
            ResponseCode::NoError,
            vec![],
            true,
        ),
        (
            format!("echo.demo.{z}"),
            MX,
            ResponseCode::NoError,
            vec![],
            true,
        ),
        (
            format!("west.echo.demo.{z}"),
            A,
            ResponseCode::NoError,
            vec!["IN A 127.77.0.2"],
            false,
        ),
        // South reports no healthy endpoint: its per-cluster name does not resolve.
        (
            format!("south.echo.demo.{z}"),
            A,
            ResponseCode::NXDomain,
            vec![],
            true,
        ),
        (
            format!("_http._tcp.echo.demo.{z}"),
            SRV,
            ResponseCode::NoError,
            vec!["IN SRV 0 100 8080 echo.demo.svc.clusterset.local."],
            false,
        ),
        (
            format!("_9090._tcp.echo.demo.{z}"),
            SRV,
            ResponseCode::NoError,
            vec!["IN SRV 0 100 9090 echo.demo.svc.clusterset.local."],
            false,
        ),
        (
            format!("_nope._tcp.echo.demo.{z}"),
            SRV,
            ResponseCode::NXDomain,
            vec![],
            true,
        ),
        // Empty non-terminals: NODATA, never NXDOMAIN.
        (
            format!("_tcp.echo.demo.{z}"),
            A,
            ResponseCode::NoError,
            vec![],
            true,
        ),
        (format!("demo.{z}"), A, ResponseCode::NoError, vec![], true),
        (z.to_string(), A, ResponseCode::NoError, vec![], true),
        (
            format!("nope.demo.{z}"),
            A,
            ResponseCode::NXDomain,
            vec![],
            true,
        ),
        (
            format!("x.y.echo.demo.{z}"),
            A,
            ResponseCode::NXDomain,
            vec![],
            true,
        ),
        (
            "nope.clusterset.local".into(),
            A,
            ResponseCode::NXDomain,
            vec![],
            true,
        ),
        (
            "clusterset.local".into(),
            SOA,
            ResponseCode::NoError,
            vec![
                "IN SOA ns.clusterset.local. hostmaster.clusterset.local. 42 14400 3600 1209600 5",
            ],
            false,
        ),
        (
            "clusterset.local".into(),
            NS,
            ResponseCode::NoError,
            vec!["IN NS ns.clusterset.local."],
            false,
        ),
        (
            "ns.clusterset.local".into(),
            A,
            ResponseCode::NoError,
            vec!["IN A 127.0.0.1"],
            false,
        ),
        // RFC 8482: ANY gets one RRset.
        (
            format!("echo.demo.{z}"),
            ANY,
            ResponseCode::NoError,
            vec!["IN A 127.77.0.1"],
            false,
        ),
        (
            "clusterset.local".into(),
            ANY,
            ResponseCode::NoError,
            vec!["IN SOA"],
            false,
        ),
        (
            format!("demo.{z}"),
            ANY,
            ResponseCode::NoError,
            vec![],
            true,
        ),
        // Not ours.
        (
            "example.com".into(),
            A,
            ResponseCode::Refused,
            vec![],
            false,
        ),
        ("local".into(), SOA, ResponseCode::Refused, vec![], false),
        (".".into(), NS, ResponseCode::Refused, vec![], false),
        (
            "clusterset.local".into(),
            252,
            ResponseCode::Refused,
            vec![],
            false,
        ),
    ];
    for (name, qtype, rcode, answers, soa) in cases {
        let r = ask(&s, &name, qtype);
        let what = format!("{name} type {qtype}");
        assert_eq!(r.rcode(), rcode, "{what}");
        let got = r.answers();
        assert_eq!(got.len(), answers.len(), "{what}: {got:?}");
        for (g, want) in got.iter().zip(&answers) {
            assert!(g.contains(want), "{what}: {g} lacks {want}");
        }
        assert_eq!(
            r.authority_types(),
            if soa { vec!["SOA"] } else { vec![] },
            "{what}"
        );
        assert_eq!(
            r.msg.metadata.authoritative,
            rcode != ResponseCode::Refused,
            "{what}: AA"
        );
        if soa {
            // Negative TTL = SOA minimum = record TTL.
            assert_eq!(r.msg.authorities[0].ttl, 5, "{what}");
        }
    }
}

#[test]
fn srv_carries_target_addresses_and_echoes_case() {
    let s = snapshot();
    let r = ask(&s, "_HTTP._tcp.echo.demo.svc.clusterset.local", SRV);
    assert_eq!(r.msg.additionals.len(), 1);
    assert!(
        r.msg.additionals[0]
            .to_string()
            .contains("echo.demo.svc.clusterset.local. 5 IN A 127.77.0.1")
    );
    assert_eq!(
        r.msg.queries[0].name().to_string(),
        "_HTTP._tcp.echo.demo.svc.clusterset.local."
    );
}

#[test]
fn truncation_edns_and_tcp() {
    let s = snapshot();
    // Without EDNS: 512 bytes. 64 SRV records do not fit: TC=1, no records.
    let name = "_port-1._tcp.cart.shop.svc.clusterset.local";
    let r = ask(&s, name, SRV);
    assert!(!r.msg.metadata.truncation, "one SRV fits");
    let q = query("cart.shop.svc.clusterset.local", A, None);
    let r = ask_from(&s, &q, "127.0.0.1", Transport::Udp);
    assert!(!r.msg.metadata.truncation);
    // EDNS: payload honoured up to the cap (1232), OPT echoed with our size.
    let q = query("echo.demo.svc.clusterset.local", A, Some((4096, 0, vec![])));
    let r = ask_from(&s, &q, "127.0.0.1", Transport::Udp);
    let edns = r.msg.edns.as_ref().expect("OPT in the response");
    assert_eq!(edns.max_payload(), 1232);
    assert!(r.size <= 1232);
    // Unknown EDNS version: BADVERS, with OPT version 0.
    let q = query("echo.demo.svc.clusterset.local", A, Some((1232, 1, vec![])));
    let r = ask_from(&s, &q, "127.0.0.1", Transport::Udp);
    // Extended RCODE 16 (hickory names it BADSIG; BADVERS shares the number).
    assert_eq!(u16::from(r.rcode()), 16);
    assert_eq!(r.msg.edns.as_ref().map(|e| e.version()), Some(0));
    assert!(r.msg.answers.is_empty());
    // Unknown EDNS option: ignored.
    let q = query(
        "echo.demo.svc.clusterset.local",
        A,
        Some((1232, 0, vec![0xFE, 0x01, 0, 2, 1, 2])),
    );
    assert_eq!(
        ask_from(&s, &q, "127.0.0.1", Transport::Udp)
            .answers()
            .len(),
        1
    );
}

#[test]
fn big_answers_truncate_over_udp_and_not_over_tcp() {
    // Many name servers make a big NS answer with glue.
    let servers: Vec<Value> = (0..25)
        .map(|i| json!({ "name": format!("ns{i}.clusterset.local"), "addresses": [format!("10.0.0.{i}"), format!("2001:db8::{i}")] }))
        .collect();
    let (s, _) = snapshot_with(json!({ "nameservers": servers }), &Verdicts::default());
    let q = query("clusterset.local", NS, None);
    let udp = ask_from(&s, &q, "127.0.0.1", Transport::Udp);
    assert!(udp.msg.metadata.truncation, "25 NS over 512 bytes: TC");
    assert!(udp.msg.answers.is_empty());
    assert!(udp.size <= 512);
    let q_edns = query("clusterset.local", NS, Some((1232, 0, vec![])));
    let edns = ask_from(&s, &q_edns, "127.0.0.1", Transport::Udp);
    // 25 NS fit in 1232 bytes once the glue (additional section) is dropped: no TC.
    assert!(!edns.msg.metadata.truncation);
    assert_eq!(edns.msg.answers.len(), 25);
    assert!(edns.msg.additionals.is_empty());
    assert!(edns.size <= 1232);
    let tcp = ask_from(&s, &q, "127.0.0.1", Transport::Tcp);
    assert!(!tcp.msg.metadata.truncation);
    assert_eq!(tcp.msg.answers.len(), 25);
    assert_eq!(tcp.msg.additionals.len(), 50, "glue over TCP");
}

#[test]
fn health_decides_per_cluster_names_and_optionally_service_names() {
    let (_, plan) = snapshot_with(json!({}), &Verdicts::default());
    let z = "svc.clusterset.local";
    // Serves while any cluster may (gateway fails over behind the VIP), even with none healthy.
    assert_eq!(
        plan.describe(&format!("down.demo.{z}")),
        Some(vec!["A 127.77.0.5".to_string()])
    );
    assert_eq!(plan.describe(&format!("west.down.demo.{z}")), None);
    // Stale catalog: not serving.
    assert_eq!(plan.describe(&format!("west.stale.demo.{z}")), None);
    assert!(plan.describe(&format!("south.stale.demo.{z}")).is_some());
    let (_, strict) = snapshot_with(
        json!({ "nxdomain_when_unhealthy": true }),
        &Verdicts::default(),
    );
    assert_eq!(strict.describe(&format!("down.demo.{z}")), None);
    assert_eq!(strict.describe(&format!("_80._tcp.down.demo.{z}")), None);
    assert!(strict.describe(&format!("echo.demo.{z}")).is_some());
    // A gateway verdict removes a cluster.
    let key = isthmus_federation::model::ServiceKey::parse("demo/echo").expect("key");
    let v = Verdicts::new([("west".parse().expect("c"), key)]);
    let (_, judged) = snapshot_with(json!({ "nxdomain_when_unhealthy": true }), &v);
    assert_eq!(judged.describe(&format!("west.echo.demo.{z}")), None);
    assert_eq!(judged.describe(&format!("echo.demo.{z}")), None);
}

#[test]
fn gslb_answers_by_client_region_and_fails_over() {
    let (s, plan) = snapshot_with(json!({}), &Verdicts::default());
    // echo: west healthy, south not. Every region group gets west.
    assert_eq!(
        plan.describe("echo.demo.mesh.example"),
        Some(vec![
            "GSLB[0] 203.0.113.2".into(),
            "GSLB[1] 203.0.113.2".into(),
            "GSLB[2] 203.0.113.2".into()
        ])
    );
    // stale: west stale, south healthy: everyone gets south (v4 and v6).
    assert_eq!(
        plan.describe("stale.demo.mesh.example").expect("stale")[0],
        "GSLB[0] 198.51.100.3,2001:db8::3"
    );
    assert_eq!(plan.describe("south.echo.demo.mesh.example"), None);
    assert_eq!(
        plan.describe("west.echo.demo.mesh.example"),
        Some(vec!["A 203.0.113.2".into()])
    );
    // Nobody healthy: every ingress answers (fail open).
    assert_eq!(
        plan.describe("down.demo.mesh.example").expect("down")[0],
        "GSLB[0] 203.0.113.2"
    );
    // Both healthy: region decides. Make south healthy for echo by a different view.
    let mut v = view_json();
    v["routes"]["demo/echo"]["clusters"][1]["summary"]["zones"] = json!({ "sa-east": 4 });
    let cfg = dns_config(json!({}));
    let settings = Settings::from_config(&cfg, None);
    let view = view_from_json(&v).expect("view");
    let snap = compile(
        &zone::plan(&view, &settings, &Verdicts::default()),
        &settings,
        1,
        1,
    );
    let q = query("echo.demo.mesh.example", A, None);
    let west = ask_from(&snap, &q, "10.2.3.4", Transport::Udp);
    assert_eq!(
        west.answers(),
        vec!["echo.demo.mesh.example. 5 IN A 203.0.113.2"]
    );
    let south = ask_from(&snap, &q, "10.3.3.4", Transport::Udp);
    assert_eq!(
        south.answers(),
        vec!["echo.demo.mesh.example. 5 IN A 198.51.100.3"]
    );
    // Unmatched clients (no default order): every healthy cluster.
    assert_eq!(
        ask_from(&snap, &q, "192.168.1.1", Transport::Udp)
            .answers()
            .len(),
        2
    );
    // EDNS Client Subnet overrides the source address, and is echoed with its scope.
    let ecs = [0, 8, 0, 7, 0, 1, 24, 0, 10, 3, 9];
    let q = query("echo.demo.mesh.example", A, Some((1232, 0, ecs.to_vec())));
    let r = ask_from(&snap, &q, "10.2.3.4", Transport::Udp);
    assert_eq!(
        r.answers(),
        vec!["echo.demo.mesh.example. 5 IN A 198.51.100.3"]
    );
    let echoed = r.msg.edns.as_ref().expect("opt");
    let opt = format!("{:?}", echoed.options());
    assert!(
        opt.contains("source_prefix: 24") && opt.contains("scope_prefix: 16"),
        "{opt}"
    );
    // AAAA for a v4-only tier: NODATA.
    let q = query("echo.demo.mesh.example", AAAA, None);
    let r = ask_from(&snap, &q, "10.2.3.4", Transport::Udp);
    assert_eq!(r.rcode(), ResponseCode::NoError);
    assert!(r.msg.answers.is_empty());
    // The GSLB apex is authoritative too.
    let r = ask(&s, "mesh.example", SOA);
    assert!(r.answers()[0].contains("ns.mesh.example. hostmaster.mesh.example."));
}

#[test]
fn malformed_packets_get_formerr_or_nothing() {
    let s = snapshot();
    let good = query("echo.demo.svc.clusterset.local", A, None);
    let mut out = Vec::new();
    let client: IpAddr = "127.0.0.1".parse().expect("ip");
    // Every prefix of a good query, and every single-byte corruption of it: never a panic, and
    // every response parses.
    for n in 0..good.len() {
        respond(&s, &good[..n], client, Transport::Udp, &mut out);
        if !out.is_empty() {
            Message::from_vec(&out).expect("a response that parses");
        }
    }
    for i in 0..good.len() {
        for b in [0u8, 0x3F, 0x40, 0xC0, 0xFF] {
            let mut p = good.clone();
            p[i] = b;
            respond(&s, &p, client, Transport::Udp, &mut out);
            if !out.is_empty() {
                Message::from_vec(&out).expect("a response that parses");
            }
        }
    }
    // FORMERR for a truncated question, nothing for a response packet.
    let r = ask_from(&s, &good[..20], "127.0.0.1", Transport::Udp);
    assert_eq!(r.rcode(), ResponseCode::FormErr);
    let mut resp = good.clone();
    resp[2] |= 0x80;
    respond(&s, &resp, client, Transport::Udp, &mut out);
    assert!(out.is_empty());
}

/// A snapshot of the test view plus `extra` more services (two names each).
fn snapshot_of_size(extra: usize) -> Snapshot {
    let mut view = view_json();
    let routes = view["routes"].as_object_mut().expect("routes");
    for i in 0..extra {
        let key = format!("bulk/svc-{i}");
        let vip = format!("127.{}.{}.{}", 100 + i / 65_536, (i / 256) % 256, i % 256);
        let r = route(
            &key,
            json!([{ "port": 80, "protocol": "http" }]),
            &vip,
            &[("west", "us-west", 1, false, "127.99.0.1")],
        );
        routes.insert(key, r);
    }
    let settings = Settings::from_config(&dns_config(json!({})), None);
    let view = view_from_json(&view).expect("view");
    let plan = zone::plan(&view, &settings, &Verdicts::default());
    compile(&plan, &settings, 42, view.version)
}

/// Hits, misses, NODATA, REFUSED and SRV answers make no allocation at all on the query path
/// (the response buffer is reused), in a zone of a few names and in one of 20,000.
#[test]
fn hits_misses_and_nodata_do_not_allocate_more_with_zone_size() {
    let small = snapshot_of_size(0);
    let big = snapshot_of_size(10_000);
    assert!(big.nodes.len() >= small.nodes.len() + 20_000);
    let client: IpAddr = "127.0.0.1".parse().expect("ip");
    let queries = [
        query("echo.demo.svc.clusterset.local", A, None),
        query("west.echo.demo.svc.clusterset.local", A, None),
        query("echo.demo.svc.clusterset.local", SRV, None),
        query("echo.demo.svc.clusterset.local", MX, None),
        query("nope.demo.svc.clusterset.local", A, None),
        query("example.com", A, None),
        query(
            "echo.demo.svc.clusterset.local",
            A,
            Some((1232, 0, Vec::new())),
        ),
    ];
    for snap in [&small, &big] {
        let mut out = Vec::with_capacity(65_535);
        // Answers are checked outside the measured part (decoding allocates).
        for q in &queries {
            respond(snap, q, client, Transport::Udp, &mut out);
            Message::from_vec(&out).expect("a response that parses");
        }
        let counted = allocation_counter::measure(|| {
            for _ in 0..100 {
                for q in &queries {
                    respond(snap, q, client, Transport::Udp, &mut out);
                }
            }
        });
        assert_eq!(
            counted.count_total,
            0,
            "allocations on the query path with {} names",
            snap.nodes.len()
        );
    }
}

#[test]
fn the_example_config_is_valid() {
    let text = include_str!("../../deploy/examples/federation.yaml");
    let cfg = isthmus_federation::config::FederationConfig::from_yaml("federation.yaml", text)
        .expect("deploy/examples/federation.yaml is valid");
    let dns = cfg.dns.expect("the example has a dns section");
    let s = Settings::from_config(&dns, None);
    assert_eq!(s.zones.len(), 2, "clusterset.local and the GSLB zone");
    let g = s.gslb.expect("gslb");
    assert_eq!(g.group_of("10.2.9.9".parse().expect("ip")), (1, 16));
    assert_eq!(
        g.group_of("192.0.2.1".parse().expect("ip")).0,
        2,
        "default group"
    );
}

/// A VIP address no gateway could bind is not answered (the name stays: NODATA), for the
/// service's name and for a per-cluster name; every other address still is.
#[test]
fn unserved_vips_are_left_out_of_answers() {
    let key = |k: &str| isthmus_federation::model::ServiceKey::parse(k).expect("key");
    let ip = |a: &str| a.parse::<IpAddr>().expect("ip");
    let verdicts = Verdicts::default().with_unserved([
        (ip("127.77.0.1"), key("demo/echo")),
        (ip("127.77.0.2"), key("demo/echo")),
    ]);
    let (s, _) = snapshot_with(json!({}), &verdicts);
    let z = "svc.clusterset.local";
    for name in [format!("echo.demo.{z}"), format!("west.echo.demo.{z}")] {
        let r = ask(&s, &name, A);
        assert_eq!(r.rcode(), ResponseCode::NoError, "{name}");
        assert!(r.answers().is_empty(), "{name}: {:?}", r.answers());
        assert_eq!(r.authority_types(), ["SOA"], "{name}: NODATA");
    }
    let r = ask(&s, &format!("cart.shop.{z}"), A);
    assert_eq!(r.answers().len(), 1, "{:?}", r.answers());
    assert!(
        r.answers()[0].ends_with("IN A 127.77.0.10"),
        "{:?}",
        r.answers()
    );
    // Without the verdict the same names answer.
    let r = ask(&snapshot(), &format!("echo.demo.{z}"), A);
    assert_eq!(r.answers().len(), 1, "{:?}", r.answers());
}
