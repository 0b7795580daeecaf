//! Composition with the catalog file, the export set's Arc reuse, MCS conflicts with peers and
//! the conditions.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use super::build::Verdict;
use super::compose::compose;
use super::conditions::{apply_conditions, wanted_conditions};
use super::conflict::{ExportShape, clusterset_conflict};
use super::set::{KubeExportSet, build_set};
use crate::catalog::parse_catalog;
use crate::kubernetes::mcs::ServiceExport;
use crate::model::{ClusterName, Protocol, ServiceKey, ServicePort};

/// ServiceExports, Services and EndpointSlices, as the watches hold them.
type Objects = (
    Vec<Arc<ServiceExport>>,
    Vec<Arc<Service>>,
    Vec<Arc<EndpointSlice>>,
);

fn objects(port: i32) -> Objects {
    let se: ServiceExport =
        serde_json::from_value(json!({"metadata": {"namespace": "shop", "name": "cart"}})).unwrap();
    let orphan: ServiceExport =
        serde_json::from_value(json!({"metadata": {"namespace": "shop", "name": "gone"}})).unwrap();
    let svc: Service = serde_json::from_value(json!({"metadata": {"namespace": "shop", "name": "cart"},
        "spec": {"clusterIP": "10.0.0.1", "ports": [{"name": "http", "port": port, "appProtocol": "http"}]}})).unwrap();
    let slice: EndpointSlice =
        serde_json::from_value(json!({"metadata": {"namespace": "shop", "name": "cart-1",
        "labels": {"kubernetes.io/service-name": "cart"}}, "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}], "endpoints": [{"addresses": ["10.1.0.1"]}]}))
        .unwrap();
    (
        vec![Arc::new(se), Arc::new(orphan)],
        vec![Arc::new(svc)],
        vec![Arc::new(slice)],
    )
}

#[test]
fn rebuilding_unchanged_objects_keeps_the_same_specs() {
    let (e, s, sl) = objects(80);
    let first = build_set(&e, &s, &sl, &KubeExportSet::default());
    assert!(first.synced);
    assert_eq!(first.exports.len(), 1);
    assert_eq!(first.verdicts.len(), 2);
    let again = build_set(&e, &s, &sl, &first);
    assert!(again.same_as(&first));
    let (e, s, sl) = objects(81);
    assert!(!build_set(&e, &s, &sl, &first).same_as(&first));
}

#[test]
fn the_catalog_file_wins_a_conflict_and_agreeing_sources_merge() {
    let (e, s, sl) = objects(80);
    let kube = build_set(&e, &s, &sl, &KubeExportSet::default());
    let agree = parse_catalog("exports:\n  - {namespace: shop, name: cart, ports: [{name: http, port: 80, protocol: http}], endpoints: [{address: \"10.9.0.1:80\"}]}\n  - {namespace: shop, name: other, ports: [{port: 1, protocol: tcp}]}\nimports:\n  - {peer: \"*\", namespaces: [\"*\"]}\n").unwrap();
    let (merged, conflicts) = compose(&agree, &kube);
    assert!(conflicts.is_empty());
    assert_eq!(merged.exports.len(), 2);
    assert_eq!(merged.imports, agree.imports);
    let cart = merged
        .exports
        .iter()
        .find(|x| x.name.as_str() == "cart")
        .unwrap();
    assert_eq!(cart.endpoints.len(), 2, "both sources' endpoints: {cart:?}");

    let disagree = parse_catalog(
        "exports:\n  - {namespace: shop, name: cart, ports: [{port: 9, protocol: tcp}]}\n",
    )
    .unwrap();
    let (merged, conflicts) = compose(&disagree, &kube);
    assert_eq!(merged.exports.len(), 1);
    assert_eq!(
        merged.exports[0].ports[0].port, 9,
        "the file's export stays"
    );
    let m = &conflicts[&("shop".to_owned(), "cart".to_owned())];
    assert!(
        m.contains("catalog file wins") && m.contains("9/tcp") && m.contains("http:80/http"),
        "{m}"
    );

    // The conditions say so.
    let v = &kube.verdicts[&("shop".to_owned(), "cart".to_owned())];
    let w = wanted_conditions("shop/cart", v, Some(m), None);
    assert_eq!(
        (w[0].status, w[0].reason.as_str()),
        (false, "CatalogFileConflict")
    );
    assert_eq!(
        (w[1].status, w[1].reason.as_str()),
        (true, "CatalogFileConflict")
    );
    let orphan = &kube.verdicts[&("shop".to_owned(), "gone".to_owned())];
    assert!(matches!(orphan, Verdict::Refused { .. }));
    let w = wanted_conditions("shop/gone", orphan, None, None);
    assert_eq!(
        (w[0].status, w[0].reason.as_str()),
        (false, "ServiceNotFound")
    );
}

fn shape(c: &str, port: u16, at: i64) -> ExportShape {
    ExportShape {
        cluster: ClusterName::new(c).unwrap(),
        ports: vec![ServicePort {
            name: None,
            port,
            protocol: Protocol::Http,
        }],
        headless: false,
        exported_at_ms: at,
    }
}

#[test]
fn the_oldest_export_wins_and_the_conflict_names_the_winner() {
    let key = ServiceKey::parse("shop/cart").unwrap();
    let west = ClusterName::new("west").unwrap();
    let south = ClusterName::new("south").unwrap();
    let shapes = [shape("west", 80, 20), shape("south", 81, 10)];
    let c = clusterset_conflict(&west, &key, &shapes).expect("west loses");
    assert_eq!((c.reason, c.winner.as_str()), ("PortConflict", "south"));
    assert!(
        c.message.contains("exported first by south"),
        "{}",
        c.message
    );
    let c = clusterset_conflict(&south, &key, &shapes).expect("south wins, still in conflict");
    assert_eq!(c.winner, south);
    assert!(c.message.contains("west"), "{}", c.message);
    // Same ports: no conflict. A tie is broken by name.
    assert!(
        clusterset_conflict(&west, &key, &[shape("west", 80, 5), shape("south", 80, 1)]).is_none()
    );
    let c =
        clusterset_conflict(&west, &key, &[shape("west", 80, 5), shape("south", 81, 5)]).unwrap();
    assert_eq!(c.winner, south);
}

#[test]
fn conditions_change_only_when_they_differ() {
    let (e, s, sl) = objects(80);
    let kube = build_set(&e, &s, &sl, &KubeExportSet::default());
    let v = &kube.verdicts[&("shop".to_owned(), "cart".to_owned())];
    let w = wanted_conditions("shop/cart", v, None, None);
    assert_eq!((w[0].status, w[1].status), (true, false));
    let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap());
    let t2 = Time(k8s_openapi::jiff::Timestamp::from_second(2_000).unwrap());
    let first = apply_conditions(&[], &w, Some(3), &t1).expect("new conditions");
    assert_eq!(first.len(), 2);
    assert!(
        first
            .iter()
            .all(|c| c.observed_generation == Some(3) && c.last_transition_time == t1)
    );
    assert!(
        apply_conditions(&first, &w, Some(3), &t2).is_none(),
        "nothing to write"
    );
    // A new generation moves observedGeneration, not lastTransitionTime.
    let next = apply_conditions(&first, &w, Some(4), &t2).expect("generation moved");
    assert!(
        next.iter()
            .all(|c| c.observed_generation == Some(4) && c.last_transition_time == t1)
    );
    // A status flip moves lastTransitionTime of that condition only.
    let orphan = &kube.verdicts[&("shop".to_owned(), "gone".to_owned())];
    let w2 = wanted_conditions("shop/cart", orphan, None, None);
    let flipped = apply_conditions(&next, &w2, Some(4), &t2).expect("flip");
    assert_eq!(flipped[0].status, "False");
    assert_eq!(flipped[0].last_transition_time, t2);
    assert_eq!(flipped[1].last_transition_time, t1, "Conflict stayed False");
}
