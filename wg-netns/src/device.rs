//! WireGuard device configuration and state, independent of the backend.
//!
//! [`DeviceConfig`] is what to write (a change, in WireGuard's own terms:
//! "replace peers", "remove this peer", "replace its allowed IPs");
//! [`Device`] is what was read back. [`DeviceConfig::diff`] turns a current
//! state and a desired configuration into the smallest change that takes one
//! to the other, so updating one peer of a 10,000-peer device sends one peer.
//!
//! ```
//! use std::time::Duration;
//! use wg_netns::{DeviceConfig, PeerConfig, PrivateKey};
//! let me = PrivateKey::generate().unwrap();
//! let them = PrivateKey::generate().unwrap().public_key();
//! let cfg = DeviceConfig::new()
//!     .private_key(me)
//!     .listen_port(51820)
//!     .replace_peers()
//!     .peer(
//!         PeerConfig::new(them)
//!             .endpoint("192.0.2.1:51820".parse().unwrap())
//!             .allowed_ip("10.13.13.0/24".parse().unwrap())
//!             .persistent_keepalive(Duration::from_secs(25)),
//!     );
//! assert_eq!(cfg.peers.len(), 1);
//! ```

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ipnetwork::IpNetwork;

use crate::key::{PresharedKey, PrivateKey, PublicKey};
use crate::net::normalize;

/// The configuration of one peer, as a change to apply.
///
/// With the `serde` feature it deserializes from camelCase JSON (keys in
/// base64, `persistentKeepalive` in whole seconds):
/// `{"publicKey": "...", "endpoint": "192.0.2.1:51820", "allowedIps": ["10.0.0.0/24"], "persistentKeepalive": 25}`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(rename_all = "camelCase", deny_unknown_fields)
)]
#[non_exhaustive]
pub struct PeerConfig {
    /// The peer's public key (its identity).
    pub public_key: PublicKey,
    /// Preshared key: `None` leaves it unchanged, an all-zero key removes it.
    #[cfg_attr(feature = "serde", serde(default))]
    pub preshared_key: Option<PresharedKey>,
    /// Endpoint: `None` leaves it unchanged.
    #[cfg_attr(feature = "serde", serde(default))]
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs to add (or to set, with [`PeerConfig::replace_allowed_ips`]).
    #[cfg_attr(feature = "serde", serde(default))]
    pub allowed_ips: Vec<IpNetwork>,
    /// Persistent keepalive: `None` leaves it unchanged, zero turns it off.
    #[cfg_attr(feature = "serde", serde(default, with = "serde_secs"))]
    pub persistent_keepalive: Option<Duration>,
    /// Replace the peer's allowed IPs instead of adding to them.
    #[cfg_attr(feature = "serde", serde(default))]
    pub replace_allowed_ips: bool,
    /// Remove this peer.
    #[cfg_attr(feature = "serde", serde(default))]
    pub remove: bool,
    /// Only update the peer if it exists; never create it.
    #[cfg_attr(feature = "serde", serde(default))]
    pub update_only: bool,
}

/// Whole seconds for `Option<Duration>` in serialized configurations.
#[cfg(feature = "serde")]
mod serde_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}

impl PeerConfig {
    /// A peer with nothing but its key; add fields with the builder methods.
    pub fn new(public_key: PublicKey) -> Self {
        PeerConfig {
            public_key,
            preshared_key: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
            replace_allowed_ips: false,
            remove: false,
            update_only: false,
        }
    }

    /// A change that removes the peer.
    pub fn removal(public_key: PublicKey) -> Self {
        PeerConfig {
            remove: true,
            ..PeerConfig::new(public_key)
        }
    }

    /// Set the preshared key.
    pub fn preshared_key(mut self, key: PresharedKey) -> Self {
        self.preshared_key = Some(key);
        self
    }

