//! A container runtime that embeds youki's `libcontainer` gives its
//! container a WireGuard interface with one library call:
//! [`wg_oci::attach`] between create and start, [`wg_oci::detach`] after the
//! container stopped. No hook, no CNI.
//!
//! ```text
//! sudo target/release/examples/libcontainer_wireguard [--bench N] [--no-failures]
//! ```
//!
//! Self-contained: it makes a node namespace (the "runtime's" network
//! namespace; the libcontainer part runs on a thread inside it, so the
//! WireGuard UDP socket is born there) and a peer namespace with a
//! WireGuard peer (wg-netns, userspace wireguard-go), joined by a veth:
//!
//! ```text
//!  container (new netns)        wglc-PID-node              wglc-PID-peer
//!  wg0 10.98.0.2  <- TUN moved   wireguard-go, UDP socket   wg0 10.98.0.1
//!                                veth 10.97.0.1 <-------->  veth 10.97.0.2:51820
//! ```
//!
//! Every packet stays inside these namespaces (network safety: nothing
//! touches the machine's interfaces). Each scenario prints `ok N - ...` or
//! `not ok N - ...`; the exit status is 1 when one failed. Everything made
//! (containers, interfaces, daemons, sockets, records, cgroups, state and
//! bundle directories, namespaces) is removed also on failure or panic, by
//! guards.
//!
//! Scenarios: the container's process brings `lo` up and pings the peer
//! through the tunnel (exit 0 on success), the peer's counters show the
//! traffic, and nothing is left afterwards; an attach that fails late (a
//! route through an unreachable gateway) leaves nothing and the container
//! is deleted; a panic between attach and start leaves nothing. `--bench N`
//! then times create, attach and start over N containers without the
//! attach, N with it and N with it and `socketNamespace: "container"`
//! (process `true`), in rotating order, and prints medians.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use rustix::process::{Pid, Signal, WaitOptions};
use wg_netns::{
    Attachment, Backend, Birthplace, DeviceConfig, IfName, InterfaceSpec, Netns, PeerConfig,
    PrivateKey, PublicKey, Rtnl, WgDevice,
};
use wg_oci::{Config, Record, RecordStore, Target};

/// Errors of this example: one line, with context.
type Res<T> = Result<T, String>;

