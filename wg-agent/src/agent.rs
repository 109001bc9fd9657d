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
use wg_cni::managed::{Attached, Failure, LaunchNamespace, PodRef, Reply, Request, Verb};
use wg_k8s_types::{
    AttachmentPeerStatus, EndpointString, FailurePolicy, Mtu, NetworkConfig, WireGuardAddressBlock,
    WireGuardAttachment, WireGuardAttachmentSpec, WireGuardAttachmentStatus, LABEL_NODE,
};
use wg_netns::{
    Attachment, Backend, Birthplace, Device, DeviceConfig, DeviceStats, IfName, InterfaceSpec,
    IpNetwork, Netns, PresharedKey, PrivateKey, Route, Rtnl, SocketNamespace, Userspace, WgDevice,
};

use crate::desired::{self, ExternalPeer};
use crate::index::{Dirty, Index, PodInfo};
use crate::ipam::{Ipam, IpamError};
use crate::keys::{KeyId, KeyStore};
use crate::local::{Key, LocalRecord, Records};
use crate::metrics::Metrics;
use crate::server::PluginConn;
use crate::settings::{Settings, UserspaceLaunch};

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
    attachment: Attachment,
    dev: Option<Arc<WgDevice>>,
    /// The device as last written or read (`None`: read it first).
    last: Option<Device>,
    routes: BTreeSet<IpNetwork>,
    /// The last counters read.
    pub stats: Option<DeviceStats>,
    /// The status last written, and when.
    pub written: Option<(WireGuardAttachmentStatus, Instant)>,
}

