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
use serde::{Deserialize, Serialize};
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

// ------------------------------------------------------- durations, MTU

/// The keepalive and the MTU are the attachment core's units, one type
/// each for the CNI configuration and the resources; with its `schema`
/// feature they carry their CRD schema.
pub use wg_attach::units::{Duration, Mtu, ValueError, MTU_MIN};

impl From<ValueError> for FieldError {
    fn from(e: ValueError) -> Self {
        FieldError::new("", e.0)
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
mod tests;
