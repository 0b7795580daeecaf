//! Convergence benchmark (not a test, not in CI): time from an export change at one cluster to
//! its arrival at every other cluster's gateway config stream, and the memory of a federation
//! holding many imported services.
//!
//! ```sh
//! cargo build --release --bin isthmus
//! cargo bench --bench convergence -- --clusters 3 --services 1000
//! cargo bench --bench convergence -- --clusters 10 --services 10000
//! cargo bench --bench convergence -- --memory 100000
//! ```
//!
//! Each cluster is a real `isthmus federation` process (release build) on loopback with the
//! embedded store, full-mesh peered with tokens. Cluster 0 exports `--services` services; each
//! other cluster has a gateway client (bootstrapped with a real token) subscribed to its config
//! stream. A change is appending one export to cluster 0's catalog file (polled every 20 ms —
//! part of the measured path); it has arrived when every subscriber received it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use isthmus_federation::gwapi::BootstrapFile;
use isthmus_federation::proto::SubscribeRequest;
use isthmus_gateway::control::ControlClient;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

struct Fed {
    name: String,
    socket: PathBuf,
    catalog: PathBuf,
    child: Child,
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The exporter's catalog as JSON (also valid YAML): large generated catalogs are written this
/// way, since it parses far faster than YAML.
fn catalog(services: usize, extra: &[String]) -> String {
    let export = |name: &str, addr: &str| json!({ "namespace": "bench", "name": name, "ports": [{ "port": 8080, "protocol": "http" }], "endpoints": [{ "address": addr }] });
    let mut exports: Vec<Value> = (0..services)
        .map(|i| export(&format!("svc-{i}"), "10.0.0.1:8080"))
        .collect();
    exports.extend(extra.iter().map(|n| export(n, "10.0.0.2:8080")));
    json!({ "imports": [{ "peer": "*", "namespaces": ["*"] }], "exports": exports }).to_string()
}

async fn admin(socket: &Path, op: &str, body: Value) -> anyhow::Result<Value> {
    Ok(isthmus_federation::admin::admin_call(socket, op, &body, Duration::from_secs(60)).await?)
}

async fn start(exe: &Path, root: &Path, i: usize, services: usize) -> anyhow::Result<Fed> {
    let name = format!("c{i}");
    let dir = root.join(&name);
    std::fs::create_dir_all(&dir)?;
    let kek = isthmus_federation::identity::Kek::generate()?;
    std::fs::write(dir.join("kek"), kek.to_base64().as_bytes())?;
    let catalog_path = dir.join("catalog.yaml");
    std::fs::write(
        &catalog_path,
        catalog(if i == 0 { services } else { 0 }, &[]),
    )?;
    let cfg = json!({
        "cluster": name, "region": "r1", "data_dir": dir,
        "listen": { "peering": { "bind": "127.0.0.1:0" }, "api": { "bind": "127.0.0.1:0" }, "admin": "127.0.0.1:0" },
        "vips": { "ipv4": "127.64.0.0/14", "max_per_peer": 262_142 },
        "catalog": { "file": catalog_path, "poll_interval": "20ms" },
        "ca": { "kek_file": dir.join("kek") },
    });
    let cfg_path = dir.join("federation.yaml");
    std::fs::write(&cfg_path, serde_json::to_string(&cfg)?)?;
    let mut child = Command::new(exe)
        .args(["federation", "--config"])
        .arg(&cfg_path)
        .env(
            "ISTHMUS_LOG",
            std::env::var("ISTHMUS_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(dir.join("log"))?))
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await??
        .context("exited")?;
    let ready: Value = serde_json::from_str(&line)?;
    let socket = PathBuf::from(ready["ready"]["admin_socket"].as_str().unwrap_or_default());
    Ok(Fed {
        name,
        socket,
        catalog: catalog_path,
        child,
    })
}

/// SIGTERM every federation and wait for it, so they shut down cleanly (profilers write out).
async fn stop(feds: Vec<Fed>) {
    for mut f in feds {
        if let Some(pid) = f.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), f.child.wait()).await;
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let parse = arg("--parse", 0);
    if parse > 0 {
        // How long the exporter spends parsing and validating its catalog file.
        let text = catalog(parse, &[]);
        let t = Instant::now();
        let parsed = isthmus_federation::catalog::parse_catalog(&text)?;
        println!(
            "parse of {} exports ({} KiB): {:.1} ms",
            parsed.exports.len(),
            text.len() / 1024,
            t.elapsed().as_secs_f64() * 1000.0
        );
        // What the file source does on each edit: re-read with the last document remembered.
        let mut parser = isthmus_federation::catalog::CatalogParser::default();
        parser.parse(&text)?;
        let edited = catalog(parse, &["probe-0".to_string()]);
        let t = Instant::now();
        let reparsed = parser.parse(&edited)?;
        println!(
            "re-parse after appending one export ({} exports, unchanged entries reused): {:.1} ms",
            reparsed.exports.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
        return Ok(());
    }
    let memory = arg("--memory", 0);
    let clusters = if memory > 0 { 2 } else { arg("--clusters", 3) };
    let services = if memory > 0 {
        memory
    } else {
        arg("--services", 1000)
    };
    let changes = arg("--changes", 50);
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target"));
    let exe = std::env::var("ISTHMUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| target.join("release/isthmus"));
    if !exe.exists() {
        bail!(
            "{} not found: cargo build --release --bin isthmus (or set ISTHMUS_BIN)",
            exe.display()
        );
    }
    let root = tempfile::tempdir()?;
    if std::env::var_os("ISTHMUS_BENCH_KEEP").is_some() {
        eprintln!("keeping logs under {}", root.path().display());
    }
    let mut feds = Vec::new();
    for i in 0..clusters {
        feds.push(start(&exe, root.path(), i, services).await?);
    }
    for i in 0..clusters {
        for j in (i + 1)..clusters {
            let t = admin(
                &feds[i].socket,
                "peering.token",
                json!({ "peer": feds[j].name }),
            )
            .await?;
            admin(
                &feds[j].socket,
                "peering.establish",
                json!({ "token": t["token"] }),
            )
            .await?;
        }
    }
    // One subscribed gateway per receiving cluster; record when each service name first arrives.
    let seen: Arc<Mutex<HashMap<(usize, String), Instant>>> = Arc::default();
    let counts: Arc<Mutex<HashMap<usize, usize>>> = Arc::default();
    for (j, fed) in feds.iter().enumerate().skip(1) {
        let file: BootstrapFile = serde_json::from_value(
            admin(&fed.socket, "gateway.bootstrap", json!({ "name": "bench" })).await?,
        )?;
        let client = ControlClient::bootstrap(&file).await?;
        let mut stream = client
            .client()
            .subscribe(SubscribeRequest {
                gateway: "bench".into(),
                known_version: 0,
            })
            .await?
            .into_inner();
        let (seen, counts) = (seen.clone(), counts.clone());
        tokio::spawn(async move {
            let mut have = std::collections::HashSet::new();
            while let Ok(Some(cfg)) = stream.message().await {
                let now = Instant::now();
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                for r in &cfg.imports {
                    if let Some(k) = &r.key {
                        have.insert(k.name.clone());
                        s.entry((j, k.name.clone())).or_insert(now);
                    }
                }
                for k in &cfg.removed_imports {
                    have.remove(&k.name);
                }
                counts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(j, have.len());
            }
        });
    }
    let started = Instant::now();
    loop {
        let c = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if (1..clusters).all(|j| c.get(&j).copied().unwrap_or(0) >= services) {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("initial sync did not complete: {c:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "clusters={clusters} services={services}: initial sync {} ms",
        started.elapsed().as_millis()
    );
    if memory > 0 {
        let pid = feds[1].child.id().unwrap_or(0);
        println!(
            "federation holding {services} imported services: RSS {} MiB",
            rss_kib(pid) / 1024
        );
        stop(feds).await;
        return Ok(());
    }
    let mut samples = Vec::new();
    let mut extra = Vec::new();
    for k in 0..changes {
        let name = format!("probe-{k}");
        extra.push(name.clone());
        let text = catalog(services, &extra);
        let t0 = Instant::now();
        // Generated catalogs are replaced atomically (write, then rename over the path).
        let tmp = feds[0].catalog.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &feds[0].catalog)?;
        loop {
            let arrived: Vec<Instant> = {
                let s = seen.lock().unwrap_or_else(|p| p.into_inner());
                (1..clusters)
                    .filter_map(|j| s.get(&(j, name.clone())).copied())
                    .collect()
            };
            if arrived.len() == clusters - 1 {
                samples.extend(
                    arrived
                        .iter()
                        .map(|a| a.duration_since(t0).as_secs_f64() * 1000.0),
                );
                break;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("change {name} did not arrive everywhere within 60s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    if std::env::var_os("ISTHMUS_BENCH_KEEP").is_some() {
        let _ = root.keep();
    }
    println!(
        "clusters={clusters} services={services} changes={changes}: arrival p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        pct(&samples, 0.5),
        pct(&samples, 0.99),
        samples.last().copied().unwrap_or(f64::NAN),
        samples.len()
    );
    Ok(())
}
