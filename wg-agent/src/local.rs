//! The node's own record of each pod interface it made: enough to find the
//! device again after an agent restart (the pod's namespace path, wg-netns's
//! [`AttachmentRecord`]) and to give back what it holds (addresses, port).
//! No secret: the key lives in the key store.
//!
//! One JSON file per interface in `STATE_DIR/attachments/`, written
//! atomically (temp file, fsync, rename), readable by root only.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wg_netns::{AttachmentRecord, IpNetwork, PublicKey};

/// The identity of a pod interface on the node: `POD_UID.INTERFACE`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key(String);

impl Key {
    /// The key of `interface` in the pod with `uid`. UIDs and interface
    /// names never hold `/`; anything else is refused.
    pub fn new(uid: &str, interface: &str) -> Option<Key> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        };
        (ok(uid) && ok(interface)).then(|| Key(format!("{uid}.{interface}")))
    }

    /// As a string (also the file stem).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pod UID part.
    pub fn pod_uid(&self) -> &str {
        self.0.split('.').next().unwrap_or_default()
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One pod interface as the agent made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalRecord {
    /// The network.
    pub network: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID.
    pub pod_uid: String,
    /// The runtime's container (sandbox) id.
    pub container_id: String,
    /// `CNI_IFNAME` of the chain that asked.
    pub cni_ifname: String,
    /// The addresses given (with the pool's prefix length).
    pub addresses: Vec<IpNetwork>,
    /// The UDP port of its socket.
    pub listen_port: u16,
    /// The interface's public key (the private key is in the key store).
    pub public_key: PublicKey,
    /// The key's rotation generation (the pod's annotation value).
    #[serde(default)]
    pub key_generation: String,
    /// Where the device is (wg-netns's record).
    pub attachment: AttachmentRecord,
    /// When it was made, seconds since the epoch.
    pub created: u64,
}

impl LocalRecord {
    /// Its key.
    pub fn key(&self) -> Option<Key> {
        Key::new(&self.pod_uid, self.attachment.interface.as_str())
    }
}

/// An I/O failure on the records, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct RecordError {
    /// What was done.
    pub op: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Why it failed.
    #[source]
    pub source: std::io::Error,
}

/// The directory of records.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// Open (create, 0700) `dir`.
    pub fn open(dir: &Path) -> Result<Records, RecordError> {
        let err = |op, source| RecordError {
            op,
            path: dir.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err("creating", e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| err("restricting", e))?;
        Ok(Records {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Save (replace) a record.
    pub fn save(&self, r: &LocalRecord) -> Result<(), RecordError> {
        let key = r.key().ok_or_else(|| RecordError {
            op: "naming",
            path: self.dir.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad pod UID"),
        })?;
        let path = self.path(&key);
        let tmp = self.dir.join(format!(".{key}.tmp"));
        let err = |op, source| RecordError {
            op,
            path: path.clone(),
            source,
        };
        let body =
            serde_json::to_vec_pretty(r).map_err(|e| err("encoding", std::io::Error::other(e)))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err("writing", e))?;
        f.write_all(&body)
            .and_then(|_| f.sync_all())
            .map_err(|e| err("writing", e))?;
        fs::rename(&tmp, &path).map_err(|e| err("renaming", e))?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Remove a record; a missing one is fine.
    pub fn remove(&self, key: &Key) -> Result<(), RecordError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError {
                op: "removing",
                path,
                source,
            }),
        }
    }

    /// Every readable record, and the files that could not be read (named
    /// so they can be reported; they are left in place).
    pub fn load_all(&self) -> (Vec<LocalRecord>, Vec<RecordError>) {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return (ok, bad);
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            match fs::read(&path).map_err(|e| ("reading", e)).and_then(|b| {
                serde_json::from_slice::<LocalRecord>(&b)
                    .map_err(|e| ("decoding", std::io::Error::other(e)))
            }) {
                Ok(r) => ok.push(r),
                Err((op, source)) => bad.push(RecordError { op, path, source }),
            }
        }
        ok.sort_by_key(|r| r.created);
        (ok, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wg_netns::{BackendKind, IfName, PrivateKey, SocketNamespace};

    fn record(uid: &str) -> LocalRecord {
        LocalRecord {
            network: "pods".into(),
            namespace: "default".into(),
            pod: "web".into(),
            pod_uid: uid.into(),
            container_id: "c1".into(),
            cni_ifname: "eth0".into(),
            addresses: vec!["10.77.0.2/16".parse().unwrap()],
            listen_port: 51820,
            public_key: PrivateKey::generate().unwrap().public_key(),
            key_generation: String::new(),
            attachment: AttachmentRecord {
                interface: IfName::new("wg0").unwrap(),
                birth_name: IfName::new("wga0123456789ab").unwrap(),
                netns: "/var/run/netns/x".into(),
                socket_namespace: SocketNamespace::Host,
                backend: BackendKind::Userspace,
                userspace_implementation: None,
            },
            created: 1,
        }
    }

    #[test]
    fn keys_refuse_paths() {
        assert_eq!(Key::new("u-1", "wg0").unwrap().as_str(), "u-1.wg0");
        assert_eq!(Key::new("u-1", "wg0").unwrap().pod_uid(), "u-1");
        assert!(Key::new("../x", "wg0").is_none());
        assert!(Key::new("u", "a/b").is_none());
        assert!(Key::new("", "wg0").is_none());
    }

    #[test]
    fn save_load_remove() {
        let dir = std::env::temp_dir().join(format!("wg-agent-records-{}", std::process::id()));
        let recs = Records::open(&dir).unwrap();
        let r = record("uid-1");
        recs.save(&r).unwrap();
        fs::write(dir.join("broken.json"), b"{").unwrap();
        let (ok, bad) = recs.load_all();
        assert_eq!(ok, vec![r.clone()]);
        assert_eq!(bad.len(), 1);
        let mode = fs::metadata(dir.join("uid-1.wg0.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        recs.remove(&r.key().unwrap()).unwrap();
        recs.remove(&r.key().unwrap()).unwrap();
        assert!(recs.load_all().0.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
