//! The conf dir: which file is the primary CNI's (`primary_conflist`, the
//! one libcni and containerd load), and keeping our entry in it
//! (`Installer::ensure_chained`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::edit::plugin_type;
use super::error::io_err;
use super::{
    chain, unchain_type, write_atomic, ChainError, Error, Installer, Mode, Result, PLUGIN_TYPE,
};

/// The extensions libcni's loaders read from a conf dir.
const CNI_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

fn has_cni_extension(name: &str) -> Option<&'static str> {
    let ext = Path::new(name).extension()?.to_str()?;
    CNI_EXTENSIONS.into_iter().find(|e| *e == ext)
}

/// Whether a conf dir entry named `name` could be a CNI config we care
/// about (not hidden, a CNI extension).
pub(super) fn is_candidate_name(name: &str) -> bool {
    !name.starts_with('.') && has_cni_extension(name).is_some()
}

/// Whether `bytes` load the way libcni/go-cni load a file with that
/// extension: a `.conflist` needs a string `"name"` and a non-empty
/// `"plugins"` array; a `.conf`/`.json` needs a non-empty string `"type"`.
fn loads_as(ext: &str, bytes: &[u8]) -> bool {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(bytes) else {
        return false;
    };
    if ext == "conflist" {
        obj.get("name").is_some_and(Value::is_string)
            && obj
                .get("plugins")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
    } else {
        obj.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty())
    }
}

/// The file libcni/containerd would load from `conf_dir`: the first, in
/// byte order of the names, of its `*.conf`, `*.conflist` and `*.json`
/// regular files (or symlinks to one) that loads (see the module docs for
/// what "loads" means and the two differences from libcni). Hidden files,
/// and so this module's own temporary files, are ignored. `None` when
/// there is none or the directory cannot be read.
pub fn primary_conflist(conf_dir: &Path) -> Option<PathBuf> {
    let mut names: Vec<String> = fs::read_dir(conf_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_candidate_name(n))
        .collect();
    names.sort();
    names.into_iter().map(|n| conf_dir.join(n)).find(|p| {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        fs::metadata(p).is_ok_and(|m| m.is_file()) && fs::read(p).is_ok_and(|b| loads_as(ext, &b))
    })
}

impl Installer {
    /// Removes our entry from `path` (byte-exact); true when there was one.
    pub(super) fn unchain_file(&self, path: &Path) -> Result<bool> {
        let real = match fs::canonicalize(path) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("resolving", path)(e)),
        };
        let ty = plugin_type(&self.opts.plugin).unwrap_or(PLUGIN_TYPE);
        let bytes = fs::read(&real).map_err(io_err("reading", &real))?;
        match unchain_type(&bytes, ty) {
            Ok(Some(new)) => {
                write_atomic(&real, &new)?;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(source) => Err(Error::Conflist { path: real, source }),
        }
    }

    /// Makes the primary conflist contain our entry again when it was
    /// rewritten without it (or when another file became the primary).
    /// Returns whether it changed anything. In Secondary mode it only
    /// removes an entry an earlier Chain-mode install had put in.
    pub fn ensure_chained(&self) -> Result<bool> {
        let mut state = self.state()?;
        let primary = match self.opts.mode {
            Mode::Chain => primary_conflist(&self.opts.conf_dir),
            Mode::Secondary => None,
        };
        let mut changed = false;
        if let Some(old) = state.conflist.clone() {
            if Some(&old) != primary.as_ref() {
                // Our entry is in a file that is no longer the primary (or
                // we are Secondary now): take it out, it is ours.
                match self.unchain_file(&old) {
                    Ok(c) => changed |= c,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not remove our entry from the former primary conflist")
                    }
                }
                state.conflist = None;
                self.save_state(&state)?;
            }
        }
        let Some(primary) = primary else {
            if self.opts.mode == Mode::Chain {
                tracing::debug!(dir = %self.opts.conf_dir.display(), "no primary CNI config yet");
            }
            return Ok(changed);
        };
        // A symlinked conflist is edited where it points, keeping the link.
        let real = fs::canonicalize(&primary).map_err(io_err("resolving", &primary))?;
        // The primary CNI may rewrite its file at any moment; re-read just
        // before the rename and start over if it changed under us.
        for _ in 0..5 {
            let bytes = fs::read(&real).map_err(io_err("reading", &real))?;
            let new = match chain(&bytes, &self.opts.plugin) {
                Ok(Some(new)) => new,
                Ok(None) => return Ok(changed),
                Err(ChainError::NoPlugins) => return Err(Error::SingleConf { path: primary }),
                Err(source) => {
                    return Err(Error::Conflist {
                        path: primary,
                        source,
                    })
                }
            };
            if state.conflist.as_ref() != Some(&primary) {
                state.conflist = Some(primary.clone());
                self.save_state(&state)?;
            }
            if fs::read(&real).map_err(io_err("reading", &real))? != bytes {
                continue;
            }
            write_atomic(&real, &new)?;
            tracing::info!(path = %primary.display(), "chained wg-cni into the primary CNI config");
            return Ok(true);
        }
        Err(Error::Io {
            op: "chaining (it kept changing)",
            path: primary,
            source: io::Error::other("the file changed during each of 5 attempts"),
        })
    }
}
