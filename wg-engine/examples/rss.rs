//! Measurement, not a test: what one engine process pays per device.
//!
//! `rss [N]` (root; default N = 100) creates a node namespace and N pod
//! namespaces (testkit's `wgnt-` names, deleted at the end), one engine
//! device per pod (TUN in the pod, UDP in the node), configures each over
//! its UAPI socket with wg-netns (private key, listen port, one peer without
//! endpoint: no traffic), and prints the process's RSS, threads and file
//! descriptors after each stage, the idle CPU of the configured engine, and
//! for comparison the RSS of wireguard-go processes (one per device) set up
//! the same way.
//!
//! Run it under `flock /tmp/wg-nstest.lock` (it makes namespaces).

use std::time::{Duration, Instant};

use wg_engine::{DeviceSpec, Engine, EngineConfig};
use wg_netns::{DeviceConfig, PeerConfig, PrivateKey, Userspace, WgDevice};
use wg_netns_testkit::{self as kit, TestNs, WireguardGo};

fn status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status(pid, "VmRSS:")
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// utime + stime of this process, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state is index 0; utime 11, stime 12.
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn report(stage: &str, base: u64) {
    let me = std::process::id();
    let rss = rss_kib(me);
    println!(
        "{stage:<28} rss {rss:>7} KiB (+{:>6} KiB)  threads {:>3}  fds {:>4}",
        rss.saturating_sub(base),
        status(me, "Threads:"),
        fds()
    );
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    if let Some(why) = kit::missing(&["ip"]) {
        eprintln!("rss: cannot run: {why}");
        std::process::exit(2);
    }
    let node = TestNs::new("rsn");
    let dir = kit::WorkDir::new("wg-engine-rss");
    let engine = Engine::new(EngineConfig::default().socket_dir(dir.path.clone())).expect("engine");
    let me = std::process::id();
    let base = rss_kib(me);
    report("engine started", base);

    let t = Instant::now();
    let pods: Vec<TestNs> = (0..n).map(|i| TestNs::new(&format!("rp{i}"))).collect();
    println!("{n} pod namespaces in {:?}", t.elapsed());
    let base = rss_kib(me);
    report("namespaces open", base);

    let names: Vec<String> = (0..n).map(|i| format!("rse{i}")).collect();
    let t = Instant::now();
    for (pod, name) in pods.iter().zip(&names) {
        engine
            .create_device(&DeviceSpec::new(name, &pod.ns, &node.ns))
            .expect("create device");
    }
    let created = t.elapsed();
    println!(
        "{n} devices created in {created:?} ({:?} each)",
        created / n as u32
    );
    report("devices created", base);

    let mut u = Userspace::new("wg-engine");
    u.socket_dir = dir.path.clone();
    let t = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let peer = PrivateKey::generate().expect("key").public_key();
        WgDevice::open_userspace(&u, name)
            .and_then(|d| {
                d.set(
                    &DeviceConfig::new()
                        .private_key(PrivateKey::generate().expect("key"))
                        .listen_port(40000 + i as u16)
                        .peer(
                            PeerConfig::new(peer).allowed_ip(
                                format!("10.214.{}.{}/32", i / 250, i % 250 + 1)
                                    .parse()
                                    .expect("net"),
                            ),
                        ),
                )
            })
            .expect("configure");
    }
    let configured = t.elapsed();
    println!(
        "{n} devices configured over UAPI in {configured:?} ({:?} each)",
        configured / n as u32
    );
    report("devices configured", base);
    let per = rss_kib(me).saturating_sub(base) as f64 / n as f64;
    println!("=> {per:.1} KiB RSS per configured device (idle)");

    let hz = 100.0; // USER_HZ on Linux
    let c0 = cpu_ticks();
    std::thread::sleep(Duration::from_secs(5));
    let c1 = cpu_ticks();
    println!(
        "idle CPU with {n} devices: {:.1}% of one core (timers tick every 250 ms per device)",
        (c1 - c0) as f64 / hz / 5.0 * 100.0
    );

    let t = Instant::now();
    for name in &names {
        engine.remove_device(name).expect("remove");
    }
    println!("{n} devices removed in {:?}", t.elapsed());
    report("devices removed", base);
    drop(engine);
    drop(pods);

    // The alternative: one wireguard-go process per device.
    let m = 5.min(n);
    let gos: Vec<(TestNs, WireguardGo)> = (0..m)
        .map(|i| {
            let ns = TestNs::new(&format!("rg{i}"));
            let name = kit::ifname("rsgo");
            let go = WireguardGo::start(&ns, name.as_str());
            WgDevice::open_userspace(&Userspace::new("wireguard-go"), name.as_str())
                .and_then(|d| {
                    d.set(
                        &DeviceConfig::new()
                            .private_key(PrivateKey::generate().expect("key"))
                            .listen_port(40000)
                            .peer(
                                PeerConfig::new(PrivateKey::generate().expect("key").public_key())
                                    .allowed_ip("10.214.0.1/32".parse().expect("net")),
                            ),
                    )
                })
                .expect("configure wireguard-go");
            (ns, go)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let rss: Vec<u64> = gos.iter().map(|(_, g)| rss_kib(g.pid())).collect();
    let threads: Vec<u64> = gos
        .iter()
        .map(|(_, g)| status(g.pid(), "Threads:"))
        .collect();
    println!(
        "wireguard-go, one process per device, configured the same: RSS {:?} KiB, threads {:?}",
        rss, threads
    );
    // Drop each daemon before its namespace.
    for (ns, go) in gos {
        drop(go);
        drop(ns);
    }
    drop(node);
}
