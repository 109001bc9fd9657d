//! Detach deletes only its own interface (tier b, real namespaces): a link
//! of the interface's name and the backend's kind that wg-netns did not
//! make for this attachment survives [`Birthplace::detach`], and
//! [`Birthplace::ensure`] marks an unmarked interface it keeps, so that a
//! later detach removes it.

use std::time::Duration;

use wg_netns::{
    owner_alias, Backend, Birthplace, DeviceConfig, IfName, InterfaceSpec, PrivateKey, Rtnl,
};
use wg_netns_testkit::*;

/// The attachment of these tests: `wg0` in the pod, born as a name unique
/// to this run.
fn spec(tag: &str) -> InterfaceSpec {
    InterfaceSpec::new(
        IfName::derived("wgd", &format!("{tag}/wg0")).expect("birth name"),
        IfName::new("wg0").expect("name"),
    )
    .device(DeviceConfig::new().private_key(PrivateKey::generate().expect("key")))
}

/// Make a link called `name` in `ns` of the kind `backend` makes (a TUN
/// for userspace WireGuard), as someone other than wg-netns would: no mark.
fn foreign_link(ns: &TestNs, name: &str, backend: &Backend) {
    match backend {
        Backend::Kernel => must(&[
            "ip",
            "-n",
            &ns.name,
            "link",
            "add",
            name,
            "type",
            "wireguard",
        ]),
        Backend::Userspace(_) | Backend::Engine(_) => must(&[
            "ip", "-n", &ns.name, "tuntap", "add", "dev", name, "mode", "tun",
        ]),
    };
}

fn alias(ns: &TestNs, name: &str) -> Option<String> {
    Rtnl::open(&ns.ns)
        .expect("rtnl")
        .link_by_name(&IfName::new(name).expect("name"))
        .expect("link")
        .alias
}

/// The container renamed our `wg0` and made its own `wg0` of the same kind:
/// detach leaves the container's link alone and still ends our daemon.
/// (Before interfaces were marked, detach deleted any `wireguard` link
/// called `wg0`, or any TUN called `wg0` while our daemon answered.)
#[test]
fn a_link_of_our_name_and_kind_that_we_did_not_make_survives_detach() {
    let Some(backend) =
        environment("a_link_of_our_name_and_kind_that_we_did_not_make_survives_detach")
    else {
        return;
    };
    let (node, pod) = (TestNs::new("dnode"), TestNs::new("dpod"));
    let place = Birthplace::new(&node.ns, &pod.ns, &backend).expect("place");
    let spec = spec(&tag());
    let ours = place.attach(&spec).expect("attach");
    assert_eq!(
        alias(&pod, "wg0").as_deref(),
        Some(owner_alias(&spec.birth_name).as_str()),
        "attach marks the interface it makes, and the mark survives the move and rename"
    );

    // The container moves ours aside and makes a wg0 of its own.
    must(&["ip", "-n", &pod.name, "link", "set", "wg0", "down"]);
    must(&[
        "ip", "-n", &pod.name, "link", "set", "wg0", "name", "wgmine",
    ]);
    foreign_link(&pod, "wg0", &backend);
    let theirs = Rtnl::open(&pod.ns)
        .unwrap()
        .link_by_name(&spec.name)
        .unwrap()
        .index;
    assert_ne!(theirs, ours.index);

    place.detach(&spec.name, &spec.birth_name).expect("detach");
    let left = Rtnl::open(&pod.ns).unwrap().link_by_name(&spec.name);
    assert_eq!(
        left.map(|l| l.index).ok(),
        Some(theirs),
        "the container's own wg0 is still there"
    );
    if let Backend::Userspace(u) = &backend {
        // Our daemon is ended by its socket, and its TUN (renamed) with it.
        assert!(!u.socket_path(spec.birth_name.as_str()).exists());
        assert!(
            eventually(Duration::from_secs(5), || !pod
                .link_names()
                .contains(&"wgmine".to_string())),
            "{:?}",
            pod.link_names()
        );
    }
    // A detach of an attachment that is gone is still a no-op for it.
    assert!(!place.detach(&spec.name, &spec.birth_name).expect("again"));
    assert!(pod.link_names().contains(&"wg0".to_string()));
}

/// A link of our name and kind, never ours (no attachment of this birth
/// name ever existed: a teardown from derived names, without a record).
#[test]
fn a_teardown_without_our_interface_deletes_nothing_of_that_name() {
    let Some(backend) =
        environment("a_teardown_without_our_interface_deletes_nothing_of_that_name")
    else {
        return;
    };
    let (node, pod) = (TestNs::new("tnode"), TestNs::new("tpod"));
    let place = Birthplace::new(&node.ns, &pod.ns, &backend).expect("place");
    let spec = spec(&tag());
    foreign_link(&pod, "wg0", &backend);
    // Marked for another attachment: not ours either.
    must(&[
        "ip",
        "-n",
        &pod.name,
        "link",
        "set",
        "wg0",
        "alias",
        "wg-netns:wgdsomeoneelse",
    ]);
    assert!(!place.detach(&spec.name, &spec.birth_name).expect("detach"));
    assert!(pod.link_names().contains(&"wg0".to_string()));
}

/// An interface made before wg-netns marked its interfaces (no alias):
/// ensure marks it as it keeps it, and detach then removes it.
#[test]
fn ensure_marks_an_unmarked_interface_it_keeps() {
    let Some(backend) = environment("ensure_marks_an_unmarked_interface_it_keeps") else {
        return;
    };
    let (node, pod) = (TestNs::new("enode"), TestNs::new("epod"));
    let place = Birthplace::new(&node.ns, &pod.ns, &backend).expect("place");
    let spec = spec(&tag()).key_on_create_only();
    let made = place.ensure(&spec).expect("create");
    assert!(made.created);
    // As an older wg-netns left it.
    must(&["ip", "-n", &pod.name, "link", "set", "wg0", "alias", ""]);
    assert_eq!(alias(&pod, "wg0"), None);
    let kept = place.ensure(&spec).expect("ensure");
    assert!(!kept.created);
    assert_eq!(kept.attachment.index, made.attachment.index);
    assert_eq!(
        alias(&pod, "wg0").as_deref(),
        Some(owner_alias(&spec.birth_name).as_str())
    );
    assert!(place.detach(&spec.name, &spec.birth_name).expect("detach"));
    assert!(!pod.link_names().contains(&"wg0".to_string()));
}
