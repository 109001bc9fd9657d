//! Link and namespace events from rtnetlink notifications, without polling.
//!
//! See [`LinkEvents`] for the two modes, overruns, async use and an
//! example.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use neli::consts::socket::NlFamily;
use rustix::io::Errno;
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvFlags, ReturnFlags, SocketFlags, SocketType,
};

use crate::error::{libc_errno, Error, Result};
use crate::netlink::{
    read_u32, AttrIter, MsgHeader, MsgWriter, NlConn, NLMSG_ERROR, NLMSG_HDRLEN, NLM_F_ACK,
    NLM_F_REQUEST,
};
use crate::netns::Netns;
use crate::rtnl::{parse_link, Link};

// linux/rtnetlink.h
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWNSID: u16 = 88;
const RTM_DELNSID: u16 = 89;
const RTM_GETNSID: u16 = 90;
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NSID: u32 = 28;
// linux/netlink.h
const NLMSG_OVERRUN: u16 = 4;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NETLINK_LISTEN_ALL_NSID: libc::c_int = 8;
// linux/net_namespace.h
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
const NETNSA_NSID_NOT_ASSIGNED: i32 = -1;
// linux/if.h
const IFF_LOWER_UP: u32 = 1 << 16;
/// `struct ifinfomsg`: family, pad, type, index, flags, change.
const IFINFOMSG_LEN: usize = 16;
/// `ifi_change` of the notification sent when a link is registered in (or
/// moved into) a namespace; later changes carry the flags that changed.
const IFI_CHANGE_ALL: u32 = u32::MAX;
const AF_UNSPEC: u8 = 0;
const ENOBUFS: i32 = 105;

/// Receive buffer for one notification datagram (one or more messages).
/// Link notifications are a few KiB; a larger datagram is reported as
/// [`LinkEvent::Overrun`] and the buffer grows, up to [`MAX_RECV_BUF`].
const RECV_BUF: usize = 64 * 1024;
const MAX_RECV_BUF: usize = 1024 * 1024;
/// Room for the control messages of one datagram (we expect at most one
/// `int`, 24 bytes on 64-bit).
const CMSG_BUF: usize = 128;

/// What happened to a link, as carried by a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkUpdate {
    /// Index, name, kind (`IFLA_INFO_KIND`: "wireguard", "tun", "veth", ...),
    /// MTU and administrative state (`IFF_UP`) of the link.
    pub link: Link,
    /// The carrier is up (`IFF_LOWER_UP`): the driver can pass packets.
    pub lower_up: bool,
    /// All interface flags (`ifi_flags`, the `IFF_*` bits).
    pub flags: u32,
    /// Which namespace the link lives in: `None` for the namespace the
    /// subscription was opened in, `Some(nsid)` for a peer namespace seen
    /// through [`LinkEvents::subscribe_all`] (the id that namespace has in
    /// the node namespace, as returned by [`Netns::nsid_of`]).
    pub nsid: Option<i32>,
}

/// One notification from a [`LinkEvents`] subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkEvent {
    /// A link appeared: it was created in, or moved into, its namespace
    /// (`RTM_NEWLINK` sent when the device is registered there).
    Added(LinkUpdate),
    /// A link's state changed (up/down, carrier, MTU, name, ...): any other
    /// `RTM_NEWLINK`. A watcher that only needs "the link exists" can treat
    /// `Added` and `Changed` alike.
    Changed(LinkUpdate),
    /// A link was deleted or moved out of its namespace (`RTM_DELLINK`).
    Removed(LinkUpdate),
    /// The node namespace gave namespace id `nsid` to a peer namespace
    /// (`RTM_NEWNSID`; [`LinkEvents::subscribe_all`] only).
    NsidAssigned {
        /// The new id.
        nsid: i32,
    },
    /// The peer namespace with id `nsid` was destroyed (`RTM_DELNSID`;
    /// [`LinkEvents::subscribe_all`] only). All its links are gone with it,
    /// without a [`LinkEvent::Removed`] of their own. The id is free again
    /// and may later be given to another namespace.
    NamespaceGone {
        /// The id the namespace had in the node namespace.
        nsid: i32,
    },
    /// Notifications were lost (the socket's receive queue overflowed, or a
    /// message could not be received or decoded whole): the state known so
    /// far may be stale. Resync by listing the links; the subscription
    /// stays valid and goes on delivering events.
    Overrun,
}

