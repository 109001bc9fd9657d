//! The units the configuration formats share: [`Duration`] (a keepalive,
//! whole seconds) and [`Mtu`] (a number of bytes, or `auto`), one type
//! each for the CNI configuration ([`crate::config`]) and the Kubernetes
//! resources (wg-k8s-types re-exports them; with the `schema` feature they
//! carry the CRD schema, whose CEL rule is exactly the Rust parser's).

use std::fmt;
use std::str::FromStr;

#[cfg(feature = "schema")]
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
#[cfg(feature = "schema")]
use std::borrow::Cow;

/// A value out of its unit's range or grammar: what is wrong with it (the
/// caller names the field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(pub String);

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

#[cfg(feature = "schema")]
fn rule(rule: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"rule": rule, "message": message})
}

// ------------------------------------------------------------ durations

#[cfg(feature = "schema")]
/// The CEL rule of [`Duration`]: whole seconds 0..=65535, as an integer or
/// a Go duration made of hours, minutes and seconds in that order.
const DURATION_RULE: &str = "type(self) == int ? (self >= 0 && self <= 65535) : (self != '' && self.matches('^(0|([0-9]+h)?([0-9]+m)?([0-9]+s)?)$') && duration(self) <= duration('65535s'))";

/// A whole number of seconds, 0..=65535 (WireGuard's keepalive range),
/// written as an integer (`25`) or a Go duration of hours, minutes and
/// seconds in that order (`"25s"`, `"1m30s"`, `"2h"`, `"0"`).
///
/// It is written back in canonical form: the largest units first, zero
/// parts left out (`"1m30s"`, `"25s"`, `"0s"`), which Go's
/// `time.ParseDuration` and CEL's `duration()` read as the same value.
/// So `90` and `"90s"` both come back as `"1m30s"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Duration(u16);

impl Duration {
    /// No keepalive / zero.
    pub const ZERO: Duration = Duration(0);

    /// From whole seconds.
    pub const fn from_secs(secs: u16) -> Self {
        Duration(secs)
    }

    /// The seconds.
    pub const fn as_secs(self) -> u16 {
        self.0
    }

    /// As a `std` duration.
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.0))
    }

    /// WireGuard's keepalive: `None` for zero (off).
    pub fn keepalive(self) -> Option<u16> {
        (self.0 != 0).then_some(self.0)
    }
}

impl From<u16> for Duration {
    fn from(secs: u16) -> Self {
        Duration(secs)
    }
}

impl TryFrom<std::time::Duration> for Duration {
    type Error = ValueError;
    fn try_from(d: std::time::Duration) -> Result<Self, ValueError> {
        if d.subsec_nanos() != 0 || d.as_secs() > u64::from(u16::MAX) {
            return Err(ValueError(format!(
                "{d:?} is not a whole number of seconds in 0..=65535"
            )));
        }
        Ok(Duration(d.as_secs() as u16))
    }
}

impl FromStr for Duration {
    type Err = ValueError;

    /// `"0"`, or `[Nh][Nm][Ns]` (at least one part, in that order); at most
    /// 65535 seconds in all.
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let bad = || {
            ValueError(
                format!("{s:?} is not a duration such as \"25s\", \"1m30s\" or \"2h\" (whole seconds up to 65535)"),
            )
        };
        if s == "0" {
            return Ok(Duration(0));
        }
        if s.is_empty() {
            return Err(bad());
        }
        let mut rest = s;
        let mut total: u64 = 0;
        for (unit, scale) in [('h', 3600u64), ('m', 60), ('s', 1)] {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits != 0 && rest[digits..].starts_with(unit) {
                // Leading zeros are fine, as in Go; more digits than any
                // valid value needs are not a number we accept.
                let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
                total = n
                    .checked_mul(scale)
                    .and_then(|v| total.checked_add(v))
                    .ok_or_else(bad)?;
                rest = &rest[digits + 1..];
            }
        }
        if !rest.is_empty() || total > u64::from(u16::MAX) {
            return Err(bad());
        }
        Ok(Duration(total as u16))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (h, m, s) = (self.0 / 3600, self.0 / 60 % 60, self.0 % 60);
        if self.0 == 0 {
            return f.write_str("0s");
        }
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("whole seconds 0..=65535 or a duration such as \"25s\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                u16::try_from(v)
                    .map(Duration)
                    .map_err(|_| E::custom(format!("{v} seconds is more than 65535")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(|e: ValueError| E::custom(e.0))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(feature = "schema")]
impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "x-kubernetes-validations": [rule(
                DURATION_RULE,
                "must be whole seconds 0..65535: an integer or a duration such as \"25s\", \"1m30s\", \"2h\""
            )],
        })
    }
}

// ------------------------------------------------------------------ MTU

/// The smallest MTU accepted: IPv6's minimum link MTU.
pub const MTU_MIN: u16 = 1280;

/// The MTU of the pods' WireGuard interfaces: a number of bytes
/// (1280..=65535) or `"auto"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mtu {
    /// The MTU of the node's link towards the peers, minus WireGuard's 80
    /// bytes of overhead; 1420 when it cannot be found. The default.
    #[default]
    Auto,
    /// This many bytes.
    Bytes(u16),
}

impl Mtu {
    /// The MTU to give an interface whose packets leave through an
    /// underlay link of MTU `underlay` (when known): the number, or for
    /// `auto` the underlay's minus WireGuard's 80 bytes of overhead (over
    /// IPv6), at least [`MTU_MIN`]; 1420 when the underlay is not known.
    pub fn resolve(self, underlay: Option<u32>) -> u32 {
        match self {
            Mtu::Bytes(n) => u32::from(n),
            Mtu::Auto => underlay
                .map(|u| u.saturating_sub(80).max(u32::from(MTU_MIN)))
                .unwrap_or(1420),
        }
    }

    /// Check the range of a number.
    pub fn check(self) -> Result<(), ValueError> {
        match self {
            Mtu::Bytes(n) if n < MTU_MIN => Err(ValueError(format!(
                "{n} is below {MTU_MIN} (IPv6's minimum)"
            ))),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Mtu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mtu::Auto => f.write_str("auto"),
            Mtu::Bytes(n) => n.fmt(f),
        }
    }
}

impl Serialize for Mtu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Mtu::Auto => s.serialize_str("auto"),
            Mtu::Bytes(n) => s.serialize_u16(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Mtu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Mtu;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an MTU in 1280..=65535 or \"auto\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Mtu, E> {
                match u16::try_from(v) {
                    Ok(n) if n >= MTU_MIN => Ok(Mtu::Bytes(n)),
                    _ => Err(E::custom(format!("MTU {v} is not in 1280..=65535"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Mtu, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("MTU {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Mtu, E> {
                if v == "auto" {
                    Ok(Mtu::Auto)
                } else {
                    Err(E::custom(format!(
                        "MTU {v:?} is neither a number nor \"auto\""
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(feature = "schema")]
impl JsonSchema for Mtu {
    fn schema_name() -> Cow<'static, str> {
        "Mtu".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "x-kubernetes-validations": [rule(
                "type(self) == int ? (self >= 1280 && self <= 65535) : self == 'auto'",
                "must be an integer in 1280..65535 or \"auto\""
            )],
        })
    }
}

#[cfg(test)]
mod tests;
