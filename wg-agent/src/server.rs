//! The agent's two doors: the CNI socket (root-only, one request per
//! connection, the pod's namespace passed as a descriptor) and HTTP
//! (`/metrics`, `/healthz`, `/readyz`).
//!
//! An ADD of protocol version 2 or later keeps its connection open to the
//! agent while it is served ([`PluginConn`]): with
//! `WG_AGENT_USERSPACE_LAUNCH=plugin` the agent asks the plugin on it to
//! start the pod's userspace daemon ([`PluginLauncher`]).

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tracing::{debug, info, warn};
use wg_attach::managed::{
    self, Failure, Launch, LaunchNamespace, Launched, Reply, Request, Verb,
    LAUNCH_PROTOCOL_VERSION, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use wg_netns::{LaunchCommand, Launcher};

use crate::agent::Agent;

/// Bind the CNI socket: its directory 0700 and the socket 0600, so only
/// root on the node can ask (the plugin runs as root). A stale socket from
/// a previous run is replaced.
pub fn bind_cni(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// The connection of a CNI request whose plugin can start daemons (an ADD
/// of protocol version 2 or later), while the request is served: after
/// [`PluginConn::close`] (the reply is about to be sent) it starts nothing.
#[derive(Debug)]
pub struct PluginConn {
    stream: Mutex<Option<Arc<UnixStream>>>,
    version: u32,
}

impl PluginConn {
    /// The connection of a request of protocol `version`.
    pub fn new(stream: Arc<UnixStream>, version: u32) -> Arc<Self> {
        Arc::new(PluginConn {
            stream: Mutex::new(Some(stream)),
            version,
        })
    }

    /// The request's protocol version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// A launcher that asks this request's plugin to start daemons in
    /// `namespace`.
    pub fn launcher(self: &Arc<Self>, namespace: LaunchNamespace) -> Arc<dyn Launcher> {
        Arc::new(PluginLauncher {
            conn: Arc::clone(self),
            namespace,
        })
    }

    /// The request is answered: no more launches on it (a device kept
    /// past its ADD must not hold the connection or write to it).
    pub fn close(&self) {
        self.stream.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Starts a userspace daemon by asking the plugin of the CNI request being
/// served: sends [`Reply::Launch`] and reads [`Launched`]. Used only during
/// that request; a daemon recreated later (a repair) is the agent's child.
pub struct PluginLauncher {
    conn: Arc<PluginConn>,
    namespace: LaunchNamespace,
}

impl std::fmt::Debug for PluginLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLauncher")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Launcher for PluginLauncher {
    fn launch(&self, cmd: &LaunchCommand) -> std::io::Result<()> {
        use std::io::{Error, ErrorKind};
        // Held for the whole exchange: one launch at a time per connection.
        let guard = self.conn.stream.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stream) = guard.as_ref() else {
            return Err(Error::new(
                ErrorKind::NotConnected,
                "the CNI request whose plugin could start daemons has been answered",
            ));
        };
        let ask = Launch::new(
            &cmd.name,
            self.namespace,
            cmd.args.clone(),
            cmd.foreground,
            cmd.socket_dir.clone(),
        );
        managed::send(stream, &Reply::Launch(ask), None)
            .map_err(|e| Error::other(format!("asking the plugin to start it: {e}")))?;
        let (answer, _) = managed::recv::<Launched>(stream)
            .map_err(|e| Error::other(format!("waiting for the plugin to start it: {e}")))?;
        match answer.result() {
            Ok(pid) => {
                info!(device = %cmd.name, namespace = ?self.namespace, pid, "the plugin started a userspace daemon");
                Ok(())
            }
            Err(why) => Err(Error::other(format!(
                "the plugin could not start it: {why}"
            ))),
        }
    }
}

/// Whether the process at the other end of a CNI connection may ask: its
/// user id as the kernel reports it (`SO_PEERCRED`) must be root. A lookup
/// that fails refuses the connection: an unknown peer is not a root one.
pub(crate) fn peer_allowed(uid: std::io::Result<u32>) -> Result<(), String> {
    match uid {
        Ok(0) => Ok(()),
        Ok(uid) => Err(format!("the peer runs as uid {uid}, not root")),
        Err(e) => Err(format!("cannot read the peer's credentials: {e}")),
    }
}

/// Serve the CNI socket until the task is dropped.
pub async fn serve_cni(listener: UnixListener, agent: Arc<Agent>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "accept on the CNI socket failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let agent = Arc::clone(&agent);
        tokio::spawn(async move {
            // The peer must be root (the socket's mode says so too), and
            // a peer whose credentials cannot be read is not known to be.
            if let Err(why) = peer_allowed(stream.peer_cred().map(|c| c.uid())) {
                warn!(%why, "refused a CNI request");
                return;
            }
            let std_stream = match stream.into_std().and_then(|s| {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                Ok(s)
            }) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot use a CNI connection");
                    return;
                }
            };
            let std_stream = Arc::new(std_stream);
            let s2 = Arc::clone(&std_stream);
            let got = tokio::task::spawn_blocking(move || managed::recv::<Request>(&s2)).await;
            let (req, fd) = match got {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    debug!(error = %e, "malformed CNI request");
                    return;
                }
                Err(_) => return,
            };
            let started = Instant::now();
            let reply = if !(OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&req.version) {
                Reply::Failed(Failure {
                    code: 2,
                    msg: "the plugin and the agent speak different protocol versions".into(),
                    details: format!(
                        "plugin {}, agent {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
                        req.version
                    ),
                })
            } else {
                let verb = req.verb;
                let pod = req
                    .pod
                    .as_ref()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .unwrap_or_default();
                let container = req.container_id.clone();
                // Only an ADD's plugin answers launches (protocol 2 on).
                let plugin = (verb == Verb::Add && req.version >= LAUNCH_PROTOCOL_VERSION)
                    .then(|| PluginConn::new(Arc::clone(&std_stream), req.version));
                let reply = agent.handle_with(req, fd, plugin.clone()).await;
                if let Some(p) = &plugin {
                    p.close();
                }
                match &reply {
                    Reply::Failed(f) => {
                        warn!(?verb, pod, container, code = f.code, msg = %f.msg, details = %f.details, "CNI request failed")
                    }
                    _ => info!(
                        ?verb,
                        pod,
                        container,
                        ms = started.elapsed().as_millis() as u64,
                        "CNI request served"
                    ),
                }
                reply
            };
            let _ =
                tokio::task::spawn_blocking(move || managed::send(&std_stream, &reply, None)).await;
        });
    }
}

