//! From netavark's network options to wg-cni's validated configuration.
//!
//! netavark options are a flat map of strings (`podman network create -o
//! KEY=VALUE`). They are translated into the wg-cni configuration schema
//! (docs/configuration.md) and parsed by [`NetConf::parse`], so there is one
//! parser and one set of rules and error messages:
//!
//! 1. `config`: a whole wg-cni configuration object as a JSON string (the
//!    base; `cniVersion`, `name` and `type` are filled in);
//! 2. the flat options of the network, each replacing one wg-cni field
//!    ([`OPTIONS`]);
//! 3. the container's addresses from `static_ips`, with the prefix length of
//!    the network subnet that holds each (podman's IPAM allocates them);
//! 4. the container's own options (`network_options.options`), same keys.
//!
//! Inline secrets (`private_key`, `privateKey`, `presharedKey`) are refused:
//! podman keeps network options in a world-readable file. Keys come from
//! files (`private_key_file`, `presharedKeyFile`) or are generated per
//! container. Unknown options are refused, so a typo is an error and not a
//! silently ignored setting.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{json, Map, Value};
use wg_attach::config::NetConf;
use wg_attach::BirthNames;
use wg_netns::IpNetwork;

use crate::error::Error;
use crate::types::{Network, PerNetworkOptions};

/// Where attachment records and the log go unless `state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/wg-netavark";
/// The default prefix of birth names (and userspace socket names).
pub const DEFAULT_BIRTH_PREFIX: &str = "wgn";

/// How a flat option's string becomes a wg-cni JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Passed as a string (wg-cni also reads numbers from strings).
    Text,
    /// `true` or `false`.
    Bool,
    /// A JSON document (a list of peers or routes).
    Json,
    /// A number, or `auto`.
    Mtu,
    /// Comma-separated addresses with prefix lengths.
    Addresses,
}

/// The flat options: (option, wg-cni field, how it is read).
pub const OPTIONS: &[(&str, &str, Kind)] = &[
    ("address", "addresses", Kind::Addresses),
    ("private_key_file", "privateKeyFile", Kind::Text),
    (
        "allow_insecure_key_file",
        "allowInsecureKeyFile",
        Kind::Bool,
    ),
    ("peers", "peers", Kind::Json),
    ("listen_port", "listenPort", Kind::Text),
    ("fwmark", "fwmark", Kind::Text),
    ("mtu", "mtu", Kind::Mtu),
    ("routes", "routes", Kind::Json),
    (
        "routes_from_allowed_ips",
        "routesFromAllowedIPs",
        Kind::Bool,
    ),
    ("table", "table", Kind::Text),
    ("socket_namespace", "socketNamespace", Kind::Text),
    ("backend", "backend", Kind::Text),
    (
        "userspace_implementation",
        "userspaceImplementation",
        Kind::Text,
    ),
    ("state_dir", "stateDir", Kind::Text),
    ("log_file", "logFile", Kind::Text),
];

/// Options that are not wg-cni fields.
const OWN_OPTIONS: [&str; 2] = ["config", "birth_prefix"];

/// wg-cni fields that have no meaning here: netavark names the interface and
/// chains nothing.
const REFUSED_FIELDS: [(&str, &str); 5] = [
    (
        "interfaceName",
        "netavark names the interface (network_options.interface_name)",
    ),
    ("prevResult", "netavark plugins are not chained"),
    ("chainedResult", "netavark plugins are not chained"),
    (
        "network",
        "wg-cni's managed mode needs a Kubernetes node agent; podman networks configure the interface",
    ),
    (
        "managed",
        "wg-cni's managed mode needs a Kubernetes node agent; podman networks configure the interface",
    ),
];

/// Everything a verb needs from the options, validated, no I/O done.
#[derive(Debug)]
pub struct Settings {
    /// The wg-cni configuration.
    pub conf: NetConf,
    /// The birth name prefix (`birth_prefix`).
    pub birth_prefix: String,
    /// Name servers for the status block (`config.dns.nameservers`).
    pub dns_servers: Vec<IpAddr>,
    /// Search domains for the status block (`config.dns.search`).
    pub dns_search: Vec<String>,
}

impl Settings {
    /// How this network's birth names are derived: `birth_prefix` and a
    /// hash of `netavark/`, the network, the container and the interface,
    /// so teardown finds an interface without a record; unique
    /// machine-wide, as a userspace socket name must be.
    pub fn birth_names(&self) -> BirthNames {
        BirthNames {
            prefix: self.birth_prefix.clone(),
            salt: "netavark/".into(),
        }
    }
}

