//! The JSON netavark and a plugin exchange, declared here with serde (no
//! dependency on the netavark crate).
//!
//! Source: netavark 2.1.0, `src/network/types.rs` (`Network`, `Subnet`,
//! `PerNetworkOptions`, `NetworkPluginExec`, `StatusBlock`, `NetInterface`,
//! `NetAddress`), `src/plugin.rs` (`Info`, the argv protocol) and
//! `src/error/mod.rs` (`JsonError`), with `plugin-API.md`.
//!
//! Reading is lenient where netavark is: fields it declares as `Option`
//! may be missing or `null`. Fields this plugin does not use are kept as
//! JSON (`other`), so `create` hands back a network exactly as it got it
//! plus its own changes, and a newer netavark's additions survive.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The plugin API version this plugin speaks (`info`'s `api_version`).
pub const API_VERSION: &str = "1.0.0";

/// A network (netavark's `Network`): `create`'s input and output, and part
/// of `setup`/`teardown`'s input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// The network's name (set by podman; never changed by a plugin).
    pub name: String,
    /// The network's id (set by podman; never changed by a plugin).
    pub id: String,
    /// The driver: the plugin's file name, `wg-netavark`.
    pub driver: String,
    /// Subnets (`podman network create --subnet`); podman's IPAM allocates
    /// container addresses from them when `ipam_options.driver` is
    /// `host-local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnets: Option<Vec<Subnet>>,
    /// The driver options (`podman network create -o KEY=VALUE`): all
    /// strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
    /// IPAM options (`driver`: `host-local`, `dhcp` or `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam_options: Option<BTreeMap<String, String>>,
    /// Every other field (`dns_enabled`, `internal`, `ipv6_enabled`,
    /// `network_interface`, `created`, `routes`, `labels`, ...), as given.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// A subnet of a network (netavark's `Subnet`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subnet {
    /// The subnet in CIDR form.
    pub subnet: String,
    /// Its gateway, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Every other field (`lease_range`), as given.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The container's options for one network (netavark's
/// `PerNetworkOptions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerNetworkOptions {
    /// The interface's name in the container (required).
    pub interface_name: String,
    /// Addresses podman's IPAM allocated (or the user asked for), without
    /// prefix lengths: those come from the network's subnets.
    #[serde(default)]
    pub static_ips: Option<Vec<IpAddr>>,
    /// A MAC address: meaningless for WireGuard (a layer-3 device), ignored.
    #[serde(default)]
    pub static_mac: Option<String>,
    /// DNS aliases: this plugin runs no DNS, ignored.
    #[serde(default)]
    pub aliases: Option<Vec<String>>,
    /// Driver options for this container only; they override the network's.
    #[serde(default)]
    pub options: Option<BTreeMap<String, String>>,
    /// Every other field, as given.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// `setup` and `teardown`'s stdin (netavark's `NetworkPluginExec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkPluginExec {
    /// The container's id.
    pub container_id: String,
    /// The container's name.
    pub container_name: String,
    /// Port mappings: a WireGuard network forwards no host ports, ignored.
    #[serde(default)]
    pub port_mappings: Option<Value>,
    /// The network.
    pub network: Network,
    /// The container's options for this network.
    pub network_options: PerNetworkOptions,
}

/// `setup`'s stdout (netavark's `StatusBlock`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusBlock {
    /// Search domains for the container's resolv.conf.
    pub dns_search_domains: Vec<String>,
    /// Name servers for the container's resolv.conf.
    pub dns_server_ips: Vec<IpAddr>,
    /// The interfaces made in the container, by name.
    pub interfaces: BTreeMap<String, NetInterface>,
}

/// One interface of a [`StatusBlock`] (netavark's `NetInterface`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetInterface {
    /// The MAC address: empty, WireGuard has none (podman reads an empty
    /// string as "no hardware address").
    pub mac_address: String,
    /// The interface's addresses.
    pub subnets: Vec<NetAddress>,
}

/// An address of a [`NetInterface`] (netavark's `NetAddress`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetAddress {
    /// The address with its prefix length, e.g. `10.77.0.2/24`.
    pub ipnet: String,
    /// A gateway: none on a WireGuard interface (omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// `info`'s stdout (netavark's `plugin::Info`, with one extra field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// This plugin's version.
    pub version: String,
    /// [`API_VERSION`].
    pub api_version: String,
    /// What the plugin does (an extra field, which the API allows).
    pub description: String,
}

/// The error answer on stdout, with a non-zero exit (netavark's
/// `JsonError`); netavark shows `error` to the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonError {
    /// The message.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The setup input of netavark's plugin-API.md reads, and a network
    /// round-trips with the fields this plugin does not know.
    #[test]
    fn documented_shapes_read_and_round_trip() {
        let input = json!({
            "container_id": "752947ff91f961eb3cb47ffe9315016979f3ffbec09e4d96a4fae3fb03391697",
            "container_name": "testctr",
            "port_mappings": [{"container_port": 80, "host_ip": "127.0.0.1", "host_port": 8080,
                               "protocol": "tcp", "range": 1}],
            "network": {"dns_enabled": false, "driver": "bridge",
                "id": "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9",
                "internal": false, "ipv6_enabled": false, "name": "podman",
                "network_interface": "podman0", "options": null,
                "ipam_options": {"driver": "host-local"},
                "subnets": [{"gateway": "10.88.0.1", "lease_range": null, "subnet": "10.88.0.0/16"}],
                "network_dns_servers": null},
            "network_options": {"aliases": ["752947ff91f9"], "interface_name": "eth0",
                "static_ips": ["10.88.0.50"], "static_mac": "aa:bb:cc:dd:aa:00"}
        });
        let exec: NetworkPluginExec = serde_json::from_value(input).unwrap();
        assert_eq!(exec.network_options.interface_name, "eth0");
        assert_eq!(
            exec.network_options.static_ips,
            Some(vec!["10.88.0.50".parse().unwrap()])
        );
        let subnets = exec.network.subnets.clone().unwrap();
        assert_eq!(subnets[0].subnet, "10.88.0.0/16");
        let back = serde_json::to_value(&exec.network).unwrap();
        assert_eq!(back["dns_enabled"], json!(false));
        assert_eq!(back["network_interface"], json!("podman0"));
        assert_eq!(back["network_dns_servers"], Value::Null);
        // netavark's own minimal form: optional fields missing.
        let minimal = json!({"container_id": "c", "container_name": "n",
            "network": {"name": "w", "id": "i", "driver": "wg-netavark", "dns_enabled": false,
                        "internal": false, "ipv6_enabled": false},
            "network_options": {"interface_name": "wg0"}});
        let exec: NetworkPluginExec = serde_json::from_value(minimal).unwrap();
        assert!(exec.network.options.is_none());
    }

    #[test]
    fn status_block_has_netavarks_field_names() {
        let s = StatusBlock {
            dns_search_domains: vec![],
            dns_server_ips: vec![],
            interfaces: BTreeMap::from([(
                "wg0".to_string(),
                NetInterface {
                    mac_address: String::new(),
                    subnets: vec![NetAddress {
                        ipnet: "10.77.0.2/24".into(),
                        gateway: None,
                    }],
                },
            )]),
        };
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"dns_search_domains": [], "dns_server_ips": [],
                   "interfaces": {"wg0": {"mac_address": "", "subnets": [{"ipnet": "10.77.0.2/24"}]}}})
        );
    }
}
