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

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use serde_json::Value;
use wg_netns::{IfName, IpNetwork};

use crate::cni::{CniError, Code, Env, ResultInterface, ResultIp, ResultRoute};
use crate::config::{ManagedConf, NetConf};
use crate::log::Log;
use crate::managed::{
    self, Attached, Failure, NetworkHint, PodRef, ProtoError, Reply, Request, Verb,
};
use crate::plan;

#[cfg(test)]
mod tests;

/// Largest hint file read.
const MAX_HINT: u64 = 64 << 10;

/// ADD: ask the agent to attach the pod, answer with what it made.
pub fn add(env: &Env, conf: &NetConf, m: &ManagedConf, log: &mut Log) -> Result<Value, CniError> {
    let netns = container_netns(env)?;
    match ask(Verb::Add, env, m, Some(&netns)) {
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
    let line = match ask(Verb::Del, env, m, netns.as_ref()) {
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
    match ask(Verb::Check, env, m, Some(&netns)) {
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

/// One request and its reply. An `Attached` whose interface name is not
/// one is a protocol error, as a malformed message is.
fn ask(
    verb: Verb,
    env: &Env,
    m: &ManagedConf,
    netns: Option<&OwnedFd>,
) -> Result<Reply, ProtoError> {
    let req = Request::new(verb, &env.container_id, &env.ifname, &env.netns)
        .network(m.network.clone())
        .pod(pod(env));
    let reply = managed::call(&m.socket, &req, netns, m.timeout)?;
    if let Reply::Attached(a) = &reply {
        IfName::new(a.interface.as_str()).map_err(|e| {
            ProtoError::Malformed(format!("attached interface {:?}: {e}", a.interface))
        })?;
    }
    Ok(reply)
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
