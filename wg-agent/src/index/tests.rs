//! The index without a cluster: unit tests of each handler, and a property
//! test that any sequence of watch events leaves the index equal to the one
//! a relist of the final objects builds, with each event's `Dirty` naming
//! what it changed.

use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use wg_k8s_types::API_VERSION;
use wg_netns::PublicKey;

const NODE: &str = "node-1";
const OTHER: &str = "node-2";

fn key(i: u8) -> String {
    PublicKey::from_bytes([i; 32]).to_base64()
}

fn obj<K: serde::de::DeserializeOwned>(
    kind: &str,
    meta: Value,
    spec: Value,
    status: Option<Value>,
) -> K {
    let mut v = json!({"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec});
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).unwrap()
}

/// Network variants: 0 a mesh on 10.77/16, 1 the same without mesh, 2
/// another pool and a keepalive, 3 invalid (a block larger than its pool).
fn network(name: &str, variant: u8) -> WireGuardNetwork {
    let spec = match variant % 4 {
        0 => json!({"addressPools": [{"cidr": "10.77.0.0/16"}]}),
        1 => json!({"addressPools": [{"cidr": "10.77.0.0/16"}], "mesh": false}),
        2 => json!({"addressPools": [{"cidr": "10.78.0.0/16"}], "persistentKeepalive": 25}),
        _ => json!({"addressPools": [{"cidr": "10.77.0.0/16", "blockSize": 8}]}),
    };
    obj("WireGuardNetwork", json!({"name": name}), spec, None)
}

/// A peer; `selector` 0 is none, others `app=web{selector}`; an invalid one
/// has a key that does not parse.
fn peer(ns: &str, name: &str, network: &str, k: u8, selector: u8, valid: bool) -> WireGuardPeer {
    let mut spec = json!({
        "network": network,
        "publicKey": if valid { key(k) } else { "not-a-key".to_string() },
        "allowedIPs": [format!("10.99.{k}.0/24")],
    });
    if selector > 0 {
        spec["podSelector"] = json!({"matchLabels": {"app": format!("web{selector}")}});
    }
    obj(
        "WireGuardPeer",
        json!({"name": name, "namespace": ns}),
        spec,
        None,
    )
}

/// Attachment statuses: 0 none, 1 empty (no key yet), 2 and 3 a key with
/// two different endpoints, 4 the key of 2 with other counters (a
/// counter-only write), 5 a key that does not parse.
fn status(variant: u8, k: u8) -> Option<Value> {
    let full = |endpoint: &str, rx: i64| {
        json!({
            "publicKey": key(k),
            "addresses": [format!("10.77.0.{k}/16")],
            "endpoint": endpoint,
            "peers": [{"publicKey": key(200), "rxBytes": rx, "txBytes": rx}],
        })
    };
    match variant % 6 {
        0 => None,
        1 => Some(json!({})),
        2 => Some(full("10.250.0.11:51820", 1)),
        3 => Some(full("10.250.0.12:51821", 1)),
        4 => Some(full("10.250.0.11:51820", 999)),
        _ => Some(json!({"publicKey": "garbage", "addresses": ["10.77.0.9/16"]})),
    }
}

fn attachment(
    ns: &str,
    name: &str,
    network: &str,
    node: &str,
    uid: &str,
    st: Option<Value>,
) -> WireGuardAttachment {
    obj(
        "WireGuardAttachment",
        json!({"name": name, "namespace": ns}),
        json!({"network": network, "podName": name, "podUID": uid, "nodeName": node, "interface": "wg0"}),
        st,
    )
}

/// An address block of `network` claimed by `node`, created at second
/// `created`.
fn block(network: &str, cidr: &str, node: &str, created: i64) -> WireGuardAddressBlock {
    let name = WireGuardAddressBlock::name_for(network, &cidr.parse().unwrap());
    let ts = k8s_openapi::jiff::Timestamp::from_second(created).unwrap();
    obj(
        "WireGuardAddressBlock",
        json!({"name": name, "creationTimestamp": ts.to_string()}),
        json!({"network": network, "cidr": cidr, "nodeName": node}),
        None,
    )
}

/// An index that knows the blocks the fixtures' addresses (10.77.0.x)
/// lie in: of node 2 in networks n0 and n2, of node 1 in n1.
fn idx() -> Index {
    let mut i = Index::default();
    i.block(&block("n0", "10.77.0.0/24", OTHER, 1));
    i.block(&block("n1", "10.77.0.0/24", NODE, 1));
    i.block(&block("n2", "10.77.0.0/24", OTHER, 1));
    i
}

fn pod(ns: &str, name: &str, uid: Option<&str>, app: u8, ann: u8) -> Pod {
    let mut meta = json!({"name": name, "namespace": ns, "labels": {"app": format!("web{app}")}});
    if let Some(u) = uid {
        meta["uid"] = json!(u);
    }
    match ann % 4 {
        0 => {}
        1 => meta["annotations"] = json!({ANNOTATION_NETWORK: "n0"}),
        2 => meta["annotations"] = json!({ANNOTATION_NETWORK: "n1"}),
        _ => meta["annotations"] = json!({ANNOTATION_NETWORK: "n0", ANNOTATION_ROTATE_KEY: "1"}),
    }
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": []}}),
    )
    .unwrap()
}

