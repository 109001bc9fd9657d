//! Userspace WireGuard over the cross-platform UAPI
//! (<https://www.wireguard.com/xplatform/>): `set=1` / `get=1` exchanges on
//! the unix socket `/var/run/wireguard/NAME.sock`, and starting an
//! implementation (wireguard-go, boringtun, or `WG_USERSPACE_IMPLEMENTATION`).
//!
//! Requests and replies that carry keys live in zeroizing buffers. Nothing is
//! ever written to stdout: started daemons get `/dev/null` for stdio.
//!
//! Who starts a daemon is a seam: by default [`Userspace`] spawns it as a
//! child of the calling process ([`Userspace::launch`]); with
//! [`Userspace::with_launcher`] a [`Launcher`] starts it instead (for
//! example another process outside the caller's container, so the daemon
//! outlives the caller), and the caller only waits for its socket.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use zeroize::Zeroizing;

use crate::device::{epoch_time, Device, DeviceConfig, Peer};
use crate::error::{Error, Result};
use crate::key::{PresharedKey, PrivateKey, PublicKey, KEY_LEN};

/// Where userspace implementations put their control sockets.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/wireguard";

/// Interval between checks while waiting for a daemon's socket to answer or
/// go away: each check is one connect(2), so polling finely is cheap and
/// notices readiness within a millisecond (an exponential back-off was seen
/// to add 5-15 ms to a 9 ms wireguard-go start).
pub(crate) const POLL: Duration = Duration::from_millis(1);

/// How long a UAPI exchange may take before it is abandoned, unless the
/// [`Userspace`] says otherwise ([`Userspace::io_timeout`]).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

fn hex(bytes: &[u8], out: &mut String) {
    const H: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(H[(b >> 4) as usize] as char);
        out.push(H[(b & 15) as usize] as char);
    }
}

fn unhex(s: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let s = s.as_bytes();
    if s.len() != KEY_LEN * 2 {
        return None;
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    for i in 0..KEY_LEN {
        out[i] = (val(s[2 * i])? << 4) | val(s[2 * i + 1])?;
    }
    Some(out)
}

/// Encode a `set=1` request (including the terminating blank line).
pub(crate) fn encode_set(cfg: &DeviceConfig) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(64 + cfg.peers.len() * 160));
    s.push_str("set=1\n");
    if let Some(k) = &cfg.private_key {
        s.push_str("private_key=");
        hex(k.as_bytes(), &mut s);
        s.push('\n');
    }
    if let Some(p) = cfg.listen_port {
        let _ = writeln!(s, "listen_port={p}");
    }
    if let Some(m) = cfg.fwmark {
        let _ = writeln!(s, "fwmark={m}");
    }
    if cfg.replace_peers {
        s.push_str("replace_peers=true\n");
    }
    for p in &cfg.peers {
        s.push_str("public_key=");
        hex(p.public_key.as_bytes(), &mut s);
        s.push('\n');
        if p.remove {
            s.push_str("remove=true\n");
            continue;
        }
        if p.update_only {
            s.push_str("update_only=true\n");
        }
        if let Some(k) = &p.preshared_key {
            s.push_str("preshared_key=");
            hex(k.as_bytes(), &mut s);
            s.push('\n');
        }
        if let Some(ep) = p.endpoint {
            let _ = writeln!(s, "endpoint={ep}");
        }
        if let Some(ka) = p.persistent_keepalive {
            let _ = writeln!(
                s,
                "persistent_keepalive_interval={}",
                ka.as_secs().min(65535)
            );
        }
        if p.replace_allowed_ips {
            s.push_str("replace_allowed_ips=true\n");
        }
        for net in &p.allowed_ips {
            let _ = writeln!(s, "allowed_ip={net}");
        }
    }
    s.push('\n');
    s
}

