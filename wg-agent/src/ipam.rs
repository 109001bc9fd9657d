//! The node's address allocator: pure bookkeeping, no I/O.
//!
//! A network has address pools ([`Pool`]: a CIDR and the prefix length of
//! its blocks). Nodes claim blocks of a pool through the apiserver (see
//! [`crate::blocks`]); an [`Ipam`] holds the blocks this node owns and
//! hands out addresses from them, one per pool and owner (an owner is a
//! pod interface, keyed by a string such as `POD_UID/ifname`).
//!
//! ```
//! use wg_agent::ipam::{Ipam, IpamError};
//!
//! let mut ipam = Ipam::new("pods", &[("10.77.0.0/16".parse()?, 26)])?;
//! // No block yet: the caller claims one (blocks::claim) and retries.
//! let Err(IpamError::NeedBlock { pool, .. }) = ipam.allocate("uid-1/wg0") else { panic!() };
//! assert_eq!(pool.to_string(), "10.77.0.0/16");
//! ipam.add_block("10.77.1.0/26".parse()?)?;
//! let addrs = ipam.allocate("uid-1/wg0")?;
//! assert_eq!(addrs[0].to_string(), "10.77.1.0/16"); // the pool's prefix length
//! assert_eq!(ipam.allocate("uid-1/wg0")?, addrs); // idempotent
//! assert_eq!(ipam.release("uid-1/wg0"), addrs);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Rules:
//!
//! - An address is returned with the **pool's** prefix length
//!   (`10.77.1.5/16`), so the pod routes the whole pool through its
//!   WireGuard interface.
//! - The pool's network address is never handed out, nor an IPv4 pool's
//!   broadcast address. Every other address of a block is usable: WireGuard
//!   is point-to-point, a block's own first and last addresses mean nothing
//!   on it. (An IPv4 /32 or /31 pool thus has no address to give, an IPv6
//!   /127 one.)
//! - Allocation is all-or-nothing across pools: when one pool has no free
//!   address in this node's blocks, nothing is recorded and
//!   [`IpamError::NeedBlock`] names that pool.
//! - Addresses are taken from the fullest block that still has room (so
//!   blocks empty out and can be given back), and within a block after the
//!   last one handed out (so a released address is not reused at once,
//!   while peers may still hold it).

use std::collections::BTreeMap;
use std::fmt;
use std::iter::FusedIterator;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// Fewest free addresses a pool should keep in this node's blocks before
/// the node claims another block (see [`Ipam::wants_block`]), unless a
/// quarter of a block is more.
pub const LOW_WATER_MIN: u128 = 8;

// ------------------------------------------------------------- addresses

fn max_bits(v4: bool) -> u8 {
    if v4 {
        32
    } else {
        128
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        // Values of an IPv4 pool never exceed u32::MAX (they are built from
        // IPv4 addresses and masks); truncation cannot happen.
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// The host bits of a `prefix`-long network of a family: `2^(bits-prefix) - 1`.
fn host_mask(prefix: u8, v4: bool) -> u128 {
    let host_bits = u32::from(max_bits(v4).saturating_sub(prefix));
    1u128
        .checked_shl(host_bits)
        .map_or(u128::MAX, |one| one - 1)
}

/// An address range, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    first: u128,
    last: u128,
}

impl Span {
    fn of(net: &IpNetwork) -> Span {
        let v4 = net.is_ipv4();
        let mask = host_mask(net.prefix(), v4);
        let first = to_u128(net.ip()) & !mask;
        Span {
            first,
            last: first | mask,
        }
    }

    fn contains(&self, v: u128) -> bool {
        self.first <= v && v <= self.last
    }

    /// Number of addresses, saturating at `u128::MAX` (a whole IPv6 /0).
    fn size(&self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }
}

/// Addresses as a comma-separated list, for error messages.
fn list(addrs: &[IpNetwork]) -> String {
    let v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    v.join(", ")
}

// ------------------------------------------------------------------ pools

/// Why a pool cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The pool is not written as a network (host bits are set).
    #[error("pool {pool} has host bits set (the network is {}/{})", .pool.network(), .pool.prefix())]
    HostBits {
        /// The pool as given.
        pool: IpNetwork,
    },
    /// The block prefix length is shorter than the pool's or longer than
    /// the family's.
    #[error("pool {pool}: block prefix length {block_prefix} is not between the pool's {} and {}", .pool.prefix(), max_bits(.pool.is_ipv4()))]
    BlockPrefix {
        /// The pool.
        pool: IpNetwork,
        /// The block prefix length given.
        block_prefix: u8,
    },
}

/// An address pool: a network and the prefix length of the blocks nodes
/// claim from it. Checked on construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool {
    net: IpNetwork,
    block_prefix: u8,
}

impl Pool {
    /// A pool of `net` cut into `/block_prefix` blocks (as
    /// `AddressPool::parse` returns them).
    pub fn new(net: IpNetwork, block_prefix: u8) -> Result<Pool, PoolError> {
        if net.ip() != net.network() {
            return Err(PoolError::HostBits { pool: net });
        }
        if block_prefix < net.prefix() || block_prefix > max_bits(net.is_ipv4()) {
            return Err(PoolError::BlockPrefix {
                pool: net,
                block_prefix,
            });
        }
        Ok(Pool { net, block_prefix })
    }

    /// The pool's network.
    pub fn net(&self) -> IpNetwork {
        self.net
    }

    /// The prefix length of its blocks.
    pub fn block_prefix(&self) -> u8 {
        self.block_prefix
    }

    fn v4(&self) -> bool {
        self.net.is_ipv4()
    }

    fn span(&self) -> Span {
        Span::of(&self.net)
    }

    /// Number of addresses in one block, saturating at `u128::MAX`.
    pub fn block_size(&self) -> u128 {
        host_mask(self.block_prefix, self.v4()).saturating_add(1)
    }

    /// Number of blocks in the pool; `None` when it does not fit in a
    /// `u128` (an IPv6 /0 pool of /128 blocks: 2^128).
    pub fn block_count(&self) -> Option<u128> {
        1u128.checked_shl(u32::from(self.block_prefix - self.net.prefix()))
    }

    /// Whether `addr` is the pool's network address or, for IPv4, its
    /// broadcast address: never handed out.
    pub fn is_reserved(&self, addr: IpAddr) -> bool {
        self.reserved(to_u128(addr)) && addr.is_ipv4() == self.v4()
    }

    fn reserved(&self, v: u128) -> bool {
        let span = self.span();
        v == span.first || (self.v4() && v == span.last)
    }

