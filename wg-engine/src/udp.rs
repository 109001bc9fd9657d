//! The UDP side: gotatun's own socket type (sendmmsg, GRO), but created by a
//! thread that entered the node's namespace. A socket belongs to the
//! namespace it was created in, whichever thread uses it later, so the
//! engine's runtime threads never leave their own namespace.
//!
//! gotatun calls [`UdpTransportFactory::bind`] whenever it (re)builds a
//! device's connection: the first `set` with a private key, a listen port or
//! private key change, [`gotatun::device::Device::resume`]. Each call binds
//! a fresh socket in the same namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gotatun::udp::socket::{SockOpt, UdpSocket};
use gotatun::udp::{UdpRecv, UdpTransportFactory, UdpTransportFactoryParams};
use tokio::runtime::Handle;

use wg_netns::Netns;

/// Binds gotatun [`UdpSocket`]s inside one namespace.
pub(crate) struct NsUdpFactory {
    ns: Arc<Netns>,
    rt: Handle,
}

impl NsUdpFactory {
    pub(crate) fn new(ns: Arc<Netns>, rt: Handle) -> Self {
        NsUdpFactory { ns, rt }
    }
}

impl UdpTransportFactory for NsUdpFactory {
    type Send = UdpSocket;
    type Recv = UdpSocket;

    fn bind(
        &mut self,
        params: &UdpTransportFactoryParams,
    ) -> impl std::future::Future<Output = io::Result<(UdpSocket, UdpSocket)>> + Send {
        let ns = Arc::clone(&self.ns);
        let rt = self.rt.clone();
        let params = params.clone();
        async move {
            // Entering a namespace takes a thread of its own (Netns::run):
            // keep that off the runtime's workers.
            tokio::task::spawn_blocking(move || {
                ns.run(|| {
                    // The socket registers with the runtime's reactor.
                    let _entered = rt.enter();
                    bind_retrying(&params)
                })
                .map_err(io::Error::other)?
            })
            .await
            .map_err(io::Error::other)?
            .map(|udp| (udp.clone(), udp))
        }
    }
}

/// How long a re-bind waits for the device's previous socket to close.
const REBIND_PATIENCE: Duration = Duration::from_secs(1);

/// [`bind_here`], retrying `EADDRINUSE` on a fixed port for a moment.
///
/// gotatun re-binds the same port when a device's key or fwmark changes,
/// right after stopping the previous connection; but the previous socket is
/// held by buffer tasks that are aborted, not awaited, so it closes a little
/// later. Without the retry, 36 of 50 key changes on a fixed port failed
/// here with EADDRINUSE, leaving the device without any socket.
fn bind_retrying(params: &UdpTransportFactoryParams) -> io::Result<UdpSocket> {
    let deadline = Instant::now() + REBIND_PATIENCE;
    loop {
        match bind_here(params) {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && params.port != 0
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            r => return r,
        }
    }
}

/// What gotatun's `UdpSocketFactory::bind` does, in the calling thread's
/// namespace: a dual-stack socket on `[::]:port` (IPv4 only when the
/// namespace has no IPv6), UDP GRO when available.
fn bind_here(params: &UdpTransportFactoryParams) -> io::Result<UdpSocket> {
    let dual_stack = params.addr.is_none();
    let only_v6 = match params.addr {
        Some(IpAddr::V6(..)) => Some(true),
        Some(IpAddr::V4(..)) => None,
        None => Some(false),
    };
    let opts = SockOpt {
        fwmark: params.fwmark,
        only_v6,
        ..SockOpt::default()
    };
    let addr = params.addr.unwrap_or(Ipv6Addr::UNSPECIFIED.into());
    let udp = match UdpSocket::bind(SocketAddr::new(addr, params.port), opts) {
        Ok(udp) => udp,
        Err(e)
            if dual_stack
                && matches!(
                    e.raw_os_error(),
                    Some(code) if code == rustix::io::Errno::AFNOSUPPORT.raw_os_error()
                        || code == rustix::io::Errno::ADDRNOTAVAIL.raw_os_error()
                ) =>
        {
            UdpSocket::bind(
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), params.port),
                opts,
            )?
        }
        Err(e) => return Err(e),
    };
    // Not fatal: without GRO each datagram is one read.
    let _ = udp.enable_udp_gro();
    Ok(udp)
}
