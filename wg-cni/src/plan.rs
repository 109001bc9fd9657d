//! From a configuration and the CNI environment to what a verb does: the
//! names, the device configuration, the routes, the record, the result.
//! [`Plan`] is that decision as one value; everything here is pure except
//! [`Plan::interface_spec`] and [`resolve_peers`], which ADD and CHECK call
//! to read key files and resolve host names.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};
use wg_netns::{
    normalize, Attachment, AttachmentRecord, Backend, BackendKind, Birthplace, DeviceConfig,
    IfName, InterfaceSpec, IpNetwork, PeerConfig, PrivateKey, Route, TABLE_MAIN,
};

use crate::cni::{build_result, CniError, Code, Env, ResultInterface, ResultIp, ResultRoute};
use crate::config::{key_file_hint, ChainedResult, Mtu, NetConf};
use crate::state::Record;

/// The interface's birth name: deterministic from network, container id and
/// CNI_IFNAME, so DEL and GC find it without state; unique machine-wide,
/// as a userspace control socket name must be.
pub fn birth_name(network: &str, container_id: &str, ifname: &str) -> IfName {
    // "wgc" + 12 hex digits always fits and validates.
    IfName::derived("wgc", &format!("{network}/{container_id}/{ifname}"))
        .unwrap_or_else(|_| unreachable!("a 3-character prefix leaves room for the hash"))
}

/// The WireGuard interface's name in the container: CNI_IFNAME when
/// standalone (it is the pod's network, or a Multus secondary network),
/// `interfaceName` (default wg0) when chained behind a plugin that made
/// CNI_IFNAME already.
pub fn interface_name(conf: &NetConf, env: &Env) -> Result<IfName, CniError> {
    if conf.prev_result.is_some() {
        if conf.interface_name.as_str() == env.ifname {
            return Err(CniError::new(
                Code::InvalidConfig,
                "invalid interfaceName",
                format!("interfaceName: {:?} is CNI_IFNAME, which the previous plugin created; choose another name", env.ifname),
            ));
        }
        Ok(conf.interface_name.clone())
    } else {
        IfName::new(env.ifname.as_str()).map_err(|e| {
            CniError::new(
                Code::InvalidEnvironment,
                "invalid CNI_IFNAME",
                e.to_string(),
            )
        })
    }
}

/// The desired device state, every peer listed (`replace_peers`), with
/// peers already resolved ([`resolve_peers`]).
pub fn device_config(
    conf: &NetConf,
    key: Option<PrivateKey>,
    peers: Vec<PeerConfig>,
) -> DeviceConfig {
    let mut cfg = DeviceConfig::new().replace_peers();
    cfg.private_key = key;
    cfg.listen_port = conf.listen_port;
    cfg.fwmark = conf.fwmark;
    cfg.peers = peers;
    cfg
}

/// The peers as a device takes them: host names resolved, preshared key
/// files read. The I/O of ADD and CHECK; DEL, GC and STATUS never call it.
pub fn resolve_peers(conf: &NetConf) -> Result<Vec<PeerConfig>, CniError> {
    conf.peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.resolve(conf.key_file_check).map_err(|e| {
                let field = match &e {
                    wg_netns::Error::Key(_) => "presharedKeyFile",
                    _ => "endpoint",
                };
                CniError::new(
                    Code::InvalidConfig,
                    format!("invalid peers[{i}].{field}"),
                    format!("peers[{i}].{field}: {}", key_file_hint(e.to_string())),
                )
            })
        })
        .collect()
}

/// Routes through the interface: one per peer allowed IP (unless
/// `routesFromAllowedIPs` is false), including those that contain the
/// interface's own address (a `0.0.0.0/0` full tunnel), but not the exact
/// prefix of one of its addresses, which the kernel installs itself; then the
/// explicit `routes`. All in `table` when set.
pub fn routes(conf: &NetConf) -> Vec<Route> {
    let table = conf.table.unwrap_or(TABLE_MAIN);
    let connected: Vec<IpNetwork> = conf.addresses.iter().map(|a| normalize(*a)).collect();
    let mut out: Vec<Route> = Vec::new();
    let mut push = |r: Route| {
        if !out
            .iter()
            .any(|o| o.destination == r.destination && o.table == r.table)
        {
            out.push(r);
        }
    };
    if conf.routes_from_allowed_ips {
        for p in &conf.peers {
            for aip in &p.allowed_ips {
                let dst = normalize(*aip);
                if table == TABLE_MAIN && connected.contains(&dst) {
                    continue;
                }
                push(Route::new(dst).table(table));
            }
        }
    }
    for r in &conf.routes {
        let mut route = Route::new(r.dst).table(table);
        if let Some(gw) = r.gw {
            route = route.via(gw);
        }
        push(route);
    }
    out
}

