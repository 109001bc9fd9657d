//! `Installer`, and its verbs that run once: `install` and `uninstall`.

use std::fs;
use std::io;

use super::binaries::Managed;
use super::error::io_err;
use super::files::sweep_tmp;
use super::{InstallOptions, InstallReport, Mode, Result, UninstallReport};

/// Installs wg-cni on a node and keeps it chained.
#[derive(Debug, Clone)]
pub struct Installer {
    /// Its options.
    pub opts: InstallOptions,
}

impl Installer {
    /// An installer with `opts`.
    pub fn new(opts: InstallOptions) -> Self {
        Installer { opts }
    }

    /// Installs the plugin binary and its userspace WireGuard companion
    /// (whatever the mode: the plugin needs it in both), then (Chain mode)
    /// chains the primary conflist. Idempotent: a second call writes
    /// nothing.
    pub fn install(&self) -> Result<InstallReport> {
        self.opts.validate()?;
        sweep_tmp(&self.opts.bin_dir);
        sweep_tmp(&self.opts.conf_dir);
        let src = &self.opts.bin_src;
        // Both sources read before anything is written.
        let plugin = fs::read(src).map_err(io_err("reading", src))?;
        let companion = self.userspace_bytes()?;
        let mut state = self.state()?;
        let binary = self.install_owned(&mut state, Managed::Plugin, &plugin)?;
        let userspace = match companion {
            Some(bytes) => Some(self.install_owned(&mut state, Managed::Userspace, &bytes)?),
            None => {
                if let Some(rec) = &state.userspace {
                    // Running interfaces may still use it; uninstall decides.
                    tracing::info!(path = %rec.path.display(),
                        "the userspace WireGuard binary installed earlier stays until uninstall");
                }
                None
            }
        };
        let conflist_changed = self.ensure_chained()?;
        Ok(InstallReport {
            binary,
            userspace,
            conflist: if self.opts.mode == Mode::Chain {
                self.state()?.conflist
            } else {
                None
            },
            conflist_changed,
        })
    }

    /// Undoes what `install` did, and only that (see the module docs):
    /// removes our conflist entry byte-exactly, then removes the plugin
    /// binary and the userspace WireGuard binary we installed or restores
    /// the files they replaced, then the state file.
    pub fn uninstall(&self) -> Result<UninstallReport> {
        let mut state = self.state()?;
        let mut unchained = None;
        if let Some(path) = state.conflist.clone() {
            if self.unchain_file(&path)? {
                unchained = Some(path);
            }
            state.conflist = None;
            self.save_state(&state)?;
        }
        let binary = self.uninstall_owned(&mut state, Managed::Plugin)?;
        let userspace = self.uninstall_owned(&mut state, Managed::Userspace)?;
        match fs::remove_file(&self.opts.state_file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &self.opts.state_file)(e)),
        }
        Ok(UninstallReport {
            unchained,
            binary,
            userspace,
        })
    }
}
