//! What `isthmus kubernetes manifests` prints: the values reach the configs, labels and images;
//! bad values are refused; the configs parse with the binary's own loaders; `invariants` holds
//! the checks of the objects against each other, the binary and the Dockerfile.
//! (`e2e/kubernetes_manifests.rs` renders the overlays with kubectl, compares them with this
//! output and checks them against the Kubernetes schemas and checkov.)

use serde_json::Value;

use super::*;

mod invariants;

pub(super) fn east() -> Values {
    Values {
        cluster: "east".into(),
        region: "us-east".into(),
        trust_domain: Some("east.example.org".into()),
        namespace: BASE_NAMESPACE.into(),
        image: DEFAULT_IMAGE.into(),
        peering_address: None,
    }
}

pub(super) fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

pub(super) fn pod_spec<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    &find(all, kind, name)["spec"]["template"]["spec"]
}

pub(super) fn config_map_file(all: &[Value], prefix: &str, key: &str) -> String {
    all.iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .and_then(|cm| cm["data"][key].as_str())
        .unwrap_or_else(|| panic!("no {key} in ConfigMap {prefix}-*"))
        .to_string()
}

pub(super) fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("YAML")
}

/// The volume (by its source kind) mounted at the directory holding `path` in `container`.
pub(super) fn source_of_path(spec: &Value, container: &Value, path: &str) -> (String, Value) {
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| path.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
        .unwrap_or_else(|| panic!("nothing is mounted where {path} is"));
    let volume = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"]);
    match volume {
        Some(v) => {
            let kind = ["configMap", "secret", "emptyDir", "persistentVolumeClaim"]
                .into_iter()
                .find(|k| !v[*k].is_null())
                .unwrap_or("other");
            (kind.to_string(), mount.clone())
        }
        // Not in volumes: a volumeClaimTemplate of the StatefulSet.
        None => ("volumeClaimTemplate".to_string(), mount.clone()),
    }
}

pub(super) fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

pub(super) fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

#[test]
fn output_reads_back_as_the_same_objects() {
    let all = objects(&east()).unwrap();
    let text = render(&east()).unwrap();
    let read: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    assert_eq!(read, all);
    assert_eq!(
        all[0]["kind"], "Namespace",
        "the namespace is applied first"
    );
    assert_eq!(all[1]["kind"], "CustomResourceDefinition");
}

#[test]
fn the_values_reach_the_configs_and_labels() {
    let all = objects(&east()).unwrap();
    let fed = yaml(&config_map_file(
        &all,
        "isthmus-federation",
        "federation.yaml",
    ));
    assert_eq!(fed["cluster"], "east");
    assert_eq!(fed["region"], "us-east");
    assert_eq!(fed["trust_domain"], "east.example.org");
    assert_eq!(
        fed["listen"]["peering"]["advertise"],
        "peering.east.example.org:15443"
    );
    for o in &all {
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/instance"], "isthmus-east",
            "{}",
            o["metadata"]["name"]
        );
    }
    let images: Vec<&Value> = ["StatefulSet", "Deployment"]
        .iter()
        .zip(["isthmus-federation", "isthmus-gateway"])
        .map(|(k, n)| &pod_spec(&all, k, n)["containers"][0]["image"])
        .collect();
    assert!(images.iter().all(|i| *i == DEFAULT_IMAGE), "{images:?}");
}

#[test]
fn another_namespace_leaves_no_trace_of_the_default() {
    let v = Values {
        namespace: "mesh".into(),
        image: "example.net/i:2".into(),
        ..east()
    };
    let text = render(&v).unwrap();
    assert!(!text.contains(BASE_NAMESPACE), "{text}");
    assert!(!text.contains(BASE_IMAGE));
    let all = objects(&v).unwrap();
    assert_eq!(find(&all, "Namespace", "mesh")["kind"], "Namespace");
    for o in &all {
        let scoped = [
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        ];
        if !scoped.contains(&o["kind"].as_str().unwrap()) {
            assert_eq!(
                o["metadata"]["namespace"], "mesh",
                "{}",
                o["metadata"]["name"]
            );
        }
    }
    let binding = find(&all, "ClusterRoleBinding", "isthmus-federation");
    assert_eq!(binding["subjects"][0]["namespace"], "mesh");
    let fed = yaml(&config_map_file(
        &all,
        "isthmus-federation",
        "federation.yaml",
    ));
    assert_eq!(
        fed["listen"]["api"]["advertise"],
        "isthmus-federation.mesh.svc:15012"
    );
}

