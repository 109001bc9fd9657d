//! Kubernetes API types of wg-netns's Kubernetes-managed mode: the custom
//! resources of the API group `wireguard.wg-netns.io`, version `v1alpha1`.
//!
//! | kind | scope | short name | written by |
//! |---|---|---|---|
//! | [`WireGuardNetwork`] | cluster | `wgnet` | the administrator |
//! | [`WireGuardPeer`] | namespace | `wgpeer` | users |
//! | [`WireGuardAttachment`] | namespace | `wgatt` | the node agent, one per pod interface, owned by the Pod |
//! | [`WireGuardAddressBlock`] | cluster | `wgblock` | the node agent, claimed by creating it |
//!
//! All four are in the category `wireguard` (`kubectl get wireguard`).
//!
//! The schemas carry the validation, so the apiserver refuses a bad object
//! when it is written: patterns and bounds in OpenAPI (keys, names, ports,
//! lengths) and CEL rules (`x-kubernetes-validations`: CIDRs, endpoints,
//! durations, MTU, port ranges, overlapping pools, add-only pools and
//! immutable block sizes, immutable specs, block names). The same rules exist in Rust (`validate`/`check`/`parse`
//! methods), returning the wg-netns types ([`wg_netns::PublicKey`],
//! [`wg_netns::IpNetwork`], [`wg_netns::Endpoint`]) so the agent parses each
//! object once. No private or preshared key is a field of any of them: a
//! preshared key is referenced in a Secret.
//!
//! ```
//! use wg_k8s_types::{WireGuardAddressBlock, WireGuardPeerSpec};
//!
//! // What a watcher hands over: strings, checked once into wg-netns types.
//! let spec: WireGuardPeerSpec = serde_json::from_value(serde_json::json!({
//!     "network": "pods",
//!     "publicKey": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
//!     "endpoint": "[fd00::1]:51820",
//!     "allowedIPs": ["10.13.13.0/24"],
//!     "persistentKeepalive": "25s",
//! }))?;
//! let peer = spec.validate()?; // FieldError names the field: spec.endpoint: ...
//! assert_eq!(peer.persistent_keepalive, Some(25));
//! assert_eq!(peer.allowed_ips[0].to_string(), "10.13.13.0/24");
//!
//! // Claiming a block is creating it under the one name it can have.
//! let block = WireGuardAddressBlock::claim("pods", &"10.244.1.0/26".parse()?, "node-1");
//! assert_eq!(block.metadata.name.as_deref(), Some("pods.10-244-1-0-26"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`crds`] gives the CustomResourceDefinitions; the repository's
//! `manifests/base/00-crds.yaml` (applied first by `kubectl apply -f manifests/`)
//! is their YAML, written by `cargo run -p wg-k8s-types --example gen-crds`
//! and checked by a test to be up to date.

#![deny(missing_docs)]

pub mod attachment;
pub mod block;
pub mod conditions;
pub mod network;
pub mod peer;
pub mod values;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use attachment::{WireGuardAttachment, WireGuardAttachmentSpec, WireGuardAttachmentStatus};
pub use block::{WireGuardAddressBlock, WireGuardAddressBlockSpec, WireGuardAddressBlockStatus};
pub use network::{
    AddressPool, FailurePolicy, KillSwitchSpec, NetworkConfig, PortRange, SocketNamespace,
    WireGuardNetwork, WireGuardNetworkSpec, WireGuardNetworkStatus,
};
pub use peer::{CheckedPeer, SecretKeyRef, WireGuardPeer, WireGuardPeerSpec, WireGuardPeerStatus};
pub use values::{
    AddressString, CidrString, Duration, EndpointString, FieldError, InterfaceName, Mtu,
    NetworkName, ObjectName, PublicKeyString,
};

/// The API group.
pub const GROUP: &str = "wireguard.wg-netns.io";
/// The API version.
pub const VERSION: &str = "v1alpha1";
/// `GROUP/VERSION`, an object's `apiVersion`.
pub const API_VERSION: &str = "wireguard.wg-netns.io/v1alpha1";

/// The four CustomResourceDefinitions, in a fixed order (networks, peers,
/// attachments, blocks).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        WireGuardNetwork::crd(),
        WireGuardPeer::crd(),
        WireGuardAttachment::crd(),
        WireGuardAddressBlock::crd(),
    ]
}

/// The pod annotation naming the WireGuardNetwork a pod joins (when the CNI
/// configuration names none): `wireguard.wg-netns.io/network: pods`.
pub const ANNOTATION_NETWORK: &str = "wireguard.wg-netns.io/network";

/// The pod annotation that rotates its interface's key: any new value (a
/// counter, a timestamp) makes the node agent generate a new private key
/// and every peer replace the old public key.
pub const ANNOTATION_ROTATE_KEY: &str = "wireguard.wg-netns.io/rotate-key";

/// The label the node agent puts on the attachments it writes: the node's
/// name (the admission policy checks it against the writer's node).
pub const LABEL_NODE: &str = "wireguard.wg-netns.io/node";
