//! Starting and running a federation: open the store, load or create the CA, restore the state
//! (peers' last-known catalogs are served immediately, marked with their age), start the catalog
//! sources, bind every listener, start dialing peers, and run until shutdown.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};

use crate::admin::{AdminHttpState, JsonRoute, bind_admin_socket, serve_admin_http_routes};
use crate::catalog::{CatalogFile, FileSource, RegistryConfig, RegistryService};
use crate::config::FederationConfig;
use crate::identity::{
    Accept, CertStore, SpiffeClientVerifier, SpiffeId, TrustBundle, TrustStore, tls, transport,
};
use crate::mesh::{ClusterPlace, LocalCatalog, MeshView};
use crate::metrics::Metrics;
use crate::model::ServiceKey;
use crate::node::ca::{CaRuntime, load_kek};
use crate::node::keys::{self, LocalMeta};
use crate::node::state::{MeshState, PeerEntry, json, load_peer_catalog, place_of};
use crate::node::{Node, now_ms};
use crate::peering::PeerRecord;
use crate::peering::dialer::{MAX_MESSAGE_BYTES, spawn_dialer};
use crate::peering::server::PeeringService;
use crate::proto::gateway_control_server::GatewayControlServer;
use crate::proto::peering_server::PeeringServer;
use crate::proto::registry_server::RegistryServer;
use crate::store::{AnyStore, Op, Store};
use crate::vip::{VipPool, VipTable};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Ca(#[from] crate::node::ca::CaError),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error(transparent)]
    State(#[from] crate::node::state::StateError),
    #[error("cannot listen on {addr} for {what}: {detail} (is another process using it?)")]
    Bind {
        what: &'static str,
        addr: String,
        detail: String,
    },
    #[error("{0}")]
    Other(String),
}

/// The addresses the listeners actually bound (ports may have been 0).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bound {
    pub peering: std::net::SocketAddr,
    pub api: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub admin_socket: std::path::PathBuf,
}

pub struct Running {
    pub node: Arc<Node>,
    pub bound: Bound,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Graceful shutdown: stop accepting, end streams, wait for the listeners (bounded).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let sessions: Vec<_> =
            std::mem::take(&mut *self.node.sessions.lock().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .collect();
        for s in sessions {
            s.abort();
        }
    }
}

async fn bind(what: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| StartError::Bind {
        what,
        addr: addr.to_string(),
        detail: e.to_string(),
    })
}

