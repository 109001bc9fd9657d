use super::*;
use crate::types::Subnet;
use serde_json::json;
use wg_attach::config::Mtu;
use wg_netns::{BackendChoice, IfName, SocketNamespace};

const P1: &str = "jGGhjGIEbR0Noo8MgjAVh+m5pq4GxD9CZDAl/zsfZF0=";
const SECRET: &str = "aGVsbG8gdGhpcyBpcyBhIHNlY3JldCBrZXkgISEhISE=";

fn network(options: &[(&str, &str)], subnets: &[&str]) -> Network {
    Network {
        name: "wgnet".into(),
        id: "abc".into(),
        driver: "wg-netavark".into(),
        subnets: (!subnets.is_empty()).then(|| {
            subnets
                .iter()
                .map(|s| Subnet {
                    subnet: s.to_string(),
                    gateway: None,
                    other: Map::new(),
                })
                .collect()
        }),
        options: Some(
            options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ipam_options: None,
        other: Map::new(),
    }
}

fn per(ips: &[&str], options: &[(&str, &str)]) -> PerNetworkOptions {
    PerNetworkOptions {
        interface_name: "wg0".into(),
        static_ips: Some(ips.iter().map(|i| i.parse().unwrap()).collect()),
        static_mac: None,
        aliases: None,
        options: Some(
            options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        other: Map::new(),
    }
}

fn peers() -> String {
    json!([{"publicKey": P1, "endpoint": "10.99.0.1:51820", "allowedIPs": ["10.77.0.0/24"]}])
        .to_string()
}

fn err(r: Result<Settings, Error>) -> String {
    r.expect_err("must be refused").to_string()
}

#[test]
fn flat_options_become_wg_cni_fields() {
    let p = peers();
    let n = network(
        &[
            ("address", "10.77.0.2/24, fd77::2/64"),
            ("peers", &p),
            ("listen_port", "51900"),
            ("mtu", "1380"),
            ("backend", "userspace"),
            ("socket_namespace", "container"),
            ("routes_from_allowed_ips", "false"),
            ("private_key_file", "/etc/wg/key"),
            ("state_dir", "/run/wgnv-state"),
        ],
        &[],
    );
    let s = settings(&n, None).unwrap();
    let c = &s.conf;
    assert_eq!(c.name, "wgnet");
    assert_eq!(
        c.addresses
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        ["10.77.0.2/24", "fd77::2/64"]
    );
    assert_eq!(c.peers.len(), 1);
    assert_eq!(c.listen_port, Some(51900));
    assert_eq!(c.mtu, Some(Mtu::Bytes(1380)));
    assert_eq!(
        c.backend,
        BackendChoice::Only(wg_netns::BackendKind::Userspace)
    );
    assert_eq!(c.socket_namespace, SocketNamespace::Container);
    assert!(!c.routes_from_allowed_ips);
    assert!(c.private_key.is_some());
    assert_eq!(c.state_dir.to_str(), Some("/run/wgnv-state"));
    assert_eq!(c.log_file.to_str(), Some("/run/wgnv-state/wg-netavark.log"));
    assert_eq!(s.birth_prefix, DEFAULT_BIRTH_PREFIX);
    // Defaults.
    let s = settings(&network(&[], &[]), None).unwrap();
    assert_eq!(s.conf.socket_namespace, SocketNamespace::Host);
    assert!(s.conf.private_key.is_none(), "generated per container");
    assert_eq!(s.conf.state_dir.to_str(), Some(DEFAULT_STATE_DIR));
    assert_eq!(s.conf.mtu, None);
}

#[test]
fn config_is_the_base_and_options_override_it() {
    let config = json!({"address": "10.1.0.2/24", "listenPort": 1000, "mtu": "auto",
        "peers": serde_json::from_str::<Value>(&peers()).unwrap(),
        "dns": {"nameservers": ["10.77.0.1"], "search": ["wg.example"]}})
    .to_string();
    let s = settings(&network(&[("config", &config)], &[]), None).unwrap();
    assert_eq!(s.conf.addresses[0].to_string(), "10.1.0.2/24");
    assert_eq!(s.conf.listen_port, Some(1000));
    assert_eq!(s.conf.mtu, Some(Mtu::Auto));
    assert_eq!(s.dns_servers, ["10.77.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(s.dns_search, ["wg.example"]);
    let n = network(
        &[
            ("config", &config),
            ("address", "10.2.0.2/24"),
            ("listen_port", "2000"),
        ],
        &[],
    );
    let s = settings(&n, None).unwrap();
    assert_eq!(s.conf.addresses.len(), 1, "address replaces config.address");
    assert_eq!(s.conf.addresses[0].to_string(), "10.2.0.2/24");
    assert_eq!(s.conf.listen_port, Some(2000));
}

#[test]
fn static_ips_take_the_subnets_prefix_and_container_options_win() {
    let n = network(&[], &["10.77.0.0/24", "fd77::/64"]);
    let s = settings(&n, Some(&per(&["10.77.0.5", "fd77::5"], &[]))).unwrap();
    assert_eq!(
        s.conf
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        ["10.77.0.5/24", "fd77::5/64"]
    );
    let s = settings(
        &n,
        Some(&per(
            &["10.77.0.5"],
            &[("address", "10.88.0.9/32"), ("listen_port", "5")],
        )),
    )
    .unwrap();
    assert_eq!(s.conf.addresses[0].to_string(), "10.88.0.9/32");
    assert_eq!(s.conf.listen_port, Some(5));
    let e = err(settings(&n, Some(&per(&["10.99.0.5"], &[]))));
    assert!(
        e.contains("10.99.0.5") && e.contains("none of network wgnet's subnets"),
        "{e}"
    );
}

#[test]
fn inline_secrets_are_refused_without_showing_them() {
    for r in [
        settings(&network(&[("private_key", SECRET)], &[]), None),
        settings(
            &network(
                &[("config", &json!({"privateKey": SECRET}).to_string())],
                &[],
            ),
            None,
        ),
        settings(
            &network(
                &[(
                    "peers",
                    &json!([{"publicKey": P1, "allowedIPs": [], "presharedKey": SECRET}])
                        .to_string(),
                )],
                &[],
            ),
            None,
        ),
        settings(
            &network(
                &[(
                    "config",
                    &json!({"peers": {"publicKey": P1, "presharedKey": SECRET}}).to_string(),
                )],
                &[],
            ),
            None,
        ),
    ] {
        let e = err(r);
        assert!(e.contains("inline keys are refused"), "{e}");
        assert!(!e.contains(SECRET), "{e}");
    }
}

#[test]
fn bad_options_are_named() {
    let e = err(settings(&network(&[("listen_prot", "1")], &[]), None));
    assert!(
        e.starts_with("option listen_prot: unknown network option; known: address,"),
        "{e}"
    );
    let e = err(settings(&network(&[("listen_port", "99999")], &[]), None));
    assert!(e.starts_with("option listen_port: listenPort:"), "{e}");
    let e = err(settings(
        &network(&[("address", "10.0.0.300/24")], &[]),
        None,
    ));
    assert!(e.starts_with("option address: addresses[0]"), "{e}");
    let e = err(settings(&network(&[("peers", "[{")], &[]), None));
    assert!(e.starts_with("option peers: not valid JSON"), "{e}");
    let e = err(settings(
        &network(
            &[("peers", r#"[{"publicKey": "nope", "allowedIPs": []}]"#)],
            &[],
        ),
        None,
    ));
    assert!(e.starts_with("option peers: peers[0].publicKey"), "{e}");
    let e = err(settings(
        &network(&[("routes_from_allowed_ips", "yes")], &[]),
        None,
    ));
    assert!(e.contains("\"yes\" is not true or false"), "{e}");
    let e = err(settings(
        &network(&[("config", r#"{"listenPort": "x"}"#)], &[]),
        None,
    ));
    assert!(e.starts_with("option config: listenPort"), "{e}");
    let e = err(settings(
        &network(&[("config", r#"{"interfaceName": "x"}"#)], &[]),
        None,
    ));
    assert!(e.starts_with("option config.interfaceName:"), "{e}");
    for managed in [r#"{"network": "pods"}"#, r#"{"managed": true}"#] {
        let e = err(settings(&network(&[("config", managed)], &[]), None));
        assert!(
            e.contains("managed mode needs a Kubernetes node agent"),
            "{e}"
        );
    }
    let e = err(settings(&network(&[("config", "[1]")], &[]), None));
    assert!(e.contains("expected a JSON object"), "{e}");
    let e = err(settings(
        &network(&[("birth_prefix", "TooLongPrefix")], &[]),
        None,
    ));
    assert!(e.starts_with("option birth_prefix:"), "{e}");
    let e = err(settings(
        &network(&[], &[]),
        Some(&per(&[], &[("config", "{}")])),
    ));
    assert!(e.contains("is a network option"), "{e}");
}

#[test]
fn birth_names_are_deterministic_prefixed_and_distinct() {
    let s = settings(&network(&[("birth_prefix", "wgnv-")], &[]), None).unwrap();
    let a = s.birth_names().derive(&s.conf.name, "c1", "wg0").unwrap();
    assert_eq!(
        a,
        s.birth_names().derive(&s.conf.name, "c1", "wg0").unwrap()
    );
    assert!(a.as_str().starts_with("wgnv-") && a.as_str().len() == 15);
    assert_ne!(
        a,
        s.birth_names().derive(&s.conf.name, "c2", "wg0").unwrap()
    );
    assert_ne!(
        a,
        s.birth_names().derive(&s.conf.name, "c1", "wg1").unwrap()
    );
    // The names of earlier releases (teardown without a record finds
    // them), and never another adapter's name for the same triple.
    let default = settings(&network(&[], &[]), None).unwrap();
    let ours = default
        .birth_names()
        .derive(&default.conf.name, "c1", "wg0")
        .unwrap();
    assert_eq!(
        ours,
        IfName::derived("wgn", &format!("netavark/{}/c1/wg0", default.conf.name)).unwrap()
    );
    assert_ne!(
        ours,
        wg_attach::BirthNames::new("wgn")
            .derive(&default.conf.name, "c1", "wg0")
            .unwrap()
    );
}