    /// Whether `addr` is in the pool.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.net.contains(addr)
    }

    /// The block of this pool holding `addr`, if the pool holds it.
    pub fn block_of(&self, addr: IpAddr) -> Option<IpNetwork> {
        if !self.contains(addr) {
            return None;
        }
        let first = to_u128(addr) & !host_mask(self.block_prefix, self.v4());
        IpNetwork::new(to_ip(first, self.v4()), self.block_prefix).ok()
    }

    /// Whether `block` is exactly one of the pool's blocks (inside it, of
    /// the block prefix length, no host bits).
    pub fn is_block(&self, block: &IpNetwork) -> bool {
        block.prefix() == self.block_prefix
            && block.ip() == block.network()
            && self.contains(block.ip())
    }

    /// The number of usable (not reserved) addresses in the block starting
    /// at `span.first`.
    fn usable(&self, span: Span) -> u128 {
        let pool = self.span();
        let mut reserved = 0;
        if span.contains(pool.first) {
            reserved += 1;
        }
        if self.v4() && pool.last != pool.first && span.contains(pool.last) {
            reserved += 1;
        }
        span.size().saturating_sub(reserved)
    }

    fn block_span(&self, first: u128) -> Span {
        Span {
            first,
            last: first | host_mask(self.block_prefix, self.v4()),
        }
    }

    /// Every block of the pool, once, starting at an offset derived from a
    /// stable hash of `node` and wrapping around, so that nodes rarely try
    /// the same blocks first. Lazy: an IPv6 pool of 2^64 blocks costs
    /// nothing until iterated.
    pub fn candidates(&self, node: &str) -> Candidates {
        let bits = u32::from(self.block_prefix - self.net.prefix());
        let index_mask = 1u128.checked_shl(bits).map_or(u128::MAX, |n| n - 1);
        Candidates {
            pool: *self,
            index_mask,
            next: u128::from(node_hash(node)) & index_mask,
            left: index_mask,
            done: false,
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (/{} blocks)", self.net, self.block_prefix)
    }
}

/// A stable 64-bit hash of a node name: FNV-1a, then the MurmurHash3
/// finalizer so that its low bits (what a small pool's offset keeps) are
/// well mixed. Never changes between versions or runs (unlike std's
/// `DefaultHasher`), so a node tries the same blocks first after a restart.
fn node_hash(node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The blocks of a pool in a node's order: see [`Pool::candidates`].
#[derive(Clone, Debug)]
pub struct Candidates {
    pool: Pool,
    /// Block indexes are `0..=index_mask`.
    index_mask: u128,
    /// The index of the next block.
    next: u128,
    /// How many blocks remain after `next`.
    left: u128,
    done: bool,
}

impl Iterator for Candidates {
    type Item = IpNetwork;

    fn next(&mut self) -> Option<IpNetwork> {
        if self.done {
            return None;
        }
        let index = self.next;
        if self.left == 0 {
            self.done = true;
        } else {
            self.left -= 1;
            self.next = index.wrapping_add(1) & self.index_mask;
        }
        let v4 = self.pool.v4();
        let shift = u32::from(max_bits(v4) - self.pool.block_prefix);
        let first = self.pool.span().first | index.checked_shl(shift).unwrap_or(0);
        IpNetwork::new(to_ip(first, v4), self.pool.block_prefix).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        match self.left.checked_add(1).map(usize::try_from) {
            Some(Ok(n)) => (n, Some(n)),
            _ => (usize::MAX, None),
        }
    }
}

impl FusedIterator for Candidates {}

impl Candidates {
    /// Skip the next `n` blocks (all that are left when fewer remain).
    fn skip_blocks(&mut self, n: u128) {
        if self.done || n == 0 {
            return;
        }
        if n > self.left {
            self.done = true;
        } else {
            self.left -= n;
            self.next = self.next.wrapping_add(n) & self.index_mask;
        }
    }

    /// The first and last address of the next block, if any.
    fn peek_span(&self) -> Option<Span> {
        if self.done {
            return None;
        }
        let shift = u32::from(max_bits(self.pool.v4()) - self.pool.block_prefix);
        let first = self.pool.span().first | self.next.checked_shl(shift).unwrap_or(0);
        Some(self.pool.block_span(first))
    }
}

/// Networks claimed by anyone (the blocks of a network that exist, of any
/// size, with any owner): a candidate block that shares one address with
/// one of them is taken, not only one of the same name. So blocks cut at
/// another size (a pool's block size from before an edit, or of an earlier
/// network of the same name) are never claimed over, which would give one
/// address to two pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Per family (IPv4, IPv6): disjoint, non-adjacent ranges, sorted.
    spans: [Vec<Span>; 2],
}

impl Taken {
    /// The networks as taken ranges.
    pub fn new<'a>(nets: impl IntoIterator<Item = &'a IpNetwork>) -> Taken {
        let mut spans: [Vec<Span>; 2] = [Vec::new(), Vec::new()];
        for net in nets {
            spans[usize::from(!net.is_ipv4())].push(Span::of(net));
        }
        for family in &mut spans {
            family.sort_by_key(|s| s.first);
            let mut merged: Vec<Span> = Vec::with_capacity(family.len());
            for s in family.drain(..) {
                match merged.last_mut() {
                    Some(m) if s.first <= m.last.saturating_add(1) => m.last = m.last.max(s.last),
                    _ => merged.push(s),
                }
            }
            *family = merged;
        }
        Taken { spans }
    }

    /// Whether `net` shares an address with a taken network.
    pub fn overlaps(&self, net: &IpNetwork) -> bool {
        self.overlap_end(net.is_ipv4(), Span::of(net)).is_some()
    }

    /// Whether nothing is taken.
    pub fn is_empty(&self) -> bool {
        self.spans.iter().all(Vec::is_empty)
    }

    /// When `span` overlaps a taken range: that range's last address.
    fn overlap_end(&self, v4: bool, span: Span) -> Option<u128> {
        let family = &self.spans[usize::from(!v4)];
        let i = family.partition_point(|t| t.first <= span.last);
        let t = family.get(i.checked_sub(1)?)?;
        (t.last >= span.first).then_some(t.last)
    }
}

/// The blocks of a pool in a node's order that overlap nothing taken: see
/// [`Pool::free_candidates`].
#[derive(Clone, Debug)]
pub struct FreeCandidates<'a> {
    inner: Candidates,
    taken: &'a Taken,
}

