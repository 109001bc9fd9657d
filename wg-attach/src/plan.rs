//! From a configuration and a [`Request`] to what a verb does: the names,
//! the device configuration, the routes, the record. [`Plan`] is that
//! decision as one value; everything here is pure except
//! [`Plan::interface_spec`] and [`resolve_peers`], which an attach and a
//! check call to read key files and resolve host names. What the runtime
//! is answered is the adapter's (wg-cni's result, netavark's status block).

use std::net::IpAddr;
use std::path::PathBuf;

use wg_netns::{
    normalize, Attachment, AttachmentRecord, Backend, BackendKind, Birthplace, DeviceConfig,
    IfName, InterfaceSpec, IpNetwork, PeerConfig, PrivateKey, Route, TABLE_MAIN,
};

use crate::config::{key_file_hint, Mtu, NetConf};
use crate::error::{Error, Kind, Result};
use crate::request::Request;
use crate::state::Record;

/// The WireGuard interface's name in the container: the request's
/// interface name when standalone (it is the pod's network, or a Multus
/// secondary network), `interfaceName` (default wg0) when chained behind a
/// plugin that made the request's interface already.
pub fn interface_name(conf: &NetConf, req: &Request) -> Result<IfName> {
    if conf.prev_result.is_some() {
        if conf.interface_name.as_str() == req.ifname {
            return Err(Error::new(
                Kind::Config,
                "invalid interfaceName",
                format!("interfaceName: {:?} is CNI_IFNAME, which the previous plugin created; choose another name", req.ifname),
            ));
        }
        Ok(conf.interface_name.clone())
    } else {
        IfName::new(req.ifname.as_str())
            .map_err(|e| Error::new(Kind::Request, "invalid interface name", e.to_string()))
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
pub fn resolve_peers(conf: &NetConf) -> Result<Vec<PeerConfig>> {
    conf.peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.resolve(conf.key_file_check).map_err(|e| {
                let field = match &e {
                    wg_netns::Error::Key(_) => "presharedKeyFile",
                    _ => "endpoint",
                };
                Error::new(
                    Kind::Config,
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

/// The MTU to set, given the underlay MTU towards the first endpoint
/// ([`Mtu::resolve`]: for `"mtu": "auto"`, underlay - 80, the WireGuard
/// overhead over IPv6).
pub fn mtu(conf: &NetConf, underlay: Option<u32>) -> Option<u32> {
    conf.mtu.map(|m| m.resolve(underlay))
}

/// Where `"mtu": "auto"` measures the underlay: towards the first peer
/// with an endpoint. `None` for any other MTU (nothing to measure).
pub fn underlay_probe(conf: &NetConf, peers: &[PeerConfig]) -> Option<IpAddr> {
    match conf.mtu {
        Some(Mtu::Auto) => peers.iter().find_map(|p| p.endpoint).map(|e| e.ip()),
        _ => None,
    }
}

/// The private key a spec carries: an attach loads the configured one or
/// generates one; a check compares a configured one, and has none to
/// compare when it was generated (it cannot be known again).
pub fn spec_key(conf: &NetConf, key: KeyUse) -> Result<Option<PrivateKey>> {
    match (key, conf.private_key.is_none()) {
        (KeyUse::Check, true) => Ok(None),
        _ => conf.load_private_key().map(Some),
    }
}

/// What a verb will do, decided from the configuration and the request
/// before anything is touched: the names, the routes, the record. Only
/// [`Plan::interface_spec`] does I/O (key files, host names, the underlay
/// MTU), and only an attach and a check call it.
#[derive(Debug)]
pub struct Plan<'c> {
    conf: &'c NetConf,
    req: &'c Request,
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
    /// The plan for an attach and a check.
    pub fn new(conf: &'c NetConf, req: &'c Request) -> Result<Self> {
        Ok(Plan {
            conf,
            req,
            name: interface_name(conf, req)?,
            birth: req
                .birth
                .derive(&conf.name, &req.container_id, &req.ifname)?,
        })
    }

    /// The configuration planned for.
    pub fn conf(&self) -> &'c NetConf {
        self.conf
    }

    /// The request planned for.
    pub fn request(&self) -> &'c Request {
        self.req
    }

    /// The plan for CHECK: the names ADD recorded (CHECK's prevResult is
    /// ADD's result, so it cannot tell chained from standalone).
    pub fn recorded(conf: &'c NetConf, req: &'c Request, record: &AttachmentRecord) -> Self {
        Plan {
            conf,
            req,
            name: record.interface.clone(),
            birth: record.birth_name.clone(),
        }
    }

    /// The names of what an attach would have made, for a teardown without
    /// a record: fails only on a birth prefix the adapter did not check (an
    /// invalid `interfaceName` falls back to the request's interface name,
    /// then to the birth name).
    pub fn for_teardown(conf: &'c NetConf, req: &'c Request) -> Result<Self> {
        let birth = req
            .birth
            .derive(&conf.name, &req.container_id, &req.ifname)?;
        let name = interface_name(conf, req)
            .ok()
            .or_else(|| IfName::new(req.ifname.as_str()).ok())
            .unwrap_or_else(|| birth.clone());
        Ok(Plan {
            conf,
            req,
            name,
            birth,
        })
    }

    /// The attachment to ensure or verify at `place`. Reads the key file,
    /// resolves endpoints and preshared key files, and for `"mtu": "auto"`
    /// asks the birthplace for the underlay's MTU.
    pub fn interface_spec(&self, place: &Birthplace, key: KeyUse) -> Result<InterfaceSpec> {
        let conf = self.conf;
        let peers = resolve_peers(conf)?;
        let underlay = underlay_probe(conf, &peers).and_then(|ip| place.underlay_mtu(ip).ok());
        let generated = conf.private_key.is_none();
        let key = spec_key(conf, key)?;
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
            netns: PathBuf::from(&self.req.netns),
            socket_namespace: self.conf.socket_namespace,
            backend,
            userspace_implementation: userspace,
        }
    }

    /// The record an ADD saves.
    pub fn record(&self, a: &Attachment, backend: &Backend, created: u64) -> Record {
        let userspace = match backend {
            Backend::Userspace(u) => Some(u.program.clone()),
            Backend::Kernel | Backend::Engine(_) => None,
        };
        Record {
            network: self.conf.name.clone(),
            container_id: self.req.container_id.clone(),
            ifname: self.req.ifname.clone(),
            attachment: self.attachment_record(a.kind, userspace),
            public_key: a.public_key.map(|k| k.to_base64()).unwrap_or_default(),
            listen_port: self.conf.listen_port,
            addresses: self.conf.addresses.iter().map(|a| a.to_string()).collect(),
            k8s: self.req.labels.clone(),
            created,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::BirthNames;
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

    fn req(ifname: &str) -> Request {
        Request::new("c1", "/var/run/netns/p", ifname, BirthNames::new("wgc"))
    }

    fn birth_name(network: &str, container_id: &str, ifname: &str) -> IfName {
        BirthNames::new("wgc")
            .derive(network, container_id, ifname)
            .unwrap()
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
            interface_name(&c, &req("eth0")).unwrap().as_str(),
            "eth0",
            "standalone uses CNI_IFNAME"
        );
        let chained = conf(json!({"prevResult": {"cniVersion": "1.0.0"}}));
        assert_eq!(
            interface_name(&chained, &req("eth0")).unwrap().as_str(),
            "wg0"
        );
        assert!(interface_name(&chained, &req("wg0")).is_err());
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

    /// Only `"mtu": "auto"` measures the underlay, towards the first peer
    /// that has an endpoint.
    #[test]
    fn the_underlay_is_measured_for_auto_only() {
        let with_endpoints = |mtu: serde_json::Value| {
            conf(json!({"mtu": mtu, "peers": [
                {"publicKey": P1, "allowedIPs": ["10.13.13.0/24"]},
                {"publicKey": P2, "allowedIPs": ["10.14.0.0/16"], "endpoint": "10.78.0.2:51820"}]}))
        };
        let c = with_endpoints(json!("auto"));
        let peers = resolve_peers(&c).unwrap();
        assert_eq!(
            underlay_probe(&c, &peers),
            Some("10.78.0.2".parse().unwrap())
        );
        let c = with_endpoints(json!(1400));
        assert_eq!(underlay_probe(&c, &resolve_peers(&c).unwrap()), None);
        let c = with_endpoints(serde_json::Value::Null);
        assert_eq!(underlay_probe(&c, &resolve_peers(&c).unwrap()), None);
        // No endpoint at all: nothing to measure towards.
        let c = conf(json!({"mtu": "auto"}));
        assert_eq!(underlay_probe(&c, &resolve_peers(&c).unwrap()), None);
    }

    /// An attach always has a key (generated when none is configured); a
    /// check has the configured one, or none when it was generated.
    #[test]
    fn which_key_a_spec_carries() {
        let generated = conf(json!({}));
        assert!(spec_key(&generated, KeyUse::Add).unwrap().is_some());
        assert!(spec_key(&generated, KeyUse::Check).unwrap().is_none());
        let own = PrivateKey::generate().unwrap();
        let given = conf(json!({"privateKey": own.to_base64().as_str()}));
        for use_ in [KeyUse::Add, KeyUse::Check] {
            assert_eq!(
                spec_key(&given, use_).unwrap().map(|k| k.public_key()),
                Some(own.public_key()),
                "{use_:?}"
            );
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
