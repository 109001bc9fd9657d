//! Applying N peers through wg-netns against `wg setconf` of the same
//! configuration, on the same backend, side by side in one run; and changing
//! one peer of a 100-, 1,000- and 10,000-peer device through the incremental
//! API against `wg set` of that one peer (is it flat as the device grows?).
//!
//!     sudo cargo bench -p wg-netns-benches --bench peers [-- --sizes 1,100,1000,10000 --rounds 5]
//!
//! Needs root, `wg` and a backend (kernel, or wireguard-go). Runs inside a
//! namespace it creates and removes. Prints a Markdown table: medians with
//! min-max, and the ratio wg-netns / tool. Timings are never asserted.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use wg_netns::{
    Backend, DeviceConfig, IfName, IpNetwork, Netns, PeerConfig, PrivateKey, PublicKey, Rtnl,
    WgDevice,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Stats(Vec<Duration>);

impl Stats {
    fn median(&self) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v[v.len() / 2]
    }
    fn fmt(&self) -> String {
        let min = self.0.iter().min().copied().unwrap_or_default();
        let max = self.0.iter().max().copied().unwrap_or_default();
        format!("{} ({}-{})", ms(self.median()), ms(min), ms(max))
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn config(keys: &[PublicKey], n: usize, me: &PrivateKey) -> DeviceConfig {
    let mut cfg = DeviceConfig::new()
        .private_key(me.clone())
        .listen_port(51820)
        .replace_peers();
    for (i, k) in keys.iter().take(n).enumerate() {
        let i = i as u32;
        cfg.peers.push(
            PeerConfig::new(*k)
                .endpoint(SocketAddr::from((
                    [10, 251, (i >> 8) as u8, i as u8],
                    51820,
                )))
                .allowed_ip(
                    IpNetwork::new(
                        [10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8].into(),
                        32,
                    )
                    .expect("net"),
                )
                .persistent_keepalive(Duration::from_secs(25)),
        );
    }
    cfg
}

fn wg_conf(cfg: &DeviceConfig) -> String {
    let mut s = String::new();
    s.push_str("[Interface]\n");
    if let Some(k) = &cfg.private_key {
        s.push_str(&format!("PrivateKey = {}\n", &*k.to_base64()));
    }
    if let Some(p) = cfg.listen_port {
        s.push_str(&format!("ListenPort = {p}\n"));
    }
    for p in &cfg.peers {
        s.push_str(&format!("[Peer]\nPublicKey = {}\n", p.public_key));
        if let Some(e) = p.endpoint {
            s.push_str(&format!("Endpoint = {e}\n"));
        }
        let ips: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
        s.push_str(&format!("AllowedIPs = {}\n", ips.join(", ")));
        if let Some(k) = p.persistent_keepalive {
            s.push_str(&format!("PersistentKeepalive = {}\n", k.as_secs()));
        }
    }
    s
}

/// A fresh device for one trial; removed on drop.
struct Trial<'a> {
    ns: &'a Netns,
    backend: &'a Backend,
    name: IfName,
    dev: WgDevice,
    index: u32,
}

impl<'a> Trial<'a> {
    fn new(ns: &'a Netns, backend: &'a Backend, n: &mut u32) -> Res<Self> {
        *n += 1;
        let name = IfName::new(format!("wgbn{:x}{}", std::process::id() % 0xffff, n))?;
        let (dev, link) = WgDevice::create(ns, &name, backend)?;
        Ok(Trial {
            ns,
            backend,
            name,
            dev,
            index: link.index,
        })
    }
}

impl Drop for Trial<'_> {
    fn drop(&mut self) {
        if let Ok(r) = Rtnl::open(self.ns) {
            let _ = r.delete_link(self.index);
        }
        let _ = wg_netns::cleanup_birth(self.ns, &self.name, self.backend);
    }
}

