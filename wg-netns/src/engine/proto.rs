//! The engine's control protocol: what a client (wg-netns) and the engine
//! daemon (`wg-engine serve`) say to each other on the daemon's control
//! socket.
//!
//! One request and one reply per connection, each in the shape of the
//! WireGuard UAPI that wg-netns already speaks: `key=value` lines ending
//! with a blank line. The first line of each is `wg_engine=VERSION`. A value
//! is the rest of its line (it may contain `=`), never empty, never a
//! newline or a NUL. Network namespaces travel as open descriptors
//! (`SCM_RIGHTS`) with the request's first byte, in order: the TUN's
//! namespace, then the UDP socket's when the request names one.
//!
//! ```text
//! wg_engine=1          wg_engine=1
//! op=create            result=created
//! name=wgb1a2b3c       existed=false
//! mtu=1420
//! netns=/var/run/netns/cni-1
//! udp_netns=/proc/1/ns/net
//! ```
//!
//! A request names only keys it knows (an unknown key is refused, so a
//! typo is not silently ignored); a reply's unknown keys are skipped, so a
//! newer daemon may add fields.
//!
//! ```
//! use wg_netns::engine::proto::{Create, Reply, Request};
//! use wg_netns::IfName;
//! let req = Request::Create(Create::new(IfName::new("wgb1")?, "/var/run/netns/pod1"));
//! let text = req.encode()?;
//! assert_eq!(Request::parse(&text)?, req);
//! assert_eq!(Reply::parse("wg_engine=1\nresult=deleted\nexisted=true\n\n")?,
//!            Reply::Deleted { existed: true });
//! # Ok::<(), wg_netns::Error>(())
//! ```

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::error::{Error, Result};
use crate::ifname::IfName;

/// The protocol version this crate speaks (the `wg_engine=` line).
pub const VERSION: u32 = 1;

/// The largest request a daemon reads, bytes.
pub const MAX_REQUEST: usize = 64 << 10;

/// The largest reply a client reads, bytes (a list of many devices).
pub const MAX_REPLY: usize = 16 << 20;

/// The most descriptors a request carries.
pub const MAX_FDS: usize = 2;

/// MTU of a created device unless the request says otherwise (wireguard-go's).
pub const DEFAULT_MTU: u16 = 1420;

/// A request to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Create a device, or find it there already (same name, same
    /// namespaces): `op=create`.
    Create(Create),
    /// Remove a device and its record: `op=delete`, `name=`.
    Delete {
        /// The device (its birth name, the name of its UAPI socket).
        name: IfName,
    },
    /// The devices hosted: `op=list`.
    List,
}

/// What [`Request::Create`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Create {
    /// The interface's birth name, also its UAPI socket's (`NAME.sock`).
    pub name: IfName,
    /// The MTU the TUN is created with.
    pub mtu: u16,
    /// The path of the namespace the TUN is born in (the pod's), as the
    /// client knows it: recorded by the daemon so that a restarted daemon
    /// can open it again. The namespace itself is the first descriptor.
    pub netns: PathBuf,
    /// The path of the namespace the UDP socket is bound in, when the
    /// request carries it (the second descriptor); `None`: the daemon's own.
    pub udp_netns: Option<PathBuf>,
}

impl Create {
    /// A device `name`, TUN in the namespace at `netns`, UDP in the
    /// daemon's namespace, MTU [`DEFAULT_MTU`].
    pub fn new(name: IfName, netns: impl Into<PathBuf>) -> Self {
        Create {
            name,
            mtu: DEFAULT_MTU,
            netns: netns.into(),
            udp_netns: None,
        }
    }

    /// The UDP socket in the namespace at `path` (sent as a second descriptor).
    pub fn udp_netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.udp_netns = Some(path.into());
        self
    }

    /// Set the MTU.
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.mtu = mtu;
        self
    }

    /// How many descriptors travel with this request.
    pub fn fds(&self) -> usize {
        1 + usize::from(self.udp_netns.is_some())
    }
}

