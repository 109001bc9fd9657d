//! Benchmarks on kernel WireGuard, run inside the qemu guest by
//! `scripts/kernel-tests --bench` (emulated CPU: only ratios count).
//!
//! 1. wg-cni ADD and DEL (one peer, kernel backend, the plugin binary run with
//!    CNI environment and stdin) against the same work done by the standard
//!    tools: `ip link add type wireguard`, `wg set`, `ip link set netns`,
//!    `ip addr`, `ip link set up`, `ip route`; and `ip link del`. A third
//!    column does it the way wg-cni now does, creating the link in the pod
//!    (`ip link add NAME netns POD type wireguard`), to separate the method
//!    from the number of processes.
//! 2. Applying 1, 100 and 1,000 peers through wg-netns against `wg setconf`
//!    of the same configuration (10,000: `wg setconf` did not finish within
//!    5 minutes under emulation; sizes can be set in /tests-extra/sizes).
//!
//! Tools run in the node namespace by spawning them from a thread inside it
//! (no `ip netns exec` overhead on either side). Prints Markdown tables.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wg_netns::{
    Backend, Birthplace, DeviceConfig, IfName, InterfaceSpec, IpNetwork, Netns, PeerConfig,
    PrivateKey, PublicKey, Route, Rtnl, WgDevice,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn stats(v: &[Duration]) -> (Duration, Duration, Duration, Duration) {
    let mut s = v.to_vec();
    s.sort();
    let p99 = s[((s.len() * 99) / 100).min(s.len() - 1)];
    (s[s.len() / 2], p99, s[0], s[s.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Run a command inside `ns`; fail loudly.
fn sh(ns: &Netns, args: &[&str], stdin: Option<&str>) -> Res<()> {
    let out = ns.run(|| -> std::io::Result<std::process::Output> {
        let mut c = Command::new(args[0]);
        c.args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if stdin.is_some() {
            c.stdin(Stdio::piped());
        }
        let mut child = c.spawn()?;
        if let (Some(input), Some(mut i)) = (stdin, child.stdin.take()) {
            i.write_all(input.as_bytes())?;
        }
        child.wait_with_output()
    })??;
    if !out.status.success() {
        return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

fn cni(node: &Netns, cmd: &str, netns: &str, conf: &str) -> Res<()> {
    common::run_plugin(
        Path::new("/usr/bin/wg-cni"),
        node,
        cmd,
        "bench",
        netns,
        conf,
    )?;
    Ok(())
}

fn main() -> Res<()> {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    if !Backend::kernel_available() {
        return Err(
            "this benchmark needs kernel WireGuard (run it with scripts/kernel-tests --bench)"
                .into(),
        );
    }
    let node = Netns::create_named("bench-node")?;
    let pod = Netns::create_named("bench-pod")?;
    for ns in [&node, &pod] {
        let r = Rtnl::open(ns)?;
        r.set_up(r.link_by_name(&IfName::new("lo")?)?.index, true)?;
    }
    let pod_path = "/var/run/netns/bench-pod";
    let me = PrivateKey::generate()?;
    let peer = PrivateKey::generate()?.public_key();
    std::fs::write("/tmp/bench.key", format!("{}\n", &*me.to_base64()))?;
    std::fs::set_permissions(
        "/tmp/bench.key",
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;

    // 1. ADD/DEL: wg-cni against the standard tools.
    let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "bench", "type": "wg-cni",
        "address": "10.13.13.2/24", "privateKeyFile": "/tmp/bench.key", "listenPort": 51820, "backend": "kernel",
        "stateDir": "/tmp/wg-cni-state",
        "peers": [{"endpoint": "127.0.0.1:51999", "publicKey": peer.to_base64(),
                   "allowedIPs": ["10.14.0.0/16"], "persistentKeepalive": 25}]})
    .to_string();
    // The tools' steps shared by both sequences: `wg set` of wg-cni's
    // configuration on `dev` from a thread in `ns`, then address, up and
    // route in the pod.
    let peer_b64 = peer.to_base64();
    let wg_set = |ns: &Netns, dev: &str| {
        sh(
            ns,
            &[
                "wg",
                "set",
                dev,
                "private-key",
                "/tmp/bench.key",
                "listen-port",
                "51820",
                "peer",
                &peer_b64,
                "endpoint",
                "127.0.0.1:51999",
                "allowed-ips",
                "10.14.0.0/16",
                "persistent-keepalive",
                "25",
            ],
            None,
        )
    };
    let configure_pod = |n: &Netns| -> Res<()> {
        for args in [
            &["addr", "add", "10.13.13.2/24", "dev", "eth0"][..],
            &["link", "set", "eth0", "up"],
            &["route", "add", "10.14.0.0/16", "dev", "eth0"],
        ] {
            let mut a = vec!["ip", "-n", "bench-pod"];
            a.extend_from_slice(args);
            sh(n, &a, None)?;
        }
        Ok(())
    };
    // As the issue lists them: create in the node, configure, move, address.
    let tools_add = |n: &Netns| -> Res<()> {
        sh(n, &["ip", "link", "add", "wgb", "type", "wireguard"], None)?;
        wg_set(n, "wgb")?;
        sh(
            n,
            &[
                "ip",
                "link",
                "set",
                "wgb",
                "netns",
                "bench-pod",
                "name",
                "eth0",
            ],
            None,
        )?;
        configure_pod(n)
    };
    // The same tools, but creating the link in the pod to begin with
    // (`ip link add ... netns`), as wg-cni does: no move, one process fewer.
    let tools_add_in_place = |n: &Netns| -> Res<()> {
        sh(
            n,
            &[
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                "bench-pod",
                "type",
                "wireguard",
            ],
            None,
        )?;
        wg_set(&pod, "eth0")?;
        configure_pod(n)
    };
    let tools_del = |n: &Netns| sh(n, &["ip", "-n", "bench-pod", "link", "del", "eth0"], None);
    // [wg-cni, tools moving the link, tools creating it in place] x [ADD, DEL]
    let mut times: [[Vec<Duration>; 2]; 3] = Default::default();
    for round in 0..rounds + 2 {
        for k in 0..3 {
            // Rotate the order so no side always goes first.
            let side = (k + round) % 3;
            let t = Instant::now();
            match side {
                0 => cni(&node, "ADD", pod_path, &conf)?,
                1 => tools_add(&node)?,
                _ => tools_add_in_place(&node)?,
            }
            let add = t.elapsed();
            let t = Instant::now();
            if side == 0 {
                cni(&node, "DEL", pod_path, &conf)?;
            } else {
                tools_del(&node)?;
            }
            let del = t.elapsed();
            if round >= 2 {
                // The first two rounds warm caches and are not counted.
                times[side][0].push(add);
                times[side][1].push(del);
            }
        }
    }
    println!("guest: kernel WireGuard, {rounds} rounds, rotating order");
    println!();
    println!("| | wg-cni median | wg-cni p99 | tools median | tools p99 | ratio (median) | tools, created in place: median | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, label) in ["ADD", "DEL"].iter().enumerate() {
        let (om, op, _, _) = stats(&times[0][i]);
        let (tm, tp, _, _) = stats(&times[1][i]);
        let (pm, _, _, _) = stats(&times[2][i]);
        println!(
            "| {label} | {} | {} | {} | {} | {:.2}x | {} | {:.2}x |",
            ms(om),
            ms(op),
            ms(tm),
            ms(tp),
            om.as_secs_f64() / tm.as_secs_f64(),
            ms(pm),
            om.as_secs_f64() / pm.as_secs_f64()
        );
    }

    // Where wg-cni's ADD goes: a process start that does nothing (VERSION),
    // and the same interface attached and detached by the library in this
    // process (the netlink work, kernel time included, without a process).
    let spec = InterfaceSpec::new(IfName::new("wgbirth")?, IfName::new("eth0")?)
        .device(
            DeviceConfig::new()
                .private_key(me.clone())
                .listen_port(51820)
                .peer(
                    PeerConfig::new(peer)
                        .endpoint("127.0.0.1:51999".parse()?)
                        .allowed_ip("10.14.0.0/16".parse()?)
                        .persistent_keepalive(Duration::from_secs(25)),
                ),
        )
        .address("10.13.13.2/24".parse()?)
        .route(Route::new("10.14.0.0/16".parse()?));
    let place = Birthplace::new(&node, &pod, &Backend::Kernel)?;
    // wg-cni's ADD and DEL as library calls in this (warm) process, from a
    // thread in the node, with the environment a runtime would set.
    let verb_in_process = |cmd: &str| -> Res<()> {
        let env = wg_cni::cni::Env::from_vars(|k| {
            match k {
                "CNI_COMMAND" => Some(cmd),
                "CNI_CONTAINERID" => Some("inproc"),
                "CNI_NETNS" => Some(pod_path),
                "CNI_IFNAME" => Some("eth0"),
                "CNI_PATH" => Some("/usr/lib/cni"),
                _ => None,
            }
            .map(String::from)
        })
        .map_err(|e| e.to_string())?;
        node.run(|| {
            wg_cni::cmd::run(&env, conf.as_bytes(), &mut wg_attach::log::Log::none())
                .map(|_| ())
                .map_err(|e| e.to_string())
        })??;
        Ok(())
    };
    let (mut version, mut lib_add, mut lib_del) = (Vec::new(), Vec::new(), Vec::new());
    let (mut verb_add, mut verb_del) = (Vec::new(), Vec::new());
    for round in 0..rounds + 2 {
        let t = Instant::now();
        verb_in_process("ADD")?;
        let va = t.elapsed();
        let t = Instant::now();
        verb_in_process("DEL")?;
        let vd = t.elapsed();
        let t = Instant::now();
        cni(&node, "VERSION", pod_path, &conf)?;
        let v = t.elapsed();
        let t = Instant::now();
        place.attach(&spec)?;
        let a = t.elapsed();
        let t = Instant::now();
        place.detach(&spec.name, &spec.birth_name)?;
        let d = t.elapsed();
        if round >= 2 {
            version.push(v);
            lib_add.push(a);
            lib_del.push(d);
            verb_add.push(va);
            verb_del.push(vd);
        }
    }
    println!();
    println!("| where the wg-cni ADD goes | median | p99 |");
    println!("|---|---:|---:|");
    for (label, v) in [
        ("wg-cni VERSION: a process start and nothing else", &version),
        (
            "wg-cni's ADD in-process (`wg_cni::cmd::run`): everything but the process",
            &verb_add,
        ),
        (
            "`Birthplace::attach` in-process: the netlink work alone",
            &lib_add,
        ),
        ("wg-cni's DEL in-process", &verb_del),
        ("`Birthplace::detach` in-process", &lib_del),
    ] {
        let (m, p, _, _) = stats(v);
        println!("| {label} | {} | {} |", ms(m), ms(p));
    }

    // 2. Peers: wg-netns against wg setconf.
    let keys: Vec<PublicKey> = (0..10_000)
        .map(|_| PrivateKey::generate().map(|k| k.public_key()))
        .collect::<Result<_, _>>()?;
    println!();
    println!("| peers | wg-netns set | wg setconf | ratio |");
    println!("|---:|---:|---:|---:|");
    let name = IfName::new("wgpeers")?;
    let sizes: Vec<usize> = std::fs::read_to_string("/tests-extra/sizes")
        .ok()
        .map(|t| {
            t.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![1, 100, 1000]);
    for size in sizes {
        let mut cfg = DeviceConfig::new()
            .private_key(me.clone())
            .listen_port(51821)
            .replace_peers();
        let mut text = format!(
            "[Interface]\nPrivateKey = {}\nListenPort = 51821\n",
            &*me.to_base64()
        );
        for (i, k) in keys.iter().take(size).enumerate() {
            let i = i as u32;
            let ep = SocketAddr::from(([10, 251, (i >> 8) as u8, i as u8], 51820));
            let aip = IpNetwork::new(
                [10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8].into(),
                32,
            )?;
            cfg.peers.push(
                PeerConfig::new(*k)
                    .endpoint(ep)
                    .allowed_ip(aip)
                    .persistent_keepalive(Duration::from_secs(25)),
            );
            text.push_str(&format!("[Peer]\nPublicKey = {k}\nEndpoint = {ep}\nAllowedIPs = {aip}\nPersistentKeepalive = 25\n"));
        }
        std::fs::write("/tmp/peers.conf", &text)?;
        let reps = if size >= 10_000 { 3 } else { 5 };
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for r in 0..reps * 2 {
            eprintln!("guest-bench: {size} peers, trial {r}");
            let (dev, link) = WgDevice::create(&node, &name, &Backend::Kernel)?;
            let t = Instant::now();
            if r % 2 == 0 {
                dev.set(&cfg)?;
                ours.push(t.elapsed());
            } else {
                sh(
                    &node,
                    &["wg", "setconf", "wgpeers", "/tmp/peers.conf"],
                    None,
                )?;
                theirs.push(t.elapsed());
            }
            assert_eq!(dev.get()?.peers.len(), size);
            Rtnl::open(&node)?.delete_link(link.index)?;
        }
        let (o, _, omin, omax) = stats(&ours);
        let (t, _, tmin, tmax) = stats(&theirs);
        println!(
            "| {size} | {} ({}-{}) | {} ({}-{}) | {:.2}x |",
            ms(o),
            ms(omin),
            ms(omax),
            ms(t),
            ms(tmin),
            ms(tmax),
            o.as_secs_f64() / t.as_secs_f64()
        );
    }
    Netns::remove_named("bench-pod")?;
    Netns::remove_named("bench-node")?;
    Ok(())
}
