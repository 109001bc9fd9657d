//! The install, as a cluster operator does it (docs/install.md), on a real
//! Kubernetes cluster (`scripts/cluster`, docs/cluster.md) whose nodes run
//! bridge + host-local + portmap from `/etc/cni/net.d/10-wgk8s.conflist`:
//!
//! 1. the image, built now by `scripts/image-build` (a second build in
//!    fresh storage must give the same digests), and an "upgrade" image
//!    (another version), imported into each node's containerd (there is
//!    no registry);
//! 2. `kubectl apply -f manifests/`, unchanged: the DaemonSet becomes
//!    Ready on every node, each node's conflist chains wg-cni after its
//!    plugins and is otherwise byte-identical, the binaries are in
//!    `/opt/cni/bin`;
//! 3. annotated pods on two nodes get WireGuard and ping each other;
//! 4. the primary CNI rewriting its conflist (as flannel does at every
//!    restart) is followed by wg-cni back in the chain;
//! 5. a rolling upgrade to the other image while a ping runs between the
//!    pods' WireGuard addresses: no echo lost, the userspace daemons are
//!    the same processes afterwards;
//! 6. the agents' logs hold no token and no key;
//! 7. `kubectl delete -f manifests/`: the conflists are byte-identical to
//!    what they were, no binary is left in `/opt/cni/bin`.
//!
//! One test on one cluster (its drop brings the cluster down, also on
//! panic). `WG_NETNS_REQUIRE_ALL=1 cargo test -p wg-agent --test install -- --nocapture`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wg_netns_testkit::cluster::{mesh_network_yaml, pod_yaml, Cluster};
use wg_netns_testkit::{eventually, require_all};

/// The primary conflist `scripts/cluster` writes on every node.
const CONFLIST: &str = "10-wgk8s.conflist";
const NS: &str = "wireguard-system";
const IMAGE: &str = "wg-netns.local/wg-agent";
/// The binaries the installer puts into each node's `/opt/cni/bin`.
const INSTALLED: [&str; 2] = ["wg-cni", "wg-cni-wireguard-go"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_path_buf()
}

/// The cargo target dir this test was built in.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// `scripts/image-build --out DIR --version VERSION [--check-reproducible]`:
/// built now, from this checkout (an archive left from an earlier build
/// would test old code); its report (stdout).
fn image_build(out: &Path, version: &str, check: bool) -> Result<String, String> {
    let mut cmd = Command::new(repo().join("scripts/image-build"));
    cmd.arg("--out")
        .arg(out)
        .args(["--version", version])
        .env("CARGO_TARGET_DIR", target_dir())
        .stderr(Stdio::inherit());
    if check {
        cmd.arg("--check-reproducible");
    }
    let o = cmd
        .output()
        .map_err(|e| format!("scripts/image-build: {e}"))?;
    let report = String::from_utf8_lossy(&o.stdout).into_owned();
    if !o.status.success() {
        return Err(format!("scripts/image-build failed:\n{report}"));
    }
    Ok(report)
}

/// A running `ping` (killed by PID on drop).
struct Ping(Option<Child>);

