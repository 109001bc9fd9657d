//! The install, as a cluster operator does it (docs/install.md), on a real
//! Kubernetes cluster (`scripts/cluster`, docs/cluster.md) whose nodes run
//! bridge + host-local + portmap from `/etc/cni/net.d/10-wgk8s.conflist`:
//!
//! 1. the image, built now by `scripts/image-build` (a second build in
//!    fresh storage must give the same digests), and an "upgrade" image
//!    (another version), imported into each node's containerd (there is
//!    no registry);
//! 2. the original wireguard-cni README's two commands, verbatim
//!    (`kubectl -n kube-system create configmap wg-cni-env
//!    --from-literal=KUBERNETES_APISERVER_ENDPOINT=https://<apiserver>:6443`,
//!    `kubectl apply -f manifests/wg-cni.yml`), on a cluster without
//!    kube-proxy (the `kubernetes` Service unserved on the nodes, so only
//!    the ConfigMap's endpoint reaches the apiserver): the DaemonSet
//!    becomes Ready on every node, each node's conflist chains wg-cni after
//!    its plugins and is otherwise byte-identical, the binaries are in
//!    `/opt/cni/bin`;
//! 3. annotated pods on two nodes get WireGuard and ping each other;
//! 4. the primary CNI rewriting its conflist (as flannel does at every
//!    restart) is followed by wg-cni back in the chain;
//! 5. a rolling upgrade to the other image while a ping runs between the
//!    pods' WireGuard addresses: no echo lost, the userspace daemons are
//!    the same processes afterwards;
//! 6. the agent's container stopped (SIGTERM) while the apiserver refuses
//!    it (its RoleBinding deleted, so its GET of the DaemonSet is a 403):
//!    wg-cni stays installed, and after the restart (no init container)
//!    a new pod gets WireGuard; then a container restart with both
//!    binaries deleted: they come back, and a new pod works;
//! 7. the agents' logs hold no token and no key;
//! 8. the original's conflist shape: a user's own static wg-cni entry
//!    (`address`, `privateKey`, `peers` with `persistentKeepalive: "25s"`)
//!    written into the primary conflist is left alone (no managed entry
//!    beside it) and gives a new pod its interface as written;
//! 9. `kubectl delete -f manifests/`: the conflists are byte-identical to
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
const NS: &str = "kube-system";
/// The apiserver as the nodes reach it without the `kubernetes` Service
/// (scripts/cluster's CP_IP; its serving certificate names it).
const APISERVER: &str = "10.250.0.1:6443";
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

/// `kubectl logs -f` of running containers (killed by PID on drop).
struct Follow(Vec<Child>);

