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
/// use wg_netns::Error;
/// let e = Error::NotFound { what: "link", name: "wg0".into() };
/// assert!(e.is_not_found());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object (link, address, route, device, namespace) does not exist.
    #[error("{what} {name:?} not found")]
    NotFound {
        /// Kind of object ("link", "namespace", "userspace device", ...).
        what: &'static str,
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

impl Error {
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
