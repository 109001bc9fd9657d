//! One type for every WireGuard implementation (the kernel's, a userspace
//! daemon per device, the node's engine daemon): [`Backend`] says which to
//! use, [`WgDevice`] configures and reads a device whichever it is.
//!
//! ```no_run
//! use wg_netns::{Backend, DeviceConfig, IfName, Netns, PrivateKey, WgDevice};
//! let node = Netns::from_name("node1")?;
//! let backend = Backend::detect()?; // kernel if available, else userspace
//! let (dev, _link) = WgDevice::create(&node, &IfName::new("wg0")?, &backend)?;
//! dev.set(&DeviceConfig::new().private_key(PrivateKey::generate()?).listen_port(51820))?;
//! assert_eq!(dev.get()?.listen_port, 51820);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::{Device, DeviceConfig};
use crate::engine::EngineDaemon;
use crate::error::{Error, Result};
use crate::kernel::{DevRef, KernelConn};
use crate::netns::Netns;
use crate::rtnl::{IfName, Link, Rtnl};
use crate::stats::DeviceStats;
use crate::uapi::{process_alive, UapiConn, Userspace};

/// Which WireGuard implementation drives a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The Linux kernel module, over generic netlink.
    Kernel,
    /// A userspace implementation over its UAPI socket.
    Userspace(Userspace),
    /// Devices hosted by the node's engine daemon (`wg-engine serve`),
    /// created over its control socket and configured over their UAPI
    /// sockets like [`Backend::Userspace`] ones (see [`crate::engine`]).
    Engine(EngineDaemon),
}

/// The kinds of backend, without their settings. Written and parsed as
/// `kernel` / `userspace` / `engine` (also by serde), the words records and
/// configurations use.
///
/// ```
/// use wg_netns::BackendKind;
/// assert_eq!("kernel".parse::<BackendKind>()?, BackendKind::Kernel);
/// assert_eq!(BackendKind::Userspace.to_string(), "userspace");
/// assert_eq!("engine".parse::<BackendKind>()?, BackendKind::Engine);
/// # Ok::<(), wg_netns::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum BackendKind {
    /// Kernel WireGuard.
    Kernel,
    /// Userspace WireGuard, one daemon per device.
    Userspace,
    /// Userspace WireGuard, many devices in the node's engine daemon.
    Engine,
}

impl BackendKind {
    /// The word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Kernel => "kernel",
            BackendKind::Userspace => "userspace",
            BackendKind::Engine => "engine",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kernel" => Ok(BackendKind::Kernel),
            "userspace" => Ok(BackendKind::Userspace),
            "engine" => Ok(BackendKind::Engine),
            other => Err(Error::invalid(
                "backend",
                format!("{other:?} is not \"kernel\", \"userspace\" or \"engine\""),
            )),
        }
    }
}

