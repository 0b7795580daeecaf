//! The incremental rebuild ([`crate::rebuild`]) against the from-scratch build
//! ([`crate::zone::plan`] + [`crate::snapshot::compile`]): after every step of a random sequence
//! of catalog and health changes, both snapshots must hold the same nodes and give the same
//! response bytes to the same queries, for every changed name, its neighbours, and names that
//! just went away.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use isthmus_federation::mesh::{ClusterPlace, ClusterRoute, MeshView, Route};
use isthmus_federation::model::{
    ClusterName, Protocol, ServiceKey, ServicePort, ServiceSummary, ZoneCounts,
};
use isthmus_federation::vip::VipAssignment;
use serde_json::{Value, json};

use crate::answer::{Transport, respond};
use crate::health::Verdicts;
use crate::name;
use crate::rebuild::Rebuilder;
use crate::settings::Settings;
use crate::snapshot::{Snapshot, compile};
use crate::zone;

/// xorshift64: a reproducible sequence without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const CLUSTERS: [(&str, &str); 3] = [
    ("west", "us-west"),
    ("south", "sa-east"),
    ("east", "us-east"),
];
/// Two ports share the label `_http`: the second gets no SRV name of its own.
const PORTS: [(Option<&str>, u16); 5] = [
    (Some("http"), 8080),
    (None, 9090),
    (Some("grpc"), 50051),
    (None, 80),
    (Some("http"), 8081),
];
const NAMESPACES: [&str; 4] = ["ns-0", "ns-1", "ns-2", "ns"];

fn place(c: usize) -> Arc<ClusterPlace> {
    let (cluster, region) = CLUSTERS[c];
    Arc::new(ClusterPlace {
        cluster: cluster.parse().expect("cluster"),
        trust_domain: format!("{cluster}.mesh").parse().expect("trust domain"),
        region: region.parse().expect("region"),
        zone: None,
    })
}

fn serving(
    key: &ServiceKey,
    c: usize,
    ports: &[ServicePort],
    healthy: u32,
    stale: bool,
) -> ClusterRoute {
    let place = place(c);
    let zones: ZoneCounts = [(place.region.as_str().parse().expect("zone"), healthy)]
        .into_iter()
        .collect();
    ClusterRoute {
        summary: Arc::new(ServiceSummary {
            key: key.clone(),
            ports: ports.to_vec(),
            zones,
            weight: 100,
            metadata: Default::default(),
            headless: false,
            exported_at_ms: 1,
        }),
        place,
        local: false,
        gateways: Arc::from(Vec::new()),
        stale,
        confirmed_at_ms: 1,
    }
}

fn vips(rng: &mut Rng) -> VipAssignment {
    let n = rng.below(60_000) as u32;
    VipAssignment {
        v4: (!rng.chance(10)).then(|| Ipv4Addr::from(0x7F4D_0000 | n)),
        v6: rng
            .chance(30)
            .then(|| Ipv6Addr::from(0xFD00_u128 << 112 | u128::from(n))),
        released_at_ms: None,
    }
}

fn random_ports(rng: &mut Rng) -> Vec<ServicePort> {
    let mut ports: Vec<ServicePort> = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let (name, port) = PORTS[rng.below(PORTS.len())];
        if ports.iter().all(|p| p.port != port) {
            ports.push(ServicePort {
                name: name.map(str::to_string),
                port,
                protocol: Protocol::Tcp,
            });
        }
    }
    ports
}

fn random_route(rng: &mut Rng, key: &ServiceKey) -> Route {
    let ports = random_ports(rng);
    let mut clusters = Vec::new();
    let mut cluster_vips = Vec::new();
    for (c, (cluster, _)) in CLUSTERS.iter().enumerate() {
        if clusters.is_empty() && c == CLUSTERS.len() - 1 || rng.chance(55) {
            let healthy = [0, 1, 3][rng.below(3)];
            clusters.push(serving(key, c, &ports, healthy, rng.chance(15)));
            cluster_vips.push((cluster.parse().expect("cluster"), vips(rng)));
        }
    }
    Route {
        key: key.clone(),
        defined_by: clusters[0].place.cluster.clone(),
        ports,
        headless: false,
        clusters,
        conflicts: Vec::new(),
        vips: vips(rng),
        cluster_vips,
        kube: None,
    }
}

