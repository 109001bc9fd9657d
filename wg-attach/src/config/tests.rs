//! Tests of the configuration parser.

use std::time::Duration;

use super::*;
use serde_json::json;
use wg_netns::Endpoint;

const K1: &str = "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E=";
const P1: &str = "jGGhjGIEbR0Noo8MgjAVh+m5pq4GxD9CZDAl/zsfZF0=";
const P2: &str = "Jqbg1u7/1fK5VU2hadmxLzMmrwCPFe7fJEIzEnLWrl0=";

fn parse(v: Value) -> Result<NetConf, Error> {
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
        (Some(51820), Some(0x51), Some(Mtu::Auto), Some(100))
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
            Kind::Version,
            "cniVersion",
        ),
        (json!({"cniVersion": "1.0.0"}), Kind::Config, "name"),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "address": "10.0.0.1"}),
            Kind::Config,
            "address",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "privateKey": bad_key}),
            Kind::Config,
            "privateKey",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": "nope"}]}),
            Kind::Config,
            "peers[0].publicKey",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1, "presharedKey": bad_key}]}),
            Kind::Config,
            "peers[0].presharedKey",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1, "endpoint": "1.2.3.4"}]}),
            Kind::Config,
            "peers[0].endpoint",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1, "allowedIPs": ["x"]}]}),
            Kind::Config,
            "peers[0].allowedIPs[0]",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1, "persistentKeepalive": "1.5s"}]}),
            Kind::Config,
            "peers[0].persistentKeepalive",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "peers": [{"publicKey": P1}, {"publicKey": P1}]}),
            Kind::Config,
            "peers[1].publicKey",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "listenPort": 70000}),
            Kind::Config,
            "listenPort",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "mtu": 100}),
            Kind::Config,
            "mtu",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "socketNamespace": "pod"}),
            Kind::Config,
            "socketNamespace",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "interfaceName": "waytoolonginterface"}),
            Kind::Config,
            "interfaceName",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "stateDir": "relative"}),
            Kind::Config,
            "stateDir",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "privateKey": K1, "privateKeyFile": "/k"}),
            Kind::Config,
            "privateKey",
        ),
        (
            json!({"cniVersion": "1.0.0", "name": "n", "table": 0}),
            Kind::Config,
            "table",
        ),
    ];
    for (cfg, code, field) in cases {
        let e = parse(cfg.clone()).unwrap_err();
        assert_eq!(e.kind, code, "{cfg}: {e}");
        assert!(
            e.details.contains(field),
            "{cfg}: {e} does not name {field}"
        );
        assert!(
            !e.to_string().contains(bad_key) && !e.to_string().contains(K1),
            "{e} leaks a key"
        );
    }
    assert_eq!(NetConf::parse(b"{not json").unwrap_err().kind, Kind::Decode);
    assert_eq!(NetConf::parse(b"[]").unwrap_err().kind, Kind::Decode);
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
    assert_eq!(parse_keepalive(&json!(25)).unwrap().as_secs(), 25);
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
    assert_eq!(e.kind, Kind::Config);
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
    assert_eq!(e.kind, Kind::Config);
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
            annotations: PodAnnotations::Unknown,
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
            assert_eq!(e.kind, Kind::Config, "{v}");
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
        assert_eq!(e.kind, Kind::Config, "{v}");
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

/// A key file is read by the runtime's plugin process, whose working
/// directory nobody chose: a relative path is refused, naming the field.
#[test]
fn a_relative_private_key_file_is_refused() {
    for p in ["key", "./key", "../etc/wg/key", "etc/wg/key"] {
        let e =
            parse(json!({"cniVersion": "1.0.0", "name": "n", "privateKeyFile": p})).unwrap_err();
        assert_eq!(e.kind, Kind::Config, "{p}");
        assert!(
            e.details.starts_with("privateKeyFile:") && e.details.contains("not an absolute path"),
            "{p}: {e}"
        );
    }
    let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "privateKeyFile": "/etc/wg/key"}))
        .unwrap();
    assert_eq!(c.private_key, Some(KeySource::File("/etc/wg/key".into())));
}

