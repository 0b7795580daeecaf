//! Rate and concurrency limits of the services this gateway serves (a policy's `rate_limit`
//! section): a token bucket for the whole service, one per calling cluster, and a bound on the
//! requests in flight. The state lives in a registry that outlives config snapshots (a snapshot
//! is rebuilt on every config delta): a service keeps its buckets while its limits stay the
//! same and gets fresh ones when they change. Time is passed in, so tests need no clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::policy::RateLimit;
use crate::table::ServiceName;

pub use isthmus_federation::model::policy::Rate;

/// The most services with limiter state at once; beyond it, idle ones are forgotten (their
/// buckets start full again). Only services whose policy has a `rate_limit` are counted.
const MAX_SERVICES: usize = 4096;

/// Refills are computed in floating point; this absorbs rounding so that exactly one token's
/// worth of elapsed time always buys one request.
const EPSILON: f64 = 1e-9;

/// A token bucket: holds at most `burst` tokens and gains `per_second` continuously.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        if now > self.last {
            let earned = (now - self.last).as_secs_f64() * rate.per_second;
            self.tokens = (self.tokens + earned).min(rate.burst);
            self.last = now;
        }
    }

    fn has_tokens(&self, n: f64) -> bool {
        self.tokens >= n - EPSILON
    }

    fn take(&mut self) {
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    /// Time until the bucket holds one token.
    fn wait(&self, rate: Rate) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens).max(0.0) / rate.per_second).min(86_400.0))
    }
}

/// Which limit refused a request (the `limit` label of `isthmus_gateway_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Service,
    SourceCluster,
    Concurrency,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::Service => "service",
            Limit::SourceCluster => "source_cluster",
            Limit::Concurrency => "concurrency",
        }
    }
}

/// A request refused by a limit, and when to try again (whole seconds, at least 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub limit: Limit,
    pub retry_after: u64,
    pub reason: String,
}

/// Holds one of a service's concurrency slots until dropped (with the response body or the
/// tunnel).
#[derive(Debug)]
pub struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Buckets {
    service: Option<Bucket>,
    /// Keyed by verified peer cluster names, so bounded by the peers in the config.
    clusters: HashMap<Arc<str>, Bucket>,
}

/// One service's limits and their state.
#[derive(Debug)]
pub struct ServiceLimiter {
    service: ServiceName,
    limit: RateLimit,
    buckets: Mutex<Buckets>,
    /// Requests and tunnels in flight; shared with the limiter this one replaced, so a change
    /// of limits does not forget what is running.
    in_flight: Arc<AtomicU32>,
}

impl ServiceLimiter {
    fn new(
        service: ServiceName,
        limit: RateLimit,
        in_flight: Arc<AtomicU32>,
        now: Instant,
    ) -> Self {
        let buckets = Buckets {
            service: limit.service.map(|r| Bucket::full(r, now)),
            clusters: HashMap::new(),
        };
        Self {
            service,
            limit,
            buckets: Mutex::new(buckets),
            in_flight,
        }
    }

    /// Admits one request from `cluster` at `now`: a concurrency slot first (when bounded), then
    /// a token from the calling cluster's bucket and the service's, taken together or not at
    /// all. `Ok(None)` when no concurrency bound is set.
    pub fn admit(&self, cluster: &Arc<str>, now: Instant) -> Result<Option<Slot>, Exceeded> {
        self.admit_as(cluster, now, true)
    }

    /// A shadow copy rides on spare capacity only: it needs a free concurrency slot (and holds
    /// it: it is real load) and two tokens in each bucket, and takes one. So copies never take
    /// the last token from the calling cluster's own requests, and a peer that marks every
    /// request a copy (the mark is the peer's word) gets less than the limit, never more.
    pub fn admit_spare(&self, cluster: &Arc<str>, now: Instant) -> Result<Option<Slot>, Exceeded> {
        self.admit_as(cluster, now, false)
    }

