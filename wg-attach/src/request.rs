//! What an adapter asks the core for: one container's attachment, named
//! the adapter's way.

use std::collections::BTreeMap;

use wg_netns::IfName;

use crate::error::{Error, Kind, Result};

/// How an adapter's birth names are derived: `prefix` and a hash of
/// `salt`, the network, the container id and the interface name (15 bytes,
/// unique machine-wide as a userspace control socket's name must be, and
/// derivable again for a teardown without a record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirthNames {
    /// The name's first characters (1 to 9 of `a-z`, `0-9`, `-`): `wgc` for
    /// wg-cni, `wgo` for wg-oci, `wgn` (or the user's) for wg-netavark.
    pub prefix: String,
    /// Hashed before the identity; empty, except for wg-netavark
    /// (`netavark/` since its first release, so its names stay what they
    /// were).
    pub salt: String,
}

impl BirthNames {
    /// Names starting with `prefix`, no salt.
    pub fn new(prefix: impl Into<String>) -> Self {
        BirthNames {
            prefix: prefix.into(),
            salt: String::new(),
        }
    }

    /// The birth name of `network`'s attachment of `container_id` as
    /// `ifname`.
    pub fn derive(&self, network: &str, container_id: &str, ifname: &str) -> Result<IfName> {
        IfName::derived(
            &self.prefix,
            &format!("{}{network}/{container_id}/{ifname}", self.salt),
        )
        .map_err(|e| Error::new(Kind::Config, "invalid birth name prefix", e.to_string()))
    }
}

/// One attach (or teardown, or check) of one container, as every adapter
/// asks for it: wg-cni from its environment, wg-oci from the hook's state
/// or the embedding runtime, wg-netavark from netavark's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The container's id (names the record: checked by the adapter).
    pub container_id: String,
    /// The container's network namespace: a path.
    pub netns: String,
    /// The interface name the runtime asked for (`CNI_IFNAME`; the
    /// container's interface for the OCI hook and netavark). A chained
    /// configuration names its own (`interfaceName`).
    pub ifname: String,
    /// How birth names are derived.
    pub birth: BirthNames,
    /// Kept in the record for whoever reconciles attachments (a node agent
    /// reads the pod's identity: `K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
    /// `K8S_POD_UID`).
    pub labels: BTreeMap<String, String>,
}

impl Request {
    /// A request without labels.
    pub fn new(
        container_id: impl Into<String>,
        netns: impl Into<String>,
        ifname: impl Into<String>,
        birth: BirthNames,
    ) -> Self {
        Request {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            birth,
            labels: BTreeMap::new(),
        }
    }
}
