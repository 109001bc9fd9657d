use super::*;
use serde_json::json;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A temporary directory under std::env::temp_dir(), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("wgagent-install-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn plugin() -> Value {
    json!({"type": "wg-cni", "managed": true})
}

/// flannel's conflist as kube-flannel writes it (two-space JSON).
const FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
"#;

/// `y` is `x` with one span inserted: returns the span.
fn inserted_span<'a>(x: &[u8], y: &'a [u8]) -> Option<&'a [u8]> {
    if y.len() < x.len() {
        return None;
    }
    let d = y.len() - x.len();
    let p = x.iter().zip(y).take_while(|(a, b)| a == b).count();
    (x[p..] == y[p + d..]).then(|| &y[p..p + d])
}

// --- chain / unchain: text ---------------------------------------------------

#[test]
fn chain_inserts_only_our_entry_indented_like_its_neighbours() {
    let out = chain(FLANNEL.as_bytes(), &plugin()).unwrap().unwrap();
    let text = String::from_utf8(out.clone()).unwrap();
    let expected = FLANNEL.replace(
        "        \"portMappings\": true\n      }\n    }\n",
        "        \"portMappings\": true\n      }\n    },\n    {\n      \"managed\": true,\n      \"type\": \"wg-cni\"\n    }\n",
    );
    assert_eq!(text, expected);
    let span = inserted_span(FLANNEL.as_bytes(), &out).expect("one inserted span");
    assert!(
        span.starts_with(b",\n    {"),
        "{:?}",
        String::from_utf8_lossy(span)
    );
}

#[test]
fn chain_compact_and_inline_layouts_keep_their_style() {
    let compact = br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#;
    let out = chain(compact, &plugin()).unwrap().unwrap();
    assert_eq!(
        out,
        br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"managed":true,"type":"wg-cni"}]}"#
    );
    let inline = br#"{ "name": "n", "plugins": [ {"type": "a"}, {"type": "b"} ] }"#;
    let out = chain(inline, &plugin()).unwrap().unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{ "name": "n", "plugins": [ {"type": "a"}, {"type": "b"}, {"managed":true,"type":"wg-cni"} ] }"#
    );
}

#[test]
fn chain_keeps_tabs_and_crlf() {
    let doc = "{\r\n\t\"name\": \"n\",\r\n\t\"plugins\": [\r\n\t\t{\r\n\t\t\t\"type\": \"a\"\r\n\t\t}\r\n\t]\r\n}\r\n";
    let out = String::from_utf8(chain(doc.as_bytes(), &plugin()).unwrap().unwrap()).unwrap();
    let expected = doc.replace(
        "\t\t}\r\n\t]",
        "\t\t},\r\n\t\t{\r\n\t\t\t\"managed\": true,\r\n\t\t\t\"type\": \"wg-cni\"\r\n\t\t}\r\n\t]",
    );
    assert_eq!(out, expected);
}

#[test]
fn chain_into_an_empty_list() {
    for doc in [
        r#"{"name":"n","plugins":[]}"#,
        "{\"name\":\"n\",\"plugins\":[ \n ]}",
    ] {
        let out = chain(doc.as_bytes(), &plugin()).unwrap().unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["plugins"], json!([plugin()]));
        assert_eq!(unchain(&out).unwrap().unwrap(), doc.as_bytes());
    }
}

#[test]
fn chain_is_idempotent() {
    let once = chain(FLANNEL.as_bytes(), &plugin()).unwrap().unwrap();
    assert_eq!(chain(&once, &plugin()).unwrap(), None);
    // Any entry of type wg-cni counts, whatever its other keys.
    let by_hand =
        br#"{"name":"n","plugins":[{"type":"a"},{"type":"wg-cni","address":"10.0.0.1/24"}]}"#;
    assert_eq!(chain(by_hand, &plugin()).unwrap(), None);
}

#[test]
fn chain_finds_the_top_level_plugins_only() {
    // A nested "plugins", a string that looks like the array, brackets and
    // escaped quotes in strings, an escaped key that decodes to "plugins".
    let doc = br#"{
  "name": "plugins [ ] \" \\",
  "x": {"plugins": [{"type": "nested"}], "s": "]]]}}}\"[["},
  "plugin\u0073": [
    {"type": "a", "note": "has ] and } and \" and \\"}
  ],
  "after": ["plugins", {"plugins": []}]
}"#;
    let out = chain(doc, &plugin()).unwrap().unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["plugins"].as_array().unwrap().len(), 2);
    assert_eq!(v["plugins"][1], plugin());
    assert_eq!(v["x"]["plugins"], json!([{"type": "nested"}]));
    assert!(inserted_span(doc, &out).is_some());
    assert_eq!(unchain(&out).unwrap().unwrap(), doc.to_vec());
}

#[test]
fn chain_uses_the_last_of_duplicate_plugins_keys() {
    // serde_json and Go's encoding/json both keep the last duplicate.
    let doc = br#"{"name":"n","plugins":[{"type":"first"}],"plugins":[{"type":"second"}]}"#;
    let out = chain(doc, &plugin()).unwrap().unwrap();
    assert_eq!(
        out,
        br#"{"name":"n","plugins":[{"type":"first"}],"plugins":[{"type":"second"},{"managed":true,"type":"wg-cni"}]}"#
    );
}

