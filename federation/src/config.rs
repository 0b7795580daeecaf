//! The federation's config file (YAML). Unknown fields are refused with the field named; every
//! value is validated once at start by [`FederationConfig::validate`], which also resolves
//! defaults that depend on other fields (data dir, trust domain, admin socket).
//!
//! bind ≠ advertise: every listener peers dial has a bind address and a separately configured
//! advertised address (a LoadBalancer IP, a NAT address, a namespace address).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::TrustDomain;
pub use crate::kubernetes::config::KubernetesConfig;
use crate::model::{ClusterName, Region, Zone};
use crate::store::StoreConfig;
use crate::vip::Cidr;

fn d(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// A listener with a separate advertised address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub bind: SocketAddr,
    /// What others dial (`host:port`); defaults to `bind` when that is not a wildcard address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
}

impl Listener {
    /// Checks that others can be told an address to dial: `field` is the listener's config path
    /// (`listen.peering`, `listen.api`), named in the error.
    pub fn check(&self, field: &str) -> Result<(), ConfigError> {
        self.advertised(field).map(drop)
    }

    /// What others dial: the advertised address, else the bind address when it is not a
    /// wildcard (a bind port 0 is replaced by the bound port at run time).
    pub fn advertised(&self, field: &str) -> Result<String, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            field: format!("{field}.advertise"),
            reason,
        };
        match &self.advertise {
            Some(a) => match advertise_problem(a) {
                Some(problem) => Err(invalid(format!("{a:?} {problem}"))),
                None => Ok(a.clone()),
            },
            None if !self.bind.ip().is_unspecified() => Ok(self.bind.to_string()),
            None => Err(invalid(format!(
                "{field}.bind {} is a wildcard: set {field}.advertise to the address others dial",
                self.bind
            ))),
        }
    }
}

/// Why `text` cannot be an advertised address (what others dial), if it cannot: it must be
/// `host:port` (an IP literal, IPv6 in brackets, or a DNS name) with a port above zero, and not
/// a wildcard address. Shared with the gateway's inbound listener.
pub fn advertise_problem(text: &str) -> Option<&'static str> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return if addr.ip().is_unspecified() {
            Some("is a wildcard address: give the address others dial")
        } else if addr.port() == 0 {
            Some("needs a port between 1 and 65535")
        } else {
            None
        };
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Some("is not host:port");
    };
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !name_ok {
        return Some("is not host:port (host: an IP address or a DNS name)");
    }
    match port.parse::<u16>() {
        Ok(1..) => None,
        _ => Some("needs a port between 1 and 65535"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// Exposed to peer clusters (mTLS, peering).
    pub peering: Listener,
    /// Gateways and registering workloads of this cluster (mTLS; bootstrap by token).
    #[serde(default = "default_api")]
    pub api: Listener,
    /// Read-only admin HTTP: /healthz /readyz /metrics /config_dump.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// State-changing admin operations (Unix socket, owner-only). Default `<data_dir>/admin.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_socket: Option<PathBuf>,
}

fn default_api() -> Listener {
    Listener {
        bind: SocketAddr::from(([127, 0, 0, 1], 15012)),
        advertise: None,
    }
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15000))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    /// How long a released address stays held for its old name.
    #[serde(default = "default_quarantine", with = "crate::duration")]
    pub quarantine: Duration,
    /// VIP names one peer's services may hold here (each imported service takes two: its
    /// `<cluster>.<svc>.<ns>` and its `<svc>.<ns>` name). An update that would take more is
    /// refused whole, so one peer cannot exhaust the range for the others. Default: half the
    /// smallest configured range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_peer: Option<u64>,
}

fn default_quarantine() -> Duration {
    d(3600)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// The watched exports/imports file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default = "default_poll", with = "crate::duration")]
    pub poll_interval: Duration,
}

fn default_poll() -> Duration {
    Duration::from_millis(500)
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            file: None,
            poll_interval: default_poll(),
        }
    }
}