/// Why the daemon refused or failed a request (`error=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or names something invalid: `invalid`.
    Invalid,
    /// A device of that name exists in other namespaces: `exists`.
    Exists,
    /// The client may not use the daemon (not root): `refused`.
    Refused,
    /// A protocol version the daemon does not speak: `version`.
    Version,
    /// The daemon tried and failed (a system call, gotatun): `failed`.
    Failed,
}

impl ErrorKind {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Exists => "exists",
            ErrorKind::Refused => "refused",
            ErrorKind::Version => "version",
            ErrorKind::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "invalid" => ErrorKind::Invalid,
            "exists" => ErrorKind::Exists,
            "refused" => ErrorKind::Refused,
            "version" => ErrorKind::Version,
            "failed" => ErrorKind::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A namespace's identity: the `(device, inode)` of its nsfs file, as
/// [`crate::Netns::id`] gives it. Written `DEV:INO`.
pub type NetnsId = (u64, u64);

/// One device, as [`Request::List`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    /// Its birth name (UAPI socket name).
    pub name: IfName,
    /// The path its TUN's namespace was created with.
    pub netns: PathBuf,
    /// That namespace's identity.
    pub netns_id: NetnsId,
    /// The identity of the namespace its UDP socket is bound in.
    pub udp_netns_id: NetnsId,
    /// Its MTU at creation.
    pub mtu: u16,
    /// Its interface index (in its TUN's namespace).
    pub ifindex: u32,
}

impl DeviceInfo {
    /// A listed device.
    pub fn new(
        name: IfName,
        netns: PathBuf,
        netns_id: NetnsId,
        udp_netns_id: NetnsId,
        mtu: u16,
        ifindex: u32,
    ) -> Self {
        DeviceInfo {
            name,
            netns,
            netns_id,
            udp_netns_id,
            mtu,
            ifindex,
        }
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// The device is there: `result=created`; `existed=true` when it was
    /// already (an idempotent create).
    Created {
        /// It was there before this request.
        existed: bool,
    },
    /// The device is gone: `result=deleted`; `existed=false` when there
    /// was none.
    Deleted {
        /// There was one.
        existed: bool,
    },
    /// `result=devices`, then one `device=NAME` block per device.
    Devices(Vec<DeviceInfo>),
    /// `result=error`, `error=KIND`, `message=TEXT`.
    Error {
        /// Why.
        kind: ErrorKind,
        /// For a human (one line; no secret ever travels on this socket).
        message: String,
    },
}

impl Reply {
    /// An error reply.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Reply::Error {
            kind,
            message: message.into(),
        }
    }
}

fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
    Error::invalid(what, reason.into())
}

/// Append `key=value\n`, refusing a value that cannot be one line.
fn put(out: &mut String, key: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.contains(['\n', '\0']) {
        return Err(invalid(
            "engine message",
            format!("{key}: {value:?} is empty or not one line"),
        ));
    }
    let _ = writeln!(out, "{key}={value}");
    Ok(())
}

fn put_path(out: &mut String, key: &str, p: &std::path::Path) -> Result<()> {
    let s = p.to_str().ok_or_else(|| {
        invalid(
            "engine message",
            format!("{key}: {} is not UTF-8", p.display()),
        )
    })?;
    put(out, key, s)
}

fn header() -> String {
    format!("wg_engine={VERSION}\n")
}

