//! The agent's verbs without devices, root or a cluster: requests through
//! [`Agent::handle`] against a scripted apiserver, stopping before a device
//! would be made; the reconciler, the garbage collection and the status on
//! interfaces "held" without a device, whose control socket, when one is
//! needed, is a fake ([`FakeUapi`]) in a temp dir.

use super::*;
use crate::testutil::{
    cni_requests, metric, netns_fd, pod_json, status, test_agent, test_agent_with, FakeUapi, Seen,
    TestAgent, NODE, NODE_IP,
};
use http::Method;
use serde_json::{json, Value};
use wg_attach::managed::PodRef;
use wg_netns::{BackendKind, PrivateKey, PublicKey, SocketNamespace};

const PODS: &str = "/api/v1/namespaces/ns1/pods";
const BLOCKS: &str = "/apis/wireguard.wg-netns.io/v1alpha1/wireguardaddressblocks";

fn pod_ref(name: &str, uid: Option<&str>) -> PodRef {
    PodRef {
        namespace: "ns1".into(),
        name: name.into(),
        uid: uid.map(str::to_string),
    }
}

fn add(name: &str) -> Request {
    Request::new(Verb::Add, "c1", "eth0", "/proc/self/ns/net").pod(Some(pod_ref(name, None)))
}

fn failure(r: &Reply) -> &Failure {
    match r {
        Reply::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

pub(crate) fn network_obj(name: &str, spec: Value) -> wg_k8s_types::WireGuardNetwork {
    serde_json::from_value(
        json!({"apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardNetwork",
        "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

fn pod_obj(name: &str, uid: &str, annotations: Value) -> Pod {
    let mut v = pod_json("ns1", name, uid, None);
    v["metadata"]["annotations"] = annotations;
    serde_json::from_value(v).unwrap()
}

/// The scripted apiserver's answer to a list of this node's blocks: none.
fn no_blocks() -> (u16, Value) {
    (
        200,
        json!({"apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardAddressBlockList",
               "metadata": {"resourceVersion": "1"}, "items": []}),
    )
}

fn count(log: &[Seen], method: &Method, path_start: &str) -> usize {
    log.iter()
        .filter(|s| s.method == *method && s.path.starts_with(path_start))
        .count()
}

// ------------------------------------------------------------ CNI verbs

#[tokio::test]
async fn add_without_the_pods_identity_is_invalid_config() {
    let t = test_agent(|_| status(500, "InternalError"));
    let req = Request::new(Verb::Add, "c1", "eth0", "/proc/self/ns/net");
    let r = t.agent.handle(req, Some(netns_fd())).await;
    let f = failure(&r);
    assert_eq!(f.code, 7, "{f:?}");
    assert!(f.details.contains("K8S_POD_NAME"), "{f:?}");
    assert!(t.log.all().is_empty(), "nothing to ask the apiserver");
    assert_eq!(cni_requests(&t.agent, "ADD", "error"), 1.0);
}

#[tokio::test]
async fn add_without_a_namespace_descriptor_fails() {
    let t = test_agent(|_| status(500, "InternalError"));
    let r = t.agent.handle(add("web"), None).await;
    assert_eq!(failure(&r).code, 5);
    assert!(t.log.all().is_empty());
}

#[tokio::test]
async fn add_of_a_pod_that_asks_for_no_network_is_skipped() {
    let mut t = test_agent(|s| match (&s.method, s.path.as_str()) {
        (&Method::GET, "/api/v1/namespaces/ns1/pods/web") => {
            (200, pod_json("ns1", "web", "u1", None))
        }
        _ => status(404, "NotFound"),
    });
    let r = t.agent.handle(add("web"), Some(netns_fd())).await;
    match &r {
        Reply::Skipped { reason } => assert!(reason.contains("ns1/web"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.log.lines(), vec![format!("GET {PODS}/web")]);
    assert!(t.published().is_empty());
    assert!(t.agent.keys().is_empty());
    assert_eq!(cni_requests(&t.agent, "ADD", "skipped"), 1.0);
}

/// A network whose namespaceSelector does not select the pod's namespace
/// refuses the pod, naming the rule, before anything is made; selected
/// once the namespace gets the label.
#[tokio::test]
async fn add_of_a_pod_whose_namespace_the_network_does_not_admit_is_refused() {
    let t = test_agent(|_| status(500, "InternalError"));
    {
        let mut idx = t.agent.index.lock().unwrap();
        idx.network(&network_obj(
            "n0",
            json!({"addressPools": [{"cidr": "10.77.0.0/16"}],
                   "namespaceSelector": {"matchLabels": {"wg": "yes"}}}),
        ));
        idx.pod(&pod_obj(
            "web",
            "u1",
            json!({wg_k8s_types::ANNOTATION_NETWORK: "n0"}),
        ));
        let ns: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(json!({"metadata": {"name": "ns1"}})).unwrap();
        idx.namespace(&ns);
    }
    let r = t.agent.handle(add("web"), Some(netns_fd())).await;
    let f = failure(&r);
    assert_eq!(f.code, 7, "{f:?}");
    assert!(f.msg.contains("namespace ns1 may not join"), "{f:?}");
    assert!(f.details.contains("namespaceSelector"), "{f:?}");
    assert!(t.agent.keys().is_empty(), "nothing was made");
    assert!(t.log.all().is_empty(), "nothing was asked");
    // Labelled: admitted (the ADD goes on, and fails later for want of
    // address blocks from this scripted apiserver: not for the namespace).
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "ns1", "labels": {"wg": "yes"}}}))
            .unwrap();
    t.agent.index.lock().unwrap().namespace(&ns);
    let r = t.agent.handle(add("web"), Some(netns_fd())).await;
    if let Reply::Failed(f) = &r {
        assert!(!f.msg.contains("may not join"), "{f:?}");
    }
}

#[tokio::test]
async fn the_index_answers_before_the_apiserver_unless_the_uid_differs() {
    let t = test_agent(|s| match s.path.as_str() {
        "/api/v1/namespaces/ns1/pods/web" => (200, pod_json("ns1", "web", "u2", None)),
        _ => status(404, "NotFound"),
    });
    t.agent
        .index
        .lock()
        .unwrap()
        .pod(&pod_obj("web", "u1", json!({})));
    let r = t.agent.handle(add("web"), Some(netns_fd())).await;
    assert!(matches!(r, Reply::Skipped { .. }), "{r:?}");
    assert!(t.log.all().is_empty(), "the pod came from the index");
    // The runtime names another UID: the index is stale, ask.
    let req = Request::new(Verb::Add, "c2", "eth0", "/proc/self/ns/net")
        .pod(Some(pod_ref("web", Some("u2"))));
    let r = t.agent.handle(req, Some(netns_fd())).await;
    assert!(matches!(r, Reply::Skipped { .. }), "{r:?}");
    assert_eq!(t.log.lines(), vec![format!("GET {PODS}/web")]);
}

#[tokio::test]
async fn a_failing_pod_read_is_try_again_and_counted() {
    let t = test_agent(|_| status(500, "InternalError"));
    let r = t.agent.handle(add("web"), Some(netns_fd())).await;
    let f = failure(&r);
    assert_eq!(f.code, 11, "{f:?}");
    assert!(f.msg.contains("ns1/web"), "{f:?}");
    assert!(f.details.contains("scripted InternalError"), "{f:?}");
    assert_eq!(
        metric(
            &t.agent,
            "wg_agent_apiserver_errors_total{operation=\"get_pod\"}"
        ),
        1.0
    );
    // A pod without a UID yet is try-again too.
    let t = test_agent(|_| {
        let mut p = pod_json("ns1", "web", "u1", None);
        p["metadata"].as_object_mut().unwrap().remove("uid");
        (200, p)
    });
    let r = t.agent.handle(add("web"), Some(netns_fd())).await;
    assert_eq!(failure(&r).code, 11);
}

#[tokio::test]
async fn an_unknown_network_is_try_again_and_an_invalid_one_invalid_config() {
    let t = test_agent(|s| match s.path.as_str() {
        "/api/v1/namespaces/ns1/pods/web" => (200, pod_json("ns1", "web", "u1", Some("n9"))),
        _ => status(500, "InternalError"),
    });
    let r = t.agent.handle(add("web"), Some(netns_fd())).await;
    let f = failure(&r);
    assert_eq!(f.code, 11, "{f:?}");
    assert!(f.msg.contains("n9"), "{f:?}");
    // Invalid: the reason is passed on.
    t.agent.index.lock().unwrap().network(&network_obj(
        "n9",
        json!({"addressPools": [{"cidr": "10.77.0.0/16", "blockSize": 8}]}),
    ));
    let r = t.agent.handle(add("web"), Some(netns_fd())).await;
    let f = failure(&r);
    assert_eq!(f.code, 7, "{f:?}");
    assert!(f.details.contains("blockSize"), "{f:?}");
    // The configured network wins over the annotation.
    let req = add("web").network(Some("n8".into()));
    let f = failure(&t.agent.handle(req, Some(netns_fd())).await).clone();
    assert_eq!(f.code, 11);
    assert!(f.msg.contains("n8"), "{f:?}");
    // Only pod reads: no block was listed or claimed.
    assert!(t.log.all().iter().all(|s| s.path.starts_with(PODS)));
    assert!(t.agent.keys().is_empty());
}

/// A network whose one pool has 4 blocks.
fn small_network(t: &TestAgent) {
    t.agent.index.lock().unwrap().network(&network_obj(
        "n0",
        json!({"addressPools": [{"cidr": "10.77.0.0/24", "blockSize": 26}]}),
    ));
}

#[tokio::test]
async fn an_exhausted_pool_is_try_again_and_leaves_nothing_held() {
    let mut t = test_agent(|s| match (&s.method, s.path.as_str()) {
        (&Method::GET, p) if p.starts_with(PODS) => (200, pod_json("ns1", "web", "u1", Some("n0"))),
        (&Method::GET, BLOCKS) => no_blocks(),
        (&Method::POST, BLOCKS) => status(409, "AlreadyExists"),
        // Each conflicting block is another node's.
        (&Method::GET, p) if p.starts_with(BLOCKS) => {
            let block = "10.77.0.0/26".parse().unwrap();
            let mut v =
                serde_json::to_value(WireGuardAddressBlock::claim("n0", &block, "node-2")).unwrap();
            v["metadata"]["uid"] = json!("other");
            (200, v)
        }
        _ => status(405, "MethodNotAllowed"),
    });
    small_network(&t);
    let r = t.agent.handle(add("web"), Some(netns_fd())).await;
    let f = failure(&r);
    assert_eq!(f.code, 11, "{f:?}");
    assert!(f.msg.contains("exhausted"), "{f:?}");
    let log = t.log.all();
    assert_eq!(
        count(&log, &Method::GET, BLOCKS) - 4,
        2,
        "one list of the node's blocks, one of the network's, four reads"
    );
    assert_eq!(
        count(&log, &Method::POST, BLOCKS),
        4,
        "every block tried once"
    );
    for s in log
        .iter()
        .filter(|s| s.method == Method::POST && s.path == BLOCKS)
    {
        assert_eq!(s.body["spec"]["nodeName"], NODE, "claimed for this node");
        assert_eq!(s.body["spec"]["network"], "n0");
    }
    assert!(t.agent.keys().is_empty(), "the failed ADD holds no slot");
    assert!(t.agent.ports_lock().is_empty(), "nor a port");
    assert!(t.published().is_empty());
    assert!(t.agent.keys.list().unwrap().is_empty(), "nor a key");
    // A conflict is no apiserver error.
    assert!(!t.agent.metrics.encode().contains("claim_block"));
    // The allocator is kept: the next ADD claims again without a list
    // of the node's blocks (the network's are listed before each claim).
    let r = t.agent.handle(add("web"), Some(netns_fd())).await;
    assert_eq!(failure(&r).code, 11);
    let log = t.log.all();
    assert_eq!(count(&log, &Method::POST, BLOCKS), 8);
    assert_eq!(count(&log, &Method::GET, BLOCKS), 1 + 2 + 8);
}

#[tokio::test]
async fn a_failing_claim_or_list_is_try_again_and_counted() {
    let t = test_agent(|s| match (&s.method, s.path.as_str()) {
        (&Method::GET, p) if p.starts_with(PODS) => (200, pod_json("ns1", "web", "u1", Some("n0"))),
        (&Method::GET, BLOCKS) => no_blocks(),
        _ => status(500, "InternalError"),
    });
    small_network(&t);
    let f = failure(&t.agent.handle(add("web"), Some(netns_fd())).await).clone();
    assert_eq!(f.code, 11);
    assert!(
        f.msg
            .contains("cannot claim an address block of 10.77.0.0/24"),
        "{f:?}"
    );
    assert!(f.details.contains("HTTP 500"), "{f:?}");
    assert_eq!(
        metric(
            &t.agent,
            "wg_agent_apiserver_errors_total{operation=\"claim_block\"}"
        ),
        1.0
    );
    assert!(t.agent.keys().is_empty());

    let t = test_agent(|s| match (&s.method, s.path.as_str()) {
        (&Method::GET, p) if p.starts_with(PODS) => (200, pod_json("ns1", "web", "u1", Some("n0"))),
        _ => status(403, "Forbidden"),
    });
    small_network(&t);
    for _ in 0..2 {
        let f = failure(&t.agent.handle(add("web"), Some(netns_fd())).await).clone();
        assert_eq!(f.code, 11);
        assert!(f.msg.contains("allocator not ready"), "{f:?}");
    }
    // No allocator is kept from a failed list: each ADD lists again.
    assert_eq!(count(&t.log.all(), &Method::GET, BLOCKS), 2);
    assert_eq!(
        metric(
            &t.agent,
            "wg_agent_apiserver_errors_total{operation=\"list_blocks\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn del_of_what_was_never_added_is_done() {
    let mut t = test_agent(|_| status(500, "InternalError"));
    for pod in [None, Some(pod_ref("web", Some("u1")))] {
        let req = Request::new(Verb::Del, "c1", "eth0", "").pod(pod);
        assert_eq!(t.agent.handle(req, None).await, Reply::Done);
    }
    assert!(t.log.all().is_empty());
    assert!(t.published().is_empty());
    assert_eq!(cni_requests(&t.agent, "DEL", "ok"), 2.0);
}

#[tokio::test]
async fn check_without_an_interface() {
    let t = test_agent(|s| match s.path.as_str() {
        "/api/v1/namespaces/ns1/pods/plain" => (200, pod_json("ns1", "plain", "u1", None)),
        "/api/v1/namespaces/ns1/pods/wired" => (200, pod_json("ns1", "wired", "u2", Some("n0"))),
        _ => status(500, "InternalError"),
    });
    let check = |pod: Option<PodRef>| Request::new(Verb::Check, "c1", "eth0", "/x").pod(pod);
    // A pod that asks for nothing has nothing to check.
    let r = t
        .agent
        .handle(check(Some(pod_ref("plain", None))), None)
        .await;
    assert_eq!(r, Reply::Done);
    // One that asks for a network must have its interface.
    let r = t
        .agent
        .handle(check(Some(pod_ref("wired", None))), None)
        .await;
    assert_eq!(failure(&r).code, 4);
    // So must one whose configuration names a network.
    let r = t
        .agent
        .handle(
            check(Some(pod_ref("plain", None))).network(Some("n0".into())),
            None,
        )
        .await;
    assert_eq!(failure(&r).code, 4);
    // An unreadable pod is a mismatch, not a pass.
    let r = t
        .agent
        .handle(check(Some(pod_ref("gone", None))), None)
        .await;
    assert_eq!(failure(&r).code, 4);
    let r = t.agent.handle(check(None), None).await;
    assert_eq!(failure(&r).code, 4);
}

// ------------------------------------------------ interfaces held without a device

/// A record of pod `ns/pod`'s interface `wg0` on `network`, as ADD saves it;
/// its key is created in the key store.
pub(crate) fn record(
    agent: &Agent,
    ns: &str,
    pod: &str,
    uid: &str,
    network: &str,
    address: &str,
    port: u16,
) -> LocalRecord {
    let kid = KeyId::new(uid, "wg0").unwrap();
    let (private, _) = agent.keys.get_or_create(&kid, "").unwrap();
    let key = Key::new(uid, "wg0").unwrap();
    LocalRecord {
        network: network.into(),
        namespace: ns.into(),
        pod: pod.into(),
        pod_uid: uid.into(),
        container_id: format!("c-{uid}"),
        cni_ifname: "eth0".into(),
        addresses: vec![address.parse().unwrap()],
        listen_port: port,
        public_key: private.public_key(),
        key_generation: String::new(),
        attachment: wg_netns::AttachmentRecord {
            interface: IfName::new("wg0").unwrap(),
            birth_name: IfName::derived("wga", key.as_str()).unwrap(),
            netns: "/proc/self/ns/net".into(),
            socket_namespace: SocketNamespace::Host,
            backend: BackendKind::Userspace,
            userspace_implementation: None,
        },
        created: now(),
    }
}

/// Hold `rec`'s interface as ADD leaves it, without a device: its control
/// socket is whatever listens under its birth name in the agent's socket
/// directory (nothing, or a [`FakeUapi`]). The interface index is one no
/// link has, and the tests keep routes unchanged, so no netlink request is
/// ever made.
pub(crate) fn hold(agent: &Agent, rec: LocalRecord) -> Key {
    let attachment: Attachment = serde_json::from_value(json!({
        "index": 2_000_000_000u32,
        "name": rec.attachment.interface.as_str(),
        "birthName": rec.attachment.birth_name.as_str(),
        "kind": "userspace",
        "publicKey": null,
        "mtu": 1420,
        "up": true,
    }))
    .unwrap();
    let place = Birthplace::new(&agent.node, &agent.node, &agent.backend).unwrap();
    agent.hold(rec, place, attachment).unwrap()
}

#[tokio::test]
async fn a_stale_del_of_another_sandbox_keeps_the_interface() {
    let mut t = test_agent(|_| status(500, "InternalError"));
    let rec = record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820);
    let key = hold(&t.agent, rec);
    // The pod's previous sandbox is torn down after the new one was made.
    let req = Request::new(Verb::Del, "c-old", "eth0", "/proc/self/ns/net")
        .pod(Some(pod_ref("web", Some("u1"))));
    assert_eq!(t.agent.handle(req, None).await, Reply::Done);
    assert_eq!(t.agent.keys(), vec![key.clone()]);
    assert!(t.agent.slot(&key).unwrap().lock().await.is_some());
    assert!(t.published().is_empty(), "its attachment object stays");
    assert_eq!(t.agent.records.load_all().0.len(), 1);
}

#[tokio::test]
async fn affected_names_the_interfaces_a_change_touches() {
    let t = test_agent(|_| status(500, "InternalError"));
    let a = hold(
        &t.agent,
        record(&t.agent, "ns1", "a", "u1", "n0", "10.77.0.2/16", 51820),
    );
    let b = hold(
        &t.agent,
        record(&t.agent, "ns2", "b", "u2", "n0", "10.77.0.3/16", 51821),
    );
    let c = hold(
        &t.agent,
        record(&t.agent, "ns1", "c", "u3", "n1", "10.78.0.2/16", 51822),
    );
    let got = |d: Vec<Dirty>| {
        let mut k = t.agent.affected(&d.into_iter().collect());
        k.sort();
        k
    };
    assert_eq!(
        got(vec![Dirty::Network("n0".into())]),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        got(vec![Dirty::Peers {
            network: "n0".into(),
            namespace: "ns1".into()
        }]),
        vec![a.clone()]
    );
    assert_eq!(
        got(vec![Dirty::Peers {
            network: "n1".into(),
            namespace: "ns2".into()
        }]),
        vec![]
    );
    assert_eq!(got(vec![Dirty::Pod("u3".into())]), vec![c.clone()]);
    assert_eq!(
        got(vec![Dirty::Pod("u2".into()), Dirty::Network("n1".into())]),
        vec![b.clone(), c.clone()]
    );
    assert_eq!(got(vec![Dirty::All]), vec![a.clone(), b.clone(), c.clone()]);
    // A slot busy with an ADD is included: it computes its own.
    let slot = t.agent.slot(&c).unwrap();
    let _busy = slot.lock().await;
    assert_eq!(got(vec![Dirty::Pod("u1".into())]), vec![a, c]);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn member(t: &TestAgent, name: &str, uid: &str, k: &PublicKey, address: &str) {
    let a: WireGuardAttachment = serde_json::from_value(json!({
        "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardAttachment",
        "metadata": {"name": name, "namespace": "ns2"},
        "spec": {"network": "n0", "podName": name, "podUID": uid, "nodeName": "node-2", "interface": "wg0"},
        "status": {"publicKey": k.to_base64(), "addresses": [address], "endpoint": "10.250.0.12:51820"},
    }))
    .unwrap();
    // Node 2's block holding the address: what lets it publish it.
    let ip: wg_netns::IpNetwork = address.parse().unwrap();
    let cidr = wg_netns::IpNetwork::new(ip.ip(), 24).unwrap();
    let cidr = wg_netns::normalize(cidr);
    let b: wg_k8s_types::WireGuardAddressBlock = serde_json::from_value(json!({
        "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardAddressBlock",
        "metadata": {"name": wg_k8s_types::WireGuardAddressBlock::name_for("n0", &cidr)},
        "spec": {"network": "n0", "cidr": cidr.to_string(), "nodeName": "node-2"},
    }))
    .unwrap();
    t.agent.index.lock().unwrap().block(&b);
    let d = t.agent.index.lock().unwrap().attachment(&a);
    assert_eq!(d, vec![Dirty::Network("n0".into())]);
}

fn external_peer(t: &TestAgent, ns: &str, name: &str, k: &PublicKey, app: &str) -> Vec<Dirty> {
    let p: wg_k8s_types::WireGuardPeer = serde_json::from_value(json!({
        "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardPeer",
        "metadata": {"name": name, "namespace": ns},
        // Inside the pods' own network: no route to add.
        "spec": {"network": "n0", "publicKey": k.to_base64(), "allowedIPs": ["10.77.200.0/24"],
                 "podSelector": {"matchLabels": {"app": app}}},
    }))
    .unwrap();
    t.agent.index.lock().unwrap().peer(&p)
}

/// Network `n0` (`spec`) and pod `ns1/web` (UID `u1`) in the index.
fn network_and_web(t: &TestAgent, spec: Value) {
    let mut idx = t.agent.index.lock().unwrap();
    idx.network(&network_obj("n0", spec));
    idx.pod(&pod_obj("web", "u1", json!({})));
}

/// The watches of network `n0` and namespace `ns1` listed, empty (what
/// the scope loop's watches do once the pod is there).
fn scope_listed(t: &TestAgent) {
    let mut idx = t.agent.index.lock().unwrap();
    idx.relisted_attachments_in("n0", &[]);
    idx.relisted_blocks_in("n0", &[]);
    idx.relisted_peers_in("ns1", &[]);
}

/// One pod `ns1/web` (UID `u1`) of network `n0` (`spec`) with its
/// interface held and a fake device (its key and port, no peer) answering
/// for it: what the reconcile tests start from.
fn held_device(t: &TestAgent, spec: Value) -> (Key, FakeUapi) {
    network_and_web(t, spec);
    let rec = record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820);
    let own_private = {
        let kid = KeyId::new("u1", "wg0").unwrap();
        t.agent.keys.get_or_create(&kid, "").unwrap().0
    };
    let key = hold(&t.agent, rec.clone());
    let dev = FakeUapi::start(
        &t.uapi_dir,
        rec.attachment.birth_name.as_str(),
        format!(
            "private_key={}\nlisten_port=51820\n",
            hex(own_private.as_bytes())
        ),
    );
    (key, dev)
}

/// A device write that fails is retried after a backoff, by itself: not
/// left until some other change touches the interface (the trust issue's
/// "a daemon stopped across a peer edit: the route never reached the
/// pod").
#[tokio::test]
async fn a_failed_device_write_is_retried_with_backoff() {
    let mut t = test_agent(|_| status(500, "InternalError"));
    let (key, dev) = held_device(&t, json!({"addressPools": [{"cidr": "10.77.0.0/16"}]}));
    t.agent.set_synced();
    scope_listed(&t);
    let _ = t.marked();
    let other = PrivateKey::generate().unwrap().public_key();
    member(&t, "db", "u2", &other, "10.77.0.3/16");
    dev.fail_next_sets(2);
    let agent = Arc::clone(&t.agent);
    let errors = || metric(&agent, "wg_agent_reconcile_errors_total");
    assert_eq!(
        reconcile(&t, &dev, vec![Dirty::Network("n0".into())])
            .await
            .len(),
        1
    );
    assert_eq!(errors(), 1.0);
    // Nothing else happens in the cluster; the retry comes by itself.
    let started = std::time::Instant::now();
    let mut marked = Vec::new();
    while marked.is_empty() && started.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        marked = t.marked();
    }
    assert_eq!(marked, vec![Dirty::Pod("u1".into())], "no retry queued");
    let first = started.elapsed();
    // It fails again: the next retry waits longer.
    assert_eq!(reconcile(&t, &dev, marked).await.len(), 1);
    assert_eq!(errors(), 2.0);
    let started = std::time::Instant::now();
    let mut marked = Vec::new();
    while marked.is_empty() && started.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        marked = t.marked();
    }
    assert_eq!(marked, vec![Dirty::Pod("u1".into())], "no second retry");
    assert!(started.elapsed() > first, "the backoff did not grow");
    // The third write goes through: the member is on the device.
    let sets = reconcile(&t, &dev, marked).await;
    assert_eq!(sets.len(), 1);
    assert!(sets[0].contains(&format!("public_key={}", hex(other.as_bytes()))));
    assert_eq!(errors(), 2.0);
    // And no retry is pending any more.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(t.marked().is_empty());
    let _ = key;
}

/// A WireGuardPeer's `Ready` is one fact every agent applying it comes
/// to, and each write of it reaches every node of the namespace: an agent
/// writes it only when the peer does not already say it, the first time
/// with the peer's creation as its transition (so agents racing to write
/// it write the same content).
#[tokio::test]
async fn a_peers_ready_is_written_only_when_the_peer_does_not_say_it() {
    let t = test_agent(|s| match s.method {
        Method::PATCH => (200, json!({})),
        _ => status(500, "InternalError"),
    });
    let (_key, dev) = held_device(&t, json!({"addressPools": [{"cidr": "10.77.0.0/16"}]}));
    t.agent.set_synced();
    scope_listed(&t);
    let created = "2026-01-02T03:04:05Z";
    let peer = |name: &str, st: Value| {
        let k = PrivateKey::generate().unwrap().public_key();
        let p: wg_k8s_types::WireGuardPeer = serde_json::from_value(json!({
            "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardPeer",
            "metadata": {"name": name, "namespace": "ns1", "creationTimestamp": created},
            "spec": {"network": "n0", "publicKey": k.to_base64(), "allowedIPs": ["10.77.200.0/24"]},
            "status": st,
        }))
        .unwrap();
        t.agent.index.lock().unwrap().peer(&p)
    };
    peer("fresh", json!({}));
    peer(
        "said",
        json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Applied",
            "message": "applied to the pods it selects", "lastTransitionTime": "2026-01-02T03:04:09Z"}]}),
    );
    peer(
        "stale",
        json!({"conditions": [{"type": "Ready", "status": "False", "reason": "SecretNotFound",
            "message": "gone", "lastTransitionTime": "2026-01-02T03:04:09Z"}]}),
    );
    let sets = reconcile(&t, &dev, vec![Dirty::All]).await;
    assert_eq!(sets.len(), 1, "{sets:?}");
    let patch_of = |name: &str| {
        t.log.all().into_iter().find(|s| {
            s.method == Method::PATCH && s.path.ends_with(&format!("/wireguardpeers/{name}/status"))
        })
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !(patch_of("fresh").is_some() && patch_of("stale").is_some())
        && std::time::Instant::now() < until
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let fresh = patch_of("fresh").expect("fresh's status");
    let cond = &fresh.body["status"]["conditions"][0];
    assert_eq!(cond["status"], "True", "{}", fresh.body);
    assert_eq!(cond["lastTransitionTime"], created, "{}", fresh.body);
    // A change of state is written, at the time it happened.
    let stale = patch_of("stale").expect("stale's status");
    let cond = &stale.body["status"]["conditions"][0];
    assert_eq!(cond["status"], "True", "{}", stale.body);
    assert_ne!(cond["lastTransitionTime"], created, "{}", stale.body);
    // Written in the background alongside the others: time to arrive.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        patch_of("said").is_none(),
        "a peer that already says it was written again"
    );
}