    /// Set the endpoint.
    pub fn endpoint(mut self, endpoint: SocketAddr) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Add one allowed IP.
    pub fn allowed_ip(mut self, net: IpNetwork) -> Self {
        self.allowed_ips.push(net);
        self
    }

    /// Add several allowed IPs.
    pub fn allowed_ips(mut self, nets: impl IntoIterator<Item = IpNetwork>) -> Self {
        self.allowed_ips.extend(nets);
        self
    }

    /// Set the persistent keepalive interval (whole seconds, at most 65535).
    pub fn persistent_keepalive(mut self, interval: Duration) -> Self {
        self.persistent_keepalive = Some(interval);
        self
    }

    /// Replace the allowed IPs instead of adding to them.
    pub fn replace_allowed_ips(mut self) -> Self {
        self.replace_allowed_ips = true;
        self
    }

    /// Only update an existing peer.
    pub fn update_only(mut self) -> Self {
        self.update_only = true;
        self
    }
}

/// A change to a WireGuard device.
///
/// With the `serde` feature it deserializes from camelCase JSON, every field
/// optional: `{"privateKey": "...", "listenPort": 51820, "replacePeers": true, "peers": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(rename_all = "camelCase", default, deny_unknown_fields)
)]
#[non_exhaustive]
pub struct DeviceConfig {
    /// Private key: `None` leaves it unchanged; an all-zero key removes it.
    pub private_key: Option<PrivateKey>,
    /// UDP listen port: `None` leaves it unchanged, 0 picks a random port.
    pub listen_port: Option<u16>,
    /// Firewall mark on outgoing packets: `None` leaves it, 0 clears it.
    pub fwmark: Option<u32>,
    /// Remove every peer not listed in `peers`.
    pub replace_peers: bool,
    /// Peer changes, applied in order.
    pub peers: Vec<PeerConfig>,
}

impl DeviceConfig {
    /// An empty change.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the private key.
    pub fn private_key(mut self, key: PrivateKey) -> Self {
        self.private_key = Some(key);
        self
    }

    /// Set the listen port.
    pub fn listen_port(mut self, port: u16) -> Self {
        self.listen_port = Some(port);
        self
    }

    /// Set the firewall mark.
    pub fn fwmark(mut self, mark: u32) -> Self {
        self.fwmark = Some(mark);
        self
    }

    /// Replace all peers with the ones listed.
    pub fn replace_peers(mut self) -> Self {
        self.replace_peers = true;
        self
    }

    /// Add a peer change.
    pub fn peer(mut self, peer: PeerConfig) -> Self {
        self.peers.push(peer);
        self
    }