impl Iterator for FreeCandidates<'_> {
    type Item = IpNetwork;

    fn next(&mut self) -> Option<IpNetwork> {
        loop {
            let span = self.inner.peek_span()?;
            let Some(end) = self.taken.overlap_end(self.inner.pool.v4(), span) else {
                return self.inner.next();
            };
            // Every block up to the one holding `end` (or the pool's last
            // one) overlaps the same taken range: skip them at once, so a
            // taken range much larger than a block costs one step.
            let pool = self.inner.pool;
            let shift = u32::from(max_bits(pool.v4()) - pool.block_prefix);
            let last_index = if end >= pool.span().last {
                self.inner.index_mask
            } else {
                (end - pool.span().first).checked_shr(shift).unwrap_or(0)
            };
            self.inner
                .skip_blocks(last_index.saturating_sub(self.inner.next).saturating_add(1));
        }
    }
}

impl FusedIterator for FreeCandidates<'_> {}

impl Pool {
    /// [`Pool::candidates`] without the blocks that overlap anything in
    /// `taken`. Each step costs at most one skip per taken range, however
    /// many blocks the range covers.
    pub fn free_candidates<'a>(&self, node: &str, taken: &'a Taken) -> FreeCandidates<'a> {
        FreeCandidates {
            inner: self.candidates(node),
            taken,
        }
    }
}

// ----------------------------------------------------------------- errors

/// Why the allocator refused. Every variant names the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    /// A pool has no free address in this node's blocks: claim a block of
    /// it ([`crate::blocks::claim`]), [`Ipam::add_block`] it, and retry.
    /// Nothing was allocated for the owner.
    #[error("network {network}: no free address for {owner} in this node's blocks of pool {pool}: a block must be claimed")]
    NeedBlock {
        /// The network.
        network: String,
        /// The pool that needs a block.
        pool: IpNetwork,
        /// The owner that asked.
        owner: String,
    },
    /// A pool of the network is not usable.
    #[error("network {network}: {source}")]
    InvalidPool {
        /// The network.
        network: String,
        /// What is wrong with the pool.
        #[source]
        source: PoolError,
    },
    /// Two pools share addresses.
    #[error("network {network}: pools {first} and {second} overlap")]
    OverlappingPools {
        /// The network.
        network: String,
        /// One pool.
        first: IpNetwork,
        /// The other.
        second: IpNetwork,
    },
    /// Not one of the blocks of the network's pools.
    #[error("network {network}: {block} is not a block of any of its pools ({pools})")]
    NotABlock {
        /// The network.
        network: String,
        /// What was given as a block.
        block: IpNetwork,
        /// The pools, for the message.
        pools: String,
    },
    /// A block cannot be removed while addresses of it are held.
    #[error("network {network}: block {block} still holds {held} address(es) (such as {example_owner}'s)")]
    BlockInUse {
        /// The network.
        network: String,
        /// The block.
        block: IpNetwork,
        /// How many addresses of it are held.
        held: usize,
        /// One owner holding one of them.
        example_owner: String,
    },
    /// A restored address is held by another owner.
    #[error("network {network}: cannot restore {address} for {owner}: {holder} holds it")]
    AddressTaken {
        /// The network.
        network: String,
        /// The owner being restored.
        owner: String,
        /// The address.
        address: IpNetwork,
        /// Who holds it.
        holder: String,
    },
    /// A restored owner already holds other addresses.
    #[error("network {network}: cannot restore [{}] for {owner}: it holds [{}]", list(.given), list(.held))]
    OwnerMismatch {
        /// The network.
        network: String,
        /// The owner.
        owner: String,
        /// What it holds.
        held: Vec<IpNetwork>,
        /// What was to be restored.
        given: Vec<IpNetwork>,
    },
}

