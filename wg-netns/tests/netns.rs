//! Integration tests in real network namespaces (tier b; tier c runs the same
//! binary on kernel WireGuard in a qemu guest). Every device is configured
//! only through wg-netns; `wg show dump` and the wireguard-control crate read
//! the result back independently.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use wg_netns::{
    cleanup_birth, Backend, Birthplace, Device, DeviceConfig, IfName, InterfaceSpec, IpNetwork,
    PeerConfig, PresharedKey, PrivateKey, PublicKey, Route, Rtnl, WgDevice,
};
use wg_netns_testkit::*;

const PING_WITHIN: Duration = Duration::from_secs(12);

fn net(s: &str) -> IpNetwork {
    s.parse().expect("network literal")
}

fn state_of(cfg: &DeviceConfig) -> Device {
    let mut d = Device::default();
    d.apply(cfg);
    d
}

/// Compare a device with `wg show NAME dump`.
fn assert_dump_matches(dump: &[Vec<String>], dev: &Device) {
    let iface = &dump[0];
    assert_eq!(
        iface[1],
        dev.public_key.expect("public key").to_base64(),
        "dump public key"
    );
    assert_eq!(iface[2], dev.listen_port.to_string(), "dump listen port");
    let fwmark = if dev.fwmark == 0 {
        "off".to_string()
    } else {
        format!("0x{:x}", dev.fwmark)
    };
    assert_eq!(iface[3], fwmark, "dump fwmark");
    assert_eq!(dump.len() - 1, dev.peers.len(), "dump peer count");
    for line in &dump[1..] {
        let key: PublicKey = line[0].parse().expect("dump peer key");
        let p = dev
            .peer(&key)
            .unwrap_or_else(|| panic!("peer {key} in dump but not in device"));
        let psk = p
            .preshared_key
            .as_ref()
            .map(|k| k.to_base64().to_string())
            .unwrap_or("(none)".into());
        assert_eq!(line[1], psk, "dump preshared key of {key}");
        let ep = p.endpoint.map(|e| e.to_string()).unwrap_or("(none)".into());
        assert_eq!(line[2], ep, "dump endpoint of {key}");
        let dump_ips: BTreeSet<IpNetwork> = if line[3] == "(none)" {
            BTreeSet::new()
        } else {
            line[3].split(',').map(net).collect()
        };
        assert_eq!(
            dump_ips,
            p.allowed_ips.iter().copied().collect(),
            "dump allowed IPs of {key}"
        );
        let ka = p
            .persistent_keepalive
            .map(|d| d.as_secs().to_string())
            .unwrap_or("off".into());
        assert_eq!(line[7], ka, "dump keepalive of {key}");
    }
}

/// Compare a device with what the wireguard-control crate reads.
fn assert_wireguard_control_matches(ns: &TestNs, name: &str, backend: &Backend, dev: &Device) {
    let iname: wireguard_control::InterfaceName = name.parse().expect("interface name");
    let other = match backend {
        Backend::Kernel => ns
            .ns
            .run(|| wireguard_control::Device::get(&iname, wireguard_control::Backend::Kernel))
            .expect("namespace thread"),
        Backend::Userspace(_) | Backend::Engine(_) => {
            wireguard_control::Device::get(&iname, wireguard_control::Backend::Userspace)
        }
    }
    .expect("wireguard-control reads the device");
    assert_eq!(
        other.public_key.map(|k| k.0),
        dev.public_key.map(|k| *k.as_bytes())
    );
    assert_eq!(other.listen_port.unwrap_or(0), dev.listen_port);
    assert_eq!(other.peers.len(), dev.peers.len());
    for p in &other.peers {
        let mine = dev
            .peer(&PublicKey::from_bytes(p.config.public_key.0))
            .expect("peer known to wg-netns");
        assert_eq!(p.config.endpoint, mine.endpoint);
        assert_eq!(
            p.config.preshared_key.as_ref().map(|k| k.0),
            mine.preshared_key.as_ref().map(|k| *k.as_bytes())
        );
        let theirs: BTreeSet<IpNetwork> = p
            .config
            .allowed_ips
            .iter()
            .map(|a| IpNetwork::new(a.address, a.cidr).expect("allowed ip"))
            .collect();
        assert_eq!(theirs, mine.allowed_ips.iter().copied().collect());
        assert_eq!(
            p.config.persistent_keepalive_interval.filter(|s| *s != 0),
            mine.persistent_keepalive.map(|d| d.as_secs() as u16)
        );
    }
}

