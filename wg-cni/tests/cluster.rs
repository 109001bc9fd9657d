//! wg-cni in a real Kubernetes cluster (`scripts/cluster`, docs/cluster.md):
//! kubelet -> containerd (CRI) -> libcni -> bridge + host-local + portmap +
//! wg-cni, in busybox pods on two nodes.
//!
//! All scenarios run in ONE test, in sequence, on one cluster: its
//! [`Cluster`] handle brings the cluster down when dropped, also when a
//! scenario panics. Everything stays in the `wgk8s-` namespaces; WireGuard
//! endpoints are the nodes' addresses on the cluster bridge (10.250.0.0/24).
//!
//! `WG_NETNS_REQUIRE_ALL=1 cargo test -p wg-cni --test cluster -- --nocapture`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wg_netns::PrivateKey;
use wg_netns_testkit::cluster::{pod_yaml, Cluster};
use wg_netns_testkit::eventually;

/// The conflist file wg-cni's tests write: lexicographically before the
/// cluster's `10-wgk8s.conflist`, so containerd (max_conf_num 1) loads it.
const CONF: &str = "00-wgk8s-wgcni.conflist";
/// The cluster's default conflist (bridge + host-local + portmap).
const DEFAULT_NET: &str = "wgk8s";
const NET: &str = "wgk8s-wg";
const NET_110: &str = "wgk8s-wg110";
const NET_MANY: &str = "wgk8s-wgmany";
const WG_ADDR: [&str; 2] = ["10.13.13.1", "10.13.13.2"];
const LISTEN_PORT: [u16; 2] = [51821, 51822];
const LOAD: Duration = Duration::from_secs(20);

struct Node {
    key: PrivateKey,
}

struct Ctx<'a> {
    c: &'a Cluster,
    nodes: [Node; 2],
    podcidr: [String; 2],
    times: Vec<(String, Duration)>,
}

impl Ctx<'_> {
    fn state_dir(&self, i: usize) -> PathBuf {
        self.c.node_dir(i).join("wgcni-state")
    }
    fn log_file(&self, i: usize) -> PathBuf {
        self.c.node_dir(i).join("wgcni.log")
    }

    /// The original README's shape: bridge, host-local (the node's podCIDR),
    /// portmap and wg-cni with the original's fields (`address`, `privateKey`,
    /// `peers[].endpoint/publicKey/allowedIPs/persistentKeepalive: "25s"`),
    /// plus listenPort, stateDir and logFile.
    fn conflist(&self, i: usize, version: &str, name: &str, wg: Value) -> String {
        let cidr = &self.podcidr[i - 1];
        let mut wg = wg;
        let o = wg.as_object_mut().expect("object");
        o.insert("type".into(), json!("wg-cni"));
        o.insert("stateDir".into(), json!(self.state_dir(i)));
        o.entry("logFile").or_insert(json!(self.log_file(i)));
        serde_json::to_string_pretty(&json!({
            "cniVersion": version,
            "name": name,
            "plugins": [
                {"type": "bridge", "bridge": "wgk8s-cni0", "isGateway": true, "ipMasq": false,
                 "hairpinMode": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": cidr}]],
                          "routes": [{"dst": "0.0.0.0/0"}],
                          "dataDir": self.c.node_dir(i).join("cni/ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
                wg
            ]
        }))
        .expect("json")
    }

    /// wg-cni of node `i` (1 or 2) in static mode: its address, its key, the
    /// other node as the peer.
    fn static_wg(&self, i: usize) -> Value {
        let me = i - 1;
        let other = 1 - me;
        json!({
            "address": format!("{}/24", WG_ADDR[me]),
            "privateKey": self.nodes[me].key.to_base64().as_str(),
            "listenPort": LISTEN_PORT[me],
            "peers": [{
                "endpoint": format!("{}:{}", self.c.node_ip(other + 1), LISTEN_PORT[other]),
                "publicKey": self.nodes[other].key.public_key().to_base64().as_str(),
                "allowedIPs": [format!("{}/32", WG_ADDR[other])],
                "persistentKeepalive": "25s"
            }]
        })
    }

    fn use_conf(&self, i: usize, name: &str, text: &str) {
        self.c.write_cni_conf(i, CONF, text);
        assert!(
            self.c.wait_cni_network(i, name, LOAD),
            "containerd of node {i} did not load network {name}"
        );
    }

    fn use_default(&self, i: usize) {
        self.c.remove_cni_conf(i, CONF);
        assert!(
            self.c.wait_cni_network(i, DEFAULT_NET, LOAD),
            "containerd of node {i} did not go back to {DEFAULT_NET}"
        );
    }

    fn time<T>(&mut self, what: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        eprintln!("\n=== {what}");
        let t = Instant::now();
        let r = f(self);
        let d = t.elapsed();
        eprintln!("=== {what}: {:.1} s", d.as_secs_f64());
        self.times.push((what.to_string(), d));
        r
    }
}

fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Local ports of the sockets in a `/proc/net/udp` text.
fn udp_ports(text: &str) -> Vec<u16> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|a| a.rsplit_once(':'))
        .filter_map(|(_, p)| u16::from_str_radix(p, 16).ok())
        .collect()
}

