//! What should exist, computed from the federation's import state. Pure: the mesh view, the
//! live gateways' pod IPs, the gateways' verdicts and the allocated target ports in; the
//! ServiceImports, derived Services and EndpointSlices out (owner references are filled in
//! when the owners' uids are known, see [`super::apply`]).
//!
//! Must not: read or write the API server or the store.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort as CoreServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::naming::{self, LABEL_CLUSTER, LABEL_MANAGED_BY, LABEL_SERVICE_NAME};
use super::ports::PortPool;
use crate::kubernetes::MANAGED_BY;
use crate::kubernetes::mcs::{self, ClusterStatus, ServiceImport, ServiceImportSpec};
use crate::mesh::{KubeAddrs, MeshView, Route};
use crate::model::{ClusterName, ServiceKey, ServicePort};

/// One imported clusterset service, as the writer needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    pub key: ServiceKey,
    pub ports: Vec<ServicePort>,
    /// Every cluster of the route: each gets a `<cluster>.<svc>.<ns>` Service.
    pub clusters: Vec<ClusterName>,
    /// The clusters serving it now (`status.clusters`).
    pub serving: Vec<ClusterName>,
}

/// The routes to write: every non-headless clusterset service in the configured namespaces
/// (all when none are configured). `unhealthy` holds the gateways' verdicts as
/// `"<cluster>:<ns>/<svc>"`; a cluster serves when its catalog is live, it reports healthy
/// endpoints and no gateway of ours found it unhealthy (as DNS decides).
pub fn imports(view: &MeshView, namespaces: &[String], unhealthy: &HashSet<String>) -> Vec<Import> {
    view.routes
        .values()
        .filter(|r| !r.headless)
        .filter(|r| {
            namespaces.is_empty() || namespaces.iter().any(|n| n == r.key.namespace.as_str())
        })
        .map(|r| import_of(r, unhealthy))
        .collect()
}

fn import_of(r: &Route, unhealthy: &HashSet<String>) -> Import {
    let serving = r
        .clusters
        .iter()
        .filter(|c| {
            !c.stale
                && c.summary.healthy_endpoints() > 0
                && !unhealthy.contains(&format!(
                    "{}:{}/{}",
                    c.place.cluster, r.key.namespace, r.key.name
                ))
        })
        .map(|c| c.place.cluster.clone())
        .collect();
    Import {
        key: r.key.clone(),
        ports: r.ports.clone(),
        clusters: r.clusters.iter().map(|c| c.place.cluster.clone()).collect(),
        serving,
    }
}

/// Every target-port name the imports need.
pub fn target_port_names(imports: &[Import]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for i in imports {
        for p in &i.ports {
            names.insert(naming::target_port_name(None, &i.key, p.port));
            for c in &i.clusters {
                names.insert(naming::target_port_name(Some(c), &i.key, p.port));
            }
        }
    }
    names
}

/// The ClusterIPs the API server gave the derived Services, by Service name, per namespace.
pub type ClusterIps = BTreeMap<(String, String), IpAddr>;

/// An import's local face: its target ports (those allocated) and known ClusterIPs.
pub fn kube_addrs(i: &Import, pool: &PortPool, ips: &ClusterIps) -> KubeAddrs {
    let ns = i.key.namespace.to_string();
    let target = |c: Option<&ClusterName>, port: u16| {
        pool.get(&naming::target_port_name(c, &i.key, port))
            .map(|a| a.port)
    };
    KubeAddrs {
        target_ports: i
            .ports
            .iter()
            .filter_map(|p| Some((p.port, target(None, p.port)?)))
            .collect(),
        cluster_target_ports: i
            .clusters
            .iter()
            .flat_map(|c| {
                i.ports
                    .iter()
                    .filter_map(move |p| Some((c.clone(), p.port, target(Some(c), p.port)?)))
            })
            .collect(),
        cluster_ip: ips
            .get(&(ns.clone(), naming::derived_service(&i.key)))
            .copied(),
        cluster_ips: i
            .clusters
            .iter()
            .filter_map(|c| {
                let name = naming::derived_cluster_service(c, &i.key);
                Some((c.clone(), *ips.get(&(ns.clone(), name))?))
            })
            .collect(),
    }
}

/// A derived Service and its slices (owners unset).
#[derive(Debug, Clone, PartialEq)]
pub struct DerivedService {
    pub service: Service,
    pub slices: Vec<EndpointSlice>,
}

