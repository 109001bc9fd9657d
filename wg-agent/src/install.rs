//! The CNI installer: puts the wg-cni binary, and the userspace WireGuard
//! implementation it starts on nodes without kernel WireGuard, into the
//! node's CNI bin dir and chains wg-cni into the primary CNI's conflist,
//! then keeps it chained.
//!
//! Runs as the DaemonSet's first step (`Installer::install`), then watches
//! the conf dir and the bin dir (`Installer::watch`): a primary CNI that
//! rewrites its file (flannel does at every restart) gets wg-cni
//! re-inserted within about a second, and a binary deleted or replaced is
//! put back, also at the start of a restarted container (which runs no init
//! container). Synchronous, no Kubernetes: the agent runs `watch` on a
//! thread. Whether the agent's stop is an uninstall is [`removal`]'s
//! question (the one part that talks to the apiserver).
//!
//! # Text-preserving edits
//!
//! The conflist belongs to the primary CNI. We never re-serialize it: the
//! document is parsed (serde_json) only to validate it and to see whether
//! wg-cni is already there; a small JSON-aware scanner then finds the
//! top-level `"plugins"` array and our entry is spliced in after its last
//! element (`,` + the whitespace that precedes the last element + our
//! entry, indented like its neighbours). Everything else stays byte for
//! byte, and [`unchain`] removes exactly that span again. Both check their
//! own output by parsing it and comparing it with the expected document,
//! so a scanner bug can only ever produce an error, never a broken file.
//!
//! # Which file
//!
//! [`primary_conflist`] mirrors libcni's `ConfFiles` + containerd's go-cni
//! `loadFromConfDir`: the regular files (or symlinks to them) of the conf
//! dir whose extension is `.conf`, `.conflist` or `.json`, sorted by name,
//! first loadable one wins. Two deliberate differences: a file that does
//! not load is skipped (CRI-O skips it; containerd 2.x instead refuses the
//! whole directory, so there the file we chain is still the one it would
//! use once the broken file is fixed or gone), and hidden files (`.name`)
//! are skipped. libcni does NOT skip hidden files: it filters on the
//! extension alone, and `.` sorts before digits, so a hidden `x.conflist`
//! would be the one it loads. That is why every temporary file this module
//! writes is named `.NAME.wgtmp-PID-N`: hidden, and with an extension
//! (`.wgtmp-PID-N`) no CNI loader reads, even for a moment.
//!
//! # `.conf` files: refused
//!
//! A single-plugin `.conf` (or `.json`) has no plugin list to splice into.
//! Converting it cannot be byte-preserving, and a wrapping `.conflist`
//! beside it does not help: `NAME.conf` sorts before `NAME.conflist`, so
//! the original would have to be moved out of the way, and a primary CNI
//! that checks or rewrites its own file would then fight the installer for
//! ever. So chaining into a `.conf` is refused with [`Error::SingleConf`],
//! which names the file and the two ways out (have the primary CNI write a
//! conflist, or run wg-cni as a secondary network, `WG_CNI_MODE=secondary`).
//! Every primary CNI we know of in current use (flannel, Calico, Cilium,
//! kindnet, the AWS VPC CNI, k3s's flannel) writes a `.conflist`.
//!
//! # The userspace WireGuard binary
//!
//! wg-cni runs userspace WireGuard (wireguard-go) daemons on the host, so
//! the image's wireguard-go (`WG_CNI_USERSPACE_SRC`, default
//! `/opt/wg/bin/wireguard-go`) is installed next to the plugin as
//! [`USERSPACE_BINARY`] (`wg-cni-wireguard-go`, mode 0755), in Chain and
//! Secondary mode alike. A source that does not exist means a kernel-only
//! image: logged, nothing installed, not an error; `none` turns it off.
//! It follows the plugin binary's ownership rules below, with a record of
//! its own in the state file.
//!
//! Both binaries are replaced by renaming a new file over them, never by
//! writing into them ([`install_binary`]): the daemons started from the
//! old file keep running it through an upgrade, with no "text file busy"
//! and no torn pages.
//!
//! # State and ownership
//!
//! What the installer did is recorded in a small JSON state file kept OUT
//! of the conf dir (default `/var/lib/wg-agent/install.json`): the conflist
//! it inserted its entry into, and the binaries it installed (the plugin,
//! `binary`; the userspace WireGuard one, `userspace`, absent from the
//! state files of earlier versions and then read as none). Each binary is
//! recorded before it is written. `uninstall` undoes only that:
//! - the conflist: our entry is removed byte-exactly (the file is left as
//!   it was before `install` when nobody else changed it meanwhile). An
//!   entry that was already there before we came (someone chained wg-cni
//!   by hand, static mode) is not ours and stays.
//! - each binary: when the target did not exist, `uninstall` removes it;
//!   when it existed with identical bytes, it was not ours and stays; when
//!   it existed with other bytes (an older wg-cni installed by hand, say),
//!   those bytes are first saved beside the state file
//!   (`<state dir>/<name>.before-install`) and `uninstall` puts them back.
//!   A binary whose bytes are not ours at uninstall time (someone replaced
//!   it after us, or its source is no longer in the image, so that the
//!   bytes cannot be compared) is left in place.
//!
//! Ownership survives upgrades: a new agent version finds the state file,
//! knows the binaries at the target paths are its own, and overwrites them
//! without taking a backup of the old version. An image that no longer
//! ships (or is told not to install) the userspace binary leaves one
//! installed earlier where it is, recorded, until `uninstall`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The plugin type (and binary name) the installer chains by default.
pub const PLUGIN_TYPE: &str = "wg-cni";

