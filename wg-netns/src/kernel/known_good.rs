//! Ground truth from outside the crate: the messages the reference `wg(8)`
//! exchanged with real kernel WireGuard (Debian's 6.1 kernel), captured by
//! `scripts/capture-genl` into `tests/data/genl/` (its README.md says how).
//! The decoder must read the kernel's replies as what was configured, and the
//! encoder must send what `wg` sends for the same configuration.

use super::*;
use crate::netlink::{align4, MsgHeader, NLA_F_NESTED};

/// The test-only keys the capture used (see the data's README.md).
const DEV_PRIVATE: &str = "mF8g42+glQvUl88u5f6ufehlyRt14rZs15sg3AvnCkE=";
const DEV_PUBLIC: &str = "guyXF4x8YF2wDz+pAfchMqNKKF5KHq4Zowlojpg0HSg=";
const PEER_PUBLIC: &str = "JPByvQR4sSI1x4Qk+RaD6w5FEpYp7/WUKJRG500zd1g=";
const PRESHARED: &str = "AAyoE3rsfTsj9mFcCCRTil/f6nToqlr5GTCDcCLE+hY=";
const SPLIT_PEER_PUBLIC: &str = "Re6wkSUt8wlGLG2dCfl5/H5zH5uZ2fG/2r77dysO6SE=";

/// One captured message: `#` lines are comments, the rest hex bytes.
macro_rules! captured {
    ($name:literal) => {
        parse_hex(include_str!(concat!(
            "../../tests/data/genl/",
            $name,
            ".hex"
        )))
    };
}

fn parse_hex(text: &str) -> Vec<u8> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn pk(s: &str) -> PublicKey {
    PublicKey::from_base64(s).unwrap()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// The genl payload (generic netlink header and attributes) of one whole
/// netlink message, which is what `decode_get_part` takes.
fn genl_payload(msg: &[u8]) -> &[u8] {
    let h = MsgHeader::parse(msg).expect("netlink header");
    assert_eq!(h.len, msg.len(), "one whole message per file");
    &msg[NLMSG_HDRLEN..]
}

// ---- attribute trees ---------------------------------------------------------

/// An attribute: its type as sent (`NLA_F_NESTED` included) and its payload,
/// parsed into children when nested.
#[derive(Clone, PartialEq, Eq)]
struct Attr {
    ty: u16,
    val: Val,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Bytes(Vec<u8>),
    Nest(Vec<Attr>),
}

impl std::fmt::Debug for Attr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nested = if self.ty & NLA_F_NESTED != 0 {
            "N|"
        } else {
            ""
        };
        match &self.val {
            Val::Bytes(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                write!(f, "{nested}{} = {hex}", self.ty & !NLA_F_NESTED)
            }
            Val::Nest(c) => {
                write!(f, "{nested}{} ", self.ty & !NLA_F_NESTED)?;
                f.debug_list().entries(c).finish()
            }
        }
    }
}

/// Parse attributes strictly: lengths must add up and padding must be zero.
fn tree(mut b: &[u8]) -> Vec<Attr> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 4, "trailing bytes {b:02x?}");
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]);
        assert!((4..=b.len()).contains(&len), "attribute length {len}");
        let payload = &b[4..len];
        let next = align4(len).min(b.len());
        assert!(b[len..next].iter().all(|&x| x == 0), "non-zero padding");
        let val = if ty & NLA_F_NESTED != 0 {
            Val::Nest(tree(payload))
        } else {
            Val::Bytes(payload.to_vec())
        };
        out.push(Attr { ty, val });
        b = &b[next..];
    }
    out
}

/// What a SET_DEVICE request says, ignoring what the kernel ignores or
/// assigns per socket: the netlink type (the family id, assigned at module
/// load), sequence number and port id.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    flags: u16,
    genl_header: Vec<u8>,
    attrs: Vec<Attr>,
}

