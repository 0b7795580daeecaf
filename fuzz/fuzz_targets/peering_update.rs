//! Catalog updates from a peer federation, as the peering session receives them: protobuf bytes
//! decoded to `proto::CatalogUpdate`, then checked part by part by a `Reassembly` (as
//! `peering/session.rs` does) from peer `west` (trust domain `west.mesh`). The input is a
//! sequence of length-delimited messages.
//!
//! Asserts: `validate` and a `Reassembly` given the same single message agree; an accepted
//! update keeps the version, epoch and every upsert and removal it carried; split into parts
//! (as a sender splits a large one) and reassembled, it is accepted as the same update.

#![no_main]

use isthmus_federation::identity::TrustDomain;
use isthmus_federation::model::ClusterName;
use isthmus_federation::peering::update::{Reassembly, split, validate};
use isthmus_federation::proto;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let peer = ClusterName::new("west").expect("cluster name");
    let td: TrustDomain = "west.mesh".parse().expect("trust domain");
    let mut buf = data;
    let mut session = Reassembly::default();
    for i in 0..8 {
        let Ok(update) = proto::CatalogUpdate::decode_length_delimited(&mut buf) else {
            return;
        };
        // Every message goes through the session's reassembly; it must never panic.
        let _ = session.push(&update, &peer, &td);
        if i > 0 || update.more {
            continue;
        }
        let checked = validate(&update, &peer, &td);
        let alone = Reassembly::default().push(&update, &peer, &td);
        match (&checked, &alone) {
            (Ok(a), Ok(Some(b))) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("validate and Reassembly disagree: {checked:?} vs {alone:?}"),
        }
        let Ok(checked) = checked else {
            continue;
        };
        assert_eq!(checked.version, update.version);
        assert_eq!(checked.epoch, update.epoch);
        assert_eq!(checked.snapshot, update.snapshot);
        assert_eq!(checked.upserts.len(), update.upserts.len());
        assert_eq!(checked.removals.len(), update.removals.len());
        let parts = split(update.clone());
        let mut again = Reassembly::default();
        let mut result = None;
        for (n, part) in parts.iter().enumerate() {
            let got = again
                .push(part, &peer, &td)
                .unwrap_or_else(|e| panic!("part {n} of an accepted update refused: {e}"));
            assert_eq!(
                got.is_some(),
                n + 1 == parts.len(),
                "completed early or never"
            );
            result = got;
        }
        assert_eq!(result.as_ref(), Some(&checked), "reassembled differently");
    }
});