/// The MTU to set, given the underlay MTU towards the first endpoint (for
/// `"mtu": "auto"`: underlay - 80, the WireGuard overhead over IPv6).
pub fn mtu(conf: &NetConf, underlay: Option<u32>) -> Option<u32> {
    match conf.mtu {
        Mtu::Default => None,
        Mtu::Value(v) => Some(v),
        Mtu::Auto => Some(
            underlay
                .map(|u| u.saturating_sub(80).max(1280))
                .unwrap_or(1420),
        ),
    }
}

/// What a verb will do, decided from the configuration and the
/// environment before anything is touched: the names, the routes, the
/// record and the answer. Only [`Plan::interface_spec`] does I/O (key files,
/// host names, the underlay MTU), and only ADD and CHECK call it.
#[derive(Debug)]
pub struct Plan<'c> {
    conf: &'c NetConf,
    env: &'c Env,
    /// The interface's name in the container.
    pub name: IfName,
    /// Its birth name.
    pub birth: IfName,
}

/// Whether the spec is for creating (a key is needed) or for comparing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// ADD: load or generate the private key.
    Add,
    /// CHECK: a generated key cannot be known again; compare a given one.
    Check,
}

impl<'c> Plan<'c> {
    /// The plan for ADD and CHECK.
    pub fn new(conf: &'c NetConf, env: &'c Env) -> Result<Self, CniError> {
        Ok(Plan {
            conf,
            env,
            name: interface_name(conf, env)?,
            birth: birth_name(&conf.name, &env.container_id, &env.ifname),
        })
    }

    /// A plan with names chosen by the caller: for adapters of other
    /// runtimes (wg-netavark) that take their interface name from their
    /// own protocol and derive birth names with their own prefix, while
    /// sharing this configuration, spec, record and result logic.
    pub fn named(conf: &'c NetConf, env: &'c Env, name: IfName, birth: IfName) -> Self {
        Plan {
            conf,
            env,
            name,
            birth,
        }
    }

    /// The plan for CHECK: the names ADD recorded (CHECK's prevResult is
    /// ADD's result, so it cannot tell chained from standalone).
    pub fn recorded(conf: &'c NetConf, env: &'c Env, record: &AttachmentRecord) -> Self {
        Plan {
            conf,
            env,
            name: record.interface.clone(),
            birth: record.birth_name.clone(),
        }
    }

    /// The names of what an ADD would have made, for a teardown without a
    /// record: never fails (an invalid `interfaceName` falls back to
    /// CNI_IFNAME, then to the birth name).
    pub fn for_teardown(conf: &'c NetConf, env: &'c Env) -> Self {
        let birth = birth_name(&conf.name, &env.container_id, &env.ifname);
        let name = interface_name(conf, env)
            .ok()
            .or_else(|| IfName::new(env.ifname.as_str()).ok())
            .unwrap_or_else(|| birth.clone());
        Plan {
            conf,
            env,
            name,
            birth,
        }
    }

