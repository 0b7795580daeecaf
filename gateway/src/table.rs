//! The routing table: the federation's config stream (snapshot, then deltas, each possibly in
//! several parts) folded into an immutable [`Snapshot`] the request path reads without a lock.
//! Pure: no I/O, table-tested.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use isthmus_federation::proto::{self, Protocol};

mod target_ports;
pub use target_ports::TargetPortRoute;

/// `<svc>.<ns>`: how a service is named between gateways and in logs.
pub type ServiceName = Arc<str>;

/// The DNS zone of mesh names.
pub const CLUSTERSET_ZONE: &str = "svc.clusterset.local";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortProtocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl PortProtocol {
    fn from_wire(p: i32) -> Self {
        match Protocol::try_from(p) {
            Ok(Protocol::Http2) => Self::Http2,
            Ok(Protocol::Grpc) => Self::Grpc,
            Ok(Protocol::Tcp) => Self::Tcp,
            _ => Self::Http,
        }
    }

    /// Spoken over HTTP (any version): requests are routed one by one.
    pub fn is_http(self) -> bool {
        !matches!(self, Self::Tcp)
    }

    /// The backend expects HTTP/2 with prior knowledge.
    pub fn is_h2(self) -> bool {
        matches!(self, Self::Http2 | Self::Grpc)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port {
    pub port: u16,
    pub protocol: PortProtocol,
}

fn ports(wire: &[proto::ServicePort]) -> Vec<Port> {
    wire.iter()
        .filter_map(|p| {
            Some(Port {
                port: u16::try_from(p.port).ok().filter(|p| *p != 0)?,
                protocol: PortProtocol::from_wire(p.protocol),
            })
        })
        .collect()
}

/// A peer gateway to dial: its exact SPIFFE ID is `spiffe://<trust_domain>/isthmus/gateway/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerGateway {
    pub name: Arc<str>,
    pub address: Arc<str>,
    pub zone: Arc<str>,
}

/// One cluster that serves an imported service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub cluster: Arc<str>,
    pub trust_domain: Arc<str>,
    pub region: Arc<str>,
    pub zone: Arc<str>,
    pub gateways: Vec<PeerGateway>,
    /// Healthy endpoints across the exporter's zones, as its federation last reported.
    pub healthy: u32,
    pub weight: u32,
    /// The exporter's federation is out of touch: its catalog is last-known, not live.
    pub stale: bool,
    /// When that catalog was last confirmed by the exporter's federation.
    pub confirmed_at: tokio::time::Instant,
}

/// A service this cluster imports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub name: ServiceName,
    pub ports: Vec<Port>,
    pub backends: Vec<Backend>,
    /// The `isthmus-target` header value for each port, built once.
    pub targets: Vec<(u16, http::HeaderValue)>,
}

impl Import {
    pub fn new(name: ServiceName, ports: Vec<Port>, backends: Vec<Backend>) -> Self {
        let targets = ports
            .iter()
            .filter_map(|p| {
                let v = http::HeaderValue::from_str(&format!("{name}:{}", p.port)).ok()?;
                Some((p.port, v))
            })
            .collect();
        Self {
            name,
            ports,
            backends,
            targets,
        }
    }

    /// `isthmus-target` for `port` (`<svc>.<ns>:<port>`).
    pub fn target_header(&self, port: u16) -> Option<&http::HeaderValue> {
        self.targets
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, v)| v)
    }

    pub fn port(&self, port: u16) -> Option<Port> {
        self.ports.iter().copied().find(|p| p.port == port)
    }
}

/// What a local client addressed: a service, optionally pinned to one cluster.
#[derive(Debug, Clone)]
pub struct Target {
    pub import: Arc<Import>,
    pub pinned: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub address: std::net::SocketAddr,
    /// `address` as a URI authority, built once.
    pub authority: http::uri::Authority,
    pub zone: Arc<str>,
    pub weight: u32,
}

