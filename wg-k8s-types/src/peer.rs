//! `WireGuardPeer`: a WireGuard peer outside the network (a gateway, a VPN
//! concentrator, a machine) that pods of a namespace get.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wg_netns::{Endpoint, IpNetwork, PublicKey};

use crate::values::{
    check_each, CidrString, Duration, EndpointString, FieldError, NetworkName, ObjectName,
    PublicKeyString,
};

/// A peer that the pods of this namespace on a network get: its public
/// key, where to reach it, which addresses it may use. A preshared key, if
/// any, is read from a Secret of the same namespace; no key material is
/// ever written in this object.
// `printcolumn(type_ = "string", ..)` twice is two columns, not a
// duplicated attribute (clippy reads the derive's arguments as attributes).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wireguard.wg-netns.io",
    version = "v1alpha1",
    kind = "WireGuardPeer",
    plural = "wireguardpeers",
    namespaced,
    shortname = "wgpeer",
    category = "wireguard",
    status = "WireGuardPeerStatus",
    derive = "PartialEq",
    doc = "A WireGuard peer given to the pods of a namespace on a network.",
    selectable = ".spec.network",
    printcolumn(
        name = "Network",
        type_ = "string",
        json_path = ".spec.network",
        description = "the network"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.endpoint",
        description = "where the peer is reached"
    ),
    printcolumn(
        name = "Allowed IPs",
        type_ = "string",
        json_path = ".spec.allowedIPs",
        description = "addresses the peer may use"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "whether the agents apply it (False: the reason says why)"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Applied, SecretForbidden, SecretNotFound, EndpointNotAllowed"
    ),
    printcolumn(
        name = "Public Key",
        type_ = "string",
        json_path = ".spec.publicKey",
        description = "the peer's public key",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardPeerSpec {
    /// The WireGuardNetwork whose pods get this peer.
    pub network: NetworkName,

    /// The peer's WireGuard public key, base64 (44 characters, as `wg
    /// pubkey` prints it).
    pub public_key: PublicKeyString,

    /// Where to reach the peer: `IPV4:PORT`, `[IPV6]:PORT` or `HOST:PORT`. Host
    /// names are resolved by the node agent. Absent: the peer must
    /// connect first (its endpoint is learnt from its packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointString>,

    /// Networks the peer may send from, and that the pods route to it
    /// (canonical CIDRs; 0.0.0.0/0 and ::/0 make it the pods' default
    /// route).
    #[serde(rename = "allowedIPs", default)]
    #[schemars(length(max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_ips: Vec<CidrString>,

    /// Keepalive interval towards the peer: whole seconds as an integer or
    /// a duration such as "25s". Absent or 0: off. Set it when the pods
    /// are behind NAT and the peer must reach them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<Duration>,

    /// A preshared key for this peer, from a Secret in this namespace
    /// (never inline). The value is the base64 key as `wg genpsk` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key_secret_ref: Option<SecretKeyRef>,

    /// Which of the namespace's pods on the network get this peer. Absent:
    /// all of them; an empty selector ({}) also selects all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// A key of a Secret in the object's own namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: ObjectName,
    /// The key within the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

impl SecretKeyRef {
    /// Check as the apiserver does.
    pub fn check(&self) -> Result<(), FieldError> {
        self.name.check().map_err(|e| e.within("name"))?;
        let k = &self.key;
        if k.is_empty()
            || k.len() > 253
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(FieldError::new(
                "key",
                format!("{k:?} is not a Secret key (letters, digits, '-', '.', '_')"),
            ));
        }
        Ok(())
    }
}

/// What the agents observed of a peer.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardPeerStatus {
    /// The generation of the spec this status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pod interfaces that have this peer configured (not written by the
    /// agents: a count over every node would need every node to write;
    /// the `Ready` condition says whether the peer is applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub applied_to: Option<i32>,

    /// Conditions such as Ready and SecretNotFound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A WireGuardPeer's spec once checked: what the agent works with. Not
/// yet resolved (its endpoint may be a host name, its preshared key is a
/// Secret reference): the agent resolves it into a `wg_netns::PeerConfig`,
/// the one name for a peer as written to a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedPeer {
    /// The network.
    pub network: String,
    /// The peer's key.
    pub public_key: PublicKey,
    /// Where to reach it (not resolved).
    pub endpoint: Option<Endpoint>,
    /// Its allowed IPs.
    pub allowed_ips: Vec<IpNetwork>,
    /// Keepalive seconds (`None`: off).
    pub persistent_keepalive: Option<u16>,
    /// Where the preshared key is.
    pub preshared_key_secret_ref: Option<SecretKeyRef>,
}

