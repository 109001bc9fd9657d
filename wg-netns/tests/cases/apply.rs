// What a WireGuard configuration change does, case by case: the oracle for
// `Device::apply`, the pure model the node agent plans its changes with.
//
// Every expectation is written from WireGuard's own sources, not from the
// model:
// - kernel, drivers/net/wireguard/netlink.c `wg_set_device`: a new private
//   key removes the one peer whose public key it derives
//   (`wg_pubkey_hashtable_lookup` + `wg_peer_remove`), no other; the same key
//   again is skipped; `WGDEVICE_F_REPLACE_PEERS` removes every peer first.
//   `set_peer`: a peer with the device's own public key is silently ignored;
//   `WGPEER_F_UPDATE_ONLY` (and `REMOVE_ME`) on an absent peer does nothing;
//   `WGPEER_F_REPLACE_ALLOWEDIPS` drops the peer's allowed IPs before adding;
//   an all-zero preshared key clears it, a keepalive of 0 turns it off.
//   allowedips.c: a prefix is stored without host bits, and inserting one
//   that another peer holds moves it.
// - wireguard-go, device/device.go `SetPrivateKey` ("remove peers with
//   matching public keys"), device/uapi.go `handlePublicKeyLine` (a peer with
//   the device's key becomes a dummy), `handlePeerLine` (`update_only` on a
//   created peer removes it again and makes it a dummy; a dummy's allowed
//   IPs are ignored), device/allowedips.go `Insert` (moves, masks host bits).
//
// Included (`include!`) by the model's unit tests (src/device/tests.rs, which
// cargo-mutants runs) and by the root test tests/semantics.rs, which checks
// every case on real WireGuard: wireguard-go on the host (tier b), kernel
// WireGuard in the qemu guest (tier c, scripts/kernel-tests). The includer
// imports BTreeMap, BTreeSet, Device, DeviceConfig, Duration, IpNetwork,
// PeerConfig, PresharedKey, PrivateKey, PublicKey and SocketAddr.

/// A test private key: any 32 bytes are one (clamped when used), so its
/// public key is a real curve point that both implementations accept.
fn case_key(n: u8) -> PrivateKey {
    PrivateKey::from_bytes([n; 32])
}

/// The public key of [`case_key`]`(n)`.
fn case_peer(n: u8) -> PublicKey {
    case_key(n).public_key()
}

fn case_net(s: &str) -> IpNetwork {
    s.parse().expect("network literal")
}

/// A peer's configuration as WireGuard reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenPeer {
    preshared_key: Option<[u8; 32]>,
    endpoint: Option<SocketAddr>,
    /// As reported: a set, since neither implementation keeps an order, but
    /// not normalized here (WireGuard stores prefixes without host bits, and
    /// the model must too).
    allowed_ips: BTreeSet<IpNetwork>,
    keepalive: Option<Duration>,
}

impl SeenPeer {
    fn new() -> SeenPeer {
        SeenPeer {
            preshared_key: None,
            endpoint: None,
            allowed_ips: BTreeSet::new(),
            keepalive: None,
        }
    }
    fn ips(mut self, nets: &[&str]) -> SeenPeer {
        self.allowed_ips = nets.iter().map(|n| case_net(n)).collect();
        self
    }
    fn psk(mut self, b: u8) -> SeenPeer {
        self.preshared_key = Some([b; 32]);
        self
    }
    fn endpoint(mut self, e: &str) -> SeenPeer {
        self.endpoint = Some(e.parse().expect("endpoint literal"));
        self
    }
    fn keepalive(mut self, secs: u64) -> SeenPeer {
        self.keepalive = Some(Duration::from_secs(secs));
        self
    }
}

/// The configuration part of a device as WireGuard reports it (the listen
/// port is left out: 0 makes the implementation pick one).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    public_key: Option<PublicKey>,
    fwmark: u32,
    peers: BTreeMap<PublicKey, SeenPeer>,
}

impl Seen {
    fn of(d: &Device) -> Seen {
        Seen {
            public_key: d.public_key,
            fwmark: d.fwmark,
            peers: d
                .peers
                .iter()
                .map(|p| {
                    (
                        p.public_key,
                        SeenPeer {
                            preshared_key: p.preshared_key.as_ref().map(|k| *k.as_bytes()),
                            endpoint: p.endpoint,
                            allowed_ips: p.allowed_ips.iter().copied().collect(),
                            keepalive: p.persistent_keepalive,
                        },
                    )
                })
                .collect(),
        }
    }

    /// A device with key `case_key(own)` (or none), `fwmark`, and `peers`.
    fn want(own: Option<u8>, fwmark: u32, peers: Vec<(u8, SeenPeer)>) -> Seen {
        Seen {
            public_key: own.map(case_peer),
            fwmark,
            peers: peers.into_iter().map(|(n, p)| (case_peer(n), p)).collect(),
        }
    }
}