fn peers_dirty(network: &str, namespace: &str) -> Dirty {
    Dirty::Peers {
        network: network.into(),
        namespace: namespace.into(),
    }
}

fn sorted(mut d: Vec<Dirty>) -> Vec<Dirty> {
    d.sort();
    d.dedup();
    d
}

// ------------------------------------------------------------------ units

#[test]
fn networks_dirty_only_on_change_and_keep_the_reason_they_are_unusable() {
    let mut i = Index::default();
    assert_eq!(
        i.network(&network("n0", 0)),
        vec![Dirty::Network("n0".into())]
    );
    assert_eq!(i.network(&network("n0", 0)), vec![], "unchanged spec");
    assert_eq!(
        i.network(&network("n0", 1)),
        vec![Dirty::Network("n0".into())]
    );
    assert!(!i.networks["n0"].as_ref().unwrap().mesh);
    assert_eq!(
        i.network(&network("n0", 3)),
        vec![Dirty::Network("n0".into())]
    );
    let why = i.networks["n0"].as_ref().unwrap_err();
    assert!(why.contains("blockSize"), "{why}");
    assert_eq!(i.network_names(), BTreeSet::from(["n0".to_string()]));
    assert_eq!(
        i.network_gone(&network("n0", 3)),
        vec![Dirty::Network("n0".into())]
    );
    assert!(i.networks.is_empty());
}

#[test]
fn a_peer_moved_between_networks_dirties_both_and_no_other_namespace() {
    let mut i = Index::default();
    i.peer(&peer("ns1", "gw", "n0", 1, 0, true));
    assert_eq!(
        sorted(i.peer(&peer("ns2", "gw", "n0", 2, 0, true))),
        vec![peers_dirty("n0", "ns2")],
        "the same name in another namespace is another peer"
    );
    assert_eq!(
        sorted(i.peer(&peer("ns1", "gw", "n1", 1, 0, true))),
        vec![peers_dirty("n0", "ns1"), peers_dirty("n1", "ns1")]
    );
    assert!(i.peers_of("n0", "ns1").is_empty());
    assert_eq!(i.peers_of("n1", "ns1").len(), 1);
    assert_eq!(i.peers_of("n0", "ns2").len(), 1, "untouched");
    // Becoming invalid removes it where it was (and dirties that).
    assert_eq!(
        sorted(i.peer(&peer("ns1", "gw", "n1", 1, 0, false))),
        vec![peers_dirty("n1", "ns1")]
    );
    assert!(i.peers_of("n1", "ns1").is_empty());
    assert!(
        !i.peers.contains_key(&("n1".into(), "ns1".into())),
        "empty slots are dropped"
    );
    // Gone: only where it was.
    assert_eq!(i.peer_gone(&peer("ns1", "gw", "n1", 1, 0, true)), vec![]);
    assert_eq!(
        i.peer_gone(&peer("ns2", "gw", "n0", 2, 0, true)),
        vec![peers_dirty("n0", "ns2")]
    );
    assert!(i.peers.is_empty());
}

#[test]
fn a_peer_touched_dirties_its_slot_so_its_secret_is_read_again() {
    // Deliberate: Dirty::Peers makes the reconcile loop forget cached
    // Secrets, so touching a peer (an annotation) is how a rotated
    // preshared key is picked up at once. Its selector and config are kept
    // as given.
    let mut i = Index::default();
    i.peer(&peer("ns1", "gw", "n0", 1, 2, true));
    let mut touched = peer("ns1", "gw", "n0", 1, 2, true);
    touched
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("touched".into(), "1".into());
    assert_eq!(sorted(i.peer(&touched)), vec![peers_dirty("n0", "ns1")]);
    // Its status alone changed (an agent wrote Ready): nothing to do,
    // what it says is kept for the next writer.
    let mut written = touched.clone();
    written.status = Some(wg_k8s_types::WireGuardPeerStatus {
        conditions: vec![wg_k8s_types::conditions::condition(
            "Ready",
            true,
            "Applied",
            "applied",
            None,
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(7).unwrap(),
            ),
        )],
        ..Default::default()
    });
    assert_eq!(i.peer(&written), vec![]);
    assert_eq!(i.peer_status("ns1", "gw").unwrap().0.len(), 1);
    assert_eq!(i.peer(&written), vec![], "the same again");
    let p = &i.peers_of("n0", "ns1")[0];
    assert_eq!(p.name, "gw");
    assert_eq!(p.config.public_key, key(1).parse().unwrap());
    let labels = BTreeMap::from([("app".to_string(), "web2".to_string())]);
    assert!(crate::desired::selects(p.selector.as_ref(), &labels));
}

