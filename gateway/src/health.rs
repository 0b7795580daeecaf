//! One health verdict per service per cluster, from three signals:
//! - HTTP/2 PINGs on the pooled connections (a dead connection closes; the pool redials),
//! - active probes of every peer gateway (a small request the peer's inbound answers itself),
//! - passive outlier detection per service per cluster (consecutive failures eject the cluster
//!   for that service, for longer each time; a success while ejected is not possible, so
//!   the cluster comes back when the ejection ends, with slow start).
//!
//! Verdicts are this gateway's own view: they steer its choices and are reported to its own
//! federation (for DNS and `status`), never exported to peers as truth. The state machines are
//! pure functions of (state, event, now), table-tested; [`Health`] only holds them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::down::DownSignals;
use crate::table::{Backend, ServiceName};

/// Tuning of the detectors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// Consecutive failed probes before a peer gateway is down.
    pub probe_failures: u32,
    /// Consecutive failed requests before a cluster is ejected for a service.
    pub outlier_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// How long a silent peer's services stay a last resort once its gateways fail too.
    pub stale_grace: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(1000),
            probe_timeout: Duration::from_millis(1000),
            probe_failures: 2,
            outlier_failures: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
            stale_grace: Duration::from_secs(600),
        }
    }
}

/// A peer gateway as the probes see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatewayState {
    pub healthy: bool,
    pub failures: u32,
    /// When it last became healthy again after being down (slow start counts from here).
    pub healthy_since: Option<Instant>,
    /// It answered a probe at least once: coming up the first time is not a recovery.
    pub seen_up: bool,
}

impl Default for GatewayState {
    fn default() -> Self {
        // Unknown counts as healthy: a new peer gets traffic at once, at full weight.
        Self {
            healthy: true,
            failures: 0,
            healthy_since: None,
            seen_up: false,
        }
    }
}

/// One probe result.
pub fn probe_step(s: GatewayState, ok: bool, cfg: &HealthConfig, now: Instant) -> GatewayState {
    if ok {
        GatewayState {
            healthy: true,
            failures: 0,
            healthy_since: if s.healthy || !s.seen_up {
                s.healthy_since
            } else {
                Some(now)
            },
            seen_up: true,
        }
    } else {
        let failures = s.failures.saturating_add(1);
        GatewayState {
            healthy: s.healthy && failures < cfg.probe_failures,
            failures,
            ..s
        }
    }
}

/// Passive detection for one service on one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Outlier {
    pub consecutive: u32,
    pub ejected_until: Option<Instant>,
    pub ejections: u32,
    /// When the last ejection ended (slow start counts from here).
    pub returned_at: Option<Instant>,
}

impl Outlier {
    pub fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }
}

/// One request outcome. An ejection lasts `base × 2^(ejections)` (capped), so a cluster that
/// keeps failing is tried less and less often.
pub fn outlier_step(o: Outlier, ok: bool, cfg: &HealthConfig, now: Instant) -> Outlier {
    // An ejection that ended is a return: slow start runs from its end.
    let mut o = o;
    if let Some(until) = o.ejected_until
        && now >= until
    {
        o.ejected_until = None;
        o.returned_at = Some(until);
    }
    if ok {
        return Outlier {
            consecutive: 0,
            // Healthy for a while: forget old ejections.
            ejections: if o
                .returned_at
                .is_some_and(|r| now.duration_since(r) > cfg.max_ejection)
            {
                0
            } else {
                o.ejections
            },
            ..o
        };
    }
    let consecutive = o.consecutive.saturating_add(1);
    if o.ejected_until.is_none() && consecutive >= cfg.outlier_failures {
        let factor = 1u32 << o.ejections.min(6);
        let time = (cfg.base_ejection * factor).min(cfg.max_ejection);
        return Outlier {
            consecutive: 0,
            ejected_until: Some(now + time),
            ejections: o.ejections.saturating_add(1),
            returned_at: o.returned_at,
        };
    }
    Outlier { consecutive, ..o }
}

/// Ends an ejection at `now` because the cluster returned from an outage (its gateways answer
/// probes again after all were down): slow start runs from `now`, and the ejection count is
/// forgotten, so the next real failure of the service starts again from the base ejection.
pub fn end_ejection(now: Instant) -> Outlier {
    Outlier {
        consecutive: 0,
        ejected_until: None,
        ejections: 0,
        returned_at: Some(now),
    }
}

