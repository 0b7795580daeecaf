//! The pure builder, case by case: every refusal, the endpoint rules, appProtocol, named
//! target ports, zones and the export-to annotation.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use super::build::{Refusal, Verdict, build, parse_export_to};
use super::ports::protocol_of;
use crate::kubernetes::mcs::ServiceExport;
use crate::model::{Endpoint, Protocol};

fn export(annotations: Option<Value>) -> ServiceExport {
    let mut v = json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": {"namespace": "shop", "name": "cart",
                     "creationTimestamp": "2026-01-02T03:04:05Z"}});
    if let Some(a) = annotations {
        v["metadata"]["annotations"] = a;
    }
    serde_json::from_value(v).expect("export")
}

fn service(spec: Value) -> Service {
    serde_json::from_value(json!({"metadata": {"namespace": "shop", "name": "cart"}, "spec": spec}))
        .expect("service")
}

fn http_service() -> Service {
    service(json!({"clusterIP": "10.96.0.7", "ports": [
        {"name": "http", "port": 80, "targetPort": "web", "appProtocol": "http"}]}))
}

/// An endpoint: ip, ready, serving, terminating, zone.
type EpSpec<'a> = (
    &'a str,
    Option<bool>,
    Option<bool>,
    Option<bool>,
    Option<&'a str>,
);

/// A slice with `ports` (name, number) and endpoints (ip, ready, serving, terminating, zone).
fn slice(name: &str, ports: &[(&str, i32)], eps: &[EpSpec<'_>]) -> EndpointSlice {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"}))
        .collect();
    let eps: Vec<Value> = eps
        .iter()
        .map(|(ip, r, s, t, z)| {
            let mut c = serde_json::Map::new();
            if let Some(r) = r {
                c.insert("ready".into(), json!(r));
            }
            if let Some(s) = s {
                c.insert("serving".into(), json!(s));
            }
            if let Some(t) = t {
                c.insert("terminating".into(), json!(t));
            }
            let mut e = json!({"addresses": [ip], "conditions": c});
            if let Some(z) = z {
                e["zone"] = json!(z);
            }
            e
        })
        .collect();
    serde_json::from_value(json!({"metadata": {"namespace": "shop", "name": name,
        "labels": {"kubernetes.io/service-name": "cart"}},
        "addressType": "IPv4", "ports": ports, "endpoints": eps}))
    .expect("slice")
}

fn exported(v: Verdict) -> (crate::catalog::ExportSpec, Vec<String>) {
    match v {
        Verdict::Exported { spec, notes } => ((*spec).clone(), notes),
        Verdict::Refused { reason, message } => panic!("refused: {reason}: {message}"),
    }
}

fn refused(v: Verdict) -> (Refusal, String) {
    match v {
        Verdict::Refused { reason, message } => (reason, message),
        Verdict::Exported { spec, .. } => panic!("exported: {spec:?}"),
    }
}

fn ready_addrs(eps: &[Endpoint]) -> Vec<(String, bool)> {
    eps.iter()
        .map(|e| (e.address.to_string(), e.ready))
        .collect()
}

#[test]
fn each_refusal_has_its_reason() {
    let se = export(None);
    let (r, m) = refused(build(&se, None, &[]));
    assert_eq!(r, Refusal::ServiceNotFound);
    assert!(m.contains("shop/cart"), "{m}");
    let (r, m) = refused(build(
        &se,
        Some(&service(
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        )),
        &[],
    ));
    assert_eq!(r, Refusal::ServiceHeadless);
    assert!(m.contains("cannot import headless services yet"), "{m}");
    let (r, _) = refused(build(
        &se,
        Some(&service(
            json!({"type": "ExternalName", "externalName": "x.example"}),
        )),
        &[],
    ));
    assert_eq!(r, Refusal::ServiceTypeExternalName);
    let (r, m) = refused(build(
        &se,
        Some(&service(
            json!({"clusterIP": "10.0.0.1", "ports": [{"port": 53, "protocol": "UDP"}]}),
        )),
        &[],
    ));
    assert_eq!(r, Refusal::UnsupportedProtocol);
    assert!(m.contains("UDP"), "{m}");
    let (r, m) = refused(build(
        &export(Some(json!({"isthmus.io/export-to": "east,,south"}))),
        Some(&http_service()),
        &[],
    ));
    assert_eq!(r, Refusal::InvalidAnnotation);
    assert!(m.contains("isthmus.io/export-to"), "{m}");
    // What ExportSpec::validate refuses: a port name that is not a label.
    let bad = service(json!({"clusterIP": "10.0.0.1", "ports": [{"name": "Web_1", "port": 80}]}));
    let (r, m) = refused(build(&se, Some(&bad), &[]));
    assert_eq!(r, Refusal::InvalidExport);
    assert!(m.contains("ports"), "{m}");
    let mut derived = http_service();
    derived.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_owned(),
        crate::kubernetes::MANAGED_BY.to_owned(),
    )]));
    assert_eq!(
        refused(build(&se, Some(&derived), &[])).0,
        Refusal::ServiceManagedByIsthmus
    );
}

