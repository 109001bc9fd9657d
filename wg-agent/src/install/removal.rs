//! Uninstall on delete: whether the agent's stop is the end of its install.
//!
//! At SIGTERM the agent takes wg-cni out of its node only when its
//! DaemonSet is really going away; a rolling update, a drain, a liveness
//! restart, a node reboot, and any error of the apiserver leave wg-cni
//! installed. A wrong "going away" is the expensive mistake: after a
//! plain container restart the init container does not run again, so
//! an uninstall there would leave the node without wg-cni while its agent
//! runs (every ADD of a WireGuard pod failing). A wrong "staying" leaves
//! wg-cni chained with no agent to serve it, which `wg-agent uninstall` on
//! the node undoes (docs/install.md, "Uninstall").
//!
//! The install is going away when, and only when:
//!
//! 1. a fresh GET of the DaemonSet says NotFound (the apiserver's own
//!    `NotFound` Status naming the DaemonSet, not any 404) or shows a
//!    `deletionTimestamp`; or
//! 2. the DaemonSet is there but its namespace has a `deletionTimestamp`
//!    (everything in it goes; since Kubernetes 1.33 the namespace
//!    controller deletes the pods first and waits for them to be gone
//!    before it deletes the DaemonSet, so this is the only sign the
//!    agent can see when just the namespace is deleted); or
//! 3. the GET cannot be answered (401, 403, an unreachable apiserver, a
//!    timeout) and the agent's watch of its DaemonSet ([`DaemonSetWatch`],
//!    opened at start) has seen it deleted or being deleted, now or within
//!    [`Limits::wait`].
//!
//! A refusal alone (401, 403) never means "gone". Case 3 is what
//! `kubectl delete -f manifests/` needs: it deletes the namespace (whose
//! controller deletes the agents' pods first) and the service account,
//! the Role and the bindings before it reaches the DaemonSet's file, so
//! by the time an agent is stopped its GET is often refused. A watch that
//! was established before the RBAC objects went is not authorized again
//! (the apiserver authorizes a request when it starts), so it still
//! delivers the DaemonSet's deletion a moment later.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::run::WatchBackoff;

/// The DaemonSet whose deletion means "uninstall": `POD_NAMESPACE`
/// (default `kube-system`) and `WG_AGENT_DAEMONSET` (default
/// `wg-agent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub daemonset: String,
}

impl Owner {
    /// From the environment (unset or empty: the defaults).
    pub fn from_env() -> Owner {
        Owner::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) with another source of variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Owner {
        let get = |k: &str, default: &str| {
            get(k)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        Owner {
            namespace: get("POD_NAMESPACE", "kube-system"),
            daemonset: get("WG_AGENT_DAEMONSET", "wg-agent"),
        }
    }
}

/// What the watch of the DaemonSet knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watched {
    /// It has listed the DaemonSet at least once: a watch was (and may
    /// still be) open, so a deletion can still reach it.
    pub listed: bool,
    /// Its latest news: the DaemonSet deleted, absent from a list, or
    /// carrying a `deletionTimestamp`. Cleared again by a DaemonSet of that
    /// name without one (deleted and created again).
    pub gone: bool,
}

/// A watch of the agent's own DaemonSet (by name: `list` and `watch` with
/// `fieldSelector=metadata.name=NAME`, which RBAC grants for that one
/// `resourceName`), kept open from the agent's start to its end. Stops
/// when dropped.
#[derive(Debug)]
pub struct DaemonSetWatch {
    rx: watch::Receiver<Watched>,
    task: tokio::task::JoinHandle<()>,
}

fn deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

impl DaemonSetWatch {
    /// Start watching `owner`'s DaemonSet (on the current tokio runtime).
    pub fn start(client: kube::Client, owner: &Owner) -> DaemonSetWatch {
        let (tx, rx) = watch::channel(Watched::default());
        let api: Api<DaemonSet> = Api::namespaced(client, &owner.namespace);
        let task = tokio::spawn(run_watch(api, owner.clone(), tx));
        DaemonSetWatch { rx, task }
    }

    /// What it knows now.
    pub fn current(&self) -> Watched {
        *self.rx.borrow()
    }

    /// Whether it sees the DaemonSet gone now or within `limit`.
    pub async fn gone_within(&self, limit: Duration) -> bool {
        let mut rx = self.rx.clone();
        let seen =
            tokio::time::timeout(limit, async move { rx.wait_for(|w| w.gone).await.is_ok() }).await;
        seen.unwrap_or(false)
    }
}

