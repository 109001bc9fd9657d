//! The one netlink socket type of the crate, and a small attribute codec.
//!
//! [`NlConn`] wraps neli's `NlSocket` and runs request/answer exchanges:
//! sequence numbers, ACKs, `NLMSG_ERROR` to errno, multi-part dumps ending in
//! `NLMSG_DONE`, truncation detection. rtnetlink payloads are (de)serialized
//! with neli's typed structs (see `rtnl.rs`); WireGuard's generic netlink
//! messages carry private keys, so they are written with [`MsgWriter`] into a
//! buffer that zeroizes on drop and read with the zero-copy [`AttrIter`].

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;
use rustix::buffer::spare_capacity;
use rustix::net::RecvFlags;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_MULTI: u16 = 0x2;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Receive buffer: the kernel's dump skbs are at most 32 KiB, and our own
/// requests (echoed back in error replies) stay below [`MAX_REQUEST`].
const RECV_BUF: usize = 64 * 1024;
/// Largest request we build; WireGuard peer sets are split below this.
pub(crate) const MAX_REQUEST: usize = 32 * 1024;

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A connected netlink socket, bound to the namespace it was created in.
///
/// Replies are received into one buffer per connection, allocated on first
/// use and never zero-filled up front (the kernel writes what it sends).
/// Replies can carry keys (a WireGuard `GET_DEVICE` answer holds the private
/// key), so each reply is wiped once parsed, before the next one and on drop:
/// the cost follows the bytes received, not the buffer's 64 KiB.
///
/// A connection is `Send + Sync`: requests from several threads are
/// serialized (the buffer's lock is held from send to the last reply), so
/// each thread gets its own answers.
pub(crate) struct NlConn {
    sock: NlSocket,
    seq: AtomicU32,
    buf: Mutex<Vec<u8>>,
}

impl Drop for NlConn {
    fn drop(&mut self) {
        let buf = self.buf.get_mut().unwrap_or_else(|p| p.into_inner());
        buf.as_mut_slice().zeroize();
    }
}

impl std::fmt::Debug for NlConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NlConn").finish_non_exhaustive()
    }
}

impl NlConn {
    pub(crate) fn connect(family: NlFamily) -> Result<Self> {
        let sock = NlSocket::connect(family, None, Groups::empty())
            .map_err(|e| Error::io("opening a netlink socket", e))?;
        Ok(NlConn {
            sock,
            seq: AtomicU32::new(1),
            buf: Mutex::new(Vec::new()),
        })
    }

    /// The next sequence number to put in a request.
    pub(crate) fn next_seq(&self) -> u32 {
        loop {
            let s = self.seq.fetch_add(1, Ordering::Relaxed);
            if s != 0 {
                return s;
            }
        }
    }

