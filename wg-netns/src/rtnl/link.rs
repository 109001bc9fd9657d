//! Links: look up, create (WireGuard, veth, any kind, in another namespace),
//! delete, bring up, MTU, rename, move between namespaces.

use super::*;

impl Rtnl {
    fn get_link(&self, index: u32, name: Option<&IfName>) -> Result<Link> {
        let mut attrs = Vec::new();
        if let Some(n) = name {
            attrs.push(attr(Ifla::Ifname, cstr(n.as_str()))?);
        }
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(index as i32)
            .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        let target = || {
            name.map(|n| n.to_string())
                .unwrap_or_else(|| format!("ifindex {index}"))
        };
        let mut found = None;
        let r = self.request(
            "RTM_GETLINK",
            &target,
            Rtm::Getlink,
            NlmF::empty(),
            msg,
            |_, p| {
                found = Some(parse_link(p)?);
                Ok(())
            },
        );
        match r {
            Err(e) if e.is_not_found() => Err(Error::NotFound {
                what: crate::error::Object::Link,
                name: target(),
            }),
            Err(e) => Err(e),
            Ok(()) => found.ok_or_else(|| Error::NotFound {
                what: crate::error::Object::Link,
                name: target(),
            }),
        }
    }

    /// The link called `name`; [`Error::NotFound`] when there is none.
    pub fn link_by_name(&self, name: &IfName) -> Result<Link> {
        self.get_link(0, Some(name))
    }

    /// The link with index `index`; [`Error::NotFound`] when there is none.
    pub fn link_by_index(&self, index: u32) -> Result<Link> {
        self.get_link(index, None)
    }

    /// Every link in the namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        let mut out = Vec::new();
        self.request(
            "RTM_GETLINK dump",
            &|| "all links".into(),
            Rtm::Getlink,
            NlmF::DUMP,
            msg,
            |_, p| {
                out.push(parse_link(p)?);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Create a link of kind `kind` (e.g. "wireguard") named `name`.
    /// Fails with `EEXIST` if the name is taken.
    pub fn create_link(&self, name: &IfName, kind: &str) -> Result<Link> {
        self.new_link(name, kind, None, None, &|| format!("{name} (kind {kind})"))?;
        self.created(name)
    }

    /// Create a link of kind `kind` named `name` directly inside `netns`
    /// (`ip link add NAME netns NS type KIND`), without a later move: moving a
    /// link between namespaces costs the kernel an RCU barrier (10-25 ms on
    /// the machines measured in docs/benchmarks.md). Devices that remember
    /// where they were created keep that namespace: a kernel WireGuard link
    /// made this way has its UDP socket in *this* handle's namespace and its
    /// interface in `netns`. Read the link back with an [`Rtnl`] opened in
    /// `netns`. Fails with `EEXIST` if the name is taken there.
    ///
    /// ```no_run
    /// use wg_netns::{IfName, Netns, Rtnl};
    /// let node = Rtnl::open(&Netns::current()?)?;
    /// let pod = Netns::from_path("/var/run/netns/pod1")?;
    /// node.create_link_in(&IfName::new("wg0")?, "wireguard", &pod)?;
    /// let link = Rtnl::open(&pod)?.link_by_name(&IfName::new("wg0")?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_link_in(&self, name: &IfName, kind: &str, netns: &Netns) -> Result<()> {
        self.new_link(name, kind, None, Some(netns), &|| {
            format!("{name} (kind {kind}, in another namespace)")
        })
    }

    /// Create a veth pair: `name` here, `peer_name` in `peer_netns` (here if
    /// `None`). Handy for underlays in tests and runtimes.
    pub fn create_veth(
        &self,
        name: &IfName,
        peer_name: &IfName,
        peer_netns: Option<&Netns>,
    ) -> Result<Link> {
        let mut peer_attrs = vec![attr(Ifla::Ifname, cstr(peer_name.as_str()))?];
        if let Some(ns) = peer_netns {
            peer_attrs.push(netns_attr(ns)?);
        }
        let peer = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .rtattrs(peer_attrs.into_iter().collect::<RtBuffer<_, _>>())
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        let mut peer_bytes = Cursor::new(vec![0u8; peer.padded_size()]);
        peer.to_bytes(&mut peer_bytes)
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        const VETH_INFO_PEER: u16 = 1;
        let data = attr(IflaInfo::Data, Buffer::new())?
            .nest(&attr(VETH_INFO_PEER, peer_bytes.into_inner())?)
            .map_err(|e| Error::Internal(format!("building a netlink attribute: {e}")))?;
        self.new_link(name, "veth", Some(data), None, &|| {
            format!("{name} <-> {peer_name} (veth)")
        })?;
        self.created(name)
    }

    /// `RTM_NEWLINK` of `kind` named `name`, with optional `IFLA_INFO_DATA`,
    /// here or in `netns`.
    fn new_link(
        &self,
        name: &IfName,
        kind: &str,
        data: Option<Rtattr<IflaInfo, Buffer>>,
        netns: Option<&Netns>,
        target: &dyn Fn() -> String,
    ) -> Result<()> {
        let mut info = attr(Ifla::Linkinfo, Buffer::new())?
            .nest(&attr(IflaInfo::Kind, cstr(kind))?)
            .map_err(|e| Error::Internal(format!("building a netlink attribute: {e}")))?;
        if let Some(d) = data {
            info = info
                .nest(&d)
                .map_err(|e| Error::Internal(format!("building a netlink attribute: {e}")))?;
        }
        let mut attrs = vec![attr(Ifla::Ifname, cstr(name.as_str()))?, info];
        if let Some(ns) = netns {
            attrs.push(netns_attr(ns)?);
        }
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        self.ack(
            "RTM_NEWLINK",
            target,
            Rtm::Newlink,
            NlmF::CREATE | NlmF::EXCL,
            msg,
        )
    }

    /// Look up a link just created; if that fails, remove it again so a
    /// failed create leaves nothing behind.
    fn created(&self, name: &IfName) -> Result<Link> {
        self.link_by_name(name).inspect_err(|_| {
            let _ = self.delete_link_by_name(name);
        })
    }

    /// Delete the link called `name`. [`Error::is_not_found`] when there is none.
    pub fn delete_link_by_name(&self, name: &IfName) -> Result<()> {
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .rtattrs(
                vec![attr(Ifla::Ifname, cstr(name.as_str()))?]
                    .into_iter()
                    .collect::<RtBuffer<_, _>>(),
            )
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        self.ack(
            "RTM_DELLINK",
            &|| name.to_string(),
            Rtm::Dellink,
            NlmF::empty(),
            msg,
        )
    }

    /// Create a WireGuard link (kernel WireGuard only).
    pub fn create_wireguard(&self, name: &IfName) -> Result<Link> {
        self.create_link(name, "wireguard")
    }

    /// Delete a link. [`Error::is_not_found`] is true when it was already gone.
    pub fn delete_link(&self, index: u32) -> Result<()> {
        let msg = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(index as i32)
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        self.ack(
            "RTM_DELLINK",
            &|| format!("ifindex {index}"),
            Rtm::Dellink,
            NlmF::empty(),
            msg,
        )
    }

    fn set_link(
        &self,
        op: &'static str,
        index: u32,
        builder: IfinfomsgBuilder,
        attrs: Vec<Rtattr<Ifla, Buffer>>,
    ) -> Result<()> {
        let msg = builder
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_index(index as i32)
            .rtattrs(attrs.into_iter().collect::<RtBuffer<_, _>>())
            .build()
            .map_err(|e| Error::Internal(format!("building a netlink message: {e}")))?;
        self.ack(
            op,
            &|| format!("ifindex {index}"),
            Rtm::Newlink,
            NlmF::empty(),
            msg,
        )
    }

    /// Bring a link up or down.
    pub fn set_up(&self, index: u32, up: bool) -> Result<()> {
        let b = IfinfomsgBuilder::default();
        let b = if up { b.up() } else { b.down() };
        self.set_link(
            if up {
                "RTM_NEWLINK (up)"
            } else {
                "RTM_NEWLINK (down)"
            },
            index,
            b,
            vec![],
        )
    }

    /// Set the MTU.
    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set_link(
            "RTM_NEWLINK (mtu)",
            index,
            IfinfomsgBuilder::default(),
            vec![attr(Ifla::Mtu, mtu)?],
        )
    }

