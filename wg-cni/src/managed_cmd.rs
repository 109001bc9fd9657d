//! The verbs in managed mode ([`Mode::Managed`](crate::config::Mode)): the
//! node agent (wg-agent) makes the pod's interface from the cluster's
//! resources. The plugin holds no key, no address and no Kubernetes
//! credential: it forwards the verb over the agent's socket with the pod's
//! network namespace as a descriptor ([`crate::managed`]) and turns the
//! reply into the CNI answer.
//!
//! Pods that did not opt in never depend on the agent. In annotation mode
//! (`"managed": true` without `network`) the runtime passes the pod's
//! annotations in `runtimeConfig` ([`PodAnnotations`], the capability
//! `io.kubernetes.cri.pod-annotations`): a pod without the
//! `wireguard.wg-netns.io/network` annotation is passed through by every
//! verb without a word to the agent.
//!
//! The agent is trusted only as what it can be
//! ([`managed::connect_agent`]): its socket's directory is root's and mode
//! 0700, and the process listening runs as root. Anything else is treated
//! as an agent that cannot be reached.
//!
//! When the agent cannot be reached (no socket, nobody listening, not
//! trusted, no reply within `agentTimeout`, or a reply that is not the
//! protocol):
//! - ADD applies the failure policy of the pod's network: the one the
//!   configuration names, else the one the pod's annotation names. Its
//!   hint (`AGENTHINTDIR/NETWORK.json`, written by the agent) saying
//!   `failurePolicy: ignore` passes the chain's result through unchanged
//!   (the pod starts without the interface); `fail`, no hint or an
//!   untrusted one is code 11 (try again later) naming the agent. When the
//!   runtime passed no annotations, wg-cni cannot tell whether the pod
//!   opted in: it passes the result through (a pod that opted in starts
//!   without its interface, and the agent reports it when it returns)
//!   rather than make every pod of the node wait for the agent.
//! - DEL succeeds: the agent reconciles its attachments against the pods
//!   that exist when it returns.
//! - CHECK fails with code 11.
//! - STATUS fails with code 50 only when every pod depends on the agent:
//!   a named network whose policy is not `ignore`. In annotation mode the
//!   plugin can always answer ADD, so the runtime's network stays ready.
//! - GC has nothing to do in any case: the agent reclaims.
//!
//! During an ADD the agent may ask the plugin to start the interface's
//! userspace WireGuard daemon ([`crate::managed::Reply::Launch`], when the
//! agent runs with `WG_AGENT_USERSPACE_LAUNCH=plugin`): the plugin starts
//! [`USERSPACE_PROGRAM`] from its own directory, detached, in the node's or
//! the container's network namespace as asked, logs it and answers with
//! its process id. Started by the plugin, the daemon belongs to the
//! container runtime's side of the node, not to the agent's container, and
//! outlives the agent's restarts. DEL and CHECK start nothing: a launch
//! asked for then is an unexpected reply.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde_json::Value;
use wg_netns::{IfName, IpNetwork, Netns, Userspace};

use crate::answer;
use crate::cni::{CniError, Code, Env, ResultInterface, ResultIp, ResultRoute};
use crate::config::{is_dns_label, ManagedConf, NetConf, PodAnnotations};
use crate::log::Log;
use crate::managed::{
    self, Attached, Failure, Launch, LaunchNamespace, NetworkHint, OnLaunch, PodRef, ProtoError,
    Reply, Request, Verb, USERSPACE_PROGRAM,
};

#[cfg(test)]
mod tests;

/// Largest hint file read.
const MAX_HINT: u64 = 64 << 10;

/// Why the pod did not opt in, when the runtime said so: the verbs then
/// pass it through without asking the agent.
fn not_opted_in(m: &ManagedConf) -> Option<&'static str> {
    (m.network.is_none() && m.annotations == PodAnnotations::NoNetwork)
        .then_some("the pod has no wireguard.wg-netns.io/network annotation")
}

/// ADD: ask the agent to attach the pod, answer with what it made.
pub fn add(env: &Env, conf: &NetConf, m: &ManagedConf, log: &mut Log) -> Result<Value, CniError> {
    if let Some(why) = not_opted_in(m) {
        log.line(&format!("{why}: passing the result through"));
        return Ok(answer::unchanged(conf));
    }
    let netns = container_netns(env)?;
    let asked = {
        let mut on_launch = |l: &Launch| launch(l, &netns, &env.netns, log);
        ask(Verb::Add, env, m, Some(&netns), Some(&mut on_launch))
    };
    match asked {
        Ok(Reply::Attached(a)) => {
            log.line(&format!(
                "the agent attached {} (network {}, addresses {}, mtu {}) public key {}",
                a.interface,
                a.network,
                list(&a.addresses),
                a.mtu,
                a.public_key.to_base64()
            ));
            Ok(attached_result(conf, env, &a))
        }
        Ok(Reply::Skipped { reason }) => {
            log.line(&format!("the agent attached nothing: {reason}"));
            Ok(answer::unchanged(conf))
        }
        Ok(Reply::Failed(f)) => Err(refused(f)),
        Ok(other) => add_without_agent(conf, m, unexpected(&other), log),
        Err(e) => add_without_agent(conf, m, e, log),
    }
}

