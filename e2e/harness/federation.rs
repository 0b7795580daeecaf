//! One `isthmus federation` process: its config, KEK and catalog file in a temp dir, its log in a
//! file (the tail is printed when a test fails), and fixed loopback ports chosen up front so that
//! a restarted federation is still where its peers dial it.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

/// Where a federation keeps its state.
#[derive(Clone, Debug)]
pub enum Backend {
    Embedded,
    /// etcd client URLs, comma-separated (all members of one cluster); each cluster gets its
    /// own prefix.
    Etcd(String),
}

/// What differs between federations in a scenario.
pub struct Spec {
    pub name: &'static str,
    /// Picks the loopback address 127.0.<index>.1 and the VIP range 127.<100+index>.0.0/24.
    /// Unique per running federation across the whole test binary.
    pub index: u8,
    pub backend: Backend,
    /// Merged over the generated config (top-level keys replace).
    pub extra: Value,
    pub catalog: String,
}

impl Spec {
    pub fn new(name: &'static str, index: u8) -> Self {
        Spec {
            name,
            index,
            backend: Backend::Embedded,
            extra: json!({}),
            catalog: String::new(),
        }
    }

    pub fn backend(mut self, backend: &Backend) -> Self {
        self.backend = backend.clone();
        self
    }

    pub fn extra(mut self, extra: Value) -> Self {
        self.extra = extra;
        self
    }

    pub fn catalog(mut self, text: &str) -> Self {
        self.catalog = text.to_string();
        self
    }
}

pub struct Federation {
    pub name: &'static str,
    pub dir: PathBuf,
    pub peering: SocketAddr,
    pub api: SocketAddr,
    pub admin_http: SocketAddr,
    pub socket: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

/// `N` distinct loopback ports nobody listens on right now, on `ip`. Every listener is held until
/// all are chosen: released one by one, the kernel may hand the same port out twice.
pub fn free_ports<const N: usize>(ip: Ipv4Addr) -> [SocketAddr; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((ip, 0)).expect("bind a free loopback port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local addr"))
}

pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_isthmus")
}

