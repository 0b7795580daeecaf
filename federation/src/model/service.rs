//! Services: what a cluster exports (with endpoints, never sent to peers) and the summary it sends
//! to peers (ports, healthy endpoints per zone, weight, metadata).
//!
//! Conversions from the wire types validate everything a hostile peer could send: names, ports,
//! protocols, duplicates and sizes. A summary that fails validation never reaches the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::names::{ClusterName, NameCache, NameError, Namespace, ServiceKey, ServiceName, Zone};
use crate::proto;

/// Limits on what one summary may carry, so a peer cannot make us store arbitrary amounts.
pub const MAX_PORTS: usize = 64;
pub const MAX_ZONES: usize = 64;
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    pub fn to_proto(self) -> proto::Protocol {
        match self {
            Protocol::Http => proto::Protocol::Http,
            Protocol::Http2 => proto::Protocol::Http2,
            Protocol::Grpc => proto::Protocol::Grpc,
            Protocol::Tcp => proto::Protocol::Tcp,
        }
    }

    pub fn from_proto(value: i32) -> Result<Self, ModelError> {
        match proto::Protocol::try_from(value) {
            Ok(proto::Protocol::Http) => Ok(Protocol::Http),
            Ok(proto::Protocol::Http2) => Ok(Protocol::Http2),
            Ok(proto::Protocol::Grpc) => Ok(Protocol::Grpc),
            Ok(proto::Protocol::Tcp) => Ok(Protocol::Tcp),
            _ => Err(ModelError::Invalid(format!("unknown protocol {value}"))),
        }
    }

    /// The SRV protocol label: `_tcp` for every protocol here (they all run over TCP).
    pub fn srv_label(self) -> &'static str {
        "_tcp"
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// One backend of a local service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: SocketAddr,
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<Zone>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn yes() -> bool {
    true
}

pub fn default_weight() -> u32 {
    100
}

/// A service this cluster exports, as its sources describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedService {
    pub key: ServiceKey,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
    pub headless: bool,
    pub weight: u32,
    pub metadata: BTreeMap<String, String>,
    /// Peers allowed to import it; `None` = every peer.
    pub export_to: Option<BTreeSet<ClusterName>>,
    /// When this cluster first exported it (unix ms); MCS conflict resolution uses it.
    pub exported_at_ms: i64,
}

impl ExportedService {
    /// Whether `peer` may see this export.
    pub fn visible_to(&self, peer: &ClusterName) -> bool {
        self.export_to.as_ref().is_none_or(|set| set.contains(peer))
    }

    /// What peers are told: ports and healthy endpoint counts per zone, never addresses.
    pub fn summary(&self, default_zone: &Zone) -> ServiceSummary {
        let mut zones: BTreeMap<&Zone, u32> = BTreeMap::new();
        for ep in self.endpoints.iter().filter(|e| e.ready) {
            *zones
                .entry(ep.zone.as_ref().unwrap_or(default_zone))
                .or_default() += 1;
        }
        ServiceSummary {
            key: self.key.clone(),
            ports: self.ports.clone(),
            zones: zones.into_iter().map(|(z, n)| (z.clone(), n)).collect(),
            weight: self.weight,
            metadata: self.metadata.clone(),
            headless: self.headless,
            exported_at_ms: self.exported_at_ms,
        }
    }
}

/// Checks a port list: non-empty, bounded, ports 1-65535, no duplicate numbers or names.
pub fn validate_ports(ports: &[ServicePort]) -> Result<(), ModelError> {
    if ports.is_empty() {
        return Err(ModelError::Invalid(
            "a service needs at least one port".into(),
        ));
    }
    if ports.len() > MAX_PORTS {
        return Err(ModelError::Invalid(format!("more than {MAX_PORTS} ports")));
    }
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for p in ports {
        if p.port == 0 {
            return Err(ModelError::Invalid(
                "port 0 is not a valid service port".into(),
            ));
        }
        if !numbers.insert(p.port) {
            return Err(ModelError::Invalid(format!("port {} listed twice", p.port)));
        }
        if let Some(name) = &p.name {
            super::names::check_label("port name", name)?;
            if !names.insert(name.as_str()) {
                return Err(ModelError::Invalid(format!(
                    "port name {name:?} listed twice"
                )));
            }
        }
    }
    Ok(())
}

/// Healthy endpoints per zone, sorted by zone. A boxed slice rather than a map: almost every
/// summary names one zone, and a federation may hold 100,000 summaries (a one-entry `BTreeMap`
/// costs a 240-byte node; this costs one 24-byte allocation). Serialized as a map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ZoneCounts(Box<[(Zone, u32)]>);

impl ZoneCounts {
    pub fn get(&self, zone: &Zone) -> Option<&u32> {
        self.0
            .binary_search_by(|(z, _)| z.cmp(zone))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Zone, &u32)> {
        self.0.iter().map(|(z, n)| (z, n))
    }