    fn admit_as(
        &self,
        cluster: &Arc<str>,
        now: Instant,
        own: bool,
    ) -> Result<Option<Slot>, Exceeded> {
        let slot = match self.limit.max_concurrent {
            Some(max) => {
                let prev = self.in_flight.fetch_add(1, Ordering::Relaxed);
                let slot = Slot(self.in_flight.clone());
                if prev >= max {
                    return Err(Exceeded {
                        limit: Limit::Concurrency,
                        retry_after: 1,
                        reason: format!(
                            "concurrency limit of {} reached: {max} requests in flight",
                            self.service
                        ),
                    });
                }
                Some(slot)
            }
            None => None,
        };
        self.take_tokens(cluster, now, if own { 1.0 } else { 2.0 })?;
        Ok(slot)
    }

    /// Takes one token from each of the request's buckets when each holds at least `need`.
    fn take_tokens(&self, cluster: &Arc<str>, now: Instant, need: f64) -> Result<(), Exceeded> {
        let cluster_rate = self.limit.for_cluster(cluster);
        if cluster_rate.is_none() && self.limit.service.is_none() {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Buckets { service, clusters } = &mut *buckets;
        let mut by_cluster = None;
        if let Some(rate) = cluster_rate {
            let bucket = clusters
                .entry(cluster.clone())
                .or_insert_with(|| Bucket::full(rate, now));
            bucket.refill(rate, now);
            if !bucket.has_tokens(need) {
                return Err(self.exceeded(Limit::SourceCluster, cluster, rate, bucket));
            }
            by_cluster = Some(bucket);
        }
        if let (Some(bucket), Some(rate)) = (service.as_mut(), self.limit.service) {
            bucket.refill(rate, now);
            if !bucket.has_tokens(need) {
                return Err(self.exceeded(Limit::Service, cluster, rate, bucket));
            }
            bucket.take();
        }
        if let Some(bucket) = by_cluster {
            bucket.take();
        }
        Ok(())
    }

    fn exceeded(&self, limit: Limit, cluster: &str, rate: Rate, bucket: &Bucket) -> Exceeded {
        let whose = match limit {
            Limit::SourceCluster => format!(" for cluster {cluster}"),
            _ => String::new(),
        };
        Exceeded {
            limit,
            retry_after: bucket.wait(rate).as_secs_f64().ceil().max(1.0) as u64,
            reason: format!(
                "rate limit of {}{whose} ({}/s, burst {}) exceeded",
                self.service, rate.per_second, rate.burst
            ),
        }
    }
}

/// Every limited service's [`ServiceLimiter`], by service.
#[derive(Debug, Default)]
pub struct Limiters {
    by_service: Mutex<HashMap<ServiceName, Arc<ServiceLimiter>>>,
}

impl Limiters {
    /// The limiter for `service` under `limit`: the existing one while its limits are unchanged,
    /// else a fresh one (keeping the count of requests in flight).
    pub fn get(
        &self,
        service: &ServiceName,
        limit: &RateLimit,
        now: Instant,
    ) -> Arc<ServiceLimiter> {
        let mut map = self.by_service.lock().unwrap_or_else(|p| p.into_inner());
        let in_flight = match map.get(service) {
            Some(l) if l.limit == *limit => return l.clone(),
            Some(l) => l.in_flight.clone(),
            None => {
                if map.len() >= MAX_SERVICES {
                    // Forget services with nothing in flight and nobody holding their limiter
                    // (idle, or no longer limited); a held slot keeps its count.
                    map.retain(|_, l| {
                        Arc::strong_count(l) > 1 || Arc::strong_count(&l.in_flight) > 1
                    });
                }
                Arc::default()
            }
        };
        let fresh = Arc::new(ServiceLimiter::new(
            service.clone(),
            limit.clone(),
            in_flight,
            now,
        ));
        map.insert(service.clone(), fresh.clone());
        fresh
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_service.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: f64) -> Rate {
        Rate { per_second, burst }
    }

    fn limiter(limit: RateLimit, now: Instant) -> ServiceLimiter {
        ServiceLimiter::new("echo.demo".into(), limit, Arc::default(), now)
    }

