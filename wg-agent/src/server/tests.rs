//! The CNI socket end to end without root (the plugin's own client,
//! `wg_attach::managed::call`, against `serve_cni` on a socket in a temp dir),
//! and the HTTP endpoints on a loopback port.

use super::*;
use crate::testutil::{cni_requests, netns_fd, pod_json, status, test_agent, TempDir};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wg_attach::managed::PodRef;
use wg_netns::Userspace;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// ADD of pod ns1/web through the socket, as the plugin sends it.
async fn call(socket: &Path, version: u32) -> Result<Reply, managed::ProtoError> {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut req =
            Request::new(Verb::Add, "c1", "eth0", "/proc/self/ns/net").pod(Some(PodRef {
                namespace: "ns1".into(),
                name: "web".into(),
                uid: None,
            }));
        req.version = version;
        managed::call(&socket, &req, Some(&netns_fd()), Duration::from_secs(5))
    })
    .await
    .unwrap()
}

#[test]
fn the_socket_is_root_only_and_replaces_a_stale_one() {
    let tmp = TempDir::new("sock");
    let dir = tmp.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("cni.sock");
    std::fs::write(&path, b"stale").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let l = bind_cni(&path).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert!(std::fs::metadata(&path).unwrap().file_type().is_socket());
    drop(l);
    // A directory that does not exist yet is made.
    let deep = tmp.path().join("a/b/cni.sock");
    let _l = bind_cni(&deep).unwrap();
    assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
}

