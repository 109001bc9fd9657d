//! `cniVersion`: the configuration format's version (the CNI
//! specification's; every adapter reads the same format).

use std::fmt;

/// Spec versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A CNI spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// 0.3.1
    V0_3_1,
    /// 0.4.0 (adds CHECK)
    V0_4_0,
    /// 1.0.0 (drops `ips[].version`)
    V1_0_0,
    /// 1.1.0 (adds STATUS, GC, interface and route attributes)
    V1_1_0,
}

impl Version {
    /// Parse a `cniVersion` string.
    pub fn parse(s: &str) -> Option<Version> {
        match s {
            "0.3.1" => Some(Version::V0_3_1),
            "0.4.0" => Some(Version::V0_4_0),
            "1.0.0" => Some(Version::V1_0_0),
            "1.1.0" => Some(Version::V1_1_0),
            _ => None,
        }
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every version this core speaks reads back as itself, in order;
    /// anything else is not a version.
    #[test]
    fn versions_round_trip() {
        let all = [
            Version::V0_3_1,
            Version::V0_4_0,
            Version::V1_0_0,
            Version::V1_1_0,
        ];
        for (v, s) in all.iter().zip(SUPPORTED_VERSIONS) {
            assert_eq!(v.as_str(), s);
            assert_eq!(v.to_string(), s);
            assert_eq!(Version::parse(s), Some(*v));
        }
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        for bad in ["", "0.3.0", "1.1", "1.2.0", "v1.0.0"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }
}
