//! `isthmus demo`: three clusters (east, west, south) on loopback with the embedded store, each
//! a federation and a gateway as separate processes, peered with tokens and bootstrapped exactly
//! as an operator would. West and south run the sample services (`isthmus sample-backends`: an
//! HTTP echo that names its cluster, a gRPC echo, a TCP echo) and export them; east imports
//! them. The demo calls them from east through the real listeners and the real mTLS links,
//! shows the access-log lines both gateways wrote, prints commands to try, and runs until
//! Ctrl-C (or exits after the tour with --exit).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

struct Cluster {
    name: &'static str,
    region: &'static str,
    index: u8,
    dir: PathBuf,
    socket: PathBuf,
    federation: Child,
    ready: Value,
    gateway: Option<Gateway>,
    samples: Option<Child>,
}

struct Gateway {
    child: Child,
    proxy: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
    access_log: PathBuf,
}

const CLUSTERS: [(&str, &str, u8); 3] = [
    ("east", "us-east", 1),
    ("west", "us-west", 2),
    ("south", "sa-east", 3),
];

/// Where a cluster's sample services listen (west and south run them).
fn sample_addrs(index: u8) -> (SocketAddr, SocketAddr, SocketAddr) {
    let ip = std::net::Ipv4Addr::new(127, 0, index, 10);
    (
        SocketAddr::from((ip, 8080)),
        SocketAddr::from((ip, 50051)),
        SocketAddr::from((ip, 9000)),
    )
}

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
        // Global DNS for mesh names on the cluster's loopback address (port printed when ready).
        "dns": { "bind": format!("127.0.{index}.1:0") },
    })
}

/// West and south export the samples; every cluster imports the `demo` namespace from every
/// peer (imports are opt-in).
fn catalog(index: u8, exports: bool) -> String {
    let imports = "imports:\n  - peer: \"*\"\n    namespaces: [demo]\n";
    if !exports {
        return format!("exports: []\n{imports}");
    }
    let (http, grpc, tcp) = sample_addrs(index);
    format!(
        "exports:\n\
         \x20 - namespace: demo\n    name: echo\n    ports: [{{port: 8080, protocol: http}}]\n    endpoints: [{{address: \"{http}\"}}]\n\
         \x20 - namespace: demo\n    name: grpc-echo\n    ports: [{{port: 50051, protocol: grpc}}]\n    endpoints: [{{address: \"{grpc}\"}}]\n\
         \x20 - namespace: demo\n    name: tcp-echo\n    ports: [{{port: 9000, protocol: tcp}}]\n    endpoints: [{{address: \"{tcp}\"}}]\n\
         {imports}"
    )
}

async fn admin(socket: &Path, op: &str, body: Value) -> anyhow::Result<Value> {
    Ok(isthmus_federation::admin::admin_call(socket, op, &body, Duration::from_secs(20)).await?)
}

