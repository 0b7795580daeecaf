//! Clusters in their own network namespaces, joined through a "WAN" router namespace, for
//! failover scenarios that need a real network: SIGKILLed processes whose sockets vanish,
//! black holes that drop packets without a RST, partitions between subnets.
//!
//! Topology of one [`Wan`] (`P` = `isfo-<short>-<pid>`, `b` = the test's base octet):
//!
//! ```text
//!   P-east  wan0 10.b.1.2/24 ──veth── v-east 10.b.1.1/24 ┐
//!   P-west  wan0 10.b.2.2/24 ──veth── v-west 10.b.2.1/24 ├─ P-wan (ip_forward, nft chain)
//!   P-south wan0 10.b.3.2/24 ──veth── v-south 10.b.3.1/24┘
//! ```
//!
//! Each cluster namespace has `lo` up (its sample backends listen on 127.0.0.10, its VIPs are
//! 127.<100+i>.0.0/24) and a default route via the WAN. In it run, through `ip netns exec`, a
//! federation (peering and gateway API on the veth address, which peers dial), a gateway (inbound
//! on the veth address; proxy, admin and VIP listeners on loopback) and `isthmus
//! sample-backends`. Ports are fixed: every namespace is empty when the WAN starts. The test
//! process stays in the host namespace: federations are reached over their admin Unix sockets,
//! gateways' admin ports with `ip netns exec … curl`.
//!
//! Faults are `nft` drop rules in the WAN namespace's forward chain (silent: no RST, no ICMP) and
//! signals to the processes; all are reversible. Needs root, `ip` (iproute2) and `nft`
//! (nftables): without them [`Wan::start`] panics with the reason — it never skips. Drop kills
//! every process in the namespaces and deletes them; namespaces left by a crashed earlier run of
//! the same test are removed at start. Logs live in a temp dir, removed on drop unless
//! `ISTHMUS_E2E_KEEP` is set; their tails are printed when a test fails.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

use super::federation::exe;

/// Ports inside every cluster namespace.
pub const FED_PEERING: u16 = 15010;
pub const FED_API: u16 = 15011;
pub const FED_ADMIN: u16 = 15012;
pub const GW_INBOUND: u16 = 15443;
pub const GW_PROXY: u16 = 15001;
pub const GW_ADMIN: u16 = 15021;
/// The sample backends' HTTP port on 127.0.0.10 (exported as `demo/echo` port 8080).
pub const SAMPLE_HTTP: u16 = 18080;
const SAMPLE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);

/// Unix time in milliseconds (the clock the client, the access logs and the test share).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs a command to completion; fails with its output.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) {
    run("ip", args).unwrap_or_else(|e| panic!("netns setup: {e:#}"));
}

/// `nft -f -` in namespace `ns`, with `script` on stdin.
fn nft(ns: &str, script: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `ip netns exec … nft` (install nftables)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft failed: {}\n--- script ---\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Kills every process in `ns` and deletes it (best effort: used on cleanup paths).
/// `curl` run inside namespace `ns`: `GET base+path`, with `params` URL-encoded into the query
/// (`-G`) when there are any; the body, or the error curl gave.
pub async fn curl_in(
    ns: &str,
    base: &str,
    path: &str,
    params: &[(&str, &str)],
) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "curl", "-sS", "--fail"])
        .args(["--max-time", "5"]);
    if !params.is_empty() {
        cmd.arg("-G");
    }
    for (k, v) in params {
        cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
    }
    let out = cmd
        .arg(format!("{base}{path}"))
        .output()
        .await
        .context("curl (apt-get install curl)")?;
    if !out.status.success() {
        bail!(
            "GET {path}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn remove_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid])
                .status();
        }
    }
    let _ = run("ip", &["netns", "del", ns]);
}

/// Fails loudly unless this process can create network namespaces and filter in them.
fn preflight() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "the failover e2e suite needs root (network namespaces, veth pairs, nft rules): run it \
         as root, e.g. in CI or with sudo -E; it never skips"
    );
    if let Err(e) = run("ip", &["netns", "list"]) {
        panic!("`ip netns` is unavailable ({e:#}): install iproute2");
    }
    if let Err(e) = run("nft", &["--version"]) {
        panic!("`nft` is unavailable ({e:#}): install nftables (apt-get install -y nftables)");
    }
}