/// Parse a `get=1` reply (everything up to and including `errno=N`).
/// Unknown keys are ignored (implementations add their own).
pub(crate) fn parse_get(device: &str, reply: &str) -> Result<Device> {
    let bad = |reason: String| Error::Uapi {
        device: device.to_string(),
        reason,
    };
    let mut dev = Device::default();
    let mut errno = None;
    let mut hs_sec: Option<u64> = None;
    for line in reply.lines() {
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("malformed reply line of {} bytes", line.len())))?;
        let num = |what: &str| -> Result<u64> {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{what} is not a number: {v:?}")))
        };
        let in_peer = !dev.peers.is_empty();
        match k {
            "errno" => {
                errno = Some(v.parse::<i32>().map_err(|_| bad(format!("errno {v:?}")))?);
            }
            "private_key" if !in_peer => {
                let b = unhex(v).ok_or_else(|| bad("private key is not 64 hex digits".into()))?;
                let k = PrivateKey::from_bytes(*b);
                if !k.is_zero() {
                    dev.public_key = Some(k.public_key());
                    dev.private_key = Some(k);
                }
            }
            // boringtun reports the public key instead of the private one.
            "own_public_key" if !in_peer => {
                let b =
                    unhex(v).ok_or_else(|| bad("own public key is not 64 hex digits".into()))?;
                dev.public_key = Some(PublicKey::from_bytes(*b));
            }
            "listen_port" if !in_peer => dev.listen_port = num("listen_port")? as u16,
            "fwmark" if !in_peer => dev.fwmark = num("fwmark")? as u32,
            "public_key" => {
                let b =
                    unhex(v).ok_or_else(|| bad("peer public key is not 64 hex digits".into()))?;
                dev.peers.push(Peer::new(PublicKey::from_bytes(*b)));
                hs_sec = None;
            }
            _ => {
                let Some(p) = dev.peers.last_mut() else {
                    continue;
                };
                match k {
                    "preshared_key" => {
                        let b = unhex(v)
                            .ok_or_else(|| bad("preshared key is not 64 hex digits".into()))?;
                        let k = PresharedKey::from_bytes(*b);
                        p.preshared_key = (!k.is_zero()).then_some(k);
                    }
                    "endpoint" => {
                        p.endpoint = Some(
                            v.parse::<SocketAddr>()
                                .map_err(|_| bad(format!("endpoint {v:?}")))?,
                        );
                    }
                    "persistent_keepalive_interval" => {
                        let s = num("persistent_keepalive_interval")?;
                        p.persistent_keepalive = (s != 0).then(|| Duration::from_secs(s));
                    }
                    "allowed_ip" => {
                        p.allowed_ips.push(
                            v.parse::<IpNetwork>()
                                .map_err(|_| bad(format!("allowed_ip {v:?}")))?,
                        );
                    }
                    "rx_bytes" => p.rx_bytes = num("rx_bytes")?,
                    "tx_bytes" => p.tx_bytes = num("tx_bytes")?,
                    "last_handshake_time_sec" | "last_handshake_time_nsec" => {
                        let n = num(k)?;
                        let (s, nanos) = if k == "last_handshake_time_sec" {
                            hs_sec = Some(n);
                            (n, 0)
                        } else {
                            (hs_sec.unwrap_or(0), n)
                        };
                        p.last_handshake = if s == 0 {
                            None
                        } else {
                            Some(epoch_time(s, nanos).ok_or_else(|| {
                                bad(format!("handshake time {s}.{nanos} is out of range"))
                            })?)
                        };
                    }
                    _ => {}
                }
            }
        }
    }
    match errno {
        Some(0) => Ok(dev),
        Some(errno) => Err(Error::UapiErrno {
            device: device.to_string(),
            errno,
        }),
        None => Err(bad("reply has no errno line".into())),
    }
}

/// What starting a userspace daemon takes: the command line
/// [`Userspace::launch`] runs (`PROGRAM [args] [-f] NAME`), handed to a
/// [`Launcher`] in its parts so that one running elsewhere can run its own
/// copy of the program.
///
/// ```
/// use wg_netns::Userspace;
/// let cmd = Userspace::new("/usr/bin/wireguard-go").launch_command("wgb-1234");
/// assert!(cmd.foreground);
/// assert_eq!(cmd.argv(), ["-f", "wgb-1234"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LaunchCommand {
    /// The program as configured ([`Userspace::program`], not resolved
    /// against `PATH`): a launcher elsewhere may run another copy.
    pub program: PathBuf,
    /// Extra arguments placed before `-f` and the name
    /// ([`Userspace::args`]).
    pub args: Vec<String>,
    /// The interface (and control socket) name.
    pub name: String,
    /// Whether the daemon is to stay in the foreground (`-f`,
    /// [`Userspace::foreground`]).
    pub foreground: bool,
    /// Where the caller waits for the control socket `NAME.sock`
    /// ([`Userspace::socket_dir`]). wireguard-go always binds
    /// [`DEFAULT_SOCKET_DIR`]; a launcher in another mount namespace must
    /// make sure that is the directory the caller sees here.
    pub socket_dir: PathBuf,
}

impl LaunchCommand {
    /// The arguments after the program: [`LaunchCommand::args`], `-f` when
    /// [`LaunchCommand::foreground`], then the name.
    pub fn argv(&self) -> Vec<String> {
        let mut v = self.args.clone();
        if self.foreground {
            v.push("-f".to_string());
        }
        v.push(self.name.clone());
        v
    }
}

/// Starts userspace daemons on a [`Userspace`]'s behalf
/// ([`Userspace::with_launcher`]).
///
/// When a [`Userspace`] with a launcher creates a device
/// ([`crate::WgDevice::create`], [`crate::Birthplace::attach`]), it calls
/// [`Launcher::launch`] in the namespace the device is born in (inside
/// [`crate::Netns::run`]), after checking that no daemon of that name
/// answers and removing a stale socket, and then waits for the socket
/// [`LaunchCommand::socket_dir`]`/NAME.sock` to answer, up to
/// [`Userspace::start_timeout`]. The launcher only has to get the daemon
/// going: it is not asked for a process id, and a daemon that dies early is
/// noticed only by its socket never answering.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use wg_netns::uapi::{LaunchCommand, Launcher};
/// use wg_netns::Userspace;
///
/// /// Starts nothing; remembers what it was asked.
/// #[derive(Debug, Default)]
/// struct Recorder(Mutex<Vec<LaunchCommand>>);
///
/// impl Launcher for Recorder {
///     fn launch(&self, cmd: &LaunchCommand) -> std::io::Result<()> {
///         self.0.lock().unwrap().push(cmd.clone());
///         Err(std::io::Error::other("this launcher starts nothing"))
///     }
/// }
///
/// let u = Userspace::new("wireguard-go").with_launcher(Arc::new(Recorder::default()));
/// assert!(u.launcher().is_some());
/// ```
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// Start the daemon `cmd` describes and return once it is started (not
    /// once it is ready). An error fails the device's creation with
    /// [`Error::Spawn`], its message included.
    fn launch(&self, cmd: &LaunchCommand) -> std::io::Result<()>;
}

