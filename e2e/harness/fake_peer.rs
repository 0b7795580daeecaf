//! A hand-driven peer: the test's own CA, its own `Establish` call and its own `Sync` stream, so
//! a scenario can send exactly the messages a hostile or broken peer would.

use std::sync::Arc;
use std::time::Duration;

use isthmus_federation::identity::tls::{self, ALPN_H2};
use isthmus_federation::identity::{
    Ca, CertStore, Kek, SpiffeId, SpiffeServerVerifier, TrustBundle, TrustDomain, TrustStore,
    transport,
};
use isthmus_federation::peering::PROTOCOL_VERSION;
use isthmus_federation::peering::token::PeeringToken;
use isthmus_federation::proto::peer_message::Body;
use isthmus_federation::proto::peering_client::PeeringClient;
use isthmus_federation::proto::{self, PeerMessage};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::transport::Channel;

use super::Federation;

pub fn td(s: &str) -> TrustDomain {
    s.parse().expect("trust domain")
}

/// A fresh CA for `trust_domain` (valid a day).
pub fn new_ca(trust_domain: &str) -> Ca {
    let kek = Kek::generate().expect("kek");
    Ca::generate(td(trust_domain), &kek, Duration::from_secs(86_400)).expect("generate CA")
}

/// A credential for `id` issued by `ca` (which must be of `id`'s trust domain).
pub fn leaf(ca: &Ca, id: &SpiffeId) -> CertStore {
    let (cert, key) = ca
        .issue_local(id, Duration::from_secs(3600))
        .expect("issue leaf");
    let store = CertStore::new();
    store.set_from_pem(&cert.chain_pem, &key).expect("leaf pem");
    store
}

/// A peering token from `fed` for `peer`, decoded (its bundle is `fed`'s trust bundle).
pub async fn token_for(fed: &Federation, peer: &str) -> (String, PeeringToken) {
    let v = fed.admin("peering.token", json!({ "peer": peer })).await;
    let text = v["token"].as_str().expect("token").to_string();
    let token = PeeringToken::decode(&text).expect("decode token");
    (text, token)
}

/// `fed`'s current trust bundle (read from a throwaway token).
pub async fn bundle_of(fed: &Federation) -> TrustBundle {
    let (_, t) = token_for(fed, "bundle-probe").await;
    TrustBundle::from_spiffe_json(&t.trust_domain, &t.bundle).expect("bundle in token")
}

/// A client config that verifies `fed`'s federation identity against `bundle` only.
pub fn client_to(
    fed: &Federation,
    bundle: &TrustBundle,
    certs: Option<&CertStore>,
) -> Arc<rustls::ClientConfig> {
    let trust = TrustStore::new();
    trust.set(bundle.clone());
    let id = SpiffeId::federation(bundle.trust_domain(), fed.name).expect("federation id");
    let verifier = SpiffeServerVerifier::for_id(trust, id).into_arc();
    tls::client_config(certs, verifier, &[ALPN_H2]).expect("client config")
}

