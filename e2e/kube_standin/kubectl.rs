//! `kubectl` against the stand-in: discovery, create, get, apply (create, configure,
//! idempotent), patch (merge, JSON, strategic), replace with a stale resourceVersion, delete,
//! watch, 401 and 403.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use isthmus_federation::testing::kubeapi::KubeApi;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// kubectl's exit, stdout and stderr.
struct Run {
    code: i32,
    out: String,
    err: String,
}

struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn new(api: &KubeApi, dir: &Path) -> Kubectl {
        Kubectl {
            kubeconfig: api.kubeconfig().to_path_buf(),
            cache: dir.join("kube-cache"),
            dir: dir.to_path_buf(),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
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

    async fn run(&self, args: &[&str]) -> Run {
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
    async fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert_eq!(
            run.code, 0,
            "kubectl {args:?} failed:\n{}\n{}",
            run.out, run.err
        );
        run.out
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all).await).expect("kubectl -o json prints JSON")
    }

    /// Writes `yaml` to `name` in the test dir and returns the path.
    fn file(&self, name: &str, yaml: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, yaml).expect("write manifest");
        path.to_str().expect("utf-8 path").to_string()
    }
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n";

fn service(target_port: u16, extra_port: bool) -> String {
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

const SLICE: &str = "apiVersion: discovery.k8s.io/v1
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

const EXPORT: &str = "apiVersion: multicluster.x-k8s.io/v1alpha1
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_creates_merges_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path()).await;
    let k = Kubectl::new(&api, dir.path());
    let ns = k.file("ns.yaml", NAMESPACE);
    k.ok(&["apply", "-f", &ns]).await;
    let v1 = k.file("v1.yaml", &service(8080, false));
    assert!(
        k.ok(&["apply", "-f", &v1])
            .await
            .contains("service/web created")
    );
    let first = api.get("", "v1", "services", Some("team"), "web").unwrap();
    let applied =
        first["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap();
    assert!(applied.contains("\"targetPort\":8080"), "{applied}");

    let out = k.ok(&["apply", "-f", &v1]).await;
    assert!(out.contains("service/web unchanged"), "{out}");
    let same = api.get("", "v1", "services", Some("team"), "web").unwrap();
    assert_eq!(
        same["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );

    // A field kubectl does not own survives its strategic merge (three-way patch).
    api.put(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "team",
        "labels": {"app": "web", "added-by": "controller"}, "annotations": first["metadata"]["annotations"]},
        "spec": first["spec"]})).unwrap();
    let v2 = k.file("v2.yaml", &service(8081, true));
    let out = k.ok(&["apply", "-f", &v2]).await;
    assert!(out.contains("service/web configured"), "{out}");
    let svc = api.get("", "v1", "services", Some("team"), "web").unwrap();
    let ports: Vec<(u64, u64)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_u64().unwrap(),
                p["targetPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [(80, 8081), (443, 8443)]);
    assert_eq!(
        svc["spec"]["clusterIP"], first["spec"]["clusterIP"],
        "the ClusterIP stays"
    );
    assert_eq!(svc["metadata"]["labels"]["added-by"], "controller");
    let applied =
        svc["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap();
    assert!(applied.contains("\"port\":443"), "{applied}");
    let out = k.ok(&["apply", "-f", &v2]).await;
    assert!(out.contains("service/web unchanged"), "{out}");

    // Back to one port: kubectl's patch deletes 443 by its merge key.
    k.ok(&["apply", "-f", &v1]).await;
    let svc = api.get("", "v1", "services", Some("team"), "web").unwrap();
    assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 1, "{svc}");

    // Custom resources take kubectl's JSON merge patch path.
    let export = k.file("export.yaml", EXPORT);
    assert!(k.ok(&["apply", "-f", &export]).await.contains("created"));
    assert!(k.ok(&["apply", "-f", &export]).await.contains("unchanged"));
    let labelled = k.file(
        "export2.yaml",
        &format!("{EXPORT}  labels:\n    tier: gold\n"),
    );
    assert!(
        k.ok(&["apply", "-f", &labelled])
            .await
            .contains("configured")
    );
    let export = api
        .get(
            "multicluster.x-k8s.io",
            "v1alpha1",
            "serviceexports",
            Some("team"),
            "web",
        )
        .unwrap();
    assert_eq!(export["metadata"]["labels"]["tier"], "gold");
    assert!(api.requests().count("patch", "serviceexports") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_patch_replace_delete_and_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path()).await;
    let k = Kubectl::new(&api, dir.path());
    k.ok(&["create", "-f", &k.file("ns.yaml", NAMESPACE)]).await;
    k.ok(&["create", "-f", &k.file("svc.yaml", &service(8080, true))])
        .await;
    let stale = k
        .ok(&["get", "svc", "web", "-n", "team", "-o", "yaml"])
        .await;

    k.ok(&[
        "patch",
        "svc",
        "web",
        "-n",
        "team",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"labels":{"tier":"gold"}}}"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "svc",
        "web",
        "-n",
        "team",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/ports/0/targetPort","value":9000}]"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "svc",
        "web",
        "-n",
        "team",
        "-p",
        r#"{"spec":{"ports":[{"port":443,"targetPort":9443}]}}"#,
    ])
    .await;
    let svc = api.get("", "v1", "services", Some("team"), "web").unwrap();
    assert_eq!(svc["metadata"]["labels"]["tier"], "gold");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 9000);
    assert_eq!(
        svc["spec"]["ports"][1]["targetPort"], 9443,
        "strategic merge by port: {svc}"
    );
    let bad = k
        .run(&[
            "patch",
            "svc",
            "web",
            "-n",
            "team",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/spec/nope"}]"#,
        ])
        .await;
    assert_eq!(bad.code, 1, "{}", bad.err);

    let stale = k.file("stale.yaml", &stale);
    let conflict = k.run(&["replace", "-f", &stale]).await;
    assert_eq!(conflict.code, 1);
    assert!(
        conflict.err.contains("the object has been modified"),
        "{}",
        conflict.err
    );

    api.revoke("delete", "", "services");
    let denied = k.run(&["delete", "svc", "web", "-n", "team"]).await;
    assert_eq!(denied.code, 1);
    assert!(
        denied.err.contains("Forbidden")
            && denied.err.contains("cannot delete resource \"services\""),
        "{}",
        denied.err
    );
    assert!(api.get("", "v1", "services", Some("team"), "web").is_some());
    api.allow("delete", "", "services");
    let out = k.ok(&["delete", "svc", "web", "-n", "team"]).await;
    assert!(out.contains("service \"web\" deleted"), "{out}");
    assert!(api.get("", "v1", "services", Some("team"), "web").is_none());

    let mut wrong = std::fs::read_to_string(api.kubeconfig()).unwrap();
    wrong = wrong.replace(api.token(), "not-the-token");
    let wrong_path = dir.path().join("wrong-kubeconfig");
    std::fs::write(&wrong_path, wrong).unwrap();
    let k2 = Kubectl {
        kubeconfig: wrong_path,
        cache: dir.path().join("cache2"),
        dir: dir.path().to_path_buf(),
    };
    let unauthorized = k2.run(&["get", "svc"]).await;
    assert_eq!(unauthorized.code, 1);
    assert!(
        unauthorized.err.contains("Unauthorized") || unauthorized.err.contains("must be logged in"),
        "{}",
        unauthorized.err
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
