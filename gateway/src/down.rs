//! Tells tries in flight that the place they wait on was judged down: a peer gateway that
//! missed its probes, or a cluster ejected for a service. A try registers before it is sent
//! ([`DownSignals::watch`]) and waits on [`DownWatch::judged`] next to its response, so a
//! request stuck on a silent cluster moves on when the verdict comes instead of waiting out its
//! per-try timeout.
//!
//! Signals are edges: only a verdict reached after the try registered wakes it. A try sent to a
//! cluster already judged down (panic mode: nothing healthy is left) is not woken by that old
//! verdict. Owned by [`crate::health::Health`], which raises them; must not decide anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::table::ServiceName;

/// What a try was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    /// The peer gateway it went through missed its probes.
    GatewayDown,
    /// Its cluster was ejected for its service after consecutive failures.
    Ejected,
}

impl Judged {
    pub fn reason(self) -> &'static str {
        match self {
            Judged::GatewayDown => "its gateway stopped answering probes",
            Judged::Ejected => "the cluster was ejected for this service",
        }
    }
}

/// Signals by key; each counts the verdicts reached for its key.
type Signals<K> = Mutex<HashMap<K, watch::Sender<u64>>>;

/// One edge-triggered signal per peer gateway and per (service, cluster).
#[derive(Debug, Default)]
pub struct DownSignals {
    gateways: Signals<Arc<str>>,
    ejections: Signals<(ServiceName, Arc<str>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn raise<K: std::hash::Hash + Eq>(map: &Signals<K>, key: &K) {
    // No entry: no try ever waited there, so nobody is to be told.
    if let Some(tx) = lock(map).get(key) {
        tx.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn subscribe<K: std::hash::Hash + Eq + Clone>(map: &Signals<K>, key: &K) -> watch::Receiver<u64> {
    let mut m = lock(map);
    match m.get(key) {
        Some(tx) => tx.subscribe(),
        None => m
            .entry(key.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe(),
    }
}

impl DownSignals {
    /// The gateway at `address` was just judged down.
    pub fn gateway_down(&self, address: &Arc<str>) {
        raise(&self.gateways, address);
    }

    /// `cluster` was just ejected for `service`.
    pub fn ejected(&self, service: &ServiceName, cluster: &Arc<str>) {
        raise(&self.ejections, &(service.clone(), cluster.clone()));
    }

    /// Registers a try of `service` on `cluster` through the gateway at `gateway`: only
    /// verdicts reached from now on wake it.
    pub fn watch(
        &self,
        gateway: &Arc<str>,
        service: &ServiceName,
        cluster: &Arc<str>,
    ) -> DownWatch {
        DownWatch {
            gateway: subscribe(&self.gateways, gateway),
            ejection: subscribe(&self.ejections, &(service.clone(), cluster.clone())),
            follow_ejection: true,
        }
    }

    /// Forgets the signals of gateways no longer in the table (tries still holding one are
    /// simply never woken by it).
    pub fn retain_gateways(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.gateways).retain(|a, _| keep(a));
    }
}

/// A try's registration.
pub struct DownWatch {
    gateway: watch::Receiver<u64>,
    ejection: watch::Receiver<u64>,
    follow_ejection: bool,
}

impl DownWatch {
    /// Whether the cluster's ejection for the service wakes the try. Off when no other cluster
    /// is left to move to: an ejection (counted from failures that may all be one dead
    /// gateway's) would then turn a try that can still be answered, or retried on the
    /// cluster's other gateway when its connection breaks, into a refusal.
    pub fn follow_ejection(mut self, follow: bool) -> Self {
        self.follow_ejection = follow;
        self
    }

    /// Resolves when the try's gateway or its cluster (for its service) is judged down; never
    /// otherwise.
    pub async fn judged(&mut self) -> Judged {
        // A sender dropped (the gateway left the table) never fires: wait on the other.
        let gateway = async {
            match self.gateway.changed().await {
                Ok(()) => Judged::GatewayDown,
                Err(_) => std::future::pending().await,
            }
        };
        let follow_ejection = self.follow_ejection;
        let ejection = async {
            match self.ejection.changed().await {
                Ok(()) if follow_ejection => Judged::Ejected,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            j = gateway => j,
            j = ejection => j,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn only_verdicts_after_registration_wake_a_try() {
        let s = DownSignals::default();
        let (gw, other): (Arc<str>, Arc<str>) = ("10.0.0.1:1".into(), "10.0.0.2:1".into());
        let (svc, west): (ServiceName, Arc<str>) = ("echo.demo".into(), "west".into());
        // Judged down before anyone waited: an old verdict wakes nobody.
        s.gateway_down(&gw);
        let mut w = s.watch(&gw, &svc, &west);
        let quiet = tokio::time::timeout(Duration::from_secs(1), w.judged()).await;
        assert!(quiet.is_err(), "woken by a verdict older than the try");
        s.gateway_down(&other);
        s.ejected(&"other.demo".into(), &west);
        let quiet = tokio::time::timeout(Duration::from_secs(1), w.judged()).await;
        assert!(
            quiet.is_err(),
            "woken by another gateway's or service's verdict"
        );
        s.gateway_down(&gw);
        assert_eq!(w.judged().await, Judged::GatewayDown);
        let mut w = s.watch(&other, &svc, &west);
        s.ejected(&svc, &west);
        assert_eq!(w.judged().await, Judged::Ejected);
        // A gateway forgotten while a try waits on it: the try waits on (never panics).
        let mut w = s.watch(&gw, &svc, &west);
        s.retain_gateways(|_| false);
        let quiet = tokio::time::timeout(Duration::from_secs(1), w.judged()).await;
        assert!(quiet.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_wakes_a_try_only_when_it_has_somewhere_to_go() {
        let s = DownSignals::default();
        let gw: Arc<str> = "10.0.0.1:1".into();
        let (svc, west): (ServiceName, Arc<str>) = ("echo.demo".into(), "west".into());
        let mut w = s.watch(&gw, &svc, &west).follow_ejection(false);
        s.ejected(&svc, &west);
        let quiet = tokio::time::timeout(Duration::from_secs(1), w.judged()).await;
        assert!(
            quiet.is_err(),
            "an ejection with nowhere to go woke the try"
        );
        // Its own gateway judged down still wakes it.
        s.gateway_down(&gw);
        assert_eq!(w.judged().await, Judged::GatewayDown);
    }
}
