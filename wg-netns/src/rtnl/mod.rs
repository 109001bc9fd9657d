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

mod addr;
mod link;
mod route;

pub use crate::ifname::{IfName, IFNAMSIZ_MAX};
pub use crate::net::normalize;
pub(crate) use link::parse_link;
pub use route::{Route, RouteKind, RouteScope, RoutesSynced, TABLE_MAIN};

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// `IFLA_IFALIAS`, when the link has one: the mark wg-netns leaves on
    /// every interface it creates (`wg-netns:BIRTH_NAME`), which says whose
    /// it is.
    pub alias: Option<String>,
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
    let _ = route::parse_route(p);
    if let Ok(m) = Ifaddrmsg::from_bytes_with_input(&mut Cursor::new(p), p.len()) {
        let _ = m.rtattrs().iter().count();
    }
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
    fn parsers_reject_garbage_without_panicking() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse_link(&junk);
            let _ = route::parse_route(&junk);
        }
    }
}
