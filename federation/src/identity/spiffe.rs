//! SPIFFE names: [`TrustDomain`] and [`SpiffeId`], validated per the SPIFFE ID spec
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>), plus the fixed ID
//! shapes Isthmus uses for workloads, gateways and federations.
//!
//! Parsing is strict on purpose: these strings arrive from certificates and CSRs written by
//! others, and two spellings of one identity would let a policy be bypassed. Trust-domain
//! collisions between peers are checked by the peering code, not here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::clip;
use super::{IdentityError, Result};

const SCHEME: &str = "spiffe://";
/// Longest trust domain name the spec allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest SPIFFE ID the spec allows, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// A SPIFFE trust domain: one cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates `name` (lowercase a-z, 0-9, `.`, `-`, `_`; 1..=255 bytes).
    pub fn new(name: &str) -> Result<Self> {
        let err = |reason| IdentityError::InvalidTrustDomain {
            input: clip(name),
            reason,
        };
        if name.is_empty() {
            return Err(err("it is empty"));
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(err("it is longer than 255 bytes"));
        }
        if name.starts_with(SCHEME) {
            return Err(err("give the bare name, without spiffe://"));
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err("it must be lowercase"));
        }
        if name.contains(':') {
            return Err(err("a port is not allowed"));
        }
        if name.contains('@') {
            return Err(err("userinfo is not allowed"));
        }
        if name.contains('%') {
            return Err(err("percent-encoding is not allowed"));
        }
        if !name.bytes().all(is_trust_domain_byte) {
            return Err(err("it contains a character outside a-z 0-9 . - _"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name, e.g. `west.example`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<td>`.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

fn is_trust_domain_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

fn is_path_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_')
}

impl FromStr for TrustDomain {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for TrustDomain {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self> {
        Self::new(&s)
    }
}

impl From<TrustDomain> for String {
    fn from(td: TrustDomain) -> Self {
        td.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE ID: `spiffe://<trust-domain><path>`. The path is empty or starts with `/`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    path: String,
}

/// What an ID names, by the fixed path shapes Isthmus uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// `/ns/<namespace>/sa/<service-account>`.
    Workload {
        /// Kubernetes namespace (or its equivalent on hosts).
        namespace: String,
        /// Service account.
        service_account: String,
    },
    /// `/isthmus/gateway/<name>`.
    Gateway {
        /// Gateway instance name.
        name: String,
    },
    /// `/isthmus/federation/<name>`.
    Federation {
        /// Federation instance name.
        name: String,
    },
    /// Any other path (including the trust domain's own, empty-path ID).
    Other,
}

impl SpiffeId {
    /// Parses `spiffe://<td><path>`. Rejects other schemes, userinfo, ports, queries,
    /// fragments, percent-encoding, uppercase trust domains, empty or dot segments and a
    /// trailing slash.
    pub fn parse(input: &str) -> Result<Self> {
        let err = |reason| IdentityError::InvalidSpiffeId {
            input: clip(input),
            reason,
        };
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(err("it is longer than 2048 bytes"));
        }
        let Some(rest) = input.strip_prefix(SCHEME) else {
            return Err(
                if input.len() >= SCHEME.len()
                    && input.is_char_boundary(SCHEME.len())
                    && input[..SCHEME.len()].eq_ignore_ascii_case(SCHEME)
                {
                    err("the scheme must be lowercase `spiffe://`")
                } else {
                    err("the scheme must be `spiffe://`")
                },
            );
        };
        if rest.contains('?') {
            return Err(err("a query is not allowed"));
        }
        if rest.contains('#') {
            return Err(err("a fragment is not allowed"));
        }
        if rest.contains('%') {
            return Err(err("percent-encoding is not allowed"));
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.contains('@') {
            return Err(err("userinfo is not allowed"));
        }
        if td.contains(':') {
            return Err(err("a port is not allowed"));
        }
        if td.is_empty() {
            return Err(err("the trust domain is missing"));
        }
        let trust_domain = TrustDomain::new(td).map_err(|e| match e {
            IdentityError::InvalidTrustDomain { reason, .. } => err(reason),
            other => other,
        })?;
        validate_path(path).map_err(err)?;
        Ok(Self {
            trust_domain,
            path: path.to_owned(),
        })
    }

    /// Builds an ID from a trust domain and a path (`""` or `/seg/seg...`).
    pub fn new(trust_domain: &TrustDomain, path: &str) -> Result<Self> {
        validate_path(path).map_err(|reason| IdentityError::InvalidSpiffeId {
            input: clip(&format!("{SCHEME}{trust_domain}{path}")),
            reason,
        })?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            path: path.to_owned(),
        })
    }

    /// `spiffe://<td>/ns/<ns>/sa/<sa>`. Each name must be one path segment.
    pub fn workload(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self> {
        single_segment(trust_domain, namespace)?;
        single_segment(trust_domain, service_account)?;
        Self::new(
            trust_domain,
            &format!("/ns/{namespace}/sa/{service_account}"),
        )
    }

    /// `spiffe://<td>/isthmus/gateway/<name>`. The name must be one path segment.
    pub fn gateway(trust_domain: &TrustDomain, name: &str) -> Result<Self> {
        single_segment(trust_domain, name)?;
        Self::new(trust_domain, &format!("/isthmus/gateway/{name}"))
    }

    /// `spiffe://<td>/isthmus/federation/<name>`. The name must be one path segment.
    pub fn federation(trust_domain: &TrustDomain, name: &str) -> Result<Self> {
        single_segment(trust_domain, name)?;
        Self::new(trust_domain, &format!("/isthmus/federation/{name}"))
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path: empty, or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What this ID names.
    pub fn kind(&self) -> IdKind {
        let segments: Vec<&str> = self.path.split('/').skip(1).collect();
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => IdKind::Workload {
                namespace: (*namespace).to_owned(),
                service_account: (*service_account).to_owned(),
            },
            ["isthmus", "gateway", name] => IdKind::Gateway {
                name: (*name).to_owned(),
            },
            ["isthmus", "federation", name] => IdKind::Federation {
                name: (*name).to_owned(),
            },
            _ => IdKind::Other,
        }
    }
}

