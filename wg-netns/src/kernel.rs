//! Kernel WireGuard over generic netlink (`wireguard` family, version 1).
//!
//! Encoding follows `include/uapi/linux/wireguard.h` and the reference
//! `wg(8)`: a large peer set is split across several `WG_CMD_SET_DEVICE`
//! messages (device attributes and `WGDEVICE_F_REPLACE_PEERS` only in the
//! first; a peer whose allowed IPs overflow continues in the next message under
//! its public key alone), and `WG_CMD_GET_DEVICE` dumps are merged back,
//! continuing a peer that spans two messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use ipnetwork::IpNetwork;
use neli::consts::socket::NlFamily;
use zeroize::Zeroizing;

use crate::device::{epoch_time, Device, DeviceConfig, Peer, PeerConfig};
use crate::error::{Error, Result};
use crate::key::{PresharedKey, PrivateKey, PublicKey, KEY_LEN};
use crate::netlink::{
    read_str, read_u16, read_u32, read_u64, AttrIter, MsgWriter, NlConn, MAX_REQUEST, NLMSG_HDRLEN,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};

pub(crate) const WG_GENL_NAME: &str = "wireguard";
const WG_GENL_VERSION: u8 = 1;
const WG_CMD_GET_DEVICE: u8 = 0;
const WG_CMD_SET_DEVICE: u8 = 1;

const WGDEVICE_A_IFINDEX: u16 = 1;
const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_PUBLIC_KEY: u16 = 4;
const WGDEVICE_A_FLAGS: u16 = 5;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_FWMARK: u16 = 7;
const WGDEVICE_A_PEERS: u16 = 8;
const WGDEVICE_F_REPLACE_PEERS: u32 = 1;

const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_PRESHARED_KEY: u16 = 2;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_LAST_HANDSHAKE_TIME: u16 = 6;
const WGPEER_A_RX_BYTES: u16 = 7;
const WGPEER_A_TX_BYTES: u16 = 8;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGPEER_F_REMOVE_ME: u32 = 1;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;
const WGPEER_F_UPDATE_ONLY: u32 = 4;

const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// Worst-case bytes of one peer without its allowed IPs, and of one allowed IP.
const PEER_HEADER_MAX: usize = 4 + (4 + KEY_LEN) * 2 + 8 + (4 + 28) + 8 + 4;
const ALLOWED_IP_MAX: usize = 4 + 8 + (4 + 16) + 8;

/// Resolve the numeric id of a generic netlink family; `Ok(None)` when the
/// kernel does not know it (no WireGuard module).
pub(crate) fn resolve_family(conn: &NlConn, name: &'static str) -> Result<Option<u16>> {
    let seq = conn.next_seq();
    let mut w = MsgWriter::new(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        &[CTRL_CMD_GETFAMILY, 2, 0, 0],
    );
    w.put_str(CTRL_ATTR_FAMILY_NAME, name);
    let req = w.finish();
    let mut id = None;
    let r = conn.transact(
        "CTRL_CMD_GETFAMILY",
        &|| name.to_string(),
        &req,
        seq,
        |_, p| {
            for a in AttrIter::new(p.get(4..).unwrap_or_default()).flatten() {
                if a.0 == CTRL_ATTR_FAMILY_ID {
                    id = read_u16(a.1);
                }
            }
            Ok(())
        },
    );
    match r {
        Ok(()) => Ok(id),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// How a request names its device: by index (stable across renames, what a
/// long-lived handle uses) or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DevRef {
    /// `WGDEVICE_A_IFINDEX`.
    Index(u32),
    /// `WGDEVICE_A_IFNAME`.
    Name(String),
}

impl DevRef {
    fn put(&self, w: &mut MsgWriter) {
        match self {
            DevRef::Index(i) => w.put_u32(WGDEVICE_A_IFINDEX, *i),
            DevRef::Name(n) => w.put_str(WGDEVICE_A_IFNAME, n),
        }
    }
}

impl std::fmt::Display for DevRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DevRef::Index(i) => write!(f, "ifindex {i}"),
            DevRef::Name(n) => f.write_str(n),
        }
    }
}