impl Ping {
    /// Ping `addr` every 100 ms from the network namespace of process `pid`
    /// (BusyBox's ping: `scripts/cluster` installs busybox-static for its
    /// images, so it is there wherever the cluster is).
    fn start(pid: u32, addr: &str) -> Ping {
        let child = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["/bin/busybox", "ping", "-i", "0.1", addr])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start ping");
        Ping(Some(child))
    }

    /// Stop it (SIGINT, so it prints its summary): the number of echoes
    /// sent, and the sequence numbers (from 0) of those never answered,
    /// except the last one, which may still be in flight when ping is
    /// stopped.
    fn stop(mut self) -> (u64, Vec<u64>, String) {
        let child = self.0.take().expect("ping");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        let out = child.wait_with_output().expect("ping output");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let sent: u64 = text
            .lines()
            .find_map(|l| l.split_once(" packets transmitted").map(|x| x.0.trim()))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let answered: std::collections::BTreeSet<u64> = text
            .lines()
            .filter_map(|l| l.split_once(" seq=").map(|x| x.1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        let lost = (0..sent.saturating_sub(1))
            .filter(|s| !answered.contains(s))
            .collect();
        let err = String::from_utf8_lossy(&out.stderr);
        (sent, lost, format!("{text}{err}"))
    }
}

impl Drop for Ping {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Ctx<'a> {
    c: &'a Cluster,
}

impl Ctx<'_> {
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.c.kubectl_ok(&a)).expect("kubectl json")
    }

    fn conflist(&self, i: usize) -> Vec<u8> {
        std::fs::read(self.c.cni_conf_dir(i).join(CONFLIST)).expect("conflist")
    }

    /// The DaemonSet's rollout is complete: every node runs an up-to-date,
    /// ready agent.
    fn rolled_out(&self) -> bool {
        let out = self
            .c
            .kubectl(&["-n", NS, "get", "ds", "wg-agent", "-o", "json"]);
        let Ok(ds) = serde_json::from_slice::<Value>(&out.stdout) else {
            return false;
        };
        let st = &ds["status"];
        let n = |k: &str| st[k].as_u64().unwrap_or(0);
        st["observedGeneration"] == ds["metadata"]["generation"]
            && n("desiredNumberScheduled") == self.c.nodes() as u64
            && n("updatedNumberScheduled") == n("desiredNumberScheduled")
            && n("numberReady") == n("desiredNumberScheduled")
            && n("numberAvailable") == n("desiredNumberScheduled")
    }

    /// The agents' pods and containers, for a failure message.
    fn describe(&self) -> String {
        let pods = self.c.kubectl(&["-n", NS, "get", "pods", "-o", "wide"]);
        let desc = self.c.kubectl(&["-n", NS, "describe", "pods"]);
        let logs = self.c.kubectl(&[
            "-n",
            NS,
            "logs",
            "-l",
            "app.kubernetes.io/name=wg-agent",
            "--all-containers",
            "--tail=30",
            "--prefix",
        ]);
        format!(
            "{}\n{}\n{}{}",
            String::from_utf8_lossy(&pods.stdout),
            String::from_utf8_lossy(&desc.stdout),
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        )
    }

    /// The pod's WireGuard address, from its attachment's status.
    fn wg_addr(&self, pod: &str) -> String {
        self.c
            .wg_address(pod, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no attachment status for {pod}\n{}", self.describe()))
    }

    fn ping(&self, pod: &str, ip: &str) -> bool {
        self.c.pod_pings(pod, ip, Duration::from_secs(20))
    }

    /// PIDs of the userspace WireGuard daemons on node `i`.
    fn daemons(&self, i: usize) -> Vec<u32> {
        let mut p = self.c.node_processes(i, INSTALLED[1]);
        p.sort_unstable();
        p
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn install_upgrade_uninstall_with_kubectl() {
    let Some(c) = Cluster::up("install_upgrade_uninstall_with_kubectl") else {
        return;
    };
    let ctx = Ctx { c: &c };
    let version = env!("CARGO_PKG_VERSION");
    let next = format!("{version}-next");

    // 1. The images.
    let out = target_dir().join("image");
    let t = Instant::now();
    let report = match image_build(&out, version, true) {
        Ok(r) => r,
        Err(e) if !require_all() => {
            eprintln!("SKIP install_upgrade_uninstall_with_kubectl: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    eprintln!("---- image ({:?}) ----\n{report}", t.elapsed());
    assert!(
        report.contains("reproducible:     yes"),
        "the image is not reproducible:\n{report}"
    );
    let next_report = image_build(&out, &next, false).expect("the upgrade image");
    eprintln!("---- upgrade image ----\n{next_report}");
    let context_bin = out.join("context/opt/wg/bin");
    let t = Instant::now();
    for i in 1..=c.nodes() {
        for v in [version, next.as_str()] {
            c.import_image(i, &out.join(format!("wg-agent-{v}.oci.tar")));
        }
        let listed = c.crictl(i, &["images", "-o", "json"]);
        let listed = String::from_utf8_lossy(&listed.stdout);
        for v in [version, next.as_str()] {
            assert!(
                listed.contains(&format!("{IMAGE}:{v}")),
                "node {i} lacks {IMAGE}:{v}: {listed}"
            );
        }
    }
    eprintln!(
        "images imported into {} nodes in {:?}",
        c.nodes(),
        t.elapsed()
    );

    let before: BTreeMap<usize, Vec<u8>> = (1..=c.nodes()).map(|i| (i, ctx.conflist(i))).collect();
    for i in 1..=c.nodes() {
        for b in INSTALLED {
            assert!(
                !c.cni_bin_dir(i).join(b).exists(),
                "node {i} has {b} before the install"
            );
        }
    }

    // 2. kubectl apply -f manifests/, as it is.
    let t = Instant::now();
    let manifests = repo().join("manifests");
    let manifests = manifests.to_str().expect("path");
    c.kubectl_ok(&["apply", "-f", manifests]);
    let ready = eventually(Duration::from_secs(240), || {
        std::thread::sleep(Duration::from_millis(250));
        ctx.rolled_out()
    });
    assert!(ready, "the DaemonSet is not Ready:\n{}", ctx.describe());
    eprintln!(
        "kubectl apply -f manifests/: DaemonSet Ready on {} nodes {:?} after the apply",
        c.nodes(),
        t.elapsed()
    );
    for i in 1..=c.nodes() {
        let after = ctx.conflist(i);
        let unchained = wg_agent::install::unchain(&after)
            .expect("conflist")
            .expect("wg-cni is not in the conflist");
        assert_eq!(
            String::from_utf8_lossy(&unchained),
            String::from_utf8_lossy(&before[&i]),
            "node {i}: the conflist is more than wg-cni's entry away from what it was"
        );
        let v: Value = serde_json::from_slice(&after).expect("json");
        let plugins = v["plugins"].as_array().expect("plugins");
        assert_eq!(
            plugins.last().expect("plugin")["type"],
            "wg-cni",
            "node {i}: wg-cni is not last"
        );
        for b in INSTALLED {
            let installed = std::fs::read(c.cni_bin_dir(i).join(b)).expect("installed binary");
            let shipped =
                std::fs::read(context_bin.join(b.replace("wg-cni-", ""))).expect("shipped");
            assert!(installed == shipped, "node {i}: {b} is not the image's");
        }
    }
    eprintln!("conflists: wg-cni appended, otherwise byte-identical; binaries installed");

    // 3. Annotated pods on two nodes ping each other over WireGuard.
    c.apply(&mesh_network_yaml("10.78.0.0/16", (52300, 52399)));
    c.apply(&pod_yaml("ia", &c.node_netns(1), "wginst", Some("pods")));
    c.apply(&pod_yaml("ib", &c.node_netns(2), "wginst", Some("pods")));
    for p in ["ia", "ib"] {
        c.wait_pod_running(p, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}\n{}", ctx.describe()));
    }
    let a = ctx.wg_addr("ia");
    let b = ctx.wg_addr("ib");
    let t = Instant::now();
    assert!(
        ctx.ping("ia", &b),
        "ia cannot reach ib over WireGuard\n{}",
        ctx.describe()
    );
    assert!(ctx.ping("ib", &a), "ib cannot reach ia over WireGuard");
    eprintln!(
        "pods ia ({a}) and ib ({b}) ping each other over WireGuard ({:?})",
        t.elapsed()
    );

    // 4. The primary CNI rewrites its conflist (flannel does at every start).
    for i in 1..=c.nodes() {
        c.write_cni_conf(i, CONFLIST, &String::from_utf8_lossy(&before[&i]));
        let t = Instant::now();
        let rechained = eventually(Duration::from_secs(15), || {
            std::thread::sleep(Duration::from_millis(20));
            wg_agent::install::unchain(&ctx.conflist(i)).is_ok_and(|u| u.is_some())
        });
        assert!(
            rechained,
            "node {i}: wg-cni not chained again\n{}",
            ctx.describe()
        );
        eprintln!(
            "node {i}: conflist rewritten without wg-cni, chained again {:?} later",
            t.elapsed()
        );
    }

    // 5. A rolling upgrade while ia pings ib over WireGuard.
    let daemons: Vec<Vec<u32>> = (1..=c.nodes()).map(|i| ctx.daemons(i)).collect();
    assert!(
        daemons.iter().all(|d| !d.is_empty()),
        "no userspace daemon on the nodes: {daemons:?}"
    );
    let pid = c.pod_sandbox_pid(1, "ia").expect("ia's sandbox");
    let ping = Ping::start(pid, &b);
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let img = format!("{IMAGE}:{next}");
    c.kubectl_ok(&[
        "-n",
        NS,
        "set",
        "image",
        "daemonset/wg-agent",
        &format!("install-cni={img}"),
        &format!("wg-agent={img}"),
    ]);
    let done = eventually(Duration::from_secs(300), || {
        std::thread::sleep(Duration::from_millis(250));
        ctx.rolled_out()
    });
    let rollout = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (sent, lost, text) = ping.stop();
    assert!(done, "the rollout did not finish:\n{}", ctx.describe());
    eprintln!(
        "rolling upgrade to {img}: {rollout:?} for {} nodes; ping every 100 ms ia -> ib over WireGuard: {sent} sent, {} lost",
        c.nodes(),
        lost.len()
    );
    assert!(sent > 20, "ping sent too little: {text}");
    assert!(
        lost.is_empty(),
        "echoes lost during the rollout: {lost:?}\n{text}"
    );
    let ds = ctx.json(&["-n", NS, "get", "ds", "wg-agent"]);
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"], img,
        "the DaemonSet does not run the new image"
    );
    let after: Vec<Vec<u32>> = (1..=c.nodes()).map(|i| ctx.daemons(i)).collect();
    assert_eq!(
        daemons, after,
        "the userspace daemons did not survive the rollout"
    );
    assert!(ctx.ping("ia", &b), "ia cannot reach ib after the rollout");

    // 6. No token and no key in any log of the nodes' pods.
    let mut secrets: Vec<(String, String)> = Vec::new();
    for i in 1..=c.nodes() {
        let mut keys = Vec::new();
        files_under(&c.node_path(i, "/var/lib/wg-agent/keys"), &mut keys);
        for k in keys {
            // Each key file is JSON with the key in base64 (wg-agent's keys.rs).
            let key = std::fs::read(&k)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v["privateKey"].as_str().map(str::to_string));
            if let Some(key) = key {
                secrets.push((format!("the private key in {}", k.display()), key));
            }
        }
    }
    assert!(
        secrets.len() >= 2,
        "no pod keys found to look for: {secrets:?}"
    );
    let mut logs = Vec::new();
    for i in 1..=c.nodes() {
        files_under(&c.pod_log_dir(i), &mut logs);
    }
    let agent_logs: Vec<&PathBuf> = logs
        .iter()
        .filter(|p| p.to_string_lossy().contains(NS))
        .collect();
    assert!(
        agent_logs.len() >= 2 * c.nodes(),
        "the agents' logs are missing: {logs:?}"
    );
    let mut bytes = 0;
    for p in &logs {
        let s = std::fs::read_to_string(p).unwrap_or_default();
        bytes += s.len();
        // A JWT (a service-account token) starts with base64 of `{"alg"`.
        assert!(!s.contains("eyJhbGci"), "{} holds a token", p.display());
        for (what, secret) in &secrets {
            assert!(!s.contains(secret.as_str()), "{} holds {what}", p.display());
        }
    }
    eprintln!(
        "logs: {} files ({bytes} bytes, {} of the agents) hold no token and none of {} keys",
        logs.len(),
        agent_logs.len(),
        secrets.len()
    );

    // 7. kubectl delete -f manifests/: the nodes as they were.
    c.kubectl_ok(&["delete", "pod", "ia", "ib", "--wait=true", "--timeout=60s"]);
    let gone = eventually(Duration::from_secs(30), || {
        (1..=c.nodes()).all(|i| ctx.daemons(i).is_empty())
    });
    assert!(gone, "userspace daemons left after the pods' deletion");
    let t = Instant::now();
    c.kubectl_ok(&["delete", "-f", manifests, "--wait=true", "--timeout=180s"]);
    let clean = eventually(Duration::from_secs(120), || {
        (1..=c.nodes()).all(|i| {
            ctx.conflist(i) == before[&i]
                && INSTALLED.iter().all(|b| !c.cni_bin_dir(i).join(b).exists())
        })
    });
    let leftover: Vec<String> = (1..=c.nodes())
        .flat_map(|i| {
            std::fs::read_dir(c.cni_bin_dir(i))
                .into_iter()
                .flatten()
                .flatten()
                .map(move |e| format!("n{i}:{}", e.file_name().to_string_lossy()))
        })
        .filter(|n| n.contains("wg"))
        .collect();
    assert!(
        clean,
        "after kubectl delete -f manifests/: conflists {:?}, wg files in /opt/cni/bin {leftover:?}",
        (1..=c.nodes())
            .map(|i| String::from_utf8_lossy(&ctx.conflist(i)).into_owned())
            .collect::<Vec<_>>()
    );
    for i in 1..=c.nodes() {
        assert!(
            !c.node_path(i, "/var/lib/wg-agent/install.json").exists(),
            "node {i}: the installer's state file is left"
        );
    }
    eprintln!(
        "kubectl delete -f manifests/: conflists byte-identical to before, no binary left ({:?})",
        t.elapsed()
    );
}
