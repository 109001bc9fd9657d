//! Managed mode end to end through `cmd::run`, against an in-process fake
//! agent on a unix socket in a temporary directory (mode 0700, the test's
//! own: the plugin trusts root and its own user). No root needed: the
//! namespace sent is the test's own (`/proc/self/ns/net`); only the tests
//! of an agent socket or hint of another user need root, to make one.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::cmd;
use crate::cni::{Version, NO_MAC};
use crate::managed::{recv, send};

const NETNS: &str = "/proc/self/ns/net";
const VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=c1";

/// A test's own directory under the temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "wgcni-managed-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("hints")).unwrap();
        // As the agent makes them: its socket's directory 0700, the hints
        // readable.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(p.join("hints"), std::fs::Permissions::from_mode(0o755)).unwrap();
        Dir(p)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("agent.sock")
    }

    fn hint(&self, network: &str, body: &str) {
        let path = self.0.join("hints").join(format!("{network}.json"));
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.0.join("log")).unwrap_or_default()
    }

    /// A managed configuration for network "pods"; `extra`'s keys are set,
    /// its null values remove the key.
    fn conf(&self, version: &str, extra: Value) -> Value {
        let mut c = json!({"cniVersion": version, "name": "k8s-pod-network", "type": "wg-cni",
            "network": "pods", "agentSocket": self.socket(), "agentHintDir": self.0.join("hints"),
            "agentTimeout": "5s", "logFile": self.0.join("log")});
        let o = c.as_object_mut().unwrap();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                o.remove(k);
            } else {
                o.insert(k.clone(), v.clone());
            }
        }
        c
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the fake agent received on one connection.
#[derive(Debug)]
struct Seen {
    req: Request,
    /// (st_dev, st_ino) of the descriptor that came with it.
    fd: Option<(u64, u64)>,
}

fn ident(f: impl AsFd) -> (u64, u64) {
    let st = rustix::fs::fstat(f).unwrap();
    (st.st_dev, st.st_ino)
}

fn netns_ident() -> (u64, u64) {
    ident(File::open(NETNS).unwrap())
}

/// A fake agent answering one connection per script entry: `Some(reply)`,
/// or `None` to read the request and never answer (until the plugin
/// hangs up).
fn agent(dir: &Dir, script: Vec<Option<Reply>>) -> JoinHandle<Vec<Seen>> {
    let listener = UnixListener::bind(dir.socket()).unwrap();
    std::thread::spawn(move || {
        script
            .into_iter()
            .map(|reply| {
                let (s, _) = listener.accept().unwrap();
                let (req, fd): (Request, _) = recv(&s).unwrap();
                let fd = fd.map(ident);
                match reply {
                    Some(r) => send(&s, &r, None).unwrap(),
                    None => {
                        let _ = (&s).read_to_end(&mut Vec::new());
                    }
                }
                Seen { req, fd }
            })
            .collect()
    })
}

fn run_with(
    command: &str,
    netns: &str,
    args: &str,
    conf: &Value,
) -> Result<Option<Value>, CniError> {
    let vars = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args),
    ];
    let env = Env::from_vars(|k| {
        vars.iter()
            .find(|(kk, _)| *kk == k)
            .map(|(_, v)| v.to_string())
    })
    .unwrap();
    cmd::run(&env, conf.to_string().as_bytes(), &mut Log::none())
}

fn run(command: &str, conf: &Value) -> Result<Option<Value>, CniError> {
    run_with(command, NETNS, POD_ARGS, conf)
}

fn key() -> wg_netns::PublicKey {
    wg_netns::PublicKey::from_bytes([7; 32])
}

fn attached() -> Reply {
    Reply::Attached(Attached::new(
        "pods".into(),
        "wg0".into(),
        vec![
            "10.244.1.5/16".parse().unwrap(),
            "fd00:10::5/64".parse().unwrap(),
        ],
        vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10::/64".parse().unwrap(),
            "10.96.0.0/12".parse().unwrap(),
        ],
        1380,
        key(),
    ))
}

fn prev(version: &str) -> Value {
    json!({"cniVersion": version,
        "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"}, {"name": "eth0", "sandbox": NETNS}],
        "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
        "x-unknown": {"kept": true}})
}

fn failed(code: u32) -> Reply {
    Reply::Failed(Failure {
        code,
        msg: "the agent says no".into(),
        details: "because".into(),
    })
}

