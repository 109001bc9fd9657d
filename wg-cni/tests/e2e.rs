//! End-to-end: the wg-cni binary run like a runtime runs it, inside simulated
//! nodes (network namespaces joined by veth), attaching pods (namespaces), with
//! pings through the tunnel. Userspace WireGuard here; the same binary runs on
//! kernel WireGuard in the qemu guest (scripts/kernel-tests).
//!
//! Every endpoint is a node namespace's veth address or its loopback: no
//! packet leaves the namespaces these tests create.

mod cni;

use std::time::Duration;

use cni::{Call, StateDir};
use serde_json::{json, Value};
use wg_netns::{IfName, Netns, PrivateKey, Rtnl};
use wg_netns_testkit::*;

const PING_WITHIN: Duration = Duration::from_secs(12);

/// One simulated node with a pod namespace.
struct Node {
    node: TestNs,
    pod: TestNs,
    key: PrivateKey,
}

impl Node {
    fn new(role: &str) -> Node {
        Node {
            node: TestNs::new(&format!("{role}node")),
            pod: TestNs::new(&format!("{role}pod")),
            key: PrivateKey::generate().expect("key"),
        }
    }
    fn netns(&self) -> String {
        format!("/var/run/netns/{}", self.pod.name)
    }
}

fn backend_name(b: &wg_netns::Backend) -> &'static str {
    match b {
        wg_netns::Backend::Kernel => "kernel",
        wg_netns::Backend::Userspace(_) => "userspace",
        wg_netns::Backend::Engine(_) => "engine",
    }
}

/// A configuration in the original's format, plus a state dir and backend.
#[allow(clippy::too_many_arguments)]
fn conf(
    version: &str,
    state: &StateDir,
    backend: &str,
    me: &PrivateKey,
    addr: &str,
    peer: &PrivateKey,
    endpoint: &str,
    allowed: &[&str],
) -> Value {
    json!({"cniVersion": version, "name": "wgnet", "type": "wg-cni", "address": addr,
           "privateKey": &*me.to_base64(), "listenPort": 51820, "backend": backend, "stateDir": state.path(),
           "peers": [{"endpoint": endpoint, "publicKey": peer.public_key().to_base64(),
                      "allowedIPs": allowed, "persistentKeepalive": "25s"}]})
}

fn secrets_absent(out: &cni::Out, state: &StateDir, keys: &[&PrivateKey]) {
    for k in keys {
        let b64 = k.to_base64();
        assert!(
            !out.stdout.contains(&*b64) && !out.stderr.contains(&*b64),
            "a private key in the output"
        );
        assert!(!state.log().contains(&*b64), "a private key in the log");
        for entry in std::fs::read_dir(&state.0).into_iter().flatten().flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                assert!(
                    !text.contains(&*b64),
                    "a private key in {}",
                    entry.path().display()
                );
            }
        }
    }
}

/// The birth name wg-cni derives for an attachment of network "wgnet".
fn birth(cid: &str, ifname: &str) -> String {
    wg_cni::birth_name("wgnet", cid, ifname).to_string()
}

/// What is left of the attachments with these container ids (ifname eth0):
/// links at the birthplace, anything but loopback in the pod, control sockets.
fn leftovers(n: &Node, cids: &[&str]) -> Vec<String> {
    let births: Vec<String> = cids.iter().map(|c| birth(c, "eth0")).collect();
    let mut v: Vec<String> = n
        .node
        .link_names()
        .into_iter()
        .filter(|l| births.contains(l))
        .collect();
    v.extend(n.pod.link_names().into_iter().filter(|l| l != "lo"));
    v.extend(
        births
            .iter()
            .map(|b| format!("/var/run/wireguard/{b}.sock"))
            .filter(|p| std::path::Path::new(p).exists()),
    );
    v
}

