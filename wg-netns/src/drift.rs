//! Differences between an interface and its specification, each named.
//!
//! One rule decides "the same": a device drifts exactly where
//! [`DeviceConfig::diff`] would send a change, so [`crate::Birthplace::verify`]
//! reports what [`crate::Birthplace::ensure`] would repair, no more, no less.
//! No variant carries key material: a differing private or preshared key is
//! named, never shown.
//!
//! ```
//! use wg_netns::{Device, DeviceConfig, Drift, PeerConfig, PrivateKey};
//! let peer = PrivateKey::generate()?.public_key();
//! let want = DeviceConfig::new().listen_port(51820).replace_peers().peer(PeerConfig::new(peer));
//! let drift = Drift::of_device(&want, &Device::default());
//! assert_eq!(drift.len(), 2); // the port, and the missing peer
//! assert!(drift.iter().any(|d| matches!(d, Drift::PeerMissing { .. })));
//! # Ok::<(), wg_netns::Error>(())
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::device::{Device, DeviceConfig};
use crate::ifname::IfName;
use crate::key::PublicKey;

/// One difference between what is and what was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Drift {
    /// The interface does not exist (or its device does not answer).
    Missing {
        /// The interface's name.
        interface: IfName,
    },
    /// The private key is not the configured one (values never shown).
    PrivateKey,
    /// The listen port differs.
    ListenPort {
        /// On the device.
        have: u16,
        /// Configured.
        want: u16,
    },
    /// The firewall mark differs.
    Fwmark {
        /// On the device.
        have: u32,
        /// Configured.
        want: u32,
    },
    /// A configured peer is absent.
    PeerMissing {
        /// The peer.
        peer: PublicKey,
    },
    /// The device has a peer the configuration does not list.
    PeerUnexpected {
        /// The peer.
        peer: PublicKey,
    },
    /// A peer's allowed IPs differ (as sets, after normalization).
    PeerAllowedIps {
        /// The peer.
        peer: PublicKey,
        /// On the device.
        have: Vec<IpNetwork>,
        /// Configured.
        want: Vec<IpNetwork>,
    },
    /// A peer's persistent keepalive differs.
    PeerKeepalive {
        /// The peer.
        peer: PublicKey,
        /// On the device.
        have: Option<Duration>,
        /// Configured.
        want: Option<Duration>,
    },
    /// A peer's preshared key differs (values never shown).
    PeerPresharedKey {
        /// The peer.
        peer: PublicKey,
    },
    /// A peer's endpoint differs from the configured one.
    PeerEndpoint {
        /// The peer.
        peer: PublicKey,
        /// On the device.
        have: Option<SocketAddr>,
        /// Configured.
        want: SocketAddr,
    },
    /// A configured address is missing from the interface.
    AddressMissing {
        /// The address.
        address: IpNetwork,
    },
    /// The interface has an address the specification does not list
    /// (link-local IPv6 addresses are not counted).
    AddressUnexpected {
        /// The address.
        address: IpNetwork,
    },
    /// A configured route through the interface is missing.
    RouteMissing {
        /// Its destination.
        destination: IpNetwork,
        /// Its table.
        table: u32,
    },
    /// The MTU differs.
    Mtu {
        /// On the interface.
        have: u32,
        /// Configured.
        want: u32,
    },
    /// The interface is down.
    Down,
}

