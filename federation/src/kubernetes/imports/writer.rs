//! The import writer's loop. Level-based: every round computes what should exist from the
//! federation's current import state, allocates target ports (store only: works while the API
//! server is down) and installs them in the routes, then lists what Isthmus owns (by its label)
//! and creates, replaces and deletes until the two agree, and installs the ClusterIPs it read.
//! A round runs when something it depends on changes (see [`super::trigger`]: the mesh view,
//! the gateways' verdicts, registrations, namespaces; bursts debounced), at least every
//! [`RESYNC`] as a backstop, and after a failure with backoff.
//!
//! Must not: crash or stop on API errors; touch objects without the managed-by label.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use tokio::sync::Notify;

use super::apply::{self, Owned, Taken, Written};
use super::desired::{self, ClusterIps, Import};
use super::naming;
use super::ports::{PortError, PortTable};
use super::problems::{ImportMetrics, Problems, hint, reason_of};
use super::trigger::Triggers;
use crate::kubernetes::config::KubernetesConfig;
use crate::kubernetes::mcs::ServiceImport;
use crate::mesh::KubeAddrs;
use crate::metrics::ReasonLabels;
use crate::model::ServiceKey;
use crate::node::{Node, keys, now_ms};
use crate::store::Store;

/// A full round at least this often: a backstop for changes no notification carries (an
/// operator editing or deleting a derived object).
pub const RESYNC: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// The longest wait between retries while the API server fails: short enough that a server
/// coming back is written to within seconds, long enough not to spin.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct Writer {
    pub node: Arc<Node>,
    pub cfg: KubernetesConfig,
    pub ports: PortTable,
    pub metrics: ImportMetrics,
    pub wake: Arc<Notify>,
    problems: Problems,
    client: Option<kube::Client>,
    cluster_ips: ClusterIps,
    /// Taken names an Event was recorded for (by kind, namespace, name, uid).
    recorded: BTreeSet<Taken>,
}

