//! Reconcile: for each interface a change touches, compute what it should
//! be and send the device only the difference.

use super::*;

/// What an interface should be (see `Agent::target`).
pub(crate) struct Target {
    /// The complete device configuration: key, port, every peer.
    pub(crate) config: DeviceConfig,
    /// The routes through the interface beyond its addresses' networks.
    pub(crate) routes: BTreeSet<IpNetwork>,
    /// A key rotation to record once written: (generation, public key).
    pub(crate) rotation: Option<(String, wg_netns::PublicKey)>,
}

impl Agent {
    /// Schedule another reconcile of `key` after its backoff (a failed
    /// write is retried, not left for the next change to come along).
    /// Returns the delay; one retry at a time per interface.
    pub(super) fn retry_later(self: &Arc<Self>, key: &Key) -> Option<std::time::Duration> {
        let after = self.retry.failed(key)?;
        let me = Arc::clone(self);
        let key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            me.retry.fired(&key);
            me.mark(vec![Dirty::Pod(key.pod_uid().to_string())]);
        });
        Some(after)
    }

    /// The interfaces a set of changes touches.
    pub fn affected(&self, dirty: &BTreeSet<Dirty>) -> Vec<Key> {
        if dirty.contains(&Dirty::All) {
            return self.keys();
        }
        // A busy slot (an ADD in progress) is included: it computes its own.
        self.keys_where(true, |k, e| {
            dirty.iter().any(|d| match d {
                Dirty::All => true,
                Dirty::Network(n) => *n == e.rec.network,
                Dirty::Peers { network, namespace } => {
                    *network == e.rec.network && *namespace == e.rec.namespace
                }
                Dirty::Namespace(ns) => *ns == e.rec.namespace,
                Dirty::Pod(uid) => k.pod_uid() == uid,
            })
        })
    }

    /// Bring the interfaces `dirty` touches to what the resources say,
    /// sending each device only the difference from what was last written.
    pub async fn reconcile(self: &Arc<Self>, dirty: &BTreeSet<Dirty>) {
        if !self.is_synced() {
            return;
        }
        let started = Instant::now();
        let keys = self.affected(dirty);
        use futures::StreamExt;
        futures::stream::iter(keys)
            .for_each_concurrent(4, |key| {
                let me = Arc::clone(self);
                async move {
                    match me.reconcile_one(&key).await {
                        Ok(()) => me.retry.succeeded(&key),
                        Err(e) => {
                            me.metrics.reconcile_errors.inc();
                            let after = me.retry_later(&key);
                            warn!(attachment = %key, error = %e, retry_in = ?after, "reconcile failed");
                        }
                    }
                }
            })
            .await;
        self.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Whether the watches an interface of `network` in `namespace` needs
    /// have listed, waiting up to 2 s for them (an ADD that started them).
    pub(super) async fn scope_listed(&self, network: &str, namespace: &str) -> bool {
        self.scope
            .wait_until(std::time::Duration::from_secs(2), || {
                self.index().scope_listed(network, namespace)
            })
            .await
    }

    /// What an interface should be now: its device configuration (key,
    /// port, every peer) and its routes. `None` when the resources say
    /// nothing about it (its network is gone or invalid, its pod unknown or
    /// another with the same name, its network's or namespace's watches
    /// not listed yet): it is then left as it is (removing a
    /// pod's network under it is the pod's deletion's job). The one answer
    /// that both the reconcile ("make it so") and the verify ("is it so")
    /// use.
    pub(super) async fn target(&self, entry: &Entry) -> Result<Option<Target>, AgentError> {
        let Ok(net) = self.network_config(&entry.rec.network) else {
            return Ok(None);
        };
        if !self
            .index()
            .scope_listed(&entry.rec.network, &entry.rec.namespace)
        {
            // Its mesh and peers are not known yet: nothing is removed.
            return Ok(None);
        }
        let pod = self
            .index()
            .pod_info(&entry.rec.namespace, &entry.rec.pod)
            .cloned();
        let Some(pod) = pod.filter(|p| p.uid == entry.rec.pod_uid) else {
            return Ok(None);
        };
        let private = self.recorded_key(&entry.rec, &pod.rotation)?;
        let public = private.public_key();
        let desired = self
            .desired_for(
                &entry.rec.network,
                &entry.rec.namespace,
                &pod,
                &public,
                &entry.rec.addresses,
                &net,
            )
            .await;
        let rotation =
            (pod.rotation != entry.rec.key_generation).then(|| (pod.rotation.clone(), public));
        Ok(Some(Target {
            config: desired
                .device
                .private_key(private)
                .listen_port(entry.rec.listen_port),
            routes: desired.routes,
            rotation,
        }))
    }

    pub(super) async fn reconcile_one(self: &Arc<Self>, key: &Key) -> Result<(), AgentError> {
        let Some(slot) = self.slot(key) else {
            return Ok(());
        };
        let mut guard = slot.lock().await;
        let Some(entry) = guard.as_mut() else {
            return Ok(());
        };
        let Some(target) = self.target(entry).await? else {
            return Ok(());
        };
        let config = target.config;
        // No interface (a restart found it deleted): the verify makes it
        // again and reconciles it then.
        let Some(attachment) = entry.attachment.clone() else {
            return Ok(());
        };
        let place = Arc::clone(&entry.place);
        let dev = entry.dev.clone();
        let last = entry.last.take();
        let old_routes = entry.routes.clone();
        let new_routes = target.routes.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let dev = match dev {
                Some(d) => d,
                None => Arc::new(place.device(&attachment)?),
            };
            let mut state = match last {
                Some(s) => s,
                None => dev.get()?,
            };
            let sent = dev.update_from(&state, &config)?;
            state.apply(&sent);
            if old_routes != new_routes {
                // Both ways against what this agent installed before
                // (wg-netns's one rule for routes it keeps).
                let routes = |set: &BTreeSet<IpNetwork>| -> Vec<Route> {
                    set.iter().map(|r| Route::new(*r)).collect()
                };
                Rtnl::open(place.target())?.sync_routes(
                    attachment.index,
                    &routes(&old_routes),
                    &routes(&new_routes),
                )?;
            }
            Ok::<_, wg_netns::Error>((dev, state, sent))
        })
        .await?;
        match outcome {
            Ok((dev, state, sent)) => {
                entry.dev = Some(dev);
                entry.last = Some(state);
                entry.routes = target.routes;
                if !sent.is_empty() {
                    let removed = sent.peers.iter().filter(|p| p.remove).count();
                    info!(
                        attachment = %key,
                        peers_changed = sent.peers.len() - removed,
                        peers_removed = removed,
                        key_changed = sent.private_key.is_some(),
                        "device updated"
                    );
                    self.metrics.device_updates.inc();
                }
                if let Some((generation, public)) = target.rotation {
                    entry.rec.key_generation = generation;
                    entry.rec.public_key = public;
                    self.records.save(&entry.rec)?;
                    info!(attachment = %key, "key rotated");
                    let _ = self.publish.send(Publish::Upsert(key.clone()));
                }
                Ok(())
            }
            Err(e) => {
                // Read the device afresh next time (the retry, or the
                // verify, which compares it with the target, not with this).
                entry.dev = None;
                entry.last = None;
                Err(e.into())
            }
        }
    }

    /// The private key of a recorded interface at `generation` (a new
    /// one when the generation changed: a rotation).
    pub(super) fn recorded_key(
        &self,
        rec: &LocalRecord,
        generation: &str,
    ) -> Result<PrivateKey, AgentError> {
        let kid = KeyId::new(&rec.pod_uid, rec.attachment.interface.as_str())?;
        Ok(self.keys.get_or_create(&kid, generation).map(|(k, _)| k)?)
    }
}
