//! The verbs: `create`, `setup`, `teardown`, `info`. Each is a straight
//! line like wg-cni's: settings (pure), lock, open the place, one wg-netns
//! call, record, answer. The device, names-to-spec and record logic is the
//! attachment core's (wg-attach: `Request`, `Plan`, `StateDir`,
//! `ensure_recorded`), the attachment wg-netns's.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use wg_attach::attach::{backend, ensure_recorded, userspace};
use wg_attach::log::Log;
use wg_attach::plan::{KeyUse, Plan};
use wg_attach::state::StateDir;
use wg_attach::Request;
use wg_netns::{BackendKind, Birthplace, IfName, Netns};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::options::{has_address_option, settings, static_addresses, Settings};
use crate::types::{
    Info, NetAddress, NetInterface, Network, NetworkPluginExec, StatusBlock, API_VERSION,
};

/// The driver name netavark looks up in its plugin directories.
pub const DRIVER: &str = "wg-netavark";

/// One invocation: `argv[1..]` and stdin. `Ok(Some(json))` goes to stdout,
/// `Ok(None)` prints nothing (teardown).
pub fn run(
    args: &[String],
    stdin: impl FnOnce() -> Result<Zeroizing<Vec<u8>>, Error>,
) -> Result<Option<Value>, Error> {
    let json = |v: Result<Value, serde_json::Error>| v.map_err(|e| Error::Input(e.to_string()));
    match args {
        [] => json(serde_json::to_value(info())).map(Some),
        [cmd] if cmd == "info" => json(serde_json::to_value(info())).map(Some),
        [cmd] if cmd == "create" => {
            let net: Network = decode(&stdin()?, "network")?;
            json(serde_json::to_value(create(net)?)).map(Some)
        }
        [cmd, netns] if cmd == "setup" => {
            let exec: NetworkPluginExec = decode(&stdin()?, "setup")?;
            json(serde_json::to_value(setup(netns, &exec)?)).map(Some)
        }
        [cmd, netns] if cmd == "teardown" => {
            let exec: NetworkPluginExec = decode(&stdin()?, "teardown")?;
            teardown(netns, &exec).map(|_| None)
        }
        [cmd] if cmd == "setup" || cmd == "teardown" => Err(Error::Usage(format!(
            "{cmd} needs the container's network namespace path"
        ))),
        _ => Err(Error::Usage(format!(
            "unknown arguments {args:?}; expected create, setup NETNS, teardown NETNS or info"
        ))),
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Decode { what, source })
}

/// `info`: the plugin's version and the API version.
pub fn info() -> Info {
    Info {
        version: env!("CARGO_PKG_VERSION").to_string(),
        api_version: API_VERSION.to_string(),
        description: "WireGuard interface per container via wg-netns (UDP socket in netavark's \
                      namespace)"
            .to_string(),
    }
}

/// `create`: validate the options (no I/O) and choose the IPAM: podman's
/// `host-local` allocation from the network's subnets when it has some,
/// else `none` (addresses from the `address` option). Name, id and driver
/// are never changed.
pub fn create(mut net: Network) -> Result<Network, Error> {
    if net.driver != DRIVER {
        return Err(Error::Input(format!(
            "network {}: driver is {:?}, this plugin is {DRIVER:?}",
            net.name, net.driver
        )));
    }
    let has_subnets = net.subnets.as_ref().is_some_and(|s| !s.is_empty());
    if has_subnets && has_address_option(&net) {
        return Err(Error::Option {
            option: "address".into(),
            reason: "give subnets (podman allocates each container an address) or the address \
                     option (one fixed address: a network for one container), not both"
                .into(),
        });
    }
    // Validates every option, and the subnets.
    settings(&net, None)?;
    // Every subnet is a CIDR prefix.
    static_addresses(&net, &[])?;
    let ipam = net.ipam_options.get_or_insert_with(BTreeMap::new);
    match ipam.get("driver").map(String::as_str) {
        None | Some("") => {
            let driver = if has_subnets { "host-local" } else { "none" };
            ipam.insert("driver".into(), driver.into());
        }
        Some("host-local") | Some("none") => {}
        Some(other) => {
            return Err(Error::Input(format!(
                "ipam driver {other:?} is not supported (host-local or none)"
            )))
        }
    }
    Ok(net)
}

/// What identifies one attachment, checked: it names files and links.
struct Ids<'a> {
    container_id: &'a str,
    ifname: IfName,
}

fn ids(exec: &NetworkPluginExec) -> Result<Ids<'_>, Error> {
    let id = exec.container_id.as_str();
    if id.is_empty()
        || id.len() > 256
        || id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(Error::Input(format!(
            "container_id {id:?} must be 1-256 characters of A-Z, a-z, 0-9, '_', '.', '-'"
        )));
    }
    let ifname = IfName::new(exec.network_options.interface_name.as_str()).map_err(|e| {
        Error::Input(format!(
            "network_options.interface_name {:?}: {e}",
            exec.network_options.interface_name
        ))
    })?;
    Ok(Ids {
        container_id: id,
        ifname,
    })
}

