//! Gateway bootstrap credentials. `isthmus gateway bootstrap --name gw-1` creates a revocable
//! token that can obtain exactly that gateway's identity, and writes a bootstrap file with the
//! token, the federation's API address and this cluster's CA bundle. The federation stores only
//! a hash of the token; deleting the record revokes it (and refuses later renewals).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// What the federation keeps per gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayToken {
    pub gateway: String,
    pub token_sha256: String,
    pub created_at_ms: i64,
}

/// The file handed to a gateway host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapFile {
    pub gateway: String,
    pub cluster: String,
    pub trust_domain: String,
    /// The federation's local API address (`host:port`).
    pub federation: String,
    pub token: String,
    /// This cluster's trust bundle, PEM.
    pub ca_bundle_pem: String,
}

pub fn hash(token: &str) -> String {
    digest(&SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh random token.
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no secure random numbers available".to_string())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Constant-time comparison of a presented token with the stored hash.
pub fn matches(record: &GatewayToken, presented: &str) -> bool {
    let a = hash(presented);
    let b = record.token_sha256.as_bytes();
    a.len() == b.len()
        && a.as_bytes()
            .iter()
            .zip(b)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matches_only_itself() {
        let t = new_token().expect("token");
        let r = GatewayToken {
            gateway: "gw-1".into(),
            token_sha256: hash(&t),
            created_at_ms: 0,
        };
        assert!(matches(&r, &t));
        assert!(!matches(&r, "other"));
        assert!(!matches(&r, ""));
        assert!(!serde_json::to_string(&r).expect("json").contains(&t));
    }
}
