//! The engine backend: many userspace WireGuard devices hosted by one
//! long-lived process per node (`wg-engine serve`, crate wg-engine), each
//! device's TUN born straight in its target namespace (the pod's) and its
//! UDP socket bound in the birthplace (the node's), each configured over
//! the standard UAPI socket `SOCKET_DIR/BIRTH_NAME.sock` exactly as
//! wireguard-go is.
//!
//! [`EngineDaemon`] is the client: it asks the daemon, on its root-only
//! control socket, to create, delete or list devices ([`proto`]), passing
//! namespaces as open descriptors. It starts the daemon on demand when its
//! control socket does not answer: detached (a new session, then a second
//! fork, so the daemon is never the caller's child and a caller's exit or
//! restart does not touch it), and waits for the socket for a bounded time.
//!
//! wg-netns only speaks the protocol; it does not link the engine (gotatun
//! and its runtime stay out of every program that uses this crate).
//!
//! ```no_run
//! use wg_netns::{engine::EngineDaemon, IfName, Netns};
//! let engine = EngineDaemon::default();
//! let pod = Netns::from_path("/var/run/netns/cni-1")?;
//! let created = engine.create(&IfName::new("wgb1a2b3c")?, &pod, &Netns::current()?, 1420)?;
//! # let _ = created;
//! # Ok::<(), wg_netns::Error>(())
//! ```

pub mod proto;

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ifname::IfName;
use crate::netns::Netns;
use crate::uapi::{UapiConn, DEFAULT_IO_TIMEOUT, DEFAULT_SOCKET_DIR};

use proto::{Create, DeviceInfo, ErrorKind, Reply, Request};

/// Where the daemon listens for requests unless told otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/wg-engine/control.sock";

/// Where the daemon keeps its device records unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/wg-engine";

/// The daemon's program unless told otherwise (looked up in `PATH`).
pub const DEFAULT_PROGRAM: &str = "wg-engine";

/// The subdirectory of the state directory holding one `NAME.json` record
/// per device (written by the daemon; the client only checks whether one
/// exists, see [`EngineDaemon::delete`]).
pub const DEVICES_DIR: &str = "devices";

/// Connect to a unix socket, waiting at most `timeout` (a listener whose
/// backlog is full makes `connect` wait; `SO_SNDTIMEO` bounds that too).
fn connect_bounded(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use rustix::net::{sockopt, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let addr = SocketAddrUnix::new(path)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(timeout))?;
    rustix::net::connect(&fd, &addr)?;
    Ok(UnixStream::from(fd))
}

/// The engine daemon a [`crate::Backend::Engine`] talks to, and how to
/// start it when it is not running.
///
/// ```
/// use wg_netns::engine::EngineDaemon;
/// let e = EngineDaemon::default();
/// assert_eq!(e.socket_path("wgb1").to_str(), Some("/var/run/wireguard/wgb1.sock"));
/// let args: Vec<String> = e.serve_args().into_iter().map(|a| a.into_string().unwrap()).collect();
/// assert_eq!(args, ["serve", "--control", "/run/wg-engine/control.sock",
///                   "--socket-dir", "/var/run/wireguard", "--state-dir", "/var/lib/wg-engine"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineDaemon {
    /// The daemon's program (`PROGRAM serve ...`), looked up in `PATH`
    /// when it is not a path.
    pub program: PathBuf,
    /// Its control socket.
    pub control_socket: PathBuf,
    /// Where it puts the devices' UAPI sockets (`NAME.sock`).
    pub socket_dir: PathBuf,
    /// Where it keeps its device records.
    pub state_dir: PathBuf,
    /// Start the daemon when its control socket does not answer.
    pub start_on_demand: bool,
    /// How long to wait for a started daemon's control socket.
    pub start_timeout: Duration,
    /// How long one exchange (on the control socket or a UAPI socket) may
    /// block.
    pub io_timeout: Duration,
}

impl Default for EngineDaemon {
    fn default() -> Self {
        Self::new(DEFAULT_PROGRAM)
    }
}

