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
mod tests {
    use std::sync::{Arc, Mutex};

    use http::Method;
    use serde_json::{json, Value};

    use super::super::tests::network_obj;
    use super::*;
    use crate::testutil::{status, test_agent, Seen, TestAgent, NODE};

    const BLOCKS: &str = "/apis/wireguard.wg-netns.io/v1alpha1/wireguardaddressblocks";
    const REVIEWS: &str = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
    const NODE_UID: &str = "uid-of-node-1";

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    /// The blocks an apiserver holds, by name.
    type Store = Arc<Mutex<BTreeMap<String, Value>>>;

    fn block(network: &str, cidr: &str, node: &str, owner: Option<&str>) -> Value {
        let mut b = WireGuardAddressBlock::claim(network, &n(cidr), node);
        if let Some(uid) = owner {
            b = b.owned_by_node(uid);
        }
        serde_json::to_value(b).unwrap()
    }

    /// An apiserver that keeps blocks (create, read, list by field, merge
    /// patch, delete, with UIDs and resource versions as preconditions)
    /// and reviews the agent's credentials as bound to node-1.
    fn blocks_apiserver(store: &Store) -> impl FnMut(&Seen) -> (u16, Value) + Send + 'static {
        let store = Arc::clone(store);
        let mut version = 100;
        move |req| {
            version += 1;
            let mut store = store.lock().unwrap();
            let name = req
                .path
                .strip_prefix(BLOCKS)
                .and_then(|p| p.strip_prefix('/'));
            match (&req.method, req.path.as_str(), name) {
                (&Method::POST, REVIEWS, _) => (
                    201,
                    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {},
                           "status": {"userInfo": {"username": "wg-agent", "extra": {
                               blocks::EXTRA_NODE_NAME: [NODE], blocks::EXTRA_NODE_UID: [NODE_UID]}}}}),
                ),
                (&Method::GET, BLOCKS, _) => {
                    let q = req.query.replace("%3D", "=").replace("%2C", ",");
                    let sel = q.split("fieldSelector=").nth(1).unwrap_or_default();
                    let items: Vec<Value> = store
                        .values()
                        .filter(|b| {
                            sel.split(',').filter(|s| !s.is_empty()).all(|kv| {
                                let (k, v) = kv.split_once('=').unwrap();
                                b["spec"][k.trim_start_matches("spec.")] == v
                            })
                        })
                        .cloned()
                        .collect();
                    (
                        200,
                        json!({"apiVersion": wg_k8s_types::API_VERSION, "kind": "WireGuardAddressBlockList",
                                 "metadata": {"resourceVersion": version.to_string()}, "items": items}),
                    )
                }
                (&Method::POST, BLOCKS, _) => {
                    let mut b = req.body.clone();
                    let name = b["metadata"]["name"].as_str().unwrap().to_string();
                    if store.contains_key(&name) {
                        return status(409, "AlreadyExists");
                    }
                    b["metadata"]["uid"] = json!(format!("uid-{version}"));
                    b["metadata"]["resourceVersion"] = json!(version.to_string());
                    store.insert(name, b.clone());
                    (201, b)
                }
                (&Method::GET, _, Some(name)) => match store.get(name) {
                    Some(b) => (200, b.clone()),
                    None => status(404, "NotFound"),
                },
                (&Method::PATCH, _, Some(name)) => {
                    let Some(b) = store.get_mut(name) else {
                        return status(404, "NotFound");
                    };
                    let rv = &req.body["metadata"]["resourceVersion"];
                    if !rv.is_null() && *rv != b["metadata"]["resourceVersion"] {
                        return status(409, "Conflict");
                    }
                    b["metadata"]["ownerReferences"] =
                        req.body["metadata"]["ownerReferences"].clone();
                    b["metadata"]["resourceVersion"] = json!(version.to_string());
                    (200, b.clone())
                }
                (&Method::DELETE, _, Some(name)) => {
                    let uid = &req.body["preconditions"]["uid"];
                    match store.get(name) {
                        Some(b) if uid.is_null() || b["metadata"]["uid"] == *uid => {
                            let b = store.remove(name).unwrap();
                            (200, b)
                        }
                        Some(_) => status(409, "Conflict"),
                        None => status(404, "NotFound"),
                    }
                }
                _ => status(404, "NotFound"),
            }
        }
    }

    fn agent_with(store: &Store, blocks: Vec<Value>) -> TestAgent {
        for mut b in blocks {
            let name = b["metadata"]["name"].as_str().unwrap().to_string();
            b["metadata"]["uid"] = json!(format!("uid-{name}"));
            b["metadata"]["resourceVersion"] = json!("1");
            store.lock().unwrap().insert(name, b);
        }
        test_agent(blocks_apiserver(store))
    }

    fn names(store: &Store) -> Vec<String> {
        store.lock().unwrap().keys().cloned().collect()
    }

    fn owner(store: &Store, name: &str) -> Value {
        store.lock().unwrap()[name]["metadata"]["ownerReferences"].clone()
    }

    fn config(spec: Value) -> NetworkConfig {
        network_obj("n0", spec).spec.validate().unwrap()
    }

    #[tokio::test]
    async fn the_allocator_follows_an_added_pool_and_claims_around_other_blocks() {
        let store = Store::default();
        // node-2 holds a /25 of the pool to be added, cut when its blocks
        // were /25: no /28 of this node may overlap it.
        let t = agent_with(&store, vec![block("n0", "10.78.0.0/25", "node-2", None)]);
        let one = config(json!({"addressPools": [{"cidr": "10.77.0.0/24", "blockSize": 28}]}));
        let k1 = Key::new("u1", "wg0").unwrap();
        let a1 = t.agent.allocate("n0", &one, &k1).await.unwrap();
        assert_eq!(a1.len(), 1);
        // Claimed owned by this node's Node (its UID from the review of
        // its own credentials).
        let mine: Vec<String> = names(&store)
            .into_iter()
            .filter(|s| s.starts_with("n0.10-77"))
            .collect();
        assert!(!mine.is_empty());
        for name in &mine {
            assert_eq!(
                owner(&store, name),
                json!([{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID}])
            );
        }
        // A pool added: the next interface gets an address of each, the
        // first keeps its own.
        let two = config(json!({"addressPools": [
            {"cidr": "10.77.0.0/24", "blockSize": 28}, {"cidr": "10.78.0.0/24", "blockSize": 28}]}));
        let k2 = Key::new("u2", "wg0").unwrap();
        let a2 = t.agent.allocate("n0", &two, &k2).await.unwrap();
        assert_eq!(a2.len(), 2, "{a2:?}");
        assert!(
            n("10.78.0.128/25").contains(a2[1].ip()),
            "{a2:?}: inside node-2's old block"
        );
        assert_eq!(t.agent.allocate("n0", &two, &k1).await.unwrap(), a1);
        let ipam = t.agent.ipam.lock().await;
        let blocks = ipam["n0"].blocks();
        assert!(blocks
            .iter()
            .all(|b| !b.contains(n("10.78.0.0").ip()) || b.prefix() < 25));
        assert!(blocks.iter().all(|b| b.prefix() == 28), "{blocks:?}");
    }

    #[tokio::test]
    async fn tend_owns_gives_back_and_claims_back_the_nodes_blocks() {
        let store = Store::default();
        let t = agent_with(
            &store,
            vec![
                // Empty and surplus: given back.
                block("n0", "10.77.0.16/28", NODE, Some(NODE_UID)),
                // Holds an address; claimed before blocks had owners.
                block("n0", "10.77.0.32/28", NODE, None),
                // This node's, unknown to the allocator, empty: given back.
                block("n0", "10.77.0.48/28", NODE, Some(NODE_UID)),
                // Another node's: never touched.
                block("n0", "10.77.0.64/28", "node-2", Some("uid-2")),
                // Cut at another size: kept while an address in it is
                // held, given back when empty.
                block("n0", "10.77.0.192/26", NODE, Some(NODE_UID)),
                block("n0", "10.77.0.128/26", NODE, Some(NODE_UID)),
                // Of a network that is gone: given back.
                block("gone", "10.9.0.0/28", NODE, Some(NODE_UID)),
            ],
        );
        t.agent.index.lock().unwrap().network(&network_obj(
            "n0",
            json!({"addressPools": [{"cidr": "10.77.0.0/24", "blockSize": 28}]}),
        ));
        let pools = [(n("10.77.0.0/24"), 28)];
        let mut ipam = Ipam::new("n0", &pools).unwrap();
        for b in [
            "10.77.0.16/28",
            "10.77.0.32/28",
            "10.77.0.96/28",
            "10.77.0.112/28",
        ] {
            ipam.add_block(n(b)).unwrap();
        }
        ipam.restore("u1.wg0", &[n("10.77.0.33/24")]).unwrap();
        ipam.restore("u2.wg0", &[n("10.77.0.200/24")]).unwrap();
        // 10.77.0.96/28 and 10.77.0.112/28 vanished from the apiserver;
        // the first holds an address.
        ipam.restore("u3.wg0", &[n("10.77.0.100/24")]).unwrap();
        t.agent.ipam.lock().await.insert("n0".into(), ipam);

        // Before the caches are synced: nothing at all.
        t.agent.tend_blocks().await;
        assert!(t.log.all().is_empty());

        t.agent.set_synced();
        t.agent.tend_blocks().await;
        assert_eq!(
            names(&store),
            vec![
                "n0.10-77-0-192-26",
                "n0.10-77-0-32-28",
                "n0.10-77-0-64-28",
                "n0.10-77-0-96-28",
            ],
            "{:?}",
            t.log.lines()
        );
        let node_owner =
            json!([{"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID}]);
        assert_eq!(
            owner(&store, "n0.10-77-0-32-28"),
            node_owner,
            "made its owner"
        );
        assert_eq!(
            owner(&store, "n0.10-77-0-96-28"),
            node_owner,
            "claimed back, owned"
        );
        assert_eq!(owner(&store, "n0.10-77-0-64-28")[0]["uid"], "uid-2");
        {
            let ipam = t.agent.ipam.lock().await;
            assert_eq!(
                ipam["n0"].blocks(),
                vec![n("10.77.0.32/28"), n("10.77.0.96/28")]
            );
        }
        // The address in the other-sized block is released: so is the block.
        t.agent
            .ipam
            .lock()
            .await
            .get_mut("n0")
            .unwrap()
            .release("u2.wg0");
        t.agent.tend_blocks().await;
        assert!(!names(&store).contains(&"n0.10-77-0-192-26".to_string()));
        // Nothing left to do: one list, no write.
        let before = t.log.all().len();
        t.agent.tend_blocks().await;
        let after = t.log.all();
        assert_eq!(after.len(), before + 1, "{:?}", &after[before..]);
        assert_eq!(after[before].line(), format!("GET {BLOCKS}"));
        // The last pod goes: every empty block goes back.
        {
            let mut ipam = t.agent.ipam.lock().await;
            let alloc = ipam.get_mut("n0").unwrap();
            alloc.release("u1.wg0");
            alloc.release("u3.wg0");
        }
        t.agent.tend_blocks().await;
        assert_eq!(names(&store), vec!["n0.10-77-0-64-28"]);
        assert!(t.agent.ipam.lock().await["n0"].blocks().is_empty());
    }

    /// A slot held by another job when the blocks are tended (a verify
    /// or a peer update holds it for one device operation): waited for,
    /// and the empty block still goes back. (Before, any held slot made
    /// the whole round give nothing back; a node whose verify ran at each
    /// collection kept its blocks for ever.)
    #[tokio::test]
    async fn a_slot_held_briefly_does_not_stop_the_give_back() {
        let store = Store::default();
        let t = agent_with(
            &store,
            vec![block("n0", "10.77.0.16/28", NODE, Some(NODE_UID))],
        );
        t.agent.set_synced();
        t.agent.index.lock().unwrap().network(&network_obj(
            "n0",
            json!({"addressPools": [{"cidr": "10.77.0.0/24", "blockSize": 28}]}),
        ));
        let mut ipam = Ipam::new("n0", &[(n("10.77.0.0/24"), 28)]).unwrap();
        ipam.add_block(n("10.77.0.16/28")).unwrap();
        t.agent.ipam.lock().await.insert("n0".into(), ipam);
        let slot: Slot = Arc::default();
        t.agent
            .slots()
            .insert(Key::new("u9", "wg0").unwrap(), Arc::clone(&slot));
        let held = Arc::clone(&slot).lock_owned().await;
        let job = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(held);
        });
        t.agent.tend_blocks().await;
        job.await.unwrap();
        assert!(names(&store).is_empty(), "{:?}", t.log.lines());
        assert!(t.agent.ipam.lock().await["n0"].blocks().is_empty());
    }

    #[tokio::test]
    async fn a_failed_release_keeps_the_block() {
        let store = Store::default();
        let inner = blocks_apiserver(&store);
        let inner = Arc::new(Mutex::new(inner));
        let script = {
            let inner = Arc::clone(&inner);
            move |req: &Seen| {
                if req.method == Method::DELETE {
                    return status(500, "InternalError");
                }
                (inner.lock().unwrap())(req)
            }
        };
        store.lock().unwrap().insert("n0.10-77-0-16-28".into(), {
            let mut b = block("n0", "10.77.0.16/28", NODE, Some(NODE_UID));
            b["metadata"]["uid"] = json!("u");
            b["metadata"]["resourceVersion"] = json!("1");
            b
        });
        let t = test_agent(script);
        t.agent.set_synced();
        let mut ipam = Ipam::new("n0", &[(n("10.77.0.0/24"), 28)]).unwrap();
        ipam.add_block(n("10.77.0.16/28")).unwrap();
        t.agent.ipam.lock().await.insert("n0".into(), ipam);
        t.agent.index.lock().unwrap().network(&network_obj(
            "n0",
            json!({"addressPools": [{"cidr": "10.77.0.0/24", "blockSize": 28}]}),
        ));
        t.agent.tend_blocks().await;
        assert_eq!(names(&store), vec!["n0.10-77-0-16-28"]);
        assert_eq!(
            t.agent.ipam.lock().await["n0"].blocks(),
            vec![n("10.77.0.16/28")]
        );
        assert!(t
            .agent
            .metrics
            .encode()
            .contains("wg_agent_apiserver_errors_total{operation=\"release_block\"} 1"));
    }
}