impl LocalEndpoint {
    pub fn new(address: std::net::SocketAddr, zone: Arc<str>, weight: u32) -> Option<Self> {
        Some(Self {
            authority: address.to_string().parse().ok()?,
            address,
            zone,
            weight: weight.max(1),
        })
    }
}

/// A service this cluster exports: what the inbound side may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub name: ServiceName,
    pub ports: Vec<Port>,
    /// Ready endpoints only.
    pub endpoints: Vec<LocalEndpoint>,
    /// Peer clusters allowed to call it; empty = every peer.
    pub allowed_peers: Vec<Arc<str>>,
}

impl Export {
    pub fn port(&self, port: u16) -> Option<Port> {
        self.ports.iter().copied().find(|p| p.port == port)
    }

    pub fn allows(&self, cluster: &str) -> bool {
        self.allowed_peers.is_empty() || self.allowed_peers.iter().any(|p| &**p == cluster)
    }
}

/// The immutable view the request path reads.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub cluster: Arc<str>,
    pub trust_domain: Arc<str>,
    pub region: Arc<str>,
    pub zone: Arc<str>,
    pub imports: HashMap<ServiceName, Arc<Import>>,
    /// VIP → what it stands for (the service, or one cluster's `<cluster>.<svc>` name).
    pub vips: HashMap<IpAddr, Target>,
    /// On Kubernetes: target port → what it carries (listened on at the pod IP instead of VIPs).
    pub target_ports: HashMap<u16, TargetPortRoute>,
    pub exports: HashMap<ServiceName, Arc<Export>>,
    /// Peer clusters by trust domain.
    pub peers: HashMap<Arc<str>, Arc<str>>,
    pub bundles: Vec<proto::TrustBundle>,
    /// Policy documents (JSON) by name, as the federation distributes them.
    pub policies: BTreeMap<String, String>,
    /// The traffic policies among them, parsed once per version.
    pub traffic: crate::policy::Policies,
}

impl Snapshot {
    /// Resolves a host name a proxy client used: `<svc>.<ns>[.svc.clusterset.local]` or
    /// `<cluster>.<svc>.<ns>[.svc.clusterset.local]`, case-insensitively, trailing dot allowed.
    pub fn resolve_host(&self, host: &str) -> Option<Target> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let short = host
            .strip_suffix(CLUSTERSET_ZONE)
            .map(|h| h.trim_end_matches('.'))
            .unwrap_or(&host);
        if let Some(import) = self.imports.get(short) {
            return Some(Target {
                import: import.clone(),
                pinned: None,
            });
        }
        let (cluster, service) = short.split_once('.')?;
        let import = self.imports.get(service)?;
        let backend = import.backends.iter().find(|b| &*b.cluster == cluster)?;
        Some(Target {
            import: import.clone(),
            pinned: Some(backend.cluster.clone()),
        })
    }

    /// Every VIP:port the outbound side should listen on, with the port's protocol.
    pub fn listeners(&self) -> impl Iterator<Item = (IpAddr, Port)> + '_ {
        self.vips
            .iter()
            .flat_map(|(ip, t)| t.import.ports.iter().map(move |p| (*ip, *p)))
    }

    /// The peer cluster whose gateways carry `trust_domain`, if it is a peer.
    pub fn peer_cluster(&self, trust_domain: &str) -> Option<&Arc<str>> {
        self.peers.get(trust_domain)
    }
}

fn service_name(key: Option<&proto::ServiceKey>) -> Option<ServiceName> {
    let k = key?;
    if k.name.is_empty() || k.namespace.is_empty() {
        return None;
    }
    Some(
        format!("{}.{}", k.name, k.namespace)
            .to_ascii_lowercase()
            .into(),
    )
}