/// The name, in the CNI bin dir, of the userspace WireGuard implementation
/// (wireguard-go) the installer puts next to the plugin: wg-cni starts it
/// on the host for nodes without kernel WireGuard. A name of our own, so
/// it never collides with a `wireguard-go` someone else installed there.
/// The plugin looks for it under the same name
/// ([`wg_cni::managed::USERSPACE_PROGRAM`]).
pub const USERSPACE_BINARY: &str = wg_cni::managed::USERSPACE_PROGRAM;

/// The extensions libcni's loaders read from a conf dir.
const CNI_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// Marks this module's temporary files: `.NAME.wgtmp-PID-N`.
const TMP_MARK: &str = ".wgtmp-";

/// Errors of the text-level edits ([`chain`], [`unchain`]).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The file is not JSON.
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The document is not an object.
    #[error("the top level is not a JSON object")]
    NotAnObject,
    /// A single-plugin configuration.
    #[error("no \"plugins\" array: a single-plugin config (.conf), not a conflist")]
    NoPlugins,
    /// `plugins` is something else than a list.
    #[error("\"plugins\" is not an array")]
    PluginsNotArray,
    /// The entry to insert is not a plugin object.
    #[error("the plugin entry must be a JSON object with a string \"type\"")]
    BadPlugin,
    /// The scanner and the parser disagree, or the spliced text did not
    /// parse back to the expected document. Never expected; reported
    /// rather than writing a file we are not sure of.
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// The installer's errors; each one that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A conflist could not be edited.
    #[error("{path}: {source}")]
    Conflist {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ChainError,
    },
    /// The primary configuration is a single-plugin `.conf`.
    #[error(
        "{path} is a single-plugin CNI config, not a .conflist: wg-cni can only be chained into a \
         plugin list. Have the primary CNI write a .conflist, or run wg-cni as a secondary network \
         (WG_CNI_MODE=secondary)"
    )]
    SingleConf {
        /// The file.
        path: PathBuf,
    },
    /// The installer's state file is unreadable.
    #[error("state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A setting is invalid.
    #[error("{var}: {msg}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The options contradict each other.
    #[error("invalid options: {0}")]
    Options(String),
}

/// The installer's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------
// The JSON-aware scanner: byte spans, no allocation of the document.