#[test]
fn add_attached_in_every_version_chained() {
    let dir = Dir::new();
    let fake = agent(&dir, VERSIONS.iter().map(|_| Some(attached())).collect());
    for v in VERSIONS {
        let version = Version::parse(v).unwrap();
        let r = run("ADD", &dir.conf(v, json!({"prevResult": prev(v)})))
            .unwrap()
            .unwrap();
        assert_eq!(r["cniVersion"], v);
        let ifs = r["interfaces"].as_array().unwrap();
        assert_eq!(ifs.len(), 3, "{r}");
        assert_eq!(ifs[2]["name"], "wg0");
        assert_eq!(ifs[2]["sandbox"], NETNS);
        assert_eq!(ifs[2]["mac"], NO_MAC);
        assert_eq!(
            ifs[2].get("mtu"),
            (version >= Version::V1_1_0).then_some(&json!(1380))
        );
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 3, "{r}");
        assert_eq!(ips[0]["gateway"], "10.88.0.1", "prevResult's IPs are kept");
        assert_eq!(ips[1]["address"], "10.244.1.5/16");
        assert_eq!(ips[2]["address"], "fd00:10::5/64");
        assert!(ips[1..].iter().all(|i| i["interface"] == 2));
        for ip in ips {
            assert_eq!(
                ip.get("version").is_some(),
                version < Version::V1_0_0,
                "{r}"
            );
        }
        if version < Version::V1_0_0 {
            assert_eq!(ips[1]["version"], "4");
            assert_eq!(ips[2]["version"], "6");
        }
        let routes = r["routes"].as_array().unwrap();
        let ours: Vec<&str> = routes[1..]
            .iter()
            .map(|r| r["dst"].as_str().unwrap())
            .collect();
        assert_eq!(ours, ["10.244.0.0/16", "fd00:10::/64", "10.96.0.0/12"]);
        assert!(routes[1..]
            .iter()
            .all(|r| r.get("gw").is_none() && r.get("table").is_none()));
        assert_eq!(r["x-unknown"]["kept"], true);
    }
    let seen = fake.join().unwrap();
    let want_pod = PodRef {
        namespace: "default".into(),
        name: "web-0".into(),
        uid: Some("u-1".into()),
    };
    for s in &seen {
        assert_eq!(s.req.verb, Verb::Add);
        assert_eq!(s.req.network.as_deref(), Some("pods"));
        assert_eq!(s.req.pod.as_ref(), Some(&want_pod));
        assert_eq!(
            (
                s.req.container_id.as_str(),
                s.req.ifname.as_str(),
                s.req.netns_path.as_str()
            ),
            ("c1", "eth0", NETNS)
        );
        assert_eq!(
            s.fd,
            Some(netns_ident()),
            "the pod's namespace travels as a descriptor"
        );
    }
    let log = dir.log();
    assert!(log.contains("the agent attached wg0"), "{log}");
}

#[test]
fn add_attached_standalone() {
    let dir = Dir::new();
    let fake = agent(&dir, vec![Some(attached())]);
    let conf = dir.conf("1.0.0", json!({"dns": {"nameservers": ["10.96.0.10"]}}));
    let r = run("ADD", &conf).unwrap().unwrap();
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 1);
    assert_eq!(r["interfaces"][0]["name"], "wg0");
    assert!(r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["interface"] == 0));
    assert_eq!(r["routes"].as_array().unwrap().len(), 3);
    assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
    fake.join().unwrap();
}

#[test]
fn add_attached_passthrough() {
    let dir = Dir::new();
    let fake = agent(&dir, vec![Some(attached())]);
    let conf = dir.conf(
        "1.1.0",
        json!({"prevResult": prev("1.1.0"), "chainedResult": "passthrough"}),
    );
    let r = run("ADD", &conf).unwrap().unwrap();
    assert_eq!(r, prev("1.1.0"));
    assert_eq!(fake.join().unwrap().len(), 1, "the agent still attached");
}

#[test]
fn add_skipped_passes_the_result_through() {
    let dir = Dir::new();
    let skipped = || {
        Some(Reply::Skipped {
            reason: "no annotation".into(),
        })
    };
    let fake = agent(&dir, vec![skipped(), skipped()]);
    // Annotation mode: no network in the request.
    let annotation = json!({"network": null, "managed": true});
    let mut chained = annotation.clone();
    chained["prevResult"] = prev("0.4.0");
    let r = run("ADD", &dir.conf("0.4.0", chained)).unwrap().unwrap();
    assert_eq!(r, prev("0.4.0"));
    let r = run("ADD", &dir.conf("1.1.0", annotation)).unwrap().unwrap();
    assert_eq!(
        r,
        json!({"cniVersion": "1.1.0"}),
        "standalone: an empty result"
    );
    let seen = fake.join().unwrap();
    assert!(seen.iter().all(|s| s.req.network.is_none()));
    assert!(dir.log().contains("no annotation"), "{}", dir.log());
}

