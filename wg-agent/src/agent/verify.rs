//! Verify and repair: read every device back, compare it with what it
//! should be, repair drift.

use std::fmt;

use wg_netns::{Drift, Leak};

use super::*;

/// One thing the verify found wrong with an interface: typed from the
/// library's own answers (`KillSwitch::leaks`, `Birthplace::verify`), so
/// logs, the CHECK reply and the metric's `kind` label all say the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The pod's kill switch leaks (repaired at once, with or without the
    /// interface).
    KillSwitch(Leak),
    /// The interface differs from its resources.
    Drift(Drift),
}

impl Finding {
    /// The kind, for the `wg_agent_drift_found_total` label:
    /// `kill_switch_leak`, or the drift's own ([`Drift::kind`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::KillSwitch(_) => "kill_switch_leak",
            Finding::Drift(d) => d.kind(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::KillSwitch(l) => write!(f, "kill switch: {l}"),
            Finding::Drift(d) => d.fmt(f),
        }
    }
}

/// The findings, for a log line or a CHECK reply.
pub fn describe(found: &[Finding]) -> String {
    found
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What of `found` is drift: all of it when the interface's target is
/// known; without one (its network's or namespace's watches not listed
/// yet, its pod unknown, its network gone) the device is left as it is
/// by the reconcile, so what it holds is not judged either (an agent
/// restarted before its namespace's peers listed found its mesh peers
/// "unexpected" and rewrote them). The link, its addresses and the kill
/// switch are judged always.
pub(super) fn judged(target_known: bool, found: Vec<Finding>) -> Vec<Finding> {
    if target_known {
        return found;
    }
    found
        .into_iter()
        .filter(|f| !matches!(f, Finding::Drift(d) if d.is_device()))
        .collect()
}

impl Agent {
    /// Read one interface back, compare it with what it should be now
    /// (`Agent::target`: the resources, not what was last written, so a
    /// write that failed is found here too) and, when `repair`, fix what
    /// drifted. The comparison is wg-netns's own "is it so"
    /// ([`Birthplace::verify`] of the interface's spec: link, addresses,
    /// device, routes through it), so it reports what
    /// [`Birthplace::ensure`] and the reconcile would change.
    pub async fn verify_one(
        self: &Arc<Self>,
        key: &Key,
        repair: bool,
    ) -> Result<Vec<Finding>, AgentError> {
        let Some(slot) = self.slot(key) else {
            return Err(AgentError::Unknown(key.clone()));
        };
        let mut guard = slot.lock().await;
        let Some(entry) = guard.as_mut() else {
            return Ok(vec![]);
        };
        let target = self.target(entry).await?;
        let place = Arc::clone(&entry.place);
        let mut spec = InterfaceSpec::new(
            entry.rec.attachment.birth_name.clone(),
            entry.rec.attachment.interface.clone(),
        );
        for a in &entry.rec.addresses {
            spec = spec.address(*a);
        }
        if let Some(t) = &target {
            // A roaming peer's learned endpoint is not drift.
            let mut want = t.config.clone();
            for p in &mut want.peers {
                p.endpoint = None;
            }
            spec = spec.device(want);
            for r in &t.routes {
                spec = spec.route(Route::new(*r));
            }
        }
        let kill_switch = self
            .index()
            .networks
            .get(&entry.rec.network)
            .and_then(|c| c.as_ref().ok())
            .and_then(|c| c.kill_switch.clone());
        let metrics = self.metrics.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            // The kill switch first, with or without the interface: a leak
            // is repaired at once, not with the device (docs/egress.md).
            if let Some(ks) = &kill_switch {
                let tunnel = place.find(&spec.name, &spec.birth_name)?.map(|f| f.index);
                let rtnl = Rtnl::open(place.target())?;
                let leaks = ks.leaks(&rtnl, tunnel)?;
                if !leaks.is_empty() && repair {
                    metrics.kill_switch_repairs.inc();
                    ks.ensure(&rtnl, tunnel)?;
                }
                found.extend(leaks.into_iter().map(Finding::KillSwitch));
            }
            found.extend(place.verify(&spec)?.into_iter().map(Finding::Drift));
            Ok::<_, wg_netns::Error>(found)
        })
        .await??;
        let found = judged(target.is_some(), found);
        if repair {
            for f in &found {
                self.metrics.drift_found(f.kind());
            }
        }
        let drifted = found.iter().any(|f| matches!(f, Finding::Drift(_)));
        if repair && drifted {
            warn!(attachment = %key, drift = %describe(&found), "drift found; repairing");
            self.metrics.drift_repairs.inc();
            entry.last = None;
            entry.dev = None;
            entry.routes.clear();
            drop(guard);
            self.repair(key).await?;
        } else if repair && !found.is_empty() {
            warn!(attachment = %key, drift = %describe(&found), "kill switch leak repaired");
        }
        Ok(found)
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
