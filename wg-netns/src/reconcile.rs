//! "Make it so" and "is it so?" for an interface: [`Birthplace::ensure`]
//! creates what is missing and repairs what differs, sending only the
//! difference; [`Birthplace::verify`] names every difference without
//! touching anything. Both use one rule for "the same" (see [`Drift`]), so
//! after `ensure(spec)` succeeds, `verify(spec)` is empty.
//!
//! ```no_run
//! use wg_netns::{Backend, Birthplace, DeviceConfig, IfName, InterfaceSpec, Netns, PrivateKey};
//! let place = Birthplace::new(&Netns::current()?, &Netns::from_name("pod1")?, &Backend::detect()?)?;
//! let spec = InterfaceSpec::new(IfName::derived("wgb", "pod1/wg0")?, IfName::new("wg0")?)
//!     .device(DeviceConfig::new().private_key(PrivateKey::generate()?).replace_peers())
//!     .address("10.13.13.2/24".parse()?)
//!     .mtu(1380);
//! let first = place.ensure(&spec)?;   // creates
//! assert!(first.created);
//! let again = place.ensure(&spec)?;   // nothing to do
//! assert!(!again.changed());
//! assert!(place.verify(&spec)?.is_empty());
//! # Ok::<(), wg_netns::Error>(())
//! ```

use ipnetwork::IpNetwork;

use crate::attach::{owner_alias, route_through, Attachment, Birthplace, InterfaceSpec};
use crate::device::DeviceConfig;
use crate::drift::Drift;
use crate::error::Result;
use crate::rtnl::{normalize, Route, Rtnl};

/// What [`Birthplace::ensure`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Ensured {
    /// The interface, as it is now.
    pub attachment: Attachment,
    /// It did not exist and was created (everything below is then empty).
    pub created: bool,
    /// The device change that was sent (empty when the device was right).
    pub device: DeviceConfig,
    /// Addresses added.
    pub addresses_added: Vec<IpNetwork>,
    /// Addresses removed (not in the specification; link-local IPv6 kept).
    pub addresses_removed: Vec<IpNetwork>,
    /// Routes added or replaced.
    pub routes: Vec<Route>,
    /// The MTU set, when it differed.
    pub mtu: Option<u32>,
    /// The interface was down and was brought up.
    pub brought_up: bool,
}

impl Ensured {
    /// True when anything was created or changed.
    pub fn changed(&self) -> bool {
        self.created
            || !self.device.is_empty()
            || !self.addresses_added.is_empty()
            || !self.addresses_removed.is_empty()
            || !self.routes.is_empty()
            || self.mtu.is_some()
            || self.brought_up
    }
}

/// Link-local IPv6 addresses are the kernel's, not the specification's.
fn counted(a: &IpNetwork) -> bool {
    match a {
        IpNetwork::V6(n) => (n.ip().segments()[0] & 0xffc0) != 0xfe80,
        IpNetwork::V4(_) => true,
    }
}

/// The specification's routes missing from the routing tables, as they
/// would be installed through interface `index`.
fn missing_routes(rtnl: &Rtnl, spec: &InterfaceSpec, index: u32) -> Result<Vec<Route>> {
    if spec.routes.is_empty() {
        return Ok(Vec::new());
    }
    let have = rtnl.routes(None)?;
    Ok(spec
        .routes
        .iter()
        .map(|r| route_through(r, index))
        .filter(|want| {
            !have.iter().any(|g| {
                normalize(g.destination) == normalize(want.destination)
                    && g.table == want.table
                    && g.oif == want.oif
                    && g.gateway == want.gateway
            })
        })
        .collect())
}