/// The `key=value` lines of a message, checked: the version line first, the
/// blank line that ends it last (or the text's end).
fn lines<'a>(text: &'a str, what: &'static str) -> Result<Vec<(&'a str, &'a str)>> {
    let body = text.strip_suffix("\n\n").unwrap_or(text);
    let mut out = Vec::new();
    for (i, line) in body.split('\n').enumerate() {
        if line.is_empty() {
            return Err(invalid(what, format!("line {}: empty line inside", i + 1)));
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| invalid(what, format!("line {}: no '='", i + 1)))?;
        if v.is_empty() || v.contains('\0') {
            return Err(invalid(what, format!("line {}: {k}: empty value", i + 1)));
        }
        out.push((k, v));
    }
    match out.first() {
        Some(("wg_engine", v)) => {
            let version: u32 = v
                .parse()
                .map_err(|_| invalid(what, format!("version {v:?} is not a number")))?;
            if version != VERSION {
                return Err(Error::Engine {
                    op: what,
                    kind: ErrorKind::Version,
                    reason: format!("protocol version {version}, this side speaks {VERSION}"),
                });
            }
        }
        _ => return Err(invalid(what, "the first line is not wg_engine=VERSION")),
    }
    Ok(out.split_off(1))
}

fn number<T: std::str::FromStr>(what: &'static str, key: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| invalid(what, format!("{key}: {v:?} is not a number")))
}

fn boolean(what: &'static str, key: &str, v: &str) -> Result<bool> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(what, format!("{key}: {v:?} is not true or false"))),
    }
}

fn netns_id(what: &'static str, key: &str, v: &str) -> Result<NetnsId> {
    let (d, i) = v
        .split_once(':')
        .ok_or_else(|| invalid(what, format!("{key}: {v:?} is not DEV:INO")))?;
    Ok((number(what, key, d)?, number(what, key, i)?))
}

fn name(what: &'static str, v: &str) -> Result<IfName> {
    IfName::new(v).map_err(|e| invalid(what, format!("name: {e}")))
}

impl Request {
    /// The request as sent (ending with its blank line). Fails on a path
    /// that is not UTF-8 or not one line.
    pub fn encode(&self) -> Result<String> {
        let mut out = header();
        match self {
            Request::Create(c) => {
                put(&mut out, "op", "create")?;
                put(&mut out, "name", c.name.as_str())?;
                put(&mut out, "mtu", &c.mtu.to_string())?;
                put_path(&mut out, "netns", &c.netns)?;
                if let Some(u) = &c.udp_netns {
                    put_path(&mut out, "udp_netns", u)?;
                }
            }
            Request::Delete { name } => {
                put(&mut out, "op", "delete")?;
                put(&mut out, "name", name.as_str())?;
            }
            Request::List => put(&mut out, "op", "list")?,
        }
        out.push('\n');
        Ok(out)
    }

    /// Parse a request (with or without its final blank line). Strict:
    /// unknown or repeated keys, and keys the operation does not take,
    /// are refused.
    pub fn parse(text: &str) -> Result<Request> {
        const WHAT: &str = "engine request";
        let mut op = None;
        let (mut nm, mut mtu, mut netns, mut udp) = (None, None, None, None);
        for (k, v) in lines(text, WHAT)? {
            let slot = match k {
                "op" => &mut op,
                "name" => &mut nm,
                "mtu" => &mut mtu,
                "netns" => &mut netns,
                "udp_netns" => &mut udp,
                other => return Err(invalid(WHAT, format!("unknown key {other:?}"))),
            };
            if slot.replace(v).is_some() {
                return Err(invalid(WHAT, format!("{k} given twice")));
            }
        }
        fn need<'a>(v: Option<&'a str>, k: &str) -> Result<&'a str> {
            v.ok_or_else(|| invalid(WHAT, format!("{k} is missing")))
        }
        let only = |extra: &[(&str, Option<&str>)]| -> Result<()> {
            match extra.iter().find(|(_, v)| v.is_some()) {
                Some((k, _)) => Err(invalid(WHAT, format!("{k} does not go with this op"))),
                None => Ok(()),
            }
        };
        match need(op, "op")? {
            "create" => {
                let mtu = match mtu {
                    Some(m) => number(WHAT, "mtu", m)?,
                    None => DEFAULT_MTU,
                };
                if mtu < 576 {
                    return Err(invalid(WHAT, format!("mtu {mtu} is below 576")));
                }
                Ok(Request::Create(Create {
                    name: name(WHAT, need(nm, "name")?)?,
                    mtu,
                    netns: PathBuf::from(need(netns, "netns")?),
                    udp_netns: udp.map(PathBuf::from),
                }))
            }
            "delete" => {
                only(&[("mtu", mtu), ("netns", netns), ("udp_netns", udp)])?;
                Ok(Request::Delete {
                    name: name(WHAT, need(nm, "name")?)?,
                })
            }
            "list" => {
                only(&[
                    ("name", nm),
                    ("mtu", mtu),
                    ("netns", netns),
                    ("udp_netns", udp),
                ])?;
                Ok(Request::List)
            }
            other => Err(invalid(WHAT, format!("unknown op {other:?}"))),
        }
    }
}