fn respond(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r
}

/// Bounds on the HTTP port, so that no client (a pod can reach the node's
/// address too) can hold it: every connection must send its request head
/// within [`HttpLimits::header_timeout`] (and so may not sit idle between
/// requests longer than that), lives at most
/// [`HttpLimits::connection_lifetime`], and the port serves at most
/// [`HttpLimits::max_connections`] at once, of which at most
/// [`HttpLimits::max_per_address`] from one source address. A connection
/// beyond a cap is closed as soon as it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections served at once from one source address.
    pub max_per_address: usize,
    /// The time a request head (request line and headers) may take to
    /// arrive, counted from the connection's start or the previous
    /// response; also the longest idle keep-alive.
    pub header_timeout: Duration,
    /// The longest a connection is kept, whatever it does (a client that
    /// does not read its response).
    pub connection_lifetime: Duration,
}

impl Default for HttpLimits {
    /// 64 connections, 8 per address, 5 s for a request head, 30 s per
    /// connection: kubelet's probes and a Prometheus scrape (one request,
    /// sent at once) fit well inside.
    fn default() -> Self {
        HttpLimits {
            max_connections: 64,
            max_per_address: 8,
            header_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(30),
        }
    }
}

/// The largest request head read (hyper's smallest allowed buffer bound is
/// 8 KiB): the agent's endpoints take no input.
const HTTP_MAX_BUF: usize = 16 * 1024;

/// One source address's share of the HTTP port, given back on drop.
struct AddressSlot {
    counts: Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    addr: std::net::IpAddr,
}

impl AddressSlot {
    /// A slot for `addr`, unless it already holds `max`.
    fn take(
        counts: &Arc<Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        addr: std::net::IpAddr,
        max: usize,
    ) -> Option<AddressSlot> {
        let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry(addr).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: Arc::clone(counts),
            addr,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.addr);
            }
        }
    }
}

/// Serve `/metrics`, `/healthz` (the reconcile loop is alive) and
/// `/readyz` (the caches have synced and the CNI socket is served), within
/// `limits`.
pub async fn serve_http(
    listener: TcpListener,
    agent: Arc<Agent>,
    alive: Arc<crate::Heartbeat>,
    limits: HttpLimits,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_address = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(HTTP_MAX_BUF);
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept on the HTTP port failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over a cap: closed at once (dropped), before anything is read.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%from, max = limits.max_connections, "HTTP connection refused: the port serves its maximum");
            continue;
        };
        let Some(address_slot) = AddressSlot::take(&per_address, from.ip(), limits.max_per_address)
        else {
            debug!(%from, max = limits.max_per_address, "HTTP connection refused: its address holds its maximum");
            continue;
        };
        let agent = Arc::clone(&agent);
        let alive = Arc::clone(&alive);
        let builder = builder.clone();
        tokio::spawn(async move {
            let _held = (slot, address_slot);
            let svc = hyper::service::service_fn(move |req: HttpRequest<Incoming>| {
                let agent = Arc::clone(&agent);
                let alive = Arc::clone(&alive);
                async move {
                    let r = match req.uri().path() {
                        "/metrics" => {
                            let mut r = respond(StatusCode::OK, agent.metrics.encode());
                            r.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static(
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                ),
                            );
                            r
                        }
                        "/healthz" => match alive.check() {
                            Ok(()) => respond(StatusCode::OK, "ok\n".into()),
                            Err(why) => respond(StatusCode::SERVICE_UNAVAILABLE, why + "\n"),
                        },
                        "/readyz" => {
                            if agent.is_synced() {
                                respond(StatusCode::OK, "ok\n".into())
                            } else {
                                respond(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    "caches not synced\n".into(),
                                )
                            }
                        }
                        _ => respond(StatusCode::NOT_FOUND, "not found\n".into()),
                    };
                    Ok::<_, Infallible>(r)
                }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(limits.connection_lifetime, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%from, error = %e, "HTTP connection ended"),
                Err(_) => debug!(%from, "HTTP connection closed: it lived its maximum"),
            }
        });
    }
}

#[cfg(test)]
mod tests;
