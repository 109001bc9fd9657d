//! The module's unit tests: the wire format, starting daemons (a
//! foreground child, fake launchers), sockets and settings equality.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::device::{DeviceConfig, PeerConfig};
use crate::error::Error;
use crate::key::{PrivateKey, PublicKey};

use super::wire::{encode_set, parse_errno};
use super::*;

#[test]
fn set_request_matches_the_protocol() {
    let k = PrivateKey::from_bytes([0x11; 32]);
    let peer = PublicKey::from_bytes([0xab; 32]);
    let cfg = DeviceConfig::new()
        .private_key(k)
        .listen_port(51820)
        .fwmark(7)
        .replace_peers()
        .peer(
            PeerConfig::new(peer)
                .endpoint("[fd00::1]:51820".parse().unwrap())
                .persistent_keepalive(Duration::from_secs(25))
                .replace_allowed_ips()
                .allowed_ip("10.13.13.0/24".parse().unwrap())
                .allowed_ip("fd00::/64".parse().unwrap()),
        )
        .peer(PeerConfig::removal(PublicKey::from_bytes([1; 32])));
    let s = encode_set(&cfg);
    let expected = format!(
        "set=1\nprivate_key={}\nlisten_port=51820\nfwmark=7\nreplace_peers=true\n\
         public_key={}\nendpoint=[fd00::1]:51820\npersistent_keepalive_interval=25\n\
         replace_allowed_ips=true\nallowed_ip=10.13.13.0/24\nallowed_ip=fd00::/64\n\
         public_key={}\nremove=true\n\n",
        "11".repeat(32),
        "ab".repeat(32),
        "01".repeat(32)
    );
    assert_eq!(*s, expected);
}

#[test]
fn get_reply_is_parsed() {
    let reply = format!(
        "private_key={}\nlisten_port=51820\nfwmark=0\npublic_key={}\npreshared_key={}\n\
         protocol_version=1\nendpoint=192.0.2.1:51820\nlast_handshake_time_sec=1700000000\n\
         last_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=25\n\
         allowed_ip=10.0.0.0/24\nallowed_ip=fd00::/64\npublic_key={}\npreshared_key={}\n\
         last_handshake_time_sec=0\nlast_handshake_time_nsec=0\nerrno=0\n",
        "11".repeat(32),
        "ab".repeat(32),
        "22".repeat(32),
        "cd".repeat(32),
        "00".repeat(32),
    );
    let d = parse_get("t", &reply).unwrap();
    assert_eq!(d.listen_port, 51820);
    assert_eq!(
        d.public_key,
        Some(PrivateKey::from_bytes([0x11; 32]).public_key())
    );
    assert_eq!(d.peers.len(), 2);
    let p = &d.peers[0];
    assert_eq!(p.rx_bytes, 20);
    assert_eq!(p.tx_bytes, 10);
    assert_eq!(p.persistent_keepalive, Some(Duration::from_secs(25)));
    assert_eq!(p.allowed_ips.len(), 2);
    assert_eq!(
        p.last_handshake,
        Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5))
    );
    assert!(d.peers[1].preshared_key.is_none());
    assert!(d.peers[1].last_handshake.is_none());
}

/// Regression for the crash cargo-fuzz found (fuzz target uapi_reply):
/// `UNIX_EPOCH + Duration::from_secs(11111111111111111111)` panicked.
#[test]
fn out_of_range_handshake_time_is_an_error_not_a_panic() {
    let reply = format!(
        "public_key={}\nlast_handshake_time_sec=11111111111111111111\nlast_handshake_time_nsec=2\nerrno=0\n",
        "ab".repeat(32)
    );
    assert!(parse_get("t", &reply).is_err());
    let reply = format!(
        "public_key={}\nlast_handshake_time_sec=1\nlast_handshake_time_nsec=18446744073709551615\nerrno=0\n",
        "ab".repeat(32)
    );
    let d = parse_get("t", &reply).unwrap();
    assert_eq!(
        d.peers[0].last_handshake,
        Some(SystemTime::UNIX_EPOCH + Duration::new(1, 999_999_999))
    );
}

/// A foreground daemon that exits before answering is a failed start,
/// reported as such, not waited for until the start timeout.
#[test]
fn foreground_daemon_that_exits_is_a_failed_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("wg-netns-uapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("wireguard-go");
    std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut u = Userspace::new(&program);
    assert!(u.foreground, "wireguard-go runs in the foreground");
    u.socket_dir = dir.join("sockets");
    u.start_timeout = Duration::from_secs(3);
    let err = u.start("wgtest0").unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(err.contains("exited with"), "{err}");
}

