//! The outbound listeners: the proxy port, and one listener per imported service VIP and port,
//! reconciled whenever the routing table changes (a new import starts listening, a removed one
//! stops; connections already open finish).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{LocalClient, Origin, Outbound};
use crate::fair::{self, FairLimit};
use crate::h1guard::H1Guard;
use crate::metrics::Metrics;
use crate::serve::{Drain, http_builder, serve_connection};
use crate::table::{Port, Snapshot};

/// Accepts local clients on `listener` until draining starts, within the local listeners' fair
/// share of connection slots.
pub async fn accept_loop(
    outbound: Arc<Outbound>,
    listener: TcpListener,
    origin: Origin,
    tcp: bool,
    limit: FairLimit,
    drain: Drain,
) {
    let builder = Arc::new(http_builder(&outbound.limits, false));
    let label = match origin {
        Origin::Vip(..) => "vip",
        Origin::TargetPort(_) => "target_port",
        Origin::Proxy | Origin::Tunnel(_) => "proxy",
    };
    let serving = drain.clone();
    fair::accept_loop(listener, limit, label, serving, move |stream, remote| {
        let _ = stream.set_nodelay(true);
        let (outbound, builder, drain) = (outbound.clone(), builder.clone(), drain.clone());
        let origin = origin.clone();
        async move {
            if tcp {
                if matches!(origin, Origin::Vip(..) | Origin::TargetPort(_)) {
                    outbound.tcp(stream, origin).await;
                }
                return;
            }
            let client = outbound.local_client(remote);
            serve_local(outbound, stream, origin, client, &builder, &drain).await;
        }
    })
    .await;
}

/// Serves one local client's connection (or a CONNECT tunnel served as HTTP) with the local
/// listeners' protections: the HTTP/1 smuggling guard and header-read timeout, then every limit
/// of [`serve_connection`].
pub(super) async fn serve_local<IO>(
    outbound: Arc<Outbound>,
    stream: IO,
    origin: Origin,
    client: LocalClient,
    builder: &hyper_util::server::conn::auto::Builder<crate::cancel::StreamExecutor>,
    drain: &Drain,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = outbound.limits.clone();
    let guarded =
        H1Guard::new(stream, limits.h1_head_bytes()).with_head_timeout(limits.header_read_timeout);
    serve_connection(guarded, builder, &limits, drain, move |req| {
        outbound.clone().handle(origin.clone(), client, req)
    })
    .await;
}

/// VIP addresses that could not be bound on any of their ports: address -> (the service, as
/// `<svc>.<ns>`, and the bind error). Reported to the federation, whose DNS then stops answering
/// an address no gateway serves.
pub type UnboundVips = BTreeMap<IpAddr, (String, String)>;

/// The VIP listeners currently open.
pub struct VipListeners {
    outbound: Arc<Outbound>,
    limit: FairLimit,
    drain: Drain,
    open: HashMap<(IpAddr, Port), JoinHandle<()>>,
    /// Addresses that failed to bind, reported once each.
    failed: HashMap<(IpAddr, Port), String>,
}

impl VipListeners {
    pub fn new(outbound: Arc<Outbound>, limit: FairLimit, drain: Drain) -> Self {
        Self {
            outbound,
            limit,
            drain,
            open: HashMap::new(),
            failed: HashMap::new(),
        }
    }

    /// Opens listeners for new VIP:ports and closes those no longer in `snap`.
    pub async fn reconcile(&mut self, snap: &Snapshot) {
        let want: HashMap<(IpAddr, Port), ()> = snap.listeners().map(|k| (k, ())).collect();
        self.open.retain(|key, task| {
            let keep = want.contains_key(key);
            if !keep {
                tracing::info!(vip = %key.0, port = key.1.port, "closing VIP listener");
                task.abort();
            }
            keep
        });
        self.failed.retain(|key, _| want.contains_key(key));
        for key in want.into_keys() {
            if self.open.contains_key(&key) {
                continue;
            }
            let (ip, port) = key;
            match TcpListener::bind(SocketAddr::new(ip, port.port)).await {
                Ok(listener) => {
                    tracing::debug!(vip = %ip, port = port.port, protocol = ?port.protocol, "VIP listener open");
                    self.failed.remove(&key);
                    let task = tokio::spawn(accept_loop(
                        self.outbound.clone(),
                        listener,
                        Origin::Vip(ip, port.port),
                        !port.protocol.is_http(),
                        self.limit.clone(),
                        self.drain.clone(),
                    ));
                    self.open.insert(key, task);
                }
                Err(e) => {
                    let reason = e.to_string();
                    if self.failed.get(&key) != Some(&reason) {
                        // One warning per address: a range that is not local fails every port
                        // of every service in it the same way.
                        let first = !self.failed.keys().any(|(failed, _)| *failed == ip);
                        if first {
                            tracing::warn!(vip = %ip, port = port.port, error = %reason, "cannot listen on a service VIP (is the VIP range a local address here?); the proxy port still serves it, and the federation's DNS leaves out an address no gateway could bind");
                        } else {
                            tracing::debug!(vip = %ip, port = port.port, error = %reason, "cannot listen on a service VIP");
                        }
                        self.failed.insert(key, reason);
                    }
                }
            }
        }
    }

    /// The addresses of `snap` with no listener open on any port and at least one bind that
    /// failed (a port taken by another process on an address that works is not listed: the
    /// address serves its other ports).
    pub fn unbound(&self, snap: &Snapshot) -> UnboundVips {
        let mut out = UnboundVips::new();
        for ((ip, _), reason) in &self.failed {
            if self.open.keys().any(|(open, _)| open == ip) {
                continue;
            }
            if let Some(target) = snap.vips.get(ip) {
                out.entry(*ip)
                    .or_insert_with(|| (target.import.name.to_string(), reason.clone()));
            }
        }
        out
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Follows the table until draining starts: reconciles on every snapshot and publishes the
    /// addresses that could not be bound to `unbound` (reported to the federation).
    pub async fn follow(
        mut self,
        mut table: watch::Receiver<Arc<Snapshot>>,
        metrics: Arc<Metrics>,
        unbound_tx: watch::Sender<Arc<UnboundVips>>,
    ) {
        let drain = self.drain.clone();
        loop {
            let snap = table.borrow_and_update().clone();
            self.reconcile(&snap).await;
            metrics.vip_listeners.set(self.open_count() as i64);
            metrics.vip_listeners_failed.set(self.failed_count() as i64);
            let unbound = self.unbound(&snap);
            unbound_tx.send_if_modified(|cur| {
                let changed = **cur != unbound;
                if changed {
                    *cur = Arc::new(unbound);
                }
                changed
            });
            tokio::select! {
                changed = table.changed() => if changed.is_err() { return },
                () = drain.signaled() => return,
            }
        }
    }

    pub fn failed_count(&self) -> usize {
        self.failed.len()
    }
}

impl Drop for VipListeners {
    fn drop(&mut self) {
        for task in self.open.values() {
            task.abort();
        }
    }
}
