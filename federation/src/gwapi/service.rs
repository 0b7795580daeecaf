//! The `GatewayControl` gRPC service.

use crate::telemetry::KeyValue;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::gwapi::bootstrap::{self, GatewayToken};
use crate::gwapi::config;
use crate::gwapi::registration;
pub use crate::gwapi::registration::GatewayRegistration;
use crate::identity::{IdKind, IssuedCert, PeerInfo, SpiffeId};
use crate::node::{Node, keys};
use crate::proto::gateway_control_server::GatewayControl;
use crate::proto::{
    BootstrapRequest, ConfigAck, ConfigAckResponse, GatewayConfig, HealthReport, HealthReportAck,
    RegisterGatewayRequest, RegisterGatewayResponse, SignCsrRequest, SignedCertificate,
    SubscribeRequest, TrafficReport, TrafficReportAck,
};
use crate::store::{LeaseId, Op, Store};

/// Registration leases remembered for keep-alives before the table is forgotten.
const MAX_REMEMBERED_LEASES: usize = 4096;

pub struct GatewayService {
    node: Arc<Node>,
    leases: Mutex<HashMap<String, LeaseId>>,
}

impl GatewayService {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            leases: Mutex::new(HashMap::new()),
        }
    }

    /// The calling gateway's name, from its verified certificate.
    fn caller(&self, extensions: &tonic::Extensions) -> Result<String, Status> {
        let id = extensions
            .get::<PeerInfo>()
            .and_then(|p| p.id.clone())
            .ok_or_else(|| {
                Status::unauthenticated("a gateway certificate is required (bootstrap first)")
            })?;
        match id.kind() {
            IdKind::Gateway { name } if id.trust_domain() == &self.node.td => Ok(name),
            _ => Err(Status::permission_denied(format!(
                "{id} is not a gateway of this cluster"
            ))),
        }
    }

    async fn token_record(&self, gateway: &str) -> Result<Option<GatewayToken>, Status> {
        let bytes = self
            .node
            .store
            .get(&keys::gw_token(gateway))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        bytes
            .map(|b| {
                serde_json::from_slice(&b)
                    .map_err(|e| Status::internal(format!("gateway token record: {e}")))
            })
            .transpose()
    }

    async fn sign(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        kind: &str,
    ) -> Result<SignedCertificate, Status> {
        let issued: IssuedCert = {
            let ca = self.node.ca.lock().await;
            ca.sign(csr, id)
                .map_err(|e| Status::invalid_argument(e.to_string()))?
        };
        self.node
            .metrics
            .certificates_issued
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: kind.into(),
            })
            .inc();
        Ok(SignedCertificate {
            chain_pem: issued.chain_pem,
            not_after_ms: issued
                .not_after
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            bundles: self.node.bundles().iter().map(|b| b.to_proto()).collect(),
        })
    }
}

#[tonic::async_trait]
impl GatewayControl for GatewayService {
    async fn bootstrap(
        &self,
        request: Request<BootstrapRequest>,
    ) -> Result<Response<SignedCertificate>, Status> {
        let req = request.into_inner();
        crate::model::names::check_label("gateway name", &req.gateway)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let record = self.token_record(&req.gateway).await?;
        let valid = record
            .as_ref()
            .is_some_and(|r| bootstrap::matches(r, &req.token));
        if !valid {
            tracing::warn!(gateway = %req.gateway, "refused a gateway bootstrap: unknown or revoked token");
            return Err(Status::permission_denied(
                "bootstrap token unknown or revoked: create one with `isthmus gateway bootstrap --name <gateway>`",
            ));
        }
        let id = SpiffeId::gateway(&self.node.td, &req.gateway)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let signed = self.sign(&req.csr_der, &id, "gateway_bootstrap").await?;
        tracing::info!(gateway = %req.gateway, "gateway bootstrapped");
        Ok(Response::new(signed))
    }

