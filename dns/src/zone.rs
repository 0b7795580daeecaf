//! Mesh view -> zone contents: pure functions from the federation's merged view, the DNS settings
//! and the gateway verdicts to every name the server answers and its records. [`plan`] gives the
//! whole zone; it is the union of [`static_plan`] (apexes and name servers) and one
//! [`route_plan`] per route (what [`crate::rebuild`] re-plans when a route changes), plus the
//! empty non-terminals that join them. [`crate::snapshot`] then encodes it for the query path.
//!
//! Names (zone `clusterset.local` by default; GSLB zone e.g. `mesh.example`):
//!
//! | name | records | exists while |
//! |---|---|---|
//! | `<zone>` | SOA, NS (+ A/AAAA of in-zone name servers) | always |
//! | `<svc>.<ns>.svc.<zone>` | A/AAAA = the service VIP (less any address no gateway could bind: [`Verdicts::answers`]) | the service is in the view (with `nxdomain_when_unhealthy`: and some cluster serves it) |
//! | `_<port>._tcp.<svc>.<ns>.svc.<zone>` | SRV 0 100 `<port>` `<svc>.<ns>.svc.<zone>` | as the service name; `<port>` is the port's name, else its number |
//! | `<cluster>.<svc>.<ns>.svc.<zone>` | A/AAAA = that cluster's VIP | that cluster serves it (healthy, live) |
//! | `<svc>.<ns>.<gslb>` | A/AAAA = ingress of the nearest serving clusters, per client region | some cluster with an ingress address serves it (else all of them answer, or NXDOMAIN with `nxdomain_when_unhealthy`) |
//! | `<cluster>.<svc>.<ns>.<gslb>` | A/AAAA = that cluster's ingress | that cluster serves it |
//! | `_<port>._tcp.<svc>.<ns>.<gslb>` | SRV 0 100 `<port>` `<svc>.<ns>.<gslb>` | as the GSLB service name |
//!
//! Every ancestor of a name inside its zone exists too, without records (an empty non-terminal:
//! NODATA, never NXDOMAIN).
//!
//! Every name of a route lies at or below its **root** in each zone (`<svc>.<ns>.svc.<zone>`,
//! `<svc>.<ns>.<gslb>`). Two routes have different roots at the same depth and zones are
//! disjoint, so no name belongs to two routes; only the ancestors above the roots
//! (`<ns>.svc.<zone>`, `svc.<zone>`, `<ns>.<gslb>`) are shared.

use std::collections::HashMap;
use std::net::IpAddr;

use isthmus_federation::mesh::{MeshView, Route};
use isthmus_federation::model::{ClusterName, ServicePort};
use isthmus_federation::vip::VipAssignment;

use crate::health::{Verdicts, serves};
use crate::name;
use crate::settings::{Gslb, Settings};

/// One record's data (owner, class IN and TTL are implied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rdata {
    Addr(IpAddr),
    Srv { port: u16, target: Vec<u8> },
    Ns(Vec<u8>),
    Soa { mname: Vec<u8>, rname: Vec<u8> },
}

/// What one name holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePlan {
    pub records: Vec<Rdata>,
    /// GSLB names: the addresses per client region group (`Settings::gslb.groups` order).
    pub by_group: Option<Vec<Vec<IpAddr>>>,
}

impl NodePlan {
    /// `self` with `more` added after it: records appended, `by_group` replaced when `more` has
    /// one (what adding both to one plan gives).
    pub fn absorb(&mut self, more: NodePlan) {
        self.records.extend(more.records);
        if more.by_group.is_some() {
            self.by_group = more.by_group;
        }
    }

    /// Its address records.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.records.iter().filter_map(|r| match r {
            Rdata::Addr(ip) => Some(*ip),
            _ => None,
        })
    }
}

/// Every name (lowercase wire form) with its records.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub names: HashMap<Vec<u8>, NodePlan>,
}

