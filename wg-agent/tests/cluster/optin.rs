//! Pods that did not opt in never depend on the agent (docs/kubernetes.md,
//! "Failure behaviour"): with node 1's agent stopped (SIGKILL, not
//! restarted: its socket file stays and nobody listens), wg-cni learns
//! each pod's annotations from the runtime (containerd passes
//! `io.kubernetes.cri.pod-annotations` in `runtimeConfig` because the
//! conflist entry declares the capability, as the installer writes it):
//! - a pod without the annotation runs;
//! - a pod of a `failurePolicy: fail` network waits (CNI code 11 naming the
//!   agent), and gets its interface once the agent is back;
//! - a pod of an `ignore` network runs without the interface; once the
//!   agent is back, a Warning Event on the pod says so, and the pod
//!   recreated gets the interface.
//!
//! Also: the agent's socket directory is root's and 0700, which wg-cni
//! requires before it connects.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use serde_json::Value;
use wg_netns_testkit::cluster::pod_yaml;
use wg_netns_testkit::eventually;

use super::Ctx;

const NODE: &str = "wgk8s-n1";

// The plugin and the agent read the same annotation.
const _: () = assert!(const_eq(
    wg_attach::managed::ANNOTATION_NETWORK,
    wg_k8s_types::ANNOTATION_NETWORK
));

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

fn network_yaml(name: &str, pool: &str, ports: (u16, u16), policy: &str) -> String {
    format!(
        "apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardNetwork\nmetadata: {{name: {name}}}\n\
         spec:\n  addressPools: [{{cidr: \"{pool}\", blockSize: 28}}]\n  \
         listenPorts: {{from: {}, to: {}}}\n  failurePolicy: {policy}\n",
        ports.0, ports.1
    )
}

/// Whether pod `name` has a link named `wg0`.
fn has_wg0(ctx: &Ctx, name: &str) -> bool {
    let out = ctx.c.exec(name, &["ip", "-o", "link"]);
    assert!(out.status.success(), "exec in {name}");
    String::from_utf8_lossy(&out.stdout).contains("wg0")
}

