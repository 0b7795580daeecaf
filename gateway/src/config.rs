//! The gateway's config file (YAML). Unknown fields are refused with the field named; values are
//! checked once at start by [`GatewayConfig::validate`].
//!
//! bind ≠ advertise: the inbound listener (the only port other clusters reach) has a bind address
//! and a separately configured advertised address, which the gateway registers with its
//! federation under a lease.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use isthmus_federation::config::Listener;
use isthmus_federation::duration;
use isthmus_federation::telemetry::TracingConfig;
use serde::{Deserialize, Serialize};

mod health;
pub use health::HealthSettings;

/// The largest HTTP/2 flow-control window (2^31 - 1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path}: cannot read: {source} (does the file exist and is it readable?)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

fn d(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// One gateway process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The file written by `isthmus gateway bootstrap --name <gw>` (token + CA bundle).
    pub bootstrap_file: PathBuf,
    pub listen: GatewayListeners,
    /// Write one JSON access-log line per request or TCP stream to stdout.
    #[serde(default = "yes")]
    pub access_log: bool,
    #[serde(default)]
    pub limits: Limits,
    /// How long in-flight requests may finish after SIGTERM.
    #[serde(default = "default_drain", with = "duration")]
    pub drain_timeout: Duration,
    /// The lease of the gateway's registration with its federation (renewed at a third of it).
    #[serde(default = "default_lease", with = "duration")]
    pub registration_ttl: Duration,
    /// A peer whose federation went silent keeps serving while its gateways answer; once they
    /// fail too, its services stay a last resort for this long, then are dropped.
    #[serde(default = "default_stale_grace", with = "duration")]
    pub stale_grace: Duration,
    /// Where the calling workload's identity may come from (DESIGN: caller identity).
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Probes, ejections and the failover defaults of per-service policy.
    #[serde(default)]
    pub health: HealthSettings,
    /// Running in a Kubernetes pod: the gateway registers its pod IP (read from the environment)
    /// with the federation, so the Services the federation derives for imports point at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<GatewayKubernetes>,
    /// OpenTelemetry traces of exchanges (off without `tracing.endpoint`).
    #[serde(default)]
    pub tracing: TracingConfig,
}

/// The gateway's `kubernetes:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayKubernetes {
    /// The environment variable holding the pod IP (set it from the downward API,
    /// `status.podIP`).
    #[serde(default = "default_pod_ip_env")]
    pub pod_ip_env: String,
}

fn default_pod_ip_env() -> String {
    "ISTHMUS_POD_IP".into()
}

impl GatewayKubernetes {
    /// The pod IP from the environment; the error names the variable and how to set it.
    pub fn pod_ip(&self) -> Result<IpAddr, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            field: "kubernetes.pod_ip_env".into(),
            reason,
        };
        let value = std::env::var(&self.pod_ip_env).map_err(|_| {
            invalid(format!(
                "{} is not set: set it from the downward API (fieldRef status.podIP)",
                self.pod_ip_env
            ))
        })?;
        value.trim().parse().map_err(|_| {
            invalid(format!(
                "{}={value:?} is not an IP address",
                self.pod_ip_env
            ))
        })
    }
}

/// Sources of the calling workload's identity besides local mTLS.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Local peers (CIDRs, e.g. a node-local mesh sidecar at `127.0.0.5/32`) whose
    /// `x-forwarded-client-cert` names the calling workload: the `URI=` of its last element is
    /// asserted to the peer gateway when it is a workload ID of this cluster's trust domain.
    /// From any other client the header is stripped and ignored. Default: none.
    #[serde(default)]
    pub trusted_sources: Vec<String>,
}

impl IdentityConfig {
    /// The trusted sources as ranges; the error names the entry.
    pub fn trusted_ranges(&self) -> Result<Vec<SourceRange>, ConfigError> {
        self.trusted_sources
            .iter()
            .enumerate()
            .map(|(i, text)| {
                SourceRange::parse(text).map_err(|reason| ConfigError::Invalid {
                    field: format!("identity.trusted_sources[{i}]"),
                    reason,
                })
            })
            .collect()
    }
}

