//! Link events from real namespaces (root only).
//!
//! Without root every test prints `SKIP ...` and passes, unless
//! `WG_NETNS_REQUIRE_ALL=1`, which turns the skip into a failure. Every
//! namespace made here is named `wgev-*` and removed on drop, also when a
//! test panics.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use wg_netns::{IfName, LinkEvent, LinkEvents, Netns, Rtnl};

/// How long any one expected event may take.
const WITHIN: Duration = Duration::from_secs(5);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short per-process, per-call unique tag.
fn tag() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{:x}{:x}", std::process::id() % 0xfffff, n)
}

fn privileged(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let why = "needs root (network namespaces)";
    if std::env::var("WG_NETNS_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{test}: required but cannot run: {why}");
    }
    eprintln!("SKIP {test}: {why}");
    false
}

/// Removes the `wgev-*` namespaces it created when dropped. Declare it
/// first so every handle and socket on them is closed before it runs.
#[derive(Default)]
struct Namespaces(Vec<String>);

impl Namespaces {
    fn create(&mut self, role: &str) -> (String, Netns) {
        let name = format!("wgev-{}-{role}", tag());
        self.0.push(name.clone());
        let ns = Netns::create_named(&name).expect("create test namespace");
        (name, ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            if let Err(e) = Netns::remove_named(name) {
                eprintln!("removing namespace {name}: {e}");
            }
        }
    }
}

fn ifname(prefix: &str) -> IfName {
    IfName::new(format!("{prefix}{}", tag())).expect("ifname")
}

/// Read events until one satisfies `want`; panic (listing what came) after
/// `within`. Returns the match and the events seen before it.
fn wait_for(
    events: &mut LinkEvents,
    within: Duration,
    what: &str,
    mut want: impl FnMut(&LinkEvent) -> bool,
) -> (LinkEvent, Vec<LinkEvent>) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.next_timeout(left).expect("reading link events") {
            Some(ev) if want(&ev) => return (ev, seen),
            Some(ev) => seen.push(ev),
            None => panic!("no {what} within {within:?}; saw {seen:#?}"),
        }
    }
}

/// The `n` first events that satisfy `want`, in arrival order, all within
/// `within`.
fn collect(
    events: &mut LinkEvents,
    within: Duration,
    what: &str,
    n: usize,
    mut want: impl FnMut(&LinkEvent) -> bool,
) -> Vec<LinkEvent> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        got.push(wait_for(events, left, what, &mut want).0);
    }
    got
}

/// The link updates of `evs` sorted so that `first` comes first.
fn updates(evs: &[LinkEvent], first: &IfName) -> Vec<wg_netns::LinkUpdate> {
    let mut u: Vec<_> = evs.iter().filter_map(|e| e.link().cloned()).collect();
    u.sort_by_key(|u| u.link.name != first.as_str());
    u
}

#[test]
fn link_added_then_removed_in_a_pod() {
    if !privileged("link_added_then_removed_in_a_pod") {
        return;
    }
    let mut namespaces = Namespaces::default();
    let (_, pod) = namespaces.create("pod");
    let mut events = LinkEvents::subscribe(&pod).expect("subscribe");
    let rtnl = Rtnl::open(&pod).expect("rtnl");
    let (a, b) = (ifname("eva"), ifname("evb"));

    let veth = rtnl.create_veth(&a, &b, None).expect("create veth");
    let peer = rtnl.link_by_name(&b).expect("peer");
    // The kernel registers the peer first: take both Added in any order.
    let is_ours = |u: &wg_netns::LinkUpdate| u.link.name == a.as_str() || u.link.name == b.as_str();
    let added = collect(
        &mut events,
        WITHIN,
        "Added(a) and Added(b)",
        2,
        |e| matches!(e, LinkEvent::Added(u) if is_ours(u)),
    );
    let added = updates(&added, &a);
    let (ua, ub) = (&added[0], &added[1]);
    assert_eq!(
        (ua.link.name.as_str(), ua.link.index),
        (a.as_str(), veth.index)
    );
    assert_eq!(
        (ub.link.name.as_str(), ub.link.index),
        (b.as_str(), peer.index)
    );
    for u in &added {
        assert_eq!(u.link.kind.as_deref(), Some("veth"));
        assert_eq!(u.nsid, None, "single-namespace events carry no nsid");
        assert!(!u.link.up && !u.lower_up);
        assert!(u.link.mtu > 0);
    }

    // Up on both ends: a Changed with IFF_UP, and the carrier comes up.
    rtnl.set_up(veth.index, true).expect("up a");
    rtnl.set_up(peer.index, true).expect("up b");
    wait_for(&mut events, WITHIN, "Changed(a, up, lower up)", |e| {
        matches!(e, LinkEvent::Changed(u)
            if u.link.index == veth.index && u.link.up && u.lower_up)
    });
    rtnl.set_mtu(veth.index, 1400).expect("mtu");
    wait_for(
        &mut events,
        WITHIN,
        "Changed(a, mtu 1400)",
        |e| matches!(e, LinkEvent::Changed(u) if u.link.index == veth.index && u.link.mtu == 1400),
    );

    rtnl.delete_link(veth.index).expect("delete veth");
    let removed = collect(
        &mut events,
        WITHIN,
        "Removed(a) and Removed(b)",
        2,
        |e| matches!(e, LinkEvent::Removed(u) if is_ours(u)),
    );
    let removed = updates(&removed, &a);
    assert_eq!(
        (removed[0].link.name.as_str(), removed[0].link.index),
        (a.as_str(), veth.index)
    );
    assert_eq!(
        (removed[1].link.name.as_str(), removed[1].link.index),
        (b.as_str(), peer.index)
    );
    assert!(removed
        .iter()
        .all(|u| u.link.kind.as_deref() == Some("veth")));
    let removed: Vec<_> = removed
        .iter()
        .map(|u| (u.link.name.clone(), u.link.index))
        .collect();
    eprintln!("single namespace: saw Added, Changed and Removed for {removed:?}");
}