impl LinkEvent {
    /// The link this event is about, for `Added`, `Changed` and `Removed`.
    pub fn link(&self) -> Option<&LinkUpdate> {
        match self {
            LinkEvent::Added(u) | LinkEvent::Changed(u) | LinkEvent::Removed(u) => Some(u),
            _ => None,
        }
    }
}

/// A subscription to link notifications: a netlink socket subscribed to the
/// kernel's link notifications (`RTNLGRP_LINK`). It comes in two modes:
///
/// - [`LinkEvents::subscribe`]: the links of one namespace. The socket lives
///   in that namespace and, like every socket, **keeps it alive**: a pod
///   watched this way never dies while the watch is open.
/// - [`LinkEvents::subscribe_all`]: one socket in the node namespace with
///   `NETLINK_LISTEN_ALL_NSID`. It receives the link events of every
///   namespace that has a *namespace id* (nsid) in the node namespace, each
///   tagged with that id, and [`LinkEvent::NamespaceGone`] when such a
///   namespace is destroyed. An nsid does not pin its namespace, so this is
///   how a node agent learns that a pod's namespace vanished. Give a pod an
///   id with [`Netns::nsid_of`].
///
/// Subscribe first, then list the current links ([`crate::Rtnl::links`]):
/// a change made between the two is then seen twice rather than never.
/// Notifications are datagrams queued on the socket; when the queue
/// overflows the kernel drops them and the next read reports
/// [`LinkEvent::Overrun`]: list the links again and carry on with the same
/// subscription ([`LinkEvents::set_receive_buffer_size`] makes it rarer).
///
/// The socket's descriptor is available through [`AsFd`]/[`AsRawFd`] so an
/// async runtime can wait on it; read with [`LinkEvents::try_next`], which
/// never blocks. With tokio:
///
/// ```ignore
/// let events = tokio::io::unix::AsyncFd::new(LinkEvents::subscribe_all(&node)?)?;
/// loop {
///     let mut ready = events.readable_mut().await?;
///     while let Some(event) = ready.get_inner_mut().try_next()? {
///         handle(event);
///     }
///     ready.clear_ready();
/// }
/// ```
///
/// ```no_run
/// use std::time::Duration;
/// use wg_netns::{LinkEvent, LinkEvents, Netns};
/// # fn main() -> Result<(), wg_netns::Error> {
/// let node = Netns::current()?;
/// let mut events = LinkEvents::subscribe_all(&node)?;
/// let pod = Netns::from_name("pod1")?;
/// let pod_id = node.nsid_of(&pod)?;
/// drop(pod); // an open handle would keep the namespace alive
/// loop {
///     match events.next_timeout(Duration::from_secs(30))? {
///         Some(LinkEvent::Removed(u)) if u.nsid == Some(pod_id) && u.link.name == "wg0" => {
///             eprintln!("pod1 lost wg0");
///         }
///         Some(LinkEvent::NamespaceGone { nsid }) if nsid == pod_id => break,
///         Some(LinkEvent::Overrun) => { /* events were lost: resync by listing */ }
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
///
/// Reading is `&mut self`: one reader per subscription. The socket is
/// closed on drop.
pub struct LinkEvents {
    fd: OwnedFd,
    /// Namespace the socket was opened in (for error messages).
    path: PathBuf,
    buf: Vec<u8>,
    pending: VecDeque<LinkEvent>,
}

