//! Addresses: no duplicates, no leaks (docs/kubernetes.md, "Address
//! blocks"):
//! - every block the agents claimed is owned by its node's Node object
//!   (name and UID), which the agent learned from its own credentials (it
//!   may not read Nodes);
//! - a Node deleted: Kubernetes's garbage collector deletes its blocks. The
//!   node is a ghost (a Node object made with kubectl, no kubelet), its
//!   block written as its agent would (a token bound to it, through the
//!   admission policy, owned by it); deleting one of the two real nodes
//!   would take the rest of the test's pods with it. A block of the ghost
//!   without an owner shows what the ownership is for: it stays;
//! - the apiserver refuses an edit of a pool's blockSize and the removal
//!   of a pool;
//! - a pool added: the agents follow the edit (a new pod gets an address
//!   of each pool), and 2 nodes x 30 pods (the many-pods scenario) get
//!   no address twice;
//! - those pods gone: the blocks of the added pool they used are given
//!   back (each node keeps at most one, its reserve).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use wg_netns_testkit::cluster::pod_yaml;
use wg_netns_testkit::eventually;

use super::Ctx;

/// The pool added to the network `pods` (blocks of 16 addresses).
const ADDED_POOL: &str = "10.76.0.0/24";
const GHOST: &str = "wgk8s-ghost";

pub fn addresses(ctx: &mut Ctx) {
    let t = Instant::now();
    blocks_are_owned_by_their_node(ctx);
    a_deleted_nodes_blocks_go(ctx);
    eprintln!("addresses: ghost node collected in {:?}", t.elapsed());
    an_unowned_block_is_owned_then_given_back(ctx);
    eprintln!("addresses: unowned block tended in {:?}", t.elapsed());
    pool_edits_refused(ctx);
    add_pool(ctx);
    eprintln!("addresses: pool added in {:?}", t.elapsed());
    super::many_pods(ctx);
    eprintln!("addresses: many pods in {:?}", t.elapsed());
    blocks_given_back(ctx);
    eprintln!("addresses: blocks given back in {:?}", t.elapsed());
}

fn node_uid(ctx: &Ctx, node: &str) -> String {
    ctx.c
        .kubectl_ok(&["get", "node", node, "-o", "jsonpath={.metadata.uid}"])
        .trim()
        .to_string()
}

fn blocks(ctx: &Ctx) -> Vec<Value> {
    ctx.json(&["get", "wgblock"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn block_exists(ctx: &Ctx, name: &str) -> bool {
    ctx.c.kubectl(&["get", "wgblock", name]).status.success()
}

/// Every block of the two nodes names its Node, with the Node's UID, as
/// its one owner.
fn blocks_are_owned_by_their_node(ctx: &Ctx) {
    let uids: BTreeMap<String, String> = (1..=2)
        .map(|i| {
            let n = ctx.c.node_netns(i);
            let uid = node_uid(ctx, &n);
            (n, uid)
        })
        .collect();
    let all = blocks(ctx);
    let mut seen = 0;
    for b in &all {
        let node = b["spec"]["nodeName"].as_str().unwrap_or_default();
        let Some(uid) = uids.get(node) else { continue };
        seen += 1;
        let want =
            serde_json::json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]);
        assert_eq!(
            b["metadata"]["ownerReferences"], want,
            "block {} is not owned by its node",
            b["metadata"]["name"]
        );
    }
    assert!(seen >= 2, "no blocks of the nodes: {all:?}");
}

/// A kubeconfig with a token of the agent's service account bound to Node
/// `node`, as the agents get theirs.
fn kubeconfig_bound_to(ctx: &Ctx, node: &str) -> std::path::PathBuf {
    let token = ctx.c.kubectl_ok(&[
        "create",
        "token",
        "wg-agent",
        "-n",
        "kube-system",
        "--bound-object-kind",
        "Node",
        "--bound-object-name",
        node,
        "--duration",
        "1h",
    ]);
    let cfg = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.250.0.1:6443\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
        ctx.c.dir().join("pki/ca.crt").display(),
        token.trim()
    );
    let path = ctx.c.dir().join(format!("{node}.kubeconfig"));
    std::fs::write(&path, cfg).expect("kubeconfig");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    path
}

fn block_yaml(network: &str, cidr: &str, node: &str, owner_uid: Option<&str>) -> String {
    let name = format!("{network}.{}", cidr.replace(['.', ':', '/'], "-"));
    let owner = owner_uid
        .map(|uid| {
            format!(", ownerReferences: [{{apiVersion: v1, kind: Node, name: {node}, uid: {uid}}}]")
        })
        .unwrap_or_default();
    format!(
        "apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardAddressBlock\n\
         metadata: {{name: {name}{owner}}}\nspec: {{network: {network}, cidr: \"{cidr}\", nodeName: {node}}}\n"
    )
}

