//! Tests of the configuration parser.

use std::time::Duration;

use super::*;
use serde_json::json;
use wg_netns::Endpoint;

const K1: &str = "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E=";
const P1: &str = "jGGhjGIEbR0Noo8MgjAVh+m5pq4GxD9CZDAl/zsfZF0=";
const P2: &str = "Jqbg1u7/1fK5VU2hadmxLzMmrwCPFe7fJEIzEnLWrl0=";

fn parse(v: Value) -> Result<NetConf, CniError> {
    NetConf::parse(v.to_string().as_bytes())
}

#[test]
fn the_original_format_verbatim() {
    let c = parse(json!({"cniVersion": "0.4.0", "name": "wg", "type": "wg-cni", "address": "10.13.13.210/24",
        "privateKey": K1,
        "peers": [{"endpoint": "1.2.3.4:51820", "publicKey": P2, "allowedIPs": ["10.13.13.0/24"], "persistentKeepalive": "25s"}]}))
    .unwrap();
    assert_eq!(
        c.addresses,
        vec!["10.13.13.210/24".parse::<IpNetwork>().unwrap()]
    );
    assert!(matches!(c.private_key, Some(KeySource::Inline(_))));
    assert_eq!(
        c.peers[0].persistent_keepalive,
        Some(Duration::from_secs(25))
    );
    assert_eq!(
        c.peers[0].endpoint,
        Some(Endpoint::Addr("1.2.3.4:51820".parse().unwrap()))
    );
    assert_eq!(c.interface_name.as_str(), "wg0");
    assert_eq!(c.socket_namespace, SocketNamespace::Host);
    assert!(c.routes_from_allowed_ips);
    assert_eq!(c.mode, Mode::Static);
}

#[test]
fn everything_beyond_it() {
    let c = parse(json!({"cniVersion": "1.1.0", "name": "wg", "type": "wg-cni",
        "addresses": ["10.13.13.2/24", "fd13::2/64"], "listenPort": 51820, "fwmark": "0x51", "mtu": "auto",
        "table": 100, "socketNamespace": "container", "interfaceName": "wgx", "backend": "userspace",
        "routes": [{"dst": "192.168.0.0/16"}, {"dst": "::/0", "gw": "fd13::1"}], "routesFromAllowedIPs": false,
        "peers": [{"publicKey": P1, "presharedKey": K1, "endpoint": "[fd00::1]:51820", "allowedIPs": ["0.0.0.0/0", "::/0"], "persistentKeepalive": 25}],
        "dns": {"nameservers": ["10.13.13.1"]}, "unknownKey": {"passes": true}}))
    .unwrap();
    assert_eq!(c.addresses.len(), 2);
    assert_eq!(c.private_key, None);
    assert_eq!(
        (c.listen_port, c.fwmark, c.mtu, c.table),
        (Some(51820), Some(0x51), Mtu::Auto, Some(100))
    );
    assert_eq!(c.socket_namespace, SocketNamespace::Container);
    assert_eq!(
        c.peers[0].persistent_keepalive,
        Some(Duration::from_secs(25))
    );
    assert!(c.peers[0].preshared_key.is_some());
    assert_eq!(c.routes[1].gw, Some("fd13::1".parse().unwrap()));
    assert!(!c.routes_from_allowed_ips);
}

#[test]
fn errors_name_the_field_and_never_the_secret() {
    let bad_key = "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43F=";
    let cases = [
        (
            json!({"cniVersion": "9.9.9", "name": "n"}),
            Code::IncompatibleVersion,
            "cniVersion",
        ),
        (json!({"cniVersion": "1.0.0"}), Code::InvalidConfig, "name"),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "address": "10.0.0.1"}),
            Code::InvalidConfig,
            "address",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "privateKey": bad_key}),
            Code::InvalidConfig,
            "privateKey",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": "nope"}]}),
            Code::InvalidConfig,
            "peers[0].publicKey",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1, "presharedKey": bad_key}]}),
            Code::InvalidConfig,
            "peers[0].presharedKey",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1, "endpoint": "1.2.3.4"}]}),
            Code::InvalidConfig,
            "peers[0].endpoint",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1, "allowedIPs": ["x"]}]}),
            Code::InvalidConfig,
            "peers[0].allowedIPs[0]",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1, "persistentKeepalive": "1.5s"}]}),
            Code::InvalidConfig,
            "peers[0].persistentKeepalive",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1}, {"publicKey": P1}]}),
            Code::InvalidConfig,
            "peers[1].publicKey",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "listenPort": 70000}),
            Code::InvalidConfig,
            "listenPort",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "mtu": 100}),
            Code::InvalidConfig,
            "mtu",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "socketNamespace": "pod"}),
            Code::InvalidConfig,
            "socketNamespace",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "interfaceName": "waytoolonginterface"}),
            Code::InvalidConfig,
            "interfaceName",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "stateDir": "relative"}),
            Code::InvalidConfig,
            "stateDir",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "privateKey": K1, "privateKeyFile": "/k"}),
            Code::InvalidConfig,
            "privateKey",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "table": 0}),
            Code::InvalidConfig,
            "table",
        ),
    ];
    for (cfg, code, field) in cases {
        let e = parse(cfg.clone()).unwrap_err();
        assert_eq!(e.code, code, "{cfg}: {e}");
        assert!(
            e.details.contains(field),
            "{cfg}: {e} does not name {field}"
        );
        assert!(
            !e.to_string().contains(bad_key) && !e.to_string().contains(K1),
            "{e} leaks a key"
        );
    }
    assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, Code::Decode);
    assert_eq!(NetConf::parse(b"[]").unwrap_err().code, Code::Decode);
}

