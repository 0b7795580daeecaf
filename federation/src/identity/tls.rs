//! The local TLS credential and rustls configs: [`CertStore`] (the hot-swappable current
//! certificate and key, resolving for both server and client handshakes), [`server_config`],
//! [`client_config`], and [`generate_key_and_csr`] for gateways, whose keys never leave them.
//!
//! Handshakes fail closed until a credential exists. Configs always use
//! `rustls::crypto::ring::default_provider()` explicitly, so they never depend on (or panic
//! over) a process-default provider. Session resumption is disabled in both directions: a
//! resumed session skips certificate verification, so a removed trust domain or a retired root
//! would keep working until the ticket expired.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::client::ResolvesClientCert;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use zeroize::Zeroizing;

use super::spiffe::SpiffeId;
use super::verifier::peer_id;
use super::{IdentityError, Result, pem, ring_provider, x509};

/// ALPN for gRPC / HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

struct Current {
    key: Arc<CertifiedKey>,
    id: SpiffeId,
    expires_at: SystemTime,
}

/// The process's current certificate and key, swapped atomically on renewal so new
/// handshakes pick up the new credential while existing connections continue untouched.
/// Cheap to clone (a handle).
#[derive(Clone, Default)]
pub struct CertStore {
    current: Arc<ArcSwapOption<Current>>,
}

impl CertStore {
    /// An empty store: every handshake that needs a certificate fails until one is set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs a chain (leaf first) and its private key. Refuses a key that does not belong
    /// to the leaf and a leaf without exactly one SPIFFE URI SAN.
    pub fn set_from_pem(&self, chain_pem: &str, key_pem: &str) -> Result<()> {
        let chain = pem::parse_certs(chain_pem)?;
        let leaf = chain
            .first()
            .ok_or_else(|| IdentityError::InvalidCertificate {
                reason: "the chain holds no PEM certificate".into(),
            })?;
        let id = peer_id(&chain).map_err(|e| IdentityError::InvalidCertificate {
            reason: e.to_string(),
        })?;
        let expires_at = x509::not_after(&x509::parse(leaf)?);
        let key = pem::parse_key(key_pem)?;
        let certified = CertifiedKey::from_der(chain, key, &ring_provider()).map_err(|e| {
            IdentityError::InvalidKey {
                reason: format!("{e} (does the key belong to the certificate?)"),
            }
        })?;
        tracing::info!(id = %id, expires_in_s = expires_at.duration_since(SystemTime::now()).map(|d| d.as_secs()).unwrap_or(0), "TLS credential installed");
        self.current.store(Some(Arc::new(Current {
            key: Arc::new(certified),
            id,
            expires_at,
        })));
        Ok(())
    }

    /// When the current leaf expires; `None` before the first credential.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.current.load().as_ref().map(|c| c.expires_at)
    }

    /// The current leaf's SPIFFE ID; `None` before the first credential.
    pub fn id(&self) -> Option<SpiffeId> {
        self.current.load().as_ref().map(|c| c.id.clone())
    }

    /// Drops the current credential (handshakes fail closed again).
    pub fn clear(&self) {
        self.current.store(None);
    }

    fn key(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|c| Arc::clone(&c.key))
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current.load();
        f.debug_struct("CertStore")
            .field("id", &current.as_ref().map(|c| c.id.to_string()))
            .field("expires_at", &current.as_ref().map(|c| c.expires_at))
            .finish()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self.key();
        if key.is_none() {
            tracing::debug!("handshake refused: no TLS credential yet");
        }
        key
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.key()
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}

/// A TLS 1.3 + 1.2 server config presenting `certs` and verifying clients with `verifier`.
pub fn server_config(
    certs: &CertStore,
    verifier: Arc<dyn ClientCertVerifier>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(certs.clone()));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A TLS 1.3 + 1.2 client config verifying the server with `verifier` and presenting `certs`
/// when given (`None`: no client certificate, e.g. gateway bootstrap).
pub fn client_config(
    certs: Option<&CertStore>,
    verifier: Arc<dyn ServerCertVerifier>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(Arc::new(ring_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match certs {
        Some(certs) => builder.with_client_cert_resolver(Arc::new(certs.clone())),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A fresh ECDSA P-256 key and a CSR (DER) for `id` carrying exactly one URI SAN. The key PEM
/// (PKCS#8) stays with the caller; only the CSR is sent.
pub fn generate_key_and_csr(id: &SpiffeId) -> Result<(Zeroizing<String>, Vec<u8>)> {
    let fail = |reason: String| IdentityError::Issue { reason };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| fail(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        Ia5String::try_from(id.to_string()).map_err(|e| fail(e.to_string()))?,
    )];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| fail(e.to_string()))?;
    Ok((pem::pkcs8_to_pem(key.serialized_der()), csr.der().to_vec()))
}
