//! Durations as the original wireguard-cni wrote them (Go's
//! `time.ParseDuration`: "25s", "1m30s") or whole seconds.

use std::time::Duration;

use serde_json::Value;

/// Parse a keepalive: integer seconds, or a Go-style duration ("25s", "1m",
/// "1m30s", "0"). Must be whole seconds in 0..=65535.
pub fn parse_keepalive(v: &Value) -> Result<Duration, String> {
    let d = match v {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{n} is not a whole number of seconds"))?,
        Value::String(s) => parse_go_duration(s)
            .ok_or_else(|| format!("{s:?} is not a duration such as \"25s\""))?,
        other => return Err(format!("{other} is not a duration")),
    };
    if d.subsec_nanos() != 0 || d.as_secs() > 65535 {
        return Err(format!(
            "{d:?} is not a whole number of seconds in 0..=65535"
        ));
    }
    Ok(d)
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