/// Run `wg ARGS` where it can see the device (inside the namespace for kernel devices).
fn wg(ns_name: &str, args: &[&str]) -> Res<Duration> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns_name, "wg"]).args(args);
    let t = Instant::now();
    let out = cmd.output()?;
    let d = t.elapsed();
    if !out.status.success() {
        return Err(format!("wg {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(d)
}

/// The cost of `ip netns exec NS true`, subtracted from the tool's times so
/// both sides pay only for the work.
fn exec_overhead(ns_name: &str) -> Res<Duration> {
    let mut v = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        Command::new("ip")
            .args(["netns", "exec", ns_name, "true"])
            .output()?;
        v.push(t.elapsed());
    }
    Ok(Stats(v).median())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = get("--sizes")
        .unwrap_or_else(|| "1,100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let rounds: usize = get("--rounds").and_then(|s| s.parse().ok()).unwrap_or(5);
    if !common::is_root() || Command::new("wg").arg("--version").output().is_err() {
        eprintln!("SKIP peers bench: needs root and `wg`");
        return Ok(());
    }
    let backend = Backend::detect()?;
    let ns_name = format!("wgbench-{}", std::process::id());
    let ns = Netns::create_named(&ns_name)?;
    let _cleanup = common::Cleanup {
        namespaces: vec![ns_name.clone()],
        dir: None,
    };
    let overhead = exec_overhead(&ns_name)?;
    let max = sizes.iter().copied().max().unwrap_or(1);
    let keys: Vec<PublicKey> = (0..max.max(10_000))
        .map(|_| PrivateKey::generate().map(|k| k.public_key()))
        .collect::<Result<_, _>>()?;
    let me = PrivateKey::generate()?;
    let tmp = std::env::temp_dir().join(format!("wgbench-{}.conf", std::process::id()));
    let mut n = 0;

    println!("backend: {:?}; {rounds} rounds, alternating order; tool times exclude `ip netns exec` overhead ({})", backend.kind(), ms(overhead));
    println!();
    println!("| peers | wg-netns set | wg setconf | ratio |");
    println!("|---:|---:|---:|---:|");
    for &size in &sizes {
        let cfg = config(&keys, size, &me);
        std::fs::File::create(&tmp)?.write_all(wg_conf(&cfg).as_bytes())?;
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            for side in [round % 2, 1 - round % 2] {
                let t = Trial::new(&ns, &backend, &mut n)?;
                if side == 0 {
                    let s = Instant::now();
                    t.dev.set(&cfg)?;
                    ours.push(s.elapsed());
                } else {
                    let d = wg(
                        &ns_name,
                        &["setconf", t.name.as_str(), tmp.to_str().unwrap_or_default()],
                    )?;
                    theirs.push(d.saturating_sub(overhead));
                }
                assert_eq!(t.dev.get()?.peers.len(), size, "device holds the peers");
            }
        }
        let (o, t) = (Stats(ours), Stats(theirs));
        println!(
            "| {size} | {} | {} | {:.2}x |",
            o.fmt(),
            t.fmt(),
            o.median().as_secs_f64() / t.median().as_secs_f64()
        );
    }

    // One peer changed on devices of growing size: the incremental API
    // (`set` of a one-peer change) and `update_from` (diff the whole desired
    // state against the known one, then send), against `wg set` of that peer.
    println!();
    println!("| change one peer of a device with N peers | `set` (the change) | `update_from` (diff + send) | `wg set` | `set` ratio | `update_from` ratio |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for big in [100, 1_000, 10_000]
        .into_iter()
        .filter(|b| *b <= keys.len())
    {
        let cfg = config(&keys, big, &me);
        let t = Trial::new(&ns, &backend, &mut n)?;
        t.dev.set(&cfg)?;
        let mut state = t.dev.get()?;
        let (mut ours, mut theirs, mut sends) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds * 4 {
            let mut desired = cfg.clone();
            desired.peers[round % big].persistent_keepalive =
                Some(Duration::from_secs(100 + round as u64));
            let s = Instant::now();
            let diff = desired.diff(&state);
            let computed = s.elapsed();
            t.dev.set(&diff)?;
            ours.push(s.elapsed());
            sends.push(s.elapsed() - computed);
            assert_eq!(diff.peers.len(), 1);
            state.apply(&diff);
            // The tool puts the same peer back to its configured keepalive, so
            // the next round differs from the configuration in one peer again.
            let i = round % big;
            let key = keys[i].to_base64();
            let d = wg(
                &ns_name,
                &[
                    "set",
                    t.name.as_str(),
                    "peer",
                    &key,
                    "persistent-keepalive",
                    "25",
                ],
            )?;
            theirs.push(d.saturating_sub(overhead));
            if let Some(p) = state.peers.iter_mut().find(|p| p.public_key == keys[i]) {
                p.persistent_keepalive = Some(Duration::from_secs(25));
            }
        }
        let (o, th, se) = (Stats(ours), Stats(theirs), Stats(sends));
        let ratio = |a: &Stats| a.median().as_secs_f64() / th.median().as_secs_f64();
        println!(
            "| {big} | {} | {} | {} | {:.2}x | {:.2}x |",
            se.fmt(),
            o.fmt(),
            th.fmt(),
            ratio(&se),
            ratio(&o)
        );
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}