fn option_err(option: &str, reason: impl Into<String>) -> Error {
    Error::Option {
        option: option.to_string(),
        reason: reason.into(),
    }
}

/// Refuse inline secrets anywhere in a configuration tree, naming where
/// and never showing the value.
fn refuse_inline_secrets(v: &Value, at: &str) -> Result<(), Error> {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                if k == "privateKey" || k == "presharedKey" {
                    return Err(option_err(
                        &path,
                        format!(
                            "inline keys are refused: podman stores network options in a \
                             world-readable file; use {k}File, or omit the private key to \
                             generate one per container (value not shown)"
                        ),
                    ));
                }
                refuse_inline_secrets(child, &path)?;
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, c)| refuse_inline_secrets(c, &format!("{at}[{i}]"))),
        _ => Ok(()),
    }
}

/// Apply one options map onto the wg-cni object. Returns which wg-cni
/// fields came from which option.
fn overlay(
    o: &mut Map<String, Value>,
    options: &BTreeMap<String, String>,
    from: &mut BTreeMap<&'static str, String>,
    scope: &str,
) -> Result<(), Error> {
    for (key, value) in options {
        if OWN_OPTIONS.contains(&key.as_str()) {
            continue;
        }
        if key == "private_key" {
            return Err(option_err(
                key,
                "inline keys are refused: podman stores network options in a world-readable \
                 file; use private_key_file, or omit it to generate a key per container \
                 (value not shown)",
            ));
        }
        let Some(&(name, field, kind)) = OPTIONS.iter().find(|(n, _, _)| n == key) else {
            let known: Vec<&str> = OPTIONS
                .iter()
                .map(|(n, _, _)| *n)
                .chain(OWN_OPTIONS)
                .collect();
            return Err(option_err(
                key,
                format!("unknown {scope} option; known: {}", known.join(", ")),
            ));
        };
        let v = match kind {
            Kind::Text => Value::String(value.clone()),
            Kind::Bool => match value.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                other => return Err(option_err(name, format!("{other:?} is not true or false"))),
            },
            Kind::Mtu => match value.parse::<u64>() {
                Ok(n) => json!(n),
                Err(_) => Value::String(value.clone()),
            },
            Kind::Json => {
                let v: Value = serde_json::from_str(value).map_err(|e| {
                    option_err(name, format!("not valid JSON ({e}); give a JSON list"))
                })?;
                refuse_inline_secrets(&v, name)?;
                v
            }
            Kind::Addresses => Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(|a| Value::String(a.to_string()))
                    .collect(),
            ),
        };
        if kind == Kind::Addresses {
            o.remove("address");
        }
        o.insert(field.to_string(), v);
        from.insert(field, name.to_string());
    }
    Ok(())
}

