//! The gateway's conversations with its federation, each a loop that survives the
//! federation going away:
//! - the config stream (snapshot, then deltas) folded into the routing table and published on a
//!   `watch` channel; trust bundles applied to the live `TrustStore`; every applied version
//!   ACKed (root rotation waits for it). When the stream breaks the last snapshot stays in
//!   service and the gateway resubscribes with backoff;
//! - certificate renewal at half the remaining lifetime (a fresh key each time; it never leaves
//!   the gateway), swapped into the live `CertStore` so no listener or connection restarts;
//! - registration of the advertised inbound address under a lease, renewed at a third of it;
//! - health reports: its verdicts and the VIP addresses it could not bind.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use isthmus_federation::identity::{SpiffeId, TrustBundle, TrustDomain, tls};
use isthmus_federation::proto::{
    ConfigAck, HealthReport, HealthVerdict, RegisterGatewayRequest, ServiceKey, SignCsrRequest,
    SubscribeRequest, UnboundVip,
};
use tokio::sync::watch;

use crate::control::ControlClient;
use crate::metrics::{Metrics, ResultLabels};
use crate::outbound::listeners::UnboundVips;
use crate::table::{Snapshot, TableBuilder};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

fn next_backoff(b: Duration) -> Duration {
    (b * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
}

/// Applies a snapshot's bundles to the live trust store: peers' roots added or replaced, a
/// removed peer's roots dropped. The own trust domain is never dropped.
fn apply_trust(client: &ControlClient, snap: &Snapshot) {
    let mut present: Vec<TrustDomain> = vec![client.trust_domain.clone()];
    for wire in &snap.bundles {
        match TrustBundle::from_proto(wire) {
            Ok(b) => {
                present.push(b.trust_domain().clone());
                client.trust.set(b);
            }
            Err(e) => {
                tracing::warn!(trust_domain = %wire.trust_domain, error = %e, "ignoring an invalid trust bundle from the federation");
                if let Ok(td) = wire.trust_domain.parse() {
                    present.push(td);
                }
            }
        }
    }
    for td in client.trust.snapshot().into_keys() {
        if !present.contains(&td) {
            tracing::info!(trust_domain = %td, "peer trust bundle removed");
            client.trust.remove(&td);
        }
    }
}

/// Follows the config stream forever.
pub async fn config_stream(
    client: Arc<ControlClient>,
    tx: watch::Sender<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    policy_defaults: crate::policy::ServicePolicy,
) {
    let mut builder = TableBuilder::with_policy_defaults(policy_defaults);
    let mut backoff = Duration::ZERO;
    loop {
        let known = tx.borrow().version;
        let subscribed = client
            .client()
            .subscribe(SubscribeRequest {
                gateway: client.gateway.clone(),
                known_version: known,
            })
            .await;
        match subscribed {
            Ok(response) => {
                metrics.control_connected.set(1);
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(msg)) => {
                            backoff = Duration::ZERO;
                            let Some(snap) = builder.apply(msg) else {
                                continue;
                            };
                            apply_trust(&client, &snap);
                            metrics
                                .config_version
                                .set(i64::try_from(snap.version).unwrap_or(i64::MAX));
                            metrics.imported_services.set(snap.imports.len() as i64);
                            metrics.exported_services.set(snap.exports.len() as i64);
                            let ack = ConfigAck {
                                gateway: client.gateway.clone(),
                                version: snap.version,
                                applied_bundles: snap.bundles.clone(),
                            };
                            tracing::debug!(
                                version = snap.version,
                                imports = snap.imports.len(),
                                exports = snap.exports.len(),
                                "config applied"
                            );
                            tx.send_replace(Arc::new(snap));
                            if let Err(e) = client.client().ack_config(ack).await {
                                tracing::debug!(error = %e.message(), "config ACK failed; the next version ACKs again");
                            }
                        }
                        Ok(None) => {
                            tracing::info!("the federation ended the config stream; resubscribing");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e.message(), "config stream broken; serving the last config and resubscribing");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), "cannot subscribe to the federation's config (is it running?); serving the last config");
            }
        }
        metrics.control_connected.set(0);
        backoff = next_backoff(backoff);
        tokio::time::sleep(backoff).await;
    }
}

/// When to renew a certificate that expires at `expires`: at half the remaining lifetime, at
/// least 200 ms from now.
pub fn renewal_delay(now: SystemTime, expires: SystemTime) -> Duration {
    let remaining = expires.duration_since(now).unwrap_or_default();
    (remaining / 2).max(Duration::from_millis(200))
}

