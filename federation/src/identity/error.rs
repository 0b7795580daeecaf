//! The one error type of the identity module. Every message says what to do next.

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A trust domain name does not follow the SPIFFE spec.
    #[error(
        "invalid trust domain {input:?}: {reason} (use 1-255 characters of a-z, 0-9, '.', '-', '_')"
    )]
    InvalidTrustDomain {
        /// What was given (truncated).
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A SPIFFE ID does not follow the SPIFFE spec.
    #[error("invalid SPIFFE ID {input:?}: {reason} (expected spiffe://<trust-domain>/<path>)")]
    InvalidSpiffeId {
        /// What was given (truncated).
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A trust bundle could not be read or is unusable.
    #[error("invalid trust bundle for {trust_domain:?}: {reason}")]
    InvalidBundle {
        /// The trust domain the bundle was meant for.
        trust_domain: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configured key-encryption key is malformed.
    #[error(
        "invalid key-encryption key: {reason} (expected exactly 32 random bytes in base64, e.g. the output of `head -c 32 /dev/urandom | base64`)"
    )]
    InvalidKek {
        /// What is wrong with it.
        reason: String,
    },
    /// A sealed key was sealed with another key-encryption key.
    #[error(
        "the key-encryption key does not match the one the CA was created with: configure the original key; if it is lost, the CA must be re-created and every peering re-established"
    )]
    KekMismatch,
    /// A sealed blob is damaged.
    #[error(
        "the sealed CA key is corrupt or truncated ({reason}): restore the CA state from a backup"
    )]
    SealedCorrupt {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A certificate signing request was refused.
    #[error("certificate signing request refused: {reason}")]
    CsrRefused {
        /// Why.
        reason: String,
    },
    /// Issuing a certificate failed inside the CA.
    #[error("could not issue a certificate: {reason}")]
    Issue {
        /// Why.
        reason: String,
    },
    /// A certificate (or chain) could not be read or is unusable.
    #[error("invalid certificate: {reason}")]
    InvalidCertificate {
        /// Why.
        reason: String,
    },
    /// A private key could not be read or does not fit its certificate.
    #[error("invalid private key: {reason}")]
    InvalidKey {
        /// Why.
        reason: String,
    },
    /// The operator-provided intermediate CA is unusable.
    #[error("operator-provided intermediate CA refused: {reason}")]
    InvalidIntermediate {
        /// Why.
        reason: String,
    },
    /// Persisted CA state is unusable.
    #[error("CA state is unusable: {reason}")]
    InvalidCaState {
        /// Why.
        reason: String,
    },
    /// A root-rotation step was called out of order.
    #[error("root rotation step `{step}` refused: {reason}")]
    RotationOrder {
        /// The step that was called.
        step: &'static str,
        /// Why it cannot run now.
        reason: &'static str,
    },
    /// A peer's certificate does not carry a usable SPIFFE identity.
    #[error("peer identity refused: {reason}")]
    PeerIdentity {
        /// Why.
        reason: String,
    },
    /// rustls refused a configuration.
    #[error("TLS configuration refused: {0}")]
    Tls(#[from] rustls::Error),
    /// An address to dial is malformed.
    #[error("invalid address {addr:?}: {reason} (expected host:port)")]
    InvalidAddress {
        /// What was given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Dialing a gRPC endpoint failed.
    #[error(
        "could not connect to {addr}: {source} (is the port reachable, and does its certificate carry the expected SPIFFE ID?)"
    )]
    Connect {
        /// What was dialed.
        addr: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Truncates hostile input before it goes into an error message.
pub(crate) fn clip(input: &str) -> String {
    const MAX: usize = 300;
    if input.len() <= MAX {
        return input.to_owned();
    }
    let mut end = MAX;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}