impl Entry {
    /// A kept interface as made or reopened: nothing read, routed or
    /// written through it yet.
    fn new(rec: LocalRecord, place: Birthplace, attachment: Attachment) -> Entry {
        Entry {
            rec,
            place: Arc::new(place),
            attachment,
            dev: None,
            last: None,
            routes: BTreeSet::new(),
            stats: None,
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
    slots: Mutex<BTreeMap<Key, Slot>>,
    ipam: tokio::sync::Mutex<BTreeMap<String, Ipam>>,
    ports: Mutex<BTreeSet<u16>>,
    psk_cache: Mutex<BTreeMap<(String, String, String), Option<PresharedKey>>>,
    /// Records whose interface could not be reopened at start: kept (and
    /// their addresses reserved) until gc knows whether their pod is gone.
    orphans: Mutex<Vec<LocalRecord>>,
    dirty: mpsc::UnboundedSender<Dirty>,
    publish: mpsc::UnboundedSender<Publish>,
    synced: AtomicBool,
    /// Whether the warning that a plugin cannot start daemons was logged.
    warned_old_plugin: AtomicBool,
    /// The metrics.
    pub metrics: Metrics,
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
            slots: Mutex::new(BTreeMap::new()),
            ipam: tokio::sync::Mutex::new(BTreeMap::new()),
            ports: Mutex::new(BTreeSet::new()),
            psk_cache: Mutex::new(BTreeMap::new()),
            orphans: Mutex::new(Vec::new()),
            dirty,
            publish,
            synced: AtomicBool::new(false),
            warned_old_plugin: AtomicBool::new(false),
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
        }
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

    /// Reopen every recorded interface (agent start). Interfaces whose
    /// namespace is gone are removed; nothing else is touched.
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
                Ok(Ok((place, attachment))) => {
                    // Its addresses are re-reserved when the network's
                    // allocator is built (from the slots: build_ipam).
                    self.ports_lock().insert(rec.listen_port);
                    let entry = Entry::new(rec.clone(), place, attachment);
                    self.slots()
                        .insert(key.clone(), Arc::new(tokio::sync::Mutex::new(Some(entry))));
                    info!(attachment = %key, pod = %format!("{}/{}", rec.namespace, rec.pod), "restored");
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

    fn reopen(&self, rec: &LocalRecord) -> Result<(Birthplace, Attachment), wg_netns::Error> {
        let pod = Netns::from_path(&rec.attachment.netns)?;
        let backend = rec.attachment.backend(&self.userspace);
        let place =
            Birthplace::for_container(&self.node, &pod, rec.attachment.socket_namespace, &backend)?;
        let found = place
            .find(&rec.attachment.interface, &rec.attachment.birth_name)?
            .ok_or_else(|| wg_netns::Error::NotFound {
                what: wg_netns::error::Object::Link,
                name: rec.attachment.interface.to_string(),
            })?;
        Ok((place, found))
    }

    fn ports_lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u16>> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ------------------------------------------------------------ CNI

    /// Answer one request of the plugin, starting any daemon itself.
    pub async fn handle(self: &Arc<Self>, req: Request, netns: Option<OwnedFd>) -> Reply {
        self.handle_with(req, netns, None).await
    }

    /// Answer one request of the plugin; `plugin`, the request's
    /// connection when its plugin can start daemons (an ADD of protocol
    /// version 2 or later), is asked to when the settings say so
    /// ([`UserspaceLaunch::Plugin`]).
    pub async fn handle_with(
        self: &Arc<Self>,
        req: Request,
        netns: Option<OwnedFd>,
        plugin: Option<Arc<PluginConn>>,
    ) -> Reply {
        let started = Instant::now();
        let verb = req.verb;
        let reply = match verb {
            Verb::Add => self.add(req, netns, plugin).await,
            Verb::Del => self.del(req).await,
            Verb::Check => self.check(req).await,
        };
        let outcome = match &reply {
            Reply::Failed(_) => "error",
            Reply::Skipped { .. } => "skipped",
            _ => "ok",
        };
        self.metrics
            .cni_request(verb, outcome, started.elapsed().as_secs_f64());
        reply
    }

    /// The pod a request is about, from the cache or the apiserver.
    async fn pod_of(&self, pod: &PodRef) -> Result<PodInfo, Failure> {
        if let Some(p) = self.index().pod_info(&pod.namespace, &pod.name).cloned() {
            if pod.uid.as_deref().is_none_or(|u| u == p.uid) {
                return Ok(p);
            }
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        match api.get(&pod.name).await {
            Ok(p) => PodInfo::of(&p)
                .ok_or_else(|| fail(code::TRY_AGAIN, "the pod has no UID yet", pod.name.clone())),
            Err(e) => {
                self.metrics.apiserver_error("get_pod");
                Err(fail(
                    code::TRY_AGAIN,
                    format!("cannot read pod {}/{}", pod.namespace, pod.name),
                    e.to_string(),
                ))
            }
        }
    }

    fn network_config(&self, name: &str) -> Result<NetworkConfig, Failure> {
        match self.index().networks.get(name) {
            Some(Ok(c)) => Ok(c.clone()),
            Some(Err(why)) => Err(fail(
                code::INVALID_CONFIG,
                format!("WireGuardNetwork {name} is invalid"),
                why.clone(),
            )),
            None => Err(fail(
                code::TRY_AGAIN,
                format!("WireGuardNetwork {name} is not known (yet)"),
                "create it, or wait for the agent's watch to see it",
            )),
        }
    }

    /// The backend an ADD makes its device with: the agent's, or, for a
    /// userspace device when the settings say `plugin` and the request's
    /// plugin can, the agent's with its daemon started by the plugin, in
    /// the namespace the device is born in (`socket`: the node's or the
    /// pod's, as [`Birthplace::for_container`] chooses). A request whose
    /// plugin cannot (protocol 1) gets the agent's, with one warning.
    fn launch_backend(
        &self,
        socket: SocketNamespace,
        plugin: Option<&Arc<PluginConn>>,
        req: &Request,
    ) -> Backend {
        let Backend::Userspace(u) = &self.backend else {
            return self.backend.clone();
        };
        if self.settings.userspace_launch != UserspaceLaunch::Plugin {
            return self.backend.clone();
        }
        let Some(plugin) = plugin else {
            if !self.warned_old_plugin.swap(true, Ordering::AcqRel) {
                warn!(
                    version = req.version,
                    container = %req.container_id,
                    "WG_AGENT_USERSPACE_LAUNCH=plugin, but this plugin's protocol cannot start \
                     daemons: the agent starts them as its children until wg-cni is upgraded \
                     (they stop with the agent's container); logged once"
                );
            }
            return self.backend.clone();
        };
        let namespace = match socket {
            SocketNamespace::Host => LaunchNamespace::Node,
            SocketNamespace::Container => LaunchNamespace::Pod,
        };
        Backend::Userspace(u.clone().with_launcher(plugin.launcher(namespace)))
    }

    /// ADD.
    async fn add(
        self: &Arc<Self>,
        req: Request,
        netns: Option<OwnedFd>,
        plugin: Option<Arc<PluginConn>>,
    ) -> Reply {
        let Some(pod_ref) = req.pod.clone() else {
            return failed(
                code::INVALID_CONFIG,
                "managed mode needs the pod's identity",
                "CNI_ARGS has no K8S_POD_NAMESPACE and K8S_POD_NAME",
            );
        };
        let Some(fd) = netns else {
            return failed(code::IO, "no network namespace was passed", req.netns_path);
        };
        let pod = match self.pod_of(&pod_ref).await {
            Ok(p) => p,
            Err(r) => return Reply::Failed(r),
        };
        let Some(network) = req.network.clone().or_else(|| pod.network.clone()) else {
            return Reply::Skipped {
                reason: format!(
                    "pod {}/{} asks for no WireGuard network",
                    pod_ref.namespace, pod_ref.name
                ),
            };
        };
        let net = match self.network_config(&network) {
            Ok(n) => n,
            Err(r) => return Reply::Failed(r),
        };
        let iface = net.interface_name.clone();
        let Some(key) = Key::new(&pod.uid, iface.as_str()) else {
            return failed(code::INVALID_CONFIG, "unusable pod UID", pod.uid.clone());
        };
        let slot = {
            let mut slots = self.slots();
            Arc::clone(
                slots
                    .entry(key.clone())
                    .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None))),
            )
        };
        let mut guard = slot.lock().await;
        match self
            .add_locked(
                &mut guard,
                &key,
                &req,
                &pod_ref,
                &pod,
                &network,
                &net,
                fd,
                plugin.as_ref(),
            )
            .await
        {
            Ok(a) => {
                let _ = self.publish.send(Publish::Upsert(key.clone()));
                self.metrics.devices.set(self.slots().len() as i64);
                Reply::Attached(a)
            }
            Err(r) => {
                if guard.is_none() {
                    drop(guard);
                    self.slots().remove(&key);
                }
                Reply::Failed(r)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn add_locked(
        self: &Arc<Self>,
        slot: &mut Option<Entry>,
        key: &Key,
        req: &Request,
        pod_ref: &PodRef,
        pod: &PodInfo,
        network: &str,
        net: &NetworkConfig,
        fd: OwnedFd,
        plugin: Option<&Arc<PluginConn>>,
    ) -> Result<Attached, Failure> {
        // Addresses and a port: the existing ones on a repeated ADD.
        let (addresses, port, fresh) = match slot.as_ref() {
            Some(e) => (e.rec.addresses.clone(), e.rec.listen_port, false),
            None => {
                let addrs = self.allocate(network, net, key).await?;
                let port = match self.take_port(net) {
                    Some(p) => p,
                    None => {
                        self.release(network, key).await;
                        return Err(fail(
                            code::TRY_AGAIN,
                            format!("network {network} has no free listen port on this node"),
                            format!(
                                "all of {}..={} are in use",
                                net.listen_ports.from, net.listen_ports.to
                            ),
                        ));
                    }
                };
                (addrs, port, true)
            }
        };
        let undo = |me: Arc<Self>| async move {
            if fresh {
                me.release(network, key).await;
                me.ports_lock().remove(&port);
            }
        };
        let kid = match KeyId::new(&pod.uid, net.interface_name.as_str()) {
            Ok(k) => k,
            Err(e) => {
                undo(Arc::clone(self)).await;
                return Err(fail(code::INVALID_CONFIG, "unusable key id", e.to_string()));
            }
        };
        let (private, _) = match self.keys.get_or_create(&kid, &pod.rotation) {
            Ok(k) => k,
            Err(e) => {
                undo(Arc::clone(self)).await;
                return Err(fail(code::IO, "cannot store the pod's key", e.to_string()));
            }
        };
        let public_key = private.public_key();
        let desired = if self.is_synced() {
            Some(
                self.desired_for(
                    network,
                    &pod_ref.namespace,
                    pod,
                    &public_key,
                    &addresses,
                    net,
                )
                .await,
            )
        } else {
            None
        };
        let birth = match IfName::derived("wga", key.as_str()) {
            Ok(b) => b,
            Err(e) => {
                undo(Arc::clone(self)).await;
                return Err(fail(code::IO, "cannot name the interface", e.to_string()));
            }
        };
        let mut device = desired
            .as_ref()
            .map(|d| d.device.clone())
            .unwrap_or_else(DeviceConfig::new);
        device = device.private_key(private).listen_port(port);
        let routes: BTreeSet<IpNetwork> = desired
            .as_ref()
            .map(|d| d.routes.clone())
            .unwrap_or_else(|| net.routes.iter().copied().collect());
        let mut spec = InterfaceSpec::new(birth, net.interface_name.clone()).device(device);
        for a in &addresses {
            spec = spec.address(*a);
        }
        for r in &routes {
            spec = spec.route(Route::new(*r));
        }
        let me = Arc::clone(self);
        let socket_ns = net.socket_namespace;
        let backend = self.launch_backend(socket_ns, plugin, req);
        let mtu = net.mtu;
        let netns_path = req.netns_path.clone();
        let node_ip = self.settings.node_ip;
        let made = tokio::task::spawn_blocking(move || {
            let pod_ns = Netns::from_fd(fd, &netns_path)?;
            let place = Birthplace::for_container(&me.node, &pod_ns, socket_ns, &backend)?;
            if let Mtu::Bytes(b) = mtu {
                spec = spec.mtu(u32::from(b));
            } else if let Ok(m) = place.underlay_mtu(node_ip) {
                spec = spec.mtu(m.saturating_sub(80).max(1280));
            }
            let done = place.ensure(&spec)?;
            // The place is kept for reconciles and repairs, which happen
            // outside any CNI request: with the agent's own backend, so a
            // daemon a repair recreates is the agent's child (until the
            // pod's next ADD), and the plugin's connection is not held.
            let place = place.with_backend(me.backend.clone());
            let dev = place.device(&done.attachment)?;
            // The device's state is read by the first reconcile, off the
            // pod's critical path.
            Ok::<_, wg_netns::Error>((place, done, dev))
        })
        .await;
        let (place, done, dev) = match made {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                undo(Arc::clone(self)).await;
                return Err(fail(
                    code::IO,
                    "cannot make the WireGuard interface",
                    e.to_string(),
                ));
            }
            Err(e) => {
                undo(Arc::clone(self)).await;
                return Err(fail(code::IO, "internal error", e.to_string()));
            }
        };
        let attachment = done.attachment.clone();
        let record = LocalRecord {
            network: network.to_string(),
            namespace: pod_ref.namespace.clone(),
            pod: pod_ref.name.clone(),
            pod_uid: pod.uid.clone(),
            container_id: req.container_id.clone(),
            cni_ifname: req.ifname.clone(),
            addresses: addresses.clone(),
            listen_port: port,
            public_key,
            key_generation: pod.rotation.clone(),
            attachment: wg_netns::AttachmentRecord {
                interface: attachment.name.clone(),
                birth_name: attachment.birth_name.clone(),
                netns: req.netns_path.clone().into(),
                socket_namespace: socket_ns,
                backend: attachment.kind,
                userspace_implementation: self.userspace.resolve(),
            },
            created: slot.as_ref().map(|e| e.rec.created).unwrap_or_else(now),
        };
        if let Err(e) = self.records.save(&record) {
            let place2 = Arc::new(place);
            let a = attachment.clone();
            let _ =
                tokio::task::spawn_blocking(move || place2.detach(&a.name, &a.birth_name)).await;
            undo(Arc::clone(self)).await;
            return Err(fail(
                code::IO,
                "cannot save the attachment record",
                e.to_string(),
            ));
        }
        info!(
            attachment = %key,
            pod = %format!("{}/{}", pod_ref.namespace, pod_ref.name),
            network,
            created = done.created,
            addresses = ?addresses,
            port,
            "attached"
        );
        *slot = Some(Entry {
            dev: Some(Arc::new(dev)),
            routes,
            ..Entry::new(record, place, attachment.clone())
        });
        Ok(Attached::new(
            network.to_string(),
            attachment.name.to_string(),
            addresses,
            slot.as_ref()
                .map(|e| e.routes.iter().copied().collect())
                .unwrap_or_default(),
            attachment.mtu,
            public_key,
        ))
    }

    /// An address per pool for `key`, claiming blocks as needed.
    async fn allocate(
        self: &Arc<Self>,
        network: &str,
        net: &NetworkConfig,
        key: &Key,
    ) -> Result<Vec<IpNetwork>, Failure> {
        let mut ipam = self.ipam.lock().await;
        if !ipam.contains_key(network) {
            let fresh = self
                .build_ipam(network, net)
                .await
                .map_err(|e| fail(code::TRY_AGAIN, "address allocator not ready", e))?;
            ipam.insert(network.to_string(), fresh);
        }
        let Some(alloc) = ipam.get_mut(network) else {
            return Err(fail(code::IO, "internal error", "allocator vanished"));
        };
        for _ in 0..8 {
            match alloc.allocate(key.as_str()) {
                Ok(a) => {
                    // Claim the next block ahead of need, so pods keep
                    // getting addresses while the apiserver is briefly away.
                    let low: Vec<IpNetwork> = net
                        .pools
                        .iter()
                        .map(|(p, _)| *p)
                        .filter(|p| alloc.wants_block(p))
                        .collect();
                    if !low.is_empty() {
                        let me = Arc::clone(self);
                        let (network, net) = (network.to_string(), net.clone());
                        tokio::spawn(async move { me.claim_ahead(&network, &net, &low).await });
                    }
                    return Ok(a);
                }
                Err(IpamError::NeedBlock { pool, .. }) => {
                    let size = net
                        .pools
                        .iter()
                        .find(|(p, _)| *p == pool)
                        .map(|(_, s)| *s)
                        .unwrap_or(26);
                    let api: Api<WireGuardAddressBlock> = Api::all(self.client.clone());
                    let taken: BTreeSet<IpNetwork> = alloc.blocks().into_iter().collect();
                    match crate::blocks::claim(
                        &api,
                        network,
                        pool,
                        size,
                        &self.settings.node_name,
                        &taken,
                    )
                    .await
                    {
                        Ok(Some(block)) => {
                            info!(network, block = %block, "claimed an address block");
                            let _ = alloc.add_block(block);
                        }
                        Ok(None) => {
                            return Err(fail(
                                code::TRY_AGAIN,
                                format!("address pool {pool} of network {network} is exhausted"),
                                "no block is free",
                            ))
                        }
                        Err(e) => {
                            self.metrics.apiserver_error("claim_block");
                            return Err(fail(
                                code::TRY_AGAIN,
                                format!("cannot claim an address block of {pool}"),
                                e.to_string(),
                            ));
                        }
                    }
                }
                Err(e) => return Err(fail(code::IO, "address allocation failed", e.to_string())),
            }
        }
        Err(fail(
            code::TRY_AGAIN,
            "address allocation did not converge",
            network.to_string(),
        ))
    }

    /// Claim one more block of each of `pools` (run in the background
    /// when a pool's free addresses on this node run low).
    async fn claim_ahead(&self, network: &str, net: &NetworkConfig, pools: &[IpNetwork]) {
        let api: Api<WireGuardAddressBlock> = Api::all(self.client.clone());
        for pool in pools {
            let size = net
                .pools
                .iter()
                .find(|(p, _)| p == pool)
                .map(|(_, s)| *s)
                .unwrap_or(26);
            let mut ipam = self.ipam.lock().await;
            let Some(alloc) = ipam.get_mut(network) else {
                return;
            };
            if !alloc.wants_block(pool) {
                continue;
            }
            let taken: BTreeSet<IpNetwork> = alloc.blocks().into_iter().collect();
            match crate::blocks::claim(&api, network, *pool, size, &self.settings.node_name, &taken)
                .await
            {
                Ok(Some(block)) => {
                    info!(network, block = %block, "claimed an address block ahead of need");
                    let _ = alloc.add_block(block);
                }
                Ok(None) => {}
                Err(e) => {
                    self.metrics.apiserver_error("claim_block");
                    debug!(network, error = %e, "cannot claim a block ahead of need");
                }
            }
        }
    }

    async fn release(&self, network: &str, key: &Key) {
        if let Some(a) = self.ipam.lock().await.get_mut(network) {
            a.release(key.as_str());
        }
    }

    /// A port of the network's range no interface of this agent holds
    /// and, for sockets on the node, no other program has bound (the
    /// agent runs in the node's network namespace: it tries the port).
    fn take_port(&self, net: &NetworkConfig) -> Option<u16> {
        let mut used = self.ports_lock();
        let on_node = net.socket_namespace == wg_netns::SocketNamespace::Host;
        let p = net
            .listen_ports
            .ports()
            .find(|p| !used.contains(p) && (!on_node || port_free(*p)))?;
        used.insert(p);
        Some(p)
    }

    /// DEL: whatever is already gone is success.
    async fn del(self: &Arc<Self>, req: Request) -> Reply {
        let found = self.slots().iter().find_map(|(k, s)| {
            let g = s.try_lock().ok()?;
            let e = g.as_ref()?;
            (e.rec.container_id == req.container_id && e.rec.cni_ifname == req.ifname)
                .then(|| k.clone())
        });
        // A slot busy with another request: look for it by the pod.
        let found = found.or_else(|| {
            let uid = req.pod.as_ref()?.uid.clone()?;
            self.slots().keys().find(|k| k.pod_uid() == uid).cloned()
        });
        let Some(key) = found else {
            return Reply::Done;
        };
        let Some(slot) = self.slot(&key) else {
            return Reply::Done;
        };
        let mut guard = slot.lock().await;
        let Some(entry) = guard.take() else {
            return Reply::Done;
        };
        if entry.rec.container_id != req.container_id {
            // Another sandbox of the same pod now owns it.
            *guard = Some(entry);
            return Reply::Done;
        }
        let rec = entry.rec.clone();
        drop(entry);
        let path = (!req.netns_path.is_empty()).then(|| req.netns_path.clone());
        match self.forget(&rec, path).await {
            Ok(()) => {
                drop(guard);
                self.slots().remove(&key);
                self.metrics.devices.set(self.slots().len() as i64);
                Reply::Done
            }
            Err(e) => failed(code::IO, "cannot remove the WireGuard interface", e),
        }
    }

    /// Remove an interface and give back what it held.
    async fn forget(&self, rec: &LocalRecord, netns: Option<String>) -> Result<(), String> {
        let node = match self.node.try_clone() {
            Ok(n) => n,
            Err(e) => return Err(e.to_string()),
        };
        let r = rec.attachment.clone();
        let userspace = self.userspace.clone();
        let detached = tokio::task::spawn_blocking(move || {
            r.detach_in(
                &node,
                netns.as_deref().map(std::path::Path::new),
                &userspace,
            )
        })
        .await
        .map_err(|e| e.to_string())?;
        detached.map_err(|e| e.to_string())?;
        if let Some(key) = rec.key() {
            self.release(&rec.network, &key).await;
            if let Ok(kid) = KeyId::new(&rec.pod_uid, rec.attachment.interface.as_str()) {
                if let Err(e) = self.keys.remove(&kid) {
                    warn!(attachment = %key, error = %e, "cannot remove the key file");
                }
            }
            if let Err(e) = self.records.remove(&key) {
                warn!(attachment = %key, error = %e, "cannot remove the record");
            }
        }
        self.ports_lock().remove(&rec.listen_port);
        let _ = self.publish.send(Publish::Delete {
            namespace: rec.namespace.clone(),
            name: object_name(&rec.pod, rec.attachment.interface.as_str()),
            pod_uid: rec.pod_uid.clone(),
        });
        info!(pod = %format!("{}/{}", rec.namespace, rec.pod), interface = %rec.attachment.interface, "detached");
        Ok(())
    }

    /// CHECK: the interface exists and matches the resources.
    async fn check(self: &Arc<Self>, req: Request) -> Reply {
        let key = self.slots().iter().find_map(|(k, s)| {
            let g = s.try_lock().ok()?;
            let e = g.as_ref()?;
            (e.rec.container_id == req.container_id).then(|| k.clone())
        });
        let Some(key) = key else {
            return match req.pod.as_ref() {
                Some(p) => match self.pod_of(p).await {
                    Ok(info) if req.network.is_none() && info.network.is_none() => Reply::Done,
                    _ => failed(
                        code::CHECK_MISMATCH,
                        "no WireGuard interface for this container",
                        req.container_id,
                    ),
                },
                None => failed(code::CHECK_MISMATCH, "no interface", req.container_id),
            };
        };
        match self.verify_one(&key, false).await {
            Ok(drift) if drift.is_empty() => Reply::Done,
            Ok(drift) => failed(
                code::CHECK_MISMATCH,
                "the interface differs from its resources",
                drift.join("; "),
            ),
            Err(e) => failed(code::IO, "cannot check the interface", e),
        }
    }

    // ------------------------------------------------------------ desired

    async fn desired_for(
        &self,
        network: &str,
        namespace: &str,
        pod: &PodInfo,
        own: &wg_netns::PublicKey,
        addresses: &[IpNetwork],
        net: &NetworkConfig,
    ) -> desired::Desired {
        let (mesh, peers) = {
            let idx = self.index();
            let mesh = if net.mesh {
                idx.mesh_of(network)
                    .into_iter()
                    .filter(|m| m.pod_uid != pod.uid)
                    .collect()
            } else {
                Vec::new()
            };
            (mesh, idx.peers_of(network, namespace))
        };
        let mut ext = Vec::new();
        for p in peers
            .iter()
            .filter(|p| desired::selects(p.selector.as_ref(), &pod.labels))
        {
            let psk = match &p.config.preshared_key_secret_ref {
                Some(r) => match self.psk(namespace, r.name.as_str(), &r.key).await {
                    Some(k) => Some(k),
                    // Without its key the peer cannot talk anyway; leaving
                    // it out is safer than configuring it without one.
                    None => continue,
                },
                None => None,
            };
            let endpoint = match &p.config.endpoint {
                Some(e) => match e.address() {
                    Some(a) => Some(a),
                    None => {
                        let e = e.clone();
                        tokio::task::spawn_blocking(move || e.resolve().ok())
                            .await
                            .ok()
                            .flatten()
                    }
                },
                None => None,
            };
            ext.push(ExternalPeer {
                public_key: p.config.public_key,
                endpoint,
                allowed_ips: p.config.allowed_ips.clone(),
                persistent_keepalive: p.config.persistent_keepalive,
                preshared_key: psk,
            });
        }
        let own_nets: Vec<IpNetwork> = addresses.iter().map(|a| wg_netns::normalize(*a)).collect();
        desired::compute(
            own,
            &own_nets,
            &mesh,
            net.persistent_keepalive,
            &ext,
            &net.routes,
        )
    }

    /// A preshared key from a Secret (cached; `None`: missing or invalid,
    /// reported once).
    async fn psk(&self, namespace: &str, name: &str, key: &str) -> Option<PresharedKey> {
        let id = (namespace.to_string(), name.to_string(), key.to_string());
        if let Some(v) = self
            .psk_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return v.clone();
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let value = match api.get(name).await {
            Ok(s) => s
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|b| {
                    std::str::from_utf8(&b.0)
                        .ok()
                        .map(str::trim)
                        .map(str::to_string)
                })
                .and_then(|t| PresharedKey::from_base64(&t).ok()),
            Err(e) => {
                self.metrics.apiserver_error("get_secret");
                warn!(secret = %format!("{namespace}/{name}"), error = %e, "cannot read a preshared key Secret");
                None
            }
        };
        if value.is_none() {
            warn!(secret = %format!("{namespace}/{name}"), key, "the Secret has no valid preshared key under this key");
        }
        self.psk_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, value.clone());
        value
    }