/// Where the top-level `"plugins"` array is: `open` is the index of its
/// `[`, `elems` the `[start, end)` span of each element.
#[derive(Debug)]
struct PluginsArray {
    open: usize,
    elems: Vec<(usize, usize)>,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

fn expect(b: &[u8], i: usize, c: u8) -> Result<(), ChainError> {
    if b.get(i) == Some(&c) {
        Ok(())
    } else {
        Err(ChainError::Internal("unexpected byte while scanning"))
    }
}

/// `b[i]` is `"`: the index just past the closing quote.
fn string_end(b: &[u8], i: usize) -> Result<usize, ChainError> {
    expect(b, i, b'"')?;
    let mut i = i + 1;
    loop {
        match b.get(i) {
            None => return Err(ChainError::Internal("unterminated string")),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => i += 2,
            Some(_) => i += 1,
        }
    }
}

/// The index just past the JSON value starting at `b[i]`.
fn value_end(b: &[u8], i: usize) -> Result<usize, ChainError> {
    match b.get(i) {
        None => Err(ChainError::Internal("value expected")),
        Some(b'"') => string_end(b, i),
        Some(b'{') | Some(b'[') => {
            let mut depth = 0usize;
            let mut i = i;
            loop {
                match b.get(i) {
                    None => return Err(ChainError::Internal("unterminated container")),
                    Some(b'"') => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    Some(b'{') | Some(b'[') => depth += 1,
                    Some(b'}') | Some(b']') => {
                        depth = depth
                            .checked_sub(1)
                            .ok_or(ChainError::Internal("unbalanced brackets"))?;
                        if depth == 0 {
                            return Ok(i + 1);
                        }
                    }
                    Some(_) => {}
                }
                i += 1;
            }
        }
        Some(_) => {
            let mut i = i;
            while i < b.len() && !is_ws(b[i]) && !matches!(b[i], b',' | b'}' | b']') {
                i += 1;
            }
            Ok(i)
        }
    }
}

/// Finds the top-level `"plugins"` array (the last one, as both serde_json
/// and Go's encoding/json keep the last of duplicate keys). `Ok(None)`
/// when there is no such key or its value is not an array.
fn scan_plugins(b: &[u8]) -> Result<Option<PluginsArray>, ChainError> {
    let mut i = skip_ws(b, 0);
    expect(b, i, b'{')?;
    i = skip_ws(b, i + 1);
    let mut found = None;
    if b.get(i) == Some(&b'}') {
        return Ok(None);
    }
    loop {
        let key_end = string_end(b, i)?;
        let key: String = serde_json::from_slice(&b[i..key_end])?;
        i = skip_ws(b, key_end);
        expect(b, i, b':')?;
        i = skip_ws(b, i + 1);
        let v_end = value_end(b, i)?;
        if key == "plugins" {
            found = if b[i] == b'[' {
                Some(array_elems(b, i)?)
            } else {
                None
            };
        }
        i = skip_ws(b, v_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(found),
            _ => return Err(ChainError::Internal("object: , or } expected")),
        }
    }
}

fn array_elems(b: &[u8], open: usize) -> Result<PluginsArray, ChainError> {
    expect(b, open, b'[')?;
    let mut elems = Vec::new();
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&b']') {
        return Ok(PluginsArray { open, elems });
    }
    loop {
        let end = value_end(b, i)?;
        elems.push((i, end));
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return Ok(PluginsArray { open, elems }),
            _ => return Err(ChainError::Internal("array: , or ] expected")),
        }
    }
}

/// The whitespace right before byte `start`.
fn leading_ws(b: &[u8], start: usize) -> &[u8] {
    let mut j = start;
    while j > 0 && is_ws(b[j - 1]) {
        j -= 1;
    }
    &b[j..start]
}