/// A userspace WireGuard implementation to start.
///
/// Two values are equal when their settings are and they have the same
/// launcher: none, or clones of the same `Arc` ([`Userspace::with_launcher`]).
///
/// ```
/// use wg_netns::Userspace;
/// let u = Userspace::new("wireguard-go");
/// assert_eq!(u.socket_path("wgb-1234").to_str(), Some("/var/run/wireguard/wgb-1234.sock"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Userspace {
    /// Program to run as `PROGRAM [args] NAME`; it must daemonize or stay in
    /// the foreground, either works.
    pub program: PathBuf,
    /// Extra arguments placed before the interface name.
    pub args: Vec<String>,
    /// Directory of the UAPI sockets.
    pub socket_dir: PathBuf,
    /// How long to wait for the socket to appear.
    pub start_timeout: Duration,
    /// How long one exchange with a daemon (a read or a write on its
    /// socket) may block before it fails ([`DEFAULT_IO_TIMEOUT`]): a
    /// long-lived caller keeping many devices (a node agent) sets it short,
    /// so that one stopped or wedged daemon fails its own write soon, to be
    /// retried, instead of holding the caller for half a minute.
    pub io_timeout: Duration,
    /// Run the program in the foreground (`-f` before the name) instead of
    /// letting it daemonize: wireguard-go's daemonizing parent re-executes
    /// itself, so this is one process start instead of two, and the process
    /// that listens on the socket is the daemon, so `SO_PEERCRED` names it.
    /// It is started in its own session either way. [`Userspace::new`] sets
    /// it for wireguard-go.
    pub foreground: bool,
    /// Who starts daemons: `None`, this process ([`Userspace::launch`]).
    launcher: Option<Arc<dyn Launcher>>,
}

