//! How wg-cni scales: 100 pods added (then deleted) in parallel, and ADD time
//! against the number of peers in the configuration (1 to 1,000). The plugin
//! binary (release) is run the way a runtime runs it, inside a node namespace.
//!
//!     sudo cargo bench -p wg-netns-benches --bench scale [-- --csv FILE]
//!
//! Prints Markdown tables; with --csv also writes "peers,add_ms,del_ms" for
//! plotting. Timings are never asserted; leftovers are (nothing may remain).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use wg_netns::{IfName, Netns, PrivateKey, Rtnl};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn cni(bin: &Path, node: &Netns, cmd: &str, cid: &str, netns: &str, conf: &str) -> Res<Duration> {
    Ok(common::run_plugin(bin, node, cmd, cid, netns, conf)?)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let csv = args
        .iter()
        .position(|a| a == "--csv")
        .and_then(|i| args.get(i + 1))
        .cloned();
    if !common::is_root() || wg_netns::Backend::detect().is_err() {
        eprintln!("SKIP scale bench: needs root and a WireGuard backend");
        return Ok(());
    }
    let backend = wg_netns::Backend::detect()?;
    let bin = common::build_plugin()?;
    let tag = std::process::id();
    let dir = std::env::temp_dir().join(format!("wgcni-scale-{tag}"));
    let node_name = format!("wgbench-{tag}-node");
    let mut cleanup = common::Cleanup {
        namespaces: Vec::new(),
        dir: Some(dir.clone()),
    };
    let node = Netns::create_named(&node_name)?;
    cleanup.namespaces.push(node_name.clone());
    let lo = Rtnl::open(&node)?;
    lo.set_up(lo.link_by_name(&IfName::new("lo")?)?.index, true)?;
    let pods = 100;
    for i in 0..pods {
        let n = format!("wgbench-{tag}-pod{i}");
        Netns::create_named(&n)?;
        cleanup.namespaces.push(n);
    }
    let b = if backend == wg_netns::Backend::Kernel {
        "kernel"
    } else {
        "userspace"
    };
    let peer_keys: Vec<String> = (0..1000)
        .map(|_| PrivateKey::generate().map(|k| k.public_key().to_base64()))
        .collect::<Result<_, _>>()?;
    let conf = |addr: &str, peers: usize| {
        let peers: Vec<_> = peer_keys
            .iter()
            .take(peers)
            .enumerate()
            .map(|(i, k)| {
                serde_json::json!({"publicKey": k, "endpoint": "127.0.0.1:51999",
                "allowedIPs": [format!("10.{}.{}.0/24", 100 + i / 256, i % 256)]})
            })
            .collect();
        serde_json::json!({"cniVersion": "1.0.0", "name": "scale", "type": "wg-cni", "address": addr,
            "backend": b, "stateDir": dir.join("state"), "peers": peers})
        .to_string()
    };
    let netns = |i: usize| format!("/var/run/netns/wgbench-{tag}-pod{i}");

    // 1. 100 pods in parallel.
    let confs: Vec<String> = (0..pods)
        .map(|i| conf(&format!("10.60.{}.{}/16", i / 250, i % 250 + 1), 1))
        .collect();
    let t = Instant::now();
    let adds: Vec<Result<Duration, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..pods)
            .map(|i| {
                let (bin, node, confs, netns) = (&bin, &node, &confs, &netns);
                s.spawn(move || {
                    cni(bin, node, "ADD", &format!("p{i}"), &netns(i), &confs[i])
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("thread panicked".to_string()))
            })
            .collect()
    });
    let add_total = t.elapsed();
    let add_failures = adds.iter().filter(|r| r.is_err()).count();
    for e in adds.iter().filter_map(|r| r.as_ref().err()) {
        eprintln!("{e}");
    }
    let t = Instant::now();
    let dels: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..pods)
            .map(|i| {
                let (bin, node, confs, netns) = (&bin, &node, &confs, &netns);
                s.spawn(move || {
                    cni(bin, node, "DEL", &format!("p{i}"), &netns(i), &confs[i]).is_ok()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(false)).collect()
    });
    let del_total = t.elapsed();
    let del_failures = dels.iter().filter(|ok| !**ok).count();
    std::thread::sleep(Duration::from_millis(500));
    let leftovers = Rtnl::open(&node)?
        .links()?
        .into_iter()
        .filter(|l| l.name.starts_with("wgc"))
        .count()
        + (0..pods)
            .filter(|i| {
                Netns::from_path(netns(*i))
                    .and_then(|ns| Rtnl::open(&ns))
                    .and_then(|r| r.links())
                    .map(|ls| ls.len() > 1)
                    .unwrap_or(false)
            })
            .count();
    println!("backend: {:?}", backend.kind());
    println!();
    println!("| 100 pods in parallel | total | failures |");
    println!("|---|---:|---:|");
    println!("| ADD | {} | {add_failures} |", ms(add_total));
    println!("| DEL | {} | {del_failures} |", ms(del_total));
    println!();
    println!("leftovers after DEL: {leftovers}");
    if add_failures + del_failures + leftovers > 0 {
        return Err("the parallel run failed or leaked".into());
    }

    // 2. ADD time against the number of peers.
    println!();
    println!("| peers | ADD median | DEL median |");
    println!("|---:|---:|---:|");
    let mut rows = Vec::new();
    for peers in [1usize, 10, 50, 100, 250, 500, 1000] {
        let c = conf("10.61.0.2/16", peers);
        let (mut a, mut d) = (Vec::new(), Vec::new());
        for r in 0..5 {
            a.push(cni(&bin, &node, "ADD", &format!("g{r}"), &netns(0), &c)?);
            d.push(cni(&bin, &node, "DEL", &format!("g{r}"), &netns(0), &c)?);
        }
        let (am, dm) = (median(&mut a), median(&mut d));
        println!("| {peers} | {} | {} |", ms(am), ms(dm));
        rows.push(format!(
            "{peers},{:.3},{:.3}",
            am.as_secs_f64() * 1e3,
            dm.as_secs_f64() * 1e3
        ));
    }
    if let Some(path) = csv {
        std::fs::write(path, format!("peers,add_ms,del_ms\n{}\n", rows.join("\n")))?;
    }
    Ok(())
}