/// A network's peerEndpoints bound where its WireGuardPeers may send: a
/// peer outside is left off the device and its status says why; one
/// inside is applied.
#[tokio::test]
async fn peers_outside_the_networks_peer_endpoints_are_not_applied() {
    let t = test_agent(|s| match s.method {
        Method::PATCH => (200, json!({})),
        _ => status(500, "InternalError"),
    });
    let (_key, dev) = held_device(
        &t,
        json!({"addressPools": [{"cidr": "10.77.0.0/16"}], "peerEndpoints": ["10.250.0.0/24"]}),
    );
    t.agent.set_synced();
    scope_listed(&t);
    let peer = |name: &str, k: &PublicKey, endpoint: &str| {
        let p: wg_k8s_types::WireGuardPeer = serde_json::from_value(json!({
            "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardPeer",
            "metadata": {"name": name, "namespace": "ns1"},
            "spec": {"network": "n0", "publicKey": k.to_base64(), "allowedIPs": ["10.77.200.0/24"],
                     "endpoint": endpoint},
        }))
        .unwrap();
        t.agent.index.lock().unwrap().peer(&p)
    };
    let outside = PrivateKey::generate().unwrap().public_key();
    let inside = PrivateKey::generate().unwrap().public_key();
    peer("far", &outside, "10.99.0.1:51820");
    peer("near", &inside, "10.250.0.9:51820");
    let sets = reconcile(&t, &dev, vec![Dirty::All]).await;
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert!(sets[0].contains(&format!("public_key={}", hex(inside.as_bytes()))));
    assert!(
        !sets[0].contains(&hex(outside.as_bytes())),
        "a peer outside peerEndpoints reached the device: {}",
        sets[0]
    );
    // Both peers' status is written (in the background).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let patched = |name: &str| {
        t.log.all().iter().any(|s| {
            s.method == Method::PATCH && s.path.ends_with(&format!("/wireguardpeers/{name}/status"))
        })
    };
    while !(patched("far") && patched("near")) && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let far = t
        .log
        .all()
        .into_iter()
        .find(|s| s.path.ends_with("/wireguardpeers/far/status"))
        .expect("far's status");
    let cond = &far.body["status"]["conditions"][0];
    assert_eq!(cond["reason"], "EndpointNotAllowed", "{}", far.body);
    assert_eq!(cond["status"], "False", "{}", far.body);
    let near = t
        .log
        .all()
        .into_iter()
        .find(|s| s.path.ends_with("/wireguardpeers/near/status"))
        .expect("near's status");
    assert_eq!(
        near.body["status"]["conditions"][0]["reason"], "Applied",
        "{}",
        near.body
    );
}

