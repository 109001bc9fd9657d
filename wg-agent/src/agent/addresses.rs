//! Addresses and ports: the network's allocator over the node's claimed
//! blocks, claimed ahead of need, given back when an interface goes; the
//! allocator follows edits of the network's pools; the node's blocks are
//! tended at each garbage collection (owned by the Node, given back when
//! empty, claimed back when they vanished while in use).

use super::*;
use crate::blocks::{self, Taken};
use std::time::Duration;

/// How long [`Agent::tend_blocks`] waits, in all, for the interfaces'
/// slots other jobs hold to learn the addresses their records hold.
const RECORD_WAIT: Duration = Duration::from_secs(10);

impl Agent {
    /// An address per pool for `key`, claiming blocks as needed.
    pub(super) async fn allocate(
        self: &Arc<Self>,
        network: &str,
        net: &NetworkConfig,
        key: &Key,
    ) -> Result<Vec<IpNetwork>, Failure> {
        let mut ipam = self.ipam.lock().await;
        self.ensure_ipam(&mut ipam, network, net)
            .await
            .map_err(|e| fail(code::TRY_AGAIN, "address allocator not ready", e))?;
        let Some(alloc) = ipam.get_mut(network) else {
            return Err(fail(code::IO, "internal error", "allocator vanished"));
        };
        for _ in 0..8 {
            match alloc.allocate(key.as_str()) {
                Ok(a) => {
                    // Claim the next block ahead of need, so pods keep
                    // getting addresses while the apiserver is briefly away.
                    let low: Vec<IpNetwork> = alloc
                        .pools()
                        .map(|p| p.net())
                        .filter(|p| alloc.wants_block(p))
                        .collect();
                    if !low.is_empty() {
                        let me = Arc::clone(self);
                        let network = network.to_string();
                        tokio::spawn(async move { me.claim_ahead(&network, &low).await });
                    }
                    return Ok(a);
                }
                Err(IpamError::NeedBlock { pool, .. }) => {
                    match self.claim_block(alloc, network, pool).await {
                        Ok(Some(block)) => {
                            info!(network, block = %block, "claimed an address block");
                        }
                        Ok(None) => {
                            return Err(fail(
                                code::TRY_AGAIN,
                                format!("address pool {pool} of network {network} is exhausted"),
                                "no block is free",
                            ))
                        }
                        Err(e) => {
                            return Err(fail(
                                code::TRY_AGAIN,
                                format!("cannot claim an address block of {pool}"),
                                e.to_string(),
                            ));
                        }
                    }
                }
                Err(e) => return Err(fail(code::IO, "address allocation failed", e.to_string())),
            }
        }
        Err(fail(
            code::TRY_AGAIN,
            "address allocation did not converge",
            network.to_string(),
        ))
    }

    /// Claim one more block of each of `pools` (run in the background
    /// when a pool's free addresses on this node run low).
    pub(super) async fn claim_ahead(&self, network: &str, pools: &[IpNetwork]) {
        for pool in pools {
            let mut ipam = self.ipam.lock().await;
            let Some(alloc) = ipam.get_mut(network) else {
                return;
            };
            if !alloc.wants_block(pool) {
                continue;
            }
            match self.claim_block(alloc, network, *pool).await {
                Ok(Some(block)) => {
                    info!(network, block = %block, "claimed an address block ahead of need");
                }
                Ok(None) => {}
                Err(e) => debug!(network, error = %e, "cannot claim a block ahead of need"),
            }
        }
    }

    /// Claim a block of `pool` for `alloc` (the allocator of `network`)
    /// and add it: the network's blocks are listed first, so that a block
    /// overlapping any of them (of any size, any node's) counts as taken;
    /// the block is owned by the node's Node when its UID can be learned.
    /// `Ok(None)`: no block is free (or too many were taken meanwhile).
    async fn claim_block(
        &self,
        alloc: &mut Ipam,
        network: &str,
        pool: IpNetwork,
    ) -> Result<Option<IpNetwork>, blocks::BlockError> {
        let Some(size) = alloc.pool(&pool).map(|p| p.block_prefix()) else {
            return Ok(None);
        };
        let api: Api<WireGuardAddressBlock> = Api::all(self.client.clone());
        let mut nets = blocks::taken(&api, network).await.inspect_err(|_| {
            self.metrics.apiserver_error("list_blocks");
        })?;
        nets.extend(alloc.blocks());
        let taken = Taken::new(&nets);
        let uid = self.node_uid().await;
        let node = &self.settings.node_name;
        let got = blocks::claim(&api, network, pool, size, node, uid.as_deref(), &taken)
            .await
            .inspect_err(|_| self.metrics.apiserver_error("claim_block"))?;
        if let Some(block) = got {
            let _ = alloc.add_block(block);
        }
        Ok(got)
    }

