//! Pods that asked for a network and run without its interface.
//!
//! wg-cni starts a pod without its interface when the agent cannot be
//! reached and the pod's network has `failurePolicy: ignore` (or the
//! runtime passed no pod annotations, so wg-cni could not tell whether the
//! pod asked); a pod made before wg-cni was chained has none either. The
//! agent cannot add the interface afterwards: only an ADD brings it the
//! pod's network namespace. Once its caches are synced it finds such pods
//! (annotated, an address, so their sandbox's network is up, no interface
//! held for them) and tells the user with a Warning Event on the pod
//! ([`REASON_MISSING`]): delete the pod and its replacement gets the
//! interface.

use super::*;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::PostParams;

/// The Event's reason.
pub const REASON_MISSING: &str = "WireGuardInterfaceMissing";

/// The reason of the Warning Event on a running pod whose interface the
/// agent cannot reach (its record's network namespace cannot be opened).
pub const REASON_UNREACHABLE: &str = "WireGuardInterfaceUnreachable";

/// A pod of this node that asked for a network and has no interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// The network its annotation names.
    pub network: String,
}

impl Agent {
    /// The pods of this node whose annotation names a network, whose
    /// sandbox has its address (so its ADD is over), that are not being
    /// deleted nor on the node's network, and for which the agent holds no
    /// interface (not even one it could not reopen).
    pub fn pods_without_interface(&self) -> Vec<Missing> {
        let mut held: BTreeSet<String> = self
            .keys()
            .iter()
            .map(|k| k.pod_uid().to_string())
            .collect();
        held.extend(
            self.orphans
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|r| r.pod_uid.clone()),
        );
        let mut out: Vec<Missing> = self
            .index()
            .pods
            .iter()
            .filter(|(_, p)| {
                p.ip.is_some() && !p.deleting && !p.host_network && !held.contains(&p.uid)
            })
            .filter_map(|(nsname, p)| {
                let network = p.network.clone()?;
                let (namespace, name) = nsname.split_once('/')?;
                Some(Missing {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    uid: p.uid.clone(),
                    network,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// Tell the user, once per pod, about each pod of
    /// [`pods_without_interface`](Self::pods_without_interface): a log line
    /// and a Warning Event on the pod. The Event's name is derived from the
    /// pod's UID, so an agent restarted reports no pod twice (the create
    /// answers 409). Does nothing before the caches are synced.
    pub async fn report_pods_without_interface(&self) {
        if !self.is_synced() {
            return;
        }
        for m in self.pods_without_interface() {
            if !self.reported_missing().insert(m.uid.clone()) {
                continue;
            }
            warn!(pod = %format!("{}/{}", m.namespace, m.name), network = %m.network,
                  "the pod asks for a WireGuard network and runs without its interface; delete it to recreate it with one");
            let api: Api<Event> = Api::namespaced(self.client.clone(), &m.namespace);
            match api
                .create(&PostParams::default(), &self.missing_event(&m))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    self.metrics.apiserver_error("create_event");
                    warn!(pod = %format!("{}/{}", m.namespace, m.name), error = %e, "cannot create an event; retrying at the next collection");
                    self.reported_missing().remove(&m.uid);
                }
            }
        }
        // Interfaces of running pods the agent cannot reach (their record's
        // namespace cannot be opened, e.g. the runtime's namespace directory
        // is not mounted into the agent): kept, reserved, counted
        // (wg_agent_orphan_interfaces), and said once on the pod.
        let orphans: Vec<LocalRecord> = self
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for rec in orphans {
            if !self.index().pod_uid_alive(&rec.pod_uid) {
                continue;
            }
            let once = format!("unreachable:{}", rec.pod_uid);
            if !self.reported_missing().insert(once.clone()) {
                continue;
            }
            let m = Missing {
                namespace: rec.namespace.clone(),
                name: rec.pod.clone(),
                uid: rec.pod_uid.clone(),
                network: rec.network.clone(),
            };
            let mut ev = self.missing_event(&m);
            ev.metadata.name = Some(format!("{}.wireguard-unreachable", m.uid));
            ev.reason = Some(REASON_UNREACHABLE.into());
            ev.message = Some(format!(
                "node {}'s agent cannot open the network namespace {} of this pod's WireGuard \
                 interface (is the runtime's namespace directory mounted into the agent?): the \
                 interface is not kept up to date (no peer changes, no repair) until the agent \
                 can reach it or the pod is recreated",
                self.settings.node_name,
                rec.attachment.netns.display()
            ));
            let api: Api<Event> = Api::namespaced(self.client.clone(), &m.namespace);
            match api.create(&PostParams::default(), &ev).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    self.metrics.apiserver_error("create_event");
                    warn!(pod = %format!("{}/{}", m.namespace, m.name), error = %e, "cannot create an event; retrying at the next collection");
                    self.reported_missing().remove(&once);
                }
            }
        }
        // Forget pods that are gone (their UIDs never come back).
        let alive: BTreeSet<String> = self.index().pods.values().map(|p| p.uid.clone()).collect();
        self.reported_missing()
            .retain(|uid| alive.contains(uid.strip_prefix("unreachable:").unwrap_or(uid)));
    }

