//! Fault injection and the DEL matrix. Built only with the test-only
//! `fault-injection` feature (`cargo test -p wg-cni --features
//! fault-injection --test faults`): `WG_NETNS_FAIL_AT=N` makes the N-th
//! netlink request, UAPI exchange or daemon start of one wg-cni process fail.
//!
//! For every N until ADD succeeds: the answer is a CNI error JSON naming the
//! injected fault, and nothing is left behind (no link in the node or the pod,
//! no control socket, no daemon, no state record); DEL afterwards exits 0.
#![cfg(feature = "fault-injection")]

mod cni;

use std::path::Path;
use std::time::Duration;

use cni::{Call, StateDir};
use serde_json::{json, Value};
use wg_netns::{IfName, PrivateKey};
use wg_netns_testkit::*;

fn birth(cid: &str, ifname: &str) -> String {
    wg_cni::birth_name("wgnet", cid, ifname).to_string()
}

fn clean(node: &TestNs, pod: &TestNs, state: &StateDir, cid: &str) -> Result<(), String> {
    let b = birth(cid, "eth0");
    let mut left = Vec::new();
    if node.link_names().contains(&b) {
        left.push(format!("link {b} in the node"));
    }
    for l in pod.link_names().into_iter().filter(|l| l != "lo") {
        left.push(format!("link {l} in the pod"));
    }
    if Path::new(&format!("/var/run/wireguard/{b}.sock")).exists() {
        left.push(format!("socket {b}.sock"));
    }
    if state.0.join(format!("wgnet/{cid}-eth0.json")).exists() {
        left.push("state record".into());
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(left.join(", "))
    }
}

fn run_matrix(chained: bool) -> (u32, u32) {
    let name = if chained { "chained" } else { "standalone" };
    let Some(backend) = environment(&format!("fault_injection_{name}")) else {
        return (0, 0);
    };
    let (node, pod) = (TestNs::new("fnode"), TestNs::new("fpod"));
    let state = StateDir::new(&format!("faults-{name}-{}", tag()));
    let b = if backend == wg_netns::Backend::Kernel {
        "kernel"
    } else {
        "userspace"
    };
    let peer = PrivateKey::generate().unwrap().public_key();
    let mut conf = json!({"cniVersion": "1.1.0", "name": "wgnet", "type": "wg-cni",
        "addresses": ["10.31.0.2/24", "fd31::2/64"], "listenPort": 51820, "mtu": 1400,
        "backend": b, "stateDir": state.path(),
        "routes": [{"dst": "10.32.0.0/16"}],
        "peers": [{"endpoint": "127.0.0.1:51999", "publicKey": peer.to_base64(),
                   "allowedIPs": ["10.31.0.0/16", "0.0.0.0/0"], "persistentKeepalive": 25}]});
    if chained {
        conf["prevResult"] =
            json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}]});
    }
    let cid = format!("fault-{name}-{}", tag());
    let netns = format!("/var/run/netns/{}", pod.name);
    let (mut injected, mut leaks, mut tolerated, mut successes_in_a_row) = (0, 0, 0, 0);
    // Some operations are best effort (a lookup during cleanup of leftovers):
    // a fault there is tolerated and the ADD succeeds. Go on until ADD has
    // succeeded many times in a row, i.e. N is past the last operation.
    for n in 1..=500u32 {
        let add = Call::new("ADD")
            .container(&cid, &netns, "eth0")
            .env("WG_NETNS_FAIL_AT", &n.to_string())
            .run_in(&node.ns, &conf.to_string());
        if add.code == 0 {
            tolerated += 1;
            successes_in_a_row += 1;
            Call::new("DEL")
                .container(&cid, &netns, "eth0")
                .run_in(&node.ns, &conf.to_string())
                .ok();
            if let Err(what) = eventually_ok(|| clean(&node, &pod, &state, &cid)) {
                leaks += 1;
                eprintln!("after DEL of a successful ADD (fault {n} tolerated): left {what}");
            }
            if successes_in_a_row >= 15 {
                tolerated -= 15;
                break;
            }
            continue;
        }
        successes_in_a_row = 0;
        injected += 1;
        let j: Value = add.json();
        assert!(
            j["code"]
                .as_u64()
                .is_some_and(|c| c == 5 || c == 3 || c == 50),
            "fault {n}: {j}"
        );
        assert!(
            j["details"]
                .as_str()
                .unwrap_or_default()
                .contains("injected fault"),
            "fault {n}: {j}"
        );
        if let Err(what) = eventually_ok(|| clean(&node, &pod, &state, &cid)) {
            leaks += 1;
            eprintln!("fault {n}: left {what}");
        }
        // DEL after a partial ADD: always exit 0 (with and without prevResult).
        Call::new("DEL")
            .container(&cid, &netns, "eth0")
            .run_in(&node.ns, &conf.to_string())
            .ok();
    }
    eprintln!("fault_injection_{name}: {injected} faults failed the ADD, {tolerated} were tolerated, {leaks} leaks");
    assert!(injected > 10, "only {injected} faults injected");
    (injected, leaks)
}