    /// The UID of this node's Node object, the owner of its blocks
    /// ([`blocks::node_uid`]); `None` (logged) when it cannot be learned:
    /// blocks are then claimed without an owner and get one later
    /// ([`Agent::tend_blocks`]).
    async fn node_uid(&self) -> Option<String> {
        let node = &self.settings.node_name;
        match blocks::node_uid(&self.client, node).await {
            Ok(Some(uid)) => Some(uid),
            Ok(None) => {
                warn!(node, "cannot learn this node's UID (the agent's token is bound to no node, and it may not read its Node): address blocks are claimed without an owner, and stay when the node is deleted");
                None
            }
            Err(e) => {
                self.metrics.apiserver_error("node_uid");
                warn!(node, error = %e, "cannot learn this node's UID now: address blocks are claimed without an owner until it can");
                None
            }
        }
    }

    pub(super) async fn release(&self, network: &str, key: &Key) {
        if let Some(a) = self.ipam.lock().await.get_mut(network) {
            a.release(key.as_str());
        }
    }

    /// A port of the network's range no interface of this agent holds
    /// and, for sockets on the node, no other program has bound (the
    /// agent runs in the node's network namespace: it tries the port).
    pub(super) fn take_port(&self, net: &NetworkConfig) -> Option<u16> {
        let mut used = self.ports_lock();
        let on_node = net.socket_namespace == wg_netns::SocketNamespace::Host;
        let p = net
            .listen_ports
            .ports()
            .find(|p| !used.contains(p) && (!on_node || port_free(*p)))?;
        used.insert(p);
        Some(p)
    }

    /// Make sure every known network's address allocator exists, holding
    /// this node's blocks and the addresses of its interfaces.
    pub async fn adopt_networks(&self) {
        let nets: Vec<(String, NetworkConfig)> = self
            .index()
            .networks
            .iter()
            .filter_map(|(n, c)| c.as_ref().ok().map(|c| (n.clone(), c.clone())))
            .collect();
        let mut ipam = self.ipam.lock().await;
        for (name, cfg) in nets {
            if let Err(e) = self.ensure_ipam(&mut ipam, &name, &cfg).await {
                warn!(network = %name, error = %e, "address allocator not ready");
            }
        }
    }

