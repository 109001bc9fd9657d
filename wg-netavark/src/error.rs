//! The plugin's errors. Each names what it was doing; none carries key
//! material (wg-cni's and wg-netns's errors never echo secrets, and inline
//! secrets are refused before anything could print them).

use wg_attach::Error as CoreError;

/// Everything that can go wrong in one invocation. netavark shows the
/// message (`{"error": "..."}`) to the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Wrong arguments.
    #[error("usage: {0}")]
    Usage(String),
    /// stdin could not be read.
    #[error("reading stdin: {0}")]
    Stdin(#[source] std::io::Error),
    /// stdin is not the JSON netavark sends.
    #[error("decoding the {what} JSON on stdin: {source}")]
    Decode {
        /// What was expected.
        what: &'static str,
        /// serde's message (positions and types, no values of secrets).
        #[source]
        source: serde_json::Error,
    },
    /// A network or container option is invalid.
    #[error("option {option}: {reason}")]
    Option {
        /// The option's name as the user wrote it (`listen_port`,
        /// `config`, `config.peers[0].endpoint`, ...).
        option: String,
        /// Why.
        reason: String,
    },
    /// The network or container description is unusable.
    #[error("{0}")]
    Input(String),
    /// A step of the attachment core failed (state directory, backend, key file, endpoint).
    #[error("{context}: {}", step_message(msg, details))]
    Step {
        /// What the plugin was doing.
        context: &'static str,
        /// wg-cni's short message.
        msg: String,
        /// wg-cni's details.
        details: String,
    },
    /// A wg-netns operation failed.
    #[error("{context}: {source}")]
    Netns {
        /// What the plugin was doing.
        context: String,
        /// The library's error (names the object and the errno).
        #[source]
        source: wg_netns::Error,
    },
}

/// wg-cni's "invalid FIELD" + "FIELD: why" read as "FIELD: why"; other
/// messages keep both parts.
fn step_message(msg: &str, details: &str) -> String {
    match msg.strip_prefix("invalid ") {
        Some(field) if details.starts_with(field) => details.to_string(),
        _ if details.is_empty() => msg.to_string(),
        _ => format!("{msg}: {details}"),
    }
}

impl Error {
    /// An error of the attachment core, in context.
    pub fn step(context: &'static str) -> impl FnOnce(CoreError) -> Error {
        move |e| Error::Step {
            context,
            msg: e.msg,
            details: e.details,
        }
    }

    /// A wg-netns error, in context.
    pub fn netns(context: impl Into<String>) -> impl FnOnce(wg_netns::Error) -> Error {
        move |source| Error::Netns {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wg_attach::Kind;

    #[test]
    fn step_messages_say_the_field_once() {
        let e = Error::step("preparing the interface")(CoreError::new(
            Kind::Config,
            "invalid privateKeyFile",
            "privateKeyFile: reading /k: No such file",
        ));
        assert_eq!(
            e.to_string(),
            "preparing the interface: privateKeyFile: reading /k: No such file"
        );
        let e = Error::step("choosing the WireGuard backend")(CoreError::new(
            Kind::Unavailable,
            "no WireGuard backend is available",
            "wireguard-go not found",
        ));
        assert_eq!(
            e.to_string(),
            "choosing the WireGuard backend: no WireGuard backend is available: wireguard-go not found"
        );
    }
}
