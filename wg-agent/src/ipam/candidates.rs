//! The blocks a node tries to claim: `Pool::candidates`, every block of a
//! pool in a per-node order (`Candidates`); `Taken`, the networks claimed
//! by anyone; `Pool::free_candidates`, the candidates that overlap none of
//! them (`FreeCandidates`).

use std::iter::FusedIterator;

use ipnetwork::IpNetwork;

use super::math::{max_bits, to_ip, Span};
use super::Pool;

impl Pool {
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

/// A stable 64-bit hash of a node name: FNV-1a, then the MurmurHash3
/// finalizer so that its low bits (what a small pool's offset keeps) are
/// well mixed. Never changes between versions or runs (unlike std's
/// `DefaultHasher`), so a node tries the same blocks first after a restart.
pub(super) fn node_hash(node: &str) -> u64 {
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