/// Renews the gateway's certificate forever.
pub async fn renew_certificates(client: Arc<ControlClient>, metrics: Arc<Metrics>) {
    let id = client.certs.id();
    loop {
        let expires = client.certs.expires_at().unwrap_or_else(SystemTime::now);
        let now = SystemTime::now();
        metrics.certificate_expiry_seconds.set(
            i64::try_from(expires.duration_since(now).unwrap_or_default().as_secs()).unwrap_or(0),
        );
        tokio::time::sleep(renewal_delay(now, expires)).await;
        let Some(id) = id.clone() else {
            return;
        };
        match renew_once(&client, &id).await {
            Ok(()) => {
                metrics
                    .renewals
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                tracing::debug!(expires = ?client.certs.expires_at(), "certificate renewed");
            }
            Err(reason) => {
                metrics
                    .renewals
                    .get_or_create(&ResultLabels { result: "failed" })
                    .inc();
                tracing::warn!(error = %reason, "certificate renewal failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn renew_once(client: &ControlClient, id: &SpiffeId) -> Result<(), String> {
    let (key, csr) = tls::generate_key_and_csr(id).map_err(|e| e.to_string())?;
    let signed = client
        .client()
        .sign_csr(SignCsrRequest { csr_der: csr })
        .await
        .map_err(|s| format!("the federation refused the renewal: {}", s.message()))?
        .into_inner();
    client
        .certs
        .set_from_pem(&signed.chain_pem, &key)
        .map_err(|e| e.to_string())?;
    for b in &signed.bundles {
        if let Ok(bundle) = TrustBundle::from_proto(b) {
            client.trust.set(bundle);
        }
    }
    Ok(())
}

/// Keeps the gateway's advertised address (and, on Kubernetes, its pod IP: `local`, else empty)
/// registered under a lease. An empty `advertise` (Kubernetes mode) sends the bound inbound port
/// instead: the federation advertises its gateway Service's load-balancer address.
pub async fn register(
    client: Arc<ControlClient>,
    advertise: String,
    inbound_port: u16,
    local: String,
    ttl: Duration,
) {
    let every = (ttl / 3).max(Duration::from_millis(200));
    loop {
        let req = RegisterGatewayRequest {
            name: client.gateway.clone(),
            advertise_address: advertise.clone(),
            zone: String::new(),
            ttl_seconds: u32::try_from(ttl.as_secs().max(1)).unwrap_or(u32::MAX),
            local_address: local.clone(),
            inbound_port: if advertise.is_empty() {
                u32::from(inbound_port)
            } else {
                0
            },
        };
        let wait = match client.client().register_gateway(req).await {
            Ok(_) => every,
            Err(e) => {
                tracing::warn!(error = %e.message(), "registering with the federation failed; retrying");
                Duration::from_secs(1).min(every)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The verdicts this gateway holds now, one per service per serving peer cluster.
fn verdicts(snap: &Snapshot, health: &crate::health::Health) -> Vec<HealthVerdict> {
    let mut out = Vec::new();
    for import in snap.imports.values() {
        let policy = snap.traffic.for_service(&import.name);
        let (svc, ns) = import.name.split_once('.').unwrap_or((&import.name, ""));
        for b in &import.backends {
            let local = b.cluster == snap.cluster;
            let v = health.verdict(&import.name, b, local, policy.slow_start);
            out.push(HealthVerdict {
                cluster: b.cluster.to_string(),
                service: Some(ServiceKey {
                    namespace: ns.to_string(),
                    name: svc.to_string(),
                }),
                healthy: v.healthy,
                reason: v.reason.unwrap_or_default().to_string(),
            });
        }
    }
    let key = |v: &HealthVerdict| {
        let s = v.service.as_ref();
        (
            v.cluster.clone(),
            s.map(|k| k.namespace.clone()),
            s.map(|k| k.name.clone()),
        )
    };
    out.sort_by_key(key);
    out
}

/// The wire form of the unbound VIP addresses.
fn unbound_vips(unbound: &UnboundVips) -> Vec<UnboundVip> {
    unbound
        .iter()
        .map(|(ip, (service, reason))| {
            let (svc, ns) = service.split_once('.').unwrap_or((service, ""));
            UnboundVip {
                address: ip.to_string(),
                service: Some(ServiceKey {
                    namespace: ns.to_string(),
                    name: svc.to_string(),
                }),
                reason: reason.clone(),
            }
        })
        .collect()
}

/// Reports this gateway's verdicts to its federation (for DNS answers and `status`) whenever
/// they change, and in full every 30 s; reconnects when the stream breaks.
///
/// With `unbound` (the gateway listens on VIPs), each report also says which VIP addresses it
/// could not bind, so that the federation's DNS stops answering addresses no gateway serves.
pub async fn report_health(
    client: Arc<ControlClient>,
    table: watch::Receiver<Arc<Snapshot>>,
    health: Arc<crate::health::Health>,
    unbound: Option<watch::Receiver<Arc<UnboundVips>>>,
) {
    let every = Duration::from_secs(1);
    let full = Duration::from_secs(30);
    loop {
        let (tx, rx) = tokio::sync::mpsc::channel::<HealthReport>(4);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let mut rpc = client.client();
        let call = tokio::spawn(async move { rpc.report_health(stream).await });
        let mut last: Option<(Vec<HealthVerdict>, Arc<UnboundVips>)> = None;
        let mut last_full = tokio::time::Instant::now();
        loop {
            let snap = table.borrow().clone();
            let now = (
                verdicts(&snap, &health),
                unbound
                    .as_ref()
                    .map(|u| u.borrow().clone())
                    .unwrap_or_default(),
            );
            if last.as_ref() != Some(&now) || last_full.elapsed() >= full {
                let report = HealthReport {
                    gateway: client.gateway.clone(),
                    verdicts: now.0.clone(),
                    vip_listeners: unbound.is_some(),
                    unbound_vips: unbound_vips(&now.1),
                };
                if tx.send(report).await.is_err() {
                    break;
                }
                last = Some(now);
                last_full = tokio::time::Instant::now();
            }
            if call.is_finished() {
                break;
            }
            tokio::time::sleep(every).await;
        }
        drop(tx);
        let _ = call.await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_happens_at_half_the_remaining_lifetime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let cases = [(10_000, 5_000), (1_000, 500), (100, 200), (0, 200)];
        for (remaining_ms, want_ms) in cases {
            let expires = now + Duration::from_millis(remaining_ms);
            assert_eq!(renewal_delay(now, expires), Duration::from_millis(want_ms));
        }
        assert_eq!(
            renewal_delay(now, now - Duration::from_secs(5)),
            Duration::from_millis(200),
            "an expired certificate is renewed at once"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Duration::ZERO;
        let mut seen = vec![];
        for _ in 0..8 {
            b = next_backoff(b);
            seen.push(b.as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}
