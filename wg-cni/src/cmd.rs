//! The verbs. Each handler is a short story told with wg-netns calls:
//! parse, plan, apply, answer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use wg_netns::{
    cleanup_birth, normalize, Backend, Birthplace, Device, IfName, IpNetwork, Netns, Userspace,
    WgDevice,
};

use crate::cni::{build_result, CniError, Code, Command, Env, Version, SUPPORTED_VERSIONS};
use crate::config::{ChainedResult, KeySource, NetConf, SocketNamespace};
use crate::log::Log;
use crate::plan;
use crate::state::{Record, StateDir};

/// Run one invocation. `Ok(Some(json))` is printed on stdout; `Ok(None)`
/// prints nothing; errors become CNI error JSON.
pub fn run(env: &Env, stdin: &[u8], log: &mut Log) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version_reply(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    *log = Log::open(
        &conf.log_file,
        format!(
            "{:?} net={} container={} ifname={}",
            env.command, conf.name, env.container_id, env.ifname
        ),
    );
    let outcome = match env.command {
        Command::Add => add(env, &conf, log).map(Some),
        Command::Del => del(env, &conf, log).map(|_| None),
        Command::Check => check(env, &conf).map(|_| None),
        Command::Status => status(&conf).map(|_| None),
        Command::Gc => gc(&conf, stdin, log).map(|_| None),
        Command::Version => unreachable!("answered above"),
    };
    match &outcome {
        Ok(_) => log.line("ok"),
        Err(e) => log.line(&format!("error: {e}")),
    }
    outcome
}

/// VERSION: the versions we speak, in the caller's version when we know it.
fn version_reply(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .and_then(Version::parse)
        })
        .unwrap_or(Version::V1_1_0);
    json!({"cniVersion": asked.as_str(), "supportedVersions": SUPPORTED_VERSIONS})
}

fn userspace(conf: &NetConf) -> Userspace {
    conf.userspace_implementation
        .clone()
        .map(Userspace::new)
        .unwrap_or_else(Userspace::from_env)
}

/// The backend the configuration asks for, or code 50 when there is none.
/// A failure to find out (netlink refusing the question) is code 5, not 50.
fn backend(conf: &NetConf) -> Result<Backend, CniError> {
    let kernel = || Backend::probe_kernel().map_err(CniError::from);
    let userspace_or = |why: String| {
        let u = userspace(conf);
        match u.resolve() {
            Some(_) => Ok(Backend::Userspace(u)),
            None => Err(CniError::new(
                Code::NotAvailable,
                why,
                format!("{} is not installed", u.program.display()),
            )),
        }
    };
    match conf.backend.as_str() {
        "kernel" if kernel()? => Ok(Backend::Kernel),
        "kernel" => Err(CniError::new(
            Code::NotAvailable,
            "kernel WireGuard is not available",
            "backend \"kernel\" was configured",
        )),
        "userspace" => userspace_or("userspace WireGuard is not available".into()),
        _ if kernel()? => Ok(Backend::Kernel),
        _ => userspace_or("no WireGuard backend: the kernel has no WireGuard".into()),
    }
}

/// The backend a recorded attachment was made with.
fn recorded_backend(r: &Record, conf: &NetConf) -> Backend {
    if r.backend == "kernel" {
        Backend::Kernel
    } else {
        Backend::Userspace(
            r.userspace_implementation
                .clone()
                .map(Userspace::new)
                .unwrap_or_else(|| userspace(conf)),
        )
    }
}

fn open_pod(path: &str) -> Result<Netns, CniError> {
    Netns::from_path(path).map_err(|e| {
        CniError::new(
            Code::ContainerUnknown,
            "cannot open the container's network namespace",
            e.to_string(),
        )
    })
}

fn socket_ns_name(s: SocketNamespace) -> &'static str {
    match s {
        SocketNamespace::Host => "host",
        SocketNamespace::Container => "container",
    }
}

