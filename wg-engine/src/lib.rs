//! A userspace WireGuard engine (spike): one long-lived process hosting many
//! WireGuard devices on [gotatun](https://crates.io/crates/gotatun), each
//! with its TUN interface born in one network namespace (a pod's) and its
//! UDP socket in another (the node's), each configured over the standard
//! UAPI socket `DIR/NAME.sock`, so that wg-netns's userspace backend and
//! `wg show`/`wg set` drive it like wireguard-go.
//!
//! ```no_run
//! use wg_engine::{DeviceSpec, Engine, EngineConfig};
//! use wg_netns::Netns;
//! let engine = Engine::new(EngineConfig::default())?;
//! let pod = Netns::from_name("pod1")?;
//! let node = Netns::current()?;
//! engine.create_device(&DeviceSpec::new("wg0pod1", &pod, &node))?;
//! // configure through /var/run/wireguard/wg0pod1.sock, e.g. with
//! // wg_netns::WgDevice::open_userspace(..).set(..)
//! engine.remove_device("wg0pod1")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`daemon`] is the engine as the node's daemon (`wg-engine serve`), which
//! wg-netns's engine backend (`wg_netns::engine`) talks to over a control
//! socket.
//!
//! Threads: the engine runs one tokio runtime (a fixed number of workers)
//! for all its devices; a device costs tokio tasks (gotatun's seven plus
//! one for its control socket), no thread. Entering a namespace (to create
//! a TUN or bind a socket) takes a short-lived thread.

#![warn(missing_docs)]

pub mod daemon;
mod tun;
mod uapi;
mod udp;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gotatun::device::{Device, DeviceBuilder};
use rustix::fs::OFlags;
use tokio::net::UnixListener;
use tokio::sync::{oneshot, watch};

use wg_netns::{IfName, Netns};

/// The transports of an engine device: UDP bound in the node's namespace,
/// TUN born in the pod's.
type Transports = (udp::NsUdpFactory, tun::Tun, tun::Tun);

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The device name is not a valid interface name.
    #[error("invalid device name {name:?}: {source}")]
    Name {
        /// The name given.
        name: String,
        /// Why it is invalid.
        source: wg_netns::Error,
    },
    /// This engine already hosts a device of that name.
    #[error("device {0} already exists in this engine")]
    Exists(String),
    /// Another process serves the control socket of that name.
    #[error("control socket {} is served by another process", .0.display())]
    SocketInUse(PathBuf),
    /// No device of that name.
    #[error("no device {0} in this engine")]
    NotFound(String),
    /// A system call failed.
    #[error("{op} for device {name}: {source}")]
    Io {
        /// The device.
        name: String,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A namespace or netlink operation failed.
    #[error("{op} for device {name}: {source}")]
    Netns {
        /// The device.
        name: String,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: wg_netns::Error,
    },
    /// gotatun refused to build the device.
    #[error("gotatun, device {name}: {source}")]
    Gotatun {
        /// The device.
        name: String,
        /// The error.
        source: gotatun::device::Error,
    },
}

impl Error {
    /// For device `name`: what makes an [`Error::Io`] of an operation's
    /// I/O error (`map_err(io("binding"))`).
    fn io(name: &str) -> impl Fn(&'static str) -> Box<dyn FnOnce(std::io::Error) -> Error> {
        let name = name.to_string();
        move |op| {
            let name = name.clone();
            Box::new(move |source| Error::Io { name, op, source })
        }
    }

    /// For device `name`: what makes an [`Error::Netns`] of an
    /// operation's namespace or netlink error.
    fn netns(name: &str) -> impl Fn(&'static str) -> Box<dyn FnOnce(wg_netns::Error) -> Error> {
        let name = name.to_string();
        move |op| {
            let name = name.clone();
            Box::new(move |source| Error::Netns { name, op, source })
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Directory of the control sockets (`DIR/NAME.sock`).
    pub socket_dir: PathBuf,
    /// Worker threads of the runtime shared by all devices.
    pub worker_threads: usize,
    /// Serve the control sockets with gotatun's own UAPI server instead of
    /// the engine's: only to compare their behaviour (gotatun's `set`
    /// re-creates every peer it names, losing its session).
    #[doc(hidden)]
    pub gotatun_uapi: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            socket_dir: PathBuf::from(wg_netns::DEFAULT_SOCKET_DIR),
            worker_threads: 2,
            gotatun_uapi: false,
        }
    }
}

impl EngineConfig {
    /// Control sockets in `dir` instead of `/var/run/wireguard`.
    pub fn socket_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.socket_dir = dir.into();
        self
    }

    /// `n` (at least 1) runtime worker threads.
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = n.max(1);
        self
    }
}

