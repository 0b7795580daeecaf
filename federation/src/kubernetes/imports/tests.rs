//! Desired state from an import set: which routes, which clusters serve, the target-port
//! names, the objects with their names, labels, ports and endpoints.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::desired::{self, ClusterIps};
use super::naming::{self, is_ours};
use super::ports::PortPool;
use crate::kubernetes::MANAGED_BY;
use crate::mesh::{ClusterPlace, ClusterRoute, MeshView, Route};
use crate::model::{ClusterName, Protocol, ServiceKey, ServicePort, ServiceSummary};

fn place(c: &str) -> Arc<ClusterPlace> {
    Arc::new(ClusterPlace {
        cluster: c.parse().expect("cluster"),
        trust_domain: format!("{c}.mesh").parse().expect("td"),
        region: "r1".parse().expect("region"),
        zone: None,
    })
}

fn cluster(key: &ServiceKey, c: &str, healthy: u32, stale: bool) -> ClusterRoute {
    ClusterRoute {
        place: place(c),
        local: false,
        gateways: Arc::new([]),
        summary: Arc::new(ServiceSummary {
            key: key.clone(),
            ports: vec![],
            zones: [("z1".parse().expect("zone"), healthy)]
                .into_iter()
                .collect(),
            weight: 1,
            metadata: BTreeMap::new(),
            headless: false,
            exported_at_ms: 0,
        }),
        stale,
        confirmed_at_ms: 0,
    }
}

fn route(ns_name: &str, headless: bool, clusters: &[(&str, u32, bool)]) -> Route {
    let key = ServiceKey::parse(ns_name).expect("key");
    Route {
        key: key.clone(),
        defined_by: clusters[0].0.parse().expect("cluster"),
        ports: vec![
            ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Http,
            },
            ServicePort {
                name: None,
                port: 9090,
                protocol: Protocol::Tcp,
            },
        ],
        headless,
        clusters: clusters
            .iter()
            .map(|(c, h, s)| cluster(&key, c, *h, *s))
            .collect(),
        conflicts: vec![],
        vips: Default::default(),
        cluster_vips: vec![],
        kube: None,
    }
}

fn view(routes: Vec<Route>) -> MeshView {
    let mut v = MeshView::empty((*place("east")).clone());
    v.routes = routes
        .into_iter()
        .map(|r| (r.key.clone(), Arc::new(r)))
        .collect();
    v
}

#[test]
fn imports_skip_headless_and_other_namespaces_and_status_lists_serving_clusters() {
    let v = view(vec![
        route(
            "shop/cart",
            false,
            &[("west", 2, false), ("south", 0, false), ("north", 1, true)],
        ),
        route("shop/db", true, &[("west", 1, false)]),
        route("other/x", false, &[("west", 1, false)]),
    ]);
    let all = desired::imports(&v, &[], &HashSet::new());
    assert_eq!(all.len(), 2, "headless skipped: {all:?}");
    let only_shop = desired::imports(&v, &["shop".into()], &HashSet::new());
    assert_eq!(only_shop.len(), 1);
    let cart = &only_shop[0];
    let names = |v: &[ClusterName]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(names(&cart.clusters), ["west", "south", "north"]);
    // South has no healthy endpoint, north's catalog is stale.
    assert_eq!(names(&cart.serving), ["west"]);
    // A gateway's verdict removes a cluster.
    let verdicts = HashSet::from(["west:shop/cart".to_string()]);
    assert!(
        desired::imports(&v, &["shop".into()], &verdicts)[0]
            .serving
            .is_empty()
    );
    let ports = desired::target_port_names(&only_shop);
    assert_eq!(ports.len(), 2 * 4, "{ports:?}");
    assert!(ports.contains("cart.shop:9090") && ports.contains("north.cart.shop:80"));
}