impl PartialEq for Userspace {
    fn eq(&self, other: &Self) -> bool {
        let Userspace {
            program,
            args,
            socket_dir,
            start_timeout,
            io_timeout,
            foreground,
            launcher,
        } = self;
        *program == other.program
            && *args == other.args
            && *socket_dir == other.socket_dir
            && *start_timeout == other.start_timeout
            && *io_timeout == other.io_timeout
            && *foreground == other.foreground
            && match (launcher, &other.launcher) {
                (None, None) => true,
                // Arc::ptr_eq compares the allocation, not the vtable.
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for Userspace {}

impl Userspace {
    /// Run `program` (looked up in `PATH` if not a path).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        let program = program.into();
        let file_name = program
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let foreground = file_name.starts_with("wireguard-go");
        // boringtun drops privileges after start unless told not to, and
        // then cannot open the namespace's sockets.
        let args = if file_name.starts_with("boringtun") {
            vec!["--disable-drop-privileges".to_string()]
        } else {
            Vec::new()
        };
        Userspace {
            program,
            args,
            socket_dir: PathBuf::from(DEFAULT_SOCKET_DIR),
            start_timeout: Duration::from_secs(10),
            io_timeout: DEFAULT_IO_TIMEOUT,
            foreground,
            launcher: None,
        }
    }

    /// The same implementation, its daemons started by `launcher` instead
    /// of as children of this process (see [`Launcher`]). Everything else
    /// (the checks before, the wait for the socket, configuring, reading,
    /// stopping) stays with this process.
    pub fn with_launcher(mut self, launcher: Arc<dyn Launcher>) -> Self {
        self.launcher = Some(launcher);
        self
    }

    /// The same implementation, its daemons started as children of this
    /// process again.
    pub fn without_launcher(mut self) -> Self {
        self.launcher = None;
        self
    }

    /// The launcher set by [`Userspace::with_launcher`], if any.
    pub fn launcher(&self) -> Option<&Arc<dyn Launcher>> {
        self.launcher.as_ref()
    }

    /// What starting the daemon of interface `name` takes (what a
    /// [`Launcher`] is given).
    pub fn launch_command(&self, name: &str) -> LaunchCommand {
        LaunchCommand {
            program: self.program.clone(),
            args: self.args.clone(),
            name: name.to_string(),
            foreground: self.foreground,
            socket_dir: self.socket_dir.clone(),
        }
    }

    /// `WG_USERSPACE_IMPLEMENTATION` (or wg-quick's `WG_QUICK_USERSPACE_IMPLEMENTATION`)
    /// if set, else `wireguard-go`.
    pub fn from_env() -> Self {
        let program = std::env::var_os("WG_USERSPACE_IMPLEMENTATION")
            .or_else(|| std::env::var_os("WG_QUICK_USERSPACE_IMPLEMENTATION"))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "wireguard-go".into());
        Self::new(program)
    }

    /// The full path of the program, if it can be found.
    pub fn resolve(&self) -> Option<PathBuf> {
        if self.program.components().count() > 1 {
            return self.program.is_file().then(|| self.program.clone());
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(&self.program))
                .find(|p| p.is_file())
        })
    }

    /// The control socket of device `name`.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.socket_dir.join(format!("{name}.sock"))
    }

    /// The daemon of device `name`, if one is running. A daemon started in
    /// the [`Userspace::foreground`] (or one that never forks) is read from its
    /// socket with `SO_PEERCRED`, checked against `/proc/PID` (this
    /// implementation's executable, `name` as last argument); otherwise this
    /// falls back to [`Userspace::daemon_pids`]. Nothing is scanned when the
    /// socket does not exist: a daemon whose socket is deleted exits.
    pub fn daemon_pid(&self, name: &str) -> Option<u32> {
        let socket = self.socket_path(name);
        if !socket.exists() {
            return None;
        }
        UapiConn::connect(name, &socket, self.io_timeout)
            .and_then(|c| c.peer_pid())
            .ok()
            .filter(|pid| self.serves(*pid, name))
            .or_else(|| self.daemon_pids(name).first().copied())
    }

    /// True when the control socket of device `name` answers: a daemon
    /// serves it, whether or not its process is visible from here (see
    /// [`Userspace::daemon_pid`]).
    pub fn answers(&self, name: &str) -> bool {
        UapiConn::connect(name, &self.socket_path(name), self.io_timeout).is_ok()
    }

    /// True when `pid` is alive, runs this implementation and serves `name`.
    fn serves(&self, pid: u32, name: &str) -> bool {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).rfind(|a| !a.is_empty()) == Some(name.as_bytes()))
            && process_alive(pid)
            && self.is_implementation(pid)
    }

    /// The running daemons of device `name`, by scanning `/proc` (slow on a
    /// busy machine; [`Userspace::daemon_pid`] asks the socket first): processes whose executable is
    /// this implementation and whose last argument is `name` (wireguard-go's
    /// daemon re-executes itself with the same arguments, so the process that
    /// bound the socket, which `SO_PEERCRED` names, has exited by then).
    /// Birth names are unique on the machine, so this finds only ours.
    pub fn daemon_pids(&self, name: &str) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
            .filter(|pid| self.serves(*pid, name))
            .collect()
    }

    /// True when process `pid` runs this implementation's executable.
    pub(crate) fn is_implementation(&self, pid: u32) -> bool {
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            return false;
        };
        let want = self.resolve().and_then(|p| std::fs::canonicalize(p).ok());
        let exe_name = exe.file_name();
        match want {
            Some(w) => w == exe || w.file_name() == exe_name,
            None => exe_name == self.program.file_name(),
        }
    }

    /// Spawn the implementation for interface `name` in the calling
    /// thread's network namespace (call inside [`crate::Netns::run`] to
    /// choose another) and return its process id without waiting for its
    /// socket; the process is reaped on a small thread, or adopted by init
    /// when this process exits first (a CNI plugin does). Ignores
    /// [`Userspace::with_launcher`]: this is what the default launcher does,
    /// and what a launcher in another process calls.
    ///
    /// The program is [`Userspace::resolve`]d and run as
    /// `PROGRAM [args] [-f] NAME` in its own session (not signalled with
    /// the caller's process group), with `WG_SUDO=true`, no `LOG_LEVEL`, and
    /// `/dev/null` as stdin, stdout and stderr.
    ///
    /// ```no_run
    /// use wg_netns::{Netns, Userspace};
    /// let pod = Netns::from_path("/var/run/netns/cni-1234")?;
    /// let pid = pod.run(|| Userspace::new("/opt/cni/bin/wg-cni-wireguard-go").launch("wgb-1234"))??;
    /// # let _ = pid;
    /// # Ok::<(), wg_netns::Error>(())
    /// ```
    pub fn launch(&self, name: &str) -> Result<u32> {
        let child = self.spawn(name)?;
        let pid = child.id();
        reap(child, Duration::ZERO);
        Ok(pid)
    }

    /// Spawn the daemon of `name` as this process's child.
    fn spawn(&self, name: &str) -> Result<Child> {
        let spawn_err = |reason: String| Error::Spawn {
            program: self.program.display().to_string(),
            device: name.to_string(),
            reason,
        };
        let path = self
            .resolve()
            .ok_or_else(|| spawn_err("program not found".into()))?;
        let mut cmd = Command::new(&path);
        cmd.args(self.launch_command(name).argv())
            .env("WG_SUDO", "true")
            .env_remove("LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: runs in the forked child before exec and makes one raw
        // system call; it allocates nothing and touches no lock.
        unsafe {
            // Its own session: not signalled with the caller's process group.
            cmd.pre_exec(|| rustix::process::setsid().map(|_| ()).map_err(Into::into));
        }
        cmd.spawn().map_err(|e| spawn_err(e.to_string()))
    }

    /// Start the implementation for interface `name` in the calling thread's
    /// namespace (call inside [`crate::Netns::run`]): as a child
    /// ([`Userspace::launch`]), or by the [`Launcher`] when one is set; then
    /// wait until its control socket answers.
    pub(crate) fn start(&self, name: &str) -> Result<UapiConn> {
        let program = self.program.display().to_string();
        let spawn_err = |reason: String| Error::Spawn {
            program: program.clone(),
            device: name.to_string(),
            reason,
        };
        let socket = self.socket_path(name);
        match UapiConn::connect(name, &socket, self.io_timeout) {
            Ok(_) => {
                return Err(spawn_err(
                    "a userspace device with this name is already running".into(),
                ))
            }
            Err(_) if socket.exists() => {
                // A stale socket from a killed daemon: nobody answers on it.
                let _ = std::fs::remove_file(&socket);
            }
            Err(_) => {}
        }
        crate::fault::check("start userspace daemon")?;
        // Without a child (a launcher started the daemon) only the socket
        // tells whether it runs.
        let mut child = match &self.launcher {
            Some(l) => {
                l.launch(&self.launch_command(name))
                    .map_err(|e| spawn_err(format!("launcher {l:?} failed: {e}")))?;
                None
            }
            None => Some(self.spawn(name)?),
        };
        let deadline = Instant::now() + self.start_timeout;
        loop {
            // Ready means a full `get` exchange succeeds: the socket file can
            // exist (wireguard-go's parent binds it before forking) while the
            // daemon is still initializing the TUN, MTU included.
            if let Ok(conn) =
                UapiConn::connect(name, &socket, self.io_timeout).and_then(|c| c.get().map(|_| c))
            {
                if let Some(child) = child {
                    let parent_exits = if self.foreground {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(500)
                    };
                    reap(child, parent_exits);
                }
                return Ok(conn);
            }
            if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
                // A daemonizing parent exits successfully once its daemon
                // runs; a foreground daemon that exits at all has failed.
                if !status.success() || self.foreground {
                    return Err(spawn_err(format!(
                        "exited with {status} before its socket answered"
                    )));
                }
            }
            if Instant::now() >= deadline {
                if let Some(mut child) = child {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(spawn_err(format!(
                    "socket {} did not appear within {:?}{}",
                    socket.display(),
                    self.start_timeout,
                    if self.launcher.is_some() {
                        " after the launcher started the daemon"
                    } else {
                        ""
                    }
                )));
            }
            std::thread::sleep(POLL);
        }
    }
}

