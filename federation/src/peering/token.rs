//! Peering tokens: how two clusters that share nothing meet.
//!
//! `isthmus peering token --peer west` on cluster A creates a [`PeeringToken`]: A's advertised
//! peering address, A's trust bundle (so B can verify A's server certificate), a one-time secret
//! and an expiry. A stores only a SHA-256 of the secret ([`TokenRecord`]); the secret is never
//! logged. B presents the secret in `Establish`; A compares hashes in constant time.
//!
//! A token works exactly once: the first successful `Establish` spends it, and the record keeps
//! who spent it (cluster and trust domain). A retry after a lost answer is accepted only from the
//! same party, which it proves by calling over mTLS with a certificate that chains to the bundle
//! the first attempt presented (the issuer trusts that bundle from then on). A claimed cluster
//! name proves nothing: anyone else needs a new token, and after expiry nobody can retry.
//!
//! The encoded token carries an HMAC of its body keyed by its own secret, so a token damaged in
//! copying is refused as malformed before anything is dialled. It is a checksum, not a
//! signature: whoever holds the token holds the secret and could re-tag an edited copy, which
//! grants nothing the secret does not.
//!
//! Must not: log or store the secret, or decide anything from a cluster name alone.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::identity::TrustDomain;
use crate::model::ClusterName;

const PREFIX: &str = "isthmus-peering-v2.";
/// Tokens of the first format carried no integrity check; they expire within hours anyway.
const OLD_PREFIX: &str = "isthmus-peering-v1.";
/// Tokens are pasted by hand; anything larger is not one of ours.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// What the token carries to the other cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeeringToken {
    /// Id of the token record at the issuer.
    pub id: String,
    /// The issuing cluster.
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    /// The issuer's advertised peering address (`host:port`).
    pub address: String,
    /// The issuer's trust bundle, SPIFFE JSON.
    pub bundle: String,
    pub bundle_sequence: u64,
    /// The cluster the token was issued for.
    pub peer: ClusterName,
    pub secret: String,
    pub expires_at_ms: i64,
}

impl PeeringToken {
    /// `isthmus-peering-v2.<base64url JSON>.<base64url HMAC-SHA256 of the JSON, keyed by the secret>`.
    pub fn encode(&self) -> Result<String, TokenError> {
        let json = serde_json::to_vec(self).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let tag = integrity_tag(&self.secret, &json);
        Ok(format!(
            "{PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        ))
    }

    pub fn decode(text: &str) -> Result<Self, TokenError> {
        const DAMAGED: &str =
            "it was changed or not copied whole: copy the token again, or create a new one";
        let text = text.trim();
        if text.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("token is too large".into()));
        }
        if text.starts_with(OLD_PREFIX) {
            return Err(TokenError::Malformed(
                "this token is of an older format: create a new one with `isthmus peering token`"
                    .into(),
            ));
        }
        let rest = text.strip_prefix(PREFIX).ok_or_else(|| {
            TokenError::Malformed(format!("a peering token starts with {PREFIX:?}"))
        })?;
        let (body, tag) = rest
            .split_once('.')
            .ok_or_else(|| TokenError::Malformed(format!("its check is missing: {DAMAGED}")))?;
        let (json, tag) = match (URL_SAFE_NO_PAD.decode(body), URL_SAFE_NO_PAD.decode(tag)) {
            (Ok(j), Ok(t)) => (j, t),
            _ => return Err(TokenError::Malformed(format!("not base64url: {DAMAGED}"))),
        };
        let token: PeeringToken = serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed(format!("unreadable: {DAMAGED}")))?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, token.secret.as_bytes());
        hmac::verify(&key, &json, &tag)
            .map_err(|_| TokenError::Malformed(format!("its check does not match: {DAMAGED}")))?;
        Ok(token)
    }

    /// Redacted form for logs and `config_dump`.
    pub fn describe(&self) -> String {
        format!(
            "peering token {} from {} for {} (expires {} ms)",
            self.id, self.cluster, self.peer, self.expires_at_ms
        )
    }
}

/// What the issuer keeps: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub peer: ClusterName,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub expires_at_ms: i64,
    /// The cluster that established with it.
    pub used_by: Option<ClusterName>,
    /// The trust domain whose bundle that cluster presented: a retry must prove a certificate of
    /// it. Records spent before this field existed allow no retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by_trust_domain: Option<TrustDomain>,
}

