//! The `kubernetes:` section of the federation config. Always compiled, so a build without the
//! `kubernetes` feature refuses the section by name instead of as an unknown field.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Where the federation meets Kubernetes: MCS `ServiceExport`s as a catalog source, and
/// `ServiceImport`s with derived Services for what this cluster imports (DESIGN: Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file. Absent: the pod's service account (in-cluster config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces whose ServiceExports are exported and where imports are written. Empty: all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Watch `ServiceExport`, `Service` and `EndpointSlice` and export what they describe.
    #[serde(default = "yes")]
    pub exports: bool,
    /// Write a `ServiceImport` and a derived `Service` for every imported service.
    #[serde(default = "yes")]
    pub imports: bool,
    /// Ports the federation allocates, one per imported (service, port), on which the gateways
    /// serve imports in Kubernetes mode: `first-last`.
    #[serde(default = "default_target_ports")]
    pub target_ports: String,
    /// The gateways' `LoadBalancer` Service in the federation's namespace: its status gives the
    /// advertised inbound address of a gateway that configures none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_service: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_target_ports() -> String {
    "15100-15999".into()
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            namespaces: Vec::new(),
            exports: true,
            imports: true,
            target_ports: default_target_ports(),
            gateway_service: None,
        }
    }
}

impl KubernetesConfig {
    /// [`KubernetesConfig::target_ports`] as a range of at least one non-zero port.
    pub fn target_port_range(&self) -> Result<RangeInclusive<u16>, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            field: "kubernetes.target_ports".into(),
            reason,
        };
        let (first, last) = self
            .target_ports
            .split_once('-')
            .ok_or_else(|| invalid(format!("{:?} is not first-last", self.target_ports)))?;
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid(format!("{s:?} is not a port between 1 and 65535")))
        };
        let (first, last) = (port(first)?, port(last)?);
        if first > last {
            return Err(invalid(format!("{first} is above {last}")));
        }
        Ok(first..=last)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.into(),
        };
        if !cfg!(feature = "kubernetes") {
            return Err(invalid(
                "kubernetes".into(),
                "this build has no Kubernetes support (build with the `kubernetes` feature)",
            ));
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !is_dns_label(ns) {
                return Err(invalid(
                    format!("kubernetes.namespaces[{i}]"),
                    "must be a namespace name (a DNS label: a-z, 0-9, '-', at most 63)",
                ));
            }
        }
        if let Some(name) = &self.gateway_service
            && !is_dns_label(name)
        {
            return Err(invalid(
                "kubernetes.gateway_service".into(),
                "must be a Service name (a DNS label)",
            ));
        }
        if !self.exports && !self.imports {
            return Err(invalid(
                "kubernetes".into(),
                "exports and imports are both off: remove the section instead",
            ));
        }
        self.target_port_range()?;
        Ok(())
    }
}

/// An RFC 1123 label, as Kubernetes requires of namespace and Service names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ports_parse_and_refuse_nonsense() {
        let mut k = KubernetesConfig::default();
        assert_eq!(k.target_port_range().unwrap(), 15100..=15999);
        for bad in ["15100", "0-10", "20-10", "1-70000", "a-b"] {
            k.target_ports = bad.into();
            let e = k.target_port_range().unwrap_err().to_string();
            assert!(e.contains("kubernetes.target_ports"), "{bad}: {e}");
        }
    }

    #[cfg(feature = "kubernetes")]
    #[test]
    fn validation_names_the_field() {
        let k = KubernetesConfig {
            namespaces: vec!["ok".into(), "Not_OK".into()],
            ..Default::default()
        };
        let e = k.validate().unwrap_err().to_string();
        assert!(e.contains("kubernetes.namespaces[1]"), "{e}");
        let k = KubernetesConfig {
            exports: false,
            imports: false,
            ..Default::default()
        };
        assert!(k.validate().is_err());
        assert!(KubernetesConfig::default().validate().is_ok());
    }
}