    /// Validate values the backends would reject or silently truncate.
    pub fn validate(&self) -> crate::Result<()> {
        for p in &self.peers {
            if let Some(k) = p.persistent_keepalive {
                if k.as_secs() > u64::from(u16::MAX) || k.subsec_nanos() != 0 {
                    return Err(crate::Error::invalid(
                        "persistent keepalive",
                        format!(
                            "{k:?} for peer {} is not a whole number of seconds in 0..=65535",
                            p.public_key
                        ),
                    ));
                }
            }
            if p.remove && (p.update_only || !p.allowed_ips.is_empty()) {
                return Err(crate::Error::invalid(
                    "peer",
                    format!(
                        "peer {} is removed and changed in the same step",
                        p.public_key
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The smallest change that takes `current` to `self` read as a complete
    /// desired state (every peer listed with every allowed IP; a peer's missing
    /// preshared key or keepalive means "none").
    ///
    /// Fields of `self` that are `None` at device level are left alone.
    /// Endpoints are only set when given and different (a roaming peer's
    /// learned endpoint is not fought over).
    pub fn diff(&self, current: &Device) -> DeviceConfig {
        let mut out = DeviceConfig::new();
        if let Some(k) = &self.private_key {
            if current.private_key.as_ref() != Some(k) {
                out.private_key = Some(k.clone());
            }
        }
        if let Some(p) = self.listen_port {
            if p != current.listen_port && p != 0 {
                out.listen_port = Some(p);
            }
        }
        if let Some(m) = self.fwmark {
            if m != current.fwmark {
                out.fwmark = Some(m);
            }
        }
        let have: HashMap<&PublicKey, usize> = current
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| (&p.public_key, i))
            .collect();
        let mut wanted = vec![false; current.peers.len()];
        for want in self.peers.iter().filter(|p| !p.remove) {
            let cur = have.get(&want.public_key).map(|&i| {
                wanted[i] = true;
                &current.peers[i]
            });
            let want_psk = want.preshared_key.as_ref().filter(|k| !k.is_zero());
            let want_ka = want.persistent_keepalive.filter(|d| !d.is_zero());
            match cur {
                None => {
                    let mut p = PeerConfig::new(want.public_key);
                    p.preshared_key = want_psk.cloned();
                    p.endpoint = want.endpoint;
                    p.allowed_ips = normalized_set(&want.allowed_ips).into_iter().collect();
                    p.persistent_keepalive = want_ka;
                    p.replace_allowed_ips = true;
                    out.peers.push(p);
                }
                Some(cur) => {
                    let mut p = PeerConfig::new(want.public_key);
                    let mut changed = false;
                    if cur.preshared_key.as_ref() != want_psk {
                        p.preshared_key = Some(
                            want_psk
                                .cloned()
                                .unwrap_or_else(|| PresharedKey::from_bytes([0; 32])),
                        );
                        changed = true;
                    }
                    if want.endpoint.is_some() && cur.endpoint != want.endpoint {
                        p.endpoint = want.endpoint;
                        changed = true;
                    }
                    if cur.persistent_keepalive != want_ka {
                        p.persistent_keepalive = Some(want_ka.unwrap_or(Duration::ZERO));
                        changed = true;
                    }
                    if !same_nets(&cur.allowed_ips, &want.allowed_ips) {
                        p.allowed_ips = normalized_set(&want.allowed_ips).into_iter().collect();
                        p.replace_allowed_ips = true;
                        changed = true;
                    }
                    if changed {
                        p.update_only = true;
                        out.peers.push(p);
                    }
                }
            }
        }
        for (cur, wanted) in current.peers.iter().zip(wanted) {
            if !wanted {
                out.peers.push(PeerConfig::removal(cur.public_key));
            }
        }
        out
    }

    /// True when applying this change would do nothing.
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none()
            && self.listen_port.is_none()
            && self.fwmark.is_none()
            && !self.replace_peers
            && self.peers.is_empty()
    }
}

/// Set equality of two lists of networks after normalization, without
/// allocating when they are already equal element by element (the common case
/// when comparing a device with the configuration that produced it).
fn same_nets(a: &[IpNetwork], b: &[IpNetwork]) -> bool {
    if a.len() == b.len() && a.iter().zip(b).all(|(x, y)| normalize(*x) == normalize(*y)) {
        return true;
    }
    normalized_set(a) == normalized_set(b)
}

fn normalized_set(nets: &[IpNetwork]) -> BTreeSet<IpNetwork> {
    nets.iter().map(|n| normalize(*n)).collect()
}

/// `UNIX_EPOCH + secs + nanos`, or `None` when the platform cannot represent
/// it (a handshake time from a broken or hostile reply must not panic).
pub(crate) fn epoch_time(secs: u64, nanos: u64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))?
        .checked_add(Duration::from_nanos(nanos.min(999_999_999)))
}

/// A peer as read back from a device.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Peer {
    /// Public key.
    pub public_key: PublicKey,
    /// Preshared key, if set (only visible to privileged readers).
    pub preshared_key: Option<PresharedKey>,
    /// Current endpoint (configured or learned from the last packet).
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs.
    pub allowed_ips: Vec<IpNetwork>,
    /// Persistent keepalive interval, if enabled.
    pub persistent_keepalive: Option<Duration>,
    /// Time of the last completed handshake, if any.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

impl Peer {
    pub(crate) fn new(public_key: PublicKey) -> Self {
        Peer {
            public_key,
            preshared_key: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
        }
    }
}

/// A device's state as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Device {
    /// Private key, if set and visible.
    pub private_key: Option<PrivateKey>,
    /// Public key derived from the private key.
    pub public_key: Option<PublicKey>,
    /// UDP listen port (0 = not listening yet).
    pub listen_port: u16,
    /// Firewall mark (0 = none).
    pub fwmark: u32,
    /// Peers, in the device's order.
    pub peers: Vec<Peer>,
}

impl Device {
    /// The peer with `key`, if present.
    pub fn peer(&self, key: &PublicKey) -> Option<&Peer> {
        self.peers.iter().find(|p| &p.public_key == key)
    }