// -------------------------------------------------------------- allocator

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
/// documentation](self).
#[derive(Clone, Debug)]
pub struct Ipam {
    network: String,
    pools: Vec<PoolState>,
    /// Owner -> its addresses, in pool order (as allocated or restored).
    owners: BTreeMap<String, Vec<IpNetwork>>,
    /// Every held address -> its owner. One source of truth for what is
    /// taken: no address can be in it twice.
    holders: BTreeMap<IpAddr, String>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    fn n(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pools_are_checked() {
        assert!(matches!(
            Pool::new(n("10.0.0.1/24"), 26),
            Err(PoolError::HostBits { .. })
        ));
        assert!(matches!(
            Pool::new(n("10.0.0.0/24"), 23),
            Err(PoolError::BlockPrefix { .. })
        ));
        assert!(matches!(
            Pool::new(n("10.0.0.0/24"), 33),
            Err(PoolError::BlockPrefix { .. })
        ));
        assert!(Pool::new(n("fd00::/64"), 128).is_ok());
        let e = Ipam::new("pods", &[(n("10.0.0.0/8"), 24), (n("10.1.0.0/16"), 24)]).unwrap_err();
        assert!(matches!(e, IpamError::OverlappingPools { .. }));
        assert!(e.to_string().contains("network pods"), "{e}");
        let e = Ipam::new("pods", &[(n("10.0.0.0/16"), 8)]).unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/16"), "{e}");
        // Different families never overlap.
        assert!(Ipam::new("pods", &[(n("0.0.0.0/0"), 24), (n("::/0"), 64)]).is_ok());
    }

    #[test]
    fn pool_arithmetic() {
        let p = Pool::new(n("10.77.0.0/16"), 26).unwrap();
        assert_eq!(p.block_size(), 64);
        assert_eq!(p.block_count(), Some(1024));
        assert_eq!(p.block_of(ip("10.77.1.70")), Some(n("10.77.1.64/26")));
        assert_eq!(p.block_of(ip("10.78.0.1")), None);
        assert!(p.is_block(&n("10.77.1.64/26")));
        assert!(!p.is_block(&n("10.77.1.64/25")));
        assert!(!p.is_block(&n("10.78.1.64/26")));
        assert!(p.is_reserved(ip("10.77.0.0")));
        assert!(p.is_reserved(ip("10.77.255.255")));
        assert!(!p.is_reserved(ip("10.77.1.0")));
        let p6 = Pool::new(n("fd00::/64"), 122).unwrap();
        assert!(p6.is_reserved(ip("fd00::")));
        assert!(!p6.is_reserved(ip("fd00::ffff:ffff:ffff:ffff")));
        assert_eq!(p6.block_count(), Some(1 << 58));
        let all = Pool::new(n("::/0"), 128).unwrap();
        assert_eq!(all.block_count(), None);
        assert_eq!(all.block_size(), 1);
        let whole = Pool::new(n("::/0"), 0).unwrap();
        assert_eq!(whole.block_size(), u128::MAX);
    }

    #[test]
    fn allocates_with_the_pool_prefix_and_skips_reserved() {
        let mut ipam = Ipam::new("pods", &[(n("10.77.0.0/16"), 26)]).unwrap();
        ipam.add_block(n("10.77.0.0/26")).unwrap();
        let a = ipam.allocate("a").unwrap();
        // 10.77.0.0 is the pool's network address.
        assert_eq!(a, vec![n("10.77.0.1/16")]);
        // Block boundaries are usable.
        let mut ipam = Ipam::new("pods", &[(n("10.77.0.0/16"), 26)]).unwrap();
        ipam.add_block(n("10.77.255.192/26")).unwrap();
        let got: Vec<IpNetwork> = (0..63)
            .map(|i| ipam.allocate(&format!("o{i}")).unwrap()[0])
            .collect();
        assert_eq!(got[0], n("10.77.255.192/16"));
        assert_eq!(got[62], n("10.77.255.254/16"));
        // The broadcast address is not handed out: the block is full.
        assert!(matches!(
            ipam.allocate("one-more"),
            Err(IpamError::NeedBlock { .. })
        ));
        assert_eq!(ipam.free(&n("10.77.0.0/16")), 0);
    }

    #[test]
    fn tiny_pools() {
        // IPv4 /32 and /31: no usable address (network and broadcast).
        // IPv6 /128: none, /127: one (IPv6 has no broadcast).
        for (pool, usable) in [
            ("10.0.0.0/32", 0),
            ("10.0.0.0/31", 0),
            ("fd00::/128", 0),
            ("fd00::/127", 1),
        ] {
            let pool = n(pool);
            let mut ipam = Ipam::new("t", &[(pool, pool.prefix())]).unwrap();
            ipam.add_block(pool).unwrap();
            assert_eq!(ipam.free(&pool), usable, "{pool}");
            for i in 0..usable {
                let a = ipam.allocate(&i.to_string()).unwrap();
                assert!(!Pool::new(pool, pool.prefix())
                    .unwrap()
                    .is_reserved(a[0].ip()));
            }
            assert!(ipam.allocate("x").is_err());
        }
    }

    #[test]
    fn idempotent_release_and_reuse_order() {
        let pool = n("fd00:10::/64");
        let mut ipam = Ipam::new("pods", &[(pool, 126)]).unwrap();
        ipam.add_block(n("fd00:10::4/126")).unwrap();
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a, vec![n("fd00:10::4/64")]);
        assert_eq!(ipam.allocate("a").unwrap(), a);
        assert_eq!(ipam.addresses("a"), Some(&a[..]));
        let b = ipam.allocate("b").unwrap();
        assert_eq!(ipam.release("a"), a);
        assert_eq!(ipam.release("a"), vec![]);
        // Not reused at once: the cursor moves on.
        let c = ipam.allocate("c").unwrap();
        assert_ne!(c, a);
        assert_ne!(c, b);
        let d = ipam.allocate("d").unwrap();
        // Then wraps to the freed one.
        let e = ipam.allocate("e").unwrap();
        assert_eq!(e, a);
        assert!(ipam.allocate("f").is_err());
        let _ = d;
    }

    #[test]
    fn all_or_nothing_across_pools() {
        let v4 = n("10.77.0.0/16");
        let v6 = n("fd00:10::/64");
        let mut ipam = Ipam::new("pods", &[(v4, 26), (v6, 122)]).unwrap();
        ipam.add_block(n("10.77.1.0/26")).unwrap();
        let e = ipam.allocate("uid/wg0").unwrap_err();
        assert_eq!(
            e,
            IpamError::NeedBlock {
                network: "pods".into(),
                pool: v6,
                owner: "uid/wg0".into()
            }
        );
        assert!(e.to_string().contains("uid/wg0") && e.to_string().contains("fd00:10::/64"));
        assert_eq!(ipam.addresses("uid/wg0"), None);
        assert_eq!(ipam.free(&v4), 64);
        ipam.add_block(n("fd00:10::40/122")).unwrap();
        let a = ipam.allocate("uid/wg0").unwrap();
        assert_eq!(a, vec![n("10.77.1.0/16"), n("fd00:10::40/64")]);
    }

    #[test]
    fn fullest_block_first() {
        let pool = n("10.0.0.0/24");
        let mut ipam = Ipam::new("p", &[(pool, 30)]).unwrap();
        ipam.add_block(n("10.0.0.4/30")).unwrap();
        ipam.add_block(n("10.0.0.8/30")).unwrap();
        ipam.restore("r", &[n("10.0.0.9/24")]).unwrap();
        // 10.0.0.8/30 is fuller: use it until it is full.
        for _ in 0..3 {
            let a = ipam
                .allocate(&format!("{}", ipam.owners().count()))
                .unwrap();
            assert!(Pool::new(pool, 30).unwrap().block_of(a[0].ip()) == Some(n("10.0.0.8/30")));
        }
        let a = ipam.allocate("next").unwrap();
        assert_eq!(a, vec![n("10.0.0.4/24")]);
    }

    #[test]
    fn blocks_add_remove_empty_surplus() {
        let pool = n("10.0.0.0/16");
        let mut ipam = Ipam::new("p", &[(pool, 24)]).unwrap();
        assert!(ipam.wants_block(&pool));
        assert!(!ipam.wants_block(&n("10.1.0.0/16")));
        assert!(ipam.add_block(n("10.0.1.0/24")).unwrap());
        assert!(!ipam.add_block(n("10.0.1.0/24")).unwrap());
        for bad in ["10.0.1.0/25", "10.1.1.0/24", "10.0.1.1/24", "fd00::/24"] {
            let e = ipam.add_block(n(bad)).unwrap_err();
            assert!(matches!(e, IpamError::NotABlock { .. }), "{bad}: {e}");
        }
        assert!(!ipam.wants_block(&pool));
        let a = ipam.allocate("a").unwrap();
        let e = ipam.remove_block(n("10.0.1.0/24")).unwrap_err();
        assert!(
            e.to_string().contains("10.0.1.0/24") && e.to_string().contains("a's"),
            "{e}"
        );
        assert_eq!(ipam.empty_blocks(), vec![]);
        ipam.add_block(n("10.0.2.0/24")).unwrap();
        ipam.add_block(n("10.0.3.0/24")).unwrap();
        assert_eq!(
            ipam.empty_blocks(),
            vec![n("10.0.2.0/24"), n("10.0.3.0/24")]
        );
        // 255 + 256 + 256 free, low water 64: both empty blocks can go.
        assert_eq!(
            ipam.surplus_blocks(),
            vec![n("10.0.3.0/24"), n("10.0.2.0/24")]
        );
        // Fill the first block down to 10 free: one empty block must stay.
        for i in 0..245 {
            ipam.allocate(&format!("f{i}")).unwrap();
        }
        assert_eq!(ipam.free(&pool), 10 + 512);
        assert_eq!(ipam.surplus_blocks(), vec![n("10.0.3.0/24")]);
        assert!(ipam.remove_block(n("10.0.3.0/24")).unwrap());
        assert!(!ipam.remove_block(n("10.0.3.0/24")).unwrap());
        assert_eq!(ipam.release("a"), a);
        assert_eq!(ipam.blocks(), vec![n("10.0.1.0/24"), n("10.0.2.0/24")]);
    }