/// Reconcile what `dirty` touches; the `set=1` requests it sent.
async fn reconcile(t: &TestAgent, dev: &FakeUapi, dirty: Vec<Dirty>) -> Vec<String> {
    let before = dev.sets().len();
    t.agent.reconcile(&dirty.into_iter().collect()).await;
    dev.sets()[before..].to_vec()
}

#[tokio::test]
async fn the_reconciler_sends_a_device_only_what_changed() {
    let mut t = test_agent(|_| status(500, "InternalError"));
    let (key, dev) = held_device(&t, json!({"addressPools": [{"cidr": "10.77.0.0/16"}]}));
    let own_private = t
        .agent
        .keys
        .get_or_create(&KeyId::new("u1", "wg0").unwrap(), "")
        .unwrap()
        .0;
    let all = || vec![Dirty::All];
    assert_eq!(
        t.marked(),
        vec![Dirty::Pod("u1".into())],
        "holding an interface queues its reconcile"
    );

    // Before the caches are synced, nothing is touched.
    assert!(reconcile(&t, &dev, all()).await.is_empty());
    assert!(dev.requests().is_empty());
    t.agent.set_synced();
    assert_eq!(t.marked(), vec![Dirty::All]);

    // Synced, but the watches of the pod's network and namespace have not
    // listed: its peers are not known, and nothing is touched (a restart
    // must not remove the peers of an interface whose mesh it has not
    // heard yet).
    assert!(reconcile(&t, &dev, all()).await.is_empty());
    assert!(dev.requests().is_empty());
    scope_listed(&t);

    // The device has its key and port and no peer, as desired: read once,
    // nothing sent, no status write.
    assert!(reconcile(&t, &dev, all()).await.is_empty());
    assert_eq!(dev.requests(), vec!["get=1\n".to_string()]);
    assert!(t.published().is_empty());

    // A mesh member appears: exactly it is sent, once.
    let other = PrivateKey::generate().unwrap().public_key();
    member(&t, "db", "u2", &other, "10.77.0.3/16");
    let sets = reconcile(&t, &dev, vec![Dirty::Network("n0".into())]).await;
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert!(
        sets[0].contains(&format!("public_key={}", hex(other.as_bytes()))),
        "{}",
        sets[0]
    );
    assert!(sets[0].contains("allowed_ip=10.77.0.3/32"), "{}", sets[0]);
    assert!(
        sets[0].contains("endpoint=10.250.0.12:51820"),
        "{}",
        sets[0]
    );
    assert!(
        !sets[0].contains("private_key"),
        "the key did not change: {}",
        sets[0]
    );
    // A new peer is information for the status, written with the next
    // counters (refresh_stats), not at once.
    assert!(t.published().is_empty());
    assert_eq!(metric(&t.agent, "wg_agent_device_updates_total"), 1.0);
    // Nothing changed since: nothing sent, nothing read.
    assert!(reconcile(&t, &dev, all()).await.is_empty());
    assert_eq!(
        dev.requests().len(),
        2,
        "no read-back: the last state is kept"
    );
    assert!(t.published().is_empty());

    // External peers: only those whose selector matches the pod.
    let gw = PrivateKey::generate().unwrap().public_key();
    let db = PrivateKey::generate().unwrap().public_key();
    let d = external_peer(&t, "ns1", "db-gw", &db, "db");
    assert!(
        reconcile(&t, &dev, d).await.is_empty(),
        "selects no pod here"
    );
    let d = external_peer(&t, "ns2", "web-gw", &gw, "web");
    assert!(
        reconcile(&t, &dev, d).await.is_empty(),
        "another namespace's"
    );
    let d = external_peer(&t, "ns1", "web-gw", &gw, "web");
    let sets = reconcile(&t, &dev, d).await;
    assert_eq!(sets.len(), 1, "{sets:?}");
    assert!(sets[0].contains(&hex(gw.as_bytes())), "{}", sets[0]);
    assert!(
        !sets[0].contains(&hex(other.as_bytes())),
        "the member is unchanged: {}",
        sets[0]
    );
    assert!(!sets[0].contains(&hex(db.as_bytes())));

    // The member leaves: it is removed.
    let gone: WireGuardAttachment = serde_json::from_value(json!({
        "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardAttachment",
        "metadata": {"name": "db", "namespace": "ns2"},
        "spec": {"network": "n0", "podName": "db", "podUID": "u2", "nodeName": "node-2", "interface": "wg0"},
    }))
    .unwrap();
    let d = t.agent.index.lock().unwrap().attachment_gone(&gone);
    let sets = reconcile(&t, &dev, d).await;
    assert_eq!(sets.len(), 1);
    assert!(
        sets[0].contains(&format!(
            "public_key={}\nremove=true",
            hex(other.as_bytes())
        )),
        "{}",
        sets[0]
    );

    // The pod asks for a new key: the device gets it, the record and the
    // status follow.
    t.published();
    let d = t.agent.index.lock().unwrap().pod(&pod_obj(
        "web",
        "u1",
        json!({wg_k8s_types::ANNOTATION_ROTATE_KEY: "1"}),
    ));
    let sets = reconcile(&t, &dev, d).await;
    assert_eq!(sets.len(), 1);
    assert!(sets[0].contains("private_key="), "{}", sets[0]);
    assert!(!sets[0].contains(&hex(own_private.as_bytes())));
    let saved = t.agent.records.load_all().0;
    assert_eq!(saved[0].key_generation, "1");
    assert_ne!(saved[0].public_key, own_private.public_key());
    let stored = t
        .agent
        .keys
        .public_key(&KeyId::new("u1", "wg0").unwrap())
        .unwrap();
    assert_eq!(Some(saved[0].public_key), stored);
    assert_eq!(t.published(), vec![format!("upsert {key}")]);

    // The network goes: the interface is kept as it is.
    let d = t.agent.index.lock().unwrap().network_gone(&network_obj(
        "n0",
        json!({"addressPools": [{"cidr": "10.77.0.0/16"}]}),
    ));
    assert!(reconcile(&t, &dev, d).await.is_empty());
    // Throughout, no route changed (none was asked): no netlink request.
    assert!(t
        .agent
        .slot(&key)
        .unwrap()
        .lock()
        .await
        .as_ref()
        .unwrap()
        .routes
        .is_empty());
    assert_eq!(metric(&t.agent, "wg_agent_reconcile_errors_total"), 0.0);
}

