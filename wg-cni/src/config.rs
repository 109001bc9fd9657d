//! The network configuration: parsed, validated, typed.
//!
//! The original wireguard-cni format is accepted verbatim:
//! `{"type":"wg-cni","address":"10.13.13.210/24","privateKey":"...","peers":[{"endpoint":"1.2.3.4:51820","publicKey":"...","allowedIPs":["10.13.13.0/24"],"persistentKeepalive":"25s"}]}`.
//! Every invalid value is reported with code 7, naming the field and the
//! value, except secrets, which are never echoed. Unknown keys are ignored.
//! See docs/configuration.md for every field.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};
use wg_netns::{IfName, IpNetwork, PresharedKey, PrivateKey, PublicKey};
use zeroize::Zeroize;

use crate::cni::{CniError, Code, Version};

/// Where the private key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Given inline (`privateKey`).
    Inline(PrivateKey),
    /// Read from a file (`privateKeyFile`) at ADD time.
    File(PathBuf),
    /// Generated for each attachment; its public key goes to the state file.
    Generate,
}

/// The interface MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mtu {
    /// The implementation's default (1420).
    Default,
    /// The MTU of the underlay towards the first peer's endpoint, minus 80.
    Auto,
    /// A fixed value.
    Value(u32),
}

/// Where the interface is created, and so where its UDP socket lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketNamespace {
    /// The runtime's namespace (the node): the original's behaviour, the default.
    Host,
    /// The container's namespace.
    Container,
}

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

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConf {
    /// Its public key.
    pub public_key: PublicKey,
    /// Preshared key, inline or from a file.
    pub preshared_key: Option<PresharedKey>,
    /// Endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs.
    pub allowed_ips: Vec<IpNetwork>,
    /// Persistent keepalive.
    pub persistent_keepalive: Option<Duration>,
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
    /// Private key source.
    pub private_key: KeySource,
    /// Listen port.
    pub listen_port: Option<u16>,
    /// Firewall mark.
    pub fwmark: Option<u32>,
    /// MTU.
    pub mtu: Mtu,
    /// Peers.
    pub peers: Vec<PeerConf>,
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
    pub backend: String,
    /// Userspace implementation program.
    pub userspace_implementation: Option<PathBuf>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Log file.
    pub log_file: PathBuf,
    /// DNS settings passed through to the result (standalone).
    pub dns: Option<Value>,
    /// Accept a key file readable by group/others or not owned by us.
    pub allow_insecure_key_file: bool,
    /// What a chained ADD answers.
    pub chained_result: ChainedResult,
}

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/wg-cni";

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> CniError {
    let field = field.into();
    CniError::new(
        Code::InvalidConfig,
        format!("invalid {field}"),
        format!("{field}: {}", reason.into()),
    )
}

fn str_field<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, CniError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid(key, format!("expected a string, got {v}"))),
    }
}

fn bool_field(o: &Map<String, Value>, key: &str, default: bool) -> Result<bool, CniError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(key, format!("expected true or false, got {v}"))),
    }
}

fn uint_field(o: &Map<String, Value>, key: &str, max: u64) -> Result<Option<u64>, CniError> {
    let v = match o.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        // Hex strings such as "0x51" are accepted for marks.
        Some(Value::String(s)) => match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
        Some(_) => None,
    };
    match v {
        Some(n) if n <= max => Ok(Some(n)),
        _ => Err(invalid(
            key,
            format!("{} is not an integer in 0..={max}", o[key]),
        )),
    }
}

/// Parse a keepalive: integer seconds, or a Go-style duration ("25s", "1m",
/// "1m30s", "0"). Must be whole seconds in 0..=65535.
pub fn parse_keepalive(v: &Value) -> Result<Duration, String> {
    let d = match v {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{n} is not a whole number of seconds"))?,
        Value::String(s) => parse_go_duration(s)
            .ok_or_else(|| format!("{s:?} is not a duration such as \"25s\""))?,
        other => return Err(format!("{other} is not a duration")),
    };
    if d.subsec_nanos() != 0 || d.as_secs() > 65535 {
        return Err(format!(
            "{d:?} is not a whole number of seconds in 0..=65535"
        ));
    }
    Ok(d)
}

