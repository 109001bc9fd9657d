//! `WireGuardNetwork`: a network of pods' WireGuard interfaces.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use wg_netns::IpNetwork;

use crate::values::{check_each, CidrString, Duration, FieldError, InterfaceName, Mtu};

/// A WireGuard network for pods: where their addresses come from, how
/// their interfaces are set up, and whether they peer with each other.
/// Cluster-scoped; its name (a DNS label) is what pods, peers and
/// attachments refer to.
// `printcolumn(type_ = "string", ..)` twice is two columns, not a
// duplicated attribute (clippy reads the derive's arguments as attributes).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wireguard.wg-netns.io",
    version = "v1alpha1",
    kind = "WireGuardNetwork",
    plural = "wireguardnetworks",
    shortname = "wgnet",
    category = "wireguard",
    status = "WireGuardNetworkStatus",
    derive = "PartialEq",
    doc = "A WireGuard network for pods: address pools, interface settings, mesh.",
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("a network's name must be a DNS label (lower-case letters, digits, '-', at most 63): it is part of address block names"),
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.addressPools[0].cidr", description = "the first address pool (a table cell shows one value)"),
    printcolumn(name = "Mesh", type_ = "boolean", json_path = ".spec.mesh", description = "whether the network's pods peer with each other"),
    printcolumn(name = "MTU", type_ = "string", json_path = ".spec.mtu", description = "the interfaces' MTU"),
    printcolumn(name = "Attachments", type_ = "integer", json_path = ".status.attachments", description = "pod interfaces on this network", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(KILL_SWITCH_FAILS_CLOSED_RULE).message("a network with a killSwitch must have failurePolicy \"fail\": a pod must never start without its kill switch"))]
pub struct WireGuardNetworkSpec {
    /// Networks the pods' addresses are taken from, IPv4 and/or IPv6 (one
    /// address per family and pod). Each node claims blocks of a pool
    /// (WireGuardAddressBlock) and gives its pods addresses from them.
    /// Pools must not overlap. Pools can be added, never removed, and a
    /// pool's blockSize never changes: nodes hold blocks of the pools and
    /// pods addresses of them (to move a network to other pools, create a
    /// new network).
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cidr"]))]
    #[x_kube(validation = Rule::new("self.all(a, self.all(b, a.cidr == b.cidr || !isCIDR(a.cidr) || !isCIDR(b.cidr) || (!cidr(a.cidr).containsCIDR(b.cidr) && !cidr(b.cidr).containsCIDR(a.cidr))))").message("address pools must not overlap"))]
    #[x_kube(validation = Rule::new(POOLS_ADD_ONLY_RULE).message("address pools can be added, not removed: nodes hold blocks and pods addresses of them (create a new network to use other pools)"))]
    pub address_pools: Vec<AddressPool>,

    /// MTU of the pods' WireGuard interfaces: bytes (1280..65535), or
    /// "auto" (the node's link MTU towards the peers minus 80; 1420 when it
    /// cannot be found).
    #[serde(default)]
    pub mtu: Mtu,

    /// Keepalive interval the pods' interfaces use towards each other (mesh
    /// peers): whole seconds as an integer or a duration such as "25s".
    /// Absent or 0: off, which suits nodes that reach each other without NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<Duration>,

    /// Where a pod interface's encrypted UDP socket lives: "host" (the
    /// node's network namespace; the pod sees only clear text and cannot
    /// touch keys or port) or "container" (the pod's own namespace).
    #[serde(default)]
    pub socket_namespace: SocketNamespace,

    /// UDP ports the node agent gives the pods' sockets, an inclusive
    /// range. With socketNamespace "host" every pod interface on a node
    /// needs its own port, so the range bounds the pods per node on this
    /// network; keep it clear of other networks' ranges and node services.
    #[serde(default)]
    pub listen_ports: PortRange,

    /// Whether the network's pods peer with each other (every pod interface
    /// gets every other pod interface of the network as a peer, with its
    /// addresses as allowed IPs).
    #[serde(default = "default_true")]
    pub mesh: bool,

    /// More networks routed through the pods' interface (beyond the
    /// network's own pools and the peers' allowed IPs).
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub routes: Vec<CidrString>,

