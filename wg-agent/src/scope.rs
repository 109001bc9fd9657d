//! What a node's agent watches beyond the cluster-wide kinds: only what its
//! own interfaces need, so that what it receives grows with its pods and
//! their networks' members, not with the cluster.
//!
//! | watch | scope | why |
//! |---|---|---|
//! | WireGuardNetwork, Namespace | cluster | few; every ADD may name any network, `namespaceSelector`s match namespaces |
//! | Pod | `spec.nodeName` = this node | the node's pods |
//! | WireGuardAttachment | `spec.nodeName` = this node | garbage collection of its own |
//! | WireGuardAttachment, WireGuardAddressBlock | `spec.network` = N, for each network N with members on the node | the mesh members of N and who may publish which address |
//! | WireGuardPeer | namespace S, for each namespace S with members on the node | the external peers of its pods |
//!
//! The members on the node are its pods that name a network (their
//! annotation, seen by the pod watch before their ADD) and the interfaces
//! it holds ([`Scope::pin`]: an ADD whose network comes from the CNI
//! configuration, a restart's records). A part no longer needed is dropped
//! after a linger (`WG_AGENT_WATCH_LINGER`), so a pod deleted and made
//! again does not cost a relist. An interface whose watches have not listed
//! yet is left as it is ([`crate::index::Index::scope_listed`]): its peers
//! are not known, and none is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::local::Key;

/// One part of the node's scope: the watches started for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// A network with members on the node: its attachments and address
    /// blocks.
    Network(String),
    /// A namespace with members on the node: its peers.
    Namespace(String),
}

/// The interfaces that keep parts of the scope, and the signals between
/// those who change it and the loop that keeps the watches
/// (`run::scope_loop`).
#[derive(Debug)]
pub struct Scope {
    pinned: Mutex<BTreeMap<Key, (String, String)>>,
    poke: tokio::sync::Notify,
    listed: tokio::sync::watch::Sender<u64>,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            pinned: Mutex::new(BTreeMap::new()),
            poke: tokio::sync::Notify::new(),
            listed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Scope {
    fn pinned(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, (String, String)>> {
        self.pinned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Interface `key` (of `network`, in `namespace`) needs its network's
    /// and namespace's watches while the agent holds it.
    pub fn pin(&self, key: &Key, network: &str, namespace: &str) {
        let new = (network.to_string(), namespace.to_string());
        if self.pinned().insert(key.clone(), new.clone()).as_ref() != Some(&new) {
            self.poke();
        }
    }

    /// Interface `key` is no longer held.
    pub fn unpin(&self, key: &Key) {
        if self.pinned().remove(key).is_some() {
            self.poke();
        }
    }

    /// The parts that the pinned interfaces and `pods` ((network,
    /// namespace) pairs of the node's pods) need.
    pub fn wanted(&self, pods: BTreeSet<(String, String)>) -> BTreeSet<Part> {
        let mut pairs = pods;
        pairs.extend(self.pinned().values().cloned());
        pairs
            .into_iter()
            .flat_map(|(network, namespace)| [Part::Network(network), Part::Namespace(namespace)])
            .collect()
    }

    /// What the node needs may have changed: the scope loop looks again.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Wait for a poke.
    pub async fn poked(&self) {
        self.poke.notified().await;
    }

    /// A scoped watch listed.
    pub fn note_listed(&self) {
        self.listed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wait until `ready` holds, re-asked each time a scoped watch lists,
    /// for at most `within`. Whether it holds.
    pub async fn wait_until(&self, within: Duration, ready: impl Fn() -> bool) -> bool {
        let mut rx = self.listed.subscribe();
        let wait = async {
            loop {
                if ready() {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uid: &str) -> Key {
        Key::new(uid, "wg0").unwrap()
    }

    #[test]
    fn pods_and_pins_make_the_parts() {
        let s = Scope::default();
        let pods = BTreeSet::from([("n1".to_string(), "a".to_string())]);
        s.pin(&key("u1"), "n2", "b");
        s.pin(&key("u2"), "n1", "b");
        assert_eq!(
            s.wanted(pods.clone()),
            BTreeSet::from([
                Part::Network("n1".into()),
                Part::Network("n2".into()),
                Part::Namespace("a".into()),
                Part::Namespace("b".into()),
            ])
        );
        s.unpin(&key("u1"));
        s.unpin(&key("u2"));
        assert_eq!(
            s.wanted(pods),
            BTreeSet::from([Part::Network("n1".into()), Part::Namespace("a".into())])
        );
        assert!(s.wanted(BTreeSet::new()).is_empty());
    }

    /// The scope loop looks again when what is pinned changes, not when
    /// the same pin is repeated (an ADD retried), and not by itself.
    #[tokio::test]
    async fn a_change_pokes_the_loop_and_a_repeat_does_not() {
        async fn poked(s: &Scope) -> bool {
            tokio::time::timeout(Duration::from_millis(20), s.poked())
                .await
                .is_ok()
        }
        let s = Scope::default();
        assert!(!poked(&s).await, "poked with nothing changed");
        s.pin(&key("u1"), "n1", "a");
        assert!(poked(&s).await, "a new pin did not poke");
        s.pin(&key("u1"), "n1", "a");
        assert!(!poked(&s).await, "a repeated pin poked");
        s.pin(&key("u1"), "n2", "a");
        assert!(poked(&s).await, "a changed pin did not poke");
        s.unpin(&key("u1"));
        assert!(poked(&s).await, "an unpin did not poke");
        s.unpin(&key("u1"));
        assert!(!poked(&s).await, "unpinning nothing poked");
    }

    #[tokio::test]
    async fn a_wait_ends_when_a_listing_makes_it_ready_or_at_its_bound() {
        let s = std::sync::Arc::new(Scope::default());
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, f2) = (s.clone(), flag.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            f2.store(true, std::sync::atomic::Ordering::SeqCst);
            s2.note_listed();
        });
        let f3 = flag.clone();
        assert!(
            s.wait_until(Duration::from_secs(10), move || f3
                .load(std::sync::atomic::Ordering::SeqCst))
                .await
        );
        assert!(!s.wait_until(Duration::from_millis(30), || false).await);
    }
}