/// One cluster of a [`Wan`]: its namespace, addresses and processes.
pub struct Node {
    pub name: &'static str,
    pub region: &'static str,
    pub ns: String,
    /// Its veth address (federation and gateway inbound listen here).
    pub addr: Ipv4Addr,
    /// `10.b.i.0/24`.
    pub subnet: String,
    /// 1-based position; its VIP range is 127.<100+index>.0.0/24.
    pub index: u8,
    pub dir: PathBuf,
    pub socket: PathBuf,
    fed: Option<Child>,
    gw: Option<Child>,
    samples: Option<Child>,
    /// PIDs of processes started in the namespace, killed on drop even if `Child`s moved away.
    started: Vec<u32>,
}

impl Node {
    fn log(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn log_tail(&self, file: &str, n: usize) -> String {
        let log = std::fs::read_to_string(self.log(file)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{}: {msg}\n--- federation.log ---\n{}\n--- gateway.log ---\n{}",
            self.name,
            self.log_tail("federation.log", 25),
            self.log_tail("gateway.log", 25)
        )
    }

    /// `ip netns exec <ns> isthmus …`, logging to the environment's filter.
    fn isthmus(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, exe()])
            .env("ISTHMUS_LOG_FORMAT", "plain")
            .env(
                "ISTHMUS_LOG",
                std::env::var("ISTHMUS_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Spawns `cmd` (stdout piped), waits for its first stdout line (the ready line), then keeps
    /// copying stdout into `sink`; stderr goes to `log`.
    async fn spawn(
        &mut self,
        mut cmd: Command,
        log: &str,
        sink: &str,
    ) -> anyhow::Result<(Child, Value)> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(log))?;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning `ip netns exec … isthmus`")?;
        if let Some(pid) = child.id() {
            self.started.push(pid);
        }
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("no ready line within 60 s")??
            .context("exited before it was ready")?;
        let ready: Value = serde_json::from_str(&line).with_context(|| format!("{line:?}"))?;
        let sink = self.log(sink);
        tokio::spawn(async move {
            let Ok(mut f) = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&sink)
                .await
            else {
                return;
            };
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = f.write_all(format!("{l}\n").as_bytes()).await;
                let _ = f.flush().await;
            }
        });
        Ok((child, ready))
    }

    async fn start_federation(&mut self, catalog: &str, extra: &Value) {
        let data = self.dir.join("data");
        if !self.dir.join("kek").exists() {
            let kek = isthmus_federation::identity::Kek::generate().expect("kek");
            super::write_private(&self.dir.join("kek"), kek.to_base64().as_bytes());
        }
        std::fs::write(self.dir.join("catalog.yaml"), catalog).expect("write catalog");
        let mut cfg = json!({
            "cluster": self.name,
            "region": self.region,
            "data_dir": data,
            "listen": {
                "peering": { "bind": format!("{}:{FED_PEERING}", self.addr) },
                "api": { "bind": format!("{}:{FED_API}", self.addr) },
                "admin": format!("127.0.0.1:{FED_ADMIN}"),
                "admin_socket": self.socket,
            },
            "vips": { "ipv4": format!("127.{}.0.0/24", 100 + u16::from(self.index)) },
            "catalog": { "file": self.dir.join("catalog.yaml"), "poll_interval": "200ms" },
            "ca": { "kek_file": self.dir.join("kek") },
            // Quick to notice a dead peer and to redial a healed one (defaults: 5 s, 20 s, 10 s).
            "peering": { "heartbeat": "1s", "silence_timeout": "5s", "reconnect_max_backoff": "2s" },
        });
        super::merge(&mut cfg, extra);
        let path = self.dir.join("federation.yaml");
        std::fs::write(&path, serde_json::to_string_pretty(&cfg).expect("json")).expect("config");
        let mut cmd = self.isthmus();
        cmd.args(["federation", "--config"]).arg(&path);
        match self.spawn(cmd, "federation.log", "federation.log").await {
            Ok((child, ready)) => {
                let want = format!("{}:{FED_PEERING}", self.addr);
                if ready["ready"]["peering"].as_str() != Some(want.as_str()) {
                    self.fail(&format!("unexpected ready line {ready}"));
                }
                self.fed = Some(child);
            }
            Err(e) => self.fail(&format!("federation start: {e:#}")),
        }
    }

    /// Runs the CLI against this federation's admin socket (from the host namespace); stdout.
    pub async fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(exe())
            .args(args)
            .arg("--admin-socket")
            .arg(&self.socket)
            .env_remove("RUST_BACKTRACE")
            .output()
            .await
            .expect("run the isthmus CLI");
        if !out.status.success() {
            self.fail(&format!(
                "`isthmus {}` failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn try_admin(&self, op: &str, body: Value) -> anyhow::Result<Value> {
        Ok(
            isthmus_federation::admin::admin_call(&self.socket, op, &body, Duration::from_secs(10))
                .await?,
        )
    }

    pub async fn catalog(&self) -> Value {
        match self.try_admin("catalog", Value::Null).await {
            Ok(v) => v,
            Err(e) => self.fail(&format!("admin catalog: {e:#}")),
        }
    }

    /// Replaces the catalog file atomically (the federation polls it every 200 ms).
    pub fn write_catalog(&self, text: &str) {
        let tmp = self.dir.join("catalog.yaml.tmp");
        std::fs::write(&tmp, text).expect("write catalog");
        std::fs::rename(&tmp, self.dir.join("catalog.yaml")).expect("rename catalog");
    }

    /// The VIP this cluster assigned to `ns/name`.
    pub async fn vip(&self, key: &str) -> Ipv4Addr {
        let catalog = self.catalog().await;
        super::route(&catalog, key)
            .and_then(|r| r["vips"]["v4"].as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| self.fail(&format!("no VIP for {key}: {catalog}")))
    }

    /// Bootstraps (again) and starts this cluster's gateway; `extra` is merged into its config.
    pub async fn start_gateway(&mut self, extra: &Value) {
        let bootstrap = self.dir.join("gateway-bootstrap.json");
        let _ = std::fs::remove_file(&bootstrap);
        self.cli(&[
            "gateway",
            "bootstrap",
            "--name",
            "gw-1",
            "--out",
            bootstrap.to_str().expect("utf-8 path"),
        ])
        .await;
        let mut cfg = json!({
            "bootstrap_file": bootstrap,
            "listen": {
                "inbound": { "bind": format!("{}:{GW_INBOUND}", self.addr) },
                "proxy": format!("127.0.0.1:{GW_PROXY}"),
                "admin": format!("127.0.0.1:{GW_ADMIN}"),
            },
            "registration_ttl": "3s",
            "drain_timeout": "5s",
        });
        super::merge(&mut cfg, extra);
        let path = self.dir.join("gateway.yaml");
        std::fs::write(&path, serde_json::to_string_pretty(&cfg).expect("json")).expect("config");
        let mut cmd = self.isthmus();
        cmd.args(["gateway", "run", "--config"]).arg(&path);
        match self.spawn(cmd, "gateway.log", "access.log").await {
            Ok((child, ready)) => {
                if ready["ready"]["inbound"].is_null() {
                    self.fail(&format!("unexpected gateway ready line {ready}"));
                }
                self.gw = Some(child);
            }
            Err(e) => self.fail(&format!("gateway start: {e:#}")),
        }
    }

    /// SIGKILLs the gateway (no drain); returns when it is gone.
    pub async fn kill9_gateway(&mut self) {
        let mut child = self.gw.take().unwrap_or_else(|| self.fail("no gateway"));
        let _ = child.start_kill();
        let _ = child.wait().await;
    }

    /// Sends `signal` (`STOP`, `CONT`) to the gateway: SIGSTOP hangs it with every socket open
    /// (the kernel still accepts connections and acknowledges bytes; nothing answers).
    pub fn signal_gateway(&self, signal: &str) {
        let pid = self
            .gw
            .as_ref()
            .and_then(Child::id)
            .unwrap_or_else(|| self.fail("no gateway"));
        run("kill", &[&format!("-{signal}"), &pid.to_string()])
            .unwrap_or_else(|e| self.fail(&format!("kill -{signal} the gateway: {e:#}")));
    }

    /// Starts `isthmus sample-backends` (HTTP on 127.0.0.10:18080) in this namespace.
    pub async fn start_backends(&mut self) {
        let mut cmd = self.isthmus();
        cmd.args(["sample-backends", "--cluster", self.name])
            .args(["--http", &format!("{SAMPLE_IP}:{SAMPLE_HTTP}")])
            .args(["--grpc", &format!("{SAMPLE_IP}:{}", SAMPLE_HTTP + 1)])
            .args(["--tcp", &format!("{SAMPLE_IP}:{}", SAMPLE_HTTP + 2)]);
        match self.spawn(cmd, "samples.log", "samples.log").await {
            Ok((child, _)) => self.samples = Some(child),
            Err(e) => self.fail(&format!("sample backends start: {e:#}")),
        }
    }

    /// SIGKILLs every backend of the sample services (the exports stay: the federation does
    /// not know they died).
    pub async fn kill_backends(&mut self) {
        let mut child = self
            .samples
            .take()
            .unwrap_or_else(|| self.fail("no backends"));
        let _ = child.start_kill();
        let _ = child.wait().await;
    }

    /// `GET path` on the gateway's admin port (from inside the namespace).
    pub async fn gateway_admin(&self, path: &str) -> anyhow::Result<String> {
        curl_in(&self.ns, &format!("http://127.0.0.1:{GW_ADMIN}"), path, &[]).await
    }

    /// Sum of the gateway's `/metrics` samples named `name` carrying every label in `labels`.
    pub async fn gateway_metric(&self, name: &str, labels: &[&str]) -> f64 {
        let body = self.gateway_admin("/metrics").await.unwrap_or_default();
        super::sum_metric(&body, name, labels)
    }

    /// Every access-log line the gateway (all its incarnations) wrote so far.
    pub fn access_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until the gateway routes `service` (`<svc>.<ns>`) through a VIP.
    pub async fn wait_import(&self, service: &str) {
        let deadline = tokio::time::Instant::now() + super::CONVERGE;
        loop {
            let dump = self.gateway_admin("/config_dump").await.unwrap_or_default();
            let dump: Value = serde_json::from_str(&dump).unwrap_or_default();
            let imports = dump["table"]["imports"].as_array();
            if imports.is_some_and(|i| i.iter().any(|i| i.as_str() == Some(service))) {
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

    /// Polls this federation's catalog until `check` holds or `timeout` passes; returns how long
    /// it took, or `None` (with the last catalog seen) on timeout.
    pub async fn wait_catalog(
        &self,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Duration, Value> {
        let started = tokio::time::Instant::now();
        loop {
            let c = self
                .try_admin("catalog", Value::Null)
                .await
                .unwrap_or_default();
            if check(&c) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(c);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The catalog of a serving cluster: `demo/echo` (http, port 8080) on its sample backends,
/// plus `extra` export items; imports everything.
pub fn echo_catalog(extra: &str) -> String {
    format!(
        "exports:\n\
         \x20 - namespace: demo\n    name: echo\n    ports: [{{port: 8080, protocol: http}}]\n    endpoints: [{{address: \"{SAMPLE_IP}:{SAMPLE_HTTP}\"}}]\n\
         {extra}{}",
        super::IMPORT_ALL
    )
}

/// A client-only cluster: exports `extra` (may be empty), imports everything.
pub fn client_catalog(extra: &str) -> String {
    if extra.is_empty() {
        format!("exports: []\n{}", super::IMPORT_ALL)
    } else {
        format!("exports:\n{extra}{}", super::IMPORT_ALL)
    }
}

/// What a cluster of the WAN is: name, region, whether it runs the sample backends and
/// exports `demo/echo`.
pub struct ClusterSpec {
    pub name: &'static str,
    pub region: &'static str,
    pub serves: bool,
}

/// One nft drop rule with the tag that removes it.
struct Rule {
    tag: String,
    text: String,
}

/// The network, its clusters and their processes; see the module docs.
pub struct Wan {
    prefix: String,
    router: String,
    pub nodes: Vec<Node>,
    rules: Vec<Rule>,
    _tmp: tempfile::TempDir,
}

impl Wan {
    /// Builds the namespaces (removing stale ones of an earlier crashed run of `short`), starts a
    /// federation, a gateway and (for serving clusters) the sample backends in each, peers every
    /// pair through the CLI and waits until every gateway routes `demo/echo`. `base` picks the
    /// 10.<base>.0.0/16 addresses. `fed_extra`/`gw_extra` are merged into every config.
    pub async fn start(
        short: &str,
        base: u8,
        clusters: &[ClusterSpec],
        fed_extra: Value,
        gw_extra: Value,
    ) -> Wan {
        preflight();
        let stale = format!("isfo-{short}-");
        for ns in run("ip", &["netns", "list"]).unwrap_or_default().lines() {
            let ns = ns.split_whitespace().next().unwrap_or("");
            let Some(rest) = ns.strip_prefix(&stale) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("removing stale namespace {ns} of an earlier run");
                remove_namespace(ns);
            }
        }
        let prefix = format!("isfo-{short}-{}", std::process::id());
        let tmp = tempfile::Builder::new()
            .prefix(&format!("isthmus-failover-{short}-"))
            .tempdir()
            .expect("temp dir");
        let router = format!("{prefix}-wan");
        let mut wan = Wan {
            prefix: prefix.clone(),
            router: router.clone(),
            nodes: Vec::new(),
            rules: Vec::new(),
            _tmp: tmp,
        };
        ip(&["netns", "add", &router]);
        ip(&["-n", &router, "link", "set", "lo", "up"]);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )
        .unwrap_or_else(|e| panic!("enabling forwarding in the WAN namespace: {e:#}"));
        nft(
            &router,
            "table inet isthmus {\n  chain wan {\n    type filter hook forward priority 0; policy accept;\n  }\n}\n",
        )
        .unwrap_or_else(|e| panic!("creating the WAN's filter chain: {e:#}"));
        for (i, spec) in clusters.iter().enumerate() {
            let index = u8::try_from(i + 1).expect("few clusters");
            let ns = format!("{prefix}-{}", spec.name);
            let veth = format!("v-{}", spec.name);
            assert!(veth.len() <= 15, "interface name {veth} longer than 15");
            let (addr, gw) = (
                Ipv4Addr::new(10, base, index, 2),
                Ipv4Addr::new(10, base, index, 1),
            );
            ip(&["netns", "add", &ns]);
            let dir = wan._tmp.path().join(spec.name);
            std::fs::create_dir_all(&dir).expect("node dir");
            wan.nodes.push(Node {
                name: spec.name,
                region: spec.region,
                ns: ns.clone(),
                addr,
                subnet: format!("10.{base}.{index}.0/24"),
                index,
                socket: dir.join("admin.sock"),
                dir,
                fed: None,
                gw: None,
                samples: None,
                started: Vec::new(),
            });
            ip(&[
                "link", "add", "wan0", "netns", &ns, "type", "veth", "peer", "name", &veth,
                "netns", &router,
            ]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "wan0",
            ]);
            ip(&["-n", &ns, "link", "set", "wan0", "up"]);
            ip(&["-n", &ns, "route", "add", "default", "via", &gw.to_string()]);
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{gw}/24"),
                "dev",
                &veth,
            ]);
            ip(&["-n", &router, "link", "set", &veth, "up"]);
        }
        eprintln!(
            "WAN {prefix}: {} (logs under {})",
            wan.nodes
                .iter()
                .map(|n| format!("{}={}({})", n.name, n.addr, n.region))
                .collect::<Vec<_>>()
                .join(" "),
            wan._tmp.path().display()
        );
        for (node, spec) in wan.nodes.iter_mut().zip(clusters) {
            let catalog = if spec.serves {
                node.start_backends().await;
                echo_catalog("")
            } else {
                client_catalog("")
            };
            node.start_federation(&catalog, &fed_extra).await;
        }
        for a in 0..wan.nodes.len() {
            for b in a + 1..wan.nodes.len() {
                let (na, nb) = (&wan.nodes[a], &wan.nodes[b]);
                let token = na.cli(&["peering", "token", "--peer", nb.name]).await;
                nb.cli(&["peering", "establish", token.trim()]).await;
            }
        }
        for node in &mut wan.nodes {
            node.start_gateway(&gw_extra).await;
        }
        for node in &wan.nodes {
            node.wait_import("echo.demo").await;
        }
        let servers = clusters.iter().filter(|c| c.serves).count();
        for node in &wan.nodes {
            let known = node
                .wait_catalog(super::CONVERGE, |c| echo_gateways(c) == servers)
                .await;
            if let Err(c) = known {
                node.fail(&format!(
                    "demo/echo with gateways of {servers} clusters never appeared:\n{}",
                    super::summarize(&c)
                ));
            }
        }
        wan
    }

    /// The WAN router's namespace: it reaches every cluster's veth address.
    pub fn router(&self) -> &str {
        &self.router
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no cluster {name} in the WAN"))
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no cluster {name} in the WAN"))
    }

    fn apply_rules(&self) {
        let mut script = String::from("flush chain inet isthmus wan\n");
        for r in &self.rules {
            script.push_str(&format!("add rule inet isthmus wan {}\n", r.text));
        }
        nft(&self.router, &script).unwrap_or_else(|e| panic!("updating WAN rules: {e:#}"));
    }

    /// Drops every packet to and from `name` in the WAN: no RST, no ICMP, just silence.
    pub fn blackhole(&mut self, name: &str) {
        let subnet = self.node(name).subnet.clone();
        for text in [
            format!("ip saddr {subnet} drop"),
            format!("ip daddr {subnet} drop"),
        ] {
            self.rules.push(Rule {
                tag: name.to_string(),
                text,
            });
        }
        self.apply_rules();
    }

    /// Drops packets between `name` and `peer` (both directions), or between `name` and every
    /// other cluster when `peer` is `None`.
    pub fn partition(&mut self, name: &str, peer: Option<&str>) {
        let a = self.node(name).subnet.clone();
        let peers: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.name != name && peer.is_none_or(|p| p == n.name))
            .map(|n| n.subnet.clone())
            .collect();
        assert!(
            !peers.is_empty(),
            "no peer {peer:?} to partition {name} from"
        );
        for b in peers {
            for text in [
                format!("ip saddr {a} ip daddr {b} drop"),
                format!("ip saddr {b} ip daddr {a} drop"),
            ] {
                self.rules.push(Rule {
                    tag: name.to_string(),
                    text,
                });
            }
        }
        self.apply_rules();
    }

    /// Removes every black hole and partition placed on `name`.
    pub fn heal(&mut self, name: &str) {
        self.rules.retain(|r| r.tag != name);
        self.apply_rules();
    }

    /// Starts `isthmus sample-client` in `name`'s namespace: open-loop `GET url` at `rate` per
    /// second for `seconds`; its lines are collected as they arrive.
    pub async fn client(
        &mut self,
        name: &str,
        url: &str,
        rate: u32,
        seconds: u32,
        timeout_ms: u64,
    ) -> Load {
        let node = self.node_mut(name);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.ns, exe()]);
        let load = Load::start(cmd, &["--url", url], rate, seconds, timeout_ms).await;
        if let Some(pid) = load.child.id() {
            node.started.push(pid);
        }
        load
    }
}

