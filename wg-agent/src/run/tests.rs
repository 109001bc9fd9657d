//! The status writer against a scripted apiserver, in virtual time (its
//! retry delay and rate limit are real durations, so a paused runtime
//! lets them be checked exactly without waiting), and the heartbeat.

use super::*;
use crate::agent::tests::{hold, record};
use crate::testutil::{metric, status, test_agent, Seen, TestAgent, NODE};
use http::Method;
use serde_json::{json, Value};
use std::sync::atomic::AtomicUsize;

const ATTACHMENTS: &str =
    "/apis/wireguard.wg-netns.io/v1alpha1/namespaces/ns1/wireguardattachments";

/// Wait (in virtual time, at most a minute) until the apiserver has seen
/// `n` requests.
async fn requests(t: &TestAgent, n: usize) -> Vec<Seen> {
    for _ in 0..600 {
        if t.log.all().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.log.all()
}

fn echo(s: &Seen) -> (u16, Value) {
    let mut body = s.body.clone();
    body["metadata"]["uid"] = json!("obj-uid");
    body["metadata"]["resourceVersion"] = json!("1");
    if body.get("spec").is_none() {
        body["spec"] = json!({"network": "n0", "podName": "web", "podUID": "u1",
                              "nodeName": NODE, "interface": "wg0"});
    }
    if body["metadata"].get("name").is_none() {
        body["metadata"]["name"] = json!(s.path.rsplit('/').nth(1).unwrap_or("x"));
    }
    (200, body)
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_retried_then_the_status_follows() {
    let applies = Arc::new(AtomicUsize::new(0));
    let a2 = Arc::clone(&applies);
    let t = test_agent(move |s| {
        let apply = s.method == Method::PATCH && !s.path.ends_with("/status");
        if apply && a2.fetch_add(1, Ordering::SeqCst) == 0 {
            return status(500, "InternalError");
        }
        echo(s)
    });
    let key = hold(
        &t.agent,
        record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820),
    );
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(Publish::Upsert(key.clone())).unwrap();
    let started = tokio::time::Instant::now();
    let writer = tokio::spawn(publish_loop(
        Arc::clone(&t.agent),
        rx,
        tx.clone(),
        50,
        Duration::from_secs(2),
    ));
    let log = requests(&t, 3).await;
    writer.abort();

    let lines: Vec<String> = log.iter().map(Seen::line).collect();
    let object = format!("PATCH {ATTACHMENTS}/web-wg0");
    assert_eq!(
        lines,
        vec![
            object.clone(),
            object,
            format!("PATCH {ATTACHMENTS}/web-wg0/status")
        ]
    );
    // The first answer failed: no status was written after it, and the
    // write came again after the retry delay.
    assert!(
        log[1].at - log[0].at >= Duration::from_secs(2),
        "{:?}",
        log[1].at - log[0].at
    );
    assert!(log[1].at - started < Duration::from_secs(3));
    // The object: server-side apply by wg-agent, forced, naming the pod.
    assert_eq!(log[1].content_type, "application/apply-patch+yaml");
    assert!(
        log[1].query.contains("fieldManager=wg-agent"),
        "{}",
        log[1].query
    );
    assert!(log[1].query.contains("force=true"), "{}", log[1].query);
    let o = &log[1].body;
    assert_eq!(o["spec"]["podUID"], "u1");
    assert_eq!(o["spec"]["nodeName"], NODE);
    assert_eq!(o["spec"]["network"], "n0");
    assert_eq!(o["spec"]["interface"], "wg0");
    assert_eq!(o["metadata"]["labels"][wg_k8s_types::LABEL_NODE], NODE);
    assert_eq!(o["metadata"]["ownerReferences"][0]["uid"], "u1");
    assert_eq!(o["metadata"]["ownerReferences"][0]["kind"], "Pod");
    // The status: a merge patch with the key, addresses and endpoint.
    assert_eq!(log[2].content_type, "application/merge-patch+json");
    let st = &log[2].body["status"];
    assert_eq!(st["addresses"], json!(["10.77.0.2/16"]));
    assert_eq!(st["endpoint"], "10.250.0.11:51820");
    assert!(st["publicKey"].is_string());
    assert_eq!(metric(&t.agent, "wg_agent_status_writes_total"), 1.0);
    assert_eq!(
        metric(
            &t.agent,
            "wg_agent_apiserver_errors_total{operation=\"write_attachment\"}"
        ),
        1.0
    );
    let slot = t.agent.slot(&key).unwrap();
    assert!(
        slot.lock().await.as_ref().unwrap().written.is_some(),
        "remembered as written"
    );
    // Nothing more is written.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(t.log.all().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn writes_are_coalesced_per_attachment_and_rate_limited() {
    let t = test_agent(|s| match s.method {
        Method::DELETE => status(404, "NotFound"),
        _ => echo(s),
    });
    let a = hold(
        &t.agent,
        record(&t.agent, "ns1", "a", "u1", "n0", "10.77.0.2/16", 51820),
    );
    let b = hold(
        &t.agent,
        record(&t.agent, "ns1", "b", "u2", "n0", "10.77.0.3/16", 51821),
    );
    let (tx, rx) = mpsc::unbounded_channel();
    for p in [
        Publish::Upsert(a.clone()),
        Publish::Upsert(b.clone()),
        Publish::Upsert(a.clone()),
        Publish::Delete {
            namespace: "ns1".into(),
            name: "gone-wg0".into(),
            pod_uid: "u0".into(),
        },
        Publish::Upsert(a.clone()),
    ] {
        tx.send(p).unwrap();
    }
    let writer = tokio::spawn(publish_loop(
        Arc::clone(&t.agent),
        rx,
        tx.clone(),
        4,
        Duration::from_secs(2),
    ));
    let log = requests(&t, 5).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    writer.abort();
    let log2 = t.log.all();
    assert_eq!(
        log2.len(),
        5,
        "{:?}",
        log2.iter().map(Seen::line).collect::<Vec<_>>()
    );
    let lines: Vec<String> = log.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        vec![
            format!("PATCH {ATTACHMENTS}/a-wg0"),
            format!("PATCH {ATTACHMENTS}/a-wg0/status"),
            format!("PATCH {ATTACHMENTS}/b-wg0"),
            format!("PATCH {ATTACHMENTS}/b-wg0/status"),
            format!("GET {ATTACHMENTS}/gone-wg0"),
        ],
        "in arrival order; three upserts of a: one write; a delete of what is gone is done"
    );
    // 4 a second: a write starts at least 250 ms after the previous one.
    let starts = [log[0].at, log[2].at, log[4].at];
    for w in starts.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(250),
            "{:?}",
            w[1] - w[0]
        );
        assert!(
            w[1] - w[0] < Duration::from_millis(400),
            "{:?}",
            w[1] - w[0]
        );
    }
    assert_eq!(metric(&t.agent, "wg_agent_status_writes_total"), 3.0);

    // An interface let go before its write is not written.
    let t = test_agent(echo);
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(Publish::Upsert(
        crate::local::Key::new("u9", "wg0").unwrap(),
    ))
    .unwrap();
    let writer = tokio::spawn(publish_loop(
        Arc::clone(&t.agent),
        rx,
        tx.clone(),
        50,
        Duration::from_secs(2),
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    writer.abort();
    assert!(t.log.all().is_empty());
}

#[test]
fn heartbeat_goes_stale_without_beats() {
    // Limits far above a busy machine's scheduling delays.
    let h = Heartbeat::new(Duration::from_millis(600));
    assert!(h.check().is_ok(), "fresh: the start counts");
    std::thread::sleep(Duration::from_millis(1300));
    let e = h.check().unwrap_err();
    assert!(
        e.starts_with("no heartbeat for ") && e.ends_with(" s"),
        "{e}"
    );
    h.beat();
    assert!(h.check().is_ok());
    std::thread::sleep(Duration::from_millis(700));
    assert!(h.check().is_err());
}

#[test]
fn heartbeat_check_racing_a_beat_is_healthy() {
    // check() reads the clock, then the last beat: a beat from another
    // thread in between is newer than the clock it is compared with.
    let h = Arc::new(Heartbeat::new(Duration::from_secs(60)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beater = {
        let (h, stop) = (Arc::clone(&h), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                h.beat();
            }
        })
    };
    let until = Instant::now() + Duration::from_millis(300);
    let mut checks = 0u64;
    let mut bad = None;
    while Instant::now() < until {
        checks += 1;
        match std::panic::catch_unwind(|| h.check()) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bad = Some(e),
            Err(_) => bad = Some("check panicked".into()),
        }
        if bad.is_some() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    beater.join().unwrap();
    assert_eq!(bad, None, "after {checks} checks");
}

/// A scripted apiserver holding one attachment object `ns1/web-wg0` (or
/// none): GET, DELETE (with its UID precondition) and a way for the test
/// to replace it; the pod UIDs of the objects it deleted.
#[derive(Clone, Default)]
struct OneObject {
    object: Arc<std::sync::Mutex<Option<(String, String)>>>,
    deleted: Arc<std::sync::Mutex<Vec<String>>>,
    fail_next: Arc<std::sync::atomic::AtomicBool>,
}

impl OneObject {
    fn put(&self, uid: &str, pod_uid: &str) {
        *self.object.lock().unwrap() = Some((uid.into(), pod_uid.into()));
    }
    fn answer(&self, s: &Seen) -> (u16, Value) {
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return status(500, "InternalError");
        }
        let mut object = self.object.lock().unwrap();
        let Some((uid, pod_uid)) = object.clone() else {
            return status(404, "NotFound");
        };
        let body = json!({"apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardAttachment",
            "metadata": {"name": "web-wg0", "namespace": "ns1", "uid": uid},
            "spec": {"network": "n0", "podName": "web", "podUID": pod_uid, "nodeName": NODE, "interface": "wg0"}});
        match s.method {
            Method::GET => (200, body),
            Method::DELETE => {
                let pre = &s.body["preconditions"]["uid"];
                if !pre.is_null() && *pre != json!(uid) {
                    return status(409, "Conflict");
                }
                *object = None;
                self.deleted.lock().unwrap().push(pod_uid);
                (200, body)
            }
            _ => status(405, "MethodNotAllowed"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_retried_delete_spares_a_new_pods_object_of_the_same_name() {
    let world = OneObject::default();
    world.put("obj-1", "u1");
    let w2 = world.clone();
    let t = test_agent(move |s| w2.answer(s));
    let (tx, rx) = mpsc::unbounded_channel();
    // The old pod's interface went; the apiserver fails the first try.
    world.fail_next.store(true, Ordering::SeqCst);
    tx.send(Publish::Delete {
        namespace: "ns1".into(),
        name: "web-wg0".into(),
        pod_uid: "u1".into(),
    })
    .unwrap();
    let writer = tokio::spawn(publish_loop(
        Arc::clone(&t.agent),
        rx,
        tx.clone(),
        50,
        Duration::from_secs(2),
    ));
    requests(&t, 1).await;
    // Before the retry, the pod's owner deleted the old object and the
    // pod, recreated under the same name (a StatefulSet), got its own.
    world.put("obj-2", "u2");
    tokio::time::sleep(Duration::from_secs(10)).await;
    writer.abort();
    assert!(
        world.deleted.lock().unwrap().is_empty(),
        "{:?}",
        t.log.lines()
    );
    assert!(world.object.lock().unwrap().is_some());

    // The old pod's object itself is deleted, with its UID as precondition.
    let world = OneObject::default();
    world.put("obj-1", "u1");
    let w2 = world.clone();
    let t = test_agent(move |s| w2.answer(s));
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(Publish::Delete {
        namespace: "ns1".into(),
        name: "web-wg0".into(),
        pod_uid: "u1".into(),
    })
    .unwrap();
    let writer = tokio::spawn(publish_loop(
        Arc::clone(&t.agent),
        rx,
        tx.clone(),
        50,
        Duration::from_secs(2),
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    writer.abort();
    assert_eq!(*world.deleted.lock().unwrap(), vec!["u1".to_string()]);
    let log = t.log.all();
    let lines: Vec<String> = log.iter().map(Seen::line).collect();
    assert_eq!(
        lines,
        vec![
            format!("GET {ATTACHMENTS}/web-wg0"),
            format!("DELETE {ATTACHMENTS}/web-wg0")
        ]
    );
    assert_eq!(log[1].body["preconditions"]["uid"], "obj-1");
}

#[tokio::test(start_paused = true)]
async fn urgent_writes_pass_counter_refreshes() {
    let t = test_agent(echo);
    let a = hold(
        &t.agent,
        record(&t.agent, "ns1", "a", "u1", "n0", "10.77.0.2/16", 51820),
    );
    let b = hold(
        &t.agent,
        record(&t.agent, "ns1", "b", "u2", "n0", "10.77.0.3/16", 51821),
    );
    let c = hold(
        &t.agent,
        record(&t.agent, "ns1", "c", "u3", "n0", "10.77.0.4/16", 51822),
    );
    let (tx, rx) = mpsc::unbounded_channel();
    // Counter refreshes of a and b queued first, then a new attachment c
    // (others wait for its key), then an urgent write of a: a's refresh
    // is merged into it.
    for p in [
        Publish::Refresh(a.clone()),
        Publish::Refresh(b.clone()),
        Publish::Upsert(c.clone()),
        Publish::Upsert(a.clone()),
    ] {
        tx.send(p).unwrap();
    }
    let writer = tokio::spawn(publish_loop(
        Arc::clone(&t.agent),
        rx,
        tx.clone(),
        50,
        Duration::from_secs(2),
    ));
    let log = requests(&t, 6).await;
    writer.abort();
    let objects: Vec<String> = log
        .iter()
        .filter(|s| !s.path.ends_with("/status"))
        .map(|s| s.path.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(objects, vec!["c-wg0", "a-wg0", "b-wg0"], "{objects:?}");
}

/// A device that answers late (a stopped daemon) holds up its own read,
/// never the heartbeat: the timers beat at every tick while the counters
/// read waits (before, the loop awaited the read and `/healthz` failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_device_does_not_stop_the_heartbeat() {
    let t = crate::testutil::test_agent_with(&[("WG_AGENT_STATS_INTERVAL", "100ms")], |_| {
        status(500, "InternalError")
    });
    let rec = record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820);
    hold(&t.agent, rec.clone());
    let dev = crate::testutil::FakeUapi::start(
        &t.uapi_dir,
        rec.attachment.birth_name.as_str(),
        "listen_port=51820\n".to_string(),
    );
    dev.delay_replies(3_000);
    // Not synced: the verify (which runs at once on sync, and would hold
    // the interface while it repairs this link-less one) stays out; the
    // counters' read is the slow job here.
    let h = Arc::new(Heartbeat::new(Duration::from_millis(1_000)));
    let timers = tokio::spawn(timers(Arc::clone(&t.agent), Arc::clone(&h)));
    // Well past the heartbeat's limit, and the device has not answered.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(!dev.requests().is_empty(), "the counters were not read");
    let alive = h.check();
    timers.abort();
    dev.delay_replies(0);
    assert!(
        alive.is_ok(),
        "a slow device stopped the heartbeat: {alive:?}"
    );
}

/// The verify runs as soon as the caches sync, not a verify interval
/// later: what broke while the agent was away (an interface deleted, a
/// kill switch's leak) is repaired at once. Here the held interface has no
/// link, so the verify finds drift and counts a repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_runs_once_the_caches_sync() {
    let t = crate::testutil::test_agent_with(&[("WG_AGENT_VERIFY_INTERVAL", "1h")], |_| {
        status(500, "InternalError")
    });
    let rec = record(&t.agent, "ns1", "web", "u1", "n0", "10.77.0.2/16", 51820);
    hold(&t.agent, rec.clone());
    // Its control socket answers, so the repair finds a daemon and
    // starts none.
    let _dev = crate::testutil::FakeUapi::start(
        &t.uapi_dir,
        rec.attachment.birth_name.as_str(),
        "listen_port=51820\n".to_string(),
    );
    let repairs = |t: &TestAgent| metric(&t.agent, "wg_agent_drift_repairs_total");
    let h = Arc::new(Heartbeat::new(Duration::from_secs(60)));
    let timers = tokio::spawn(timers(Arc::clone(&t.agent), h));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(repairs(&t), 0.0, "verified before the caches synced");
    t.agent.set_synced();
    let mut seen = false;
    for _ in 0..50 {
        if repairs(&t) >= 1.0 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timers.abort();
    assert!(seen, "no verify within 5 s of the sync (interval 1 h)");
    // Counted by kind, as wg-netns names it.
    assert_eq!(
        metric(&t.agent, "wg_agent_drift_found_total{kind=\"missing\"}"),
        1.0
    );
}
