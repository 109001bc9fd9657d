//! Attachment records under the state directory, and the locks that keep
//! concurrent invocations apart.
//!
//! Layout: `STATE_DIR/lock` (shared by ADD/DEL/CHECK, exclusive for GC),
//! `STATE_DIR/NETWORK/CONTAINERID-IFNAME.json` (one record per attachment)
//! and `...json.lock` beside it (exclusive for the attachment's own ADD, DEL
//! and CHECK). Records hold no secrets: the public key, names, the netns path
//! and the Kubernetes pod identity a node agent needs to reconcile peers.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};
use wg_netns::AttachmentRecord;

use crate::error::{Error, Kind};

/// What one ADD created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Network name.
    pub network: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// What wg-netns needs to find or remove the attachment: interface and
    /// birth names, `CNI_NETNS` at ADD time, socket namespace, backend.
    #[serde(flatten)]
    pub attachment: AttachmentRecord,
    /// The interface's public key (base64).
    pub public_key: String,
    /// Listen port, if configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// Addresses given to the interface.
    pub addresses: Vec<String>,
    /// Kubernetes pod identity from CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID, ...).
    #[serde(default)]
    pub k8s: BTreeMap<String, String>,
    /// Seconds since the epoch when the attachment was made.
    pub created: u64,
}

/// A held `flock`; released on drop.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

/// The two locks of one attachment's verb ([`StateDir::lock_for`]).
#[derive(Debug)]
pub struct AttachmentLocks(#[allow(dead_code)] Lock, #[allow(dead_code)] Lock);

/// Create `dir` (and parents) readable by the owner only.
fn private_dir(dir: &Path) -> Result<(), Error> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("creating {}", dir.display())))
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::new(Kind::Io, "state directory", format!("{what}: {e}"))
}

impl StateDir {
    /// Open (and create, mode 0700) the directory.
    pub fn open(dir: &Path) -> Result<StateDir, Error> {
        private_dir(dir)?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    fn lock_file(&self, path: &Path, exclusive: bool) -> Result<Lock, Error> {
        if let Some(parent) = path.parent() {
            private_dir(parent)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let op = if exclusive {
            FlockOperation::NonBlockingLockExclusive
        } else {
            FlockOperation::NonBlockingLockShared
        };
        let deadline = Instant::now() + LOCK_TIMEOUT;
        let mut delay = Duration::from_millis(1);
        loop {
            match flock(&f, op) {
                Ok(()) => return Ok(Lock(f)),
                Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {}
                Err(e) => return Err(io_err(format!("locking {}", path.display()))(e.into())),
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    Kind::Busy,
                    "state directory is busy",
                    format!(
                        "could not lock {} within {:?}",
                        path.display(),
                        LOCK_TIMEOUT
                    ),
                ));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(20));
        }
    }

    /// The directory-wide lock: shared for ADD/DEL/CHECK, exclusive for GC.
    ///
    /// `flock` has no fairness: with pods churning, shared holders overlap
    /// forever and an exclusive GC would starve (seen in the stress test: one
    /// GC in a 30 s run). So everyone passes a turnstile first, held only
    /// while taking the main lock: a waiting GC holds it, new ADD/DEL queue
    /// behind it, and GC gets in as soon as the current ones finish.
    pub fn lock_all(&self, exclusive: bool) -> Result<Lock, Error> {
        let turnstile = self.lock_file(&self.dir.join("lock.turnstile"), true)?;
        let main = self.lock_file(&self.dir.join("lock"), exclusive);
        drop(turnstile);
        main
    }

