//! Unit tests of the block claims against a scripted apiserver.

use super::*;
use crate::testutil::{apiserver, status, Log, Seen};
use http::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const PATH: &str = "/apis/wireguard.wg-netns.io/v1alpha1/wireguardaddressblocks";

fn n(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// The scripted apiserver of the agent's tests, with the block API on
/// its client. Returns the Api and the log of requests.
fn server(
    script: impl FnMut(&Seen) -> (u16, Value) + Send + 'static,
) -> (Api<WireGuardAddressBlock>, Log) {
    let (client, log) = apiserver(script);
    (Api::all(client), log)
}

/// The requests seen: every call made through `api` has been answered
/// (and a request is logged before it is answered).
async fn finish(api: Api<WireGuardAddressBlock>, log: Log) -> Vec<Seen> {
    drop(api);
    log.all()
}

fn object(network: &str, block: IpNetwork, node: &str, uid: &str) -> Value {
    let mut v = serde_json::to_value(WireGuardAddressBlock::claim(network, &block, node)).unwrap();
    v["metadata"]["uid"] = json!(uid);
    v["metadata"]["resourceVersion"] = json!("1");
    v
}

fn claim_body(block: IpNetwork, node: &str) -> Value {
    serde_json::to_value(WireGuardAddressBlock::claim("pods", &block, node)).unwrap()
}

fn path_of(block: IpNetwork) -> String {
    format!("{PATH}/{}", WireGuardAddressBlock::name_for("pods", &block))
}

const POOL: &str = "10.244.0.0/16";

fn candidates(node: &str) -> Vec<IpNetwork> {
    Pool::new(n(POOL), 26)
        .unwrap()
        .candidates(node)
        .take(3)
        .collect()
}

#[tokio::test]
async fn conflict_then_created() {
    let c = candidates("node-1");
    let mut posts = 0;
    let (api, task) = server(move |req| match req.method {
        Method::POST => {
            posts += 1;
            if posts == 1 {
                status(409, "AlreadyExists")
            } else {
                (201, req.body.clone())
            }
        }
        Method::GET => (200, object("pods", c[0], "node-2", "uid-2")),
        _ => status(405, "MethodNotAllowed"),
    });
    let c = candidates("node-1");
    let got = claim(&api, "pods", n(POOL), 26, "node-1", None, &Taken::default())
        .await
        .unwrap();
    assert_eq!(got, Some(c[1]));
    let log = finish(api, task).await;
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(
        (&log[0].method, log[0].path.as_str()),
        (&Method::POST, PATH)
    );
    assert_eq!(log[0].body, claim_body(c[0], "node-1"));
    assert_eq!(log[1].method, Method::GET);
    assert_eq!(log[1].path, path_of(c[0]));
    assert_eq!(
        (&log[2].method, log[2].path.as_str()),
        (&Method::POST, PATH)
    );
    assert_eq!(log[2].body, claim_body(c[1], "node-1"));
    assert_eq!(log[2].body["spec"]["nodeName"], "node-1");
    assert_eq!(log[2].body["spec"]["network"], "pods");
}

#[tokio::test]
async fn known_taken_blocks_are_not_tried() {
    let c = candidates("node-1");
    let (api, task) = server(|req| (201, req.body.clone()));
    let taken = Taken::new(&[c[0], c[1]]);
    let got = claim(&api, "pods", n(POOL), 26, "node-1", None, &taken)
        .await
        .unwrap();
    assert_eq!(got, Some(c[2]));
    let log = finish(api, task).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].body, claim_body(c[2], "node-1"));
}

#[tokio::test]
async fn a_lost_answer_is_recovered_by_reading_the_block() {
    // The create succeeded earlier but its answer was lost: the
    // retry's 409 is this node's own block.
    let c = candidates("node-1");
    let first = c[0];
    let (api, task) = server(move |req| match req.method {
        Method::POST => status(409, "AlreadyExists"),
        _ => (200, object("pods", first, "node-1", "uid-1")),
    });
    let got = claim(&api, "pods", n(POOL), 26, "node-1", None, &Taken::default())
        .await
        .unwrap();
    assert_eq!(got, Some(c[0]));
    assert_eq!(finish(api, task).await.len(), 2);
}

