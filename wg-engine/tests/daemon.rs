//! The engine daemon (`wg-engine serve`) driven through wg-netns's engine
//! backend, in namespaces made by the test: a device attached by
//! `Birthplace` with `Backend::Engine` (TUN born in a "pod", UDP in a
//! "node"), talking to wireguard-go in another namespace; the daemon killed
//! and restarted, its devices taken back from their records; a non-root
//! client refused.
//!
//! Root only; run under `flock /tmp/wg-nstest.lock` (shared machine). Each
//! test has its own control socket, UAPI socket directory and state
//! directory under a temporary directory, and kills only the daemons it
//! started, by PID. Addresses: 10.214.0.0/16 inside the namespaces,
//! 10.250.X.0/24 on testkit's veth.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wg_netns::engine::proto::ErrorKind;
use wg_netns::engine::EngineDaemon;
use wg_netns::{
    Backend, Birthplace, DeviceConfig, IfName, InterfaceSpec, PeerConfig, PrivateKey, PublicKey,
    Userspace, WgDevice,
};
use wg_netns_testkit::{self as kit, TestNs, WireguardGo, WorkDir};

const PORT_GO: u16 = 51830;
const PORT_ENGINE: u16 = 51831;

fn net(s: &str) -> wg_netns::IpNetwork {
    s.parse().expect("network")
}

/// The daemon's client, everything under `dir`.
fn engine_in(dir: &WorkDir) -> EngineDaemon {
    let mut e = EngineDaemon::new(env!("CARGO_BIN_EXE_wg-engine")).in_dir(&dir.path);
    e.io_timeout = Duration::from_secs(5);
    e.start_timeout = Duration::from_secs(10);
    e
}

/// A daemon process this test owns by PID: killed (SIGKILL) when dropped,
/// before the namespaces go.
struct DaemonPid(u32, Option<Child>);

impl DaemonPid {
    /// Start `wg-engine serve` as a child and wait for its control socket.
    fn spawn(engine: &EngineDaemon) -> DaemonPid {
        std::fs::create_dir_all(&engine.state_dir).expect("state dir");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(engine.state_dir.join("wg-engine.log"))
            .expect("log");
        let child = Command::new(&engine.program)
            .args(engine.serve_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start wg-engine");
        let d = DaemonPid(child.id(), Some(child));
        assert!(
            kit::eventually(Duration::from_secs(10), || engine.answers()),
            "wg-engine did not answer: {}",
            log_of(engine)
        );
        d
    }

    fn kill(&mut self) {
        if let Some(p) = i32::try_from(self.0)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
        match self.1.take() {
            Some(mut c) => {
                let _ = c.wait();
            }
            None => {
                kit::eventually(Duration::from_secs(5), || {
                    !std::path::Path::new(&format!("/proc/{}", self.0)).exists()
                });
            }
        }
    }
}

impl Drop for DaemonPid {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_of(engine: &EngineDaemon) -> String {
    std::fs::read_to_string(engine.state_dir.join("wg-engine.log")).unwrap_or_default()
}

/// `PPid` and session of a process, from /proc.
fn ppid_and_sid(pid: u32) -> (u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = stat.rsplit_once(") ").expect("stat format").1;
    let f: Vec<&str> = rest.split(' ').collect();
    (f[1].parse().expect("ppid"), f[3].parse().expect("sid"))
}

/// wireguard-go in `go_node` wired to `node`; the engine's side to attach
/// in `pod`, its UDP socket in `node`.
struct Setup {
    go: WireguardGo,
    dev_go: WgDevice,
    k_go: PublicKey,
    k_eng: PrivateKey,
    go_ep: SocketAddr,
    birth: IfName,
    go_node: TestNs,
    node: TestNs,
    pod: TestNs,
}

impl Setup {
    fn new() -> Setup {
        let go_node = TestNs::new("dgo");
        let node = TestNs::new("dno");
        let pod = TestNs::new("dpo");
        let w = kit::wire(&go_node, &node);
        let go_name = kit::ifname("dgwg");
        let go = WireguardGo::start(&go_node, go_name.as_str());
        let dev_go = WgDevice::open_userspace(&Userspace::new("wireguard-go"), go_name.as_str())
            .expect("wireguard-go socket");
        let k_go = PrivateKey::generate().expect("key");
        let k_eng = PrivateKey::generate().expect("key");
        let go_ep: SocketAddr = format!("{}:{PORT_GO}", w.a_ip).parse().expect("addr");
        let eng_ep: SocketAddr = format!("{}:{PORT_ENGINE}", w.b_ip).parse().expect("addr");
        dev_go
            .set(
                &DeviceConfig::new()
                    .private_key(k_go.clone())
                    .listen_port(PORT_GO)
                    .peer(
                        PeerConfig::new(k_eng.public_key())
                            .endpoint(eng_ep)
                            .allowed_ip(net("10.214.7.2/32")),
                    ),
            )
            .expect("configure wireguard-go");
        kit::ip(&format!(
            "-n {} addr add 10.214.7.1/24 dev {go_name}",
            go_node.name
        ));
        kit::ip(&format!("-n {} link set {go_name} up", go_node.name));
        Setup {
            go,
            dev_go,
            k_go: k_go.public_key(),
            k_eng,
            go_ep,
            birth: kit::ifname("dgen"),
            go_node,
            node,
            pod,
        }
    }

