//! One peering session over an established `Sync` stream, the same code on both ends.
//!
//! 1. Both sides send `Hello` (protocol version, who they are, the epoch and version of the
//!    other side's catalog they have durably stored).
//! 2. Each side sends what the other lacks: nothing when it is current, the keys changed since
//!    its version when the change log still reaches back, else a full snapshot.
//! 3. Then deltas as the local catalog changes. Every update carries the sender's bundle and
//!    gateway set. A received update is validated, stored, and only then ACKed; an invalid one is
//!    NACKed (INVALID_ARGUMENT) and changes nothing; one that needs more VIPs than the peer's
//!    quota or the ranges allow is NACKed (RESOURCE_EXHAUSTED) and changes nothing; one that could
//!    not be stored is NACKed (UNAVAILABLE) and the sender resends a snapshot.
//! 4. Heartbeats (an ACK of the last stored version) keep the session alive through idle times; a
//!    peer silent for longer than the silence timeout ends the session (the dialer redials).

use crate::telemetry::KeyValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::Status;

use crate::changelog::Since;
use crate::model::ClusterName;
use crate::model::service::key_to_proto;
use crate::node::state::StateError;
use crate::node::{Node, now_ms};
use crate::peering::PROTOCOL_VERSION;
use crate::peering::update::{self, Reassembly};
use crate::proto::{self, PeerMessage, peer_message::Body};

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const CODE_INVALID_ARGUMENT: i32 = 3;
const MIN_NACK_BACKOFF: Duration = Duration::from_millis(500);
const MAX_NACK_BACKOFF: Duration = Duration::from_secs(30);
const CODE_UNAVAILABLE: i32 = 14;
const CODE_RESOURCE_EXHAUSTED: i32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("peer {0} sent no hello within {HELLO_TIMEOUT:?}")]
    NoHello(ClusterName),
    #[error("protocol error from {peer}: {reason}")]
    Protocol { peer: ClusterName, reason: String },
    #[error("peer {0} was silent for longer than the silence timeout")]
    Silent(ClusterName),
    #[error("stream with {peer} failed: {status}")]
    Stream { peer: ClusterName, status: Status },
    #[error("peer {0} closed the stream")]
    Closed(ClusterName),
    #[error("{0} is no longer a peer")]
    Removed(ClusterName),
}

impl SessionError {
    /// The grpc-status that tells the peer why its stream ended.
    pub fn to_status(&self) -> Status {
        let text = self.to_string();
        match self {
            SessionError::NoHello(_) => Status::deadline_exceeded(text),
            SessionError::Protocol { .. } => Status::invalid_argument(text),
            SessionError::Silent(_) => Status::unavailable(text),
            // A message over the size limit fails to decode with OUT_OF_RANGE: the gRPC code for
            // a message larger than the receiver accepts is RESOURCE_EXHAUSTED.
            SessionError::Stream { status, .. } if status.code() == tonic::Code::OutOfRange => {
                Status::resource_exhausted(text)
            }
            SessionError::Stream { status, .. } => Status::new(status.code(), text),
            SessionError::Closed(_) => Status::cancelled(text),
            SessionError::Removed(_) => Status::permission_denied(text),
        }
    }
}

fn msg(body: Body) -> PeerMessage {
    PeerMessage { body: Some(body) }
}

