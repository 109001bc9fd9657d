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

pub use allocator::{Ipam, Stray};
pub use candidates::{Candidates, FreeCandidates, Taken};
pub use error::{IpamError, PoolError};
pub use pool::Pool;

/// Fewest free addresses a pool should keep in this node's blocks before
/// the node claims another block (see [`Ipam::wants_block`]), unless a
/// quarter of a block is more.
pub const LOW_WATER_MIN: u128 = 8;

mod allocator;
mod candidates;
mod error;
mod math;
mod pool;

#[cfg(test)]
mod tests;
