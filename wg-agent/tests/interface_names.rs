//! The interface names the CRDs accept are exactly the ones the node agent
//! can use (issue: a network's `interfaceName` the apiserver accepted but
//! the agent refused left its pods without an interface).
//!
//! What the agent does with a network's interface name: it is the pod's
//! Linux interface (wg-netns's `IfName`), part of the node's record and
//! key file names (`local::Key`, `keys::KeyId`), and the last part of the
//! pod's WireGuardAttachment name (`agent::object_name`, a DNS subdomain
//! the apiserver checks). A name is usable when all of them take it.
//!
//! `wg-k8s-types/manifests/examples/interface-names.txt` lists names with
//! the verdict the CRDs must give; `scripts/crd-check` gives them to a real
//! apiserver, this test to the agent's own checks.

use std::path::Path;

use wg_agent::agent::object_name;
use wg_agent::keys::KeyId;
use wg_agent::local::Key;
use wg_k8s_types::{InterfaceName, ObjectName};

const UID: &str = "0b7f6e4e-4c4b-4b1e-9d55-3f1c2b1a0e9f";

/// Whether the agent can use `name` as a pod's interface name.
fn agent_can_use(name: &str) -> bool {
    wg_netns::IfName::new(name).is_ok()
        && Key::new(UID, name).is_some()
        && KeyId::new(UID, name).is_ok()
        && ObjectName::unchecked(object_name("web-0", name))
            .check()
            .is_ok()
}

/// Whether a network with `name` passes the Rust side of the CRD's rules
/// (what the agent checks a network with before using it).
fn crd_accepts(name: &str) -> bool {
    InterfaceName::unchecked(name).check().is_ok()
}

#[test]
fn listed_names_are_judged_as_the_agent_can_use_them() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../wg-k8s-types/manifests/examples/interface-names.txt");
    let text = std::fs::read_to_string(&path).expect("interface-names.txt");
    let mut n = 0;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (verdict, name) = line.split_once(' ').expect("VERDICT NAME");
        let name: String = serde_json::from_str(name).expect("a JSON string");
        let accept = verdict == "accept";
        assert_eq!(
            agent_can_use(&name),
            accept,
            "{name:?}: listed as {verdict}"
        );
        assert_eq!(crd_accepts(&name), accept, "{name:?}: listed as {verdict}");
        n += 1;
    }
    assert!(n > 250, "{n} names");
}

/// Beyond the list: every character (ASCII, and some others) at the
/// start, in the middle and at the end of a name, and every length.
#[test]
fn the_crd_rule_is_the_agents_for_every_character() {
    let chars = (0u8..=127)
        .map(char::from)
        .chain(['é', 'ß', 'İ', '\u{2028}', '\u{ff0f}', '😀']);
    let mut accepted = 0;
    for c in chars {
        for name in [
            format!("w{c}0"),
            format!("{c}w0"),
            format!("w0{c}"),
            c.to_string(),
        ] {
            assert_eq!(
                crd_accepts(&name),
                agent_can_use(&name),
                "{name:?}: the CRD and the agent disagree"
            );
            accepted += usize::from(crd_accepts(&name));
        }
    }
    assert!(accepted > 100, "{accepted}");
    for len in 0..=20 {
        for name in [
            "a".repeat(len),
            "-".repeat(len),
            format!("{}0", "-".repeat(len)),
        ] {
            assert_eq!(crd_accepts(&name), agent_can_use(&name), "{name:?}");
        }
    }
}