    #[test]
    fn wants_block_low_water() {
        let pool = n("10.0.0.0/16");
        let mut ipam = Ipam::new("p", &[(pool, 26)]).unwrap();
        ipam.add_block(n("10.0.1.0/26")).unwrap();
        // 64 per block: low water is 16.
        for i in 0..48 {
            assert!(!ipam.wants_block(&pool), "after {i}");
            ipam.allocate(&i.to_string()).unwrap();
        }
        assert_eq!(ipam.free(&pool), 16);
        assert!(!ipam.wants_block(&pool));
        ipam.allocate("48").unwrap();
        assert!(ipam.wants_block(&pool));
        // Small blocks: at least 8 free.
        let mut ipam = Ipam::new("p", &[(pool, 29)]).unwrap();
        ipam.add_block(n("10.0.1.8/29")).unwrap();
        assert!(!ipam.wants_block(&pool));
        ipam.allocate("x").unwrap();
        assert!(ipam.wants_block(&pool));
    }

    #[test]
    fn restore_and_strays() {
        let v4 = n("10.77.0.0/16");
        let mut ipam = Ipam::new("pods", &[(v4, 26)]).unwrap();
        ipam.add_block(n("10.77.1.0/26")).unwrap();
        assert_eq!(ipam.restore("a", &[n("10.77.1.5/16")]).unwrap(), vec![]);
        // Idempotent.
        assert_eq!(ipam.restore("a", &[n("10.77.1.5/16")]).unwrap(), vec![]);
        assert_eq!(ipam.allocate("a").unwrap(), vec![n("10.77.1.5/16")]);
        // A different set for a known owner: refused.
        let e = ipam.restore("a", &[n("10.77.1.6/16")]).unwrap_err();
        assert!(matches!(e, IpamError::OwnerMismatch { .. }));
        assert!(e.to_string().contains("10.77.1.6/16"), "{e}");
        // Taken by another owner: refused, nothing recorded.
        let e = ipam
            .restore("b", &[n("10.77.1.7/16"), n("10.77.1.5/16")])
            .unwrap_err();
        assert!(matches!(e, IpamError::AddressTaken { ref holder, .. } if holder == "a"));
        assert_eq!(ipam.addresses("b"), None);
        // Outside owned blocks: recorded and reported.
        let strays = ipam
            .restore("c", &[n("10.77.2.9/16"), n("192.168.0.1/24")])
            .unwrap();
        assert_eq!(
            strays,
            vec![
                Stray {
                    owner: "c".into(),
                    address: n("10.77.2.9/16"),
                    block: Some(n("10.77.2.0/26"))
                },
                Stray {
                    owner: "c".into(),
                    address: n("192.168.0.1/24"),
                    block: None
                },
            ]
        );
        assert_eq!(ipam.strays(), strays);
        // Claiming the block makes it a held address of an owned block:
        // never handed out.
        ipam.add_block(n("10.77.2.0/26")).unwrap();
        assert_eq!(ipam.strays().len(), 1);
        assert_eq!(ipam.free(&v4), 63 + 63);
        ipam.remove_block(n("10.77.1.0/26")).unwrap_err();
        for i in 0..126 {
            let a = ipam.allocate(&format!("n{i}")).unwrap();
            assert_ne!(a[0].ip(), ip("10.77.2.9"));
        }
        assert!(ipam.allocate("full").is_err());
        // Releasing the owner frees it.
        assert_eq!(ipam.release("c").len(), 2);
        assert_eq!(ipam.allocate("full").unwrap(), vec![n("10.77.2.9/16")]);
        assert_eq!(ipam.strays(), vec![]);
        assert_eq!(ipam.restore("empty", &[]).unwrap(), vec![]);
        assert_eq!(ipam.addresses("empty"), None);
    }

    #[test]
    fn retain_reclaims_leaks() {
        let pool = n("10.0.0.0/24");
        let mut ipam = Ipam::new("p", &[(pool, 26)]).unwrap();
        ipam.add_block(n("10.0.0.0/26")).unwrap();
        let a = ipam.allocate("live").unwrap();
        let b = ipam.allocate("gone").unwrap();
        let dead = ipam.retain(|o| o == "live");
        assert_eq!(dead, vec![("gone".to_string(), b)]);
        assert_eq!(ipam.owners().collect::<Vec<_>>(), vec!["live"]);
        assert_eq!(ipam.addresses("live"), Some(&a[..]));
    }

    #[test]
    fn candidates_cover_small_pools() {
        for (pool, prefix, count) in [
            ("10.0.0.0/24", 26, 4u128),
            ("10.0.0.0/16", 24, 256),
            ("10.0.0.0/24", 24, 1),
            ("fd00::/120", 124, 16),
            ("0.0.0.0/0", 4, 16),
        ] {
            let p = Pool::new(n(pool), prefix).unwrap();
            for node in ["node-1", "node-2", ""] {
                let c: Vec<IpNetwork> = p.candidates(node).collect();
                assert_eq!(c.len() as u128, count, "{pool}");
                let set: BTreeSet<IpNetwork> = c.iter().copied().collect();
                assert_eq!(set.len(), c.len(), "{pool}: a block twice");
                assert!(c.iter().all(|b| p.is_block(b)));
                // Consecutive, wrapping.
                let first = p.candidates(node).next().unwrap();
                assert_eq!(c[0], first);
            }
        }
    }

