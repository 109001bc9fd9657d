//! Managed mode's fields: `network`, `managed`, `agentSocket`,
//! `agentHintDir`, `agentTimeout`, and what the runtime passes in
//! `runtimeConfig` of the pod's annotations. In managed mode the node
//! agent owns the interface (addresses, keys, peers, MTU...), so the static
//! fields that describe one are refused rather than silently ignored.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::duration::parse_go_duration;
use super::fields::{bool_field, invalid, str_field};
use crate::error::Error;
use crate::managed::{
    ANNOTATION_NETWORK, DEFAULT_HINT_DIR, DEFAULT_SOCKET, POD_ANNOTATIONS_CAPABILITY,
};

/// How long the plugin waits for the agent unless `agentTimeout` says.
pub const DEFAULT_AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the interface is made of: its addresses, key, device and routes.
/// DEL and GC never read them; in managed mode the network's resources
/// own them.
pub(super) const INTERFACE_FIELDS: [&str; 12] = [
    "address",
    "addresses",
    "privateKey",
    "privateKeyFile",
    "allowInsecureKeyFile",
    "listenPort",
    "fwmark",
    "mtu",
    "peers",
    "routes",
    "routesFromAllowedIPs",
    "table",
];

/// Where and how the interface is made: in static mode a teardown without
/// a record still reads them; in managed mode the resources own them too.
pub(super) const PLACEMENT_FIELDS: [&str; 4] = [
    "socketNamespace",
    "interfaceName",
    "backend",
    "userspaceImplementation",
];

/// Static fields, refused in managed mode: the interface's and its
/// placement's, in that order.
pub(super) fn static_only() -> impl Iterator<Item = &'static str> {
    INTERFACE_FIELDS.into_iter().chain(PLACEMENT_FIELDS)
}

/// Fields that only managed mode reads.
const MANAGED_ONLY: [&str; 3] = ["agentSocket", "agentHintDir", "agentTimeout"];

/// Who makes the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The configuration describes the interface and the plugin makes it
    /// (the original wireguard-cni format).
    Static,
    /// The node agent makes it from the cluster's resources; the plugin
    /// forwards the verb ([`crate::managed`]).
    Managed(ManagedConf),
}

/// Where and how to reach the node agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedConf {
    /// `network`: the WireGuardNetwork every pod of this configuration
    /// joins; `None` (`"managed": true`): the pod's annotation decides.
    pub network: Option<String>,
    /// `agentSocket`: the agent's unix socket.
    pub socket: PathBuf,
    /// `agentHintDir`: where the agent leaves each network's
    /// [`crate::managed::NetworkHint`].
    pub hint_dir: PathBuf,
    /// `agentTimeout`: how long to wait for the agent.
    pub timeout: Duration,
    /// What the runtime said of the pod's annotations
    /// (`runtimeConfig["io.kubernetes.cri.pod-annotations"]`).
    pub annotations: PodAnnotations,
}

/// The pod's opt-in as the runtime passed it, without asking the agent:
/// the capability [`POD_ANNOTATIONS_CAPABILITY`] (containerd and CRI-O
/// fill it with every annotation of the pod when the conflist entry
/// declares `"capabilities": {"io.kubernetes.cri.pod-annotations": true}`;
/// libcni passes a capability only to the plugins that declare it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodAnnotations {
    /// The runtime passed no annotations (the entry does not declare the
    /// capability, the runtime does not support it, or passed something
    /// that is not a map of strings): the plugin cannot tell whether the
    /// pod opted in.
    Unknown,
    /// The pod has no [`ANNOTATION_NETWORK`] annotation: it did not opt in.
    NoNetwork,
    /// The pod's [`ANNOTATION_NETWORK`] annotation, as written (not yet
    /// checked to be a network name).
    Network(String),
}

