//! `wg-engine serve`: the engine as the node's daemon. It hosts every
//! engine device of the node, answers the control protocol of
//! [`wg_netns::engine::proto`] on a root-only unix socket, and keeps one
//! record per device in its state directory so that a restarted daemon
//! takes its devices back.
//!
//! - **Control socket**: mode 0600 in a 0700 directory, and every
//!   connection's `SO_PEERCRED` must say uid 0: anyone else is answered
//!   `error=refused`. One request per connection; requests are served one
//!   at a time.
//! - **Single instance**: the daemon holds an exclusive `flock` on
//!   `CONTROL.lock` for its whole life; a second one (two clients starting
//!   it on demand at once) exits with [`DaemonError::AlreadyRunning`].
//! - **Devices** have persistent TUNs: when the daemon dies (crash, kill,
//!   upgrade) the pod keeps its interface, index, addresses and routes;
//!   WireGuard traffic stops until a daemon runs again and the device's
//!   owner sets its key and peers again (keys are never written to disk).
//! - **Records**: `STATE/devices/NAME.json` ([`DeviceRecord`]): the
//!   namespace paths with their `(dev, inode)`, MTU, interface index and
//!   the listen port last set over UAPI. On
//!   start, a record whose namespace path no longer opens to the recorded
//!   inode is dropped (the pod is gone; a surviving UDP-less TUN is
//!   deleted); otherwise the recorded TUN is adopted (found by index, opened
//!   by its current name), or created again when it is gone.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wg_netns::engine::proto::{self, Create, DeviceInfo, ErrorKind, Reply, Request};
use wg_netns::engine::DEVICES_DIR;
use wg_netns::{IfName, Netns, Rtnl};

use crate::{DeviceSpec, Engine, EngineConfig};

/// How long one control connection may take to send its request or read
/// its reply.
const CONN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the daemon listens and keeps things.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The control socket.
    pub control: PathBuf,
    /// The devices' UAPI sockets' directory.
    pub socket_dir: PathBuf,
    /// The records' directory.
    pub state_dir: PathBuf,
    /// Runtime worker threads shared by all devices.
    pub worker_threads: usize,
}

impl Config {
    /// The daemon at `control`, UAPI sockets in `socket_dir`, records in
    /// `state_dir`, two workers.
    pub fn new(control: PathBuf, socket_dir: PathBuf, state_dir: PathBuf) -> Self {
        Config {
            control,
            socket_dir,
            state_dir,
            worker_threads: 2,
        }
    }
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another daemon holds the control socket's lock.
    #[error("another wg-engine serves {}", .0.display())]
    AlreadyRunning(PathBuf),
    /// A file system or socket operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] crate::Error),
    /// The daemon's own namespace could not be opened.
    #[error("the daemon's network namespace: {0}")]
    Netns(#[from] wg_netns::Error),
}

fn io_at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DaemonError {
    let path = path.to_path_buf();
    move |source| DaemonError::Io { op, path, source }
}

/// What the daemon keeps about a device, one JSON file per device. Holds
/// no key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Birth name, UAPI socket name.
    pub name: String,
    /// The TUN's namespace, as the client named it.
    pub netns: PathBuf,
    /// Its device number.
    pub netns_dev: u64,
    /// Its inode.
    pub netns_ino: u64,
    /// The UDP socket's namespace; `None`: the daemon's own.
    pub udp_netns: Option<PathBuf>,
    /// Its device number.
    pub udp_netns_dev: u64,
    /// Its inode.
    pub udp_netns_ino: u64,
    /// MTU at creation.
    pub mtu: u16,
    /// The TUN's interface index in its namespace.
    pub ifindex: u32,
    /// The listen port last set over the device's UAPI socket, set again
    /// when the device is taken back after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
}

/// What the engine's hooks tell the daemon's bookkeeping thread.
enum Event {
    /// The device's TUN went away.
    Gone(String),
    /// A listen port was set on the device.
    Port(String, u16),
}

/// The daemon's state: the engine, the records, and its own namespace.
struct State {
    engine: Engine,
    cfg: Config,
    own_ns: Netns,
    /// Records of the hosted devices; the lock also serializes requests.
    records: Mutex<HashMap<String, DeviceRecord>>,
}

