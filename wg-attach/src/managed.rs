//! Managed mode's wire protocol: what wg-cni and the node agent (wg-agent)
//! say to each other over the agent's unix socket.
//!
//! In managed mode the plugin holds no keys, no addresses and no Kubernetes
//! credentials. It sends the verb, the container's identity, the pod's
//! identity (from `CNI_ARGS`) and the container's network namespace as an
//! open file descriptor (`SCM_RIGHTS`), so the agent needs no view of the
//! runtime's mount namespace to reach it; the agent answers with what it
//! made, and the plugin turns that into the CNI result.
//!
//! Framing: per connection, one request, then zero or more
//! [`Launch`]/[`Launched`] exchanges, then one reply. Each message is a
//! 4-byte big-endian length followed by that many bytes of JSON (at most
//! [`MAX_MESSAGE`]). The descriptor travels with the request's first byte.
//!
//! A [`Reply::Launch`] asks the plugin to start a userspace WireGuard
//! daemon ([`USERSPACE_PROGRAM`], next to the plugin) and answer
//! [`Launched`] before the agent goes on: the agent does so when it runs
//! with `WG_AGENT_USERSPACE_LAUNCH=plugin`, so that the daemon is a child
//! of the container runtime on the host rather than of the agent's
//! container, and survives the agent's restart. Only an ADD of version 2
//! or later is asked; the plugin answers at most [`MAX_LAUNCHES`] per
//! request.
//!
//! ```
//! use wg_attach::managed::{Launch, LaunchNamespace, Launched, Reply, Request, Verb};
//!
//! let req = Request::new(Verb::Add, "c1", "eth0", "/var/run/netns/cni-1");
//! let json = serde_json::to_string(&req)?;
//! assert!(json.contains(r#""verb":"ADD""#));
//! let reply: Reply = serde_json::from_str(r#"{"skipped":{"reason":"the pod asks for no WireGuard network"}}"#)?;
//! assert!(matches!(reply, Reply::Skipped { .. }));
//!
//! // The agent asks for a daemon in the pod's namespace; the plugin answers.
//! let ask = Reply::Launch(Launch::new("wga1b2c3d4", LaunchNamespace::Pod, vec![], true, "/var/run/wireguard".into()));
//! let json = serde_json::to_string(&ask)?;
//! assert!(json.starts_with(r#"{"launch":{"name":"wga1b2c3d4","namespace":"pod""#), "{json}");
//! assert_eq!(serde_json::to_string(&Launched::started(4242))?, r#"{"pid":4242}"#);
//! assert_eq!(Launched::failed("no program").result(), Err("no program".to_string()));
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use wg_netns::{IpNetwork, PublicKey};

/// Where the agent listens unless a configuration says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/wg-agent/cni.sock";

/// Where the agent leaves, for each network, what the plugin must know when
/// the agent is unreachable (`NAME.json`: [`NetworkHint`]).
pub const DEFAULT_HINT_DIR: &str = "/run/wg-agent/networks";

/// The runtime capability that carries the pod's annotations into the
/// plugin's `runtimeConfig` (containerd's and CRI-O's name; libcni passes
/// it only to an entry that declares it in `"capabilities"`).
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// The pod annotation naming the network a pod joins in annotation mode
/// (the agent reads the same one from the apiserver:
/// `wg_k8s_types::ANNOTATION_NETWORK`).
pub const ANNOTATION_NETWORK: &str = "wireguard.wg-netns.io/network";

/// The protocol's version, the one [`Request::new`] sets. The agent serves
/// requests from [`OLDEST_PROTOCOL_VERSION`] to this one and refuses the
/// others.
///
/// - 1: one request, one reply.
/// - 2: the agent may ask an ADD's plugin to start a daemon
///   ([`Reply::Launch`]) before it replies.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest request version the agent serves. A plugin of version 1
/// cannot start daemons: the agent starts them itself.
pub const OLDEST_PROTOCOL_VERSION: u32 = 1;

