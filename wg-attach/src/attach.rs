//! Make and record an attachment: the steps every adapter with a state
//! directory takes (wg-cni's ADD, wg-netavark's setup), each a wg-netns
//! call; what they answer the runtime is theirs.

use std::time::{SystemTime, UNIX_EPOCH};

use wg_netns::{Attachment, Backend, Birthplace, InterfaceSpec, Netns, Userspace};

use crate::config::NetConf;
use crate::error::{Error, Kind, Result};
use crate::log::Log;
use crate::plan::Plan;
use crate::state::StateDir;

/// The userspace implementation the configuration names, else the one
/// `WG_USERSPACE_IMPLEMENTATION` names, else wireguard-go.
pub fn userspace(conf: &NetConf) -> Userspace {
    conf.userspace_implementation
        .clone()
        .map(Userspace::new)
        .unwrap_or_else(Userspace::from_env)
}

/// The backend the configuration asks for ([`Kind::Unavailable`] when there
/// is none; a failure to find out, netlink refusing the question, is
/// [`Kind::Io`]).
pub fn backend(conf: &NetConf) -> Result<Backend> {
    Backend::choose(conf.backend, userspace(conf)).map_err(|e| match e {
        wg_netns::Error::NoBackend(why) => Error::new(
            Kind::Unavailable,
            "no WireGuard backend is available",
            format!("{why} (backend \"{}\" was configured)", conf.backend),
        ),
        e => e.into(),
    })
}

/// The container's network namespace ([`Kind::ContainerGone`] when it
/// cannot be opened).
pub fn open_container(path: &str) -> Result<Netns> {
    Netns::from_path(path).map_err(|e| {
        Error::new(
            Kind::ContainerGone,
            "cannot open the container's network namespace",
            e.to_string(),
        )
    })
}

/// Seconds since the epoch, for records.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Make the attachment `spec` describes at `place` ([`Birthplace::ensure`]:
/// created, or an existing one repaired), log what that took, and save its
/// record; when the record cannot be saved, remove what was made, so
/// nothing exists without a record.
pub fn ensure_recorded(
    place: &Birthplace,
    spec: &InterfaceSpec,
    plan: &Plan<'_>,
    backend: &Backend,
    state: &StateDir,
    log: &mut Log,
) -> Result<Attachment> {
    let done = place.ensure(spec)?;
    let what = if done.created {
        "attached"
    } else if done.changed() {
        "repaired"
    } else {
        "unchanged"
    };
    let a = done.attachment;
    log.line(&format!(
        "{what} {} (birth {}, {}, mtu {}) public key {}",
        a.name,
        a.birth_name,
        a.kind,
        a.mtu,
        a.public_key.map(|k| k.to_base64()).unwrap_or_default()
    ));
    if let Err(e) = state.save(&plan.record(&a, backend, now())) {
        let _ = place.detach(&a.name, &a.birth_name);
        return Err(e);
    }
    Ok(a)
}
