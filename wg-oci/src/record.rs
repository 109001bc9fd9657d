//! What an attach leaves for the teardown, and where the hook keeps it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wg_netns::AttachmentRecord;

use crate::error::{Error, Result};

/// Identity of a network namespace (device and inode of its nsfs file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// One container's attachment: wg-netns's [`AttachmentRecord`] (names,
/// namespace path, socket namespace, backend) plus what makes a later
/// teardown safe and useful. Holds no secret. Serialized in camelCase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The container id.
    pub container_id: String,
    /// What wg-netns needs to remove the attachment.
    pub attachment: AttachmentRecord,
    /// The namespace that `attachment.netns` named at attach time. A
    /// `/proc/PID/ns/net` path outlives the container's process, and the
    /// PID may be reused: [`crate::detach`] only enters the path when it
    /// still names this namespace.
    pub netns_id: NetnsId,
    /// The interface's public key (base64), for the peers' configuration.
    pub public_key: String,
    /// Seconds since the epoch when it was attached.
    pub created: u64,
}

/// A container id usable as a file name: 1-1024 characters of
/// `A-Z a-z 0-9 _ + . -`, not starting with `.` (what runc accepts, minus
/// nothing a runtime uses).
pub fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'.' | b'-'))
}

/// A directory of records, one `ID.json` per container (mode 0600, the
/// directory 0700), written atomically (a temporary file renamed).
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
}

impl RecordStore {
    /// The store in `dir` (created, mode 0700, on first save).
    pub fn new(dir: impl Into<PathBuf>) -> RecordStore {
        RecordStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record file of container `id`.
    pub fn path(&self, id: &str) -> Result<PathBuf> {
        if !valid_container_id(id) {
            return Err(Error::ContainerId(id.to_string()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    /// Save (replace) the record of `record.container_id`.
    pub fn save(&self, record: &Record) -> Result<()> {
        let path = self.path(&record.container_id)?;
        let err = |p: &Path, e: std::io::Error| Error::Record {
            path: p.to_path_buf(),
            reason: e.to_string(),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| err(&self.dir, e))?;
        let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let tmp = self.dir.join(format!(
            ".{}.{}.tmp",
            record.container_id,
            std::process::id()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            // No fsync: the rename is atomic, and records describe
            // attachments that do not outlive a reboot (the default
            // directory is on tmpfs); an fsync cost 3 ms per create on ext4.
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(&path, e)
        })
    }

    /// The record of container `id`: `Ok(None)` when there is none, an
    /// error when it cannot be read or decoded.
    pub fn load(&self, id: &str) -> Result<Option<Record>> {
        let path = self.path(id)?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Record {
                    path,
                    reason: format!("corrupt: {e}"),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Record {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Remove the record of container `id` (none is fine).
    pub fn remove(&self, id: &str) -> Result<()> {
        let path = self.path(id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Record {
                path,
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wg_netns::{BackendKind, IfName, SocketNamespace};

    #[test]
    fn ids() {
        for ok in ["a", "abc-DEF_1.2+3", &"x".repeat(1024)] {
            assert!(valid_container_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            &"x".repeat(1025),
        ] {
            assert!(!valid_container_id(bad), "{bad}");
        }
    }

    #[test]
    fn save_load_remove_round_trip() {
        let dir = std::env::temp_dir().join(format!("wgoci-store-{}", std::process::id()));
        let store = RecordStore::new(dir.join("s"));
        let rec = Record {
            container_id: "c1".into(),
            attachment: AttachmentRecord {
                interface: IfName::new("wg0").expect("name"),
                birth_name: IfName::new("wgo0123456789ab").expect("name"),
                netns: "/proc/1/ns/net".into(),
                socket_namespace: SocketNamespace::Host,
                backend: BackendKind::Userspace,
                userspace_implementation: Some("/usr/bin/wireguard-go".into()),
            },
            netns_id: NetnsId {
                dev: 4,
                ino: 4026531840,
            },
            public_key: "k".into(),
            created: 1,
        };
        assert_eq!(store.load("c1").expect("none"), None);
        store.save(&rec).expect("save");
        assert_eq!(store.load("c1").expect("load"), Some(rec.clone()));
        let text = std::fs::read_to_string(store.path("c1").expect("path")).expect("read");
        assert!(
            text.contains("\"containerId\"") && text.contains("\"birthName\""),
            "{text}"
        );
        store.remove("c1").expect("remove");
        store.remove("c1").expect("remove again");
        assert!(store
            .save(&Record {
                container_id: "../x".into(),
                ..rec
            })
            .is_err());
        std::fs::write(dir.join("s/bad.json"), "{").expect("write");
        assert!(store.load("bad").is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
