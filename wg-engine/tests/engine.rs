//! The engine against wireguard-go, in namespaces made by the test: the
//! engine device's TUN is born in a "pod" namespace while its UDP socket
//! lives in a "node" namespace wired to wireguard-go's. Everything is
//! configured and read back through wg-netns's UAPI client, as for any
//! userspace daemon.
//!
//! Root only; run under `flock /tmp/wg-nstest.lock` (shared machine).
//! Addresses: 10.213.0.0/16 inside the test's namespaces, 10.250.X.0/24 on
//! testkit's veth.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use wg_engine::{DeviceSpec, Engine, EngineConfig};
use wg_netns::{DeviceConfig, PeerConfig, PrivateKey, Userspace, WgDevice};
use wg_netns_testkit::{self as kit, TestNs, WireguardGo};

const PORT_GO: u16 = 51820;
const PORT_ENGINE: u16 = 51821;

fn net(s: &str) -> wg_netns::IpNetwork {
    s.parse().expect("network")
}

/// A wg-netns handle on an engine device (the engine's socket directory).
fn engine_handle(engine: &Engine, name: &str) -> WgDevice {
    let mut u = Userspace::new("wg-engine");
    u.socket_dir = engine.socket_dir().to_path_buf();
    u.io_timeout = Duration::from_secs(5);
    WgDevice::open_userspace(&u, name).expect("engine control socket answers")
}

/// A node and a pod namespace and one engine device between them (its TUN
/// in the pod, its UDP socket in the node), with its UAPI handle. Fields
/// in the order a test binds them, so they drop device first, namespaces
/// last.
struct OneDevice {
    node: TestNs,
    pod: TestNs,
    dir: kit::WorkDir,
    name: wg_netns::IfName,
    engine: Engine,
    dev: WgDevice,
}

/// [`OneDevice`], or `None` (the test skipped) when `ip` is missing.
fn one_device(test: &str) -> Option<OneDevice> {
    if kit::unavailable(test, &["ip"]) {
        return None;
    }
    let node = TestNs::new("eno");
    let pod = TestNs::new("epo");
    let dir = kit::WorkDir::new("wg-engine-sock");
    let name = kit::ifname("egen");
    let engine = Engine::new(EngineConfig::default().socket_dir(dir.path.clone())).expect("engine");
    engine
        .create_device(&DeviceSpec::new(name.as_str(), &pod.ns, &node.ns))
        .expect("create");
    let dev = engine_handle(&engine, name.as_str());
    Some(OneDevice {
        node,
        pod,
        dir,
        name,
        engine,
        dev,
    })
}

/// wireguard-go in `go_node`; an engine device with its TUN in `pod` and
/// its UDP socket in `node`; `go_node` and `node` wired; both configured
/// through wg-netns and pinged through. Fields drop in order: daemons and
/// engine first, namespaces last.
struct Pair {
    engine: Engine,
    _go: WireguardGo,
    dev_go: WgDevice,
    dev_eng: WgDevice,
    p_go: wg_netns::PublicKey,
    p_eng: wg_netns::PublicKey,
    eng_name: wg_netns::IfName,
    pod: TestNs,
    node: TestNs,
    _go_node: TestNs,
}