    /// Set a link's alias (`IFLA_IFALIAS`, up to 255 bytes; `ip link set
    /// NAME alias TEXT`). The kernel keeps it across renames and moves
    /// between namespaces.
    pub fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        if alias.len() > 255 {
            return Err(Error::invalid(
                "link alias",
                format!("{} bytes, more than 255", alias.len()),
            ));
        }
        self.set_link(
            "RTM_NEWLINK (alias)",
            index,
            IfinfomsgBuilder::default(),
            vec![attr(Ifla::Ifalias, cstr(alias))?],
        )
    }

    /// Rename a link (it must be down for most kinds).
    pub fn rename(&self, index: u32, name: &IfName) -> Result<()> {
        self.set_link(
            "RTM_NEWLINK (rename)",
            index,
            IfinfomsgBuilder::default(),
            vec![attr(Ifla::Ifname, cstr(name.as_str()))?],
        )
    }

    /// Move a link into another namespace, renaming it in the same message
    /// when `new_name` is given (so the name never clashes in the target).
    pub fn move_to_netns(
        &self,
        index: u32,
        target: &Netns,
        new_name: Option<&IfName>,
    ) -> Result<()> {
        let mut attrs = vec![netns_attr(target)?];
        if let Some(n) = new_name {
            attrs.push(attr(Ifla::Ifname, cstr(n.as_str()))?);
        }
        self.set_link(
            "RTM_NEWLINK (move to namespace)",
            index,
            IfinfomsgBuilder::default(),
            attrs,
        )
    }

    // ----- addresses ---------------------------------------------------------
}

pub(crate) fn parse_link(p: &[u8]) -> Result<Link> {
    let m = Ifinfomsg::from_bytes_with_input(&mut Cursor::new(p), p.len())
        .map_err(decode_err("RTM_GETLINK"))?;
    let mut link = Link {
        index: *m.ifi_index() as u32,
        name: String::new(),
        kind: None,
        mtu: 0,
        up: m.ifi_flags().contains(Iff::UP),
        alias: None,
    };
    for a in m.rtattrs().iter() {
        let payload = a.rta_payload().as_ref();
        match a.rta_type() {
            Ifla::Ifname => {
                link.name = crate::netlink::read_str(payload)
                    .unwrap_or_default()
                    .to_string()
            }
            Ifla::Mtu => link.mtu = crate::netlink::read_u32(payload).unwrap_or(0),
            Ifla::Ifalias => {
                link.alias = crate::netlink::read_str(payload)
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
            }
            Ifla::Linkinfo => {
                for inner in crate::netlink::AttrIter::new(payload).flatten() {
                    if inner.0 == u16::from(IflaInfo::Kind) {
                        link.kind = crate::netlink::read_str(inner.1).map(str::to_string);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(link)
}