#[test]
fn attachments_become_mesh_members_once_their_status_has_a_key() {
    let mut i = idx();
    let a = |st| attachment("ns1", "web-0", "n0", OTHER, "uid-a", status(st, 7));
    let n0 = vec![Dirty::Network("n0".into())];
    assert_eq!(i.attachment(&a(0)), vec![], "no status: not a member");
    assert_eq!(i.attachment(&a(1)), vec![], "no key yet");
    assert_eq!(i.attachment(&a(5)), vec![], "a key that does not parse");
    assert_eq!(i.attachment(&a(2)), n0, "the key arrives");
    let m = i.mesh_of("n0");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].pod_uid, "uid-a");
    assert_eq!(m[0].public_key, key(7).parse().unwrap());
    assert_eq!(m[0].endpoint, Some("10.250.0.11:51820".parse().unwrap()));
    assert_eq!(m[0].addresses, vec!["10.77.0.7/16".parse().unwrap()]);
    // Counters and the peers' list change at every status write: nothing
    // the mesh uses, so nothing to reconcile.
    assert_eq!(i.attachment(&a(4)), vec![], "counter-only status write");
    assert_eq!(i.attachment(&a(2)), vec![]);
    // The endpoint is what the other pods' devices use: it dirties.
    assert_eq!(i.attachment(&a(3)), n0, "the endpoint moved");
    assert_eq!(
        i.mesh_of("n0")[0].endpoint,
        Some("10.250.0.12:51821".parse().unwrap())
    );
    // Another key (rotation) dirties.
    let rotated = attachment("ns1", "web-0", "n0", OTHER, "uid-a", status(3, 8));
    assert_eq!(i.attachment(&rotated), n0);
    // The key goes: the member goes.
    assert_eq!(i.attachment(&a(1)), n0);
    assert!(i.mesh_of("n0").is_empty());
    assert!(i.own_attachments.is_empty(), "another node's");
    // Deleting a non-member dirties nothing.
    assert_eq!(i.attachment_gone(&a(1)), vec![]);
}

#[test]
fn own_attachments_are_only_this_nodes() {
    let mut i = idx();
    let mine = attachment("ns1", "a", "n0", NODE, "u1", None);
    let other = attachment("ns1", "b", "n0", OTHER, "u2", status(2, 2));
    let mine2 = attachment("ns2", "a", "n1", NODE, "u3", status(2, 3));
    for a in [&mine, &other, &mine2] {
        i.own_attachment(a, NODE);
        i.attachment(a);
    }
    assert_eq!(
        i.own_attachments,
        BTreeMap::from([
            ("ns1/a".to_string(), "u1".to_string()),
            ("ns2/a".to_string(), "u3".to_string()),
        ])
    );
    assert_eq!(i.mesh_of("n0").len(), 1);
    assert_eq!(
        i.mesh_of("n1").len(),
        1,
        "own attachments are mesh members too"
    );
    // One rule per map: a network's watch never touches the node's own
    // attachments, and the own watch never the members.
    assert_eq!(i.attachment_gone(&mine2), vec![Dirty::Network("n1".into())]);
    assert_eq!(i.own_attachments.len(), 2);
    i.own_attachment_gone(&mine2);
    assert_eq!(i.own_attachments.len(), 1);
    // The relists forget what is not listed.
    let listed = [other.clone()];
    i.relisted_own_attachments(&listed, NODE);
    assert!(i.own_attachments.is_empty());
    assert_eq!(
        i.relisted_attachments_in("n0", &listed),
        vec![Dirty::Network("n0".into())]
    );
    assert_eq!(i.mesh_of("n0").len(), 1);
}

// ------------------------------------------------ who may publish an address

/// The attack of the trust issue: an attachment of node 1 publishing an
/// address of node 2's block (a victim pod's) with its own key. It is not
/// a member: no pod routes the victim's address to the forger.
#[test]
fn an_address_outside_the_attachments_node_blocks_is_not_routed_to_it() {
    let mut i = idx();
    let victim = attachment("ns1", "victim", "n0", OTHER, "uid-v", status(2, 7));
    assert_eq!(i.attachment(&victim), vec![Dirty::Network("n0".into())]);
    // Same address, another key, written as node 1's attachment.
    let forged = attachment("ns9", "forged", "n0", NODE, "uid-f", status(3, 7));
    let mut forged = forged;
    forged.status.as_mut().unwrap().public_key = Some(key(66).parse().unwrap());
    assert_eq!(i.attachment(&forged), vec![], "nothing routed changes");
    let m = i.mesh_of("n0");
    assert_eq!(m.len(), 1, "only the victim is a member: {m:?}");
    assert_eq!(m[0].public_key, key(7).parse().unwrap());
    assert_eq!(
        i.rejected.get("ns9/forged"),
        Some(&(
            "n0".to_string(),
            Rejection::AddressNotOwned {
                address: "10.77.0.7/16".parse().unwrap(),
                owner: Some(OTHER.to_string()),
            }
        ))
    );
    assert_eq!(
        i.rejected_by_network(),
        BTreeMap::from([("n0".to_string(), 1)])
    );
    let new = i.take_new_rejections();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].0, "ns9/forged");
    assert!(i.take_new_rejections().is_empty(), "reported once");
    // Written again, the same: not reported again.
    i.attachment(&forged);
    assert!(i.take_new_rejections().is_empty());
    // Gone: nothing rejected any more.
    i.attachment_gone(&forged);
    assert!(i.rejected.is_empty());
    assert_eq!(i.mesh_of("n0").len(), 1);
}

