//! Cluster scale, simulated: N node names, each running the agent's real
//! watches, index, scope and reconcile loops in this process (`tests/sim/`),
//! against a real kube-apiserver + etcd (`scripts/apiserver-lite`); each
//! mesh node holds one recording device (its first pod's interface,
//! reconciled by the agent like any other). Per cluster size, side by side
//! in one run:
//!
//! 1. objects delivered cluster-wide per new pod (its attachment created,
//!    then its status with key and address), against what watching every
//!    attachment of the cluster delivered (every node, twice);
//! 2. the time from that status write until every member node's index has
//!    the new pod as a mesh peer, and until every member's device has it
//!    (p50, p99);
//! 3. what one node holds in its index (a node of the mesh, a node of no
//!    network) and the memory each costs this process (the mesh nodes are
//!    started first, the others after, each group's RSS growth divided by
//!    its size);
//! 4. the apiserver's CPU at rest (10 s, every node watching) and per new
//!    pod, its memory, and etcd's size;
//! 5. the rest of the workload, each until every member's device has it:
//!    a key rotation (a member's status with a new key), a peer edit
//!    (a WireGuardPeer's allowedIPs in the mesh's namespace), a pod gone
//!    (its attachment deleted).
//!
//! The cluster: `--pods` (30) pods per node, the pods of every tenth node
//! (10% of the pods) in one mesh network `big`, the rest in none; one
//! address block per mesh node; every pod its own key. Not a test:
//! nothing fails on a number.
//!
//! `cargo bench -p wg-agent --bench cluster_scale -- [--sizes 10,100,1000]
//! [--pods 30] [--samples 20] [--profile DIR]`
//!
//! `--profile DIR`: a CPU profile of the kube-apiserver over the workload
//! of each size (`DIR/apiserver-N.pprof`, from the first new pod for 20 s;
//! `go tool pprof -top` reads it).

#[path = "../tests/sim/mod.rs"]
mod sim;

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use sim::{flag, pct, pod, Lite, SimNode};
use wg_k8s_types::{WireGuardAddressBlock, WireGuardAttachment, WireGuardNetwork, WireGuardPeer};
use wg_netns::PrivateKey;

