//! The state-changing admin operations behind the local admin socket, the config dump, and the
//! root-rotation driver (switches signing once every peer and gateway ACKed the new bundle).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin::{AdminError, AdminHandler};
use crate::gwapi::bootstrap::{self, BootstrapFile, GatewayToken};
use crate::identity::ca::Rotation;
use crate::model::ClusterName;
use crate::node::ca::{CaStep, StepError};
use crate::node::run::Bound;
use crate::node::{Node, keys, now_ms};
use crate::peering::token;
use crate::store::{Op, Store};

pub struct AdminOps {
    pub node: Arc<Node>,
    pub bound: Bound,
}

fn parse<T: for<'de> Deserialize<'de>>(body: Value) -> Result<T, AdminError> {
    serde_json::from_value(body).map_err(|e| AdminError::BadRequest(e.to_string()))
}

fn unavailable(e: impl std::fmt::Display) -> AdminError {
    AdminError::Unavailable(e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerArg {
    peer: ClusterName,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenArg {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayArg {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadIssueArg {
    namespace: String,
    service_account: String,
    /// The workload's CSR (DER, standard base64). Its key never leaves the workload.
    csr_der_b64: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetireArg {
    #[serde(default)]
    force: bool,
}

impl AdminHandler for AdminOps {
    fn call(&self, op: &str, body: Value) -> BoxFuture<'_, Result<Value, AdminError>> {
        let op = op.to_string();
        Box::pin(async move {
            let node = &self.node;
            match op.as_str() {
                "status" => Ok(status(node, &self.bound).await),
                "peering.token" => {
                    let PeerArg { peer } = parse(body)?;
                    if peer == node.me.cluster {
                        return Err(AdminError::BadRequest(
                            "a cluster cannot peer with itself".into(),
                        ));
                    }
                    let bundle = node
                        .trust
                        .get(&node.td)
                        .ok_or_else(|| AdminError::Internal("own bundle missing".into()))?;
                    let ttl =
                        i64::try_from(node.cfg.peering.token_ttl.as_millis()).unwrap_or(i64::MAX);
                    let address = node.advertised_peering.clone();
                    let (t, record) = token::issue(
                        node.me.cluster.clone(),
                        node.td.clone(),
                        address,
                        bundle.to_spiffe_json(),
                        bundle.sequence(),
                        peer.clone(),
                        now_ms().saturating_add(ttl),
                    )
                    .map_err(|e| AdminError::Internal(e.to_string()))?;
                    let value = serde_json::to_vec(&record)
                        .map_err(|e| AdminError::Internal(e.to_string()))?;
                    node.store
                        .commit(
                            Vec::new(),
                            vec![Op::Put {
                                key: keys::token(&record.id),
                                value,
                            }],
                        )
                        .await
                        .map_err(unavailable)?;
                    tracing::info!(token.id = %record.id, peer = %peer, "peering token created");
                    let encoded = t
                        .encode()
                        .map_err(|e| AdminError::Internal(e.to_string()))?;
                    Ok(json!({ "token": encoded, "peer": peer, "expires_at_ms": t.expires_at_ms }))
                }
                "peering.establish" => {
                    let TokenArg { token } = parse(body)?;
                    let record = crate::peering::dialer::establish(node, &token)
                        .await
                        .map_err(|e| match e {
                            crate::peering::dialer::EstablishError::Connect { .. } => {
                                AdminError::Unavailable(e.to_string())
                            }
                            crate::peering::dialer::EstablishError::Collision(_) => {
                                AdminError::Conflict(e.to_string())
                            }
                            _ => AdminError::BadRequest(e.to_string()),
                        })?;
                    Ok(json!({ "peer": record.cluster, "trust_domain": record.trust_domain }))
                }
                "peering.list" => Ok(json!({ "peers": peers(node).await })),
                "peering.show" => {
                    let PeerArg { peer } = parse(body)?;
                    peers(node)
                        .await
                        .into_iter()
                        .find(|p| p["cluster"] == json!(peer))
                        .ok_or_else(|| AdminError::NotFound(format!("no peer named {peer}")))
                }
                "peering.remove" => {
                    let PeerArg { peer } = parse(body)?;
                    let removed = crate::peering::dialer::remove(node, &peer)
                        .await
                        .map_err(unavailable)?;
                    if !removed {
                        return Err(AdminError::NotFound(format!("no peer named {peer}")));
                    }
                    Ok(json!({ "removed": peer }))
                }
                "gateway.bootstrap" => {
                    let GatewayArg { name } = parse(body)?;
                    crate::model::names::check_label("gateway name", &name)
                        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
                    let secret = bootstrap::new_token().map_err(AdminError::Internal)?;
                    let record = GatewayToken {
                        gateway: name.clone(),
                        token_sha256: bootstrap::hash(&secret),
                        created_at_ms: now_ms(),
                    };
                    let value = serde_json::to_vec(&record)
                        .map_err(|e| AdminError::Internal(e.to_string()))?;
                    node.store
                        .commit(
                            Vec::new(),
                            vec![Op::Put {
                                key: keys::gw_token(&name),
                                value,
                            }],
                        )
                        .await
                        .map_err(unavailable)?;
                    let bundle = node
                        .trust
                        .get(&node.td)
                        .ok_or_else(|| AdminError::Internal("own bundle missing".into()))?;
                    let api = node
                        .cfg
                        .listen
                        .api
                        .advertise
                        .clone()
                        .unwrap_or_else(|| self.bound.api.to_string());
                    let file = BootstrapFile {
                        gateway: name,
                        cluster: node.me.cluster.to_string(),
                        trust_domain: node.td.to_string(),
                        federation: api,
                        token: secret,
                        ca_bundle_pem: bundle.to_pem(),
                    };
                    serde_json::to_value(file).map_err(|e| AdminError::Internal(e.to_string()))
                }
                "gateway.revoke" => {
                    let GatewayArg { name } = parse(body)?;
                    node.store
                        .commit(
                            Vec::new(),
                            vec![
                                Op::Delete {
                                    key: keys::gw_token(&name),
                                },
                                Op::Delete {
                                    key: keys::gateway(&name),
                                },
                                Op::DeletePrefix {
                                    prefix: keys::gateway_instances(&name),
                                },
                            ],
                        )
                        .await
                        .map_err(unavailable)?;
                    Ok(json!({ "revoked": name }))
                }
                "gateway.list" => {
                    let gws = node
                        .gateways
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    Ok(json!({ "gateways": gws }))
                }
                "workload.issue" => {
                    use base64::Engine as _;
                    let WorkloadIssueArg {
                        namespace,
                        service_account,
                        csr_der_b64,
                    } = parse(body)?;
                    let id =
                        crate::identity::SpiffeId::workload(&node.td, &namespace, &service_account)
                            .map_err(|e| AdminError::BadRequest(e.to_string()))?;
                    let csr = base64::engine::general_purpose::STANDARD
                        .decode(csr_der_b64.trim())
                        .map_err(|e| {
                            AdminError::BadRequest(format!(
                                "csr_der_b64 is not standard base64: {e}"
                            ))
                        })?;
                    let issued = node
                        .ca
                        .lock()
                        .await
                        .sign(&csr, &id)
                        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
                    let not_after_ms = issued
                        .not_after
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                        .unwrap_or(0);
                    tracing::info!(spiffe_id = %id, "issued a workload certificate");
                    Ok(json!({
                        "spiffe_id": id.to_string(),
                        "chain_pem": issued.chain_pem,
                        "not_after_ms": not_after_ms,
                    }))
                }
                "ca.status" => Ok(ca_status(node).await),
                "ca.rotate" => {
                    node.ca_step(CaStep::BeginRotation)
                        .await
                        .map_err(step_error)?;
                    tracing::info!("root rotation started: new root published beside the old");
                    Ok(ca_status(node).await)
                }
                "ca.retire" => {
                    let RetireArg { force } = if body.is_null() {
                        RetireArg::default()
                    } else {
                        parse(body)?
                    };
                    node.ca_step(CaStep::RetireOld { force })
                        .await
                        .map_err(step_error)?;
                    tracing::info!("old root retired");
                    Ok(ca_status(node).await)
                }
                "catalog" => {
                    let view = node.view.borrow().clone();
                    serde_json::to_value(&*view).map_err(|e| AdminError::Internal(e.to_string()))
                }
                other => Err(AdminError::NotFound(format!(
                    "unknown operation {other:?}: see `isthmus --help` for what this version supports"
                ))),
            }
        })
    }
}

/// A CA step refused for its order or timing is a conflict; one that could not be stored or
/// announced is unavailable (retry).
fn step_error(e: StepError) -> AdminError {
    match e {
        StepError::Ca(e) => AdminError::Conflict(e.to_string()),
        StepError::Announce(e) => AdminError::Unavailable(e.to_string()),
    }
}

async fn peers(node: &Node) -> Vec<Value> {
    let state = node.state.lock().await;
    let now = now_ms();
    state
        .peers
        .values()
        .map(|p| {
            let l = node.link(&p.place.cluster);
            json!({
                "cluster": p.place.cluster,
                "trust_domain": p.place.trust_domain,
                "region": p.place.region,
                "zone": p.place.zone,
                "dials": p.record.dial_address,
                "state": if l.connected { "connected" } else { "disconnected" },
                "last_error": l.last_error,
                // `services`: what the peer offers us (stored); `imported`: what our import
                // rules admit of it, which is what reaches routes.
                "their_catalog": { "epoch": p.catalog.epoch, "version": p.catalog.version, "services": p.catalog.services.len(),
                    "imported": p.catalog.services.keys()
                        .filter(|k| crate::model::import_allowed(&state.file.imports, &p.place.cluster, k))
                        .count(),
                    "age_ms": if p.catalog.stored_at_ms > 0 { now - p.catalog.stored_at_ms } else { -1 } },
                "last_seen_ms_ago": if l.last_seen_ms > 0 { now - l.last_seen_ms } else { -1 },
                "our_catalog": { "version": state.local.version, "sent": l.sent_version, "acked": l.acked_version,
                    "lag": state.local.version.saturating_sub(l.acked_version) },
                "bundle_sequence": p.record.bundle_sequence,
                "acked_our_bundle_sequence": l.acked_bundle_sequence,
                // The gateways it advertises (what our gateways dial).
                "gateways": p.catalog.gateways.iter().map(|g| json!({
                    "name": g.name, "address": g.address.to_string(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

async fn ca_status(node: &Node) -> Value {
    let ca = node.ca.lock().await;
    let bundle = ca.bundle();
    json!({
        "trust_domain": node.td,
        "bundle_sequence": bundle.sequence(),
        "roots": bundle.roots().len(),
        "rotation": format!("{:?}", ca.rotation()),
        "leaf_lifetime": crate::duration::format(ca.leaf_lifetime()),
    })
}

async fn status(node: &Node, bound: &Bound) -> Value {
    let view = node.view.borrow().clone();
    let (degraded, unaddressed) = {
        let state = node.state.lock().await;
        (state.degraded.clone(), state.unaddressed.len())
    };
    let apply = node.apply_status().clone();
    let gateways = node
        .gateways
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let unserved: Vec<Value> = super::unserved_vips(&gateways)
        .into_iter()
        .map(|(ip, u)| json!({ "address": ip, "service": u.service, "reason": u.reason }))
        .collect();
    json!({
        "cluster": node.me.cluster,
        "trust_domain": node.td,
        "region": node.me.region,
        "zone": node.me.zone,
        "store": node.store.backend(),
        "listen": bound,
        "exports": view.exports.len(),
        "services": view.routes.len(),
        "peers": peers(node).await,
        "gateways": gateways,
        // VIP addresses no gateway here could bind: DNS does not answer them.
        "unserved_vips": unserved,
        "ca": ca_status(node).await,
        "policies": policies_status(&view.policies, SystemTime::now()),
        "view_version": view.version,
        // A catalog change not applied yet (the store failed; retried with backoff), and the
        // last edit refused whole.
        "catalog_apply": apply,
        // The catalog file, and its edit on disk when that was refused as malformed (until a
        // good edit replaces it): when, which field, the whole message.
        "catalog_file": {
            "path": node.cfg.catalog.file,
            "last_refused": apply.file_refused,
        },
        // The Kubernetes side (null without a `kubernetes:` section): whether the export
        // watches have listed their objects, and every problem holding now (the API server
        // unreachable, a verb refused...).
        "kubernetes": node.kube.to_json(),
        // Why some stored state is not served (e.g. services without VIPs), if any.
        "degraded": degraded.map(|reason| json!({
            "reason": reason,
            "services_without_vips": unaddressed,
        })),
    })
}

/// The catalog's policy documents: what each sets and, for fault-injection drills, whether the
/// fault is still in force and for how long.
pub(crate) fn policies_status(docs: &BTreeMap<String, Value>, now: SystemTime) -> Value {
    use crate::model::policy::{self, format_rfc3339};
    let list: Vec<Value> = docs
        .iter()
        .map(|(name, doc)| match policy::parse(name, doc) {
            Ok(d) => {
                let fault = d.fault().map(|f| {
                    let left = f.expires_at.duration_since(now).unwrap_or_default();
                    json!({
                        "active": f.active(now),
                        "from": f.from,
                        "abort": f.abort.map(|(percent, status)| json!({"percent": percent, "status": status})),
                        "delay": f.delay.map(|(percent, d)| json!({"percent": percent, "duration_ms": d.as_millis() as u64})),
                        "expires_at": format_rfc3339(f.expires_at),
                        "expires_in_s": left.as_secs(),
                    })
                });
                json!({
                    "name": name,
                    "services": d.services,
                    "sections": d.section_names(),
                    "fault": fault,
                })
            }
            // The catalog refuses bad documents; a view from before that check may hold one.
            Err(e) => json!({ "name": name, "error": e.to_string() }),
        })
        .collect();
    Value::Array(list)
}

/// `/config_dump`: the config and the current view. Holds no secret (the KEK never enters the
/// config; tokens are stored hashed and not part of the view).
pub fn config_dump(node: &Node) -> Value {
    let view = node.view.borrow().clone();
    json!({
        "config": node.cfg.dump(),
        "trust_domain": node.td,
        "view": &*view,
    })
}

/// Switches signing once every peer and registered gateway ACKed the bundle that carries the
/// new root; then renews our own certificate from the new root.
pub async fn rotation_driver(node: Arc<Node>) {
    let mut stop = node.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => return,
        }
        let seq = {
            let ca = node.ca.lock().await;
            if ca.rotation() != Rotation::NewRootPublished {
                continue;
            }
            ca.bundle().sequence()
        };
        let peers: Vec<ClusterName> = node.state.lock().await.peers.keys().cloned().collect();
        let peers_acked = peers
            .iter()
            .all(|p| node.link(p).acked_bundle_sequence >= seq);
        let gateways_acked = node
            .gateways
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|g| g.registered)
            .all(|g| g.acked_bundle_sequence >= seq);
        if !(peers_acked && gateways_acked) {
            continue;
        }
        if let Err(e) = node.ca_step(CaStep::SwitchSigning).await {
            tracing::error!(error = %e, "switching signing to the new root failed; retrying");
            continue;
        }
        tracing::info!(
            bundle_sequence = seq,
            "every peer and gateway ACKed the new root: signing switched"
        );
    }
}