/// A subset of Go's `time.ParseDuration`: unsigned decimal numbers with units
/// h, m, s, ms, us/µs, ns; "0" alone is zero.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let num: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let nanos = num * nanos_per;
        if !nanos.is_finite() || nanos > 1e18 {
            return None;
        }
        total = total.checked_add(Duration::from_nanos(nanos.round() as u64))?;
    }
    Some(total)
}

fn parse_net(field: &str, s: &str) -> Result<IpNetwork, CniError> {
    // A prefix length is required, as Go's net.ParseCIDR requires it.
    s.contains('/')
        .then(|| s.parse::<IpNetwork>().ok())
        .flatten()
        .ok_or(())
        .map_err(|_| {
            invalid(
                field,
                format!("{s:?} is not an address with a prefix length such as 10.13.13.210/24"),
            )
        })
}

fn parse_endpoint(field: &str, s: &str) -> Result<SocketAddr, CniError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    // host:port, resolved like the original (Go's net.ResolveUDPAddr).
    if s.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
    {
        if let Ok(mut it) = s.to_socket_addrs() {
            if let Some(a) = it.next() {
                return Ok(a);
            }
        }
        return Err(invalid(field, format!("{s:?} does not resolve")));
    }
    Err(invalid(
        field,
        format!("{s:?} is not HOST:PORT, such as 192.0.2.1:51820 or [fd00::1]:51820"),
    ))
}

fn take_secret(
    o: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<zeroize::Zeroizing<String>>, CniError> {
    match o.get_mut(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let out = zeroize::Zeroizing::new(s.clone());
            s.zeroize();
            Ok(Some(out))
        }
        Some(_) => Err(invalid(key, "expected a base64 string (value not shown)")),
    }
}