    /// Forget cached Secrets (a peer changed, or the periodic verify).
    pub fn forget_secrets(&self) {
        self.psk_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    // ------------------------------------------------------------ reconcile

    /// The interfaces a set of changes touches.
    pub fn affected(&self, dirty: &BTreeSet<Dirty>) -> Vec<Key> {
        if dirty.contains(&Dirty::All) {
            return self.keys();
        }
        let slots: Vec<(Key, Slot)> = self
            .slots()
            .iter()
            .map(|(k, s)| (k.clone(), Arc::clone(s)))
            .collect();
        slots
            .into_iter()
            .filter(|(k, s)| {
                let Ok(g) = s.try_lock() else {
                    // Busy (an ADD in progress): it computes its own.
                    return true;
                };
                let Some(e) = g.as_ref() else { return false };
                dirty.iter().any(|d| match d {
                    Dirty::All => true,
                    Dirty::Network(n) => *n == e.rec.network,
                    Dirty::Peers { network, namespace } => {
                        *network == e.rec.network && *namespace == e.rec.namespace
                    }
                    Dirty::Pod(uid) => k.pod_uid() == uid,
                })
            })
            .map(|(k, _)| k)
            .collect()
    }

    /// Bring the interfaces `dirty` touches to what the resources say,
    /// sending each device only the difference from what was last written.
    pub async fn reconcile(self: &Arc<Self>, dirty: &BTreeSet<Dirty>) {
        if !self.is_synced() {
            return;
        }
        let started = Instant::now();
        let keys = self.affected(dirty);
        use futures::StreamExt;
        futures::stream::iter(keys)
            .for_each_concurrent(4, |key| {
                let me = Arc::clone(self);
                async move {
                    if let Err(e) = me.reconcile_one(&key).await {
                        warn!(attachment = %key, error = %e, "reconcile failed");
                        me.metrics.reconcile_errors.inc();
                    }
                }
            })
            .await;
        self.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    async fn reconcile_one(self: &Arc<Self>, key: &Key) -> Result<(), String> {
        let Some(slot) = self.slot(key) else {
            return Ok(());
        };
        let mut guard = slot.lock().await;
        let Some(entry) = guard.as_mut() else {
            return Ok(());
        };
        let net = match self.network_config(&entry.rec.network) {
            Ok(n) => n,
            // The network is gone or invalid: keep the interface as it is
            // (removing a pod's network under it is the pod's deletion's job).
            Err(_) => return Ok(()),
        };
        let pod = self
            .index()
            .pod_info(&entry.rec.namespace, &entry.rec.pod)
            .cloned();
        let Some(pod) = pod.filter(|p| p.uid == entry.rec.pod_uid) else {
            return Ok(());
        };
        let rotated = pod.rotation != entry.rec.key_generation;
        let private = self.recorded_key(&entry.rec, &pod.rotation)?;
        let public = private.public_key();
        let desired = self
            .desired_for(
                &entry.rec.network,
                &entry.rec.namespace,
                &pod,
                &public,
                &entry.rec.addresses,
                &net,
            )
            .await;
        let config = desired
            .device
            .clone()
            .private_key(private)
            .listen_port(entry.rec.listen_port);
        let place = Arc::clone(&entry.place);
        let attachment = entry.attachment.clone();
        let dev = entry.dev.clone();
        let last = entry.last.take();
        let old_routes = entry.routes.clone();
        let new_routes = desired.routes.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let dev = match dev {
                Some(d) => d,
                None => Arc::new(place.device(&attachment)?),
            };
            let mut state = match last {
                Some(s) => s,
                None => dev.get()?,
            };
            let sent = dev.update_from(&state, &config)?;
            state.apply(&sent);
            if old_routes != new_routes {
                let rtnl = Rtnl::open(place.target())?;
                for r in new_routes.difference(&old_routes) {
                    rtnl.replace_route(&Route::new(*r).dev(attachment.index))?;
                }
                for r in old_routes.difference(&new_routes) {
                    match rtnl.del_route(&Route::new(*r).dev(attachment.index)) {
                        Ok(()) | Err(wg_netns::Error::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok::<_, wg_netns::Error>((dev, state, sent))
        })
        .await
        .map_err(|e| e.to_string())?;
        match outcome {
            Ok((dev, state, sent)) => {
                entry.dev = Some(dev);
                entry.last = Some(state);
                entry.routes = desired.routes;
                if !sent.is_empty() {
                    let removed = sent.peers.iter().filter(|p| p.remove).count();
                    info!(
                        attachment = %key,
                        peers_changed = sent.peers.len() - removed,
                        peers_removed = removed,
                        key_changed = sent.private_key.is_some(),
                        "device updated"
                    );
                    self.metrics.device_updates.inc();
                }
                if rotated {
                    entry.rec.key_generation = pod.rotation.clone();
                    entry.rec.public_key = public;
                    self.records.save(&entry.rec).map_err(|e| e.to_string())?;
                    info!(attachment = %key, "key rotated");
                }
                if rotated {
                    let _ = self.publish.send(Publish::Upsert(key.clone()));
                }
                Ok(())
            }
            Err(e) => {
                // Read the device afresh next time.
                entry.dev = None;
                entry.last = None;
                Err(e.to_string())
            }
        }
    }

    /// The private key of a recorded interface at `generation` (a new
    /// one when the generation changed: a rotation).
    fn recorded_key(&self, rec: &LocalRecord, generation: &str) -> Result<PrivateKey, String> {
        let kid = KeyId::new(&rec.pod_uid, rec.attachment.interface.as_str())
            .map_err(|e| e.to_string())?;
        self.keys
            .get_or_create(&kid, generation)
            .map(|(k, _)| k)
            .map_err(|e| e.to_string())
    }

    /// Read one device back and, when `repair`, fix what drifted (the next
    /// reconcile does, from a fresh read). Returns the drift, described.
    pub async fn verify_one(
        self: &Arc<Self>,
        key: &Key,
        repair: bool,
    ) -> Result<Vec<String>, String> {
        let Some(slot) = self.slot(key) else {
            return Err(format!("{key} is not known"));
        };
        let mut guard = slot.lock().await;
        let Some(entry) = guard.as_mut() else {
            return Ok(vec![]);
        };
        let place = Arc::clone(&entry.place);
        let attachment = entry.attachment.clone();
        let last = entry.last.clone();
        let routes = entry.routes.clone();
        let addresses = entry.rec.addresses.clone();
        let read = tokio::task::spawn_blocking(move || {
            let found = place.find(&attachment.name, &attachment.birth_name)?;
            let Some(found) = found else {
                return Ok::<_, wg_netns::Error>((
                    vec!["the interface is missing".to_string()],
                    None,
                ));
            };
            let dev = place.device(&found)?;
            let now = dev.get()?;
            let mut drift = Vec::new();
            if let Some(last) = &last {
                if !now.same_config(last) {
                    drift.push("the device's peers or settings changed outside the agent".into());
                }
            }
            let rtnl = Rtnl::open(place.target())?;
            let have = rtnl.addresses(found.index)?;
            for a in &addresses {
                if !have.contains(a) {
                    drift.push(format!("address {a} is missing"));
                }
            }
            let table = rtnl.routes(None)?;
            for r in &routes {
                if !table.iter().any(|t| t.destination == *r) {
                    drift.push(format!("route {r} is missing"));
                }
            }
            if !found.up {
                drift.push("the interface is down".into());
            }
            Ok((drift, Some(now)))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let (drift, now) = read;
        if repair && !drift.is_empty() {
            warn!(attachment = %key, drift = ?drift, "drift found; repairing");
            self.metrics.drift_repairs.inc();
            entry.last = now;
            entry.dev = None;
            entry.routes.clear();
            drop(guard);
            self.repair(key).await?;
        }
        Ok(drift)
    }

    /// Re-apply everything to one interface (addresses, link, routes,
    /// device) with [`Birthplace::ensure`].
    async fn repair(self: &Arc<Self>, key: &Key) -> Result<(), String> {
        let Some(slot) = self.slot(key) else {
            return Ok(());
        };
        {
            let mut guard = slot.lock().await;
            let Some(entry) = guard.as_mut() else {
                return Ok(());
            };
            let place = Arc::clone(&entry.place);
            let mut spec = InterfaceSpec::new(
                entry.rec.attachment.birth_name.clone(),
                entry.rec.attachment.interface.clone(),
            );
            for a in &entry.rec.addresses {
                spec = spec.address(*a);
            }
            let private = self.recorded_key(&entry.rec, &entry.rec.key_generation)?;
            spec = spec.device(
                DeviceConfig::new()
                    .private_key(private)
                    .listen_port(entry.rec.listen_port),
            );
            let done = tokio::task::spawn_blocking(move || {
                // Only the link, addresses and key here: the device's peers
                // are the reconcile's (an empty peer list would remove them).
                let found = place.find(&spec.name, &spec.birth_name)?;
                match found {
                    Some(_) => place
                        .ensure(&spec.key_on_create_only())
                        .map(|e| e.attachment),
                    None => place.ensure(&spec).map(|e| e.attachment),
                }
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            entry.attachment = done;
            entry.dev = None;
            entry.last = None;
            entry.routes.clear();
        }
        self.reconcile_one(key).await
    }

    /// Read back every device and repair drift (the periodic verify).
    pub async fn verify(self: &Arc<Self>) {
        if !self.is_synced() {
            return;
        }
        self.forget_secrets();
        for key in self.keys() {
            if let Err(e) = self.verify_one(&key, true).await {
                warn!(attachment = %key, error = %e, "verify failed");
            }
        }
        // Secrets are not watched (the agent may only get them by name):
        // the peers that reference one are re-read here, so a changed
        // preshared key reaches the devices within a verify interval.
        let with_secrets: Vec<Dirty> = self
            .index()
            .peers
            .iter()
            .filter(|(_, m)| {
                m.values()
                    .any(|p| p.config.preshared_key_secret_ref.is_some())
            })
            .map(|((network, namespace), _)| Dirty::Peers {
                network: network.clone(),
                namespace: namespace.clone(),
            })
            .collect();
        self.mark(with_secrets);
    }

    // ------------------------------------------------------------ gc

    /// Remove interfaces whose pod is gone (after the grace period), give
    /// back addresses no interface holds, and delete this node's
    /// attachment objects whose interface the agent does not hold.
    pub async fn gc(self: &Arc<Self>) {
        if !self.is_synced() {
            return;
        }
        let grace = self.settings.gc_grace.as_secs();
        let mut gone = Vec::new();
        for key in self.keys() {
            let Some(slot) = self.slot(&key) else {
                continue;
            };
            let Ok(g) = slot.try_lock() else { continue };
            let Some(e) = g.as_ref() else { continue };
            let alive = self.index().pod_uid_alive(&e.rec.pod_uid);
            if !alive && now().saturating_sub(e.rec.created) > grace {
                gone.push(key.clone());
            }
        }
        for key in gone {
            let Some(slot) = self.slot(&key) else {
                continue;
            };
            let mut g = slot.lock().await;
            if let Some(e) = g.take() {
                info!(attachment = %key, pod = %format!("{}/{}", e.rec.namespace, e.rec.pod), "pod is gone; removing its interface");
                let rec = e.rec.clone();
                drop(e);
                if let Err(err) = self.forget(&rec, None).await {
                    warn!(attachment = %key, error = %err, "cannot remove");
                    continue;
                }
            }
            drop(g);
            self.slots().remove(&key);
        }
        // Records that could not be reopened: removed once their pod is
        // gone; kept (addresses and key reserved, reported) while it runs.
        let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        let mut kept = Vec::new();
        for rec in orphans {
            let pod = format!("{}/{}", rec.namespace, rec.pod);
            if self.index().pod_uid_alive(&rec.pod_uid) {
                warn!(pod, netns = %rec.attachment.netns.display(),
                      "a running pod's interface cannot be reached (is the runtime's namespace directory mounted?)");
                kept.push(rec);
            } else if let Err(err) = self.forget(&rec, None).await {
                warn!(pod, error = %err, "cannot remove");
                kept.push(rec);
            }
        }
        let orphan_keys: Vec<Key> = kept.iter().filter_map(LocalRecord::key).collect();
        self.orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(kept);
        // Addresses held by no interface (a crash between allocation and
        // record) go back to the pool.
        let mut held: BTreeSet<Key> = self.keys().into_iter().collect();
        held.extend(orphan_keys);
        let live: BTreeSet<String> = held.iter().map(|k| k.as_str().to_string()).collect();
        for (network, alloc) in self.ipam.lock().await.iter_mut() {
            let freed = alloc.retain(|owner| live.contains(owner));
            if !freed.is_empty() {
                info!(network, leaked = freed.len(), "reclaimed addresses");
            }
        }
        // Keys of interfaces that are gone. A key id is `UID_IFNAME`, an
        // interface's key `UID.IFNAME`: compare them as (UID, IFNAME). The
        // store is listed before the slots are read: an ADD inserts its slot
        // before it creates its key, so a key listed here is held or orphaned.
        let stored = self.keys.list().unwrap_or_default();
        held.extend(self.keys());
        for kid in stored {
            if Key::new(kid.pod_uid(), kid.ifname()).is_none_or(|k| !held.contains(&k)) {
                let _ = self.keys.remove(&kid);
            }
        }
        // Attachment objects of this node without an interface here.
        let own: Vec<(String, String)> = self
            .index()
            .own_attachments
            .iter()
            .map(|(k, uid)| (k.clone(), uid.clone()))
            .collect();
        for (nsname, uid) in own {
            if held.iter().any(|k| k.pod_uid() == uid) {
                continue;
            }
            if let Some((ns, name)) = nsname.split_once('/') {
                let _ = self.publish.send(Publish::Delete {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    pod_uid: uid.clone(),
                });
            }
        }
        self.metrics.devices.set(self.slots().len() as i64);
    }

    /// Make sure every known network's address allocator exists, holding
    /// this node's blocks and the addresses of its interfaces.
    pub async fn adopt_networks(&self) {
        let nets: Vec<(String, NetworkConfig)> = self
            .index()
            .networks
            .iter()
            .filter_map(|(n, c)| c.as_ref().ok().map(|c| (n.clone(), c.clone())))
            .collect();
        let mut ipam = self.ipam.lock().await;
        for (name, cfg) in nets {
            if ipam.contains_key(&name) {
                continue;
            }
            match self.build_ipam(&name, &cfg).await {
                Ok(a) => {
                    ipam.insert(name, a);
                }
                Err(e) => warn!(network = %name, error = %e, "address allocator not ready"),
            }
        }
    }

    /// A network's allocator: this node's blocks (listed from the
    /// apiserver) and the addresses its interfaces hold (from the records).
    async fn build_ipam(&self, name: &str, cfg: &NetworkConfig) -> Result<Ipam, String> {
        let mut alloc = Ipam::new(name, &cfg.pools).map_err(|e| e.to_string())?;
        let api: Api<WireGuardAddressBlock> = Api::all(self.client.clone());
        let owned = crate::blocks::owned(&api, name, &self.settings.node_name)
            .await
            .map_err(|e| {
                self.metrics.apiserver_error("list_blocks");
                format!("cannot list this node's address blocks: {e}")
            })?;
        for bad in owned.invalid {
            warn!(network = %name, block = ?bad, "an address block object of this node is invalid");
        }
        for b in owned.blocks {
            let _ = alloc.add_block(b);
        }
        let orphans: Vec<LocalRecord> = self
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.network == name)
            .cloned()
            .collect();
        for r in orphans {
            if let Some(key) = r.key() {
                if let Err(err) = alloc.restore(key.as_str(), &r.addresses) {
                    warn!(attachment = %key, error = %err, "cannot re-reserve the addresses");
                }
            }
        }
        for key in self.keys() {
            let Some(slot) = self.slot(&key) else {
                continue;
            };
            // A slot held by an ADD is new: nothing to re-reserve.
            let Ok(g) = slot.try_lock() else { continue };
            if let Some(e) = g.as_ref().filter(|e| e.rec.network == name) {
                match alloc.restore(key.as_str(), &e.rec.addresses) {
                    Ok(strays) if !strays.is_empty() => {
                        warn!(attachment = %key, strays = strays.len(), "addresses outside this node's blocks")
                    }
                    Ok(_) => {}
                    Err(err) => {
                        warn!(attachment = %key, error = %err, "cannot re-reserve the addresses")
                    }
                }
            }
        }
        Ok(alloc)
    }

    // ------------------------------------------------------------ status

    /// Read every device's counters (metrics, status).
    pub async fn refresh_stats(self: &Arc<Self>) {
        let mut samples = Vec::new();
        for key in self.keys() {
            let Some(slot) = self.slot(&key) else {
                continue;
            };
            let Ok(mut g) = slot.try_lock() else { continue };
            let Some(e) = g.as_mut() else { continue };
            let place = Arc::clone(&e.place);
            let attachment = e.attachment.clone();
            let dev = e.dev.clone();
            let read = tokio::task::spawn_blocking(move || match dev {
                Some(d) => d.stats(),
                None => place.device(&attachment).and_then(|d| d.stats()),
            })
            .await;
            match read {
                Ok(Ok(s)) => {
                    samples.push(crate::metrics::DeviceSample::new(&e.rec, &s));
                    e.stats = Some(s);
                    let status = self.status_of(e);
                    let write = match &e.written {
                        None => Some(Publish::Upsert(key.clone())),
                        Some((w, _)) if identity(w) != identity(&status) => {
                            Some(Publish::Upsert(key.clone()))
                        }
                        Some((w, at))
                            if *w != status
                                && at.elapsed() >= self.settings.status_min_interval =>
                        {
                            Some(Publish::Refresh(key.clone()))
                        }
                        _ => None,
                    };
                    if let Some(p) = write {
                        let _ = self.publish.send(p);
                    }
                }
                Ok(Err(e)) => debug!(attachment = %key, error = %e, "cannot read counters"),
                Err(_) => {}
            }
        }
        self.metrics.set_devices(samples);
    }

    /// The status an interface should show.
    pub fn status_of(&self, e: &Entry) -> WireGuardAttachmentStatus {
        let mut st = WireGuardAttachmentStatus {
            public_key: Some((&e.rec.public_key).into()),
            addresses: e.rec.addresses.iter().map(|a| (*a).into()).collect(),
            endpoint: self.endpoint_of(e).map(EndpointString::from),
            ..Default::default()
        };
        let peers: Vec<AttachmentPeerStatus> = e
            .stats
            .as_ref()
            .map(|s| s.peers.iter().map(AttachmentPeerStatus::from).collect())
            .unwrap_or_default();
        st.set_peers(peers);
        st
    }

    fn endpoint_of(&self, e: &Entry) -> Option<SocketAddr> {
        match e.rec.attachment.socket_namespace {
            wg_netns::SocketNamespace::Host => {
                Some(SocketAddr::new(self.settings.node_ip, e.rec.listen_port))
            }
            // The pod's own address, once the runtime has reported it
            // (a Pod status update, which the watch of the node's pods
            // brings; the next counters read writes the new endpoint).
            wg_netns::SocketNamespace::Container => self
                .index()
                .pod_info(&e.rec.namespace, &e.rec.pod)
                .filter(|p| p.uid == e.rec.pod_uid)
                .and_then(|p| p.ip)
                .map(|ip| SocketAddr::new(ip, e.rec.listen_port)),
        }
    }

    /// Write one attachment object and its status.
    pub async fn publish_one(&self, p: &Publish) -> Result<(), kube::Error> {
        match p {
            Publish::Delete {
                namespace,
                name,
                pod_uid,
            } => {
                // Read first and delete only the object of that pod, with
                // its UID as a precondition: a StatefulSet pod recreated
                // under the same name owns an object of the same name, and
                // a delete retried after a failure must not take it.
                let api: Api<WireGuardAttachment> = Api::namespaced(self.client.clone(), namespace);
                let Some(existing) = api.get_opt(name).await? else {
                    return Ok(());
                };
                if existing.spec.pod_uid != *pod_uid {
                    return Ok(());
                }
                let params = DeleteParams::default().preconditions(Preconditions {
                    uid: existing.metadata.uid.clone(),
                    resource_version: None,
                });
                match api.delete(name, &params).await {
                    Ok(_) => Ok(()),
                    // Gone, or replaced since the read.
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Publish::Upsert(key) | Publish::Refresh(key) => {
                let Some(slot) = self.slot(key) else {
                    return Ok(());
                };
                let (obj, status, ns, name) = {
                    let g = slot.lock().await;
                    let Some(e) = g.as_ref() else { return Ok(()) };
                    let name = object_name(&e.rec.pod, e.rec.attachment.interface.as_str());
                    let mut obj = WireGuardAttachment::new(
                        &name,
                        WireGuardAttachmentSpec {
                            network: wg_k8s_types::NetworkName::unchecked(&e.rec.network),
                            pod_name: wg_k8s_types::ObjectName::unchecked(&e.rec.pod),
                            pod_uid: e.rec.pod_uid.clone(),
                            node_name: wg_k8s_types::ObjectName::unchecked(
                                &self.settings.node_name,
                            ),
                            interface: wg_k8s_types::InterfaceName::unchecked(
                                e.rec.attachment.interface.as_str(),
                            ),
                        },
                    );
                    obj.metadata.namespace = Some(e.rec.namespace.clone());
                    obj.metadata.labels = Some(BTreeMap::from([(
                        LABEL_NODE.to_string(),
                        self.settings.node_name.clone(),
                    )]));
                    obj.metadata.owner_references = Some(vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                            api_version: "v1".into(),
                            kind: "Pod".into(),
                            name: e.rec.pod.clone(),
                            uid: e.rec.pod_uid.clone(),
                            controller: None,
                            block_owner_deletion: None,
                        },
                    ]);
                    (obj, self.status_of(e), e.rec.namespace.clone(), name)
                };
                let api: Api<WireGuardAttachment> = Api::namespaced(self.client.clone(), &ns);
                let pp = PatchParams::apply("wg-agent").force();
                api.patch(&name, &pp, &Patch::Apply(&obj)).await?;
                let body = serde_json::json!({
                    "apiVersion": wg_k8s_types::API_VERSION,
                    "kind": "WireGuardAttachment",
                    "status": status,
                });
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
                    .await?;
                let g = slot.lock().await;
                drop(g);
                if let Some(slot) = self.slot(key) {
                    if let Some(e) = slot.lock().await.as_mut() {
                        e.written = Some((status, Instant::now()));
                    }
                }
                Ok(())
            }
        }
    }

    /// Write the per-network hints the plugin reads when the agent is
    /// unreachable.
    pub fn write_hints(&self) {
        let dir = self.settings.hint_dir();
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let nets: Vec<(String, FailurePolicy)> = self
            .index()
            .networks
            .iter()
            .filter_map(|(n, c)| c.as_ref().ok().map(|c| (n.clone(), c.failure_policy)))
            .collect();
        for (name, policy) in nets {
            let hint = wg_cni::managed::NetworkHint {
                failure_policy: match policy {
                    FailurePolicy::Fail => "fail".into(),
                    FailurePolicy::Ignore => "ignore".into(),
                },
            };
            let path = dir.join(format!("{name}.json"));
            let tmp = dir.join(format!(".{name}.json.tmp"));
            if let Ok(body) = serde_json::to_vec(&hint) {
                if std::fs::write(&tmp, body).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
            }
        }
    }
}

/// The part of a status others act on, written at once: the key,
/// addresses and endpoint (other nodes' mesh peers). The rest (the peer
/// list, handshakes, counters) is information, written at most every
/// `status_min_interval`: otherwise every new pod of a mesh would queue a
/// write per member ahead of the next pod's creation.
fn identity(s: &WireGuardAttachmentStatus) -> (Option<String>, Vec<String>, Option<String>) {
    (
        s.public_key.as_ref().map(|k| k.as_str().to_string()),
        s.addresses.iter().map(|a| a.as_str().to_string()).collect(),
        s.endpoint.as_ref().map(|e| e.as_str().to_string()),
    )
}

#[cfg(test)]
pub(crate) mod tests;