pub async fn channel(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Channel> {
    Ok(transport::connect(&addr.to_string(), config, Duration::from_secs(10)).await?)
}

/// A fake cluster: its own CA and the bundle it announces.
pub struct FakeCluster {
    pub name: String,
    pub td: TrustDomain,
    pub ca: Ca,
    pub bundle: TrustBundle,
}

impl FakeCluster {
    pub fn new(name: &str, trust_domain: &str) -> Self {
        let ca = new_ca(trust_domain);
        let bundle = ca.bundle();
        FakeCluster {
            name: name.into(),
            td: td(trust_domain),
            ca,
            bundle,
        }
    }

    pub fn id(&self) -> SpiffeId {
        SpiffeId::federation(&self.td, &self.name).expect("id")
    }

    /// Calls `Establish` on `fed` with a fresh token for this cluster.
    pub async fn establish(&self, fed: &Federation) -> Result<proto::EstablishResponse, Status> {
        let (_, token) = token_for(fed, &self.name).await;
        self.establish_with(fed, &token, &self.name).await
    }

    pub async fn establish_with(
        &self,
        fed: &Federation,
        token: &PeeringToken,
        as_cluster: &str,
    ) -> Result<proto::EstablishResponse, Status> {
        self.establish_presenting(fed, token, as_cluster, None)
            .await
            .expect("connect for establish")
    }

    /// `Establish` over mTLS with `certs` when given (how a retry proves its sender). The outer
    /// error is the connection failing (a refused certificate can end it).
    pub async fn establish_presenting(
        &self,
        fed: &Federation,
        token: &PeeringToken,
        as_cluster: &str,
        certs: Option<&CertStore>,
    ) -> anyhow::Result<Result<proto::EstablishResponse, Status>> {
        let server_bundle =
            TrustBundle::from_spiffe_json(&token.trust_domain, &token.bundle).expect("bundle");
        let ch = channel(fed.peering, client_to(fed, &server_bundle, certs)).await?;
        Ok(PeeringClient::new(ch)
            .establish(proto::EstablishRequest {
                secret: format!("{}.{}", token.id, token.secret),
                cluster: as_cluster.into(),
                trust_domain: self.td.to_string(),
                region: "fake-region".into(),
                zone: String::new(),
                peering_address: String::new(),
                bundle: Some(self.bundle.to_proto()),
            })
            .await
            .map(tonic::Response::into_inner))
    }

    pub fn hello(&self) -> PeerMessage {
        msg(Body::Hello(proto::PeerHello {
            protocol_version: PROTOCOL_VERSION,
            cluster: self.name.clone(),
            trust_domain: self.td.to_string(),
            region: "fake-region".into(),
            zone: String::new(),
            resume_after: 0,
            epoch: String::new(),
        }))
    }

    /// A valid snapshot of `services` (tcp port 80 each) at `version`.
    pub fn snapshot(&self, version: u64, services: &[(&str, &str)]) -> proto::CatalogUpdate {
        proto::CatalogUpdate {
            version,
            epoch: "fake-epoch".into(),
            snapshot: true,
            upserts: services
                .iter()
                .map(|(ns, name)| summary(ns, name, 80))
                .collect(),
            removals: Vec::new(),
            bundle: Some(self.bundle.to_proto()),
            gateways: Some(proto::GatewaySet::default()),
            more: false,
            cluster: self.name.clone(),
        }
    }
}

pub fn msg(body: Body) -> PeerMessage {
    PeerMessage { body: Some(body) }
}

pub fn summary(ns: &str, name: &str, port: u32) -> proto::ServiceSummary {
    proto::ServiceSummary {
        key: Some(proto::ServiceKey {
            namespace: ns.into(),
            name: name.into(),
        }),
        ports: vec![proto::ServicePort {
            name: String::new(),
            port,
            protocol: proto::Protocol::Tcp as i32,
        }],
        zones: vec![proto::ZoneCount {
            zone: "zone-a".into(),
            healthy: 1,
        }],
        weight: 1,
        metadata: Default::default(),
        headless: false,
        exported_at_ms: 1,
    }
}

/// An open `Sync` stream.
pub struct SyncStream {
    pub tx: mpsc::Sender<PeerMessage>,
    pub rx: tonic::Streaming<PeerMessage>,
}

/// What the federation answered to an update.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Ack,
    Nack { code: i32, reason: String },
}

/// Opens `Sync` on `fed` presenting `certs` (verifying `fed` against `fed_bundle`).
pub async fn open_sync(
    fed: &Federation,
    fed_bundle: &TrustBundle,
    certs: Option<&CertStore>,
    hello: PeerMessage,
) -> anyhow::Result<Result<SyncStream, Status>> {
    let ch = channel(fed.peering, client_to(fed, fed_bundle, certs)).await?;
    let (tx, rx) = mpsc::channel(64);
    tx.send(hello).await?;
    match PeeringClient::new(ch).sync(ReceiverStream::new(rx)).await {
        Ok(r) => Ok(Ok(SyncStream {
            tx,
            rx: r.into_inner(),
        })),
        Err(s) => Ok(Err(s)),
    }
}

impl SyncStream {
    /// Waits for the federation's Hello (the stream is up on its side too).
    pub async fn expect_hello(&mut self) -> proto::PeerHello {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(15), self.rx.message())
                .await
                .expect("no hello within 15 s")
                .expect("stream failed before hello")
                .expect("stream ended before hello");
            if let Some(Body::Hello(h)) = m.body {
                return h;
            }
        }
    }

    /// Sends the parts and waits for the ACK or NACK of one of `versions` (heartbeat ACKs of
    /// other versions and the federation's own updates are skipped).
    pub async fn send(&mut self, parts: Vec<proto::CatalogUpdate>, versions: &[u64]) -> Verdict {
        for p in parts {
            self.tx
                .send(msg(Body::Update(p)))
                .await
                .expect("stream open");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.message())
                .await
                .unwrap_or_else(|_| panic!("no ACK/NACK for versions {versions:?} within 15 s"))
                .expect("stream failed")
                .expect("stream ended");
            match m.body {
                Some(Body::Ack(a)) if versions.contains(&a.version) => return Verdict::Ack,
                Some(Body::Nack(n)) if versions.contains(&n.version) => {
                    return Verdict::Nack {
                        code: n.code,
                        reason: n.reason,
                    };
                }
                Some(Body::Nack(n)) => panic!("a NACK for an unexpected version: {n:?}"),
                _ => {}
            }
        }
    }
}
