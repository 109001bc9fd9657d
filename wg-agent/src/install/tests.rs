//! The installer's unit tests. Here: the fixtures they share (a temporary
//! node and image, flannel's conflist) and the `Installer` on such a node
//! (install and uninstall, the conflist kept chained, the watch putting
//! the conflist entry and the binaries back). In `tests/`: the text edits
//! (`chain`, and `generated` conflists), the file helpers (`files`), the
//! userspace WireGuard binary (`userspace`), the options (`options`) and
//! the uninstall decision at SIGTERM (`removal_decision`).

use super::*;
use serde_json::{json, Value};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::files::{parent_dir, same_bytes};

mod chain;
mod files;
mod generated;
mod options;
mod removal_decision;
mod userspace;

/// A temporary directory under std::env::temp_dir(), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("wgagent-install-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn plugin() -> Value {
    json!({"type": "wg-cni", "managed": true})
}

/// flannel's conflist as kube-flannel writes it (two-space JSON).
const FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"#;

/// `y` is `x` with one span inserted: returns the span.
fn inserted_span<'a>(x: &[u8], y: &'a [u8]) -> Option<&'a [u8]> {
    if y.len() < x.len() {
        return None;
    }
    let d = y.len() - x.len();
    let p = x.iter().zip(y).take_while(|(a, b)| a == b).count();
    (x[p..] == y[p + d..]).then(|| &y[p..p + d])
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#;
const CONF: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#;

// --- the installer -----------------------------------------------------------

/// A node and an image that ships both the plugin and wireguard-go.
struct Node {
    _t: TempDir,
    conf: PathBuf,
    bin: PathBuf,
    src: PathBuf,
    /// The image's wireguard-go.
    wg_src: PathBuf,
    state: PathBuf,
}

fn node(tag: &str) -> Node {
    let t = TempDir::new(tag);
    let conf = t.path().join("etc/cni/net.d");
    let bin = t.path().join("opt/cni/bin");
    let src = t.path().join("image/wg-cni");
    let wg_src = t.path().join("image/wireguard-go");
    let state = t.path().join("var/lib/wg-agent/install.json");
    for d in [&conf, &bin, &parent_dir(&src).to_path_buf()] {
        fs::create_dir_all(d).unwrap();
    }
    write(&src, "wg-cni binary v1");
    write(&wg_src, "wireguard-go v1");
    Node {
        _t: t,
        conf,
        bin,
        src,
        wg_src,
        state,
    }
}

impl Node {
    fn opts(&self, mode: Mode) -> InstallOptions {
        InstallOptions {
            bin_src: self.src.clone(),
            bin_dir: self.bin.clone(),
            conf_dir: self.conf.clone(),
            mode,
            state_file: self.state.clone(),
            userspace_src: Some(self.wg_src.clone()),
            ..InstallOptions::default()
        }
    }
    fn installer(&self, mode: Mode) -> Installer {
        Installer::new(self.opts(mode))
    }
    fn flannel(&self) -> PathBuf {
        let p = self.conf.join("10-flannel.conflist");
        write(&p, FLANNEL);
        p
    }
}

fn entry_count(path: &Path) -> usize {
    let v: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "wg-cni")
        .count()
}

#[test]
fn install_then_uninstall_gives_back_the_exact_bytes() {
    let n = node("roundtrip");
    let f = n.flannel();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap();
    assert_eq!(
        r,
        InstallReport {
            binary: BinaryReport {
                path: n.bin.join("wg-cni"),
                written: true,
                backup: None
            },
            userspace: Some(BinaryReport {
                path: n.bin.join(USERSPACE_BINARY),
                written: true,
                backup: None
            }),
            conflist: Some(f.clone()),
            conflist_changed: true
        }
    );
    assert_eq!(
        fs::read(&f).unwrap(),
        chain(FLANNEL.as_bytes(), &InstallOptions::default().plugin)
            .unwrap()
            .unwrap()
    );
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(fs::read(n.bin.join("wg-cni")).unwrap(), b"wg-cni binary v1");
    // The state is outside the conf dir, and the conf dir holds nothing new.
    assert_eq!(names(&n.conf), ["10-flannel.conflist"]);
    let st = inst.state().unwrap();
    assert_eq!(st.conflist, Some(f.clone()));
    assert_eq!(
        st.binary,
        Some(BinaryRecord {
            path: n.bin.join("wg-cni"),
            backup: None
        })
    );
    // Idempotent.
    let again = inst.install().unwrap();
    assert!(!again.binary.written && !again.conflist_changed);
    assert!(!again.userspace.unwrap().written);
    assert!(!inst.ensure_chained().unwrap());

    let u = inst.uninstall().unwrap();
    assert_eq!(
        u,
        UninstallReport {
            unchained: Some(f.clone()),
            binary: BinaryUninstall::Removed,
            userspace: BinaryUninstall::Removed,
        }
    );
    assert_eq!(fs::read(&f).unwrap(), FLANNEL.as_bytes());
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    assert!(!n.bin.join("wg-cni").exists());
    assert!(!n.state.exists());
    assert_eq!(names(&n.conf), ["10-flannel.conflist"]);
    assert!(names(&n.bin).is_empty());
}

