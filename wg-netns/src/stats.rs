//! What a monitoring caller reads: counters and peers, no key material.
//!
//! [`crate::WgDevice::stats`] reads a device and keeps only this; the private
//! and preshared keys it read are wiped with the full state. A node agent can
//! hand these values to a metrics exporter or a status field as they are.
//!
//! ```no_run
//! use wg_netns::{IfName, Netns, WgDevice};
//! let dev = WgDevice::open_kernel(&Netns::from_name("pod1")?, &IfName::new("wg0")?)?;
//! for p in dev.stats()?.peers {
//!     println!("{} rx {} tx {} handshake {:?}", p.public_key, p.rx_bytes, p.tx_bytes, p.last_handshake);
//! }
//! # Ok::<(), wg_netns::Error>(())
//! ```

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;

use crate::device::{Device, Peer};
use crate::key::PublicKey;

/// A device's public state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceStats {
    /// The device's public key, when it has a private key.
    pub public_key: Option<PublicKey>,
    /// UDP listen port (0 = not listening).
    pub listen_port: u16,
    /// Firewall mark (0 = none).
    pub fwmark: u32,
    /// Peers, in the device's order.
    pub peers: Vec<PeerStats>,
}

/// One peer's public state and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Current endpoint (configured or learned).
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs.
    pub allowed_ips: Vec<IpNetwork>,
    /// Persistent keepalive, if enabled.
    pub persistent_keepalive: Option<Duration>,
    /// Time of the last completed handshake, if any.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

impl From<&Peer> for PeerStats {
    fn from(p: &Peer) -> Self {
        PeerStats {
            public_key: p.public_key,
            endpoint: p.endpoint,
            allowed_ips: p.allowed_ips.clone(),
            persistent_keepalive: p.persistent_keepalive,
            last_handshake: p.last_handshake,
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
        }
    }
}

impl From<&Device> for DeviceStats {
    fn from(d: &Device) -> Self {
        DeviceStats {
            public_key: d.public_key,
            listen_port: d.listen_port,
            fwmark: d.fwmark,
            peers: d.peers.iter().map(PeerStats::from).collect(),
        }
    }
}

impl DeviceStats {
    /// The peer with `key`, if present.
    pub fn peer(&self, key: &PublicKey) -> Option<&PeerStats> {
        self.peers.iter().find(|p| &p.public_key == key)
    }
}

impl PeerStats {
    /// Seconds since the last handshake at `now`, if there was one.
    pub fn handshake_age(&self, now: SystemTime) -> Option<Duration> {
        self.last_handshake.and_then(|t| now.duration_since(t).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceConfig, PeerConfig, PresharedKey, PrivateKey};

    #[test]
    fn stats_carry_no_key_material() {
        let k = PrivateKey::generate().unwrap();
        let psk = PresharedKey::generate().unwrap();
        let peer = PrivateKey::generate().unwrap().public_key();
        let mut dev = Device::default();
        dev.apply(
            &DeviceConfig::new()
                .private_key(k.clone())
                .listen_port(7)
                .peer(
                    PeerConfig::new(peer)
                        .preshared_key(psk.clone())
                        .allowed_ip("10.0.0.0/24".parse().unwrap()),
                ),
        );
        let s = DeviceStats::from(&dev);
        assert_eq!(s.public_key, Some(k.public_key()));
        assert_eq!(s.peer(&peer).unwrap().allowed_ips.len(), 1);
        let printed = format!("{s:?}");
        for secret in [k.to_base64(), psk.to_base64()] {
            assert!(!printed.contains(secret.as_str()));
        }
    }
}
