//! Starting and stopping a gateway: bootstrap its identity, bind its listeners (failing at start
//! with the address named), follow its federation, serve, and drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use isthmus_federation::admin::{AdminHttpState, JsonRoute, serve_admin_http_with};
use isthmus_federation::gwapi::BootstrapFile;
use isthmus_federation::identity::{Accept, IdKind, SpiffeClientVerifier, SpiffeId, tls};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::accesslog::Side;
use crate::config::GatewayConfig;
use crate::control::{ControlClient, ControlError};
use crate::fair::FairLimit;
use crate::health::Health;
use crate::inbound::{Backends, Inbound};
use crate::live::LiveSet;
use crate::metrics::Metrics;
use crate::outbound::listeners::{UnboundVips, VipListeners, accept_loop};
use crate::outbound::target_ports::{TargetPortListeners, TargetPortStates};
use crate::outbound::{Origin, Outbound, ShadowSlots};
use crate::pool::PeerPool;
use crate::refusals::RefusalLog;
use crate::retry::{Breakers, Budget};
use crate::serve::{ConnLimit, Drain};
use crate::sync;
use crate::table::Snapshot;
use isthmus_federation::telemetry::{KeyValue, Tracing};

/// How long start retries reaching the federation for the first certificate.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(60);

/// How long start waits for the first config before serving anyway (it keeps following).
const FIRST_CONFIG_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("bootstrap file {path}: {reason}")]
    BootstrapFile { path: String, reason: String },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot listen on {addr} ({what}): {source} (is another process using it?)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("{0}")]
    Tracing(String),
}

