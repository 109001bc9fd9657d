//! WireGuard for OCI containers outside Kubernetes.
//!
//! Two ways in:
//!
//! - **the hook** (`wg-oci-hook`, see [`hook`]): a `createRuntime` hook (and
//!   a `poststop` hook for the teardown) for runc, crun, youki and podman,
//!   configured by the container's annotations;
//! - **this library**, for a runtime that embeds youki's `libcontainer`:
//!   between create and start, [`attach`] the container's network
//!   namespace; after it stops, [`detach`] with the [`Record`] attach gave.
//!
//! ```no_run
//! use wg_oci::{attach, detach, Config};
//! let config = Config::parse(br#"{
//!     "address": "10.77.0.2/24",
//!     "privateKeyFile": "/etc/wireguard/c1.key",
//!     "peers": [{"publicKey": "jGGhjGIEbR0Noo8MgjAVh+m5pq4GxD9CZDAl/zsfZF0=",
//!                "endpoint": "10.78.0.2:51820", "allowedIPs": ["10.77.0.1/32"]}]
//! }"#)?;
//! # let pid = 1234_u32;
//! // After `ContainerBuilder::...build()` (created, not started): its init's PID.
//! let record = attach("c1", pid, &config)?;
//! // ... start, run, stop ...
//! detach(&record)?;
//! # Ok::<(), wg_oci::Error>(())
//! ```
//!
//! The configuration is wg-cni's network configuration, parsed by the
//! attachment core's parser (wg-attach), with container-friendly defaults
//! ([`config`]); what an attach creates is decided by the core's
//! [`wg_attach::plan::Plan`] for a [`wg_attach::Request`] and made by
//! wg-netns's [`Birthplace::ensure`] with the UDP socket in the caller's
//! namespace (`socketNamespace: "host"`, the default) or the container's
//! (`"container"`). A failed attach leaves nothing behind.
//!
//! Errors ([`Error`]) are typed, one line each, and never contain key
//! material.

#![deny(missing_docs)]

pub mod config;
mod error;
pub mod hook;
mod record;

use std::path::{Path, PathBuf};

use wg_attach::attach::now;
use wg_attach::plan::{KeyUse, Plan};
use wg_attach::{BirthNames, Request};
use wg_netns::{Backend, Birthplace, IfName, Netns, Userspace};

pub use config::Config;
pub use error::{Error, Result};
pub use record::{valid_container_id, NetnsId, Record, RecordStore};

/// The container's network namespace: its init's PID (`/proc/PID/ns/net`)
/// or a path (a bind mount such as `/run/netns/NAME`, or `/proc/PID/ns/net`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A process in the container (the OCI state's `pid`).
    Pid(u32),
    /// A namespace file.
    Path(PathBuf),
}

impl Target {
    /// The namespace file's path.
    pub fn path(&self) -> PathBuf {
        match self {
            Target::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            Target::Path(p) => p.clone(),
        }
    }
}

impl From<u32> for Target {
    fn from(pid: u32) -> Target {
        Target::Pid(pid)
    }
}

impl From<PathBuf> for Target {
    fn from(p: PathBuf) -> Target {
        Target::Path(p)
    }
}

impl From<&Path> for Target {
    fn from(p: &Path) -> Target {
        Target::Path(p.to_path_buf())
    }
}

/// wg-oci's birth names: `wgo` and a hash of the network name, container
/// id and interface name (15 bytes, unique machine-wide as a userspace
/// control socket's name must be, and derivable again for a teardown
/// without a record).
pub fn birth_names() -> BirthNames {
    BirthNames::new("wgo")
}

/// The interface's birth name ([`birth_names`]).
pub fn birth_name(network: &str, container_id: &str, interface: &IfName) -> IfName {
    birth_names()
        .derive(network, container_id, interface.as_str())
        .unwrap_or_else(|_| unreachable!("a 3-character prefix leaves room for the hash"))
}

