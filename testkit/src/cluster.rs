//! A real Kubernetes cluster for end-to-end tests: `scripts/cluster` (see
//! docs/cluster.md) brought up once per test binary and down when the last
//! [`Cluster`] handle is dropped (also while a test panics).
//!
//! A static destructor never runs, so a test binary that uses the cluster
//! should run all its scenarios in one `#[test]` holding one [`Cluster`]:
//! its drop brings the cluster down.
//!
//! Everything lives in the `wgk8s-` namespaces `scripts/cluster` creates; the
//! node addresses are 10.250.0.0/24 on the cluster's own bridge.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::require_all;

/// How many [`Cluster`] handles are alive in this process, and whether this
/// process started the cluster (then the last drop brings it down).
struct Shared {
    users: usize,
    started: bool,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    users: 0,
    started: false,
});

/// The marker `up` leaves in the work dir: the PID of the test process that
/// started the cluster.
const OWNER: &str = "wgk8s-test-owner";

/// A handle on the running cluster. The first one in a process runs
/// `scripts/cluster up`; dropping the last one runs `scripts/cluster down`.
pub struct Cluster {
    repo: PathBuf,
    dir: PathBuf,
    kubectl: PathBuf,
    crictl: PathBuf,
    ctr: PathBuf,
    nodes: usize,
    /// How long `scripts/cluster up` took (zero when reused).
    pub up_time: Duration,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn errtext(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

impl Cluster {
    /// Bring the cluster up (or join the one this process started), or
    /// `None` after printing `SKIP test: why` when it cannot run here
    /// (panics instead under `WG_NETNS_REQUIRE_ALL=1`).
    pub fn up(test: &str) -> Option<Cluster> {
        let skip = |why: String| {
            if require_all() {
                panic!("{test}: required but cannot run: {why}");
            }
            eprintln!("SKIP {test}: {why}");
            None
        };
        if !rustix::process::geteuid().is_root() {
            return skip("needs root (network namespaces, mounts, cgroups)".into());
        }
        let repo = repo_root();
        let script = repo.join("scripts/cluster");
        if !script.exists() {
            return skip(format!("{} is missing", script.display()));
        }
        let dir = PathBuf::from(
            std::env::var("WG_CLUSTER_DIR").unwrap_or_else(|_| "/var/tmp/wgk8s".into()),
        );
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let mut up_time = Duration::ZERO;
        let ours = std::fs::read_to_string(dir.join(OWNER))
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if shared.started && ours {
            // Reuse: this process started it.
        } else if dir.exists() {
            return skip(format!(
                "a cluster (or its remains) that this test run did not start exists in {}: \
                 run `scripts/cluster down` first",
                dir.display()
            ));
        } else {
            let t = Instant::now();
            let out = Command::new(&script)
                .arg("up")
                .output()
                .expect("run scripts/cluster up");
            up_time = t.elapsed();
            if !out.status.success() {
                return skip(format!(
                    "`scripts/cluster up` failed (cannot build or start the cluster):\n{}",
                    tail(&errtext(&out), 40)
                ));
            }
            std::fs::write(dir.join(OWNER), std::process::id().to_string()).expect("owner mark");
            shared.started = true;
        }
        let dirs = Command::new(repo.join("scripts/cluster-build"))
            .arg("--bin-dirs")
            .output()
            .expect("scripts/cluster-build --bin-dirs");
        let dirs = text(&dirs);
        let find = |part: &str| {
            dirs.lines()
                .find(|l| l.contains(part))
                .map(PathBuf::from)
                .unwrap_or_else(|| panic!("no {part} in cluster-build --bin-dirs:\n{dirs}"))
        };
        let nodes = (1..)
            .take_while(|i| dir.join(format!("n{i}")).is_dir())
            .count();
        shared.users += 1;
        let c = Cluster {
            kubectl: find("/k8s-").join("kubectl"),
            crictl: find("/cri-tools-").join("crictl"),
            ctr: find("/containerd-").join("ctr"),
            repo,
            dir,
            nodes,
            up_time,
        };
        drop(shared);
        Some(c)
    }

    /// The cluster's work dir (`WG_CLUSTER_DIR`, default `/var/tmp/wgk8s`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Number of worker nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Node `i`'s Kubernetes name, which is also its network namespace
    /// (`wgk8s-nI`, I from 1).
    pub fn node_netns(&self, i: usize) -> String {
        format!("wgk8s-n{i}")
    }

    /// Node `i`'s address on the cluster bridge (10.250.0.(10+I)).
    pub fn node_ip(&self, i: usize) -> String {
        format!("10.250.0.{}", 10 + i)
    }

    /// Node `i`'s work dir.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{i}"))
    }

    /// Node `i`'s CNI configuration dir, which the node sees as
    /// `/etc/cni/net.d` (containerd's `conf_dir`; it loads the
    /// lexicographically first `.conf`/`.conflist`/`.json` file).
    pub fn cni_conf_dir(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("cni/net.d")
    }

    /// Node `i`'s CNI plugin dir, which the node sees as `/opt/cni/bin`
    /// (containerd's `bin_dirs`): `scripts/cluster up` fills it with copies
    /// of the cached plugins, so a test (or an installer) writes there
    /// without touching the build cache.
    pub fn cni_bin_dir(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("cni/bin")
    }

    /// Copy `src` into node `i`'s CNI plugin dir as `name` (atomically).
    pub fn install_cni_plugin(&self, i: usize, src: &Path, name: &str) {
        let dst = self.cni_bin_dir(i);
        let tmp = dst.join(format!(".{name}.tmp"));
        std::fs::copy(src, &tmp).expect("copy plugin");
        std::fs::rename(&tmp, dst.join(name)).expect("install plugin");
    }

    /// Write `text` to node `i`'s CNI conf dir as `file` (atomically: a
    /// hidden temporary file, then a rename).
    pub fn write_cni_conf(&self, i: usize, file: &str, text: &str) {
        let dir = self.cni_conf_dir(i);
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write conflist");
        std::fs::rename(&tmp, dir.join(file)).expect("rename conflist");
    }

    /// Remove `file` from node `i`'s CNI conf dir (if present).
    pub fn remove_cni_conf(&self, i: usize, file: &str) {
        let _ = std::fs::remove_file(self.cni_conf_dir(i).join(file));
    }

    /// Wait until node `i`'s containerd has loaded the network named
    /// `network` (as `crictl info` shows it).
    pub fn wait_cni_network(&self, i: usize, network: &str, within: Duration) -> bool {
        let want = format!("\"Name\": \"{network}\"");
        crate::eventually(within, || {
            let out = self.crictl(i, &["info", "-o", "json"]);
            let s = text(&out);
            s.contains(&want)
        })
    }

    /// The PID of node `i`'s containerd (its mount namespace is the node's).
    pub fn containerd_pid(&self, i: usize) -> u32 {
        let p = self.dir.join(format!("pids/containerd-n{i}"));
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .parse()
            .expect("containerd pid")
    }

    /// Node `i`'s mount namespace (`mnt:[...]`).
    pub fn node_mntns(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(i).join("mntns"))
            .expect("node mntns")
            .trim()
            .to_string()
    }

