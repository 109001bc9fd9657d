//! Managed mode on a real Kubernetes cluster (`scripts/cluster`,
//! docs/cluster.md): the CRDs, RBAC and admission policy applied with
//! kubectl; a wg-agent on each node (in the node's network and mount
//! namespaces, like its kubelet, with a service-account token bound to its
//! Node); wg-cni chained after bridge + host-local + portmap in managed
//! mode. Every scenario runs in ONE test on one cluster (its drop brings
//! the cluster down, also on panic); the agents are killed by PID.
//!
//! `WG_NETNS_REQUIRE_ALL=1 cargo test -p wg-agent --test cluster -- --nocapture`

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wg_netns::{
    Backend, Birthplace, DeviceConfig, InterfaceSpec, IpNetwork, Netns, PrivateKey, Userspace,
};
use wg_netns_testkit::cluster::{mesh_network_yaml, pod_yaml, Cluster};
use wg_netns_testkit::{eventually, must, TestNs};

#[path = "cluster/converge.rs"]
mod converge;
#[path = "cluster/trust.rs"]
mod trust;

#[path = "cluster/optin.rs"]
mod optin;

#[path = "cluster/addresses.rs"]
mod addresses;

#[path = "cluster/egress.rs"]
mod egress;

const CONF: &str = "00-wgk8s-managed.conflist";
const POOL: &str = "10.77.0.0/16";
const EXT_NET: &str = "10.99.0.0/24";
const EXT_NET2: &str = "10.98.0.0/24";
const EXT_IP: &str = "10.250.0.100";
const EXT_PORT: u16 = 51900;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_path_buf()
}

/// One node's agent process (killed by PID on drop).
struct AgentProc {
    child: Option<Child>,
    node: usize,
}

impl AgentProc {
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(c.id() as i32).expect("pid"),
                rustix::process::Signal::TERM,
            );
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.node;
    }
}

struct Ctx<'a> {
    c: &'a Cluster,
    agents: Vec<AgentProc>,
    podcidr: Vec<String>,
}

impl Drop for Ctx<'_> {
    /// On failure, what the agents and the plugin said (the cluster's
    /// directory goes with it).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for i in 1..=2 {
            let keep = std::env::temp_dir().join(format!("wg-agent-cluster-n{i}.log"));
            let _ = std::fs::copy(self.agent_log(i), &keep);
            eprintln!(
                "---- agent {i} log (tail; whole: {}) ----\n{}",
                keep.display(),
                self.log_tail(i)
            );
            let p = self.c.node_dir(i).join("wgcni-managed.log");
            let s = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            eprintln!(
                "---- wg-cni log node {i} (tail) ----\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
    }
}