fn single_segment(trust_domain: &TrustDomain, name: &str) -> Result<()> {
    if name.contains('/') {
        return Err(IdentityError::InvalidSpiffeId {
            input: clip(&format!("{SCHEME}{trust_domain}/.../{name}")),
            reason: "a name must be a single path segment (no '/')",
        });
    }
    Ok(())
}

/// Checks a path: empty, or `/`-separated non-empty segments of [A-Za-z0-9._-], none `.`/`..`.
fn validate_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(body) = path.strip_prefix('/') else {
        return Err("the path must start with '/'");
    };
    if path.len() + SCHEME.len() > MAX_SPIFFE_ID_LEN {
        return Err("it is longer than 2048 bytes");
    }
    if body.is_empty() || body.ends_with('/') {
        return Err("a trailing slash is not allowed");
    }
    for segment in body.split('/') {
        if segment.is_empty() {
            return Err("empty path segments are not allowed");
        }
        if segment == "." || segment == ".." {
            return Err("'.' and '..' path segments are not allowed");
        }
        if segment.contains('%') {
            return Err("percent-encoding is not allowed");
        }
        if !segment.bytes().all(is_path_byte) {
            return Err("the path contains a character outside A-Z a-z 0-9 . - _");
        }
    }
    Ok(())
}