/// One change to one route; the last one changes nothing DNS reads.
fn modified(rng: &mut Rng, route: &Route) -> Route {
    let mut r = route.clone();
    let c = rng.below(r.clusters.len());
    match rng.below(7) {
        0 => {
            // Endpoints of one cluster to 0 (or back).
            let cr = &r.clusters[c];
            let healthy = if cr.summary.healthy_endpoints() > 0 {
                0
            } else {
                2
            };
            let stale = cr.stale;
            let ci = CLUSTERS
                .iter()
                .position(|x| x.0 == cr.place.cluster.as_str())
                .unwrap_or(0);
            r.clusters[c] = serving(&r.key, ci, &r.ports, healthy, stale);
        }
        1 => r.clusters[c].stale = !r.clusters[c].stale,
        2 => r.ports = random_ports(rng),
        3 => r.vips = vips(rng),
        4 => {
            // A cluster joins or leaves.
            let absent: Vec<usize> = (0..CLUSTERS.len())
                .filter(|i| {
                    r.clusters
                        .iter()
                        .all(|x| x.place.cluster.as_str() != CLUSTERS[*i].0)
                })
                .collect();
            if !absent.is_empty() && (r.clusters.len() == 1 || rng.chance(50)) {
                let i = absent[rng.below(absent.len())];
                r.clusters.push(serving(&r.key, i, &r.ports, 1, false));
                r.cluster_vips
                    .push((CLUSTERS[i].0.parse().expect("cluster"), vips(rng)));
            } else if r.clusters.len() > 1 {
                let gone = r.clusters.remove(c).place.cluster.clone();
                r.cluster_vips.retain(|(n, _)| *n != gone);
            }
        }
        5 => {
            let i = rng.below(r.cluster_vips.len().max(1));
            if let Some(cv) = r.cluster_vips.get_mut(i) {
                cv.1 = vips(rng);
            }
        }
        _ => r.clusters[c].confirmed_at_ms += 1,
    }
    r
}

fn key(ns: &str, i: usize) -> ServiceKey {
    ServiceKey::parse(&format!("{ns}/svc-{i}")).expect("key")
}

/// The tests' DNS config with a second mesh zone (`extra`'s top-level keys replace).
fn settings(extra: Value) -> Settings {
    let mut with_zones = json!({ "zones": ["clusterset.local", "other.test"] });
    if let (Some(b), Some(e)) = (with_zones.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    Settings::from_config(&crate::tests::dns_config(with_zones), None)
}

/// Every name worth asking about for `key`: its names in every zone, names it could have
/// (other ports and clusters), ones it never has, and the shared ancestors.
fn names_of(key: &ServiceKey) -> Vec<String> {
    let (svc, ns) = (key.name.as_str(), key.namespace.as_str());
    let mut out = Vec::new();
    for (root, zone) in [
        (
            format!("{svc}.{ns}.svc.clusterset.local"),
            "clusterset.local",
        ),
        (format!("{svc}.{ns}.svc.other.test"), "other.test"),
        (format!("{svc}.{ns}.mesh.example"), "mesh.example"),
    ] {
        out.push(parent_text(&root));
        if zone != "mesh.example" {
            out.push(format!("svc.{zone}"));
        }
        out.push(format!("_tcp.{root}"));
        out.push(format!("nosuch.{root}"));
        for label in ["_http", "_9090", "_grpc", "_80", "_8081"] {
            out.push(format!("{label}._tcp.{root}"));
        }
        for (c, _) in CLUSTERS {
            out.push(format!("{c}.{root}"));
        }
        out.push(root);
    }
    out
}

fn parent_text(dotted: &str) -> String {
    dotted
        .split_once('.')
        .map(|(_, p)| p.to_string())
        .unwrap_or_default()
}

const FIXED_NAMES: [&str; 9] = [
    "clusterset.local",
    "other.test",
    "mesh.example",
    "ns.clusterset.local",
    "ns1.clusterset.local",
    "ns.mesh.example",
    "a.svc-2.ns-2.mesh.example",
    "nosuch.clusterset.local",
    "example.com",
];

const CLIENTS: [&str; 3] = ["10.2.0.1", "10.3.0.1", "192.168.0.1"];

fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(&name::wire(name));
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p
}

