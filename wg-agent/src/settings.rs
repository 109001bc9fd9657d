//! The agent's settings: environment variables (a DaemonSet sets them from
//! its ConfigMap and the downward API), each with a default.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `NODE_NAME` | (required) | this node's name (downward API `spec.nodeName`) |
//! | `NODE_IP` | (required) | the node's address peers reach (downward API `status.hostIP`) |
//! | `WG_AGENT_STATE_DIR` | `/var/lib/wg-agent` | keys and attachment records (root-only) |
//! | `WG_AGENT_RUN_DIR` | `/run/wg-agent` | the CNI socket (`cni.sock`) and network hints (`networks/`) |
//! | `WG_AGENT_LISTEN` | `NODE_IP:9586` | `/metrics`, `/healthz`, `/readyz`: the node's own address, not every address of the node (`127.0.0.1:9586` keeps it to the node itself) |
//! | `WG_AGENT_BACKEND` | `auto` | `auto`, `kernel` or `userspace` |
//! | `WG_USERSPACE_IMPLEMENTATION` | `wireguard-go` | the userspace implementation |
//! | `WG_AGENT_USERSPACE_LAUNCH` | `agent` | who starts a pod's userspace daemon on ADD: `agent` (as the agent's child: it dies when the agent's container stops) or `plugin` (wg-cni starts `wg-cni-wireguard-go` from its own directory on the host, so daemons outlive the agent; plugins of protocol 1 cannot, and the agent starts theirs). Daemons recreated by a repair are always the agent's |
//! | `WG_AGENT_VERIFY_INTERVAL` | `30s` | how often every device is read back and repaired |
//! | `WG_AGENT_STATS_INTERVAL` | `5s` | how often counters are read (metrics) |
//! | `WG_AGENT_STATUS_MIN_INTERVAL` | `15s` | the fewest seconds between two status writes of one attachment that change only its conditions |
//! | `WG_AGENT_GC_GRACE` | `60s` | how long an interface whose pod is gone is kept (counted from when the agent first saw the pod missing) |
//! | `WG_AGENT_DEVICE_TIMEOUT` | `5s` | how long one exchange with a userspace daemon may block before the write fails (and is retried): a stopped or wedged daemon holds up nothing else for long |
//! | `WG_AGENT_WATCH_LINGER` | `60s` | how long the watches of a network or namespace are kept once no pod of the node needs them (a pod made again soon costs no relist) |
//! | `KUBECONFIG` | in-cluster | the apiserver credentials (in a pod: the projected, rotating service-account token) |

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use wg_netns::BackendChoice;

/// Who starts a pod's userspace WireGuard daemon during a CNI ADD
/// (`WG_AGENT_USERSPACE_LAUNCH`). Written and parsed as `agent` / `plugin`.
///
/// ```
/// use wg_agent::settings::UserspaceLaunch;
/// assert_eq!("plugin".parse::<UserspaceLaunch>(), Ok(UserspaceLaunch::Plugin));
/// assert_eq!(UserspaceLaunch::default().to_string(), "agent");
/// assert!("host".parse::<UserspaceLaunch>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserspaceLaunch {
    /// The agent, as its child: simple, but every daemon ends when the
    /// agent's container stops (an upgrade cuts the pods' traffic).
    #[default]
    Agent,
    /// The CNI plugin (protocol 2), a child of the container runtime on the
    /// host: the daemon outlives the agent. The agent still waits for its
    /// socket, configures it and moves its interface.
    Plugin,
}

impl UserspaceLaunch {
    /// The word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            UserspaceLaunch::Agent => "agent",
            UserspaceLaunch::Plugin => "plugin",
        }
    }
}

impl std::fmt::Display for UserspaceLaunch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for UserspaceLaunch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "agent" => Ok(UserspaceLaunch::Agent),
            "plugin" => Ok(UserspaceLaunch::Plugin),
            other => Err(format!("{other:?} is not \"agent\" or \"plugin\"")),
        }
    }
}

/// The HTTP port when `WG_AGENT_LISTEN` does not say.
pub const DEFAULT_HTTP_PORT: u16 = 9586;

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("setting {name}: {why}")]
pub struct SettingError {
    /// The variable.
    pub name: &'static str,
    /// What is wrong with it.
    pub why: String,
}

