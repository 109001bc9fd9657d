//! The birthplace pattern: a WireGuard interface whose UDP socket lives in one
//! namespace (the birthplace, for good) and whose interface lives in another,
//! with addresses, MTU and routes there. Kernel WireGuard is created straight
//! in the target (the kernel keeps the requesting namespace for the socket);
//! a userspace device is created at the birthplace, configured, and moved
//! into the target under its final name.
//!
//! This is what a CNI ADD does: the birthplace is the node (the runtime's
//! namespace), the target is the pod. Encrypted traffic leaves from the node;
//! the pod only ever sees clear-text packets on its WireGuard interface.
//!
//! ```no_run
//! use wg_netns::{Backend, Birthplace, DeviceConfig, IfName, InterfaceSpec, Netns, PrivateKey};
//! let node = Netns::current()?;
//! let pod = Netns::from_path("/var/run/netns/pod1")?;
//! let backend = Backend::detect()?;
//! let place = Birthplace::new(&node, &pod, &backend)?;
//! let spec = InterfaceSpec::new(IfName::derived("wgb", "container-id/wg0")?, IfName::new("wg0")?)
//!     .device(DeviceConfig::new().private_key(PrivateKey::generate()?))
//!     .address("10.13.13.210/24".parse()?);
//! let attached = place.attach(&spec)?;
//! // later, from another process:
//! let found = place.find(&spec.name, &spec.birth_name)?;
//! assert_eq!(found.map(|a| a.index), Some(attached.index));
//! // a handle on the device, by interface index for kernel devices
//! let stats = place.device(&attached)?.stats()?;
//! place.detach(&spec.name, &spec.birth_name)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use ipnetwork::IpNetwork;

use crate::backend::{wait_userspace_gone, Backend, BackendKind, WgDevice};
use crate::device::DeviceConfig;
use crate::error::{Error, Result};
use crate::kernel::{DevRef, KernelConn};
use crate::key::PublicKey;
use crate::netns::Netns;
use crate::record::SocketNamespace;
use crate::rtnl::{IfName, Route, Rtnl};

/// The alias (`IFLA_IFALIAS`) wg-netns gives every interface it creates:
/// `wg-netns:` and the birth name. The kernel keeps an alias across renames
/// and moves between namespaces, so it still says whose the interface is
/// after the move into the target under its final name, which anyone may
/// use too (`wg0`, `eth0`). [`Birthplace::detach`] deletes a link of that
/// name only when it carries this mark.
///
/// ```
/// use wg_netns::{owner_alias, IfName};
/// assert_eq!(owner_alias(&IfName::new("wgb0a1b2c3d4e5")?), "wg-netns:wgb0a1b2c3d4e5");
/// # Ok::<(), wg_netns::Error>(())
/// ```
pub fn owner_alias(birth_name: &IfName) -> String {
    format!("wg-netns:{birth_name}")
}

/// What [`Birthplace::attach`] creates and [`Birthplace::ensure`] keeps.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InterfaceSpec {
    /// Name in the birth namespace; for userspace devices it also names the
    /// control socket for the device's whole life, so it must be unique on
    /// the machine. Kernel devices are created under `name` directly and
    /// never carry it; it still names what [`cleanup_birth`] looks for.
    pub birth_name: IfName,
    /// Final name in the target namespace.
    pub name: IfName,
    /// Device configuration applied before the move.
    pub device: DeviceConfig,
    /// Addresses in the target namespace.
    pub addresses: Vec<IpNetwork>,
    /// Routes in the target namespace; a route without `oif` goes through
    /// this interface. They are installed with replace semantics, so a
    /// `0.0.0.0/0` through the tunnel takes over an existing default route.
    pub routes: Vec<Route>,
    /// MTU; `None` keeps the implementation's default (1420).
    pub mtu: Option<u32>,
    /// The private key in `device` is used when the interface is created
    /// and never replaces the key of an existing one (a key generated for
    /// this attachment): see [`InterfaceSpec::key_on_create_only`].
    pub key_on_create_only: bool,
}

