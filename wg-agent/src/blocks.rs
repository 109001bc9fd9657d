//! Address blocks through the apiserver: claiming one, listing the node's,
//! giving one back.
//!
//! A block is claimed by creating its `WireGuardAddressBlock`, which can
//! only have one name ([`WireGuardAddressBlock::name_for`]); the apiserver
//! makes creation atomic, so of two nodes claiming one block, one gets
//! `201 Created` and the other `409 AlreadyExists`. No lock, no lease, no
//! read-modify-write: the apiserver is the only arbiter.
//!
//! The apiserver may create an object and the answer still be lost (a
//! timeout, a dropped connection). Since a node tries blocks in a fixed
//! order ([`Pool::candidates`]), its next attempt meets that very block
//! and gets a 409. So after a 409, [`claim`] reads the block, and takes it
//! if it is already this node's; otherwise the block would be claimed by
//! the node and used by no one until the next restart.
//!
//! A block overlapping any existing block of the network (of any size: a
//! pool's block size from before an edit, an earlier network of the same
//! name) counts as taken ([`Taken`]): the caller lists the network's
//! blocks ([`taken`]) before claiming, so no address is in two blocks.
//!
//! Each block is owned by its node's Node object (an owner reference with
//! the Node's UID, which the agent learns from the apiserver's view of its
//! own credentials: [`node_uid`]): when a Node is deleted, Kubernetes's
//! garbage collector deletes its blocks, so a deleted node's blocks do not
//! hold a pool forever. Blocks claimed without one (by an older agent, or
//! while the UID could not be learned) get it later ([`set_owner`]).

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, UserInfo};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use wg_k8s_types::{FieldError, WireGuardAddressBlock};

pub use crate::ipam::Taken;
use crate::ipam::{Pool, PoolError};

/// The user-info extra in which the apiserver names the Node a service
/// account token is bound to (directly, or through the pod it is bound
/// to): what the admission policy checks the agent's writes against.
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// The user-info extra with that Node's UID.
pub const EXTRA_NODE_UID: &str = "authentication.kubernetes.io/node-uid";

/// How many `409 AlreadyExists` answers (blocks claimed by other nodes
/// since the caller's `taken` was listed) one [`claim`] accepts
/// before it gives up and returns `None`. A claim then costs at most 64
/// creates and 64 reads: when that many blocks were taken unseen, the
/// caller's view is stale and a fresh list costs less than walking on.
pub const MAX_CONFLICTS: usize = 64;

