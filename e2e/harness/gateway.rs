//! Gateways and sample services as real processes, and a three-cluster mesh built the way an
//! operator builds one: federations peered with tokens, a bootstrap file per gateway from
//! `isthmus gateway bootstrap`, `isthmus gateway run --config`, and the sample services each
//! cluster exports.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

use super::federation::{exe, free_ports};
use super::{Federation, Spec, peer_via_cli};

/// One `isthmus gateway run` process.
pub struct Gateway {
    pub name: String,
    pub cluster: &'static str,
    pub inbound: SocketAddr,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    access_path: PathBuf,
    /// The bootstrap file (shared by [`Gateway::replica`]s).
    bootstrap: PathBuf,
    /// Extra environment of the gateway process (e.g. its pod IP on Kubernetes).
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Gateway {
    /// Bootstraps `name` with `fed` through the CLI and starts it; `extra` is merged into the
    /// generated config (top-level keys replace).
    pub async fn start(fed: &Federation, name: &str, extra: Value) -> Gateway {
        Self::start_with_env(fed, name, extra, &[]).await
    }

    /// [`Gateway::start`] with extra environment variables for the gateway process.
    pub async fn start_with_env(
        fed: &Federation,
        name: &str,
        extra: Value,
        env: &[(&str, &str)],
    ) -> Gateway {
        let dir = fed.dir.join(format!("gateway-{name}"));
        std::fs::create_dir_all(&dir).expect("gateway dir");
        let bootstrap = dir.join("bootstrap.json");
        fed.cli_ok(&[
            "gateway",
            "bootstrap",
            "--name",
            name,
            "--out",
            bootstrap.to_str().expect("utf-8 path"),
        ])
        .await;
        Self::start_from(fed, name, dir, bootstrap, extra, env).await
    }

    /// Another process of this gateway, as a second replica of one Deployment is: the same
    /// bootstrap file (no new token), its own directory (`<name>-<instance>`), config and env.
    pub async fn replica(
        &self,
        fed: &Federation,
        instance: &str,
        extra: Value,
        env: &[(&str, &str)],
    ) -> Gateway {
        let dir = fed.dir.join(format!("gateway-{}-{instance}", self.name));
        std::fs::create_dir_all(&dir).expect("gateway dir");
        Self::start_from(fed, &self.name, dir, self.bootstrap.clone(), extra, env).await
    }

    async fn start_from(
        fed: &Federation,
        name: &str,
        dir: PathBuf,
        bootstrap: PathBuf,
        extra: Value,
        env: &[(&str, &str)],
    ) -> Gateway {
        let ip = match fed.peering.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
        };
        let [inbound, proxy, admin] = free_ports(ip);
        let mut cfg = json!({
            "bootstrap_file": bootstrap,
            "listen": {
                "inbound": { "bind": inbound.to_string() },
                "proxy": proxy.to_string(),
                "admin": admin.to_string(),
            },
            "registration_ttl": "3s",
            "drain_timeout": "5s",
        });
        super::merge(&mut cfg, &extra);
        // `extra` may bind the inbound listener elsewhere (e.g. on a pod IP).
        let inbound = cfg["listen"]["inbound"]["bind"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or(inbound);
        let config_path = dir.join("gateway.yaml");
        std::fs::write(
            &config_path,
            serde_json::to_string_pretty(&cfg).expect("json"),
        )
        .expect("write gateway config");
        let mut gw = Gateway {
            name: name.to_string(),
            cluster: fed.name,
            inbound,
            proxy,
            admin,
            log_path: dir.join("gateway.log"),
            access_path: dir.join("access.log"),
            config_path,
            bootstrap,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        if let Err(e) = gw.spawn().await {
            gw.fail(&format!("start: {e:#}"));
        }
        gw
    }

    /// SIGKILL, no drain (a crashed pod).
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts the process again with the same config, bootstrap file and environment.
    pub async fn restart(&mut self) {
        self.kill9().await;
        if let Err(e) = self.spawn().await {
            self.fail(&format!("restart: {e:#}"));
        }
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut child = Command::new(exe())
            .args(["gateway", "run", "--config"])
            .arg(&self.config_path)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ISTHMUS_LOG_FORMAT", "plain")
            .env(
                "ISTHMUS_LOG",
                std::env::var("ISTHMUS_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", exe()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(40), lines.next_line())
            .await
            .context("no ready line within 40 s")??
            .context("the gateway exited before it was ready")?;
        let ready: Value = serde_json::from_str(&line).with_context(|| format!("{line:?}"))?;
        anyhow::ensure!(
            ready["ready"]["inbound"].as_str() == Some(self.inbound.to_string().as_str()),
            "unexpected ready line {ready}"
        );
        // Access-log lines (JSON, one per request) go to their own file.
        let access = self.access_path.clone();
        tokio::spawn(async move {
            let mut f = match tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&access)
                .await
            {
                Ok(f) => f,
                Err(_) => return,
            };
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = f.write_all(format!("{l}\n").as_bytes()).await;
                let _ = f.flush().await;
            }
        });
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The gateway's resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().unwrap_or_else(|| self.fail("not running"));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Every access-log line written so far.
    pub fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.access_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (up to 10 s) until the access log holds what `done` looks for; returns the log.
    /// Lines are written when an exchange ends, through a queue: wait for them, never sleep.
    pub async fn wait_access_log(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.access_log();
            if done(&log) {
                return log;
            }
            if tokio::time::Instant::now() > deadline {
                self.fail(&format!("access log: {what} within 10 s; it holds {log:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "gateway {} of {}: {msg}\n--- last lines of {} ---\n{}",
            self.name,
            self.cluster,
            self.log_path.display(),
            self.log_tail(40)
        )
    }

    /// `/config_dump` of the admin port.
    pub async fn config_dump(&self) -> anyhow::Result<Value> {
        let body = http_get(self.admin, "/config_dump").await?;
        Ok(serde_json::from_str(&body)?)
    }

    /// Sum of the gateway's `/metrics` samples named `name` carrying every label in `labels`.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        match http_get(self.admin, "/metrics").await {
            Ok(body) => super::sum_metric(&body, name, labels),
            Err(e) => self.fail(&format!("GET /metrics: {e:#}")),
        }
    }

    /// Waits until the gateway routes `service` (`<svc>.<ns>`) through a VIP.
    pub async fn wait_import(&self, service: &str) {
        let deadline = tokio::time::Instant::now() + super::CONVERGE;
        loop {
            let dump = self.config_dump().await.unwrap_or_default();
            let imports = dump["table"]["imports"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if imports.iter().any(|i| i.as_str() == Some(service)) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                self.fail(&format!(
                    "{service} never reached the routing table: {dump}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for an exit already asked for (e.g. a SIGTERM sent by the test); fails unless it
    /// is clean and within `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        match tokio::time::timeout(limit, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(status) => self.fail(&format!("exited badly: {status:?}")),
            Err(_) => self.fail(&format!("did not exit within {limit:?}")),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== gateway {} of {} log tail =====\n{}\n",
                self.name,
                self.cluster,
                self.log_tail(30)
            );
        }
    }
}

/// Opens a 1 GiB download from west's echo through the HTTP proxy port `proxy`, with a receive
/// buffer of `rcvbuf` bytes; the caller reads as little of it as it likes.
pub async fn west_download(proxy: SocketAddr, rcvbuf: u32) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(rcvbuf).expect("rcvbuf");
    let mut conn = socket
        .connect(proxy)
        .await
        .expect("connect to the proxy port");
    conn.write_all(
        b"GET http://west.echo.demo.svc.clusterset.local:8080/bytes?n=1073741824 HTTP/1.1\r\n\
          Host: west.echo.demo.svc.clusterset.local:8080\r\n\r\n",
    )
    .await
    .expect("send the request");
    conn
}

/// `curl -sS --max-time 20` with `args` (a real client): (exit code, stdout, stderr).
pub fn curl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed (apt-get install curl)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plain HTTP/1.1 GET; the body of a 200.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt as _;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf)).await??;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    Ok(body.to_string())
}