/// `"logFile": ""` is no file name: the default (in the state directory)
/// is used, as when the field is absent.
#[test]
fn an_empty_log_file_means_the_default() {
    let log_of = |extra: Value| {
        let mut v = json!({"cniVersion": "1.0.0", "name": "n"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        parse(v).unwrap().log_file
    };
    let default = PathBuf::from(DEFAULT_STATE_DIR).join("wg-cni.log");
    assert_eq!(log_of(json!({})), default);
    assert_eq!(log_of(json!({"logFile": ""})), default);
    assert_eq!(log_of(json!({"logFile": null})), default);
    assert_eq!(
        log_of(json!({"stateDir": "/run/wgs", "logFile": ""})),
        PathBuf::from("/run/wgs/wg-cni.log")
    );
    assert_eq!(
        log_of(json!({"stateDir": "/run/wgs", "logFile": "/var/log/wg.log"})),
        PathBuf::from("/var/log/wg.log")
    );
}

/// The network name becomes a directory under the state directory: a
/// slash or a `..` anywhere in it is refused, each on its own.
#[test]
fn network_names_that_could_leave_the_state_directory_are_refused() {
    for name in ["a/b", "/", "a..b", "..", "../x", "x/.."] {
        let e = parse(json!({"cniVersion": "1.0.0", "name": name})).unwrap_err();
        assert_eq!(e.kind, Kind::Config, "{name}");
        assert!(e.details.starts_with("name:"), "{name}: {e}");
    }
    for name in ["a.b", "wg-net_1", "a.b.c"] {
        assert_eq!(
            parse(json!({"cniVersion": "1.0.0", "name": name}))
                .unwrap()
                .name,
            name
        );
    }
}

/// `mtu`: absent or null is the default, `"auto"` the underlay's, a
/// number in 576..=65535 itself; any other string or number is refused.
#[test]
fn mtu_is_auto_or_a_number_in_range() {
    let mtu = |v: Value| parse(json!({"cniVersion": "1.0.0", "name": "n", "mtu": v}));
    assert_eq!(mtu(Value::Null).unwrap().mtu, None);
    assert_eq!(mtu(json!("auto")).unwrap().mtu, Some(Mtu::Auto));
    assert_eq!(mtu(json!(576)).unwrap().mtu, Some(Mtu::Bytes(576)));
    assert_eq!(mtu(json!(65535)).unwrap().mtu, Some(Mtu::Bytes(65535)));
    for bad in [
        json!(575),
        json!(65536),
        json!(-1),
        json!(1420.5),
        json!("1420"),
        json!("Auto"),
        json!(""),
        json!(true),
    ] {
        let e = mtu(bad.clone()).unwrap_err();
        assert!(e.details.starts_with("mtu:"), "{bad}: {e}");
    }
}

/// The hint to set `allowInsecureKeyFile` comes with either refusal of the
/// key file check, and with nothing else.
#[test]
fn the_insecure_key_file_hint_comes_with_either_refusal() {
    let hint = "; fix it or set allowInsecureKeyFile";
    assert_eq!(
        key_file_hint("/k is owned by uid 1000".into()),
        format!("/k is owned by uid 1000{hint}")
    );
    assert_eq!(
        key_file_hint("/k is accessible by group or others (mode 644)".into()),
        format!("/k is accessible by group or others (mode 644){hint}")
    );
    assert_eq!(
        key_file_hint("/k: No such file or directory".into()),
        "/k: No such file or directory"
    );
}

/// Keepalives: whole seconds in 0..=65535, as a number or as a duration in
/// any of Go's units; one past the top, a fraction, or another type is
/// refused.
#[test]
fn keepalive_bounds_in_every_unit() {
    for (v, secs) in [
        (json!(0), 0),
        (json!(65535), 65535),
        (json!("0"), 0),
        (json!("65535s"), 65535),
        (json!("18h12m15s"), 65535),
        (json!("1092m15s"), 65535),
        (json!("1000ms"), 1),
        (json!("1000000us"), 1),
        (json!("1000000µs"), 1),
        (json!("1000000000ns"), 1),
    ] {
        assert_eq!(parse_keepalive(&v).map(|d| d.as_secs()), Ok(secs), "{v}");
    }
    for v in [
        json!(65536),
        json!("65536s"),
        json!("18h12m16s"),
        json!(-1),
        json!(1.5),
        json!("1500us"),
        json!("999999999ns"),
        json!("65535001ms"),
        json!(true),
        Value::Null,
    ] {
        assert!(parse_keepalive(&v).is_err(), "{v}");
    }
}

/// Every unit of Go's `time.ParseDuration` that the subset takes, and the
/// guard against values no `Duration` of whole nanoseconds should come
/// from: at most 1e18 ns (about 31.7 years) per term, nothing infinite.
#[test]
fn go_duration_units_and_the_size_guard() {
    for (s, d) in [
        ("1h", Duration::from_secs(3600)),
        ("1.5h", Duration::from_secs(5400)),
        ("1m", Duration::from_secs(60)),
        ("1s", Duration::from_secs(1)),
        (".5s", Duration::from_millis(500)),
        ("1ms", Duration::from_millis(1)),
        ("1us", Duration::from_micros(1)),
        ("1µs", Duration::from_micros(1)),
        ("1ns", Duration::from_nanos(1)),
        ("1h1m1s1ms1us1ns", Duration::new(3661, 1_001_001)),
        ("1000000000s", Duration::from_secs(1_000_000_000)),
    ] {
        assert_eq!(parse_go_duration(s), Some(d), "{s}");
    }
    let huge = format!("1{}s", "0".repeat(400));
    for s in [
        "1000000001s",
        "10000000000s",
        "300000h",
        huge.as_str(),
        "1e3s",
        "1u",
        "1n",
        "1mus",
        "1 s",
    ] {
        assert_eq!(parse_go_duration(s), None, "{s}");
    }
}

/// Secrets the parser did not take (the parse stopped before them, or they
/// sit where no field reads them) are wiped from the JSON tree all the
/// same, at any depth; nothing else is touched.
#[test]
fn wipe_secrets_wipes_every_key_at_every_depth() {
    let mut v = json!({
        "privateKey": K1,
        "name": K1,
        "peers": [{"publicKey": P1, "presharedKey": K1}, {"presharedKey": K1}],
        "prevResult": {"nested": {"privateKey": K1, "list": [{"presharedKey": K1}]}},
        "other": [[{"privateKey": K1}]],
    });
    wipe_secrets(&mut v);
    let text = v.to_string();
    assert_eq!(
        text.matches(K1).count(),
        1,
        "only the non-secret field keeps the value: {text}"
    );
    assert_eq!(v["name"], K1);
    assert_eq!(v["privateKey"], "");
    assert_eq!(v["peers"][0]["presharedKey"], "");
    assert_eq!(v["peers"][0]["publicKey"], P1);
    assert_eq!(v["peers"][1]["presharedKey"], "");
    assert_eq!(v["prevResult"]["nested"]["privateKey"], "");
    assert_eq!(v["prevResult"]["nested"]["list"][0]["presharedKey"], "");
    assert_eq!(v["other"][0][0]["privateKey"], "");
}

/// A teardown (DEL, GC) reads `"managed": true` as managed mode, with or
/// without a `network`: the static fields the agent owns are dropped
/// unread, so they cannot fail it, as they are refused at ADD.
#[test]
fn teardown_takes_managed_true_without_a_network_as_managed() {
    for extra in [
        json!({"managed": true}),
        json!({"managed": true, "network": "pods"}),
        json!({"network": "pods"}),
    ] {
        let mut v = json!({"cniVersion": "1.0.0", "name": "n",
            "interfaceName": "not a valid name", "backend": "kernel"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let c = NetConf::parse_teardown(v.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        assert!(matches!(c.mode, Mode::Managed(_)), "{v}: {:?}", c.mode);
    }
    // Static: those fields are read, and checked.
    let e = NetConf::parse_teardown(
        json!({"cniVersion": "1.0.0", "name": "n", "managed": false,
            "interfaceName": "not a valid name"})
        .to_string()
        .as_bytes(),
    )
    .unwrap_err();
    assert!(e.details.starts_with("interfaceName:"), "{e}");
}

/// The pod's annotations as the runtime passes them: `null` or a map
/// without ours is no network, ours a network (unchecked), anything else
/// unknown (the runtime wrote it, so never an error).
#[test]
fn pod_annotations_from_the_runtime() {
    let of = |rc: Value| {
        let o = json!({"runtimeConfig": rc});
        PodAnnotations::from_runtime_config(o.as_object().unwrap())
    };
    let cap = crate::managed::POD_ANNOTATIONS_CAPABILITY;
    let ann = crate::managed::ANNOTATION_NETWORK;
    assert_eq!(of(json!({cap: null})), PodAnnotations::NoNetwork);
    assert_eq!(of(json!({cap: {"other": "x"}})), PodAnnotations::NoNetwork);
    assert_eq!(
        of(json!({cap: {ann: "pods"}})),
        PodAnnotations::Network("pods".into())
    );
    assert_eq!(of(json!({cap: {ann: 7}})), PodAnnotations::Unknown);
    assert_eq!(of(json!({cap: "pods"})), PodAnnotations::Unknown);
    assert_eq!(of(json!({})), PodAnnotations::Unknown);
    assert_eq!(
        PodAnnotations::from_runtime_config(json!({}).as_object().unwrap()),
        PodAnnotations::Unknown
    );
}
