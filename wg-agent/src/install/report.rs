//! What `Installer::install` and `Installer::uninstall` did, and the line
//! each logs for a person.

use std::path::PathBuf;

#[cfg(doc)]
use super::Installer;

/// One binary as [`Installer::install`] left it.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryReport {
    /// Where it is.
    pub path: PathBuf,
    /// This call wrote it (false: identical bytes were already there).
    pub written: bool,
    /// The previous, different file was saved there (put back by `uninstall`).
    pub backup: Option<PathBuf>,
}

/// What [`Installer::install`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallReport {
    /// The plugin binary.
    pub binary: BinaryReport,
    /// The userspace WireGuard binary (None: the image ships none, or
    /// `WG_CNI_USERSPACE_SRC=none`).
    pub userspace: Option<BinaryReport>,
    /// The conflist our entry is in (Chain mode; None: no primary conflist
    /// yet, `watch` chains it when one appears).
    pub conflist: Option<PathBuf>,
    /// This call changed a conflist: inserted our entry (Chain mode), or
    /// took out one an earlier Chain-mode install had put in (Secondary).
    pub conflist_changed: bool,
}

/// What [`Installer::uninstall`] did with a binary.
#[derive(Debug, Clone, PartialEq)]
pub enum BinaryUninstall {
    /// We had installed it where there was none: removed.
    Removed,
    /// The bytes that were there before install are back.
    Restored,
    /// Its bytes are not the ones we installed any more (or cannot be
    /// compared: its source is gone from the image): left in place.
    LeftInPlace,
    /// Not ours (none installed, or it was there before us): untouched.
    NotOurs,
}

/// What [`Installer::uninstall`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct UninstallReport {
    /// The conflist our entry was removed from.
    pub unchained: Option<PathBuf>,
    /// What became of the plugin binary.
    pub binary: BinaryUninstall,
    /// What became of the userspace WireGuard binary.
    pub userspace: BinaryUninstall,
}

impl std::fmt::Display for BinaryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let done = if self.written {
            "installed"
        } else {
            "already there"
        };
        write!(f, "{} {done}", self.path.display())?;
        if let Some(b) = &self.backup {
            write!(f, " (the file it replaced is saved as {})", b.display())?;
        }
        Ok(())
    }
}

/// One line for a person: `wg-agent install` logs it.
impl std::fmt::Display for InstallReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin: {}; userspace WireGuard: ", self.binary)?;
        match &self.userspace {
            Some(u) => write!(f, "{u}")?,
            None => write!(f, "none (kernel WireGuard only)")?,
        }
        match (&self.conflist, self.conflist_changed) {
            (Some(c), true) => write!(f, "; chained into {}", c.display()),
            (Some(c), false) => write!(f, "; already chained in {}", c.display()),
            (None, true) => write!(f, "; our entry taken out of the former primary conflist"),
            (None, false) => write!(
                f,
                "; no conflist chained (secondary mode, or no primary conflist yet)"
            ),
        }
    }
}

impl std::fmt::Display for BinaryUninstall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BinaryUninstall::Removed => "removed",
            BinaryUninstall::Restored => "the file it had replaced is back",
            BinaryUninstall::LeftInPlace => "left in place (not the bytes we installed)",
            BinaryUninstall::NotOurs => "not ours, untouched",
        })
    }
}

/// One line for a person: `wg-agent uninstall` logs it.
impl std::fmt::Display for UninstallReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin: {}; userspace WireGuard: {}; ",
            self.binary, self.userspace
        )?;
        match &self.unchained {
            Some(c) => write!(f, "our entry removed from {}", c.display()),
            None => write!(f, "no conflist entry of ours"),
        }
    }
}