/// DEL: ask the agent to remove the pod's interface. Never fails because
/// something is gone: not the namespace, not the agent.
pub fn del(env: &Env, m: &ManagedConf, log: &mut Log) -> Result<(), CniError> {
    if let Some(why) = not_opted_in(m) {
        log.line(&format!("{why}: nothing to remove"));
        return Ok(());
    }
    let netns = match env.netns.as_str() {
        "" => None,
        path => open_netns(path)
            .inspect_err(|e| log.line(&format!("the namespace {path} is gone ({e})")))
            .ok(),
    };
    let line = match ask(Verb::Del, env, m, netns.as_ref(), None) {
        Ok(Reply::Done) => "the agent removed the attachment".to_string(),
        Ok(Reply::Skipped { reason }) => format!("the agent had nothing to remove: {reason}"),
        Ok(Reply::Failed(f)) => return Err(refused(f)),
        Ok(other) => format!(
            "{}; the agent removes the attachment when it reconciles",
            unexpected(&other)
        ),
        Err(e) => format!(
            "cannot reach the agent at {}: {e}; the agent removes the attachment when it returns",
            m.socket.display()
        ),
    };
    log.line(&line);
    Ok(())
}

/// CHECK: ask the agent to compare the pod's interface with the resources.
pub fn check(env: &Env, conf: &NetConf, m: &ManagedConf, log: &mut Log) -> Result<(), CniError> {
    crate::cmd::check_version(conf)?;
    if let Some(why) = not_opted_in(m) {
        log.line(&format!("{why}: nothing to check"));
        return Ok(());
    }
    let netns = container_netns(env)?;
    match ask(Verb::Check, env, m, Some(&netns), None) {
        Ok(Reply::Done) => Ok(()),
        Ok(Reply::Skipped { reason }) => {
            log.line(&format!("nothing to check: {reason}"));
            Ok(())
        }
        Ok(Reply::Failed(f)) => Err(refused(f)),
        Ok(other) => Err(try_again(m, unexpected(&other), None)),
        Err(e) => Err(try_again(m, e, None)),
    }
}

/// STATUS: ready when the agent accepts a connection, or when ADD can
/// answer without it: in annotation mode (pods that did not opt in pass
/// through, the others follow their network's policy), or for a named
/// network whose policy is `ignore`. Code 50 otherwise.
pub fn status(m: &ManagedConf, log: &mut Log) -> Result<(), CniError> {
    let Err(e) = managed::connect_agent(&m.socket, m.timeout) else {
        return Ok(());
    };
    let unavailable = |e: &dyn std::fmt::Display| {
        CniError::new(
            Code::NotAvailable,
            format!("the node agent is not available at {}", m.socket.display()),
            e.to_string(),
        )
    };
    let Some(network) = &m.network else {
        log.line(&format!(
            "STATUS: the agent is not available at {} ({e}); ready all the same: pods that did not opt in do not need it",
            m.socket.display()
        ));
        return Ok(());
    };
    match read_hint(&m.hint_dir, network) {
        Ok(h) if h.failure_policy == "ignore" => {
            log.line(&format!(
                "STATUS: the agent is not available at {} ({e}); ready all the same: network {network} has failurePolicy ignore",
                m.socket.display()
            ));
            Ok(())
        }
        _ => Err(unavailable(&e)),
    }
}

/// GC: nothing here; the agent reclaims the attachments of pods that no
/// longer exist.
pub fn gc(log: &mut Log) -> Result<(), CniError> {
    log.line("managed mode: the agent reclaims stale attachments");
    Ok(())
}

/// ADD's answer for what the agent made: the WireGuard interface in the
/// pod (`CNI_NETNS`), each of its addresses and routes once.
pub fn attached_result(conf: &NetConf, env: &Env, a: &Attached) -> Value {
    let iface = ResultInterface {
        name: a.interface.clone(),
        sandbox: env.netns.clone(),
        mtu: Some(a.mtu),
    };
    let ips: Vec<ResultIp> = unique(&a.addresses)
        .map(|address| ResultIp { address })
        .collect();
    let routes: Vec<ResultRoute> = unique(&a.routes)
        .map(|dst| ResultRoute { dst, table: None })
        .collect();
    answer::answer(conf, &iface, &ips, &routes)
}

