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
mod tests {
    use super::*;
    use crate::testutil::{apiserver, status, Log, Seen};
    use http::Method;
    use serde_json::{json, Value};
    use std::collections::BTreeSet;

    const PATH: &str = "/apis/wireguard.wg-netns.io/v1alpha1/wireguardaddressblocks";

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    /// The scripted apiserver of the agent's tests, with the block API on
    /// its client. Returns the Api and the log of requests.
    fn server(
        script: impl FnMut(&Seen) -> (u16, Value) + Send + 'static,
    ) -> (Api<WireGuardAddressBlock>, Log) {
        let (client, log) = apiserver(script);
        (Api::all(client), log)
    }

    /// The requests seen: every call made through `api` has been answered
    /// (and a request is logged before it is answered).
    async fn finish(api: Api<WireGuardAddressBlock>, log: Log) -> Vec<Seen> {
        drop(api);
        log.all()
    }

    fn object(network: &str, block: IpNetwork, node: &str, uid: &str) -> Value {
        let mut v =
            serde_json::to_value(WireGuardAddressBlock::claim(network, &block, node)).unwrap();
        v["metadata"]["uid"] = json!(uid);
        v["metadata"]["resourceVersion"] = json!("1");
        v
    }

    fn claim_body(block: IpNetwork, node: &str) -> Value {
        serde_json::to_value(WireGuardAddressBlock::claim("pods", &block, node)).unwrap()
    }

    fn path_of(block: IpNetwork) -> String {
        format!("{PATH}/{}", WireGuardAddressBlock::name_for("pods", &block))
    }

    const POOL: &str = "10.244.0.0/16";

    fn candidates(node: &str) -> Vec<IpNetwork> {
        Pool::new(n(POOL), 26)
            .unwrap()
            .candidates(node)
            .take(3)
            .collect()
    }

    #[tokio::test]
    async fn conflict_then_created() {
        let c = candidates("node-1");
        let mut posts = 0;
        let (api, task) = server(move |req| match req.method {
            Method::POST => {
                posts += 1;
                if posts == 1 {
                    status(409, "AlreadyExists")
                } else {
                    (201, req.body.clone())
                }
            }
            Method::GET => (200, object("pods", c[0], "node-2", "uid-2")),
            _ => status(405, "MethodNotAllowed"),
        });
        let c = candidates("node-1");
        let got = claim(&api, "pods", n(POOL), 26, "node-1", None, &Taken::default())
            .await
            .unwrap();
        assert_eq!(got, Some(c[1]));
        let log = finish(api, task).await;
        assert_eq!(log.len(), 3, "{log:?}");
        assert_eq!(
            (&log[0].method, log[0].path.as_str()),
            (&Method::POST, PATH)
        );
        assert_eq!(log[0].body, claim_body(c[0], "node-1"));
        assert_eq!(log[1].method, Method::GET);
        assert_eq!(log[1].path, path_of(c[0]));
        assert_eq!(
            (&log[2].method, log[2].path.as_str()),
            (&Method::POST, PATH)
        );
        assert_eq!(log[2].body, claim_body(c[1], "node-1"));
        assert_eq!(log[2].body["spec"]["nodeName"], "node-1");
        assert_eq!(log[2].body["spec"]["network"], "pods");
    }

