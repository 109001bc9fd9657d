//! Who receives what: 20 simulated nodes (the agent's real watches, index,
//! scope and reconcile loops, `sim/`, their pods' interfaces recording
//! devices) against a real kube-apiserver. A pod's attachment, its address
//! block, a key rotation and an external peer reach exactly the nodes with
//! members of that network or namespace, not every node, and end on
//! exactly those nodes' devices; a peer's status is written once, not by
//! every node (nor again by a node that applies it later); a node whose last member left stops receiving them. Counts
//! are asserted, never times (the figures at 10, 100 and 1,000 nodes are
//! the cluster scale benchmark's: docs/benchmarks.md).

mod sim;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sim::{pod, Lite, SimNode};
use wg_k8s_types::{WireGuardAddressBlock, WireGuardAttachment, WireGuardNetwork, WireGuardPeer};
use wg_netns::PrivateKey;

const NODES: usize = 20;
/// Nodes 0..5 have a pod in network `net-a` (namespace `team-a`), 5..7 in
/// `net-b` (`team-b`); the others a pod in no network (`other`).
const A: std::ops::Range<usize> = 0..5;
const B: std::ops::Range<usize> = 5..7;

/// Per node, how many objects of `kind` its watches received.
fn counts(nodes: &[SimNode], kind: &str) -> Vec<u64> {
    nodes.iter().map(|n| n.events(kind) as u64).collect()
}

/// Wait until every node received what `want` says beyond `base` (or 30 s
/// pass), then a little longer for anything more to arrive; what they
/// received.
async fn received(nodes: &[SimNode], kind: &str, base: &[u64], want: &[u64]) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let delta = |nodes: &[SimNode]| -> Vec<u64> {
        counts(nodes, kind)
            .iter()
            .zip(base)
            .map(|(n, b)| n - b)
            .collect()
    };
    while Instant::now() < deadline && delta(nodes).iter().zip(want).any(|(got, w)| got < w) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything sent to a node that should not get it would be here by now
    // (the expected ones arrived over the same apiserver).
    tokio::time::sleep(Duration::from_millis(500)).await;
    delta(nodes)
}

/// `n` for the nodes of `range` (plus `extra` for node `extra_at`), 0
/// elsewhere.
fn only(range: std::ops::Range<usize>, n: u64, extra_at: Option<usize>) -> Vec<u64> {
    (0..NODES)
        .map(|i| u64::from(range.contains(&i)) * n + u64::from(extra_at == Some(i)))
        .collect()
}