impl PodAnnotations {
    /// From the configuration's `runtimeConfig`. A map without the
    /// annotation, or `null` (what containerd passes for a pod without
    /// annotations), is [`PodAnnotations::NoNetwork`]. The runtime, not the
    /// user, writes this field: something malformed is
    /// [`PodAnnotations::Unknown`], never an error that would stop the pod.
    pub fn from_runtime_config(o: &Map<String, Value>) -> PodAnnotations {
        let Some(rc) = o.get("runtimeConfig").and_then(Value::as_object) else {
            return PodAnnotations::Unknown;
        };
        match rc.get(POD_ANNOTATIONS_CAPABILITY) {
            Some(Value::Null) => PodAnnotations::NoNetwork,
            Some(Value::Object(a)) => match a.get(ANNOTATION_NETWORK) {
                None => PodAnnotations::NoNetwork,
                Some(Value::String(n)) => PodAnnotations::Network(n.clone()),
                Some(_) => PodAnnotations::Unknown,
            },
            _ => PodAnnotations::Unknown,
        }
    }
}

/// Read the mode. A managed configuration that also names a static field,
/// or a static one that names an agent field, is refused, naming the field.
pub(super) fn parse_mode(o: &Map<String, Value>) -> Result<Mode, Error> {
    let network = str_field(o, "network")?
        .map(|n| {
            if is_dns_label(n) {
                Ok(n.to_string())
            } else {
                Err(invalid(
                    "network",
                    format!("{n:?} is not a network name (a DNS label: 1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit)"),
                ))
            }
        })
        .transpose()?;
    let managed = match (bool_field(o, "managed", network.is_some())?, &network) {
        (false, Some(_)) if o.contains_key("managed") => {
            return Err(invalid(
                "managed",
                "false, but \"network\" names a network of the node agent",
            ))
        }
        (m, _) => m,
    };
    let present = |k: &str| o.get(k).is_some_and(|v| !v.is_null());
    if !managed {
        if let Some(f) = MANAGED_ONLY.into_iter().find(|k| present(k)) {
            return Err(invalid(
                f,
                "is only read in managed mode (set \"network\" or \"managed\": true)",
            ));
        }
        return Ok(Mode::Static);
    }
    if let Some(f) = static_only().find(|k| present(k)) {
        return Err(invalid(
            f,
            "is owned by the network's resources in managed mode (\"network\" or \"managed\" is set); remove it",
        ));
    }
    let path = |key: &str, default: &str| -> Result<PathBuf, Error> {
        let p = PathBuf::from(str_field(o, key)?.unwrap_or(default));
        if p.is_absolute() {
            Ok(p)
        } else {
            Err(invalid(
                key,
                format!("{:?} is not an absolute path", p.display().to_string()),
            ))
        }
    };
    Ok(Mode::Managed(ManagedConf {
        network,
        socket: path("agentSocket", DEFAULT_SOCKET)?,
        hint_dir: path("agentHintDir", DEFAULT_HINT_DIR)?,
        timeout: timeout(o)?,
        annotations: PodAnnotations::from_runtime_config(o),
    }))
}

/// `agentTimeout`: a Go-style duration ("60s", "1m30s") or whole seconds,
/// more than zero.
fn timeout(o: &Map<String, Value>) -> Result<Duration, Error> {
    let v = match o.get("agentTimeout") {
        None | Some(Value::Null) => return Ok(DEFAULT_AGENT_TIMEOUT),
        Some(v) => v,
    };
    let d = match v {
        Value::String(s) => parse_go_duration(s),
        Value::Number(n) => n.as_u64().map(Duration::from_secs),
        _ => None,
    };
    d.filter(|d| !d.is_zero()).ok_or_else(|| {
        invalid(
            "agentTimeout",
            format!("{v} is not a duration above zero such as \"60s\""),
        )
    })
}

/// A DNS label (RFC 1123), as Kubernetes names a WireGuardNetwork.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len())
        && b.iter().all(|c| inner(c) || *c == b'-')
        && b.first().is_some_and(inner)
        && b.last().is_some_and(inner)
}
