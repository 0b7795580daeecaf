//! The operator's side of the Kubernetes export scenarios: the real `kubectl` against a
//! cluster's API server stand-in, and the objects it applies.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

/// Debian's kubectl (the one the machine image ships).
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// `kubectl` bound to one stand-in, with its own discovery cache.
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub cache: PathBuf,
}

impl Kubectl {
    pub fn new(kubeconfig: &Path, dir: &Path) -> Self {
        assert!(
            Path::new(KUBECTL).exists(),
            "{KUBECTL} is missing: install kubectl (Debian: kubernetes-client)"
        );
        Kubectl {
            kubeconfig: kubeconfig.to_path_buf(),
            cache: dir.join("kubectl-cache"),
        }
    }

    /// Runs kubectl with `args` (and `stdin`); `(success, stdout, stderr)`.
    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = Command::new(KUBECTL);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("kubectl stdin");
            pipe.write_all(text.as_bytes())
                .await
                .expect("write to kubectl");
            drop(pipe);
        }
        let out = child.wait_with_output().await.expect("wait for kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `kubectl apply -f -` of `objects` (a stream of JSON documents), failing the test
    /// when it fails.
    pub async fn apply(&self, objects: &[Value]) {
        let docs: Vec<String> = objects.iter().map(Value::to_string).collect();
        let stream = docs.join("\n");
        let (ok, out, err) = self.run(&["apply", "-f", "-"], Some(&stream)).await;
        assert!(ok, "kubectl apply failed: {err}{out}\n{stream}");
    }

    pub async fn delete(&self, kind: &str, ns: &str, name: &str) {
        let (ok, out, err) = self.run(&["delete", kind, name, "-n", ns], None).await;
        assert!(ok, "kubectl delete {kind} {name} failed: {err}{out}");
    }

    /// `kubectl get <kind> <name> -n <ns> -o json`, `None` when it fails (not found).
    pub async fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let (ok, out, _) = self
            .run(&["get", kind, name, "-n", ns, "-o", "json"], None)
            .await;
        ok.then(|| serde_json::from_str(&out).expect("kubectl -o json"))
    }
}

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// A ClusterIP Service with one `http` port (80, targeting the named port `web`).
pub fn service(ns: &str, name: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
        "spec": {"clusterIP": "10.96.7.7", "selector": {"app": name},
            "ports": [{"name": "http", "port": port, "targetPort": "web", "appProtocol": "http",
                       "protocol": "TCP"}]}})
}

pub fn service_export(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": {"namespace": ns, "name": name}})
}

/// One endpoint of a slice: address, ready, terminating, zone.
pub struct Ep<'a>(pub String, pub bool, pub bool, pub &'a str);

/// An EndpointSlice of Service `service`, port `http` → 8080.
pub fn slice(ns: &str, service: &str, name: &str, eps: &[Ep<'_>]) -> Value {
    slice_on(ns, service, name, 8080, eps)
}

/// An EndpointSlice of Service `service`, port `http` → `port`.
pub fn slice_on(ns: &str, service: &str, name: &str, port: u16, eps: &[Ep<'_>]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|Ep(ip, ready, terminating, zone)| {
            json!({"addresses": [ip], "zone": zone,
                "conditions": {"ready": ready, "serving": *ready || *terminating,
                               "terminating": terminating}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints})
}

/// `n` ready endpoints `10.<net>.0.<1..=n>` in `zone`.
pub fn ready(net: u8, n: u8, zone: &str) -> Vec<Ep<'_>> {
    (1..=n)
        .map(|i| Ep(format!("10.{net}.0.{i}"), true, false, zone))
        .collect()
}

/// The condition of `type_` in a ServiceExport's JSON: `(status, reason, message)`.
pub fn condition(se: &Value, type_: &str) -> Option<(String, String, String)> {
    se["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_owned(),
                c["reason"].as_str().unwrap_or("").to_owned(),
                c["message"].as_str().unwrap_or("").to_owned(),
            )
        })
}
