//! The options: from the environment, and their checks.

use super::*;

#[test]
fn options_from_the_environment() {
    let none = InstallOptions::from_lookup(|_| None).unwrap();
    assert_eq!(none, InstallOptions::default());
    assert_eq!(none.bin_src, Path::new("/opt/wg/bin/wg-cni"));
    assert_eq!(none.bin_dir, Path::new("/host/opt/cni/bin"));
    assert_eq!(none.conf_dir, Path::new("/host/etc/cni/net.d"));
    assert_eq!(none.state_file, Path::new("/var/lib/wg-agent/install.json"));
    assert_eq!(none.mode, Mode::Chain);
    assert_eq!(
        none.plugin,
        json!({"type": "wg-cni", "managed": true,
            "capabilities": {"io.kubernetes.cri.pod-annotations": true}}),
        "the runtime passes wg-cni the pod's annotations"
    );
    assert_eq!(
        none.userspace_src.as_deref(),
        Some(Path::new("/opt/wg/bin/wireguard-go"))
    );

    let env = |k: &str| {
        match k {
            "WG_CNI_BIN_SRC" => Some("/src/wg-cni"),
            "WG_CNI_BIN_DIR" => Some("/b"),
            "WG_CNI_CONF_DIR" => Some("/c"),
            "WG_CNI_MODE" => Some("secondary"),
            "WG_CNI_PLUGIN" => {
                Some(r#"{"type":"wg-cni","managed":true,"agentSocket":"/run/wg/agent.sock"}"#)
            }
            "WG_CNI_STATE_FILE" => Some("/s/install.json"),
            "WG_CNI_USERSPACE_SRC" => Some("/src/wireguard-go"),
            _ => None,
        }
        .map(String::from)
    };
    let o = InstallOptions::from_lookup(env).unwrap();
    assert_eq!(o.mode, Mode::Secondary);
    assert_eq!(o.bin_dir, Path::new("/b"));
    assert_eq!(o.conf_dir, Path::new("/c"));
    assert_eq!(o.bin_src, Path::new("/src/wg-cni"));
    assert_eq!(o.state_file, Path::new("/s/install.json"));
    assert_eq!(o.plugin["agentSocket"], "/run/wg/agent.sock");
    assert_eq!(
        o.plugin["capabilities"],
        json!({"io.kubernetes.cri.pod-annotations": true}),
        "declared in a given entry too"
    );
    let kept = InstallOptions::from_lookup(|k| {
        (k == "WG_CNI_PLUGIN").then(|| {
            r#"{"type":"wg-cni","managed":true,"capabilities":{"portMappings":true,"io.kubernetes.cri.pod-annotations":false}}"#.to_string()
        })
    })
    .unwrap();
    assert_eq!(
        kept.plugin["capabilities"],
        json!({"portMappings": true, "io.kubernetes.cri.pod-annotations": false}),
        "what the entry says is kept"
    );
    assert_eq!(
        o.userspace_src.as_deref(),
        Some(Path::new("/src/wireguard-go"))
    );
    // Empty means unset.
    assert_eq!(
        InstallOptions::from_lookup(|_| Some(String::new())).unwrap(),
        InstallOptions::default()
    );

    let bad = |k: &'static str, v: &'static str| {
        InstallOptions::from_lookup(move |q| (q == k).then(|| v.to_string()))
            .unwrap_err()
            .to_string()
    };
    assert!(bad("WG_CNI_MODE", "primary").contains("WG_CNI_MODE"));
    assert!(bad("WG_CNI_PLUGIN", "{not json").contains("WG_CNI_PLUGIN"));
    assert!(bad("WG_CNI_PLUGIN", r#"{"managed":true}"#).contains("type"));
    assert!(bad("WG_CNI_PLUGIN", r#"{"type":"bridge"}"#).contains("binary"));
    assert!(bad("WG_CNI_STATE_FILE", "/host/etc/cni/net.d/state.json").contains("conf dir"));
    let clash = InstallOptions {
        plugin: json!({"type": USERSPACE_BINARY}),
        binary_name: USERSPACE_BINARY.into(),
        ..InstallOptions::default()
    };
    assert!(clash
        .validate()
        .unwrap_err()
        .to_string()
        .contains(USERSPACE_BINARY));
}