impl Pair {
    fn new(config: EngineConfig) -> Pair {
        let go_node = TestNs::new("ego");
        let node = TestNs::new("eno");
        let pod = TestNs::new("epo");
        let w = kit::wire(&go_node, &node);
        let go_name = kit::ifname("egwg");
        let eng_name = kit::ifname("egen");
        let go = WireguardGo::start(&go_node, go_name.as_str());
        let engine = Engine::new(config).expect("engine");
        engine
            .create_device(&DeviceSpec::new(eng_name.as_str(), &pod.ns, &node.ns))
            .expect("create engine device");

        // The TUN is in the pod, not in the node.
        assert!(pod.link_names().contains(&eng_name.to_string()));
        assert!(!node.link_names().contains(&eng_name.to_string()));

        let (k_go, k_eng) = (
            PrivateKey::generate().expect("key"),
            PrivateKey::generate().expect("key"),
        );
        let (p_go, p_eng) = (k_go.public_key(), k_eng.public_key());
        let go_ep: SocketAddr = format!("{}:{PORT_GO}", w.a_ip).parse().expect("addr");
        let eng_ep: SocketAddr = format!("{}:{PORT_ENGINE}", w.b_ip).parse().expect("addr");

        let dev_go = WgDevice::open_userspace(&Userspace::new("wireguard-go"), go_name.as_str())
            .expect("wireguard-go socket");
        dev_go
            .set(
                &DeviceConfig::new()
                    .private_key(k_go)
                    .listen_port(PORT_GO)
                    .peer(
                        PeerConfig::new(p_eng)
                            .endpoint(eng_ep)
                            .allowed_ip(net("10.213.7.2/32")),
                    ),
            )
            .expect("configure wireguard-go");
        let dev_eng = engine_handle(&engine, eng_name.as_str());
        dev_eng
            .set(
                &DeviceConfig::new()
                    .private_key(k_eng)
                    .listen_port(PORT_ENGINE)
                    .peer(
                        PeerConfig::new(p_go)
                            .endpoint(go_ep)
                            .allowed_ip(net("10.213.7.1/32")),
                    ),
            )
            .expect("configure the engine device over UAPI");

        // The UDP socket is in the node namespace, not in the pod.
        assert!(
            node.udp_ports().contains(&PORT_ENGINE),
            "node: {:?}",
            node.udp_ports()
        );
        assert!(!pod.udp_ports().contains(&PORT_ENGINE));

        kit::ip(&format!(
            "-n {} addr add 10.213.7.1/24 dev {go_name}",
            go_node.name
        ));
        kit::ip(&format!("-n {} link set {go_name} up", go_node.name));
        kit::ip(&format!(
            "-n {} addr add 10.213.7.2/24 dev {eng_name}",
            pod.name
        ));
        kit::ip(&format!("-n {} link set {eng_name} up", pod.name));

        assert!(
            pod.ping("10.213.7.1", Duration::from_secs(15)),
            "pod -> wireguard-go through the engine"
        );
        assert!(
            go_node.ping("10.213.7.2", Duration::from_secs(5)),
            "wireguard-go -> pod through the engine"
        );
        Pair {
            engine,
            _go: go,
            dev_go,
            dev_eng,
            p_go,
            p_eng,
            eng_name,
            pod,
            node,
            _go_node: go_node,
        }
    }
}