/// What went wrong talking to the apiserver about blocks. Names the
/// network, the block (or node) and the HTTP status when there was one.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The pool cannot be cut into blocks as given.
    #[error("network {network}: {source}")]
    InvalidPool {
        /// The network.
        network: String,
        /// What is wrong with the pool.
        #[source]
        source: PoolError,
    },
    /// A request about one block failed.
    #[error("network {network}: {op} block {block} ({name}){}: {source}", status_text(*.code))]
    Api {
        /// "claiming", "reading", "owning" or "releasing".
        op: &'static str,
        /// The network.
        network: String,
        /// The block.
        block: IpNetwork,
        /// The block object's name.
        name: String,
        /// The HTTP status, when the apiserver answered.
        code: Option<u16>,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Listing the node's blocks failed.
    #[error("network {network}: listing the blocks of node {node}{}: {source}", status_text(*.code))]
    List {
        /// The network.
        network: String,
        /// The node.
        node: String,
        /// The HTTP status, when the apiserver answered.
        code: Option<u16>,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Listing a network's blocks failed.
    #[error("network {network}: listing its blocks{}: {source}", status_text(*.code))]
    ListNetwork {
        /// The network.
        network: String,
        /// The HTTP status, when the apiserver answered.
        code: Option<u16>,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Learning the node's UID failed (both the review of the agent's own
    /// credentials and reading the Node).
    #[error("node {node}: cannot learn its UID{}: {source}", status_text(*.code))]
    NodeUid {
        /// The node.
        node: String,
        /// The HTTP status, when the apiserver answered.
        code: Option<u16>,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The block to give back is claimed by another node (or for another
    /// network): it is not this node's to delete.
    #[error("network {network}: block {block} is claimed by node {owner:?} for network {owner_network:?}, not by this node: not releasing it")]
    NotOurs {
        /// The network.
        network: String,
        /// The block.
        block: IpNetwork,
        /// The node that claimed it.
        owner: String,
        /// The network its object names.
        owner_network: String,
    },
}

fn status_text(code: Option<u16>) -> String {
    code.map(|c| format!(" (HTTP {c})")).unwrap_or_default()
}

/// The HTTP status of a client error, when the apiserver answered.
fn code_of(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) if status.code != 0 => Some(status.code),
        _ => None,
    }
}

fn api_error(op: &'static str, network: &str, block: IpNetwork, source: kube::Error) -> BlockError {
    BlockError::Api {
        op,
        network: network.to_string(),
        block,
        name: WireGuardAddressBlock::name_for(network, &block),
        code: code_of(&source),
        source,
    }
}

/// Whether an object claims `block` of `network` for `node`.
fn claims(object: &WireGuardAddressBlock, network: &str, block: IpNetwork, node: &str) -> bool {
    object.spec.node_name.as_str() == node
        && object.spec.network.as_str() == network
        && object.spec.cidr.parse().ok() == Some(block)
}

/// Claim a free block of `pool` (cut into `/block_prefix` blocks) of
/// `network` for `node`, owned by the node's Node object when its UID
/// `node_uid` is known.
///
/// Walks the pool's blocks in the node's order ([`Pool::free_candidates`]),
/// skipping every block that overlaps `taken` (blocks the caller knows are
/// claimed, of any size, its own included: from [`taken`]), and creates
/// each one's object until one is created:
///
/// - `201`: `Some(block)`, now this node's.
/// - `409`: claimed by someone. The block is read: this node's already (an
///   earlier claim whose answer was lost) gives `Some(block)`; otherwise
///   the next candidate. After [`MAX_CONFLICTS`] of those: `None`.
/// - any other failure: `Err`, naming the block and HTTP status. The
///   caller retries later; a claim that succeeded unseen is found again
///   by the 409 rule.
///
/// `None`: no block claimed now, because every block is taken (the pool
/// is exhausted) or too many were taken unseen; the caller refreshes
/// `taken` and retries after a backoff.
///
/// A pool of one block (`block_prefix` the pool's own prefix length)
/// claims exactly that block: how a node claims back a block of its own
/// that vanished while addresses of it are in use.
pub async fn claim(
    api: &Api<WireGuardAddressBlock>,
    network: &str,
    pool: IpNetwork,
    block_prefix: u8,
    node: &str,
    node_uid: Option<&str>,
    taken: &Taken,
) -> Result<Option<IpNetwork>, BlockError> {
    let pool = Pool::new(pool, block_prefix).map_err(|source| BlockError::InvalidPool {
        network: network.to_string(),
        source,
    })?;
    let mut conflicts = 0;
    // Every taken range is skipped in one step and every other candidate
    // costs a create: the walk is bounded even in a pool of 2^64 blocks.
    for block in pool.free_candidates(node, taken) {
        let mut object = WireGuardAddressBlock::claim(network, &block, node);
        if let Some(uid) = node_uid {
            object = object.owned_by_node(uid);
        }
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                tracing::info!(network, %block, node, "claimed address block");
                return Ok(Some(block));
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let name = WireGuardAddressBlock::name_for(network, &block);
                match api.get_opt(&name).await {
                    Ok(Some(existing)) if claims(&existing, network, block, node) => {
                        tracing::info!(network, %block, node, "address block was already this node's");
                        return Ok(Some(block));
                    }
                    // Another node's, or gone again since: next one.
                    Ok(_) => {}
                    Err(e) => return Err(api_error("reading", network, block, e)),
                }
                conflicts += 1;
                if conflicts >= MAX_CONFLICTS {
                    tracing::debug!(network, pool = %pool.net(), conflicts, "giving up claiming after conflicts");
                    return Ok(None);
                }
            }
            Err(e) => return Err(api_error("claiming", network, block, e)),
        }
    }
    Ok(None)
}

/// A block object [`owned`] could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBlock {
    /// The object's name.
    pub name: String,
    /// What is wrong with it.
    pub error: FieldError,
}

