//! The CNI installer: puts the wg-cni binary, and the userspace WireGuard
//! implementation it starts on nodes without kernel WireGuard, into the
//! node's CNI bin dir and chains wg-cni into the primary CNI's conflist,
//! then keeps it chained.
//!
//! Runs as the DaemonSet's first step (`Installer::install`), then watches
//! the conf dir and the bin dir (`Installer::watch`): a primary CNI that
//! rewrites its file (flannel does at every restart) gets wg-cni
//! re-inserted within about a second, and a binary deleted or replaced is
//! put back, also at the start of a restarted container (which runs no init
//! container). Synchronous, no Kubernetes: the agent runs `watch` on a
//! thread. Whether the agent's stop is an uninstall is [`removal`]'s
//! question (the one part that talks to the apiserver).
//!
//! # Text-preserving edits
//!
//! The conflist belongs to the primary CNI. We never re-serialize it: the
//! document is parsed (serde_json) only to validate it and to see whether
//! wg-cni is already there; a small JSON-aware scanner then finds the
//! top-level `"plugins"` array and our entry is spliced in after its last
//! element (`,` + the whitespace that precedes the last element + our
//! entry, indented like its neighbours). Everything else stays byte for
//! byte, and [`unchain`] removes exactly that span again. Both check their
//! own output by parsing it and comparing it with the expected document,
//! so a scanner bug can only ever produce an error, never a broken file.
//!
//! # Which file
//!
//! [`primary_conflist`] mirrors libcni's `ConfFiles` + containerd's go-cni
//! `loadFromConfDir`: the regular files (or symlinks to them) of the conf
//! dir whose extension is `.conf`, `.conflist` or `.json`, sorted by name,
//! first loadable one wins. Two deliberate differences: a file that does
//! not load is skipped (CRI-O skips it; containerd 2.x instead refuses the
//! whole directory, so there the file we chain is still the one it would
//! use once the broken file is fixed or gone), and hidden files (`.name`)
//! are skipped. libcni does NOT skip hidden files: it filters on the
//! extension alone, and `.` sorts before digits, so a hidden `x.conflist`
//! would be the one it loads. That is why every temporary file this module
//! writes is named `.NAME.wgtmp-PID-N`: hidden, and with an extension
//! (`.wgtmp-PID-N`) no CNI loader reads, even for a moment.
//!
//! # `.conf` files: refused
//!
//! A single-plugin `.conf` (or `.json`) has no plugin list to splice into.
//! Converting it cannot be byte-preserving, and a wrapping `.conflist`
//! beside it does not help: `NAME.conf` sorts before `NAME.conflist`, so
//! the original would have to be moved out of the way, and a primary CNI
//! that checks or rewrites its own file would then fight the installer for
//! ever. So chaining into a `.conf` is refused with [`Error::SingleConf`],
//! which names the file and the two ways out (have the primary CNI write a
//! conflist, or run wg-cni as a secondary network, `WG_CNI_MODE=secondary`).
//! Every primary CNI we know of in current use (flannel, Calico, Cilium,
//! kindnet, the AWS VPC CNI, k3s's flannel) writes a `.conflist`.
//!
//! # The userspace WireGuard binary
//!
//! wg-cni runs userspace WireGuard (wireguard-go) daemons on the host, so
//! the image's wireguard-go (`WG_CNI_USERSPACE_SRC`, default
//! `/opt/wg/bin/wireguard-go`) is installed next to the plugin as
//! [`USERSPACE_BINARY`] (`wg-cni-wireguard-go`, mode 0755), in Chain and
//! Secondary mode alike. A source that does not exist means a kernel-only
//! image: logged, nothing installed, not an error; `none` turns it off.
//! It follows the plugin binary's ownership rules below, with a record of
//! its own in the state file.
//!
//! Both binaries are replaced by renaming a new file over them, never by
//! writing into them ([`install_binary`]): the daemons started from the
//! old file keep running it through an upgrade, with no "text file busy"
//! and no torn pages.
//!
//! # State and ownership
//!
//! What the installer did is recorded in a small JSON state file kept OUT
//! of the conf dir (default `/var/lib/wg-agent/install.json`): the conflist
//! it inserted its entry into, and the binaries it installed (the plugin,
//! `binary`; the userspace WireGuard one, `userspace`, absent from the
//! state files of earlier versions and then read as none). Each binary is
//! recorded before it is written. `uninstall` undoes only that:
//! - the conflist: our entry is removed byte-exactly (the file is left as
//!   it was before `install` when nobody else changed it meanwhile). An
//!   entry that was already there before we came (someone chained wg-cni
//!   by hand, static mode) is not ours and stays.
//! - each binary: when the target did not exist, `uninstall` removes it;
//!   when it existed with identical bytes, it was not ours and stays; when
//!   it existed with other bytes (an older wg-cni installed by hand, say),
//!   those bytes are first saved beside the state file
//!   (`<state dir>/<name>.before-install`) and `uninstall` puts them back.
//!   A binary whose bytes are not ours at uninstall time (someone replaced
//!   it after us, or its source is no longer in the image, so that the
//!   bytes cannot be compared) is left in place.
//!
//! Ownership survives upgrades: a new agent version finds the state file,
//! knows the binaries at the target paths are its own, and overwrites them
//! without taking a backup of the old version. An image that no longer
//! ships (or is told not to install) the userspace binary leaves one
//! installed earlier where it is, recorded, until `uninstall`.

pub use conf_dir::primary_conflist;
pub use edit::{chain, unchain, unchain_type};
pub use error::{ChainError, Error, Result};
pub use files::{install_binary, write_atomic};
pub use installer::Installer;
pub use options::{declare_pod_annotations, InstallOptions, Mode};
pub use report::{BinaryReport, BinaryUninstall, InstallReport, UninstallReport};
pub use state::{BinaryRecord, InstallState};

/// The plugin type (and binary name) the installer chains by default.
pub const PLUGIN_TYPE: &str = "wg-cni";

/// The name, in the CNI bin dir, of the userspace WireGuard implementation
/// (wireguard-go) the installer puts next to the plugin: wg-cni starts it
/// on the host for nodes without kernel WireGuard. A name of our own, so
/// it never collides with a `wireguard-go` someone else installed there.
/// The plugin looks for it under the same name
/// ([`wg_attach::managed::USERSPACE_PROGRAM`]).
pub const USERSPACE_BINARY: &str = wg_attach::managed::USERSPACE_PROGRAM;

mod binaries;
mod conf_dir;
mod edit;
mod error;
mod files;
mod installer;
mod options;
mod report;
mod scan;
mod state;
mod watch;

pub mod removal;

#[cfg(test)]
mod tests;