/// An address in no block at all (a Service IP, another range): refused.
/// Every address must be owned, not just one.
#[test]
fn an_address_in_no_block_is_refused_and_one_bad_address_refuses_the_member() {
    let mut i = idx();
    let mut a = attachment("ns1", "a", "n0", OTHER, "uid-a", status(2, 7));
    a.status.as_mut().unwrap().addresses = vec![
        "10.77.0.7/16".parse().unwrap(),
        "10.96.0.10/32".parse().unwrap(),
    ];
    assert_eq!(i.attachment(&a), vec![]);
    assert!(i.mesh_of("n0").is_empty());
    assert_eq!(
        i.rejected["ns1/a"].1,
        Rejection::AddressNotOwned {
            address: "10.96.0.10/32".parse().unwrap(),
            owner: None
        }
    );
    assert!(i.rejected["ns1/a"]
        .1
        .to_string()
        .contains("no address block"));
    // Blocks are per network: the same range claimed in another network
    // entitles nothing here.
    let mut i = Index::default();
    i.block(&block("n1", "10.77.0.0/24", OTHER, 1));
    i.attachment(&attachment("ns1", "a", "n0", OTHER, "u", status(2, 7)));
    assert!(i.mesh_of("n0").is_empty());
}

/// A network with a namespaceSelector takes members only from the
/// namespaces it selects; a namespace's labels or the network's selector
/// changing re-decides them.
#[test]
fn a_network_admits_members_only_from_the_namespaces_it_selects() {
    let mut i = idx();
    let ns = |name: &str, labels: Value| -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    };
    i.relisted_namespaces(&[ns("ns1", json!({"team": "a"})), ns("ns2", json!({}))]);
    let selective: WireGuardNetwork = obj(
        "WireGuardNetwork",
        json!({"name": "n0"}),
        json!({"addressPools": [{"cidr": "10.77.0.0/16"}],
               "namespaceSelector": {"matchLabels": {"team": "a"}}}),
        None,
    );
    i.network(&selective);
    let a1 = attachment("ns1", "a", "n0", OTHER, "u1", status(2, 1));
    let a2 = attachment("ns2", "b", "n0", OTHER, "u2", status(2, 2));
    i.attachment(&a1);
    i.attachment(&a2);
    assert_eq!(i.mesh_of("n0").len(), 1);
    assert_eq!(i.mesh_of("n0")[0].pod_uid, "u1");
    assert_eq!(
        i.rejected["ns2/b"].1,
        Rejection::NamespaceNotAllowed {
            namespace: "ns2".into()
        }
    );
    assert!(i.namespace_allowed("n0", "ns1"));
    assert!(!i.namespace_allowed("n0", "ns2"));
    assert!(!i.namespace_allowed("n0", "not-seen-yet"));
    assert!(i.namespace_allowed("n1", "ns2"), "n1 has no selector");
    // ns2 gets the label: admitted, the mesh changes.
    assert_eq!(
        i.namespace(&ns("ns2", json!({"team": "a"}))),
        vec![Dirty::Network("n0".into())]
    );
    assert_eq!(i.mesh_of("n0").len(), 2);
    // ns1 goes: its member goes.
    assert_eq!(
        i.namespace_gone(&ns("ns1", json!({"team": "a"}))),
        vec![Dirty::Network("n0".into())]
    );
    assert_eq!(i.mesh_of("n0").len(), 1);
    // The selector is dropped from the network: everyone is admitted.
    i.network(&network("n0", 0));
    assert_eq!(i.mesh_of("n0").len(), 2);
    assert!(i.rejected.is_empty());
}

/// Blocks that arrive, go or overlap re-decide the members they cover,
/// and dirty the network exactly when the mesh changes.
#[test]
fn block_events_readmit_and_the_oldest_of_overlapping_blocks_owns() {
    let mut i = Index::default();
    let a = attachment("ns1", "a", "n0", OTHER, "uid-a", status(2, 7));
    assert_eq!(i.attachment(&a), vec![], "no block yet");
    assert_eq!(i.rejected.len(), 1);
    let b = block("n0", "10.77.0.0/24", OTHER, 100);
    assert_eq!(i.block(&b), vec![Dirty::Network("n0".into())]);
    assert_eq!(i.mesh_of("n0").len(), 1);
    assert!(i.rejected.is_empty());
    assert_eq!(i.block(&b), vec![], "the same block again");
    // A younger overlapping block of node 1 (the forger's) takes nothing.
    let young = block("n0", "10.77.0.0/25", NODE, 200);
    assert_eq!(i.block(&young), vec![]);
    assert_eq!(i.mesh_of("n0").len(), 1);
    // An older overlapping block of node 1 does own the address: node 2's
    // attachment is refused (its block was claimed over an existing one).
    let old = block("n0", "10.77.0.0/26", NODE, 50);
    assert_eq!(i.block(&old), vec![Dirty::Network("n0".into())]);
    assert!(i.mesh_of("n0").is_empty());
    assert_eq!(
        i.rejected["ns1/a"].1,
        Rejection::AddressNotOwned {
            address: "10.77.0.7/16".parse().unwrap(),
            owner: Some(NODE.to_string())
        }
    );
    // Same creation second: the smaller name wins, whatever the order of
    // events.
    assert_eq!(i.block_gone(&old), vec![Dirty::Network("n0".into())]);
    assert_eq!(i.mesh_of("n0").len(), 1);
    let twin = block("n0", "10.77.0.0/25", NODE, 100);
    i.block(&twin);
    let by_name = WireGuardAddressBlock::name_for("n0", &"10.77.0.0/24".parse().unwrap())
        < WireGuardAddressBlock::name_for("n0", &"10.77.0.0/25".parse().unwrap());
    assert_eq!(i.mesh_of("n0").len(), usize::from(by_name));
    i.block_gone(&twin);
    i.block_gone(&young);
    // The block goes: the member goes.
    assert_eq!(i.block_gone(&b), vec![Dirty::Network("n0".into())]);
    assert!(i.mesh_of("n0").is_empty());
    assert_eq!(i.block_gone(&b), vec![], "already gone");
    // A relist of the network's blocks re-decides too.
    assert_eq!(
        i.relisted_blocks_in("n0", &[b]),
        vec![Dirty::Network("n0".into())]
    );
    assert_eq!(i.mesh_of("n0").len(), 1);
}