/// True when `pid` exists and is not a zombie.
pub(crate) fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Collect the started process's exit status so it does not linger as a
/// zombie: a daemonizing implementation's parent exits right after its socket
/// is up (checked for `wait`); one that stays in the foreground is waited for
/// on a small thread (in a short-lived caller such as a CNI plugin it is
/// adopted by init when the caller exits).
fn reap(mut child: Child, wait: Duration) {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let _ = std::thread::Builder::new()
        .name("wg-netns-reaper".into())
        .spawn(move || child.wait());
}

impl Default for Userspace {
    fn default() -> Self {
        Self::from_env()
    }
}

/// A handle on a userspace device's control socket.
#[derive(Debug, Clone)]
pub(crate) struct UapiConn {
    name: String,
    socket: PathBuf,
    io_timeout: Duration,
}

impl UapiConn {
    /// Check that `socket` answers and return a handle.
    pub(crate) fn connect(name: &str, socket: &Path, io_timeout: Duration) -> Result<Self> {
        let c = UapiConn {
            name: name.to_string(),
            socket: socket.to_path_buf(),
            io_timeout,
        };
        c.stream()?;
        Ok(c)
    }

    fn stream(&self) -> Result<UnixStream> {
        let s = UnixStream::connect(&self.socket).map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) {
                Error::NotFound {
                    what: crate::error::Object::Device,
                    name: self.socket.display().to_string(),
                }
            } else {
                Error::io(format!("connecting to {}", self.socket.display()), e)
            }
        })?;
        let _ = s.set_read_timeout(Some(self.io_timeout));
        let _ = s.set_write_timeout(Some(self.io_timeout));
        Ok(s)
    }

    /// The device (socket) name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// PID of the process that listens on the socket (`SO_PEERCRED`). For a
    /// daemonizing implementation that is the parent, which has exited;
    /// [`Userspace::daemon_pid`] checks it. [`Error::NotFound`] when the
    /// kernel reports no PID: the daemon is outside this process's PID
    /// namespace (started by a [`Launcher`] on the host while this process
    /// runs in a container).
    pub(crate) fn peer_pid(&self) -> Result<u32> {
        use std::os::fd::AsRawFd;
        let s = self.stream()?;
        // Read with libc rather than rustix: rustix's `UCred` holds a
        // non-zero PID, and the kernel answers 0 for a peer in a PID
        // namespace this one cannot see.
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are valid for writes of the sizes given,
        // and the descriptor is open for the duration of the call.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(Error::io(
                format!("SO_PEERCRED on {}", self.socket.display()),
                std::io::Error::last_os_error(),
            ));
        }
        u32::try_from(cred.pid)
            .ok()
            .filter(|pid| *pid != 0)
            .ok_or_else(|| Error::NotFound {
                what: crate::error::Object::Device,
                name: format!(
                    "the process serving {} (not in this PID namespace)",
                    self.socket.display()
                ),
            })
    }

    /// Send `request` and read the reply up to the blank line that ends it.
    fn exchange(&self, request: &[u8]) -> Result<Zeroizing<String>> {
        crate::fault::check("UAPI exchange")?;
        self.exchange_on(self.stream()?, request)
    }

    fn exchange_on(&self, mut s: UnixStream, request: &[u8]) -> Result<Zeroizing<String>> {
        s.write_all(request)
            .map_err(|e| Error::io(format!("writing to {}", self.socket.display()), e))?;
        let mut reply = Zeroizing::new(String::new());
        let mut r = BufReader::new(&mut s);
        let mut line = Zeroizing::new(String::new());
        loop {
            line.clear();
            let n = r
                .by_ref()
                .take(1 << 20)
                .read_line(&mut line)
                .map_err(|e| Error::io(format!("reading from {}", self.socket.display()), e))?;
            if n == 0 || *line == "\n" {
                break;
            }
            reply.push_str(&line);
        }
        Ok(reply)
    }

    pub(crate) fn set(&self, cfg: &DeviceConfig) -> Result<()> {
        let reply = self.exchange(encode_set(cfg).as_bytes())?;
        parse_errno(&self.name, &reply)
    }

    pub(crate) fn get(&self) -> Result<Device> {
        let reply = self.exchange(b"get=1\n\n")?;
        parse_get(&self.name, &reply)
    }
}