    /// The attachment to ensure or verify at `place`. Reads the key file,
    /// resolves endpoints and preshared key files, and for `"mtu": "auto"`
    /// asks the birthplace for the underlay's MTU.
    pub fn interface_spec(
        &self,
        place: &Birthplace,
        key: KeyUse,
    ) -> Result<InterfaceSpec, CniError> {
        let conf = self.conf;
        let peers = resolve_peers(conf)?;
        let underlay = match conf.mtu {
            Mtu::Auto => peers
                .iter()
                .find_map(|p| p.endpoint)
                .and_then(|ep| place.underlay_mtu(ep.ip()).ok()),
            _ => None,
        };
        let generated = conf.private_key.is_none();
        let key = match (key, generated) {
            (KeyUse::Check, true) => None,
            _ => Some(conf.load_private_key()?),
        };
        let mut spec = InterfaceSpec::new(self.birth.clone(), self.name.clone())
            .device(device_config(conf, key, peers));
        spec.addresses = conf.addresses.clone();
        spec.routes = routes(conf);
        spec.mtu = mtu(conf, underlay);
        if generated {
            spec = spec.key_on_create_only();
        }
        Ok(spec)
    }

    /// What a teardown needs, when no record was saved.
    pub fn attachment_record(
        &self,
        backend: BackendKind,
        userspace: Option<PathBuf>,
    ) -> AttachmentRecord {
        AttachmentRecord {
            interface: self.name.clone(),
            birth_name: self.birth.clone(),
            netns: PathBuf::from(&self.env.netns),
            socket_namespace: self.conf.socket_namespace,
            backend,
            userspace_implementation: userspace,
        }
    }

