//! The pods' private keys, persisted on the node, readable by root only.
//!
//! One file per pod interface ([`KeyId`]: pod UID + interface name) in a
//! directory only the agent's user can enter (mode 0700, owned by it),
//! each file mode 0600:
//!
//! ```json
//! {"privateKey":"<base64>","generation":"<the pod's rotation annotation>"}
//! ```
//!
//! A key survives agent restarts, so a pod keeps its identity; it changes
//! only when the pod asks (the generation it passes differs from the
//! stored one) or when the pod is gone and its file removed.
//!
//! Writes are atomic (a temporary file, fsync, rename, fsync of the
//! directory): a crash leaves the old key or the new one, never half a
//! file. Buffers holding a private key's text are zeroized
//! ([`zeroize::Zeroizing`]); no error or `Debug` output ever shows key
//! material or a key file's contents.
//!
//! ```
//! use wg_agent::keys::{KeyId, KeyOutcome, KeyStore};
//! # let dir = std::env::temp_dir().join(format!("wg-agent-keys-doc-{}", std::process::id()));
//! let store = KeyStore::open(&dir)?;
//! let id = KeyId::new("0d7a4a4e-7c5b-4b8e-9a4e-2f3c1b6a9d10", "wg0")?;
//! let (key, outcome) = store.get_or_create(&id, "")?;
//! assert_eq!(outcome, KeyOutcome::Created);
//! assert_eq!(store.get_or_create(&id, "")?, (key.clone(), KeyOutcome::Existing));
//! // The pod's rotation annotation changed: a new key.
//! let (rotated, outcome) = store.get_or_create(&id, "2026-01-01")?;
//! assert_eq!(outcome, KeyOutcome::Rotated);
//! assert_ne!(rotated, key);
//! assert_eq!(store.public_key(&id)?, Some(rotated.public_key()));
//! assert_eq!(format!("{rotated:?}"), "PrivateKey(<redacted>)");
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use wg_netns::{PrivateKey, PublicKey};
use zeroize::Zeroizing;

/// The suffix of key files.
pub const KEY_FILE_SUFFIX: &str = ".key";
/// Longest generation (rotation annotation value) stored, in bytes.
pub const MAX_GENERATION_LEN: usize = 1024;
/// Longest pod UID accepted in a [`KeyId`] (UIDs are 36-character UUIDs).
pub const MAX_POD_UID_LEN: usize = 64;
/// Largest key file read, in bytes: a larger file is not a key file.
const MAX_FILE_LEN: u64 = 16 * 1024;
/// Temporary files are `.ID.key.tmp.PID.N`: hidden, never a [`KeyId`].
const TMP_MARK: &str = ".tmp.";

/// What went wrong with the key store. Names the directory or file; never
/// holds key material or a file's contents.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The directory cannot be used: not a directory, a symbolic link,
    /// owned by another user, or accessible by group or others.
    #[error("key directory {}: {reason}", .path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key file cannot be trusted: not a regular file, a symbolic link,
    /// owned by another user, or accessible by group or others.
    #[error("key file {}: {reason}", .path.display())]
    Insecure {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key file is not one this store wrote (its contents are not shown).
    #[error("key file {} is corrupt: {reason}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, without the contents.
        reason: String,
    },
    /// A system call failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// What was being done ("reading", "writing", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A pod UID or interface name cannot make a key id.
    #[error("invalid key id: {0}")]
    InvalidId(String),
    /// The generation is too long to store.
    #[error("key {id}: generation is {len} bytes, more than {MAX_GENERATION_LEN}")]
    GenerationTooLong {
        /// The key.
        id: KeyId,
        /// Its length.
        len: usize,
    },
    /// The system random generator failed.
    #[error("generating key {id}: {source}")]
    Generate {
        /// The key.
        id: KeyId,
        /// The error (never key material).
        #[source]
        source: wg_netns::KeyError,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KeyStoreError + 'a {
    move |source| KeyStoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

// ------------------------------------------------------------------ ids

/// The key of one pod interface: the pod's UID and the interface's name,
/// checked to make a safe file name (one path component, never `.` or
/// `..`, at most 84 bytes).
///
/// ```
/// use wg_agent::keys::KeyId;
/// let id = KeyId::new("0d7a4a4e-7c5b-4b8e-9a4e-2f3c1b6a9d10", "wg0")?;
/// assert_eq!(id.as_str(), "0d7a4a4e-7c5b-4b8e-9a4e-2f3c1b6a9d10_wg0");
/// assert!(KeyId::new("../etc", "wg0").is_err());
/// assert!(KeyId::new("uid", "a/b").is_err());
/// # Ok::<(), wg_agent::keys::KeyStoreError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId {
    /// `UID_IFNAME`: the UID has no `_`, so the first `_` splits them.
    text: String,
    uid_len: usize,
}

