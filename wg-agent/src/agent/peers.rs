//! Peer resolution: what one interface should be, from the index, with
//! endpoints resolved and preshared keys read from their Secrets.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wg_k8s_types::{conditions, WireGuardPeer};

use super::*;

use crate::desired::endpoint_allowed;

/// Why a peer is left off the pods' devices: its preshared key could not
/// be had (names the Secret, never its content), or its endpoint is not
/// one its network allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerProblem {
    /// The agent may not read Secrets in the namespace.
    #[error("the agent may not read Secret {namespace}/{name}: the namespace has no RoleBinding of ClusterRole wg-agent-preshared-keys to kube-system/wg-agent (docs/kubernetes.md, \"Preshared keys\")")]
    Forbidden {
        /// The namespace.
        namespace: String,
        /// The Secret.
        name: String,
    },
    /// No such Secret.
    #[error("Secret {namespace}/{name} does not exist")]
    NotFound {
        /// The namespace.
        namespace: String,
        /// The Secret.
        name: String,
    },
    /// The Secret has no valid key under the given name.
    #[error("Secret {namespace}/{name} has no valid preshared key under {key:?}")]
    NoKey {
        /// The namespace.
        namespace: String,
        /// The Secret.
        name: String,
        /// The data key.
        key: String,
    },
    /// The peer's endpoint lies outside its network's `peerEndpoints`.
    #[error("endpoint {endpoint} is not in WireGuardNetwork {network}'s spec.peerEndpoints")]
    EndpointNotAllowed {
        /// The endpoint (as given, or resolved).
        endpoint: String,
        /// The network.
        network: String,
    },
    /// The apiserver could not be asked.
    #[error("cannot read Secret {namespace}/{name}: {error}")]
    Unreachable {
        /// The namespace.
        namespace: String,
        /// The Secret.
        name: String,
        /// The client's error, as text.
        error: String,
    },
}

impl PeerProblem {
    /// The condition reason that names it.
    pub fn reason(&self) -> &'static str {
        match self {
            PeerProblem::Forbidden { .. } => conditions::REASON_SECRET_FORBIDDEN,
            PeerProblem::EndpointNotAllowed { .. } => conditions::REASON_ENDPOINT_NOT_ALLOWED,
            _ => conditions::REASON_SECRET_NOT_FOUND,
        }
    }
}

impl Agent {
    pub(super) async fn desired_for(
        &self,
        network: &str,
        namespace: &str,
        pod: &PodInfo,
        own: &wg_netns::PublicKey,
        addresses: &[IpNetwork],
        net: &NetworkConfig,
    ) -> desired::Desired {
        let (mesh, peers) = {
            let idx = self.index();
            let mesh = if net.mesh {
                idx.mesh_of(network)
                    .into_iter()
                    .filter(|m| m.pod_uid != pod.uid)
                    .collect()
            } else {
                Vec::new()
            };
            (mesh, idx.peers_of(network, namespace))
        };
        let mut ext = Vec::new();
        for p in peers
            .iter()
            .filter(|p| desired::selects(p.selector.as_ref(), &pod.labels))
        {
            if let (Some(allowed), Some(e)) = (&net.peer_endpoints, &p.config.endpoint) {
                // A literal address outside the network's peerEndpoints is
                // refused here; a host name once resolved, below.
                if e.address().is_some_and(|a| !endpoint_allowed(allowed, a)) {
                    self.report_peer(
                        namespace,
                        &p.name,
                        Err(PeerProblem::EndpointNotAllowed {
                            endpoint: e.to_string(),
                            network: network.to_string(),
                        }),
                    );
                    continue;
                }
            }
            let psk = match &p.config.preshared_key_secret_ref {
                Some(r) => match self.psk(namespace, r.name.as_str(), &r.key).await {
                    Ok(k) => Some(k),
                    // Without its key the peer cannot talk anyway; leaving
                    // it out is safer than configuring it without one. The
                    // peer's status says why.
                    Err(e) => {
                        self.report_peer(namespace, &p.name, Err(e));
                        continue;
                    }
                },
                None => None,
            };
            // Host names come from the resolver's cache, never from a
            // lookup this reconcile waits for (resolve.rs).
            let endpoint = p.config.endpoint.as_ref().and_then(|e| {
                let tx = self.dirty.clone();
                self.resolver.lookup(e, network, namespace, move |d| {
                    for x in d {
                        let _ = tx.send(x);
                    }
                })
            });
            if let (Some(allowed), Some(a)) = (&net.peer_endpoints, endpoint) {
                if !endpoint_allowed(allowed, a) {
                    self.report_peer(
                        namespace,
                        &p.name,
                        Err(PeerProblem::EndpointNotAllowed {
                            endpoint: a.to_string(),
                            network: network.to_string(),
                        }),
                    );
                    continue;
                }
            }
            self.report_peer(namespace, &p.name, Ok(()));
            let mut peer = wg_netns::PeerConfig::new(p.config.public_key);
            if let Some(e) = endpoint {
                peer = peer.endpoint(e);
            }
            for ip in &p.config.allowed_ips {
                peer = peer.allowed_ip(*ip);
            }
            if let Some(k) = p.config.persistent_keepalive {
                peer = peer.persistent_keepalive(std::time::Duration::from_secs(u64::from(k)));
            }
            if let Some(psk) = psk {
                peer = peer.preshared_key(psk);
            }
            ext.push(peer);
        }
        let own_nets: Vec<IpNetwork> = addresses.iter().map(|a| wg_netns::normalize(*a)).collect();
        desired::compute(
            own,
            &own_nets,
            &mesh,
            net.persistent_keepalive,
            &ext,
            &net.routes,
        )
    }

