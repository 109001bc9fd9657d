//! The configuration: wg-cni's network configuration schema, parsed by
//! wg-cni's own parser ([`NetConf::parse`]), with three defaults a container
//! hook can supply itself: `cniVersion` `"1.1.0"`, `name` `"oci"` and
//! `stateDir` [`DEFAULT_STATE_DIR`] (the interface name already defaults to
//! `wg0`: `interfaceName`). `prevResult` has no meaning outside a CNI chain
//! and is refused.
//!
//! It comes from an annotation: [`ANNOTATION_CONFIG`] (inline JSON) or
//! [`ANNOTATION_CONFIG_FILE`] (the path of a root-owned file that neither
//! group nor others may write).
//!
//! The hook runs as root, and whoever sets a container's annotations may be
//! trusted less than root: inline configuration may not name what root
//! would run, read or write on its behalf ([`INLINE_REFUSED`]: the
//! userspace program, any `*File` path, `stateDir`). A root-owned
//! configuration file may.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use wg_attach::config::NetConf;
use wg_netns::{Backend, Userspace};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// Annotation holding the configuration as inline JSON.
pub const ANNOTATION_CONFIG: &str = "wg-netns.io/config";
/// Annotation holding the path of a configuration file.
pub const ANNOTATION_CONFIG_FILE: &str = "wg-netns.io/config-file";
/// Where records are kept unless the configuration says `stateDir`.
pub const DEFAULT_STATE_DIR: &str = "/run/wg-oci";
/// `cniVersion` when the configuration gives none.
pub const DEFAULT_CNI_VERSION: &str = "1.1.0";
/// `name` when the configuration gives none.
pub const DEFAULT_NAME: &str = "oci";
/// Where wireguard-go is looked for when `userspaceImplementation` is not
/// set. Hooks may run with an empty environment (youki gives them none), so
/// `PATH` is never consulted.
pub const USERSPACE_CANDIDATES: [&str; 2] =
    ["/usr/bin/wireguard-go", "/usr/local/bin/wireguard-go"];

/// Fields that inline configuration ([`ANNOTATION_CONFIG`]) may not set:
/// the program run as root (`userspaceImplementation`) and the directory
/// written as root (`stateDir`). Neither may any field whose name ends in
/// `File` (`privateKeyFile`, `logFile`, a peer's `presharedKeyFile`), the
/// paths read or written as root. A root-owned configuration file
/// ([`ANNOTATION_CONFIG_FILE`]) may set them all.
pub const INLINE_REFUSED: [&str; 2] = ["userspaceImplementation", "stateDir"];

/// Largest configuration (inline or file) accepted.
const MAX_CONFIG: u64 = 1 << 20;

/// A parsed, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    conf: NetConf,
}

impl Config {
    /// Parse configuration JSON (the schema of wg-cni's network
    /// configuration, with this module's defaults). Does no I/O: key files
    /// are read and host names resolved only when attaching.
    pub fn parse(json: &[u8]) -> Result<Config> {
        let mut v: Value = serde_json::from_slice(json)
            .map_err(|e| Error::Config(format!("not valid JSON: {e}")))?;
        let result = Self::with_defaults(&mut v).and_then(|()| {
            let bytes = Zeroizing::new(
                serde_json::to_vec(&v).map_err(|e| Error::Config(format!("re-encoding: {e}")))?,
            );
            let conf = NetConf::parse(&bytes).map_err(Error::config)?;
            if !matches!(conf.mode, wg_attach::config::Mode::Static) {
                // Managed mode asks a Kubernetes node agent for the pod's
                // interface; a hook has no pod and configures its own.
                return Err(Error::Config(
                    "\"network\" and \"managed\" (wg-cni's managed mode) are not for the OCI hook: \
                     give the interface's address, key and peers"
                        .into(),
                ));
            }
            Ok(conf)
        });
        wipe_secrets(&mut v);
        Ok(Config { conf: result? })
    }

