//! Shadow copies (`policy.shadow`): a share of a service's HTTP requests is copied to another
//! cluster's gateway, fire-and-forget. The copy runs in a task of its own, its response is
//! drained and dropped, it is never retried, its outcome never touches health, outlier or
//! circuit-breaker state, and nothing about it can delay or alter the caller's response.
//!
//! A copy needs the whole body in hand: only requests whose body fits the bounded replay buffer
//! (64 KiB, already complete when the request is sent) are copied; the others, and copies beyond
//! [`MAX_IN_FLIGHT`], are skipped and counted. CONNECT, WebSocket and raw TCP are never copied.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{HeaderValue, Request};
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Outbound, Resolved};
use crate::accesslog::{Entry, Side};
use crate::body::Body;
use crate::headers::SHADOW;
use crate::lb::{chance, random};
use crate::metrics::Metrics;
use crate::policy::ServicePolicy;
use crate::pool::PeerPool;
use crate::table::{Import, Snapshot};

/// Shadow copies in flight per gateway; more are skipped.
pub const MAX_IN_FLIGHT: usize = 256;

/// The bound on shadow copies in flight. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShadowSlots(Arc<Semaphore>);

impl ShadowSlots {
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max)))
    }

    fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

impl Default for ShadowSlots {
    fn default() -> Self {
        Self::new(MAX_IN_FLIGHT)
    }
}

/// A copy to send: where, and what is needed to send it.
pub(super) struct ShadowCopy {
    import: Arc<Import>,
    /// Index of the shadow cluster in `import.backends`.
    backend: usize,
    slot: OwnedSemaphorePermit,
}

impl Outbound {
    /// Whether this call is copied and where: the policy shadows the service, the draw falls
    /// under its percent, and the shadow cluster can take a copy now. A drawn copy that cannot
    /// be sent is counted as skipped.
    pub(super) fn shadow_copy(
        &self,
        snap: &Snapshot,
        resolved: &Resolved,
        policy: &ServicePolicy,
    ) -> Option<ShadowCopy> {
        let shadow = policy.shadow.as_ref()?;
        if !chance(shadow.percent, random()) {
            return None;
        }
        let import = &resolved.target.import;
        let found = import
            .backends
            .iter()
            .position(|b| b.cluster == shadow.cluster);
        let why_not = match found.map(|i| (i, &import.backends[i])) {
            None => "the shadow cluster does not serve the service",
            Some((_, b)) if b.cluster == snap.cluster => {
                "the shadow cluster is this cluster (copies go to peer gateways only)"
            }
            Some((_, b)) if policy.fences_out(&b.region) => {
                "the shadow cluster is outside the policy's fence"
            }
            Some((_, b)) if b.gateways.is_empty() || b.healthy == 0 => {
                "the shadow cluster has no gateway or no healthy endpoint"
            }
            Some((_, b))
                if !self
                    .health
                    .verdict(&import.name, b, false, policy.slow_start)
                    .healthy =>
            {
                "the shadow cluster is unhealthy"
            }
            Some((i, _)) => match self.shadows.take() {
                Some(slot) => {
                    return Some(ShadowCopy {
                        import: import.clone(),
                        backend: i,
                        slot,
                    });
                }
                None => "too many shadow copies in flight",
            },
        };
        tracing::debug!(service = %import.name, shadow = %shadow.cluster, reason = why_not, "shadow copy skipped");
        self.metrics.shadow(&import.name, "skipped");
        None
    }

    /// Sends `req` (a copy built for the peer) in a task of its own.
    pub(super) fn send_shadow(
        &self,
        snap: &Snapshot,
        copy: ShadowCopy,
        mut req: Request<Body>,
        parent: Option<&isthmus_federation::telemetry::TraceSpan>,
    ) {
        req.headers_mut()
            .insert(SHADOW, HeaderValue::from_static("1"));
        let mut entry = Entry::new(
            self.access_log,
            Side::Outbound,
            "http",
            snap.cluster.clone(),
        );
        entry.shadow = true;
        entry.service = Some(copy.import.name.clone());
        if let Some(exchange) = parent {
            let t = crate::trace::Try {
                number: 1,
                failover: false,
                shadow: true,
                hedge: false,
                cluster: &copy.import.backends[copy.backend].cluster,
                gateway: None,
            };
            let span = crate::trace::start_try(exchange, t);
            crate::trace::inject(&span, req.headers_mut());
            entry.span = Some(Box::new(span));
        }
        entry.caller = req
            .headers()
            .get(crate::headers::CALLER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        entry.note(|e| {
            e.method = Some(req.method().to_string());
            e.path = req.uri().path_and_query().map(|p| p.to_string());
        });
        let task = ShadowTask {
            pool: self.pool.clone(),
            health: self.health.clone(),
            metrics: self.metrics.clone(),
            timeout: self.limits.request_timeout,
        };
        tokio::spawn(task.run(copy, req, entry));
    }
}

/// What a copy's task holds.
struct ShadowTask {
    pool: Arc<PeerPool>,
    health: Arc<crate::health::Health>,
    metrics: Arc<Metrics>,
    timeout: std::time::Duration,
}

impl ShadowTask {
    async fn run(self, copy: ShadowCopy, req: Request<Body>, mut entry: Entry) {
        let _slot = copy.slot;
        let backend = &copy.import.backends[copy.backend];
        let service = &copy.import.name;
        entry.dst_cluster = Some(backend.cluster.clone());
        let exchange = async {
            let (mut sender, gateway) = self
                .pool
                .get_any(backend, &self.health, None)
                .await
                .map_err(|e| e.to_string())?;
            entry.note(|e| e.upstream = Some(gateway.address.to_string()));
            let response = sender
                .try_send_request(req)
                .await
                .map_err(|e| e.error().to_string())?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("response body: {e}"))?;
                if let Some(data) = frame.data_ref() {
                    entry
                        .counters
                        .bytes_out
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Ok::<u16, String>(status)
        };
        let outcome = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(status)) => {
                entry.status = status;
                "sent"
            }
            Ok(Err(reason)) => {
                entry.status = 502;
                entry.reason = Some(format!("shadow copy failed: {reason}"));
                "failed"
            }
            Err(_) => {
                entry.status = 504;
                entry.reason = Some(format!(
                    "shadow copy got no whole answer within {:?}",
                    self.timeout
                ));
                "failed"
            }
        };
        tracing::debug!(%service, peer.cluster = %backend.cluster, outcome, "shadow copy done");
        self.metrics.shadow(service, outcome);
        entry.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draw_copies_the_percent_asked() {
        let n = 10_000u64;
        let step = u64::MAX / n;
        for (percent, want) in [(0.0, 0), (10.0, 1_000), (37.5, 3_750), (100.0, n)] {
            let copied = (0..n).filter(|i| chance(percent, i * step)).count() as u64;
            assert!(
                copied.abs_diff(want) <= 1,
                "{percent} %: {copied} of {n} copied"
            );
        }
    }

    #[tokio::test]
    async fn slots_bound_the_copies_in_flight() {
        let slots = ShadowSlots::new(2);
        let held: Vec<_> = (0..2).map(|_| slots.take().expect("slot")).collect();
        assert!(slots.take().is_none(), "the third copy is skipped");
        drop(held);
        assert!(slots.take().is_some());
    }
}