#[test]
fn pods_dirty_by_uid_when_what_the_agent_uses_changes() {
    let mut i = Index::default();
    assert_eq!(
        i.pod(&pod("ns1", "web", Some("u1"), 1, 0)),
        vec![Dirty::Pod("u1".into())]
    );
    assert_eq!(i.pod(&pod("ns1", "web", Some("u1"), 1, 0)), vec![]);
    assert_eq!(
        i.pod(&pod("ns1", "web", Some("u1"), 2, 0)),
        vec![Dirty::Pod("u1".into())],
        "labels"
    );
    assert_eq!(
        i.pod(&pod("ns1", "web", Some("u1"), 2, 1)),
        vec![Dirty::Pod("u1".into())],
        "network"
    );
    assert_eq!(
        i.pod(&pod("ns1", "web", Some("u1"), 2, 3)),
        vec![Dirty::Pod("u1".into())],
        "rotation"
    );
    let info = i.pod_info("ns1", "web").unwrap();
    assert_eq!(info.network.as_deref(), Some("n0"));
    assert_eq!(info.rotation, "1");
    assert!(!info.deleting);
    let mut deleting = pod("ns1", "web", Some("u1"), 2, 3);
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    assert_eq!(
        i.pod(&deleting),
        vec![Dirty::Pod("u1".into())],
        "deletion starts"
    );
    assert!(i.pod_info("ns1", "web").unwrap().deleting);
    assert!(i.pod_uid_alive("u1"));
    // Without a UID (never from the apiserver) the event is ignored.
    assert_eq!(i.pod(&pod("ns1", "other", None, 1, 0)), vec![]);
    assert!(i.pod_info("ns1", "other").is_none());
    // A pod going dirties nothing: its interfaces wait for the gc.
    assert_eq!(i.pod_gone(&deleting), vec![]);
    assert!(!i.pod_uid_alive("u1"));
    assert!(i.pod_info("ns1", "web").is_none());
}

// --------------------------------------------------------------- property

/// A peer entry's content.
type PeerSnap = (Option<Selector>, CheckedPeer);

/// What the index holds, with empty inner maps left out (an index built
/// event by event may keep a network's emptied mesh map; a relist does not
/// create it: the same knowledge).
#[derive(Debug, PartialEq, Clone)]
struct Snap {
    networks: BTreeMap<String, Result<NetworkConfig, String>>,
    peers: BTreeMap<(String, String), BTreeMap<String, PeerSnap>>,
    mesh: BTreeMap<String, BTreeMap<String, MeshMember>>,
    pods: BTreeMap<String, PodInfo>,
    own: BTreeMap<String, String>,
    blocks: BTreeMap<String, BTreeMap<String, BlockInfo>>,
    rejected: BTreeMap<String, (String, Rejection)>,
}

fn snap(i: &Index) -> Snap {
    Snap {
        networks: i
            .networks
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        peers: i
            .peers
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(k, m)| {
                let inner = m
                    .iter()
                    .map(|(n, e)| {
                        assert_eq!(*n, e.name);
                        assert_eq!(k.0, e.config.network, "a peer sits under its network");
                        (n.clone(), (e.selector.clone(), e.config.clone()))
                    })
                    .collect();
                (k.clone(), inner)
            })
            .collect(),
        mesh: i
            .mesh
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(k, m)| (k.clone(), m.clone().into_iter().collect()))
            .collect(),
        pods: i.pods.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        own: i.own_attachments.clone(),
        blocks: i
            .blocks
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(k, m)| (k.clone(), m.clone()))
            .collect(),
        rejected: i.rejected.clone(),
    }
}