    /// Name of the WireGuard interface in the pod: 1 to 15 lower-case
    /// letters, digits and '-', ending with a letter or digit (it is also
    /// part of the pod's WireGuardAttachment name).
    #[serde(default)]
    pub interface_name: InterfaceName,

    /// What the CNI plugin does when it cannot reach the node agent during
    /// pod creation: "fail" the pod's network setup (the runtime retries),
    /// or "ignore" (the pod starts without this network's interface).
    #[serde(default)]
    pub failure_policy: FailurePolicy,

    /// Which namespaces' pods may join the network: a label selector on
    /// Namespaces (e.g. `matchLabels: {kubernetes.io/metadata.name: team-a}`).
    /// Absent: every namespace (set it on a cluster shared by tenants). A
    /// pod of another namespace is refused at creation, and an attachment
    /// of another namespace is no mesh member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Where this network's WireGuardPeers may send: networks their
    /// endpoints must lie in. Absent: anywhere. An empty list: nowhere
    /// (peers without an endpoint only, which reach the pods themselves).
    /// A peer's endpoint is where the node sends the pods' encrypted
    /// traffic from the node's own address (socketNamespace "host"), so on
    /// a shared cluster an administrator bounds it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub peer_endpoints: Option<Vec<CidrString>>,

    /// A full tunnel's kill switch for the network's pods: their traffic
    /// leaves only through WireGuard (a WireGuardPeer whose allowedIPs is
    /// 0.0.0.0/0 selecting them) and, through their primary interface, to
    /// these local networks (the cluster's pod and Service CIDRs, node
    /// addresses, the cluster DNS); anything else is refused inside the
    /// pod, also while the tunnel is down or not made yet. Set at the
    /// pod's creation before its interface exists, checked and repaired
    /// by the node agent. Requires failurePolicy "fail".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_switch: Option<KillSwitchSpec>,
}

/// The spec rule: a kill switch only with failurePolicy "fail" (absent
/// means "fail").
const KILL_SWITCH_FAILS_CLOSED_RULE: &str =
    "!has(self.killSwitch) || !has(self.failurePolicy) || self.failurePolicy == 'fail'";

/// A network's kill switch: what stays on the pods' primary interface.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KillSwitchSpec {
    /// Networks that keep going through the pod's primary interface (via
    /// its default route's gateway): the cluster's pod and Service CIDRs,
    /// the nodes' addresses. 1 to 64 CIDRs.
    #[serde(rename = "localCIDRs")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub local_cidrs: Vec<CidrString>,
}

fn default_true() -> bool {
    true
}

/// The transition rule of `addressPools`: every pool of the old spec is
/// in the new one (pools are added, never removed).
const POOLS_ADD_ONLY_RULE: &str = "oldSelf.all(p, self.exists(q, q.cidr == p.cidr))";

/// The transition rule of one pool (the old and new pool of the same
/// `cidr`, the list's key): the block size in effect, given or the
/// family's default, does not change.
const BLOCK_SIZE_IMMUTABLE_RULE: &str = "(has(self.blockSize) ? self.blockSize : (isCIDR(self.cidr) && cidr(self.cidr).ip().family() == 6 ? 122 : 26)) == (has(oldSelf.blockSize) ? oldSelf.blockSize : (isCIDR(oldSelf.cidr) && cidr(oldSelf.cidr).ip().family() == 6 ? 122 : 26))";

/// One address pool of a network.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.blockSize) || !isCIDR(self.cidr) || (self.blockSize >= cidr(self.cidr).prefixLength() && self.blockSize <= (cidr(self.cidr).ip().family() == 4 ? 32 : 128))").message("blockSize must be a prefix length between the pool's own and 32 (IPv4) or 128 (IPv6)"))]
#[x_kube(validation = Rule::new(BLOCK_SIZE_IMMUTABLE_RULE).message("a pool's blockSize cannot change: nodes hold blocks of the old size (add a new pool instead)"))]
pub struct AddressPool {
    /// The pool, a network in canonical CIDR form such as 10.244.0.0/16 or
    /// fd00:10::/64.
    pub cidr: CidrString,

