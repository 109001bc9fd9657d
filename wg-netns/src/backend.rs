//! One type for both WireGuard implementations: [`Backend`] says which to use,
//! [`WgDevice`] configures and reads a device whichever it is.
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

use std::time::{Duration, Instant};

use crate::device::{Device, DeviceConfig};
use crate::error::{Error, Result};
use crate::kernel::KernelConn;
use crate::netns::Netns;
use crate::rtnl::{IfName, Link, Rtnl};
use crate::uapi::{process_alive, UapiConn, Userspace};

/// Which WireGuard implementation drives a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The Linux kernel module, over generic netlink.
    Kernel,
    /// A userspace implementation over its UAPI socket.
    Userspace(Userspace),
}

/// The two kinds of backend, without their settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// Kernel WireGuard.
    Kernel,
    /// Userspace WireGuard.
    Userspace,
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

    /// Kernel WireGuard when available, else the userspace implementation
    /// named by `WG_USERSPACE_IMPLEMENTATION` (default `wireguard-go`) when it
    /// is installed, else [`Error::NoBackend`].
    pub fn detect() -> Result<Backend> {
        if Self::kernel_available() {
            return Ok(Backend::Kernel);
        }
        let u = Userspace::from_env();
        if u.resolve().is_some() {
            return Ok(Backend::Userspace(u));
        }
        Err(Error::NoBackend(format!(
            "the kernel has no WireGuard and {} is not installed",
            u.program.display()
        )))
    }

    /// Parse an explicit choice: `"kernel"`, `"userspace"` (implementation
    /// from the environment), or `"auto"` / empty for [`Backend::detect`].
    pub fn from_choice(choice: &str) -> Result<Backend> {
        match choice {
            "" | "auto" => Self::detect(),
            "kernel" => Ok(Backend::Kernel),
            "userspace" => Ok(Backend::Userspace(Userspace::from_env())),
            other => Err(Error::invalid(
                "backend",
                format!("{other:?} is not one of \"auto\", \"kernel\", \"userspace\""),
            )),
        }
    }

    /// The kind of this backend.
    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Kernel => BackendKind::Kernel,
            Backend::Userspace(_) => BackendKind::Userspace,
        }
    }
}

#[derive(Debug)]
enum Control {
    Kernel {
        conn: KernelConn,
        ifname: IfName,
    },
    Userspace {
        conn: UapiConn,
        userspace: Userspace,
    },
}

/// A handle to configure and read one WireGuard device.
///
/// Kernel devices are addressed by their current name in the namespace the
/// handle was opened in; userspace devices by the name of their control
/// socket, which keeps the interface's *birth* name after a rename or a move.
#[derive(Debug)]
pub struct WgDevice {
    control: Control,
}

impl WgDevice {
    /// Create a device called `name` in `netns`. Its UDP socket will live in
    /// `netns` for the device's whole life, wherever the interface is moved.
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
        }
    }

    /// Open the kernel device `name` in `netns`.
    pub fn open_kernel(netns: &Netns, name: &IfName) -> Result<WgDevice> {
        let conn = netns
            .run(KernelConn::current)??
            .ok_or_else(|| Error::NoBackend("the kernel has no WireGuard".into()))?;
        Ok(WgDevice {
            control: Control::Kernel {
                conn,
                ifname: name.clone(),
            },
        })
    }

    /// Open the userspace device whose control socket is `socket_name`
    /// (the interface's birth name). [`Error::NotFound`] if nothing answers.
    pub fn open_userspace(userspace: &Userspace, socket_name: &str) -> Result<WgDevice> {
        let conn = UapiConn::connect(socket_name, &userspace.socket_path(socket_name))?;
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
            Control::Kernel { conn, ifname } => conn.set(ifname.as_str(), cfg),
            Control::Userspace { conn, .. } => conn.set(cfg),
        }
    }

    /// Read the device's state.
    pub fn get(&self) -> Result<Device> {
        match &self.control {
            Control::Kernel { conn, ifname } => conn.get(ifname.as_str()),
            Control::Userspace { conn, .. } => conn.get(),
        }
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

    /// For a userspace device, the daemon's process id.
    pub fn daemon_pid(&self) -> Option<u32> {
        match &self.control {
            Control::Userspace { conn, userspace } => userspace.daemon_pid(conn.name()),
            Control::Kernel { .. } => None,
        }
    }

    /// Stop a userspace daemon that is still running (normally it exits by
    /// itself within a second of its interface being deleted). Only processes
    /// of the configured implementation serving this device are signalled.
    /// No-op for kernel devices.
    pub(crate) fn stop_daemon(&self) -> Result<()> {
        let Control::Userspace { conn, userspace } = &self.control else {
            return Ok(());
        };
        wait_userspace_gone(userspace, conn.name(), Duration::from_secs(3))
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
    let stuck = userspace.daemon_pid(name).into_iter().chain(pids.clone());
    for pid in stuck.filter(|p| process_alive(*p) && userspace.is_implementation(*p)) {
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
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
