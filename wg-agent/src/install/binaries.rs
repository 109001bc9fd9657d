//! The two binaries the installer manages (the plugin and its userspace
//! WireGuard companion) under the ownership rules of the `install` module
//! docs: installed with their record first, put back when deleted or
//! replaced, and uninstalled (removed, restored, or left in place).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::io_err;
use super::files::{fsync_dir, install_bytes, parent_dir, same_bytes, write_atomic_mode};
use super::{
    BinaryRecord, BinaryReport, BinaryUninstall, InstallState, Installer, Result, USERSPACE_BINARY,
};

/// The binaries the installer manages.
#[derive(Debug, Clone, Copy)]
pub(super) enum Managed {
    /// The CNI plugin (`binary_name`).
    Plugin,
    /// Its userspace WireGuard companion ([`USERSPACE_BINARY`]).
    Userspace,
}

impl Managed {
    /// For logs.
    fn what(self) -> &'static str {
        match self {
            Managed::Plugin => "the plugin binary",
            Managed::Userspace => "the userspace WireGuard binary",
        }
    }

    /// Its record in the state.
    fn record(self, state: &mut InstallState) -> &mut Option<BinaryRecord> {
        match self {
            Managed::Plugin => &mut state.binary,
            Managed::Userspace => &mut state.userspace,
        }
    }
}

impl Installer {
    /// `which`'s file name in the bin dir.
    fn name(&self, which: Managed) -> &str {
        match which {
            Managed::Plugin => &self.opts.binary_name,
            Managed::Userspace => USERSPACE_BINARY,
        }
    }

    /// Where `which` comes from in the image (None: disabled).
    fn src(&self, which: Managed) -> Option<&Path> {
        match which {
            Managed::Plugin => Some(&self.opts.bin_src),
            Managed::Userspace => self.opts.userspace_src.as_deref(),
        }
    }

    fn target(&self, which: Managed) -> PathBuf {
        self.opts.bin_dir.join(self.name(which))
    }

    fn backup_path(&self, which: Managed) -> PathBuf {
        parent_dir(&self.opts.state_file).join(format!("{}.before-install", self.name(which)))
    }