#[test]
fn two_nodes_dual_stack_tunnel_with_readback() {
    let Some(backend) = environment("two_nodes_dual_stack_tunnel_with_readback") else {
        return;
    };
    let (a, b) = (TestNs::new("a"), TestNs::new("b"));
    let w = wire(&a, &b);
    let x = (std::process::id() % 200 + 10) as u8;
    let (ka, kb) = (
        PrivateKey::generate().unwrap(),
        PrivateKey::generate().unwrap(),
    );
    let psk = PresharedKey::generate().unwrap();
    let (na, nb) = (ifname("wgta"), ifname("wgtb"));

    let cfg_a = DeviceConfig::new()
        .private_key(ka.clone())
        .listen_port(51820)
        .fwmark(0x51)
        .replace_peers()
        .peer(
            PeerConfig::new(kb.public_key())
                .preshared_key(psk.clone())
                .endpoint(format!("{}:51821", w.b_ip).parse().unwrap())
                .allowed_ips([
                    net(&format!("10.99.{x}.2/32")),
                    net(&format!("fd99:{x}::2/128")),
                ])
                .persistent_keepalive(Duration::from_secs(25)),
        );
    let cfg_b = DeviceConfig::new()
        .private_key(kb.clone())
        .listen_port(51821)
        .replace_peers()
        .peer(
            PeerConfig::new(ka.public_key())
                .preshared_key(psk.clone())
                .endpoint(format!("{}:51820", w.a_ip).parse().unwrap())
                .allowed_ips([
                    net(&format!("10.99.{x}.1/32")),
                    net(&format!("fd99:{x}::1/128")),
                ]),
        );
    let spec_a = InterfaceSpec::new(na.clone(), na.clone())
        .device(cfg_a.clone())
        .address(net(&format!("10.99.{x}.1/24")))
        .address(net(&format!("fd99:{x}::1/64")));
    let spec_b = InterfaceSpec::new(nb.clone(), nb.clone())
        .device(cfg_b.clone())
        .address(net(&format!("10.99.{x}.2/24")))
        .address(net(&format!("fd99:{x}::2/64")));
    let att_a = Birthplace::new(&a.ns, &a.ns, &backend)
        .unwrap()
        .attach(&spec_a)
        .expect("attach a");
    Birthplace::new(&b.ns, &b.ns, &backend)
        .unwrap()
        .attach(&spec_b)
        .expect("attach b");
    assert_eq!(att_a.public_key, Some(ka.public_key()));

    assert!(
        a.ping(&format!("10.99.{x}.2"), PING_WITHIN),
        "IPv4 ping through the tunnel"
    );
    assert!(
        a.ping(&format!("fd99:{x}::2"), PING_WITHIN),
        "IPv6 ping through the tunnel"
    );

    // Read back through wg-netns: exactly what was written, plus traffic.
    let dev = Birthplace::new(&a.ns, &a.ns, &backend)
        .unwrap()
        .device(&att_a)
        .unwrap()
        .get()
        .unwrap();
    let mut want = state_of(&cfg_a);
    want.listen_port = 51820;
    assert!(dev.same_config(&want), "read back {dev:?}\nwanted {want:?}");
    assert_eq!(dev.listen_port, 51820);
    assert_eq!(dev.fwmark, 0x51);
    let peer = &dev.peers[0];
    assert!(peer.last_handshake.is_some(), "a handshake happened");
    assert!(
        peer.rx_bytes > 0 && peer.tx_bytes > 0,
        "traffic was counted"
    );
    assert_eq!(
        format!("{:?}", dev).matches(&*ka.to_base64()).count(),
        0,
        "Debug leaks no key"
    );

    // Read back independently.
    if has_wg_tool() {
        assert_dump_matches(&wg_dump(&a, na.as_str()), &dev);
    } else if require_all() {
        panic!("`wg` is required");
    }
    assert_wireguard_control_matches(&a, na.as_str(), &backend, &dev);
}