fn attachment(name: &str, node: &str, network: &str) -> WireGuardAttachment {
    serde_json::from_value(json!({
        "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardAttachment",
        "metadata": {"name": name},
        "spec": {"network": network, "podName": name, "podUID": format!("uid-{name}"),
                 "nodeName": node, "interface": "wg0"}
    }))
    .expect("attachment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_object_reaches_only_the_nodes_whose_pods_need_it() {
    let test = "scale::each_object_reaches_only_the_nodes_whose_pods_need_it";
    let lite = match Lite::up() {
        Ok(l) => l,
        Err(why) => return wg_netns_testkit::skip(test, &why),
    };
    lite.install_crds().await;
    let admin = lite.client().await;
    for ns in ["team-a", "team-b", "other"] {
        lite.namespace(&admin, ns).await;
    }
    let networks: Api<WireGuardNetwork> = Api::all(admin.clone());
    for (name, cidr) in [("net-a", "10.91.0.0/16"), ("net-b", "10.92.0.0/16")] {
        let n: WireGuardNetwork = serde_json::from_value(json!({
            "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardNetwork",
            "metadata": {"name": name},
            "spec": {"addressPools": [{"cidr": cidr}], "mesh": true}
        }))
        .expect("network");
        networks
            .create(&PostParams::default(), &n)
            .await
            .expect("network");
    }
    let node = |i: usize| format!("node-{i}");
    let mut uids = Vec::new();
    for i in 0..NODES {
        let (ns, net) = if A.contains(&i) {
            ("team-a", Some("net-a"))
        } else if B.contains(&i) {
            ("team-b", Some("net-b"))
        } else {
            ("other", None)
        };
        let made: k8s_openapi::api::core::v1::Pod = Api::namespaced(admin.clone(), ns)
            .create(
                &PostParams::default(),
                &pod(&format!("p{i}"), &node(i), net),
            )
            .await
            .expect("pod");
        uids.push(made.metadata.uid.expect("uid"));
    }
    let mut nodes = Vec::new();
    for (i, uid) in uids.iter().enumerate() {
        let mut n = SimNode::start(&lite, &node(i), "1s").await;
        // The members' interfaces (not node 4's: step 5 takes its pod
        // away, and an interface it held would keep its watches).
        if i != 4 && (A.contains(&i) || B.contains(&i)) {
            let (ns, net, pool) = if A.contains(&i) {
                ("team-a", "net-a", 91)
            } else {
                ("team-b", "net-b", 92)
            };
            n.hold(
                ns,
                &format!("p{i}"),
                uid,
                net,
                &format!("10.{pool}.100.{}/16", i + 1),
                51820,
            );
        }
        nodes.push(n);
    }
    let on_devices = |nodes: &[SimNode], k: &wg_netns::PublicKey| -> Vec<usize> {
        nodes
            .iter()
            .map(|n| n.devices.iter().filter(|d| d.has_peer(k)).count())
            .collect()
    };
    let sets = |nodes: &[SimNode]| -> Vec<u64> {
        nodes
            .iter()
            .map(|n| n.devices.iter().map(|d| d.sets()).sum())
            .collect()
    };
    // One device on each member node but node 4.
    let a_devices: Vec<usize> = (0..NODES)
        .map(|i| usize::from(A.contains(&i) && i != 4))
        .collect();

    // Each member node watches its network and namespace; the others
    // nothing beyond the cluster-wide kinds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let scoped = |nodes: &[SimNode]| -> Vec<(u64, u64)> {
        nodes
            .iter()
            .map(|n| (n.watched("network") as u64, n.watched("namespace") as u64))
            .collect()
    };
    let want: Vec<(u64, u64)> = (0..NODES)
        .map(|i| if i < B.end { (1, 1) } else { (0, 0) })
        .collect();
    while scoped(&nodes) != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(scoped(&nodes), want, "networks and namespaces watched");
    let listed =
        |i: usize, net: &str, ns: &str| nodes[i].agent.index.lock().unwrap().scope_listed(net, ns);
    while !(A.chain(B).all(|i| {
        let (net, ns) = if A.contains(&i) {
            ("net-a", "team-a")
        } else {
            ("net-b", "team-b")
        };
        listed(i, net, ns)
    })) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(nodes.iter().all(|n| n.agent.is_synced()), "synced");

    // 1. A new pod's attachment on node 1 (a member of net-a), with its
    //    key and address: the five members of net-a get it once, node 1
    //    once more (its own attachments' watch); nobody else.
    let kind = "WireGuardAttachment";
    let base = counts(&nodes, kind);
    let atts: Api<WireGuardAttachment> = Api::namespaced(admin.clone(), "team-a");
    atts.create(
        &PostParams::default(),
        &attachment("new", &node(1), "net-a"),
    )
    .await
    .expect("attachment");
    let want = only(A, 1, Some(1));
    assert_eq!(received(&nodes, kind, &base, &want).await, want);

    // 2. Its status (the key, the address) and the block that entitles
    //    node 1 to the address: the members again, and only them. Then
    //    every member's index has the new pod as a mesh peer.
    let key = PrivateKey::generate().unwrap().public_key();
    let base = counts(&nodes, kind);
    let status = |k: &wg_netns::PublicKey| {
        json!({"status": {"publicKey": k.to_base64().to_string(),
                          "addresses": ["10.91.1.2/16"], "endpoint": "10.250.0.2:51820"}})
    };
    atts.patch_status("new", &PatchParams::default(), &Patch::Merge(&status(&key)))
        .await
        .expect("status");
    assert_eq!(received(&nodes, kind, &base, &want).await, want);
    let blocks: Api<WireGuardAddressBlock> = Api::all(admin.clone());
    let base_b = counts(&nodes, "WireGuardAddressBlock");
    blocks
        .create(
            &PostParams::default(),
            &WireGuardAddressBlock::claim("net-a", &"10.91.1.0/24".parse().unwrap(), &node(1)),
        )
        .await
        .expect("block");
    let want_b = only(A, 1, None);
    assert_eq!(
        received(&nodes, "WireGuardAddressBlock", &base_b, &want_b).await,
        want_b
    );
    let meshed = |n: &SimNode| {
        n.agent
            .index
            .lock()
            .unwrap()
            .mesh_of("net-a")
            .iter()
            .any(|m| m.public_key == key)
    };
    let members: Vec<bool> = nodes.iter().map(meshed).collect();
    assert_eq!(
        members,
        (0..NODES).map(|i| A.contains(&i)).collect::<Vec<_>>(),
        "the new pod is a mesh peer in exactly net-a's members' indexes"
    );
    // And on exactly their devices, by the agents' own reconcile; net-b's
    // devices were never written after their first reconcile.
    let b_sets = sets(&nodes)[B.start..B.end].to_vec();
    let deadline = Instant::now() + Duration::from_secs(30);
    while on_devices(&nodes, &key) != a_devices && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        on_devices(&nodes, &key),
        a_devices,
        "devices with the new pod"
    );

    // 3. A key rotation (the status again): the same nodes.
    let rotated = PrivateKey::generate().unwrap().public_key();
    let base = counts(&nodes, kind);
    atts.patch_status(
        "new",
        &PatchParams::default(),
        &Patch::Merge(&status(&rotated)),
    )
    .await
    .expect("rotation");
    assert_eq!(received(&nodes, kind, &base, &want).await, want);
    let deadline = Instant::now() + Duration::from_secs(30);
    while on_devices(&nodes, &rotated) != a_devices && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(on_devices(&nodes, &rotated), a_devices, "the rotated key");
    assert!(
        on_devices(&nodes, &key).iter().all(|n| *n == 0),
        "the old key stayed on a device"
    );

    // 4. An external peer in team-a: the nodes with pods in team-a.
    let base_p = counts(&nodes, "WireGuardPeer");
    let peer: WireGuardPeer = serde_json::from_value(json!({
        "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardPeer",
        "metadata": {"name": "gw"},
        "spec": {"network": "net-a", "publicKey": key.to_base64().to_string(),
                 "endpoint": "127.0.0.1:9", "allowedIPs": ["10.91.200.0/24"]}
    }))
    .expect("peer");
    Api::<WireGuardPeer>::namespaced(admin.clone(), "team-a")
        .create(&PostParams::default(), &peer)
        .await
        .expect("peer");
    // Each team-a node hears the peer's creation, then its status: the
    // four nodes whose pods it selects each find it applied, and its
    // `Ready` condition is one fact about the peer, written once, not once
    // per node (each write would be sent to every node of the namespace
    // again).
    let want_p = only(A, 2, None);
    let got = received(&nodes, "WireGuardPeer", &base_p, &want_p).await;
    assert_eq!(
        got, want_p,
        "peer events per node (creation + one status write)"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while on_devices(&nodes, &key) != a_devices && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(on_devices(&nodes, &key), a_devices, "the external peer");
    assert_eq!(
        sets(&nodes)[B.start..B.end].to_vec(),
        b_sets,
        "net-b's devices were written for net-a's changes"
    );

    // 5. Node 4's pod goes: once the linger (1 s here) is over, node 4
    //    watches nothing more and has forgotten net-a; the next attachment
    //    of net-a reaches nodes 0..4 only.
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), "team-a")
        .delete("p4", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes[4].watched("network") != 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (nodes[4].watched("network"), nodes[4].watched("namespace")),
        (0.0, 0.0),
        "node 4 still watches"
    );
    assert!(
        !meshed(&nodes[4]),
        "node 4 forgot net-a's members when it stopped watching them"
    );
    let base = counts(&nodes, kind);
    atts.create(
        &PostParams::default(),
        &attachment("later", &node(2), "net-a"),
    )
    .await
    .expect("attachment");
    let want = only(0..4, 1, Some(2));
    assert_eq!(received(&nodes, kind, &base, &want).await, want);

    // 6. A latecomer: a pod of team-a on node 12 (no member until now),
    //    well after the peer's status was written. Node 12 applies the peer
    //    to its device and finds it already says so: it writes nothing
    //    (each write would reach every node of the namespace), so the
    //    others hear no more of the peer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let late = 12;
    let made: k8s_openapi::api::core::v1::Pod = Api::namespaced(admin.clone(), "team-a")
        .create(
            &PostParams::default(),
            &pod("late", &node(late), Some("net-a")),
        )
        .await
        .expect("pod");
    let base_p = counts(&nodes, "WireGuardPeer");
    nodes[late].hold(
        "team-a",
        "late",
        &made.metadata.uid.expect("uid"),
        "net-a",
        "10.91.100.13/16",
        51820,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes[late].devices.iter().any(|d| d.has_peer(&key)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        nodes[late].devices.iter().any(|d| d.has_peer(&key)),
        "the latecomer applied the peer"
    );
    let want_p = vec![0; NODES];
    assert_eq!(
        received(&nodes, "WireGuardPeer", &base_p, &want_p).await[..4],
        want_p[..4],
        "the latecomer wrote the peer's status again"
    );

    // The totals, for the record: what each node received of the project's
    // kinds over the whole run.
    let mut table = BTreeMap::new();
    for k in [
        "WireGuardAttachment",
        "WireGuardAddressBlock",
        "WireGuardPeer",
        "WireGuardNetwork",
    ] {
        table.insert(k, counts(&nodes, k));
    }
    eprintln!("events received per node: {table:?}");
    drop(nodes);
}