/// Runs one session until the stream ends. `out` feeds the outgoing half of the stream.
pub async fn run<S>(
    node: Arc<Node>,
    peer: ClusterName,
    mut inbound: S,
    out: mpsc::Sender<PeerMessage>,
) -> Result<(), SessionError>
where
    S: Stream<Item = Result<PeerMessage, Status>> + Unpin + Send,
{
    let cfg = node.config().peering.clone();
    let closed = || SessionError::Closed(peer.clone());

    // 1. Hellos.
    let (their_epoch, their_version, record_td) = {
        let state = node.state.lock().await;
        let entry = state
            .peers
            .get(&peer)
            .ok_or_else(|| SessionError::Removed(peer.clone()))?;
        (
            entry.catalog.epoch.clone(),
            entry.catalog.version,
            entry.record.trust_domain.clone(),
        )
    };
    let hello = proto::PeerHello {
        protocol_version: PROTOCOL_VERSION,
        cluster: node.me.cluster.to_string(),
        trust_domain: node.td.to_string(),
        region: node.me.region.to_string(),
        zone: node.me.zone_text(),
        resume_after: their_version,
        epoch: their_epoch,
    };
    out.send(msg(Body::Hello(hello)))
        .await
        .map_err(|_| closed())?;
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
        .await
        .map_err(|_| SessionError::NoHello(peer.clone()))?;
    let their_hello = match first {
        Some(Ok(PeerMessage {
            body: Some(Body::Hello(h)),
        })) => h,
        Some(Ok(_)) => return Err(protocol(&peer, "the first message must be a hello")),
        Some(Err(status)) => return Err(SessionError::Stream { peer, status }),
        None => return Err(closed()),
    };
    if their_hello.protocol_version != PROTOCOL_VERSION {
        return Err(protocol(
            &peer,
            &format!(
                "it speaks peering protocol {}, this federation speaks {PROTOCOL_VERSION}: upgrade one side",
                their_hello.protocol_version
            ),
        ));
    }
    if their_hello.cluster != peer.as_str() || their_hello.trust_domain != record_td.as_str() {
        return Err(protocol(
            &peer,
            &format!(
                "hello names cluster {:?} / trust domain {:?}, but this peering is with {peer} / {record_td}",
                their_hello.cluster, their_hello.trust_domain
            ),
        ));
    }
    node.link_update(&peer, |l| {
        l.connected = true;
        l.last_seen_ms = now_ms();
        l.connected_since_ms = now_ms();
        l.last_error = None;
    });
    node.metrics
        .peer_connects
        .get_or_create(&crate::metrics::PeerLabels {
            peer: peer.to_string(),
        })
        .inc();
    node.link_changed(&peer).await;
    tracing::info!(peer.cluster = %peer, resume_after = their_hello.resume_after, "peering stream up");

    // 2. Catch the peer up.
    let mut sender = Sender {
        node: node.clone(),
        peer: peer.clone(),
        out: out.clone(),
        sent: 0,
        bundle_at: BTreeMap::new(),
        force_snapshot: false,
    };
    let mut local_rx = node.local_version.subscribe();
    sender
        .catch_up(Some((&their_hello.epoch, their_hello.resume_after)))
        .await?;

    // 3. Steady state.
    let mut reassembly = Reassembly::default();
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.tick().await;
    let mut shutdown = node.shutdown.clone();
    let mut retry_backoff = MIN_NACK_BACKOFF;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            next = tokio::time::timeout(cfg.silence_timeout, inbound.next()) => {
                let m = match next {
                    Err(_) => return Err(SessionError::Silent(peer.clone())),
                    Ok(None) => return Err(closed()),
                    Ok(Some(Err(status))) => return Err(SessionError::Stream { peer: peer.clone(), status }),
                    Ok(Some(Ok(m))) => m,
                };
                node.link_update(&peer, |l| l.last_seen_ms = now_ms());
                match m.body {
                    Some(Body::Update(part)) => {
                        // Each part is checked as it arrives; only checked summaries are kept.
                        let version = part.version;
                        match reassembly.push(&part, &peer, &record_td) {
                            Err(e) => {
                                reject(&node, &peer, &out, version, CODE_INVALID_ARGUMENT, e.reason).await?;
                            }
                            Ok(None) => {}
                            Ok(Some(checked)) => {
                                drop(part);
                                receive(&node, &peer, &out, version, checked).await?
                            }
                        }
                    }
                    Some(Body::Ack(ack)) => {
                        if !ack.traffic.is_empty()
                            && let Err(e) = node.traffic.peers.set(&peer, &node.me.cluster, &ack.traffic, now_ms())
                        {
                            tracing::debug!(peer.cluster = %peer, error = %e, "ignoring a peer's traffic summary");
                        }
                        if ack.version >= sender.sent && sender.sent > 0 {
                            retry_backoff = MIN_NACK_BACKOFF;
                        }
                        sender.acked(ack.version);
                    }
                    Some(Body::Nack(nack)) => {
                        // Resend a snapshot, but only after a backoff: a lasting disagreement
                        // (e.g. validation that differs across versions) must not spin.
                        let wait = retry_backoff;
                        retry_backoff = (retry_backoff * 2).min(MAX_NACK_BACKOFF);
                        tracing::warn!(peer.cluster = %peer, version = nack.version, code = nack.code, reason = %nack.reason,
                            retry_in_ms = wait.as_millis() as u64, "peer refused our catalog update; a snapshot follows");
                        sender.force_snapshot = true;
                        retry_at = Some(tokio::time::Instant::now() + wait);
                    }
                    Some(Body::Hello(_)) => return Err(protocol(&peer, "a second hello")),
                    None => return Err(protocol(&peer, "an empty message")),
                }
            }
            changed = local_rx.changed() => {
                if changed.is_err() {
                    return Err(closed());
                }
                sender.catch_up(None).await?;
            }
            _ = heartbeat.tick() => {
                let stored = node.state.lock().await.peers.get(&peer).map(|p| p.catalog.version);
                let Some(stored) = stored else { return Err(SessionError::Removed(peer.clone())) };
                // Heartbeats carry this cluster's edges for the peer's dashboard.
                let traffic = crate::traffic::peers::to_proto(&node.traffic.edges(&node.me.cluster, now_ms()));
                out.send(msg(Body::Ack(proto::Ack { version: stored, traffic }))).await.map_err(|_| closed())?;
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                sender.catch_up(None).await?;
            }
            _ = shutdown.changed() => return Err(closed()),
        }
    }
}