#[test]
fn a_binary_that_was_there_before_is_restored_or_left() {
    // Other bytes: saved, replaced, restored by uninstall.
    let n = node("prior-bin");
    let target = n.bin.join("wg-cni");
    write(&target, "someone else's wg-cni");
    fs::set_permissions(&target, fs::Permissions::from_mode(0o750)).unwrap();
    let inst = n.installer(Mode::Secondary);
    let r = inst.install().unwrap();
    assert!(r.binary.written);
    let backup = r.binary.backup.clone().unwrap();
    assert_eq!(parent_dir(&backup), parent_dir(&n.state));
    assert_eq!(fs::read(&target).unwrap(), b"wg-cni binary v1");
    // An upgrade: the new version overwrites its own binary, no new backup.
    write(&n.src, "wg-cni binary v2");
    let r2 = inst.install().unwrap();
    assert!(r2.binary.written && r2.binary.backup.is_none());
    assert_eq!(inst.uninstall().unwrap().binary, BinaryUninstall::Restored);
    assert_eq!(fs::read(&target).unwrap(), b"someone else's wg-cni");
    assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o750);
    assert!(!backup.exists());

    // Identical bytes: not ours, uninstall leaves it.
    let n = node("prior-same");
    let target = n.bin.join("wg-cni");
    write(&target, "wg-cni binary v1");
    let inst = n.installer(Mode::Secondary);
    assert!(!inst.install().unwrap().binary.written);
    assert_eq!(inst.uninstall().unwrap().binary, BinaryUninstall::NotOurs);
    assert_eq!(fs::read(&target).unwrap(), b"wg-cni binary v1");

    // Replaced by someone else after us: left in place.
    let n = node("replaced-after");
    let inst = n.installer(Mode::Secondary);
    inst.install().unwrap();
    write(&n.bin.join("wg-cni"), "newer, not ours");
    assert_eq!(
        inst.uninstall().unwrap().binary,
        BinaryUninstall::LeftInPlace
    );
    assert_eq!(fs::read(n.bin.join("wg-cni")).unwrap(), b"newer, not ours");
}

