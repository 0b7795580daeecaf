//! One health verdict per service per cluster, from three signals:
//! - HTTP/2 PINGs on the pooled connections (a dead connection closes; the pool redials),
//! - active probes of every peer gateway (a small request the peer's inbound answers itself),
//! - passive outlier detection per service per cluster (consecutive failures eject the cluster
//!   for that service, for longer each time; a success while ejected is not possible, so
//!   the cluster comes back when the ejection ends — or at once when its gateways answer
//!   probes again after all were down —, with slow start).
//!
//! Verdicts that take a gateway or a cluster down are also raised as [`DownSignals`], which the
//! tries in flight there wait on.
//!
//! Verdicts are this gateway's own view: they steer its choices and are reported to its own
//! federation (for DNS and `status`), never exported to peers as truth. The state machines are
//! pure functions of (state, event, now), table-tested (`state`); [`Health`] only holds them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::down::DownSignals;
use crate::table::{Backend, ServiceName};

mod state;
pub use state::{
    ClusterUp, GatewayState, HealthConfig, Outlier, Verdict, cluster_step, end_ejection,
    outlier_step, probe_step, slow_start_factor, verdict,
};

/// The detectors' state, shared by the request path and the prober.
#[derive(Debug, Default)]
pub struct Health {
    pub config: HealthConfig,
    /// Tells tries in flight when their gateway or cluster is judged down.
    pub signals: DownSignals,
    gateways: Mutex<HashMap<Arc<str>, GatewayState>>,
    outliers: Mutex<HashMap<(ServiceName, Arc<str>), Outlier>>,
    /// Per cluster: whether any gateway answered in the last round, and since when.
    clusters: Mutex<HashMap<Arc<str>, ClusterUp>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Health {
    pub fn new(config: HealthConfig) -> Self {
        Self {
            config,
            ..Default::default()
        }
    }

    /// A probe of the peer gateway at `address` succeeded or failed.
    pub fn probed(&self, address: &Arc<str>, ok: bool) {
        let now = Instant::now();
        let mut g = lock(&self.gateways);
        let s = g.entry(address.clone()).or_default();
        let before = s.healthy;
        *s = probe_step(*s, ok, &self.config, now);
        if before != s.healthy {
            tracing::info!(gateway = %address, healthy = s.healthy, "peer gateway health changed");
            if !s.healthy {
                drop(g);
                self.signals.gateway_down(address);
            }
        }
    }

    /// After a probe round: whether any of `cluster`'s gateways answered. Clusters are never
    /// forgotten, so one that disappears and comes back still gets slow start.
    /// A cluster that returns this way (all its gateways were down) also ends its ejections:
    /// the failures that ejected it were the outage's, and probes say it serves again.
    pub fn cluster_observed(&self, cluster: &Arc<str>, up: bool) {
        let now = Instant::now();
        let returned = {
            let mut c = lock(&self.clusters);
            let s = c.entry(cluster.clone()).or_default();
            let before = *s;
            *s = cluster_step(*s, up, now);
            up && !before.up && before.seen_up
        };
        if returned {
            for ((service, c), o) in lock(&self.outliers).iter_mut() {
                if c == cluster && o.ejected(now) {
                    *o = end_ejection(now);
                    tracing::info!(%service, peer.cluster = %cluster, "ejection ended: the cluster's gateways answer probes again");
                }
            }
        }
    }

    /// A request for `service` to `cluster` succeeded or failed.
    pub fn outcome(&self, service: &ServiceName, cluster: &Arc<str>, ok: bool) {
        let now = Instant::now();
        let mut o = lock(&self.outliers);
        if ok && !o.contains_key(&(service.clone(), cluster.clone())) {
            return;
        }
        let s = o.entry((service.clone(), cluster.clone())).or_default();
        let was = s.ejected(now);
        *s = outlier_step(*s, ok, &self.config, now);
        if !was && s.ejected(now) {
            tracing::warn!(%service, peer.cluster = %cluster, ejections = s.ejections, "cluster ejected for this service after consecutive failures");
            drop(o);
            self.signals.ejected(service, cluster);
        }
    }

    pub fn verdict(
        &self,
        service: &ServiceName,
        backend: &Backend,
        local: bool,
        slow_start: Duration,
    ) -> Verdict {
        // On the request path for every candidate cluster: no allocation, one short lock each.
        let now = Instant::now();
        let outlier = lock(&self.outliers)
            .get(&(service.clone(), backend.cluster.clone()))
            .copied();
        let since = lock(&self.clusters).get(&backend.cluster).and_then(|c| {
            if !c.up && c.seen_up {
                // Known down at the last probe round, yet usable now (e.g. a restarted gateway
                // registered at a new address): it is returning — slow start from now, before
                // the next round confirms it.
                Some(now)
            } else {
                c.since
            }
        });
        let mut v = {
            let g = lock(&self.gateways);
            let states = backend
                .gateways
                .iter()
                .map(|gw| g.get(&gw.address).copied().unwrap_or_default());
            verdict(states, local, outlier.as_ref(), since, slow_start, now)
        };
        // Bounded staleness: a cluster whose federation went silent stays in service while its
        // gateways answer; once they do not either, it is a last resort until the grace ends.
        if backend.stale
            && !v.healthy
            && now.saturating_duration_since(backend.confirmed_at) > self.config.stale_grace
        {
            v.dropped = true;
            v.reason = Some("out of touch past the staleness grace");
        }
        v
    }

    /// Which of `gateways` answer probes (or were never probed), as bit `i` for gateway `i` of
    /// the first 128.
    pub fn gateways_up(&self, gateways: &[crate::table::PeerGateway]) -> u128 {
        let g = lock(&self.gateways);
        gateways
            .iter()
            .take(128)
            .enumerate()
            .filter(|(_, gw)| g.get(&gw.address).is_none_or(|s| s.healthy))
            .fold(0, |up, (i, _)| up | 1 << i)
    }

    /// Whether any of `gateways` answers probes (an empty list: no).
    pub fn any_gateway_up(&self, gateways: &[crate::table::PeerGateway]) -> bool {
        let g = lock(&self.gateways);
        gateways
            .iter()
            .any(|gw| g.get(&gw.address).is_none_or(|s| s.healthy))
    }

    /// Peer gateways known to be down (for status and metrics).
    pub fn down_gateways(&self) -> Vec<Arc<str>> {
        lock(&self.gateways)
            .iter()
            .filter(|(_, s)| !s.healthy)
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Forgets gateways no longer in the table.
    pub fn retain_gateways(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.gateways).retain(|a, _| keep(a));
        self.signals.retain_gateways(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig::default()
    }

    /// A try waiting on a gateway is told when probes judge it down, and one waiting on a
    /// service is told when its cluster is ejected; a cluster whose gateways answer again after
    /// an outage is back at once (its ejection ended, the count forgotten, slow start from now).
    #[tokio::test(start_paused = true)]
    async fn verdicts_wake_waiting_tries_and_a_return_ends_ejections() {
        let h = Health::new(cfg());
        let gw: Arc<str> = "10.0.0.1:15008".into();
        let west: Arc<str> = "west".into();
        let svc: ServiceName = "echo.demo".into();
        let mut waiting = h.signals.watch(&gw, &svc, &west);
        h.probed(&gw, true);
        h.probed(&gw, false);
        let quiet = tokio::time::timeout(Duration::from_millis(10), waiting.judged()).await;
        assert!(quiet.is_err(), "one miss is no verdict");
        h.probed(&gw, false);
        assert_eq!(waiting.judged().await, crate::down::Judged::GatewayDown);
        // Ejection while the gateway is fine: tries of that service are told.
        let mut waiting = h.signals.watch(&gw, &svc, &west);
        for _ in 0..cfg().outlier_failures {
            h.outcome(&svc, &west, false);
        }
        assert_eq!(waiting.judged().await, crate::down::Judged::Ejected);
        let backend = Backend {
            cluster: west.clone(),
            trust_domain: "west.mesh".into(),
            region: "r".into(),
            zone: "".into(),
            gateways: vec![crate::table::PeerGateway {
                name: "gw".into(),
                address: gw.clone(),
                zone: "".into(),
            }],
            healthy: 1,
            weight: 1,
            stale: false,
            confirmed_at: Instant::now(),
        };
        let slow = Duration::from_secs(10);
        h.cluster_observed(&west, true);
        h.cluster_observed(&west, false);
        tokio::time::advance(Duration::from_secs(1)).await;
        let v = h.verdict(&svc, &backend, false, slow);
        assert_eq!(v.reason, Some("ejected after consecutive failures"));
        // The outage heals: probes pass, the cluster is back.
        h.probed(&gw, true);
        h.cluster_observed(&west, true);
        let v = h.verdict(&svc, &backend, false, slow);
        assert!(
            v.healthy,
            "still ejected after the gateways came back: {v:?}"
        );
        assert!(
            (v.factor - 0.1).abs() < 1e-9,
            "slow start from the return: {v:?}"
        );
        let o = lock(&h.outliers)[&(svc.clone(), west.clone())];
        assert_eq!(o.ejections, 0, "the outage's ejections are forgotten");
        // Without an outage (gateways answering throughout) an ejection runs its course.
        for _ in 0..cfg().outlier_failures {
            h.outcome(&svc, &west, false);
        }
        h.cluster_observed(&west, true);
        assert!(!h.verdict(&svc, &backend, false, slow).healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_serves_while_its_gateways_answer_then_is_dropped_after_the_grace() {
        let h = Health::new(HealthConfig {
            stale_grace: Duration::from_secs(60),
            ..cfg()
        });
        let gw: Arc<str> = "10.0.0.1:15008".into();
        let backend = Backend {
            cluster: "west".into(),
            trust_domain: "west.mesh".into(),
            region: "r".into(),
            zone: "".into(),
            gateways: vec![crate::table::PeerGateway {
                name: "gw".into(),
                address: gw.clone(),
                zone: "".into(),
            }],
            healthy: 1,
            weight: 1,
            stale: true,
            confirmed_at: Instant::now(),
        };
        let svc: ServiceName = "echo.demo".into();
        let s = Duration::ZERO;
        h.probed(&gw, true);
        assert!(
            h.verdict(&svc, &backend, false, s).healthy,
            "stale but answering"
        );
        h.probed(&gw, false);
        h.probed(&gw, false);
        let v = h.verdict(&svc, &backend, false, s);
        assert!(!v.healthy && !v.dropped, "both gone: a last resort");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            h.verdict(&svc, &backend, false, s).dropped,
            "after the grace: dropped"
        );
    }
}
