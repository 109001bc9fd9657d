use std::sync::{Arc, Mutex};

use http::Method;
use serde_json::{json, Value};

use super::super::tests::network_obj;
use super::*;
use crate::testutil::{status, test_agent, Seen, TestAgent, NODE};

const BLOCKS: &str = "/apis/wireguard.wg-netns.io/v1alpha1/wireguardaddressblocks";
const REVIEWS: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
const NODE_UID: &str = "uid-of-node-1";

fn n(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// The blocks an apiserver holds, by name.
type Store = Arc<Mutex<BTreeMap<String, Value>>>;

fn block(network: &str, cidr: &str, node: &str, owner: Option<&str>) -> Value {
    let mut b = WireGuardAddressBlock::claim(network, &n(cidr), node);
    if let Some(uid) = owner {
        b = b.owned_by_node(uid);
    }
    serde_json::to_value(b).unwrap()
}

/// An apiserver that keeps blocks (create, read, list by field, merge
/// patch, delete, with UIDs and resource versions as preconditions)
/// and reviews the agent's credentials as bound to node-1.
fn blocks_apiserver(store: &Store) -> impl FnMut(&Seen) -> (u16, Value) + Send + 'static {
    let store = Arc::clone(store);
    let mut version = 100;
    move |req| {
        version += 1;
        let mut store = store.lock().unwrap();
        let name = req
            .path
            .strip_prefix(BLOCKS)
            .and_then(|p| p.strip_prefix('/'));
        match (&req.method, req.path.as_str(), name) {
            (&Method::POST, REVIEWS, _) => (
                201,
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {},
                       "status": {"userInfo": {"username": "wg-agent", "extra": {
                           blocks::EXTRA_NODE_NAME: [NODE], blocks::EXTRA_NODE_UID: [NODE_UID]}}}}),
            ),
            (&Method::GET, BLOCKS, _) => {
                let q = req.query.replace("%3D", "=").replace("%2C", ",");
                let sel = q.split("fieldSelector=").nth(1).unwrap_or_default();
                let items: Vec<Value> = store
                    .values()
                    .filter(|b| {
                        sel.split(',').filter(|s| !s.is_empty()).all(|kv| {
                            let (k, v) = kv.split_once('=').unwrap();
                            b["spec"][k.trim_start_matches("spec.")] == v
                        })
                    })
                    .cloned()
                    .collect();
                (
                    200,
                    json!({"apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardAddressBlockList",
                             "metadata": {"resourceVersion": version.to_string()}, "items": items}),
                )
            }
            (&Method::POST, BLOCKS, _) => {
                let mut b = req.body.clone();
                let name = b["metadata"]["name"].as_str().unwrap().to_string();
                if store.contains_key(&name) {
                    return status(409, "AlreadyExists");
                }
                b["metadata"]["uid"] = json!(format!("uid-{version}"));
                b["metadata"]["resourceVersion"] = json!(version.to_string());
                store.insert(name, b.clone());
                (201, b)
            }
            (&Method::GET, _, Some(name)) => match store.get(name) {
                Some(b) => (200, b.clone()),
                None => status(404, "NotFound"),
            },
            (&Method::PATCH, _, Some(name)) => {
                let Some(b) = store.get_mut(name) else {
                    return status(404, "NotFound");
                };
                let rv = &req.body["metadata"]["resourceVersion"];
                if !rv.is_null() && *rv != b["metadata"]["resourceVersion"] {
                    return status(409, "Conflict");
                }
                b["metadata"]["ownerReferences"] = req.body["metadata"]["ownerReferences"].clone();
                b["metadata"]["resourceVersion"] = json!(version.to_string());
                (200, b.clone())
            }
            (&Method::DELETE, _, Some(name)) => {
                let uid = &req.body["preconditions"]["uid"];
                match store.get(name) {
                    Some(b) if uid.is_null() || b["metadata"]["uid"] == *uid => {
                        let b = store.remove(name).unwrap();
                        (200, b)
                    }
                    Some(_) => status(409, "Conflict"),
                    None => status(404, "NotFound"),
                }
            }
            _ => status(404, "NotFound"),
        }
    }
}

fn agent_with(store: &Store, blocks: Vec<Value>) -> TestAgent {
    for mut b in blocks {
        let name = b["metadata"]["name"].as_str().unwrap().to_string();
        b["metadata"]["uid"] = json!(format!("uid-{name}"));
        b["metadata"]["resourceVersion"] = json!("1");
        store.lock().unwrap().insert(name, b);
    }
    test_agent(blocks_apiserver(store))
}

fn names(store: &Store) -> Vec<String> {
    store.lock().unwrap().keys().cloned().collect()
}

fn owner(store: &Store, name: &str) -> Value {
    store.lock().unwrap()[name]["metadata"]["ownerReferences"].clone()
}