#[test]
fn chain_refuses_what_is_not_a_conflist() {
    let conf = br#"{"cniVersion":"0.3.1","name":"n","type":"bridge"}"#;
    assert!(matches!(chain(conf, &plugin()), Err(ChainError::NoPlugins)));
    assert!(matches!(
        chain(b"{\"plugins\": [", &plugin()),
        Err(ChainError::Json(_))
    ));
    assert!(matches!(
        chain(b"[1,2]", &plugin()),
        Err(ChainError::NotAnObject)
    ));
    assert!(matches!(
        chain(br#"{"plugins":{}}"#, &plugin()),
        Err(ChainError::PluginsNotArray)
    ));
    assert!(matches!(
        chain(FLANNEL.as_bytes(), &json!({"managed": true})),
        Err(ChainError::BadPlugin)
    ));
    assert!(matches!(
        chain(FLANNEL.as_bytes(), &json!("wg-cni")),
        Err(ChainError::BadPlugin)
    ));
    assert!(matches!(chain(b"", &plugin()), Err(ChainError::Json(_))));
    assert!(matches!(
        chain(b"\xff\xfe", &plugin()),
        Err(ChainError::Json(_))
    ));
}

#[test]
fn unchain_removes_entries_wherever_they_are() {
    let first = br#"{"name":"n","plugins":[ {"type":"wg-cni"}, {"type":"a"} ]}"#;
    assert_eq!(
        unchain(first).unwrap().unwrap(),
        br#"{"name":"n","plugins":[ {"type":"a"} ]}"#
    );
    let middle = br#"{"name":"n","plugins":[{"type":"a"}, {"type":"wg-cni"}, {"type":"b"}]}"#;
    assert_eq!(
        unchain(middle).unwrap().unwrap(),
        br#"{"name":"n","plugins":[{"type":"a"}, {"type":"b"}]}"#
    );
    let two = br#"{"name":"n","plugins":[{"type":"a"},{"type":"wg-cni"},{"type":"wg-cni","x":1}]}"#;
    assert_eq!(
        unchain(two).unwrap().unwrap(),
        br#"{"name":"n","plugins":[{"type":"a"}]}"#
    );
    assert_eq!(unchain(FLANNEL.as_bytes()).unwrap(), None);
    assert!(matches!(unchain(b"{}"), Err(ChainError::NoPlugins)));
}

#[test]
fn unchain_inverts_chain_on_the_flannel_file() {
    let out = chain(FLANNEL.as_bytes(), &plugin()).unwrap().unwrap();
    assert_eq!(unchain(&out).unwrap().unwrap(), FLANNEL.as_bytes());
}

// --- chain / unchain: generated conflists ------------------------------------

mod generated {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum J {
        Null,
        Bool(bool),
        Num(&'static str),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    /// Strings full of what trips naive scanners.
    fn text() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z\\[\\]{}\",:\\\\/ \t\n\u{0}\u{1f}é€😀]{0,10}").unwrap()
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("plugins".to_string()),
            Just("type".to_string()),
            text()
        ]
    }

    fn value() -> impl Strategy<Value = J> {
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            prop_oneof![
                Just("0"),
                Just("-12"),
                Just("3.25"),
                Just("1e-7"),
                Just("-0.5E+3")
            ]
            .prop_map(J::Num),
            text().prop_map(J::Str),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
                prop::collection::vec((key(), inner), 0..5).prop_map(J::Obj),
            ]
        })
    }

    /// A plugin entry: a "type" that is not wg-cni, then other keys.
    fn entry() -> impl Strategy<Value = J> {
        (
            text().prop_filter("not wg-cni", |t| t != "wg-cni"),
            prop::collection::vec(
                (key().prop_filter("one type", |k| k != "type"), value()),
                0..4,
            ),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(ty, mut rest, at)| {
                let at = at.index(rest.len() + 1);
                rest.insert(at, ("type".into(), J::Str(ty)));
                J::Obj(rest)
            })
    }

    fn conflist() -> impl Strategy<Value = J> {
        (
            text(),
            prop::collection::vec(entry(), 0..5),
            prop::collection::vec(
                (
                    key().prop_filter("top-level plugins once", |k| k != "plugins" && k != "name"),
                    value(),
                ),
                0..4,
            ),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(name, plugins, mut rest, at)| {
                rest.insert(0, ("name".into(), J::Str(name)));
                let at = at.index(rest.len() + 1);
                rest.insert(at, ("plugins".into(), J::Arr(plugins)));
                J::Obj(rest)
            })
    }

    /// Serializes with whitespace and escapes taken from `choices` (cycled).
    struct Writer<'a> {
        choices: &'a [u8],
        n: usize,
        out: String,
    }

    const WS: [&str; 8] = ["", " ", "\n", "\n  ", "\n\t\t", "\r\n    ", "  \n", "\t"];

    impl Writer<'_> {
        fn pick(&mut self) -> u8 {
            let c = self
                .choices
                .get(self.n % self.choices.len().max(1))
                .copied()
                .unwrap_or(0);
            self.n += 1;
            c
        }
        fn ws(&mut self) {
            let w = WS[self.pick() as usize % WS.len()];
            self.out.push_str(w);
        }
        fn string(&mut self, s: &str) {
            self.out.push('"');
            for ch in s.chars() {
                let escape = self.pick().is_multiple_of(4);
                match ch {
                    '"' => self.out.push_str("\\\""),
                    '\\' => self.out.push_str("\\\\"),
                    '\n' => self.out.push_str(if escape { "\\u000a" } else { "\\n" }),
                    '\t' => self.out.push_str("\\t"),
                    c if (c as u32) < 0x20 => self.out.push_str(&format!("\\u{:04x}", c as u32)),
                    '/' if escape => self.out.push_str("\\/"),
                    c if escape => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            self.out.push_str(&format!("\\u{:04X}", u));
                        }
                    }
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        fn value(&mut self, j: &J) {
            match j {
                J::Null => self.out.push_str("null"),
                J::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
                J::Num(n) => self.out.push_str(n),
                J::Str(s) => self.string(s),
                J::Arr(items) => {
                    self.out.push('[');
                    self.ws();
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            self.ws();
                            self.out.push(',');
                            self.ws();
                        }
                        self.value(item);
                    }
                    self.ws();
                    self.out.push(']');
                }
                J::Obj(members) => {
                    self.out.push('{');
                    self.ws();
                    for (i, (k, v)) in members.iter().enumerate() {
                        if i > 0 {
                            self.ws();
                            self.out.push(',');
                            self.ws();
                        }
                        self.string(k);
                        self.ws();
                        self.out.push(':');
                        self.ws();
                        self.value(v);
                    }
                    self.ws();
                    self.out.push('}');
                }
            }
        }
    }

    fn render(doc: &J, choices: &[u8]) -> Vec<u8> {
        let mut w = Writer {
            choices,
            n: 0,
            out: String::new(),
        };
        w.ws();
        w.value(doc);
        w.ws();
        w.out.into_bytes()
    }

    fn entries() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!({"type": "wg-cni", "managed": true})),
            Just(json!({"type": "wg-cni"})),
            Just(
                json!({"type": "wg-cni", "peers": [{"allowedIPs": ["10.9.0.0/16"], "x": "]\"}"}], "mtu": 1420})
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn unchain_inverts_chain(doc in conflist(), choices in prop::collection::vec(any::<u8>(), 1..64), ours in entries()) {
            let x = render(&doc, &choices);
            let parsed: Value = serde_json::from_slice(&x).expect("the generator writes JSON");
            let y = chain(&x, &ours).unwrap().expect("not chained yet");
            // Only one span differs: what we inserted.
            prop_assert!(inserted_span(&x, &y).is_some());
            let mut expected = parsed.clone();
            expected["plugins"].as_array_mut().unwrap().push(ours.clone());
            prop_assert_eq!(serde_json::from_slice::<Value>(&y).unwrap(), expected);
            prop_assert_eq!(chain(&y, &ours).unwrap(), None);
            prop_assert_eq!(unchain(&y).unwrap(), Some(x.clone()));
            prop_assert_eq!(unchain(&x).unwrap(), None);
        }
    }
}

// --- files --------------------------------------------------------------------

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

const CONFLIST: &str = r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}]}"#;
const CONF: &str = r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#;

#[test]
fn primary_is_the_first_loadable_file_by_name() {
    let t = TempDir::new("primary");
    let d = t.path();
    assert_eq!(primary_conflist(d), None);
    assert_eq!(primary_conflist(&d.join("missing")), None);
    write(&d.join("20-b.conflist"), CONFLIST);
    assert_eq!(primary_conflist(d), Some(d.join("20-b.conflist")));
    write(&d.join("10-a.json"), CONF);
    assert_eq!(primary_conflist(d), Some(d.join("10-a.json")));
    // ".conf" sorts before ".conflist" for the same stem; byte order, not extension order.
    write(&d.join("10-a.conflist"), CONFLIST);
    assert_eq!(primary_conflist(d), Some(d.join("10-a.conflist")));
    write(&d.join("10-a.conf"), CONF);
    assert_eq!(primary_conflist(d), Some(d.join("10-a.conf")));
    write(&d.join("05-z.conflist"), CONFLIST);
    assert_eq!(primary_conflist(d), Some(d.join("05-z.conflist")));
}

