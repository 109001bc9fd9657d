//! A small append-only log file. Never stdout (it carries the CNI answer),
//! never key material (no secret type prints its bytes, and nothing here is
//! given a secret). Rotated to `.1` past 8 MiB.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

const MAX_LEN: u64 = 8 << 20;

/// The log of one invocation.
#[derive(Debug, Default)]
pub struct Log {
    file: Option<File>,
    prefix: String,
}

impl Log {
    /// A log that writes nothing (before the configuration names a file).
    pub fn none() -> Log {
        Log::default()
    }

    /// Open `path` for appending; failures only disable logging.
    pub fn open(path: &Path, prefix: String) -> Log {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if std::fs::metadata(path).is_ok_and(|m| m.len() > MAX_LEN) {
            let mut old = path.as_os_str().to_owned();
            old.push(".1");
            let _ = std::fs::rename(path, old);
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .ok();
        Log { file, prefix }
    }

    /// Write one line.
    pub fn line(&mut self, msg: &str) {
        if let Some(f) = &mut self.file {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let _ = writeln!(
                f,
                "{}.{:03} {} {}",
                t.as_secs(),
                t.subsec_millis(),
                self.prefix,
                msg
            );
        }
    }
}
