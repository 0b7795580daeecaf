//! The detectors' state machines, pure functions of (state, event, now), table-tested: a peer
//! gateway as the probes see it, passive outlier detection per service per cluster, a cluster's
//! returns, slow start, and the verdict they add up to. [`super::Health`] holds them; nothing
//! here does I/O or takes a lock.

use std::time::Duration;

use tokio::time::Instant;

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
}
