//! Contract tests: the built binary, every verb and version, every error path,
//! driven by environment and stdin like a runtime drives it. No privileges.

mod cni;

use cni::{Call, StateDir};
use serde_json::{json, Value};

const KEY: &str = "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E=";
const PEER: &str = "Jqbg1u7/1fK5VU2hadmxLzMmrwCPFe7fJEIzEnLWrl0=";
const VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The original wireguard-cni README's configuration, verbatim (plus the
/// fields a runtime injects and a private state directory).
fn original(version: &str, state: &StateDir) -> Value {
    json!({"cniVersion": version, "name": "wg", "type": "wg-cni", "address": "10.13.13.210/24",
           "privateKey": KEY,
           "peers": [{"endpoint": "192.0.2.1:51820", "publicKey": PEER, "allowedIPs": ["10.13.13.0/24"], "persistentKeepalive": "25s"}],
           "stateDir": state.path()})
}

#[test]
fn version_answers_every_supported_version() {
    for v in VERSIONS {
        let out = Call::new("VERSION").run(&json!({"cniVersion": v}).to_string());
        let j = out.ok();
        assert_eq!(j["cniVersion"], v);
        assert_eq!(j["supportedVersions"], json!(VERSIONS));
        assert!(out.stderr.is_empty());
    }
    // No stdin at all (some runtimes), or an unknown version.
    assert_eq!(Call::new("VERSION").run("").ok()["cniVersion"], "1.1.0");
    assert_eq!(
        Call::new("VERSION").run(r#"{"cniVersion":"0.2.0"}"#).ok()["supportedVersions"],
        json!(VERSIONS)
    );
}

#[test]
fn environment_errors_are_code_4() {
    let s = StateDir::new("env");
    let cfg = original("1.0.0", &s).to_string();
    let j = Call::new("").run(&cfg).err(4);
    assert_eq!(j["cniVersion"], "1.0.0", "errors carry the input's version");
    Call::new("BOGUS").run(&cfg).err(4);
    Call::new("ADD")
        .container("", "/var/run/netns/x", "eth0")
        .run(&cfg)
        .err(4);
    Call::new("ADD")
        .container("c1", "", "eth0")
        .run(&cfg)
        .err(4);
    Call::new("ADD")
        .container("c1", "/var/run/netns/x", "")
        .run(&cfg)
        .err(4);
    Call::new("ADD")
        .container("c/1", "/var/run/netns/x", "eth0")
        .run(&cfg)
        .err(4);
    Call::new("CHECK")
        .container("c1", "/var/run/netns/x", "a-name-way-too-long")
        .run(&cfg)
        .err(4);
    Call::new("ADD")
        .container("c1", "/var/run/netns/x", "eth0")
        .args("NOPE")
        .run(&cfg)
        .err(4);
}

#[test]
fn unknown_cni_args_need_ignore_unknown() {
    let s = StateDir::new("args");
    let cfg = original("1.0.0", &s).to_string();
    let call = Call::new("ADD").container("c1", "/var/run/netns/wgcni-none", "eth0");
    call.clone().args("FOO=bar").run(&cfg).err(2);
    // With IgnoreUnknown the arguments pass, and the ADD fails later on the missing netns.
    call.clone()
        .args("IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=web-0")
        .run(&cfg)
        .err(3);
}

#[test]
fn decode_and_version_errors() {
    Call::new("ADD")
        .container("c1", "/var/run/netns/x", "eth0")
        .run("{not json")
        .err(6);
    Call::new("ADD")
        .container("c1", "/var/run/netns/x", "eth0")
        .run("[1,2]")
        .err(6);
    Call::new("ADD")
        .container("c1", "/var/run/netns/x", "eth0")
        .run("")
        .err(6);
    let s = StateDir::new("ver");
    let mut cfg = original("1.0.0", &s);
    cfg["cniVersion"] = json!("0.2.0");
    let j = Call::new("ADD")
        .container("c1", "/var/run/netns/x", "eth0")
        .run(&cfg.to_string())
        .err(1);
    assert_eq!(j["cniVersion"], "0.2.0");
    // CHECK does not exist before 0.4.0.
    Call::new("CHECK")
        .container("c1", "/var/run/netns/x", "eth0")
        .run(&original("0.3.1", &s).to_string())
        .err(1);
}

#[test]
fn invalid_config_is_code_7_naming_the_field_never_the_key() {
    let s = StateDir::new("cfg");
    let bad_private = "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43F=";
    let cases: Vec<(Value, &str)> = vec![
        (json!({"address": "10.13.13.210"}), "address"),
        (json!({"privateKey": bad_private}), "privateKey"),
        (
            json!({"peers": [{"publicKey": "short"}]}),
            "peers[0].publicKey",
        ),
        (
            json!({"peers": [{"publicKey": PEER, "endpoint": "nowhere"}]}),
            "peers[0].endpoint",
        ),
        (
            json!({"peers": [{"publicKey": PEER, "persistentKeepalive": "soon"}]}),
            "peers[0].persistentKeepalive",
        ),
        (
            json!({"peers": [{"publicKey": PEER, "presharedKey": bad_private}]}),
            "peers[0].presharedKey",
        ),
        (json!({"mtu": "big"}), "mtu"),
        (json!({"listenPort": -1}), "listenPort"),
        (json!({"socketNamespace": "elsewhere"}), "socketNamespace"),
        (json!({"backend": "magic"}), "backend"),
    ];
    for (patch, field) in cases {
        let mut cfg = original("1.0.0", &s);
        for (k, v) in patch.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let out = Call::new("ADD")
            .container("c1", "/var/run/netns/x", "eth0")
            .run(&cfg.to_string());
        let j = out.err(7);
        assert!(
            j["details"].as_str().unwrap().contains(field),
            "{field}: {j}"
        );
        for secret in [KEY, bad_private] {
            assert!(
                !out.stdout.contains(secret) && !out.stderr.contains(secret),
                "{field}: a key leaked"
            );
        }
    }
}

#[test]
fn unknown_keys_pass_and_missing_netns_is_container_unknown() {
    let s = StateDir::new("unknown");
    let mut cfg = original("1.1.0", &s);
    cfg["someFutureField"] = json!({"x": 1});
    cfg["runtimeConfig"] = json!({"portMappings": []});
    let j = Call::new("ADD")
        .container("c1", "/var/run/netns/wgcni-does-not-exist", "eth0")
        .run(&cfg.to_string())
        .err(3);
    assert_eq!(j["cniVersion"], "1.1.0");
}

#[test]
fn status_and_gc_need_no_container() {
    let s = StateDir::new("status");
    // libcni sends these variables empty for STATUS and GC.
    let call = |c: &str| Call::new(c).container("", "", "");
    let mut cfg = original("1.1.0", &s);
    cfg["backend"] = json!("userspace");
    cfg["userspaceImplementation"] = json!("/nonexistent/wireguard-impl");
    let j = call("STATUS").run(&cfg.to_string()).err(50);
    assert!(j["details"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/wireguard-impl"));
    let mut gc = original("1.1.0", &s);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    assert_eq!(call("GC").run(&gc.to_string()).ok(), Value::Null);
    gc["cni.dev/valid-attachments"] = json!([{"ifname": "eth0"}]);
    call("GC").run(&gc.to_string()).err(7);
    // Available backend: STATUS succeeds silently.
    let have_backend = wg_netns::Backend::detect().is_ok();
    if have_backend {
        let out = call("STATUS").run(&original("1.1.0", &s).to_string());
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn del_of_something_never_added_succeeds_silently() {
    let s = StateDir::new("del");
    for v in VERSIONS {
        for netns in ["", "/var/run/netns/wgcni-gone"] {
            let out = Call::new("DEL")
                .container("never-added", netns, "eth0")
                .run(&original(v, &s).to_string());
            assert_eq!(out.code, 0, "{v} {netns:?}: {out:?}");
            assert!(
                out.stdout.is_empty(),
                "DEL prints nothing: {:?}",
                out.stdout
            );
        }
    }
    assert!(!s.log().contains(KEY), "the log never holds a key");
}
