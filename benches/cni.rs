//! CNI ADD and DEL wall time through the same libcni client, side by side in
//! one run: Debian's bridge + host-local against wg-cni (one peer), and the
//! whole chain bridge + host-local + wg-cni.
//!
//!     sudo cargo bench -p wg-netns-benches --bench cni [-- --rounds 20] [--baseline PATH]
//!
//! `--baseline PATH` adds another wg-cni binary (an earlier build) as one more
//! configuration in the same rotation: before/after figures from one run.
//! `--busy N` runs with N extra (sleeping) processes on the machine, as on a
//! Kubernetes node, where anything that scans `/proc` slows down.
//!
//! Needs root, Go >= 1.22 (libcni comes from its Go module), the reference plugins and a
//! WireGuard backend; builds wg-cni (release) and the libcni client itself.
//! Everything runs inside a node namespace it creates; the WireGuard peer's
//! endpoint is that namespace's loopback. Prints a Markdown table; timings are
//! never asserted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use wg_netns::{Netns, PrivateKey, Rtnl};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Build the release plugin and the libcni client; return (plugin dir, client).
fn build() -> Res<(PathBuf, PathBuf)> {
    let plugin = common::build_plugin()?;
    let (ws, target) = (common::workspace(), common::target_dir());
    let client = target.join("cni-client-bench");
    let out = Command::new(ws.join("scripts/build-cni-client"))
        .arg(&client)
        .env("GOCACHE", target.join("gocache"))
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "building the libcni client: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let dir = plugin.parent().ok_or("plugin directory")?.to_path_buf();
    Ok((dir, client))
}

struct Client {
    bin: PathBuf,
    cni_path: String,
    cache: PathBuf,
}

impl Client {
    fn run(
        &self,
        node: &Netns,
        action: &str,
        conflist: &Path,
        cid: &str,
        netns: &str,
    ) -> Res<Duration> {
        let out = node.run(|| {
            Command::new(&self.bin)
                .args([
                    action,
                    conflist.to_str().unwrap_or_default(),
                    cid,
                    netns,
                    "eth0",
                ])
                .env("CNI_PATH", &self.cni_path)
                .env("CNI_CACHE_DIR", &self.cache)
                .output()
        })??;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("{action} {}: {stderr}", conflist.display()).into());
        }
        let ns: u64 = stderr
            .lines()
            .find_map(|l| l.strip_prefix("elapsed_ns="))
            .and_then(|v| v.parse().ok())
            .ok_or("no elapsed_ns from the client")?;
        Ok(Duration::from_nanos(ns))
    }
}

