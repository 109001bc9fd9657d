//! Verify and repair: read every device back, compare it with what it
//! should be, repair drift.

use super::*;

impl Agent {
    /// Read one device back, compare it with what it should be now
    /// (`Agent::target`: the resources, not what was last written, so a
    /// write that failed is found here too) and, when `repair`, fix what
    /// drifted. Returns the drift, described.
    pub async fn verify_one(
        self: &Arc<Self>,
        key: &Key,
        repair: bool,
    ) -> Result<Vec<String>, AgentError> {
        let Some(slot) = self.slot(key) else {
            return Err(AgentError::Unknown(key.clone()));
        };
        let mut guard = slot.lock().await;
        let Some(entry) = guard.as_mut() else {
            return Ok(vec![]);
        };
        let target = self.target(entry).await?;
        let place = Arc::clone(&entry.place);
        let (name, birth_name) = (
            entry.rec.attachment.interface.clone(),
            entry.rec.attachment.birth_name.clone(),
        );
        let addresses = entry.rec.addresses.clone();
        let kill_switch = self
            .index()
            .networks
            .get(&entry.rec.network)
            .and_then(|c| c.as_ref().ok())
            .and_then(|c| c.kill_switch.clone());
        let metrics = self.metrics.clone();
        let read = tokio::task::spawn_blocking(move || {
            let found = place.find(&name, &birth_name)?;
            let mut drift = Vec::new();
            // The kill switch first, with or without the interface: a leak
            // is repaired at once, not with the device (docs/egress.md).
            if let Some(ks) = &kill_switch {
                let rtnl = Rtnl::open(place.target())?;
                let tunnel = found.as_ref().map(|f| f.index);
                let leaks = ks.leaks(&rtnl, tunnel)?;
                if !leaks.is_empty() {
                    drift.extend(leaks.iter().map(|l| format!("kill switch: {l}")));
                    if repair {
                        metrics.kill_switch_repairs.inc();
                        ks.ensure(&rtnl, tunnel)?;
                    }
                }
            }
            let Some(found) = found else {
                drift.push("the interface is missing".to_string());
                return Ok::<_, wg_netns::Error>((drift, None));
            };
            let dev = place.device(&found)?;
            let now = dev.get()?;
            if let Some(t) = &target {
                // A roaming peer's learned endpoint is not drift.
                let mut want = t.config.clone();
                for p in &mut want.peers {
                    p.endpoint = None;
                }
                let change = want.diff(&now);
                if !change.is_empty() {
                    drift.push(format!(
                        "the device differs from its resources ({} peer changes{})",
                        change.peers.len(),
                        if change.private_key.is_some() || change.listen_port.is_some() {
                            ", key or port"
                        } else {
                            ""
                        }
                    ));
                }
            }
            let rtnl = Rtnl::open(place.target())?;
            let have = rtnl.addresses(found.index)?;
            for a in &addresses {
                if !have.contains(a) {
                    drift.push(format!("address {a} is missing"));
                }
            }
            let table = rtnl.routes(None)?;
            for r in target.iter().flat_map(|t| &t.routes) {
                if !table.iter().any(|t| t.destination == *r) {
                    drift.push(format!("route {r} is missing"));
                }
            }
            if !found.up {
                drift.push("the interface is down".into());
            }
            Ok((drift, Some(now)))
        })
        .await??;
        let (drift, now) = read;
        if repair && !drift.is_empty() {
            warn!(attachment = %key, drift = ?drift, "drift found; repairing");
            self.metrics.drift_repairs.inc();
            entry.last = now;
            entry.dev = None;
            entry.routes.clear();
            drop(guard);
            self.repair(key).await?;
        }
        Ok(drift)
    }

    /// Re-apply everything to one interface (addresses, link, routes,
    /// device) with [`Birthplace::ensure`].
    pub(super) async fn repair(self: &Arc<Self>, key: &Key) -> Result<(), AgentError> {
        let Some(slot) = self.slot(key) else {
            return Ok(());
        };
        {
            let mut guard = slot.lock().await;
            let Some(entry) = guard.as_mut() else {
                return Ok(());
            };
            let place = Arc::clone(&entry.place);
            let mut spec = InterfaceSpec::new(
                entry.rec.attachment.birth_name.clone(),
                entry.rec.attachment.interface.clone(),
            );
            for a in &entry.rec.addresses {
                spec = spec.address(*a);
            }
            let private = self.recorded_key(&entry.rec, &entry.rec.key_generation)?;
            spec = spec.device(
                DeviceConfig::new()
                    .private_key(private)
                    .listen_port(entry.rec.listen_port),
            );
            let done = tokio::task::spawn_blocking(move || {
                // Only the link, addresses and key here: the device's peers
                // are the reconcile's (an empty peer list would remove them).
                let found = place.find(&spec.name, &spec.birth_name)?;
                match found {
                    Some(_) => place
                        .ensure(&spec.key_on_create_only())
                        .map(|e| e.attachment),
                    None => place.ensure(&spec).map(|e| e.attachment),
                }
            })
            .await??;
            entry.attachment = Some(done);
            entry.dev = None;
            entry.last = None;
            entry.routes.clear();
        }
        self.reconcile_one(key).await
    }

    /// Read back every device and repair drift (the periodic verify).
    pub async fn verify(self: &Arc<Self>) {
        if !self.is_synced() {
            return;
        }
        self.forget_secrets();
        for key in self.keys() {
            if let Err(e) = self.verify_one(&key, true).await {
                warn!(attachment = %key, error = %e, "verify failed");
            }
        }
        // Secrets are not watched (the agent may only get them by name):
        // the peers that reference one are re-read here, so a changed
        // preshared key reaches the devices within a verify interval.
        let with_secrets: Vec<Dirty> = self
            .index()
            .peers
            .iter()
            .filter(|(_, m)| {
                m.values()
                    .any(|p| p.config.preshared_key_secret_ref.is_some())
            })
            .map(|((network, namespace), _)| Dirty::Peers {
                network: network.clone(),
                namespace: namespace.clone(),
            })
            .collect();
        self.mark(with_secrets);
    }
}