/// A launcher for the tests: records each command; fails, does
/// nothing, or binds a fake daemon's socket that answers `get`.
#[derive(Debug)]
struct FakeLauncher {
    seen: std::sync::Mutex<Vec<LaunchCommand>>,
    then: Then,
}

#[derive(Debug, Clone, Copy)]
enum Then {
    Fail,
    Nothing,
    Serve,
}

impl FakeLauncher {
    fn new(then: Then) -> Arc<Self> {
        Arc::new(FakeLauncher {
            seen: std::sync::Mutex::new(Vec::new()),
            then,
        })
    }
}

impl Launcher for FakeLauncher {
    fn launch(&self, cmd: &LaunchCommand) -> std::io::Result<()> {
        self.seen.lock().unwrap().push(cmd.clone());
        match self.then {
            Then::Fail => Err(std::io::Error::other("no daemons today")),
            Then::Nothing => Ok(()),
            Then::Serve => {
                let l = std::os::unix::net::UnixListener::bind(
                    cmd.socket_dir.join(format!("{}.sock", cmd.name)),
                )?;
                std::thread::spawn(move || {
                    for s in l.incoming().take(16) {
                        let Ok(mut s) = s else { return };
                        let mut line = String::new();
                        let mut r = BufReader::new(&mut s);
                        // Read the request up to its blank line; a
                        // bare connect sends nothing.
                        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                            if line == "\n" {
                                let _ = s.write_all(b"listen_port=7\nerrno=0\n\n");
                                break;
                            }
                            line.clear();
                        }
                    }
                });
                Ok(())
            }
        }
    }
}

