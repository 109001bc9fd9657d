//! Interface names: validated, and derived deterministically from a caller's
//! id when they must be unique machine-wide (a userspace device's control
//! socket is named after its birth name).

use std::fmt;

use crate::error::{Error, Result};

/// Maximum interface name length (IFNAMSIZ - 1).
pub const IFNAMSIZ_MAX: usize = 15;

/// A validated Linux interface name: 1..=15 bytes, no `/`, `:`, whitespace or
/// NUL, not `.` or `..`.
///
/// ```
/// use wg_netns::IfName;
/// assert!(IfName::new("wg0").is_ok());
/// assert!(IfName::new("a-name-that-is-too-long").is_err());
/// assert!(IfName::new("eth0:1").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfName(String);

impl IfName {
    /// Validate a name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let bad = |why: &str| Error::invalid("interface name", format!("{name:?} {why}"));
        if name.is_empty() {
            return Err(bad("is empty"));
        }
        if name.len() > IFNAMSIZ_MAX {
            return Err(bad("is longer than 15 bytes"));
        }
        if name == "." || name == ".." {
            return Err(bad("is reserved"));
        }
        if name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
        {
            return Err(bad("contains '/', ':', NUL or whitespace"));
        }
        Ok(IfName(name))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::str::FromStr for IfName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        IfName::new(s)
    }
}

impl AsRef<str> for IfName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for IfName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for IfName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IfName::new(s).map_err(serde::de::Error::custom)
    }
}

impl IfName {
    /// A short name derived deterministically from `id` (for example a
    /// container id and interface name): `prefix` followed by hex digits of a
    /// 64-bit FNV-1a hash, filling the 15-byte limit. The same `id` always
    /// gives the same name, so a later call can find the interface without
    /// stored state.
    ///
    /// ```
    /// use wg_netns::IfName;
    /// let a = IfName::derived("wgb", "0123abcd/wg0").unwrap();
    /// assert_eq!(a, IfName::derived("wgb", "0123abcd/wg0").unwrap());
    /// assert_ne!(a, IfName::derived("wgb", "0123abcd/wg1").unwrap());
    /// assert_eq!(a.as_str().len(), 15);
    /// ```
    pub fn derived(prefix: &str, id: &str) -> Result<IfName> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let digits = IFNAMSIZ_MAX.saturating_sub(prefix.len()).min(16);
        if digits < 6 {
            return Err(Error::invalid(
                "interface name prefix",
                format!("{prefix:?} leaves fewer than 6 characters for the hash"),
            ));
        }
        IfName::new(format!("{prefix}{:016x}", h)[..prefix.len() + digits].to_string())
    }
}