fn nets(v: &[IpNetwork]) -> String {
    v.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Missing { interface } => write!(f, "interface {interface} is missing"),
            Drift::PrivateKey => f.write_str("the interface's key is not the configured one"),
            Drift::ListenPort { have, want } => {
                write!(f, "listen port is {have}, configured {want}")
            }
            Drift::Fwmark { have, want } => {
                write!(f, "fwmark is {have:#x}, configured {want:#x}")
            }
            Drift::PeerMissing { peer } => write!(f, "peer {peer} is missing"),
            Drift::PeerUnexpected { peer } => write!(f, "unexpected peer {peer}"),
            Drift::PeerAllowedIps { peer, have, want } => write!(
                f,
                "peer {peer} allowed IPs are [{}], configured [{}]",
                nets(have),
                nets(want)
            ),
            Drift::PeerKeepalive { peer, have, want } => {
                write!(f, "peer {peer} keepalive is {have:?}, configured {want:?}")
            }
            Drift::PeerPresharedKey { peer } => write!(
                f,
                "peer {peer} preshared key differs from the configuration (values not shown)"
            ),
            Drift::PeerEndpoint { peer, have, want } => match have {
                Some(h) => write!(f, "peer {peer} endpoint is {h}, configured {want}"),
                None => write!(f, "peer {peer} has no endpoint, configured {want}"),
            },
            Drift::AddressMissing { address } => write!(f, "address {address} is missing"),
            Drift::AddressUnexpected { address } => write!(f, "unexpected address {address}"),
            Drift::RouteMissing { destination, table } => {
                write!(f, "route {destination} (table {table}) is missing")
            }
            Drift::Mtu { have, want } => write!(f, "mtu is {have}, configured {want}"),
            Drift::Down => f.write_str("the interface is down"),
        }
    }
}