fn request(msg: &[u8]) -> Request {
    let h = MsgHeader::parse(msg).expect("netlink header");
    assert_eq!(h.len, msg.len());
    Request {
        flags: h.flags,
        genl_header: msg[NLMSG_HDRLEN..NLMSG_HDRLEN + 4].to_vec(),
        attrs: tree(&msg[NLMSG_HDRLEN + 4..]),
    }
}

/// Sort attributes where the kernel does not care about their order, keep
/// the order where it does. In `wg_set_device()` (drivers/net/wireguard/
/// netlink.c) the device's attributes, each peer's and each allowed IP's are
/// parsed with `nla_parse`/`nla_parse_nested` into a table indexed by type,
/// so their order is irrelevant (only a repeated type's order would matter:
/// the last wins, and the stable sort keeps it). The members of
/// `WGDEVICE_A_PEERS` and of `WGPEER_A_ALLOWEDIPS` are walked with
/// `nla_for_each_nested` and applied one after another: peers are created,
/// updated and removed in that order, and allowed IPs are inserted in that
/// order (which is the order a later GET dumps them in), so those lists keep
/// their order.
fn canonical(attrs: &[Attr]) -> Vec<Attr> {
    table(attrs, &|ty| match ty {
        WGDEVICE_A_PEERS => Some(&peer_list),
        _ => None,
    })
}

type Children<'a> = &'a dyn Fn(u16) -> Option<&'static dyn Fn(&[Attr]) -> Vec<Attr>>;

/// An attribute table: sorted by type; nests canonicalised per `children`.
fn table(attrs: &[Attr], children: Children<'_>) -> Vec<Attr> {
    let mut out: Vec<Attr> = attrs
        .iter()
        .map(|a| match (&a.val, children(a.ty & !NLA_F_NESTED)) {
            (Val::Nest(c), Some(canon)) => Attr {
                ty: a.ty,
                val: Val::Nest(canon(c)),
            },
            _ => a.clone(),
        })
        .collect();
    out.sort_by_key(|a| a.ty & !NLA_F_NESTED);
    out
}

/// An ordered list whose members are tables.
fn list(attrs: &[Attr], member: &dyn Fn(&[Attr]) -> Vec<Attr>) -> Vec<Attr> {
    attrs
        .iter()
        .map(|a| match &a.val {
            Val::Nest(c) => Attr {
                ty: a.ty,
                val: Val::Nest(member(c)),
            },
            Val::Bytes(_) => a.clone(),
        })
        .collect()
}

fn peer_list(attrs: &[Attr]) -> Vec<Attr> {
    list(attrs, &peer)
}

fn peer(attrs: &[Attr]) -> Vec<Attr> {
    table(attrs, &|ty| match ty {
        WGPEER_A_ALLOWEDIPS => Some(&allowed_ip_list),
        _ => None,
    })
}

fn allowed_ip_list(attrs: &[Attr]) -> Vec<Attr> {
    list(attrs, &|a| table(a, &|_| None))
}

/// The peers of a request's attribute tree (each a list of attributes).
fn peers_of(attrs: &[Attr]) -> Vec<Vec<Attr>> {
    let peers = attrs
        .iter()
        .find(|a| a.ty & !NLA_F_NESTED == WGDEVICE_A_PEERS)
        .expect("WGDEVICE_A_PEERS");
    let Val::Nest(peers) = &peers.val else {
        panic!("WGDEVICE_A_PEERS not nested")
    };
    peers
        .iter()
        .map(|p| match &p.val {
            Val::Nest(c) => c.clone(),
            Val::Bytes(_) => panic!("peer not nested"),
        })
        .collect()
}

fn types(attrs: &[Attr]) -> Vec<u16> {
    attrs.iter().map(|a| a.ty & !NLA_F_NESTED).collect()
}

// ---- encoder -----------------------------------------------------------------

