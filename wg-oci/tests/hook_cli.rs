//! The built `wg-oci-hook` as a runtime runs it: an empty environment, the
//! state on stdin. It never writes to stdout; a failure is exactly one line
//! on stderr and exit status 1; a container without annotations, or a
//! poststop without a record, is success.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn hook(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wg-oci-hook"))
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the hook");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write state");
    child.wait_with_output().expect("hook output")
}

fn one_line_failure(out: &Output, contains: &str) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("wg-oci-hook: "), "{err:?}");
    assert!(err.contains(contains), "{err:?} lacks {contains:?}");
}

fn success(out: &Output) {
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
}

#[test]
fn failures_are_one_line_on_stderr_and_nothing_on_stdout() {
    one_line_failure(&hook(&["create"], ""), "OCI state");
    one_line_failure(&hook(&["create"], "{not json"), "OCI state");
    one_line_failure(
        &hook(&["start"], r#"{"id":"c","pid":1,"bundle":""}"#),
        "unknown stage",
    );
    one_line_failure(
        &hook(&[], r#"{"id":"c","pid":1,"bundle":"","status":"running"}"#),
        "does not tell the stage",
    );
    let secret = "c2VjcmV0LXZhbHVlLW5vdC1hLWtleQ==";
    let state = serde_json::json!({"id": "c", "pid": 1, "bundle": "", "annotations": {
        "wg-netns.io/config": format!(r#"{{"privateKey":"{secret}","peers":[]}}"#)}});
    let out = hook(&["create"], &state.to_string());
    one_line_failure(&out, "privateKey");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
    let state = serde_json::json!({"id": "c", "pid": 1, "bundle": "", "annotations": {
        "wg-netns.io/config": "{\"peers\":[{\"publicKey\":\"x\"}]}"}});
    one_line_failure(&hook(&["create"], &state.to_string()), "peers[0].publicKey");
    let state = serde_json::json!({"id": "c", "pid": 1, "bundle": "", "annotations": {
        "wg-netns.io/config-file": "/nonexistent/wg-oci.json"}});
    one_line_failure(
        &hook(&["create"], &state.to_string()),
        "wg-netns.io/config-file",
    );
    let state = serde_json::json!({"id": "../c", "pid": 1, "bundle": "", "annotations": {
        "wg-netns.io/config": "{}"}});
    one_line_failure(&hook(&["create"], &state.to_string()), "container id");
}

#[test]
fn no_annotation_and_no_record_are_success() {
    let plain = r#"{"ociVersion":"1.0.2","id":"c","status":"creating","pid":1,"bundle":"","annotations":{}}"#;
    success(&hook(&["create"], plain));
    success(&hook(&[], plain));
    success(&hook(&["poststop"], plain));
    // A poststop whose configuration no longer parses: nothing recorded,
    // nothing to do.
    let dir = std::env::temp_dir().join(format!("wgoci-cli-{}", std::process::id()));
    let state = serde_json::json!({"id": "c", "pid": 0, "bundle": "", "status": "stopped",
        "annotations": {"wg-netns.io/config":
            format!(r#"{{"stateDir":"{}","peers":"broken"}}"#, dir.display())}});
    success(&hook(&[], &state.to_string()));
    assert!(!dir.join("c.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