fn temp_dir(what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wg-netns-uapi-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn launched(then: Then, dir: &Path) -> (Userspace, Arc<FakeLauncher>) {
    let l = FakeLauncher::new(then);
    let mut u = Userspace::new("/nonexistent/wireguard-go").with_launcher(l.clone());
    u.socket_dir = dir.to_path_buf();
    u.start_timeout = Duration::from_millis(200);
    (u, l)
}

/// A launcher that fails makes the start fail, naming the launcher,
/// its error and the device; it was given the command line a child
/// would have run, and the program need not exist here.
#[test]
fn a_failing_launcher_is_a_spawn_error() {
    let dir = temp_dir("fail");
    let (u, l) = launched(Then::Fail, &dir);
    // A stale socket is removed before the launcher is asked.
    std::fs::write(dir.join("wgtest0.sock"), b"").unwrap();
    let err = u.start("wgtest0").unwrap_err();
    assert!(
        matches!(&err, Error::Spawn { device, .. } if device == "wgtest0"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("FakeLauncher"), "{msg}");
    assert!(msg.contains("no daemons today"), "{msg}");
    assert!(!dir.join("wgtest0.sock").exists());
    let seen = l.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [LaunchCommand {
            program: "/nonexistent/wireguard-go".into(),
            args: vec![],
            name: "wgtest0".into(),
            foreground: true,
            socket_dir: dir.clone(),
        }]
    );
    assert_eq!(seen[0].argv(), ["-f", "wgtest0"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without a child to poll, a daemon whose socket never answers is
/// waited for until the start timeout, and no longer.
#[test]
fn a_launched_daemon_without_a_socket_times_out() {
    let dir = temp_dir("silent");
    let (u, l) = launched(Then::Nothing, &dir);
    let started = Instant::now();
    let err = u.start("wgtest1").unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.contains("did not appear"), "{err}");
    assert!(err.contains("after the launcher started"), "{err}");
    assert_eq!(l.seen.lock().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A launched daemon is ready when its socket answers `get`; a second
/// start of the same name is refused before the launcher is asked.
#[test]
fn a_launched_daemon_is_ready_when_its_socket_answers() {
    let dir = temp_dir("serve");
    let (u, l) = launched(Then::Serve, &dir);
    let conn = u.start("wgtest2").unwrap();
    assert_eq!(conn.get().unwrap().listen_port, 7);
    assert!(u.answers("wgtest2"));
    assert!(!u.answers("wgtest3"));
    let err = u.start("wgtest2").unwrap_err().to_string();
    assert!(err.contains("already running"), "{err}");
    assert_eq!(l.seen.lock().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A socket that answers but whose process cannot be signalled (here:
/// not the implementation; in a cluster: outside this PID namespace) is
/// removed, which ends a real daemon.
#[test]
fn a_socket_whose_process_cannot_be_signalled_is_removed() {
    let dir = temp_dir("gone");
    let (u, _) = launched(Then::Serve, &dir);
    u.start("wgtest4").unwrap();
    assert_eq!(
        u.daemon_pid("wgtest4"),
        None,
        "the test process serves no device"
    );
    crate::backend::wait_userspace_gone(&u, "wgtest4", Duration::ZERO).unwrap();
    assert!(!u.socket_path("wgtest4").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn peer_pid_names_the_listening_process() {
    let dir = temp_dir("peer");
    let path = dir.join("x.sock");
    let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let c = UapiConn::connect("x", &path, DEFAULT_IO_TIMEOUT).unwrap();
    assert_eq!(c.peer_pid().unwrap(), std::process::id());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `launch` runs `PROGRAM [args] [-f] NAME` with `WG_SUDO=true` in its
/// own session and returns without waiting for a socket; a program
/// that is not there is a spawn error.
#[test]
fn launch_runs_the_command_line_detached() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("launch");
    let program = dir.join("wireguard-go");
    let out = dir.join("out");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\necho \"$* $WG_SUDO $(ps -o sid= -p $$ | tr -d ' ') $$\" > {}.tmp && mv {}.tmp {}\n",
            out.display(),
            out.display(),
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut u = Userspace::new(&program);
    u.args = vec!["--x".into()];
    let pid = u.launch("wgtest5").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let got = std::fs::read_to_string(&out).unwrap();
    let words: Vec<&str> = got.split_whitespace().collect();
    assert_eq!(words[..4], ["--x", "-f", "wgtest5", "true"], "{got}");
    if words.len() == 6 {
        // ps may be missing; when it is there, the child leads its session.
        assert_eq!(words[4], words[5], "{got}");
    }
    assert_eq!(words.last(), Some(&pid.to_string().as_str()), "{got}");
    let err = Userspace::new(dir.join("missing"))
        .launch("wgtest5")
        .unwrap_err();
    assert!(err.to_string().contains("program not found"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Equal settings and the same launcher (or none) are equal; another
/// launcher, even an identical one, is not.
#[test]
fn equality_compares_launchers_by_identity() {
    let a = Userspace::new("wireguard-go");
    assert_eq!(a, a.clone());
    let l: Arc<dyn Launcher> = FakeLauncher::new(Then::Nothing);
    let with = a.clone().with_launcher(Arc::clone(&l));
    assert_eq!(with, with.clone());
    assert_eq!(with, a.clone().with_launcher(l));
    assert_ne!(with, a);
    assert_ne!(
        with,
        a.clone().with_launcher(FakeLauncher::new(Then::Nothing))
    );
    assert_eq!(with.without_launcher(), a);
    let mut other = a.clone();
    other.foreground = !other.foreground;
    assert_ne!(other, a);
}

#[test]
fn errors_and_garbage() {
    assert!(matches!(
        parse_get("t", "errno=19\n"),
        Err(Error::UapiErrno { errno: 19, .. })
    ));
    assert!(parse_get("t", "listen_port=1\n").is_err());
    assert!(parse_get("t", "garbage\nerrno=0\n").is_err());
    assert!(parse_get("t", "public_key=zz\nerrno=0\n").is_err());
    assert!(parse_errno("t", "errno=0\n\n").is_ok());
    assert!(parse_errno("t", "errno=22\n\n").is_err());
    assert!(parse_errno("t", "").is_err());
    // Device-level keys after a peer belong to no one and are ignored; unknown keys too.
    assert!(parse_get("t", "whatever=1\nerrno=0\n").is_ok());
}

#[test]
fn encoded_set_round_trips_through_get_parser() {
    // A get reply uses the same key=value vocabulary for the fields both share.
    let cfg = DeviceConfig::new().listen_port(9).peer(
        PeerConfig::new(PublicKey::from_bytes([5; 32]))
            .endpoint("192.0.2.9:9".parse().unwrap())
            .allowed_ip("10.9.0.0/16".parse().unwrap()),
    );
    let s = encode_set(&cfg);
    let body = s.strip_prefix("set=1\n").unwrap().trim_end().to_string() + "\nerrno=0\n";
    let d = parse_get("t", &body).unwrap();
    assert_eq!(d.listen_port, 9);
    assert_eq!(d.peers[0].endpoint, cfg.peers[0].endpoint);
    assert_eq!(d.peers[0].allowed_ips, cfg.peers[0].allowed_ips);
}