impl std::fmt::Debug for LinkEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkEvents")
            .field("fd", &self.fd.as_raw_fd())
            .field("netns", &self.path)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl LinkEvents {
    /// Subscribe to the link events of `netns`. The socket is created in
    /// `netns` (on a short-lived thread inside it) and keeps that namespace
    /// alive until dropped; to watch for a namespace's death use
    /// [`LinkEvents::subscribe_all`]. Every event has `nsid: None`.
    pub fn subscribe(netns: &Netns) -> Result<Self> {
        Self::open(netns, false)
    }

    /// Subscribe, from the node namespace `node`, to the link events of
    /// `node` itself (`nsid: None`) and of every namespace that has an nsid
    /// in `node` (`nsid: Some(id)`), and to namespace ids being assigned
    /// and freed ([`LinkEvent::NsidAssigned`], [`LinkEvent::NamespaceGone`]).
    ///
    /// Only namespaces with an id are heard: give one with
    /// [`Netns::nsid_of`], before or after subscribing. Needs
    /// `CAP_NET_BROADCAST` over the peers' user namespaces (root).
    pub fn subscribe_all(node: &Netns) -> Result<Self> {
        Self::open(node, true)
    }

    fn open(netns: &Netns, all_nsid: bool) -> Result<Self> {
        let path = netns.path().to_path_buf();
        let what = if all_nsid {
            "opening a link event socket (all nsids)"
        } else {
            "opening a link event socket"
        };
        let fd = netns
            .run(|| open_socket(all_nsid))?
            .map_err(|e| Error::io(format!("{what} in {}", path.display()), e))?;
        Ok(LinkEvents {
            fd,
            path,
            buf: vec![0; RECV_BUF],
            pending: VecDeque::new(),
        })
    }

    /// Set the socket's receive buffer (the queue of unread notifications)
    /// to about `bytes` bytes; the kernel doubles the value and enforces a
    /// minimum. As root the system limit (`net.core.rmem_max`) is bypassed.
    /// A larger buffer makes [`LinkEvent::Overrun`] rarer on busy nodes.
    pub fn set_receive_buffer_size(&self, bytes: usize) -> Result<()> {
        rustix::net::sockopt::set_socket_recv_buffer_size_force(&self.fd, bytes)
            .or_else(|_| rustix::net::sockopt::set_socket_recv_buffer_size(&self.fd, bytes))
            .map_err(|e| Error::io("setting the link event socket's receive buffer", e.into()))
    }

    /// Wait for the next event (blocking).
    #[allow(clippy::should_implement_trait)] // never ends: not an Iterator
    pub fn next(&mut self) -> Result<LinkEvent> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(ev);
            }
            // Blocks, unless the caller made the descriptor non-blocking.
            if !self.receive(RecvFlags::empty())? {
                self.wait_readable(None)?;
            }
        }
    }

    /// Wait for the next event for at most `timeout`; `None` when none came.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<LinkEvent>> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(Some(ev));
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => timeout,
            };
            // A timeout too large for a timespec waits without limit.
            let ts = rustix::event::Timespec::try_from(left).ok();
            if !self.wait_readable(ts.as_ref())? {
                return Ok(None);
            }
            // Readable or in error (ENOBUFS): a non-blocking read tells.
            self.receive(RecvFlags::DONTWAIT)?;
        }
    }

    /// poll(2) for input (or an error) on the socket; `false` on timeout.
    fn wait_readable(&self, timeout: Option<&rustix::event::Timespec>) -> Result<bool> {
        let mut fds = [rustix::event::PollFd::new(
            &self.fd,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, timeout) {
            Ok(n) => Ok(n > 0),
            // Interrupted: the caller reads without blocking, finds nothing
            // and waits again for what is left of its timeout.
            Err(Errno::INTR) => Ok(true),
            Err(e) => Err(Error::io(
                format!("poll on the link event socket of {}", self.path.display()),
                e.into(),
            )),
        }
    }

    /// The next event if one is ready, without waiting: for event loops
    /// that wait on the descriptor themselves (poll, epoll, tokio's
    /// `AsyncFd`). `None` means "wait until readable, then call again".
    pub fn try_next(&mut self) -> Result<Option<LinkEvent>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Ok(Some(ev));
            }
            if !self.receive(RecvFlags::DONTWAIT)? {
                return Ok(None);
            }
        }
    }

    /// Receive one datagram and queue its events. `Ok(false)` when a
    /// non-blocking read found nothing.
    fn receive(&mut self, flags: RecvFlags) -> Result<bool> {
        let mut cmsg = CmsgSpace([MaybeUninit::new(0); CMSG_BUF]);
        let received = loop {
            let mut control = RecvAncillaryBuffer::new(&mut cmsg.0);
            let mut iov = [IoSliceMut::new(&mut self.buf)];
            match rustix::net::recvmsg(&self.fd, &mut iov, &mut control, flags | RecvFlags::TRUNC) {
                Err(Errno::INTR) => continue,
                r => break r,
            }
        };
        let msg = match received {
            Ok(m) => m,
            Err(Errno::NOBUFS) => {
                push_overrun(&mut self.pending);
                return Ok(true);
            }
            Err(Errno::AGAIN) => return Ok(false),
            Err(e) => {
                return Err(Error::Netlink {
                    op: "recvmsg (link events)",
                    target: self.path.display().to_string(),
                    source: e.into(),
                })
            }
        };
        // Only the kernel (port id 0) sends notifications; a datagram from
        // a user process sending to the group is not one.
        if let Some(addr) = msg.address {
            if SocketAddrNetlink::try_from(addr).is_ok_and(|a| a.pid() != 0) {
                return Ok(true);
            }
        }
        // SAFETY: every byte of `cmsg` was initialized (to zero) above and
        // the kernel only stores bytes into it.
        let control: &[u8] =
            unsafe { std::slice::from_raw_parts(cmsg.0.as_ptr().cast::<u8>(), CMSG_BUF) };
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            // The origin namespace may be missing: do not guess it.
            push_overrun(&mut self.pending);
            return Ok(true);
        }
        let nsid = listen_all_nsid(control);
        let len = msg.bytes.min(self.buf.len());
        decode_datagram(&self.buf[..len], nsid, &mut self.pending);
        if msg.bytes > self.buf.len() {
            // MSG_TRUNC: the datagram's tail was lost.
            push_overrun(&mut self.pending);
            let grown = msg.bytes.next_power_of_two().min(MAX_RECV_BUF);
            if grown > self.buf.len() {
                self.buf.resize(grown, 0);
            }
        }
        Ok(true)
    }
}