impl Plan {
    fn add(&mut self, owner: Vec<u8>, rdata: Rdata) {
        self.names.entry(owner).or_default().records.push(rdata);
    }

    /// The records of `name` as sorted text lines (tests and debugging): `A 10.0.0.1`,
    /// `SRV 8080 echo.demo.svc.clusterset.local`, `GSLB[0] 203.0.113.1`, ...; `None` when the
    /// name does not exist.
    pub fn describe(&self, dotted: &str) -> Option<Vec<String>> {
        let node = self.names.get(&name::wire(dotted))?;
        let mut out: Vec<String> = node
            .records
            .iter()
            .map(|r| match r {
                Rdata::Addr(ip) => format!("A {ip}"),
                Rdata::Srv { port, target } => format!("SRV {port} {}", name::text(target)),
                Rdata::Ns(n) => format!("NS {}", name::text(n)),
                Rdata::Soa { mname, .. } => format!("SOA {}", name::text(mname)),
            })
            .collect();
        if let Some(groups) = &node.by_group {
            for (i, g) in groups.iter().enumerate() {
                let ips: Vec<String> = g.iter().map(ToString::to_string).collect();
                out.push(format!("GSLB[{i}] {}", ips.join(",")));
            }
        }
        out.sort();
        Some(out)
    }
}

/// The names one route puts in the zone, with the empty non-terminals between them and its
/// roots (not above: those are shared).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// In the order first added. A route has a handful of names (one per port and cluster), so a
    /// vector searched front to back beats a map.
    pub names: Vec<(Vec<u8>, NodePlan)>,
    /// The route's root in every zone it has a name in.
    pub roots: Vec<Vec<u8>>,
}

impl RoutePlan {
    pub fn get(&self, owner: &[u8]) -> Option<&NodePlan> {
        self.names
            .iter()
            .find(|(n, _)| n.as_slice() == owner)
            .map(|(_, p)| p)
    }

    fn node(&mut self, owner: Vec<u8>) -> &mut NodePlan {
        let i = match self.names.iter().position(|(n, _)| *n == owner) {
            Some(i) => i,
            None => {
                self.names.push((owner, NodePlan::default()));
                self.names.len() - 1
            }
        };
        &mut self.names[i].1
    }

    fn add(&mut self, owner: Vec<u8>, rdata: Rdata) {
        self.node(owner).records.push(rdata);
    }

    /// The node of the route's root in a zone (every function adding names to a zone adds it).
    fn root(&mut self, root: Vec<u8>) -> &mut NodePlan {
        if !self.roots.contains(&root) {
            self.roots.push(root.clone());
        }
        self.node(root)
    }
}

/// The SRV label of a port: its name, else its number.
fn port_label(p: &ServicePort) -> String {
    match &p.name {
        Some(n) => format!("_{n}"),
        None => format!("_{}", p.port),
    }
}

/// The whole zone. Pure: the same inputs give the same plan.
pub fn plan(view: &MeshView, settings: &Settings, verdicts: &Verdicts) -> Plan {
    let mut plan = Plan::default();
    plan.names.reserve(view.routes.len() * 4 + 16);
    for zone in &settings.zones {
        apex(&mut plan, zone, settings);
    }
    for (_, route) in view.routes.iter() {
        for (owner, node) in route_plan(route, settings, verdicts).names {
            plan.names.entry(owner).or_default().absorb(node);
        }
    }
    add_empty_non_terminals(&mut plan, &settings.zones);
    plan
}

/// What the zone holds without any route: every apex (SOA, NS) and the addresses of in-zone name
/// servers, with their empty non-terminals.
pub fn static_plan(settings: &Settings) -> Plan {
    let mut plan = Plan::default();
    for zone in &settings.zones {
        apex(&mut plan, zone, settings);
    }
    add_empty_non_terminals(&mut plan, &settings.zones);
    plan
}

