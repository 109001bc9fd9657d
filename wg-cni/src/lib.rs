//! wg-cni: a CNI plugin for WireGuard, a thin adapter over `wg-netns`.
//!
//! `cni` is the protocol (versions, environment, errors, results), `cmd`
//! the verbs, `answer` the results they give. The configuration, the plan
//! of an attachment, its record and the managed-mode wire protocol are the
//! attachment core's (`wg_attach`), shared with wg-oci, wg-netavark and
//! the node agent: this crate turns CNI's environment into a
//! [`wg_attach::Request`] and the core's errors into CNI error codes
//! ([`cni::CniError`]'s `From<wg_attach::Error>`, the one place). The
//! binary (`main.rs`) reads the environment and stdin, runs one verb, and
//! writes only the CNI answer to stdout.
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

pub mod answer;
pub mod cmd;
pub mod cni;
pub mod managed_cmd;

// The core's modules, under the names this crate's verbs use.
use wg_attach::{config, log, managed, plan, state};

use wg_attach::{BirthNames, Request};
use wg_netns::IfName;

/// wg-cni's birth names: `wgc` and a hash of the network, the container id
/// and CNI_IFNAME (deterministic, so DEL and GC find an interface without
/// a record).
pub fn birth_names() -> BirthNames {
    BirthNames::new("wgc")
}

/// The birth name of `network`'s attachment of `container_id` as `ifname`.
pub fn birth_name(network: &str, container_id: &str, ifname: &str) -> IfName {
    birth_names()
        .derive(network, container_id, ifname)
        .unwrap_or_else(|_| unreachable!("\"wgc\" is a valid prefix"))
}

/// The core's request for the CNI environment `env`: its container, netns
/// and CNI_IFNAME, and the pod's identity from CNI_ARGS (`K8S_POD_*`) to
/// record.
pub fn request(env: &cni::Env) -> Request {
    let mut req = Request::new(
        env.container_id.as_str(),
        env.netns.as_str(),
        env.ifname.as_str(),
        birth_names(),
    );
    req.labels = env
        .args
        .iter()
        .filter(|(k, _)| k.starts_with("K8S_POD_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    req
}
