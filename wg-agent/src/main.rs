//! The wg-agent binary: `wg-agent` runs the node agent (settings from the
//! environment: see `wg_agent::settings`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info};
use wg_agent::agent::Agent;
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

async fn agent() -> Result<(), String> {
    let settings = Settings::from_vars(|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    let userspace = Userspace::from_env();
    let backend =
        Backend::choose(settings.backend, userspace.clone()).map_err(|e| e.to_string())?;
    info!(node = %settings.node_name, backend = %backend.kind(), "starting");
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("apiserver client: {e}"))?;
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
        tokio::spawn(run::reconcile_loop(Arc::clone(&agent), dirty_rx)),
        tokio::spawn(run::publish_loop(
            Arc::clone(&agent),
            pub_rx,
            pub_tx,
            50,
            Duration::from_secs(2),
        )),
        tokio::spawn(run::timers(Arc::clone(&agent), Arc::clone(&heartbeat))),
        tokio::spawn(server::serve_cni(cni, Arc::clone(&agent))),
        tokio::spawn(server::serve_http(http, Arc::clone(&agent), heartbeat)),
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
    Ok(())
}
