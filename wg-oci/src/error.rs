//! Typed errors. Each one's `Display` is a single line that says what was
//! being done and why it failed (the cause included), so the hook can print
//! it as is. None carries key material: configuration errors name the field,
//! never a secret's value, and wg-netns errors hold names and errno values.

use std::path::PathBuf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The OCI state on stdin, or the bundle's `config.json`, could not be
    /// read or decoded.
    #[error("OCI state: {0}")]
    State(String),

    /// A `wg-netns.io/*` annotation could not be used (both given, a config
    /// file that is missing, not root-owned or writable by others, ...).
    #[error("annotation {annotation}: {reason}")]
    Annotation {
        /// The annotation's name.
        annotation: &'static str,
        /// Why.
        reason: String,
    },

    /// The configuration is invalid; the message names the field (and never
    /// a secret's value), as the attachment core's parser (wg-attach) words it.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The container id cannot name a record file.
    #[error("container id {0:?} is not usable (1-1024 characters of A-Z a-z 0-9 _ + . -, not starting with '.')")]
    ContainerId(String),

    /// No WireGuard implementation is available.
    #[error("no WireGuard backend: {0}")]
    NoBackend(String),

    /// The container's network namespace could not be used.
    #[error("container network namespace {path}: {reason}")]
    Namespace {
        /// The namespace path given.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// Creating or configuring the interface failed. Everything the attempt
    /// created has been removed again.
    #[error("attaching {interface} to container {container}: {source}")]
    Attach {
        /// The container id.
        container: String,
        /// The interface's name in the container.
        interface: String,
        /// The cause.
        #[source]
        source: Box<wg_netns::Error>,
    },

    /// Removing the interface (or what is left of it) failed.
    #[error("detaching {interface} (birth name {birth}): {source}")]
    Detach {
        /// The interface's name in the container.
        interface: String,
        /// Its birth name.
        birth: String,
        /// The cause.
        #[source]
        source: Box<wg_netns::Error>,
    },

    /// Reading or writing an attachment record failed.
    #[error("record {path}: {reason}")]
    Record {
        /// The record file (or the state directory).
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// From the core's configuration error: its details name the field.
    pub(crate) fn config(e: wg_attach::Error) -> Error {
        if e.details.is_empty() {
            Error::Config(e.msg)
        } else {
            Error::Config(e.details)
        }
    }
}