    /// A preshared key from a Secret (cached until [`Agent::forget_secrets`];
    /// each failure logged once).
    pub(super) async fn psk(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<PresharedKey, PeerProblem> {
        let id = (namespace.to_string(), name.to_string(), key.to_string());
        if let Some(v) = self
            .psk_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return v.clone();
        }
        let (ns, n) = (namespace.to_string(), name.to_string());
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let value = match api.get(name).await {
            Ok(s) => s
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|b| {
                    std::str::from_utf8(&b.0)
                        .ok()
                        .map(str::trim)
                        .map(str::to_string)
                })
                .and_then(|t| PresharedKey::from_base64(&t).ok())
                .ok_or(PeerProblem::NoKey {
                    namespace: ns,
                    name: n,
                    key: key.to_string(),
                }),
            Err(kube::Error::Api(s)) if s.code == 403 => Err(PeerProblem::Forbidden {
                namespace: ns,
                name: n,
            }),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(PeerProblem::NotFound {
                namespace: ns,
                name: n,
            }),
            Err(e) => {
                self.metrics.apiserver_error("get_secret");
                Err(PeerProblem::Unreachable {
                    namespace: ns,
                    name: n,
                    error: e.to_string(),
                })
            }
        };
        if let Err(e) = &value {
            warn!(reason = e.reason(), "preshared key missing: {e}");
        }
        self.psk_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, value.clone());
        value
    }

    /// Say in a WireGuardPeer's status whether it is applied (condition
    /// Ready; written only when it differs from what this agent last wrote
    /// and from what the peer already says, in the background: the status
    /// is information, never on the path of a device write).
    pub(super) fn report_peer(
        &self,
        namespace: &str,
        name: &str,
        outcome: Result<(), PeerProblem>,
    ) {
        let (ok, reason, message) = match &outcome {
            Ok(()) => (
                true,
                conditions::REASON_APPLIED.to_string(),
                "applied to the pods it selects".to_string(),
            ),
            Err(e) => (false, e.reason().to_string(), e.to_string()),
        };
        let id = (namespace.to_string(), name.to_string());
        let now = (ok, reason.clone(), message.clone());
        {
            let mut written = self.peer_status.lock().unwrap_or_else(|e| e.into_inner());
            if written.get(&id) == Some(&now) {
                return;
            }
            written.insert(id.clone(), now);
        }
        // Every agent whose pods the peer selects comes to the same
        // condition, and each write is sent to every node watching the
        // namespace: write only what the peer does not already say, with
        // a transition time every agent computes alike (the one it has
        // while the status holds, else its creation for the first), so
        // that agents racing to write it make one change, the others
        // no-ops (docs/kubernetes.md, "Scale").
        let (mut conds, created) = self
            .index()
            .peer_status(namespace, name)
            .unwrap_or_default();
        let first = !conds.iter().any(|c| c.type_ == conditions::READY);
        let at = match (first, created) {
            (true, Some(c)) => c,
            _ => Time(k8s_openapi::jiff::Timestamp::now()),
        };
        let new = conditions::condition(conditions::READY, ok, &reason, message, None, at);
        if !conditions::set_condition(&mut conds, new) {
            return;
        }
        let Some(cond) = conds.into_iter().find(|c| c.type_ == conditions::READY) else {
            return;
        };
        let api: Api<WireGuardPeer> = Api::namespaced(self.client.clone(), namespace);
        let name = name.to_string();
        let metrics = self.metrics.clone();
        let peer_status = Arc::clone(&self.peer_status);
        tokio::spawn(async move {
            let patch = serde_json::json!({"status": {"conditions": [cond]}});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                metrics.apiserver_error("patch_peer_status");
                debug!(peer = %format!("{}/{name}", id.0), error = %e, "cannot write the peer's status");
                // Written again at the next reconcile.
                peer_status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            }
        });
    }

    /// Forget cached Secrets (a peer changed, or the periodic verify).
    pub fn forget_secrets(&self) {
        self.psk_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