/// The blocks of a network claimed by a node, as [`owned`] found them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    /// The blocks.
    pub blocks: Vec<IpNetwork>,
    /// The UID of the Node owning each block (`None`: no owner reference
    /// to the node), as their objects say, and their resource versions.
    pub owners: BTreeMap<IpNetwork, (Option<String>, String)>,
    /// Objects of the node that do not pass validation (skipped, for the
    /// caller to report): a bad spec, or a name that is not the block's
    /// one name (such an object claims nothing: another node can create the
    /// real one).
    pub invalid: Vec<InvalidBlock>,
}

/// A field selector value, escaped as `fields.EscapeValue` does.
fn escape_field_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The blocks of `network` claimed by `node` (after a restart, or to check
/// the node's view). Asks the apiserver for them only, with the field
/// selector `spec.nodeName=NODE,spec.network=NETWORK` (fields the CRD
/// declares selectable), then checks each object: its spec must validate,
/// its name must be the block's one name, and its node and network must
/// be the ones asked for (objects that are not are left out).
pub async fn owned(
    api: &Api<WireGuardAddressBlock>,
    network: &str,
    node: &str,
) -> Result<Owned, BlockError> {
    let selector = format!(
        "spec.nodeName={},spec.network={}",
        escape_field_value(node),
        escape_field_value(network)
    );
    let all = of_node_selected(api, node, &selector, network).await?;
    Ok(all.into_iter().next().map(|(_, o)| o).unwrap_or_default())
}

/// Every block `node` claimed, by network: [`owned`] for all networks at
/// once (one list, `spec.nodeName=NODE`), to find blocks of networks that
/// are gone or changed, blocks without their owner, and blocks that
/// vanished.
pub async fn of_node(
    api: &Api<WireGuardAddressBlock>,
    node: &str,
) -> Result<BTreeMap<String, Owned>, BlockError> {
    let selector = format!("spec.nodeName={}", escape_field_value(node));
    of_node_selected(api, node, &selector, "").await
}

/// The node's blocks the list with `selector` gives, by network; only the
/// network `only` unless it is empty.
async fn of_node_selected(
    api: &Api<WireGuardAddressBlock>,
    node: &str,
    selector: &str,
    only: &str,
) -> Result<BTreeMap<String, Owned>, BlockError> {
    let list = api
        .list(&ListParams::default().fields(selector))
        .await
        .map_err(|source| BlockError::List {
            network: if only.is_empty() { "(all)" } else { only }.to_string(),
            node: node.to_string(),
            code: code_of(&source),
            source,
        })?;
    let mut all: BTreeMap<String, Owned> = BTreeMap::new();
    for object in list.items {
        let name = object.metadata.name.clone().unwrap_or_default();
        let network = object.spec.network.as_str();
        if object.spec.node_name.as_str() != node || (!only.is_empty() && network != only) {
            continue;
        }
        let out = all.entry(network.to_string()).or_default();
        match object.spec.validate() {
            Ok(block) if WireGuardAddressBlock::name_for(network, &block) == name => {
                out.blocks.push(block);
                out.owners.insert(
                    block,
                    (
                        object.node_owner_uid().map(str::to_string),
                        object.metadata.resource_version.clone().unwrap_or_default(),
                    ),
                );
            }
            Ok(block) => {
                let error = FieldError::new(
                    "metadata.name",
                    format!(
                        "{name:?} is not the name of block {block} ({})",
                        WireGuardAddressBlock::name_for(network, &block)
                    ),
                );
                tracing::warn!(network, node, %error, "ignoring a misnamed address block");
                out.invalid.push(InvalidBlock { name, error });
            }
            Err(error) => {
                tracing::warn!(network, node, name, %error, "ignoring an invalid address block");
                out.invalid.push(InvalidBlock { name, error });
            }
        }
    }
    Ok(all)
}

/// Every block of `network` that exists, whoever claimed it, as taken
/// ranges for [`claim`] (one list, `spec.network=NETWORK`). An object whose
/// CIDR does not parse claims nothing and is left out; one that parses but
/// is misnamed still counts (taking less would risk a duplicate address).
pub async fn taken(
    api: &Api<WireGuardAddressBlock>,
    network: &str,
) -> Result<Vec<IpNetwork>, BlockError> {
    let selector = format!("spec.network={}", escape_field_value(network));
    let list = api
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(|source| BlockError::ListNetwork {
            network: network.to_string(),
            code: code_of(&source),
            source,
        })?;
    Ok(list
        .items
        .iter()
        .filter(|o| o.spec.network.as_str() == network)
        .filter_map(|o| o.spec.cidr.parse().ok())
        .collect())
}

/// The UID of Node `node`, the owner of its blocks: from the apiserver's
/// review of the agent's own credentials (a token bound to the node's pod
/// or to the Node carries the Node's name and UID: what the admission
/// policy checks; any identity may review itself), else by reading the
/// Node (which the agent's RBAC does not grant; other credentials may).
/// `Ok(None)`: neither says (blocks are then claimed without an owner and
/// get it later).
pub async fn node_uid(client: &kube::Client, node: &str) -> Result<Option<String>, BlockError> {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = match reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
    {
        Ok(r) => r.status.and_then(|s| s.user_info),
        Err(e) => {
            tracing::debug!(node, error = %e, "cannot review the agent's own credentials");
            None
        }
    };
    if let Some(uid) = review.as_ref().and_then(|u| bound_node_uid(u, node)) {
        return Ok(Some(uid));
    }
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.get_opt(node).await {
        Ok(n) => Ok(n.and_then(|n| n.metadata.uid)),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(None),
        Err(source) => Err(BlockError::NodeUid {
            node: node.to_string(),
            code: code_of(&source),
            source,
        }),
    }
}

/// The UID of the Node the credentials of `user` are bound to, if it is
/// `node`.
fn bound_node_uid(user: &UserInfo, node: &str) -> Option<String> {
    let extra = user.extra.as_ref()?;
    let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
    (first(EXTRA_NODE_NAME)? == node)
        .then(|| first(EXTRA_NODE_UID))
        .flatten()
        .filter(|u| !u.is_empty())
}

/// Make `node`'s Node (UID `node_uid`) the owner of its `block` of
/// `network`: a merge patch of the owner references, with the block's
/// `resource_version` (as listed) as a precondition, so a block changed or
/// claimed again since is left alone (`409`: `Ok(false)`, as is `404`).
/// The patch is checked by the apiserver's admission policy like any
/// write of the node's blocks.
pub async fn set_owner(
    api: &Api<WireGuardAddressBlock>,
    network: &str,
    block: IpNetwork,
    node: &str,
    node_uid: &str,
    resource_version: &str,
) -> Result<bool, BlockError> {
    let name = WireGuardAddressBlock::name_for(network, &block);
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": resource_version,
            "ownerReferences": [WireGuardAddressBlock::node_owner(node, node_uid)],
        }
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(network, %block, node, "made the node the owner of its address block");
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(api_error("owning", network, block, e)),
    }
}

