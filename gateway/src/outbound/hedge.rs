//! Hedging: a replayable try that runs past its hedge delay (the policy's multiplier times the
//! cluster's learned p99, within its bounds; see [`crate::latency`]) gets a second copy on the
//! next cluster of the plan (or another gateway of the same cluster when it is the only one).
//! The first good answer wins; the other try is dropped, which resets its HTTP/2 stream. A
//! hedge is paid from the retry budget: when the budget has none, no hedge is sent, so a slow
//! cluster cannot double the load.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use super::Outbound;
use crate::accesslog::Entry;
use crate::body::Body;
use crate::down::{DownWatch, Judged};
use crate::policy::ServicePolicy;
use crate::retry::{self, BreakerGuard, Replay};
use crate::table::Backend;
use isthmus_federation::telemetry::TraceSpan;

/// How a try ended.
pub(super) enum TryEnd<T> {
    /// An answer, an error, or the per-try timeout.
    Done(Result<T, tokio::time::error::Elapsed>),
    /// Its gateway or cluster was judged down first.
    Judged(Judged),
    /// Its hedge answered first, and well.
    Hedged(Won),
}

/// A hedge whose answer goes to the client.
pub(super) struct Won {
    pub response: Response<Incoming>,
    pub in_flight: BreakerGuard,
    pub cluster: Arc<str>,
    pub gateway: Arc<str>,
}

/// Where and when a try's hedge goes.
pub(super) struct Plan<'a> {
    pub after: Duration,
    /// The hedge's own timeout (the first try's: the policy's, within the request's time).
    pub timeout: Duration,
    pub backend: &'a Backend,
    /// The gateway not to use (the first try's, when the hedge goes to the same cluster).
    pub avoid: Option<Arc<str>>,
    pub replay: &'a Replay,
}

/// The hedge of a try on `current` through `gateway`, if the policy hedges and there is
/// somewhere else to send it: the next cluster of `rest` (this cluster's own place in the plan
/// excluded), else another gateway of `current`.
#[allow(clippy::too_many_arguments)]
pub(super) fn plan<'a>(
    outbound: &Outbound,
    policy: &ServicePolicy,
    replay: Option<&'a Replay>,
    service: &str,
    current: &'a Backend,
    gateway: &Arc<str>,
    mut rest: impl Iterator<Item = &'a Backend>,
    local: &str,
    timeout: Duration,
) -> Option<Plan<'a>> {
    let replay = replay.filter(|_| policy.hedge.enabled)?;
    let after = policy
        .hedge
        .delay(outbound.latencies.p99(service, &current.cluster))?;
    let (backend, avoid) = match rest.find(|b| &*b.cluster != local) {
        Some(next) => (next, None),
        None if current.gateways.len() > 1 => (current, Some(gateway.clone())),
        None => return None,
    };
    Some(Plan {
        after,
        timeout,
        backend,
        avoid,
        replay,
    })
}

/// Why a hedge gave no good answer.
type Failed = String;