/// The first request version whose plugin answers [`Reply::Launch`].
pub const LAUNCH_PROTOCOL_VERSION: u32 = 2;

/// The userspace WireGuard implementation the plugin starts for the agent:
/// this file next to the plugin's own executable (the installer copies
/// wireguard-go into the CNI bin directory under this name).
pub const USERSPACE_PROGRAM: &str = "wg-cni-wireguard-go";

/// The most [`Reply::Launch`] messages a plugin answers for one request
/// (a pod has one interface per network; a retried start is a second):
/// an agent that asks for more is broken, and the plugin gives up rather
/// than loop.
pub const MAX_LAUNCHES: usize = 4;

/// Largest request or reply, bytes.
pub const MAX_MESSAGE: usize = 1 << 20;

/// The CNI verbs the agent serves (STATUS and GC are answered by the plugin
/// and the agent's own garbage collection).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verb {
    /// Create (or repair) the pod's interface.
    Add,
    /// Remove it; whatever is already gone is success.
    Del,
    /// Compare it with what the resources say.
    Check,
}

/// Which pod, from `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
/// `K8S_POD_UID`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID, when the runtime passes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// What the plugin asks.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Request {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The verb.
    pub verb: Verb,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME` (the chain's interface; the WireGuard interface's name
    /// comes from the network).
    pub ifname: String,
    /// `CNI_NETNS` as the runtime gave it (the descriptor is what the agent
    /// uses; the path is recorded for after an agent restart).
    pub netns_path: String,
    /// The network the configuration names (`"network"`); `None`: the
    /// pod's annotation decides, and a pod without one is passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The pod, when the runtime is Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

impl Request {
    /// A request of the current version for no named network and no pod.
    pub fn new(verb: Verb, container_id: &str, ifname: &str, netns_path: &str) -> Self {
        Request {
            version: PROTOCOL_VERSION,
            verb,
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            netns_path: netns_path.to_string(),
            network: None,
            pod: None,
        }
    }

    /// Name the network.
    pub fn network(mut self, network: Option<String>) -> Self {
        self.network = network;
        self
    }

    /// Name the pod.
    pub fn pod(mut self, pod: Option<PodRef>) -> Self {
        self.pod = pod;
        self
    }
}

/// What the agent made for an ADD.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Attached {
    /// The network.
    pub network: String,
    /// The WireGuard interface's name in the pod.
    pub interface: String,
    /// Its addresses, with the pool's prefix length.
    pub addresses: Vec<IpNetwork>,
    /// Networks routed through it (the pools, the peers' allowed IPs, the
    /// network's extra routes).
    pub routes: Vec<IpNetwork>,
    /// Its MTU.
    pub mtu: u32,
    /// Its public key (the private key stays with the agent).
    pub public_key: PublicKey,
}

impl Attached {
    /// What an ADD made.
    pub fn new(
        network: String,
        interface: String,
        addresses: Vec<IpNetwork>,
        routes: Vec<IpNetwork>,
        mtu: u32,
        public_key: PublicKey,
    ) -> Self {
        Attached {
            network,
            interface,
            addresses,
            routes,
            mtu,
            public_key,
        }
    }
}

/// A refusal, as a CNI error: the code is the one the plugin returns.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// CNI error code (11: try again later).
    pub code: u32,
    /// What failed.
    pub msg: String,
    /// Why.
    #[serde(default)]
    pub details: String,
}

/// Which network namespace a [`Launch`]ed daemon runs in (where its UDP
/// socket lives).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum LaunchNamespace {
    /// The plugin's own: the node's (the network's `socketNamespace` is
    /// `host`).
    Node,
    /// The container's, whose descriptor came with the request (the
    /// network's `socketNamespace` is `container`).
    Pod,
}

/// The agent asks the plugin to start a userspace WireGuard daemon:
/// [`USERSPACE_PROGRAM`] `[args] [-f] NAME`, in its own session, with
/// `WG_SUDO=true` and `/dev/null` for stdio
/// ([`wg_netns::Userspace::launch`]). The agent then waits for the daemon's
/// socket `SOCKET_DIR/NAME.sock` itself.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Launch {
    /// The interface's birth name (its TUN, and its socket's name). The
    /// plugin refuses one that is not an interface name.
    pub name: String,
    /// Where the daemon runs.
    pub namespace: LaunchNamespace,
    /// Arguments before `-f` and the name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Keep the daemon in the foreground (`-f`).
    #[serde(default)]
    pub foreground: bool,
    /// Where the agent waits for the daemon's socket (wireguard-go always
    /// binds `/var/run/wireguard`).
    pub socket_dir: PathBuf,
}

impl Launch {
    /// A launch of `name`'s daemon in `namespace`.
    pub fn new(
        name: &str,
        namespace: LaunchNamespace,
        args: Vec<String>,
        foreground: bool,
        socket_dir: PathBuf,
    ) -> Self {
        Launch {
            name: name.to_string(),
            namespace,
            args,
            foreground,
            socket_dir,
        }
    }
}

/// The plugin's answer to a [`Launch`]: the daemon's process id (in the
/// host's PID namespace), or why it could not be started.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Launched {
    /// The started process (it may still fail before its socket answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Why nothing was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Launched {
    /// Process `pid` was started.
    pub fn started(pid: u32) -> Self {
        Launched {
            pid: Some(pid),
            error: None,
        }
    }

    /// Nothing was started, because of `error`.
    pub fn failed(error: impl Into<String>) -> Self {
        Launched {
            pid: None,
            error: Some(error.into()),
        }
    }

    /// The process id (`None` if the plugin named none), or the error.
    pub fn result(&self) -> Result<Option<u32>, String> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(self.pid),
        }
    }
}

/// What the agent answers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    /// ADD made (or found) the interface.
    Attached(Attached),
    /// The pod asks for no network of the agent's (no annotation, no
    /// configured network): the plugin passes the chain's result through.
    Skipped {
        /// Why, for the plugin's log.
        reason: String,
    },
    /// DEL or CHECK succeeded.
    Done,
    /// The request failed.
    Failed(Failure),
    /// Not a reply yet: start this daemon and answer [`Launched`], then
    /// read on (protocol version 2, ADD only).
    Launch(Launch),
}

/// What the plugin reads when it cannot reach the agent: how the network
/// wants that handled. The agent writes one per network it knows.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkHint {
    /// `"fail"` or `"ignore"` (the network's `failurePolicy`).
    pub failure_policy: String,
}

/// A protocol failure (not a refusal by the agent).
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// Connecting, sending or receiving failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The peer sent something that is not the protocol.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The socket, its directory or the process listening on it is not
    /// one the plugin trusts to be the agent ([`connect_agent`]).
    #[error("not trusted as the node agent: {0}")]
    Untrusted(String),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ProtoError {
    move |source| ProtoError::Io { what, source }
}

/// Write one frame; `fd` travels with its first byte.
pub fn send<T: Serialize>(
    stream: &UnixStream,
    msg: &T,
    fd: Option<&OwnedFd>,
) -> Result<(), ProtoError> {
    let body = serde_json::to_vec(msg).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if body.len() > MAX_MESSAGE {
        return Err(ProtoError::Malformed(format!(
            "message of {} bytes exceeds {MAX_MESSAGE}",
            body.len()
        )));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let mut start = 0;
    if let Some(fd) = fd {
        let fds = [fd.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !anc.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(ProtoError::Malformed("no room for the descriptor".into()));
        }
        let n = rustix::net::sendmsg(
            stream,
            &[io::IoSlice::new(&frame)],
            &mut anc,
            SendFlags::NOSIGNAL,
        )
        .map_err(|e| ProtoError::Io {
            what: "sending the request",
            source: e.into(),
        })?;
        start = n;
    }
    let mut w = stream;
    w.write_all(&frame[start..])
        .map_err(io_err("sending a message"))
}

/// Read one frame and the descriptor that came with it, if any.
pub fn recv<T: for<'de> Deserialize<'de>>(
    stream: &UnixStream,
) -> Result<(T, Option<OwnedFd>), ProtoError> {
    let mut len = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut got = 0;
    let mut fd = None;
    while got < 4 {
        let msg = rustix::net::recvmsg(
            stream,
            &mut [io::IoSliceMut::new(&mut len[got..])],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| ProtoError::Io {
            what: "receiving a message",
            source: e.into(),
        })?;
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                for f in fds {
                    // Keep the first; the others close when dropped.
                    fd.get_or_insert(f);
                }
            }
        }
        if msg.bytes == 0 {
            return Err(ProtoError::Malformed(
                "the connection closed before a message".into(),
            ));
        }
        got += msg.bytes;
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_MESSAGE {
        return Err(ProtoError::Malformed(format!(
            "message of {n} bytes exceeds {MAX_MESSAGE}"
        )));
    }
    let mut body = vec![0u8; n];
    let mut r = stream;
    r.read_exact(&mut body)
        .map_err(io_err("receiving a message"))?;
    let msg = serde_json::from_slice(&body).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    Ok((msg, fd))
}

/// Connect to the agent's socket, waiting at most `timeout` (a listener
/// whose backlog is full makes `connect` wait), with `timeout` as the
/// stream's read and write timeouts. `timeout` must not be zero.
pub fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream, ProtoError> {
    use rustix::net::{sockopt, AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let what = "connecting to the agent";
    let fail = |e: rustix::io::Errno| ProtoError::Io {
        what,
        source: e.into(),
    };
    let addr = SocketAddrUnix::new(socket).map_err(fail)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(fail)?;
    // SO_SNDTIMEO bounds a unix socket's connect as well as its writes.
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(timeout)).map_err(fail)?;
    rustix::net::connect(&fd, &addr).map_err(fail)?;
    let stream = UnixStream::from(fd);
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io_err("setting a timeout"))?;
    Ok(stream)
}

/// Whether `uid` may be the agent: root, or the plugin's own user (the
/// runtime runs the plugin as root; a plugin run as another user gains
/// nothing by distrusting that user, who could run it anyway).
pub fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// Check the directory of the agent's socket: a directory (symbolic links
/// followed), owned by a [trusted](trusted_uid) user, with no permission
/// for group or others (mode 0700, as the agent makes it). Nobody else can
/// then put a socket, or a hint, in it.
pub fn check_socket_dir(dir: &Path) -> Result<(), ProtoError> {
    let st = rustix::fs::stat(dir).map_err(|e| ProtoError::Io {
        what: "reading the agent socket's directory",
        source: e.into(),
    })?;
    let untrusted = |why: String| Err(ProtoError::Untrusted(format!("{}: {why}", dir.display())));
    let mode = st.st_mode & 0o7777;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
        return untrusted("not a directory".into());
    }
    if !trusted_uid(st.st_uid) {
        return untrusted(format!(
            "owned by uid {}, not root: anyone with that uid could listen in the agent's place",
            st.st_uid
        ));
    }
    if mode & 0o077 != 0 {
        return untrusted(format!(
            "mode {mode:04o} gives group or others access; the agent's directory is 0700"
        ));
    }
    Ok(())
}

/// Check the process at the other end of a connected stream is
/// [trusted](trusted_uid) (`SO_PEERCRED`: the user that made the listening
/// socket). This holds even if the socket's path was swapped after
/// [`check_socket_dir`].
pub fn check_peer(stream: &UnixStream) -> Result<(), ProtoError> {
    let cred = rustix::net::sockopt::socket_peercred(stream).map_err(|e| ProtoError::Io {
        what: "reading the agent's credentials",
        source: e.into(),
    })?;
    let uid = cred.uid.as_raw();
    if trusted_uid(uid) {
        Ok(())
    } else {
        Err(ProtoError::Untrusted(format!(
            "the process listening (pid {}) runs as uid {uid}, not root",
            cred.pid.as_raw_nonzero()
        )))
    }
}

/// Connect to the agent, trusting only what the agent can be:
/// [`check_socket_dir`] on the socket's directory, [`connect`], then
/// [`check_peer`]. What wg-cni uses; [`connect`] alone trusts any
/// listener.
pub fn connect_agent(socket: &Path, timeout: Duration) -> Result<UnixStream, ProtoError> {
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| {
            ProtoError::Untrusted(format!("{} is not in a directory", socket.display()))
        })?;
    check_socket_dir(dir)?;
    let stream = connect(socket, timeout)?;
    check_peer(&stream)?;
    Ok(stream)
}

/// The plugin's side: connect to `socket`, send `req` with the namespace's
/// descriptor, wait up to `timeout` for the reply (for each step: connecting,
/// sending, each read). The first message back is the reply, whatever it
/// is: a [`Reply::Launch`] is returned unanswered (the connection closes,
/// and the agent's launch fails); see [`call_launching`] to answer it.
pub fn call(
    socket: &Path,
    req: &Request,
    netns: Option<&OwnedFd>,
    timeout: Duration,
) -> Result<Reply, ProtoError> {
    let stream = connect(socket, timeout)?;
    converse(&stream, req, netns, None)
}

/// [`call`], answering each [`Reply::Launch`] with what `on_launch` says
/// (the started process's id, or why it could not start) until the agent
/// replies. [`ProtoError::Malformed`] after [`MAX_LAUNCHES`] launches.
///
/// ```no_run
/// use std::time::Duration;
/// use wg_attach::managed::{call_launching, Request, Verb};
/// let req = Request::new(Verb::Add, "c1", "eth0", "/var/run/netns/cni-1");
/// let ns = std::fs::File::open("/var/run/netns/cni-1")?.into();
/// let reply = call_launching(
///     "/run/wg-agent/cni.sock".as_ref(),
///     &req,
///     Some(&ns),
///     Duration::from_secs(60),
///     |launch| Err(format!("not starting {}", launch.name)),
/// )?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn call_launching(
    socket: &Path,
    req: &Request,
    netns: Option<&OwnedFd>,
    timeout: Duration,
    mut on_launch: impl FnMut(&Launch) -> Result<u32, String>,
) -> Result<Reply, ProtoError> {
    let stream = connect(socket, timeout)?;
    converse(&stream, req, netns, Some(&mut on_launch))
}