/// Give `block` of `network` back: delete its object, if it is `node`'s.
///
/// The object is read first and deleted only if it claims the block for
/// `node`, with its UID as a precondition: a node never deletes another
/// node's claim, even one made between the read and the delete. Already
/// gone (`404`), or replaced by a new claim since the read (the
/// precondition fails with `409`): released, `Ok`. Claimed by another
/// node: [`BlockError::NotOurs`].
pub async fn release(
    api: &Api<WireGuardAddressBlock>,
    network: &str,
    block: IpNetwork,
    node: &str,
) -> Result<(), BlockError> {
    let name = WireGuardAddressBlock::name_for(network, &block);
    let existing = match api.get_opt(&name).await {
        Ok(Some(existing)) => existing,
        Ok(None) => return Ok(()),
        Err(e) => return Err(api_error("reading", network, block, e)),
    };
    if !claims(&existing, network, block, node) {
        return Err(BlockError::NotOurs {
            network: network.to_string(),
            block,
            owner: existing.spec.node_name.to_string(),
            owner_network: existing.spec.network.to_string(),
        });
    }
    let params = DeleteParams::default().preconditions(Preconditions {
        uid: existing.metadata.uid.clone(),
        resource_version: None,
    });
    match api.delete(&name, &params).await {
        Ok(_) => {
            tracing::info!(network, %block, node, "released address block");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(e) => Err(api_error("releasing", network, block, e)),
    }
}

#[cfg(test)]
mod tests;
