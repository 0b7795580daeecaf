//! The watches behind the export source: kube-rs watchers feeding reflector stores (never
//! polling) for ServiceExports, Services and EndpointSlices, one per configured namespace (or
//! one over all namespaces). Every store change marks a shared `watch` channel; the source and
//! the status writer batch those marks.
//!
//! A failing watch (403 from a revoked verb, the API server down, 410 Gone) is logged once per
//! distinct problem, naming the verb and resource, counted in
//! `isthmus_federation_kubernetes_watch_errors_total{resource}`, and retried with backoff
//! (200 ms doubling to 5 s); it never ends the federation. After a 410 the watcher relists, and
//! the store swaps in the new list whole when it completes (no duplicate, nothing lost).
//!
//! Must not: interpret the objects (see [`super::build`]).

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::metrics::{ExportMetrics, ResourceLabels};
use super::set::SERVICE_NAME_LABEL;
use crate::kubernetes::mcs::ServiceExport;
use crate::kubernetes::report::KubeReport;

pub const RETRY_MIN: Duration = Duration::from_millis(200);
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// The stores, and the signals the watches give.
#[derive(Clone)]
pub struct Watched {
    pub exports: Vec<Store<ServiceExport>>,
    pub services: Vec<Store<Service>>,
    pub slices: Vec<Store<EndpointSlice>>,
    /// Marked on every change of any store.
    pub changed: watch::Receiver<()>,
    /// True once every watch has listed its objects once.
    pub synced: watch::Receiver<bool>,
}

impl Watched {
    pub fn export_objects(&self) -> Vec<Arc<ServiceExport>> {
        self.exports.iter().flat_map(Store::state).collect()
    }
    pub fn service_objects(&self) -> Vec<Arc<Service>> {
        self.services.iter().flat_map(Store::state).collect()
    }
    pub fn slice_objects(&self) -> Vec<Arc<EndpointSlice>> {
        self.slices.iter().flat_map(Store::state).collect()
    }
}

struct Shared {
    changed: watch::Sender<()>,
    synced: watch::Sender<bool>,
    pending: AtomicUsize,
    metrics: ExportMetrics,
    report: KubeReport,
}

/// Starts the watches in `namespaces` (all when empty). They run until every clone of the
/// returned receivers is dropped.
pub fn start(
    client: &kube::Client,
    namespaces: &[String],
    metrics: ExportMetrics,
    report: KubeReport,
) -> Watched {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let (changed, changed_rx) = watch::channel(());
    let (synced, synced_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        changed,
        synced,
        pending: AtomicUsize::new(scopes.len() * 3),
        metrics,
        report,
    });
    shared.report.exports_synced(false);
    let mut w = Watched {
        exports: Vec::new(),
        services: Vec::new(),
        slices: Vec::new(),
        changed: changed_rx,
        synced: synced_rx,
    };
    for ns in &scopes {
        let (a, scope) = api(client, ns);
        w.exports
            .push(spawn(a, watcher::Config::default(), scope, &shared));
        let (a, scope) = api(client, ns);
        w.services
            .push(spawn(a, watcher::Config::default(), scope, &shared));
        let (a, scope) = api(client, ns);
        // Only slices that belong to a Service.
        let cfg = watcher::Config::default().labels(SERVICE_NAME_LABEL);
        w.slices.push(spawn(a, cfg, scope, &shared));
    }
    w
}

fn api<K>(client: &kube::Client, ns: &Option<String>) -> (Api<K>, String)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => (Api::namespaced(client.clone(), ns), ns.clone()),
        None => (Api::all(client.clone()), "all namespaces".to_owned()),
    }
}

fn spawn<K>(api: Api<K>, config: watcher::Config, scope: String, shared: &Arc<Shared>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, mut writer) = reflector::store::<K>();
    let shared = shared.clone();
    let resource = K::plural(&()).into_owned();
    tokio::spawn(async move {
        let mut stream = watcher(api, config).boxed();
        let mut backoff = RETRY_MIN;
        let mut problem: Option<String> = None;
        let mut synced = false;
        let labels = ResourceLabels {
            resource: resource.clone(),
        };
        let area = format!("exports: {resource} in {scope}");
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = shared.changed.closed() => return,
            };
            let event = match item {
                None => return,
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    shared.metrics.watch_error(&resource);
                    let text = describe(&e, &resource, &scope);
                    if problem.as_deref() != Some(text.as_str()) {
                        tracing::warn!(resource = %resource, scope = %scope,
                            retry_in_ms = backoff.as_millis() as u64, "kubernetes: {text}");
                        shared.report.problem(&area, &text);
                        problem = Some(text);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
            };
            // Only progress resets the backoff: the watcher announces `Init` before it even
            // tries to list, so resetting on it would retry a down API server every 200 ms.
            if !matches!(event, watcher::Event::Init) {
                backoff = RETRY_MIN;
            }
            let event = event.modify(|o| o.managed_fields_mut().clear());
            writer.apply_watcher_event(&event);
            match event {
                watcher::Event::Init | watcher::Event::InitApply(_) => continue,
                watcher::Event::InitDone => {
                    if let Some(p) = problem.take() {
                        tracing::info!(resource = %resource, scope = %scope, was = %p,
                            "kubernetes: watch recovered; objects relisted");
                        shared.report.clear(&area);
                    }
                    if !synced {
                        synced = true;
                        if shared.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                            tracing::info!("kubernetes: every watch has listed its objects");
                            shared.metrics.synced.set(1);
                            shared.report.exports_synced(true);
                            shared.synced.send_replace(true);
                        }
                    }
                }
                watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                    if let Some(p) = problem.take() {
                        tracing::info!(resource = %resource, scope = %scope, was = %p,
                            "kubernetes: watch recovered");
                        shared.report.clear(&area);
                    }
                    shared.metrics.watch_events.get_or_create(&labels).inc();
                }
            }
            shared.changed.send_replace(());
        }
    });
    reader
}

/// One line naming the verb, the resource, the scope and what to do.
pub fn describe(e: &watcher::Error, resource: &str, scope: &str) -> String {
    let (verb, err) = match e {
        watcher::Error::InitialListFailed(err) => ("list", Some(err)),
        watcher::Error::WatchStartFailed(err) | watcher::Error::WatchFailed(err) => {
            ("watch", Some(err))
        }
        watcher::Error::WatchError(status) => {
            if status.code == 410 {
                return format!(
                    "watch {resource} in {scope}: 410 Gone (the resource version is too old); \
                     relisting"
                );
            }
            return format!(
                "watch {resource} in {scope}: the API server answered {} {}: {}",
                status.code, status.reason, status.message
            );
        }
        watcher::Error::NoResourceVersion => {
            return format!("watch {resource} in {scope}: no resourceVersion in the list");
        }
    };
    match err {
        Some(kube::Error::Api(status)) if status.code == 403 => format!(
            "{verb} {resource} in {scope} is forbidden (403: {}); grant the federation's service \
             account the verbs list and watch on {resource} (see docs/kubernetes.md, RBAC)",
            status.message
        ),
        Some(kube::Error::Api(status)) => format!(
            "{verb} {resource} in {scope}: the API server answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        Some(other) => format!(
            "{verb} {resource} in {scope} failed: {}; is the API server reachable?",
            crate::kubernetes::client::error_chain(other)
        ),
        None => format!("{verb} {resource} in {scope} failed"),
    }
}
