//! Every failure converges (issue 18 §6): a device write that fails is
//! retried, and the periodic verify compares a device with what its
//! resources say, not with what was last written.

use std::time::{Duration, Instant};

use wg_netns::PrivateKey;
use wg_netns_testkit::eventually;

use crate::Ctx;

/// The allowed IPs node `i`'s agent reads on `pod`'s device.
fn allowed_ips(ctx: &Ctx, i: usize, pod: &str) -> Vec<String> {
    ctx.device_allowed_ips(i, pod)
        .into_iter()
        .map(|(_, ip)| ip)
        .collect()
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("signal");
}

/// wa's userspace daemon is stopped (SIGSTOP) across an edit of a
/// WireGuardPeer's allowed IPs, longer than the agent's device timeout
/// (`WG_AGENT_DEVICE_TIMEOUT`, 5 s) so its write fails; after SIGCONT the
/// device gets the new allowed IPs by itself (the retry, or the next
/// verify) — before, it never did.
pub fn stopped_daemon_across_a_peer_edit(ctx: &Ctx) {
    let c = ctx.c;
    let key = PrivateKey::generate()
        .expect("key")
        .public_key()
        .to_base64();
    let peer = |net: &str| {
        format!(
            "apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardPeer\nmetadata: {{name: converge, namespace: default}}\n\
             spec: {{network: pods, publicKey: \"{key}\", allowedIPs: [{net}], podSelector: {{matchLabels: {{app: a}}}}}}\n"
        )
    };
    c.apply(&peer("10.95.0.0/24"));
    assert!(
        eventually(Duration::from_secs(20), || allowed_ips(ctx, 1, "wa")
            .contains(&"10.95.0.0/24".to_string())),
        "the peer never reached wa: {:?}",
        allowed_ips(ctx, 1, "wa")
    );
    let uid = c.kubectl_ok(&["get", "pod", "wa", "-o", "jsonpath={.metadata.uid}"]);
    let birth = wg_netns::IfName::derived("wga", &format!("{}.wg0", uid.trim())).expect("name");
    let daemons: Vec<u32> = c
        .node_processes(1, "wireguard-go")
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmd| {
                    cmd.split(|b| *b == 0)
                        .any(|a| a == birth.as_str().as_bytes())
                })
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(daemons.len(), 1, "wa's daemon ({birth}): {daemons:?}");
    let pid = daemons[0];
    signal(pid, rustix::process::Signal::STOP);
    // Continue the daemon whatever happens below.
    struct Cont(u32);
    impl Drop for Cont {
        fn drop(&mut self) {
            signal(self.0, rustix::process::Signal::CONT);
        }
    }
    let cont = Cont(pid);
    c.apply(&peer("10.95.1.0/24"));
    let errors = |i| {
        ctx.http(i, "/metrics")
            .and_then(|(_, m)| {
                m.lines()
                    .find(|l| l.starts_with("wg_agent_reconcile_errors_total"))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    let before = errors(1);
    // The write times out after 5 s: the agent counts a failed reconcile.
    let stopped = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || errors(1) > before),
        "no failed reconcile while wa's daemon is stopped\n{}",
        ctx.log_tail(1)
    );
    // Stopped for 10 s in all (the scenario), then continued.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
    drop(cont);
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || {
            let ips = allowed_ips(ctx, 1, "wa");
            ips.contains(&"10.95.1.0/24".to_string()) && !ips.contains(&"10.95.0.0/24".to_string())
        }),
        "the edit never reached wa's device: {:?}\n{}",
        allowed_ips(ctx, 1, "wa"),
        ctx.log_tail(1)
    );
    eprintln!(
        "the edit reached the device {:?} after SIGCONT",
        t.elapsed()
    );
    let b = ctx.wg_addr("wb");
    assert!(
        ctx.ping("wa", b.split('/').next().expect("ip")),
        "wa reaches wb again"
    );
    c.kubectl_ok(&["delete", "wgpeer", "converge"]);
}
