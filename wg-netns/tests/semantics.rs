//! Real WireGuard against the documented semantics that `Device::apply`
//! models (tier b: wireguard-go on the host; tier c: the same binary on
//! kernel WireGuard in the qemu guest). The node agent plans every change
//! with `apply`, and the property tests use `apply` on both sides of their
//! comparison, so a wrong model would go unnoticed there: this test holds
//! the model to what the implementations actually do, case by case
//! (tests/cases/apply.rs, whose expectations are written from the kernel's
//! and wireguard-go's sources; src/device/tests.rs holds the model to the same
//! cases without root).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use wg_netns::{
    Device, DeviceConfig, IpNetwork, PeerConfig, PresharedKey, PrivateKey, PublicKey, Rtnl,
    WgDevice,
};
use wg_netns_testkit::*;

include!("cases/apply.rs");

#[test]
fn wireguard_applies_changes_as_the_model_says() {
    let Some(backend) = environment("wireguard_applies_changes_as_the_model_says") else {
        return;
    };
    let ns = TestNs::new("sem");
    let rtnl = Rtnl::open(&ns.ns).expect("route netlink in the test namespace");
    let mut failures = Vec::new();
    for case in apply_cases() {
        let name = ifname("wgts");
        // Removes the link (and a userspace daemon with it) even if a
        // step below panics; declared after `ns`, so it runs first.
        let _guard = BirthGuard {
            ns: &ns,
            birth: name.clone(),
            backend: backend.clone(),
        };
        let (dev, link) = WgDevice::create(&ns.ns, &name, &backend).expect("create");
        dev.set(&case.start)
            .unwrap_or_else(|e| panic!("{}: start: {e}", case.name));
        dev.set(&case.change)
            .unwrap_or_else(|e| panic!("{}: change: {e}", case.name));
        let got = dev.get().expect("read back");
        rtnl.delete_link(link.index).expect("delete the link");

        let mut model = Device::default();
        model.apply(&case.start);
        model.apply(&case.change);
        let seen = Seen::of(&got);
        if seen != case.want {
            failures.push(format!(
                "{}: WireGuard reports\n  {seen:?}\nthe documented semantics say\n  {:?}",
                case.name, case.want
            ));
        }
        if !model.same_config(&got) {
            failures.push(format!(
                "{}: the model says\n  {:?}\nWireGuard reports\n  {got:?}",
                case.name,
                Seen::of(&model)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
