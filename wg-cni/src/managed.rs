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
//! Framing: one request and one reply per connection, each a 4-byte
//! big-endian length followed by that many bytes of JSON (at most
//! [`MAX_MESSAGE`]). The descriptor travels with the request's first byte.
//!
//! ```
//! use wg_cni::managed::{Reply, Request, Verb};
//!
//! let req = Request::new(Verb::Add, "c1", "eth0", "/var/run/netns/cni-1");
//! let json = serde_json::to_string(&req)?;
//! assert!(json.contains(r#""verb":"ADD""#));
//! let reply: Reply = serde_json::from_str(r#"{"skipped":{"reason":"the pod asks for no WireGuard network"}}"#)?;
//! assert!(matches!(reply, Reply::Skipped { .. }));
//! # Ok::<(), serde_json::Error>(())
//! ```

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
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

/// The protocol's version; a request of another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

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

/// The plugin's side: connect to `socket`, send `req` with the namespace's
/// descriptor, wait up to `timeout` for the reply (for each step: connecting,
/// sending, each read).
pub fn call(
    socket: &Path,
    req: &Request,
    netns: Option<&OwnedFd>,
    timeout: Duration,
) -> Result<Reply, ProtoError> {
    let stream = connect(socket, timeout)?;
    send(&stream, req, netns)?;
    let (reply, _) = recv::<Reply>(&stream)?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn request_reply_and_descriptor_cross_a_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/proc/self/ns/net").unwrap();
        let fd: OwnedFd = file.into();
        let req = Request::new(Verb::Add, "c1", "eth0", "/x").network(Some("pods".into()));
        send(&a, &req, Some(&fd)).unwrap();
        let (got, got_fd): (Request, _) = recv(&b).unwrap();
        assert_eq!(got, req);
        let got_fd = got_fd.expect("descriptor");
        assert_ne!(got_fd.as_raw_fd(), fd.as_raw_fd());
        let same = |f: &OwnedFd| rustix::fs::fstat(f).map(|s| (s.st_dev, s.st_ino)).unwrap();
        assert_eq!(same(&got_fd), same(&fd));

        let reply = Reply::Failed(Failure {
            code: 11,
            msg: "m".into(),
            details: "d".into(),
        });
        send(&b, &reply, None).unwrap();
        let (back, none): (Reply, _) = recv(&a).unwrap();
        assert_eq!(back, reply);
        assert!(none.is_none());
    }

    #[test]
    fn oversized_and_truncated_frames_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&(MAX_MESSAGE as u32 + 1).to_be_bytes())
            .unwrap();
        assert!(matches!(recv::<Reply>(&b), Err(ProtoError::Malformed(_))));
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&[0, 0]).unwrap();
        drop(a);
        assert!(recv::<Reply>(&b).is_err());
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&3u32.to_be_bytes()).unwrap();
        (&a).write_all(b"{{{").unwrap();
        assert!(matches!(recv::<Reply>(&b), Err(ProtoError::Malformed(_))));
    }

    #[test]
    fn connect_waits_no_longer_than_the_timeout() {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let dir = std::env::temp_dir().join(format!("wgcni-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        let listener = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        // A backlog of 0 admits one pending connection; the next waits.
        rustix::net::listen(&listener, 0).unwrap();
        let timeout = Duration::from_millis(100);
        let mut pending = Vec::new();
        let started = std::time::Instant::now();
        let err = loop {
            match connect(&path, timeout) {
                Ok(s) if pending.len() < 8 => pending.push(s),
                Ok(_) => panic!("the backlog never filled"),
                Err(e) => break e,
            }
        };
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(&err, ProtoError::Io { source, .. } if source.kind() == io::ErrorKind::WouldBlock),
            "{err}"
        );
        drop(pending);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reply_shapes() {
        let k = wg_netns::PrivateKey::generate().unwrap().public_key();
        let r = Reply::Attached(Attached::new(
            "pods".into(),
            "wg0".into(),
            vec!["10.244.0.2/16".parse().unwrap()],
            vec![],
            1420,
            k,
        ));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["attached"]["addresses"][0], "10.244.0.2/16");
        assert_eq!(v["attached"]["publicKey"], k.to_base64().as_str());
        assert_eq!(serde_json::to_value(Reply::Done).unwrap(), "done");
    }
}