/// What wg-cni may leave on node `i`: WireGuard/TUN links in the node,
/// wireguard-go daemons in the node's mount namespace, sockets in the node's
/// `/run/wireguard` (and the host's `/var/run/wireguard` with a `wgc` birth
/// name), and attachment records under the state dir.
fn leftovers(ctx: &Ctx, i: usize) -> Vec<String> {
    let c = ctx.c;
    let mut left = Vec::new();
    let links = out_text(&c.node_exec(i, &["ip", "-d", "-o", "link", "show"]));
    for l in links.lines() {
        let name = l.split(':').nth(1).unwrap_or_default().trim();
        if name.starts_with("wgc") || l.contains(" tun ") || l.contains("wireguard") {
            left.push(format!("link {name}"));
        }
    }
    for pid in c.node_processes(i, "wireguard-go") {
        left.push(format!("wireguard-go pid {pid}"));
    }
    for dir in [
        c.node_path(i, "/run/wireguard"),
        "/var/run/wireguard".into(),
    ] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("wgc") {
                left.push(format!("socket {}", e.path().display()));
            }
        }
    }
    left.extend(records(&ctx.state_dir(i)));
    left
}

/// Attachment records (`*.json`) under a wg-cni state dir.
fn records(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for net in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for e in std::fs::read_dir(net.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.path().extension().is_some_and(|x| x == "json") {
                found.push(format!("record {}", e.path().display()));
            }
        }
    }
    found
}

fn assert_clean(ctx: &Ctx, i: usize, within: Duration) {
    let mut last = Vec::new();
    let ok = eventually(within, || {
        last = leftovers(ctx, i);
        last.is_empty()
    });
    assert!(ok, "node {i}: left behind after DEL: {last:#?}");
}

fn ping_ok(c: &Cluster, pod: &str, addr: &str, within: Duration) -> Result<Duration, String> {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < within {
        let o = c.exec(pod, &["ping", "-c", "1", "-W", "1", addr]);
        if o.status.success() {
            return Ok(t.elapsed());
        }
        last = out_text(&o);
    }
    Err(format!(
        "{pod} cannot ping {addr} within {within:?}: {last}"
    ))
}