/// Check a key file's ownership and permissions before reading it.
pub fn check_key_file(
    field: &str,
    path: &std::path::Path,
    allow_insecure: bool,
) -> Result<(), CniError> {
    let meta =
        std::fs::metadata(path).map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    if allow_insecure {
        return Ok(());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(invalid(
            field,
            format!(
                "{} is owned by uid {}, not {me}; fix it or set allowInsecureKeyFile",
                path.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(invalid(
            field,
            format!(
                "{} is accessible by group or others (mode {:o}); chmod 600 it or set allowInsecureKeyFile",
                path.display(),
                meta.mode() & 0o777
            ),
        ));
    }
    Ok(())
}

impl NetConf {
    /// Parse a configuration from stdin bytes. Secret strings inside the
    /// parsed JSON are wiped once read.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let mut v: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::Decode,
                "failed to decode the network configuration",
                e.to_string(),
            )
        })?;
        let o = v.as_object_mut().ok_or_else(|| {
            CniError::new(
                Code::Decode,
                "failed to decode the network configuration",
                "not a JSON object",
            )
        })?;
        let result = Self::from_object(o);
        // Wipe any secret left in the JSON tree, whatever happened.
        wipe_secrets(&mut v);
        result
    }

    fn from_object(o: &mut Map<String, Value>) -> Result<NetConf, CniError> {
        let version_str = str_field(o, "cniVersion")?
            .ok_or_else(|| invalid("cniVersion", "missing"))?
            .to_string();
        let cni_version = Version::parse(&version_str).ok_or_else(|| {
            CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!(
                    "cniVersion {version_str:?} is not one of {}",
                    crate::cni::SUPPORTED_VERSIONS.join(", ")
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
            (Some(k), None) => KeySource::Inline(
                PrivateKey::from_base64(k.trim())
                    .map_err(|e| invalid("privateKey", format!("{e} (value not shown)")))?,
            ),
            (None, Some(p)) => {
                if !p.is_absolute() {
                    return Err(invalid(
                        "privateKeyFile",
                        format!("{} is not an absolute path", p.display()),
                    ));
                }
                KeySource::File(p)
            }
            (None, None) => KeySource::Generate,
        };

        let listen_port = uint_field(o, "listenPort", u64::from(u16::MAX))?.map(|p| p as u16);
        let fwmark = uint_field(o, "fwmark", u64::from(u32::MAX))?.map(|m| m as u32);
        let mtu = match o.get("mtu") {
            None | Some(Value::Null) => Mtu::Default,
            Some(Value::String(s)) if s == "auto" => Mtu::Auto,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(m) if (576..=65535).contains(&m) => Mtu::Value(m as u32),
                _ => return Err(invalid("mtu", format!("{n} is not in 576..=65535"))),
            },
            Some(v) => return Err(invalid("mtu", format!("{v} is not a number or \"auto\""))),
        };

        let mut peers = Vec::new();
        let peer_values: Vec<Value> = match o.get_mut("peers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => std::mem::take(items),
            Some(v) => return Err(invalid("peers", format!("expected a list, got {v}"))),
        };
        let mut peer_values = peer_values;
        for (i, p) in peer_values.iter_mut().enumerate() {
            let field = |f: &str| format!("peers[{i}].{f}");
            let po = p
                .as_object_mut()
                .ok_or_else(|| invalid(format!("peers[{i}]"), "expected an object"))?;
            let pk = str_field(po, "publicKey")?
                .ok_or_else(|| invalid(field("publicKey"), "missing"))?;
            let public_key = PublicKey::from_base64(pk.trim())
                .map_err(|e| invalid(field("publicKey"), format!("{pk:?}: {e}")))?;
            let psk_inline = take_secret(po, "presharedKey")?;
            let psk_file = str_field(po, "presharedKeyFile")?.map(PathBuf::from);
            let preshared_key = match (psk_inline, psk_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        field("presharedKey"),
                        "give presharedKey or presharedKeyFile, not both",
                    ))
                }
                (Some(k), None) => Some(PresharedKey::from_base64(k.trim()).map_err(|e| {
                    invalid(field("presharedKey"), format!("{e} (value not shown)"))
                })?),
                (None, Some(path)) => {
                    check_key_file(&field("presharedKeyFile"), &path, allow_insecure_key_file)?;
                    Some(
                        PresharedKey::from_file(&path)
                            .map_err(|e| invalid(field("presharedKeyFile"), e.to_string()))?,
                    )
                }
                (None, None) => None,
            };
            let endpoint = match str_field(po, "endpoint")? {
                Some(e) => Some(parse_endpoint(&field("endpoint"), e)?),
                None => None,
            };
            let mut allowed_ips = Vec::new();
            match po.get("allowedIPs") {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    for (j, a) in items.iter().enumerate() {
                        let f = field(&format!("allowedIPs[{j}]"));
                        let s = a
                            .as_str()
                            .ok_or_else(|| invalid(&f, format!("expected a string, got {a}")))?;
                        allowed_ips.push(parse_net(&f, s)?);
                    }
                }
                Some(v) => {
                    return Err(invalid(
                        field("allowedIPs"),
                        format!("expected a list, got {v}"),
                    ))
                }
            }
            let persistent_keepalive = match po.get("persistentKeepalive") {
                None | Some(Value::Null) => None,
                Some(v) => {
                    Some(parse_keepalive(v).map_err(|e| invalid(field("persistentKeepalive"), e))?)
                }
            };
            peers.push(PeerConf {
                public_key,
                preshared_key,
                endpoint,
                allowed_ips,
                persistent_keepalive,
            });
        }
        // One pass with a set: a configuration can list thousands of peers.
        let mut seen = std::collections::HashSet::with_capacity(peers.len());
        for (i, a) in peers.iter().enumerate() {
            if !seen.insert(a.public_key) {
                return Err(invalid(
                    format!("peers[{i}].publicKey"),
                    format!("{} is listed twice", a.public_key),
                ));
            }
        }
        if let KeySource::Inline(k) = &private_key {
            // Derived once (a scalar multiplication), not once per peer.
            let own = k.public_key();
            if let Some(i) = peers.iter().position(|p| p.public_key == own) {
                return Err(invalid(
                    format!("peers[{i}].publicKey"),
                    "is this interface's own public key",
                ));
            }
        }
        // Put the (wiped) peers back so the caller's JSON stays whole.
        o.insert("peers".into(), Value::Array(peer_values));

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
            None | Some("host") => SocketNamespace::Host,
            Some("container") => SocketNamespace::Container,
            Some(other) => {
                return Err(invalid(
                    "socketNamespace",
                    format!("{other:?} is not \"host\" or \"container\""),
                ))
            }
        };
        let interface_name = IfName::new(str_field(o, "interfaceName")?.unwrap_or("wg0"))
            .map_err(|e| invalid("interfaceName", e.to_string()))?;
        let backend = str_field(o, "backend")?.unwrap_or("auto").to_string();
        if !["auto", "kernel", "userspace"].contains(&backend.as_str()) {
            return Err(invalid(
                "backend",
                format!("{backend:?} is not \"auto\", \"kernel\" or \"userspace\""),
            ));
        }
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
                return Err(CniError::new(
                    Code::Decode,
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
            allow_insecure_key_file,
            chained_result,
        })
    }

    /// The private key for an ADD: inline, read from the file (after the
    /// ownership and permission check), or freshly generated.
    pub fn load_private_key(&self) -> Result<PrivateKey, CniError> {
        match &self.private_key {
            KeySource::Inline(k) => Ok(k.clone()),
            KeySource::File(p) => {
                check_key_file("privateKeyFile", p, self.allow_insecure_key_file)?;
                PrivateKey::from_file(p).map_err(|e| invalid("privateKeyFile", e.to_string()))
            }
            KeySource::Generate => PrivateKey::generate()
                .map_err(|e| CniError::new(Code::Io, "key generation failed", e.to_string())),
        }
    }
}

