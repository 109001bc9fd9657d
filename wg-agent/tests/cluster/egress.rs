//! Issue 21 §1 on the real cluster: a selected pod's traffic leaves
//! through a WireGuard "provider" that NATs to an "internet" host
//! (198.51.100.10, a documentation address that exists only in these
//! namespaces), the cluster stays local, and nothing of the pod's towards
//! the internet host ever arrives at its node in clear (an iptables
//! counter in the node's raw PREROUTING), whichever way the tunnel breaks.

use std::process::Command;
use std::time::Duration;

use wg_netns::{Birthplace, DeviceConfig, InterfaceSpec, PeerConfig, PrivateKey, Userspace};
use wg_netns_testkit::{eventually, must, TestNs};

use super::Ctx;

const PROVIDER_IP: &str = "10.250.0.101";
const PROVIDER_PORT: u16 = 51901;
const INTERNET: &str = "198.51.100.10";

/// The provider: a namespace on the cluster's bridge with a userspace
/// WireGuard device, forwarding and masquerading to the internet host's
/// namespace behind it.
struct Provider {
    ns: TestNs,
    internet: TestNs,
    place: Birthplace,
    key: PrivateKey,
}

impl Provider {
    fn new() -> Provider {
        let (ns, place) = super::bridge_host("prov", "wgk8s-provv", PROVIDER_IP);
        let internet = TestNs::with_prefix("wgk8s", "inet");
        let (p, i) = (ns.name.clone(), internet.name.clone());
        must(&[
            "ip", "-n", &p, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns",
            &i,
        ]);
        must(&[
            "ip",
            "-n",
            &p,
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "up0",
        ]);
        must(&["ip", "-n", &p, "link", "set", "up0", "up"]);
        must(&[
            "ip",
            "-n",
            &i,
            "addr",
            "add",
            &format!("{INTERNET}/24"),
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &i, "link", "set", "eth0", "up"]);
        must(&[
            "ip",
            "netns",
            "exec",
            &p,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        must(&[
            "ip",
            "netns",
            "exec",
            &p,
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "up0",
            "-j",
            "MASQUERADE",
        ]);
        // What the internet host sees: echo requests from the provider's
        // address (counted), none from anything else.
        for src in ["198.51.100.1", "0.0.0.0/0"] {
            must(&[
                "ip", "netns", "exec", &i, "iptables", "-w", "-A", "INPUT", "-p", "icmp", "-s", src,
            ]);
        }
        Provider {
            ns,
            internet,
            place,
            key: PrivateKey::generate().expect("key"),
        }
    }

    /// The provider's device with the pod as its one peer.
    fn serve(&self, pod_key: &str, pod_endpoint: &str, pod_addr: &str) {
        let spec = InterfaceSpec::new(
            wg_netns::IfName::new("wgk8sprov0").expect("name"),
            wg_netns::IfName::new("wgprov").expect("name"),
        )
        .device(
            DeviceConfig::new()
                .private_key(self.key.clone())
                .listen_port(PROVIDER_PORT)
                .replace_peers()
                .peer(
                    PeerConfig::new(pod_key.parse().expect("key"))
                        .endpoint(pod_endpoint.parse().expect("endpoint"))
                        .allowed_ip(format!("{pod_addr}/32").parse().expect("addr")),
                ),
        )
        .address("10.92.0.1/32".parse().expect("addr"))
        .route(wg_netns::Route::new(
            format!("{pod_addr}/32").parse().expect("addr"),
        ));
        self.place.ensure(&spec).expect("provider device");
    }

    /// (echo requests from the provider's address, from anyone) at the
    /// internet host.
    fn seen(&self) -> (u64, u64) {
        let out = must(&[
            "ip",
            "netns",
            "exec",
            &self.internet.name,
            "iptables",
            "-w",
            "-L",
            "INPUT",
            "-v",
            "-n",
            "-x",
        ]);
        let counts: Vec<u64> = out
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        (
            counts.first().copied().unwrap_or(0),
            counts.get(1).copied().unwrap_or(0),
        )
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.place.detach(
            &wg_netns::IfName::new("wgprov").expect("name"),
            &wg_netns::IfName::new("wgk8sprov0").expect("name"),
        );
        let _ = Command::new("ip")
            .args(["-n", "wgk8s-cp", "link", "del", "wgk8s-provv"])
            .output();
        let _ = (&self.ns, &self.internet);
    }
}

/// Packets for the internet host that arrived at node `i` in clear.
fn leaked(ctx: &Ctx, i: usize) -> u64 {
    let out = ctx.c.node_exec(
        i,
        &[
            "iptables",
            "-w",
            "-t",
            "raw",
            "-L",
            "PREROUTING",
            "-v",
            "-n",
            "-x",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(INTERNET))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn pings_once(ctx: &Ctx, pod: &str) -> bool {
    ctx.c
        .exec(pod, &["ping", "-c", "1", "-W", "1", INTERNET])
        .status
        .success()
}

pub fn egress_with_kill_switch(ctx: &Ctx) {
    let c = ctx.c;
    let prov = Provider::new();
    for i in 1..=2 {
        let out = c.node_exec(
            i,
            &[
                "iptables",
                "-w",
                "-t",
                "raw",
                "-A",
                "PREROUTING",
                "-d",
                &format!("{INTERNET}/32"),
            ],
        );
        assert!(out.status.success(), "{out:?}");
    }
    c.apply(
        "apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardNetwork\nmetadata: {name: vpn}\n\
         spec:\n  addressPools: [{cidr: \"10.92.0.0/16\", blockSize: 28}]\n  listenPorts: {from: 52400, to: 52499}\n  mesh: false\n  \
         killSwitch: {localCIDRs: [\"10.244.0.0/16\", \"10.251.0.0/16\", \"10.250.0.0/24\"]}\n",
    );
    c.apply(&format!(
        "apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardPeer\nmetadata: {{name: provider, namespace: default}}\n\
         spec:\n  network: vpn\n  publicKey: \"{}\"\n  endpoint: \"{PROVIDER_IP}:{PROVIDER_PORT}\"\n  allowedIPs: [\"0.0.0.0/0\"]\n  \
         podSelector: {{matchLabels: {{app: e}}}}\n",
        prov.key.public_key().to_base64()
    ));
    c.apply(&wg_netns_testkit::cluster::pod_yaml(
        "we",
        &c.node_netns(1),
        "e",
        Some("vpn"),
    ));
    c.wait_pod_running("we", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let att = ctx.attachment("we").expect("we's attachment");
    let key = att["status"]["publicKey"]
        .as_str()
        .expect("key")
        .to_string();
    let endpoint = att["status"]["endpoint"]
        .as_str()
        .expect("endpoint")
        .to_string();
    let addr = ctx.wg_addr("we");
    prov.serve(&key, &endpoint, &addr);
    let routes = String::from_utf8_lossy(&c.exec("we", &["ip", "route"]).stdout).into_owned();
    assert!(routes.contains("unreachable default"), "{routes}");
    assert!(
        ctx.ping("we", INTERNET),
        "we cannot reach the internet through the provider"
    );
    let (from_provider, from_any) = prov.seen();
    assert!(
        from_provider > 0 && from_provider == from_any,
        "the internet host saw {from_any} echoes, {from_provider} from the provider"
    );
    // The cluster stays local: the other node's pod by its pod IP.
    let wb_ip = c.pod_ip("wb");
    assert!(
        ctx.ping("we", &wb_ip),
        "we cannot reach wb's pod IP {wb_ip}"
    );
    assert_eq!(
        leaked(ctx, 1),
        0,
        "a packet for the internet host left by the node"
    );

    let peer_yaml = format!(
        "apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardPeer\nmetadata: {{name: provider, namespace: default}}\n\
         spec:\n  network: vpn\n  publicKey: \"{}\"\n  endpoint: \"{PROVIDER_IP}:{PROVIDER_PORT}\"\n  allowedIPs: [\"0.0.0.0/0\"]\n  \
         podSelector: {{matchLabels: {{app: e}}}}\n",
        prov.key.public_key().to_base64()
    );
    let refused = |what: &str| {
        assert!(
            eventually(Duration::from_secs(10), || !pings_once(ctx, "we")),
            "{what}: traffic went on"
        );
        assert!(!pings_once(ctx, "we"), "{what}: traffic went on");
        assert_eq!(
            leaked(ctx, 1),
            0,
            "{what}: a packet for the internet host left by the node"
        );
        eprintln!("egress: {what}: refused in the pod, node counter 0");
    };
    let resumes = |what: &str| {
        assert!(ctx.ping("we", INTERNET), "{what}: traffic did not resume");
        assert_eq!(leaked(ctx, 1), 0, "{what}: a packet left by the node");
    };

    // Break 1: the peer deleted; back.
    c.kubectl_ok(&["delete", "wgpeer", "provider"]);
    refused("peer deleted");
    c.apply(&peer_yaml);
    resumes("peer back");

    // Break 2: the device deleted inside the pod (as a crash would); the
    // agent's verify makes it again (every 5 s).
    let pid = c.pod_sandbox_pid(1, "we").expect("sandbox");
    let in_pod = |args: &[&str]| {
        Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(args)
            .output()
            .expect("nsenter")
    };
    assert!(in_pod(&["ip", "link", "del", "wg0"]).status.success());
    assert!(!pings_once(ctx, "we"), "device deleted: traffic went on");
    assert_eq!(
        leaked(ctx, 1),
        0,
        "device deleted: a packet left by the node"
    );
    eprintln!("egress: device deleted: refused in the pod, node counter 0");
    resumes("device repaired");

    // Break 3: the gateway down (its daemon stopped).
    let daemon = Userspace::from_env()
        .daemon_pid("wgk8sprov0")
        .expect("the provider's daemon");
    must(&["kill", "-STOP", &daemon.to_string()]);
    let down = !pings_once(ctx, "we") && !pings_once(ctx, "we");
    must(&["kill", "-CONT", &daemon.to_string()]);
    assert!(down, "gateway down: traffic went on");
    assert_eq!(leaked(ctx, 1), 0, "gateway down: a packet left by the node");
    eprintln!("egress: gateway down: no answer, node counter 0");
    resumes("gateway back");

    // Break 4: the primary default route put back (a plugin re-run): the
    // agent's verify finds the leak and removes it.
    let gw = routes
        .lines()
        .find_map(|l| {
            l.split("via ")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
        .expect("a gateway of the local routes");
    assert!(
        in_pod(&["ip", "route", "add", "default", "via", &gw, "dev", "eth0", "metric", "100"])
            .status
            .success()
    );
    let repaired = eventually(Duration::from_secs(15), || {
        !String::from_utf8_lossy(&in_pod(&["ip", "route"]).stdout)
            .contains(&format!("default via {gw}"))
    });
    assert!(repaired, "the leaking default route stayed");
    let metrics = ctx.http(1, "/metrics").map(|(_, b)| b).unwrap_or_default();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wg_agent_kill_switch_repairs_total ") && !l.ends_with(" 0")),
        "no kill switch repair counted"
    );
    eprintln!("egress: a default route via eth0 put back: removed by the agent's verify");
    resumes("after the repair");
    let (from_provider, from_any) = prov.seen();
    assert_eq!(
        from_provider, from_any,
        "the internet host saw the pod's own address"
    );

    c.kubectl_ok(&["delete", "pod", "we", "--wait=true", "--timeout=60s"]);
    c.kubectl_ok(&["delete", "wgpeer", "provider"]);
    c.kubectl_ok(&["delete", "wgnet", "vpn"]);
}
