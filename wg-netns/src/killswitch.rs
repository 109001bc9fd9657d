//! A kill switch for a full tunnel: in a namespace whose traffic must leave
//! through WireGuard (a pod whose default route is a VPN gateway), nothing
//! but the networks named local may leave through any other interface,
//! whatever happens to the tunnel.
//!
//! The rule, the same for "make it so" ([`KillSwitch::ensure`]) and "is it
//! so" ([`KillSwitch::leaks`]), on the main table:
//!
//! - an **unreachable default route** per family at the largest metric
//!   ([`KILL_SWITCH_METRIC`]): the tunnel's own default route (any metric)
//!   wins while it exists, and when the tunnel's device goes (deleted,
//!   crashed, never made yet) its routes go with it and the unreachable
//!   route is what is left: packets are refused in the namespace, never
//!   sent;
//! - **no route out through another interface** except to the local
//!   networks: every unicast route whose output interface is not the
//!   tunnel, that leaves the link (a gateway, or a link-scope default), and
//!   whose destination is not inside a local network is a leak, and is
//!   deleted (the primary plugin's default route first of all);
//! - **the local networks** (the cluster's pod and Service CIDRs, node
//!   addresses: what must keep going through the primary interface) get a
//!   route via the gateway of the default route they replace.
//!
//! Device routes without a gateway that are not a default (an interface's
//! own subnet, IPv6's `fe80::/64`) are not leaks: they reach only the link
//! itself. Other routing tables and
//! policy rules are not looked at: a namespace whose owner may change them
//! (`CAP_NET_ADMIN` in it) can undo any kill switch; docs/egress.md says
//! who may cause what.
//!
//! ```no_run
//! use wg_netns::{KillSwitch, Netns, Rtnl};
//! let pod = Netns::from_name("pod1")?;
//! let rtnl = Rtnl::open(&pod)?;
//! // Before the tunnel exists (during the ADD): only the cluster stays reachable.
//! let ks = KillSwitch::new(vec!["10.244.0.0/16".parse()?, "10.96.0.0/12".parse()?]);
//! let changes = ks.ensure(&rtnl, None)?;
//! assert!(ks.leaks(&rtnl, None)?.is_empty());
//! # let _ = changes;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::error::Result;
use crate::rtnl::{Route, RouteKind, Rtnl, TABLE_MAIN};

/// The metric of the kill switch's unreachable default routes: the
/// largest, so that any other default route wins over them while it
/// exists.
pub const KILL_SWITCH_METRIC: u32 = u32::MAX;

/// The kill switch of one namespace: the networks that stay on the
/// primary interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KillSwitch {
    local: Vec<IpNetwork>,
}

/// What [`KillSwitch::ensure`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillSwitchChange {
    /// A local network got its route via the primary gateway.
    LocalRoute(Route),
    /// The family's unreachable default route was added.
    Unreachable(IpNetwork),
    /// A route out of the tunnel was deleted.
    Removed(Route),
}

/// A way out of the namespace that the kill switch does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leak {
    /// The family has no unreachable default route: when the tunnel goes,
    /// nothing stops its packets at the namespace.
    NoUnreachableDefault(IpNetwork),
    /// A route leaves through an interface other than the tunnel, to a
    /// destination outside the local networks.
    Route(Route),
}

impl fmt::Display for Leak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Leak::NoUnreachableDefault(d) => write!(f, "no unreachable {d} route"),
            Leak::Route(r) => {
                write!(f, "route {} leaves", r.destination)?;
                if let Some(gw) = r.gateway {
                    write!(f, " via {gw}")?;
                }
                if let Some(oif) = r.oif {
                    write!(f, " through ifindex {oif}")?;
                }
                Ok(())
            }
        }
    }
}

fn default_of(v4: bool) -> IpNetwork {
    if v4 {
        IpNetwork::new(IpAddr::from([0u8; 4]), 0)
    } else {
        IpNetwork::new(IpAddr::from([0u8; 16]), 0)
    }
    .unwrap_or_else(|_| unreachable!("a zero prefix is valid"))
}

impl KillSwitch {
    /// A kill switch that keeps `local` (normalized) on the primary
    /// interface.
    pub fn new(local: Vec<IpNetwork>) -> Self {
        KillSwitch {
            local: local.into_iter().map(crate::net::normalize).collect(),
        }
    }

    /// The local networks.
    pub fn local(&self) -> &[IpNetwork] {
        &self.local
    }

    fn is_local(&self, dest: &IpNetwork) -> bool {
        self.local.iter().any(|l| {
            l.is_ipv4() == dest.is_ipv4() && l.prefix() <= dest.prefix() && l.contains(dest.ip())
        })
    }

    /// Whether `r` takes packets out of the namespace, outside the tunnel
    /// (`tunnel`: its interface index, `None` before it exists), to a
    /// destination that is not local.
    fn leaks_by(&self, r: &Route, tunnel: Option<u32>) -> bool {
        r.kind == RouteKind::Unicast
            && r.table == TABLE_MAIN
            && (tunnel.is_none() || r.oif != tunnel)
            && (r.gateway.is_some() || r.destination.prefix() == 0)
            && !self.is_local(&r.destination)
    }

