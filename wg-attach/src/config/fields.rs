//! JSON field readers: every error names its field and the value, except
//! secrets, which are never echoed.

use serde_json::{Map, Value};
use wg_netns::IpNetwork;
use zeroize::Zeroize;

use crate::error::Error;

pub(super) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::invalid(field, reason)
}

pub(super) fn str_field<'a>(
    o: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, Error> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid(key, format!("expected a string, got {v}"))),
    }
}

pub(super) fn bool_field(o: &Map<String, Value>, key: &str, default: bool) -> Result<bool, Error> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(key, format!("expected true or false, got {v}"))),
    }
}

pub(super) fn uint_field(
    o: &Map<String, Value>,
    key: &str,
    max: u64,
) -> Result<Option<u64>, Error> {
    let v = match o.get(key) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        // Hex strings such as "0x51" are accepted for marks.
        Some(Value::String(s)) => match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
        Some(_) => None,
    };
    match v {
        Some(n) if n <= max => Ok(Some(n)),
        _ => Err(invalid(
            key,
            format!("{} is not an integer in 0..={max}", o[key]),
        )),
    }
}

pub(super) fn parse_net(field: &str, s: &str) -> Result<IpNetwork, Error> {
    // A prefix length is required, as Go's net.ParseCIDR requires it.
    s.contains('/')
        .then(|| s.parse::<IpNetwork>().ok())
        .flatten()
        .ok_or(())
        .map_err(|_| {
            invalid(
                field,
                format!("{s:?} is not an address with a prefix length such as 10.13.13.210/24"),
            )
        })
}

pub(super) fn take_secret(
    o: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<zeroize::Zeroizing<String>>, Error> {
    match o.get_mut(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let out = zeroize::Zeroizing::new(s.clone());
            s.zeroize();
            Ok(Some(out))
        }
        Some(_) => Err(invalid(key, "expected a base64 string (value not shown)")),
    }
}

/// Wipe every secret string left in a parsed JSON tree.
pub(super) fn wipe_secrets(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, val) in o.iter_mut() {
                if k == "privateKey" || k == "presharedKey" {
                    if let Value::String(s) = val {
                        s.zeroize();
                    }
                } else {
                    wipe_secrets(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(wipe_secrets),
        _ => {}
    }
}
