//! Validated names: clusters, namespaces, services, regions and zones.
//!
//! Every name that crosses a boundary (config file, peer update, registry call) is parsed into one
//! of these types first, so the rest of the code never sees an unchecked string. The rules follow
//! Kubernetes: namespaces and services are RFC 1123 labels (MCS requires service names to be
//! DNS labels too), so `<cluster>.<svc>.<ns>.svc.clusterset.local` is always a valid DNS name.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name was refused; the message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct NameError {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Checks an RFC 1123 label: 1-63 characters of `a-z`, `0-9` and `-`, starting and ending with an
/// alphanumeric character.
pub fn check_label(kind: &'static str, value: &str) -> Result<(), NameError> {
    let err = |reason| NameError {
        kind,
        value: value.chars().take(80).collect(),
        reason,
    };
    if value.is_empty() {
        return Err(err("must not be empty"));
    }
    if value.len() > 63 {
        return Err(err("must be at most 63 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err("may contain only lowercase letters, digits and '-'"));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(err("must start and end with a letter or digit"));
    }
    Ok(())
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        // Immutable and shared: cloning a name (and so a `ServiceKey`, a map of routes) is a
        // reference-count increment, not an allocation.
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                check_label($kind, &value)?;
                Ok(Self(value.into()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        // Hash, Eq and Ord are those of the text, so a set of names can be searched by `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

label_type!(
    /// A cluster's name, unique among peers: the first label of `<cluster>.<svc>.<ns>.svc...`.
    ClusterName,
    "cluster name"
);
label_type!(
    /// A Kubernetes-style namespace.
    Namespace,
    "namespace"
);
label_type!(
    /// A service name within a namespace.
    ServiceName,
    "service name"
);
label_type!(
    /// A region (`us-east`, `eu-west-1`): the unit of failover tiers and GSLB proximity.
    Region,
    "region"
);
label_type!(
    /// A zone within a region.
    Zone,
    "zone"
);

/// Shares the text of names that repeat across the services of one update (namespaces, zones):
/// 100,000 services in a handful of namespaces hold a handful of namespace strings, not 100,000.
#[derive(Debug, Default)]
pub struct NameCache {
    namespaces: HashSet<Namespace>,
    zones: HashSet<Zone>,
}

/// Names of one kind a cache keeps at most (a hostile update cannot grow it without bound).
const NAME_CACHE_LIMIT: usize = 4096;

fn cached<T>(set: &mut HashSet<T>, text: &str) -> Result<T, NameError>
where
    T: Clone + Eq + std::hash::Hash + std::borrow::Borrow<str> + FromStr<Err = NameError>,
{
    if let Some(name) = set.get(text) {
        return Ok(name.clone());
    }
    let name: T = text.parse()?;
    if set.len() < NAME_CACHE_LIMIT {
        set.insert(name.clone());
    }
    Ok(name)
}

impl NameCache {
    pub fn namespace(&mut self, text: &str) -> Result<Namespace, NameError> {
        cached(&mut self.namespaces, text)
    }

    pub fn zone(&mut self, text: &str) -> Result<Zone, NameError> {
        cached(&mut self.zones, text)
    }
}

/// A service's identity within a cluster set. Serialized as `<namespace>/<name>`, so it can key
/// a JSON map.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: Namespace,
    pub name: ServiceName,
}

impl ServiceKey {
    pub fn new(namespace: Namespace, name: ServiceName) -> Self {
        Self { namespace, name }
    }

    /// Parses `namespace/name`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let (ns, name) = s.split_once('/').ok_or_else(|| NameError {
            kind: "service key",
            value: s.chars().take(80).collect(),
            reason: "expected <namespace>/<name>",
        })?;
        Ok(Self {
            namespace: ns.parse()?,
            name: name.parse()?,
        })
    }

    /// The clusterset DNS name: `<svc>.<ns>.svc.<zone>`.
    pub fn dns_name(&self, zone: &str) -> String {
        format!("{}.{}.svc.{}", self.name, self.namespace, zone)
    }

    /// Stable text used in store keys: `<ns>/<name>` (both are labels, so `/` cannot occur).
    pub fn path(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Serialize for ServiceKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServiceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let cases: &[(&str, bool)] = &[
            ("east", true),
            ("a", true),
            ("us-east-1", true),
            ("0abc", true),
            ("", false),
            ("-east", false),
            ("east-", false),
            ("East", false),
            ("ea_st", false),
            ("ea.st", false),
            ("é", false),
            (&"a".repeat(63), true),
            (&"a".repeat(64), false),
        ];
        for (input, ok) in cases {
            assert_eq!(ClusterName::new(*input).is_ok(), *ok, "{input:?}");
        }
    }

    #[test]
    fn service_key_parse_and_names() {
        let key = ServiceKey::parse("shop/cart").expect("valid");
        assert_eq!(key.namespace.as_str(), "shop");
        assert_eq!(key.name.as_str(), "cart");
        assert_eq!(
            key.dns_name("clusterset.local"),
            "cart.shop.svc.clusterset.local"
        );
        assert_eq!(key.to_string(), "shop/cart");
        for bad in ["cart", "shop/", "/cart", "shop/Cart", "a/b/c"] {
            assert!(ServiceKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_validates() {
        let ok: Result<ClusterName, _> = serde_json::from_str("\"west\"");
        assert!(ok.is_ok());
        let bad: Result<ClusterName, _> = serde_json::from_str("\"West!\"");
        let msg = bad.expect_err("must fail").to_string();
        assert!(msg.contains("cluster name"), "{msg}");
    }
}