fn protocol(peer: &ClusterName, reason: &str) -> SessionError {
    SessionError::Protocol {
        peer: peer.clone(),
        reason: reason.to_string(),
    }
}

async fn reject(
    node: &Node,
    peer: &ClusterName,
    out: &mpsc::Sender<PeerMessage>,
    version: u64,
    code: i32,
    reason: String,
) -> Result<(), SessionError> {
    let result = match code {
        CODE_INVALID_ARGUMENT => "nacked_invalid",
        CODE_RESOURCE_EXHAUSTED => "nacked_exhausted",
        _ => "nacked_store",
    };
    node.metrics.update(peer.as_str(), result);
    tracing::warn!(peer.cluster = %peer, version, code, %reason, "refused a catalog update from a peer; state unchanged");
    out.send(msg(Body::Nack(proto::Nack {
        version,
        reason,
        code,
    })))
    .await
    .map_err(|_| SessionError::Closed(peer.clone()))
}

/// Stores a checked update and ACKs it, or NACKs it.
async fn receive(
    node: &Node,
    peer: &ClusterName,
    out: &mpsc::Sender<PeerMessage>,
    version: u64,
    checked: update::PeerUpdate,
) -> Result<(), SessionError> {
    let mut span = node.tracing.root_span(
        "peering.sync",
        vec![
            KeyValue::new("isthmus.peer", peer.to_string()),
            KeyValue::new("isthmus.update.version", version as i64),
            KeyValue::new("isthmus.update.snapshot", checked.snapshot),
            KeyValue::new("isthmus.update.upserts", checked.upserts.len() as i64),
            KeyValue::new("isthmus.update.removals", checked.removals.len() as i64),
        ],
    );
    let received = node.receive_update(peer, checked).await;
    if let Some(span) = span.as_mut() {
        match &received {
            Ok(()) => span.set(KeyValue::new("isthmus.update.result", "acked")),
            Err(e) => {
                span.set(KeyValue::new("isthmus.update.result", "nacked"));
                span.fail(e.to_string());
            }
        }
    }
    drop(span);
    match received {
        Ok(()) => {
            node.metrics.update(peer.as_str(), "acked");
            out.send(msg(Body::Ack(proto::Ack {
                version,
                traffic: Vec::new(),
            })))
            .await
            .map_err(|_| SessionError::Closed(peer.clone()))
        }
        Err(StateError::Rejected(reason)) => {
            reject(node, peer, out, version, CODE_INVALID_ARGUMENT, reason).await
        }
        Err(e @ (StateError::OverQuota { .. } | StateError::NoRoom(_))) => {
            if matches!(e, StateError::OverQuota { .. }) {
                node.metrics.quota_refused(peer.as_str());
            }
            reject(
                node,
                peer,
                out,
                version,
                CODE_RESOURCE_EXHAUSTED,
                e.to_string(),
            )
            .await
        }
        Err(e) => reject(node, peer, out, version, CODE_UNAVAILABLE, e.to_string()).await,
    }
}