/// Add context to an error.
trait Ctx<T> {
    fn ctx(self, what: &str) -> Res<T>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

// The test network. Neither range is routed anywhere outside the
// namespaces this program creates.
const NODE_UNDERLAY: &str = "10.97.0.1/24";
const PEER_UNDERLAY: &str = "10.97.0.2/24";
const PEER_ENDPOINT: &str = "10.97.0.2:51820";
const PEER_TUNNEL: &str = "10.98.0.1";
const CONTAINER_TUNNEL: &str = "10.98.0.2";

// ---------------------------------------------------------------------------
// The lab: node and peer namespaces, the veth, the WireGuard peer, the
// directories. Removed on drop.

struct Lab {
    tag: String,
    /// Namespaces created so far (removed on drop).
    ns_names: Vec<String>,
    node: Netns,
    peer: Netns,
    /// The peer's WireGuard interface and where it lives.
    peer_place: Birthplace,
    peer_att: Attachment,
    peer_key: PrivateKey,
    /// `/run/wglc-PID`: rootfs, bundles, libcontainer's state root, records.
    dir: PathBuf,
}

impl Lab {
    fn new() -> Res<Lab> {
        let tag = format!("{}", std::process::id());
        let dir = PathBuf::from(format!("/run/wglc-{tag}"));
        // Partially built labs are cleaned by the guard's Drop.
        let mut guard = LabParts {
            ns_names: Vec::new(),
            dir: dir.clone(),
            armed: true,
        };
        std::fs::create_dir_all(&dir).ctx("creating the work directory")?;
        let (node_name, peer_name) = (format!("wglc-{tag}-node"), format!("wglc-{tag}-peer"));
        let node = Netns::create_named(&node_name).ctx("creating the node namespace")?;
        guard.ns_names.push(node_name);
        let peer = Netns::create_named(&peer_name).ctx("creating the peer namespace")?;
        guard.ns_names.push(peer_name);

        // The underlay: a veth between node and peer.
        let name = |s: &str| IfName::new(s).ctx("interface name");
        let (rn, rp) = (
            Rtnl::open(&node).ctx("rtnl node")?,
            Rtnl::open(&peer).ctx("rtnl peer")?,
        );
        let veth = rn
            .create_veth(&name("wglc-n")?, &name("wglc-p")?, Some(&peer))
            .ctx("creating the veth")?;
        let veth_p = rp.link_by_name(&name("wglc-p")?).ctx("veth peer end")?;
        rn.add_address(veth.index, NODE_UNDERLAY.parse().ctx("address")?)
            .ctx("node address")?;
        rp.add_address(veth_p.index, PEER_UNDERLAY.parse().ctx("address")?)
            .ctx("peer address")?;
        for (r, idx) in [(&rn, veth.index), (&rp, veth_p.index)] {
            r.set_up(idx, true).ctx("veth up")?;
            let lo = r.link_by_name(&name("lo")?).ctx("lo")?;
            r.set_up(lo.index, true).ctx("lo up")?;
        }

        // The peer: wg0 in the peer namespace, listening on 51820. Its peer
        // (the container) is added once the container's key is known.
        let backend = Backend::detect().ctx("choosing a WireGuard backend")?;
        let peer_key = PrivateKey::generate().ctx("generating a key")?;
        let peer_place = Birthplace::new(&peer, &peer, &backend).ctx("peer birthplace")?;
        let birth = name(&format!("wglcp{:x}", std::process::id() % 0xfffff))?;
        let spec = InterfaceSpec::new(birth, name("wg0")?)
            .device(
                DeviceConfig::new()
                    .private_key(peer_key.clone())
                    .listen_port(51820),
            )
            .address(format!("{PEER_TUNNEL}/24").parse().ctx("address")?);
        let peer_att = peer_place.attach(&spec).ctx("the peer's wg0")?;

        // The container image: busybox-static and three applet links.
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).ctx("rootfs")?;
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .ok_or("no busybox (apt-get install busybox-static)")?;
        std::fs::copy(busybox, rootfs.join("bin/busybox")).ctx("copying busybox")?;
        for applet in ["sh", "ping", "ip", "true"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .ctx("applet link")?;
        }

        let ns_names = std::mem::take(&mut guard.ns_names);
        guard.armed = false;
        Ok(Lab {
            tag,
            ns_names,
            node,
            peer,
            peer_place,
            peer_att,
            peer_key,
            dir,
        })
    }

    /// libcontainer's state root (`--root` of the youki CLI).
    fn state_root(&self) -> PathBuf {
        self.dir.join("youki")
    }

    /// Where wg-oci keeps records (`stateDir`).
    fn record_dir(&self) -> PathBuf {
        self.dir.join("wg-oci")
    }

    fn peer_device(&self) -> Res<WgDevice> {
        self.peer_place
            .device(&self.peer_att)
            .ctx("the peer's device")
    }