impl Reply {
    /// The reply as sent (ending with its blank line). A message is made
    /// one line; a path that cannot be one line fails.
    pub fn encode(&self) -> Result<String> {
        let mut out = header();
        match self {
            Reply::Created { existed } => {
                put(&mut out, "result", "created")?;
                put(&mut out, "existed", &existed.to_string())?;
            }
            Reply::Deleted { existed } => {
                put(&mut out, "result", "deleted")?;
                put(&mut out, "existed", &existed.to_string())?;
            }
            Reply::Devices(devs) => {
                put(&mut out, "result", "devices")?;
                for d in devs {
                    put(&mut out, "device", d.name.as_str())?;
                    put_path(&mut out, "netns", &d.netns)?;
                    let (dev, ino) = d.netns_id;
                    put(&mut out, "netns_id", &format!("{dev}:{ino}"))?;
                    let (dev, ino) = d.udp_netns_id;
                    put(&mut out, "udp_netns_id", &format!("{dev}:{ino}"))?;
                    put(&mut out, "mtu", &d.mtu.to_string())?;
                    put(&mut out, "ifindex", &d.ifindex.to_string())?;
                }
            }
            Reply::Error { kind, message } => {
                put(&mut out, "result", "error")?;
                put(&mut out, "error", kind.as_str())?;
                let one_line: String = message
                    .chars()
                    .map(|c| if c == '\n' || c == '\0' { ' ' } else { c })
                    .collect();
                if !one_line.is_empty() {
                    put(&mut out, "message", &one_line)?;
                }
            }
        }
        out.push('\n');
        Ok(out)
    }

