//! The built `wg-oci-hook` under real OCI runtimes: runc, crun (through a
//! wrapper, see [`CRUN_WRAPPER`]), youki 0.7.0, and podman 4.3 with each of
//! them (`--hooks-dir`, the hook selected by annotation). One test per
//! check and runtime:
//!
//! - *pings*: a busybox container whose createRuntime hook gave it `wg0`
//!   pings the peer's WireGuard address through the tunnel; the record
//!   names the birth name and the public key; the UDP socket is in the
//!   node's namespace, not the container's (`socketNamespace` host);
//!   kill + delete (poststop) leaves nothing;
//! - *bad annotation*: create aborts with the hook's one-line message and
//!   leaves nothing;
//! - *late failure*: a configuration that fails after the daemon started (a
//!   route via an unreachable gateway) aborts create and is rolled back;
//! - under runc also `socketNamespace: "container"` (the socket in the
//!   container, none in the node).
//!
//! "Nothing left" ([`Node::leftovers`]): the runtime has no such
//! container, no record, no link in the node but its own veth, no control
//! socket of the container's birth name, no wireguard-go of that name or in
//! the node, no cgroup named after the container.
//!
//! Needs root, iproute2, wireguard-tools, wireguard-go, busybox-static
//! (`/bin/busybox`) and the runtime under test (youki at
//! `$WG_NETNS_TOOLS_CACHE/youki-0.7.0/bin/youki`, default cache
//! `/var/cache/wg-netns-tools`; podman with conmon). Without them a test
//! prints SKIP and passes; under `WG_NETNS_REQUIRE_ALL=1` it fails.
//! `scripts/runtime-tests` installs all of it (builds youki once) and runs
//! this file.
//!
//! Network safety: each test makes its own node namespace (`wgoci-*-node`)
//! and runs the runtime in it (its network namespace only, as `nsenter
//! --net` would: `ip netns exec` would also remount `/sys` and hide the
//! cgroup tree the runtimes need), so the hook's UDP socket is the test
//! node's. A veth joins it to a peer namespace (`wgoci-*-peer`) where a
//! wireguard-go peer runs. Nothing touches the machine's own interfaces.
//! Whatever a test made (containers, cgroups, daemons of its birth names,
//! records, namespaces, files, mounts) is removed when it ends, also when it
//! fails ([`Node`]'s drop).

use std::cell::Cell;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wg_netns::{IfName, Netns, PrivateKey};
use wg_netns_testkit::{
    eventually, ip, must, processes, tag, terminate, unavailable, write_key_file, TestNs,
    WireguardGo, WorkDir,
};
use wg_oci::config::{DEFAULT_NAME, DEFAULT_STATE_DIR};
use wg_oci::RecordStore;

const HOOK: &str = env!("CARGO_BIN_EXE_wg-oci-hook");
const BUSYBOX: &str = "/bin/busybox";

// Every test has namespaces of its own: these addresses need only be
// unique inside them.
/// The node's end of the underlay veth.
const NODE_IP: &str = "10.78.7.1";
/// The peer's end of the underlay veth: the WireGuard endpoint.
const PEER_IP: &str = "10.78.7.2";
/// The peer's WireGuard address, what the container pings.
const PEER_WG: &str = "10.77.7.1";
/// The container's WireGuard address.
const CTR_WG: &str = "10.77.7.2";
/// `socketNamespace: "container"`: the peer's end of the container's own
/// underlay (a second veth, peer <-> container) and the container's end.
const CS_PEER_IP: &str = "10.79.7.1";
const CS_IP: &str = "10.79.7.2";

/// crun 1.8 refuses this hybrid cgroup host: the wrapper hides the unified
/// (v2) mount in a private mount namespace, so crun runs on the v1
/// controllers.
const CRUN_WRAPPER: &str = r#"#!/bin/sh
exec unshare --mount --propagation private /bin/sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"' crun "$@"
"#;

/// What the runtimes built here default to (`runc spec`, runc 1.1.5), to
/// which [`Node::bundle`] adds the rootfs, the process, the capabilities,
/// a bind mount for results, annotations and hooks.
fn base_spec() -> Value {
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// The container's program for the ping tests: lo up, up to 15 pings of
/// the peer's WireGuard address, the verdict and `ip addr` into `/out`,
/// then sleep (the test kills it).
fn ping_script() -> String {
    format!(
        "ip link set lo up 2>/dev/null; i=0
while [ $i -lt 15 ]; do
  if ping -c 1 -W 1 {PEER_WG} >/dev/null 2>&1; then echo ok > /out/ping; break; fi
  i=$((i + 1))
done
[ -f /out/ping ] || echo fail > /out/ping
ip addr > /out/ip.txt 2>&1
exec sleep 3600"
    )
}

/// Where scripts/runtime-tests and scripts/netavark-tests build tools once.
fn tools_cache() -> PathBuf {
    std::env::var_os("WG_NETNS_TOOLS_CACHE")
        .or_else(|| std::env::var_os("WG_OCI_TOOLS"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/wg-netns-tools"))
}

fn youki() -> String {
    tools_cache()
        .join("youki-0.7.0/bin/youki")
        .display()
        .to_string()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Runtime {
    Runc,
    Crun,
    Youki,
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
            Runtime::Youki => "youki",
        }
    }

    /// The programs it needs.
    fn programs(self) -> Vec<String> {
        match self {
            Runtime::Runc => vec!["runc".into()],
            Runtime::Crun => vec!["crun".into(), "unshare".into()],
            Runtime::Youki => vec![youki()],
        }
    }

    /// Its name in the containers.conf [`Node::podman_setup`] writes.
    fn podman_name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun-wrapper",
            Runtime::Youki => "youki",
        }
    }
}