#[test]
fn primary_skips_what_does_not_load_and_what_is_hidden_or_temporary() {
    let t = TempDir::new("primary-skip");
    let d = t.path();
    write(&d.join("50-good.conflist"), CONFLIST);
    write(
        &d.join("00-broken.conflist"),
        "{\"name\":\"n\",\"plugins\":[",
    );
    write(
        &d.join("01-noplugins.conflist"),
        r#"{"name":"n","plugins":[]}"#,
    );
    write(
        &d.join("02-noname.conflist"),
        r#"{"plugins":[{"type":"a"}]}"#,
    );
    write(&d.join("03-notype.conf"), r#"{"name":"n"}"#);
    write(&d.join("04-list-in-a.conf"), CONFLIST);
    write(&d.join("05-other.txt"), CONFLIST);
    write(&d.join("06-backup.conflist.bak"), CONFLIST);
    write(&d.join(".00-hidden.conflist"), CONFLIST);
    write(&d.join(".00-x.conflist.wgtmp-1-2"), CONFLIST);
    fs::create_dir(d.join("07-dir.conflist")).unwrap();
    assert_eq!(primary_conflist(d), Some(d.join("50-good.conflist")));
    // A symlink to a file counts (libcni's ReadDir does not skip it).
    std::os::unix::fs::symlink(d.join("50-good.conflist"), d.join("10-link.conflist")).unwrap();
    assert_eq!(primary_conflist(d), Some(d.join("10-link.conflist")));
}

#[test]
fn write_atomic_keeps_the_mode_and_leaves_no_temporary_file() {
    let t = TempDir::new("atomic");
    let p = t.path().join("10-x.conflist");
    write_atomic(&p, b"one").unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o644);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    let ino = fs::metadata(&p).unwrap().ino();
    write_atomic(&p, b"two").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"two");
    let m = fs::metadata(&p).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_ne!(m.ino(), ino, "replaced by rename, not rewritten in place");
    assert_eq!(names(t.path()), ["10-x.conflist"]);
    // A missing directory is an error that names the path.
    let e = write_atomic(&t.path().join("no/such/file"), b"x").unwrap_err();
    assert!(e.to_string().contains("no/such"), "{e}");
}

#[test]
fn install_binary_is_atomic_and_skips_identical_bytes() {
    let t = TempDir::new("bin");
    let src = t.path().join("src-wg-cni");
    let bin = t.path().join("bin");
    write(&src, "#!/bin/sh\necho v1\n");
    assert!(install_binary(&src, &bin, "wg-cni").unwrap());
    let target = bin.join("wg-cni");
    let m = fs::metadata(&target).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!(fs::read(&target).unwrap(), fs::read(&src).unwrap());
    // Identical: no write at all (same inode, same mtime).
    assert!(!install_binary(&src, &bin, "wg-cni").unwrap());
    let m2 = fs::metadata(&target).unwrap();
    assert_eq!(
        (m2.ino(), m2.mtime_nsec(), m2.mtime()),
        (m.ino(), m.mtime_nsec(), m.mtime())
    );
    // Identical bytes but not executable: rewritten with 0755.
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(install_binary(&src, &bin, "wg-cni").unwrap());
    assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o755);
    // Different: replaced by a rename (a reader holding the old file keeps it).
    let held = File::open(&target).unwrap();
    write(&src, "#!/bin/sh\necho v2\n");
    assert!(install_binary(&src, &bin, "wg-cni").unwrap());
    assert_eq!(fs::read(&target).unwrap(), b"#!/bin/sh\necho v2\n");
    assert_eq!(io::read_to_string(held).unwrap(), "#!/bin/sh\necho v1\n");
    assert_eq!(names(&bin), ["wg-cni"]);
    let e = install_binary(&t.path().join("missing"), &bin, "wg-cni").unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

// --- the installer -----------------------------------------------------------

/// A node and an image that ships both the plugin and wireguard-go.
struct Node {
    _t: TempDir,
    conf: PathBuf,
    bin: PathBuf,
    src: PathBuf,
    /// The image's wireguard-go.
    wg_src: PathBuf,
    state: PathBuf,
}

fn node(tag: &str) -> Node {
    let t = TempDir::new(tag);
    let conf = t.path().join("etc/cni/net.d");
    let bin = t.path().join("opt/cni/bin");
    let src = t.path().join("image/wg-cni");
    let wg_src = t.path().join("image/wireguard-go");
    let state = t.path().join("var/lib/wg-agent/install.json");
    for d in [&conf, &bin, &parent_dir(&src).to_path_buf()] {
        fs::create_dir_all(d).unwrap();
    }
    write(&src, "wg-cni binary v1");
    write(&wg_src, "wireguard-go v1");
    Node {
        _t: t,
        conf,
        bin,
        src,
        wg_src,
        state,
    }
}

impl Node {
    fn opts(&self, mode: Mode) -> InstallOptions {
        InstallOptions {
            bin_src: self.src.clone(),
            bin_dir: self.bin.clone(),
            conf_dir: self.conf.clone(),
            mode,
            state_file: self.state.clone(),
            userspace_src: Some(self.wg_src.clone()),
            ..InstallOptions::default()
        }
    }
    fn installer(&self, mode: Mode) -> Installer {
        Installer::new(self.opts(mode))
    }
    fn flannel(&self) -> PathBuf {
        let p = self.conf.join("10-flannel.conflist");
        write(&p, FLANNEL);
        p
    }
}

fn entry_count(path: &Path) -> usize {
    let v: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "wg-cni")
        .count()
}

#[test]
fn install_then_uninstall_gives_back_the_exact_bytes() {
    let n = node("roundtrip");
    let f = n.flannel();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap();
    assert_eq!(
        r,
        InstallReport {
            binary: BinaryReport {
                path: n.bin.join("wg-cni"),
                written: true,
                backup: None
            },
            userspace: Some(BinaryReport {
                path: n.bin.join(USERSPACE_BINARY),
                written: true,
                backup: None
            }),
            conflist: Some(f.clone()),
            conflist_changed: true
        }
    );
    assert_eq!(
        fs::read(&f).unwrap(),
        chain(FLANNEL.as_bytes(), &InstallOptions::default().plugin)
            .unwrap()
            .unwrap()
    );
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(fs::read(n.bin.join("wg-cni")).unwrap(), b"wg-cni binary v1");
    // The state is outside the conf dir, and the conf dir holds nothing new.
    assert_eq!(names(&n.conf), ["10-flannel.conflist"]);
    let st = inst.state().unwrap();
    assert_eq!(st.conflist, Some(f.clone()));
    assert_eq!(
        st.binary,
        Some(BinaryRecord {
            path: n.bin.join("wg-cni"),
            backup: None
        })
    );
    // Idempotent.
    let again = inst.install().unwrap();
    assert!(!again.binary.written && !again.conflist_changed);
    assert!(!again.userspace.unwrap().written);
    assert!(!inst.ensure_chained().unwrap());

    let u = inst.uninstall().unwrap();
    assert_eq!(
        u,
        UninstallReport {
            unchained: Some(f.clone()),
            binary: BinaryUninstall::Removed,
            userspace: BinaryUninstall::Removed,
        }
    );
    assert_eq!(fs::read(&f).unwrap(), FLANNEL.as_bytes());
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    assert!(!n.bin.join("wg-cni").exists());
    assert!(!n.state.exists());
    assert_eq!(names(&n.conf), ["10-flannel.conflist"]);
    assert!(names(&n.bin).is_empty());
}