fn stats(v: &[Duration]) -> (Duration, Duration, Duration) {
    let mut s = v.to_vec();
    s.sort();
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() -> Res<()> {
    let rounds: usize = common::flag("--rounds").unwrap_or(20);
    if !common::is_root() || !Path::new("/usr/lib/cni/bridge").exists() {
        eprintln!("SKIP cni bench: needs root and containernetworking-plugins (Go >= 1.22 builds the libcni client)");
        return Ok(());
    }
    let baseline: Option<PathBuf> = common::flag("--baseline");
    let busy: usize = common::flag("--busy").unwrap_or(0);
    let backend = wg_netns::Backend::detect()?;
    // Extra processes, killed (by their own handles) when the run ends.
    struct Sleepers(Vec<std::process::Child>);
    impl Drop for Sleepers {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut sleepers = Sleepers(Vec::with_capacity(busy));
    for _ in 0..busy {
        sleepers.0.push(
            Command::new("sleep")
                .arg("3600")
                .stdin(std::process::Stdio::null())
                .spawn()?,
        );
    }
    let (release, client_bin) = build()?;
    let tag = std::process::id();
    let dir = std::env::temp_dir().join(format!("wgcni-bench-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let (node_name, pod_name) = (format!("wgbench-{tag}-node"), format!("wgbench-{tag}-pod"));
    let mut cleanup = common::Cleanup {
        namespaces: Vec::new(),
        dir: Some(dir.clone()),
    };
    let node = Netns::create_named(&node_name)?;
    cleanup.namespaces.push(node_name.clone());
    let _pod = Netns::create_named(&pod_name)?;
    cleanup.namespaces.push(pod_name.clone());
    let lo = Rtnl::open(&node)?;
    lo.set_up(lo.link_by_name(&wg_netns::IfName::new("lo")?)?.index, true)?;
    let pod_path = format!("/var/run/netns/{pod_name}");
    // The baseline binary is installed under its own plugin name.
    let baseline_dir = dir.join("baseline");
    std::fs::create_dir_all(&baseline_dir)?;
    if let Some(b) = &baseline {
        std::fs::copy(b, baseline_dir.join("wg-cni-baseline"))?;
    }
    let client = Client {
        bin: client_bin,
        cni_path: format!(
            "/usr/lib/cni:{}:{}",
            release.display(),
            baseline_dir.display()
        ),
        cache: dir.join("cache"),
    };
    let peer = PrivateKey::generate()?.public_key();
    let b = if backend == wg_netns::Backend::Kernel {
        "kernel"
    } else {
        "userspace"
    };
    let bridge = serde_json::json!({"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "subnet": "10.85.0.0/16", "dataDir": dir.join("ipam")}});
    let wg = serde_json::json!({"type": "wg-cni", "address": "10.13.13.2/24", "listenPort": 51820,
        "backend": b, "stateDir": dir.join("state"), "logFile": dir.join("wg-cni.log"),
        "peers": [{"endpoint": "127.0.0.1:51999", "publicKey": peer.to_base64(), "allowedIPs": ["10.13.13.0/24"], "persistentKeepalive": "25s"}]});
    let write = |name: &str, plugins: serde_json::Value| -> Res<PathBuf> {
        let p = dir.join(name);
        std::fs::write(
            &p,
            serde_json::json!({"cniVersion": "1.0.0", "name": "bench", "plugins": plugins})
                .to_string(),
        )?;
        Ok(p)
    };
    let mut lists = vec![
        (
            "bridge + host-local",
            write("bridge.conflist", serde_json::json!([bridge.clone()]))?,
        ),
        (
            "wg-cni (one peer)",
            write("wg.conflist", serde_json::json!([wg.clone()]))?,
        ),
        (
            "bridge + host-local + wg-cni",
            write("chain.conflist", serde_json::json!([bridge, wg.clone()]))?,
        ),
    ];
    if baseline.is_some() {
        let mut old = wg;
        old["type"] = "wg-cni-baseline".into();
        old["stateDir"] = dir.join("state-baseline").to_string_lossy().into();
        lists.push((
            "wg-cni (one peer), baseline build",
            write("baseline.conflist", serde_json::json!([old]))?,
        ));
    }
    let mut adds = vec![Vec::new(); lists.len()];
    let mut dels = vec![Vec::new(); lists.len()];
    // Warm-up round (page cache, first bridge creation), not counted.
    for (_, l) in &lists {
        client.run(&node, "add", l, "warm", &pod_path)?;
        client.run(&node, "del", l, "warm", &pod_path)?;
    }
    for round in 0..rounds {
        // Rotate the order each round so no configuration always goes first.
        for k in 0..lists.len() {
            let i = (k + round) % lists.len();
            let cid = format!("bench-{round}-{i}");
            adds[i].push(client.run(&node, "add", &lists[i].1, &cid, &pod_path)?);
            dels[i].push(client.run(&node, "del", &lists[i].1, &cid, &pod_path)?);
        }
    }
    println!(
        "backend: {:?}; {rounds} rounds, rotating order; wall time of the libcni call{}",
        backend.kind(),
        if busy > 0 {
            format!("; {busy} extra processes on the machine")
        } else {
            String::new()
        }
    );
    println!();
    println!("| conflist | ADD median (min-max) | DEL median (min-max) | ADD vs bridge | DEL vs bridge |");
    println!("|---|---:|---:|---:|---:|");
    let (ba, _, _) = stats(&adds[0]);
    let (bd, _, _) = stats(&dels[0]);
    for (i, (name, _)) in lists.iter().enumerate() {
        let (a, amin, amax) = stats(&adds[i]);
        let (d, dmin, dmax) = stats(&dels[i]);
        println!(
            "| {name} | {} ({}-{}) | {} ({}-{}) | {:.2}x | {:.2}x |",
            ms(a),
            ms(amin),
            ms(amax),
            ms(d),
            ms(dmin),
            ms(dmax),
            a.as_secs_f64() / ba.as_secs_f64(),
            d.as_secs_f64() / bd.as_secs_f64()
        );
    }
    Ok(())
}
