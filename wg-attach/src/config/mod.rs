//! The network configuration: parsed, validated, typed.
//!
//! The original wireguard-cni format is accepted verbatim:
//! `{"type":"wg-cni","address":"10.13.13.210/24","privateKey":"...","peers":[{"endpoint":"1.2.3.4:51820","publicKey":"...","allowedIPs":["10.13.13.0/24"],"persistentKeepalive":"25s"}]}`.
//! Every invalid value is reported with code 7, naming the field and the
//! value, except secrets, which are never echoed. Unknown keys are ignored.
//! See docs/configuration.md for every field.
//!
//! `"network": "NAME"` or `"managed": true` selects managed mode ([`Mode`]):
//! the node agent owns the interface, and the static fields that describe one
//! are refused (code 7, naming the field).
//!
//! Parsing does no I/O: host-name endpoints, `privateKeyFile` and
//! `presharedKeyFile` are kept as names and paths, resolved and read only by
//! the verbs that configure a device (ADD, CHECK). DEL, GC and STATUS never
//! depend on DNS or on a key file still existing.

use std::path::PathBuf;

use serde_json::{Map, Value};
use wg_netns::{
    BackendChoice, IfName, IpNetwork, KeyFileCheck, KeySource, PeerSpec, PrivateKey,
    SocketNamespace,
};

use crate::error::{Error, Kind};
pub use crate::units::Mtu;

mod duration;
mod fields;
mod managed;
mod peers;
mod teardown;
#[cfg(test)]
mod tests;
mod version;

pub use duration::{parse_go_duration, parse_keepalive};
use fields::{bool_field, invalid, parse_net, str_field, take_secret, uint_field, wipe_secrets};
pub use managed::is_dns_label;
pub use managed::{ManagedConf, Mode, PodAnnotations, DEFAULT_AGENT_TIMEOUT};
pub use version::{Version, SUPPORTED_VERSIONS};

/// What a chained ADD answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainedResult {
    /// prevResult plus the WireGuard interface, its IPs and routes (the default).
    Append,
    /// prevResult unchanged, as the original wireguard-cni answered. For chains
    /// whose earlier plugins' CHECK assumes every result IP is on CNI_IFNAME
    /// (the reference bridge plugin does).
    Passthrough,
}

/// An explicit route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConf {
    /// Destination.
    pub dst: IpNetwork,
    /// Gateway, if any.
    pub gw: Option<std::net::IpAddr>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: Version,
    /// `name` of the network.
    pub name: String,
    /// `prevResult`, as JSON to append to.
    pub prev_result: Option<Value>,
    /// Addresses (`address` and `addresses`).
    pub addresses: Vec<IpNetwork>,
    /// Private key source; `None`: generated for each attachment (its
    /// public key goes to the state record).
    pub private_key: Option<KeySource<PrivateKey>>,
    /// Listen port.
    pub listen_port: Option<u16>,
    /// Firewall mark.
    pub fwmark: Option<u32>,
    /// MTU: `None` leaves the implementation's default (1420). The CNI
    /// format takes numbers from 576 (its own range since the original
    /// plugin), the resources from 1280.
    pub mtu: Option<Mtu>,
    /// Peers, unresolved.
    pub peers: Vec<PeerSpec>,
    /// Explicit routes.
    pub routes: Vec<RouteConf>,
    /// Install a route for every peer allowed IP (default true).
    pub routes_from_allowed_ips: bool,
    /// Routing table for the routes (default main).
    pub table: Option<u32>,
    /// Where the interface is born.
    pub socket_namespace: SocketNamespace,
    /// Interface name in chained mode (default `wg0`).
    pub interface_name: IfName,
    /// Backend choice: "auto", "kernel", "userspace".
    pub backend: BackendChoice,
    /// Userspace implementation program.
    pub userspace_implementation: Option<PathBuf>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Log file.
    pub log_file: PathBuf,
    /// DNS settings passed through to the result (standalone).
    pub dns: Option<Value>,
    /// How key files are checked (`allowInsecureKeyFile`).
    pub key_file_check: KeyFileCheck,
    /// What a chained ADD answers.
    pub chained_result: ChainedResult,
    /// Static (the fields above describe the interface) or managed (the
    /// node agent makes it; the interface fields above are all defaults).
    pub mode: Mode,
}

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/wg-cni";

