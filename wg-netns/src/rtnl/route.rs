//! Routes: the [`Route`] type and add, replace, get, delete, list.

use super::*;

/// Scope of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteScope {
    /// Reaches beyond this link (routes with a gateway).
    Universe,
    /// Directly on the link (`scope link`).
    Link,
    /// A host-local route.
    Host,
    /// Any other scope value.
    Other(u8),
}

impl RouteScope {
    fn to_raw(self) -> u8 {
        match self {
            RouteScope::Universe => 0,
            RouteScope::Link => 253,
            RouteScope::Host => 254,
            RouteScope::Other(v) => v,
        }
    }
    fn from_raw(v: u8) -> Self {
        match v {
            0 => RouteScope::Universe,
            253 => RouteScope::Link,
            254 => RouteScope::Host,
            v => RouteScope::Other(v),
        }
    }
}

/// The main routing table's id.
pub const TABLE_MAIN: u32 = 254;

/// What the kernel does with a packet the route matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteKind {
    /// Send it (through `oif`, via `gateway`): `RTN_UNICAST`.
    #[default]
    Unicast,
    /// Refuse it at once, the sender gets `EHOSTUNREACH` (an ICMP host
    /// unreachable for forwarded packets): `RTN_UNREACHABLE`, `ip route add
    /// unreachable PREFIX`. No interface, no gateway.
    Unreachable,
}

impl RouteKind {
    fn to_raw(self) -> Rtn {
        match self {
            RouteKind::Unicast => Rtn::Unicast,
            RouteKind::Unreachable => Rtn::Unreachable,
        }
    }
    fn from_raw(t: Rtn) -> Option<Self> {
        match t {
            Rtn::Unicast => Some(RouteKind::Unicast),
            Rtn::Unreachable => Some(RouteKind::Unreachable),
            _ => None,
        }
    }
}

/// What [`Rtnl::sync_routes`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoutesSynced {
    /// Routes added or replaced: wanted, not in the previous state.
    pub added: Vec<Route>,
    /// Routes deleted: in the previous state, no longer wanted (one that
    /// was already gone is listed too).
    pub removed: Vec<Route>,
}

impl RoutesSynced {
    /// True when nothing was sent.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// A unicast route.
///
/// ```
/// use wg_netns::{Route, RouteScope};
/// let r = Route::new("10.13.13.0/24".parse().unwrap()).dev(3).table(100);
/// assert_eq!(r.scope, RouteScope::Link);
/// let d = Route::new("::/0".parse().unwrap()).via("fd00::1".parse().unwrap());
/// assert_eq!(d.scope, RouteScope::Universe);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Route {
    /// Destination prefix (host bits are cleared when the route is built).
    pub destination: IpNetwork,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Routing table id (254 = main).
    pub table: u32,
    /// Scope: `Link` for device routes, `Universe` for routes via a gateway.
    pub scope: RouteScope,
    /// Metric (`RTA_PRIORITY`).
    pub metric: Option<u32>,
    /// Unicast (the default) or unreachable.
    pub kind: RouteKind,
}

impl Route {
    /// A device route to `destination` in the main table, scope link.
    pub fn new(destination: IpNetwork) -> Self {
        Route {
            destination: normalize(destination),
            gateway: None,
            oif: None,
            table: TABLE_MAIN,
            scope: RouteScope::Link,
            metric: None,
            kind: RouteKind::Unicast,
        }
    }

    /// An unreachable route to `destination` in the main table (`ip route
    /// add unreachable DESTINATION`): what matches it is refused, never
    /// sent anywhere.
    pub fn unreachable(destination: IpNetwork) -> Self {
        Route {
            scope: RouteScope::Universe,
            kind: RouteKind::Unreachable,
            ..Route::new(destination)
        }
    }

    /// Send through interface `index`.
    pub fn dev(mut self, index: u32) -> Self {
        self.oif = Some(index);
        self
    }

    /// Send via `gateway` (makes the route scope universe).
    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self.scope = RouteScope::Universe;
        self
    }

    /// Put the route into table `table`.
    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    /// Set the metric.
    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }

    /// Set the scope explicitly.
    pub fn scope(mut self, scope: RouteScope) -> Self {
        self.scope = scope;
        self
    }
}

/// The `RTM_NEWROUTE` message for `r` (made by us: protocol `boot`, as
/// `ip route add` does).
fn route_msg(r: &Route) -> Result<Rtmsg> {
    route_msg_with(r, Rtprot::Boot)
}