fn wipe_secrets(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, val) in o.iter_mut() {
                if k == "privateKey" || k == "presharedKey" {
                    if let Value::String(s) = val {
                        s.zeroize();
                    }
                } else {
                    wipe_secrets(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(wipe_secrets),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const K1: &str = "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E=";
    const P1: &str = "jGGhjGIEbR0Noo8MgjAVh+m5pq4GxD9CZDAl/zsfZF0=";
    const P2: &str = "Jqbg1u7/1fK5VU2hadmxLzMmrwCPFe7fJEIzEnLWrl0=";

    fn parse(v: Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    #[test]
    fn the_original_format_verbatim() {
        let c = parse(json!({"cniVersion": "0.4.0", "name": "wg", "type": "wg-cni", "address": "10.13.13.210/24",
            "privateKey": K1,
            "peers": [{"endpoint": "1.2.3.4:51820", "publicKey": P2, "allowedIPs": ["10.13.13.0/24"], "persistentKeepalive": "25s"}]}))
        .unwrap();
        assert_eq!(
            c.addresses,
            vec!["10.13.13.210/24".parse::<IpNetwork>().unwrap()]
        );
        assert!(matches!(c.private_key, KeySource::Inline(_)));
        assert_eq!(
            c.peers[0].persistent_keepalive,
            Some(Duration::from_secs(25))
        );
        assert_eq!(c.peers[0].endpoint, Some("1.2.3.4:51820".parse().unwrap()));
        assert_eq!(c.interface_name.as_str(), "wg0");
        assert_eq!(c.socket_namespace, SocketNamespace::Host);
        assert!(c.routes_from_allowed_ips);
    }

    #[test]
    fn everything_beyond_it() {
        let c = parse(json!({"cniVersion": "1.1.0", "name": "wg", "type": "wg-cni",
            "addresses": ["10.13.13.2/24", "fd13::2/64"], "listenPort": 51820, "fwmark": "0x51", "mtu": "auto",
            "table": 100, "socketNamespace": "container", "interfaceName": "wgx", "backend": "userspace",
            "routes": [{"dst": "192.168.0.0/16"}, {"dst": "::/0", "gw": "fd13::1"}], "routesFromAllowedIPs": false,
            "peers": [{"publicKey": P1, "presharedKey": K1, "endpoint": "[fd00::1]:51820", "allowedIPs": ["0.0.0.0/0", "::/0"], "persistentKeepalive": 25}],
            "dns": {"nameservers": ["10.13.13.1"]}, "unknownKey": {"passes": true}}))
        .unwrap();
        assert_eq!(c.addresses.len(), 2);
        assert_eq!(c.private_key, KeySource::Generate);
        assert_eq!(
            (c.listen_port, c.fwmark, c.mtu, c.table),
            (Some(51820), Some(0x51), Mtu::Auto, Some(100))
        );
        assert_eq!(c.socket_namespace, SocketNamespace::Container);
        assert_eq!(
            c.peers[0].persistent_keepalive,
            Some(Duration::from_secs(25))
        );
        assert!(c.peers[0].preshared_key.is_some());
        assert_eq!(c.routes[1].gw, Some("fd13::1".parse().unwrap()));
        assert!(!c.routes_from_allowed_ips);
    }

    #[test]
    fn errors_name_the_field_and_never_the_secret() {
        let bad_key = "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43F=";
        let cases = [
            (
                json!({"cniVersion": "9.9.9", "name": "n"}),
                Code::IncompatibleVersion,
                "cniVersion",
            ),
            (json!({"cniVersion": "1.0.0"}), Code::InvalidConfig, "name"),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "address": "10.0.0.1"}),
                Code::InvalidConfig,
                "address",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "privateKey": bad_key}),
                Code::InvalidConfig,
                "privateKey",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": "nope"}]}),
                Code::InvalidConfig,
                "peers[0].publicKey",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1, "presharedKey": bad_key}]}),
                Code::InvalidConfig,
                "peers[0].presharedKey",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1, "endpoint": "1.2.3.4"}]}),
                Code::InvalidConfig,
                "peers[0].endpoint",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1, "allowedIPs": ["x"]}]}),
                Code::InvalidConfig,
                "peers[0].allowedIPs[0]",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1, "persistentKeepalive": "1.5s"}]}),
                Code::InvalidConfig,
                "peers[0].persistentKeepalive",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1}, {"publicKey": P1}]}),
                Code::InvalidConfig,
                "peers[1].publicKey",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "listenPort": 70000}),
                Code::InvalidConfig,
                "listenPort",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "mtu": 100}),
                Code::InvalidConfig,
                "mtu",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "socketNamespace": "pod"}),
                Code::InvalidConfig,
                "socketNamespace",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "interfaceName": "waytoolonginterface"}),
                Code::InvalidConfig,
                "interfaceName",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "stateDir": "relative"}),
                Code::InvalidConfig,
                "stateDir",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "privateKey": K1, "privateKeyFile": "/k"}),
                Code::InvalidConfig,
                "privateKey",
            ),
            (
                json!({"cniVersion": "1.0.0", "name": "n", "table": 0}),
                Code::InvalidConfig,
                "table",
            ),
        ];
        for (cfg, code, field) in cases {
            let e = parse(cfg.clone()).unwrap_err();
            assert_eq!(e.code, code, "{cfg}: {e}");
            assert!(
                e.details.contains(field),
                "{cfg}: {e} does not name {field}"
            );
            assert!(
                !e.to_string().contains(bad_key) && !e.to_string().contains(K1),
                "{e} leaks a key"
            );
        }
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, Code::Decode);
        assert_eq!(NetConf::parse(b"[]").unwrap_err().code, Code::Decode);
    }

    #[test]
    fn debug_of_the_parsed_configuration_shows_no_secret() {
        let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "privateKey": K1,
            "peers": [{"publicKey": P2, "presharedKey": K1}]}))
        .unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains(K1), "{printed}");
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn go_durations() {
        for (s, secs) in [
            ("25s", 25),
            ("1m", 60),
            ("1m30s", 90),
            ("0", 0),
            ("2h", 7200),
            ("1500ms", 1),
        ] {
            let d = parse_go_duration(s).unwrap();
            assert_eq!(d.as_secs(), secs, "{s}");
        }
        for s in ["", "s", "25", "25x", "-5s", "1.2.3s"] {
            assert!(parse_go_duration(s).is_none(), "{s}");
        }
        assert!(parse_keepalive(&json!("1500ms")).is_err());
        assert_eq!(
            parse_keepalive(&json!(25)).unwrap(),
            Duration::from_secs(25)
        );
        assert!(parse_keepalive(&json!(70000)).is_err());
    }

    #[test]
    fn key_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("wgcni-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("key");
        std::fs::write(&f, format!("{K1}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "privateKeyFile": f})).unwrap();
        let e = c.load_private_key().unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(e.details.contains("privateKeyFile") && e.details.contains("644"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(c.load_private_key().unwrap().public_key().to_base64(), P1);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "privateKeyFile": f, "allowInsecureKeyFile": true})).unwrap();
        assert!(c.load_private_key().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