impl Birthplace {
    /// Bring the interface to `spec`: attach it when absent (after removing
    /// whatever a crashed attach left at the birthplace); otherwise send the
    /// device difference (keys, port, mark, peers: [`DeviceConfig::diff`]
    /// of `spec.device` read as a complete desired state), set a differing
    /// MTU, add missing and remove extra addresses, bring the link up and
    /// install missing routes. Idempotent; returns what it changed.
    ///
    /// An interface it keeps is marked as this attachment's
    /// ([`crate::owner_alias`]) when it is not yet (one made before
    /// wg-netns marked its interfaces), so that [`Birthplace::detach`]
    /// removes it later.
    pub fn ensure(&self, spec: &InterfaceSpec) -> Result<Ensured> {
        let Some((found, link)) = self.find_link(&spec.name, &spec.birth_name)? else {
            self.cleanup_birth(&spec.birth_name)?;
            let attachment = self.attach(spec)?;
            return Ok(Ensured {
                attachment,
                created: true,
                device: DeviceConfig::new(),
                addresses_added: Vec::new(),
                addresses_removed: Vec::new(),
                routes: Vec::new(),
                mtu: None,
                brought_up: false,
            });
        };
        let device = self.device(&found)?.update(&spec.desired_device())?;
        let rtnl = self.target_rtnl()?;
        let index = found.index;
        let mark = owner_alias(&spec.birth_name);
        if self.is_our_kind(&link) && link.alias.as_deref() != Some(mark.as_str()) {
            rtnl.set_alias(index, &mark)?;
        }
        let mtu = spec.mtu.filter(|m| *m != found.mtu);
        if let Some(m) = mtu {
            rtnl.set_mtu(index, m)?;
        }
        let have = rtnl.addresses(index)?;
        let addresses_added: Vec<IpNetwork> = spec
            .addresses
            .iter()
            .filter(|a| !have.contains(a))
            .copied()
            .collect();
        let addresses_removed: Vec<IpNetwork> = have
            .iter()
            .filter(|a| counted(a) && !spec.addresses.contains(a))
            .copied()
            .collect();
        for a in &addresses_removed {
            rtnl.del_address(index, *a)?;
        }
        for a in &addresses_added {
            rtnl.add_address(index, *a)?;
        }
        let brought_up = !found.up;
        if brought_up {
            rtnl.set_up(index, true)?;
        }
        let routes = missing_routes(rtnl, spec, index)?;
        for r in &routes {
            rtnl.replace_route(r)?;
        }
        let attachment = Attachment {
            mtu: mtu.unwrap_or(found.mtu),
            up: true,
            public_key: spec
                .desired_device()
                .private_key
                .as_ref()
                .map(|k| k.public_key())
                .or(found.public_key),
            ..found
        };
        Ok(Ensured {
            attachment,
            created: false,
            device,
            addresses_added,
            addresses_removed,
            routes,
            mtu,
            brought_up,
        })
    }

    /// Every difference between the interface and `spec`, changing nothing:
    /// exactly what [`Birthplace::ensure`] would repair. `[Drift::Missing]`
    /// when the interface is absent.
    pub fn verify(&self, spec: &InterfaceSpec) -> Result<Vec<Drift>> {
        let Some(found) = self.find(&spec.name, &spec.birth_name)? else {
            return Ok(vec![Drift::Missing {
                interface: spec.name.clone(),
            }]);
        };
        let current = self.device(&found)?.get()?;
        let mut out = Drift::of_device(&spec.desired_device(), &current);
        let rtnl = self.target_rtnl()?;
        if let Some(want) = spec.mtu.filter(|m| *m != found.mtu) {
            out.push(Drift::Mtu {
                have: found.mtu,
                want,
            });
        }
        let have = rtnl.addresses(found.index)?;
        for a in spec.addresses.iter().filter(|a| !have.contains(a)) {
            out.push(Drift::AddressMissing { address: *a });
        }
        for a in have
            .iter()
            .filter(|a| counted(a) && !spec.addresses.contains(a))
        {
            out.push(Drift::AddressUnexpected { address: *a });
        }
        if !found.up {
            out.push(Drift::Down);
        }
        for r in missing_routes(rtnl, spec, found.index)? {
            out.push(Drift::RouteMissing {
                destination: r.destination,
                table: r.table,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_addresses_are_not_counted() {
        assert!(!counted(&"fe80::1/64".parse().unwrap()));
        assert!(counted(&"fd00::1/64".parse().unwrap()));
        assert!(counted(&"10.0.0.1/24".parse().unwrap()));
    }
}
