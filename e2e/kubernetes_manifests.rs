//! The Kubernetes manifests as an operator meets them, offline: `kubectl kustomize` renders each
//! overlay, the output validates against the Kubernetes schemas (`kubernetes-validate --strict`)
//! and passes checkov with no failed check except those `deploy/kubernetes/.checkov.yaml` skips
//! with a reason; a broken copy of the base is caught by both; and `isthmus kubernetes
//! manifests` prints the same objects as the overlays.
//!
//! The tools: `kubectl` >= 1.27 (its built-in kustomize v5; this machine image has 1.32) and, in the venv
//! `~/.cache/isthmus-venv`, `kubernetes-validate` and `checkov` (PyPI; `.ci/run` installs them).
//! A missing tool fails the test with how to install it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::harness::federation::exe;

/// The version of the Kubernetes API schemas the manifests must validate against: the oldest
/// release they use fields of (NetworkPolicy endPort, policy/v1 PDBs) still served, and the
/// kubectl of this machine.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.32.0"];

const CLUSTERS: &[(&str, &str, &str)] = &[
    ("east", "us-east", "east.example.org"),
    ("west", "us-west", "west.example.org"),
];

pub(crate) fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

pub(crate) fn venv_tool(name: &str) -> PathBuf {
    let home = std::env::var("HOME").expect("HOME");
    let tool = Path::new(&home).join(".cache/isthmus-venv/bin").join(name);
    assert!(
        tool.exists(),
        "{} is missing: `python3 -m venv ~/.cache/isthmus-venv && ~/.cache/isthmus-venv/bin/pip \
         install kubernetes-validate checkov` (.ci/run does this)",
        tool.display()
    );
    tool
}

fn run(cmd: &mut Command, what: &str, hint: &str) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({e}): {hint}"))
}

