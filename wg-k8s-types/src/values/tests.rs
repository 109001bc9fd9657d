use super::*;
use proptest::prelude::*;

#[test]
fn cidrs() {
    for ok in [
        "10.0.0.0/8",
        "10.244.1.0/26",
        "fd00:10::/64",
        "0.0.0.0/0",
        "::/0",
        "10.0.0.1/32",
    ] {
        assert_eq!(
            ok.parse::<CidrString>()
                .unwrap()
                .parse()
                .unwrap()
                .to_string(),
            ok
        );
    }
    for bad in [
        "10.0.0.1/8",
        "10.0.0.0",
        "10.0.0.0/33",
        "fd00::/129",
        "FD00::/8",
        "fd00:0::/64",
        "010.0.0.0/8",
        "10.0.0.0/08",
        "",
        "x/8",
        "10.0.0.0/8 ",
    ] {
        assert!(bad.parse::<CidrString>().is_err(), "{bad}");
    }
    let n: IpNetwork = "10.1.2.3/16".parse().unwrap();
    assert_eq!(CidrString::from(n).as_str(), "10.1.0.0/16");
}

#[test]
fn addresses() {
    for ok in ["10.244.1.5/32", "10.13.13.2/24", "fd00:10::5/128"] {
        assert!(ok.parse::<AddressString>().is_ok(), "{ok}");
    }
    for bad in ["10.244.1.5", "10.244.1.5/33", "FD00::1/128", "nope/1"] {
        assert!(bad.parse::<AddressString>().is_err(), "{bad}");
    }
}

#[test]
fn keys() {
    // `wg genkey | wg pubkey` output.
    let k = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    let s: PublicKeyString = k.parse().unwrap();
    assert_eq!(s.parse().unwrap().to_base64(), k);
    assert_eq!(s.short(), "HIgo9xNz");
    let re = regex_lite(KEY_PATTERN);
    assert!(re(k));
    for bad in [
        "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykx=", // trailing bits not zero
        "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8yk=",  // 43 characters
        "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw",  // no padding
        "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8yk-=", // URL alphabet
    ] {
        assert!(bad.parse::<PublicKeyString>().is_err(), "{bad}");
        assert!(!re(bad), "{bad}");
    }
}

/// The key pattern, by hand (no regex engine among the dependencies):
/// 42 base64 characters, one of the 16 whose low 2 bits are zero, `=`.
fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
    assert_eq!(pattern, KEY_PATTERN);
    |s: &str| {
        let b = s.as_bytes();
        b.len() == 44
            && b[..42]
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
            && b"AEIMQUYcgkosw480".contains(&b[42])
            && b[43] == b'='
    }
}

proptest! {
    /// The pattern accepts exactly the canonical encodings of 32 bytes.
    #[test]
    fn key_pattern_is_canonical_base64(bytes in any::<[u8; 32]>()) {
        let k = PublicKey::from_bytes(bytes).to_base64();
        prop_assert!(regex_lite(KEY_PATTERN)(&k));
        prop_assert!(k.parse::<PublicKeyString>().is_ok());
    }
}

#[test]
fn endpoints() {
    for ok in [
        "10.1.2.3:51820",
        "[fd00::1]:51820",
        "wg.example.com:51820",
        "node-1:1",
        "host:65535",
    ] {
        assert!(ok.parse::<EndpointString>().is_ok(), "{ok}");
    }
    for bad in [
        "10.1.2.3",
        "10.1.2.3:0",
        "10.1.2.3:65536",
        "10.1.2.300:51820",
        "010.1.2.3:51820",
        "fd00::1:51820",
        "[10.1.2.3]:51820",
        "[fe80::1%2]:51820",
        "-host:1",
        "host_name:1",
        ":51820",
        "host:",
        "host:+1",
    ] {
        assert!(bad.parse::<EndpointString>().is_err(), "{bad}");
    }
}

#[test]
fn names() {
    assert!("pods".parse::<NetworkName>().is_ok());
    assert!("a.b".parse::<NetworkName>().is_err());
    assert!("A".parse::<NetworkName>().is_err());
    assert!("a.b-c.d".parse::<ObjectName>().is_ok());
    assert!("-a".parse::<ObjectName>().is_err());
    for good in ["wg0", "w", "0", "wg-pods", "-wg", "fifteen-chars-x"] {
        assert!(good.parse::<InterfaceName>().is_ok(), "{good:?}");
    }
    for bad in [
        "",
        ".",
        "..",
        "wg 0",
        "wg/0",
        "eth0:1",
        "sixteen-chars-xx",
        "wé",
        // What the agent cannot use: its records and keys are named
        // with letters, digits, '-' and '_' only, and the attachment
        // POD-INTERFACE is a DNS subdomain.
        "wg.0",
        "wg+0",
        "WG0",
        "wg_0",
        "wg-",
        "-",
    ] {
        assert!(bad.parse::<InterfaceName>().is_err(), "{bad:?}");
    }
    assert_eq!(InterfaceName::default().as_str(), "wg0");
}

#[test]
fn field_error_paths() {
    let e = FieldError::new("", "bad")
        .within("allowedIPs[2]")
        .within("spec");
    assert_eq!(e.to_string(), "spec.allowedIPs[2]: bad");
}