/// A generic netlink socket speaking to the `wireguard` family, bound to the
/// namespace it was opened in.
pub(crate) struct KernelConn {
    conn: NlConn,
    family: u16,
}

impl std::fmt::Debug for KernelConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelConn")
            .field("family", &self.family)
            .finish()
    }
}

impl KernelConn {
    /// Open in the calling thread's namespace; `Ok(None)` without kernel WireGuard.
    pub(crate) fn current() -> Result<Option<Self>> {
        let conn = NlConn::connect(NlFamily::Generic)?;
        Ok(resolve_family(&conn, WG_GENL_NAME)?.map(|family| KernelConn { conn, family }))
    }

    pub(crate) fn set(&self, dev: &DevRef, cfg: &DeviceConfig) -> Result<()> {
        for msg in encode_set(self.family, dev, cfg, MAX_REQUEST, || self.conn.next_seq()) {
            let seq = crate::netlink::MsgHeader::parse(&msg)
                .map(|h| h.seq)
                .unwrap_or(0);
            self.conn.transact(
                "WG_CMD_SET_DEVICE",
                &|| dev.to_string(),
                &msg,
                seq,
                |_, _| Ok(()),
            )?;
        }
        Ok(())
    }

    pub(crate) fn get(&self, dev: &DevRef) -> Result<Device> {
        let seq = self.conn.next_seq();
        let req = encode_get(self.family, dev, seq);
        let mut out = Device::default();
        self.conn.transact(
            "WG_CMD_GET_DEVICE",
            &|| dev.to_string(),
            &req,
            seq,
            |_, p| decode_get_part(p, &mut out),
        )?;
        Ok(out)
    }
}

/// A `WG_CMD_GET_DEVICE` dump request for one device.
pub(crate) fn encode_get(family: u16, dev: &DevRef, seq: u32) -> Zeroizing<Vec<u8>> {
    let mut w = MsgWriter::new(
        family,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
        seq,
        &[WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0, 0],
    );
    dev.put(&mut w);
    w.finish()
}

fn put_endpoint(w: &mut MsgWriter, ty: u16, ep: &SocketAddr) {
    let mut b = Vec::with_capacity(28);
    match ep {
        SocketAddr::V4(a) => {
            b.extend_from_slice(&AF_INET.to_ne_bytes());
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&a.ip().octets());
            b.extend_from_slice(&[0; 8]);
        }
        SocketAddr::V6(a) => {
            b.extend_from_slice(&AF_INET6.to_ne_bytes());
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&a.flowinfo().to_be_bytes());
            b.extend_from_slice(&a.ip().octets());
            b.extend_from_slice(&a.scope_id().to_ne_bytes());
        }
    }
    w.put(ty, &b);
}

