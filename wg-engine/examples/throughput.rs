//! Measurement, not a test: iperf3 single-stream TCP throughput through
//! the tunnel, engine <-> wireguard-go against wireguard-go <-> wireguard-go,
//! over a veth pair between two namespaces made here (plus a pod namespace
//! for the engine's TUN). Each direction, 5 s. Smoke figures on a 2-core
//! machine (CPU-bound), not a benchmark.
//!
//! `throughput [SECONDS]`, root, iperf3 and wireguard-go installed; run under
//! `flock /tmp/wg-nstest.lock`. Addresses: 10.213.9.0/24 in the tunnel,
//! testkit's 10.250.X.0/24 on the veth.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wg_engine::{DeviceSpec, Engine, EngineConfig};
use wg_netns::{DeviceConfig, PeerConfig, PrivateKey, PublicKey, Userspace, WgDevice};
use wg_netns_testkit::{self as kit, TestNs, WireguardGo};

/// An iperf3 server (`-1`: one test, then it exits), killed by PID if it
/// is still there when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        if self.0.try_wait().is_ok_and(|s| s.is_none()) {
            kit::terminate(self.0.id(), Duration::from_secs(2));
        }
        let _ = self.0.wait();
    }
}

fn server(ns: &TestNs, addr: &str) -> Server {
    // `ip netns exec` execs iperf3: the child's PID is iperf3's.
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "iperf3", "-s", "-1", "-B", addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    Server(child)
}

/// Mbit/s received in a `secs`-second single-stream run from `client` to
/// `addr` (`reverse`: the server sends).
fn iperf(client: &TestNs, server_ns: &TestNs, addr: &str, secs: u32, reverse: bool) -> f64 {
    let _s = server(server_ns, addr);
    let secs = secs.to_string();
    let mut args = vec!["iperf3", "-c", addr, "-t", &secs, "-J"];
    if reverse {
        args.push("-R");
    }
    let out = client.exec(&args);
    let text = String::from_utf8_lossy(&out.stdout);
    // "sum_received": { ..., "bits_per_second": N, ... }
    text.split("\"sum_received\"")
        .nth(1)
        .and_then(|s| s.split("\"bits_per_second\":").nth(1))
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |bps| bps / 1e6)
}

fn configure(
    dev: &WgDevice,
    key: PrivateKey,
    port: u16,
    peer: PublicKey,
    ep: SocketAddr,
    ip: &str,
) {
    dev.set(
        &DeviceConfig::new().private_key(key).listen_port(port).peer(
            PeerConfig::new(peer)
                .endpoint(ep)
                .allowed_ip(format!("{ip}/32").parse().expect("net")),
        ),
    )
    .expect("configure");
}

fn addr_up(ns: &TestNs, dev: &str, cidr: &str) {
    kit::ip(&format!("-n {} addr add {cidr} dev {dev}", ns.name));
    kit::ip(&format!("-n {} link set {dev} up", ns.name));
}

fn main() {
    let secs: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    if let Some(why) = kit::missing(&["ip", "iperf3", "wireguard-go"]) {
        eprintln!("throughput: cannot run: {why}");
        std::process::exit(2);
    }
    let go_node = TestNs::new("tpa");
    let other_node = TestNs::new("tpb");
    let pod = TestNs::new("tpp");
    let w = kit::wire(&go_node, &other_node);
    let go_ep: SocketAddr = format!("{}:51820", w.a_ip).parse().expect("addr");
    let other_ep: SocketAddr = format!("{}:51821", w.b_ip).parse().expect("addr");
    let go_u = Userspace::new("wireguard-go");

    let bare_tx = iperf(&other_node, &go_node, &w.a_ip, secs, false);
    println!("bare veth, no WireGuard:            {bare_tx:>8.0} Mbit/s");

    // wireguard-go <-> wireguard-go.
    {
        let (ka, kb) = (
            PrivateKey::generate().expect("key"),
            PrivateKey::generate().expect("key"),
        );
        let (pa, pb) = (ka.public_key(), kb.public_key());
        let na = kit::ifname("tpga");
        let nb = kit::ifname("tpgb");
        let ga = WireguardGo::start(&go_node, na.as_str());
        let gb = WireguardGo::start(&other_node, nb.as_str());
        let da = WgDevice::open_userspace(&go_u, na.as_str()).expect("socket");
        let db = WgDevice::open_userspace(&go_u, nb.as_str()).expect("socket");
        configure(&da, ka, 51820, pb, other_ep, "10.213.9.2");
        configure(&db, kb, 51821, pa, go_ep, "10.213.9.1");
        addr_up(&go_node, na.as_str(), "10.213.9.1/24");
        addr_up(&other_node, nb.as_str(), "10.213.9.2/24");
        assert!(other_node.ping("10.213.9.1", Duration::from_secs(10)));
        let tx = iperf(&other_node, &go_node, "10.213.9.1", secs, false);
        let rx = iperf(&other_node, &go_node, "10.213.9.1", secs, true);
        println!("wireguard-go -> wireguard-go:       {tx:>8.0} Mbit/s");
        println!("wireguard-go <- wireguard-go:       {rx:>8.0} Mbit/s");
        drop((ga, gb));
    }

    // engine (TUN in the pod, UDP in the node) <-> wireguard-go.
    {
        let (ka, kb) = (
            PrivateKey::generate().expect("key"),
            PrivateKey::generate().expect("key"),
        );
        let (pa, pb) = (ka.public_key(), kb.public_key());
        let na = kit::ifname("tpga");
        let nb = kit::ifname("tpeb");
        let dir = kit::WorkDir::new("wg-engine-tp");
        let ga = WireguardGo::start(&go_node, na.as_str());
        let engine =
            Engine::new(EngineConfig::default().socket_dir(dir.path.clone())).expect("engine");
        engine
            .create_device(&DeviceSpec::new(nb.as_str(), &pod.ns, &other_node.ns))
            .expect("engine device");
        let mut eu = Userspace::new("wg-engine");
        eu.socket_dir = dir.path.clone();
        let da = WgDevice::open_userspace(&go_u, na.as_str()).expect("socket");
        let db = WgDevice::open_userspace(&eu, nb.as_str()).expect("socket");
        configure(&da, ka, 51820, pb, other_ep, "10.213.9.2");
        configure(&db, kb, 51821, pa, go_ep, "10.213.9.1");
        addr_up(&go_node, na.as_str(), "10.213.9.1/24");
        addr_up(&pod, nb.as_str(), "10.213.9.2/24");
        assert!(pod.ping("10.213.9.1", Duration::from_secs(10)));
        let rss0 = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS"))
            .map(str::to_string)
            .unwrap_or_default();
        let tx = iperf(&pod, &go_node, "10.213.9.1", secs, false);
        let rx = iperf(&pod, &go_node, "10.213.9.1", secs, true);
        let rss1 = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS"))
            .map(str::to_string)
            .unwrap_or_default();
        println!("engine -> wireguard-go:             {tx:>8.0} Mbit/s");
        println!("engine <- wireguard-go:             {rx:>8.0} Mbit/s");
        println!("engine process before/after traffic: {rss0} / {rss1}");
        drop(engine);
        drop(ga);
    }
}