impl InterfaceSpec {
    /// A spec with nothing but the two names.
    pub fn new(birth_name: IfName, name: IfName) -> Self {
        InterfaceSpec {
            birth_name,
            name,
            device: DeviceConfig::new(),
            addresses: Vec::new(),
            routes: Vec::new(),
            mtu: None,
            key_on_create_only: false,
        }
    }

    /// Use the device's private key only when creating the interface:
    /// [`Birthplace::ensure`] keeps an existing interface's key and
    /// [`Birthplace::verify`] does not compare it (for keys generated per
    /// attachment, which the caller cannot know again later).
    pub fn key_on_create_only(mut self) -> Self {
        self.key_on_create_only = true;
        self
    }

    /// The device configuration to compare an existing interface with.
    pub(crate) fn desired_device(&self) -> std::borrow::Cow<'_, DeviceConfig> {
        if self.key_on_create_only && self.device.private_key.is_some() {
            let mut d = self.device.clone();
            d.private_key = None;
            std::borrow::Cow::Owned(d)
        } else {
            std::borrow::Cow::Borrowed(&self.device)
        }
    }

    /// Set the device configuration.
    pub fn device(mut self, cfg: DeviceConfig) -> Self {
        self.device = cfg;
        self
    }

    /// Add an address.
    pub fn address(mut self, addr: IpNetwork) -> Self {
        self.addresses.push(addr);
        self
    }

    /// Add a route.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Set the MTU.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
}

/// An interface created by [`Birthplace::attach`] or located by [`Birthplace::find`].
/// Plain data (no handle): with the `serde` feature it is written and read
/// like [`crate::AttachmentRecord`], in camelCase.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
#[non_exhaustive]
pub struct Attachment {
    /// Interface index in the target namespace.
    pub index: u32,
    /// Name in the target namespace.
    pub name: IfName,
    /// Birth name (userspace control socket name).
    pub birth_name: IfName,
    /// Backend kind.
    pub kind: BackendKind,
    /// The device's public key, when it has a private key.
    pub public_key: Option<PublicKey>,
    /// The interface's MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
}

/// A pair of namespaces and a backend: where interfaces are born and where
/// they go. It owns what it uses: duplicates of the two namespace handles,
/// the backend, and the netlink sockets it opens on first use (one per
/// namespace, reused by every later call; each socket opened in another
/// namespace costs a helper thread).
///
/// A `Birthplace` is `Send + Sync`: a long-lived user (a node agent) keeps
/// one per pod in an `Arc` and calls it from any thread; requests on one
/// socket are serialized. Its parts are read through accessors, so nothing
/// can swap a namespace under its cached sockets.
#[derive(Debug)]
pub struct Birthplace {
    birth: Netns,
    target: Netns,
    backend: Backend,
    birth_rtnl: OnceLock<Rtnl>,
    target_rtnl: OnceLock<Rtnl>,
    target_genl: OnceLock<Option<Arc<KernelConn>>>,
    same: OnceLock<bool>,
}

/// The value in `cell`, made by `open` on first use. Two threads racing here
/// may both open; one value wins and the other is dropped.
fn opened<T>(cell: &OnceLock<T>, open: impl FnOnce() -> Result<T>) -> Result<&T> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = open()?;
    Ok(cell.get_or_init(|| v))
}

impl Birthplace {
    /// Interfaces born in `birth` (where their UDP socket lives) and placed
    /// in `target`, made by `backend`. The namespace handles are duplicated,
    /// so the caller's may be dropped.
    pub fn new(birth: &Netns, target: &Netns, backend: &Backend) -> Result<Self> {
        Ok(Self::from_parts(
            birth.try_clone()?,
            target.try_clone()?,
            backend.clone(),
        ))
    }

    /// Like [`Birthplace::new`], taking ownership of the handles.
    pub fn from_parts(birth: Netns, target: Netns, backend: Backend) -> Self {
        Birthplace {
            birth,
            target,
            backend,
            birth_rtnl: OnceLock::new(),
            target_rtnl: OnceLock::new(),
            target_genl: OnceLock::new(),
            same: OnceLock::new(),
        }
    }