/// An operator-provided intermediate CA instead of a generated root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntermediateCa {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The chain above the intermediate, up to and including its root.
    pub chain: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// File holding the base64 key-encryption key for the CA's private key at rest. When absent,
    /// the `ISTHMUS_KEK` environment variable is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek_file: Option<PathBuf>,
    /// Lifetime of leaf certificates (gateways, this federation). Down to seconds, for tests.
    #[serde(default = "default_leaf", with = "crate::duration")]
    pub leaf_lifetime: Duration,
    #[serde(default = "default_root_validity", with = "crate::duration")]
    pub root_validity: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate: Option<IntermediateCa>,
}

fn default_leaf() -> Duration {
    d(3600)
}

fn default_root_validity() -> Duration {
    d(10 * 365 * 86_400)
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            kek_file: None,
            leaf_lifetime: default_leaf(),
            root_validity: default_root_validity(),
            intermediate: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeeringConfig {
    #[serde(default = "default_token_ttl", with = "crate::duration")]
    pub token_ttl: Duration,
    /// Application heartbeat on the peering stream.
    #[serde(default = "default_heartbeat", with = "crate::duration")]
    pub heartbeat: Duration,
    /// A peer silent for this long is considered disconnected (stream dropped, then redialed).
    #[serde(default = "default_silence", with = "crate::duration")]
    pub silence_timeout: Duration,
    #[serde(default = "default_backoff_max", with = "crate::duration")]
    pub reconnect_max_backoff: Duration,
}

fn default_token_ttl() -> Duration {
    d(3600)
}
fn default_heartbeat() -> Duration {
    d(5)
}
fn default_silence() -> Duration {
    d(20)
}
fn default_backoff_max() -> Duration {
    d(10)
}

impl Default for PeeringConfig {
    fn default() -> Self {
        Self {
            token_ttl: default_token_ttl(),
            heartbeat: default_heartbeat(),
            silence_timeout: default_silence(),
            reconnect_max_backoff: default_backoff_max(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    #[serde(default = "default_min_ttl", with = "crate::duration")]
    pub min_ttl: Duration,
    #[serde(default = "default_max_ttl", with = "crate::duration")]
    pub max_ttl: Duration,
    #[serde(default = "default_ttl", with = "crate::duration")]
    pub default_ttl: Duration,
}

fn default_min_ttl() -> Duration {
    d(1)
}
fn default_max_ttl() -> Duration {
    d(300)
}
fn default_ttl() -> Duration {
    d(15)
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            min_ttl: default_min_ttl(),
            max_ttl: default_max_ttl(),
            default_ttl: default_ttl(),
        }
    }
}

/// The whole federation config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    pub cluster: ClusterName,
    /// Defaults to `<cluster>.mesh`. Must differ from every peer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<TrustDomain>,
    pub region: Region,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<Zone>,
    pub data_dir: PathBuf,
    /// Default: the embedded store under `<data_dir>/store`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreConfig>,
    pub listen: Listeners,
    pub vips: VipConfig,
    #[serde(default)]
    pub catalog: CatalogConfig,
    #[serde(default)]
    pub ca: CaConfig,
    #[serde(default)]
    pub peering: PeeringConfig,
    /// Leases of registered workload endpoints.
    #[serde(default)]
    pub registry: LeaseConfig,
    /// Leases of gateway registrations.
    #[serde(default)]
    pub gateways: LeaseConfig,
    /// Global DNS for mesh names (and the GSLB zone). Absent = no DNS server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
    /// MCS exports and imports on Kubernetes. Absent = not on Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesConfig>,
    /// OpenTelemetry traces of control-plane work (off without `tracing.endpoint`).
    #[serde(default)]
    pub tracing: crate::telemetry::TracingConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("config {path}: {detail}")]
    Parse { path: String, detail: String },
    #[error("config field {field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl FederationConfig {
    pub fn from_yaml(path: &str, text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            detail: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: p.clone(),
            detail: e.to_string(),
        })?;
        Self::from_yaml(&p, &text)
    }

    pub fn trust_domain(&self) -> TrustDomain {
        match &self.trust_domain {
            Some(td) => td.clone(),
            // Invariant: a cluster name is a DNS label, so `<cluster>.mesh` is a valid trust domain.
            #[allow(clippy::expect_used)]
            None => format!("{}.mesh", self.cluster)
                .parse()
                .expect("label.mesh is a valid trust domain"),
        }
    }

    pub fn zone(&self) -> Zone {
        // Invariant: a region is a label, and so a valid zone.
        #[allow(clippy::expect_used)]
        self.zone
            .clone()
            .unwrap_or_else(|| Zone::new(self.region.as_str()).expect("a region is a valid zone"))
    }

    pub fn store_config(&self) -> StoreConfig {
        self.store.clone().unwrap_or_else(|| StoreConfig::Embedded {
            data_dir: self.data_dir.join("store"),
        })
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.listen
            .admin_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.sock"))
    }

    pub fn vip_ranges(&self) -> Result<(Option<Cidr>, Option<Cidr>), ConfigError> {
        let parse = |field: &str, v: &Option<String>| {
            v.as_deref()
                .map(Cidr::parse)
                .transpose()
                .map_err(|e| ConfigError::Invalid {
                    field: field.into(),
                    reason: e.to_string(),
                })
        };
        Ok((
            parse("vips.ipv4", &self.vips.ipv4)?,
            parse("vips.ipv6", &self.vips.ipv6)?,
        ))
    }

    /// VIP names one peer may hold: `vips.max_per_peer`, else half the smallest range.
    pub fn vip_quota(&self) -> Result<u64, ConfigError> {
        let (v4, v6) = self.vip_ranges()?;
        let smallest = [v4, v6]
            .into_iter()
            .flatten()
            .map(|c| c.capacity())
            .min()
            .unwrap_or(0);
        let quota = self.vips.max_per_peer.unwrap_or(smallest / 2);
        if quota < 2 || quota > smallest {
            return Err(ConfigError::Invalid {
                field: "vips.max_per_peer".into(),
                reason: format!(
                    "{quota} is not between 2 (one service) and {smallest} (the smallest range's \
                     addresses): widen the range or pick a quota inside it"
                ),
            });
        }
        Ok(quota)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            field: field.into(),
            reason,
        };
        if let Err((field, reason)) = self.tracing.validate() {
            return Err(invalid(&format!("tracing.{field}"), reason));
        }
        let (v4, v6) = self.vip_ranges()?;
        if v4.is_none() && v6.is_none() {
            return Err(invalid(
                "vips",
                "set vips.ipv4 and/or vips.ipv6 (e.g. 127.77.0.0/24)".into(),
            ));
        }
        if v4.is_some_and(|c| c.to_string().contains(':')) {
            return Err(invalid("vips.ipv4", "must be an IPv4 range".into()));
        }
        if v6.is_some_and(|c| !c.to_string().contains(':')) {
            return Err(invalid("vips.ipv6", "must be an IPv6 range".into()));
        }
        self.vip_quota()?;
        self.listen.peering.check("listen.peering")?;
        self.listen.api.check("listen.api")?;
        if self.ca.leaf_lifetime < Duration::from_secs(1) {
            return Err(invalid("ca.leaf_lifetime", "must be at least 1s".into()));
        }
        if self.ca.root_validity <= self.ca.leaf_lifetime * 2 {
            return Err(invalid(
                "ca.root_validity",
                "must be much longer than ca.leaf_lifetime".into(),
            ));
        }
        if self.peering.silence_timeout <= self.peering.heartbeat {
            return Err(invalid(
                "peering.silence_timeout",
                "must be longer than peering.heartbeat".into(),
            ));
        }
        for (field, l) in [("registry", &self.registry), ("gateways", &self.gateways)] {
            if l.min_ttl > l.default_ttl || l.default_ttl > l.max_ttl || l.min_ttl.is_zero() {
                return Err(invalid(
                    field,
                    "need 0 < min_ttl <= default_ttl <= max_ttl".into(),
                ));
            }
        }
        if let Some(dns) = &self.dns {
            dns.validate()?;
        }
        if let Some(k) = &self.kubernetes {
            k.validate()?;
        }
        Ok(())
    }

    /// Config with secrets redacted (there are none inline today: the KEK comes from a file or
    /// the environment), for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