#[test]
fn engine_device_with_tun_in_pod_and_udp_in_node_talks_to_wireguard_go() {
    let test = "engine_device_with_tun_in_pod_and_udp_in_node_talks_to_wireguard_go";
    if kit::unavailable(test, &["ip", "ping", "wireguard-go"]) {
        return;
    }
    // Default socket directory, so that the `wg` tool finds it too.
    let pair = Pair::new(EngineConfig::default());
    let Pair {
        engine,
        dev_go,
        dev_eng,
        p_go,
        p_eng,
        eng_name,
        pod,
        node,
        ..
    } = &pair;
    let (p_go, p_eng) = (*p_go, *p_eng);

    // Read back like `wg show`: the handshake and counters.
    let state = dev_eng.get().expect("get");
    assert_eq!(state.public_key.as_ref(), Some(&p_eng));
    assert_eq!(state.listen_port, PORT_ENGINE);
    let peer = state.peer(&p_go).expect("peer").clone();
    let hs = peer.last_handshake.expect("engine reports a handshake");
    assert!(peer.rx_bytes > 0 && peer.tx_bytes > 0, "{peer:?}");
    assert!(SystemTime::now().duration_since(hs).unwrap_or_default() < Duration::from_secs(60));
    let go_state = dev_go.get().expect("get wireguard-go");
    assert!(go_state
        .peer(&p_eng)
        .expect("peer")
        .last_handshake
        .is_some());
    if kit::has_wg_tool() {
        let dump = kit::wg_dump(node, eng_name.as_str());
        assert_eq!(dump.len(), 2, "{dump:?}");
        assert_eq!(dump[0][2], PORT_ENGINE.to_string());
        assert_eq!(dump[1][0], p_go.to_base64().as_str());
        assert_ne!(dump[1][4], "0", "wg show: latest handshake {dump:?}");
    }

    // A set that changes one peer and adds another keeps the first
    // peer's session: same handshake, counters not reset.
    let other = PrivateKey::generate().expect("key").public_key();
    dev_eng
        .set(
            &DeviceConfig::new()
                .peer(
                    PeerConfig::new(p_go)
                        .update_only()
                        .persistent_keepalive(Duration::from_secs(25)),
                )
                .peer(PeerConfig::new(other).allowed_ip(net("10.213.8.0/24"))),
        )
        .expect("incremental set");
    let after = dev_eng.get().expect("get");
    assert_eq!(after.peers.len(), 2);
    let p = after.peer(&p_go).expect("peer");
    assert_eq!(p.persistent_keepalive, Some(Duration::from_secs(25)));
    let hs2 = p.last_handshake.expect("session kept across set");
    let drift = hs2.duration_since(hs).unwrap_or_else(|e| e.duration());
    assert!(
        drift < Duration::from_secs(1),
        "handshake moved by {drift:?}"
    );
    assert!(p.rx_bytes >= peer.rx_bytes, "counters reset: {p:?}");
    assert!(pod.ping("10.213.7.1", Duration::from_secs(2)));
    // A set that names only the other peer leaves this one alone.
    dev_eng
        .set(
            &DeviceConfig::new().peer(
                PeerConfig::new(other)
                    .update_only()
                    .replace_allowed_ips()
                    .allowed_ip(net("10.213.9.0/24")),
            ),
        )
        .expect("set on the other peer only");
    let p = dev_eng
        .get()
        .expect("get")
        .peer(&p_go)
        .expect("peer")
        .clone();
    // gotatun keeps "time since"; the wall-clock time read back moves by
    // microseconds between reads.
    let same = |t: Option<SystemTime>| {
        t.and_then(|t| {
            t.duration_since(hs2)
                .or_else(|e| Ok::<_, ()>(e.duration()))
                .ok()
        })
        .is_some_and(|d| d < Duration::from_millis(100))
    };
    assert!(same(p.last_handshake), "{p:?}");

    // A new listen port makes gotatun re-bind the UDP socket (still in the
    // node namespace); the session survives and wireguard-go follows the
    // new source port.
    let new_port = PORT_ENGINE + 1;
    dev_eng
        .set(&DeviceConfig::new().listen_port(new_port))
        .expect("new port");
    assert!(node.udp_ports().contains(&new_port));
    // gotatun closes the old socket asynchronously (its buffer tasks are
    // aborted, not awaited): it lingers for a moment.
    assert!(kit::eventually(Duration::from_secs(2), || !node
        .udp_ports()
        .contains(&PORT_ENGINE)));
    assert!(!pod.udp_ports().contains(&new_port));
    assert!(pod.ping("10.213.7.1", Duration::from_secs(2)));
    let p = dev_eng
        .get()
        .expect("get")
        .peer(&p_go)
        .expect("peer")
        .clone();
    let hs3 = p.last_handshake.expect("session kept across re-bind");
    assert!(
        hs3.duration_since(hs).unwrap_or_else(|e| e.duration()) < Duration::from_secs(1),
        "re-bind made a new handshake: {p:?}"
    );

    if kit::has_wg_tool() {
        let out = kit::run(&[
            "wg",
            "set",
            eng_name.as_str(),
            "peer",
            &other.to_base64(),
            "remove",
        ]);
        assert!(
            out.status.success(),
            "wg set: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let after = dev_eng.get().expect("get");
        assert_eq!(after.peers.len(), 1);
        assert!(after.peer(&p_go).expect("peer").last_handshake.is_some());
    }

    // Removal takes the TUN, the control socket and the UDP socket.
    engine.remove_device(eng_name.as_str()).expect("remove");
    assert!(!pod.link_names().contains(&eng_name.to_string()));
    assert!(!engine.socket_path(eng_name.as_str()).exists());
    assert!(kit::eventually(Duration::from_secs(2), || !node
        .udp_ports()
        .contains(&new_port)));
    assert!(engine.devices().is_empty());
}

/// The behaviour the engine's own UAPI avoids, recorded: gotatun's UAPI
/// server re-creates any peer a `set` names, so an `update_only` keepalive
/// change loses that peer's session (no handshake, counters back to 0)
/// until traffic makes a new one.
#[test]
fn gotatun_own_uapi_set_resets_the_named_peers_session() {
    let test = "gotatun_own_uapi_set_resets_the_named_peers_session";
    if kit::unavailable(test, &["ip", "ping", "wireguard-go"]) {
        return;
    }
    let dir = kit::WorkDir::new("wg-engine-sock");
    let mut config = EngineConfig::default().socket_dir(dir.path.clone());
    config.gotatun_uapi = true;
    let pair = Pair::new(config);
    let before = pair.dev_eng.get().expect("get");
    let peer = before.peer(&pair.p_go).expect("peer");
    assert!(
        peer.last_handshake.is_some() && peer.rx_bytes > 0,
        "{peer:?}"
    );
    pair.dev_eng
        .set(
            &DeviceConfig::new().peer(
                PeerConfig::new(pair.p_go)
                    .update_only()
                    .persistent_keepalive(Duration::from_secs(25)),
            ),
        )
        .expect("set over gotatun's UAPI");
    let after = pair.dev_eng.get().expect("get");
    let peer = after.peer(&pair.p_go).expect("peer");
    assert_eq!(peer.persistent_keepalive, Some(Duration::from_secs(25)));
    assert_eq!(peer.last_handshake, None, "session kept? {peer:?}");
    assert_eq!((peer.rx_bytes, peer.tx_bytes), (0, 0), "{peer:?}");
    // Traffic makes a new session (one handshake round trip).
    assert!(pair.pod.ping("10.213.7.1", Duration::from_secs(10)));
    drop(pair);
    drop(dir);
}

#[test]
fn deleting_the_pod_namespace_drops_the_device() {
    let Some(OneDevice {
        node,
        pod,
        dir: _dir,
        name,
        engine,
        dev,
    }) = one_device("deleting_the_pod_namespace_drops_the_device")
    else {
        return;
    };
    // A peer before any private key: wireguard-go accepts it; gotatun
    // cannot build a peer without the device key (its own UAPI panics), so
    // the engine answers ENOKEY and stays up.
    let early = PrivateKey::generate().expect("key").public_key();
    match dev.set(&DeviceConfig::new().peer(PeerConfig::new(early))) {
        Err(wg_netns::Error::UapiErrno { errno: 126, .. }) => {}
        other => panic!("peer before key: {other:?}"),
    }
    dev.set(
        &DeviceConfig::new()
            .private_key(PrivateKey::generate().expect("key"))
            .listen_port(PORT_ENGINE),
    )
    .expect("set key");
    assert!(node.udp_ports().contains(&PORT_ENGINE));
    assert_eq!(engine.devices(), vec![name.to_string()]);

    // What a runtime does when a pod goes: its namespace (and the links in
    // it) are deleted. The engine notices as wireguard-go does and drops the
    // device with its control socket and UDP socket.
    drop(pod);
    assert!(
        kit::eventually(Duration::from_secs(5), || engine.devices().is_empty()),
        "device still hosted: {:?}",
        engine.devices()
    );
    assert!(kit::eventually(Duration::from_secs(2), || !engine
        .socket_path(name.as_str())
        .exists()));
    assert!(kit::eventually(Duration::from_secs(2), || !node
        .udp_ports()
        .contains(&PORT_ENGINE)));
}

/// The building block of an upgrade without tearing the pod's interface
/// down: the old engine hands its TUN descriptor over (here within one
/// process; between processes it would go over SCM_RIGHTS), removes its
/// device, and a new engine adopts the descriptor. The interface keeps its
/// index and address; the tunnel needs a new handshake, because gotatun
/// cannot export or import sessions.
#[test]
fn tun_handover_to_a_new_engine_keeps_the_interface() {
    let test = "tun_handover_to_a_new_engine_keeps_the_interface";
    if kit::unavailable(test, &["ip", "ping", "wireguard-go"]) {
        return;
    }
    let pair = Pair::new(EngineConfig::default());
    let name = pair.eng_name.as_str();
    let before = pair.dev_eng.get().expect("get");
    let old_hs = before
        .peer(&pair.p_go)
        .and_then(|p| p.last_handshake)
        .expect("handshake");
    let peer = before.peer(&pair.p_go).expect("peer").clone();
    let mut cfg = DeviceConfig::new()
        .private_key(before.private_key.clone().expect("key"))
        .listen_port(before.listen_port);
    let mut pc = PeerConfig::new(peer.public_key).allowed_ips(peer.allowed_ips.clone());
    if let Some(ep) = peer.endpoint {
        pc = pc.endpoint(ep);
    }
    cfg = cfg.peer(pc);
    let rtnl = wg_netns::Rtnl::open(&pair.pod.ns).expect("rtnl");
    let index = rtnl.link_by_name(&pair.eng_name).expect("link").index;

    // wireguard-go ignores a peer's handshake initiations that come less
    // than 20 ms apart (HandshakeInitationRate): a handover right after the
    // old engine's handshake had its new initiation dropped and waited for
    // the 5 s retransmission (seen here with a 3 ms gap; 300 ms was enough).
    std::thread::sleep(Duration::from_millis(100));
    let fd = pair.engine.tun_fd(name).expect("dup TUN");
    let t0 = std::time::Instant::now();
    pair.engine.remove_device(name).expect("old engine lets go");
    // The interface outlives the old engine's device: same index, address kept.
    let link = rtnl.link_by_name(&pair.eng_name).expect("link survives");
    assert_eq!(link.index, index);
    assert!(rtnl
        .addresses(index)
        .expect("addresses")
        .contains(&net("10.213.7.2/24")));

    let engine2 = Engine::new(EngineConfig::default()).expect("new engine");
    engine2
        .adopt_device(&DeviceSpec::new(name, &pair.pod.ns, &pair.node.ns), fd)
        .expect("adopt");
    engine_handle(&engine2, name)
        .set(&cfg)
        .expect("reconfigure");
    let configured = t0.elapsed();
    assert!(pair.pod.ping("10.213.7.1", Duration::from_secs(10)));
    let first_ping = t0.elapsed();
    let after = engine_handle(&engine2, name).get().expect("get");
    let new_hs = after
        .peer(&pair.p_go)
        .and_then(|p| p.last_handshake)
        .expect("new handshake");
    assert!(new_hs > old_hs, "a new session was made");
    eprintln!(
        "handover: reconfigured after {configured:?}, first ping through after {first_ping:?}"
    );
    drop(engine2);
    assert!(!pair.pod.link_names().contains(&name.to_string()));
}

/// A new private key (or fwmark) on a device with a fixed port makes gotatun
/// re-bind that same port while the old socket may still be open (it is
/// closed by aborted tasks, asynchronously). Without the engine's retry in
/// its UDP factory, 36 of 50 such sets failed with EADDRINUSE and left the
/// device without a socket.
#[test]
fn changing_the_key_rebinds_the_same_port() {
    let Some(OneDevice {
        node,
        pod: _pod,
        dir: _dir,
        name: _name,
        engine: _engine,
        dev,
    }) = one_device("changing_the_key_rebinds_the_same_port")
    else {
        return;
    };
    let mut failures = Vec::new();
    for i in 0..50 {
        let r = dev.set(
            &DeviceConfig::new()
                .private_key(PrivateKey::generate().expect("key"))
                .listen_port(PORT_ENGINE),
        );
        if let Err(e) = r {
            failures.push(format!("{i}: {e}"));
        }
    }
    eprintln!(
        "key changes on a fixed port: {} of 50 failed {failures:?}",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(node.udp_ports().contains(&PORT_ENGINE));
}