    async fn sign_csr(
        &self,
        request: Request<SignCsrRequest>,
    ) -> Result<Response<SignedCertificate>, Status> {
        let name = self.caller(request.extensions())?;
        if self.token_record(&name).await?.is_none() {
            return Err(Status::permission_denied(format!(
                "gateway {name} was revoked"
            )));
        }
        let id =
            SpiffeId::gateway(&self.node.td, &name).map_err(|e| Status::internal(e.to_string()))?;
        let signed = self
            .sign(&request.into_inner().csr_der, &id, "gateway_renewal")
            .await?;
        Ok(Response::new(signed))
    }

    async fn register_gateway(
        &self,
        request: Request<RegisterGatewayRequest>,
    ) -> Result<Response<RegisterGatewayResponse>, Status> {
        let name = self.caller(request.extensions())?;
        let req = request.into_inner();
        if req.name != name {
            return Err(Status::permission_denied(format!(
                "gateway {name} cannot register as {}",
                req.name
            )));
        }
        let from_service = self
            .node
            .cfg
            .kubernetes
            .as_ref()
            .is_some_and(|k| k.gateway_service.is_some());
        let (address, inbound_port) = registration::advertised(&req, from_service)?;
        let zone = if req.zone.is_empty() {
            None
        } else {
            crate::model::names::check_label("zone", &req.zone)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Some(req.zone.clone())
        };
        let local = if req.local_address.is_empty() {
            None
        } else {
            Some(req.local_address.parse().map_err(|_| {
                Status::invalid_argument(
                    "local_address must be an IP address (the gateway's pod IP), without a port",
                )
            })?)
        };
        let limits = &self.node.cfg.gateways;
        let ttl = if req.ttl_seconds == 0 {
            limits.default_ttl
        } else {
            Duration::from_secs(u64::from(req.ttl_seconds)).clamp(limits.min_ttl, limits.max_ttl)
        };
        let store = &self.node.store;
        let key = registration::key(&name, local);
        let existing = self
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        let alive = match existing {
            Some(lease) => store
                .keep_alive(lease)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?,
            None => false,
        };
        let value = serde_json::to_vec(&GatewayRegistration {
            address,
            zone,
            local,
            inbound_port,
        })
        .map_err(|e| Status::internal(e.to_string()))?;
        let lease = match (existing, alive) {
            (Some(lease), true) => lease,
            _ => store
                .grant_lease(ttl)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?,
        };
        // Rewrite only when new or changed, so a keep-alive is cheap.
        let current = store
            .get(&key)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if current.as_deref() != Some(value.as_slice()) || !alive {
            store
                .commit(
                    Vec::new(),
                    vec![Op::PutLeased {
                        key: key.clone(),
                        value,
                        lease,
                    }],
                )
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        }
        {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            // Every pod a Deployment ever ran has its own key: forget them all now and then
            // (a live one is granted a new lease on its next renewal; old leases expire).
            if leases.len() >= MAX_REMEMBERED_LEASES {
                leases.clear();
            }
            leases.insert(key, lease);
        }
        Ok(Response::new(RegisterGatewayResponse {
            ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
        }))
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<GatewayConfig, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let name = self.caller(request.extensions())?;
        let mut rx = self.node.view.subscribe();
        let metrics = self.node.metrics.clone();
        metrics.gateways_subscribed.inc();
        tracing::info!(gateway = %name, "gateway subscribed to config");
        let (tracer, gateway) = (self.node.tracing.clone(), name.to_string());
        let stream = async_stream(
            move |tx| async move {
                let mut last = rx.borrow_and_update().clone();
                for part in config::snapshot_parts(&last) {
                    if tx.send(Ok(part)).await.is_err() {
                        return;
                    }
                }
                while rx.changed().await.is_ok() {
                    let next = rx.borrow_and_update().clone();
                    if let Some(parts) = config::delta_parts(&last, &next) {
                        // One span per delta pushed: how long the gateway took to take it.
                        let mut span = tracer.root_span(
                            "gateway.config_push",
                            vec![
                                KeyValue::new("isthmus.gateway", gateway.clone()),
                                KeyValue::new("isthmus.config.version", next.version as i64),
                            ],
                        );
                        let mut sent = 0i64;
                        for part in parts {
                            if tx.send(Ok(part)).await.is_err() {
                                if let Some(s) = span.as_mut() {
                                    s.fail("the gateway's stream closed");
                                }
                                return;
                            }
                            sent += 1;
                        }
                        if let Some(s) = span.as_mut() {
                            s.set(KeyValue::new("isthmus.config.parts", sent));
                        }
                    }
                    last = next;
                }
            },
            metrics,
        );
        Ok(Response::new(stream))
    }

