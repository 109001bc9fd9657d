//! The verbs in managed mode ([`Mode::Managed`](crate::config::Mode)): the
//! node agent (wg-agent) makes the pod's interface from the cluster's
//! resources. The plugin holds no key, no address and no Kubernetes
//! credential: it forwards the verb over the agent's socket with the pod's
//! network namespace as a descriptor ([`crate::managed`]) and turns the
//! reply into the CNI answer.
//!
//! When the agent cannot be reached (no socket, nobody listening, no reply
//! within `agentTimeout`, or a reply that is not the protocol):
//! - ADD fails with code 11 (try again later), unless the network is named
//!   and its hint (`AGENTHINTDIR/NETWORK.json`) says `failurePolicy:
//!   ignore`; then the chain's result passes through unchanged.
//! - DEL succeeds: the agent reconciles its attachments against the pods
//!   that exist when it returns.
//! - CHECK fails with code 11; STATUS with code 50.
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

use crate::cni::{CniError, Code, Env, ResultInterface, ResultIp, ResultRoute};
use crate::config::{ManagedConf, NetConf};
use crate::log::Log;
use crate::managed::{
    self, Attached, Failure, Launch, LaunchNamespace, NetworkHint, OnLaunch, PodRef, ProtoError,
    Reply, Request, Verb, USERSPACE_PROGRAM,
};
use crate::plan;

#[cfg(test)]
mod tests;

/// Largest hint file read.
const MAX_HINT: u64 = 64 << 10;

/// ADD: ask the agent to attach the pod, answer with what it made.
pub fn add(env: &Env, conf: &NetConf, m: &ManagedConf, log: &mut Log) -> Result<Value, CniError> {
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
            Ok(plan::unchanged(conf))
        }
        Ok(Reply::Failed(f)) => Err(refused(f)),
        Ok(other) => add_without_agent(conf, m, unexpected(&other), log),
        Err(e) => add_without_agent(conf, m, e, log),
    }
}

/// DEL: ask the agent to remove the pod's interface. Never fails because
/// something is gone: not the namespace, not the agent.
pub fn del(env: &Env, m: &ManagedConf, log: &mut Log) -> Result<(), CniError> {
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

/// STATUS: ready when the agent accepts a connection (code 50 otherwise).
pub fn status(m: &ManagedConf) -> Result<(), CniError> {
    managed::connect(&m.socket, m.timeout)
        .map(drop)
        .map_err(|e| {
            CniError::new(
                Code::NotAvailable,
                format!("the node agent is not available at {}", m.socket.display()),
                e.to_string(),
            )
        })
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
    plan::answer(conf, &iface, &ips, &routes)
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
    let stream = managed::connect(&m.socket, m.timeout)?;
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

/// ADD without the agent: the network's failure policy decides.
fn add_without_agent(
    conf: &NetConf,
    m: &ManagedConf,
    e: ProtoError,
    log: &mut Log,
) -> Result<Value, CniError> {
    let Some(network) = &m.network else {
        return Err(try_again(m, e, None));
    };
    match read_hint(&m.hint_dir, network) {
        Ok(h) if h.failure_policy == "ignore" => {
            log.line(&format!(
                "cannot reach the agent at {}: {e}; network {network} has failurePolicy ignore: passing the result through without its interface",
                m.socket.display()
            ));
            Ok(plan::unchanged(conf))
        }
        Ok(_) => Err(try_again(m, e, None)),
        Err(why) => Err(try_again(
            m,
            e,
            Some(format!(
                "network {network}'s failure policy is unknown: {why}"
            )),
        )),
    }
}

/// `DIR/NETWORK.json`.
fn read_hint(dir: &Path, network: &str) -> Result<NetworkHint, String> {
    let path = dir.join(format!("{network}.json"));
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|f| f.take(MAX_HINT).read_to_end(&mut bytes))
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