/// What a configuration asks for: a kind, or whichever is available.
///
/// ```
/// use wg_netns::{BackendChoice, BackendKind};
/// assert_eq!("auto".parse::<BackendChoice>()?, BackendChoice::Auto);
/// assert_eq!("".parse::<BackendChoice>()?, BackendChoice::Auto);
/// assert_eq!("kernel".parse::<BackendChoice>()?, BackendChoice::Only(BackendKind::Kernel));
/// assert_eq!("engine".parse::<BackendChoice>()?, BackendChoice::Only(BackendKind::Engine));
/// assert_eq!(BackendChoice::Only(BackendKind::Engine).to_string(), "engine");
/// assert!("ebpf".parse::<BackendChoice>().is_err());
/// # Ok::<(), wg_netns::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendChoice {
    /// Kernel WireGuard when the kernel has it, else userspace.
    #[default]
    Auto,
    /// This kind or nothing.
    Only(BackendKind),
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendChoice::Auto => f.write_str("auto"),
            BackendChoice::Only(k) => k.fmt(f),
        }
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "" | "auto" => Ok(BackendChoice::Auto),
            other => other.parse().map(BackendChoice::Only).map_err(|_| {
                Error::invalid(
                    "backend",
                    format!(
                        "{other:?} is not one of \"auto\", \"kernel\", \"userspace\", \"engine\""
                    ),
                )
            }),
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for BackendChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for BackendChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Backend {
    /// True when the running kernel has WireGuard (the `wireguard` generic
    /// netlink family resolves; the kernel loads the module on demand).
    pub fn kernel_available() -> bool {
        Self::probe_kernel().unwrap_or(false)
    }

    /// Like [`Backend::kernel_available`], but a failure to ask (the netlink
    /// socket or request failing) is an error rather than "no".
    pub fn probe_kernel() -> Result<bool> {
        KernelConn::current().map(|c| c.is_some())
    }

    /// Kernel WireGuard when available, else wireguard-go when it is
    /// installed, else [`Error::NoBackend`]. Reads no environment; see
    /// [`Backend::choose`] to name the userspace implementation.
    pub fn detect() -> Result<Backend> {
        Self::choose(BackendChoice::Auto, Userspace::default())
    }

    /// The backend `choice` asks for, with `userspace` as the userspace
    /// implementation. [`Error::NoBackend`] when the chosen kind is not
    /// available here; another error when the kernel could not be asked.
    /// `engine` is the daemon with its defaults ([`EngineDaemon::default`]),
    /// available when it answers or its program is installed; `auto` never
    /// picks it (yet).
    ///
    /// ```no_run
    /// use wg_netns::{Backend, BackendChoice, Userspace};
    /// // As a CNI plugin does: the implementation from WG_USERSPACE_IMPLEMENTATION.
    /// let b = Backend::choose("auto".parse()?, Userspace::from_env())?;
    /// # Ok::<(), wg_netns::Error>(())
    /// ```
    pub fn choose(choice: BackendChoice, userspace: Userspace) -> Result<Backend> {
        let userspace_or = |why: &str| {
            if userspace.resolve().is_some() {
                Ok(Backend::Userspace(userspace.clone()))
            } else {
                Err(Error::NoBackend(format!(
                    "{why}{} is not installed",
                    userspace.program.display()
                )))
            }
        };
        match choice {
            BackendChoice::Only(BackendKind::Kernel) if Self::probe_kernel()? => {
                Ok(Backend::Kernel)
            }
            BackendChoice::Only(BackendKind::Kernel) => Err(Error::NoBackend(
                "kernel WireGuard was asked for and the kernel has none".into(),
            )),
            BackendChoice::Only(BackendKind::Userspace) => userspace_or(""),
            BackendChoice::Only(BackendKind::Engine) => {
                let engine = EngineDaemon::default();
                if engine.available() {
                    Ok(Backend::Engine(engine))
                } else {
                    Err(Error::NoBackend(format!(
                        "the engine daemon does not answer on {} and {} is not installed",
                        engine.control_socket.display(),
                        engine.program.display()
                    )))
                }
            }
            BackendChoice::Auto if Self::probe_kernel()? => Ok(Backend::Kernel),
            BackendChoice::Auto => userspace_or("the kernel has no WireGuard and "),
        }
    }

    /// Parse an explicit choice (see [`BackendChoice`]) and
    /// [`choose`](Backend::choose) with the userspace implementation named by
    /// `WG_USERSPACE_IMPLEMENTATION`.
    pub fn from_choice(choice: &str) -> Result<Backend> {
        Self::choose(choice.parse()?, Userspace::from_env())
    }

    /// A backend of `kind` without probing, for a device that exists already
    /// (found in a record): `userspace` is used for the userspace kind, the
    /// default [`EngineDaemon`] for the engine.
    pub fn of_kind(kind: BackendKind, userspace: Userspace) -> Backend {
        match kind {
            BackendKind::Kernel => Backend::Kernel,
            BackendKind::Userspace => Backend::Userspace(userspace),
            BackendKind::Engine => Backend::Engine(EngineDaemon::default()),
        }
    }

    /// The kind of this backend.
    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Kernel => BackendKind::Kernel,
            Backend::Userspace(_) => BackendKind::Userspace,
            Backend::Engine(_) => BackendKind::Engine,
        }
    }
}

#[derive(Debug)]
enum Control {
    Kernel {
        conn: Arc<KernelConn>,
        dev: DevRef,
    },
    Userspace {
        conn: UapiConn,
        userspace: Userspace,
    },
    /// An engine device: UAPI as for userspace, created and deleted through
    /// the daemon.
    Engine {
        conn: UapiConn,
        engine: EngineDaemon,
    },
}

/// A handle to configure and read one WireGuard device.
///
/// Kernel devices are addressed by interface index when the handle was
/// opened by index (as [`crate::Birthplace`] does: a rename does not break
/// it), else by name, in the namespace the handle was opened in; userspace
/// and engine devices by the name of their control socket, which keeps the
/// interface's *birth* name after a rename or a move.
///
/// A handle is `Send + Sync`: share it in an `Arc` across threads; requests
/// on one handle are serialized.
#[derive(Debug)]
pub struct WgDevice {
    control: Control,
}