// ---------------------------------------------------------------------------------------------
// Global DNS (`dns:`). Plain data, validated here; the `isthmus-dns` crate turns it into its
// runtime settings and never re-validates.
// ---------------------------------------------------------------------------------------------

/// The `dns:` section: the authoritative server for mesh names and the GSLB zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `false` keeps the section but starts no server.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// UDP and TCP listen address (port 0 = ephemeral, printed in the ready line).
    #[serde(default = "default_dns_bind")]
    pub bind: SocketAddr,
    /// Mesh zones: `<svc>.<ns>.svc.<zone>` and `<cluster>.<svc>.<ns>.svc.<zone>`.
    #[serde(default = "default_dns_zones")]
    pub zones: Vec<String>,
    /// TTL of every record, and the SOA minimum (negative-caching TTL).
    #[serde(default = "default_dns_ttl", with = "crate::duration")]
    pub ttl: Duration,
    /// `<svc>` names answer NXDOMAIN while no cluster serving them is healthy (default: they keep
    /// answering their VIP, since the gateway fails over behind it).
    #[serde(default)]
    pub nxdomain_when_unhealthy: bool,
    /// NS records at every apex. Default: `ns.<zone>`, with the bind address as its address when
    /// that is not a wildcard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<DnsNameserver>,
    /// Largest UDP response (EDNS); larger answers are sent with TC=1 (the client retries over
    /// TCP). 512-1232.
    #[serde(default = "default_udp_payload")]
    pub udp_payload: u16,
    /// UDP worker threads (one socket each, SO_REUSEPORT). 0 = one per CPU, at most 4.
    #[serde(default)]
    pub udp_workers: usize,
    #[serde(default)]
    pub rate_limit: DnsRateLimit,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gslb: Option<GslbConfig>,
}

