//! Simulated nodes against a real kube-apiserver: each runs the agent's
//! own watches, index, scope loop and reconcile loop
//! (`wg_agent::run::{watches, scope_loop, reconcile_loop}`) with its own
//! client, in this process. Its pods' interfaces are recording devices
//! (`device.rs`: userspace devices answering on their control sockets, held
//! with `Agent::hold`), so nothing touches the kernel: the networks and
//! peers the simulations use keep every address inside the network's pool,
//! so no route is ever wanted through an interface. Shared by the
//! scale test (tests/scale.rs) and the cluster scale benchmark (benches/cluster_scale.rs).

#![allow(dead_code)] // each user takes what it needs

pub mod device;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::mpsc;
use wg_agent::agent::Agent;
use wg_agent::keys::{KeyId, KeyStore};
use wg_agent::local::{LocalRecord, Records};
use wg_agent::metrics::Metrics;
use wg_agent::settings::Settings;
use wg_netns::{Backend, BackendKind, Birthplace, IfName, Netns, SocketNamespace, Userspace};
use wg_netns_testkit::WorkDir;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_path_buf()
}

/// etcd + kube-apiserver on 127.0.0.1 (`scripts/apiserver-lite`), down on
/// drop.
pub struct Lite {
    dir: PathBuf,
    /// Its admin kubeconfig.
    pub kubeconfig: PathBuf,
}

impl Lite {
    /// Start one; `Err` says why it could not (binaries missing).
    pub fn up() -> Result<Lite, String> {
        let out = Command::new(repo().join("scripts/apiserver-lite"))
            .arg("up")
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let kubeconfig = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let dir = kubeconfig.parent().ok_or("no dir")?.to_path_buf();
        Ok(Lite { dir, kubeconfig })
    }

    /// Its directory (PIDs, etcd's data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// CPU seconds the kube-apiserver has used so far.
    pub fn apiserver_cpu(&self) -> f64 {
        let pid = std::fs::read_to_string(self.dir.join("kube-apiserver.pid")).unwrap_or_default();
        let s = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        let after = s.rsplit(')').next().unwrap_or_default();
        let f: Vec<&str> = after.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime: fields 14 and 15 (11 and 12 after the name).
        (t(11) + t(12)) / 100.0
    }

    /// The kube-apiserver's resident memory, in MiB.
    pub fn apiserver_rss_mib(&self) -> f64 {
        let pid = std::fs::read_to_string(self.dir.join("kube-apiserver.pid")).unwrap_or_default();
        rss_mib(pid.trim())
    }

    /// The size of etcd's database file, in bytes.
    pub fn etcd_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.join("etcd/member/snap/db"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Start a CPU profile of the kube-apiserver over the next `seconds`
    /// (its `/debug/pprof/profile`, written to `out` by curl with the
    /// admin's certificate); wait for the returned process to have it.
    /// Read with `go tool pprof -top OUT` (Go's profiles carry their
    /// symbols).
    pub fn profile(&self, seconds: u32, out: &Path) -> std::io::Result<std::process::Child> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let cluster = kc
            .clusters
            .first()
            .and_then(|c| c.cluster.clone())
            .ok_or_else(|| std::io::Error::other("no cluster"))?;
        let user = kc
            .auth_infos
            .first()
            .and_then(|u| u.auth_info.clone())
            .ok_or_else(|| std::io::Error::other("no user"))?;
        let (Some(server), Some(ca), Some(cert), Some(key)) = (
            cluster.server,
            cluster.certificate_authority,
            user.client_certificate,
            user.client_key,
        ) else {
            return Err(std::io::Error::other("kubeconfig without certificates"));
        };
        Command::new("curl")
            .args([
                "-fsS", "--cacert", &ca, "--cert", &cert, "--key", &key, "-o",
            ])
            .arg(out)
            .arg(format!("{server}/debug/pprof/profile?seconds={seconds}"))
            .spawn()
    }

    /// A client of its own (each simulated node has one, as each agent).
    pub async fn client(&self) -> Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        Client::try_from(cfg).expect("client")
    }

    /// The project's CRDs, created and established.
    pub async fn install_crds(&self) {
        let client = self.client().await;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        for crd in wg_k8s_types::crds() {
            api.create(&PostParams::default(), &crd)
                .await
                .expect("create CRD");
        }
        for crd in wg_k8s_types::crds() {
            let name = crd.metadata.name.clone().expect("name");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let c = api.get(&name).await.expect("get CRD");
                let established = c
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name} not established"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }

    /// A namespace with its `default` ServiceAccount (no controller
    /// manager makes it here, and pods need it).
    pub async fn namespace(&self, client: &Client, name: &str) {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).expect("sa");
        Api::<ServiceAccount>::namespaced(client.clone(), name)
            .create(&PostParams::default(), &sa)
            .await
            .expect("create service account");
    }
}

impl Drop for Lite {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/apiserver-lite"))
            .arg("down")
            .arg(&self.dir)
            .status();
    }
}

/// The value after `name` on the command line (a benchmark's flag).
pub fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The `p` quantile (0..=1) of `v`, sorted in place (NaN when empty).
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The resident memory of process `pid` (`self`: this one), in MiB (0
/// when it cannot be read).
pub fn rss_mib(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// A pod bound to `node` (no scheduler, no kubelet: it stays Pending,
/// which is all an agent's pod watch needs), in `network` if any.
pub fn pod(name: &str, node: &str, network: Option<&str>) -> Pod {
    let mut annotations = serde_json::Map::new();
    if let Some(n) = network {
        annotations.insert(wg_k8s_types::ANNOTATION_NETWORK.into(), n.into());
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "registry.invalid/none"}]}
    }))
    .expect("pod")
}