/// Which `Dirty` an event must return (what changed) and which it may
/// (that, plus the applied peer's own slot: see
/// `a_peer_applied_again_dirties_its_slot_so_its_secret_is_read_again`).
fn expected(before: &Snap, after: &Snap, ev: &Ev) -> (BTreeSet<Dirty>, BTreeSet<Dirty>) {
    let mut must = BTreeSet::new();
    let names: BTreeSet<&String> = before
        .networks
        .keys()
        .chain(after.networks.keys())
        .collect();
    for n in names {
        if before.networks.get(n) != after.networks.get(n) {
            must.insert(Dirty::Network(n.clone()));
        }
    }
    let names: BTreeSet<&String> = before.mesh.keys().chain(after.mesh.keys()).collect();
    for n in names {
        if before.mesh.get(n) != after.mesh.get(n) {
            must.insert(Dirty::Network(n.clone()));
        }
    }
    let slots: BTreeSet<&(String, String)> =
        before.peers.keys().chain(after.peers.keys()).collect();
    for (n, ns) in slots {
        let k = (n.clone(), ns.clone());
        if before.peers.get(&k) != after.peers.get(&k) {
            must.insert(peers_dirty(n, ns));
        }
    }
    for (k, p) in &after.pods {
        if before.pods.get(k) != Some(p) {
            must.insert(Dirty::Pod(p.uid.clone()));
        }
    }
    let mut may = must.clone();
    if let Ev::Apply(Obj::Peer(p)) = ev {
        if let Ok(c) = p.spec.validate() {
            may.insert(peers_dirty(&c.network, &p.namespace().unwrap_or_default()));
        }
    }
    (must, may)
}

#[derive(Clone, Debug)]
enum Obj {
    Net(WireGuardNetwork),
    Peer(WireGuardPeer),
    Att(WireGuardAttachment),
    Pod(Box<Pod>),
    Block(WireGuardAddressBlock),
}

#[derive(Clone, Debug)]
enum Ev {
    Apply(Obj),
    Delete(Obj),
}

fn handle(i: &mut Index, ev: &Ev) -> Vec<Dirty> {
    match ev {
        Ev::Apply(Obj::Net(o)) => i.network(o),
        Ev::Apply(Obj::Peer(o)) => i.peer(o),
        Ev::Apply(Obj::Att(o)) => {
            // Both watches that hear it: this node's own, and its network's.
            i.own_attachment(o, NODE);
            i.attachment(o)
        }
        Ev::Apply(Obj::Pod(o)) => i.pod(o),
        Ev::Apply(Obj::Block(o)) => i.block(o),
        Ev::Delete(Obj::Block(o)) => i.block_gone(o),
        Ev::Delete(Obj::Net(o)) => i.network_gone(o),
        Ev::Delete(Obj::Peer(o)) => i.peer_gone(o),
        Ev::Delete(Obj::Att(o)) => {
            i.own_attachment_gone(o);
            i.attachment_gone(o)
        }
        Ev::Delete(Obj::Pod(o)) => i.pod_gone(o),
    }
}

/// What a user or the agents do; [`World::act`] turns it into the watch
/// events the apiserver would send.
#[derive(Clone, Debug)]
enum Act {
    Net {
        i: u8,
        variant: u8,
    },
    Peer {
        ns: u8,
        i: u8,
        net: u8,
        k: u8,
        sel: u8,
        valid: bool,
    },
    Att {
        ns: u8,
        i: u8,
        net: u8,
        own: bool,
        uid: u8,
        st: u8,
        k: u8,
    },
    Pod {
        ns: u8,
        i: u8,
        uid: u8,
        app: u8,
        ann: u8,
    },
    Block {
        i: u8,
        net: u8,
        own: bool,
        created: u8,
    },
    Delete {
        kind: u8,
        ns: u8,
        i: u8,
    },
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        (0u8..3, 0u8..4).prop_map(|(i, variant)| Act::Net { i, variant }),
        (
            0u8..2,
            0u8..3,
            0u8..3,
            0u8..3,
            0u8..3,
            prop::bool::weighted(0.85)
        )
            .prop_map(|(ns, i, net, k, sel, valid)| Act::Peer {
                ns,
                i,
                net,
                k,
                sel,
                valid
            }),
        (
            0u8..2,
            0u8..3,
            0u8..3,
            any::<bool>(),
            0u8..3,
            0u8..6,
            0u8..3
        )
            .prop_map(|(ns, i, net, own, uid, st, k)| Act::Att {
                ns,
                i,
                net,
                own,
                uid,
                st,
                k
            }),
        (0u8..2, 0u8..3, 0u8..3, 0u8..3, 0u8..4).prop_map(|(ns, i, uid, app, ann)| Act::Pod {
            ns,
            i,
            uid,
            app,
            ann
        }),
        (0u8..3, 0u8..3, any::<bool>(), 0u8..3).prop_map(|(i, net, own, created)| Act::Block {
            i,
            net,
            own,
            created
        }),
        (0u8..5, 0u8..2, 0u8..3).prop_map(|(kind, ns, i)| Act::Delete { kind, ns, i }),
    ]
}

/// The apiserver's objects, and the events its watches send.
#[derive(Default, Clone)]
struct World {
    objects: BTreeMap<(u8, String, String), Obj>,
}

