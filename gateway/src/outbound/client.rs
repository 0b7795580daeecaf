//! What a local client's headers may ask of the outbound side, read before they are stripped:
//! - `x-isthmus-cluster: <cluster>` pins the call to that cluster, only where the service's
//!   policy allows it (`split.cluster_header`); elsewhere it is ignored (and counted);
//! - `x-forwarded-client-cert` from a configured trusted local source (a node-local mesh
//!   sidecar) names the calling workload; the gateway asserts it to the peer gateway only when
//!   it is a workload ID of its own trust domain (DESIGN: caller identity). From any other
//!   client the header is dropped unread.
//!
//! The header parsing is pure and table-tested.

use std::net::SocketAddr;

use http::{HeaderMap, StatusCode};
use isthmus_federation::identity::{IdKind, SpiffeId};

use super::{Outbound, Resolved};
use crate::headers::{CLUSTER, FORWARDED_CLIENT_CERT};
use crate::table::Snapshot;

/// The local client of one connection.
#[derive(Debug, Clone, Copy)]
pub struct LocalClient {
    pub addr: SocketAddr,
    /// It is a configured trusted source: its `x-forwarded-client-cert` names the caller.
    pub trusted: bool,
}

impl Outbound {
    /// The client behind a connection from `addr`.
    pub fn local_client(&self, addr: SocketAddr) -> LocalClient {
        LocalClient {
            addr,
            trusted: self.trusted_sources.iter().any(|r| r.contains(addr.ip())),
        }
    }

    /// Applies a client's `x-isthmus-cluster`: where the policy honours it, the call goes to
    /// that cluster only. Refused (status, reason) when that cluster does not serve the service.
    pub(super) fn pin_by_header(
        &self,
        snap: &Snapshot,
        resolved: &mut Resolved,
        headers: &HeaderMap,
    ) -> Result<(), (StatusCode, String)> {
        let Some(value) = headers.get(CLUSTER) else {
            return Ok(());
        };
        let import = &resolved.target.import;
        let policy = snap.traffic.for_service(&import.name);
        let honoured = policy.split.as_ref().is_some_and(|s| s.cluster_header);
        self.metrics.cluster_header(&import.name, honoured);
        if !honoured {
            tracing::debug!(service = %import.name, "ignoring {CLUSTER}: the service's policy does not set split.cluster_header");
            return Ok(());
        }
        let asked = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
        let Some(backend) = import.backends.iter().find(|b| *b.cluster == *asked) else {
            let serving: Vec<&str> = import.backends.iter().map(|b| &*b.cluster).collect();
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{CLUSTER}: {asked:?} does not serve {} (clusters that do: {})",
                    import.name,
                    if serving.is_empty() {
                        "none".to_string()
                    } else {
                        serving.join(", ")
                    }
                ),
            ));
        };
        if policy.fences_out(&backend.region) {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{CLUSTER}: {asked} is in region {}, outside the fence of {} ({})",
                    backend.region,
                    import.name,
                    policy
                        .fence_regions
                        .as_deref()
                        .unwrap_or_default()
                        .join(", ")
                ),
            ));
        }
        match &resolved.target.pinned {
            Some(pinned) if *pinned != backend.cluster => Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "{CLUSTER}: {asked} contradicts the per-cluster name {pinned}.{}: use one or the other",
                    import.name
                ),
            )),
            _ => {
                resolved.target.pinned = Some(backend.cluster.clone());
                Ok(())
            }
        }
    }

    /// The calling workload's SPIFFE ID, when `client` is a trusted source and its
    /// `x-forwarded-client-cert` names a workload of this cluster's trust domain.
    pub(super) fn caller(
        &self,
        snap: &Snapshot,
        client: LocalClient,
        headers: &HeaderMap,
    ) -> Option<String> {
        if !client.trusted || !headers.contains_key(FORWARDED_CLIENT_CERT) {
            return None;
        }
        // A line that is not text could hide what the trusted proxy appended: believe nothing.
        let values: Result<Vec<&str>, _> = headers
            .get_all(FORWARDED_CLIENT_CERT)
            .iter()
            .map(|v| v.to_str())
            .collect();
        let parsed = values
            .map_err(|_| "a header line is not text".to_string())
            .and_then(|v| workload_from_xfcc(v.into_iter(), &snap.trust_domain));
        match parsed {
            Ok(id) => Some(id.to_string()),
            Err(reason) => {
                tracing::debug!(client = %client.addr, %reason, "not asserting a caller identity");
                None
            }
        }
    }
}

