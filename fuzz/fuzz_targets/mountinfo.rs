//! Kernel text read from `/proc` for container processes (mount points and paths the
//! container chose), and the lossless escaping of path bytes in records and logs.
#![no_main]
use driftlock::escape::{escape_bytes, unescape};
use driftlock::kernel::{exec_name::parse_syscall, mountinfo::parse_mountinfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_mountinfo(data);
    let text = escape_bytes(data);
    assert_eq!(
        unescape(&text).ok().as_deref(),
        Some(data),
        "escaping must round-trip"
    );
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = unescape(s);
        let _ = parse_syscall(s);
    }
});