/// What `wg set wg0 private-key F listen-port 51820 fwmark 0x42 peer PUB
/// preshared-key F2 endpoint 10.1.2.3:51820 persistent-keepalive 25
/// allowed-ips 10.99.0.0/24,fd00::/64` asks for, in the crate's terms
/// (`wg set ... allowed-ips` replaces the peer's allowed IPs).
fn set_device_config() -> DeviceConfig {
    DeviceConfig::new()
        .private_key(PrivateKey::from_base64(DEV_PRIVATE).unwrap())
        .listen_port(51820)
        .fwmark(0x42)
        .peer(
            PeerConfig::new(pk(PEER_PUBLIC))
                .preshared_key(PresharedKey::from_base64(PRESHARED).unwrap())
                .endpoint("10.1.2.3:51820".parse().unwrap())
                .persistent_keepalive(Duration::from_secs(25))
                .allowed_ips([net("10.99.0.0/24"), net("fd00::/64")])
                .replace_allowed_ips(),
        )
}

/// Our one SET_DEVICE message for `cfg` (any family id: it is ignored).
fn ours(cfg: &DeviceConfig) -> Vec<u8> {
    let msgs = encode_set(0x7777, &DevRef::Name("wg0".into()), cfg, MAX_REQUEST, || 1);
    assert_eq!(msgs.len(), 1, "a small configuration is one message");
    msgs[0].to_vec()
}

#[test]
fn set_device_request_is_what_wg_sends() {
    let wg = request(&captured!("set-device.1.request"));
    let ours = request(&ours(&set_device_config()));
    assert_eq!(wg.flags, NLM_F_REQUEST | NLM_F_ACK);
    assert_eq!(wg.genl_header, [WG_CMD_SET_DEVICE, WG_GENL_VERSION, 0, 0]);
    // Same flags, command, version, and the same attributes with the same
    // payloads, where only the order the kernel ignores is canonicalised.
    assert_eq!(ours.flags, wg.flags);
    assert_eq!(ours.genl_header, wg.genl_header);
    assert_eq!(canonical(&ours.attrs), canonical(&wg.attrs));

    // The one difference, harmless (a peer's attributes form a table, see
    // `canonical`): wg puts WGPEER_A_FLAGS after the peer's other scalars, we
    // put it right after the public key. Asserted exactly, so any other
    // change of order shows up here.
    assert_eq!(
        types(&wg.attrs),
        [
            WGDEVICE_A_IFNAME,
            WGDEVICE_A_PRIVATE_KEY,
            WGDEVICE_A_LISTEN_PORT,
            WGDEVICE_A_FWMARK,
            WGDEVICE_A_PEERS
        ]
    );
    assert_eq!(types(&ours.attrs), types(&wg.attrs));
    let (wg_peer, our_peer) = (&peers_of(&wg.attrs)[0], &peers_of(&ours.attrs)[0]);
    assert_eq!(
        types(wg_peer),
        [
            WGPEER_A_PUBLIC_KEY,
            WGPEER_A_PRESHARED_KEY,
            WGPEER_A_ENDPOINT,
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
            WGPEER_A_FLAGS,
            WGPEER_A_ALLOWEDIPS
        ]
    );
    assert_eq!(
        types(our_peer),
        [
            WGPEER_A_PUBLIC_KEY,
            WGPEER_A_FLAGS,
            WGPEER_A_PRESHARED_KEY,
            WGPEER_A_ENDPOINT,
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
            WGPEER_A_ALLOWEDIPS
        ]
    );
    // Moving our flags to wg's place gives wg's request attribute for
    // attribute, in wg's order, down to the allowed IPs' members.
    let mut moved = our_peer.clone();
    let flags = moved.remove(1);
    moved.insert(4, flags);
    assert_eq!(&moved, wg_peer);
    assert_eq!(ours.attrs[..4], wg.attrs[..4]);
}

