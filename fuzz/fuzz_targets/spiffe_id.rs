//! SPIFFE IDs and trust domains as they arrive in peers' certificates (URI SANs), bundles and
//! config: `SpiffeId::parse` and `TrustDomain::new`.
//!
//! Asserts: an accepted ID prints exactly as it was written (parsing is strict, so the printed
//! form is the input), parses back to itself, rebuilds from its trust domain and path, and its
//! kind's names are the path's segments; an accepted trust domain is the input and its own ID
//! (`spiffe://<td>`) parses with an empty path.

#![no_main]

use isthmus_federation::identity::{IdKind, SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(text) {
        let shown = id.to_string();
        assert_eq!(shown, text, "an accepted ID prints differently");
        assert_eq!(SpiffeId::parse(&shown).ok().as_ref(), Some(&id));
        let rebuilt = SpiffeId::new(id.trust_domain(), id.path())
            .unwrap_or_else(|e| panic!("{id}: its own parts are refused: {e}"));
        assert_eq!(rebuilt, id);
        let segments: Vec<&str> = id.path().split('/').skip(1).collect();
        match id.kind() {
            IdKind::Workload {
                namespace,
                service_account,
            } => assert_eq!(segments, ["ns", &namespace, "sa", &service_account]),
            IdKind::Gateway { name } => {
                assert_eq!(segments, ["isthmus", "gateway", &name]);
                assert_eq!(
                    SpiffeId::gateway(id.trust_domain(), &name).ok(),
                    Some(id.clone())
                );
            }
            IdKind::Federation { name } => {
                assert_eq!(segments, ["isthmus", "federation", &name]);
                assert_eq!(
                    SpiffeId::federation(id.trust_domain(), &name).ok(),
                    Some(id.clone())
                );
            }
            IdKind::Other => {}
        }
    }
    if let Ok(td) = TrustDomain::new(text) {
        assert_eq!(td.as_str(), text);
        assert_eq!(text.parse::<TrustDomain>().ok().as_ref(), Some(&td));
        let own = SpiffeId::parse(&td.id_string())
            .unwrap_or_else(|e| panic!("{td}: its own ID is refused: {e}"));
        assert_eq!((own.trust_domain(), own.path()), (&td, ""));
    }
});
