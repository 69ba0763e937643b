//! A baseline file read back from the store (which an attacker with disk access may edit).
#![no_main]
use driftlock::baseline::format::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(baseline) = decode(data) {
        let again = decode(&encode(&baseline)).expect("an accepted baseline re-encodes");
        assert_eq!(again.entries(), baseline.entries());
    }
});