fn random_epoch() -> String {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Metrics of components composed next to the federation (DNS), registered on its registry so
/// they are served on its admin port's `/metrics`.
pub type ExtraMetrics = Box<dyn FnOnce(&mut Registry) + Send>;

pub async fn start(cfg: FederationConfig) -> Result<Running, StartError> {
    start_with_metrics(cfg, None).await
}

/// [`start`], registering `extra` metrics on the federation's registry.
pub async fn start_with_metrics(
    cfg: FederationConfig,
    extra: Option<ExtraMetrics>,
) -> Result<Running, StartError> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        StartError::Other(format!(
            "cannot create data dir {}: {e}",
            cfg.data_dir.display()
        ))
    })?;
    let td = cfg.trust_domain();
    let me = ClusterPlace {
        cluster: cfg.cluster.clone(),
        trust_domain: td.clone(),
        region: cfg.region.clone(),
        zone: cfg.zone.clone(),
    };
    let id = SpiffeId::federation(&td, cfg.cluster.as_str())
        .map_err(|e| StartError::Other(e.to_string()))?;
    let store = AnyStore::open(&cfg.store_config()).await?;
    tracing::info!(backend = store.backend(), cluster = %cfg.cluster, trust_domain = %td, "store open");

    // CA and our own certificate.
    let kek = load_kek(&cfg)?;
    let ca = CaRuntime::open(&store, &cfg, &kek).await?;
    let trust = TrustStore::new();
    trust.set(ca.bundle());
    let certs = CertStore::new();
    let (own, key) = ca.issue_own(&id)?;
    certs
        .set_from_pem(&own.chain_pem, &key)
        .map_err(|e| StartError::Other(e.to_string()))?;

    // Local catalog meta. A fresh catalog (even an empty one) is version 1: peers refuse
    // version 0 as "no catalog", and a cluster that exports nothing must still be able to send
    // its snapshot (bundle and gateways) instead of being NACKed forever.
    let meta: LocalMeta = match store.get(keys::LOCAL_META).await? {
        Some(b) => {
            let mut m: LocalMeta = serde_json::from_slice(&b)
                .map_err(|e| StartError::Other(format!("local/meta: {e}")))?;
            // Written by an older version that started at 0; no peer can have stored version 0.
            m.version = m.version.max(1);
            m
        }
        None => {
            let m = LocalMeta {
                epoch: random_epoch(),
                version: 1,
            };
            store
                .commit(
                    Vec::new(),
                    vec![Op::Put {
                        key: keys::LOCAL_META.into(),
                        value: json(&m)?,
                    }],
                )
                .await?;
            m
        }
    };
    let mut exported_at = BTreeMap::new();
    for (k, v) in store.list(keys::EXPORTED_AT).await? {
        if let (Ok(key), Ok(at)) = (
            ServiceKey::parse(k.trim_start_matches(keys::EXPORTED_AT)),
            serde_json::from_slice::<i64>(&v),
        ) {
            exported_at.insert(key, at);
        }
    }
    let local = LocalCatalog::new(meta.epoch, meta.version, exported_at, cfg.zone());

    // Peers and their last-known catalogs.
    let mut peers = BTreeMap::new();
    for (k, v) in store.list(keys::PEERS).await? {
        if !k.ends_with("/record") {
            continue;
        }
        let record: PeerRecord =
            serde_json::from_slice(&v).map_err(|e| StartError::Other(format!("{k}: {e}")))?;
        let bundle = TrustBundle::from_spiffe_json(&record.trust_domain, &record.bundle)
            .map_err(|e| StartError::Other(format!("bundle of peer {}: {e}", record.cluster)))?;
        trust.set(bundle);
        let (catalog, deltas) = load_peer_catalog(&store, &record.cluster).await?;
        tracing::info!(peer.cluster = %record.cluster, services = catalog.services.len(), version = catalog.version,
            age_ms = now_ms() - catalog.stored_at_ms, "restored peer catalog (last known)");
        peers.insert(
            record.cluster.clone(),
            PeerEntry {
                place: place_of(&record),
                record,
                catalog,
                deltas,
            },
        );
    }

    // VIPs.
    let (v4, v6) = cfg.vip_ranges()?;
    let pool =
        VipPool::new(v4, v6, cfg.vips.quarantine).map_err(|e| StartError::Other(e.to_string()))?;
    let vips = VipTable::load(store.clone(), pool)
        .await
        .map_err(|e| StartError::Other(e.to_string()))?;

    // Catalog sources.
    let (file_rx, file_stats) = match &cfg.catalog.file {
        Some(path) => {
            let src = FileSource::start(path.clone(), cfg.catalog.poll_interval)
                .await
                .map_err(|e| StartError::Catalog(e.to_string()))?;
            let watch = crate::node::apply::FileWatch {
                stats: src.stats,
                refusal: src.refusal,
            };
            (src.catalog, Some(watch))
        }
        None => (watch::channel(Arc::new(CatalogFile::default())).1, None),
    };
    // Kubernetes ServiceExports, merged with the file's exports (the registry authorizes
    // registrations against the file alone).
    let kube_report = crate::kubernetes::KubeReport::default();
    #[cfg(feature = "kubernetes")]
    let kube_exports = match cfg.kubernetes.as_ref().filter(|k| k.exports) {
        Some(k) => Some(
            crate::kubernetes::exports::KubeExports::start(k, file_rx.clone(), kube_report.clone())
                .await
                .map_err(|e| StartError::Catalog(e.to_string()))?,
        ),
        None => None,
    };
    #[cfg(feature = "kubernetes")]
    let exports_rx = kube_exports
        .as_ref()
        .map_or_else(|| file_rx.clone(), |k| k.catalog.clone());
    #[cfg(not(feature = "kubernetes"))]
    let exports_rx = file_rx.clone();
    let registry_cfg = RegistryConfig {
        min_ttl: cfg.registry.min_ttl,
        max_ttl: cfg.registry.max_ttl,
        default_ttl: cfg.registry.default_ttl,
        ..RegistryConfig::default()
    };
    let (registry, registered_rx) =
        RegistryService::new(store.clone(), td.clone(), file_rx.clone(), registry_cfg)
            .await
            .map_err(|e| StartError::Catalog(e.to_string()))?;

    // Listeners.
    let peering_listener = bind("peering", cfg.listen.peering.bind).await?;
    let api_listener = bind("gateway API", cfg.listen.api.bind).await?;
    let admin_listener = bind("admin", cfg.listen.admin).await?;
    let bound = Bound {
        peering: peering_listener
            .local_addr()
            .map_err(|e| StartError::Other(e.to_string()))?,
        api: api_listener
            .local_addr()
            .map_err(|e| StartError::Other(e.to_string()))?,
        admin: admin_listener
            .local_addr()
            .map_err(|e| StartError::Other(e.to_string()))?,
        admin_socket: cfg.admin_socket(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = MeshState {
        me: Arc::new(me.clone()),
        local,
        file: exports_rx.borrow().clone(),
        registered: registered_rx.borrow().clone(),
        applied_file: Arc::default(),
        applied_registered: Arc::default(),
        peers,
        vips,
        routes: Default::default(),
        view_version: 0,
        vip_quota: cfg.vip_quota()?,
        quota_uses: BTreeMap::new(),
        unaddressed: Default::default(),
        degraded: None,
        kube_addrs: BTreeMap::new(),
    };
    let local_version = state.local.version;
    let links = state
        .peers
        .keys()
        .map(|c| (c.clone(), Default::default()))
        .collect();
    let metrics = Metrics::default();
    // Export starts lazily: a collector that is down costs dropped spans, never the start.
    let tracing = crate::telemetry::Tracing::start(
        &cfg.tracing,
        "isthmus-federation",
        vec![crate::telemetry::KeyValue::new(
            "isthmus.cluster",
            cfg.cluster.to_string(),
        )],
        metrics.trace_spans_dropped.clone(),
    )
    .map_err(|e| StartError::Other(e.to_string()))?;
    let node = Arc::new(Node {
        cfg: cfg.clone(),
        me: me.clone(),
        td: td.clone(),
        id,
        advertised_peering: cfg
            .listen
            .peering
            .advertise
            .clone()
            .unwrap_or_else(|| bound.peering.to_string()),
        store: store.clone(),
        trust: trust.clone(),
        certs: certs.clone(),
        ca: Mutex::new(ca),
        state: Mutex::new(state),
        local_version: watch::channel(local_version).0,
        view: watch::channel(Arc::new(MeshView::empty(me))).0,
        links: StdMutex::new(links),
        gateways: StdMutex::new(BTreeMap::new()),
        verdicts: watch::channel(0).0,
        sessions: StdMutex::new(BTreeMap::new()),
        metrics: metrics.clone(),
        shutdown: stop_rx.clone(),
        apply: StdMutex::default(),
        traffic: Default::default(),
        kube: kube_report.clone(),
        tracing,
    });

    // Gateways registered before a restart (leases still alive).
    {
        let mut state = node.state.lock().await;
        let pending = crate::node::gateways::LbAddress::Pending("starting".into());
        state.local.gateways =
            crate::node::gateways::read(&store.list(keys::GATEWAYS).await?, &pending).advertised;
        state.refresh_local(&store, now_ms()).await?;
        let stale = node.stale_peers();
        // Stored state that no longer fits the VIP ranges starts degraded, never not at all.
        state.install_what_fits(&stale, now_ms()).await?;
        node.publish(&mut state);
    }

    let mut tasks = Vec::new();
    let alpn: &[&[u8]] = &[b"h2"];
    let peering_tls = tls::server_config(
        &certs,
        SpiffeClientVerifier::new(trust.clone(), Accept::peers_of(td.clone()))
            .with_mandatory(false)
            .into_arc(),
        alpn,
    )
    .map_err(|e| StartError::Other(e.to_string()))?;
    let api_tls = tls::server_config(
        &certs,
        SpiffeClientVerifier::new(trust.clone(), Accept::only(td.clone()))
            .with_mandatory(false)
            .into_arc(),
        alpn,
    )
    .map_err(|e| StartError::Other(e.to_string()))?;

    let peering_svc = PeeringServer::new(PeeringService { node: node.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = transport::tls_incoming(peering_listener, peering_tls, HANDSHAKE_TIMEOUT);
    let mut stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(peering_svc)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "peering server failed");
        }
    }));

    let gw_svc = GatewayControlServer::new(crate::gwapi::GatewayService::new(node.clone()));
    let reg_svc = RegistryServer::new(registry);
    let incoming = transport::tls_incoming(api_listener, api_tls, HANDSHAKE_TIMEOUT);
    let mut stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .add_service(gw_svc)
            .add_service(reg_svc)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "gateway API server failed");
        }
    }));

    // Admin HTTP (read-only) and the admin socket (state-changing).
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    #[cfg(feature = "kubernetes")]
    let kube_imports = crate::kubernetes::imports::ImportMetrics::default();
    #[cfg(feature = "kubernetes")]
    kube_imports.register(&mut registry);
    node.store.register_metrics(&mut registry);
    #[cfg(feature = "kubernetes")]
    if let Some(k) = &kube_exports {
        k.metrics.register(&mut registry);
    }
    if let Some(extra) = extra {
        extra(&mut registry);
    }
    let dump_node = node.clone();
    let ready_node = node.clone();
    let http_state = AdminHttpState {
        registry: Arc::new(registry),
        readiness: Arc::new(move || {
            if ready_node.certs.expires_at().is_none() {
                return Err("no certificate yet".into());
            }
            Ok(())
        }),
        config_dump: Arc::new(move || crate::node::admin_ops::config_dump(&dump_node)),
    };
    // The dashboard: its page at `/ui`, the read-only document it polls.
    let dashboard = Arc::new(crate::node::dashboard::Dashboard::new(node.clone()));
    let routes = vec![JsonRoute {
        path: crate::admin::ui::STATE_PATH,
        handler: Arc::new(move |_query| (hyper::StatusCode::OK, dashboard.state())),
    }];
    let mut stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let assets = &crate::admin::ui::ASSETS;
        let _ = serve_admin_http_routes(admin_listener, http_state, routes, assets, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    }));
    let handler = Arc::new(crate::node::admin_ops::AdminOps {
        node: node.clone(),
        bound: bound.clone(),
    });
    let socket = bound.admin_socket.clone();
    let mut stop = stop_rx.clone();
    // Bound before `start` returns, so the ready line means the admin socket accepts calls (an
    // async fn's body, bind included, runs only when first polled).
    let admin_socket = bind_admin_socket(&socket)
        .await
        .map_err(|e| StartError::Other(format!("admin socket: {e}")))?;
    tasks.push(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = admin_socket.serve(handler, shutdown).await {
            tracing::error!(error = %e, path = %socket.display(), "admin socket failed");
        }
    }));

    // Background loops.
    tasks.push(tokio::spawn(crate::node::apply::follow_sources(
        node.clone(),
        exports_rx,
        registered_rx,
        file_stats,
    )));
    let (lb, lb_watch) = crate::node::gateways::lb_source(&cfg);
    tasks.extend(lb_watch);
    tasks.push(tokio::spawn(crate::node::gateways::follow(
        node.clone(),
        lb,
    )));
    #[cfg(feature = "kubernetes")]
    if let Some(k) = kube_exports {
        let clusterset = crate::node::clusterset::follow(node.clone());
        tasks.push(tokio::spawn(
            k.write_status(node.me.cluster.clone(), clusterset),
        ));
    }
    // Kubernetes imports: ServiceImports and derived Services (starts without the API server).
    #[cfg(feature = "kubernetes")]
    if let Some(k) = cfg.kubernetes.as_ref().filter(|k| k.imports) {
        let started = crate::kubernetes::imports::start(node.clone(), k.clone(), kube_imports)
            .await
            .map_err(StartError::Other)?;
        tasks.extend(started);
    }
    tasks.push(tokio::spawn(renew_own_certificate(node.clone())));
    tasks.push(tokio::spawn(crate::node::admin_ops::rotation_driver(
        node.clone(),
    )));

    // Dial the peers we dial.
    let dialed: Vec<_> = {
        let state = node.state.lock().await;
        state
            .peers
            .values()
            .filter(|p| p.record.dial_address.is_some())
            .map(|p| p.record.cluster.clone())
            .collect()
    };
    for peer in dialed {
        spawn_dialer(node.clone(), peer);
    }
    tracing::info!(peering = %bound.peering, api = %bound.api, admin = %bound.admin, socket = %bound.admin_socket.display(), "federation running");
    Ok(Running {
        node,
        bound,
        stop: stop_tx,
        tasks,
    })
}

/// Renews this federation's own certificate at half its lifetime (and right after a signing
/// switch), so peers never see an expired or soon-untrusted certificate.
async fn renew_own_certificate(node: Arc<Node>) {
    let mut stop = node.shutdown.clone();
    loop {
        let lifetime = node.ca.lock().await.leaf_lifetime();
        let wait = (lifetime / 2).max(Duration::from_millis(500));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = renew_now(&node).await {
            tracing::error!(error = %e, "renewing the federation certificate failed; retrying");
        }
    }
}

pub async fn renew_now(node: &Node) -> Result<(), String> {
    let (cert, key) = node
        .ca
        .lock()
        .await
        .issue_own(&node.id)
        .map_err(|e| e.to_string())?;
    node.certs
        .set_from_pem(&cert.chain_pem, &key)
        .map_err(|e| e.to_string())?;
    node.metrics
        .certificates_issued
        .get_or_create(&crate::metrics::ReasonLabels {
            reason: "federation".into(),
        })
        .inc();
    Ok(())
}