    fn with_defaults(v: &mut Value) -> Result<()> {
        let o = v
            .as_object_mut()
            .ok_or_else(|| Error::Config("expected a JSON object".into()))?;
        if o.get("prevResult").is_some_and(|p| !p.is_null()) {
            return Err(Error::Config(
                "prevResult: has no meaning outside a CNI chain".into(),
            ));
        }
        for (key, default) in [
            ("cniVersion", DEFAULT_CNI_VERSION),
            ("name", DEFAULT_NAME),
            ("stateDir", DEFAULT_STATE_DIR),
        ] {
            if o.get(key).is_none_or(Value::is_null) {
                o.insert(key.into(), Value::String(default.into()));
            }
        }
        Ok(())
    }

    /// Read and parse a configuration file. It must be a regular file owned
    /// by root that neither group nor others can write (it names key files
    /// and the program run as the userspace implementation).
    pub fn from_file(path: &Path) -> Result<Config> {
        let bad = |reason: String| Error::Annotation {
            annotation: ANNOTATION_CONFIG_FILE,
            reason: format!("{}: {reason}", path.display()),
        };
        if !path.is_absolute() {
            return Err(bad("not an absolute path".into()));
        }
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        // Checked on the open file, so a swap after the check changes nothing.
        let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
        check_root_owned(&meta).map_err(bad)?;
        let mut buf = Zeroizing::new(Vec::new());
        file.take(MAX_CONFIG + 1)
            .read_to_end(&mut buf)
            .map_err(|e| bad(e.to_string()))?;
        if buf.len() as u64 > MAX_CONFIG {
            return Err(bad(format!("larger than {MAX_CONFIG} bytes")));
        }
        Self::parse(&buf)
    }

    /// The configuration the annotations select: [`ANNOTATION_CONFIG`] or
    /// [`ANNOTATION_CONFIG_FILE`]; `None` when neither is present (the
    /// container wants no WireGuard); an error when both are.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Option<Config>> {
        match (
            annotations.get(ANNOTATION_CONFIG),
            annotations.get(ANNOTATION_CONFIG_FILE),
        ) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(Error::Annotation {
                annotation: ANNOTATION_CONFIG,
                reason: format!("give {ANNOTATION_CONFIG} or {ANNOTATION_CONFIG_FILE}, not both"),
            }),
            (Some(inline), None) => {
                if inline.len() as u64 > MAX_CONFIG {
                    return Err(Error::Annotation {
                        annotation: ANNOTATION_CONFIG,
                        reason: format!("larger than {MAX_CONFIG} bytes"),
                    });
                }
                refuse_privileged_inline(inline.as_bytes())?;
                Self::parse(inline.as_bytes()).map(Some)
            }
            (None, Some(path)) => Self::from_file(Path::new(path)).map(Some),
        }
    }

    /// The state directory named by the annotations, without validating the
    /// rest of the configuration: what a teardown needs when the
    /// configuration no longer parses (or its file is gone). Inline
    /// configuration cannot name one ([`INLINE_REFUSED`]): always
    /// [`DEFAULT_STATE_DIR`] for it.
    pub fn state_dir_of(annotations: &BTreeMap<String, String>) -> PathBuf {
        let raw = match (
            annotations.get(ANNOTATION_CONFIG),
            annotations.get(ANNOTATION_CONFIG_FILE),
        ) {
            (Some(_), _) => None,
            (None, Some(path)) => {
                let path = Path::new(path);
                let mut buf = Zeroizing::new(Vec::new());
                std::fs::File::open(path)
                    .ok()
                    .filter(|f| f.metadata().is_ok_and(|m| check_root_owned(&m).is_ok()))
                    .and_then(|f| f.take(MAX_CONFIG).read_to_end(&mut buf).ok())
                    .map(|_| buf)
            }
            (None, None) => None,
        };
        let mut v = raw
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or(Value::Null);
        let dir = v
            .get("stateDir")
            .and_then(Value::as_str)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        wipe_secrets(&mut v);
        dir
    }

    /// The parsed configuration, as wg-cni sees it.
    pub fn net_conf(&self) -> &NetConf {
        &self.conf
    }

    /// Where records are kept (`stateDir`, default [`DEFAULT_STATE_DIR`]).
    pub fn state_dir(&self) -> &Path {
        &self.conf.state_dir
    }

    /// The userspace implementation: `userspaceImplementation` (an absolute
    /// path to a root-owned program that neither group nor others can
    /// write), else the first of [`USERSPACE_CANDIDATES`] that exists.
    /// `None` when there is none.
    pub fn userspace(&self) -> Result<Option<Userspace>> {
        match &self.conf.userspace_implementation {
            Some(p) => {
                let bad = |reason: String| {
                    Error::Config(format!(
                        "userspaceImplementation: {}: {reason}",
                        p.display()
                    ))
                };
                if !p.is_absolute() {
                    return Err(bad("not an absolute path (hooks run without PATH)".into()));
                }
                let meta = std::fs::metadata(p).map_err(|e| bad(e.to_string()))?;
                check_root_owned(&meta).map_err(bad)?;
                Ok(Some(Userspace::new(p)))
            }
            None => Ok(default_userspace()),
        }
    }

    /// The backend `backend` asks for (default `auto`: the kernel's
    /// WireGuard when it has one, else the userspace implementation).
    pub fn backend(&self) -> Result<Backend> {
        let userspace = self.userspace()?;
        let found = userspace.is_some();
        let u = userspace.unwrap_or_else(|| Userspace::new(USERSPACE_CANDIDATES[0]));
        Backend::choose(self.conf.backend, u).map_err(|e| match e {
            wg_netns::Error::NoBackend(why) if !found => Error::NoBackend(format!(
                "{why}; none of {} exists (set userspaceImplementation)",
                USERSPACE_CANDIDATES.join(", ")
            )),
            wg_netns::Error::NoBackend(why) => Error::NoBackend(why),
            e => Error::NoBackend(format!("cannot ask the kernel: {e}")),
        })
    }
}