    /// The pod's interface: `wg0`, born `birth`, keyed and peered with
    /// wireguard-go.
    fn spec(&self) -> InterfaceSpec {
        InterfaceSpec::new(self.birth.clone(), IfName::new("wg0").expect("name"))
            .device(
                DeviceConfig::new()
                    .private_key(self.k_eng.clone())
                    .listen_port(PORT_ENGINE)
                    .peer(
                        PeerConfig::new(self.k_go)
                            .endpoint(self.go_ep)
                            .allowed_ip(net("10.214.7.1/32")),
                    ),
            )
            .address(net("10.214.7.2/24"))
    }

    fn place(&self, engine: &EngineDaemon) -> Birthplace {
        Birthplace::new(
            &self.node.ns,
            &self.pod.ns,
            &Backend::Engine(engine.clone()),
        )
        .expect("birthplace")
    }

    fn pings_both_ways(&self) -> bool {
        self.pod.ping("10.214.7.1", Duration::from_secs(15))
            && self.go_node.ping("10.214.7.2", Duration::from_secs(5))
    }
}

#[test]
fn engine_backend_attaches_a_pod_interface_that_talks_to_wireguard_go() {
    let test = "engine_backend_attaches_a_pod_interface_that_talks_to_wireguard_go";
    if kit::unavailable(test, &["ip", "ping", "wireguard-go"]) {
        return;
    }
    let dir = WorkDir::new("wg-engine-d");
    let s = Setup::new();
    let engine = engine_in(&dir);
    assert!(!engine.answers());
    let place = s.place(&engine);
    let spec = s.spec();

    // The first attach starts the daemon on demand.
    let t0 = Instant::now();
    let attach = place.attach(&spec);
    let first = t0.elapsed();
    // Whatever happens next, the daemon this test started goes.
    let pid = engine.daemon_pid().expect("the daemon runs");
    let _daemon = DaemonPid(pid, None);
    let a = attach.unwrap_or_else(|e| panic!("attach: {e}\n{}", log_of(&engine)));
    assert_eq!(a.kind, wg_netns::BackendKind::Engine);

    // Not this process's child, nor in its session: the caller's exit or
    // restart does not touch it.
    let (ppid, sid) = ppid_and_sid(pid);
    assert_ne!(ppid, std::process::id());
    assert_ne!(
        sid,
        ppid_and_sid(std::process::id()).1,
        "the daemon shares the caller's session"
    );

    // The TUN was born in the pod (no move) and renamed there; the UDP
    // socket is in the node.
    assert!(s.pod.link_names().contains(&"wg0".to_string()));
    assert!(!s.node.link_names().contains(&s.birth.to_string()));
    assert!(
        s.node.udp_ports().contains(&PORT_ENGINE),
        "{:?}",
        s.node.udp_ports()
    );
    assert!(!s.pod.udp_ports().contains(&PORT_ENGINE));
    assert!(s.pings_both_ways(), "ping through the engine device");

    // Configured and read through its UAPI socket, as wireguard-go is.
    let dev = place.device(&a).expect("device");
    let state = dev.get().expect("get");
    assert_eq!(state.public_key, Some(s.k_eng.public_key()));
    assert!(state.peer(&s.k_go).and_then(|p| p.last_handshake).is_some());
    assert_eq!(dev.daemon_pid(), Some(pid));
    assert!(s
        .dev_go
        .get()
        .expect("get")
        .peer(&s.k_eng.public_key())
        .and_then(|p| p.last_handshake)
        .is_some());

    // A repeated create is the same device; the same name elsewhere is not.
    assert!(!engine
        .create(&s.birth, &s.pod.ns, &s.node.ns, 1420)
        .expect("repeated create"));
    match engine.create(&s.birth, &s.node.ns, &s.node.ns, 1420) {
        Err(wg_netns::Error::Engine {
            kind: ErrorKind::Exists,
            ..
        }) => {}
        other => panic!("same name, other namespace: {other:?}"),
    }
    // ensure finds it and has nothing to do.
    let again = place.ensure(&spec).expect("ensure");
    assert!(!again.created && !again.changed(), "{again:?}");

    // Listed where its UDP socket is; recorded.
    let listed = place.list().expect("list");
    assert!(
        matches!(listed.as_slice(), [wg_netns::ListedDevice::Engine { socket_name, ifindex }]
            if socket_name == s.birth.as_str() && *ifindex == a.index),
        "{listed:?}"
    );
    assert!(engine.record_path(s.birth.as_str()).exists());

    // A second device while the daemon runs: no start this time.
    let t1 = Instant::now();
    let other = IfName::new(format!(
        "{}x",
        &s.birth.as_str()[..s.birth.as_str().len().min(14)]
    ))
    .expect("name");
    assert!(engine
        .create(&other, &s.pod.ns, &s.node.ns, 1420)
        .expect("second create"));
    let second = t1.elapsed();
    assert!(engine.delete(&other).expect("delete"));
    eprintln!("engine: first attach (daemon started on demand) {first:?}, create with the daemon running {second:?}");

    // Detach removes the interface, the device and its record.
    assert!(place.detach(&spec.name, &spec.birth_name).expect("detach"));
    assert!(!s.pod.link_names().contains(&"wg0".to_string()));
    assert!(engine.list().expect("list").is_empty());
    assert!(!engine.record_path(s.birth.as_str()).exists());
    assert!(!engine.socket_path(s.birth.as_str()).exists());
    assert!(kit::eventually(Duration::from_secs(2), || !s
        .node
        .udp_ports()
        .contains(&PORT_ENGINE)));
    // Idempotent.
    assert!(!place
        .detach(&spec.name, &spec.birth_name)
        .expect("detach again"));
    drop(s.go);
}

#[test]
fn a_restarted_daemon_takes_its_devices_back_from_their_records() {
    let test = "a_restarted_daemon_takes_its_devices_back_from_their_records";
    if kit::unavailable(test, &["ip", "ping", "wireguard-go"]) {
        return;
    }
    let dir = WorkDir::new("wg-engine-d");
    let s = Setup::new();
    let mut engine = engine_in(&dir);
    // This test starts the daemon itself, to kill it by its PID.
    engine.start_on_demand = false;
    let mut daemon = DaemonPid::spawn(&engine);
    let place = s.place(&engine);
    let spec = s.spec();
    let a = place
        .attach(&spec)
        .unwrap_or_else(|e| panic!("attach: {e}\n{}", log_of(&engine)));
    assert!(s.pings_both_ways());

    // A second device in a pod that will be gone by the restart.
    let gone_pod = TestNs::new("dgp");
    let gone = IfName::new(format!(
        "{}g",
        &s.birth.as_str()[..s.birth.as_str().len().min(14)]
    ))
    .expect("name");
    assert!(engine
        .create(&gone, &gone_pod.ns, &s.node.ns, 1420)
        .expect("create"));

    // The record: where, which namespace (by inode), MTU, index, the port
    // set over UAPI (recorded a moment after the set); no key.
    let read_rec =
        || std::fs::read_to_string(engine.record_path(s.birth.as_str())).expect("record");
    assert!(
        kit::eventually(Duration::from_secs(2), || read_rec()
            .contains(&format!("\"listen_port\": {PORT_ENGINE}"))),
        "{}",
        read_rec()
    );
    let rec = read_rec();
    let v: serde_json::Value = serde_json::from_str(&rec).expect("json");
    assert_eq!(v["name"], s.birth.as_str());
    assert_eq!(v["netns"], format!("/var/run/netns/{}", s.pod.name));
    assert_eq!(v["netns_ino"], s.pod.inode().expect("inode"));
    assert_eq!(v["udp_netns"], format!("/var/run/netns/{}", s.node.name));
    assert_eq!(v["mtu"], 1420);
    assert_eq!(v["ifindex"], a.index);
    assert!(!rec.contains(s.k_eng.to_base64().as_str()));

    // The daemon dies without warning.
    daemon.kill();
    assert!(!engine.answers());
    // The pod keeps its interface (persistent TUN): same index, address.
    let rtnl = wg_netns::Rtnl::open(&s.pod.ns).expect("rtnl");
    let link = rtnl
        .link_by_name(&spec.name)
        .expect("wg0 survives the daemon");
    assert_eq!(link.index, a.index);
    assert!(rtnl
        .addresses(link.index)
        .expect("addresses")
        .contains(&net("10.214.7.2/24")));
    // Meanwhile the other pod goes.
    drop(gone_pod);

    let t0 = Instant::now();
    let _daemon2 = DaemonPid::spawn(&engine);
    let restarted = t0.elapsed();
    assert!(
        log_of(&engine).contains("adopted its TUN"),
        "{}",
        log_of(&engine)
    );
    // Adopted: the same interface, its UAPI socket answers again, with no
    // key (keys are never written down): its owner configures it again,
    // as `ensure` repairs any drift.
    let listed = engine.list().expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|d| d.name.to_string())
            .collect::<Vec<_>>(),
        vec![s.birth.to_string()],
        "{}",
        log_of(&engine)
    );
    assert_eq!(listed[0].ifindex, a.index);
    assert!(
        !engine.record_path(gone.as_str()).exists(),
        "record of the gone pod"
    );
    assert_eq!(rtnl.link_by_name(&spec.name).expect("wg0").index, a.index);
    let dev = place.device(&a).expect("UAPI socket answers again");
    let state = dev.get().expect("get");
    assert_eq!(state.public_key, None);
    assert_eq!(
        state.listen_port, PORT_ENGINE,
        "the recorded port is set again"
    );
    let ensured = place.ensure(&spec).expect("ensure");
    assert!(!ensured.created, "{ensured:?}");
    assert!(!ensured.device.is_empty());
    assert_eq!(
        ensured.attachment.index, a.index,
        "the same interface, not a new one"
    );
    assert!(s.pings_both_ways(), "traffic after the restart");
    eprintln!(
        "restart: daemon answering {restarted:?} after start, traffic {:?} after start",
        t0.elapsed()
    );

