//! The Multi-Cluster Services API types (`multicluster.x-k8s.io/v1alpha1`, KEP-1645), written
//! out by hand: two small structs do not justify a derive macro and a schema generator.

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "multicluster.x-k8s.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "multicluster.x-k8s.io/v1alpha1";

/// Declares that the Service of the same name and namespace is exported to the clusterset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceExport {
    #[serde(rename = "apiVersion", default = "api_version")]
    pub api_version: String,
    #[serde(default = "export_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceExportStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceExportStatus {
    /// `Valid` and `Conflict` (KEP-1645).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A service imported from the clusterset, as this cluster sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceImport {
    #[serde(rename = "apiVersion", default = "api_version")]
    pub api_version: String,
    #[serde(default = "import_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceImportSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceImportStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceImportSpec {
    /// `ClusterSetIP` or `Headless`.
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(
        rename = "sessionAffinity",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub session_affinity: Option<String>,
}

/// A port of a ServiceImport (the MCS API's own `ServicePort`, not core/v1's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(
        rename = "appProtocol",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub app_protocol: Option<String>,
    pub port: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceImportStatus {
    /// The clusters serving the service now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster: String,
}

fn api_version() -> String {
    API_VERSION.into()
}

fn export_kind() -> String {
    "ServiceExport".into()
}

fn import_kind() -> String {
    "ServiceImport".into()
}

fn tcp() -> String {
    "TCP".into()
}

macro_rules! mcs_resource {
    ($ty:ty, $kind:literal, $plural:literal) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($kind)
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(VERSION)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

mcs_resource!(ServiceExport, "ServiceExport", "serviceexports");
mcs_resource!(ServiceImport, "ServiceImport", "serviceimports");

// Not derived: an empty object still names its kind and apiVersion (a derived `Default` left
// them empty, which the API server refuses).
impl Default for ServiceExport {
    fn default() -> Self {
        ServiceExport {
            api_version: api_version(),
            kind: export_kind(),
            metadata: ObjectMeta::default(),
            status: None,
        }
    }
}

impl Default for ServiceImport {
    fn default() -> Self {
        ServiceImport {
            api_version: api_version(),
            kind: import_kind(),
            metadata: ObjectMeta::default(),
            spec: ServiceImportSpec::default(),
            status: None,
        }
    }
}

impl ServiceExport {
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceExport {
            api_version: api_version(),
            kind: export_kind(),
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            status: None,
        }
    }
}

impl ServiceImport {
    pub fn new(namespace: &str, name: &str) -> Self {
        ServiceImport {
            api_version: api_version(),
            kind: import_kind(),
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: ServiceImportSpec::default(),
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_export_round_trips_with_its_conditions() {
        let text = r#"{"apiVersion":"multicluster.x-k8s.io/v1alpha1","kind":"ServiceExport",
            "metadata":{"name":"echo","namespace":"demo","resourceVersion":"7"},
            "status":{"conditions":[{"type":"Valid","status":"False","reason":"NoService",
              "message":"no Service demo/echo","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
        let se: ServiceExport = serde_json::from_str(text).unwrap();
        assert_eq!(se.metadata.name.as_deref(), Some("echo"));
        let c = &se.status.as_ref().unwrap().conditions[0];
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("Valid", "False"));
        let back = serde_json::to_value(&se).unwrap();
        assert_eq!(back["kind"], "ServiceExport");
        assert_eq!(back["apiVersion"], API_VERSION);
        assert_eq!(
            <ServiceExport as kube::Resource>::url_path(&(), Some("demo")),
            "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/demo/serviceexports"
        );
    }

    #[test]
    fn a_service_import_serializes_the_mcs_field_names() {
        let si = ServiceImport {
            spec: ServiceImportSpec {
                type_: "ClusterSetIP".into(),
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    protocol: "TCP".into(),
                    app_protocol: Some("http".into()),
                    port: 8080,
                }],
                ips: vec!["10.96.0.10".into()],
                session_affinity: None,
            },
            ..Default::default()
        };
        let v = serde_json::to_value(&si).unwrap();
        assert_eq!(v["spec"]["type"], "ClusterSetIP");
        assert_eq!(v["spec"]["ports"][0]["appProtocol"], "http");
        assert_eq!(v["kind"], "ServiceImport");
    }
}
