//! The daemon's socket protocol: any line a local client sends.
#![no_main]
use driftlock::ipc::{encode_request, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    if let Ok(request) = parse_request(line) {
        // What the daemon accepted, the client encodes back to the same request.
        let again = parse_request(&encode_request(&request));
        assert_eq!(again.ok(), Some(request), "request must round-trip");
    }
});
