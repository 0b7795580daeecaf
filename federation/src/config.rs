//! The federation's config file (YAML). Unknown fields are refused with the field named; every
//! value is validated once at start by [`FederationConfig::validate`], which also resolves
//! defaults that depend on other fields (data dir, trust domain, admin socket).
//!
//! bind ≠ advertise: every listener peers dial has a bind address and a separately configured
//! advertised address (a LoadBalancer IP, a NAT address, a namespace address).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::TrustDomain;
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
    pub fn advertised(&self) -> Result<String, ConfigError> {
        match &self.advertise {
            Some(a) => Ok(a.clone()),
            None if !self.bind.ip().is_unspecified() => Ok(self.bind.to_string()),
            None => Err(ConfigError::Invalid {
                field: "listen.peering.advertise".into(),
                reason: format!(
                    "bind address {} is a wildcard: set the address peers should dial",
                    self.bind
                ),
            }),
        }
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            field: field.into(),
            reason,
        };
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
        self.listen.peering.advertised()?;
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
        Ok(())
    }

    /// Config with secrets redacted (there are none inline today: the KEK comes from a file or
    /// the environment), for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
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
            cfg.listen.peering.advertised().expect("adv"),
            "127.0.0.1:15443"
        );
        assert_eq!(
            cfg.admin_socket(),
            PathBuf::from("/tmp/isthmus-east/admin.sock")
        );
        assert!(matches!(cfg.store_config(), StoreConfig::Embedded { .. }));
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
}
