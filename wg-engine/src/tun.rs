//! The TUN side: a TUN interface opened by a thread that entered the pod's
//! network namespace (so the interface is born there), and gotatun's
//! [`IpSend`]/[`IpRecv`] over its descriptor.
//!
//! gotatun's own TUN support (feature `tun`, the `tun` crate) opens the
//! device in the calling thread's namespace; the engine needs a namespace
//! per device, so it opens `/dev/net/tun` itself.

use std::io;
use std::iter;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use rustix::fs::{Mode, OFlags};
use rustix::ioctl::{opcode, Opcode, Updater};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;

use wg_netns::{IfName, Netns};

/// `IFF_TUN`: layer 3, IP packets.
const IFF_TUN: i16 = 0x0001;
/// `IFF_NO_PI`: no 4-byte packet-information header before each packet.
const IFF_NO_PI: i16 = 0x1000;
/// `TUNSETIFF = _IOW('T', 202, int)`.
const TUNSETIFF: Opcode = opcode::write::<rustix::ffi::c_int>(b'T', 202);

/// `TUNSETPERSIST = _IOW('T', 203, int)`; the argument is passed by value.
const TUNSETPERSIST: Opcode = opcode::write::<rustix::ffi::c_int>(b'T', 203);

/// Make the interface of `fd` persistent (it outlives its last descriptor,
/// so a daemon that dies leaves it, with its addresses and routes, for the
/// next one to adopt) or not (it goes with its last descriptor).
pub(crate) fn set_persist(fd: &impl std::os::fd::AsFd, on: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes an int by value and touches no memory of
    // ours.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            rustix::ioctl::IntegerSetter::<TUNSETPERSIST>::new_usize(usize::from(on)),
        )
    }
    .map_err(io::Error::from)
}

/// `struct ifreq` as TUNSETIFF reads it: the name, the flags, and the rest
/// of the 40-byte union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Open `/dev/net/tun` and create the TUN interface `name` from a thread in
/// `ns`: the interface lives in `ns` from its birth. The descriptor is
/// non-blocking and close-on-exec; the interface (unless made persistent)
/// disappears when the last descriptor on it is closed. When a persistent
/// TUN called `name` exists in `ns` with no descriptor on it, this attaches
/// to it instead (how a restarted engine adopts its devices): callers that
/// mean to create check the name is free first.
pub(crate) fn open_in(ns: &Netns, name: &IfName) -> Result<OwnedFd, crate::Error> {
    ns.run(|| open_here(name))
        .map_err(|source| crate::Error::Netns {
            name: name.to_string(),
            op: "entering the TUN's namespace",
            source,
        })?
        .map_err(|source| crate::Error::Io {
            name: name.to_string(),
            op: "creating the TUN interface (TUNSETIFF)",
            source,
        })
}

fn open_here(name: &IfName) -> io::Result<OwnedFd> {
    let fd = rustix::fs::open(
        "/dev/net/tun",
        OFlags::RDWR | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    let bytes = name.as_str().as_bytes();
    // IfName guarantees at most 15 bytes; the 16th stays NUL.
    let n = bytes.len().min(15);
    req.name[..n].copy_from_slice(&bytes[..n]);
    // SAFETY: TUNSETIFF reads (and writes back) a `struct ifreq`, which
    // `IfReq` lays out in full (40 bytes); `req` outlives the call.
    unsafe { rustix::ioctl::ioctl(&fd, Updater::<TUNSETIFF, IfReq>::new(&mut req)) }?;
    Ok(fd)
}

/// A TUN descriptor as gotatun's IP transport. Clones share the descriptor.
#[derive(Clone)]
pub(crate) struct Tun {
    fd: Arc<AsyncFd<OwnedFd>>,
    mtu: MtuWatcher,
    /// Set to true when reading fails for good (the interface was deleted,
    /// e.g. with its namespace): the engine then drops the device.
    dead: Arc<watch::Sender<bool>>,
}

impl Tun {
    /// Wrap `fd`; must be called within the engine's runtime.
    pub(crate) fn new(fd: OwnedFd, mtu: u16) -> io::Result<(Tun, watch::Receiver<bool>)> {
        let (tx, rx) = watch::channel(false);
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open
        // and refers to the same file description until the AsyncFd drops,
        // and OwnedFd::as_raw_fd always returns that descriptor.
        let fd = unsafe {
            AsyncFd::register_with_interest(
                fd,
                Interest::READABLE | Interest::WRITABLE | Interest::ERROR,
            )
        }
        .map_err(io::Error::from)?;
        Ok((
            Tun {
                fd: Arc::new(fd),
                mtu: MtuWatcher::new(mtu),
                dead: Arc::new(tx),
            },
            rx,
        ))
    }

    /// A handle that tells when the last clone (and the descriptor) is gone.
    pub(crate) fn weak(&self) -> Weak<AsyncFd<OwnedFd>> {
        Arc::downgrade(&self.fd)
    }
}

impl IpSend for Tun {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        let bytes = packet.into_bytes();
        loop {
            let mut guard = self.fd.writable().await?;
            match guard
                .try_io(|fd| rustix::io::write(fd.get_ref(), &bytes).map_err(io::Error::from))
            {
                Ok(r) => return r.map(drop),
                Err(_would_block) => continue,
            }
        }
    }
}

impl IpRecv for Tun {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        loop {
            let mut packet = pool.get();
            let n = loop {
                // A deleted interface shows as EPOLLERR only (read then
                // fails with EBADFD): tokio's `readable()` would not wake.
                let mut guard = self.fd.ready(Interest::READABLE | Interest::ERROR).await?;
                match guard.try_io(|fd| {
                    rustix::io::read(fd.get_ref(), &mut packet[..]).map_err(io::Error::from)
                }) {
                    Ok(Ok(0)) => {
                        self.dead.send_replace(true);
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                    }
                    Ok(Ok(n)) => break n,
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Ok(Err(e)) => {
                        self.dead.send_replace(true);
                        return Err(e);
                    }
                    Err(_would_block) => continue,
                }
            };
            packet.truncate(n);
            // A TUN without IFF_NO_PI only hands out IP packets; anything
            // else is skipped rather than failing the device (gotatun's own
            // TUN transport returns an error, which stops the device).
            if let Ok(ip) = packet.try_into_ip() {
                return Ok(iter::once(ip));
            }
        }
    }

    fn mtu(&self) -> MtuWatcher {
        self.mtu.clone()
    }
}