/// The core's request for one attachment: netavark's container and
/// interface, this network's birth names.
fn request(s: &Settings, ids: &Ids, netns: &str) -> Request {
    Request::new(
        ids.container_id,
        netns,
        ids.ifname.as_str(),
        s.birth_names(),
    )
}

/// `setup NETNS`: make the container's WireGuard interface what the
/// options say (created, or repaired: `Birthplace::ensure`), born in the
/// namespace netavark runs in unless `socket_namespace` is `container`;
/// record it; answer with the interface and its addresses. A failure
/// leaves nothing new behind: wg-netns rolls back a failed attach, and a
/// record that did not exist before is not left either.
pub fn setup(netns: &str, exec: &NetworkPluginExec) -> Result<StatusBlock, Error> {
    let ids = ids(exec)?;
    let s = settings(&exec.network, Some(&exec.network_options))?;
    let conf = &s.conf;
    let req = request(&s, &ids, netns);
    let plan = Plan::new(conf, &req).map_err(Error::step("naming the interface"))?;
    let mut log = Log::open(
        &conf.log_file,
        format!(
            "setup net={} container={} ifname={}",
            conf.name, ids.container_id, ids.ifname
        ),
    );
    let state = StateDir::open(&conf.state_dir).map_err(Error::step("state directory"))?;
    let key = (&conf.name, ids.container_id, ids.ifname.as_str());
    let _locks = state
        .lock_for(key.0, key.1, key.2)
        .map_err(Error::step("state locks"))?;
    let had_record = state.load(key.0, key.1, key.2).is_some();
    let outcome = attach(&s, &plan, &state, netns, &mut log);
    match &outcome {
        Ok(_) => log.line("ok"),
        Err(e) => {
            log.line(&format!("error: {e}"));
            if !had_record {
                // Nothing was made (or it was rolled back): no lock file either.
                let _ = state.remove(key.0, key.1, key.2);
            }
        }
    }
    outcome
}

fn attach(
    s: &Settings,
    plan: &Plan,
    state: &StateDir,
    netns: &str,
    log: &mut Log,
) -> Result<StatusBlock, Error> {
    let conf = &s.conf;
    let backend = backend(conf).map_err(Error::step("choosing the WireGuard backend"))?;
    let pod = Netns::from_path(netns).map_err(Error::netns(format!(
        "opening the container namespace {netns}"
    )))?;
    let node = Netns::current().map_err(Error::netns("opening netavark's namespace"))?;
    let place = Birthplace::for_container(&node, &pod, conf.socket_namespace, &backend)
        .map_err(Error::netns("opening the birthplace"))?;
    let spec = plan
        .interface_spec(&place, KeyUse::Add)
        .map_err(Error::step("preparing the interface"))?;
    let a = ensure_recorded(&place, &spec, plan, &backend, state, log)
        .map_err(Error::step("attaching the interface"))?;
    Ok(status_block(s, &a.name))
}

/// The status block of an attachment: the interface, its addresses (no
/// MAC, no gateway: WireGuard is layer 3, point to point), DNS from
/// `config.dns`.
pub fn status_block(s: &Settings, name: &IfName) -> StatusBlock {
    StatusBlock {
        dns_search_domains: s.dns_search.clone(),
        dns_server_ips: s.dns_servers.clone(),
        interfaces: BTreeMap::from([(
            name.to_string(),
            NetInterface {
                mac_address: String::new(),
                subnets: s
                    .conf
                    .addresses
                    .iter()
                    .map(|a| NetAddress {
                        ipnet: a.to_string(),
                        gateway: None,
                    })
                    .collect(),
            },
        )]),
    }
}