fn parse_errno(device: &str, reply: &str) -> Result<()> {
    for line in reply.lines() {
        if let Some(v) = line.strip_prefix("errno=") {
            return match v.trim().parse::<i32>() {
                Ok(0) => Ok(()),
                Ok(errno) => Err(Error::UapiErrno {
                    device: device.to_string(),
                    errno,
                }),
                Err(_) => Err(Error::Uapi {
                    device: device.to_string(),
                    reason: format!("bad errno line {line:?}"),
                }),
            };
        }
    }
    Err(Error::Uapi {
        device: device.to_string(),
        reason: "reply has no errno line".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::PeerConfig;
    use std::time::SystemTime;

    #[test]
    fn set_request_matches_the_protocol() {
        let k = PrivateKey::from_bytes([0x11; 32]);
        let peer = PublicKey::from_bytes([0xab; 32]);
        let cfg = DeviceConfig::new()
            .private_key(k)
            .listen_port(51820)
            .fwmark(7)
            .replace_peers()
            .peer(
                PeerConfig::new(peer)
                    .endpoint("[fd00::1]:51820".parse().unwrap())
                    .persistent_keepalive(Duration::from_secs(25))
                    .replace_allowed_ips()
                    .allowed_ip("10.13.13.0/24".parse().unwrap())
                    .allowed_ip("fd00::/64".parse().unwrap()),
            )
            .peer(PeerConfig::removal(PublicKey::from_bytes([1; 32])));
        let s = encode_set(&cfg);
        let expected = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\nfwmark=7\nreplace_peers=true\n\
             public_key={}\nendpoint=[fd00::1]:51820\npersistent_keepalive_interval=25\n\
             replace_allowed_ips=true\nallowed_ip=10.13.13.0/24\nallowed_ip=fd00::/64\n\
             public_key={}\nremove=true\n\n",
            "11".repeat(32),
            "ab".repeat(32),
            "01".repeat(32)
        );
        assert_eq!(*s, expected);
    }

    #[test]
    fn get_reply_is_parsed() {
        let reply = format!(
            "private_key={}\nlisten_port=51820\nfwmark=0\npublic_key={}\npreshared_key={}\n\
             protocol_version=1\nendpoint=192.0.2.1:51820\nlast_handshake_time_sec=1700000000\n\
             last_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=25\n\
             allowed_ip=10.0.0.0/24\nallowed_ip=fd00::/64\npublic_key={}\npreshared_key={}\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\nerrno=0\n",
            "11".repeat(32),
            "ab".repeat(32),
            "22".repeat(32),
            "cd".repeat(32),
            "00".repeat(32),
        );
        let d = parse_get("t", &reply).unwrap();
        assert_eq!(d.listen_port, 51820);
        assert_eq!(
            d.public_key,
            Some(PrivateKey::from_bytes([0x11; 32]).public_key())
        );
        assert_eq!(d.peers.len(), 2);
        let p = &d.peers[0];
        assert_eq!(p.rx_bytes, 20);
        assert_eq!(p.tx_bytes, 10);
        assert_eq!(p.persistent_keepalive, Some(Duration::from_secs(25)));
        assert_eq!(p.allowed_ips.len(), 2);
        assert_eq!(
            p.last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert!(d.peers[1].preshared_key.is_none());
        assert!(d.peers[1].last_handshake.is_none());
    }

    /// Regression for the crash cargo-fuzz found (fuzz target uapi_reply):
    /// `UNIX_EPOCH + Duration::from_secs(11111111111111111111)` panicked.
    #[test]
    fn out_of_range_handshake_time_is_an_error_not_a_panic() {
        let reply = format!(
            "public_key={}\nlast_handshake_time_sec=11111111111111111111\nlast_handshake_time_nsec=2\nerrno=0\n",
            "ab".repeat(32)
        );
        assert!(parse_get("t", &reply).is_err());
        let reply = format!(
            "public_key={}\nlast_handshake_time_sec=1\nlast_handshake_time_nsec=18446744073709551615\nerrno=0\n",
            "ab".repeat(32)
        );
        let d = parse_get("t", &reply).unwrap();
        assert_eq!(
            d.peers[0].last_handshake,
            Some(SystemTime::UNIX_EPOCH + Duration::new(1, 999_999_999))
        );
    }

    /// A foreground daemon that exits before answering is a failed start,
    /// reported as such, not waited for until the start timeout.
    #[test]
    fn foreground_daemon_that_exits_is_a_failed_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("wg-netns-uapi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let program = dir.join("wireguard-go");
        std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut u = Userspace::new(&program);
        assert!(u.foreground, "wireguard-go runs in the foreground");
        u.socket_dir = dir.join("sockets");
        u.start_timeout = Duration::from_secs(3);
        let err = u.start("wgtest0").unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.contains("exited with"), "{err}");
    }

    /// A launcher for the tests: records each command; fails, does
    /// nothing, or binds a fake daemon's socket that answers `get`.
    #[derive(Debug)]
    struct FakeLauncher {
        seen: std::sync::Mutex<Vec<LaunchCommand>>,
        then: Then,
    }

    #[derive(Debug, Clone, Copy)]
    enum Then {
        Fail,
        Nothing,
        Serve,
    }

    impl FakeLauncher {
        fn new(then: Then) -> Arc<Self> {
            Arc::new(FakeLauncher {
                seen: std::sync::Mutex::new(Vec::new()),
                then,
            })
        }
    }

    impl Launcher for FakeLauncher {
        fn launch(&self, cmd: &LaunchCommand) -> std::io::Result<()> {
            self.seen.lock().unwrap().push(cmd.clone());
            match self.then {
                Then::Fail => Err(std::io::Error::other("no daemons today")),
                Then::Nothing => Ok(()),
                Then::Serve => {
                    let l = std::os::unix::net::UnixListener::bind(
                        cmd.socket_dir.join(format!("{}.sock", cmd.name)),
                    )?;
                    std::thread::spawn(move || {
                        for s in l.incoming().take(16) {
                            let Ok(mut s) = s else { return };
                            let mut line = String::new();
                            let mut r = BufReader::new(&mut s);
                            // Read the request up to its blank line; a
                            // bare connect sends nothing.
                            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                                if line == "\n" {
                                    let _ = s.write_all(b"listen_port=7\nerrno=0\n\n");
                                    break;
                                }
                                line.clear();
                            }
                        }
                    });
                    Ok(())
                }
            }
        }
    }

    fn temp_dir(what: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wg-netns-uapi-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn launched(then: Then, dir: &Path) -> (Userspace, Arc<FakeLauncher>) {
        let l = FakeLauncher::new(then);
        let mut u = Userspace::new("/nonexistent/wireguard-go").with_launcher(l.clone());
        u.socket_dir = dir.to_path_buf();
        u.start_timeout = Duration::from_millis(200);
        (u, l)
    }

    /// A launcher that fails makes the start fail, naming the launcher,
    /// its error and the device; it was given the command line a child
    /// would have run, and the program need not exist here.
    #[test]
    fn a_failing_launcher_is_a_spawn_error() {
        let dir = temp_dir("fail");
        let (u, l) = launched(Then::Fail, &dir);
        // A stale socket is removed before the launcher is asked.
        std::fs::write(dir.join("wgtest0.sock"), b"").unwrap();
        let err = u.start("wgtest0").unwrap_err();
        assert!(
            matches!(&err, Error::Spawn { device, .. } if device == "wgtest0"),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("FakeLauncher"), "{msg}");
        assert!(msg.contains("no daemons today"), "{msg}");
        assert!(!dir.join("wgtest0.sock").exists());
        let seen = l.seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [LaunchCommand {
                program: "/nonexistent/wireguard-go".into(),
                args: vec![],
                name: "wgtest0".into(),
                foreground: true,
                socket_dir: dir.clone(),
            }]
        );
        assert_eq!(seen[0].argv(), ["-f", "wgtest0"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Without a child to poll, a daemon whose socket never answers is
    /// waited for until the start timeout, and no longer.
    #[test]
    fn a_launched_daemon_without_a_socket_times_out() {
        let dir = temp_dir("silent");
        let (u, l) = launched(Then::Nothing, &dir);
        let started = Instant::now();
        let err = u.start("wgtest1").unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.contains("did not appear"), "{err}");
        assert!(err.contains("after the launcher started"), "{err}");
        assert_eq!(l.seen.lock().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A launched daemon is ready when its socket answers `get`; a second
    /// start of the same name is refused before the launcher is asked.
    #[test]
    fn a_launched_daemon_is_ready_when_its_socket_answers() {
        let dir = temp_dir("serve");
        let (u, l) = launched(Then::Serve, &dir);
        let conn = u.start("wgtest2").unwrap();
        assert_eq!(conn.get().unwrap().listen_port, 7);
        assert!(u.answers("wgtest2"));
        assert!(!u.answers("wgtest3"));
        let err = u.start("wgtest2").unwrap_err().to_string();
        assert!(err.contains("already running"), "{err}");
        assert_eq!(l.seen.lock().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A socket that answers but whose process cannot be signalled (here:
    /// not the implementation; in a cluster: outside this PID namespace) is
    /// removed, which ends a real daemon.
    #[test]
    fn a_socket_whose_process_cannot_be_signalled_is_removed() {
        let dir = temp_dir("gone");
        let (u, _) = launched(Then::Serve, &dir);
        u.start("wgtest4").unwrap();
        assert_eq!(
            u.daemon_pid("wgtest4"),
            None,
            "the test process serves no device"
        );
        crate::backend::wait_userspace_gone(&u, "wgtest4", Duration::ZERO).unwrap();
        assert!(!u.socket_path("wgtest4").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn peer_pid_names_the_listening_process() {
        let dir = temp_dir("peer");
        let path = dir.join("x.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let c = UapiConn::connect("x", &path, DEFAULT_IO_TIMEOUT).unwrap();
        assert_eq!(c.peer_pid().unwrap(), std::process::id());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `launch` runs `PROGRAM [args] [-f] NAME` with `WG_SUDO=true` in its
    /// own session and returns without waiting for a socket; a program
    /// that is not there is a spawn error.
    #[test]
    fn launch_runs_the_command_line_detached() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("launch");
        let program = dir.join("wireguard-go");
        let out = dir.join("out");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\necho \"$* $WG_SUDO $(ps -o sid= -p $$ | tr -d ' ') $$\" > {}.tmp && mv {}.tmp {}\n",
                out.display(),
                out.display(),
                out.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut u = Userspace::new(&program);
        u.args = vec!["--x".into()];
        let pid = u.launch("wgtest5").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !out.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let got = std::fs::read_to_string(&out).unwrap();
        let words: Vec<&str> = got.split_whitespace().collect();
        assert_eq!(words[..4], ["--x", "-f", "wgtest5", "true"], "{got}");
        if words.len() == 6 {
            // ps may be missing; when it is there, the child leads its session.
            assert_eq!(words[4], words[5], "{got}");
        }
        assert_eq!(words.last(), Some(&pid.to_string().as_str()), "{got}");
        let err = Userspace::new(dir.join("missing"))
            .launch("wgtest5")
            .unwrap_err();
        assert!(err.to_string().contains("program not found"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Equal settings and the same launcher (or none) are equal; another
    /// launcher, even an identical one, is not.
    #[test]
    fn equality_compares_launchers_by_identity() {
        let a = Userspace::new("wireguard-go");
        assert_eq!(a, a.clone());
        let l: Arc<dyn Launcher> = FakeLauncher::new(Then::Nothing);
        let with = a.clone().with_launcher(Arc::clone(&l));
        assert_eq!(with, with.clone());
        assert_eq!(with, a.clone().with_launcher(l));
        assert_ne!(with, a);
        assert_ne!(
            with,
            a.clone().with_launcher(FakeLauncher::new(Then::Nothing))
        );
        assert_eq!(with.without_launcher(), a);
        let mut other = a.clone();
        other.foreground = !other.foreground;
        assert_ne!(other, a);
    }

    #[test]
    fn errors_and_garbage() {
        assert!(matches!(
            parse_get("t", "errno=19\n"),
            Err(Error::UapiErrno { errno: 19, .. })
        ));
        assert!(parse_get("t", "listen_port=1\n").is_err());
        assert!(parse_get("t", "garbage\nerrno=0\n").is_err());
        assert!(parse_get("t", "public_key=zz\nerrno=0\n").is_err());
        assert!(parse_errno("t", "errno=0\n\n").is_ok());
        assert!(parse_errno("t", "errno=22\n\n").is_err());
        assert!(parse_errno("t", "").is_err());
        // Device-level keys after a peer belong to no one and are ignored; unknown keys too.
        assert!(parse_get("t", "whatever=1\nerrno=0\n").is_ok());
    }

    #[test]
    fn encoded_set_round_trips_through_get_parser() {
        // A get reply uses the same key=value vocabulary for the fields both share.
        let cfg = DeviceConfig::new().listen_port(9).peer(
            PeerConfig::new(PublicKey::from_bytes([5; 32]))
                .endpoint("192.0.2.9:9".parse().unwrap())
                .allowed_ip("10.9.0.0/16".parse().unwrap()),
        );
        let s = encode_set(&cfg);
        let body = s.strip_prefix("set=1\n").unwrap().trim_end().to_string() + "\nerrno=0\n";
        let d = parse_get("t", &body).unwrap();
        assert_eq!(d.listen_port, 9);
        assert_eq!(d.peers[0].endpoint, cfg.peers[0].endpoint);
        assert_eq!(d.peers[0].allowed_ips, cfg.peers[0].allowed_ips);
    }
}
