//! The value types the resources are made of: each one is a string (or
//! number) on the wire whose schema carries the same rules the apiserver
//! enforces (a `pattern`, a length bound, CEL `x-kubernetes-validations`),
//! and a `parse` into the wg-netns type the agent works with.
//!
//! Strings stay strings when deserialized: an object stored under an older,
//! looser CRD must not make a whole list or watch undecodable, so the agent
//! parses each object once ([`crate::WireGuardPeerSpec::validate`] and the
//! like) and reports a bad one on that object instead of going blind.
//! [`Duration`] and [`Mtu`] are typed outright: their grammar is small and
//! the CEL rule that guards them is exactly the Rust parser's.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use wg_netns::{Endpoint, IfName, IpNetwork, PublicKey};

/// A value that breaks one of the resource's rules, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's path in the object, such as `spec.allowedIPs[2]`.
    pub field: String,
    /// What is wrong with it (never a secret: only public values are checked here).
    pub message: String,
}

impl FieldError {
    /// A new error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error one level down: `spec` + `allowedIPs[2]`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// One `x-kubernetes-validations` entry.
fn rule(rule: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"rule": rule, "message": message})
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The text, as written in the object.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Wrap text without checking it (for values read back from
            /// an object, which [`Self::check`] then judges).
            pub fn unchecked(s: impl Into<String>) -> Self {
                $name(s.into())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = FieldError;
            /// Checked: `s` must pass [`Self::check`].
            fn from_str(s: &str) -> Result<Self, FieldError> {
                let v = $name(s.to_string());
                v.check()?;
                Ok(v)
            }
        }
    };
}

// ---------------------------------------------------------------- CIDRs

/// The CEL test that a string is a network in canonical form.
const CIDR_RULE: &str = "isCIDR(self) && string(cidr(self).masked()) == self";
/// Longest textual prefix: `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255/128`.
const CIDR_MAX_LEN: u64 = 49;

string_newtype! {
    /// A network in CIDR notation and canonical form: `10.244.0.0/16`,
    /// `fd00:10::/64`. Host bits must be zero and the text must be the one
    /// Go's `netip.Prefix.String` and Rust's `IpNetwork` print (so
    /// `10.0.0.1/8` and `FD00::/8` are refused): two objects naming the same
    /// network always name it with the same string.
    CidrString
}

impl CidrString {
    /// Parse into a network, refusing what the apiserver refuses.
    pub fn parse(&self) -> Result<IpNetwork, FieldError> {
        let s = self.as_str();
        let bad = |why: &str| FieldError::new("", format!("{s:?} {why}"));
        if !s.contains('/') {
            return Err(bad(
                "is not a CIDR such as 10.0.0.0/8 (a prefix length is required)",
            ));
        }
        let net: IpNetwork = s
            .parse()
            .map_err(|_| bad("is not a CIDR such as 10.0.0.0/8 or fd00::/64"))?;
        if net.ip() != net.network() {
            return Err(bad(&format!(
                "has host bits set (the network is {}/{})",
                net.network(),
                net.prefix()
            )));
        }
        if net.to_string() != s {
            return Err(bad(&format!("is not in canonical form (write {net})")));
        }
        Ok(net)
    }

    /// Check without keeping the result.
    pub fn check(&self) -> Result<(), FieldError> {
        self.parse().map(|_| ())
    }
}

impl From<IpNetwork> for CidrString {
    /// The network's canonical text (host bits cleared).
    fn from(n: IpNetwork) -> Self {
        let masked = IpNetwork::new(n.network(), n.prefix()).expect("same prefix length");
        CidrString(masked.to_string())
    }
}

impl JsonSchema for CidrString {
    fn schema_name() -> Cow<'static, str> {
        "CidrString".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": CIDR_MAX_LEN,
            "x-kubernetes-validations": [rule(
                CIDR_RULE,
                "must be a CIDR in canonical form, such as 10.244.0.0/16 or fd00:10::/64 (host bits zero)"
            )],
        })
    }
}

string_newtype! {
    /// An interface address with its prefix length: `10.244.1.5/32`,
    /// `fd00:10::5/128`, `10.13.13.2/24` (host bits are the point here).
    AddressString
}

