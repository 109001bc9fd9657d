//! The verbs. Each handler is a straight line told with wg-netns calls:
//! plan (pure), lock, open the place, ensure / verify / detach, record,
//! answer. No netlink, no daemon, no namespace juggling here: that is
//! wg-netns's. In managed mode the node agent does all that, and the verbs
//! of [`crate::managed_cmd`] forward to it.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};
use wg_attach::attach::{backend, ensure_recorded, open_container, userspace};
use wg_netns::{BackendKind, Birthplace, Netns};

use crate::cni::{CniError, Code, Command, Env, Version, SUPPORTED_VERSIONS};
use crate::config::{ChainedResult, Mode, NetConf};
use crate::log::Log;
use crate::managed_cmd;
use crate::plan::{KeyUse, Plan};
use crate::state::StateDir;

/// Run one invocation. `Ok(Some(json))` is printed on stdout; `Ok(None)`
/// prints nothing; errors become CNI error JSON.
pub fn run(env: &Env, stdin: &[u8], log: &mut Log) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version_reply(stdin)));
    }
    // DEL and GC validate only what they use (the names, the record's
    // place), so that a configuration ADD refuses cannot keep a runtime
    // from removing a sandbox.
    let conf = match env.command {
        Command::Del | Command::Gc => NetConf::parse_teardown(stdin)?,
        _ => NetConf::parse(stdin)?,
    };
    *log = Log::open(
        &conf.log_file,
        format!(
            "{:?} net={} container={} ifname={}",
            env.command, conf.name, env.container_id, env.ifname
        ),
    );
    let outcome = match (&conf.mode, env.command) {
        (_, Command::Version) => unreachable!("answered above"),
        (Mode::Static, Command::Add) => add(env, &conf, log).map(Some),
        (Mode::Static, Command::Del) => del(env, &conf, log).map(|_| None),
        (Mode::Static, Command::Check) => check(env, &conf).map(|_| None),
        (Mode::Static, Command::Status) => status(&conf).map(|_| None),
        (Mode::Static, Command::Gc) => gc(&conf, stdin, log).map(|_| None),
        (Mode::Managed(m), Command::Add) => managed_cmd::add(env, &conf, m, log).map(Some),
        (Mode::Managed(m), Command::Del) => managed_cmd::del(env, m, log).map(|_| None),
        (Mode::Managed(m), Command::Check) => managed_cmd::check(env, &conf, m, log).map(|_| None),
        (Mode::Managed(m), Command::Status) => managed_cmd::status(m, log).map(|_| None),
        (Mode::Managed(_), Command::Gc) => managed_cmd::gc(log).map(|_| None),
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

/// ADD: make the attachment what the configuration says (created, or an
/// existing one repaired: [`Birthplace::ensure`]), record it, answer.
fn add(env: &Env, conf: &NetConf, log: &mut Log) -> Result<Value, CniError> {
    let req = crate::request(env);
    let plan = Plan::new(conf, &req)?;
    let state = StateDir::open(&conf.state_dir)?;
    let _locks = state.lock_for(&conf.name, &env.container_id, &env.ifname)?;
    let backend = backend(conf)?;
    let pod = open_container(&env.netns)?;
    let place =
        Birthplace::for_container(&Netns::current()?, &pod, conf.socket_namespace, &backend)?;
    let spec = plan.interface_spec(&place, KeyUse::Add)?;
    let a = ensure_recorded(&place, &spec, &plan, &backend, &state, log)?;
    Ok(crate::answer::added(&plan, &a))
}

/// DEL: remove what ADD made, from its record alone (or, without one, from
/// the names ADD derives). Needs no DNS, no key file, no namespace:
/// whatever is already gone is success.
fn del(env: &Env, conf: &NetConf, log: &mut Log) -> Result<(), CniError> {
    let state = StateDir::open(&conf.state_dir)?;
    let _locks = state.lock_for(&conf.name, &env.container_id, &env.ifname)?;
    let record = match state.load(&conf.name, &env.container_id, &env.ifname) {
        Some(r) => r.attachment,
        // Never recorded (never added, a crashed ADD, a corrupt record).
        None => {
            let kind = backend(conf)
                .map(|b| b.kind())
                .unwrap_or(BackendKind::Userspace);
            Plan::for_teardown(conf, &crate::request(env))?.attachment_record(kind, None)
        }
    };
    record.detach_in(
        &Netns::current()?,
        Some(Path::new(&env.netns)),
        &userspace(conf),
    )?;
    state.remove(&conf.name, &env.container_id, &env.ifname)?;
    log.line(&format!(
        "removed {} (birth {})",
        record.interface, record.birth_name
    ));
    Ok(())
}

/// CHECK: the attachment matches the configuration; every difference is
/// named ([`Birthplace::verify`]).
fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    check_version(conf)?;
    let state = StateDir::open(&conf.state_dir)?;
    let _locks = state.lock_for(&conf.name, &env.container_id, &env.ifname)?;
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
    let req = crate::request(env);
    let plan = Plan::recorded(conf, &req, &record.attachment);
    let backend = record.attachment.backend(&userspace(conf));
    let pod = open_container(&env.netns)?;
    let place = Birthplace::for_container(
        &Netns::current()?,
        &pod,
        record.attachment.socket_namespace,
        &backend,
    )?;
    let spec = plan.interface_spec(&place, KeyUse::Check)?;
    let mut diffs: Vec<String> = place.verify(&spec)?.iter().map(|d| d.to_string()).collect();
    if conf.private_key.is_none() && diffs.is_empty() {
        // A generated key: compare with the public key ADD recorded.
        let found = place.find(&plan.name, &plan.birth)?;
        if found
            .and_then(|a| a.public_key)
            .map(|k| k.to_base64().to_string())
            != Some(record.public_key.clone())
        {
            diffs.push("the interface's key is not the one ADD generated".into());
        }
    }
    if let (Some(prev), ChainedResult::Append) = (&conf.prev_result, conf.chained_result) {
        let listed = prev["interfaces"].as_array().is_some_and(|ifs| {
            ifs.iter()
                .any(|i| i["name"] == plan.name.as_str() && i["sandbox"] == env.netns.as_str())
        });
        if !listed {
            diffs.push(format!(
                "prevResult does not list interface {} in {}",
                plan.name, env.netns
            ));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            Code::CheckMismatch,
            "the attachment differs from its configuration",
            diffs.join("; "),
        ))
    }
}