    /// The leaks among `routes` (the main table): the routes out, and the
    /// families that lack their unreachable default. IPv4 always needs
    /// one; IPv6 where it has a route out or a local network.
    fn find(&self, routes: &[Route], tunnel: Option<u32>) -> Vec<Leak> {
        let mut out: Vec<Leak> = routes
            .iter()
            .filter(|r| self.leaks_by(r, tunnel))
            .cloned()
            .map(Leak::Route)
            .collect();
        for v4 in [true, false] {
            let d = default_of(v4);
            let has = routes
                .iter()
                .any(|r| r.kind == RouteKind::Unreachable && r.destination == d);
            let needed = v4
                || self.local.iter().any(|l| l.is_ipv4() == v4)
                || routes
                    .iter()
                    .any(|r| r.destination.is_ipv4() == v4 && self.leaks_by(r, tunnel));
            if !has && needed {
                out.push(Leak::NoUnreachableDefault(d));
            }
        }
        out
    }

    /// What lets a packet leave the namespace outside the tunnel (`tunnel`:
    /// its interface index, `None` before it exists): empty when the kill
    /// switch holds.
    pub fn leaks(&self, rtnl: &Rtnl, tunnel: Option<u32>) -> Result<Vec<Leak>> {
        Ok(self.find(&rtnl.all_routes(Some(TABLE_MAIN))?, tunnel))
    }

