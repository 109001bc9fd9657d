//! The agent: the node's pod interfaces, kept equal to what the resources
//! say. Each verb is a short story told with wg-netns calls:
//!
//! - `Agent::add` (a CNI ADD, through [`Agent::handle`]): which network,
//!   an address (IPAM), a port, the pod's key, [`Birthplace::ensure`], a
//!   record, an answer.
//! - `Agent::del`: [`wg_netns::AttachmentRecord::detach_in`], give back
//!   the address, port and key, forget.
//! - [`Agent::reconcile`]: for each interface a change touches, compute
//!   what it should be ([`crate::desired::compute`]) and send the device
//!   only the difference from what was last written
//!   ([`WgDevice::update_from`]); routes follow.
//! - [`Agent::verify`]: read every device back and repair drift.
//! - [`Agent::restore`] (start): reopen every recorded interface without
//!   touching it; the first reconcile after the caches are synced sends
//!   only real differences, so a restart never removes and re-adds peers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::Client;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use wg_attach::managed::{Attached, Failure, LaunchNamespace, PodRef, Reply, Request, Verb};
use wg_k8s_types::{
    EndpointString, FailurePolicy, Mtu, NetworkConfig, WireGuardAddressBlock, WireGuardAttachment,
    WireGuardAttachmentSpec, WireGuardAttachmentStatus, LABEL_NODE,
};
use wg_netns::{
    Attachment, Backend, Birthplace, Device, DeviceConfig, IfName, InterfaceSpec, IpNetwork, Netns,
    PresharedKey, PrivateKey, Route, Rtnl, SocketNamespace, Userspace, WgDevice,
};

use crate::desired;
use crate::index::{Dirty, Index, PodInfo};
use crate::ipam::{Ipam, IpamError};
use crate::keys::{KeyId, KeyStore};
use crate::local::{Key, LocalRecord, Records};
use crate::metrics::Metrics;
use crate::scope::Scope;
use crate::server::PluginConn;
use crate::settings::{Settings, UserspaceLaunch};
pub use error::AgentError;
pub use verify::Finding;

/// CNI error codes the agent answers with.
mod code {
    pub const INVALID_CONFIG: u32 = 7;
    pub const CHECK_MISMATCH: u32 = 4;
    pub const IO: u32 = 5;
    pub const TRY_AGAIN: u32 = 11;
}