#[tokio::test]
async fn a_block_gone_after_its_conflict_is_skipped() {
    let c = candidates("node-1");
    let mut posts = 0;
    let (api, task) = server(move |req| match req.method {
        Method::POST => {
            posts += 1;
            if posts == 1 {
                status(409, "AlreadyExists")
            } else {
                (201, req.body.clone())
            }
        }
        _ => status(404, "NotFound"),
    });
    let got = claim(&api, "pods", n(POOL), 26, "node-1", None, &Taken::default())
        .await
        .unwrap();
    assert_eq!(got, Some(c[1]));
    finish(api, task).await;
}

#[tokio::test]
async fn server_errors_name_the_block() {
    let c = candidates("node-1");
    let (api, task) = server(|_| status(500, "InternalError"));
    let e = claim(&api, "pods", n(POOL), 26, "node-1", None, &Taken::default())
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(
            e,
            BlockError::Api {
                code: Some(500),
                ..
            }
        ),
        "{e:?}"
    );
    for part in [
        "network pods",
        "claiming",
        &c[0].to_string(),
        &WireGuardAddressBlock::name_for("pods", &c[0]),
        "HTTP 500",
    ] {
        assert!(text.contains(part), "{text:?} lacks {part:?}");
    }
    assert_eq!(finish(api, task).await.len(), 1);

    // A failed read after a conflict is an error too.
    let (api, task) = server(|req| match req.method {
        Method::POST => status(409, "AlreadyExists"),
        _ => status(503, "ServiceUnavailable"),
    });
    let e = claim(&api, "pods", n(POOL), 26, "node-1", None, &Taken::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("reading block"), "{e}");
    assert!(e.to_string().contains("HTTP 503"), "{e}");
    finish(api, task).await;
}

#[tokio::test]
async fn conflicts_are_bounded() {
    let (api, task) = server(|req| match req.method {
        Method::POST => status(409, "AlreadyExists"),
        _ => (200, object("pods", n("10.244.0.0/26"), "node-2", "uid-2")),
    });
    let got = claim(&api, "pods", n(POOL), 26, "node-1", None, &Taken::default())
        .await
        .unwrap();
    assert_eq!(got, None);
    let log = finish(api, task).await;
    let posts = log.iter().filter(|s| s.method == Method::POST).count();
    assert_eq!(posts, MAX_CONFLICTS);
    // Every one a different block.
    let bodies: BTreeSet<String> = log
        .iter()
        .filter(|s| s.method == Method::POST)
        .map(|s| s.body["spec"]["cidr"].to_string())
        .collect();
    assert_eq!(bodies.len(), MAX_CONFLICTS);
}

#[tokio::test]
async fn an_exhausted_pool_gives_none() {
    // 4 blocks, all taken by others.
    let (api, task) = server(|req| match req.method {
        Method::POST => status(409, "AlreadyExists"),
        _ => (200, object("pods", n("10.244.0.0/26"), "node-2", "uid-2")),
    });
    let got = claim(
        &api,
        "pods",
        n("10.244.0.0/24"),
        26,
        "node-1",
        None,
        &Taken::default(),
    )
    .await
    .unwrap();
    assert_eq!(got, None);
    let log = finish(api, task).await;
    assert_eq!(log.iter().filter(|s| s.method == Method::POST).count(), 4);

    // All known taken: no request at all.
    let (api, task) = server(|_| status(500, "InternalError"));
    let all: Vec<IpNetwork> = Pool::new(n("10.244.0.0/24"), 26)
        .unwrap()
        .candidates("x")
        .collect();
    let got = claim(
        &api,
        "pods",
        n("10.244.0.0/24"),
        26,
        "node-1",
        None,
        &Taken::new(&all),
    )
    .await
    .unwrap();
    assert_eq!(got, None);
    assert!(finish(api, task).await.is_empty());
}

#[tokio::test]
async fn a_bad_pool_is_refused_before_any_request() {
    let (api, task) = server(|_| status(500, "InternalError"));
    let e = claim(&api, "pods", n(POOL), 8, "node-1", None, &Taken::default())
        .await
        .unwrap_err();
    assert!(matches!(e, BlockError::InvalidPool { .. }));
    assert!(e.to_string().contains("network pods"), "{e}");
    assert!(finish(api, task).await.is_empty());
}

