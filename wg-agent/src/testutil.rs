//! Test doubles for the agent's unit tests, none of which needs root, a
//! network namespace or a cluster: a scripted apiserver (a tower-test mock
//! behind a real `kube::Client`), temporary directories that clean up, an
//! [`Agent`] on the userspace backend whose devices are a fake control
//! socket, and that fake ([`FakeUapi`]).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower_test::mock;
use wg_netns::{Backend, BackendKind, Userspace};

use crate::agent::{Agent, Publish};
use crate::index::Dirty;
use crate::keys::KeyStore;
use crate::local::Records;
use crate::metrics::Metrics;
use crate::settings::Settings;

/// This node.
pub const NODE: &str = "node-1";
/// This node's address.
pub const NODE_IP: &str = "10.250.0.11";

/// One request as the scripted apiserver saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    /// When it arrived (tokio's clock: virtual under a paused runtime).
    pub at: tokio::time::Instant,
}

impl Seen {
    /// `METHOD PATH`, for assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What the scripted apiserver saw so far.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
    pub fn lines(&self) -> Vec<String> {
        self.all().iter().map(Seen::line).collect()
    }
}

/// A client whose apiserver is `script`: each request is logged and
/// answered with the status and JSON body `script` returns.
pub fn apiserver(
    mut script: impl FnMut(&Seen) -> (u16, Value) + Send + 'static,
) -> (kube::Client, Log) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let log = Log::default();
    let log2 = log.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let seen = Seen {
                method: parts.method,
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                at: tokio::time::Instant::now(),
            };
            let (code, reply) = script(&seen);
            log2.0.lock().unwrap().push(seen);
            let response = Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    (kube::Client::new(service, "default"), log)
}

/// An apiserver `Status` failure.
pub fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("scripted {reason}"), "reason": reason, "code": code}),
    )
}

/// A pod as the apiserver returns it.
pub fn pod_json(ns: &str, name: &str, uid: &str, network: Option<&str>) -> Value {
    let mut v = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {"app": "web"}},
        "spec": {"containers": [], "nodeName": NODE}});
    if let Some(n) = network {
        v["metadata"]["annotations"] = json!({wg_k8s_types::ANNOTATION_NETWORK: n});
    }
    v
}

/// A directory under the system's temp dir, removed with everything in it
/// when dropped. Named `wg-agent-unit-*` (the suite's leak check looks for
/// other prefixes; these never outlive a test).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "wg-agent-unit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An agent on a scripted apiserver, with its channels' other ends.
pub struct TestAgent {
    pub agent: Arc<Agent>,
    pub log: Log,
    pub dirty: mpsc::UnboundedReceiver<Dirty>,
    pub publish: mpsc::UnboundedReceiver<Publish>,
    /// Where the userspace backend looks for control sockets.
    pub uapi_dir: PathBuf,
    /// Holds the state, run and socket directories.
    pub _dir: TempDir,
}

impl TestAgent {
    /// The publish requests queued so far.
    pub fn published(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(p) = self.publish.try_recv() {
            out.push(match p {
                Publish::Upsert(k) => format!("upsert {k}"),
                Publish::Refresh(k) => format!("refresh {k}"),
                Publish::Delete {
                    namespace,
                    name,
                    pod_uid,
                } => format!("delete {namespace}/{name} ({pod_uid})"),
            });
        }
        out
    }

    /// The changes marked so far.
    pub fn marked(&mut self) -> Vec<Dirty> {
        let mut out = Vec::new();
        while let Ok(d) = self.dirty.try_recv() {
            out.push(d);
        }
        out
    }
}

/// An agent of node [`NODE`] on the userspace backend (a program that does
/// not exist, control sockets in the temp dir), its state and run
/// directories in a temp dir, talking to `script`.
pub fn test_agent(script: impl FnMut(&Seen) -> (u16, Value) + Send + 'static) -> TestAgent {
    test_agent_with(&[], script)
}