    /// Prefix length of the blocks nodes claim from this pool. Absent: 26
    /// for IPv4 (64 addresses per block), 122 for IPv6. It cannot change
    /// once the pool exists (writing the default out is no change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 128), extend("format" = "int32"))]
    pub block_size: Option<u8>,
}

/// Default block prefix length of IPv4 pools.
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default block prefix length of IPv6 pools.
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

impl AddressPool {
    /// The pool and its block prefix length (the default for its family
    /// when absent), checked as the apiserver checks them.
    pub fn parse(&self) -> Result<(IpNetwork, u8), FieldError> {
        let net = self.cidr.parse().map_err(|e| e.within("cidr"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let size = self.block_size.unwrap_or(if net.is_ipv4() {
            DEFAULT_BLOCK_SIZE_V4
        } else {
            DEFAULT_BLOCK_SIZE_V6
        });
        if size < net.prefix() || size > max {
            return Err(FieldError::new(
                "blockSize",
                format!(
                    "{size} is not between the pool's prefix length {} and {max}",
                    net.prefix()
                ),
            ));
        }
        Ok((net, size))
    }
}

/// Where a pod interface's UDP socket lives (see wg-netns's
/// `SocketNamespace`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SocketNamespace {
    /// The node's network namespace.
    #[default]
    Host,
    /// The pod's network namespace.
    Container,
}

impl From<SocketNamespace> for wg_netns::SocketNamespace {
    fn from(s: SocketNamespace) -> Self {
        match s {
            SocketNamespace::Host => wg_netns::SocketNamespace::Host,
            SocketNamespace::Container => wg_netns::SocketNamespace::Container,
        }
    }
}

impl From<wg_netns::SocketNamespace> for SocketNamespace {
    fn from(s: wg_netns::SocketNamespace) -> Self {
        match s {
            wg_netns::SocketNamespace::Host => SocketNamespace::Host,
            wg_netns::SocketNamespace::Container => SocketNamespace::Container,
        }
    }
}

/// What the CNI plugin does when the node agent cannot be reached.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Fail the pod's network setup; the runtime retries.
    #[default]
    Fail,
    /// Go on without this network's interface.
    Ignore,
}

/// An inclusive range of UDP ports, 1..=65535, `from` <= `to`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[x_kube(validation = Rule::new("self.from <= self.to").message("from must not be greater than to"))]
pub struct PortRange {
    /// The first port.
    #[schemars(range(min = 1, max = 65535), extend("format" = "int32"))]
    pub from: u16,
    /// The last port (inclusive).
    #[schemars(range(min = 1, max = 65535), extend("format" = "int32"))]
    pub to: u16,
}

impl Default for PortRange {
    /// 51820 (WireGuard's usual port) to 52819: 1000 ports.
    fn default() -> Self {
        PortRange {
            from: 51820,
            to: 52819,
        }
    }
}

impl PortRange {
    /// Check as the apiserver does.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.from == 0 {
            return Err(FieldError::new("from", "port 0 is not a port"));
        }
        if self.from > self.to {
            return Err(FieldError::new(
                "",
                format!("from {} is greater than to {}", self.from, self.to),
            ));
        }
        Ok(())
    }

    /// The ports.
    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.from..=self.to
    }

    /// How many ports.
    pub fn len(&self) -> usize {
        self.ports().count()
    }

    /// Whether the range is empty (only when `from` > `to`).
    pub fn is_empty(&self) -> bool {
        self.from > self.to
    }
}

