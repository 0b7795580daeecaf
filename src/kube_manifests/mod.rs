//! `isthmus kubernetes manifests`: the objects `kubectl kustomize deploy/kubernetes/overlays/<c>`
//! renders, for one cluster's values, without kustomize. The base files are compiled in; this
//! module applies what an overlay does (its federation.yaml lines, the namespace, the instance
//! label, the image) and what kustomize itself does (ConfigMaps from files with a content-hash
//! name suffix, references to them, namespaced objects in the namespace).
//!
//! Must not: hold a second copy of any manifest. Every object comes from `deploy/kubernetes/base`.

mod hash;
mod objects;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The base's resource files, in its kustomization's order.
const RESOURCES: &[(&str, &str)] = &[
    (
        "crds/serviceexports.yaml",
        include_str!("../../deploy/kubernetes/base/crds/serviceexports.yaml"),
    ),
    (
        "crds/serviceimports.yaml",
        include_str!("../../deploy/kubernetes/base/crds/serviceimports.yaml"),
    ),
    (
        "namespace.yaml",
        include_str!("../../deploy/kubernetes/base/namespace.yaml"),
    ),
    (
        "rbac.yaml",
        include_str!("../../deploy/kubernetes/base/rbac.yaml"),
    ),
    (
        "federation.yaml",
        include_str!("../../deploy/kubernetes/base/federation.yaml"),
    ),
    (
        "gateway.yaml",
        include_str!("../../deploy/kubernetes/base/gateway.yaml"),
    ),
    (
        "networkpolicy.yaml",
        include_str!("../../deploy/kubernetes/base/networkpolicy.yaml"),
    ),
];

const FEDERATION_CONFIG: &str = include_str!("../../deploy/kubernetes/base/config/federation.yaml");
const CATALOG: &str = include_str!("../../deploy/kubernetes/base/config/catalog.yaml");
const GATEWAY_CONFIG: &str = include_str!("../../deploy/kubernetes/base/config/gateway.yaml");

/// The namespace, image and placeholder values the base is written with.
pub const BASE_NAMESPACE: &str = "isthmus-system";
const BASE_IMAGE: &str = "isthmus:0.1.0";
/// The image the example overlays point at (their `images:` entry).
pub const DEFAULT_IMAGE: &str = "registry.example.com/isthmus/isthmus:0.1.0";

/// `isthmus kubernetes ...`.
#[derive(clap::Subcommand)]
pub enum KubernetesOp {
    /// Print the manifests for one cluster (the objects `kubectl kustomize
    /// deploy/kubernetes/overlays/<cluster>` renders), for `kubectl apply -f -`.
    Manifests(Values),
}

pub fn run(op: KubernetesOp) -> anyhow::Result<()> {
    match op {
        KubernetesOp::Manifests(values) => {
            print!("{}", render(&values)?);
            Ok(())
        }
    }
}

/// One cluster's values: what its overlay sets.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Values {
    /// The cluster's name (a DNS label, unique among peers).
    #[arg(long, env = "ISTHMUS_K8S_CLUSTER")]
    pub cluster: String,
    /// The cluster's region.
    #[arg(long, env = "ISTHMUS_K8S_REGION")]
    pub region: String,
    /// The cluster's trust domain (default `<cluster>.mesh`, as in the federation's config);
    /// must differ from every peer's.
    #[arg(long, env = "ISTHMUS_K8S_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// The namespace Isthmus runs in.
    #[arg(long, env = "ISTHMUS_K8S_NAMESPACE", default_value = BASE_NAMESPACE)]
    pub namespace: String,
    /// The image to run (built from deploy/Dockerfile).
    #[arg(long, env = "ISTHMUS_K8S_IMAGE", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// What peer federations dial, host:port (default `peering.<trust domain>:15443`: point that
    /// DNS name at the isthmus-federation-peering LoadBalancer).
    #[arg(long, env = "ISTHMUS_K8S_PEERING_ADDRESS")]
    pub peering_address: Option<String>,
}

impl Values {
    pub fn trust_domain(&self) -> String {
        self.trust_domain
            .clone()
            .unwrap_or_else(|| format!("{}.mesh", self.cluster))
    }

    pub fn peering_address(&self) -> String {
        self.peering_address
            .clone()
            .unwrap_or_else(|| format!("peering.{}:15443", self.trust_domain()))
    }

