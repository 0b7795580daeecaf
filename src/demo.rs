//! `isthmus demo`: three clusters (east, west, south) as separate `isthmus federation` processes
//! on loopback with the embedded store, peered with tokens exactly as an operator would, each
//! exporting a service; waits until every cluster sees the others' services, prints what to try,
//! and runs until Ctrl-C (or exits after convergence with --exit).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

struct Cluster {
    name: &'static str,
    region: &'static str,
    dir: PathBuf,
    socket: PathBuf,
    child: Child,
    ready: Value,
}

const CLUSTERS: [(&str, &str, u8); 3] = [
    ("east", "us-east", 1),
    ("west", "us-west", 2),
    ("south", "sa-east", 3),
];

fn config(name: &str, region: &str, index: u8, dir: &Path) -> Value {
    json!({
        "cluster": name,
        "region": region,
        "data_dir": dir,
        "listen": {
            "peering": { "bind": format!("127.0.{index}.1:0") },
            "api": { "bind": format!("127.0.{index}.1:0") },
            "admin": format!("127.0.{index}.1:0"),
        },
        "vips": { "ipv4": format!("127.{}.0.0/24", 76 + index) },
        "catalog": { "file": dir.join("catalog.yaml"), "poll_interval": "200ms" },
        "ca": { "kek_file": dir.join("kek") },
    })
}

fn catalog(name: &str, index: u8) -> String {
    // Each cluster exports `echo` (all clusters run it) and one service of its own; imports are
    // opt-in, so every cluster says what it takes from whom.
    format!(
        "exports:\n  - namespace: demo\n    name: echo\n    ports: [{{port: 8080, protocol: http, name: http}}]\n    endpoints: [{{address: \"127.0.{index}.10:8080\"}}]\n  - namespace: demo\n    name: {name}-only\n    ports: [{{port: 9000, protocol: tcp}}]\n    endpoints: [{{address: \"127.0.{index}.11:9000\"}}]\nimports:\n  - peer: \"*\"\n    namespaces: [demo]\n"
    )
}

async fn admin(socket: &Path, op: &str, body: Value) -> anyhow::Result<Value> {
    Ok(isthmus_federation::admin::admin_call(socket, op, &body, Duration::from_secs(20)).await?)
}

async fn start(
    exe: &Path,
    root: &Path,
    name: &'static str,
    region: &'static str,
    index: u8,
) -> anyhow::Result<Cluster> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let kek = isthmus_federation::identity::Kek::generate()?;
    write_private(&dir.join("kek"), kek.to_base64().as_bytes())?;
    std::fs::write(dir.join("catalog.yaml"), catalog(name, index))?;
    let cfg_path = dir.join("federation.yaml");
    // JSON is YAML: the config file is written with serde_json.
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&config(name, region, index, &dir))?,
    )?;
    let log = std::fs::File::create(dir.join("federation.log"))?;
    let mut child = Command::new(exe)
        .args(["federation", "--config"])
        .arg(&cfg_path)
        .env("ISTHMUS_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .with_context(|| {
            format!(
                "{name} did not start within 30s: see {}",
                dir.join("federation.log").display()
            )
        })??
        .with_context(|| {
            format!(
                "{name} exited: see {}",
                dir.join("federation.log").display()
            )
        })?;
    let ready: Value = serde_json::from_str(&line)?;
    let socket = PathBuf::from(ready["ready"]["admin_socket"].as_str().unwrap_or_default());
    Ok(Cluster {
        name,
        region,
        dir,
        socket,
        child,
        ready,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

pub async fn run(dir: Option<PathBuf>, exit: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the isthmus binary")?;
    let root = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("isthmus-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&root)?;
    println!(
        "Isthmus demo: three clusters on loopback, data under {}",
        root.display()
    );
    let mut clusters = Vec::new();
    for (name, region, index) in CLUSTERS {
        let c = start(&exe, &root, name, region, index).await?;
        println!(
            "  started {:<5} ({}) peering {}  admin http://{}",
            c.name,
            c.region,
            c.ready["ready"]["peering"],
            c.ready["ready"]["admin"].as_str().unwrap_or("?")
        );
        clusters.push(c);
    }
    // Full mesh: for each pair, the first issues a token, the second establishes with it.
    for i in 0..clusters.len() {
        for j in (i + 1)..clusters.len() {
            let (a, b) = (&clusters[i], &clusters[j]);
            let token = admin(&a.socket, "peering.token", json!({ "peer": b.name })).await?;
            admin(
                &b.socket,
                "peering.establish",
                json!({ "token": token["token"] }),
            )
            .await?;
            println!(
                "  peered {} <-> {} (token from {}, established by {})",
                a.name, b.name, a.name, b.name
            );
        }
    }
    // Converged: every cluster sees echo served by all three and each other cluster's service.
    let started = tokio::time::Instant::now();
    loop {
        let mut done = true;
        for c in &clusters {
            let view = admin(&c.socket, "catalog", json!(null)).await?;
            let routes = view["routes"].as_object().cloned().unwrap_or_default();
            let echo_clusters = routes
                .get("demo/echo")
                .and_then(|r| r["clusters"].as_array())
                .map(Vec::len)
                .unwrap_or(0);
            done &= echo_clusters == 3 && routes.len() == 4;
        }
        if done {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the clusters did not converge within 60s: see the federation.log files under {}",
                root.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "\nConverged in {} ms. What each cluster sees:",
        started.elapsed().as_millis()
    );
    for c in &clusters {
        let view = admin(&c.socket, "catalog", json!(null)).await?;
        println!("  {}:", c.name);
        for (key, route) in view["routes"].as_object().cloned().unwrap_or_default() {
            let served: Vec<String> = route["clusters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|x| x["place"]["cluster"].as_str().unwrap_or("?").to_string())
                .collect();
            println!(
                "    {key:<16} vip {:<12} served by {}",
                route["vips"]["v4"].as_str().unwrap_or("-"),
                served.join(", ")
            );
        }
    }
    let east = &clusters[0];
    println!("\nTry (in another terminal):");
    println!(
        "  {} peering list --admin-socket {}",
        exe.display(),
        east.socket.display()
    );
    println!(
        "  {} status --admin-socket {}",
        exe.display(),
        east.socket.display()
    );
    println!(
        "  curl -s http://{}/metrics | grep isthmus_federation",
        east.ready["ready"]["admin"].as_str().unwrap_or("?")
    );
    println!(
        "  edit {} (add an export) and watch it appear at the others:",
        east.dir.join("catalog.yaml").display()
    );
    println!(
        "  {} catalog --admin-socket {}",
        exe.display(),
        clusters[1].socket.display()
    );
    if exit {
        return stop(clusters).await;
    }
    println!("\nCtrl-C stops all three clusters.");
    let _ = tokio::signal::ctrl_c().await;
    stop(clusters).await
}

async fn stop(clusters: Vec<Cluster>) -> anyhow::Result<()> {
    for mut c in clusters {
        if let Some(pid) = c.child.id() {
            // SIGTERM for a graceful shutdown; kill_on_drop is the backstop.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), c.child.wait()).await;
    }
    println!("stopped.");
    Ok(())
}
