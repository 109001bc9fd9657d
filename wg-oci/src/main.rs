//! `wg-oci-hook`: an OCI `createRuntime` / `poststop` hook that gives a
//! container a WireGuard interface (see the `wg_oci::hook` module).
//!
//! Usage in a runtime spec: `{"path": "/usr/local/bin/wg-oci-hook", "args":
//! ["wg-oci-hook", "create"]}` under `hooks.createRuntime`, and the same with
//! `poststop` under `hooks.poststop`. The OCI state comes on stdin. Nothing
//! is ever written to stdout; a failure is one line on stderr and a non-zero
//! exit status, after everything the attempt created has been removed.
//! Works with an empty environment (no `PATH`).

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "wg-oci-hook: internal error: {}{at}",
            one_line(&what)
        );
    }));
    close_inherited_fds();
    let arg = std::env::args().nth(1);
    let outcome = std::panic::catch_unwind(|| wg_oci::hook::main(arg.as_deref(), std::io::stdin()));
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            let _ = writeln!(
                std::io::stderr(),
                "wg-oci-hook: {}",
                one_line(&e.to_string())
            );
            ExitCode::FAILURE
        }
        // The panic hook has said it.
        Err(_) => ExitCode::FAILURE,
    }
}

/// One line, whatever the message holds.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Mark every inherited descriptor above stderr close-on-exec, so the
/// userspace daemon the hook starts keeps none of the runtime's pipes open
/// (a runtime or conmon waiting for EOF on one would wait for the daemon).
fn close_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: only the descriptor's flags are changed; a number that is
        // no longer open (the directory's own descriptor) fails with EBADF,
        // which is ignored.
        let borrowed = unsafe { rustix::fd::BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC);
    }
}