#[test]
fn remove_peer_request_is_what_wg_sends() {
    let wg = request(&captured!("remove-peer.1.request"));
    let ours = request(&ours(
        &DeviceConfig::new().peer(PeerConfig::removal(pk(PEER_PUBLIC))),
    ));
    // No difference at all, not even in order: IFNAME, then PEERS holding
    // one peer of PUBLIC_KEY and FLAGS = WGPEER_F_REMOVE_ME.
    assert_eq!(ours, wg);
    assert_eq!(types(&wg.attrs), [WGDEVICE_A_IFNAME, WGDEVICE_A_PEERS]);
    let peer = &peers_of(&wg.attrs)[0];
    assert_eq!(types(peer), [WGPEER_A_PUBLIC_KEY, WGPEER_A_FLAGS]);
    assert_eq!(
        peer[1].val,
        Val::Bytes(WGPEER_F_REMOVE_ME.to_ne_bytes().to_vec())
    );
}

/// The comparison itself must see the faults it is there to catch.
#[test]
fn comparison_catches_a_wrong_or_missing_attribute() {
    let wg = canonical(&request(&captured!("set-device.1.request")).attrs);
    let mut cfg = set_device_config();
    cfg.fwmark = Some(0x43);
    assert_ne!(canonical(&request(&ours(&cfg)).attrs), wg);
    let mut cfg = set_device_config();
    cfg.peers[0].endpoint = None;
    assert_ne!(canonical(&request(&ours(&cfg)).attrs), wg);
    let mut cfg = set_device_config();
    cfg.peers[0].allowed_ips.reverse();
    assert_ne!(canonical(&request(&ours(&cfg)).attrs), wg);
}

// ---- decoder -----------------------------------------------------------------

/// Decode every data message of a captured dump; check the dump's framing.
fn decode_dump(parts: &[Vec<u8>], done: &[u8]) -> Device {
    let mut dev = Device::default();
    for m in parts {
        let h = MsgHeader::parse(m).unwrap();
        assert_eq!(
            h.flags & crate::netlink::NLM_F_MULTI,
            crate::netlink::NLM_F_MULTI
        );
        let genl = genl_payload(m);
        assert_eq!(genl[..2], [WG_CMD_GET_DEVICE, WG_GENL_VERSION]);
        decode_get_part(genl, &mut dev).unwrap();
    }
    assert_eq!(
        MsgHeader::parse(done).unwrap().ty,
        crate::netlink::NLMSG_DONE
    );
    dev
}

#[test]
fn kernel_get_reply_decodes_to_what_wg_set() {
    let reply = captured!("get-device.2.reply");
    let dev = decode_dump(
        std::slice::from_ref(&reply),
        &captured!("get-device.3.done"),
    );
    let private = PrivateKey::from_base64(DEV_PRIVATE).unwrap();
    let mut peer = Peer::new(pk(PEER_PUBLIC));
    peer.preshared_key = Some(PresharedKey::from_base64(PRESHARED).unwrap());
    peer.endpoint = Some("10.1.2.3:51820".parse().unwrap());
    peer.allowed_ips = vec![net("10.99.0.0/24"), net("fd00::/64")];
    peer.persistent_keepalive = Some(Duration::from_secs(25));
    // Never shook hands, nothing sent or received (the link is down).
    peer.last_handshake = None;
    peer.rx_bytes = 0;
    peer.tx_bytes = 0;
    let want = Device {
        private_key: Some(private.clone()),
        // The kernel's own derivation of the public key.
        public_key: Some(pk(DEV_PUBLIC)),
        listen_port: 51820,
        fwmark: 0x42,
        peers: vec![peer],
    };
    assert_eq!(dev, want);
    // And ours agrees with the kernel's.
    assert_eq!(private.public_key(), pk(DEV_PUBLIC));

    // The zeros were really sent (not just absent): a zero timespec, zero
    // counters, and the protocol version we do not read.
    let peer = &peers_of(&tree(&genl_payload(&reply)[4..]))[0];
    let get = |ty| {
        peer.iter()
            .find(|a| a.ty == ty)
            .map(|a| a.val.clone())
            .unwrap_or_else(|| panic!("peer attribute {ty} missing"))
    };
    assert_eq!(get(WGPEER_A_LAST_HANDSHAKE_TIME), Val::Bytes(vec![0; 16]));
    assert_eq!(get(WGPEER_A_RX_BYTES), Val::Bytes(vec![0; 8]));
    assert_eq!(get(WGPEER_A_TX_BYTES), Val::Bytes(vec![0; 8]));
    assert_eq!(get(10), Val::Bytes(1u32.to_ne_bytes().to_vec())); // WGPEER_A_PROTOCOL_VERSION
}

