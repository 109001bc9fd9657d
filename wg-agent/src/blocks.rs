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

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use wg_k8s_types::{FieldError, WireGuardAddressBlock};

use crate::ipam::{Pool, PoolError};

/// How many `409 AlreadyExists` answers (blocks claimed by other nodes
/// since the caller's `known_taken` was taken) one [`claim`] accepts
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
        /// "claiming", "reading" or "releasing".
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
/// `network` for `node`.
///
/// Walks the pool's blocks in the node's order ([`Pool::candidates`]),
/// skipping `known_taken` (blocks the caller knows are claimed, its own
/// included: from a list or watch of blocks), and creates each one's
/// object until one is created:
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
/// `known_taken` and retries after a backoff, and reports the pool
/// exhausted when `known_taken` covers [`Pool::block_count`] blocks.
pub async fn claim(
    api: &Api<WireGuardAddressBlock>,
    network: &str,
    pool: IpNetwork,
    block_prefix: u8,
    node: &str,
    known_taken: &BTreeSet<IpNetwork>,
) -> Result<Option<IpNetwork>, BlockError> {
    let pool = Pool::new(pool, block_prefix).map_err(|source| BlockError::InvalidPool {
        network: network.to_string(),
        source,
    })?;
    let mut conflicts = 0;
    // Every candidate is either skipped (at most known_taken.len() times)
    // or costs a create: the walk is bounded even in a pool of 2^64 blocks.
    for block in pool.candidates(node) {
        if known_taken.contains(&block) {
            continue;
        }
        let object = WireGuardAddressBlock::claim(network, &block, node);
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
    let list = api
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(|source| BlockError::List {
            network: network.to_string(),
            node: node.to_string(),
            code: code_of(&source),
            source,
        })?;
    let mut out = Owned::default();
    for object in list.items {
        let name = object.metadata.name.clone().unwrap_or_default();
        if object.spec.node_name.as_str() != node || object.spec.network.as_str() != network {
            continue;
        }
        match object.spec.validate() {
            Ok(block) if WireGuardAddressBlock::name_for(network, &block) == name => {
                out.blocks.push(block);
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
    Ok(out)
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
        let got = claim(&api, "pods", n(POOL), 26, "node-1", &BTreeSet::new())
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
        let taken: BTreeSet<IpNetwork> = [c[0], c[1]].into();
        let got = claim(&api, "pods", n(POOL), 26, "node-1", &taken)
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
        let got = claim(&api, "pods", n(POOL), 26, "node-1", &BTreeSet::new())
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
        let got = claim(&api, "pods", n(POOL), 26, "node-1", &BTreeSet::new())
            .await
            .unwrap();
        assert_eq!(got, Some(c[1]));
        finish(api, task).await;
    }

    #[tokio::test]
    async fn server_errors_name_the_block() {
        let c = candidates("node-1");
        let (api, task) = server(|_| status(500, "InternalError"));
        let e = claim(&api, "pods", n(POOL), 26, "node-1", &BTreeSet::new())
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
        let e = claim(&api, "pods", n(POOL), 26, "node-1", &BTreeSet::new())
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
        let got = claim(&api, "pods", n(POOL), 26, "node-1", &BTreeSet::new())
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
            &BTreeSet::new(),
        )
        .await
        .unwrap();
        assert_eq!(got, None);
        let log = finish(api, task).await;
        assert_eq!(log.iter().filter(|s| s.method == Method::POST).count(), 4);

        // All known taken: no request at all.
        let (api, task) = server(|_| status(500, "InternalError"));
        let all: BTreeSet<IpNetwork> = Pool::new(n("10.244.0.0/24"), 26)
            .unwrap()
            .candidates("x")
            .collect();
        let got = claim(&api, "pods", n("10.244.0.0/24"), 26, "node-1", &all)
            .await
            .unwrap();
        assert_eq!(got, None);
        assert!(finish(api, task).await.is_empty());
    }

    #[tokio::test]
    async fn a_bad_pool_is_refused_before_any_request() {
        let (api, task) = server(|_| status(500, "InternalError"));
        let e = claim(&api, "pods", n(POOL), 8, "node-1", &BTreeSet::new())
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

    #[test]
    fn field_values_are_escaped() {
        assert_eq!(escape_field_value("node-1"), "node-1");
        assert_eq!(escape_field_value(r"a,b=c\d"), r"a\,b\=c\\d");
    }
}
