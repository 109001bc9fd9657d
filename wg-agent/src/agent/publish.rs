//! Publish: the attachment status writer (what others act on, at once;
//! a change of conditions alone at most every `status_min_interval`) and
//! the failure-policy hints the plugin reads when the agent is
//! unreachable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wg_k8s_types::conditions;

use super::*;

impl Agent {
    /// Log each attachment newly refused as a mesh member (once) and set
    /// the metric of refused members (after every watch event: a refusal
    /// changes no device, so no reconcile would report it).
    pub fn note_rejections(&self) {
        if !self.is_synced() {
            // At start the kinds arrive one by one (attachments before
            // their blocks): decisions are final once all are listed.
            return;
        }
        let (rejected, new_rejections) = {
            let mut index = self.index();
            (index.rejected_by_network(), index.take_new_rejections())
        };
        self.metrics.set_mesh_rejected(&rejected);
        for (attachment, why) in new_rejections {
            warn!(%attachment, reason = why.reason(), "not a mesh peer: {why}");
        }
    }

    /// Read every device's counters (metrics), and queue a status write
    /// where what others act on changed (a pod's own address, learnt
    /// after its ADD, is the endpoint of a socket in the pod).
    pub async fn refresh_stats(self: &Arc<Self>) {
        let mut samples = Vec::new();
        let mut last =
            std::mem::take(&mut *self.last_samples.lock().unwrap_or_else(|e| e.into_inner()));
        let mut kept = BTreeMap::new();
        for key in self.keys() {
            let Some(slot) = self.slot(&key) else {
                continue;
            };
            // Held by another job (a reconcile, a verify): its last
            // counters stand for this round.
            let Ok(mut g) = slot.try_lock() else {
                if let Some(s) = last.remove(&key) {
                    samples.push(s.clone());
                    kept.insert(key, s);
                }
                continue;
            };
            let Some(e) = g.as_mut() else { continue };
            // No interface (a restart found it deleted): no counters until
            // the verify makes it again.
            let Some(attachment) = e.attachment.clone() else {
                continue;
            };
            let place = Arc::clone(&e.place);
            let dev = e.dev.clone();
            let read = tokio::task::spawn_blocking(move || match dev {
                Some(d) => d.stats(),
                None => place.device(&attachment).and_then(|d| d.stats()),
            })
            .await;
            match read {
                Ok(Ok(s)) => {
                    let sample = crate::metrics::DeviceSample::new(&e.rec, &s);
                    kept.insert(key.clone(), sample.clone());
                    samples.push(sample);
                    let status = self.status_of(e);
                    let write = match &e.written {
                        None => Some(Publish::Upsert(key.clone())),
                        Some((w, _)) if identity(w) != identity(&status) => {
                            Some(Publish::Upsert(key.clone()))
                        }
                        Some((w, at))
                            if *w != status
                                && at.elapsed() >= self.settings.status_min_interval =>
                        {
                            Some(Publish::Refresh(key.clone()))
                        }
                        _ => None,
                    };
                    if let Some(p) = write {
                        let _ = self.publish.send(p);
                    }
                }
                Ok(Err(e)) => debug!(attachment = %key, error = %e, "cannot read counters"),
                Err(_) => {}
            }
        }
        *self.last_samples.lock().unwrap_or_else(|e| e.into_inner()) = kept;
        self.metrics.set_devices(samples);
    }

    /// The status an interface should show.
    pub fn status_of(&self, e: &Entry) -> WireGuardAttachmentStatus {
        let mut st = WireGuardAttachmentStatus {
            public_key: Some((&e.rec.public_key).into()),
            addresses: e.rec.addresses.iter().map(|a| (*a).into()).collect(),
            endpoint: self.endpoint_of(e).map(EndpointString::from),
            ..Default::default()
        };
        let key = format!(
            "{}/{}",
            e.rec.namespace,
            crate::agent::object_name(&e.rec.pod, e.rec.attachment.interface.as_str())
        );
        let rejected = self.index().rejected.get(&key).map(|(_, why)| why.clone());
        if let Some(why) = rejected {
            // The transition time of the condition already written, if it
            // says the same (a status that changes at every read would be
            // rewritten at every interval).
            let since = e
                .written
                .as_ref()
                .and_then(|(w, _)| {
                    w.conditions
                        .iter()
                        .find(|c| c.type_ == conditions::MESH_MEMBER && c.status == "False")
                })
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
            st.conditions.push(conditions::condition(
                conditions::MESH_MEMBER,
                false,
                conditions::REASON_ADDRESS_NOT_OWNED,
                why.to_string(),
                None,
                since,
            ));
        }
        st
    }

    pub(super) fn endpoint_of(&self, e: &Entry) -> Option<SocketAddr> {
        match e.rec.attachment.socket_namespace {
            wg_netns::SocketNamespace::Host => {
                Some(SocketAddr::new(self.settings.node_ip, e.rec.listen_port))
            }
            // The pod's own address, once the runtime has reported it
            // (a Pod status update, which the watch of the node's pods
            // brings; the next counters read writes the new endpoint).
            wg_netns::SocketNamespace::Container => self
                .index()
                .pod_info(&e.rec.namespace, &e.rec.pod)
                .filter(|p| p.uid == e.rec.pod_uid)
                .and_then(|p| p.ip)
                .map(|ip| SocketAddr::new(ip, e.rec.listen_port)),
        }
    }