/// One case: `start` written to a fresh device, then `change`; `want` is
/// what WireGuard then reports.
struct ApplyCase {
    name: &'static str,
    start: DeviceConfig,
    change: DeviceConfig,
    want: Seen,
}

/// A device with key 1, fwmark 0x51 and `peers`.
fn case_start(peers: Vec<PeerConfig>) -> DeviceConfig {
    let mut cfg = DeviceConfig::new().private_key(case_key(1)).fwmark(0x51);
    cfg.peers = peers;
    cfg
}

fn case_peer_cfg(n: u8, nets: &[&str]) -> PeerConfig {
    PeerConfig::new(case_peer(n)).allowed_ips(nets.iter().map(|s| case_net(s)))
}

fn apply_cases() -> Vec<ApplyCase> {
    vec![
        ApplyCase {
            name: "a new private key removes the one peer with its public key, no other",
            start: case_start(vec![
                case_peer_cfg(2, &["10.0.2.0/24"]),
                case_peer_cfg(3, &["10.0.3.0/24"]),
                case_peer_cfg(4, &["10.0.4.0/24"]),
            ]),
            change: DeviceConfig::new().private_key(case_key(2)),
            want: Seen::want(
                Some(2),
                0x51,
                vec![
                    (3, SeenPeer::new().ips(&["10.0.3.0/24"])),
                    (4, SeenPeer::new().ips(&["10.0.4.0/24"])),
                ],
            ),
        },
        ApplyCase {
            name: "a new private key whose public key no peer has keeps every peer",
            start: case_start(vec![case_peer_cfg(2, &["10.0.2.0/24"])]),
            change: DeviceConfig::new().private_key(case_key(9)),
            want: Seen::want(
                Some(9),
                0x51,
                vec![(2, SeenPeer::new().ips(&["10.0.2.0/24"]))],
            ),
        },
        ApplyCase {
            name: "the same private key again changes nothing",
            start: case_start(vec![case_peer_cfg(2, &["10.0.2.0/24"])]),
            change: DeviceConfig::new().private_key(case_key(1)),
            want: Seen::want(
                Some(1),
                0x51,
                vec![(2, SeenPeer::new().ips(&["10.0.2.0/24"]))],
            ),
        },
        ApplyCase {
            name: "an all-zero private key removes the key and keeps the peers",
            start: case_start(vec![case_peer_cfg(2, &["10.0.2.0/24"])]),
            change: DeviceConfig::new().private_key(PrivateKey::from_bytes([0; 32])),
            want: Seen::want(None, 0x51, vec![(2, SeenPeer::new().ips(&["10.0.2.0/24"]))]),
        },
        ApplyCase {
            name: "a peer with the device's own key is ignored, allowed IPs and all",
            start: case_start(vec![case_peer_cfg(2, &["10.0.2.0/24"])]),
            change: DeviceConfig::new().peer(
                case_peer_cfg(1, &["10.0.2.0/24", "10.0.1.0/24"])
                    .persistent_keepalive(Duration::from_secs(25)),
            ),
            want: Seen::want(
                Some(1),
                0x51,
                vec![(2, SeenPeer::new().ips(&["10.0.2.0/24"]))],
            ),
        },
        ApplyCase {
            name: "update-only never creates a peer, nor takes an allowed IP for it",
            start: case_start(vec![case_peer_cfg(2, &["10.0.2.0/24"])]),
            change: DeviceConfig::new()
                .peer(case_peer_cfg(3, &["10.0.3.0/24", "10.0.2.0/24"]).update_only())
                .peer(
                    PeerConfig::new(case_peer(2))
                        .update_only()
                        .persistent_keepalive(Duration::from_secs(25)),
                ),
            want: Seen::want(
                Some(1),
                0x51,
                vec![(2, SeenPeer::new().ips(&["10.0.2.0/24"]).keepalive(25))],
            ),
        },
        ApplyCase {
            name: "an allowed IP moves to the peer that claims it last",
            start: case_start(vec![
                case_peer_cfg(2, &["10.0.2.0/24", "10.9.0.0/16"]),
                case_peer_cfg(3, &["10.0.3.0/24"]),
            ]),
            change: DeviceConfig::new().peer(case_peer_cfg(3, &["10.9.0.0/16"])),
            want: Seen::want(
                Some(1),
                0x51,
                vec![
                    (2, SeenPeer::new().ips(&["10.0.2.0/24"])),
                    (3, SeenPeer::new().ips(&["10.0.3.0/24", "10.9.0.0/16"])),
                ],
            ),
        },
        ApplyCase {
            name: "a new peer takes an allowed IP from an existing one",
            start: case_start(vec![case_peer_cfg(2, &["10.0.2.0/24", "fd00:2::/64"])]),
            change: DeviceConfig::new().peer(case_peer_cfg(5, &["fd00:2::/64"])),
            want: Seen::want(
                Some(1),
                0x51,
                vec![
                    (2, SeenPeer::new().ips(&["10.0.2.0/24"])),
                    (5, SeenPeer::new().ips(&["fd00:2::/64"])),
                ],
            ),
        },
        ApplyCase {
            name: "allowed IPs are stored without host bits, and move as such",
            start: case_start(vec![case_peer_cfg(2, &["10.0.2.7/24", "fd00:2::1/64"])]),
            change: DeviceConfig::new().peer(case_peer_cfg(3, &["10.0.2.9/24"])),
            want: Seen::want(
                Some(1),
                0x51,
                vec![
                    (2, SeenPeer::new().ips(&["fd00:2::/64"])),
                    (3, SeenPeer::new().ips(&["10.0.2.0/24"])),
                ],
            ),
        },
        ApplyCase {
            name: "allowed IPs add up unless replaced",
            start: case_start(vec![
                case_peer_cfg(2, &["10.0.2.0/24", "10.1.2.0/24"]),
                case_peer_cfg(3, &["10.0.3.0/24", "10.1.3.0/24"]),
            ]),
            change: DeviceConfig::new()
                .peer(case_peer_cfg(2, &["10.2.2.0/24"]))
                .peer(case_peer_cfg(3, &["10.2.3.0/24"]).replace_allowed_ips()),
            want: Seen::want(
                Some(1),
                0x51,
                vec![
                    (
                        2,
                        SeenPeer::new().ips(&["10.0.2.0/24", "10.1.2.0/24", "10.2.2.0/24"]),
                    ),
                    (3, SeenPeer::new().ips(&["10.2.3.0/24"])),
                ],
            ),
        },
        ApplyCase {
            name: "remove removes that peer; removing an absent one is no error",
            start: case_start(vec![
                case_peer_cfg(2, &["10.0.2.0/24"]),
                case_peer_cfg(3, &["10.0.3.0/24"]),
                case_peer_cfg(4, &["10.0.4.0/24"]),
            ]),
            change: DeviceConfig::new()
                .peer(PeerConfig::removal(case_peer(3)))
                .peer(PeerConfig::removal(case_peer(8))),
            want: Seen::want(
                Some(1),
                0x51,
                vec![
                    (2, SeenPeer::new().ips(&["10.0.2.0/24"])),
                    (4, SeenPeer::new().ips(&["10.0.4.0/24"])),
                ],
            ),
        },
        ApplyCase {
            name: "replace-peers removes every peer, then adds the listed ones afresh",
            start: case_start(vec![
                case_peer_cfg(2, &["10.0.2.0/24"]).persistent_keepalive(Duration::from_secs(25)),
                case_peer_cfg(3, &["10.0.3.0/24"]),
            ]),
            change: DeviceConfig::new()
                .fwmark(0)
                .replace_peers()
                .peer(case_peer_cfg(2, &["10.1.2.0/24"]))
                .peer(case_peer_cfg(6, &["10.0.3.0/24"])),
            want: Seen::want(
                Some(1),
                0,
                vec![
                    (2, SeenPeer::new().ips(&["10.1.2.0/24"])),
                    (6, SeenPeer::new().ips(&["10.0.3.0/24"])),
                ],
            ),
        },
        ApplyCase {
            name: "zero turns a preshared key and a keepalive off; an endpoint not given stays",
            start: case_start(vec![
                case_peer_cfg(2, &["10.0.2.0/24"])
                    .preshared_key(PresharedKey::from_bytes([7; 32]))
                    .endpoint("127.0.0.1:40002".parse().expect("endpoint"))
                    .persistent_keepalive(Duration::from_secs(25)),
                case_peer_cfg(3, &["10.0.3.0/24"])
                    .endpoint("127.0.0.1:40003".parse().expect("endpoint")),
            ]),
            change: DeviceConfig::new()
                .peer(
                    PeerConfig::new(case_peer(2))
                        .preshared_key(PresharedKey::from_bytes([0; 32]))
                        .persistent_keepalive(Duration::ZERO),
                )
                .peer(
                    PeerConfig::new(case_peer(3))
                        .preshared_key(PresharedKey::from_bytes([8; 32]))
                        .endpoint("[::1]:40033".parse().expect("endpoint"))
                        .persistent_keepalive(Duration::from_secs(65535)),
                ),
            want: Seen::want(
                Some(1),
                0x51,
                vec![
                    (
                        2,
                        SeenPeer::new()
                            .ips(&["10.0.2.0/24"])
                            .endpoint("127.0.0.1:40002"),
                    ),
                    (
                        3,
                        SeenPeer::new()
                            .ips(&["10.0.3.0/24"])
                            .psk(8)
                            .endpoint("[::1]:40033")
                            .keepalive(65535),
                    ),
                ],
            ),
        },
    ]
}