fn num(name: &str, default: usize) -> usize {
    flag(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Objects one node's index holds: mesh members, blocks, peers, pods.
fn held(n: &SimNode) -> usize {
    let i = n.agent.index.lock().unwrap_or_else(|e| e.into_inner());
    i.mesh.values().map(|m| m.len()).sum::<usize>()
        + i.blocks.values().map(|m| m.len()).sum::<usize>()
        + i.peers.values().map(|m| m.len()).sum::<usize>()
        + i.pods.len()
        + i.own_attachments.len()
}

fn attachment(name: &str, node: &str, uid: &str) -> WireGuardAttachment {
    serde_json::from_value(json!({
        "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardAttachment",
        "metadata": {"name": name},
        "spec": {"network": "big", "podName": name, "podUID": uid,
                 "nodeName": node, "interface": "wg0"}
    }))
    .expect("attachment")
}

/// Node `i`'s address block in `big` (mesh nodes only: every tenth).
fn block_of(i: usize) -> String {
    format!("10.{}.{}.0/24", 100 + i / 10 / 256, (i / 10) % 256)
}

struct Row {
    nodes: usize,
    members: usize,
    per_pod: f64,
    before: usize,
    p50: f64,
    p99: f64,
    dev: (f64, f64),
    first_mesh: f64,
    held_member: usize,
    held_other: usize,
    rss_member: f64,
    rss_other: f64,
    cpu_idle: f64,
    cpu_per_pod: f64,
    api_rss: f64,
    etcd_mib: f64,
    setup: f64,
    rotation: (f64, f64),
    edit: (f64, f64),
    gone: (f64, f64),
}

/// Wait (at most 60 s) until `done` holds; the milliseconds since `from`.
async fn until(from: Instant, done: impl Fn() -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    from.elapsed().as_secs_f64() * 1000.0
}

fn p50_p99(v: &mut [f64]) -> (f64, f64) {
    (pct(&mut v.to_vec(), 0.5), pct(v, 0.99))
}

async fn size(n: usize, pods: usize, samples: usize, profile: Option<&str>) -> Row {
    let t0 = Instant::now();
    let lite = Lite::up().expect("apiserver-lite");
    lite.install_crds().await;
    let admin: Client = lite.client().await;
    for ns in ["mesh", "other"] {
        lite.namespace(&admin, ns).await;
    }
    let net: WireGuardNetwork = serde_json::from_value(json!({
        "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardNetwork",
        "metadata": {"name": "big"},
        "spec": {"addressPools": [{"cidr": "10.100.0.0/14", "blockSize": 24}], "mesh": true}
    }))
    .expect("network");
    Api::<WireGuardNetwork>::all(admin.clone())
        .create(&PostParams::default(), &net)
        .await
        .expect("network");
    let node = |i: usize| format!("node-{i}");
    let mesh_node = |i: usize| i.is_multiple_of(10);
    // The pods, their attachments (with key and address) and the blocks;
    // the UIDs of the mesh nodes' first pods, whose devices are held.
    let addr_of = |i: usize, j: usize| block_of(i).replace(".0/24", &format!(".{}/14", j + 1));
    let firsts: Vec<(usize, String)> = stream::iter(0..n * pods)
        .map(|k| {
            let admin = admin.clone();
            async move {
                let (i, j) = (k / pods, k % pods);
                let ns = if mesh_node(i) { "mesh" } else { "other" };
                let name = format!("p{i}-{j}");
                let p = pod(&name, &node(i), mesh_node(i).then_some("big"));
                let uid = Api::namespaced(admin.clone(), ns)
                    .create(&PostParams::default(), &p)
                    .await
                    .ok()
                    .and_then(|p: k8s_openapi::api::core::v1::Pod| p.metadata.uid)
                    .unwrap_or_else(|| format!("uid-{name}"));
                if mesh_node(i) {
                    let api: Api<WireGuardAttachment> = Api::namespaced(admin, ns);
                    let _ = api
                        .create(&PostParams::default(), &attachment(&name, &node(i), &uid))
                        .await;
                    let key = PrivateKey::generate().expect("key").public_key();
                    let st = json!({"status": {"publicKey": key.to_base64().to_string(),
                                               "addresses": [addr_of(i, j)]}});
                    let _ = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&st))
                        .await;
                }
                (mesh_node(i) && j == 0).then_some((i, uid))
            }
        })
        .buffer_unordered(32)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    let blocks: Api<WireGuardAddressBlock> = Api::all(admin.clone());
    for i in (0..n).filter(|i| mesh_node(*i)) {
        let b = WireGuardAddressBlock::claim("big", &block_of(i).parse().expect("cidr"), &node(i));
        blocks
            .create(&PostParams::default(), &b)
            .await
            .expect("block");
    }
    let listed = |nodes: &[Option<SimNode>], i: usize| {
        nodes[i].as_ref().is_some_and(|s| {
            s.agent.is_synced()
                && (!mesh_node(i)
                    || s.agent
                        .index
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .scope_listed("big", "mesh"))
        })
    };
    // The mesh nodes first, then the others: each group's memory.
    let mut slots: Vec<Option<SimNode>> = (0..n).map(|_| None).collect();
    let mut rss = Vec::new();
    for group in [true, false] {
        let before = sim::rss_mib("self");
        let ids: Vec<usize> = (0..n).filter(|i| mesh_node(*i) == group).collect();
        for &i in &ids {
            slots[i] = Some(SimNode::start(&lite, &node(i), "60s").await);
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline && !ids.iter().all(|&i| listed(&slots, i)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Settled: what the lists brought is in the indexes.
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss.push((sim::rss_mib("self") - before) / ids.len().max(1) as f64);
    }
    let mut nodes: Vec<SimNode> = slots.into_iter().flatten().collect();
    // Each mesh node's first pod gets its interface: the agent meshes it
    // with every other pod of the network.
    let mesh_start = Instant::now();
    for (i, uid) in &firsts {
        nodes[*i].hold(
            "mesh",
            &format!("p{i}-0"),
            uid,
            "big",
            &addr_of(*i, 0),
            51820,
        );
    }
    let full = firsts.len() * pods - 1;
    let first_mesh = until(mesh_start, || {
        firsts
            .iter()
            .all(|(i, _)| nodes[*i].devices.iter().all(|d| d.peers() >= full))
    })
    .await;
    for (i, _) in &firsts {
        for d in &nodes[*i].devices {
            if d.peers() < full {
                eprintln!("node-{i}: {} of {full} peers on its device", d.peers());
            }
        }
    }
    let setup = t0.elapsed().as_secs_f64();
    let cpu0 = lite.apiserver_cpu();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu_idle = (lite.apiserver_cpu() - cpu0) / 10.0;
    let cpu1 = lite.apiserver_cpu();
    let phase = Instant::now();
    let kind = "WireGuardAttachment";
    let total = |nodes: &[SimNode]| nodes.iter().map(|s| s.events(kind)).sum::<f64>();
    let mut delivered = Vec::new();
    let members: Vec<usize> = (0..n).filter(|i| mesh_node(*i)).collect();
    let index_of = |i: usize| {
        nodes[i]
            .agent
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    };
    let has_key = |i: usize, k: &wg_netns::PublicKey| {
        index_of(i)
            .mesh_of("big")
            .iter()
            .any(|m| m.public_key == *k)
    };
    let on_device =
        |i: usize, k: &wg_netns::PublicKey| nodes[i].devices.iter().all(|d| d.has_peer(k));
    let mut times = Vec::new();
    let mut dev_times = Vec::new();
    let mut fresh_keys = Vec::new();
    let api: Api<WireGuardAttachment> = Api::namespaced(admin.clone(), "mesh");
    let profiling = profile.and_then(|dir| {
        let out = std::path::Path::new(dir).join(format!("apiserver-{n}.pprof"));
        lite.profile(20, &out)
            .map_err(|e| eprintln!("no apiserver profile: {e}"))
            .ok()
    });
    for s in 0..samples {
        let host = members[s % members.len()];
        let name = format!("new-{s}");
        let before = total(&nodes);
        api.create(
            &PostParams::default(),
            &attachment(&name, &node(host), &format!("uid-{name}")),
        )
        .await
        .expect("attachment");
        let fresh = PrivateKey::generate().expect("key").public_key();
        let addr = block_of(host).replace(".0/24", &format!(".{}/14", 200 + s));
        let st =
            json!({"status": {"publicKey": fresh.to_base64().to_string(), "addresses": [addr]}});
        let written = Instant::now();
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&st))
            .await
            .expect("status");
        times.push(until(written, || members.iter().all(|&i| has_key(i, &fresh))).await);
        dev_times.push(until(written, || members.iter().all(|&i| on_device(i, &fresh))).await);
        // Let stragglers arrive before counting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        delivered.push(total(&nodes) - before);
        fresh_keys.push((name, fresh));
    }
    // The CPU of the new pods, less what the apiserver spends at rest.
    let cpu_per_pod = ((lite.apiserver_cpu() - cpu1) - cpu_idle * phase.elapsed().as_secs_f64())
        .max(0.0)
        / samples.max(1) as f64;

    // Key rotations of members that were there from the start.
    let mut rotations = Vec::new();
    for s in 0..samples {
        let host = members[s % members.len()];
        // Not the first pod: that one's device is the measuring one.
        let j = 1 + s % (pods - 1).max(1);
        let name = format!("p{host}-{j}");
        let k = PrivateKey::generate().expect("key").public_key();
        let addr = addr_of(host, j);
        let st = json!({"status": {"publicKey": k.to_base64().to_string(), "addresses": [addr]}});
        let written = Instant::now();
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&st))
            .await
            .expect("rotation");
        rotations.push(until(written, || members.iter().all(|&i| on_device(i, &k))).await);
    }

    // Peer edits: one WireGuardPeer of the mesh's namespace, its
    // allowedIPs changed each time.
    let peers: Api<WireGuardPeer> = Api::namespaced(admin.clone(), "mesh");
    let gw = PrivateKey::generate().expect("key").public_key();
    let peer_with = |cidr: &str| -> WireGuardPeer {
        serde_json::from_value(json!({
            "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardPeer",
            "metadata": {"name": "gw"},
            "spec": {"network": "big", "publicKey": gw.to_base64().to_string(),
                     "endpoint": "127.0.0.1:9", "allowedIPs": [cidr]}
        }))
        .expect("peer")
    };
    peers
        .create(&PostParams::default(), &peer_with("10.103.0.0/24"))
        .await
        .expect("peer");
    // Its allowed IPs stay inside the network's pool (10.100.0.0/14, the
    // blocks end at 10.100.99.0/24): no route is ever wanted.
    let has_peer = |i: usize, cidr: &str| nodes[i].devices.iter().all(|d| d.allows(&gw, cidr));
    until(Instant::now(), || {
        members.iter().all(|&i| has_peer(i, "10.103.0.0/24"))
    })
    .await;
    let mut edits = Vec::new();
    for s in 1..=samples {
        let cidr = format!("10.103.{s}.0/24");
        let written = Instant::now();
        peers
            .replace("gw", &PostParams::default(), &{
                let mut p = peer_with(&cidr);
                p.metadata.resource_version = peers
                    .get("gw")
                    .await
                    .expect("peer")
                    .metadata
                    .resource_version;
                p
            })
            .await
            .expect("edit");
        edits.push(until(written, || members.iter().all(|&i| has_peer(i, &cidr))).await);
    }

    // Pods gone: the new pods' attachments deleted.
    let mut gone = Vec::new();
    for (name, k) in &fresh_keys {
        let written = Instant::now();
        api.delete(name, &Default::default()).await.expect("delete");
        gone.push(
            until(written, || {
                members
                    .iter()
                    .all(|&i| nodes[i].devices.iter().all(|d| !d.has_peer(k)))
            })
            .await,
        );
    }
    if let Some(mut p) = profiling {
        let _ = p.wait();
    }
    let row = Row {
        nodes: n,
        members: members.len(),
        per_pod: delivered.iter().sum::<f64>() / delivered.len().max(1) as f64,
        before: 2 * n,
        p50: pct(&mut times.clone(), 0.5),
        p99: pct(&mut times, 0.99),
        dev: p50_p99(&mut dev_times),
        first_mesh,
        held_member: held(&nodes[0]),
        held_other: nodes.get(1).map(held).unwrap_or(0),
        rss_member: rss[0],
        rss_other: rss.get(1).copied().unwrap_or(0.0),
        cpu_idle,
        cpu_per_pod,
        api_rss: lite.apiserver_rss_mib(),
        etcd_mib: lite.etcd_bytes() as f64 / (1024.0 * 1024.0),
        setup,
        rotation: p50_p99(&mut rotations),
        edit: p50_p99(&mut edits),
        gone: p50_p99(&mut gone),
    };
    drop(nodes);
    row
}