/// How many clusters' gateways serve `demo/echo` in a catalog dump.
pub fn echo_gateways(catalog: &Value) -> usize {
    super::route(catalog, "demo/echo")
        .and_then(|r| r["clusters"].as_array())
        .map_or(0, |cs| {
            cs.iter()
                .filter(|c| c["gateways"].as_array().is_some_and(|g| !g.is_empty()))
                .count()
        })
}

impl Drop for Wan {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("WAN {} failed; log tails:", self.prefix);
            for n in &self.nodes {
                eprintln!(
                    "\n===== {} ({}) federation.log =====\n{}\n===== {} gateway.log =====\n{}\n",
                    n.name,
                    n.dir.display(),
                    n.log_tail("federation.log", 30),
                    n.name,
                    n.log_tail("gateway.log", 30)
                );
            }
        }
        for n in &mut self.nodes {
            for child in [n.fed.as_mut(), n.gw.as_mut(), n.samples.as_mut()]
                .into_iter()
                .flatten()
            {
                let _ = child.start_kill();
            }
            for pid in &n.started {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            remove_namespace(&n.ns);
        }
        remove_namespace(&self.router);
        if std::env::var_os("ISTHMUS_E2E_KEEP").is_some() {
            let dir = std::mem::replace(&mut self._tmp, tempfile::tempdir().expect("temp dir"));
            eprintln!("ISTHMUS_E2E_KEEP: logs kept in {}", dir.keep().display());
        }
    }
}