/// The share of its weight a recovering cluster gets: from 10 % right after it came back to
/// 100 % after `slow_start`.
pub fn slow_start_factor(since: Option<Instant>, now: Instant, slow_start: Duration) -> f64 {
    match since {
        Some(t) if !slow_start.is_zero() => {
            let f = now.saturating_duration_since(t).as_secs_f64() / slow_start.as_secs_f64();
            f.clamp(0.1, 1.0)
        }
        _ => 1.0,
    }
}

/// What the request path uses for one cluster of one service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub healthy: bool,
    /// Slow-start share of the cluster's weight (1.0 when not recovering).
    pub factor: f64,
    pub reason: Option<&'static str>,
    /// Out of touch past the staleness grace and failing the data plane's checks: not even a
    /// last resort any more.
    pub dropped: bool,
}

impl Verdict {
    pub const HEALTHY: Verdict = Verdict {
        healthy: true,
        factor: 1.0,
        reason: None,
        dropped: false,
    };
}

/// Whether a cluster was up in the last probe round, and since when it is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClusterUp {
    pub up: bool,
    pub since: Option<Instant>,
    pub seen_up: bool,
}

/// When a cluster as a whole last came back (any of its gateways answering again after all
/// were down, or after it had none): slow start counts from here even when the gateway that
/// returns is a new one at a new address. Coming up the first time is not a return.
pub fn cluster_step(s: ClusterUp, up: bool, now: Instant) -> ClusterUp {
    ClusterUp {
        up,
        since: if up && !s.up && s.seen_up {
            Some(now)
        } else {
            s.since
        },
        seen_up: s.seen_up || up,
    }
}

