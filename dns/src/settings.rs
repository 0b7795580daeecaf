//! The DNS settings the zone builder and the servers read, derived once from the federation
//! config's validated `dns:` section (names turned into wire form, region orders resolved).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use isthmus_federation::config::{DnsConfig, DnsRateLimit, Subnet};
use isthmus_federation::model::{ClusterName, Region};

use crate::name;

/// SOA timers (RFC 1912 §2.2 ranges; the minimum, i.e. the negative-caching TTL, is the record
/// TTL).
pub const SOA_REFRESH: u32 = 14_400;
pub const SOA_RETRY: u32 = 3_600;
pub const SOA_EXPIRE: u32 = 1_209_600;

#[derive(Debug, Clone)]
pub struct Nameserver {
    pub name: Vec<u8>,
    pub addresses: Vec<IpAddr>,
}

/// One client region of the GSLB zone: the regions its clients are sent to, in order.
#[derive(Debug, Clone)]
pub struct RegionGroup {
    pub region: Option<Region>,
    pub order: Vec<Region>,
}

#[derive(Debug, Clone)]
pub struct Gslb {
    pub zone: Vec<u8>,
    pub ingress: BTreeMap<ClusterName, Vec<IpAddr>>,
    /// One group per configured region, then the default group (clients no subnet matches).
    pub groups: Vec<RegionGroup>,
    /// `(subnet, group)`, longest prefix first.
    pub subnets: Vec<(Subnet, usize)>,
    pub client_subnet: bool,
}

impl Gslb {
    /// The group of a client address (longest matching prefix), and that prefix's length.
    pub fn group_of(&self, ip: IpAddr) -> (usize, u8) {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.subnets
            .iter()
            .find(|(s, _)| s.contains(ip))
            .map(|(s, g)| (*g, s.prefix))
            .unwrap_or((self.groups.len() - 1, 0))
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub zones: Vec<Vec<u8>>,
    pub ttl: u32,
    pub nxdomain_when_unhealthy: bool,
    pub nameservers: Vec<Nameserver>,
    /// `false`: the defaults (`ns.<zone>` per zone).
    pub nameservers_configured: bool,
    pub udp_payload: u16,
    pub rate_limit: DnsRateLimit,
    pub gslb: Option<Gslb>,
}

impl Settings {
    /// From a validated config; `bound` is where the server listens (the default name server's
    /// address when the bind address is a wildcard).
    pub fn from_config(cfg: &DnsConfig, bound: Option<SocketAddr>) -> Self {
        let mut zones: Vec<Vec<u8>> = cfg.zones.iter().map(|z| name::wire(z)).collect();
        let gslb = cfg.gslb.as_ref().map(|g| {
            let mut groups: Vec<RegionGroup> = g
                .regions
                .iter()
                .map(|r| RegionGroup {
                    region: Some(r.region.clone()),
                    order: r.order(),
                })
                .collect();
            groups.push(RegionGroup {
                region: None,
                order: g.default_prefer.clone(),
            });
            let mut subnets: Vec<(Subnet, usize)> = g
                .regions
                .iter()
                .enumerate()
                .flat_map(|(i, r)| r.subnets.iter().map(move |s| (*s, i)))
                .collect();
            subnets.sort_by_key(|s| std::cmp::Reverse(s.0.prefix));
            Gslb {
                zone: name::wire(&g.zone),
                ingress: g.ingress.clone(),
                groups,
                subnets,
                client_subnet: g.client_subnet,
            }
        });
        if let Some(g) = &gslb {
            zones.push(g.zone.clone());
        }
        let nameservers = if cfg.nameservers.is_empty() {
            let ip = bound.map(|b| b.ip()).or(Some(cfg.bind.ip()));
            let addresses: Vec<IpAddr> = ip.filter(|ip| !ip.is_unspecified()).into_iter().collect();
            // One default name server per zone: `ns.<zone>`.
            zones
                .iter()
                .map(|z| Nameserver {
                    name: name::under(&["ns"], z),
                    addresses: addresses.clone(),
                })
                .collect()
        } else {
            cfg.nameservers
                .iter()
                .map(|n| Nameserver {
                    name: name::wire(&n.name),
                    addresses: n.addresses.clone(),
                })
                .collect()
        };
        Settings {
            zones,
            ttl: u32::try_from(cfg.ttl.as_secs()).unwrap_or(u32::MAX),
            nxdomain_when_unhealthy: cfg.nxdomain_when_unhealthy,
            nameservers,
            nameservers_configured: !cfg.nameservers.is_empty(),
            udp_payload: cfg.udp_payload,
            rate_limit: cfg.rate_limit.clone(),
            gslb,
        }
    }

    /// Name servers listed at `zone`'s apex: with the defaults, the zone's own `ns.<zone>` (each
    /// zone gets one); with configured ones, all of them.
    pub fn nameservers_of(&self, zone: &[u8]) -> Vec<&Nameserver> {
        if self.nameservers_configured {
            self.nameservers.iter().collect()
        } else {
            self.nameservers
                .iter()
                .filter(|n| name::parent(&n.name) == Some(zone))
                .collect()
        }
    }
}