/// The plugin entry as text, laid out like the element it follows: on one
/// line when that element is on one line; else pretty-printed with that
/// element's indentation unit, each continuation line indented like it.
fn render_plugin(b: &[u8], last: (usize, usize), plugin: &Value) -> Result<String, ChainError> {
    let elem = &b[last.0..last.1];
    let before = leading_ws(b, last.0);
    let indent: &[u8] = match before.iter().rposition(|&c| c == b'\n') {
        Some(n) => &before[n + 1..],
        None => b"",
    };
    // The element's second line: its leading whitespace, less the
    // element's own indentation, is one indentation unit.
    let unit = elem.iter().position(|&c| c == b'\n').and_then(|n| {
        let rest = &elem[n + 1..];
        let ws_len = rest
            .iter()
            .take_while(|&&c| c == b' ' || c == b'\t')
            .count();
        let line_ws = &rest[..ws_len];
        line_ws.strip_prefix(indent).filter(|u| !u.is_empty())
    });
    let Some(unit) = unit else {
        return Ok(serde_json::to_string(plugin)?);
    };
    let newline = if elem.windows(2).any(|w| w == b"\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(unit);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    plugin.serialize(&mut ser)?;
    let pretty =
        String::from_utf8(out).map_err(|_| ChainError::Internal("serializer wrote non-UTF-8"))?;
    let indent = std::str::from_utf8(indent).map_err(|_| ChainError::Internal("indentation"))?;
    let mut text = String::new();
    for (n, line) in pretty.split('\n').enumerate() {
        if n > 0 {
            text.push_str(newline);
            text.push_str(indent);
        }
        text.push_str(line);
    }
    Ok(text)
}

fn plugin_type(plugin: &Value) -> Result<&str, ChainError> {
    plugin
        .as_object()
        .and_then(|o| o.get("type"))
        .and_then(Value::as_str)
        .ok_or(ChainError::BadPlugin)
}

fn has_type(entry: &Value, ty: &str) -> bool {
    entry.get("type").and_then(Value::as_str) == Some(ty)
}

/// The document's top-level object and its `"plugins"` array, validated.
fn parse_conflist(conflist: &[u8]) -> Result<(Value, Vec<Value>), ChainError> {
    let doc: Value = serde_json::from_slice(conflist)?;
    let obj = doc.as_object().ok_or(ChainError::NotAnObject)?;
    let plugins = match obj.get("plugins") {
        None => return Err(ChainError::NoPlugins),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(ChainError::PluginsNotArray),
    };
    Ok((doc, plugins))
}

/// `doc` with its `"plugins"` replaced by `plugins`: what an edit must parse to.
fn with_plugins(mut doc: Value, plugins: Vec<Value>) -> Value {
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("plugins".into(), Value::Array(plugins));
    }
    doc
}

fn check_parses_to(text: &[u8], expected: &Value) -> Result<(), ChainError> {
    let got: Value = serde_json::from_slice(text)
        .map_err(|_| ChainError::Internal("the edited text does not parse"))?;
    if &got != expected {
        return Err(ChainError::Internal(
            "the edited text parses to another document",
        ));
    }
    Ok(())
}

/// Inserts `plugin` as the last element of the conflist's top-level
/// `"plugins"` array, leaving every other byte as it was. `Ok(None)` when an
/// entry of the same `"type"` is already in the list (idempotent).
///
/// A `.conf`-shaped document (no `"plugins"`) is [`ChainError::NoPlugins`].
pub fn chain(conflist: &[u8], plugin: &Value) -> Result<Option<Vec<u8>>, ChainError> {
    let ty = plugin_type(plugin)?;
    let (doc, mut plugins) = parse_conflist(conflist)?;
    if plugins.iter().any(|p| has_type(p, ty)) {
        return Ok(None);
    }
    let arr = scan_plugins(conflist)?.ok_or(ChainError::Internal("plugins array not found"))?;
    if arr.elems.len() != plugins.len() {
        return Err(ChainError::Internal(
            "scanner and parser disagree on the plugins",
        ));
    }
    let (at, insert) = match arr.elems.last() {
        None => (arr.open + 1, serde_json::to_string(plugin)?.into_bytes()),
        Some(&(start, end)) => {
            let mut ins = b",".to_vec();
            ins.extend_from_slice(leading_ws(conflist, start));
            ins.extend_from_slice(render_plugin(conflist, (start, end), plugin)?.as_bytes());
            (end, ins)
        }
    };
    let mut out = Vec::with_capacity(conflist.len() + insert.len());
    out.extend_from_slice(&conflist[..at]);
    out.extend_from_slice(&insert);
    out.extend_from_slice(&conflist[at..]);
    plugins.push(plugin.clone());
    check_parses_to(&out, &with_plugins(doc, plugins))?;
    Ok(Some(out))
}

/// Removes every wg-cni entry (`"type": "wg-cni"`) from the top-level
/// `"plugins"` array: the inverse of [`chain`], byte for byte
/// (`unchain(chain(x)) == x`). `Ok(None)` when there is none.
pub fn unchain(conflist: &[u8]) -> Result<Option<Vec<u8>>, ChainError> {
    unchain_type(conflist, PLUGIN_TYPE)
}