/// `teardown NETNS`: remove what setup made, from its record (or, without
/// one, from the names setup derives). Needs no key file, no DNS and no
/// namespace: whatever is already gone is success.
pub fn teardown(netns: &str, exec: &NetworkPluginExec) -> Result<(), Error> {
    let ids = ids(exec)?;
    // Addresses do not matter here: a static IP outside the subnets must
    // not keep a teardown from working.
    let mut without_ips = exec.network_options.clone();
    without_ips.static_ips = None;
    let s = settings(&exec.network, Some(&without_ips))?;
    let conf = &s.conf;
    let req = request(&s, &ids, netns);
    let plan = Plan::for_teardown(conf, &req).map_err(Error::step("naming the interface"))?;
    let mut log = Log::open(
        &conf.log_file,
        format!(
            "teardown net={} container={} ifname={}",
            conf.name, ids.container_id, ids.ifname
        ),
    );
    let state = StateDir::open(&conf.state_dir).map_err(Error::step("state directory"))?;
    let key = (&conf.name, ids.container_id, ids.ifname.as_str());
    let _locks = state
        .lock_for(key.0, key.1, key.2)
        .map_err(Error::step("state locks"))?;
    let record = match state.load(key.0, key.1, key.2) {
        Some(r) => r.attachment,
        None => {
            let kind = backend(conf)
                .map(|b| b.kind())
                .unwrap_or(BackendKind::Userspace);
            plan.attachment_record(kind, None)
        }
    };
    let node = Netns::current().map_err(Error::netns("opening netavark's namespace"))?;
    let outcome = record
        .detach_in(&node, Some(Path::new(netns)), &userspace(conf))
        .map_err(Error::netns(format!(
            "removing {} (birth {})",
            record.interface, record.birth_name
        )))
        .and_then(|removed| {
            state
                .remove(key.0, key.1, key.2)
                .map_err(Error::step("removing the attachment record"))?;
            Ok(removed)
        });
    match &outcome {
        Ok(removed) => log.line(&format!(
            "{} {} (birth {})",
            if *removed {
                "removed"
            } else {
                "nothing left of"
            },
            record.interface,
            record.birth_name
        )),
        Err(e) => log.line(&format!("error: {e}")),
    }
    outcome.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net(v: Value) -> Network {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn create_chooses_ipam_and_keeps_everything_else() {
        let n = create(net(json!({"name": "w", "id": "i", "driver": "wg-netavark",
            "dns_enabled": false, "internal": false, "ipv6_enabled": false,
            "subnets": [{"subnet": "10.77.0.0/24", "gateway": "10.77.0.1"}],
            "labels": {"a": "b"}, "options": {"listen_port": "51820"}})))
        .unwrap();
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["ipam_options"], json!({"driver": "host-local"}));
        assert_eq!(v["labels"], json!({"a": "b"}));
        assert_eq!(v["subnets"][0]["gateway"], json!("10.77.0.1"));
        assert_eq!(
            (v["name"].clone(), v["id"].clone()),
            (json!("w"), json!("i"))
        );
        let n = create(net(json!({"name": "w", "id": "i", "driver": "wg-netavark",
            "options": {"address": "10.77.0.2/24"}})))
        .unwrap();
        assert_eq!(n.ipam_options.unwrap()["driver"], "none");
    }

    #[test]
    fn create_refuses_what_setup_would() {
        let e = |v: Value| create(net(v)).unwrap_err().to_string();
        assert!(e(json!({"name": "w", "id": "i", "driver": "bridge"})).contains("driver"));
        assert!(e(json!({"name": "w", "id": "i", "driver": "wg-netavark",
            "subnets": [{"subnet": "10.77.0.0/24"}], "options": {"address": "10.77.0.2/24"}}))
        .contains("not both"));
        assert!(e(json!({"name": "w", "id": "i", "driver": "wg-netavark",
            "options": {"mtu": "huge"}}))
        .starts_with("option mtu: mtu:"));
        assert!(e(json!({"name": "w", "id": "i", "driver": "wg-netavark",
            "subnets": [{"subnet": "nope"}]}))
        .contains("not a CIDR prefix"));
        assert!(e(json!({"name": "w", "id": "i", "driver": "wg-netavark",
            "ipam_options": {"driver": "dhcp"}}))
        .contains("ipam driver \"dhcp\""));
    }

    #[test]
    fn arguments() {
        let no_stdin = || -> Result<Zeroizing<Vec<u8>>, Error> { panic!("stdin is not read") };
        let v = run(&[], no_stdin).unwrap().unwrap();
        assert_eq!(v["api_version"], json!("1.0.0"));
        assert_eq!(run(&["info".into()], no_stdin).unwrap().unwrap(), v);
        assert!(run(&["setup".into()], no_stdin)
            .unwrap_err()
            .to_string()
            .contains("namespace path"));
        assert!(run(&["frobnicate".into()], no_stdin)
            .unwrap_err()
            .to_string()
            .starts_with("usage:"));
        let bad = || Ok(Zeroizing::new(b"{\"container_id\": 1}".to_vec()));
        assert!(run(&["teardown".into(), "/x".into()], bad)
            .unwrap_err()
            .to_string()
            .starts_with("decoding the teardown JSON on stdin"));
    }

    #[test]
    fn container_ids_that_would_escape_the_state_directory_are_refused() {
        for id in ["", "../x", "a/b", ".hidden"] {
            let exec: NetworkPluginExec = serde_json::from_value(json!({
                "container_id": id, "container_name": "n",
                "network": {"name": "w", "id": "i", "driver": "wg-netavark"},
                "network_options": {"interface_name": "wg0"}}))
            .unwrap();
            assert!(ids(&exec).is_err(), "{id:?}");
        }
    }
}