impl NetConf {
    /// Parse a configuration from stdin bytes. Secret strings inside the
    /// parsed JSON are wiped once read.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, Error> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| {
            Error::new(
                Kind::Decode,
                "failed to decode the network configuration",
                e.to_string(),
            )
        })?;
        Self::from_json(v)
    }

    /// The configuration an adapter assembled as JSON (wg-netavark from
    /// its options), validated by the same parser, without writing it out
    /// as text first. Secret strings in `v` are wiped once read.
    pub fn from_json(mut v: Value) -> Result<NetConf, Error> {
        let o = v.as_object_mut().ok_or_else(|| {
            Error::new(
                Kind::Decode,
                "failed to decode the network configuration",
                "not a JSON object",
            )
        })?;
        let result = Self::from_object(o);
        // Wipe any secret left in the JSON tree, whatever happened.
        wipe_secrets(&mut v);
        result
    }

    fn from_object(o: &mut Map<String, Value>) -> Result<NetConf, Error> {
        let version_str = str_field(o, "cniVersion")?
            .ok_or_else(|| invalid("cniVersion", "missing"))?
            .to_string();
        let cni_version = Version::parse(&version_str).ok_or_else(|| {
            Error::new(
                Kind::Version,
                "incompatible CNI version",
                format!(
                    "cniVersion {version_str:?} is not one of {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            )
        })?;
        let name = str_field(o, "name")?.unwrap_or_default().to_string();
        if name.is_empty() {
            return Err(invalid("name", "missing or empty"));
        }
        if name.contains('/') || name.contains("..") {
            return Err(invalid(
                "name",
                format!("{name:?} may not contain '/' or '..'"),
            ));
        }
        // Before the static fields: in managed mode their presence is the
        // error, whatever their value.
        let mode = managed::parse_mode(o)?;

        let mut addresses = Vec::new();
        if let Some(a) = str_field(o, "address")? {
            addresses.push(parse_net("address", a)?);
        }
        match o.get("addresses") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, a) in items.iter().enumerate() {
                    let field = format!("addresses[{i}]");
                    let s = a
                        .as_str()
                        .ok_or_else(|| invalid(&field, format!("expected a string, got {a}")))?;
                    addresses.push(parse_net(&field, s)?);
                }
            }
            Some(v) => return Err(invalid("addresses", format!("expected a list, got {v}"))),
        }

        let allow_insecure_key_file = bool_field(o, "allowInsecureKeyFile", false)?;
        let inline = take_secret(o, "privateKey")?;
        let file = str_field(o, "privateKeyFile")?.map(PathBuf::from);
        let private_key = match (inline, file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "privateKey",
                    "give privateKey or privateKeyFile, not both",
                ))
            }
            (Some(k), None) => Some(KeySource::Inline(
                PrivateKey::from_base64(k.trim())
                    .map_err(|e| invalid("privateKey", format!("{e} (value not shown)")))?,
            )),
            (None, Some(p)) if !p.is_absolute() => {
                return Err(invalid(
                    "privateKeyFile",
                    format!("{} is not an absolute path", p.display()),
                ))
            }
            (None, Some(p)) => Some(KeySource::File(p)),
            (None, None) => None,
        };

        let listen_port = uint_field(o, "listenPort", u64::from(u16::MAX))?.map(|p| p as u16);
        let fwmark = uint_field(o, "fwmark", u64::from(u32::MAX))?.map(|m| m as u32);
        let mtu = match o.get("mtu") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s == "auto" => Some(Mtu::Auto),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(m) if (576..=65535).contains(&m) => Some(Mtu::Bytes(m as u16)),
                _ => return Err(invalid("mtu", format!("{n} is not in 576..=65535"))),
            },
            Some(v) => return Err(invalid("mtu", format!("{v} is not a number or \"auto\""))),
        };

        let peers = peers::parse_peers(o)?;
        if let Some(KeySource::Inline(k)) = &private_key {
            // Derived once (a scalar multiplication), not once per peer.
            let own = k.public_key();
            if let Some(i) = peers.iter().position(|p| p.public_key == own) {
                return Err(invalid(
                    format!("peers[{i}].publicKey"),
                    "is this interface's own public key",
                ));
            }
        }

        let mut routes = Vec::new();
        match o.get("routes") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, r) in items.iter().enumerate() {
                    let field = format!("routes[{i}]");
                    let ro = r
                        .as_object()
                        .ok_or_else(|| invalid(&field, "expected an object with \"dst\""))?;
                    let dst = str_field(ro, "dst")?
                        .ok_or_else(|| invalid(format!("{field}.dst"), "missing"))?;
                    let dst = parse_net(&format!("{field}.dst"), dst)?;
                    let gw = match str_field(ro, "gw")? {
                        Some(g) => Some(g.parse().map_err(|_| {
                            invalid(format!("{field}.gw"), format!("{g:?} is not an IP address"))
                        })?),
                        None => None,
                    };
                    routes.push(RouteConf { dst, gw });
                }
            }
            Some(v) => return Err(invalid("routes", format!("expected a list, got {v}"))),
        }
        let table = uint_field(o, "table", u64::from(u32::MAX))?.map(|t| t as u32);
        if table == Some(0) {
            return Err(invalid("table", "0 is not a routing table"));
        }
        let socket_namespace = match str_field(o, "socketNamespace")? {
            None => SocketNamespace::Host,
            Some(s) => s.parse().map_err(|_| {
                invalid(
                    "socketNamespace",
                    format!("{s:?} is not \"host\" or \"container\""),
                )
            })?,
        };
        let interface_name = IfName::new(str_field(o, "interfaceName")?.unwrap_or("wg0"))
            .map_err(|e| invalid("interfaceName", e.to_string()))?;
        let backend = match str_field(o, "backend")? {
            None => BackendChoice::Auto,
            Some(b) => b.parse().ok().filter(|_| !b.is_empty()).ok_or_else(|| {
                invalid(
                    "backend",
                    format!("{b:?} is not \"auto\", \"kernel\" or \"userspace\""),
                )
            })?,
        };
        let userspace_implementation = str_field(o, "userspaceImplementation")?.map(PathBuf::from);
        let chained_result = match str_field(o, "chainedResult")? {
            None | Some("append") => ChainedResult::Append,
            Some("passthrough") => ChainedResult::Passthrough,
            Some(other) => {
                return Err(invalid(
                    "chainedResult",
                    format!("{other:?} is not \"append\" or \"passthrough\""),
                ))
            }
        };
        let state_dir = PathBuf::from(str_field(o, "stateDir")?.unwrap_or(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            return Err(invalid(
                "stateDir",
                format!("{} is not an absolute path", state_dir.display()),
            ));
        }
        let log_file = match str_field(o, "logFile")? {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => state_dir.join("wg-cni.log"),
        };
        let prev_result = match o.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(v) => {
                return Err(Error::new(
                    Kind::Decode,
                    "invalid prevResult",
                    format!("expected an object, got {v}"),
                ))
            }
        };
        Ok(NetConf {
            cni_version,
            name,
            prev_result,
            addresses,
            private_key,
            listen_port,
            fwmark,
            mtu,
            peers,
            routes,
            routes_from_allowed_ips: bool_field(o, "routesFromAllowedIPs", true)?,
            table,
            socket_namespace,
            interface_name,
            backend,
            userspace_implementation,
            state_dir,
            log_file,
            dns: o.get("dns").filter(|d| d.is_object()).cloned(),
            key_file_check: if allow_insecure_key_file {
                KeyFileCheck::AllowInsecure
            } else {
                KeyFileCheck::OwnerOnly
            },
            chained_result,
            mode,
        })
    }

    /// The private key for an ADD: inline, read from the file (after the
    /// ownership and permission check), or freshly generated.
    pub fn load_private_key(&self) -> Result<PrivateKey, Error> {
        match &self.private_key {
            Some(src) => src
                .load(self.key_file_check)
                .map_err(|e| invalid("privateKeyFile", key_file_hint(e.to_string()))),
            None => PrivateKey::generate()
                .map_err(|e| Error::new(Kind::Io, "key generation failed", e.to_string())),
        }
    }
}

/// Say how to accept a key file the check refused.
pub(crate) fn key_file_hint(msg: String) -> String {
    if msg.contains("owned by uid") || msg.contains("accessible by group") {
        format!("{msg}; fix it or set allowInsecureKeyFile")
    } else {
        msg
    }
}
