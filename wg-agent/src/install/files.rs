//! Files: atomic writes through hidden temporary files, binaries installed
//! by rename, byte comparison, and the sweep of the temporary files a
//! crash left.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::error::io_err;
use super::{Error, Result};

/// Marks this module's temporary files: `.NAME.wgtmp-PID-N`.
const TMP_MARK: &str = ".wgtmp-";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Options(format!("{} has no file name", path.display())))?;
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(
        ".{}{}{}-{}",
        name.to_string_lossy(),
        TMP_MARK,
        std::process::id(),
        n
    );
    Ok(path.with_file_name(tmp))
}

pub(super) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

pub(super) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// (fsync'd, then renamed over `path`, then the directory fsync'd). The
/// file gets `mode` when given, else the mode (and, best effort, the owner)
/// of the file it replaces, else 0644.
pub(super) fn write_atomic_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
    let old = fs::metadata(path).ok();
    let mode = mode
        .or(old.as_ref().map(|m| m.mode() & 0o7777))
        .unwrap_or(0o644);
    let tmp = tmp_path(path)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("creating", &tmp))?;
        f.write_all(bytes).map_err(io_err("writing", &tmp))?;
        // Set explicitly: the umask applied at open would strip bits.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("setting the mode of", &tmp))?;
        if let Some(m) = &old {
            // Keep the owner of a file we replace; only root can, and a
            // failure only means the new file is ours, which is fine.
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err("renaming over", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    fsync_dir(parent_dir(path))
}

/// Replaces `path` with `bytes` atomically: a temporary file in the same
/// directory, named `.NAME.wgtmp-PID-N` (hidden, and an extension no CNI
/// loader reads), fsync'd, given the original file's mode (0644 for a new
/// file), renamed over `path`; then the directory is fsync'd. Readers see
/// the old or the new file, never a part of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(path, bytes, None)
}

/// Installs `src` as `bin_dir/name`, mode 0755, atomically (temporary file
/// in `bin_dir`, fsync, chmod, rename, fsync of the directory), so a
/// runtime never executes a half-written plugin. Skips the write when the
/// target already has identical bytes and mode 0755. Returns whether it
/// changed anything.
///
/// The target itself is never opened for writing, only read (to compare)
/// and then replaced by the rename. That matters for binaries that are
/// running while we upgrade them (a wireguard-go daemon per userspace
/// interface): writing into a running executable fails with "text file
/// busy" (ETXTBSY), or, where the kernel allows it, corrupts the pages of
/// the running processes. After the rename they keep the old inode, and
/// the next start runs the new bytes.
pub fn install_binary(src: &Path, bin_dir: &Path, name: &str) -> Result<bool> {
    let bytes = fs::read(src).map_err(io_err("reading", src))?;
    install_bytes(&bytes, bin_dir, name)
}

/// [`install_binary`] with the bytes already read.
pub(super) fn install_bytes(bytes: &[u8], bin_dir: &Path, name: &str) -> Result<bool> {
    let target = bin_dir.join(name);
    if let Ok(meta) = fs::metadata(&target) {
        if meta.is_file() && meta.mode() & 0o7777 == 0o755 {
            if let Ok(old) = fs::read(&target) {
                if old == bytes {
                    return Ok(false);
                }
            }
        }
    }
    fs::create_dir_all(bin_dir).map_err(io_err("creating", bin_dir))?;
    write_atomic_mode(&target, bytes, Some(0o755))?;
    Ok(true)
}

/// Whether `target` holds the same bytes as `src` (false when `target`
/// does not exist or is not a regular file). Read in chunks: the watch
/// compares the binaries every 30 s without holding copies of them.
pub(super) fn same_bytes(src: &Path, target: &Path) -> Result<bool> {
    use std::io::Read;
    fn fill(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
    let mut t = match File::open(target) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("reading", target)(e)),
    };
    let mut s = File::open(src).map_err(io_err("reading", src))?;
    let tm = t.metadata().map_err(io_err("reading", target))?;
    let sm = s.metadata().map_err(io_err("reading", src))?;
    if !tm.is_file() || tm.len() != sm.len() {
        return Ok(false);
    }
    let (mut a, mut b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fill(&mut s, &mut a).map_err(io_err("reading", src))?;
        let m = fill(&mut t, &mut b).map_err(io_err("reading", target))?;
        if a[..n] != b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Removes this module's temporary files (`.NAME.wgtmp-…`) in `dir` that
/// are older than a minute: what a crash between create and rename leaves.
pub(super) fn sweep_tmp(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with('.') && name.contains(TMP_MARK)) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}
