//! A peering token as an operator pastes it: `PeeringToken::decode`.
//!
//! Asserts: a decoded token re-encodes to a token that decodes to itself, and re-encoding is
//! stable (encode ∘ decode ∘ encode = encode); its redacted description never shows the
//! secret.

#![no_main]

use isthmus_federation::peering::token::PeeringToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(token) = PeeringToken::decode(text) else {
        return;
    };
    let encoded = token.encode().expect("a decoded token encodes");
    let again = PeeringToken::decode(&encoded)
        .unwrap_or_else(|e| panic!("its own encoding is refused: {e}"));
    assert_eq!(again, token, "re-encoding changed the token");
    assert_eq!(
        again.encode().expect("encodes"),
        encoded,
        "encoding is not stable"
    );
    // A secret long enough not to occur by chance in the other fields.
    if token.secret.len() >= 16 {
        assert!(
            !token.describe().contains(&token.secret),
            "describe() shows the secret"
        );
    }
});