/// Spawns `exe args...`, logs stderr to `log`, and returns the child with its first stdout line
/// (every Isthmus process prints one JSON "ready" line); the rest of stdout goes to `rest`.
async fn spawn_ready(
    exe: &Path,
    args: &[&str],
    log: &Path,
    rest: &Path,
    what: &str,
) -> anyhow::Result<(Child, Value)> {
    let stderr = std::fs::File::create(log)?;
    let mut child = Command::new(exe)
        .args(args)
        .env("ISTHMUS_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(40), lines.next_line())
        .await
        .with_context(|| format!("{what} did not start within 40s: see {}", log.display()))??
        .with_context(|| format!("{what} exited: see {}", log.display()))?;
    let ready: Value = serde_json::from_str(&line).with_context(|| format!("{what}: {line}"))?;
    let rest = rest.to_path_buf();
    tokio::spawn(async move {
        let Ok(mut f) = tokio::fs::File::create(&rest).await else {
            return;
        };
        while let Ok(Some(l)) = lines.next_line().await {
            let _ = f.write_all(format!("{l}\n").as_bytes()).await;
            let _ = f.flush().await;
        }
    });
    Ok((child, ready))
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
    let runs_samples = name != "east";
    let samples = if runs_samples {
        let (http, grpc, tcp) = sample_addrs(index);
        let (child, _) = spawn_ready(
            exe,
            &[
                "sample-backends",
                "--cluster",
                name,
                "--http",
                &http.to_string(),
                "--grpc",
                &grpc.to_string(),
                "--tcp",
                &tcp.to_string(),
            ],
            &dir.join("samples.log"),
            &dir.join("samples.out"),
            &format!("{name}'s sample services"),
        )
        .await?;
        Some(child)
    } else {
        None
    };
    let kek = isthmus_federation::identity::Kek::generate()?;
    crate::admin_cmd::write_private(&dir.join("kek"), kek.to_base64().as_bytes())?;
    std::fs::write(dir.join("catalog.yaml"), catalog(index, runs_samples))?;
    let cfg_path = dir.join("federation.yaml");
    // JSON is YAML: the config file is written with serde_json.
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&config(name, region, index, &dir))?,
    )?;
    let (federation, ready) = spawn_ready(
        exe,
        &["federation", "--config", &cfg_path.to_string_lossy()],
        &dir.join("federation.log"),
        &dir.join("federation.out"),
        &format!("{name}'s federation"),
    )
    .await?;
    let socket = PathBuf::from(ready["ready"]["admin_socket"].as_str().unwrap_or_default());
    Ok(Cluster {
        name,
        region,
        index,
        dir,
        socket,
        federation,
        ready,
        gateway: None,
        samples,
    })
}

/// Bootstraps and starts the cluster's gateway, as `isthmus gateway bootstrap` and
/// `isthmus gateway run` would.
async fn start_gateway(exe: &Path, c: &mut Cluster) -> anyhow::Result<()> {
    let file = admin(&c.socket, "gateway.bootstrap", json!({ "name": "gw-1" })).await?;
    let bootstrap = c.dir.join("gateway-bootstrap.json");
    crate::admin_cmd::write_private(&bootstrap, serde_json::to_string_pretty(&file)?.as_bytes())?;
    let ip = format!("127.0.{}.1", c.index);
    let cfg = json!({
        "bootstrap_file": bootstrap,
        "listen": {
            "inbound": { "bind": format!("{ip}:0") },
            "proxy": format!("{ip}:0"),
            "admin": format!("{ip}:0"),
        },
        "access_log": true,
    });
    let cfg_path = c.dir.join("gateway.yaml");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)?)?;
    let access_log = c.dir.join("gateway-access.log");
    let (child, ready) = spawn_ready(
        exe,
        &["gateway", "run", "--config", &cfg_path.to_string_lossy()],
        &c.dir.join("gateway.log"),
        &access_log,
        &format!("{}'s gateway", c.name),
    )
    .await?;
    let addr = |k: &str| -> anyhow::Result<SocketAddr> {
        ready["ready"][k]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("gateway ready line without {k}: {ready}"))
    };
    c.gateway = Some(Gateway {
        proxy: addr("proxy")?,
        inbound: addr("inbound")?,
        admin: addr("admin")?,
        child,
        access_log,
    });
    Ok(())
}

/// One HTTP/1.1 exchange on a fresh connection; returns the status line and the body.
async fn http1(addr: SocketAddr, request: String) -> anyhow::Result<(String, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf)).await??;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// A gRPC unary call `isthmus.demo.Echo/Say` over h2c: returns the reply text.
async fn grpc_say(addr: SocketAddr, text: &str) -> anyhow::Result<String> {
    use http_body_util::{BodyExt as _, Full};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await?;
    tokio::spawn(conn);
    let msg = [&[0x0a, u8::try_from(text.len())?][..], text.as_bytes()].concat();
    let frame = [&[0u8][..], &u32::try_from(msg.len())?.to_be_bytes(), &msg].concat();
    let req = hyper::Request::post(format!("http://{addr}/isthmus.demo.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(bytes::Bytes::from(frame)))?;
    let response = sender.send_request(req).await?;
    let collected = response.into_body().collect().await?;
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing")
        .to_string();
    let bytes = collected.to_bytes();
    if status != "0" {
        bail!("grpc-status {status}");
    }
    // 5-byte frame header, then field 1 (tag, length, text).
    Ok(String::from_utf8_lossy(bytes.get(7..).unwrap_or_default()).into_owned())
}

async fn tcp_echo(addr: SocketAddr, text: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(text.as_bytes()).await?;
    s.shutdown().await?;
    let mut back = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut back)).await??;
    Ok(back)
}