#[tokio::test]
async fn requests_over_the_socket() {
    let t = test_agent(|s| match s.path.as_str() {
        "/api/v1/namespaces/ns1/pods/web" => (200, pod_json("ns1", "web", "u1", None)),
        _ => status(404, "NotFound"),
    });
    let tmp = TempDir::new("serve");
    let path = tmp.path().join("run/cni.sock");
    let server = tokio::spawn(serve_cni(bind_cni(&path).unwrap(), Arc::clone(&t.agent)));
    let root = rustix::process::geteuid().is_root();
    let got = call(&path, PROTOCOL_VERSION).await;
    if !root {
        // The agent serves root only: a non-root peer gets no answer.
        assert!(got.is_err(), "{got:?}");
        server.abort();
        return;
    }
    match got.unwrap() {
        Reply::Skipped { reason } => assert!(reason.contains("ns1/web"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Protocol 1 (a plugin that cannot start daemons) is still served.
    assert!(matches!(
        call(&path, OLDEST_PROTOCOL_VERSION).await.unwrap(),
        Reply::Skipped { .. }
    ));
    // Another protocol version is refused before the agent is asked.
    let before = t.log.all().len();
    match call(&path, PROTOCOL_VERSION + 1).await.unwrap() {
        Reply::Failed(f) => {
            assert_eq!(f.code, 2, "{f:?}");
            assert!(
                f.details
                    .contains(&format!("plugin {}", PROTOCOL_VERSION + 1)),
                "{f:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.log.all().len(), before, "no pod was read for it");
    // A client that connects and hangs up (wg-cni's STATUS does), one
    // that sends garbage, and one that connects and says nothing do not
    // stop the server or hold up the next request.
    let p2 = path.clone();
    tokio::task::spawn_blocking(move || {
        drop(std::os::unix::net::UnixStream::connect(&p2).unwrap());
        let mut s = std::os::unix::net::UnixStream::connect(&p2).unwrap();
        std::io::Write::write_all(&mut s, &[0, 0, 0, 3, b'{', b'{', b'{']).unwrap();
    })
    .await
    .unwrap();
    let silent = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let started = Instant::now();
    assert!(matches!(
        call(&path, PROTOCOL_VERSION).await.unwrap(),
        Reply::Skipped { .. }
    ));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
    assert_eq!(
        cni_requests(&t.agent, "ADD", "skipped"),
        3.0,
        "the refused version never reached the agent"
    );
    server.abort();
}

fn launch_command(name: &str) -> LaunchCommand {
    Userspace::new("/usr/bin/wireguard-go").launch_command(name)
}

/// The fake plugin's end: reads one `Launch`, answers `answer` (`None`:
/// hangs up).
fn fake_plugin(plugin: UnixStream, answer: Option<Launched>) -> std::thread::JoinHandle<Reply> {
    std::thread::spawn(move || {
        let (asked, _) = managed::recv::<Reply>(&plugin).unwrap();
        if let Some(a) = answer {
            managed::send(&plugin, &a, None).unwrap();
        }
        asked
    })
}

/// The agent's side of a launch over a socket pair: `Launch` out with the
/// command and namespace, `Launched` back, Ok or the plugin's reason.
#[test]
fn the_plugin_launcher_asks_and_reports_the_answer() {
    let (agent, plugin) = UnixStream::pair().unwrap();
    agent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn = PluginConn::new(Arc::new(agent), LAUNCH_PROTOCOL_VERSION);
    assert_eq!(conn.version(), LAUNCH_PROTOCOL_VERSION);
    let (p1, p2) = {
        let p = plugin.try_clone().unwrap();
        (plugin, p)
    };

    let fake = fake_plugin(p1, Some(Launched::started(4242)));
    let pod = conn.launcher(LaunchNamespace::Pod);
    assert!(format!("{pod:?}").contains("Pod"));
    pod.launch(&launch_command("wgatest0")).unwrap();
    assert_eq!(
        fake.join().unwrap(),
        Reply::Launch(Launch::new(
            "wgatest0",
            LaunchNamespace::Pod,
            vec![],
            true,
            wg_netns::DEFAULT_SOCKET_DIR.into()
        ))
    );

    let fake = fake_plugin(
        p2.try_clone().unwrap(),
        Some(Launched::failed(
            "/opt/cni/bin/wg-cni-wireguard-go is missing",
        )),
    );
    let err = conn
        .launcher(LaunchNamespace::Node)
        .launch(&launch_command("wgatest1"))
        .unwrap_err();
    assert!(err.to_string().contains("could not start it"), "{err}");
    assert!(err.to_string().contains("is missing"), "{err}");
    match fake.join().unwrap() {
        Reply::Launch(l) => assert_eq!(l.namespace, LaunchNamespace::Node),
        other => panic!("{other:?}"),
    }

    // Once the request is answered, nothing more is sent on it.
    conn.close();
    let err = pod.launch(&launch_command("wgatest2")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected, "{err}");
    // Nothing was written, and the launchers no longer hold the
    // connection: the plugin reads the end of the stream.
    p2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut &p2, &mut buf).unwrap(), 0);

    // A plugin that hangs up fails the launch.
    let (agent, plugin) = UnixStream::pair().unwrap();
    let conn = PluginConn::new(Arc::new(agent), LAUNCH_PROTOCOL_VERSION);
    let fake = fake_plugin(plugin, None);
    let err = conn
        .launcher(LaunchNamespace::Pod)
        .launch(&launch_command("wgatest3"))
        .unwrap_err();
    assert!(err.to_string().contains("waiting for the plugin"), "{err}");
    fake.join().unwrap();
}

async fn get(port: u16, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (code, ctype, body.to_string())
}

#[tokio::test]
async fn http_metrics_health_and_readiness() {
    let t = test_agent(|_| status(500, "InternalError"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let alive = Arc::new(crate::Heartbeat::new(Duration::from_millis(600)));
    let server = tokio::spawn(serve_http(
        listener,
        Arc::clone(&t.agent),
        Arc::clone(&alive),
        HttpLimits::default(),
    ));

    let (code, _, body) = get(port, "/readyz").await;
    assert_eq!((code, body.as_str()), (503, "caches not synced\n"));
    t.agent.set_synced();
    assert_eq!(get(port, "/readyz").await.0, 200);

    alive.beat();
    assert_eq!(get(port, "/healthz").await.0, 200);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (code, _, body) = get(port, "/healthz").await;
    assert_eq!(code, 503);
    assert!(body.starts_with("no heartbeat"), "{body}");
    alive.beat();
    assert_eq!(get(port, "/healthz").await.0, 200);

    t.agent.metrics.devices.set(3);
    let (code, ctype, body) = get(port, "/metrics").await;
    assert_eq!(code, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(body.contains("wg_agent_devices 3"), "{body}");
    assert_eq!(get(port, "/other").await.0, 404);
    server.abort();
}

/// The CNI socket serves root only, and a peer whose credentials cannot
/// be read is refused like a non-root one (not let through).
#[test]
fn a_cni_peer_must_be_known_to_be_root() {
    assert_eq!(peer_allowed(Ok(0)), Ok(()));
    let e = peer_allowed(Ok(1000)).unwrap_err();
    assert!(e.contains("uid 1000"), "{e}");
    let e = peer_allowed(Err(std::io::Error::from(std::io::ErrorKind::NotConnected)))
        .expect_err("an unknown peer is refused");
    assert!(e.contains("cannot read the peer's credentials"), "{e}");
    let e = peer_allowed(Err(std::io::Error::other("no SO_PEERCRED")))
        .expect_err("an unknown peer is refused");
    assert!(e.contains("no SO_PEERCRED"), "{e}");
}

/// A TCP connection to the agent's port on 127.0.0.1 from the loopback
/// address `src` (each 127.x.y.z is its own client address).
async fn connect_from(src: [u8; 4], port: u16) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(std::net::SocketAddr::from((src, 0))).unwrap();
    s.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap()
}

/// Whether the server closes `s` within `within`: end of stream or a reset
/// (whatever it sent before, e.g. a response, is read and dropped).
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// GET `path` from `src`: the status code, or `None` when the server closed
/// the connection without answering.
async fn get_from(src: [u8; 4], port: u16, path: &str) -> Option<u16> {
    let mut s = connect_from(src, port).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let out = String::from_utf8_lossy(&out);
    out.split(' ').nth(1)?.parse().ok()
}

/// The start of a request whose head never ends.
const PARTIAL_HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n";

async fn http_server(limits: HttpLimits) -> (u16, tokio::task::JoinHandle<()>) {
    let t = test_agent(|_| status(500, "InternalError"));
    t.agent.metrics.devices.set(7);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let alive = Arc::new(crate::Heartbeat::new(Duration::from_secs(600)));
    alive.beat();
    let server = tokio::spawn(serve_http(listener, Arc::clone(&t.agent), alive, limits));
    (port, server)
}

/// Slowloris against the caps: connections that never finish their request
/// hold at most `max_per_address` slots of one address (the rest are closed
/// at once) and `max_connections` in all; a scrape from another address
/// answers during the attack, is refused while the port is full, and
/// answers again once the attackers hang up.
#[tokio::test]
async fn http_caps_hold_against_slowloris_and_scrapes_still_answer() {
    let (port, server) = http_server(HttpLimits {
        max_connections: 6,
        max_per_address: 3,
        // Nothing is cut by time here: only the caps act.
        header_timeout: Duration::from_secs(120),
        connection_lifetime: Duration::from_secs(120),
    })
    .await;
    let mut attack = Vec::new();
    for _ in 0..5 {
        let mut s = connect_from([127, 0, 0, 2], port).await;
        s.write_all(PARTIAL_HEAD).await.unwrap();
        attack.push(s);
    }
    let closed = futures::future::join_all(
        attack
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(3))),
    )
    .await;
    assert_eq!(
        closed.iter().filter(|c| **c).count(),
        2,
        "one address holds 3 connections, the 2 more are closed: {closed:?}"
    );
    let mut held: Vec<_> = attack
        .into_iter()
        .zip(&closed)
        .filter(|(_, c)| !**c)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        get_from([127, 0, 0, 1], port, "/metrics").await,
        Some(200),
        "a scrape answers during the attack"
    );
    // Two more addresses fill the port (6 in all).
    let mut more = Vec::new();
    for src in [[127, 0, 0, 3], [127, 0, 0, 3], [127, 0, 0, 4]] {
        let mut s = connect_from(src, port).await;
        s.write_all(PARTIAL_HEAD).await.unwrap();
        more.push(s);
    }
    for s in &mut more {
        assert!(!closed_within(s, Duration::from_millis(300)).await);
    }
    assert_eq!(
        get_from([127, 0, 0, 1], port, "/metrics").await,
        None,
        "the port is full: the seventh connection is closed unanswered"
    );
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(100)).await,
            "still held"
        );
    }
    // The attackers hang up: their slots come back.
    drop(more);
    drop(held);
    let mut answered = None;
    for _ in 0..50 {
        answered = get_from([127, 0, 0, 1], port, "/healthz").await;
        if answered.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, Some(200));
    server.abort();
}

