//! Issue 21 §1 on the real cluster: a selected pod's traffic leaves
//! through a WireGuard "provider" that NATs to an "internet" host
//! (198.51.100.10, a documentation address that exists only in these
//! namespaces), the cluster stays local, and nothing of the pod's towards
//! the internet host ever arrives at its node in clear (an iptables
//! counter in the node's raw PREROUTING), whichever way the tunnel breaks,
//! node 1's agent killed included.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wg_netns::{DeviceConfig, InterfaceSpec, PeerConfig, PrivateKey, Userspace};
use wg_netns_testkit::{eventually, must, TestNs};

use super::Ctx;

const PROVIDER_IP: &str = "10.250.0.101";
const PROVIDER_PORT: u16 = 51901;
const INTERNET: &str = "198.51.100.10";
/// The kubelets' `clusterDNS` (scripts/cluster): the `kube-dns` Service.
const DNS_SERVICE_IP: &str = "10.251.0.10";
/// The DNS server behind it: a host on the cluster's bridge.
const DNS_IP: &str = "10.250.0.102";

/// The provider: a namespace on the cluster's bridge with a userspace
/// WireGuard device, forwarding and masquerading to the internet host's
/// namespace behind it.
struct Provider {
    host: super::BridgeHost,
    internet: TestNs,
    key: PrivateKey,
}

impl Provider {
    fn new() -> Provider {
        let host = super::bridge_host("prov", "wgk8s-provv", PROVIDER_IP);
        let internet = TestNs::with_prefix("wgk8s", "inet");
        let (p, i) = (host.ns.name.clone(), internet.name.clone());
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
            host,
            internet,
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
        self.host.place.ensure(&spec).expect("provider device");
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
        let _ = self.host.place.detach(
            &wg_netns::IfName::new("wgprov").expect("name"),
            &wg_netns::IfName::new("wgk8sprov0").expect("name"),
        );
        let _ = &self.internet;
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

/// The cluster DNS as kube-proxy and CoreDNS would serve it, for the
/// names this scenario asks for: a real DNS server (dnsmasq) on a host of
/// the cluster's bridge, the `kube-system/kube-dns` Service at the
/// kubelets' `clusterDNS` address with that host as its endpoint, and in
/// node 1's namespace the DNAT kube-proxy would install for it (the
/// cluster has no kube-proxy; scripts/cluster serves the `kubernetes`
/// Service the same way).
struct ClusterDns<'a> {
    ctx: &'a Ctx<'a>,
    host: super::BridgeHost,
    server: Option<Child>,
}

impl<'a> ClusterDns<'a> {
    /// Serve `records` (name, address) for the `cluster.local` domain; any
    /// other name there is NXDOMAIN.
    fn new(ctx: &'a Ctx<'a>, records: &[(&str, &str)]) -> ClusterDns<'a> {
        let host = super::bridge_host("dns", "wgk8s-dnsv", DNS_IP);
        // Answers go back to the pods by their own addresses.
        for (i, cidr) in ctx.podcidr.iter().enumerate() {
            must(&[
                "ip",
                "-n",
                &host.ns.name,
                "route",
                "add",
                cidr,
                "via",
                &ctx.c.node_ip(i + 1),
            ]);
        }
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &host.ns.name,
            "dnsmasq",
            "--keep-in-foreground",
        ])
        .args(["--conf-file=/dev/null", "--no-resolv", "--no-hosts"])
        .args(["--user=root", "--pid-file=", "--bind-interfaces"])
        .arg(format!("--listen-address={DNS_IP}"))
        .arg("--local=/cluster.local/")
        .args(
            records
                .iter()
                .map(|(name, addr)| format!("--host-record={name},{addr}")),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let server = cmd.spawn().expect("dnsmasq");
        let dns = ClusterDns {
            ctx,
            host,
            server: Some(server),
        };
        ctx.c.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: kube-dns, namespace: kube-system}}\n\
             spec:\n  clusterIP: {DNS_SERVICE_IP}\n  ports: [{{name: dns, port: 53, protocol: UDP}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: kube-dns-host, namespace: kube-system, labels: {{kubernetes.io/service-name: kube-dns}}}}\n\
             addressType: IPv4\nports: [{{name: dns, port: 53, protocol: UDP}}]\nendpoints: [{{addresses: [\"{DNS_IP}\"]}}]\n"
        ));
        dns.kube_proxy("-A");
        dns
    }

    fn kube_proxy(&self, op: &str) {
        let to = format!("{DNS_IP}:53");
        let out = self.ctx.c.node_exec(
            1,
            &[
                "iptables",
                "-w",
                "-t",
                "nat",
                op,
                "PREROUTING",
                "-d",
                &format!("{DNS_SERVICE_IP}/32"),
                "-p",
                "udp",
                "--dport",
                "53",
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        );
        assert!(op == "-D" || out.status.success(), "{out:?}");
    }
}

impl Drop for ClusterDns<'_> {
    fn drop(&mut self) {
        self.kube_proxy("-D");
        let _ = self.ctx.c.kubectl(&[
            "-n",
            "kube-system",
            "delete",
            "service,endpointslice",
            "kube-dns",
            "kube-dns-host",
            "--ignore-not-found",
        ]);
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = &self.host;
    }
}