/// One A query over UDP (no EDNS): the first address of the answer.
async fn dns_a(server: SocketAddr, name: &str) -> anyhow::Result<std::net::Ipv4Addr> {
    let mut q = vec![0x1d, 0x5a, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(u8::try_from(label.len())?);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = tokio::net::UdpSocket::bind((server.ip(), 0)).await?;
    sock.send_to(&q, server).await?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .context("no DNS answer within 5s")??;
    let r = &buf[..n];
    // Header, the question echoed, then one answer: a 2-byte name pointer, type, class, TTL,
    // rdlength, 4 address bytes.
    if n < 12 {
        bail!("a short DNS answer for {name}");
    }
    let answers = u16::from_be_bytes([r[6], r[7]]);
    let at = q.len() + 12;
    if answers == 0 || n < at + 4 {
        bail!(
            "no A record for {name} (rcode {})",
            r.get(3).map_or(0, |b| b & 0xF)
        );
    }
    Ok(std::net::Ipv4Addr::new(
        r[at],
        r[at + 1],
        r[at + 2],
        r[at + 3],
    ))
}

/// The VIP east's federation assigned to `key`.
async fn vip(c: &Cluster, key: &str) -> anyhow::Result<String> {
    let view = admin(&c.socket, "catalog", json!(null)).await?;
    view["routes"][key]["vips"]["v4"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no VIP for {key} in {}'s catalog", c.name))
}

pub async fn run(dir: Option<PathBuf>, exit: bool) -> anyhow::Result<()> {
    // Signals are taken over first: SIGTERM (timeout, systemd, most supervisors), SIGHUP and
    // Ctrl-C all stop every child process and, unless --dir named it, remove the data directory.
    let mut signals = StopSignals::new()?;
    let exe = std::env::current_exe().context("locating the isthmus binary")?;
    let owned = dir.is_none();
    let root = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("isthmus-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&root)?;
    println!(
        "Isthmus demo: three clusters on loopback, data under {}",
        root.display()
    );
    // A signal while starting drops the start: every child started so far is killed with it
    // (kill_on_drop).
    let mut failed = false;
    let started = tokio::select! {
        started = start_all(&exe, &root) => {
            failed = started.is_err();
            started
        }
        signal = signals.next() => {
            println!("{signal}: stopping what was started");
            Err(anyhow::anyhow!("stopped by {signal} while starting"))
        }
    };
    let result = match started {
        Ok(clusters) => {
            if !exit {
                println!("\nCtrl-C (or SIGTERM, SIGHUP) stops all three clusters.");
                let signal = signals.next().await;
                println!("{signal}: stopping all three clusters");
            }
            stop(clusters).await
        }
        Err(e) => Err(e),
    };
    // A demo that failed to start keeps its directory: its logs say why.
    if owned && !failed {
        match std::fs::remove_dir_all(&root) {
            Ok(()) => println!("removed {}", root.display()),
            Err(e) => eprintln!("could not remove {}: {e}", root.display()),
        }
    }
    result
}

/// The demo's own stop signals: SIGINT, SIGTERM and SIGHUP.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        })
    }

    /// The name of the next stop signal.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// Starts the three clusters, peers them, starts their gateways, shows calls across them and
/// prints what to try; returns them running.
async fn start_all(exe: &std::path::Path, root: &std::path::Path) -> anyhow::Result<Vec<Cluster>> {
    let mut clusters = Vec::new();
    for (name, region, index) in CLUSTERS {
        let c = start(exe, root, name, region, index).await?;
        println!(
            "  started {:<5} ({}) federation: peering {}, admin http://{}{}",
            c.name,
            c.region,
            c.ready["ready"]["peering"],
            c.ready["ready"]["admin"].as_str().unwrap_or("?"),
            if c.samples.is_some() {
                "; sample services: HTTP echo, gRPC echo, TCP echo"
            } else {
                ""
            }
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
    for c in &mut clusters {
        start_gateway(exe, c).await?;
        if let Some(g) = &c.gateway {
            println!(
                "  gateway {:<5} inbound (mTLS, for peers) {}  proxy {}  admin http://{}",
                c.name, g.inbound, g.proxy, g.admin
            );
        }
    }
    // Converged: east routes every sample service to both west and south, through their
    // gateways.
    let started = tokio::time::Instant::now();
    loop {
        let view = admin(&clusters[0].socket, "catalog", json!(null)).await?;
        let ready = ["demo/echo", "demo/grpc-echo", "demo/tcp-echo"]
            .iter()
            .all(|key| {
                view["routes"][*key]["clusters"]
                    .as_array()
                    .is_some_and(|cs| {
                        cs.len() == 2
                            && cs
                                .iter()
                                .all(|c| c["gateways"].as_array().is_some_and(|g| !g.is_empty()))
                    })
            });
        if ready {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the clusters did not converge within 60s: see the *.log files under {}",
                root.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The gateways follow their federations; give east's a moment to open its VIP listeners.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "\nConverged in {} ms. What east routes:",
        started.elapsed().as_millis()
    );
    let east = &clusters[0];
    let view = admin(&east.socket, "catalog", json!(null)).await?;
    for (key, route) in view["routes"].as_object().cloned().unwrap_or_default() {
        let served: Vec<String> = route["clusters"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|x| x["place"]["cluster"].as_str().unwrap_or("?").to_string())
            .collect();
        println!(
            "  {key:<16} vip {:<12} served by {}",
            route["vips"]["v4"].as_str().unwrap_or("-"),
            served.join(", ")
        );
    }

    let gw = east.gateway.as_ref().context("east has no gateway")?;
    let (echo, grpc, tcp) = (
        vip(east, "demo/echo").await?,
        vip(east, "demo/grpc-echo").await?,
        vip(east, "demo/tcp-echo").await?,
    );
    println!("\nCalls from east, across clusters (through east's gateway and the mTLS link):");
    let (status, body) = http1(
        gw.proxy,
        "GET http://echo.demo.svc.clusterset.local:8080/hello HTTP/1.1\r\nHost: echo.demo.svc.clusterset.local:8080\r\nConnection: close\r\n\r\n".into(),
    )
    .await?;
    println!("  HTTP via the proxy port -> {status}\n    {}", body.trim());
    let (status, body) = http1(
        format!("{echo}:8080").parse()?,
        format!("GET /vip HTTP/1.1\r\nHost: {echo}:8080\r\nConnection: close\r\n\r\n"),
    )
    .await?;
    println!(
        "  HTTP to the VIP {echo}:8080 -> {status}\n    {}",
        body.trim()
    );
    let reply = grpc_say(format!("{grpc}:50051").parse()?, "hello").await?;
    println!("  gRPC isthmus.demo.Echo/Say to {grpc}:50051 -> {reply:?}");
    let back = tcp_echo(
        format!("{tcp}:9000").parse()?,
        "ping over a CONNECT tunnel\n",
    )
    .await?;
    println!("  TCP echo at {tcp}:9000 -> {:?}", back.trim());

    // East's DNS answers the mesh name with the VIP; an unmodified client uses the answer.
    let dns: SocketAddr = east.ready["ready"]["dns"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("east's ready line has no DNS address")?;
    let answer = dns_a(dns, "echo.demo.svc.clusterset.local").await?;
    println!("\nDNS (east's federation at {dns}): echo.demo.svc.clusterset.local A -> {answer}");
    let (status, body) = http1(
        format!("{answer}:8080").parse()?,
        "GET /by-name HTTP/1.1\r\nHost: echo.demo.svc.clusterset.local:8080\r\nConnection: close\r\n\r\n".into(),
    )
    .await?;
    println!(
        "  HTTP to echo.demo.svc.clusterset.local:8080 (resolved) -> {status}\n    {}",
        body.trim()
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("\nAccess logs (one JSON line per request or stream, on both sides):");
    for c in &clusters {
        if let Some(g) = &c.gateway {
            let text = std::fs::read_to_string(&g.access_log).unwrap_or_default();
            for line in text
                .lines()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                println!("  [{}] {line}", c.name);
            }
        }
    }

    let proxy = gw.proxy;
    println!(
        "\nDashboard (clusters, links, services, verdicts, traffic between clusters; refreshes itself):"
    );
    for c in &clusters {
        println!(
            "  {:<5} http://{}/ui",
            c.name,
            c.ready["ready"]["admin"].as_str().unwrap_or("?")
        );
    }
    println!("\nTry (in another terminal):");
    println!("  curl -x http://{proxy} http://echo.demo.svc.clusterset.local:8080/");
    println!(
        "  curl -x http://{proxy} http://south.echo.demo.svc.clusterset.local:8080/   # pinned to south"
    );
    println!(
        "  curl http://{echo}:8080/                                            # the service VIP"
    );
    println!("  curl --http2-prior-knowledge http://{echo}:8080/");
    println!(
        "  dig -p {} @{} echo.demo.svc.clusterset.local        # east's DNS: the VIP",
        dns.port(),
        dns.ip()
    );
    println!(
        "  dig -p {} @{} SRV _8080._tcp.echo.demo.svc.clusterset.local",
        dns.port(),
        dns.ip()
    );
    println!(
        "  curl --resolve echo.demo.svc.clusterset.local:8080:{answer} http://echo.demo.svc.clusterset.local:8080/"
    );
    println!(
        "  printf '\\0\\0\\0\\0\\7\\n\\5hello' | curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- http://{grpc}:50051/isthmus.demo.Echo/Say | od -c"
    );
    println!("  exec 3<>/dev/tcp/{tcp}/9000; echo hello >&3; head -1 <&3; exec 3<&-   # TCP echo");
    println!("  tail -f {}", gw.access_log.display());
    println!(
        "  {} status --admin-socket {}",
        exe.display(),
        east.socket.display()
    );
    println!(
        "  curl -s http://{}/metrics | grep isthmus_gateway",
        gw.admin
    );
    println!(
        "  {} explain echo.demo --from east --gateway {}   # where east's next call goes, and why",
        exe.display(),
        gw.admin
    );
    println!(
        "  # traffic policy (split, authorization, rate limits, drills): add a `policies:` section to a\n  \
         # cluster's catalog while the demo runs, e.g. in {}:\n  \
         #   policies: {{canary: {{services: [demo/echo], split: {{weights: {{west: 90, south: 10}}}}}}}}",
        east.dir.join("catalog.yaml").display()
    );
    Ok(clusters)
}

async fn stop(clusters: Vec<Cluster>) -> anyhow::Result<()> {
    let sigterm = |child: &Child| {
        if let Some(pid) = child.id() {
            // SIGTERM for a graceful shutdown; kill_on_drop is the backstop.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    };
    for mut c in clusters {
        if let Some(mut g) = c.gateway.take() {
            sigterm(&g.child);
            let _ = tokio::time::timeout(Duration::from_secs(25), g.child.wait()).await;
        }
        sigterm(&c.federation);
        let _ = tokio::time::timeout(Duration::from_secs(10), c.federation.wait()).await;
        if let Some(mut s) = c.samples.take() {
            let _ = s.start_kill();
            let _ = s.wait().await;
        }
    }
    println!("stopped.");
    Ok(())
}