    // Killed again; this time nobody restarts it by hand: the owner's next
    // ensure finds the record, starts the daemon on demand, and the device
    // is taken back, the same interface again.
    let mut daemon2 = _daemon2;
    daemon2.kill();
    assert!(!engine.answers());
    engine.start_on_demand = true;
    let place = s.place(&engine);
    let ensured = place.ensure(&spec);
    let pid = engine.daemon_pid().expect("started on demand");
    let _daemon3 = DaemonPid(pid, None);
    let ensured = ensured.unwrap_or_else(|e| panic!("ensure: {e}\n{}", log_of(&engine)));
    assert!(!ensured.created, "{ensured:?}");
    assert_eq!(ensured.attachment.index, a.index);
    assert!(s.pings_both_ways(), "traffic after the on-demand restart");

    // Killed once more, and this time the interface is deleted while no
    // daemon runs: the next daemon makes the device again from its record
    // (a new TUN under the birth name, the UAPI socket answering), and the
    // owner's ensure attaches it afresh.
    let mut daemon3 = _daemon3;
    daemon3.kill();
    kit::ip(&format!("-n {} link del wg0", s.pod.name));
    engine.start_on_demand = false;
    let _daemon4 = DaemonPid::spawn(&engine);
    assert!(
        log_of(&engine).contains("its TUN was gone, created again"),
        "{}",
        log_of(&engine)
    );
    let listed = engine.list().expect("list");
    assert_eq!(listed.len(), 1);
    let fresh = rtnl
        .link_by_name(&s.birth)
        .expect("a new TUN under the birth name");
    assert_eq!(listed[0].ifindex, fresh.index);
    assert!(WgDevice::open_engine(&engine, s.birth.as_str()).is_ok());
    let place = s.place(&engine);
    let ensured = place.ensure(&spec).expect("ensure");
    assert!(ensured.created, "{ensured:?}");
    assert!(s.pings_both_ways(), "traffic on the new interface");
    assert!(place.detach(&spec.name, &spec.birth_name).expect("detach"));
    assert!(engine.list().expect("list").is_empty());
    drop(s.go);
}