impl AddressString {
    /// Parse into an address and prefix length.
    pub fn parse(&self) -> Result<IpNetwork, FieldError> {
        let s = self.as_str();
        let bad = |why: &str| FieldError::new("", format!("{s:?} {why}"));
        if !s.contains('/') {
            return Err(bad(
                "is not an address with a prefix length such as 10.0.0.5/32",
            ));
        }
        let net: IpNetwork = s
            .parse()
            .map_err(|_| bad("is not an address with a prefix length such as 10.0.0.5/32"))?;
        if net.to_string() != s {
            return Err(bad(&format!("is not in canonical form (write {net})")));
        }
        Ok(net)
    }

    /// Check without keeping the result.
    pub fn check(&self) -> Result<(), FieldError> {
        self.parse().map(|_| ())
    }
}

impl From<IpNetwork> for AddressString {
    fn from(n: IpNetwork) -> Self {
        AddressString(n.to_string())
    }
}

impl JsonSchema for AddressString {
    fn schema_name() -> Cow<'static, str> {
        "AddressString".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": CIDR_MAX_LEN,
            "x-kubernetes-validations": [rule(
                "isCIDR(self) && string(cidr(self)) == self",
                "must be an address with a prefix length in canonical form, such as 10.244.1.5/32"
            )],
        })
    }
}

// ----------------------------------------------------------------- keys

/// A canonical base64 Curve25519 key: 43 characters, the last of which
/// encodes 4 bits (so its low 2 bits are zero), and one `=`.
pub const KEY_PATTERN: &str = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw480]=$";

string_newtype! {
    /// A WireGuard public key in base64 (44 characters, as `wg pubkey`
    /// prints it). Only public keys ever appear in these resources.
    PublicKeyString
}

impl PublicKeyString {
    /// Parse into a public key.
    pub fn parse(&self) -> Result<PublicKey, FieldError> {
        PublicKey::from_base64(self.as_str()).map_err(|_| {
            FieldError::new(
                "",
                format!(
                    "{:?} is not a base64 WireGuard key (44 characters ending in '=')",
                    self.as_str()
                ),
            )
        })
    }

    /// Check without keeping the result.
    pub fn check(&self) -> Result<(), FieldError> {
        self.parse().map(|_| ())
    }

    /// The first 8 characters, for logs and tables (what `wg` users
    /// recognize a key by).
    pub fn short(&self) -> &str {
        self.as_str().get(..8).unwrap_or(self.as_str())
    }
}

impl From<PublicKey> for PublicKeyString {
    fn from(k: PublicKey) -> Self {
        PublicKeyString(k.to_base64())
    }
}

impl From<&PublicKey> for PublicKeyString {
    fn from(k: &PublicKey) -> Self {
        PublicKeyString(k.to_base64())
    }
}

impl JsonSchema for PublicKeyString {
    fn schema_name() -> Cow<'static, str> {
        "PublicKeyString".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 44,
            "maxLength": 44,
            "pattern": KEY_PATTERN,
        })
    }
}

// ------------------------------------------------------------ endpoints

/// Host name labels, or a bracketed IPv6 address, then a port.
pub const ENDPOINT_PATTERN: &str = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*):[0-9]{1,5}$";
/// A 253-byte host name, `:`, 5 digits.
const ENDPOINT_MAX_LEN: u64 = 259;

string_newtype! {
    /// Where to reach a WireGuard socket: `IPV4:PORT`, `[IPV6]:PORT` or
    /// `HOST:PORT`, port 1..=65535. A host name is resolved by whoever uses
    /// it, never when parsed.
    EndpointString
}

