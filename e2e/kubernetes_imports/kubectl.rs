//! `kubectl` against the API server stand-in, as the operator runs it: Debian's real binary,
//! its own cache and HOME, reading back with `get -o json`.

use std::path::PathBuf;

use serde_json::Value;
use tokio::process::Command;

pub(super) struct Kubectl {
    pub(super) kubeconfig: PathBuf,
    pub(super) dir: PathBuf,
}

impl Kubectl {
    pub(super) async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kube-cache"))
            .arg("--request-timeout=20s")
            .args(args)
            .env("HOME", &self.dir)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output()
            .await
            .expect("run /usr/bin/kubectl (Debian: apt-get install kubernetes-client)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `kubectl get <what> -o json`; `None` when it does not exist.
    pub(super) async fn get(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["get"];
        all.extend(args);
        all.extend(["-o", "json"]);
        let (ok, out, err) = self.run(&all).await;
        if !ok {
            assert!(err.contains("NotFound"), "kubectl {all:?}: {err}");
            return None;
        }
        Some(serde_json::from_str(&out).expect("kubectl -o json prints JSON"))
    }

    pub(super) async fn apply(&self, name: &str, yaml: &str) {
        let path = self.dir.join(name);
        std::fs::write(&path, yaml).expect("write manifest");
        let (ok, out, err) = self
            .run(&["apply", "-f", path.to_str().expect("utf-8")])
            .await;
        assert!(ok, "kubectl apply {name}: {out}{err}");
    }
}