impl Follow {
    /// Stop following: what each printed.
    fn stop(mut self) -> Vec<String> {
        self.0
            .drain(..)
            .map(|mut c| {
                let _ = c.kill();
                let out = c.wait_with_output().expect("kubectl logs output");
                String::from_utf8_lossy(&out.stdout).into_owned()
            })
            .collect()
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        for c in &mut self.0 {
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

    /// The agent's pod on node `i`, as JSON.
    fn agent_pod(&self, i: usize) -> Value {
        let node = self.c.node_netns(i);
        let pods = self.json(&[
            "-n",
            NS,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=wg-agent",
            "--field-selector",
            &format!("spec.nodeName={node}"),
        ]);
        pods["items"][0].clone()
    }

    /// The agent container's restart count and readiness on node `i`, and
    /// the ID of its pod's init container (which a container restart does
    /// not run again).
    fn agent_status(&self, i: usize) -> (u64, bool, String) {
        let pod = self.agent_pod(i);
        let st = &pod["status"];
        let agent = st["containerStatuses"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "wg-agent"))
            .cloned()
            .unwrap_or(Value::Null);
        (
            agent["restartCount"].as_u64().unwrap_or(0),
            agent["ready"] == true,
            st["initContainerStatuses"][0]["containerID"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    /// The running agent container's ID on node `i` (crictl).
    fn agent_container(&self, i: usize) -> String {
        let out = self.c.crictl(
            i,
            &["ps", "--name", "^wg-agent$", "--state", "running", "-q"],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no running wg-agent container on node {i}"))
            .trim()
            .to_string()
    }

    /// The log of the agent's container on node `i` (`previous`: of the
    /// one before the last restart).
    fn agent_log(&self, i: usize, previous: bool) -> String {
        let pod = self.agent_pod(i);
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let mut args = vec!["-n", NS, "logs", name, "-c", "wg-agent"];
        if previous {
            args.push("--previous");
        }
        String::from_utf8_lossy(&self.c.kubectl(&args).stdout).into_owned()
    }

    /// Follow the logs of every node's agent from now on.
    fn follow_agents(&self) -> Follow {
        Follow(
            (1..=self.c.nodes())
                .map(|i| {
                    let pod = self.agent_pod(i);
                    let name = pod["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    self.c
                        .kubectl_as(&self.c.kubeconfig())
                        .args(["-n", NS, "logs", "-f", "--tail=0", &name, "-c", "wg-agent"])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .stdin(Stdio::null())
                        .spawn()
                        .expect("kubectl logs -f")
                })
                .collect(),
        )
    }

    /// Stop node `i`'s agent container as kubelet does for a liveness
    /// failure (SIGTERM, up to 30 s, then SIGKILL): how long it took.
    fn stop_agent(&self, i: usize) -> Duration {
        let id = self.agent_container(i);
        let t = Instant::now();
        let out = self.c.crictl(i, &["stop", "--timeout", "30", &id]);
        assert!(
            out.status.success(),
            "crictl stop {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    }

    /// Wait until node `i`'s agent container has restarted `n` times in
    /// all and is ready again.
    fn restarted(&self, i: usize, n: u64) -> Duration {
        let t = Instant::now();
        let ok = eventually(Duration::from_secs(180), || {
            std::thread::sleep(Duration::from_millis(250));
            let (count, ready, _) = self.agent_status(i);
            count >= n && ready
        });
        assert!(
            ok,
            "node {i}: the agent did not come back\n{}",
            self.describe()
        );
        t.elapsed()
    }

    /// Wait until the log of node `i`'s current agent says its watch of
    /// the DaemonSet is established (uninstall on delete depends on it).
    fn watching_daemonset(&self, i: usize) {
        let ok = eventually(Duration::from_secs(60), || {
            std::thread::sleep(Duration::from_millis(250));
            self.agent_log(i, false).contains("watching the DaemonSet")
        });
        assert!(
            ok,
            "node {i}: the agent does not watch its DaemonSet:\n{}",
            self.agent_log(i, false)
        );
    }

    /// wg-cni is fully installed on node `i`: both binaries are the
    /// image's, the conflist chains it. Otherwise what is wrong.
    fn installed(&self, i: usize, context_bin: &Path) -> Result<(), String> {
        for b in INSTALLED {
            let shipped =
                std::fs::read(context_bin.join(b.replace("wg-cni-", ""))).expect("shipped");
            match std::fs::read(self.c.cni_bin_dir(i).join(b)) {
                Ok(bytes) if bytes == shipped => {}
                Ok(_) => return Err(format!("node {i}: {b} is not the image's")),
                Err(e) => return Err(format!("node {i}: {b}: {e}")),
            }
        }
        match wg_agent::install::unchain(&self.conflist(i)) {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("node {i}: wg-cni is not chained ({other:?})")),
        }
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

    // 2. The original project's two commands, verbatim, on a cluster
    //    without kube-proxy.
    let script = c.script();
    let script = script.to_str().expect("path");
    let off = Command::new(script)
        .args(["service", "off"])
        .status()
        .expect("scripts/cluster service off");
    assert!(off.success(), "scripts/cluster service off");
    let t = Instant::now();
    let manifests = repo().join("manifests");
    let manifests = manifests.to_str().expect("path");
    c.kubectl_ok(&[
        "-n",
        "kube-system",
        "create",
        "configmap",
        "wg-cni-env",
        &format!("--from-literal=KUBERNETES_APISERVER_ENDPOINT=https://{APISERVER}"),
    ]);
    c.kubectl_ok(&["apply", "-f", &format!("{manifests}/wg-cni.yml")]);
    let ready = eventually(Duration::from_secs(240), || {
        std::thread::sleep(Duration::from_millis(250));
        ctx.rolled_out()
    });
    assert!(ready, "the DaemonSet is not Ready:\n{}", ctx.describe());
    eprintln!(
        "kubectl apply -f manifests/wg-cni.yml: DaemonSet Ready on {} nodes {:?} after the apply",
        c.nodes(),
        t.elapsed()
    );
    for i in 1..=c.nodes() {
        let log = ctx.agent_log(i, false);
        assert!(
            log.contains("reaching the apiserver at KUBERNETES_APISERVER_ENDPOINT"),
            "node {i}'s agent did not use wg-cni-env's endpoint:\n{log}"
        );
    }
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

    // 6. Install state is never lost by a transient error (issue 18 §5).
    //    The Role as the agent uses it: real requests, impersonated.
    let sa = format!("system:serviceaccount:{NS}:wg-agent");
    let as_agent = |args: &[&str]| {
        let mut a = vec!["--as", sa.as_str()];
        a.extend_from_slice(args);
        ctx.c.kubectl(&a)
    };
    for (args, allowed) in [
        (vec!["-n", NS, "get", "ds", "wg-agent"], true),
        (
            vec![
                "-n",
                NS,
                "get",
                "ds",
                "--field-selector",
                "metadata.name=wg-agent",
            ],
            true,
        ),
        (
            vec![
                "-n",
                NS,
                "get",
                "ds",
                "--field-selector",
                "metadata.name=wg-agent",
                "--watch-only",
                "--request-timeout=1s",
            ],
            true,
        ),
        (vec!["get", "namespace", NS], true),
        (vec!["-n", NS, "get", "ds"], false),
        (vec!["-n", NS, "get", "ds", "other"], false),
        (vec!["-n", "default", "get", "ds", "wg-agent"], false),
    ] {
        let out = as_agent(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            !err.contains("Forbidden") && !err.contains("forbidden"),
            allowed,
            "as the agent, {args:?}: {err}"
        );
    }
    //    a. SIGTERM while the apiserver answers the agent 403: its
    //       RoleBinding deleted (its watch of the DaemonSet, opened before,
    //       stays open). The container stops and restarts as after a
    //       failed liveness probe: no init container runs.
    c.kubectl_ok(&["-n", NS, "delete", "rolebinding", "wg-agent"]);
    let refused = eventually(Duration::from_secs(30), || {
        String::from_utf8_lossy(&as_agent(&["-n", NS, "get", "ds", "wg-agent"]).stderr)
            .contains("orbidden")
    });
    assert!(refused, "the agent can still read its DaemonSet");
    let (restarts, _, init) = ctx.agent_status(1);
    let stop = ctx.stop_agent(1);
    let kept = ctx.installed(1, &context_bin);
    let took = ctx.restarted(1, restarts + 1);
    let previous = ctx.agent_log(1, true);
    assert!(
        kept.is_ok(),
        "SIGTERM with a 403: {kept:?}\nthe stopped agent's log:\n{previous}"
    );
    assert!(
        previous.contains("wg-cni stays installed") && !previous.contains("uninstalling"),
        "the stopped agent's log:\n{previous}"
    );
    assert_eq!(ctx.agent_status(1).2, init, "the init container ran again");
    ctx.installed(1, &context_bin).expect("after the restart");
    c.apply(&pod_yaml("ic", &c.node_netns(1), "wginst", Some("pods")));
    c.wait_pod_running("ic", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", ctx.describe()));
    let ic = ctx.wg_addr("ic");
    assert!(ctx.ping("ic", &b), "ic cannot reach ib over WireGuard");
    assert!(ctx.ping("ib", &ic), "ib cannot reach ic over WireGuard");
    eprintln!(
        "SIGTERM while the apiserver answers 403: the agent stopped in {stop:?} (it waits up to 10 s \
         for its watch), wg-cni stayed installed; restarted {took:?} later without the init container, \
         new pod ic ({ic}) pings ib over WireGuard"
    );
    //    b. A container restart with both binaries deleted (the RoleBinding
    //       back): the restarted agent puts them back, the init container
    //       still does not run.
    c.kubectl_ok(&["apply", "-f", &format!("{manifests}/base/20-rbac.yaml")]);
    ctx.watching_daemonset(1);
    let stop = ctx.stop_agent(1);
    for b in INSTALLED {
        let _ = std::fs::remove_file(c.cni_bin_dir(1).join(b));
    }
    let t = Instant::now();
    ctx.restarted(1, restarts + 2);
    let back = eventually(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(100));
        ctx.installed(1, &context_bin).is_ok()
    });
    assert!(
        back,
        "{:?}\nthe agent's log:\n{}",
        ctx.installed(1, &context_bin),
        ctx.agent_log(1, false)
    );
    let took = t.elapsed();
    assert_eq!(ctx.agent_status(1).2, init, "the init container ran again");
    c.apply(&pod_yaml("id", &c.node_netns(1), "wginst", Some("pods")));
    c.wait_pod_running("id", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", ctx.describe()));
    let id = ctx.wg_addr("id");
    assert!(ctx.ping("id", &b), "id cannot reach ib over WireGuard");
    eprintln!(
        "container restart (stopped in {stop:?}) with both binaries deleted: back {took:?} after \
         they were deleted, without the init container; new pod id ({id}) pings ib over WireGuard"
    );
    ctx.watching_daemonset(1);

    // 7. No token and no key in any log of the nodes' pods.
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

    // 8. The original's conflist shape on node 1.
    original_static_entry(&ctx, &before[&1]);

    // 9. kubectl delete -f manifests/: the nodes as they were.
    c.kubectl_ok(&[
        "delete",
        "pod",
        "ia",
        "ib",
        "ic",
        "id",
        "--wait=true",
        "--timeout=60s",
    ]);
    let gone = eventually(Duration::from_secs(30), || {
        (1..=c.nodes()).all(|i| ctx.daemons(i).is_empty())
    });
    assert!(gone, "userspace daemons left after the pods' deletion");
    let follow = ctx.follow_agents();
    std::thread::sleep(Duration::from_secs(1));
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
    // Why each agent uninstalled: which of the paths of
    // wg_agent::install::removal the deletion took.
    for (i, log) in follow.stop().iter().enumerate() {
        for l in log.lines().filter(|l| {
            l.contains("the install is being removed")
                || l.contains("stays installed")
                || l.contains("cannot read the DaemonSet")
                || l.contains("the DaemonSet is deleted")
                || l.contains("SIGTERM")
        }) {
            eprintln!("  node {}: {}", i + 1, l.trim());
        }
    }
    eprintln!(
        "kubectl delete -f manifests/: conflists byte-identical to before, no binary left ({:?})",
        t.elapsed()
    );
}

/// The original wireguard-cni README's way: the user puts a static wg-cni
/// entry into the primary CNI's conflist (there, flannel's ConfigMap;
/// here, node 1's conflist rewritten as a primary CNI does). The
/// installer leaves it alone (its watch sees the rewrite and adds no
/// managed entry beside it), and a new pod gets the interface as written.
/// Then the conflist is put back and the managed entry returns.
fn original_static_entry(ctx: &Ctx, before: &[u8]) {
    let c = ctx.c;
    let key = wg_netns::PrivateKey::generate().expect("key");
    let peer = wg_netns::PrivateKey::generate()
        .expect("key")
        .public_key()
        .to_base64();
    let mut conf: Value = serde_json::from_slice(before).expect("conflist");
    // The original README's entry, field for field (the peer's endpoint is
    // an unused address of the cluster's own bridge).
    let entry = serde_json::json!({
        "type": "wg-cni",
        "address": "10.200.0.2/24",
        "privateKey": key.to_base64().as_str(),
        "peers": [{
            "endpoint": "10.250.0.250:51820",
            "publicKey": peer,
            "allowedIPs": ["10.200.0.0/24"],
            "persistentKeepalive": "25s"
        }]
    });
    conf["plugins"].as_array_mut().expect("plugins").push(entry);
    let text = serde_json::to_string_pretty(&conf).expect("json");
    c.write_cni_conf(1, CONFLIST, &text);
    // The installer's watch reacts within milliseconds (step 4): give it
    // seconds, then the file must be exactly the user's.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        String::from_utf8_lossy(&ctx.conflist(1)),
        text,
        "the installer changed a conflist holding the user's own wg-cni entry"
    );
    c.apply(&pod_yaml("io", &c.node_netns(1), "wgorig", None));
    c.wait_pod_running("io", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", ctx.describe()));
    let addr = c.exec("io", &["ip", "-o", "addr", "show", "wg0"]);
    let addr = String::from_utf8_lossy(&addr.stdout).into_owned();
    assert!(addr.contains("10.200.0.2/24"), "io's wg0: {addr}");
    let routes = String::from_utf8_lossy(&c.exec("io", &["ip", "route"]).stdout).into_owned();
    assert!(
        routes.contains("10.200.0.0/24 dev wg0"),
        "io's routes: {routes}"
    );
    c.kubectl_ok(&["delete", "pod", "io", "--wait=true", "--timeout=60s"]);
    c.write_cni_conf(1, CONFLIST, &String::from_utf8_lossy(before));
    let rechained = eventually(Duration::from_secs(15), || {
        std::thread::sleep(Duration::from_millis(20));
        wg_agent::install::unchain(&ctx.conflist(1)).is_ok_and(|u| u.is_some())
    });
    assert!(rechained, "the managed entry did not come back");
    eprintln!(
        "the original's static entry in the primary conflist: left alone, pod io got wg0 {}; managed entry back after",
        addr.split_whitespace().nth(3).unwrap_or("?")
    );
}
