//! Who may connect: the [`TrustStore`] of every trust domain's bundle, and rustls verifiers
//! that pick roots **by the trust domain named in the presented certificate's own SPIFFE ID**.
//!
//! rustls' built-in verifiers check DNS/IP names against one pooled root set; with a pool,
//! west's CA could mint `spiffe://south/...` and be believed. Here a chain is verified only
//! against the roots of the trust domain its leaf claims, after an [`Accept`] policy (or the
//! exact expected server ID) has allowed that trust domain. Nothing here fetches bundles;
//! callers keep the store current.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use webpki::KeyUsage;

use super::bundle::TrustBundle;
use super::spiffe::{SpiffeId, TrustDomain};
use super::{IdentityError, Result, x509};

/// The most intermediates a peer may present (our chains have at most a few).
const MAX_INTERMEDIATES: usize = 8;

/// One trust domain's bundle with its roots pre-parsed as webpki trust anchors.
struct Entry {
    bundle: TrustBundle,
    anchors: Vec<TrustAnchor<'static>>,
}

impl Entry {
    fn new(bundle: TrustBundle) -> Self {
        // `TrustBundle::new` already checked that every root is a usable anchor.
        let anchors = bundle
            .roots()
            .iter()
            .filter_map(|root| webpki::anchor_from_trusted_cert(root).ok())
            .map(|anchor| anchor.to_owned())
            .collect();
        Self { bundle, anchors }
    }
}

/// Every trust domain's current bundle; cheap to clone (a handle), lock-free to read.
#[derive(Clone, Default)]
pub struct TrustStore {
    inner: Arc<ArcSwap<BTreeMap<TrustDomain, Arc<Entry>>>>,
}

impl TrustStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs `bundle` for its trust domain unless the store already holds one with the
    /// same or a higher sequence; returns whether it was installed. (A peer whose CA was
    /// re-created starts again at a low sequence: `remove` it first.)
    pub fn set(&self, bundle: TrustBundle) -> bool {
        let entry = Arc::new(Entry::new(bundle));
        let td = entry.bundle.trust_domain().clone();
        let mut installed = false;
        self.inner.rcu(|map| {
            if let Some(current) = map.get(&td)
                && current.bundle.sequence() >= entry.bundle.sequence()
            {
                installed = false;
                return Arc::clone(map);
            }
            installed = true;
            let mut next = BTreeMap::clone(map);
            next.insert(td.clone(), Arc::clone(&entry));
            Arc::new(next)
        });
        if installed {
            tracing::debug!(
                trust_domain = %td,
                sequence = entry.bundle.sequence(),
                roots = entry.anchors.len(),
                "trust bundle installed"
            );
        }
        installed
    }

    /// Installs `bundle` for its trust domain whatever is held now (a peering made again, whose
    /// record is the truth: its sequence may be lower than the one it replaces).
    pub fn replace(&self, bundle: TrustBundle) {
        let entry = Arc::new(Entry::new(bundle));
        let td = entry.bundle.trust_domain().clone();
        self.inner.rcu(|map| {
            let mut next = BTreeMap::clone(map);
            next.insert(td.clone(), Arc::clone(&entry));
            Arc::new(next)
        });
        tracing::debug!(trust_domain = %td, sequence = entry.bundle.sequence(), "trust bundle replaced");
    }

    /// Forgets a trust domain; returns whether it was present.
    pub fn remove(&self, trust_domain: &TrustDomain) -> bool {
        let mut removed = false;
        self.inner.rcu(|map| {
            removed = map.contains_key(trust_domain);
            if !removed {
                return Arc::clone(map);
            }
            let mut next = BTreeMap::clone(map);
            next.remove(trust_domain);
            Arc::new(next)
        });
        removed
    }

    /// The bundle held for a trust domain.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<TrustBundle> {
        self.entry(trust_domain).map(|e| e.bundle.clone())
    }

    /// Every bundle held, by trust domain.
    pub fn snapshot(&self) -> BTreeMap<TrustDomain, TrustBundle> {
        self.inner
            .load()
            .iter()
            .map(|(td, e)| (td.clone(), e.bundle.clone()))
            .collect()
    }

    /// Whether a bundle is held for `trust_domain`.
    pub fn contains(&self, trust_domain: &TrustDomain) -> bool {
        self.inner.load().contains_key(trust_domain)
    }

    fn entry(&self, trust_domain: &TrustDomain) -> Option<Arc<Entry>> {
        self.inner.load().get(trust_domain).cloned()
    }
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.inner.load();
        f.debug_map()
            .entries(map.iter().map(|(td, e)| (td.as_str(), e.bundle.sequence())))
            .finish()
    }
}

/// A set of trust domains that can change at runtime; cheap to clone (a handle).
#[derive(Clone, Default)]
pub struct TrustDomainSet {
    inner: Arc<ArcSwap<BTreeSet<TrustDomain>>>,
}

