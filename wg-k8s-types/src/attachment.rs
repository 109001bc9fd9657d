//! `WireGuardAttachment`: one pod interface on a network, as its node agent
//! made it.

use std::net::SocketAddr;
use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wg_netns::{PeerStats, PublicKey};

use crate::values::{
    AddressString, EndpointString, FieldError, InterfaceName, NetworkName, ObjectName,
    PublicKeyString,
};

/// One WireGuard interface of one pod, written by the node agent that made
/// it, owned by the Pod (ownerReference) so it goes with it. The spec says
/// which pod, node and interface (it never changes); the status holds what
/// other pods and people need: the public key, the addresses, where the
/// socket is reached, and the peers' handshakes and counters. The private
/// key never leaves the node.
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
        name = "Peers",
        type_ = "integer",
        json_path = ".status.peerCount",
        description = "peers configured"
    ),
    printcolumn(
        name = "Last Handshake",
        type_ = "date",
        json_path = ".status.latestHandshakeTime",
        description = "the most recent handshake with any peer"
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

    /// The interface's peers as the device reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<AttachmentPeerStatus>,

    /// How many peers (the length of peers; for tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub peer_count: Option<i32>,

    /// The most recent handshake with any peer (for tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_handshake_time: Option<Time>,

    /// Conditions such as Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One peer of an interface, as the device reports it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentPeerStatus {
    /// The peer's public key.
    pub public_key: PublicKeyString,

    /// The peer's current address and port (configured or learnt from its
    /// packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub endpoint: Option<String>,

    /// When the last handshake with the peer completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake_time: Option<Time>,

    /// Bytes received from the peer.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub rx_bytes: i64,

    /// Bytes sent to the peer.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub tx_bytes: i64,
}

fn time(t: SystemTime) -> Option<Time> {
    Timestamp::try_from(t).ok().map(Time)
}

impl AttachmentPeerStatus {
    /// A peer as the status writes it (counters saturate at `i64::MAX`, the
    /// apiserver's integer range).
    pub fn new(
        public_key: &PublicKey,
        endpoint: Option<SocketAddr>,
        last_handshake: Option<SystemTime>,
        rx_bytes: u64,
        tx_bytes: u64,
    ) -> Self {
        AttachmentPeerStatus {
            public_key: PublicKeyString::from(public_key),
            endpoint: endpoint.map(|e| e.to_string()),
            last_handshake_time: last_handshake.and_then(time),
            rx_bytes: i64::try_from(rx_bytes).unwrap_or(i64::MAX),
            tx_bytes: i64::try_from(tx_bytes).unwrap_or(i64::MAX),
        }
    }
}

impl From<&PeerStats> for AttachmentPeerStatus {
    /// The device's view of a peer (what `WgDevice::stats` reads).
    fn from(p: &PeerStats) -> Self {
        AttachmentPeerStatus::new(
            &p.public_key,
            p.endpoint,
            p.last_handshake,
            p.rx_bytes,
            p.tx_bytes,
        )
    }
}

impl WireGuardAttachmentStatus {
    /// Set `peers` and the two summary fields the table shows from them, so
    /// they never disagree.
    pub fn set_peers(&mut self, peers: Vec<AttachmentPeerStatus>) {
        self.peer_count = Some(i32::try_from(peers.len()).unwrap_or(i32::MAX));
        self.latest_handshake_time = peers
            .iter()
            .filter_map(|p| p.last_handshake_time.clone())
            .max_by_key(|t| t.0);
        self.peers = peers;
    }
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
            "peers": [{"publicKey": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
                       "endpoint": "192.168.50.12:51820",
                       "lastHandshakeTime": "2026-11-25T10:00:00Z",
                       "rxBytes": 1024, "txBytes": 2048}],
            "peerCount": 1,
            "latestHandshakeTime": "2026-11-25T10:00:00Z",
        });
        let s: WireGuardAttachmentStatus = serde_json::from_value(st.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), st);
    }

    #[test]
    fn from_device_stats() {
        let key = wg_netns::PrivateKey::from_bytes([7; 32]).public_key();
        let p = AttachmentPeerStatus::new(
            &key,
            Some("10.1.2.3:51820".parse().unwrap()),
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_064_800)),
            u64::MAX,
            5,
        );
        assert_eq!(p.endpoint.as_deref(), Some("10.1.2.3:51820"));
        assert_eq!(p.rx_bytes, i64::MAX);
        assert_eq!(p.tx_bytes, 5);
        assert_eq!(
            serde_json::to_value(&p.last_handshake_time).unwrap(),
            serde_json::json!("2025-11-25T10:00:00Z")
        );
        let mut st = WireGuardAttachmentStatus::default();
        let older = AttachmentPeerStatus {
            last_handshake_time: time(SystemTime::UNIX_EPOCH),
            ..p.clone()
        };
        st.set_peers(vec![
            older,
            p.clone(),
            AttachmentPeerStatus {
                last_handshake_time: None,
                ..p.clone()
            },
        ]);
        assert_eq!(st.peer_count, Some(3));
        assert_eq!(st.latest_handshake_time, p.last_handshake_time);
    }
}
