//! # wg-netns
//!
//! Typed APIs to create and configure WireGuard interfaces inside Linux
//! network namespaces, for CNI plugins, container runtimes and OCI hooks.
//!
//! The crate is layered, one module per layer:
//!
//! | layer | type | module |
//! |---|---|---|
//! | namespace entry | [`Netns`] | [`netns`] |
//! | links, addresses, routes (rtnetlink) | [`Rtnl`], [`Link`], [`Route`] | [`rtnl`] |
//! | WireGuard device (kernel genl or userspace UAPI) | [`WgDevice`], [`Backend`] | [`backend`], `kernel`, [`uapi`] |
//! | many userspace devices in one engine daemon | [`EngineDaemon`] | [`engine`] |
//! | device configuration and state, diffing | [`DeviceConfig`], [`Device`] | [`device`] |
//! | attachment (create here, move there) | [`Birthplace`], [`InterfaceSpec`] | [`attach`] |
//! | make it so / is it so | [`Birthplace::ensure`], [`Birthplace::verify`], [`Drift`] | [`reconcile`], [`drift`] |
//! | teardown from a record | [`AttachmentRecord`] | [`record`] |
//! | monitoring without keys | [`DeviceStats`], [`list_devices`] | [`stats`] |
//! | link and namespace events (rtnetlink notifications) | [`LinkEvents`], [`LinkEvent`] | [`events`] |
//!
//! Every handle is `Send + Sync` (a long-lived agent shares them in an
//! `Arc`); they are blocking, and safe to call from an async runtime's
//! blocking pool (`tokio::task::spawn_blocking`): each call is a few
//! netlink or UAPI round trips (docs/architecture.md gives the measured
//! cost). The crate reads no environment variable unless a function says it
//! does ([`Userspace::from_env`], [`Backend::from_choice`]).
//!
//! Keys ([`PrivateKey`], [`PresharedKey`]) zeroize on drop and never appear in
//! `Debug`, `Display` or error messages. The library never writes to stdout.
//!
//! ## Example: a tunnel between two namespaces
//!
//! ```no_run
//! use wg_netns::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (a, b) = (Netns::from_name("node-a")?, Netns::from_name("node-b")?);
//! let backend = Backend::detect()?;
//! let (ka, kb) = (PrivateKey::generate()?, PrivateKey::generate()?);
//! let spec_a = InterfaceSpec::new(IfName::new("wga")?, IfName::new("wg0")?)
//!     .device(DeviceConfig::new().private_key(ka.clone()).listen_port(51820).peer(
//!         PeerConfig::new(kb.public_key())
//!             .endpoint("192.168.50.2:51820".parse()?)
//!             .allowed_ip("10.99.0.2/32".parse()?),
//!     ))
//!     .address("10.99.0.1/24".parse()?);
//! Birthplace::new(&a, &a, &backend)?.attach(&spec_a)?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod attach;
pub mod backend;
pub mod device;
pub mod drift;
pub mod endpoint;
pub mod engine;
pub mod error;
pub mod events;
mod fault;
pub mod ifname;
mod kernel;
pub mod key;
pub mod killswitch;
pub mod net;
mod netlink;
pub mod netns;
pub mod reconcile;
pub mod record;
pub mod rtnl;
pub mod spec;
pub mod stats;
pub mod uapi;

pub use attach::{
    cleanup_birth, list_devices, owner_alias, Attachment, Birthplace, InterfaceSpec, ListedDevice,
};
pub use backend::{Backend, BackendChoice, BackendKind, WgDevice};
pub use device::{Device, DeviceConfig, Peer, PeerConfig};
pub use drift::Drift;
pub use endpoint::Endpoint;
pub use engine::EngineDaemon;
pub use error::{Error, Object, Result};
pub use events::{LinkEvent, LinkEvents, LinkUpdate};
pub use ipnetwork::IpNetwork;
pub use key::{KeyError, KeyFileCheck, KeySource, PresharedKey, PrivateKey, PublicKey};
pub use killswitch::{KillSwitch, KillSwitchChange, Leak, KILL_SWITCH_METRIC};
pub use netns::{Netns, NETNS_RUN_DIR};
pub use reconcile::Ensured;
pub use record::{AttachmentRecord, SocketNamespace};
pub use rtnl::{
    normalize, IfName, Link, Route, RouteKind, RouteScope, RoutesSynced, Rtnl, TABLE_MAIN,
};
pub use spec::PeerSpec;
pub use stats::{DeviceStats, PeerStats};
pub use uapi::{LaunchCommand, Launcher, Userspace, DEFAULT_IO_TIMEOUT, DEFAULT_SOCKET_DIR};

/// Decoders exposed for fuzzing only; not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Feed bytes to the WireGuard generic netlink dump decoder.
    pub fn decode_wg_genl(bytes: &[u8]) {
        let mut dev = crate::Device::default();
        let _ = crate::kernel::decode_get_part(bytes, &mut dev);
    }
    /// Feed text to the UAPI `get` reply parser.
    pub fn parse_uapi_get(text: &str) {
        let _ = crate::uapi::parse_get("fuzz", text);
    }
    /// Feed bytes to the rtnetlink link and route decoders.
    pub fn decode_rtnl(bytes: &[u8]) {
        crate::rtnl::fuzz_decode(bytes);
    }
    /// Walk netlink attributes.
    pub fn walk_attrs(bytes: &[u8]) {
        for a in crate::netlink::AttrIter::new(bytes) {
            let _ = a;
        }
    }
}

// The long-lived handles are shareable across an agent's threads: this fails
// to compile if one of them stops being `Send + Sync`.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Birthplace>();
    shareable::<WgDevice>();
    shareable::<Rtnl>();
    shareable::<Netns>();
    shareable::<Backend>();
    shareable::<AttachmentRecord>();
    shareable::<LinkEvents>();
};
