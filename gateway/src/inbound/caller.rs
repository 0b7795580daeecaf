//! The calling workload behind a peer gateway. A calling gateway that knew which workload sent a
//! request names it in `isthmus-caller`; this side accepts the claim only when it is a workload
//! ID in the calling gateway's own trust domain (a gateway vouches for its own cluster, never for
//! another), and then shows the destination both hops in `x-forwarded-client-cert`.
//! Pure: no I/O, table-tested.

use http::{HeaderMap, HeaderValue};
use isthmus_federation::identity::{IdKind, SpiffeId};

use crate::headers::CALLER;

/// The workload `gateway` vouches for in `headers`, `None` when it named none, or why the claim
/// is refused (`cluster` is the calling gateway's cluster, for the message).
pub fn workload(
    headers: &HeaderMap,
    gateway: &SpiffeId,
    cluster: &str,
) -> Result<Option<SpiffeId>, String> {
    let mut values = headers.get_all(CALLER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!(
            "{cluster}'s gateway sent more than one {CALLER} header"
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| format!("{cluster}'s gateway sent a {CALLER} that is not text"))?;
    let id = SpiffeId::parse(text)
        .map_err(|e| format!("{cluster}'s gateway sent a {CALLER} that is not a SPIFFE ID: {e}"))?;
    let domain = gateway.trust_domain();
    if id.trust_domain() != domain {
        return Err(format!(
            "{cluster}'s gateway asserted {id} outside its trust domain {domain}"
        ));
    }
    if !matches!(id.kind(), IdKind::Workload { .. }) {
        return Err(format!(
            "{cluster}'s gateway asserted {id}, which is not a workload identity \
             (spiffe://{domain}/ns/<namespace>/sa/<service-account>)"
        ));
    }
    Ok(Some(id))
}

/// `x-forwarded-client-cert` for a request a gateway made on behalf of a workload: two elements,
/// oldest hop first, as Envoy appends them — the workload as the calling gateway saw it, then the
/// calling gateway as this one saw it.
pub fn forwarded_client_cert(
    own: &SpiffeId,
    gateway: &SpiffeId,
    workload: &SpiffeId,
) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "By={gateway};URI={workload},By={own};URI={gateway}"
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("id")
    }

    fn claim(values: &[&str]) -> Result<Option<SpiffeId>, String> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CALLER, HeaderValue::from_str(v).expect("value"));
        }
        workload(&h, &id("spiffe://south.mesh/isthmus/gateway/gw-1"), "south")
    }

    #[test]
    fn a_workload_of_the_gateways_own_trust_domain_is_accepted() {
        assert_eq!(claim(&[]), Ok(None));
        assert_eq!(
            claim(&["spiffe://south.mesh/ns/shop/sa/cart"]),
            Ok(Some(id("spiffe://south.mesh/ns/shop/sa/cart")))
        );
    }

    #[test]
    fn other_claims_are_refused_with_the_reason() {
        let cases = [
            (
                vec!["spiffe://west.mesh/ns/shop/sa/cart"],
                "south's gateway asserted spiffe://west.mesh/ns/shop/sa/cart outside its trust domain south.mesh",
            ),
            (
                vec!["spiffe://south.mesh/isthmus/gateway/gw-2"],
                "not a workload identity",
            ),
            (vec!["spiffe://south.mesh"], "not a workload identity"),
            (vec!["cart"], "not a SPIFFE ID"),
            (vec!["spiffe://South.mesh/ns/a/sa/b"], "not a SPIFFE ID"),
            (
                vec![
                    "spiffe://south.mesh/ns/shop/sa/cart",
                    "spiffe://south.mesh/ns/shop/sa/admin",
                ],
                "more than one",
            ),
        ];
        for (values, why) in cases {
            let err = claim(&values).expect_err(&format!("{values:?}"));
            assert!(err.contains(why), "{values:?}: {err}");
        }
    }

    #[test]
    fn forwarded_client_cert_lists_the_workload_hop_first() {
        let v = forwarded_client_cert(
            &id("spiffe://east.mesh/isthmus/gateway/gw-e"),
            &id("spiffe://south.mesh/isthmus/gateway/gw-1"),
            &id("spiffe://south.mesh/ns/shop/sa/cart"),
        )
        .expect("value");
        assert_eq!(
            v,
            "By=spiffe://south.mesh/isthmus/gateway/gw-1;URI=spiffe://south.mesh/ns/shop/sa/cart,\
             By=spiffe://east.mesh/isthmus/gateway/gw-e;URI=spiffe://south.mesh/isthmus/gateway/gw-1"
        );
    }
}
