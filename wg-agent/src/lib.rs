//! wg-agent: the node agent of wg-netns's Kubernetes-managed mode.
//!
//! It keeps every pod WireGuard interface on its node equal to what the
//! Kubernetes resources of `wireguard.wg-netns.io` say (wg-k8s-types):
//! per-pod keys generated and kept on the node, addresses from blocks the
//! node claims through the apiserver, the network's mesh and the
//! WireGuardPeers that select the pod as peers, edits applied live as
//! differences. wg-cni in managed mode asks it over a unix socket
//! (`wg_attach::managed`); docs/kubernetes.md tells the whole story.
//!
//! Layers: [`desired`] (pure: what an interface should be), [`index`]
//! (what the watches saw), [`scope`] (what the node needs watched),
//! [`agent`] (the verbs, told with wg-netns
//! calls), [`run`] (the tasks), [`server`] (socket and HTTP), [`ipam`] /
//! [`blocks`] (addresses), [`keys`] and [`local`] (what the node keeps),
//! [`install`] (the CNI installer: the plugin binary and its place in the
//! node's conflist).

#![deny(missing_docs)]

pub mod agent;
pub mod apiserver;
pub mod blocks;
pub mod desired;
pub mod index;
pub mod install;
pub mod ipam;
pub mod keys;
pub mod local;
pub mod metrics;
pub mod run;
pub mod scope;
pub mod server;
pub mod settings;
pub mod showconf;
#[cfg(test)]
mod testutil;

pub use run::Heartbeat;