/// What the controller and agents observed of a network.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WireGuardNetworkStatus {
    /// The generation of the spec these counts and conditions are about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Address blocks claimed by nodes from the network's pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub allocated_blocks: Option<i32>,

    /// Pod interfaces on the network (WireGuardAttachment objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub attachments: Option<i32>,

    /// Conditions such as Ready and PoolsExhausted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A network's spec once checked: what the agent works with.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfig {
    /// The pools, each with its block prefix length.
    pub pools: Vec<(IpNetwork, u8)>,
    /// The interfaces' MTU.
    pub mtu: Mtu,
    /// Keepalive between mesh peers, seconds (`None`: off).
    pub persistent_keepalive: Option<u16>,
    /// Where the sockets live.
    pub socket_namespace: wg_netns::SocketNamespace,
    /// The ports for the sockets.
    pub listen_ports: PortRange,
    /// Whether pods peer with each other.
    pub mesh: bool,
    /// Extra routes.
    pub routes: Vec<IpNetwork>,
    /// The interface name in the pod.
    pub interface_name: wg_netns::IfName,
    /// What the plugin does without an agent.
    pub failure_policy: FailurePolicy,
    /// Which namespaces may join (`None`: all).
    pub namespace_selector: Option<LabelSelector>,
    /// Where peers may send (`None`: anywhere).
    pub peer_endpoints: Option<Vec<IpNetwork>>,
    /// The pods' kill switch (`None`: none).
    pub kill_switch: Option<wg_netns::KillSwitch>,
}

impl WireGuardNetworkSpec {
    /// Check everything the apiserver checks, returning typed values.
    /// Errors name the field (`spec.addressPools[1].blockSize: ...`).
    pub fn validate(&self) -> Result<NetworkConfig, FieldError> {
        let spec = |e: FieldError| e.within("spec");
        if self.address_pools.is_empty() || self.address_pools.len() > 16 {
            return Err(spec(FieldError::new(
                "addressPools",
                "must list 1 to 16 pools",
            )));
        }
        let mut pools = Vec::with_capacity(self.address_pools.len());
        for (i, p) in self.address_pools.iter().enumerate() {
            let parsed = p
                .parse()
                .map_err(|e| spec(e.within(&format!("addressPools[{i}]"))))?;
            for (j, (other, _)) in pools.iter().enumerate() {
                let (net, _): &(IpNetwork, u8) = &parsed;
                let other: &IpNetwork = other;
                if overlaps(net, other) {
                    return Err(spec(FieldError::new(
                        format!("addressPools[{i}]"),
                        format!("{net} overlaps addressPools[{j}] {other}"),
                    )));
                }
            }
            pools.push(parsed);
        }
        self.mtu
            .check()
            .map_err(|e| spec(FieldError::from(e).within("mtu")))?;
        self.listen_ports
            .check()
            .map_err(|e| spec(e.within("listenPorts")))?;
        if self.routes.len() > 64 {
            return Err(spec(FieldError::new("routes", "more than 64 routes")));
        }
        check_each("routes", &self.routes, CidrString::check).map_err(spec)?;
        let interface_name = self
            .interface_name
            .parse()
            .map_err(|e| spec(e.within("interfaceName")))?;
        let peer_endpoints = match &self.peer_endpoints {
            None => None,
            Some(list) => {
                if list.len() > 32 {
                    return Err(spec(FieldError::new(
                        "peerEndpoints",
                        "more than 32 networks",
                    )));
                }
                let mut nets = Vec::with_capacity(list.len());
                for (i, c) in list.iter().enumerate() {
                    nets.push(
                        c.parse()
                            .map_err(|e| spec(e.within(&format!("peerEndpoints[{i}]"))))?,
                    );
                }
                Some(nets)
            }
        };
        let kill_switch = match &self.kill_switch {
            None => None,
            Some(k) => {
                if self.failure_policy != FailurePolicy::Fail {
                    return Err(spec(FieldError::new(
                        "killSwitch",
                        "requires failurePolicy \"fail\": a pod must never start without its kill switch",
                    )));
                }
                if k.local_cidrs.is_empty() || k.local_cidrs.len() > 64 {
                    return Err(spec(FieldError::new(
                        "killSwitch.localCIDRs",
                        "must list 1 to 64 networks",
                    )));
                }
                let mut nets = Vec::with_capacity(k.local_cidrs.len());
                for (i, c) in k.local_cidrs.iter().enumerate() {
                    nets.push(
                        c.parse()
                            .map_err(|e| spec(e.within(&format!("killSwitch.localCIDRs[{i}]"))))?,
                    );
                }
                Some(wg_netns::KillSwitch::new(nets))
            }
        };
        Ok(NetworkConfig {
            pools,
            mtu: self.mtu,
            persistent_keepalive: self.persistent_keepalive.and_then(Duration::keepalive),
            socket_namespace: self.socket_namespace.into(),
            listen_ports: self.listen_ports,
            mesh: self.mesh,
            routes: self
                .routes
                .iter()
                .map(|r| r.parse().expect("checked"))
                .collect(),
            interface_name,
            failure_policy: self.failure_policy,
            namespace_selector: self.namespace_selector.clone(),
            peer_endpoints,
            kill_switch,
        })
    }
}

