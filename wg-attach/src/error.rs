//! The core's errors: what went wrong ([`Kind`]), a short message and the
//! details, never key material. Each adapter maps a [`Kind`] onto its own
//! protocol in one place (wg-cni onto CNI error codes, wg-oci and
//! wg-netavark onto their one-line messages).

use std::fmt;

/// What kind of failure: the adapter's protocol decides how to report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The configuration is not JSON, not an object, or a part of it has
    /// the wrong JSON type where the format names no field.
    Decode,
    /// The configuration's version is not one this core speaks.
    Version,
    /// A field of the configuration is invalid (named in the message).
    Config,
    /// The request (container id, interface name, namespace) is invalid.
    Request,
    /// Another invocation holds the attachment's lock: try again later.
    Busy,
    /// The container's network namespace cannot be opened.
    ContainerGone,
    /// No WireGuard backend is available on this machine.
    Unavailable,
    /// The system refused (netlink, files, processes).
    Io,
}

/// An error of the attachment core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What kind.
    pub kind: Kind,
    /// A short message (`invalid peers[0].endpoint`).
    pub msg: String,
    /// The details.
    pub details: String,
}

/// The core's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error.
    pub fn new(kind: Kind, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error {
            kind,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// An invalid configuration field: `invalid FIELD`, `FIELD: REASON`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let field = field.into();
        Error::new(
            Kind::Config,
            format!("invalid {field}"),
            format!("{field}: {}", reason.into()),
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.msg, self.details)
    }
}

impl std::error::Error for Error {}

impl From<wg_netns::Error> for Error {
    fn from(e: wg_netns::Error) -> Self {
        use wg_netns::Error as E;
        let kind = match &e {
            E::Invalid { .. } | E::Key(_) => Kind::Config,
            E::NoBackend(_) => Kind::Unavailable,
            E::NotFound {
                what: wg_netns::Object::Namespace,
                ..
            } => Kind::ContainerGone,
            E::NotFound {
                what: wg_netns::Object::Host | wg_netns::Object::File,
                ..
            } => Kind::Config,
            _ => Kind::Io,
        };
        Error::new(kind, "wg-netns", e.to_string())
    }
}
