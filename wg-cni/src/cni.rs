//! The CNI protocol itself: versions, the environment, errors, results.
//!
//! Written against the CNI specification (1.1.0, with the result formats of
//! 0.3.1, 0.4.0 and 1.0.0). Results are JSON values: a chained plugin appends
//! to its `prevResult`, so fields this plugin does not know survive.

use std::fmt;

use serde_json::{json, Map, Value};

pub use wg_attach::config::{Version, SUPPORTED_VERSIONS};

/// Well-known CNI error codes, plus this plugin's own (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// Incompatible CNI version.
    IncompatibleVersion = 1,
    /// Unsupported field in the network configuration.
    UnsupportedField = 2,
    /// Container unknown or does not exist.
    ContainerUnknown = 3,
    /// Invalid necessary environment variables.
    InvalidEnvironment = 4,
    /// I/O failure.
    Io = 5,
    /// Failed to decode content.
    Decode = 6,
    /// Invalid network config.
    InvalidConfig = 7,
    /// Try again later.
    TryAgainLater = 11,
    /// The plugin is not available (no WireGuard backend).
    NotAvailable = 50,
    /// CHECK found the attachment differs from its configuration.
    CheckMismatch = 100,
}

impl Code {
    /// The code of a number, for errors that arrive as numbers (the node
    /// agent's replies in managed mode); `None` for a number this plugin
    /// does not know.
    pub fn from_u32(n: u32) -> Option<Code> {
        [
            Code::IncompatibleVersion,
            Code::UnsupportedField,
            Code::ContainerUnknown,
            Code::InvalidEnvironment,
            Code::Io,
            Code::Decode,
            Code::InvalidConfig,
            Code::TryAgainLater,
            Code::NotAvailable,
            Code::CheckMismatch,
        ]
        .into_iter()
        .find(|c| *c as u32 == n)
    }
}

/// An error reported to the runtime as CNI error JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The code.
    pub code: Code,
    /// Short message.
    pub msg: String,
    /// Longer details.
    pub details: String,
}