/// The helper run as an unprivileged user by the test below: connect to
/// the control socket named by `WG_ENGINE_TEST_CONTROL`, ask for a list,
/// print what happened. Does nothing in a normal run.
#[test]
fn non_root_client_helper() {
    let Some(control) = std::env::var_os("WG_ENGINE_TEST_CONTROL") else {
        return;
    };
    let mut e = EngineDaemon::new("/nonexistent").in_dir(std::path::Path::new("/nonexistent"));
    e.control_socket = PathBuf::from(control);
    e.start_on_demand = false;
    match e.list() {
        Ok(l) => println!("RESULT listed {}", l.len()),
        Err(wg_netns::Error::Engine { kind, .. }) => println!("RESULT engine-error {kind}"),
        Err(err) => println!("RESULT error {err}"),
    }
}

#[test]
fn a_non_root_client_is_refused() {
    let test = "a_non_root_client_is_refused";
    if kit::unavailable(test, &["setpriv"]) {
        return;
    }
    let dir = WorkDir::new("wg-engine-d");
    let mut engine = engine_in(&dir);
    engine.start_on_demand = false;
    let _daemon = DaemonPid::spawn(&engine);
    let as_nobody = || {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "non_root_client_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WG_ENGINE_TEST_CONTROL", &engine.control_socket)
            .output()
            .expect("setpriv");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        stdout
            .lines()
            .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_string()))
            .unwrap_or_else(|| {
                panic!(
                    "helper said nothing: {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    };
    // The socket is 0600 (in a 0700 directory): nobody cannot connect.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&engine.control_socket)
        .expect("control socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let r = as_nobody();
    assert!(r.contains("ermission denied"), "{r}");
    // Even with the file opened to everyone, the daemon checks who is
    // calling (SO_PEERCRED) and refuses.
    std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o711)).expect("chmod");
    std::fs::set_permissions(
        &engine.control_socket,
        std::fs::Permissions::from_mode(0o666),
    )
    .expect("chmod");
    assert_eq!(as_nobody(), "engine-error refused");
    assert!(log_of(&engine).contains("refused a request from uid 65534"));
    // Root still is served.
    assert!(engine.list().expect("list as root").is_empty());
}

#[test]
fn malformed_requests_get_typed_errors_and_the_daemon_stays_up() {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use wg_netns::engine::proto::{self, Create, Reply, Request};

    let test = "malformed_requests_get_typed_errors_and_the_daemon_stays_up";
    if kit::unavailable(test, &[]) {
        return;
    }
    let dir = WorkDir::new("wg-engine-d");
    let mut engine = engine_in(&dir);
    engine.start_on_demand = false;
    let _daemon = DaemonPid::spawn(&engine);
    let connect = || {
        let s = UnixStream::connect(&engine.control_socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s
    };
    let raw = |text: &str| {
        let mut s = connect();
        s.write_all(text.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let kind = |r: Reply| match r {
        Reply::Error { kind, .. } => Some(kind),
        _ => None,
    };
    // Not the protocol, unknown op, another version.
    assert!(raw("get=1\n\n").contains("error=invalid"));
    assert!(raw("wg_engine=1\nop=format\n\n").contains("error=invalid"));
    assert!(raw("wg_engine=9\nop=list\n\n").contains("error=version"));
    // A create whose namespaces did not come along.
    let name = IfName::new("dgenbad").expect("name");
    let s = connect();
    proto::send_request(&s, &Request::Create(Create::new(name.clone(), "/x")), &[]).expect("send");
    assert_eq!(
        kind(proto::recv_reply(&s).expect("reply")),
        Some(ErrorKind::Invalid)
    );
    // A descriptor that is not a network namespace.
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let s = connect();
    proto::send_request(
        &s,
        &Request::Create(Create::new(name.clone(), "/dev/null")),
        &[null.as_fd()],
    )
    .expect("send");
    assert_eq!(
        kind(proto::recv_reply(&s).expect("reply")),
        Some(ErrorKind::Invalid)
    );
    // A client that says nothing and goes.
    drop(connect());
    // Starting it again while it runs is harmless: the new process sees
    // the lock taken and exits 0; the running one goes on.
    let t = Instant::now();
    let again = Command::new(&engine.program)
        .args(engine.serve_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("second serve");
    assert!(again.success(), "{again:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(engine.answers());
    // Still serving; nothing was created or recorded.
    assert!(engine.list().expect("list").is_empty());
    assert!(!engine.record_path(name.as_str()).exists());
    assert!(!engine.delete(&name).expect("delete"));
}

/// The processes running this test's daemon (its control socket's path is
/// on their command line).
fn daemons_of(engine: &EngineDaemon) -> Vec<u32> {
    let want = engine.control_socket.to_string_lossy().to_string();
    kit::processes("wg-engine")
        .into_iter()
        .filter(|p| p.args.contains(&want))
        .map(|p| p.pid)
        .collect()
}

#[test]
fn clients_starting_the_daemon_at_once_get_one_daemon_and_all_their_devices() {
    let test = "clients_starting_the_daemon_at_once_get_one_daemon_and_all_their_devices";
    if kit::unavailable(test, &["ip"]) {
        return;
    }
    let dir = WorkDir::new("wg-engine-d");
    let engine = engine_in(&dir);
    let node = TestNs::new("dno");
    let pods: Vec<TestNs> = (0..4).map(|_| TestNs::new("dpo")).collect();
    let names: Vec<IfName> = (0..4).map(|_| kit::ifname("dgcc")).collect();
    let results: Vec<Result<bool, String>> = std::thread::scope(|sc| {
        let handles: Vec<_> = pods
            .iter()
            .zip(&names)
            .map(|(pod, name)| {
                let engine = &engine;
                let node = &node;
                sc.spawn(move || {
                    engine
                        .create(name, &pod.ns, &node.ns, 1420)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect()
    });
    // A second instance that lost the lock exits at once; give it that
    // moment. Then every daemon this test started goes, whatever happened.
    kit::eventually(Duration::from_secs(5), || daemons_of(&engine).len() == 1);
    let _daemons: Vec<DaemonPid> = daemons_of(&engine)
        .into_iter()
        .map(|p| DaemonPid(p, None))
        .collect();
    assert!(
        results.iter().all(|r| r == &Ok(true)),
        "{results:?}\n{}",
        log_of(&engine)
    );
    assert_eq!(_daemons.len(), 1, "{}", log_of(&engine));
    let listed: Vec<String> = engine
        .list()
        .expect("list")
        .into_iter()
        .map(|d| d.name.to_string())
        .collect();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);

    // A pod's namespace deleted while the daemon runs: the device goes,
    // and its record with it.
    let mut pods = pods;
    drop(pods.remove(0));
    assert!(
        kit::eventually(Duration::from_secs(5), || !engine
            .record_path(names[0].as_str())
            .exists()),
        "{}",
        log_of(&engine)
    );
    assert_eq!(engine.list().expect("list").len(), 3);
}

/// The short-lived caller of the test below (a CNI plugin's part): create
/// one device through a daemon started on demand, then exit. Does nothing
/// in a normal run.
#[test]
fn short_lived_caller_helper() {
    let Some(args) = std::env::var_os("WG_ENGINE_TEST_CALLER") else {
        return;
    };
    let args = args.to_string_lossy().to_string();
    let [dir, pod, node, name]: [&str; 4] = args
        .split(';')
        .collect::<Vec<_>>()
        .try_into()
        .expect("four arguments");
    let engine =
        EngineDaemon::new(env!("CARGO_BIN_EXE_wg-engine")).in_dir(std::path::Path::new(dir));
    let pod = wg_netns::Netns::from_path(pod).expect("pod");
    let node = wg_netns::Netns::from_path(node).expect("node");
    let name = IfName::new(name).expect("name");
    match engine.create(&name, &pod, &node, 1420) {
        Ok(created) => println!("RESULT created={created}"),
        Err(e) => println!("RESULT error {e}"),
    }
}

#[test]
fn a_device_outlives_the_short_lived_caller_that_started_the_daemon() {
    let test = "a_device_outlives_the_short_lived_caller_that_started_the_daemon";
    if kit::unavailable(test, &["ip"]) {
        return;
    }
    let dir = WorkDir::new("wg-engine-d");
    let engine = engine_in(&dir);
    let node = TestNs::new("dno");
    let pod = TestNs::new("dpo");
    let name = kit::ifname("dgsl");
    let mut caller = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "short_lived_caller_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "WG_ENGINE_TEST_CALLER",
            format!(
                "{};/var/run/netns/{};/var/run/netns/{};{name}",
                dir.path.display(),
                pod.name,
                node.name
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("caller");
    let caller_pid = caller.id();
    let mut out = String::new();
    if let Some(mut o) = caller.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut out);
    }
    let status = caller.wait().expect("caller exits");
    // Whatever happened, the daemon it started goes with this test.
    let pid = engine.daemon_pid();
    let _daemon = pid.map(|p| DaemonPid(p, None));
    assert!(
        status.success() && out.contains("RESULT created=true"),
        "{out}\n{}",
        log_of(&engine)
    );
    let pid = pid.expect("the daemon runs after its starter exited");
    // Not the caller's child (it was never this test's either), no trace of
    // the caller's environment or working directory.
    assert_ne!(ppid_and_sid(pid).0, caller_pid);
    assert_ne!(ppid_and_sid(pid).0, std::process::id());
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        !String::from_utf8_lossy(&environ).contains("WG_ENGINE_TEST_CALLER"),
        "the daemon kept its starter's environment"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd"),
        PathBuf::from("/")
    );
    // The device is there, in the pod, answering.
    assert_eq!(
        engine
            .list()
            .expect("list")
            .into_iter()
            .map(|d| d.name)
            .collect::<Vec<_>>(),
        vec![name.clone()]
    );
    assert!(pod.link_names().contains(&name.to_string()));
    assert!(WgDevice::open_engine(&engine, name.as_str())
        .and_then(|d| d.get())
        .is_ok());
    assert!(engine.delete(&name).expect("delete"));
}
