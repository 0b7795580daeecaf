//! Names and labels of what the import writer creates, and the managed-by rule.
//!
//! - `ServiceImport`: the service's own name, in its namespace.
//! - derived Service of `<svc>.<ns>`: `isthmus-<svc>`; when that is longer than 63 characters,
//!   its first characters and `-<8 hex of SHA-256("<svc>")>` so that it fits.
//! - derived Service of `<cluster>.<svc>.<ns>`: `isthmus-<cluster>-<svc>-<8 hex of
//!   SHA-256("<cluster>/<svc>")>`, shortened the same way. The hash always ends it, so two
//!   (cluster, service) pairs that read alike once joined by `-` still get different names.
//! - EndpointSlice: the derived Service's name (`-v6` appended for the IPv6 slice).
//!
//! Must not: decide what exists; this file only spells names.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::kubernetes::MANAGED_BY;
use crate::model::{ClusterName, ServiceKey};

/// Kubernetes' managed-by label (all three kinds carry it; lists select on it).
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The EndpointSlice controller's label: slices with another value are left to their owner.
pub const LABEL_SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// The MCS label on a derived Service naming its ServiceImport.
pub const LABEL_SERVICE_NAME: &str = "multicluster.kubernetes.io/service-name";
/// The label tying an EndpointSlice to its Service.
pub const LABEL_SLICE_SERVICE: &str = "kubernetes.io/service-name";
/// On a per-cluster derived Service: the cluster it routes to.
pub const LABEL_CLUSTER: &str = "isthmus.io/cluster";

/// The label selector of everything the writer owns.
pub fn managed_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY}")
}

/// The managed-by rule: an object without Isthmus's label is never modified or deleted.
pub fn is_ours(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .is_some_and(|v| v == MANAGED_BY)
}

const MAX: usize = 63;

fn short_hash(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// `base` cut so that `-<hash>` fits in 63 characters (no trailing `-` before the hash).
fn with_hash(base: &str, hash: &str) -> String {
    let room = MAX - 1 - hash.len();
    let mut cut: String = base.chars().take(room).collect();
    while cut.ends_with('-') {
        cut.pop();
    }
    format!("{cut}-{hash}")
}

/// The derived Service of `<svc>.<ns>`.
pub fn derived_service(key: &ServiceKey) -> String {
    let plain = format!("isthmus-{}", key.name);
    if plain.len() <= MAX {
        plain
    } else {
        with_hash(&plain, &short_hash(key.name.as_str()))
    }
}

/// The derived Service of `<cluster>.<svc>.<ns>`.
pub fn derived_cluster_service(cluster: &ClusterName, key: &ServiceKey) -> String {
    with_hash(
        &format!("isthmus-{cluster}-{}", key.name),
        &short_hash(&format!("{cluster}/{}", key.name)),
    )
}

/// The EndpointSlice of a derived Service for one address family.
pub fn slice_name(service: &str, v6: bool) -> String {
    if v6 {
        format!("{service}-v6")
    } else {
        service.to_string()
    }
}

/// The name of one service port on a derived Service: the port's own name when it is a valid
/// port name (a DNS label of at most 15 characters), else `port-<port>`.
pub fn port_name(name: Option<&str>, port: u16) -> String {
    match name {
        Some(n)
            if crate::kubernetes::config::is_dns_label(n)
                && n.len() <= 15
                && n.bytes().any(|b| b.is_ascii_lowercase()) =>
        {
            n.to_string()
        }
        _ => format!("port-{port}"),
    }
}

/// The target-port allocation name of a service port: `<svc>.<ns>:<port>` or
/// `<cluster>.<svc>.<ns>:<port>`.
pub fn target_port_name(cluster: Option<&ClusterName>, key: &ServiceKey, port: u16) -> String {
    match cluster {
        Some(c) => format!("{c}.{}.{}:{port}", key.name, key.namespace),
        None => format!("{}.{}:{port}", key.name, key.namespace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::config::is_dns_label;
    use std::collections::BTreeMap;

    fn key(name: &str) -> ServiceKey {
        ServiceKey::parse(&format!("shop/{name}")).expect("key")
    }

    #[test]
    fn names_are_deterministic_labels_that_fit() {
        assert_eq!(derived_service(&key("cart")), "isthmus-cart");
        let long = "a".repeat(60);
        let n = derived_service(&key(&long));
        assert!(n.len() <= 63 && is_dns_label(&n), "{n}");
        assert_eq!(n, derived_service(&key(&long)));
        assert_ne!(n, derived_service(&key(&format!("{}b", "a".repeat(59)))));
        let east: ClusterName = "east".parse().expect("cluster");
        let c = derived_cluster_service(&east, &key("cart"));
        assert!(
            c.starts_with("isthmus-east-cart-") && is_dns_label(&c),
            "{c}"
        );
        // Joined by '-' these read alike; the hash keeps them apart.
        let a_b: ClusterName = "a-b".parse().expect("cluster");
        let a: ClusterName = "a".parse().expect("cluster");
        assert_ne!(
            derived_cluster_service(&a_b, &key("c")),
            derived_cluster_service(&a, &key("b-c"))
        );
        let c = derived_cluster_service(&east, &key(&long));
        assert!(c.len() <= 63 && is_dns_label(&c), "{c}");
        assert_eq!(port_name(Some("http"), 80), "http");
        assert_eq!(port_name(Some("a-very-long-port-name"), 80), "port-80");
        assert_eq!(port_name(None, 8080), "port-8080");
        assert_eq!(target_port_name(None, &key("cart"), 80), "cart.shop:80");
        assert_eq!(
            target_port_name(Some(&east), &key("cart"), 80),
            "east.cart.shop:80"
        );
    }

    #[test]
    fn only_objects_with_our_label_are_ours() {
        let mut meta = ObjectMeta::default();
        assert!(!is_ours(&meta));
        meta.labels = Some(BTreeMap::from([(LABEL_MANAGED_BY.into(), "helm".into())]));
        assert!(!is_ours(&meta));
        meta.labels = Some(BTreeMap::from([(
            LABEL_MANAGED_BY.into(),
            MANAGED_BY.into(),
        )]));
        assert!(is_ours(&meta));
        assert_eq!(
            managed_selector(),
            format!("{LABEL_MANAGED_BY}={MANAGED_BY}")
        );
    }
}