impl World {
    fn act(&mut self, a: &Act) -> Vec<Ev> {
        let ns = |n: u8| format!("ns{n}");
        let mut out = Vec::new();
        let (slot, new) = match *a {
            Act::Net { i, variant } => (
                (0, String::new(), format!("n{i}")),
                Obj::Net(network(&format!("n{i}"), variant)),
            ),
            Act::Peer {
                ns: n,
                i,
                net,
                k,
                sel,
                valid,
            } => (
                (1, ns(n), format!("p{i}")),
                Obj::Peer(peer(
                    &ns(n),
                    &format!("p{i}"),
                    &format!("n{net}"),
                    k,
                    sel,
                    valid,
                )),
            ),
            Act::Att {
                ns: n,
                i,
                net,
                own,
                uid,
                st,
                k,
            } => (
                (2, ns(n), format!("a{i}")),
                Obj::Att(attachment(
                    &ns(n),
                    &format!("a{i}"),
                    &format!("n{net}"),
                    if own { NODE } else { OTHER },
                    &format!("uid-{uid}"),
                    status(st, k),
                )),
            ),
            Act::Pod {
                ns: n,
                i,
                uid,
                app,
                ann,
            } => (
                (3, ns(n), format!("pod{i}")),
                Obj::Pod(Box::new(pod(
                    &ns(n),
                    &format!("pod{i}"),
                    Some(&format!("pod-uid-{uid}")),
                    app,
                    ann,
                ))),
            ),
            Act::Block {
                i,
                net,
                own,
                created,
            } => {
                // Three ranges: two overlapping ones that cover the
                // fixtures' addresses (10.77.0.x) and one that covers none.
                let cidr = ["10.77.0.0/24", "10.77.0.0/25", "10.78.0.0/24"][usize::from(i % 3)];
                (
                    (4, String::new(), format!("b{i}")),
                    Obj::Block(block(
                        &format!("n{net}"),
                        cidr,
                        if own { NODE } else { OTHER },
                        i64::from(created),
                    )),
                )
            }
            Act::Delete { kind, ns: n, i } => {
                let name = match kind {
                    0 => format!("n{i}"),
                    1 => format!("p{i}"),
                    2 => format!("a{i}"),
                    3 => format!("pod{i}"),
                    _ => format!("b{i}"),
                };
                let key = (
                    kind,
                    if kind == 0 || kind == 4 {
                        String::new()
                    } else {
                        ns(n)
                    },
                    name,
                );
                if let Some(old) = self.objects.remove(&key) {
                    out.push(Ev::Delete(old));
                }
                return out;
            }
        };
        // An attachment's spec is immutable and a pod's UID is its
        // identity: another one under the same name was deleted and
        // created, and the watch says so.
        let replaced = match (self.objects.get(&slot), &new) {
            (Some(Obj::Att(old)), Obj::Att(n)) => old.spec != n.spec,
            (Some(Obj::Pod(old)), Obj::Pod(n)) => old.metadata.uid != n.metadata.uid,
            // A block's spec is immutable and its name follows its range.
            (Some(Obj::Block(old)), Obj::Block(n)) => {
                old.spec != n.spec || old.metadata.name != n.metadata.name
            }
            _ => false,
        };
        if replaced {
            out.push(Ev::Delete(self.objects.remove(&slot).unwrap()));
        }
        self.objects.insert(slot, new.clone());
        out.push(Ev::Apply(new));
        out
    }