    /// Refuses values the federation would refuse, or that YAML would not read back as the
    /// same string (`true`, `1e3`), before anything is printed.
    pub fn check(&self) -> anyhow::Result<()> {
        use isthmus_federation::model::{ClusterName, Region, names::check_label};
        ClusterName::new(self.cluster.as_str()).context("--cluster")?;
        Region::new(self.region.as_str()).context("--region")?;
        let td = self.trust_domain();
        td.parse::<isthmus_federation::identity::TrustDomain>()
            .with_context(|| format!("--trust-domain {td:?}"))?;
        check_label("namespace", &self.namespace).context("--namespace")?;
        let peering = self.peering_address();
        if let Some(problem) = isthmus_federation::config::advertise_problem(&peering) {
            bail!("--peering-address {peering:?} {problem}");
        }
        if self.image.is_empty()
            || self
                .image
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            bail!(
                "--image {:?}: give an image reference such as {DEFAULT_IMAGE}",
                self.image
            );
        }
        for (flag, value) in [
            ("--cluster", self.cluster.as_str()),
            ("--region", self.region.as_str()),
            ("--trust-domain", td.as_str()),
            ("--peering-address", peering.as_str()),
        ] {
            let read: Value = serde_saphyr::from_str(value).unwrap_or(Value::Null);
            if read.as_str() != Some(value) {
                bail!("{flag} {value:?} would read as {read} in YAML: pick another name");
            }
        }
        Ok(())
    }
}

/// The federation's config file for these values: the base's, with the lines an overlay changes.
pub fn federation_config(v: &Values) -> anyhow::Result<String> {
    let mut text = FEDERATION_CONFIG.to_string();
    for (from, to) in [
        (
            "cluster: example".to_string(),
            format!("cluster: {}", v.cluster),
        ),
        (
            "trust_domain: example.mesh".to_string(),
            format!("trust_domain: {}", v.trust_domain()),
        ),
        (
            "region: example-region".to_string(),
            format!("region: {}", v.region),
        ),
        (
            "    advertise: peering.example.mesh:15443".to_string(),
            format!("    advertise: {}", v.peering_address()),
        ),
        (
            format!("    advertise: isthmus-federation.{BASE_NAMESPACE}.svc:15012"),
            format!(
                "    advertise: isthmus-federation.{}.svc:15012",
                v.namespace
            ),
        ),
        (
            format!("  nameservers: [{{name: isthmus-dns.{BASE_NAMESPACE}.svc.cluster.local}}]"),
            format!(
                "  nameservers: [{{name: isthmus-dns.{}.svc.cluster.local}}]",
                v.namespace
            ),
        ),
    ] {
        text = replace_line(&text, &from, &to)?;
    }
    Ok(text)
}

/// Replaces the one line that reads exactly `from` (the base keeps these lines free of comments).
fn replace_line(text: &str, from: &str, to: &str) -> anyhow::Result<String> {
    let found = text.lines().filter(|line| *line == from).count();
    if found != 1 {
        bail!("the embedded base federation.yaml has {found} lines {from:?}, not one");
    }
    let lines: Vec<&str> = text
        .lines()
        .map(|line| if line == from { to } else { line })
        .collect();
    Ok(lines.join("\n") + if text.ends_with('\n') { "\n" } else { "" })
}

/// Every object, in the order `kubectl kustomize` prints them.
pub fn objects(v: &Values) -> anyhow::Result<Vec<Value>> {
    v.check()?;
    let mut all = Vec::new();
    for (file, text) in RESOURCES {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text)
            .with_context(|| format!("the embedded base file {file}"))?;
        all.extend(docs.into_iter().filter(|d| !d.is_null()));
    }
    let generated = [
        (
            "isthmus-federation",
            BTreeMap::from([
                ("catalog.yaml".to_string(), CATALOG.to_string()),
                ("federation.yaml".to_string(), federation_config(v)?),
            ]),
        ),
        (
            "isthmus-gateway",
            BTreeMap::from([("gateway.yaml".to_string(), GATEWAY_CONFIG.to_string())]),
        ),
    ];
    let mut renamed = BTreeMap::new();
    for (name, data) in generated {
        let full = format!("{name}-{}", hash::config_map_suffix(&data));
        all.push(serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": full },
            "data": data,
        }));
        renamed.insert(name.to_string(), full);
    }
    let label = (
        "app.kubernetes.io/instance",
        format!("isthmus-{}", v.cluster),
    );
    for object in &mut all {
        objects::set_namespace(object, &v.namespace);
        objects::add_label(object, label.0, &label.1);
        objects::rename_config_maps(object, &renamed);
        objects::set_image(object, BASE_IMAGE, &v.image);
    }
    objects::sort(&mut all);
    Ok(all)
}

/// The manifests as one multi-document YAML stream.
pub fn render(v: &Values) -> anyhow::Result<String> {
    let all = objects(v)?;
    serde_saphyr::to_string_multiple(&all).context("writing the manifests as YAML")
}
