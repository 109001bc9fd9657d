//! `wg-engine serve --control SOCKET --socket-dir DIR --state-dir DIR`: the
//! node's engine daemon (see the library's `daemon` module). Exits 0 at
//! once when another daemon serves the same control socket.

use std::path::PathBuf;
use std::process::ExitCode;

use wg_engine::daemon::{Config, Daemon, DaemonError};

const USAGE: &str = "usage: wg-engine serve [--control SOCKET] [--socket-dir DIR] [--state-dir DIR] [--worker-threads N]";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some("serve".as_ref()) {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let mut cfg = Config::new(
        wg_netns::engine::DEFAULT_CONTROL_SOCKET.into(),
        wg_netns::DEFAULT_SOCKET_DIR.into(),
        wg_netns::engine::DEFAULT_STATE_DIR.into(),
    );
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        };
        match flag.to_str() {
            Some("--control") => cfg.control = PathBuf::from(value),
            Some("--socket-dir") => cfg.socket_dir = PathBuf::from(value),
            Some("--state-dir") => cfg.state_dir = PathBuf::from(value),
            Some("--worker-threads") => match value.to_str().and_then(|v| v.parse().ok()) {
                Some(n) => cfg.worker_threads = n,
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    match Daemon::start(cfg).and_then(Daemon::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(DaemonError::AlreadyRunning(p)) => {
            eprintln!("wg-engine: another daemon serves {}", p.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wg-engine: {e}");
            ExitCode::FAILURE
        }
    }
}