#[tokio::test]
async fn a_device_that_cannot_be_reached_is_a_reconcile_error() {
    let t = test_agent(|_| status(500, "InternalError"));
    t.agent.index.lock().unwrap().network(&network_obj(
        "n0",
        json!({"addressPools": [{"cidr": "10.77.0.0/16"}]}),
    ));
    t.agent
        .index
        .lock()
        .unwrap()
        .pod(&pod_obj("web", "u1", json!({})));
    hold(
        &t.agent,
        record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820),
    );
    t.agent.set_synced();
    scope_listed(&t);
    t.agent.reconcile(&BTreeSet::from([Dirty::All])).await;
    assert_eq!(metric(&t.agent, "wg_agent_reconcile_errors_total"), 1.0);
    // An interface whose pod the index does not know is left alone.
    t.agent.index.lock().unwrap().relisted_pods(&[]);
    t.agent.reconcile(&BTreeSet::from([Dirty::All])).await;
    assert_eq!(metric(&t.agent, "wg_agent_reconcile_errors_total"), 1.0);
}

/// The grace period runs from when the pod went missing, not from the
/// interface's creation: a long-lived pod whose object disappears (or
/// that a watch hiccup hides) keeps its interface for the whole grace
/// period, and a pod seen again starts the count over.
#[tokio::test]
async fn gc_grace_counts_from_when_the_pod_went_missing() {
    let t = test_agent_with(&[("WG_AGENT_GC_GRACE", "1s")], |_| {
        status(500, "InternalError")
    });
    let mut rec = record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820);
    rec.created = 0; // made long ago
    let key = hold(&t.agent, rec);
    t.agent.set_synced();
    t.agent.gc().await;
    assert_eq!(t.agent.keys(), vec![key.clone()], "removed at first sight");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    // Seen again, then missing again: the count starts over.
    t.agent
        .index
        .lock()
        .unwrap()
        .pod(&pod_obj("web", "u1", json!({})));
    t.agent.gc().await;
    t.agent
        .index
        .lock()
        .unwrap()
        .pod_gone(&pod_obj("web", "u1", json!({})));
    t.agent.gc().await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    t.agent.gc().await;
    assert_eq!(
        t.agent.keys(),
        vec![key.clone()],
        "the count did not start over"
    );
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    t.agent.gc().await;
    assert!(t.agent.keys().is_empty(), "kept past the grace period");
}