    /// Make the kill switch hold in `rtnl`'s namespace, repairing exactly
    /// what [`KillSwitch::leaks`] finds, in this order: the local networks
    /// routed via the gateway of the family's primary default route
    /// (learnt from it before it goes: cluster traffic is never cut), the
    /// unreachable defaults added, the leaking routes deleted (no moment
    /// lets a packet out). Idempotent: a second call changes nothing.
    pub fn ensure(&self, rtnl: &Rtnl, tunnel: Option<u32>) -> Result<Vec<KillSwitchChange>> {
        let routes = rtnl.all_routes(Some(TABLE_MAIN))?;
        let leaks = self.find(&routes, tunnel);
        let mut changes = Vec::new();
        for v4 in [true, false] {
            let d = default_of(v4);
            // The primary way out, whose gateway the local networks keep.
            let primary = routes.iter().find(|r| {
                r.destination == d
                    && r.gateway.is_some()
                    && r.oif.is_some()
                    && self.leaks_by(r, tunnel)
            });
            let Some(p) = primary else { continue };
            for l in self.local.iter().filter(|l| l.is_ipv4() == v4) {
                let there = routes
                    .iter()
                    .any(|r| r.kind == RouteKind::Unicast && r.destination == *l && r.oif == p.oif);
                if there {
                    continue;
                }
                let mut route = Route::new(*l);
                if let Some(gw) = p.gateway {
                    route = route.via(gw);
                }
                if let Some(oif) = p.oif {
                    route = route.dev(oif);
                }
                rtnl.replace_route(&route)?;
                changes.push(KillSwitchChange::LocalRoute(route));
            }
        }
        for leak in &leaks {
            if let Leak::NoUnreachableDefault(d) = leak {
                rtnl.replace_route(&Route::unreachable(*d).metric(KILL_SWITCH_METRIC))?;
                changes.push(KillSwitchChange::Unreachable(*d));
            }
        }
        for leak in leaks {
            if let Leak::Route(r) = leak {
                // A route gone meanwhile is an error too: the namespace
                // changed under us (its interface going), and the caller
                // runs ensure again.
                rtnl.del_route(&r)?;
                changes.push(KillSwitchChange::Removed(r));
            }
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtnl::RouteScope;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn what_leaks() {
        let ks = KillSwitch::new(vec![net("10.244.7.1/16"), net("10.96.0.0/12")]);
        assert_eq!(ks.local(), &[net("10.244.0.0/16"), net("10.96.0.0/12")]);
        let gw: IpAddr = "10.244.1.1".parse().unwrap();
        let leaks = |r: Route, tunnel: Option<u32>| ks.leaks_by(&r, tunnel);
        // The primary default route, with or without a tunnel.
        assert!(leaks(Route::new(net("0.0.0.0/0")).via(gw).dev(2), None));
        assert!(leaks(Route::new(net("0.0.0.0/0")).via(gw).dev(2), Some(5)));
        // A default without a gateway sends on-link to anything: a leak.
        assert!(leaks(Route::new(net("0.0.0.0/0")).dev(2), Some(5)));
        // Part of the internet via the gateway: a leak.
        assert!(leaks(
            Route::new(net("198.51.100.0/24")).via(gw).dev(2),
            Some(5)
        ));
        // The tunnel's own routes, local networks, the link's own subnet,
        // an unreachable route, another table: not leaks.
        assert!(!leaks(Route::new(net("0.0.0.0/0")).dev(5), Some(5)));
        assert!(!leaks(
            Route::new(net("10.96.0.0/12")).via(gw).dev(2),
            Some(5)
        ));
        assert!(!leaks(
            Route::new(net("10.244.3.0/24")).via(gw).dev(2),
            None
        ));
        assert!(!leaks(Route::new(net("172.16.5.0/24")).dev(2), None));
        // IPv6 reports every route with scope universe: fe80::/64 on the
        // link is still not a way out.
        assert!(!leaks(
            Route::new(net("fe80::/64"))
                .dev(2)
                .scope(RouteScope::Universe),
            None
        ));
        assert!(!leaks(Route::unreachable(net("0.0.0.0/0")), None));
        assert!(!leaks(
            Route::new(net("0.0.0.0/0")).via(gw).dev(2).table(100),
            None
        ));
        // A local network's supernet is not local.
        assert!(leaks(Route::new(net("10.0.0.0/8")).via(gw).dev(2), Some(5)));
        // Families do not mix.
        let v6 = KillSwitch::new(vec![net("fd00::/8")]);
        assert!(v6.leaks_by(
            &Route::new(net("::/0"))
                .via("fe80::1".parse().unwrap())
                .dev(2),
            None
        ));
        assert!(!v6.leaks_by(
            &Route::new(net("fd00:1::/64"))
                .via("fe80::1".parse().unwrap())
                .dev(2),
            None
        ));
        assert!(KillSwitch::new(vec![net("0.0.0.0/0")]).is_local(&net("10.0.0.0/8")));
        assert!(!KillSwitch::new(vec![net("0.0.0.0/0")]).is_local(&net("fd00::/8")));
    }

    /// `find` on route lists: IPv4 always needs its unreachable default;
    /// IPv6 only with a route out or a local IPv6 network.
    #[test]
    fn which_families_need_the_unreachable_default() {
        let gw4: IpAddr = "10.244.1.1".parse().unwrap();
        let gw6: IpAddr = "fe80::1".parse().unwrap();
        let v4_only = KillSwitch::new(vec![net("10.244.0.0/16")]);
        let unreach4 = Route::unreachable(net("0.0.0.0/0")).metric(KILL_SWITCH_METRIC);
        let unreach6 = Route::unreachable(net("::/0")).metric(KILL_SWITCH_METRIC);
        let link6 = Route::new(net("fe80::/64"))
            .dev(2)
            .scope(RouteScope::Universe);
        // Nothing at all: IPv4's is missing, IPv6 needs none.
        assert_eq!(
            v4_only.find(&[], None),
            vec![Leak::NoUnreachableDefault(net("0.0.0.0/0"))]
        );
        // IPv4 locked, IPv6 only on the link: holds.
        assert_eq!(
            v4_only.find(&[unreach4.clone(), link6.clone()], None),
            vec![]
        );
        // An IPv6 default out: that route, and IPv6's missing unreachable.
        let out6 = Route::new(net("::/0")).via(gw6).dev(2);
        assert_eq!(
            v4_only.find(&[unreach4.clone(), out6.clone()], None),
            vec![
                Leak::Route(out6.clone()),
                Leak::NoUnreachableDefault(net("::/0"))
            ]
        );
        // A local IPv6 network: IPv6 needs its unreachable default too.
        let dual = KillSwitch::new(vec![net("10.244.0.0/16"), net("fd00::/8")]);
        assert_eq!(
            dual.find(std::slice::from_ref(&unreach4), None),
            vec![Leak::NoUnreachableDefault(net("::/0"))]
        );
        assert_eq!(dual.find(&[unreach4.clone(), unreach6], None), vec![]);
        // An unreachable route that is not a default does not count.
        let partial = Route::unreachable(net("10.0.0.0/8"));
        assert_eq!(
            v4_only.find(&[partial], None),
            vec![Leak::NoUnreachableDefault(net("0.0.0.0/0"))]
        );
        // The primary default: a leak until a tunnel is named, and still
        // one when the tunnel is another interface.
        let primary = Route::new(net("0.0.0.0/0")).via(gw4).dev(2);
        assert_eq!(
            v4_only.find(&[unreach4.clone(), primary.clone()], Some(5)),
            vec![Leak::Route(primary.clone())]
        );
        assert_eq!(v4_only.find(&[unreach4, primary], Some(2)), vec![]);
    }

    #[test]
    fn leaks_say_what() {
        let r = Route::new(net("0.0.0.0/0"))
            .via("10.244.1.1".parse().unwrap())
            .dev(2);
        assert_eq!(
            Leak::Route(r).to_string(),
            "route 0.0.0.0/0 leaves via 10.244.1.1 through ifindex 2"
        );
        assert_eq!(
            Leak::NoUnreachableDefault(net("::/0")).to_string(),
            "no unreachable ::/0 route"
        );
    }
}