fn parse_endpoint(p: &[u8]) -> Option<SocketAddr> {
    let family = read_u16(p)?;
    let port = u16::from_be_bytes(p.get(2..4)?.try_into().ok()?);
    match family {
        AF_INET => {
            let ip: [u8; 4] = p.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        AF_INET6 => {
            let flow = u32::from_be_bytes(p.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = p.get(8..24)?.try_into().ok()?;
            let scope = read_u32(p.get(24..28)?)?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

fn put_allowed_ip(w: &mut MsgWriter, net: &IpNetwork) {
    w.begin_nest(0);
    match net.ip() {
        IpAddr::V4(a) => {
            w.put_u16(WGALLOWEDIP_A_FAMILY, AF_INET);
            w.put(WGALLOWEDIP_A_IPADDR, &a.octets());
        }
        IpAddr::V6(a) => {
            w.put_u16(WGALLOWEDIP_A_FAMILY, AF_INET6);
            w.put(WGALLOWEDIP_A_IPADDR, &a.octets());
        }
    }
    w.put(WGALLOWEDIP_A_CIDR_MASK, &[net.prefix()]);
    w.end_nest();
}

fn peer_flags(p: &PeerConfig) -> u32 {
    let mut f = 0;
    if p.remove {
        f |= WGPEER_F_REMOVE_ME;
    }
    if p.replace_allowed_ips {
        f |= WGPEER_F_REPLACE_ALLOWEDIPS;
    }
    if p.update_only {
        f |= WGPEER_F_UPDATE_ONLY;
    }
    f
}

/// Encode a configuration as one or more `WG_CMD_SET_DEVICE` messages of at
/// most `budget` bytes each. `next_seq` numbers them.
pub(crate) fn encode_set(
    family: u16,
    dev: &DevRef,
    cfg: &DeviceConfig,
    budget: usize,
    mut next_seq: impl FnMut() -> u32,
) -> Vec<Zeroizing<Vec<u8>>> {
    let budget = budget.max(NLMSG_HDRLEN + 64 + PEER_HEADER_MAX + ALLOWED_IP_MAX + 16);
    let mut out = Vec::new();
    let new_msg = |seq: u32| {
        let mut w = MsgWriter::new(
            family,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            &[WG_CMD_SET_DEVICE, WG_GENL_VERSION, 0, 0],
        );
        dev.put(&mut w);
        w
    };
    let mut w = new_msg(next_seq());
    if let Some(k) = &cfg.private_key {
        w.put(WGDEVICE_A_PRIVATE_KEY, k.as_bytes());
    }
    if let Some(port) = cfg.listen_port {
        w.put_u16(WGDEVICE_A_LISTEN_PORT, port);
    }
    if let Some(mark) = cfg.fwmark {
        w.put_u32(WGDEVICE_A_FWMARK, mark);
    }
    if cfg.replace_peers {
        w.put_u32(WGDEVICE_A_FLAGS, WGDEVICE_F_REPLACE_PEERS);
    }

    let mut peers_open = false;
    let mut peers_in_msg = 0usize;
    for peer in &cfg.peers {
        // A peer's header must fit with at least one allowed IP (or nothing).
        if peers_in_msg > 0 && w.len() + PEER_HEADER_MAX + ALLOWED_IP_MAX + 8 > budget {
            out.push(std::mem::replace(&mut w, new_msg(next_seq())).finish());
            peers_open = false;
            peers_in_msg = 0;
        }
        if !peers_open {
            w.begin_nest(WGDEVICE_A_PEERS);
            peers_open = true;
        }
        w.begin_nest(0);
        w.put(WGPEER_A_PUBLIC_KEY, peer.public_key.as_bytes());
        let flags = peer_flags(peer);
        if flags != 0 {
            w.put_u32(WGPEER_A_FLAGS, flags);
        }
        if let Some(psk) = &peer.preshared_key {
            w.put(WGPEER_A_PRESHARED_KEY, psk.as_bytes());
        }
        if let Some(ep) = &peer.endpoint {
            put_endpoint(&mut w, WGPEER_A_ENDPOINT, ep);
        }
        if let Some(ka) = peer.persistent_keepalive {
            w.put_u16(
                WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
                ka.as_secs().min(u64::from(u16::MAX)) as u16,
            );
        }
        peers_in_msg += 1;
        if !peer.allowed_ips.is_empty() {
            w.begin_nest(WGPEER_A_ALLOWEDIPS);
            for net in &peer.allowed_ips {
                if w.len() + ALLOWED_IP_MAX + 8 > budget {
                    // Close allowed IPs, peer and peers; continue the same peer
                    // (by public key only, so nothing is replaced twice).
                    let mut next = new_msg(next_seq());
                    std::mem::swap(&mut w, &mut next);
                    out.push(next.finish());
                    w.begin_nest(WGDEVICE_A_PEERS);
                    w.begin_nest(0);
                    w.put(WGPEER_A_PUBLIC_KEY, peer.public_key.as_bytes());
                    w.begin_nest(WGPEER_A_ALLOWEDIPS);
                    peers_in_msg = 1;
                }
                put_allowed_ip(&mut w, net);
            }
            w.end_nest();
        }
        w.end_nest();
    }
    out.push(w.finish());
    out
}

/// Merge one part of a `WG_CMD_GET_DEVICE` dump into `dev`.
pub(crate) fn decode_get_part(genl: &[u8], dev: &mut Device) -> Result<()> {
    let bad = |reason: &str| Error::NetlinkDecode {
        op: "WG_CMD_GET_DEVICE",
        reason: reason.to_string(),
    };
    let attrs = genl
        .get(4..)
        .ok_or_else(|| bad("short generic netlink header"))?;
    for a in AttrIter::new(attrs) {
        let (ty, p) = a.map_err(|_| bad("malformed device attribute"))?;
        match ty {
            WGDEVICE_A_PRIVATE_KEY => {
                let k: [u8; KEY_LEN] = p.try_into().map_err(|_| bad("private key length"))?;
                let k = PrivateKey::from_bytes(k);
                dev.private_key = (!k.is_zero()).then_some(k);
            }
            WGDEVICE_A_PUBLIC_KEY => {
                let k: [u8; KEY_LEN] = p.try_into().map_err(|_| bad("public key length"))?;
                dev.public_key = (k != [0; KEY_LEN]).then_some(PublicKey::from_bytes(k));
            }
            WGDEVICE_A_LISTEN_PORT => {
                dev.listen_port = read_u16(p).ok_or_else(|| bad("listen port"))?
            }
            WGDEVICE_A_FWMARK => dev.fwmark = read_u32(p).ok_or_else(|| bad("fwmark"))?,
            WGDEVICE_A_PEERS => {
                for peer in AttrIter::new(p) {
                    let (_, pp) = peer.map_err(|_| bad("malformed peer"))?;
                    decode_peer(pp, dev).map_err(&bad)?;
                }
            }
            WGDEVICE_A_IFINDEX | WGDEVICE_A_IFNAME => {
                let _ = read_str(p);
            }
            _ => {}
        }
    }
    Ok(())
}

fn decode_peer(p: &[u8], dev: &mut Device) -> std::result::Result<(), &'static str> {
    let mut key = None;
    for a in AttrIter::new(p) {
        let (ty, v) = a.map_err(|_| "malformed peer attribute")?;
        if ty == WGPEER_A_PUBLIC_KEY {
            let k: [u8; KEY_LEN] = v.try_into().map_err(|_| "peer public key length")?;
            key = Some(PublicKey::from_bytes(k));
        }
    }
    let key = key.ok_or("peer without public key")?;
    // A peer continued from the previous dump message has the same key as the last one.
    let continued = dev.peers.last().is_some_and(|last| last.public_key == key);
    if !continued {
        dev.peers.push(Peer::new(key));
    }
    let peer = dev.peers.last_mut().ok_or("no peer")?;
    for a in AttrIter::new(p) {
        let (ty, v) = a.map_err(|_| "malformed peer attribute")?;
        match ty {
            WGPEER_A_PRESHARED_KEY => {
                let k: [u8; KEY_LEN] = v.try_into().map_err(|_| "preshared key length")?;
                let k = PresharedKey::from_bytes(k);
                peer.preshared_key = (!k.is_zero()).then_some(k);
            }
            WGPEER_A_ENDPOINT => peer.endpoint = parse_endpoint(v),
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL => {
                let s = read_u16(v).ok_or("keepalive")?;
                peer.persistent_keepalive = (s != 0).then(|| Duration::from_secs(u64::from(s)));
            }
            WGPEER_A_LAST_HANDSHAKE_TIME => {
                // struct __kernel_timespec: two i64.
                let sec = read_u64(v).ok_or("handshake time")? as i64;
                let nsec = read_u64(v.get(8..).unwrap_or_default()).unwrap_or(0) as i64;
                peer.last_handshake = if sec == 0 && nsec == 0 {
                    None
                } else {
                    Some(
                        epoch_time(sec.max(0) as u64, nsec.max(0) as u64)
                            .ok_or("handshake time out of range")?,
                    )
                };
            }
            WGPEER_A_RX_BYTES => peer.rx_bytes = read_u64(v).ok_or("rx bytes")?,
            WGPEER_A_TX_BYTES => peer.tx_bytes = read_u64(v).ok_or("tx bytes")?,
            WGPEER_A_ALLOWEDIPS => {
                for aip in AttrIter::new(v) {
                    let (_, av) = aip.map_err(|_| "malformed allowed IP")?;
                    if let Some(net) = decode_allowed_ip(av)? {
                        peer.allowed_ips.push(net);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn decode_allowed_ip(p: &[u8]) -> std::result::Result<Option<IpNetwork>, &'static str> {
    let mut family = None;
    let mut addr = None;
    let mut cidr = None;
    for a in AttrIter::new(p) {
        let (ty, v) = a.map_err(|_| "malformed allowed IP attribute")?;
        match ty {
            WGALLOWEDIP_A_FAMILY => family = read_u16(v),
            WGALLOWEDIP_A_IPADDR => addr = Some(v),
            WGALLOWEDIP_A_CIDR_MASK => cidr = v.first().copied(),
            _ => {}
        }
    }
    let (Some(family), Some(addr), Some(cidr)) = (family, addr, cidr) else {
        return Err("incomplete allowed IP");
    };
    let ip = match family {
        AF_INET => IpAddr::from(<[u8; 4]>::try_from(addr).map_err(|_| "IPv4 allowed IP length")?),
        AF_INET6 => IpAddr::from(<[u8; 16]>::try_from(addr).map_err(|_| "IPv6 allowed IP length")?),
        _ => return Ok(None),
    };
    IpNetwork::new(ip, cidr)
        .map(Some)
        .map_err(|_| "allowed IP prefix out of range")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::MsgHeader;

    fn key(i: u32) -> PublicKey {
        let mut k = [7u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        PublicKey::from_bytes(k)
    }

    /// Re-read SET messages as if they were a GET dump: the kernel would end
    /// up with exactly the peers and allowed IPs that were sent.
    fn reassemble(msgs: &[Zeroizing<Vec<u8>>]) -> Device {
        let mut dev = Device::default();
        for m in msgs {
            let h = MsgHeader::parse(m).unwrap();
            assert_eq!(h.len, m.len());
            decode_get_part(&m[NLMSG_HDRLEN..], &mut dev).unwrap();
        }
        dev
    }

    #[test]
    fn large_peer_sets_are_split_and_reassemble() {
        let mut cfg = DeviceConfig::new()
            .private_key(PrivateKey::from_bytes([9; 32]))
            .listen_port(51820)
            .replace_peers();
        for i in 0..1000u32 {
            cfg.peers.push(
                PeerConfig::new(key(i))
                    .endpoint(SocketAddr::from(([192, 0, 2, 1], 1000 + i as u16)))
                    .allowed_ip(
                        IpNetwork::new([10, (i >> 8) as u8, i as u8, 0].into(), 24).unwrap(),
                    ),
            );
        }
        // One peer with many allowed IPs that must span several messages.
        let mut big = PeerConfig::new(key(5000)).replace_allowed_ips();
        for i in 0..3000u32 {
            big.allowed_ips
                .push(IpNetwork::new([100, 64, (i >> 8) as u8, i as u8].into(), 32).unwrap());
        }
        cfg.peers.push(big);
        let mut seq = 0;
        let msgs = encode_set(21, &DevRef::Name("wg0".into()), &cfg, 4096, || {
            seq += 1;
            seq
        });
        assert!(msgs.len() > 20, "{} messages", msgs.len());
        for m in &msgs {
            assert!(m.len() <= 4096, "message of {} bytes", m.len());
        }
        let dev = reassemble(&msgs);
        assert_eq!(dev.peers.len(), 1001);
        assert_eq!(dev.listen_port, 51820);
        assert_eq!(dev.peers[1000].allowed_ips.len(), 3000);
        assert_eq!(
            dev.peers[17].endpoint,
            Some(SocketAddr::from(([192, 0, 2, 1], 1017)))
        );
        // Only the first message replaces peers; the big peer's later chunks carry no flags.
        let flags_in = |m: &[u8]| {
            AttrIter::new(&m[NLMSG_HDRLEN + 4..])
                .flatten()
                .any(|(t, _)| t == WGDEVICE_A_FLAGS)
        };
        assert!(flags_in(&msgs[0]));
        assert!(msgs[1..].iter().all(|m| !flags_in(m)));
        // Sequence numbers are distinct.
        let seqs: std::collections::BTreeSet<_> = msgs
            .iter()
            .map(|m| MsgHeader::parse(m).unwrap().seq)
            .collect();
        assert_eq!(seqs.len(), msgs.len());
    }

    #[test]
    fn endpoints_round_trip() {
        for ep in [
            SocketAddr::from(([192, 0, 2, 7], 51820)),
            "[fd00::1]:443".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 5, 0, 3)),
        ] {
            let mut w = MsgWriter::new(1, 0, 1, &[]);
            put_endpoint(&mut w, 4, &ep);
            let b = w.finish();
            let (_, p) = AttrIter::new(&b[NLMSG_HDRLEN..]).next().unwrap().unwrap();
            assert_eq!(parse_endpoint(p), Some(ep));
        }
    }

    #[test]
    fn small_config_is_one_message_with_everything() {
        let psk = PresharedKey::from_bytes([3; 32]);
        let cfg = DeviceConfig::new().fwmark(0x42).peer(
            PeerConfig::new(key(1))
                .preshared_key(psk.clone())
                .persistent_keepalive(Duration::from_secs(25))
                .allowed_ip("fd00::/64".parse().unwrap()),
        );
        let msgs = encode_set(21, &DevRef::Name("wg0".into()), &cfg, MAX_REQUEST, || 1);
        assert_eq!(msgs.len(), 1);
        let dev = reassemble(&msgs);
        assert_eq!(dev.fwmark, 0x42);
        assert_eq!(dev.peers[0].preshared_key.as_ref(), Some(&psk));
        assert_eq!(
            dev.peers[0].persistent_keepalive,
            Some(Duration::from_secs(25))
        );
        assert_eq!(
            dev.peers[0].allowed_ips,
            vec!["fd00::/64".parse::<IpNetwork>().unwrap()]
        );
    }

    /// Regression (found by fuzzing the UAPI parser; the same arithmetic was
    /// here): extreme handshake times neither panic nor wrap.
    #[test]
    fn extreme_handshake_times_do_not_panic() {
        let mut w = MsgWriter::new(1, 0, 1, &[WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0, 0]);
        w.begin_nest(WGDEVICE_A_PEERS);
        w.begin_nest(0);
        w.put(WGPEER_A_PUBLIC_KEY, &[7; 32]);
        let mut ts = Vec::new();
        ts.extend_from_slice(&i64::MAX.to_ne_bytes());
        ts.extend_from_slice(&999_999_999i64.to_ne_bytes());
        w.put(WGPEER_A_LAST_HANDSHAKE_TIME, &ts);
        let m = w.finish();
        let mut dev = Device::default();
        // i64::MAX seconds is representable on Linux: decoded, not wrapped.
        decode_get_part(&m[NLMSG_HDRLEN..], &mut dev).unwrap();
        let t = dev.peers[0].last_handshake.unwrap();
        assert!(t > std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX)));
    }

    #[test]
    fn decoder_survives_garbage() {
        let mut dev = Device::default();
        for len in 0..200usize {
            let junk: Vec<u8> = (0..len).map(|i| (i * 131 + 7) as u8).collect();
            let _ = decode_get_part(&junk, &mut dev);
        }
    }
}

/// Tests against the messages the reference `wg(8)` exchanged with the kernel.
#[cfg(test)]
mod known_good;
