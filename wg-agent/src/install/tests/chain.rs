//! `chain` and `unchain` on hand-written conflists: the text they leave.

use super::*;

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