fn fail(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Failure {
    Failure {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

fn failed(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Reply {
    Reply::Failed(fail(code, msg, details))
}

/// An interface the agent made, and what it last wrote to it.
pub struct Entry {
    /// Its record.
    pub rec: LocalRecord,
    place: Arc<Birthplace>,
    /// The interface; `None` when a restart found it missing (deleted
    /// while the agent was away): the next verify makes it again.
    attachment: Option<Attachment>,
    dev: Option<Arc<WgDevice>>,
    /// The device as last written or read (`None`: read it first).
    last: Option<Device>,
    routes: BTreeSet<IpNetwork>,
    /// How the link watch knows the pod's namespace (`links.rs`).
    heard_as: Option<links::LinkNs>,
    /// The status last written, and when.
    pub written: Option<(WireGuardAttachmentStatus, Instant)>,
}

impl Entry {
    /// A kept interface as made or reopened: nothing read, routed or
    /// written through it yet.
    fn new(
        rec: LocalRecord,
        place: Birthplace,
        attachment: Option<Attachment>,
        heard_as: Option<links::LinkNs>,
    ) -> Entry {
        Entry {
            rec,
            place: Arc::new(place),
            attachment,
            heard_as,
            dev: None,
            last: None,
            routes: BTreeSet::new(),
            written: None,
        }
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("rec", &self.rec)
            .field("attachment", &self.attachment)
            .finish_non_exhaustive()
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Entry>>>;

/// What the status writer is asked to do. Creations, deletions and
/// changes others depend on (key, addresses, endpoint, peers) go before
/// counter refreshes.
#[derive(Debug, Clone)]
pub enum Publish {
    /// Create or update the attachment object of this interface, and its
    /// status: something other nodes or users act on changed.
    Upsert(Key),
    /// Only the counters and handshakes changed (rate limited per
    /// attachment; written when nothing more urgent waits).
    Refresh(Key),
    /// Delete an attachment object, if it is still the one of pod
    /// `pod_uid`'s interface (its name may be another pod's by then).
    Delete {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The UID of the pod whose interface it describes.
        pod_uid: String,
    },
}

/// The agent.
pub struct Agent {
    /// Its settings.
    pub settings: Settings,
    client: Client,
    node: Netns,
    backend: Backend,
    userspace: Userspace,
    keys: KeyStore,
    records: Records,
    /// What is known of the cluster.
    pub index: Mutex<Index>,
    /// What the node's interfaces need watched (`crate::scope`).
    pub scope: Scope,
    slots: Mutex<BTreeMap<Key, Slot>>,
    ipam: tokio::sync::Mutex<BTreeMap<String, Ipam>>,
    ports: Mutex<BTreeSet<u16>>,
    psk_cache: Mutex<BTreeMap<SecretRef, Result<PresharedKey, peers::PeerProblem>>>,
    /// The Ready condition this agent last wrote to each peer.
    peer_status: Arc<Mutex<BTreeMap<(String, String), PeerReady>>>,
    /// Records whose interface could not be reopened at start: kept (and
    /// their addresses reserved) until gc knows whether their pod is gone.
    orphans: Mutex<Vec<LocalRecord>>,
    dirty: mpsc::UnboundedSender<Dirty>,
    publish: mpsc::UnboundedSender<Publish>,
    synced: AtomicBool,
    /// Told once when the caches sync (the timers then verify at once).
    pub(crate) synced_now: tokio::sync::Notify,
    /// Whether the warning that a plugin cannot start daemons was logged.
    warned_old_plugin: AtomicBool,
    /// UIDs of the pods reported as running without their interface
    /// (`optin.rs`).
    reported_missing: Mutex<BTreeSet<String>>,
    /// The metrics.
    pub metrics: Metrics,
    /// Failed reconciles waiting for their retry.
    retry: Retry,
    /// Interfaces whose pod the index no longer shows, since when.
    missing_since: Mutex<BTreeMap<Key, Instant>>,
    /// Each device's last counters as exported: kept for a device whose
    /// slot another job holds at a refresh, so its series do not vanish
    /// for that round.
    last_samples: Mutex<BTreeMap<Key, crate::metrics::DeviceSample>>,
    /// Peer endpoints' host names, resolved aside.
    resolver: Arc<resolve::Resolver>,
}

/// A preshared key's place: (namespace, Secret, data key).
type SecretRef = (String, String, String);

/// A peer's `Ready` condition as last written: (ok, reason, message).
type PeerReady = (bool, String, String);

/// The backoff of failed reconciles, per interface: 250 ms doubling to at
/// most 30 s, one pending retry at a time, forgotten on success.
#[derive(Debug, Default)]
struct Retry(Mutex<BTreeMap<Key, (u32, bool)>>);

impl Retry {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(250);
    const MAX: std::time::Duration = std::time::Duration::from_secs(30);

    /// A failure: the delay before the retry, or `None` when one is
    /// already pending.
    fn failed(&self, key: &Key) -> Option<std::time::Duration> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (n, pending) = m.entry(key.clone()).or_insert((0, false));
        if *pending {
            return None;
        }
        *pending = true;
        *n = n.saturating_add(1);
        Some(
            Self::FIRST
                .saturating_mul(1 << (*n - 1).min(16))
                .min(Self::MAX),
        )
    }

    /// The retry was queued.
    fn fired(&self, key: &Key) {
        if let Some(e) = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(key)
        {
            e.1 = false;
        }
    }

    /// A success: the backoff starts over.
    fn succeeded(&self, key: &Key) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.settings.node_name)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether UDP `port` is free on this namespace's wildcard addresses
/// (WireGuard binds both families).
fn port_free(port: u16) -> bool {
    let v4 = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).is_ok();
    // A host without IPv6 cannot bind [::]: that is not a conflict.
    let v6 = match std::net::UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, port)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AddrInUse,
    };
    v4 && v6
}

/// The WireGuardAttachment object of a pod interface.
pub fn object_name(pod: &str, interface: &str) -> String {
    let name = format!("{pod}-{interface}");
    if name.len() <= 253 {
        name
    } else {
        let birth = IfName::derived("x", &name)
            .map(|n| n.as_str().to_string())
            .unwrap_or_default();
        format!("{}-{birth}", &name[..200])
    }
}

impl Agent {
    /// An agent; `dirty` and `publish` are the channels of the reconcile
    /// loop and the status writer.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        client: Client,
        backend: Backend,
        userspace: Userspace,
        keys: KeyStore,
        records: Records,
        dirty: mpsc::UnboundedSender<Dirty>,
        publish: mpsc::UnboundedSender<Publish>,
        metrics: Metrics,
    ) -> Result<Agent, wg_netns::Error> {
        Ok(Agent {
            settings,
            client,
            node: Netns::current()?,
            backend,
            userspace,
            keys,
            records,
            index: Mutex::new(Index::default()),
            scope: Scope::default(),
            slots: Mutex::new(BTreeMap::new()),
            ipam: tokio::sync::Mutex::new(BTreeMap::new()),
            ports: Mutex::new(BTreeSet::new()),
            psk_cache: Mutex::new(BTreeMap::new()),
            peer_status: Arc::new(Mutex::new(BTreeMap::new())),
            retry: Retry::default(),
            missing_since: Mutex::new(BTreeMap::new()),
            last_samples: Mutex::new(BTreeMap::new()),
            resolver: Arc::new(resolve::Resolver::default()),
            orphans: Mutex::new(Vec::new()),
            dirty,
            publish,
            synced: AtomicBool::new(false),
            synced_now: tokio::sync::Notify::new(),
            warned_old_plugin: AtomicBool::new(false),
            reported_missing: Mutex::new(BTreeSet::new()),
            metrics,
        })
    }

    /// The apiserver client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The held interfaces whose entry `pred` accepts, without waiting: a
    /// slot another job holds right now counts as `busy` says.
    fn keys_where(&self, busy: bool, pred: impl Fn(&Key, &Entry) -> bool) -> Vec<Key> {
        let slots: Vec<(Key, Slot)> = self
            .slots()
            .iter()
            .map(|(k, s)| (k.clone(), Arc::clone(s)))
            .collect();
        slots
            .into_iter()
            .filter(|(k, s)| match s.try_lock() {
                Ok(g) => g.as_ref().is_some_and(|e| pred(k, e)),
                Err(_) => busy,
            })
            .map(|(k, _)| k)
            .collect()
    }

    /// Mark changes for the reconcile loop.
    pub fn mark(&self, dirty: Vec<Dirty>) {
        for d in dirty {
            let _ = self.dirty.send(d);
        }
    }

    /// Whether every watch has listed once (before that, the agent does
    /// not know the full set of peers and never removes one).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The watches have listed once.
    pub fn set_synced(&self) {
        if !self.synced.swap(true, Ordering::AcqRel) {
            info!("caches synced; reconciling every interface");
            self.mark(vec![Dirty::All]);
            // A permit is kept if the timers are not waiting yet.
            self.synced_now.notify_one();
        }
    }

    /// Stop holding interface `key`: its slot goes, and with it what it
    /// needed watched.
    fn drop_slot(&self, key: &Key) {
        self.slots().remove(key);
        self.scope.unpin(key);
    }

    /// The interfaces the agent holds.
    pub fn keys(&self) -> Vec<Key> {
        self.slots().keys().cloned().collect()
    }

    /// One interface's slot.
    pub fn slot(&self, key: &Key) -> Option<Slot> {
        self.slots().get(key).cloned()
    }

    // ------------------------------------------------------------ restart

    /// Reopen every recorded interface (agent start). An interface whose
    /// namespace is there but whose link is not (deleted while the agent
    /// was away) is kept, to be made again by the verify that runs once
    /// the caches sync; one whose namespace cannot be opened is an orphan
    /// (gc decides). Nothing is touched here.
    pub async fn restore(self: &Arc<Self>) {
        let (recs, bad) = self.records.load_all();
        for e in bad {
            warn!(error = %e, "unreadable attachment record left in place");
        }
        for rec in recs {
            let Some(key) = rec.key() else { continue };
            let me = Arc::clone(self);
            let r = rec.clone();
            let opened = tokio::task::spawn_blocking(move || me.reopen(&r)).await;
            match opened {
                Ok(Ok((place, attachment, heard_as))) => {
                    // Its addresses are re-reserved when the network's
                    // allocator is built (from the records: build_ipam).
                    self.ports_lock().insert(rec.listen_port);
                    let pod = format!("{}/{}", rec.namespace, rec.pod);
                    if attachment.is_some() {
                        info!(attachment = %key, pod = %pod, "restored");
                    } else {
                        warn!(attachment = %key, pod = %pod,
                            "restored without its interface (deleted while the agent was away): \
                             the verify makes it again");
                    }
                    self.scope.pin(&key, &rec.network, &rec.namespace);
                    let entry = Entry::new(rec.clone(), place, attachment, heard_as);
                    self.slots()
                        .insert(key.clone(), Arc::new(tokio::sync::Mutex::new(Some(entry))));
                }
                Ok(Err(e)) => {
                    // Gone with its pod, or out of this agent's sight (a
                    // namespace directory not mounted): gc decides once
                    // the pods are known, and until then its addresses
                    // stay reserved.
                    warn!(attachment = %key, error = %e, "cannot reopen a recorded interface");
                    self.orphans
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(rec);
                }
                Err(e) => warn!(attachment = %key, error = %e, "restore task failed"),
            }
        }
        self.metrics.devices.set(self.slots().len() as i64);
    }

    /// Hold an interface made elsewhere, as if this agent had made it: its
    /// record is saved, its port taken, its network's and namespace's
    /// watches started, a reconcile of it queued, and from now on it is
    /// reconciled, verified and collected like every other. For a runtime that made the interface
    /// itself, and for the simulation of many nodes in one process
    /// (`tests/sim/`: userspace devices answering on their control
    /// sockets, in the agent's own namespace). Blocking (the link watch
    /// may ask the kernel for the pod namespace's id).
    pub fn hold(
        &self,
        rec: LocalRecord,
        place: Birthplace,
        attachment: Attachment,
    ) -> Result<Key, AgentError> {
        let key = rec
            .key()
            .ok_or_else(|| AgentError::Unnamed(rec.pod_uid.clone()))?;
        self.records.save(&rec)?;
        self.ports_lock().insert(rec.listen_port);
        self.scope.pin(&key, &rec.network, &rec.namespace);
        let heard_as = links::link_ns(&self.node, &place);
        let entry = Entry::new(rec, place, Some(attachment), heard_as);
        self.slots()
            .insert(key.clone(), Arc::new(tokio::sync::Mutex::new(Some(entry))));
        self.metrics.devices.set(self.slots().len() as i64);
        // Made to the cluster's state at once, not at the next change or
        // verify: the watches it pinned may be listed already.
        self.mark(vec![Dirty::Pod(key.pod_uid().to_string())]);
        Ok(key)
    }

    /// The recorded interface's birthplace, and the interface if its link
    /// is there.
    fn reopen(
        &self,
        rec: &LocalRecord,
    ) -> Result<(Birthplace, Option<Attachment>, Option<links::LinkNs>), wg_netns::Error> {
        let pod = Netns::from_path(&rec.attachment.netns)?;
        let backend = rec.attachment.backend(&self.userspace);
        let place =
            Birthplace::for_container(&self.node, &pod, rec.attachment.socket_namespace, &backend)?;
        let found = place.find(&rec.attachment.interface, &rec.attachment.birth_name)?;
        let heard_as = links::link_ns(&self.node, &place);
        Ok((place, found, heard_as))
    }

    fn ports_lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u16>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }
}

mod addresses;
mod cni;
mod error;
mod gc;
pub mod links;
mod optin;
pub mod peers;
mod publish;
mod reconcile;
mod resolve;
mod verify;

#[cfg(test)]
pub(crate) mod tests;