impl WireGuardPeerSpec {
    /// Check everything the apiserver checks, returning typed values.
    /// Errors name the field (`spec.allowedIPs[2]: ...`). The pod selector
    /// is left to the caller (label selector semantics).
    pub fn validate(&self) -> Result<CheckedPeer, FieldError> {
        let spec = |e: FieldError| e.within("spec");
        self.network
            .check()
            .map_err(|e| spec(e.within("network")))?;
        let public_key = self
            .public_key
            .parse()
            .map_err(|e| spec(e.within("publicKey")))?;
        let endpoint = self
            .endpoint
            .as_ref()
            .map(EndpointString::parse)
            .transpose()
            .map_err(|e| spec(e.within("endpoint")))?;
        if self.allowed_ips.len() > 256 {
            return Err(spec(FieldError::new("allowedIPs", "more than 256 entries")));
        }
        check_each("allowedIPs", &self.allowed_ips, CidrString::check).map_err(spec)?;
        if let Some(r) = &self.preshared_key_secret_ref {
            r.check()
                .map_err(|e| spec(e.within("presharedKeySecretRef")))?;
        }
        Ok(CheckedPeer {
            network: self.network.as_str().to_string(),
            public_key,
            endpoint,
            allowed_ips: self
                .allowed_ips
                .iter()
                .map(|c| c.parse().expect("checked"))
                .collect(),
            persistent_keepalive: self.persistent_keepalive.and_then(Duration::keepalive),
            preshared_key_secret_ref: self.preshared_key_secret_ref.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    #[test]
    fn round_trip_and_validate() {
        let v = serde_json::json!({
            "network": "pods",
            "publicKey": KEY,
            "endpoint": "[fd00::1]:51820",
            "allowedIPs": ["10.13.13.0/24", "::/0"],
            "persistentKeepalive": "25s",
            "presharedKeySecretRef": {"name": "gw-psk", "key": "psk"},
            "podSelector": {"matchLabels": {"app": "web"}},
        });
        let s: WireGuardPeerSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        let c = s.validate().unwrap();
        assert_eq!(c.public_key.to_base64(), KEY);
        assert_eq!(c.persistent_keepalive, Some(25));
        assert_eq!(c.allowed_ips.len(), 2);
        assert!(c.endpoint.unwrap().address().is_some());
    }

    #[test]
    fn minimal_defaults() {
        let s: WireGuardPeerSpec =
            serde_json::from_value(serde_json::json!({"network": "pods", "publicKey": KEY}))
                .unwrap();
        assert!(s.allowed_ips.is_empty() && s.endpoint.is_none() && s.pod_selector.is_none());
        let c = s.validate().unwrap();
        assert_eq!(c.persistent_keepalive, None);
        // "0" means off too.
        let s: WireGuardPeerSpec = serde_json::from_value(
            serde_json::json!({"network": "pods", "publicKey": KEY, "persistentKeepalive": 0}),
        )
        .unwrap();
        assert_eq!(s.validate().unwrap().persistent_keepalive, None);
    }

    #[test]
    fn refusals() {
        let check = |patch: serde_json::Value| {
            let mut v = serde_json::json!({"network": "pods", "publicKey": KEY});
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let s: WireGuardPeerSpec = serde_json::from_value(v).unwrap();
            s.validate().unwrap_err()
        };
        assert_eq!(
            check(serde_json::json!({"publicKey": "abc"})).field,
            "spec.publicKey"
        );
        assert_eq!(
            check(serde_json::json!({"network": "Pods"})).field,
            "spec.network"
        );
        assert_eq!(
            check(serde_json::json!({"endpoint": "1.2.3.4"})).field,
            "spec.endpoint"
        );
        assert_eq!(
            check(serde_json::json!({"allowedIPs": ["10.0.0.0/8", "10.0.0.1/8"]})).field,
            "spec.allowedIPs[1]"
        );
        assert_eq!(
            check(serde_json::json!({"presharedKeySecretRef": {"name": "s", "key": "a b"}})).field,
            "spec.presharedKeySecretRef.key"
        );
    }

    #[test]
    fn no_inline_preshared_key() {
        // An inline key is not a field: the apiserver prunes it (or refuses
        // it under strict field validation) and this type ignores it.
        let s: WireGuardPeerSpec = serde_json::from_value(serde_json::json!({
            "network": "pods", "publicKey": KEY,
            "presharedKey": "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="
        }))
        .unwrap();
        assert!(!serde_json::to_string(&s).unwrap().contains("FpCy"));
    }
}