impl EndpointString {
    /// Parse into a wg-netns endpoint (no lookup).
    pub fn parse(&self) -> Result<Endpoint, FieldError> {
        let s = self.as_str();
        let bad = |why: &str| FieldError::new("", format!("{s:?} {why}"));
        let not_hostport =
            "is not HOST:PORT, such as 10.1.2.3:51820, [fd00::1]:51820 or wg.example.com:51820";
        if s.len() as u64 > ENDPOINT_MAX_LEN {
            return Err(bad("is too long"));
        }
        let ep: Endpoint = s.parse().map_err(|_| bad(not_hostport))?;
        let (_, port) = s.rsplit_once(':').ok_or_else(|| bad(not_hostport))?;
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(not_hostport));
        }
        match &ep {
            Endpoint::Addr(SocketAddr::V6(a)) if a.scope_id() != 0 || a.flowinfo() != 0 => {
                return Err(bad("has an IPv6 zone: not allowed"));
            }
            Endpoint::Addr(a) if a.port() == 0 => return Err(bad("has port 0")),
            Endpoint::Host { port: 0, .. } => return Err(bad("has port 0")),
            // What looks like an IPv4 address but did not parse as one
            // (010.1.2.3, 10.1.2.300) is refused, not looked up as a name.
            Endpoint::Host { host, .. }
                if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
            {
                return Err(bad("is neither an IPv4 address nor a host name"));
            }
            _ => {}
        }
        Ok(ep)
    }

    /// Check without keeping the result.
    pub fn check(&self) -> Result<(), FieldError> {
        self.parse().map(|_| ())
    }
}

impl From<SocketAddr> for EndpointString {
    fn from(a: SocketAddr) -> Self {
        EndpointString(a.to_string())
    }
}

impl JsonSchema for EndpointString {
    fn schema_name() -> Cow<'static, str> {
        "EndpointString".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": ENDPOINT_MAX_LEN,
            "pattern": ENDPOINT_PATTERN,
            "x-kubernetes-validations": [
                rule(
                    "!self.matches(':[0-9]{1,5}$') || (int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535)",
                    "the port must be in 1..65535"
                ),
                rule(
                    "!self.startsWith('[') || (isIP(self.substring(1, self.indexOf(']'))) && ip(self.substring(1, self.indexOf(']'))).family() == 6)",
                    "a bracketed host must be an IPv6 address, such as [fd00::1]:51820"
                ),
                rule(
                    "!self.matches('^[0-9.]+:[0-9]+$') || isIP(self.substring(0, self.lastIndexOf(':')))",
                    "a numeric host must be an IPv4 address, such as 10.1.2.3:51820"
                ),
            ],
        })
    }
}

// ---------------------------------------------------------------- names

/// A DNS label (RFC 1123): what network names must be.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A DNS subdomain (RFC 1123): what most object names must be.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

string_newtype! {
    /// The name of a `WireGuardNetwork`: a DNS label (lower-case letters,
    /// digits and `-`, at most 63), since it is also part of address block
    /// names.
    NetworkName
}

impl NetworkName {
    /// Check the name.
    pub fn check(&self) -> Result<(), FieldError> {
        if is_dns_label(self.as_str()) {
            Ok(())
        } else {
            Err(FieldError::new(
                "",
                format!(
                    "{:?} is not a DNS label (lower-case letters, digits, '-', at most 63)",
                    self.as_str()
                ),
            ))
        }
    }
}

impl JsonSchema for NetworkName {
    fn schema_name() -> Cow<'static, str> {
        "NetworkName".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 63,
            "pattern": DNS_LABEL_PATTERN,
        })
    }
}

string_newtype! {
    /// An object name that is a DNS subdomain (pods, nodes, secrets): at
    /// most 253 characters of lower-case labels joined by dots.
    ObjectName
}

impl ObjectName {
    /// Check the name.
    pub fn check(&self) -> Result<(), FieldError> {
        if is_dns_subdomain(self.as_str()) {
            Ok(())
        } else {
            Err(FieldError::new(
                "",
                format!("{:?} is not a DNS subdomain name", self.as_str()),
            ))
        }
    }
}

impl JsonSchema for ObjectName {
    fn schema_name() -> Cow<'static, str> {
        "ObjectName".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 253,
            "pattern": DNS_SUBDOMAIN_PATTERN,
        })
    }
}