/// A: install wg-cni and the static conflists on both nodes.
fn install(ctx: &mut Ctx) {
    let c = ctx.c;
    let bin = Path::new(env!("CARGO_BIN_EXE_wg-cni"));
    for i in 1..=2 {
        c.install_cni_plugin(i, bin, "wg-cni");
        let text = ctx.conflist(i, "1.0.0", NET, ctx.static_wg(i));
        let first = std::fs::read_dir(c.cni_conf_dir(i))
            .expect("conf dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .chain([CONF.to_string()])
            .filter(|n| !n.starts_with('.'))
            .min()
            .expect("a conf file");
        assert_eq!(first, CONF, "{CONF} must sort first in the conf dir");
        ctx.use_conf(i, NET, &text);
        eprintln!("node {i}: {CONF} loaded:\n{text}");
    }
}

/// B: a busybox pod per node, WireGuard between them.
fn pods_and_tunnel(ctx: &mut Ctx) {
    let c = ctx.c;
    for i in 1..=2 {
        c.apply(&pod_yaml(
            &format!("wg{i}"),
            &c.node_netns(i),
            "wgk8s-wg",
            None,
        ));
    }
    for i in 1..=2 {
        let d = c
            .wait_pod_running(&format!("wg{i}"), Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("wg{i} Running after {:.1} s (polled)", d.as_secs_f64());
    }
    eprintln!("{}", c.kubectl_ok(&["get", "pods", "-o", "wide"]));
    let mut eth0 = Vec::new();
    for i in 1..=2 {
        let pod = format!("wg{i}");
        let addrs = out_text(&c.exec(&pod, &["ip", "-o", "addr", "show"]));
        eprintln!("{pod}: ip -o addr show:\n{addrs}");
        let ip = c.pod_ip(&pod);
        assert!(
            ip.starts_with(ctx.podcidr[i - 1].rsplit_once('.').expect("cidr").0),
            "{pod}: podIP {ip} is not from the node's podCIDR {} (containerd must \
             report eth0's address, not wg0's)",
            ctx.podcidr[i - 1]
        );
        assert!(
            addrs.contains(&format!("eth0    inet {ip}/"))
                || addrs.contains(&format!("eth0 inet {ip}/"))
                || addrs
                    .lines()
                    .any(|l| l.contains("eth0") && l.contains(&format!("inet {ip}/"))),
            "{pod}: eth0 without {ip}"
        );
        assert!(
            addrs
                .lines()
                .any(|l| l.contains(" wg0") && l.contains(&format!("inet {}/24", WG_ADDR[i - 1]))),
            "{pod}: no wg0 with {}/24",
            WG_ADDR[i - 1]
        );
        eth0.push(ip);
    }
    let d =
        ping_ok(c, "wg1", WG_ADDR[1], Duration::from_secs(15)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "wg1 pings {} (wg2's WireGuard address) through the tunnel: first success after {:.1} s",
        WG_ADDR[1],
        d.as_secs_f64()
    );
    eprintln!(
        "{}",
        out_text(&c.exec("wg1", &["ping", "-c", "3", "-W", "2", WG_ADDR[1]]))
    );
    ping_ok(c, "wg1", &eth0[1], Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "wg1 pings wg2's eth0 {} (the pod network still works)",
        eth0[1]
    );
    for i in 1..=2 {
        let port = LISTEN_PORT[i - 1];
        let node = udp_ports(&out_text(&c.node_exec(i, &["cat", "/proc/net/udp"])));
        let pod = udp_ports(&out_text(
            &c.exec(&format!("wg{i}"), &["cat", "/proc/net/udp"]),
        ));
        assert!(
            node.contains(&port),
            "node {i}: UDP {port} not in the node: {node:?}"
        );
        assert!(
            !pod.contains(&port),
            "wg{i}: UDP {port} inside the pod: {pod:?}"
        );
        eprintln!("node {i}: UDP {port} is in the node's namespace, not in pod wg{i}");
    }
    for i in 1..=2 {
        let r = records(&ctx.state_dir(i));
        assert_eq!(r.len(), 1, "node {i}: one record expected: {r:?}");
        assert_eq!(
            c.node_processes(i, "wireguard-go").len(),
            1,
            "node {i}: one wireguard-go expected"
        );
    }
}

/// C: kubelet's DEL leaves nothing.
fn delete_pods(ctx: &mut Ctx) {
    let c = ctx.c;
    c.kubectl_ok(&[
        "delete",
        "pod",
        "wg1",
        "wg2",
        "--wait=true",
        "--timeout=60s",
    ]);
    for i in 1..=2 {
        assert_clean(ctx, i, Duration::from_secs(15));
        eprintln!("node {i}: no wg link, no wireguard-go, no wgc socket, no record");
    }
}

/// E: cniVersion 1.1.0: containerd's STATUS (and GC, if it ever calls it)
/// reach wg-cni; the node stays Ready.
fn version_110(ctx: &mut Ctx) {
    let c = ctx.c;
    let i = 1;
    let log = c.node_dir(i).join("wgcni-110.log");
    let mut wg = ctx.static_wg(i);
    wg["logFile"] = json!(log);
    let text = ctx.conflist(i, "1.1.0", NET_110, wg);
    ctx.use_conf(i, NET_110, &text);
    let t = Instant::now();
    let mut status_lines = Vec::new();
    let seen = eventually(Duration::from_secs(30), || {
        status_lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" Status "))
            .map(str::to_string)
            .collect();
        !status_lines.is_empty()
    });
    assert!(
        seen,
        "no STATUS from containerd in {} within 30 s",
        log.display()
    );
    eprintln!(
        "STATUS reached wg-cni after {:.1} s: {}",
        t.elapsed().as_secs_f64(),
        status_lines[0]
    );
    c.apply(&pod_yaml("wg110", &c.node_netns(i), "wgk8s-wg110", None));
    c.wait_pod_running("wg110", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let addrs = out_text(&c.exec("wg110", &["ip", "-o", "addr", "show", "wg0"]));
    assert!(addrs.contains(WG_ADDR[0]), "wg110: wg0: {addrs}");
    c.kubectl_ok(&["delete", "pod", "wg110", "--wait=true", "--timeout=60s"]);
    // kubelet asks for the runtime's status every few seconds; the node must
    // stay Ready with wg-cni answering STATUS.
    std::thread::sleep(Duration::from_secs(6));
    assert!(c.node_ready(i), "node {i} not Ready with a 1.1.0 conflist");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let count = |verb: &str| text.lines().filter(|l| l.contains(verb)).count();
    let (st, gc) = (count(" Status "), count(" Gc "));
    eprintln!(
        "wg-cni log {}: {st} STATUS, {} ADD, {} DEL, {gc} GC; node Ready",
        log.display(),
        count(" Add "),
        count(" Del ")
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains(" Status ") && l.contains("error")),
        "a STATUS failed:\n{text}"
    );
    if gc == 0 {
        eprintln!(
            "GC: not called. containerd v2.4.2 (go-cni v1.1.14) never sends CNI GC: go-cni's \
             Status() calls libcni GetStatusNetworkList, but nothing calls GCNetworkList."
        );
    }
    assert_clean(ctx, i, Duration::from_secs(15));
    ctx.use_conf(i, NET, &ctx.conflist(i, "1.0.0", NET, ctx.static_wg(i)));
}

