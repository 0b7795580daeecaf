//! PEM text for certificates and keys (encoding here, decoding via `rustls-pki-types`).

use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::{IdentityError, Result};

/// Appends one PEM block with the given label.
pub(crate) fn encode_into(out: &mut String, label: &str, der: &[u8]) {
    // Zeroizing: this may be a private key.
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut rest: &str = &b64;
    while !rest.is_empty() {
        // base64 output is ASCII, so every byte offset is a char boundary.
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

/// Certificates as concatenated `CERTIFICATE` blocks, in order.
pub(crate) fn certs_to_pem<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    let mut out = String::new();
    for cert in certs {
        encode_into(&mut out, "CERTIFICATE", cert);
    }
    out
}

/// A PKCS#8 private key as a `PRIVATE KEY` block, in memory that is wiped on drop.
pub(crate) fn pkcs8_to_pem(der: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(der.len() * 2 + 128));
    encode_into(&mut out, "PRIVATE KEY", der);
    out
}

/// Every `CERTIFICATE` block in `pem`, in order; other blocks are ignored. Empty is allowed.
pub(crate) fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::InvalidCertificate {
            reason: format!("cannot read PEM certificates: {e}"),
        })
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in `pem`.
pub(crate) fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| IdentityError::InvalidKey {
        reason: format!("cannot read a PEM private key: {e}"),
    })
}