impl AsFd for LinkEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for LinkEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Control message buffer, aligned for `struct cmsghdr` so that rustix uses
/// it from its first byte.
#[repr(C, align(8))]
struct CmsgSpace([MaybeUninit<u8>; CMSG_BUF]);

fn open_socket(all_nsid: bool) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None, // NETLINK_ROUTE
    )?;
    rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
    if all_nsid {
        set_netlink_option(fd.as_fd(), NETLINK_LISTEN_ALL_NSID, 1)?;
    }
    set_netlink_option(fd.as_fd(), NETLINK_ADD_MEMBERSHIP, RTNLGRP_LINK)?;
    if all_nsid {
        set_netlink_option(fd.as_fd(), NETLINK_ADD_MEMBERSHIP, RTNLGRP_NSID)?;
    }
    Ok(fd)
}

/// `setsockopt(fd, SOL_NETLINK, option, &value, sizeof(int))` (rustix has
/// no netlink socket options).
fn set_netlink_option(fd: BorrowedFd<'_>, option: libc::c_int, value: u32) -> io::Result<()> {
    let value = value as libc::c_int;
    // SAFETY: `fd` is an open socket; the option value is a live c_int and
    // its exact size is passed along.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_NETLINK,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The `NETLINK_LISTEN_ALL_NSID` control message's nsid in the control
/// buffer `control` (zero-filled after the last message), if any.
fn listen_all_nsid(control: &[u8]) -> Option<i32> {
    // struct cmsghdr { size_t len; int level; int type; }, data aligned to
    // sizeof(long) (CMSG_ALIGN).
    const WORD: usize = std::mem::size_of::<usize>();
    const HDR: usize = WORD + 8;
    let align = |n: usize| n.checked_add(WORD - 1).map(|n| n & !(WORD - 1));
    let mut off = 0usize;
    while let Some(h) = control.get(off..off.checked_add(HDR)?) {
        let len = usize::from_ne_bytes(h[..WORD].try_into().ok()?);
        if len < HDR {
            break;
        }
        let level = i32::from_ne_bytes(h[WORD..WORD + 4].try_into().ok()?);
        let ty = i32::from_ne_bytes(h[WORD + 4..HDR].try_into().ok()?);
        let data = control.get(off + HDR..off.checked_add(len)?.min(control.len()))?;
        if level == SOL_NETLINK && ty == NETLINK_LISTEN_ALL_NSID {
            return data
                .get(..4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        }
        off = align(off.checked_add(len)?)?;
    }
    None
}

fn push_overrun(out: &mut VecDeque<LinkEvent>) {
    if out.back() != Some(&LinkEvent::Overrun) {
        out.push_back(LinkEvent::Overrun);
    }
}

/// Decode the messages of one notification datagram received from the
/// namespace with id `nsid` (`None`: the socket's own), appending events to
/// `out`. Never fails: what cannot be decoded becomes [`LinkEvent::Overrun`]
/// (a notification was lost to us), messages of no interest are skipped.
pub(crate) fn decode_datagram(bytes: &[u8], nsid: Option<i32>, out: &mut VecDeque<LinkEvent>) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(hdr) = MsgHeader::parse(rest) else {
            push_overrun(out);
            return;
        };
        let payload = &rest[NLMSG_HDRLEN..hdr.len];
        rest = &rest[crate::netlink::align4(hdr.len).min(rest.len())..];
        match hdr.ty {
            RTM_NEWLINK | RTM_DELLINK => match decode_link(payload, nsid) {
                Some(Decoded::Skip) => {}
                Some(Decoded::Link(update, change)) => out.push_back(if hdr.ty == RTM_DELLINK {
                    LinkEvent::Removed(update)
                } else if change == IFI_CHANGE_ALL {
                    LinkEvent::Added(update)
                } else {
                    LinkEvent::Changed(update)
                }),
                None => push_overrun(out),
            },
            // Ids in a peer's own table (a message tagged with an nsid) mean
            // nothing here: only the node namespace's ids are reported.
            RTM_NEWNSID | RTM_DELNSID if nsid.is_none() => match decode_nsid(payload) {
                Some(id) if hdr.ty == RTM_DELNSID => {
                    out.push_back(LinkEvent::NamespaceGone { nsid: id })
                }
                Some(id) => out.push_back(LinkEvent::NsidAssigned { nsid: id }),
                None => push_overrun(out),
            },
            NLMSG_OVERRUN => push_overrun(out),
            // Nothing is ever sent on an event socket, so an error is no
            // answer of ours; only a lost-notification report matters.
            NLMSG_ERROR if read_u32(payload).map(|e| e as i32) == Some(-ENOBUFS) => {
                push_overrun(out)
            }
            // NLMSG_NOOP, NLMSG_DONE, other errors, other message types.
            _ => {}
        }
    }
}