fn eventually_ok(mut f: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let mut last = Ok(());
    let ok = eventually(Duration::from_secs(5), || {
        last = f();
        last.is_ok()
    });
    if ok {
        Ok(())
    } else {
        last
    }
}

#[test]
fn every_failed_add_leaves_nothing_standalone() {
    let (_, leaks) = run_matrix(false);
    assert_eq!(leaks, 0);
}

#[test]
fn every_failed_add_leaves_nothing_chained() {
    let (_, leaks) = run_matrix(true);
    assert_eq!(leaks, 0);
}

/// DEL exits 0 in every state: never added, added, interface deleted behind
/// our back, repeated, namespace gone; with and without prevResult.
#[test]
fn del_matrix() {
    let Some(backend) = environment("del_matrix") else {
        return;
    };
    let node = TestNs::new("dnode");
    let state = StateDir::new(&format!("delm-{}", tag()));
    let b = if backend == wg_netns::Backend::Kernel {
        "kernel"
    } else {
        "userspace"
    };
    let peer = PrivateKey::generate().unwrap().public_key();
    let base = json!({"cniVersion": "1.0.0", "name": "wgnet", "type": "wg-cni", "address": "10.33.0.2/24",
        "backend": b, "stateDir": state.path(),
        "peers": [{"endpoint": "127.0.0.1:51999", "publicKey": peer.to_base64(), "allowedIPs": ["10.33.0.0/24"]}]});
    for with_prev in [false, true] {
        let mut conf = base.clone();
        if with_prev {
            conf["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}]});
        }
        let conf = conf.to_string();
        let pod = TestNs::new("dpod");
        let netns = format!("/var/run/netns/{}", pod.name);
        let cid = format!("delm-{}", tag());
        let del = || {
            Call::new("DEL")
                .container(&cid, &netns, "eth0")
                .run_in(&node.ns, &conf)
        };
        // Never added.
        assert_eq!(del().code, 0);
        // Added, then DEL, then DEL again.
        Call::new("ADD")
            .container(&cid, &netns, "eth0")
            .run_in(&node.ns, &conf)
            .ok();
        assert_eq!(del().code, 0);
        assert_eq!(del().code, 0);
        // Interface deleted behind our back.
        Call::new("ADD")
            .container(&cid, &netns, "eth0")
            .run_in(&node.ns, &conf)
            .ok();
        let rtnl = wg_netns::Rtnl::open(&pod.ns).unwrap();
        let name = if with_prev { "wg0" } else { "eth0" };
        let l = rtnl.link_by_name(&IfName::new(name).unwrap()).unwrap();
        rtnl.delete_link(l.index).unwrap();
        assert_eq!(del().code, 0);
        // Namespace gone.
        Call::new("ADD")
            .container(&cid, &netns, "eth0")
            .run_in(&node.ns, &conf)
            .ok();
        drop(pod);
        assert_eq!(del().code, 0);
        assert_eq!(
            Call::new("DEL")
                .container(&cid, "", "eth0")
                .run_in(&node.ns, &conf)
                .code,
            0
        );
        let b = birth(&cid, "eth0");
        assert!(
            eventually(Duration::from_secs(5), || !node.link_names().contains(&b)
                && !Path::new(&format!("/var/run/wireguard/{b}.sock")).exists()),
            "leftovers of {b}"
        );
    }
}

/// DEL, GC and STATUS depend on nothing but names and the saved record: they
/// succeed with every endpoint a name that cannot resolve, the private and
/// preshared key files deleted, the record corrupt, the namespace gone. (They
/// run in a test namespace with no route out: a lookup, were one tried,
/// could not leave the machine, and would fail the verb.)
#[test]
fn del_gc_status_need_no_dns_and_no_key_file() {
    let Some(backend) = environment("del_gc_status_need_no_dns_and_no_key_file") else {
        return;
    };
    let node = TestNs::new("inode");
    let state = StateDir::new(&format!("noio-{}", tag()));
    let b = if backend == wg_netns::Backend::Kernel {
        "kernel"
    } else {
        "userspace"
    };
    let keys = state.0.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (key_file, psk_file) = (keys.join("private"), keys.join("psk"));
    let write_keys = || {
        use std::os::unix::fs::OpenOptionsExt;
        for (path, key) in [
            (&key_file, PrivateKey::generate().unwrap().to_base64()),
            (&psk_file, PrivateKey::generate().unwrap().to_base64()),
        ] {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(path)
                .unwrap();
            std::io::Write::write_all(&mut f, key.as_bytes()).unwrap();
        }
    };
    let peer = PrivateKey::generate().unwrap().public_key();
    let conf = |endpoint: &str| {
        json!({"cniVersion": "1.1.0", "name": "wgnet", "type": "wg-cni", "address": "10.34.0.2/24",
            "backend": b, "stateDir": state.path(), "privateKeyFile": key_file,
            "peers": [{"endpoint": endpoint, "publicKey": peer.to_base64(), "allowedIPs": ["10.34.0.0/24"],
                       "presharedKeyFile": psk_file}]})
        .to_string()
    };
    let (added, gone) = (conf("127.0.0.1:51998"), conf("wg-peer.gone.invalid:51820"));
    let gone_all = |cid: &str| {
        let b = birth(cid, "eth0");
        eventually(Duration::from_secs(5), || {
            !node.link_names().contains(&b)
                && !Path::new(&format!("/var/run/wireguard/{b}.sock")).exists()
        })
    };
    for case in ["keys deleted", "record corrupt", "namespace gone", "gc"] {
        write_keys();
        let pod = TestNs::new("ipod");
        let netns = format!("/var/run/netns/{}", pod.name);
        let cid = format!("noio-{}", tag());
        Call::new("ADD")
            .container(&cid, &netns, "eth0")
            .run_in(&node.ns, &added)
            .ok();
        // From here on: no key file, and the endpoint does not resolve.
        std::fs::remove_file(&key_file).unwrap();
        std::fs::remove_file(&psk_file).unwrap();
        let record = state.0.join(format!("wgnet/{cid}-eth0.json"));
        assert!(record.exists(), "{case}: ADD saved a record");
        let status = Call::new("STATUS").run_in(&node.ns, &gone);
        assert_eq!(status.code, 0, "{case}: STATUS {status:?}");
        let mut netns_now = netns.clone();
        match case {
            "record corrupt" => std::fs::write(&record, b"{\"network\": \"wgn").unwrap(),
            "namespace gone" => {
                drop(pod);
                netns_now.clear();
            }
            _ => {}
        }
        let out = if case == "gc" {
            let mut gc: Value = serde_json::from_str(&gone).unwrap();
            gc["cni.dev/valid-attachments"] = json!([]);
            Call::new("GC").run_in(&node.ns, &gc.to_string())
        } else {
            Call::new("DEL")
                .container(&cid, &netns_now, "eth0")
                .run_in(&node.ns, &gone)
        };
        assert_eq!(out.code, 0, "{case}: {out:?}");
        assert!(gone_all(&cid), "{case}: leftovers of {cid}");
        assert!(!record.exists(), "{case}: the record is removed");
    }
}
