//! `kubectl` against the stand-in: discovery, create, get, watch, 401; the writes (apply,
//! patch, replace, delete, 403) are in [`super::kubectl_writes`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use isthmus_federation::testing::kubeapi::KubeApi;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// kubectl's exit, stdout and stderr.
pub(super) struct Run {
    pub(super) code: i32,
    pub(super) out: String,
    pub(super) err: String,
}

pub(super) struct Kubectl {
    pub(super) kubeconfig: PathBuf,
    pub(super) cache: PathBuf,
    pub(super) dir: PathBuf,
}

impl Kubectl {
    pub(super) fn new(api: &KubeApi, dir: &Path) -> Kubectl {
        Kubectl {
            kubeconfig: api.kubeconfig().to_path_buf(),
            cache: dir.join("kube-cache"),
            dir: dir.to_path_buf(),
        }
    }

    pub(super) fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("/usr/bin/kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--request-timeout=20s")
            .args(args)
            .env("HOME", &self.dir)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        cmd
    }

    pub(super) async fn run(&self, args: &[&str]) -> Run {
        let out = self
            .command(args)
            .output()
            .await
            .expect("run /usr/bin/kubectl (Debian: apt-get install kubernetes-client)");
        Run {
            code: out.status.code().unwrap_or(-1),
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and requires success.
    pub(super) async fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert_eq!(
            run.code, 0,
            "kubectl {args:?} failed:\n{}\n{}",
            run.out, run.err
        );
        run.out
    }

    pub(super) async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all).await).expect("kubectl -o json prints JSON")
    }

    /// Writes `yaml` to `name` in the test dir and returns the path.
    pub(super) fn file(&self, name: &str, yaml: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, yaml).expect("write manifest");
        path.to_str().expect("utf-8 path").to_string()
    }
}

pub(super) const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n";

pub(super) fn service(target_port: u16, extra_port: bool) -> String {
    let extra = if extra_port {
        "  - name: https\n    port: 443\n    targetPort: 8443\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: team\n  labels:\n    app: web\n\
         spec:\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: {target_port}\n{extra}"
    )
}

pub(super) const SLICE: &str = "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: team
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: [\"10.1.0.5\"]
  conditions: {ready: true}
";

pub(super) const EXPORT: &str = "apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata:
  name: web
  namespace: team
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_discovers_creates_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path()).await;
    let k = Kubectl::new(&api, dir.path());

    let resources = k.ok(&["api-resources"]).await;
    for want in [
        "serviceexports",
        "svcex",
        "multicluster.x-k8s.io/v1alpha1",
        "endpointslices",
        "leases",
    ] {
        assert!(
            resources.contains(want),
            "api-resources lacks {want}:\n{resources}"
        );
    }
    let line = resources
        .lines()
        .find(|l| l.starts_with("services "))
        .unwrap();
    assert!(
        line.contains("svc") && line.contains("true") && line.contains("Service"),
        "{line}"
    );

    let all = format!(
        "{NAMESPACE}---\n{}---\n{SLICE}---\n{EXPORT}",
        service(8080, false)
    );
    let file = k.file("all.yaml", &all);
    let out = k.ok(&["create", "-f", &file]).await;
    for want in [
        "namespace/team created",
        "service/web created",
        "endpointslice.discovery.k8s.io/web-abc created",
        "serviceexport.multicluster.x-k8s.io/web created",
    ] {
        assert!(out.contains(want), "{out}");
    }

    let svc = k.json(&["get", "service", "web", "-n", "team"]).await;
    let ip = svc["spec"]["clusterIP"].as_str().unwrap();
    assert!(ip.starts_with("10.96."), "{svc}");
    assert_eq!(svc["spec"]["clusterIPs"], json!([ip]));
    let rv: u64 = svc["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv > 0 && rv <= api.resource_version());
    assert_eq!(svc["metadata"]["uid"].as_str().unwrap().len(), 36);
    let stored = api.get("", "v1", "services", Some("team"), "web").unwrap();
    assert_eq!(svc, stored, "kubectl reads what the server stores");

    let export = k
        .ok(&["get", "svcex", "web", "-n", "team", "-o", "yaml"])
        .await;
    assert!(
        export.contains("kind: ServiceExport") && export.contains("generation: 1"),
        "{export}"
    );
    let slices = k
        .json(&[
            "get",
            "endpointslices",
            "-n",
            "team",
            "-l",
            "kubernetes.io/service-name=web",
        ])
        .await;
    assert_eq!(
        slices["items"][0]["endpoints"][0]["addresses"],
        json!(["10.1.0.5"])
    );
    let none = k
        .json(&[
            "get",
            "endpointslices",
            "-n",
            "team",
            "-l",
            "kubernetes.io/service-name!=web",
        ])
        .await;
    assert_eq!(none["items"], json!([]));

    let table = k.ok(&["get", "services", "-n", "team"]).await;
    assert!(
        table.contains("CLUSTER-IP") && table.contains(ip) && table.contains("80/TCP"),
        "{table}"
    );
    let all_ns = k.ok(&["get", "svcex", "-A"]).await;
    assert!(
        all_ns.contains("team") && all_ns.contains("web"),
        "{all_ns}"
    );

    let again = k.run(&["create", "-f", &file]).await;
    assert_eq!(again.code, 1);
    assert!(
        again.err.contains("AlreadyExists") || again.err.contains("already exists"),
        "{}",
        again.err
    );
    let missing = k.run(&["get", "service", "nope", "-n", "team"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.err.contains("services \"nope\" not found"),
        "{}",
        missing.err
    );
    let lost = k.file(
        "lost.yaml",
        &service(1, false).replace("namespace: team", "namespace: gone"),
    );
    let lost = k.run(&["create", "-f", &lost]).await;
    assert!(
        lost.code == 1 && lost.err.contains("namespaces \"gone\" not found"),
        "{}",
        lost.err
    );
}

/// Reads `child`'s stdout until a line contains `want`, or fails after `within`.
async fn wait_for_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    want: &str,
    within: Duration,
) -> String {
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read kubectl output") {
            if line.contains(want) {
                return line;
            }
        }
        panic!("kubectl's output ended before a line with {want:?}");
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or_else(|_| panic!("no line with {want:?} within {within:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_watch_sees_changes() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path()).await;
    let k = Kubectl::new(&api, dir.path());
    let svc = |name: &str, port: u16| {
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"}, "spec": {"ports": [{"port": port}]}})
    };
    api.put(svc("early", 80)).unwrap();

    // Printed from server-side Tables, without and with the event types.
    for args in [
        vec!["get", "services", "--watch-only"],
        vec!["get", "services", "-w", "--output-watch-events"],
    ] {
        let mut child = k
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kubectl");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let events = args.contains(&"--output-watch-events");
        if events {
            let line = wait_for_line(&mut lines, "early", Duration::from_secs(20)).await;
            assert!(line.starts_with("ADDED"), "{line}");
        }
        // The watch may not be open yet: keep changing until kubectl reports it.
        let name = format!("late-{}", args.len());
        let writer = async {
            for port in 1..=40u16 {
                api.put(svc(&name, port)).unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        let line = tokio::select! {
            line = wait_for_line(&mut lines, &name, Duration::from_secs(20)) => line,
            _ = writer => panic!("kubectl {args:?} never showed {name}"),
        };
        if events {
            assert!(
                line.starts_with("ADDED") || line.starts_with("MODIFIED"),
                "{line}"
            );
        }
        let _ = child.kill().await;
    }
    assert!(api.requests().count("watch", "services") >= 2);
}