    #[test]
    fn candidates_are_lazy_for_huge_pools() {
        let p = Pool::new(n("fd00::/48"), 122).unwrap();
        let c: Vec<IpNetwork> = p.candidates("node-1").take(3).collect();
        assert_eq!(c.len(), 3);
        assert!(c.iter().all(|b| p.is_block(b)));
        let all = Pool::new(n("::/0"), 128).unwrap();
        let mut it = all.candidates("node-1");
        assert_eq!(it.size_hint(), (usize::MAX, None));
        let a = it.next().unwrap();
        let b = it.next().unwrap();
        assert_eq!(to_u128(b.ip()), to_u128(a.ip()).wrapping_add(1));
        assert_eq!(a.prefix(), 128);
        let small = Pool::new(n("10.0.0.0/24"), 26).unwrap();
        assert_eq!(small.candidates("x").size_hint(), (4, Some(4)));
    }

    #[test]
    fn candidates_start_differently_per_node() {
        let p = Pool::new(n("10.0.0.0/16"), 26).unwrap();
        let starts: HashSet<IpNetwork> = (0..100)
            .map(|i| p.candidates(&format!("node-{i}")).next().unwrap())
            .collect();
        // 100 nodes over 1024 blocks: a few birthday collisions at most.
        assert!(starts.len() >= 90, "{}", starts.len());
        // Stable across runs and versions.
        assert_eq!(node_hash(""), node_hash(""));
        assert_eq!(node_hash("node-1"), 0x91dd_3f4c_04e1_eb05);
        assert_ne!(node_hash("node-1"), node_hash("node-2"));
    }

    #[test]
    fn taken_counts_any_overlap() {
        let taken = Taken::new(&[n("10.0.1.0/24"), n("10.0.2.64/26"), n("fd00::/120")]);
        assert!(taken.overlaps(&n("10.0.1.64/26")), "inside");
        assert!(taken.overlaps(&n("10.0.0.0/16")), "around");
        assert!(taken.overlaps(&n("10.0.2.64/26")), "the same");
        assert!(!taken.overlaps(&n("10.0.2.0/26")));
        assert!(!taken.overlaps(&n("10.0.3.0/24")));
        assert!(!taken.overlaps(&n("::a00:100/120")), "another family");
        assert!(taken.overlaps(&n("fd00::80/121")));
        assert!(Taken::new(&[]).is_empty());
        assert!(!taken.is_empty());
    }

    #[test]
    fn free_candidates_skip_blocks_of_any_size() {
        // Blocks of /26 now; another node holds a /24 (cut when the block
        // size was 24) and a /28 (cut at 28): no /26 overlapping them is
        // a candidate, so no address can be given twice.
        let p = Pool::new(n("10.0.0.0/22"), 26).unwrap();
        let taken = Taken::new(&[n("10.0.1.0/24"), n("10.0.2.16/28")]);
        for node in ["node-1", "node-2", "node-3"] {
            let free: Vec<IpNetwork> = p.free_candidates(node, &taken).collect();
            let all: Vec<IpNetwork> = p.candidates(node).filter(|b| !taken.overlaps(b)).collect();
            assert_eq!(free, all, "{node}: in the node's order");
            assert_eq!(free.len(), 16 - 4 - 1, "{node}: {free:?}");
        }
        // Everything taken (one range around the pool): nothing, at once.
        let huge = Pool::new(n("fd00::/48"), 122).unwrap();
        let all = Taken::new(&[n("fd00::/32")]);
        assert_eq!(huge.free_candidates("node-1", &all).next(), None);
        // A taken /64 in a /48 pool of /122 blocks (2^58 of them inside
        // it) is passed in one step, whatever the node's first block.
        let half = Taken::new(&[n("fd00:0:0:1::/64"), n("fd00::/64")]);
        let first = huge.free_candidates("node-1", &half).next().unwrap();
        assert!(!half.overlaps(&first) && huge.is_block(&first), "{first}");
    }

    #[test]
    fn follows_pool_edits() {
        let mut ipam = Ipam::new("pods", &[(n("10.0.0.0/24"), 26)]).unwrap();
        ipam.add_block(n("10.0.0.64/26")).unwrap();
        ipam.add_block(n("10.0.0.128/26")).unwrap();
        let a = ipam.allocate("a").unwrap();
        assert!(ipam.has_pools(&[(n("10.0.0.0/24"), 26)]));
        // A pool added: blocks, cursors and addresses kept; the new pool
        // needs a block before anyone gets an address of both.
        let pools = [(n("10.0.0.0/24"), 26), (n("10.1.0.0/24"), 28)];
        assert!(!ipam.has_pools(&pools));
        let (mut next, left_out) = ipam.with_pools(&pools).unwrap();
        assert!(left_out.is_empty());
        assert!(next.has_pools(&pools));
        assert_eq!(next.addresses("a"), Some(&a[..]));
        assert_eq!(next.blocks(), ipam.blocks());
        assert!(
            matches!(next.allocate("b"), Err(IpamError::NeedBlock { pool, .. }) if pool == n("10.1.0.0/24"))
        );
        next.add_block(n("10.1.0.16/28")).unwrap();
        let b = next.allocate("b").unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(
            b[0].ip(),
            ip("10.0.0.65"),
            "after a's address, in the fullest block"
        );
        assert_eq!(b[1], n("10.1.0.16/24"));
        // The block size changed (an edit the apiserver refuses, or a
        // network deleted and made again): the old blocks are left out,
        // their held addresses stay held (strays) and are never given.
        let (mut cut, left_out) = next.with_pools(&[(n("10.0.0.0/24"), 25)]).unwrap();
        assert_eq!(left_out.len(), 3, "{left_out:?}");
        assert!(cut.blocks().is_empty());
        assert_eq!(cut.held_within(&n("10.0.0.64/26")), 2);
        assert_eq!(cut.held_within(&n("10.0.0.128/26")), 0);
        assert_eq!(cut.held_within(&n("10.0.0.0/24")), 2);
        assert_eq!(cut.strays().len(), 3);
        cut.add_block(n("10.0.0.0/25")).unwrap();
        let c = cut.allocate("c").unwrap();
        assert!(!a.iter().chain(&b).any(|x| x.ip() == c[0].ip()), "{c:?}");
        assert!(Ipam::new("pods", &[])
            .unwrap()
            .with_pools(&[(n("10.0.0.1/24"), 26)])
            .is_err());
    }