/// The first of [`USERSPACE_CANDIDATES`] that is a file.
pub(crate) fn default_userspace() -> Option<Userspace> {
    USERSPACE_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Userspace::new)
}

/// Refuse inline configuration that names a program, a file or the state
/// directory ([`INLINE_REFUSED`]), naming the field. Set to `null` counts
/// as absent, as everywhere in the schema. JSON that does not parse is
/// left to [`Config::parse`] to report.
fn refuse_privileged_inline(json: &[u8]) -> Result<()> {
    let Ok(mut v) = serde_json::from_slice::<Value>(json) else {
        return Ok(());
    };
    let refused = |o: &serde_json::Map<String, Value>| {
        o.iter()
            .filter(|(_, val)| !val.is_null())
            .map(|(k, _)| k)
            .find(|k| INLINE_REFUSED.contains(&k.as_str()) || k.ends_with("File"))
            .cloned()
    };
    let found = v.as_object().and_then(|o| {
        refused(o).or_else(|| {
            o.get("peers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .find_map(|(i, p)| {
                    p.as_object()
                        .and_then(refused)
                        .map(|k| format!("peers[{i}].{k}"))
                })
        })
    });
    wipe_secrets(&mut v);
    match found {
        None => Ok(()),
        Some(field) => Err(Error::Annotation {
            annotation: ANNOTATION_CONFIG,
            reason: format!(
                "{field} may not be set inline: inline configuration cannot name a program, \
                 a file or the state directory the hook uses as root; put it in a root-owned \
                 file and give {ANNOTATION_CONFIG_FILE}"
            ),
        }),
    }
}