impl FromStr for SpiffeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn trust_domain_table() {
        let long = "a".repeat(255);
        let too_long = "a".repeat(256);
        let ok = ["west", "west.example.com", "a_b-c.9", long.as_str()];
        for td in ok {
            assert_eq!(TrustDomain::new(td).unwrap().as_str(), td, "{td}");
        }
        let bad = [
            ("", "empty"),
            ("West", "lowercase"),
            ("west:443", "port"),
            ("user@west", "userinfo"),
            ("we%73t", "percent"),
            ("west/x", "character"),
            ("spiffe://west", "without spiffe"),
            ("wést", "character"),
            (too_long.as_str(), "255"),
        ];
        for (td, why) in bad {
            let e = TrustDomain::new(td).unwrap_err().to_string();
            assert!(e.contains(why), "{td:?}: {e}");
        }
    }

    #[test]
    fn spiffe_id_accepts() {
        let cases = [
            ("spiffe://west", "west", ""),
            (
                "spiffe://west/ns/default/sa/web",
                "west",
                "/ns/default/sa/web",
            ),
            (
                "spiffe://west.example/a/B.c/d-e_f",
                "west.example",
                "/a/B.c/d-e_f",
            ),
            ("spiffe://w/..a/.b", "w", "/..a/.b"),
        ];
        for (input, td, path) in cases {
            let id = SpiffeId::parse(input).unwrap();
            assert_eq!(id.trust_domain().as_str(), td);
            assert_eq!(id.path(), path);
            assert_eq!(id.to_string(), input);
        }
    }

    #[test]
    fn spiffe_id_rejects() {
        let long = format!("spiffe://west/{}", "a".repeat(2040));
        let cases = [
            ("https://west/ns/a/sa/b", "scheme"),
            ("SPIFFE://west/ns/a/sa/b", "lowercase"),
            ("spiffe:/west", "scheme"),
            ("spiffe://", "missing"),
            ("spiffe:///ns/a", "missing"),
            ("spiffe://user@west/a", "userinfo"),
            ("spiffe://west:8443/a", "port"),
            ("spiffe://west/a?b=c", "query"),
            ("spiffe://west/a#frag", "fragment"),
            ("spiffe://west/a%2Fb", "percent"),
            ("spiffe://West/a", "lowercase"),
            ("spiffe://west/", "trailing"),
            ("spiffe://west/a/", "trailing"),
            ("spiffe://west//a", "empty"),
            ("spiffe://west/a/./b", "'.'"),
            ("spiffe://west/a/..", "'.'"),
            ("spiffe://west/a b", "character"),
            ("spiffe://west/ä", "character"),
            ("spiffe://we st/a", "character"),
            (long.as_str(), "2048"),
            ("", "scheme"),
            ("spiffé://x", "scheme"),
        ];
        for (input, why) in cases {
            let e = SpiffeId::parse(input).unwrap_err().to_string();
            assert!(e.contains(why), "{input:?}: {e}");
        }
    }

    #[test]
    fn constructors_and_kind() {
        let td = TrustDomain::new("west").unwrap();
        let w = SpiffeId::workload(&td, "default", "web").unwrap();
        assert_eq!(w.to_string(), "spiffe://west/ns/default/sa/web");
        assert_eq!(
            w.kind(),
            IdKind::Workload {
                namespace: "default".into(),
                service_account: "web".into()
            }
        );
        let g = SpiffeId::gateway(&td, "gw-1").unwrap();
        assert_eq!(g.to_string(), "spiffe://west/isthmus/gateway/gw-1");
        assert_eq!(
            g.kind(),
            IdKind::Gateway {
                name: "gw-1".into()
            }
        );
        let f = SpiffeId::federation(&td, "fed-0").unwrap();
        assert_eq!(f.to_string(), "spiffe://west/isthmus/federation/fed-0");
        assert_eq!(
            f.kind(),
            IdKind::Federation {
                name: "fed-0".into()
            }
        );
        assert_eq!(
            SpiffeId::parse("spiffe://west/ns/a/sa").unwrap().kind(),
            IdKind::Other
        );
        assert_eq!(
            SpiffeId::parse("spiffe://west").unwrap().kind(),
            IdKind::Other
        );
        assert!(SpiffeId::gateway(&td, "a/b").is_err());
        assert!(SpiffeId::federation(&td, "a/b").is_err());
        assert!(SpiffeId::gateway(&td, "").is_err());
        assert!(SpiffeId::gateway(&td, "..").is_err());
        assert!(SpiffeId::workload(&td, "a b", "c").is_err());
    }

    #[test]
    fn serde_as_string() {
        let id = SpiffeId::parse("spiffe://west/isthmus/gateway/gw").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://west/isthmus/gateway/gw\"");
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://West/x\"").is_err());
        let td: TrustDomain = serde_json::from_str("\"south\"").unwrap();
        assert_eq!(serde_json::to_string(&td).unwrap(), "\"south\"");
        assert!(serde_json::from_str::<TrustDomain>("\"So uth\"").is_err());
    }
}