    #[test]
    fn releasable_blocks_when_empty() {
        let mut ipam = Ipam::new("pods", &[(n("10.0.0.0/24"), 28)]).unwrap();
        for b in ["10.0.0.16/28", "10.0.0.32/28", "10.0.0.48/28"] {
            ipam.add_block(n(b)).unwrap();
        }
        // No pod on the node: every block goes back.
        assert_eq!(ipam.releasable_blocks().len(), 3);
        // Pods: the empty blocks beyond the low-water mark (8 free): a's
        // block keeps 15.
        let a = ipam.allocate("a").unwrap();
        let r = ipam.releasable_blocks();
        assert_eq!(r, ipam.surplus_blocks());
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r.iter().all(|b| !b.contains(a[0].ip())));
        ipam.release("a");
        assert_eq!(ipam.releasable_blocks().len(), 3);
    }

    proptest! {
        /// Skipping taken ranges in steps gives exactly the candidates
        /// that overlap nothing taken, in the same order.
        #[test]
        fn free_candidates_are_the_untaken_candidates(
            node in "[a-z0-9-]{1,12}",
            block_prefix in 24u8..=30,
            taken in proptest::collection::vec((0u32..1024, 20u8..=32), 0..12),
        ) {
            let pool = Pool::new(n("10.0.0.0/22"), block_prefix).unwrap();
            let nets: Vec<IpNetwork> = taken
                .iter()
                .map(|&(off, len)| {
                    let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + off * 4);
                    let net = IpNetwork::new(IpAddr::V4(a), len).unwrap();
                    IpNetwork::new(net.network(), len).unwrap()
                })
                .collect();
            let taken = Taken::new(&nets);
            let fast: Vec<IpNetwork> = pool.free_candidates(&node, &taken).collect();
            let slow: Vec<IpNetwork> = pool
                .candidates(&node)
                .filter(|b| nets.iter().all(|t| !(t.contains(b.network()) || b.contains(t.network()))))
                .collect();
            prop_assert_eq!(fast, slow);
        }
    }

    // ------------------------------------------------------- properties

    #[derive(Debug, Clone)]
    enum Op {
        Allocate(u8),
        Release(u8),
        Retain(u8),
        AddBlock(usize, u8),
        RemoveBlock(usize, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u8>().prop_map(|o| Op::Allocate(o % 24)),
            2 => any::<u8>().prop_map(|o| Op::Release(o % 24)),
            1 => any::<u8>().prop_map(Op::Retain),
            2 => (0..2usize, any::<u8>()).prop_map(|(p, b)| Op::AddBlock(p, b)),
            1 => (0..2usize, any::<u8>()).prop_map(|(p, b)| Op::RemoveBlock(p, b)),
        ]
    }

    /// Two small pools (v4 /28 of /30 blocks, v6 /124 of /126 blocks: 4
    /// blocks of 4 each) so that exhaustion and reuse happen often.
    fn small_pools() -> Vec<(IpNetwork, u8)> {
        vec![(n("10.0.0.0/28"), 30), (n("fd00::/124"), 126)]
    }

    fn check_invariants(ipam: &Ipam) -> Result<(), TestCaseError> {
        let mut seen = HashSet::new();
        let pools: Vec<Pool> = ipam.pools().copied().collect();
        for owner in ipam.owners() {
            let addrs = ipam.addresses(owner).unwrap();
            prop_assert_eq!(addrs.len(), pools.len());
            for (a, p) in addrs.iter().zip(&pools) {
                prop_assert!(seen.insert(a.ip()), "{} given twice", a);
                prop_assert!(p.contains(a.ip()));
                prop_assert_eq!(a.prefix(), p.net().prefix());
                prop_assert!(!p.is_reserved(a.ip()), "{} reserved", a);
                prop_assert!(ipam.blocks().contains(&p.block_of(a.ip()).unwrap()));
            }
        }
        prop_assert_eq!(seen.len(), ipam.holders.len());
        for p in &pools {
            let owned: u128 = ipam
                .blocks()
                .iter()
                .filter(|b| p.is_block(b))
                .map(|b| p.usable(Span::of(b)))
                .sum();
            let held = seen.iter().filter(|a| p.contains(**a)).count() as u128;
            prop_assert_eq!(ipam.free(&p.net()), owned - held);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn never_gives_an_address_twice(ops in proptest::collection::vec(op(), 1..200)) {
            let mut ipam = Ipam::new("pods", &small_pools()).unwrap();
            let pools: Vec<Pool> = ipam.pools().copied().collect();
            for op in ops {
                match op {
                    Op::Allocate(o) => {
                        let owner = format!("o{o}");
                        let before = ipam.addresses(&owner).map(<[IpNetwork]>::to_vec);
                        let holders = ipam.holders.len();
                        match ipam.allocate(&owner) {
                            Ok(a) => {
                                if let Some(before) = before {
                                    prop_assert_eq!(&a, &before, "not idempotent");
                                }
                                prop_assert_eq!(ipam.allocate(&owner).unwrap(), a);
                            }
                            Err(IpamError::NeedBlock { pool, .. }) => {
                                prop_assert!(before.is_none());
                                prop_assert_eq!(ipam.holders.len(), holders, "partial allocation");
                                prop_assert_eq!(ipam.addresses(&owner), None);
                                prop_assert_eq!(ipam.free(&pool), 0);
                            }
                            Err(e) => prop_assert!(false, "{}", e),
                        }
                    }
                    Op::Release(o) => {
                        let owner = format!("o{o}");
                        let before = ipam.addresses(&owner).map(<[IpNetwork]>::to_vec);
                        let free: Vec<u128> = pools.iter().map(|p| ipam.free(&p.net())).collect();
                        let released = ipam.release(&owner);
                        prop_assert_eq!(Some(released.clone()).filter(|r| !r.is_empty()), before);
                        for (p, f) in pools.iter().zip(free) {
                            let n = released.iter().filter(|a| p.contains(a.ip())).count() as u128;
                            prop_assert_eq!(ipam.free(&p.net()), f + n, "release frees");
                        }
                    }
                    Op::Retain(mask) => {
                        let live = |o: &str| {
                            o.trim_start_matches('o').parse::<u8>().map_or(true, |i| (mask >> (i % 8)) & 1 == 1)
                        };
                        let expected: Vec<String> = ipam.owners().filter(|o| !live(o)).map(String::from).collect();
                        let dead = ipam.retain(live);
                        prop_assert_eq!(dead.into_iter().map(|(o, _)| o).collect::<Vec<_>>(), expected);
                        prop_assert!(ipam.owners().all(live));
                    }
                    Op::AddBlock(p, b) => {
                        let block = pools[p].candidates("").nth(usize::from(b % 4)).unwrap();
                        ipam.add_block(block).unwrap();
                    }
                    Op::RemoveBlock(p, b) => {
                        let block = pools[p].candidates("").nth(usize::from(b % 4)).unwrap();
                        let held = ipam.holders.keys().any(|a| block.contains(*a));
                        match ipam.remove_block(block) {
                            Ok(_) => prop_assert!(!held),
                            Err(IpamError::BlockInUse { .. }) => prop_assert!(held),
                            Err(e) => prop_assert!(false, "{}", e),
                        }
                    }
                }
                check_invariants(&ipam)?;
            }
        }

        #[test]
        fn candidates_cover_every_block_once(
            v4 in any::<bool>(),
            base in any::<u128>(),
            prefix_frac in 0u8..=100,
            extra in 0u8..=10,
            node in "[a-z0-9-]{0,20}",
        ) {
            let bits = if v4 { 32 } else { 128 };
            let prefix = (u16::from(prefix_frac) * (bits - 10) / 100) as u8;
            let base = if v4 { base & u128::from(u32::MAX) } else { base };
            let net = IpNetwork::new(to_ip(base & !host_mask(prefix, v4), v4), prefix).unwrap();
            let p = Pool::new(net, prefix + extra).unwrap();
            let all: Vec<IpNetwork> = p.candidates(&node).collect();
            prop_assert_eq!(all.len() as u128, p.block_count().unwrap());
            let set: BTreeSet<IpNetwork> = all.iter().copied().collect();
            prop_assert_eq!(set.len(), all.len());
            prop_assert!(all.iter().all(|b| p.is_block(b)));
        }

        #[test]
        fn never_hands_out_network_or_broadcast(prefix in 24u8..=32, block in 0u8..=4) {
            let pool = IpNetwork::new(ip("10.1.0.0"), prefix).unwrap();
            let block_prefix = (prefix + block).min(32);
            let p = Pool::new(pool, block_prefix).unwrap();
            let mut ipam = Ipam::new("p", &[(pool, block_prefix)]).unwrap();
            for b in p.candidates("n").take(64) {
                ipam.add_block(b).unwrap();
            }
            let mut i = 0;
            while let Ok(a) = ipam.allocate(&i.to_string()) {
                prop_assert_ne!(a[0].ip(), pool.network());
                prop_assert_ne!(a[0].ip(), pool.broadcast());
                i += 1;
            }
        }
    }

    /// The module's rule: a released address is not handed out again at
    /// once (other nodes may still route it to the old pod's key); the
    /// next allocation takes the address after it, and the freed one comes
    /// back only when the cursor wraps round the block.
    #[test]
    fn a_released_address_is_not_reused_at_once() {
        let mut ipam = Ipam::new("pods", &[(n("10.77.0.0/16"), 29)]).unwrap();
        ipam.add_block(n("10.77.0.8/29")).unwrap();
        let a = ipam.allocate("a").unwrap();
        assert_eq!(a, vec![n("10.77.0.8/16")]);
        assert_eq!(ipam.release("a"), a);
        let b = ipam.allocate("b").unwrap();
        assert_eq!(
            b,
            vec![n("10.77.0.9/16")],
            "the next one, not the freed one"
        );
        let rest: Vec<IpNetwork> = (0..6)
            .map(|i| ipam.allocate(&format!("o{i}")).unwrap()[0])
            .collect();
        assert_eq!(rest.last(), Some(&n("10.77.0.15/16")));
        // Only now, the block's last address taken, the cursor wraps.
        assert_eq!(ipam.allocate("c").unwrap(), a);
    }

    /// Two pools of one family overlap when either contains the other,
    /// whichever comes first in the list; touching ones do not.
    #[test]
    fn overlapping_pools_are_refused_in_either_order() {
        for pools in [
            [(n("10.0.0.0/8"), 24), (n("10.1.0.0/16"), 24)],
            [(n("10.1.0.0/16"), 24), (n("10.0.0.0/8"), 24)],
            [(n("10.1.0.0/16"), 24), (n("10.1.0.0/16"), 26)],
            [(n("fd00:1::/64"), 120), (n("fd00::/16"), 120)],
        ] {
            let e = Ipam::new("pods", &pools).unwrap_err();
            assert!(
                matches!(&e, IpamError::OverlappingPools { first, second, .. }
                    if *first == pools[0].0 && *second == pools[1].0),
                "{pools:?}: {e}"
            );
        }
        assert!(Ipam::new("pods", &[(n("10.0.0.0/16"), 24), (n("10.1.0.0/16"), 24)]).is_ok());
        assert!(Ipam::new("pods", &[(n("10.1.0.0/16"), 24), (n("10.0.0.0/16"), 24)]).is_ok());
    }

    /// What the allocator says about itself and in its errors names the
    /// right pool: its accessors, a pool's text, the pools an error lists,
    /// a stray's block in the second pool, a block's holders counted.
    #[test]
    fn accessors_and_errors_name_the_right_pool() {
        let (v4, v6) = (n("10.77.0.0/16"), n("fd00:77::/64"));
        let mut ipam = Ipam::new("pods", &[(v4, 26), (v6, 122)]).unwrap();
        assert_eq!(ipam.network(), "pods");
        assert_eq!(ipam.pool(&v4).map(Pool::block_prefix), Some(26));
        assert_eq!(ipam.pool(&v6).map(Pool::block_prefix), Some(122));
        assert!(ipam.pool(&n("10.78.0.0/16")).is_none());
        assert_eq!(
            ipam.pool(&v4).unwrap().to_string(),
            "10.77.0.0/16 (/26 blocks)"
        );
        let e = ipam.add_block(n("10.99.0.0/26")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network pods: 10.99.0.0/26 is not a block of any of its pools \
             (10.77.0.0/16 (/26 blocks), fd00:77::/64 (/122 blocks))"
        );
        // A stray of the second pool: its block is that pool's, and owning
        // the block makes it no stray.
        let strays = ipam.restore("x", &[n("fd00:77::5/64")]).unwrap();
        assert_eq!(strays.len(), 1);
        assert_eq!(strays[0].block, Some(n("fd00:77::/122")));
        assert!(ipam.add_block(n("fd00:77::/122")).unwrap());
        assert!(ipam.strays().is_empty(), "{:?}", ipam.strays());
        // A block with two holders says two.
        ipam.add_block(n("10.77.0.0/26")).unwrap();
        ipam.allocate("a").unwrap();
        ipam.allocate("b").unwrap();
        let e = ipam.remove_block(n("10.77.0.0/26")).unwrap_err();
        assert!(matches!(e, IpamError::BlockInUse { held: 2, .. }), "{e}");
    }
}