    /// Write one attachment object and its status.
    pub async fn publish_one(&self, p: &Publish) -> Result<(), kube::Error> {
        match p {
            Publish::Delete {
                namespace,
                name,
                pod_uid,
            } => {
                // Read first and delete only the object of that pod, with
                // its UID as a precondition: a StatefulSet pod recreated
                // under the same name owns an object of the same name, and
                // a delete retried after a failure must not take it.
                let api: Api<WireGuardAttachment> = Api::namespaced(self.client.clone(), namespace);
                let Some(existing) = api.get_opt(name).await? else {
                    return Ok(());
                };
                if existing.spec.pod_uid != *pod_uid {
                    return Ok(());
                }
                let params = DeleteParams::default().preconditions(Preconditions {
                    uid: existing.metadata.uid.clone(),
                    resource_version: None,
                });
                match api.delete(name, &params).await {
                    Ok(_) => Ok(()),
                    // Gone, or replaced since the read.
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Publish::Upsert(key) | Publish::Refresh(key) => {
                let Some(slot) = self.slot(key) else {
                    return Ok(());
                };
                let (obj, status, ns, name) = {
                    let g = slot.lock().await;
                    let Some(e) = g.as_ref() else { return Ok(()) };
                    let name = object_name(&e.rec.pod, e.rec.attachment.interface.as_str());
                    let mut obj = WireGuardAttachment::new(
                        &name,
                        WireGuardAttachmentSpec {
                            network: wg_k8s_types::NetworkName::unchecked(&e.rec.network),
                            pod_name: wg_k8s_types::ObjectName::unchecked(&e.rec.pod),
                            pod_uid: e.rec.pod_uid.clone(),
                            node_name: wg_k8s_types::ObjectName::unchecked(
                                &self.settings.node_name,
                            ),
                            interface: wg_k8s_types::InterfaceName::unchecked(
                                e.rec.attachment.interface.as_str(),
                            ),
                        },
                    );
                    obj.metadata.namespace = Some(e.rec.namespace.clone());
                    obj.metadata.labels = Some(BTreeMap::from([(
                        LABEL_NODE.to_string(),
                        self.settings.node_name.clone(),
                    )]));
                    obj.metadata.owner_references = Some(vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                            api_version: "v1".into(),
                            kind: "Pod".into(),
                            name: e.rec.pod.clone(),
                            uid: e.rec.pod_uid.clone(),
                            controller: None,
                            block_owner_deletion: None,
                        },
                    ]);
                    (obj, self.status_of(e), e.rec.namespace.clone(), name)
                };
                let api: Api<WireGuardAttachment> = Api::namespaced(self.client.clone(), &ns);
                let pp = PatchParams::apply("wg-agent").force();
                api.patch(&name, &pp, &Patch::Apply(&obj)).await?;
                let body = serde_json::json!({
                    "apiVersion": wg_k8s_types::API_VERSION,
                    "kind": "WireGuardAttachment",
                    "status": status,
                });
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
                    .await?;
                let g = slot.lock().await;
                drop(g);
                if let Some(slot) = self.slot(key) {
                    if let Some(e) = slot.lock().await.as_mut() {
                        e.written = Some((status, Instant::now()));
                    }
                }
                Ok(())
            }
        }
    }

    /// Write the per-network hints the plugin reads when the agent is
    /// unreachable.
    pub fn write_hints(&self) {
        let dir = self.settings.hint_dir();
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let nets: Vec<(String, FailurePolicy)> = self
            .index()
            .networks
            .iter()
            .filter_map(|(n, c)| c.as_ref().ok().map(|c| (n.clone(), c.failure_policy)))
            .collect();
        for (name, policy) in nets {
            let hint = wg_attach::managed::NetworkHint {
                failure_policy: match policy {
                    FailurePolicy::Fail => "fail".into(),
                    FailurePolicy::Ignore => "ignore".into(),
                },
            };
            let path = dir.join(format!("{name}.json"));
            let tmp = dir.join(format!(".{name}.json.tmp"));
            if let Ok(body) = serde_json::to_vec(&hint) {
                if std::fs::write(&tmp, body).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
            }
        }
    }
}

/// The part of a status others act on, written at once: the key,
/// addresses and endpoint (other nodes' mesh peers). The rest (its
/// conditions) is written at most every `status_min_interval`. Nothing in
/// a status follows traffic (handshakes and counters are metrics), so an
/// idle or busy interface alike costs the apiserver no write.
fn identity(s: &WireGuardAttachmentStatus) -> (Option<String>, Vec<String>, Option<String>) {
    (
        s.public_key.as_ref().map(|k| k.as_str().to_string()),
        s.addresses.iter().map(|a| a.as_str().to_string()).collect(),
        s.endpoint.as_ref().map(|e| e.as_str().to_string()),
    )
}