/// One simulated node: an [`Agent`] whose watches, scope loop and
/// reconcile loop run, stopped on drop.
pub struct SimNode {
    /// Its name.
    pub name: String,
    /// The agent (its index and metrics are what is looked at).
    pub agent: Arc<Agent>,
    /// Its interfaces' devices.
    pub devices: Vec<device::Recorder>,
    backend: Backend,
    uapi: PathBuf,
    keys: KeyStore,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: WorkDir,
}

impl SimNode {
    /// Start node `name`'s watches; `linger` is `WG_AGENT_WATCH_LINGER`.
    pub async fn start(lite: &Lite, name: &str, linger: &str) -> SimNode {
        let dir = WorkDir::new("wg-netns-sim");
        let state = dir.join("state");
        let vars = [
            ("NODE_NAME", name.to_string()),
            ("NODE_IP", "10.250.0.1".to_string()),
            ("WG_AGENT_STATE_DIR", state.display().to_string()),
            ("WG_AGENT_RUN_DIR", dir.join("run").display().to_string()),
            ("WG_AGENT_BACKEND", "userspace".to_string()),
            ("WG_AGENT_WATCH_LINGER", linger.to_string()),
        ];
        let settings = Settings::from_vars(|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.clone())
        })
        .expect("settings");
        let uapi = dir.join("uapi");
        std::fs::create_dir_all(&uapi).expect("uapi dir");
        let mut userspace = Userspace::new("/nonexistent/wireguard-go");
        userspace.socket_dir = uapi.clone();
        let backend = Backend::of_kind(BackendKind::Userspace, userspace.clone());
        let (dirty, dirty_rx) = mpsc::unbounded_channel();
        // No status writer runs: nothing reads these.
        let (publish, _) = mpsc::unbounded_channel();
        let agent = Arc::new(
            Agent::new(
                settings,
                lite.client().await,
                backend.clone(),
                userspace,
                KeyStore::open(&state.join("keys")).expect("keys"),
                Records::open(&state.join("attachments")).expect("records"),
                dirty,
                publish,
                Metrics::new(),
            )
            .expect("agent"),
        );
        let tasks = vec![
            tokio::spawn(wg_agent::run::watches(Arc::clone(&agent))),
            tokio::spawn(wg_agent::run::scope_loop(Arc::clone(&agent))),
            tokio::spawn(wg_agent::run::reconcile_loop(Arc::clone(&agent), dirty_rx)),
        ];
        SimNode {
            name: name.to_string(),
            agent,
            devices: Vec::new(),
            backend,
            keys: KeyStore::open(&state.join("keys")).expect("keys"),
            uapi,
            tasks,
            _dir: dir,
        }
    }

    /// Give pod `namespace/pod` (UID `uid`, a pod object of this node in
    /// the apiserver) an interface of `network` at `address`: a recording
    /// device the agent holds and reconciles from now on.
    pub fn hold(
        &mut self,
        namespace: &str,
        pod: &str,
        uid: &str,
        network: &str,
        address: &str,
        port: u16,
    ) {
        let kid = KeyId::new(uid, "wg0").expect("key id");
        let (private, _) = self.keys.get_or_create(&kid, "").expect("key");
        let birth = IfName::derived("wgs", &format!("{}/{uid}", self.name)).expect("name");
        let rec = LocalRecord {
            network: network.into(),
            namespace: namespace.into(),
            pod: pod.into(),
            pod_uid: uid.into(),
            container_id: format!("sim-{uid}"),
            cni_ifname: "eth0".into(),
            addresses: vec![address.parse().expect("address")],
            listen_port: port,
            public_key: private.public_key(),
            key_generation: String::new(),
            attachment: wg_netns::AttachmentRecord {
                interface: IfName::new("wg0").expect("name"),
                birth_name: birth.clone(),
                netns: "/proc/self/ns/net".into(),
                socket_namespace: SocketNamespace::Host,
                backend: BackendKind::Userspace,
                userspace_implementation: None,
            },
            created: 0,
        };
        let attachment: wg_netns::Attachment = serde_json::from_value(json!({
            "index": 2_000_000_000u32, "name": "wg0", "birthName": birth.as_str(),
            "kind": "userspace", "publicKey": null, "mtu": 1420, "up": true,
        }))
        .expect("attachment");
        self.devices.push(device::Recorder::start(
            &self.uapi,
            birth.as_str(),
            private.as_bytes(),
            port,
        ));
        let here = Netns::current().expect("own namespace");
        let place = Birthplace::new(&here, &here, &self.backend).expect("place");
        self.agent.hold(rec, place, attachment).expect("hold");
    }

    /// A sample of the node's metrics (0 when absent).
    pub fn metric(&self, line_start: &str) -> f64 {
        self.agent
            .metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Objects of `kind` its watches received so far.
    pub fn events(&self, kind: &str) -> f64 {
        self.metric(&format!("wg_agent_watch_events_total{{kind=\"{kind}\"}}"))
    }

    /// Networks (`network`) or namespaces (`namespace`) it watches.
    pub fn watched(&self, scope: &str) -> f64 {
        self.metric(&format!("wg_agent_watched{{scope=\"{scope}\"}}"))
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