fn main() {
    let sizes: Vec<usize> = flag("--sizes")
        .unwrap_or_else(|| "10,100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let pods = num("--pods", 30);
    let samples = num("--samples", 20);
    let profile = flag("--profile");
    // Every simulated node holds a connection per watch.
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(1 << 20),
            maximum: Some(1 << 20),
        },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| nodes | pods | mesh nodes | attachment objects delivered per new pod | before (every node, twice) | new pod in every member's index p50 / p99 | on every member's device p50 / p99 | objects held: mesh node / other node | memory: mesh node / other node | apiserver CPU at rest / per new pod | apiserver RSS | etcd | setup |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for n in sizes {
        let r = rt.block_on(size(n, pods, samples, profile.as_deref()));
        println!(
            "| {} | {} | {} | {:.1} | {} | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {} / {} | {:.2} / {:.2} MiB | {:.1}% / {:.0} ms | {:.0} MiB | {:.0} MiB | {:.0} s |",
            r.nodes,
            r.nodes * pods,
            r.members,
            r.per_pod,
            r.before,
            r.p50,
            r.p99,
            r.dev.0,
            r.dev.1,
            r.held_member,
            r.held_other,
            r.rss_member,
            r.rss_other,
            r.cpu_idle * 100.0,
            r.cpu_per_pod * 1000.0,
            r.api_rss,
            r.etcd_mib,
            r.setup
        );
        rows.push(r);
    }
    println!();
    println!("| nodes | first mesh on every member's device | key rotation on every member's device p50 / p99 | peer edit p50 / p99 | pod gone p50 / p99 |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} ms | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {:.0} / {:.0} ms |",
            r.nodes,
            r.first_mesh,
            r.rotation.0,
            r.rotation.1,
            r.edit.0,
            r.edit.1,
            r.gone.0,
            r.gone.1
        );
    }
}