    /// The container's configuration: wg-cni's schema. No private key: one
    /// is generated for the container and its public key is in the record.
    fn config(&self, extra: &str) -> Res<Config> {
        let json = format!(
            r#"{{"address": "{CONTAINER_TUNNEL}/24", "stateDir": "{}",
                "peers": [{{"publicKey": "{}", "endpoint": "{PEER_ENDPOINT}",
                            "allowedIPs": ["{PEER_TUNNEL}/32"]}}]{extra}}}"#,
            self.record_dir().display(),
            self.peer_key.public_key().to_base64(),
        );
        Config::parse(json.as_bytes()).ctx("configuration")
    }

    /// Write a bundle whose process runs `script` with busybox `sh`.
    fn bundle(&self, id: &str, script: &str) -> Res<PathBuf> {
        let bundle = self.dir.join("bundles").join(id);
        std::fs::create_dir_all(&bundle).ctx("bundle directory")?;
        let caps = ["CAP_NET_ADMIN", "CAP_NET_RAW"];
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": self.dir.join("rootfs"), "readonly": true},
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["/bin/sh", "-c", script],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "noNewPrivileges": true,
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}
            },
            "hostname": id,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "nodev"]}
            ],
            "linux": {
                // A cgroup of its own, named after the container.
                "cgroupsPath": format!("/{id}"),
                // A NEW network namespace (no "path"): wg0 will be its only
                // way out. No hooks.
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}
                ]
            }
        });
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec).ctx("config.json")?,
        )
        .ctx("writing config.json")?;
        Ok(bundle)
    }

    /// What is left of container `id` whose interface was born `birth`.
    fn leftovers(&self, id: &str, birth: &str) -> Vec<String> {
        let mut left = Vec::new();
        match Rtnl::open(&self.node).and_then(|r| r.links()) {
            Ok(links) => {
                for l in links {
                    if l.name == birth || l.name.starts_with("wgo") {
                        left.push(format!("link {} in the node", l.name));
                    }
                }
            }
            Err(e) => left.push(format!("cannot list the node's links: {e}")),
        }
        let sock = Path::new(wg_netns::DEFAULT_SOCKET_DIR).join(format!("{birth}.sock"));
        if sock.exists() {
            left.push(format!("socket {}", sock.display()));
        }
        for pid in processes_mentioning(birth) {
            left.push(format!("daemon pid {pid}"));
        }
        match RecordStore::new(self.record_dir()).path(id) {
            Ok(p) if p.exists() => left.push(format!("record {}", p.display())),
            Ok(_) => {}
            Err(e) => left.push(format!("record path: {e}")),
        }
        for cg in cgroup_dirs(id) {
            left.push(format!("cgroup {}", cg.display()));
        }
        let state = self.state_root().join(id);
        if state.exists() {
            left.push(format!("container state {}", state.display()));
        }
        left
    }
}

/// A lab under construction: what `Lab::new` made so far.
struct LabParts {
    ns_names: Vec<String>,
    dir: PathBuf,
    armed: bool,
}

impl Drop for LabParts {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        remove_namespaces(&self.ns_names);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self
            .peer_place
            .detach(&self.peer_att.name, &self.peer_att.birth_name);
        remove_namespaces(&self.ns_names);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Delete every link but `lo` (a userspace daemon born in a namespace keeps
/// it alive until its interface goes), then unpin the namespaces.
fn remove_namespaces(names: &[String]) {
    for name in names {
        if let Ok(rtnl) = Netns::from_name(name).and_then(|ns| Rtnl::open(&ns)) {
            for l in rtnl.links().unwrap_or_default() {
                if l.name != "lo" {
                    let _ = rtnl.delete_link(l.index);
                }
            }
        }
        let _ = Netns::remove_named(name);
    }
}

/// PIDs whose command line mentions `word` (a daemon serving a birth name).
fn processes_mentioning(word: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == word.as_bytes()))
        })
        .collect()
}

/// Cgroup directories named after container `id` (v1 hierarchies and the
/// unified one).
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(id))
        .chain(std::iter::once(Path::new("/sys/fs/cgroup").join(id)))
        .filter(|p| p.is_dir())
        .collect()
}

fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

// ---------------------------------------------------------------------------
// Guards for what a container run makes.

/// A created container, killed and deleted on drop unless `delete` ran.
struct ContainerGuard(Option<Container>);

impl ContainerGuard {
    fn get(&mut self) -> &mut Container {
        self.0.as_mut().expect("not yet deleted")
    }

    fn delete(mut self) -> Res<()> {
        let mut c = self.0.take().expect("not yet deleted");
        c.delete(true).ctx("deleting the container")
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            if let Some(pid) = c.pid() {
                // Reap our child if it is already gone, so delete sees it stopped.
                if let Some(pid) = Pid::from_raw(pid.as_raw()) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                    let _ = wait_exit(pid, Duration::from_secs(5));
                }
            }
            if let Err(e) = c.delete(true) {
                eprintln!("# cleanup: deleting container {}: {e}", c.id());
            }
        }
    }
}

/// An attachment, detached (and its record removed) on drop unless
/// `detach` ran. Must be dropped in the namespace attach was called from.
struct AttachGuard {
    record: Option<Record>,
    store: RecordStore,
}

impl AttachGuard {
    fn detach(mut self) -> Res<bool> {
        let record = self.record.take().expect("attached");
        let removed = wg_oci::detach(&record).ctx("detach")?;
        self.store
            .remove(&record.container_id)
            .ctx("removing the record")?;
        Ok(removed)
    }
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            if let Err(e) = wg_oci::detach(&record) {
                eprintln!("# cleanup: {e}");
            }
            let _ = self.store.remove(&record.container_id);
        }
    }
}