/// [`unchain`] for entries of type `ty`.
pub fn unchain_type(conflist: &[u8], ty: &str) -> Result<Option<Vec<u8>>, ChainError> {
    let (doc, plugins) = parse_conflist(conflist)?;
    if !plugins.iter().any(|p| has_type(p, ty)) {
        return Ok(None);
    }
    let mut text = conflist.to_vec();
    // One entry at a time, last first; rescanning after each cut.
    loop {
        let arr = scan_plugins(&text)?.ok_or(ChainError::Internal("plugins array not found"))?;
        let mut ours = None;
        for (n, &(s, e)) in arr.elems.iter().enumerate() {
            let v: Value = serde_json::from_slice(&text[s..e])?;
            if has_type(&v, ty) {
                ours = Some(n);
            }
        }
        let Some(n) = ours else { break };
        // What chain inserted after element n-1 is `,` + whitespace + entry:
        // cut from the end of the previous element to the end of ours. A
        // first element goes with the separator that follows it.
        let (cut_from, cut_to) = if n > 0 {
            (arr.elems[n - 1].1, arr.elems[n].1)
        } else if let Some(next) = arr.elems.get(1) {
            (arr.elems[0].0, next.0)
        } else {
            (arr.elems[0].0, arr.elems[0].1)
        };
        text.drain(cut_from..cut_to);
    }
    let kept = plugins.into_iter().filter(|p| !has_type(p, ty)).collect();
    check_parses_to(&text, &with_plugins(doc, kept))?;
    Ok(Some(text))
}

// ---------------------------------------------------------------------------
// Files.

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

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// (fsync'd, then renamed over `path`, then the directory fsync'd). The
/// file gets `mode` when given, else the mode (and, best effort, the owner)
/// of the file it replaces, else 0644.
fn write_atomic_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<()> {
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
fn install_bytes(bytes: &[u8], bin_dir: &Path, name: &str) -> Result<bool> {
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
fn same_bytes(src: &Path, target: &Path) -> Result<bool> {
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

fn has_cni_extension(name: &str) -> Option<&'static str> {
    let ext = Path::new(name).extension()?.to_str()?;
    CNI_EXTENSIONS.into_iter().find(|e| *e == ext)
}

/// Whether a conf dir entry named `name` could be a CNI config we care
/// about (not hidden, a CNI extension).
fn is_candidate_name(name: &str) -> bool {
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

/// Removes this module's temporary files (`.NAME.wgtmp-…`) in `dir` that
/// are older than a minute: what a crash between create and rename leaves.
fn sweep_tmp(dir: &Path) {
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

// ---------------------------------------------------------------------------
// The installer.

/// How wg-cni is wired into the node's CNI configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Chained after the primary CNI's plugins, in its conflist.
    Chain,
    /// Binary only: wg-cni is a secondary network (a Multus
    /// NetworkAttachmentDefinition, say); no conflist is touched.
    Secondary,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chain" => Ok(Mode::Chain),
            "secondary" => Ok(Mode::Secondary),
            other => Err(format!("{other:?}: expected chain or secondary")),
        }
    }
}

/// What the installer installs and where.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallOptions {
    /// The plugin binary in the image (WG_CNI_BIN_SRC, /opt/wg/bin/wg-cni).
    pub bin_src: PathBuf,
    /// The host's CNI bin dir (WG_CNI_BIN_DIR, /host/opt/cni/bin).
    pub bin_dir: PathBuf,
    /// The host's CNI conf dir (WG_CNI_CONF_DIR, /host/etc/cni/net.d).
    pub conf_dir: PathBuf,
    /// WG_CNI_MODE: `chain` (default) or `secondary`.
    pub mode: Mode,
    /// The conflist entry (WG_CNI_PLUGIN, `{"type":"wg-cni","managed":true}`),
    /// with the pod annotations capability declared
    /// ([`declare_pod_annotations`]). Its `"type"` must equal `binary_name`:
    /// that is how libcni finds the binary.
    pub plugin: Value,
    /// The binary's name in `bin_dir` ("wg-cni").
    pub binary_name: String,
    /// What the installer did (WG_CNI_STATE_FILE,
    /// /var/lib/wg-agent/install.json); never inside `conf_dir`.
    pub state_file: PathBuf,
    /// The userspace WireGuard implementation in the image, installed as
    /// `bin_dir/`[`USERSPACE_BINARY`] (WG_CNI_USERSPACE_SRC,
    /// /opt/wg/bin/wireguard-go; `none`: None, install no companion). A
    /// source that does not exist is not an error: the image is kernel-only.
    pub userspace_src: Option<PathBuf>,
}

