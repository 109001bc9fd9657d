use std::path::PathBuf;
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use rustix::process::{Pid, Signal, WaitOptions};
use wg_netns::{DeviceConfig, PeerConfig, PublicKey};
use wg_oci::{Config, Record, RecordStore, Target};

use crate::lab::Lab;
use crate::{Ctx, Res, CONTAINER_TUNNEL};

// ---------------------------------------------------------------------------
// Guards for what a container run makes.

/// A created container, killed and deleted on drop unless `delete` ran.
struct ContainerGuard(Option<Container>);

impl ContainerGuard {
    fn get(&mut self) -> &mut Container {
        self.0.as_mut().expect("not yet deleted")
    }

    fn delete(mut self) -> Res<()> {
        let mut c = self.0.take().expect("not yet deleted");
        c.delete(true).ctx("deleting the container")
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            if let Some(pid) = c.pid() {
                // Reap our child if it is already gone, so delete sees it stopped.
                if let Some(pid) = Pid::from_raw(pid.as_raw()) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                    let _ = wait_exit(pid, Duration::from_secs(5));
                }
            }
            if let Err(e) = c.delete(true) {
                eprintln!("# cleanup: deleting container {}: {e}", c.id());
            }
        }
    }
}

/// An attachment, detached (and its record removed) on drop unless
/// `detach` ran. Must be dropped in the namespace attach was called from.
struct AttachGuard {
    record: Option<Record>,
    store: RecordStore,
}

impl AttachGuard {
    fn detach(mut self) -> Res<bool> {
        let record = self.record.take().expect("attached");
        let removed = wg_oci::detach(&record).ctx("detach")?;
        self.store
            .remove(&record.container_id)
            .ctx("removing the record")?;
        Ok(removed)
    }
}

impl Drop for AttachGuard {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            if let Err(e) = wg_oci::detach(&record) {
                eprintln!("# cleanup: {e}");
            }
            let _ = self.store.remove(&record.container_id);
        }
    }
}