#[tokio::test]
async fn release_deletes_only_this_nodes_claim() {
    let block = n("10.244.1.0/26");
    // Gone already: one read, success.
    let (api, task) = server(|_| status(404, "NotFound"));
    release(&api, "pods", block, "node-1").await.unwrap();
    let log = finish(api, task).await;
    assert_eq!(log.len(), 1);
    assert_eq!(
        (&log[0].method, log[0].path.clone()),
        (&Method::GET, path_of(block))
    );

    // Ours: deleted with the UID as a precondition.
    let (api, task) = server(move |req| match req.method {
        Method::GET => (200, object("pods", block, "node-1", "uid-1")),
        _ => (200, object("pods", block, "node-1", "uid-1")),
    });
    release(&api, "pods", block, "node-1").await.unwrap();
    let log = finish(api, task).await;
    assert_eq!(log.len(), 2);
    assert_eq!(
        (&log[1].method, log[1].path.clone()),
        (&Method::DELETE, path_of(block))
    );
    assert_eq!(log[1].body["preconditions"]["uid"], "uid-1");

    // Deleted between the read and the delete (404), or re-created by
    // someone else (409 from the precondition): released.
    for code in [404, 409] {
        let (api, task) = server(move |req| match req.method {
            Method::GET => (200, object("pods", block, "node-1", "uid-1")),
            _ => status(code, if code == 404 { "NotFound" } else { "Conflict" }),
        });
        release(&api, "pods", block, "node-1").await.unwrap();
        assert_eq!(finish(api, task).await.len(), 2);
    }

    // Another node's: refused, nothing deleted.
    let (api, task) = server(move |_| (200, object("pods", block, "node-2", "uid-2")));
    let e = release(&api, "pods", block, "node-1").await.unwrap_err();
    assert!(matches!(e, BlockError::NotOurs { ref owner, .. } if owner == "node-2"));
    assert!(e.to_string().contains("10.244.1.0/26"), "{e}");
    let log = finish(api, task).await;
    assert!(log.iter().all(|s| s.method == Method::GET));

    // A failing delete names the block.
    let (api, task) = server(move |req| match req.method {
        Method::GET => (200, object("pods", block, "node-1", "uid-1")),
        _ => status(500, "InternalError"),
    });
    let e = release(&api, "pods", block, "node-1").await.unwrap_err();
    assert!(
        e.to_string().contains("releasing block 10.244.1.0/26"),
        "{e}"
    );
    finish(api, task).await;
}

#[tokio::test]
async fn owned_selects_by_field_and_checks_each_object() {
    let (api, task) = server(|_| {
        let mut misnamed = object("pods", n("10.244.3.0/26"), "node-1", "u3");
        misnamed["metadata"]["name"] = json!("pods.other");
        let mut bad = object("pods", n("10.244.2.0/26"), "node-1", "u2");
        bad["spec"]["cidr"] = json!("10.244.2.1/26");
        (
            200,
            json!({
                "apiVersion": "wireguard.wg-netns.io/v1alpha1",
                "kind": "WireGuardAddressBlockList",
                "metadata": {"resourceVersion": "7"},
                "items": [
                    object("pods", n("10.244.1.0/26"), "node-1", "u1"),
                    bad,
                    misnamed,
                    // Not asked for: left out.
                    object("pods", n("10.244.4.0/26"), "node-2", "u4"),
                    object("other", n("10.244.5.0/26"), "node-1", "u5"),
                    object("pods", n("fd00::40/122"), "node-1", "u6"),
                ],
            }),
        )
    });
    let got = owned(&api, "pods", "node-1").await.unwrap();
    assert_eq!(got.blocks, vec![n("10.244.1.0/26"), n("fd00::40/122")]);
    assert_eq!(got.invalid.len(), 2, "{:?}", got.invalid);
    assert_eq!(got.invalid[0].name, "pods.10-244-2-0-26");
    assert_eq!(got.invalid[0].error.field, "spec.cidr");
    assert_eq!(got.invalid[1].name, "pods.other");
    assert_eq!(got.invalid[1].error.field, "metadata.name");
    let log = finish(api, task).await;
    assert_eq!(log.len(), 1);
    assert_eq!((&log[0].method, log[0].path.as_str()), (&Method::GET, PATH));
    assert_eq!(
        log[0].query,
        "&fieldSelector=spec.nodeName%3Dnode-1%2Cspec.network%3Dpods"
    );
}

