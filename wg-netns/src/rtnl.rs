//! Links, addresses and routes over rtnetlink (neli typed messages).
//!
//! An [`Rtnl`] is a route-netlink socket bound to one network namespace; every
//! call acts on that namespace, from whatever thread makes it.
//!
//! ```no_run
//! use wg_netns::{IfName, Netns, Rtnl, Route};
//! let pod = Netns::from_name("pod1")?;
//! let rtnl = Rtnl::open(&pod)?;
//! let wg0 = rtnl.link_by_name(&IfName::new("wg0")?)?;
//! rtnl.add_address(wg0.index, "10.13.13.210/24".parse()?)?;
//! rtnl.set_up(wg0.index, true)?;
//! rtnl.add_route(&Route::new("0.0.0.0/0".parse()?).dev(wg0.index))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io::Cursor;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use ipnetwork::IpNetwork;
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{
    Ifa, Iff, Ifla, IflaInfo, RtAddrFamily, RtScope, RtTable, Rta, Rtm, Rtn, Rtprot,
};
use neli::consts::socket::NlFamily;
use neli::nl::{NlPayload, NlmsghdrBuilder};
use neli::rtnl::{
    Ifaddrmsg, IfaddrmsgBuilder, Ifinfomsg, IfinfomsgBuilder, Rtattr, RtattrBuilder, Rtmsg,
    RtmsgBuilder,
};
use neli::types::{Buffer, RtBuffer};
use neli::{FromBytesWithInput, Size, ToBytes};

use crate::error::{Error, Result};
use crate::netlink::NlConn;
use crate::netns::Netns;

/// Maximum interface name length (IFNAMSIZ - 1).
pub const IFNAMSIZ_MAX: usize = 15;

/// A validated Linux interface name: 1..=15 bytes, no `/`, `:`, whitespace or
/// NUL, not `.` or `..`.
///
/// ```
/// use wg_netns::IfName;
/// assert!(IfName::new("wg0").is_ok());
/// assert!(IfName::new("a-name-that-is-too-long").is_err());
/// assert!(IfName::new("eth0:1").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    /// Validate a name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let bad = |why: &str| Error::invalid("interface name", format!("{name:?} {why}"));
        if name.is_empty() {
            return Err(bad("is empty"));
        }
        if name.len() > IFNAMSIZ_MAX {
            return Err(bad("is longer than 15 bytes"));
        }
        if name == "." || name == ".." {
            return Err(bad("is reserved"));
        }
        if name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
        {
            return Err(bad("contains '/', ':', NUL or whitespace"));
        }
        Ok(IfName(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::str::FromStr for IfName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        IfName::new(s)
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for IfName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for IfName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IfName::new(s).map_err(serde::de::Error::custom)
    }
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index (unique within its namespace).
    pub index: u32,
    /// Current name.
    pub name: String,
    /// `IFLA_INFO_KIND` ("wireguard", "veth", "tun", ...), when the link has one.
    pub kind: Option<String>,
    /// MTU in bytes.
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

/// Scope of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteScope {
    /// Reaches beyond this link (routes with a gateway).
    Universe,
    /// Directly on the link (`scope link`).
    Link,
    /// A host-local route.
    Host,
    /// Any other scope value.
    Other(u8),
}

impl RouteScope {
    fn to_raw(self) -> u8 {
        match self {
            RouteScope::Universe => 0,
            RouteScope::Link => 253,
            RouteScope::Host => 254,
            RouteScope::Other(v) => v,
        }
    }
    fn from_raw(v: u8) -> Self {
        match v {
            0 => RouteScope::Universe,
            253 => RouteScope::Link,
            254 => RouteScope::Host,
            v => RouteScope::Other(v),
        }
    }
}

/// The main routing table's id.
pub const TABLE_MAIN: u32 = 254;

/// A unicast route.
///
/// ```
/// use wg_netns::{Route, RouteScope};
/// let r = Route::new("10.13.13.0/24".parse().unwrap()).dev(3).table(100);
/// assert_eq!(r.scope, RouteScope::Link);
/// let d = Route::new("::/0".parse().unwrap()).via("fd00::1".parse().unwrap());
/// assert_eq!(d.scope, RouteScope::Universe);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Destination prefix (host bits are cleared when the route is built).
    pub destination: IpNetwork,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Routing table id (254 = main).
    pub table: u32,
    /// Scope: `Link` for device routes, `Universe` for routes via a gateway.
    pub scope: RouteScope,
    /// Metric (`RTA_PRIORITY`).
    pub metric: Option<u32>,
}