#[tokio::test]
async fn gc_keeps_live_interfaces_and_their_keys_and_deletes_orphan_objects() {
    let mut t = test_agent(|_| status(500, "InternalError"));
    let key = hold(
        &t.agent,
        record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820),
    );
    // A key left by an interface that is gone.
    let ghost = KeyId::new("ghost", "wg0").unwrap();
    t.agent.keys.get_or_create(&ghost, "").unwrap();
    let att = |name: &str, uid: &str, node: &str| -> WireGuardAttachment {
        serde_json::from_value(json!({
            "apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardAttachment",
            "metadata": {"name": name, "namespace": "ns1"},
            "spec": {"network": "n0", "podName": name, "podUID": uid, "nodeName": node, "interface": "wg0"},
        }))
        .unwrap()
    };
    {
        // What the watch of this node's own attachments hears (another
        // node's is never sent to it; if it were, it is not taken).
        let mut idx = t.agent.index.lock().unwrap();
        idx.own_attachment(&att("web-wg0", "u1", NODE), NODE);
        idx.own_attachment(&att("old-wg0", "u0", NODE), NODE);
        idx.own_attachment(&att("far-wg0", "u5", "node-2"), NODE);
    }
    // Not synced: nothing at all.
    t.agent.gc().await;
    assert!(t.published().is_empty());
    assert_eq!(t.agent.keys.list().unwrap().len(), 2);

    t.agent.set_synced();
    // The pod is not in the index, but its interface is younger than the
    // grace period: kept.
    t.agent.gc().await;
    assert_eq!(t.agent.keys(), vec![key.clone()]);
    assert_eq!(t.published(), vec!["delete ns1/old-wg0 (u0)".to_string()]);
    let held = KeyId::new("u1", "wg0").unwrap();
    assert_eq!(
        t.agent.keys.list().unwrap(),
        vec![held.clone()],
        "the ghost's key goes, the live one stays"
    );
    assert!(t.agent.keys.public_key(&held).unwrap().is_some());
    // Only this node's address blocks are listed (tend_blocks).
    assert!(
        t.log
            .all()
            .iter()
            .all(|s| s.line() == format!("GET {BLOCKS}")),
        "{:?}",
        t.log.lines()
    );
}

