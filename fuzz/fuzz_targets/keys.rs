//! Key parsing: anything accepted must round-trip exactly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wg_netns::{PresharedKey, PrivateKey, PublicKey};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(k) = PublicKey::from_base64(s) {
        assert_eq!(k.to_base64(), s);
    }
    if let Ok(k) = PrivateKey::from_base64(s) {
        assert_eq!(&*k.to_base64(), s);
        let _ = k.public_key();
    }
    if let Ok(k) = PresharedKey::from_base64(s) {
        assert_eq!(&*k.to_base64(), s);
    }
});
