//! The dialing side of a peering: `establish` with a token, then keep one `Sync` stream open to
//! the peer, redialing with capped exponential backoff (with jitter) whenever it drops.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::identity::{SpiffeId, SpiffeServerVerifier, TrustBundle, TrustStore, tls, transport};
use crate::model::ClusterName;
use crate::node::state::{PeerEntry, json, place_of};
use crate::node::{Node, keys, now_ms};
use crate::peering::PeerRecord;
use crate::peering::session::SessionError;
use crate::peering::token::PeeringToken;
use crate::proto::peering_client::PeeringClient;
use crate::proto::{EstablishRequest, PeerMessage};
use crate::store::{Op, Store};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ALPN_H2: &[&[u8]] = &[b"h2"];
/// Peering messages stay far below this; a larger one is a hostile or broken peer.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EstablishError {
    #[error(transparent)]
    Token(#[from] crate::peering::token::TokenError),
    #[error("this token was issued for peer {expected}, but this cluster is {me}")]
    NotForUs {
        expected: ClusterName,
        me: ClusterName,
    },
    #[error("{0}")]
    Collision(String),
    #[error("the token's bundle is not usable: {0}")]
    Bundle(String),
    #[error("cannot reach {address}: {detail} (is the peer's peering port reachable from here?)")]
    Connect { address: String, detail: String },
    #[error("the peer refused: {}", .0.message())]
    Refused(tonic::Status),
    #[error("storing the peering failed: {0}")]
    Store(String),
}

/// The federation's SPIFFE ID for a peer cluster.
pub fn federation_id(
    td: &crate::identity::TrustDomain,
    cluster: &ClusterName,
) -> Result<SpiffeId, String> {
    SpiffeId::federation(td, cluster.as_str()).map_err(|e| e.to_string())
}