/// The container's addresses: each static IP with the prefix length of the
/// network subnet holding it.
pub fn static_addresses(network: &Network, ips: &[IpAddr]) -> Result<Vec<IpNetwork>, Error> {
    let subnets = network
        .subnets
        .iter()
        .flatten()
        .map(|s| {
            s.subnet.parse::<IpNetwork>().map_err(|e| {
                Error::Input(format!(
                    "network {}: subnet {:?} is not a CIDR prefix: {e}",
                    network.name, s.subnet
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    ips.iter()
        .map(|ip| {
            let net = subnets.iter().find(|n| n.contains(*ip)).ok_or_else(|| {
                Error::Input(format!(
                    "static IP {ip} is in none of network {}'s subnets",
                    network.name
                ))
            })?;
            IpNetwork::new(*ip, net.prefix()).map_err(|e| Error::Input(e.to_string()))
        })
        .collect()
}

/// The options of `network`, and of the container (`per`) when given,
/// as a validated wg-cni configuration.
pub fn settings(network: &Network, per: Option<&PerNetworkOptions>) -> Result<Settings, Error> {
    let empty = BTreeMap::new();
    let net_opts = network.options.as_ref().unwrap_or(&empty);
    let ctr_opts = per.and_then(|p| p.options.as_ref()).unwrap_or(&empty);

    let mut base = match net_opts.get("config") {
        None => Value::Object(Map::new()),
        Some(s) => {
            let v: Value = serde_json::from_str(s).map_err(|e| {
                option_err(
                    "config",
                    format!("not valid JSON ({e}); give a wg-cni configuration object"),
                )
            })?;
            if !v.is_object() {
                return Err(option_err("config", "expected a JSON object"));
            }
            v
        }
    };
    refuse_inline_secrets(&base, "config")?;
    if ctr_opts.contains_key("config") {
        return Err(option_err(
            "config",
            "is a network option, not a container option",
        ));
    }
    let o = base
        .as_object_mut()
        .ok_or_else(|| option_err("config", "expected a JSON object"))?;
    for (field, why) in REFUSED_FIELDS {
        if o.contains_key(field) {
            return Err(option_err(&format!("config.{field}"), why));
        }
    }
    let mut from: BTreeMap<&'static str, String> = BTreeMap::new();
    overlay(o, net_opts, &mut from, "network")?;
    if let Some(ips) = per
        .and_then(|p| p.static_ips.as_ref())
        .filter(|ips| !ips.is_empty())
    {
        let addrs = static_addresses(network, ips)?;
        o.remove("address");
        o.insert(
            "addresses".into(),
            addrs.iter().map(|a| Value::String(a.to_string())).collect(),
        );
        from.remove("addresses");
    }
    overlay(o, ctr_opts, &mut from, "container")?;

    o.insert("cniVersion".into(), json!("1.0.0"));
    o.insert("name".into(), json!(network.name));
    o.insert("type".into(), json!("wg-netavark"));
    if !o.contains_key("stateDir") {
        o.insert("stateDir".into(), json!(DEFAULT_STATE_DIR));
    }
    if !o.contains_key("logFile") {
        let dir = o
            .get("stateDir")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_STATE_DIR)
            .trim_end_matches('/')
            .to_string();
        o.insert("logFile".into(), json!(format!("{dir}/wg-netavark.log")));
    }

    let birth_prefix = ctr_opts
        .get("birth_prefix")
        .or_else(|| net_opts.get("birth_prefix"))
        .cloned()
        .unwrap_or_else(|| DEFAULT_BIRTH_PREFIX.to_string());
    if birth_prefix.is_empty()
        || birth_prefix.len() > 9
        || !birth_prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(option_err(
            "birth_prefix",
            format!(
                "{birth_prefix:?}: 1 to 9 characters of a-z, 0-9 and '-' (the rest of the \
                 15-byte name is a hash)"
            ),
        ));
    }

    let (dns_servers, dns_search) = dns(o)?;
    let conf = NetConf::from_json(base).map_err(|e| {
        // wg-cni names its own field first ("listenPort: ..."): say which
        // option that was.
        let field_of = |d: &str| {
            from.iter()
                .find(|(f, _)| {
                    d.strip_prefix(**f)
                        .is_some_and(|rest| rest.starts_with([':', '[', '.']))
                })
                .map(|(_, opt)| opt.clone())
        };
        match field_of(&e.details) {
            Some(opt) => option_err(&opt, e.details),
            None => option_err("config", e.details),
        }
    })?;
    Ok(Settings {
        conf,
        birth_prefix,
        dns_servers,
        dns_search,
    })
}

/// `config.dns` (the CNI `dns` object) for the status block.
fn dns(o: &Map<String, Value>) -> Result<(Vec<IpAddr>, Vec<String>), Error> {
    let Some(d) = o.get("dns").filter(|d| !d.is_null()) else {
        return Ok((vec![], vec![]));
    };
    let strings = |key: &str| -> Result<Vec<String>, Error> {
        match d.get(key) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str().map(str::to_string).ok_or_else(|| {
                        option_err(&format!("config.dns.{key}"), format!("{i} is not a string"))
                    })
                })
                .collect(),
            Some(v) => Err(option_err(
                &format!("config.dns.{key}"),
                format!("expected a list, got {v}"),
            )),
        }
    };
    if !d.is_object() {
        return Err(option_err("config.dns", "expected an object"));
    }
    let servers = strings("nameservers")?
        .iter()
        .map(|s| {
            s.parse().map_err(|_| {
                option_err(
                    "config.dns.nameservers",
                    format!("{s:?} is not an IP address"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((servers, strings("search")?))
}

/// Whether any option (network or container) gives addresses.
pub fn has_address_option(network: &Network) -> bool {
    let Some(opts) = &network.options else {
        return false;
    };
    opts.contains_key("address")
        || opts
            .get("config")
            .and_then(|c| serde_json::from_str::<Value>(c).ok())
            .is_some_and(|c| c.get("address").is_some() || c.get("addresses").is_some())
}

#[cfg(test)]
mod tests;