#[test]
fn overrun_is_an_event_and_the_subscription_goes_on() {
    if !privileged("overrun_is_an_event_and_the_subscription_goes_on") {
        return;
    }
    let mut namespaces = Namespaces::default();
    let (_, pod) = namespaces.create("ovr");
    let mut events = LinkEvents::subscribe(&pod).expect("subscribe");
    // The smallest receive queue the kernel allows: a few notifications.
    events
        .set_receive_buffer_size(1)
        .expect("shrink receive buffer");
    let rtnl = Rtnl::open(&pod).expect("rtnl");
    for _ in 0..20 {
        let link = rtnl
            .create_veth(&ifname("evo"), &ifname("evp"), None)
            .expect("create veth");
        rtnl.delete_link(link.index).expect("delete veth");
    }
    let mut drained = Vec::new();
    while let Some(ev) = events
        .next_timeout(Duration::from_millis(200))
        .expect("an overrun is no error")
    {
        drained.push(ev);
    }
    let overruns = drained.iter().filter(|e| **e == LinkEvent::Overrun).count();
    assert!(
        overruns >= 1,
        "no Overrun among {} events: {drained:#?}",
        drained.len()
    );
    eprintln!(
        "overrun: 20 veth pairs made and deleted unread, then read {} events, {overruns} Overrun",
        drained.len()
    );

    // Still subscribed; with room to queue a whole veth pair's events.
    events
        .set_receive_buffer_size(1 << 20)
        .expect("grow receive buffer");
    let a = ifname("evq");
    rtnl.create_veth(&a, &ifname("evr"), None).expect("veth");
    wait_for(
        &mut events,
        WITHIN,
        "Added after overrun",
        |e| matches!(e, LinkEvent::Added(u) if u.link.name == a.as_str()),
    );
}

#[test]
fn namespace_gone_is_reported_through_listen_all_nsid() {
    if !privileged("namespace_gone_is_reported_through_listen_all_nsid") {
        return;
    }
    let mut namespaces = Namespaces::default();
    // A namespace of our own plays the node, so no other test's links or
    // namespace ids are heard.
    let (_, node) = namespaces.create("node");
    let (pod_name, pod) = namespaces.create("pod");
    let mut events = LinkEvents::subscribe_all(&node).expect("subscribe_all");

    assert_eq!(node.peer_nsid(&pod).expect("peer_nsid"), None);
    let nsid = node.nsid_of(&pod).expect("nsid_of");
    assert!(nsid >= 0);
    assert_eq!(node.nsid_of(&pod).expect("nsid_of again"), nsid);
    assert_eq!(node.peer_nsid(&pod).expect("peer_nsid"), Some(nsid));
    wait_for(&mut events, WITHIN, "NsidAssigned", |e| {
        *e == LinkEvent::NsidAssigned { nsid }
    });

    // A link event from inside the pod, tagged with the pod's nsid.
    let rtnl = Rtnl::open(&pod).expect("rtnl in pod");
    let (a, b) = (ifname("evn"), ifname("evm"));
    let veth = rtnl.create_veth(&a, &b, None).expect("veth in pod");
    let (ev, before) = wait_for(
        &mut events,
        WITHIN,
        "Added(a) from the pod",
        |e| matches!(e, LinkEvent::Added(u) if u.link.name == a.as_str()),
    );
    let u = ev.link().expect("link event");
    assert_eq!(u.nsid, Some(nsid), "event not tagged with the pod's nsid");
    assert_eq!(u.link.index, veth.index);
    assert_eq!(u.link.kind.as_deref(), Some("veth"));
    assert!(
        before
            .iter()
            .all(|e| e.link().is_none_or(|u| u.nsid == Some(nsid))),
        "a link event not from the pod: {before:#?}"
    );

    // Kill the pod: unpin it and close every handle on it. The nsid and the
    // node's subscription do not keep it alive; a subscription inside the
    // pod does, until it is dropped.
    let pinning = LinkEvents::subscribe(&pod).expect("subscribe in the pod");
    drop(rtnl);
    drop(pod);
    Netns::remove_named(&pod_name).expect("remove pod");
    let mut while_pinned = Vec::new();
    while let Some(ev) = events
        .next_timeout(Duration::from_millis(500))
        .expect("events")
    {
        while_pinned.push(ev);
    }
    assert!(
        !while_pinned.contains(&LinkEvent::NamespaceGone { nsid }),
        "the pod died while a socket inside it was open: {while_pinned:#?}"
    );
    drop(pinning);
    let t0 = Instant::now();
    let (_, between) = wait_for(&mut events, WITHIN, "NamespaceGone", |e| {
        *e == LinkEvent::NamespaceGone { nsid }
    });
    let latency = t0.elapsed();
    assert!(
        Netns::from_name(&pod_name).is_err(),
        "the pod's name is still there"
    );
    eprintln!(
        "listen-all-nsid: pod nsid {nsid}, no NamespaceGone in 500 ms while a socket inside \
         pinned it, then NamespaceGone {latency:?} after that socket closed; events in between: \
         {between:?}"
    );

    // Nothing more arrives about the dead pod.
    let mut after = Vec::new();
    while let Some(ev) = events
        .next_timeout(Duration::from_millis(300))
        .expect("events")
    {
        after.push(ev);
    }
    assert!(
        after
            .iter()
            .all(|e| e.link().is_none_or(|u| u.nsid != Some(nsid))),
        "link events from a dead namespace: {after:#?}"
    );
}