#[test]
fn add_failed_propagates_the_agents_error() {
    let dir = Dir::new();
    let fake = agent(
        &dir,
        vec![Some(failed(11)), Some(failed(7)), Some(failed(999))],
    );
    let conf = dir.conf("1.0.0", json!({}));
    let e = run("ADD", &conf).unwrap_err();
    assert_eq!(
        (e.code, e.msg.as_str(), e.details.as_str()),
        (Code::TryAgainLater, "the agent says no", "because")
    );
    assert_eq!(run("ADD", &conf).unwrap_err().code, Code::InvalidConfig);
    let e = run("ADD", &conf).unwrap_err();
    assert_eq!(e.code, Code::Io, "a code wg-cni does not know");
    assert!(e.details.contains("999"), "{e}");
    fake.join().unwrap();
}

#[test]
fn add_without_the_agent_is_try_again_later() {
    let dir = Dir::new();
    let conf = dir.conf("1.0.0", json!({"prevResult": prev("1.0.0")}));
    let socket = dir.socket().display().to_string();
    // No socket at all.
    let e = run("ADD", &conf).unwrap_err();
    assert_eq!(e.code, Code::TryAgainLater);
    assert!(e.msg.contains(&socket), "{e}");
    assert!(e.details.contains("No such file"), "{e}");
    // A socket nobody listens on.
    drop(UnixListener::bind(dir.socket()).unwrap());
    let e = run("ADD", &conf).unwrap_err();
    assert_eq!(e.code, Code::TryAgainLater);
    assert!(e.details.contains("refused"), "{e}");
    std::fs::remove_file(dir.socket()).unwrap();
    // An agent that does not answer within agentTimeout.
    let fake = agent(&dir, vec![None]);
    let started = Instant::now();
    let slow = dir.conf("1.0.0", json!({"agentTimeout": "200ms"}));
    assert_eq!(run("ADD", &slow).unwrap_err().code, Code::TryAgainLater);
    assert!(started.elapsed() < Duration::from_secs(4));
    fake.join().unwrap();
    std::fs::remove_file(dir.socket()).unwrap();
    // Replies that are not the protocol's answer to ADD.
    let bad_name = Reply::Attached(Attached::new(
        "pods".into(),
        "not/an/interface".into(),
        vec![],
        vec![],
        1420,
        key(),
    ));
    let fake = agent(&dir, vec![Some(Reply::Done), Some(bad_name)]);
    for _ in 0..2 {
        let e = run("ADD", &conf).unwrap_err();
        assert_eq!(e.code, Code::TryAgainLater);
        assert!(e.details.contains("malformed"), "{e}");
    }
    fake.join().unwrap();
}

