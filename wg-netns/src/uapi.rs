//! Userspace WireGuard over the cross-platform UAPI
//! (<https://www.wireguard.com/xplatform/>): `set=1` / `get=1` exchanges on
//! the unix socket `/var/run/wireguard/NAME.sock`, and starting an
//! implementation (wireguard-go, boringtun, or `WG_USERSPACE_IMPLEMENTATION`).
//!
//! Requests and replies that carry keys live in zeroizing buffers. Nothing is
//! ever written to stdout: started daemons get `/dev/null` for stdio.
//!
//! Who starts a daemon is a seam: by default [`Userspace`] spawns it as a
//! child of the calling process ([`Userspace::launch`]); with
//! [`Userspace::with_launcher`] a [`Launcher`] starts it instead (for
//! example another process outside the caller's container, so the daemon
//! outlives the caller), and the caller only waits for its socket.

use std::time::Duration;

pub use launch::{LaunchCommand, Launcher};
pub use userspace::Userspace;

pub(crate) use conn::UapiConn;
pub(crate) use launch::process_alive;
pub(crate) use userspace::find_program;
pub(crate) use wire::parse_get;

mod conn;
mod launch;
mod userspace;
mod wire;

/// Where userspace implementations put their control sockets.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/wireguard";

/// Interval between checks while waiting for a daemon's socket to answer or
/// go away: each check is one connect(2), so polling finely is cheap and
/// notices readiness within a millisecond (an exponential back-off was seen
/// to add 5-15 ms to a 9 ms wireguard-go start).
pub(crate) const POLL: Duration = Duration::from_millis(1);

/// How long a UAPI exchange may take before it is abandoned, unless the
/// [`Userspace`] says otherwise ([`Userspace::io_timeout`]).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests;