#[tokio::test]
async fn status_and_object_of_an_interface() {
    let t = test_agent(|_| status(500, "InternalError"));
    let mut rec = record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820);
    let key = hold(&t.agent, rec.clone());
    let slot = t.agent.slot(&key).unwrap();
    let g = slot.lock().await;
    let st = t.agent.status_of(g.as_ref().unwrap());
    assert_eq!(
        st.public_key.as_ref().unwrap().as_str(),
        rec.public_key.to_base64()
    );
    assert_eq!(st.addresses.len(), 1);
    assert_eq!(st.addresses[0].as_str(), "10.77.0.2/16");
    assert_eq!(
        st.endpoint.as_ref().unwrap().as_str(),
        format!("{NODE_IP}:51820"),
        "a host socket is reached at the node"
    );
    drop(g);
    // A socket in the pod's namespace: the endpoint is not the node's but
    // the pod's, once its address is known.
    rec.attachment.socket_namespace = SocketNamespace::Container;
    slot.lock().await.as_mut().unwrap().rec = rec;
    assert!(t
        .agent
        .status_of(slot.lock().await.as_ref().unwrap())
        .endpoint
        .is_none());
    let mut pod = pod_obj("web", "u1", json!({}));
    pod.metadata.namespace = Some("ns1".into());
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
        pod_ip: Some("10.244.1.7".into()),
        ..Default::default()
    });
    t.agent.index.lock().unwrap().pod(&pod);
    assert_eq!(
        t.agent
            .status_of(slot.lock().await.as_ref().unwrap())
            .endpoint
            .map(|e| e.as_str().to_string()),
        Some("10.244.1.7:51820".to_string())
    );
    assert_eq!(object_name("web", "wg0"), "web-wg0");
    let long = "p".repeat(250);
    let n = object_name(&long, "wg0");
    assert!(n.len() <= 253, "{}", n.len());
    assert_ne!(
        n,
        object_name(&"p".repeat(251), "wg0"),
        "still one name per pod"
    );
}

