//! The embedding API in real namespaces, the way a runtime that embeds
//! libcontainer calls it: [`wg_oci::attach`] from the runtime's (node's)
//! namespace into the container's, a ping through the tunnel to a peer in
//! a third namespace, [`wg_oci::detach`] leaving nothing; errors that leave
//! nothing. Userspace WireGuard (wireguard-go). Needs root; otherwise
//! prints SKIP and passes (fails with `WG_NETNS_REQUIRE_ALL=1`).
//!
//! Network safety: namespaces `wgoci-*` (testkit's, under this prefix) joined by a veth; nothing
//! touches the machine's interfaces.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use wg_netns::PrivateKey;
use wg_netns_testkit::{must, run, TestNs};
use wg_oci::{attach, detach, Config, Error, RecordStore, Target};

fn skip(test: &str) -> bool {
    let why = if !rustix::process::geteuid().is_root() {
        "needs root"
    } else if !std::path::Path::new("/usr/bin/wireguard-go").exists()
        && !std::path::Path::new("/usr/local/bin/wireguard-go").exists()
    {
        "needs wireguard-go"
    } else if Command::new("ip").arg("-V").output().is_err() {
        "needs iproute2"
    } else {
        return false;
    };
    assert!(
        std::env::var("WG_NETNS_REQUIRE_ALL").as_deref() != Ok("1"),
        "{test}: required but cannot run: {why}"
    );
    eprintln!("SKIP {test}: {why}");
    true
}

/// Distinct wire subnets within this process.
static N: AtomicU32 = AtomicU32::new(0);

/// The suite's namespaces: testkit's, under this suite's prefix.
type Ns = TestNs;

fn ns(role: &str) -> Ns {
    TestNs::with_prefix("wgoci", role)
}

/// node <-veth-> peer, a wireguard-go peer in `peer` at 10.77.X.1.
struct Net {
    node: Ns,
    peer: Ns,
    x: u32,
    peer_key: PrivateKey,
    peer_if: String,
    dir: std::path::PathBuf,
}

impl Net {
    fn new(container_pub: &str) -> Net {
        let node = ns("node");
        let peer = ns("peer");
        let x = (std::process::id() + N.fetch_add(1, Ordering::SeqCst)) % 200 + 20;
        let t = format!("{:x}", (std::process::id() * 16 + x) % 0xfffff);
        let (vn, vp) = (format!("wgoci-n{t}"), format!("wgoci-q{t}"));
        must(&[
            "ip", "-n", &node.name, "link", "add", &vn, "type", "veth", "peer", "name", &vp,
            "netns", &peer.name,
        ]);
        must(&[
            "ip",
            "-n",
            &node.name,
            "addr",
            "add",
            &format!("10.78.{x}.1/24"),
            "dev",
            &vn,
        ]);
        must(&[
            "ip",
            "-n",
            &peer.name,
            "addr",
            "add",
            &format!("10.78.{x}.2/24"),
            "dev",
            &vp,
        ]);
        must(&["ip", "-n", &node.name, "link", "set", &vn, "up"]);
        must(&["ip", "-n", &peer.name, "link", "set", &vp, "up"]);
        let dir = std::env::temp_dir().join(format!("wgoci-attach-{}-{x}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let peer_key = PrivateKey::generate().expect("key");
        let peer_if = format!("wgoci-p{t}");
        must(&["ip", "netns", "exec", &peer.name, "wireguard-go", &peer_if]);
        let key_file = dir.join("peer.key");
        wg_netns_testkit::write_key_file(&key_file, peer_key.to_base64().as_bytes());
        let key_path = key_file.display().to_string();
        must(&[
            "ip",
            "netns",
            "exec",
            &peer.name,
            "wg",
            "set",
            &peer_if,
            "private-key",
            &key_path,
            "listen-port",
            "51820",
            "peer",
            container_pub,
            "allowed-ips",
            &format!("10.77.{x}.2/32"),
        ]);
        must(&[
            "ip",
            "-n",
            &peer.name,
            "addr",
            "add",
            &format!("10.77.{x}.1/24"),
            "dev",
            &peer_if,
        ]);
        must(&["ip", "-n", &peer.name, "link", "set", &peer_if, "up"]);
        Net {
            node,
            peer,
            x,
            peer_key,
            peer_if,
            dir,
        }
    }

    fn config(&self, key: &PrivateKey, extra: &str) -> Config {
        let json = format!(
            r#"{{"address":"10.77.{x}.2/24","privateKey":"{k}","stateDir":"{d}",
                 "peers":[{{"publicKey":"{p}","endpoint":"10.78.{x}.2:51820","allowedIPs":["10.77.{x}.1/32"]}}]{extra}}}"#,
            x = self.x,
            k = key.to_base64().as_str(),
            d = self.dir.join("state").display(),
            p = self.peer_key.public_key().to_base64(),
        );
        Config::parse(json.as_bytes()).expect("config")
    }

