//! Concurrency: 50 pods x 20 ADD/DEL cycles in parallel (10 workers), with GC
//! running concurrently: zero failures, and nothing left at the end. GC is
//! told every pod is valid, so it must remove only the stale attachments made
//! beforehand. `WG_CNI_STRESS=PODSxCYCLES` scales it (default 50x20).

mod cni;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cni::{Call, StateDir};
use serde_json::json;
use wg_netns::PrivateKey;
use wg_netns_testkit::*;

#[test]
fn fifty_pods_twenty_cycles_with_concurrent_gc() {
    let Some(backend) = environment("fifty_pods_twenty_cycles_with_concurrent_gc") else {
        return;
    };
    let (pods_n, cycles) = std::env::var("WG_CNI_STRESS")
        .ok()
        .and_then(|v| {
            v.split_once('x')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        })
        .unwrap_or((50usize, 20usize));
    let node = TestNs::new("snode");
    let pods: Vec<TestNs> = (0..pods_n).map(|_| TestNs::new("spod")).collect();
    let stale: Vec<TestNs> = (0..3).map(|_| TestNs::new("sstale")).collect();
    let state = StateDir::new(&format!("stress-{}", tag()));
    let b = if backend == wg_netns::Backend::Kernel {
        "kernel"
    } else {
        "userspace"
    };
    let peer = PrivateKey::generate().unwrap().public_key();
    let conf = |i: usize| {
        json!({"cniVersion": "1.1.0", "name": "wgnet", "type": "wg-cni",
               "address": format!("10.40.{}.{}/16", i / 250, i % 250 + 1),
               "backend": b, "stateDir": state.path(),
               "peers": [{"endpoint": "127.0.0.1:51999", "publicKey": peer.to_base64(), "allowedIPs": ["10.41.0.0/16"]}]})
        .to_string()
    };
    let run = format!("{:x}", std::process::id());
    let cid = |i: usize| format!("stress-{run}-{i}");
    let netns = |p: &TestNs| format!("/var/run/netns/{}", p.name);

    // Stale attachments that GC must remove.
    for (k, p) in stale.iter().enumerate() {
        Call::new("ADD")
            .container(&format!("stale-{run}-{k}"), &netns(p), "eth0")
            .run_in(&node.ns, &conf(1000 + k))
            .ok();
    }

    let failures = AtomicU32::new(0);
    let done = AtomicBool::new(false);
    let (adds, dels, gcs) = (AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0));
    let started = Instant::now();
    let mut gc_conf: serde_json::Value = serde_json::from_str(&conf(0)).unwrap();
    gc_conf["cni.dev/valid-attachments"] = (0..pods_n)
        .map(|i| json!({"containerID": cid(i), "ifname": "eth0"}))
        .collect();
    let gc_conf = gc_conf.to_string();
    std::thread::scope(|s| {
        for w in 0..10 {
            let (pods, node, failures, adds, dels) = (&pods, &node, &failures, &adds, &dels);
            let (conf, cid, netns) = (&conf, &cid, &netns);
            s.spawn(move || {
                for cycle in 0..cycles {
                    for i in (w..pods.len()).step_by(10) {
                        let add = Call::new("ADD")
                            .container(&cid(i), &netns(&pods[i]), "eth0")
                            .run_in(&node.ns, &conf(i));
                        if add.code != 0 {
                            failures.fetch_add(1, Ordering::SeqCst);
                            eprintln!("ADD pod {i} cycle {cycle}: {}", add.stdout);
                        }
                        adds.fetch_add(1, Ordering::SeqCst);
                        let del = Call::new("DEL")
                            .container(&cid(i), &netns(&pods[i]), "eth0")
                            .run_in(&node.ns, &conf(i));
                        if del.code != 0 {
                            failures.fetch_add(1, Ordering::SeqCst);
                            eprintln!("DEL pod {i} cycle {cycle}: {}", del.stdout);
                        }
                        dels.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        let (node, failures, done, gcs, gc_conf) = (&node, &failures, &done, &gcs, &gc_conf);
        s.spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let gc = Call::new("GC")
                    .container("", "", "")
                    .run_in(&node.ns, gc_conf);
                if gc.code != 0 {
                    failures.fetch_add(1, Ordering::SeqCst);
                    eprintln!("GC: {}", gc.stdout);
                }
                gcs.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // Let the workers finish, then stop the GC loop.
        while adds.load(Ordering::SeqCst) + dels.load(Ordering::SeqCst)
            < (2 * pods_n * cycles) as u32
            && failures.load(Ordering::SeqCst) < 20
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        done.store(true, Ordering::SeqCst);
    });
    let elapsed = started.elapsed();
    eprintln!(
        "stress: {} ADD + {} DEL with {} concurrent GC in {:.1} s, {} failures",
        adds.load(Ordering::SeqCst),
        dels.load(Ordering::SeqCst),
        gcs.load(Ordering::SeqCst),
        elapsed.as_secs_f64(),
        failures.load(Ordering::SeqCst)
    );
    assert_eq!(failures.load(Ordering::SeqCst), 0, "failures");
    assert!(gcs.load(Ordering::SeqCst) > 0, "GC ran concurrently");

    // Nothing left: no links at the birthplace or in any pod, no sockets, no records.
    let births: Vec<String> = (0..pods_n)
        .map(cid)
        .chain((0..3).map(|k| format!("stale-{run}-{k}")))
        .map(|c| wg_cni::birth_name("wgnet", &c, "eth0").to_string())
        .collect();
    let clean = || {
        let node_links = node.link_names();
        births.iter().all(|b| {
            !node_links.contains(b)
                && !std::path::Path::new(&format!("/var/run/wireguard/{b}.sock")).exists()
        }) && pods
            .iter()
            .chain(stale.iter())
            .all(|p| p.link_names().iter().all(|l| l == "lo"))
    };
    assert!(
        eventually(Duration::from_secs(10), clean),
        "leftovers after the stress run"
    );
    let records = std::fs::read_dir(state.0.join("wgnet"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(records, 0, "state records left");
}