/// (inode, mtime) of `path`: unchanged means not written.
fn stamp(path: &Path) -> (u64, i64, i64) {
    let m = fs::metadata(path).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn an_entry_that_was_there_before_is_not_ours() {
    let n = node("prior-entry");
    let f = n.conf.join("10-x.conflist");
    let by_hand =
        r#"{"name":"n","plugins":[{"type":"bridge"},{"type":"wg-cni","address":"10.0.0.2/24"}]}"#;
    write(&f, by_hand);
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap();
    assert!(!r.conflist_changed && r.conflist.is_none());
    assert_eq!(inst.uninstall().unwrap().unchained, None);
    assert_eq!(fs::read_to_string(&f).unwrap(), by_hand);
}

#[test]
fn ensure_chained_reinserts_after_a_rewrite() {
    let n = node("rewrite");
    let f = n.flannel();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    assert!(!inst.ensure_chained().unwrap());
    write(&f, FLANNEL); // the primary CNI restarts and writes its file again
    assert!(inst.ensure_chained().unwrap());
    assert_eq!(entry_count(&f), 1);
    assert!(!inst.ensure_chained().unwrap());
    assert_eq!(inst.uninstall().unwrap().unchained, Some(f.clone()));
    assert_eq!(fs::read(&f).unwrap(), FLANNEL.as_bytes());
}

#[test]
fn a_new_primary_is_chained_and_the_old_one_cleaned() {
    let n = node("switch");
    let old = n.flannel();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    let new = n.conf.join("05-calico.conflist");
    write(&new, CONFLIST);
    assert!(inst.ensure_chained().unwrap());
    assert_eq!(entry_count(&new), 1);
    assert_eq!(fs::read(&old).unwrap(), FLANNEL.as_bytes());
    assert_eq!(inst.state().unwrap().conflist, Some(new.clone()));
    // The new primary goes away: the old file is the primary again.
    fs::remove_file(&new).unwrap();
    assert!(inst.ensure_chained().unwrap());
    assert_eq!(entry_count(&old), 1);
    inst.uninstall().unwrap();
    assert_eq!(fs::read(&old).unwrap(), FLANNEL.as_bytes());
}

#[test]
fn a_symlinked_conflist_is_edited_where_it_points() {
    let n = node("symlink");
    let real_dir = parent_dir(&n.conf).join("real");
    fs::create_dir_all(&real_dir).unwrap();
    let real = real_dir.join("flannel.conflist");
    write(&real, FLANNEL);
    let link = n.conf.join("10-flannel.conflist");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(entry_count(&real), 1);
    inst.uninstall().unwrap();
    assert_eq!(fs::read(&real).unwrap(), FLANNEL.as_bytes());
}

#[test]
fn a_single_plugin_conf_is_refused_and_left_alone() {
    let n = node("conf");
    let f = n.conf.join("10-bridge.conf");
    write(&f, CONF);
    let inst = n.installer(Mode::Chain);
    let e = inst.install().unwrap_err();
    assert!(
        matches!(&e, Error::SingleConf { path } if path == &f),
        "{e}"
    );
    assert!(
        e.to_string().contains("10-bridge.conf") && e.to_string().contains("WG_CNI_MODE=secondary"),
        "{e}"
    );
    assert_eq!(fs::read_to_string(&f).unwrap(), CONF);
    assert_eq!(names(&n.conf), ["10-bridge.conf"]);
}

#[test]
fn no_primary_yet_is_not_an_error() {
    let n = node("empty");
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap();
    assert!(r.binary.written && r.conflist.is_none() && !r.conflist_changed);
    let f = n.flannel();
    assert!(inst.ensure_chained().unwrap());
    assert_eq!(entry_count(&f), 1);
}

#[test]
fn secondary_mode_touches_no_conflist() {
    let n = node("secondary");
    let f = n.flannel();
    let before = fs::metadata(&f).unwrap();
    let inst = n.installer(Mode::Secondary);
    let r = inst.install().unwrap();
    assert!(r.binary.written && r.conflist.is_none() && !r.conflist_changed);
    assert!(!inst.ensure_chained().unwrap());
    assert_eq!(inst.uninstall().unwrap().unchained, None);
    let after = fs::metadata(&f).unwrap();
    assert_eq!(fs::read(&f).unwrap(), FLANNEL.as_bytes());
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (before.ino(), before.mtime(), before.mtime_nsec())
    );
    assert_eq!(names(&n.conf), ["10-flannel.conflist"]);
}

#[test]
fn switching_to_secondary_takes_our_entry_out() {
    let n = node("to-secondary");
    let f = n.flannel();
    n.installer(Mode::Chain).install().unwrap();
    assert_eq!(entry_count(&f), 1);
    let inst = n.installer(Mode::Secondary);
    assert!(inst.install().unwrap().conflist_changed);
    assert_eq!(fs::read(&f).unwrap(), FLANNEL.as_bytes());
}

#[test]
fn watch_reinserts_after_the_primary_rewrites_its_file() {
    let n = node("watch");
    let f = n.flannel();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = {
        let inst = inst.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            inst.watch(&stop, |r| {
                let _ = tx.send(r.as_ref().map(|c| *c).map_err(|e| e.to_string()));
            })
        })
    };
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(2)).unwrap(),
        Ok(false),
        "the first check"
    );

    let mut latencies = Vec::new();
    for round in 0..3 {
        let started = Instant::now();
        if round == 1 {
            // Atomic writers (rename over) as well as flannel's truncate+write.
            let tmp = n.conf.join(".flannel.tmp");
            write(&tmp, FLANNEL);
            fs::rename(&tmp, &f).unwrap();
        } else {
            let writer = {
                let f = f.clone();
                std::thread::spawn(move || write(&f, FLANNEL))
            };
            writer.join().unwrap();
        }
        loop {
            if fs::read(&f).is_ok_and(|b| b != FLANNEL.as_bytes() && entry_count(&f) == 1) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "not re-chained within 2 s (round {round})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        latencies.push(started.elapsed());
        // Let the watch see its own rename before the next round.
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("re-chained after {latencies:?}");
    assert!(rx.try_iter().any(|r| r == Ok(true)));

    let stopping = Instant::now();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap().unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "stop honoured in {:?}",
        stopping.elapsed()
    );
    assert_eq!(names(&n.conf), ["10-flannel.conflist"]);
}

