//! Peer endpoints as configured: an address, or a host name resolved only
//! when the caller asks for it.
//!
//! Parsing never touches the network: a configuration that names a host can
//! be parsed (and a teardown that only needs names can run) when DNS is down.
//!
//! ```
//! use wg_netns::Endpoint;
//! let a: Endpoint = "10.1.2.3:51820".parse()?;
//! assert!(a.address().is_some());
//! let h: Endpoint = "wg.example.internal:51820".parse()?; // no lookup here
//! assert_eq!(h.to_string(), "wg.example.internal:51820");
//! assert!(h.address().is_none());
//! # Ok::<(), wg_netns::Error>(())
//! ```

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;

use crate::error::{Error, Result};

/// A peer's endpoint as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// An IP address and port (`192.168.1.2:51820`, `[fd00::1]:51820`).
    Addr(SocketAddr),
    /// A host name and port, resolved by [`Endpoint::resolve`].
    Host {
        /// The host name.
        host: String,
        /// The UDP port.
        port: u16,
    },
}

impl Endpoint {
    /// The address, when the endpoint is one (no lookup).
    pub fn address(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Addr(a) => Some(*a),
            Endpoint::Host { .. } => None,
        }
    }

    /// The address to send to: the address itself, or the first address the
    /// system resolver gives for the host name (like Go's
    /// `net.ResolveUDPAddr`, which the original wireguard-cni used). This is
    /// the only place the crate resolves names.
    pub fn resolve(&self) -> Result<SocketAddr> {
        match self {
            Endpoint::Addr(a) => Ok(*a),
            Endpoint::Host { host, port } => (host.as_str(), *port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut it| it.next())
                .ok_or_else(|| Error::NotFound {
                    what: crate::error::Object::Host,
                    name: format!("{host}:{port} (endpoint does not resolve)"),
                }),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Endpoint::Addr(a)
    }
}

impl FromStr for Endpoint {
    type Err = Error;

    /// `ADDRESS:PORT`, `[IPV6]:PORT` or `HOST:PORT`; never resolves.
    fn from_str(s: &str) -> Result<Self> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Endpoint::Addr(a));
        }
        let bad = || {
            Error::invalid(
                "endpoint",
                format!("{s:?} is not HOST:PORT, such as 10.1.2.3:51820, [fd00::1]:51820 or wg.example.com:51820"),
            )
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        // A host name (RFC 1123 labels); an IPv6 literal must be bracketed.
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(bad());
        }
        Ok(Endpoint::Host {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Addr(a) => a.fmt(f),
            Endpoint::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_without_resolving() {
        assert_eq!(
            "10.0.0.1:51820".parse::<Endpoint>().unwrap(),
            Endpoint::Addr("10.0.0.1:51820".parse().unwrap())
        );
        assert_eq!(
            "[fd00::1]:1".parse::<Endpoint>().unwrap().address(),
            Some("[fd00::1]:1".parse().unwrap())
        );
        // A name that can never resolve still parses: only resolve() looks
        // it up (not done here: a lookup would leave the machine).
        let h: Endpoint = "does-not-exist.invalid:51820".parse().unwrap();
        assert!(h.address().is_none());
        for bad in [
            "",
            "10.0.0.1",
            ":51820",
            "host:",
            "host:70000",
            "fd00::1:51820",
            "a b:1",
            "-x:1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?}");
        }
        // /etc/hosts answers for localhost without a DNS query (the kernel
        // guest's initramfs has no /etc/hosts: nothing to resolve with there).
        if std::fs::read_to_string("/etc/hosts").is_ok_and(|h| h.contains("localhost")) {
            let a = "localhost:7"
                .parse::<Endpoint>()
                .unwrap()
                .resolve()
                .unwrap();
            assert!(a.ip().is_loopback() && a.port() == 7, "{a}");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(s in "[a-z0-9.:\\[\\]-]{0,40}") {
            if let Ok(e) = s.parse::<Endpoint>() {
                prop_assert_eq!(e.to_string().parse::<Endpoint>().unwrap(), e);
            }
        }
    }
}
