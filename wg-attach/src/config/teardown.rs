//! The configuration as the teardown verbs read it (DEL, GC): they need
//! the names and the record, not what the interface is made of. A
//! configuration whose addresses, keys, peers or routes are wrong (a peer
//! carrying the interface's own public key, an address without a prefix
//! length) is refused at ADD and CHECK, but must not keep a runtime from
//! removing a pod's sandbox until someone fixes the file: DEL and GC
//! validate only the fields they use.

use serde_json::{Map, Value};

use super::fields::wipe_secrets;
use super::managed::{static_only, INTERFACE_FIELDS};
use super::NetConf;
use crate::error::{Error, Kind};

/// Never read by DEL or GC, so dropped unread (their values come back as
/// defaults): what the interface is made of ([`INTERFACE_FIELDS`]), and
/// the result's `dns` and `chainedResult`. The names, the mode and the
/// agent's fields, `stateDir`, `logFile`, `prevResult` (whose presence
/// says which name a chained attachment has), and in static mode the
/// placement (`interfaceName`, `socketNamespace`, `backend` and
/// `userspaceImplementation`: the teardown of an attachment ADD never
/// recorded) stay, and are validated as at ADD.
const RESULT_FIELDS: [&str; 2] = ["dns", "chainedResult"];

/// Whether the object asks for managed mode (`"managed": true`, or a
/// `network` without `"managed": false`); the mode's own parser still
/// validates both.
fn asks_managed(o: &Map<String, Value>) -> bool {
    match o.get("managed") {
        Some(Value::Bool(m)) => *m,
        _ => o.get("network").is_some_and(|n| !n.is_null()),
    }
}

impl NetConf {
    /// Parse a configuration for DEL or GC: [`NetConf::parse`] of the
    /// fields they read. The fields that say what the interface is made of
    /// (addresses, keys, peers, routes, MTU, port, mark, table, `dns`,
    /// `chainedResult`; in managed mode every static field: the agent owns
    /// the interface) are dropped before
    /// validation, so their values cannot fail a teardown; in the result
    /// they are defaults. Secrets are wiped as by [`NetConf::parse`].
    pub fn parse_teardown(stdin: &[u8]) -> Result<NetConf, Error> {
        let decode = |details: String| {
            Error::new(
                Kind::Decode,
                "failed to decode the network configuration",
                details,
            )
        };
        let mut v: Value = serde_json::from_slice(stdin).map_err(|e| decode(e.to_string()))?;
        let result = match v.as_object_mut() {
            None => Err(decode("not a JSON object".into())),
            Some(o) => {
                let managed = asks_managed(o);
                let unread = INTERFACE_FIELDS
                    .into_iter()
                    .chain(RESULT_FIELDS)
                    .chain(static_only().filter(|_| managed));
                for key in unread {
                    if let Some(mut gone) = o.remove(key) {
                        if let Value::String(s) = &mut gone {
                            zeroize::Zeroize::zeroize(s);
                        }
                        wipe_secrets(&mut gone);
                    }
                }
                Self::from_object(o)
            }
        };
        wipe_secrets(&mut v);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    const KEY: &str = "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E=";
    /// KEY's public key.
    fn own_public() -> String {
        wg_netns::PrivateKey::from_base64(KEY)
            .unwrap()
            .public_key()
            .to_base64()
            .to_string()
    }

    /// A peer with the interface's own key: ADD refuses it (code 7), the
    /// teardown reads past it, keeping what it uses.
    #[test]
    fn a_teardown_reads_past_what_it_does_not_use() {
        let own = own_public();
        let json = format!(
            r#"{{"cniVersion":"1.0.0","name":"wgnet","type":"wg-cni","privateKey":"{KEY}",
                "address":"10.1.0.2/24","mtu":9,"table":0,"routes":"nope","fwmark":-1,
                "peers":[{{"publicKey":"{own}","allowedIPs":["10.1.0.0/24"]}}],
                "stateDir":"/tmp/wgcni-td","interfaceName":"wg1","backend":"userspace",
                "socketNamespace":"container","userspaceImplementation":"/usr/bin/wireguard-go"}}"#
        );
        let e = NetConf::parse(json.as_bytes()).expect_err("ADD refuses it");
        assert_eq!(e.kind, Kind::Config);
        let c = NetConf::parse_teardown(json.as_bytes()).expect("DEL and GC do not");
        assert_eq!(c.name, "wgnet");
        assert_eq!(c.state_dir, std::path::Path::new("/tmp/wgcni-td"));
        assert_eq!(c.interface_name.as_str(), "wg1");
        assert_eq!(c.socket_namespace, wg_netns::SocketNamespace::Container);
        assert_eq!(c.backend.to_string(), "userspace");
        assert!(c.userspace_implementation.is_some());
        assert!(c.peers.is_empty() && c.addresses.is_empty() && c.private_key.is_none());
    }

    /// What the teardown uses is still validated, with the same codes.
    #[test]
    fn a_teardown_still_validates_what_it_uses() {
        for (json, code, field) in [
            (
                r#"{"cniVersion":"1.0.0","name":"a/b"}"#,
                Kind::Config,
                "name",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","stateDir":"rel"}"#,
                Kind::Config,
                "stateDir",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","interfaceName":"a-name-far-too-long"}"#,
                Kind::Config,
                "interfaceName",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","backend":"magic"}"#,
                Kind::Config,
                "backend",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","socketNamespace":"pod"}"#,
                Kind::Config,
                "socketNamespace",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","agentSocket":"/x"}"#,
                Kind::Config,
                "agentSocket",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","network":"p","agentSocket":"rel"}"#,
                Kind::Config,
                "agentSocket",
            ),
            (
                r#"{"cniVersion":"9.9.9","name":"n"}"#,
                Kind::Version,
                "cniVersion",
            ),
            (r#"["not an object"]"#, Kind::Decode, "JSON object"),
        ] {
            let e = NetConf::parse_teardown(json.as_bytes()).expect_err(json);
            assert_eq!(e.kind, code, "{json}: {e:?}");
            assert!(
                e.details.contains(field) || e.msg.contains(field),
                "{json}: {e:?}"
            );
        }
    }

    /// In managed mode every static field is the agent's: a stray one
    /// (refused at ADD) does not fail DEL either.
    #[test]
    fn a_managed_teardown_ignores_static_fields() {
        let json = br#"{"cniVersion":"1.0.0","name":"k8s","network":"pods","address":"10.0.0.1/24",
                        "interfaceName":"wg9","backend":"kernel","agentTimeout":"5s"}"#;
        assert_eq!(
            NetConf::parse(json).expect_err("ADD refuses it").kind,
            Kind::Config
        );
        let c = NetConf::parse_teardown(json).expect("DEL does not");
        match c.mode {
            Mode::Managed(m) => {
                assert_eq!(m.network.as_deref(), Some("pods"));
                assert_eq!(m.timeout, std::time::Duration::from_secs(5));
            }
            Mode::Static => panic!("managed mode expected"),
        }
    }
}
