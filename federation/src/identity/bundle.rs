//! [`TrustBundle`]: one trust domain's X.509 roots with a sequence number, in the SPIFFE bundle
//! format (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE_Trust_Domain_and_Bundle.md>),
//! as PEM, and as the wire type `proto::TrustBundle`.
//!
//! A bundle is validated once, when it is built: at least one root, every root a CA certificate
//! that webpki accepts as a trust anchor. Which bundle is *newer* is decided by the
//! [`super::verifier::TrustStore`], not here.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::public_key::PublicKey;

use super::spiffe::TrustDomain;
use super::{IdentityError, Result, pem, x509};
use crate::proto;

/// How often (seconds) consumers should re-fetch a bundle, published as `spiffe_refresh_hint`.
pub const REFRESH_HINT_SECS: u64 = 300;
/// The most roots one bundle may carry (a hostile peer must not make us parse thousands).
pub const MAX_ROOTS: usize = 32;

/// The roots of one trust domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    sequence: u64,
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// Builds a bundle, refusing no roots, non-CA roots and certificates webpki cannot use.
    pub fn new(
        trust_domain: TrustDomain,
        sequence: u64,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self> {
        let err = |reason: String| IdentityError::InvalidBundle {
            trust_domain: trust_domain.to_string(),
            reason,
        };
        if roots.is_empty() {
            return Err(err("it holds no X.509 roots".into()));
        }
        if roots.len() > MAX_ROOTS {
            return Err(err(format!("it holds more than {MAX_ROOTS} roots")));
        }
        for (i, root) in roots.iter().enumerate() {
            let cert = x509::parse(root).map_err(|e| err(format!("root #{i}: {e}")))?;
            if !x509::is_ca(&cert).map_err(|e| err(format!("root #{i}: {e}")))? {
                return Err(err(format!(
                    "root #{i} ({}) is not a CA certificate (basicConstraints CA=true is required)",
                    cert.subject()
                )));
            }
            webpki::anchor_from_trusted_cert(root)
                .map_err(|e| err(format!("root #{i} is not usable as a trust anchor: {e}")))?;
        }
        Ok(Self {
            trust_domain,
            sequence,
            roots,
        })
    }

    /// A bundle of roots this CA generated or already validated; skips re-validation.
    pub(crate) fn from_own_roots(
        trust_domain: TrustDomain,
        sequence: u64,
        roots: Vec<CertificateDer<'static>>,
    ) -> Self {
        Self {
            trust_domain,
            sequence,
            roots,
        }
    }

    /// The trust domain these roots speak for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Monotonic version of this trust domain's bundle; higher is newer.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The roots (DER), never empty.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The SPIFFE bundle document (a JWKS with `spiffe_sequence` and `x509-svid` keys).
    pub fn to_spiffe_json(&self) -> String {
        let keys = self
            .roots
            .iter()
            .map(|root| {
                // Roots were validated in `new`; a key type we cannot describe as a JWK
                // still goes out with its certificate, which is what consumers verify with.
                let mut jwk = x509::parse(root)
                    .ok()
                    .and_then(|cert| public_jwk(&cert).ok())
                    .unwrap_or_default();
                jwk.use_ = Some("x509-svid".into());
                jwk.x5c = Some(vec![STANDARD.encode(root)]);
                jwk
            })
            .collect();
        let doc = Jwks {
            keys: Some(keys),
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: Some(REFRESH_HINT_SECS),
        };
        // Serializing plain strings and integers into JSON cannot fail.
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }

    /// Reads a SPIFFE bundle document for `trust_domain`. `spiffe_sequence` defaults to 0;
    /// keys whose `use` is not `x509-svid` (e.g. `jwt-svid`) are ignored, as the spec says.
    pub fn from_spiffe_json(trust_domain: &TrustDomain, json: &str) -> Result<Self> {
        let (bundle, _) = Self::parse_spiffe_json(trust_domain, json)?;
        Ok(bundle)
    }

    fn parse_spiffe_json(trust_domain: &TrustDomain, json: &str) -> Result<(Self, Option<u64>)> {
        let err = |reason: String| IdentityError::InvalidBundle {
            trust_domain: trust_domain.to_string(),
            reason,
        };
        let doc: Jwks = serde_json::from_str(json)
            .map_err(|e| err(format!("not a SPIFFE bundle document (JWKS JSON): {e}")))?;
        let keys = doc
            .keys
            .ok_or_else(|| err("the document has no `keys` member".into()))?;
        let mut roots = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if key.use_.as_deref() != Some("x509-svid") {
                continue;
            }
            let x5c = key.x5c.as_deref().unwrap_or_default();
            let [b64] = x5c else {
                return Err(err(format!(
                    "key #{i}: an x509-svid key must carry exactly one certificate in `x5c`, found {}",
                    x5c.len()
                )));
            };
            let der = STANDARD
                .decode(b64)
                .map_err(|e| err(format!("key #{i}: `x5c` is not base64: {e}")))?;
            let cert = x509::parse(&der).map_err(|e| err(format!("key #{i}: {e}")))?;
            if let Ok(actual) = public_jwk(&cert)
                && !key.public_matches(&actual)
            {
                return Err(err(format!(
                    "key #{i}: the JWK public key does not match its `x5c` certificate"
                )));
            }
            roots.push(CertificateDer::from(der));
        }
        if roots.is_empty() {
            return Err(err("the document holds no x509-svid roots".into()));
        }
        let bundle = Self::new(
            trust_domain.clone(),
            doc.spiffe_sequence.unwrap_or(0),
            roots,
        )?;
        Ok((bundle, doc.spiffe_sequence))
    }

    /// The roots as concatenated PEM `CERTIFICATE` blocks.
    pub fn to_pem(&self) -> String {
        pem::certs_to_pem(&self.roots)
    }

    /// Reads PEM roots (e.g. from a bootstrap file).
    pub fn from_pem(trust_domain: TrustDomain, sequence: u64, pem_text: &str) -> Result<Self> {
        let roots = pem::parse_certs(pem_text).map_err(|e| IdentityError::InvalidBundle {
            trust_domain: trust_domain.to_string(),
            reason: e.to_string(),
        })?;
        Self::new(trust_domain, sequence, roots)
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::TrustBundle {
        proto::TrustBundle {
            trust_domain: self.trust_domain.to_string(),
            sequence: self.sequence,
            spiffe_json: self.to_spiffe_json(),
        }
    }

    /// Reads the wire form. `sequence` must agree with the document's `spiffe_sequence` when
    /// the document carries one.
    pub fn from_proto(wire: &proto::TrustBundle) -> Result<Self> {
        let trust_domain = TrustDomain::new(&wire.trust_domain)?;
        let (mut bundle, doc_sequence) = Self::parse_spiffe_json(&trust_domain, &wire.spiffe_json)?;
        if let Some(doc_sequence) = doc_sequence
            && doc_sequence != wire.sequence
        {
            return Err(IdentityError::InvalidBundle {
                trust_domain: trust_domain.to_string(),
                reason: format!(
                    "sequence {} disagrees with the document's spiffe_sequence {doc_sequence}",
                    wire.sequence
                ),
            });
        }
        bundle.sequence = wire.sequence;
        Ok(bundle)
    }
}

