//! Measurement, not a test: what attaching a pod's interface costs through
//! the engine daemon (wg-netns's `Backend::Engine`) against spawning one
//! wireguard-go per device (`Backend::Userspace`), the same `Birthplace`
//! attach (create, key, final name, address, up) and detach both ways.
//!
//! `create_cost [N] [PATH-TO-wg-engine]` (root; default N = 20, the
//! `wg-engine` binary next to this example's directory). Makes a node
//! namespace and N pod namespaces (testkit's `wgnt-` names, deleted at the
//! end); the daemon it starts on demand lives in a temporary directory and
//! is killed by its PID at the end. Run it under `flock /tmp/wg-nstest.lock`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use wg_netns::engine::EngineDaemon;
use wg_netns::{Backend, Birthplace, DeviceConfig, IfName, InterfaceSpec, PrivateKey, Userspace};
use wg_netns_testkit::{self as kit, TestNs, WorkDir};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    if v.is_empty() {
        return;
    }
    let p = |q: f64| ms(v[((v.len() - 1) as f64 * q).round() as usize]);
    println!(
        "{name:<34} n={:<3} median {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms",
        v.len(),
        p(0.5),
        p(0.9),
        p(1.0)
    );
}

/// Attach and detach one interface per pod with `backend`; the times.
fn run(
    node: &TestNs,
    pods: &[TestNs],
    backend: &Backend,
    tag: &str,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut attach, mut detach) = (Vec::new(), Vec::new());
    for (i, pod) in pods.iter().enumerate() {
        let place = Birthplace::new(&node.ns, &pod.ns, backend).expect("birthplace");
        let birth = kit::ifname(tag);
        let spec = InterfaceSpec::new(birth.clone(), IfName::new("wg0").expect("name"))
            .device(DeviceConfig::new().private_key(PrivateKey::generate().expect("key")))
            .address(format!("10.215.{}.1/24", i % 250).parse().expect("net"));
        let t = Instant::now();
        place.attach(&spec).expect("attach");
        attach.push(t.elapsed());
        let t = Instant::now();
        place.detach(&spec.name, &birth).expect("detach");
        detach.push(t.elapsed());
    }
    (attach, detach)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let program = args.next().map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("exe");
        exe.parent()
            .and_then(|d| d.parent())
            .expect("target dir")
            .join("wg-engine")
    });
    if let Some(why) = kit::missing(&["ip", "wireguard-go"]) {
        eprintln!("create_cost: {why}");
        return;
    }
    let dir = WorkDir::new("wg-engine-cost");
    let node = TestNs::new("cno");
    let pods: Vec<TestNs> = (0..n).map(|_| TestNs::new("cpo")).collect();

    let engine = EngineDaemon::new(&program).in_dir(&dir.path);
    let backend = Backend::Engine(engine.clone());
    // The first attach starts the daemon.
    let place = Birthplace::new(&node.ns, &pods[0].ns, &backend).expect("birthplace");
    let birth = kit::ifname("ccst");
    let spec = InterfaceSpec::new(birth.clone(), IfName::new("wg1").expect("name"))
        .device(DeviceConfig::new().private_key(PrivateKey::generate().expect("key")));
    let t = Instant::now();
    let first = place.attach(&spec);
    let first_time = t.elapsed();
    let pid = engine.daemon_pid();
    first.expect("first attach");
    place.detach(&spec.name, &birth).expect("detach");
    println!(
        "engine: first attach, daemon started on demand: {:.2} ms",
        ms(first_time)
    );

    let (ea, ed) = run(&node, &pods, &backend, "cen");
    let (ua, ud) = run(
        &node,
        &pods,
        &Backend::Userspace(Userspace::new("wireguard-go")),
        "cug",
    );
    summary("engine attach (daemon running)", ea);
    summary("wireguard-go attach (spawn)", ua);
    summary("engine detach", ed);
    summary("wireguard-go detach", ud);

    if let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}