#[tokio::test]
async fn hints_tell_the_plugin_each_networks_failure_policy() {
    let t = test_agent(|_| status(500, "InternalError"));
    {
        let mut idx = t.agent.index.lock().unwrap();
        idx.network(&network_obj(
            "n0",
            json!({"addressPools": [{"cidr": "10.77.0.0/16"}]}),
        ));
        idx.network(&network_obj(
            "n1",
            json!({"addressPools": [{"cidr": "10.78.0.0/16"}], "failurePolicy": "ignore"}),
        ));
        idx.network(&network_obj(
            "bad",
            json!({"addressPools": [{"cidr": "10.79.0.0/16", "blockSize": 8}]}),
        ));
    }
    t.agent.write_hints();
    let dir = t.agent.settings.hint_dir();
    let read = |n: &str| -> wg_attach::managed::NetworkHint {
        serde_json::from_slice(&std::fs::read(dir.join(format!("{n}.json"))).unwrap()).unwrap()
    };
    assert_eq!(read("n0").failure_policy, "fail");
    assert_eq!(read("n1").failure_policy, "ignore");
    assert!(
        !dir.join("bad.json").exists(),
        "an invalid network has no policy"
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
}

#[tokio::test]
async fn adopt_networks_lists_each_valid_networks_blocks_once() {
    let t = test_agent(|s| match (&s.method, s.path.as_str()) {
        (&Method::GET, BLOCKS) if s.query.contains("network%3Dn1") => {
            status(503, "ServiceUnavailable")
        }
        (&Method::GET, BLOCKS) => no_blocks(),
        _ => status(500, "InternalError"),
    });
    {
        let mut idx = t.agent.index.lock().unwrap();
        idx.network(&network_obj(
            "n0",
            json!({"addressPools": [{"cidr": "10.77.0.0/16"}]}),
        ));
        idx.network(&network_obj(
            "n1",
            json!({"addressPools": [{"cidr": "10.78.0.0/16"}]}),
        ));
        idx.network(&network_obj(
            "bad",
            json!({"addressPools": [{"cidr": "10.79.0.0/16", "blockSize": 8}]}),
        ));
    }
    t.agent.adopt_networks().await;
    t.agent.adopt_networks().await;
    let lists: Vec<String> = t.log.all().iter().map(|s| s.query.clone()).collect();
    let n0 = lists
        .iter()
        .filter(|q| q.contains("spec.network%3Dn0"))
        .count();
    let n1 = lists
        .iter()
        .filter(|q| q.contains("spec.network%3Dn1"))
        .count();
    assert_eq!((n0, n1, lists.len()), (1, 2, 3), "{lists:?}");
    assert_eq!(
        metric(
            &t.agent,
            "wg_agent_apiserver_errors_total{operation=\"list_blocks\"}"
        ),
        2.0
    );
}

/// A slot another job holds while the allocator is built (the verify that
/// starts as the caches sync, a reconcile) still has its addresses
/// re-reserved: they come from the records, not the slots. Before, a held
/// slot was skipped and its address went to the next pod (the cluster
/// test saw two pods with one address after an agent restart).
#[tokio::test]
async fn the_allocator_is_built_with_the_addresses_of_held_slots() {
    let t = test_agent(|s| match (&s.method, s.path.as_str()) {
        (&Method::GET, BLOCKS) => no_blocks(),
        _ => status(500, "InternalError"),
    });
    t.agent.index.lock().unwrap().network(&network_obj(
        "n0",
        json!({"addressPools": [{"cidr": "10.77.0.0/16"}]}),
    ));
    let rec = record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820);
    let key = hold(&t.agent, rec.clone());
    let slot = t.agent.slot(&key).unwrap();
    let busy = slot.lock().await;
    t.agent.adopt_networks().await;
    drop(busy);
    let ipam = t.agent.ipam.lock().await;
    assert_eq!(
        ipam.get("n0")
            .and_then(|i| i.addresses(key.as_str()).map(<[_]>::to_vec)),
        Some(rec.addresses.clone()),
        "the held interface's address is free for the next pod"
    );
}

#[tokio::test]
async fn an_interface_that_cannot_be_reopened_keeps_its_address_while_its_pod_runs() {
    let mut t = test_agent(|_| status(500, "InternalError"));
    // A record whose namespace path this agent cannot open (a runtime's
    // directory not mounted into its container, or the pod gone).
    let mut rec = record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820);
    rec.attachment.netns = "/nonexistent/netns/cni-1".into();
    rec.created = 0;
    t.agent.records.save(&rec).unwrap();
    t.agent.restore().await;
    assert!(t.agent.keys().is_empty(), "not reopened");
    t.agent.set_synced();
    t.marked();
    // Its pod still runs: everything it holds stays, and its address
    // stays out of the pool.
    t.agent
        .index
        .lock()
        .unwrap()
        .pod(&pod_obj("web", "u1", json!({})));
    t.agent.gc().await;
    assert_eq!(metric(&t.agent, "wg_agent_orphan_interfaces"), 1.0);
    // And the pod says so (a Warning Event, tried at each collection until
    // the apiserver takes it: this one answers 500).
    let unreachable = t
        .log
        .all()
        .into_iter()
        .filter(|s| s.method == Method::POST && s.path == "/api/v1/namespaces/ns1/events")
        .filter(|s| s.body["reason"] == "WireGuardInterfaceUnreachable")
        .collect::<Vec<_>>();
    assert_eq!(unreachable.len(), 1, "{:?}", t.log.lines());
    assert!(unreachable[0].body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("/nonexistent/netns/cni-1"));
    let kid = KeyId::new("u1", "wg0").unwrap();
    assert_eq!(t.agent.keys.list().unwrap(), vec![kid.clone()]);
    assert_eq!(t.agent.records.load_all().0.len(), 1);
    assert!(t.published().is_empty());
    // Its address stays reserved through gc's sweep of leaked addresses.
    let mut ipam = Ipam::new("n0", &[("10.77.0.0/16".parse().unwrap(), 26)]).unwrap();
    ipam.add_block("10.77.0.0/26".parse().unwrap()).unwrap();
    ipam.restore("u1.wg0", &rec.addresses).unwrap();
    t.agent.ipam.lock().await.insert("n0".into(), ipam);
    t.agent.gc().await;
    let held = |t: &crate::testutil::TestAgent| {
        let ipam = t.agent.ipam.try_lock().unwrap();
        ipam.get("n0")
            .and_then(|i| i.addresses("u1.wg0").map(<[_]>::to_vec))
    };
    assert_eq!(held(&t), Some(rec.addresses.clone()));
    // The pod goes: gc removes what it held.
    t.agent
        .index
        .lock()
        .unwrap()
        .pod_gone(&pod_obj("web", "u1", json!({})));
    t.agent.gc().await;
    assert!(
        t.agent.keys.list().unwrap().is_empty(),
        "its key is removed"
    );
    assert!(
        t.agent.records.load_all().0.is_empty(),
        "its record is removed"
    );
    assert_eq!(
        t.published(),
        vec!["delete ns1/web-wg0 (u1)".to_string()],
        "its attachment object is deleted"
    );
    assert_eq!(held(&t), None, "its address is back in the pool");
}