/// Same nodes, and the same response bytes for every sampled name, type and client region.
fn assert_same(incremental: &Snapshot, full: &Snapshot, names: &BTreeSet<String>, step: usize) {
    assert_eq!(
        incremental.nodes.len(),
        full.nodes.len(),
        "step {step}: name count"
    );
    for (owner, node) in full.nodes.iter() {
        assert_eq!(
            incremental.nodes.get(owner),
            Some(node),
            "step {step}: {}",
            name::text(owner)
        );
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for n in names {
        for qtype in [1u16, 28, 33, 6, 2, 255, 15] {
            let q = query(n, qtype);
            // GSLB answers depend on the client's region (two regions and the default).
            let clients = if n.ends_with("mesh.example") {
                &CLIENTS[..]
            } else {
                &CLIENTS[..1]
            };
            for client in clients {
                let client: IpAddr = client.parse().expect("ip");
                respond(incremental, &q, client, Transport::Udp, &mut a);
                respond(full, &q, client, Transport::Udp, &mut b);
                assert_eq!(a, b, "step {step}: {n} type {qtype} from {client}");
            }
        }
    }
}

/// One to three random changes to `view` (and to the unhealthy verdicts); the services touched.
fn random_changes(
    rng: &mut Rng,
    view: &mut MeshView,
    unhealthy: &mut BTreeSet<(ClusterName, ServiceKey)>,
) -> BTreeSet<ServiceKey> {
    let keys: Vec<ServiceKey> = view.routes.keys().cloned().collect();
    let mut touched = BTreeSet::new();
    for _ in 0..1 + rng.below(3) {
        let some = (!keys.is_empty()).then(|| keys[rng.below(keys.len())].clone());
        match (rng.below(10), some) {
            (0 | 1, _) => {
                // A service appears (or is replaced wholesale).
                let k = key(NAMESPACES[rng.below(4)], rng.below(24));
                view.routes
                    .insert(k.clone(), Arc::new(random_route(rng, &k)));
                touched.insert(k);
            }
            (2, Some(k)) => {
                view.routes.remove(&k);
                touched.insert(k);
            }
            (3, Some(k)) => {
                // A gateway verdict flips.
                let c: ClusterName = CLUSTERS[rng.below(3)].0.parse().expect("cluster");
                let pair = (c, k.clone());
                if !unhealthy.remove(&pair) {
                    unhealthy.insert(pair);
                }
                touched.insert(k);
            }
            (4, _) => {
                // Every endpoint of one cluster goes (or comes back).
                let ci = rng.below(3);
                let healthy = if rng.chance(50) { 0 } else { 2 };
                for k in &keys {
                    let Some(r) = view.routes.get(k) else {
                        continue;
                    };
                    let at = r
                        .clusters
                        .iter()
                        .position(|x| x.place.cluster.as_str() == CLUSTERS[ci].0);
                    let Some(i) = at else { continue };
                    let mut r = (**r).clone();
                    r.clusters[i] = serving(k, ci, &r.ports, healthy, r.clusters[i].stale);
                    view.routes.insert(k.clone(), Arc::new(r));
                    touched.insert(k.clone());
                }
            }
            (_, Some(k)) => {
                if let Some(r) = view.routes.get(&k) {
                    let r = modified(rng, r);
                    view.routes.insert(k.clone(), Arc::new(r));
                    touched.insert(k);
                }
            }
            (_, None) => {}
        }
    }
    touched
}

/// What the sample asks about: the touched services, a neighbour of each in its namespace,
/// two services picked at random (present or not), and the fixed names.
fn sample(rng: &mut Rng, view: &MeshView, touched: &BTreeSet<ServiceKey>) -> BTreeSet<String> {
    let mut keys = touched.clone();
    for k in touched {
        let neighbour = view
            .routes
            .keys()
            .find(|o| o.namespace == k.namespace && *o != k);
        keys.extend(neighbour.cloned());
    }
    for _ in 0..2 {
        keys.insert(key(NAMESPACES[rng.below(4)], rng.below(24)));
    }
    let mut names: BTreeSet<String> = FIXED_NAMES.iter().map(|n| n.to_string()).collect();
    names.extend(keys.iter().flat_map(names_of));
    names
}

fn run(settings: Settings, seed: u64, steps: usize) {
    let settings = Arc::new(settings);
    let mut rng = Rng(seed);
    let mut view = MeshView::empty((*place(2)).clone());
    for i in 0..12 {
        let k = key(NAMESPACES[i % 3], i);
        view.routes
            .insert(k.clone(), Arc::new(random_route(&mut rng, &k)));
    }
    let mut unhealthy = BTreeSet::new();
    let mut rebuilder = Rebuilder::new(settings.clone());
    let mut previous: Option<(MeshView, Verdicts)> = None;
    for step in 0..steps {
        let touched = match previous {
            None => view.routes.keys().cloned().collect(),
            Some(_) => random_changes(&mut rng, &mut view, &mut unhealthy),
        };
        view.version += 1;
        let verdicts = Verdicts::new(unhealthy.iter().cloned());
        // What must be re-planned: routes whose value changed, services whose verdict changed.
        let expected: BTreeSet<ServiceKey> = match &previous {
            None => touched.clone(),
            Some((before, before_verdicts)) => before
                .routes
                .keys()
                .chain(view.routes.keys())
                .filter(|k| before.routes.get(k) != view.routes.get(k))
                .chain(before_verdicts.differing_keys(&verdicts))
                .cloned()
                .collect(),
        };
        let serial = 1000 + step as u32;
        let rebuilt =
            rebuilder.update(&Arc::new(view.clone()), &Arc::new(verdicts.clone()), serial);
        assert_eq!(
            rebuilt.replanned,
            expected.len(),
            "step {step}: re-planned routes"
        );
        let full = compile(
            &zone::plan(&view, &settings, &verdicts),
            &settings,
            serial,
            view.version,
        );
        let names = sample(&mut rng, &view, &touched);
        assert_same(&rebuilt.snapshot, &full, &names, step);
        previous = Some((view.clone(), verdicts));
    }
}

#[test]
fn incremental_rebuilds_answer_like_full_ones() {
    // Name servers that meet route names: one named like a service, one inside a GSLB route's
    // subtree, and (with the defaults) `ns.mesh.example` against the namespace `ns`.
    let overlapping = json!({ "nameservers": [
        { "name": "ns1.clusterset.local", "addresses": ["10.0.0.53", "2001:db8::53"] },
        { "name": "svc-1.ns-1.svc.clusterset.local", "addresses": ["10.0.0.54"] },
        { "name": "a.svc-2.ns-2.mesh.example", "addresses": ["10.0.0.55"] },
    ]});
    run(settings(overlapping), 0x5EED_0001, 300);
    run(settings(json!({})), 0x5EED_0002, 300);
    run(
        settings(json!({ "nxdomain_when_unhealthy": true })),
        0x5EED_0003,
        300,
    );
}

#[test]
fn a_one_service_change_re_encodes_a_few_names_and_shares_the_rest() {
    let settings = Arc::new(settings(json!({})));
    let mut rng = Rng(7);
    let mut view = MeshView::empty((*place(2)).clone());
    for i in 0..3_000 {
        let k = key(NAMESPACES[i % 4], i);
        view.routes
            .insert(k.clone(), Arc::new(random_route(&mut rng, &k)));
    }
    let verdicts = Arc::new(Verdicts::default());
    let mut rebuilder = Rebuilder::new(settings);
    let before = rebuilder.update(&Arc::new(view.clone()), &verdicts, 1);
    assert_eq!(before.replanned, 3_000);
    let k = key("ns-1", 1);
    let r = view.routes.get(&k).expect("route");
    let mut r = (**r).clone();
    r.vips.v4 = Some(Ipv4Addr::new(127, 99, 0, 1));
    view.routes.insert(k, Arc::new(r));
    let after = rebuilder.update(&Arc::new(view), &verdicts, 2);
    assert_eq!(after.replanned, 1);
    let copied = after
        .snapshot
        .nodes
        .shards_not_shared_with(&before.snapshot.nodes);
    // The service name, the SRV names that carry its address, and the three apexes (serial).
    assert!(copied <= 12, "{copied} shards copied");
}