#[test]
fn a_binary_that_was_there_before_is_restored_or_left() {
    // Other bytes: saved, replaced, restored by uninstall.
    let n = node("prior-bin");
    let target = n.bin.join("wg-cni");
    write(&target, "someone else's wg-cni");
    fs::set_permissions(&target, fs::Permissions::from_mode(0o750)).unwrap();
    let inst = n.installer(Mode::Secondary);
    let r = inst.install().unwrap();
    assert!(r.binary.written);
    let backup = r.binary.backup.clone().unwrap();
    assert_eq!(parent_dir(&backup), parent_dir(&n.state));
    assert_eq!(fs::read(&target).unwrap(), b"wg-cni binary v1");
    // An upgrade: the new version overwrites its own binary, no new backup.
    write(&n.src, "wg-cni binary v2");
    let r2 = inst.install().unwrap();
    assert!(r2.binary.written && r2.binary.backup.is_none());
    assert_eq!(inst.uninstall().unwrap().binary, BinaryUninstall::Restored);
    assert_eq!(fs::read(&target).unwrap(), b"someone else's wg-cni");
    assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o750);
    assert!(!backup.exists());

    // Identical bytes: not ours, uninstall leaves it.
    let n = node("prior-same");
    let target = n.bin.join("wg-cni");
    write(&target, "wg-cni binary v1");
    let inst = n.installer(Mode::Secondary);
    assert!(!inst.install().unwrap().binary.written);
    assert_eq!(inst.uninstall().unwrap().binary, BinaryUninstall::NotOurs);
    assert_eq!(fs::read(&target).unwrap(), b"wg-cni binary v1");

    // Replaced by someone else after us: left in place.
    let n = node("replaced-after");
    let inst = n.installer(Mode::Secondary);
    inst.install().unwrap();
    write(&n.bin.join("wg-cni"), "newer, not ours");
    assert_eq!(
        inst.uninstall().unwrap().binary,
        BinaryUninstall::LeftInPlace
    );
    assert_eq!(fs::read(n.bin.join("wg-cni")).unwrap(), b"newer, not ours");
}

// --- the userspace WireGuard binary -------------------------------------------