    /// The place for a container's interface: born on the node (the
    /// caller's namespace, `node`) or in the container itself, as `socket`
    /// says. This is the one place that choice is turned into namespaces.
    pub fn for_container(
        node: &Netns,
        container: &Netns,
        socket: SocketNamespace,
        backend: &Backend,
    ) -> Result<Self> {
        let birth = match socket {
            SocketNamespace::Host => node,
            SocketNamespace::Container => container,
        };
        Self::new(birth, container, backend)
    }

    /// The same place with another backend, keeping the netlink sockets
    /// already opened. An agent that has one ADD's daemon started by a
    /// [`crate::Launcher`] keeps the place without it afterwards:
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use wg_netns::{Backend, Birthplace, Netns, SocketNamespace, Userspace, Launcher};
    /// # fn f(node: &Netns, pod: &Netns, userspace: Userspace, launcher: Arc<dyn Launcher>) -> wg_netns::Result<()> {
    /// let once = Backend::Userspace(userspace.clone().with_launcher(launcher));
    /// let place = Birthplace::for_container(node, pod, SocketNamespace::Container, &once)?;
    /// // ... place.ensure(&spec)? ...
    /// let kept = place.with_backend(Backend::Userspace(userspace));
    /// # let _ = kept; Ok(()) }
    /// ```
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Where interfaces are created and their UDP sockets live.
    pub fn birth(&self) -> &Netns {
        &self.birth
    }

    /// Where interfaces end up.
    pub fn target(&self) -> &Netns {
        &self.target
    }

