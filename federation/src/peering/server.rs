//! The `Peering` gRPC service on the peering port.
//!
//! `Establish` is authenticated by a token's one-time secret (the caller has no certificate we
//! trust yet). `Sync` requires a client certificate that the TLS verifier already checked against
//! the bundle of the trust domain it names; here the trust domain must belong to a peer, and the
//! stream is bound to that peer — its identity comes from the certificate, never from a message.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::identity::{IdKind, PeerInfo, SpiffeId, TrustBundle, TrustDomain};
use crate::model::{ClusterName, Region, Zone};
use crate::node::state::{PeerEntry, json, place_of};
use crate::node::{Node, keys, now_ms};
use crate::peering::PeerRecord;
use crate::peering::token::{self, Presenter, TokenError, TokenRecord};
use crate::proto::peering_server::Peering;
use crate::proto::{EstablishRequest, EstablishResponse, PeerMessage};
use crate::store::{Guard, Op, Store, StoreError};

pub struct PeeringService {
    pub node: Arc<Node>,
}

fn bad(field: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {e}"))
}

/// Checks that a new peer's names collide with nothing: not us, not another peer. Pure.
pub fn check_collision(
    me: &ClusterName,
    my_td: &TrustDomain,
    peers: &[(ClusterName, TrustDomain)],
    cluster: &ClusterName,
    td: &TrustDomain,
) -> Result<(), String> {
    if cluster == me {
        return Err(format!("cluster name {cluster} is this cluster's own name"));
    }
    if td == my_td {
        return Err(format!(
            "trust domain {td} is this cluster's own: every cluster needs its own trust domain"
        ));
    }
    for (c, t) in peers {
        if c == cluster && t == td {
            continue; // the same peer again (a retried establish)
        }
        if t == td {
            return Err(format!("trust domain {td} already belongs to peer {c}"));
        }
        if c == cluster {
            return Err(format!(
                "a peer named {c} already exists with trust domain {t}: remove it first"
            ));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Peering for PeeringService {
    async fn establish(
        &self,
        request: Request<EstablishRequest>,
    ) -> Result<Response<EstablishResponse>, Status> {
        let node = &self.node;
        // A certificate sent on the peering port was verified against the bundle of the trust
        // domain it names (only peers' domains are accepted): it proves a retry's sender.
        let proven_id = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.id.clone());
        let req = request.into_inner();
        let cluster: ClusterName = req.cluster.parse().map_err(|e| bad("cluster", e))?;
        let td: TrustDomain = req
            .trust_domain
            .parse()
            .map_err(|e| bad("trust_domain", e))?;
        let region: Region = req.region.parse().map_err(|e| bad("region", e))?;
        let zone: Option<Zone> = if req.zone.is_empty() {
            None
        } else {
            Some(req.zone.parse().map_err(|e| bad("zone", e))?)
        };
        let bundle = req
            .bundle
            .as_ref()
            .ok_or_else(|| bad("bundle", "missing"))?;
        if bundle.trust_domain != td.as_str() {
            node.metrics.refused("bundle_trust_domain");
            return Err(bad(
                "bundle",
                format!("is for trust domain {}, not {td}", bundle.trust_domain),
            ));
        }
        let bundle = TrustBundle::from_proto(bundle).map_err(|e| bad("bundle", e))?;
        let (id, secret) = token::split_presented(&req.secret).ok_or_else(|| {
            node.metrics.refused("token");
            Status::unauthenticated("malformed token secret")
        })?;

        // Token checks and the peer record are one serialized step.
        let mut state = node.state.lock().await;
        let peers: Vec<(ClusterName, TrustDomain)> = state
            .peers
            .values()
            .map(|p| (p.record.cluster.clone(), p.record.trust_domain.clone()))
            .collect();
        if let Err(reason) = check_collision(&node.me.cluster, &node.td, &peers, &cluster, &td) {
            node.metrics.refused("collision");
            tracing::warn!(peer.cluster = %cluster, trust_domain = %td, %reason, "refused a peering");
            return Err(Status::already_exists(reason));
        }
        let record_bytes = node
            .store
            .get(&keys::token(id))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| {
                node.metrics.refused("token");
                Status::unauthenticated(
                    "unknown peering token: create one with `isthmus peering token`",
                )
            })?;
        let mut record: TokenRecord = serde_json::from_slice(&record_bytes)
            .map_err(|e| Status::internal(format!("token record: {e}")))?;
        let proven = proven_id
            .as_ref()
            .filter(|id| SpiffeId::federation(&td, cluster.as_str()).is_ok_and(|want| want == **id))
            .map(SpiffeId::trust_domain);
        let presenter = Presenter {
            cluster: &cluster,
            trust_domain: &td,
            proven,
        };
        if let Err(e) = token::check(&record, secret, presenter, now_ms()) {
            node.metrics.refused("token");
            tracing::warn!(peer.cluster = %cluster, token.id = %record.id, reason = %e, "refused a peering token");
            return Err(match e {
                // The dialer answers this by calling again over mTLS with its certificate.
                TokenError::RetryNeedsProof(_) => Status::failed_precondition(e.to_string()),
                _ => Status::permission_denied(e.to_string()),
            });
        }
        let retry = record.used_by.is_some();
        record.spend(presenter);
        let existing = state.peers.get(&cluster).map(|p| p.record.clone());
        let peer = PeerRecord {
            cluster: cluster.clone(),
            trust_domain: td.clone(),
            region,
            zone,
            dial_address: None,
            bundle: bundle.to_spiffe_json(),
            bundle_sequence: bundle.sequence(),
            established_at_ms: existing.map(|e| e.established_at_ms).unwrap_or_else(now_ms),
        };
        let ops = vec![
            Op::Put {
                key: keys::token(id),
                value: json(&record).map_err(|e| Status::internal(e.to_string()))?,
            },
            Op::Put {
                key: keys::peer_record(&cluster),
                value: json(&peer).map_err(|e| Status::internal(e.to_string()))?,
            },
        ];
        // The token is spent only if nobody spent it meanwhile (another replica on the same
        // store): the record must still be exactly what was checked.
        let unspent = Guard::ValueEquals {
            key: keys::token(id),
            value: record_bytes,
        };
        node.store
            .commit(vec![unspent], ops)
            .await
            .map_err(|e| match e {
                StoreError::GuardFailed => {
                    node.metrics.refused("token");
                    Status::aborted(
                        "the peering token was used at the same moment by another call: \
                         create a new one with `isthmus peering token`",
                    )
                }
                e => Status::unavailable(e.to_string()),
            })?;
        // The bundle this peering was made with replaces whatever was held for the domain,
        // even at a lower sequence (a peer whose CA was re-created): the verifier trusts what
        // the record says.
        node.trust.replace(bundle);
        let place = place_of(&peer);
        let entry = state
            .peers
            .entry(cluster.clone())
            .or_insert_with(|| PeerEntry {
                record: peer.clone(),
                place: place.clone(),
                catalog: Default::default(),
                deltas: 0,
            });
        entry.record = peer;
        entry.place = place;
        node.link_update(&cluster, |_| {});
        node.publish(&mut state);
        drop(state);
        tracing::info!(peer.cluster = %cluster, trust_domain = %td, retry, "peering established (they dial us)");
        let ours = node
            .trust
            .get(&node.td)
            .ok_or_else(|| Status::internal("own bundle missing"))?;
        Ok(Response::new(EstablishResponse {
            cluster: node.me.cluster.to_string(),
            trust_domain: node.td.to_string(),
            region: node.me.region.to_string(),
            zone: node.me.zone_text(),
            bundle: Some(ours.to_proto()),
        }))
    }

    type SyncStream = Pin<Box<dyn Stream<Item = Result<PeerMessage, Status>> + Send>>;

    async fn sync(
        &self,
        request: Request<Streaming<PeerMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let node = self.node.clone();
        let caller = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.id.clone())
            .ok_or_else(|| {
                node.metrics.refused("no_client_certificate");
                Status::unauthenticated(
                    "a peering stream needs a client certificate from a peered trust domain",
                )
            })?;
        if !matches!(caller.kind(), IdKind::Federation { .. }) {
            node.metrics.refused("not_a_federation");
            return Err(Status::permission_denied(format!(
                "{caller} is not a federation identity"
            )));
        }
        let peer = {
            let state = node.state.lock().await;
            state
                .peers
                .values()
                .find(|p| &p.record.trust_domain == caller.trust_domain())
                .map(|p| p.record.cluster.clone())
        };
        let Some(peer) = peer else {
            node.metrics.refused("not_a_peer");
            return Err(Status::permission_denied(format!(
                "trust domain {} is not a peer",
                caller.trust_domain()
            )));
        };
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<PeerMessage>(64);
        let task_node = node.clone();
        let task_peer = peer.clone();
        // How the session ended travels to the peer as the stream's grpc-status.
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<Status>();
        let handle = tokio::spawn(async move {
            let result =
                crate::peering::session::run(task_node.clone(), task_peer.clone(), inbound, tx)
                    .await;
            if let Err(e) = &result {
                let _ = ended_tx.send(e.to_status());
            }
            crate::peering::dialer::session_ended(&task_node, &task_peer, result).await;
        });
        // One stream per peer: a reconnect replaces the old session.
        if let Some(old) = node
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, handle.abort_handle())
        {
            old.abort();
        }
        // The messages, then the session's error, if it ended with one (a session replaced by
        // a reconnect or ended cleanly closes with OK).
        let ended = futures_util::stream::once(ended_rx)
            .filter_map(|r| std::future::ready(r.ok().map(Err)));
        let out = ReceiverStream::new(rx).map(Ok::<_, Status>).chain(ended);
        Ok(Response::new(Box::pin(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collisions() {
        let c = |s: &str| ClusterName::new(s).expect("c");
        let t = |s: &str| s.parse::<TrustDomain>().expect("td");
        let peers = vec![(c("west"), t("west.mesh"))];
        let me = (c("east"), t("east.mesh"));
        let cases = [
            ("south", "south.mesh", true),
            ("west", "west.mesh", true), // retry by the same peer
            ("east", "other.mesh", false),
            ("south", "east.mesh", false),
            ("south", "west.mesh", false),
            ("west", "west2.mesh", false),
        ];
        for (cluster, td, ok) in cases {
            let r = check_collision(&me.0, &me.1, &peers, &c(cluster), &t(td));
            assert_eq!(r.is_ok(), ok, "{cluster} {td}: {r:?}");
        }
    }
}
