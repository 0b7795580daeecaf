//! Diffing one desired object against the one that exists (ours): the updated object to
//! replace it with, or `None` when it is up to date. Only the fields the writer owns are
//! compared and set (our labels, owner references, the spec fields we write); everything the
//! API server or others added (a ClusterIP, defaults, foreign labels) is kept. Pure.
//!
//! Must not: be called with an object that is not ours ([`super::naming::is_ours`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::kubernetes::mcs::ServiceImport;

/// An owner reference to `owner` (kind and apiVersion given), as the controller of the object.
pub fn owner_ref(api_version: &str, kind: &str, meta: &ObjectMeta) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone()?,
        uid: meta.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: None,
    })
}

/// `existing`'s metadata with `desired`'s labels merged in and `desired`'s owner references.
fn merged_meta(existing: &ObjectMeta, desired: &ObjectMeta) -> ObjectMeta {
    let mut m = existing.clone();
    let mut labels: BTreeMap<String, String> = m.labels.take().unwrap_or_default();
    labels.extend(desired.labels.clone().unwrap_or_default());
    m.labels = (!labels.is_empty()).then_some(labels);
    if desired.owner_references.is_some() {
        m.owner_references = desired.owner_references.clone();
    }
    m
}

fn changed<T: PartialEq>(existing: &T, updated: T) -> Option<T> {
    (*existing != updated).then_some(updated)
}

/// The ServiceImport's spec and labels (its status is written separately).
pub fn update_import(existing: &ServiceImport, desired: &ServiceImport) -> Option<ServiceImport> {
    let mut u = existing.clone();
    u.metadata = merged_meta(&existing.metadata, &desired.metadata);
    u.spec.type_ = desired.spec.type_.clone();
    u.spec.ports = desired.spec.ports.clone();
    // The ClusterIP is only known once the derived Service exists: never clear a known one.
    if !desired.spec.ips.is_empty() {
        u.spec.ips = desired.spec.ips.clone();
    }
    changed(existing, u)
}

/// The ServiceImport with the desired status, when it differs.
pub fn update_import_status(
    existing: &ServiceImport,
    desired: &ServiceImport,
) -> Option<ServiceImport> {
    let want = desired.status.clone().unwrap_or_default();
    if existing.status.clone().unwrap_or_default() == want {
        return None;
    }
    let mut u = existing.clone();
    u.status = Some(want);
    Some(u)
}

/// A derived Service: labels, owner, type, ports, no selector (the ClusterIP is kept).
pub fn update_service(existing: &Service, desired: &Service) -> Option<Service> {
    let mut u = existing.clone();
    u.metadata = merged_meta(&existing.metadata, &desired.metadata);
    let mut spec = u.spec.take().unwrap_or_default();
    let want = desired.spec.clone().unwrap_or_default();
    spec.type_ = want.type_;
    spec.selector = None;
    // Ports compared on the fields we set: the server may default others.
    let key = |ports: &Option<Vec<k8s_openapi::api::core::v1::ServicePort>>| {
        ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone(),
                    p.port,
                    p.protocol.clone(),
                    p.target_port.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    if key(&spec.ports) != key(&want.ports) {
        spec.ports = want.ports;
    }
    u.spec = Some(spec);
    changed(existing, u)
}

/// An EndpointSlice: labels, owner, endpoints and ports (its address type never changes: the
/// IPv4 and IPv6 slices have different names).
pub fn update_slice(existing: &EndpointSlice, desired: &EndpointSlice) -> Option<EndpointSlice> {
    let mut u = existing.clone();
    u.metadata = merged_meta(&existing.metadata, &desired.metadata);
    let addrs = |s: &EndpointSlice| {
        s.endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses.clone(),
                    e.conditions.as_ref().and_then(|c| c.ready),
                )
            })
            .collect::<Vec<_>>()
    };
    if addrs(existing) != addrs(desired) {
        u.endpoints = desired.endpoints.clone();
    }
    let ports = |s: &EndpointSlice| {
        s.ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port, p.protocol.clone()))
            .collect::<Vec<_>>()
    };
    if ports(existing) != ports(desired) {
        u.ports = desired.ports.clone();
    }
    changed(existing, u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn service(target: i32, labels: &[(&str, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("isthmus-cart".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    target_port: Some(IntOrString::Int(target)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn a_service_is_replaced_only_when_our_fields_differ_and_keeps_the_rest() {
        let desired = service(15100, &[("a", "1")]);
        let mut existing = service(15100, &[("a", "1"), ("theirs", "x")]);
        existing.metadata.resource_version = Some("7".into());
        let spec = existing.spec.as_mut().expect("spec");
        spec.cluster_ip = Some("10.96.0.12".into());
        spec.session_affinity = Some("None".into());
        assert_eq!(update_service(&existing, &desired), None);
        // Another target port: replaced, with the ClusterIP, foreign label and version kept.
        let u = update_service(&existing, &service(15101, &[("a", "1")])).expect("update");
        let spec = u.spec.as_ref().expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.12"));
        assert_eq!(
            spec.ports.as_ref().expect("ports")[0].target_port,
            Some(IntOrString::Int(15101))
        );
        assert_eq!(u.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(u.metadata.labels.as_ref().expect("labels")["theirs"], "x");
        // A selector someone added is removed (ours is selector-less).
        let mut e2 = existing.clone();
        e2.spec.as_mut().expect("spec").selector = Some([("app".into(), "x".into())].into());
        assert!(update_service(&e2, &desired).is_some());
    }

    #[test]
    fn import_ips_are_never_cleared_and_status_is_separate() {
        let mut desired = ServiceImport::new("shop", "cart");
        desired.spec.type_ = "ClusterSetIP".into();
        let mut existing = desired.clone();
        existing.spec.ips = vec!["10.96.0.12".into()];
        assert_eq!(update_import(&existing, &desired), None);
        desired.spec.ips = vec!["10.96.0.13".into()];
        assert!(update_import(&existing, &desired).is_some());
        desired.status = Some(crate::kubernetes::mcs::ServiceImportStatus {
            clusters: vec![crate::kubernetes::mcs::ClusterStatus {
                cluster: "west".into(),
            }],
        });
        let u = update_import_status(&existing, &desired).expect("status");
        assert_eq!(u.status, desired.status);
        assert_eq!(update_import_status(&u, &desired), None);
    }
}
