//! The built `wg-netavark` under a real netavark (2.1.0 from crates.io),
//! driven the way podman drives it:
//!
//! ```text
//! ip netns exec NODE netavark --config DIR --plugin-directory DIR setup /run/netns/CTR < input.json
//! ip netns exec NODE netavark --config DIR --plugin-directory DIR teardown /run/netns/CTR < input.json
//! ```
//!
//! One test per scenario: `info`; `create` (host-local IPAM for a network
//! with subnets); flat options with a key file and a fixed address (setup,
//! status block, record, the UDP socket in the node, ping through the
//! tunnel, setup again, teardown leaving nothing, teardown again); a subnet
//! with a static IP, a generated key and the wg-cni schema under `config`
//! (teardown after the container's namespace is gone); three refused
//! setups (an unknown option, a missing key file, an inline private key),
//! each leaving nothing. Every scenario also checks that no private key
//! appears in any output, log or record.
//!
//! The namespace tests need root, iproute2, iputils-ping, wireguard-tools,
//! wireguard-go and netavark at
//! `$WG_NETNS_TOOLS_CACHE/netavark-$NETAVARK_VERSION/bin/netavark` (default
//! `/var/cache/wg-netns-tools/netavark-2.1.0`), which
//! `scripts/netavark-tests` builds once. Without them a test prints SKIP
//! and passes; under `WG_NETNS_REQUIRE_ALL=1` it fails.
//!
//! Network safety: each test makes its own namespaces, `wgnv-*-node`
//! (netavark runs here, so the plugin's UDP sockets and every encrypted
//! packet stay in it), `wgnv-*-peer` (a wireguard-go peer, joined to the
//! node by a veth pair on 10.251.0.0/30) and `wgnv-*-ctr` (the container).
//! Birth names (and so `/var/run/wireguard` sockets) use the plugin's
//! `birth_prefix` option: `wgnv-`. Everything is removed when a test ends,
//! also when it fails; only wireguard-go daemons in the test's own
//! namespaces are signalled.

use std::cell::{Cell, RefCell};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use wg_netns::PrivateKey;
use wg_netns_testkit::{
    eventually, ip, must, processes, tag, terminate, unavailable, write_key_file, TestNs,
    WireguardGo, WorkDir,
};

const PLUGIN: &str = env!("CARGO_BIN_EXE_wg-netavark");
/// The peer's WireGuard address, what the containers ping.
const PEER_WG: &str = "10.252.0.1";
/// The peer's end of the underlay: the WireGuard endpoint.
const PEER_UNDERLAY: &str = "10.251.0.2";
const PING_WITHIN: Duration = Duration::from_secs(10);

/// Where scripts/netavark-tests builds netavark once.
fn netavark() -> String {
    let cache = std::env::var("WG_NETNS_TOOLS_CACHE")
        .or_else(|_| std::env::var("WG_OCI_TOOLS"))
        .unwrap_or_else(|_| "/var/cache/wg-netns-tools".to_string());
    let version = std::env::var("NETAVARK_VERSION").unwrap_or_else(|_| "2.1.0".to_string());
    format!("{cache}/netavark-{version}/bin/netavark")
}

/// True when a namespace test can run here; otherwise it was skipped
/// (printed) or has failed (`WG_NETNS_REQUIRE_ALL=1`).
fn ready(test: &str) -> bool {
    !unavailable(test, &["ip", "ping", "wg", "wireguard-go", &netavark()])
}

/// What a command run for the test said.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn said(&self) -> String {
        format!("{}{}", self.stderr, self.stdout)
    }
}

/// One test's sandbox: node, peer (with a wireguard-go peer, a child of
/// the test) and container namespaces; a work directory with the plugin
/// directory, netavark's config directory, the state directory, the
/// inputs (`in/`) and every output (`out/`). Its drop stops the daemons in
/// these namespaces, then (the fields) the peer, and removes the work
/// directory and the namespaces, container first.
struct Sandbox {
    tag: String,
    calls: Cell<u32>,
    /// Birth names seen, for the cleanup of their sockets.
    births: RefCell<Vec<String>>,
    /// The inodes of the test's namespaces (kept: a namespace let go of
    /// can no longer be looked up by name).
    inodes: Vec<u64>,
    peer_daemon: Option<WireguardGo>,
    peer_if: String,
    peer_key: PrivateKey,
    /// The first container's key, in `c1.key`.
    c1_key: PrivateKey,
    work: WorkDir,
    /// The container namespace's path, as podman passes it (also once
    /// the namespace is gone).
    ctr_path: String,
    ctr: Option<TestNs>,
    peer: TestNs,
    node: TestNs,
}