/// One completed request of the sample client.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, Unix milliseconds.
    pub at_ms: f64,
    /// 0 when no response arrived.
    pub status: u16,
    pub cluster: Option<String>,
    pub latency_ms: f64,
    pub error: Option<String>,
}

impl Sample {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Default)]
struct LoadState {
    started_unix_ms: u64,
    samples: Vec<Sample>,
    done: Option<Value>,
}

/// A running `isthmus sample-client`.
pub struct Load {
    child: Child,
    state: Arc<Mutex<LoadState>>,
    reader: tokio::task::JoinHandle<()>,
    limit: Duration,
}

impl Load {
    /// Runs `isthmus sample-client` through `launcher` (the binary itself, or a wrapper such as
    /// `ip netns exec <ns> <binary>`) with `args` (`--url …`, optionally `--proxy …`): open-loop
    /// requests at `rate` per second for `seconds`, collected as they arrive. Returns once the
    /// client printed its start line.
    pub async fn start(
        mut launcher: Command,
        args: &[&str],
        rate: u32,
        seconds: u32,
        timeout_ms: u64,
    ) -> Load {
        launcher
            .arg("sample-client")
            .args(args)
            .args(["--rate", &rate.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .args(["--timeout-ms", &timeout_ms.to_string()])
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = launcher.spawn().expect("spawn isthmus sample-client");
        let state = Arc::new(Mutex::new(LoadState::default()));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let s = state.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let v: Value = serde_json::from_str(&l).unwrap_or_default();
                let mut st = s.lock().expect("load state");
                if let Some(ms) = v["started"]["unix_ms"].as_u64() {
                    st.started_unix_ms = ms;
                } else if v.get("t_ms").is_some() {
                    let at_ms = st.started_unix_ms as f64 + v["t_ms"].as_f64().unwrap_or(0.0);
                    st.samples.push(Sample {
                        at_ms,
                        status: v["status"].as_u64().unwrap_or(0) as u16,
                        cluster: v["cluster"].as_str().map(str::to_string),
                        latency_ms: v["latency_ms"].as_f64().unwrap_or(0.0),
                        error: v["error"].as_str().map(str::to_string),
                    });
                } else if v.get("done").is_some() {
                    st.done = Some(v["done"].clone());
                }
            }
        });
        // Wait for the client's start line so callers can schedule faults against it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while state.lock().expect("load state").started_unix_ms == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "sample-client printed no start line within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Load {
            child,
            state,
            reader,
            limit: Duration::from_secs(u64::from(seconds)) + Duration::from_millis(timeout_ms),
        }
    }

    /// Waits for the client to finish; every request, sorted by send time.
    pub async fn finish(mut self) -> Vec<Sample> {
        let limit = self.limit + Duration::from_secs(30);
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(s)) if s.success() => {}
            other => {
                let _ = self.child.start_kill();
                panic!("sample-client did not finish cleanly within {limit:?}: {other:?}");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        let st = self.state.lock().expect("load state");
        let sent = st.done.as_ref().and_then(|d| d["sent"].as_u64());
        assert_eq!(
            sent,
            Some(st.samples.len() as u64),
            "the client reported every request it sent"
        );
        let mut samples = st.samples.clone();
        samples.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
        samples
    }
}
