//! [`Userspace`]: an implementation's settings, its launcher, and finding
//! its socket and running daemons.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{
    process_alive, LaunchCommand, Launcher, UapiConn, DEFAULT_IO_TIMEOUT, DEFAULT_SOCKET_DIR,
};

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
    pub(super) launcher: Option<Arc<dyn Launcher>>,
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
        find_program(&self.program)
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
}

impl Default for Userspace {
    fn default() -> Self {
        Self::from_env()
    }
}

/// `program` itself when it is a path (one with a directory) to a file,
/// else the first file of that name in a directory of `PATH`.
pub(crate) fn find_program(program: &std::path::Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}