/// Wait for our child `pid` (the container's init: libcontainer clones it
/// as a sibling of its intermediate process, so it is our child) to exit.
/// `Ok(None)` on timeout.
fn wait_exit(pid: Pid, within: Duration) -> Res<Option<rustix::process::WaitStatus>> {
    let end = Instant::now() + within;
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG).ctx("waitpid")? {
            Some((_, status)) => return Ok(Some(status)),
            None if Instant::now() > end => return Ok(None),
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn describe(status: rustix::process::WaitStatus) -> String {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (_, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("wait status {:#x}", status.as_raw()),
    }
}

// ---------------------------------------------------------------------------
// One container, the way a runtime does it.

/// What to do between create and start.
enum Mode<'a> {
    /// No WireGuard: the baseline for timings.
    Plain,
    /// `wg_oci::attach` with this configuration.
    Attach(&'a Config),
    /// Attach, then panic before start (the guards must clean up).
    PanicAfterAttach(&'a Config),
}

#[derive(Default, Debug, Clone)]
struct Timings {
    create: Duration,
    attach: Duration,
    start: Duration,
    wait: Duration,
    detach: Duration,
    delete: Duration,
}

struct Outcome {
    timings: Timings,
    status: String,
    exit_ok: bool,
    /// The attach's record (birth name, public key), if attached.
    record: Option<Record>,
    /// The peer's rx bytes from the container, before start and after exit.
    peer_rx: Option<(u64, u64)>,
    detached: bool,
    /// What existed while the container ran (so that "nothing left" is
    /// checked against things that were there).
    existed: Vec<String>,
}

/// Create container `id` running `script`, do `mode` between create and
/// start, start it, wait for it, detach, delete. Runs on a thread in the
/// node namespace (the runtime's): the interface is born there.
fn run_container(lab: &Lab, id: &str, script: &str, mode: Mode) -> Res<Outcome> {
    let bundle = lab.bundle(id, script)?;
    let _bundle_dir = DirGuard(bundle.clone());
    let mut t = Timings::default();

    // 1. Create: the container's init waits, in its new namespaces, for start.
    let t0 = Instant::now();
    let container = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(lab.state_root())
        .ctx("state root")?
        .validate_id()
        .ctx("container id")?
        .as_init(&bundle)
        .with_systemd(false)
        .with_detach(true)
        .with_no_pivot(no_pivot())
        .build()
        .ctx("creating the container")?;
    t.create = t0.elapsed();
    let mut container = ContainerGuard(Some(container));
    let raw_pid = container
        .get()
        .pid()
        .ok_or("created container has no pid")?
        .as_raw();
    let pid = Pid::from_raw(raw_pid).ok_or("pid 0")?;

    // 2. Between create and start: the container's WireGuard, one call.
    let mut attached = None;
    let mut peer_rx = None;
    if let Mode::Attach(config) | Mode::PanicAfterAttach(config) = mode {
        let t1 = Instant::now();
        let record = wg_oci::attach(id, Target::Pid(raw_pid as u32), config).ctx("attach")?;
        t.attach = t1.elapsed();
        let store = RecordStore::new(config.state_dir());
        let guard = AttachGuard {
            record: Some(record.clone()),
            store,
        };
        // Optional: keep the record so a restarted runtime can detach.
        guard.store.save(&record).ctx("saving the record")?;
        if let Mode::PanicAfterAttach(_) = mode {
            panic!("injected panic between attach and start");
        }
        // Tell the peer the container's (generated) public key.
        let key: PublicKey = record.public_key.parse().ctx("record's public key")?;
        let peer = lab.peer_device()?;
        peer.set(&DeviceConfig::new().peer(
            PeerConfig::new(key).allowed_ip(format!("{CONTAINER_TUNNEL}/32").parse().ctx("ip")?),
        ))
        .ctx("adding the container to the peer")?;
        let rx = peer
            .stats()
            .ctx("peer stats")?
            .peer(&key)
            .map_or(0, |p| p.rx_bytes);
        peer_rx = Some((rx, rx));
        attached = Some((guard, key));
    }

    let mut existed = Vec::new();
    if let Some((guard, _)) = &attached {
        let birth = guard
            .record
            .as_ref()
            .map(|r| r.attachment.birth_name.to_string());
        existed = lab.leftovers(id, &birth.unwrap_or_default());
    }

    // 3. Start, wait.
    let t2 = Instant::now();
    container.get().start().ctx("starting the container")?;
    t.start = t2.elapsed();
    let t3 = Instant::now();
    let status = wait_exit(pid, Duration::from_secs(60))?;
    t.wait = t3.elapsed();
    let (status, exit_ok) = match status {
        Some(s) => (describe(s), s.exit_status() == Some(0)),
        None => ("still running after 60 s".to_string(), false),
    };

    // 4. Counters, detach, delete.
    let mut record = None;
    let mut detached = false;
    if let Some((guard, key)) = attached {
        let peer = lab.peer_device()?;
        let after = peer
            .stats()
            .ctx("peer stats")?
            .peer(&key)
            .map_or(0, |p| p.rx_bytes);
        peer_rx = peer_rx.map(|(before, _)| (before, after));
        let _ = peer.set(&DeviceConfig::new().peer(PeerConfig::removal(key)));
        record = guard.record.clone();
        let t4 = Instant::now();
        detached = guard.detach()?;
        t.detach = t4.elapsed();
    }
    let t5 = Instant::now();
    container.delete()?;
    t.delete = t5.elapsed();
    Ok(Outcome {
        timings: t,
        status,
        exit_ok,
        record,
        peer_rx,
        detached,
        existed,
    })
}

/// `--no-pivot`: pivot_root(2) cannot leave an initramfs (the qemu guest
/// runs from one): libcontainer then moves the root instead (runc's
/// `--no-pivot`).
static NO_PIVOT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn no_pivot() -> bool {
    NO_PIVOT.load(std::sync::atomic::Ordering::Relaxed)
}

/// A directory removed on drop.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Scenarios and reporting.

#[derive(Default)]
struct Report {
    n: u32,
    failed: u32,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl Display) {
        self.n += 1;
        if ok {
            println!("ok {} - {what}", self.n);
        } else {
            self.failed += 1;
            println!("not ok {} - {what}", self.n);
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The ping scenario: the container reaches the peer through the tunnel.
fn scenario_ping(lab: &Lab, report: &mut Report) -> Res<()> {
    let id = format!("wglc-{}-ping", lab.tag);
    let config = lab.config("")?;
    // busybox: bring lo up, then ping the peer's WireGuard address through
    // wg0 (the only route out), retrying while the first handshake runs.
    let script = format!(
        "ip link set lo up || exit 2; i=0; while [ $i -lt 10 ]; do \
         ping -c 1 -W 2 {PEER_TUNNEL} && exit 0; i=$((i+1)); done; exit 1"
    );
    let t = Instant::now();
    let out = lab
        .node
        .run(|| run_container(lab, &id, &script, Mode::Attach(&config)))
        .ctx("node thread")?;
    let total = t.elapsed();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            report.check(false, format!("ping scenario: {e}"));
            let birth = wg_oci::birth_name("oci", &id, &IfName::new("wg0").ctx("name")?);
            report_leftovers(lab, report, &id, birth.as_str(), "after the failed run");
            return Ok(());
        }
    };
    let record = out.record.as_ref().ok_or("no record")?;
    let birth = record.attachment.birth_name.to_string();
    let tm = &out.timings;
    report.check(
        true,
        format!(
            "create {} -> attach {} (wg0 born {birth}, key {}) -> start {}",
            ms(tm.create),
            ms(tm.attach),
            record.public_key,
            ms(tm.start)
        ),
    );
    report.check(
        out.exit_ok,
        format!(
            "the container pinged {PEER_TUNNEL} through the tunnel: {} after {}",
            out.status,
            ms(tm.wait)
        ),
    );
    let (before, after) = out.peer_rx.unwrap_or_default();
    report.check(
        after > before,
        format!(
            "the peer received {} bytes from the container (wg-netns stats)",
            after.saturating_sub(before)
        ),
    );
    // Whether detach still found something depends on timing: the
    // container's exit destroys its namespace and with it wg0, and the
    // userspace daemon then exits by itself; detach stops it if not.
    report.check(
        true,
        format!(
            "detach {} ({}), delete {}",
            if out.detached {
                "stopped the daemon"
            } else {
                "found it already gone with the container's namespace"
            },
            ms(tm.detach),
            ms(tm.delete)
        ),
    );
    // What must have existed: a record, the cgroups, the state directory;
    // with userspace WireGuard also the daemon and its control socket.
    let mut expected = vec!["record ", "cgroup ", "container state "];
    if record.attachment.backend == wg_netns::BackendKind::Userspace {
        expected.extend(["socket ", "daemon pid "]);
    }
    report.check(
        expected
            .iter()
            .all(|e| out.existed.iter().any(|x| x.starts_with(e))),
        format!(
            "while it ran ({:?} backend): {}",
            record.attachment.backend,
            out.existed.join(", ")
        ),
    );
    report_leftovers(lab, report, &id, &birth, "after detach and delete");
    println!("# ping scenario total {}", ms(total));
    Ok(())
}

fn report_leftovers(lab: &Lab, report: &mut Report, id: &str, birth: &str, when: &str) {
    let mut left = Vec::new();
    let clean = eventually(Duration::from_secs(3), || {
        left = lab.leftovers(id, birth);
        left.is_empty()
    });
    report.check(
        clean,
        format!(
            "nothing left {when} (link, daemon, socket, record, cgroup, state dir){}",
            if clean {
                String::new()
            } else {
                format!(": {}", left.join(", "))
            }
        ),
    );
}

/// A late attach failure (a route through an unreachable gateway, after the
/// daemon started): the error comes back, the runtime's guard deletes the
/// container, nothing is left.
fn scenario_attach_fails(lab: &Lab, report: &mut Report) -> Res<()> {
    let id = format!("wglc-{}-fail", lab.tag);
    let config = lab.config(r#", "routes": [{"dst": "10.99.0.0/16", "gw": "10.55.55.55"}]"#)?;
    let out = lab
        .node
        .run(|| run_container(lab, &id, "true", Mode::Attach(&config)))
        .ctx("node thread")?;
    match out {
        Err(e) => report.check(
            e.starts_with("attach: ") && e.contains("RTM_NEWROUTE"),
            format!("a late attach failure is returned: {e}"),
        ),
        Ok(_) => report.check(false, "an attach through an unreachable gateway succeeded"),
    }
    let birth = wg_oci::birth_name("oci", &id, &IfName::new("wg0").ctx("name")?);
    report_leftovers(lab, report, &id, birth.as_str(), "after the failed attach");
    Ok(())
}

/// A panic between attach and start: the guards detach and delete.
fn scenario_panic(lab: &Lab, report: &mut Report) -> Res<()> {
    let id = format!("wglc-{}-panic", lab.tag);
    let config = lab.config("")?;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = lab
        .node
        .run(|| run_container(lab, &id, "true", Mode::PanicAfterAttach(&config)));
    std::panic::set_hook(hook);
    report.check(
        matches!(out, Err(wg_netns::Error::NetnsThreadPanicked(_))),
        "a panic between attach and start unwinds through the guards",
    );
    let birth = wg_oci::birth_name("oci", &id, &IfName::new("wg0").ctx("name")?);
    report_leftovers(lab, report, &id, birth.as_str(), "after the panic");
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `n` containers each way (no attach; attach with the UDP socket in the
/// node, the default; attach with `socketNamespace: "container"`), in
/// rotating order; medians.
fn bench(lab: &Lab, report: &mut Report, n: usize) -> Res<()> {
    let host = lab.config("")?;
    let in_ctr = lab.config(r#", "socketNamespace": "container""#)?;
    let configs = [None, Some(&host), Some(&in_ctr)];
    let suffix = ["p", "h", "c"];
    let mut runs: [Vec<Timings>; 3] = Default::default();
    for i in 0..n {
        for k in 0..3 {
            let m = (i + k) % 3;
            let id = format!("wglc-{}-b{i}{}", lab.tag, suffix[m]);
            let mode = configs[m].map_or(Mode::Plain, Mode::Attach);
            // The kernel tears a network namespace down asynchronously, and
            // creating the next one waits for it: let the previous
            // container's go first, so each create is timed alone.
            std::thread::sleep(Duration::from_millis(100));
            let out = lab
                .node
                .run(|| run_container(lab, &id, "true", mode))
                .ctx("node thread")??;
            if !out.exit_ok {
                return Err(format!("bench container {id}: {}", out.status));
            }
            runs[m].push(out.timings);
        }
    }
    let med = |v: &[Timings], f: fn(&Timings) -> Duration| median(v.iter().map(f).collect());
    let cs_plain = med(&runs[0], |t| t.create + t.start);
    println!("# bench: {n} containers each way, process `true`, medians");
    println!(
        "#   no attach:               create {} + start {} = create+start {}; delete {}",
        ms(med(&runs[0], |t| t.create)),
        ms(med(&runs[0], |t| t.start)),
        ms(cs_plain),
        ms(med(&runs[0], |t| t.delete)),
    );
    for (m, label) in [
        (1, "attach, socket in node:  "),
        (2, "attach, socket container:"),
    ] {
        let attach = med(&runs[m], |t| t.attach);
        let cas = med(&runs[m], |t| t.create + t.attach + t.start);
        println!(
            "#   {label} create {} + attach {} + start {} = {}; detach {}, delete {}",
            ms(med(&runs[m], |t| t.create)),
            ms(attach),
            ms(med(&runs[m], |t| t.start)),
            ms(cas),
            ms(med(&runs[m], |t| t.detach)),
            ms(med(&runs[m], |t| t.delete)),
        );
        println!(
            "#     attach / create+start = {:.2}; (create+attach+start) / create+start = {:.2}",
            attach.as_secs_f64() / cs_plain.as_secs_f64(),
            cas.as_secs_f64() / cs_plain.as_secs_f64(),
        );
    }
    report.check(
        true,
        format!("bench: 3 x {n} containers ran and were removed"),
    );
    let mut left = Vec::new();
    for i in 0..n {
        for s in suffix {
            let id = format!("wglc-{}-b{i}{s}", lab.tag);
            let birth = wg_oci::birth_name("oci", &id, &IfName::new("wg0").ctx("name")?);
            left.extend(lab.leftovers(&id, birth.as_str()));
        }
    }
    report.check(
        left.is_empty(),
        format!("nothing left after the bench {left:?}"),
    );
    Ok(())
}

fn main() {
    let mut bench_n = 0usize;
    let mut failures = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {
                bench_n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--no-failures" => failures = false,
            "--no-pivot" => NO_PIVOT.store(true, std::sync::atomic::Ordering::Relaxed),
            _ => usage(),
        }
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("libcontainer_wireguard: needs root (namespaces, containers)");
        std::process::exit(2);
    }
    let mut report = Report::default();
    let t = Instant::now();
    let result = Lab::new().and_then(|lab| {
        println!(
            "# lab: {} (veth {NODE_UNDERLAY}) <-> {} (veth {PEER_UNDERLAY}, wg0 {PEER_TUNNEL}) in {}",
            lab.node.path().display(),
            lab.peer.path().display(),
            ms(t.elapsed())
        );
        scenario_ping(&lab, &mut report)?;
        if failures {
            scenario_attach_fails(&lab, &mut report)?;
            scenario_panic(&lab, &mut report)?;
        }
        if bench_n > 0 {
            bench(&lab, &mut report, bench_n)?;
        }
        let names = lab.ns_names.clone();
        drop(lab);
        let left: Vec<_> = names
            .iter()
            .filter(|n| Path::new(wg_netns::NETNS_RUN_DIR).join(n).exists())
            .collect();
        report.check(left.is_empty(), format!("lab namespaces removed {left:?}"));
        Ok(())
    });
    if let Err(e) = result {
        report.check(false, e);
    }
    println!(
        "# {} passed, {} failed",
        report.n - report.failed,
        report.failed
    );
    std::process::exit(if report.failed == 0 { 0 } else { 1 });
}

fn usage() -> ! {
    eprintln!("usage: libcontainer_wireguard [--bench N] [--no-failures] [--no-pivot]");
    std::process::exit(2);
}