/// Who presents a token, as far as the issuer can tell.
#[derive(Debug, Clone, Copy)]
pub struct Presenter<'a> {
    /// The cluster name the request claims (proves nothing by itself).
    pub cluster: &'a ClusterName,
    /// The trust domain whose bundle the request carries.
    pub trust_domain: &'a TrustDomain,
    /// The trust domain of a federation certificate the caller presented over mTLS and the
    /// verifier checked against the bundle the issuer holds for that trust domain.
    pub proven: Option<&'a TrustDomain>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed peering token: {0}")]
    Malformed(String),
    #[error(
        "the peering token is not valid: create a new one with `isthmus peering token --peer <name>` on the other cluster"
    )]
    Invalid,
    #[error(
        "the peering token expired: create a new one with `isthmus peering token --peer <name>` on the other cluster"
    )]
    Expired,
    #[error("the peering token was issued for peer {expected}, not {presented}")]
    WrongPeer {
        expected: ClusterName,
        presented: ClusterName,
    },
    #[error(
        "the peering token was already used by {0}: a token works once; create a new one with `isthmus peering token --peer <name>` on the other cluster"
    )]
    Spent(ClusterName),
    #[error(
        "the peering token was already used by {0}; a retry is accepted only over mTLS from the federation that used it, otherwise create a new token with `isthmus peering token --peer {0}` on the other cluster"
    )]
    RetryNeedsProof(ClusterName),
    #[error("no secure random numbers available")]
    Random,
}

/// Creates a token and the record to store, using fresh random id and secret.
pub fn issue(
    cluster: ClusterName,
    trust_domain: TrustDomain,
    address: String,
    bundle: String,
    bundle_sequence: u64,
    peer: ClusterName,
    expires_at_ms: i64,
) -> Result<(PeeringToken, TokenRecord), TokenError> {
    let rng = SystemRandom::new();
    let mut id = [0u8; 12];
    let mut secret = [0u8; 32];
    rng.fill(&mut id).map_err(|_| TokenError::Random)?;
    rng.fill(&mut secret).map_err(|_| TokenError::Random)?;
    let id = URL_SAFE_NO_PAD.encode(id);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let record = TokenRecord {
        id: id.clone(),
        peer: peer.clone(),
        secret_sha256: sha256_hex(&secret),
        expires_at_ms,
        used_by: None,
        used_by_trust_domain: None,
    };
    let token = PeeringToken {
        id,
        cluster,
        trust_domain,
        address,
        bundle,
        bundle_sequence,
        peer,
        secret,
        expires_at_ms,
    };
    Ok((token, record))
}

/// Checks a presented secret against a record. Pure; on success the caller persists
/// [`TokenRecord::spend`] together with what the token grants, in one commit.
pub fn check(
    record: &TokenRecord,
    presented_secret: &str,
    by: Presenter<'_>,
    now_ms: i64,
) -> Result<(), TokenError> {
    let caller = by.cluster;
    if now_ms >= record.expires_at_ms {
        return Err(TokenError::Expired);
    }
    if !constant_time_eq(
        sha256_hex(presented_secret).as_bytes(),
        record.secret_sha256.as_bytes(),
    ) {
        return Err(TokenError::Invalid);
    }
    if &record.peer != caller {
        return Err(TokenError::WrongPeer {
            expected: record.peer.clone(),
            presented: caller.clone(),
        });
    }
    let Some(user) = &record.used_by else {
        return Ok(());
    };
    if user != caller {
        return Err(TokenError::Spent(user.clone()));
    }
    // The same name again: a retry only if it proves to be the party that spent the token.
    match &record.used_by_trust_domain {
        Some(td) if td == by.trust_domain && by.proven == Some(td) => Ok(()),
        Some(_) => Err(TokenError::RetryNeedsProof(user.clone())),
        None => Err(TokenError::Spent(user.clone())),
    }
}

impl TokenRecord {
    /// The record after `by` established with it.
    pub fn spend(&mut self, by: Presenter<'_>) {
        self.used_by = Some(by.cluster.clone());
        self.used_by_trust_domain = Some(by.trust_domain.clone());
    }
}

fn integrity_tag(secret: &str, body: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), body)
}

/// A secret travels as `<id>.<secret>` in `Establish` so the issuer can find the record.
pub fn split_presented(presented: &str) -> Option<(&str, &str)> {
    presented.split_once('.')
}