#[test]
fn standalone_two_pods_ping_check_del() {
    let Some(backend) = environment("standalone_two_pods_ping_check_del") else {
        return;
    };
    let b = backend_name(&backend);
    let (a, z) = (Node::new("a"), Node::new("z"));
    let w = wire(&a.node, &z.node);
    let state_a = StateDir::new(&format!("sa{}", tag()));
    let state_z = StateDir::new(&format!("sz{}", tag()));
    let x = (std::process::id() % 200 + 20) as u8;
    let (ip_a, ip_z) = (format!("10.13.{x}.1"), format!("10.13.{x}.2"));
    let cid_a = format!("POD-A-{}", tag()); // upper case is allowed
    let cid_z = format!("pod-z-{}", tag());

    let conf_a = conf(
        "1.1.0",
        &state_a,
        b,
        &a.key,
        &format!("{ip_a}/24"),
        &z.key,
        &format!("{}:51820", w.b_ip),
        &[&format!("{ip_z}/32")],
    );
    let conf_z = conf(
        "1.1.0",
        &state_z,
        b,
        &z.key,
        &format!("{ip_z}/24"),
        &a.key,
        &format!("{}:51820", w.a_ip),
        &[&format!("{ip_a}/32")],
    );
    let add_a = Call::new("ADD")
        .container(&cid_a, &a.netns(), "eth0")
        .args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a-0;K8S_POD_UID=1234");
    let add_z = Call::new("ADD").container(&cid_z, &z.netns(), "eth0");
    let out = add_a.run_in(&a.node.ns, &conf_a.to_string());
    let res_a = out.ok();
    secrets_absent(&out, &state_a, &[&a.key, &z.key]);
    add_z.run_in(&z.node.ns, &conf_z.to_string()).ok();

    // The result: the pod's only interface, named CNI_IFNAME, in the pod (what Multus reports).
    assert_eq!(res_a["cniVersion"], "1.1.0");
    assert_eq!(res_a["interfaces"].as_array().unwrap().len(), 1);
    assert_eq!(res_a["interfaces"][0]["name"], "eth0");
    assert_eq!(res_a["interfaces"][0]["sandbox"], a.netns());
    assert_eq!(res_a["interfaces"][0]["mtu"], 1420);
    assert_eq!(
        res_a["ips"][0],
        json!({"address": format!("{ip_a}/24"), "interface": 0})
    );
    // The state record: public key and pod identity, no secret.
    let record: Value = serde_json::from_slice(
        &std::fs::read(state_a.0.join("wgnet").join(format!("{cid_a}-eth0.json"))).expect("record"),
    )
    .unwrap();
    assert_eq!(record["publicKey"], a.key.public_key().to_base64());
    assert_eq!(record["k8s"]["K8S_POD_NAME"], "a-0");
    assert_eq!(record["k8s"]["K8S_POD_UID"], "1234");

    assert!(
        a.pod.ping(&ip_z, PING_WITHIN),
        "pod a reaches pod z through the tunnel"
    );
    // The UDP socket is in the node, not in the pod.
    assert!(a.node.udp_ports().contains(&51820) && !a.pod.udp_ports().contains(&51820));

    // CHECK passes with the ADD result as prevResult.
    let mut check = conf_a.clone();
    check["prevResult"] = res_a.clone();
    Call::new("CHECK")
        .container(&cid_a, &a.netns(), "eth0")
        .run_in(&a.node.ns, &check.to_string())
        .ok();

    // Idempotent ADD: same answer, still one interface.
    let again = add_a.run_in(&a.node.ns, &conf_a.to_string()).ok();
    assert_eq!(again, res_a);
    assert_eq!(
        a.pod.link_names().iter().filter(|l| *l == "eth0").count(),
        1
    );

    // DEL, DEL again, and DEL after the pod namespace is gone: all exit 0, nothing left.
    let del_a = Call::new("DEL").container(&cid_a, &a.netns(), "eth0");
    assert!(del_a.run_in(&a.node.ns, &conf_a.to_string()).ok().is_null());
    assert!(del_a.run_in(&a.node.ns, &conf_a.to_string()).ok().is_null());
    assert!(
        eventually(Duration::from_secs(5), || leftovers(&a, &[&cid_a])
            .is_empty()),
        "leftovers: {:?}",
        leftovers(&a, &[&cid_a])
    );
    let pod_z_name = z.pod.name.clone();
    let netns_z = z.netns();
    drop(z.pod);
    assert!(Netns::from_name(&pod_z_name).is_err());
    let del_z = Call::new("DEL")
        .container(&cid_z, &netns_z, "eth0")
        .run_in(&z.node.ns, &conf_z.to_string());
    del_z.ok();
    assert!(
        eventually(Duration::from_secs(5), || !z
            .node
            .udp_ports()
            .contains(&51820)),
        "pod z's socket closed"
    );
    assert!(std::fs::read_dir(state_a.0.join("wgnet"))
        .unwrap()
        .flatten()
        .all(|e| !e.path().to_string_lossy().ends_with(".json")));
}