/// F: 30 pods at once on node 2, each with its own WireGuard interface.
///
/// The static configuration gives every pod of a node the same address, key
/// and listen port, so only one such pod per node can exist. This scenario
/// uses wg-cni without `address`, `privateKey`, `listenPort` and `peers`
/// (all optional, docs/configuration.md): each attachment gets its own
/// generated key and a random listen port in the node, no address and no
/// peer. That is a valid configuration (a node agent would add peers later
/// from the records' public keys), and the one that lets many wg-cni pods
/// share a node.
fn many_pods(ctx: &mut Ctx) {
    const N: usize = 30;
    let c = ctx.c;
    let i = 2;
    let text = ctx.conflist(i, "1.0.0", NET_MANY, json!({}));
    ctx.use_conf(i, NET_MANY, &text);
    let yaml: Vec<String> = (0..N)
        .map(|k| pod_yaml(&format!("many{k}"), &c.node_netns(i), "wgk8s-many", None))
        .collect();
    let t = Instant::now();
    c.apply(&yaml.join("---\n"));
    let out = c.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app=wgk8s-many",
        "--timeout=240s",
    ]);
    assert!(
        out.status.success(),
        "{N} pods not Ready: {}\n{}",
        out_text(&out),
        c.kubectl_ok(&["get", "pods", "-o", "wide"])
    );
    eprintln!(
        "{N} pods Ready {:.1} s after apply",
        t.elapsed().as_secs_f64()
    );
    let running = c.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=wgk8s-many",
        "-o",
        "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}",
    ]);
    assert_eq!(
        running.lines().filter(|l| *l == "Running").count(),
        N,
        "{running}"
    );
    assert_eq!(records(&ctx.state_dir(i)).len(), N, "records");
    assert_eq!(
        c.node_processes(i, "wireguard-go").len(),
        N,
        "wireguard-go daemons"
    );
    let wg0 = out_text(&c.exec("many7", &["ip", "-o", "link", "show", "wg0"]));
    assert!(wg0.contains("wg0"), "many7 has no wg0: {wg0}");
    let t = Instant::now();
    c.kubectl_ok(&[
        "delete",
        "pod",
        "-l",
        "app=wgk8s-many",
        "--wait=true",
        "--timeout=240s",
    ]);
    eprintln!("{N} pods deleted in {:.1} s", t.elapsed().as_secs_f64());
    assert_clean(ctx, i, Duration::from_secs(30));
    eprintln!("node {i}: nothing left of {N} attachments");
    ctx.use_conf(i, NET, &ctx.conflist(i, "1.0.0", NET, ctx.static_wg(i)));
}

