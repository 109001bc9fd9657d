//! showconf without a cluster: which pods it lists (the agents' rules) and
//! what it prints.

use super::*;
use serde_json::{json, Value};
use wg_k8s_types::API_VERSION;
use wg_netns::PublicKey;

fn key(i: u8) -> String {
    PublicKey::from_bytes([i; 32]).to_base64()
}

fn obj<K: serde::de::DeserializeOwned>(kind: &str, meta: Value, spec: Value, status: Value) -> K {
    let mut v = json!({"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec});
    if !status.is_null() {
        v["status"] = status;
    }
    serde_json::from_value(v).unwrap()
}

fn network(extra: Value) -> WireGuardNetwork {
    let mut spec = json!({"addressPools": [{"cidr": "10.77.0.0/16"}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    obj(
        "WireGuardNetwork",
        json!({"name": "pods"}),
        spec,
        Value::Null,
    )
}

fn peer(extra: Value) -> WireGuardPeer {
    let mut spec = json!({
        "network": "pods",
        "publicKey": key(99),
        "endpoint": "10.250.0.99:51999",
        "allowedIPs": ["10.99.0.0/24"],
        "podSelector": {"matchLabels": {"app": "a"}},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    obj(
        "WireGuardPeer",
        json!({"name": "gw", "namespace": "team"}),
        spec,
        Value::Null,
    )
}

fn attachment(ns: &str, pod: &str, node: &str, k: u8, addr: &str) -> WireGuardAttachment {
    obj(
        "WireGuardAttachment",
        json!({"name": format!("{pod}-wg0"), "namespace": ns}),
        json!({"network": "pods", "podName": pod, "podUID": format!("uid-{pod}"),
               "nodeName": node, "interface": "wg0"}),
        json!({"publicKey": key(k), "addresses": [addr], "endpoint": format!("10.250.0.{k}:5182{k}")}),
    )
}

fn block(cidr: &str, node: &str) -> WireGuardAddressBlock {
    let name = WireGuardAddressBlock::name_for("pods", &cidr.parse().unwrap());
    obj(
        "WireGuardAddressBlock",
        json!({"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"}),
        json!({"network": "pods", "cidr": cidr, "nodeName": node}),
        Value::Null,
    )
}

fn pod(ns: &str, name: &str, app: &str) -> Pod {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                     "labels": {"app": app}}}))
    .unwrap()
}

fn namespace(name: &str, labels: Value) -> Namespace {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels}}))
    .unwrap()
}

/// Three pods of `team`: a1 (app=a, node n1), a2 (app=a, node n2), b1
/// (app=b); and forged: a4 (app=a) publishing an address of n1's block
/// from node n2.
fn world() -> (
    Vec<WireGuardAddressBlock>,
    Vec<WireGuardAttachment>,
    Vec<Pod>,
) {
    let blocks = vec![block("10.77.1.0/28", "n1"), block("10.77.2.0/28", "n2")];
    let atts = vec![
        attachment("team", "a1", "n1", 1, "10.77.1.1/16"),
        attachment("team", "a2", "n2", 2, "10.77.2.1/16"),
        attachment("team", "b1", "n1", 3, "10.77.1.2/16"),
        attachment("team", "a4", "n2", 4, "10.77.1.3/16"),
    ];
    let pods = vec![
        pod("team", "a1", "a"),
        pod("team", "a2", "a"),
        pod("team", "b1", "b"),
        pod("team", "a4", "a"),
    ];
    (blocks, atts, pods)
}

fn names(m: &[Member]) -> Vec<&str> {
    m.iter().map(|m| m.pod.as_str()).collect()
}

