//! The allocator's unit tests: pools and their arithmetic, candidates and
//! taken blocks, allocation, restore and strays, block tending, pool edits,
//! and properties (proptest) over random operations.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

use super::candidates::node_hash;
use super::math::{host_mask, to_ip, to_u128, Span};

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
