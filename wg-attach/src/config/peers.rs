//! `peers`: each parsed into a [`PeerSpec`] without any I/O: an endpoint
//! stays a host name until ADD or CHECK resolves it, a `presharedKeyFile`
//! stays a path until ADD or CHECK reads it.

use std::collections::HashSet;
use std::path::PathBuf;

use serde_json::{Map, Value};
use wg_netns::{Endpoint, KeySource, PeerSpec, PresharedKey, PublicKey};

use super::duration::parse_keepalive;
use super::fields::{invalid, parse_net, str_field, take_secret};
use crate::error::Error;

/// Parse `peers`, wiping inline preshared keys from the JSON as they are
/// read; the (wiped) values are put back so the caller's JSON stays whole.
pub(super) fn parse_peers(o: &mut Map<String, Value>) -> Result<Vec<PeerSpec>, Error> {
    let mut values: Vec<Value> = match o.get_mut("peers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => std::mem::take(items),
        Some(v) => return Err(invalid("peers", format!("expected a list, got {v}"))),
    };
    let parsed = values
        .iter_mut()
        .enumerate()
        .map(|(i, p)| parse_peer(i, p))
        .collect::<Result<Vec<_>, _>>();
    o.insert("peers".into(), Value::Array(values));
    let peers = parsed?;
    // One pass with a set: a configuration can list thousands of peers.
    let mut seen = HashSet::with_capacity(peers.len());
    for (i, p) in peers.iter().enumerate() {
        if !seen.insert(p.public_key) {
            return Err(invalid(
                format!("peers[{i}].publicKey"),
                format!("{} is listed twice", p.public_key),
            ));
        }
    }
    Ok(peers)
}

fn parse_peer(i: usize, p: &mut Value) -> Result<PeerSpec, Error> {
    let field = |f: &str| format!("peers[{i}].{f}");
    let po = p
        .as_object_mut()
        .ok_or_else(|| invalid(format!("peers[{i}]"), "expected an object"))?;
    let pk = str_field(po, "publicKey")?.ok_or_else(|| invalid(field("publicKey"), "missing"))?;
    let public_key = PublicKey::from_base64(pk.trim())
        .map_err(|e| invalid(field("publicKey"), format!("{pk:?}: {e}")))?;
    let mut spec = PeerSpec::new(public_key);

    let inline = take_secret(po, "presharedKey")?;
    let file = str_field(po, "presharedKeyFile")?.map(PathBuf::from);
    spec.preshared_key = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                field("presharedKey"),
                "give presharedKey or presharedKeyFile, not both",
            ))
        }
        (Some(k), None) => Some(KeySource::Inline(
            PresharedKey::from_base64(k.trim())
                .map_err(|e| invalid(field("presharedKey"), format!("{e} (value not shown)")))?,
        )),
        (None, Some(path)) if !path.is_absolute() => {
            return Err(invalid(
                field("presharedKeyFile"),
                format!("{} is not an absolute path", path.display()),
            ))
        }
        (None, Some(path)) => Some(KeySource::File(path)),
        (None, None) => None,
    };
    if let Some(e) = str_field(po, "endpoint")? {
        let ep: Endpoint = e.parse().map_err(|_| {
            invalid(
                field("endpoint"),
                format!("{e:?} is not HOST:PORT, such as 10.1.2.3:51820, [fd00::1]:51820 or wg.example.com:51820"),
            )
        })?;
        spec.endpoint = Some(ep);
    }
    match po.get("allowedIPs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (j, a) in items.iter().enumerate() {
                let f = field(&format!("allowedIPs[{j}]"));
                let s = a
                    .as_str()
                    .ok_or_else(|| invalid(&f, format!("expected a string, got {a}")))?;
                spec.allowed_ips.push(parse_net(&f, s)?);
            }
        }
        Some(v) => {
            return Err(invalid(
                field("allowedIPs"),
                format!("expected a list, got {v}"),
            ))
        }
    }
    spec.persistent_keepalive = match po.get("persistentKeepalive") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            parse_keepalive(v)
                .map_err(|e| invalid(field("persistentKeepalive"), e))?
                .to_std(),
        ),
    };
    Ok(spec)
}