    pub fn values(&self) -> impl Iterator<Item = &u32> {
        self.0.iter().map(|(_, n)| n)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// From counts that may be unsorted; `Err(zone)` names a zone listed twice.
    fn from_vec(mut counts: Vec<(Zone, u32)>) -> Result<Self, Zone> {
        counts.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = counts.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(w[0].0.clone());
        }
        Ok(Self(counts.into_boxed_slice()))
    }
}

/// Later entries of a zone listed twice replace earlier ones, as in a map.
impl FromIterator<(Zone, u32)> for ZoneCounts {
    fn from_iter<I: IntoIterator<Item = (Zone, u32)>>(iter: I) -> Self {
        let map: BTreeMap<Zone, u32> = iter.into_iter().collect();
        Self(map.into_iter().collect())
    }
}

impl From<BTreeMap<Zone, u32>> for ZoneCounts {
    fn from(map: BTreeMap<Zone, u32>) -> Self {
        Self(map.into_iter().collect())
    }
}

impl Serialize for ZoneCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for ZoneCounts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<Zone, u32>::deserialize(d)?.into())
    }
}

/// The per-service summary peers exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub key: ServiceKey,
    pub ports: Vec<ServicePort>,
    /// Healthy endpoints per zone.
    pub zones: ZoneCounts,
    pub weight: u32,
    pub metadata: BTreeMap<String, String>,
    pub headless: bool,
    pub exported_at_ms: i64,
}

impl ServiceSummary {
    pub fn healthy_endpoints(&self) -> u32 {
        self.zones.values().fold(0u32, |a, b| a.saturating_add(*b))
    }

    /// Whether two exports of the same name agree on what MCS calls the service's properties.
    pub fn compatible_with(&self, other: &ServiceSummary) -> bool {
        let mut a = self.ports.clone();
        let mut b = other.ports.clone();
        a.sort();
        b.sort();
        a == b && self.headless == other.headless
    }

    pub fn to_proto(&self) -> proto::ServiceSummary {
        proto::ServiceSummary {
            key: Some(key_to_proto(&self.key)),
            ports: self.ports.iter().map(port_to_proto).collect(),
            zones: self
                .zones
                .iter()
                .map(|(zone, healthy)| proto::ZoneCount {
                    zone: zone.to_string(),
                    healthy: *healthy,
                })
                .collect(),
            weight: self.weight,
            metadata: self
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            headless: self.headless,
            exported_at_ms: self.exported_at_ms,
        }
    }

    /// Validates a summary received from a peer.
    pub fn from_proto(p: &proto::ServiceSummary) -> Result<Self, ModelError> {
        Self::from_proto_cached(p, &mut NameCache::default())
    }

    /// [`Self::from_proto`], sharing namespace and zone names through `names` (one cache per
    /// update: its services repeat a few namespaces and zones).
    pub fn from_proto_cached(
        p: &proto::ServiceSummary,
        names: &mut NameCache,
    ) -> Result<Self, ModelError> {
        let k = p
            .key
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("service key missing".into()))?;
        let key = ServiceKey::new(names.namespace(&k.namespace)?, k.name.parse()?);
        // Exactly as long as needed: 100,000 summaries hold 100,000 port lists.
        let mut ports = Vec::with_capacity(p.ports.len().min(MAX_PORTS + 1));
        for port in &p.ports {
            ports.push(port_from_proto(port)?);
        }
        validate_ports(&ports).map_err(|e| e.context(&key))?;
        if p.zones.len() > MAX_ZONES {
            return Err(ModelError::Invalid(format!(
                "{key}: more than {MAX_ZONES} zones"
            )));
        }
        let mut counts = Vec::with_capacity(p.zones.len());
        for z in &p.zones {
            counts.push((names.zone(&z.zone)?, z.healthy));
        }
        let zones = ZoneCounts::from_vec(counts)
            .map_err(|zone| ModelError::Invalid(format!("{key}: zone {zone} listed twice")))?;
        let meta_bytes: usize = p.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if p.metadata.len() > MAX_METADATA_ENTRIES || meta_bytes > MAX_METADATA_BYTES {
            return Err(ModelError::Invalid(format!(
                "{key}: metadata over {MAX_METADATA_ENTRIES} entries or {MAX_METADATA_BYTES} bytes"
            )));
        }
        Ok(Self {
            key,
            ports,
            zones,
            weight: p.weight,
            metadata: p
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            headless: p.headless,
            exported_at_ms: p.exported_at_ms,
        })
    }
}

pub fn key_to_proto(key: &ServiceKey) -> proto::ServiceKey {
    proto::ServiceKey {
        namespace: key.namespace.to_string(),
        name: key.name.to_string(),
    }
}

pub fn key_from_proto(key: Option<&proto::ServiceKey>) -> Result<ServiceKey, ModelError> {
    let key = key.ok_or_else(|| ModelError::Invalid("service key missing".into()))?;
    Ok(ServiceKey::new(
        Namespace::new(key.namespace.clone())?,
        ServiceName::new(key.name.clone())?,
    ))
}

