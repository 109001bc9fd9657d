//! The UAPI wire format: encoding `set=1` requests and parsing `get=1`
//! replies and `errno=N` lines.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use zeroize::Zeroizing;

use crate::device::{epoch_time, Device, DeviceConfig, Peer};
use crate::error::{Error, Result};
use crate::key::{PresharedKey, PrivateKey, PublicKey, KEY_LEN};

fn hex(bytes: &[u8], out: &mut String) {
    const H: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(H[(b >> 4) as usize] as char);
        out.push(H[(b & 15) as usize] as char);
    }
}

fn unhex(s: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let s = s.as_bytes();
    if s.len() != KEY_LEN * 2 {
        return None;
    }
    let val = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    for i in 0..KEY_LEN {
        out[i] = (val(s[2 * i])? << 4) | val(s[2 * i + 1])?;
    }
    Some(out)
}

/// Encode a `set=1` request (including the terminating blank line).
pub(crate) fn encode_set(cfg: &DeviceConfig) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(64 + cfg.peers.len() * 160));
    s.push_str("set=1\n");
    if let Some(k) = &cfg.private_key {
        s.push_str("private_key=");
        hex(k.as_bytes(), &mut s);
        s.push('\n');
    }
    if let Some(p) = cfg.listen_port {
        let _ = writeln!(s, "listen_port={p}");
    }
    if let Some(m) = cfg.fwmark {
        let _ = writeln!(s, "fwmark={m}");
    }
    if cfg.replace_peers {
        s.push_str("replace_peers=true\n");
    }
    for p in &cfg.peers {
        s.push_str("public_key=");
        hex(p.public_key.as_bytes(), &mut s);
        s.push('\n');
        if p.remove {
            s.push_str("remove=true\n");
            continue;
        }
        if p.update_only {
            s.push_str("update_only=true\n");
        }
        if let Some(k) = &p.preshared_key {
            s.push_str("preshared_key=");
            hex(k.as_bytes(), &mut s);
            s.push('\n');
        }
        if let Some(ep) = p.endpoint {
            let _ = writeln!(s, "endpoint={ep}");
        }
        if let Some(ka) = p.persistent_keepalive {
            let _ = writeln!(
                s,
                "persistent_keepalive_interval={}",
                ka.as_secs().min(65535)
            );
        }
        if p.replace_allowed_ips {
            s.push_str("replace_allowed_ips=true\n");
        }
        for net in &p.allowed_ips {
            let _ = writeln!(s, "allowed_ip={net}");
        }
    }
    s.push('\n');
    s
}

/// Parse a `get=1` reply (everything up to and including `errno=N`).
/// Unknown keys are ignored (implementations add their own).
pub(crate) fn parse_get(device: &str, reply: &str) -> Result<Device> {
    let bad = |reason: String| Error::Uapi {
        device: device.to_string(),
        reason,
    };
    let mut dev = Device::default();
    let mut errno = None;
    let mut hs_sec: Option<u64> = None;
    for line in reply.lines() {
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| bad(format!("malformed reply line of {} bytes", line.len())))?;
        let num = |what: &str| -> Result<u64> {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{what} is not a number: {v:?}")))
        };
        let in_peer = !dev.peers.is_empty();
        match k {
            "errno" => {
                errno = Some(v.parse::<i32>().map_err(|_| bad(format!("errno {v:?}")))?);
            }
            "private_key" if !in_peer => {
                let b = unhex(v).ok_or_else(|| bad("private key is not 64 hex digits".into()))?;
                let k = PrivateKey::from_bytes(*b);
                if !k.is_zero() {
                    dev.public_key = Some(k.public_key());
                    dev.private_key = Some(k);
                }
            }
            // boringtun reports the public key instead of the private one.
            "own_public_key" if !in_peer => {
                let b =
                    unhex(v).ok_or_else(|| bad("own public key is not 64 hex digits".into()))?;
                dev.public_key = Some(PublicKey::from_bytes(*b));
            }
            "listen_port" if !in_peer => dev.listen_port = num("listen_port")? as u16,
            "fwmark" if !in_peer => dev.fwmark = num("fwmark")? as u32,
            "public_key" => {
                let b =
                    unhex(v).ok_or_else(|| bad("peer public key is not 64 hex digits".into()))?;
                dev.peers.push(Peer::new(PublicKey::from_bytes(*b)));
                hs_sec = None;
            }
            _ => {
                let Some(p) = dev.peers.last_mut() else {
                    continue;
                };
                match k {
                    "preshared_key" => {
                        let b = unhex(v)
                            .ok_or_else(|| bad("preshared key is not 64 hex digits".into()))?;
                        let k = PresharedKey::from_bytes(*b);
                        p.preshared_key = (!k.is_zero()).then_some(k);
                    }
                    "endpoint" => {
                        p.endpoint = Some(
                            v.parse::<SocketAddr>()
                                .map_err(|_| bad(format!("endpoint {v:?}")))?,
                        );
                    }
                    "persistent_keepalive_interval" => {
                        let s = num("persistent_keepalive_interval")?;
                        p.persistent_keepalive = (s != 0).then(|| Duration::from_secs(s));
                    }
                    "allowed_ip" => {
                        p.allowed_ips.push(
                            v.parse::<IpNetwork>()
                                .map_err(|_| bad(format!("allowed_ip {v:?}")))?,
                        );
                    }
                    "rx_bytes" => p.rx_bytes = num("rx_bytes")?,
                    "tx_bytes" => p.tx_bytes = num("tx_bytes")?,
                    "last_handshake_time_sec" | "last_handshake_time_nsec" => {
                        let n = num(k)?;
                        let (s, nanos) = if k == "last_handshake_time_sec" {
                            hs_sec = Some(n);
                            (n, 0)
                        } else {
                            (hs_sec.unwrap_or(0), n)
                        };
                        p.last_handshake = if s == 0 {
                            None
                        } else {
                            Some(epoch_time(s, nanos).ok_or_else(|| {
                                bad(format!("handshake time {s}.{nanos} is out of range"))
                            })?)
                        };
                    }
                    _ => {}
                }
            }
        }
    }
    match errno {
        Some(0) => Ok(dev),
        Some(errno) => Err(Error::UapiErrno {
            device: device.to_string(),
            errno,
        }),
        None => Err(bad("reply has no errno line".into())),
    }
}

pub(super) fn parse_errno(device: &str, reply: &str) -> Result<()> {
    for line in reply.lines() {
        if let Some(v) = line.strip_prefix("errno=") {
            return match v.trim().parse::<i32>() {
                Ok(0) => Ok(()),
                Ok(errno) => Err(Error::UapiErrno {
                    device: device.to_string(),
                    errno,
                }),
                Err(_) => Err(Error::Uapi {
                    device: device.to_string(),
                    reason: format!("bad errno line {line:?}"),
                }),
            };
        }
    }
    Err(Error::Uapi {
        device: device.to_string(),
        reason: "reply has no errno line".into(),
    })
}
