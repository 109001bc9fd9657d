use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wg_netns::{
    Attachment, Backend, Birthplace, DeviceConfig, IfName, InterfaceSpec, Netns, PrivateKey, Rtnl,
    WgDevice,
};
use wg_oci::{Config, RecordStore};

use crate::{Ctx, Res, CONTAINER_TUNNEL, NODE_UNDERLAY, PEER_ENDPOINT, PEER_TUNNEL, PEER_UNDERLAY};

// ---------------------------------------------------------------------------
// The lab: node and peer namespaces, the veth, the WireGuard peer, the
// directories. Removed on drop.

pub(crate) struct Lab {
    pub(crate) tag: String,
    /// Namespaces created so far (removed on drop).
    pub(crate) ns_names: Vec<String>,
    pub(crate) node: Netns,
    pub(crate) peer: Netns,
    /// The peer's WireGuard interface and where it lives.
    peer_place: Birthplace,
    peer_att: Attachment,
    peer_key: PrivateKey,
    /// `/run/wglc-PID`: rootfs, bundles, libcontainer's state root, records.
    dir: PathBuf,
}

impl Lab {
    pub(crate) fn new() -> Res<Lab> {
        let tag = format!("{}", std::process::id());
        let dir = PathBuf::from(format!("/run/wglc-{tag}"));
        // Partially built labs are cleaned by the guard's Drop.
        let mut guard = LabParts {
            ns_names: Vec::new(),
            dir: dir.clone(),
            armed: true,
        };
        std::fs::create_dir_all(&dir).ctx("creating the work directory")?;
        let (node_name, peer_name) = (format!("wglc-{tag}-node"), format!("wglc-{tag}-peer"));
        let node = Netns::create_named(&node_name).ctx("creating the node namespace")?;
        guard.ns_names.push(node_name);
        let peer = Netns::create_named(&peer_name).ctx("creating the peer namespace")?;
        guard.ns_names.push(peer_name);

        // The underlay: a veth between node and peer.
        let name = |s: &str| IfName::new(s).ctx("interface name");
        let (rn, rp) = (
            Rtnl::open(&node).ctx("rtnl node")?,
            Rtnl::open(&peer).ctx("rtnl peer")?,
        );
        let veth = rn
            .create_veth(&name("wglc-n")?, &name("wglc-p")?, Some(&peer))
            .ctx("creating the veth")?;
        let veth_p = rp.link_by_name(&name("wglc-p")?).ctx("veth peer end")?;
        rn.add_address(veth.index, NODE_UNDERLAY.parse().ctx("address")?)
            .ctx("node address")?;
        rp.add_address(veth_p.index, PEER_UNDERLAY.parse().ctx("address")?)
            .ctx("peer address")?;
        for (r, idx) in [(&rn, veth.index), (&rp, veth_p.index)] {
            r.set_up(idx, true).ctx("veth up")?;
            let lo = r.link_by_name(&name("lo")?).ctx("lo")?;
            r.set_up(lo.index, true).ctx("lo up")?;
        }

        // The peer: wg0 in the peer namespace, listening on 51820. Its peer
        // (the container) is added once the container's key is known.
        let backend = Backend::detect().ctx("choosing a WireGuard backend")?;
        let peer_key = PrivateKey::generate().ctx("generating a key")?;
        let peer_place = Birthplace::new(&peer, &peer, &backend).ctx("peer birthplace")?;
        let birth = name(&format!("wglcp{:x}", std::process::id() % 0xfffff))?;
        let spec = InterfaceSpec::new(birth, name("wg0")?)
            .device(
                DeviceConfig::new()
                    .private_key(peer_key.clone())
                    .listen_port(51820),
            )
            .address(format!("{PEER_TUNNEL}/24").parse().ctx("address")?);
        let peer_att = peer_place.attach(&spec).ctx("the peer's wg0")?;

        // The container image: busybox-static and three applet links.
        let rootfs = dir.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).ctx("rootfs")?;
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .ok_or("no busybox (apt-get install busybox-static)")?;
        std::fs::copy(busybox, rootfs.join("bin/busybox")).ctx("copying busybox")?;
        for applet in ["sh", "ping", "ip", "true"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .ctx("applet link")?;
        }