fn log(msg: std::fmt::Arguments<'_>) {
    eprintln!("wg-engine[{}]: {msg}", std::process::id());
}

impl State {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, DeviceRecord>> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn records_dir(&self) -> PathBuf {
        self.cfg.state_dir.join(DEVICES_DIR)
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.records_dir().join(format!("{name}.json"))
    }

    /// Write `rec` atomically (a temporary file renamed over it), 0600.
    fn save(&self, rec: &DeviceRecord) -> io::Result<()> {
        let path = self.record_path(&rec.name);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(rec).map_err(io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)
    }

    fn forget(&self, name: &str) {
        match std::fs::remove_file(self.record_path(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                log(format_args!("removing the record of {name}: {e}"))
            }
            _ => {}
        }
    }

    /// Open a recorded namespace: `None` (the daemon's own) or its path,
    /// which must still be the recorded namespace.
    fn reopen(&self, path: Option<&Path>, id: (u64, u64)) -> Option<Netns> {
        let ns = match path {
            None => self.own_ns.try_clone().ok()?,
            Some(p) => Netns::from_path(p).ok()?,
        };
        (ns.id().ok()? == id).then_some(ns)
    }

    /// Take back the device of `rec` after a restart. Returns the record
    /// to keep (its interface index may have changed), or `None` to drop.
    fn restore(&self, mut rec: DeviceRecord) -> Option<DeviceRecord> {
        let name = IfName::new(rec.name.as_str()).ok()?;
        let Some(tun_ns) = self.reopen(Some(&rec.netns), (rec.netns_dev, rec.netns_ino)) else {
            log(format_args!(
                "{}: namespace {} is gone, record dropped",
                rec.name,
                rec.netns.display()
            ));
            return None;
        };
        let rtnl = Rtnl::open(&tun_ns).ok()?;
        let alias = wg_netns::owner_alias(&name);
        let ours = rtnl
            .link_by_index(rec.ifindex)
            .ok()
            .filter(|l| l.kind.as_deref() == Some("tun"))
            .filter(|l| l.name == rec.name || l.alias.as_deref() == Some(alias.as_str()));
        let Some(udp_ns) = self.reopen(
            rec.udp_netns.as_deref(),
            (rec.udp_netns_dev, rec.udp_netns_ino),
        ) else {
            log(format_args!(
                "{}: UDP namespace is gone, device and record dropped",
                rec.name
            ));
            if let Some(l) = ours {
                let _ = rtnl.delete_link(l.index);
            }
            return None;
        };
        let spec = DeviceSpec {
            mtu: rec.mtu,
            ..DeviceSpec::new(&rec.name, &tun_ns, &udp_ns).persistent()
        };
        let adopted = ours.and_then(|l| {
            let current = IfName::new(l.name.as_str()).ok()?;
            let fd = crate::tun::open_in(&tun_ns, &current).ok()?;
            Some((l, fd))
        });
        match adopted {
            Some((l, fd)) => match self.engine.adopt_device(&spec, fd) {
                Ok(()) => {
                    log(format_args!(
                        "{}: adopted its TUN ({} in {})",
                        rec.name,
                        l.name,
                        rec.netns.display()
                    ));
                    Some(rec)
                }
                Err(e) => {
                    log(format_args!("{}: adopting its TUN: {e}", rec.name));
                    None
                }
            },
            None => {
                if rtnl.link_by_name(&name).is_ok() {
                    log(format_args!(
                        "{}: another interface took the name, record dropped",
                        rec.name
                    ));
                    return None;
                }
                match self.engine.create_device(&spec) {
                    Ok(()) => {
                        rec.ifindex = rtnl.link_by_name(&name).map(|l| l.index).ok()?;
                        log(format_args!(
                            "{}: its TUN was gone, created again in {}",
                            rec.name,
                            rec.netns.display()
                        ));
                        Some(rec)
                    }
                    Err(e) => {
                        log(format_args!("{}: creating it again: {e}", rec.name));
                        None
                    }
                }
            }
        }
    }