    fn reported_missing(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.reported_missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The Warning Event about pod `m`.
    fn missing_event(&self, m: &Missing) -> Event {
        let node = &self.settings.node_name;
        let now = k8s_openapi::jiff::Timestamp::now();
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.wireguard-missing", m.uid)),
                namespace: Some(m.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(m.name.clone()),
                namespace: Some(m.namespace.clone()),
                uid: Some(m.uid.clone()),
                ..Default::default()
            },
            reason: Some(REASON_MISSING.into()),
            message: Some(format!(
                "the pod asks for WireGuard network {} ({}) but has no interface: it started while \
                 node {node}'s agent could not be reached (the network's failurePolicy is ignore), \
                 or before wg-cni was chained. A running pod cannot get it: delete the pod and its \
                 replacement gets the interface",
                m.network,
                wg_k8s_types::ANNOTATION_NETWORK
            )),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some("wg-agent".into()),
                host: Some(node.clone()),
            }),
            reporting_component: Some("wireguard.wg-netns.io/wg-agent".into()),
            reporting_instance: Some(node.clone()),
            action: Some("Attach".into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tests::{hold, record};
    use crate::testutil::{metric, pod_json, status, test_agent};
    use serde_json::{json, Value};

    /// A pod of this node in the index; `ip`: its sandbox has an address.
    fn pod(agent: &Agent, name: &str, network: Option<&str>, ip: bool, extra: Value) {
        let mut v = pod_json("default", name, &format!("uid-{name}"), network);
        if ip {
            v["status"] = json!({"podIP": "10.88.0.9"});
        }
        for (k, x) in extra.as_object().cloned().unwrap_or_default() {
            match k.as_str() {
                "hostNetwork" => v["spec"]["hostNetwork"] = x,
                _ => v["metadata"][k] = x,
            }
        }
        let p: Pod = serde_json::from_value(v).unwrap();
        agent.index().pod(&p);
    }

    fn events(log: &crate::testutil::Log) -> Vec<Value> {
        log.all()
            .into_iter()
            .filter(|s| s.method == http::Method::POST && s.path.ends_with("/events"))
            .map(|s| s.body)
            .collect()
    }

    /// Only annotated pods with an address, not deleting, not on the
    /// node's network and holding no interface are reported; each once;
    /// nothing before the caches are synced.
    #[tokio::test]
    async fn a_pod_that_asked_and_runs_without_its_interface_gets_one_warning() {
        let t = test_agent(|s| (201, s.body.clone()));
        let a = &t.agent;
        pod(a, "missing", Some("pods"), true, json!({}));
        pod(a, "starting", Some("pods"), false, json!({}));
        pod(a, "plain", None, true, json!({}));
        pod(a, "host", Some("pods"), true, json!({"hostNetwork": true}));
        pod(
            a,
            "leaving",
            Some("pods"),
            true,
            json!({"deletionTimestamp": "2026-01-01T00:00:00Z"}),
        );
        // Interfaces held, or recorded and not reopened: not missing.
        pod(a, "held", Some("pods"), true, json!({}));
        let rec = record(
            a,
            "default",
            "held",
            "uid-held",
            "pods",
            "10.77.0.2/16",
            51820,
        );
        hold(a, rec);
        pod(a, "orphan", Some("pods"), true, json!({}));
        let rec = record(
            a,
            "default",
            "orphan",
            "uid-orphan",
            "pods",
            "10.77.0.3/16",
            51821,
        );
        a.orphans.lock().unwrap().push(rec);
        a.report_pods_without_interface().await;
        assert!(events(&t.log).is_empty(), "reported before the sync");
        a.set_synced();
        assert_eq!(
            a.pods_without_interface(),
            [Missing {
                namespace: "default".into(),
                name: "missing".into(),
                uid: "uid-missing".into(),
                network: "pods".into()
            }]
        );
        a.report_pods_without_interface().await;
        a.report_pods_without_interface().await;
        // The orphan (its interface recorded, its namespace unreachable)
        // is not missing: it gets its own Warning, once.
        let (ev, unreachable): (Vec<Value>, Vec<Value>) = events(&t.log)
            .into_iter()
            .partition(|e| e["reason"] == REASON_MISSING);
        assert_eq!(unreachable.len(), 1, "{unreachable:?}");
        assert_eq!(unreachable[0]["reason"], REASON_UNREACHABLE);
        assert_eq!(unreachable[0]["involvedObject"]["name"], "orphan");
        assert_eq!(
            unreachable[0]["metadata"]["name"],
            "uid-orphan.wireguard-unreachable"
        );
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0]["reason"], REASON_MISSING);
        assert_eq!(ev[0]["type"], "Warning");
        assert_eq!(ev[0]["involvedObject"]["kind"], "Pod");
        assert_eq!(ev[0]["involvedObject"]["name"], "missing");
        assert_eq!(ev[0]["involvedObject"]["uid"], "uid-missing");
        assert_eq!(ev[0]["metadata"]["name"], "uid-missing.wireguard-missing");
        let msg = ev[0]["message"].as_str().unwrap();
        assert!(
            msg.contains("network pods") && msg.contains("delete the pod"),
            "{msg}"
        );
        assert_eq!(
            t.log
                .all()
                .iter()
                .find(|s| s.method == http::Method::POST)
                .map(|s| s.path.clone()),
            Some("/api/v1/namespaces/default/events".to_string())
        );
    }

    /// An Event that exists already (an agent restarted) is not an error;
    /// a failed create is retried at the next collection.
    #[tokio::test]
    async fn a_failed_report_is_retried_and_an_existing_one_is_kept() {
        let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = fail.clone();
        let t = test_agent(move |_| {
            if f.load(std::sync::atomic::Ordering::SeqCst) {
                status(500, "InternalError")
            } else {
                status(409, "AlreadyExists")
            }
        });
        let a = &t.agent;
        pod(a, "missing", Some("pods"), true, json!({}));
        a.set_synced();
        a.report_pods_without_interface().await;
        assert_eq!(
            metric(
                a,
                "wg_agent_apiserver_errors_total{operation=\"create_event\"}"
            ),
            1.0
        );
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        a.report_pods_without_interface().await;
        a.report_pods_without_interface().await;
        assert_eq!(events(&t.log).len(), 2, "retried once, then reported");
        assert_eq!(
            metric(
                a,
                "wg_agent_apiserver_errors_total{operation=\"create_event\"}"
            ),
            1.0,
            "409 is no error"
        );
    }
}