/// True when `test` can run here with `rt` (and podman); otherwise it was
/// skipped (printed) or has failed (`WG_NETNS_REQUIRE_ALL=1`).
fn ready(test: &str, rt: Runtime, podman: bool) -> bool {
    let mut programs: Vec<String> = ["ip", "wg", "wireguard-go", BUSYBOX]
        .map(String::from)
        .to_vec();
    programs.extend(rt.programs());
    if podman {
        programs.extend(["podman", "conmon", "tar"].map(String::from));
    }
    let programs: Vec<&str> = programs.iter().map(String::as_str).collect();
    !unavailable(test, &programs)
}

/// The hook's birth name for container `id` (the default network name, `wg0`).
fn birth_of(id: &str) -> String {
    wg_oci::birth_name(DEFAULT_NAME, id, &IfName::new("wg0").expect("wg0")).to_string()
}

/// What a command run for the test said.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Who removes a container at the end.
enum Owner {
    Runtime(Runtime),
    Podman,
}

/// One test's world: a node namespace (where the runtime runs), joined by
/// a veth to a peer namespace with a wireguard-go peer; a work directory
/// with the rootfs, bundles, the runtimes' state and the results. Its drop
/// removes everything the test made, in order: containers, cgroups,
/// daemons of the containers' birth names or in the node, records, then
/// (the fields) the peer, the work directory and the namespaces.
struct Node {
    /// Containers made, by id (podman: name), for the cleanup.
    containers: Vec<(Owner, String)>,
    /// OCI container ids the hook may have seen (records, birth names).
    oci_ids: Vec<String>,
    peer_daemon: Option<WireguardGo>,
    veth: String,
    tag: String,
    calls: Cell<u32>,
    container_key: PrivateKey,
    peer_key: PrivateKey,
    work: WorkDir,
    peer: TestNs,
    node: TestNs,
}

impl Node {
    fn new() -> Node {
        let node = TestNs::with_prefix("wgoci", "node");
        let peer = TestNs::with_prefix("wgoci", "peer");
        let work = WorkDir::new("wgoci-rt");
        let t = tag();
        let mut n = Node {
            containers: Vec::new(),
            oci_ids: Vec::new(),
            peer_daemon: None,
            veth: format!("wgoci-n{t}"),
            tag: t,
            calls: Cell::new(0),
            container_key: PrivateKey::generate().expect("key"),
            peer_key: PrivateKey::generate().expect("key"),
            work,
            peer,
            node,
        };
        let q = format!("wgoci-q{}", n.tag);
        let (node, peer, veth) = (&n.node.name, &n.peer.name, &n.veth);
        ip(&format!(
            "-n {node} link add {veth} type veth peer name {q} netns {peer}"
        ));
        ip(&format!("-n {node} addr add {NODE_IP}/24 dev {veth}"));
        ip(&format!("-n {peer} addr add {PEER_IP}/24 dev {q}"));
        ip(&format!("-n {node} link set {veth} up"));
        ip(&format!("-n {peer} link set {q} up"));

        // The peer: wireguard-go in the foreground, a child of this test.
        let peer_if = format!("wgoci-p{}", n.tag);
        n.peer_daemon = Some(WireguardGo::start(&n.peer, &peer_if));
        let (ckey, pkey) = (n.work.join("c.key"), n.work.join("p.key"));
        write_key_file(&ckey, n.container_key.to_base64().as_bytes());
        write_key_file(&pkey, n.peer_key.to_base64().as_bytes());
        must(&[
            "wg",
            "set",
            &peer_if,
            "private-key",
            pkey.to_str().expect("path"),
            "listen-port",
            "51820",
            "peer",
            &n.container_pub(),
            "allowed-ips",
            &format!("{CTR_WG}/32"),
        ]);
        let peer = &n.peer.name;
        ip(&format!("-n {peer} addr add {PEER_WG}/24 dev {peer_if}"));
        ip(&format!("-n {peer} link set {peer_if} up"));

        // The rootfs: busybox-static and the applets the containers run.
        for d in ["bin", "proc", "sys", "dev", "out", "tmp"] {
            fs::create_dir_all(n.work.join("rootfs").join(d)).expect("rootfs");
        }
        fs::create_dir_all(n.work.join("out")).expect("out");
        fs::copy(BUSYBOX, n.work.join("rootfs/bin/busybox")).expect("copy busybox");
        for a in ["sh", "ping", "ip", "sleep", "true", "cat"] {
            std::os::unix::fs::symlink("busybox", n.work.join("rootfs/bin").join(a))
                .expect("applet");
        }
        let wrapper = n.work.join("crun-wrapper");
        fs::write(&wrapper, CRUN_WRAPPER).expect("crun wrapper");
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod");
        // The configuration as a root-owned file (the config-file
        // annotation), which may name the key file.
        let mut file_conf = n.conf(json!({"privateKeyFile": ckey}));
        file_conf
            .as_object_mut()
            .expect("object")
            .remove("privateKey");
        let conf_file = n.conf_file();
        fs::write(&conf_file, file_conf.to_string()).expect("conf.json");
        fs::set_permissions(&conf_file, fs::Permissions::from_mode(0o644)).expect("chmod");
        n
    }