impl KeyId {
    /// The id of interface `ifname` of the pod with UID `pod_uid`.
    ///
    /// The UID must be 1 to [`MAX_POD_UID_LEN`] ASCII letters, digits or
    /// `-` (a Kubernetes UID is a UUID). The name must be an interface name
    /// as a network may give it: 1 to 15 printable ASCII characters other
    /// than space, `/` and `:`, and not `.` or `..`.
    pub fn new(pod_uid: &str, ifname: &str) -> Result<KeyId, KeyStoreError> {
        let bad = |what: &str, v: &str, why: &str| {
            KeyStoreError::InvalidId(format!("{what} {v:?} {why}"))
        };
        if pod_uid.is_empty() || pod_uid.len() > MAX_POD_UID_LEN {
            return Err(bad(
                "pod UID",
                pod_uid,
                &format!("is not 1 to {MAX_POD_UID_LEN} bytes"),
            ));
        }
        if !pod_uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "pod UID",
                pod_uid,
                "has characters other than ASCII letters, digits and '-'",
            ));
        }
        if ifname.is_empty() || ifname.len() > wg_netns::ifname::IFNAMSIZ_MAX {
            return Err(bad("interface name", ifname, "is not 1 to 15 bytes"));
        }
        if ifname == "." || ifname == ".." {
            return Err(bad("interface name", ifname, "is reserved"));
        }
        if !ifname
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
        {
            return Err(bad(
                "interface name",
                ifname,
                "has characters other than printable ASCII without space, '/' and ':'",
            ));
        }
        Ok(KeyId {
            text: format!("{pod_uid}_{ifname}"),
            uid_len: pod_uid.len(),
        })
    }

    /// `UID_IFNAME`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The pod's UID.
    pub fn pod_uid(&self) -> &str {
        &self.text[..self.uid_len]
    }

    /// The interface's name.
    pub fn ifname(&self) -> &str {
        &self.text[self.uid_len + 1..]
    }

    fn file_name(&self) -> String {
        format!("{}{KEY_FILE_SUFFIX}", self.text)
    }

    /// The id a key file's name stands for (`None`: not a key file).
    fn from_file_name(name: &str) -> Option<KeyId> {
        let (uid, ifname) = name.strip_suffix(KEY_FILE_SUFFIX)?.split_once('_')?;
        KeyId::new(uid, ifname).ok()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// ---------------------------------------------------------------- store

/// What [`KeyStore::get_or_create`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyOutcome {
    /// The stored key, of the generation asked for.
    Existing,
    /// No key was stored: a new one is.
    Created,
    /// The stored key was of another generation: a new one replaced it.
    Rotated,
}

/// A key file as written.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyFileOut<'a> {
    private_key: &'a str,
    generation: &'a str,
}

/// A key file as read. `PrivateKey` decodes from a zeroizing buffer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyFileIn {
    private_key: PrivateKey,
    generation: String,
}