/// A Service `ws` (port 80) for an HTTP server pod on node 2, and node
/// 1's DNAT for it as kube-proxy would install; undone on drop.
struct WebService<'a> {
    ctx: &'a Ctx<'a>,
    rule: Vec<String>,
    cluster_ip: String,
}

impl<'a> WebService<'a> {
    fn new(ctx: &'a Ctx<'a>) -> WebService<'a> {
        let c = ctx.c;
        c.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: ws, namespace: default, labels: {{app: ws}}}}\n\
             spec:\n  nodeName: {}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: bb\n    \
             image: wgk8s.local/busybox:1\n    imagePullPolicy: Never\n    \
             command: [sh, -c, \"mkdir -p /www && echo served-by-ws > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: ws, namespace: default}}\n\
             spec:\n  selector: {{app: ws}}\n  ports: [{{port: 80, targetPort: 8080}}]\n",
            c.node_netns(2)
        ));
        c.wait_pod_running("ws", Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{e}"));
        let cluster_ip =
            c.kubectl_ok(&["get", "service", "ws", "-o", "jsonpath={.spec.clusterIP}"]);
        let rule = vec![
            "PREROUTING".to_string(),
            "-d".into(),
            format!("{}/32", cluster_ip.trim()),
            "-p".into(),
            "tcp".into(),
            "--dport".into(),
            "80".into(),
            "-j".into(),
            "DNAT".into(),
            "--to-destination".into(),
            format!("{}:8080", c.pod_ip("ws")),
        ];
        let web = WebService {
            ctx,
            rule,
            cluster_ip: cluster_ip.trim().to_string(),
        };
        web.kube_proxy("-A");
        web
    }

    fn kube_proxy(&self, op: &str) {
        let mut args = vec!["iptables", "-w", "-t", "nat", op];
        args.extend(self.rule.iter().map(String::as_str));
        let out = self.ctx.c.node_exec(1, &args);
        assert!(op == "-D" || out.status.success(), "{out:?}");
    }
}

