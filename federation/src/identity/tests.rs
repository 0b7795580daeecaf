//! Cross-module tests: the verifiers against real CAs (including the cross-domain forgery),
//! root rotation as peers see it, real TLS handshakes over loopback, and a real tonic server
//! and client over [`super::transport`].

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    SanType,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::server::danger::ClientCertVerifier as _;
use rustls::{CertificateError, Error as TlsError};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

use super::tls::{ALPN_H2, client_config, server_config};
use super::transport::{Caps, connect, connect_lazy, tls_incoming, tls_incoming_capped};
use super::verifier::TrustDomainSet;
use super::*;

const DAY: Duration = Duration::from_secs(86400);
const MINUTE: Duration = Duration::from_secs(60);

struct Cluster {
    td: TrustDomain,
    kek: Kek,
    ca: Ca,
}

fn cluster(name: &str) -> Cluster {
    let td = TrustDomain::new(name).unwrap();
    let kek = Kek::generate().unwrap();
    let ca = Ca::generate(td.clone(), &kek, DAY).unwrap();
    Cluster { td, kek, ca }
}

impl Cluster {
    fn gateway(&self, name: &str) -> SpiffeId {
        SpiffeId::gateway(&self.td, name).unwrap()
    }

    /// A leaf from this cluster's CA: (chain, chain PEM, key PEM).
    fn leaf(&self, id: &SpiffeId) -> (Vec<CertificateDer<'static>>, String, Zeroizing<String>) {
        let (issued, key) = self.ca.issue_local(id, MINUTE).unwrap();
        let chain = pem::parse_certs(&issued.chain_pem).unwrap();
        (chain, issued.chain_pem, key)
    }

    /// What a malicious or compromised CA of this cluster can mint: a leaf for ANY ID
    /// (e.g. another cluster's), signed by this cluster's real root key.
    fn forge(&self, sans: &[&str]) -> (Vec<CertificateDer<'static>>, String, Zeroizing<String>) {
        let state = self.ca.state();
        let root = &state.roots[0];
        let key_der = self.kek.open(&root.sealed_key).unwrap();
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key_der.as_slice()),
            &PKCS_ECDSA_P256_SHA256,
        )
        .unwrap();
        let issuer =
            Issuer::from_ca_cert_der(&CertificateDer::from(root.cert_der.clone()), key).unwrap();
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::URI(Ia5String::try_from(*s).unwrap()))
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&leaf_key, &issuer).unwrap();
        (
            vec![cert.der().clone()],
            cert.pem(),
            pem::pkcs8_to_pem(leaf_key.serialized_der()),
        )
    }
}

fn store_of(clusters: &[&Cluster]) -> TrustStore {
    let store = TrustStore::new();
    for c in clusters {
        assert!(store.set(c.ca.bundle()));
    }
    store
}