/// Where a device's two halves live.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSpec<'a> {
    /// Interface name (and control socket name).
    pub name: &'a str,
    /// The namespace where the TUN interface is created (the pod's).
    pub tun_ns: &'a Netns,
    /// The namespace where the UDP socket is created (the node's).
    pub udp_ns: &'a Netns,
    /// MTU set on the TUN at creation (wireguard-go's default: 1420).
    pub mtu: u16,
    /// Make the TUN persistent: if this process dies, the interface stays
    /// (with its index, addresses and routes) for the next engine to adopt
    /// ([`Engine::adopt_device`] on a descriptor opened by name). Removing
    /// the device, or dropping the engine, still deletes it.
    pub persist: bool,
}

impl<'a> DeviceSpec<'a> {
    /// A device `name`, TUN in `tun_ns`, UDP in `udp_ns`, MTU 1420.
    pub fn new(name: &'a str, tun_ns: &'a Netns, udp_ns: &'a Netns) -> Self {
        DeviceSpec {
            name,
            tun_ns,
            udp_ns,
            mtu: 1420,
            persist: false,
        }
    }

    /// The same device with a persistent TUN (see [`DeviceSpec::persist`]).
    pub fn persistent(mut self) -> Self {
        self.persist = true;
        self
    }
}

struct Hosted {
    id: u64,
    persist: bool,
    tun: std::sync::Weak<tokio::io::unix::AsyncFd<OwnedFd>>,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

/// Called with a device's name when the engine drops it on its own (its
/// TUN went away, e.g. with its namespace).
type GoneHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Called with a device's name and listen port after a UAPI `set` that
/// named a listen port succeeded.
type PortHook = Arc<dyn Fn(&str, u16) + Send + Sync>;

struct Inner {
    devices: Mutex<HashMap<String, Hosted>>,
    on_gone: Mutex<Option<GoneHook>>,
    on_port: Mutex<Option<PortHook>>,
}

impl Inner {
    fn devices(&self) -> std::sync::MutexGuard<'_, HashMap<String, Hosted>> {
        // A panic while the map was held leaves it consistent (plain inserts
        // and removes): keep using it.
        self.devices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A process-wide host of WireGuard devices. Dropping it removes them all
/// (their TUN interfaces and control sockets).
pub struct Engine {
    rt: Option<tokio::runtime::Runtime>,
    socket_dir: PathBuf,
    gotatun_uapi: bool,
    inner: Arc<Inner>,
    next_id: std::sync::atomic::AtomicU64,
}

impl Engine {
    /// Start an engine (its runtime); no device yet.
    pub fn new(config: EngineConfig) -> Result<Engine, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads.max(1))
            .thread_name("wg-engine")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                name: String::new(),
                op: "starting the runtime",
                source,
            })?;
        Ok(Engine {
            rt: Some(rt),
            socket_dir: config.socket_dir,
            gotatun_uapi: config.gotatun_uapi,
            inner: Arc::new(Inner {
                devices: Mutex::new(HashMap::new()),
                on_gone: Mutex::new(None),
                on_port: Mutex::new(None),
            }),
            next_id: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Call `f` with a device's name whenever the engine drops that device
    /// on its own because its TUN went away (its namespace was deleted, or
    /// someone deleted the link): not for [`Engine::remove_device`].
    pub fn on_device_gone(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        *self
            .inner
            .on_gone
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(f));
    }

    /// Call `f` with a device's name and its listen port whenever a `set`
    /// over its UAPI socket that names a listen port succeeds (so that an
    /// owner can record the port). Runs on the engine's runtime: it must
    /// not block.
    pub fn on_listen_port_set(&self, f: impl Fn(&str, u16) + Send + Sync + 'static) {
        *self
            .inner
            .on_port
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(f));
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        // Only `Drop` takes the runtime.
        self.rt.as_ref().expect("runtime present until drop")
    }

    /// The control socket of device `name`.
    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.socket_dir.join(format!("{name}.sock"))
    }

    /// The directory of the control sockets.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The names of the devices hosted now (a device whose TUN was deleted
    /// is dropped by the engine, as wireguard-go exits).
    pub fn devices(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.devices().keys().cloned().collect();
        v.sort();
        v
    }

    /// Create a device: its TUN interface `spec.name` in `spec.tun_ns`
    /// (down, no address: the caller configures the link as it would
    /// wireguard-go's), its control socket, and, once a private key is set
    /// over that socket, its UDP socket in `spec.udp_ns`.
    ///
    /// Not to be called from inside an async runtime (it blocks).
    pub fn create_device(&self, spec: &DeviceSpec<'_>) -> Result<(), Error> {
        self.host(spec, None)
    }

    /// Host a device on a TUN descriptor that already exists (`tun`, an
    /// fd on the interface `spec.name` in `spec.tun_ns`), e.g. one handed
    /// over by the process that hosted it before ([`Engine::tun_fd`], then
    /// `SCM_RIGHTS`): the interface keeps its index, addresses and routes.
    /// Its MTU is left alone. gotatun has no way to import sessions: peers
    /// handshake again once configured.
    pub fn adopt_device(&self, spec: &DeviceSpec<'_>, tun: OwnedFd) -> Result<(), Error> {
        self.host(spec, Some(tun))
    }

    /// A duplicate of device `name`'s TUN descriptor: while it is open the
    /// interface survives the device's removal (for a handover).
    pub fn tun_fd(&self, name: &str) -> Result<OwnedFd, Error> {
        let fd = self
            .inner
            .devices()
            .get(name)
            .and_then(|h| h.tun.upgrade())
            .ok_or_else(|| Error::NotFound(name.to_string()))?;
        fd.get_ref().try_clone().map_err(|source| Error::Io {
            name: name.to_string(),
            op: "duplicating the TUN descriptor",
            source,
        })
    }

    fn host(&self, spec: &DeviceSpec<'_>, adopted: Option<OwnedFd>) -> Result<(), Error> {
        let name = IfName::new(spec.name).map_err(|source| Error::Name {
            name: spec.name.to_string(),
            source,
        })?;
        let key = name.as_str().to_string();
        let (io, netns) = (Error::io(&key), Error::netns(&key));
        if self.inner.devices().contains_key(&key) {
            return Err(Error::Exists(key));
        }
        let path = self.socket_path(&key);
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(Error::SocketInUse(path));
        }
        std::fs::create_dir_all(&self.socket_dir).map_err(io("creating the socket directory"))?;
        // A socket nobody serves is a leftover (a killed daemon).
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing a stale control socket")(e))
            }
            _ => {}
        }

        let fresh = adopted.is_none();
        let fd = match adopted {
            Some(fd) => {
                rustix::fs::fcntl_setfl(&fd, OFlags::NONBLOCK | OFlags::RDWR)
                    .map_err(|e| io("making the TUN non-blocking")(e.into()))?;
                if spec.persist {
                    tun::set_persist(&fd, true).map_err(io("making the TUN persistent"))?;
                }
                fd
            }
            None => {
                let fd = tun::open_in(spec.tun_ns, &name)?;
                // The link exists from here; closing `fd` (on any error
                // below) deletes it.
                let rtnl = wg_netns::Rtnl::open(spec.tun_ns)
                    .map_err(netns("netlink in the TUN's namespace"))?;
                let link = rtnl
                    .link_by_name(&name)
                    .map_err(netns("finding the new TUN"))?;
                rtnl.set_mtu(link.index, u32::from(spec.mtu))
                    .map_err(netns("setting the MTU"))?;
                if spec.persist {
                    // Undone before the descriptor closes on any error
                    // below, so that the new link still goes with it.
                    tun::set_persist(&fd, true).map_err(io("making the TUN persistent"))?;
                }
                fd
            }
        };
        let undo = (fresh && spec.persist)
            .then(|| fd.try_clone().ok())
            .flatten();
        let r = self.serve(spec, key, fd, path);
        if r.is_err() {
            // A new link must not outlive a failed creation.
            if let Some(d) = undo {
                let _ = tun::set_persist(&d, false);
            }
        }
        r
    }

    /// Host the device on its TUN descriptor `fd`: gotatun, the control
    /// socket at `path`, the supervising task.
    fn serve(
        &self,
        spec: &DeviceSpec<'_>,
        key: String,
        fd: OwnedFd,
        path: PathBuf,
    ) -> Result<(), Error> {
        let (io, netns) = (Error::io(&key), Error::netns(&key));
        let udp_ns = Arc::new(
            spec.udp_ns
                .try_clone()
                .map_err(netns("holding the UDP namespace"))?,
        );

        let rt = self.rt();
        let _entered = rt.enter();
        let (tun, dead) = tun::Tun::new(fd, spec.mtu).map_err(io("registering the TUN"))?;
        let tun_alive = tun.weak();
        let factory = udp::NsUdpFactory::new(udp_ns, rt.handle().clone());
        let builder = DeviceBuilder::new().with_udp(factory).with_ip(tun);
        let (api, builder) = if self.gotatun_uapi {
            let (client, server) = gotatun::device::uapi::UapiServer::new();
            (Api::Gotatun(client), builder.with_uapi(server))
        } else {
            (Api::Engine, builder)
        };
        let device = rt
            .block_on(builder.build())
            .map_err(|source| Error::Gotatun {
                name: key.clone(),
                source,
            })?;
        let listener = UnixListener::bind(&path).map_err(io("binding the control socket"))?;

        let (stop_tx, stop_rx) = oneshot::channel();
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut devices = self.inner.devices();
        let done = rt.spawn(supervise(Supervised {
            name: key.clone(),
            id,
            device: Arc::new(device),
            api,
            listener,
            path,
            dead,
            stop: stop_rx,
            tun_alive: tun_alive.clone(),
            inner: Arc::clone(&self.inner),
        }));
        devices.insert(
            key,
            Hosted {
                id,
                persist: spec.persist,
                tun: tun_alive,
                stop: stop_tx,
                done,
            },
        );
        Ok(())
    }

    /// Remove device `name`: its sessions, control socket, UDP socket and
    /// TUN interface. Returns once all are gone.
    pub fn remove_device(&self, name: &str) -> Result<(), Error> {
        let hosted = self
            .inner
            .devices()
            .remove(name)
            .ok_or_else(|| Error::NotFound(name.to_string()))?;
        unpersist(&hosted);
        let _ = hosted.stop.send(());
        let _ = self.rt().block_on(hosted.done);
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let all: Vec<Hosted> = self.inner.devices().drain().map(|(_, h)| h).collect();
        if let Some(rt) = self.rt.take() {
            for h in all {
                unpersist(&h);
                let _ = h.stop.send(());
                let _ = rt.block_on(h.done);
            }
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Let a persistent device's TUN go with its last descriptor again.
fn unpersist(h: &Hosted) {
    if h.persist {
        if let Some(fd) = h.tun.upgrade() {
            let _ = tun::set_persist(fd.get_ref(), false);
        }
    }
}

/// Who answers a device's control socket.
enum Api {
    /// The engine (uapi.rs).
    Engine,
    /// gotatun's own server, through its client handle.
    Gotatun(gotatun::device::uapi::UapiClient),
}

struct Supervised {
    name: String,
    id: u64,
    device: Arc<Device<Transports>>,
    api: Api,
    listener: UnixListener,
    path: PathBuf,
    dead: watch::Receiver<bool>,
    stop: oneshot::Receiver<()>,
    tun_alive: std::sync::Weak<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    inner: Arc<Inner>,
}

/// A device's life: serve its control socket until it is removed or its
/// TUN goes away, then tear it down.
async fn supervise(s: Supervised) {
    let Supervised {
        name,
        id,
        device,
        api,
        listener,
        path,
        mut dead,
        mut stop,
        tun_alive,
        inner,
    } = s;
    let weak = Arc::downgrade(&device);
    // gotatun reads the TUN only once the device has a key: until then only
    // this notices the interface being deleted (a deleted TUN polls as
    // EPOLLERR and nothing else). It holds a TUN handle: dropped with the
    // block, before the wait for the last handle below.
    let by_engine = {
        let tun_error = {
            let fd = tun_alive.upgrade();
            async move {
                match fd {
                    Some(fd) => drop(fd.ready(tokio::io::Interest::ERROR).await),
                    None => std::future::pending::<()>().await,
                }
            }
        };
        tokio::pin!(tun_error);
        loop {
            tokio::select! {
                _ = &mut stop => break true,
                _ = async { dead.wait_for(|d| *d).await.is_ok() } => break false,
                () = &mut tun_error => break false,
                conn = listener.accept() => match conn {
                    Ok((stream, _)) => match &api {
                        Api::Engine => {
                            let hook = inner
                                .on_port
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .clone();
                            let name = name.clone();
                            let on_port = hook.map(|h| move |port: u16| h(&name, port));
                            tokio::spawn(uapi::serve(stream, weak.clone(), on_port));
                        }
                        // gotatun serves a blocking stream on a thread of its own.
                        Api::Gotatun(client) => {
                            if let Ok(s) = stream.into_std() {
                                if s.set_nonblocking(false).is_ok() {
                                    client.clone().wrap_read_write(s);
                                }
                            }
                        }
                    },
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
            }
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(&path);
    if !by_engine {
        // The TUN went away on its own: forget the device, unless a new
        // device of the same name replaced it meanwhile.
        let mine = {
            let mut devices = inner.devices();
            let mine = devices.get(&name).is_some_and(|h| h.id == id);
            if mine {
                devices.remove(&name);
            }
            mine
        };
        let hook = inner
            .on_gone
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let (true, Some(hook)) = (mine, hook) {
            hook(&name);
        }
    }
    match Arc::try_unwrap(device) {
        Ok(d) => d.stop().await,
        // A request is being served; gotatun stops the device when the last
        // handle drops.
        Err(d) => drop(d),
    }
    // Wait for gotatun to drop the last TUN handle (closing the descriptor
    // deletes the interface), so that removal is complete on return.
    let deadline = Instant::now() + Duration::from_secs(2);
    while tun_alive.strong_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