/// CHECK exists from cniVersion 0.4.0 on.
pub(crate) fn check_version(conf: &NetConf) -> Result<(), CniError> {
    if conf.cni_version < Version::V0_4_0 {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            "CHECK needs cniVersion 0.4.0 or later",
            format!("cniVersion is {}", conf.cni_version),
        ));
    }
    Ok(())
}

/// STATUS: ready when a WireGuard backend is available (code 50 when
/// there is none; a failure to find out, netlink refusing the question,
/// is code 5).
fn status(conf: &NetConf) -> Result<(), CniError> {
    backend(conf)?;
    Ok(())
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
    let node = Netns::current()?;
    let fallback = userspace(conf);
    let mut failed = Vec::new();
    for r in state.list(&conf.name) {
        if valid.contains(&(r.container_id.clone(), r.ifname.clone())) {
            continue;
        }
        // Every stale attachment is tried; one failing does not keep the
        // others alive.
        match r.attachment.detach(&node, &fallback) {
            Ok(_) => {
                state.remove(&r.network, &r.container_id, &r.ifname)?;
                log.line(&format!(
                    "gc removed container={} ifname={} ({})",
                    r.container_id, r.ifname, r.attachment.interface
                ));
            }
            Err(e) => failed.push(format!("container {} {}: {e}", r.container_id, r.ifname)),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            Code::Io,
            "garbage collection left attachments behind",
            failed.join("; "),
        ))
    }
}
