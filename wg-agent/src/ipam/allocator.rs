//! `Ipam`, the allocator of one network on this node: the blocks it owns,
//! its owners and their addresses (allocate, restore, release), which
//! blocks to claim or give back; and `Stray`, an address held outside its
//! blocks.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::math::{host_mask, to_ip, to_u128, Span};
use super::{IpamError, Pool, LOW_WATER_MIN};

/// An address held by an owner outside the blocks this node owns (only
/// [`Ipam::restore`] records such addresses): see [`Ipam::strays`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    /// Who holds it.
    pub owner: String,
    /// The address, as restored.
    pub address: IpNetwork,
    /// The block of the network's pools it lies in; `None` when it is in
    /// none of the pools (they changed since it was given).
    pub block: Option<IpNetwork>,
}

#[derive(Clone, Debug)]
struct PoolState {
    pool: Pool,
    /// Owned blocks by first address, each with the address to try next.
    blocks: BTreeMap<u128, u128>,
}

/// The addresses of one network on this node: see the [module
/// documentation](super).
#[derive(Clone, Debug)]
pub struct Ipam {
    network: String,
    pools: Vec<PoolState>,
    /// Owner -> its addresses, in pool order (as allocated or restored).
    owners: BTreeMap<String, Vec<IpNetwork>>,
    /// Every held address -> its owner. One source of truth for what is
    /// taken: no address can be in it twice.
    pub(super) holders: BTreeMap<IpAddr, String>,
}

impl Ipam {
    /// An allocator for `network` with `pools` (as in
    /// `NetworkConfig::pools`), owning no block yet.
    pub fn new(network: impl Into<String>, pools: &[(IpNetwork, u8)]) -> Result<Ipam, IpamError> {
        let network = network.into();
        let mut states: Vec<PoolState> = Vec::with_capacity(pools.len());
        for &(net, block_prefix) in pools {
            let pool = Pool::new(net, block_prefix).map_err(|source| IpamError::InvalidPool {
                network: network.clone(),
                source,
            })?;
            if let Some(other) = states.iter().find(|s| {
                s.pool.v4() == pool.v4()
                    && (s.pool.contains(pool.net.ip()) || pool.contains(s.pool.net.ip()))
            }) {
                return Err(IpamError::OverlappingPools {
                    network,
                    first: other.pool.net,
                    second: pool.net,
                });
            }
            states.push(PoolState {
                pool,
                blocks: BTreeMap::new(),
            });
        }
        Ok(Ipam {
            network,
            pools: states,
            owners: BTreeMap::new(),
            holders: BTreeMap::new(),
        })
    }

