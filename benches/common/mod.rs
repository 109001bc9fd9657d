//! Helpers shared by the benchmark programs.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wg_netns::Netns;

/// True when running as root (read from /proc, no extra dependency).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The value after `--NAME` on the command line, parsed.
pub fn flag<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
}

/// Scratch a benchmark made: named namespaces and a directory, removed when
/// this is dropped, whether the run finished or failed. Push a namespace's
/// name right after creating it.
pub struct Cleanup {
    /// Namespaces made with `Netns::create_named`.
    pub namespaces: Vec<String>,
    /// A scratch directory.
    pub dir: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.namespaces {
            let _ = Netns::remove_named(n);
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Run a CNI plugin the way a runtime does (environment + stdin), from a
/// thread inside `node`; returns its wall time, or its stdout on failure.
pub fn run_plugin(
    bin: &Path,
    node: &Netns,
    cmd: &str,
    cid: &str,
    netns: &str,
    conf: &str,
) -> Result<Duration, String> {
    let t = Instant::now();
    let out = node
        .run(|| -> std::io::Result<std::process::Output> {
            let mut child = Command::new(bin)
                .env("CNI_COMMAND", cmd)
                .env("CNI_CONTAINERID", cid)
                .env("CNI_NETNS", netns)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", "/usr/lib/cni")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            if let Some(mut i) = child.stdin.take() {
                i.write_all(conf.as_bytes())?;
            }
            child.wait_with_output()
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let d = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{} {cmd} {cid}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(d)
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("benches/ sits in the workspace")
        .to_path_buf()
}

/// Cargo's target directory for this workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Build the release wg-cni binary and return its path.
pub fn build_plugin() -> Result<PathBuf, String> {
    let st = Command::new(env!("CARGO"))
        .args(["build", "--release", "-q", "-p", "wg-cni"])
        .current_dir(workspace())
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("building wg-cni failed".into());
    }
    Ok(target_dir().join("release/wg-cni"))
}