    /// Make `ipam` hold an allocator of `name` with `cfg`'s pools: built
    /// (from this node's blocks and records) when there is none, made
    /// again from the old one when the pools changed (an added pool, or
    /// an edit the apiserver refuses nowadays): blocks and addresses are
    /// kept; blocks that are no block of the new pools are given back by
    /// [`Agent::tend_blocks`] once no address of theirs is in use.
    async fn ensure_ipam(
        &self,
        ipam: &mut BTreeMap<String, Ipam>,
        name: &str,
        cfg: &NetworkConfig,
    ) -> Result<(), String> {
        match ipam.get(name) {
            None => {
                let fresh = self.build_ipam(name, cfg).await?;
                ipam.insert(name.to_string(), fresh);
            }
            Some(old) if !old.has_pools(&cfg.pools) => {
                let (next, left_out) = old.with_pools(&cfg.pools).map_err(|e| e.to_string())?;
                info!(
                    network = %name,
                    pools = ?cfg.pools,
                    left_out = ?left_out,
                    "the network's address pools changed: the allocator follows"
                );
                ipam.insert(name.to_string(), next);
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The addresses the node's interfaces hold by network, from their
    /// records (orphans included). A slot held by another job (an ADD, a
    /// DEL, a verify or a peer update: each holds it for at most one
    /// device operation's timeout) is waited for, up to
    /// [`RECORD_WAIT`] in all; `None` when one is still held then (its
    /// addresses are not known: nothing is given back this round).
    /// Called without the allocators' lock: an ADD holds its slot while
    /// it waits for that lock.
    async fn recorded_addresses(&self) -> Option<BTreeMap<String, Vec<IpNetwork>>> {
        let mut out: BTreeMap<String, Vec<IpNetwork>> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + RECORD_WAIT;
        for key in self.keys() {
            let Some(slot) = self.slot(&key) else {
                continue;
            };
            let g = tokio::time::timeout_at(deadline, slot.lock()).await.ok()?;
            if let Some(e) = g.as_ref() {
                out.entry(e.rec.network.clone())
                    .or_default()
                    .extend(e.rec.addresses.iter().copied());
            }
        }
        for r in self
            .orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            out.entry(r.network.clone())
                .or_default()
                .extend(r.addresses.iter().copied());
        }
        Some(out)
    }

    /// This node's blocks as the apiserver has them, brought in line with
    /// the allocators (run by [`Agent::gc`], once the caches are synced):
    ///
    /// - a block without its Node as owner (claimed before blocks had
    ///   owners, or while the UID was unknown) gets it, so the garbage
    ///   collector deletes it with the Node;
    /// - empty blocks are given back: those [`Ipam::releasable_blocks`]
    ///   names, those no pool of the network has any more (cut at another
    ///   size, a removed pool), and those of a network that is gone;
    /// - a block the allocator uses that vanished (deleted by someone, or
    ///   by the garbage collector after its Node was made again) is
    ///   claimed back while addresses of it are in use, and forgotten
    ///   otherwise.
    ///
    /// A block holding an address of an interface's record is never given
    /// back, whatever the allocator says; nothing is given back while an
    /// interface's record is being written.
    pub async fn tend_blocks(&self) {
        if !self.is_synced() {
            return;
        }
        let api: Api<WireGuardAddressBlock> = Api::all(self.client.clone());
        let node = self.settings.node_name.clone();
        // Before the allocators' lock (see `recorded_addresses`): an
        // address allocated after this read is held by its allocator, so
        // its block is not releasable anyway.
        let recorded = self.recorded_addresses().await;
        let mut ipam = self.ipam.lock().await;
        let mine = match blocks::of_node(&api, &node).await {
            Ok(m) => m,
            Err(e) => {
                self.metrics.apiserver_error("list_blocks");
                warn!(error = %e, "cannot list this node's address blocks");
                return;
            }
        };
        let in_use = |network: &str, block: &IpNetwork| {
            recorded.as_ref().is_none_or(|r| {
                r.get(network)
                    .is_some_and(|a| a.iter().any(|a| block.contains(a.ip())))
            })
        };
        let known: BTreeSet<String> = self.index().networks.keys().cloned().collect();
        let mut uid: Option<Option<String>> = None;
        let mut give_back: Vec<(String, IpNetwork)> = Vec::new();
        for (network, owned) in &mine {
            for block in &owned.blocks {
                if owned.owners.get(block).is_some_and(|(o, _)| o.is_none()) {
                    if uid.is_none() {
                        uid = Some(self.node_uid().await);
                    }
                    if let (Some(Some(u)), Some((_, rv))) = (&uid, owned.owners.get(block)) {
                        if let Err(e) = blocks::set_owner(&api, network, *block, &node, u, rv).await
                        {
                            self.metrics.apiserver_error("own_block");
                            warn!(network, block = %block, error = %e, "cannot make the node its block's owner");
                        }
                    }
                }
                match ipam.get_mut(network) {
                    Some(alloc) if alloc.blocks().contains(block) => {}
                    Some(alloc) if alloc.pools().any(|p| p.is_block(block)) => {
                        // This node's block the allocator does not know:
                        // used from now on (and given back if surplus).
                        let _ = alloc.add_block(*block);
                    }
                    // No block of the pools any more (cut at another
                    // size, a removed pool): given back once empty.
                    Some(alloc) if alloc.held_within(block) == 0 && !in_use(network, block) => {
                        give_back.push((network.clone(), *block));
                    }
                    // Of a network that is gone.
                    None if !known.contains(network) && !in_use(network, block) => {
                        give_back.push((network.clone(), *block));
                    }
                    // In use, or its allocator is not built yet.
                    _ => {}
                }
            }
        }
        for (network, alloc) in ipam.iter_mut() {
            let listed = mine
                .get(network)
                .map(|o| o.blocks.as_slice())
                .unwrap_or_default();
            for block in alloc.releasable_blocks() {
                if listed.contains(&block)
                    && !in_use(network, &block)
                    && alloc.remove_block(block).is_ok()
                {
                    give_back.push((network.clone(), block));
                }
            }
            for block in alloc.blocks() {
                if listed.contains(&block) {
                    continue;
                }
                if alloc.held_within(&block) == 0 && !in_use(network, &block) {
                    info!(network, block = %block, "an address block of this node vanished; none of its addresses is in use");
                    let _ = alloc.remove_block(block);
                    continue;
                }
                if uid.is_none() {
                    uid = Some(self.node_uid().await);
                }
                let again = blocks::claim(
                    &api,
                    network,
                    block,
                    block.prefix(),
                    &node,
                    uid.clone().flatten().as_deref(),
                    &Taken::default(),
                )
                .await;
                match again {
                    Ok(Some(_)) => {
                        warn!(network, block = %block, "an address block of this node in use vanished: claimed it back")
                    }
                    Ok(None) => tracing::error!(
                        network,
                        block = %block,
                        "an address block of this node in use vanished and another node claimed it: its pods' addresses may be given twice"
                    ),
                    Err(e) => {
                        self.metrics.apiserver_error("claim_block");
                        warn!(network, block = %block, error = %e, "cannot claim back a vanished address block in use");
                    }
                }
            }
        }
        for (network, block) in give_back {
            match blocks::release(&api, &network, block, &node).await {
                Ok(()) => {}
                Err(e) => {
                    self.metrics.apiserver_error("release_block");
                    warn!(network, block = %block, error = %e, "cannot give an address block back");
                    if let Some(alloc) = ipam.get_mut(&network) {
                        if alloc.pools().any(|p| p.is_block(&block)) {
                            let _ = alloc.add_block(block);
                        }
                    }
                }
            }
        }
    }

    /// A network's allocator: this node's blocks (listed from the
    /// apiserver) and the addresses its interfaces hold (from the records).
    pub(super) async fn build_ipam(&self, name: &str, cfg: &NetworkConfig) -> Result<Ipam, String> {
        let mut alloc = Ipam::new(name, &cfg.pools).map_err(|e| e.to_string())?;
        let api: Api<WireGuardAddressBlock> = Api::all(self.client.clone());
        let owned = crate::blocks::owned(&api, name, &self.settings.node_name)
            .await
            .map_err(|e| {
                self.metrics.apiserver_error("list_blocks");
                format!("cannot list this node's address blocks: {e}")
            })?;
        for bad in owned.invalid {
            warn!(network = %name, block = ?bad, "an address block object of this node is invalid");
        }
        for b in owned.blocks {
            let _ = alloc.add_block(b);
        }
        // Every interface's addresses come from the records on disk (the
        // interfaces held and the orphans alike), never from the slots: a
        // slot is held by whichever job runs (the verify that starts as the
        // caches sync, a reconcile, a DEL), and one skipped here had its
        // addresses handed to the next pod (the cluster test saw two pods
        // with one address after an agent restart). An ADD in flight has no
        // record yet: it allocates from this allocator, under its lock.
        let (records, unreadable) = self.records.load_all();
        for e in unreadable {
            warn!(error = %e, "unreadable attachment record: its addresses are not re-reserved");
        }
        for r in records.iter().filter(|r| r.network == name) {
            let Some(key) = r.key() else { continue };
            match alloc.restore(key.as_str(), &r.addresses) {
                Ok(strays) if !strays.is_empty() => {
                    warn!(attachment = %key, strays = strays.len(), "addresses outside this node's blocks")
                }
                Ok(_) => {}
                Err(err) => {
                    warn!(attachment = %key, error = %err, "cannot re-reserve the addresses")
                }
            }
        }
        Ok(alloc)
    }
}

#[cfg(test)]
mod tests;
