//! What one pod interface should be, computed from the resources alone (no
//! I/O): its peers (the network's mesh members and the WireGuardPeers that
//! select the pod) and the routes through it.
//!
//! ```
//! use std::collections::BTreeMap;
//! use wg_agent::desired::{selects, Selector, SelectorExt};
//!
//! let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
//! let sel = Selector::match_labels([("app", "web")]);
//! assert!(selects(Some(&sel), &labels));
//! assert!(selects(None, &labels)); // no selector: every pod of the network
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use wg_netns::{DeviceConfig, IpNetwork, PeerConfig, PresharedKey, PublicKey};

/// A label selector (Kubernetes' `LabelSelector`).
pub type Selector = LabelSelector;

/// Whether `addr` lies in one of a network's `peerEndpoints` (the rule
/// the agents apply to a WireGuardPeer's literal endpoint, and
/// `showconf` too).
pub fn endpoint_allowed(allowed: &[IpNetwork], addr: SocketAddr) -> bool {
    allowed
        .iter()
        .any(|n| n.is_ipv4() == addr.is_ipv4() && n.contains(addr.ip()))
}

/// Builders for selectors in tests and examples.
pub trait SelectorExt {
    /// A selector of `matchLabels` only.
    fn match_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self;
}

impl SelectorExt for LabelSelector {
    fn match_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        LabelSelector {
            match_labels: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: None,
        }
    }
}

/// Whether `selector` selects a pod with `labels`. `None` selects every
/// pod; an empty selector too (Kubernetes' meaning). An operator this
/// version does not know selects nothing (never more than asked).
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = selector else { return true };
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && sel
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement(r, labels))
}

fn requirement(r: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// Another pod interface of the same network (from its
/// WireGuardAttachment's status), a peer when the network is a mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshMember {
    /// Its pod's UID (never our own).
    pub pod_uid: String,
    /// Its public key.
    pub public_key: PublicKey,
    /// Where it is reached.
    pub endpoint: Option<SocketAddr>,
    /// Its addresses (host routes: /32, /128 are its allowed IPs).
    pub addresses: Vec<IpNetwork>,
}

/// What an interface should be.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// The device's peers (complete: others are removed).
    pub device: DeviceConfig,
    /// Routes through the interface beyond its addresses' own networks.
    pub routes: BTreeSet<IpNetwork>,
}

/// A host route for an address (`10.77.0.5/16` -> `10.77.0.5/32`).
pub fn host(addr: &IpNetwork) -> IpNetwork {
    let bits = if addr.is_ipv4() { 32 } else { 128 };
    IpNetwork::new(addr.ip(), bits).unwrap_or(*addr)
}

/// Whether `net` lies inside one of `within`.
fn covered(net: &IpNetwork, within: &[IpNetwork]) -> bool {
    within
        .iter()
        .any(|w| w.is_ipv4() == net.is_ipv4() && w.prefix() <= net.prefix() && w.contains(net.ip()))
}