#[test]
fn bad_values_are_refused_with_the_flag_named() {
    for (v, flag) in [
        (
            Values {
                cluster: "East".into(),
                ..east()
            },
            "--cluster",
        ),
        // A valid label YAML reads as a boolean.
        (
            Values {
                cluster: "true".into(),
                trust_domain: None,
                ..east()
            },
            "--cluster",
        ),
        (
            Values {
                region: "".into(),
                ..east()
            },
            "--region",
        ),
        (
            Values {
                trust_domain: Some("a b".into()),
                ..east()
            },
            "--trust-domain",
        ),
        (
            Values {
                namespace: "Kube_System".into(),
                ..east()
            },
            "--namespace",
        ),
        (
            Values {
                image: "a b".into(),
                ..east()
            },
            "--image",
        ),
        (
            Values {
                peering_address: Some("0.0.0.0:15443".into()),
                ..east()
            },
            "--peering-address",
        ),
    ] {
        let err = format!("{:#}", render(&v).unwrap_err());
        assert!(err.contains(flag), "{flag}: {err}");
    }
}

/// The federation's config parses with the federation's own loader, `kubernetes:` section and
/// all.
#[test]
fn the_federation_config_is_valid() {
    let text = federation_config(&east()).unwrap();
    let cfg = isthmus_federation::config::FederationConfig::from_yaml("federation.yaml", &text)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.cluster.as_str(), "east");
    let k = cfg.kubernetes.expect("a kubernetes: section");
    assert!(k.exports && k.imports && k.kubeconfig.is_none());
}

/// Likewise for the gateway's: in Kubernetes mode it needs no advertised inbound address (the
/// federation advertises the isthmus-gateway Service's load-balancer address), and the manifests
/// set none; without `kubernetes:` the same wildcard bind would need one.
#[test]
fn the_gateway_config_is_valid() {
    let cfg = isthmus_gateway::GatewayConfig::from_yaml("gateway.yaml", GATEWAY_CONFIG)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!cfg.listen.vips);
    assert!(cfg.listen.inbound.advertise.is_none());
    assert_eq!(
        cfg.kubernetes.map(|k| k.pod_ip_env).as_deref(),
        Some("ISTHMUS_POD_IP")
    );
    let mut value = yaml(GATEWAY_CONFIG);
    value
        .as_object_mut()
        .expect("a mapping")
        .remove("kubernetes");
    let text = serde_saphyr::to_string(&value).unwrap();
    let err = isthmus_gateway::GatewayConfig::from_yaml("gateway.yaml", &text)
        .expect_err("a wildcard inbound bind without an advertised address");
    assert!(
        err.to_string().contains("listen.inbound.advertise"),
        "{err}"
    );
}

/// The compiled-in files are the base's: its kustomization lists the same resources, in the same
/// order, and generates its ConfigMaps from the same config files.
#[test]
fn the_embedded_files_are_the_bases() {
    let kustomization = yaml(include_str!(
        "../../../deploy/kubernetes/base/kustomization.yaml"
    ));
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let embedded: Vec<&str> = RESOURCES.iter().map(|(file, _)| *file).collect();
    assert_eq!(listed, embedded);
    let generated: Vec<(String, Vec<String>)> = kustomization["configMapGenerator"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let files = g["files"].as_array().unwrap();
            let files = files.iter().map(|f| f.as_str().unwrap().to_string());
            (g["name"].as_str().unwrap().to_string(), files.collect())
        })
        .collect();
    assert_eq!(
        generated,
        [
            (
                "isthmus-federation".to_string(),
                vec![
                    "config/federation.yaml".to_string(),
                    "config/catalog.yaml".to_string()
                ]
            ),
            (
                "isthmus-gateway".to_string(),
                vec!["config/gateway.yaml".to_string()]
            ),
        ]
    );
}
