//! The federation config file (YAML): `FederationConfig::from_yaml`, which parses and validates.
//!
//! Asserts: an accepted config, serialized (as JSON, which is YAML) and read again, is the same
//! config, and is accepted again (what `config_dump` shows can be loaded back).

#![no_main]

use isthmus_federation::config::FederationConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = FederationConfig::from_yaml("fuzz.yaml", text) else {
        return;
    };
    let json = serde_json::to_string(&cfg).expect("a config serializes");
    let again = FederationConfig::from_yaml("dump.yaml", &json)
        .unwrap_or_else(|e| panic!("its own dump is refused: {e}\n{json}"));
    assert_eq!(again, cfg, "the dump reads as another config");
});