#[test]
fn add_without_the_agent_follows_the_networks_failure_policy() {
    let dir = Dir::new();
    let chained = dir.conf("1.0.0", json!({"prevResult": prev("1.0.0")}));
    dir.hint("pods", r#"{"failurePolicy": "ignore"}"#);
    assert_eq!(run("ADD", &chained).unwrap().unwrap(), prev("1.0.0"));
    assert!(dir.log().contains("failurePolicy ignore"), "{}", dir.log());
    let standalone = dir.conf("1.1.0", json!({}));
    assert_eq!(
        run("ADD", &standalone).unwrap().unwrap(),
        json!({"cniVersion": "1.1.0"})
    );
    // "fail", a malformed hint, and no hint: try again later.
    dir.hint("pods", r#"{"failurePolicy": "fail"}"#);
    assert_eq!(run("ADD", &chained).unwrap_err().code, Code::TryAgainLater);
    dir.hint("pods", "{not json");
    let e = run("ADD", &chained).unwrap_err();
    assert_eq!(e.code, Code::TryAgainLater);
    assert!(e.details.contains("pods.json"), "names the hint: {e}");
    std::fs::remove_file(dir.0.join("hints/pods.json")).unwrap();
    assert_eq!(run("ADD", &chained).unwrap_err().code, Code::TryAgainLater);
}

#[test]
fn add_needs_the_namespace() {
    let dir = Dir::new();
    let e = run_with(
        "ADD",
        "/nonexistent/netns/x",
        POD_ARGS,
        &dir.conf("1.0.0", json!({})),
    )
    .unwrap_err();
    assert_eq!(e.code, Code::ContainerUnknown);
}

#[test]
fn del_forwards_and_never_fails_on_what_is_gone() {
    let dir = Dir::new();
    let conf = dir.conf("1.0.0", json!({}));
    // No agent: success, and a log line saying who cleans up.
    assert_eq!(run("DEL", &conf).unwrap(), None);
    assert!(dir.log().contains("when it returns"), "{}", dir.log());
    let fake = agent(
        &dir,
        vec![
            Some(Reply::Done),
            Some(Reply::Done),
            Some(Reply::Done),
            Some(Reply::Skipped {
                reason: "unknown container".into(),
            }),
            Some(failed(5)),
        ],
    );
    assert_eq!(run("DEL", &conf).unwrap(), None);
    // The namespace is gone, or was never given.
    assert_eq!(
        run_with("DEL", "/nonexistent/netns/x", POD_ARGS, &conf).unwrap(),
        None
    );
    assert_eq!(run_with("DEL", "", "", &conf).unwrap(), None);
    assert_eq!(run("DEL", &conf).unwrap(), None);
    assert_eq!(run("DEL", &conf).unwrap_err().code, Code::Io);
    let seen = fake.join().unwrap();
    assert!(seen.iter().all(|s| s.req.verb == Verb::Del));
    assert_eq!(seen[0].fd, Some(netns_ident()));
    assert_eq!(seen[1].fd, None);
    assert_eq!(seen[1].req.netns_path, "/nonexistent/netns/x");
    assert_eq!((seen[2].fd, seen[2].req.pod.as_ref()), (None, None));
}

#[test]
fn check_forwards_from_0_4_0() {
    let dir = Dir::new();
    let conf = dir.conf("1.0.0", json!({}));
    assert_eq!(run("CHECK", &conf).unwrap_err().code, Code::TryAgainLater);
    let e = run("CHECK", &dir.conf("0.3.1", json!({}))).unwrap_err();
    assert_eq!(e.code, Code::IncompatibleVersion);
    let fake = agent(&dir, vec![Some(Reply::Done), Some(failed(100))]);
    assert_eq!(run("CHECK", &conf).unwrap(), None);
    assert_eq!(run("CHECK", &conf).unwrap_err().code, Code::CheckMismatch);
    let seen = fake.join().unwrap();
    assert!(seen
        .iter()
        .all(|s| s.req.verb == Verb::Check && s.fd == Some(netns_ident())));
}

#[test]
fn status_is_whether_the_agent_listens_and_gc_is_the_agents() {
    let dir = Dir::new();
    let conf = dir.conf("1.1.0", json!({}));
    let e = run_with("STATUS", "", "", &conf).unwrap_err();
    assert_eq!(e.code, Code::NotAvailable);
    assert!(e.msg.contains(&dir.socket().display().to_string()), "{e}");
    // A named network that fails without the agent: still not available.
    dir.hint("pods", r#"{"failurePolicy": "fail"}"#);
    assert_eq!(
        run_with("STATUS", "", "", &conf).unwrap_err().code,
        Code::NotAvailable
    );
    let listener = UnixListener::bind(dir.socket()).unwrap();
    assert_eq!(run_with("STATUS", "", "", &conf).unwrap(), None);
    drop(listener);
    assert_eq!(run_with("GC", "", "", &conf).unwrap(), None);
}

/// STATUS does not make the runtime's network depend on the agent when
/// ADD can answer without it: annotation mode (pods that did not opt in
/// pass through), or a named network whose policy is `ignore`.
#[test]
fn status_is_ready_without_the_agent_when_add_can_answer() {
    let dir = Dir::new();
    let annotation = dir.conf("1.1.0", json!({"network": null, "managed": true}));
    assert_eq!(run_with("STATUS", "", "", &annotation).unwrap(), None);
    assert!(dir.log().contains("did not opt in"), "{}", dir.log());
    dir.hint("pods", r#"{"failurePolicy": "ignore"}"#);
    assert_eq!(
        run_with("STATUS", "", "", &dir.conf("1.1.0", json!({}))).unwrap(),
        None
    );
    assert!(dir.log().contains("failurePolicy ignore"), "{}", dir.log());
}

/// The annotations as containerd passes them: `runtimeConfig` with the
/// capability the conflist entry declares.
fn with_annotations(annotations: Value) -> Value {
    json!({"network": null, "managed": true,
        "capabilities": {(crate::managed::POD_ANNOTATIONS_CAPABILITY): true},
        "runtimeConfig": {(crate::managed::POD_ANNOTATIONS_CAPABILITY): annotations}})
}

/// Nobody has connected to `listener` (set non-blocking here).
fn never_asked(listener: &UnixListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A pod without the annotation (the runtime says so) is passed through
/// by ADD, DEL and CHECK without a word to the agent: not when none
/// listens, not when one listens but never answers.
#[test]
fn pods_that_did_not_opt_in_never_reach_the_agent() {
    let dir = Dir::new();
    for annotations in [
        json!({"kubernetes.io/config.seen": "2026-01-01T00:00:00Z", "other/x": "y"}),
        Value::Null,
        json!({}),
    ] {
        let mut chained = dir.conf("1.0.0", with_annotations(annotations.clone()));
        chained["prevResult"] = prev("1.0.0");
        // No agent at all.
        assert_eq!(run("ADD", &chained).unwrap().unwrap(), prev("1.0.0"));
        // An agent that accepts and never answers: it is never asked.
        let listener = UnixListener::bind(dir.socket()).unwrap();
        assert_eq!(run("ADD", &chained).unwrap().unwrap(), prev("1.0.0"));
        let standalone = dir.conf("1.1.0", with_annotations(annotations));
        assert_eq!(
            run("ADD", &standalone).unwrap().unwrap(),
            json!({"cniVersion": "1.1.0"})
        );
        assert_eq!(run("DEL", &chained).unwrap(), None);
        assert_eq!(run("CHECK", &chained).unwrap(), None);
        assert!(never_asked(&listener), "the agent was asked");
        drop(listener);
        std::fs::remove_file(dir.socket()).unwrap();
    }
    assert!(
        dir.log()
            .contains("no wireguard.wg-netns.io/network annotation: passing the result through"),
        "{}",
        dir.log()
    );
}

/// A pod whose annotation names a network: asked of the agent; without
/// the agent, that network's failure policy applies.
#[test]
fn annotated_pods_follow_their_networks_policy_without_the_agent() {
    let dir = Dir::new();
    let ann = |n: &str| with_annotations(json!({"wireguard.wg-netns.io/network": n}));
    let mut chained = dir.conf("1.0.0", ann("pods"));
    chained["prevResult"] = prev("1.0.0");
    // With the agent: asked (it decides from the pod, as before).
    let fake = agent(&dir, vec![Some(attached())]);
    let r = run("ADD", &chained).unwrap().unwrap();
    assert_eq!(r["interfaces"][2]["name"], "wg0", "{r}");
    let seen = fake.join().unwrap();
    assert_eq!(seen[0].req.network, None);
    std::fs::remove_file(dir.socket()).unwrap();
    let socket = dir.socket().display().to_string();
    // No hint yet: try again later, naming the agent and why.
    let e = run("ADD", &chained).unwrap_err();
    assert_eq!(e.code, Code::TryAgainLater);
    assert!(
        e.msg.contains("node agent") && e.msg.contains(&socket),
        "{e}"
    );
    assert!(e.details.contains("failure policy is unknown"), "{e}");
    dir.hint("pods", r#"{"failurePolicy": "fail"}"#);
    let e = run("ADD", &chained).unwrap_err();
    assert_eq!(e.code, Code::TryAgainLater);
    assert!(e.details.contains("failurePolicy fail"), "{e}");
    dir.hint("pods", r#"{"failurePolicy": "ignore"}"#);
    assert_eq!(run("ADD", &chained).unwrap().unwrap(), prev("1.0.0"));
    assert!(
        dir.log()
            .contains("network pods has failurePolicy ignore: passing the result through"),
        "{}",
        dir.log()
    );
    // Another network's hint does not apply; a name that is no network
    // name never reads a file.
    let mut other = dir.conf("1.0.0", ann("other"));
    other["prevResult"] = prev("1.0.0");
    assert_eq!(run("ADD", &other).unwrap_err().code, Code::TryAgainLater);
    dir.hint("x", r#"{"failurePolicy": "ignore"}"#);
    let mut bad = dir.conf("1.0.0", ann("../hints/x"));
    bad["prevResult"] = prev("1.0.0");
    let e = run("ADD", &bad).unwrap_err();
    assert_eq!(e.code, Code::TryAgainLater);
    assert!(e.details.contains("not a network name"), "{e}");
    // DEL without the agent still succeeds.
    assert_eq!(run("DEL", &chained).unwrap(), None);
}

/// The runtime passed no annotations (the entry does not declare the
/// capability, or the runtime lacks it): the agent decides when it
/// answers; without it, whether the pod opted in is unknown and the
/// result passes through, so that no pod waits for the agent.
#[test]
fn without_annotations_the_agent_decides_and_its_absence_stops_no_pod() {
    let dir = Dir::new();
    for extra in [
        json!({"network": null, "managed": true}),
        // Malformed (the runtime's, not the user's): the same.
        json!({"network": null, "managed": true, "runtimeConfig": {(crate::managed::POD_ANNOTATIONS_CAPABILITY): "x"}}),
        json!({"network": null, "managed": true, "runtimeConfig": {(crate::managed::POD_ANNOTATIONS_CAPABILITY): {"wireguard.wg-netns.io/network": 7}}}),
    ] {
        let mut chained = dir.conf("1.0.0", extra);
        chained["prevResult"] = prev("1.0.0");
        let fake = agent(&dir, vec![Some(attached())]);
        let r = run("ADD", &chained).unwrap().unwrap();
        assert_eq!(r["interfaces"][2]["name"], "wg0", "{r}");
        fake.join().unwrap();
        std::fs::remove_file(dir.socket()).unwrap();
        assert_eq!(run("ADD", &chained).unwrap().unwrap(), prev("1.0.0"));
    }
    let log = dir.log();
    assert!(
        log.contains("the runtime passed no pod annotations")
            && log.contains("io.kubernetes.cri.pod-annotations"),
        "{log}"
    );
}

/// Whether this test can make files and sockets of another user (root);
/// otherwise it is skipped, unless `WG_NETNS_REQUIRE_ALL=1`.
fn can_play_another_user(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    assert!(
        !wg_netns_testkit::require_all(),
        "{test}: needs root to make a file of another user"
    );
    eprintln!("SKIP {test}: needs root to make a file of another user");
    false
}

/// Someone else's uid (nobody).
const OTHER_UID: u32 = 65534;

/// The agent's socket is trusted only in a 0700 directory of root's: a
/// directory others can enter or one of another user is refused before
/// connecting, as an agent that cannot be reached (a named network that
/// fails without it: code 11 naming why; STATUS 50).
#[test]
fn an_agent_socket_in_an_open_or_foreign_directory_is_not_trusted() {
    let dir = Dir::new();
    let conf = dir.conf("1.0.0", json!({}));
    let listener = UnixListener::bind(dir.socket()).unwrap();
    for mode in [0o755, 0o750, 0o701] {
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = run("ADD", &conf).unwrap_err();
        assert_eq!(e.code, Code::TryAgainLater);
        assert!(
            e.details.contains("not trusted") && e.details.contains(&format!("{mode:04o}")),
            "{e}"
        );
        let e = run_with("STATUS", "", "", &conf).unwrap_err();
        assert_eq!(e.code, Code::NotAvailable);
        assert!(e.details.contains("not trusted"), "{e}");
    }
    assert!(never_asked(&listener), "connected to an untrusted socket");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    if !can_play_another_user("an_agent_socket_in_an_open_or_foreign_directory_is_not_trusted") {
        return;
    }
    let other = rustix::fs::Uid::from_raw(OTHER_UID);
    rustix::fs::chown(&dir.0, Some(other), None).unwrap();
    let e = run("ADD", &conf).unwrap_err();
    assert_eq!(e.code, Code::TryAgainLater);
    assert!(e.details.contains("owned by uid 65534, not root"), "{e}");
    assert!(never_asked(&listener), "connected to an untrusted socket");
    rustix::fs::chown(&dir.0, Some(rustix::fs::Uid::ROOT), None).unwrap();
}

/// A listener of another user at the agent's path (the path swapped after
/// the directory was checked, or a directory made root's by mistake) is
/// refused after connecting: `SO_PEERCRED` names who listens. The fake
/// agent's thread drops to another uid (its own credentials only) before
/// `listen`, which is what the kernel reports.
#[test]
fn an_agent_that_is_not_root_is_not_trusted() {
    if !can_play_another_user("an_agent_that_is_not_root_is_not_trusted") {
        return;
    }
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let dir = Dir::new();
    let path = dir.socket();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let fake = std::thread::spawn(move || {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::bind(&fd, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        let other = rustix::process::Uid::from_raw(OTHER_UID);
        rustix::thread::set_thread_res_uid(other, other, other).unwrap();
        rustix::net::listen(&fd, 8).unwrap();
        let listener = UnixListener::from(fd);
        ready_tx.send(()).unwrap();
        // Answer like an agent, to show the answer is not what decides.
        let (s, _) = listener.accept().unwrap();
        let got = recv::<Request>(&s).map(|(r, _)| r.verb);
        let _ = send(&s, &attached(), None);
        got.ok()
    });
    ready_rx.recv().unwrap();
    let conf = dir.conf("1.0.0", json!({"prevResult": prev("1.0.0")}));
    let e = run("ADD", &conf).unwrap_err();
    assert_eq!(e.code, Code::TryAgainLater);
    assert!(
        e.details.contains("not trusted") && e.details.contains("runs as uid 65534, not root"),
        "{e}"
    );
    // Nothing was sent to it: it read no request.
    assert_eq!(fake.join().unwrap(), None);
}

/// A hint lets pods start without their interface: one that someone other
/// than the agent could have written is not read (the policy is unknown:
/// code 11).
#[test]
fn a_hint_others_could_write_is_not_trusted() {
    let dir = Dir::new();
    let chained = dir.conf("1.0.0", json!({"prevResult": prev("1.0.0")}));
    dir.hint("pods", r#"{"failurePolicy": "ignore"}"#);
    assert_eq!(run("ADD", &chained).unwrap().unwrap(), prev("1.0.0"));
    let hint = dir.0.join("hints/pods.json");
    for (what, mode) in [
        (&hint, 0o666),
        (&hint, 0o620),
        (&dir.0.join("hints"), 0o777),
    ] {
        std::fs::set_permissions(what, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = run("ADD", &chained).unwrap_err();
        assert_eq!(e.code, Code::TryAgainLater);
        assert!(
            e.details.contains("not trusted") && e.details.contains("writable by group or others"),
            "{e}"
        );
        dir.hint("pods", r#"{"failurePolicy": "ignore"}"#);
        std::fs::set_permissions(dir.0.join("hints"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    assert_eq!(run("ADD", &chained).unwrap().unwrap(), prev("1.0.0"));
    if !can_play_another_user("a_hint_others_could_write_is_not_trusted") {
        return;
    }
    rustix::fs::chown(&hint, Some(rustix::fs::Uid::from_raw(OTHER_UID)), None).unwrap();
    let e = run("ADD", &chained).unwrap_err();
    assert!(e.details.contains("owned by uid 65534"), "{e}");
}

#[test]
fn configuration_errors_come_first() {
    let dir = Dir::new();
    let e = run("ADD", &dir.conf("1.0.0", json!({"address": "10.0.0.2/24"}))).unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(e.details.starts_with("address:"), "{e}");
    let e = run("ADD", &dir.conf("1.0.0", json!({"network": "Not_A_Label"}))).unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(e.details.starts_with("network:"), "{e}");
}

#[test]
fn pod_identity_from_cni_args() {
    let env = |args: &str| Env {
        command: crate::cni::Command::Add,
        container_id: "c".into(),
        netns: NETNS.into(),
        ifname: "eth0".into(),
        args: crate::cni::parse_args(args).unwrap(),
        path: String::new(),
    };
    assert_eq!(
        pod(&env("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p")),
        Some(PodRef {
            namespace: "ns".into(),
            name: "p".into(),
            uid: None
        })
    );
    assert_eq!(pod(&env("K8S_POD_NAMESPACE=ns")), None);
    assert_eq!(pod(&env("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=")), None);
    assert_eq!(pod(&env("")), None);
}

mod property {
    use super::*;
    use proptest::prelude::*;

    prop_compose! {
        /// Networks from a small set, so that lists repeat some.
        fn net()(v4 in any::<bool>(), n in 0u8..6, p in 8u8..=24) -> IpNetwork {
            if v4 {
                IpNetwork::new(std::net::IpAddr::from([10, n, 0, 1]), p).unwrap()
            } else {
                IpNetwork::new(std::net::IpAddr::from([0xfd00, u16::from(n), 0, 0, 0, 0, 0, 1]), p + 40).unwrap()
            }
        }
    }

    proptest! {
        /// Any Attached reply, in any version, chained or not: the result
        /// lists each of its addresses exactly once, on its interface, and
        /// each of its routes exactly once; prevResult's entries stay.
        #[test]
        fn every_address_once(addresses in proptest::collection::vec(net(), 0..6),
                              routes in proptest::collection::vec(net(), 0..6),
                              version in 0usize..4, chained in any::<bool>()) {
            let v = VERSIONS[version];
            let mut raw = json!({"cniVersion": v, "name": "n", "network": "pods"});
            if chained {
                raw["prevResult"] = prev(v);
            }
            let conf = NetConf::parse(raw.to_string().as_bytes()).unwrap();
            let env = Env { command: crate::cni::Command::Add, container_id: "c".into(), netns: NETNS.into(),
                            ifname: "eth0".into(), args: vec![], path: String::new() };
            let a = Attached::new("pods".into(), "wg0".into(), addresses.clone(), routes.clone(), 1420, key());
            let r = attached_result(&conf, &env, &a);
            let ours = if chained { 2 } else { 0 };
            prop_assert_eq!(&r["interfaces"][ours]["name"], &json!("wg0"));
            let ips = r["ips"].as_array().cloned().unwrap_or_default();
            for want in &addresses {
                let n = ips.iter().filter(|i| i["address"] == want.to_string().as_str()).count();
                prop_assert_eq!(n, 1, "{} in {}", want, r);
            }
            let listed_on_ours = ips.iter().filter(|i| i["interface"] == ours).count();
            let distinct = addresses.iter().enumerate().filter(|(i, a)| !addresses[..*i].contains(a)).count();
            prop_assert_eq!(listed_on_ours, distinct);
            let rs = r["routes"].as_array().cloned().unwrap_or_default();
            for want in &routes {
                let n = rs.iter().filter(|x| x["dst"] == want.to_string().as_str()).count();
                prop_assert_eq!(n, 1, "{} in {}", want, r);
            }
            if chained {
                prop_assert_eq!(&r["ips"][0]["address"], &json!("10.88.0.5/16"));
                prop_assert_eq!(&r["x-unknown"]["kept"], &json!(true));
            }
        }
    }
}

/// The agent asks an ADD's plugin to start daemons: a bad name is refused,
/// and without `wg-cni-wireguard-go` next to the plugin (as here: nothing
/// is ever started by this test) the answer names the missing file. DEL
/// answers no launch.
#[test]
fn add_answers_the_agents_launches_and_del_does_not() {
    use crate::managed::{Launch, LaunchNamespace, Launched, PROTOCOL_VERSION};
    let dir = Dir::new();
    let listener = UnixListener::bind(dir.socket()).unwrap();
    let ask = |name: &str, ns| Launch::new(name, ns, vec![], true, "/var/run/wireguard".into());
    let fake = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let (req, fd): (Request, _) = recv(&s).unwrap();
        assert_eq!(req.version, PROTOCOL_VERSION);
        assert!(fd.is_some());
        let mut answers = Vec::new();
        for (name, ns) in [
            ("bad/name", LaunchNamespace::Pod),
            ("wgatest0", LaunchNamespace::Node),
        ] {
            send(&s, &Reply::Launch(ask(name, ns)), None).unwrap();
            answers.push(recv::<Launched>(&s).unwrap().0);
        }
        send(&s, &attached(), None).unwrap();
        let (s, _) = listener.accept().unwrap();
        let (req, _): (Request, _) = recv(&s).unwrap();
        assert_eq!(req.verb, Verb::Del);
        send(
            &s,
            &Reply::Launch(ask("wgatest1", LaunchNamespace::Node)),
            None,
        )
        .unwrap();
        let unanswered = recv::<Launched>(&s).is_err();
        (answers, unanswered)
    });
    let r = run("ADD", &dir.conf("1.0.0", json!({}))).unwrap().unwrap();
    assert_eq!(r["interfaces"][0]["name"], "wg0", "{r}");
    run("DEL", &dir.conf("1.0.0", json!({}))).unwrap();
    let (answers, unanswered) = fake.join().unwrap();
    let bad = answers[0].result().unwrap_err();
    assert!(bad.contains("bad/name"), "{bad}");
    let missing = answers[1].result().unwrap_err();
    let want = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join(USERSPACE_PROGRAM);
    assert!(missing.contains(&want.display().to_string()), "{missing}");
    assert!(missing.contains("installer"), "{missing}");
    assert!(unanswered, "DEL hangs up on a launch");
    let log = dir.log();
    assert!(
        log.contains(
            "cannot start the agent's daemon for \"wgatest0\" in the node's network namespace"
        ),
        "{log}"
    );
    assert!(
        log.contains("the container's network namespace /proc/self/ns/net"),
        "{log}"
    );
    assert!(log.contains("the agent attached wg0"), "{log}");
    assert!(
        log.contains("a reply that does not answer the request"),
        "{log}"
    );
}