fn yes() -> bool {
    true
}

fn default_dns_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5353))
}

fn default_dns_zones() -> Vec<String> {
    vec!["clusterset.local".into()]
}

fn default_dns_ttl() -> Duration {
    d(5)
}

fn default_udp_payload() -> u16 {
    1232
}

/// A name server of the served zones (an NS record, and its address records when in-zone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsNameserver {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<std::net::IpAddr>,
}

/// Response-rate limiting per client prefix over UDP (TCP is never limited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRateLimit {
    /// Responses per second per client prefix; 0 turns rate limiting off.
    #[serde(default = "default_rrl_rate")]
    pub responses_per_second: u32,
    /// Burst allowance, in seconds of `responses_per_second`.
    #[serde(default = "default_rrl_burst")]
    pub burst_seconds: u32,
    /// Of the responses over the limit, every `slip`-th is sent truncated (TC=1: a real client
    /// retries over TCP) and the others are dropped. 0 = drop all.
    #[serde(default = "default_rrl_slip")]
    pub slip: u32,
    #[serde(default = "default_rrl_v4")]
    pub ipv4_prefix: u8,
    #[serde(default = "default_rrl_v6")]
    pub ipv6_prefix: u8,
}

/// High enough for a cluster's resolvers (a node-local cache forwards every pod's queries from one
/// address); low enough that the server is no use for reflecting traffic at a victim.
fn default_rrl_rate() -> u32 {
    10_000
}
fn default_rrl_burst() -> u32 {
    2
}
fn default_rrl_slip() -> u32 {
    2
}
fn default_rrl_v4() -> u8 {
    24
}
fn default_rrl_v6() -> u8 {
    56
}