#[tokio::test]
async fn owned_reports_a_failed_list() {
    let (api, task) = server(|_| status(400, "BadRequest"));
    let e = owned(&api, "pods", "node-1").await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("node-1") && text.contains("pods") && text.contains("HTTP 400"),
        "{text}"
    );
    finish(api, task).await;
}

#[tokio::test]
async fn claims_are_owned_by_the_node() {
    let c = candidates("node-1");
    let (api, task) = server(|req| (201, req.body.clone()));
    let got = claim(
        &api,
        "pods",
        n(POOL),
        26,
        "node-1",
        Some("uid-n1"),
        &Taken::default(),
    )
    .await
    .unwrap();
    assert_eq!(got, Some(c[0]));
    let log = finish(api, task).await;
    assert_eq!(
        log[0].body["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "uid-n1"}])
    );
}

#[tokio::test]
async fn blocks_of_another_size_are_taken() {
    // Another node holds a /24 (the pool's blocks were /24 once) that
    // covers this node's first /26 candidates: none of them is tried.
    let c = candidates("node-1");
    let old = IpNetwork::new(c[0].network(), 24).unwrap();
    let old = IpNetwork::new(old.network(), 24).unwrap();
    let (api, task) = server(|req| (201, req.body.clone()));
    let got = claim(
        &api,
        "pods",
        n(POOL),
        26,
        "node-1",
        None,
        &Taken::new(&[old]),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!old.contains(got.network()), "{got} is inside {old}");
    let log = finish(api, task).await;
    assert_eq!(log.len(), 1, "{log:?}");
}

#[tokio::test]
async fn taken_lists_every_block_of_the_network() {
    let (api, task) = server(|_| {
        let mut bad = object("pods", n("10.244.2.0/26"), "node-2", "u2");
        bad["spec"]["cidr"] = json!("nonsense");
        (
            200,
            json!({
                "apiVersion": "wireguard.wg-netns.io/v1alpha1",
                "kind": "WireGuardAddressBlockList",
                "metadata": {"resourceVersion": "7"},
                "items": [
                    object("pods", n("10.244.1.0/26"), "node-1", "u1"),
                    object("pods", n("10.244.4.0/24"), "node-2", "u4"),
                    bad,
                    object("other", n("10.244.5.0/26"), "node-1", "u5"),
                ],
            }),
        )
    });
    let got = taken(&api, "pods").await.unwrap();
    assert_eq!(got, vec![n("10.244.1.0/26"), n("10.244.4.0/24")]);
    let log = finish(api, task).await;
    assert_eq!(log[0].query, "&fieldSelector=spec.network%3Dpods");
    let (api, task) = server(|_| status(503, "ServiceUnavailable"));
    let e = taken(&api, "pods").await.unwrap_err();
    assert!(
        e.to_string().contains("HTTP 503") && e.to_string().contains("pods"),
        "{e}"
    );
    finish(api, task).await;
}

#[tokio::test]
async fn of_node_groups_by_network_with_owners() {
    let (api, task) = server(|_| {
        let mut owned = object("pods", n("10.244.1.0/26"), "node-1", "u1");
        owned["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "n1"}]);
        (
            200,
            json!({
                "apiVersion": "wireguard.wg-netns.io/v1alpha1",
                "kind": "WireGuardAddressBlockList",
                "metadata": {"resourceVersion": "7"},
                "items": [
                    owned,
                    object("gone", n("10.9.0.0/26"), "node-1", "u2"),
                    object("pods", n("10.244.4.0/26"), "node-2", "u4"),
                ],
            }),
        )
    });
    let got = of_node(&api, "node-1").await.unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), vec!["gone", "pods"]);
    assert_eq!(got["pods"].blocks, vec![n("10.244.1.0/26")]);
    assert_eq!(
        got["pods"].owners[&n("10.244.1.0/26")],
        (Some("n1".to_string()), "1".to_string())
    );
    assert_eq!(got["gone"].owners[&n("10.9.0.0/26")].0, None);
    let log = finish(api, task).await;
    assert_eq!(log[0].query, "&fieldSelector=spec.nodeName%3Dnode-1");
}