    fn admitted(l: &ServiceLimiter, cluster: &Arc<str>, now: Instant, n: usize) -> usize {
        (0..n).filter(|_| l.admit(cluster, now).is_ok()).count()
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let l = limiter(
            RateLimit {
                service: Some(rate(10.0, 5.0)),
                ..RateLimit::default()
            },
            t0,
        );
        let west: Arc<str> = "west".into();
        assert_eq!(admitted(&l, &west, t0, 20), 5, "the burst, then nothing");
        let err = l.admit(&west, t0).expect_err("empty");
        assert_eq!(err.limit, Limit::Service);
        assert_eq!(
            err.retry_after, 1,
            "0.1 s to the next token, rounded up to 1"
        );
        assert!(
            err.reason
                .contains("rate limit of echo.demo (10/s, burst 5) exceeded"),
            "{}",
            err.reason
        );
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!(admitted(&l, &west, t1, 20), 3, "10/s for 0.3 s");
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(admitted(&l, &west, t2, 20), 5, "never more than the burst");
        // Going back in time (a clock read out of order) earns nothing.
        assert_eq!(admitted(&l, &west, t1, 20), 0);
    }

    #[test]
    fn retry_after_is_the_time_until_one_token_in_whole_seconds() {
        let t0 = Instant::now();
        let l = limiter(
            RateLimit {
                service: Some(rate(0.25, 1.0)),
                ..RateLimit::default()
            },
            t0,
        );
        let west: Arc<str> = "west".into();
        assert!(l.admit(&west, t0).is_ok());
        assert_eq!(l.admit(&west, t0).expect_err("empty").retry_after, 4);
        let later = t0 + Duration::from_millis(2500);
        assert_eq!(l.admit(&west, later).expect_err("empty").retry_after, 2);
        assert!(l.admit(&west, t0 + Duration::from_secs(4)).is_ok());
    }

    #[test]
    fn each_calling_cluster_has_its_own_bucket_and_both_must_have_a_token() {
        let t0 = Instant::now();
        let l = limiter(
            RateLimit {
                service: Some(rate(1.0, 5.0)),
                // "*" refills too slowly to matter here: only its burst counts.
                per_source_cluster: vec![
                    ("*".into(), rate(0.001, 2.0)),
                    ("west".into(), rate(1.0, 3.0)),
                ],
                max_concurrent: None,
            },
            t0,
        );
        let (west, south, east): (Arc<str>, Arc<str>, Arc<str>) =
            ("west".into(), "south".into(), "east".into());
        assert_eq!(admitted(&l, &west, t0, 10), 3);
        let err = l.admit(&west, t0).expect_err("west is empty");
        assert_eq!(err.limit, Limit::SourceCluster);
        assert!(err.reason.contains("for cluster west"), "{}", err.reason);
        assert_eq!(
            admitted(&l, &south, t0, 10),
            2,
            "the \"*\" rate, its own bucket"
        );
        let err = l.admit(&east, t0).expect_err("the service is empty");
        assert_eq!(err.limit, Limit::Service);
        // The service's refusal did not spend east's own tokens: both are still there.
        let second = |s| t0 + Duration::from_secs(s);
        assert_eq!(admitted(&l, &east, second(1), 10), 1);
        assert_eq!(admitted(&l, &east, second(2), 10), 1);
        let err = l.admit(&east, second(3)).expect_err("east is empty");
        assert_eq!(err.limit, Limit::SourceCluster);
    }

    #[test]
    fn concurrency_is_bounded_until_slots_are_released() {
        let t0 = Instant::now();
        let l = limiter(
            RateLimit {
                max_concurrent: Some(2),
                ..RateLimit::default()
            },
            t0,
        );
        let west: Arc<str> = "west".into();
        let held: Vec<_> = (0..2)
            .map(|_| l.admit(&west, t0).expect("slot").expect("bounded"))
            .collect();
        let err = l.admit(&west, t0).expect_err("full");
        assert_eq!((err.limit, err.retry_after), (Limit::Concurrency, 1));
        assert!(err.reason.contains("concurrency limit"), "{}", err.reason);
        drop(held);
        assert!(l.admit(&west, t0).is_ok());
        assert_eq!(l.in_flight.load(Ordering::Relaxed), 0, "released on drop");
    }