    async fn ack_config(
        &self,
        request: Request<ConfigAck>,
    ) -> Result<Response<ConfigAckResponse>, Status> {
        let name = self.caller(request.extensions())?;
        let ack = request.into_inner();
        let own = self.node.td.to_string();
        let seq = ack
            .applied_bundles
            .iter()
            .filter(|b| b.trust_domain == own)
            .map(|b| b.sequence)
            .max()
            .unwrap_or(0);
        let mut gws = self.node.gateways.lock().unwrap_or_else(|p| p.into_inner());
        let g = gws.entry(name).or_default();
        g.acked_version = g.acked_version.max(ack.version);
        g.acked_bundle_sequence = g.acked_bundle_sequence.max(seq);
        Ok(Response::new(ConfigAckResponse {}))
    }

    async fn report_health(
        &self,
        request: Request<Streaming<HealthReport>>,
    ) -> Result<Response<HealthReportAck>, Status> {
        let name = self.caller(request.extensions())?;
        let mut reports = request.into_inner();
        while let Some(report) = reports.next().await {
            let report = report?;
            let mut gws = self.node.gateways.lock().unwrap_or_else(|p| p.into_inner());
            let g = gws.entry(name.clone()).or_default();
            // Each report is the gateway's whole current view: pairs it no longer reports
            // (a service gone, a cluster dropped) must not keep an old verdict.
            let mut health = std::collections::BTreeMap::new();
            g.health_reasons.clear();
            for v in report.verdicts {
                let key = v
                    .service
                    .map(|k| format!("{}/{}", k.namespace, k.name))
                    .unwrap_or_default();
                let key = format!("{}:{key}", v.cluster);
                if !v.reason.is_empty() {
                    g.health_reasons.insert(key.clone(), v.reason);
                }
                health.insert(key, v.healthy);
            }
            if g.health != health {
                g.health = health;
                self.node.verdicts.send_modify(|n| *n = n.wrapping_add(1));
            }
            g.vip_listeners = report.vip_listeners;
            g.unbound_vips = report
                .unbound_vips
                .into_iter()
                .filter_map(|u| {
                    let ip = u.address.parse().ok()?;
                    let k = u.service?;
                    let service =
                        crate::model::ServiceKey::parse(&format!("{}/{}", k.namespace, k.name))
                            .ok()?;
                    Some((
                        ip,
                        crate::node::UnboundVip {
                            service,
                            reason: u.reason,
                        },
                    ))
                })
                .collect();
        }
        Ok(Response::new(HealthReportAck {}))
    }

    async fn report_traffic(
        &self,
        request: Request<TrafficReport>,
    ) -> Result<Response<TrafficReportAck>, Status> {
        let name = self.caller(request.extensions())?;
        self.node
            .traffic
            .record(&name, request.get_ref(), crate::node::now_ms())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(TrafficReportAck {}))
    }
}

/// Runs `f` as a task feeding a channel-backed stream; the gauge drops when the stream ends.
fn async_stream<F, Fut>(
    f: F,
    metrics: crate::metrics::Metrics,
) -> Pin<Box<dyn Stream<Item = Result<GatewayConfig, Status>> + Send>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<GatewayConfig, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // A few parts in flight: each part carries up to 2,000 routes, and a slow gateway must not
    // make its stream hold a whole 100,000-route view in messages.
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let fut = f(tx);
    tokio::spawn(async move {
        fut.await;
        metrics.gateways_subscribed.dec();
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