    /// The record an ADD saves.
    pub fn record(&self, a: &Attachment, backend: &Backend, created: u64) -> Record {
        let userspace = match backend {
            Backend::Userspace(u) => Some(u.program.clone()),
            Backend::Kernel => None,
        };
        Record {
            network: self.conf.name.clone(),
            container_id: self.env.container_id.clone(),
            ifname: self.env.ifname.clone(),
            attachment: self.attachment_record(a.kind, userspace),
            public_key: a.public_key.map(|k| k.to_base64()).unwrap_or_default(),
            listen_port: self.conf.listen_port,
            addresses: self.conf.addresses.iter().map(|a| a.to_string()).collect(),
            k8s: self
                .env
                .args
                .iter()
                .filter(|(k, _)| k.starts_with("K8S_POD_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
            created,
        }
    }

    /// ADD's answer ([`answer`]) for the attachment made.
    pub fn answer(&self, a: &Attachment) -> Value {
        let (iface, ips, routes) = result_parts(self.conf, &self.name, &self.env.netns, a.mtu);
        answer(self.conf, &iface, &ips, &routes)
    }
}

/// ADD's answer, static or managed: prevResult with the interface, its IPs
/// and routes appended (or unchanged, for `chainedResult: passthrough`), or
/// a result of our own when standalone.
pub fn answer(
    conf: &NetConf,
    iface: &ResultInterface,
    ips: &[ResultIp],
    routes: &[ResultRoute],
) -> Value {
    if conf.prev_result.is_some() && conf.chained_result == ChainedResult::Passthrough {
        return unchanged(conf);
    }
    build_result(
        conf.cni_version,
        conf.prev_result.as_ref(),
        iface,
        ips,
        routes,
        conf.dns.as_ref(),
    )
}

/// prevResult in the configuration's version, or (standalone) an empty
/// result of that version: the answer of a plugin that added nothing.
pub fn unchanged(conf: &NetConf) -> Value {
    let mut result = match &conf.prev_result {
        Some(Value::Object(prev)) => prev.clone(),
        _ => serde_json::Map::new(),
    };
    result.insert("cniVersion".into(), json!(conf.cni_version.as_str()));
    Value::Object(result)
}

/// What the result reports about the attachment.
pub fn result_parts(
    conf: &NetConf,
    name: &IfName,
    sandbox: &str,
    mtu: u32,
) -> (ResultInterface, Vec<ResultIp>, Vec<ResultRoute>) {
    let iface = ResultInterface {
        name: name.to_string(),
        sandbox: sandbox.to_string(),
        mtu: Some(mtu),
    };
    let ips = conf
        .addresses
        .iter()
        .map(|a| ResultIp { address: *a })
        .collect();
    let routes = routes(conf)
        .into_iter()
        .map(|r| ResultRoute {
            dst: r.destination,
            table: (r.table != TABLE_MAIN).then_some(r.table),
        })
        .collect();
    (iface, ips, routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::Command;
    use serde_json::json;

    const P1: &str = "jGGhjGIEbR0Noo8MgjAVh+m5pq4GxD9CZDAl/zsfZF0=";
    const P2: &str = "Jqbg1u7/1fK5VU2hadmxLzMmrwCPFe7fJEIzEnLWrl0=";

    fn conf(extra: serde_json::Value) -> NetConf {
        let mut base = json!({"cniVersion": "1.0.0", "name": "wg", "type": "wg-cni", "address": "10.13.13.210/24",
            "peers": [{"publicKey": P1, "allowedIPs": ["10.13.13.0/24", "0.0.0.0/0"]},
                      {"publicKey": P2, "allowedIPs": ["10.14.0.0/16", "10.13.13.0/24"]}]});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        NetConf::parse(base.to_string().as_bytes()).unwrap()
    }

    fn env(ifname: &str) -> Env {
        Env {
            command: Command::Add,
            container_id: "c1".into(),
            netns: "/var/run/netns/p".into(),
            ifname: ifname.into(),
            args: vec![],
            path: String::new(),
        }
    }

    #[test]
    fn full_tunnel_route_is_kept_and_connected_prefix_skipped() {
        let r = routes(&conf(json!({})));
        let dsts: Vec<String> = r.iter().map(|r| r.destination.to_string()).collect();
        assert_eq!(dsts, vec!["0.0.0.0/0", "10.14.0.0/16"]);
        // In another table the connected prefix is not there: keep it.
        let r = routes(&conf(json!({"table": 100})));
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|r| r.table == 100));
        let r = routes(&conf(
            json!({"routesFromAllowedIPs": false, "routes": [{"dst": "192.168.0.0/16", "gw": "10.13.13.1"}]}),
        ));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].gateway, Some("10.13.13.1".parse().unwrap()));
    }

    #[test]
    fn names() {
        let c = conf(json!({}));
        assert_eq!(
            interface_name(&c, &env("eth0")).unwrap().as_str(),
            "eth0",
            "standalone uses CNI_IFNAME"
        );
        let chained = conf(json!({"prevResult": {"cniVersion": "1.0.0"}}));
        assert_eq!(
            interface_name(&chained, &env("eth0")).unwrap().as_str(),
            "wg0"
        );
        assert!(interface_name(&chained, &env("wg0")).is_err());
        let a = birth_name("wg", "c1", "eth0");
        assert_eq!(a, birth_name("wg", "c1", "eth0"));
        assert_ne!(a, birth_name("wg", "C1", "eth0"));
        assert_ne!(a, birth_name("wg2", "c1", "eth0"));
        assert!(a.as_str().starts_with("wgc") && a.as_str().len() == 15);
    }

    #[test]
    fn mtu_modes() {
        assert_eq!(mtu(&conf(json!({})), Some(1500)), None);
        assert_eq!(mtu(&conf(json!({"mtu": 1300})), Some(1500)), Some(1300));
        assert_eq!(mtu(&conf(json!({"mtu": "auto"})), Some(1500)), Some(1420));
        assert_eq!(mtu(&conf(json!({"mtu": "auto"})), Some(9000)), Some(8920));
        assert_eq!(mtu(&conf(json!({"mtu": "auto"})), None), Some(1420));
    }

    mod round_trip {
        use super::*;
        use crate::cni::build_result;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        fn key(n: u8) -> String {
            wg_netns::PublicKey::from_bytes([n; 32]).to_base64()
        }

        prop_compose! {
            fn arb_net()(v4 in any::<bool>(), a in any::<[u8; 16]>(), p4 in 0u8..=32, p6 in 0u8..=128) -> String {
                if v4 {
                    IpNetwork::new(std::net::IpAddr::from([a[0], a[1], a[2], a[3]]), p4).unwrap().to_string()
                } else {
                    IpNetwork::new(std::net::IpAddr::from(a), p6).unwrap().to_string()
                }
            }
        }

        prop_compose! {
            fn arb_conf()(addresses in proptest::collection::vec(arb_net(), 0..4),
                          peers in proptest::collection::vec((1u8..200, proptest::collection::vec(arb_net(), 0..4), proptest::option::of(0u16..65535)), 0..5),
                          chained in any::<bool>(), table in proptest::option::of(1u32..5000),
                          from_aips in any::<bool>(), version in 0usize..4) -> (serde_json::Value, bool) {
                let mut seen = BTreeSet::new();
                let peers: Vec<_> = peers.into_iter().filter(|(k, _, _)| seen.insert(*k)).map(|(k, aips, ka)| {
                    let mut p = json!({"publicKey": key(k), "allowedIPs": aips});
                    if let Some(ka) = ka { p["persistentKeepalive"] = json!(ka); }
                    p
                }).collect();
                let v = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"][version];
                let mut c = json!({"cniVersion": v, "name": "net", "type": "wg-cni", "addresses": addresses,
                                   "peers": peers, "routesFromAllowedIPs": from_aips});
                if let Some(t) = table { c["table"] = json!(t); }
                if chained {
                    c["prevResult"] = json!({"cniVersion": v, "interfaces": [{"name": "eth0", "sandbox": "/p"}],
                                             "ips": [{"address": "10.88.0.2/16", "interface": 0}],
                                             "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}], "x-kept": 1});
                }
                (c, chained)
            }
        }

        proptest! {
            /// configuration -> plan -> result: the result reports exactly the
            /// planned interface, addresses and routes, keeps prevResult, and
            /// the plan's device configuration lists exactly the configured peers.
            #[test]
            fn configuration_plan_result(case in arb_conf()) {
                let (raw, chained) = case;
                let conf = NetConf::parse(raw.to_string().as_bytes()).unwrap();
                let env = Env { command: Command::Add, container_id: "c".into(), netns: "/p".into(),
                                ifname: "eth0".into(), args: vec![], path: String::new() };
                let name = interface_name(&conf, &env).unwrap();
                prop_assert_eq!(name.as_str(), if chained { "wg0" } else { "eth0" });
                let (iface, ips, routes) = result_parts(&conf, &name, "/p", 1420);
                let r = build_result(conf.cni_version, conf.prev_result.as_ref(), &iface, &ips, &routes, None);
                let ifs = r["interfaces"].as_array().unwrap();
                let ours = ifs.len() - 1;
                prop_assert_eq!(ifs[ours]["name"].as_str(), Some(name.as_str()));
                let our_ips: Vec<&str> = r["ips"].as_array().map(|v| v.iter()
                    .filter(|i| i["interface"].as_u64() == Some(ours as u64))
                    .filter_map(|i| i["address"].as_str()).collect()).unwrap_or_default();
                let want_ips: Vec<String> = conf.addresses.iter().map(|a| a.to_string()).collect();
                prop_assert_eq!(our_ips, want_ips.iter().map(String::as_str).collect::<Vec<_>>());
                let planned = self::routes(&conf);
                let result_dsts: BTreeSet<String> = r["routes"].as_array().map(|v| v.iter()
                    .filter(|x| x.get("gw").is_none())
                    .filter_map(|x| x["dst"].as_str().map(str::to_string)).collect()).unwrap_or_default();
                for p in &planned {
                    prop_assert!(result_dsts.contains(&p.destination.to_string()));
                    prop_assert_eq!(p.table, conf.table.unwrap_or(TABLE_MAIN));
                }
                if chained {
                    prop_assert_eq!(&r["x-kept"], &json!(1));
                    prop_assert_eq!(&r["ips"][0]["address"], &json!("10.88.0.2/16"));
                }
                let dev = device_config(&conf, None, resolve_peers(&conf).unwrap());
                prop_assert_eq!(dev.peers.len(), conf.peers.len());
                for (d, c) in dev.peers.iter().zip(&conf.peers) {
                    prop_assert_eq!(d.public_key, c.public_key);
                    prop_assert_eq!(&d.allowed_ips, &c.allowed_ips);
                }
            }
        }
    }

    #[test]
    fn device_config_lists_every_peer() {
        let c = conf(json!({"listenPort": 51820}));
        let d = device_config(&c, None, resolve_peers(&c).unwrap());
        assert!(d.replace_peers);
        assert_eq!(d.listen_port, Some(51820));
        assert_eq!(d.peers.len(), 2);
        assert!(d.peers.iter().all(|p| p.replace_allowed_ips));
    }
}