impl Writer {
    pub fn new(
        node: Arc<Node>,
        cfg: KubernetesConfig,
        ports: PortTable,
        metrics: ImportMetrics,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            problems: Problems::new(node.kube.clone()),
            node,
            cfg,
            ports,
            metrics,
            wake,
            client: None,
            cluster_ips: ClusterIps::new(),
            recorded: BTreeSet::new(),
        }
    }

    pub async fn run(mut self) {
        let mut triggers = Triggers {
            view: self.node.view.subscribe(),
            verdicts: self.node.verdicts.subscribe(),
            wake: self.wake.clone(),
            stop: self.node.shutdown.clone(),
        };
        let mut failures: u32 = 0;
        loop {
            triggers.seen();
            let ok = self.round().await;
            let more = if ok {
                failures = 0;
                triggers.next(RESYNC).await.is_some()
            } else {
                // Changes meanwhile do not cut the backoff short (the next round reads them).
                failures = failures.saturating_add(1);
                let wait = (BACKOFF_MIN * 2u32.pow((failures - 1).min(8))).min(BACKOFF_MAX);
                triggers.pause(wait).await
            };
            if !more {
                return;
            }
        }
    }

    /// One round; whether it fully succeeded.
    async fn round(&mut self) -> bool {
        let view = self.node.view.borrow().clone();
        let unhealthy = self.unhealthy();
        let imports = desired::imports(&view, &self.cfg.namespaces, &unhealthy);
        let mut ok = self.allocate(&imports).await;
        self.install(&imports).await;
        match self.write(&imports).await {
            Ok(()) => self.problems.clear("api"),
            Err(e) => {
                ok = false;
                let reason = reason_of(&e);
                self.count(reason);
                let text = crate::kubernetes::client::error_chain(&e);
                self.problems
                    .report("api", format!("{text} ({})", hint(reason)));
            }
        }
        self.install(&imports).await;
        ok
    }

    fn count(&self, reason: &str) {
        self.metrics
            .errors
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// The gateways' verdicts, as `"<cluster>:<ns>/<svc>"` reported unhealthy.
    fn unhealthy(&self) -> HashSet<String> {
        let gws = self.node.gateways.lock().unwrap_or_else(|p| p.into_inner());
        gws.values()
            .flat_map(|g| g.health.iter())
            .filter(|(_, ok)| !**ok)
            .map(|(k, _)| k.clone())
            .collect()
    }

    async fn allocate(&mut self, imports: &[Import]) -> bool {
        let names = desired::target_port_names(imports);
        let result = self.ports.set_active(&names, now_ms()).await;
        self.metrics
            .target_ports_free
            .set(i64::from(self.ports.pool().free(now_ms())));
        match result {
            Ok(_) => {
                self.problems.clear("target_ports");
                true
            }
            Err(e) => {
                let reason = match e {
                    PortError::Exhausted { .. } => "target_ports_exhausted",
                    _ => "store",
                };
                self.count(reason);
                self.problems.report("target_ports", e.to_string());
                false
            }
        }
    }

    /// Installs each import's local face in its route (and clears it from routes no longer
    /// imported); republishes only when something changed.
    async fn install(&self, imports: &[Import]) {
        let mut wanted: BTreeMap<ServiceKey, Arc<KubeAddrs>> = BTreeMap::new();
        for i in imports {
            let a = desired::kube_addrs(i, self.ports.pool(), &self.cluster_ips);
            wanted.insert(i.key.clone(), Arc::new(a));
        }
        let mut state = self.node.state.lock().await;
        let mut changes: Vec<(ServiceKey, Option<Arc<KubeAddrs>>)> = state
            .kube_addrs
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .map(|k| (k.clone(), None))
            .collect();
        for (k, a) in wanted {
            if state.kube_addrs.get(&k) != Some(&a) {
                changes.push((k, Some(a)));
            }
        }
        if !changes.is_empty() && state.set_kube_addrs(changes) {
            self.node.publish(&mut state);
        }
    }

    async fn client(&mut self) -> Result<kube::Client, kube::Error> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        match crate::kubernetes::client::client(&self.cfg).await {
            Ok(c) => {
                self.problems.clear("client");
                self.client = Some(c.clone());
                Ok(c)
            }
            Err(e) => {
                self.count("client");
                self.problems.report("client", e.to_string());
                Err(kube::Error::Api(Box::new(
                    kube::core::Status::failure(&e.to_string(), "ClientUnavailable").with_code(503),
                )))
            }
        }
    }

    /// The live gateways' pod IPs (registrations are leased: an expired one is gone).
    async fn gateways(&self) -> Vec<IpAddr> {
        let Ok(items) = self.node.store.list(keys::GATEWAYS).await else {
            return Vec::new();
        };
        let mut ips: Vec<IpAddr> = items
            .iter()
            .filter_map(|(_, v)| {
                serde_json::from_slice::<crate::gwapi::service::GatewayRegistration>(v)
                    .ok()?
                    .local
            })
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    async fn write(&mut self, imports: &[Import]) -> Result<(), kube::Error> {
        let client = self.client().await?;
        let gateways = self.gateways().await;
        let namespaces: BTreeSet<String> = Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        let owned = list_owned(&client).await?;
        let mut desired_by_ns: BTreeMap<String, Vec<desired::Desired>> = BTreeMap::new();
        for i in imports {
            if !namespaces.contains(i.key.namespace.as_str()) {
                continue;
            }
            let addrs = desired::kube_addrs(i, self.ports.pool(), &self.cluster_ips);
            let d = desired::desired(i, &addrs, &gateways);
            desired_by_ns
                .entry(d.namespace.clone())
                .or_default()
                .push(d);
        }
        let empty = Owned::default();
        let mut written = Written::default();
        let mut ips = ClusterIps::new();
        let mut first_error: Option<kube::Error> = None;
        let all_ns: BTreeSet<&String> = desired_by_ns.keys().chain(owned.keys()).collect();
        for ns in all_ns {
            let mine = owned.get(ns).unwrap_or(&empty);
            let wanted: Vec<&desired::Desired> =
                desired_by_ns.get(ns).into_iter().flatten().collect();
            // Deletions first: an ended import is gone quickly even when another one fails.
            let keep = apply::wanted_names(&wanted);
            match apply::delete_unwanted(&client, ns, mine, &keep).await {
                Ok(n) => {
                    self.metrics.deleted.inc_by(n as u64);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
            for d in wanted {
                let mut out = Written::default();
                let r = apply::write(&client, d, mine, &mut out).await;
                for (name, ip) in out.cluster_ips {
                    ips.insert((ns.clone(), name), ip);
                }
                written.taken.extend(out.taken);
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
        }
        // Keep what failed to be read this round rather than forget it.
        for (k, v) in &self.cluster_ips {
            ips.entry(k.clone()).or_insert(*v);
        }
        ips.retain(|(ns, _), _| desired_by_ns.contains_key(ns));
        self.cluster_ips = ips;
        self.metrics
            .service_imports
            .set(desired_by_ns.values().map(Vec::len).sum::<usize>() as i64);
        self.report_taken(&client, written.taken).await;
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Names held by someone else's objects: counted, logged once, and an Event on the object.
    async fn report_taken(&mut self, client: &kube::Client, taken: Vec<Taken>) {
        self.metrics.names_taken.set(taken.len() as i64);
        if taken.is_empty() {
            self.problems.clear("names_taken");
        } else {
            let list: Vec<String> = taken
                .iter()
                .map(|t| format!("{} {}/{}", t.kind, t.namespace, t.name))
                .collect();
            self.problems.report(
                "names_taken",
                format!(
                    "left alone, not managed by Isthmus (no {}={} label): {}",
                    naming::LABEL_MANAGED_BY,
                    crate::kubernetes::MANAGED_BY,
                    list.join(", ")
                ),
            );
        }
        let now: BTreeSet<Taken> = taken.into_iter().collect();
        for t in now.difference(&self.recorded.clone()) {
            match super::event::record_event(client, t).await {
                Ok(()) => {
                    self.recorded.insert(t.clone());
                }
                Err(e) => {
                    self.count(reason_of(&e));
                }
            }
        }
        self.recorded.retain(|t| now.contains(t));
    }
}

/// Everything labelled as ours, by namespace.
async fn list_owned(client: &kube::Client) -> Result<BTreeMap<String, Owned>, kube::Error> {
    let lp = ListParams::default().labels(&naming::managed_selector());
    let mut by_ns: BTreeMap<String, Owned> = BTreeMap::new();
    fn ns_name(m: &ObjectMeta) -> Option<(String, String)> {
        Some((m.namespace.clone()?, m.name.clone()?))
    }
    for si in Api::<ServiceImport>::all(client.clone())
        .list(&lp)
        .await?
        .items
    {
        if let Some((ns, name)) = ns_name(&si.metadata) {
            by_ns.entry(ns).or_default().imports.insert(name, si);
        }
    }
    for s in Api::<Service>::all(client.clone()).list(&lp).await?.items {
        if let Some((ns, name)) = ns_name(&s.metadata) {
            by_ns.entry(ns).or_default().services.insert(name, s);
        }
    }
    for s in Api::<EndpointSlice>::all(client.clone())
        .list(&lp)
        .await?
        .items
    {
        if let Some((ns, name)) = ns_name(&s.metadata) {
            by_ns.entry(ns).or_default().slices.insert(name, s);
        }
    }
    Ok(by_ns)
}
