//! The node agent measured against a real kube-apiserver
//! (`scripts/apiserver-lite`: etcd + kube-apiserver v1.37 on 127.0.0.1)
//! with real userspace WireGuard devices in namespaces of this machine
//! (`wgbench-` prefix; sockets on the loopback). Side by side in one run:
//!
//! 1. managed ADD against static ADD (the same wg-cni binary, the same
//!    kind of namespace, alternating);
//! 2. a peer edit until every affected device is updated, at N pods;
//! 3. mesh convergence: a new pod until it is a peer of all N others;
//! 4. the agent's RSS and CPU per event with 1,000 attachments and
//!    10,000 peers (synthetic objects in the apiserver), against the same
//!    events with none.
//!
//! Times 2 and 3 run from the write to the last "device updated" line the
//! agent logs for it (one per device, JSON, microsecond timestamps; the
//! same clock). Not a test: nothing fails on a number.
//!
//! `cargo bench -p wg-agent --bench agent -- [--sizes 10,100,1000]
//! [--edits 20] [--mesh 100] [--synthetic 1000,10000]`

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use sim::{flag, pct, repo, Lite};
use wg_k8s_types::{WireGuardAttachment, WireGuardPeer};
use wg_netns::PrivateKey;

fn list(name: &str, default: &str) -> Vec<usize> {
    flag(name)
        .unwrap_or_else(|| default.to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// A pod's network namespace (`wgbench-PID-N`), removed on drop.
struct PodNs(String);

impl PodNs {
    fn new(n: usize) -> PodNs {
        let name = format!("wgbench-{}-{n}", std::process::id());
        let st = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(st.is_ok_and(|s| s.success()), "ip netns add {name}");
        PodNs(name)
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The agent process, SIGTERM on drop.
struct AgentProc {
    child: Child,
    log: PathBuf,
    run_dir: PathBuf,
    state_dir: PathBuf,
}

impl AgentProc {
    fn start(kubeconfig: &Path, work: &Path) -> AgentProc {
        let log = work.join("agent.log");
        let run_dir = work.join("run");
        let state_dir = work.join("state");
        let f = std::fs::File::create(&log).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_wg-agent"))
            .env("NODE_NAME", "bench-node")
            .env("NODE_IP", "127.0.0.1")
            .env("KUBECONFIG", kubeconfig)
            .env("WG_AGENT_STATE_DIR", &state_dir)
            .env("WG_AGENT_RUN_DIR", &run_dir)
            .env("WG_AGENT_LISTEN", "127.0.0.1:0")
            .env("WG_AGENT_BACKEND", "userspace")
            .env("WG_AGENT_STATS_INTERVAL", "10s")
            .env("WG_AGENT_VERIFY_INTERVAL", "10m")
            .env("WG_AGENT_LOG", "info,kube=warn")
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .expect("wg-agent");
        let a = AgentProc {
            child,
            log,
            run_dir,
            state_dir,
        };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if std::fs::read_to_string(&a.log)
                .unwrap_or_default()
                .contains("caches synced")
            {
                return a;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the agent did not sync: {}",
            std::fs::read_to_string(&a.log).unwrap_or_default()
        );
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now and at its peak, MiB.
    fn rss(&self) -> (f64, f64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kb = |k: &str| {
            s.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (kb("VmRSS:"), kb("VmHWM:"))
    }

    /// CPU time used so far (user + system), seconds.
    fn cpu(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after = s.rsplit(')').next().unwrap_or_default();
        let f: Vec<&str> = after.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 (11 and 12 after the name).
        (t(11) + t(12)) / 100.0
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Reads the agent's log as it grows: times of "device updated" lines.
struct LogTail {
    file: std::fs::File,
    pos: u64,
}

impl LogTail {
    fn new(path: &Path) -> LogTail {
        let mut file = std::fs::File::open(path).expect("log");
        let pos = file.seek(SeekFrom::End(0)).expect("seek");
        LogTail { file, pos }
    }

    /// Wait until `n` "device updated" lines appear after the current
    /// position; the time of the last one.
    fn wait_updates(&mut self, n: usize, within: Duration) -> Option<SystemTime> {
        let end = Instant::now() + within;
        let mut seen = 0;
        let mut buf = String::new();
        while Instant::now() < end {
            let mut chunk = String::new();
            self.file.seek(SeekFrom::Start(self.pos)).ok()?;
            self.file.read_to_string(&mut chunk).ok()?;
            self.pos += chunk.len() as u64;
            buf.push_str(&chunk);
            while let Some(i) = buf.find('\n') {
                let line: String = buf.drain(..=i).collect();
                if line.contains("\"device updated\"") {
                    seen += 1;
                    let last = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v["timestamp"].as_str().map(str::to_string))
                        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                        .map(SystemTime::from);
                    if seen >= n {
                        return last;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }
}

fn since(t0: SystemTime, t: SystemTime) -> f64 {
    t.duration_since(t0)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

struct Bench {
    client: Client,
    rt: tokio::runtime::Runtime,
    plugin: PathBuf,
    agent: AgentProc,
    pods: Vec<PodNs>,
    n: usize,
}

impl Bench {
    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Run wg-cni once; its wall time (ms).
    fn cni(&self, command: &str, conf: &str, container: &str, ns: &PodNs, pod: &str) -> f64 {
        let t = Instant::now();
        let mut child = Command::new(&self.plugin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", ns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/nonexistent")
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("wg-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.as_bytes())
            .expect("conf");
        let out = child.wait_with_output().expect("wg-cni");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(
            out.status.success(),
            "wg-cni {command} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        ms
    }

    fn managed_conf(&self, network: &str) -> String {
        json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "wg-cni",
            "network": network,
            "agentSocket": self.agent.run_dir.join("cni.sock"),
            "agentHintDir": self.agent.run_dir.join("networks"),
        })
        .to_string()
    }

    /// A Pod object (never run: there is no kubelet) and its namespace;
    /// then a managed ADD. Returns the ADD's time.
    fn add_pod(&mut self, network: &str) -> f64 {
        self.n += 1;
        let n = self.n;
        let name = format!("p{n}");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "default");
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"bench": "yes"}},
            "spec": {"nodeName": "bench-node", "containers": [{"name": "c", "image": "none"}]}
        }))
        .expect("pod");
        self.block(pods.create(&PostParams::default(), &pod))
            .expect("create pod");
        let ns = PodNs::new(n);
        let ms = self.cni(
            "ADD",
            &self.managed_conf(network),
            &format!("c{n}"),
            &ns,
            &name,
        );
        self.pods.push(ns);
        ms
    }

    fn network(&self, name: &str, mesh: bool) {
        let api: Api<wg_k8s_types::WireGuardNetwork> = Api::all(self.client.clone());
        let n: wg_k8s_types::WireGuardNetwork = serde_json::from_value(json!({
            "apiVersion": "wireguard.wg-netns.io/v1alpha1", "kind": "WireGuardNetwork",
            "metadata": {"name": name},
            "spec": {"addressPools": [{"cidr": if mesh {"10.81.0.0/16"} else {"10.80.0.0/16"}, "blockSize": 22}],
                     "listenPorts": {"from": if mesh {44000} else {40000}, "to": if mesh {45999} else {43999}},
                     "mesh": mesh, "mtu": 1420}
        }))
        .expect("network");
        self.block(api.create(&PostParams::default(), &n))
            .expect("create network");
        // Wait for the agent's watch to see it (it leaves the network's
        // hint for the plugin then).
        let hint = self
            .agent
            .run_dir
            .join("networks")
            .join(format!("{name}.json"));
        let t = Instant::now();
        while !hint.exists() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(hint.exists(), "the agent did not see network {name}");
    }
}

fn peer(name: &str, ns: &str, network: &str, cidr: &str, key: &str) -> WireGuardPeer {
    serde_json::from_value(json!({
        "apiVersion": "wireguard.wg-netns.io/v1alpha1", "kind": "WireGuardPeer",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"network": network, "publicKey": key, "endpoint": "127.0.0.1:9",
                 "allowedIPs": [cidr]}
    }))
    .expect("peer")
}

/// A sysctl raised for the run and put back on drop: every wireguard-go
/// daemon holds an inotify instance (it watches its control socket), and
/// the default of 128 per user caps a node at about 125 userspace devices.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn at_least(path: &'static str, min: u64) -> Option<Sysctl> {
        let old = std::fs::read_to_string(path).ok()?.trim().to_string();
        if old.parse::<u64>().ok()? >= min {
            return None;
        }
        std::fs::write(path, min.to_string()).ok()?;
        Some(Sysctl { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.old);
    }
}

fn main() {
    if !rustix::process::geteuid().is_root() {
        println!("SKIP agent bench: needs root (namespaces, WireGuard devices)");
        return;
    }
    let _inotify = Sysctl::at_least("/proc/sys/fs/inotify/max_user_instances", 4096);
    let work = std::env::temp_dir().join(format!("wgbench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let lite = match Lite::up() {
        Ok(l) => l,
        Err(e) => {
            println!("SKIP agent bench: no apiserver (scripts/cluster-build builds it): {e}");
            return;
        }
    };
    let kubectl = Command::new(repo().join("scripts/cluster-build"))
        .arg("--bin-dirs")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.contains("/k8s-"))
                .map(|d| Path::new(d).join("kubectl"))
        })
        .expect("kubectl");
    let st = Command::new(&kubectl)
        .arg(format!("--kubeconfig={}", lite.kubeconfig.display()))
        .args(["apply", "-f"])
        .arg(repo().join("manifests/base/00-crds.yaml"))
        .stdout(Stdio::null())
        .status()
        .expect("kubectl");
    assert!(st.success(), "CRDs");
    let _ = Command::new(&kubectl)
        .arg(format!("--kubeconfig={}", lite.kubeconfig.display()))
        .args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ])
        .stdout(Stdio::null())
        .status();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt.block_on(lite.client());
    // Pods need their namespace's default service account (no controllers here).
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("sa");
    let _ = rt.block_on(
        Api::<ServiceAccount>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &sa),
    );
    let plugin = {
        let exe = std::env::current_exe().expect("exe");
        let profile = exe.parent().and_then(Path::parent).expect("profile dir");
        let target = profile.parent().expect("target");
        let st = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--release",
                "-p",
                "wg-cni",
                "--bin",
                "wg-cni",
            ])
            .env("CARGO_TARGET_DIR", target)
            .current_dir(repo())
            .status()
            .expect("cargo");
        assert!(st.success());
        target.join("release/wg-cni")
    };
    let agent = AgentProc::start(&lite.kubeconfig, &work);
    let mut b = Bench {
        client,
        rt,
        plugin,
        agent,
        pods: Vec::new(),
        n: 0,
    };
    b.network("edit", false);
    b.network("mesh", true);
    let rounds: usize = flag("--rounds").and_then(|v| v.parse().ok()).unwrap_or(20);

    // 4 (run first, on a fresh agent with 10 pods, so its figures are the
    // objects' and not the devices'): RSS and CPU per event with
    // synthetic objects.
    for _ in 0..10 {
        b.add_pod("edit");
    }
    let peers: Api<WireGuardPeer> = Api::namespaced(b.client.clone(), "default");
    let synth = list("--synthetic", "1000,10000");
    let (atts, npeers) = (
        synth.first().copied().unwrap_or(1000),
        synth.get(1).copied().unwrap_or(10000),
    );
    let cpu_per_edit = |b: &Bench, n: usize| -> f64 {
        let api: Api<WireGuardPeer> = Api::namespaced(b.client.clone(), "default");
        let c0 = b.agent.cpu();
        for e in 0..n {
            let patch = json!({"spec": {"allowedIPs": [format!("10.95.{}.0/24", e % 250)]}});
            let _ = b.block(api.patch("unrelated", &PatchParams::default(), &Patch::Merge(&patch)));
        }
        std::thread::sleep(Duration::from_secs(2));
        (b.agent.cpu() - c0) / n as f64 * 1e3
    };
    let other = PrivateKey::generate()
        .expect("key")
        .public_key()
        .to_base64()
        .to_string();
    // A peer of another network: every edit is an event the agent must
    // read and index, touching none of its devices.
    b.network("synth", true);
    b.block(peers.create(
        &PostParams::default(),
        &peer("unrelated", "default", "synth", "10.95.0.0/24", &other),
    ))
    .expect("peer");
    std::thread::sleep(Duration::from_secs(1));
    let (rss0, _) = b.agent.rss();
    let cpu0 = cpu_per_edit(&b, 500);
    let t = Instant::now();
    let client = b.client.clone();
    b.block(async {
        let nss: Api<Namespace> = Api::all(client.clone());
        for i in 0..100 {
            let ns: Namespace =
                serde_json::from_value(json!({"metadata": {"name": format!("synth-{i}")}})).expect("ns");
            let _ = nss.create(&PostParams::default(), &ns).await;
        }
        let keys: Vec<String> = (0..256)
            .map(|_| PrivateKey::generate().expect("key").public_key().to_base64().to_string())
            .collect();
        stream::iter(0..atts)
            .for_each_concurrent(16, |i| {
                let client = client.clone();
                let key = keys[i % keys.len()].clone();
                async move {
                    let ns = format!("synth-{}", i % 100);
                    let api: Api<WireGuardAttachment> = Api::namespaced(client, &ns);
                    let a: WireGuardAttachment = serde_json::from_value(json!({
                        "apiVersion": "wireguard.wg-netns.io/v1alpha1", "kind": "WireGuardAttachment",
                        "metadata": {"name": format!("a{i}")},
                        "spec": {"network": "synth", "podName": format!("a{i}"), "podUID": format!("uid-{i}"),
                                 "nodeName": format!("other-{}", i % 50), "interface": "wg0"}
                    }))
                    .expect("attachment");
                    if api.create(&PostParams::default(), &a).await.is_ok() {
                        let st = json!({"status": {"publicKey": key, "addresses": [format!("10.84.{}.{}/16", i / 250, i % 250 + 1)],
                                                    "endpoint": format!("10.250.1.{}:51820", i % 50 + 1)}});
                        let _ = api
                            .patch_status(&format!("a{i}"), &PatchParams::default(), &Patch::Merge(&st))
                            .await;
                    }
                }
            })
            .await;
        stream::iter(0..npeers)
            .for_each_concurrent(16, |i| {
                let client = client.clone();
                let key = keys[(i + 7) % keys.len()].clone();
                async move {
                    let ns = format!("synth-{}", i % 100);
                    let api: Api<WireGuardPeer> = Api::namespaced(client, &ns);
                    let _ = api
                        .create(&PostParams::default(), &peer(&format!("p{i}"), &ns, "synth", "10.96.0.0/24", &key))
                        .await;
                }
            })
            .await;
    });
    let made = t.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let (rss1, hwm1) = b.agent.rss();
    let cpu1 = cpu_per_edit(&b, 500);
    println!(
        "## The agent with synthetic objects in the apiserver ({} pods with devices on the node)\n",
        b.pods.len()
    );
    println!("| objects in the apiserver | agent RSS MiB | CPU per peer event ms |\n|---|---|---|");
    println!("| this node's only | {rss0:.1} | {cpu0:.3} |");
    println!(
        "| + {atts} attachments of 50 other nodes + {npeers} peers in 100 namespaces (made in {:.0} s) | {rss1:.1} (peak {hwm1:.1}) | {cpu1:.3} |",
        made.as_secs_f64()
    );
    println!("\nRSS goal: under 64 MiB. CPU per event: the same edit, before and after; it follows the event, not the cluster's size.\n");

    // 1. Managed against static ADD.
    let mut managed = Vec::new();
    let mut stat = Vec::new();
    let peer_key = PrivateKey::generate()
        .expect("key")
        .public_key()
        .to_base64()
        .to_string();
    for r in 0..rounds {
        let static_conf = json!({
            "cniVersion": "1.0.0", "name": "bench-static", "type": "wg-cni",
            "address": "10.82.0.2/24",
            "listenPort": 46000 + r,
            "stateDir": work.join("static-state"),
            "peers": [{"publicKey": peer_key, "endpoint": "127.0.0.1:9", "allowedIPs": ["10.82.0.0/24"]}],
        })
        .to_string();
        let ns = PodNs::new(100_000 + r);
        stat.push(b.cni("ADD", &static_conf, &format!("s{r}"), &ns, "static"));
        b.cni("DEL", &static_conf, &format!("s{r}"), &ns, "static");
        drop(ns);
        managed.push(b.add_pod("edit"));
    }
    let (m50, s50) = (pct(&mut managed, 0.5), pct(&mut stat, 0.5));
    println!("### Managed ADD against static ADD (wg-cni process, userspace WireGuard, {rounds} each, alternating)\n");
    println!("| mode | p50 ms | p90 ms |\n|---|---|---|");
    println!(
        "| static (conflist holds address, key, peers) | {s50:.1} | {:.1} |",
        pct(&mut stat, 0.9)
    );
    println!(
        "| managed (agent: pod lookup, IPAM, key, device, record) | {m50:.1} | {:.1} |",
        pct(&mut managed, 0.9)
    );
    println!("\nmanaged / static = {:.2}x (goal <= 1.2x)\n", m50 / s50);

    // 2. A peer edit reaching every device.
    let sizes = list("--sizes", "10,100");
    let edits: usize = flag("--edits").and_then(|v| v.parse().ok()).unwrap_or(20);
    let gw = PrivateKey::generate()
        .expect("key")
        .public_key()
        .to_base64()
        .to_string();
    b.block(peers.create(
        &PostParams::default(),
        &peer("gw", "default", "edit", "10.90.0.0/24", &gw),
    ))
    .expect("peer");
    println!("### A peer edit until every device has it ({edits} edits per size)\n");
    println!("| pods on the node | p50 ms | p99 ms | max ms |\n|---|---|---|---|");
    for &size in &sizes {
        while b.pods.len() < size {
            b.add_pod("edit");
        }
        std::thread::sleep(Duration::from_secs(1));
        let mut times = Vec::new();
        for e in 0..edits {
            let mut tail = LogTail::new(&b.agent.log);
            let cidr = format!("10.{}.{}.0/24", 91 + (e / 250), e % 250);
            let patch = json!({"spec": {"allowedIPs": [cidr]}});
            let t0 = SystemTime::now();
            b.block(peers.patch("gw", &PatchParams::default(), &Patch::Merge(&patch)))
                .expect("patch");
            match tail.wait_updates(size, Duration::from_secs(60)) {
                Some(t) => times.push(since(t0, t)),
                None => println!("(edit {e} at {size} pods did not reach every device in 60 s)"),
            }
        }
        println!(
            "| {size} | {:.1} | {:.1} | {:.1} |",
            pct(&mut times, 0.5),
            pct(&mut times, 0.99),
            pct(&mut times, 1.0)
        );
    }
    println!();

    // 3. Mesh convergence.
    let mesh_n: usize = flag("--mesh").and_then(|v| v.parse().ok()).unwrap_or(100);
    let before = b.pods.len();
    for _ in 0..mesh_n {
        b.add_pod("mesh");
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut conv = Vec::new();
    for _ in 0..10 {
        let mut tail = LogTail::new(&b.agent.log);
        let existing = b.pods.len() - before;
        let t0 = SystemTime::now();
        b.add_pod("mesh");
        // Every existing member gets the new peer; the new one's own
        // device already has them from its ADD.
        match tail.wait_updates(existing, Duration::from_secs(60)) {
            Some(t) => conv.push(since(t0, t)),
            None => println!("(a new pod did not reach all {existing} members in 60 s)"),
        }
    }
    println!("### Mesh convergence: a new pod until every member has it as a peer (10 new pods)\n");
    println!(
        "| members | p50 ms | p99 ms |\n|---|---|---|\n| {mesh_n}..{} | {:.0} | {:.0} |\n",
        mesh_n + 9,
        pct(&mut conv, 0.5),
        pct(&mut conv, 0.99)
    );

    // Teardown: the agent first (devices stay), then the namespaces (each
    // userspace daemon exits when its device goes with its namespace).
    let pods = std::mem::take(&mut b.pods);
    let state = b.agent.state_dir.clone();
    drop(b);
    drop(pods);
    std::thread::sleep(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&work);
    let _ = state;
    let mut left = BTreeMap::new();
    for e in std::fs::read_dir("/var/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("wgbench-{}-", std::process::id())) {
            left.insert(n, ());
        }
    }
    if !left.is_empty() {
        println!("leftovers: {:?}", left.keys());
    }
    drop(lite);
}
