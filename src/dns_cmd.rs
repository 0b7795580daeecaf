//! Global DNS wiring: next to a federation (`isthmus federation`, from its view channel), or on
//! its own (`isthmus dns`, from a running federation's admin socket or a saved catalog file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use isthmus_dns::{DnsMetrics, DnsServer, Inputs, Verdicts};
use isthmus_federation::config::{DnsConfig, FederationConfig};
use isthmus_federation::mesh::MeshView;
use isthmus_federation::node::Node;
use serde_json::{Value, json};
use tokio::sync::watch;

/// The DNS section when DNS should run.
pub fn enabled(cfg: &FederationConfig) -> Option<&DnsConfig> {
    cfg.dns.as_ref().filter(|d| d.enabled)
}

/// Starts DNS from a running federation's view; gateway verdicts are read from the node once a
/// second (they change rarely; the query path never waits for them).
pub async fn start_beside(
    dns: &DnsConfig,
    node: &Arc<Node>,
    metrics: DnsMetrics,
) -> anyhow::Result<DnsServer> {
    let (verdicts_tx, verdicts) = watch::channel(Arc::new(Verdicts::default()));
    let node_for_verdicts = node.clone();
    let mut stop = node.shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
            let latest = {
                let gws = node_for_verdicts
                    .gateways
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                Verdicts::from_gateway_reports(gws.values().flat_map(|g| g.health.iter()))
                    .with_unserved(
                        isthmus_federation::node::unserved_vips(&gws)
                            .into_iter()
                            .map(|(ip, u)| (ip, u.service)),
                    )
            };
            verdicts_tx.send_if_modified(|cur| {
                let changed = **cur != latest;
                if changed {
                    *cur = Arc::new(latest);
                }
                changed
            });
        }
    });
    let inputs = Inputs {
        views: node.view.subscribe(),
        verdicts,
        metrics,
    };
    DnsServer::start(dns, inputs)
        .await
        .context("starting DNS (the dns: section of the federation config)")
}

/// Where `isthmus dns` reads the mesh view from.
pub enum ViewSource {
    AdminSocket(PathBuf),
    File(PathBuf),
}

/// What identifies the view last served: its version (admin socket) or the hash of the file's
/// bytes, and for a file its size, modification time and inode, so that an unchanged file is not
/// even read. Polling must stay cheap: it shares the CPU with the query path.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Seen {
    key: Option<u64>,
    stamp: Option<(u64, std::time::SystemTime, u64)>,
}

fn file_stamp(meta: &std::fs::Metadata) -> Option<(u64, std::time::SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    Some((meta.len(), meta.modified().ok()?, meta.ino()))
}

/// A new mesh view when the source changed since `seen` (which is updated); `None` when it is
/// the same (nothing is parsed then, and for the admin socket only the view version is asked).
async fn read_view(source: &ViewSource, seen: &mut Seen) -> anyhow::Result<Option<MeshView>> {
    match source {
        ViewSource::AdminSocket(socket) => {
            let call = |op: &'static str| {
                isthmus_federation::admin::admin_call(
                    socket,
                    op,
                    &Value::Null,
                    Duration::from_secs(30),
                )
            };
            let context = || {
                format!(
                    "reading the catalog from the federation's admin socket {} (is the federation running? or pass --snapshot <file>)",
                    socket.display()
                )
            };
            if seen.key.is_some() {
                let status = call("status").await.with_context(context)?;
                if status.get("view_version").and_then(Value::as_u64) == seen.key {
                    return Ok(None);
                }
            }
            let v = call("catalog").await.with_context(context)?;
            let version = v.get("version").and_then(Value::as_u64).unwrap_or(0);
            if seen.key == Some(version) {
                return Ok(None);
            }
            let view = isthmus_dns::view_from_json(&v)
                .map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
            seen.key = Some(version);
            Ok(Some(view))
        }
        ViewSource::File(path) => {
            let stamp = tokio::fs::metadata(path)
                .await
                .ok()
                .and_then(|m| file_stamp(&m));
            if stamp.is_some() && stamp == seen.stamp {
                return Ok(None);
            }
            let text = tokio::fs::read(path)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            let key = {
                use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
                BuildHasherDefault::<DefaultHasher>::default().hash_one(&text)
            };
            seen.stamp = stamp;
            if seen.key == Some(key) {
                return Ok(None);
            }
            let view = isthmus_dns::view_from_json_bytes(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            seen.key = Some(key);
            Ok(Some(view))
        }
    }
}

/// The verdicts this cluster's gateways reported, from the federation's `status` (each
/// gateway's `health`: `"<cluster>:<ns>/<svc>": healthy`).
async fn read_verdicts(socket: &Path) -> anyhow::Result<Verdicts> {
    let status = isthmus_federation::admin::admin_call(
        socket,
        "status",
        &serde_json::Value::Null,
        Duration::from_secs(5),
    )
    .await
    .with_context(|| format!("asking {} for status", socket.display()))?;
    Ok(verdicts_from_status(&status))
}

