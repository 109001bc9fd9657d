//! `Pool`: an address pool and the blocks it is cut into; its checks and
//! its block arithmetic (which addresses are reserved, usable, in which
//! block).

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::math::{host_mask, max_bits, to_ip, to_u128, Span};
use super::PoolError;

/// An address pool: a network and the prefix length of the blocks nodes
/// claim from it. Checked on construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pool {
    pub(super) net: IpNetwork,
    pub(super) block_prefix: u8,
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

    pub(super) fn v4(&self) -> bool {
        self.net.is_ipv4()
    }

    pub(super) fn span(&self) -> Span {
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

    pub(super) fn reserved(&self, v: u128) -> bool {
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
    pub(super) fn usable(&self, span: Span) -> u128 {
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

    pub(super) fn block_span(&self, first: u128) -> Span {
        Span {
            first,
            last: first | host_mask(self.block_prefix, self.v4()),
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (/{} blocks)", self.net, self.block_prefix)
    }
}