impl Sandbox {
    fn new() -> Sandbox {
        let node = TestNs::with_prefix("wgnv", "node");
        let peer = TestNs::with_prefix("wgnv", "peer");
        let ctr = TestNs::with_prefix("wgnv", "ctr");
        let inodes = [&node, &peer, &ctr]
            .iter()
            .filter_map(|n| n.inode())
            .collect();
        let t = tag();
        let mut s = Sandbox {
            peer_if: format!("wgnv-{t}-pw"),
            tag: t,
            calls: Cell::new(0),
            births: RefCell::new(Vec::new()),
            inodes,
            peer_daemon: None,
            peer_key: PrivateKey::generate().expect("key"),
            c1_key: PrivateKey::generate().expect("key"),
            work: WorkDir::new("wgnv-netavark"),
            ctr_path: format!("/run/netns/{}", ctr.name),
            ctr: Some(ctr),
            peer,
            node,
        };
        let (node, peer) = (&s.node.name, &s.peer.name);
        ip(&format!(
            "-n {node} link add wgnv-u-node type veth peer name wgnv-u-peer netns {peer}"
        ));
        ip(&format!("-n {node} addr add 10.251.0.1/30 dev wgnv-u-node"));
        ip(&format!("-n {node} link set wgnv-u-node up"));
        ip(&format!(
            "-n {peer} addr add {PEER_UNDERLAY}/30 dev wgnv-u-peer"
        ));
        ip(&format!("-n {peer} link set wgnv-u-peer up"));
        for d in ["plugins", "config", "state", "in", "out"] {
            fs::create_dir_all(s.work.join(d)).expect("work dir");
        }
        std::os::unix::fs::symlink(PLUGIN, s.work.join("plugins/wg-netavark")).expect("plugin");
        write_key_file(&s.work.join("c1.key"), s.c1_key.to_base64().as_bytes());
        write_key_file(&s.work.join("peer.key"), s.peer_key.to_base64().as_bytes());

        // The peer: wireguard-go in the foreground, a child of this test.
        let peer_if = s.peer_if.clone();
        s.peer_daemon = Some(WireguardGo::start(&s.peer, &peer_if));
        let key = s.work.join("peer.key");
        must(&[
            "wg",
            "set",
            &peer_if,
            "private-key",
            key.to_str().expect("path"),
            "listen-port",
            "51820",
        ]);
        let peer = &s.peer.name;
        ip(&format!("-n {peer} addr add {PEER_WG}/24 dev {peer_if}"));
        ip(&format!("-n {peer} link set {peer_if} up"));
        s
    }

    fn ctr(&self) -> &TestNs {
        self.ctr.as_ref().expect("the container namespace")
    }

    /// A container id of this test.
    fn container_id(&self, what: &str) -> String {
        format!("wgnv{}{what}", self.tag)
    }

    /// A network name of this test.
    fn network_name(&self, what: &str) -> String {
        format!("wgnv-{}-{what}", self.tag)
    }

    /// Let the peer accept `public_key` from `address`.
    fn allow(&self, public_key: &str, address: &str) {
        must(&[
            "wg",
            "set",
            &self.peer_if,
            "peer",
            public_key,
            "allowed-ips",
            &format!("{address}/32"),
        ]);
    }

    /// The peers option: the peer at its underlay address.
    fn peers(&self) -> Value {
        json!([{"publicKey": self.peer_key.public_key().to_base64(),
                "endpoint": format!("{PEER_UNDERLAY}:51820"),
                "allowedIPs": ["10.252.0.0/24"]}])
    }

    /// The flat options of the first scenario: a key file, a fixed
    /// address, a listen port, the test's state directory.
    fn flat_options(&self) -> Map<String, Value> {
        let o = json!({
            "address": "10.252.0.2/24",
            "private_key_file": self.work.join("c1.key"),
            "peers": self.peers().to_string(),
            "listen_port": "51821",
            "state_dir": self.work.join("state"),
            "birth_prefix": "wgnv-",
        });
        o.as_object().expect("object").clone()
    }

