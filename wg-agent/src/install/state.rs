//! The state file: what the installer did (`InstallState`, a
//! `BinaryRecord` for each binary it owns), read and written by the
//! `Installer`.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::io_err;
use super::files::parent_dir;
use super::{write_atomic, Error, Installer, Result};

#[cfg(doc)]
use super::USERSPACE_BINARY;

/// A binary the installer owns (the state file's record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryRecord {
    /// Where it installed it.
    pub path: PathBuf,
    /// The bytes that were there before, saved here, put back by `uninstall`.
    pub backup: Option<PathBuf>,
}

/// What the installer did, as recorded in its state file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstallState {
    /// The plugin binary it installed and owns (None: none, or one it
    /// found already there with the same bytes).
    pub binary: Option<BinaryRecord>,
    /// The conflist it inserted its entry into.
    pub conflist: Option<PathBuf>,
    /// The userspace WireGuard binary ([`USERSPACE_BINARY`]) it installed
    /// and owns, same rules as `binary`. Absent from the state files of
    /// versions before it, hence the default.
    #[serde(default)]
    pub userspace: Option<BinaryRecord>,
}

impl Installer {
    /// The recorded state (the default when there is no state file yet).
    pub fn state(&self) -> Result<InstallState> {
        let path = &self.opts.state_file;
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::State {
                path: path.clone(),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(InstallState::default()),
            Err(e) => Err(io_err("reading", path)(e)),
        }
    }

    pub(super) fn save_state(&self, state: &InstallState) -> Result<()> {
        let path = &self.opts.state_file;
        let dir = parent_dir(path);
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let mut bytes = serde_json::to_vec_pretty(state).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        write_atomic(path, &bytes)
    }
}
