//! What the agent knows of the cluster: an index of the watched resources,
//! kept by the watch handlers, shaped for the questions the reconciler asks
//! (the peers of one network and namespace, the mesh members of one
//! network) so that handling an event costs what the event touches, not
//! what the cluster holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use wg_k8s_types::{
    CheckedPeer, NetworkConfig, WireGuardAddressBlock, WireGuardAttachment, WireGuardNetwork,
    WireGuardPeer, ANNOTATION_NETWORK, ANNOTATION_ROTATE_KEY,
};
use wg_netns::IpNetwork;

use crate::desired::{MeshMember, Selector};
pub use scope::Watched;

/// A pod of this node, as far as the agent cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Its UID.
    pub uid: String,
    /// Its labels (peer selectors match them).
    pub labels: BTreeMap<String, String>,
    /// The network its annotation names.
    pub network: Option<String>,
    /// Its key rotation annotation ("" when absent).
    pub rotation: String,
    /// Whether it is being deleted.
    pub deleting: bool,
    /// Whether it runs in the node's network namespace (no CNI ADD).
    pub host_network: bool,
    /// Its address (`status.podIP`), once the runtime reported it: the
    /// endpoint of an interface whose socket lives in the pod.
    pub ip: Option<std::net::IpAddr>,
}

impl PodInfo {
    /// From the Pod object.
    pub fn of(pod: &Pod) -> Option<PodInfo> {
        let uid = pod.metadata.uid.clone()?;
        let ann = pod.annotations();
        Some(PodInfo {
            uid,
            labels: pod.labels().clone(),
            network: ann.get(ANNOTATION_NETWORK).cloned(),
            rotation: ann.get(ANNOTATION_ROTATE_KEY).cloned().unwrap_or_default(),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            host_network: pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|ip| ip.parse().ok()),
        })
    }
}

/// A WireGuardPeer, checked.
#[derive(Clone, Debug)]
pub struct PeerEntry {
    /// Its name.
    pub name: String,
    /// Which pods get it (`None`: all of the network's pods in the
    /// namespace).
    pub selector: Option<Selector>,
    /// The checked spec.
    pub config: CheckedPeer,
    /// Its status conditions as last seen (the `Ready` every agent that
    /// applies it would write: written only when it says something else).
    pub conditions: Vec<Condition>,
    /// When it was created.
    pub created: Option<Time>,
    /// Its labels and annotations: a change of them alone still dirties
    /// its slot (touching a peer is how a rotated preshared key is read
    /// again at once), a change of its status alone does not.
    pub touched: (BTreeMap<String, String>, BTreeMap<String, String>),
}

/// An address block of some node (its `WireGuardAddressBlock`): the only
/// thing that entitles an attachment of that node to publish an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// The block's object name.
    pub name: String,
    /// Its range.
    pub cidr: IpNetwork,
    /// The node that claimed it.
    pub node: String,
    /// Its creation time (seconds since the epoch; 0 when unknown): of
    /// two blocks covering one address (an overlap the apiserver could not
    /// see), the older one owns it, ties going to the smaller name.
    pub created: i64,
}

impl BlockInfo {
    /// From the object; `None` when its spec does not parse.
    pub fn of(b: &WireGuardAddressBlock) -> Option<(String, BlockInfo)> {
        let cidr = b.spec.validate().ok()?;
        Some((
            b.spec.network.as_str().to_string(),
            BlockInfo {
                name: b.name_any(),
                cidr,
                node: b.spec.node_name.as_str().to_string(),
                created: b
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second())
                    .unwrap_or(0),
            },
        ))
    }

    fn covers(&self, ip: std::net::IpAddr) -> bool {
        self.cidr.is_ipv4() == ip.is_ipv4() && self.cidr.contains(ip)
    }
}