/// A ghost Node's blocks: the one it owns is collected when the Node is
/// deleted; the one without an owner stays (and is deleted by the test).
fn a_deleted_nodes_blocks_go(ctx: &Ctx) {
    let c = ctx.c;
    c.apply(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {GHOST}, labels: {{wgk8s.test/ghost: \"true\"}}}}\n"
    ));
    let uid = node_uid(ctx, GHOST);
    assert!(!uid.is_empty());
    let kc = kubeconfig_bound_to(ctx, GHOST);
    // What the agent reads its Node's UID from: the apiserver's review of
    // its own credentials (`kubectl auth whoami`), no read of Nodes.
    let out = c
        .kubectl_as(&kc)
        .args(["auth", "whoami", "-o", "json"])
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let me: Value = serde_json::from_slice(&out.stdout).expect("json");
    let extra = &me["status"]["userInfo"]["extra"];
    assert_eq!(
        extra[wg_agent::blocks::EXTRA_NODE_NAME],
        serde_json::json!([GHOST]),
        "{me}"
    );
    assert_eq!(
        extra[wg_agent::blocks::EXTRA_NODE_UID],
        serde_json::json!([uid]),
        "{me}"
    );
    // Its agent claims two blocks (through the admission policy): owned,
    // as agents claim them, and not (as blocks were before).
    let owned = "ghost.10-75-0-0-28";
    let unowned = "ghost.10-75-0-16-28";
    for yaml in [
        block_yaml("ghost", "10.75.0.0/28", GHOST, Some(&uid)),
        block_yaml("ghost", "10.75.0.16/28", GHOST, None),
    ] {
        let out = c
            .kubectl_as(&kc)
            .args(["create", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut p| {
                use std::io::Write;
                p.stdin.take().expect("stdin").write_all(yaml.as_bytes())?;
                p.wait_with_output()
            })
            .expect("kubectl");
        assert!(
            out.status.success(),
            "the ghost's agent cannot claim: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.kubectl_ok(&["delete", "node", GHOST, "--wait=true"]);
    let t = Instant::now();
    let collected = eventually(Duration::from_secs(120), || !block_exists(ctx, owned));
    assert!(
        collected,
        "the deleted node's block {owned} stayed:\n{}",
        c.kubectl_ok(&["get", "wgblock", "-o", "wide"])
    );
    eprintln!(
        "addresses: the deleted node's block collected in {:?}",
        t.elapsed()
    );
    // The garbage collector had its chance at both: the one without an
    // owner is left for ever (what every block was before).
    std::thread::sleep(Duration::from_secs(5));
    assert!(block_exists(ctx, unowned), "the unowned block went too");
    c.kubectl_ok(&["delete", "wgblock", unowned]);
    let _ = std::fs::remove_file(kc);
}

/// A block of node 1 without an owner (as an older agent claimed them;
/// written here by an administrator of the group the admission policy
/// lets write blocks): node 1's agent makes its Node the owner (a patch,
/// through RBAC and the admission policy), and, the block being empty and
/// beyond its reserve, gives it back.
fn an_unowned_block_is_owned_then_given_back(ctx: &Ctx) {
    let c = ctx.c;
    let node = c.node_netns(1);
    let taken: Vec<wg_netns::IpNetwork> = blocks(ctx)
        .iter()
        .filter_map(|b| b["spec"]["cidr"].as_str()?.parse().ok())
        .collect();
    let cidr = (0..=255u8)
        .rev()
        .map(|i| format!("10.77.{i}.240/28"))
        .find(|s| {
            let n: wg_netns::IpNetwork = s.parse().expect("cidr");
            taken
                .iter()
                .all(|t| !t.contains(n.network()) && !n.contains(t.network()))
        })
        .expect("a free block");
    let name = format!("pods.{}", cidr.replace(['.', '/'], "-"));
    let out = c.kubectl_stdin(
        &[
            "create",
            "--as=wgk8s-test-admin",
            "--as-group=wg-netns:admins",
            "--as-group=system:masters",
            "-f",
            "-",
        ],
        Some(&block_yaml("pods", &cidr, &node, None)),
    );
    assert!(
        out.status.success(),
        "cannot create {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owned = eventually(Duration::from_secs(90), || {
        std::fs::read_to_string(ctx.agent_log(1))
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.contains("made the node the owner of its address block") && l.contains(&cidr)
            })
    });
    assert!(owned, "{name} never got its owner:\n{}", ctx.log_tail(1));
    let gone = eventually(Duration::from_secs(90), || !block_exists(ctx, &name));
    assert!(
        gone,
        "the empty block {name} was not given back:\n{}",
        ctx.log_tail(1)
    );
}

/// The apiserver refuses what would cut blocks overlapping the nodes'.
fn pool_edits_refused(ctx: &Ctx) {
    let c = ctx.c;
    let pools = |v: &str| {
        c.kubectl(&[
            "patch",
            "wgnet",
            "pods",
            "--type=merge",
            "-p",
            &format!("{{\"spec\": {{\"addressPools\": {v}}}}}"),
        ])
    };
    let out = pools(&format!(
        "[{{\"cidr\": \"{}\", \"blockSize\": 26}}]",
        super::POOL
    ));
    assert!(!out.status.success(), "a blockSize edit was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("blockSize cannot change"), "{err}");
    let out = pools(&format!(
        "[{{\"cidr\": \"{ADDED_POOL}\", \"blockSize\": 28}}]"
    ));
    assert!(!out.status.success(), "a pool's removal was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("can be added, not removed"), "{err}");
}

/// Add a pool; a new pod on each node gets an address of each pool.
fn add_pool(ctx: &Ctx) {
    let c = ctx.c;
    c.kubectl_ok(&[
        "patch",
        "wgnet",
        "pods",
        "--type=json",
        "-p",
        &format!(
            "[{{\"op\": \"add\", \"path\": \"/spec/addressPools/-\", \"value\": {{\"cidr\": \"{ADDED_POOL}\", \"blockSize\": 28}}}}]"
        ),
    ]);
    let added: wg_netns::IpNetwork = ADDED_POOL.parse().expect("pool");
    for i in 1..=2 {
        let pod = format!("pool2-{i}");
        c.apply(&pod_yaml(&pod, &c.node_netns(i), "pool2", Some("pods")));
        if let Err(e) = c.wait_pod_running(&pod, Duration::from_secs(90)) {
            panic!("{pod}: {e}\n{}", ctx.log_tail(i));
        }
        let mut addrs = Vec::new();
        let ok = eventually(Duration::from_secs(30), || {
            addrs = ctx
                .attachment(&pod)
                .and_then(|a| a["status"]["addresses"].as_array().cloned())
                .unwrap_or_default();
            addrs.len() == 2
        });
        assert!(ok, "{pod}: not an address per pool: {addrs:?}");
        let second: wg_netns::IpNetwork = addrs[1]
            .as_str()
            .unwrap_or_default()
            .parse()
            .expect("address");
        assert!(added.contains(second.ip()), "{pod}: {addrs:?}");
        assert_eq!(second.prefix(), added.prefix(), "{pod}: {addrs:?}");
    }
    c.kubectl_ok(&[
        "delete",
        "pods",
        "-l",
        "app=pool2",
        "--wait=true",
        "--timeout=120s",
    ]);
    let gone = eventually(Duration::from_secs(60), || {
        ctx.attachment("pool2-1").is_none() && ctx.attachment("pool2-2").is_none()
    });
    assert!(gone, "the probes' attachments stayed");
}

/// The added pool's blocks: the many pods needed at least two per node
/// (30 addresses, 16 a block); with the pods gone, each node gives back
/// all but its reserve (an empty block is released at the agent's next
/// garbage collection, every 30 s).
fn blocks_given_back(ctx: &Ctx) {
    let added: wg_netns::IpNetwork = ADDED_POOL.parse().expect("pool");
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let ok = eventually(Duration::from_secs(100), || {
        per_node.clear();
        for b in blocks(ctx) {
            let in_added = b["spec"]["cidr"]
                .as_str()
                .and_then(|s| s.parse::<wg_netns::IpNetwork>().ok())
                .is_some_and(|n| added.contains(n.network()));
            if in_added && b["spec"]["network"] == "pods" {
                let node = b["spec"]["nodeName"].as_str().unwrap_or_default();
                *per_node.entry(node.to_string()).or_default() += 1;
            }
        }
        per_node.values().all(|&n| n <= 1)
    });
    assert!(
        ok,
        "blocks of {ADDED_POOL} stayed claimed after their pods went: {per_node:?}\n{}",
        ctx.c.kubectl_ok(&["get", "wgblock", "-o", "wide"])
    );
}
