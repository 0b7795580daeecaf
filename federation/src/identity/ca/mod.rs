//! The cluster CA: ECDSA P-256 roots generated on first start (keys sealed with the [`Kek`]) or
//! an operator-provided intermediate; issuing short-lived SPIFFE leaves from CSRs or for the
//! federation itself; and the three-step root rotation.
//!
//! The CA holds no lock and does no I/O: mutating calls take `&mut self`, and after each one
//! the caller persists [`Ca::state`] and only then publishes [`Ca::bundle`].
//!
//! CA certificates never carry URI name constraints: webpki rejects every certificate below
//! such a CA. The trust domain is enforced by the verifiers instead.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SanType, SerialNumber,
};
use ring::rand::{SecureRandom as _, SystemRandom};
use rustls_pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer, UnixTime,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer as _;
use zeroize::Zeroizing;

mod rotation;
mod state;

pub use rotation::Rotation;
pub use state::{CaKind, CaState, RootPhase, RootState};

use super::bundle::TrustBundle;
use super::sealed::Kek;
use super::spiffe::{SpiffeId, TrustDomain};
use super::{IdentityError, Result, pem, x509};

/// Clock skew tolerated between issuer and verifiers: leaves are valid from `now - 60 s`.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A certificate the CA issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    /// PEM: the leaf first, then any intermediates (never the root).
    pub chain_pem: String,
    /// The leaf's notAfter (whole seconds).
    pub not_after: SystemTime,
}

/// A certificate and the key that signs with it.
struct Signer {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

struct GeneratedRoot {
    signer: Signer,
    sealed_key: Vec<u8>,
    created: SystemTime,
    phase: RootPhase,
}

enum Source {
    Generated {
        kek: Kek,
        roots: Vec<GeneratedRoot>,
    },
    Intermediate {
        signer: Box<Signer>,
        /// Sent after the leaf: the intermediate and any CAs above it, without the anchor.
        chain: Vec<CertificateDer<'static>>,
        /// What goes into the bundle: the top of the operator's chain.
        anchors: Vec<CertificateDer<'static>>,
    },
}

/// The cluster CA.
pub struct Ca {
    trust_domain: TrustDomain,
    sequence: u64,
    source: Source,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("sequence", &self.sequence)
            .field("rotation", &self.rotation())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA with a fresh root valid for `validity`.
    pub fn generate(trust_domain: TrustDomain, kek: &Kek, validity: Duration) -> Result<Self> {
        let root = new_root(kek, validity, RootPhase::Active)?;
        Ok(Self {
            trust_domain,
            sequence: 1,
            source: Source::Generated {
                kek: kek.clone(),
                roots: vec![root],
            },
        })
    }

