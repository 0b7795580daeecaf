//! `isthmus`: the one binary. Thin wiring only: every subcommand calls into the component crates.

mod admin_cmd;
mod catalog_cmd;
#[cfg(test)]
mod config_reference;
mod demo;
mod dns_cmd;
mod explain_cmd;
mod kube_manifests;
mod logging;
mod render;
mod sample;
mod sample_client;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "isthmus",
    version,
    about = "Multi-cluster federation: peer clusters, sync catalogs and trust, route across them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How to reach a running federation's admin socket.
#[derive(clap::Args, Clone)]
pub struct Target {
    /// The federation's config file (its admin socket is read from it); for `gateway run`, the
    /// gateway's own config file (env ISTHMUS_GATEWAY_CONFIG there, not ISTHMUS_CONFIG).
    #[arg(long, short, env = "ISTHMUS_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The admin socket, when not using --config.
    #[arg(long, env = "ISTHMUS_ADMIN_SOCKET", global = true)]
    admin_socket: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, env = "ISTHMUS_JSON", global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run this cluster's federation service.
    Federation {
        #[arg(long, short, env = "ISTHMUS_CONFIG")]
        config: PathBuf,
    },
    /// Serve global DNS on its own (the `dns:` section of a federation config), from the running
    /// federation's admin socket, or from a saved `isthmus catalog --json` file.
    Dns {
        #[arg(long, short, env = "ISTHMUS_CONFIG")]
        config: PathBuf,
        /// Serve this saved catalog (`isthmus catalog --json > file`) instead of asking the
        /// federation; the file is re-read when it changes.
        #[arg(long, env = "ISTHMUS_DNS_SNAPSHOT")]
        snapshot: Option<PathBuf>,
        /// Listen here instead of `dns.bind` (e.g. while the federation serves DNS itself).
        #[arg(long, env = "ISTHMUS_DNS_BIND")]
        bind: Option<std::net::SocketAddr>,
        /// Serve /metrics (and /config_dump) here.
        #[arg(long, env = "ISTHMUS_DNS_METRICS")]
        metrics: Option<std::net::SocketAddr>,
        /// How often to look for a new catalog, in milliseconds.
        #[arg(long, env = "ISTHMUS_DNS_POLL_MS", default_value_t = 1000)]
        poll_ms: u64,
    },
    /// Peer with other clusters.
    Peering {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        op: PeeringOp,
    },
    /// This federation's state: peers, exports, services, gateways, CA.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// The merged mesh view (every clusterset service with its clusters and VIPs), or
    /// `catalog check <file>` to validate a catalog file before saving it.
    Catalog {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        op: Option<CatalogOp>,
    },
    /// The cluster CA.
    Ca {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        op: CaOp,
    },
    /// Gateways: bootstrap credentials, revocation, the registered list, and `run` (the data
    /// plane itself).
    Gateway {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        op: GatewayOp,
    },
    /// Workload certificates (for VMs registering endpoints with the registry).
    Workload {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        op: WorkloadOp,
    },
    /// Where the next request for a service goes from a cluster, and why (asks that cluster's
    /// gateway admin port).
    Explain {
        /// The service: `<svc>.<ns>`, `<ns>/<svc>` or `<svc>.<ns>.svc.clusterset.local`.
        #[arg(env = "ISTHMUS_EXPLAIN_SERVICE")]
        service: String,
        /// The calling cluster; the gateway asked must belong to it.
        #[arg(long, env = "ISTHMUS_EXPLAIN_FROM")]
        from: String,
        /// That cluster's gateway admin port (`listen.admin` in its config), host:port.
        #[arg(long, env = "ISTHMUS_GATEWAY_ADMIN", default_value = "127.0.0.1:15021")]
        gateway: String,
        /// Print JSON instead of words.
        #[arg(long, env = "ISTHMUS_JSON")]
        json: bool,
    },
    /// Running Isthmus on Kubernetes.
    Kubernetes {
        #[command(subcommand)]
        op: kube_manifests::KubernetesOp,
    },
    /// Sample services to call across clusters: an HTTP echo, a gRPC echo and a TCP echo.
    ///
    /// Serves until stopped, after printing one JSON line with the bound addresses
    /// ({"ready":{"http":...,"grpc":...,"tcp":...}}; port 0 picks a free port). Export them in
    /// the catalog file (protocol http or http2, grpc, tcp) to have something to call from
    /// another cluster; every answer names --cluster, so a caller sees which cluster served it.
    /// The HTTP and gRPC ports serve the same handlers (HTTP/1.1 and h2c on both).
    ///
    /// HTTP:
    ///   GET  /              JSON: cluster, method, path, version, host, and what the caller's
    ///                       gateway told the service: forwarded_client_cert
    ///                       (x-forwarded-client-cert), source_cluster
    ///                       (x-isthmus-source-cluster), traceparent (W3C trace context),
    ///                       isthmus_headers (names of any isthmus-* headers: none should
    ///                       reach a service), shadow (the request is a shadow copy). Any
    ///                       other path answers the same.
    ///   POST /echo          streams the request body back as it arrives
    ///   POST /sink          reads the whole body, then answers {"cluster":..,"received":<bytes>}
    ///   GET  /bytes?n=N     streams N bytes ('x'), in 64 KiB chunks
    ///   GET  /slow?ms=N     answers after N ms (default 1000, at most 60000)
    ///   GET  /hold?ms=N     sends the headers at once and the body after N ms (default 1000,
    ///                       at most 60000): a request that can be seen in flight
    ///   GET  /ws            WebSocket echo (every message sent back)
    ///   GET  /ws/identity   WebSocket echo whose first message is the GET / JSON of its
    ///                       handshake
    ///
    /// gRPC service isthmus.demo.Echo, messages { string text = 1; }:
    ///   Say    unary: answers "<cluster>: <text>"
    ///   Count  server streaming: text is a number N (default 3, at most 10000); answers
    ///          "<cluster>: 1" .. "<cluster>: N"
    ///   Chat   bidirectional: answers every message with "<cluster>: <text>"
    ///   Every response's headers carry the call's traceparent as x-sample-traceparent.
    ///   (other methods: status 12, UNIMPLEMENTED)
    ///
    /// TCP: echoes every byte until the client closes its side.
    ///
    /// Example (then call it from another cluster through its gateway):
    ///   isthmus sample-backends --cluster west --http 127.0.0.1:8080
    ///   curl http://127.0.0.1:8080/hold?ms=200
    #[command(verbatim_doc_comment)]
    SampleBackends {
        /// The name every answer carries (the cluster these services run in).
        #[arg(long, env = "ISTHMUS_SAMPLE_CLUSTER")]
        cluster: String,
        /// HTTP/1.1 and h2c listener.
        #[arg(long, env = "ISTHMUS_SAMPLE_HTTP", default_value = "127.0.0.1:8080")]
        http: std::net::SocketAddr,
        /// gRPC (h2c) listener.
        #[arg(long, env = "ISTHMUS_SAMPLE_GRPC", default_value = "127.0.0.1:9090")]
        grpc: std::net::SocketAddr,
        /// TCP echo listener.
        #[arg(long, env = "ISTHMUS_SAMPLE_TCP", default_value = "127.0.0.1:9000")]
        tcp: std::net::SocketAddr,
    },
    /// An open-loop HTTP load generator printing one JSON line per request (failover tests).
    #[command(hide = true)]
    SampleClient {
        #[arg(long, env = "ISTHMUS_SAMPLE_CLIENT_URL")]
        url: String,
        /// Send every request to this HTTP proxy (host:port) in absolute form.
        #[arg(long, env = "ISTHMUS_SAMPLE_CLIENT_PROXY")]
        proxy: Option<String>,
        /// Requests per second, sent on schedule whether or not earlier ones answered.
        #[arg(long, env = "ISTHMUS_SAMPLE_CLIENT_RATE")]
        rate: f64,
        #[arg(long, env = "ISTHMUS_SAMPLE_CLIENT_SECONDS")]
        seconds: f64,
        /// Per-request deadline (connect to last body byte).
        #[arg(long, env = "ISTHMUS_SAMPLE_CLIENT_TIMEOUT_MS", default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Start three clusters on loopback, peer them, and show them converge.
    Demo {
        /// Where the demo keeps its data (default: a fresh temp dir).
        #[arg(long, env = "ISTHMUS_DEMO_DIR")]
        dir: Option<PathBuf>,
        /// Exit after the demo converged instead of running until Ctrl-C.
        #[arg(long, env = "ISTHMUS_DEMO_EXIT")]
        exit: bool,
    },
}

#[derive(Subcommand)]
enum PeeringOp {
    /// Create a one-time token for a peer to establish with.
    Token {
        #[arg(long, env = "ISTHMUS_PEER")]
        peer: String,
    },
    /// Complete a peering with a token from the other cluster.
    Establish {
        /// The token printed by `isthmus peering token` on the other cluster (or ISTHMUS_PEERING_TOKEN,
        /// which keeps it out of shell history).
        #[arg(env = "ISTHMUS_PEERING_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Every peer: state, last sync, lag, revisions.
    List,
    /// One peer in detail.
    Show {
        #[arg(env = "ISTHMUS_PEER")]
        peer: String,
    },
    /// Remove a peer, its catalog and its trust bundle.
    Remove {
        #[arg(env = "ISTHMUS_PEER")]
        peer: String,
    },
}

#[derive(Subcommand)]
enum CatalogOp {
    /// Validate a catalog file with the federation's own checks, without a federation: prints
    /// `ok: N exports, M imports, K policies`, or every problem with its field path. Exit code 0
    /// valid, 1 refused, 2 unreadable.
    Check {
        /// The catalog file (YAML or JSON).
        #[arg(env = "ISTHMUS_CATALOG_FILE")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum CaOp {
    /// Print a fresh key-encryption key (for ISTHMUS_KEK).
    Kek,
    /// Rotation state and bundle.
    Status,
    /// Publish a new root beside the old; signing switches once every peer and gateway ACKed it.
    Rotate,
    /// Remove the old root (after the longest leaf lifetime since the switch).
    Retire {
        #[arg(long, env = "ISTHMUS_CA_RETIRE_FORCE")]
        force: bool,
    },
}

#[derive(Subcommand)]
enum GatewayOp {
    /// Create a bootstrap file for a gateway (a revocable token for exactly that gateway).
    Bootstrap {
        #[arg(long, env = "ISTHMUS_GATEWAY_NAME")]
        name: String,
        /// Write the bootstrap file here (mode 0600) instead of stdout.
        #[arg(long, env = "ISTHMUS_BOOTSTRAP_OUT")]
        out: Option<PathBuf>,
    },
    /// Revoke a gateway's bootstrap token and registration.
    Revoke {
        #[arg(long, env = "ISTHMUS_GATEWAY_NAME")]
        name: String,
    },
    /// Registered gateways.
    List,
    /// Run a gateway: `isthmus gateway run --config gateway.yaml` (here --config names the
    /// gateway's own config file).
    Run,
}

#[derive(Subcommand)]
enum WorkloadOp {
    /// Sign a workload's CSR for spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
    /// The key stays on the workload: only the CSR (PEM or DER) is sent.
    Issue {
        #[arg(long, env = "ISTHMUS_WORKLOAD_NAMESPACE")]
        namespace: String,
        #[arg(long, env = "ISTHMUS_WORKLOAD_SERVICE_ACCOUNT")]
        service_account: String,
        /// The CSR file (PEM or DER).
        #[arg(long, env = "ISTHMUS_WORKLOAD_CSR")]
        csr: PathBuf,
        /// Write the certificate chain (PEM) here instead of stdout.
        #[arg(long, env = "ISTHMUS_WORKLOAD_OUT")]
        out: Option<PathBuf>,
    },
}

// The gateway's request path allocates small, short-lived buffers and futures at a high rate;
// with mimalloc the two hops cost about 7 % less CPU per request than with glibc malloc
// (BENCHMARKS.md, proxy).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line, with `gateway run`'s config taken from `--config` on the command line or
/// `ISTHMUS_GATEWAY_CONFIG`, never from `ISTHMUS_CONFIG` (the federation's, which operators
/// export for every other command).
fn parse_cli() -> Cli {
    use clap::parser::ValueSource;
    use clap::{CommandFactory as _, FromArgMatches as _};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Command::Gateway {
        target,
        op: GatewayOp::Run,
    } = &mut cli.command
    {
        let gateway = matches.subcommand_matches("gateway");
        let typed = [gateway, gateway.and_then(|g| g.subcommand_matches("run"))]
            .into_iter()
            .flatten()
            .any(|m| m.value_source("config") == Some(ValueSource::CommandLine));
        if !typed {
            target.config = std::env::var_os("ISTHMUS_GATEWAY_CONFIG").map(PathBuf::from);
        }
    }
    cli
}

fn main() -> std::process::ExitCode {
    // One crypto provider for the whole process, before anything touches TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    logging::init();
    let cli = parse_cli();
    // One usable core (a pinned or CPU-limited process): a single-threaded runtime, so that a
    // wakeup never hops between threads on that core.
    let single = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let result = builder
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(code) => code,
        Err(e) => {
            // The message chain, never a backtrace: every error says what to do next.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    use serde_json::json;
    let done = match cli.command {
        Command::Federation { config } => run_federation(config).await,
        Command::Dns {
            config,
            snapshot,
            bind,
            metrics,
            poll_ms,
        } => {
            let poll = std::time::Duration::from_millis(poll_ms.max(50));
            dns_cmd::run_standalone(&config, snapshot, bind, metrics, poll).await
        }
        Command::Peering { target, op } => {
            let (op, body) = match op {
                PeeringOp::Token { peer } => ("peering.token", json!({ "peer": peer })),
                PeeringOp::Establish { token } => ("peering.establish", json!({ "token": token })),
                PeeringOp::List => ("peering.list", json!(null)),
                PeeringOp::Show { peer } => ("peering.show", json!({ "peer": peer })),
                PeeringOp::Remove { peer } => ("peering.remove", json!({ "peer": peer })),
            };
            admin_cmd::call_and_print(&target, op, body).await
        }
        Command::Status { target } => {
            admin_cmd::call_and_print(&target, "status", json!(null)).await
        }
        Command::Catalog {
            target,
            op: Some(CatalogOp::Check { file }),
        } => return catalog_cmd::check(&file, target.json).await,
        Command::Catalog { target, op: None } => {
            admin_cmd::call_and_print(&target, "catalog", json!(null)).await
        }
        Command::Ca { target, op } => match op {
            CaOp::Kek => {
                let kek =
                    isthmus_federation::identity::Kek::generate().context("generating a key")?;
                println!("{}", kek.to_base64().as_str());
                Ok(())
            }
            CaOp::Status => admin_cmd::call_and_print(&target, "ca.status", json!(null)).await,
            CaOp::Rotate => admin_cmd::call_and_print(&target, "ca.rotate", json!(null)).await,
            CaOp::Retire { force } => {
                admin_cmd::call_and_print(&target, "ca.retire", json!({ "force": force })).await
            }
        },
        Command::Gateway { target, op } => match op {
            GatewayOp::Bootstrap { name, out } => {
                admin_cmd::gateway_bootstrap(&target, &name, out.as_deref()).await
            }
            GatewayOp::Revoke { name } => {
                admin_cmd::call_and_print(&target, "gateway.revoke", json!({ "name": name })).await
            }
            GatewayOp::List => {
                admin_cmd::call_and_print(&target, "gateway.list", json!(null)).await
            }
            GatewayOp::Run => {
                let config = target.config.context(
                    "`isthmus gateway run` needs the gateway's config: --config <gateway.yaml> or \
                     ISTHMUS_GATEWAY_CONFIG (ISTHMUS_CONFIG names the federation's config)",
                )?;
                run_gateway(config).await
            }
        },
        Command::Workload {
            target,
            op:
                WorkloadOp::Issue {
                    namespace,
                    service_account,
                    csr,
                    out,
                },
        } => {
            admin_cmd::workload_issue(&target, &namespace, &service_account, &csr, out.as_deref())
                .await
        }
        Command::Explain {
            service,
            from,
            gateway,
            json,
        } => {
            explain_cmd::run(explain_cmd::Options {
                service,
                from,
                gateway,
                json,
            })
            .await
        }
        Command::Kubernetes { op } => kube_manifests::run(op),
        Command::Demo { dir, exit } => demo::run(dir, exit).await,
        Command::SampleBackends {
            cluster,
            http,
            grpc,
            tcp,
        } => sample::run(cluster, http, grpc, tcp).await,
        Command::SampleClient {
            url,
            proxy,
            rate,
            seconds,
            timeout_ms,
        } => {
            sample_client::run(sample_client::Options {
                url,
                proxy,
                rate,
                seconds,
                timeout: std::time::Duration::from_millis(timeout_ms),
            })
            .await
        }
    };
    done.map(|()| std::process::ExitCode::SUCCESS)
}

async fn run_federation(config: PathBuf) -> anyhow::Result<()> {
    let cfg = isthmus_federation::config::FederationConfig::load(&config)?;
    let dns = dns_cmd::enabled(&cfg).cloned();
    let dns_metrics = isthmus_dns::DnsMetrics::default();
    let extra: Option<isthmus_federation::node::run::ExtraMetrics> = dns.as_ref().map(|_| {
        let m = dns_metrics.clone();
        Box::new(move |r: &mut _| m.register(r)) as isthmus_federation::node::run::ExtraMetrics
    });
    let running = isthmus_federation::node::run::start_with_metrics(cfg, extra).await?;
    let dns = match &dns {
        Some(d) => match dns_cmd::start_beside(d, &running.node, dns_metrics).await {
            Ok(server) => Some(server),
            Err(e) => {
                running.shutdown().await;
                return Err(e);
            }
        },
        None => None,
    };
    // One machine-readable line on stdout: what was bound (ports may have been 0).
    let mut ready = serde_json::to_value(&running.bound)?;
    if let Some(server) = &dns {
        ready["dns"] = serde_json::json!(server.bound.to_string());
    }
    println!("{}", serde_json::json!({ "ready": ready }));
    wait_for_signal().await;
    tracing::info!("shutting down");
    if let Some(server) = dns {
        server.shutdown().await;
    }
    running.shutdown().await;
    Ok(())
}

async fn run_gateway(config: PathBuf) -> anyhow::Result<()> {
    let cfg = isthmus_gateway::GatewayConfig::load(&config)?;
    let running = isthmus_gateway::start(cfg).await?;
    println!("{}", serde_json::json!({ "ready": running.bound }));
    wait_for_signal().await;
    tracing::info!("draining");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