/// A regular file owned by root, writable by nobody else.
fn check_root_owned(meta: &std::fs::Metadata) -> std::result::Result<(), String> {
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != 0 {
        return Err(format!("owned by uid {}, not root", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o} lets group or others write it",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Wipe the secret strings of a parsed JSON tree (`privateKey`,
/// `presharedKey`), as wg-cni does with its own copy.
fn wipe_secrets(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, val) in o.iter_mut() {
                match val {
                    Value::String(s) if k == "privateKey" || k == "presharedKey" => s.zeroize(),
                    other => wipe_secrets(other),
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

    const P1: &str = "jGGhjGIEbR0Noo8MgjAVh+m5pq4GxD9CZDAl/zsfZF0=";

    fn ann(k: &str, v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(k.to_string(), v.to_string())])
    }

    #[test]
    fn defaults_fill_version_name_state_dir_and_wg0() {
        let c = Config::parse(
            format!(r#"{{"address":"10.77.0.2/24","peers":[{{"publicKey":"{P1}","allowedIPs":["10.77.0.1/32"]}}]}}"#)
                .as_bytes(),
        )
        .expect("parses");
        assert_eq!(c.net_conf().name, "oci");
        assert_eq!(c.net_conf().cni_version.as_str(), "1.1.0");
        assert_eq!(c.net_conf().interface_name.as_str(), "wg0");
        assert_eq!(c.state_dir(), Path::new(DEFAULT_STATE_DIR));
        assert_eq!(
            c.net_conf().socket_namespace,
            wg_netns::SocketNamespace::Host
        );
    }

    #[test]
    fn managed_mode_is_refused() {
        for json in [&br#"{"network":"pods"}"#[..], br#"{"managed":true}"#] {
            let e = Config::parse(json).expect_err("managed mode");
            assert!(e.to_string().contains("not for the OCI hook"), "{e}");
        }
    }

    #[test]
    fn given_values_win() {
        let c = Config::parse(
            br#"{"cniVersion":"1.0.0","name":"n1","interfaceName":"wgx","stateDir":"/tmp/s","socketNamespace":"container"}"#,
        )
        .expect("parses");
        assert_eq!(c.net_conf().name, "n1");
        assert_eq!(c.net_conf().interface_name.as_str(), "wgx");
        assert_eq!(c.state_dir(), Path::new("/tmp/s"));
        assert_eq!(
            c.net_conf().socket_namespace,
            wg_netns::SocketNamespace::Container
        );
    }

    #[test]
    fn errors_name_the_field_and_hide_secrets() {
        let secret = "c2VjcmV0LXZhbHVlLW5vdC1hLWtleQ==";
        let e = Config::parse(format!(r#"{{"privateKey":"{secret}"}}"#).as_bytes())
            .expect_err("bad key")
            .to_string();
        assert!(e.contains("privateKey"), "{e}");
        assert!(!e.contains(secret), "{e}");
        let e = Config::parse(br#"{"peers":[{"publicKey":"nope"}]}"#)
            .expect_err("bad peer")
            .to_string();
        assert!(e.contains("peers[0].publicKey"), "{e}");
        let e = Config::parse(br#"{"prevResult":{}}"#)
            .expect_err("chain")
            .to_string();
        assert!(e.contains("prevResult"), "{e}");
        assert!(Config::parse(b"[1]").is_err());
        assert!(Config::parse(b"{").is_err());
    }

    #[test]
    fn annotations_select_inline_or_file_not_both() {
        assert!(Config::from_annotations(&BTreeMap::new())
            .expect("none")
            .is_none());
        assert!(Config::from_annotations(&ann(ANNOTATION_CONFIG, "{}"))
            .expect("inline")
            .is_some());
        let mut both = ann(ANNOTATION_CONFIG, "{}");
        both.insert(ANNOTATION_CONFIG_FILE.into(), "/etc/x".into());
        assert!(Config::from_annotations(&both).is_err());
        let e = Config::from_annotations(&ann(ANNOTATION_CONFIG_FILE, "relative.json"))
            .expect_err("relative")
            .to_string();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn config_file_must_be_root_owned_and_not_writable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("wgoci-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("c.json");
        std::fs::write(&f, r#"{"stateDir":"/tmp/wgoci-x"}"#).expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let root = rustix::process::geteuid().is_root();
        let e = Config::from_file(&f)
            .expect_err("world writable")
            .to_string();
        assert!(
            e.contains("lets group or others write") || (!root && e.contains("not root")),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        if root {
            let c = Config::from_file(&f).expect("root-owned 0644");
            assert_eq!(c.state_dir(), Path::new("/tmp/wgoci-x"));
            assert_eq!(
                Config::state_dir_of(&ann(ANNOTATION_CONFIG_FILE, &f.display().to_string())),
                Path::new("/tmp/wgoci-x")
            );
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn state_dir_of_survives_a_broken_configuration() {
        // Inline configuration cannot move the state directory, broken or not.
        assert_eq!(
            Config::state_dir_of(&ann(
                ANNOTATION_CONFIG,
                r#"{"stateDir":"/x/y","peers":"garbage"}"#
            )),
            Path::new(DEFAULT_STATE_DIR)
        );
        assert_eq!(
            Config::state_dir_of(&ann(ANNOTATION_CONFIG, "not json")),
            Path::new(DEFAULT_STATE_DIR)
        );
        assert_eq!(
            Config::state_dir_of(&ann(ANNOTATION_CONFIG_FILE, "/nonexistent/wgoci.json")),
            Path::new(DEFAULT_STATE_DIR)
        );
    }

    /// Each field that names a program, a file or the state directory is
    /// refused inline, naming it, with nothing secret in the message.
    #[test]
    fn inline_configuration_may_not_name_programs_files_or_the_state_dir() {
        let secret = "c2VjcmV0LXZhbHVlLW5vdC1hLWtleQ==";
        for (json, field) in [
            (
                r#"{"userspaceImplementation":"/usr/bin/id"}"#.to_string(),
                "userspaceImplementation",
            ),
            (r#"{"stateDir":"/etc"}"#.to_string(), "stateDir"),
            (
                r#"{"privateKeyFile":"/etc/shadow"}"#.to_string(),
                "privateKeyFile",
            ),
            (r#"{"logFile":"/etc/ld.so.preload"}"#.to_string(), "logFile"),
            (
                format!(
                    r#"{{"privateKey":"{secret}","peers":[{{"publicKey":"{P1}","allowedIPs":["10.77.0.1/32"]}},{{"publicKey":"{P1}","presharedKeyFile":"/root/psk"}}]}}"#
                ),
                "peers[1].presharedKeyFile",
            ),
            // Any field named *File, also one the schema may add later.
            (r#"{"fooFile":"/x"}"#.to_string(), "fooFile"),
        ] {
            let e = Config::from_annotations(&ann(ANNOTATION_CONFIG, &json))
                .expect_err(field)
                .to_string();
            assert!(
                e.contains(&format!("{field} may not be set inline")),
                "{field}: {e}"
            );
            assert!(e.contains(ANNOTATION_CONFIG_FILE), "{e}");
            assert!(!e.contains(secret), "{e}");
        }
        // Null is absent; the rest of inline configuration still works.
        let c = Config::from_annotations(&ann(
            ANNOTATION_CONFIG,
            &format!(
                r#"{{"stateDir":null,"userspaceImplementation":null,"address":"10.77.0.2/24","peers":[{{"publicKey":"{P1}","allowedIPs":["10.77.0.1/32"],"presharedKeyFile":null}}]}}"#
            ),
        ))
        .expect("inline without privileged fields")
        .expect("a configuration");
        assert_eq!(c.state_dir(), Path::new(DEFAULT_STATE_DIR));
        // The library's own parser (a trusted caller) keeps every field.
        let c = Config::parse(br#"{"stateDir":"/tmp/s","privateKeyFile":"/etc/k"}"#)
            .expect("the embedding API is not an annotation");
        assert_eq!(c.state_dir(), Path::new("/tmp/s"));
    }

    /// A root-owned configuration file may set what inline cannot.
    #[test]
    fn a_root_owned_file_may_name_programs_files_and_the_state_dir() {
        use std::os::unix::fs::PermissionsExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP: files owned by root need root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("wgoci-priv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("c.json");
        std::fs::write(
            &f,
            format!(
                r#"{{"stateDir":"/tmp/wgoci-y","userspaceImplementation":"/usr/bin/wireguard-go",
                    "privateKeyFile":"/etc/wireguard/k","logFile":"/tmp/wgoci-y/log",
                    "peers":[{{"publicKey":"{P1}","presharedKeyFile":"/etc/wireguard/psk"}}]}}"#
            ),
        )
        .expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let c = Config::from_annotations(&ann(ANNOTATION_CONFIG_FILE, &f.display().to_string()))
            .expect("root-owned file")
            .expect("a configuration");
        assert_eq!(c.state_dir(), Path::new("/tmp/wgoci-y"));
        assert_eq!(
            c.net_conf().userspace_implementation.as_deref(),
            Some(Path::new("/usr/bin/wireguard-go"))
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn userspace_implementation_must_be_absolute_and_root_owned() {
        let c = Config::parse(br#"{"userspaceImplementation":"wireguard-go"}"#).expect("parses");
        let e = c.userspace().expect_err("relative").to_string();
        assert!(e.contains("absolute"), "{e}");
        let c =
            Config::parse(br#"{"userspaceImplementation":"/nonexistent/wg-go"}"#).expect("parses");
        assert!(c.userspace().is_err());
    }
}