/// The message for `r` with `protocol`: `Unspec` for `RTM_DELROUTE`, so
/// the kernel deletes the route whoever added it (a primary plugin's
/// default route may be `proto kernel`, `dhcp` or unspecified; with
/// `boot` the delete would find nothing).
fn route_msg_with(r: &Route, protocol: Rtprot) -> Result<Rtmsg> {
    let dst = normalize(r.destination);
    let ip = dst.ip();
    let mut attrs = Vec::new();
    if dst.prefix() > 0 {
        attrs.push(attr(Rta::Dst, ip_bytes(&ip))?);
    }
    if let Some(gw) = r.gateway {
        attrs.push(attr(Rta::Gateway, ip_bytes(&gw))?);
    }
    if let Some(oif) = r.oif {
        attrs.push(attr(Rta::Oif, oif)?);
    }
    if let Some(m) = r.metric {
        attrs.push(attr(Rta::Priority, m)?);
    }
    attrs.push(attr(Rta::Table, r.table)?);
    let table8 = if r.table < 256 {
        r.table as u8
    } else {
        252 /* RT_TABLE_COMPAT */
    };
    RtmsgBuilder::default()
        .rtm_family(family_of(&ip))
        .rtm_dst_len(dst.prefix())
        .rtm_src_len(0)
        .rtm_tos(0)
        .rtm_table(RtTable::from(table8))
        .rtm_protocol(protocol)
        .rtm_scope(RtScope::from(r.scope.to_raw()))
        .rtm_type(r.kind.to_raw())
        .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
        .build()
        .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))
}

impl Rtnl {
    /// Add a route. `EEXIST` if an identical route exists.
    pub fn add_route(&self, r: &Route) -> Result<()> {
        let msg = route_msg(r)?;
        self.ack(
            "RTM_NEWROUTE",
            &|| describe_route(r),
            Rtm::Newroute,
            NlmF::CREATE | NlmF::EXCL,
            msg,
        )
    }

    /// Add a route, or replace the route with the same destination, table
    /// and metric (`ip route replace`): how a full tunnel's `0.0.0.0/0` takes
    /// over a default route that an earlier plugin installed.
    pub fn replace_route(&self, r: &Route) -> Result<()> {
        let msg = route_msg(r)?;
        self.ack(
            "RTM_NEWROUTE (replace)",
            &|| describe_route(r),
            Rtm::Newroute,
            NlmF::CREATE | NlmF::REPLACE,
            msg,
        )
    }

    /// The route the kernel would use to reach `ip` (`ip route get`), with
    /// its output interface. [`Error::is_not_found`]-style errors
    /// (`ENETUNREACH` is not one) when there is none.
    pub fn route_get(&self, ip: IpAddr) -> Result<Route> {
        let full = if ip.is_ipv4() { 32 } else { 128 };
        let msg = RtmsgBuilder::default()
            .rtm_family(family_of(&ip))
            .rtm_dst_len(full)
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::Unspec)
            .rtm_protocol(Rtprot::Unspec)
            .rtm_scope(RtScope::Universe)
            .rtm_type(Rtn::Unspec)
            .rtattrs(
                vec![attr(Rta::Dst, ip_bytes(&ip))?]
                    .into_iter()
                    .collect::<RtBuffer<_, _>>(),
            )
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        let mut found = None;
        self.request(
            "RTM_GETROUTE",
            &|| ip.to_string(),
            Rtm::Getroute,
            NlmF::empty(),
            msg,
            |_, p| {
                found = parse_route(p)?;
                Ok(())
            },
        )?;
        found.ok_or_else(|| Error::NotFound {
            what: crate::error::Object::Route,
            name: ip.to_string(),
        })
    }

    /// Delete a route. [`Error::is_not_found`] when it was not there.
    pub fn del_route(&self, r: &Route) -> Result<()> {
        let msg = route_msg_with(r, Rtprot::Unspec)?;
        self.ack(
            "RTM_DELROUTE",
            &|| describe_route(r),
            Rtm::Delroute,
            NlmF::empty(),
            msg,
        )
    }

    /// Bring the routes a caller keeps through interface `oif` from
    /// `previous` (what it installed before: a known state) to `want`,
    /// both ways: a wanted route not in `previous` is added (replace
    /// semantics), a route of `previous` no longer wanted is deleted (one
    /// already gone is fine). A route without an interface goes through
    /// `oif`. Routes in neither list are never touched, and a route in both
    /// is not sent again: one deleted behind the caller's back is
    /// [`crate::Birthplace::verify`]'s `RouteMissing`, and
    /// [`crate::Birthplace::ensure`] puts it back.
    pub fn sync_routes(
        &self,
        oif: u32,
        previous: &[Route],
        want: &[Route],
    ) -> Result<RoutesSynced> {
        let through = |rs: &[Route]| -> Vec<Route> {
            rs.iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.destination = normalize(r.destination);
                    r.oif = r.oif.or(Some(oif));
                    r
                })
                .collect()
        };
        let (previous, want) = (through(previous), through(want));
        let added: Vec<Route> = want
            .iter()
            .filter(|w| !previous.contains(w))
            .cloned()
            .collect();
        let removed: Vec<Route> = previous
            .iter()
            .filter(|p| !want.contains(p))
            .cloned()
            .collect();
        for r in &added {
            self.replace_route(r)?;
        }
        for r in &removed {
            match self.del_route(r) {
                Err(e) if !e.is_not_found() => return Err(e),
                _ => {}
            }
        }
        Ok(RoutesSynced { added, removed })
    }

    /// Unicast routes of both families in table `table` (all tables if `None`).
    pub fn routes(&self, table: Option<u32>) -> Result<Vec<Route>> {
        let mut all = self.all_routes(table)?;
        all.retain(|r| r.kind == RouteKind::Unicast);
        Ok(all)
    }

    /// Unicast and unreachable routes of both families in table `table`
    /// (all tables if `None`).
    pub fn all_routes(&self, table: Option<u32>) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [RtAddrFamily::Inet, RtAddrFamily::Inet6] {
            let msg = RtmsgBuilder::default()
                .rtm_family(family)
                .rtm_dst_len(0)
                .rtm_src_len(0)
                .rtm_tos(0)
                .rtm_table(RtTable::Unspec)
                .rtm_protocol(Rtprot::Unspec)
                .rtm_scope(RtScope::Universe)
                .rtm_type(Rtn::Unspec)
                .build()
                .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
            self.request(
                "RTM_GETROUTE dump",
                &|| "routes".into(),
                Rtm::Getroute,
                NlmF::DUMP,
                msg,
                |_, p| {
                    if let Some(r) = parse_route(p)? {
                        if table.is_none_or(|t| t == r.table) {
                            out.push(r);
                        }
                    }
                    Ok(())
                },
            )?;
        }
        Ok(out)
    }
}