#[test]
fn desired_objects_carry_names_labels_target_ports_and_gateway_endpoints() {
    let v = view(vec![route("shop/cart", false, &[("west", 2, false)])]);
    let imports = desired::imports(&v, &[], &HashSet::new());
    let mut pool = PortPool::new(15100..=15999, Duration::from_secs(60));
    let mut reclaimed = Vec::new();
    for n in desired::target_port_names(&imports) {
        pool.assign(&n, 0, &mut reclaimed).expect("port");
    }
    let mut ips = ClusterIps::new();
    ips.insert(
        ("shop".into(), "isthmus-cart".into()),
        "10.96.0.7".parse().expect("ip"),
    );
    let addrs = desired::kube_addrs(&imports[0], &pool, &ips);
    assert_eq!(addrs.cluster_ip, Some("10.96.0.7".parse().expect("ip")));
    assert!(
        addrs.cluster_ips.is_empty(),
        "per-cluster Service has no IP yet"
    );
    let t80 = pool.get("cart.shop:80").expect("80").port;
    assert_eq!(addrs.target_ports[0], (80, t80));
    let west_80 = pool.get("west.cart.shop:80").expect("west").port;
    assert_ne!(west_80, t80);

    let gws: Vec<IpAddr> = vec![
        "10.0.0.5".parse().expect("ip"),
        "fd00::5".parse().expect("ip"),
    ];
    let d = desired::desired(&imports[0], &addrs, &gws);
    assert_eq!(d.namespace, "shop");
    assert!(is_ours(&d.import.metadata));
    assert_eq!(d.import.metadata.name.as_deref(), Some("cart"));
    assert_eq!(d.import.spec.type_, "ClusterSetIP");
    assert_eq!(d.import.spec.ips, ["10.96.0.7"]);
    assert_eq!(
        d.import
            .spec
            .ports
            .iter()
            .map(|p| p.port)
            .collect::<Vec<_>>(),
        [80, 9090]
    );
    let clusters = &d.import.status.as_ref().expect("status").clusters;
    assert_eq!(clusters[0].cluster, "west");

    assert_eq!(d.services.len(), 2);
    let main = &d.services[0];
    let labels = main.service.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels[naming::LABEL_MANAGED_BY], MANAGED_BY);
    assert_eq!(labels[naming::LABEL_SERVICE_NAME], "cart");
    let spec = main.service.spec.as_ref().expect("spec");
    assert!(spec.selector.is_none());
    let ports = spec.ports.as_ref().expect("ports");
    assert_eq!(ports[0].target_port, Some(IntOrString::Int(i32::from(t80))));
    assert_eq!(ports[1].name.as_deref(), Some("port-9090"));
    // One slice per family, on the target ports, labelled for the Service.
    assert_eq!(main.slices.len(), 2);
    let v4 = &main.slices[0];
    assert_eq!(v4.address_type, "IPv4");
    assert_eq!(v4.endpoints[0].addresses, ["10.0.0.5"]);
    assert_eq!(
        v4.ports.as_ref().expect("ports")[0].port,
        Some(i32::from(t80))
    );
    let sl = v4.metadata.labels.as_ref().expect("labels");
    assert_eq!(sl[naming::LABEL_SLICE_SERVICE], "isthmus-cart");
    assert_eq!(sl[naming::LABEL_SLICE_MANAGED_BY], MANAGED_BY);
    assert_eq!(main.slices[1].address_type, "IPv6");
    assert_eq!(
        main.slices[1].metadata.name.as_deref(),
        Some("isthmus-cart-v6")
    );
    // The per-cluster Service routes to west's own target ports.
    let west = &d.services[1];
    let wl = west.service.metadata.labels.as_ref().expect("labels");
    assert_eq!(wl[naming::LABEL_CLUSTER], "west");
    let wp = west
        .service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .expect("ports");
    assert_eq!(
        wp[0].target_port,
        Some(IntOrString::Int(i32::from(west_80)))
    );
    // No gateway: the IPv4 slice exists, empty; no IPv6 slice.
    let d = desired::desired(&imports[0], &addrs, &[]);
    assert_eq!(d.services[0].slices.len(), 1);
    assert!(d.services[0].slices[0].endpoints.is_empty());
}

#[test]
fn wanted_names_cover_every_object_so_nothing_wanted_is_deleted() {
    let v = view(vec![route("shop/cart", false, &[("west", 1, false)])]);
    let imports = desired::imports(&v, &[], &HashSet::new());
    let pool = PortPool::new(15100..=15999, Duration::from_secs(60));
    let addrs = desired::kube_addrs(&imports[0], &pool, &ClusterIps::new());
    let d = desired::desired(&imports[0], &addrs, &["10.0.0.5".parse().expect("ip")]);
    let keep = super::apply::wanted_names(&[&d]);
    assert!(keep.contains("ServiceImport/cart"));
    assert!(keep.contains("Service/isthmus-cart"));
    assert!(keep.contains("EndpointSlice/isthmus-cart"));
    assert_eq!(keep.len(), 1 + 2 + 2, "{keep:?}");
}