pub fn port_to_proto(p: &ServicePort) -> proto::ServicePort {
    proto::ServicePort {
        name: p.name.clone().unwrap_or_default(),
        port: u32::from(p.port),
        protocol: p.protocol.to_proto() as i32,
    }
}

pub fn port_from_proto(p: &proto::ServicePort) -> Result<ServicePort, ModelError> {
    let port = u16::try_from(p.port)
        .map_err(|_| ModelError::Invalid(format!("port {} is out of range 1-65535", p.port)))?;
    Ok(ServicePort {
        name: (!p.name.is_empty()).then(|| p.name.clone()),
        port,
        protocol: Protocol::from_proto(p.protocol)?,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("{0}")]
    Invalid(String),
}

impl ModelError {
    fn context(self, key: &ServiceKey) -> Self {
        match self {
            ModelError::Invalid(msg) => ModelError::Invalid(format!("{key}: {msg}")),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> proto::ServiceSummary {
        proto::ServiceSummary {
            key: Some(proto::ServiceKey {
                namespace: "shop".into(),
                name: "cart".into(),
            }),
            ports: vec![proto::ServicePort {
                name: "http".into(),
                port: 8080,
                protocol: proto::Protocol::Http as i32,
            }],
            zones: vec![proto::ZoneCount {
                zone: "a".into(),
                healthy: 2,
            }],
            weight: 100,
            metadata: Default::default(),
            headless: false,
            exported_at_ms: 1,
        }
    }

    #[test]
    fn summary_round_trips() {
        let s = ServiceSummary::from_proto(&summary()).expect("valid");
        assert_eq!(s.healthy_endpoints(), 2);
        assert_eq!(ServiceSummary::from_proto(&s.to_proto()).expect("valid"), s);
        // Zones are a map in JSON (stored catalogs, the catalog dump), whatever they are inside.
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["zones"], serde_json::json!({ "a": 2 }));
        let back: ServiceSummary = serde_json::from_value(json).expect("from json");
        assert_eq!(back, s);
    }

    #[test]
    fn hostile_summaries_are_refused() {
        type Mutate = fn(&mut proto::ServiceSummary);
        let cases: &[(&str, Mutate)] = &[
            ("no key", |s| s.key = None),
            ("bad name", |s| {
                s.key.as_mut().expect("key").name = "Cart!".into()
            }),
            ("bad namespace", |s| {
                s.key.as_mut().expect("key").namespace = String::new()
            }),
            ("port 0", |s| s.ports[0].port = 0),
            ("port > 65535", |s| s.ports[0].port = 70000),
            ("no ports", |s| s.ports.clear()),
            ("duplicate port", |s| {
                let p = s.ports[0].clone();
                s.ports.push(proto::ServicePort {
                    name: String::new(),
                    ..p
                })
            }),
            ("unknown protocol", |s| s.ports[0].protocol = 99),
            ("unspecified protocol", |s| s.ports[0].protocol = 0),
            ("duplicate zone", |s| {
                let z = s.zones[0].clone();
                s.zones.push(z)
            }),
            ("huge metadata", |s| {
                s.metadata.insert("k".into(), "v".repeat(5000));
            }),
            ("too many ports", |s| {
                s.ports = (1..=65)
                    .map(|p| proto::ServicePort {
                        name: String::new(),
                        port: p,
                        protocol: proto::Protocol::Tcp as i32,
                    })
                    .collect()
            }),
        ];
        for (what, mutate) in cases {
            let mut s = summary();
            mutate(&mut s);
            assert!(
                ServiceSummary::from_proto(&s).is_err(),
                "{what} must be refused"
            );
        }
    }

    #[test]
    fn summary_counts_ready_endpoints_per_zone() {
        let zone_a = Zone::new("a").expect("zone");
        let svc = ExportedService {
            key: ServiceKey::parse("shop/cart").expect("key"),
            ports: vec![ServicePort {
                name: None,
                port: 80,
                protocol: Protocol::Http,
            }],
            endpoints: vec![
                Endpoint {
                    address: "10.0.0.1:80".parse().expect("addr"),
                    ready: true,
                    zone: None,
                    weight: 1,
                },
                Endpoint {
                    address: "[fd00::1]:80".parse().expect("addr"),
                    ready: true,
                    zone: Some(Zone::new("b").expect("z")),
                    weight: 1,
                },
                Endpoint {
                    address: "10.0.0.3:80".parse().expect("addr"),
                    ready: false,
                    zone: None,
                    weight: 1,
                },
            ],
            headless: false,
            weight: 100,
            metadata: BTreeMap::new(),
            export_to: Some([ClusterName::new("west").expect("c")].into()),
            exported_at_ms: 5,
        };
        let s = svc.summary(&zone_a);
        assert_eq!(s.zones.get(&zone_a), Some(&1));
        assert_eq!(s.healthy_endpoints(), 2);
        assert!(svc.visible_to(&ClusterName::new("west").expect("c")));
        assert!(!svc.visible_to(&ClusterName::new("south").expect("c")));
    }
}