impl Drift {
    /// The kind of difference, without its values: a stable `snake_case`
    /// name for metric labels and logs (`peer_missing`, `route_missing`).
    pub fn kind(&self) -> &'static str {
        match self {
            Drift::Missing { .. } => "missing",
            Drift::PrivateKey => "private_key",
            Drift::ListenPort { .. } => "listen_port",
            Drift::Fwmark { .. } => "fwmark",
            Drift::PeerMissing { .. } => "peer_missing",
            Drift::PeerUnexpected { .. } => "peer_unexpected",
            Drift::PeerAllowedIps { .. } => "peer_allowed_ips",
            Drift::PeerKeepalive { .. } => "peer_keepalive",
            Drift::PeerPresharedKey { .. } => "peer_preshared_key",
            Drift::PeerEndpoint { .. } => "peer_endpoint",
            Drift::AddressMissing { .. } => "address_missing",
            Drift::AddressUnexpected { .. } => "address_unexpected",
            Drift::RouteMissing { .. } => "route_missing",
            Drift::Mtu { .. } => "mtu",
            Drift::Down => "down",
        }
    }

    /// Whether this is a difference of the WireGuard device's own
    /// configuration (key, port, mark, peers), as opposed to the link, its
    /// addresses and routes. A caller that does not know what the device
    /// should hold (and so leaves it as it is) judges only the others.
    pub fn is_device(&self) -> bool {
        match self {
            Drift::PrivateKey
            | Drift::ListenPort { .. }
            | Drift::Fwmark { .. }
            | Drift::PeerMissing { .. }
            | Drift::PeerUnexpected { .. }
            | Drift::PeerAllowedIps { .. }
            | Drift::PeerKeepalive { .. }
            | Drift::PeerPresharedKey { .. }
            | Drift::PeerEndpoint { .. } => true,
            Drift::Missing { .. }
            | Drift::AddressMissing { .. }
            | Drift::AddressUnexpected { .. }
            | Drift::RouteMissing { .. }
            | Drift::Mtu { .. }
            | Drift::Down => false,
        }
    }

    /// Where `have` differs from `want` read as a complete desired state:
    /// exactly the parts of `want.diff(have)`.
    pub fn of_device(want: &DeviceConfig, have: &Device) -> Vec<Drift> {
        let change = want.diff(have);
        let mut out = Vec::new();
        if change.private_key.is_some() {
            out.push(Drift::PrivateKey);
        }
        if let Some(p) = change.listen_port {
            out.push(Drift::ListenPort {
                have: have.listen_port,
                want: p,
            });
        }
        if let Some(m) = change.fwmark {
            out.push(Drift::Fwmark {
                have: have.fwmark,
                want: m,
            });
        }
        for p in &change.peers {
            let peer = p.public_key;
            let Some(cur) = have.peer(&peer) else {
                out.push(Drift::PeerMissing { peer });
                continue;
            };
            if p.remove {
                out.push(Drift::PeerUnexpected { peer });
                continue;
            }
            if p.preshared_key.is_some() {
                out.push(Drift::PeerPresharedKey { peer });
            }
            if let Some(want) = p.endpoint {
                out.push(Drift::PeerEndpoint {
                    peer,
                    have: cur.endpoint,
                    want,
                });
            }
            if let Some(ka) = p.persistent_keepalive {
                out.push(Drift::PeerKeepalive {
                    peer,
                    have: cur.persistent_keepalive,
                    want: Some(ka).filter(|d| !d.is_zero()),
                });
            }
            if p.replace_allowed_ips {
                out.push(Drift::PeerAllowedIps {
                    peer,
                    have: cur.allowed_ips.clone(),
                    want: p.allowed_ips.clone(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PeerConfig, PresharedKey, PrivateKey};
    use proptest::prelude::*;

    fn key(i: u8) -> PublicKey {
        PublicKey::from_bytes([i; 32])
    }

    /// Every variant has its own kind, spelled as documented.
    #[test]
    fn kinds() {
        let net: IpNetwork = "10.0.0.0/24".parse().unwrap();
        let all = [
            (
                Drift::Missing {
                    interface: IfName::new("wg0").unwrap(),
                },
                "missing",
            ),
            (Drift::PrivateKey, "private_key"),
            (Drift::ListenPort { have: 1, want: 2 }, "listen_port"),
            (Drift::Fwmark { have: 1, want: 2 }, "fwmark"),
            (Drift::PeerMissing { peer: key(1) }, "peer_missing"),
            (Drift::PeerUnexpected { peer: key(1) }, "peer_unexpected"),
            (
                Drift::PeerAllowedIps {
                    peer: key(1),
                    have: vec![],
                    want: vec![net],
                },
                "peer_allowed_ips",
            ),
            (
                Drift::PeerKeepalive {
                    peer: key(1),
                    have: None,
                    want: Some(Duration::from_secs(25)),
                },
                "peer_keepalive",
            ),
            (
                Drift::PeerPresharedKey { peer: key(1) },
                "peer_preshared_key",
            ),
            (
                Drift::PeerEndpoint {
                    peer: key(1),
                    have: None,
                    want: "10.9.9.9:1".parse().unwrap(),
                },
                "peer_endpoint",
            ),
            (Drift::AddressMissing { address: net }, "address_missing"),
            (
                Drift::AddressUnexpected { address: net },
                "address_unexpected",
            ),
            (
                Drift::RouteMissing {
                    destination: net,
                    table: 254,
                },
                "route_missing",
            ),
            (Drift::Mtu { have: 1, want: 2 }, "mtu"),
            (Drift::Down, "down"),
        ];
        for (d, kind) in &all {
            assert_eq!(d.kind(), *kind, "{d}");
            let device = kind.starts_with("peer_")
                || ["private_key", "listen_port", "fwmark"].contains(kind);
            assert_eq!(d.is_device(), device, "{d}");
        }
    }

    #[test]
    fn every_kind_of_device_drift_is_named() {
        let me = PrivateKey::generate().unwrap();
        let mut have = Device::default();
        have.apply(
            &DeviceConfig::new()
                .private_key(PrivateKey::generate().unwrap())
                .listen_port(1)
                .fwmark(1)
                .peer(PeerConfig::new(key(1)).allowed_ip("10.0.0.0/24".parse().unwrap()))
                .peer(PeerConfig::new(key(2))),
        );
        let want = DeviceConfig::new()
            .private_key(me)
            .listen_port(2)
            .fwmark(2)
            .replace_peers()
            .peer(
                PeerConfig::new(key(1))
                    .allowed_ip("10.0.1.0/24".parse().unwrap())
                    .endpoint("10.9.9.9:1".parse().unwrap())
                    .preshared_key(PresharedKey::from_bytes([7; 32]))
                    .persistent_keepalive(Duration::from_secs(25)),
            )
            .peer(PeerConfig::new(key(3)));
        let d = Drift::of_device(&want, &have);
        let text: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert!(d.contains(&Drift::PrivateKey), "{text:?}");
        assert!(d.contains(&Drift::ListenPort { have: 1, want: 2 }));
        assert!(d.contains(&Drift::Fwmark { have: 1, want: 2 }));
        assert!(d.contains(&Drift::PeerUnexpected { peer: key(2) }));
        assert!(d.contains(&Drift::PeerMissing { peer: key(3) }));
        assert!(d.contains(&Drift::PeerPresharedKey { peer: key(1) }));
        assert!(d.iter().any(|x| matches!(x, Drift::PeerEndpoint { .. })));
        assert!(d.iter().any(|x| matches!(x, Drift::PeerKeepalive { .. })));
        assert!(d.iter().any(|x| matches!(x, Drift::PeerAllowedIps { .. })));
        assert_eq!(d.len(), 9, "{text:?}");
    }

    /// Each drift carries the values on both sides, exactly: a keepalive
    /// turned on says what it should be, one that should be off says `None`.
    #[test]
    fn device_drifts_carry_both_values() {
        let net = |s: &str| -> IpNetwork { s.parse().unwrap() };
        let mut have = Device::default();
        have.apply(
            &DeviceConfig::new()
                .listen_port(1)
                .fwmark(1)
                .peer(
                    PeerConfig::new(key(1))
                        .allowed_ips([net("10.0.0.0/24"), net("fd00::/64")])
                        .endpoint("10.9.9.8:1".parse().unwrap()),
                )
                .peer(PeerConfig::new(key(2)).persistent_keepalive(Duration::from_secs(25))),
        );
        let want = DeviceConfig::new()
            .listen_port(2)
            .fwmark(2)
            .replace_peers()
            .peer(
                PeerConfig::new(key(1))
                    .allowed_ip(net("10.0.1.0/24"))
                    .endpoint("10.9.9.9:1".parse().unwrap())
                    .persistent_keepalive(Duration::from_secs(30)),
            )
            .peer(PeerConfig::new(key(2)));
        assert_eq!(
            Drift::of_device(&want, &have),
            vec![
                Drift::ListenPort { have: 1, want: 2 },
                Drift::Fwmark { have: 1, want: 2 },
                Drift::PeerEndpoint {
                    peer: key(1),
                    have: Some("10.9.9.8:1".parse().unwrap()),
                    want: "10.9.9.9:1".parse().unwrap(),
                },
                Drift::PeerKeepalive {
                    peer: key(1),
                    have: None,
                    want: Some(Duration::from_secs(30)),
                },
                Drift::PeerAllowedIps {
                    peer: key(1),
                    have: vec![net("10.0.0.0/24"), net("fd00::/64")],
                    want: vec![net("10.0.1.0/24")],
                },
                Drift::PeerKeepalive {
                    peer: key(2),
                    have: Some(Duration::from_secs(25)),
                    want: None,
                },
            ]
        );
    }

    /// What `verify` reports is read by people: each drift says what it is
    /// and both values, and never a key.
    #[test]
    fn drifts_read_as_sentences() {
        let p = key(1);
        let net = |s: &str| -> IpNetwork { s.parse().unwrap() };
        let cases = [
            (
                Drift::Missing {
                    interface: IfName::new("wg0").unwrap(),
                },
                "interface wg0 is missing".to_string(),
            ),
            (
                Drift::PrivateKey,
                "the interface's key is not the configured one".into(),
            ),
            (
                Drift::ListenPort { have: 1, want: 2 },
                "listen port is 1, configured 2".into(),
            ),
            (
                Drift::Fwmark {
                    have: 0x51,
                    want: 0,
                },
                "fwmark is 0x51, configured 0x0".into(),
            ),
            (
                Drift::PeerMissing { peer: p },
                format!("peer {p} is missing"),
            ),
            (
                Drift::PeerUnexpected { peer: p },
                format!("unexpected peer {p}"),
            ),
            (
                Drift::PeerAllowedIps {
                    peer: p,
                    have: vec![net("10.0.0.0/24"), net("fd00::/64")],
                    want: vec![],
                },
                format!("peer {p} allowed IPs are [10.0.0.0/24, fd00::/64], configured []"),
            ),
            (
                Drift::PeerKeepalive {
                    peer: p,
                    have: None,
                    want: Some(Duration::from_secs(25)),
                },
                format!("peer {p} keepalive is None, configured Some(25s)"),
            ),
            (
                Drift::PeerPresharedKey { peer: p },
                format!("peer {p} preshared key differs from the configuration (values not shown)"),
            ),
            (
                Drift::PeerEndpoint {
                    peer: p,
                    have: Some("10.0.0.1:1".parse().unwrap()),
                    want: "10.0.0.2:2".parse().unwrap(),
                },
                format!("peer {p} endpoint is 10.0.0.1:1, configured 10.0.0.2:2"),
            ),
            (
                Drift::PeerEndpoint {
                    peer: p,
                    have: None,
                    want: "10.0.0.2:2".parse().unwrap(),
                },
                format!("peer {p} has no endpoint, configured 10.0.0.2:2"),
            ),
            (
                Drift::AddressMissing {
                    address: net("10.1.0.2/24"),
                },
                "address 10.1.0.2/24 is missing".into(),
            ),
            (
                Drift::AddressUnexpected {
                    address: net("10.1.0.3/24"),
                },
                "unexpected address 10.1.0.3/24".into(),
            ),
            (
                Drift::RouteMissing {
                    destination: net("0.0.0.0/0"),
                    table: 254,
                },
                "route 0.0.0.0/0 (table 254) is missing".into(),
            ),
            (
                Drift::Mtu {
                    have: 1420,
                    want: 1380,
                },
                "mtu is 1420, configured 1380".into(),
            ),
            (Drift::Down, "the interface is down".into()),
        ];
        for (drift, text) in cases {
            assert_eq!(drift.to_string(), text);
        }
    }

    fn arb_config() -> impl Strategy<Value = DeviceConfig> {
        let peer = (
            1u8..6,
            proptest::option::of(0u64..3),
            proptest::collection::vec(0u8..4, 0..3),
        )
            .prop_map(|(k, ka, ips)| {
                let mut p = PeerConfig::new(key(k));
                p.persistent_keepalive = ka.map(Duration::from_secs);
                for i in ips {
                    p = p.allowed_ip(format!("10.{k}.{i}.0/24").parse().unwrap());
                }
                p
            });
        (
            proptest::option::of(1u16..4),
            proptest::collection::vec(peer, 0..5),
        )
            .prop_map(|(port, peers)| {
                let mut seen = std::collections::BTreeSet::new();
                let mut c = DeviceConfig::new().replace_peers();
                c.listen_port = port;
                c.peers = peers
                    .into_iter()
                    .filter(|p| seen.insert(p.public_key))
                    .collect();
                c
            })
    }

    proptest! {
        /// One rule for "the same": no drift exactly when diff is empty, and
        /// none after applying the diff.
        #[test]
        fn drift_is_empty_iff_diff_is(have in arb_config(), want in arb_config()) {
            let mut dev = Device::default();
            dev.apply(&have);
            let drift = Drift::of_device(&want, &dev);
            prop_assert_eq!(drift.is_empty(), want.diff(&dev).is_empty());
            dev.apply(&want.diff(&dev));
            prop_assert!(Drift::of_device(&want, &dev).is_empty());
        }
    }
}