/// (inode, mtime) of `path`: unchanged means not written.
fn stamp(path: &Path) -> (u64, i64, i64) {
    let m = fs::metadata(path).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

#[test]
fn install_puts_both_binaries_and_a_second_install_writes_nothing() {
    let n = node("both");
    let f = n.flannel();
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap();
    let plugin = n.bin.join("wg-cni");
    let wg = n.bin.join(USERSPACE_BINARY);
    assert!(r.binary.written);
    assert_eq!(
        r.userspace,
        Some(BinaryReport {
            path: wg.clone(),
            written: true,
            backup: None
        })
    );
    assert_eq!(fs::read(&plugin).unwrap(), fs::read(&n.src).unwrap());
    assert_eq!(fs::read(&wg).unwrap(), fs::read(&n.wg_src).unwrap());
    assert_eq!((mode(&plugin), mode(&wg)), (0o755, 0o755));
    assert_eq!(names(&n.bin), ["wg-cni", USERSPACE_BINARY]);
    assert_eq!(
        inst.state().unwrap().userspace,
        Some(BinaryRecord {
            path: wg.clone(),
            backup: None
        })
    );

    // Nothing written the second time: binaries, state file, conflist.
    let before = [&plugin, &wg, &n.state, &f].map(|p| stamp(p));
    let again = inst.install().unwrap();
    assert!(!again.binary.written && !again.conflist_changed);
    assert!(again
        .userspace
        .is_some_and(|u| !u.written && u.backup.is_none()));
    assert_eq!([&plugin, &wg, &n.state, &f].map(|p| stamp(p)), before);

    // An upgrade: our own file, overwritten without a backup.
    write(&n.wg_src, "wireguard-go v2");
    let up = inst.install().unwrap();
    assert_eq!(
        up.userspace,
        Some(BinaryReport {
            path: wg.clone(),
            written: true,
            backup: None
        })
    );
    assert!(!up.binary.written);
    assert_eq!(fs::read(&wg).unwrap(), b"wireguard-go v2");

    let u = inst.uninstall().unwrap();
    assert_eq!(
        (u.binary, u.userspace),
        (BinaryUninstall::Removed, BinaryUninstall::Removed)
    );
    assert!(names(&n.bin).is_empty());
    assert!(!n.state.exists());
}

#[test]
fn a_kernel_only_image_installs_no_userspace_binary() {
    let n = node("kernel-only");
    fs::remove_file(&n.wg_src).unwrap();
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap();
    assert!(r.binary.written);
    assert_eq!(r.userspace, None);
    assert_eq!(names(&n.bin), ["wg-cni"]);
    assert_eq!(inst.state().unwrap().userspace, None);
    assert!(r.to_string().contains("userspace WireGuard: none"), "{r}");
    let u = inst.uninstall().unwrap();
    assert_eq!(u.userspace, BinaryUninstall::NotOurs);
    assert!(names(&n.bin).is_empty());
}

#[test]
fn userspace_src_none_disables_the_userspace_binary() {
    let o =
        InstallOptions::from_lookup(|k| (k == "WG_CNI_USERSPACE_SRC").then(|| "none".to_string()))
            .unwrap();
    assert_eq!(o.userspace_src, None);

    let n = node("userspace-none");
    let inst = Installer::new(InstallOptions {
        userspace_src: None,
        ..n.opts(Mode::Chain)
    });
    let r = inst.install().unwrap();
    assert_eq!(r.userspace, None);
    assert_eq!(names(&n.bin), ["wg-cni"]);
    assert_eq!(
        inst.uninstall().unwrap().userspace,
        BinaryUninstall::NotOurs
    );
}

#[test]
fn a_userspace_binary_that_was_there_before_is_restored_or_left() {
    // Other bytes: saved, replaced, restored. Secondary mode installs the
    // userspace binary too: the plugin needs it whatever the mode.
    let n = node("prior-wg");
    let target = n.bin.join(USERSPACE_BINARY);
    write(&target, "someone else's wireguard-go");
    fs::set_permissions(&target, fs::Permissions::from_mode(0o700)).unwrap();
    // A prior plugin too: the two backups must not collide.
    write(&n.bin.join("wg-cni"), "someone else's wg-cni");
    let inst = n.installer(Mode::Secondary);
    let r = inst.install().unwrap();
    let u = r.userspace.clone().unwrap();
    assert!(u.written);
    let backup = u.backup.clone().unwrap();
    assert_eq!(parent_dir(&backup), parent_dir(&n.state));
    assert_ne!(Some(&backup), r.binary.backup.as_ref());
    assert_eq!(fs::read(&backup).unwrap(), b"someone else's wireguard-go");
    assert_eq!(fs::read(&target).unwrap(), b"wireguard-go v1");
    assert_eq!(mode(&target), 0o755);
    assert_eq!(
        inst.state().unwrap().userspace,
        Some(BinaryRecord {
            path: target.clone(),
            backup: Some(backup.clone())
        })
    );
    let un = inst.uninstall().unwrap();
    assert_eq!(
        (un.binary, un.userspace),
        (BinaryUninstall::Restored, BinaryUninstall::Restored)
    );
    assert_eq!(fs::read(&target).unwrap(), b"someone else's wireguard-go");
    assert_eq!(mode(&target), 0o700);
    assert!(!backup.exists());
    assert!(!n.state.exists());

    // Identical bytes already there: not ours, untouched (mode included).
    let n = node("prior-wg-same");
    let target = n.bin.join(USERSPACE_BINARY);
    write(&target, "wireguard-go v1");
    fs::set_permissions(&target, fs::Permissions::from_mode(0o750)).unwrap();
    let before = stamp(&target);
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap();
    assert_eq!(r.userspace.map(|u| u.written), Some(false));
    assert_eq!(inst.state().unwrap().userspace, None);
    assert_eq!(stamp(&target), before);
    assert_eq!(
        inst.uninstall().unwrap().userspace,
        BinaryUninstall::NotOurs
    );
    assert_eq!(fs::read(&target).unwrap(), b"wireguard-go v1");
    assert_eq!(mode(&target), 0o750);

    // Replaced by someone else after us: left in place.
    let n = node("wg-replaced-after");
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    write(&n.bin.join(USERSPACE_BINARY), "newer, not ours");
    assert_eq!(
        inst.uninstall().unwrap().userspace,
        BinaryUninstall::LeftInPlace
    );
    assert_eq!(names(&n.bin), [USERSPACE_BINARY]);
}

#[test]
fn a_userspace_binary_whose_source_is_gone_stays_installed() {
    // A later image without wireguard-go: what we installed stays
    // recorded; uninstall cannot compare its bytes any more and leaves it.
    let n = node("wg-src-gone");
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    fs::remove_file(&n.wg_src).unwrap();
    let r = inst.install().unwrap();
    assert_eq!(r.userspace, None);
    assert!(inst.state().unwrap().userspace.is_some());
    assert!(n.bin.join(USERSPACE_BINARY).exists());
    let u = inst.uninstall().unwrap();
    assert_eq!(
        (u.binary, u.userspace),
        (BinaryUninstall::Removed, BinaryUninstall::LeftInPlace)
    );
    assert_eq!(names(&n.bin), [USERSPACE_BINARY]);
}

#[test]
fn a_state_file_of_the_previous_version_loads_and_upgrades() {
    let n = node("old-state");
    let f = n.flannel();
    // What the version before the userspace binary wrote: no "userspace".
    let plugin = n.bin.join("wg-cni");
    write(&plugin, "wg-cni binary v0");
    let old = format!(
        "{{\n  \"binary\": {{\n    \"path\": {},\n    \"backup\": null\n  }},\n  \"conflist\": null\n}}\n",
        serde_json::to_string(&plugin).unwrap()
    );
    fs::create_dir_all(parent_dir(&n.state)).unwrap();
    write(&n.state, &old);
    let inst = n.installer(Mode::Chain);
    assert_eq!(
        inst.state().unwrap(),
        InstallState {
            binary: Some(BinaryRecord {
                path: plugin.clone(),
                backup: None
            }),
            conflist: None,
            userspace: None,
        }
    );
    // The upgrade: the plugin is ours (no backup of v0), the userspace
    // binary is new.
    let r = inst.install().unwrap();
    assert!(r.binary.written && r.binary.backup.is_none());
    assert!(r.userspace.is_some_and(|u| u.written && u.backup.is_none()));
    assert_eq!(r.conflist, Some(f));
    let u = inst.uninstall().unwrap();
    assert_eq!(
        (u.binary, u.userspace),
        (BinaryUninstall::Removed, BinaryUninstall::Removed)
    );
    assert!(names(&n.bin).is_empty());
}

#[test]
fn the_reports_name_the_userspace_binary() {
    let n = node("report");
    n.flannel();
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap().to_string();
    assert!(
        r.contains(&format!(
            "userspace WireGuard: {} installed",
            n.bin.join(USERSPACE_BINARY).display()
        )),
        "{r}"
    );
    assert!(r.contains("chained into"), "{r}");
    let u = inst.uninstall().unwrap().to_string();
    assert!(u.contains("userspace WireGuard: removed"), "{u}");
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[test]
fn install_binary_replaces_a_running_binary_without_writing_into_it() {
    let Some(sleep) = find_in_path("sleep") else {
        eprintln!("no sleep in PATH: skipped");
        return;
    };
    let t = TempDir::new("busy");
    let src = t.path().join("src");
    let bin = t.path().join("bin");
    fs::copy(&sleep, &src).unwrap();
    assert!(install_binary(&src, &bin, USERSPACE_BINARY).unwrap());
    let target = bin.join(USERSPACE_BINARY);
    let old = fs::read(&target).unwrap();
    // A file just written can be briefly "busy" for exec: another test
    // thread forking while it was open holds a copy of the descriptor
    // until that child's own exec.
    let mut child = {
        let mut tries = 0;
        loop {
            match std::process::Command::new(&target).arg("30").spawn() {
                Ok(c) => break c,
                Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("running {}: {e}", target.display()),
            }
        }
    };
    let mut new = old.clone();
    new.extend_from_slice(b"v2");
    fs::write(&src, &new).unwrap();
    let replaced = install_binary(&src, &bin, USERSPACE_BINARY);
    let running = fs::read(format!("/proc/{}/exe", child.id()));
    let alive = child.try_wait().map(|s| s.is_none());
    let _ = child.kill();
    let _ = child.wait();
    // Writing into it would have failed (ETXTBSY) or changed the running
    // process's bytes.
    assert!(replaced.unwrap());
    assert_eq!(fs::read(&target).unwrap(), new);
    assert!(alive.unwrap(), "the daemon kept running");
    assert!(
        running.unwrap() == old,
        "the daemon still runs the old bytes"
    );
    assert_eq!(mode(&target), 0o755);
    assert_eq!(names(&bin), [USERSPACE_BINARY]);
}

#[test]
fn an_entry_that_was_there_before_is_not_ours() {
    let n = node("prior-entry");
    let f = n.conf.join("10-x.conflist");
    let by_hand =
        r#"{"name":"n","plugins":[{"type":"bridge"},{"type":"wg-cni","address":"10.0.0.2/24"}]}"#;
    write(&f, by_hand);
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap();
    assert!(!r.conflist_changed && r.conflist.is_none());
    assert_eq!(inst.uninstall().unwrap().unchained, None);
    assert_eq!(fs::read_to_string(&f).unwrap(), by_hand);
}

#[test]
fn ensure_chained_reinserts_after_a_rewrite() {
    let n = node("rewrite");
    let f = n.flannel();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    assert!(!inst.ensure_chained().unwrap());
    write(&f, FLANNEL); // the primary CNI restarts and writes its file again
    assert!(inst.ensure_chained().unwrap());
    assert_eq!(entry_count(&f), 1);
    assert!(!inst.ensure_chained().unwrap());
    assert_eq!(inst.uninstall().unwrap().unchained, Some(f.clone()));
    assert_eq!(fs::read(&f).unwrap(), FLANNEL.as_bytes());
}

#[test]
fn a_new_primary_is_chained_and_the_old_one_cleaned() {
    let n = node("switch");
    let old = n.flannel();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    let new = n.conf.join("05-calico.conflist");
    write(&new, CONFLIST);
    assert!(inst.ensure_chained().unwrap());
    assert_eq!(entry_count(&new), 1);
    assert_eq!(fs::read(&old).unwrap(), FLANNEL.as_bytes());
    assert_eq!(inst.state().unwrap().conflist, Some(new.clone()));
    // The new primary goes away: the old file is the primary again.
    fs::remove_file(&new).unwrap();
    assert!(inst.ensure_chained().unwrap());
    assert_eq!(entry_count(&old), 1);
    inst.uninstall().unwrap();
    assert_eq!(fs::read(&old).unwrap(), FLANNEL.as_bytes());
}

#[test]
fn a_symlinked_conflist_is_edited_where_it_points() {
    let n = node("symlink");
    let real_dir = parent_dir(&n.conf).join("real");
    fs::create_dir_all(&real_dir).unwrap();
    let real = real_dir.join("flannel.conflist");
    write(&real, FLANNEL);
    let link = n.conf.join("10-flannel.conflist");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(entry_count(&real), 1);
    inst.uninstall().unwrap();
    assert_eq!(fs::read(&real).unwrap(), FLANNEL.as_bytes());
}

#[test]
fn a_single_plugin_conf_is_refused_and_left_alone() {
    let n = node("conf");
    let f = n.conf.join("10-bridge.conf");
    write(&f, CONF);
    let inst = n.installer(Mode::Chain);
    let e = inst.install().unwrap_err();
    assert!(
        matches!(&e, Error::SingleConf { path } if path == &f),
        "{e}"
    );
    assert!(
        e.to_string().contains("10-bridge.conf") && e.to_string().contains("WG_CNI_MODE=secondary"),
        "{e}"
    );
    assert_eq!(fs::read_to_string(&f).unwrap(), CONF);
    assert_eq!(names(&n.conf), ["10-bridge.conf"]);
}

#[test]
fn no_primary_yet_is_not_an_error() {
    let n = node("empty");
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap();
    assert!(r.binary.written && r.conflist.is_none() && !r.conflist_changed);
    let f = n.flannel();
    assert!(inst.ensure_chained().unwrap());
    assert_eq!(entry_count(&f), 1);
}

#[test]
fn secondary_mode_touches_no_conflist() {
    let n = node("secondary");
    let f = n.flannel();
    let before = fs::metadata(&f).unwrap();
    let inst = n.installer(Mode::Secondary);
    let r = inst.install().unwrap();
    assert!(r.binary.written && r.conflist.is_none() && !r.conflist_changed);
    assert!(!inst.ensure_chained().unwrap());
    assert_eq!(inst.uninstall().unwrap().unchained, None);
    let after = fs::metadata(&f).unwrap();
    assert_eq!(fs::read(&f).unwrap(), FLANNEL.as_bytes());
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (before.ino(), before.mtime(), before.mtime_nsec())
    );
    assert_eq!(names(&n.conf), ["10-flannel.conflist"]);
}

#[test]
fn switching_to_secondary_takes_our_entry_out() {
    let n = node("to-secondary");
    let f = n.flannel();
    n.installer(Mode::Chain).install().unwrap();
    assert_eq!(entry_count(&f), 1);
    let inst = n.installer(Mode::Secondary);
    assert!(inst.install().unwrap().conflist_changed);
    assert_eq!(fs::read(&f).unwrap(), FLANNEL.as_bytes());
}

#[test]
fn watch_reinserts_after_the_primary_rewrites_its_file() {
    let n = node("watch");
    let f = n.flannel();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = {
        let inst = inst.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            inst.watch(&stop, |r| {
                let _ = tx.send(r.as_ref().map(|c| *c).map_err(|e| e.to_string()));
            })
        })
    };
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(2)).unwrap(),
        Ok(false),
        "the first check"
    );

    let mut latencies = Vec::new();
    for round in 0..3 {
        let started = Instant::now();
        if round == 1 {
            // Atomic writers (rename over) as well as flannel's truncate+write.
            let tmp = n.conf.join(".flannel.tmp");
            write(&tmp, FLANNEL);
            fs::rename(&tmp, &f).unwrap();
        } else {
            let writer = {
                let f = f.clone();
                std::thread::spawn(move || write(&f, FLANNEL))
            };
            writer.join().unwrap();
        }
        loop {
            if fs::read(&f).is_ok_and(|b| b != FLANNEL.as_bytes() && entry_count(&f) == 1) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "not re-chained within 2 s (round {round})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        latencies.push(started.elapsed());
        // Let the watch see its own rename before the next round.
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("re-chained after {latencies:?}");
    assert!(rx.try_iter().any(|r| r == Ok(true)));

    let stopping = Instant::now();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap().unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "stop honoured in {:?}",
        stopping.elapsed()
    );
    assert_eq!(names(&n.conf), ["10-flannel.conflist"]);
}