    /// wireguard-go daemons and sockets of birth name `birth`.
    fn leftovers(&self, birth: &str) -> Vec<String> {
        let mut found = Vec::new();
        if std::path::Path::new(&format!("/var/run/wireguard/{birth}.sock")).exists() {
            found.push(format!("socket {birth}.sock"));
        }
        if self.node.link_names().iter().any(|l| l == birth) {
            found.push(format!("link {birth} in the node"));
        }
        found
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = run(&["ip", "-n", &self.peer.name, "link", "del", &self.peer_if]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn attach_ping_detach_from_the_record() {
    if skip("attach_ping_detach_from_the_record") {
        return;
    }
    let key = PrivateKey::generate().expect("key");
    let net = Net::new(&key.public_key().to_base64());
    let ctr = ns("ctr");
    let config = net.config(&key, "");
    let path = std::path::PathBuf::from(format!("/run/netns/{}", ctr.name));
    let record = net
        .node
        .ns
        .run(|| attach("c1", Target::Path(path.clone()), &config))
        .expect("thread")
        .expect("attach");
    assert_eq!(record.attachment.interface.as_str(), "wg0");
    assert!(record.attachment.birth_name.as_str().starts_with("wgo"));
    assert_eq!(record.public_key, key.public_key().to_base64().as_str());
    assert!(ctr.link_names().contains(&"wg0".to_string()));
    assert!(
        ctr.ping(&format!("10.77.{}.1", net.x), Duration::from_secs(12)),
        "ping through the tunnel"
    );
    // The record survives a round trip through the store.
    let store = RecordStore::new(net.dir.join("state"));
    store.save(&record).expect("save");
    let loaded = store.load("c1").expect("load").expect("some");
    assert_eq!(loaded, record);
    // Attaching again repairs, it does not duplicate.
    let again = net
        .node
        .ns
        .run(|| attach("c1", Target::Path(path.clone()), &config))
        .expect("thread")
        .expect("attach again");
    assert_eq!(again.attachment, record.attachment);
    let removed = net
        .node
        .ns
        .run(|| detach(&loaded))
        .expect("thread")
        .expect("detach");
    assert!(removed);
    assert!(!ctr.link_names().contains(&"wg0".to_string()));
    let birth = record.attachment.birth_name.to_string();
    assert!(
        eventually(Duration::from_secs(3), || net.leftovers(&birth).is_empty()),
        "left: {:?}",
        net.leftovers(&birth)
    );
    // Idempotent.
    assert!(!net
        .node
        .ns
        .run(|| detach(&loaded))
        .expect("thread")
        .expect("detach again"));
}

#[test]
fn a_stale_namespace_path_is_not_entered() {
    if skip("a_stale_namespace_path_is_not_entered") {
        return;
    }
    let key = PrivateKey::generate().expect("key");
    let net = Net::new(&key.public_key().to_base64());
    let ctr = ns("ctr");
    let config = net.config(&key, "");
    let path = std::path::PathBuf::from(format!("/run/netns/{}", ctr.name));
    let mut record = net
        .node
        .ns
        .run(|| attach("c2", Target::Path(path.clone()), &config))
        .expect("thread")
        .expect("attach");
    // The recorded path now names another namespace (as a reused PID
    // would): with a wg0 of its own that detach must not touch.
    let decoy = ns("decoy");
    must(&[
        "ip",
        "-n",
        &decoy.name,
        "link",
        "add",
        "wg0",
        "type",
        "veth",
        "peer",
        "name",
        "wgoci-d0",
    ]);
    record.attachment.netns = format!("/run/netns/{}", decoy.name).into();
    let birth = record.attachment.birth_name.to_string();
    net.node
        .ns
        .run(|| detach(&record))
        .expect("thread")
        .expect("detach");
    assert!(
        decoy.link_names().contains(&"wg0".to_string()),
        "decoy touched"
    );
    // The daemon born in the node was stopped by its birth name, and its
    // TUN went with it.
    assert!(
        eventually(Duration::from_secs(3), || !ctr
            .link_names()
            .contains(&"wg0".to_string())),
        "wg0 still in the container"
    );
    assert!(
        eventually(Duration::from_secs(3), || net.leftovers(&birth).is_empty()),
        "left: {:?}",
        net.leftovers(&birth)
    );
}

#[test]
fn errors_leave_nothing() {
    if skip("errors_leave_nothing") {
        return;
    }
    let key = PrivateKey::generate().expect("key");
    let net = Net::new(&key.public_key().to_base64());
    let ctr = ns("ctr");
    let path = std::path::PathBuf::from(format!("/run/netns/{}", ctr.name));
    // A route through an unreachable gateway fails after the daemon started.
    let late = net.config(
        &key,
        r#","routes":[{"dst":"10.99.0.0/16","gw":"10.55.55.55"}]"#,
    );
    let e = net
        .node
        .ns
        .run(|| attach("c3", Target::Path(path.clone()), &late))
        .expect("thread")
        .expect_err("unreachable gateway");
    assert!(matches!(e, Error::Attach { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("RTM_NEWROUTE") && !msg.contains('\n'), "{msg}");
    assert!(!msg.contains(key.to_base64().as_str()), "key in {msg}");
    assert_eq!(ctr.link_names(), vec!["lo".to_string()]);
    let birth = wg_oci::birth_name("oci", "c3", &wg_netns::IfName::new("wg0").expect("name"));
    assert!(
        eventually(Duration::from_secs(3), || net
            .leftovers(birth.as_str())
            .is_empty()),
        "left: {:?}",
        net.leftovers(birth.as_str())
    );
    // The runtime's own namespace is refused.
    let node_path = std::path::PathBuf::from(format!("/run/netns/{}", net.node.name));
    let config = net.config(&key, "");
    let e = net
        .node
        .ns
        .run(|| attach("c4", Target::Path(node_path), &config))
        .expect("thread")
        .expect_err("own namespace");
    assert!(matches!(e, Error::Namespace { .. }), "{e}");
    // A missing namespace, a bad container id.
    assert!(matches!(
        attach("c5", Target::Pid(u32::MAX), &config),
        Err(Error::Namespace { .. })
    ));
    assert!(matches!(
        attach("../x", Target::Path(path), &config),
        Err(Error::ContainerId(_))
    ));
}