#[test]
fn birthplace_move_rename_full_tunnel_find_and_detach() {
    let Some(backend) = environment("birthplace_move_rename_full_tunnel_find_and_detach") else {
        return;
    };
    let (node, pod, remote) = (
        TestNs::new("node"),
        TestNs::new("pod"),
        TestNs::new("remote"),
    );
    let w = wire(&node, &remote);
    let x = (std::process::id() % 200 + 10) as u8;
    let (kp, kr) = (
        PrivateKey::generate().unwrap(),
        PrivateKey::generate().unwrap(),
    );
    let birth = ifname("wgtn");
    let wg0 = IfName::new("wg0").unwrap();
    let pod_port = 51900;

    // The pod's interface: born in the node, living in the pod, with a
    // default route through it (allowed IPs 0.0.0.0/0 contain its own address).
    let spec = InterfaceSpec::new(birth.clone(), wg0.clone())
        .device(
            DeviceConfig::new()
                .private_key(kp.clone())
                .listen_port(pod_port)
                .peer(
                    PeerConfig::new(kr.public_key())
                        .endpoint(format!("{}:51820", w.b_ip).parse().unwrap())
                        .allowed_ip(net("0.0.0.0/0")),
                ),
        )
        .address(net(&format!("10.98.{x}.2/24")))
        .route(Route::new(net("0.0.0.0/0")))
        .mtu(1380);
    let place = Birthplace::new(&node.ns, &pod.ns, &backend).unwrap();
    let att = place.attach(&spec).expect("attach");
    assert_eq!(att.name, wg0);
    assert_eq!(att.mtu, 1380);

    let rname = ifname("wgtr");
    Birthplace::new(&remote.ns, &remote.ns, &backend)
        .unwrap()
        .attach(
            &InterfaceSpec::new(rname.clone(), rname.clone())
                .device(
                    DeviceConfig::new()
                        .private_key(kr.clone())
                        .listen_port(51820)
                        .peer(
                            PeerConfig::new(kp.public_key())
                                .endpoint(format!("{}:{pod_port}", w.a_ip).parse().unwrap())
                                .allowed_ip(net(&format!("10.98.{x}.2/32"))),
                        ),
                )
                .address(net(&format!("10.98.{x}.1/24"))),
        )
        .expect("attach remote");

    assert!(
        pod.ping(&format!("10.98.{x}.1"), PING_WITHIN),
        "pod reaches the remote through the tunnel"
    );

    // The interface is in the pod, under its new name, nowhere else.
    assert!(pod.link_names().contains(&"wg0".to_string()));
    let node_links = node.link_names();
    assert!(!node_links.contains(&birth.to_string()) && !node_links.contains(&"wg0".to_string()));
    // The encrypted UDP socket stayed in the node.
    assert!(
        node.udp_ports().contains(&pod_port),
        "UDP socket in the node namespace"
    );
    assert!(
        !pod.udp_ports().contains(&pod_port),
        "no UDP socket in the pod namespace"
    );
    // The default route goes through wg0.
    let routes = Rtnl::open(&pod.ns)
        .unwrap()
        .routes(Some(wg_netns::TABLE_MAIN))
        .unwrap();
    assert!(routes
        .iter()
        .any(|r| r.destination == net("0.0.0.0/0") && r.oif == Some(att.index)));

    // A userspace daemon runs in the foreground, in a session of its own,
    // and is the socket's SO_PEERCRED owner: found without scanning /proc.
    if let Backend::Userspace(u) = &backend {
        let pid = place
            .device(&att)
            .unwrap()
            .daemon_pid()
            .expect("daemon pid");
        assert_eq!(u.daemon_pid(birth.as_str()), Some(pid));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        assert_eq!(fields[3], pid.to_string(), "session leader: {stat}");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        assert!(u.foreground && args.contains(&&b"-f"[..]), "foreground");
    }

    // Found again later, from scratch.
    let found = place.find(&wg0, &birth).unwrap().expect("found");
    assert_eq!(found.index, att.index);
    assert_eq!(found.public_key, Some(kp.public_key()));
    let dev = place.device(&found).unwrap().get().unwrap();
    assert_eq!(dev.listen_port, pod_port);
    assert_eq!(dev.peers.len(), 1);

    // Detach removes everything, and is idempotent.
    assert!(place.detach(&wg0, &birth).unwrap());
    assert!(!pod.link_names().contains(&"wg0".to_string()));
    if let Backend::Userspace(u) = &backend {
        assert!(
            !u.socket_path(birth.as_str()).exists(),
            "control socket removed"
        );
    }
    assert!(!node.udp_ports().contains(&pod_port), "UDP socket closed");
    assert!(!place.detach(&wg0, &birth).unwrap());
    assert!(place.find(&wg0, &birth).unwrap().is_none());
}

