//! Shared fixtures for the integration tests: uniquely named namespaces joined
//! by veth, removed on drop (also when a test panics), and the backend under
//! test.
//!
//! Tests need root, `ip` (iproute2) and a WireGuard backend. Without them they
//! print `SKIP ...` and pass, unless `WG_NETNS_REQUIRE_ALL=1` (set by
//! `.ci/run`), which turns every skip into a failure.
//!
//! The backend comes from `WG_NETNS_TEST_BACKEND` (`kernel`, `userspace`,
//! default: detect). Network safety: every address lives inside namespaces
//! created here; no route points at the machine's real interfaces.

#![deny(missing_docs)]

pub mod cluster;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use wg_netns::{Backend, IfName, Netns};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short per-process, per-call unique tag, e.g. `3f2a7`: it fits into
/// interface names next to a 4-character prefix.
pub fn tag() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{:x}{:x}", std::process::id() % 0xfffff, n)
}

/// True when `WG_NETNS_REQUIRE_ALL=1`: a missing tool or privilege fails the test instead of skipping it.
pub fn require_all() -> bool {
    std::env::var("WG_NETNS_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Returns the backend to test with, or `None` (after printing why) when the
/// environment cannot run privileged tests.
pub fn environment(test: &str) -> Option<Backend> {
    let skip = |why: &str| {
        if require_all() {
            panic!("{test}: required but cannot run: {why}");
        }
        eprintln!("SKIP {test}: {why}");
        None
    };
    if !rustix::process::geteuid().is_root() {
        return skip("needs root (network namespaces)");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return skip("`ip` (iproute2) is not installed");
    }
    let choice = std::env::var("WG_NETNS_TEST_BACKEND").unwrap_or_default();
    match Backend::from_choice(&choice) {
        Ok(Backend::Userspace(u)) if u.resolve().is_none() => {
            skip(&format!("{} is not installed", u.program.display()))
        }
        Ok(Backend::Kernel) if !Backend::kernel_available() => skip("the kernel has no WireGuard"),
        Ok(b) => Some(b),
        Err(e) => skip(&e.to_string()),
    }
}

/// Run a command (`args[0]` with the rest), whatever its exit status.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

/// Run a command that must succeed; its stdout.
pub fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace created for one test, deleted on drop.
pub struct TestNs {
    /// The namespace's name under /var/run/netns.
    pub name: String,
    /// An open handle on it.
    pub ns: Netns,
}

impl TestNs {
    /// A new namespace named `wgnt-<pid><n>-<role>`, with `lo` up.
    pub fn new(role: &str) -> TestNs {
        Self::with_prefix("wgnt", role)
    }

    /// A new namespace named `<prefix>-<pid><n>-<role>`, with `lo` up: for
    /// suites whose leftovers the leak check looks for under a prefix of
    /// their own.
    pub fn with_prefix(prefix: &str, role: &str) -> TestNs {
        let name = format!("{prefix}-{}-{role}", tag());
        must(&["ip", "netns", "add", &name]);
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        let ns = Netns::from_name(&name).expect("open test namespace");
        TestNs { name, ns }
    }

    /// Run a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Ping `addr` from this namespace, retrying for up to `within`
    /// (a lost first handshake costs WireGuard 5 s).
    pub fn ping(&self, addr: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let out = self.exec(&["ping", "-c", "1", "-W", "1", addr]);
            if out.status.success() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// UDP ports with a socket bound in this namespace
    /// (`/proc/thread-self/net/udp{,6}` read from a thread inside it).
    pub fn udp_ports(&self) -> Vec<u16> {
        self.ns
            .run(|| {
                let mut ports = Vec::new();
                for f in ["/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"] {
                    let Ok(text) = std::fs::read_to_string(f) else {
                        continue;
                    };
                    for line in text.lines().skip(1) {
                        let local = line.split_whitespace().nth(1).unwrap_or_default();
                        if let Some((_, port)) = local.rsplit_once(':') {
                            if let Ok(p) = u16::from_str_radix(port, 16) {
                                ports.push(p);
                            }
                        }
                    }
                }
                ports
            })
            .expect("read udp sockets")
    }

    /// The names of the links in the namespace (read through netlink).
    pub fn link_names(&self) -> Vec<String> {
        wg_netns::Rtnl::open(&self.ns)
            .expect("rtnl")
            .links()
            .expect("links")
            .into_iter()
            .map(|l| l.name)
            .collect()
    }
}

impl TestNs {
    /// Let go of the namespace as a runtime does after a pod is removed:
    /// unmount it and close this handle, without deleting its links. The
    /// namespace then dies with its last user (a userspace daemon born
    /// inside keeps it alive).
    pub fn release(self) {
        let this = std::mem::ManuallyDrop::new(self);
        let _ = run(&["ip", "netns", "del", &this.name]);
        // SAFETY: `this` is never used or dropped again; each field is read
        // out exactly once and dropped here.
        let (name, ns) = unsafe { (std::ptr::read(&this.name), std::ptr::read(&this.ns)) };
        drop((name, ns));
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        // A userspace daemon born here keeps the namespace alive through its
        // own membership, so deleting the namespace alone would leak it:
        // delete every link first; each daemon exits when its TUN goes.
        if let Ok(rtnl) = wg_netns::Rtnl::open(&self.ns) {
            for l in rtnl.links().unwrap_or_default() {
                if l.name != "lo" {
                    let _ = rtnl.delete_link(l.index);
                }
            }
        }
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// Two namespaces joined by a veth pair: `a` has `10.250.X.1/24`, `b` has
/// `10.250.X.2/24` (X unique per pair within the process).
pub struct Wire {
    /// The `a` end's address (no prefix).
    pub a_ip: String,
    /// The `b` end's address (no prefix).
    pub b_ip: String,
}

/// Join `a` and `b` with a veth pair, addressed and up.
pub fn wire(a: &TestNs, b: &TestNs) -> Wire {
    let t = tag();
    let (va, vb) = (format!("va{t}"), format!("vb{t}"));
    let x = COUNTER.fetch_add(1, Ordering::SeqCst) % 250 + 1;
    let (a_ip, b_ip) = (format!("10.250.{x}.1"), format!("10.250.{x}.2"));
    must(&[
        "ip", "-n", &a.name, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns",
        &b.name,
    ]);
    must(&[
        "ip",
        "-n",
        &a.name,
        "addr",
        "add",
        &format!("{a_ip}/24"),
        "dev",
        &va,
    ]);
    must(&[
        "ip",
        "-n",
        &b.name,
        "addr",
        "add",
        &format!("{b_ip}/24"),
        "dev",
        &vb,
    ]);
    must(&["ip", "-n", &a.name, "link", "set", &va, "up"]);
    must(&["ip", "-n", &b.name, "link", "set", &vb, "up"]);
    Wire { a_ip, b_ip }
}

/// A unique interface name with a 4-character prefix.
pub fn ifname(prefix: &str) -> IfName {
    IfName::new(format!("{prefix}{}", tag())).expect("ifname")
}

/// Write a key file as `wg` wants it: `bytes` (a base64 key), mode 0600
/// from its creation.
pub fn write_key_file(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("key file");
    f.write_all(bytes).expect("write key");
}

/// Wait until `cond` holds, for at most `within`.
pub fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `wg show NAME dump`, run inside `ns` for kernel devices (userspace devices
/// are found by their socket name from anywhere).
pub fn wg_dump(ns: &TestNs, name: &str) -> Vec<Vec<String>> {
    let out = ns.exec(&["wg", "show", name, "dump"]);
    assert!(
        out.status.success(),
        "wg show {name} dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// True when the `wg` tool is installed.
pub fn has_wg_tool() -> bool {
    Command::new("wg")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Removes what a test's device may have left at its birthplace (link,
/// userspace daemon, socket) when dropped, also after a panic. Declare it after
/// the `TestNs` it lives in so it runs first.
pub struct BirthGuard<'a> {
    /// The birthplace.
    pub ns: &'a TestNs,
    /// The device's birth name.
    pub birth: IfName,
    /// The backend that made it.
    pub backend: Backend,
}

impl Drop for BirthGuard<'_> {
    fn drop(&mut self) {
        let _ = wg_netns::cleanup_birth(&self.ns.ns, &self.birth, &self.backend);
    }
}

/// Print `SKIP test: why` (the caller then returns and the test passes),
/// or panic under `WG_NETNS_REQUIRE_ALL=1`, where whatever a test needs
/// must be there.
pub fn skip(test: &str, why: &str) {
    assert!(!require_all(), "{test}: required but cannot run: {why}");
    eprintln!("SKIP {test}: {why}");
}

/// The runnable file `program` names: itself when it is a path, else the
/// first executable file of that name in `PATH`.
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return runnable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| runnable(p))
}

/// What keeps a privileged test from running here: not root, or some of
/// `programs` (names looked up in `PATH`, or paths) missing. `None` when
/// it can run.
pub fn missing(programs: &[&str]) -> Option<String> {
    let mut why = Vec::new();
    if !rustix::process::geteuid().is_root() {
        why.push("needs root (network namespaces)".to_string());
    }
    let absent: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| find_program(p).is_none())
        .collect();
    if !absent.is_empty() {
        why.push(format!("not installed: {}", absent.join(", ")));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// [`skip`] unless root and every one of `programs` is there: true when
/// the test must return (it fails instead under `WG_NETNS_REQUIRE_ALL=1`).
pub fn unavailable(test: &str, programs: &[&str]) -> bool {
    match missing(programs) {
        Some(why) => {
            skip(test, &why);
            true
        }
        None => false,
    }
}

impl TestNs {
    /// The namespace's inode: what `/proc/PID/ns/net` of a process inside
    /// it links to (`net:[INODE]`); `None` once it is unmounted.
    pub fn inode(&self) -> Option<u64> {
        std::fs::metadata(format!("/var/run/netns/{}", self.name))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    }
}

/// A running process, as `/proc` shows it.
#[derive(Debug, Clone)]
pub struct Process {
    /// Its PID.
    pub pid: u32,
    /// Its command line.
    pub args: Vec<String>,
    /// The inode of its network namespace.
    pub netns: Option<u64>,
}

/// The live (not zombie) processes whose command name (`comm`) is
/// `program`, e.g. every `wireguard-go`; the caller picks its own by their
/// arguments or namespace.
pub fn processes(program: &str) -> Vec<Process> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let base = e.path();
        let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
        if comm.trim_end() != program || !alive(pid) {
            continue;
        }
        let args = std::fs::read(base.join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let netns = std::fs::metadata(base.join("ns/net"))
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        found.push(Process { pid, args, netns });
    }
    found
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Stop a process the test started (itself, or through the code under
/// test in the test's own namespaces): SIGTERM, then SIGKILL when it is
/// still alive after `grace`. Returns once it is gone.
pub fn terminate(pid: u32, grace: Duration) {
    use rustix::process::{kill_process, Pid, Signal};
    let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    let _ = kill_process(p, Signal::TERM);
    if !eventually(grace, || !alive(pid)) {
        let _ = kill_process(p, Signal::KILL);
        eventually(Duration::from_secs(2), || !alive(pid));
    }
}

/// A private directory (mode 0700) for one test, `<tmp>/<prefix>-<tag>`,
/// removed on drop, also after a panic, with anything still mounted under
/// it (a runtime's shm, say) unmounted first.
pub struct WorkDir {
    /// The directory.
    pub path: std::path::PathBuf,
}

impl WorkDir {
    /// A new, empty directory.
    pub fn new(prefix: &str) -> WorkDir {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!("{prefix}-{}", tag()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        WorkDir { path }
    }

    /// A path inside it.
    pub fn join(&self, p: impl AsRef<std::path::Path>) -> std::path::PathBuf {
        self.path.join(p)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| std::path::Path::new(m).starts_with(&self.path))
            .collect();
        // Deepest first.
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `ip` with `args` split at whitespace (names, addresses, numbers: none
/// may hold a space), which must succeed; its stdout.
pub fn ip(args: &str) -> String {
    let mut full = vec!["ip"];
    full.extend(args.split_whitespace());
    must(&full)
}

/// A wireguard-go device the test runs itself (`wireguard-go -f NAME`
/// inside a namespace, a child of the test), e.g. the WireGuard peer of a
/// suite. Dropped (also after a panic), its link is deleted, the process
/// stopped by its PID and its control socket removed. Declare it after the
/// [`TestNs`] it runs in, so it drops first.
pub struct WireguardGo {
    /// The device's (and its control socket's) name.
    pub name: String,
    ns: String,
    child: std::process::Child,
}

impl WireguardGo {
    /// Start it in `ns` and wait (up to 5 s) for its control socket.
    pub fn start(ns: &TestNs, name: &str) -> WireguardGo {
        let child = ns
            .ns
            .run(|| {
                Command::new("wireguard-go")
                    .args(["-f", name])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
            })
            .expect("namespace thread")
            .expect("start wireguard-go");
        let d = WireguardGo {
            name: name.to_string(),
            ns: ns.name.clone(),
            child,
        };
        let sock = d.socket();
        assert!(
            eventually(Duration::from_secs(5), || sock.exists()),
            "wireguard-go {name} made no control socket"
        );
        d
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn socket(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/var/run/wireguard/{}.sock", self.name))
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        // It exits when its TUN goes; SIGTERM otherwise.
        let _ = run(&["ip", "-n", &self.ns, "link", "del", &self.name]);
        let child = &mut self.child;
        if !eventually(Duration::from_secs(2), || {
            child.try_wait().is_ok_and(|s| s.is_some())
        }) {
            terminate(child.id(), Duration::from_secs(2));
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.socket());
    }
}
