//! What the installer installs and where: `InstallOptions` (from the
//! environment, checked) and its `Mode`, and the pod annotations
//! capability of the conflist entry.

use std::path::PathBuf;

use serde_json::Value;

use super::edit::plugin_type;
use super::files::parent_dir;
use super::{Error, Result, PLUGIN_TYPE, USERSPACE_BINARY};

/// How wg-cni is wired into the node's CNI configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Chained after the primary CNI's plugins, in its conflist.
    Chain,
    /// Binary only: wg-cni is a secondary network (a Multus
    /// NetworkAttachmentDefinition, say); no conflist is touched.
    Secondary,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chain" => Ok(Mode::Chain),
            "secondary" => Ok(Mode::Secondary),
            other => Err(format!("{other:?}: expected chain or secondary")),
        }
    }
}

/// What the installer installs and where.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallOptions {
    /// The plugin binary in the image (WG_CNI_BIN_SRC, /opt/wg/bin/wg-cni).
    pub bin_src: PathBuf,
    /// The host's CNI bin dir (WG_CNI_BIN_DIR, /host/opt/cni/bin).
    pub bin_dir: PathBuf,
    /// The host's CNI conf dir (WG_CNI_CONF_DIR, /host/etc/cni/net.d).
    pub conf_dir: PathBuf,
    /// WG_CNI_MODE: `chain` (default) or `secondary`.
    pub mode: Mode,
    /// The conflist entry (WG_CNI_PLUGIN, `{"type":"wg-cni","managed":true}`),
    /// with the pod annotations capability declared
    /// ([`declare_pod_annotations`]). Its `"type"` must equal `binary_name`:
    /// that is how libcni finds the binary.
    pub plugin: Value,
    /// The binary's name in `bin_dir` ("wg-cni").
    pub binary_name: String,
    /// What the installer did (WG_CNI_STATE_FILE,
    /// /var/lib/wg-agent/install.json); never inside `conf_dir`.
    pub state_file: PathBuf,
    /// The userspace WireGuard implementation in the image, installed as
    /// `bin_dir/`[`USERSPACE_BINARY`] (WG_CNI_USERSPACE_SRC,
    /// /opt/wg/bin/wireguard-go; `none`: None, install no companion). A
    /// source that does not exist is not an error: the image is kernel-only.
    pub userspace_src: Option<PathBuf>,
}

/// Declare, in a conflist entry, the capability through which the runtime
/// passes wg-cni the pod's annotations (`runtimeConfig`; libcni passes a
/// capability only to the entries that declare it): with it, wg-cni passes
/// pods that did not opt in without asking the agent, and applies an
/// annotated pod's network's failure policy when the agent is down. An
/// entry that sets the capability already (even to `false`) is kept.
pub fn declare_pod_annotations(plugin: &mut Value) {
    let Some(o) = plugin.as_object_mut() else {
        return;
    };
    let caps = o
        .entry("capabilities")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(caps) = caps.as_object_mut() {
        caps.entry(wg_attach::managed::POD_ANNOTATIONS_CAPABILITY)
            .or_insert(Value::Bool(true));
    }
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            bin_src: "/opt/wg/bin/wg-cni".into(),
            bin_dir: "/host/opt/cni/bin".into(),
            conf_dir: "/host/etc/cni/net.d".into(),
            mode: Mode::Chain,
            plugin: {
                let mut p = serde_json::json!({"type": PLUGIN_TYPE, "managed": true});
                declare_pod_annotations(&mut p);
                p
            },
            binary_name: PLUGIN_TYPE.into(),
            state_file: "/var/lib/wg-agent/install.json".into(),
            userspace_src: Some("/opt/wg/bin/wireguard-go".into()),
        }
    }
}

impl InstallOptions {
    /// The options from the environment (see each field for its variable;
    /// unset or empty means the default).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) with another source of variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let mut o = InstallOptions::default();
        if let Some(v) = get("WG_CNI_BIN_SRC") {
            o.bin_src = v.into();
        }
        if let Some(v) = get("WG_CNI_BIN_DIR") {
            o.bin_dir = v.into();
        }
        if let Some(v) = get("WG_CNI_CONF_DIR") {
            o.conf_dir = v.into();
        }
        if let Some(v) = get("WG_CNI_STATE_FILE") {
            o.state_file = v.into();
        }
        if let Some(v) = get("WG_CNI_USERSPACE_SRC") {
            o.userspace_src = (v != "none").then(|| v.into());
        }
        if let Some(v) = get("WG_CNI_MODE") {
            o.mode = v.parse().map_err(|msg| Error::Env {
                var: "WG_CNI_MODE",
                msg,
            })?;
        }
        if let Some(v) = get("WG_CNI_PLUGIN") {
            o.plugin = serde_json::from_str(&v).map_err(|e| Error::Env {
                var: "WG_CNI_PLUGIN",
                msg: e.to_string(),
            })?;
            declare_pod_annotations(&mut o.plugin);
        }
        o.validate()?;
        Ok(o)
    }

    /// Checks what the installer relies on: an entry whose type names the
    /// binary, a plain binary name, a state file outside the conf dir.
    pub fn validate(&self) -> Result<()> {
        let ty = plugin_type(&self.plugin).map_err(|_| {
            Error::Options("the plugin entry must be a JSON object with a string \"type\"".into())
        })?;
        if ty != self.binary_name {
            return Err(Error::Options(format!(
                "the plugin entry's type {ty:?} must be the binary's name {:?} (libcni runs the binary named by \"type\")",
                self.binary_name
            )));
        }
        if self.binary_name.is_empty()
            || self.binary_name.contains('/')
            || self.binary_name.starts_with('.')
        {
            return Err(Error::Options(format!(
                "bad binary name {:?}",
                self.binary_name
            )));
        }
        if self.binary_name == USERSPACE_BINARY {
            return Err(Error::Options(format!(
                "the plugin binary cannot be named {USERSPACE_BINARY:?}: that is the userspace WireGuard binary's name"
            )));
        }
        if parent_dir(&self.state_file) == self.conf_dir.as_path() {
            return Err(Error::Options(
                "the state file must not be in the CNI conf dir".into(),
            ));
        }
        Ok(())
    }
}