impl Route {
    /// A device route to `destination` in the main table, scope link.
    pub fn new(destination: IpNetwork) -> Self {
        Route {
            destination: normalize(destination),
            gateway: None,
            oif: None,
            table: TABLE_MAIN,
            scope: RouteScope::Link,
            metric: None,
        }
    }

    /// Send through interface `index`.
    pub fn dev(mut self, index: u32) -> Self {
        self.oif = Some(index);
        self
    }

    /// Send via `gateway` (makes the route scope universe).
    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self.scope = RouteScope::Universe;
        self
    }

    /// Put the route into table `table`.
    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    /// Set the metric.
    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }

    /// Set the scope explicitly.
    pub fn scope(mut self, scope: RouteScope) -> Self {
        self.scope = scope;
        self
    }
}

/// Clear host bits: the kernel refuses `10.0.0.1/24` as a route destination.
pub fn normalize(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

fn family_of(ip: &IpAddr) -> RtAddrFamily {
    match ip {
        IpAddr::V4(_) => RtAddrFamily::Inet,
        IpAddr::V6(_) => RtAddrFamily::Inet6,
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    if let Ok(a) = <[u8; 4]>::try_from(b) {
        Some(IpAddr::from(a))
    } else if let Ok(a) = <[u8; 16]>::try_from(b) {
        Some(IpAddr::from(a))
    } else {
        None
    }
}

fn attr<T, P>(ty: T, payload: P) -> Result<Rtattr<T, Buffer>>
where
    T: neli::consts::rtnl::RtaType,
    P: Size + ToBytes,
{
    RtattrBuilder::default()
        .rta_type(ty)
        .rta_payload(payload)
        .build()
        .map_err(|e| Error::Internal(format!("building a netlink attribute: {e}")))
}

/// `IFLA_NET_NS_FD`: the namespace a link is created in or moved to.
fn netns_attr(ns: &Netns) -> Result<Rtattr<Ifla, Buffer>> {
    attr(Ifla::NetNsFd, ns.as_fd().as_raw_fd() as u32)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A route-netlink socket bound to one network namespace.
#[derive(Debug)]
pub struct Rtnl {
    conn: NlConn,
}

impl Rtnl {
    /// Open a socket in the calling thread's namespace.
    pub fn current() -> Result<Self> {
        Ok(Rtnl {
            conn: NlConn::connect(NlFamily::Route)?,
        })
    }

    /// Open a socket in `netns` (created on a short-lived thread inside it;
    /// usable from any thread afterwards).
    pub fn open(netns: &Netns) -> Result<Self> {
        netns.run(Self::current)?
    }

    fn request<P>(
        &self,
        op: &'static str,
        target: &dyn Fn() -> String,
        ty: Rtm,
        flags: NlmF,
        payload: P,
        on_msg: impl FnMut(u16, &[u8]) -> Result<()>,
    ) -> Result<()>
    where
        P: Size + ToBytes + fmt::Debug,
    {
        let seq = self.conn.next_seq();
        let msg = NlmsghdrBuilder::default()
            .nl_type(ty)
            .nl_flags(NlmF::REQUEST | flags)
            .nl_seq(seq)
            .nl_payload(NlPayload::Payload(payload))
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        let mut c = Cursor::new(vec![0u8; msg.padded_size()]);
        msg.to_bytes(&mut c).map_err(|e| Error::NetlinkDecode {
            op,
            reason: e.to_string(),
        })?;
        self.conn.transact(op, target, c.get_ref(), seq, on_msg)
    }

    fn ack<P>(
        &self,
        op: &'static str,
        target: &dyn Fn() -> String,
        ty: Rtm,
        flags: NlmF,
        payload: P,
    ) -> Result<()>
    where
        P: Size + ToBytes + fmt::Debug,
    {
        self.request(op, target, ty, flags | NlmF::ACK, payload, |_, _| Ok(()))
    }

    // ----- links -------------------------------------------------------------

    fn get_link(&self, index: u32, name: Option<&IfName>) -> Result<Link> {
        let mut attrs = Vec::new();
        if let Some(n) = name {
            attrs.push(attr(Ifla::Ifname, cstr(n.as_str()))?);
        }
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(index as i32)
            .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        let target = || {
            name.map(|n| n.to_string())
                .unwrap_or_else(|| format!("ifindex {index}"))
        };
        let mut found = None;
        let r = self.request(
            "RTM_GETLINK",
            &target,
            Rtm::Getlink,
            NlmF::empty(),
            msg,
            |_, p| {
                found = Some(parse_link(p)?);
                Ok(())
            },
        );
        match r {
            Err(e) if e.is_not_found() => Err(Error::NotFound {
                what: crate::error::Object::Link,
                name: target(),
            }),
            Err(e) => Err(e),
            Ok(()) => found.ok_or_else(|| Error::NotFound {
                what: crate::error::Object::Link,
                name: target(),
            }),
        }
    }

    /// The link called `name`; [`Error::NotFound`] when there is none.
    pub fn link_by_name(&self, name: &IfName) -> Result<Link> {
        self.get_link(0, Some(name))
    }

    /// The link with index `index`; [`Error::NotFound`] when there is none.
    pub fn link_by_index(&self, index: u32) -> Result<Link> {
        self.get_link(index, None)
    }

    /// Every link in the namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        let mut out = Vec::new();
        self.request(
            "RTM_GETLINK dump",
            &|| "all links".into(),
            Rtm::Getlink,
            NlmF::DUMP,
            msg,
            |_, p| {
                out.push(parse_link(p)?);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Create a link of kind `kind` (e.g. "wireguard") named `name`.
    /// Fails with `EEXIST` if the name is taken.
    pub fn create_link(&self, name: &IfName, kind: &str) -> Result<Link> {
        self.new_link(name, kind, None, None, &|| format!("{name} (kind {kind})"))?;
        self.created(name)
    }

    /// Create a link of kind `kind` named `name` directly inside `netns`
    /// (`ip link add NAME netns NS type KIND`), without a later move: moving a
    /// link between namespaces costs the kernel an RCU barrier (10-25 ms on
    /// the machines measured in docs/benchmarks.md). Devices that remember
    /// where they were created keep that namespace: a kernel WireGuard link
    /// made this way has its UDP socket in *this* handle's namespace and its
    /// interface in `netns`. Read the link back with an [`Rtnl`] opened in
    /// `netns`. Fails with `EEXIST` if the name is taken there.
    ///
    /// ```no_run
    /// use wg_netns::{IfName, Netns, Rtnl};
    /// let node = Rtnl::open(&Netns::current()?)?;
    /// let pod = Netns::from_path("/var/run/netns/pod1")?;
    /// node.create_link_in(&IfName::new("wg0")?, "wireguard", &pod)?;
    /// let link = Rtnl::open(&pod)?.link_by_name(&IfName::new("wg0")?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_link_in(&self, name: &IfName, kind: &str, netns: &Netns) -> Result<()> {
        self.new_link(name, kind, None, Some(netns), &|| {
            format!("{name} (kind {kind}, in another namespace)")
        })
    }

    /// Create a veth pair: `name` here, `peer_name` in `peer_netns` (here if
    /// `None`). Handy for underlays in tests and runtimes.
    pub fn create_veth(
        &self,
        name: &IfName,
        peer_name: &IfName,
        peer_netns: Option<&Netns>,
    ) -> Result<Link> {
        let mut peer_attrs = vec![attr(Ifla::Ifname, cstr(peer_name.as_str()))?];
        if let Some(ns) = peer_netns {
            peer_attrs.push(netns_attr(ns)?);
        }
        let peer = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .rtattrs(peer_attrs.into_iter().collect::<RtBuffer<_, _>>())
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        let mut peer_bytes = Cursor::new(vec![0u8; peer.padded_size()]);
        peer.to_bytes(&mut peer_bytes)
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        const VETH_INFO_PEER: u16 = 1;
        let data = attr(IflaInfo::Data, Buffer::new())?
            .nest(&attr(VETH_INFO_PEER, peer_bytes.into_inner())?)
            .map_err(|e| Error::Internal(format!("building a netlink attribute: {e}")))?;
        self.new_link(name, "veth", Some(data), None, &|| {
            format!("{name} <-> {peer_name} (veth)")
        })?;
        self.created(name)
    }

    /// `RTM_NEWLINK` of `kind` named `name`, with optional `IFLA_INFO_DATA`,
    /// here or in `netns`.
    fn new_link(
        &self,
        name: &IfName,
        kind: &str,
        data: Option<Rtattr<IflaInfo, Buffer>>,
        netns: Option<&Netns>,
        target: &dyn Fn() -> String,
    ) -> Result<()> {
        let mut info = attr(Ifla::Linkinfo, Buffer::new())?
            .nest(&attr(IflaInfo::Kind, cstr(kind))?)
            .map_err(|e| Error::Internal(format!("building a netlink attribute: {e}")))?;
        if let Some(d) = data {
            info = info
                .nest(&d)
                .map_err(|e| Error::Internal(format!("building a netlink attribute: {e}")))?;
        }
        let mut attrs = vec![attr(Ifla::Ifname, cstr(name.as_str()))?, info];
        if let Some(ns) = netns {
            attrs.push(netns_attr(ns)?);
        }
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        self.ack(
            "RTM_NEWLINK",
            target,
            Rtm::Newlink,
            NlmF::CREATE | NlmF::EXCL,
            msg,
        )
    }

    /// Look up a link just created; if that fails, remove it again so a
    /// failed create leaves nothing behind.
    fn created(&self, name: &IfName) -> Result<Link> {
        self.link_by_name(name).inspect_err(|_| {
            let _ = self.delete_link_by_name(name);
        })
    }

    /// Delete the link called `name`. [`Error::is_not_found`] when there is none.
    pub fn delete_link_by_name(&self, name: &IfName) -> Result<()> {
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .rtattrs(
                vec![attr(Ifla::Ifname, cstr(name.as_str()))?]
                    .into_iter()
                    .collect::<RtBuffer<_, _>>(),
            )
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        self.ack(
            "RTM_DELLINK",
            &|| name.to_string(),
            Rtm::Dellink,
            NlmF::empty(),
            msg,
        )
    }

    /// Create a WireGuard link (kernel WireGuard only).
    pub fn create_wireguard(&self, name: &IfName) -> Result<Link> {
        self.create_link(name, "wireguard")
    }

    /// Delete a link. [`Error::is_not_found`] is true when it was already gone.
    pub fn delete_link(&self, index: u32) -> Result<()> {
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(index as i32)
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        self.ack(
            "RTM_DELLINK",
            &|| format!("ifindex {index}"),
            Rtm::Dellink,
            NlmF::empty(),
            msg,
        )
    }

    fn set_link(
        &self,
        op: &'static str,
        index: u32,
        builder: IfinfomsgBuilder,
        attrs: Vec<Rtattr<Ifla, Buffer>>,
    ) -> Result<()> {
        let msg = builder
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(index as i32)
            .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        self.ack(
            op,
            &|| format!("ifindex {index}"),
            Rtm::Newlink,
            NlmF::empty(),
            msg,
        )
    }

    /// Bring a link up or down.
    pub fn set_up(&self, index: u32, up: bool) -> Result<()> {
        let b = IfinfomsgBuilder::default();
        let b = if up { b.up() } else { b.down() };
        self.set_link(
            if up {
                "RTM_NEWLINK (up)"
            } else {
                "RTM_NEWLINK (down)"
            },
            index,
            b,
            vec![],
        )
    }

    /// Set the MTU.
    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set_link(
            "RTM_NEWLINK (mtu)",
            index,
            IfinfomsgBuilder::default(),
            vec![attr(Ifla::Mtu, mtu)?],
        )
    }

    /// Rename a link (it must be down for most kinds).
    pub fn rename(&self, index: u32, name: &IfName) -> Result<()> {
        self.set_link(
            "RTM_NEWLINK (rename)",
            index,
            IfinfomsgBuilder::default(),
            vec![attr(Ifla::Ifname, cstr(name.as_str()))?],
        )
    }

    /// Move a link into another namespace, renaming it in the same message
    /// when `new_name` is given (so the name never clashes in the target).
    pub fn move_to_netns(
        &self,
        index: u32,
        target: &Netns,
        new_name: Option<&IfName>,
    ) -> Result<()> {
        let mut attrs = vec![netns_attr(target)?];
        if let Some(n) = new_name {
            attrs.push(attr(Ifla::Ifname, cstr(n.as_str()))?);
        }
        self.set_link(
            "RTM_NEWLINK (move to namespace)",
            index,
            IfinfomsgBuilder::default(),
            attrs,
        )
    }

    // ----- addresses ---------------------------------------------------------

    fn addr_msg(&self, index: u32, addr: &IpNetwork) -> Result<Ifaddrmsg> {
        let ip = addr.ip();
        let mut attrs = vec![attr(Ifa::Local, ip_bytes(&ip))?];
        attrs.push(attr(Ifa::Address, ip_bytes(&ip))?);
        IfaddrmsgBuilder::default()
            .ifa_family(family_of(&ip))
            .ifa_prefixlen(addr.prefix())
            .ifa_scope(RtScope::Universe)
            .ifa_index(index)
            .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))
    }

    /// Add an address (IPv4 or IPv6) to a link. `EEXIST` if present.
    pub fn add_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        let msg = self.addr_msg(index, &addr)?;
        self.ack(
            "RTM_NEWADDR",
            &|| format!("{addr} on ifindex {index}"),
            Rtm::Newaddr,
            NlmF::CREATE | NlmF::EXCL,
            msg,
        )
    }

    /// Remove an address. [`Error::is_not_found`] when it was not there.
    pub fn del_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        let msg = self.addr_msg(index, &addr)?;
        self.ack(
            "RTM_DELADDR",
            &|| format!("{addr} on ifindex {index}"),
            Rtm::Deladdr,
            NlmF::empty(),
            msg,
        )
    }

    /// The addresses of link `index` (all families).
    pub fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        let msg = IfaddrmsgBuilder::default()
            .ifa_family(RtAddrFamily::Unspecified)
            .ifa_prefixlen(0)
            .ifa_scope(RtScope::Universe)
            .ifa_index(0)
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        let mut out = Vec::new();
        self.request(
            "RTM_GETADDR dump",
            &|| format!("ifindex {index}"),
            Rtm::Getaddr,
            NlmF::DUMP,
            msg,
            |_, p| {
                let m = Ifaddrmsg::from_bytes_with_input(&mut Cursor::new(p), p.len()).map_err(
                    |e| Error::NetlinkDecode {
                        op: "RTM_GETADDR",
                        reason: e.to_string(),
                    },
                )?;
                if *m.ifa_index() != index {
                    return Ok(());
                }
                let mut local = None;
                let mut address = None;
                for a in m.rtattrs().iter() {
                    match a.rta_type() {
                        Ifa::Local => local = ip_from_bytes(a.rta_payload().as_ref()),
                        Ifa::Address => address = ip_from_bytes(a.rta_payload().as_ref()),
                        _ => {}
                    }
                }
                if let Some(ip) = local.or(address) {
                    if let Ok(net) = IpNetwork::new(ip, *m.ifa_prefixlen()) {
                        out.push(net);
                    }
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    // ----- routes ------------------------------------------------------------

    fn route_msg(&self, r: &Route) -> Result<Rtmsg> {
        let dst = normalize(r.destination);
        let ip = dst.ip();
        let mut attrs = Vec::new();
        if dst.prefix() > 0 {
            attrs.push(attr(Rta::Dst, ip_bytes(&ip))?);
        }
        if let Some(gw) = r.gateway {
            attrs.push(attr(Rta::Gateway, ip_bytes(&gw))?);
        }
        if let Some(oif) = r.oif {
            attrs.push(attr(Rta::Oif, oif)?);
        }
        if let Some(m) = r.metric {
            attrs.push(attr(Rta::Priority, m)?);
        }
        attrs.push(attr(Rta::Table, r.table)?);
        let table8 = if r.table < 256 {
            r.table as u8
        } else {
            252 /* RT_TABLE_COMPAT */
        };
        RtmsgBuilder::default()
            .rtm_family(family_of(&ip))
            .rtm_dst_len(dst.prefix())
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::from(table8))
            .rtm_protocol(Rtprot::Boot)
            .rtm_scope(RtScope::from(r.scope.to_raw()))
            .rtm_type(Rtn::Unicast)
            .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))
    }

    /// Add a route. `EEXIST` if an identical route exists.
    pub fn add_route(&self, r: &Route) -> Result<()> {
        let msg = self.route_msg(r)?;
        self.ack(
            "RTM_NEWROUTE",
            &|| describe_route(r),
            Rtm::Newroute,
            NlmF::CREATE | NlmF::EXCL,
            msg,
        )
    }

    /// Add a route, or replace the route with the same destination, table
    /// and metric (`ip route replace`): how a full tunnel's `0.0.0.0/0` takes
    /// over a default route that an earlier plugin installed.
    pub fn replace_route(&self, r: &Route) -> Result<()> {
        let msg = self.route_msg(r)?;
        self.ack(
            "RTM_NEWROUTE (replace)",
            &|| describe_route(r),
            Rtm::Newroute,
            NlmF::CREATE | NlmF::REPLACE,
            msg,
        )
    }

    /// The route the kernel would use to reach `ip` (`ip route get`), with
    /// its output interface. [`Error::is_not_found`]-style errors
    /// (`ENETUNREACH` is not one) when there is none.
    pub fn route_get(&self, ip: IpAddr) -> Result<Route> {
        let full = if ip.is_ipv4() { 32 } else { 128 };
        let msg = RtmsgBuilder::default()
            .rtm_family(family_of(&ip))
            .rtm_dst_len(full)
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::Unspec)
            .rtm_protocol(Rtprot::Unspec)
            .rtm_scope(RtScope::Universe)
            .rtm_type(Rtn::Unspec)
            .rtattrs(
                vec![attr(Rta::Dst, ip_bytes(&ip))?]
                    .into_iter()
                    .collect::<RtBuffer<_, _>>(),
            )
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        let mut found = None;
        self.request(
            "RTM_GETROUTE",
            &|| ip.to_string(),
            Rtm::Getroute,
            NlmF::empty(),
            msg,
            |_, p| {
                found = parse_route(p)?;
                Ok(())
            },
        )?;
        found.ok_or_else(|| Error::NotFound {
            what: crate::error::Object::Route,
            name: ip.to_string(),
        })
    }

    /// Delete a route. [`Error::is_not_found`] when it was not there.
    pub fn del_route(&self, r: &Route) -> Result<()> {
        let msg = self.route_msg(r)?;
        self.ack(
            "RTM_DELROUTE",
            &|| describe_route(r),
            Rtm::Delroute,
            NlmF::empty(),
            msg,
        )
    }

    /// Unicast routes of both families in table `table` (all tables if `None`).
    pub fn routes(&self, table: Option<u32>) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [RtAddrFamily::Inet, RtAddrFamily::Inet6] {
            let msg = RtmsgBuilder::default()
                .rtm_family(family)
                .rtm_dst_len(0)
                .rtm_src_len(0)
                .rtm_tos(0)
                .rtm_table(RtTable::Unspec)
                .rtm_protocol(Rtprot::Unspec)
                .rtm_scope(RtScope::Universe)
                .rtm_type(Rtn::Unspec)
                .build()
                .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
            self.request(
                "RTM_GETROUTE dump",
                &|| "routes".into(),
                Rtm::Getroute,
                NlmF::DUMP,
                msg,
                |_, p| {
                    if let Some(r) = parse_route(p)? {
                        if table.is_none_or(|t| t == r.table) {
                            out.push(r);
                        }
                    }
                    Ok(())
                },
            )?;
        }
        Ok(out)
    }
}

