//! The wg-cni binary: one CNI invocation per process. stdout carries only the
//! CNI result or error JSON; logs go to the configured file.

// The one write to stdout is main's, through the locked handle below.
#![deny(clippy::print_stdout, clippy::print_stderr, clippy::dbg_macro)]

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::Value;
use wg_attach::log::Log;
use wg_cni::cni::{CniError, Code, Env};
use zeroize::Zeroizing;

/// Largest configuration accepted on stdin.
const MAX_STDIN: u64 = 16 << 20;

fn main() -> ExitCode {
    let mut stdin = Zeroizing::new(Vec::new());
    let read = std::io::stdin()
        .lock()
        .take(MAX_STDIN)
        .read_to_end(&mut stdin);
    // The version to answer errors in: the input's, when it has one.
    let version = serde_json::from_slice::<Value>(&stdin).ok().and_then(|v| {
        v.get("cniVersion")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let mut log = Log::none();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Err(e) = read {
            return Err(CniError::new(Code::Io, "reading stdin", e.to_string()));
        }
        let env = Env::from_vars(|k| std::env::var(k).ok())?;
        wg_cni::cmd::run(&env, &stdin, &mut log)
    }))
    .unwrap_or_else(|_| {
        Err(CniError::new(
            Code::Io,
            "internal error",
            "wg-cni panicked; see stderr",
        ))
    });
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(result)) => {
            let _ = writeln!(out, "{result}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(version.as_deref()));
            ExitCode::FAILURE
        }
    }
}
