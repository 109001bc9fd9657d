//! Addresses on a link.

use super::*;

impl Rtnl {
    fn addr_msg(&self, index: u32, addr: &IpNetwork) -> Result<Ifaddrmsg> {
        let ip = addr.ip();
        let mut attrs = vec![attr(Ifa::Local, ip_bytes(&ip))?];
        attrs.push(attr(Ifa::Address, ip_bytes(&ip))?);
        IfaddrmsgBuilder::default()
            .ifa_family(family_of(&ip))
            .ifa_prefixlen(addr.prefix())
            .ifa_scope(RtScope::Universe)
            .ifa_index(index)
            .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))
    }

    /// Add an address (IPv4 or IPv6) to a link. `EEXIST` if present.
    pub fn add_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        let msg = self.addr_msg(index, &addr)?;
        self.ack(
            "RTM_NEWADDR",
            &|| format!("{addr} on ifindex {index}"),
            Rtm::Newaddr,
            NlmF::CREATE | NlmF::EXCL,
            msg,
        )
    }

    /// Remove an address. [`Error::is_not_found`] when it was not there.
    pub fn del_address(&self, index: u32, addr: IpNetwork) -> Result<()> {
        let msg = self.addr_msg(index, &addr)?;
        self.ack(
            "RTM_DELADDR",
            &|| format!("{addr} on ifindex {index}"),
            Rtm::Deladdr,
            NlmF::empty(),
            msg,
        )
    }

    /// The addresses of link `index` (all families).
    pub fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        let msg = IfaddrmsgBuilder::default()
            .ifa_family(RtAddrFamily::Unspecified)
            .ifa_prefixlen(0)
            .ifa_scope(RtScope::Universe)
            .ifa_index(0)
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        let mut out = Vec::new();
        self.request(
            "RTM_GETADDR dump",
            &|| format!("ifindex {index}"),
            Rtm::Getaddr,
            NlmF::DUMP,
            msg,
            |_, p| {
                let m = Ifaddrmsg::from_bytes_with_input(&mut Cursor::new(p), p.len()).map_err(
                    |e| Error::NetlinkDecode {
                        op: "RTM_GETADDR",
                        reason: e.to_string(),
                    },
                )?;
                if *m.ifa_index() != index {
                    return Ok(());
                }
                let mut local = None;
                let mut address = None;
                for a in m.rtattrs().iter() {
                    match a.rta_type() {
                        Ifa::Local => local = ip_from_bytes(a.rta_payload().as_ref()),
                        Ifa::Address => address = ip_from_bytes(a.rta_payload().as_ref()),
                        _ => {}
                    }
                }
                if let Some(ip) = local.or(address) {
                    if let Ok(net) = IpNetwork::new(ip, *m.ifa_prefixlen()) {
                        out.push(net);
                    }
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    // ----- routes ------------------------------------------------------------
}