/// What answers a [`Launch`]: the started process's id, or why it could
/// not start (sent to the agent as [`Launched`]).
pub type OnLaunch<'a> = &'a mut dyn FnMut(&Launch) -> Result<u32, String>;

/// One request on a connected stream, then the agent's answer: with
/// `on_launch`, each [`Reply::Launch`] is answered (at most
/// [`MAX_LAUNCHES`]) and the next message read; without, the first message
/// is the answer.
pub fn converse(
    stream: &UnixStream,
    req: &Request,
    netns: Option<&OwnedFd>,
    mut on_launch: Option<OnLaunch<'_>>,
) -> Result<Reply, ProtoError> {
    send(stream, req, netns)?;
    let mut launches = 0;
    loop {
        let (reply, _) = recv::<Reply>(stream)?;
        let (Reply::Launch(launch), Some(on_launch)) = (&reply, on_launch.as_mut()) else {
            return Ok(reply);
        };
        if launches == MAX_LAUNCHES {
            return Err(ProtoError::Malformed(format!(
                "the agent asked for more than {MAX_LAUNCHES} daemons in one request"
            )));
        }
        launches += 1;
        let answer = match on_launch(launch) {
            Ok(pid) => Launched::started(pid),
            Err(e) => Launched::failed(e),
        };
        send(stream, &answer, None)?;
    }
}

#[cfg(test)]
mod tests;
