//! Durations as the original wireguard-cni wrote them (Go's
//! `time.ParseDuration`: "25s", "1m30s") or whole seconds.

use std::time::Duration;

use serde_json::Value;

use crate::units;

/// Parse a keepalive: integer seconds, or a Go-style duration ("25s", "1m",
/// "1m30s", "1000ms", "0"). Must be whole seconds in 0..=65535: the same
/// [`units::Duration`] a WireGuardPeer's keepalive is, read with all of
/// Go's units as the original plugin did.
pub fn parse_keepalive(v: &Value) -> Result<units::Duration, String> {
    let d = match v {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{n} is not a whole number of seconds"))?,
        Value::String(s) => parse_go_duration(s)
            .ok_or_else(|| format!("{s:?} is not a duration such as \"25s\""))?,
        other => return Err(format!("{other} is not a duration")),
    };
    units::Duration::try_from(d).map_err(|e| e.0)
}

/// A subset of Go's `time.ParseDuration`: unsigned decimal numbers with units
/// h, m, s, ms, us/µs, ns; "0" alone is zero.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let num: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per = match &rest[..unit_len] {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        let nanos = num * nanos_per;
        if !nanos.is_finite() || nanos > 1e18 {
            return None;
        }
        total = total.checked_add(Duration::from_nanos(nanos.round() as u64))?;
    }
    Some(total)
}