/// Everything the agent is told.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node's name.
    pub node_name: String,
    /// This node's address, the endpoint host of pods whose socket lives on
    /// the node.
    pub node_ip: IpAddr,
    /// Keys and records.
    pub state_dir: PathBuf,
    /// Socket and hints.
    pub run_dir: PathBuf,
    /// HTTP address.
    pub listen: SocketAddr,
    /// Backend choice.
    pub backend: BackendChoice,
    /// Who starts userspace daemons on ADD.
    pub userspace_launch: UserspaceLaunch,
    /// Read-back period.
    pub verify_interval: Duration,
    /// Counters period.
    pub stats_interval: Duration,
    /// Status write spacing for a change of conditions alone.
    pub status_min_interval: Duration,
    /// Grace before a record without its pod is removed.
    pub gc_grace: Duration,
    /// How long one exchange with a userspace daemon may block.
    pub device_timeout: Duration,
    /// How long an unneeded scoped watch is kept (`crate::scope`).
    pub watch_linger: Duration,
}

fn duration(name: &'static str, v: &str) -> Result<Duration, SettingError> {
    wg_attach::config::parse_go_duration(v)
        .ok_or_else(|| SettingError {
            name,
            why: format!("{v:?} is not a duration such as 30s or 1m"),
        })
        .and_then(|d| {
            if d.is_zero() {
                Err(SettingError {
                    name,
                    why: "must be more than zero".into(),
                })
            } else {
                Ok(d)
            }
        })
}