    /// Set the recorded listen port on a device taken back, over its UAPI
    /// socket (as its owner would).
    fn restore_port(&self, rec: &DeviceRecord) {
        let Some(port) = rec.listen_port else { return };
        let mut u = wg_netns::Userspace::new("wg-engine");
        u.socket_dir = self.cfg.socket_dir.clone();
        u.io_timeout = CONN_TIMEOUT;
        let r = wg_netns::WgDevice::open_userspace(&u, &rec.name)
            .and_then(|d| d.set(&wg_netns::DeviceConfig::new().listen_port(port)));
        if let Err(e) = r {
            log(format_args!(
                "{}: setting listen port {port}: {e}",
                rec.name
            ));
        }
    }

    /// Read every record and take its device back.
    fn restore_all(&self) {
        let dir = self.records_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut restored = HashMap::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                // A temporary file from a write that did not finish.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let rec = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<DeviceRecord>(&b).ok())
                .filter(|r| path.file_stem().and_then(|s| s.to_str()) == Some(r.name.as_str()));
            let Some(rec) = rec else {
                log(format_args!(
                    "{}: unreadable record dropped",
                    path.display()
                ));
                let _ = std::fs::remove_file(&path);
                continue;
            };
            match self.restore(rec.clone()) {
                Some(kept) => {
                    self.restore_port(&kept);
                    if kept != rec {
                        if let Err(e) = self.save(&kept) {
                            log(format_args!("{}: saving its record: {e}", kept.name));
                        }
                    }
                    restored.insert(kept.name.clone(), kept);
                }
                None => self.forget(&rec.name),
            }
        }
        *self.records() = restored;
    }

    fn handle(&self, req: Request, fds: Vec<OwnedFd>) -> Reply {
        match req {
            Request::Create(c) => self.create(c, fds),
            Request::Delete { name } => self.delete(&name),
            Request::List => self.list(),
            // A request this daemon does not know (a newer client).
            _ => Reply::error(ErrorKind::Invalid, "unsupported request"),
        }
    }

    fn create(&self, c: Create, fds: Vec<OwnedFd>) -> Reply {
        if fds.len() != c.fds() {
            return Reply::error(
                ErrorKind::Invalid,
                format!(
                    "a create naming {} namespaces must carry as many descriptors, not {}",
                    c.fds(),
                    fds.len()
                ),
            );
        }
        let mut fds = fds.into_iter();
        let open = |fd: Option<OwnedFd>, path: &Path| -> Result<Netns, Reply> {
            let fd = fd.ok_or_else(|| Reply::error(ErrorKind::Invalid, "missing descriptor"))?;
            Netns::from_fd(fd, path).map_err(|e| Reply::error(ErrorKind::Invalid, e.to_string()))
        };
        let tun_ns = match open(fds.next(), &c.netns) {
            Ok(ns) => ns,
            Err(r) => return r,
        };
        let udp_ns = match &c.udp_netns {
            Some(p) => match open(fds.next(), p) {
                Ok(ns) => ns,
                Err(r) => return r,
            },
            None => match self.own_ns.try_clone() {
                Ok(ns) => ns,
                Err(e) => return Reply::error(ErrorKind::Failed, e.to_string()),
            },
        };
        let failed = |e: &dyn std::fmt::Display| Reply::error(ErrorKind::Failed, e.to_string());
        let (tun_id, udp_id) = match (tun_ns.id(), udp_ns.id()) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return failed(&e),
        };
        let mut records = self.records();
        let name = c.name.as_str();
        if let Some(r) = records.get(name) {
            if self.engine.devices().iter().any(|d| d == name) {
                return if (r.netns_dev, r.netns_ino) == tun_id
                    && (r.udp_netns_dev, r.udp_netns_ino) == udp_id
                {
                    Reply::Created { existed: true }
                } else {
                    Reply::error(
                        ErrorKind::Exists,
                        format!("device {name} exists in other namespaces"),
                    )
                };
            }
            // Its TUN went away and the hook has not removed it yet.
            records.remove(name);
            self.forget(name);
        }
        let rtnl = match Rtnl::open(&tun_ns) {
            Ok(r) => r,
            Err(e) => return failed(&e),
        };
        if rtnl.link_by_name(&c.name).is_ok() {
            // Also keeps TUNSETIFF from attaching to someone's persistent TUN.
            return Reply::error(
                ErrorKind::Exists,
                format!(
                    "an interface {name} exists in {} already",
                    c.netns.display()
                ),
            );
        }
        let spec = DeviceSpec {
            mtu: c.mtu,
            ..DeviceSpec::new(name, &tun_ns, &udp_ns).persistent()
        };
        if let Err(e) = self.engine.create_device(&spec) {
            return match e {
                crate::Error::Exists(_) | crate::Error::SocketInUse(_) => {
                    Reply::error(ErrorKind::Exists, e.to_string())
                }
                crate::Error::Name { .. } => Reply::error(ErrorKind::Invalid, e.to_string()),
                e => failed(&e),
            };
        }
        let own = self.own_ns.id().ok() == Some(udp_id);
        let rec = DeviceRecord {
            name: name.to_string(),
            netns: c.netns.clone(),
            netns_dev: tun_id.0,
            netns_ino: tun_id.1,
            udp_netns: if own { None } else { c.udp_netns.clone() },
            udp_netns_dev: udp_id.0,
            udp_netns_ino: udp_id.1,
            mtu: c.mtu,
            ifindex: rtnl.link_by_name(&c.name).map(|l| l.index).unwrap_or(0),
            listen_port: None,
        };
        if let Err(e) = self.save(&rec) {
            // A device without a record would not come back after a
            // restart: refuse it rather than half-keep it.
            let _ = self.engine.remove_device(name);
            return failed(&format!("writing its record: {e}"));
        }
        log(format_args!(
            "{name}: created, TUN in {} (index {}), UDP in {}",
            c.netns.display(),
            rec.ifindex,
            rec.udp_netns
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the daemon's namespace".into())
        ));
        records.insert(name.to_string(), rec);
        Reply::Created { existed: false }
    }

    fn delete(&self, name: &IfName) -> Reply {
        let mut records = self.records();
        let had_record = records.remove(name.as_str()).is_some();
        self.forget(name.as_str());
        let hosted = match self.engine.remove_device(name.as_str()) {
            Ok(()) => true,
            Err(crate::Error::NotFound(_)) => false,
            Err(e) => return Reply::error(ErrorKind::Failed, e.to_string()),
        };
        if hosted {
            log(format_args!("{name}: deleted"));
        }
        Reply::Deleted {
            existed: hosted || had_record,
        }
    }

    fn list(&self) -> Reply {
        let records = self.records();
        let hosted = self.engine.devices();
        let mut out: Vec<DeviceInfo> = records
            .values()
            .filter(|r| hosted.contains(&r.name))
            .filter_map(|r| {
                Some(DeviceInfo::new(
                    IfName::new(r.name.as_str()).ok()?,
                    r.netns.clone(),
                    (r.netns_dev, r.netns_ino),
                    (r.udp_netns_dev, r.udp_netns_ino),
                    r.mtu,
                    r.ifindex,
                ))
            })
            .collect();
        out.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        Reply::Devices(out)
    }

    /// Serve one connection: check the peer, read one request, answer.
    fn serve_conn(&self, stream: UnixStream) {
        let _ = stream.set_read_timeout(Some(CONN_TIMEOUT));
        let _ = stream.set_write_timeout(Some(CONN_TIMEOUT));
        let uid = rustix::net::sockopt::socket_peercred(&stream).map(|c| (c.uid.as_raw(), c.pid));
        match uid {
            Ok((0, _)) => {}
            Ok((uid, pid)) => {
                log(format_args!(
                    "refused a request from uid {uid} (pid {})",
                    pid.as_raw_nonzero()
                ));
                // Read (and drop) its request first, so that it is not cut
                // off mid-write and gets to read why.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                drop(proto::recv_request(&stream));
                let _ = proto::send_reply(
                    &stream,
                    &Reply::error(ErrorKind::Refused, "only root may use wg-engine"),
                );
                return;
            }
            Err(_) => return,
        }
        let reply = match proto::recv_request(&stream) {
            Ok((Ok(req), fds)) => self.handle(req, fds),
            Ok((Err(e), _)) => match e {
                wg_netns::Error::Engine { kind, reason, .. } => Reply::error(kind, reason),
                e => Reply::error(ErrorKind::Invalid, e.to_string()),
            },
            // The client went away or sent too much: nothing to answer.
            Err(_) => return,
        };
        let _ = proto::send_reply(&stream, &reply);
    }
}