fn review(extra: Value) -> Value {
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
           "metadata": {}, "status": {"userInfo": {"username": "system:serviceaccount:kube-system:wg-agent", "extra": extra}}})
}

#[tokio::test]
async fn the_node_uid_comes_from_the_agents_own_credentials() {
    // A token bound to the node: its UID, no read of the Node.
    let (client, log) = apiserver(|req| match req.path.as_str() {
        "/apis/authentication.k8s.io/v1/selfsubjectreviews" => (
            201,
            review(json!({EXTRA_NODE_NAME: ["node-1"], EXTRA_NODE_UID: ["uid-n1"]})),
        ),
        _ => status(403, "Forbidden"),
    });
    assert_eq!(
        node_uid(&client, "node-1").await.unwrap().as_deref(),
        Some("uid-n1")
    );
    drop(client);
    assert_eq!(
        log.lines(),
        vec!["POST /apis/authentication.k8s.io/v1/selfsubjectreviews"]
    );

    // Bound to another node, or to none: the Node is read (403: none).
    for extra in [
        json!({EXTRA_NODE_NAME: ["node-2"], EXTRA_NODE_UID: ["uid-n2"]}),
        json!({}),
    ] {
        let (client, log) = apiserver(move |req| match req.path.as_str() {
            "/apis/authentication.k8s.io/v1/selfsubjectreviews" => (201, review(extra.clone())),
            _ => status(403, "Forbidden"),
        });
        assert_eq!(node_uid(&client, "node-1").await.unwrap(), None);
        drop(client);
        assert_eq!(log.lines()[1], "GET /api/v1/nodes/node-1");
    }
    let (client, _log) = apiserver(|req| match req.path.as_str() {
        "/api/v1/nodes/node-1" => (
            200,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "uid": "uid-read"}}),
        ),
        _ => status(404, "NotFound"),
    });
    assert_eq!(
        node_uid(&client, "node-1").await.unwrap().as_deref(),
        Some("uid-read")
    );
    let (client, _log) = apiserver(|_| status(500, "InternalError"));
    let e = node_uid(&client, "node-1").await.unwrap_err();
    assert!(
        e.to_string().contains("node-1") && e.to_string().contains("HTTP 500"),
        "{e}"
    );
}

#[tokio::test]
async fn set_owner_patches_with_the_listed_version() {
    let block = n("10.244.1.0/26");
    let (api, task) = server(move |_| (200, object("pods", block, "node-1", "u1")));
    assert!(set_owner(&api, "pods", block, "node-1", "uid-n1", "41")
        .await
        .unwrap());
    let log = finish(api, task).await;
    assert_eq!(
        (&log[0].method, log[0].path.clone()),
        (&Method::PATCH, path_of(block))
    );
    assert_eq!(log[0].content_type, "application/merge-patch+json");
    assert_eq!(
        log[0].body,
        json!({"metadata": {"resourceVersion": "41", "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "uid-n1"}]}})
    );
    // Changed or gone since the list: left alone.
    for code in [404, 409] {
        let (api, task) = server(move |_| status(code, "Conflict"));
        assert!(!set_owner(&api, "pods", block, "node-1", "uid-n1", "41")
            .await
            .unwrap());
        finish(api, task).await;
    }
    let (api, task) = server(|_| status(403, "Forbidden"));
    let e = set_owner(&api, "pods", block, "node-1", "uid-n1", "41")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("owning block 10.244.1.0/26"), "{e}");
    finish(api, task).await;
}

#[test]
fn field_values_are_escaped() {
    assert_eq!(escape_field_value("node-1"), "node-1");
    assert_eq!(escape_field_value(r"a,b=c\d"), r"a\,b\=c\\d");
}
