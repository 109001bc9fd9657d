//! The one error type of the crate.
//!
//! Every variant says *what* failed and *where*: the namespace, the interface,
//! the kernel errno. Nothing here ever carries key material.

use std::io;
use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `wg-netns`.
///
/// [`Error::is_not_found`] lets callers make deletes idempotent:
///
/// ```
/// use wg_netns::{Error, Object};
/// let e = Error::NotFound { what: Object::Link, name: "wg0".into() };
/// assert!(e.is_not_found());
/// ```
///
/// Parse errors of the types the API takes convert into it, so `?` works on
/// them in a function returning [`Result`]:
///
/// ```
/// fn route() -> wg_netns::Result<wg_netns::Route> {
///     Ok(wg_netns::Route::new("10.0.0.0/8".parse()?).via("10.1.0.1".parse()?))
/// }
/// # route().unwrap();
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object (link, address, route, device, namespace) does not exist.
    #[error("{what} {name:?} not found")]
    NotFound {
        /// Which kind of object.
        what: Object,
        /// Its name or a description.
        name: String,
    },

    /// Opening or entering a network namespace failed.
    #[error("network namespace {path}: {op}: {source}")]
    Netns {
        /// Path of the namespace file.
        path: PathBuf,
        /// Operation that failed ("open", "setns", ...).
        op: &'static str,
        /// Underlying OS error.
        #[source]
        source: io::Error,
    },

    /// The thread that ran a closure inside a namespace panicked.
    #[error("the thread running inside network namespace {0} panicked")]
    NetnsThreadPanicked(PathBuf),

    /// The kernel answered a netlink request with an error.
    #[error("netlink {op} on {target}: {source}")]
    Netlink {
        /// Operation ("RTM_NEWLINK", "WG_CMD_SET_DEVICE", ...).
        op: &'static str,
        /// What it was applied to (interface name, address, route).
        target: String,
        /// The errno the kernel returned.
        #[source]
        source: io::Error,
    },

    /// A netlink reply could not be decoded.
    #[error("malformed netlink reply to {op}: {reason}")]
    NetlinkDecode {
        /// Operation whose reply was malformed.
        op: &'static str,
        /// What was wrong.
        reason: String,
    },

    /// The userspace API (UAPI) exchange with a userspace WireGuard failed.
    #[error("userspace WireGuard {device}: {reason}")]
    Uapi {
        /// Device (socket) name.
        device: String,
        /// What went wrong.
        reason: String,
    },

    /// The userspace daemon replied `errno=N`.
    #[error("userspace WireGuard {device} refused the configuration: errno {errno}")]
    UapiErrno {
        /// Device (socket) name.
        device: String,
        /// The errno the daemon returned.
        errno: i32,
    },

    /// Starting a userspace WireGuard implementation failed.
    #[error("starting userspace WireGuard {program} for {device}: {reason}")]
    Spawn {
        /// Program that was started.
        program: String,
        /// Device name.
        device: String,
        /// What went wrong.
        reason: String,
    },

    /// The engine daemon (`wg-engine serve`) refused or failed a request,
    /// or could not be reached or started.
    #[error("wg-engine {op}: {kind}: {reason}")]
    Engine {
        /// What was asked ("create", "delete", "list", "start", ...).
        op: &'static str,
        /// Why, as the daemon classifies it.
        kind: crate::engine::proto::ErrorKind,
        /// For a human.
        reason: String,
    },

    /// No WireGuard backend is available (no kernel module, no userspace program).
    #[error("no WireGuard backend available: {0}")]
    NoBackend(String),

    /// A value given by the caller is invalid.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which field or argument.
        field: &'static str,
        /// Why it is invalid (never contains key material).
        reason: String,
    },

    /// A key could not be parsed or read.
    #[error(transparent)]
    Key(#[from] crate::key::KeyError),

    /// A bug in this crate (a message that could not be built, a broken
    /// invariant), never a problem with the caller's input.
    #[error("internal error in wg-netns: {0}")]
    Internal(String),

    /// Several steps of a teardown failed; each was still attempted.
    #[error("{} teardown steps failed: {}", .0.len(), join(.0))]
    Teardown(Vec<Error>),

    /// An I/O error with context.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
}

fn join(errors: &[Error]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The kinds of object an [`Error::NotFound`] can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Object {
    /// A network interface.
    Link,
    /// A route.
    Route,
    /// An address on an interface.
    Address,
    /// A network namespace.
    Namespace,
    /// A WireGuard device (kernel device or userspace control socket).
    Device,
    /// A peer of a device.
    Peer,
    /// A host name (an endpoint that does not resolve).
    Host,
    /// A file (a key file, a record).
    File,
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Object::Link => "link",
            Object::Route => "route",
            Object::Address => "address",
            Object::Namespace => "network namespace",
            Object::Device => "WireGuard device",
            Object::Peer => "peer",
            Object::Host => "host",
            Object::File => "file",
        })
    }
}

impl From<ipnetwork::IpNetworkError> for Error {
    fn from(e: ipnetwork::IpNetworkError) -> Self {
        Error::invalid("network", e.to_string())
    }
}

impl From<std::net::AddrParseError> for Error {
    fn from(e: std::net::AddrParseError) -> Self {
        Error::invalid("address", e.to_string())
    }
}

impl From<std::num::ParseIntError> for Error {
    fn from(e: std::num::ParseIntError) -> Self {
        Error::invalid("number", e.to_string())
    }
}

impl Error {
    /// Collect the failures of a teardown: `Ok` when there were none, the
    /// one error itself when there was one, [`Error::Teardown`] otherwise.
    pub fn all(mut errors: Vec<Error>) -> Result<()> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Teardown(errors)),
        }
    }

    /// True when the error means "the thing does not exist": a missing link,
    /// namespace, device, address or route (`ENODEV`, `ENOENT`, `ESRCH`,
    /// `EADDRNOTAVAIL` from the kernel count too).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NotFound { .. } => true,
            Error::Netlink { source, .. } | Error::Netns { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc_errno::ENODEV)
                    | Some(libc_errno::ENOENT)
                    | Some(libc_errno::ESRCH)
                    | Some(libc_errno::EADDRNOTAVAIL)
            ),
            Error::UapiErrno { errno, .. } => *errno == libc_errno::ENODEV,
            Error::Teardown(all) => all.iter().all(Error::is_not_found),
            _ => false,
        }
    }

    /// The raw errno behind the error, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. }
            | Error::Netns { source, .. }
            | Error::Io { source, .. } => source.raw_os_error(),
            Error::UapiErrno { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A failed connect to the Unix socket at `path`: [`Error::NotFound`]
    /// (of `what`) when nothing listens there, else the I/O error.
    pub(crate) fn connecting(what: Object, path: &std::path::Path, source: io::Error) -> Self {
        if matches!(
            source.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        ) {
            Error::NotFound {
                what,
                name: path.display().to_string(),
            }
        } else {
            Error::io(format!("connecting to {}", path.display()), source)
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// The few errno values the crate needs, without a libc dependency.
pub(crate) mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EADDRNOTAVAIL: i32 = 99;
}
