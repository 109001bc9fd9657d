use super::*;
use proptest::prelude::*;

#[test]
fn durations() {
    for (s, secs) in [
        ("0", 0),
        ("0s", 0),
        ("25s", 25),
        ("1m", 60),
        ("1m30s", 90),
        ("2h", 7200),
        ("1h1s", 3601),
        ("90s", 90),
        ("18h12m15s", 65535),
        ("0025s", 25),
    ] {
        assert_eq!(s.parse::<Duration>().unwrap().as_secs(), secs, "{s}");
    }
    for bad in [
        "",
        "25",
        "-1s",
        "1.5s",
        "1500ms",
        "1s1m",
        "1s1s",
        "18h12m16s",
        "65536s",
        "1d",
        " 1s",
        "s",
        "99999999999999999999h",
    ] {
        assert!(bad.parse::<Duration>().is_err(), "{bad:?}");
    }
    assert_eq!(Duration::from_secs(90).to_string(), "1m30s");
    assert_eq!(Duration::from_secs(3600).to_string(), "1h");
    assert_eq!(Duration::ZERO.to_string(), "0s");
    assert_eq!(Duration::ZERO.keepalive(), None);
    assert_eq!(Duration::from_secs(25).keepalive(), Some(25));
    let d: Duration = serde_json::from_str("25").unwrap();
    assert_eq!(serde_json::to_string(&d).unwrap(), "\"25s\"");
    assert!(serde_json::from_str::<Duration>("65536").is_err());
    assert!(serde_json::from_str::<Duration>("-1").is_err());
    assert!(serde_json::from_str::<Duration>("1.5").is_err());
    assert!(Duration::try_from(std::time::Duration::from_millis(1500)).is_err());
}

proptest! {
    #[test]
    fn duration_display_parse_round_trip(secs in any::<u16>()) {
        let d = Duration::from_secs(secs);
        prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        let json = serde_json::to_value(d).unwrap();
        prop_assert_eq!(serde_json::from_value::<Duration>(json).unwrap(), d);
        prop_assert_eq!(serde_json::from_value::<Duration>(serde_json::json!(secs)).unwrap(), d);
    }

    /// Any `[Nh][Nm][Ns]` text means what the arithmetic says, and is
    /// refused exactly when that is over 65535 (the CEL rule's bound).
    #[test]
    fn duration_parts(h in proptest::option::of(0u64..30), m in proptest::option::of(0u64..2000), s in proptest::option::of(0u64..70000)) {
        prop_assume!(h.is_some() || m.is_some() || s.is_some());
        let text = format!(
            "{}{}{}",
            h.map(|v| format!("{v}h")).unwrap_or_default(),
            m.map(|v| format!("{v}m")).unwrap_or_default(),
            s.map(|v| format!("{v}s")).unwrap_or_default(),
        );
        let total = h.unwrap_or(0) * 3600 + m.unwrap_or(0) * 60 + s.unwrap_or(0);
        match text.parse::<Duration>() {
            Ok(d) => prop_assert_eq!(u64::from(d.as_secs()), total),
            Err(_) => prop_assert!(total > 65535),
        }
    }

    /// Whatever the text, parsing never panics, and what it accepts
    /// prints back to a text that parses to the same value.
    #[test]
    fn duration_any_text(text in "[0-9hms.]{0,12}") {
        if let Ok(d) = text.parse::<Duration>() {
            prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
    }
}

#[test]
fn mtu() {
    assert_eq!(serde_json::from_str::<Mtu>("\"auto\"").unwrap(), Mtu::Auto);
    assert_eq!(
        serde_json::from_str::<Mtu>("1420").unwrap(),
        Mtu::Bytes(1420)
    );
    assert_eq!(serde_json::to_string(&Mtu::Bytes(1420)).unwrap(), "1420");
    assert_eq!(serde_json::to_string(&Mtu::Auto).unwrap(), "\"auto\"");
    for bad in ["1279", "65536", "\"1420\"", "\"Auto\"", "-1", "true"] {
        assert!(serde_json::from_str::<Mtu>(bad).is_err(), "{bad}");
    }
    assert_eq!(Mtu::default(), Mtu::Auto);
}

/// The conversions and messages callers see: seconds in, seconds out, and
/// a refusal that says what is wanted.
#[test]
fn conversions_and_messages() {
    assert_eq!(Duration::from(25u16).as_secs(), 25);
    assert_eq!(
        Duration::from(25u16).to_std(),
        std::time::Duration::from_secs(25)
    );
    assert_eq!(Duration::from(25u16).keepalive(), Some(25));
    let e = "25x".parse::<Duration>().unwrap_err();
    assert!(e.to_string().contains("\"25x\" is not a duration"), "{e}");
    let e = serde_json::from_str::<Duration>("true").unwrap_err();
    assert!(
        e.to_string()
            .contains("whole seconds 0..=65535 or a duration"),
        "{e}"
    );
    let e = serde_json::from_str::<Mtu>("true").unwrap_err();
    assert!(e.to_string().contains("an MTU in 1280..=65535"), "{e}");
    assert_eq!(
        Mtu::Bytes(1279).check().unwrap_err().to_string(),
        "1279 is below 1280 (IPv6's minimum)"
    );
    assert!(Mtu::Bytes(1280).check().is_ok() && Mtu::Auto.check().is_ok());
    assert_eq!(Mtu::Auto.to_string(), "auto");
    assert_eq!(Mtu::Bytes(1420).to_string(), "1420");
}

/// `auto` is the underlay's MTU less WireGuard's 80 bytes, never below
/// IPv6's minimum, 1420 when the underlay is unknown; a number is itself.
#[test]
fn mtu_resolves() {
    assert_eq!(Mtu::Auto.resolve(Some(1500)), 1420);
    assert_eq!(Mtu::Auto.resolve(Some(9000)), 8920);
    assert_eq!(Mtu::Auto.resolve(Some(1300)), 1280);
    assert_eq!(Mtu::Auto.resolve(None), 1420);
    assert_eq!(Mtu::Bytes(1380).resolve(Some(9000)), 1380);
}

/// With the `schema` feature each unit carries its CRD schema inline,
/// named, with the CEL rule that mirrors its parser.
#[cfg(feature = "schema")]
#[test]
fn schemas() {
    let mut g = schemars::SchemaGenerator::default();
    assert_eq!(Duration::schema_name(), "Duration");
    assert_eq!(Mtu::schema_name(), "Mtu");
    assert!(Duration::inline_schema() && Mtu::inline_schema());
    let d = serde_json::to_value(Duration::json_schema(&mut g)).unwrap();
    assert_eq!(d["x-kubernetes-int-or-string"], true);
    assert_eq!(d["x-kubernetes-validations"][0]["rule"], DURATION_RULE);
    let m = serde_json::to_value(Mtu::json_schema(&mut g)).unwrap();
    assert!(m["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .is_some_and(|r| r.contains("self >= 1280")));
    assert!(m["x-kubernetes-validations"][0]["message"]
        .as_str()
        .is_some_and(|r| r.contains("\"auto\"")));
}