/// The pod, when `CNI_ARGS` names it (namespace and name; the UID when
/// given).
pub fn pod(env: &Env) -> Option<PodRef> {
    let arg = |k: &str| env.arg(k).filter(|v| !v.is_empty()).map(str::to_string);
    Some(PodRef {
        namespace: arg("K8S_POD_NAMESPACE")?,
        name: arg("K8S_POD_NAME")?,
        uid: arg("K8S_POD_UID"),
    })
}

/// Open a network namespace file read-only (std opens with `O_CLOEXEC`):
/// the descriptor the agent enters the namespace by.
fn open_netns(path: &str) -> std::io::Result<OwnedFd> {
    File::open(path).map(OwnedFd::from)
}

/// The container's namespace, which ADD and CHECK must pass.
fn container_netns(env: &Env) -> Result<OwnedFd, CniError> {
    open_netns(&env.netns).map_err(|e| {
        CniError::new(
            Code::ContainerUnknown,
            "cannot open the container's network namespace",
            format!("{}: {e}", env.netns),
        )
    })
}

/// One request and its reply, answering the agent's launches with
/// `on_launch` (without it, a launch is the reply, an unexpected one). An
/// `Attached` whose interface name is not one is a protocol error, as a
/// malformed message is.
fn ask(
    verb: Verb,
    env: &Env,
    m: &ManagedConf,
    netns: Option<&OwnedFd>,
    on_launch: Option<OnLaunch<'_>>,
) -> Result<Reply, ProtoError> {
    let req = Request::new(verb, &env.container_id, &env.ifname, &env.netns)
        .network(m.network.clone())
        .pod(pod(env));
    let stream = managed::connect_agent(&m.socket, m.timeout)?;
    let reply = managed::converse(&stream, &req, netns, on_launch)?;
    if let Reply::Attached(a) = &reply {
        IfName::new(a.interface.as_str()).map_err(|e| {
            ProtoError::Malformed(format!("attached interface {:?}: {e}", a.interface))
        })?;
    }
    Ok(reply)
}

/// The daemon program the plugin starts for the agent: [`USERSPACE_PROGRAM`]
/// in the directory of the plugin's own executable.
fn userspace_program() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot tell where the plugin's executable is: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("the plugin's executable {} has no directory", exe.display()))?;
    let program = dir.join(USERSPACE_PROGRAM);
    if !program.is_file() {
        return Err(format!(
            "{} is missing: the installer puts wireguard-go there, next to the plugin, \
             for the agent's WG_AGENT_USERSPACE_LAUNCH=plugin",
            program.display()
        ));
    }
    Ok(program)
}

/// Start the daemon the agent asks for, detached, in the node's network
/// namespace (the plugin's own) or the container's (`netns`, opened from
/// `netns_path`); log what was done or why not. The answer is the
/// daemon's process id, or the reason as the agent will report it.
fn launch(l: &Launch, netns: &OwnedFd, netns_path: &str, log: &mut Log) -> Result<u32, String> {
    let started = (|| {
        let name = IfName::new(l.name.as_str())
            .map_err(|e| format!("the agent asked for interface {:?}: {e}", l.name))?;
        let mut u = Userspace::new(userspace_program()?);
        u.args = l.args.clone();
        u.foreground = l.foreground;
        u.socket_dir = l.socket_dir.clone();
        let pid = match l.namespace {
            LaunchNamespace::Node => u.launch(name.as_str()),
            LaunchNamespace::Pod => {
                let fd = netns
                    .try_clone()
                    .map_err(|e| format!("cannot duplicate the container's namespace: {e}"))?;
                let ns = Netns::from_fd(fd, netns_path).map_err(|e| e.to_string())?;
                ns.run(|| u.launch(name.as_str()))
                    .and_then(|started| started)
            }
        }
        .map_err(|e| e.to_string())?;
        Ok::<_, String>((u.program, pid))
    })();
    let place = match l.namespace {
        LaunchNamespace::Node => "the node's network namespace".to_string(),
        LaunchNamespace::Pod => format!("the container's network namespace {netns_path}"),
    };
    match started {
        Ok((program, pid)) => {
            log.line(&format!(
                "started {} for the agent: process {pid}, device {}, in {place}",
                program.display(),
                l.name
            ));
            Ok(pid)
        }
        Err(e) => {
            log.line(&format!(
                "cannot start the agent's daemon for {:?} in {place}: {e}",
                l.name
            ));
            Err(e)
        }
    }
}