enum Decoded {
    /// A link message for another family (a bridge port's `AF_BRIDGE`
    /// notification: its `RTM_DELLINK` means "left the bridge", not "gone").
    Skip,
    /// The update and `ifi_change`.
    Link(LinkUpdate, u32),
}

fn decode_link(payload: &[u8], nsid: Option<i32>) -> Option<Decoded> {
    let head = payload.get(..IFINFOMSG_LEN)?;
    if head[0] != AF_UNSPEC {
        return Some(Decoded::Skip);
    }
    let flags = read_u32(&head[8..12])?;
    let change = read_u32(&head[12..16])?;
    let link = parse_link(payload).ok()?;
    Some(Decoded::Link(
        LinkUpdate {
            link,
            lower_up: flags & IFF_LOWER_UP != 0,
            flags,
            nsid,
        },
        change,
    ))
}

/// `NETNSA_NSID` of an `RTM_{NEW,DEL,GET}NSID` payload (`struct rtgenmsg`,
/// padded to 4 bytes, then attributes).
fn decode_nsid(payload: &[u8]) -> Option<i32> {
    let attrs = payload.get(4..)?;
    for a in AttrIter::new(attrs) {
        let (ty, p) = a.ok()?;
        if ty == NETNSA_NSID {
            return read_u32(p).map(|v| v as i32);
        }
    }
    None
}