    #[tokio::test]
    async fn known_taken_blocks_are_not_tried() {
        let c = candidates("node-1");
        let (api, task) = server(|req| (201, req.body.clone()));
        let taken = Taken::new(&[c[0], c[1]]);
        let got = claim(&api, "pods", n(POOL), 26, "node-1", None, &taken)
            .await
            .unwrap();
        assert_eq!(got, Some(c[2]));
        let log = finish(api, task).await;
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].body, claim_body(c[2], "node-1"));
    }

    #[tokio::test]
    async fn a_lost_answer_is_recovered_by_reading_the_block() {
        // The create succeeded earlier but its answer was lost: the
        // retry's 409 is this node's own block.
        let c = candidates("node-1");
        let first = c[0];
        let (api, task) = server(move |req| match req.method {
            Method::POST => status(409, "AlreadyExists"),
            _ => (200, object("pods", first, "node-1", "uid-1")),
        });
        let got = claim(&api, "pods", n(POOL), 26, "node-1", None, &Taken::default())
            .await
            .unwrap();
        assert_eq!(got, Some(c[0]));
        assert_eq!(finish(api, task).await.len(), 2);
    }

    #[tokio::test]
    async fn a_block_gone_after_its_conflict_is_skipped() {
        let c = candidates("node-1");
        let mut posts = 0;
        let (api, task) = server(move |req| match req.method {
            Method::POST => {
                posts += 1;
                if posts == 1 {
                    status(409, "AlreadyExists")
                } else {
                    (201, req.body.clone())
                }
            }
            _ => status(404, "NotFound"),
        });
        let got = claim(&api, "pods", n(POOL), 26, "node-1", None, &Taken::default())
            .await
            .unwrap();
        assert_eq!(got, Some(c[1]));
        finish(api, task).await;
    }

    #[tokio::test]
    async fn server_errors_name_the_block() {
        let c = candidates("node-1");
        let (api, task) = server(|_| status(500, "InternalError"));
        let e = claim(&api, "pods", n(POOL), 26, "node-1", None, &Taken::default())
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(
                e,
                BlockError::Api {
                    code: Some(500),
                    ..
                }
            ),
            "{e:?}"
        );
        for part in [
            "network pods",
            "claiming",
            &c[0].to_string(),
            &WireGuardAddressBlock::name_for("pods", &c[0]),
            "HTTP 500",
        ] {
            assert!(text.contains(part), "{text:?} lacks {part:?}");
        }
        assert_eq!(finish(api, task).await.len(), 1);

        // A failed read after a conflict is an error too.
        let (api, task) = server(|req| match req.method {
            Method::POST => status(409, "AlreadyExists"),
            _ => status(503, "ServiceUnavailable"),
        });
        let e = claim(&api, "pods", n(POOL), 26, "node-1", None, &Taken::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("reading block"), "{e}");
        assert!(e.to_string().contains("HTTP 503"), "{e}");
        finish(api, task).await;
    }

    #[tokio::test]
    async fn conflicts_are_bounded() {
        let (api, task) = server(|req| match req.method {
            Method::POST => status(409, "AlreadyExists"),
            _ => (200, object("pods", n("10.244.0.0/26"), "node-2", "uid-2")),
        });
        let got = claim(&api, "pods", n(POOL), 26, "node-1", None, &Taken::default())
            .await
            .unwrap();
        assert_eq!(got, None);
        let log = finish(api, task).await;
        let posts = log.iter().filter(|s| s.method == Method::POST).count();
        assert_eq!(posts, MAX_CONFLICTS);
        // Every one a different block.
        let bodies: BTreeSet<String> = log
            .iter()
            .filter(|s| s.method == Method::POST)
            .map(|s| s.body["spec"]["cidr"].to_string())
            .collect();
        assert_eq!(bodies.len(), MAX_CONFLICTS);
    }

    #[tokio::test]
    async fn an_exhausted_pool_gives_none() {
        // 4 blocks, all taken by others.
        let (api, task) = server(|req| match req.method {
            Method::POST => status(409, "AlreadyExists"),
            _ => (200, object("pods", n("10.244.0.0/26"), "node-2", "uid-2")),
        });
        let got = claim(
            &api,
            "pods",
            n("10.244.0.0/24"),
            26,
            "node-1",
            None,
            &Taken::default(),
        )
        .await
        .unwrap();
        assert_eq!(got, None);
        let log = finish(api, task).await;
        assert_eq!(log.iter().filter(|s| s.method == Method::POST).count(), 4);

        // All known taken: no request at all.
        let (api, task) = server(|_| status(500, "InternalError"));
        let all: Vec<IpNetwork> = Pool::new(n("10.244.0.0/24"), 26)
            .unwrap()
            .candidates("x")
            .collect();
        let got = claim(
            &api,
            "pods",
            n("10.244.0.0/24"),
            26,
            "node-1",
            None,
            &Taken::new(&all),
        )
        .await
        .unwrap();
        assert_eq!(got, None);
        assert!(finish(api, task).await.is_empty());
    }

    #[tokio::test]
    async fn a_bad_pool_is_refused_before_any_request() {
        let (api, task) = server(|_| status(500, "InternalError"));
        let e = claim(&api, "pods", n(POOL), 8, "node-1", None, &Taken::default())
            .await
            .unwrap_err();
        assert!(matches!(e, BlockError::InvalidPool { .. }));
        assert!(e.to_string().contains("network pods"), "{e}");
        assert!(finish(api, task).await.is_empty());
    }

    #[tokio::test]
    async fn release_deletes_only_this_nodes_claim() {
        let block = n("10.244.1.0/26");
        // Gone already: one read, success.
        let (api, task) = server(|_| status(404, "NotFound"));
        release(&api, "pods", block, "node-1").await.unwrap();
        let log = finish(api, task).await;
        assert_eq!(log.len(), 1);
        assert_eq!(
            (&log[0].method, log[0].path.clone()),
            (&Method::GET, path_of(block))
        );

        // Ours: deleted with the UID as a precondition.
        let (api, task) = server(move |req| match req.method {
            Method::GET => (200, object("pods", block, "node-1", "uid-1")),
            _ => (200, object("pods", block, "node-1", "uid-1")),
        });
        release(&api, "pods", block, "node-1").await.unwrap();
        let log = finish(api, task).await;
        assert_eq!(log.len(), 2);
        assert_eq!(
            (&log[1].method, log[1].path.clone()),
            (&Method::DELETE, path_of(block))
        );
        assert_eq!(log[1].body["preconditions"]["uid"], "uid-1");

        // Deleted between the read and the delete (404), or re-created by
        // someone else (409 from the precondition): released.
        for code in [404, 409] {
            let (api, task) = server(move |req| match req.method {
                Method::GET => (200, object("pods", block, "node-1", "uid-1")),
                _ => status(code, if code == 404 { "NotFound" } else { "Conflict" }),
            });
            release(&api, "pods", block, "node-1").await.unwrap();
            assert_eq!(finish(api, task).await.len(), 2);
        }

        // Another node's: refused, nothing deleted.
        let (api, task) = server(move |_| (200, object("pods", block, "node-2", "uid-2")));
        let e = release(&api, "pods", block, "node-1").await.unwrap_err();
        assert!(matches!(e, BlockError::NotOurs { ref owner, .. } if owner == "node-2"));
        assert!(e.to_string().contains("10.244.1.0/26"), "{e}");
        let log = finish(api, task).await;
        assert!(log.iter().all(|s| s.method == Method::GET));

        // A failing delete names the block.
        let (api, task) = server(move |req| match req.method {
            Method::GET => (200, object("pods", block, "node-1", "uid-1")),
            _ => status(500, "InternalError"),
        });
        let e = release(&api, "pods", block, "node-1").await.unwrap_err();
        assert!(
            e.to_string().contains("releasing block 10.244.1.0/26"),
            "{e}"
        );
        finish(api, task).await;
    }

    #[tokio::test]
    async fn owned_selects_by_field_and_checks_each_object() {
        let (api, task) = server(|_| {
            let mut misnamed = object("pods", n("10.244.3.0/26"), "node-1", "u3");
            misnamed["metadata"]["name"] = json!("pods.other");
            let mut bad = object("pods", n("10.244.2.0/26"), "node-1", "u2");
            bad["spec"]["cidr"] = json!("10.244.2.1/26");
            (
                200,
                json!({
                    "apiVersion": "wireguard.wg-netns.io/v1alpha1",
                    "kind": "WireGuardAddressBlockList",
                    "metadata": {"resourceVersion": "7"},
                    "items": [
                        object("pods", n("10.244.1.0/26"), "node-1", "u1"),
                        bad,
                        misnamed,
                        // Not asked for: left out.
                        object("pods", n("10.244.4.0/26"), "node-2", "u4"),
                        object("other", n("10.244.5.0/26"), "node-1", "u5"),
                        object("pods", n("fd00::40/122"), "node-1", "u6"),
                    ],
                }),
            )
        });
        let got = owned(&api, "pods", "node-1").await.unwrap();
        assert_eq!(got.blocks, vec![n("10.244.1.0/26"), n("fd00::40/122")]);
        assert_eq!(got.invalid.len(), 2, "{:?}", got.invalid);
        assert_eq!(got.invalid[0].name, "pods.10-244-2-0-26");
        assert_eq!(got.invalid[0].error.field, "spec.cidr");
        assert_eq!(got.invalid[1].name, "pods.other");
        assert_eq!(got.invalid[1].error.field, "metadata.name");
        let log = finish(api, task).await;
        assert_eq!(log.len(), 1);
        assert_eq!((&log[0].method, log[0].path.as_str()), (&Method::GET, PATH));
        assert_eq!(
            log[0].query,
            "&fieldSelector=spec.nodeName%3Dnode-1%2Cspec.network%3Dpods"
        );
    }

    #[tokio::test]
    async fn owned_reports_a_failed_list() {
        let (api, task) = server(|_| status(400, "BadRequest"));
        let e = owned(&api, "pods", "node-1").await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("node-1") && text.contains("pods") && text.contains("HTTP 400"),
            "{text}"
        );
        finish(api, task).await;
    }

    #[tokio::test]
    async fn claims_are_owned_by_the_node() {
        let c = candidates("node-1");
        let (api, task) = server(|req| (201, req.body.clone()));
        let got = claim(
            &api,
            "pods",
            n(POOL),
            26,
            "node-1",
            Some("uid-n1"),
            &Taken::default(),
        )
        .await
        .unwrap();
        assert_eq!(got, Some(c[0]));
        let log = finish(api, task).await;
        assert_eq!(
            log[0].body["metadata"]["ownerReferences"],
            json!([{"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "uid-n1"}])
        );
    }

    #[tokio::test]
    async fn blocks_of_another_size_are_taken() {
        // Another node holds a /24 (the pool's blocks were /24 once) that
        // covers this node's first /26 candidates: none of them is tried.
        let c = candidates("node-1");
        let old = IpNetwork::new(c[0].network(), 24).unwrap();
        let old = IpNetwork::new(old.network(), 24).unwrap();
        let (api, task) = server(|req| (201, req.body.clone()));
        let got = claim(
            &api,
            "pods",
            n(POOL),
            26,
            "node-1",
            None,
            &Taken::new(&[old]),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(!old.contains(got.network()), "{got} is inside {old}");
        let log = finish(api, task).await;
        assert_eq!(log.len(), 1, "{log:?}");
    }

    #[tokio::test]
    async fn taken_lists_every_block_of_the_network() {
        let (api, task) = server(|_| {
            let mut bad = object("pods", n("10.244.2.0/26"), "node-2", "u2");
            bad["spec"]["cidr"] = json!("nonsense");
            (
                200,
                json!({
                    "apiVersion": "wireguard.wg-netns.io/v1alpha1",
                    "kind": "WireGuardAddressBlockList",
                    "metadata": {"resourceVersion": "7"},
                    "items": [
                        object("pods", n("10.244.1.0/26"), "node-1", "u1"),
                        object("pods", n("10.244.4.0/24"), "node-2", "u4"),
                        bad,
                        object("other", n("10.244.5.0/26"), "node-1", "u5"),
                    ],
                }),
            )
        });
        let got = taken(&api, "pods").await.unwrap();
        assert_eq!(got, vec![n("10.244.1.0/26"), n("10.244.4.0/24")]);
        let log = finish(api, task).await;
        assert_eq!(log[0].query, "&fieldSelector=spec.network%3Dpods");
        let (api, task) = server(|_| status(503, "ServiceUnavailable"));
        let e = taken(&api, "pods").await.unwrap_err();
        assert!(
            e.to_string().contains("HTTP 503") && e.to_string().contains("pods"),
            "{e}"
        );
        finish(api, task).await;
    }

    #[tokio::test]
    async fn of_node_groups_by_network_with_owners() {
        let (api, task) = server(|_| {
            let mut owned = object("pods", n("10.244.1.0/26"), "node-1", "u1");
            owned["metadata"]["ownerReferences"] =
                json!([{"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "n1"}]);
            (
                200,
                json!({
                    "apiVersion": "wireguard.wg-netns.io/v1alpha1",
                    "kind": "WireGuardAddressBlockList",
                    "metadata": {"resourceVersion": "7"},
                    "items": [
                        owned,
                        object("gone", n("10.9.0.0/26"), "node-1", "u2"),
                        object("pods", n("10.244.4.0/26"), "node-2", "u4"),
                    ],
                }),
            )
        });
        let got = of_node(&api, "node-1").await.unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), vec!["gone", "pods"]);
        assert_eq!(got["pods"].blocks, vec![n("10.244.1.0/26")]);
        assert_eq!(
            got["pods"].owners[&n("10.244.1.0/26")],
            (Some("n1".to_string()), "1".to_string())
        );
        assert_eq!(got["gone"].owners[&n("10.9.0.0/26")].0, None);
        let log = finish(api, task).await;
        assert_eq!(log[0].query, "&fieldSelector=spec.nodeName%3Dnode-1");
    }

    fn review(extra: Value) -> Value {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
               "metadata": {}, "status": {"userInfo": {"username": "system:serviceaccount:kube-system:wg-agent", "extra": extra}}})
    }

    #[tokio::test]
    async fn the_node_uid_comes_from_the_agents_own_credentials() {
        // A token bound to the node: its UID, no read of the Node.
        let (client, log) = apiserver(|req| match req.path.as_str() {
            "/apis/authentication.k8s.io/v1/selfsubjectreviews" => (
                201,
                review(json!({EXTRA_NODE_NAME: ["node-1"], EXTRA_NODE_UID: ["uid-n1"]})),
            ),
            _ => status(403, "Forbidden"),
        });
        assert_eq!(
            node_uid(&client, "node-1").await.unwrap().as_deref(),
            Some("uid-n1")
        );
        drop(client);
        assert_eq!(
            log.lines(),
            vec!["POST /apis/authentication.k8s.io/v1/selfsubjectreviews"]
        );

        // Bound to another node, or to none: the Node is read (403: none).
        for extra in [
            json!({EXTRA_NODE_NAME: ["node-2"], EXTRA_NODE_UID: ["uid-n2"]}),
            json!({}),
        ] {
            let (client, log) = apiserver(move |req| match req.path.as_str() {
                "/apis/authentication.k8s.io/v1/selfsubjectreviews" => (201, review(extra.clone())),
                _ => status(403, "Forbidden"),
            });
            assert_eq!(node_uid(&client, "node-1").await.unwrap(), None);
            drop(client);
            assert_eq!(log.lines()[1], "GET /api/v1/nodes/node-1");
        }
        let (client, _log) = apiserver(|req| match req.path.as_str() {
            "/api/v1/nodes/node-1" => (
                200,
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "uid": "uid-read"}}),
            ),
            _ => status(404, "NotFound"),
        });
        assert_eq!(
            node_uid(&client, "node-1").await.unwrap().as_deref(),
            Some("uid-read")
        );
        let (client, _log) = apiserver(|_| status(500, "InternalError"));
        let e = node_uid(&client, "node-1").await.unwrap_err();
        assert!(
            e.to_string().contains("node-1") && e.to_string().contains("HTTP 500"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn set_owner_patches_with_the_listed_version() {
        let block = n("10.244.1.0/26");
        let (api, task) = server(move |_| (200, object("pods", block, "node-1", "u1")));
        assert!(set_owner(&api, "pods", block, "node-1", "uid-n1", "41")
            .await
            .unwrap());
        let log = finish(api, task).await;
        assert_eq!(
            (&log[0].method, log[0].path.clone()),
            (&Method::PATCH, path_of(block))
        );
        assert_eq!(log[0].content_type, "application/merge-patch+json");
        assert_eq!(
            log[0].body,
            json!({"metadata": {"resourceVersion": "41", "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "uid-n1"}]}})
        );
        // Changed or gone since the list: left alone.
        for code in [404, 409] {
            let (api, task) = server(move |_| status(code, "Conflict"));
            assert!(!set_owner(&api, "pods", block, "node-1", "uid-n1", "41")
                .await
                .unwrap());
            finish(api, task).await;
        }
        let (api, task) = server(|_| status(403, "Forbidden"));
        let e = set_owner(&api, "pods", block, "node-1", "uid-n1", "41")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("owning block 10.244.1.0/26"), "{e}");
        finish(api, task).await;
    }

    #[test]
    fn field_values_are_escaped() {
        assert_eq!(escape_field_value("node-1"), "node-1");
        assert_eq!(escape_field_value(r"a,b=c\d"), r"a\,b\=c\\d");
    }
}