fn config(spec: Value) -> NetworkConfig {
    network_obj("n0", spec).spec.validate().unwrap()
}

#[tokio::test]
async fn the_allocator_follows_an_added_pool_and_claims_around_other_blocks() {
    let store = Store::default();
    // node-2 holds a /25 of the pool to be added, cut when its blocks
    // were /25: no /28 of this node may overlap it.
    let t = agent_with(&store, vec![block("n0", "10.78.0.0/25", "node-2", None)]);
    let one = config(json!({"addressPools": [{"cidr": "10.77.0.0/24", "blockSize": 28}]}));
    let k1 = Key::new("u1", "wg0").unwrap();
    let a1 = t.agent.allocate("n0", &one, &k1).await.unwrap();
    assert_eq!(a1.len(), 1);
    // Claimed owned by this node's Node (its UID from the review of
    // its own credentials).
    let mine: Vec<String> = names(&store)
        .into_iter()
        .filter(|s| s.starts_with("n0.10-77"))
        .collect();
    assert!(!mine.is_empty());
    for name in &mine {
        assert_eq!(
            owner(&store, name),
            json!([{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID}])
        );
    }
    // A pool added: the next interface gets an address of each, the
    // first keeps its own.
    let two = config(json!({"addressPools": [
        {"cidr": "10.77.0.0/24", "blockSize": 28}, {"cidr": "10.78.0.0/24", "blockSize": 28}]}));
    let k2 = Key::new("u2", "wg0").unwrap();
    let a2 = t.agent.allocate("n0", &two, &k2).await.unwrap();
    assert_eq!(a2.len(), 2, "{a2:?}");
    assert!(
        n("10.78.0.128/25").contains(a2[1].ip()),
        "{a2:?}: inside node-2's old block"
    );
    assert_eq!(t.agent.allocate("n0", &two, &k1).await.unwrap(), a1);
    let ipam = t.agent.ipam.lock().await;
    let blocks = ipam["n0"].blocks();
    assert!(blocks
        .iter()
        .all(|b| !b.contains(n("10.78.0.0").ip()) || b.prefix() < 25));
    assert!(blocks.iter().all(|b| b.prefix() == 28), "{blocks:?}");
}

#[tokio::test]
async fn tend_owns_gives_back_and_claims_back_the_nodes_blocks() {
    let store = Store::default();
    let t = agent_with(
        &store,
        vec![
            // Empty and surplus: given back.
            block("n0", "10.77.0.16/28", NODE, Some(NODE_UID)),
            // Holds an address; claimed before blocks had owners.
            block("n0", "10.77.0.32/28", NODE, None),
            // This node's, unknown to the allocator, empty: given back.
            block("n0", "10.77.0.48/28", NODE, Some(NODE_UID)),
            // Another node's: never touched.
            block("n0", "10.77.0.64/28", "node-2", Some("uid-2")),
            // Cut at another size: kept while an address in it is
            // held, given back when empty.
            block("n0", "10.77.0.192/26", NODE, Some(NODE_UID)),
            block("n0", "10.77.0.128/26", NODE, Some(NODE_UID)),
            // Of a network that is gone: given back.
            block("gone", "10.9.0.0/28", NODE, Some(NODE_UID)),
        ],
    );
    t.agent.index.lock().unwrap().network(&network_obj(
        "n0",
        json!({"addressPools": [{"cidr": "10.77.0.0/24", "blockSize": 28}]}),
    ));
    let pools = [(n("10.77.0.0/24"), 28)];
    let mut ipam = Ipam::new("n0", &pools).unwrap();
    for b in [
        "10.77.0.16/28",
        "10.77.0.32/28",
        "10.77.0.96/28",
        "10.77.0.112/28",
    ] {
        ipam.add_block(n(b)).unwrap();
    }
    ipam.restore("u1.wg0", &[n("10.77.0.33/24")]).unwrap();
    ipam.restore("u2.wg0", &[n("10.77.0.200/24")]).unwrap();
    // 10.77.0.96/28 and 10.77.0.112/28 vanished from the apiserver;
    // the first holds an address.
    ipam.restore("u3.wg0", &[n("10.77.0.100/24")]).unwrap();
    t.agent.ipam.lock().await.insert("n0".into(), ipam);

    // Before the caches are synced: nothing at all.
    t.agent.tend_blocks().await;
    assert!(t.log.all().is_empty());

    t.agent.set_synced();
    t.agent.tend_blocks().await;
    assert_eq!(
        names(&store),
        vec![
            "n0.10-77-0-192-26",
            "n0.10-77-0-32-28",
            "n0.10-77-0-64-28",
            "n0.10-77-0-96-28",
        ],
        "{:?}",
        t.log.lines()
    );
    let node_owner = json!([{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID}]);
    assert_eq!(
        owner(&store, "n0.10-77-0-32-28"),
        node_owner,
        "made its owner"
    );
    assert_eq!(
        owner(&store, "n0.10-77-0-96-28"),
        node_owner,
        "claimed back, owned"
    );
    assert_eq!(owner(&store, "n0.10-77-0-64-28")[0]["uid"], "uid-2");
    {
        let ipam = t.agent.ipam.lock().await;
        assert_eq!(
            ipam["n0"].blocks(),
            vec![n("10.77.0.32/28"), n("10.77.0.96/28")]
        );
    }
    // The address in the other-sized block is released: so is the block.
    t.agent
        .ipam
        .lock()
        .await
        .get_mut("n0")
        .unwrap()
        .release("u2.wg0");
    t.agent.tend_blocks().await;
    assert!(!names(&store).contains(&"n0.10-77-0-192-26".to_string()));
    // Nothing left to do: one list, no write.
    let before = t.log.all().len();
    t.agent.tend_blocks().await;
    let after = t.log.all();
    assert_eq!(after.len(), before + 1, "{:?}", &after[before..]);
    assert_eq!(after[before].line(), format!("GET {BLOCKS}"));
    // The last pod goes: every empty block goes back.
    {
        let mut ipam = t.agent.ipam.lock().await;
        let alloc = ipam.get_mut("n0").unwrap();
        alloc.release("u1.wg0");
        alloc.release("u3.wg0");
    }
    t.agent.tend_blocks().await;
    assert_eq!(names(&store), vec!["n0.10-77-0-64-28"]);
    assert!(t.agent.ipam.lock().await["n0"].blocks().is_empty());
}