/// An address range in CIDR notation (`127.0.0.5/32`, `fd00::/64`); a bare address is one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRange {
    base: IpAddr,
    prefix: u8,
}

impl SourceRange {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let base: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an address or CIDR (e.g. 127.0.0.5/32)"))?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be a number from 0 to {max}"))?,
        };
        if prefix == 0 {
            return Err(format!(
                "{text:?} trusts every client: name the local proxy's own addresses"
            ));
        }
        let range = Self { base, prefix };
        if range.masked(base) != base {
            return Err(format!(
                "{text:?}: host bits are set: give the network address ({}/{prefix})",
                range.masked(base)
            ));
        }
        Ok(range)
    }

    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Whether `ip` is in the range (an IPv4 client seen on an IPv6 socket counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.base.is_ipv4() && self.masked(ip) == self.base
    }
}

impl std::fmt::Display for SourceRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

fn default_stale_grace() -> Duration {
    d(600)
}

fn yes() -> bool {
    true
}

fn default_drain() -> Duration {
    d(20)
}

fn default_lease() -> Duration {
    d(15)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayListeners {
    /// mTLS from peer clusters' gateways (the only port exposed to other clusters).
    pub inbound: Listener,
    /// The HTTP proxy port for local clients (absolute-form requests and CONNECT).
    #[serde(default = "default_proxy")]
    pub proxy: SocketAddr,
    /// Read-only admin HTTP: /healthz /readyz /metrics /config_dump /explain.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Listen on every imported service's VIP:port (off when VIPs are not local addresses, e.g.
    /// when only the proxy port is used).
    #[serde(default = "yes")]
    pub vips: bool,
}

fn default_proxy() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15001))
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15021))
}

/// Protections on every listener. Defaults follow what Envoy and Istio ship.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Total size of a request's header block (431 above it).
    pub max_header_bytes: usize,
    /// Number of request headers (431 above it).
    pub max_headers: usize,
    /// Time to read a request's headers on HTTP/1.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request open for this long is closed gracefully
    /// (HTTP/2 GOAWAY or HTTP/1 close, then dropped 5 s later); one with
    /// requests open but no bytes moving for this long is dropped, and so is one
    /// whose client takes none of its responses for this long (an HTTP/2 window
    /// kept shut) while none moves. PINGs alone do not count as activity.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Open connections per listener (the proxy port and the VIP listeners share one budget);
    /// more are refused until some close.
    pub max_connections: usize,
    /// Open connections from one source (an IPv4 address, or an IPv6 /64) on the local
    /// listeners; more from it are refused. When every slot is taken, a source holding fewer
    /// still gets in: the oldest connection of the source holding the most is closed. Unset: a
    /// quarter of `max_connections`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_source: Option<usize>,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Per-stream HTTP/2 flow-control window: what one stream may have in flight unread, so
    /// it bounds the memory a stream whose reader is slow holds.
    pub stream_window: u32,
    /// Per-connection HTTP/2 flow-control window, shared by all streams of a connection (at
    /// least 8 stream windows). Streams whose readers stop reading hold a stream window of it
    /// each; once they hold all of it, every other stream on the connection (every call to
    /// that peer gateway) waits. The default (64 stream windows) bounds that memory at 64 MiB
    /// per connection.
    pub connection_window: u32,
    /// Time to wait for a response's headers from the next hop.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Time to connect to the next hop (TCP + TLS).
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 60 * 1024,
            max_headers: 100,
            header_read_timeout: d(10),
            idle_timeout: d(300),
            handshake_timeout: d(10),
            max_connections: 10_000,
            max_connections_per_source: None,
            max_concurrent_streams: 1_000,
            stream_window: 1024 * 1024,
            connection_window: 64 * 1024 * 1024,
            request_timeout: d(30),
            connect_timeout: d(5),
        }
    }
}

/// The smallest read buffer hyper's HTTP/1 server accepts.
const HYPER_MIN_BUF: usize = 8192;

impl Limits {
    /// The largest HTTP/1 head the server parses: hyper's read buffer, which cannot be made
    /// smaller than 8 KiB. The smuggling guard holds and judges heads up to exactly this size,
    /// so every head hyper can parse has been judged (a larger one gets hyper's 431).
    pub fn h1_head_bytes(&self) -> usize {
        self.max_header_bytes.max(HYPER_MIN_BUF)
    }