impl Drop for DaemonSetWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_watch(api: Api<DaemonSet>, owner: Owner, tx: watch::Sender<Watched>) {
    let name = owner.daemonset.as_str();
    let what = format!("{}/{}", owner.namespace, name);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, cfg).backoff(WatchBackoff::default()).boxed();
    // During a (re)list: whether it holds the DaemonSet, and its state.
    let mut listing: Option<bool> = None;
    let mut failing = false;
    let set = |gone: bool| {
        let before = *tx.borrow();
        let now = Watched { listed: true, gone };
        if before != now {
            if gone {
                info!(daemonset = %what, "the DaemonSet is deleted or being deleted");
            } else if !before.listed {
                info!(daemonset = %what, "watching the DaemonSet (its deletion uninstalls wg-cni)");
            } else {
                info!(daemonset = %what, "the DaemonSet is back");
            }
            tx.send_replace(now);
        }
    };
    while let Some(ev) = stream.next().await {
        let ok = ev.is_ok();
        match ev {
            Ok(Event::Init) => listing = Some(true),
            Ok(Event::InitApply(ds)) => {
                if ds.metadata.name.as_deref() == Some(name) {
                    listing = Some(deleting(&ds.metadata));
                }
            }
            // Not in the list (Init's default): gone.
            Ok(Event::InitDone) => set(listing.take().unwrap_or(true)),
            Ok(Event::Apply(ds)) => {
                if ds.metadata.name.as_deref() == Some(name) {
                    set(deleting(&ds.metadata));
                }
            }
            Ok(Event::Delete(ds)) => {
                if ds.metadata.name.as_deref() == Some(name) {
                    set(true);
                }
            }
            Err(e) => {
                if !failing {
                    warn!(daemonset = %what, error = %e,
                        "the watch of the DaemonSet failed; retrying (a refusal alone never uninstalls)");
                }
                failing = true;
            }
        }
        if ok && failing {
            info!(daemonset = %what, "the watch of the DaemonSet works again");
            failing = false;
        }
    }
}

/// How long the decision may take (within the pod's
/// `terminationGracePeriodSeconds`, 30 s in the manifests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Each GET (DaemonSet, namespace): 5 s.
    pub request: Duration,
    /// How long to wait for the watch to see a deletion when the GET
    /// cannot be answered and the watch has listed the DaemonSet: 10 s.
    pub wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request: Duration::from_secs(5),
            wait: Duration::from_secs(10),
        }
    }
}

/// Why the install goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// The apiserver says the DaemonSet does not exist.
    NotFound,
    /// The DaemonSet has a `deletionTimestamp`.
    Deleting,
    /// Its namespace has a `deletionTimestamp`.
    NamespaceDeleting,
    /// The GET could not be answered; the watch saw the DaemonSet deleted
    /// or being deleted.
    SeenByWatch,
}

/// The decision at SIGTERM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The DaemonSet is going away: uninstall.
    Uninstall(Gone),
    /// Anything else: wg-cni stays. Why, for the log.
    Keep(String),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Uninstall(g) => f.write_str(match g {
                Gone::NotFound => "the DaemonSet is gone (NotFound)",
                Gone::Deleting => "the DaemonSet is being deleted",
                Gone::NamespaceDeleting => "the DaemonSet's namespace is being deleted",
                Gone::SeenByWatch => {
                    "the apiserver does not answer for the DaemonSet, and its watch saw it deleted"
                }
            }),
            Verdict::Keep(why) => f.write_str(why),
        }
    }
}

/// A `NotFound` from the apiserver itself for the object `name` (its
/// Status names it), not any 404 (a proxy's, a wrong address's).
fn not_found(e: &kube::Error, name: &str) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.code == 404
                && s.reason == "NotFound"
                && s.details.as_ref().is_some_and(|d| d.name == name)
        }
        _ => false,
    }
}

/// One GET, bounded by `limit`: `Ok(None)` for the apiserver's NotFound.
async fn get<K>(api: &Api<K>, name: &str, limit: Duration) -> Result<Option<K>, String>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match tokio::time::timeout(limit, api.get(name)).await {
        Ok(Ok(o)) => Ok(Some(o)),
        Ok(Err(e)) if not_found(&e, name) => Ok(None),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Whether the install of `owner` is going away (see the module docs):
/// a fresh GET of the DaemonSet (and, when it is there, of its
/// namespace); when the GET cannot be answered, what `watch` saw, waiting
/// up to `limits.wait` for it if it has listed the DaemonSet.
pub async fn decide(
    client: &kube::Client,
    owner: &Owner,
    watch: Option<&DaemonSetWatch>,
    limits: Limits,
) -> Verdict {
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), &owner.namespace);
    let error = match get(&dss, &owner.daemonset, limits.request).await {
        Ok(None) => return Verdict::Uninstall(Gone::NotFound),
        Ok(Some(ds)) if deleting(&ds.metadata) => return Verdict::Uninstall(Gone::Deleting),
        Ok(Some(_)) => {
            let nss: Api<Namespace> = Api::all(client.clone());
            return match get(&nss, &owner.namespace, limits.request).await {
                Ok(Some(ns)) if deleting(&ns.metadata) => {
                    Verdict::Uninstall(Gone::NamespaceDeleting)
                }
                Ok(_) => Verdict::Keep("the DaemonSet is there".into()),
                Err(e) => Verdict::Keep(format!(
                    "the DaemonSet is there (its namespace cannot be read: {e})"
                )),
            };
        }
        Err(e) => e,
    };
    let Some(w) = watch else {
        return Verdict::Keep(format!(
            "cannot read the DaemonSet ({error}), and it is not watched"
        ));
    };
    let seen = w.current();
    if seen.gone {
        return Verdict::Uninstall(Gone::SeenByWatch);
    }
    if !seen.listed {
        return Verdict::Keep(format!(
            "cannot read the DaemonSet ({error}), and its watch never listed it"
        ));
    }
    info!(error = %error, wait = ?limits.wait,
        "cannot read the DaemonSet; waiting for its watch to tell whether it is being deleted");
    if w.gone_within(limits.wait).await {
        Verdict::Uninstall(Gone::SeenByWatch)
    } else {
        Verdict::Keep(format!(
            "cannot read the DaemonSet ({error}), and its watch saw no deletion within {:?}",
            limits.wait
        ))
    }
}