impl Settings {
    /// Read from `get` (the environment: `|k| std::env::var(k).ok()`).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Settings, SettingError> {
        let req = |name: &'static str| {
            get(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| SettingError {
                    name,
                    why: "is required".into(),
                })
        };
        let or = |name: &str, default: &str| get(name).unwrap_or_else(|| default.to_string());
        let node_name = req("NODE_NAME")?;
        let node_ip = req("NODE_IP")?.parse().map_err(|e| SettingError {
            name: "NODE_IP",
            why: format!("not an IP address: {e}"),
        })?;
        // The node's own address (which kubelet's probes and Prometheus
        // use), not every address of the node; empty is the default too.
        let listen = match get("WG_AGENT_LISTEN").filter(|v| !v.is_empty()) {
            None => SocketAddr::new(node_ip, DEFAULT_HTTP_PORT),
            Some(v) => v.parse().map_err(|e| SettingError {
                name: "WG_AGENT_LISTEN",
                why: format!("{v:?} is not ADDRESS:PORT: {e}"),
            })?,
        };
        let backend = or("WG_AGENT_BACKEND", "auto")
            .parse()
            .map_err(|e: wg_netns::Error| SettingError {
                name: "WG_AGENT_BACKEND",
                why: e.to_string(),
            })?;
        // Empty is the default, as a ConfigMap's blank value means.
        let userspace_launch = get("WG_AGENT_USERSPACE_LAUNCH")
            .filter(|v| !v.is_empty())
            .map_or(Ok(UserspaceLaunch::default()), |v| v.parse())
            .map_err(|why| SettingError {
                name: "WG_AGENT_USERSPACE_LAUNCH",
                why,
            })?;
        Ok(Settings {
            node_name,
            node_ip,
            state_dir: or("WG_AGENT_STATE_DIR", "/var/lib/wg-agent").into(),
            run_dir: or("WG_AGENT_RUN_DIR", "/run/wg-agent").into(),
            listen,
            backend,
            userspace_launch,
            verify_interval: duration(
                "WG_AGENT_VERIFY_INTERVAL",
                &or("WG_AGENT_VERIFY_INTERVAL", "30s"),
            )?,
            stats_interval: duration(
                "WG_AGENT_STATS_INTERVAL",
                &or("WG_AGENT_STATS_INTERVAL", "5s"),
            )?,
            status_min_interval: duration(
                "WG_AGENT_STATUS_MIN_INTERVAL",
                &or("WG_AGENT_STATUS_MIN_INTERVAL", "15s"),
            )?,
            gc_grace: duration("WG_AGENT_GC_GRACE", &or("WG_AGENT_GC_GRACE", "60s"))?,
            device_timeout: duration(
                "WG_AGENT_DEVICE_TIMEOUT",
                &or("WG_AGENT_DEVICE_TIMEOUT", "5s"),
            )?,
            watch_linger: duration("WG_AGENT_WATCH_LINGER", &or("WG_AGENT_WATCH_LINGER", "60s"))?,
        })
    }

    /// The CNI socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("cni.sock")
    }

    /// The network hints' directory.
    pub fn hint_dir(&self) -> PathBuf {
        self.run_dir.join("networks")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_refusals() {
        let base = |k: &str| match k {
            "NODE_NAME" => Some("n1".to_string()),
            "NODE_IP" => Some("10.250.0.11".to_string()),
            _ => None,
        };
        let s = Settings::from_vars(base).unwrap();
        assert_eq!(s.socket(), PathBuf::from("/run/wg-agent/cni.sock"));
        assert_eq!(s.verify_interval, Duration::from_secs(30));
        assert_eq!(
            s.listen,
            "10.250.0.11:9586".parse().unwrap(),
            "the node's own address, not all of them"
        );
        let e = Settings::from_vars(|k| if k == "NODE_IP" { base(k) } else { None }).unwrap_err();
        assert_eq!(e.name, "NODE_NAME");
        let e = Settings::from_vars(|k| match k {
            "WG_AGENT_VERIFY_INTERVAL" => Some("0s".into()),
            _ => base(k),
        })
        .unwrap_err();
        assert_eq!(e.name, "WG_AGENT_VERIFY_INTERVAL");
        let e = Settings::from_vars(|k| match k {
            "WG_AGENT_BACKEND" => Some("magic".into()),
            _ => base(k),
        })
        .unwrap_err();
        assert_eq!(e.name, "WG_AGENT_BACKEND");
    }

    #[test]
    fn http_listen_address() {
        let with = |node_ip: &str, v: Option<&str>| {
            let node_ip = node_ip.to_string();
            Settings::from_vars(move |k| match k {
                "NODE_NAME" => Some("n1".to_string()),
                "NODE_IP" => Some(node_ip.clone()),
                "WG_AGENT_LISTEN" => v.map(str::to_string),
                _ => None,
            })
        };
        for (node, v, want) in [
            ("10.250.0.11", None, "10.250.0.11:9586"),
            ("10.250.0.11", Some(""), "10.250.0.11:9586"),
            ("fd00::11", None, "[fd00::11]:9586"),
            ("10.250.0.11", Some("127.0.0.1:9586"), "127.0.0.1:9586"),
            ("10.250.0.11", Some("[::1]:9100"), "[::1]:9100"),
        ] {
            assert_eq!(
                with(node, v).unwrap().listen,
                want.parse::<SocketAddr>().unwrap(),
                "{node} {v:?}"
            );
        }
        for bad in ["9586", "localhost:9586", "0.0.0.0"] {
            let e = with("10.250.0.11", Some(bad)).unwrap_err();
            assert_eq!(e.name, "WG_AGENT_LISTEN");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn userspace_launch() {
        let with = |v: Option<&str>| {
            Settings::from_vars(|k| match k {
                "NODE_NAME" => Some("n1".to_string()),
                "NODE_IP" => Some("10.250.0.11".to_string()),
                "WG_AGENT_USERSPACE_LAUNCH" => v.map(str::to_string),
                _ => None,
            })
        };
        assert_eq!(
            with(None).unwrap().userspace_launch,
            UserspaceLaunch::Agent,
            "the agent starts daemons unless told otherwise"
        );
        for agent in ["agent", ""] {
            assert_eq!(
                with(Some(agent)).unwrap().userspace_launch,
                UserspaceLaunch::Agent
            );
        }
        assert_eq!(
            with(Some("plugin")).unwrap().userspace_launch,
            UserspaceLaunch::Plugin
        );
        for bad in ["Plugin", "host", "wg-cni"] {
            let e = with(Some(bad)).unwrap_err();
            assert_eq!(e.name, "WG_AGENT_USERSPACE_LAUNCH");
            assert!(e.to_string().contains("\"agent\" or \"plugin\""), "{e}");
        }
    }
}