/// An interface deleted while the agent was away (issue 21: a selected
/// pod's tunnel must come back after an agent restart): the restarted
/// agent keeps it (not an orphan, which nothing repairs), reads no
/// counters and reconciles nothing through the missing link, and its
/// verify finds it missing (and so makes it again).
#[tokio::test]
async fn an_interface_deleted_while_the_agent_was_away_is_kept_to_be_made_again() {
    let t = test_agent(|_| status(500, "InternalError"));
    network_and_web(
        &t,
        json!({"addressPools": [{"cidr": "10.77.0.0/16"}], "mesh": true}),
    );
    // Its namespace is there (this process's); no link named wg0 is.
    let rec = record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820);
    t.agent.records.save(&rec).unwrap();
    t.agent.restore().await;
    let key = rec.key().unwrap();
    assert_eq!(t.agent.keys(), vec![key.clone()], "kept, not an orphan");
    assert!(t.agent.orphans.lock().unwrap().is_empty());
    t.agent.refresh_stats().await;
    t.agent.reconcile_one(&key).await.unwrap();
    assert_eq!(metric(&t.agent, "wg_agent_device_updates_total"), 0.0);
    let drift = t.agent.verify_one(&key, false).await.unwrap();
    assert!(
        matches!(
            drift.as_slice(),
            [verify::Finding::Drift(wg_netns::Drift::Missing { .. })]
        ),
        "{drift:?}"
    );
}

/// An interface whose target is not known yet (an agent restarted before
/// its namespace's peers listed) keeps its device as it is: what the
/// device holds is not drift then, its link and addresses still are.
#[test]
fn without_a_target_the_device_is_not_judged() {
    let peer = PrivateKey::generate().unwrap().public_key();
    let found = vec![
        verify::Finding::Drift(wg_netns::Drift::PeerUnexpected { peer }),
        verify::Finding::Drift(wg_netns::Drift::ListenPort { have: 1, want: 2 }),
        verify::Finding::Drift(wg_netns::Drift::AddressMissing {
            address: "10.77.0.2/16".parse().unwrap(),
        }),
        verify::Finding::Drift(wg_netns::Drift::Down),
    ];
    assert_eq!(verify::judged(true, found.clone()), found);
    assert_eq!(verify::judged(false, found.clone()), found[2..].to_vec());
}

#[test]
fn a_port_another_program_holds_is_skipped() {
    let held = std::net::UdpSocket::bind(("0.0.0.0", 0)).unwrap();
    let port = held.local_addr().unwrap().port();
    assert!(!port_free(port));
    drop(held);
    assert!(port_free(port));
}

/// Which backend an ADD makes its device with: the agent's own unless the
/// settings say `plugin` and the request's plugin can start daemons; then
/// the plugin is asked, in the namespace the device is born in.
#[tokio::test]
async fn an_add_launches_through_the_plugin_only_when_told_and_able() {
    use crate::server::PluginConn;
    use std::os::unix::net::UnixStream;
    use wg_attach::managed::{Launched, LAUNCH_PROTOCOL_VERSION, OLDEST_PROTOCOL_VERSION};
    let launcher_of = |b: &Backend| match b {
        Backend::Userspace(u) => u.launcher().cloned(),
        Backend::Kernel | Backend::Engine(_) => panic!("the test agent is userspace"),
    };
    let (agent_end, plugin_end) = UnixStream::pair().unwrap();
    plugin_end
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let conn = PluginConn::new(Arc::new(agent_end), LAUNCH_PROTOCOL_VERSION);
    let v2 = add("web");
    let mut v1 = add("web");
    v1.version = OLDEST_PROTOCOL_VERSION;

    // The default: the agent starts daemons, whoever asks.
    let t = test_agent(|_| status(404, "NotFound"));
    let b = t
        .agent
        .launch_backend(SocketNamespace::Container, Some(&conn), &v2);
    assert_eq!(b, t.agent.backend);
    assert!(launcher_of(&b).is_none());

    let t = test_agent_with(&[("WG_AGENT_USERSPACE_LAUNCH", "plugin")], |_| {
        status(404, "NotFound")
    });
    for (socket, want) in [
        (SocketNamespace::Container, LaunchNamespace::Pod),
        (SocketNamespace::Host, LaunchNamespace::Node),
    ] {
        let b = t.agent.launch_backend(socket, Some(&conn), &v2);
        assert_ne!(b, t.agent.backend, "a launcher is set");
        let l = launcher_of(&b).expect("the plugin launches");
        let fake = {
            let p = plugin_end.try_clone().unwrap();
            std::thread::spawn(move || {
                let (r, _) = wg_attach::managed::recv::<Reply>(&p).unwrap();
                wg_attach::managed::send(&p, &Launched::started(7), None).unwrap();
                r
            })
        };
        l.launch(&Userspace::new("wireguard-go").launch_command("wgatest0"))
            .unwrap();
        match fake.join().unwrap() {
            Reply::Launch(asked) => {
                assert_eq!(asked.namespace, want, "{socket:?}");
                assert_eq!(asked.name, "wgatest0");
            }
            other => panic!("{other:?}"),
        }
    }
    // A plugin of protocol 1 (the server passes no connection): the agent
    // starts the daemon, and says so once.
    assert!(!t.agent.warned_old_plugin.load(Ordering::Acquire));
    for _ in 0..2 {
        let b = t
            .agent
            .launch_backend(SocketNamespace::Container, None, &v1);
        assert!(launcher_of(&b).is_none());
        assert_eq!(b, t.agent.backend);
    }
    assert!(t.agent.warned_old_plugin.load(Ordering::Acquire));
}

/// A device whose slot another job holds at a counters refresh keeps its
/// series (its last counters): before, it vanished from /metrics for
/// that round, and a scrape then (the cluster test's read of the peers'
/// allowed IPs right after a reconcile) saw no such device.
#[tokio::test]
async fn a_busy_device_keeps_its_metrics() {
    let t = test_agent(|_| status(500, "InternalError"));
    let (key, _dev) = held_device(&t, json!({"addressPools": [{"cidr": "10.77.0.0/16"}]}));
    let series = |agent: &Agent| {
        agent
            .metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("wireguard_") && l.contains("pod=\"web\""))
            .count()
    };
    t.agent.refresh_stats().await;
    let before = series(&t.agent);
    assert!(before > 0, "{}", t.agent.metrics.encode());
    let slot = t.agent.slot(&key).unwrap();
    let held = slot.lock().await;
    t.agent.refresh_stats().await;
    assert_eq!(series(&t.agent), before, "{}", t.agent.metrics.encode());
    drop(held);
    // Gone for good: its series go.
    t.agent.slots().remove(&key);
    t.agent.refresh_stats().await;
    assert_eq!(series(&t.agent), 0);
}
