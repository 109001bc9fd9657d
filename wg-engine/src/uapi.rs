//! The cross-platform userspace API (<https://www.wireguard.com/xplatform/>)
//! on a device's unix socket, translated to gotatun's configuration API.
//!
//! gotatun has a UAPI server of its own (`UapiServer`), but its `set`
//! removes and re-creates every peer it names (a new `Tunn`, so that peer's
//! session, handshake time and counters are lost), even for an endpoint or
//! keepalive change, and it panics when a peer arrives before a private key.
//! Here only gotatun's parser of the text protocol is reused; `set` goes
//! through `Device::write` with `modify_peer` for peers that exist, which
//! keeps their sessions, as wireguard-go and the kernel do.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Weak;
use std::time::SystemTime;

use gotatun::device::uapi::command::{Request, Set, SetUnset};
use gotatun::device::{Device, DeviceTransports, Peer};
use gotatun::x25519::{PublicKey, StaticSecret};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use zeroize::Zeroizing;

const EINVAL: i32 = 22;
const EIO: i32 = 5;
const EADDRINUSE: i32 = 98;
const ENOKEY: i32 = 126;

/// The largest request accepted (a `set` of ~100k peers fits).
const MAX_REQUEST: u64 = 64 << 20;

/// Serve one connection: requests end with a blank line; each gets its
/// reply (ending with `errno=N` and a blank line). Returns when the client
/// closes, on I/O errors, or when the device is gone.
///
/// `on_port` is told the device's listen port after each successful `set`
/// that named one.
pub(crate) async fn serve<T: DeviceTransports>(
    stream: UnixStream,
    device: Weak<Device<T>>,
    on_port: Option<impl Fn(u16)>,
) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r).take(MAX_REQUEST);
    let mut request = Zeroizing::new(String::new());
    let mut line = Zeroizing::new(String::new());
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.as_str() != "\n" {
            request.push_str(&line);
            if !line.ends_with('\n') {
                request.push('\n');
            }
            continue;
        }
        if request.is_empty() {
            continue;
        }
        let Some(dev) = device.upgrade() else {
            return;
        };
        let reply = handle(&dev, &request).await;
        if let Some(f) = &on_port {
            let names_port = request.starts_with("set=1\n")
                && request.lines().any(|l| l.starts_with("listen_port="));
            if names_port && reply.as_str() == "errno=0\n\n" {
                f(dev.read(async |d| d.listen_port()).await);
            }
        }
        drop(dev);
        request.clear();
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One request (without its terminating blank line) to its reply.
pub(crate) async fn handle<T: DeviceTransports>(
    dev: &Device<T>,
    request: &str,
) -> Zeroizing<String> {
    let errno = match Request::from_str(request) {
        Ok(Request::Get(_)) => return get(dev).await,
        Ok(Request::Set(set)) => set_config(dev, set).await,
        Err(_) => EINVAL,
    };
    Zeroizing::new(format!("errno={errno}\n\n"))
}

fn hex(bytes: &[u8], out: &mut String) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

