//! Uninstall on delete: the decision at SIGTERM, against a scripted
//! apiserver.

use super::removal::{decide, DaemonSetWatch, Gone, Limits, Owner, Verdict, Watched};
use crate::testutil::{apiserver, status, Log, Seen};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

const DS: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets";
const DS_GET: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets/wg-agent";
const NS_GET: &str = "/api/v1/namespaces/kube-system";

fn owner() -> Owner {
    Owner::from_lookup(|_| None)
}

fn limits(wait_ms: u64) -> Limits {
    Limits {
        request: Duration::from_secs(2),
        wait: Duration::from_millis(wait_ms),
    }
}

fn meta(name: &str, rv: u32, deleting: bool) -> Value {
    let mut m = json!({"name": name, "uid": format!("uid-{name}"),
                       "resourceVersion": rv.to_string(),
                       "creationTimestamp": "2026-12-07T10:00:00Z"});
    if deleting {
        m["deletionTimestamp"] = json!("2026-12-07T12:00:00Z");
    }
    m
}

fn ds(rv: u32, deleting: bool) -> (u16, Value) {
    let mut m = meta("wg-agent", rv, deleting);
    m["namespace"] = json!("kube-system");
    (
        200,
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": m}),
    )
}

fn namespace(deleting: bool) -> (u16, Value) {
    (
        200,
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": meta("kube-system", 3, deleting)}),
    )
}

/// The apiserver's own NotFound for `kind` `name`.
fn not_found(kind: &str, name: &str) -> (u16, Value) {
    let (code, mut v) = status(404, "NotFound");
    v["details"] = json!({"name": name, "kind": kind});
    (code, v)
}

fn list(items: Vec<Value>) -> (u16, Value) {
    (
        200,
        json!({"apiVersion": "apps/v1", "kind": "DaemonSetList",
               "metadata": {"resourceVersion": "10"}, "items": items}),
    )
}

fn event(ty: &str, (_, obj): (u16, Value)) -> (u16, Value) {
    (200, json!({"type": ty, "object": obj}))
}

/// An apiserver answering the DaemonSet's GET with `get`, its
/// namespace's with `ns`, the watch's list with `list`, and its watch
/// requests with `watches` in turn, then 403 (its Role gone).
fn server(
    get: (u16, Value),
    ns: (u16, Value),
    list: (u16, Value),
    watches: Vec<(u16, Value)>,
) -> (kube::Client, Log) {
    let mut watches = watches.into_iter();
    apiserver(move |s: &Seen| {
        if s.path == DS_GET {
            get.clone()
        } else if s.path == NS_GET {
            ns.clone()
        } else if s.path == DS && s.query.contains("watch=true") {
            assert!(s.query.contains("metadata.name%3Dwg-agent"), "{}", s.query);
            watches.next().unwrap_or_else(|| status(403, "Forbidden"))
        } else if s.path == DS {
            assert!(s.query.contains("metadata.name%3Dwg-agent"), "{}", s.query);
            list.clone()
        } else {
            status(404, "NotFound")
        }
    })
}