/// The verdict from the states.
pub fn verdict(
    gateways: impl IntoIterator<Item = GatewayState>,
    local: bool,
    outlier: Option<&Outlier>,
    cluster_since: Option<Instant>,
    slow_start: Duration,
    now: Instant,
) -> Verdict {
    if outlier.is_some_and(|o| o.ejected(now)) {
        return Verdict {
            healthy: false,
            factor: 0.0,
            reason: Some("ejected after consecutive failures"),
            dropped: false,
        };
    }
    // One pass: whether there are gateways, whether any answers, and the latest return.
    let (mut known, mut any_up, mut up_since) = (false, false, None);
    for g in gateways {
        known = true;
        if g.healthy {
            any_up = true;
            up_since = up_since.max(g.healthy_since);
        }
    }
    if !local && !known {
        // Its last gateway's registration expired: nothing can carry a call there, and status,
        // DNS and GSLB (which follow these verdicts) must not send anyone to it.
        return Verdict {
            healthy: false,
            factor: 0.0,
            reason: Some("no registered gateway"),
            dropped: false,
        };
    }
    if !local && !any_up {
        return Verdict {
            healthy: false,
            factor: 0.0,
            reason: Some("no peer gateway answers probes"),
            dropped: false,
        };
    }
    // Slow start from the most recent return: the cluster's, a gateway's, or the ejection's end.
    let gateway_since = if local {
        None
    } else {
        up_since.max(cluster_since)
    };
    // An ejection that has ended counts as a return at its end, even before the next outcome
    // updates the state.
    let returned = outlier.and_then(|o| match o.ejected_until {
        Some(until) if now >= until => Some(until),
        _ => o.returned_at,
    });
    let since = gateway_since.max(returned);
    Verdict {
        healthy: true,
        factor: slow_start_factor(since, now, slow_start),
        reason: None,
        dropped: false,
    }
}

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

    #[tokio::test(start_paused = true)]
    async fn probes_take_a_gateway_down_after_consecutive_failures_and_back_at_once() {
        let t0 = Instant::now();
        let mut s = GatewayState::default();
        let steps = [
            (true, true),
            (false, true),
            (false, false),
            (false, false),
            (true, true),
        ];
        for (i, (ok, healthy)) in steps.into_iter().enumerate() {
            s = probe_step(s, ok, &cfg(), t0 + Duration::from_secs(i as u64));
            assert_eq!(s.healthy, healthy, "step {i}");
        }
        assert_eq!(s.healthy_since, Some(t0 + Duration::from_secs(4)));
        // Down before it was ever up: its first answer is not a recovery.
        let mut n = GatewayState::default();
        for ok in [false, false, true] {
            n = probe_step(n, ok, &cfg(), t0);
        }
        assert!(n.healthy && n.healthy_since.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_longer_each_time() {
        let t0 = Instant::now();
        let c = cfg();
        let mut o = Outlier::default();
        for _ in 0..3 {
            o = outlier_step(o, false, &c, t0);
        }
        assert!(o.ejected(t0));
        assert_eq!(o.ejected_until, Some(t0 + c.base_ejection));
        // Back after the ejection; three more failures: twice as long.
        let t1 = t0 + c.base_ejection;
        assert!(!o.ejected(t1));
        for _ in 0..3 {
            o = outlier_step(o, false, &c, t1);
        }
        assert_eq!(o.ejected_until, Some(t1 + c.base_ejection * 2));
        assert_eq!(o.returned_at, Some(t1));
        // A success in between resets the count.
        let mut p = Outlier::default();
        for ok in [false, false, true, false, false] {
            p = outlier_step(p, ok, &c, t0);
        }
        assert!(!p.ejected(t0));
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_from_a_tenth_to_full() {
        let t0 = Instant::now();
        let s = Duration::from_secs(10);
        let cases = [(0, 0.1), (5, 0.5), (10, 1.0), (30, 1.0)];
        for (secs, want) in cases {
            let got = slow_start_factor(Some(t0), t0 + Duration::from_secs(secs), s);
            assert!((got - want).abs() < 1e-9, "{secs}s: {got}");
        }
        assert_eq!(slow_start_factor(None, t0, s), 1.0);
        assert_eq!(slow_start_factor(Some(t0), t0, Duration::ZERO), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn verdicts_combine_probes_ejection_and_slow_start() {
        let t0 = Instant::now();
        let up = GatewayState::default();
        let down = GatewayState {
            healthy: false,
            failures: 2,
            healthy_since: None,
            seen_up: true,
        };
        let back = GatewayState {
            healthy: true,
            failures: 0,
            healthy_since: Some(t0),
            seen_up: true,
        };
        let ejected = Outlier {
            ejected_until: Some(t0 + Duration::from_secs(5)),
            ..Outlier::default()
        };
        let s = Duration::from_secs(10);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(verdict([up], false, None, None, s, t0), Verdict::HEALTHY);
        assert!(!verdict([down], false, None, None, s, t0).healthy);
        assert!(
            verdict([down, up], false, None, None, s, t0).healthy,
            "one gateway up is enough"
        );
        assert!(
            verdict([down], true, None, None, s, t0).healthy,
            "this cluster has no peer gateway"
        );
        // A peer cluster whose last gateway registration expired is down, whatever its
        // catalog says; this cluster itself needs no gateway of its own to be healthy.
        let none = verdict([], false, None, None, s, t0);
        assert!(!none.healthy, "{none:?}");
        assert_eq!(none.reason, Some("no registered gateway"));
        assert!(verdict([], true, None, None, s, t0).healthy);
        assert!(!verdict([up], false, Some(&ejected), None, s, t0).healthy);
        let v = verdict([back], false, None, None, s, later);
        assert!(v.healthy && (v.factor - 0.5).abs() < 1e-9, "{v:?}");
        // A new gateway (never down itself) of a cluster that just came back: slow start too.
        let v = verdict([up], false, None, Some(t0), s, later);
        assert!((v.factor - 0.5).abs() < 1e-9, "{v:?}");
        let first = cluster_step(ClusterUp::default(), true, t0);
        assert_eq!(
            first.since, None,
            "coming up the first time is not a return"
        );
        let gone = cluster_step(first, false, t0);
        let back = cluster_step(gone, true, later);
        assert_eq!(back.since, Some(later));
        assert_eq!(cluster_step(back, true, later + s).since, Some(later));
        // An ejection that ended counts as a return at its end.
        let ended = Outlier {
            ejected_until: Some(t0),
            ..Outlier::default()
        };
        let v = verdict([up], false, Some(&ended), None, s, later);
        assert!((v.factor - 0.5).abs() < 1e-9, "{v:?}");
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
