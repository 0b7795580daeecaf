//! The stand-in's TLS identity: a fresh self-signed CA (rcgen) and a serving certificate for
//! `127.0.0.1` / `localhost` signed by it, plus the kubeconfig clients read.
//!
//! Must not: be used outside tests: keys are generated per start and never persisted.

use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA (PEM) and the server's TLS config (ALPN h2 and http/1.1).
pub struct Identity {
    pub ca_pem: String,
    pub server: Arc<ServerConfig>,
}

/// Generates the CA and the serving certificate.
///
/// # Panics
/// When rcgen or rustls refuse what they just generated (a bug, not an input problem).
pub fn identity() -> Identity {
    let ca_key = KeyPair::generate().expect("generate the stand-in CA key");
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "isthmus kube-apiserver stand-in CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign the stand-in CA");
    let ca_pem = ca_cert.pem();
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().expect("generate the stand-in server key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.subject_alt_names = vec![
        SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        SanType::DnsName("localhost".try_into().expect("a valid DNS name")),
        SanType::DnsName(
            "kubernetes.default.svc"
                .try_into()
                .expect("a valid DNS name"),
        ),
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &issuer)
        .expect("sign the stand-in server certificate");

    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the generated certificate and key match");
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Identity {
        ca_pem,
        server: Arc::new(server),
    }
}

/// A kubeconfig with one cluster (`server`, the CA inline), one token user and one context.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: standin
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: standin
  context:
    cluster: standin
    user: {user}
    namespace: default
current-context: standin
preferences: {{}}
"
    )
}