// ----- namespace ids ---------------------------------------------------------

impl Netns {
    /// The namespace id (nsid) `peer` has in this namespace (normally the
    /// node's), assigning one if it has none yet (`ip netns set PEER auto`).
    /// Idempotent: a namespace keeps its id until it is destroyed.
    ///
    /// An nsid does not keep `peer` alive: once every handle on it is
    /// closed and it dies, a [`LinkEvents::subscribe_all`] subscription
    /// opened in this namespace reports [`LinkEvent::NamespaceGone`] with
    /// this id.
    pub fn nsid_of(&self, peer: &Netns) -> Result<i32> {
        let conn = self.run(|| NlConn::connect(NlFamily::Route))??;
        if let Some(id) = get_nsid(&conn, peer)? {
            return Ok(id);
        }
        match new_nsid(&conn, peer) {
            Ok(()) => {}
            // Given one meanwhile (by another process, or by the kernel
            // itself when it reports a link's peer namespace).
            Err(e) if e.errno() == Some(libc_errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        get_nsid(&conn, peer)?.ok_or_else(|| Error::NetlinkDecode {
            op: "RTM_GETNSID",
            reason: format!(
                "{} has no nsid right after RTM_NEWNSID succeeded",
                peer.path().display()
            ),
        })
    }

    /// The namespace id `peer` has in this namespace, `None` if it has none
    /// (nothing is assigned).
    pub fn peer_nsid(&self, peer: &Netns) -> Result<Option<i32>> {
        let conn = self.run(|| NlConn::connect(NlFamily::Route))??;
        get_nsid(&conn, peer)
    }
}

fn nsid_request(
    conn: &NlConn,
    ty: u16,
    flags: u16,
    peer: &Netns,
    nsid: Option<i32>,
) -> (Vec<u8>, u32) {
    let seq = conn.next_seq();
    let mut w = MsgWriter::new(ty, NLM_F_REQUEST | flags, seq, &[AF_UNSPEC]);
    if let Some(id) = nsid {
        w.put(NETNSA_NSID, &id.to_ne_bytes());
    }
    w.put_u32(NETNSA_FD, peer.as_fd().as_raw_fd() as u32);
    (w.finish().to_vec(), seq)
}

fn get_nsid(conn: &NlConn, peer: &Netns) -> Result<Option<i32>> {
    let (req, seq) = nsid_request(conn, RTM_GETNSID, 0, peer, None);
    let mut found = None;
    conn.transact(
        "RTM_GETNSID",
        &|| format!("namespace {}", peer.path().display()),
        &req,
        seq,
        |ty, p| {
            if ty == RTM_NEWNSID {
                found = decode_nsid(p);
            }
            Ok(())
        },
    )?;
    Ok(found.filter(|id| *id != NETNSA_NSID_NOT_ASSIGNED && *id >= 0))
}

fn new_nsid(conn: &NlConn, peer: &Netns) -> Result<()> {
    let (req, seq) = nsid_request(
        conn,
        RTM_NEWNSID,
        NLM_F_ACK,
        peer,
        Some(NETNSA_NSID_NOT_ASSIGNED),
    );
    conn.transact(
        "RTM_NEWNSID",
        &|| format!("namespace {}", peer.path().display()),
        &req,
        seq,
        |_, _| Ok(()),
    )
}

#[cfg(test)]
mod tests;