/// The workload named by the last element of an `x-forwarded-client-cert` (Envoy's format:
/// elements separated by `,`, `key=value` pairs by `;`, values optionally double-quoted), when
/// its `URI=` is a workload SPIFFE ID in `trust_domain`; else why not.
pub fn workload_from_xfcc<'a>(
    values: impl Iterator<Item = &'a str>,
    trust_domain: &str,
) -> Result<SpiffeId, String> {
    // Several header lines are one list. The trusted proxy appended the last element: it is
    // taken literally (never an earlier one, even when the last is empty), and a quote left open
    // by an earlier element — which could swallow the proxy's own — refuses the whole header.
    let joined = values.collect::<Vec<_>>().join(",");
    let elements = split_unquoted(&joined, ',')?;
    let last = elements.last().copied().unwrap_or_default();
    if last.trim().is_empty() {
        return Err("its last element is empty".into());
    }
    let mut uris = split_unquoted(last, ';')?.into_iter().filter_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("uri")
            .then(|| unquote(value.trim()))
    });
    let uri = uris.next().ok_or("its last element has no URI")?;
    if uris.next().is_some() {
        return Err("its last element has more than one URI".into());
    }
    let id = SpiffeId::parse(&uri).map_err(|e| format!("its URI is not a SPIFFE ID: {e}"))?;
    if id.trust_domain().as_str() != trust_domain || trust_domain.is_empty() {
        return Err(format!(
            "{id} is outside this cluster's trust domain {trust_domain:?}: a gateway asserts only its own workloads"
        ));
    }
    if !matches!(id.kind(), IdKind::Workload { .. }) {
        return Err(format!(
            "{id} is not a workload identity (/ns/<ns>/sa/<sa>)"
        ));
    }
    Ok(id)
}

/// `text` split at `sep` outside double quotes (a backslash escapes the next character); an
/// error when a quote is left open.
fn split_unquoted(text: &str, sep: char) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted {
        return Err("a quoted value is never closed".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// A value without its surrounding quotes and escapes.
fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    c => out.push(c),
                }
            }
            out
        }
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_elements_uri_names_the_caller_in_our_trust_domain_only() {
        let td = "east.mesh";
        let cases: [(&[&str], Result<&str, &str>); 12] = [
            (
                &[
                    "By=spiffe://east.mesh/ns/a/sa/sidecar;Hash=abc;URI=spiffe://east.mesh/ns/shop/sa/cart",
                ],
                Ok("spiffe://east.mesh/ns/shop/sa/cart"),
            ),
            (
                // Several hops: the last element is the client the sidecar saw.
                &[
                    "URI=spiffe://east.mesh/ns/x/sa/first,By=spiffe://east.mesh/ns/a/sa/b;Subject=\"CN=cart,OU=shop;x\";URI=\"spiffe://east.mesh/ns/shop/sa/cart\"",
                ],
                Ok("spiffe://east.mesh/ns/shop/sa/cart"),
            ),
            (
                // Two header lines are one list.
                &[
                    "URI=spiffe://east.mesh/ns/x/sa/first",
                    "URI=spiffe://east.mesh/ns/y/sa/last",
                ],
                Ok("spiffe://east.mesh/ns/y/sa/last"),
            ),
            (
                &["URI=spiffe://west.mesh/ns/shop/sa/cart"],
                Err("outside this cluster's trust domain"),
            ),
            (
                &["URI=spiffe://east.mesh/ns/shop/sa/cart,URI=spiffe://west.mesh/ns/a/sa/b"],
                Err("outside this cluster's trust domain"),
            ),
            (
                &["URI=spiffe://east.mesh/isthmus/gateway/gw"],
                Err("not a workload identity"),
            ),
            (&["By=spiffe://east.mesh/ns/a/sa/b;Hash=1"], Err("no URI")),
            (&["URI=https://east.mesh/ns/a/sa/b"], Err("not a SPIFFE ID")),
            (
                &["URI=spiffe://east.mesh/ns/a/sa/b;URI=spiffe://east.mesh/ns/c/sa/d"],
                Err("more than one URI"),
            ),
            (&[""], Err("empty")),
            (
                // A client's open quote must not swallow the element its sidecar appended.
                &[
                    "URI=spiffe://east.mesh/ns/admin/sa/root;Subject=\",By=spiffe://east.mesh/ns/a/sa/sidecar;URI=spiffe://east.mesh/ns/shop/sa/cart",
                ],
                Err("never closed"),
            ),
            (
                // An empty last element is not an invitation to believe the one before it.
                &["URI=spiffe://east.mesh/ns/admin/sa/root", ""],
                Err("empty"),
            ),
        ];
        for (values, want) in cases {
            let got = workload_from_xfcc(values.iter().copied(), td);
            match (got, want) {
                (Ok(id), Ok(w)) => assert_eq!(id.to_string(), w, "{values:?}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{values:?}: {e}"),
                (got, want) => panic!("{values:?}: got {got:?}, want {want:?}"),
            }
        }
        assert!(
            workload_from_xfcc(["URI=spiffe://east.mesh/ns/a/sa/b"].into_iter(), "").is_err(),
            "no trust domain yet: nothing is asserted"
        );
    }

    #[test]
    fn quoted_separators_do_not_split() {
        assert_eq!(
            split_unquoted(r#"a="x,y\",z",b"#, ','),
            Ok(vec![r#"a="x,y\",z""#, "b"])
        );
        assert!(split_unquoted(r#"a="x,b"#, ',').is_err());
        assert_eq!(unquote(r#""a\"b""#), "a\"b");
        assert_eq!(unquote("plain"), "plain");
    }
}