impl Ctx<'_> {
    fn agent_log(&self, i: usize) -> PathBuf {
        self.c.node_dir(i).join("wg-agent.log")
    }

    fn kubeconfig(&self, i: usize) -> PathBuf {
        self.c.node_dir(i).join("wg-agent.kubeconfig")
    }

    fn state_dir(&self, i: usize) -> PathBuf {
        self.c.node_dir(i).join("wg-agent-state")
    }

    /// A token of the agent's service account bound to node `i`'s Node
    /// object (so the apiserver names the node in its user info, which the
    /// admission policy reads), in a kubeconfig.
    fn write_kubeconfig(&self, i: usize) {
        let token = self.c.kubectl_ok(&[
            "create",
            "token",
            "wg-agent",
            "-n",
            "kube-system",
            "--bound-object-kind",
            "Node",
            "--bound-object-name",
            &self.c.node_netns(i),
            "--duration",
            "2h",
        ]);
        write_kubeconfig_file(self.c, &self.kubeconfig(i), &token);
    }

    /// The (public key, allowed IP) pairs node `i`'s agent reads on
    /// `pod`'s device (its metrics come from reading the device itself).
    fn device_allowed_ips(&self, i: usize, pod: &str) -> Vec<(String, String)> {
        let Some((_, body)) = self.http(i, "/metrics") else {
            return vec![];
        };
        let label = |l: &str, name: &str| {
            l.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_string)
        };
        body.lines()
            .filter(|l| l.starts_with("wireguard_peer_allowed_ips_info"))
            .filter(|l| l.contains(&format!("pod=\"{pod}\"")))
            .filter_map(|l| Some((label(l, "public_key")?, label(l, "allowed_ips")?)))
            .collect()
    }

    /// Start node `i`'s agent in the node's network and mount namespaces.
    fn start_agent(&mut self, i: usize) {
        let pid = self.c.containerd_pid(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.agent_log(i))
            .expect("agent log");
        let child = Command::new("nsenter")
            .arg(format!("--mount=/proc/{pid}/ns/mnt"))
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .arg(env!("CARGO_BIN_EXE_wg-agent"))
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("NODE_NAME", self.c.node_netns(i))
            .env("NODE_IP", self.c.node_ip(i))
            .env("KUBECONFIG", self.kubeconfig(i))
            .env("WG_AGENT_STATE_DIR", self.state_dir(i))
            .env("WG_AGENT_RUN_DIR", "/run/wg-agent")
            .env("WG_AGENT_LISTEN", format!("{}:9586", self.c.node_ip(i)))
            .env("WG_AGENT_BACKEND", "userspace")
            .env("WG_AGENT_STATS_INTERVAL", "1s")
            .env("WG_AGENT_STATUS_MIN_INTERVAL", "2s")
            .env("WG_AGENT_VERIFY_INTERVAL", "5s")
            .env("WG_AGENT_GC_GRACE", "10s")
            .env("WG_AGENT_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start wg-agent");
        let slot = &mut self.agents[i - 1];
        slot.kill9();
        slot.child = Some(child);
        let ok = eventually(Duration::from_secs(60), || {
            self.http(i, "/readyz").is_some_and(|(code, _)| code == 200)
        });
        assert!(ok, "agent {i} not ready:\n{}", self.log_tail(i));
    }

    fn log_tail(&self, i: usize) -> String {
        let s = std::fs::read_to_string(self.agent_log(i)).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// GET `path` from node `i`'s agent (from inside the node's network
    /// namespace): status code and body.
    fn http(&self, i: usize, path: &str) -> Option<(u16, String)> {
        let ns = Netns::from_name(&self.c.node_netns(i)).ok()?;
        let addr = format!("{}:9586", self.c.node_ip(i));
        let path = path.to_string();
        ns.run(move || {
            let mut s = std::net::TcpStream::connect(&addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            let code = out.split_whitespace().nth(1)?.parse().ok()?;
            let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
            Some((code, body))
        })
        .ok()
        .flatten()
    }

    /// The value of one series (`name` or `name{labels}`, as exposed) on
    /// node `i`'s /metrics.
    fn metric(&self, i: usize, series: &str) -> Option<u64> {
        let (_, body) = self.http(i, "/metrics")?;
        let prefix = format!("{series} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    }

    fn conflist(&self, i: usize) -> String {
        let cidr = &self.podcidr[i - 1];
        let d = self.c.node_dir(i);
        format!(
            r#"{{
  "cniVersion": "1.0.0",
  "name": "wgk8s-managed",
  "plugins": [
    {{"type": "bridge", "bridge": "wgk8s-cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{cidr}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{ipam}"}}}},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}},
    {wgcni}
  ]
}}"#,
            ipam = d.join("cni/ipam").display(),
            wgcni = self.wgcni_entry(i),
        )
    }

    /// wg-cni's entry as the installer writes it (the pod annotations
    /// capability declared), logging to the node's directory.
    fn wgcni_entry(&self, i: usize) -> Value {
        let mut entry = serde_json::json!({"type": "wg-cni", "managed": true,
            "logFile": self.c.node_dir(i).join("wgcni-managed.log")});
        wg_agent::install::declare_pod_annotations(&mut entry);
        entry
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.c.kubectl_ok(&a)).expect("kubectl json")
    }

    fn attachment(&self, pod: &str) -> Option<Value> {
        let out = self
            .c
            .kubectl(&["get", "wgatt", &format!("{pod}-wg0"), "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The pod's WireGuard address once its attachment shows it.
    fn wg_addr(&self, pod: &str) -> String {
        self.c
            .wg_address(pod, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no attachment status for {pod}"))
    }

    fn public_key(&self, pod: &str) -> String {
        self.attachment(pod)
            .and_then(|a| a["status"]["publicKey"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The agents' view of every device (metrics without allowed IPs) and
    /// the attachments, for a failure message.
    fn dump(&self) -> String {
        let m = |i| {
            self.http(i, "/metrics")
                .map(|(_, b)| {
                    b.lines()
                        .filter(|l| {
                            l.starts_with("wireguard_peer_info")
                                || l.starts_with("wireguard_peer_last")
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default()
        };
        format!(
            "node 1:\n{}\nnode 2:\n{}\n{}",
            m(1),
            m(2),
            self.c.kubectl_ok(&["get", "wgatt", "-o", "wide"])
        )
    }

    fn ping(&self, pod: &str, ip: &str) -> bool {
        self.c.pod_pings(pod, ip, Duration::from_secs(15))
    }

    /// `ping -c COUNT -i 0.2 -W 1 IP` started in `pod` (through kubectl
    /// exec) while the caller breaks something; [`PingRun::finish`] waits.
    fn ping_in_background(&self, pod: &str, ip: &str, count: u32) -> PingRun {
        let count = count.to_string();
        let child = self
            .c
            .kubectl_as(&self.c.kubeconfig())
            .args([
                "exec", pod, "--", "ping", "-c", &count, "-i", "0.2", "-W", "1", ip,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ping");
        PingRun { child, count }
    }
}

/// A ping running in a pod ([`Ctx::ping_in_background`]).
struct PingRun {
    child: Child,
    count: String,
}

impl PingRun {
    /// Wait for it: (every echo answered, ping's summary line, its whole
    /// output).
    fn finish(self) -> (bool, String, String) {
        let out = self.child.wait_with_output().expect("ping output");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let summary = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or("")
            .to_string();
        let all = summary.contains(&format!("{} packets received", self.count))
            && summary.contains(" 0% packet loss");
        (all, summary, text)
    }
}

/// A kubeconfig at `path` (mode 0600) for the test cluster's apiserver
/// with `token`.
fn write_kubeconfig_file(c: &Cluster, path: &Path, token: &str) {
    let ca = c.dir().join("pki/ca.crt");
    let cfg = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.250.0.1:6443\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
        ca.display(),
        token.trim()
    );
    std::fs::write(path, cfg).expect("kubeconfig");
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
}

/// wg-cni's binary, next to this test's, built now (a binary of another
/// package is not something cargo builds for this test, and a stale one
/// would test old code).
fn wg_cni_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/PROFILE");
    let target = profile_dir.parent().expect("target dir");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "wg-cni", "--bin", "wg-cni"])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(repo());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let st = cmd.status().expect("cargo build wg-cni");
    assert!(st.success(), "cannot build wg-cni");
    profile_dir.join("wg-cni")
}

fn peer_yaml(key: &str, nets: &[&str]) -> String {
    format!(
        "apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardPeer\nmetadata: {{name: gateway, namespace: default}}\n\
         spec:\n  network: pods\n  publicKey: \"{key}\"\n  endpoint: \"{EXT_IP}:{EXT_PORT}\"\n  allowedIPs: [{}]\n  \
         podSelector: {{matchLabels: {{app: a}}}}\n",
        nets.iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A WireGuard host outside the cluster: a namespace on the cluster's
/// bridge (10.250.0.100) with a userspace device.
struct External {
    host: BridgeHost,
    key: PrivateKey,
}

/// A host outside the cluster: a namespace `wgk8s-*-ROLE` whose `eth0`
/// (address `ip/24`) is a veth onto the cluster's bridge in wgk8s-cp, with
/// a userspace WireGuard birthplace in it. On drop the bridge end of the
/// veth is deleted, then the namespace.
struct BridgeHost {
    place: Birthplace,
    ns: TestNs,
    veth: String,
}

impl Drop for BridgeHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["-n", "wgk8s-cp", "link", "del", &self.veth])
            .output();
    }
}

fn bridge_host(role: &str, veth: &str, ip: &str) -> BridgeHost {
    let ns = TestNs::with_prefix("wgk8s", role);
    let name = ns.name.clone();
    must(&[
        "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &name,
    ]);
    must(&["ip", "link", "set", veth, "netns", "wgk8s-cp"]);
    must(&[
        "ip", "-n", "wgk8s-cp", "link", "set", veth, "master", "wgk8s-br", "up",
    ]);
    must(&[
        "ip",
        "-n",
        &name,
        "addr",
        "add",
        &format!("{ip}/24"),
        "dev",
        "eth0",
    ]);
    must(&["ip", "-n", &name, "link", "set", "eth0", "up"]);
    let backend = Backend::of_kind(wg_netns::BackendKind::Userspace, Userspace::from_env());
    let netns = Netns::from_name(&name).expect("ns");
    let place = Birthplace::new(&netns, &netns, &backend).expect("place");
    BridgeHost {
        place,
        ns,
        veth: veth.to_string(),
    }
}

impl External {
    fn new() -> External {
        External {
            host: bridge_host("ext", "wgk8s-extv", EXT_IP),
            key: PrivateKey::generate().expect("key"),
        }
    }

    /// The host's interface: its own key, port and addresses, a route to
    /// the pods' pool, no peer yet (`wg setconf` of showconf's output
    /// gives it those).
    fn configure(&self, nets: &[&str]) {
        let mut spec = InterfaceSpec::new(
            wg_netns::IfName::new("wgk8sext0").expect("name"),
            wg_netns::IfName::new("wgext").expect("name"),
        )
        .device(
            DeviceConfig::new()
                .private_key(self.key.clone())
                .listen_port(EXT_PORT)
                .replace_peers(),
        )
        .route(wg_netns::Route::new(
            POOL.parse::<IpNetwork>().expect("pool"),
        ));
        for n in nets {
            let net: IpNetwork = n.parse().expect("net");
            let addr = IpNetwork::new(
                match net.ip() {
                    std::net::IpAddr::V4(v) => std::net::IpAddr::V4((u32::from(v) + 1).into()),
                    v6 => v6,
                },
                net.prefix(),
            )
            .expect("addr");
            spec = spec.address(addr);
        }
        self.host.place.ensure(&spec).expect("external device");
    }
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.host.place.detach(
            &wg_netns::IfName::new("wgext").expect("name"),
            &wg_netns::IfName::new("wgk8sext0").expect("name"),
        );
    }
}

#[test]
fn managed_mode_on_a_real_cluster() {
    let Some(c) = Cluster::up("wg-agent cluster") else {
        return;
    };
    let mut ctx = Ctx {
        c: &c,
        agents: (1..=2)
            .map(|node| AgentProc { child: None, node })
            .collect(),
        podcidr: (1..=2)
            .map(|i| {
                std::fs::read_to_string(c.node_dir(i).join("podcidr"))
                    .expect("podcidr")
                    .trim()
                    .to_string()
            })
            .collect(),
    };
    let t = Instant::now();
    setup(&mut ctx);
    eprintln!("setup: {:?}", t.elapsed());
    mesh(&ctx);
    eprintln!("mesh: {:?}", t.elapsed());
    // The egress scenario alone (iterating on it): WG_AGENT_TEST_EGRESS_ONLY=1.
    if std::env::var_os("WG_AGENT_TEST_EGRESS_ONLY").is_some() {
        egress::egress_with_kill_switch(&mut ctx);
        teardown(&mut ctx);
        return;
    }
    if std::env::var_os("WG_AGENT_TEST_ROTATION_FIRST").is_some() {
        rotation(&ctx);
    }
    drift(&ctx);
    eprintln!("drift: {:?}", t.elapsed());
    converge::stopped_daemon_across_a_peer_edit(&ctx);
    eprintln!("stopped daemon: {:?}", t.elapsed());
    let ext = External::new();
    external_peer(&ctx, &ext);
    eprintln!("external peer: {:?}", t.elapsed());
    egress::egress_with_kill_switch(&mut ctx);
    eprintln!("egress with a kill switch: {:?}", t.elapsed());
    rbac_and_admission(&ctx);
    eprintln!("rbac: {:?}", t.elapsed());
    trust::forged_attachments(&ctx);
    eprintln!("forged attachments: {:?}", t.elapsed());
    trust::secrets_opt_in(&ctx);
    eprintln!("secrets opt-in: {:?}", t.elapsed());
    kill_agent_during_ping(&mut ctx);
    eprintln!("kill -9: {:?}", t.elapsed());
    optin::agent_down_optin(&mut ctx);
    eprintln!("agent down, opt-in: {:?}", t.elapsed());
    apiserver_outage(&ctx);
    eprintln!("apiserver outage: {:?}", t.elapsed());
    rotation(&ctx);
    eprintln!("rotation: {:?}", t.elapsed());
    // A pool added, then many_pods, then blocks given back.
    addresses::addresses(&mut ctx);
    eprintln!("addresses and many pods: {:?}", t.elapsed());
    teardown(&mut ctx);
    drop(ext);
}

fn setup(ctx: &mut Ctx) {
    let c = ctx.c;
    let crds = std::fs::read_to_string(repo().join("manifests/base/00-crds.yaml"))
        .expect("manifests/base/00-crds.yaml");
    c.apply(&crds);
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd",
        "wireguardnetworks.wireguard.wg-netns.io",
        "wireguardpeers.wireguard.wg-netns.io",
        "wireguardattachments.wireguard.wg-netns.io",
        "wireguardaddressblocks.wireguard.wg-netns.io",
    ]);
    for f in ["20-rbac.yaml", "30-admission.yaml"] {
        c.apply(&std::fs::read_to_string(repo().join("manifests/base").join(f)).expect("manifest"));
    }
    // A bad object is refused by the apiserver itself (the CRD's rules).
    let bad = c.kubectl_stdin(
        &["apply", "-f", "-"],
        Some("apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardPeer\nmetadata: {name: bad, namespace: default}\nspec: {network: pods, publicKey: nope, endpoint: \"10.0.0.1:99999\"}\n"),
    );
    assert!(!bad.status.success(), "a bad peer was accepted");
    c.apply(&mesh_network_yaml(POOL, (52000, 52199)));
    for i in 1..=2 {
        ctx.write_kubeconfig(i);
        c.install_cni_plugin(i, &wg_cni_bin(), "wg-cni");
        ctx.start_agent(i);
        c.write_cni_conf(i, CONF, &ctx.conflist(i));
        assert!(
            c.wait_cni_network(i, "wgk8s-managed", Duration::from_secs(30)),
            "node {i} did not load the managed conflist"
        );
    }
}

/// Annotated pods on both nodes get wg0 with an address of the pool and
/// ping each other through WireGuard; an unannotated pod gets nothing.
fn mesh(ctx: &Ctx) {
    let c = ctx.c;
    c.apply(&pod_yaml("wa", "wgk8s-n1", "a", Some("pods")));
    c.apply(&pod_yaml("wb", "wgk8s-n2", "b", Some("pods")));
    c.apply(&pod_yaml("plain", "wgk8s-n1", "plain", None));
    for p in ["wa", "wb", "plain"] {
        if let Err(e) = c.wait_pod_running(p, Duration::from_secs(90)) {
            panic!(
                "{p}: {e}\nagent 1:\n{}\nagent 2:\n{}",
                ctx.log_tail(1),
                ctx.log_tail(2)
            );
        }
    }
    let (a, b) = (ctx.wg_addr("wa"), ctx.wg_addr("wb"));
    assert!(
        a.starts_with("10.77.") && b.starts_with("10.77.") && a != b,
        "{a} {b}"
    );
    let links =
        String::from_utf8_lossy(&c.exec("plain", &["ip", "-o", "link"]).stdout).into_owned();
    assert!(
        !links.contains("wg0"),
        "an unannotated pod got wg0: {links}"
    );
    assert!(c.kubectl(&["get", "wgatt", "plain-wg0"]).status.code() != Some(0));
    let addr = String::from_utf8_lossy(&c.exec("wa", &["ip", "-o", "addr", "show", "wg0"]).stdout)
        .into_owned();
    assert!(addr.contains(&format!("{a}/16")), "wa's wg0: {addr}");
    let t = Instant::now();
    assert!(ctx.ping("wa", &b), "wa cannot ping wb over WireGuard");
    assert!(ctx.ping("wb", &a), "wb cannot ping wa over WireGuard");
    eprintln!("mesh: wa {a} <-> wb {b} in {:?}", t.elapsed());
    // Status: what other pods act on (key, addresses, endpoint); the
    // handshake is in node 1's metrics, under the exporter's name.
    let ok = eventually(Duration::from_secs(20), || {
        ctx.attachment("wa").is_some_and(|v| {
            v["status"]["publicKey"].is_string()
                && v["status"]["endpoint"].is_string()
                && v["status"]["addresses"][0] == format!("{a}/16").as_str()
        })
    });
    assert!(ok, "wa's status: {:?}", ctx.attachment("wa"));
    // (Counters are read every second: the first read after the pings.)
    let handshake = eventually(Duration::from_secs(10), || {
        ctx.http(1, "/metrics").is_some_and(|(_, m)| {
            m.lines().any(|l| {
                l.starts_with("wireguard_peer_last_handshake_seconds")
                    && l.contains("pod=\"wa\"")
                    && l.split_whitespace()
                        .last()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v > 1.0e9)
            })
        })
    });
    assert!(handshake, "no handshake of wa's device in node 1's metrics");
    let table = c.kubectl_ok(&["get", "wgatt"]);
    eprintln!("{table}");
    assert!(table.contains("PUBLIC KEY") && table.contains("wa-wg0"));
    // Steady state: traffic moves counters and handshakes, never a status
    // (every agent watches every attachment: a status that followed
    // traffic would be sent to every node). Before, with counters in the
    // status, this window wrote wa's and wb's every 2 s.
    let writes = || {
        let w = |i| ctx.metric(i, "wg_agent_status_writes_total");
        (w(1), w(2))
    };
    let before = writes();
    let (all, _, text) = ctx.ping_in_background("wa", &b, 40).finish();
    assert!(all, "wa -> wb lost pings\n{text}");
    let after = writes();
    assert!(before.0.is_some() && before.1.is_some(), "{before:?}");
    assert_eq!(
        before, after,
        "status writes (node 1, node 2) during 8 s of traffic and no change"
    );
    eprintln!("mesh: 8 s of traffic, status writes before and after: {before:?}");
}

/// A peer removed behind the agent's back (`wg set ... remove` on the
/// node) is put back by the periodic verify, and counted.
fn drift(ctx: &Ctx) {
    let c = ctx.c;
    let uid = c.kubectl_ok(&["get", "pod", "wa", "-o", "jsonpath={.metadata.uid}"]);
    let birth = wg_netns::IfName::derived("wga", &format!("{}.wg0", uid.trim())).expect("name");
    let wb_key = ctx.public_key("wb");
    let pid = c.containerd_pid(1);
    let out = Command::new("nsenter")
        .arg(format!("--mount=/proc/{pid}/ns/mnt"))
        .args(["wg", "set", birth.as_str(), "peer", &wb_key, "remove"])
        .output()
        .expect("wg");
    assert!(
        out.status.success(),
        "wg set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let repairs = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("wg_agent_drift_repairs_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let t = Instant::now();
    let repaired = eventually(Duration::from_secs(20), || {
        ctx.http(1, "/metrics")
            .is_some_and(|(_, m)| repairs(&m) >= 1.0)
    });
    assert!(
        repaired,
        "the removed peer was not noticed:\n{}",
        ctx.log_tail(1)
    );
    // Typed end to end: the library's drift kind is the metric's label.
    let (_, m) = ctx.http(1, "/metrics").expect("metrics");
    assert!(
        m.lines()
            .any(|l| l.starts_with("wg_agent_drift_found_total{kind=\"peer_missing\"} ")),
        "no peer_missing drift counted:\n{}",
        m.lines()
            .filter(|l| l.starts_with("wg_agent_drift"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let b = ctx.wg_addr("wb");
    assert!(
        ctx.ping("wa", &b),
        "wa cannot reach wb after the repair\n{}",
        ctx.dump()
    );
    eprintln!(
        "drift repaired {:?} after the removal (verify every 5 s)",
        t.elapsed()
    );
}

/// A WireGuard host outside the cluster reached through a WireGuardPeer;
/// its allowedIPs edited live; the peer deleted and traffic stops.
fn external_peer(ctx: &Ctx, ext: &External) {
    let c = ctx.c;
    let key_of = |pod: &str| {
        ctx.attachment(pod).expect("attachment")["status"]["publicKey"]
            .as_str()
            .expect("key")
            .to_string()
    };
    let (wa_key, wb_key) = (key_of("wa"), key_of("wb"));
    ext.configure(&[EXT_NET, EXT_NET2]);
    let ext_key = ext.key.public_key().to_base64().to_string();
    c.apply(&peer_yaml(&ext_key, &[EXT_NET]));
    // The host learns its peers from `wg-agent showconf` alone (with the
    // user's kubeconfig): wa (app=a), not wb; no private key in it.
    let conf = showconf(ctx, "gateway");
    assert!(conf.contains(&format!("PublicKey = {wa_key}")), "{conf}");
    assert!(!conf.contains(&wb_key), "wb is not selected:\n{conf}");
    assert!(!conf.contains("PrivateKey ="), "{conf}");
    // As docs/join-from-outside.md says: setconf (which also clears the
    // private key it does not carry), then the host's own key.
    let file = ctx.c.node_dir(1).join("gateway.conf");
    std::fs::write(&file, &conf).expect("conf");
    let key_file = ctx.c.node_dir(1).join("gateway.key");
    wg_netns_testkit::write_key_file(&key_file, ext.key.to_base64().as_bytes());
    must(&["wg", "setconf", "wgk8sext0", file.to_str().expect("path")]);
    must(&[
        "wg",
        "set",
        "wgk8sext0",
        "private-key",
        key_file.to_str().expect("path"),
    ]);
    let _ = std::fs::remove_file(&key_file);
    let t = Instant::now();
    assert!(
        ctx.ping("wa", "10.99.0.1"),
        "wa cannot reach the external peer"
    );
    eprintln!("external peer reached {:?} after the apply", t.elapsed());
    // wb is not selected (podSelector app=a): no route to it.
    let routes = String::from_utf8_lossy(&c.exec("wb", &["ip", "route"]).stdout).into_owned();
    assert!(
        !routes.contains("10.99.0.0/24"),
        "wb got the peer: {routes}"
    );
    // Live edit: a second network, no pod restarted.
    c.apply(&peer_yaml(&ext_key, &[EXT_NET, EXT_NET2]));
    let t = Instant::now();
    let seen = eventually(Duration::from_secs(10), || {
        String::from_utf8_lossy(&c.exec("wa", &["ip", "route"]).stdout).contains("10.98.0.0/24")
    });
    assert!(seen, "the edit did not reach wa");
    eprintln!("allowedIPs edit visible in the pod after {:?}", t.elapsed());
    assert!(
        ctx.ping("wa", "10.98.0.1"),
        "wa cannot reach the edited network"
    );
    // Metrics (read every second by the agent): the external peer's
    // handshake and counters, under the exporter's names.
    let mut metrics = String::new();
    let handshake = |m: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("wireguard_peer_last_handshake_seconds") && l.contains(&ext_key)
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let ok = eventually(Duration::from_secs(10), || {
        metrics = ctx.http(1, "/metrics").map(|(_, b)| b).unwrap_or_default();
        handshake(&metrics) > 1.0e9 && metrics.contains("10.98.0.0/24")
    });
    assert!(
        ok,
        "no handshake or allowed IPs of the external peer in the metrics:\n{metrics}"
    );
    assert!(
        metrics.contains("wireguard_peer_receive_bytes_total{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wireguard_peer_allowed_ips_info{"),
        "{metrics}"
    );
    // Delete: traffic stops.
    c.kubectl_ok(&["delete", "wgpeer", "gateway"]);
    let gone = eventually(Duration::from_secs(10), || {
        !String::from_utf8_lossy(&c.exec("wa", &["ip", "route"]).stdout).contains("10.99.0.0/24")
    });
    assert!(gone, "the deleted peer's route stayed");
    assert!(
        !c.exec("wa", &["ping", "-c", "2", "-W", "1", "10.99.0.1"])
            .status
            .success(),
        "traffic to a deleted peer still flows"
    );
}

/// `wg-agent showconf -n default PEER`, run as a user would (the admin
/// kubeconfig), once it lists a pod.
fn showconf(ctx: &Ctx, peer: &str) -> String {
    let mut out = String::new();
    let ok = eventually(Duration::from_secs(20), || {
        // Where the cluster's kubectl runs (the apiserver's side).
        let o = Command::new("ip")
            .args(["netns", "exec", "wgk8s-cp"])
            .arg(env!("CARGO_BIN_EXE_wg-agent"))
            .args(["showconf", "-n", "default", peer])
            .env("KUBECONFIG", ctx.c.kubeconfig())
            .output()
            .expect("wg-agent showconf");
        out = String::from_utf8_lossy(&o.stdout).into_owned();
        if !o.status.success() {
            out.push_str(&String::from_utf8_lossy(&o.stderr));
        }
        o.status.success() && out.contains("[Peer]")
    });
    assert!(ok, "showconf: {out}");
    out
}

/// RBAC grants the agent what it needs and no more; the admission policy
/// refuses a write of another node's attachment by a real agent token.
fn rbac_and_admission(ctx: &Ctx) {
    let c = ctx.c;
    let sa = "system:serviceaccount:kube-system:wg-agent";
    let can = |verb: &str, what: &str| {
        let out = c.kubectl(&["auth", "can-i", "--as", sa, verb, what]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for (verb, what, want) in [
        // Secrets only where a namespace binds wg-agent-preshared-keys.
        ("get", "secrets", false),
        ("list", "secrets", false),
        ("watch", "secrets", false),
        ("create", "secrets", false),
        ("list", "pods", true),
        ("delete", "pods", false),
        ("create", "pods", false),
        ("list", "wireguardpeers.wireguard.wg-netns.io", true),
        ("create", "wireguardpeers.wireguard.wg-netns.io", false),
        ("create", "wireguardnetworks.wireguard.wg-netns.io", false),
        ("patch", "wireguardattachments.wireguard.wg-netns.io", true),
        (
            "create",
            "wireguardaddressblocks.wireguard.wg-netns.io",
            true,
        ),
        ("get", "nodes", false),
        ("create", "clusterrolebindings", false),
    ] {
        assert_eq!(can(verb, what), want, "can-i {verb} {what}");
    }
    // Node 1's agent token writing an attachment of node 2: refused by the
    // policy; of its own node: allowed.
    let att = |node: &str| {
        format!(
            "apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardAttachment\nmetadata: {{name: forged-{node}, namespace: default}}\n\
             spec: {{network: pods, podName: x, podUID: x, nodeName: {node}, interface: wg0}}\n"
        )
    };
    let agent1 = ctx.kubeconfig(1);
    let as_agent = |yaml: &str| trust::kubectl_as(ctx, &agent1, &["create", "-f", "-"], yaml);
    let denied = as_agent(&att("wgk8s-n2"));
    let err = String::from_utf8_lossy(&denied.stderr).into_owned();
    assert!(
        !denied.status.success(),
        "node 1's agent wrote node 2's attachment"
    );
    assert!(
        err.contains("wg-agent-own-node") && err.contains("may not write"),
        "not refused by the policy: {err}"
    );
    let allowed = as_agent(&att("wgk8s-n1"));
    assert!(
        allowed.status.success(),
        "node 1's agent cannot write its own: {}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    c.kubectl_ok(&["delete", "wgatt", "forged-wgk8s-n1"]);
    // The agent's logs hold no key material.
    for i in 1..=2 {
        let log = std::fs::read_to_string(ctx.agent_log(i)).unwrap_or_default();
        for dir in [ctx.state_dir(i).join("keys")] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let body = std::fs::read_to_string(e.path()).unwrap_or_default();
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if let Some(k) = v["privateKey"].as_str() {
                    assert!(!log.contains(k), "a private key is in agent {i}'s log");
                }
            }
        }
        let token = std::fs::read_to_string(ctx.kubeconfig(i)).unwrap_or_default();
        let token = token
            .split("token: ")
            .nth(1)
            .unwrap_or("x")
            .trim()
            .to_string();
        assert!(!log.contains(&token), "the token is in agent {i}'s log");
    }
}

/// A ping loop from wa to wb over WireGuard while node 1's agent is killed
/// with SIGKILL and restarted: no packet lost, and the restarted agent
/// sends no change to the devices.
fn kill_agent_during_ping(ctx: &mut Ctx) {
    let b = ctx.wg_addr("wb");
    let ping = ctx.ping_in_background("wa", &b, 40);
    std::thread::sleep(Duration::from_secs(2));
    ctx.agents[0].kill9();
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    ctx.start_agent(1);
    eprintln!("agent 1 restarted and ready in {:?}", t.elapsed());
    let (all, summary, text) = ping.finish();
    eprintln!("ping during kill -9: {summary}");
    assert!(all, "{text}");
    // The restart re-read the devices and found nothing to change.
    std::thread::sleep(Duration::from_secs(2));
    let (_, m) = ctx.http(1, "/metrics").expect("metrics");
    let updates = m
        .lines()
        .find(|l| l.starts_with("wg_agent_device_updates_total"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("?")
        .to_string();
    assert_eq!(
        updates,
        "0",
        "the restarted agent changed devices:\n{}",
        ctx.log_tail(1)
    );
}

/// The apiserver stops: traffic continues; it returns: the agents'
/// watches resume and a new pod joins the mesh.
fn apiserver_outage(ctx: &Ctx) {
    let c = ctx.c;
    let b = ctx.wg_addr("wb");
    let script = c.script();
    must(&[script.to_str().expect("path"), "apiserver", "stop"]);
    // Traffic keeps flowing with no apiserver (kubectl exec needs it, so
    // use crictl on the node).
    let id = String::from_utf8_lossy(
        &c.crictl(
            1,
            &[
                "ps",
                "-q",
                "--name",
                "bb",
                "--label",
                "io.kubernetes.pod.name=wa",
            ],
        )
        .stdout,
    )
    .trim()
    .to_string();
    assert!(!id.is_empty(), "no container of wa");
    let out = c.crictl(
        1,
        &["exec", &id, "ping", "-c", "5", "-i", "0.2", "-W", "1", &b],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss"),
        "traffic stopped during the apiserver outage: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(3));
    must(&[script.to_str().expect("path"), "apiserver", "start"]);
    // The agents converge: a new pod joins and reaches wa.
    c.apply(&pod_yaml("wc", "wgk8s-n2", "c", Some("pods")));
    c.wait_pod_running("wc", Duration::from_secs(120))
        .expect("wc");
    let a = ctx.wg_addr("wa");
    assert!(
        ctx.ping("wc", &a),
        "a pod made after the outage cannot reach wa\n{}",
        ctx.dump()
    );
    for i in 1..=2 {
        assert!(ctx.http(i, "/healthz").is_some_and(|(c, _)| c == 200));
    }
}

/// Rotating a pod's key (annotation) replaces the peer everywhere.
fn rotation(ctx: &Ctx) {
    let c = ctx.c;
    let before = ctx.public_key("wb");
    c.kubectl_ok(&[
        "annotate",
        "pod",
        "wb",
        "wireguard.wg-netns.io/rotate-key=1",
    ]);
    let mut after = String::new();
    let changed = eventually(Duration::from_secs(20), || {
        after = ctx.public_key("wb");
        !after.is_empty() && after != before
    });
    assert!(changed, "wb's key did not change");
    // wa's device now has the new key as a peer (node 1 reads it off the
    // device: its metrics).
    let seen = eventually(Duration::from_secs(20), || {
        let keys: Vec<String> = ctx
            .device_allowed_ips(1, "wa")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        keys.contains(&after) && !keys.contains(&before)
    });
    assert!(seen, "wa still has wb's old key");
    let b = ctx.wg_addr("wb");
    if !ctx.ping("wa", &b) {
        let m = |i| {
            ctx.http(i, "/metrics")
                .map(|(_, b)| {
                    b.lines()
                        .filter(|l| l.starts_with("wireguard_") && !l.contains("allowed_ips"))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default()
        };
        panic!(
            "no traffic after the rotation ({before} -> {after})\nnode 1:\n{}\nnode 2:\n{}\n{}",
            m(1),
            m(2),
            c.kubectl_ok(&["get", "wgatt", "-o", "yaml"])
        );
    }
}

/// 2 nodes x 30 pods at once: no duplicate address; all released after.
fn many_pods(ctx: &Ctx) {
    let c = ctx.c;
    let n = 30;
    let pools = ctx.json(&["get", "wgnet", "pods"])["spec"]["addressPools"]
        .as_array()
        .map_or(1, Vec::len);
    let mut yaml = String::new();
    for i in 0..n {
        for node in 1..=2 {
            yaml.push_str(&pod_yaml(
                &format!("m{node}-{i}"),
                &format!("wgk8s-n{node}"),
                "many",
                Some("pods"),
            ));
            yaml.push_str("---\n");
        }
    }
    let t = Instant::now();
    c.apply(&yaml);
    let all_running = eventually(Duration::from_secs(300), || {
        let v = ctx.json(&["get", "pods", "-l", "app=many"]);
        v["items"].as_array().is_some_and(|items| {
            items.len() == 2 * n && items.iter().all(|p| p["status"]["phase"] == "Running")
        })
    });
    assert!(
        all_running,
        "not all {} pods ran:\n{}",
        2 * n,
        c.kubectl_ok(&["get", "pods", "-o", "wide"])
    );
    eprintln!("{} pods Running in {:?}", 2 * n, t.elapsed());
    let mut addrs = BTreeSet::new();
    let ok = eventually(Duration::from_secs(60), || {
        let v = ctx.json(&["get", "wgatt"]);
        addrs.clear();
        let items = v["items"].as_array().cloned().unwrap_or_default();
        let mut dup = false;
        for a in &items {
            let all = a["status"]["addresses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for x in all.iter().filter_map(Value::as_str) {
                dup |= !addrs.insert(x.to_string());
            }
        }
        assert!(!dup, "duplicate address among {items:?}");
        // An address per pool for each of these pods (the 3 others were
        // made before a pool was added).
        addrs.len() >= 2 * n * pools + 3
    });
    assert!(
        ok,
        "only {} addresses:\n{}",
        addrs.len(),
        c.kubectl_ok(&["get", "wgatt", "-o", "wide"])
    );
    c.kubectl_ok(&[
        "delete",
        "pods",
        "-l",
        "app=many",
        "--wait=true",
        "--timeout=180s",
    ]);
    let released = eventually(Duration::from_secs(60), || {
        let v = ctx.json(&["get", "wgatt"]);
        v["items"].as_array().is_some_and(|i| i.len() == 3)
    });
    assert!(released, "attachments of deleted pods stayed");
    for i in 1..=2 {
        let recs = std::fs::read_dir(ctx.state_dir(i).join("attachments"))
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0);
        let expect = if i == 1 { 1 } else { 2 };
        assert_eq!(recs, expect, "node {i}: records left");
    }
}

/// Pods deleted, agents stopped (SIGTERM): nothing of ours is left on the
/// nodes.
fn teardown(ctx: &mut Ctx) {
    let c = ctx.c;
    c.kubectl_ok(&["delete", "pods", "--all", "--wait=true", "--timeout=120s"]);
    let clean = eventually(Duration::from_secs(40), || {
        (1..=2).all(|i| c.node_processes(i, "wireguard-go").is_empty())
    });
    assert!(clean, "wireguard-go daemons left after the pods went");
    // SIGTERM (their Drop): an agent's exit leaves devices alone.
    ctx.agents.clear();
    for i in 1..=2 {
        c.remove_cni_conf(i, CONF);
    }
}