impl Drop for WebService<'_> {
    fn drop(&mut self) {
        self.kube_proxy("-D");
        let _ = self.ctx.c.kubectl(&[
            "delete",
            "service/ws",
            "pod/ws",
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

/// The pod's traffic to the internet host stops (refused in the pod) and
/// none of it arrived at node 1.
fn refused(ctx: &Ctx, what: &str) {
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
}

/// The pod reaches the internet host again, and still nothing arrived at
/// node 1.
fn resumes(ctx: &Ctx, what: &str) {
    assert!(ctx.ping("we", INTERNET), "{what}: traffic did not resume");
    assert_eq!(leaked(ctx, 1), 0, "{what}: a packet left by the node");
}

/// Run `args` in the network namespace of the process `pid`.
fn in_netns(pid: u32, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(args)
        .output()
        .expect("nsenter")
}

pub fn egress_with_kill_switch(ctx: &mut Ctx) {
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
    // An unselected pod on the same node is untouched.
    let wa_routes = String::from_utf8_lossy(&c.exec("wa", &["ip", "route"]).stdout).into_owned();
    assert!(!wa_routes.contains("unreachable"), "{wa_routes}");

    let peer_yaml = format!(
        "apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardPeer\nmetadata: {{name: provider, namespace: default}}\n\
         spec:\n  network: vpn\n  publicKey: \"{}\"\n  endpoint: \"{PROVIDER_IP}:{PROVIDER_PORT}\"\n  allowedIPs: [\"0.0.0.0/0\"]\n  \
         podSelector: {{matchLabels: {{app: e}}}}\n",
        prov.key.public_key().to_base64()
    );

    // The cluster DNS and a Service, reached through the primary
    // interface, with the tunnel up and with it broken.
    {
        let web = WebService::new(ctx);
        let _dns = ClusterDns::new(ctx, &[("ws.default.svc.cluster.local", &web.cluster_ip)]);
        let resolv = String::from_utf8_lossy(&c.exec("we", &["cat", "/etc/resolv.conf"]).stdout)
            .into_owned();
        assert!(
            resolv.contains(&format!("nameserver {DNS_SERVICE_IP}")),
            "the kubelet did not give the pod the cluster DNS: {resolv}"
        );
        let cluster_reached = |what: &str| {
            // The Service's name through the cluster DNS (busybox's
            // nslookup walks the search list: the later, unknown names are
            // NXDOMAIN, so only its output tells).
            let found = eventually(Duration::from_secs(15), || {
                String::from_utf8_lossy(&c.exec("we", &["nslookup", "ws"]).stdout)
                    .contains(&format!("Address: {}", web.cluster_ip))
            });
            assert!(found, "{what}: ws not resolved through the cluster DNS");
            // (busybox's static wget crashes resolving even an address.)
            let get = format!(
                "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {} 80",
                web.cluster_ip
            );
            let url = format!("http://{}/", web.cluster_ip);
            let served = eventually(Duration::from_secs(15), || {
                String::from_utf8_lossy(&c.exec("we", &["sh", "-c", &get]).stdout)
                    .contains("served-by-ws")
            });
            assert!(served, "{what}: the Service ws ({url}) not reached");
            eprintln!("egress: {what}: the cluster DNS and the Service ws reached");
        };
        cluster_reached("tunnel up");

        // Break 1: the peer deleted: the internet is refused, the cluster
        // still reached; back.
        c.kubectl_ok(&["delete", "wgpeer", "provider"]);
        refused(ctx, "peer deleted");
        cluster_reached("peer deleted");
        c.apply(&peer_yaml);
        resumes(ctx, "peer back");
    }

    // Break 2: the device deleted inside the pod (as a crash would):
    // nothing leaves by the node while it is gone, and the agent hears the
    // deletion (its link watch: wg_agent_links_removed_total) and makes
    // the device again at once, not at its next verify.
    let pid = c.pod_sandbox_pid(1, "we").expect("sandbox");
    let heard_before = ctx
        .metric(1, "wg_agent_links_removed_total")
        .expect("node 1's wg_agent_links_removed_total");
    let t = std::time::Instant::now();
    assert!(in_netns(pid, &["ip", "link", "del", "wg0"])
        .status
        .success());
    let back = eventually(Duration::from_secs(15), || {
        in_netns(pid, &["ip", "link", "show", "wg0"])
            .status
            .success()
    });
    let took = t.elapsed();
    assert!(back, "device deleted: never made again");
    assert!(
        ctx.metric(1, "wg_agent_links_removed_total")
            .is_some_and(|n| n > heard_before),
        "device deleted: the agent's link watch did not hear it (made again by the verify?)"
    );
    assert_eq!(
        leaked(ctx, 1),
        0,
        "device deleted: a packet left by the node"
    );
    eprintln!("egress: device deleted: heard and made again in {took:?}, node counter 0");
    resumes(ctx, "device repaired");

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
    resumes(ctx, "gateway back");

    // Break 4: node 1's agent killed (SIGKILL) while the pod pings the
    // internet host: the tunnel and the kill switch are the pod's, so
    // nothing is lost; with the agent still away the device is deleted:
    // refused, nothing leaves, nobody repairs it; the restarted agent
    // makes it again.
    let ping = ctx.ping_in_background("we", INTERNET, 30);
    std::thread::sleep(Duration::from_secs(2));
    ctx.agents[0].kill9();
    let (all, _, text) = ping.finish();
    assert!(all, "agent killed: the tunnel lost packets\n{text}");
    assert_eq!(leaked(ctx, 1), 0, "agent killed: a packet left by the node");
    eprintln!("egress: agent killed: 30/30 through the tunnel, node counter 0");
    assert!(in_netns(pid, &["ip", "link", "del", "wg0"])
        .status
        .success());
    refused(ctx, "agent away, device deleted");
    std::thread::sleep(Duration::from_secs(6));
    refused(ctx, "agent away, a verify interval later");
    let t = std::time::Instant::now();
    ctx.start_agent(1);
    resumes(ctx, "agent restarted, device made again");
    eprintln!(
        "egress: agent restarted: the device made again and traffic through it in {:?}",
        t.elapsed()
    );

    // Break 5: the primary default route put back (a plugin re-run): the
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
    assert!(in_netns(
        pid,
        &["ip", "route", "add", "default", "via", &gw, "dev", "eth0", "metric", "100"]
    )
    .status
    .success());
    let repaired = eventually(Duration::from_secs(15), || {
        !String::from_utf8_lossy(&in_netns(pid, &["ip", "route"]).stdout)
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
    resumes(ctx, "after the repair");
    let (from_provider, from_any) = prov.seen();
    assert_eq!(
        from_provider, from_any,
        "the internet host saw the pod's own address"
    );

    c.kubectl_ok(&["delete", "pod", "we", "--wait=true", "--timeout=60s"]);
    c.kubectl_ok(&["delete", "wgpeer", "provider"]);
    c.kubectl_ok(&["delete", "wgnet", "vpn"]);
}
