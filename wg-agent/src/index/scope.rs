//! The index's side of the scoped watches (`crate::scope`): what one
//! network's attachments and address blocks, or one namespace's peers,
//! bring when their watch lists, and what is forgotten when the node no
//! longer needs them.

use super::*;

/// One scoped watch: what it feeds the index with.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Watched {
    /// The WireGuardAttachments of a network (its mesh members).
    Attachments(String),
    /// The WireGuardAddressBlocks of a network (who may publish which
    /// address in it).
    Blocks(String),
    /// The WireGuardPeers of a namespace.
    Peers(String),
}

impl Index {
    /// The attachments of `network` were (re)listed: replace what is known
    /// of its members.
    pub fn relisted_attachments_in(
        &mut self,
        network: &str,
        all: &[WireGuardAttachment],
    ) -> Vec<Dirty> {
        self.candidates.remove(network);
        for a in all.iter().filter(|a| a.spec.network.as_str() == network) {
            self.attachment(a);
        }
        self.readmit(network);
        // Members refused before and not listed now are forgotten too.
        let known = self.candidates.get(network);
        self.rejected
            .retain(|k, (n, _)| n != network || known.is_some_and(|c| c.contains_key(k)));
        if let Some(m) = self.mesh.get_mut(network) {
            m.retain(|k, _| known.is_some_and(|c| c.contains_key(k)));
            if m.is_empty() {
                self.mesh.remove(network);
            }
        }
        self.listed
            .insert(Watched::Attachments(network.to_string()));
        vec![Dirty::Network(network.to_string())]
    }

    /// The address blocks of `network` were (re)listed.
    pub fn relisted_blocks_in(
        &mut self,
        network: &str,
        all: &[WireGuardAddressBlock],
    ) -> Vec<Dirty> {
        let slot: BTreeMap<String, BlockInfo> = all
            .iter()
            .filter_map(BlockInfo::of)
            .filter(|(n, _)| n == network)
            .map(|(_, b)| (b.name.clone(), b))
            .collect();
        if slot.is_empty() {
            self.blocks.remove(network);
        } else {
            self.blocks.insert(network.to_string(), slot);
        }
        self.readmit(network);
        self.listed.insert(Watched::Blocks(network.to_string()));
        vec![Dirty::Network(network.to_string())]
    }

    /// The peers of `namespace` were (re)listed.
    pub fn relisted_peers_in(&mut self, namespace: &str, all: &[WireGuardPeer]) -> Vec<Dirty> {
        self.peers.retain(|(_, ns), _| ns != namespace);
        for p in all
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace))
        {
            self.peer(p);
        }
        self.listed.insert(Watched::Peers(namespace.to_string()));
        vec![Dirty::Namespace(namespace.to_string())]
    }

    /// The own node's attachments were (re)listed (garbage collection
    /// decides from them).
    pub fn relisted_own_attachments(&mut self, all: &[WireGuardAttachment], node: &str) {
        self.own_attachments = all
            .iter()
            .filter(|a| a.spec.node_name.as_str() == node)
            .map(|a| {
                (
                    ns_name(a.namespace().as_deref(), &a.name_any()),
                    a.spec.pod_uid.clone(),
                )
            })
            .collect();
    }

    /// One of the own node's attachments changed or appeared.
    pub fn own_attachment(&mut self, a: &WireGuardAttachment, node: &str) {
        if a.spec.node_name.as_str() == node {
            self.own_attachments.insert(
                ns_name(a.namespace().as_deref(), &a.name_any()),
                a.spec.pod_uid.clone(),
            );
        }
    }

    /// One of the own node's attachments went.
    pub fn own_attachment_gone(&mut self, a: &WireGuardAttachment) {
        self.own_attachments
            .remove(&ns_name(a.namespace().as_deref(), &a.name_any()));
    }

    /// The node no longer watches `w`: forget what it brought (no
    /// interface of the node uses it any more).
    pub fn forget(&mut self, w: &Watched) -> Vec<Dirty> {
        self.listed.remove(w);
        match w {
            Watched::Attachments(network) => {
                self.candidates.remove(network);
                self.mesh.remove(network);
                self.rejected.retain(|_, (n, _)| n != network);
                vec![Dirty::Network(network.clone())]
            }
            Watched::Blocks(network) => {
                self.blocks.remove(network);
                self.readmit(network)
            }
            Watched::Peers(namespace) => {
                self.peers.retain(|(_, ns), _| ns != namespace);
                vec![Dirty::Namespace(namespace.clone())]
            }
        }
    }

    /// Whether the watches an interface of `network` in `namespace` needs
    /// have listed: its mesh (attachments and blocks) and its namespace's
    /// peers. Until then its peers are not known, and none is removed.
    pub fn scope_listed(&self, network: &str, namespace: &str) -> bool {
        self.listed
            .contains(&Watched::Attachments(network.to_string()))
            && self.listed.contains(&Watched::Blocks(network.to_string()))
            && self.listed.contains(&Watched::Peers(namespace.to_string()))
    }

    /// The (network, namespace) pairs of this node's pods that name an
    /// existing network (their interfaces need those watches once made).
    /// A name no WireGuardNetwork has starts nothing: a pod's annotation
    /// alone cannot make its node watch whatever its author writes.
    pub fn pods_scope(&self) -> BTreeSet<(String, String)> {
        self.pods
            .iter()
            .filter(|(_, p)| !p.host_network)
            .filter_map(|(key, p)| {
                let ns = key.split_once('/')?.0;
                let network = p.network.clone()?;
                self.networks
                    .contains_key(&network)
                    .then(|| (network, ns.to_string()))
            })
            .collect()
    }
}