    /// The index a relist of every kind builds, the objects of each kind
    /// listed in the order `order` gives.
    fn relist_into(&self, i: &mut Index, order: &[u16]) {
        let mut all: Vec<(&Obj, u16)> = self
            .objects
            .values()
            .zip(order.iter().copied().cycle())
            .collect();
        all.sort_by_key(|(_, w)| *w);
        let mut nets = Vec::new();
        let mut peers = Vec::new();
        let mut atts = Vec::new();
        let mut pods = Vec::new();
        let mut blocks = Vec::new();
        for (o, _) in all {
            match o {
                Obj::Net(o) => nets.push(o.clone()),
                Obj::Peer(o) => peers.push(o.clone()),
                Obj::Att(o) => atts.push(o.clone()),
                Obj::Pod(o) => pods.push((**o).clone()),
                Obj::Block(o) => blocks.push(o.clone()),
            }
        }
        // Blocks before or after the attachments (the order the watches
        // of a starting agent list them in is not fixed), network by
        // network as the scoped watches list them.
        let networks = ["n0", "n1", "n2"];
        let blocks_first = order.first().is_some_and(|w| w % 2 == 0);
        let relist_blocks = |i: &mut Index| {
            for n in networks {
                assert_eq!(
                    i.relisted_blocks_in(n, &blocks),
                    vec![Dirty::Network(n.into())]
                );
            }
        };
        if blocks_first {
            relist_blocks(i);
        }
        assert_eq!(i.relisted_networks(&nets), vec![Dirty::All]);
        for ns in ["ns0", "ns1"] {
            assert_eq!(
                i.relisted_peers_in(ns, &peers),
                vec![Dirty::Namespace(ns.into())]
            );
        }
        for n in networks {
            assert_eq!(
                i.relisted_attachments_in(n, &atts),
                vec![Dirty::Network(n.into())]
            );
        }
        i.relisted_own_attachments(&atts, NODE);
        assert_eq!(i.relisted_pods(&pods), vec![Dirty::All]);
        if !blocks_first {
            relist_blocks(i);
        }
        for n in networks {
            assert!(i.scope_listed(n, "ns0") && i.scope_listed(n, "ns1"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Event by event, the index equals the relist of the final objects
    /// (in any order), each event's `Dirty` names what it changed, and a
    /// relist after lost events converges with the events that follow.
    #[test]
    fn events_equal_a_relist_and_dirty_what_they_change(
        acts in prop::collection::vec(act(), 1..60),
        order in prop::collection::vec(any::<u16>(), 1..40),
        lost in prop::collection::vec(any::<bool>(), 60..61),
        relist_at in 0usize..60,
    ) {
        let mut world = World::default();
        let mut live = Index::default();
        // A second agent whose watch loses events until it relists at
        // `relist_at`, then sees every event.
        let mut lossy = Index::default();
        for (n, a) in acts.iter().enumerate() {
            if n == relist_at {
                world.relist_into(&mut lossy, &order);
            }
            for ev in world.act(a) {
                let before = snap(&live);
                let dirty: BTreeSet<Dirty> = handle(&mut live, &ev).into_iter().collect();
                let after = snap(&live);
                let (must, may) = expected(&before, &after, &ev);
                prop_assert!(must.is_subset(&dirty), "{ev:?}\nmissing {:?}\nreturned {dirty:?}", must.difference(&dirty).collect::<Vec<_>>());
                prop_assert!(dirty.is_subset(&may), "{ev:?}\nunexpected {:?}", dirty.difference(&may).collect::<Vec<_>>());
                if n >= relist_at || !lost[n] {
                    handle(&mut lossy, &ev);
                }
            }
        }
        let mut relisted = Index::default();
        world.relist_into(&mut relisted, &order);
        let want = snap(&relisted);
        prop_assert_eq!(&snap(&live), &want);
        if relist_at < acts.len() {
            prop_assert_eq!(&snap(&lossy), &want);
        }
        // Relisting an index that saw everything changes nothing.
        world.relist_into(&mut live, &order.iter().rev().copied().collect::<Vec<_>>());
        prop_assert_eq!(&snap(&live), &want);
        // own_attachments: exactly this node's listed attachments.
        let own: BTreeMap<String, String> = world.objects.values().filter_map(|o| match o {
            Obj::Att(a) if a.spec.node_name.as_str() == NODE =>
                Some((format!("{}/{}", a.namespace().unwrap(), a.name_any()), a.spec.pod_uid.clone())),
            _ => None,
        }).collect();
        prop_assert_eq!(&want.own, &own);
    }
}

/// What the node's pods need watched: an existing network named by a pod
/// (not in the node's namespace), with the pod's namespace; a network no
/// WireGuardNetwork has starts nothing, and a scoped relist or forget
/// moves the listed state the reconciler waits for.
#[test]
fn pods_scope_names_existing_networks_and_listing_follows_the_watches() {
    let mut i = Index::default();
    i.pod(&pod("ns1", "a", Some("u1"), 0, 1)); // n0
    i.pod(&pod("ns2", "b", Some("u2"), 0, 2)); // n1
    i.pod(&pod("ns3", "c", Some("u3"), 0, 0)); // none
    assert!(i.pods_scope().is_empty(), "networks not created yet");
    i.network(&network("n0", 0));
    assert_eq!(
        i.pods_scope(),
        BTreeSet::from([("n0".to_string(), "ns1".to_string())])
    );
    i.network(&network("n1", 0));
    assert_eq!(i.pods_scope().len(), 2);

    assert!(!i.scope_listed("n0", "ns1"));
    i.relisted_attachments_in("n0", &[]);
    i.relisted_blocks_in("n0", &[]);
    assert!(
        !i.scope_listed("n0", "ns1"),
        "the namespace's peers not listed"
    );
    assert_eq!(
        i.relisted_peers_in("ns1", &[]),
        vec![Dirty::Namespace("ns1".into())]
    );
    assert!(i.scope_listed("n0", "ns1"));
    assert!(!i.scope_listed("n1", "ns1"));
    assert_eq!(
        i.forget(&Watched::Blocks("n0".into())),
        vec![],
        "no member to re-decide"
    );
    assert!(!i.scope_listed("n0", "ns1"));
}

/// Forgetting a network's attachments drops its members and refusals;
/// forgetting a namespace's peers drops them from every network.
#[test]
fn forgetting_a_watch_drops_what_it_brought() {
    let mut i = idx();
    i.attachment(&attachment("ns1", "a", "n0", OTHER, "u1", status(2, 2)));
    i.attachment(&attachment("ns1", "x", "n0", NODE, "u9", status(2, 9)));
    assert_eq!(i.mesh_of("n0").len(), 1);
    assert_eq!(i.rejected.len(), 1);
    i.peer(&peer("ns1", "p", "n0", 1, 0, true));
    i.peer(&peer("ns1", "q", "n2", 2, 0, true));
    i.peer(&peer("ns2", "r", "n0", 3, 0, true));
    assert_eq!(
        i.forget(&Watched::Attachments("n0".into())),
        vec![Dirty::Network("n0".into())]
    );
    assert!(i.mesh_of("n0").is_empty());
    assert!(i.rejected.is_empty());
    assert_eq!(
        i.forget(&Watched::Peers("ns1".into())),
        vec![Dirty::Namespace("ns1".into())]
    );
    assert!(i.peers_of("n0", "ns1").is_empty());
    assert!(i.peers_of("n2", "ns1").is_empty());
    assert_eq!(i.peers_of("n0", "ns2").len(), 1);
}
