//! The hook: the OCI state on stdin, the stage from `argv[1]` (or the
//! state's `status`), the configuration from the container's annotations.
//!
//! - `create` (a `createRuntime` hook): [`crate::attach`] into
//!   `/proc/PID/ns/net` and save the [`Record`] under the state directory,
//!   keyed by container id. A container without a `wg-netns.io/*`
//!   annotation is left alone. If the record cannot be saved, the
//!   attachment is removed again.
//! - `poststop`: [`crate::detach`] from the record and remove it. No record:
//!   nothing to do (success), after removing by name anything a crashed
//!   create may have left.
//!
//! Only `id`, `pid` and `bundle` of the state are relied on (runc, crun and
//! youki agree on nothing else); annotations are read from the state when
//! it has them, else from the bundle's `config.json`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::record::{Record, RecordStore};

/// Largest state or `config.json` read.
const MAX_JSON: u64 = 16 << 20;

/// Which hook is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `createRuntime` (also accepted: `prestart`, which runs at the same
    /// point in the runtime's namespace): attach.
    Create,
    /// `poststop`: detach.
    Poststop,
}

impl Stage {
    /// The stage named by `argv[1]` (`create`, `createRuntime`, `prestart`,
    /// `poststop`), else the one the state's `status` implies (`stopped`:
    /// poststop; `creating`/`created`: create).
    pub fn select(arg: Option<&str>, state: &OciState) -> Result<Stage> {
        match arg {
            Some("create" | "createRuntime" | "prestart") => Ok(Stage::Create),
            Some("poststop" | "delete") => Ok(Stage::Poststop),
            Some(other) => Err(Error::State(format!(
                "unknown stage {other:?} (argv[1] must be create or poststop)"
            ))),
            None => match state.status.as_deref() {
                Some("creating" | "created") => Ok(Stage::Create),
                Some("stopped") => Ok(Stage::Poststop),
                s => Err(Error::State(format!(
                    "status {s:?} does not tell the stage; pass create or poststop as argv[1]"
                ))),
            },
        }
    }
}

/// The OCI state as a hook receives it (the fields used).
#[derive(Debug, Clone, Deserialize)]
pub struct OciState {
    /// Container id.
    pub id: String,
    /// The container's init process (absent or 0 once stopped).
    #[serde(default)]
    pub pid: Option<i64>,
    /// The bundle directory.
    #[serde(default)]
    pub bundle: PathBuf,
    /// `creating`, `created`, `running`, `stopped` (runtimes differ).
    #[serde(default)]
    pub status: Option<String>,
    /// Annotations, when the runtime includes them.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl OciState {
    /// Decode the state JSON.
    pub fn parse(bytes: &[u8]) -> Result<OciState> {
        let state: OciState = serde_json::from_slice(bytes)
            .map_err(|e| Error::State(format!("not a valid state JSON on stdin: {e}")))?;
        if state.id.is_empty() {
            return Err(Error::State("\"id\" is empty".into()));
        }
        Ok(state)
    }

    /// The container's annotations: the state's, else the bundle's
    /// `config.json`'s (none when it has none).
    pub fn annotations(&self) -> Result<BTreeMap<String, String>> {
        if let Some(a) = &self.annotations {
            return Ok(a.clone());
        }
        if self.bundle.as_os_str().is_empty() {
            return Ok(BTreeMap::new());
        }
        #[derive(Deserialize)]
        struct Spec {
            #[serde(default)]
            annotations: Option<BTreeMap<String, String>>,
        }
        let path = self.bundle.join("config.json");
        let bad = |reason: String| Error::State(format!("{}: {reason}", path.display()));
        let file = std::fs::File::open(&path).map_err(|e| bad(e.to_string()))?;
        let mut buf = Zeroizing::new(Vec::new());
        file.take(MAX_JSON)
            .read_to_end(&mut buf)
            .map_err(|e| bad(e.to_string()))?;
        let spec: Spec = serde_json::from_slice(&buf).map_err(|e| bad(e.to_string()))?;
        Ok(spec.annotations.unwrap_or_default())
    }
}

/// Read the state from `input` (at most 16 MiB) and run `stage` (or the
/// one `argv[1]`/the state's status selects).
pub fn main(arg: Option<&str>, input: impl Read) -> Result<()> {
    let mut buf = Zeroizing::new(Vec::new());
    input
        .take(MAX_JSON)
        .read_to_end(&mut buf)
        .map_err(|e| Error::State(format!("reading stdin: {e}")))?;
    let state = OciState::parse(&buf)?;
    let stage = Stage::select(arg, &state)?;
    run(stage, &state)
}

/// Run `stage` for `state`.
pub fn run(stage: Stage, state: &OciState) -> Result<()> {
    let annotations = state.annotations()?;
    match stage {
        Stage::Create => create(state, &annotations),
        Stage::Poststop => poststop(state, &annotations),
    }
}

