//! The link watch: an interface deleted behind the agent's back (a crash,
//! a person, another program) is verified and made again as soon as the
//! kernel says so, instead of at the next periodic verify
//! (`WG_AGENT_VERIFY_INTERVAL`, 30 s by default).
//!
//! One subscription, opened in the node's namespace, hears the links of
//! every namespace that has an id there (wg-netns's
//! [`LinkEvents::subscribe_all`]); each interface's pod namespace is given
//! one when the agent takes the interface (`link_ns`). An id does not keep
//! a namespace alive. The agent learns of a pod's end from CNI DEL and the
//! pod watch, not from here: it holds each pod's namespace open (its
//! `Birthplace`) for as long as it keeps the interface, so the namespace
//! cannot die under it (docs/architecture.md, "The node agent").
//!
//! The periodic verify stays the safety net for what no event says: drift
//! that deletes nothing, lost notifications (an overrun makes the watch
//! verify everything at once), a subscription that could not be opened
//! (`wg_agent_link_watch_up` 0, and a warning).

use std::time::Duration;

use wg_netns::{LinkEvent, LinkEvents};

use super::*;

/// Where the link watch hears a pod's links from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkNs {
    /// The node's own namespace (events without an nsid): a pod sharing
    /// the node's network, or a test.
    Node,
    /// A peer namespace, by its id in the node's namespace.
    Peer(i32),
}

/// How the link watch will know `place`'s pod namespace: giving it an id in
/// `node` if it has none (blocking: two netlink requests). `None` (logged)
/// when the kernel refuses: that interface is then left to the verify.
pub(crate) fn link_ns(node: &Netns, place: &Birthplace) -> Option<LinkNs> {
    let pod = place.target();
    let found = match pod.same_as(node) {
        Ok(true) => Ok(LinkNs::Node),
        Ok(false) => node.nsid_of(pod).map(LinkNs::Peer),
        Err(e) => Err(e),
    };
    found
        .map_err(|e| warn!(netns = %pod.path().display(), error = %e, "the link watch will not hear this pod's links"))
        .ok()
}

/// What the watch's thread reports.
#[derive(Debug, PartialEq, Eq)]
enum Heard {
    /// Link `index` of namespace `ns` was deleted (or moved away).
    Removed { ns: LinkNs, index: u32 },
    /// Notifications were lost: anything may have changed.
    Overrun,
}

impl Heard {
    fn of(event: &LinkEvent) -> Option<Heard> {
        match event {
            LinkEvent::Removed(u) => Some(Heard::Removed {
                ns: u.nsid.map(LinkNs::Peer).unwrap_or(LinkNs::Node),
                index: u.link.index,
            }),
            LinkEvent::Overrun => Some(Heard::Overrun),
            _ => None,
        }
    }
}

impl Agent {
    /// The held interfaces that are link `index` of namespace `ns`. A slot
    /// another job holds is skipped: that job (an ADD, a DEL, a repair)
    /// is changing the interface itself.
    fn keys_of_link(&self, ns: LinkNs, index: u32) -> Vec<Key> {
        self.keys_where(false, |_, e| {
            e.heard_as == Some(ns) && e.attachment.as_ref().is_some_and(|a| a.index == index)
        })
    }

    /// A link was heard deleted: verify (and so make again) the interfaces
    /// it was.
    async fn heard(self: &Arc<Self>, heard: Heard) {
        match heard {
            Heard::Removed { ns, index } => {
                for key in self.keys_of_link(ns, index) {
                    self.metrics.links_removed.inc();
                    warn!(attachment = %key, "interface deleted behind the agent's back: making it again");
                    if let Err(e) = self.verify_one(&key, true).await {
                        warn!(attachment = %key, error = %e, "verify failed");
                    }
                }
            }
            Heard::Overrun => {
                warn!("link notifications were lost: verifying every interface");
                self.verify().await;
            }
        }
    }
}

/// Listen to link events until the agent stops (the task is aborted): a
/// thread reads the subscription, this task acts on what it hears. When
/// the subscription cannot be opened the agent goes on without it (the
/// periodic verify still repairs), says so once, and tries again every
/// minute.
pub async fn watch_links(agent: Arc<Agent>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Heard>();
    let node = match agent.node.try_clone() {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "no link watch: the periodic verify alone finds deleted interfaces");
            return;
        }
    };
    let up = agent.metrics.link_watch.clone();
    let reader = std::thread::Builder::new()
        .name("wg-agent-links".into())
        .spawn(move || read_links(&node, &tx, &up));
    if let Err(e) = reader {
        warn!(error = %e, "no link watch: the periodic verify alone finds deleted interfaces");
        return;
    }
    while let Some(heard) = rx.recv().await {
        if !agent.is_synced() {
            // Restored interfaces are verified once the caches sync.
            continue;
        }
        agent.heard(heard).await;
    }
}

