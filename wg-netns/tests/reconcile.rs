//! The long-lived user's API in real namespaces: ensure / verify against
//! drift made behind the library's back, stats, list, a handle shared by
//! threads, a kernel handle surviving a rename, and teardown from a record.
//! Runs on the backend under test (userspace on the host, kernel in the qemu
//! guest).

use std::sync::Arc;
use std::time::Duration;

use wg_netns::{
    list_devices, AttachmentRecord, Backend, Birthplace, DeviceConfig, Drift, InterfaceSpec,
    IpNetwork, ListedDevice, PeerConfig, PrivateKey, Route, Rtnl, SocketNamespace, Userspace,
};
use wg_netns_testkit::*;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

#[test]
fn ensure_repairs_what_verify_names() {
    let Some(backend) = environment("ensure_repairs_what_verify_names") else {
        return;
    };
    let (node, pod) = (TestNs::new("rnode"), TestNs::new("rpod"));
    let birth = ifname("wgtb");
    let _guard = BirthGuard {
        ns: &node,
        birth: birth.clone(),
        backend: backend.clone(),
    };
    let (peer1, peer2) = (
        PrivateKey::generate().unwrap().public_key(),
        PrivateKey::generate().unwrap().public_key(),
    );
    let spec = InterfaceSpec::new(birth.clone(), wg_netns::IfName::new("wg0").unwrap())
        .device(
            DeviceConfig::new()
                .private_key(PrivateKey::generate().unwrap())
                .listen_port(51822)
                .replace_peers()
                .peer(
                    PeerConfig::new(peer1)
                        .allowed_ip(net("10.61.1.0/24"))
                        .persistent_keepalive(Duration::from_secs(25)),
                )
                .peer(PeerConfig::new(peer2).allowed_ip(net("10.61.2.0/24"))),
        )
        .address(net("10.60.0.2/24"))
        .route(Route::new(net("10.61.0.0/16")))
        .mtu(1380);
    let place = Arc::new(Birthplace::new(&node.ns, &pod.ns, &backend).unwrap());

    // Absent: verify says so; ensure creates; then nothing to do.
    assert_eq!(
        place.verify(&spec).unwrap(),
        vec![Drift::Missing {
            interface: spec.name.clone()
        }]
    );
    let made = place.ensure(&spec).unwrap();
    assert!(made.created);
    assert_eq!(place.verify(&spec).unwrap(), vec![]);
    let again = place.ensure(&spec).unwrap();
    assert!(!again.changed(), "{again:?}");

    // Drift behind the library's back: a peer's allowed IPs, a peer
    // removed, an address gone and an extra one, the MTU, the link down, the
    // route deleted.
    let a = &made.attachment;
    let dev = place.device(a).unwrap();
    dev.set(
        &DeviceConfig::new()
            .peer(
                PeerConfig::new(peer1)
                    .replace_allowed_ips()
                    .allowed_ip(net("10.99.9.0/24")),
            )
            .peer(PeerConfig::removal(peer2)),
    )
    .unwrap();
    let rtnl = Rtnl::open(&pod.ns).unwrap();
    rtnl.del_route(&Route::new(net("10.61.0.0/16")).dev(a.index))
        .unwrap();
    rtnl.del_address(a.index, net("10.60.0.2/24")).unwrap();
    rtnl.add_address(a.index, net("10.60.7.7/24")).unwrap();
    rtnl.set_mtu(a.index, 1300).unwrap();
    rtnl.set_up(a.index, false).unwrap();

    let drift = place.verify(&spec).unwrap();
    let text: Vec<String> = drift.iter().map(|d| d.to_string()).collect();
    for want in [
        Drift::PeerMissing { peer: peer2 },
        Drift::AddressMissing {
            address: net("10.60.0.2/24"),
        },
        Drift::AddressUnexpected {
            address: net("10.60.7.7/24"),
        },
        Drift::Mtu {
            have: 1300,
            want: 1380,
        },
        Drift::Down,
        Drift::RouteMissing {
            destination: net("10.61.0.0/16"),
            table: wg_netns::TABLE_MAIN,
        },
    ] {
        assert!(drift.contains(&want), "{want} not in {text:?}");
    }
    assert!(
        drift
            .iter()
            .any(|d| matches!(d, Drift::PeerAllowedIps { peer, .. } if *peer == peer1)),
        "{text:?}"
    );
    assert_eq!(drift.len(), 7, "{text:?}");

    // verify changed nothing; ensure repairs exactly that, from any thread.
    assert_eq!(place.verify(&spec).unwrap(), drift);
    let fixed = std::thread::spawn({
        let (place, spec) = (place.clone(), spec.clone());
        move || place.ensure(&spec).unwrap()
    })
    .join()
    .unwrap();
    assert!(!fixed.created && fixed.changed());
    assert_eq!(fixed.mtu, Some(1380));
    assert!(fixed.brought_up);
    assert_eq!(fixed.addresses_added, vec![net("10.60.0.2/24")]);
    assert_eq!(fixed.addresses_removed, vec![net("10.60.7.7/24")]);
    assert_eq!(fixed.routes.len(), 1);
    assert_eq!(fixed.device.peers.len(), 2, "{:?}", fixed.device);
    assert_eq!(place.verify(&spec).unwrap(), vec![]);

    // Many threads verifying through one shared place at once.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (place, spec) = (place.clone(), spec.clone());
            std::thread::spawn(move || {
                for _ in 0..10 {
                    assert_eq!(place.verify(&spec).unwrap(), vec![]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    // Stats: the peers and their allowed IPs, no key material.
    let stats = place.device(a).unwrap().stats().unwrap();
    assert_eq!(stats.listen_port, 51822);
    assert_eq!(
        stats.peer(&peer1).unwrap().allowed_ips,
        vec![net("10.61.1.0/24")]
    );
    assert_eq!(
        stats.peer(&peer1).unwrap().persistent_keepalive,
        Some(Duration::from_secs(25))
    );

    // Listed where it lives: the kernel interface in the pod, the userspace
    // daemon in the node (where its socket is).
    let listed = place.list().unwrap();
    match &backend {
        Backend::Kernel => {
            assert!(listed.contains(&ListedDevice::Kernel {
                index: a.index,
                name: spec.name.clone()
            }));
            assert_eq!(list_devices(&pod.ns, &backend).unwrap(), listed);
        }
        Backend::Userspace(_) | Backend::Engine(_) => {
            assert!(
                listed.iter().any(|d| matches!(d, ListedDevice::Userspace { socket_name, .. } | ListedDevice::Engine { socket_name, .. } if socket_name == birth.as_str())),
                "{listed:?}"
            );
            assert_eq!(list_devices(&node.ns, &backend).unwrap(), listed);
            assert!(list_devices(&pod.ns, &backend).unwrap().is_empty());
        }
    }

    // A kernel handle by index survives a rename.
    if backend == Backend::Kernel {
        let dev = place.device(a).unwrap();
        rtnl.set_up(a.index, false).unwrap();
        rtnl.rename(a.index, &wg_netns::IfName::new("wg-renamed").unwrap())
            .unwrap();
        assert_eq!(dev.stats().unwrap().listen_port, 51822);
        rtnl.rename(a.index, &spec.name).unwrap();
        rtnl.set_up(a.index, true).unwrap();
    }

    assert!(place.detach(&spec.name, &spec.birth_name).unwrap());
    assert!(!place.detach(&spec.name, &spec.birth_name).unwrap());
}

/// Teardown from the record alone, once the pod's namespace is gone: from
/// the node for a socket in the node, and through the daemon for a
/// userspace socket born inside the (now unmounted) pod.
#[test]
fn a_record_detaches_whatever_is_left() {
    let Some(backend) = environment("a_record_detaches_whatever_is_left") else {
        return;
    };
    for socket in [SocketNamespace::Host, SocketNamespace::Container] {
        let node = TestNs::new("dnode");
        let pod = TestNs::new("dpod");
        let birth = ifname("wgtd");
        let _guard = BirthGuard {
            ns: &node,
            birth: birth.clone(),
            backend: backend.clone(),
        };
        let spec = InterfaceSpec::new(birth.clone(), wg_netns::IfName::new("wg0").unwrap())
            .device(DeviceConfig::new().private_key(PrivateKey::generate().unwrap()))
            .address(net("10.62.0.2/24"));
        let place = Birthplace::for_container(&node.ns, &pod.ns, socket, &backend).unwrap();
        let a = place.attach(&spec).unwrap();
        let record = AttachmentRecord {
            interface: a.name.clone(),
            birth_name: a.birth_name.clone(),
            netns: format!("/var/run/netns/{}", pod.name).into(),
            socket_namespace: socket,
            backend: a.kind,
            userspace_implementation: match &backend {
                Backend::Userspace(u) => Some(u.program.clone()),
                Backend::Kernel | Backend::Engine(_) => None,
            },
        };
        // The runtime lets go of the pod: unmounted, our handles dropped.
        // (A userspace daemon born in the pod keeps that namespace alive.)
        drop(place);
        pod.release();
        let removed = record.detach(&node.ns, &Userspace::default()).unwrap();
        let daemon_kept_it = socket == SocketNamespace::Container && backend != Backend::Kernel;
        if daemon_kept_it {
            assert!(removed, "reached through the daemon");
        }
        let sock = format!("/var/run/wireguard/{birth}.sock");
        assert!(
            eventually(Duration::from_secs(5), || !std::path::Path::new(&sock)
                .exists()
                && !node.link_names().contains(&birth.to_string())),
            "{socket}: leftovers of {birth}"
        );
        // Idempotent.
        assert!(!record.detach(&node.ns, &Userspace::default()).unwrap());
    }
}

/// Routes a caller keeps through an interface follow a known state both
/// ways (`Rtnl::sync_routes`, what the node agent uses): newly wanted ones
/// are added, ones no longer wanted deleted (one already gone is fine), a
/// route in both is not sent again, and a route nobody listed, through the
/// same interface, is left alone.
#[test]
fn routes_follow_a_known_state_both_ways() {
    let Some(backend) = environment("routes_follow_a_known_state_both_ways") else {
        return;
    };
    let (node, pod) = (TestNs::new("snode"), TestNs::new("spod"));
    let birth = ifname("wgts");
    let _guard = BirthGuard {
        ns: &node,
        birth: birth.clone(),
        backend: backend.clone(),
    };
    let spec = InterfaceSpec::new(birth.clone(), wg_netns::IfName::new("wg0").unwrap())
        .device(DeviceConfig::new().private_key(PrivateKey::generate().unwrap()))
        .address(net("10.63.0.2/24"));
    let place = Birthplace::new(&node.ns, &pod.ns, &backend).unwrap();
    let idx = place.ensure(&spec).unwrap().attachment.index;
    let rtnl = Rtnl::open(&pod.ns).unwrap();
    let through = |oif: u32| -> Vec<IpNetwork> {
        let mut v: Vec<IpNetwork> = rtnl
            .routes(Some(wg_netns::TABLE_MAIN))
            .unwrap()
            .into_iter()
            .filter(|r| r.oif == Some(oif) && r.destination.is_ipv4())
            .map(|r| r.destination)
            .collect();
        v.sort();
        v
    };
    let dests = |rs: &[Route]| -> Vec<IpNetwork> { rs.iter().map(|r| r.destination).collect() };
    let (a, b, c) = (
        Route::new(net("10.64.1.0/24")),
        Route::new(net("10.64.2.0/24")),
        Route::new(net("10.64.3.0/24")),
    );
    // Someone else's route through the same interface.
    rtnl.replace_route(&Route::new(net("10.65.0.0/16")).dev(idx))
        .unwrap();

    let s = rtnl.sync_routes(idx, &[], &[a.clone(), b.clone()]).unwrap();
    assert_eq!(dests(&s.added), vec![a.destination, b.destination]);
    assert!(s.removed.is_empty());
    assert_eq!(
        through(idx),
        vec![
            net("10.63.0.0/24"),
            net("10.64.1.0/24"),
            net("10.64.2.0/24"),
            net("10.65.0.0/16")
        ]
    );

    let s = rtnl
        .sync_routes(idx, &[a.clone(), b.clone()], &[b.clone(), c.clone()])
        .unwrap();
    assert_eq!(dests(&s.added), vec![c.destination]);
    assert_eq!(dests(&s.removed), vec![a.destination]);
    assert_eq!(
        through(idx),
        vec![
            net("10.63.0.0/24"),
            net("10.64.2.0/24"),
            net("10.64.3.0/24"),
            net("10.65.0.0/16")
        ]
    );

    // A route of the previous state already gone: deleting it is fine.
    rtnl.del_route(&c.clone().dev(idx)).unwrap();
    let s = rtnl
        .sync_routes(idx, &[b.clone(), c.clone()], std::slice::from_ref(&b))
        .unwrap();
    assert!(s.added.is_empty());
    assert_eq!(dests(&s.removed), vec![c.destination]);
    // The same state: nothing sent.
    assert!(rtnl
        .sync_routes(idx, std::slice::from_ref(&b), std::slice::from_ref(&b))
        .unwrap()
        .is_empty());
    assert_eq!(
        through(idx),
        vec![
            net("10.63.0.0/24"),
            net("10.64.2.0/24"),
            net("10.65.0.0/16")
        ]
    );
}