/// The MTU of the underlay towards the first peer with an endpoint, as seen
/// from the birth namespace; only asked for `"mtu": "auto"`.
fn underlay_mtu(place: &Birthplace<'_>, conf: &NetConf) -> Option<u32> {
    if conf.mtu != crate::config::Mtu::Auto {
        return None;
    }
    let ep = conf.peers.iter().find_map(|p| p.endpoint)?;
    let rtnl = place.birth_rtnl().ok()?;
    let route = rtnl.route_get(ep.ip()).ok()?;
    rtnl.link_by_index(route.oif?).ok().map(|l| l.mtu)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// ADD: attach the interface to the container with its socket where the
/// configuration says (`Birthplace::attach`), addressed and routed; or, when
/// it is already there, bring it back to the configuration. Answer with the (appended) result.
fn add(env: &Env, conf: &NetConf, log: &mut Log) -> Result<Value, CniError> {
    let state = StateDir::open(&conf.state_dir)?;
    let _all = state.lock_all(false)?;
    let _one = state.lock_attachment(&conf.name, &env.container_id, &env.ifname)?;
    let backend = backend(conf)?;
    let pod = open_pod(&env.netns)?;
    let host = Netns::current()?;
    let birth_ns = match conf.socket_namespace {
        SocketNamespace::Host => &host,
        SocketNamespace::Container => &pod,
    };
    let name = plan::interface_name(conf, env)?;
    let birth = plan::birth_name(&conf.name, &env.container_id, &env.ifname);
    let place = Birthplace::new(birth_ns, &pod, &backend);

    let attachment = match place.find(&name, &birth)? {
        Some(found) => {
            log.line(&format!("{name} exists (birth {birth}); reconciling"));
            reconcile(&place, conf, &name, &birth, found.index)?;
            place.find(&name, &birth)?.unwrap_or(found)
        }
        None => {
            // Whatever a crashed ADD may have left at the birthplace.
            place.cleanup_birth(&birth)?;
            let key = conf.load_private_key()?;
            let mtu = plan::mtu(conf, underlay_mtu(&place, conf));
            let spec = plan::interface_spec(conf, birth.clone(), name.clone(), key, mtu);
            let a = place.attach(&spec)?;
            log.line(&format!(
                "attached {name} (birth {birth}, {:?}, mtu {}) public key {}",
                a.kind,
                a.mtu,
                a.public_key.map(|k| k.to_base64()).unwrap_or_default()
            ));
            a
        }
    };

    let record = Record {
        network: conf.name.clone(),
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        interface: name.to_string(),
        birth_name: birth.to_string(),
        netns: env.netns.clone(),
        socket_namespace: socket_ns_name(conf.socket_namespace).into(),
        backend: if backend == Backend::Kernel {
            "kernel"
        } else {
            "userspace"
        }
        .into(),
        userspace_implementation: match &backend {
            Backend::Userspace(u) => Some(u.program.display().to_string()),
            Backend::Kernel => None,
        },
        public_key: attachment
            .public_key
            .map(|k| k.to_base64())
            .unwrap_or_default(),
        listen_port: conf.listen_port,
        addresses: conf.addresses.iter().map(|a| a.to_string()).collect(),
        k8s: env
            .args
            .iter()
            .filter(|(k, _)| k.starts_with("K8S_POD_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        created: now(),
    };
    if let Err(e) = state.save(&record) {
        let _ = place.detach(&name, &birth);
        return Err(e);
    }
    match (&conf.prev_result, conf.chained_result) {
        (Some(Value::Object(prev)), ChainedResult::Passthrough) => {
            let mut prev = prev.clone();
            prev.insert("cniVersion".into(), json!(conf.cni_version.as_str()));
            Ok(Value::Object(prev))
        }
        _ => {
            let (iface, ips, routes) = plan::result_parts(conf, &name, &env.netns, attachment.mtu);
            Ok(build_result(
                conf.cni_version,
                conf.prev_result.as_ref(),
                &iface,
                &ips,
                &routes,
                conf.dns.as_ref(),
            ))
        }
    }
}

/// Bring an existing attachment back to the configuration: device state by
/// difference, missing addresses, routes.
fn reconcile(
    place: &Birthplace<'_>,
    conf: &NetConf,
    name: &IfName,
    birth: &IfName,
    index: u32,
) -> Result<(), CniError> {
    let key = match conf.private_key {
        KeySource::Generate => None, // keep the key generated at the first ADD
        _ => Some(conf.load_private_key()?),
    };
    place
        .device(name, birth)?
        .update(&plan::device_config(conf, key))?;
    let rtnl = place.target_rtnl()?;
    let have = rtnl.addresses(index)?;
    for a in conf.addresses.iter().filter(|a| !have.contains(a)) {
        rtnl.add_address(index, *a)?;
    }
    rtnl.set_up(index, true)?;
    for r in plan::routes(conf) {
        rtnl.replace_route(&r.dev(index))?;
    }
    Ok(())
}

/// Everything needed to tear an attachment down.
struct Teardown {
    name: IfName,
    birth: IfName,
    socket_namespace: SocketNamespace,
    backend: Backend,
    netns: String,
}

impl Teardown {
    fn from_record(r: &Record, conf: &NetConf) -> Result<Teardown, CniError> {
        let bad =
            |e: wg_netns::Error| CniError::new(Code::Io, "corrupt state record", e.to_string());
        Ok(Teardown {
            name: IfName::new(r.interface.as_str()).map_err(bad)?,
            birth: IfName::new(r.birth_name.as_str()).map_err(bad)?,
            socket_namespace: if r.socket_namespace == "container" {
                SocketNamespace::Container
            } else {
                SocketNamespace::Host
            },
            backend: recorded_backend(r, conf),
            netns: r.netns.clone(),
        })
    }

    /// Remove the interface, its daemon and socket, and leftovers at the
    /// birthplace. Succeeds when the namespace or the interface is gone.
    fn run(&self) -> Result<(), CniError> {
        let host = Netns::current()?;
        let pod = (!self.netns.is_empty())
            .then(|| Netns::from_path(&self.netns).ok())
            .flatten();
        match (&pod, self.socket_namespace) {
            (Some(pod), SocketNamespace::Host) => {
                Birthplace::new(&host, pod, &self.backend).detach(&self.name, &self.birth)?;
            }
            (Some(pod), SocketNamespace::Container) => {
                Birthplace::new(pod, pod, &self.backend).detach(&self.name, &self.birth)?;
            }
            (None, SocketNamespace::Host) => {
                cleanup_birth(&host, &self.birth, &self.backend)?;
            }
            (None, SocketNamespace::Container) => {
                // The runtime let go of the namespace, but a userspace daemon
                // born inside keeps it alive: reach it through the daemon.
                if let Backend::Userspace(u) = &self.backend {
                    let pid = WgDevice::open_userspace(u, self.birth.as_str())
                        .ok()
                        .and_then(|d| d.daemon_pid());
                    if let Some(ns) = pid.and_then(|p| Netns::from_pid(p).ok()) {
                        Birthplace::new(&ns, &ns, &self.backend).detach(&self.name, &self.birth)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// DEL: remove what ADD made. Idempotent: the namespace gone, the interface
/// gone, never added, or run twice are all success.
fn del(env: &Env, conf: &NetConf, log: &mut Log) -> Result<(), CniError> {
    let state = StateDir::open(&conf.state_dir)?;
    let _all = state.lock_all(false)?;
    let _one = state.lock_attachment(&conf.name, &env.container_id, &env.ifname)?;
    let teardown = match state.load(&conf.name, &env.container_id, &env.ifname) {
        Some(r) => Teardown {
            netns: if env.netns.is_empty() {
                String::new()
            } else {
                env.netns.clone()
            },
            ..Teardown::from_record(&r, conf)?
        },
        None => Teardown {
            // Never recorded (never added, or a crashed ADD): derive the names.
            name: plan::interface_name(conf, env)
                .or_else(|_| IfName::new(env.ifname.as_str()).map_err(CniError::from))?,
            birth: plan::birth_name(&conf.name, &env.container_id, &env.ifname),
            socket_namespace: conf.socket_namespace,
            backend: backend(conf).unwrap_or_else(|_| Backend::Userspace(userspace(conf))),
            netns: env.netns.clone(),
        },
    };
    teardown.run()?;
    state.remove(&conf.name, &env.container_id, &env.ifname)?;
    log.line(&format!(
        "removed {} (birth {})",
        teardown.name, teardown.birth
    ));
    Ok(())
}

/// CHECK: the interface in the container matches the configuration: keys,
/// peers, addresses, routes. Every difference is named.
fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    if conf.cni_version < Version::V0_4_0 {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            "CHECK needs cniVersion 0.4.0 or later",
            format!("cniVersion is {}", conf.cni_version),
        ));
    }
    let state = StateDir::open(&conf.state_dir)?;
    let _all = state.lock_all(false)?;
    let _one = state.lock_attachment(&conf.name, &env.container_id, &env.ifname)?;
    let record = state
        .load(&conf.name, &env.container_id, &env.ifname)
        .ok_or_else(|| {
            CniError::new(
                Code::ContainerUnknown,
                "no attachment to check",
                format!(
                    "nothing was added for container {} interface {}",
                    env.container_id, env.ifname
                ),
            )
        })?;
    let t = Teardown::from_record(&record, conf)?;
    let pod = open_pod(&env.netns)?;
    let host = Netns::current()?;
    let birth_ns = if t.socket_namespace == SocketNamespace::Container {
        &pod
    } else {
        &host
    };
    let place = Birthplace::new(birth_ns, &pod, &t.backend);
    let mut diffs = Vec::new();

    if let (Some(prev), ChainedResult::Append) = (&conf.prev_result, conf.chained_result) {
        let listed = prev["interfaces"].as_array().is_some_and(|ifs| {
            ifs.iter()
                .any(|i| i["name"] == t.name.as_str() && i["sandbox"] == env.netns.as_str())
        });
        if !listed {
            diffs.push(format!(
                "prevResult does not list interface {} in {}",
                t.name, env.netns
            ));
        }
    }
    let Some(found) = place.find(&t.name, &t.birth)? else {
        diffs.push(format!(
            "interface {} is missing from {}",
            t.name, env.netns
        ));
        return Err(mismatch(diffs));
    };
    let device = place.device(&t.name, &t.birth)?.get()?;
    let want_key = match conf.private_key {
        KeySource::Generate => record.public_key.parse().ok(),
        _ => Some(conf.load_private_key()?.public_key()),
    };
    compare_device(conf, want_key, &device, &mut diffs);

    let rtnl = place.target_rtnl()?;
    let have: Vec<IpNetwork> = rtnl.addresses(found.index)?;
    for a in conf.addresses.iter().filter(|a| !have.contains(a)) {
        diffs.push(format!("address {a} is missing from {}", t.name));
    }
    let routes = rtnl.routes(None)?;
    for r in plan::routes(conf) {
        let present = routes.iter().any(|g| {
            g.destination == r.destination
                && g.table == r.table
                && g.oif == Some(found.index)
                && g.gateway == r.gateway
        });
        if !present {
            diffs.push(format!(
                "route {} (table {}) through {} is missing",
                r.destination, r.table, t.name
            ));
        }
    }
    if let Some(mtu) = plan::mtu(conf, None).filter(|_| conf.mtu != crate::config::Mtu::Auto) {
        if found.mtu != mtu {
            diffs.push(format!("mtu is {}, configured {mtu}", found.mtu));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(mismatch(diffs))
    }
}

fn mismatch(diffs: Vec<String>) -> CniError {
    CniError::new(
        Code::CheckMismatch,
        "the attachment differs from its configuration",
        diffs.join("; "),
    )
}

fn compare_device(
    conf: &NetConf,
    want_key: Option<wg_netns::PublicKey>,
    dev: &Device,
    diffs: &mut Vec<String>,
) {
    if want_key.is_some() && dev.public_key != want_key {
        diffs.push("the interface's key is not the configured one".into());
    }
    if let Some(p) = conf.listen_port {
        if dev.listen_port != p {
            diffs.push(format!(
                "listen port is {}, configured {p}",
                dev.listen_port
            ));
        }
    }
    if let Some(m) = conf.fwmark {
        if dev.fwmark != m {
            diffs.push(format!("fwmark is {:#x}, configured {m:#x}", dev.fwmark));
        }
    }
    let want: BTreeSet<_> = conf.peers.iter().map(|p| p.public_key).collect();
    for p in &dev.peers {
        if !want.contains(&p.public_key) {
            diffs.push(format!("unexpected peer {}", p.public_key));
        }
    }
    for p in &conf.peers {
        let Some(have) = dev.peer(&p.public_key) else {
            diffs.push(format!("peer {} is missing", p.public_key));
            continue;
        };
        let set = |v: &[IpNetwork]| v.iter().map(|n| normalize(*n)).collect::<BTreeSet<_>>();
        if set(&have.allowed_ips) != set(&p.allowed_ips) {
            diffs.push(format!(
                "peer {} allowed IPs are [{}], configured [{}]",
                p.public_key,
                fmt_nets(&have.allowed_ips),
                fmt_nets(&p.allowed_ips)
            ));
        }
        let ka = p.persistent_keepalive.filter(|d| !d.is_zero());
        if have.persistent_keepalive != ka {
            diffs.push(format!(
                "peer {} keepalive is {:?}, configured {:?}",
                p.public_key, have.persistent_keepalive, ka
            ));
        }
        if have.preshared_key != p.preshared_key {
            diffs.push(format!(
                "peer {} preshared key differs from the configuration (values not shown)",
                p.public_key
            ));
        }
    }
}

fn fmt_nets(v: &[IpNetwork]) -> String {
    v.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// STATUS: ready when a WireGuard backend is available.
fn status(conf: &NetConf) -> Result<(), CniError> {
    backend(conf).map(|_| ())
}

/// GC: remove this network's attachments that the runtime no longer lists
/// (`cni.dev/valid-attachments`, or `cni.dev/attachments`).
fn gc(conf: &NetConf, stdin: &[u8], log: &mut Log) -> Result<(), CniError> {
    let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            Code::Decode,
            "failed to decode the network configuration",
            e.to_string(),
        )
    })?;
    let list = raw
        .get("cni.dev/valid-attachments")
        .or_else(|| raw.get("cni.dev/attachments"));
    let valid: BTreeSet<(String, String)> = match list {
        None | Some(Value::Null) => BTreeSet::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|a| {
                let f = |k: &str| a.get(k).and_then(Value::as_str).map(str::to_string);
                match (f("containerID"), f("ifname")) {
                    (Some(c), Some(i)) => Ok((c, i)),
                    _ => Err(CniError::new(
                        Code::InvalidConfig,
                        "invalid cni.dev/valid-attachments",
                        format!("entry {a} lacks containerID or ifname"),
                    )),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(CniError::new(
                Code::InvalidConfig,
                "invalid cni.dev/valid-attachments",
                format!("expected a list, got {v}"),
            ))
        }
    };
    let state = StateDir::open(&conf.state_dir)?;
    let _all = state.lock_all(true)?;
    for r in state.list(&conf.name) {
        if valid.contains(&(r.container_id.clone(), r.ifname.clone())) {
            continue;
        }
        Teardown::from_record(&r, conf)?.run()?;
        state.remove(&r.network, &r.container_id, &r.ifname)?;
        log.line(&format!(
            "gc removed container={} ifname={} ({})",
            r.container_id, r.ifname, r.interface
        ));
    }
    Ok(())
}