impl WireGuardNetworkSpec {
    /// Check a change from `old` to this spec as the apiserver does (its
    /// transition rules): every old pool is still there, with the block
    /// size in effect unchanged. Each spec is checked on its own by
    /// [`WireGuardNetworkSpec::validate`].
    pub fn check_update(&self, old: &WireGuardNetworkSpec) -> Result<(), FieldError> {
        let spec = |e: FieldError| e.within("spec");
        for (i, was) in old.address_pools.iter().enumerate() {
            let Some((j, now)) = self
                .address_pools
                .iter()
                .enumerate()
                .find(|(_, p)| p.cidr == was.cidr)
            else {
                return Err(spec(FieldError::new(
                    "addressPools",
                    format!(
                        "pool {} (addressPools[{i}] before) was removed: pools can be added, not removed",
                        was.cidr
                    ),
                )));
            };
            let (a, b) = (was.effective_block_size(), now.effective_block_size());
            if a != b {
                return Err(spec(FieldError::new(
                    format!("addressPools[{j}].blockSize"),
                    format!(
                        "pool {}: blockSize cannot change ({a} before, {b} now)",
                        now.cidr
                    ),
                )));
            }
        }
        Ok(())
    }
}

impl AddressPool {
    /// The block size in effect as the transition rule computes it: the
    /// given one, or the family's default (an unparsable CIDR counts as
    /// IPv4, as in the rule).
    fn effective_block_size(&self) -> u8 {
        self.block_size.unwrap_or_else(|| match self.cidr.parse() {
            Ok(n) if n.is_ipv6() => DEFAULT_BLOCK_SIZE_V6,
            _ => DEFAULT_BLOCK_SIZE_V4,
        })
    }
}

