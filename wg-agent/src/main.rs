//! The wg-agent binary (settings from the environment):
//!
//! - `wg-agent`: the node agent (`wg_agent::settings`); with
//!   `WG_CNI_CONF_DIR` set it also keeps wg-cni installed (its binaries
//!   and its entry in the node's primary conflist, put back when they go
//!   missing), and removes what it installed when it stops because its
//!   DaemonSet is being deleted (`wg_agent::install::removal`: never
//!   because of an apiserver error alone).
//! - `wg-agent install`: install wg-cni on the node once (an init
//!   container): the plugin binary, its userspace WireGuard companion
//!   (`wg-cni-wireguard-go`, when the image ships wireguard-go), and the
//!   entry in the primary conflist (`wg_agent::install`). It logs one line
//!   saying what became of each.
//! - `wg-agent uninstall`: remove exactly what `install` added.
//! - `wg-agent showconf [-n NAMESPACE] PEER`: print the WireGuard
//!   configuration of the host outside the cluster that a WireGuardPeer
//!   describes (`wg_agent::showconf`); installed as `kubectl-wg`, the same
//!   is `kubectl wg showconf`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use wg_agent::agent::Agent;
use wg_agent::install::removal::{self, DaemonSetWatch, Owner};
use wg_agent::install::{InstallOptions, Installer};
use wg_agent::keys::KeyStore;
use wg_agent::local::Records;
use wg_agent::metrics::Metrics;
use wg_agent::settings::Settings;
use wg_agent::{run, server, Heartbeat};
use wg_netns::{Backend, Userspace};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WG_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // Installed as `kubectl-wg`, it is the kubectl plugin `kubectl wg`.
    let plugin = std::env::args()
        .next()
        .is_some_and(|a| a.rsplit('/').next() == Some("kubectl-wg"));
    match std::env::args().nth(1).as_deref() {
        Some("showconf") => return showconf(),
        _ if plugin => {
            eprintln!("usage: kubectl wg showconf [-n NAMESPACE] PEER [--format setconf|wg-quick]");
            return ExitCode::from(2);
        }
        None => {}
        Some("install") => return install_step("install", Installer::install),
        Some("uninstall") => return install_step("uninstall", Installer::uninstall),
        Some(other) => {
            error!(
                argument = other,
                "unknown command: wg-agent [install | uninstall | showconf]"
            );
            return ExitCode::from(2);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(agent()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "wg-agent stopped");
            ExitCode::FAILURE
        }
    }
}

/// `wg-agent showconf ...`: print an outside host's WireGuard
/// configuration for a WireGuardPeer (wg_agent::showconf), with the
/// caller's kubeconfig.
fn showconf() -> ExitCode {
    let args = match wg_agent::showconf::Args::parse(std::env::args().skip(2)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = rt.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("no cluster: {e}"))?;
        wg_agent::showconf::showconf(client, &args)
            .await
            .map_err(|e| e.to_string())
    });
    match out {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("showconf: {e}");
            ExitCode::FAILURE
        }
    }
}

fn installer() -> Result<Installer, String> {
    InstallOptions::from_env()
        .map(Installer::new)
        .map_err(|e| e.to_string())
}