/// Waits (up to 5 s) until the watch knows `want`.
async fn until(w: &DaemonSetWatch, want: Watched) {
    let t = Instant::now();
    while w.current() != want {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the watch knows {:?}, not {want:?}",
            w.current()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const PRESENT: Watched = Watched {
    listed: true,
    gone: false,
};
const GONE: Watched = Watched {
    listed: true,
    gone: true,
};

#[tokio::test]
async fn a_refusal_or_an_error_at_shutdown_keeps_the_install() {
    // The case: the apiserver answers 401 or 403 (or fails) at
    // SIGTERM, and nothing says the DaemonSet is going: a container
    // restart must find wg-cni installed.
    for code in [401, 403, 500, 503] {
        let reason = match code {
            401 => "Unauthorized",
            403 => "Forbidden",
            _ => "InternalError",
        };
        // No watch at all, then a watch whose list was refused too.
        let (client, log) = server(
            status(code, reason),
            namespace(true),
            status(code, reason),
            vec![],
        );
        let v = decide(&client, &owner(), None, limits(5000)).await;
        assert!(matches!(v, Verdict::Keep(_)), "{code}: {v:?}");
        assert!(v.to_string().contains("cannot read the DaemonSet"), "{v}");
        let w = DaemonSetWatch::start(client.clone(), &owner());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        let v = decide(&client, &owner(), Some(&w), limits(5000)).await;
        assert!(matches!(v, Verdict::Keep(_)), "{code}: {v:?}");
        assert!(v.to_string().contains("never listed"), "{v}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "no wait without a watch"
        );
        assert!(log.lines().contains(&format!("GET {DS_GET}")));
        // A refused DaemonSet is not a reason to look at the namespace.
        assert!(!log.lines().contains(&format!("GET {NS_GET}")));
    }
}

#[tokio::test]
async fn a_refusal_with_a_quiet_watch_waits_then_keeps() {
    // The watch listed the DaemonSet, then was refused (its Role
    // removed); the GET at SIGTERM is refused: wait for news, keep.
    let (client, _log) = server(
        status(403, "Forbidden"),
        namespace(false),
        list(vec![ds(7, false).1]),
        vec![],
    );
    let w = DaemonSetWatch::start(client.clone(), &owner());
    until(&w, PRESENT).await;
    let t = Instant::now();
    let v = decide(&client, &owner(), Some(&w), limits(400)).await;
    assert!(matches!(v, Verdict::Keep(_)), "{v:?}");
    assert!(v.to_string().contains("saw no deletion"), "{v}");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn not_found_uninstalls_but_not_any_404() {
    let (client, _) = server(
        not_found("daemonsets", "wg-agent"),
        namespace(false),
        list(vec![]),
        vec![],
    );
    let v = decide(&client, &owner(), None, limits(0)).await;
    assert_eq!(v, Verdict::Uninstall(Gone::NotFound));
    // A 404 that is not the apiserver's NotFound of this DaemonSet (a
    // proxy, a wrong address, another object): unknown, kept.
    for reply in [
        status(404, "NotFound"),
        not_found("daemonsets", "other"),
        (404, json!("404 page not found")),
    ] {
        let (client, _) = server(reply.clone(), namespace(false), list(vec![]), vec![]);
        let v = decide(&client, &owner(), None, limits(0)).await;
        assert!(matches!(v, Verdict::Keep(_)), "{reply:?}: {v:?}");
    }
}

#[tokio::test]
async fn a_deletion_timestamp_uninstalls() {
    let (client, _) = server(ds(9, true), namespace(false), list(vec![]), vec![]);
    let v = decide(&client, &owner(), None, limits(0)).await;
    assert_eq!(v, Verdict::Uninstall(Gone::Deleting));
}

#[tokio::test]
async fn the_namespace_being_deleted_uninstalls_and_a_rolling_update_keeps() {
    // `kubectl delete namespace`: the namespace controller stops the
    // pods before it deletes the DaemonSet.
    let (client, log) = server(ds(9, false), namespace(true), list(vec![]), vec![]);
    let v = decide(&client, &owner(), None, limits(0)).await;
    assert_eq!(v, Verdict::Uninstall(Gone::NamespaceDeleting));
    assert_eq!(
        log.lines(),
        [format!("GET {DS_GET}"), format!("GET {NS_GET}")]
    );
    // A rolling update, a drain, a restart: both there.
    let (client, _) = server(ds(9, false), namespace(false), list(vec![]), vec![]);
    let v = decide(&client, &owner(), None, limits(0)).await;
    assert_eq!(v, Verdict::Keep("the DaemonSet is there".into()));
    // The namespace unreadable (an older Role): the DaemonSet is there.
    let (client, _) = server(ds(9, false), status(403, "Forbidden"), list(vec![]), vec![]);
    let v = decide(&client, &owner(), None, limits(0)).await;
    assert!(matches!(v, Verdict::Keep(_)), "{v:?}");
}

#[tokio::test]
async fn a_refusal_after_the_watch_saw_the_deletion_uninstalls() {
    // `kubectl delete -f manifests/`: the watch, opened before the RBAC
    // objects went, sees the DaemonSet deleted; the GET is refused.
    let (client, _) = server(
        status(403, "Forbidden"),
        namespace(true),
        list(vec![ds(7, false).1]),
        vec![event("DELETED", ds(11, false))],
    );
    let w = DaemonSetWatch::start(client.clone(), &owner());
    until(&w, GONE).await;
    let t = Instant::now();
    let v = decide(&client, &owner(), Some(&w), limits(5000)).await;
    assert_eq!(v, Verdict::Uninstall(Gone::SeenByWatch));
    assert!(t.elapsed() < Duration::from_secs(1));
    // A deletionTimestamp (foreground deletion) counts the same; so
    // does a list without it; a 401 is refused like a 403.
    for (l, watches) in [
        (
            list(vec![ds(7, false).1]),
            vec![event("MODIFIED", ds(12, true))],
        ),
        (list(vec![]), vec![]),
        (list(vec![ds(7, true).1]), vec![]),
    ] {
        let (client, _) = server(status(401, "Unauthorized"), namespace(false), l, watches);
        let w = DaemonSetWatch::start(client.clone(), &owner());
        until(&w, GONE).await;
        let v = decide(&client, &owner(), Some(&w), limits(5000)).await;
        assert_eq!(v, Verdict::Uninstall(Gone::SeenByWatch));
    }
}

#[tokio::test]
async fn the_watch_seeing_the_deletion_during_the_wait_uninstalls() {
    // SIGTERM came first (the namespace controller stops the pods as
    // soon as the namespace is deleted); kubectl deletes the DaemonSet
    // a moment later. Here the watch fails twice (backoff ~0.75 s)
    // before it delivers the deletion.
    let (client, _) = server(
        status(403, "Forbidden"),
        namespace(true),
        list(vec![ds(7, false).1]),
        vec![
            status(500, "InternalError"),
            status(500, "InternalError"),
            event("DELETED", ds(11, false)),
        ],
    );
    let w = DaemonSetWatch::start(client.clone(), &owner());
    until(&w, PRESENT).await;
    let t = Instant::now();
    let v = decide(&client, &owner(), Some(&w), limits(5000)).await;
    assert_eq!(v, Verdict::Uninstall(Gone::SeenByWatch));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_daemonset_created_again_is_not_gone() {
    // Deleted and created again (`kubectl replace --force`): the latest
    // news wins.
    let (client, log) = server(
        ds(20, false),
        namespace(false),
        list(vec![ds(7, false).1]),
        vec![
            event("DELETED", ds(11, false)),
            event("ADDED", ds(12, false)),
        ],
    );
    let w = DaemonSetWatch::start(client.clone(), &owner());
    let t = Instant::now();
    while log
        .all()
        .iter()
        .filter(|s| s.query.contains("watch=true"))
        .count()
        < 3
    {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    until(&w, PRESENT).await;
    let v = decide(&client, &owner(), Some(&w), limits(0)).await;
    assert_eq!(v, Verdict::Keep("the DaemonSet is there".into()));
}

#[test]
fn the_owner_comes_from_the_environment() {
    assert_eq!(
        owner(),
        Owner {
            namespace: "kube-system".into(),
            daemonset: "wg-agent".into()
        }
    );
    let o = Owner::from_lookup(|k| match k {
        "POD_NAMESPACE" => Some("wg".into()),
        "WG_AGENT_DAEMONSET" => Some("agent".into()),
        _ => None,
    });
    assert_eq!(
        (o.namespace.as_str(), o.daemonset.as_str()),
        ("wg", "agent")
    );
}