impl WgDevice {
    /// Create a device called `name` in `netns`. Its UDP socket will live in
    /// `netns` for the device's whole life, wherever the interface is moved.
    /// An engine device's TUN is born in `netns` too (see
    /// [`crate::Birthplace`] for one born elsewhere).
    pub fn create(netns: &Netns, name: &IfName, backend: &Backend) -> Result<(WgDevice, Link)> {
        Self::create_with(netns, &Rtnl::open(netns)?, name, backend)
    }

    /// [`WgDevice::create`] with a route-netlink socket already open in `netns`.
    pub(crate) fn create_with(
        netns: &Netns,
        rtnl: &Rtnl,
        name: &IfName,
        backend: &Backend,
    ) -> Result<(WgDevice, Link)> {
        match backend {
            Backend::Kernel => {
                let link = rtnl.create_wireguard(name)?;
                match Self::open_kernel(netns, name) {
                    Ok(dev) => Ok((dev, link)),
                    Err(e) => {
                        let _ = rtnl.delete_link(link.index);
                        Err(e)
                    }
                }
            }
            Backend::Userspace(u) => {
                if rtnl.link_by_name(name).is_ok() {
                    return Err(Error::Netlink {
                        op: "create userspace device",
                        target: name.to_string(),
                        source: std::io::Error::from_raw_os_error(crate::error::libc_errno::EEXIST),
                    });
                }
                let conn = netns.run(|| u.start(name.as_str()))??;
                let dev = WgDevice {
                    control: Control::Userspace {
                        conn,
                        userspace: u.clone(),
                    },
                };
                match rtnl.link_by_name(name) {
                    Ok(link) => Ok((dev, link)),
                    Err(e) => {
                        let _ = dev.stop_daemon();
                        Err(e)
                    }
                }
            }
            Backend::Engine(engine) => {
                let dev = Self::create_engine(
                    engine,
                    name,
                    netns,
                    netns,
                    crate::engine::proto::DEFAULT_MTU,
                )?;
                match rtnl.link_by_name(name) {
                    Ok(link) => Ok((dev, link)),
                    Err(e) => {
                        let _ = dev.stop_daemon();
                        Err(e)
                    }
                }
            }
        }
    }

    /// Have the engine create device `name` with its TUN in `tun_ns` and
    /// its UDP socket in `udp_ns`, and open its UAPI socket. The engine
    /// refuses a name taken by another interface in `tun_ns`. A device it
    /// hosts there already is an error here too (as a second daemon of one
    /// name is for userspace), and is left alone: creating is for new
    /// devices; [`crate::Birthplace::ensure`] keeps existing ones.
    pub(crate) fn create_engine(
        engine: &EngineDaemon,
        name: &IfName,
        tun_ns: &Netns,
        udp_ns: &Netns,
        mtu: u16,
    ) -> Result<WgDevice> {
        let created = engine.create(name, tun_ns, udp_ns, mtu)?;
        if !created {
            return Err(Error::Engine {
                op: "create",
                kind: crate::engine::proto::ErrorKind::Exists,
                reason: format!("the engine already hosts {name} in that namespace"),
            });
        }
        match engine.uapi(name.as_str()) {
            Ok(conn) => Ok(WgDevice {
                control: Control::Engine {
                    conn,
                    engine: engine.clone(),
                },
            }),
            Err(e) => {
                let _ = engine.delete(name);
                Err(e)
            }
        }
    }

    /// Open the engine device whose UAPI socket is `socket_name` (its birth
    /// name). [`Error::NotFound`] if nothing answers. When the daemon is
    /// down but holds a record of the device, it is started first (with
    /// [`EngineDaemon::start_on_demand`]): it takes the device back, with
    /// the pod's interface as it was, so that a caller repairing the
    /// device (`ensure`) configures it rather than making a new one.
    pub fn open_engine(engine: &EngineDaemon, socket_name: &str) -> Result<WgDevice> {
        let conn = match engine.uapi(socket_name) {
            Err(e)
                if e.is_not_found()
                    && engine.start_on_demand
                    && engine.record_path(socket_name).exists()
                    && !engine.answers() =>
            {
                engine.start()?;
                engine.uapi(socket_name)?
            }
            r => r?,
        };
        Ok(WgDevice {
            control: Control::Engine {
                conn,
                engine: engine.clone(),
            },
        })
    }