/// Completes a peering from a token created on the other cluster, then starts dialing it.
pub async fn establish(node: &Arc<Node>, token_text: &str) -> Result<PeerRecord, EstablishError> {
    let token = PeeringToken::decode(token_text)?;
    if token.peer != node.me.cluster {
        return Err(EstablishError::NotForUs {
            expected: token.peer,
            me: node.me.cluster.clone(),
        });
    }
    {
        let state = node.state.lock().await;
        let peers: Vec<_> = state
            .peers
            .values()
            .map(|p| (p.record.cluster.clone(), p.record.trust_domain.clone()))
            .collect();
        crate::peering::server::check_collision(
            &node.me.cluster,
            &node.td,
            &peers,
            &token.cluster,
            &token.trust_domain,
        )
        .map_err(EstablishError::Collision)?;
    }
    let their_bundle = TrustBundle::from_spiffe_json(&token.trust_domain, &token.bundle)
        .map_err(|e| EstablishError::Bundle(e.to_string()))?;
    // The first call presents no client certificate (the peer does not trust our CA yet). When
    // the peer says the token is already spent by us (our earlier answer was lost), the second
    // call proves it with our federation certificate, which the peer verifies against the bundle
    // our first call stored there.
    let response = match call_establish(node, &token, &their_bundle, false).await {
        Err(EstablishError::Refused(status))
            if status.code() == tonic::Code::FailedPrecondition =>
        {
            tracing::info!(peer.cluster = %token.cluster, "the token was spent by an earlier attempt whose answer was lost: retrying with our certificate");
            call_establish(node, &token, &their_bundle, true)
                .await
                .map_err(|e| match e {
                    // A client certificate the peer refuses ends the connection during or
                    // just after the handshake: it shows as a connect error or a transport
                    // failure of the call (UNAVAILABLE, UNKNOWN, CANCELLED, depending on when
                    // the alert arrives), never as one of the codes Establish answers with.
                    EstablishError::Connect { detail, .. } => {
                        EstablishError::Refused(tonic::Status::permission_denied(format!(
                            "{} (the peer did not accept this federation's certificate: {detail}; if another federation used the token, create a new one)",
                            status.message()
                        )))
                    }
                    EstablishError::Refused(s)
                        if !matches!(
                            s.code(),
                            tonic::Code::PermissionDenied
                                | tonic::Code::FailedPrecondition
                                | tonic::Code::InvalidArgument
                                | tonic::Code::AlreadyExists
                                | tonic::Code::Unauthenticated
                        ) =>
                    {
                        EstablishError::Refused(tonic::Status::permission_denied(format!(
                            "{} (the peer did not accept this federation's certificate: {}; if another federation used the token, create a new one)",
                            status.message(),
                            s.message()
                        )))
                    }
                    other => other,
                })?
        }
        other => other?,
    };
    if response.cluster != token.cluster.as_str()
        || response.trust_domain != token.trust_domain.as_str()
    {
        return Err(EstablishError::Refused(tonic::Status::permission_denied(
            format!(
                "the peer answered as {}/{}, but the token is from {}/{}",
                response.cluster, response.trust_domain, token.cluster, token.trust_domain
            ),
        )));
    }
    let bundle = match &response.bundle {
        Some(b) => TrustBundle::from_proto(b).map_err(|e| EstablishError::Bundle(e.to_string()))?,
        None => their_bundle,
    };
    if bundle.trust_domain() != &token.trust_domain {
        return Err(EstablishError::Bundle(
            "the peer's bundle is for another trust domain".into(),
        ));
    }
    let record = PeerRecord {
        cluster: token.cluster.clone(),
        trust_domain: token.trust_domain.clone(),
        region: response
            .region
            .parse()
            .map_err(|e: crate::model::NameError| {
                EstablishError::Refused(tonic::Status::invalid_argument(e.to_string()))
            })?,
        zone: if response.zone.is_empty() {
            None
        } else {
            response.zone.parse().ok()
        },
        dial_address: Some(token.address.clone()),
        bundle: bundle.to_spiffe_json(),
        bundle_sequence: bundle.sequence(),
        established_at_ms: now_ms(),
    };
    {
        let mut state = node.state.lock().await;
        let value = json(&record).map_err(|e| EstablishError::Store(e.to_string()))?;
        node.store
            .commit(
                Vec::new(),
                vec![Op::Put {
                    key: keys::peer_record(&record.cluster),
                    value,
                }],
            )
            .await
            .map_err(|e| EstablishError::Store(e.to_string()))?;
        // What the record says is what the verifier trusts (even a lower sequence: a peer
        // whose CA was re-created and that issued a new token).
        node.trust.replace(bundle);
        let entry = state
            .peers
            .entry(record.cluster.clone())
            .or_insert_with(|| PeerEntry {
                record: record.clone(),
                place: place_of(&record),
                catalog: Default::default(),
                deltas: 0,
            });
        entry.record = record.clone();
        entry.place = place_of(&record);
        node.link_update(&record.cluster, |_| {});
        node.publish(&mut state);
    }
    tracing::info!(peer.cluster = %record.cluster, address = %token.address, "peering established (we dial them)");
    spawn_dialer(node.clone(), record.cluster.clone());
    Ok(record)
}

/// One `Establish` call to the token's issuer, verifying its server against only the token's
/// bundle; with `prove`, over mTLS with this federation's own certificate.
async fn call_establish(
    node: &Arc<Node>,
    token: &PeeringToken,
    their_bundle: &TrustBundle,
    prove: bool,
) -> Result<crate::proto::EstablishResponse, EstablishError> {
    let pinned = TrustStore::new();
    pinned.set(their_bundle.clone());
    let expected =
        federation_id(&token.trust_domain, &token.cluster).map_err(EstablishError::Bundle)?;
    let verifier = SpiffeServerVerifier::for_id(pinned, expected).into_arc();
    let certs = prove.then_some(&node.certs);
    let config = tls::client_config(certs, verifier, ALPN_H2)
        .map_err(|e| EstablishError::Bundle(e.to_string()))?;
    let connect_failed = |detail: String| EstablishError::Connect {
        address: token.address.clone(),
        detail,
    };
    let channel = transport::connect(&token.address, config, CONNECT_TIMEOUT)
        .await
        .map_err(|e| connect_failed(e.to_string()))?;
    let ours = node
        .trust
        .get(&node.td)
        .ok_or_else(|| EstablishError::Bundle("own bundle missing".into()))?;
    let answer = PeeringClient::new(channel)
        .establish(EstablishRequest {
            secret: format!("{}.{}", token.id, token.secret),
            cluster: node.me.cluster.to_string(),
            trust_domain: node.td.to_string(),
            region: node.me.region.to_string(),
            zone: node.me.zone_text(),
            peering_address: node.advertised_peering.clone(),
            bundle: Some(ours.to_proto()),
        })
        .await;
    answer
        .map(tonic::Response::into_inner)
        .map_err(EstablishError::Refused)
}

