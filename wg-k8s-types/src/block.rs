//! `WireGuardAddressBlock`: a block of a network's pool claimed by a node.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wg_netns::IpNetwork;

use crate::values::{CidrString, FieldError, NetworkName, ObjectName};

/// The CEL rule that ties a block's name to its network and CIDR, so two
/// claims of one block collide on the name.
const NAME_RULE: &str = "self.metadata.name == self.spec.network + '.' + self.spec.cidr.replace('.', '-').replace(':', '-').replace('/', '-')";

/// A block of a network's address pool, claimed by one node for its pods.
/// Claiming is creating: the object's name is derived from the network and
/// the CIDR (see [`WireGuardAddressBlock::name_for`]; the apiserver refuses
/// any other name), so a second claim of the same block fails with
/// AlreadyExists. The spec never changes; releasing a block is deleting it.
/// The claiming node's agent makes its Node object the block's owner
/// ([`WireGuardAddressBlock::owned_by_node`]), so the garbage collector
/// deletes the blocks of a deleted node.
// `printcolumn(type_ = "string", ..)` twice is two columns, not a
// duplicated attribute (clippy reads the derive's arguments as attributes).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wireguard.wg-netns.io",
    version = "v1alpha1",
    kind = "WireGuardAddressBlock",
    plural = "wireguardaddressblocks",
    shortname = "wgblock",
    category = "wireguard",
    status = "WireGuardAddressBlockStatus",
    derive = "PartialEq",
    doc = "A block of a WireGuardNetwork's address pool claimed by a node.",
    validation = Rule::new(NAME_RULE).message("a block's name must be NETWORK.CIDR with '.', ':' and '/' of the CIDR written '-', such as pods.10-244-1-0-26"),
    selectable = ".spec.nodeName",
    selectable = ".spec.network",
    printcolumn(name = "Network", type_ = "string", json_path = ".spec.network", description = "the network"),
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr", description = "the block"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName", description = "the node that claimed it"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a block's spec is immutable: release it by deleting it"))]
pub struct WireGuardAddressBlockSpec {
    /// The WireGuardNetwork whose pool the block is part of.
    pub network: NetworkName,

    /// The block, a network in canonical CIDR form.
    pub cidr: CidrString,

    /// The node that claimed the block.
    pub node_name: ObjectName,
}

/// What the owning node reports about a block (all optional).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardAddressBlockStatus {
    /// Addresses of the block given to pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub allocated: Option<i32>,

    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl WireGuardAddressBlock {
    /// The one name a block of `network` covering `cidr` can have:
    /// `NETWORK.` followed by the canonical CIDR with `.`, `:` and `/`
    /// written `-` (`pods.10-244-1-0-26`, `pods.fd00-10--1-0-122`).
    /// Network names are DNS labels (no dots), so no two (network, block)
    /// pairs share a name.
    pub fn name_for(network: &str, cidr: &IpNetwork) -> String {
        let cidr = CidrString::from(*cidr);
        format!("{network}.{}", cidr.as_str().replace(['.', ':', '/'], "-"))
    }

    /// A claim of `cidr` of `network` by `node`, named as it must be.
    pub fn claim(network: &str, cidr: &IpNetwork, node: &str) -> Self {
        WireGuardAddressBlock::new(
            &Self::name_for(network, cidr),
            WireGuardAddressBlockSpec {
                network: NetworkName::unchecked(network),
                cidr: CidrString::from(*cidr),
                node_name: ObjectName::unchecked(node),
            },
        )
    }

    /// The same claim with the claiming node's Node object (UID
    /// `node_uid`) as its owner: when the Node is deleted, Kubernetes's
    /// garbage collector deletes the block. Neither a controller nor a
    /// blocking owner (`blockOwnerDeletion` would need rights on Nodes).
    pub fn owned_by_node(mut self, node_uid: &str) -> Self {
        self.metadata.owner_references = Some(vec![Self::node_owner(
            self.spec.node_name.as_str(),
            node_uid,
        )]);
        self
    }

    /// The owner reference to Node `node` (UID `node_uid`) a block of that
    /// node carries.
    pub fn node_owner(node: &str, node_uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.into(),
            uid: node_uid.into(),
            controller: None,
            block_owner_deletion: None,
        }
    }

    /// The UID of the Node that owns this block according to its owner
    /// references: the one of kind Node named as `spec.nodeName`. `None`:
    /// no such owner (a block claimed before blocks had owners, or while
    /// the agent could not learn its Node's UID).
    pub fn node_owner_uid(&self) -> Option<&str> {
        self.metadata
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|o| {
                o.api_version == "v1" && o.kind == "Node" && o.name == self.spec.node_name.as_str()
            })
            .map(|o| o.uid.as_str())
    }
}

impl WireGuardAddressBlockSpec {
    /// Check as the apiserver does; the block as a network.
    pub fn validate(&self) -> Result<IpNetwork, FieldError> {
        let spec = |e: FieldError| e.within("spec");
        self.network
            .check()
            .map_err(|e| spec(e.within("network")))?;
        let cidr = self.cidr.parse().map_err(|e| spec(e.within("cidr")))?;
        self.node_name
            .check()
            .map_err(|e| spec(e.within("nodeName")))?;
        Ok(cidr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = |s: &str| s.parse::<IpNetwork>().unwrap();
        assert_eq!(
            WireGuardAddressBlock::name_for("pods", &n("10.244.1.0/26")),
            "pods.10-244-1-0-26"
        );
        assert_eq!(
            WireGuardAddressBlock::name_for("pods", &n("fd00:10::1:0/122")),
            "pods.fd00-10--1-0-122"
        );
        // Host bits never leak into a name.
        assert_eq!(
            WireGuardAddressBlock::name_for("pods", &n("10.244.1.7/26")),
            "pods.10-244-1-0-26"
        );
        let b = WireGuardAddressBlock::claim("pods", &n("10.244.1.0/26"), "node-1");
        assert_eq!(b.metadata.name.as_deref(), Some("pods.10-244-1-0-26"));
        assert_eq!(b.spec.validate().unwrap(), n("10.244.1.0/26"));
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(
            v["spec"],
            serde_json::json!({"network": "pods", "cidr": "10.244.1.0/26", "nodeName": "node-1"})
        );
        assert_eq!(v["apiVersion"], "wireguard.wg-netns.io/v1alpha1");
        assert_eq!(v["kind"], "WireGuardAddressBlock");
        assert!(v["metadata"].get("ownerReferences").is_none());
        assert_eq!(b.node_owner_uid(), None);
    }

    #[test]
    fn owned_by_its_node() {
        let cidr: IpNetwork = "10.244.1.0/26".parse().unwrap();
        let b = WireGuardAddressBlock::claim("pods", &cidr, "node-1").owned_by_node("uid-1");
        assert_eq!(b.node_owner_uid(), Some("uid-1"));
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(
            v["metadata"]["ownerReferences"],
            serde_json::json!([{"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "uid-1"}])
        );
        // Another node's, or another kind's, reference is not the owner.
        let mut other = b.clone();
        other.metadata.owner_references.as_mut().unwrap()[0].name = "node-2".into();
        assert_eq!(other.node_owner_uid(), None);
        let mut other = b.clone();
        other.metadata.owner_references.as_mut().unwrap()[0].kind = "Pod".into();
        assert_eq!(other.node_owner_uid(), None);
    }
}