    /// Installs `ours` (the bytes of `which` in the image) into the bin dir
    /// under the ownership rules of the module docs. The record goes into
    /// `state` and the state file before the binary is written: a crash in
    /// between leaves a record of a binary the next run installs, never an
    /// unowned binary.
    pub(super) fn install_owned(
        &self,
        state: &mut InstallState,
        which: Managed,
        ours: &[u8],
    ) -> Result<BinaryReport> {
        let what = which.what();
        let target = self.target(which);
        let recorded = which.record(state).clone();
        let owned = recorded.as_ref().is_some_and(|b| b.path == target);
        let mut backup = None;
        if !owned {
            match fs::read(&target) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    *which.record(state) = Some(BinaryRecord {
                        path: target.clone(),
                        backup: None,
                    });
                }
                Err(e) => return Err(io_err("reading", &target)(e)),
                Ok(theirs) if theirs == ours => {
                    // Already there, not by us: leave it (and its mode) alone.
                    tracing::info!(binary = what, path = %target.display(), "already installed (not by us): leaving it");
                }
                Ok(theirs) => {
                    let b = self.backup_path(which);
                    let mode = fs::metadata(&target).map(|m| m.mode() & 0o7777).ok();
                    fs::create_dir_all(parent_dir(&b))
                        .map_err(io_err("creating", parent_dir(&b)))?;
                    write_atomic_mode(&b, &theirs, mode)?;
                    tracing::info!(binary = what, path = %target.display(), backup = %b.display(),
                        "replacing another file; saved its bytes for uninstall");
                    *which.record(state) = Some(BinaryRecord {
                        path: target.clone(),
                        backup: Some(b.clone()),
                    });
                    backup = Some(b);
                }
            }
        }
        let record = which.record(state).clone();
        let mut written = false;
        if record.as_ref().is_some_and(|b| b.path == target) {
            if record != recorded {
                self.save_state(state)?;
            }
            written = install_bytes(ours, &self.opts.bin_dir, self.name(which))?;
        }
        if written {
            tracing::info!(binary = what, path = %target.display(), "installed");
        }
        Ok(BinaryReport {
            path: target,
            written,
            backup,
        })
    }

    /// The userspace WireGuard binary's bytes in the image; None when
    /// disabled (`WG_CNI_USERSPACE_SRC=none`) or when the image ships none.
    pub(super) fn userspace_bytes(&self) -> Result<Option<Vec<u8>>> {
        let Some(src) = self.src(Managed::Userspace) else {
            tracing::info!("WG_CNI_USERSPACE_SRC=none: installing no userspace WireGuard binary");
            return Ok(None);
        };
        match fs::read(src) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::info!(path = %src.display(),
                    "no userspace WireGuard implementation ships with this image: installing none (kernel WireGuard only)");
                Ok(None)
            }
            Err(e) => Err(io_err("reading", src)(e)),
        }
    }

    /// Puts back a plugin or userspace WireGuard binary that is missing, or
    /// whose bytes (or, when ours, mode) are not the image's: what keeps a
    /// node working when its binary was deleted or replaced while the
    /// agent runs, or before its container restarted (a restart does not
    /// run the init container again). Same rules as
    /// [`install`](Self::install): the record first, a file that was there
    /// before with other bytes saved for uninstall, one with the image's
    /// bytes that is not ours left alone, the new file renamed over the old
    /// one. A userspace binary the image does not ship (kernel-only) or
    /// that is turned off is not looked at. Returns whether it wrote a
    /// binary.
    pub fn ensure_binaries(&self) -> Result<bool> {
        let mut state = self.state()?;
        let mut changed = false;
        for which in [Managed::Plugin, Managed::Userspace] {
            let Some(src) = self.src(which) else { continue };
            if matches!(which, Managed::Userspace) && !src.exists() {
                continue;
            }
            let target = self.target(which);
            if same_bytes(src, &target)? {
                let ours = which
                    .record(&mut state)
                    .as_ref()
                    .is_some_and(|r| r.path == target);
                let mode_ok = fs::metadata(&target).is_ok_and(|m| m.mode() & 0o7777 == 0o755);
                if mode_ok || !ours {
                    continue;
                }
            }
            let bytes = fs::read(src).map_err(io_err("reading", src))?;
            changed |= self.install_owned(&mut state, which, &bytes)?.written;
        }
        Ok(changed)
    }

    /// Undoes [`install_owned`](Self::install_owned) for `which`: removes
    /// the binary we installed, or restores the one it replaced, or leaves
    /// one whose bytes are not ours (any more, or as far as we can tell:
    /// its source is not in this image); then drops the record.
    pub(super) fn uninstall_owned(
        &self,
        state: &mut InstallState,
        which: Managed,
    ) -> Result<BinaryUninstall> {
        let Some(rec) = which.record(state).clone() else {
            return Ok(BinaryUninstall::NotOurs);
        };
        let what = which.what();
        let current = match fs::read(&rec.path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("reading", &rec.path)(e)),
        };
        let ours = self.src(which).and_then(|s| fs::read(s).ok());
        let result = match (&current, &rec.backup) {
            (Some(c), _) if ours.as_ref() != Some(c) => {
                if ours.is_none() {
                    tracing::warn!(binary = what, path = %rec.path.display(),
                        "cannot tell whether it is still the one we installed (its source is not in this image); leaving it");
                } else {
                    tracing::warn!(binary = what, path = %rec.path.display(),
                        "replaced after we installed it; leaving it");
                }
                BinaryUninstall::LeftInPlace
            }
            (_, Some(b)) => {
                let bytes = fs::read(b).map_err(io_err("reading", b))?;
                let mode = fs::metadata(b).map(|m| m.mode() & 0o7777).ok();
                write_atomic_mode(&rec.path, &bytes, mode)?;
                BinaryUninstall::Restored
            }
            (Some(_), None) => {
                fs::remove_file(&rec.path).map_err(io_err("removing", &rec.path))?;
                fsync_dir(parent_dir(&rec.path))?;
                BinaryUninstall::Removed
            }
            (None, None) => BinaryUninstall::Removed,
        };
        if let Some(b) = &rec.backup {
            if result != BinaryUninstall::LeftInPlace {
                let _ = fs::remove_file(b);
            }
        }
        tracing::info!(binary = what, path = %rec.path.display(), result = %result, "uninstalled");
        // Done with it: a retry after a later failure does not redo it.
        *which.record(state) = None;
        self.save_state(state)?;
        Ok(result)
    }
}
