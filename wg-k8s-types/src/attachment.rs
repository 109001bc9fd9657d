//! `WireGuardAttachment`: one pod interface on a network, as its node agent
//! made it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{
    AddressString, EndpointString, FieldError, InterfaceName, NetworkName, ObjectName,
    PublicKeyString,
};

/// One WireGuard interface of one pod, written by the node agent that made
/// it, owned by the Pod (ownerReference) so it goes with it. The spec says
/// which pod, node and interface (it never changes); the status holds what
/// other pods act on: the public key, the addresses, where the socket is
/// reached, and conditions. It changes when those do, never with traffic:
/// every agent watches attachments, so a status rewritten with each
/// handshake or counter would be sent to every node of the cluster. The
/// peers' handshakes and counters are the agent's metrics
/// (`wireguard_peer_*`). The private key never leaves the node.
// `printcolumn(type_ = "string", ..)` twice is two columns, not a
// duplicated attribute (clippy reads the derive's arguments as attributes).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wireguard.wg-netns.io",
    version = "v1alpha1",
    kind = "WireGuardAttachment",
    plural = "wireguardattachments",
    namespaced,
    shortname = "wgatt",
    category = "wireguard",
    status = "WireGuardAttachmentStatus",
    derive = "PartialEq",
    doc = "A pod's WireGuard interface on a network, written by the node agent.",
    selectable = ".spec.nodeName",
    selectable = ".spec.network",
    printcolumn(
        name = "Pod",
        type_ = "string",
        json_path = ".spec.podName",
        description = "the pod"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".spec.nodeName",
        description = "the pod's node"
    ),
    printcolumn(
        name = "Address",
        type_ = "string",
        json_path = ".status.addresses[0]",
        description = "the interface's first address"
    ),
    printcolumn(
        name = "Public Key",
        type_ = "string",
        json_path = ".status.publicKey",
        description = "the interface's public key"
    ),
    printcolumn(
        name = "Network",
        type_ = "string",
        json_path = ".spec.network",
        description = "the network",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("an attachment's spec is immutable: delete and recreate it"))]
pub struct WireGuardAttachmentSpec {
    /// The WireGuardNetwork.
    pub network: NetworkName,

    /// The pod's name (in the attachment's namespace).
    pub pod_name: ObjectName,

    /// The pod's UID: a pod recreated under the same name is another pod.
    #[serde(rename = "podUID")]
    #[schemars(length(min = 1, max = 128))]
    pub pod_uid: String,

    /// The node the pod runs on, whose agent owns this object.
    pub node_name: ObjectName,

    /// The WireGuard interface's name inside the pod.
    pub interface: InterfaceName,
}

impl WireGuardAttachmentSpec {
    /// Check as the apiserver does.
    pub fn check(&self) -> Result<(), FieldError> {
        let spec = |e: FieldError| e.within("spec");
        self.network
            .check()
            .map_err(|e| spec(e.within("network")))?;
        self.pod_name
            .check()
            .map_err(|e| spec(e.within("podName")))?;
        if self.pod_uid.is_empty() || self.pod_uid.len() > 128 {
            return Err(spec(FieldError::new(
                "podUID",
                "must be 1 to 128 characters",
            )));
        }
        self.node_name
            .check()
            .map_err(|e| spec(e.within("nodeName")))?;
        self.interface
            .check()
            .map_err(|e| spec(e.within("interface")))?;
        Ok(())
    }
}

/// What the node agent observed of the interface.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardAttachmentStatus {
    /// The interface's public key (the private key never leaves the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKeyString>,

    /// The interface's addresses, one per family, with prefix lengths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub addresses: Vec<AddressString>,

    /// Where other peers reach this interface: the node's address and the
    /// port of the interface's socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointString>,

    /// Conditions such as Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = serde_json::json!({
            "network": "pods", "podName": "web-0",
            "podUID": "0b7f6e4e-4c4b-4b1e-9d55-3f1c2b1a0e9f",
            "nodeName": "node-1", "interface": "wg0"
        });
        let s: WireGuardAttachmentSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        s.check().unwrap();

        let st = serde_json::json!({
            "publicKey": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
            "addresses": ["10.244.1.5/32", "fd00:10::1:5/128"],
            "endpoint": "192.168.50.11:51821",
        });
        let s: WireGuardAttachmentStatus = serde_json::from_value(st.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), st);
    }
}