#[test]
fn watch_creates_a_missing_conf_dir_and_chains_what_appears() {
    let n = node("watch-late");
    fs::remove_dir_all(&n.conf).unwrap();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let inst = inst.clone();
        let stop = stop.clone();
        std::thread::spawn(move || inst.watch(&stop, |_| {}))
    };
    let started = Instant::now();
    while !n.conf.is_dir() {
        assert!(started.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(10));
    }
    let f = n.flannel();
    while !fs::read(&f).is_ok_and(|b| b != FLANNEL.as_bytes()) {
        assert!(started.elapsed() < Duration::from_secs(3), "not chained");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(entry_count(&f), 1);
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap().unwrap();
}

// --- the watch puts the binaries back -------------------------------------------

/// A watch of `inst` on a thread: its results, in order, and a way to stop it.
struct Watching {
    stop: Arc<AtomicBool>,
    rx: std::sync::mpsc::Receiver<Result<bool, String>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Watching {
    fn start(inst: &Installer) -> Watching {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let inst = inst.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                inst.watch(&stop, |r| {
                    let _ = tx.send(r.as_ref().map(|c| *c).map_err(|e| e.to_string()));
                })
            })
        };
        Watching {
            stop,
            rx,
            thread: Some(thread),
        }
    }

    /// The result of the next check.
    fn next(&self) -> Result<bool, String> {
        self.rx
            .recv_timeout(Duration::from_secs(3))
            .expect("a check within 3 s")
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.unwrap().unwrap();
            }
        }
    }
}

/// Waits up to 2 s for `path` to hold `bytes` with mode 0755.
fn comes_back(path: &Path, bytes: &[u8]) -> Duration {
    let t = Instant::now();
    while !(fs::read(path).is_ok_and(|b| b == bytes) && mode(path) == 0o755) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{} not put back within 2 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t.elapsed()
}

#[test]
fn watch_puts_a_deleted_or_replaced_binary_back() {
    let n = node("watch-bin");
    let f = n.flannel();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    let plugin = n.bin.join("wg-cni");
    let wg = n.bin.join(USERSPACE_BINARY);
    let (ours, wg_ours) = (fs::read(&n.src).unwrap(), fs::read(&n.wg_src).unwrap());
    let w = Watching::start(&inst);
    assert_eq!(w.next(), Ok(false), "the first check: all in place");

    let mut took = Vec::new();
    // Deleted (the plugin, then its companion).
    fs::remove_file(&plugin).unwrap();
    took.push(comes_back(&plugin, &ours));
    fs::remove_file(&wg).unwrap();
    took.push(comes_back(&wg, &wg_ours));
    // Replaced by other bytes, written in place and renamed over it.
    write(&plugin, "not the image's wg-cni");
    took.push(comes_back(&plugin, &ours));
    let tmp = n.bin.join(".elsewhere");
    write(&tmp, "not the image's wireguard-go");
    fs::rename(&tmp, &wg).unwrap();
    took.push(comes_back(&wg, &wg_ours));
    // Its mode changed.
    fs::set_permissions(&plugin, fs::Permissions::from_mode(0o644)).unwrap();
    took.push(comes_back(&plugin, &ours));
    eprintln!("binaries put back after {took:?}");
    assert!(w.rx.try_iter().any(|r| r == Ok(true)));
    drop(w);
    // Nothing else was written: no temporary file, the conflist untouched,
    // the records unchanged (uninstall still removes both).
    assert_eq!(names(&n.bin), ["wg-cni", USERSPACE_BINARY]);
    assert_eq!(entry_count(&f), 1);
    let u = inst.uninstall().unwrap();
    assert_eq!(
        (u.binary, u.userspace),
        (BinaryUninstall::Removed, BinaryUninstall::Removed)
    );
    assert!(names(&n.bin).is_empty());
    assert_eq!(fs::read(&f).unwrap(), FLANNEL.as_bytes());
}

#[test]
fn a_restarted_watch_puts_missing_binaries_back_before_any_event() {
    // The container restarts (liveness, OOM): no init container runs, the
    // agent's watch starts with the binaries gone.
    let n = node("watch-restart");
    let f = n.flannel();
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    let plugin = n.bin.join("wg-cni");
    let wg = n.bin.join(USERSPACE_BINARY);
    fs::remove_file(&plugin).unwrap();
    fs::remove_file(&wg).unwrap();
    let w = Watching::start(&inst);
    assert_eq!(w.next(), Ok(true), "the first check puts them back");
    assert_eq!(fs::read(&plugin).unwrap(), fs::read(&n.src).unwrap());
    assert_eq!(fs::read(&wg).unwrap(), fs::read(&n.wg_src).unwrap());
    assert_eq!((mode(&plugin), mode(&wg)), (0o755, 0o755));
    drop(w);

    // All in place: a restarted watch writes nothing.
    let before = [&plugin, &wg, &n.state, &f].map(|p| stamp(p));
    let w = Watching::start(&inst);
    assert_eq!(w.next(), Ok(false));
    drop(w);
    assert_eq!([&plugin, &wg, &n.state, &f].map(|p| stamp(p)), before);
}

