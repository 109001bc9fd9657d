//! The agent's tasks: watches feeding the index, the reconcile loop, the
//! status writer, the timers (verify, counters, garbage collection), the
//! CNI socket and HTTP. Devices are never touched on exit: a stopped or
//! killed agent leaves every pod's traffic flowing.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};
use wg_k8s_types::{WireGuardAddressBlock, WireGuardAttachment, WireGuardNetwork, WireGuardPeer};

use crate::agent::{Agent, Publish};
use crate::index::{Dirty, Index, Watched};
use crate::scope::Part;

/// When the agent's loops last showed life (for `/healthz`).
#[derive(Debug)]
pub struct Heartbeat {
    start: Instant,
    last_ms: AtomicU64,
    limit: Duration,
}

impl Heartbeat {
    /// A heartbeat that is stale after `limit`.
    pub fn new(limit: Duration) -> Heartbeat {
        Heartbeat {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            limit,
        }
    }

    /// The loops are alive.
    pub fn beat(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Ok when the last beat is recent.
    pub fn check(&self) -> Result<(), String> {
        // A beat on another thread between reading the clock and reading
        // the beat is newer than the clock read: its age is zero, not a
        // negative number (which overflowed: a panic in debug builds, and
        // in release a wrapped age of half a billion years, /healthz failing).
        let now = self.start.elapsed().as_millis() as u64;
        let age = now.saturating_sub(self.last_ms.load(Ordering::Relaxed));
        if Duration::from_millis(age) <= self.limit {
            Ok(())
        } else {
            Err(format!("no heartbeat for {} s", age / 1000))
        }
    }
}

/// How long a failed watch waits before it retries: 250 ms doubling to at
/// most 4 s (kube's default goes to 30 s, which after an apiserver outage
/// leaves the node blind for half a minute), with up to 25% jitter so the
/// nodes of a cluster do not come back in step; back to 250 ms once a
/// watch works again.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(4);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.subsec_nanos())
            .unwrap_or(0);
        Some(d + d.mul_f64(f64::from(nanos % 1000) / 4000.0))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// What one watch does with what it hears: each handler updates the index
/// and says what changed; `listed` runs after each (re)list.
struct Handlers<K> {
    apply: OnObject<K>,
    delete: OnObject<K>,
    relist: OnList<K>,
    listed: Box<dyn Fn(&Agent) + Send + Sync>,
}

/// An index update from one object; what it changed.
type OnObject<K> = Box<dyn Fn(&mut Index, &K) -> Vec<Dirty> + Send + Sync>;
/// An index update from a whole (re)list; what it changed.
type OnList<K> = Box<dyn Fn(&mut Index, &[K]) -> Vec<Dirty> + Send + Sync>;

impl<K> Handlers<K> {
    fn new(
        apply: impl Fn(&mut Index, &K) -> Vec<Dirty> + Send + Sync + 'static,
        delete: impl Fn(&mut Index, &K) -> Vec<Dirty> + Send + Sync + 'static,
        relist: impl Fn(&mut Index, &[K]) -> Vec<Dirty> + Send + Sync + 'static,
        listed: impl Fn(&Agent) + Send + Sync + 'static,
    ) -> Handlers<K> {
        Handlers {
            apply: Box::new(apply),
            delete: Box::new(delete),
            relist: Box::new(relist),
            listed: Box::new(listed),
        }
    }
}

/// Which cluster-wide kinds have listed once (a bit each).
#[derive(Debug, Default)]
pub struct Listed(AtomicU8);

/// Networks, the own node's attachments, its pods, namespaces.
const ALL_KINDS: u8 = 0b1111;

impl Listed {
    /// Kind `bit` listed; the caches are synced once all have.
    fn listed(&self, agent: &Agent, bit: u8) {
        let before = self.0.fetch_or(bit, Ordering::AcqRel);
        if before | bit == ALL_KINDS {
            agent.set_synced();
        }
    }
}

/// One watch feeding the index: `what` names it in logs and metrics.
async fn watch_kind<K>(
    agent: Arc<Agent>,
    api: Api<K>,
    cfg: watcher::Config,
    what: String,
    handlers: Handlers<K>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let mut stream = watcher(api, cfg).backoff(WatchBackoff::default()).boxed();
    let mut buf: Vec<K> = Vec::new();
    let index = || agent.index.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(ev) = stream.next().await {
        let dirty = match ev {
            Ok(Event::Init) => {
                buf.clear();
                continue;
            }
            Ok(Event::InitApply(o)) => {
                agent.metrics.watch_event(&kind);
                buf.push(o);
                continue;
            }
            Ok(Event::InitDone) => {
                let d = (handlers.relist)(&mut index(), &buf);
                buf.clear();
                info!(watch = %what, "listed");
                (handlers.listed)(&agent);
                d
            }
            Ok(Event::Apply(o)) => {
                agent.metrics.watch_event(&kind);
                (handlers.apply)(&mut index(), &o)
            }
            Ok(Event::Delete(o)) => {
                agent.metrics.watch_event(&kind);
                (handlers.delete)(&mut index(), &o)
            }
            Err(e) => {
                agent
                    .metrics
                    .apiserver_error(&format!("watch_{}", kind.to_lowercase()));
                warn!(watch = %what, error = %e, "watch failed; retrying");
                continue;
            }
        };
        agent.note_rejections();
        agent.mark(dirty);
        // A pod of the node may need a network or namespace watched.
        agent.scope.poke();
    }
}

/// Run the cluster-wide watches: every network and namespace (networks'
/// namespaceSelectors match their labels), the pods and the attachment
/// objects of this node. What the node's interfaces need beyond that is
/// watched by [`scope_loop`].
pub async fn watches(agent: Arc<Agent>) {
    let c = agent.client().clone();
    let node = agent.settings.node_name.clone();
    let listed = Arc::new(Listed::default());
    let on_node = || watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let done = |bit: u8| {
        let l = Arc::clone(&listed);
        move |a: &Agent| l.listed(a, bit)
    };
    let own = node.clone();
    let own2 = node.clone();
    tokio::join!(
        watch_kind::<WireGuardNetwork>(
            Arc::clone(&agent),
            Api::all(c.clone()),
            watcher::Config::default(),
            "networks".into(),
            Handlers::new(
                |i, o| i.network(o),
                |i, o| i.network_gone(o),
                |i, all| i.relisted_networks(all),
                done(1),
            ),
        ),
        watch_kind::<WireGuardAttachment>(
            Arc::clone(&agent),
            Api::all(c.clone()),
            on_node(),
            "attachments of this node".into(),
            Handlers::new(
                move |i, o| {
                    i.own_attachment(o, &own);
                    vec![]
                },
                |i, o| {
                    i.own_attachment_gone(o);
                    vec![]
                },
                move |i, all| {
                    i.relisted_own_attachments(all, &own2);
                    vec![]
                },
                done(2),
            ),
        ),
        watch_kind::<Pod>(
            Arc::clone(&agent),
            Api::all(c.clone()),
            on_node(),
            "pods of this node".into(),
            Handlers::new(
                |i, o| i.pod(o),
                |i, o| i.pod_gone(o),
                |i, all| i.relisted_pods(all),
                done(4),
            ),
        ),
        watch_kind::<Namespace>(
            Arc::clone(&agent),
            Api::all(c.clone()),
            watcher::Config::default(),
            "namespaces".into(),
            Handlers::new(
                |i, o| i.namespace(o),
                |i, o| i.namespace_gone(o),
                |i, all| i.relisted_namespaces(all),
                done(8),
            ),
        ),
    );
}

/// Start the watches of one part of the node's scope.
fn start_part(agent: &Arc<Agent>, part: &Part) -> Vec<tokio::task::JoinHandle<()>> {
    let c = agent.client().clone();
    let listed = |a: &Agent| a.scope.note_listed();
    match part.clone() {
        Part::Network(network) => {
            let by_network = watcher::Config::default().fields(&format!("spec.network={network}"));
            let (n1, n2) = (network.clone(), network.clone());
            vec![
                tokio::spawn(watch_kind::<WireGuardAttachment>(
                    Arc::clone(agent),
                    Api::all(c.clone()),
                    by_network.clone(),
                    format!("attachments of network {network}"),
                    Handlers::new(
                        |i, o| i.attachment(o),
                        |i, o| i.attachment_gone(o),
                        move |i, all| i.relisted_attachments_in(&n1, all),
                        listed,
                    ),
                )),
                tokio::spawn(watch_kind::<WireGuardAddressBlock>(
                    Arc::clone(agent),
                    Api::all(c),
                    by_network,
                    format!("address blocks of network {network}"),
                    Handlers::new(
                        |i, o| i.block(o),
                        |i, o| i.block_gone(o),
                        move |i, all| i.relisted_blocks_in(&n2, all),
                        listed,
                    ),
                )),
            ]
        }
        Part::Namespace(namespace) => {
            let ns = namespace.clone();
            vec![tokio::spawn(watch_kind::<WireGuardPeer>(
                Arc::clone(agent),
                Api::namespaced(c, &namespace),
                watcher::Config::default(),
                format!("peers of namespace {namespace}"),
                Handlers::new(
                    |i, o| i.peer(o),
                    |i, o| i.peer_gone(o),
                    move |i, all| i.relisted_peers_in(&ns, all),
                    listed,
                ),
            ))]
        }
    }
}

/// What the index forgets when a part's watches stop.
fn watched_of(part: &Part) -> Vec<Watched> {
    match part {
        Part::Network(n) => vec![Watched::Attachments(n.clone()), Watched::Blocks(n.clone())],
        Part::Namespace(ns) => vec![Watched::Peers(ns.clone())],
    }
}

/// A watched part: its watches, and since when no member needs it. Its
/// watches stop when it is dropped (also when the scope loop itself is).
struct Watching {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    unneeded_since: Option<Instant>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Keep the scoped watches to what the node's members need (see
/// `crate::scope`): start a part's watches when a member needs it, stop
/// them (and forget what they brought) once none has for
/// `WG_AGENT_WATCH_LINGER`.
pub async fn scope_loop(agent: Arc<Agent>) {
    let linger = agent.settings.watch_linger;
    let mut running: BTreeMap<Part, Watching> = BTreeMap::new();
    loop {
        let pods = agent
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pods_scope();
        let wanted = agent.scope.wanted(pods);
        let now = Instant::now();
        for part in &wanted {
            match running.get_mut(part) {
                Some(r) => r.unneeded_since = None,
                None => {
                    info!(?part, "watching");
                    running.insert(
                        part.clone(),
                        Watching {
                            tasks: start_part(&agent, part),
                            unneeded_since: None,
                        },
                    );
                }
            }
        }
        let mut stop = Vec::new();
        for (part, r) in running.iter_mut().filter(|(p, _)| !wanted.contains(p)) {
            let since = *r.unneeded_since.get_or_insert(now);
            if now.duration_since(since) >= linger {
                stop.push(part.clone());
            }
        }
        for part in stop {
            let Some(mut r) = running.remove(&part) else {
                continue;
            };
            for t in std::mem::take(&mut r.tasks) {
                t.abort();
                // Ended before the index forgets: a task aborted mid-poll
                // could otherwise apply one more event after.
                let _ = t.await;
            }
            info!(?part, "no longer watched");
            let dirty: Vec<Dirty> = {
                let mut idx = agent.index.lock().unwrap_or_else(|e| e.into_inner());
                watched_of(&part)
                    .iter()
                    .flat_map(|w| idx.forget(w))
                    .collect()
            };
            agent.mark(dirty);
        }
        agent.metrics.set_watched(
            running
                .keys()
                .filter(|p| matches!(p, Part::Network(_)))
                .count(),
            running
                .keys()
                .filter(|p| matches!(p, Part::Namespace(_)))
                .count(),
        );
        let next = if running.values().any(|r| r.unneeded_since.is_some()) {
            linger.min(Duration::from_secs(5))
        } else {
            Duration::from_secs(60)
        };
        tokio::select! {
            _ = agent.scope.poked() => {}
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// The reconcile loop: gathers changes for a moment, then brings what
/// they touch to the resources.
pub async fn reconcile_loop(agent: Arc<Agent>, mut rx: mpsc::UnboundedReceiver<Dirty>) {
    while let Some(first) = rx.recv().await {
        let mut set = BTreeSet::from([first]);
        tokio::time::sleep(Duration::from_millis(5)).await;
        while let Ok(d) = rx.try_recv() {
            set.insert(d);
        }
        if set
            .iter()
            .any(|d| matches!(d, Dirty::All | Dirty::Network(_)))
        {
            agent.write_hints();
            agent.adopt_networks().await;
        }
        if set
            .iter()
            .any(|d| matches!(d, Dirty::All | Dirty::Peers { .. } | Dirty::Namespace(_)))
        {
            agent.forget_secrets();
        }
        agent.reconcile(&set).await;
    }
}

/// Writes waiting, in arrival order, each attachment once: a newer
/// request for the same object replaces the queued one in place.
#[derive(Debug, Default)]
struct Queue {
    order: std::collections::VecDeque<String>,
    items: BTreeMap<String, Publish>,
}

impl Queue {
    fn push(&mut self, id: String, p: Publish) {
        if self.items.insert(id.clone(), p).is_none() {
            self.order.push_back(id);
        }
    }
    fn pop(&mut self) -> Option<Publish> {
        while let Some(id) = self.order.pop_front() {
            if let Some(p) = self.items.remove(&id) {
                return Some(p);
            }
        }
        None
    }
    fn remove(&mut self, id: &str) {
        self.items.remove(id);
    }
    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The status writer: one write at a time, at most `per_second` a second;
/// creations, deletions and changes others act on first, in arrival
/// order, counter refreshes when nothing more urgent waits; each
/// attachment's pending writes merged into one; a failed write retried
/// after `retry`.
pub async fn publish_loop(
    agent: Arc<Agent>,
    mut rx: mpsc::UnboundedReceiver<Publish>,
    tx: mpsc::UnboundedSender<Publish>,
    per_second: u32,
    retry: Duration,
) {
    let mut urgent = Queue::default();
    let mut routine = Queue::default();
    let gap = Duration::from_secs(1) / per_second.max(1);
    let take = |p: Publish, urgent: &mut Queue, routine: &mut Queue| {
        let key = id(&p);
        match p {
            Publish::Refresh(_) => {
                if !urgent.items.contains_key(&key) {
                    routine.push(key, p);
                }
            }
            _ => {
                routine.remove(&key);
                urgent.push(key, p);
            }
        }
    };
    loop {
        if urgent.is_empty() && routine.is_empty() {
            match rx.recv().await {
                Some(p) => take(p, &mut urgent, &mut routine),
                None => return,
            }
        }
        while let Ok(p) = rx.try_recv() {
            take(p, &mut urgent, &mut routine);
        }
        let Some(p) = urgent.pop().or_else(|| routine.pop()) else {
            continue;
        };
        match agent.publish_one(&p).await {
            Ok(()) => {
                agent.metrics.status_writes.inc();
            }
            Err(e) => {
                agent.metrics.apiserver_error("write_attachment");
                warn!(error = %e, what = %id(&p), "cannot write an attachment; retrying");
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(retry).await;
                    let _ = tx.send(p);
                });
            }
        }
        tokio::time::sleep(gap).await;
    }
}

/// The object a write is about (writes of one object merge).
fn id(p: &Publish) -> String {
    match p {
        Publish::Upsert(k) | Publish::Refresh(k) => format!("attachment {k}"),
        Publish::Delete {
            namespace,
            name,
            pod_uid,
        } => format!("delete {namespace}/{name} of pod {pod_uid}"),
    }
}

/// The timers: counters every `stats_interval`, verify every
/// `verify_interval` and once as soon as the caches sync (what broke while
/// the agent was away is repaired at once, not an interval later: an
/// interface deleted then, a kill switch's leak), garbage collection every
/// 30 s. Each runs as a task
/// of its own (a tick while the previous run of the same job is still
/// going is skipped), so the heartbeat — beaten here at every tick — says
/// that the agent's loops are alive, not that every device answered: a
/// stopped or slow daemon delays its own reads, never `/healthz`.
pub async fn timers(agent: Arc<Agent>, heartbeat: Arc<Heartbeat>) {
    let mut stats = tokio::time::interval(agent.settings.stats_interval);
    let mut verify = tokio::time::interval(agent.settings.verify_interval);
    let mut gc = tokio::time::interval(Duration::from_secs(30));
    for t in [&mut stats, &mut verify, &mut gc] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let busy: [Arc<std::sync::atomic::AtomicBool>; 3] = Default::default();
    verify.tick().await;
    let mut verified_at_sync = false;
    loop {
        let job = tokio::select! {
            _ = agent.synced_now.notified(), if !verified_at_sync => {
                verified_at_sync = true;
                1
            }
            _ = stats.tick() => 0,
            _ = verify.tick() => 1,
            _ = gc.tick() => 2,
        };
        heartbeat.beat();
        let flag = Arc::clone(&busy[job]);
        if flag.swap(true, Ordering::AcqRel) {
            continue;
        }
        let a = Arc::clone(&agent);
        tokio::spawn(async move {
            // Cleared however the run ends (a panic included): a job that
            // failed once still runs at its next tick.
            let _running = Running(flag);
            match job {
                0 => a.refresh_stats().await,
                1 => a.verify().await,
                _ => a.gc().await,
            }
        });
    }
}

/// A timer job's "still running" flag, cleared when the run ends.
struct Running(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests;