/// Everything one import wants in its namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub namespace: String,
    pub import: ServiceImport,
    /// The clusterset Service first, then one per cluster.
    pub services: Vec<DerivedService>,
}

fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    let mut all: BTreeMap<String, String> =
        BTreeMap::from([(LABEL_MANAGED_BY.into(), MANAGED_BY.into())]);
    all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.into()),
        labels: Some(all),
        ..Default::default()
    }
}

/// The objects of one import. Ports without an allocated target port are left out (the
/// allocation failed and is reported); `gateways` are the live gateways' pod IPs.
pub fn desired(i: &Import, addrs: &KubeAddrs, gateways: &[IpAddr]) -> Desired {
    let ns = i.key.namespace.to_string();
    let svc = i.key.name.to_string();
    let ports: Vec<mcs::ServicePort> = i
        .ports
        .iter()
        .map(|p| mcs::ServicePort {
            name: Some(naming::port_name(p.name.as_deref(), p.port)),
            protocol: "TCP".into(),
            app_protocol: None,
            port: i32::from(p.port),
        })
        .collect();
    let import = ServiceImport {
        metadata: meta(&ns, &svc, &[]),
        spec: ServiceImportSpec {
            type_: "ClusterSetIP".into(),
            ports,
            ips: addrs.cluster_ip.iter().map(ToString::to_string).collect(),
            session_affinity: None,
        },
        status: Some(mcs::ServiceImportStatus {
            clusters: i
                .serving
                .iter()
                .map(|c| ClusterStatus {
                    cluster: c.to_string(),
                })
                .collect(),
        }),
        ..ServiceImport::new(&ns, &svc)
    };
    let mut services = vec![derived(
        i,
        &ns,
        &naming::derived_service(&i.key),
        None,
        &addrs.target_ports,
        gateways,
    )];
    for c in &i.clusters {
        let targets: Vec<(u16, u16)> = addrs
            .cluster_target_ports
            .iter()
            .filter(|(tc, _, _)| tc == c)
            .map(|(_, p, t)| (*p, *t))
            .collect();
        services.push(derived(
            i,
            &ns,
            &naming::derived_cluster_service(c, &i.key),
            Some(c),
            &targets,
            gateways,
        ));
    }
    Desired {
        namespace: ns,
        import,
        services,
    }
}

fn derived(
    i: &Import,
    ns: &str,
    name: &str,
    cluster: Option<&ClusterName>,
    targets: &[(u16, u16)],
    gateways: &[IpAddr],
) -> DerivedService {
    let svc = i.key.name.to_string();
    let cluster_text = cluster.map(ToString::to_string);
    let mut labels = vec![(LABEL_SERVICE_NAME, svc.as_str())];
    if let Some(c) = &cluster_text {
        labels.push((LABEL_CLUSTER, c.as_str()));
    }
    let mut service_ports = Vec::new();
    let mut slice_ports = Vec::new();
    for p in &i.ports {
        let Some((_, target)) = targets.iter().find(|(sp, _)| *sp == p.port) else {
            continue;
        };
        let port_name = naming::port_name(p.name.as_deref(), p.port);
        service_ports.push(CoreServicePort {
            name: Some(port_name.clone()),
            port: i32::from(p.port),
            protocol: Some("TCP".into()),
            target_port: Some(IntOrString::Int(i32::from(*target))),
            ..Default::default()
        });
        slice_ports.push(EndpointPort {
            name: Some(port_name),
            port: Some(i32::from(*target)),
            protocol: Some("TCP".into()),
            ..Default::default()
        });
    }
    let service = Service {
        metadata: meta(ns, name, &labels),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(service_ports),
            ..Default::default()
        }),
        status: None,
    };
    let mut slices = Vec::new();
    for v6 in [false, true] {
        let addrs: Vec<&IpAddr> = gateways.iter().filter(|ip| ip.is_ipv6() == v6).collect();
        // The IPv4 slice always exists (empty when no gateway is live); the IPv6 one only when
        // some gateway has an IPv6 pod IP.
        if v6 && addrs.is_empty() {
            continue;
        }
        let slice_name = naming::slice_name(name, v6);
        slices.push(EndpointSlice {
            metadata: meta(
                ns,
                &slice_name,
                &[
                    (naming::LABEL_SLICE_SERVICE, name),
                    (naming::LABEL_SLICE_MANAGED_BY, MANAGED_BY),
                ],
            ),
            address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
            endpoints: addrs
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(slice_ports.clone()),
        });
    }
    DerivedService { service, slices }
}
