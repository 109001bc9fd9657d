//! `chain` and `unchain` on generated conflists (proptest).

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
