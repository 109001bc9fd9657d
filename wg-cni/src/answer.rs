//! What wg-cni answers the runtime: the CNI result of an attachment the
//! core made ([`wg_attach::plan::Plan`]), appended to prevResult when
//! chained.

use serde_json::{json, Value};
use wg_attach::config::{ChainedResult, NetConf};
use wg_attach::plan::{routes, Plan};
use wg_netns::{Attachment, IfName, TABLE_MAIN};

use crate::cni::{build_result, ResultInterface, ResultIp, ResultRoute};

/// ADD's answer ([`answer`]) for the attachment `plan` made.
pub fn added(plan: &Plan<'_>, a: &Attachment) -> Value {
    let conf = plan.conf();
    let (iface, ips, routes) = result_parts(conf, &plan.name, &plan.request().netns, a.mtu);
    answer(conf, &iface, &ips, &routes)
}

/// ADD's answer, static or managed: prevResult with the interface, its IPs
/// and routes appended (or unchanged, for `chainedResult: passthrough`), or
/// a result of our own when standalone.
pub fn answer(
    conf: &NetConf,
    iface: &ResultInterface,
    ips: &[ResultIp],
    routes: &[ResultRoute],
) -> Value {
    if conf.prev_result.is_some() && conf.chained_result == ChainedResult::Passthrough {
        return unchanged(conf);
    }
    build_result(
        conf.cni_version,
        conf.prev_result.as_ref(),
        iface,
        ips,
        routes,
        conf.dns.as_ref(),
    )
}

/// prevResult in the configuration's version, or (standalone) an empty
/// result of that version: the answer of a plugin that added nothing.
pub fn unchanged(conf: &NetConf) -> Value {
    let mut result = match &conf.prev_result {
        Some(Value::Object(prev)) => prev.clone(),
        _ => serde_json::Map::new(),
    };
    result.insert("cniVersion".into(), json!(conf.cni_version.as_str()));
    Value::Object(result)
}

/// What the result reports about the attachment.
pub fn result_parts(
    conf: &NetConf,
    name: &IfName,
    sandbox: &str,
    mtu: u32,
) -> (ResultInterface, Vec<ResultIp>, Vec<ResultRoute>) {
    let iface = ResultInterface {
        name: name.to_string(),
        sandbox: sandbox.to_string(),
        mtu: Some(mtu),
    };
    let ips = conf
        .addresses
        .iter()
        .map(|a| ResultIp { address: *a })
        .collect();
    let routes = routes(conf)
        .into_iter()
        .map(|r| ResultRoute {
            dst: r.destination,
            table: (r.table != TABLE_MAIN).then_some(r.table),
        })
        .collect();
    (iface, ips, routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wg_attach::plan::{device_config, interface_name, resolve_peers};
    use wg_attach::Request;
    use wg_netns::IpNetwork;

    mod round_trip {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        fn key(n: u8) -> String {
            wg_netns::PublicKey::from_bytes([n; 32]).to_base64()
        }

        prop_compose! {
            fn arb_net()(v4 in any::<bool>(), a in any::<[u8; 16]>(), p4 in 0u8..=32, p6 in 0u8..=128) -> String {
                if v4 {
                    IpNetwork::new(std::net::IpAddr::from([a[0], a[1], a[2], a[3]]), p4).unwrap().to_string()
                } else {
                    IpNetwork::new(std::net::IpAddr::from(a), p6).unwrap().to_string()
                }
            }
        }

        prop_compose! {
            fn arb_conf()(addresses in proptest::collection::vec(arb_net(), 0..4),
                          peers in proptest::collection::vec((1u8..200, proptest::collection::vec(arb_net(), 0..4), proptest::option::of(0u16..65535)), 0..5),
                          chained in any::<bool>(), table in proptest::option::of(1u32..5000),
                          from_aips in any::<bool>(), version in 0usize..4) -> (serde_json::Value, bool) {
                let mut seen = BTreeSet::new();
                let peers: Vec<_> = peers.into_iter().filter(|(k, _, _)| seen.insert(*k)).map(|(k, aips, ka)| {
                    let mut p = json!({"publicKey": key(k), "allowedIPs": aips});
                    if let Some(ka) = ka { p["persistentKeepalive"] = json!(ka); }
                    p
                }).collect();
                let v = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"][version];
                let mut c = json!({"cniVersion": v, "name": "net", "type": "wg-cni", "addresses": addresses,
                                   "peers": peers, "routesFromAllowedIPs": from_aips});
                if let Some(t) = table { c["table"] = json!(t); }
                if chained {
                    c["prevResult"] = json!({"cniVersion": v, "interfaces": [{"name": "eth0", "sandbox": "/p"}],
                                             "ips": [{"address": "10.88.0.2/16", "interface": 0}],
                                             "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}], "x-kept": 1});
                }
                (c, chained)
            }
        }

        proptest! {
            /// configuration -> plan -> result: the result reports exactly the
            /// planned interface, addresses and routes, keeps prevResult, and
            /// the plan's device configuration lists exactly the configured peers.
            #[test]
            fn configuration_plan_result(case in arb_conf()) {
                let (raw, chained) = case;
                let conf = NetConf::parse(raw.to_string().as_bytes()).unwrap();
                let req = Request::new("c", "/p", "eth0", crate::birth_names());
                let name = interface_name(&conf, &req).unwrap();
                prop_assert_eq!(name.as_str(), if chained { "wg0" } else { "eth0" });
                let (iface, ips, routes) = result_parts(&conf, &name, "/p", 1420);
                let r = build_result(conf.cni_version, conf.prev_result.as_ref(), &iface, &ips, &routes, None);
                let ifs = r["interfaces"].as_array().unwrap();
                let ours = ifs.len() - 1;
                prop_assert_eq!(ifs[ours]["name"].as_str(), Some(name.as_str()));
                let our_ips: Vec<&str> = r["ips"].as_array().map(|v| v.iter()
                    .filter(|i| i["interface"].as_u64() == Some(ours as u64))
                    .filter_map(|i| i["address"].as_str()).collect()).unwrap_or_default();
                let want_ips: Vec<String> = conf.addresses.iter().map(|a| a.to_string()).collect();
                prop_assert_eq!(our_ips, want_ips.iter().map(String::as_str).collect::<Vec<_>>());
                let planned = wg_attach::plan::routes(&conf);
                let result_dsts: BTreeSet<String> = r["routes"].as_array().map(|v| v.iter()
                    .filter(|x| x.get("gw").is_none())
                    .filter_map(|x| x["dst"].as_str().map(str::to_string)).collect()).unwrap_or_default();
                for p in &planned {
                    prop_assert!(result_dsts.contains(&p.destination.to_string()));
                    prop_assert_eq!(p.table, conf.table.unwrap_or(TABLE_MAIN));
                }
                if chained {
                    prop_assert_eq!(&r["x-kept"], &json!(1));
                    prop_assert_eq!(&r["ips"][0]["address"], &json!("10.88.0.2/16"));
                }
                let dev = device_config(&conf, None, resolve_peers(&conf).unwrap());
                prop_assert_eq!(dev.peers.len(), conf.peers.len());
                for (d, c) in dev.peers.iter().zip(&conf.peers) {
                    prop_assert_eq!(d.public_key, c.public_key);
                    prop_assert_eq!(&d.allowed_ips, &c.allowed_ips);
                }
            }
        }
    }
}