/// The messages of pod `name`'s events of `reason`.
fn events(ctx: &Ctx, name: &str, reason: &str) -> Vec<String> {
    let v = ctx.json(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name},reason={reason}"),
    ]);
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|e| e["message"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn cni_log(ctx: &Ctx) -> String {
    std::fs::read_to_string(ctx.c.node_dir(1).join("wgcni-managed.log")).unwrap_or_default()
}

pub fn agent_down_optin(ctx: &mut Ctx) {
    let c = ctx.c;
    c.apply(&network_yaml(
        "optfail",
        "10.78.0.0/16",
        (52200, 52299),
        "fail",
    ));
    c.apply(&network_yaml(
        "optignore",
        "10.79.0.0/16",
        (52300, 52399),
        "ignore",
    ));
    // Node 1's agent leaves each network's policy for the plugin.
    let hint = |n: &str| {
        std::fs::read_to_string(c.node_path(1, &format!("/run/wg-agent/networks/{n}.json")))
            .unwrap_or_default()
    };
    let hinted = eventually(Duration::from_secs(30), || {
        hint("optfail").contains("\"fail\"") && hint("optignore").contains("\"ignore\"")
    });
    assert!(hinted, "no hints:\n{}", ctx.log_tail(1));
    // What wg-cni requires of the agent's directory.
    let run = std::fs::metadata(c.node_path(1, "/run/wg-agent")).expect("/run/wg-agent");
    assert_eq!(
        (run.uid(), run.mode() & 0o7777),
        (0, 0o700),
        "the agent's socket directory"
    );

    // The agent stops; nobody listens on its socket.
    ctx.agents[0].kill9();
    assert!(c.node_path(1, "/run/wg-agent/cni.sock").exists());
    let t = Instant::now();
    c.apply(&pod_yaml("optplain", NODE, "opt", None));
    c.apply(&pod_yaml("optfail", NODE, "opt", Some("optfail")));
    c.apply(&pod_yaml("optignore", NODE, "opt", Some("optignore")));
    for p in ["optplain", "optignore"] {
        if let Err(e) = c.wait_pod_running(p, Duration::from_secs(90)) {
            panic!("{p} without the agent: {e}\nwg-cni:\n{}", cni_log(ctx));
        }
    }
    eprintln!(
        "agent down: an unannotated pod and one of an ignore network Running after {:?}",
        t.elapsed()
    );
    assert!(!has_wg0(ctx, "optplain"));
    assert!(
        !has_wg0(ctx, "optignore"),
        "optignore got wg0 without the agent"
    );
    // The pod of the fail network waits, told why.
    let mut why = Vec::new();
    let told = eventually(Duration::from_secs(60), || {
        why = events(ctx, "optfail", "FailedCreatePodSandBox");
        why.iter()
            .any(|m| m.contains("cannot reach the node agent at /run/wg-agent/cni.sock"))
    });
    assert!(told, "optfail's events: {why:?}\nwg-cni:\n{}", cni_log(ctx));
    assert_ne!(c.pod_phase("optfail"), "Running");
    let log = cni_log(ctx);
    for want in [
        "error: cannot reach the node agent at /run/wg-agent/cni.sock (code 11)",
        "network optfail has failurePolicy fail",
        "network optignore has failurePolicy ignore: passing the result through",
        "no wireguard.wg-netns.io/network annotation: passing the result through",
    ] {
        assert!(log.contains(want), "wg-cni's log lacks {want:?}:\n{log}");
    }

    // The agent returns: the waiting pod gets its interface; the pod that
    // started without one is reported.
    let t = Instant::now();
    ctx.start_agent(1);
    if let Err(e) = c.wait_pod_running("optfail", Duration::from_secs(120)) {
        panic!("optfail after the agent's return: {e}\n{}", ctx.log_tail(1));
    }
    assert!(has_wg0(ctx, "optfail"), "optfail runs without wg0");
    let a = ctx.wg_addr("optfail");
    assert!(a.starts_with("10.78."), "optfail's address {a}");
    eprintln!(
        "agent back: optfail Running with wg0 after {:?}",
        t.elapsed()
    );
    let mut warned = Vec::new();
    let reported = eventually(Duration::from_secs(75), || {
        warned = events(ctx, "optignore", "WireGuardInterfaceMissing");
        !warned.is_empty()
    });
    assert!(reported, "no event on optignore:\n{}", ctx.log_tail(1));
    assert!(
        warned[0].contains("optignore") && warned[0].contains("delete the pod"),
        "{warned:?}"
    );
    eprintln!(
        "agent back: optignore's WireGuardInterfaceMissing event after {:?}",
        t.elapsed()
    );
    assert!(events(ctx, "optplain", "WireGuardInterfaceMissing").is_empty());
    assert!(events(ctx, "optfail", "WireGuardInterfaceMissing").is_empty());
    assert!(
        !has_wg0(ctx, "optignore"),
        "a running pod is not attached late"
    );
    // Recreated, it gets the interface.
    c.kubectl_ok(&["delete", "pod", "optignore", "--wait=true", "--timeout=60s"]);
    c.apply(&pod_yaml("optignore", NODE, "opt", Some("optignore")));
    c.wait_pod_running("optignore", Duration::from_secs(90))
        .expect("optignore recreated");
    assert!(has_wg0(ctx, "optignore"), "the recreated pod has no wg0");

    // Leave the cluster as the next scenarios expect it.
    c.kubectl_ok(&[
        "delete",
        "pods",
        "-l",
        "app=opt",
        "--wait=true",
        "--timeout=120s",
    ]);
    let gone = eventually(Duration::from_secs(30), || {
        let v: Value = ctx.json(&["get", "wgatt"]);
        v["items"].as_array().is_some_and(|items| {
            items.iter().all(|i| {
                !i["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("opt")
            })
        })
    });
    assert!(gone, "{}", c.kubectl_ok(&["get", "wgatt"]));
    c.kubectl_ok(&["delete", "wgnet", "optfail", "optignore"]);
}
