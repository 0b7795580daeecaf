//! A gateway's bootstrap file (JSON, written by `isthmus gateway bootstrap`), read as
//! `gateway::run::start` and `ControlClient::bootstrap` read it: `BootstrapFile` from JSON, its
//! trust domain, its CA bundle PEM (`TrustBundle::from_pem`) and the SPIFFE IDs built from its
//! names.
//!
//! Asserts: an accepted file serializes back to itself; an accepted bundle's PEM and SPIFFE
//! JSON forms read back to the same bundle; the gateway's and the federation's IDs print as
//! strings that parse back to the same IDs.

#![no_main]

use isthmus_federation::gwapi::BootstrapFile;
use isthmus_federation::identity::{SpiffeId, TrustBundle, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = serde_json::from_slice::<BootstrapFile>(data) else {
        return;
    };
    let json = serde_json::to_string(&file).expect("a bootstrap file serializes");
    let again: BootstrapFile = serde_json::from_str(&json).expect("its own JSON reads");
    assert_eq!(again, file);

    let Ok(td) = file.trust_domain.parse::<TrustDomain>() else {
        return;
    };
    assert_eq!(td.as_str(), file.trust_domain);
    if let Ok(bundle) = TrustBundle::from_pem(td.clone(), 0, &file.ca_bundle_pem) {
        let pem = bundle.to_pem();
        let again = TrustBundle::from_pem(td.clone(), 0, &pem)
            .unwrap_or_else(|e| panic!("its own PEM is refused: {e}"));
        assert_eq!(again, bundle, "PEM round trip changed the bundle");
        let spiffe = bundle.to_spiffe_json();
        let again = TrustBundle::from_spiffe_json(&td, &spiffe)
            .unwrap_or_else(|e| panic!("its own SPIFFE JSON is refused: {e}"));
        assert_eq!(again, bundle, "SPIFFE JSON round trip changed the bundle");
    }
    for id in [
        SpiffeId::gateway(&td, &file.gateway),
        SpiffeId::federation(&td, &file.cluster),
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(SpiffeId::parse(&id.to_string()).ok(), Some(id));
    }
});