/// An import as built once from the wire, with the VIPs that stand for it.
#[derive(Debug)]
struct BuiltImport {
    import: Arc<Import>,
    vips: Vec<(IpAddr, Option<Arc<str>>)>,
    /// (target port, pinned cluster, service port) on Kubernetes.
    target_ports: Vec<(u16, Option<Arc<str>>, Port)>,
}

fn build_import(name: ServiceName, route: &proto::ImportedRoute) -> BuiltImport {
    let import = Arc::new(Import::new(
        name,
        ports(&route.ports),
        route.clusters.iter().map(backend).collect(),
    ));
    let mut vips: Vec<(IpAddr, Option<Arc<str>>)> = route
        .vips
        .iter()
        .filter_map(|v| Some((v.parse().ok()?, None)))
        .collect();
    for (cluster, vip) in &route.cluster_vips {
        let pinned = import.backends.iter().find(|b| &*b.cluster == cluster);
        if let (Ok(ip), Some(b)) = (vip.parse::<IpAddr>(), pinned) {
            vips.push((ip, Some(b.cluster.clone())));
        }
    }
    let target_ports = target_ports::of_route(&import, &route.target_ports);
    BuiltImport {
        import,
        vips,
        target_ports,
    }
}

fn build_export(name: ServiceName, export: &proto::LocalExport) -> Arc<Export> {
    Arc::new(Export {
        name,
        ports: ports(&export.ports),
        endpoints: export
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .filter_map(|e| {
                LocalEndpoint::new(e.address.parse().ok()?, e.zone.as_str().into(), e.weight)
            })
            .collect(),
        allowed_peers: export
            .allowed_peers
            .iter()
            .map(|p| p.as_str().into())
            .collect(),
    })
}

/// Folds the config stream. Parts of one version accumulate until the last part (`more =
/// false`); only then is a snapshot published, so a half-applied version is never visible.
/// Each import and export is built once when it arrives; publishing a version clones maps of
/// `Arc`s, never the routes themselves.
#[derive(Debug, Default)]
pub struct TableBuilder {
    header: proto::GatewayConfig,
    imports: HashMap<ServiceName, BuiltImport>,
    exports: HashMap<ServiceName, Arc<Export>>,
    bundles: BTreeMap<String, proto::TrustBundle>,
    peers: BTreeMap<String, proto::PeerInfo>,
    policies: BTreeMap<String, String>,
    /// What every service's policy starts from (the gateway config's `health:` defaults).
    policy_defaults: crate::policy::ServicePolicy,
}

impl TableBuilder {
    /// A builder whose services' policies start from `defaults` before their documents apply.
    pub fn with_policy_defaults(defaults: crate::policy::ServicePolicy) -> Self {
        Self {
            policy_defaults: defaults,
            ..Self::default()
        }
    }

    /// Applies one message; returns the new snapshot when a version is complete.
    pub fn apply(&mut self, msg: proto::GatewayConfig) -> Option<Snapshot> {
        // The first part of a snapshot (it carries the header) starts over, whatever a broken
        // earlier stream left half-applied.
        if msg.snapshot && !msg.cluster.is_empty() {
            self.imports.clear();
            self.exports.clear();
        }
        for key in &msg.removed_imports {
            if let Some(name) = service_name(Some(key)) {
                self.imports.remove(&name);
            }
        }
        for key in &msg.removed_exports {
            if let Some(name) = service_name(Some(key)) {
                self.exports.remove(&name);
            }
        }
        for route in &msg.imports {
            if let Some(name) = service_name(route.key.as_ref()) {
                self.imports.insert(name.clone(), build_import(name, route));
            }
        }
        for export in &msg.exports {
            if let Some(name) = service_name(export.key.as_ref()) {
                self.exports
                    .insert(name.clone(), build_export(name, export));
            }
        }
        // Every message with a header (the first part of a snapshot, every delta) carries the
        // complete bundles, peers and policies.
        if !msg.cluster.is_empty() {
            self.bundles = msg
                .bundles
                .iter()
                .map(|b| (b.trust_domain.clone(), b.clone()))
                .collect();
            self.peers = msg
                .peers
                .iter()
                .map(|p| (p.trust_domain.clone(), p.clone()))
                .collect();
            self.policies = msg.policies.clone().into_iter().collect();
            self.header = proto::GatewayConfig {
                cluster: msg.cluster.clone(),
                trust_domain: msg.trust_domain.clone(),
                region: msg.region.clone(),
                zone: msg.zone.clone(),
                ..Default::default()
            };
        }
        self.header.version = msg.version;
        if msg.more {
            return None;
        }
        Some(self.build())
    }