/// Wait for our child `pid` (the container's init: libcontainer clones it
/// as a sibling of its intermediate process, so it is our child) to exit.
/// `Ok(None)` on timeout.
fn wait_exit(pid: Pid, within: Duration) -> Res<Option<rustix::process::WaitStatus>> {
    let end = Instant::now() + within;
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG).ctx("waitpid")? {
            Some((_, status)) => return Ok(Some(status)),
            None if Instant::now() > end => return Ok(None),
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn describe(status: rustix::process::WaitStatus) -> String {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (_, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("wait status {:#x}", status.as_raw()),
    }
}

// ---------------------------------------------------------------------------
// One container, the way a runtime does it.

/// What to do between create and start.
pub(crate) enum Mode<'a> {
    /// No WireGuard: the baseline for timings.
    Plain,
    /// `wg_oci::attach` with this configuration.
    Attach(&'a Config),
    /// Attach, then panic before start (the guards must clean up).
    PanicAfterAttach(&'a Config),
}

#[derive(Default, Debug, Clone)]
pub(crate) struct Timings {
    pub(crate) create: Duration,
    pub(crate) attach: Duration,
    pub(crate) start: Duration,
    pub(crate) wait: Duration,
    pub(crate) detach: Duration,
    pub(crate) delete: Duration,
}

pub(crate) struct Outcome {
    pub(crate) timings: Timings,
    pub(crate) status: String,
    pub(crate) exit_ok: bool,
    /// The attach's record (birth name, public key), if attached.
    pub(crate) record: Option<Record>,
    /// The peer's rx bytes from the container, before start and after exit.
    pub(crate) peer_rx: Option<(u64, u64)>,
    pub(crate) detached: bool,
    /// What existed while the container ran (so that "nothing left" is
    /// checked against things that were there).
    pub(crate) existed: Vec<String>,
}

/// Create container `id` running `script`, do `mode` between create and
/// start, start it, wait for it, detach, delete. Runs on a thread in the
/// node namespace (the runtime's): the interface is born there.
pub(crate) fn run_container(lab: &Lab, id: &str, script: &str, mode: Mode) -> Res<Outcome> {
    let bundle = lab.bundle(id, script)?;
    let _bundle_dir = DirGuard(bundle.clone());
    let mut t = Timings::default();

    // 1. Create: the container's init waits, in its new namespaces, for start.
    let t0 = Instant::now();
    let container = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(lab.state_root())
        .ctx("state root")?
        .validate_id()
        .ctx("container id")?
        .as_init(&bundle)
        .with_systemd(false)
        .with_detach(true)
        .with_no_pivot(no_pivot())
        .build()
        .ctx("creating the container")?;
    t.create = t0.elapsed();
    let mut container = ContainerGuard(Some(container));
    let raw_pid = container
        .get()
        .pid()
        .ok_or("created container has no pid")?
        .as_raw();
    let pid = Pid::from_raw(raw_pid).ok_or("pid 0")?;

    // 2. Between create and start: the container's WireGuard, one call.
    let mut attached = None;
    let mut peer_rx = None;
    if let Mode::Attach(config) | Mode::PanicAfterAttach(config) = mode {
        let t1 = Instant::now();
        let record = wg_oci::attach(id, Target::Pid(raw_pid as u32), config).ctx("attach")?;
        t.attach = t1.elapsed();
        let store = RecordStore::new(config.state_dir());
        let guard = AttachGuard {
            record: Some(record.clone()),
            store,
        };
        // Optional: keep the record so a restarted runtime can detach.
        guard.store.save(&record).ctx("saving the record")?;
        if let Mode::PanicAfterAttach(_) = mode {
            panic!("injected panic between attach and start");
        }
        // Tell the peer the container's (generated) public key.
        let key: PublicKey = record.public_key.parse().ctx("record's public key")?;
        let peer = lab.peer_device()?;
        peer.set(&DeviceConfig::new().peer(
            PeerConfig::new(key).allowed_ip(format!("{CONTAINER_TUNNEL}/32").parse().ctx("ip")?),
        ))
        .ctx("adding the container to the peer")?;
        let rx = peer
            .stats()
            .ctx("peer stats")?
            .peer(&key)
            .map_or(0, |p| p.rx_bytes);
        peer_rx = Some((rx, rx));
        attached = Some((guard, key));
    }

    let mut existed = Vec::new();
    if let Some((guard, _)) = &attached {
        let birth = guard
            .record
            .as_ref()
            .map(|r| r.attachment.birth_name.to_string());
        existed = lab.leftovers(id, &birth.unwrap_or_default());
    }

    // 3. Start, wait.
    let t2 = Instant::now();
    container.get().start().ctx("starting the container")?;
    t.start = t2.elapsed();
    let t3 = Instant::now();
    let status = wait_exit(pid, Duration::from_secs(60))?;
    t.wait = t3.elapsed();
    let (status, exit_ok) = match status {
        Some(s) => (describe(s), s.exit_status() == Some(0)),
        None => ("still running after 60 s".to_string(), false),
    };

    // 4. Counters, detach, delete.
    let mut record = None;
    let mut detached = false;
    if let Some((guard, key)) = attached {
        let peer = lab.peer_device()?;
        let after = peer
            .stats()
            .ctx("peer stats")?
            .peer(&key)
            .map_or(0, |p| p.rx_bytes);
        peer_rx = peer_rx.map(|(before, _)| (before, after));
        let _ = peer.set(&DeviceConfig::new().peer(PeerConfig::removal(key)));
        record = guard.record.clone();
        let t4 = Instant::now();
        detached = guard.detach()?;
        t.detach = t4.elapsed();
    }
    let t5 = Instant::now();
    container.delete()?;
    t.delete = t5.elapsed();
    Ok(Outcome {
        timings: t,
        status,
        exit_ok,
        record,
        peer_rx,
        detached,
        existed,
    })
}

/// `--no-pivot`: pivot_root(2) cannot leave an initramfs (the qemu guest
/// runs from one): libcontainer then moves the root instead (runc's
/// `--no-pivot`).
pub(crate) static NO_PIVOT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

fn no_pivot() -> bool {
    NO_PIVOT.load(std::sync::atomic::Ordering::Relaxed)
}

/// A directory removed on drop.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