/// The names of one route in every zone (see the table above), and the empty non-terminals
/// between them and the route's roots. Pure.
pub fn route_plan(route: &Route, settings: &Settings, verdicts: &Verdicts) -> RoutePlan {
    let mut rp = RoutePlan::default();
    let gslb_zone = settings.gslb.as_ref().map(|g| g.zone.as_slice());
    for zone in settings
        .zones
        .iter()
        .filter(|z| Some(z.as_slice()) != gslb_zone)
    {
        mesh_names(&mut rp, route, zone, settings, verdicts);
    }
    if let Some(g) = &settings.gslb {
        gslb_names(&mut rp, route, g, settings, verdicts);
    }
    let mut missing: Vec<Vec<u8>> = Vec::new();
    for (owner, _) in &rp.names {
        let Some(root) = rp.roots.iter().find(|r| name::in_zone(owner, r)) else {
            continue;
        };
        let mut cur = owner.as_slice();
        while cur.len() > root.len() {
            let Some(p) = name::parent(cur) else { break };
            if rp.get(p).is_some() || missing.iter().any(|m| m.as_slice() == p) {
                break;
            }
            missing.push(p.to_vec());
            cur = p;
        }
    }
    for m in missing {
        rp.node(m);
    }
    rp
}

fn apex(plan: &mut Plan, zone: &[u8], settings: &Settings) {
    let servers = settings.nameservers_of(zone);
    let mname = servers
        .first()
        .map(|n| n.name.clone())
        .unwrap_or_else(|| name::under(&["ns"], zone));
    plan.add(
        zone.to_vec(),
        Rdata::Soa {
            mname,
            rname: name::under(&["hostmaster"], zone),
        },
    );
    for ns in servers {
        plan.add(zone.to_vec(), Rdata::Ns(ns.name.clone()));
        if name::in_zone(&ns.name, zone) {
            for ip in &ns.addresses {
                plan.add(ns.name.clone(), Rdata::Addr(*ip));
            }
        }
    }
}

fn mesh_names(
    plan: &mut RoutePlan,
    route: &Route,
    zone: &[u8],
    settings: &Settings,
    verdicts: &Verdicts,
) {
    let key = &route.key;
    let (svc, ns) = (key.name.as_str(), key.namespace.as_str());
    let any_serves = route.clusters.iter().any(|c| serves(c, key, verdicts));
    if settings.nxdomain_when_unhealthy && !any_serves {
        return;
    }
    let owner = name::under(&[svc, ns, "svc"], zone);
    let node = plan.root(owner.clone());
    // An address no gateway could bind is left out: nothing accepts connections there.
    node.records.extend(
        service_addrs(route)
            .filter(|ip| verdicts.answers(ip))
            .map(Rdata::Addr),
    );
    let mut seen = Vec::with_capacity(route.ports.len());
    for p in &route.ports {
        let label = port_label(p);
        if seen.contains(&label) {
            continue;
        }
        let srv = name::under(&[&label, "_tcp", svc, ns, "svc"], zone);
        plan.add(
            srv,
            Rdata::Srv {
                port: p.port,
                target: owner.clone(),
            },
        );
        seen.push(label);
    }
    for (cluster, vips) in &route.cluster_vips {
        let serving = route
            .clusters
            .iter()
            .any(|c| &c.place.cluster == cluster && serves(c, key, verdicts));
        if serving {
            let owner = name::under(&[cluster.as_str(), svc, ns, "svc"], zone);
            let node = plan.node(owner);
            node.records.extend(
                cluster_addrs(route, cluster, vips)
                    .filter(|ip| verdicts.answers(ip))
                    .map(Rdata::Addr),
            );
        }
    }
}

/// What `<svc>.<ns>` answers: on Kubernetes the derived Service's ClusterIP once it has one,
/// else the VIPs.
fn service_addrs(route: &Route) -> Box<dyn Iterator<Item = IpAddr> + '_> {
    match route.kube.as_ref().and_then(|k| k.cluster_ip) {
        Some(ip) => Box::new(std::iter::once(ip)),
        None => Box::new(route.vips.addrs()),
    }
}