#[test]
fn failed_attach_leaves_nothing_behind() {
    let Some(backend) = environment("failed_attach_leaves_nothing_behind") else {
        return;
    };
    let (node, pod) = (TestNs::new("node"), TestNs::new("pod"));
    let birth = ifname("wgtf");
    let spec = InterfaceSpec::new(birth.clone(), IfName::new("wg0").unwrap())
        .device(DeviceConfig::new().private_key(PrivateKey::generate().unwrap()))
        .address(net("10.97.0.2/24"))
        // A gateway that is not on any connected network: the kernel refuses it.
        .route(Route::new(net("10.200.0.0/16")).via("10.123.123.123".parse().unwrap()));
    let err = Birthplace::new(&node.ns, &pod.ns, &backend)
        .unwrap()
        .attach(&spec)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("RTM_NEWROUTE") && msg.contains("10.200.0.0/16"),
        "error names the step: {msg}"
    );
    assert!(
        !pod.link_names().iter().any(|n| n == "wg0"),
        "nothing left in the pod"
    );
    assert!(
        !node.link_names().iter().any(|n| n == birth.as_str()),
        "nothing left in the node"
    );
    if let Backend::Userspace(u) = &backend {
        assert!(
            eventually(Duration::from_secs(5), || !u
                .socket_path(birth.as_str())
                .exists()),
            "no control socket left"
        );
    }
}

#[test]
fn pod_namespace_deleted_then_cleanup() {
    let Some(backend) = environment("pod_namespace_deleted_then_cleanup") else {
        return;
    };
    let node = TestNs::new("node");
    let birth = ifname("wgtd");
    {
        let pod = TestNs::new("pod");
        let spec = InterfaceSpec::new(birth.clone(), IfName::new("wg0").unwrap()).device(
            DeviceConfig::new()
                .private_key(PrivateKey::generate().unwrap())
                .listen_port(51999),
        );
        Birthplace::new(&node.ns, &pod.ns, &backend)
            .unwrap()
            .attach(&spec)
            .expect("attach");
        assert!(node.udp_ports().contains(&51999));
    } // the pod namespace is deleted here, with our interface in it
    cleanup_birth(&node.ns, &birth, &backend).expect("cleanup");
    assert!(
        cleanup_birth(&node.ns, &birth, &backend).is_ok(),
        "idempotent"
    );
    assert!(
        eventually(Duration::from_secs(5), || !node
            .udp_ports()
            .contains(&51999)),
        "socket closed"
    );
    if let Backend::Userspace(u) = &backend {
        assert!(!u.socket_path(birth.as_str()).exists());
    }
}

fn peer_key(i: u32) -> PublicKey {
    // Distinct valid-looking keys without 1,000 scalar multiplications.
    let mut k = [0x42u8; 32];
    k[..4].copy_from_slice(&i.to_be_bytes());
    PublicKey::from_bytes(k)
}