    /// Parse a reply (with or without its final blank line). Unknown keys
    /// are skipped.
    pub fn parse(text: &str) -> Result<Reply> {
        const WHAT: &str = "engine reply";
        let kv = lines(text, WHAT)?;
        let mut it = kv.into_iter();
        let result = match it.next() {
            Some(("result", r)) => r,
            _ => return Err(invalid(WHAT, "result= is not the first key")),
        };
        match result {
            "created" | "deleted" => {
                let mut existed = None;
                for (k, v) in it {
                    if k == "existed" {
                        existed = Some(boolean(WHAT, k, v)?);
                    }
                }
                let existed =
                    existed.ok_or_else(|| invalid(WHAT, "existed is missing".to_string()))?;
                Ok(if result == "created" {
                    Reply::Created { existed }
                } else {
                    Reply::Deleted { existed }
                })
            }
            "error" => {
                let (mut kind, mut message) = (None, String::new());
                for (k, v) in it {
                    match k {
                        "error" => kind = ErrorKind::parse(v),
                        "message" => message = v.to_string(),
                        _ => {}
                    }
                }
                Ok(Reply::Error {
                    kind: kind.unwrap_or(ErrorKind::Failed),
                    message,
                })
            }
            "devices" => {
                #[derive(Default)]
                struct Partial {
                    name: Option<IfName>,
                    netns: Option<PathBuf>,
                    netns_id: Option<NetnsId>,
                    udp_netns_id: Option<NetnsId>,
                    mtu: Option<u16>,
                    ifindex: Option<u32>,
                }
                fn finish(p: Partial) -> Result<DeviceInfo> {
                    let miss = |k: &str| invalid(WHAT, format!("a device without {k}"));
                    Ok(DeviceInfo {
                        name: p.name.ok_or_else(|| miss("device"))?,
                        netns: p.netns.ok_or_else(|| miss("netns"))?,
                        netns_id: p.netns_id.ok_or_else(|| miss("netns_id"))?,
                        udp_netns_id: p.udp_netns_id.ok_or_else(|| miss("udp_netns_id"))?,
                        mtu: p.mtu.ok_or_else(|| miss("mtu"))?,
                        ifindex: p.ifindex.ok_or_else(|| miss("ifindex"))?,
                    })
                }
                let mut devs = Vec::new();
                let mut cur: Option<Partial> = None;
                for (k, v) in it {
                    if k == "device" {
                        if let Some(p) = cur.take() {
                            devs.push(finish(p)?);
                        }
                        cur = Some(Partial {
                            name: Some(name(WHAT, v)?),
                            ..Partial::default()
                        });
                        continue;
                    }
                    let Some(p) = cur.as_mut() else {
                        // Fields before any device belong to a newer
                        // protocol's header: skipped.
                        continue;
                    };
                    match k {
                        "netns" => p.netns = Some(PathBuf::from(v)),
                        "netns_id" => p.netns_id = Some(netns_id(WHAT, k, v)?),
                        "udp_netns_id" => p.udp_netns_id = Some(netns_id(WHAT, k, v)?),
                        "mtu" => p.mtu = Some(number(WHAT, k, v)?),
                        "ifindex" => p.ifindex = Some(number(WHAT, k, v)?),
                        _ => {}
                    }
                }
                if let Some(p) = cur {
                    devs.push(finish(p)?);
                }
                Ok(Reply::Devices(devs))
            }
            other => Err(invalid(WHAT, format!("unknown result {other:?}"))),
        }
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// Send `req` on `stream`, `fds` travelling with its first byte
/// ([`Create::fds`] of them for a create, none otherwise).
pub fn send_request(stream: &UnixStream, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<()> {
    let text = req.encode()?;
    let bytes = text.as_bytes();
    let mut start = 0;
    if !fds.is_empty() {
        if fds.len() > MAX_FDS {
            return Err(Error::Internal(format!(
                "{} descriptors for one request",
                fds.len()
            )));
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !anc.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(Error::Internal("no room for the descriptors".into()));
        }
        start = rustix::net::sendmsg(
            stream,
            &[io::IoSlice::new(bytes)],
            &mut anc,
            SendFlags::NOSIGNAL,
        )
        .map_err(|e| Error::io("sending a request to wg-engine", e.into()))?;
    }
    let mut w = stream;
    w.write_all(&bytes[start..])
        .map_err(io_err("sending a request to wg-engine"))
}

/// Read a message up to its blank line, at most `max` bytes; with
/// descriptors when `fds` is given (they come with the first byte).
fn read_message(
    stream: &UnixStream,
    max: usize,
    mut fds: Option<&mut Vec<OwnedFd>>,
) -> Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match fds.as_deref_mut() {
            Some(fds) => {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut anc = RecvAncillaryBuffer::new(&mut space);
                let msg = rustix::net::recvmsg(
                    stream,
                    &mut [io::IoSliceMut::new(&mut chunk)],
                    &mut anc,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(|e| Error::io("receiving a wg-engine message", e.into()))?;
                for m in anc.drain() {
                    if let RecvAncillaryMessage::ScmRights(got) = m {
                        // Beyond MAX_FDS they are closed as they drop.
                        for f in got {
                            if fds.len() < MAX_FDS {
                                fds.push(f);
                            }
                        }
                    }
                }
                msg.bytes
            }
            None => {
                let mut r = stream;
                r.read(&mut chunk)
                    .map_err(io_err("receiving a wg-engine message"))?
            }
        };
        if n == 0 {
            return Err(Error::io(
                "receiving a wg-engine message",
                io::Error::from(io::ErrorKind::UnexpectedEof),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > max {
            return Err(invalid(
                "engine message",
                format!("longer than {max} bytes"),
            ));
        }
        if buf.ends_with(b"\n\n") {
            return String::from_utf8(buf)
                .map_err(|_| invalid("engine message", "not UTF-8".to_string()));
        }
    }
}

/// The daemon's side: read one request and the descriptors that came with
/// it (at most [`MAX_FDS`]; the caller checks there are
/// [`Create::fds`]). Text is read up to [`MAX_REQUEST`] bytes.
pub fn recv_request(stream: &UnixStream) -> Result<(Result<Request>, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    let text = read_message(stream, MAX_REQUEST, Some(&mut fds))?;
    Ok((Request::parse(&text), fds))
}

/// Send a reply.
pub fn send_reply(stream: &UnixStream, reply: &Reply) -> Result<()> {
    let text = reply.encode()?;
    let mut w = stream;
    w.write_all(text.as_bytes())
        .map_err(io_err("sending a wg-engine reply"))
}

/// The client's side: read the reply.
pub fn recv_reply(stream: &UnixStream) -> Result<Reply> {
    Reply::parse(&read_message(stream, MAX_REPLY, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> IfName {
        IfName::new(s).unwrap()
    }

    #[test]
    fn requests_round_trip_and_read_as_documented() {
        let create = Request::Create(
            Create::new(n("wgb1"), "/var/run/netns/p 1=x")
                .udp_netns("/proc/1/ns/net")
                .mtu(1380),
        );
        let text = create.encode().unwrap();
        assert_eq!(
            text,
            "wg_engine=1\nop=create\nname=wgb1\nmtu=1380\nnetns=/var/run/netns/p 1=x\nudp_netns=/proc/1/ns/net\n\n"
        );
        assert_eq!(Request::parse(&text).unwrap(), create);
        for r in [Request::List, Request::Delete { name: n("wgb2") }] {
            assert_eq!(Request::parse(&r.encode().unwrap()).unwrap(), r);
        }
        // The MTU defaults; the final blank line is optional.
        assert_eq!(
            Request::parse("wg_engine=1\nop=create\nname=a\nnetns=/x").unwrap(),
            Request::Create(Create::new(n("a"), "/x"))
        );
    }

    #[test]
    fn requests_are_strict() {
        for bad in [
            "",
            "\n\n",
            "op=list\n\n",
            "wg_engine=x\nop=list\n\n",
            "wg_engine=1\n\n",
            "wg_engine=1\nop=lst\n\n",
            "wg_engine=1\nop=list\nname=a\n\n",
            "wg_engine=1\nop=list\nop=list\n\n",
            "wg_engine=1\nop=list\nfoo=1\n\n",
            "wg_engine=1\nop=create\nname=a\n\n",
            "wg_engine=1\nop=create\nnetns=/x\n\n",
            "wg_engine=1\nop=create\nname=this-name-is-too-long\nnetns=/x\n\n",
            "wg_engine=1\nop=create\nname=a\nnetns=/x\nmtu=70000\n\n",
            "wg_engine=1\nop=create\nname=a\nnetns=/x\nmtu=100\n\n",
            "wg_engine=1\nop=create\nname=a\nnetns=\n\n",
            "wg_engine=1\nop=delete\n\n",
            "wg_engine=1\nop=delete\nname=a\nnetns=/x\n\n",
            "wg_engine=1\n\nop=list\n\n",
            "wg_engine=1\nop list\n\n",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
        match Request::parse("wg_engine=2\nop=list\n\n") {
            Err(Error::Engine {
                kind: ErrorKind::Version,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_path_that_is_not_one_line_is_refused_before_sending() {
        let r = Request::Create(Create::new(n("a"), "/x\nop=delete"));
        assert!(r.encode().is_err());
    }

    #[test]
    fn replies_round_trip_and_skip_unknown_keys() {
        let devs = Reply::Devices(vec![
            DeviceInfo::new(
                n("a"),
                "/var/run/netns/p".into(),
                (4, 4026532),
                (4, 1),
                1420,
                7,
            ),
            DeviceInfo::new(n("b"), "/x".into(), (4, 5), (4, 1), 1380, 9),
        ]);
        for r in [
            Reply::Created { existed: false },
            Reply::Deleted { existed: true },
            Reply::Devices(vec![]),
            devs,
            Reply::error(ErrorKind::Exists, "device a\nexists"),
        ] {
            let text = r.encode().unwrap();
            let back = Reply::parse(&text).unwrap();
            match (&r, &back) {
                (Reply::Error { kind, .. }, Reply::Error { kind: k2, message }) => {
                    assert_eq!(kind, k2);
                    assert_eq!(message, "device a exists");
                }
                _ => assert_eq!(back, r),
            }
        }
        assert_eq!(
            Reply::parse("wg_engine=1\nresult=created\nnew_field=1\nexisted=false\n\n").unwrap(),
            Reply::Created { existed: false }
        );
        assert!(Reply::parse("wg_engine=1\nresult=created\n\n").is_err());
        assert!(Reply::parse("wg_engine=1\nresult=devices\ndevice=a\nnetns=/x\n\n").is_err());
    }

    fn arb_name() -> impl Strategy<Value = IfName> {
        "[a-z][a-z0-9-]{0,14}".prop_map(|s| IfName::new(s).unwrap())
    }

    fn arb_path() -> impl Strategy<Value = PathBuf> {
        "/[^\n\u{0}]{0,40}".prop_map(PathBuf::from)
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::List),
            arb_name().prop_map(|name| Request::Delete { name }),
            (
                arb_name(),
                576u16..,
                arb_path(),
                proptest::option::of(arb_path())
            )
                .prop_map(|(name, mtu, netns, udp)| {
                    let mut c = Create::new(name, netns).mtu(mtu);
                    c.udp_netns = udp;
                    Request::Create(c)
                }),
        ]
    }

    proptest! {
        #[test]
        fn any_request_round_trips(r in arb_request()) {
            let text = r.encode().unwrap();
            prop_assert_eq!(Request::parse(&text).unwrap(), r);
        }

        #[test]
        fn any_device_list_round_trips(
            devs in proptest::collection::vec(
                (arb_name(), arb_path(), any::<(u64, u64)>(), any::<(u64, u64)>(), any::<u16>(), any::<u32>()),
                0..8,
            )
        ) {
            let r = Reply::Devices(
                devs.into_iter()
                    .map(|(a, b, c, d, e, f)| DeviceInfo::new(a, b, c, d, e, f))
                    .collect(),
            );
            prop_assert_eq!(Reply::parse(&r.encode().unwrap()).unwrap(), r);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = Request::parse(&s);
            let _ = Reply::parse(&s);
        }

        #[test]
        fn parsing_near_misses_never_panics(
            lines in proptest::collection::vec(
                ("(op|name|mtu|netns|udp_netns|result|existed|device|netns_id|udp_netns_id|ifindex|error|message|x)",
                 "[a-z0-9:/=]{0,6}"),
                0..10,
            )
        ) {
            let mut s = String::from("wg_engine=1\n");
            for (k, v) in lines {
                s.push_str(&format!("{k}={v}\n"));
            }
            s.push('\n');
            // What parses encodes again and reads back the same.
            if let Ok(r) = Request::parse(&s) {
                if let Ok(text) = r.encode() {
                    prop_assert_eq!(Request::parse(&text).ok(), Some(r));
                }
            }
            if let Ok(r) = Reply::parse(&s) {
                if let Ok(text) = r.encode() {
                    prop_assert_eq!(Reply::parse(&text).ok(), Some(r));
                }
            }
        }
    }
}