/// What `<cluster>.<svc>.<ns>` answers: its derived Service's ClusterIP on Kubernetes, else its
/// VIPs.
fn cluster_addrs<'a>(
    route: &'a Route,
    cluster: &ClusterName,
    vips: &'a VipAssignment,
) -> Box<dyn Iterator<Item = IpAddr> + 'a> {
    let ip = route
        .kube
        .as_ref()
        .and_then(|k| k.cluster_ips.iter().find(|(c, _)| c == cluster))
        .map(|(_, ip)| *ip);
    match ip {
        Some(ip) => Box::new(std::iter::once(ip)),
        None => Box::new(vips.addrs()),
    }
}

fn gslb_names(
    plan: &mut RoutePlan,
    route: &Route,
    g: &Gslb,
    settings: &Settings,
    verdicts: &Verdicts,
) {
    let key = &route.key;
    let (svc, ns) = (key.name.as_str(), key.namespace.as_str());
    // Clusters serving the service that have a public ingress: (region, serving, addresses).
    let candidates: Vec<_> = route
        .clusters
        .iter()
        .filter_map(|c| {
            let addrs = g.ingress.get(&c.place.cluster)?;
            Some((c, serves(c, key, verdicts), addrs))
        })
        .collect();
    if candidates.is_empty() {
        return;
    }
    for (c, ok, addrs) in &candidates {
        if *ok {
            let owner = name::under(&[c.place.cluster.as_str(), svc, ns], &g.zone);
            let node = plan.node(owner);
            node.records.extend(addrs.iter().copied().map(Rdata::Addr));
        }
    }
    let healthy: Vec<_> = candidates.iter().filter(|(_, ok, _)| *ok).collect();
    let by_group: Vec<Vec<IpAddr>> = if healthy.is_empty() {
        if settings.nxdomain_when_unhealthy {
            return;
        }
        // Nobody is known to serve it: answer every ingress rather than nothing (fail open).
        let all: Vec<IpAddr> = candidates
            .iter()
            .flat_map(|(_, _, a)| a.iter().copied())
            .collect();
        vec![all; g.groups.len()]
    } else {
        g.groups
            .iter()
            .map(|group| {
                let tier = group.order.iter().find_map(|region| {
                    let t: Vec<IpAddr> = healthy
                        .iter()
                        .filter(|(c, _, _)| &c.place.region == region)
                        .flat_map(|(_, _, a)| a.iter().copied())
                        .collect();
                    (!t.is_empty()).then_some(t)
                });
                tier.unwrap_or_else(|| {
                    healthy
                        .iter()
                        .flat_map(|(_, _, a)| a.iter().copied())
                        .collect()
                })
            })
            .collect()
    };
    let owner = name::under(&[svc, ns], &g.zone);
    plan.root(owner.clone()).by_group = Some(by_group);
    let mut seen = Vec::new();
    for p in &route.ports {
        let label = port_label(p);
        if seen.contains(&label) {
            continue;
        }
        let srv = name::under(&[&label, "_tcp", svc, ns], &g.zone);
        plan.add(
            srv,
            Rdata::Srv {
                port: p.port,
                target: owner.clone(),
            },
        );
        seen.push(label);
    }
}

/// Adds every missing ancestor (up to the zone apex) of every name.
fn add_empty_non_terminals(plan: &mut Plan, zones: &[Vec<u8>]) {
    let mut missing: Vec<Vec<u8>> = Vec::new();
    for owner in plan.names.keys() {
        let Some(zone) = zones.iter().find(|z| name::in_zone(owner, z)) else {
            continue;
        };
        let mut cur = owner.as_slice();
        while cur.len() > zone.len() {
            let Some(p) = name::parent(cur) else { break };
            if plan.names.contains_key(p) {
                break;
            }
            missing.push(p.to_vec());
            cur = p;
        }
    }
    for m in missing {
        plan.names.entry(m).or_default();
    }
}
