//! The target-port listeners (Kubernetes mode): one on `<pod IP>:<target port>` for every target
//! port the federation allocated for an import, instead of VIP listeners. A client's
//! `ClusterIP:port` of a derived Service arrives here (its EndpointSlice points at the pod IP
//! and target port), and is served exactly as on a VIP: same protocols, policies and failover
//! ([`Origin::TargetPort`] resolves to the same target a VIP would).
//!
//! Reconciled on every snapshot: a new target port starts listening, one no longer in the table
//! stops (its open connections finish; requests on them get 503 and tunnels close through
//! [`crate::live`]), others are left alone. A port that cannot be bound (taken by another process
//! in the pod) is logged once per port and reason, counted, shown in `/config_dump`, and retried
//! every few seconds; the gateway keeps serving everything else.
//!
//! Must not: bind VIPs, or decide what a port carries (the table does).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::listeners::accept_loop;
use super::{Origin, Outbound};
use crate::fair::FairLimit;
use crate::metrics::Metrics;
use crate::serve::Drain;
use crate::table::Snapshot;

/// How often binds that failed are tried again while any failed.
const RETRY: Duration = Duration::from_secs(2);

/// One target port as `/config_dump` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortState {
    /// `<svc>.<ns>:<port>` or `<cluster>.<svc>.<ns>:<port>`.
    pub carries: String,
    pub listening: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every target port of the current snapshot, by port.
pub type TargetPortStates = BTreeMap<u16, PortState>;

/// The target-port listeners currently open on the pod IP.
pub struct TargetPortListeners {
    outbound: Arc<Outbound>,
    pod_ip: IpAddr,
    limit: FairLimit,
    drain: Drain,
    /// Target port → (whether it is spoken as HTTP, the accept task). A port whose protocol
    /// changes between HTTP and raw TCP is closed and opened again.
    open: HashMap<u16, (bool, JoinHandle<()>)>,
    /// Ports that failed to bind, with the error (logged once per port and error).
    failed: HashMap<u16, String>,
}

/// What the listeners should be: target port → spoken as HTTP.
fn wanted(snap: &Snapshot) -> HashMap<u16, bool> {
    snap.target_ports
        .iter()
        .map(|(port, route)| (*port, route.port.protocol.is_http()))
        .collect()
}

impl TargetPortListeners {
    pub fn new(outbound: Arc<Outbound>, pod_ip: IpAddr, limit: FairLimit, drain: Drain) -> Self {
        Self {
            outbound,
            pod_ip,
            limit,
            drain,
            open: HashMap::new(),
            failed: HashMap::new(),
        }
    }

    /// Opens listeners for new target ports (and retries failed ones), closes those no longer
    /// in `snap`.
    pub async fn reconcile(&mut self, snap: &Snapshot) {
        let want = wanted(snap);
        let stale: Vec<u16> = self
            .open
            .iter()
            .filter(|(port, (http, _))| want.get(port) != Some(http))
            .map(|(port, _)| *port)
            .collect();
        for port in stale {
            let Some((_, task)) = self.open.remove(&port) else {
                continue;
            };
            tracing::info!(pod_ip = %self.pod_ip, target_port = port, "closing target-port listener");
            task.abort();
            // The listener is dropped with its accept task: wait for it, so a port that changed
            // protocol is bound again at once. Connections it accepted run in tasks of their
            // own and finish.
            let _ = task.await;
        }
        self.failed.retain(|port, _| want.contains_key(port));
        for (port, http) in want {
            if self.open.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(self.pod_ip, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    if self.failed.remove(&port).is_some() {
                        tracing::info!(%addr, "target-port listener open after earlier failures");
                    } else {
                        tracing::debug!(%addr, http, "target-port listener open");
                    }
                    let task = tokio::spawn(accept_loop(
                        self.outbound.clone(),
                        listener,
                        Origin::TargetPort(port),
                        !http,
                        self.limit.clone(),
                        self.drain.clone(),
                    ));
                    self.open.insert(port, (http, task));
                }
                Err(e) => {
                    let reason = e.to_string();
                    if self.failed.get(&port) != Some(&reason) {
                        let carries = snap
                            .target_ports
                            .get(&port)
                            .map(|r| r.describe())
                            .unwrap_or_default();
                        tracing::error!(%addr, service = %carries, error = %reason, "cannot listen on a target port: clients of this import reaching this pod get connection refused; is another process in the pod using the port, or is kubernetes.target_ports overlapping the gateway's own ports? retrying every {}s", RETRY.as_secs());
                        self.failed.insert(port, reason);
                    }
                }
            }
        }
    }

    /// Every target port of `snap` and whether it is listened on.
    pub fn states(&self, snap: &Snapshot) -> TargetPortStates {
        snap.target_ports
            .iter()
            .map(|(port, route)| {
                (
                    *port,
                    PortState {
                        carries: route.describe(),
                        listening: self.open.contains_key(port),
                        error: self.failed.get(port).cloned(),
                    },
                )
            })
            .collect()
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    pub fn failed_count(&self) -> usize {
        self.failed.len()
    }

    /// Follows the table until draining starts: reconciles on every snapshot (and every
    /// [`RETRY`] while a bind failed), publishing the ports' states to `states`.
    pub async fn follow(
        mut self,
        mut table: watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<Metrics>,
        states: watch::Sender<Arc<TargetPortStates>>,
    ) {
        let drain = self.drain.clone();
        loop {
            let snap = table.borrow_and_update().clone();
            self.reconcile(&snap).await;
            metrics.target_port_listeners.set(self.open_count() as i64);
            metrics
                .target_port_listeners_failed
                .set(self.failed_count() as i64);
            let now = self.states(&snap);
            states.send_if_modified(|cur| {
                let changed = **cur != now;
                if changed {
                    *cur = Arc::new(now);
                }
                changed
            });
            let retry = async {
                if self.failed.is_empty() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(RETRY).await;
            };
            tokio::select! {
                changed = table.changed() => if changed.is_err() { return },
                () = retry => {}
                () = drain.signaled() => return,
            }
        }
    }
}

impl Drop for TargetPortListeners {
    fn drop(&mut self) {
        for (_, task) in self.open.values() {
            task.abort();
        }
    }
}