/// The reader thread: subscribe (again after a failure, every minute) and
/// forward what matters until the receiving task is gone.
fn read_links(
    node: &Netns,
    tx: &mpsc::UnboundedSender<Heard>,
    gauge: &prometheus_client::metrics::gauge::Gauge,
) {
    const RETRY: Duration = Duration::from_secs(60);
    const POLL: Duration = Duration::from_secs(1);
    let up = |on: bool| {
        gauge.set(i64::from(on));
    };
    while !tx.is_closed() {
        let mut events = match LinkEvents::subscribe_all(node) {
            Ok(ev) => ev,
            Err(e) => {
                warn!(error = %e, retry_in = ?RETRY, "cannot hear link events: the periodic verify alone finds deleted interfaces");
                up(false);
                std::thread::sleep(RETRY);
                continue;
            }
        };
        // Room for a burst (a node's pods deleted at once) before an
        // overrun; as root the system limit does not apply.
        let _ = events.set_receive_buffer_size(4 << 20);
        up(true);
        while !tx.is_closed() {
            match events.next_timeout(POLL) {
                Ok(Some(ev)) => {
                    if let Some(h) = Heard::of(&ev) {
                        if tx.send(h).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, "link events: reading failed; subscribing again");
                    up(false);
                    let _ = tx.send(Heard::Overrun);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tests::{hold, record};
    use crate::testutil::{status, test_agent};
    use wg_netns_testkit::{environment, must, TestNs};

    /// The reader hears a link deleted in a pod namespace that has an id
    /// in the node's (two namespaces of the test's own, a TUN link as a
    /// userspace WireGuard device is), as a deletion of that index there,
    /// and nothing for links added.
    #[test]
    fn the_reader_hears_a_pod_link_deleted() {
        if environment("the_reader_hears_a_pod_link_deleted").is_none() {
            return;
        }
        let node = TestNs::new("lnode");
        let pod = TestNs::new("lpod");
        let nsid = node.ns.nsid_of(&pod.ns).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        let reader = {
            let node = node.ns.try_clone().unwrap();
            let gauge = gauge.clone();
            std::thread::spawn(move || read_links(&node, &tx, &gauge))
        };
        // Subscribed once the gauge says so.
        assert!(wg_netns_testkit::eventually(
            Duration::from_secs(5),
            || gauge.get() == 1
        ));
        must(&[
            "ip", "-n", &pod.name, "tuntap", "add", "wgl0", "mode", "tun",
        ]);
        let index: u32 = must(&["ip", "-n", &pod.name, "-o", "link", "show", "wgl0"])
            .split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .unwrap();
        must(&["ip", "-n", &pod.name, "link", "del", "wgl0"]);
        let heard = rx.blocking_recv();
        assert_eq!(
            heard,
            Some(Heard::Removed {
                ns: LinkNs::Peer(nsid),
                index
            })
        );
        // The reader ends once nobody listens (within its poll interval).
        drop(rx);
        reader.join().unwrap();
        drop(pod);
        drop(node);
    }

    /// A deletion is matched to the interface held as that link of that
    /// namespace only.
    #[tokio::test]
    async fn a_deletion_names_only_the_interface_it_was() {
        let t = test_agent(|_| status(404, "NotFound"));
        let key = hold(
            &t.agent,
            record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820),
        );
        // hold(): link 2000000000 of the node's namespace.
        assert_eq!(
            t.agent.keys_of_link(LinkNs::Node, 2_000_000_000),
            vec![key.clone()]
        );
        assert!(t.agent.keys_of_link(LinkNs::Node, 7).is_empty());
        assert!(t
            .agent
            .keys_of_link(LinkNs::Peer(0), 2_000_000_000)
            .is_empty());
        // A slot another job holds is that job's.
        let slot = t.agent.slot(&key).unwrap();
        let _held = slot.lock().await;
        assert!(t.agent.keys_of_link(LinkNs::Node, 2_000_000_000).is_empty());
    }
}