#[test]
fn annotation_parsing() {
    let set = parse_export_to(" east , south").expect("ok");
    assert_eq!(
        set.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        ["east", "south"]
    );
    for bad in ["", ",", "East", "east,", "a b"] {
        assert!(parse_export_to(bad).is_err(), "{bad:?}");
    }
    let (spec, _) = exported(build(
        &export(Some(json!({"isthmus.io/export-to": "west"}))),
        Some(&http_service()),
        &[],
    ));
    assert_eq!(spec.export_to.expect("scoped").len(), 1);
    let (spec, _) = exported(build(&export(None), Some(&http_service()), &[]));
    assert!(spec.export_to.is_none());
}

#[test]
fn app_protocols_map_to_what_gateways_serve() {
    for (app, want) in [
        (None, Protocol::Tcp),
        (Some("http"), Protocol::Http),
        (Some("HTTP"), Protocol::Http),
        (Some("kubernetes.io/h2c"), Protocol::Http2),
        (Some("h2c"), Protocol::Http2),
        (Some("http2"), Protocol::Http2),
        (Some("grpc"), Protocol::Grpc),
        (Some("tcp"), Protocol::Tcp),
        (Some("https"), Protocol::Tcp),
        (Some("kubernetes.io/ws"), Protocol::Tcp),
        (Some("mysql"), Protocol::Tcp),
    ] {
        assert_eq!(protocol_of(app), want, "{app:?}");
    }
    let svc = service(json!({"clusterIP": "10.0.0.1", "ports": [
        {"name": "web", "port": 80, "appProtocol": "http"},
        {"name": "api", "port": 9000, "appProtocol": "grpc"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "raw", "port": 7000}]}));
    let (spec, notes) = exported(build(&export(None), Some(&svc), &[]));
    let got: Vec<(Option<&str>, u16, Protocol)> = spec
        .ports
        .iter()
        .map(|p| (p.name.as_deref(), p.port, p.protocol))
        .collect();
    assert_eq!(
        got,
        [
            (Some("web"), 80, Protocol::Http),
            (Some("api"), 9000, Protocol::Grpc),
            (Some("raw"), 7000, Protocol::Tcp)
        ]
    );
    assert!(
        notes.iter().any(|n| n.contains("dns (53) is UDP")),
        "{notes:?}"
    );
    assert_eq!(spec.exported_since_ms, Some(1_767_323_045_000));
}

#[test]
fn ready_endpoints_serve_and_the_rest_are_listed_not_ready() {
    let s = slice(
        "cart-a",
        &[("http", 8080)],
        &[
            ("10.0.0.1", Some(true), None, None, Some("zone-a")),
            ("10.0.0.2", Some(false), Some(false), None, None),
            ("10.0.0.3", Some(false), Some(true), Some(true), None),
            ("10.0.0.4", None, None, None, None), // nil ready = ready
        ],
    );
    let (spec, _) = exported(build(&export(None), Some(&http_service()), &[&s]));
    assert_eq!(
        ready_addrs(&spec.endpoints),
        [
            ("10.0.0.1:8080".into(), true),
            ("10.0.0.2:8080".into(), false),
            ("10.0.0.3:8080".into(), false),
            ("10.0.0.4:8080".into(), true),
        ]
    );
    assert_eq!(
        spec.endpoints[0].zone.as_ref().map(|z| z.as_str()),
        Some("zone-a")
    );
}