fn many_peers(n: u32) -> DeviceConfig {
    let mut cfg = DeviceConfig::new()
        .private_key(PrivateKey::generate().unwrap())
        .listen_port(52000)
        .replace_peers();
    for i in 0..n {
        cfg.peers.push(
            PeerConfig::new(peer_key(i))
                .endpoint(SocketAddr::from((
                    [10, 251, (i >> 8) as u8, i as u8],
                    51820,
                )))
                .allowed_ip(
                    IpNetwork::new(
                        [10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8].into(),
                        32,
                    )
                    .unwrap(),
                )
                .allowed_ip(net(&format!("fd00:{:x}::/64", i))),
        );
    }
    cfg
}

#[test]
fn thousand_peers_and_incremental_update() {
    let Some(backend) = environment("thousand_peers_and_incremental_update") else {
        return;
    };
    let ns = TestNs::new("many");
    let name = ifname("wgtm");
    let (dev, _link) = WgDevice::create(&ns.ns, &name, &backend).expect("create");
    let cfg = many_peers(1000);
    dev.set(&cfg).expect("set 1000 peers");
    let got = dev.get().unwrap();
    assert_eq!(got.peers.len(), 1000);
    assert!(got.same_config(&state_of(&cfg)), "1000 peers read back");
    if has_wg_tool() {
        assert_dump_matches(&wg_dump(&ns, name.as_str()), &got);
    }

    // Change one peer, remove one, add one: exactly three peer changes go out.
    let mut desired = cfg.clone();
    desired.peers[500].persistent_keepalive = Some(Duration::from_secs(15));
    desired.peers.remove(10);
    desired
        .peers
        .push(PeerConfig::new(peer_key(5000)).allowed_ip(net("10.252.0.0/16")));
    let diff = dev.update(&desired).expect("update");
    assert_eq!(
        diff.peers.len(),
        3,
        "diff: {:?}",
        diff.peers.iter().map(|p| p.public_key).collect::<Vec<_>>()
    );
    assert!(diff.private_key.is_none() && diff.listen_port.is_none() && !diff.replace_peers);
    let after = dev.get().unwrap();
    assert!(
        after.same_config(&state_of(&desired)),
        "state after the incremental update"
    );
    assert!(
        dev.update(&desired).unwrap().is_empty(),
        "nothing left to change"
    );

    // An allowed IP moving between peers (WireGuard semantics, both backends).
    let mut moved = desired.clone();
    let stolen = moved.peers[0].allowed_ips.remove(0);
    moved.peers[1].allowed_ips.push(stolen);
    dev.update(&moved).unwrap();
    assert!(dev.get().unwrap().same_config(&state_of(&moved)));

    Rtnl::open(&ns.ns)
        .unwrap()
        .delete_link(_link.index)
        .unwrap();
    if let Backend::Userspace(u) = &backend {
        assert!(eventually(Duration::from_secs(5), || !u
            .socket_path(name.as_str())
            .exists()));
    }
}

#[test]
fn link_created_directly_in_another_namespace() {
    let Some(backend) = environment("link_created_directly_in_another_namespace") else {
        return;
    };
    let (here, there) = (TestNs::new("ci-a"), TestNs::new("ci-b"));
    // Kernel WireGuard is what attach creates this way; without it, a bridge
    // exercises the same request.
    let kind = if backend == Backend::Kernel {
        "wireguard"
    } else {
        "bridge"
    };
    let name = ifname("wgci");
    let ra = Rtnl::open(&here.ns).unwrap();
    ra.create_link_in(&name, kind, &there.ns).unwrap();
    assert!(!here.link_names().contains(&name.to_string()));
    let rb = Rtnl::open(&there.ns).unwrap();
    let link = rb.link_by_name(&name).unwrap();
    assert_eq!(link.kind.as_deref(), Some(kind));
    // The name is taken there now: the request never touches what exists.
    let err = ra.create_link_in(&name, kind, &there.ns).unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");
    assert_eq!(rb.link_by_name(&name).unwrap().index, link.index);
    rb.delete_link(link.index).unwrap();
}