    #[test]
    fn a_token_refusal_gives_the_concurrency_slot_back() {
        let t0 = Instant::now();
        let l = limiter(
            RateLimit {
                service: Some(rate(1.0, 1.0)),
                max_concurrent: Some(1),
                ..RateLimit::default()
            },
            t0,
        );
        let west: Arc<str> = "west".into();
        let slot = l.admit(&west, t0).expect("admitted");
        drop(slot);
        assert_eq!(
            l.admit(&west, t0).expect_err("no token").limit,
            Limit::Service
        );
        assert_eq!(l.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_registry_keeps_state_while_limits_are_unchanged() {
        let t0 = Instant::now();
        let reg = Limiters::default();
        let svc: ServiceName = "echo.demo".into();
        let west: Arc<str> = "west".into();
        let limit = RateLimit {
            service: Some(rate(1.0, 2.0)),
            max_concurrent: Some(10),
            ..RateLimit::default()
        };
        let a = reg.get(&svc, &limit, t0);
        let held = a.admit(&west, t0).expect("token").expect("slot");
        assert!(a.admit(&west, t0).is_ok());
        // A new snapshot with the same limits (an equal copy): the same limiter, still empty.
        let b = reg.get(&svc, &limit.clone(), t0);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(b.admit(&west, t0).is_err());
        // Changed limits: fresh buckets, but the request in flight is still counted.
        let changed = RateLimit {
            service: Some(rate(1.0, 3.0)),
            ..limit.clone()
        };
        let c = reg.get(&svc, &changed, t0);
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(admitted(&c, &west, t0, 10), 3);
        assert_eq!(c.in_flight.load(Ordering::Relaxed), 1);
        drop(held);
        assert_eq!(c.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn shadow_copies_take_tokens_but_never_the_last_one() {
        let t0 = Instant::now();
        for limit in [
            RateLimit {
                per_source_cluster: vec![("*".into(), rate(1.0, 3.0))],
                ..RateLimit::default()
            },
            RateLimit {
                service: Some(rate(1.0, 3.0)),
                ..RateLimit::default()
            },
        ] {
            let l = limiter(limit, t0);
            let east: Arc<str> = "east".into();
            assert!(
                l.admit_spare(&east, t0).is_ok(),
                "3 tokens: a copy takes one"
            );
            assert!(
                l.admit_spare(&east, t0).is_ok(),
                "2 tokens: a copy takes one"
            );
            assert!(
                l.admit_spare(&east, t0).is_err(),
                "the last token is not a copy's"
            );
            assert!(
                l.admit(&east, t0).is_ok(),
                "the caller's own request gets it"
            );
            assert!(l.admit(&east, t0).is_err(), "and the copies used the rest");
        }
    }

    #[test]
    fn a_peer_marking_every_request_a_copy_gets_no_more_than_the_limit() {
        let t0 = Instant::now();
        let l = limiter(
            RateLimit {
                per_source_cluster: vec![("*".into(), rate(10.0, 10.0))],
                ..RateLimit::default()
            },
            t0,
        );
        let east: Arc<str> = "east".into();
        let mut admitted = 0;
        for ms in 0..2_000u64 {
            // 1,000 "copies" per second for 2 s against 10/s.
            let now = t0 + Duration::from_millis(ms);
            admitted += usize::from(l.admit_spare(&east, now).is_ok());
        }
        assert!(
            (10..=30).contains(&admitted),
            "{admitted} admitted: the burst and 2 s at 10/s is at most 30"
        );
    }

    #[test]
    fn the_registry_forgets_idle_services_when_full() {
        let t0 = Instant::now();
        let reg = Limiters::default();
        let limit = RateLimit {
            max_concurrent: Some(1),
            ..RateLimit::default()
        };
        let held = reg.get(&"held.demo".into(), &limit, t0);
        // A request in flight on a service whose limiter nobody holds any more.
        let busy = reg.get(&"busy.demo".into(), &limit, t0);
        let slot = busy
            .admit(&"west".into(), t0)
            .expect("admitted")
            .expect("a slot");
        drop(busy);
        for i in 0..MAX_SERVICES + 10 {
            reg.get(&format!("s{i}.demo").into(), &limit, t0);
        }
        assert!(reg.len() <= MAX_SERVICES, "{}", reg.len());
        assert!(Arc::ptr_eq(
            &held,
            &reg.get(&"held.demo".into(), &limit, t0)
        ));
        let busy = reg.get(&"busy.demo".into(), &limit, t0);
        assert!(
            busy.admit(&"west".into(), t0).is_err(),
            "the request in flight still counts against max_concurrent"
        );
        drop(slot);
    }
}