impl Default for DnsRateLimit {
    fn default() -> Self {
        Self {
            responses_per_second: default_rrl_rate(),
            burst_seconds: default_rrl_burst(),
            slip: default_rrl_slip(),
            ipv4_prefix: default_rrl_v4(),
            ipv6_prefix: default_rrl_v6(),
        }
    }
}

/// The GSLB zone: `<svc>.<ns>.<zone>` answers the public ingress address of the nearest healthy
/// cluster serving the service; `<cluster>.<svc>.<ns>.<zone>` that cluster's, while healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GslbConfig {
    pub zone: String,
    /// Public ingress addresses per cluster. Clusters not listed are never answered.
    pub ingress: BTreeMap<ClusterName, Vec<std::net::IpAddr>>,
    /// Client subnets per region, with the order of regions to try for those clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<GslbRegion>,
    /// Region order for clients no subnet matches. Empty: every healthy cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_prefer: Vec<Region>,
    /// Use the EDNS Client Subnet option (RFC 7871) of a query, when present, instead of its
    /// source address.
    #[serde(default = "yes")]
    pub client_subnet: bool,
}

/// Clients in `subnets` are nearest to `region`; they are sent to the first region of `prefer`
/// (default: `[region]`) with a healthy cluster, then to any other healthy cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GslbRegion {
    pub region: Region,
    pub subnets: Vec<Subnet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefer: Vec<Region>,
}

impl GslbRegion {
    /// The region order for this region's clients.
    pub fn order(&self) -> Vec<Region> {
        if self.prefer.is_empty() {
            vec![self.region.clone()]
        } else {
            self.prefer.clone()
        }
    }
}

/// A client subnet (`10.0.0.0/8`, `2001:db8::/32`); host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (a, p) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?}: expected <address>/<prefix>"))?;
        let addr: std::net::IpAddr = a
            .parse()
            .map_err(|_| format!("{text:?}: not an IP address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{text:?}: prefix is not a number"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("{text:?}: prefix longer than the address"));
        }
        let s = Subnet { addr, prefix };
        if s.masked(addr) != addr {
            return Err(format!(
                "{text:?}: host bits are set: give the network address"
            ));
        }
        Ok(s)
    }

    /// `ip` with the bits past this prefix cleared (an address of the other family is returned
    /// unchanged).
    pub fn masked(&self, ip: std::net::IpAddr) -> std::net::IpAddr {
        use std::net::IpAddr;
        match ip {
            IpAddr::V4(v) => {
                let bits = u32::from(v);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v) => {
                let bits = u128::from(v);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == self.addr
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Subnet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Subnet::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Checks a DNS name written in config: lowercase LDH labels (`_` allowed), at most 253
/// characters; a trailing dot is refused so that every name is written one way.
pub fn check_dns_name(text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > 253 {
        return Err(format!("{text:?}: a DNS name has 1-253 characters"));
    }
    for label in text.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{text:?}: labels are 1-63 lowercase letters, digits, '-' or '_', without a trailing dot"
            ));
        }
    }
    Ok(())
}

