use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn pk(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

fn arb_net() -> impl Strategy<Value = IpNetwork> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, p)| IpNetwork::new(a.into(), p).unwrap()),
        (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, p)| IpNetwork::new(a.into(), p).unwrap()),
    ]
}

prop_compose! {
    fn arb_peer()(key in 1u8..12, psk in proptest::option::of(1u8..4), ep in proptest::option::of(1u16..4),
                  ips in proptest::collection::vec(arb_net(), 0..4), ka in proptest::option::of(0u64..30)) -> PeerConfig {
        let mut p = PeerConfig::new(pk(key)).allowed_ips(ips);
        p.preshared_key = psk.map(|n| PresharedKey::from_bytes([n; 32]));
        p.endpoint = ep.map(|port| SocketAddr::from(([192, 0, 2, 1], port)));
        p.persistent_keepalive = ka.map(Duration::from_secs);
        p
    }
}

prop_compose! {
    /// A desired state: distinct peers, each allowed IP owned by one peer.
    fn arb_desired()(peers in proptest::collection::vec(arb_peer(), 0..8), port in 1u16..100, mark in 0u32..3) -> DeviceConfig {
        let mut seen_keys = BTreeSet::new();
        let mut seen_ips = BTreeSet::new();
        let mut cfg = DeviceConfig::new().listen_port(port).fwmark(mark).replace_peers();
        for mut p in peers {
            if !seen_keys.insert(p.public_key) { continue; }
            p.allowed_ips = p.allowed_ips.iter().map(|n| normalize(*n)).filter(|n| seen_ips.insert(*n)).collect();
            cfg.peers.push(p);
        }
        cfg
    }
}

fn state_of(cfg: &DeviceConfig) -> Device {
    let mut d = Device::default();
    d.apply(cfg);
    d
}

proptest! {
    /// Applying diff(A, B) to A yields B.
    #[test]
    fn diff_takes_a_to_b(a in arb_desired(), b in arb_desired()) {
        let mut state = state_of(&a);
        let d = b.diff(&state);
        prop_assert!(!d.replace_peers);
        state.apply(&d);
        let mut want = state_of(&b);
        // Endpoints are never unset by a diff: a peer kept from A keeps A's endpoint.
        for p in &mut want.peers {
            if p.endpoint.is_none() {
                p.endpoint = state.peer(&p.public_key).and_then(|q| q.endpoint);
            }
        }
        prop_assert!(state.same_config(&want), "state {:?}\nwant {:?}", state, want);
        prop_assert_eq!(state.listen_port, want.listen_port);
        // And the diff of a state against itself is empty.
        prop_assert!(b.diff(&state).is_empty());
    }
}

#[test]
fn one_changed_peer_of_many_yields_one_peer() {
    let mut cfg = DeviceConfig::new().replace_peers();
    for i in 0..200u32 {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        cfg.peers.push(
            PeerConfig::new(PublicKey::from_bytes(k))
                .allowed_ip(IpNetwork::new([10, 0, (i >> 8) as u8, i as u8].into(), 32).unwrap()),
        );
    }
    let state = state_of(&cfg);
    let mut want = cfg.clone();
    want.peers[77].persistent_keepalive = Some(Duration::from_secs(25));
    let d = want.diff(&state);
    assert_eq!(d.peers.len(), 1);
    assert!(d.peers[0].update_only);
    assert!(d.peers[0].allowed_ips.is_empty());
    assert_eq!(
        d.peers[0].persistent_keepalive,
        Some(Duration::from_secs(25))
    );
}