#[test]
fn lists_the_pods_the_agents_give_the_peer_to() {
    let (blocks, atts, pods) = world();
    let ns = namespace("team", json!({}));
    let m = members(
        &peer(json!({})),
        &network(json!({})),
        &ns,
        &blocks,
        &atts,
        &pods,
    )
    .unwrap();
    // Selected by app=a; a4's address is n1's: not a member for anyone.
    assert_eq!(names(&m), vec!["a1", "a2"]);
    assert_eq!(m[0].node, "n1");
    assert_eq!(
        m[0].member.endpoint,
        Some("10.250.0.1:51821".parse().unwrap())
    );
    // No selector: every admitted pod of the namespace.
    let all = peer(json!({"podSelector": null}));
    let m = members(&all, &network(json!({})), &ns, &blocks, &atts, &pods).unwrap();
    assert_eq!(names(&m), vec!["a1", "a2", "b1"]);
    // A namespace the network does not admit: no pod at all.
    let only = network(json!({"namespaceSelector": {"matchLabels": {"vpn": "yes"}}}));
    let m = members(&peer(json!({})), &only, &ns, &blocks, &atts, &pods).unwrap();
    assert!(m.is_empty(), "{m:?}");
    let ok = namespace("team", json!({"vpn": "yes"}));
    let m = members(&peer(json!({})), &only, &ok, &blocks, &atts, &pods).unwrap();
    assert_eq!(names(&m), vec!["a1", "a2"]);
}

#[test]
fn an_endpoint_the_network_refuses_is_an_error() {
    let (blocks, atts, pods) = world();
    let ns = namespace("team", json!({}));
    let net = network(json!({"peerEndpoints": ["10.251.0.0/16"]}));
    let err = members(&peer(json!({})), &net, &ns, &blocks, &atts, &pods).unwrap_err();
    assert!(err.to_string().contains("peerEndpoints"), "{err}");
    let net = network(json!({"peerEndpoints": ["10.250.0.0/16"]}));
    assert!(members(&peer(json!({})), &net, &ns, &blocks, &atts, &pods).is_ok());
}

#[test]
fn renders_a_config_wg_accepts_without_the_hosts_key() {
    let (blocks, atts, pods) = world();
    let ns = namespace("team", json!({}));
    let p = peer(json!({"persistentKeepalive": "25s",
                        "presharedKeySecretRef": {"name": "psk", "key": "k"}}));
    let m = members(&p, &network(json!({})), &ns, &blocks, &atts, &pods).unwrap();
    let args = Args::parse(["gw".to_string()]).unwrap();
    let text = render(&p, &m, &args);
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        vec![
            "[Interface]".to_string(),
            "ListenPort = 51999".into(),
            "".into(),
            "[Peer]".into(),
            format!("PublicKey = {}", key(1)),
            "Endpoint = 10.250.0.1:51821".into(),
            "AllowedIPs = 10.77.1.1/32".into(),
            "PersistentKeepalive = 25".into(),
            "".into(),
            "[Peer]".into(),
            format!("PublicKey = {}", key(2)),
            "Endpoint = 10.250.0.2:51822".into(),
            "AllowedIPs = 10.77.2.1/32".into(),
            "PersistentKeepalive = 25".into(),
        ]
    );
    assert!(!text.contains("PrivateKey"), "{text}");
    assert!(text.contains("# PresharedKey = (this host's copy of Secret team/psk key k)"));
    let quick =
        Args::parse(["--format", "wg-quick", "gw", "--private-key-file", "/k"].map(String::from))
            .unwrap();
    let text = render(&p, &m, &quick);
    assert!(
        text.contains("PostUp = wg set %i private-key /k\n"),
        "{text}"
    );
}

#[test]
fn arguments() {
    let a = Args::parse(["-n", "team", "gw"].map(String::from)).unwrap();
    assert_eq!(a.namespace.as_deref(), Some("team"));
    assert_eq!(a.peer, "gw");
    assert_eq!(a.format, Format::Setconf);
    for bad in [
        vec![],
        vec!["-n"],
        vec!["gw", "other"],
        vec!["--format", "json", "gw"],
        vec!["--bogus", "gw"],
    ] {
        let bad: Vec<String> = bad.into_iter().map(String::from).collect();
        assert!(Args::parse(bad.clone()).is_err(), "{bad:?}");
    }
}