    /// `netavark VERB` for the container namespace with `input`, in the
    /// node's namespace; the input kept under in/, the output under out/
    /// (the daemons the plugin starts must not hold a pipe of ours).
    fn netavark(&self, verb: &str, input: &Value) -> Ran {
        let n = self.calls.get() + 1;
        self.calls.set(n);
        let (i, o, e) = (
            self.work.join(format!("in/{n}-{verb}.json")),
            self.work.join(format!("out/{n}-{verb}.stdout")),
            self.work.join(format!("out/{n}-{verb}.stderr")),
        );
        fs::write(&i, input.to_string()).expect("input");
        let t = Instant::now();
        let status = Command::new("ip")
            .args(["netns", "exec", &self.node.name, &netavark(), "--config"])
            .arg(self.work.join("config"))
            .arg("--plugin-directory")
            .arg(self.work.join("plugins"))
            .args([verb, &self.ctr_path])
            .stdin(fs::File::open(&i).expect("input"))
            .stdout(fs::File::create(&o).expect("stdout"))
            .stderr(fs::File::create(&e).expect("stderr"))
            .status()
            .expect("run netavark");
        eprintln!(
            "netavark {verb}: exit {:?}, {} ms",
            status.code(),
            t.elapsed().as_millis()
        );
        Ran {
            ok: status.success(),
            stdout: fs::read_to_string(&o).unwrap_or_default(),
            stderr: fs::read_to_string(&e).unwrap_or_default(),
        }
    }