#[cfg(feature = "serde")]
#[test]
fn deserializes_from_json_with_secrets_redacted() {
    let k = PrivateKey::generate().unwrap();
    let peer = PrivateKey::generate().unwrap().public_key();
    let json = format!(
        r#"{{"privateKey": "{}", "listenPort": 51820, "replacePeers": true,
                "peers": [{{"publicKey": "{peer}", "endpoint": "[fd00::1]:51820",
                            "allowedIps": ["10.0.0.0/24", "fd00::/64"], "persistentKeepalive": 25}}]}}"#,
        &*k.to_base64()
    );
    let cfg: DeviceConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(cfg.private_key.as_ref(), Some(&k));
    assert_eq!(cfg.listen_port, Some(51820));
    assert!(cfg.replace_peers);
    assert_eq!(cfg.peers[0].public_key, peer);
    assert_eq!(
        cfg.peers[0].persistent_keepalive,
        Some(Duration::from_secs(25))
    );
    assert_eq!(cfg.peers[0].allowed_ips.len(), 2);
    assert!(!format!("{cfg:?}").contains(&*k.to_base64()));
    assert!(serde_json::from_str::<DeviceConfig>(r#"{"peers": [{"publicKey": "bad"}]}"#).is_err());
    assert!(serde_json::from_str::<DeviceConfig>(r#"{"unknown": 1}"#).is_err());
}

#[test]
fn validate_rejects_fractional_or_huge_keepalive() {
    let p = PeerConfig::new(pk(1)).persistent_keepalive(Duration::from_millis(1500));
    assert!(DeviceConfig::new().peer(p).validate().is_err());
    let p = PeerConfig::new(pk(1)).persistent_keepalive(Duration::from_secs(70000));
    assert!(DeviceConfig::new().peer(p).validate().is_err());
    let p = PeerConfig::new(pk(1)).persistent_keepalive(Duration::from_secs(25));
    assert!(DeviceConfig::new().peer(p).validate().is_ok());
}
#[test]
fn validate_takes_keepalives_up_to_65535_whole_seconds() {
    let ok = |ka: Duration| {
        DeviceConfig::new()
            .peer(PeerConfig::new(pk(1)).persistent_keepalive(ka))
            .validate()
            .is_ok()
    };
    assert!(ok(Duration::ZERO));
    assert!(ok(Duration::from_secs(65535)));
    assert!(!ok(Duration::from_secs(65536)));
    assert!(!ok(Duration::new(65535, 1)));
    assert!(!ok(Duration::new(1, 999_999_999)));
}

/// A removal cannot also change the peer: neither update-only nor
/// allowed IPs go with it, each refused on its own.
#[test]
fn validate_refuses_a_removal_that_also_changes_the_peer() {
    let check = |p: PeerConfig| DeviceConfig::new().peer(p).validate();
    assert!(check(PeerConfig::removal(pk(1))).is_ok());
    assert!(check(PeerConfig::new(pk(1)).update_only()).is_ok());
    let mut both = PeerConfig::removal(pk(1));
    both.update_only = true;
    let e = check(both).unwrap_err();
    assert!(e.to_string().contains("removed and changed"), "{e}");
    let with_ips = PeerConfig::removal(pk(1)).allowed_ip("10.0.0.0/24".parse().unwrap());
    assert!(check(with_ips).is_err());
    // Only the removal itself is checked, not its neighbours.
    assert!(DeviceConfig::new()
        .peer(PeerConfig::removal(pk(1)))
        .peer(
            PeerConfig::new(pk(2))
                .update_only()
                .allowed_ip("10.0.0.0/24".parse().unwrap())
        )
        .validate()
        .is_ok());
}

include!("../../tests/cases/apply.rs");

/// The model against WireGuard's documented semantics, case by case
/// (tests/cases/apply.rs, written from the kernel's and wireguard-go's
/// sources; the root test tests/semantics.rs checks the same cases on
/// real WireGuard). `diff_takes_a_to_b` uses `apply` on both sides, so
/// this is where a wrong model shows.
#[test]
fn apply_follows_wireguard_case_by_case() {
    for c in apply_cases() {
        let mut d = Device::default();
        d.apply(&c.start);
        d.apply(&c.change);
        assert_eq!(Seen::of(&d), c.want, "{}", c.name);
    }
}

/// `apply` leaves what is not configuration alone and keeps the
/// device's order of peers (new ones last).
#[test]
fn apply_keeps_counters_order_and_port_zero() {
    let mut d = Device::default();
    d.apply(&case_start(vec![
        case_peer_cfg(2, &["10.0.2.0/24"]),
        case_peer_cfg(3, &["10.0.3.0/24"]),
    ]));
    d.peers[0].rx_bytes = 5;
    d.peers[0].last_handshake = Some(SystemTime::UNIX_EPOCH);
    d.apply(
        &DeviceConfig::new()
            .listen_port(0)
            .peer(case_peer_cfg(4, &[]))
            .peer(case_peer_cfg(2, &["10.1.2.0/24"])),
    );
    assert_eq!(d.listen_port, 0);
    let keys: Vec<_> = d.peers.iter().map(|p| p.public_key).collect();
    assert_eq!(keys, vec![case_peer(2), case_peer(3), case_peer(4)]);
    assert_eq!(d.peers[0].rx_bytes, 5);
    assert_eq!(d.peers[0].last_handshake, Some(SystemTime::UNIX_EPOCH));
    assert_eq!(d.private_key.as_ref(), Some(&case_key(1)));
    d.apply(&DeviceConfig::new().listen_port(51820));
    assert_eq!(d.listen_port, 51820);
}

fn configured() -> Device {
    let mut d = Device::default();
    d.apply(&case_start(vec![
        case_peer_cfg(2, &["10.0.2.0/24", "fd00:2::/64"])
            .preshared_key(PresharedKey::from_bytes([7; 32]))
            .endpoint("127.0.0.1:40002".parse().unwrap())
            .persistent_keepalive(Duration::from_secs(25)),
        case_peer_cfg(3, &["10.0.3.0/24"]),
    ]));
    d
}

/// What the agent's periodic verify relies on to notice a change made
/// behind its back: every configured field counts, on either side;
/// order, counters, handshakes, the listen port and whether the private
/// key is visible do not.
#[test]
fn same_config_sees_each_configured_field_and_nothing_else() {
    let base = configured();
    assert!(base.same_config(&base.clone()));
    let mut same = base.clone();
    same.peers.reverse();
    same.peers[1].allowed_ips.reverse();
    same.peers[1].allowed_ips[1] = "10.0.2.9/24".parse().unwrap();
    same.peers[0].rx_bytes = 7;
    same.peers[0].tx_bytes = 9;
    same.peers[0].last_handshake = Some(SystemTime::UNIX_EPOCH);
    same.listen_port = 4242;
    same.private_key = None;
    assert!(base.same_config(&same), "{same:?}");
    assert!(same.same_config(&base));

    type Change = fn(&mut Device);
    let changes: [(&str, Change); 14] = [
        ("device key", |d| d.public_key = Some(case_peer(9))),
        ("no device key", |d| d.public_key = None),
        ("fwmark", |d| d.fwmark = 0x52),
        ("a peer's key", |d| d.peers[1].public_key = case_peer(8)),
        ("a peer less", |d| {
            d.peers.pop();
        }),
        ("a peer more", |d| d.peers.push(Peer::new(case_peer(7)))),
        ("preshared key", |d| {
            d.peers[0].preshared_key = Some(PresharedKey::from_bytes([6; 32]))
        }),
        ("no preshared key", |d| d.peers[0].preshared_key = None),
        ("endpoint", |d| {
            d.peers[0].endpoint = Some("127.0.0.1:40009".parse().unwrap())
        }),
        ("no endpoint", |d| d.peers[0].endpoint = None),
        ("an allowed IP more", |d| {
            d.peers[1].allowed_ips.push("10.9.0.0/16".parse().unwrap())
        }),
        ("an allowed IP less", |d| {
            d.peers[0].allowed_ips.pop();
        }),
        ("keepalive", |d| {
            d.peers[0].persistent_keepalive = Some(Duration::from_secs(26))
        }),
        ("no keepalive", |d| d.peers[0].persistent_keepalive = None),
    ];
    for (what, change) in changes {
        let mut other = base.clone();
        change(&mut other);
        assert!(!base.same_config(&other), "{what} not seen");
        assert!(!other.same_config(&base), "{what} not seen (reversed)");
    }
}