/// The sending half: what we told the peer and what it ACKed.
struct Sender {
    node: Arc<Node>,
    peer: ClusterName,
    out: mpsc::Sender<PeerMessage>,
    /// The version of our catalog the peer has been sent (not necessarily ACKed).
    sent: u64,
    /// Bundle sequence carried by each unACKed version we sent.
    bundle_at: BTreeMap<u64, u64>,
    force_snapshot: bool,
}

impl Sender {
    /// Sends whatever brings the peer to our current version. `resume`: at session start, the
    /// epoch and version the peer said it has.
    async fn catch_up(&mut self, resume: Option<(&str, u64)>) -> Result<(), SessionError> {
        let update = {
            let state = self.node.state.lock().await;
            let local = &state.local;
            let since = match resume {
                Some((epoch, version)) if epoch == local.epoch => local.since(version),
                Some(_) => Since::TooOld,
                None if self.force_snapshot => Since::TooOld,
                None => local.since(self.sent),
            };
            // The trust store always holds our current bundle (set at start and on rotation).
            let Some(bundle) = self.node.trust.get(&self.node.td) else {
                return Err(protocol(&self.peer, "our own bundle is missing"));
            };
            let mut u = proto::CatalogUpdate {
                version: local.version,
                epoch: local.epoch.clone(),
                snapshot: false,
                upserts: Vec::new(),
                removals: Vec::new(),
                bundle: Some(bundle.to_proto()),
                gateways: Some(proto::GatewaySet {
                    gateways: local.gateways.iter().map(|g| g.to_proto()).collect(),
                }),
                more: false,
                cluster: self.node.me.cluster.to_string(),
            };
            match since {
                Since::Current => {
                    self.sent = local.version;
                    return Ok(());
                }
                Since::Keys(keys) => {
                    for key in keys {
                        match local.view_for(&self.peer, &key) {
                            Some(s) => u.upserts.push(s.to_proto()),
                            None => u.removals.push(key_to_proto(&key)),
                        }
                    }
                }
                Since::TooOld => {
                    u.snapshot = true;
                    u.upserts = local
                        .snapshot_for(&self.peer)
                        .iter()
                        .map(|s| s.to_proto())
                        .collect();
                }
            }
            self.bundle_at.insert(local.version, bundle.sequence());
            u
        };
        let version = update.version;
        for part in update::split(update) {
            self.out
                .send(msg(Body::Update(part)))
                .await
                .map_err(|_| SessionError::Closed(self.peer.clone()))?;
        }
        self.sent = version;
        self.force_snapshot = false;
        self.node
            .metrics
            .peer_updates_sent
            .get_or_create(&crate::metrics::PeerLabels {
                peer: self.peer.to_string(),
            })
            .inc();
        self.node
            .link_update(&self.peer, |l| l.sent_version = version);
        Ok(())
    }

    fn acked(&mut self, version: u64) {
        let acked: Vec<u64> = self.bundle_at.range(..=version).map(|(v, _)| *v).collect();
        let mut seq = 0;
        for v in acked {
            if let Some(s) = self.bundle_at.remove(&v) {
                seq = seq.max(s);
            }
        }
        self.node.link_update(&self.peer, |l| {
            if version <= self.sent {
                l.acked_version = l.acked_version.max(version);
            }
            l.acked_bundle_sequence = l.acked_bundle_sequence.max(seq);
        });
    }
}