impl From<&TrustBundle> for proto::TrustBundle {
    fn from(bundle: &TrustBundle) -> Self {
        bundle.to_proto()
    }
}

impl TryFrom<&proto::TrustBundle> for TrustBundle {
    type Error = IdentityError;
    fn try_from(wire: &proto::TrustBundle) -> Result<Self> {
        Self::from_proto(wire)
    }
}

#[derive(Serialize, Deserialize)]
struct Jwks {
    keys: Option<Vec<Jwk>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

/// The JWK members we read or write; others are ignored.
#[derive(Default, Serialize, Deserialize)]
struct Jwk {
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kty: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

impl Jwk {
    /// Every public member present in `self` equals the one derived from the certificate.
    fn public_matches(&self, actual: &Jwk) -> bool {
        let same = |claimed: &Option<String>, actual: &Option<String>| {
            claimed.is_none() || claimed == actual
        };
        same(&self.kty, &actual.kty)
            && same(&self.crv, &actual.crv)
            && same(&self.x, &actual.x)
            && same(&self.y, &actual.y)
            && same(&self.n, &actual.n)
            && same(&self.e, &actual.e)
    }
}

/// The public-key members of a JWK for a certificate's key (EC P-256/P-384 or RSA).
fn public_jwk(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Jwk> {
    let spki = cert.public_key();
    let unsupported = || IdentityError::InvalidCertificate {
        reason: "root key type is not EC P-256, EC P-384 or RSA".into(),
    };
    let parsed = spki.parsed().map_err(|_| unsupported())?;
    let alg = &spki.algorithm;
    match parsed {
        PublicKey::EC(point) if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY => {
            let curve = alg
                .parameters
                .as_ref()
                .and_then(|p| x509_parser::asn1_rs::Oid::try_from(p).ok())
                .ok_or_else(unsupported)?;
            let (crv, len) = if curve == OID_EC_P256 {
                ("P-256", 32)
            } else if curve == OID_NIST_EC_P384 {
                ("P-384", 48)
            } else {
                return Err(unsupported());
            };
            let bytes = point.data();
            if bytes.len() != 1 + 2 * len || bytes.first() != Some(&0x04) {
                return Err(unsupported());
            }
            Ok(Jwk {
                kty: Some("EC".into()),
                crv: Some(crv.into()),
                x: Some(URL_SAFE_NO_PAD.encode(&bytes[1..=len])),
                y: Some(URL_SAFE_NO_PAD.encode(&bytes[1 + len..])),
                ..Jwk::default()
            })
        }
        PublicKey::RSA(rsa) if alg.algorithm == OID_PKCS1_RSAENCRYPTION => {
            let strip = |b: &[u8]| -> Vec<u8> {
                let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
                b[start..].to_vec()
            };
            Ok(Jwk {
                kty: Some("RSA".into()),
                n: Some(URL_SAFE_NO_PAD.encode(strip(rsa.modulus))),
                e: Some(URL_SAFE_NO_PAD.encode(strip(rsa.exponent))),
                ..Jwk::default()
            })
        }
        _ => Err(unsupported()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::{Ca, Kek, SpiffeId};

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn ca(name: &str) -> Ca {
        Ca::generate(
            td(name),
            &Kek::generate().unwrap(),
            Duration::from_secs(86400),
        )
        .unwrap()
    }

    #[test]
    fn spiffe_json_round_trip() {
        let mut ca = ca("west");
        ca.begin_rotation().unwrap();
        let bundle = ca.bundle();
        let json = bundle.to_spiffe_json();
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["spiffe_sequence"], bundle.sequence());
        assert_eq!(doc["spiffe_refresh_hint"], REFRESH_HINT_SECS);
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        for key in keys {
            assert_eq!(key["use"], "x509-svid");
            assert_eq!(key["kty"], "EC");
            assert_eq!(key["crv"], "P-256");
            assert_eq!(
                URL_SAFE_NO_PAD
                    .decode(key["x"].as_str().unwrap())
                    .unwrap()
                    .len(),
                32
            );
            assert_eq!(
                URL_SAFE_NO_PAD
                    .decode(key["y"].as_str().unwrap())
                    .unwrap()
                    .len(),
                32
            );
            assert_eq!(key["x5c"].as_array().unwrap().len(), 1);
        }
        let back = TrustBundle::from_spiffe_json(&td("west"), &json).unwrap();
        assert_eq!(back, bundle);

        let wire = bundle.to_proto();
        assert_eq!(wire.trust_domain, "west");
        assert_eq!(wire.sequence, bundle.sequence());
        assert_eq!(TrustBundle::try_from(&wire).unwrap(), bundle);

        let pem_text = bundle.to_pem();
        assert_eq!(pem_text.matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(
            TrustBundle::from_pem(td("west"), bundle.sequence(), &pem_text).unwrap(),
            bundle
        );
    }

    #[test]
    fn jwt_keys_are_ignored_and_sequence_defaults() {
        let bundle = ca("west").bundle();
        let mut doc: serde_json::Value = serde_json::from_str(&bundle.to_spiffe_json()).unwrap();
        doc.as_object_mut().unwrap().remove("spiffe_sequence");
        doc["keys"].as_array_mut().unwrap().push(serde_json::json!({
            "use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": "AA", "y": "AA"
        }));
        let back = TrustBundle::from_spiffe_json(&td("west"), &doc.to_string()).unwrap();
        assert_eq!(back.sequence(), 0);
        assert_eq!(back.roots(), bundle.roots());
    }

    #[test]
    fn rejects_bad_bundles() {
        let west = td("west");
        let bundle = ca("west").bundle();
        let doc: serde_json::Value = serde_json::from_str(&bundle.to_spiffe_json()).unwrap();
        let err = |json: &str| {
            TrustBundle::from_spiffe_json(&west, json)
                .unwrap_err()
                .to_string()
        };

        assert!(err("{not json").contains("not a SPIFFE bundle document"));
        assert!(err("[]").contains("not a SPIFFE bundle document"));
        assert!(err("{}").contains("no `keys`"));
        assert!(err(r#"{"keys": []}"#).contains("no x509-svid roots"));
        let mut two = doc.clone();
        let x5c = two["keys"][0]["x5c"][0].clone();
        two["keys"][0]["x5c"].as_array_mut().unwrap().push(x5c);
        assert!(err(&two.to_string()).contains("exactly one certificate"));
        let mut bad_b64 = doc.clone();
        bad_b64["keys"][0]["x5c"][0] = "%%%".into();
        assert!(err(&bad_b64.to_string()).contains("not base64"));
        let mut bad_der = doc.clone();
        bad_der["keys"][0]["x5c"][0] = STANDARD.encode(b"not a certificate").into();
        assert!(err(&bad_der.to_string()).contains("cannot parse"));
        let mut mismatch = doc.clone();
        mismatch["keys"][0]["x"] = URL_SAFE_NO_PAD.encode([7u8; 32]).into();
        assert!(err(&mismatch.to_string()).contains("does not match"));

        // A leaf is not a root.
        let ca = ca("west");
        let (issued, _) = ca
            .issue_local(
                &SpiffeId::gateway(&west, "gw").unwrap(),
                Duration::from_secs(60),
            )
            .unwrap();
        let e = TrustBundle::from_pem(west.clone(), 1, &issued.chain_pem).unwrap_err();
        assert!(e.to_string().contains("not a CA"), "{e}");
        let e = TrustBundle::new(west.clone(), 1, vec![]).unwrap_err();
        assert!(e.to_string().contains("no X.509 roots"), "{e}");
        assert!(TrustBundle::from_pem(west.clone(), 1, "").is_err());

        let mut wire = bundle.to_proto();
        wire.sequence += 1;
        assert!(
            TrustBundle::from_proto(&wire)
                .unwrap_err()
                .to_string()
                .contains("disagrees")
        );
        let mut wire = bundle.to_proto();
        wire.trust_domain = "West".into();
        assert!(TrustBundle::from_proto(&wire).is_err());
    }
}