/// The interface's desired peers and routes.
///
/// - Mesh members (all but `own_key`) get their addresses as allowed IPs
///   and `mesh_keepalive`.
/// - External peers (the WireGuardPeers that select the pod, resolved:
///   endpoint, preshared key read from its Secret) get theirs, with their
///   own keepalive; their other flags are the device write's.
/// - A public key listed twice keeps the first (mesh members first, then
///   peers in the given order): WireGuard has one entry per key.
/// - An allowed IP claimed by two peers goes to the first: WireGuard would
///   move it to whichever is written last, so the order would decide anyway.
/// - Routes: `extra` and every peer's allowed IPs not inside `own_nets`
///   (the interface's addresses' networks, routed by the kernel already).
pub fn compute(
    own_key: &PublicKey,
    own_nets: &[IpNetwork],
    mesh: &[MeshMember],
    mesh_keepalive: Option<u16>,
    peers: &[PeerConfig],
    extra: &[IpNetwork],
) -> Desired {
    let mut device = DeviceConfig::new().replace_peers();
    let mut keys = BTreeSet::new();
    let mut claimed: BTreeSet<IpNetwork> = BTreeSet::new();
    let mut routes: BTreeSet<IpNetwork> = extra.iter().copied().collect();
    let mut add = |key: PublicKey,
                   endpoint: Option<SocketAddr>,
                   ips: Vec<IpNetwork>,
                   keepalive: Option<Duration>,
                   psk: Option<PresharedKey>,
                   routes: &mut BTreeSet<IpNetwork>| {
        if key == *own_key || !keys.insert(key) {
            return None;
        }
        let mut p = PeerConfig::new(key).replace_allowed_ips();
        if let Some(e) = endpoint {
            p = p.endpoint(e);
        }
        for ip in ips {
            let ip = wg_netns::normalize(ip);
            if claimed.insert(ip) {
                if !covered(&ip, own_nets) {
                    routes.insert(ip);
                }
                p = p.allowed_ip(ip);
            }
        }
        if let Some(k) = keepalive.filter(|k| !k.is_zero()) {
            p = p.persistent_keepalive(k);
        }
        if let Some(psk) = psk {
            p = p.preshared_key(psk);
        }
        Some(p)
    };
    let mut list = Vec::new();
    for m in mesh {
        let ips = m.addresses.iter().map(host).collect();
        if let Some(p) = add(
            m.public_key,
            m.endpoint,
            ips,
            mesh_keepalive.map(|k| Duration::from_secs(u64::from(k))),
            None,
            &mut routes,
        ) {
            list.push(p);
        }
    }
    for e in peers {
        if let Some(p) = add(
            e.public_key,
            e.endpoint,
            e.allowed_ips.clone(),
            e.persistent_keepalive,
            e.preshared_key.clone(),
            &mut routes,
        ) {
            list.push(p);
        }
    }
    for p in list {
        device = device.peer(p);
    }
    Desired { device, routes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use wg_netns::PrivateKey;

    fn key() -> PublicKey {
        PrivateKey::generate().unwrap().public_key()
    }
    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }
    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn peer_endpoints() {
        let allowed = [net("10.250.0.0/24"), net("fd00::/64")];
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(endpoint_allowed(&allowed, at("10.250.0.7:51820")));
        assert!(endpoint_allowed(&allowed, at("[fd00::7]:51820")));
        assert!(!endpoint_allowed(&allowed, at("10.251.0.7:51820")));
        assert!(!endpoint_allowed(&allowed, at("[fd01::7]:51820")));
        assert!(!endpoint_allowed(&[], at("10.250.0.7:51820")));
        // A family's "everything" admits nothing of the other family.
        assert!(!endpoint_allowed(&[net("0.0.0.0/0")], at("[fd00::7]:1")));
        assert!(endpoint_allowed(&[net("0.0.0.0/0")], at("10.9.9.9:1")));
    }

    #[test]
    fn selectors() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let req = |k: &str, op: &str, v: &[&str]| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: k.into(),
                operator: op.into(),
                values: Some(v.iter().map(|s| s.to_string()).collect()),
            }]),
        };
        assert!(selects(None, &l));
        assert!(selects(Some(&LabelSelector::default()), &l));
        assert!(selects(
            Some(&LabelSelector::match_labels([("app", "web")])),
            &l
        ));
        assert!(!selects(
            Some(&LabelSelector::match_labels([("app", "db")])),
            &l
        ));
        assert!(selects(Some(&req("app", "In", &["web", "x"])), &l));
        assert!(!selects(Some(&req("app", "NotIn", &["web"])), &l));
        assert!(selects(Some(&req("zone", "NotIn", &["a"])), &l));
        assert!(selects(Some(&req("tier", "Exists", &[])), &l));
        assert!(!selects(Some(&req("tier", "DoesNotExist", &[])), &l));
        assert!(!selects(Some(&req("tier", "Gt", &["1"])), &l));
    }

    #[test]
    fn mesh_and_external_peers() {
        let me = key();
        let (a, b, gw) = (key(), key(), key());
        let mesh = vec![
            MeshMember {
                pod_uid: "a".into(),
                public_key: a,
                endpoint: Some("10.250.0.11:51820".parse().unwrap()),
                addresses: vec![net("10.77.0.2/16")],
            },
            MeshMember {
                pod_uid: "me".into(),
                public_key: me,
                endpoint: None,
                addresses: vec![net("10.77.0.3/16")],
            },
            MeshMember {
                pod_uid: "b".into(),
                public_key: b,
                endpoint: None,
                addresses: vec![net("10.77.1.2/16"), net("fd77::2/64")],
            },
        ];
        let ext = vec![PeerConfig::new(gw)
            .endpoint("10.250.0.100:51820".parse().unwrap())
            .allowed_ip(net("10.99.0.0/24"))
            .allowed_ip(net("10.77.0.2/32"))
            .persistent_keepalive(Duration::from_secs(25))];
        let d = compute(
            &me,
            &[net("10.77.0.3/16")],
            &mesh,
            None,
            &ext,
            &[net("10.96.0.0/12")],
        );
        assert!(d.device.replace_peers);
        let keys: Vec<_> = d.device.peers.iter().map(|p| p.public_key).collect();
        assert_eq!(keys, vec![a, b, gw], "own key skipped, mesh first");
        assert_eq!(d.device.peers[0].allowed_ips, vec![net("10.77.0.2/32")]);
        assert_eq!(
            d.device.peers[1].allowed_ips,
            vec![net("10.77.1.2/32"), net("fd77::2/128")]
        );
        // 10.77.0.2/32 already belongs to mesh member a.
        assert_eq!(d.device.peers[2].allowed_ips, vec![net("10.99.0.0/24")]);
        assert_eq!(
            d.device.peers[2].persistent_keepalive,
            Some(Duration::from_secs(25))
        );
        // Routes: extra, the peer's network, b's IPv6 host (no own v6 net);
        // mesh IPv4 hosts are inside 10.77.0.0/16, routed by the address.
        assert_eq!(
            d.routes,
            BTreeSet::from([net("10.96.0.0/12"), net("10.99.0.0/24"), net("fd77::2/128")])
        );
    }

    proptest! {
        /// Whatever the inputs: no key twice, never our own, no allowed IP
        /// in two peers, and every allowed IP is routed or inside our nets.
        #[test]
        fn invariants(n_mesh in 0usize..12, dup in 0usize..4, n_ext in 0usize..6, octets in proptest::collection::vec(0u8..8, 24)) {
            let me = key();
            let mut pool: Vec<PublicKey> = (0..n_mesh + n_ext).map(|_| key()).collect();
            pool.push(me);
            let pick = |i: usize| pool[i % pool.len()];
            let mesh: Vec<MeshMember> = (0..n_mesh + dup).map(|i| MeshMember {
                pod_uid: i.to_string(),
                public_key: pick(i),
                endpoint: None,
                addresses: vec![net(&format!("10.77.0.{}/16", octets[i % octets.len()]))],
            }).collect();
            let ext: Vec<PeerConfig> = (0..n_ext).map(|i| PeerConfig::new(pick(n_mesh + i))
                .allowed_ip(net(&format!("10.{}.0.0/24", 90 + octets[(i + 7) % octets.len()])))
            ).collect();
            let own = [net("10.77.0.1/16")];
            let d = compute(&me, &own, &mesh, Some(25), &ext, &[]);
            let mut keys = BTreeSet::new();
            let mut ips = BTreeSet::new();
            for p in &d.device.peers {
                prop_assert!(p.public_key != me);
                prop_assert!(keys.insert(p.public_key));
                for ip in &p.allowed_ips {
                    prop_assert!(ips.insert(*ip));
                    prop_assert!(d.routes.contains(ip) || covered(ip, &own));
                }
            }
        }
    }

    /// Each operator of a `matchExpressions` requirement, both ways: a
    /// pod without the key is selected by `DoesNotExist` and `NotIn`, not
    /// by `In` or `Exists`; every requirement must hold, with the labels.
    #[test]
    fn selector_operators_both_ways() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let req = |k: &str, op: &str, v: Option<&[&str]>| LabelSelectorRequirement {
            key: k.into(),
            operator: op.into(),
            values: v.map(|v| v.iter().map(|s| s.to_string()).collect()),
        };
        let sel = |reqs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: None,
            match_expressions: Some(reqs),
        };
        for (r, want) in [
            (req("zone", "DoesNotExist", None), true),
            (req("tier", "DoesNotExist", None), false),
            (req("zone", "Exists", None), false),
            (req("tier", "Exists", None), true),
            (req("zone", "In", Some(&["a"])), false),
            (req("app", "In", Some(&["db"])), false),
            (req("app", "In", None), false),
            (req("app", "NotIn", Some(&["db"])), true),
            (req("app", "NotIn", None), true),
            (req("zone", "NotIn", None), true),
            (req("app", "in", Some(&["web"])), false),
        ] {
            assert_eq!(selects(Some(&sel(vec![r.clone()])), &l), want, "{r:?}");
        }
        // All requirements and all labels must hold.
        let both = sel(vec![
            req("zone", "DoesNotExist", None),
            req("app", "In", Some(&["web"])),
        ]);
        assert!(selects(Some(&both), &l));
        let one_fails = sel(vec![
            req("zone", "DoesNotExist", None),
            req("app", "In", Some(&["db"])),
        ]);
        assert!(!selects(Some(&one_fails), &l));
        let mut labelled = LabelSelector::match_labels([("app", "web")]);
        labelled.match_expressions = Some(vec![req("tier", "DoesNotExist", None)]);
        assert!(!selects(Some(&labelled), &l));
        labelled.match_expressions = Some(vec![req("zone", "DoesNotExist", None)]);
        assert!(selects(Some(&labelled), &l));
        labelled.match_labels = Some(BTreeMap::from([("app".into(), "db".into())]));
        assert!(!selects(Some(&labelled), &l));
    }

    /// A keepalive of 0 is no keepalive: neither the mesh's nor a peer's
    /// is written as a zero interval.
    #[test]
    fn a_zero_keepalive_is_none() {
        let me = key();
        let mesh = vec![MeshMember {
            pod_uid: "a".into(),
            public_key: key(),
            endpoint: None,
            addresses: vec![net("10.77.0.2/16")],
        }];
        let ext = vec![PeerConfig::new(key())
            .allowed_ip(net("10.99.0.0/24"))
            .persistent_keepalive(Duration::ZERO)];
        let d = compute(&me, &[], &mesh, Some(0), &ext, &[]);
        assert_eq!(d.device.peers.len(), 2);
        for p in &d.device.peers {
            assert_eq!(p.persistent_keepalive, None, "{p:?}");
        }
        let d = compute(&me, &[], &mesh, Some(1), &ext, &[]);
        assert_eq!(
            d.device.peers[0].persistent_keepalive,
            Some(Duration::from_secs(1))
        );
    }
}
