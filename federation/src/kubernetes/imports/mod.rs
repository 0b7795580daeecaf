//! Imports on Kubernetes (`kubernetes.imports`): for every clusterset service this cluster
//! sees, a `ServiceImport`, a derived selector-less `Service` (and one per serving cluster for
//! `<cluster>.<svc>.<ns>`) whose ClusterIP DNS answers, and its `EndpointSlice` pointing at the
//! live gateways' pod IPs on the service's target ports (docs/kubernetes.md, Imports).
//!
//! - [`ports`]: target-port allocation, persisted like VIPs.
//! - [`naming`]: names, labels, the managed-by rule.
//! - [`desired`]: what should exist, from the import state (pure).
//! - [`merge`]: one desired object against the existing one (pure).
//! - [`apply`]: create/replace/delete against the API server.
//! - [`writer`]: the level-based loop and its backoff.
//! - [`trigger`]: what wakes it (notifications, debounced; a slow resync as a backstop).
//! - [`problems`]: metrics and problems said once.
//! - [`event`]: the Event on an object holding a name we need.
//!
//! Must not: touch an object without Isthmus's managed-by label; stop the federation when the
//! API server is unreachable or refuses.

pub mod apply;
pub mod desired;
pub mod event;
pub mod merge;
pub mod naming;
pub mod ports;
pub mod problems;
pub mod trigger;
pub mod writer;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::kubernetes::config::KubernetesConfig;
use crate::node::{Node, keys};
use crate::store::Store;

pub use problems::ImportMetrics;

/// Loads the target ports (a store error or a bad range stops the start: it is a config or
/// store problem, not the API server's) and starts the writer and its triggers.
pub async fn start(
    node: Arc<Node>,
    cfg: KubernetesConfig,
    metrics: ImportMetrics,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let range = cfg.target_port_range().map_err(|e| e.to_string())?;
    let pool = ports::PortPool::new(range, node.cfg.vips.quarantine);
    let table = ports::PortTable::load(node.store.clone(), pool)
        .await
        .map_err(|e| e.to_string())?;
    let wake = Arc::new(Notify::new());
    let w = writer::Writer::new(node.clone(), cfg.clone(), table, metrics, wake.clone());
    Ok(vec![
        tokio::spawn(w.run()),
        tokio::spawn(follow_namespaces(node.clone(), cfg, wake.clone())),
        tokio::spawn(follow_gateways(node, wake)),
    ])
}

/// Wakes the writer when namespaces change (a namespace created later gets its objects).
async fn follow_namespaces(node: Arc<Node>, cfg: KubernetesConfig, wake: Arc<Notify>) {
    let mut stop = node.shutdown.clone();
    let client = loop {
        match crate::kubernetes::client::client(&cfg).await {
            Ok(c) => break c,
            Err(_) => {
                // The writer reports the problem; try again later.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    let stream = watcher(Api::<Namespace>::all(client), watcher::Config::default());
    let mut stream = std::pin::pin!(kube::runtime::WatchStreamExt::default_backoff(stream));
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone)) => {
                    wake.notify_one();
                }
                Some(_) => {}
                None => return,
            },
            _ = stop.changed() => return,
        }
    }
}

/// Wakes the writer when gateway registrations change (a lease expiring removes one).
async fn follow_gateways(node: Arc<Node>, wake: Arc<Notify>) {
    let mut stop = node.shutdown.clone();
    loop {
        let events = match node.store.revision().await {
            Ok(rev) => node.store.watch(keys::GATEWAYS, rev).await.ok(),
            Err(_) => None,
        };
        if let Some(mut events) = events {
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Some(Ok(_)) => wake.notify_one(),
                        _ => break,
                    },
                    _ = stop.changed() => return,
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}
