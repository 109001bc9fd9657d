//! What the agent knows of the cluster: an index of the watched resources,
//! kept by the watch handlers, shaped for the questions the reconciler asks
//! (the peers of one network and namespace, the mesh members of one
//! network) so that handling an event costs what the event touches, not
//! what the cluster holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use wg_k8s_types::{
    NetworkConfig, PeerConfig, WireGuardAttachment, WireGuardNetwork, WireGuardPeer,
    ANNOTATION_NETWORK, ANNOTATION_ROTATE_KEY,
};
use wg_netns::IpNetwork;

use crate::desired::{MeshMember, Selector};

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
    pub config: PeerConfig,
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
            vec![Dirty::Network(name)]
        } else {
            vec![]
        }
    }

    /// A network went.
    pub fn network_gone(&mut self, n: &WireGuardNetwork) -> Vec<Dirty> {
        let name = n.name_any();
        self.networks.remove(&name);
        vec![Dirty::Network(name)]
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
        let mut dirty = self.peer_gone(p);
        if let Ok(config) = p.spec.validate() {
            let network = config.network.clone();
            self.peer_slot(&network, &ns).insert(
                name.clone(),
                PeerEntry {
                    name,
                    selector: p.spec.pod_selector.clone(),
                    config,
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
    /// its status has a key. `node` is this node (its own attachments are
    /// remembered for garbage collection).
    pub fn attachment(&mut self, a: &WireGuardAttachment, node: &str) -> Vec<Dirty> {
        let key = ns_name(a.namespace().as_deref(), &a.name_any());
        let network = a.spec.network.as_str().to_string();
        if a.spec.node_name.as_str() == node {
            self.own_attachments
                .insert(key.clone(), a.spec.pod_uid.clone());
        }
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
        let slot = self.mesh.entry(network.clone()).or_default();
        let changed = match member {
            Some(m) => slot.insert(key, m.clone()).as_ref() != Some(&m),
            None => slot.remove(&key).is_some(),
        };
        if changed {
            vec![Dirty::Network(network)]
        } else {
            vec![]
        }
    }

    /// An attachment went.
    pub fn attachment_gone(&mut self, a: &WireGuardAttachment) -> Vec<Dirty> {
        let key = ns_name(a.namespace().as_deref(), &a.name_any());
        self.own_attachments.remove(&key);
        let network = a.spec.network.as_str().to_string();
        let removed = self
            .mesh
            .get_mut(&network)
            .is_some_and(|m| m.remove(&key).is_some());
        if removed {
            vec![Dirty::Network(network)]
        } else {
            vec![]
        }
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
    pub fn relisted_peers(&mut self, all: &[WireGuardPeer]) -> Vec<Dirty> {
        self.peers.clear();
        for p in all {
            self.peer(p);
        }
        vec![Dirty::All]
    }

    /// See [`Index::relisted_networks`].
    pub fn relisted_attachments(&mut self, all: &[WireGuardAttachment], node: &str) -> Vec<Dirty> {
        self.mesh.clear();
        self.own_attachments.clear();
        for a in all {
            self.attachment(a, node);
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

#[cfg(test)]
mod tests;
