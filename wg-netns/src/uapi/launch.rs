//! Starting daemons: the command line ([`LaunchCommand`]), the
//! [`Launcher`] seam, spawning a child ([`Userspace::launch`]), waiting
//! for its socket, and reaping.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::{UapiConn, Userspace, POLL};

#[cfg(doc)]
use super::DEFAULT_SOCKET_DIR;

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

impl Userspace {
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