fn describe_route(r: &Route) -> String {
    let mut s = r.destination.to_string();
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" dev ifindex {oif}"));
    }
    if r.table != TABLE_MAIN {
        s.push_str(&format!(" table {}", r.table));
    }
    s
}

fn decode_err(op: &'static str) -> impl Fn(neli::err::DeError) -> Error {
    move |e| Error::NetlinkDecode {
        op,
        reason: e.to_string(),
    }
}

/// Run both decoders on arbitrary bytes (fuzzing entry point).
pub(crate) fn fuzz_decode(p: &[u8]) {
    let _ = parse_link(p);
    let _ = parse_route(p);
    if let Ok(m) = Ifaddrmsg::from_bytes_with_input(&mut Cursor::new(p), p.len()) {
        let _ = m.rtattrs().iter().count();
    }
}

pub(crate) fn parse_link(p: &[u8]) -> Result<Link> {
    let m = Ifinfomsg::from_bytes_with_input(&mut Cursor::new(p), p.len())
        .map_err(decode_err("RTM_GETLINK"))?;
    let mut link = Link {
        index: *m.ifi_index() as u32,
        name: String::new(),
        kind: None,
        mtu: 0,
        up: m.ifi_flags().contains(Iff::UP),
    };
    for a in m.rtattrs().iter() {
        let payload = a.rta_payload().as_ref();
        match a.rta_type() {
            Ifla::Ifname => {
                link.name = crate::netlink::read_str(payload)
                    .unwrap_or_default()
                    .to_string()
            }
            Ifla::Mtu => link.mtu = crate::netlink::read_u32(payload).unwrap_or(0),
            Ifla::Linkinfo => {
                for inner in crate::netlink::AttrIter::new(payload).flatten() {
                    if inner.0 == u16::from(IflaInfo::Kind) {
                        link.kind = crate::netlink::read_str(inner.1).map(str::to_string);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(link)
}

fn parse_route(p: &[u8]) -> Result<Option<Route>> {
    let m = Rtmsg::from_bytes_with_input(&mut Cursor::new(p), p.len())
        .map_err(decode_err("RTM_GETROUTE"))?;
    if *m.rtm_type() != Rtn::Unicast {
        return Ok(None);
    }
    let mut table = u32::from(u8::from(*m.rtm_table()));
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = None;
    for a in m.rtattrs().iter() {
        let payload = a.rta_payload().as_ref();
        match a.rta_type() {
            Rta::Dst => dst = ip_from_bytes(payload),
            Rta::Gateway => gateway = ip_from_bytes(payload),
            Rta::Oif => oif = crate::netlink::read_u32(payload),
            Rta::Priority => metric = crate::netlink::read_u32(payload),
            Rta::Table => table = crate::netlink::read_u32(payload).unwrap_or(table),
            _ => {}
        }
    }
    let dst = dst.unwrap_or(match m.rtm_family() {
        RtAddrFamily::Inet6 => IpAddr::from([0u8; 16]),
        _ => IpAddr::from([0u8; 4]),
    });
    let Ok(destination) = IpNetwork::new(dst, *m.rtm_dst_len()) else {
        return Ok(None);
    };
    Ok(Some(Route {
        destination,
        gateway,
        oif,
        table,
        scope: RouteScope::from_raw(u8::from(*m.rtm_scope())),
        metric,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_validation() {
        assert!(IfName::new("wg0").is_ok());
        assert!(IfName::new("x".repeat(15)).is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "a:b",
            "abcdefghijklmnop",
            "a\0",
        ] {
            assert!(IfName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn route_destination_is_normalized() {
        let r = Route::new("10.13.13.210/24".parse().unwrap());
        assert_eq!(r.destination.to_string(), "10.13.13.0/24");
        let r = Route::new("fd00::5/64".parse().unwrap());
        assert_eq!(r.destination.to_string(), "fd00::/64");
    }

    #[test]
    fn route_message_round_trips_through_the_parser() {
        let rtnl_free = |r: Route| {
            // Build the payload the way `add_route` does and parse it back.
            let dst = normalize(r.destination);
            let ip = dst.ip();
            let mut attrs = Vec::new();
            if dst.prefix() > 0 {
                attrs.push(attr(Rta::Dst, ip_bytes(&ip)).unwrap());
            }
            if let Some(gw) = r.gateway {
                attrs.push(attr(Rta::Gateway, ip_bytes(&gw)).unwrap());
            }
            if let Some(oif) = r.oif {
                attrs.push(attr(Rta::Oif, oif).unwrap());
            }
            attrs.push(attr(Rta::Table, r.table).unwrap());
            let msg = RtmsgBuilder::default()
                .rtm_family(family_of(&ip))
                .rtm_dst_len(dst.prefix())
                .rtm_src_len(0)
                .rtm_tos(0)
                .rtm_table(RtTable::Compat)
                .rtm_protocol(Rtprot::Boot)
                .rtm_scope(RtScope::from(r.scope.to_raw()))
                .rtm_type(Rtn::Unicast)
                .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
                .build()
                .unwrap();
            let mut c = Cursor::new(vec![0u8; msg.padded_size()]);
            msg.to_bytes(&mut c).unwrap();
            parse_route(c.get_ref()).unwrap().unwrap()
        };
        for r in [
            Route::new("0.0.0.0/0".parse().unwrap()).dev(7).table(1000),
            Route::new("fd00::/8".parse().unwrap())
                .via("fd00::1".parse().unwrap())
                .dev(2),
        ] {
            assert_eq!(rtnl_free(r.clone()), r);
        }
    }

    #[test]
    fn parsers_reject_garbage_without_panicking() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse_link(&junk);
            let _ = parse_route(&junk);
        }
    }
}