impl TrustDomainSet {
    /// A set holding `domains`.
    pub fn new(domains: impl IntoIterator<Item = TrustDomain>) -> Self {
        Self {
            inner: Arc::new(ArcSwap::from_pointee(domains.into_iter().collect())),
        }
    }

    /// Replaces the whole set.
    pub fn replace(&self, domains: impl IntoIterator<Item = TrustDomain>) {
        self.inner.store(Arc::new(domains.into_iter().collect()));
    }

    /// Adds one trust domain.
    pub fn insert(&self, domain: TrustDomain) {
        self.inner.rcu(|set| {
            let mut next = BTreeSet::clone(set);
            next.insert(domain.clone());
            next
        });
    }

    /// Removes one trust domain.
    pub fn remove(&self, domain: &TrustDomain) {
        self.inner.rcu(|set| {
            let mut next = BTreeSet::clone(set);
            next.remove(domain);
            next
        });
    }

    /// Whether `domain` is in the set.
    pub fn contains(&self, domain: &TrustDomain) -> bool {
        self.inner.load().contains(domain)
    }
}

impl fmt::Debug for TrustDomainSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.inner.load().iter()).finish()
    }
}

/// Which callers' trust domains a [`SpiffeClientVerifier`] admits. In every case the trust
/// domain must also have a bundle in the store, and the chain must verify against it.
#[derive(Clone)]
pub enum Accept {
    /// Only this trust domain (e.g. the local API port: our own).
    Only(TrustDomain),
    /// Any trust domain in the store except this one (e.g. the peering port: peers only).
    AnyExcept(TrustDomain),
    /// Any trust domain in the store.
    Any,
    /// The trust domains in a set that may change at runtime.
    TrustDomains(TrustDomainSet),
    /// A predicate on the claimed ID, evaluated *before* the chain is verified: it must only
    /// decide whether this kind of caller is welcome, never trust the claim.
    Custom(Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>),
}

impl Accept {
    /// [`Accept::Only`].
    pub fn only(trust_domain: TrustDomain) -> Self {
        Self::Only(trust_domain)
    }

    /// [`Accept::AnyExcept`]: peers only.
    pub fn peers_of(own: TrustDomain) -> Self {
        Self::AnyExcept(own)
    }

    /// [`Accept::Custom`].
    pub fn custom(f: impl Fn(&SpiffeId) -> bool + Send + Sync + 'static) -> Self {
        Self::Custom(Arc::new(f))
    }

    /// Whether the policy admits this (claimed) ID.
    pub fn admits(&self, id: &SpiffeId) -> bool {
        let td = id.trust_domain();
        match self {
            Self::Only(only) => td == only,
            Self::AnyExcept(except) => td != except,
            Self::Any => true,
            Self::TrustDomains(set) => set.contains(td),
            Self::Custom(f) => f(id),
        }
    }
}

impl fmt::Debug for Accept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Only(td) => f.debug_tuple("Only").field(td).finish(),
            Self::AnyExcept(td) => f.debug_tuple("AnyExcept").field(td).finish(),
            Self::Any => f.write_str("Any"),
            Self::TrustDomains(set) => f.debug_tuple("TrustDomains").field(set).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// The SPIFFE ID of a presented chain's leaf: exactly one URI SAN, a valid SPIFFE ID. Says