fn sha256_hex(text: &str) -> String {
    digest(&SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares without an early exit, so timing does not reveal how many bytes matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> ClusterName {
        ClusterName::new(n).expect("name")
    }

    fn token() -> (PeeringToken, TokenRecord) {
        issue(
            name("east"),
            "east.mesh".parse().expect("td"),
            "127.0.0.1:15443".into(),
            "{}".into(),
            1,
            name("west"),
            10_000,
        )
        .expect("issue")
    }

    fn td(t: &str) -> TrustDomain {
        t.parse().expect("td")
    }

    #[test]
    fn encode_decode_and_record_has_no_secret() {
        let (t, r) = token();
        let text = t.encode().expect("encode");
        assert_eq!(PeeringToken::decode(&text).expect("decode"), t);
        assert_eq!(
            PeeringToken::decode(&format!("  {text}\n")).expect("trim"),
            t
        );
        let record_json = serde_json::to_string(&r).expect("json");
        assert!(!record_json.contains(&t.secret));
        assert!(!t.describe().contains(&t.secret));
        for bad in [
            "",
            "isthmus-peering-v2.",
            "isthmus-peering-v2.!!!",
            "other.abc",
            &text[..text.len() - 4],
        ] {
            assert!(PeeringToken::decode(bad).is_err(), "{bad}");
        }
    }

    /// Every one-character change anywhere in a token is refused as malformed, never decoded into
    /// a token that would dial a wrong address or trust a wrong bundle.
    #[test]
    fn any_changed_character_is_refused_as_malformed() {
        let (t, _) = token();
        let text = t.encode().expect("encode");
        let start = PREFIX.len();
        for i in start..text.len() {
            let mut bytes = text.clone().into_bytes();
            if bytes[i] == b'.' {
                continue;
            }
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).expect("ascii");
            match PeeringToken::decode(&tampered) {
                Err(TokenError::Malformed(why)) => {
                    assert!(why.contains("copy the token again"), "{why}")
                }
                other => panic!("changed character {i}: {other:?}"),
            }
        }
        let old = format!("{OLD_PREFIX}{}", &text[PREFIX.len()..]);
        assert!(matches!(
            PeeringToken::decode(&old),
            Err(TokenError::Malformed(why)) if why.contains("older format")
        ));
    }

    #[test]
    fn check_table() {
        let (t, mut r) = token();
        let (west, south) = (name("west"), name("south"));
        let (west_td, other_td) = (td("west.mesh"), td("impostor.mesh"));
        let fresh = |cluster| Presenter {
            cluster,
            trust_domain: &west_td,
            proven: None,
        };
        assert_eq!(check(&r, &t.secret, fresh(&west), 0), Ok(()));
        assert_eq!(check(&r, "nope", fresh(&west), 0), Err(TokenError::Invalid));
        assert_eq!(
            check(&r, &t.secret, fresh(&west), 10_000),
            Err(TokenError::Expired)
        );
        assert!(matches!(
            check(&r, &t.secret, fresh(&south), 0),
            Err(TokenError::WrongPeer { .. })
        ));
        r.spend(fresh(&west));
        // Spent: the same name without proof, or with a proof of another trust domain, is no retry.
        assert_eq!(
            check(&r, &t.secret, fresh(&west), 5),
            Err(TokenError::RetryNeedsProof(west.clone()))
        );
        let proven_other = Presenter {
            cluster: &west,
            trust_domain: &other_td,
            proven: Some(&other_td),
        };
        assert_eq!(
            check(&r, &t.secret, proven_other, 5),
            Err(TokenError::RetryNeedsProof(west.clone()))
        );
        let claims_but_proves_other = Presenter {
            cluster: &west,
            trust_domain: &west_td,
            proven: Some(&other_td),
        };
        assert_eq!(
            check(&r, &t.secret, claims_but_proves_other, 5),
            Err(TokenError::RetryNeedsProof(west.clone()))
        );
        // The party that spent it, proving its certificate: a retry after a lost answer.
        let proven = Presenter {
            cluster: &west,
            trust_domain: &west_td,
            proven: Some(&west_td),
        };
        assert_eq!(check(&r, &t.secret, proven, 5), Ok(()));
        assert_eq!(
            check(&r, &t.secret, proven, 10_000),
            Err(TokenError::Expired)
        );
        // A record spent before the spender's trust domain was kept allows no retry at all.
        r.used_by_trust_domain = None;
        assert_eq!(
            check(&r, &t.secret, proven, 5),
            Err(TokenError::Spent(west.clone()))
        );
        r.spend(fresh(&south));
        assert_eq!(
            check(&r, &t.secret, proven, 5),
            Err(TokenError::Spent(south))
        );
    }
}
