//! Garbage collection: interfaces whose pod is gone, their attachments,
//! addresses, ports and keys.

use super::*;

impl Agent {
    /// Remove interfaces whose pod is gone (for the whole grace period,
    /// counted from when this agent first saw it missing, and never before
    /// the interface is a grace period old: an ADD can come before the
    /// watch shows its pod), give back addresses no interface holds, and
    /// delete this node's attachment objects whose interface the agent
    /// does not hold.
    pub async fn gc(self: &Arc<Self>) {
        if !self.is_synced() {
            return;
        }
        let grace = self.settings.gc_grace;
        let mut gone = Vec::new();
        let mut missing = BTreeMap::new();
        let before =
            std::mem::take(&mut *self.missing_since.lock().unwrap_or_else(|e| e.into_inner()));
        for key in self.keys() {
            let Some(slot) = self.slot(&key) else {
                continue;
            };
            let Ok(g) = slot.try_lock() else {
                if let Some(t) = before.get(&key) {
                    missing.insert(key.clone(), *t);
                }
                continue;
            };
            let Some(e) = g.as_ref() else { continue };
            if self.index().pod_uid_alive(&e.rec.pod_uid) {
                continue;
            }
            let since = before.get(&key).copied().unwrap_or_else(Instant::now);
            let old_enough = now().saturating_sub(e.rec.created) > grace.as_secs();
            if old_enough && since.elapsed() > grace {
                gone.push(key.clone());
            } else {
                missing.insert(key.clone(), since);
            }
        }
        *self.missing_since.lock().unwrap_or_else(|e| e.into_inner()) = missing;
        for key in gone {
            let Some(slot) = self.slot(&key) else {
                continue;
            };
            let mut g = slot.lock().await;
            if let Some(e) = g.take() {
                info!(attachment = %key, pod = %format!("{}/{}", e.rec.namespace, e.rec.pod), "pod is gone; removing its interface");
                let rec = e.rec.clone();
                drop(e);
                if let Err(err) = self.forget(&rec, None).await {
                    warn!(attachment = %key, error = %err, "cannot remove");
                    continue;
                }
            }
            drop(g);
            self.drop_slot(&key);
        }
        // Records that could not be reopened: removed once their pod is
        // gone; kept (addresses and key reserved, reported) while it runs.
        let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        let mut kept = Vec::new();
        for rec in orphans {
            let pod = format!("{}/{}", rec.namespace, rec.pod);
            if self.index().pod_uid_alive(&rec.pod_uid) {
                warn!(pod, netns = %rec.attachment.netns.display(),
                      "a running pod's interface cannot be reached (is the runtime's namespace directory mounted?)");
                kept.push(rec);
            } else if let Err(err) = self.forget(&rec, None).await {
                warn!(pod, error = %err, "cannot remove");
                kept.push(rec);
            }
        }
        self.metrics.orphans.set(kept.len() as i64);
        let orphan_keys: Vec<Key> = kept.iter().filter_map(LocalRecord::key).collect();
        self.orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(kept);
        // Addresses held by no interface (a crash between allocation and
        // record) go back to the pool.
        let mut held: BTreeSet<Key> = self.keys().into_iter().collect();
        held.extend(orphan_keys);
        let live: BTreeSet<String> = held.iter().map(|k| k.as_str().to_string()).collect();
        for (network, alloc) in self.ipam.lock().await.iter_mut() {
            let freed = alloc.retain(|owner| live.contains(owner));
            if !freed.is_empty() {
                info!(network, leaked = freed.len(), "reclaimed addresses");
            }
        }
        // Keys of interfaces that are gone. A key id is `UID_IFNAME`, an
        // interface's key `UID.IFNAME`: compare them as (UID, IFNAME). The
        // store is listed before the slots are read: an ADD inserts its slot
        // before it creates its key, so a key listed here is held or orphaned.
        let stored = self.keys.list().unwrap_or_default();
        held.extend(self.keys());
        for kid in stored {
            if Key::new(kid.pod_uid(), kid.ifname()).is_none_or(|k| !held.contains(&k)) {
                let _ = self.keys.remove(&kid);
            }
        }
        // Attachment objects of this node without an interface here.
        let own: Vec<(String, String)> = self
            .index()
            .own_attachments
            .iter()
            .map(|(k, uid)| (k.clone(), uid.clone()))
            .collect();
        for (nsname, uid) in own {
            if held.iter().any(|k| k.pod_uid() == uid) {
                continue;
            }
            if let Some((ns, name)) = nsname.split_once('/') {
                let _ = self.publish.send(Publish::Delete {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    pod_uid: uid.clone(),
                });
            }
        }
        self.metrics.devices.set(self.slots().len() as i64);
        self.report_pods_without_interface().await;
        // This node's address blocks: owned, given back when empty
        // (agent/addresses.rs).
        self.tend_blocks().await;
    }
}