/// A file's contents for `key` and `generation`, in a buffer that is
/// zeroized on drop and large enough from the start that it never
/// reallocates (a reallocation would leave a copy of the key behind).
fn encode(key: &PrivateKey, generation: &str) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    let b64 = key.to_base64();
    // `{"privateKey":"","generation":""}` and a newline are 34 bytes; JSON
    // escapes a byte of the generation into at most 6.
    let mut buf = Zeroizing::new(Vec::with_capacity(64 + b64.len() + 6 * generation.len()));
    serde_json::to_writer(
        &mut *buf,
        &KeyFileOut {
            private_key: &b64,
            generation,
        },
    )?;
    buf.push(b'\n');
    Ok(buf)
}

/// The directory of the pods' keys: see the [module documentation](self).
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    /// Serializes get-or-create and remove within the process, so two
    /// calls for one key cannot both create and hand out different keys.
    /// (One agent per node uses a store.)
    lock: Mutex<()>,
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The check every directory and file of the store passes: owned by this
/// user, nothing for group or others.
fn owner_only(meta: &fs::Metadata) -> Result<(), String> {
    let me = euid();
    if meta.uid() != me {
        return Err(format!("owned by uid {}, not {me}", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "accessible by group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

fn check_dir(path: &Path, meta: &fs::Metadata) -> Result<(), KeyStoreError> {
    let bad = |reason: String| KeyStoreError::Directory {
        path: path.to_path_buf(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(bad("is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    owner_only(meta).map_err(|r| bad(format!("{r}; it must be mode 700")))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl KeyStore {
    /// Open the store in `dir`, creating it (mode 0700; missing parents
    /// with the default mode) if missing. An existing directory must be
    /// a directory (not a symbolic link) owned by the effective user and
    /// not accessible by group or others: anything else is refused, naming
    /// it. Temporary files left by a crash (which may hold a key) are
    /// removed.
    pub fn open(dir: &Path) -> Result<KeyStore, KeyStoreError> {
        match fs::symlink_metadata(dir) {
            Ok(meta) => check_dir(dir, &meta)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
                }
                match DirBuilder::new().mode(0o700).create(dir) {
                    // Exactly 0700 whatever the umask.
                    Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                        .map_err(io_err("setting the mode of", dir))?,
                    // Made by someone else meanwhile: checked below.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err("creating", dir)(e)),
                }
                let meta = fs::symlink_metadata(dir).map_err(io_err("inspecting", dir))?;
                check_dir(dir, &meta)?;
            }
            Err(e) => return Err(io_err("inspecting", dir)(e)),
        }
        let store = KeyStore {
            dir: dir.to_path_buf(),
            lock: Mutex::new(()),
        };
        store.remove_stale_temporaries()?;
        Ok(store)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &KeyId) -> PathBuf {
        self.dir.join(id.file_name())
    }

    fn remove_stale_temporaries(&self) -> Result<(), KeyStoreError> {
        for entry in fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))? {
            let entry = entry.map_err(io_err("listing", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.contains(TMP_MARK) {
                let path = entry.path();
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("removing", &path)(e)),
                }
            }
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), KeyStoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", &self.dir))
    }

    /// Read `id`'s file: `None` when there is none.
    fn read(&self, id: &KeyId) -> Result<Option<KeyFileIn>, KeyStoreError> {
        let path = self.path(id);
        let insecure = |reason: &str| KeyStoreError::Insecure {
            path: path.clone(),
            reason: reason.to_string(),
        };
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(insecure("is a symbolic link"));
            }
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        let meta = file.metadata().map_err(io_err("inspecting", &path))?;
        if !meta.is_file() {
            return Err(insecure("is not a regular file"));
        }
        owner_only(&meta).map_err(|r| insecure(&r))?;
        if meta.len() > MAX_FILE_LEN {
            return Err(KeyStoreError::Corrupt {
                path,
                reason: format!("{} bytes, too large for a key file", meta.len()),
            });
        }
        // Sized from the start so the buffer holding the key's text does not
        // reallocate (leaving a copy) unless the file grows meanwhile.
        let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut buf)
            .map_err(io_err("reading", &path))?;
        if buf.len() as u64 > MAX_FILE_LEN {
            return Err(KeyStoreError::Corrupt {
                path,
                reason: "too large for a key file".into(),
            });
        }
        serde_json::from_slice(&buf).map(Some).map_err(|e| {
            // serde's messages can quote the offending value: only the
            // kind of error and its position are shown.
            let kind = match e.classify() {
                serde_json::error::Category::Io => "read",
                serde_json::error::Category::Syntax => "syntax",
                serde_json::error::Category::Data => "content",
                serde_json::error::Category::Eof => "truncation",
            };
            KeyStoreError::Corrupt {
                path,
                reason: format!(
                    "not {{\"privateKey\": base64 key, \"generation\": string}} ({kind} error at line {} column {})",
                    e.line(),
                    e.column()
                ),
            }
        })
    }

    /// Write `id`'s file atomically: a temporary file (0600, fsynced)
    /// renamed over it, then the directory fsynced.
    fn write(&self, id: &KeyId, key: &PrivateKey, generation: &str) -> Result<(), KeyStoreError> {
        let path = self.path(id);
        let tmp = self.dir.join(format!(
            ".{}{TMP_MARK}{}.{}",
            id.file_name(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let body = encode(key, generation).map_err(|e| KeyStoreError::Io {
            op: "encoding",
            path: path.clone(),
            // Only the kind: a message could quote the data.
            source: io::Error::other(format!("JSON {:?} error", e.classify())),
        })?;
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&tmp)?;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(&body)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("writing", &tmp)(e));
        }
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("renaming a new key file to", &path)(e));
        }
        self.sync_dir()
    }

    /// The private key of `id`, of `generation` (the pod's rotation
    /// annotation value, `""` when it has none):
    ///
    /// - stored with that generation: [`KeyOutcome::Existing`];
    /// - stored with another: a new key replaces it, [`KeyOutcome::Rotated`]
    ///   (rotation happens when the pod's annotation changes, removal
    ///   included);
    /// - not stored: a new key, [`KeyOutcome::Created`].
    ///
    /// A corrupt or insecure file is an error, not silently replaced: the
    /// caller decides (removing it and asking again gives a new key).
    pub fn get_or_create(
        &self,
        id: &KeyId,
        generation: &str,
    ) -> Result<(PrivateKey, KeyOutcome), KeyStoreError> {
        if generation.len() > MAX_GENERATION_LEN {
            return Err(KeyStoreError::GenerationTooLong {
                id: id.clone(),
                len: generation.len(),
            });
        }
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = match self.read(id)? {
            Some(stored) if stored.generation == generation => {
                return Ok((stored.private_key, KeyOutcome::Existing));
            }
            Some(_) => KeyOutcome::Rotated,
            None => KeyOutcome::Created,
        };
        let key = PrivateKey::generate().map_err(|source| KeyStoreError::Generate {
            id: id.clone(),
            source,
        })?;
        self.write(id, &key, generation)?;
        Ok((key, outcome))
    }

    /// The public key of `id`'s stored key (`None`: none stored). The
    /// private key is read and dropped (zeroized) at once.
    pub fn public_key(&self, id: &KeyId) -> Result<Option<PublicKey>, KeyStoreError> {
        Ok(self.read(id)?.map(|stored| stored.private_key.public_key()))
    }

    /// Remove `id`'s key (a pod that is gone). Returns whether there was
    /// one; a missing key is not an error.
    pub fn remove(&self, id: &KeyId) -> Result<bool, KeyStoreError> {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => {
                self.sync_dir()?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// The ids of the stored keys, sorted (to remove those of pods that are
    /// gone). Temporary files and anything else that is not a key file's
    /// name are skipped.
    pub fn list(&self) -> Result<Vec<KeyId>, KeyStoreError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))? {
            let entry = entry.map_err(io_err("listing", &self.dir))?;
            if let Some(id) = entry.file_name().to_str().and_then(KeyId::from_file_name) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests;