    /// A path as seen inside node `i`'s mount namespace (its private `/run`,
    /// `/var/lib`, `/var/log`): `/proc/CONTAINERD/root` + `path`.
    /// Absolute symlinks (`/var/run`) are not followed into the node: pass
    /// `/run/...`.
    pub fn node_path(&self, i: usize, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.containerd_pid(i), path))
    }

    /// The PIDs of processes in node `i`'s mount namespace whose command
    /// line's first word ends with `program`.
    pub fn node_processes(&self, i: usize, program: &str) -> Vec<u32> {
        let mnt = self.node_mntns(i);
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let base = e.path();
            if std::fs::read_link(base.join("ns/mnt"))
                .map(|l| l.to_string_lossy() != mnt)
                .unwrap_or(true)
            {
                continue;
            }
            let Ok(cmd) = std::fs::read(base.join("cmdline")) else {
                continue;
            };
            let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
            if String::from_utf8_lossy(argv0).ends_with(program) {
                pids.push(pid);
            }
        }
        pids
    }

    /// The directory with every component's log (`etcd.log`,
    /// `kube-apiserver.log`, `containerd-nI.log`, `kubelet-nI.log`, ...).
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Node `i`'s kubelet log.
    pub fn kubelet_log(&self, i: usize) -> PathBuf {
        self.log_dir().join(format!("kubelet-n{i}.log"))
    }

    /// Node `i`'s containerd log.
    pub fn containerd_log(&self, i: usize) -> PathBuf {
        self.log_dir().join(format!("containerd-n{i}.log"))
    }

    /// Node `i`'s pod log dir (kubelet's `podLogsDir`).
    pub fn pod_log_dir(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("pod-logs")
    }

    /// Run the cluster's kubectl as admin (inside `wgk8s-cp`).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    /// The cluster's kubectl, inside `wgk8s-cp`, with the credentials of
    /// `kubeconfig` (the admin's, or another identity's), to be given
    /// arguments and run.
    pub fn kubectl_as(&self, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", "wgk8s-cp"])
            .arg(&self.kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()));
        cmd
    }

    /// Run kubectl as admin with `stdin` as its input (`None`: no input).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = self.kubectl_as(&self.kubeconfig());
        cmd.args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            });
        let mut child = cmd.spawn().expect("run kubectl");
        if let Some(s) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(s.as_bytes())
                .expect("write kubectl stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// kubectl that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            errtext(&out),
            text(&out)
        );
        text(&out)
    }

    /// `kubectl apply -f -` of `yaml` (must succeed).
    pub fn apply(&self, yaml: &str) {
        let out = self.kubectl_stdin(&["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            errtext(&out)
        );
    }

    /// A pod's `.status.phase` (empty if unknown).
    pub fn pod_phase(&self, name: &str) -> String {
        text(&self.kubectl(&["get", "pod", name, "-o", "jsonpath={.status.phase}"]))
    }

    /// Wait until pod `name` (namespace default) is Running; `Err` with its
    /// description and events otherwise.
    pub fn wait_pod_running(&self, name: &str, within: Duration) -> Result<Duration, String> {
        let t = Instant::now();
        if crate::eventually(within, || {
            std::thread::sleep(Duration::from_millis(80));
            self.pod_phase(name) == "Running"
        }) {
            return Ok(t.elapsed());
        }
        Err(format!(
            "pod {name} not Running after {within:?}:\n{}",
            text(&self.kubectl(&["describe", "pod", name]))
        ))
    }

    /// `kubectl exec POD -- CMD...`.
    pub fn exec(&self, pod: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(cmd);
        self.kubectl(&args)
    }

    /// A pod's IP (`.status.podIP`).
    pub fn pod_ip(&self, name: &str) -> String {
        self.kubectl_ok(&["get", "pod", name, "-o", "jsonpath={.status.podIP}"])
    }

    /// Run a command in node `i`'s network namespace (`ip netns exec`).
    pub fn node_exec(&self, i: usize, args: &[&str]) -> Output {
        let ns = self.node_netns(i);
        let mut full = vec!["ip", "netns", "exec", &ns];
        full.extend_from_slice(args);
        crate::run(&full)
    }

    /// crictl against node `i`'s containerd.
    pub fn crictl(&self, i: usize, args: &[&str]) -> Output {
        // Inside the node's network namespace: `exec` and `attach` reach
        // containerd's streaming server on the node's 127.0.0.1.
        Command::new("ip")
            .args(["netns", "exec", &self.node_netns(i)])
            .arg(&self.crictl)
            .arg(format!(
                "--runtime-endpoint=unix://{}",
                self.node_dir(i).join("containerd.sock").display()
            ))
            .args(args)
            .output()
            .expect("run crictl")
    }

    /// Import an image archive (`docker save` or OCI archive) into node
    /// `i`'s containerd, in the `k8s.io` namespace kubelet uses (this
    /// cluster has no registry); panics with ctr's output on failure.
    pub fn import_image(&self, i: usize, archive: &Path) {
        let out = Command::new(&self.ctr)
            .arg(format!(
                "--address={}",
                self.node_dir(i).join("containerd.sock").display()
            ))
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive)
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr images import {} on node {i}: {}{}",
            archive.display(),
            text(&out),
            errtext(&out)
        );
    }

    /// The PID (in this machine's PID namespace) of the sandbox of pod
    /// `name` (namespace `default`) on node `i`: `/proc/PID/ns/net` is the
    /// pod's network namespace.
    pub fn pod_sandbox_pid(&self, i: usize, name: &str) -> Option<u32> {
        let ids = text(&self.crictl(
            i,
            &[
                "pods",
                "--name",
                name,
                "--namespace",
                "default",
                "--state",
                "ready",
                "-q",
            ],
        ));
        let id = ids.lines().next()?.trim().to_string();
        let out = text(&self.crictl(
            i,
            &[
                "inspectp",
                "-o",
                "go-template",
                "--template",
                "{{.info.pid}}",
                &id,
            ],
        ));
        out.trim().parse().ok().filter(|pid| *pid > 1)
    }

    /// Pod `pod`'s WireGuard address, without its prefix length: the first
    /// of `status.addresses` of its WireGuardAttachment `POD-wg0` (namespace
    /// `default`), once the node agent has written it; `None` if it has not
    /// within `within`.
    pub fn wg_address(&self, pod: &str, within: Duration) -> Option<String> {
        let name = format!("{pod}-wg0");
        let mut addr = String::new();
        let found = crate::eventually(within, || {
            let out = self.kubectl(&[
                "get",
                "wgatt",
                &name,
                "-o",
                "jsonpath={.status.addresses[0]}",
            ]);
            addr = text(&out).trim().to_string();
            out.status.success() && !addr.is_empty()
        });
        found.then(|| addr.split('/').next().unwrap_or_default().to_string())
    }

    /// `ping -c 1 -W 1 IP` inside pod `pod` (namespace `default`), again
    /// until it is answered or `within` has passed.
    pub fn pod_pings(&self, pod: &str, ip: &str, within: Duration) -> bool {
        crate::eventually(within, || {
            self.exec(pod, &["ping", "-c", "1", "-W", "1", ip])
                .status
                .success()
        })
    }

    /// Node `i`'s Ready condition is `True`.
    pub fn node_ready(&self, i: usize) -> bool {
        text(&self.kubectl(&[
            "get",
            "node",
            &self.node_netns(i),
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])) == "True"
    }

    /// `scripts/cluster` (for `status`, `smoke`, ...).
    pub fn script(&self) -> PathBuf {
        self.repo.join("scripts/cluster")
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        shared.users -= 1;
        if shared.users > 0 || !shared.started {
            return;
        }
        shared.started = false;
        let t = Instant::now();
        let out = Command::new(self.script()).arg("down").output();
        match out {
            Ok(o) if o.status.success() => {
                eprintln!("cluster: down in {:.1} s", t.elapsed().as_secs_f64())
            }
            Ok(o) => eprintln!("cluster: down failed: {}", errtext(&o)),
            Err(e) => eprintln!("cluster: cannot run scripts/cluster down: {e}"),
        }
    }
}

/// A long-running BusyBox pod `name` in namespace `default`, pinned to
/// `node` (`nodeName`), labelled `app: APP`, and, with `network`, annotated
/// to join that WireGuardNetwork (`wireguard.wg-netns.io/network`).
pub fn pod_yaml(name: &str, node: &str, app: &str, network: Option<&str>) -> String {
    let ann = network
        .map(|n| format!(", annotations: {{wireguard.wg-netns.io/network: {n}}}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}{ann}}}\n\
         spec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: bb\n    \
         image: wgk8s.local/busybox:1\n    imagePullPolicy: Never\n    \
         command: [sh, -c, \"trap 'exit 0' TERM; while :; do sleep 1; done\"]\n"
    )
}

/// The mesh WireGuardNetwork `pods`: addresses from `pool` in blocks of 16
/// (/28), listen ports `ports` (inclusive).
pub fn mesh_network_yaml(pool: &str, ports: (u16, u16)) -> String {
    format!(
        "apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardNetwork\nmetadata: {{name: pods}}\n\
         spec:\n  addressPools: [{{cidr: \"{pool}\", blockSize: 28}}]\n  \
         listenPorts: {{from: {}, to: {}}}\n  mesh: true\n",
        ports.0, ports.1
    )
}
