//! Peering tokens: how two clusters that share nothing meet.
//!
//! `isthmus peering token --peer west` on cluster A creates a [`PeeringToken`]: A's advertised
//! peering address, A's trust bundle (so B can verify A's server certificate), a one-time secret
//! and an expiry. A stores only a SHA-256 of the secret ([`TokenRecord`]); the secret is never
//! logged. B presents the secret in `Establish`; A compares hashes in constant time. The token may
//! be retried by the peer it was issued for until it expires (a lost response must not strand a
//! peering), but once one cluster used it nobody else can, and after expiry nobody can.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::identity::TrustDomain;
use crate::model::ClusterName;

const PREFIX: &str = "isthmus-peering-v1.";
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
    pub fn encode(&self) -> Result<String, TokenError> {
        let json = serde_json::to_vec(self).map_err(|e| TokenError::Malformed(e.to_string()))?;
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json)))
    }

    pub fn decode(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("token is too large".into()));
        }
        let body = text.strip_prefix(PREFIX).ok_or_else(|| {
            TokenError::Malformed(format!("a peering token starts with {PREFIX:?}"))
        })?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| {
            TokenError::Malformed("not base64url: was the token copied whole?".into())
        })?;
        serde_json::from_slice(&json).map_err(|e| TokenError::Malformed(e.to_string()))
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
    /// The cluster that established with it; only that cluster may retry.
    pub used_by: Option<ClusterName>,
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
    #[error("the peering token was already used by {0}: a token is single-use")]
    Spent(ClusterName),
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

/// Checks a presented secret against a record. Pure; the caller persists `used_by` on success.
pub fn check(
    record: &TokenRecord,
    presented_secret: &str,
    caller: &ClusterName,
    now_ms: i64,
) -> Result<(), TokenError> {
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
    match &record.used_by {
        Some(user) if user != caller => Err(TokenError::Spent(user.clone())),
        _ => Ok(()),
    }
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
            "isthmus-peering-v1.",
            "isthmus-peering-v1.!!!",
            "other.abc",
            &text[..text.len() - 4],
        ] {
            assert!(PeeringToken::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_table() {
        let (t, mut r) = token();
        assert_eq!(check(&r, &t.secret, &name("west"), 0), Ok(()));
        assert_eq!(
            check(&r, "nope", &name("west"), 0),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            check(&r, &t.secret, &name("west"), 10_000),
            Err(TokenError::Expired)
        );
        assert!(matches!(
            check(&r, &t.secret, &name("south"), 0),
            Err(TokenError::WrongPeer { .. })
        ));
        r.used_by = Some(name("west"));
        // The same peer may retry until expiry.
        assert_eq!(check(&r, &t.secret, &name("west"), 5), Ok(()));
        r.used_by = Some(name("south"));
        assert_eq!(
            check(&r, &t.secret, &name("west"), 5),
            Err(TokenError::Spent(name("south")))
        );
    }
}