    fn build(&self) -> Snapshot {
        let mut snap = Snapshot {
            version: self.header.version,
            cluster: self.header.cluster.as_str().into(),
            trust_domain: self.header.trust_domain.as_str().into(),
            region: self.header.region.as_str().into(),
            zone: self.header.zone.as_str().into(),
            bundles: self.bundles.values().cloned().collect(),
            policies: self.policies.clone(),
            traffic: crate::policy::Policies::build_on(&self.policy_defaults, &self.policies),
            exports: self.exports.clone(),
            ..Default::default()
        };
        for (td, p) in &self.peers {
            snap.peers
                .insert(td.as_str().into(), p.cluster.as_str().into());
        }
        snap.imports.reserve(self.imports.len());
        for (name, built) in &self.imports {
            for (ip, pinned) in &built.vips {
                snap.vips.insert(
                    *ip,
                    Target {
                        import: built.import.clone(),
                        pinned: pinned.clone(),
                    },
                );
            }
            target_ports::insert(&mut snap.target_ports, &built.import, &built.target_ports);
            snap.imports.insert(name.clone(), built.import.clone());
        }
        snap
    }
}

fn backend(c: &proto::ClusterBackend) -> Backend {
    let summary = c.summary.as_ref();
    Backend {
        cluster: c.cluster.as_str().into(),
        trust_domain: c.trust_domain.as_str().into(),
        region: c.region.as_str().into(),
        zone: c.zone.as_str().into(),
        gateways: c
            .gateways
            .iter()
            .map(|g| PeerGateway {
                name: g.name.as_str().into(),
                address: g.address.as_str().into(),
                zone: g.zone.as_str().into(),
            })
            .collect(),
        // Saturating: counts from a peer's federation are not trusted to fit when summed.
        healthy: summary.map_or(0, |s| {
            s.zones
                .iter()
                .map(|z| z.healthy)
                .fold(0, u32::saturating_add)
        }),
        weight: summary.map_or(1, |s| s.weight.max(1)),
        stale: c.stale,
        confirmed_at: tokio::time::Instant::now()
            .checked_sub(std::time::Duration::from_millis(c.age_ms))
            .unwrap_or_else(tokio::time::Instant::now),
    }
}