    /// Open the kernel device `name` in `netns`.
    pub fn open_kernel(netns: &Netns, name: &IfName) -> Result<WgDevice> {
        Self::open_kernel_ref(netns, DevRef::Name(name.to_string()))
    }

    /// Open the kernel device with interface index `index` in `netns`: the
    /// handle keeps working when the interface is renamed.
    pub fn open_kernel_index(netns: &Netns, index: u32) -> Result<WgDevice> {
        Self::open_kernel_ref(netns, DevRef::Index(index))
    }

    fn open_kernel_ref(netns: &Netns, dev: DevRef) -> Result<WgDevice> {
        let conn = netns
            .run(KernelConn::current)??
            .ok_or_else(|| Error::NoBackend("the kernel has no WireGuard".into()))?;
        Ok(Self::from_kernel(Arc::new(conn), dev))
    }

    /// A kernel device handle on a socket shared with other handles.
    pub(crate) fn from_kernel(conn: Arc<KernelConn>, dev: DevRef) -> WgDevice {
        WgDevice {
            control: Control::Kernel { conn, dev },
        }
    }

    /// Open the userspace device whose control socket is `socket_name`
    /// (the interface's birth name). [`Error::NotFound`] if nothing answers.
    pub fn open_userspace(userspace: &Userspace, socket_name: &str) -> Result<WgDevice> {
        let conn = UapiConn::connect(
            socket_name,
            &userspace.socket_path(socket_name),
            userspace.io_timeout,
        )?;
        Ok(WgDevice {
            control: Control::Userspace {
                conn,
                userspace: userspace.clone(),
            },
        })
    }

    /// Which kind of backend drives this device.
    pub fn kind(&self) -> BackendKind {
        match self.control {
            Control::Kernel { .. } => BackendKind::Kernel,
            Control::Userspace { .. } => BackendKind::Userspace,
            Control::Engine { .. } => BackendKind::Engine,
        }
    }

    /// Apply a change, in WireGuard's own terms: only what `cfg` names is
    /// touched, so this is the incremental API. One peer added, changed or
    /// removed costs the same whatever the number of peers on the device.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use wg_netns::{Backend, DeviceConfig, IfName, Netns, PeerConfig, PublicKey, WgDevice};
    /// let dev = WgDevice::open_kernel(&Netns::from_name("pod1")?, &IfName::new("wg0")?)?;
    /// let peer: PublicKey = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".parse()?;
    /// // Change one peer's keepalive, leaving its endpoint and allowed IPs alone.
    /// dev.set(&DeviceConfig::new().peer(
    ///     PeerConfig::new(peer).update_only().persistent_keepalive(Duration::from_secs(10)),
    /// ))?;
    /// // Remove another.
    /// let gone: PublicKey = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=".parse()?;
    /// dev.set(&DeviceConfig::new().peer(PeerConfig::removal(gone)))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set(&self, cfg: &DeviceConfig) -> Result<()> {
        cfg.validate()?;
        match &self.control {
            Control::Kernel { conn, dev } => conn.set(dev, cfg),
            Control::Userspace { conn, .. } | Control::Engine { conn, .. } => conn.set(cfg),
        }
    }

    /// Read the device's state.
    pub fn get(&self) -> Result<Device> {
        match &self.control {
            Control::Kernel { conn, dev } => conn.get(dev),
            Control::Userspace { conn, .. } | Control::Engine { conn, .. } => conn.get(),
        }
    }

    /// Read the device's counters and peers without any key material: no
    /// private or preshared key is kept past this call (they are wiped with
    /// the state they were read in).
    pub fn stats(&self) -> Result<DeviceStats> {
        Ok(DeviceStats::from(&self.get()?))
    }

    /// Bring the device to `desired` (read as a complete desired state, see
    /// [`DeviceConfig::diff`]) by sending only the difference. Returns the
    /// change that was sent (empty when nothing differed).
    pub fn update(&self, desired: &DeviceConfig) -> Result<DeviceConfig> {
        desired.validate()?;
        let diff = desired.diff(&self.get()?);
        if !diff.is_empty() {
            self.set(&diff)?;
        }
        Ok(diff)
    }

    /// Like [`WgDevice::update`], but against a state the caller already
    /// holds (for example the one it last wrote), so nothing is read from the
    /// device and only the difference is sent. Computing the difference still
    /// walks both states, so it grows with the device (about 1 ms for 10,000
    /// peers, docs/benchmarks.md); when the change is already known, send it
    /// with [`WgDevice::set`], whose cost does not depend on the device's size.
    /// Returns the change that was sent.
    pub fn update_from(&self, current: &Device, desired: &DeviceConfig) -> Result<DeviceConfig> {
        desired.validate()?;
        let diff = desired.diff(current);
        if !diff.is_empty() {
            self.set(&diff)?;
        }
        Ok(diff)
    }

    /// For a userspace device, the daemon's process id; for an engine
    /// device, the engine's.
    pub fn daemon_pid(&self) -> Option<u32> {
        match &self.control {
            Control::Userspace { conn, userspace } => userspace.daemon_pid(conn.name()),
            Control::Engine { engine, .. } => engine.daemon_pid(),
            Control::Kernel { .. } => None,
        }
    }

    /// Stop a userspace daemon that is still running (normally it exits by
    /// itself within a second of its interface being deleted). Only processes
    /// of the configured implementation serving this device are signalled.
    /// No-op for kernel devices. An engine device is deleted from its
    /// engine (the engine itself keeps running).
    pub(crate) fn stop_daemon(&self) -> Result<()> {
        match &self.control {
            Control::Kernel { .. } => Ok(()),
            Control::Userspace { conn, userspace } => {
                wait_userspace_gone(userspace, conn.name(), Duration::from_secs(3))
            }
            Control::Engine { conn, engine } => engine.delete(&IfName::new(conn.name())?).map(drop),
        }
    }
}

