//! Import rules: import is opt-in per peer and namespace, so a peer can never hijack a local name
//! just by exporting it. A rule matches a peer (or `*`), a set of namespaces (or `*`) and
//! optionally a set of service names; a summary is installed only if some rule matches it.

use serde::{Deserialize, Serialize};

use super::names::{ClusterName, NameError, Namespace, ServiceKey, ServiceName};

/// `*` or one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector<T> {
    Any,
    One(T),
}

impl<T: PartialEq> Selector<T> {
    pub fn matches(&self, value: &T) -> bool {
        match self {
            Selector::Any => true,
            Selector::One(v) => v == value,
        }
    }
}

impl<T: std::str::FromStr<Err = NameError>> std::str::FromStr for Selector<T> {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if s == "*" {
            Ok(Selector::Any)
        } else {
            s.parse().map(Selector::One)
        }
    }
}

impl<T: std::fmt::Display> Serialize for Selector<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Selector::Any => s.serialize_str("*"),
            Selector::One(v) => s.serialize_str(&v.to_string()),
        }
    }
}

impl<'de, T: std::str::FromStr<Err = NameError>> Deserialize<'de> for Selector<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Allows importing from `peer` the services in `namespaces` (all names, or only `services`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRule {
    pub peer: Selector<ClusterName>,
    pub namespaces: Vec<Selector<Namespace>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceName>>,
}

impl ImportRule {
    pub fn allows(&self, peer: &ClusterName, key: &ServiceKey) -> bool {
        self.peer.matches(peer)
            && self.namespaces.iter().any(|ns| ns.matches(&key.namespace))
            && self
                .services
                .as_ref()
                .is_none_or(|names| names.contains(&key.name))
    }
}

/// Whether any rule admits `key` from `peer`. No rules = nothing is imported.
pub fn import_allowed(rules: &[ImportRule], peer: &ClusterName, key: &ServiceKey) -> bool {
    rules.iter().any(|r| r.allows(peer, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> ImportRule {
        serde_saphyr::from_str(yaml).expect("rule parses")
    }

    #[test]
    fn import_rules_table() {
        let rules = vec![
            rule("peer: west\nnamespaces: [shop]\n"),
            rule("peer: '*'\nnamespaces: [public]\nservices: [docs]\n"),
        ];
        let west = ClusterName::new("west").expect("c");
        let south = ClusterName::new("south").expect("c");
        let cases = [
            (&west, "shop/cart", true),
            (&west, "billing/pay", false),
            (&south, "shop/cart", false),
            (&south, "public/docs", true),
            (&south, "public/admin", false),
            (&west, "public/docs", true),
        ];
        for (peer, key, want) in cases {
            let key = ServiceKey::parse(key).expect("key");
            assert_eq!(import_allowed(&rules, peer, &key), want, "{peer} {key}");
        }
        assert!(!import_allowed(
            &[],
            &west,
            &ServiceKey::parse("shop/cart").expect("key")
        ));
    }

    #[test]
    fn bad_rules_name_the_field() {
        let err = serde_saphyr::from_str::<ImportRule>("peer: West\nnamespaces: [shop]\n")
            .expect_err("uppercase peer");
        assert!(err.to_string().contains("cluster name"), "{err}");
        let err = serde_saphyr::from_str::<ImportRule>("peer: west\nnamespace: [shop]\n")
            .expect_err("unknown field");
        assert!(err.to_string().contains("namespace"), "{err}");
    }
}