impl EngineDaemon {
    /// The daemon `program`, with the default paths, started on demand.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        EngineDaemon {
            program: program.into(),
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            socket_dir: PathBuf::from(DEFAULT_SOCKET_DIR),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            start_on_demand: true,
            start_timeout: Duration::from_secs(10),
            io_timeout: DEFAULT_IO_TIMEOUT,
        }
    }

    /// The same daemon with its three paths in `dir` (`control.sock`,
    /// `sockets/`, `state/`): for tests and side-by-side instances.
    pub fn in_dir(mut self, dir: &Path) -> Self {
        self.control_socket = dir.join("control.sock");
        self.socket_dir = dir.join("sockets");
        self.state_dir = dir.join("state");
        self
    }

    /// `program`'s arguments: `serve --control C --socket-dir S --state-dir D`.
    pub fn serve_args(&self) -> Vec<OsString> {
        vec![
            "serve".into(),
            "--control".into(),
            self.control_socket.clone().into(),
            "--socket-dir".into(),
            self.socket_dir.clone().into(),
            "--state-dir".into(),
            self.state_dir.clone().into(),
        ]
    }

    /// The UAPI socket of device `name`.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.socket_dir.join(format!("{name}.sock"))
    }

    /// The record the daemon keeps for device `name`.
    pub fn record_path(&self, name: &str) -> PathBuf {
        self.state_dir
            .join(DEVICES_DIR)
            .join(format!("{name}.json"))
    }

    /// The program's full path, if it can be found.
    pub fn resolve(&self) -> Option<PathBuf> {
        crate::uapi::find_program(&self.program)
    }

    /// Usable here: the daemon answers, or it can be started.
    pub fn available(&self) -> bool {
        self.answers() || (self.start_on_demand && self.resolve().is_some())
    }

    fn err(op: &'static str, kind: ErrorKind, reason: impl Into<String>) -> Error {
        Error::Engine {
            op,
            kind,
            reason: reason.into(),
        }
    }

    /// Connect to the control socket, trusting only a daemon running as
    /// root (or as this process's user). `Error::NotFound` when nothing
    /// listens there.
    fn connect(&self) -> Result<UnixStream> {
        let s = connect_bounded(&self.control_socket, self.io_timeout)
            .map_err(|e| Error::connecting(crate::error::Object::File, &self.control_socket, e))?;
        let cred = rustix::net::sockopt::socket_peercred(&s).map_err(|e| {
            Error::io(
                format!("SO_PEERCRED on {}", self.control_socket.display()),
                e.into(),
            )
        })?;
        let uid = cred.uid.as_raw();
        if uid != 0 && uid != rustix::process::geteuid().as_raw() {
            return Err(Self::err(
                "connect",
                ErrorKind::Refused,
                format!(
                    "{} is served by uid {uid}, not root",
                    self.control_socket.display()
                ),
            ));
        }
        let _ = s.set_read_timeout(Some(self.io_timeout));
        let _ = s.set_write_timeout(Some(self.io_timeout));
        Ok(s)
    }

    /// True when the daemon answers on its control socket.
    pub fn answers(&self) -> bool {
        self.connect().is_ok()
    }

    /// The daemon's process id (`SO_PEERCRED`), when it runs and is in
    /// this PID namespace.
    pub fn daemon_pid(&self) -> Option<u32> {
        let s = self.connect().ok()?;
        let cred = rustix::net::sockopt::socket_peercred(&s).ok()?;
        u32::try_from(cred.pid.as_raw_nonzero().get()).ok()
    }

    /// Start the daemon unless it answers already, and wait until it does,
    /// at most [`EngineDaemon::start_timeout`].
    ///
    /// The daemon is started in the calling thread's namespaces, detached:
    /// in a new session (setsid) and then forked once more, so it is not a
    /// child of this process (it is re-parented to init, or to the nearest
    /// subreaper) and no signal to the caller's process group reaches it.
    /// stdin and stdout are `/dev/null`; stderr is appended to
    /// `STATE_DIR/wg-engine.log`; the environment is empty but for a
    /// standard `PATH`, the working directory `/`. Two callers starting it at once start two
    /// processes; the daemon's lock on its control socket lets one serve
    /// and the other exit.
    pub fn start(&self) -> Result<()> {
        if self.answers() {
            return Ok(());
        }
        let fail = |reason: String| Self::err("start", ErrorKind::Failed, reason);
        let program = self
            .resolve()
            .ok_or_else(|| fail(format!("{} is not installed", self.program.display())))?;
        crate::fault::check("start the engine daemon")?;
        let log = std::fs::create_dir_all(&self.state_dir)
            .and_then(|()| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(self.state_dir.join("wg-engine.log"))
            })
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut cmd = Command::new(&program);
        // Nothing of the caller's (a CNI plugin's CNI_* variables, its
        // working directory, which might be a mount to let go of) stays with
        // a process that outlives it.
        cmd.args(self.serve_args())
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: runs in the forked child before exec and makes only
        // async-signal-safe system calls (setsid, fork, _exit); it
        // allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()?;
                match libc::fork() {
                    -1 => Err(std::io::Error::last_os_error()),
                    // The grandchild goes on to exec the daemon.
                    0 => Ok(()),
                    // The intermediate child leaves at once: the daemon's
                    // parent is gone, so it is nobody's child here.
                    _ => libc::_exit(0),
                }
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("{}: {e}", program.display())))?;
        // The intermediate child, which exits at once.
        let _ = child.wait();
        let deadline = Instant::now() + self.start_timeout;
        loop {
            match self.connect() {
                Ok(_) => return Ok(()),
                Err(e @ Error::Engine { .. }) => return Err(e),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(fail(format!(
                    "{} did not answer within {:?} (see {})",
                    self.control_socket.display(),
                    self.start_timeout,
                    self.state_dir.join("wg-engine.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// One exchange: `req`, with `fds`, then the reply. Starts the daemon
    /// first when `start` and it does not answer.
    fn call(
        &self,
        op: &'static str,
        req: &Request,
        fds: &[std::os::fd::BorrowedFd<'_>],
        start: bool,
    ) -> Result<Reply> {
        let stream = match self.connect() {
            Ok(s) => s,
            Err(e) if e.is_not_found() && start && self.start_on_demand => {
                self.start()?;
                self.connect()?
            }
            Err(e) => return Err(e),
        };
        crate::fault::check("engine request")?;
        let sent = proto::send_request(&stream, req, fds);
        // A daemon that refuses may answer before reading all of it: its
        // reply says more than the broken pipe.
        let reply = match (sent, proto::recv_reply(&stream)) {
            (_, Ok(r)) => r,
            (Err(e), Err(_)) | (Ok(()), Err(e)) => return Err(e),
        };
        match reply {
            Reply::Error { kind, message } => Err(Self::err(op, kind, message)),
            r => Ok(r),
        }
    }

    /// Have device `name` hosted: its TUN born in `tun_ns` (down, no
    /// address) with `mtu`, its UDP socket (once a private key is set over
    /// its UAPI socket) in `udp_ns`. Starts the daemon if needed. Returns
    /// true when it was created, false when it was there already with the
    /// same namespaces (a repeated create is harmless);
    /// [`Error::Engine`] with [`ErrorKind::Exists`] when a device of that
    /// name lives in other namespaces.
    pub fn create(&self, name: &IfName, tun_ns: &Netns, udp_ns: &Netns, mtu: u16) -> Result<bool> {
        let req = Request::Create(
            Create::new(name.clone(), tun_ns.path())
                .udp_netns(udp_ns.path())
                .mtu(mtu),
        );
        match self.call("create", &req, &[tun_ns.as_fd(), udp_ns.as_fd()], true)? {
            Reply::Created { existed } => Ok(!existed),
            other => Err(Self::err(
                "create",
                ErrorKind::Failed,
                format!("unexpected reply {other:?}"),
            )),
        }
    }

    /// Remove device `name` (its TUN, UDP and UAPI sockets, and its
    /// record). Idempotent: returns whether there was one. When the daemon
    /// does not run, it is started only if it holds a record of `name`
    /// (else it would bring the device back on its next start).
    pub fn delete(&self, name: &IfName) -> Result<bool> {
        let start = self.record_path(name.as_str()).exists();
        let req = Request::Delete { name: name.clone() };
        match self.call("delete", &req, &[], start) {
            Ok(Reply::Deleted { existed }) => Ok(existed),
            Ok(other) => Err(Self::err(
                "delete",
                ErrorKind::Failed,
                format!("unexpected reply {other:?}"),
            )),
            Err(e) if e.is_not_found() && !start => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The devices the daemon hosts; none when it does not run (it is not
    /// started for this).
    pub fn list(&self) -> Result<Vec<DeviceInfo>> {
        match self.call("list", &Request::List, &[], false) {
            Ok(Reply::Devices(d)) => Ok(d),
            Ok(other) => Err(Self::err(
                "list",
                ErrorKind::Failed,
                format!("unexpected reply {other:?}"),
            )),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// A UAPI handle on device `name`'s socket.
    pub(crate) fn uapi(&self, name: &str) -> Result<UapiConn> {
        UapiConn::connect(name, &self.socket_path(name), self.io_timeout)
    }
}
