//! A container runtime that embeds youki's `libcontainer` gives its
//! container a WireGuard interface with one library call:
//! [`wg_oci::attach`] between create and start, [`wg_oci::detach`] after the
//! container stopped. No hook, no CNI.
//!
//! ```text
//! sudo target/release/examples/libcontainer_wireguard [--bench N] [--no-failures]
//! ```
//!
//! Self-contained: it makes a node namespace (the "runtime's" network
//! namespace; the libcontainer part runs on a thread inside it, so the
//! WireGuard UDP socket is born there) and a peer namespace with a
//! WireGuard peer (wg-netns, userspace wireguard-go), joined by a veth:
//!
//! ```text
//!  container (new netns)        wglc-PID-node              wglc-PID-peer
//!  wg0 10.98.0.2  <- TUN moved   wireguard-go, UDP socket   wg0 10.98.0.1
//!                                veth 10.97.0.1 <-------->  veth 10.97.0.2:51820
//! ```
//!
//! Every packet stays inside these namespaces (network safety: nothing
//! touches the machine's interfaces). Each scenario prints `ok N - ...` or
//! `not ok N - ...`; the exit status is 1 when one failed. Everything made
//! (containers, interfaces, daemons, sockets, records, cgroups, state and
//! bundle directories, namespaces) is removed also on failure or panic, by
//! guards.
//!
//! Scenarios: the container's process brings `lo` up and pings the peer
//! through the tunnel (exit 0 on success), the peer's counters show the
//! traffic, and nothing is left afterwards; an attach that fails late (a
//! route through an unreachable gateway) leaves nothing and the container
//! is deleted; a panic between attach and start leaves nothing. `--bench N`
//! then times create, attach and start over N containers without the
//! attach, N with it and N with it and `socketNamespace: "container"`
//! (process `true`), in rotating order, and prints medians.

use std::fmt::Display;
use std::path::Path;
use std::time::Instant;

mod bench;
mod container;
mod lab;
mod scenarios;

use bench::bench;
use container::NO_PIVOT;
use lab::Lab;
use scenarios::{ms, scenario_attach_fails, scenario_panic, scenario_ping, Report};

/// Errors of this example: one line, with context.
type Res<T> = Result<T, String>;

/// Add context to an error.
trait Ctx<T> {
    fn ctx(self, what: &str) -> Res<T>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

// The test network. Neither range is routed anywhere outside the
// namespaces this program creates.
const NODE_UNDERLAY: &str = "10.97.0.1/24";
const PEER_UNDERLAY: &str = "10.97.0.2/24";
const PEER_ENDPOINT: &str = "10.97.0.2:51820";
const PEER_TUNNEL: &str = "10.98.0.1";
const CONTAINER_TUNNEL: &str = "10.98.0.2";

fn main() {
    let mut bench_n = 0usize;
    let mut failures = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {
                bench_n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--no-failures" => failures = false,
            "--no-pivot" => NO_PIVOT.store(true, std::sync::atomic::Ordering::Relaxed),
            _ => usage(),
        }
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("libcontainer_wireguard: needs root (namespaces, containers)");
        std::process::exit(2);
    }
    let mut report = Report::default();
    let t = Instant::now();
    let result = Lab::new().and_then(|lab| {
        println!(
            "# lab: {} (veth {NODE_UNDERLAY}) <-> {} (veth {PEER_UNDERLAY}, wg0 {PEER_TUNNEL}) in {}",
            lab.node.path().display(),
            lab.peer.path().display(),
            ms(t.elapsed())
        );
        scenario_ping(&lab, &mut report)?;
        if failures {
            scenario_attach_fails(&lab, &mut report)?;
            scenario_panic(&lab, &mut report)?;
        }
        if bench_n > 0 {
            bench(&lab, &mut report, bench_n)?;
        }
        let names = lab.ns_names.clone();
        drop(lab);
        let left: Vec<_> = names
            .iter()
            .filter(|n| Path::new(wg_netns::NETNS_RUN_DIR).join(n).exists())
            .collect();
        report.check(left.is_empty(), format!("lab namespaces removed {left:?}"));
        Ok(())
    });
    if let Err(e) = result {
        report.check(false, e);
    }
    println!(
        "# {} passed, {} failed",
        report.n - report.failed,
        report.failed
    );
    std::process::exit(if report.failed == 0 { 0 } else { 1 });
}

fn usage() -> ! {
    eprintln!("usage: libcontainer_wireguard [--bench N] [--no-failures] [--no-pivot]");
    std::process::exit(2);
}
