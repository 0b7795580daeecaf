//! Headers the gateway owns: hop-by-hop headers never cross a hop, and headers that claim an
//! identity or steer routing are stripped on entry and set only by a gateway.

use http::HeaderMap;
use http::header::{self, HeaderName};

/// Between gateways: which exported service and port a stream is for (`<svc>.<ns>:<port>`).
pub const TARGET: &str = "isthmus-target";
/// Between gateways: a health probe the peer's inbound answers itself.
pub const PROBE: &str = "isthmus-probe";
/// At the destination service: the caller's identity (Envoy's format, `By=...;URI=...`).
pub const FORWARDED_CLIENT_CERT: &str = "x-forwarded-client-cert";
/// At the destination service: the calling cluster.
pub const SOURCE_CLUSTER: &str = "x-isthmus-source-cluster";
/// From a local client: the cluster to send this request to, honoured only where the service's
/// policy allows it (`split.cluster_header`); stripped either way.
pub const CLUSTER: &str = "x-isthmus-cluster";
/// Between gateways: the calling workload's SPIFFE ID, sent only when the calling gateway knew
/// it (DESIGN: caller identity); the serving gateway accepts it only in the caller's trust domain.
pub const CALLER: &str = "isthmus-caller";
/// Between gateways: this request is a shadow copy (responses are discarded).
pub const SHADOW: &str = "isthmus-shadow";
/// At the destination service: this request is a shadow copy.
pub const SHADOW_MARK: &str = "x-isthmus-shadow";

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
];

/// Removes hop-by-hop headers, including any named in `Connection`; `TE: trailers` survives
/// (gRPC needs it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("trailers")));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// Removes every header a caller could use to claim an identity or steer routing.
pub fn strip_identity(headers: &mut HeaderMap) {
    let owned: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k == FORWARDED_CLIENT_CERT
                || k == TARGET
                || k == PROBE
                || k == CALLER
                || k == SHADOW
                || k.starts_with("x-isthmus-")
        })
        .cloned()
        .collect();
    for name in owned {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_identity_headers_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers, deflate"),
            ("upgrade", "h2c"),
            ("x-forwarded-client-cert", "By=spiffe://evil"),
            ("x-isthmus-source-cluster", "east"),
            ("isthmus-target", "cart.shop:80"),
            ("isthmus-caller", "spiffe://west/ns/a/sa/b"),
            ("isthmus-shadow", "1"),
            ("x-isthmus-cluster", "west"),
            ("content-type", "application/grpc"),
        ] {
            h.append(
                HeaderName::from_static(k),
                http::HeaderValue::from_static(v),
            );
        }
        strip_hop_by_hop(&mut h);
        strip_identity(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "te"]);
        assert_eq!(h["te"], "trailers");
    }
}