/// Slowloris against the clock: a client that sends its request head a
/// byte at a time, one that sends nothing, and one idle after its answer
/// are all closed by the server (header timeout), as is one that lives
/// past the connection lifetime; a scrape answers meanwhile.
#[tokio::test]
async fn http_closes_slow_and_idle_connections() {
    let (port, server) = http_server(HttpLimits {
        max_connections: 64,
        max_per_address: 64,
        header_timeout: Duration::from_millis(400),
        connection_lifetime: Duration::from_secs(120),
    })
    .await;
    // Trickled heads: one byte every 50 ms, until the server hangs up.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let s = connect_from([127, 0, 0, 2], port).await;
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let endless = PARTIAL_HEAD.iter().copied().chain(std::iter::repeat(b'a'));
            for b in endless {
                if wr.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        slow.push((
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                tokio::time::timeout(Duration::from_secs(10), async {
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await
                .is_ok()
            }),
            writer,
        ));
    }
    let mut silent = connect_from([127, 0, 0, 3], port).await;
    let mut idle = connect_from([127, 0, 0, 4], port).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        get_from([127, 0, 0, 1], port, "/metrics").await,
        Some(200),
        "a scrape answers during the attack"
    );
    for (reader, writer) in slow {
        assert!(reader.await.unwrap(), "a trickled request head is cut off");
        writer.abort();
    }
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)).await,
        "a connection that sends nothing is closed"
    );
    let mut answer = Vec::new();
    let idle_closed = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut answer))
        .await
        .is_ok();
    assert!(
        idle_closed && String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "answered, then closed once idle: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // A request head larger than the agent reads is refused, not buffered.
    let mut big = connect_from([127, 0, 0, 5], port).await;
    let filler = "a".repeat(HTTP_MAX_BUF + 1024);
    let _ = big
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {filler}\r\n\r\n").as_bytes(),
        )
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), big.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "a {} byte head was served: {answer:?}",
        filler.len()
    );
    server.abort();

    // The lifetime bounds a connection whatever it does.
    let (port, server) = http_server(HttpLimits {
        max_connections: 64,
        max_per_address: 64,
        header_timeout: Duration::from_secs(120),
        connection_lifetime: Duration::from_millis(400),
    })
    .await;
    let mut s = connect_from([127, 0, 0, 2], port).await;
    s.write_all(PARTIAL_HEAD).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    server.abort();
}
