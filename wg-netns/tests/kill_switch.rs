//! The kill switch in real namespaces (root only): a "pod" whose primary
//! default route goes through a "node" to the "internet" (198.51.100.10, a
//! documentation address that exists only in these namespaces), and a
//! "tunnel" interface straight to the internet host standing in for wg0
//! (the rule is about routes and interfaces; a WireGuard device's routes go
//! with it the same way).
//!
//! What a leak would be is counted where it would show: an iptables
//! counter in the node's `raw PREROUTING` of packets for the internet host
//! arriving from the pod. Before the kill switch the counter moves (the
//! test can see a leak); after it, it never does: before the tunnel exists,
//! while it carries the traffic, after it is deleted, and when someone puts
//! the primary default route back (found as a leak and removed).

use std::time::Duration;

use wg_netns::{KillSwitch, KillSwitchChange, Leak, Rtnl};
use wg_netns_testkit::{environment, must, wire, TestNs};

const INTERNET: &str = "198.51.100.10";

/// `iptables -w -t raw ARGS` in the node.
fn raw_table(node: &TestNs, args: &[&str]) -> String {
    let mut full = vec![
        "ip", "netns", "exec", &node.name, "iptables", "-w", "-t", "raw",
    ];
    full.extend_from_slice(args);
    must(&full)
}

/// The node's count of packets for the internet host.
fn leaked(node: &TestNs) -> u64 {
    raw_table(node, &["-L", "PREROUTING", "-v", "-n", "-x"])
        .lines()
        .filter(|l| l.contains(INTERNET))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn pings(pod: &TestNs, addr: &str) -> bool {
    pod.exec(&["ping", "-c", "1", "-W", "1", addr])
        .status
        .success()
}

#[test]
fn nothing_leaves_but_the_tunnel_and_the_local_networks() {
    if environment("kill_switch").is_none() {
        return;
    }
    let pod = TestNs::new("ks-pod");
    let node = TestNs::new("ks-node");
    let world = TestNs::new("ks-world");
    let pn = wire(&pod, &node);
    let nw = wire(&node, &world);
    // The internet host: an address on the world's loopback, routed by the
    // node; the world answers the pod's networks through the node.
    must(&[
        "ip",
        "-n",
        &world.name,
        "addr",
        "add",
        &format!("{INTERNET}/32"),
        "dev",
        "lo",
    ]);
    let pod_net = wg_netns::normalize(format!("{}/24", pn.a_ip).parse().expect("net")).to_string();
    must(&[
        "ip",
        "-n",
        &world.name,
        "route",
        "add",
        &pod_net,
        "via",
        &nw.a_ip,
    ]);
    must(&[
        "ip",
        "-n",
        &node.name,
        "route",
        "add",
        &format!("{INTERNET}/32"),
        "via",
        &nw.b_ip,
    ]);
    must(&[
        "ip",
        "netns",
        "exec",
        &node.name,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    raw_table(
        &node,
        &["-A", "PREROUTING", "-d", &format!("{INTERNET}/32")],
    );
    // The primary plugin's default route, as a DHCP client would add it (a
    // protocol other than ours: the kill switch must still remove it).
    must(&[
        "ip", "-n", &pod.name, "route", "add", "default", "via", &pn.b_ip, "proto", "dhcp",
    ]);
    assert!(pings(&pod, INTERNET), "the primary path does not work");
    assert!(leaked(&node) > 0, "the counter cannot see the primary path");
    raw_table(&node, &["-Z"]);

    // The cluster's network behind the node stays local.
    let cluster = wg_netns::normalize(format!("{}/24", nw.b_ip).parse().expect("net"));
    let ks = KillSwitch::new(vec![cluster]);
    let rtnl = Rtnl::open(&pod.ns).expect("rtnl");
    let primary_if = rtnl
        .link_by_name(&wg_netns::IfName::new(veth_name(&pod)).expect("name"))
        .expect("veth")
        .index;

    // Before the tunnel exists (an ADD): locked at once.
    let changes = ks.ensure(&rtnl, None).expect("ensure");
    assert!(
        changes.contains(&KillSwitchChange::Unreachable(
            "0.0.0.0/0".parse().expect("net")
        )),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, KillSwitchChange::Removed(r)
            if r.destination.prefix() == 0 && r.oif == Some(primary_if))),
        "the primary default route stayed: {changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, KillSwitchChange::LocalRoute(r)
            if r.destination == cluster && r.oif == Some(primary_if))),
        "{changes:?}"
    );
    assert_eq!(
        ks.ensure(&rtnl, None).expect("again"),
        vec![],
        "not idempotent"
    );
    assert_eq!(ks.leaks(&rtnl, None).expect("leaks"), vec![]);
    let refused = pod.exec(&["ping", "-c", "1", "-W", "1", INTERNET]);
    assert!(
        !refused.status.success(),
        "the internet is reachable without the tunnel"
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        said.contains("nreachable") || said.contains("No route to host"),
        "refused in the pod, not lost on the way: {said}"
    );
    assert!(
        pings(&pod, &nw.b_ip),
        "the local network behind the node is cut"
    );
    assert_eq!(
        leaked(&node),
        0,
        "a packet for the internet left by the node"
    );

    // The tunnel: the pod's traffic goes through it, none by the node.
    let pt = wire(&pod, &world);
    let tunnel = rtnl
        .links()
        .expect("links")
        .into_iter()
        .find(|l| l.index != primary_if && l.name != "lo")
        .expect("the tunnel interface");
    must(&[
        "ip",
        "-n",
        &pod.name,
        "route",
        "add",
        "default",
        "via",
        &pt.b_ip,
        "dev",
        &tunnel.name,
    ]);
    assert_eq!(ks.leaks(&rtnl, Some(tunnel.index)).expect("leaks"), vec![]);
    assert_eq!(
        ks.ensure(&rtnl, Some(tunnel.index)).expect("ensure"),
        vec![]
    );
    assert!(
        pings(&pod, INTERNET),
        "the tunnel does not carry the traffic"
    );
    assert_eq!(
        leaked(&node),
        0,
        "with the tunnel up, a packet went by the node"
    );

    // The tunnel goes (a device deleted, a daemon gone): refused again.
    rtnl.delete_link(tunnel.index).expect("delete the tunnel");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !pings(&pod, INTERNET),
        "the tunnel's loss opened the primary path"
    );
    assert_eq!(
        leaked(&node),
        0,
        "without the tunnel, a packet went by the node"
    );
    assert_eq!(ks.leaks(&rtnl, None).expect("leaks"), vec![]);

    // Someone puts the primary default route back: a leak, found and
    // removed by the same rule.
    must(&[
        "ip", "-n", &pod.name, "route", "add", "default", "via", &pn.b_ip,
    ]);
    let leaks = ks.leaks(&rtnl, None).expect("leaks");
    assert!(
        matches!(leaks.as_slice(), [Leak::Route(r)] if r.destination.prefix() == 0),
        "{leaks:?}"
    );
    let changes = ks.ensure(&rtnl, None).expect("repair");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(!pings(&pod, INTERNET));
    assert_eq!(leaked(&node), 0);
}

/// The name of the pod's end of its first veth (`va...`, testkit's `wire`).
fn veth_name(pod: &TestNs) -> String {
    pod.link_names()
        .into_iter()
        .find(|n| n.starts_with("va"))
        .expect("the pod's veth")
}
