//! The store's configuration: which backend, and how to reach etcd. Parsed once at start,
//! validated without touching the disk or the network, dumped at `/config_dump`.
//!
//! Must not: open anything (the backends do).

use std::path::PathBuf;

use super::{StoreError, check_prefix};

/// Which backend to use and how to reach it. Parsed once at start, dumped at `/config_dump`
/// (so it holds no secrets: passwords are read from files).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// redb in `data_dir/isthmus.redb`; the directory is created with mode 0700.
    Embedded { data_dir: PathBuf },
    /// A shared etcd 3.4+ cluster.
    Etcd {
        /// e.g. `http://10.0.0.1:2379`; `https://` when `tls` is set.
        endpoints: Vec<String>,
        /// Prepended to every key (plain string, e.g. `/isthmus/prod/`).
        #[serde(default)]
        prefix: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<EtcdTls>,
        /// etcd user; the password is read from `password_file`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
        #[serde(default = "default_connect_timeout_ms")]
        connect_timeout_ms: u64,
        /// Per request (unary calls); watches are long-lived and not bounded by it.
        #[serde(default = "default_request_timeout_ms")]
        request_timeout_ms: u64,
    },
}

/// TLS towards etcd: PEM files.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// CA bundle that signed etcd's server certificate.
    pub ca_file: PathBuf,
    /// Client certificate and key, when etcd requires client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}

fn default_request_timeout_ms() -> u64 {
    5_000
}

impl StoreConfig {
    /// An embedded store under `data_dir`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig::Embedded {
            data_dir: data_dir.into(),
        }
    }

    /// An etcd store with default timeouts, no TLS and no auth.
    pub fn etcd(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        StoreConfig::Etcd {
            endpoints,
            prefix: prefix.into(),
            tls: None,
            user: None,
            password_file: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }

    /// Checks what can be checked without touching the disk or the network.
    pub fn validate(&self) -> Result<(), StoreError> {
        match self {
            StoreConfig::Embedded { data_dir } => {
                if data_dir.as_os_str().is_empty() {
                    return Err(StoreError::Config(
                        "store.data_dir is empty; set it to a directory this user can write".into(),
                    ));
                }
            }
            StoreConfig::Etcd {
                endpoints,
                prefix,
                tls,
                user,
                password_file,
                connect_timeout_ms,
                request_timeout_ms,
            } => {
                if endpoints.is_empty() {
                    return Err(StoreError::Config(
                        "store.endpoints is empty; list at least one etcd client URL, e.g. \
                         http://127.0.0.1:2379"
                            .into(),
                    ));
                }
                let scheme = if tls.is_some() { "https://" } else { "http://" };
                for endpoint in endpoints {
                    if !endpoint.starts_with(scheme) {
                        return Err(StoreError::Config(format!(
                            "store.endpoints: {endpoint:?} must start with {scheme} (TLS is {})",
                            if tls.is_some() {
                                "configured"
                            } else {
                                "not configured"
                            }
                        )));
                    }
                }
                check_prefix(prefix)
                    .map_err(|e| StoreError::Config(format!("store.prefix: {e}")))?;
                if let Some(tls) = tls
                    && tls.cert_file.is_some() != tls.key_file.is_some()
                {
                    return Err(StoreError::Config(
                        "store.tls: set both cert_file and key_file, or neither".into(),
                    ));
                }
                if user.is_some() != password_file.is_some() {
                    return Err(StoreError::Config(
                        "store: set both user and password_file, or neither".into(),
                    ));
                }
                if *connect_timeout_ms == 0 || *request_timeout_ms == 0 {
                    return Err(StoreError::Config(
                        "store: connect_timeout_ms and request_timeout_ms must be > 0".into(),
                    ));
                }
                #[cfg(not(feature = "etcd"))]
                return Err(StoreError::Config(
                    "this build has no etcd support; use backend: embedded or a build with the \
                     `etcd` feature"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}