fn create(state: &OciState, annotations: &BTreeMap<String, String>) -> Result<()> {
    let Some(config) = Config::from_annotations(annotations)? else {
        return Ok(());
    };
    let pid = state
        .pid
        .filter(|&p| p > 0)
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| Error::State(format!("no container pid in the state ({:?})", state.pid)))?;
    let store = RecordStore::new(config.state_dir());
    // Refuse an unusable id before anything is created.
    store.path(&state.id)?;
    let record = crate::attach(&state.id, pid, &config)?;
    if let Err(e) = store.save(&record) {
        let _ = crate::detach(&record);
        return Err(e);
    }
    Ok(())
}

fn poststop(state: &OciState, annotations: &BTreeMap<String, String>) -> Result<()> {
    let config = Config::from_annotations(annotations);
    let dir: PathBuf = match &config {
        Ok(Some(c)) => c.state_dir().to_path_buf(),
        Ok(None) => return Ok(()),
        _ => Config::state_dir_of(annotations),
    };
    let store = RecordStore::new(dir);
    match store.load(&state.id)? {
        Some(record) => teardown(&store, &record),
        None => {
            // Nothing recorded: a create that failed (and rolled back), or
            // one that crashed before saving. Remove by name what the
            // latter may have left; a configuration that no longer parses
            // could not have attached anything.
            if let Ok(Some(c)) = config {
                crate::detach_unrecorded(&state.id, &c)?;
            }
            Ok(())
        }
    }
}

fn teardown(store: &RecordStore, record: &Record) -> Result<()> {
    crate::detach(record)?;
    store.remove(&record.container_id)
}

/// The record directory a `poststop` would use for these annotations.
pub fn state_dir(annotations: &BTreeMap<String, String>) -> PathBuf {
    match Config::from_annotations(annotations) {
        Ok(Some(c)) => c.state_dir().to_path_buf(),
        _ => Config::state_dir_of(annotations),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(json: &str) -> OciState {
        OciState::parse(json.as_bytes()).expect("state")
    }

    #[test]
    fn stage_from_argv_or_status() {
        let runc =
            state(r#"{"ociVersion":"1.0.2","id":"c","status":"creating","pid":42,"bundle":"/b"}"#);
        let crun =
            state(r#"{"ociVersion":"1.0.0","id":"c","status":"created","pid":42,"bundle":"/b"}"#);
        let stopped = state(r#"{"id":"c","status":"stopped","pid":0,"bundle":"/b"}"#);
        let bare = state(r#"{"id":"c","pid":42,"bundle":"/b"}"#);
        assert_eq!(Stage::select(None, &runc).expect("runc"), Stage::Create);
        assert_eq!(Stage::select(None, &crun).expect("crun"), Stage::Create);
        assert_eq!(
            Stage::select(None, &stopped).expect("stopped"),
            Stage::Poststop
        );
        assert!(Stage::select(None, &bare).is_err());
        assert_eq!(
            Stage::select(Some("create"), &bare).expect("argv"),
            Stage::Create
        );
        assert_eq!(
            Stage::select(Some("createRuntime"), &bare).expect("argv"),
            Stage::Create
        );
        assert_eq!(
            Stage::select(Some("poststop"), &runc).expect("argv"),
            Stage::Poststop
        );
        assert!(Stage::select(Some("start"), &runc).is_err());
    }

    #[test]
    fn state_parsing() {
        assert!(OciState::parse(b"").is_err());
        assert!(OciState::parse(br#"{"id":""}"#).is_err());
        assert!(OciState::parse(br#"{"pid":1}"#).is_err());
        let s = state(r#"{"id":"c","pid":7,"bundle":"/b","annotations":{"a":"b"},"extra":[1]}"#);
        assert_eq!(s.pid, Some(7));
        assert_eq!(s.annotations().expect("annotations")["a"], "b");
    }

    #[test]
    fn annotations_from_the_bundle() {
        let dir = std::env::temp_dir().join(format!("wgoci-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"wg-netns.io/config":"{}"}}"#,
        )
        .expect("write");
        let s = state(&format!(
            r#"{{"id":"c","pid":7,"bundle":"{}"}}"#,
            dir.display()
        ));
        assert_eq!(s.annotations().expect("bundle")["wg-netns.io/config"], "{}");
        std::fs::write(dir.join("config.json"), r#"{"ociVersion":"1.0.2"}"#).expect("write");
        assert!(s.annotations().expect("none").is_empty());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn without_annotations_nothing_happens() {
        let s = state(r#"{"id":"c","pid":7,"bundle":"","annotations":{}}"#);
        run(Stage::Create, &s).expect("create is a no-op");
        run(Stage::Poststop, &s).expect("poststop is a no-op");
    }

    #[test]
    fn a_bad_annotation_fails_create_before_anything_is_touched() {
        let s = state(
            r#"{"id":"c","pid":1,"bundle":"","annotations":{"wg-netns.io/config":"{\"peers\":[{\"publicKey\":\"x\"}]}"}}"#,
        );
        let e = run(Stage::Create, &s).expect_err("bad peer").to_string();
        assert!(e.contains("peers[0].publicKey"), "{e}");
    }
}
