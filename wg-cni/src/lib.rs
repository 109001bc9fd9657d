//! wg-cni: a CNI plugin for WireGuard, a thin adapter over `wg-netns`.
//!
//! `cni` is the protocol (versions, environment, errors, results), `config`
//! the network configuration, `plan` what an ADD creates, `state` the records
//! and locks, `cmd` the verbs. The binary (`main.rs`) reads the environment
//! and stdin, runs one verb, and writes only the CNI answer to stdout.

pub mod cmd;
pub mod cni;
pub mod config;
pub mod log;
pub mod managed;
pub mod plan;
pub mod state;