/// `kubectl kustomize <dir>`: the rendered objects as YAML.
fn kustomize(dir: &Path) -> String {
    let out = run(
        Command::new("kubectl").arg("kustomize").arg(dir),
        "kubectl",
        "install kubectl >= 1.27 (kustomize v5; Debian bookworm's kubernetes-client 1.20 is too \
         old for the overlays' `labels:`)",
    );
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn documents(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("the output is YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Writes each rendered stream to `<work>/<name>.yaml`; the paths.
fn write_all(work: &Path, rendered: &[(&str, &str)]) -> Vec<PathBuf> {
    rendered
        .iter()
        .map(|(name, yaml)| {
            let file = work.join(format!("{name}.yaml"));
            std::fs::write(&file, yaml).expect("write");
            file
        })
        .collect()
}

/// What the Kubernetes schemas say is wrong with the rendered streams; empty when nothing is.
fn schema_problems(work: &Path, rendered: &[(&str, &str)]) -> Vec<String> {
    let files = write_all(work, rendered);
    let objects: usize = rendered.iter().map(|(_, yaml)| documents(yaml).len()).sum();
    let mut found = Vec::new();
    for version in KUBERNETES_VERSIONS {
        let out = run(
            Command::new(venv_tool("kubernetes-validate"))
                .args(["--strict", "--no-warn", "-k", version])
                .args(&files),
            "kubernetes-validate",
            "pip install kubernetes-validate",
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        // Every object is counted, so a stream that parsed to nothing cannot pass.
        let passed = text.matches(" passed for resource ").count();
        if !out.status.success() || passed != objects {
            found.push(format!(
                "kubernetes-validate -k {version}: {passed} of {objects} objects passed:\n{text}"
            ));
        }
    }
    found
}

/// The checks checkov fails on the rendered streams (with .checkov.yaml's skips); empty when
/// none fails.
fn checkov_problems(work: &Path, rendered: &[(&str, &str)]) -> Vec<String> {
    let files = write_all(work, rendered);
    let mut cmd = Command::new(venv_tool("checkov"));
    cmd.args([
        "--framework",
        "kubernetes",
        "--skip-download",
        "--quiet",
        "-o",
        "json",
    ])
    .arg("--config-file")
    .arg(kubernetes_dir().join(".checkov.yaml"));
    for file in &files {
        cmd.arg("-f").arg(file);
    }
    let out = run(&mut cmd, "checkov", "pip install checkov");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let summary = &report["summary"];
    let mut found = Vec::new();
    // A run that checked almost nothing (a parse failure, no resources found) proves nothing.
    // checkov counts every object, and each container once more.
    let objects: u64 = rendered
        .iter()
        .map(|(_, yaml)| documents(yaml).len() as u64)
        .sum();
    let counted = summary["resource_count"].as_u64().unwrap_or(0);
    if counted < objects || summary["parsing_errors"] != 0 {
        found.push(format!(
            "checkov did not read all {objects} objects: {summary}"
        ));
    }
    for failed in report["results"]["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
    {
        found.push(format!(
            "checkov {} ({}) failed for {} in {}",
            failed["check_id"].as_str().unwrap_or("?"),
            failed["check_name"].as_str().unwrap_or("?"),
            failed["resource"].as_str().unwrap_or("?"),
            failed["file_path"].as_str().unwrap_or("?")
        ));
    }
    found
}

#[test]
fn overlays_render_validate_and_pass_checkov() {
    let work = tempfile::tempdir().expect("tmp");
    let rendered: Vec<(&str, String)> = CLUSTERS
        .iter()
        .map(|(cluster, ..)| {
            (
                *cluster,
                kustomize(&kubernetes_dir().join("overlays").join(cluster)),
            )
        })
        .collect();
    let streams: Vec<(&str, &str)> = rendered.iter().map(|(c, y)| (*c, y.as_str())).collect();
    let mut found = schema_problems(work.path(), &streams);
    found.extend(checkov_problems(work.path(), &streams));
    assert!(found.is_empty(), "{}", found.join("\n"));
    // Each overlay's values are in force.
    for ((cluster, region, trust_domain), (_, yaml)) in CLUSTERS.iter().zip(&rendered) {
        let objects = documents(yaml);
        let cm = objects
            .iter()
            .find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("isthmus-federation-"))
            })
            .expect("the federation's ConfigMap");
        let config: Value =
            serde_saphyr::from_str(cm["data"]["federation.yaml"].as_str().expect("config"))
                .expect("federation.yaml is YAML");
        assert_eq!(config["cluster"], *cluster);
        assert_eq!(config["region"], *region);
        assert_eq!(config["trust_domain"], *trust_domain);
        assert!(
            cm["data"]["catalog.yaml"].is_string(),
            "merged, not replaced"
        );
    }
}

/// Copies deploy/kubernetes, applies `edit` to one base file, renders east.
fn render_broken(work: &Path, file: &str, from: &str, to: &str) -> String {
    let copy = work.join("kubernetes");
    let status = Command::new("cp")
        .arg("-r")
        .arg(kubernetes_dir())
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    let path = copy.join("base").join(file);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains(from), "{file} holds {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
    let yaml = kustomize(&copy.join("overlays/east"));
    std::fs::remove_dir_all(&copy).expect("clean");
    yaml
}

/// The validation is not vacuous: a schema error and a weakened pod are each reported.
#[test]
fn a_broken_manifest_fails_validation() {
    let work = tempfile::tempdir().expect("tmp");
    let yaml = render_broken(work.path(), "gateway.yaml", "replicas: 2", "replicas: two");
    let found = schema_problems(work.path(), &[("east", &yaml)]);
    assert!(
        found.iter().any(|p| p.contains("spec.replicas")),
        "a string replica count passed the schemas: {found:?}"
    );

    let yaml = render_broken(
        work.path(),
        "gateway.yaml",
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: false",
    );
    let found = checkov_problems(work.path(), &[("east", &yaml)]);
    assert!(
        found
            .iter()
            .any(|p| p.contains("CKV_K8S_22") && p.contains("isthmus-gateway")),
        "a writable root filesystem passed checkov: {found:?}"
    );
}

fn by_identity(objects: Vec<Value>) -> BTreeMap<String, Value> {
    objects
        .into_iter()
        .map(|o| {
            let key = format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap_or(""),
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            );
            (key, o)
        })
        .collect()
}

#[test]
fn the_manifests_subcommand_prints_what_the_overlays_render() {
    for (cluster, region, trust_domain) in CLUSTERS {
        let out = Command::new(exe())
            .args([
                "kubernetes",
                "manifests",
                "--cluster",
                cluster,
                "--region",
                region,
            ])
            .args(["--trust-domain", trust_domain])
            .env_remove("ISTHMUS_K8S_NAMESPACE")
            .env_remove("ISTHMUS_K8S_IMAGE")
            .env_remove("ISTHMUS_K8S_PEERING_ADDRESS")
            .output()
            .expect("run isthmus");
        assert!(
            out.status.success(),
            "isthmus kubernetes manifests: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = documents(&String::from_utf8(out.stdout).expect("utf-8"));
        let rendered = documents(&kustomize(&kubernetes_dir().join("overlays").join(cluster)));
        let order = |objects: &[Value]| -> Vec<String> {
            by_identity(objects.to_vec()).into_keys().collect()
        };
        assert_eq!(
            order(&printed),
            order(&rendered),
            "{cluster}: the same objects"
        );
        let (printed_map, rendered_map) =
            (by_identity(printed.clone()), by_identity(rendered.clone()));
        for (key, object) in &rendered_map {
            assert_eq!(&printed_map[key], object, "{cluster}: {key}");
        }
        let kinds = |objects: &[Value]| -> Vec<String> {
            objects
                .iter()
                .map(|o| o["kind"].as_str().unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(
            kinds(&printed),
            kinds(&rendered),
            "{cluster}: kustomize's order"
        );
    }
}

/// The CoreDNS block is a valid ConfigMap whose Corefile forwards clusterset.local, and the zone
/// it forwards is the one the federation serves.
#[test]
fn the_coredns_snippet_forwards_the_served_zone() {
    let file = kubernetes_dir().join("coredns-clusterset.yaml");
    let out = run(
        Command::new(venv_tool("kubernetes-validate"))
            .args(["--strict", "--no-warn"])
            .arg(&file),
        "kubernetes-validate",
        "pip install kubernetes-validate",
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("passed"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let snippet = documents(&std::fs::read_to_string(&file).expect("read"));
    let corefile = snippet[0]["data"]["Corefile"].as_str().expect("Corefile");
    let config: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(kubernetes_dir().join("base/config/federation.yaml"))
            .expect("read"),
    )
    .expect("YAML");
    for zone in config["dns"]["zones"].as_array().expect("zones") {
        let zone = zone.as_str().expect("zone");
        assert!(corefile.contains(&format!("{zone}:53 {{")), "{corefile}");
    }
    assert!(
        corefile.contains("forward . ISTHMUS_DNS_CLUSTER_IP"),
        "{corefile}"
    );
}
