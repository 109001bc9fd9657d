//! Peer endpoints given as host names, resolved off the reconcile path.
//!
//! A reconcile never waits for DNS: it takes what the cache holds (nothing
//! yet: the peer is configured without an endpoint, so it can still reach
//! the pod, and the pod answers where it comes from). A missing or expired
//! name is resolved on a blocking thread of its own, at most one lookup per
//! name at a time and at most [`MAX_LOOKUPS`] at once; when the answer
//! changes what the cache held, the peers of that network and namespace
//! are marked for a reconcile. So one namespace's slow or broken DNS costs
//! its own peers their endpoint for a while, and nobody else anything.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use wg_netns::Endpoint;

use crate::index::Dirty;

/// How long an answer is used: names that resolve are looked up again
/// after a minute (the system resolver gives no TTL), failures after 10 s.
const TTL_OK: Duration = Duration::from_secs(60);
const TTL_FAILED: Duration = Duration::from_secs(10);
/// Lookups in flight at once, node-wide.
pub const MAX_LOOKUPS: usize = 8;

#[derive(Debug, Clone)]
struct Answer {
    addr: Option<SocketAddr>,
    until: Instant,
}

/// The cache (see the module's documentation).
#[derive(Debug, Default)]
pub struct Resolver {
    answers: Mutex<HashMap<String, Answer>>,
    /// Names being looked up, with who to tell: (network, namespace).
    pending: Mutex<HashMap<String, Vec<(String, String)>>>,
}

impl Resolver {
    /// The address of `endpoint` as far as known now; starts a lookup when
    /// the name is unknown or its answer expired (the last answer is still
    /// used meanwhile). `mark` is called with the peers to reconcile when
    /// a lookup changes the answer.
    pub fn lookup(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        network: &str,
        namespace: &str,
        mark: impl Fn(Vec<Dirty>) + Send + 'static,
    ) -> Option<SocketAddr> {
        if let Some(a) = endpoint.address() {
            return Some(a);
        }
        let name = endpoint.to_string();
        let known = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned();
        if known.as_ref().is_none_or(|a| a.until <= Instant::now()) {
            self.start(name, endpoint.clone(), network, namespace, mark);
        }
        known.and_then(|a| a.addr)
    }

    fn start(
        self: &Arc<Self>,
        name: String,
        endpoint: Endpoint,
        network: &str,
        namespace: &str,
        mark: impl Fn(Vec<Dirty>) + Send + 'static,
    ) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let waiting = pending.len();
            if let Some(who) = pending.get_mut(&name) {
                let w = (network.to_string(), namespace.to_string());
                if !who.contains(&w) {
                    who.push(w);
                }
                return;
            }
            if waiting >= MAX_LOOKUPS {
                // Tried again at the next reconcile that needs it.
                return;
            }
            pending.insert(
                name.clone(),
                vec![(network.to_string(), namespace.to_string())],
            );
        }
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let addr = endpoint.resolve();
            if let Err(e) = &addr {
                warn!(endpoint = %name, error = %e, "a peer's endpoint does not resolve");
            }
            let addr = addr.ok();
            let ttl = if addr.is_some() { TTL_OK } else { TTL_FAILED };
            let before = me.answers.lock().unwrap_or_else(|e| e.into_inner()).insert(
                name.clone(),
                Answer {
                    addr,
                    until: Instant::now() + ttl,
                },
            );
            let who = me
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name)
                .unwrap_or_default();
            if before.and_then(|a| a.addr) != addr {
                debug!(endpoint = %name, ?addr, "endpoint resolved");
                mark(
                    who.into_iter()
                        .map(|(network, namespace)| Dirty::Peers { network, namespace })
                        .collect(),
                );
            }
        });
    }

    /// Lookups in flight.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn host(h: &str) -> Endpoint {
        Endpoint::Host {
            host: h.to_string(),
            port: 51820,
        }
    }

    /// A reconcile never waits: the first call answers at once (nothing
    /// known), the lookup runs aside and marks the waiting peers when done;
    /// the next call has the address.
    #[tokio::test]
    async fn lookups_run_aside_and_mark_who_waits() {
        let r = Arc::new(Resolver::default());
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        let first = r.lookup(&host("localhost"), "n0", "ns1", move |d| {
            tx.send(d).unwrap()
        });
        assert_eq!(first, None, "answered from the cache only");
        // A second caller while it is in flight: told too, no second lookup.
        assert_eq!(
            r.lookup(&host("localhost"), "n0", "ns2", move |d| tx2
                .send(d)
                .unwrap()),
            None
        );
        assert!(r.in_flight() <= 1);
        let marked = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the waiting peers were not marked");
        assert_eq!(
            marked,
            vec![
                Dirty::Peers {
                    network: "n0".into(),
                    namespace: "ns1".into()
                },
                Dirty::Peers {
                    network: "n0".into(),
                    namespace: "ns2".into()
                }
            ]
        );
        let addr = r.lookup(&host("localhost"), "n0", "ns1", |_| {});
        assert_eq!(addr.map(|a| a.port()), Some(51820));
        assert!(addr.is_some_and(|a| a.ip().is_loopback()));
        // An address needs no lookup.
        let a: SocketAddr = "10.250.0.9:51820".parse().unwrap();
        assert_eq!(r.lookup(&Endpoint::Addr(a), "n0", "ns1", |_| {}), Some(a));
    }

    /// A name that does not resolve costs nothing but its own peer's
    /// endpoint, and is not looked up again before its short TTL.
    #[tokio::test]
    async fn a_failed_name_is_cached_briefly() {
        let r = Arc::new(Resolver::default());
        let bad = host("does-not-exist.invalid");
        assert_eq!(r.lookup(&bad, "n0", "ns1", |_| {}), None);
        let until = Instant::now() + Duration::from_secs(30);
        while r.in_flight() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.lookup(&bad, "n0", "ns1", |_| {}), None);
        assert_eq!(r.in_flight(), 0, "looked up again within its TTL");
    }
}