/// Declare, in a conflist entry, the capability through which the runtime
/// passes wg-cni the pod's annotations (`runtimeConfig`; libcni passes a
/// capability only to the entries that declare it): with it, wg-cni passes
/// pods that did not opt in without asking the agent, and applies an
/// annotated pod's network's failure policy when the agent is down. An
/// entry that sets the capability already (even to `false`) is kept.
pub fn declare_pod_annotations(plugin: &mut Value) {
    let Some(o) = plugin.as_object_mut() else {
        return;
    };
    let caps = o
        .entry("capabilities")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(caps) = caps.as_object_mut() {
        caps.entry(wg_cni::managed::POD_ANNOTATIONS_CAPABILITY)
            .or_insert(Value::Bool(true));
    }
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            bin_src: "/opt/wg/bin/wg-cni".into(),
            bin_dir: "/host/opt/cni/bin".into(),
            conf_dir: "/host/etc/cni/net.d".into(),
            mode: Mode::Chain,
            plugin: {
                let mut p = serde_json::json!({"type": PLUGIN_TYPE, "managed": true});
                declare_pod_annotations(&mut p);
                p
            },
            binary_name: PLUGIN_TYPE.into(),
            state_file: "/var/lib/wg-agent/install.json".into(),
            userspace_src: Some("/opt/wg/bin/wireguard-go".into()),
        }
    }
}

impl InstallOptions {
    /// The options from the environment (see each field for its variable;
    /// unset or empty means the default).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) with another source of variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let mut o = InstallOptions::default();
        if let Some(v) = get("WG_CNI_BIN_SRC") {
            o.bin_src = v.into();
        }
        if let Some(v) = get("WG_CNI_BIN_DIR") {
            o.bin_dir = v.into();
        }
        if let Some(v) = get("WG_CNI_CONF_DIR") {
            o.conf_dir = v.into();
        }
        if let Some(v) = get("WG_CNI_STATE_FILE") {
            o.state_file = v.into();
        }
        if let Some(v) = get("WG_CNI_USERSPACE_SRC") {
            o.userspace_src = (v != "none").then(|| v.into());
        }
        if let Some(v) = get("WG_CNI_MODE") {
            o.mode = v.parse().map_err(|msg| Error::Env {
                var: "WG_CNI_MODE",
                msg,
            })?;
        }
        if let Some(v) = get("WG_CNI_PLUGIN") {
            o.plugin = serde_json::from_str(&v).map_err(|e| Error::Env {
                var: "WG_CNI_PLUGIN",
                msg: e.to_string(),
            })?;
            declare_pod_annotations(&mut o.plugin);
        }
        o.validate()?;
        Ok(o)
    }

    /// Checks what the installer relies on: an entry whose type names the
    /// binary, a plain binary name, a state file outside the conf dir.
    pub fn validate(&self) -> Result<()> {
        let ty = plugin_type(&self.plugin).map_err(|_| {
            Error::Options("the plugin entry must be a JSON object with a string \"type\"".into())
        })?;
        if ty != self.binary_name {
            return Err(Error::Options(format!(
                "the plugin entry's type {ty:?} must be the binary's name {:?} (libcni runs the binary named by \"type\")",
                self.binary_name
            )));
        }
        if self.binary_name.is_empty()
            || self.binary_name.contains('/')
            || self.binary_name.starts_with('.')
        {
            return Err(Error::Options(format!(
                "bad binary name {:?}",
                self.binary_name
            )));
        }
        if self.binary_name == USERSPACE_BINARY {
            return Err(Error::Options(format!(
                "the plugin binary cannot be named {USERSPACE_BINARY:?}: that is the userspace WireGuard binary's name"
            )));
        }
        if parent_dir(&self.state_file) == self.conf_dir.as_path() {
            return Err(Error::Options(
                "the state file must not be in the CNI conf dir".into(),
            ));
        }
        Ok(())
    }
}

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

