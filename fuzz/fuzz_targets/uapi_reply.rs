//! Userspace WireGuard UAPI `get` replies.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        wg_netns::fuzzing::parse_uapi_get(s);
    }
});