/// Why an attachment is not taken as a mesh member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// One of its addresses is not in an address block of its own node:
    /// in another node's (`owner`), or in none. Taking it would let
    /// whoever wrote the attachment receive that address's traffic.
    AddressNotOwned {
        /// The address.
        address: IpNetwork,
        /// The node whose block holds it, if any.
        owner: Option<String>,
    },
    /// Its namespace is not one the network's `namespaceSelector` selects.
    NamespaceNotAllowed {
        /// The namespace.
        namespace: String,
    },
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::AddressNotOwned {
                address,
                owner: Some(owner),
            } => write!(
                f,
                "address {address} lies in an address block of node {owner}, not of the attachment's node"
            ),
            Rejection::AddressNotOwned {
                address,
                owner: None,
            } => write!(
                f,
                "address {address} lies in no address block of the attachment's node"
            ),
            Rejection::NamespaceNotAllowed { namespace } => write!(
                f,
                "namespace {namespace} is not selected by the network's namespaceSelector"
            ),
        }
    }
}

impl Rejection {
    /// The condition reason that names it.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::AddressNotOwned { .. } => "AddressNotOwned",
            Rejection::NamespaceNotAllowed { .. } => "NamespaceNotAllowed",
        }
    }
}

/// An attachment with a key, before its addresses are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    node: String,
    member: MeshMember,
}

/// A change the reconciler must look at.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dirty {
    /// Everything (a relist, the periodic verify).
    All,
    /// Every interface of a network (its spec or its mesh changed).
    Network(String),
    /// The interfaces of a network in one namespace (a peer changed).
    Peers {
        /// The network.
        network: String,
        /// The namespace.
        namespace: String,
    },
    /// The interfaces of the pods of one namespace (its peers were
    /// listed).
    Namespace(String),
    /// One pod's interfaces (its labels or annotations changed).
    Pod(String),
}

/// The index.
#[derive(Debug, Default)]
pub struct Index {
    /// Networks by name, with their checked spec (`Err`: the reason it
    /// is unusable).
    pub networks: HashMap<String, Result<NetworkConfig, String>>,
    /// Peers by (network, namespace), then name.
    pub peers: HashMap<(String, String), BTreeMap<String, PeerEntry>>,
    /// Mesh members by network, then attachment (`NAMESPACE/NAME`).
    pub mesh: HashMap<String, BTreeMap<String, MeshMember>>,
    /// Pods of this node by `NAMESPACE/NAME`.
    pub pods: HashMap<String, PodInfo>,
    /// Attachment objects of this node: `NAMESPACE/NAME` -> pod UID.
    pub own_attachments: BTreeMap<String, String>,
    /// Address blocks by network, then name.
    pub blocks: HashMap<String, BTreeMap<String, BlockInfo>>,
    /// Attachments with a key by network, then `NAMESPACE/NAME`, before
    /// the ownership check that makes them [`Index::mesh`] members.
    candidates: HashMap<String, BTreeMap<String, Candidate>>,
    /// Attachments refused as mesh members: `NAMESPACE/NAME` -> (network,
    /// why).
    pub rejected: BTreeMap<String, (String, Rejection)>,
    /// Rejections not yet logged.
    unreported: Vec<(String, Rejection)>,
    /// Namespaces' labels (a network's `namespaceSelector` matches them).
    pub namespaces: HashMap<String, BTreeMap<String, String>>,
    /// The scoped watches that have listed (`scope.rs`): until the ones
    /// an interface needs have, the agent does not know its peers.
    listed: BTreeSet<Watched>,
}

fn ns_name(ns: Option<&str>, name: &str) -> String {
    format!("{}/{name}", ns.unwrap_or_default())
}

impl Index {
    /// A network changed or appeared.
    pub fn network(&mut self, n: &WireGuardNetwork) -> Vec<Dirty> {
        let name = n.name_any();
        let cfg = n.spec.validate().map_err(|e| e.to_string());
        let changed = self.networks.get(&name) != Some(&cfg);
        self.networks.insert(name.clone(), cfg);
        if changed {
            // Its namespaceSelector may take members in or out.
            self.readmit(&name);
            vec![Dirty::Network(name)]
        } else {
            vec![]
        }
    }

    /// A network went.
    pub fn network_gone(&mut self, n: &WireGuardNetwork) -> Vec<Dirty> {
        let name = n.name_any();
        self.networks.remove(&name);
        self.readmit(&name);
        vec![Dirty::Network(name)]
    }

