//! The CLI as an operator meets it, on the real binary: which config each command reads.

use std::process::Command;

use crate::harness::federation::exe;

/// Runs the binary with `args` and exactly the `ISTHMUS_*` variables in `env`.
fn isthmus(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(exe());
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ISTHMUS_")) {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run isthmus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// With the federation's ISTHMUS_CONFIG exported (as operators do for every other command),
/// `gateway run` does not read the federation's file as its own: it asks for the gateway's, and
/// takes it from ISTHMUS_GATEWAY_CONFIG or --config.
#[test]
fn gateway_run_never_reads_the_federations_config_variable() {
    let dir = tempfile::tempdir().expect("tmp");
    let federation = dir.path().join("federation.yaml");
    std::fs::write(&federation, "cluster: east\n").expect("write");
    let federation = federation.to_str().expect("utf-8");

    let (ok, err) = isthmus(&["gateway", "run"], &[("ISTHMUS_CONFIG", federation)]);
    assert!(!ok);
    assert!(
        err.contains("ISTHMUS_GATEWAY_CONFIG") && !err.contains("federation.yaml"),
        "gateway run with only ISTHMUS_CONFIG set: {err}"
    );

    let missing = dir.path().join("gw-missing.yaml");
    let missing = missing.to_str().expect("utf-8");
    let env = [
        ("ISTHMUS_CONFIG", federation),
        ("ISTHMUS_GATEWAY_CONFIG", missing),
    ];
    let (ok, err) = isthmus(&["gateway", "run"], &env);
    assert!(!ok);
    assert!(
        err.contains("gw-missing.yaml"),
        "ISTHMUS_GATEWAY_CONFIG is read: {err}"
    );

    let typed = dir.path().join("gw-typed.yaml");
    let typed = typed.to_str().expect("utf-8");
    let (ok, err) = isthmus(&["gateway", "run", "--config", typed], &env);
    assert!(!ok);
    assert!(err.contains("gw-typed.yaml"), "--config wins: {err}");
}

/// The live processes among `pids`.
fn alive(pids: &[String]) -> Vec<String> {
    pids.iter()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .cloned()
        .collect()
}

/// Kills what the demo started if the test fails half-way (a SIGKILLed demo cannot).
struct Reaper(Vec<String>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in alive(&self.0) {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

/// SIGTERM (what `timeout`, systemd and most supervisors send) stops the demo and every process
/// it started, and the data directory it made goes with them. (On the way, every cluster's
/// dashboard URL the demo prints serves the page.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_stops_everything_on_sigterm_and_cleans_up() {
    use tokio::io::{AsyncBufReadExt as _, BufReader};

    let mut demo = tokio::process::Command::new(exe())
        .arg("demo")
        .env("ISTHMUS_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the demo");
    let pid = demo.id().expect("pid").to_string();
    let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    let mut root = None;
    let mut dashboards = Vec::new();
    let up = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split("data under ").nth(1) {
                root = Some(rest.trim().to_string());
            }
            dashboards.extend(
                line.split_whitespace()
                    .filter(|w| w.starts_with("http://") && w.ends_with("/ui"))
                    .map(str::to_string),
            );
            if line.contains("stops all three clusters") {
                return true;
            }
        }
        false
    })
    .await;
    let children = Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .expect("pgrep");
    let children: Vec<String> = String::from_utf8_lossy(&children.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let _reaper = Reaper(children.clone());
    assert_eq!(up, Ok(true), "the demo did not come up");
    let root = root.expect("the demo names its data directory");
    // Every cluster's dashboard URL is printed, and serves the page.
    assert_eq!(dashboards.len(), 3, "{dashboards:?}");
    for url in &dashboards {
        let page = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5", url])
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&page.stdout);
        assert!(
            page.status.success() && body.contains("<script src=\"/ui/app.js\""),
            "GET {url}: {body}"
        );
    }
    assert_eq!(
        children.len(),
        8,
        "three federations, three gateways and two sample services run: {children:?}"
    );
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let exited = tokio::time::timeout(std::time::Duration::from_secs(60), demo.wait())
        .await
        .expect("the demo exits within 60 s of SIGTERM")
        .expect("wait");
    assert!(exited.success(), "{exited:?}");
    assert!(
        alive(&children).is_empty(),
        "left running after SIGTERM: {:?}",
        alive(&children)
    );
    assert!(
        !std::path::Path::new(&root).exists(),
        "{root} was left behind"
    );
}