async fn get<T: DeviceTransports>(dev: &Device<T>) -> Zeroizing<String> {
    let (key, port, fwmark, peers) = dev
        .read(async |d| {
            (
                d.private_key().map(|k| Zeroizing::new(k.to_bytes())),
                d.listen_port(),
                d.fwmark(),
                d.peers().await,
            )
        })
        .await;
    let mut s = Zeroizing::new(String::with_capacity(128 + peers.len() * 256));
    if let Some(k) = key {
        s.push_str("private_key=");
        hex(&k[..], &mut s);
        s.push('\n');
    }
    let _ = writeln!(s, "listen_port={port}");
    if let Some(m) = fwmark.filter(|m| *m != 0) {
        let _ = writeln!(s, "fwmark={m}");
    }
    let now = SystemTime::now();
    for p in peers {
        s.push_str("public_key=");
        hex(p.peer.public_key.as_bytes(), &mut s);
        s.push('\n');
        if let Some(psk) = p.peer.preshared_key.map(Zeroizing::new) {
            s.push_str("preshared_key=");
            hex(&psk[..], &mut s);
            s.push('\n');
        }
        s.push_str("protocol_version=1\n");
        if let Some(ep) = p.peer.endpoint {
            let _ = writeln!(s, "endpoint={ep}");
        }
        // gotatun keeps "time since the last handshake"; the protocol wants
        // the wall-clock time.
        let (sec, nsec) = p
            .stats
            .last_handshake
            .and_then(|ago| now.checked_sub(ago))
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        let _ = writeln!(s, "last_handshake_time_sec={sec}");
        let _ = writeln!(s, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(s, "tx_bytes={}", p.stats.tx_bytes);
        let _ = writeln!(s, "rx_bytes={}", p.stats.rx_bytes);
        let _ = writeln!(
            s,
            "persistent_keepalive_interval={}",
            p.peer.keepalive.unwrap_or(0)
        );
        for net in &p.peer.allowed_ips {
            let _ = writeln!(s, "allowed_ip={}/{}", net.ip(), net.prefix());
        }
    }
    s.push_str("errno=0\n\n");
    s
}

/// Apply a `set`: only what it names changes. Returns the errno to report.
async fn set_config<T: DeviceTransports>(dev: &Device<T>, set: Set) -> i32 {
    let Set {
        private_key,
        listen_port,
        fwmark,
        replace_peers,
        protocol_version,
        peers,
        ..
    } = set;
    if protocol_version.as_deref().is_some_and(|v| v != "1") {
        return EINVAL;
    }
    let private_key = private_key.map(|k| Zeroizing::new(k.0));
    // gotatun cannot remove a device's key (wireguard-go takes an all-zero
    // key to mean "none").
    if private_key
        .as_ref()
        .is_some_and(|k| k.iter().all(|b| *b == 0))
    {
        return EINVAL;
    }
    let mut seen = std::collections::HashSet::with_capacity(peers.len());
    if !peers.iter().all(|p| seen.insert(p.peer.public_key.0)) {
        return EINVAL;
    }
    // gotatun builds a peer's tunnel from the device key: adding a peer to a
    // device without one would panic inside gotatun.
    let adds_peers = peers.iter().any(|p| !p.remove);
    if adds_peers && private_key.is_none() && !dev.read(async |d| d.private_key().is_some()).await {
        return ENOKEY;
    }

    let result = dev
        .write(async |w| -> Result<(), i32> {
            if replace_peers {
                // Peer by peer: DeviceWrite::clear_peers also rebinds the
                // UDP socket, which removing peers does not need.
                let all: Vec<PublicKey> = w
                    .peers()
                    .await
                    .into_iter()
                    .map(|p| p.peer.public_key)
                    .collect();
                for pk in &all {
                    w.remove_peer(pk).await;
                }
            }
            if let Some(k) = &private_key {
                w.set_private_key(StaticSecret::from(**k)).await;
            }
            if let Some(port) = listen_port {
                w.set_listen_port(port);
            }
            if let Some(mark) = fwmark {
                let mark = match mark {
                    SetUnset::Set(m) => m.get(),
                    SetUnset::Unset => 0,
                };
                w.set_fwmark(mark).map_err(|_| EIO)?;
            }
            for p in peers {
                let pk = PublicKey::from(p.peer.public_key.0);
                if p.remove {
                    w.remove_peer(&pk).await;
                    continue;
                }
                let psk: Option<Option<[u8; 32]>> = p.peer.preshared_key.map(|k| match k {
                    SetUnset::Set(k) => Some(k.0),
                    SetUnset::Unset => None,
                });
                let keepalive = p
                    .peer
                    .persistent_keepalive_interval
                    .map(|k| (k != 0).then_some(k));
                let endpoint: Option<SocketAddr> = p.peer.endpoint;
                let nets = p.peer.allowed_ip;
                let replace_ips = p.replace_allowed_ips;
                let exists = w
                    .modify_peer(&pk, |m| {
                        if let Some(psk) = psk {
                            m.set_preshared_key(psk);
                        }
                        if let Some(ep) = endpoint {
                            m.set_endpoint(Some(ep));
                        }
                        if let Some(ka) = keepalive {
                            m.set_keepalive(ka);
                        }
                        if replace_ips {
                            m.clear_allowed_ips();
                        }
                        m.add_allowed_ips(nets.iter().copied());
                    })
                    .await;
                if exists || p.update_only {
                    continue;
                }
                let mut peer = Peer::new(pk);
                peer.endpoint = endpoint;
                peer.allowed_ips = nets;
                peer.preshared_key = psk.flatten();
                peer.keepalive = keepalive.flatten();
                w.add_peer(peer);
            }
            Ok(())
        })
        .await;
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(errno)) => errno,
        Err(gotatun::device::Error::Bind(e, _)) | Err(gotatun::device::Error::IoError(e))
            if e.kind() == std::io::ErrorKind::AddrInUse =>
        {
            EADDRINUSE
        }
        Err(_) => EIO,
    }
}