impl CniError {
    /// A new error.
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error JSON, carrying `version` (or 1.1.0 when the input's is unknown).
    pub fn to_json(&self, version: Option<&str>) -> Value {
        json!({
            "cniVersion": version.unwrap_or("1.1.0"),
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (code {}): {}",
            self.msg, self.code as u32, self.details
        )
    }
}

impl From<wg_netns::Error> for CniError {
    fn from(e: wg_netns::Error) -> Self {
        wg_attach::Error::from(e).into()
    }
}

/// The one place the core's error kinds become CNI error codes.
impl From<wg_attach::Error> for CniError {
    fn from(e: wg_attach::Error) -> Self {
        use wg_attach::Kind;
        let code = match e.kind {
            Kind::Decode => Code::Decode,
            Kind::Version => Code::IncompatibleVersion,
            Kind::Config => Code::InvalidConfig,
            Kind::Request => Code::InvalidEnvironment,
            Kind::Busy => Code::TryAgainLater,
            Kind::ContainerGone => Code::ContainerUnknown,
            Kind::Unavailable => Code::NotAvailable,
            Kind::Io => Code::Io,
        };
        CniError::new(code, e.msg, e.details)
    }
}

/// The verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify.
    Check,
    /// Report readiness.
    Status,
    /// Garbage-collect stale attachments.
    Gc,
    /// Report supported versions.
    Version,
}

/// The CNI environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (any case, as given).
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`.
    pub path: String,
}

/// CNI_ARGS keys this plugin understands; others need `IgnoreUnknown=1`.
const KNOWN_ARGS: [&str; 5] = [
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_UID",
    "K8S_POD_INFRA_CONTAINER_ID",
];

impl Env {
    /// Read and validate the environment for the command it names. STATUS,
    /// GC and VERSION need no container id, netns or ifname (libcni sends them
    /// empty); DEL tolerates an empty netns (the namespace may be gone).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let invalid =
            |msg: &str, details: String| CniError::new(Code::InvalidEnvironment, msg, details);
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(invalid(
                    "unknown CNI_COMMAND",
                    format!("{other:?} is not ADD, DEL, CHECK, STATUS, GC or VERSION"),
                ))
            }
            None => {
                return Err(invalid(
                    "CNI_COMMAND is not set",
                    "the runtime must set CNI_COMMAND".into(),
                ))
            }
        };
        let var = |k: &str| get(k).unwrap_or_default();
        let env = Env {
            command,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: parse_args(&var("CNI_ARGS"))?,
            path: var("CNI_PATH"),
        };
        if matches!(command, Command::Add | Command::Del | Command::Check) {
            if env.container_id.is_empty() {
                return Err(invalid(
                    "CNI_CONTAINERID is not set",
                    "ADD, DEL and CHECK need a container id".into(),
                ));
            }
            if !env
                .container_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(invalid(
                    "invalid CNI_CONTAINERID",
                    format!(
                        "{:?} may only contain letters, digits, '_', '.' and '-'",
                        env.container_id
                    ),
                ));
            }
            if env.ifname.is_empty() {
                return Err(invalid(
                    "CNI_IFNAME is not set",
                    "ADD, DEL and CHECK need an interface name".into(),
                ));
            }
            wg_netns::IfName::new(env.ifname.as_str())
                .map_err(|e| invalid("invalid CNI_IFNAME", e.to_string()))?;
            if env.netns.is_empty() && command != Command::Del {
                return Err(invalid(
                    "CNI_NETNS is not set",
                    "ADD and CHECK need a network namespace".into(),
                ));
            }
        }
        Ok(env)
    }

    /// Value of a `CNI_ARGS` key.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parse `CNI_ARGS` (`K=V;K=V`). Unknown keys are refused (code 2) unless
/// `IgnoreUnknown` is `1` or `true`.
pub fn parse_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            CniError::new(
                Code::InvalidEnvironment,
                "invalid CNI_ARGS",
                format!("{part:?} is not KEY=VALUE"),
            )
        })?;
        if k.is_empty() {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                "invalid CNI_ARGS",
                format!("{part:?} has an empty key"),
            ));
        }
        out.push((k.to_string(), v.to_string()));
    }
    let ignore_unknown = out.iter().any(|(k, v)| {
        k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
    });
    if !ignore_unknown {
        if let Some((k, _)) = out.iter().find(|(k, _)| !KNOWN_ARGS.contains(&k.as_str())) {
            return Err(CniError::new(
                Code::UnsupportedField,
                "unknown CNI_ARGS key",
                format!("{k:?} is not understood (set IgnoreUnknown=1 to ignore it)"),
            ));
        }
    }
    Ok(out)
}

/// The `mac` reported for the WireGuard interface, which has none.
pub const NO_MAC: &str = "00:00:00:00:00:00";

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultInterface {
    /// Name.
    pub name: String,
    /// Network namespace path (the sandbox).
    pub sandbox: String,
    /// MTU (reported from 1.1.0 on).
    pub mtu: Option<u32>,
}

/// One IP of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultIp {
    /// Address with prefix.
    pub address: wg_netns::IpNetwork,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRoute {
    /// Destination.
    pub dst: wg_netns::IpNetwork,
    /// Table (reported from 1.1.0 on, when not main).
    pub table: Option<u32>,
}

/// Append an interface with its IPs and routes to `prev` (a prevResult, or an
/// empty object for standalone use) and shape the whole result for `version`:
/// `ips[].version` present before 1.0.0 and absent from it, interface `mtu`
/// and route `table` only in 1.1.0. Unknown fields of `prev` are kept.
pub fn build_result(
    version: Version,
    prev: Option<&Value>,
    iface: &ResultInterface,
    ips: &[ResultIp],
    routes: &[ResultRoute],
    dns: Option<&Value>,
) -> Value {
    let mut result = match prev {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    result.insert("cniVersion".into(), Value::String(version.as_str().into()));
    let interfaces = array_entry(&mut result, "interfaces");
    let index = interfaces.len();
    let mut i = Map::new();
    i.insert("name".into(), json!(iface.name));
    // WireGuard is layer 3 and has no hardware address, but clients parse
    // the `mac` of every sandbox interface (podman 4 fails on an empty one):
    // the all-zero address says "none" in a form they accept.
    i.insert("mac".into(), json!(NO_MAC));
    i.insert("sandbox".into(), json!(iface.sandbox));
    if let (Some(mtu), true) = (iface.mtu, version >= Version::V1_1_0) {
        i.insert("mtu".into(), json!(mtu));
    }
    interfaces.push(Value::Object(i));

    let ip_list = array_entry(&mut result, "ips");
    for ip in ips {
        ip_list.push(json!({"address": ip.address.to_string(), "interface": index}));
    }
    for ip in ip_list.iter_mut() {
        if let Value::Object(o) = ip {
            if version < Version::V1_0_0 {
                if !o.contains_key("version") {
                    let v = o
                        .get("address")
                        .and_then(Value::as_str)
                        .map(|a| if a.contains(':') { "6" } else { "4" })
                        .unwrap_or("4");
                    o.insert("version".into(), json!(v));
                }
            } else {
                o.remove("version");
            }
        }
    }

    let route_list = array_entry(&mut result, "routes");
    for r in routes {
        let mut o = Map::new();
        o.insert("dst".into(), json!(r.dst.to_string()));
        if let (Some(t), true) = (r.table, version >= Version::V1_1_0) {
            o.insert("table".into(), json!(t));
        }
        route_list.push(Value::Object(o));
    }
    if let Some(d) = dns {
        if !result.contains_key("dns") {
            result.insert("dns".into(), d.clone());
        }
    }
    for key in ["interfaces", "ips", "routes"] {
        if result
            .get(key)
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            result.remove(key);
        }
    }
    Value::Object(result)
}

fn array_entry<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    if !m.get(key).is_some_and(Value::is_array) {
        m.insert(key.to_string(), Value::Array(Vec::new()));
    }
    match m.get_mut(key) {
        Some(Value::Array(a)) => a,
        _ => unreachable!("just inserted an array"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(|k| vars.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn environment_rules() {
        assert_eq!(env(&[]).unwrap_err().code, Code::InvalidEnvironment);
        assert_eq!(
            env(&[("CNI_COMMAND", "FOO")]).unwrap_err().code,
            Code::InvalidEnvironment
        );
        // STATUS, GC and VERSION need nothing else.
        for c in ["STATUS", "GC", "VERSION"] {
            assert!(env(&[
                ("CNI_COMMAND", c),
                ("CNI_CONTAINERID", ""),
                ("CNI_IFNAME", "")
            ])
            .is_ok());
        }
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "ABCdef0123"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(env(&add).is_ok(), "upper-case container ids are fine");
        assert_eq!(env(&add[..3]).unwrap_err().code, Code::InvalidEnvironment);
        let mut bad = add;
        bad[1] = ("CNI_CONTAINERID", "a/b");
        assert_eq!(env(&bad).unwrap_err().code, Code::InvalidEnvironment);
        let mut bad = add;
        bad[3] = ("CNI_IFNAME", "an-interface-name-too-long");
        assert_eq!(env(&bad).unwrap_err().code, Code::InvalidEnvironment);
        // DEL without a netns is fine.
        assert!(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0")
        ])
        .is_ok());
    }

    #[test]
    fn codes_from_numbers() {
        for c in [
            Code::IncompatibleVersion,
            Code::TryAgainLater,
            Code::NotAvailable,
            Code::CheckMismatch,
        ] {
            assert_eq!(Code::from_u32(c as u32), Some(c));
        }
        assert_eq!(Code::from_u32(0), None);
        assert_eq!(Code::from_u32(51), None);
    }

    #[test]
    fn cni_args() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;FOO=bar")
            .unwrap();
        assert_eq!(a.len(), 4);
        assert!(parse_args("K8S_POD_NAME=x").is_ok());
        assert_eq!(
            parse_args("FOO=bar").unwrap_err().code,
            Code::UnsupportedField
        );
        assert_eq!(
            parse_args("novalue").unwrap_err().code,
            Code::InvalidEnvironment
        );
        assert!(parse_args("").unwrap().is_empty());
        assert_eq!(parse_args("K8S_POD_NAME=a=b").unwrap()[0].1, "a=b");
    }

    #[test]
    fn results_per_version() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"}, {"name": "eth0", "sandbox": "/var/run/netns/p"}],
            "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
            "dns": {"nameservers": ["10.88.0.1"]},
            "x-unknown": {"kept": true}
        });
        let iface = ResultInterface {
            name: "wg0".into(),
            sandbox: "/var/run/netns/p".into(),
            mtu: Some(1420),
        };
        let ips = [
            ResultIp {
                address: "10.13.13.210/24".parse().unwrap(),
            },
            ResultIp {
                address: "fd13::2/64".parse().unwrap(),
            },
        ];
        let routes = [ResultRoute {
            dst: "10.13.0.0/16".parse().unwrap(),
            table: Some(100),
        }];
        for v in [
            Version::V0_3_1,
            Version::V0_4_0,
            Version::V1_0_0,
            Version::V1_1_0,
        ] {
            let r = build_result(v, Some(&prev), &iface, &ips, &routes, None);
            assert_eq!(r["cniVersion"], v.as_str());
            assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
            assert_eq!(r["interfaces"][2]["name"], "wg0");
            assert_eq!(r["interfaces"][2]["sandbox"], "/var/run/netns/p");
            assert_eq!(r["ips"][1]["interface"], 2);
            assert_eq!(r["ips"][0]["gateway"], "10.88.0.1");
            assert_eq!(r["x-unknown"]["kept"], true);
            assert_eq!(r["dns"]["nameservers"][0], "10.88.0.1");
            let has_version = r["ips"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i.get("version").is_some());
            assert_eq!(has_version, v < Version::V1_0_0, "{v}");
            if v < Version::V1_0_0 {
                assert_eq!(r["ips"][2]["version"], "6");
            }
            assert_eq!(
                r["interfaces"][2].get("mtu").is_some(),
                v == Version::V1_1_0
            );
            assert_eq!(r["routes"][1].get("table").is_some(), v == Version::V1_1_0);
        }
        // Standalone: built from nothing.
        let r = build_result(
            Version::V1_0_0,
            None,
            &iface,
            &ips[..1],
            &[],
            Some(&json!({"nameservers": ["1.1.1.1"]})),
        );
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 1);
        assert!(r.get("routes").is_none());
        assert_eq!(r["dns"]["nameservers"][0], "1.1.1.1");
    }
}