#[test]
fn chained_full_tunnel_check_detects_drift() {
    let Some(backend) = environment("chained_full_tunnel_check_detects_drift") else {
        return;
    };
    let b = backend_name(&backend);
    let (a, z) = (Node::new("a"), Node::new("z"));
    let w = wire(&a.node, &z.node);
    let state = StateDir::new(&format!("ch{}", tag()));
    let state_z = StateDir::new(&format!("chz{}", tag()));
    let x = (std::process::id() % 200 + 20) as u8;
    let (ip_a, ip_z) = (format!("10.12.{x}.1"), format!("10.12.{x}.2"));
    let cid = format!("chained-{}", tag());

    // What a bridge + host-local chain would have produced for eth0.
    let prev = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"}, {"name": "eth0", "mac": "aa:bb:cc:dd:ee:00", "sandbox": a.netns()}],
        "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
        "dns": {"nameservers": ["10.88.0.1"]}});
    // Pod a sends everything through the tunnel: allowed IPs 0.0.0.0/0 contain its own address.
    let mut conf_a = conf(
        "1.0.0",
        &state,
        b,
        &a.key,
        &format!("{ip_a}/24"),
        &z.key,
        &format!("{}:51820", w.b_ip),
        &["0.0.0.0/0"],
    );
    conf_a["prevResult"] = prev.clone();
    conf_a["mtu"] = json!(1380);
    let conf_z = conf(
        "1.0.0",
        &state_z,
        b,
        &z.key,
        &format!("{ip_z}/24"),
        &a.key,
        &format!("{}:51820", w.a_ip),
        &[&format!("{ip_a}/32")],
    );

    let res = Call::new("ADD")
        .container(&cid, &a.netns(), "eth0")
        .run_in(&a.node.ns, &conf_a.to_string())
        .ok();
    Call::new("ADD")
        .container("z", &z.netns(), "eth0")
        .run_in(&z.node.ns, &conf_z.to_string())
        .ok();

    // prevResult kept, wg0 appended with its IP and the default route.
    let ifs = res["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3);
    assert_eq!(
        ifs[2],
        json!({"name": "wg0", "mac": "00:00:00:00:00:00", "sandbox": a.netns()}),
        "1.0.0 has no interface mtu"
    );
    assert_eq!(res["ips"][0]["gateway"], "10.88.0.1");
    assert_eq!(
        res["ips"][1],
        json!({"address": format!("{ip_a}/24"), "interface": 2})
    );
    assert!(res["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == &json!({"dst": "0.0.0.0/0"})));
    assert_eq!(res["dns"]["nameservers"][0], "10.88.0.1");

    // Full tunnel: the pod's default route goes through wg0, and it works.
    let rtnl = Rtnl::open(&a.pod.ns).unwrap();
    let wg0 = rtnl.link_by_name(&IfName::new("wg0").unwrap()).unwrap();
    assert_eq!(wg0.mtu, 1380);
    assert!(rtnl
        .routes(Some(wg_netns::TABLE_MAIN))
        .unwrap()
        .iter()
        .any(|r| r.destination.prefix() == 0 && r.oif == Some(wg0.index)));
    assert!(
        a.pod.ping(&ip_z, PING_WITHIN),
        "pod a reaches pod z through the full tunnel"
    );

    let mut check = conf_a.clone();
    check["prevResult"] = res.clone();
    let check_call = Call::new("CHECK").container(&cid, &a.netns(), "eth0");
    check_call.run_in(&a.node.ns, &check.to_string()).ok();

    // Drift: an address removed and the peer's allowed IPs changed behind our back.
    rtnl.del_address(wg0.index, format!("{ip_a}/24").parse().unwrap())
        .unwrap();
    let place = wg_netns::Birthplace::new(&a.node.ns, &a.pod.ns, &backend).unwrap();
    let found = place
        .find(
            &IfName::new("wg0").unwrap(),
            &wg_cni::birth_name("wgnet", &cid, "eth0"),
        )
        .unwrap()
        .expect("attached");
    let dev = place.device(&found).unwrap();
    dev.set(
        &wg_netns::DeviceConfig::new().peer(
            wg_netns::PeerConfig::new(z.key.public_key())
                .replace_allowed_ips()
                .allowed_ip("10.99.0.0/16".parse().unwrap()),
        ),
    )
    .unwrap();
    let j = check_call.run_in(&a.node.ns, &check.to_string()).err(100);
    let details = j["details"].as_str().unwrap();
    assert!(
        details.contains(&format!("address {ip_a}/24 is missing")),
        "{details}"
    );
    assert!(
        details.contains("allowed IPs are [10.99.0.0/16], configured [0.0.0.0/0]"),
        "{details}"
    );

    // An ADD again repairs it (idempotent ADD reconciles), and CHECK passes.
    Call::new("ADD")
        .container(&cid, &a.netns(), "eth0")
        .run_in(&a.node.ns, &conf_a.to_string())
        .ok();
    check_call.run_in(&a.node.ns, &check.to_string()).ok();

    Call::new("DEL")
        .container(&cid, &a.netns(), "eth0")
        .run_in(&a.node.ns, &conf_a.to_string())
        .ok();
    Call::new("DEL")
        .container("z", &z.netns(), "eth0")
        .run_in(&z.node.ns, &conf_z.to_string())
        .ok();
    assert!(eventually(Duration::from_secs(5), || leftovers(
        &a,
        &[&cid]
    )
    .is_empty()
        && leftovers(&z, &["z"]).is_empty()));
}

#[test]
fn failed_add_leaves_nothing_and_generated_keys_are_recorded() {
    let Some(backend) = environment("failed_add_leaves_nothing_and_generated_keys_are_recorded")
    else {
        return;
    };
    let b = backend_name(&backend);
    let n = Node::new("f");
    let state = StateDir::new(&format!("f{}", tag()));
    let peer = PrivateKey::generate().unwrap();
    // No privateKey: generated per attachment. A route via an unreachable gateway fails late.
    let mut c = conf(
        "1.1.0",
        &state,
        b,
        &n.key,
        "10.11.0.2/24",
        &peer,
        "127.0.0.1:51999",
        &["10.11.0.0/24"],
    );
    c.as_object_mut().unwrap().remove("privateKey");
    c["routes"] = json!([{"dst": "10.200.0.0/16", "gw": "10.123.123.123"}]);
    let call = Call::new("ADD").container("fail", &n.netns(), "eth0");
    let j = call.run_in(&n.node.ns, &c.to_string()).err(5);
    assert!(
        j["details"].as_str().unwrap().contains("10.200.0.0/16"),
        "{j}"
    );
    assert!(
        eventually(Duration::from_secs(5), || leftovers(&n, &["fail"])
            .is_empty()),
        "{:?}",
        leftovers(&n, &["fail"])
    );
    assert!(
        !state.0.join("wgnet").join("fail-eth0.json").exists(),
        "no record of a failed ADD"
    );

    // Without the bad route the generated key works and is recorded.
    c.as_object_mut().unwrap().remove("routes");
    c["mtu"] = json!("auto");
    let res = call.run_in(&n.node.ns, &c.to_string()).ok();
    let record: Value = serde_json::from_slice(
        &std::fs::read(state.0.join("wgnet").join("fail-eth0.json")).unwrap(),
    )
    .unwrap();
    let place = wg_netns::Birthplace::new(&n.node.ns, &n.pod.ns, &backend).unwrap();
    let found = place
        .find(
            &IfName::new("eth0").unwrap(),
            &wg_cni::birth_name("wgnet", "fail", "eth0"),
        )
        .unwrap()
        .expect("attached");
    let dev = place.device(&found).unwrap().get().unwrap();
    assert_eq!(record["publicKey"], dev.public_key.unwrap().to_base64());
    // mtu auto with no underlay link towards the endpoint (it is local) falls back to 1420.
    assert_eq!(res["interfaces"][0]["mtu"], 1420);
    // A second ADD keeps the generated key.
    call.run_in(&n.node.ns, &c.to_string()).ok();
    let record2: Value = serde_json::from_slice(
        &std::fs::read(state.0.join("wgnet").join("fail-eth0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record2["publicKey"], record["publicKey"]);
    Call::new("DEL")
        .container("fail", &n.netns(), "eth0")
        .run_in(&n.node.ns, &c.to_string())
        .ok();
}

#[test]
fn gc_removes_only_what_is_not_listed_and_container_socket_namespace() {
    let Some(backend) =
        environment("gc_removes_only_what_is_not_listed_and_container_socket_namespace")
    else {
        return;
    };
    let b = backend_name(&backend);
    let (n1, n2) = (Node::new("g"), Node::new("h"));
    let state = StateDir::new(&format!("g{}", tag()));
    let peer = PrivateKey::generate().unwrap();
    let mut c1 = conf(
        "1.1.0",
        &state,
        b,
        &n1.key,
        "10.10.1.2/24",
        &peer,
        "127.0.0.1:51999",
        &["10.10.1.0/24"],
    );
    let mut c2 = conf(
        "1.1.0",
        &state,
        b,
        &n2.key,
        "10.10.2.2/24",
        &peer,
        "127.0.0.1:51999",
        &["10.10.2.0/24"],
    );
    c1["listenPort"] = json!(51830);
    c2["listenPort"] = json!(51831);
    // The second pod's UDP socket lives in the pod itself.
    c2["socketNamespace"] = json!("container");
    // Both "nodes" are the same runtime namespace here: n1.node.
    Call::new("ADD")
        .container("keep", &n1.netns(), "eth0")
        .run_in(&n1.node.ns, &c1.to_string())
        .ok();
    Call::new("ADD")
        .container("drop", &n2.netns(), "eth0")
        .run_in(&n1.node.ns, &c2.to_string())
        .ok();
    assert!(
        n2.pod.udp_ports().contains(&51831),
        "socketNamespace container: socket in the pod"
    );
    assert!(!n1.node.udp_ports().contains(&51831));
    assert!(
        n1.node.udp_ports().contains(&51830),
        "socketNamespace host: socket in the node"
    );

    let mut gc = c1.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    Call::new("GC")
        .container("", "", "")
        .run_in(&n1.node.ns, &gc.to_string())
        .ok();
    assert!(
        n1.pod.link_names().contains(&"eth0".to_string()),
        "the listed attachment stays"
    );
    assert!(
        !n2.pod.link_names().contains(&"eth0".to_string()),
        "the unlisted one is gone"
    );
    assert!(eventually(Duration::from_secs(5), || !n2
        .pod
        .udp_ports()
        .contains(&51831)));
    assert!(
        state.0.join("wgnet/keep-eth0.json").exists()
            && !state.0.join("wgnet/drop-eth0.json").exists()
    );
    Call::new("DEL")
        .container("keep", &n1.netns(), "eth0")
        .run_in(&n1.node.ns, &c1.to_string())
        .ok();
    assert!(
        eventually(Duration::from_secs(5), || leftovers(&n1, &["keep", "drop"])
            .is_empty()),
        "{:?}",
        leftovers(&n1, &["keep", "drop"])
    );
}

/// A configuration that ADD refuses (here a peer carrying the interface's
/// own public key, written into the file after the pod was added) must not
/// keep the runtime from removing the pod: DEL and GC validate only what
/// they use, remove the attachment and its record, and exit 0; ADD still
/// refuses the file with code 7.
#[test]
fn del_and_gc_remove_what_a_now_refused_configuration_added() {
    let Some(backend) = environment("del_and_gc_remove_what_a_now_refused_configuration_added")
    else {
        return;
    };
    let b = backend_name(&backend);
    let (n, other) = (Node::new("v"), Node::new("u"));
    let state = StateDir::new(&format!("v{}", tag()));
    let peer = PrivateKey::generate().unwrap();
    let mut c = conf(
        "1.1.0",
        &state,
        b,
        &n.key,
        "10.12.1.2/24",
        &peer,
        "127.0.0.1:51999",
        &["10.12.1.0/24"],
    );
    c["listenPort"] = json!(51840);
    let mut c2 = c.clone();
    c2["listenPort"] = json!(51841);
    Call::new("ADD")
        .container("bad-del", &n.netns(), "eth0")
        .run_in(&n.node.ns, &c.to_string())
        .ok();
    // Both "nodes" are n.node's namespace: GC walks one state directory.
    Call::new("ADD")
        .container("bad-gc", &other.netns(), "eth0")
        .run_in(&n.node.ns, &c2.to_string())
        .ok();
    assert!(n.pod.link_names().contains(&"eth0".to_string()));
    assert!(other.pod.link_names().contains(&"eth0".to_string()));

    // The file now names the interface's own key as a peer.
    let mut broken = c.clone();
    broken["peers"][0]["publicKey"] = json!(&*n.key.public_key().to_base64());
    let j = Call::new("ADD")
        .container("bad-del", &n.netns(), "eth0")
        .run_in(&n.node.ns, &broken.to_string())
        .err(7);
    assert!(
        j["details"].as_str().unwrap().contains("own public key"),
        "{j}"
    );

    assert!(Call::new("DEL")
        .container("bad-del", &n.netns(), "eth0")
        .run_in(&n.node.ns, &broken.to_string())
        .ok()
        .is_null());
    assert!(
        eventually(Duration::from_secs(5), || leftovers(&n, &["bad-del"])
            .is_empty()),
        "{:?}",
        leftovers(&n, &["bad-del"])
    );
    assert!(!state.0.join("wgnet/bad-del-eth0.json").exists());

    let mut gc = broken.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    Call::new("GC")
        .container("", "", "")
        .run_in(&n.node.ns, &gc.to_string())
        .ok();
    assert!(
        eventually(Duration::from_secs(5), || !other
            .pod
            .link_names()
            .contains(&"eth0".to_string())),
        "GC removed the unlisted attachment"
    );
    assert!(!state.0.join("wgnet/bad-gc-eth0.json").exists());
    let birth_gc = birth("bad-gc", "eth0");
    assert!(
        eventually(Duration::from_secs(5), || !std::path::Path::new(&format!(
            "/var/run/wireguard/{birth_gc}.sock"
        ))
        .exists()
            && !n.node.link_names().contains(&birth_gc)),
        "nothing of it left at the birthplace"
    );
}
