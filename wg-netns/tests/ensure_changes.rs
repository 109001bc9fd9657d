//! What `Birthplace::ensure` reports, one repair at a time, on real
//! WireGuard in real namespaces (tier b: wireguard-go; tier c: kernel).
//! `Ensured::changed` is how a caller (the node agent, a CNI CHECK) learns
//! that something was repaired: each kind of repair on its own must count,
//! and only what was repaired may be reported.

use std::time::Duration;

use wg_netns::{
    owner_alias, Birthplace, DeviceConfig, Ensured, IfName, InterfaceSpec, IpNetwork, PeerConfig,
    PrivateKey, Route, Rtnl,
};
use wg_netns_testkit::*;

fn net(s: &str) -> IpNetwork {
    s.parse().expect("network literal")
}

/// The kinds of repair an `Ensured` reports.
fn repairs(e: &Ensured) -> Vec<&'static str> {
    let mut out = Vec::new();
    if e.created {
        out.push("created");
    }
    if !e.device.is_empty() {
        out.push("device");
    }
    if !e.addresses_added.is_empty() {
        out.push("addresses added");
    }
    if !e.addresses_removed.is_empty() {
        out.push("addresses removed");
    }
    if !e.routes.is_empty() {
        out.push("routes");
    }
    if e.mtu.is_some() {
        out.push("mtu");
    }
    if e.brought_up {
        out.push("brought up");
    }
    out
}

#[test]
fn each_repair_alone_is_a_change() {
    let Some(backend) = environment("each_repair_alone_is_a_change") else {
        return;
    };
    let (node, pod) = (TestNs::new("enode"), TestNs::new("epod"));
    let birth = ifname("wgte");
    let _guard = BirthGuard {
        ns: &node,
        birth: birth.clone(),
        backend: backend.clone(),
    };
    let peer = PrivateKey::generate().unwrap().public_key();
    let key = PrivateKey::generate().unwrap();
    let spec = InterfaceSpec::new(birth.clone(), IfName::new("wg0").unwrap())
        .device(
            DeviceConfig::new()
                .private_key(key.clone())
                .listen_port(51823)
                .replace_peers()
                .peer(PeerConfig::new(peer).allowed_ip(net("10.63.1.0/24"))),
        )
        .address(net("10.62.0.2/24"))
        // A second address: with the last one gone, the kernel would also
        // drop the routes through the link (see "the link down").
        .address(net("10.62.1.2/24"))
        .route(Route::new(net("10.63.0.0/16")))
        .mtu(1380);
    let place = Birthplace::new(&node.ns, &pod.ns, &backend).unwrap();

    let made = place.ensure(&spec).unwrap();
    assert_eq!(repairs(&made), vec!["created"], "{made:?}");
    assert!(made.changed());
    let nothing = place.ensure(&spec).unwrap();
    assert_eq!(repairs(&nothing), Vec::<&str>::new(), "{nothing:?}");
    assert!(!nothing.changed());

    let index = made.attachment.index;
    let dev = place.device(&made.attachment).unwrap();
    let rtnl = Rtnl::open(&pod.ns).unwrap();
    // Each: break one thing behind the library's back, then ensure.
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "a peer's keepalive",
            Box::new(|| {
                dev.set(
                    &DeviceConfig::new().peer(
                        PeerConfig::new(peer)
                            .update_only()
                            .persistent_keepalive(Duration::from_secs(10)),
                    ),
                )
                .unwrap()
            }),
            vec!["device"],
        ),
        (
            "the private key",
            Box::new(|| {
                dev.set(&DeviceConfig::new().private_key(PrivateKey::generate().unwrap()))
                    .unwrap()
            }),
            vec!["device"],
        ),
        (
            "an address removed",
            Box::new(|| rtnl.del_address(index, net("10.62.0.2/24")).unwrap()),
            vec!["addresses added"],
        ),
        (
            "an address added",
            Box::new(|| rtnl.add_address(index, net("10.62.9.9/24")).unwrap()),
            vec!["addresses removed"],
        ),
        (
            "the route deleted",
            Box::new(|| {
                rtnl.del_route(&Route::new(net("10.63.0.0/16")).dev(index))
                    .unwrap()
            }),
            vec!["routes"],
        ),
        (
            "the MTU",
            Box::new(|| rtnl.set_mtu(index, 1300).unwrap()),
            vec!["mtu"],
        ),
        (
            // Down takes the link's routes with it: both come back.
            "the link down",
            Box::new(|| rtnl.set_up(index, false).unwrap()),
            vec!["routes", "brought up"],
        ),
    ];
    for (what, break_it, want) in cases {
        break_it();
        let e = place.ensure(&spec).unwrap();
        assert_eq!(repairs(&e), want, "{what}: {e:?}");
        assert!(e.changed(), "{what}: a repair that is no change");
        // The attachment returned is the interface as it is now.
        let a = &e.attachment;
        assert_eq!(
            (a.mtu, a.up, a.public_key),
            (1380, true, Some(key.public_key())),
            "{what}: {a:?}"
        );
        let after = place.ensure(&spec).unwrap();
        assert!(!after.changed(), "{what}: not repaired: {after:?}");
        assert_eq!(place.verify(&spec).unwrap(), vec![], "{what}");
    }

    // The owner mark (the link's alias), by which detach knows the link is
    // one it made, is put back when something else overwrote it.
    rtnl.set_alias(index, "not-wg-netns").unwrap();
    place.ensure(&spec).unwrap();
    assert_eq!(
        rtnl.link_by_index(index).unwrap().alias,
        Some(owner_alias(&birth))
    );
}