    fn record_path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.dir
            .join(network)
            .join(format!("{container_id}-{ifname}.json"))
    }

    /// The lock of one attachment.
    pub fn lock_attachment(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Lock, Error> {
        let mut p = self
            .record_path(network, container_id, ifname)
            .into_os_string();
        p.push(".lock");
        self.lock_file(Path::new(&p), true)
    }

    /// What every verb on one attachment takes, in order: the shared
    /// directory-wide lock, then the attachment's own. Held until dropped.
    pub fn lock_for(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<AttachmentLocks, Error> {
        let all = self.lock_all(false)?;
        let one = self.lock_attachment(network, container_id, ifname)?;
        Ok(AttachmentLocks(all, one))
    }

    /// Write a record atomically (temp file + rename).
    pub fn save(&self, r: &Record) -> Result<(), Error> {
        let path = self.record_path(&r.network, &r.container_id, &r.ifname);
        if let Some(parent) = path.parent() {
            private_dir(parent)?;
        }
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(r)
            .map_err(|e| Error::new(Kind::Io, "state record", e.to_string()))?;
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        f.write_all(&body)
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        f.sync_all()
            .map_err(io_err(format!("syncing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io_err(format!("renaming to {}", path.display())))
    }

    /// Read a record; `None` when there is none (or it is unreadable).
    pub fn load(&self, network: &str, container_id: &str, ifname: &str) -> Option<Record> {
        let body = std::fs::read(self.record_path(network, container_id, ifname)).ok()?;
        serde_json::from_slice(&body).ok()
    }

    /// Remove a record and its lock file. Idempotent.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<(), Error> {
        let path = self.record_path(network, container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("removing {}", path.display()))(e)),
        }
        let mut lock = path.into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
        Ok(())
    }

    /// Every record of `network`.
    pub fn list(&self, network: &str) -> Vec<Record> {
        let Ok(entries) = std::fs::read_dir(self.dir.join(network)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cid: &str) -> Record {
        Record {
            network: "net".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            attachment: AttachmentRecord {
                interface: wg_netns::IfName::new("wg0").unwrap(),
                birth_name: wg_netns::IfName::new("wgc0123456789ab").unwrap(),
                netns: "/var/run/netns/x".into(),
                socket_namespace: wg_netns::SocketNamespace::Host,
                backend: wg_netns::BackendKind::Kernel,
                userspace_implementation: None,
            },
            public_key: "jGGhjGIEbR0Noo8MgjAVh+m5pq4GxD9CZDAl/zsfZF0=".into(),
            listen_port: Some(51820),
            addresses: vec!["10.0.0.2/24".into()],
            k8s: BTreeMap::from([("K8S_POD_NAME".to_string(), "web-0".to_string())]),
            created: 1,
        }
    }

    /// Records written before the types moved into wg-netns still load.
    #[test]
    fn records_of_earlier_releases_load() {
        let old = r#"{"network":"net","containerId":"A","ifname":"eth0","interface":"wg0",
            "birthName":"wgc0123456789ab","netns":"/var/run/netns/x","socketNamespace":"host",
            "backend":"kernel","publicKey":"jGGhjGIEbR0Noo8MgjAVh+m5pq4GxD9CZDAl/zsfZF0=",
            "listenPort":51820,"addresses":["10.0.0.2/24"],"k8s":{"K8S_POD_NAME":"web-0"},"created":1}"#;
        let r: Record = serde_json::from_str(old).unwrap();
        assert_eq!(r, record("A"));
        let again: Record = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn records_round_trip_and_locks_exclude() {
        let dir = std::env::temp_dir().join(format!("wgcni-state-{}", std::process::id()));
        let s = StateDir::open(&dir).unwrap();
        s.save(&record("A")).unwrap();
        s.save(&record("B")).unwrap();
        assert_eq!(s.load("net", "A", "eth0"), Some(record("A")));
        assert_eq!(s.list("net").len(), 2);
        let held = s.lock_attachment("net", "A", "eth0").unwrap();
        // A second exclusive lock on the same attachment would block: check non-blocking.
        let f = File::open(dir.join("net").join("A-eth0.json.lock")).unwrap();
        assert!(flock(&f, FlockOperation::NonBlockingLockExclusive).is_err());
        drop(held);
        assert!(flock(&f, FlockOperation::NonBlockingLockExclusive).is_ok());
        s.remove("net", "A", "eth0").unwrap();
        s.remove("net", "A", "eth0").unwrap();
        assert_eq!(s.list("net").len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