/// D: a pod deleted (forcibly, from the apiserver) while its node's kubelet
/// is down: when the kubelet comes back it finds the orphaned sandbox and
/// stops it, which runs wg-cni's DEL; nothing is left.
fn kubelet_down_delete(ctx: &mut Ctx) {
    let c = ctx.c;
    let i = 2;
    let text = ctx.conflist(i, "1.0.0", NET_MANY, json!({}));
    ctx.use_conf(i, NET_MANY, &text);
    c.apply(&pod_yaml("orphan", &c.node_netns(i), "wgk8s-orphan", None));
    c.wait_pod_running("orphan", Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(records(&ctx.state_dir(i)).len(), 1, "one attachment");
    let kubelet = |verb: &str| {
        let out = std::process::Command::new(c.script())
            .args(["kubelet", verb, &i.to_string()])
            .output()
            .expect("scripts/cluster kubelet");
        assert!(out.status.success(), "kubelet {verb}: {}", out_text(&out));
    };
    kubelet("stop");
    c.kubectl_ok(&[
        "delete",
        "pod",
        "orphan",
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    // The kubelet is down: nothing on the node has changed yet.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        records(&ctx.state_dir(i)).len(),
        1,
        "the attachment outlives the pod object while the kubelet is down"
    );
    let t = Instant::now();
    kubelet("start");
    assert_clean(ctx, i, Duration::from_secs(90));
    eprintln!(
        "node {i}: the orphan's attachment removed {:.1} s after the kubelet restarted",
        t.elapsed().as_secs_f64()
    );
    assert!(
        eventually(Duration::from_secs(60), || c.node_ready(i)),
        "node {i} Ready again"
    );
    ctx.use_conf(i, NET, &ctx.conflist(i, "1.0.0", NET, ctx.static_wg(i)));
}

/// Seconds since midnight of a containerd log line's `time="...T..Z"`.
fn log_time(line: &str) -> Option<f64> {
    let t = line.split("time=\"").nth(1)?.split('"').next()?;
    let hms = t.split('T').nth(1)?.trim_end_matches('Z');
    let mut it = hms.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// containerd's RunPodSandbox of pod `name`: from the request to "returns
/// sandbox id" (CNI ADD of the whole chain + the pause container).
fn run_sandbox_secs(log: &str, name: &str) -> Option<f64> {
    // containerd 2.4 logs the metadata in protobuf text form, escaped in
    // logrus' msg="...": name:\"NAME\" (older: &PodSandboxMetadata{Name:NAME,).
    let forms = [
        format!("name:\\\"{name}\\\""),
        format!("name:\"{name}\""),
        format!("Name:{name},"),
    ];
    let mut start = None;
    for l in log
        .lines()
        .filter(|l| l.contains("RunPodSandbox for") && forms.iter().any(|f| l.contains(f)))
    {
        if l.contains("returns sandbox id") {
            let (a, b) = (start?, log_time(l)?);
            let d: f64 = b - a;
            return Some(if d < 0.0 { d + 86400.0 } else { d });
        } else if start.is_none() {
            start = log_time(l);
        }
    }
    None
}

/// kubelet's `podStartE2EDuration` of pod `name` (creation -> running,
/// observed by kubelet).
fn kubelet_e2e_secs(log: &str, name: &str) -> Option<f64> {
    let needle = format!("pod=\"default/{name}\"");
    let l = log
        .lines()
        .find(|l| l.contains("Observed pod startup duration") && l.contains(&needle))?;
    let v = l
        .split("podStartE2EDuration=\"")
        .nth(1)?
        .split('"')
        .next()?;
    parse_go_duration(v)
}

fn parse_go_duration(v: &str) -> Option<f64> {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|x| x / 1000.0);
    }
    if let Some((m, s)) = v.split_once('m') {
        let s = s.strip_suffix('s')?;
        return Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?);
    }
    v.strip_suffix('s')?.parse().ok()
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// G: pod start with and without wg-cni in the chain, node 1, alternating.
fn bench(ctx: &mut Ctx) {
    let rounds: usize = std::env::var("WG_CLUSTER_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let c = ctx.c;
    let i = 1;
    let with = ctx.conflist(i, "1.0.0", NET, ctx.static_wg(i));
    let mut m: BTreeMap<&str, [Vec<f64>; 3]> = BTreeMap::new();
    for k in 0..rounds * 2 {
        let wg = k % 2 == 0;
        let label = if wg { "with wg-cni" } else { "without" };
        if wg {
            ctx.use_conf(i, NET, &with);
        } else {
            ctx.use_default(i);
        }
        let name = format!("bench-{}-{k}", if wg { "wg" } else { "plain" });
        let t = Instant::now();
        c.apply(&pod_yaml(&name, &c.node_netns(i), "wgk8s-bench", None));
        c.wait_pod_running(&name, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        let wall = t.elapsed().as_secs_f64();
        c.kubectl_ok(&["delete", "pod", &name, "--wait=true", "--timeout=60s"]);
        let e = m.entry(label).or_default();
        e[0].push(wall);
        let klog = std::fs::read_to_string(c.kubelet_log(i)).unwrap_or_default();
        if let Some(x) = kubelet_e2e_secs(&klog, &name) {
            e[1].push(x);
        }
        let clog = std::fs::read_to_string(c.containerd_log(i)).unwrap_or_default();
        if let Some(x) = run_sandbox_secs(&clog, &name) {
            e[2].push(x);
        }
        if wg {
            assert_clean(ctx, i, Duration::from_secs(15));
        }
    }
    ctx.use_conf(i, NET, &with);
    let mut table = format!(
        "Pod start on one node (wgk8s-n1), busybox, median of {rounds} each, alternating \
         (same run). Chain: bridge + host-local + portmap [+ wg-cni, static mode, \
         userspace wireguard-go].\n\n\
         | chain | apply -> Running (polled by the test, 80 ms + kubectl) | kubelet podStartE2EDuration (from creationTimestamp, whole seconds: +0-1 s) | containerd RunPodSandbox (CNI ADD + pause) | n |\n\
         |---|---|---|---|---|\n"
    );
    for (label, [wall, e2e, sb]) in m.iter_mut() {
        let n = wall.len();
        table.push_str(&format!(
            "| {label} | {:.3} s | {:.3} s | {:.3} s | {n} ({} / {} parsed) |\n",
            median(wall),
            median(e2e),
            median(sb),
            e2e.len(),
            sb.len()
        ));
    }
    eprintln!("\n{table}");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cluster-bench.md");
    std::fs::write(&target, &table).expect("write target/cluster-bench.md");
    eprintln!("written to {}", target.display());
}

#[test]
fn wg_cni_pods_in_a_real_cluster() {
    let total = Instant::now();
    let Some(c) = Cluster::up("wg_cni_pods_in_a_real_cluster") else {
        return;
    };
    eprintln!("cluster: up in {:.1} s", c.up_time.as_secs_f64());
    assert!(c.nodes() >= 2, "needs 2 worker nodes");
    let podcidr = |i: usize| {
        std::fs::read_to_string(c.node_dir(i).join("podcidr"))
            .expect("podcidr")
            .trim()
            .to_string()
    };
    let mut ctx = Ctx {
        c: &c,
        nodes: [
            Node {
                key: PrivateKey::generate().expect("key"),
            },
            Node {
                key: PrivateKey::generate().expect("key"),
            },
        ],
        podcidr: [podcidr(1), podcidr(2)],
        times: vec![("up".into(), c.up_time)],
    };
    ctx.time("a. install wg-cni + conflists", install);
    ctx.time("b. pods, tunnel, pod network, UDP socket", pods_and_tunnel);
    ctx.time("c. delete pods: nothing left", delete_pods);
    ctx.time("e. cniVersion 1.1.0: STATUS, Ready", version_110);
    ctx.time("f. 30 pods at once on one node", many_pods);
    ctx.time(
        "d. pod deleted while its kubelet is down, cleaned up after restart",
        kubelet_down_delete,
    );
    // A benchmark, not a test: run on request (scripts/bench sets it).
    if std::env::var_os("WG_CLUSTER_BENCH_ROUNDS").is_some() {
        ctx.time("g. benchmark", bench);
    } else {
        eprintln!("\n=== g. benchmark: not run (WG_CLUSTER_BENCH_ROUNDS=20 runs it)");
    }
    let times = std::mem::take(&mut ctx.times);
    drop(ctx);
    let t = Instant::now();
    drop(c);
    let down = t.elapsed();
    eprintln!("\n| step | seconds |\n|---|---|");
    for (what, d) in &times {
        eprintln!("| {what} | {:.1} |", d.as_secs_f64());
    }
    eprintln!("| down | {:.1} |", down.as_secs_f64());
    eprintln!("| total | {:.1} |", total.elapsed().as_secs_f64());
}