#[test]
fn the_watch_keeps_the_installers_ownership_rules() {
    // A wg-cni that was there before (other bytes): saved by install; the
    // watch puts ours back when it goes, and uninstall still restores theirs.
    let n = node("watch-owner");
    let plugin = n.bin.join("wg-cni");
    write(&plugin, "someone else's wg-cni");
    // The companion was there before with our bytes: not ours.
    let wg = n.bin.join(USERSPACE_BINARY);
    write(&wg, "wireguard-go v1");
    fs::set_permissions(&wg, fs::Permissions::from_mode(0o700)).unwrap();
    let inst = n.installer(Mode::Secondary);
    let r = inst.install().unwrap();
    assert!(r.binary.backup.is_some());
    assert!(!r.userspace.unwrap().written);
    let wg_stamp = stamp(&wg);
    let w = Watching::start(&inst);
    assert_eq!(w.next(), Ok(false), "not ours, our bytes: left as it is");
    fs::remove_file(&plugin).unwrap();
    comes_back(&plugin, b"wg-cni binary v1");
    drop(w);
    assert_eq!(stamp(&wg), wg_stamp);
    assert_eq!(mode(&wg), 0o700);
    assert_eq!(inst.state().unwrap().userspace, None);
    let u = inst.uninstall().unwrap();
    assert_eq!(u.binary, BinaryUninstall::Restored);
    assert_eq!(u.userspace, BinaryUninstall::NotOurs);
    assert_eq!(fs::read(&plugin).unwrap(), b"someone else's wg-cni");
    assert_eq!(fs::read(&wg).unwrap(), b"wireguard-go v1");
}

#[test]
fn ensure_binaries_leaves_a_kernel_only_image_alone() {
    let n = node("ensure-kernel");
    fs::remove_file(&n.wg_src).unwrap();
    let inst = n.installer(Mode::Secondary);
    inst.install().unwrap();
    assert!(!inst.ensure_binaries().unwrap());
    assert_eq!(names(&n.bin), ["wg-cni"]);
    fs::remove_file(n.bin.join("wg-cni")).unwrap();
    assert!(inst.ensure_binaries().unwrap());
    assert_eq!(names(&n.bin), ["wg-cni"]);
    // The image's plugin gone (never expected): an error naming it.
    fs::remove_file(&n.src).unwrap();
    let e = inst.ensure_binaries().unwrap_err().to_string();
    assert!(e.contains(&n.src.display().to_string()), "{e}");
}

#[test]
fn same_bytes_compares_whole_files_in_chunks() {
    let t = TempDir::new("same");
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&a, &big).unwrap();
    assert!(!same_bytes(&a, &b).unwrap(), "missing");
    fs::write(&b, &big).unwrap();
    assert!(same_bytes(&a, &b).unwrap());
    let mut other = big.clone();
    other[150_000] ^= 1;
    fs::write(&b, &other).unwrap();
    assert!(!same_bytes(&a, &b).unwrap(), "one byte in the third chunk");
    fs::write(&b, &big[..199_999]).unwrap();
    assert!(!same_bytes(&a, &b).unwrap(), "shorter");
    fs::remove_file(&b).unwrap();
    fs::create_dir(&b).unwrap();
    assert!(!same_bytes(&a, &b).unwrap(), "a directory");
}

// --- uninstall on delete: the decision at SIGTERM -------------------------------

mod removal_decision {
    use super::removal::{decide, DaemonSetWatch, Gone, Limits, Owner, Verdict, Watched};
    use crate::testutil::{apiserver, status, Log, Seen};
    use serde_json::{json, Value};
    use std::time::Duration;
    use tokio::time::Instant;

    const DS: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets";
    const DS_GET: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets/wg-agent";
    const NS_GET: &str = "/api/v1/namespaces/kube-system";

    fn owner() -> Owner {
        Owner::from_lookup(|_| None)
    }

    fn limits(wait_ms: u64) -> Limits {
        Limits {
            request: Duration::from_secs(2),
            wait: Duration::from_millis(wait_ms),
        }
    }

    fn meta(name: &str, rv: u32, deleting: bool) -> Value {
        let mut m = json!({"name": name, "uid": format!("uid-{name}"),
                           "resourceVersion": rv.to_string(),
                           "creationTimestamp": "2026-12-07T10:00:00Z"});
        if deleting {
            m["deletionTimestamp"] = json!("2026-12-07T12:00:00Z");
        }
        m
    }

    fn ds(rv: u32, deleting: bool) -> (u16, Value) {
        let mut m = meta("wg-agent", rv, deleting);
        m["namespace"] = json!("kube-system");
        (
            200,
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": m}),
        )
    }

    fn namespace(deleting: bool) -> (u16, Value) {
        (
            200,
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": meta("kube-system", 3, deleting)}),
        )
    }

    /// The apiserver's own NotFound for `kind` `name`.
    fn not_found(kind: &str, name: &str) -> (u16, Value) {
        let (code, mut v) = status(404, "NotFound");
        v["details"] = json!({"name": name, "kind": kind});
        (code, v)
    }

    fn list(items: Vec<Value>) -> (u16, Value) {
        (
            200,
            json!({"apiVersion": "apps/v1", "kind": "DaemonSetList",
                   "metadata": {"resourceVersion": "10"}, "items": items}),
        )
    }

    fn event(ty: &str, (_, obj): (u16, Value)) -> (u16, Value) {
        (200, json!({"type": ty, "object": obj}))
    }

    /// An apiserver answering the DaemonSet's GET with `get`, its
    /// namespace's with `ns`, the watch's list with `list`, and its watch
    /// requests with `watches` in turn, then 403 (its Role gone).
    fn server(
        get: (u16, Value),
        ns: (u16, Value),
        list: (u16, Value),
        watches: Vec<(u16, Value)>,
    ) -> (kube::Client, Log) {
        let mut watches = watches.into_iter();
        apiserver(move |s: &Seen| {
            if s.path == DS_GET {
                get.clone()
            } else if s.path == NS_GET {
                ns.clone()
            } else if s.path == DS && s.query.contains("watch=true") {
                assert!(s.query.contains("metadata.name%3Dwg-agent"), "{}", s.query);
                watches.next().unwrap_or_else(|| status(403, "Forbidden"))
            } else if s.path == DS {
                assert!(s.query.contains("metadata.name%3Dwg-agent"), "{}", s.query);
                list.clone()
            } else {
                status(404, "NotFound")
            }
        })
    }