/// A slot held by another job when the blocks are tended (a verify
/// or a peer update holds it for one device operation): waited for,
/// and the empty block still goes back. (Before, any held slot made
/// the whole round give nothing back; a node whose verify ran at each
/// collection kept its blocks for ever.)
#[tokio::test]
async fn a_slot_held_briefly_does_not_stop_the_give_back() {
    let store = Store::default();
    let t = agent_with(
        &store,
        vec![block("n0", "10.77.0.16/28", NODE, Some(NODE_UID))],
    );
    t.agent.set_synced();
    t.agent.index.lock().unwrap().network(&network_obj(
        "n0",
        json!({"addressPools": [{"cidr": "10.77.0.0/24", "blockSize": 28}]}),
    ));
    let mut ipam = Ipam::new("n0", &[(n("10.77.0.0/24"), 28)]).unwrap();
    ipam.add_block(n("10.77.0.16/28")).unwrap();
    t.agent.ipam.lock().await.insert("n0".into(), ipam);
    let slot: Slot = Arc::default();
    t.agent
        .slots()
        .insert(Key::new("u9", "wg0").unwrap(), Arc::clone(&slot));
    let held = Arc::clone(&slot).lock_owned().await;
    let job = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(held);
    });
    t.agent.tend_blocks().await;
    job.await.unwrap();
    assert!(names(&store).is_empty(), "{:?}", t.log.lines());
    assert!(t.agent.ipam.lock().await["n0"].blocks().is_empty());
}

#[tokio::test]
async fn a_failed_release_keeps_the_block() {
    let store = Store::default();
    let inner = blocks_apiserver(&store);
    let inner = Arc::new(Mutex::new(inner));
    let script = {
        let inner = Arc::clone(&inner);
        move |req: &Seen| {
            if req.method == Method::DELETE {
                return status(500, "InternalError");
            }
            (inner.lock().unwrap())(req)
        }
    };
    store.lock().unwrap().insert("n0.10-77-0-16-28".into(), {
        let mut b = block("n0", "10.77.0.16/28", NODE, Some(NODE_UID));
        b["metadata"]["uid"] = json!("u");
        b["metadata"]["resourceVersion"] = json!("1");
        b
    });
    let t = test_agent(script);
    t.agent.set_synced();
    let mut ipam = Ipam::new("n0", &[(n("10.77.0.0/24"), 28)]).unwrap();
    ipam.add_block(n("10.77.0.16/28")).unwrap();
    t.agent.ipam.lock().await.insert("n0".into(), ipam);
    t.agent.index.lock().unwrap().network(&network_obj(
        "n0",
        json!({"addressPools": [{"cidr": "10.77.0.0/24", "blockSize": 28}]}),
    ));
    t.agent.tend_blocks().await;
    assert_eq!(names(&store), vec!["n0.10-77-0-16-28"]);
    assert_eq!(
        t.agent.ipam.lock().await["n0"].blocks(),
        vec![n("10.77.0.16/28")]
    );
    assert!(t
        .agent
        .metrics
        .encode()
        .contains("wg_agent_apiserver_errors_total{operation=\"release_block\"} 1"));
}
