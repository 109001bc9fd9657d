//! The errors: why a pool cannot be used (`PoolError`) and why the
//! allocator refused (`IpamError`).

use ipnetwork::IpNetwork;

use super::math::max_bits;
// For the doc links only.
#[cfg(doc)]
use super::Ipam;

/// Addresses as a comma-separated list, for error messages.
fn list(addrs: &[IpNetwork]) -> String {
    let v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    v.join(", ")
}

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
