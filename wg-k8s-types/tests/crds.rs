//! The committed CRD YAML (the repository's manifests/base/00-crds.yaml) is
//! what the types generate, manifests/wg-cni.yml is manifests/base/ in one
//! file, and the example objects under this crate's
//! manifests/examples agree with the Rust-side validation.

#[path = "../examples/gen-crds/render.rs"]
mod render;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use wg_k8s_types::{
    WireGuardAddressBlock, WireGuardAttachment, WireGuardNetwork, WireGuardPeer, API_VERSION,
};

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

#[test]
fn committed_crds_are_generated_output() {
    let path = render::path();
    let committed =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        committed == render::render(),
        "manifests/base/00-crds.yaml is out of date: run `cargo run -p wg-k8s-types --example gen-crds`"
    );
}

/// `kubectl apply -f manifests/wg-cni.yml` (the original project's install
/// step) installs exactly what `kubectl apply -k manifests/base` does.
#[test]
fn the_one_file_install_is_the_parts() {
    let path = render::bundle_path();
    let committed =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        committed == render::bundle().unwrap(),
        "manifests/wg-cni.yml differs from manifests/base/: run `cargo run -p wg-k8s-types --example gen-crds`"
    );
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(render::render(), render::render());
}

#[test]
fn crds_read_back_as_crds() {
    let text = render::render();
    let mut n = 0;
    for doc in serde_saphyr::from_multiple::<serde_json::Value>(&text).unwrap() {
        let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_json::from_value(doc).unwrap();
        assert_eq!(crd.spec.group, "wireguard.wg-netns.io");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources.as_ref().unwrap().status.is_some(),
            "{}",
            crd.spec.names.kind
        );
        assert!(crd
            .spec
            .names
            .short_names
            .as_ref()
            .is_some_and(|s| s.len() == 1));
        n += 1;
    }
    assert_eq!(n, 4);
}

/// Every field of every schema has a description (they are the API docs).
#[test]
fn every_property_is_described() {
    fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (k, p) in props {
                let here = format!("{path}.{k}");
                if p.get("description").is_none() {
                    missing.push(here.clone());
                }
                walk(&here, p, missing);
            }
        }
        if let Some(items) = v.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in wg_k8s_types::crds() {
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        walk(&crd.spec.names.kind, &schema, &mut missing);
    }
    assert!(missing.is_empty(), "no description: {missing:?}");
}

/// One example object: its file, and what the Rust side says of it.
fn check_object(path: &Path, doc: serde_json::Value) -> Result<(), String> {
    assert_eq!(doc["apiVersion"], API_VERSION, "{}", path.display());
    fn typed<T: for<'de> Deserialize<'de>>(doc: serde_json::Value) -> Result<T, String> {
        serde_json::from_value(doc).map_err(|e| format!("does not deserialize: {e}"))
    }
    match doc["kind"].as_str().unwrap() {
        "WireGuardNetwork" => {
            let o: WireGuardNetwork = typed(doc)?;
            let name = o.metadata.name.clone().unwrap_or_default();
            if wg_k8s_types::NetworkName::unchecked(name).check().is_err() {
                return Err("name is not a DNS label".into());
            }
            o.spec.validate().map(|_| ()).map_err(|e| e.to_string())
        }
        "WireGuardPeer" => {
            let o: WireGuardPeer = typed(doc)?;
            o.spec.validate().map(|_| ()).map_err(|e| e.to_string())
        }
        "WireGuardAttachment" => {
            let o: WireGuardAttachment = typed(doc)?;
            o.spec.check().map_err(|e| e.to_string())
        }
        "WireGuardAddressBlock" => {
            let o: WireGuardAddressBlock = typed(doc)?;
            let cidr = o.spec.validate().map_err(|e| e.to_string())?;
            let want = WireGuardAddressBlock::name_for(o.spec.network.as_str(), &cidr);
            if o.metadata.name.as_deref() != Some(want.as_str()) {
                return Err(format!("name is not {want}"));
            }
            Ok(())
        }
        other => panic!("{}: unknown kind {other}", path.display()),
    }
}

