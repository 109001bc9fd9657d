//! wg-attach: the attachment core every adapter shares.
//!
//! An adapter (the CNI plugin wg-cni, the OCI hook and runtime API wg-oci,
//! the netavark plugin wg-netavark, the node agent wg-agent) turns its
//! runtime's request into a typed [`Request`] and this core's calls:
//!
//! - [`config`]: the network configuration (the original wireguard-cni
//!   format, read by every adapter), parsed, validated, typed;
//! - [`plan`]: the names, the device configuration, the routes, the record
//!   of one attachment, decided before anything is touched;
//! - [`attach`]: make it (wg-netns's `Birthplace::ensure`) and record it;
//! - [`state`]: the records and the locks that keep invocations apart;
//! - [`units`]: the keepalive [`units::Duration`] and the [`units::Mtu`]
//!   both formats (CNI configuration, Kubernetes resources) use;
//! - [`managed`]: the wire protocol between wg-cni and the node agent in
//!   managed mode (both ends link it);
//! - [`Error`]: typed by [`Kind`]; each adapter maps kinds onto its own
//!   protocol in one place (CNI error codes only in wg-cni).
//!
//! Nothing here knows CNI's environment variables, OCI's state or
//! netavark's JSON, and nothing prints to stdout (a CNI plugin's stdout is
//! its protocol).

#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::dbg_macro)]

pub mod attach;
pub mod config;
mod error;
pub mod log;
pub mod managed;
pub mod plan;
mod request;
pub mod state;
pub mod units;

pub use error::{Error, Kind, Result};
pub use request::{BirthNames, Request};