#[test]
fn serving_terminating_endpoints_serve_only_while_nothing_is_ready() {
    let s = slice(
        "cart-a",
        &[("http", 8080)],
        &[
            ("10.0.0.2", Some(false), Some(false), Some(true), None), // terminating, not serving
            ("10.0.0.3", Some(false), Some(true), Some(true), None),
            ("10.0.0.5", Some(false), None, None, None),
        ],
    );
    let (spec, _) = exported(build(&export(None), Some(&http_service()), &[&s]));
    assert_eq!(
        ready_addrs(&spec.endpoints),
        [
            ("10.0.0.2:8080".into(), false),
            ("10.0.0.3:8080".into(), true),
            ("10.0.0.5:8080".into(), false),
        ]
    );
}

#[test]
fn named_target_ports_come_from_the_slice_and_duplicates_count_once() {
    // The Service's targetPort is the name "web"; the slices carry the resolved number under
    // the Service port's name. The same pod in two slices counts once, at its best.
    let a = slice(
        "cart-a",
        &[("http", 8080)],
        &[("10.0.0.1", Some(false), None, None, None)],
    );
    let b = slice(
        "cart-b",
        &[("http", 8080)],
        &[
            ("10.0.0.1", Some(true), None, None, None),
            ("10.0.0.9", Some(true), None, None, None),
        ],
    );
    let other = slice(
        "cart-c",
        &[("metrics", 9090)],
        &[("10.0.0.7", Some(true), None, None, None)],
    );
    let (spec, notes) = exported(build(
        &export(None),
        Some(&http_service()),
        &[&a, &b, &other],
    ));
    assert_eq!(
        ready_addrs(&spec.endpoints),
        [
            ("10.0.0.1:8080".into(), true),
            ("10.0.0.9:8080".into(), true)
        ]
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("cart-c") && n.contains("http")),
        "{notes:?}"
    );
    // Unnamed single port.
    let svc =
        service(json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80, "targetPort": 9376}]}));
    let s = slice(
        "x",
        &[("", 9376)],
        &[("10.0.0.1", Some(true), None, None, None)],
    );
    let (spec, _) = exported(build(&export(None), Some(&svc), &[&s]));
    assert_eq!(
        ready_addrs(&spec.endpoints),
        [("10.0.0.1:9376".into(), true)]
    );
}

#[test]
fn zones_are_lowercased_or_dropped_with_a_note() {
    let s = slice(
        "cart-a",
        &[("http", 8080)],
        &[
            ("10.0.0.1", Some(true), None, None, Some("EU-West-1a")),
            ("10.0.0.2", Some(true), None, None, Some("bad_zone")),
        ],
    );
    let (spec, notes) = exported(build(&export(None), Some(&http_service()), &[&s]));
    assert_eq!(
        spec.endpoints[0].zone.as_ref().map(|z| z.as_str()),
        Some("eu-west-1a")
    );
    assert!(spec.endpoints[1].zone.is_none());
    assert!(notes.iter().any(|n| n.contains("bad_zone")), "{notes:?}");
}

#[test]
fn multi_port_services_use_the_first_ports_target_and_say_so() {
    let svc = service(json!({"clusterIP": "10.0.0.1", "ports": [
        {"name": "http", "port": 80}, {"name": "metrics", "port": 9090}]}));
    let s = slice(
        "cart-a",
        &[("http", 8080), ("metrics", 9100)],
        &[("10.0.0.1", Some(true), None, None, None)],
    );
    let (spec, notes) = exported(build(&export(None), Some(&svc), &[&s]));
    assert_eq!(
        ready_addrs(&spec.endpoints),
        [("10.0.0.1:8080".into(), true)]
    );
    assert!(
        notes.iter().any(|n| n.contains("metrics targets 9100")),
        "{notes:?}"
    );
}
