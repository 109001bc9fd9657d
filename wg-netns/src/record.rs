//! What a caller keeps about an attachment so that it can be torn down later
//! from the record alone: the pod's namespace may be gone, DNS down, key
//! files deleted; none of that stops [`AttachmentRecord::detach`].
//!
//! ```no_run
//! use wg_netns::{AttachmentRecord, BackendKind, IfName, Netns, SocketNamespace, Userspace};
//! let rec = AttachmentRecord {
//!     interface: IfName::new("wg0")?,
//!     birth_name: IfName::derived("wgc", "container-id/wg0")?,
//!     netns: "/var/run/netns/pod1".into(),
//!     socket_namespace: SocketNamespace::Host,
//!     backend: BackendKind::Userspace,
//!     userspace_implementation: None,
//! };
//! // From the node's namespace, whatever is left of the pod:
//! rec.detach(&Netns::current()?, &Userspace::default())?;
//! # Ok::<(), wg_netns::Error>(())
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::attach::Birthplace;
use crate::backend::{Backend, BackendKind, WgDevice};
use crate::error::{Error, Result};
use crate::ifname::IfName;
use crate::netns::Netns;
use crate::uapi::Userspace;

/// Where a container's WireGuard interface is born, and so where its UDP
/// socket lives. Written and parsed as `host` / `container`.
///
/// ```
/// use wg_netns::SocketNamespace;
/// assert_eq!("container".parse::<SocketNamespace>()?, SocketNamespace::Container);
/// assert_eq!(SocketNamespace::default().to_string(), "host");
/// # Ok::<(), wg_netns::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum SocketNamespace {
    /// The caller's namespace (the node): encrypted traffic leaves from the
    /// node and the container never sees it. The default.
    #[default]
    Host,
    /// The container's own namespace.
    Container,
}

impl SocketNamespace {
    /// The word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketNamespace::Host => "host",
            SocketNamespace::Container => "container",
        }
    }
}

impl fmt::Display for SocketNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SocketNamespace {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "host" => Ok(SocketNamespace::Host),
            "container" => Ok(SocketNamespace::Container),
            other => Err(Error::invalid(
                "socket namespace",
                format!("{other:?} is not \"host\" or \"container\""),
            )),
        }
    }
}

/// Everything needed to find or remove an attachment later. Holds no
/// secret. With the `serde` feature it serializes in camelCase (the
/// field names wg-cni's state files have always used).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "camelCase"))]
pub struct AttachmentRecord {
    /// The interface's name in the container.
    pub interface: IfName,
    /// Its birth name (the userspace control socket's name).
    pub birth_name: IfName,
    /// The container's network namespace path at attach time.
    pub netns: PathBuf,
    /// Where the UDP socket lives.
    pub socket_namespace: SocketNamespace,
    /// Which backend made it.
    pub backend: BackendKind,
    /// The userspace implementation that made it, if any.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub userspace_implementation: Option<PathBuf>,
}

impl AttachmentRecord {
    /// The backend that made the attachment, without probing anything:
    /// the recorded userspace implementation, else `fallback`.
    pub fn backend(&self, fallback: &Userspace) -> Backend {
        let u = self
            .userspace_implementation
            .clone()
            .map(Userspace::new)
            .unwrap_or_else(|| fallback.clone());
        Backend::of_kind(self.backend, u)
    }

    /// Remove the attachment from `node` (the namespace the attaching caller
    /// ran in), whatever is left of it: the interface, a link left at the
    /// birthplace, a userspace daemon and its socket. Works when the
    /// container's namespace is gone, and when it is gone from the runtime
    /// but kept alive by a userspace daemon born inside it (reached through
    /// the daemon). Idempotent: returns whether anything was removed; every
    /// step is attempted and every failure reported.
    pub fn detach(&self, node: &Netns, fallback: &Userspace) -> Result<bool> {
        self.detach_in(node, None, fallback)
    }

    /// [`AttachmentRecord::detach`] with the container's namespace path as
    /// the runtime gives it now (`None` or empty: use the recorded one).
    pub fn detach_in(
        &self,
        node: &Netns,
        netns: Option<&std::path::Path>,
        fallback: &Userspace,
    ) -> Result<bool> {
        let backend = self.backend(fallback);
        let path = netns
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(&self.netns);
        let pod = (!path.as_os_str().is_empty())
            .then(|| Netns::from_path(path).ok())
            .flatten();
        match (&pod, self.socket_namespace) {
            (Some(pod), socket) => Birthplace::for_container(node, pod, socket, &backend)?
                .detach(&self.interface, &self.birth_name),
            (None, SocketNamespace::Host) => {
                Birthplace::new(node, node, &backend)?.cleanup_birth(&self.birth_name)
            }
            (None, SocketNamespace::Container) => {
                // The runtime let go of the namespace, but a userspace daemon
                // born inside keeps it alive: reach it through the daemon.
                let u = match &backend {
                    Backend::Userspace(u) => u,
                    // The engine's device went with the namespace; its
                    // record goes too.
                    Backend::Engine(e) => return e.delete(&self.birth_name),
                    Backend::Kernel => return Ok(false),
                };
                let pid = WgDevice::open_userspace(u, self.birth_name.as_str())
                    .ok()
                    .and_then(|d| d.daemon_pid());
                match pid.map(Netns::from_pid) {
                    Some(Ok(ns)) => Birthplace::new(&ns, &ns, &backend)?
                        .detach(&self.interface, &self.birth_name),
                    Some(Err(e)) if !e.is_not_found() => Err(e),
                    // A daemon that answers but whose process this one
                    // cannot see (started by a launcher outside this PID
                    // namespace): deleting its socket ends it, and with it
                    // the namespace and the interface.
                    None if u.answers(self.birth_name.as_str()) => {
                        crate::backend::wait_userspace_gone(
                            u,
                            self.birth_name.as_str(),
                            std::time::Duration::ZERO,
                        )
                        .map(|()| true)
                    }
                    _ => Ok(false),
                }
            }
        }
    }
}