/// Starts (or restarts) the dial loop for a peer we dial.
pub fn spawn_dialer(node: Arc<Node>, peer: ClusterName) {
    let task_node = node.clone();
    let task_peer = peer.clone();
    let handle = tokio::spawn(async move { dial_loop(task_node, task_peer).await });
    if let Some(old) = node
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(peer, handle.abort_handle())
    {
        old.abort();
    }
}

async fn dial_loop(node: Arc<Node>, peer: ClusterName) {
    let max = node.cfg.peering.reconnect_max_backoff;
    let mut backoff = Duration::from_millis(200);
    let mut shutdown = node.shutdown.clone();
    loop {
        let started = tokio::time::Instant::now();
        let result = dial_once(&node, &peer).await;
        let removed = matches!(result, Err(SessionError::Removed(_)));
        session_ended(&node, &peer, result).await;
        if removed || *shutdown.borrow() {
            return;
        }
        // A session that lived a while resets the backoff.
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        let jitter = Duration::from_millis(
            u64::from(rand_u8()) * backoff.as_millis().min(1000) as u64 / 512,
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(max);
    }
}

fn rand_u8() -> u8 {
    let mut b = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b[0]
}

async fn dial_once(node: &Arc<Node>, peer: &ClusterName) -> Result<(), SessionError> {
    let (address, td) = {
        let state = node.state.lock().await;
        let entry = state
            .peers
            .get(peer)
            .ok_or_else(|| SessionError::Removed(peer.clone()))?;
        (
            entry.record.dial_address.clone(),
            entry.record.trust_domain.clone(),
        )
    };
    let Some(address) = address else {
        return Err(SessionError::Removed(peer.clone()));
    };
    let fail = |reason: String| SessionError::Protocol {
        peer: peer.clone(),
        reason,
    };
    let expected = federation_id(&td, peer).map_err(fail)?;
    let verifier = SpiffeServerVerifier::for_id(node.trust.clone(), expected).into_arc();
    let config = tls::client_config(Some(&node.certs), verifier, ALPN_H2)
        .map_err(|e| fail(e.to_string()))?;
    let channel = transport::connect(&address, config, CONNECT_TIMEOUT)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (tx, rx) = mpsc::channel::<PeerMessage>(64);
    let mut client = PeeringClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let inbound = client
        .sync(ReceiverStream::new(rx))
        .await
        .map_err(|status| SessionError::Stream {
            peer: peer.clone(),
            status,
        })?
        .into_inner();
    crate::peering::session::run(node.clone(), peer.clone(), inbound, tx).await
}

/// Records how a session ended (both ends call this).
pub async fn session_ended(node: &Arc<Node>, peer: &ClusterName, result: Result<(), SessionError>) {
    let reason = match &result {
        Ok(()) => "closed".to_string(),
        Err(e) => e.to_string(),
    };
    let was_connected = node.link(peer).connected;
    node.link_update(peer, |l| {
        l.connected = false;
        l.last_error = Some(reason.clone());
    });
    if was_connected {
        tracing::warn!(peer.cluster = %peer, %reason, "peering stream down");
        node.link_changed(peer).await;
    } else {
        tracing::debug!(peer.cluster = %peer, %reason, "peering attempt failed");
    }
}

/// Removes a peer: its record, catalog, bundle and stream. Its imports disappear.
pub async fn remove(
    node: &Arc<Node>,
    peer: &ClusterName,
) -> Result<bool, crate::node::state::StateError> {
    let mut state = node.state.lock().await;
    let Some(entry) = state.peers.get(peer).cloned() else {
        return Ok(false);
    };
    node.store.delete_blob(&keys::peer_catalog(peer)).await?;
    node.store
        .commit(
            Vec::new(),
            vec![Op::DeletePrefix {
                prefix: keys::peer_prefix(peer),
            }],
        )
        .await?;
    state.peers.remove(peer);
    node.trust.remove(&entry.record.trust_domain);
    if let Some(h) = node
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(peer)
    {
        h.abort();
    }
    node.link_forget(peer);
    let keys = entry.catalog.services.keys().cloned().collect();
    let stale = node.stale_peers();
    state.recompute(Some(keys), &stale, now_ms()).await?;
    node.publish(&mut state);
    tracing::info!(peer.cluster = %peer, "peer removed");
    Ok(true)
}