/// nothing about trust; only a verifier does.
pub fn peer_id(certs: &[CertificateDer<'_>]) -> Result<SpiffeId> {
    let leaf = certs.first().ok_or_else(|| IdentityError::PeerIdentity {
        reason: "no certificate was presented".into(),
    })?;
    id_of(leaf)
}

fn id_of(leaf: &CertificateDer<'_>) -> Result<SpiffeId> {
    let refuse = |reason: String| IdentityError::PeerIdentity { reason };
    let cert = x509::parse(leaf).map_err(|e| refuse(e.to_string()))?;
    let uris = x509::uri_sans(&cert).map_err(|e| refuse(e.to_string()))?;
    let [uri] = uris.as_slice() else {
        return Err(refuse(format!(
            "the certificate must carry exactly one URI SAN (its SPIFFE ID), found {}",
            uris.len()
        )));
    };
    SpiffeId::parse(uri).map_err(|e| refuse(e.to_string()))
}

fn other_error(e: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Maps webpki's verdict onto the rustls error (and so the TLS alert) it corresponds to.
fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let certificate_error = match e {
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
        W::CertExpired { .. } | W::InvalidCertValidity => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertRevoked => CertificateError::Revoked,
        W::InvalidSignatureForPublicKey
        | W::UnsupportedSignatureAlgorithmContext(_)
        | W::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => CertificateError::BadSignature,
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => {
            return other_error(IdentityError::InvalidCertificate {
                reason: other.to_string(),
            });
        }
    };
    rustls::Error::InvalidCertificate(certificate_error)
}

/// Verifies `end_entity` (claiming `id`) against ONLY `id`'s trust domain's roots.
fn verify_chain(
    store: &TrustStore,
    algs: &WebPkiSupportedAlgorithms,
    id: &SpiffeId,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: KeyUsage,
) -> Result<(), rustls::Error> {
    let Some(entry) = store.entry(id.trust_domain()) else {
        tracing::debug!(peer.id = %id, "refused: no trust bundle for this trust domain");
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
    };
    if intermediates.len() > MAX_INTERMEDIATES {
        return Err(other_error(IdentityError::PeerIdentity {
            reason: format!("more than {MAX_INTERMEDIATES} intermediates"),
        }));
    }
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
    cert.verify_for_usage(
        algs.all,
        &entry.anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| {
        tracing::debug!(peer.id = %id, error = %e, "refused: chain does not verify against its trust domain's roots");
        pki_error(e)
    })?;
    Ok(())
}

fn ring_algorithms() -> WebPkiSupportedAlgorithms {
    super::ring_provider().signature_verification_algorithms
}

/// Verifies TLS clients (the server side of mTLS).
#[derive(Clone, Debug)]
pub struct SpiffeClientVerifier {
    store: TrustStore,
    accept: Accept,
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    /// Requires a client certificate whose SPIFFE ID `accept` admits and whose chain verifies
    /// against that trust domain's bundle in `store`.
    pub fn new(store: TrustStore, accept: Accept) -> Self {
        Self {
            store,
            accept,
            mandatory: true,
            algs: ring_algorithms(),
        }
    }

    /// Whether a client certificate is required (default true). The peering port sets false:
    /// `Establish` is authenticated by its token; a certificate, when sent, is still verified.
    pub fn with_mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// For `ServerConfig` builders.
    pub fn into_arc(self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(self)
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Empty: "send your certificate if you have one". Our clients hold exactly one.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = id_of(end_entity).map_err(|e| {
            tracing::debug!(error = %e, "client certificate refused");
            other_error(e)
        })?;
        if !self.accept.admits(&id) {
            tracing::debug!(peer.id = %id, accept = ?self.accept, "client refused: trust domain not accepted on this port");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        verify_chain(
            &self.store,
            &self.algs,
            &id,
            end_entity,
            intermediates,
            now,
            KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// What a [`SpiffeServerVerifier`] expects the server to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpectedServer {
    /// Exactly this ID (e.g. the peer gateway we chose to dial).
    Id(SpiffeId),
    /// Any ID of this trust domain (bootstrap: we know the federation's bundle, not its name).
    TrustDomain(TrustDomain),
}

impl ExpectedServer {
    fn trust_domain(&self) -> &TrustDomain {
        match self {
            Self::Id(id) => id.trust_domain(),
            Self::TrustDomain(td) => td,
        }
    }
}

/// Verifies TLS servers (the client side).
///
/// The TLS server name is ignored on purpose: SPIFFE certificates carry a URI SAN and no DNS
/// SAN, and we dial advertised addresses (often bare IPs behind NAT) that say nothing about
/// identity. What authenticates the server is its SPIFFE ID, which the caller states up front.
#[derive(Clone, Debug)]
pub struct SpiffeServerVerifier {
    store: TrustStore,
    expected: ExpectedServer,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// Expects exactly `id`, verified against its trust domain's bundle in `store`.
    pub fn for_id(store: TrustStore, id: SpiffeId) -> Self {
        Self::new(store, ExpectedServer::Id(id))
    }

    /// Expects any ID of `trust_domain` (bootstrap), verified against that bundle.
    pub fn for_trust_domain(store: TrustStore, trust_domain: TrustDomain) -> Self {
        Self::new(store, ExpectedServer::TrustDomain(trust_domain))
    }

    /// Expects `expected`.
    pub fn new(store: TrustStore, expected: ExpectedServer) -> Self {
        Self {
            store,
            expected,
            algs: ring_algorithms(),
        }
    }

    /// For `ClientConfig` builders.
    pub fn into_arc(self) -> Arc<dyn ServerCertVerifier> {
        Arc::new(self)
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = id_of(end_entity).map_err(|e| {
            tracing::debug!(error = %e, "server certificate refused");
            other_error(e)
        })?;
        let matches = match &self.expected {
            ExpectedServer::Id(expected) => &id == expected,
            ExpectedServer::TrustDomain(td) => id.trust_domain() == td,
        };
        if !matches {
            tracing::debug!(peer.id = %id, expected = ?self.expected, "server refused: not the expected identity");
            return Err(other_error(IdentityError::PeerIdentity {
                reason: format!("the server is {id}, expected {:?}", self.expected),
            }));
        }
        // `id`'s trust domain equals the expected one here, so only its roots are consulted.
        debug_assert_eq!(id.trust_domain(), self.expected.trust_domain());
        verify_chain(
            &self.store,
            &self.algs,
            &id,
            end_entity,
            intermediates,
            now,
            KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