fn describe_route(r: &Route) -> String {
    let mut s = match r.kind {
        RouteKind::Unicast => String::new(),
        RouteKind::Unreachable => "unreachable ".to_string(),
    };
    s.push_str(&r.destination.to_string());
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" dev ifindex {oif}"));
    }
    if r.table != TABLE_MAIN {
        s.push_str(&format!(" table {}", r.table));
    }
    s
}

pub(super) fn parse_route(p: &[u8]) -> Result<Option<Route>> {
    let m = Rtmsg::from_bytes_with_input(&mut Cursor::new(p), p.len())
        .map_err(decode_err("RTM_GETROUTE"))?;
    let Some(kind) = RouteKind::from_raw(*m.rtm_type()) else {
        return Ok(None);
    };
    let mut table = u32::from(u8::from(*m.rtm_table()));
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = None;
    for a in m.rtattrs().iter() {
        let payload = a.rta_payload().as_ref();
        match a.rta_type() {
            Rta::Dst => dst = ip_from_bytes(payload),
            Rta::Gateway => gateway = ip_from_bytes(payload),
            Rta::Oif => oif = crate::netlink::read_u32(payload),
            Rta::Priority => metric = crate::netlink::read_u32(payload),
            Rta::Table => table = crate::netlink::read_u32(payload).unwrap_or(table),
            _ => {}
        }
    }
    let dst = dst.unwrap_or(match m.rtm_family() {
        RtAddrFamily::Inet6 => IpAddr::from([0u8; 16]),
        _ => IpAddr::from([0u8; 4]),
    });
    let Ok(destination) = IpNetwork::new(dst, *m.rtm_dst_len()) else {
        return Ok(None);
    };
    Ok(Some(Route {
        destination,
        gateway,
        oif,
        table,
        scope: RouteScope::from_raw(u8::from(*m.rtm_scope())),
        metric,
        kind,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_destination_is_normalized() {
        let r = Route::new("10.13.13.210/24".parse().unwrap());
        assert_eq!(r.destination.to_string(), "10.13.13.0/24");
        let r = Route::new("fd00::5/64".parse().unwrap());
        assert_eq!(r.destination.to_string(), "fd00::/64");
    }

    /// What `add_route`/`replace_route`/`del_route` send (the real
    /// encoder) parses back to the same route: destination, gateway, output
    /// interface, table (also above 255, where the header's byte cannot hold
    /// it), metric and scope.
    #[test]
    fn route_message_round_trips_through_the_parser() {
        let encoded = |r: &Route| {
            let msg = route_msg(r).unwrap();
            let mut c = Cursor::new(vec![0u8; msg.padded_size()]);
            msg.to_bytes(&mut c).unwrap();
            parse_route(c.get_ref()).unwrap().unwrap()
        };
        for r in [
            Route::new("0.0.0.0/0".parse().unwrap()).dev(7).table(1000),
            Route::new("10.13.0.0/16".parse().unwrap())
                .dev(3)
                .metric(50),
            Route::new("fd00::/8".parse().unwrap())
                .via("fd00::1".parse().unwrap())
                .dev(2),
            Route::new("192.168.7.0/24".parse().unwrap())
                .via("10.0.0.1".parse().unwrap())
                .dev(9)
                .table(100),
            Route::unreachable("0.0.0.0/0".parse().unwrap()).metric(u32::MAX),
            Route::unreachable("::/0".parse().unwrap()),
        ] {
            assert_eq!(encoded(&r), r);
        }
    }
}