    /// The implementation that creates them.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    fn same_namespace(&self) -> Result<bool> {
        opened(&self.same, || self.birth.same_as(&self.target)).copied()
    }

    /// The route-netlink socket of the birthplace, opened on first use.
    pub(crate) fn birth_rtnl(&self) -> Result<&Rtnl> {
        opened(&self.birth_rtnl, || Rtnl::open(&self.birth))
    }

    /// The route-netlink socket of the target, opened on first use (the
    /// birthplace's when they are one namespace).
    pub(crate) fn target_rtnl(&self) -> Result<&Rtnl> {
        if self.same_namespace()? {
            return self.birth_rtnl();
        }
        opened(&self.target_rtnl, || Rtnl::open(&self.target))
    }

    /// The WireGuard generic netlink socket in the target, opened on first use.
    fn target_genl(&self) -> Result<Arc<KernelConn>> {
        opened(&self.target_genl, || {
            Ok(self.target.run(KernelConn::current)??.map(Arc::new))
        })?
        .clone()
        .ok_or_else(|| Error::NoBackend("the kernel has no WireGuard".into()))
    }

    /// The MTU of the interface the birthplace would use to reach `dst`
    /// (the underlay towards a peer), for an MTU derived from it.
    pub fn underlay_mtu(&self, dst: IpAddr) -> Result<u32> {
        let rtnl = self.birth_rtnl()?;
        let route = rtnl.route_get(dst)?;
        let oif = route.oif.ok_or_else(|| Error::NotFound {
            what: crate::error::Object::Route,
            name: format!("{dst} (no output interface)"),
        })?;
        Ok(rtnl.link_by_index(oif)?.mtu)
    }

    /// Create, configure, move and address an interface. On any failure
    /// everything created so far is removed from both namespaces.
    ///
    /// Kernel WireGuard is created straight in the target under its final
    /// name (the device keeps the birthplace, where the netlink request came
    /// from, for its UDP socket), so nothing is moved: a move between
    /// namespaces costs the kernel an RCU barrier. A userspace device's TUN
    /// has to be born where its daemon runs (the daemon resolves it by name
    /// there when it starts), so it is created at the birthplace under its
    /// birth name, configured, then moved and renamed in one request.
    pub fn attach(&self, spec: &InterfaceSpec) -> Result<Attachment> {
        spec.device.validate()?;
        match &self.backend {
            Backend::Kernel => self.attach_kernel(spec),
            Backend::Userspace(_) => self.attach_userspace(spec),
            Backend::Engine(e) => self.attach_engine(e, spec),
        }
    }

    /// An engine device is born where it ends up: the engine opens its TUN
    /// from a thread inside the target (under the birth name, which also
    /// names its UAPI socket) and binds its UDP socket from a thread inside
    /// the birthplace, so nothing moves; it is configured, renamed in the
    /// target, and addressed.
    fn attach_engine(
        &self,
        engine: &crate::engine::EngineDaemon,
        spec: &InterfaceSpec,
    ) -> Result<Attachment> {
        let rtnl = self.target_rtnl()?;
        let mtu = spec
            .mtu
            .and_then(|m| u16::try_from(m).ok())
            .unwrap_or(crate::engine::proto::DEFAULT_MTU);
        let dev =
            WgDevice::create_engine(engine, &spec.birth_name, &self.target, &self.birth, mtu)?;
        let result = rtnl.link_by_name(&spec.birth_name).and_then(|link| {
            rtnl.set_alias(link.index, &owner_alias(&spec.birth_name))?;
            dev.set(&spec.device)?;
            if link.name != spec.name.as_str() {
                rtnl.rename(link.index, &spec.name)?;
            }
            self.finish_attach(spec, rtnl, link.index)
        });
        if result.is_err() {
            // Deleting it from the engine removes the TUN, wherever it is.
            let _ = engine.delete(&spec.birth_name);
        }
        result
    }

    fn attach_kernel(&self, spec: &InterfaceSpec) -> Result<Attachment> {
        let (birth_rtnl, rtnl) = (self.birth_rtnl()?, self.target_rtnl()?);
        if self.same_namespace()? {
            birth_rtnl.create_wireguard(&spec.name)?;
        } else {
            birth_rtnl.create_link_in(&spec.name, "wireguard", &self.target)?;
        }
        let link = rtnl.link_by_name(&spec.name).inspect_err(|_| {
            let _ = rtnl.delete_link_by_name(&spec.name);
        })?;
        let result = rtnl
            .set_alias(link.index, &owner_alias(&spec.birth_name))
            .and_then(|()| self.target_genl())
            .and_then(|conn| {
                WgDevice::from_kernel(conn, DevRef::Index(link.index)).set(&spec.device)
            })
            .and_then(|()| self.finish_attach(spec, rtnl, link.index));
        if result.is_err() {
            // Deleting the link closes its UDP socket at the birthplace too.
            let _ = rtnl.delete_link(link.index);
        }
        result
    }

    fn attach_userspace(&self, spec: &InterfaceSpec) -> Result<Attachment> {
        let (birth_rtnl, rtnl) = (self.birth_rtnl()?, self.target_rtnl()?);
        let same = self.same_namespace()?;
        let (dev, link) =
            WgDevice::create_with(&self.birth, birth_rtnl, &spec.birth_name, &self.backend)?;
        let mut moved = false;
        let result = birth_rtnl
            .set_alias(link.index, &owner_alias(&spec.birth_name))
            .and_then(|()| dev.set(&spec.device))
            .and_then(|()| {
                if same {
                    if spec.name != spec.birth_name {
                        birth_rtnl.rename(link.index, &spec.name)?;
                    }
                } else {
                    birth_rtnl.move_to_netns(link.index, &self.target, Some(&spec.name))?;
                }
                moved = true;
                let index = rtnl.link_by_name(&spec.name)?.index;
                self.finish_attach(spec, rtnl, index)
            });
        if result.is_err() {
            // Roll back: the link is in the target (after the move) or still
            // at its birthplace; deleting it ends the daemon.
            if moved {
                if let Ok(l) = rtnl.link_by_name(&spec.name) {
                    let _ = rtnl.delete_link(l.index);
                }
            } else {
                let _ = birth_rtnl.delete_link(link.index);
            }
            let _ = dev.stop_daemon();
        }
        result
    }

    /// MTU, addresses, up, routes: the link is in the target under its name.
    fn finish_attach(&self, spec: &InterfaceSpec, rtnl: &Rtnl, index: u32) -> Result<Attachment> {
        if let Some(mtu) = spec.mtu {
            rtnl.set_mtu(index, mtu)?;
        }
        for addr in &spec.addresses {
            rtnl.add_address(index, *addr)?;
        }
        rtnl.set_up(index, true)?;
        for r in &spec.routes {
            rtnl.replace_route(&route_through(r, index))?;
        }
        let link = rtnl.link_by_index(index)?;
        Ok(Attachment {
            index: link.index,
            name: spec.name.clone(),
            birth_name: spec.birth_name.clone(),
            kind: self.backend.kind(),
            public_key: spec.device.private_key.as_ref().map(|k| k.public_key()),
            mtu: link.mtu,
            up: link.up,
        })
    }

    /// Locate an interface attached earlier: `name` in the target namespace,
    /// with its device reachable (kernel: a `wireguard` link; userspace: the
    /// control socket of `birth_name` answers). `Ok(None)` when absent.
    pub fn find(&self, name: &IfName, birth_name: &IfName) -> Result<Option<Attachment>> {
        Ok(self.find_link(name, birth_name)?.map(|(a, _)| a))
    }

    /// [`Birthplace::find`], with the link as the kernel reported it.
    pub(crate) fn find_link(
        &self,
        name: &IfName,
        birth_name: &IfName,
    ) -> Result<Option<(Attachment, crate::rtnl::Link)>> {
        let rtnl = self.target_rtnl()?;
        let link = match rtnl.link_by_name(name) {
            Ok(l) => l,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        if self.backend.kind() == BackendKind::Kernel && link.kind.as_deref() != Some("wireguard") {
            return Ok(None);
        }
        let dev = match self.device_at(link.index, birth_name) {
            Ok(d) => d,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let state = match dev.get() {
            Ok(s) => s,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let found = Attachment {
            index: link.index,
            name: name.clone(),
            birth_name: birth_name.clone(),
            kind: self.backend.kind(),
            public_key: state.public_key,
            mtu: link.mtu,
            up: link.up,
        };
        Ok(Some((found, link)))
    }

    /// A control handle on an attached interface: by interface index for a
    /// kernel device (a later rename does not break it), by its control
    /// socket for a userspace one.
    pub fn device(&self, attachment: &Attachment) -> Result<WgDevice> {
        self.device_at(attachment.index, &attachment.birth_name)
    }

    fn device_at(&self, index: u32, birth_name: &IfName) -> Result<WgDevice> {
        match &self.backend {
            Backend::Kernel => Ok(WgDevice::from_kernel(
                self.target_genl()?,
                DevRef::Index(index),
            )),
            Backend::Userspace(u) => WgDevice::open_userspace(u, birth_name.as_str()),
            Backend::Engine(e) => WgDevice::open_engine(e, birth_name.as_str()),
        }
    }

    /// Remove an attached interface and everything it left: the link in the
    /// target, a link still at its birthplace after a partial attach, and a
    /// userspace daemon and its socket. Idempotent; returns whether anything
    /// was removed. Every step is attempted; failures are reported together
    /// ([`Error::Teardown`] when more than one).
    ///
    /// The link called `name` in the target is deleted only when it is
    /// this attachment's: of the backend's kind (`wireguard`; a userspace
    /// device's `tun`) and marked with [`owner_alias`] of `birth_name`,
    /// which [`Birthplace::attach`] (and [`Birthplace::ensure`], for an
    /// interface it keeps) sets. Any other link of that name (one the
    /// container, its runtime or the host made) is left alone.
    pub fn detach(&self, name: &IfName, birth_name: &IfName) -> Result<bool> {
        let mut removed = false;
        let mut errors = Vec::new();
        match self.target_rtnl() {
            Ok(rtnl) => {
                if let Ok(l) = rtnl.link_by_name(name) {
                    // Only delete what is ours: the backend's kind of link,
                    // with our mark. The name alone says nothing (anyone
                    // may call a WireGuard link wg0), nor does a daemon of
                    // our birth name answering (its TUN may be gone and
                    // another in its place).
                    if self.is_ours(&l, birth_name) {
                        match rtnl.delete_link(l.index) {
                            Ok(()) => removed = true,
                            Err(e) if e.is_not_found() => {}
                            Err(e) => errors.push(e),
                        }
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        match self.cleanup_birth(birth_name) {
            Ok(r) => removed |= r,
            Err(e) => errors.push(e),
        }
        Error::all(errors).map(|()| removed)
    }

    /// Whether `link` is the interface of the attachment born as
    /// `birth_name`: the backend's kind of link, marked [`owner_alias`].
    fn is_ours(&self, link: &crate::rtnl::Link, birth_name: &IfName) -> bool {
        self.is_our_kind(link) && link.alias.as_deref() == Some(owner_alias(birth_name).as_str())
    }

    /// Whether `link` is of the kind this backend makes.
    pub(crate) fn is_our_kind(&self, link: &crate::rtnl::Link) -> bool {
        let kind = match &self.backend {
            Backend::Kernel => "wireguard",
            Backend::Userspace(_) | Backend::Engine(_) => "tun",
        };
        link.kind.as_deref() == Some(kind)
    }

    /// Remove what an attachment may have left at the birthplace (a crashed
    /// attach, or the target namespace gone): a link still called
    /// `birth_name`, and a userspace daemon with its socket. Idempotent;
    /// returns whether anything was removed.
    pub fn cleanup_birth(&self, birth_name: &IfName) -> Result<bool> {
        let mut removed = false;
        let mut errors = Vec::new();
        if let Backend::Engine(e) = &self.backend {
            // First, so that the engine forgets it (and its record) rather
            // than seeing its TUN vanish.
            match e.delete(birth_name) {
                Ok(r) => removed |= r,
                Err(e) => errors.push(e),
            }
        }
        match self.birth_rtnl() {
            Ok(rtnl) => {
                if let Ok(l) = rtnl.link_by_name(birth_name) {
                    if matches!(l.kind.as_deref(), Some("wireguard") | Some("tun")) {
                        match rtnl.delete_link(l.index) {
                            Ok(()) => removed = true,
                            Err(e) if e.is_not_found() => {}
                            Err(e) => errors.push(e),
                        }
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        if let Backend::Userspace(u) = &self.backend {
            let name = birth_name.as_str();
            // A daemon whose socket is gone exits by itself.
            if u.socket_path(name).exists() {
                match wait_userspace_gone(u, name, std::time::Duration::from_secs(3)) {
                    Ok(()) => removed = true,
                    Err(e) => errors.push(e),
                }
            }
        }
        Error::all(errors).map(|()| removed)
    }

    /// The WireGuard devices whose interface is in the target namespace
    /// (kernel backend) or whose UDP socket lives at the birthplace
    /// (userspace backend: its daemon runs there; engine), see [`list_devices`].
    pub fn list(&self) -> Result<Vec<ListedDevice>> {
        list_devices_in(
            &self.birth,
            &self.backend,
            matches!(self.backend, Backend::Kernel)
                .then(|| self.target_rtnl())
                .transpose()?,
        )
    }
}

/// `r` with this interface as its output when it names none.
pub(crate) fn route_through(r: &Route, index: u32) -> Route {
    let mut r = r.clone();
    if r.oif.is_none() {
        r.oif = Some(index);
    }
    r
}

/// [`Birthplace::cleanup_birth`] when only the birthplace is known (the
/// target namespace is gone).
pub fn cleanup_birth(birth: &Netns, birth_name: &IfName, backend: &Backend) -> Result<bool> {
    Birthplace::new(birth, birth, backend)?.cleanup_birth(birth_name)
}

/// A WireGuard device found by [`list_devices`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListedDevice {
    /// A kernel WireGuard interface in the namespace.
    Kernel {
        /// Interface index.
        index: u32,
        /// Interface name.
        name: IfName,
    },
    /// A userspace daemon whose UDP socket lives in the namespace (its
    /// interface may have been moved elsewhere).
    Userspace {
        /// The control socket's name (the interface's birth name).
        socket_name: String,
        /// The daemon's process id.
        pid: u32,
    },
    /// An engine device whose UDP socket lives in the namespace (its
    /// interface is in another, or the same).
    Engine {
        /// The UAPI socket's name (the interface's birth name).
        socket_name: String,
        /// Its interface index, in its TUN's namespace.
        ifindex: u32,
    },
}

/// The WireGuard devices of `netns`: for the kernel backend, its
/// `wireguard` interfaces; for a userspace backend, the daemons of that
/// implementation whose control socket answers and whose network namespace
/// is `netns` (where their UDP socket lives; a userspace device's interface
/// may have moved into another namespace, where it is a plain TUN); for
/// the engine, its devices whose UDP socket is bound in `netns`.
pub fn list_devices(netns: &Netns, backend: &Backend) -> Result<Vec<ListedDevice>> {
    list_devices_in(netns, backend, None)
}

fn list_devices_in(
    netns: &Netns,
    backend: &Backend,
    rtnl: Option<&Rtnl>,
) -> Result<Vec<ListedDevice>> {
    match backend {
        Backend::Kernel => match rtnl {
            Some(r) => list_kernel(r),
            None => list_kernel(&Rtnl::open(netns)?),
        },
        Backend::Userspace(u) => list_userspace(netns, u),
        Backend::Engine(e) => {
            let id = netns.id()?;
            // The daemon lists its devices sorted by name.
            Ok(e.list()?
                .into_iter()
                .filter(|d| d.udp_netns_id == id)
                .map(|d| ListedDevice::Engine {
                    socket_name: d.name.to_string(),
                    ifindex: d.ifindex,
                })
                .collect())
        }
    }
}

fn list_kernel(rtnl: &Rtnl) -> Result<Vec<ListedDevice>> {
    Ok(rtnl
        .links()?
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("wireguard"))
        .filter_map(|l| {
            Some(ListedDevice::Kernel {
                index: l.index,
                name: IfName::new(l.name).ok()?,
            })
        })
        .collect())
}

fn list_userspace(netns: &Netns, u: &crate::uapi::Userspace) -> Result<Vec<ListedDevice>> {
    let dir = match std::fs::read_dir(&u.socket_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {}", u.socket_dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|n| n.strip_suffix(".sock")) else {
            continue;
        };
        let Some(pid) = u.daemon_pid(name) else {
            continue;
        };
        let here = Netns::from_pid(pid)
            .and_then(|ns| ns.same_as(netns))
            .unwrap_or(false);
        if here {
            out.push((name.to_string(), pid));
        }
    }
    out.sort();
    Ok(out
        .into_iter()
        .map(|(socket_name, pid)| ListedDevice::Userspace { socket_name, pid })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Device, Peer, PeerConfig, PresharedKey, PrivateKey};

    /// Debug of every public type that can hold key material shows none of it.
    #[test]
    fn no_public_type_prints_a_secret() {
        let k = PrivateKey::generate().unwrap();
        let psk = PresharedKey::generate().unwrap();
        let peer_cfg = PeerConfig::new(k.public_key())
            .preshared_key(psk.clone())
            .allowed_ip("10.0.0.0/24".parse().unwrap());
        let cfg = DeviceConfig::new()
            .private_key(k.clone())
            .peer(peer_cfg.clone());
        let spec = InterfaceSpec::new(IfName::new("a").unwrap(), IfName::new("b").unwrap())
            .device(cfg.clone());
        let mut dev = Device::default();
        dev.apply(&cfg);
        let mut peer = Peer::new(k.public_key());
        peer.preshared_key = Some(psk.clone());
        let err = crate::Error::Key(crate::KeyError::Encoding {
            kind: "private key",
        });
        let printed = [
            format!("{k:?} {k}"),
            format!("{psk:?} {psk}"),
            format!("{peer_cfg:?}"),
            format!("{cfg:?}"),
            format!("{spec:?}"),
            format!("{dev:?}"),
            format!("{peer:?}"),
            format!("{err:?} {err}"),
        ];
        let secrets = [k.to_base64(), psk.to_base64()];
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        for p in &printed {
            for s in &secrets {
                assert!(!p.contains(s.as_str()), "{p}");
            }
            assert!(
                !p.contains(&hex(k.as_bytes())) && !p.contains(&hex(psk.as_bytes())),
                "{p}"
            );
            // No raw byte arrays either.
            assert!(!p.contains(&format!("{:?}", k.as_bytes())), "{p}");
            assert!(!p.contains(&format!("{:?}", psk.as_bytes())), "{p}");
        }
    }
}
