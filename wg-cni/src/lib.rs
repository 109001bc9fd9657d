//! wg-cni: a CNI plugin for WireGuard, a thin adapter over `wg-netns`.
//!
//! `cni` is the protocol (versions, environment, errors, results), `config`
//! the network configuration, `plan` what an ADD creates, `state` the records
//! and locks, `cmd` the verbs. The binary (`main.rs`) reads the environment
//! and stdin, runs one verb, and writes only the CNI answer to stdout.
//!
//! Two modes. **Static** (the original wireguard-cni format): the
//! configuration describes the interface and the plugin makes it.
//! **Managed** (`"network": "NAME"` or `"managed": true`): the node agent
//! (wg-agent) makes it from the cluster's WireGuardNetwork resources; the
//! plugin holds no key, address or credential, and forwards each verb over
//! the agent's unix socket with the pod's network namespace as a
//! descriptor. `managed` is that wire protocol, `managed_cmd` the verbs
//! that speak it. See docs/configuration.md, "Managed mode".
//!
//! Stdout is the CNI protocol (one result or error object, written by the
//! binary's `main` alone): nothing in the library may print to it.

#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::dbg_macro)]

pub mod cmd;
pub mod cni;
pub mod config;
pub mod log;
pub mod managed;
pub mod managed_cmd;
pub mod plan;
pub mod state;
