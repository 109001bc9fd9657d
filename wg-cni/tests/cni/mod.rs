//! Running the wg-cni binary the way a runtime does: environment + stdin in,
//! one JSON document (or nothing) out.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The binary under test: `WG_CNI_BIN` (set in the qemu guest), else the one
/// cargo built for this test.
pub fn bin() -> PathBuf {
    std::env::var_os("WG_CNI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wg-cni")))
}

/// What one invocation produced.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// stdout as JSON (panics if it is not exactly one JSON document).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Assert success and return the parsed result (or Null when stdout is empty).
    pub fn ok(&self) -> Value {
        assert_eq!(self.code, 0, "expected success, got {:?}", self);
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Assert a CNI error with `code` and return its JSON.
    pub fn err(&self, code: u64) -> Value {
        assert_ne!(self.code, 0, "expected failure, got {:?}", self);
        let j = self.json();
        assert_eq!(j["code"].as_u64(), Some(code), "error code: {j}");
        assert!(
            j["msg"].is_string() && j["details"].is_string() && j["cniVersion"].is_string(),
            "error shape: {j}"
        );
        j
    }
}

/// A CNI invocation.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub extra_env: Vec<(String, String)>,
}

impl Call {
    pub fn new(command: &str) -> Self {
        Call {
            command: command.into(),
            ..Default::default()
        }
    }

    pub fn container(mut self, id: &str, netns: &str, ifname: &str) -> Self {
        self.container_id = id.into();
        self.netns = netns.into();
        self.ifname = ifname.into();
        self
    }

    pub fn args(mut self, args: &str) -> Self {
        self.args = args.into();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.extra_env.push((k.into(), v.into()));
        self
    }

    /// Run with `stdin`, in the calling thread's network namespace.
    pub fn run(&self, stdin: &str) -> Out {
        let mut cmd = Command::new(bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !self.command.is_empty() {
            cmd.env("CNI_COMMAND", &self.command);
        }
        for (k, v) in [
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
        ] {
            cmd.env(k, v);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn wg-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait wg-cni");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run inside network namespace `ns` (the runtime's namespace).
    pub fn run_in(&self, ns: &wg_netns::Netns, stdin: &str) -> Out {
        ns.run(|| self.run(stdin)).expect("namespace thread")
    }
}

/// A private state directory, removed on drop.
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn new(tag: &str) -> StateDir {
        let p = std::env::temp_dir().join(format!("wgcni-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        StateDir(p)
    }
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.0.join("wg-cni.log")).unwrap_or_default()
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