/// A running daemon: its listener bound, its devices restored.
pub struct Daemon {
    state: Arc<State>,
    listener: UnixListener,
    _lock: std::fs::File,
}

impl Daemon {
    /// Take the lock, restore the recorded devices, bind the control
    /// socket. Clients connect once this returns.
    pub fn start(cfg: Config) -> Result<Daemon, DaemonError> {
        let control_dir = cfg
            .control
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        for (dir, mode) in [
            (&control_dir, 0o700),
            (&cfg.state_dir, 0o700),
            (&cfg.state_dir.join(DEVICES_DIR), 0o700),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(io_at("creating", dir))?;
        }
        let lock_path = PathBuf::from(format!("{}.lock", cfg.control.display()));
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_at("opening", &lock_path))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(DaemonError::AlreadyRunning(cfg.control.clone()))
            }
            Err(e) => return Err(io_at("locking", &lock_path)(e.into())),
        }

        let engine = Engine::new(
            EngineConfig::default()
                .socket_dir(cfg.socket_dir.clone())
                .worker_threads(cfg.worker_threads),
        )?;
        let state = Arc::new(State {
            engine,
            own_ns: Netns::current()?,
            cfg: cfg.clone(),
            records: Mutex::new(HashMap::new()),
        });
        // Devices that go away on their own (their pod's namespace deleted)
        // lose their record, on a thread of the daemon's (the hook runs on
        // the engine's runtime, which must not wait for the records' lock).
        // Ports set over UAPI go into the records the same way.
        let (tx, rx) = mpsc::channel::<Event>();
        let gone_tx = Mutex::new(tx.clone());
        state.engine.on_device_gone(move |name| {
            let _ = gone_tx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .send(Event::Gone(name.to_string()));
        });
        let port_tx = Mutex::new(tx);
        state.engine.on_listen_port_set(move |name, port| {
            let _ = port_tx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .send(Event::Port(name.to_string(), port));
        });
        let weak = Arc::downgrade(&state);
        std::thread::Builder::new()
            .name("wg-engine-records".into())
            .spawn(move || {
                for event in rx {
                    let Some(state) = weak.upgrade() else { return };
                    let mut records = state.records();
                    match event {
                        Event::Gone(name) => {
                            if !state.engine.devices().contains(&name)
                                && records.remove(&name).is_some()
                            {
                                state.forget(&name);
                                log(format_args!("{name}: its TUN went away, record dropped"));
                            }
                        }
                        Event::Port(name, port) => {
                            if let Some(r) = records.get_mut(&name) {
                                if r.listen_port != Some(port) {
                                    r.listen_port = Some(port);
                                    if let Err(e) = state.save(r) {
                                        log(format_args!("{name}: saving its record: {e}"));
                                    }
                                }
                            }
                        }
                    }
                }
            })
            .map_err(io_at("starting a thread for", &cfg.control))?;

        state.restore_all();

        // Nobody else holds the lock: a socket file here is stale.
        match std::fs::remove_file(&cfg.control) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_at("removing a stale", &cfg.control)(e))
            }
            _ => {}
        }
        let listener = UnixListener::bind(&cfg.control).map_err(io_at("binding", &cfg.control))?;
        std::fs::set_permissions(&cfg.control, std::fs::Permissions::from_mode(0o600))
            .map_err(io_at("chmod 0600", &cfg.control))?;
        log(format_args!(
            "serving {} ({} devices restored)",
            cfg.control.display(),
            state.records().len()
        ));
        Ok(Daemon {
            state,
            listener,
            _lock: lock,
        })
    }

    /// The devices hosted now.
    pub fn devices(&self) -> Vec<String> {
        self.state.engine.devices()
    }

    /// Serve the control socket until the process ends. Each connection
    /// gets a thread; requests take the records' lock one at a time.
    pub fn run(self) -> Result<(), DaemonError> {
        for conn in self.listener.incoming() {
            match conn {
                Ok(stream) => {
                    let state = Arc::clone(&self.state);
                    if let Err(e) = std::thread::Builder::new()
                        .name("wg-engine-conn".into())
                        .spawn(move || state.serve_conn(stream))
                    {
                        log(format_args!("no thread for a connection: {e}"));
                    }
                }
                Err(e) => {
                    log(format_args!("accept: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        Ok(())
    }
}