    fn container_pub(&self) -> String {
        self.container_key.public_key().to_base64()
    }

    fn conf_file(&self) -> PathBuf {
        self.work.join("conf.json")
    }

    /// An inline configuration for the container with `extra`'s fields
    /// merged in. Inline configuration may not name a file, a program or
    /// the state directory: the key is inline, records go to the default
    /// state directory.
    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "address": format!("{CTR_WG}/24"),
            "privateKey": &*self.container_key.to_base64(),
            "peers": [{"publicKey": self.peer_key.public_key().to_base64(),
                       "endpoint": format!("{PEER_IP}:51820"),
                       "allowedIPs": [format!("{PEER_WG}/32")]}],
        });
        let obj = c.as_object_mut().expect("object");
        for (k, v) in extra.as_object().expect("object") {
            obj.insert(k.clone(), v.clone());
        }
        c
    }

    /// A container id of this test (and so of this process), registered
    /// for the cleanup of records and daemons.
    fn container_id(&mut self, what: &str) -> String {
        let id = format!("wgoci-{what}-{}", self.tag);
        self.oci_ids.push(id.clone());
        id
    }

    /// A bundle for container `id` running `script`, with `annotations`,
    /// with the hook's createRuntime and poststop stages when `hooks`.
    fn bundle(
        &self,
        id: &str,
        script: &str,
        annotations: &[(&str, String)],
        hooks: bool,
    ) -> PathBuf {
        let b = self.work.join("b").join(id);
        let out = self.work.join("out").join(id);
        fs::create_dir_all(&b).expect("bundle dir");
        fs::create_dir_all(&out).expect("out dir");
        let mut spec = base_spec();
        spec["process"]["args"] = json!(["/bin/sh", "-c", script]);
        for set in spec["process"]["capabilities"]
            .as_object_mut()
            .expect("capabilities")
            .values_mut()
        {
            let caps = set.as_array_mut().expect("capability set");
            caps.extend([json!("CAP_NET_ADMIN"), json!("CAP_NET_RAW")]);
        }
        spec["root"] = json!({"path": self.work.join("rootfs"), "readonly": true});
        spec["hostname"] = json!(id);
        spec["mounts"]
            .as_array_mut()
            .expect("mounts")
            .push(json!({"destination": "/out", "type": "bind", "source": out,
                         "options": ["rbind", "rw"]}));
        spec["annotations"] = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        if hooks {
            spec["hooks"] = json!({
                "createRuntime": [{"path": HOOK, "args": ["wg-oci-hook", "create"]}],
                "poststop": [{"path": HOOK, "args": ["wg-oci-hook", "poststop"]}],
            });
        }
        fs::write(b.join("config.json"), spec.to_string()).expect("config.json");
        b
    }

    /// Run `cmd` in the node's network namespace, its output in files
    /// under out/ (a detached container inherits the runtime's stdio: a
    /// pipe would never close).
    fn in_node(&self, mut cmd: Command) -> Ran {
        let n = self.calls.get() + 1;
        self.calls.set(n);
        let (o, e) = (
            self.work.join(format!("out/call-{n}.stdout")),
            self.work.join(format!("out/call-{n}.stderr")),
        );
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&o).expect("stdout file"))
            .stderr(fs::File::create(&e).expect("stderr file"));
        let t = Instant::now();
        let status = self
            .node
            .ns
            .run(move || cmd.status())
            .expect("namespace thread")
            .expect("spawn");
        Ran {
            ok: status.success(),
            stdout: fs::read_to_string(&o).unwrap_or_default(),
            stderr: fs::read_to_string(&e).unwrap_or_default(),
            took: t.elapsed(),
        }
    }

    fn runtime_cmd(&self, rt: Runtime) -> Command {
        let mut c = match rt {
            Runtime::Runc => Command::new("runc"),
            Runtime::Crun => Command::new(self.work.join("crun-wrapper")),
            Runtime::Youki => Command::new(youki()),
        };
        c.arg("--root")
            .arg(self.work.join(format!("root-{}", rt.name())));
        c
    }

    /// The runtime, in the node's network namespace.
    fn runtime(&self, rt: Runtime, args: &[&str]) -> Ran {
        let mut c = self.runtime_cmd(rt);
        c.args(args);
        self.in_node(c)
    }

    /// The runtime's state of container `id`, when it has one.
    fn state(&self, rt: Runtime, id: &str) -> Option<Value> {
        let r = self.runtime(rt, &["state", id]);
        r.ok.then(|| serde_json::from_str(&r.stdout).ok()).flatten()
    }

    fn podman_cmd(&self) -> Command {
        let d = self.work.join("podman");
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .arg("--hooks-dir")
            .arg(self.work.join("hooks.d"));
        c
    }

    /// podman with this test's private configuration, storage and hooks,
    /// in the node's network namespace.
    fn podman(&self, args: &[&str]) -> Ran {
        let mut c = self.podman_cmd();
        c.args(args);
        self.in_node(c)
    }

    /// podman's private setup: containers.conf (the runtimes, the CNI
    /// backend with an empty configuration directory), storage.conf (vfs),
    /// the hook JSON for both stages selected by either annotation, and the
    /// rootfs imported as an image.
    fn podman_setup(&self) {
        let d = self.work.join("podman");
        fs::create_dir_all(d.join("tmp")).expect("podman dir");
        fs::create_dir_all(self.work.join("hooks.d")).expect("hooks.d");
        let dd = d.display();
        fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{dd}/events.log\"\ntmp_dir = \"{dd}/tmp\"\n\
                 [engine.runtimes]\ncrun-wrapper = [\"{}\"]\nyouki = [\"{}\"]\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{dd}/cni\"\n",
                self.work.join("crun-wrapper").display(),
                youki(),
            ),
        )
        .expect("containers.conf");
        fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{dd}/run\"\ngraphroot = \"{dd}/graph\"\n"
            ),
        )
        .expect("storage.conf");
        for (stage, arg) in [("createRuntime", "create"), ("poststop", "poststop")] {
            let hook = json!({"version": "1.0.0", "hook": {"path": HOOK, "args": ["wg-oci-hook", arg]},
                              "when": {"annotations": {"^wg-netns\\.io/config(-file)?$": ".+"}},
                              "stages": [stage]});
            fs::write(
                self.work.join(format!("hooks.d/wg-oci-{arg}.json")),
                hook.to_string(),
            )
            .expect("hook json");
        }
        let tar = d.join("rootfs.tar");
        must(&[
            "tar",
            "-C",
            self.work.join("rootfs").to_str().expect("path"),
            "-cf",
            tar.to_str().expect("path"),
            ".",
        ]);
        let r = self.podman(&[
            "import",
            "-q",
            "--change",
            "CMD [\"/bin/sh\"]",
            tar.to_str().expect("path"),
            "localhost/wgoci-busybox",
        ]);
        assert!(r.ok, "podman import: {}", r.stderr);
    }

    /// The container's own underlay to the peer (`socketNamespace
    /// "container"`): a veth from the peer into the namespace of `pid`;
    /// it dies with the container.
    fn underlay_into(&self, pid: u32) {
        let (r, s) = (
            format!("wgoci-r{}", self.tag),
            format!("wgoci-s{}", self.tag),
        );
        let peer = &self.peer.name;
        ip(&format!(
            "-n {peer} link add {r} type veth peer name {s} netns {pid}"
        ));
        ip(&format!("-n {peer} addr add {CS_PEER_IP}/24 dev {r}"));
        ip(&format!("-n {peer} link set {r} up"));
        let ctr = Netns::from_path(format!("/proc/{pid}/ns/net")).expect("container namespace");
        ctr.run(|| {
            ip(&format!("addr add {CS_IP}/24 dev {s}"));
            ip(&format!("link set {s} up"));
        })
        .expect("namespace thread");
    }

    /// Whatever of container `id` (OCI id `oci_id`, birth name `birth`)
    /// is still there; empty when nothing is.
    fn leftovers(&self, owner: &Owner, id: &str, oci_id: &str, birth: &str) -> Vec<String> {
        let mut left = Vec::new();
        match owner {
            Owner::Runtime(rt) => {
                if self.state(*rt, id).is_some() {
                    left.push(format!("{} still has container {id}", rt.name()));
                }
            }
            Owner::Podman => {
                if self.podman(&["container", "exists", id]).ok {
                    left.push(format!("podman still has container {id}"));
                }
            }
        }
        let record = Path::new(DEFAULT_STATE_DIR).join(format!("{oci_id}.json"));
        if record.exists() {
            left.push(format!("record {}", record.display()));
        }
        for l in self.node.link_names() {
            if l != "lo" && l != self.veth {
                left.push(format!("link {l} in the node"));
            }
        }
        if Path::new(&format!("/var/run/wireguard/{birth}.sock")).exists() {
            left.push(format!("socket {birth}.sock"));
        }
        let node = self.node.inode();
        for p in processes("wireguard-go") {
            if p.args.last().is_some_and(|a| a == birth) || p.netns == node {
                left.push(format!("daemon {} {:?}", p.pid, p.args));
            }
        }
        for c in cgroups_named(&[id, oci_id, &format!("libpod-{oci_id}")]) {
            left.push(format!("cgroup {}", c.display()));
        }
        left
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Nothing here may panic (it runs while a failed test unwinds).
        let quiet = |mut c: Command| {
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = self.node.ns.run(move || c.status());
        };
        let mut oci_ids = self.oci_ids.clone();
        for (owner, id) in self.containers.iter().rev() {
            match owner {
                Owner::Runtime(rt) => {
                    let mut c = self.runtime_cmd(*rt);
                    c.args(["kill", id, "KILL"]);
                    quiet(c);
                    std::thread::sleep(Duration::from_millis(200));
                    let mut c = self.runtime_cmd(*rt);
                    c.args(["delete", "-f", id]);
                    quiet(c);
                }
                Owner::Podman => {
                    // The hook knew it by podman's id (a test that failed
                    // early may not have learnt it).
                    let mut c = self.podman_cmd();
                    c.args(["container", "inspect", "--format", "{{.Id}}", id])
                        .stdin(Stdio::null())
                        .stderr(Stdio::null());
                    if let Ok(Ok(out)) = self.node.ns.run(move || c.output()) {
                        let oci_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
                        if out.status.success() && !oci_id.is_empty() {
                            oci_ids.push(oci_id);
                        }
                    }
                    let mut c = self.podman_cmd();
                    c.args(["rm", "-f", "-t", "0", id]);
                    quiet(c);
                }
            }
        }
        let mut names: Vec<String> = self.containers.iter().map(|(_, id)| id.clone()).collect();
        for id in &oci_ids {
            names.push(id.clone());
            names.push(format!("libpod-{id}"));
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for c in cgroups_named(&names) {
            let _ = fs::remove_dir(c);
        }
        // The hook's daemons: by the containers' birth names, and any born
        // in this test's node (socketNamespace host).
        let births: Vec<String> = oci_ids.iter().map(|id| birth_of(id)).collect();
        let node = self.node.inode();
        for p in processes("wireguard-go") {
            let named = p.args.last().is_some_and(|a| births.contains(a));
            if named || (node.is_some() && p.netns == node) {
                terminate(p.pid, Duration::from_secs(2));
            }
        }
        for (id, birth) in oci_ids.iter().zip(&births) {
            let _ = fs::remove_file(format!("/var/run/wireguard/{birth}.sock"));
            let _ = fs::remove_file(Path::new(DEFAULT_STATE_DIR).join(format!("{id}.json")));
        }
        // Then the fields: the peer (stopped by its PID), the work
        // directory (with what is mounted under it), the namespaces.
    }
}