    /// Waits (up to 5 s) until the watch knows `want`.
    async fn until(w: &DaemonSetWatch, want: Watched) {
        let t = Instant::now();
        while w.current() != want {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the watch knows {:?}, not {want:?}",
                w.current()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    const PRESENT: Watched = Watched {
        listed: true,
        gone: false,
    };
    const GONE: Watched = Watched {
        listed: true,
        gone: true,
    };

    #[tokio::test]
    async fn a_refusal_or_an_error_at_shutdown_keeps_the_install() {
        // The issue's case: the apiserver answers 401 or 403 (or fails) at
        // SIGTERM, and nothing says the DaemonSet is going: a container
        // restart must find wg-cni installed.
        for code in [401, 403, 500, 503] {
            let reason = match code {
                401 => "Unauthorized",
                403 => "Forbidden",
                _ => "InternalError",
            };
            // No watch at all, then a watch whose list was refused too.
            let (client, log) = server(
                status(code, reason),
                namespace(true),
                status(code, reason),
                vec![],
            );
            let v = decide(&client, &owner(), None, limits(5000)).await;
            assert!(matches!(v, Verdict::Keep(_)), "{code}: {v:?}");
            assert!(v.to_string().contains("cannot read the DaemonSet"), "{v}");
            let w = DaemonSetWatch::start(client.clone(), &owner());
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t = Instant::now();
            let v = decide(&client, &owner(), Some(&w), limits(5000)).await;
            assert!(matches!(v, Verdict::Keep(_)), "{code}: {v:?}");
            assert!(v.to_string().contains("never listed"), "{v}");
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "no wait without a watch"
            );
            assert!(log.lines().contains(&format!("GET {DS_GET}")));
            // A refused DaemonSet is not a reason to look at the namespace.
            assert!(!log.lines().contains(&format!("GET {NS_GET}")));
        }
    }

    #[tokio::test]
    async fn a_refusal_with_a_quiet_watch_waits_then_keeps() {
        // The watch listed the DaemonSet, then was refused (its Role
        // removed); the GET at SIGTERM is refused: wait for news, keep.
        let (client, _log) = server(
            status(403, "Forbidden"),
            namespace(false),
            list(vec![ds(7, false).1]),
            vec![],
        );
        let w = DaemonSetWatch::start(client.clone(), &owner());
        until(&w, PRESENT).await;
        let t = Instant::now();
        let v = decide(&client, &owner(), Some(&w), limits(400)).await;
        assert!(matches!(v, Verdict::Keep(_)), "{v:?}");
        assert!(v.to_string().contains("saw no deletion"), "{v}");
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn not_found_uninstalls_but_not_any_404() {
        let (client, _) = server(
            not_found("daemonsets", "wg-agent"),
            namespace(false),
            list(vec![]),
            vec![],
        );
        let v = decide(&client, &owner(), None, limits(0)).await;
        assert_eq!(v, Verdict::Uninstall(Gone::NotFound));
        // A 404 that is not the apiserver's NotFound of this DaemonSet (a
        // proxy, a wrong address, another object): unknown, kept.
        for reply in [
            status(404, "NotFound"),
            not_found("daemonsets", "other"),
            (404, json!("404 page not found")),
        ] {
            let (client, _) = server(reply.clone(), namespace(false), list(vec![]), vec![]);
            let v = decide(&client, &owner(), None, limits(0)).await;
            assert!(matches!(v, Verdict::Keep(_)), "{reply:?}: {v:?}");
        }
    }

    #[tokio::test]
    async fn a_deletion_timestamp_uninstalls() {
        let (client, _) = server(ds(9, true), namespace(false), list(vec![]), vec![]);
        let v = decide(&client, &owner(), None, limits(0)).await;
        assert_eq!(v, Verdict::Uninstall(Gone::Deleting));
    }

    #[tokio::test]
    async fn the_namespace_being_deleted_uninstalls_and_a_rolling_update_keeps() {
        // `kubectl delete namespace`: the namespace controller stops the
        // pods before it deletes the DaemonSet.
        let (client, log) = server(ds(9, false), namespace(true), list(vec![]), vec![]);
        let v = decide(&client, &owner(), None, limits(0)).await;
        assert_eq!(v, Verdict::Uninstall(Gone::NamespaceDeleting));
        assert_eq!(
            log.lines(),
            [format!("GET {DS_GET}"), format!("GET {NS_GET}")]
        );
        // A rolling update, a drain, a restart: both there.
        let (client, _) = server(ds(9, false), namespace(false), list(vec![]), vec![]);
        let v = decide(&client, &owner(), None, limits(0)).await;
        assert_eq!(v, Verdict::Keep("the DaemonSet is there".into()));
        // The namespace unreadable (an older Role): the DaemonSet is there.
        let (client, _) = server(ds(9, false), status(403, "Forbidden"), list(vec![]), vec![]);
        let v = decide(&client, &owner(), None, limits(0)).await;
        assert!(matches!(v, Verdict::Keep(_)), "{v:?}");
    }

    #[tokio::test]
    async fn a_refusal_after_the_watch_saw_the_deletion_uninstalls() {
        // `kubectl delete -f manifests/`: the watch, opened before the RBAC
        // objects went, sees the DaemonSet deleted; the GET is refused.
        let (client, _) = server(
            status(403, "Forbidden"),
            namespace(true),
            list(vec![ds(7, false).1]),
            vec![event("DELETED", ds(11, false))],
        );
        let w = DaemonSetWatch::start(client.clone(), &owner());
        until(&w, GONE).await;
        let t = Instant::now();
        let v = decide(&client, &owner(), Some(&w), limits(5000)).await;
        assert_eq!(v, Verdict::Uninstall(Gone::SeenByWatch));
        assert!(t.elapsed() < Duration::from_secs(1));
        // A deletionTimestamp (foreground deletion) counts the same; so
        // does a list without it; a 401 is refused like a 403.
        for (l, watches) in [
            (
                list(vec![ds(7, false).1]),
                vec![event("MODIFIED", ds(12, true))],
            ),
            (list(vec![]), vec![]),
            (list(vec![ds(7, true).1]), vec![]),
        ] {
            let (client, _) = server(status(401, "Unauthorized"), namespace(false), l, watches);
            let w = DaemonSetWatch::start(client.clone(), &owner());
            until(&w, GONE).await;
            let v = decide(&client, &owner(), Some(&w), limits(5000)).await;
            assert_eq!(v, Verdict::Uninstall(Gone::SeenByWatch));
        }
    }

    #[tokio::test]
    async fn the_watch_seeing_the_deletion_during_the_wait_uninstalls() {
        // SIGTERM came first (the namespace controller stops the pods as
        // soon as the namespace is deleted); kubectl deletes the DaemonSet
        // a moment later. Here the watch fails twice (backoff ~0.75 s)
        // before it delivers the deletion.
        let (client, _) = server(
            status(403, "Forbidden"),
            namespace(true),
            list(vec![ds(7, false).1]),
            vec![
                status(500, "InternalError"),
                status(500, "InternalError"),
                event("DELETED", ds(11, false)),
            ],
        );
        let w = DaemonSetWatch::start(client.clone(), &owner());
        until(&w, PRESENT).await;
        let t = Instant::now();
        let v = decide(&client, &owner(), Some(&w), limits(5000)).await;
        assert_eq!(v, Verdict::Uninstall(Gone::SeenByWatch));
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_daemonset_created_again_is_not_gone() {
        // Deleted and created again (`kubectl replace --force`): the latest
        // news wins.
        let (client, log) = server(
            ds(20, false),
            namespace(false),
            list(vec![ds(7, false).1]),
            vec![
                event("DELETED", ds(11, false)),
                event("ADDED", ds(12, false)),
            ],
        );
        let w = DaemonSetWatch::start(client.clone(), &owner());
        let t = Instant::now();
        while log
            .all()
            .iter()
            .filter(|s| s.query.contains("watch=true"))
            .count()
            < 3
        {
            assert!(t.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        until(&w, PRESENT).await;
        let v = decide(&client, &owner(), Some(&w), limits(0)).await;
        assert_eq!(v, Verdict::Keep("the DaemonSet is there".into()));
    }

    #[test]
    fn the_owner_comes_from_the_environment() {
        assert_eq!(
            owner(),
            Owner {
                namespace: "kube-system".into(),
                daemonset: "wg-agent".into()
            }
        );
        let o = Owner::from_lookup(|k| match k {
            "POD_NAMESPACE" => Some("wg".into()),
            "WG_AGENT_DAEMONSET" => Some("agent".into()),
            _ => None,
        });
        assert_eq!(
            (o.namespace.as_str(), o.daemonset.as_str()),
            ("wg", "agent")
        );
    }
}

// --- options ------------------------------------------------------------------

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