fn ns_err(path: &Path) -> impl Fn(wg_netns::Error) -> Error + '_ {
    move |e| Error::Namespace {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Give container `container_id` its WireGuard interface, in the network
/// namespace `target`, born in the caller's namespace or the container's
/// (`socketNamespace`). Creates it, or repairs one a previous attach of the
/// same container left ([`Birthplace::ensure`]). On error nothing is left
/// behind. Keep the returned [`Record`] for [`detach`]: it holds no secret.
///
/// Call it from the runtime's network namespace (the one the UDP socket
/// belongs to with `socketNamespace: "host"`). The container must have a
/// network namespace of its own.
pub fn attach(container_id: &str, target: impl Into<Target>, config: &Config) -> Result<Record> {
    if !valid_container_id(container_id) {
        return Err(Error::ContainerId(container_id.to_string()));
    }
    let path = target.into().path();
    let path_str = path.to_str().ok_or_else(|| Error::Namespace {
        path: path.clone(),
        reason: "not a UTF-8 path".into(),
    })?;
    let conf = config.net_conf();
    let node = Netns::current().map_err(ns_err(Path::new("/proc/thread-self/ns/net")))?;
    let pod = Netns::from_path(&path).map_err(ns_err(&path))?;
    if pod.same_as(&node).map_err(ns_err(&path))? {
        return Err(Error::Namespace {
            path,
            reason: "is the runtime's own network namespace; the container needs one of its own"
                .into(),
        });
    }
    let (dev, ino) = pod.id().map_err(ns_err(&path))?;
    let backend = config.backend()?;
    // Standalone (no prevResult): the interface is the configured one.
    let req = Request::new(
        container_id,
        path_str,
        conf.interface_name.as_str(),
        birth_names(),
    );
    let plan = Plan::new(conf, &req).map_err(Error::config)?;
    let attach_err = |source| Error::Attach {
        container: container_id.to_string(),
        interface: plan.name.to_string(),
        source: Box::new(source),
    };
    let place = Birthplace::for_container(&node, &pod, conf.socket_namespace, &backend)
        .map_err(attach_err)?;
    let spec = plan
        .interface_spec(&place, KeyUse::Add)
        .map_err(Error::config)?;
    let done = place.ensure(&spec).map_err(attach_err)?;
    let userspace = match &backend {
        Backend::Userspace(u) => u.resolve().or_else(|| Some(u.program.clone())),
        Backend::Kernel | Backend::Engine(_) => None,
    };
    Ok(Record {
        container_id: container_id.to_string(),
        attachment: plan.attachment_record(done.attachment.kind, userspace),
        netns_id: NetnsId { dev, ino },
        public_key: done
            .attachment
            .public_key
            .map(|k| k.to_base64().to_string())
            .unwrap_or_default(),
        created: now(),
    })
}

/// Remove what [`attach`] made, from the record alone, whatever is left of
/// the container: its namespace may be gone (then the link went with it,
/// and a userspace daemon born in the runtime's namespace is stopped), or
/// kept alive only by a daemon born inside it (reached through the daemon).
/// Call it from the namespace [`attach`] was called from. Idempotent:
/// returns whether anything was removed.
///
/// The recorded namespace path is only entered when it still names the
/// namespace attach used ([`Record::netns_id`]): a `/proc/PID` path whose
/// PID now belongs to another process is never touched.
pub fn detach(record: &Record) -> Result<bool> {
    let a = &record.attachment;
    let err = |source| Error::Detach {
        interface: a.interface.to_string(),
        birth: a.birth_name.to_string(),
        source: Box::new(source),
    };
    let node = Netns::current().map_err(err)?;
    let mut a = a.clone();
    let same = Netns::from_path(&a.netns)
        .and_then(|ns| ns.id())
        .is_ok_and(|(dev, ino)| NetnsId { dev, ino } == record.netns_id);
    if !same {
        a.netns = PathBuf::new();
    }
    let fallback = config::default_userspace()
        .unwrap_or_else(|| Userspace::new(config::USERSPACE_CANDIDATES[0]));
    a.detach_in(&node, None, &fallback).map_err(err)
}

/// Remove what an attach of `container_id` with `config` would have made,
/// without a record (a crash between attach and saving it): the names are
/// derived again; the container's namespace is not entered.
pub fn detach_unrecorded(container_id: &str, config: &Config) -> Result<bool> {
    let conf = config.net_conf();
    let backend = config.backend()?;
    let req = Request::new(
        container_id,
        "",
        conf.interface_name.as_str(),
        birth_names(),
    );
    let plan = Plan::for_teardown(conf, &req).map_err(Error::config)?;
    let userspace = match &backend {
        Backend::Userspace(u) => Some(u.program.clone()),
        Backend::Kernel | Backend::Engine(_) => None,
    };
    let record = Record {
        container_id: container_id.to_string(),
        attachment: plan.attachment_record(backend.kind(), userspace),
        netns_id: NetnsId { dev: 0, ino: 0 },
        public_key: String::new(),
        created: 0,
    };
    detach(&record)
}