#[test]
fn links_addresses_routes_and_not_found() {
    let Some(backend) = environment("links_addresses_routes_and_not_found") else {
        return;
    };
    let ns = TestNs::new("rt");
    let rtnl = Rtnl::open(&ns.ns).unwrap();
    let missing = IfName::new("nosuchlink0").unwrap();
    assert!(rtnl.link_by_name(&missing).unwrap_err().is_not_found());
    assert!(rtnl.delete_link(999_999).unwrap_err().is_not_found());

    let name = ifname("wgtl");
    let _guard = BirthGuard {
        ns: &ns,
        birth: name.clone(),
        backend: backend.clone(),
    };
    let (_dev, link) = WgDevice::create(&ns.ns, &name, &backend).unwrap();
    let idx = link.index;
    assert_eq!(rtnl.link_by_index(idx).unwrap().name, name.as_str());
    rtnl.set_mtu(idx, 1300).unwrap();
    let renamed = ifname("wgtr");
    rtnl.rename(idx, &renamed).unwrap();
    rtnl.set_up(idx, true).unwrap();
    let l = rtnl.link_by_name(&renamed).unwrap();
    assert!(l.up && l.mtu == 1300 && l.index == idx);

    for a in ["10.96.0.1/24", "10.96.1.1/24", "fd96::1/64"] {
        rtnl.add_address(idx, net(a)).unwrap();
    }
    let addrs: BTreeSet<_> = rtnl.addresses(idx).unwrap().into_iter().collect();
    assert!(addrs.contains(&net("10.96.0.1/24")) && addrs.contains(&net("fd96::1/64")));
    rtnl.del_address(idx, net("10.96.1.1/24")).unwrap();
    assert!(rtnl
        .del_address(idx, net("10.96.1.1/24"))
        .unwrap_err()
        .is_not_found());

    let routes = [
        Route::new(net("0.0.0.0/0")).dev(idx),
        Route::new(net("10.200.0.0/16")).dev(idx).table(1234),
        Route::new(net("10.201.0.0/16"))
            .via("10.96.0.9".parse().unwrap())
            .dev(idx)
            .metric(50),
        Route::new(net("::/0")).dev(idx),
        Route::new(net("fd97::/48")).dev(idx).table(1234),
    ];
    for r in &routes {
        rtnl.add_route(r)
            .unwrap_or_else(|e| panic!("add {r:?}: {e}"));
    }
    let all = rtnl.routes(None).unwrap();
    for r in &routes {
        assert!(
            all.iter().any(|g| g.destination == r.destination
                && g.table == r.table
                && g.oif == Some(idx)
                && g.gateway == r.gateway),
            "route {r:?} listed"
        );
    }
    assert!(rtnl
        .routes(Some(1234))
        .unwrap()
        .iter()
        .all(|r| r.table == 1234));
    rtnl.del_route(&routes[1]).unwrap();
    assert!(rtnl.del_route(&routes[1]).unwrap_err().is_not_found());

    rtnl.delete_link(idx).unwrap();
    assert!(rtnl.link_by_index(idx).unwrap_err().is_not_found());
}

#[test]
fn create_and_remove_named_namespaces() {
    let Some(_backend) = environment("create_and_remove_named_namespaces") else {
        return;
    };
    let name = format!("wgnt-{}-lib", tag());
    let ns = wg_netns::Netns::create_named(&name).expect("create");
    assert!(
        wg_netns::Netns::create_named(&name).is_err(),
        "a taken name is refused"
    );
    let listed = must(&["ip", "netns", "list"]);
    assert!(listed
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name.as_str())));
    // A fresh namespace: only loopback, and it is not the caller's namespace.
    assert_eq!(Rtnl::open(&ns).unwrap().links().unwrap().len(), 1);
    assert!(!ns.same_as(&wg_netns::Netns::current().unwrap()).unwrap());
    drop(ns);
    wg_netns::Netns::remove_named(&name).expect("remove");
    wg_netns::Netns::remove_named(&name).expect("remove is idempotent");
    assert!(wg_netns::Netns::from_name(&name)
        .unwrap_err()
        .is_not_found());
}