/// `wg-agent install` and `wg-agent uninstall`: one installer step, its
/// report logged (the plugin, the userspace WireGuard binary, the conflist).
fn install_step<R: std::fmt::Display>(
    verb: &str,
    step: impl FnOnce(&Installer) -> wg_agent::install::Result<R>,
) -> ExitCode {
    match installer().and_then(|i| step(&i).map_err(|e| e.to_string())) {
        Ok(r) => {
            info!("wg-cni {verb}ed: {r}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "cannot {verb} wg-cni");
            ExitCode::FAILURE
        }
    }
}

async fn agent() -> Result<(), String> {
    let settings = Settings::from_vars(|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    let mut userspace = Userspace::from_env();
    userspace.io_timeout = settings.device_timeout;
    let backend =
        Backend::choose(settings.backend, userspace.clone()).map_err(|e| e.to_string())?;
    info!(
        node = %settings.node_name,
        backend = %backend.kind(),
        userspace_launch = %settings.userspace_launch,
        "starting"
    );
    if backend.kind() == wg_netns::BackendKind::Userspace {
        // Every wireguard-go daemon holds an inotify instance (it watches
        // its control socket): the per-user limit caps the node's devices.
        if let Some(n) = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|n| *n < 1024)
        {
            warn!(
                max_user_instances = n,
                "userspace WireGuard: each device holds an inotify instance, so this node can hold \
                 fewer than {n} pod interfaces; raise fs.inotify.max_user_instances"
            );
        }
    }
    // In-cluster, or the apiserver named by the wg-cni-env ConfigMap
    // (clusters without kube-proxy).
    let endpoint = std::env::var(wg_agent::apiserver::ENDPOINT_VAR).ok();
    let client = wg_agent::apiserver::client(endpoint.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    // The CNI installer's watch: wg-cni back in the chain whenever the
    // primary CNI rewrites its conflist, its binaries back when they go
    // missing; and the watch of the DaemonSet whose deletion uninstalls.
    let stop = Arc::new(AtomicBool::new(false));
    let owner = Owner::from_env();
    let (watch, ds_watch) = match std::env::var_os("WG_CNI_CONF_DIR") {
        None => (None, None),
        Some(_) => {
            let inst = installer()?;
            let stop = Arc::clone(&stop);
            let ds_watch = DaemonSetWatch::start(client.clone(), &owner);
            let thread = std::thread::spawn(move || {
                let r = inst.watch(&stop, |r| match r {
                    Ok(true) => info!("wg-cni put back on the node (binaries or conflist entry)"),
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "cannot keep wg-cni installed"),
                });
                if let Err(e) = r {
                    error!(error = %e, "the conflist watch stopped");
                }
            });
            (Some(thread), Some(ds_watch))
        }
    };
    let keys = KeyStore::open(&settings.state_dir.join("keys")).map_err(|e| e.to_string())?;
    let records =
        Records::open(&settings.state_dir.join("attachments")).map_err(|e| e.to_string())?;
    let (dirty_tx, dirty_rx) = mpsc::unbounded_channel();
    let (pub_tx, pub_rx) = mpsc::unbounded_channel();
    let agent = Arc::new(
        Agent::new(
            settings.clone(),
            client,
            backend,
            userspace,
            keys,
            records,
            dirty_tx,
            pub_tx.clone(),
            Metrics::new(),
        )
        .map_err(|e| e.to_string())?,
    );
    agent.restore().await;
    let cni = server::bind_cni(&settings.socket())
        .map_err(|e| format!("CNI socket {}: {e}", settings.socket().display()))?;
    let http = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("HTTP {}: {e}", settings.listen))?;
    let heartbeat = Arc::new(Heartbeat::new(
        settings.stats_interval * 3 + Duration::from_secs(30),
    ));
    heartbeat.beat();
    let tasks = vec![
        tokio::spawn(run::watches(Arc::clone(&agent))),
        tokio::spawn(run::scope_loop(Arc::clone(&agent))),
        tokio::spawn(run::reconcile_loop(Arc::clone(&agent), dirty_rx)),
        tokio::spawn(run::publish_loop(
            Arc::clone(&agent),
            pub_rx,
            pub_tx,
            50,
            Duration::from_secs(2),
        )),
        tokio::spawn(run::timers(Arc::clone(&agent), Arc::clone(&heartbeat))),
        tokio::spawn(wg_agent::agent::links::watch_links(Arc::clone(&agent))),
        tokio::spawn(server::serve_cni(cni, Arc::clone(&agent))),
        tokio::spawn(server::serve_http(
            http,
            Arc::clone(&agent),
            heartbeat,
            server::HttpLimits::default(),
        )),
    ];
    info!(socket = %settings.socket().display(), listen = %settings.listen, "serving");
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping; devices stay as they are"),
        _ = int.recv() => info!("SIGINT: stopping; devices stay as they are"),
    }
    for t in tasks {
        t.abort();
    }
    let _ = std::fs::remove_file(settings.socket());
    if let Some(w) = watch {
        stop.store(true, Ordering::Release);
        let _ = w.join();
        let verdict = removal::decide(
            agent.client(),
            &owner,
            ds_watch.as_ref(),
            removal::Limits::default(),
        )
        .await;
        if let removal::Verdict::Uninstall(_) = verdict {
            info!(reason = %verdict, "the install is being removed: uninstalling wg-cni from the node");
            match installer().and_then(|i| i.uninstall().map_err(|e| e.to_string())) {
                Ok(r) => info!("wg-cni uninstalled: {r}"),
                Err(e) => error!(error = %e, "uninstall failed"),
            }
        } else {
            info!(reason = %verdict, "wg-cni stays installed");
        }
    }
    Ok(())
}