    /// Whether pods of `namespace` may be members of `network`: its
    /// `namespaceSelector` selects the namespace's labels (a namespace not
    /// seen yet is not selected); no selector, or a network not known or
    /// unusable: yes (the network itself decides nothing then).
    pub fn namespace_allowed(&self, network: &str, namespace: &str) -> bool {
        match self.networks.get(network) {
            Some(Ok(cfg)) => match &cfg.namespace_selector {
                None => true,
                Some(sel) => self
                    .namespaces
                    .get(namespace)
                    .is_some_and(|labels| crate::desired::selects(Some(sel), labels)),
            },
            _ => true,
        }
    }

    /// A namespace changed or appeared: members of networks that select
    /// namespaces are decided again.
    pub fn namespace(&mut self, ns: &Namespace) -> Vec<Dirty> {
        let name = ns.name_any();
        let labels = ns.labels().clone();
        if self.namespaces.get(&name) == Some(&labels) {
            return vec![];
        }
        self.namespaces.insert(name, labels);
        self.readmit_selective()
    }

    /// A namespace went.
    pub fn namespace_gone(&mut self, ns: &Namespace) -> Vec<Dirty> {
        if self.namespaces.remove(&ns.name_any()).is_none() {
            return vec![];
        }
        self.readmit_selective()
    }

    /// See [`Index::relisted_networks`].
    pub fn relisted_namespaces(&mut self, all: &[Namespace]) -> Vec<Dirty> {
        self.namespaces = all
            .iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect();
        self.readmit_selective();
        vec![Dirty::All]
    }

    /// Re-decide the members of every network with a namespaceSelector.
    fn readmit_selective(&mut self) -> Vec<Dirty> {
        let selective: Vec<String> = self
            .networks
            .iter()
            .filter(|(_, c)| c.as_ref().is_ok_and(|c| c.namespace_selector.is_some()))
            .map(|(n, _)| n.clone())
            .collect();
        selective.iter().flat_map(|n| self.readmit(n)).collect()
    }

    fn peer_slot(&mut self, network: &str, ns: &str) -> &mut BTreeMap<String, PeerEntry> {
        self.peers
            .entry((network.to_string(), ns.to_string()))
            .or_default()
    }

    /// A peer changed or appeared. A peer whose spec is invalid (the
    /// apiserver refuses those; an older schema might not) is dropped.
    pub fn peer(&mut self, p: &WireGuardPeer) -> Vec<Dirty> {
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let conditions = p
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let created = p.metadata.creation_timestamp.clone();
        let touched = (p.labels().clone(), p.annotations().clone());
        let checked = p.spec.validate();
        // Its status alone changed (an agent wrote its Ready condition):
        // nothing any device has changes, and every node with members in
        // the namespace hears it.
        if let Ok(config) = &checked {
            let same = self
                .peers
                .get_mut(&(config.network.clone(), ns.clone()))
                .and_then(|m| m.get_mut(&name))
                .filter(|e| {
                    e.config == *config && e.selector == p.spec.pod_selector && e.touched == touched
                });
            if let Some(e) = same {
                e.conditions = conditions;
                e.created = created;
                return vec![];
            }
        }
        let mut dirty = self.peer_gone(p);
        if let Ok(config) = checked {
            let network = config.network.clone();
            self.peer_slot(&network, &ns).insert(
                name.clone(),
                PeerEntry {
                    name,
                    selector: p.spec.pod_selector.clone(),
                    config,
                    conditions,
                    created,
                    touched,
                },
            );
            dirty.push(Dirty::Peers {
                network,
                namespace: ns,
            });
        }
        dirty
    }

    /// A peer went (also: before a changed peer is re-added, wherever its
    /// old network was).
    pub fn peer_gone(&mut self, p: &WireGuardPeer) -> Vec<Dirty> {
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let mut dirty = Vec::new();
        for ((network, pns), m) in self.peers.iter_mut() {
            if *pns == ns && m.remove(&name).is_some() {
                dirty.push(Dirty::Peers {
                    network: network.clone(),
                    namespace: ns.clone(),
                });
            }
        }
        self.peers.retain(|_, m| !m.is_empty());
        dirty
    }