/// Wait until the daemon of device `name` has gone; if it has not within
/// `grace`, send SIGTERM to its processes, wait again, and remove a stale
/// socket file.
pub(crate) fn wait_userspace_gone(
    userspace: &Userspace,
    name: &str,
    grace: Duration,
) -> Result<()> {
    let socket = userspace.socket_path(name);
    let pids: Vec<u32> = userspace.daemon_pid(name).into_iter().collect();
    let gone = |deadline: Instant| loop {
        if !socket.exists() && pids.iter().all(|p| !process_alive(*p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(crate::uapi::POLL);
    };
    if gone(Instant::now() + grace) {
        return Ok(());
    }
    let stuck: Vec<u32> = userspace
        .daemon_pid(name)
        .into_iter()
        .chain(pids.clone())
        .filter(|p| process_alive(*p) && userspace.is_implementation(*p))
        .collect();
    for pid in &stuck {
        if let Some(p) = rustix::process::Pid::from_raw(*pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
    }
    if stuck.is_empty() && socket.exists() {
        // Nothing here to signal, yet the socket is there: a daemon outside
        // this PID namespace (started by a `Launcher` on the host), or a
        // stale file. A daemon whose socket is deleted exits.
        let _ = std::fs::remove_file(&socket);
    }
    gone(Instant::now() + Duration::from_secs(3));
    // Nobody answers on it any more: a stale file.
    if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_err() {
        let _ = std::fs::remove_file(&socket);
    }
    if socket.exists() {
        return Err(Error::Uapi {
            device: socket.display().to_string(),
            reason: "the daemon is still running after its interface was removed".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_word() {
        for k in [
            BackendKind::Kernel,
            BackendKind::Userspace,
            BackendKind::Engine,
        ] {
            assert_eq!(k.as_str().parse::<BackendKind>().unwrap(), k);
            assert_eq!(
                k.to_string().parse::<BackendChoice>().unwrap(),
                BackendChoice::Only(k)
            );
            assert_eq!(
                Backend::of_kind(k, Userspace::new("wireguard-go")).kind(),
                k
            );
        }
        assert!("Engine".parse::<BackendKind>().is_err());
    }

    #[cfg(feature = "serde")]
    #[test]
    fn the_engine_kind_is_engine_in_records() {
        let v = serde_json::to_string(&BackendKind::Engine).unwrap();
        assert_eq!(v, "\"engine\"");
        assert_eq!(
            serde_json::from_str::<BackendKind>(&v).unwrap(),
            BackendKind::Engine
        );
        assert_eq!(
            serde_json::from_str::<BackendChoice>("\"engine\"").unwrap(),
            BackendChoice::Only(BackendKind::Engine)
        );
    }
}
