//! The agent's errors: typed, with the context of the layer that failed,
//! and mapped onto the managed protocol's (CNI's) error codes in one place.

use crate::keys::KeyStoreError;
use crate::local::{Key, RecordError};

/// What went wrong keeping an interface.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The device, a link, an address or a route (wg-netns names which).
    #[error(transparent)]
    Netns(#[from] wg_netns::Error),
    /// The pod's key could not be read or made.
    #[error(transparent)]
    Keys(#[from] KeyStoreError),
    /// The interface's record could not be written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A blocking task did not finish (it panicked or was cancelled).
    #[error("a device task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The interface is not one the agent holds.
    #[error("interface {0} is not known")]
    Unknown(Key),
    /// A record whose pod UID and interface name make no key.
    #[error("pod UID {0:?} and its interface name make no usable key")]
    Unnamed(String),
}

impl AgentError {
    /// The CNI error code a plugin would answer with: 11 (try again later)
    /// for what a retry may fix, 7 for a configuration the kernel refused,
    /// 5 (I/O) otherwise.
    pub fn code(&self) -> u32 {
        match self {
            AgentError::Netns(wg_netns::Error::Invalid { .. }) => super::code::INVALID_CONFIG,
            AgentError::Task(_) | AgentError::Unknown(_) => super::code::TRY_AGAIN,
            AgentError::Unnamed(_) => super::code::INVALID_CONFIG,
            _ => super::code::IO,
        }
    }
}