/// [`test_agent`] with more settings (`(variable, value)`).
pub fn test_agent_with(
    extra: &[(&str, &str)],
    script: impl FnMut(&Seen) -> (u16, Value) + Send + 'static,
) -> TestAgent {
    let dir = TempDir::new("agent");
    let state = dir.path().join("state");
    let run = dir.path().join("run");
    let uapi_dir = dir.path().join("uapi");
    std::fs::create_dir_all(&uapi_dir).unwrap();
    let vars = [
        ("NODE_NAME", NODE.to_string()),
        ("NODE_IP", NODE_IP.to_string()),
        ("WG_AGENT_STATE_DIR", state.display().to_string()),
        ("WG_AGENT_RUN_DIR", run.display().to_string()),
        ("WG_AGENT_BACKEND", "userspace".to_string()),
    ];
    let settings = Settings::from_vars(|k| {
        extra
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
            .or_else(|| {
                vars.iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| v.clone())
            })
    })
    .unwrap();
    let mut userspace = Userspace::new("/nonexistent/wireguard-go");
    userspace.socket_dir = uapi_dir.clone();
    let (client, log) = apiserver(script);
    let (dirty_tx, dirty) = mpsc::unbounded_channel();
    let (publish_tx, publish) = mpsc::unbounded_channel();
    let agent = Agent::new(
        settings,
        client,
        Backend::of_kind(BackendKind::Userspace, userspace.clone()),
        userspace,
        KeyStore::open(&state.join("keys")).unwrap(),
        Records::open(&state.join("attachments")).unwrap(),
        dirty_tx,
        publish_tx,
        Metrics::new(),
    )
    .unwrap();
    TestAgent {
        agent: Arc::new(agent),
        log,
        dirty,
        publish,
        uapi_dir,
        _dir: dir,
    }
}

/// A descriptor of this process's own network namespace (what the plugin
/// passes; opening it needs no privilege).
pub fn netns_fd() -> OwnedFd {
    std::fs::File::open("/proc/self/ns/net").unwrap().into()
}

/// The value of one sample line of the metrics' exposition (0 if absent).
pub fn metric(agent: &Agent, line_start: &str) -> f64 {
    agent
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// How many CNI requests of `verb` ended with `outcome`, by the request
/// duration histogram's count.
pub fn cni_requests(agent: &Agent, verb: &str, outcome: &str) -> f64 {
    metric(
        agent,
        &format!(
            "wg_agent_cni_request_duration_seconds_count{{verb=\"{verb}\",outcome=\"{outcome}\"}}"
        ),
    )
}

/// A fake userspace WireGuard device: a control socket that answers
/// `get=1` with a private key and port, `set=1` with success, and records
/// every request. Stops when dropped.
pub struct FakeUapi {
    path: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    fail_sets: Arc<std::sync::atomic::AtomicUsize>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeUapi {
    /// Listen as the device `name` in `dir`; `get` is its answer to `get=1`
    /// (without the final errno line).
    pub fn start(dir: &Path, name: &str, get: String) -> FakeUapi {
        let path = dir.join(format!("{name}.sock"));
        let listener = UnixListener::bind(&path).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let fail_sets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (r2, s2, f2, d2) = (
            Arc::clone(&requests),
            Arc::clone(&stop),
            Arc::clone(&fail_sets),
            Arc::clone(&delay_ms),
        );
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.load(Ordering::Acquire) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut req = String::new();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\n" => break,
                        Ok(_) => req.push_str(&line),
                    }
                }
                if req.is_empty() {
                    continue; // a connect-only check
                }
                let reply = if req.starts_with("get=1") {
                    format!("{get}errno=0\n\n")
                } else if f2
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok()
                {
                    // EIO, as wireguard-go answers a set it could not apply.
                    "errno=5\n\n".to_string()
                } else {
                    "errno=0\n\n".to_string()
                };
                r2.lock().unwrap().push(req);
                let delay = d2.load(Ordering::Acquire);
                if delay > 0 {
                    // A stopped daemon: the answer comes late.
                    std::thread::sleep(std::time::Duration::from_millis(delay));
                }
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        FakeUapi {
            path,
            requests,
            fail_sets,
            delay_ms,
            stop,
            thread: Some(thread),
        }
    }

    /// The requests so far (`get=1` and `set=1` bodies).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Answer every request `ms` milliseconds late (0: at once).
    pub fn delay_replies(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Release);
    }

    /// Answer the next `n` `set=1` requests with an error.
    pub fn fail_next_sets(&self, n: usize) {
        self.fail_sets.store(n, Ordering::Release);
    }

    /// The `set=1` requests so far.
    pub fn sets(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|r| r.starts_with("set=1"))
            .collect()
    }
}

impl Drop for FakeUapi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
