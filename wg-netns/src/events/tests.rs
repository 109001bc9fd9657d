use super::*;
use crate::netlink::NLMSG_DONE;
use proptest::prelude::*;

const IFF_UP: u32 = 1;

/// One netlink message: header, then `body`.
fn message(ty: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m.resize(crate::netlink::align4(m.len()), 0);
    m
}

fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&ty.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(crate::netlink::align4(a.len()), 0);
    a
}

/// An `ifinfomsg` with IFLA_IFNAME, IFLA_MTU and IFLA_LINKINFO/KIND.
fn link_body(family: u8, index: i32, flags: u32, change: u32, name: &str, kind: &str) -> Vec<u8> {
    let mut b = vec![family, 0, 1, 0];
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&change.to_ne_bytes());
    b.extend(attr(3, format!("{name}\0").as_bytes())); // IFLA_IFNAME
    b.extend(attr(4, &1420u32.to_ne_bytes())); // IFLA_MTU
    let info = attr(1, format!("{kind}\0").as_bytes()); // IFLA_INFO_KIND
    b.extend(attr(18, &info)); // IFLA_LINKINFO (the kernel sets no NLA_F_NESTED)
    b
}

fn nsid_body(id: i32) -> Vec<u8> {
    let mut b = vec![0, 0, 0, 0];
    b.extend(attr(NETNSA_NSID, &id.to_ne_bytes()));
    b
}

fn decode(bytes: &[u8], nsid: Option<i32>) -> Vec<LinkEvent> {
    let mut out = VecDeque::new();
    decode_datagram(bytes, nsid, &mut out);
    out.into()
}

#[test]
fn added_changed_removed() {
    let up = IFF_UP | IFF_LOWER_UP;
    let mut dgram = message(
        RTM_NEWLINK,
        &link_body(0, 7, 0, IFI_CHANGE_ALL, "wg0", "wireguard"),
    );
    dgram.extend(message(
        RTM_NEWLINK,
        &link_body(0, 7, up, IFF_UP, "wg0", "wireguard"),
    ));
    dgram.extend(message(
        RTM_DELLINK,
        &link_body(0, 7, 0, IFI_CHANGE_ALL, "wg0", "wireguard"),
    ));
    let ev = decode(&dgram, Some(3));
    assert_eq!(ev.len(), 3, "{ev:?}");
    let LinkEvent::Added(a) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        a.link,
        Link {
            index: 7,
            name: "wg0".into(),
            kind: Some("wireguard".into()),
            mtu: 1420,
            up: false,
            alias: None,
        }
    );
    assert_eq!((a.lower_up, a.nsid), (false, Some(3)));
    let LinkEvent::Changed(c) = &ev[1] else {
        panic!("{ev:?}")
    };
    assert!(c.link.up && c.lower_up);
    let LinkEvent::Removed(r) = &ev[2] else {
        panic!("{ev:?}")
    };
    assert_eq!((r.link.index, r.link.name.as_str()), (7, "wg0"));
}

#[test]
fn bridge_port_notifications_are_not_link_removals() {
    let dgram = message(
        RTM_DELLINK,
        &link_body(7 /* AF_BRIDGE */, 7, 0, 0, "veth0", "veth"),
    );
    assert_eq!(decode(&dgram, None), vec![]);
}

#[test]
fn nsid_messages_only_from_the_own_namespace() {
    let mut dgram = message(RTM_NEWNSID, &nsid_body(4));
    dgram.extend(message(RTM_DELNSID, &nsid_body(4)));
    assert_eq!(
        decode(&dgram, None),
        vec![
            LinkEvent::NsidAssigned { nsid: 4 },
            LinkEvent::NamespaceGone { nsid: 4 }
        ]
    );
    // An id in a peer namespace's own table is not one of ours.
    assert_eq!(decode(&dgram, Some(2)), vec![]);
}