fn verify_client(
    store: &TrustStore,
    accept: Accept,
    chain: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<(), TlsError> {
    SpiffeClientVerifier::new(store.clone(), accept)
        .verify_client_cert(&chain[0], &chain[1..], now)
        .map(|_| ())
}

fn verify_server(
    verifier: &SpiffeServerVerifier,
    chain: &[CertificateDer<'static>],
) -> Result<(), TlsError> {
    // The server name is deliberately unrelated: it must not matter.
    let name = ServerName::try_from("unrelated.example").unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn cross_domain_forgery_is_refused_by_both_verifiers() {
    let west = cluster("west");
    let south = cluster("south");
    let store = store_of(&[&west, &south]);
    let victim = south.gateway("gw-1");
    let (forged, _, _) = west.forge(&[&victim.to_string()]);
    let (real, _, _) = south.leaf(&victim);
    let now = UnixTime::now();

    // West is trusted, and its root really signed the forgery; it is still refused, because
    // a `spiffe://south/...` chain is checked against south's roots only.
    let refused = verify_client(&store, Accept::Any, &forged, now).unwrap_err();
    assert_eq!(
        refused,
        TlsError::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    verify_client(&store, Accept::Any, &real, now).unwrap();

    let by_id = SpiffeServerVerifier::for_id(store.clone(), victim.clone());
    assert!(verify_server(&by_id, &forged).is_err());
    verify_server(&by_id, &real).unwrap();
    let by_td = SpiffeServerVerifier::for_trust_domain(store.clone(), south.td.clone());
    assert!(verify_server(&by_td, &forged).is_err());
    verify_server(&by_td, &real).unwrap();

    // West's own real leaves are of course fine against west.
    let (west_leaf, _, _) = west.leaf(&west.gateway("gw-1"));
    verify_client(&store, Accept::Any, &west_leaf, now).unwrap();
}

#[test]
fn unknown_trust_domain_and_wrong_identity_are_refused() {
    let west = cluster("west");
    let north = cluster("north");
    let store = store_of(&[&west]);
    let (north_leaf, _, _) = north.leaf(&north.gateway("gw"));
    assert_eq!(
        verify_client(&store, Accept::Any, &north_leaf, UnixTime::now()).unwrap_err(),
        TlsError::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    let v = SpiffeServerVerifier::for_trust_domain(store.clone(), north.td.clone());
    assert!(verify_server(&v, &north_leaf).is_err());

    let (gw1, _, _) = west.leaf(&west.gateway("gw-1"));
    let expects_gw2 = SpiffeServerVerifier::for_id(store.clone(), west.gateway("gw-2"));
    assert!(verify_server(&expects_gw2, &gw1).is_err());
    let expects_north = SpiffeServerVerifier::for_trust_domain(store, north.td.clone());
    assert!(verify_server(&expects_north, &gw1).is_err());
}

#[test]
fn peer_id_requires_exactly_one_spiffe_uri() {
    let west = cluster("west");
    let store = store_of(&[&west]);
    let now = UnixTime::now();
    for sans in [
        vec![],
        vec!["spiffe://west/a", "spiffe://west/b"],
        vec!["https://west/a"],
        vec!["spiffe://west/a/"],
    ] {
        let (chain, _, _) = west.forge(&sans);
        assert!(peer_id(&chain).is_err(), "{sans:?}");
        assert!(
            verify_client(&store, Accept::Any, &chain, now).is_err(),
            "{sans:?}"
        );
    }
    let (chain, _, _) = west.forge(&["spiffe://west/a"]);
    assert_eq!(peer_id(&chain).unwrap().to_string(), "spiffe://west/a");
    assert!(peer_id(&[]).is_err());
    assert!(peer_id(&[CertificateDer::from(vec![1, 2, 3])]).is_err());
}

#[test]
fn accept_policies() {
    let west = cluster("west");
    let south = cluster("south");
    let east = cluster("east");
    let store = store_of(&[&west, &south, &east]);
    let now = UnixTime::now();
    let (w, _, _) = west.leaf(&west.gateway("gw"));
    let (s, _, _) = south.leaf(&south.gateway("gw"));
    let (e, _, _) = east.leaf(&east.gateway("gw"));
    let ok = |accept: &Accept, chain| verify_client(&store, accept.clone(), chain, now).is_ok();

    let own = Accept::only(west.td.clone());
    assert!(ok(&own, &w) && !ok(&own, &s));
    let peers = Accept::peers_of(west.td.clone());
    assert!(!ok(&peers, &w) && ok(&peers, &s) && ok(&peers, &e));

    let set = TrustDomainSet::new([south.td.clone()]);
    let dynamic = Accept::TrustDomains(set.clone());
    assert!(ok(&dynamic, &s) && !ok(&dynamic, &e));
    set.insert(east.td.clone());
    set.remove(&south.td);
    assert!(!ok(&dynamic, &s) && ok(&dynamic, &e));

    let gateways_only = Accept::custom(|id| matches!(id.kind(), IdKind::Gateway { .. }));
    assert!(ok(&gateways_only, &w));
    let (workload, _, _) = west.leaf(&SpiffeId::workload(&west.td, "default", "web").unwrap());
    assert!(!ok(&gateways_only, &workload));

    // Removing a peer's bundle revokes it at once, whatever the policy says.
    assert!(store.remove(&south.td));
    assert!(!ok(&Accept::Any, &s));
    assert!(!store.remove(&south.td));
}

#[test]
fn trust_store_only_moves_forward() {
    let mut west = cluster("west");
    let store = TrustStore::new();
    let first = west.ca.bundle();
    assert!(store.set(first.clone()));
    assert!(!store.set(first.clone()), "same sequence is not newer");
    west.ca.begin_rotation().unwrap();
    let second = west.ca.bundle();
    assert!(store.set(second.clone()));
    assert!(
        !store.set(first),
        "an older bundle never replaces a newer one"
    );
    assert_eq!(store.get(&west.td), Some(second.clone()));
    assert_eq!(store.snapshot().len(), 1);
    assert!(store.contains(&west.td));
    // A peering made again with a re-created CA (sequence 1 again) replaces it outright, and
    // only the new CA's leaves verify from then on.
    let recreated = cluster("west");
    let id = recreated.gateway("gw");
    let (new_chain, _, _) = recreated.leaf(&id);
    let now = UnixTime::now();
    assert!(verify_client(&store, Accept::Any, &new_chain, now).is_err());
    assert!(
        !store.set(recreated.ca.bundle()),
        "set keeps the higher sequence"
    );
    store.replace(recreated.ca.bundle());
    assert_eq!(store.get(&west.td), Some(recreated.ca.bundle()));
    assert!(verify_client(&store, Accept::Any, &new_chain, now).is_ok());
}

#[test]
fn root_rotation_as_peers_see_it() {
    let mut west = cluster("west");
    let store = store_of(&[&west]);
    let id = west.gateway("gw");
    let now = UnixTime::now();
    let verifies = |store: &TrustStore, chain: &[CertificateDer<'static>]| {
        verify_client(store, Accept::Any, chain, now).is_ok()
    };
    let (old_leaf, _, _) = west.leaf(&id);
    let old_root = west.ca.bundle().roots()[0].clone();

    west.ca.begin_rotation().unwrap();
    assert!(store.set(west.ca.bundle()));
    let new_root = west
        .ca
        .bundle()
        .roots()
        .iter()
        .find(|r| **r != old_root)
        .cloned()
        .unwrap();
    // The old root still signs; leaves from either verify.
    let (still_old, _, _) = west.leaf(&id);
    assert!(verifies(&store, &old_leaf) && verifies(&store, &still_old));
    let only_old = TrustStore::new();
    only_old.set(TrustBundle::new(west.td.clone(), 1, vec![old_root.clone()]).unwrap());
    assert!(verifies(&only_old, &still_old));

    west.ca.switch_signing().unwrap();
    assert!(store.set(west.ca.bundle()));
    let (new_leaf, _, _) = west.leaf(&id);
    let only_new = TrustStore::new();
    only_new.set(TrustBundle::new(west.td.clone(), 1, vec![new_root]).unwrap());
    assert!(
        verifies(&only_new, &new_leaf),
        "new leaves chain to the new root"
    );
    assert!(!verifies(&only_old, &new_leaf));
    assert!(verifies(&store, &old_leaf) && verifies(&store, &new_leaf));

    west.ca.retire_old().unwrap();
    assert!(store.set(west.ca.bundle()));
    assert!(
        !verifies(&store, &old_leaf),
        "old-root leaves are refused once retired"
    );
    assert!(verifies(&store, &new_leaf));

    // The persisted state survives a restart mid-way and keeps the sequence.
    let state = west.ca.state();
    let loaded = Ca::load(state, &west.kek).unwrap();
    assert_eq!(loaded.bundle(), west.ca.bundle());
}

// ---------------------------------------------------------------------------------------------
// Real handshakes over loopback
// ---------------------------------------------------------------------------------------------

struct Server {
    addr: std::net::SocketAddr,
    accepted: tokio::sync::mpsc::UnboundedReceiver<transport::PeerInfo>,
}

/// A TLS echo-ish server on 127.0.0.1:0 that reports each accepted peer and writes "ok".
async fn serve(
    certs: &CertStore,
    verifier: SpiffeClientVerifier,
    handshake_timeout: Duration,
) -> Server {
    serve_capped(certs, verifier, handshake_timeout, None).await
}

/// [`serve`], with handshake caps other than the listener's defaults.
async fn serve_capped(
    certs: &CertStore,
    verifier: SpiffeClientVerifier,
    handshake_timeout: Duration,
    caps: Option<Caps>,
) -> Server {
    let config = server_config(certs, verifier.into_arc(), &[ALPN_H2]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let incoming = match caps {
            Some(caps) => tls_incoming_capped(listener, config, handshake_timeout, caps).boxed(),
            None => tls_incoming(listener, config, handshake_timeout).boxed(),
        };
        let mut incoming = incoming;
        while let Some(Ok(mut stream)) = incoming.next().await {
            let _ = tx.send(stream.info().clone());
            let _ = stream.write_all(b"ok").await;
            let _ = stream.flush().await;
            tokio::spawn(async move {
                let mut buf = [0u8; 1];
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    Server { addr, accepted }
}

fn cert_store(chain_pem: &str, key_pem: &str) -> CertStore {
    let certs = CertStore::new();
    certs.set_from_pem(chain_pem, key_pem).unwrap();
    certs
}

/// Connects and reads the server's "ok": proves both sides accepted the handshake.
async fn dial(
    addr: std::net::SocketAddr,
    certs: Option<&CertStore>,
    verifier: SpiffeServerVerifier,
) -> std::io::Result<()> {
    dial_from(LOOPBACK, addr, certs, verifier).await
}

const LOOPBACK: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

/// A TCP connection to `addr` from `source` (any address of 127.0.0.0/8 is local).
async fn connect_from(
    source: std::net::Ipv4Addr,
    addr: std::net::SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    socket.connect(addr).await
}

/// [`dial`] from `source`.
async fn dial_from(
    source: std::net::Ipv4Addr,
    addr: std::net::SocketAddr,
    certs: Option<&CertStore>,
    verifier: SpiffeServerVerifier,
) -> std::io::Result<()> {
    let config = client_config(certs, verifier.into_arc(), &[ALPN_H2]).unwrap();
    let tcp = connect_from(source, addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let mut buf = [0u8; 2];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ok");
    Ok(())
}

#[tokio::test]
async fn mtls_handshakes_over_loopback() {
    let west = cluster("west");
    let south = cluster("south");
    let east = cluster("east");
    let store = store_of(&[&west, &south, &east]);
    let (_, south_chain, south_key) = south.leaf(&south.gateway("gw-1"));
    let server_certs = cert_store(&south_chain, &south_key);
    let verifier = SpiffeClientVerifier::new(store.clone(), Accept::peers_of(south.td.clone()));
    let mut server = serve(&server_certs, verifier, Duration::from_secs(30)).await;
    let expect_south = || SpiffeServerVerifier::for_id(store.clone(), south.gateway("gw-1"));

    // A slow client that never speaks must not block anyone else.
    let _idle = TcpStream::connect(server.addr).await.unwrap();

    // No client certificate on a mandatory port: refused.
    assert!(dial(server.addr, None, expect_south()).await.is_err());

    // West's forgery of an east identity (east is an accepted peer here): refused in a real
    // handshake, because the chain is checked against east's roots only.
    let (_, forged_pem, forged_key) = west.forge(&[&east.gateway("gw-9").to_string()]);
    let forged = CertStore::new();
    forged.set_from_pem(&forged_pem, &forged_key).unwrap();
    assert!(
        dial(server.addr, Some(&forged), expect_south())
            .await
            .is_err()
    );

    // The real west gateway is accepted, and the server learns exactly who it is.
    let (_, west_chain, west_key) = west.leaf(&west.gateway("gw-1"));
    let west_certs = cert_store(&west_chain, &west_key);
    tokio::time::timeout(
        Duration::from_secs(10),
        dial(server.addr, Some(&west_certs), expect_south()),
    )
    .await
    .expect("a slow handshake must not delay others")
    .unwrap();
    let info = server.accepted.recv().await.unwrap();
    assert_eq!(info.id, Some(west.gateway("gw-1")));
    assert!(
        server.accepted.try_recv().is_err(),
        "refused handshakes are never yielded"
    );

    // The client refuses a server that is not the exact ID it expects.
    let expect_other = SpiffeServerVerifier::for_id(store.clone(), south.gateway("gw-2"));
    assert!(
        dial(server.addr, Some(&west_certs), expect_other)
            .await
            .is_err()
    );
}

/// One host holding idle connections open takes at most its own share of the handshake slots:
/// its connections beyond the share are closed at once, and other hosts are served.
#[tokio::test]
async fn one_source_cannot_take_every_pending_handshake_slot() {
    let west = cluster("west");
    let south = cluster("south");
    let store = store_of(&[&west, &south]);
    let (_, south_chain, south_key) = south.leaf(&south.gateway("gw-1"));
    let server_certs = cert_store(&south_chain, &south_key);
    let verifier = SpiffeClientVerifier::new(store.clone(), Accept::peers_of(south.td.clone()));
    let caps = Caps {
        total: 8,
        per_source: 2,
    };
    let server = serve_capped(&server_certs, verifier, Duration::from_secs(60), Some(caps)).await;
    let expect_south = || SpiffeServerVerifier::for_id(store.clone(), south.gateway("gw-1"));
    let (_, west_chain, west_key) = west.leaf(&west.gateway("gw-1"));
    let west_certs = cert_store(&west_chain, &west_key);

    // As many idle connections from 127.0.0.1 as the listener has slots: only two are kept.
    let mut idle = Vec::new();
    for _ in 0..caps.total {
        idle.push(connect_from(LOOPBACK, server.addr).await.unwrap());
    }
    let mut kept = Vec::new();
    for mut tcp in idle {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut byte)).await {
            Err(_) => kept.push(tcp),
            Ok(read) => assert!(
                matches!(read, Ok(0) | Err(_)),
                "an idle client was sent {read:?}"
            ),
        }
    }
    assert_eq!(kept.len(), caps.per_source, "idle connections left waiting");

    // Another host handshakes at once; the full source is turned away at once.
    let other = std::net::Ipv4Addr::new(127, 0, 0, 2);
    tokio::time::timeout(
        Duration::from_secs(5),
        dial_from(other, server.addr, Some(&west_certs), expect_south()),
    )
    .await
    .expect("one host's idle connections must not hold up another's handshake")
    .unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        dial(server.addr, Some(&west_certs), expect_south()),
    )
    .await
    .expect("a source at its cap is closed, not left waiting");
    assert!(refused.is_err(), "a source past its cap was served");

    // Once its idle connections go, the source is served again.
    drop(kept);
    let served = async {
        loop {
            match dial(server.addr, Some(&west_certs), expect_south()).await {
                Ok(()) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("a source's slots come back when its handshakes end");
}

#[tokio::test]
async fn handshakes_fail_closed_without_a_credential() {
    let west = cluster("west");
    let store = store_of(&[&west]);
    let empty = CertStore::new();
    assert!(empty.expires_at().is_none());
    let verifier = SpiffeClientVerifier::new(store.clone(), Accept::Any);
    let mut server = serve(&empty, verifier, Duration::from_secs(5)).await;
    let (_, chain, key) = west.leaf(&west.gateway("client"));
    let client = cert_store(&chain, &key);
    let expect = SpiffeServerVerifier::for_trust_domain(store.clone(), west.td.clone());
    assert!(
        dial(server.addr, Some(&client), expect.clone())
            .await
            .is_err()
    );

    // Installing a credential later makes the same listener work, without a restart.
    let (issued, server_key) = west
        .ca
        .issue_local(&west.gateway("server"), MINUTE)
        .unwrap();
    empty.set_from_pem(&issued.chain_pem, &server_key).unwrap();
    assert_eq!(empty.expires_at(), Some(issued.not_after));
    assert_eq!(empty.id(), Some(west.gateway("server")));
    dial(server.addr, Some(&client), expect).await.unwrap();
    assert_eq!(
        server.accepted.recv().await.unwrap().id,
        Some(west.gateway("client"))
    );

    // A key that does not belong to the certificate is refused.
    let (_, other_key) = west.ca.issue_local(&west.gateway("x"), MINUTE).unwrap();
    assert!(empty.set_from_pem(&issued.chain_pem, &other_key).is_err());
}

#[tokio::test]
async fn optional_client_auth_admits_anonymous_but_verifies_presented_certs() {
    let west = cluster("west");
    let north = cluster("north");
    let store = store_of(&[&west]);
    let (_, chain, key) = west.leaf(&west.gateway("fed"));
    let verifier = SpiffeClientVerifier::new(store.clone(), Accept::Any).with_mandatory(false);
    let mut server = serve(&cert_store(&chain, &key), verifier, Duration::from_secs(5)).await;
    let expect = || SpiffeServerVerifier::for_trust_domain(store.clone(), west.td.clone());

    dial(server.addr, None, expect()).await.unwrap();
    assert_eq!(server.accepted.recv().await.unwrap().id, None);

    let (_, n_chain, n_key) = north.leaf(&north.gateway("gw"));
    assert!(
        dial(server.addr, Some(&cert_store(&n_chain, &n_key)), expect())
            .await
            .is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// tonic over transport.rs
// ---------------------------------------------------------------------------------------------

mod grpc {
    use std::pin::Pin;

    use tonic::{Request, Response, Status};

    use super::*;
    use crate::proto;
    use crate::proto::gateway_control_server::GatewayControl;

    /// Only `register_gateway` does anything: it records who called.
    #[derive(Default)]
    pub(super) struct Recorder {
        pub(super) callers: Mutex<Vec<Option<SpiffeId>>>,
    }

    #[tonic::async_trait]
    impl GatewayControl for Arc<Recorder> {
        async fn bootstrap(
            &self,
            _: Request<proto::BootstrapRequest>,
        ) -> Result<Response<proto::SignedCertificate>, Status> {
            Err(Status::unimplemented("test"))
        }

        async fn sign_csr(
            &self,
            _: Request<proto::SignCsrRequest>,
        ) -> Result<Response<proto::SignedCertificate>, Status> {
            Err(Status::unimplemented("test"))
        }

        async fn register_gateway(
            &self,
            request: Request<proto::RegisterGatewayRequest>,
        ) -> Result<Response<proto::RegisterGatewayResponse>, Status> {
            let info = request
                .extensions()
                .get::<transport::PeerInfo>()
                .cloned()
                .ok_or_else(|| Status::internal("no PeerInfo"))?;
            self.callers.lock().unwrap().push(info.id.clone());
            let id = info
                .id
                .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
            match id.kind() {
                IdKind::Gateway { name } if name == request.get_ref().name => {
                    Ok(Response::new(proto::RegisterGatewayResponse {
                        ttl_seconds: request.get_ref().ttl_seconds,
                    }))
                }
                _ => Err(Status::permission_denied(format!(
                    "{id} may not register this gateway"
                ))),
            }
        }

        type SubscribeStream =
            Pin<Box<dyn futures_util::Stream<Item = Result<proto::GatewayConfig, Status>> + Send>>;

        async fn subscribe(
            &self,
            _: Request<proto::SubscribeRequest>,
        ) -> Result<Response<Self::SubscribeStream>, Status> {
            Err(Status::unimplemented("test"))
        }

        async fn ack_config(
            &self,
            _: Request<proto::ConfigAck>,
        ) -> Result<Response<proto::ConfigAckResponse>, Status> {
            Err(Status::unimplemented("test"))
        }

        async fn report_health(
            &self,
            _: Request<tonic::Streaming<proto::HealthReport>>,
        ) -> Result<Response<proto::HealthReportAck>, Status> {
            Err(Status::unimplemented("test"))
        }

        async fn report_traffic(
            &self,
            _: Request<proto::TrafficReport>,
        ) -> Result<Response<proto::TrafficReportAck>, Status> {
            Err(Status::unimplemented("test"))
        }
    }
}

#[tokio::test]
async fn tonic_over_transport_carries_the_caller_id() {
    use crate::proto::RegisterGatewayRequest;
    use crate::proto::gateway_control_client::GatewayControlClient;
    use crate::proto::gateway_control_server::GatewayControlServer;

    let west = cluster("west");
    let store = store_of(&[&west]);
    let fed_id = SpiffeId::federation(&west.td, "fed-0").unwrap();
    let (_, fed_chain, fed_key) = west.leaf(&fed_id);
    let fed_certs = cert_store(&fed_chain, &fed_key);
    let verifier = SpiffeClientVerifier::new(store.clone(), Accept::only(west.td.clone()));
    let config = server_config(&fed_certs, verifier.into_arc(), &[ALPN_H2]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let recorder = Arc::new(grpc::Recorder::default());
    let service = GatewayControlServer::new(Arc::clone(&recorder));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tls_incoming(listener, config, Duration::from_secs(10))),
    );

    let (_, gw_chain, gw_key) = west.leaf(&west.gateway("gw-1"));
    let gw_certs = cert_store(&gw_chain, &gw_key);
    let client_cfg = client_config(
        Some(&gw_certs),
        SpiffeServerVerifier::for_id(store.clone(), fed_id.clone()).into_arc(),
        &[ALPN_H2],
    )
    .unwrap();
    let channel = connect(&addr, client_cfg.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    let mut client = GatewayControlClient::new(channel);
    let request = |name: &str| RegisterGatewayRequest {
        name: name.into(),
        advertise_address: "10.0.0.1:15443".into(),
        zone: "a".into(),
        ttl_seconds: 30,
        local_address: String::new(),
        inbound_port: 0,
    };
    let reply = client.register_gateway(request("gw-1")).await.unwrap();
    assert_eq!(reply.get_ref().ttl_seconds, 30);
    let denied = client.register_gateway(request("gw-2")).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let unimplemented = client
        .sign_csr(crate::proto::SignCsrRequest { csr_der: vec![] })
        .await
        .unwrap_err();
    assert_eq!(unimplemented.code(), tonic::Code::Unimplemented);
    assert_eq!(
        *recorder.callers.lock().unwrap(),
        vec![Some(west.gateway("gw-1")), Some(west.gateway("gw-1"))]
    );

    // The lazy variant works the same.
    let lazy = connect_lazy(&addr, client_cfg, Duration::from_secs(5)).unwrap();
    GatewayControlClient::new(lazy)
        .register_gateway(request("gw-1"))
        .await
        .unwrap();

    // A client expecting another server identity cannot connect.
    let wrong = client_config(
        Some(&gw_certs),
        SpiffeServerVerifier::for_id(store.clone(), west.gateway("impostor")).into_arc(),
        &[ALPN_H2],
    )
    .unwrap();
    let err = connect(&addr, wrong, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::Connect { .. }), "{err}");
    assert!(
        connect(
            "no-port",
            client_config(
                None,
                SpiffeServerVerifier::for_id(store, fed_id).into_arc(),
                &[ALPN_H2]
            )
            .unwrap(),
            Duration::from_secs(1)
        )
        .await
        .is_err()
    );
}

#[test]
fn leaf_lifetime_is_checked_at_verification_time() {
    let west = cluster("west");
    let store = store_of(&[&west]);
    let (issued, _) = west
        .ca
        .issue_local(&west.gateway("gw"), Duration::from_secs(2))
        .unwrap();
    let chain = pem::parse_certs(&issued.chain_pem).unwrap();
    let at = |t: SystemTime| UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap());
    let now = SystemTime::now();
    let server = SpiffeServerVerifier::for_id(store.clone(), west.gateway("gw"));
    let name = ServerName::try_from("x.invalid").unwrap();
    for (t, ok) in [(now, true), (now + Duration::from_secs(3), false)] {
        assert_eq!(
            verify_client(&store, Accept::Any, &chain, at(t)).is_ok(),
            ok
        );
        assert_eq!(
            server
                .verify_server_cert(&chain[0], &[], &name, &[], at(t))
                .is_ok(),
            ok
        );
    }
}