    /// The network's name.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The pools, in the network's order.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> + '_ {
        self.pools.iter().map(|s| &s.pool)
    }

    /// The pool whose network is `net`.
    pub fn pool(&self, net: &IpNetwork) -> Option<&Pool> {
        self.pools().find(|p| p.net == *net)
    }

    fn state(&self, pool: &IpNetwork) -> Option<&PoolState> {
        self.pools.iter().find(|s| s.pool.net == *pool)
    }

    fn pool_index_of(&self, addr: IpAddr) -> Option<usize> {
        self.pools.iter().position(|s| s.pool.contains(addr))
    }

    fn pools_text(&self) -> String {
        let v: Vec<String> = self.pools().map(ToString::to_string).collect();
        v.join(", ")
    }

    /// The held addresses of a block (a range of `holders`).
    fn held_in(
        &self,
        pool: &Pool,
        span: Span,
    ) -> std::collections::btree_map::Range<'_, IpAddr, String> {
        self.holders
            .range(to_ip(span.first, pool.v4())..=to_ip(span.last, pool.v4()))
    }

    /// Free addresses of a block: usable ones not held.
    fn block_free(&self, pool: &Pool, span: Span) -> u128 {
        let held_usable = self
            .held_in(pool, span)
            .filter(|(a, _)| !pool.reserved(to_u128(**a)))
            .count();
        pool.usable(span)
            .saturating_sub(u128::try_from(held_usable).unwrap_or(u128::MAX))
    }

    /// A free address in `state`'s blocks: from the fullest block with
    /// room, after its cursor. Returns (block first address, address).
    fn find_free(&self, state: &PoolState) -> Option<(u128, u128)> {
        let pool = &state.pool;
        let (first, cursor) = state
            .blocks
            .iter()
            .map(|(&first, &cursor)| (first, cursor, pool.block_span(first)))
            .filter(|&(_, _, span)| self.block_free(pool, span) > 0)
            // Fullest first (fewest free), then lowest.
            .min_by_key(|&(first, _, span)| (self.block_free(pool, span), first))
            .map(|(first, cursor, _)| (first, cursor))?;
        let span = pool.block_span(first);
        let start = if span.contains(cursor) {
            cursor
        } else {
            span.first
        };
        // The block has a free address, and every step that does not find
        // one passes a held or reserved address: this ends within (held +
        // 2) steps.
        let mut c = start;
        loop {
            if !pool.reserved(c) && !self.holders.contains_key(&to_ip(c, pool.v4())) {
                return Some((first, c));
            }
            c = if c == span.last { span.first } else { c + 1 };
            if c == start {
                return None;
            }
        }
    }

    /// One address per pool for `owner`, each with its pool's prefix
    /// length; the same ones again if the owner already holds addresses
    /// (even if the pools changed since: a pod's addresses do not change
    /// under it). All-or-nothing: [`IpamError::NeedBlock`] names the first
    /// pool without a free address, and nothing is recorded.
    pub fn allocate(&mut self, owner: &str) -> Result<Vec<IpNetwork>, IpamError> {
        if let Some(held) = self.owners.get(owner) {
            return Ok(held.clone());
        }
        let mut picks = Vec::with_capacity(self.pools.len());
        for (i, state) in self.pools.iter().enumerate() {
            let Some((block, addr)) = self.find_free(state) else {
                return Err(IpamError::NeedBlock {
                    network: self.network.clone(),
                    pool: state.pool.net,
                    owner: owner.to_string(),
                });
            };
            picks.push((i, block, addr));
        }
        let mut addrs = Vec::with_capacity(picks.len());
        for (i, block, addr) in picks {
            let state = &mut self.pools[i];
            let pool = state.pool;
            let span = pool.block_span(block);
            let next = if addr == span.last {
                span.first
            } else {
                addr + 1
            };
            state.blocks.insert(block, next);
            let ip = to_ip(addr, pool.v4());
            self.holders.insert(ip, owner.to_string());
            // The prefix length is the pool's, valid for the family.
            if let Ok(net) = IpNetwork::new(ip, pool.net.prefix()) {
                addrs.push(net);
            }
        }
        self.owners.insert(owner.to_string(), addrs.clone());
        Ok(addrs)
    }

    /// The addresses `owner` holds.
    pub fn addresses(&self, owner: &str) -> Option<&[IpNetwork]> {
        self.owners.get(owner).map(Vec::as_slice)
    }

    /// The owners holding addresses.
    pub fn owners(&self) -> impl Iterator<Item = &str> + '_ {
        self.owners.keys().map(String::as_str)
    }

    /// Record addresses `owner` already has (after an agent restart, from
    /// the node's local records), before anything is allocated.
    ///
    /// What is safest when an address lies outside the blocks this node
    /// owns (its block claim was lost, or the pools changed): the pod
    /// really uses it, so it is **recorded anyway** (never handed to
    /// another owner, released with its owner) and **returned** as a
    /// [`Stray`], so that the caller claims its block (which makes it this
    /// node's again: [`Ipam::add_block`] then counts it as held) or, when
    /// another node owns the block, reports the conflict on the pod. Such
    /// an address is never handed out by this allocator either way, since
    /// it only gives addresses of owned blocks. [`Ipam::strays`] lists the
    /// strays left at any time.
    ///
    /// Refused, recording nothing: an address held by another owner
    /// ([`IpamError::AddressTaken`]: two pods cannot share one, the caller
    /// must give one of them new addresses), and an owner that already
    /// holds different addresses ([`IpamError::OwnerMismatch`]). Restoring
    /// what an owner holds is a no-op. An empty list records nothing.
    pub fn restore(&mut self, owner: &str, addrs: &[IpNetwork]) -> Result<Vec<Stray>, IpamError> {
        let mut given: Vec<IpNetwork> = Vec::with_capacity(addrs.len());
        for a in addrs {
            if !given.iter().any(|g| g.ip() == a.ip()) {
                given.push(*a);
            }
        }
        if let Some(held) = self.owners.get(owner) {
            let same = held.len() == given.len()
                && given.iter().all(|g| held.iter().any(|h| h.ip() == g.ip()));
            if !same {
                return Err(IpamError::OwnerMismatch {
                    network: self.network.clone(),
                    owner: owner.to_string(),
                    held: held.clone(),
                    given,
                });
            }
            return Ok(self.strays_of(owner));
        }
        for a in &given {
            if let Some(holder) = self.holders.get(&a.ip()) {
                return Err(IpamError::AddressTaken {
                    network: self.network.clone(),
                    owner: owner.to_string(),
                    address: *a,
                    holder: holder.clone(),
                });
            }
        }
        if given.is_empty() {
            return Ok(Vec::new());
        }
        for a in &given {
            self.holders.insert(a.ip(), owner.to_string());
        }
        self.owners.insert(owner.to_string(), given);
        Ok(self.strays_of(owner))
    }

    /// Whether `addr` lies in a block this node owns.
    fn in_owned_block(&self, addr: IpAddr) -> bool {
        self.pool_index_of(addr).is_some_and(|i| {
            let state = &self.pools[i];
            let first = to_u128(addr) & !host_mask(state.pool.block_prefix, state.pool.v4());
            state.blocks.contains_key(&first)
        })
    }

    fn strays_of(&self, owner: &str) -> Vec<Stray> {
        let Some(addrs) = self.owners.get(owner) else {
            return Vec::new();
        };
        addrs
            .iter()
            .filter(|a| !self.in_owned_block(a.ip()))
            .map(|a| Stray {
                owner: owner.to_string(),
                address: *a,
                block: self
                    .pool_index_of(a.ip())
                    .and_then(|i| self.pools[i].pool.block_of(a.ip())),
            })
            .collect()
    }

    /// Held addresses outside this node's blocks (see [`Ipam::restore`]).
    pub fn strays(&self) -> Vec<Stray> {
        self.owners.keys().flat_map(|o| self.strays_of(o)).collect()
    }

    /// Forget `owner`'s addresses, returning them (none if it held none).
    pub fn release(&mut self, owner: &str) -> Vec<IpNetwork> {
        let addrs = self.owners.remove(owner).unwrap_or_default();
        for a in &addrs {
            if self.holders.get(&a.ip()).is_some_and(|h| h == owner) {
                self.holders.remove(&a.ip());
            }
        }
        addrs
    }

    /// Release every owner for which `live` is false (pods that are gone:
    /// leaks), returning them with the addresses they held.
    pub fn retain(&mut self, mut live: impl FnMut(&str) -> bool) -> Vec<(String, Vec<IpNetwork>)> {
        let dead: Vec<String> = self.owners.keys().filter(|o| !live(o)).cloned().collect();
        dead.into_iter()
            .map(|o| {
                let addrs = self.release(&o);
                (o, addrs)
            })
            .collect()
    }

    fn locate_block(&self, block: &IpNetwork) -> Result<usize, IpamError> {
        self.pools
            .iter()
            .position(|s| s.pool.is_block(block))
            .ok_or_else(|| IpamError::NotABlock {
                network: self.network.clone(),
                block: *block,
                pools: self.pools_text(),
            })
    }

    /// Take `block` as this node's (claimed, or found claimed by this
    /// node). It must be exactly a block of one of the pools. Addresses of
    /// it already held (restored strays) count as held. Returns whether it
    /// was new.
    pub fn add_block(&mut self, block: IpNetwork) -> Result<bool, IpamError> {
        let i = self.locate_block(&block)?;
        let first = Span::of(&block).first;
        let state = &mut self.pools[i];
        if state.blocks.contains_key(&first) {
            return Ok(false);
        }
        state.blocks.insert(first, first);
        Ok(true)
    }

    /// Stop using `block` (before giving it back). Refused while any of its
    /// addresses is held. Returns whether it was owned.
    pub fn remove_block(&mut self, block: IpNetwork) -> Result<bool, IpamError> {
        let i = self.locate_block(&block)?;
        let state = &self.pools[i];
        let span = Span::of(&block);
        if !state.blocks.contains_key(&span.first) {
            return Ok(false);
        }
        let mut held = self.held_in(&state.pool, span);
        if let Some((_, example_owner)) = held.next() {
            return Err(IpamError::BlockInUse {
                network: self.network.clone(),
                block,
                held: 1 + held.count(),
                example_owner: example_owner.clone(),
            });
        }
        self.pools[i].blocks.remove(&span.first);
        Ok(true)
    }

    fn block_net(pool: &Pool, first: u128) -> Option<IpNetwork> {
        IpNetwork::new(to_ip(first, pool.v4()), pool.block_prefix).ok()
    }

    /// The blocks this node owns, by pool then address.
    pub fn blocks(&self) -> Vec<IpNetwork> {
        self.pools
            .iter()
            .flat_map(|s| s.blocks.keys().filter_map(|&f| Self::block_net(&s.pool, f)))
            .collect()
    }

    /// Owned blocks none of whose addresses is held: they could be given
    /// back. Giving back all of them defeats claiming ahead (see
    /// [`Ipam::surplus_blocks`]).
    pub fn empty_blocks(&self) -> Vec<IpNetwork> {
        self.pools
            .iter()
            .flat_map(|s| {
                s.blocks
                    .keys()
                    .filter(|&&f| self.held_in(&s.pool, s.pool.block_span(f)).next().is_none())
                    .filter_map(|&f| Self::block_net(&s.pool, f))
            })
            .collect()
    }

    /// Empty blocks that can be given back while every pool keeps at least
    /// its low-water mark of free addresses (so that giving them back does
    /// not make [`Ipam::wants_block`] claim one again at once). Highest
    /// blocks first.
    pub fn surplus_blocks(&self) -> Vec<IpNetwork> {
        let mut out = Vec::new();
        for s in &self.pools {
            let mut free = self.free(&s.pool.net);
            let low = Self::low_water(&s.pool);
            for &f in s.blocks.keys().rev() {
                let span = s.pool.block_span(f);
                if self.held_in(&s.pool, span).next().is_some() {
                    continue;
                }
                let usable = s.pool.usable(span);
                if free.saturating_sub(usable) >= low {
                    free -= usable;
                    out.extend(Self::block_net(&s.pool, f));
                }
            }
        }
        out
    }

    /// Free addresses in this node's blocks of `pool` (0 for an unknown
    /// pool), saturating at `u128::MAX`.
    pub fn free(&self, pool: &IpNetwork) -> u128 {
        let Some(s) = self.state(pool) else {
            return 0;
        };
        s.blocks.keys().fold(0u128, |sum, &f| {
            sum.saturating_add(self.block_free(&s.pool, s.pool.block_span(f)))
        })
    }

    /// The low-water mark of a pool: a quarter of a block, at least
    /// [`LOW_WATER_MIN`].
    fn low_water(pool: &Pool) -> u128 {
        (pool.block_size() / 4).max(LOW_WATER_MIN)
    }

    /// Whether the node should claim another block of `pool` now, before
    /// one is needed: its free addresses are below a quarter of a block or
    /// below [`LOW_WATER_MIN`] (so pods keep getting addresses while the
    /// apiserver is briefly unreachable). Always true for a pool with no
    /// block yet; false for an unknown pool. The caller stops trying when
    /// the pool is exhausted ([`crate::blocks::claim`] finds nothing).
    pub fn wants_block(&self, pool: &IpNetwork) -> bool {
        self.state(pool)
            .is_some_and(|s| self.free(pool) < Self::low_water(&s.pool))
    }

    /// Owned blocks to give back now: every empty block when no owner
    /// holds an address on this node (the node needs none of them; its
    /// next pod claims a block again), otherwise the empty blocks beyond
    /// the low-water mark ([`Ipam::surplus_blocks`]).
    pub fn releasable_blocks(&self) -> Vec<IpNetwork> {
        if self.owners.is_empty() {
            self.empty_blocks()
        } else {
            self.surplus_blocks()
        }
    }

    /// How many held addresses lie in `net` (any network: a block of the
    /// pools or not, such as a block of a pool's old size).
    pub fn held_within(&self, net: &IpNetwork) -> usize {
        let span = Span::of(net);
        let v4 = net.is_ipv4();
        self.holders
            .range(to_ip(span.first, v4)..=to_ip(span.last, v4))
            .count()
    }

    /// Whether the allocator's pools are `pools` (as in
    /// `NetworkConfig::pools`), in the same order.
    pub fn has_pools(&self, pools: &[(IpNetwork, u8)]) -> bool {
        self.pools.len() == pools.len()
            && self
                .pools
                .iter()
                .zip(pools)
                .all(|(s, &(net, size))| s.pool.net == net && s.pool.block_prefix == size)
    }

    /// The allocator of the same network after an edit of its pools: the
    /// owned blocks that are blocks of the new pools are kept (with their
    /// cursors), and every owner keeps its addresses (those outside the
    /// new pools' owned blocks become [strays](Ipam::strays): never handed
    /// out again while held). Returns it with the owned blocks that are no
    /// block of any new pool (a removed pool's, or cut at another size):
    /// still claimed, to give back once no address of theirs is held
    /// ([`Ipam::held_within`]).
    pub fn with_pools(
        &self,
        pools: &[(IpNetwork, u8)],
    ) -> Result<(Ipam, Vec<IpNetwork>), IpamError> {
        let mut next = Ipam::new(self.network.clone(), pools)?;
        let mut left_out = Vec::new();
        for s in &self.pools {
            for (&first, &cursor) in &s.blocks {
                let Some(block) = Self::block_net(&s.pool, first) else {
                    continue;
                };
                match next.locate_block(&block) {
                    Ok(i) => {
                        next.pools[i].blocks.insert(first, cursor);
                    }
                    Err(_) => left_out.push(block),
                }
            }
        }
        next.owners = self.owners.clone();
        next.holders = self.holders.clone();
        Ok((next, left_out))
    }
}