#[test]
fn watch_creates_a_missing_conf_dir_and_chains_what_appears() {
    let n = node("watch-late");
    fs::remove_dir_all(&n.conf).unwrap();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let inst = inst.clone();
        let stop = stop.clone();
        std::thread::spawn(move || inst.watch(&stop, |_| {}))
    };
    let started = Instant::now();
    while !n.conf.is_dir() {
        assert!(started.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(10));
    }
    let f = n.flannel();
    while !fs::read(&f).is_ok_and(|b| b != FLANNEL.as_bytes()) {
        assert!(started.elapsed() < Duration::from_secs(3), "not chained");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(entry_count(&f), 1);
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap().unwrap();
}

// --- the watch puts the binaries back -------------------------------------------

/// A watch of `inst` on a thread: its results, in order, and a way to stop it.
struct Watching {
    stop: Arc<AtomicBool>,
    rx: std::sync::mpsc::Receiver<Result<bool, String>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Watching {
    fn start(inst: &Installer) -> Watching {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let inst = inst.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                inst.watch(&stop, |r| {
                    let _ = tx.send(r.as_ref().map(|c| *c).map_err(|e| e.to_string()));
                })
            })
        };
        Watching {
            stop,
            rx,
            thread: Some(thread),
        }
    }

    /// The result of the next check.
    fn next(&self) -> Result<bool, String> {
        self.rx
            .recv_timeout(Duration::from_secs(3))
            .expect("a check within 3 s")
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.unwrap().unwrap();
            }
        }
    }
}

/// Waits up to 2 s for `path` to hold `bytes` with mode 0755.
fn comes_back(path: &Path, bytes: &[u8]) -> Duration {
    let t = Instant::now();
    while !(fs::read(path).is_ok_and(|b| b == bytes) && mode(path) == 0o755) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{} not put back within 2 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t.elapsed()
}

#[test]
fn watch_puts_a_deleted_or_replaced_binary_back() {
    let n = node("watch-bin");
    let f = n.flannel();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    let plugin = n.bin.join("wg-cni");
    let wg = n.bin.join(USERSPACE_BINARY);
    let (ours, wg_ours) = (fs::read(&n.src).unwrap(), fs::read(&n.wg_src).unwrap());
    let w = Watching::start(&inst);
    assert_eq!(w.next(), Ok(false), "the first check: all in place");

    let mut took = Vec::new();
    // Deleted (the plugin, then its companion).
    fs::remove_file(&plugin).unwrap();
    took.push(comes_back(&plugin, &ours));
    fs::remove_file(&wg).unwrap();
    took.push(comes_back(&wg, &wg_ours));
    // Replaced by other bytes, written in place and renamed over it.
    write(&plugin, "not the image's wg-cni");
    took.push(comes_back(&plugin, &ours));
    let tmp = n.bin.join(".elsewhere");
    write(&tmp, "not the image's wireguard-go");
    fs::rename(&tmp, &wg).unwrap();
    took.push(comes_back(&wg, &wg_ours));
    // Its mode changed.
    fs::set_permissions(&plugin, fs::Permissions::from_mode(0o644)).unwrap();
    took.push(comes_back(&plugin, &ours));
    eprintln!("binaries put back after {took:?}");
    assert!(w.rx.try_iter().any(|r| r == Ok(true)));
    drop(w);
    // Nothing else was written: no temporary file, the conflist untouched,
    // the records unchanged (uninstall still removes both).
    assert_eq!(names(&n.bin), ["wg-cni", USERSPACE_BINARY]);
    assert_eq!(entry_count(&f), 1);
    let u = inst.uninstall().unwrap();
    assert_eq!(
        (u.binary, u.userspace),
        (BinaryUninstall::Removed, BinaryUninstall::Removed)
    );
    assert!(names(&n.bin).is_empty());
    assert_eq!(fs::read(&f).unwrap(), FLANNEL.as_bytes());
}