    /// Restores a generated CA from persisted state. A different KEK than the one the CA was
    /// created with gives [`IdentityError::KekMismatch`].
    pub fn load(state: CaState, kek: &Kek) -> Result<Self> {
        let bad = |reason: String| IdentityError::InvalidCaState { reason };
        if state.kind != CaKind::Generated {
            return Err(bad(
                "it records an operator-provided intermediate: load that with `Ca::from_intermediate` and pass this state to `continue_from`".into(),
            ));
        }
        let mut roots = Vec::with_capacity(state.roots.len());
        for (i, root) in state.roots.into_iter().enumerate() {
            let key_der = kek.open(&root.sealed_key)?;
            let key = KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(key_der.as_slice()),
                &PKCS_ECDSA_P256_SHA256,
            )
            .map_err(|e| bad(format!("root #{i}: unreadable private key: {e}")))?;
            let cert = CertificateDer::from(root.cert_der);
            let parsed = x509::parse(&cert).map_err(|e| bad(format!("root #{i}: {e}")))?;
            if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(bad(format!(
                    "root #{i}: the key does not belong to the certificate"
                )));
            }
            let not_after = x509::not_after(&parsed);
            let issuer =
                Issuer::from_ca_cert_der(&cert, key).map_err(|e| bad(format!("root #{i}: {e}")))?;
            roots.push(GeneratedRoot {
                signer: Signer {
                    cert,
                    issuer,
                    not_after,
                },
                sealed_key: root.sealed_key,
                created: UNIX_EPOCH + Duration::from_secs(root.created_unix),
                phase: root.phase,
            });
        }
        let count = |phase| roots.iter().filter(|r| r.phase == phase).count();
        let (active, incoming, outgoing) = (
            count(RootPhase::Active),
            count(RootPhase::Incoming),
            count(RootPhase::Outgoing),
        );
        if active != 1 || incoming + outgoing > 1 {
            return Err(bad(format!(
                "expected one active root and at most one incoming or outgoing root, found {active}/{incoming}/{outgoing}"
            )));
        }
        Ok(Self {
            trust_domain: state.trust_domain,
            sequence: state.sequence,
            source: Source::Generated {
                kek: kek.clone(),
                roots,
            },
        })
    }

    /// A CA that signs with an operator-provided intermediate. `cert_pem` holds the
    /// intermediate (further certificates in it are treated as part of the chain);
    /// `chain_pem` the CAs above it up to the root, which is what goes into the bundle (empty:
    /// the intermediate itself is the anchor). The key must be PKCS#8 PEM ("PRIVATE KEY").
    /// The sequence starts at 1; call [`Ca::continue_from`] with the previously stored state.
    pub fn from_intermediate(
        trust_domain: TrustDomain,
        cert_pem: &str,
        key_pem: &str,
        chain_pem: &str,
    ) -> Result<Self> {
        let bad = |reason: String| IdentityError::InvalidIntermediate { reason };
        let mut certs = pem::parse_certs(cert_pem).map_err(|e| bad(e.to_string()))?;
        certs.extend(pem::parse_certs(chain_pem).map_err(|e| bad(e.to_string()))?);
        let Some(intermediate) = certs.first().cloned() else {
            return Err(bad("the certificate file holds no PEM certificate".into()));
        };
        for (i, cert) in certs.iter().enumerate() {
            let parsed = x509::parse(cert).map_err(|e| bad(format!("certificate #{i}: {e}")))?;
            if !x509::is_ca(&parsed).map_err(|e| bad(e.to_string()))? {
                return Err(bad(format!(
                    "certificate #{i} ({}) is not a CA certificate (basicConstraints CA=true)",
                    parsed.subject()
                )));
            }
        }
        let parsed = x509::parse(&intermediate)?;
        let not_after = x509::not_after(&parsed);
        if not_after <= SystemTime::now() {
            return Err(bad("the intermediate has expired".into()));
        }
        let key_der = pem::parse_key(key_pem).map_err(|e| bad(e.to_string()))?;
        let key = KeyPair::try_from(&key_der).map_err(|e| {
            bad(format!(
                "unreadable private key ({e}); it must be PKCS#8 (\"PRIVATE KEY\"), e.g. `openssl pkcs8 -topk8 -nocrypt -in key.pem`"
            ))
        })?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(bad(
                "the private key does not belong to the intermediate certificate".into(),
            ));
        }
        let issuer =
            Issuer::from_ca_cert_der(&intermediate, key).map_err(|e| bad(e.to_string()))?;
        // The top of the chain is the anchor peers trust; everything below it is presented.
        let anchor = certs.pop().ok_or_else(|| bad("empty chain".into()))?;
        // Empty when the intermediate is its own anchor.
        let chain = certs;
        let ca = Self {
            trust_domain: trust_domain.clone(),
            sequence: 1,
            source: Source::Intermediate {
                signer: Box::new(Signer {
                    cert: intermediate,
                    issuer,
                    not_after,
                }),
                chain,
                anchors: vec![anchor],
            },
        };
        ca.self_test().map_err(|e| {
            bad(format!(
                "a test leaf it issued does not verify against the top of its chain: {e} (does the chain lead from the intermediate to its root, and is the CA free of URI name constraints?)"
            ))
        })?;
        Ok(ca)
    }

    /// Issues a throwaway leaf and verifies it the way peers will.
    fn self_test(&self) -> Result<()> {
        use rustls::client::danger::ServerCertVerifier as _;
        use rustls::server::danger::ClientCertVerifier as _;

        let id = SpiffeId::new(&self.trust_domain, "/isthmus/ca-self-test")?;
        let (issued, _key) = self.issue_local(&id, Duration::from_secs(60))?;
        let chain = pem::parse_certs(&issued.chain_pem)?;
        let (leaf, intermediates) = chain.split_first().ok_or_else(|| IdentityError::Issue {
            reason: "empty chain".into(),
        })?;
        let store = super::verifier::TrustStore::new();
        store.set(self.bundle());
        let now = UnixTime::now();
        let server_name =
            rustls_pki_types::ServerName::try_from("self-test.invalid").map_err(|e| {
                IdentityError::Issue {
                    reason: e.to_string(),
                }
            })?;
        super::verifier::SpiffeServerVerifier::for_id(store.clone(), id)
            .verify_server_cert(leaf, intermediates, &server_name, &[], now)
            .map_err(|e| IdentityError::InvalidCertificate {
                reason: e.to_string(),
            })?;
        super::verifier::SpiffeClientVerifier::new(
            store,
            super::verifier::Accept::only(self.trust_domain.clone()),
        )
        .verify_client_cert(leaf, intermediates, now)
        .map_err(|e| IdentityError::InvalidCertificate {
            reason: e.to_string(),
        })?;
        Ok(())
    }

    /// Carries the bundle sequence over from previously persisted state: kept when the published
    /// roots are unchanged, bumped past it when they changed (e.g. a new operator intermediate).
    pub fn continue_from(&mut self, previous: &CaState) {
        if previous.trust_domain != self.trust_domain {
            return;
        }
        let same_roots = previous
            .roots
            .iter()
            .map(|r| r.cert_der.as_slice())
            .eq(self.published().iter().map(|c| c.as_ref()));
        self.sequence = if same_roots {
            self.sequence.max(previous.sequence)
        } else {
            self.sequence.max(previous.sequence.saturating_add(1))
        };
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The current bundle sequence.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The state to persist.
    pub fn state(&self) -> CaState {
        let roots = match &self.source {
            Source::Generated { roots, .. } => roots
                .iter()
                .map(|r| RootState {
                    cert_der: r.signer.cert.to_vec(),
                    sealed_key: r.sealed_key.clone(),
                    created_unix: unix_secs(r.created),
                    not_after_unix: unix_secs(r.signer.not_after),
                    phase: r.phase,
                })
                .collect(),
            Source::Intermediate { anchors, .. } => anchors
                .iter()
                .map(|cert| {
                    let (created, not_after) = x509::parse(cert)
                        .map(|c| (x509::not_before(&c), x509::not_after(&c)))
                        .unwrap_or((UNIX_EPOCH, UNIX_EPOCH));
                    RootState {
                        cert_der: cert.to_vec(),
                        sealed_key: Vec::new(),
                        created_unix: unix_secs(created),
                        not_after_unix: unix_secs(not_after),
                        phase: RootPhase::Active,
                    }
                })
                .collect(),
        };
        CaState {
            trust_domain: self.trust_domain.clone(),
            sequence: self.sequence,
            kind: match self.source {
                Source::Generated { .. } => CaKind::Generated,
                Source::Intermediate { .. } => CaKind::Intermediate,
            },
            roots,
        }
    }

    fn published(&self) -> Vec<CertificateDer<'static>> {
        match &self.source {
            Source::Generated { roots, .. } => {
                roots.iter().map(|r| r.signer.cert.clone()).collect()
            }
            Source::Intermediate { anchors, .. } => anchors.clone(),
        }
    }

    /// Every published root, with the current sequence.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_own_roots(self.trust_domain.clone(), self.sequence, self.published())
    }

    fn signer(&self) -> Result<(&Signer, &[CertificateDer<'static>])> {
        match &self.source {
            Source::Generated { roots, .. } => roots
                .iter()
                .find(|r| r.phase == RootPhase::Active)
                .map(|r| (&r.signer, &[][..]))
                .ok_or_else(|| IdentityError::InvalidCaState {
                    reason: "no active root".into(),
                }),
            Source::Intermediate { signer, chain, .. } => Ok((signer, chain.as_slice())),
        }
    }

    /// Verifies a CSR and issues its leaf. The CSR's self-signature must verify, it must carry
    /// exactly one SAN, a URI equal to `expected`, and an ECDSA P-256 key. Whatever else it
    /// asks for is ignored: the leaf always gets the fixed leaf profile.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        expected: &SpiffeId,
        lifetime: Duration,
    ) -> Result<IssuedCert> {
        let refuse = |reason: String| IdentityError::CsrRefused { reason };
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| {
                    refuse(match e {
                        rcgen::Error::InvalidCertificationRequestSignature => {
                            "its self-signature does not verify".into()
                        }
                        rcgen::Error::UnsupportedExtension => {
                            "it requests an extension this CA does not issue".into()
                        }
                        other => format!("it cannot be parsed: {other}"),
                    })
                })?;
        let sans = &csr.params.subject_alt_names;
        let [SanType::URI(uri)] = sans.as_slice() else {
            return Err(refuse(format!(
                "it must carry exactly one SAN, the URI {expected}; it carries {}",
                sans.len()
            )));
        };
        let requested = SpiffeId::parse(uri.as_str()).map_err(|e| refuse(e.to_string()))?;
        if &requested != expected {
            return Err(refuse(format!(
                "it asks for {requested}, but this caller may only obtain {expected}"
            )));
        }
        // rcgen derives the key type from the signature algorithm; check the key itself.
        let (_, parsed) = X509CertificationRequest::from_der(csr_der)
            .map_err(|e| refuse(format!("it cannot be parsed: {e}")))?;
        let spki = &parsed.certification_request_info.subject_pki;
        let is_p256 = spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
            && spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| x509_parser::asn1_rs::Oid::try_from(p).ok())
                .is_some_and(|curve| curve == OID_EC_P256)
            && spki.subject_public_key.data.len() == 65;
        if !is_p256 {
            return Err(refuse("its key must be ECDSA P-256".into()));
        }
        self.issue(expected, &csr.public_key, lifetime)
    }

    /// Issues a leaf for a key generated here (the federation's own serving/client identity).
    /// Returns the chain and the PKCS#8 key PEM.
    pub fn issue_local(
        &self,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<(IssuedCert, Zeroizing<String>)> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| IdentityError::Issue {
                reason: e.to_string(),
            })?;
        let issued = self.issue(id, &key, lifetime)?;
        Ok((issued, pem::pkcs8_to_pem(key.serialized_der())))
    }

    fn issue(
        &self,
        id: &SpiffeId,
        public_key: &impl rcgen::PublicKeyData,
        lifetime: Duration,
    ) -> Result<IssuedCert> {
        let fail = |reason: String| IdentityError::Issue { reason };
        if id.trust_domain() != &self.trust_domain {
            return Err(fail(format!(
                "{id} is not in this CA's trust domain {}",
                self.trust_domain
            )));
        }
        if lifetime.is_zero() {
            return Err(fail("the lifetime must be at least one second".into()));
        }
        let (signer, chain) = self.signer()?;
        let now = SystemTime::now();
        let not_after = whole_seconds(
            now.checked_add(lifetime)
                .unwrap_or(signer.not_after)
                .min(signer.not_after),
        );
        if not_after <= now {
            return Err(fail("the signing CA certificate has expired".into()));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(id.to_string()).map_err(|e| fail(e.to_string()))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = (now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH)).into();
        params.not_after = not_after.into();
        let leaf = params
            .signed_by(public_key, &signer.issuer)
            .map_err(|e| fail(e.to_string()))?;
        let mut chain_pem = pem::certs_to_pem([leaf.der()]);
        chain_pem.push_str(&pem::certs_to_pem(chain));
        Ok(IssuedCert {
            chain_pem,
            not_after,
        })
    }
}