    /// An attachment (of any node) changed or appeared: a mesh member once
    /// its status has a key and every address it publishes lies in an
    /// address block of its own node (`Index::check`). (This node's own
    /// attachments, for garbage collection, come from their own watch:
    /// [`Index::own_attachment`].)
    pub fn attachment(&mut self, a: &WireGuardAttachment) -> Vec<Dirty> {
        let key = ns_name(a.namespace().as_deref(), &a.name_any());
        let network = a.spec.network.as_str().to_string();
        let member = a.status.as_ref().and_then(|s| {
            let public_key = s.public_key.as_ref()?.parse().ok()?;
            let addresses: Vec<IpNetwork> =
                s.addresses.iter().filter_map(|x| x.parse().ok()).collect();
            let endpoint: Option<SocketAddr> = s
                .endpoint
                .as_ref()
                .and_then(|e| e.parse().ok())
                .and_then(|e: wg_netns::Endpoint| e.address());
            Some(MeshMember {
                pod_uid: a.spec.pod_uid.clone(),
                public_key,
                endpoint,
                addresses,
            })
        });
        let slot = self.candidates.entry(network.clone()).or_default();
        match member {
            Some(member) => {
                slot.insert(
                    key.clone(),
                    Candidate {
                        node: a.spec.node_name.as_str().to_string(),
                        member,
                    },
                );
            }
            None => {
                slot.remove(&key);
            }
        }
        self.admit(&network, &key)
    }

    /// Whether `candidate` (attachment `key`) may be a member of `network`:
    /// its namespace must be one the network admits, and every address it
    /// publishes must lie in an address block of its own node, that block
    /// being the oldest covering the address (an older block of another
    /// node wins an overlap).
    fn check(&self, network: &str, key: &str, candidate: &Candidate) -> Result<(), Rejection> {
        let namespace = key.split_once('/').map(|(ns, _)| ns).unwrap_or_default();
        if !self.namespace_allowed(network, namespace) {
            return Err(Rejection::NamespaceNotAllowed {
                namespace: namespace.to_string(),
            });
        }
        let blocks = self.blocks.get(network);
        for address in &candidate.member.addresses {
            let owner = blocks.and_then(|b| {
                b.values()
                    .filter(|b| b.covers(address.ip()))
                    .min_by(|x, y| (x.created, &x.name).cmp(&(y.created, &y.name)))
            });
            match owner {
                Some(b) if b.node == candidate.node => {}
                other => {
                    return Err(Rejection::AddressNotOwned {
                        address: *address,
                        owner: other.map(|b| b.node.clone()),
                    })
                }
            }
        }
        Ok(())
    }

    /// Re-decide one attachment's membership from its candidate entry.
    fn admit(&mut self, network: &str, key: &str) -> Vec<Dirty> {
        let candidate = self
            .candidates
            .get(network)
            .and_then(|m| m.get(key))
            .cloned();
        let verdict = candidate.map(|c| self.check(network, key, &c).map(|()| c.member));
        let slot = self.mesh.entry(network.to_string()).or_default();
        let changed = match verdict {
            Some(Ok(m)) => {
                self.rejected.remove(key);
                slot.insert(key.to_string(), m.clone()).as_ref() != Some(&m)
            }
            Some(Err(why)) => {
                let entry = (network.to_string(), why.clone());
                if self.rejected.get(key) != Some(&entry) {
                    self.unreported.push((key.to_string(), why));
                }
                self.rejected.insert(key.to_string(), entry);
                slot.remove(key).is_some()
            }
            None => {
                self.rejected.remove(key);
                slot.remove(key).is_some()
            }
        };
        if slot.is_empty() {
            self.mesh.remove(network);
        }
        if changed {
            vec![Dirty::Network(network.to_string())]
        } else {
            vec![]
        }
    }

    /// Re-decide every attachment of a network (its blocks changed).
    fn readmit(&mut self, network: &str) -> Vec<Dirty> {
        let keys: Vec<String> = self
            .candidates
            .get(network)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let mut dirty: Vec<Dirty> = keys.iter().flat_map(|k| self.admit(network, k)).collect();
        dirty.dedup();
        dirty
    }

    /// An attachment went.
    pub fn attachment_gone(&mut self, a: &WireGuardAttachment) -> Vec<Dirty> {
        let key = ns_name(a.namespace().as_deref(), &a.name_any());
        let network = a.spec.network.as_str().to_string();
        if let Some(m) = self.candidates.get_mut(&network) {
            m.remove(&key);
        }
        self.admit(&network, &key)
    }

