//! The engine daemon's control protocol: requests (what the daemon parses
//! from any root client) and replies (what the client parses).
#![no_main]
use libfuzzer_sys::fuzz_target;
use wg_netns::engine::proto::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        // What parses must encode again and read back the same.
        if let Ok(r) = Request::parse(s) {
            if let Ok(text) = r.encode() {
                assert_eq!(Request::parse(&text).ok(), Some(r));
            }
        }
        let _ = Reply::parse(s);
    }
});