    /// [`Limits::max_connections_per_source`], or its default.
    pub fn connections_per_source(&self) -> usize {
        self.max_connections_per_source
            .unwrap_or((self.max_connections / 4).max(1))
    }
}

impl GatewayConfig {
    pub fn from_yaml(path: &str, text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_yaml(&shown, &text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: &str| {
            Err(ConfigError::Invalid {
                field: field.into(),
                reason: reason.into(),
            })
        };
        match &self.listen.inbound.advertise {
            Some(a) => {
                if let Some(problem) = isthmus_federation::config::advertise_problem(a) {
                    return Err(ConfigError::Invalid {
                        field: "listen.inbound.advertise".into(),
                        reason: format!("{a:?} {problem}"),
                    });
                }
            }
            None if self.kubernetes.is_none() && self.listen.inbound.bind.ip().is_unspecified() => {
                return invalid(
                    "listen.inbound.advertise",
                    "listen.inbound.bind is a wildcard: set the address peer gateways should dial \
                     (in Kubernetes mode, `kubernetes:`, the federation reads it from its \
                     kubernetes.gateway_service instead)",
                );
            }
            None => {}
        }
        if let Err((field, reason)) = self.tracing.validate() {
            return Err(ConfigError::Invalid {
                field: format!("tracing.{field}"),
                reason,
            });
        }
        let l = &self.limits;
        if l.max_header_bytes < 1024 {
            return invalid("limits.max_header_bytes", "at least 1024");
        }
        if l.max_headers == 0 {
            return invalid("limits.max_headers", "at least 1");
        }
        if l.max_connections == 0 {
            return invalid("limits.max_connections", "at least 1");
        }
        if let Some(n) = l.max_connections_per_source
            && !(1..=l.max_connections).contains(&n)
        {
            return invalid(
                "limits.max_connections_per_source",
                "between 1 and limits.max_connections (unset: a quarter of it)",
            );
        }
        if l.max_concurrent_streams == 0 {
            return invalid("limits.max_concurrent_streams", "at least 1");
        }
        // HTTP/2 windows are 31-bit. The connection window is shared by every stream of a
        // connection: at four streams' worth, four readers that stop reading would stop all the
        // others.
        if !(65_535..=MAX_WINDOW).contains(&l.stream_window) {
            return invalid("limits.stream_window", "between 65535 and 2147483647");
        }
        if l.connection_window > MAX_WINDOW
            || u64::from(l.connection_window) < 8 * u64::from(l.stream_window)
        {
            return invalid(
                "limits.connection_window",
                "at least 8 times limits.stream_window and at most 2147483647",
            );
        }
        for (field, value) in [
            ("limits.header_read_timeout", l.header_read_timeout),
            ("limits.idle_timeout", l.idle_timeout),
            ("limits.handshake_timeout", l.handshake_timeout),
            ("limits.request_timeout", l.request_timeout),
            ("limits.connect_timeout", l.connect_timeout),
            ("registration_ttl", self.registration_ttl),
        ] {
            if value.is_zero() {
                return invalid(field, "must be above zero");
            }
        }
        self.identity.trusted_ranges()?;
        self.health.validate()?;
        Ok(())
    }

    /// The address peers dial for the inbound listener, once it is bound to `bound`.
    pub fn advertised_inbound(&self, bound: SocketAddr) -> Result<String, ConfigError> {
        match &self.listen.inbound.advertise {
            Some(a) => Ok(a.clone()),
            // Kubernetes mode: none; the federation advertises the load-balancer address of
            // its kubernetes.gateway_service for the Service port that targets `bound`'s port.
            None if self.kubernetes.is_some() => Ok(String::new()),
            None if !bound.ip().is_unspecified() => Ok(bound.to_string()),
            None => Err(ConfigError::Invalid {
                field: "listen.inbound.advertise".into(),
                reason: format!(
                    "bind address {bound} is a wildcard: set the address peer gateways should dial"
                ),
            }),
        }
    }

    /// The config as `/config_dump` shows it (no secrets live in it: the token is in the
    /// bootstrap file, which is only named).
    pub fn dump(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "bootstrap_file: /var/lib/isthmus/gw.json\nlisten:\n  inbound:\n    bind: 127.0.0.1:15443\n";

    #[test]
    fn minimal_config_takes_defaults() {
        let cfg = GatewayConfig::from_yaml("gw.yaml", MINIMAL).expect("valid");
        assert_eq!(cfg.listen.proxy, default_proxy());
        assert!(cfg.access_log);
        assert_eq!(cfg.limits, Limits::default());
        assert_eq!(
            cfg.advertised_inbound("127.0.0.1:15443".parse().expect("addr"))
                .expect("advertised"),
            "127.0.0.1:15443"
        );
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            (format!("{MINIMAL}colour: blue\n"), "colour"),
            (
                format!("{MINIMAL}limits:\n  max_headers: 0\n"),
                "limits.max_headers",
            ),
            (
                format!("{MINIMAL}limits:\n  stream_window: 10\n"),
                "limits.stream_window",
            ),
            (
                format!("{MINIMAL}limits:\n  stream_window: 4294967295\n"),
                "limits.stream_window",
            ),
            (
                format!("{MINIMAL}limits:\n  connection_window: 4194304\n"),
                "limits.connection_window",
            ),
            (
                format!(
                    "{MINIMAL}limits:\n  stream_window: 268435456\n  connection_window: 4294967295\n"
                ),
                "limits.connection_window",
            ),
            (
                format!("{MINIMAL}limits:\n  max_connections_per_source: 0\n"),
                "limits.max_connections_per_source",
            ),
            (
                format!(
                    "{MINIMAL}limits:\n  max_connections: 100\n  max_connections_per_source: 101\n"
                ),
                "limits.max_connections_per_source",
            ),
            (
                format!("{MINIMAL}limits:\n  idle_timeout: 0s\n"),
                "limits.idle_timeout",
            ),
            (format!("{MINIMAL}limits:\n  max_header: 5\n"), "max_header"),
            (
                "listen:\n  inbound:\n    bind: 127.0.0.1:1\n".to_string(),
                "bootstrap_file",
            ),
            (
                format!("{MINIMAL}identity:\n  trusted_sources: [127.0.0.5/32, sidecar]\n"),
                "identity.trusted_sources[1]",
            ),
            (
                format!("{MINIMAL}identity:\n  trusted_sources: [10.0.0.1/8]\n"),
                "identity.trusted_sources[0]",
            ),
            (
                format!("{MINIMAL}identity:\n  trusted_sources: [0.0.0.0/0]\n"),
                "identity.trusted_sources[0]",
            ),
            (
                format!("{MINIMAL}identity:\n  trusted: [127.0.0.5/32]\n"),
                "trusted",
            ),
            (
                format!("{MINIMAL}health:\n  probe_interval: 0s\n"),
                "health.probe_interval",
            ),
            (
                format!("{MINIMAL}health:\n  probe_misses: 0\n"),
                "health.probe_misses",
            ),
            (
                format!("{MINIMAL}health:\n  outlier_failures: 0\n"),
                "health.outlier_failures",
            ),
            (
                format!("{MINIMAL}health:\n  base_ejection: 10s\n  max_ejection: 5s\n"),
                "health.max_ejection",
            ),
            (
                format!("{MINIMAL}health:\n  per_try_timeout: 0s\n"),
                "health.per_try_timeout",
            ),
            (
                format!("{MINIMAL}health:\n  probe_timeout: soon\n"),
                "probe_timeout",
            ),
            (format!("{MINIMAL}health:\n  probes: 3\n"), "probes"),
        ];
        for (text, field) in cases {
            let err = GatewayConfig::from_yaml("gw.yaml", &text)
                .expect_err(&text)
                .to_string();
            assert!(err.contains(field), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_example_config_is_valid_and_shows_the_defaults() {
        let text = include_str!("../../deploy/examples/gateway.yaml");
        let cfg = GatewayConfig::from_yaml("gateway.yaml", text).expect("example");
        assert_eq!(cfg.limits, Limits::default());
        assert_eq!(cfg.limits.connections_per_source(), 2_500);
        assert_eq!(cfg.listen.proxy, default_proxy());
        assert_eq!(cfg.listen.admin, default_admin());
        assert_eq!(cfg.drain_timeout, default_drain());
        assert_eq!(cfg.registration_ttl, default_lease());
        assert_eq!(cfg.health, HealthSettings::default());
    }

    /// The `health:` section defaults to what docs/failover.md lists, and what it sets reaches
    /// the detectors and the policy every service starts from.
    #[test]
    fn health_settings_default_to_the_documented_values_and_reach_their_users() {
        let cfg = GatewayConfig::from_yaml("gw.yaml", MINIMAL).expect("valid");
        let h = &cfg.health;
        assert_eq!(
            (h.probe_interval, h.probe_timeout, h.probe_misses),
            (d(1), d(1), 2)
        );
        assert_eq!(
            (h.outlier_failures, h.base_ejection, h.max_ejection),
            (3, d(5), d(60))
        );
        assert_eq!((h.slow_start, h.per_try_timeout), (d(10), d(15)));
        let text = format!(
            "{MINIMAL}health:\n  probe_interval: 500ms\n  probe_misses: 3\n  slow_start: 0s\n  per_try_timeout: 2s\n"
        );
        let cfg = GatewayConfig::from_yaml("gw.yaml", &text).expect("valid");
        let detectors = cfg.health.detectors(d(7));
        assert_eq!(detectors.probe_interval, Duration::from_millis(500));
        assert_eq!(detectors.probe_failures, 3);
        assert_eq!(detectors.stale_grace, d(7));
        let policy = cfg.health.policy_defaults();
        assert_eq!((policy.slow_start, policy.per_try_timeout), (d(0), d(2)));
    }

    #[test]
    fn trusted_sources_match_their_ranges_only() {
        let text = format!(
            "{MINIMAL}identity:\n  trusted_sources: [127.0.0.5/32, 10.1.0.0/16, \"fd00::/64\", 192.0.2.7]\n"
        );
        let cfg = GatewayConfig::from_yaml("gw.yaml", &text).expect("valid");
        let ranges = cfg.identity.trusted_ranges().expect("ranges");
        let trusted = |ip: &str| {
            let ip: IpAddr = ip.parse().expect("ip");
            ranges.iter().any(|r| r.contains(ip))
        };
        for (ip, want) in [
            ("127.0.0.5", true),
            ("127.0.0.6", false),
            ("10.1.255.3", true),
            ("10.2.0.1", false),
            ("::ffff:10.1.0.9", true),
            ("fd00::1234", true),
            ("fd01::1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
        ] {
            assert_eq!(trusted(ip), want, "{ip}");
        }
        let none = GatewayConfig::from_yaml("gw.yaml", MINIMAL).expect("valid");
        assert!(none.identity.trusted_ranges().expect("ranges").is_empty());
    }

    /// Refused when the config is read, not only once the gateway has bound its port.
    #[test]
    fn wildcard_bind_needs_an_advertised_address() {
        let text = "bootstrap_file: gw.json\nlisten:\n  inbound:\n    bind: 0.0.0.0:15443\n";
        let err = GatewayConfig::from_yaml("gw.yaml", text).expect_err("wildcard");
        assert!(
            err.to_string().contains("listen.inbound.advertise"),
            "{err}"
        );
        for bad in ["'0.0.0.0:15443'", "gw.example", "'gw.example:0'"] {
            let text = format!("{text}    advertise: {bad}\n");
            let err = GatewayConfig::from_yaml("gw.yaml", &text).expect_err(bad);
            assert!(
                err.to_string().contains("listen.inbound.advertise"),
                "{err}"
            );
        }
        let text = format!("{text}    advertise: gw.east.example:15443\n");
        let cfg = GatewayConfig::from_yaml("gw.yaml", &text).expect("valid");
        assert_eq!(
            cfg.advertised_inbound("0.0.0.0:15443".parse().expect("addr"))
                .expect("advertised"),
            "gw.east.example:15443"
        );
    }
}
