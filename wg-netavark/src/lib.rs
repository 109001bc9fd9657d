//! wg-netavark: a netavark plugin that gives a container a WireGuard
//! interface, a thin adapter over `wg-netns` and the attachment core
//! (wg-attach: the configuration parser wg-cni reads too, the plan, the
//! records).
//!
//! netavark runs `wg-netavark create|setup NETNS|teardown NETNS|info` with
//! JSON on stdin (`types`); the network's options become a wg-cni
//! configuration (`options`); the verbs (`cmd`) attach with
//! `Birthplace::for_container` + `ensure` and detach from a saved
//! `AttachmentRecord`. See docs/runtimes.md, section "netavark plugin".

#![deny(missing_docs)]

pub mod cmd;
pub mod error;
pub mod options;
pub mod types;

pub use error::Error;