    /// The plugin's record of container `cid` on network `net`.
    fn record(&self, net: &str, cid: &str) -> Value {
        let p = self.work.join(format!("state/{net}/{cid}-wg0.json"));
        let text = fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("reading the record {}: {e}", p.display()));
        let v: Value = serde_json::from_str(&text).expect("record JSON");
        if let Some(b) = v["birthName"].as_str() {
            self.births.borrow_mut().push(b.to_string());
        }
        v
    }

    /// The wireguard-go daemons in this test's namespaces but the peer.
    fn daemons(&self) -> Vec<wg_netns_testkit::Process> {
        let peer = self.peer_daemon.as_ref().map(WireguardGo::pid);
        processes("wireguard-go")
            .into_iter()
            .filter(|p| p.netns.is_some_and(|i| self.inodes.contains(&i)))
            .filter(|p| Some(p.pid) != peer)
            .collect()
    }

    /// Everything still there but the sandbox itself: links in the node
    /// and the container, daemons, sockets of the birth names seen,
    /// records and lock files. Empty when nothing is.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for l in self.node.link_names() {
            if l != "lo" && l != "wgnv-u-node" {
                left.push(format!("link in the node: {l}"));
            }
        }
        if let Some(ctr) = &self.ctr {
            for l in ctr.link_names() {
                if l != "lo" {
                    left.push(format!("link in the container: {l}"));
                }
            }
        }
        for p in self.daemons() {
            left.push(format!("daemon {} {:?}", p.pid, p.args));
        }
        for b in self.births.borrow().iter() {
            if Path::new(&format!("/var/run/wireguard/{b}.sock")).exists() {
                left.push(format!("socket {b}.sock"));
            }
        }
        for f in files_under(&self.work.join("state")) {
            let name = f.to_string_lossy();
            if name.ends_with(".json") || name.ends_with(".json.lock") {
                left.push(format!("state: {name}"));
            }
        }
        left
    }

    fn assert_nothing_left(&self) {
        let left = self.leftovers();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// No private key of this test in any output, log or record.
    fn assert_no_secret(&self) {
        let keys = [self.c1_key.to_base64(), self.peer_key.to_base64()];
        let mut files = files_under(&self.work.join("out"));
        files.extend(files_under(&self.work.join("state")));
        for f in files {
            let text = fs::read_to_string(&f).unwrap_or_default();
            for k in &keys {
                assert!(
                    !text.contains(k.as_str()),
                    "a private key in {}",
                    f.display()
                );
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Nothing here may panic (it runs while a failed test unwinds).
        for p in self.daemons() {
            terminate(p.pid, Duration::from_secs(2));
        }
        for b in self.births.borrow().iter() {
            let _ = fs::remove_file(format!("/var/run/wireguard/{b}.sock"));
        }
        // Then the fields: the peer (stopped by its PID), the work
        // directory, the namespaces (the container's first).
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(files_under(&p));
        } else {
            found.push(p);
        }
    }
    found
}

/// A network as podman hands it to netavark.
fn network(name: &str, options: Map<String, Value>, subnets: Option<Value>) -> Value {
    let mut n = json!({"name": name, "id": "0".repeat(64), "driver": "wg-netavark",
                       "network_interface": "", "dns_enabled": false, "internal": false,
                       "ipv6_enabled": false, "options": options});
    if let Some(s) = subnets {
        n["subnets"] = s;
        n["ipam_options"] = json!({"driver": "host-local"});
    }
    n
}

/// netavark's input (NetworkOptions) for container `cid` on `network`.
fn input(cid: &str, network: &Value, static_ips: &[&str]) -> Value {
    let name = network["name"].as_str().expect("name");
    let mut per = json!({"interface_name": "wg0"});
    if !static_ips.is_empty() {
        per["static_ips"] = json!(static_ips);
    }
    json!({"container_id": cid, "container_name": &cid[..12.min(cid.len())],
           "networks": {name: per}, "network_info": {name: network}})
}

/// The interface's subnets in a status block: (ipnet, gateway).
fn subnets(status: &str, net: &str) -> Vec<(String, Value)> {
    let v: Value =
        serde_json::from_str(status).unwrap_or_else(|e| panic!("status block {status:?}: {e}"));
    v[net]["interfaces"]["wg0"]["subnets"]
        .as_array()
        .unwrap_or_else(|| panic!("no wg0 subnets in {v}"))
        .iter()
        .map(|a| {
            (
                a["ipnet"].as_str().unwrap_or_default().to_string(),
                a.get("gateway").cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// Run the plugin alone (what netavark and podman ask it outside setup).
fn plugin(verb: &str, stdin: &str) -> Value {
    use std::io::Write;
    let mut child = Command::new(PLUGIN)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("plugin output");
    assert!(
        out.status.success(),
        "wg-netavark {verb}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plugin JSON")
}

#[test]
fn info_answers_the_version_and_api_version_1_0_0() {
    let info = plugin("info", "");
    assert_eq!(info["api_version"], "1.0.0", "{info}");
    assert!(
        info["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{info}"
    );
}

#[test]
fn create_picks_host_local_ipam_for_a_network_with_subnets() {
    let mut net = network(
        "wgnv-sub",
        Map::new(),
        Some(json!([{"subnet": "10.252.0.0/24"}])),
    );
    net.as_object_mut().expect("object").remove("ipam_options");
    let out = plugin("create", &net.to_string());
    assert_eq!(
        out["ipam_options"],
        json!({"driver": "host-local"}),
        "{out}"
    );
    assert_eq!(out["name"], "wgnv-sub", "{out}");
}

#[test]
fn flat_options_key_file_fixed_address_ping_and_teardown_leaves_nothing() {
    let test = "flat_options_key_file_fixed_address_ping_and_teardown_leaves_nothing";
    if !ready(test) {
        return;
    }
    let s = Sandbox::new();
    s.allow(&s.c1_key.public_key().to_base64(), "10.252.0.2");
    let (net, cid) = (s.network_name("a"), s.container_id("c1"));
    let input = input(&cid, &network(&net, s.flat_options(), None), &[]);

    let setup = s.netavark("setup", &input);
    assert!(setup.ok, "netavark setup: {}", setup.said());
    // netavark re-serializes the plugin's block: "gateway": null is its doing.
    assert_eq!(
        subnets(&setup.stdout, &net),
        vec![("10.252.0.2/24".to_string(), Value::Null)]
    );
    let status: Value = serde_json::from_str(&setup.stdout).expect("status");
    assert_eq!(status[&net]["interfaces"]["wg0"]["mac_address"], "");
    let record = s.record(&net, &cid);
    let birth = record["birthName"].as_str().unwrap_or_default();
    assert!(birth.starts_with("wgnv-"), "birth name {birth:?}");
    let addr = s.ctr().exec(&["ip", "-o", "addr", "show", "dev", "wg0"]);
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains("inet 10.252.0.2/24"),
        "{addr:?}"
    );
    let (in_node, in_ctr) = (s.node.udp_ports(), s.ctr().udp_ports());
    assert!(
        in_node.contains(&51821) && !in_ctr.contains(&51821),
        "port 51821: node {in_node:?}, container {in_ctr:?}"
    );
    assert!(s.ctr().ping(PEER_WG, PING_WITHIN), "ping through WireGuard");

    let again = s.netavark("setup", &input);
    assert!(again.ok, "setup again: {}", again.said());
    assert!(s.ctr().ping(PEER_WG, PING_WITHIN), "ping after setup again");

    let teardown = s.netavark("teardown", &input);
    assert!(teardown.ok, "netavark teardown: {}", teardown.said());
    s.assert_nothing_left();
    let again = s.netavark("teardown", &input);
    assert!(again.ok, "teardown again: {}", again.said());
    s.assert_no_secret();
}

#[test]
fn subnet_static_ip_generated_key_and_teardown_after_the_namespace_is_gone() {
    let test = "subnet_static_ip_generated_key_and_teardown_after_the_namespace_is_gone";
    if !ready(test) {
        return;
    }
    let mut s = Sandbox::new();
    let (net, cid) = (s.network_name("b"), s.container_id("c2"));
    // The wg-cni schema under `config`; podman's IPAM gives the address.
    let config = json!({"peers": s.peers(), "stateDir": s.work.join("state"), "mtu": 1380});
    let mut opts = Map::new();
    opts.insert("config".into(), json!(config.to_string()));
    opts.insert("birth_prefix".into(), json!("wgnv-"));
    let net_json = network(&net, opts, Some(json!([{"subnet": "10.252.0.0/24"}])));
    let input = input(&cid, &net_json, &["10.252.0.3"]);

    let setup = s.netavark("setup", &input);
    assert!(setup.ok, "netavark setup: {}", setup.said());
    assert_eq!(
        subnets(&setup.stdout, &net),
        vec![("10.252.0.3/24".to_string(), Value::Null)],
        "the static IP with the subnet's prefix"
    );
    let record = s.record(&net, &cid);
    let public = record["publicKey"].as_str().unwrap_or_default().to_string();
    assert!(!public.is_empty(), "no public key in {record}");
    assert!(
        !record.to_string().to_lowercase().contains("private"),
        "{record}"
    );
    s.allow(&public, "10.252.0.3");
    let link = s.ctr().exec(&["ip", "link", "show", "wg0"]);
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("mtu 1380"),
        "{link:?}"
    );
    assert!(s.ctr().ping(PEER_WG, PING_WITHIN), "ping through WireGuard");

    // The container ends: its namespace goes (as podman lets go of it).
    s.ctr.take().expect("ctr").release();
    let teardown = s.netavark("teardown", &input);
    assert!(teardown.ok, "teardown: {}", teardown.said());
    assert!(
        eventually(Duration::from_secs(3), || s.leftovers().is_empty()),
        "left behind: {:?}",
        s.leftovers()
    );
    s.assert_no_secret();
}

/// Setup with the flat options changed by `change` must fail with a
/// message containing `expected`, and leave nothing.
fn refused(test: &str, change: impl FnOnce(&Sandbox, &mut Map<String, Value>), expected: &str) {
    if !ready(test) {
        return;
    }
    let s = Sandbox::new();
    let mut opts = s.flat_options();
    change(&s, &mut opts);
    let (net, cid) = (s.network_name("c"), s.container_id("c3"));
    let input = input(&cid, &network(&net, opts, None), &[]);
    let setup = s.netavark("setup", &input);
    assert!(!setup.ok, "setup succeeded: {}", setup.said());
    let said = setup.said();
    assert!(said.contains(expected), "{expected:?} not in: {said}");
    eprintln!("{test}: netavark said: {said}");
    s.assert_nothing_left();
    s.assert_no_secret();
}

#[test]
fn an_unknown_option_is_refused_and_leaves_nothing() {
    refused(
        "an_unknown_option_is_refused_and_leaves_nothing",
        |_, o| {
            o.insert("listen_prot".into(), json!("51822"));
        },
        "option listen_prot: unknown network option",
    );
}

#[test]
fn a_missing_key_file_is_refused_and_leaves_nothing() {
    refused(
        "a_missing_key_file_is_refused_and_leaves_nothing",
        |s, o| {
            o.insert("private_key_file".into(), json!(s.work.join("missing.key")));
        },
        "missing.key",
    );
}

#[test]
fn an_inline_private_key_is_refused_and_leaves_nothing() {
    refused(
        "an_inline_private_key_is_refused_and_leaves_nothing",
        |s, o| {
            o.insert("private_key".into(), json!(&*s.c1_key.to_base64()));
        },
        "inline keys are refused",
    );
}
