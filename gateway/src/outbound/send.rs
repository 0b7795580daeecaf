//! Sending a call to the clusters of its plan in order: the pooled connection to a cluster's
//! gateway, the circuit breaker, the retry budget, the per-try timeout, and the verdicts of
//! [`crate::health`] — a try whose gateway or cluster is judged down while it waits moves on at
//! once when its request can be replayed (and fails fast with the reason when it cannot),
//! instead of waiting out its per-try timeout. Must not read endpoint addresses of other
//! clusters (it has none).

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::hedge::{self, TryEnd};
use super::{Outbound, Resolved, verdicts};
use crate::accesslog::Entry;
use crate::body::{self, Body};
use crate::down::Judged;
use crate::lb::{cluster_order, random};
use crate::policy::ServicePolicy;
use crate::retry::{self, BreakerGuard, Replay};
use crate::table::{Backend, Snapshot};
use crate::trace::{self, Try, TrySpan};

impl Outbound {
    /// The clusters to try, best first, and the service's policy.
    pub(super) fn plan<'a>(
        &self,
        snap: &Snapshot,
        resolved: &'a Resolved,
    ) -> (Vec<&'a Backend>, Arc<ServicePolicy>) {
        let name = &resolved.target.import.name;
        let policy = snap.traffic.for_service(name).clone();
        let order = cluster_order(
            &resolved.target,
            &snap.cluster,
            &snap.region,
            &policy,
            verdicts(&self.health, snap, name, &policy),
            random,
        );
        (order, policy)
    }

    /// Sends `req` (or, when the first try fails, its replay) to the clusters of `order` until
    /// one answers. A request not yet sent (the connection was closing, the peer unreachable,
    /// the cluster's circuit open) always moves on; one that was sent moves on only when it can
    /// be replayed, within the retry budget and the policy's retries. When the link failed
    /// under a try (the connection closing before it was sent, or lost while it ran), the same
    /// cluster is tried once more through another of its gateways (or, with one, a new
    /// connection) before the next cluster: a gateway lost is not the cluster lost. On failure:
    /// the response to give the client (the last peer answer, or 502/503/504 with the reason).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
        &self,
        snap: &Snapshot,
        resolved: &Resolved,
        order: &[&Backend],
        policy: &ServicePolicy,
        req: Request<Body>,
        replay: Option<&Replay>,
        entry: &mut Entry,
    ) -> Result<(Response<Incoming>, BreakerGuard), Response<Body>> {
        let name = &resolved.target.import.name;
        if order.is_empty() {
            let reason = match &resolved.target.pinned {
                Some(c) => format!("{c} does not serve {name} now"),
                None => format!("no healthy cluster serves {name}"),
            };
            return Err(self.refuse(entry, StatusCode::SERVICE_UNAVAILABLE, reason));
        }
        self.budget.deposit(policy.budget_percent);
        // Every try, and every dial before one, shares the gateway's request_timeout.
        let deadline = tokio::time::Instant::now() + self.limits.request_timeout;
        let timeout = retry::try_timeout(
            replay.is_some(),
            policy.per_try_timeout,
            self.limits.request_timeout,
        );
        // The request in hand, and whether it is a retry still to be paid for from the budget
        // (paid when sent: one that never leaves costs nothing).
        let mut pending = Some((req, false));
        let mut sent = 0u32;
        let mut last = String::new();
        let mut last_answer: Option<(Response<Incoming>, BreakerGuard)> = None;
        let mut out_of_time = false;
        let mut clusters = order.iter().copied();
        // The cluster to try again after its link failed, and the gateway that failed.
        let mut again: Option<(&Backend, Arc<str>)> = None;
        let mut retried_here = false;
        loop {
            let (backend, failed_gateway) = match again.take() {
                Some((b, g)) => (b, Some(g)),
                None => match clusters.next() {
                    Some(b) => (b, None),
                    None => break,
                },
            };
            if backend.cluster == snap.cluster {
                // Local delivery is decided before a request is built for a peer.
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                out_of_time = true;
                break;
            }
            let (mut req, owes) = match pending.take() {
                Some(p) => p,
                None => match replay {
                    Some(r) if sent <= policy.retries => (r.request(), true),
                    _ => break,
                },
            };
            if owes && !self.budget.has_one() {
                last = format!("{last}; retry budget exhausted");
                self.metrics.retries_refused.inc();
                break;
            }
            let Some(in_flight) = self
                .breakers
                .enter(name, &backend.cluster, policy.max_requests)
            else {
                last = format!(
                    "{} has {} requests in flight (circuit open)",
                    backend.cluster, policy.max_requests
                );
                entry.failed_over_from.push(backend.cluster.clone());
                pending = Some((req, owes));
                continue;
            };
            let (mut sender, gateway) = match self
                .pool
                .get_any(backend, &self.health, failed_gateway.as_deref())
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    self.health.outcome(name, &backend.cluster, false);
                    last = e.to_string();
                    entry.failed_over_from.push(backend.cluster.clone());
                    pending = Some((req, owes));
                    continue;
                }
            };
            // After the dial: what is left of the request's time, if anything.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                out_of_time = true;
                break;
            }
            if owes {
                if !self.budget.withdraw() {
                    last = format!("{last}; retry budget exhausted");
                    self.metrics.retries_refused.inc();
                    break;
                }
                self.metrics.retries.inc();
            }
            let try_timeout = timeout.min(left);
            entry.dst_cluster = Some(backend.cluster.clone());
            entry.note(|e| e.upstream = Some(gateway.address.to_string()));
            sent += 1;
            // Registered before the request leaves: a verdict reached while it waits wakes it.
            let elsewhere = clusters.clone().any(|b| b.cluster != snap.cluster);
            let mut down = self
                .health
                .signals
                .watch(&gateway.address, name, &backend.cluster)
                .follow_ejection(elsewhere);
            let hedge = hedge::plan(
                self,
                policy,
                replay,
                name,
                backend,
                &gateway.address,
                clusters.clone(),
                &snap.cluster,
                try_timeout,
            );
            let try_span = entry.span.as_deref().map(|exchange| {
                let t = Try {
                    number: sent,
                    failover: !entry.failed_over_from.is_empty(),
                    shadow: false,
                    hedge: false,
                    cluster: &backend.cluster,
                    gateway: Some(&gateway.address),
                };
                TrySpan::begin(exchange, t, req.headers_mut())
            });
            let ring = self.latencies.ring(name, &backend.cluster);
            let started = tokio::time::Instant::now();
            let primary = tokio::time::timeout(try_timeout, sender.try_send_request(req));
            let good = |r: &Result<Response<Incoming>, _>| {
                r.as_ref().is_ok_and(|response: &Response<Incoming>| {
                    !retry::failed_attempt(
                        response.status(),
                        response.headers(),
                        &policy.grpc_statuses,
                    )
                })
            };
            let ended = self
                .race(primary, good, &mut down, hedge, policy, name, entry)
                .await;
            let answered = match ended {
                TryEnd::Done(r) => r,
                TryEnd::Hedged(won) => {
                    // The first try's stream is reset (its future was dropped in the race).
                    end(
                        try_span,
                        entry.span.as_deref_mut(),
                        None,
                        Some("cancelled: the hedge answered first"),
                    );
                    if let Some(exchange) = entry.span.as_deref_mut() {
                        trace::hedge_won(exchange);
                    }
                    self.metrics.hedge("won");
                    entry.reason = Some(format!(
                        "hedged: {} had not answered after {} ms; {} answered first",
                        backend.cluster,
                        started.elapsed().as_millis(),
                        won.cluster
                    ));
                    entry.note(|e| e.upstream = Some(won.gateway.to_string()));
                    entry.dst_cluster = Some(won.cluster.clone());
                    entry.winner = Some(won.cluster);
                    drop(in_flight);
                    return Ok((won.response, won.in_flight));
                }
                TryEnd::Judged(judged) => {
                    // The request's stream is reset (its future was dropped above). No outcome
                    // is recorded: the verdict already says what happened there.
                    last = format!(
                        "{} was judged down while the request waited on it ({}, through {})",
                        backend.cluster,
                        judged.reason(),
                        gateway.address
                    );
                    end(try_span, entry.span.as_deref_mut(), None, Some(&last));
                    let Some(r) = replay else {
                        self.metrics.try_judged_down("failed");
                        entry.failed_over_from.push(backend.cluster.clone());
                        let reason = format!(
                            "{last}; not retried: the request is not idempotent (or its body was \
                             not kept) and may have reached the service"
                        );
                        return Err(self.refuse(entry, StatusCode::BAD_GATEWAY, reason));
                    };
                    self.metrics.try_judged_down("moved");
                    // Sent on at once, and not paid from the retry budget: the budget bounds
                    // the load retries add to clusters that answer; this request never got an
                    // answer, and the cluster it left is out of the plan for new requests.
                    pending = Some((r.request(), false));
                    if judged == Judged::GatewayDown
                        && failed_gateway.is_none()
                        && backend.gateways.len() > 1
                    {
                        again = Some((backend, gateway.address.clone()));
                        retried_here = true;
                    } else {
                        entry.failed_over_from.push(backend.cluster.clone());
                    }
                    continue;
                }
            };
            match answered {
                Ok(Ok(response)) => {
                    let failed = retry::failed_attempt(
                        response.status(),
                        response.headers(),
                        &policy.grpc_statuses,
                    );
                    self.health.outcome(name, &backend.cluster, !failed);
                    let status = Some(response.status().as_u16());
                    if !failed {
                        end(try_span, entry.span.as_deref_mut(), status, None);
                        ring.record(started.elapsed());
                        if entry.hedged {
                            entry.winner = Some(backend.cluster.clone());
                        }
                        if !entry.failed_over_from.is_empty() {
                            entry.reason = Some(format!("failed over: {last}"));
                        } else if retried_here {
                            entry.reason = Some(format!("retried on another connection: {last}"));
                        }
                        return Ok((response, in_flight));
                    }
                    last = format!(
                        "{} answered {}{}",
                        backend.cluster,
                        response.status(),
                        response
                            .headers()
                            .get(body::ERROR_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    );
                    end(try_span, entry.span.as_deref_mut(), status, Some(&last));
                    entry.failed_over_from.push(backend.cluster.clone());
                    last_answer = Some((response, in_flight));
                }
                Ok(Err(mut e)) => {
                    last = format!(
                        "{} failed through {}: {}",
                        backend.cluster,
                        gateway.address,
                        e.error()
                    );
                    let unsent = e.take_message();
                    match (try_span, &unsent) {
                        (Some(t), Some(_)) => t.unsent(),
                        (t, _) => end(t, entry.span.as_deref_mut(), None, Some(&last)),
                    }
                    if unsent.is_none() {
                        self.health.outcome(name, &backend.cluster, false);
                        if replay.is_none() {
                            entry.failed_over_from.push(backend.cluster.clone());
                            return Err(self.refuse(entry, StatusCode::BAD_GATEWAY, last));
                        }
                    }
                    // Once per cluster: this gateway again over a new connection (it was
                    // closing), or another of the cluster's gateways (this one was lost).
                    if failed_gateway.is_none() && (unsent.is_some() || backend.gateways.len() > 1)
                    {
                        again = Some((backend, gateway.address.clone()));
                        retried_here = true;
                    } else {
                        entry.failed_over_from.push(backend.cluster.clone());
                    }
                    if let Some(back) = unsent {
                        sent -= 1;
                        // Paid for already, if it was a retry.
                        pending = Some((back, false));
                    }
                }
                Err(_) => {
                    self.health.outcome(name, &backend.cluster, false);
                    last = format!(
                        "{} did not answer within {} ms",
                        backend.cluster,
                        try_timeout.as_millis()
                    );
                    end(try_span, entry.span.as_deref_mut(), None, Some(&last));
                    entry.failed_over_from.push(backend.cluster.clone());
                    if replay.is_none() {
                        return Err(self.refuse(entry, StatusCode::GATEWAY_TIMEOUT, last));
                    }
                    if try_timeout < timeout {
                        // Cut short by the request's deadline: nothing is left for another.
                        out_of_time = true;
                        break;
                    }
                }
            }
        }
        if let Some(answer) = last_answer {
            // Nothing better: the last cluster's own answer, as it was.
            entry.failed_over_from.pop();
            entry.reason = Some(format!("every try failed: {last}"));
            return Ok(answer);
        }
        entry.dst_cluster = None;
        if out_of_time {
            let reason = format!(
                "no answer for {name} within the request timeout of {} ms: {last}",
                self.limits.request_timeout.as_millis()
            );
            return Err(self.refuse(entry, StatusCode::GATEWAY_TIMEOUT, reason));
        }
        let reason = format!("no cluster serving {name} could take the request: {last}");
        Err(self.refuse(entry, StatusCode::SERVICE_UNAVAILABLE, reason))
    }

    pub(super) fn refuse(
        &self,
        entry: &mut Entry,
        status: StatusCode,
        reason: String,
    ) -> Response<Body> {
        tracing::debug!(service = ?entry.service, %status, %reason, "outbound call refused");
        entry.status = status.as_u16();
        entry.reason = Some(reason.clone());
        self.metrics.request(entry.side, status.as_u16());
        body::error(status, &reason)
    }
}

/// Ends a try's trace, if it is traced.
fn end(
    span: Option<TrySpan>,
    exchange: Option<&mut isthmus_federation::telemetry::TraceSpan>,
    status: Option<u16>,
    error: Option<&str>,
) {
    if let Some(span) = span {
        span.end(exchange, status, error);
    }
}