fn examples(dir: &str) -> Vec<(PathBuf, serde_json::Value, String)> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(manifests().join("examples").join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for p in files {
        let text = std::fs::read_to_string(&p).unwrap();
        let docs = serde_saphyr::from_multiple::<serde_json::Value>(&text).unwrap();
        assert_eq!(docs.len(), 1, "{}: one object per file", p.display());
        out.push((p, docs.into_iter().next().unwrap(), text));
    }
    out
}

#[test]
fn good_examples_pass_rust_validation() {
    let good = examples("good");
    assert!(good.len() >= 4);
    for (p, doc, _) in good {
        if let Err(e) = check_object(&p, doc) {
            panic!("{}: {e}", p.display());
        }
    }
}

/// Bad examples that the Rust side can judge (it cannot see immutability
/// or strict field validation) are refused by it too, and every bad
/// example says why it must be refused.
#[test]
fn bad_examples_are_refused_by_rust_validation() {
    let bad = examples("bad");
    assert!(bad.len() >= 10);
    for (p, doc, text) in bad {
        let why = text
            .lines()
            .find_map(|l| l.strip_prefix("# refused: "))
            .unwrap_or_else(|| panic!("{}: no '# refused: ' comment", p.display()));
        if text.contains("# rust: cannot tell") {
            continue;
        }
        if check_object(&p, doc).is_ok() {
            panic!(
                "{}: accepted by the Rust side, but must be refused: {why}",
                p.display()
            );
        }
    }
}

/// The objects of each update example (bad-update: refused, good-update:
/// accepted): both valid on their own (the first is created for real),
/// with a comment saying why; the Rust side's verdict on a network's
/// update ([`wg_k8s_types::WireGuardNetworkSpec::check_update`]) is the
/// example's. Returns how many examples there are.
fn update_examples(dir: &str, refused: bool) -> usize {
    let dir = manifests().join("examples").join(dir);
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let why = if refused {
            "# refused: "
        } else {
            "# accepted: "
        };
        assert!(text.contains(why), "{}: no '{why}' comment", p.display());
        let docs = serde_saphyr::from_multiple::<serde_json::Value>(&text).unwrap();
        assert_eq!(docs.len(), 2, "{}", p.display());
        for d in &docs {
            if let Err(e) = check_object(&p, d.clone()) {
                panic!("{}: {e}", p.display());
            }
        }
        if docs[0]["kind"] == "WireGuardNetwork" {
            let spec = |d: &serde_json::Value| -> wg_k8s_types::WireGuardNetworkSpec {
                serde_json::from_value(d["spec"].clone()).unwrap()
            };
            let verdict = spec(&docs[1]).check_update(&spec(&docs[0]));
            assert_eq!(verdict.is_err(), refused, "{}: {verdict:?}", p.display());
        }
        n += 1;
    }
    n
}

#[test]
fn update_examples_start_valid() {
    assert!(update_examples("bad-update", true) >= 6);
    assert!(update_examples("good-update", false) >= 2);
}

/// The interface names of examples/interface-names.txt (which
/// scripts/crd-check gives the apiserver) are judged by the Rust side as
/// the file says.
#[test]
fn interface_names_as_listed() {
    let text = std::fs::read_to_string(manifests().join("examples/interface-names.txt")).unwrap();
    let mut seen = [0, 0];
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (verdict, name) = line.split_once(' ').unwrap();
        let name: String = serde_json::from_str(name).unwrap();
        let accept = match verdict {
            "accept" => true,
            "refuse" => false,
            other => panic!("{line}: {other} is not accept or refuse"),
        };
        let got = wg_k8s_types::InterfaceName::unchecked(name.clone()).check();
        assert_eq!(got.is_ok(), accept, "{name:?}: {got:?}");
        seen[usize::from(accept)] += 1;
    }
    assert!(seen[0] > 100 && seen[1] > 100, "{seen:?}");
}
