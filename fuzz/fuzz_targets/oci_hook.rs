//! The runtime hook and wrapper: the OCI state on the hook's stdin and the bundle's
//! `config.json`, both written by the container runtime from the pod spec.
//! Input: state bytes, a NUL byte, config bytes.
#![no_main]
use driftlock::runtime::{hook::arm_request, wrapper};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let state = &data[..split];
    let config = data.get(split + 1..).unwrap_or_default().to_vec();
    let _ = arm_request(state, |_| Ok(config.clone()));
    if let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&config) {
        let cfg = wrapper::RuntimeConfig::defaults();
        if wrapper::add_hooks(&mut value, &cfg).is_ok() {
            // Patching is idempotent: a second pass changes nothing.
            assert_eq!(wrapper::add_hooks(&mut value, &cfg), Ok(false));
        }
    }
});
