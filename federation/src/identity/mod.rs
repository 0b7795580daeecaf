//! Identity: SPIFFE IDs, trust bundles, the cluster CA, and the TLS plumbing that proves who is
//! on the other end of a connection.
//!
//! What lives here and what must not:
//! - [`spiffe`] names identities; [`bundle`] carries a trust domain's roots in the SPIFFE bundle
//!   format; [`sealed`] encrypts CA keys at rest; [`ca`] issues short-lived leaves and rotates
//!   roots; [`verifier`] verifies a presented chain **only against the roots of the trust domain
//!   named in its own SPIFFE ID**; [`tls`] holds the hot-swappable local credential and builds
//!   rustls configs; [`transport`] runs tonic over those configs.
//! - Nothing here persists anything: [`ca::CaState`] is handed to the caller, which stores it.
//! - Nothing here decides *which* trust domains are peers: callers express that as an
//!   [`verifier::Accept`] policy and keep the [`verifier::TrustStore`] up to date.
//! - Every rustls config is built with `rustls::crypto::ring::default_provider()` explicitly,
//!   never with a process-default provider.

pub mod bundle;
pub mod ca;
mod error;
mod pem;
pub mod sealed;
pub mod spiffe;
pub mod tls;
pub mod transport;
pub mod verifier;
mod x509;

pub use bundle::TrustBundle;
pub use ca::{Ca, CaState, IssuedCert};
pub use error::IdentityError;
pub use sealed::Kek;
pub use spiffe::{IdKind, SpiffeId, TrustDomain};
pub use tls::CertStore;
pub use transport::{PeerInfo, source_of};
pub use verifier::{Accept, SpiffeClientVerifier, SpiffeServerVerifier, TrustStore, peer_id};

/// Result alias for this module.
pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// The signature-verification algorithms every verifier here uses (ring's).
pub(crate) fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[cfg(test)]
mod tests;