#[cfg(test)]
impl Backend {
    /// A cluster for tests: one gateway at `gateway`, trust domain `<cluster>.mesh`.
    pub(crate) fn for_test(
        cluster: &str,
        region: &str,
        gateway: &str,
        weight: u32,
        healthy: u32,
        stale: bool,
    ) -> Self {
        Backend {
            cluster: cluster.into(),
            trust_domain: format!("{cluster}.mesh").into(),
            region: region.into(),
            zone: "".into(),
            gateways: vec![PeerGateway {
                name: "gw".into(),
                address: gateway.into(),
                zone: "".into(),
            }],
            healthy,
            weight,
            stale,
            confirmed_at: tokio::time::Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Option<proto::ServiceKey> {
        Some(proto::ServiceKey {
            namespace: "shop".into(),
            name: name.into(),
        })
    }

    fn route(name: &str, vip: &str, clusters: &[&str]) -> proto::ImportedRoute {
        proto::ImportedRoute {
            key: key(name),
            vips: vec![vip.into()],
            cluster_vips: clusters
                .iter()
                .enumerate()
                .map(|(i, c)| (c.to_string(), format!("127.9.1.{}", i + 10)))
                .collect(),
            ports: vec![proto::ServicePort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Http as i32,
            }],
            target_ports: vec![],
            clusters: clusters
                .iter()
                .map(|c| proto::ClusterBackend {
                    cluster: c.to_string(),
                    trust_domain: format!("{c}.mesh"),
                    gateways: vec![proto::GatewayAddress {
                        name: "gw-1".into(),
                        address: "127.0.0.1:15443".into(),
                        zone: String::new(),
                    }],
                    summary: Some(proto::ServiceSummary {
                        zones: vec![proto::ZoneCount {
                            zone: "a".into(),
                            healthy: 2,
                        }],
                        weight: 0,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn snapshot_msg(imports: Vec<proto::ImportedRoute>, more: bool) -> proto::GatewayConfig {
        proto::GatewayConfig {
            version: 1,
            snapshot: true,
            cluster: "east".into(),
            trust_domain: "east.mesh".into(),
            imports,
            peers: vec![proto::PeerInfo {
                cluster: "west".into(),
                trust_domain: "west.mesh".into(),
                ..Default::default()
            }],
            more,
            ..Default::default()
        }
    }

    #[test]
    fn parts_publish_only_when_the_version_is_complete() {
        let mut b = TableBuilder::default();
        assert!(
            b.apply(snapshot_msg(
                vec![route("cart", "127.9.0.1", &["west"])],
                true
            ))
            .is_none()
        );
        // Later parts carry no header.
        let snap = b
            .apply(proto::GatewayConfig {
                version: 1,
                snapshot: true,
                imports: vec![route("pay", "127.9.0.2", &["west"])],
                ..Default::default()
            })
            .expect("complete");
        assert_eq!(snap.imports.len(), 2, "both parts are in the snapshot");
        assert_eq!(snap.peer_cluster("west.mesh").map(|c| &**c), Some("west"));
        let t = &snap.vips[&"127.9.0.1".parse::<IpAddr>().expect("ip")];
        assert_eq!(&*t.import.name, "cart.shop");
        assert!(t.pinned.is_none());
        let pinned = &snap.vips[&"127.9.1.10".parse::<IpAddr>().expect("ip")];
        assert_eq!(pinned.pinned.as_deref(), Some("west"));
        assert_eq!(t.import.backends[0].healthy, 2);
        assert_eq!(
            t.import.backends[0].weight, 1,
            "weight 0 means the default 1"
        );
    }

    #[test]
    fn healthy_counts_that_overflow_when_summed_saturate() {
        let mut r = route("cart", "127.9.0.1", &["west"]);
        let summary = r.clusters[0].summary.as_mut().expect("summary");
        summary.zones = vec![
            proto::ZoneCount {
                zone: "a".into(),
                healthy: u32::MAX,
            },
            proto::ZoneCount {
                zone: "b".into(),
                healthy: 5,
            },
        ];
        let snap = TableBuilder::default()
            .apply(snapshot_msg(vec![r], false))
            .expect("complete");
        let t = &snap.vips[&"127.9.0.1".parse::<IpAddr>().expect("ip")];
        assert_eq!(t.import.backends[0].healthy, u32::MAX);
    }

    #[test]
    fn a_snapshot_cut_off_midway_is_forgotten_by_the_next_one() {
        let mut b = TableBuilder::default();
        assert!(
            b.apply(snapshot_msg(
                vec![route("old", "127.9.0.9", &["west"])],
                true
            ))
            .is_none()
        );
        // The stream broke; a new subscription sends a whole snapshot.
        let snap = b
            .apply(snapshot_msg(
                vec![route("cart", "127.9.0.1", &["west"])],
                false,
            ))
            .expect("snapshot");
        assert_eq!(
            snap.imports.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["cart.shop"]
        );
        assert!(
            !snap
                .vips
                .contains_key(&"127.9.0.9".parse::<IpAddr>().expect("ip"))
        );
    }

    #[test]
    fn deltas_replace_and_remove_and_a_new_snapshot_starts_over() {
        let mut b = TableBuilder::default();
        b.apply(snapshot_msg(
            vec![
                route("cart", "127.9.0.1", &["west"]),
                route("pay", "127.9.0.2", &["west"]),
            ],
            false,
        ));
        let snap = b
            .apply(proto::GatewayConfig {
                version: 2,
                cluster: "east".into(),
                imports: vec![route("cart", "127.9.0.1", &["west", "south"])],
                removed_imports: vec![key("pay").expect("key")],
                ..Default::default()
            })
            .expect("delta");
        assert_eq!(snap.version, 2);
        assert_eq!(&*snap.cluster, "east", "the header survives a delta");
        assert_eq!(snap.imports.len(), 1);
        assert_eq!(snap.imports["cart.shop"].backends.len(), 2);
        let snap = b
            .apply(snapshot_msg(
                vec![route("ship", "127.9.0.3", &["west"])],
                false,
            ))
            .expect("snapshot");
        assert_eq!(
            snap.imports.keys().map(|k| &**k).collect::<Vec<_>>(),
            ["ship.shop"]
        );
    }

    #[test]
    fn host_names_resolve_in_every_form() {
        let mut b = TableBuilder::default();
        let snap = b
            .apply(snapshot_msg(
                vec![route("cart", "127.9.0.1", &["west", "south"])],
                false,
            ))
            .expect("snapshot");
        type Want<'a> = Option<(&'a str, Option<&'a str>)>;
        let cases: [(&str, Want<'_>); 7] = [
            ("cart.shop", Some(("cart.shop", None))),
            ("cart.shop.svc.clusterset.local", Some(("cart.shop", None))),
            ("CART.Shop.svc.clusterset.local.", Some(("cart.shop", None))),
            (
                "west.cart.shop.svc.clusterset.local",
                Some(("cart.shop", Some("west"))),
            ),
            ("south.cart.shop", Some(("cart.shop", Some("south")))),
            ("north.cart.shop.svc.clusterset.local", None),
            ("pay.shop.svc.clusterset.local", None),
        ];
        for (host, want) in cases {
            let got = snap.resolve_host(host);
            let got = got.as_ref().map(|t| (&*t.import.name, t.pinned.as_deref()));
            assert_eq!(got, want, "{host}");
        }
    }

    #[test]
    fn exports_keep_ready_endpoints_and_scope() {
        let mut b = TableBuilder::default();
        let mut msg = snapshot_msg(vec![], false);
        msg.exports = vec![proto::LocalExport {
            key: key("cart"),
            ports: vec![proto::ServicePort {
                name: "tcp".into(),
                port: 9000,
                protocol: Protocol::Tcp as i32,
            }],
            endpoints: vec![
                proto::Endpoint {
                    address: "10.0.0.1:9000".into(),
                    ready: true,
                    zone: "a".into(),
                    weight: 3,
                },
                proto::Endpoint {
                    address: "10.0.0.2:9000".into(),
                    ready: false,
                    ..Default::default()
                },
                proto::Endpoint {
                    address: "not-an-address".into(),
                    ready: true,
                    ..Default::default()
                },
            ],
            allowed_peers: vec!["west".into()],
        }];
        let snap = b.apply(msg).expect("snapshot");
        let e = &snap.exports["cart.shop"];
        assert_eq!(e.endpoints.len(), 1);
        assert_eq!(e.endpoints[0].weight, 3);
        assert!(e.allows("west") && !e.allows("south"));
        assert_eq!(e.port(9000).map(|p| p.protocol), Some(PortProtocol::Tcp));
        assert!(e.port(9001).is_none());
    }
}
