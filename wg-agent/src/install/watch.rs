//! Keeping wg-cni installed: `Installer::watch` (inotify on the conf dir
//! and the bin dir, a debounce, a check every 30 s) and the checks it runs.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::conf_dir::is_candidate_name;
use super::error::io_err;
use super::{Installer, Result, USERSPACE_BINARY};

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