/// The binaries the installer manages.
#[derive(Debug, Clone, Copy)]
enum Managed {
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

/// Installs wg-cni on a node and keeps it chained.
#[derive(Debug, Clone)]
pub struct Installer {
    /// Its options.
    pub opts: InstallOptions,
}

/// How long the watch waits for a burst of events to settle.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// The longest a steady stream of events can postpone a check.
const DEBOUNCE_MAX: Duration = Duration::from_millis(500);
/// How often `watch` looks at `stop`.
const STOP_POLL: Duration = Duration::from_millis(200);
/// `watch` also checks without an event this often (a missed event, a
/// failed write retried).
const RESYNC: Duration = Duration::from_secs(30);

impl Installer {
    /// An installer with `opts`.
    pub fn new(opts: InstallOptions) -> Self {
        Installer { opts }
    }

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

    fn save_state(&self, state: &InstallState) -> Result<()> {
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

    /// Installs `ours` (the bytes of `which` in the image) into the bin dir
    /// under the ownership rules of the module docs. The record goes into
    /// `state` and the state file before the binary is written: a crash in
    /// between leaves a record of a binary the next run installs, never an
    /// unowned binary.
    fn install_owned(
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
    fn userspace_bytes(&self) -> Result<Option<Vec<u8>>> {
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

    /// Removes our entry from `path` (byte-exact); true when there was one.
    fn unchain_file(&self, path: &Path) -> Result<bool> {
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

    /// [`ensure_binaries`](Self::ensure_binaries), then
    /// [`ensure_chained`](Self::ensure_chained): what
    /// [`watch`](Self::watch) does at its start and every 30 s. Returns
    /// whether it changed anything.
    pub fn ensure_installed(&self) -> Result<bool> {
        self.repair(true, true)
    }

    /// The binaries (`binaries`) and the conflist entry (`conflist`) put
    /// back; both tried even when the first fails (its error returned).
    fn repair(&self, binaries: bool, conflist: bool) -> Result<bool> {
        let bins = if binaries {
            self.ensure_binaries()
        } else {
            Ok(false)
        };
        let chain = if conflist {
            self.ensure_chained()
        } else {
            Ok(false)
        };
        match (bins, chain) {
            (Ok(a), Ok(b)) => Ok(a || b),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
            (Err(a), Err(b)) => {
                tracing::warn!(error = %a, "cannot put the wg-cni binaries back");
                Err(b)
            }
        }
    }

    /// Undoes [`install_owned`](Self::install_owned) for `which`: removes
    /// the binary we installed, or restores the one it replaced, or leaves
    /// one whose bytes are not ours (any more, or as far as we can tell:
    /// its source is not in this image); then drops the record.
    fn uninstall_owned(&self, state: &mut InstallState, which: Managed) -> Result<BinaryUninstall> {
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

    /// Keeps wg-cni installed until `stop` is set: inotify watches on the
    /// conf dir (close-write, moved-to, create, delete of its CNI files)
    /// and on the bin dir (the same, for the plugin's and the userspace
    /// WireGuard binary's names), a short debounce (100 ms of quiet, at
    /// most 500 ms), then [`ensure_chained`](Self::ensure_chained) for the
    /// conf dir and [`ensure_binaries`](Self::ensure_binaries) for the bin
    /// dir. `on_change` gets the result of every check it runs (`Ok(true)`:
    /// something was put back), including one of both at the start (a
    /// restarted container runs no init container) and one every 30 s
    /// without events. `stop` is looked at every 200 ms. Creates a
    /// directory that does not exist; one that is deleted and recreated is
    /// watched again.
    pub fn watch(&self, stop: &AtomicBool, mut on_change: impl FnMut(&Result<bool>)) -> Result<()> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        use rustix::fs::inotify;

        let conf_dir = &self.opts.conf_dir;
        let bin_dir = &self.opts.bin_dir;
        let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(|e| io_err("inotify_init for", conf_dir)(e.into()))?;
        let mask = inotify::WatchFlags::CLOSE_WRITE
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::CREATE
            | inotify::WatchFlags::DELETE
            | inotify::WatchFlags::MOVED_FROM
            | inotify::WatchFlags::ATTRIB
            | inotify::WatchFlags::DELETE_SELF
            | inotify::WatchFlags::MOVE_SELF
            | inotify::WatchFlags::ONLYDIR;
        // Creates `dir` if needed and watches it: its watch descriptor.
        let add_watch = |dir: &Path| -> Result<i32> {
            fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
            inotify::add_watch(&ino, dir, mask).map_err(|e| io_err("watching", dir)(e.into()))
        };
        let first = |dir: &Path| match add_watch(dir) {
            Ok(wd) => Some(wd),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the directory yet");
                None
            }
        };
        let mut conf_wd = first(conf_dir);
        let mut bin_wd = first(bin_dir);
        on_change(&self.ensure_installed());
        let mut last_check = Instant::now();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
        let timeout = Timespec::try_from(STOP_POLL).unwrap_or(Timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        });
        let binary_names = [self.opts.binary_name.as_str(), USERSPACE_BINARY];

        // Reads what is queued: which directory had a relevant event, and
        // the watch descriptors that are gone (the directory deleted or
        // moved).
        let drain = |buf: &mut [std::mem::MaybeUninit<u8>],
                     conf_wd: Option<i32>,
                     bin_wd: Option<i32>|
         -> Due {
            let mut due = Due::default();
            let mut reader = inotify::Reader::new(&ino, buf);
            loop {
                match reader.next() {
                    Ok(ev) => {
                        let flags = ev.events();
                        let (conf, bin) = (Some(ev.wd()) == conf_wd, Some(ev.wd()) == bin_wd);
                        if flags.intersects(inotify::ReadFlags::QUEUE_OVERFLOW) {
                            due.conf = true;
                            due.bin = true;
                        }
                        if flags.intersects(
                            inotify::ReadFlags::IGNORED
                                | inotify::ReadFlags::DELETE_SELF
                                | inotify::ReadFlags::MOVE_SELF,
                        ) {
                            due.conf_lost |= conf;
                            due.bin_lost |= bin;
                            due.conf |= conf;
                            due.bin |= bin;
                        }
                        if let Some(name) = ev.file_name().and_then(|n| n.to_str().ok()) {
                            due.conf |= conf && is_candidate_name(name);
                            due.bin |= bin && binary_names.contains(&name);
                        }
                    }
                    Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading inotify events");
                        break;
                    }
                }
            }
            due
        };
        let wait = |t: &Timespec| -> bool {
            let mut fds = [PollFd::new(&ino, PollFlags::IN)];
            matches!(poll(&mut fds, Some(t)), Ok(n) if n > 0)
        };

        while !stop.load(Ordering::Relaxed) {
            if conf_wd.is_none() {
                conf_wd = add_watch(conf_dir).ok();
            }
            if bin_wd.is_none() {
                bin_wd = add_watch(bin_dir).ok();
            }
            let mut due = Due::default();
            if wait(&timeout) {
                due = drain(&mut buf, conf_wd, bin_wd);
                if due.conf || due.bin {
                    // Let the writer finish (a burst of events, a
                    // truncate-then-write): wait for quiet.
                    let started = Instant::now();
                    let quiet = Timespec::try_from(DEBOUNCE).unwrap_or(Timespec {
                        tv_sec: 0,
                        tv_nsec: 100_000_000,
                    });
                    while started.elapsed() < DEBOUNCE_MAX && wait(&quiet) {
                        due.merge(drain(&mut buf, conf_wd, bin_wd));
                    }
                }
                if due.conf_lost {
                    conf_wd = None;
                }
                if due.bin_lost {
                    bin_wd = None;
                }
            }
            let resync = last_check.elapsed() >= RESYNC;
            if due.conf || due.bin || resync {
                if conf_wd.is_none() {
                    conf_wd = add_watch(conf_dir).ok();
                }
                if bin_wd.is_none() {
                    bin_wd = add_watch(bin_dir).ok();
                }
                let result = self.repair(due.bin || resync, due.conf || resync);
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "keeping wg-cni installed");
                }
                on_change(&result);
                last_check = Instant::now();
            }
        }
        Ok(())
    }
}

/// What a batch of inotify events asks [`Installer::watch`] to do.
#[derive(Debug, Default, Clone, Copy)]
struct Due {
    /// Check the conflist.
    conf: bool,
    /// Check the binaries.
    bin: bool,
    /// The conf dir's watch is gone.
    conf_lost: bool,
    /// The bin dir's watch is gone.
    bin_lost: bool,
}

impl Due {
    fn merge(&mut self, other: Due) {
        self.conf |= other.conf;
        self.bin |= other.bin;
        self.conf_lost |= other.conf_lost;
        self.bin_lost |= other.bin_lost;
    }
}

pub mod removal;

#[cfg(test)]
mod tests;