/// A reply that does not answer the verb asked.
fn unexpected(reply: &Reply) -> ProtoError {
    ProtoError::Malformed(format!(
        "a reply that does not answer the request: {reply:?}"
    ))
}

/// The agent's refusal, with its code (5 when it is not a code wg-cni
/// knows; the number is kept in the details).
fn refused(f: Failure) -> CniError {
    match Code::from_u32(f.code) {
        Some(code) => CniError::new(code, f.msg, f.details),
        None => CniError::new(
            Code::Io,
            f.msg,
            format!("{} (the agent's error code {})", f.details, f.code),
        ),
    }
}

/// Code 11, naming the socket and what failed.
fn try_again(m: &ManagedConf, e: ProtoError, note: Option<String>) -> CniError {
    let mut details = e.to_string();
    if let Some(note) = note {
        details = format!("{details}; {note}");
    }
    CniError::new(
        Code::TryAgainLater,
        format!("cannot reach the node agent at {}", m.socket.display()),
        details,
    )
}

/// ADD without the agent: the failure policy of the pod's network decides
/// (the configuration's network, else the pod's annotation's). When the
/// runtime passed no annotations, the result passes through: whether the
/// pod opted in is unknown, and a pod that did not must not wait for the
/// agent.
fn add_without_agent(
    conf: &NetConf,
    m: &ManagedConf,
    e: ProtoError,
    log: &mut Log,
) -> Result<Value, CniError> {
    let network = match (&m.network, &m.annotations) {
        (Some(n), _) | (None, PodAnnotations::Network(n)) => n,
        (None, PodAnnotations::NoNetwork) => return Ok(answer::unchanged(conf)),
        (None, PodAnnotations::Unknown) => {
            log.line(&format!(
                "cannot reach the agent at {}: {e}; the runtime passed no pod annotations \
                 (runtimeConfig {:?}: declare it in the entry's \"capabilities\"), so whether the pod \
                 asks for a network is unknown: passing the result through (a pod that asked \
                 starts without its interface, and the agent reports it when it returns)",
                m.socket.display(),
                managed::POD_ANNOTATIONS_CAPABILITY
            ));
            return Ok(answer::unchanged(conf));
        }
    };
    if !is_dns_label(network) {
        return Err(try_again(
            m,
            e,
            Some(format!(
                "the pod's annotation names {network:?}, which is not a network name"
            )),
        ));
    }
    match read_hint(&m.hint_dir, network) {
        Ok(h) if h.failure_policy == "ignore" => {
            log.line(&format!(
                "cannot reach the agent at {}: {e}; network {network} has failurePolicy ignore: passing the result through without its interface",
                m.socket.display()
            ));
            Ok(answer::unchanged(conf))
        }
        Ok(_) => Err(try_again(
            m,
            e,
            Some(format!("network {network} has failurePolicy fail")),
        )),
        Err(why) => Err(try_again(
            m,
            e,
            Some(format!(
                "network {network}'s failure policy is unknown: {why}"
            )),
        )),
    }
}

/// `DIR/NETWORK.json`, if only the agent could have written it: a regular
/// file of a [trusted](managed::trusted_uid) user that group and others
/// cannot write, in a directory they cannot write either (a hint is what
/// lets pods start without their interface).
fn read_hint(dir: &Path, network: &str) -> Result<NetworkHint, String> {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join(format!("{network}.json"));
    let untrusted = |what: &Path, md: &std::fs::Metadata| {
        if !managed::trusted_uid(md.uid()) {
            Some(format!(
                "{} is owned by uid {}, not root",
                what.display(),
                md.uid()
            ))
        } else if md.mode() & 0o022 != 0 {
            Some(format!(
                "{} is writable by group or others (mode {:04o})",
                what.display(),
                md.mode() & 0o7777
            ))
        } else {
            None
        }
    };
    let d = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let md = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !md.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if let Some(why) = untrusted(dir, &d).or_else(|| untrusted(&path, &md)) {
        return Err(format!("not trusted: {why}"));
    }
    let mut bytes = Vec::new();
    f.take(MAX_HINT)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Each network once, in order.
fn unique(nets: &[IpNetwork]) -> impl Iterator<Item = IpNetwork> + '_ {
    nets.iter()
        .enumerate()
        .filter(|(i, n)| !nets[..*i].contains(n))
        .map(|(_, n)| *n)
}

fn list(nets: &[IpNetwork]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