/// Whether two networks share an address.
pub(crate) fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({"addressPools": [{"cidr": "10.244.0.0/16"}]})
    }

    #[test]
    fn defaults() {
        let s: WireGuardNetworkSpec = serde_json::from_value(minimal()).unwrap();
        assert_eq!(s.mtu, Mtu::Auto);
        assert_eq!(s.persistent_keepalive, None);
        assert_eq!(s.socket_namespace, SocketNamespace::Host);
        assert_eq!(
            s.listen_ports,
            PortRange {
                from: 51820,
                to: 52819
            }
        );
        assert!(s.mesh);
        assert!(s.routes.is_empty());
        assert_eq!(s.interface_name.as_str(), "wg0");
        assert_eq!(s.failure_policy, FailurePolicy::Fail);
        let c = s.validate().unwrap();
        assert_eq!(c.pools, vec![("10.244.0.0/16".parse().unwrap(), 26)]);
        assert_eq!(c.listen_ports.len(), 1000);
    }

    #[test]
    fn round_trip() {
        let v = serde_json::json!({
            "addressPools": [{"cidr": "10.244.0.0/16", "blockSize": 24}, {"cidr": "fd00:10::/64"}],
            "mtu": 1380,
            "persistentKeepalive": "25s",
            "socketNamespace": "container",
            "listenPorts": {"from": 40000, "to": 40099},
            "mesh": false,
            "routes": ["10.96.0.0/12"],
            "interfaceName": "wgpods",
            "failurePolicy": "ignore",
        });
        let s: WireGuardNetworkSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        let c = s.validate().unwrap();
        assert_eq!(c.pools[1].1, DEFAULT_BLOCK_SIZE_V6);
        assert_eq!(c.persistent_keepalive, Some(25));
        assert_eq!(c.socket_namespace, wg_netns::SocketNamespace::Container);
    }

    #[test]
    fn refusals() {
        let bad = |patch: serde_json::Value, field: &str| {
            let mut v = minimal();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let s: WireGuardNetworkSpec = serde_json::from_value(v).unwrap();
            let e = s.validate().unwrap_err();
            assert!(e.field.starts_with(field), "{e} (expected {field})");
        };
        bad(serde_json::json!({"addressPools": []}), "spec.addressPools");
        bad(
            serde_json::json!({"addressPools": [{"cidr": "10.244.0.1/16"}]}),
            "spec.addressPools[0].cidr",
        );
        bad(
            serde_json::json!({"addressPools": [{"cidr": "10.244.0.0/16", "blockSize": 8}]}),
            "spec.addressPools[0].blockSize",
        );
        bad(
            serde_json::json!({"addressPools": [{"cidr": "10.244.0.0/16", "blockSize": 33}]}),
            "spec.addressPools[0].blockSize",
        );
        bad(
            serde_json::json!({"addressPools": [{"cidr": "10.0.0.0/8"}, {"cidr": "10.244.0.0/16"}]}),
            "spec.addressPools[1]",
        );
        bad(
            serde_json::json!({"listenPorts": {"from": 2, "to": 1}}),
            "spec.listenPorts",
        );
        bad(
            serde_json::json!({"listenPorts": {"from": 0, "to": 1}}),
            "spec.listenPorts.from",
        );
        bad(
            serde_json::json!({"routes": ["10.96.0.1/12"]}),
            "spec.routes[0]",
        );
        bad(
            serde_json::json!({"interfaceName": "a/b"}),
            "spec.interfaceName",
        );
        // Refused by the type itself: never stored either.
        let mut v = minimal();
        v["mtu"] = serde_json::json!(1000);
        assert!(serde_json::from_value::<WireGuardNetworkSpec>(v).is_err());
        let mut v = minimal();
        v["socketNamespace"] = serde_json::json!("node");
        assert!(serde_json::from_value::<WireGuardNetworkSpec>(v).is_err());
    }

    #[test]
    fn updates() {
        let spec = |v: serde_json::Value| -> WireGuardNetworkSpec {
            serde_json::from_value(serde_json::json!({ "addressPools": v })).unwrap()
        };
        let old = spec(
            serde_json::json!([{"cidr": "10.244.0.0/16"}, {"cidr": "fd00::/64", "blockSize": 120}]),
        );
        // Added, reordered, the default written out: accepted.
        for ok in [
            serde_json::json!([{"cidr": "10.244.0.0/16"}, {"cidr": "fd00::/64", "blockSize": 120}, {"cidr": "10.245.0.0/16", "blockSize": 28}]),
            serde_json::json!([{"cidr": "fd00::/64", "blockSize": 120}, {"cidr": "10.244.0.0/16", "blockSize": 26}]),
        ] {
            spec(ok.clone())
                .check_update(&old)
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        // Removed, or a block size changed (also by dropping it): refused.
        for (bad, field) in [
            (
                serde_json::json!([{"cidr": "10.244.0.0/16"}]),
                "spec.addressPools",
            ),
            (
                serde_json::json!([{"cidr": "10.244.0.0/16", "blockSize": 24}, {"cidr": "fd00::/64", "blockSize": 120}]),
                "spec.addressPools[0].blockSize",
            ),
            (
                serde_json::json!([{"cidr": "10.244.0.0/16"}, {"cidr": "fd00::/64"}]),
                "spec.addressPools[1].blockSize",
            ),
        ] {
            let e = spec(bad.clone()).check_update(&old).unwrap_err();
            assert_eq!(e.field, field, "{bad}: {e}");
        }
    }

    #[test]
    fn overlap() {
        let n = |s: &str| s.parse::<IpNetwork>().unwrap();
        assert!(overlaps(&n("10.0.0.0/8"), &n("10.1.0.0/16")));
        assert!(overlaps(&n("10.1.0.0/16"), &n("10.0.0.0/8")));
        assert!(!overlaps(&n("10.0.0.0/16"), &n("10.1.0.0/16")));
        assert!(!overlaps(&n("0.0.0.0/0"), &n("::/0")));
    }
}