    /// The receive buffer, locked for one exchange. A panic in another
    /// exchange leaves nothing to repair: the buffer is wiped before use.
    fn lock_buf(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Send one request (whose header carries `seq`) and collect the answer.
    ///
    /// `on_msg(type, payload)` sees every data message. Returns when the ACK
    /// (or `NLMSG_DONE` for dumps) arrives; an `NLMSG_ERROR` with a non-zero
    /// errno becomes [`Error::Netlink`] naming `op` and `target`.
    pub(crate) fn transact(
        &self,
        op: &'static str,
        target: &dyn Fn() -> String,
        request: &[u8],
        seq: u32,
        mut on_msg: impl FnMut(u16, &[u8]) -> Result<()>,
    ) -> Result<()> {
        crate::fault::check(op)?;
        // Held from send to the last reply: answers to a request sent by
        // another thread in between are never consumed here.
        let mut buf = self.lock_buf();
        self.sock
            .send(request, Msg::empty())
            .map_err(|source| Error::Netlink {
                op,
                target: target(),
                source,
            })?;
        if buf.capacity() < RECV_BUF {
            buf.reserve_exact(RECV_BUF);
        }
        // SAFETY: the descriptor belongs to `self.sock`, which outlives this
        // borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.sock.as_raw_fd()) };
        loop {
            // Wipe the previous reply, then receive into the spare capacity.
            buf.as_mut_slice().zeroize();
            buf.clear();
            let (_, n) = loop {
                match rustix::net::recv(fd, spare_capacity(&mut buf), RecvFlags::TRUNC) {
                    Err(rustix::io::Errno::INTR) => continue,
                    r => break r,
                }
            }
            .map_err(|e| Error::Netlink {
                op,
                target: target(),
                source: e.into(),
            })?;
            if n > buf.len() {
                return Err(Error::NetlinkDecode {
                    op,
                    reason: format!("reply of {n} bytes truncated to {}", buf.len()),
                });
            }
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let hdr = MsgHeader::parse(rest).ok_or_else(|| Error::NetlinkDecode {
                    op,
                    reason: "truncated netlink header".into(),
                })?;
                let payload = &rest[NLMSG_HDRLEN..hdr.len];
                let next = align4(hdr.len).min(rest.len());
                rest = &rest[next..];
                if hdr.seq != seq {
                    // A stale answer to an earlier, abandoned request.
                    continue;
                }
                match hdr.ty {
                    NLMSG_ERROR => {
                        let errno = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or_else(|| Error::NetlinkDecode {
                                op,
                                reason: "short NLMSG_ERROR".into(),
                            })?;
                        if errno == 0 {
                            return Ok(());
                        }
                        return Err(Error::Netlink {
                            op,
                            target: target(),
                            source: io::Error::from_raw_os_error(-errno),
                        });
                    }
                    NLMSG_DONE => {
                        // A dump's end may carry an error code too.
                        if let Some(b) = payload.get(..4) {
                            let errno = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                            if errno < 0 {
                                return Err(Error::Netlink {
                                    op,
                                    target: target(),
                                    source: io::Error::from_raw_os_error(-errno),
                                });
                            }
                        }
                        return Ok(());
                    }
                    ty => {
                        on_msg(ty, payload)?;
                        if hdr.flags & NLM_F_MULTI == 0 && !expects_ack(request) {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// Requests without `NLM_F_ACK` or `NLM_F_DUMP` end with their single reply.
fn expects_ack(request: &[u8]) -> bool {
    MsgHeader::parse(request)
        .map(|h| h.flags & (NLM_F_ACK | NLM_F_DUMP) != 0)
        .unwrap_or(true)
}

/// A parsed `struct nlmsghdr`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MsgHeader {
    pub len: usize,
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
}

impl MsgHeader {
    /// Parse the header at the start of `b`; `None` when `b` is too short or
    /// the length field is inconsistent.
    pub(crate) fn parse(b: &[u8]) -> Option<MsgHeader> {
        if b.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(b[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return None;
        }
        Some(MsgHeader {
            len,
            ty: u16::from_ne_bytes(b[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(b[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(b[8..12].try_into().ok()?),
        })
    }
}

/// Builds one netlink message in a zeroizing buffer: header, a fixed family
/// header, then attributes, nested as needed.
pub(crate) struct MsgWriter {
    buf: Zeroizing<Vec<u8>>,
    nests: Vec<usize>,
}

impl MsgWriter {
    /// Start a message of type `ty` with `flags`, `seq`, followed by `family_header`.
    pub(crate) fn new(ty: u16, flags: u16, seq: u32, family_header: &[u8]) -> Self {
        let mut buf = Zeroizing::new(Vec::with_capacity(4096));
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(family_header);
        let padded = align4(buf.len());
        buf.resize(padded, 0);
        MsgWriter {
            buf,
            nests: Vec::new(),
        }
    }

    /// Current length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Append an attribute.
    pub(crate) fn put(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        let padded = align4(self.buf.len());
        self.buf.resize(padded, 0);
    }

    pub(crate) fn put_u16(&mut self, ty: u16, v: u16) {
        self.put(ty, &v.to_ne_bytes());
    }

    pub(crate) fn put_u32(&mut self, ty: u16, v: u32) {
        self.put(ty, &v.to_ne_bytes());
    }

    /// A NUL-terminated string attribute.
    pub(crate) fn put_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.put(ty, &v);
    }

    /// Open a nested attribute; close it with [`MsgWriter::end_nest`].
    pub(crate) fn begin_nest(&mut self, ty: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    pub(crate) fn end_nest(&mut self) {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    /// Finish: patch the total length and hand out the bytes.
    pub(crate) fn finish(mut self) -> Zeroizing<Vec<u8>> {
        while !self.nests.is_empty() {
            self.end_nest();
        }
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// Zero-copy iterator over the attributes in `b`. Yields `(type, payload)`,
/// with the nested/byte-order flag bits masked off; a malformed attribute ends
/// the iteration with an error.
#[derive(Clone)]
pub(crate) struct AttrIter<'a> {
    rest: &'a [u8],
}

impl<'a> AttrIter<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        AttrIter { rest: b }
    }
}

/// A malformed attribute stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadAttr;

impl<'a> Iterator for AttrIter<'a> {
    type Item = Result<(u16, &'a [u8]), BadAttr>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < 4 {
            // Trailing padding shorter than a header is tolerated.
            return None;
        }
        let len = u16::from_ne_bytes([self.rest[0], self.rest[1]]) as usize;
        let ty = u16::from_ne_bytes([self.rest[2], self.rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(BadAttr));
        }
        let payload = &self.rest[4..len];
        let next = align4(len).min(self.rest.len());
        self.rest = &self.rest[next..];
        Some(Ok((ty, payload)))
    }
}

/// Read a fixed-size native-endian integer attribute payload.
pub(crate) fn read_u16(p: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(p.get(..2)?.try_into().ok()?))
}

pub(crate) fn read_u32(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

pub(crate) fn read_u64(p: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(p.get(..8)?.try_into().ok()?))
}

/// A NUL-terminated (or not) string payload.
pub(crate) fn read_str(p: &[u8]) -> Option<&str> {
    let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
    std::str::from_utf8(&p[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn writer_nests_and_patches_lengths() {
        let mut w = MsgWriter::new(0x20, NLM_F_REQUEST, 7, &[1, 2, 3, 4]);
        w.put_u32(1, 0xdead_beef);
        w.begin_nest(2);
        w.put_str(1, "wg0");
        w.begin_nest(0);
        w.put_u16(3, 51820);
        w.end_nest();
        w.end_nest();
        let b = w.finish();
        let hdr = MsgHeader::parse(&b).unwrap();
        assert_eq!(hdr.len, b.len());
        assert_eq!((hdr.ty, hdr.seq), (0x20, 7));
        let attrs: Vec<_> = AttrIter::new(&b[NLMSG_HDRLEN + 4..])
            .map(|a| a.unwrap())
            .collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!(read_u32(attrs[0].1), Some(0xdead_beef));
        let inner: Vec<_> = AttrIter::new(attrs[1].1).map(|a| a.unwrap()).collect();
        assert_eq!(read_str(inner[0].1), Some("wg0"));
        let innermost: Vec<_> = AttrIter::new(inner[1].1).map(|a| a.unwrap()).collect();
        assert_eq!(read_u16(innermost[0].1), Some(51820));
    }

    proptest! {
        #[test]
        fn attr_iter_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for (_, p) in AttrIter::new(&bytes).flatten() {
                prop_assert!(p.len() <= bytes.len());
            }
            let _ = MsgHeader::parse(&bytes);
        }

        #[test]
        fn attrs_round_trip(values in proptest::collection::vec((0u16..0x3fff, proptest::collection::vec(any::<u8>(), 0..40)), 0..20)) {
            let mut w = MsgWriter::new(1, 0, 1, &[]);
            for (t, p) in &values { w.put(*t, p); }
            let b = w.finish();
            let got: Vec<_> = AttrIter::new(&b[NLMSG_HDRLEN..]).map(|a| a.map(|(t, p)| (t, p.to_vec()))).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(got, values);
        }
    }
}