/// Cgroup directories (up to three levels under /sys/fs/cgroup) with one
/// of `names`, deepest first.
fn cgroups_named(names: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: u32, names: &[&str], found: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let p = e.path();
            if depth < 3 {
                walk(&p, depth + 1, names, found);
            }
            if names.iter().any(|n| e.file_name() == *n) {
                found.push(p);
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 1, names, &mut found);
    found
}

/// UDP ports bound in the network namespace of `pid`.
fn udp_ports_of(pid: u32) -> Vec<u16> {
    let mut ports = Vec::new();
    for f in ["udp", "udp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let local = line.split_whitespace().nth(1).unwrap_or_default();
            if let Some(p) = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            {
                ports.push(p);
            }
        }
    }
    ports
}

/// The listen port of the userspace device `birth` (its UAPI socket).
fn listen_port(birth: &str) -> u16 {
    must(&["wg", "show", birth, "listen-port"])
        .trim()
        .parse()
        .expect("a listen port")
}

/// Wait up to `within` for a non-empty file; its content.
fn wait_file(path: &Path, within: Duration) -> String {
    eventually(within, || fs::metadata(path).is_ok_and(|m| m.len() > 0));
    fs::read_to_string(path).unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SocketNs {
    Host,
    Container,
}

/// create (hook) -> record -> where the UDP socket is -> start -> ping
/// through the tunnel -> kill -> delete (poststop) -> nothing left.
fn pings_and_delete_leaves_nothing(test: &str, rt: Runtime, socket: SocketNs) {
    if !ready(test, rt, false) {
        return;
    }
    let mut n = Node::new();
    let id = n.container_id(&match socket {
        SocketNs::Host => rt.name().to_string(),
        SocketNs::Container => format!("{}-cs", rt.name()),
    });
    let annotation = match (rt, socket) {
        // crun: the configuration from a root-owned file.
        (Runtime::Crun, SocketNs::Host) => (
            "wg-netns.io/config-file",
            n.conf_file().display().to_string(),
        ),
        (_, SocketNs::Host) => ("wg-netns.io/config", n.conf(json!({})).to_string()),
        (_, SocketNs::Container) => (
            "wg-netns.io/config",
            n.conf(json!({"socketNamespace": "container",
                          "peers": [{"publicKey": n.peer_key.public_key().to_base64(),
                                     "endpoint": format!("{CS_PEER_IP}:51820"),
                                     "allowedIPs": [format!("{PEER_WG}/32")]}]}))
                .to_string(),
        ),
    };
    let bundle = n.bundle(&id, &ping_script(), &[annotation], true);
    n.containers.push((Owner::Runtime(rt), id.clone()));
    let create = n.runtime(
        rt,
        &["create", "--bundle", bundle.to_str().expect("path"), &id],
    );
    assert!(
        create.ok,
        "{} create with the hook: {}",
        rt.name(),
        create.stderr
    );
    eprintln!("{test}: create with the hook took {:?}", create.took);

    let birth = birth_of(&id);
    let record = RecordStore::new(DEFAULT_STATE_DIR)
        .load(&id)
        .expect("reading the record")
        .expect("a record after create");
    assert_eq!(record.attachment.birth_name.as_str(), birth, "birth name");
    assert_eq!(record.public_key, n.container_pub(), "public key");

    let state = n.state(rt, &id).expect("the container's state");
    let pid = u32::try_from(state["pid"].as_u64().expect("pid")).expect("pid");
    let port = listen_port(&birth);
    let (in_ctr, in_node) = (udp_ports_of(pid), n.node.udp_ports());
    match socket {
        SocketNs::Host => {
            assert!(
                in_ctr.is_empty(),
                "UDP sockets in the container: {in_ctr:?}"
            );
            assert!(
                in_node.contains(&port),
                "the daemon's port {port} is not in the node: {in_node:?}"
            );
        }
        SocketNs::Container => {
            assert!(
                in_ctr.contains(&port),
                "the daemon's port {port} is not in the container: {in_ctr:?}"
            );
            assert!(in_node.is_empty(), "UDP sockets in the node: {in_node:?}");
            n.underlay_into(pid);
        }
    }

    let start = n.runtime(rt, &["start", &id]);
    assert!(start.ok, "{} start: {}", rt.name(), start.stderr);
    let out = n.work.join("out").join(&id);
    let ping = wait_file(&out.join("ping"), Duration::from_secs(25));
    let ip = wait_file(&out.join("ip.txt"), Duration::from_secs(5));
    assert_eq!(
        ping.trim(),
        "ok",
        "the container did not ping {PEER_WG}; its addresses:\n{ip}"
    );
    assert!(
        ip.contains(&format!("inet {CTR_WG}/24")),
        "no wg0 with {CTR_WG}:\n{ip}"
    );

    n.runtime(rt, &["kill", &id, "KILL"]);
    assert!(
        eventually(Duration::from_secs(10), || n
            .state(rt, &id)
            .is_some_and(|s| s["status"] == "stopped")),
        "the container did not stop"
    );
    let delete = n.runtime(rt, &["delete", &id]);
    assert!(
        delete.ok && delete.stderr.is_empty(),
        "delete (poststop): {}",
        delete.stderr
    );
    eprintln!("{test}: delete (poststop) took {:?}", delete.took);
    let left = n.leftovers(&Owner::Runtime(rt), &id, &id, &birth);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The hook's line in what a runtime said: from `wg-oci-hook: ` to the
/// end of that line.
fn hook_line(said: &str) -> Option<&str> {
    said.lines()
        .find_map(|l| l.find("wg-oci-hook: ").map(|i| &l[i..]))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// A peer's public key that is no key: refused before anything is made.
    Bad,
    /// A route via an unreachable gateway: fails after the daemon started.
    Late,
}

/// A configuration that fails aborts create with the hook's message, and
/// nothing is left (a runtime may keep the failed container as "stopped"
/// until deleted; the hook must have left nothing in any case).
fn failure_aborts_create(test: &str, rt: Runtime, kind: Failure) {
    if !ready(test, rt, false) {
        return;
    }
    let mut n = Node::new();
    let (what, conf) = match kind {
        Failure::Bad => (
            "bad",
            n.conf(json!({"peers": [{"publicKey": "not-a-key", "allowedIPs": ["10.77.0.1/32"]}]})),
        ),
        Failure::Late => (
            "late",
            n.conf(json!({"routes": [{"dst": "10.99.0.0/16", "gw": "10.55.55.55"}]})),
        ),
    };
    let id = n.container_id(&format!("{}-{what}", rt.name()));
    // crun discards a hook's stderr unless run.oci.hooks.stderr names a file.
    let hook_err = n.work.join("out").join(format!("{id}.hook.err"));
    let bundle = n.bundle(
        &id,
        "exec sleep 3600",
        &[
            ("wg-netns.io/config", conf.to_string()),
            ("run.oci.hooks.stderr", hook_err.display().to_string()),
        ],
        true,
    );
    n.containers.push((Owner::Runtime(rt), id.clone()));
    let create = n.runtime(
        rt,
        &["create", "--bundle", bundle.to_str().expect("path"), &id],
    );
    assert!(!create.ok, "{} create succeeded", rt.name());
    // runc and youki relay the hook's stderr; crun writes it to the file.
    let from_file = fs::read_to_string(&hook_err).unwrap_or_default();
    let said = format!("{}\n{from_file}", create.stderr);
    let line = hook_line(&said).unwrap_or_else(|| panic!("no wg-oci-hook line in: {said}"));
    eprintln!("{test}: {line}");
    match kind {
        Failure::Bad => assert!(
            line.starts_with("wg-oci-hook: invalid configuration: peers[0].publicKey"),
            "{line}"
        ),
        Failure::Late => assert!(
            line.starts_with(&format!("wg-oci-hook: attaching wg0 to container {id}"))
                && line.contains("RTM_NEWROUTE"),
            "{line}"
        ),
    }
    if !from_file.is_empty() {
        assert_eq!(from_file.lines().count(), 1, "the hook said: {from_file:?}");
    }
    let birth = birth_of(&id);
    let owner = Owner::Runtime(rt);
    assert!(
        eventually(Duration::from_secs(3), || n
            .leftovers(&owner, &id, &id, &birth)
            .is_empty()),
        "left behind: {:?}",
        n.leftovers(&owner, &id, &id, &birth)
    );
}

/// The OCI id of podman's container `name`, when podman has it.
fn podman_id(n: &Node, name: &str) -> Option<String> {
    let r = n.podman(&["container", "inspect", "--format", "{{.Id}}", name]);
    r.ok.then(|| r.stdout.trim().to_string())
}

/// podman run (the hook selected by the config-file annotation) -> ping
/// through the tunnel -> rm -f (poststop) -> nothing left.
fn podman_pings_and_rm_leaves_nothing(test: &str, rt: Runtime) {
    if !ready(test, rt, true) {
        return;
    }
    let mut n = Node::new();
    n.podman_setup();
    let name = format!("wgoci-podman-{}-{}", rt.name(), n.tag);
    let out = n.work.join("out").join(&name);
    fs::create_dir_all(&out).expect("out dir");
    n.containers.push((Owner::Podman, name.clone()));
    let annotation = format!("wg-netns.io/config-file={}", n.conf_file().display());
    let volume = format!("{}:/out", out.display());
    let script = ping_script();
    let r = n.podman(&[
        "run",
        "-d",
        "--runtime",
        rt.podman_name(),
        "--name",
        &name,
        "--network",
        "none",
        "--cap-add",
        "NET_ADMIN,NET_RAW",
        "--annotation",
        &annotation,
        "-v",
        &volume,
        "localhost/wgoci-busybox",
        "sh",
        "-c",
        &script,
    ]);
    assert!(r.ok, "podman run with the hook: {}", r.stderr);
    // The hook sees podman's container id, not its name.
    let oci_id = r.stdout.trim().to_string();
    n.oci_ids.push(oci_id.clone());
    let birth = birth_of(&oci_id);
    let record = RecordStore::new(DEFAULT_STATE_DIR)
        .load(&oci_id)
        .expect("reading the record")
        .expect("a record after run");
    assert_eq!(record.attachment.birth_name.as_str(), birth, "birth name");
    assert_eq!(record.public_key, n.container_pub(), "public key");
    let ping = wait_file(&out.join("ping"), Duration::from_secs(25));
    let ip = wait_file(&out.join("ip.txt"), Duration::from_secs(5));
    assert_eq!(
        ping.trim(),
        "ok",
        "the container did not ping {PEER_WG}; its addresses:\n{ip}"
    );
    assert!(
        ip.contains(&format!("inet {CTR_WG}/24")),
        "no wg0 with {CTR_WG}:\n{ip}"
    );
    let rm = n.podman(&["rm", "-f", "-t", "0", &name]);
    assert!(rm.ok, "podman rm -f: {}", rm.stderr);
    assert!(
        eventually(Duration::from_secs(3), || n
            .leftovers(&Owner::Podman, &name, &oci_id, &birth)
            .is_empty()),
        "left behind: {:?}",
        n.leftovers(&Owner::Podman, &name, &oci_id, &birth)
    );
}

/// A bad inline annotation aborts `podman run` with the hook's message;
/// after `rm -f` nothing is left.
fn podman_bad_annotation_aborts_run(test: &str, rt: Runtime) {
    if !ready(test, rt, true) {
        return;
    }
    let mut n = Node::new();
    n.podman_setup();
    let name = format!("wgoci-podman-{}-{}-bad", rt.name(), n.tag);
    n.containers.push((Owner::Podman, name.clone()));
    let bad =
        n.conf(json!({"peers": [{"publicKey": "not-a-key", "allowedIPs": ["10.77.0.1/32"]}]}));
    // podman parses --annotation as CSV: quote the field, double its quotes.
    let annotation = format!(
        "\"wg-netns.io/config={}\"",
        bad.to_string().replace('"', "\"\"")
    );
    let hook_err = n.work.join("out").join(format!("{name}.hook.err"));
    let stderr_annotation = format!("run.oci.hooks.stderr={}", hook_err.display());
    let r = n.podman(&[
        "run",
        "-d",
        "--runtime",
        rt.podman_name(),
        "--name",
        &name,
        "--network",
        "none",
        "--annotation",
        &annotation,
        "--annotation",
        &stderr_annotation,
        "localhost/wgoci-busybox",
        "sleep",
        "3600",
    ]);
    assert!(!r.ok, "podman run with a bad annotation succeeded");
    let from_file = fs::read_to_string(&hook_err).unwrap_or_default();
    let said = format!("{}\n{from_file}", r.stderr);
    let line = hook_line(&said).unwrap_or_else(|| panic!("no wg-oci-hook line in: {said}"));
    eprintln!("{test}: {line}");
    assert!(
        line.starts_with("wg-oci-hook: invalid configuration: peers[0].publicKey"),
        "{line}"
    );
    if !from_file.is_empty() {
        assert_eq!(from_file.lines().count(), 1, "the hook said: {from_file:?}");
    }
    let oci_id = podman_id(&n, &name).expect("podman keeps the failed container");
    n.oci_ids.push(oci_id.clone());
    let birth = birth_of(&oci_id);
    let rm = n.podman(&["rm", "-f", "-t", "0", &name]);
    assert!(rm.ok, "podman rm -f: {}", rm.stderr);
    assert!(
        eventually(Duration::from_secs(3), || n
            .leftovers(&Owner::Podman, &name, &oci_id, &birth)
            .is_empty()),
        "left behind: {:?}",
        n.leftovers(&Owner::Podman, &name, &oci_id, &birth)
    );
}

#[test]
fn runc_pings_through_the_tunnel_and_delete_leaves_nothing() {
    pings_and_delete_leaves_nothing(
        "runc_pings_through_the_tunnel_and_delete_leaves_nothing",
        Runtime::Runc,
        SocketNs::Host,
    );
}

#[test]
fn runc_bad_annotation_aborts_create_and_leaves_nothing() {
    failure_aborts_create(
        "runc_bad_annotation_aborts_create_and_leaves_nothing",
        Runtime::Runc,
        Failure::Bad,
    );
}

#[test]
fn runc_late_failure_aborts_create_and_is_rolled_back() {
    failure_aborts_create(
        "runc_late_failure_aborts_create_and_is_rolled_back",
        Runtime::Runc,
        Failure::Late,
    );
}

#[test]
fn runc_socket_namespace_container_pings_and_delete_leaves_nothing() {
    pings_and_delete_leaves_nothing(
        "runc_socket_namespace_container_pings_and_delete_leaves_nothing",
        Runtime::Runc,
        SocketNs::Container,
    );
}

#[test]
fn crun_pings_through_the_tunnel_and_delete_leaves_nothing() {
    pings_and_delete_leaves_nothing(
        "crun_pings_through_the_tunnel_and_delete_leaves_nothing",
        Runtime::Crun,
        SocketNs::Host,
    );
}

#[test]
fn crun_bad_annotation_aborts_create_and_leaves_nothing() {
    failure_aborts_create(
        "crun_bad_annotation_aborts_create_and_leaves_nothing",
        Runtime::Crun,
        Failure::Bad,
    );
}

#[test]
fn crun_late_failure_aborts_create_and_is_rolled_back() {
    failure_aborts_create(
        "crun_late_failure_aborts_create_and_is_rolled_back",
        Runtime::Crun,
        Failure::Late,
    );
}

#[test]
fn youki_pings_through_the_tunnel_and_delete_leaves_nothing() {
    pings_and_delete_leaves_nothing(
        "youki_pings_through_the_tunnel_and_delete_leaves_nothing",
        Runtime::Youki,
        SocketNs::Host,
    );
}

#[test]
fn youki_bad_annotation_aborts_create_and_leaves_nothing() {
    failure_aborts_create(
        "youki_bad_annotation_aborts_create_and_leaves_nothing",
        Runtime::Youki,
        Failure::Bad,
    );
}

#[test]
fn youki_late_failure_aborts_create_and_is_rolled_back() {
    failure_aborts_create(
        "youki_late_failure_aborts_create_and_is_rolled_back",
        Runtime::Youki,
        Failure::Late,
    );
}

#[test]
fn podman_runc_pings_through_the_tunnel_and_rm_leaves_nothing() {
    podman_pings_and_rm_leaves_nothing(
        "podman_runc_pings_through_the_tunnel_and_rm_leaves_nothing",
        Runtime::Runc,
    );
}

#[test]
fn podman_runc_bad_annotation_aborts_run_and_leaves_nothing() {
    podman_bad_annotation_aborts_run(
        "podman_runc_bad_annotation_aborts_run_and_leaves_nothing",
        Runtime::Runc,
    );
}

#[test]
fn podman_crun_pings_through_the_tunnel_and_rm_leaves_nothing() {
    podman_pings_and_rm_leaves_nothing(
        "podman_crun_pings_through_the_tunnel_and_rm_leaves_nothing",
        Runtime::Crun,
    );
}

#[test]
fn podman_crun_bad_annotation_aborts_run_and_leaves_nothing() {
    podman_bad_annotation_aborts_run(
        "podman_crun_bad_annotation_aborts_run_and_leaves_nothing",
        Runtime::Crun,
    );
}

#[test]
fn podman_youki_pings_through_the_tunnel_and_rm_leaves_nothing() {
    podman_pings_and_rm_leaves_nothing(
        "podman_youki_pings_through_the_tunnel_and_rm_leaves_nothing",
        Runtime::Youki,
    );
}

#[test]
fn podman_youki_bad_annotation_aborts_run_and_leaves_nothing() {
    podman_bad_annotation_aborts_run(
        "podman_youki_bad_annotation_aborts_run_and_leaves_nothing",
        Runtime::Youki,
    );
}