impl Outbound {
    /// Waits for the first try (`primary`) or a verdict on its place (`down`); past the plan's
    /// delay, sends the hedge if the retry budget pays for it. A good answer from either ends
    /// the race; a failed first try waits for its hedge (and the other way round).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn race<F, T>(
        &self,
        primary: F,
        good: impl Fn(&T) -> bool,
        down: &mut DownWatch,
        hedge: Option<Plan<'_>>,
        policy: &ServicePolicy,
        service: &Arc<str>,
        entry: &mut Entry,
    ) -> TryEnd<T>
    where
        F: Future<Output = Result<T, tokio::time::error::Elapsed>>,
    {
        tokio::pin!(primary);
        let sleep = tokio::time::sleep(hedge.as_ref().map_or(Duration::MAX, |h| h.after));
        tokio::pin!(sleep);
        let mut armed = hedge.is_some();
        let mut second = None;
        let mut first_ended: Option<TryEnd<T>> = None;
        loop {
            tokio::select! {
                biased;
                r = &mut primary, if first_ended.is_none() => {
                    let ok = matches!(&r, Ok(t) if good(t));
                    if ok || second.is_none() {
                        return TryEnd::Done(r);
                    }
                    first_ended = Some(TryEnd::Done(r));
                }
                j = down.judged(), if first_ended.is_none() => {
                    if second.is_none() {
                        return TryEnd::Judged(j);
                    }
                    first_ended = Some(TryEnd::Judged(j));
                }
                h = async { second.as_mut().expect("guarded").await }, if second.is_some() => {
                    second = None;
                    match h {
                        Ok(won) => return TryEnd::Hedged(won),
                        Err(why) => {
                            tracing::debug!(%service, reason = %why, "hedge failed");
                            if let Some(end) = first_ended.take() {
                                return end;
                            }
                        }
                    }
                }
                () = &mut sleep, if armed => {
                    armed = false;
                    let Some(plan) = hedge.as_ref() else { continue };
                    if !self.budget.withdraw() {
                        self.metrics.hedge("refused");
                        continue;
                    }
                    self.metrics.hedge("sent");
                    entry.hedged = true;
                    let span = entry.span.as_deref().map(|exchange| {
                        let t = crate::trace::Try {
                            number: crate::trace::HEDGE_TRY,
                            failover: plan.avoid.is_none(),
                            shadow: false,
                            hedge: true,
                            cluster: &plan.backend.cluster,
                            gateway: None,
                        };
                        crate::trace::start_try(exchange, t)
                    });
                    second = Some(Box::pin(self.hedge_try(plan, policy, service, span)));
                }
            }
        }
    }

    /// One hedged try, within the policy's per-try timeout.
    async fn hedge_try(
        &self,
        plan: &Plan<'_>,
        policy: &ServicePolicy,
        service: &Arc<str>,
        span: Option<TraceSpan>,
    ) -> Result<Won, Failed> {
        // Dropped with the future when the first try answers first: the span says so.
        let mut guard = Cancelled(span);
        let r = self.hedge_send(plan, policy, service, &mut guard.0).await;
        let status = match &r {
            Ok(won) => Some(won.response.status().as_u16()),
            Err((_, status)) => *status,
        };
        let error = r.as_ref().err().map(|(why, _)| why.as_str());
        crate::trace::end_try(guard.0.take(), status, error);
        r.map_err(|(why, _)| why)
    }

    async fn hedge_send(
        &self,
        plan: &Plan<'_>,
        policy: &ServicePolicy,
        service: &Arc<str>,
        span: &mut Option<TraceSpan>,
    ) -> Result<Won, (Failed, Option<u16>)> {
        let backend = plan.backend;
        let in_flight = self
            .breakers
            .enter(service, &backend.cluster, policy.max_requests)
            .ok_or_else(|| (format!("{} circuit open", backend.cluster), None))?;
        let (mut sender, gateway) = self
            .pool
            .get_any(backend, &self.health, plan.avoid.as_deref())
            .await
            .map_err(|e| (e.to_string(), None))?;
        let ring = self.latencies.ring(service, &backend.cluster);
        let started = tokio::time::Instant::now();
        let mut req: Request<Body> = plan.replay.request();
        if let Some(span) = span {
            crate::trace::set_peer(span, &gateway.address);
            crate::trace::inject(span, req.headers_mut());
        }
        let answered = tokio::time::timeout(plan.timeout, sender.try_send_request(req)).await;
        match answered {
            Ok(Ok(response))
                if !retry::failed_attempt(
                    response.status(),
                    response.headers(),
                    &policy.grpc_statuses,
                ) =>
            {
                ring.record(started.elapsed());
                self.health.outcome(service, &backend.cluster, true);
                Ok(Won {
                    response,
                    in_flight,
                    cluster: backend.cluster.clone(),
                    gateway: gateway.address.clone(),
                })
            }
            Ok(Ok(response)) => {
                self.health.outcome(service, &backend.cluster, false);
                let why = format!("{} answered {}", backend.cluster, response.status());
                Err((why, Some(response.status().as_u16())))
            }
            Ok(Err(e)) => {
                self.health.outcome(service, &backend.cluster, false);
                Err((format!("{} failed: {}", backend.cluster, e.error()), None))
            }
            Err(_) => Err((format!("{} did not answer in time", backend.cluster), None)),
        }
    }
}

/// A hedge's span while it runs: ended as cancelled if the hedge is dropped unfinished (the
/// first try answered, or the exchange ended, before it did).
struct Cancelled(Option<TraceSpan>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        let why = "cancelled: the first try answered before the hedge";
        crate::trace::end_try(self.0.take(), None, Some(why));
    }
}