/// Whether `name` is `zone` or below it.
fn in_zone(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

impl DnsConfig {
    /// Every zone served: the mesh zones, then the GSLB zone.
    pub fn all_zones(&self) -> impl Iterator<Item = &str> {
        self.zones
            .iter()
            .map(String::as_str)
            .chain(self.gslb.as_ref().map(|g| g.zone.as_str()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            field: format!("dns.{field}"),
            reason,
        };
        if self.zones.is_empty() {
            return Err(invalid(
                "zones",
                "list at least one zone, e.g. clusterset.local".into(),
            ));
        }
        let zones: Vec<&str> = self.all_zones().collect();
        for (i, z) in zones.iter().enumerate() {
            let field = if i < self.zones.len() {
                "zones"
            } else {
                "gslb.zone"
            };
            check_dns_name(z).map_err(|e| invalid(field, e))?;
            for other in &zones[..i] {
                if in_zone(z, other) || in_zone(other, z) {
                    return Err(invalid(
                        field,
                        format!("{z} overlaps {other}: zones must be disjoint"),
                    ));
                }
            }
        }
        let ttl = self.ttl.as_secs();
        if !(1..=86_400).contains(&ttl) || self.ttl.subsec_nanos() != 0 {
            return Err(invalid("ttl", "must be whole seconds from 1s to 1d".into()));
        }
        if !(512..=1232).contains(&self.udp_payload) {
            return Err(invalid(
                "udp_payload",
                format!(
                    "{} is outside 512-1232 (1232 avoids IP fragmentation)",
                    self.udp_payload
                ),
            ));
        }
        if self.udp_workers > 64 {
            return Err(invalid("udp_workers", "at most 64".into()));
        }
        for ns in &self.nameservers {
            check_dns_name(&ns.name).map_err(|e| invalid("nameservers", e))?;
            if zones.iter().any(|z| in_zone(&ns.name, z)) && ns.addresses.is_empty() {
                return Err(invalid(
                    "nameservers",
                    format!("{} is inside a served zone: give its addresses", ns.name),
                ));
            }
        }
        if self.enabled && self.nameservers.is_empty() && self.bind.ip().is_unspecified() {
            // The default name server is `ns.<zone>` at the bind address: a wildcard is no
            // address, so the zone's NS and SOA MNAME would name a host nobody can resolve.
            return Err(invalid(
                "nameservers",
                format!(
                    "dns.bind {} is a wildcard, so the default name server ns.{} would have no \
                     address: list the name servers and the addresses resolvers reach this server \
                     at (nameservers: [{{name: ns1.{}, addresses: [<this host's address>]}}]), or \
                     bind a specific address",
                    self.bind, self.zones[0], self.zones[0]
                ),
            ));
        }
        let rl = &self.rate_limit;
        if rl.ipv4_prefix > 32 || rl.ipv6_prefix > 128 {
            return Err(invalid(
                "rate_limit",
                "ipv4_prefix is at most 32 and ipv6_prefix at most 128".into(),
            ));
        }
        if rl.responses_per_second > 0 && rl.burst_seconds == 0 {
            return Err(invalid(
                "rate_limit.burst_seconds",
                "must be at least 1".into(),
            ));
        }
        if let Some(g) = &self.gslb {
            if g.ingress.is_empty() {
                return Err(invalid(
                    "gslb.ingress",
                    "list the public ingress addresses of at least one cluster".into(),
                ));
            }
            for (cluster, addrs) in &g.ingress {
                if addrs.is_empty() {
                    return Err(invalid(
                        "gslb.ingress",
                        format!("cluster {cluster} has no address"),
                    ));
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for r in &g.regions {
                if !seen.insert(r.region.clone()) {
                    return Err(invalid(
                        "gslb.regions",
                        format!("region {} is listed twice", r.region),
                    ));
                }
                if r.subnets.is_empty() {
                    return Err(invalid(
                        "gslb.regions",
                        format!("region {} has no subnets", r.region),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
cluster: east
region: us-east
data_dir: /tmp/isthmus-east
listen:
  peering: {bind: 127.0.0.1:15443}
vips: {ipv4: 127.77.0.0/24}
";

    #[test]
    fn minimal_config_and_defaults() {
        let cfg = FederationConfig::from_yaml("t.yaml", GOOD).expect("valid");
        assert_eq!(cfg.trust_domain().to_string(), "east.mesh");
        assert_eq!(cfg.zone().as_str(), "us-east");
        assert_eq!(cfg.listen.api.bind.port(), 15012);
        assert_eq!(
            cfg.listen
                .peering
                .advertised("listen.peering")
                .expect("adv"),
            "127.0.0.1:15443"
        );
        assert_eq!(
            cfg.admin_socket(),
            PathBuf::from("/tmp/isthmus-east/admin.sock")
        );
        assert!(matches!(cfg.store_config(), StoreConfig::Embedded { .. }));
        assert_eq!(cfg.vip_quota().expect("quota"), 127, "half the /24");
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (
                GOOD.replace("cluster: east", "cluster: East"),
                "cluster name",
            ),
            (format!("{GOOD}bogus: 1\n"), "bogus"),
            (
                GOOD.replace("vips: {ipv4: 127.77.0.0/24}", "vips: {}"),
                "vips",
            ),
            (GOOD.replace("127.77.0.0/24", "127.77.0.1/24"), "vips.ipv4"),
            (
                GOOD.replace("0.0/24}", "0.0/24, max_per_peer: 1}"),
                "vips.max_per_peer",
            ),
            (
                GOOD.replace("0.0/24}", "0.0/24, max_per_peer: 255}"),
                "vips.max_per_peer",
            ),
            (
                GOOD.replace("{bind: 127.0.0.1:15443}", "{bind: 0.0.0.0:15443}"),
                "advertise",
            ),
            (format!("{GOOD}ca: {{leaf_lifetime: 10x}}\n"), "duration"),
            (
                format!("{GOOD}ca: {{leaf_lifetime: 0s}}\n"),
                "ca.leaf_lifetime",
            ),
        ];
        for (text, needle) in cases {
            let err = FederationConfig::from_yaml("t.yaml", &text)
                .expect_err(needle)
                .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    /// Every listener others dial is checked, and the error names that listener's field.
    #[test]
    fn every_listener_needs_an_address_others_can_dial() {
        let wildcard_api = GOOD.replace(
            "  peering: {bind: 127.0.0.1:15443}",
            "  peering: {bind: 127.0.0.1:15443}\n  api: {bind: 0.0.0.0:15012}",
        );
        let cases = [
            (wildcard_api.clone(), "listen.api.advertise"),
            (
                GOOD.replace("{bind: 127.0.0.1:15443}", "{bind: '[::]:15443'}"),
                "listen.peering.advertise",
            ),
            (
                GOOD.replace(
                    "{bind: 127.0.0.1:15443}",
                    "{bind: 127.0.0.1:15443, advertise: '0.0.0.0:15443'}",
                ),
                "listen.peering.advertise",
            ),
            (
                GOOD.replace(
                    "{bind: 127.0.0.1:15443}",
                    "{bind: 127.0.0.1:15443, advertise: 'peer.example.com'}",
                ),
                "listen.peering.advertise",
            ),
            (
                wildcard_api.replace("0.0.0.0:15012}", "0.0.0.0:15012, advertise: 'fed:0'}"),
                "listen.api.advertise",
            ),
            (
                wildcard_api.replace("0.0.0.0:15012}", "0.0.0.0:15012, advertise: 'a b:1'}"),
                "listen.api.advertise",
            ),
        ];
        for (text, field) in cases {
            let err = FederationConfig::from_yaml("t.yaml", &text)
                .expect_err(field)
                .to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        let fixed = wildcard_api.replace(
            "0.0.0.0:15012}",
            "0.0.0.0:15012, advertise: 'fed.east.example:15012'}",
        );
        let cfg = FederationConfig::from_yaml("t.yaml", &fixed).expect("valid");
        assert_eq!(
            cfg.listen.api.advertised("listen.api").expect("adv"),
            "fed.east.example:15012"
        );
        for good in ["10.0.0.1:15443", "[fd00::1]:15443", "gw-1.east:443"] {
            assert_eq!(advertise_problem(good), None, "{good}");
        }
        for bad in ["10.0.0.1", "[::]:1", "host:", ":80", "a..b:1", "h:70000"] {
            assert!(advertise_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn dns_section_defaults_and_errors() {
        let cfg =
            FederationConfig::from_yaml("t.yaml", &format!("{GOOD}dns: {{}}\n")).expect("valid");
        let dns = cfg.dns.expect("dns");
        assert!(dns.enabled);
        assert_eq!(dns.bind.to_string(), "127.0.0.1:5353");
        assert_eq!(dns.zones, ["clusterset.local"]);
        assert_eq!(dns.ttl, Duration::from_secs(5));
        assert_eq!(dns.udp_payload, 1232);
        assert_eq!(dns.rate_limit.responses_per_second, 10_000);
        assert!(
            FederationConfig::from_yaml("t.yaml", GOOD)
                .expect("valid")
                .dns
                .is_none()
        );
        let gslb = "dns:\n  gslb:\n    zone: mesh.example\n    ingress: {east: [203.0.113.10]}\n    regions:\n      - {region: us-east, subnets: [10.0.0.0/8], prefer: [us-east, us-west]}\n";
        let cfg = FederationConfig::from_yaml("t.yaml", &format!("{GOOD}{gslb}")).expect("valid");
        let g = cfg.dns.as_ref().and_then(|d| d.gslb.clone()).expect("gslb");
        assert!(g.regions[0].subnets[0].contains("10.9.8.7".parse().expect("ip")));
        assert!(!g.regions[0].subnets[0].contains("11.0.0.1".parse().expect("ip")));
        assert_eq!(
            cfg.dump()["dns"]["gslb"]["regions"][0]["subnets"][0],
            "10.0.0.0/8"
        );
        let cases = [
            ("dns: {bogus: 1}\n", "bogus"),
            ("dns: {zones: [Clusterset.local]}\n", "dns.zones"),
            ("dns: {zones: [clusterset.local.]}\n", "dns.zones"),
            ("dns: {zones: [a.b, b]}\n", "overlaps"),
            ("dns: {ttl: 0s}\n", "dns.ttl"),
            ("dns: {udp_payload: 4096}\n", "dns.udp_payload"),
            (
                "dns: {nameservers: [{name: ns1.clusterset.local}]}\n",
                "dns.nameservers",
            ),
            (
                "dns: {gslb: {zone: clusterset.local, ingress: {east: [1.2.3.4]}}}\n",
                "overlaps",
            ),
            (
                "dns: {gslb: {zone: mesh.example, ingress: {east: []}}}\n",
                "dns.gslb.ingress",
            ),
            (
                "dns: {gslb: {zone: mesh.example, ingress: {east: [1.2.3.4]}, regions: [{region: r, subnets: [10.0.0.1/8]}]}}\n",
                "host bits",
            ),
            ("dns: {rate_limit: {ipv4_prefix: 33}}\n", "dns.rate_limit"),
            ("dns: {bind: 0.0.0.0:53}\n", "dns.nameservers"),
            (
                "dns: {bind: '[::]:53'}\n",
                "ns.clusterset.local would have no address",
            ),
        ];
        // A wildcard bind is fine with name servers that have addresses, or with DNS off.
        for ok in [
            "dns: {bind: 0.0.0.0:53, nameservers: [{name: ns1.mesh.example}]}\n",
            "dns: {bind: 0.0.0.0:53, nameservers: [{name: ns1.clusterset.local, addresses: [192.0.2.53]}]}\n",
            "dns: {enabled: false, bind: 0.0.0.0:53}\n",
        ] {
            FederationConfig::from_yaml("t.yaml", &format!("{GOOD}{ok}")).expect(ok);
        }
        for (extra, needle) in cases {
            let err = FederationConfig::from_yaml("t.yaml", &format!("{GOOD}{extra}"))
                .expect_err(needle)
                .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
