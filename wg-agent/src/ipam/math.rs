//! Address arithmetic: addresses as integers, host masks, and `Span`, a
//! range of addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

pub(super) fn max_bits(v4: bool) -> u8 {
    if v4 {
        32
    } else {
        128
    }
}

pub(super) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(super) fn to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        // Values of an IPv4 pool never exceed u32::MAX (they are built from
        // IPv4 addresses and masks); truncation cannot happen.
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// The host bits of a `prefix`-long network of a family: `2^(bits-prefix) - 1`.
pub(super) fn host_mask(prefix: u8, v4: bool) -> u128 {
    let host_bits = u32::from(max_bits(v4).saturating_sub(prefix));
    1u128
        .checked_shl(host_bits)
        .map_or(u128::MAX, |one| one - 1)
}

/// An address range, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) first: u128,
    pub(super) last: u128,
}

impl Span {
    pub(super) fn of(net: &IpNetwork) -> Span {
        let v4 = net.is_ipv4();
        let mask = host_mask(net.prefix(), v4);
        let first = to_u128(net.ip()) & !mask;
        Span {
            first,
            last: first | mask,
        }
    }

    pub(super) fn contains(&self, v: u128) -> bool {
        self.first <= v && v <= self.last
    }

    /// Number of addresses, saturating at `u128::MAX` (a whole IPv6 /0).
    pub(super) fn size(&self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }
}