/// What a network's `interfaceName` (and an attachment's `interface`) may
/// be: 1 to 15 lower-case ASCII letters, digits and `-`, ending with a
/// letter or digit. Exactly what the node agent can use: the name is a
/// Linux interface name (wg-netns's `IfName`), part of the node's record
/// and key file names (letters, digits, `-`, `_`), and the last part of the
/// pod's WireGuardAttachment name `POD-INTERFACE` (a DNS subdomain:
/// lower-case, and ending with a letter or digit).
pub const IFNAME_PATTERN: &str = "^[-a-z0-9]{0,14}[a-z0-9]$";

string_newtype! {
    /// The name of a pod's WireGuard interface: 1 to 15 lower-case ASCII
    /// letters, digits and `-`, ending with a letter or digit
    /// ([`IFNAME_PATTERN`]). Defaults to `wg0`.
    InterfaceName
}

impl Default for InterfaceName {
    fn default() -> Self {
        InterfaceName("wg0".into())
    }
}

/// Whether `s` matches [`IFNAME_PATTERN`].
fn is_interface_name(s: &str) -> bool {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=15).contains(&s.len())
        && s.bytes().all(|b| ok(b) || b == b'-')
        && s.bytes().last().is_some_and(ok)
}

impl InterfaceName {
    /// Parse into the wg-netns name.
    pub fn parse(&self) -> Result<IfName, FieldError> {
        let s = self.as_str();
        let bad = || {
            FieldError::new(
                "",
                format!(
                    "{s:?} is not an interface name the node agent can use \
                     (1 to 15 lower-case letters, digits and '-', ending with a letter or digit)"
                ),
            )
        };
        if !is_interface_name(s) {
            return Err(bad());
        }
        IfName::new(s).map_err(|_| bad())
    }

    /// Check without keeping the result.
    pub fn check(&self) -> Result<(), FieldError> {
        self.parse().map(|_| ())
    }
}

impl JsonSchema for InterfaceName {
    fn schema_name() -> Cow<'static, str> {
        "InterfaceName".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 15,
            "pattern": IFNAME_PATTERN,
        })
    }
}

// ------------------------------------------------------------ durations

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
    type Error = FieldError;
    fn try_from(d: std::time::Duration) -> Result<Self, FieldError> {
        if d.subsec_nanos() != 0 || d.as_secs() > u64::from(u16::MAX) {
            return Err(FieldError::new(
                "",
                format!("{d:?} is not a whole number of seconds in 0..=65535"),
            ));
        }
        Ok(Duration(d.as_secs() as u16))
    }
}

impl FromStr for Duration {
    type Err = FieldError;