    /// Apply `cfg` to this state the way WireGuard does (a pure model of the
    /// kernel's and wireguard-go's semantics, including an allowed IP moving
    /// from one peer to another). Counters and handshakes are untouched; a
    /// listen port of 0 is kept as 0.
    pub fn apply(&mut self, cfg: &DeviceConfig) {
        if let Some(k) = &cfg.private_key {
            if k.is_zero() {
                self.private_key = None;
                self.public_key = None;
            } else {
                self.public_key = Some(k.public_key());
                self.private_key = Some(k.clone());
                // A peer with our own public key is dropped by WireGuard.
                let me = self.public_key;
                self.peers.retain(|p| Some(p.public_key) != me);
            }
        }
        if let Some(p) = cfg.listen_port {
            self.listen_port = p;
        }
        if let Some(m) = cfg.fwmark {
            self.fwmark = m;
        }
        if cfg.replace_peers {
            self.peers.clear();
        }
        for pc in &cfg.peers {
            let pos = self
                .peers
                .iter()
                .position(|p| p.public_key == pc.public_key);
            if pc.remove {
                if let Some(i) = pos {
                    self.peers.remove(i);
                }
                continue;
            }
            if Some(pc.public_key) == self.public_key {
                continue;
            }
            let i = match pos {
                Some(i) => i,
                None if pc.update_only => continue,
                None => {
                    self.peers.push(Peer::new(pc.public_key));
                    self.peers.len() - 1
                }
            };
            {
                let p = &mut self.peers[i];
                if let Some(k) = &pc.preshared_key {
                    p.preshared_key = if k.is_zero() { None } else { Some(k.clone()) };
                }
                if let Some(e) = pc.endpoint {
                    p.endpoint = Some(e);
                }
                if let Some(k) = pc.persistent_keepalive {
                    p.persistent_keepalive = if k.is_zero() { None } else { Some(k) };
                }
                if pc.replace_allowed_ips {
                    p.allowed_ips.clear();
                }
            }
            for net in &pc.allowed_ips {
                let net = normalize(*net);
                for (j, other) in self.peers.iter_mut().enumerate() {
                    if j != i {
                        other.allowed_ips.retain(|n| *n != net);
                    }
                }
                let p = &mut self.peers[i];
                if !p.allowed_ips.contains(&net) {
                    p.allowed_ips.push(net);
                }
            }
        }
    }

    /// The configuration part of the state, order-independent: used to compare
    /// what was written with what was read back.
    pub fn same_config(&self, other: &Device) -> bool {
        let key = |d: &Device| {
            let mut peers: Vec<_> = d
                .peers
                .iter()
                .map(|p| {
                    (
                        p.public_key,
                        p.preshared_key.clone().map(|k| *k.as_bytes()),
                        p.endpoint,
                        normalized_set(&p.allowed_ips),
                        p.persistent_keepalive,
                    )
                })
                .collect();
            peers.sort_by_key(|p| p.0);
            (d.public_key, d.fwmark, peers)
        };
        key(self) == key(other)
    }
}

#[cfg(test)]
mod tests;