#[test]
fn a_restarted_watch_puts_missing_binaries_back_before_any_event() {
    // The container restarts (liveness, OOM): no init container runs, the
    // agent's watch starts with the binaries gone.
    let n = node("watch-restart");
    let f = n.flannel();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    let plugin = n.bin.join("wg-cni");
    let wg = n.bin.join(USERSPACE_BINARY);
    fs::remove_file(&plugin).unwrap();
    fs::remove_file(&wg).unwrap();
    let w = Watching::start(&inst);
    assert_eq!(w.next(), Ok(true), "the first check puts them back");
    assert_eq!(fs::read(&plugin).unwrap(), fs::read(&n.src).unwrap());
    assert_eq!(fs::read(&wg).unwrap(), fs::read(&n.wg_src).unwrap());
    assert_eq!((mode(&plugin), mode(&wg)), (0o755, 0o755));
    drop(w);

    // All in place: a restarted watch writes nothing.
    let before = [&plugin, &wg, &n.state, &f].map(|p| stamp(p));
    let w = Watching::start(&inst);
    assert_eq!(w.next(), Ok(false));
    drop(w);
    assert_eq!([&plugin, &wg, &n.state, &f].map(|p| stamp(p)), before);
}

#[test]
fn the_watch_keeps_the_installers_ownership_rules() {
    // A wg-cni that was there before (other bytes): saved by install; the
    // watch puts ours back when it goes, and uninstall still restores theirs.
    let n = node("watch-owner");
    let plugin = n.bin.join("wg-cni");
    write(&plugin, "someone else's wg-cni");
    // The companion was there before with our bytes: not ours.
    let wg = n.bin.join(USERSPACE_BINARY);
    write(&wg, "wireguard-go v1");
    fs::set_permissions(&wg, fs::Permissions::from_mode(0o700)).unwrap();
    let inst = n.installer(Mode::Secondary);
    let r = inst.install().unwrap();
    assert!(r.binary.backup.is_some());
    assert!(!r.userspace.unwrap().written);
    let wg_stamp = stamp(&wg);
    let w = Watching::start(&inst);
    assert_eq!(w.next(), Ok(false), "not ours, our bytes: left as it is");
    fs::remove_file(&plugin).unwrap();
    comes_back(&plugin, b"wg-cni binary v1");
    drop(w);
    assert_eq!(stamp(&wg), wg_stamp);
    assert_eq!(mode(&wg), 0o700);
    assert_eq!(inst.state().unwrap().userspace, None);
    let u = inst.uninstall().unwrap();
    assert_eq!(u.binary, BinaryUninstall::Restored);
    assert_eq!(u.userspace, BinaryUninstall::NotOurs);
    assert_eq!(fs::read(&plugin).unwrap(), b"someone else's wg-cni");
    assert_eq!(fs::read(&wg).unwrap(), b"wireguard-go v1");
}

#[test]
fn ensure_binaries_leaves_a_kernel_only_image_alone() {
    let n = node("ensure-kernel");
    fs::remove_file(&n.wg_src).unwrap();
    let inst = n.installer(Mode::Secondary);
    inst.install().unwrap();
    assert!(!inst.ensure_binaries().unwrap());
    assert_eq!(names(&n.bin), ["wg-cni"]);
    fs::remove_file(n.bin.join("wg-cni")).unwrap();
    assert!(inst.ensure_binaries().unwrap());
    assert_eq!(names(&n.bin), ["wg-cni"]);
    // The image's plugin gone (never expected): an error naming it.
    fs::remove_file(&n.src).unwrap();
    let e = inst.ensure_binaries().unwrap_err().to_string();
    assert!(e.contains(&n.src.display().to_string()), "{e}");
}

#[test]
fn same_bytes_compares_whole_files_in_chunks() {
    let t = TempDir::new("same");
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&a, &big).unwrap();
    assert!(!same_bytes(&a, &b).unwrap(), "missing");
    fs::write(&b, &big).unwrap();
    assert!(same_bytes(&a, &b).unwrap());
    let mut other = big.clone();
    other[150_000] ^= 1;
    fs::write(&b, &other).unwrap();
    assert!(!same_bytes(&a, &b).unwrap(), "one byte in the third chunk");
    fs::write(&b, &big[..199_999]).unwrap();
    assert!(!same_bytes(&a, &b).unwrap(), "shorter");
    fs::remove_file(&b).unwrap();
    fs::create_dir(&b).unwrap();
    assert!(!same_bytes(&a, &b).unwrap(), "a directory");
}