    /// `"0"`, or `[Nh][Nm][Ns]` (at least one part, in that order); at most
    /// 65535 seconds in all.
    fn from_str(s: &str) -> Result<Self, FieldError> {
        let bad = || {
            FieldError::new(
                "",
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
            if digits > 0 && rest[digits..].starts_with(unit) {
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
                v.parse().map_err(|e: FieldError| E::custom(e.message))
            }
        }
        d.deserialize_any(V)
    }
}

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
    /// Check the range of a number.
    pub fn check(self) -> Result<(), FieldError> {
        match self {
            Mtu::Bytes(n) if n < MTU_MIN => Err(FieldError::new(
                "",
                format!("{n} is below {MTU_MIN} (IPv6's minimum)"),
            )),
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

/// Check a list element by element, naming the index.
pub(crate) fn check_each<T>(
    field: &str,
    items: &[T],
    f: impl Fn(&T) -> Result<(), FieldError>,
) -> Result<(), FieldError> {
    for (i, item) in items.iter().enumerate() {
        f(item).map_err(|e| e.within(&format!("{field}[{i}]")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cidrs() {
        for ok in [
            "10.0.0.0/8",
            "10.244.1.0/26",
            "fd00:10::/64",
            "0.0.0.0/0",
            "::/0",
            "10.0.0.1/32",
        ] {
            assert_eq!(
                ok.parse::<CidrString>()
                    .unwrap()
                    .parse()
                    .unwrap()
                    .to_string(),
                ok
            );
        }
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "FD00::/8",
            "fd00:0::/64",
            "010.0.0.0/8",
            "10.0.0.0/08",
            "",
            "x/8",
            "10.0.0.0/8 ",
        ] {
            assert!(bad.parse::<CidrString>().is_err(), "{bad}");
        }
        let n: IpNetwork = "10.1.2.3/16".parse().unwrap();
        assert_eq!(CidrString::from(n).as_str(), "10.1.0.0/16");
    }

    #[test]
    fn addresses() {
        for ok in ["10.244.1.5/32", "10.13.13.2/24", "fd00:10::5/128"] {
            assert!(ok.parse::<AddressString>().is_ok(), "{ok}");
        }
        for bad in ["10.244.1.5", "10.244.1.5/33", "FD00::1/128", "nope/1"] {
            assert!(bad.parse::<AddressString>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        // `wg genkey | wg pubkey` output.
        let k = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
        let s: PublicKeyString = k.parse().unwrap();
        assert_eq!(s.parse().unwrap().to_base64(), k);
        assert_eq!(s.short(), "HIgo9xNz");
        let re = regex_lite(KEY_PATTERN);
        assert!(re(k));
        for bad in [
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykx=", // trailing bits not zero
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8yk=",  // 43 characters
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw",  // no padding
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8yk-=", // URL alphabet
        ] {
            assert!(bad.parse::<PublicKeyString>().is_err(), "{bad}");
            assert!(!re(bad), "{bad}");
        }
    }

    /// The key pattern, by hand (no regex engine among the dependencies):
    /// 42 base64 characters, one of the 16 whose low 2 bits are zero, `=`.
    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        assert_eq!(pattern, KEY_PATTERN);
        |s: &str| {
            let b = s.as_bytes();
            b.len() == 44
                && b[..42]
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
                && b"AEIMQUYcgkosw480".contains(&b[42])
                && b[43] == b'='
        }
    }

    proptest! {
        /// The pattern accepts exactly the canonical encodings of 32 bytes.
        #[test]
        fn key_pattern_is_canonical_base64(bytes in any::<[u8; 32]>()) {
            let k = PublicKey::from_bytes(bytes).to_base64();
            prop_assert!(regex_lite(KEY_PATTERN)(&k));
            prop_assert!(k.parse::<PublicKeyString>().is_ok());
        }
    }

    #[test]
    fn endpoints() {
        for ok in [
            "10.1.2.3:51820",
            "[fd00::1]:51820",
            "wg.example.com:51820",
            "node-1:1",
            "host:65535",
        ] {
            assert!(ok.parse::<EndpointString>().is_ok(), "{ok}");
        }
        for bad in [
            "10.1.2.3",
            "10.1.2.3:0",
            "10.1.2.3:65536",
            "10.1.2.300:51820",
            "010.1.2.3:51820",
            "fd00::1:51820",
            "[10.1.2.3]:51820",
            "[fe80::1%2]:51820",
            "-host:1",
            "host_name:1",
            ":51820",
            "host:",
            "host:+1",
        ] {
            assert!(bad.parse::<EndpointString>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!("pods".parse::<NetworkName>().is_ok());
        assert!("a.b".parse::<NetworkName>().is_err());
        assert!("A".parse::<NetworkName>().is_err());
        assert!("a.b-c.d".parse::<ObjectName>().is_ok());
        assert!("-a".parse::<ObjectName>().is_err());
        for good in ["wg0", "w", "0", "wg-pods", "-wg", "fifteen-chars-x"] {
            assert!(good.parse::<InterfaceName>().is_ok(), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "wg 0",
            "wg/0",
            "eth0:1",
            "sixteen-chars-xx",
            "wé",
            // What the agent cannot use: its records and keys are named
            // with letters, digits, '-' and '_' only, and the attachment
            // POD-INTERFACE is a DNS subdomain.
            "wg.0",
            "wg+0",
            "WG0",
            "wg_0",
            "wg-",
            "-",
        ] {
            assert!(bad.parse::<InterfaceName>().is_err(), "{bad:?}");
        }
        assert_eq!(InterfaceName::default().as_str(), "wg0");
    }

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

    #[test]
    fn field_error_paths() {
        let e = FieldError::new("", "bad")
            .within("allowedIPs[2]")
            .within("spec");
        assert_eq!(e.to_string(), "spec.allowedIPs[2]: bad");
    }
}