#[test]
fn errors_overruns_and_junk() {
    let mut enobufs = (-ENOBUFS).to_ne_bytes().to_vec();
    enobufs.extend(vec![0; 16]);
    assert_eq!(
        decode(&message(NLMSG_ERROR, &enobufs), None),
        vec![LinkEvent::Overrun]
    );
    let mut other = (-22i32).to_ne_bytes().to_vec();
    other.extend(vec![0; 16]);
    assert_eq!(decode(&message(NLMSG_ERROR, &other), None), vec![]);
    assert_eq!(decode(&message(NLMSG_DONE, &[0; 4]), None), vec![]);
    assert_eq!(
        decode(&message(NLMSG_OVERRUN, &[]), None),
        vec![LinkEvent::Overrun]
    );
    // A link message too short for its ifinfomsg, a cut header: lost
    // notifications, reported once per datagram.
    let mut bad = message(RTM_NEWLINK, &[0; 8]);
    bad.extend_from_slice(&[1, 2, 3]);
    assert_eq!(decode(&bad, None), vec![LinkEvent::Overrun]);
    // A truncated datagram keeps the messages that arrived whole.
    let mut two = message(RTM_NEWLINK, &link_body(0, 2, 0, 0, "a", "veth"));
    let first = two.len();
    two.extend(message(RTM_NEWLINK, &link_body(0, 3, 0, 0, "b", "veth")));
    let ev = decode(&two[..first + 20], None);
    assert!(matches!(&ev[..], [LinkEvent::Changed(u), LinkEvent::Overrun] if u.link.name == "a"));
}

#[test]
fn control_message_nsid() {
    const WORD: usize = std::mem::size_of::<usize>();
    let cmsg = |level: i32, ty: i32, data: &[u8]| {
        let mut c = (WORD + 8 + data.len()).to_ne_bytes().to_vec();
        c.extend_from_slice(&level.to_ne_bytes());
        c.extend_from_slice(&ty.to_ne_bytes());
        c.extend_from_slice(data);
        c.resize((c.len() + WORD - 1) & !(WORD - 1), 0);
        c
    };
    let mut buf = cmsg(
        SOL_NETLINK,
        3, /* NETLINK_PKTINFO */
        &9u32.to_ne_bytes(),
    );
    buf.extend(cmsg(
        SOL_NETLINK,
        NETLINK_LISTEN_ALL_NSID,
        &5i32.to_ne_bytes(),
    ));
    buf.resize(CMSG_BUF, 0);
    assert_eq!(listen_all_nsid(&buf), Some(5));
    assert_eq!(listen_all_nsid(&[0; CMSG_BUF]), None);
    assert_eq!(listen_all_nsid(&buf[..WORD + 10]), None);
}

proptest! {
    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), nsid in any::<Option<i32>>()) {
        let _ = decode(&bytes, nsid);
        let _ = listen_all_nsid(&bytes);
    }

    /// Valid headers around garbage bodies reach the link and nsid decoders.
    #[test]
    fn garbage_bodies_never_panic(
        parts in proptest::collection::vec(
            (prop_oneof![Just(RTM_NEWLINK), Just(RTM_DELLINK), Just(RTM_NEWNSID), Just(RTM_DELNSID), Just(NLMSG_ERROR), any::<u16>()],
             proptest::collection::vec(any::<u8>(), 0..200)),
            0..6),
    ) {
        let mut dgram = Vec::new();
        for (ty, body) in &parts {
            dgram.extend(message(*ty, body));
        }
        for ev in decode(&dgram, None) {
            if let Some(u) = ev.link() {
                prop_assert!(u.link.name.len() <= dgram.len());
            }
        }
    }

    /// Real link messages with garbage attributes after the ifinfomsg.
    #[test]
    fn garbage_attributes_never_panic(attrs in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut body = link_body(0, 1, 0, 0, "x", "veth");
        body.truncate(IFINFOMSG_LEN);
        body.extend(attrs);
        let _ = decode(&message(RTM_NEWLINK, &body), Some(1));
    }
}