#[test]
fn kernel_get_reply_without_peers() {
    let dev = decode_dump(
        &[captured!("get-device-no-peers.2.reply")],
        &captured!("get-device-no-peers.3.done"),
    );
    let private = PrivateKey::from_base64(DEV_PRIVATE).unwrap();
    assert_eq!(
        dev,
        Device {
            private_key: Some(private),
            public_key: Some(pk(DEV_PUBLIC)),
            listen_port: 51820,
            fwmark: 0x42,
            peers: vec![],
        }
    );
}

/// The kernel split one peer's 400 allowed IPs over three dump messages,
/// repeating the device's attributes in each and continuing the peer under
/// its public key alone: they merge back into one peer, in order.
#[test]
fn kernel_split_dump_merges_into_one_peer() {
    let parts = [
        captured!("get-device-split.2.reply"),
        captured!("get-device-split.3.reply"),
        captured!("get-device-split.4.reply"),
    ];
    for p in &parts {
        let peers = peers_of(&tree(&genl_payload(p)[4..]));
        assert_eq!(peers.len(), 1, "each part carries (a piece of) the peer");
    }
    let continued = peers_of(&tree(&genl_payload(&parts[1])[4..])).remove(0);
    assert_eq!(
        types(&continued),
        [WGPEER_A_PUBLIC_KEY, WGPEER_A_ALLOWEDIPS]
    );

    let dev = decode_dump(&parts, &captured!("get-device-split.5.done"));
    assert_eq!(dev.private_key, None);
    assert_eq!(dev.public_key, None);
    assert_eq!((dev.listen_port, dev.fwmark), (0, 0));
    assert_eq!(dev.peers.len(), 1);
    let peer = &dev.peers[0];
    assert_eq!(peer.public_key, pk(SPLIT_PEER_PUBLIC));
    assert_eq!(peer.preshared_key, None);
    assert_eq!(peer.endpoint, None);
    assert_eq!(peer.persistent_keepalive, None);
    let want: Vec<IpNetwork> = (0..400u32)
        .map(|i| IpNetwork::new([10, 200, (i / 256) as u8, (i % 256) as u8].into(), 32).unwrap())
        .collect();
    assert_eq!(peer.allowed_ips, want);
}

/// wg's GET_DEVICE request (flags REQUEST|ACK|DUMP, command 0, version 1,
/// the interface by name) is what our `encode_get` writes.
#[test]
fn get_device_request_is_what_wg_sends() {
    let wg = request(&captured!("get-device.1.request"));
    let ours = request(&encode_get(0x7777, &DevRef::Name("wg0".into()), 1));
    assert_eq!(ours.flags, wg.flags);
    assert_eq!(ours.genl_header, wg.genl_header);
    assert_eq!(ours.attrs, wg.attrs);
    assert_eq!(wg.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP);
    assert_eq!(wg.genl_header, [WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0, 0]);
    assert_eq!(
        wg.attrs,
        [Attr {
            ty: WGDEVICE_A_IFNAME,
            val: Val::Bytes(b"wg0\0".to_vec())
        }]
    );
}