fn new_root(kek: &Kek, validity: Duration, phase: RootPhase) -> Result<GeneratedRoot> {
    let fail = |reason: String| IdentityError::Issue { reason };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| fail(e.to_string()))?;
    let serial = random_serial()?;
    let now = SystemTime::now();
    let not_after = whole_seconds(
        now.checked_add(validity)
            .ok_or_else(|| fail("validity is too long".into()))?,
    );
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Isthmus");
    let tag: String = serial
        .to_bytes()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    dn.push(DnType::CommonName, format!("Isthmus root {tag}"));
    params.distinguished_name = dn;
    // Path length 0: this root signs leaves directly. No name constraints (see module docs).
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(serial);
    params.not_before = (now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH)).into();
    params.not_after = not_after.into();
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    let sealed_key = kek.seal(key.serialized_der())?;
    let cert = cert.der().clone();
    let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| fail(e.to_string()))?;
    Ok(GeneratedRoot {
        signer: Signer {
            cert,
            issuer,
            not_after,
        },
        sealed_key,
        created: now,
        phase,
    })
}

/// 16 random bytes, positive and without a leading zero byte (minimal DER INTEGER).
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IdentityError::Random)?;
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// X.509 times have whole-second precision; truncate so what we report is what is encoded.
fn whole_seconds(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_secs(t))
}

#[cfg(test)]
mod tests;