/// Where the gateway listens, as bound (port 0 resolved).
#[derive(Debug, Clone, Serialize)]
pub struct Bound {
    pub gateway: String,
    pub cluster: String,
    pub inbound: SocketAddr,
    pub advertise: String,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

/// A running gateway.
pub struct Running {
    pub bound: Bound,
    pub table: watch::Receiver<Arc<Snapshot>>,
    drain_tx: watch::Sender<bool>,
    limits: (ConnLimit, FairLimit),
    drain_timeout: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Graceful drain: stop accepting, let in-flight requests finish (HTTP/2 peers get GOAWAY
    /// and reconnect elsewhere), bounded by `drain_timeout`; then stop everything.
    pub async fn shutdown(self) {
        let _ = self.drain_tx.send(true);
        let (inbound, local) = &self.limits;
        tokio::join!(
            inbound.drained(self.drain_timeout),
            local.drained(self.drain_timeout)
        );
        for t in &self.tasks {
            t.abort();
        }
        // The last exchanges' access-log lines, unless stdout is stuck.
        let _ = tokio::task::spawn_blocking(|| {
            crate::linewriter::stdout().drain(Duration::from_secs(1))
        })
        .await;
    }
}

/// The first certificate, retried while the federation is unreachable (it may be starting
/// too); a refused token fails at once.
async fn bootstrap(file: &BootstrapFile) -> Result<ControlClient, ControlError> {
    let deadline = tokio::time::Instant::now() + BOOTSTRAP_RETRY;
    let mut backoff = Duration::from_millis(200);
    loop {
        match ControlClient::bootstrap(file).await {
            Ok(c) => return Ok(c),
            Err(e @ ControlError::Refused(_)) => return Err(e),
            Err(e) if tokio::time::Instant::now() + backoff > deadline => return Err(e),
            Err(e) => {
                tracing::warn!(federation = %file.federation, error = %e, "cannot reach the federation yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

pub async fn start(cfg: GatewayConfig) -> Result<Running, StartError> {
    cfg.validate()?;
    let path = cfg.bootstrap_file.display().to_string();
    let text =
        std::fs::read_to_string(&cfg.bootstrap_file).map_err(|e| StartError::BootstrapFile {
            path: path.clone(),
            reason: format!("{e} (create it with `isthmus gateway bootstrap --name <gateway>`)"),
        })?;
    let file: BootstrapFile =
        serde_json::from_str(&text).map_err(|e| StartError::BootstrapFile {
            path,
            reason: e.to_string(),
        })?;
    let inbound_listener = bind("inbound", cfg.listen.inbound.bind).await?;
    let proxy_listener = bind("proxy", cfg.listen.proxy).await?;
    let admin_listener = bind("admin", cfg.listen.admin).await?;
    let inbound_addr = inbound_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "inbound",
            addr: cfg.listen.inbound.bind,
            source,
        })?;
    let advertise = cfg.advertised_inbound(inbound_addr)?;

    let client = Arc::new(bootstrap(&file).await?);
    let own_id = SpiffeId::gateway(&client.trust_domain, &client.gateway)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);

    let pod_ip = cfg.kubernetes.as_ref().map(|k| k.pod_ip()).transpose()?;
    let local_address = pod_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let (tx, table) = watch::channel(Arc::new(Snapshot::default()));
    let (drain_tx, drain) = Drain::new();
    let mut tasks = vec![
        tokio::spawn(sync::config_stream(
            client.clone(),
            tx,
            metrics.clone(),
            cfg.health.policy_defaults(),
        )),
        tokio::spawn(sync::renew_certificates(client.clone(), metrics.clone())),
        tokio::spawn(sync::register(
            client.clone(),
            advertise.clone(),
            inbound_addr.port(),
            local_address,
            cfg.registration_ttl,
        )),
    ];
    // Serve with the first config when it arrives quickly; otherwise serve anyway (every call
    // gets a clear 503 until routes exist) and keep following.
    let mut first = table.clone();
    if tokio::time::timeout(FIRST_CONFIG_WAIT, first.wait_for(|s| s.version > 0))
        .await
        .is_err()
    {
        tracing::warn!(
            "no config from the federation yet; serving without routes until it arrives"
        );
    }

    let own_td = client.trust_domain.clone();
    let accept = Accept::custom(move |id: &SpiffeId| {
        matches!(id.kind(), IdKind::Gateway { .. }) && *id.trust_domain() != own_td
    });
    let verifier = SpiffeClientVerifier::new(client.trust.clone(), accept).into_arc();
    let server_tls = tls::server_config(&client.certs, verifier, &[tls::ALPN_H2])
        .map_err(|e| StartError::Tls(e.to_string()))?;

    let pool = Arc::new(PeerPool::new(
        client.certs.clone(),
        client.trust.clone(),
        cfg.limits.clone(),
    ));
    let backends = Arc::new(Backends::new(cfg.limits.clone()));
    let health = Arc::new(Health::new(cfg.health.detectors(cfg.stale_grace)));
    tasks.push(tokio::spawn(crate::probe::run(
        table.clone(),
        pool.clone(),
        health.clone(),
        metrics.clone(),
    )));
    // VIP addresses this gateway could not bind, for the federation's DNS (None: no VIP
    // listeners at all, `listen.vips: false`).
    let (unbound_tx, unbound_rx) = watch::channel(Arc::new(UnboundVips::new()));
    let unbound_rx_explain = unbound_rx.clone();
    tasks.push(tokio::spawn(crate::traffic::report(
        client.clone(),
        metrics.traffic.clone(),
    )));
    tasks.push(tokio::spawn(sync::report_health(
        client.clone(),
        table.clone(),
        health.clone(),
        (cfg.listen.vips && pod_ip.is_none()).then_some(unbound_rx),
    )));
    // Export starts lazily: a collector that is down costs dropped spans, never the start.
    let tracing = Tracing::start(
        &cfg.tracing,
        "isthmus-gateway",
        vec![
            KeyValue::new("service.instance.id", client.gateway.clone()),
            KeyValue::new("isthmus.trust_domain", client.trust_domain.to_string()),
        ],
        metrics.trace_spans_dropped.clone(),
    )
    .map_err(|e| StartError::Tracing(e.to_string()))?;
    let outbound = Arc::new(Outbound {
        table: table.clone(),
        pool,
        health,
        budget: Budget::default(),
        latencies: Arc::default(),
        breakers: Breakers::default(),
        local: backends.clone(),
        limits: cfg.limits.clone(),
        access_log: cfg.access_log,
        metrics: metrics.clone(),
        trusted_sources: cfg.identity.trusted_ranges()?,
        shadows: ShadowSlots::default(),
        drain: drain.clone(),
        live: Arc::new(LiveSet::new(
            table.clone(),
            Side::Outbound,
            crate::outbound::judge,
        )),
        tracing: tracing.clone(),
    });
    let inbound = Arc::new(Inbound {
        table: table.clone(),
        backends,
        limits: cfg.limits.clone(),
        access_log: cfg.access_log,
        metrics: metrics.clone(),
        own_id,
        live: Arc::new(LiveSet::new(
            table.clone(),
            Side::Inbound,
            crate::inbound::judge,
        )),
        tracing,
    });
    // Open exchanges are judged again on every new snapshot; those no longer allowed close.
    tasks.push(tokio::spawn(inbound.live.clone().follow(metrics.clone())));
    tasks.push(tokio::spawn(outbound.live.clone().follow(metrics.clone())));
    let inbound_limit = ConnLimit::new(cfg.limits.max_connections);
    let local_limit = FairLimit::new(
        cfg.limits.max_connections,
        cfg.limits.connections_per_source(),
        RefusalLog::new(&metrics),
    );
    tasks.push(tokio::spawn(inbound.serve(
        inbound_listener,
        server_tls,
        inbound_limit.clone(),
        drain.clone(),
    )));
    let proxy_addr = proxy_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "proxy",
            addr: cfg.listen.proxy,
            source,
        })?;
    tasks.push(tokio::spawn(accept_loop(
        outbound.clone(),
        proxy_listener,
        Origin::Proxy,
        false,
        local_limit.clone(),
        drain.clone(),
    )));
    // Kubernetes mode: the target ports on the pod IP instead of VIPs.
    let (port_states_tx, port_states) = watch::channel(Arc::new(TargetPortStates::new()));
    if let Some(pod_ip) = pod_ip {
        let listeners =
            TargetPortListeners::new(outbound.clone(), pod_ip, local_limit.clone(), drain.clone());
        tasks.push(tokio::spawn(listeners.follow(
            table.clone(),
            metrics.clone(),
            port_states_tx,
        )));
    } else if cfg.listen.vips {
        let vips = VipListeners::new(outbound.clone(), local_limit.clone(), drain.clone());
        tasks.push(tokio::spawn(vips.follow(
            table.clone(),
            metrics.clone(),
            unbound_tx,
        )));
    }

    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "admin",
            addr: cfg.listen.admin,
            source,
        })?;
    let ready_table = table.clone();
    let certs = client.certs.clone();
    let dump_cfg = cfg.clone();
    let dump_table = table.clone();
    let state = AdminHttpState {
        registry: Arc::new(registry),
        readiness: Arc::new(move || {
            if certs.expires_at().is_none() {
                return Err("no certificate yet".into());
            }
            if ready_table.borrow().version == 0 {
                return Err("no config from the federation yet".into());
            }
            Ok(())
        }),
        config_dump: Arc::new(move || {
            let snap = dump_table.borrow().clone();
            serde_json::json!({
                "config": dump_cfg.dump(),
                "table": {
                    "version": snap.version,
                    "cluster": &*snap.cluster,
                    "imports": snap.imports.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
                    "exports": snap.exports.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
                    "vips": snap.vips.iter().map(|(ip, t)| (ip.to_string(), serde_json::json!({
                        "service": &*t.import.name,
                        "cluster": t.pinned.as_deref(),
                    }))).collect::<serde_json::Map<_, _>>(),
                    "target_ports": &*port_states.borrow().clone(),
                    "policies": {
                        "documents": snap.traffic.documents.iter().map(|d| serde_json::json!({
                            "name": &*d.name,
                            "services": &d.services,
                            "sections": d.section_names(),
                        })).collect::<Vec<_>>(),
                        "refused": &snap.traffic.refused,
                    },
                },
            })
        }),
    };
    let explained = outbound.clone();
    let unbound_now = unbound_rx_explain;
    let routes = vec![JsonRoute {
        path: "/explain",
        handler: Arc::new(move |query| {
            let snap = explained.table.borrow().clone();
            let unbound = unbound_now.borrow().clone();
            crate::explain::route(
                &snap,
                &explained.health,
                &explained.breakers,
                &unbound,
                &explained.latencies,
                query,
            )
        }),
    }];
    let admin_drain = drain.clone();
    tasks.push(tokio::spawn(async move {
        let _ = serve_admin_http_with(admin_listener, state, routes, async move {
            admin_drain.signaled().await
        })
        .await;
    }));

    let bound = Bound {
        gateway: client.gateway.clone(),
        cluster: table.borrow().cluster.to_string(),
        inbound: inbound_addr,
        advertise,
        proxy: proxy_addr,
        admin: admin_addr,
    };
    tracing::info!(gateway = %bound.gateway, inbound = %bound.inbound, proxy = %bound.proxy, admin = %bound.admin, "gateway serving");
    Ok(Running {
        bound,
        table,
        drain_tx,
        limits: (inbound_limit, local_limit),
        drain_timeout: cfg.drain_timeout,
        tasks,
    })
}