fn verdicts_from_status(status: &serde_json::Value) -> Verdicts {
    let reports: Vec<(String, bool)> = status["gateways"]
        .as_object()
        .into_iter()
        .flat_map(|gws| gws.values())
        .filter_map(|g| g["health"].as_object())
        .flat_map(|h| h.iter())
        .filter_map(|(k, v)| Some((k.clone(), v.as_bool()?)))
        .collect();
    Verdicts::from_gateway_reports(reports.iter().map(|(k, v)| (k, v)))
}

/// `isthmus dns`: serve DNS on its own until SIGTERM/SIGINT.
pub async fn run_standalone(
    config: &Path,
    snapshot: Option<PathBuf>,
    bind: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    poll: Duration,
) -> anyhow::Result<()> {
    let cfg = FederationConfig::load(config)?;
    let mut dns = cfg.dns.clone().with_context(|| {
        format!(
            "{} has no dns: section: add one (see deploy/examples/federation.yaml)",
            config.display()
        )
    })?;
    if let Some(b) = bind {
        dns.bind = b;
        // The override is checked like the file's value (a wildcard needs dns.nameservers).
        dns.validate()
            .with_context(|| format!("--bind {b} with the dns: section of {}", config.display()))?;
    }
    let source = match snapshot {
        Some(p) => ViewSource::File(p),
        None => ViewSource::AdminSocket(cfg.admin_socket()),
    };
    let mut seen = Seen::default();
    let first = read_view(&source, &mut seen)
        .await?
        .context("no mesh view to serve")?;
    let (views_tx, views) = watch::channel(Arc::new(first));
    let (verdicts_tx, verdicts) = watch::channel(Arc::new(Verdicts::default()));
    let metrics = DnsMetrics::default();
    let server = DnsServer::start(
        &dns,
        Inputs {
            views,
            verdicts,
            metrics: metrics.clone(),
        },
    )
    .await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut bound_metrics = None;
    if let Some(addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        bound_metrics = listener.local_addr().ok();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let dump = serde_json::to_value(&dns)?;
        let state = isthmus_federation::admin::AdminHttpState {
            registry: Arc::new(registry),
            readiness: Arc::new(|| Ok(())),
            config_dump: Arc::new(move || json!({ "dns": dump })),
        };
        let mut stop = stop_rx.clone();
        tokio::spawn(isthmus_federation::admin::serve_admin_http(
            listener,
            state,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
    }
    println!(
        "{}",
        json!({ "ready": { "dns": server.bound.to_string(), "metrics": bound_metrics.map(|a| a.to_string()) } })
    );
    // Follow the source: a new version (admin socket) or a changed file replaces the view.
    let follow = async {
        loop {
            tokio::time::sleep(poll).await;
            match read_view(&source, &mut seen).await {
                Ok(Some(view)) => {
                    views_tx.send_replace(Arc::new(view));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    error = %format!("{e:#}"),
                    "reading the mesh view failed; still serving the last one"
                ),
            }
            // Gateways' verdicts, as the federation holds them: per-cluster and GSLB answers
            // follow them exactly as they do inside `isthmus federation`.
            if let ViewSource::AdminSocket(socket) = &source {
                match read_verdicts(socket).await {
                    Ok(latest) => {
                        verdicts_tx.send_if_modified(|cur| {
                            let changed = **cur != latest;
                            if changed {
                                *cur = Arc::new(latest);
                            }
                            changed
                        });
                    }
                    Err(e) => tracing::warn!(
                        error = %format!("{e:#}"),
                        "reading gateway verdicts failed; keeping the last ones"
                    ),
                }
            }
        }
    };
    tokio::select! {
        _ = follow => {}
        _ = crate::wait_for_signal() => {}
    }
    let _ = stop_tx.send(true);
    server.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use isthmus_federation::node::GatewayInfo;

    use super::*;

    /// The verdicts read from `status` are the ones the gateways reported, in the shape the
    /// federation really serializes them.
    #[test]
    fn verdicts_come_from_the_gateways_reports_in_status() {
        let report = |entries: &[(&str, bool)]| GatewayInfo {
            health: entries
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
            ..GatewayInfo::default()
        };
        let status = json!({ "gateways": {
            "gw-1": report(&[("west:demo/echo", false), ("south:demo/echo", true)]),
            "gw-2": report(&[("south:shop/cart", false)]),
        }});
        let v = verdicts_from_status(&status);
        let says = |cluster: &str, key: &str| {
            v.says_unhealthy(
                &cluster.parse().expect("cluster"),
                &isthmus_federation::model::ServiceKey::parse(key).expect("key"),
            )
        };
        assert!(says("west", "demo/echo"));
        assert!(says("south", "shop/cart"));
        assert!(!says("south", "demo/echo"));
        assert!(verdicts_from_status(&json!({})).is_empty());
    }
}
