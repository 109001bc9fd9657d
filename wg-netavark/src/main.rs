//! The wg-netavark binary: one netavark plugin invocation per process.
//! stdout carries only the answer (`info`, the network, the status block)
//! or `{"error": "..."}` with exit code 1; nothing else is printed, and no
//! key material is ever part of either.

#![deny(missing_docs)]

use std::io::{Read, Write};
use std::process::ExitCode;

use wg_netavark::types::JsonError;
use wg_netavark::Error;
use zeroize::Zeroizing;

/// Largest input accepted on stdin.
const MAX_STDIN: u64 = 16 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = std::panic::catch_unwind(|| {
        wg_netavark::cmd::run(&args, || {
            // Wiped when dropped: the input holds paths, not keys (inline
            // keys are refused), but it is wiped all the same.
            let mut input = Zeroizing::new(Vec::new());
            std::io::stdin()
                .lock()
                .take(MAX_STDIN)
                .read_to_end(&mut input)
                .map_err(Error::Stdin)?;
            Ok(input)
        })
    })
    .unwrap_or_else(|_| {
        Err(Error::Input(
            "internal error: wg-netavark panicked (see stderr)".into(),
        ))
    });
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(answer)) => {
            let _ = writeln!(out, "{answer}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let answer = JsonError {
                error: e.to_string(),
            };
            let body = serde_json::to_string(&answer)
                .unwrap_or_else(|_| r#"{"error":"unprintable error"}"#.into());
            let _ = writeln!(out, "{body}");
            ExitCode::FAILURE
        }
    }
}