    /// An address block changed or appeared.
    pub fn block(&mut self, b: &WireGuardAddressBlock) -> Vec<Dirty> {
        let Some((network, info)) = BlockInfo::of(b) else {
            return self.block_gone(b);
        };
        let slot = self.blocks.entry(network.clone()).or_default();
        if slot.get(&info.name) == Some(&info) {
            return vec![];
        }
        slot.insert(info.name.clone(), info);
        self.readmit(&network)
    }

    /// An address block went.
    pub fn block_gone(&mut self, b: &WireGuardAddressBlock) -> Vec<Dirty> {
        let network = b.spec.network.as_str().to_string();
        let name = b.name_any();
        let removed = self
            .blocks
            .get_mut(&network)
            .is_some_and(|m| m.remove(&name).is_some());
        if removed {
            self.readmit(&network)
        } else {
            vec![]
        }
    }

    /// Rejections made since the last call that still stand (each logged
    /// once; one undone in the meantime, e.g. by a block listed after the
    /// attachments at start, is not reported at all).
    pub fn take_new_rejections(&mut self) -> Vec<(String, Rejection)> {
        let mut out: Vec<(String, Rejection)> = Vec::new();
        for (key, why) in std::mem::take(&mut self.unreported) {
            let stands = self.rejected.get(&key).is_some_and(|(_, w)| *w == why);
            if stands && !out.iter().any(|(k, w)| *k == key && *w == why) {
                out.push((key, why));
            }
        }
        out
    }

    /// Attachments refused as mesh members, by network (for the metric).
    pub fn rejected_by_network(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (network, _) in self.rejected.values() {
            *out.entry(network.clone()).or_insert(0) += 1;
        }
        out
    }

    /// A pod of this node changed or appeared.
    pub fn pod(&mut self, p: &Pod) -> Vec<Dirty> {
        let key = ns_name(p.namespace().as_deref(), &p.name_any());
        let Some(info) = PodInfo::of(p) else {
            return vec![];
        };
        let changed = self.pods.get(&key) != Some(&info);
        let uid = info.uid.clone();
        self.pods.insert(key, info);
        if changed {
            vec![Dirty::Pod(uid)]
        } else {
            vec![]
        }
    }

    /// A pod of this node went.
    pub fn pod_gone(&mut self, p: &Pod) -> Vec<Dirty> {
        let key = ns_name(p.namespace().as_deref(), &p.name_any());
        self.pods.remove(&key);
        vec![]
    }

    /// The pod `NAMESPACE/NAME`.
    pub fn pod_info(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.pods.get(&format!("{namespace}/{name}"))
    }

    /// Whether a pod with this UID runs on the node.
    pub fn pod_uid_alive(&self, uid: &str) -> bool {
        self.pods.values().any(|p| p.uid == uid)
    }

    /// The mesh members of a network.
    pub fn mesh_of(&self, network: &str) -> Vec<MeshMember> {
        self.mesh
            .get(network)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A peer's conditions and creation time as the watch last saw them.
    pub fn peer_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<(Vec<Condition>, Option<Time>)> {
        self.peers
            .iter()
            .filter(|((_, ns), _)| ns == namespace)
            .find_map(|(_, m)| m.get(name))
            .map(|e| (e.conditions.clone(), e.created.clone()))
    }

    /// The peers of a network in a namespace.
    pub fn peers_of(&self, network: &str, namespace: &str) -> Vec<PeerEntry> {
        self.peers
            .get(&(network.to_string(), namespace.to_string()))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Replace what is known of one kind after a (re)list.
    pub fn relisted_networks(&mut self, all: &[WireGuardNetwork]) -> Vec<Dirty> {
        self.networks.clear();
        for n in all {
            self.network(n);
        }
        vec![Dirty::All]
    }

    /// See [`Index::relisted_networks`].
    pub fn relisted_pods(&mut self, all: &[Pod]) -> Vec<Dirty> {
        self.pods.clear();
        for p in all {
            self.pod(p);
        }
        vec![Dirty::All]
    }

    /// The names of the known networks.
    pub fn network_names(&self) -> BTreeSet<String> {
        self.networks.keys().cloned().collect()
    }
}

mod scope;
#[cfg(test)]
mod tests;
