//! The Warning Event recorded on an object that holds a name the import writer needs but does
//! not carry Isthmus's managed-by label (the object itself is never touched).
//!
//! Must not: modify the object it reports.

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use super::apply::Taken;
use super::naming;

/// A Warning Event on an object holding a name the writer needs.
pub async fn record_event(client: &kube::Client, t: &Taken) -> Result<(), kube::Error> {
    let api_version = match t.kind {
        "ServiceImport" => crate::kubernetes::mcs::API_VERSION,
        "EndpointSlice" => "discovery.k8s.io/v1",
        _ => "v1",
    };
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", t.name)),
            namespace: Some(t.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(t.kind.into()),
            name: Some(t.name.clone()),
            namespace: Some(t.namespace.clone()),
            uid: t.uid.clone(),
            ..Default::default()
        },
        reason: Some("NameTakenByUnmanagedObject".into()),
        message: Some(format!(
            "Isthmus needs the name {} for an imported service but this {} has no {}={} label: \
             it is left untouched and the import has no local Service here until it is renamed \
             or removed",
            t.name,
            t.kind,
            naming::LABEL_MANAGED_BY,
            crate::kubernetes::MANAGED_BY
        )),
        type_: Some("Warning".into()),
        reporting_component: Some("isthmus-federation".into()),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some("isthmus-federation".into()),
            host: None,
        }),
        count: Some(1),
        ..Default::default()
    };
    Api::<Event>::namespaced(client.clone(), &t.namespace)
        .create(&PostParams::default(), &event)
        .await?;
    Ok(())
}