/// The sample services of one cluster (`isthmus sample-backends`), on fixed addresses.
pub struct Samples {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub tcp: SocketAddr,
    child: Child,
}

impl Samples {
    pub async fn start(cluster: &str, ip: Ipv4Addr) -> Samples {
        let [http, grpc, tcp] = free_ports(ip);
        let mut child = Command::new(exe())
            .args(["sample-backends", "--cluster", cluster])
            .args(["--http", &http.to_string(), "--grpc", &grpc.to_string()])
            .args(["--tcp", &tcp.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sample backends");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("sample backends ready in time")
            .expect("read")
            .expect("sample backends exited");
        assert!(line.contains("ready"), "{line}");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Samples {
            http,
            grpc,
            tcp,
            child,
        }
    }

    /// Stops the sample services: their endpoints refuse connections from now on.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The catalog file exporting the samples as `demo/echo` (http 8080), `demo/grpc-echo`
    /// (grpc 50051), `demo/tcp-echo` (tcp 9000), plus `extra` export items; imports all.
    pub fn catalog(&self, extra: &str) -> String {
        format!(
            "exports:\n\
             \x20 - namespace: demo\n    name: echo\n    ports: [{{port: 8080, protocol: http}}]\n    endpoints: [{{address: \"{}\"}}]\n\
             \x20 - namespace: demo\n    name: grpc-echo\n    ports: [{{port: 50051, protocol: grpc}}]\n    endpoints: [{{address: \"{}\"}}]\n\
             \x20 - namespace: demo\n    name: tcp-echo\n    ports: [{{port: 9000, protocol: tcp}}]\n    endpoints: [{{address: \"{}\"}}]\n\
             {extra}{}",
            self.http,
            self.grpc,
            self.tcp,
            super::IMPORT_ALL
        )
    }
}

/// One cluster of a [`Mesh`].
pub struct Member {
    pub fed: Federation,
    pub gw: Gateway,
    /// Kept for the processes' lifetime (dropping it stops them).
    pub samples: Samples,
}

impl Member {
    /// The VIP this cluster's federation assigned to `ns/name` (from its catalog).
    pub async fn vip(&self, key: &str) -> std::net::IpAddr {
        let catalog = self.fed.catalog().await;
        let vip = super::route(&catalog, key)
            .and_then(|r| r["vips"]["v4"].as_str())
            .unwrap_or_else(|| self.fed.fail(&format!("no VIP for {key}")));
        vip.parse().expect("vip")
    }
}

/// Three clusters, peered, each with a gateway and its sample services. `east` exports only
/// what `east_extra` adds (plus nothing of the samples), so that every call to the samples
/// crosses to `west` or `south`; `fed_extra` is merged into every federation's config and
/// `gw_extra` into every gateway's.
pub async fn mesh(base: u8, east_extra: &str, fed_extra: Value, gw_extra: Value) -> Vec<Member> {
    let names = ["east", "west", "south"];
    let mut samples = Vec::new();
    let mut feds = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let index = base + i as u8;
        let s = Samples::start(name, Ipv4Addr::new(127, 0, index, 10)).await;
        let catalog = if i == 0 {
            format!("exports:\n{east_extra}{}", super::IMPORT_ALL)
        } else {
            s.catalog("")
        };
        // An empty export list must still be a list.
        let catalog = catalog.replace("exports:\nimports", "exports: []\nimports");
        feds.push(
            Federation::start(
                Spec::new(name, index)
                    .catalog(&catalog)
                    .extra(fed_extra.clone()),
            )
            .await,
        );
        samples.push(s);
    }
    peer_via_cli(&feds[0], &feds[1]).await;
    peer_via_cli(&feds[0], &feds[2]).await;
    peer_via_cli(&feds[1], &feds[2]).await;
    let mut members = Vec::new();
    for (fed, s) in feds.into_iter().zip(samples) {
        let gw = Gateway::start(&fed, "gw-1", gw_extra.clone()).await;
        members.push(Member {
            fed,
            gw,
            samples: s,
        });
    }
    for m in &members {
        for svc in ["echo.demo", "grpc-echo.demo", "tcp-echo.demo"] {
            m.gw.wait_import(svc).await;
        }
    }
    // Every cluster's gateway address must have reached every importer.
    for m in &members {
        m.fed
            .wait_catalog("peer gateways are known", |c| {
                super::route(c, "demo/echo")
                    .and_then(|r| r["clusters"].as_array())
                    .is_some_and(|cs| {
                        !cs.is_empty()
                            && cs
                                .iter()
                                .all(|c| c["gateways"].as_array().is_some_and(|g| !g.is_empty()))
                    })
            })
            .await;
    }
    members
}
