//! A peer as a configuration describes it, before anything is looked up:
//! its endpoint may be a host name and its preshared key a file.
//! [`PeerSpec::resolve`] does the lookups and gives the [`PeerConfig`] a
//! device takes. Configuration parsers (wg-cni, an OCI hook, a node agent)
//! hold `PeerSpec`s, so parsing never does I/O and a teardown never fails
//! because DNS is down or a key file was removed.
//!
//! ```
//! use std::time::Duration;
//! use wg_netns::{PeerSpec, PrivateKey};
//! use wg_netns::key::KeyFileCheck;
//! let peer = PeerSpec::new(PrivateKey::generate()?.public_key())
//!     .endpoint("10.1.2.3:51820".parse()?)
//!     .allowed_ip("10.13.13.0/24".parse()?)
//!     .persistent_keepalive(Duration::from_secs(25));
//! let cfg = peer.resolve(KeyFileCheck::OwnerOnly)?; // no file, no name: nothing read
//! assert_eq!(cfg.endpoint, Some("10.1.2.3:51820".parse()?));
//! # Ok::<(), wg_netns::Error>(())
//! ```

use std::time::Duration;

use ipnetwork::IpNetwork;

use crate::device::PeerConfig;
use crate::endpoint::Endpoint;
use crate::error::Result;
use crate::key::{KeyFileCheck, KeySource, PresharedKey, PublicKey};

/// A peer as configured: the complete desired state of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerSpec {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Preshared key, inline or from a file.
    pub preshared_key: Option<KeySource<PresharedKey>>,
    /// Endpoint, an address or a host name.
    pub endpoint: Option<Endpoint>,
    /// Allowed IPs.
    pub allowed_ips: Vec<IpNetwork>,
    /// Persistent keepalive (zero or `None`: off).
    pub persistent_keepalive: Option<Duration>,
}

impl PeerSpec {
    /// A peer with nothing but its key.
    pub fn new(public_key: PublicKey) -> Self {
        PeerSpec {
            public_key,
            preshared_key: None,
            endpoint: None,
            allowed_ips: Vec::new(),
            persistent_keepalive: None,
        }
    }

    /// Set the endpoint.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Set the preshared key source.
    pub fn preshared_key(mut self, key: KeySource<PresharedKey>) -> Self {
        self.preshared_key = Some(key);
        self
    }

    /// Add an allowed IP.
    pub fn allowed_ip(mut self, net: IpNetwork) -> Self {
        self.allowed_ips.push(net);
        self
    }

    /// Set the persistent keepalive.
    pub fn persistent_keepalive(mut self, interval: Duration) -> Self {
        self.persistent_keepalive = Some(interval);
        self
    }

    /// The peer as a device takes it, its allowed IPs replacing the
    /// device's: resolves a host-name endpoint and reads a preshared key
    /// file (checked as `check` says). The only I/O a peer ever causes.
    pub fn resolve(&self, check: KeyFileCheck) -> Result<PeerConfig> {
        let mut p = PeerConfig::new(self.public_key).allowed_ips(self.allowed_ips.iter().copied());
        p.preshared_key = self
            .preshared_key
            .as_ref()
            .map(|k| k.load(check))
            .transpose()?;
        p.endpoint = self.endpoint.as_ref().map(Endpoint::resolve).transpose()?;
        p.persistent_keepalive = self.persistent_keepalive;
        p.replace_allowed_ips = true;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrivateKey;

    #[test]
    fn nothing_is_read_until_resolve() {
        let pk = PrivateKey::generate().unwrap().public_key();
        let spec = PeerSpec::new(pk)
            .endpoint("no-such-host.invalid:51820".parse().unwrap())
            .preshared_key(KeySource::File("/nonexistent/psk".into()));
        // Building and cloning did nothing; resolving fails on the file first.
        let err = spec.clone().resolve(KeyFileCheck::OwnerOnly).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/psk"), "{err}");
        // (Resolving the name is not tried here: a DNS query would leave
        // the machine.)
    }
}