        let ns_names = std::mem::take(&mut guard.ns_names);
        guard.armed = false;
        Ok(Lab {
            tag,
            ns_names,
            node,
            peer,
            peer_place,
            peer_att,
            peer_key,
            dir,
        })
    }

    /// libcontainer's state root (`--root` of the youki CLI).
    pub(crate) fn state_root(&self) -> PathBuf {
        self.dir.join("youki")
    }

    /// Where wg-oci keeps records (`stateDir`).
    fn record_dir(&self) -> PathBuf {
        self.dir.join("wg-oci")
    }

    pub(crate) fn peer_device(&self) -> Res<WgDevice> {
        self.peer_place
            .device(&self.peer_att)
            .ctx("the peer's device")
    }

    /// The container's configuration: wg-cni's schema. No private key: one
    /// is generated for the container and its public key is in the record.
    pub(crate) fn config(&self, extra: &str) -> Res<Config> {
        let json = format!(
            r#"{{"address": "{CONTAINER_TUNNEL}/24", "stateDir": "{}",
                "peers": [{{"publicKey": "{}", "endpoint": "{PEER_ENDPOINT}",
                            "allowedIPs": ["{PEER_TUNNEL}/32"]}}]{extra}}}"#,
            self.record_dir().display(),
            self.peer_key.public_key().to_base64(),
        );
        Config::parse(json.as_bytes()).ctx("configuration")
    }

    /// Write a bundle whose process runs `script` with busybox `sh`.
    pub(crate) fn bundle(&self, id: &str, script: &str) -> Res<PathBuf> {
        let bundle = self.dir.join("bundles").join(id);
        std::fs::create_dir_all(&bundle).ctx("bundle directory")?;
        let caps = ["CAP_NET_ADMIN", "CAP_NET_RAW"];
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": self.dir.join("rootfs"), "readonly": true},
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["/bin/sh", "-c", script],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "noNewPrivileges": true,
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps}
            },
            "hostname": id,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "nodev"]}
            ],
            "linux": {
                // A cgroup of its own, named after the container.
                "cgroupsPath": format!("/{id}"),
                // A NEW network namespace (no "path"): wg0 will be its only
                // way out. No hooks.
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}
                ]
            }
        });
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec).ctx("config.json")?,
        )
        .ctx("writing config.json")?;
        Ok(bundle)
    }

    /// What is left of container `id` whose interface was born `birth`.
    pub(crate) fn leftovers(&self, id: &str, birth: &str) -> Vec<String> {
        let mut left = Vec::new();
        match Rtnl::open(&self.node).and_then(|r| r.links()) {
            Ok(links) => {
                for l in links {
                    if l.name == birth || l.name.starts_with("wgo") {
                        left.push(format!("link {} in the node", l.name));
                    }
                }
            }
            Err(e) => left.push(format!("cannot list the node's links: {e}")),
        }
        let sock = Path::new(wg_netns::DEFAULT_SOCKET_DIR).join(format!("{birth}.sock"));
        if sock.exists() {
            left.push(format!("socket {}", sock.display()));
        }
        for pid in processes_mentioning(birth) {
            left.push(format!("daemon pid {pid}"));
        }
        match RecordStore::new(self.record_dir()).path(id) {
            Ok(p) if p.exists() => left.push(format!("record {}", p.display())),
            Ok(_) => {}
            Err(e) => left.push(format!("record path: {e}")),
        }
        for cg in cgroup_dirs(id) {
            left.push(format!("cgroup {}", cg.display()));
        }
        let state = self.state_root().join(id);
        if state.exists() {
            left.push(format!("container state {}", state.display()));
        }
        left
    }
}

/// A lab under construction: what `Lab::new` made so far.
struct LabParts {
    ns_names: Vec<String>,
    dir: PathBuf,
    armed: bool,
}

impl Drop for LabParts {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        remove_namespaces(&self.ns_names);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self
            .peer_place
            .detach(&self.peer_att.name, &self.peer_att.birth_name);
        remove_namespaces(&self.ns_names);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Delete every link but `lo` (a userspace daemon born in a namespace keeps
/// it alive until its interface goes), then unpin the namespaces.
fn remove_namespaces(names: &[String]) {
    for name in names {
        if let Ok(rtnl) = Netns::from_name(name).and_then(|ns| Rtnl::open(&ns)) {
            for l in rtnl.links().unwrap_or_default() {
                if l.name != "lo" {
                    let _ = rtnl.delete_link(l.index);
                }
            }
        }
        let _ = Netns::remove_named(name);
    }
}

/// PIDs whose command line mentions `word` (a daemon serving a birth name).
fn processes_mentioning(word: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == word.as_bytes()))
        })
        .collect()
}

/// Cgroup directories named after container `id` (v1 hierarchies and the
/// unified one).
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(id))
        .chain(std::iter::once(Path::new("/sys/fs/cgroup").join(id)))
        .filter(|p| p.is_dir())
        .collect()
}

pub(crate) fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