impl Federation {
    pub async fn start(spec: Spec) -> Federation {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("isthmus-e2e-{}-", spec.name))
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let ip = Ipv4Addr::new(127, 0, spec.index, 1);
        let [peering, api, admin_http] = free_ports(ip);
        let kek = isthmus_federation::identity::Kek::generate().expect("kek");
        super::write_private(&dir.join("kek"), kek.to_base64().as_bytes());
        let catalog_path = dir.join("catalog.yaml");
        std::fs::write(&catalog_path, &spec.catalog).expect("write catalog");
        let mut cfg = json!({
            "cluster": spec.name,
            "region": format!("region-{}", spec.name),
            "data_dir": dir.join("data"),
            "listen": {
                "peering": { "bind": peering.to_string() },
                "api": { "bind": api.to_string() },
                "admin": admin_http.to_string(),
                "admin_socket": dir.join("admin.sock"),
            },
            "vips": { "ipv4": format!("127.{}.0.0/24", 100 + u16::from(spec.index)) },
            "catalog": { "file": catalog_path, "poll_interval": "200ms" },
            "ca": { "kek_file": dir.join("kek") },
        });
        if let Backend::Etcd(endpoint) = &spec.backend {
            cfg["store"] = json!({
                "backend": "etcd",
                "endpoints": endpoint.split(',').collect::<Vec<_>>(),
                "prefix": format!("/isthmus/{}/", spec.name),
            });
        }
        super::merge(&mut cfg, &spec.extra);
        let config_path = dir.join("federation.yaml");
        std::fs::write(
            &config_path,
            serde_json::to_string_pretty(&cfg).expect("config json"),
        )
        .expect("write config");
        let mut fed = Federation {
            name: spec.name,
            log_path: dir.join("federation.log"),
            socket: dir.join("admin.sock"),
            dir,
            peering,
            api,
            admin_http,
            config_path,
            child: None,
            _tmp: tmp,
        };
        fed.spawn()
            .await
            .unwrap_or_else(|e| fed.fail(&format!("start: {e:#}")));
        fed
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        writeln!(log, "===== e2e: starting {} =====", self.name)?;
        let mut child = Command::new(exe())
            .args(["federation", "--config"])
            .arg(&self.config_path)
            .env("ISTHMUS_LOG_FORMAT", "plain")
            .env(
                "ISTHMUS_LOG",
                std::env::var("ISTHMUS_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone()?))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", exe()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("no ready line within 30 s")??
            .context("the federation exited before it was ready")?;
        let ready: Value = serde_json::from_str(&line).with_context(|| format!("{line:?}"))?;
        if ready["ready"]["peering"].as_str() != Some(self.peering.to_string().as_str()) {
            bail!("unexpected ready line {ready}");
        }
        // Keep draining stdout into the log so a later print never hits a closed pipe.
        let log_path = self.log_path.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Ok(mut f) = tokio::fs::OpenOptions::new()
                    .append(true)
                    .open(&log_path)
                    .await
                {
                    let _ = f.write_all(format!("[stdout] {l}\n").as_bytes()).await;
                }
            }
        });
        self.child = Some(child);
        Ok(())
    }

    /// Fails the test with a message and the log tail.
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{}: {msg}\n--- last lines of {} ---\n{}",
            self.name,
            self.log_path.display(),
            self.log_tail(40)
        )
    }

    /// Between honest peers no catalog update is ever refused (a refusal loop burns CPU and
    /// floods the log while the views look converged).
    pub fn assert_no_refused_updates(&self) {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let refused = log
            .lines()
            .filter(|l| l.contains("refused a catalog update from a peer"))
            .count();
        if refused > 0 {
            self.fail(&format!(
                "refused {refused} catalog updates from honest peers"
            ));
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A state-changing or read admin operation over the admin socket.
    pub async fn try_admin(&self, op: &str, body: Value) -> anyhow::Result<Value> {
        Ok(
            isthmus_federation::admin::admin_call(&self.socket, op, &body, Duration::from_secs(20))
                .await?,
        )
    }

    /// Like [`Self::try_admin`], failing the test on error.
    pub async fn admin(&self, op: &str, body: Value) -> Value {
        match self.try_admin(op, body.clone()).await {
            Ok(v) => v,
            Err(e) => self.fail(&format!("admin {op} {body}: {e:#}")),
        }
    }

    /// Runs the real CLI against this federation: `(success, stdout, stderr)`.
    pub async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(exe())
            .args(args)
            .arg("--admin-socket")
            .arg(&self.socket)
            .env_remove("RUST_BACKTRACE")
            .output()
            .await
            .expect("run the isthmus CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Like [`Self::cli`], failing the test unless it succeeds; returns stdout.
    pub async fn cli_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args).await;
        if !ok {
            self.fail(&format!("`isthmus {}` failed: {err}{out}", args.join(" ")));
        }
        out
    }

    /// Replaces the catalog file atomically (write + rename, so the poller never reads half).
    pub fn write_catalog(&self, text: &str) {
        let tmp = self.dir.join("catalog.yaml.tmp");
        std::fs::write(&tmp, text).expect("write catalog");
        std::fs::rename(&tmp, self.dir.join("catalog.yaml")).expect("rename catalog");
    }

    pub async fn catalog(&self) -> Value {
        self.admin("catalog", Value::Null).await
    }

    /// SIGTERM and wait (≤ 15 s) for a graceful exit.
    pub async fn sigterm(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(status) => self.fail(&format!("exited badly after SIGTERM: {status:?}")),
            Err(_) => self.fail("did not exit within 15 s of SIGTERM"),
        }
    }

    /// SIGKILL, no shutdown.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts again with the same config and data dir (and so the same ports).
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9().await;
        }
        if let Err(e) = self.spawn().await {
            self.fail(&format!("restart: {e:#}"));
        }
    }

    /// Polls `probe` (every 200 ms) until it returns `Ok(true)`; on timeout fails with `what`,
    /// the last state the probe saw, and the log tail.
    pub async fn wait_until<F, Fut>(&self, what: &str, timeout: Duration, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = (bool, String)>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (done, seen) = probe().await;
            if done {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                self.fail(&format!(
                    "timed out after {timeout:?} waiting until {what}; last seen:\n{seen}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `check` holds for this federation's `catalog`.
    pub async fn wait_catalog(&self, what: &str, check: impl Fn(&Value) -> bool) {
        let check = &check;
        self.wait_until(what, super::CONVERGE, || async move {
            match self.try_admin("catalog", Value::Null).await {
                Ok(c) => (check(&c), super::summarize(&c)),
                Err(e) => (false, format!("admin error: {e:#}")),
            }
        })
        .await;
    }

    /// Waits until this federation's link to each of `peers` is connected.
    pub async fn wait_connected(&self, peers: &[&str]) {
        self.wait_until(
            &format!("{} is connected to {peers:?}", self.name),
            super::CONVERGE,
            || async move {
                match self.try_admin("peering.list", Value::Null).await {
                    Ok(v) => {
                        let ok = peers
                            .iter()
                            .all(|p| super::peer_state(&v, p) == "connected");
                        (ok, v.to_string())
                    }
                    Err(e) => (false, format!("admin error: {e:#}")),
                }
            },
        )
        .await;
    }

    /// A `GET` on the read-only admin HTTP port; returns the body.
    pub async fn http_get(&self, path: &str) -> anyhow::Result<String> {
        use tokio::io::AsyncReadExt as _;
        let mut s = tokio::net::TcpStream::connect(self.admin_http).await?;
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.admin_http
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf)).await??;
        let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {head}");
        }
        Ok(body.to_string())
    }

    /// The value of a counter/gauge line in `/metrics` (names starting with `name`, carrying
    /// every label in `labels`); 0 when absent.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let body = match self.http_get("/metrics").await {
            Ok(b) => b,
            Err(e) => self.fail(&format!("GET /metrics: {e:#}")),
        };
        super::sum_metric(&body, name, labels)
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n===== {} ({}) log tail =====\n{}\n",
                self.name,
                self.dir.display(),
                self.log_tail(40)
            );
        }
    }
}
