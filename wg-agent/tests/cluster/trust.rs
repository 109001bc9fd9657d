//! The mesh's integrity and the agent's Secrets on a shared cluster, tried
//! as an attacker and a tenant would (issue 18 §1, §2): real tokens, real
//! RBAC, the real admission policy, and the victim's traffic checked.

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

use wg_netns::PrivateKey;
use wg_netns_testkit::eventually;

use crate::Ctx;

const TENANT_NS: &str = "wg-tenant";

/// A kubeconfig holding `token` (the cluster's CA, its apiserver).
fn kubeconfig_with(ctx: &Ctx, name: &str, token: &str) -> std::path::PathBuf {
    let path = ctx.c.dir().join(format!("{name}.kubeconfig"));
    crate::write_kubeconfig_file(ctx.c, &path, token);
    path
}

/// `kubectl ARGS` as the holder of `kubeconfig`, `stdin` fed.
pub(crate) fn kubectl_as(
    ctx: &Ctx,
    kubeconfig: &std::path::Path,
    args: &[&str],
    stdin: &str,
) -> Output {
    let mut p: std::process::Child = ctx
        .c
        .kubectl_as(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    p.wait_with_output().expect("kubectl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// PATCH (merge) the status of attachment `ns/name` with the token in
/// `kubeconfig`, straight to the apiserver (kubectl would GET the
/// subresource first, which the agent's RBAC does not grant): whether it
/// was accepted, and the answer.
fn patch_status_as(
    ctx: &Ctx,
    kubeconfig: &std::path::Path,
    ns: &str,
    name: &str,
    body: &str,
) -> (bool, String) {
    let cfg = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let token = cfg
        .split("token: ")
        .nth(1)
        .and_then(|t| t.lines().next())
        .expect("token")
        .trim()
        .to_string();
    let url = format!(
        "https://10.250.0.1:6443/apis/wireguard.wg-netns.io/v1alpha1/namespaces/{ns}/wireguardattachments/{name}/status"
    );
    // In the control plane's namespace, like the cluster's kubectl.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", "wgk8s-cp", "curl"])
        .args(["-sS", "-w", "\n%{http_code}", "-X", "PATCH", "--cacert"])
        .arg(ctx.c.dir().join("pki/ca.crt"))
        .args(["-H", "Content-Type: application/merge-patch+json"])
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .args(["--data", body, &url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text.lines().last().unwrap_or_default().trim().to_string();
    (code.starts_with('2'), text)
}

fn attachment_yaml(ns: &str, name: &str, node: &str) -> String {
    format!(
        "apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardAttachment\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{network: pods, podName: {name}, podUID: {name}, nodeName: {node}, interface: wg0}}\n"
    )
}

/// The status patch that claims `address` with `key` and an endpoint.
fn claim_patch(key: &str, address: &str) -> String {
    format!(
        r#"{{"status": {{"publicKey": "{key}", "addresses": ["{address}"], "endpoint": "10.250.0.77:51999"}}}}"#
    )
}

/// The public key node `i`'s agent has configured on `pod`'s device for
/// the allowed IP `ip`.
fn peer_for(ctx: &Ctx, i: usize, pod: &str, ip: &str) -> Option<String> {
    ctx.device_allowed_ips(i, pod)
        .into_iter()
        .find(|(_, a)| a == ip)
        .map(|(k, _)| k)
}

/// §1: a tenant with `*` in its namespace may not write attachments at
/// all (spec or status); node 1's agent may write its own node's
/// attachment but one publishing node 2's pod's address is ignored by
/// every agent, counted, and the victim's traffic keeps going to the
/// victim.
pub fn forged_attachments(ctx: &Ctx) {
    let c = ctx.c;
    let wb_ip = ctx.wg_addr("wb");
    let wb_addr = ctx
        .attachment("wb")
        .and_then(|a| a["status"]["addresses"][0].as_str().map(str::to_string))
        .expect("wb's address with its prefix");
    let wb_key = ctx.public_key("wb");
    let wb_host = format!("{wb_ip}/32");
    assert!(
        eventually(Duration::from_secs(15), || {
            peer_for(ctx, 1, "wa", &wb_host).as_deref() == Some(wb_key.as_str())
        }),
        "wa's device routes wb's address to wb before the attack",
    );

    // A tenant: a ServiceAccount with every verb on every resource of its
    // own namespace (what "admin of a namespace" often means).
    c.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {TENANT_NS}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: admin, namespace: {TENANT_NS}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: all, namespace: {TENANT_NS}}}\n\
         rules: [{{apiGroups: ['*'], resources: ['*'], verbs: ['*']}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: all, namespace: {TENANT_NS}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: all}}\n\
         subjects: [{{kind: ServiceAccount, name: admin, namespace: {TENANT_NS}}}]\n"
    ));
    let token = c.kubectl_ok(&[
        "-n",
        TENANT_NS,
        "create",
        "token",
        "admin",
        "--duration",
        "1h",
    ]);
    let tenant = kubeconfig_with(ctx, "tenant", &token);
    let evil = PrivateKey::generate()
        .expect("key")
        .public_key()
        .to_base64();
    // RBAC lets it (the wildcard Role): the policy does not.
    let can = c
        .kubectl_as(&tenant)
        .args([
            "auth",
            "can-i",
            "create",
            "wireguardattachments.wireguard.wg-netns.io",
            "-n",
            TENANT_NS,
        ])
        .output()
        .expect("kubectl");
    assert_eq!(
        String::from_utf8_lossy(&can.stdout).trim(),
        "yes",
        "RBAC grants the tenant attachments"
    );
    let created = kubectl_as(
        ctx,
        &tenant,
        &["create", "-f", "-"],
        &attachment_yaml(TENANT_NS, "aaa-forged", "wgk8s-n2"),
    );
    assert!(!created.status.success(), "a tenant created an attachment");
    assert!(
        text(&created).contains("wg-netns-agents-only"),
        "not refused by the policy: {}",
        text(&created)
    );
    // Nor the status of one that exists (node 1's agent makes one in the
    // tenant's namespace; the policy lets it, its own node).
    let agent1 = ctx.kubeconfig(1);
    let made = kubectl_as(
        ctx,
        &agent1,
        &["create", "-f", "-"],
        &attachment_yaml(TENANT_NS, "aaa-forged", "wgk8s-n1"),
    );
    assert!(
        made.status.success(),
        "agent 1 cannot write its own: {}",
        text(&made)
    );
    let (ok, answer) = patch_status_as(
        ctx,
        &tenant,
        TENANT_NS,
        "aaa-forged",
        &claim_patch(&evil, &wb_host),
    );
    assert!(!ok, "a tenant wrote an attachment's status: {answer}");
    assert!(answer.contains("wg-netns-agents-only"), "{answer}");
    // Labels neither (the agents find their own attachments by label).
    let labelled = kubectl_as(
        ctx,
        &tenant,
        &["-n", TENANT_NS, "label", "wgatt", "aaa-forged", "x=y"],
        "",
    );
    assert!(
        !labelled.status.success(),
        "a tenant relabelled an attachment"
    );
    // Deleting is the tenant's right in its namespace.

    // Node 1's agent claims node 2's pod's address with its own key: the
    // policy lets it (its own node's attachment); the agents must not.
    let (ok, answer) = patch_status_as(
        ctx,
        &agent1,
        TENANT_NS,
        "aaa-forged",
        &claim_patch(&evil, &wb_addr),
    );
    assert!(ok, "agent 1's own status write: {answer}");
    for i in 1..=2 {
        assert!(
            eventually(Duration::from_secs(15), || ctx
                .metric(i, r#"wg_agent_mesh_members_rejected{network="pods"}"#)
                == Some(1)),
            "agent {i} counts the forged member\n{}",
            ctx.log_tail(i)
        );
    }
    // Give the agents time to have acted on it (they counted it; a
    // reconcile follows at once), then the victim's route is unchanged.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        peer_for(ctx, 1, "wa", &wb_host).as_deref(),
        Some(wb_key.as_str()),
        "wb's address moved off wb's key\n{}",
        ctx.dump()
    );
    assert!(
        ctx.ping("wa", &wb_ip),
        "wa no longer reaches wb\n{}",
        ctx.dump()
    );
    let log = std::fs::read_to_string(ctx.agent_log(2)).unwrap_or_default();
    assert!(
        log.contains("not a mesh peer") && log.contains("AddressNotOwned"),
        "agent 2 did not say why"
    );
    // The tenant removes it; the count goes back.
    let deleted = kubectl_as(
        ctx,
        &tenant,
        &["-n", TENANT_NS, "delete", "wgatt", "aaa-forged"],
        "",
    );
    assert!(deleted.status.success(), "{}", text(&deleted));
    for i in 1..=2 {
        assert!(
            eventually(Duration::from_secs(15), || {
                ctx.metric(i, r#"wg_agent_mesh_members_rejected{network="pods"}"#)
                    .unwrap_or(0)
                    == 0
            }),
            "agent {i} forgets the forged member"
        );
    }
}

/// §2: the agent's token reads no Secret of a namespace that did not opt
/// in; a peer there says why its preshared key is missing; after the
/// namespace owner binds `wg-agent-preshared-keys`, the key is read.
pub fn secrets_opt_in(ctx: &Ctx) {
    let c = ctx.c;
    let psk = "ZGXAEtAC9EFu8EfFvwRMdtOs1EzCs9fuxuyq4tqxd7E=";
    c.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: psk, namespace: {TENANT_NS}}}\n\
         stringData: {{key: \"{psk}\"}}\n---\n\
         apiVersion: wireguard.wg-netns.io/v1alpha1\nkind: WireGuardPeer\nmetadata: {{name: guarded, namespace: {TENANT_NS}}}\n\
         spec: {{network: pods, publicKey: \"{}\", allowedIPs: [10.97.0.0/24], presharedKeySecretRef: {{name: psk, key: key}}}}\n",
        PrivateKey::generate().expect("key").public_key().to_base64()
    ));
    // The agent's own token, node 1's.
    let agent1 = ctx.kubeconfig(1);
    let read_secret = || {
        kubectl_as(
            ctx,
            &agent1,
            &["-n", TENANT_NS, "get", "secret", "psk", "-o", "name"],
            "",
        )
    };
    let read = read_secret();
    assert!(
        !read.status.success(),
        "the agent's token read a Secret of a namespace that did not opt in"
    );
    assert!(text(&read).contains("forbidden"), "{}", text(&read));
    let other = kubectl_as(
        ctx,
        &agent1,
        &["-n", "kube-system", "get", "secrets", "-o", "name"],
        "",
    );
    assert!(
        !other.status.success(),
        "the agent's token lists kube-system's Secrets"
    );
    // A pod of the network in that namespace: the agent tries the Secret.
    // (A new namespace's default ServiceAccount comes from a controller.)
    assert!(eventually(Duration::from_secs(30), || c
        .kubectl(&["-n", TENANT_NS, "get", "serviceaccount", "default"])
        .status
        .success()));
    c.apply(
        &wg_netns_testkit::cluster::pod_yaml("guarded", "wgk8s-n1", "g", Some("pods"))
            .replace("namespace: default", &format!("namespace: {TENANT_NS}")),
    );
    let ready = |want: &str| {
        let out = c.kubectl(&[
            "-n",
            TENANT_NS,
            "get",
            "wgpeer",
            "guarded",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == want
    };
    assert!(
        eventually(Duration::from_secs(60), || ready("SecretForbidden")),
        "the peer does not say its Secret is forbidden: {}\n{}",
        c.kubectl_ok(&["-n", TENANT_NS, "get", "wgpeer", "guarded", "-o", "yaml"]),
        ctx.log_tail(1)
    );
    let msg = c.kubectl_ok(&[
        "-n",
        TENANT_NS,
        "get",
        "wgpeer",
        "guarded",
        "-o",
        "jsonpath={.status.conditions[0].message}",
    ]);
    assert!(
        msg.contains("wg-agent-preshared-keys"),
        "the message says what to do: {msg}"
    );
    assert!(!msg.contains(psk));
    // The namespace owner opts in, as docs/kubernetes.md says.
    c.kubectl_ok(&[
        "-n",
        TENANT_NS,
        "create",
        "rolebinding",
        "wg-agent-preshared-keys",
        "--clusterrole=wg-agent-preshared-keys",
        "--serviceaccount=kube-system:wg-agent",
    ]);
    let read = read_secret();
    assert!(
        read.status.success(),
        "opted in, still forbidden: {}",
        text(&read)
    );
    assert!(
        eventually(Duration::from_secs(60), || ready("Applied")),
        "the peer is not applied after the opt-in: {}",
        c.kubectl_ok(&["-n", TENANT_NS, "get", "wgpeer", "guarded", "-o", "yaml"])
    );
    // Gone before the next scenario (its pod leaves wa's mesh: a device
    // change that must not be counted against the next one).
    c.kubectl_ok(&["delete", "namespace", TENANT_NS, "--timeout=90s"]);
    let guarded_gone = eventually(Duration::from_secs(30), || {
        !c.kubectl_ok(&["get", "wgatt", "-A", "-o", "name"])
            .contains("guarded")
    });
    assert!(guarded_gone, "the tenant's attachment stayed");
    std::thread::sleep(Duration::from_secs(2));
}