#[test]
fn debug_of_the_parsed_configuration_shows_no_secret() {
    let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "privateKey": K1,
        "peers": [{"publicKey": P2, "presharedKey": K1}]}))
    .unwrap();
    let printed = format!("{c:?}");
    assert!(!printed.contains(K1), "{printed}");
    assert!(printed.contains("redacted"));
}

#[test]
fn go_durations() {
    for (s, secs) in [
        ("25s", 25),
        ("1m", 60),
        ("1m30s", 90),
        ("0", 0),
        ("2h", 7200),
        ("1500ms", 1),
    ] {
        let d = parse_go_duration(s).unwrap();
        assert_eq!(d.as_secs(), secs, "{s}");
    }
    for s in ["", "s", "25", "25x", "-5s", "1.2.3s"] {
        assert!(parse_go_duration(s).is_none(), "{s}");
    }
    assert!(parse_keepalive(&json!("1500ms")).is_err());
    assert_eq!(
        parse_keepalive(&json!(25)).unwrap(),
        Duration::from_secs(25)
    );
    assert!(parse_keepalive(&json!(70000)).is_err());
}

#[test]
fn key_files_are_checked() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("wgcni-keyfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("key");
    std::fs::write(&f, format!("{K1}\n")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "privateKeyFile": f})).unwrap();
    let e = c.load_private_key().unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(e.details.contains("privateKeyFile") && e.details.contains("644"));
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(c.load_private_key().unwrap().public_key().to_base64(), P1);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "privateKeyFile": f, "allowInsecureKeyFile": true})).unwrap();
    assert!(c.load_private_key().is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Parsing does no I/O: a host name that cannot resolve and key files that
/// do not exist parse; only the verbs that configure a device read them.
#[test]
fn parsing_reads_no_file_and_resolves_no_name() {
    let c = parse(json!({"cniVersion": "1.1.0", "name": "n", "privateKeyFile": "/nonexistent/wg/key",
        "peers": [{"publicKey": P2, "endpoint": "gone.invalid:51820", "presharedKeyFile": "/nonexistent/wg/psk"}]}))
    .unwrap();
    assert_eq!(
        c.peers[0].endpoint,
        Some(Endpoint::Host {
            host: "gone.invalid".into(),
            port: 51820
        })
    );
    assert_eq!(
        c.peers[0].preshared_key,
        Some(KeySource::File("/nonexistent/wg/psk".into()))
    );
    // Reading happens on demand, and names the field.
    let e = c.load_private_key().unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(e.details.contains("privateKeyFile"), "{e}");
    let e = crate::plan::resolve_peers(&c).unwrap_err();
    assert!(e.details.contains("peers[0].presharedKeyFile"), "{e}");
    // Relative key paths are refused at parse time (they would depend on
    // the runtime's working directory).
    assert!(parse(json!({"cniVersion": "1.1.0", "name": "n",
        "peers": [{"publicKey": P2, "presharedKeyFile": "psk"}]}))
    .is_err());
}

/// Managed mode: `network` or `managed` selects it, the agent fields have
/// defaults, and nothing else changes for a static configuration.
#[test]
fn managed_mode_and_its_defaults() {
    let c =
        parse(json!({"cniVersion": "1.0.0", "name": "k8s", "type": "wg-cni", "network": "pods"}))
            .unwrap();
    assert_eq!(
        c.mode,
        Mode::Managed(ManagedConf {
            network: Some("pods".into()),
            socket: crate::managed::DEFAULT_SOCKET.into(),
            hint_dir: crate::managed::DEFAULT_HINT_DIR.into(),
            timeout: Duration::from_secs(60),
        })
    );
    let c = parse(
        json!({"cniVersion": "1.1.0", "name": "k8s", "type": "wg-cni", "managed": true,
        "agentSocket": "/tmp/a.sock", "agentHintDir": "/tmp/hints", "agentTimeout": "1m30s",
        "logFile": "/tmp/l", "stateDir": "/tmp/s", "chainedResult": "passthrough",
        "prevResult": {"cniVersion": "1.1.0"}, "dns": {"nameservers": ["10.0.0.10"]}}),
    )
    .unwrap();
    let Mode::Managed(m) = &c.mode else {
        panic!("not managed: {:?}", c.mode)
    };
    assert_eq!(m.network, None, "the pod's annotation decides");
    assert_eq!(m.socket, PathBuf::from("/tmp/a.sock"));
    assert_eq!(m.hint_dir, PathBuf::from("/tmp/hints"));
    assert_eq!(m.timeout, Duration::from_secs(90));
    assert_eq!(c.chained_result, ChainedResult::Passthrough);
    let c = parse(json!({"cniVersion": "1.0.0", "name": "k", "network": "a", "agentTimeout": 5}))
        .unwrap();
    assert!(
        matches!(c.mode, Mode::Managed(ManagedConf { timeout, .. }) if timeout == Duration::from_secs(5))
    );
    // Static stays static, also with "managed": false.
    for extra in [json!({}), json!({"managed": false})] {
        let mut v = json!({"cniVersion": "1.0.0", "name": "n", "address": "10.0.0.2/24"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        assert_eq!(parse(v).unwrap().mode, Mode::Static);
    }
}

#[test]
fn managed_mode_refuses_what_the_resources_own() {
    let statics = [
        ("address", json!("10.0.0.2/24")),
        ("addresses", json!(["10.0.0.2/24"])),
        ("privateKey", json!(K1)),
        ("privateKeyFile", json!("/etc/wg/key")),
        ("allowInsecureKeyFile", json!(true)),
        ("listenPort", json!(51820)),
        ("fwmark", json!(1)),
        ("mtu", json!(1420)),
        ("peers", json!([])),
        ("routes", json!([{"dst": "10.1.0.0/16"}])),
        ("routesFromAllowedIPs", json!(false)),
        ("table", json!(100)),
        ("socketNamespace", json!("host")),
        ("interfaceName", json!("wg1")),
        ("backend", json!("kernel")),
        ("userspaceImplementation", json!("wireguard-go")),
    ];
    for (field, value) in statics {
        for mode in [json!({"network": "pods"}), json!({"managed": true})] {
            let mut v = json!({"cniVersion": "1.0.0", "name": "n"});
            v[field] = value.clone();
            v.as_object_mut()
                .unwrap()
                .extend(mode.as_object().unwrap().clone());
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.code, Code::InvalidConfig, "{v}");
            assert!(
                e.details.starts_with(&format!("{field}:")),
                "{v}: {e} does not name {field}"
            );
            assert!(!e.to_string().contains(K1), "{e} leaks a key");
        }
    }
    // Operational fields are the plugin's own, in both modes.
    assert!(parse(
        json!({"cniVersion": "1.0.0", "name": "n", "network": "pods",
        "stateDir": "/var/lib/x", "logFile": "/var/log/x", "chainedResult": "append"})
    )
    .is_ok());
}

#[test]
fn managed_fields_are_checked() {
    let bad = [
        (json!({"network": ""}), "network"),
        (json!({"network": "Pods"}), "network"),
        (json!({"network": "-pods"}), "network"),
        (json!({"network": "pods-"}), "network"),
        (json!({"network": "a.b"}), "network"),
        (json!({"network": "../etc"}), "network"),
        (json!({"network": "a".repeat(64)}), "network"),
        (json!({"network": 7}), "network"),
        (json!({"network": "pods", "managed": false}), "managed"),
        (json!({"managed": "yes"}), "managed"),
        (
            json!({"managed": true, "agentSocket": "run/a.sock"}),
            "agentSocket",
        ),
        (
            json!({"managed": true, "agentHintDir": "hints"}),
            "agentHintDir",
        ),
        (
            json!({"managed": true, "agentTimeout": "0s"}),
            "agentTimeout",
        ),
        (
            json!({"managed": true, "agentTimeout": "soon"}),
            "agentTimeout",
        ),
        (json!({"managed": true, "agentTimeout": -1}), "agentTimeout"),
        // An agent field without managed mode is a mistake, not a no-op.
        (json!({"agentSocket": "/run/a.sock"}), "agentSocket"),
        (
            json!({"managed": false, "agentTimeout": "5s"}),
            "agentTimeout",
        ),
    ];
    for (extra, field) in bad {
        let mut v = json!({"cniVersion": "1.0.0", "name": "n"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let e = parse(v.clone()).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig, "{v}");
        assert!(
            e.details.starts_with(&format!("{field}:")),
            "{v}: {e} does not name {field}"
        );
    }
    let longest = "a".repeat(63);
    for ok in ["pods", "a", "0", "wg-1", longest.as_str()] {
        assert!(
            parse(json!({"cniVersion": "1.0.0", "name": "n", "network": ok})).is_ok(),
            "{ok}"
        );
    }
}
